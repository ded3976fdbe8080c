//! The admin web center (SPEC §3 "Admin web pages"): plain HTTP tests of its rules
//! (sign-in, session cookie, CSRF, roles, validation) and one browser session in real
//! headless Chromium that walks the original product's flows and saves a screenshot of
//! every page (`target/admin-screenshots/`). Each test has its own server on a loopback
//! port and its own SQLite database in a temporary directory.

use commcredits_core::Timestamp;
use commcredits_engine::calls::AuthorizeRequest;
use commcredits_engine::payments::CardInput;
use commcredits_engine::{Command, Engine, Outcome};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

// ---------------------------------------------------------------- harness

struct TestApp {
    base: String,
    engine: Arc<Engine>,
    _dir: tempfile::TempDir,
}

/// An organization with users, seats, a card, an agreement, 100.00 USD and a few calls.
struct Seed {
    org: String,
    /// ada holds phone_system, calling_plan_domestic and communications_credits.
    ada: String,
    /// bob and cy hold phone_system only.
    bob: String,
    cy: String,
    card: String,
    admin: String,
    billing: String,
    licenses: String,
    reader: String,
    operator: String,
    /// Calls charged this month.
    calls: usize,
}

fn created(o: Outcome) -> String {
    match o {
        Outcome::Created { id } => id,
        other => panic!("expected Created, got {other:?}"),
    }
}

fn secret(o: Outcome) -> String {
    match o {
        Outcome::Key(k) => k.secret,
        other => panic!("expected a key, got {other:?}"),
    }
}

async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("admin.db").display());
    let engine = Arc::new(Engine::open(&url).expect("open the store"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let router = commcredits_server::router(commcredits_server::App::new(engine.clone()));
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.expect("serve");
    });
    TestApp { base: format!("http://{addr}"), engine, _dir: dir }
}

fn seed(app: &TestApp) -> Seed {
    let e = &app.engine;
    let now = Timestamp::now();
    let one = |c: Command| e.apply_one(now, c).unwrap_or_else(|err| panic!("{err}"));
    let org = created(one(Command::CreateOrg {
        name: "Contoso".into(),
        currency: "USD".into(),
        country: "US".into(),
        emails: vec!["billing@contoso.example".into()],
    }));
    let user = |upn: &str, name: &str| {
        created(one(Command::CreateUser {
            org: org.clone(),
            upn: upn.into(),
            display_name: name.into(),
            usage_location: "US".into(),
            phone_number: None,
        }))
    };
    let ada = user("ada@contoso.example", "Ada Adler");
    let bob = user("bob@contoso.example", "Bob Brown");
    let cy = user("cy@contoso.example", "Cy Chen");
    for (sku, q) in [("phone_system", 10), ("calling_plan_domestic", 5), ("communications_credits", 5)] {
        one(Command::AddSubscription { org: org.clone(), sku: sku.into(), quantity: q });
    }
    for (sku, users) in [
        ("phone_system", vec![ada.clone(), bob.clone(), cy.clone()]),
        ("calling_plan_domestic", vec![ada.clone()]),
        ("communications_credits", vec![ada.clone()]),
    ] {
        one(Command::AssignLicense { org: org.clone(), sku: sku.into(), users });
    }
    let token = e
        .gateway()
        .tokenize_card(
            &CardInput { number: "4242424242424242".into(), exp_month: 12, exp_year: 2035, holder: "Ada".into() },
            now,
        )
        .unwrap();
    let card = created(one(Command::AddCard { org: org.clone(), token, holder: Some("Ada Adler".into()) }));
    let ea = created(one(Command::AddAgreement { org: org.clone(), agreement_number: "EA-1".into() }));
    e.purchase(&org, "100.00", &ea, Some("PO-7"), None, now).expect("the first purchase");
    // International calls from a domestic plan: paid from credits.
    let mut calls = 0;
    for (i, secs) in [125u32, 61, 300].into_iter().enumerate() {
        let call_id = format!("call-{i}");
        let r = one(Command::Authorize(AuthorizeRequest {
            org: org.clone(),
            call_id: call_id.clone(),
            call_type: "outbound".into(),
            user: Some(ada.clone()),
            from: "+14155550100".into(),
            to: "+442079460000".into(),
            requested_seconds: Some(600),
        }));
        assert!(matches!(&r, Outcome::Authorized(v) if v.decision == "allow"), "{r:?}");
        one(Command::End { org: org.clone(), call_id, duration_seconds: secs });
        calls += 1;
    }
    let key = |role: &str| {
        secret(one(Command::CreateKey { org: Some(org.clone()), role: role.into(), name: format!("{role} key") }))
    };
    Seed {
        admin: key("admin"),
        billing: key("billing_admin"),
        licenses: key("license_admin"),
        reader: key("reader"),
        operator: secret(one(Command::CreateKey { org: None, role: "operator".into(), name: "op".into() })),
        org,
        ada,
        bob,
        cy,
        card,
        calls,
    }
}

/// A browser without JavaScript: reqwest, redirects not followed, cookies kept by hand
/// so each test sees exactly what the server set.
struct Browser {
    base: String,
    client: reqwest::Client,
    cookies: HashMap<String, String>,
    /// Every Set-Cookie header received, for checking attributes.
    set_cookies: Vec<String>,
}

#[derive(Debug)]
struct Page {
    status: u16,
    location: String,
    ctype: String,
    text: String,
}

impl Page {
    /// The value of a hidden `csrf` field on the page.
    fn csrf(&self) -> String {
        let at = self.text.find("name=\"csrf\" value=\"").unwrap_or_else(|| panic!("no csrf field: {}", self.text));
        let rest = &self.text[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }

    /// The value of the hidden field `name` of the form whose id is `form`.
    #[track_caller]
    fn hidden(&self, form: &str, name: &str) -> String {
        let at = self.text.find(&format!("id=\"{form}\"")).unwrap_or_else(|| panic!("no form {form}: {self:?}"));
        let start = format!("name=\"{name}\" value=\"");
        let end = self.text[at..].find("</form>").map(|e| at + e).unwrap_or(self.text.len());
        let field = self.text[at..end].find(&start).unwrap_or_else(|| panic!("no field {name} in {form}: {self:?}"));
        let rest = &self.text[at + field + start.len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }

    /// The one-shot message the page shows, if any.
    fn flash(&self) -> Option<String> {
        let at = self.text.find("<p class=\"flash\" role=\"status\">")?;
        let rest = &self.text[at..];
        let rest = &rest[rest.find('>').unwrap() + 1..];
        Some(rest[..rest.find("</p>").unwrap()].to_string())
    }

    /// The address a link with this id leads to, unescaped.
    #[track_caller]
    fn link(&self, id: &str) -> Option<String> {
        let at = self.text.find(&format!("id=\"{id}\""))?;
        let open = self.text[..at].rfind("<a ").unwrap();
        let tag = &self.text[open..open + self.text[open..].find('>').unwrap()];
        let href = tag.split("href=\"").nth(1).unwrap_or_else(|| panic!("{id} has no href: {tag}"));
        Some(href[..href.find('"').unwrap()].replace("&amp;", "&").replace("&#x2f;", "/"))
    }

    /// The rows of the usage page's table of calls.
    fn calls(&self) -> Vec<String> {
        let Some(at) = self.text.find("<table id=\"calls\">") else { return Vec::new() };
        let body = &self.text[at..];
        let body = &body[body.find("<tbody>").unwrap()..body.find("</tbody>").unwrap()];
        body.split("<tr>").skip(1).map(str::to_string).collect()
    }

    #[track_caller]
    fn has_code(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert!(self.text.contains(&format!("data-code=\"{code}\"")), "no error code {code}: {self:?}");
    }
}

impl Browser {
    fn new(app: &TestApp) -> Browser {
        Browser {
            base: app.base.clone(),
            client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            cookies: HashMap::new(),
            set_cookies: Vec::new(),
        }
    }

    async fn send(&mut self, rb: reqwest::RequestBuilder) -> Page {
        let cookie = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let rb = if cookie.is_empty() { rb } else { rb.header("cookie", cookie) };
        let r = rb.send().await.expect("an answer");
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap().to_string();
            let (kv, attrs) = v.split_once(';').unwrap_or((&v, ""));
            let (k, val) = kv.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), val.to_string());
            }
            self.set_cookies.push(v.clone());
        }
        let status = r.status().as_u16();
        assert!(status < 500, "server error {status}");
        let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let (location, ctype) = (header("location"), header("content-type"));
        Page { status, location, ctype, text: r.text().await.unwrap_or_default() }
    }

    async fn get(&mut self, path: &str) -> Page {
        let rb = self.client.get(format!("{}{path}", self.base));
        self.send(rb).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let rb = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(rb).await
    }

    /// Signs in with `key`: the sign-in form, then its POST.
    async fn sign_in(&mut self, key: &str) -> Page {
        let form = self.get("/admin/login").await;
        assert_eq!(form.status, 200, "{form:?}");
        let csrf = form.csrf();
        self.post("/admin/login", &[("csrf", &csrf), ("key", key)]).await
    }

    /// Signs in and answers the overview page.
    async fn signed_in(app: &TestApp, key: &str) -> (Browser, Page) {
        let mut b = Browser::new(app);
        let r = b.sign_in(key).await;
        assert_eq!((r.status, r.location.as_str()), (303, "/admin"), "{r:?}");
        let page = b.get("/admin").await;
        assert_eq!(page.status, 200, "{page:?}");
        (b, page)
    }
}

fn balance(app: &TestApp, org: &str) -> i64 {
    app.engine.credits(org).unwrap().balance
}

// ---------------------------------------------------------------- HTTP: sign-in and session

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_sets_a_strict_cookie_and_signing_out_ends_the_session() {
    let app = spawn_app().await;
    let s = seed(&app);
    let mut b = Browser::new(&app);
    // Every page but the sign-in page needs a session.
    for path in ["/admin", "/admin/billing", "/admin/users", "/admin/usage", "/admin/usage/export?format=csv"] {
        let r = b.get(path).await;
        assert_eq!((r.status, r.location.as_str()), (303, "/admin/login"), "{path}: {r:?}");
    }
    let form = b.get("/admin/login").await;
    assert!(form.text.contains("<label for=\"key\">"), "{form:?}");
    assert!(form.ctype.starts_with("text/html"), "{form:?}");
    let r = b.sign_in(&s.admin).await;
    assert_eq!((r.status, r.location.as_str()), (303, "/admin"), "{r:?}");
    let session = b.set_cookies.iter().find(|c| c.starts_with("cc_admin=")).expect("a session cookie").clone();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(session.contains(attr), "{attr} missing: {session}");
    }
    assert!(!session.contains("Secure"), "plain http: no Secure ({session})");
    let value = b.cookies["cc_admin"].clone();
    assert!(!value.contains(&s.admin), "the key itself is never in the cookie");

    // The overview shows the organization's real figures: 100.00 bought, 3 calls paid.
    let page = b.get("/admin").await;
    assert_eq!(page.status, 200);
    let credits = app.engine.credits(&s.org).unwrap();
    assert!(credits.balance < 10_000 && credits.balance > 0, "{credits:?}");
    let shown = format!("{}.{:02} USD", credits.balance / 100, credits.balance % 100);
    assert!(page.text.contains(&shown), "balance {shown} not on the overview");
    assert!(page.text.contains("lang=\"en\"") && page.text.contains("name=\"viewport\""));
    assert!(page.text.contains("<title id=\"spend-title\">"), "the chart is inline SVG with a title");

    // Sign-out ends the session, also for a copy of the cookie kept elsewhere.
    let csrf = page.csrf();
    let r = b.post("/admin/logout", &[("csrf", &csrf)]).await;
    assert_eq!((r.status, r.location.as_str()), (303, "/admin/login"), "{r:?}");
    assert!(!b.cookies.contains_key("cc_admin"), "the cookie is cleared");
    let r = b.get("/admin").await;
    assert_eq!((r.status, r.location.as_str()), (303, "/admin/login"));
    b.cookies.insert("cc_admin".into(), value);
    let r = b.get("/admin").await;
    assert_eq!((r.status, r.location.as_str()), (303, "/admin/login"), "a signed-out cookie is dead: {r:?}");

    // Behind a TLS proxy the cookie is Secure.
    let mut b = Browser::new(&app);
    let form = b.get("/admin/login").await;
    let rb = b
        .client
        .post(format!("{}/admin/login", b.base))
        .header("x-forwarded-proto", "https")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs([("csrf", form.csrf().as_str()), ("key", s.admin.as_str())])
                .finish(),
        );
    let r = b.send(rb).await;
    assert_eq!(r.status, 303, "{r:?}");
    let session = b.set_cookies.iter().rev().find(|c| c.starts_with("cc_admin=")).unwrap();
    assert!(session.contains("; Secure"), "{session}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_refuses_wrong_keys_platform_keys_revoked_keys_and_forged_forms() {
    let app = spawn_app().await;
    let s = seed(&app);
    let mut b = Browser::new(&app);
    let r = b.sign_in("cc_0000000000000000000000000000000000000000000000000000000000000000").await;
    r.has_code(401, "unauthorized");
    assert!(!b.cookies.contains_key("cc_admin"));
    let r = b.sign_in(&s.operator).await;
    r.has_code(403, "forbidden");
    assert!(r.text.contains("platform key"), "{r:?}");
    assert!(!b.cookies.contains_key("cc_admin"));
    // A sign-in form posted from elsewhere has no nonce cookie.
    let mut other = Browser::new(&app);
    let r = other.post("/admin/login", &[("csrf", "00"), ("key", &s.admin)]).await;
    r.has_code(403, "invalid_csrf_token");
    assert!(!other.cookies.contains_key("cc_admin"));

    // A revoked key ends its sessions at once.
    let (mut b, _) = Browser::signed_in(&app, &s.reader).await;
    let id = app.engine.keys(Some(&s.org)).unwrap().into_iter().find(|k| k.role == "reader").unwrap().id;
    app.engine.apply_one(Timestamp::now(), Command::RevokeKey { org: Some(s.org.clone()), key_id: id }).unwrap();
    let r = b.get("/admin/billing").await;
    assert_eq!((r.status, r.location.as_str()), (303, "/admin/login"), "{r:?}");

    // The failed-authentication limiter of the API applies to sign-in too.
    let mut b = Browser::new(&app);
    let mut limited = false;
    for _ in 0..=commcredits_server::auth::MAX_FAILURES {
        let r = b.sign_in("cc_wrong").await;
        if r.status == 429 {
            r.has_code(429, "rate_limited");
            limited = true;
            break;
        }
        r.has_code(401, "unauthorized");
    }
    assert!(limited, "sign-in failures are limited");
    // Only failures are: a valid key from the same address still signs in.
    let admin = secret(
        app.engine
            .apply_one(
                Timestamp::now(),
                Command::CreateKey { org: Some(s.org.clone()), role: "admin".into(), name: "another".into() },
            )
            .unwrap(),
    );
    let (mut b, _) = Browser::signed_in(&app, &admin).await;
    assert_eq!(b.get("/admin/billing").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_organization_signs_in_and_shows_its_own_figures() {
    let app = spawn_app().await;
    let now = Timestamp::now();
    let report = commcredits_engine::demo::run(&app.engine, now).expect("the demo month");
    let key = secret(
        app.engine
            .apply_one(
                now,
                Command::CreateKey { org: Some(report.org_id.clone()), role: "admin".into(), name: "demo".into() },
            )
            .unwrap(),
    );
    let (mut b, page) = Browser::signed_in(&app, &key).await;
    let credits = app.engine.credits(&report.org_id).unwrap();
    let org = app.engine.org_view(&report.org_id).unwrap();
    let cur = commcredits_core::money::Currency::parse(&credits.currency).unwrap();
    for figure in [credits.balance, credits.available] {
        let shown = commcredits_server::admin::pages::money(cur, figure);
        assert!(page.text.contains(&shown), "{shown} is not on the overview");
    }
    assert!(page.text.contains(&org.name));
    let rec = app.engine.recommend(&report.org_id, Timestamp::now()).unwrap();
    if let Some(days) = rec.days_until_empty {
        assert!(page.text.contains(&format!("{days} day")), "days left {days} not shown");
    }
    // Every page renders for the demo's data.
    for path in
        ["/admin/billing", "/admin/users", "/admin/numbers", "/admin/usage", "/admin/pools", "/admin/notifications"]
    {
        let r = b.get(path).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    // The demo's month reaches back past the first of this month.
    let from = Timestamp::now().checked_sub(jiff::SignedDuration::from_hours(40 * 24)).unwrap();
    let usage = b.get(&format!("/admin/usage?from={}", &from.to_string()[..10])).await;
    assert_eq!(usage.status, 200, "{usage:?}");
    assert!(usage.text.contains("id=\"calls\""), "the demo month has calls");
}

// ---------------------------------------------------------------- HTTP: CSRF and roles

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_needs_the_session_token_and_the_api_role() {
    let app = spawn_app().await;
    let s = seed(&app);
    let before = balance(&app, &s.org);
    let (mut admin, page) = Browser::signed_in(&app, &s.admin).await;
    let token = page.csrf();

    // No token, a wrong one, or another session's: refused, nothing changes.
    let (mut other, other_page) = Browser::signed_in(&app, &s.billing).await;
    for csrf in [None, Some("deadbeef"), Some(other_page.csrf().as_str())] {
        let mut fields = vec![("amount", "50.00"), ("payment_method_id", s.card.as_str())];
        if let Some(c) = csrf {
            fields.push(("csrf", c));
        }
        admin.post("/admin/billing/funds", &fields).await.has_code(403, "invalid_csrf_token");
    }
    admin
        .post("/admin/users/assign", &[("sku", "communications_credits"), ("user_ids", &s.bob)])
        .await
        .has_code(403, "invalid_csrf_token");
    admin.post("/admin/logout", &[]).await.has_code(403, "invalid_csrf_token");
    assert_eq!(balance(&app, &s.org), before);
    assert!(admin.get("/admin").await.status == 200, "a refused sign-out leaves the session");

    // The admin buys; the billing admin buys too.
    let r = admin
        .post("/admin/billing/funds", &[("csrf", &token), ("amount", "50.00"), ("payment_method_id", &s.card)])
        .await;
    assert_eq!((r.status, r.location.as_str()), (303, "/admin/billing"), "{r:?}");
    let billing = admin.get("/admin/billing").await;
    assert!(billing.text.contains("Bought 50.00 USD of credits."), "the flash message is shown once");
    assert!(!admin.get("/admin/billing").await.text.contains("Bought 50.00 USD"), "and only once");
    let r = other
        .post(
            "/admin/billing/funds",
            &[("csrf", &other_page.csrf()), ("amount", "50.00"), ("payment_method_id", &s.card)],
        )
        .await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(balance(&app, &s.org), before + 10_000);

    // A reader sees billing without its forms, and a forged POST with its own valid
    // token is refused with the API's code.
    let (mut reader, page) = Browser::signed_in(&app, &s.reader).await;
    let billing = reader.get("/admin/billing").await;
    assert_eq!(billing.status, 200);
    for form in ["id=\"funds-form\"", "id=\"ar-form\"", "id=\"card-form\"", "id=\"ea-form\""] {
        assert!(!billing.text.contains(form), "a reader is offered {form}");
    }
    assert!(billing.text.contains("id=\"read-only\""));
    let users = reader.get("/admin/users").await;
    assert!(!users.text.contains("id=\"bulk\""), "no bulk assignment for a reader");
    assert!(users.text.contains(" disabled>"), "license toggles are disabled for a reader");
    let t = page.csrf();
    for (path, fields) in [
        ("/admin/billing/funds", vec![("amount", "50.00"), ("payment_method_id", s.card.as_str())]),
        ("/admin/billing/auto-recharge", vec![("enabled", "on"), ("amount", "50.00"), ("threshold", "10.00")]),
        ("/admin/billing/agreements", vec![("agreement_number", "EA-9")]),
        ("/admin/users/assign", vec![("sku", "communications_credits"), ("user_ids", s.bob.as_str())]),
        ("/admin/numbers", vec![("number", "+18002660100"), ("kind", "toll_free")]),
    ] {
        let mut f = fields.clone();
        f.push(("csrf", &t));
        reader.post(path, &f).await.has_code(403, "forbidden");
    }
    let path = format!("/admin/users/{}", s.ada);
    reader.post(&path, &[("csrf", &t), ("dial_out_policy", "disabled")]).await.has_code(403, "forbidden");
    // The reader may still read and export.
    let r = reader.get("/admin/usage/export?format=csv").await;
    assert_eq!(r.status, 200, "{r:?}");

    // license_admin cannot buy; billing_admin cannot change licenses (the API's matrix).
    let (mut lic, page) = Browser::signed_in(&app, &s.licenses).await;
    assert!(!lic.get("/admin/billing").await.text.contains("id=\"funds-form\""));
    let t = page.csrf();
    lic.post("/admin/billing/funds", &[("csrf", &t), ("amount", "50.00"), ("payment_method_id", &s.card)])
        .await
        .has_code(403, "forbidden");
    let r =
        lic.post("/admin/users/assign", &[("csrf", &t), ("sku", "communications_credits"), ("user_ids", &s.bob)]).await;
    assert_eq!(r.status, 303, "{r:?}");
    let t = other_page.csrf();
    other
        .post("/admin/users/assign", &[("csrf", &t), ("sku", "communications_credits"), ("user_ids", &s.cy)])
        .await
        .has_code(403, "forbidden");
    assert!(!other.get("/admin/users").await.text.contains("id=\"bulk\""));
    assert_eq!(balance(&app, &s.org), before + 10_000);
    assert_eq!(app.engine.user(&s.org, &s.cy).unwrap().licenses, vec!["phone_system".to_string()]);
}

// ---------------------------------------------------------------- HTTP: sent twice, applied once

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_field_with_a_control_character_or_over_its_bound_is_refused() {
    let app = spawn_app().await;
    let s = seed(&app);
    let before = balance(&app, &s.org);
    let (mut admin, page) = Browser::signed_in(&app, &s.admin).await;
    let token = page.csrf();
    let nul = format!("{}\u{0}", s.card);
    admin
        .post("/admin/billing/funds", &[("csrf", &token), ("amount", "50.00"), ("payment_method_id", &nul)])
        .await
        .has_code(422, "invalid_input");
    let long = "u".repeat(200);
    admin
        .post("/admin/users/assign", &[("csrf", &token), ("sku", "communications_credits"), ("user_ids", &long)])
        .await
        .has_code(422, "invalid_input");
    assert_eq!(balance(&app, &s.org), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_sent_twice_is_applied_once_and_answered_alike() {
    let app = spawn_app().await;
    let s = seed(&app);
    let before = balance(&app, &s.org);
    let orders = app.engine.orders(&s.org).unwrap().len();
    let (mut b, _) = Browser::signed_in(&app, &s.admin).await;
    let page = b.get("/admin/billing").await;
    let t = page.csrf();

    // Every form that moves money or creates something has its own fresh key.
    let keys: Vec<String> =
        ["funds-form", "ar-form", "card-form", "ea-form"].iter().map(|f| page.hidden(f, "idempotency_key")).collect();
    for k in &keys {
        assert!(k.len() >= 32 && k.bytes().all(|c| c.is_ascii_hexdigit()), "{k}");
    }
    assert_eq!(keys.iter().collect::<std::collections::HashSet<_>>().len(), keys.len(), "{keys:?}");
    let key = keys[0].clone();
    assert_ne!(b.get("/admin/billing").await.hidden("funds-form", "idempotency_key"), key, "a new key per render");

    // Buy credits, then send the very same form again (a double click, a resubmission):
    // the same redirect and message, one order, the balance up once.
    let fields = [
        ("csrf", t.as_str()),
        ("idempotency_key", key.as_str()),
        ("amount", "50.00"),
        ("payment_method_id", s.card.as_str()),
        ("po_number", ""),
    ];
    let first = b.post("/admin/billing/funds", &fields).await;
    assert_eq!((first.status, first.location.as_str()), (303, "/admin/billing"), "{first:?}");
    let message = b.get("/admin/billing").await.flash().expect("a message");
    assert!(message.starts_with("Bought 50.00 USD of credits."), "{message}");
    let again = b.post("/admin/billing/funds", &fields).await;
    assert_eq!((again.status, again.location.as_str()), (303, "/admin/billing"), "{again:?}");
    assert_eq!(b.get("/admin/billing").await.flash(), Some(message));
    assert_eq!(balance(&app, &s.org), before + 5_000);
    assert_eq!(app.engine.orders(&s.org).unwrap().len(), orders + 1);
    // The same key with another request is refused with the API's code.
    let mut other = fields;
    other[2] = ("amount", "60.00");
    b.post("/admin/billing/funds", &other).await.has_code(409, "idempotency_key_reused");
    assert_eq!(balance(&app, &s.org), before + 5_000);
    // A malformed key is refused before anything is applied.
    let mut bad = fields;
    bad[1] = ("idempotency_key", "<not a key>");
    b.post("/admin/billing/funds", &bad).await.has_code(422, "invalid_input");
    // A refusal is answered again as it was.
    let page = b.get("/admin/billing").await;
    let key = page.hidden("funds-form", "idempotency_key");
    let low = [("csrf", t.as_str()), ("idempotency_key", &key), ("amount", "10.00"), ("payment_method_id", &s.card)];
    for _ in 0..2 {
        let r = b.post("/admin/billing/funds", &low).await;
        r.has_code(422, "below_minimum_purchase");
        assert!(r.text.contains("id=\"funds-amount-error\""));
    }
    assert_eq!(app.engine.orders(&s.org).unwrap().len(), orders + 1);

    // A card, an agreement, auto-recharge: each sent twice, each applied once.
    let methods = app.engine.payment_methods(&s.org).unwrap().len();
    let page = b.get("/admin/billing").await;
    let (card_key, ea_key, ar_key) = (
        page.hidden("card-form", "idempotency_key"),
        page.hidden("ea-form", "idempotency_key"),
        page.hidden("ar-form", "idempotency_key"),
    );
    let card = [
        ("csrf", t.as_str()),
        ("idempotency_key", &card_key),
        ("number", "5555 5555 5555 4444"),
        ("exp", "10/2033"),
        ("holder", "Accounts payable"),
    ];
    let ea = [("csrf", t.as_str()), ("idempotency_key", &ea_key), ("agreement_number", "EA-2")];
    let ar = [
        ("csrf", t.as_str()),
        ("idempotency_key", &ar_key),
        ("enabled", "on"),
        ("amount", "60.00"),
        ("threshold", "20.00"),
        ("payment_method_id", &s.card),
    ];
    for (path, fields) in [
        ("/admin/billing/cards", &card[..]),
        ("/admin/billing/agreements", &ea[..]),
        ("/admin/billing/auto-recharge", &ar[..]),
    ] {
        let first = b.post(path, fields).await;
        assert_eq!((first.status, first.location.as_str()), (303, "/admin/billing"), "{path}: {first:?}");
        let message = b.get("/admin/billing").await.flash();
        let again = b.post(path, fields).await;
        assert_eq!((again.status, again.location.as_str()), (303, "/admin/billing"), "{path}: {again:?}");
        assert_eq!(b.get("/admin/billing").await.flash(), message, "{path}");
    }
    assert_eq!(app.engine.payment_methods(&s.org).unwrap().len(), methods + 2);
    // The same card number with another expiry under the card's key: another request.
    let mut card2 = card;
    card2[3] = ("exp", "11/2033");
    b.post("/admin/billing/cards", &card2).await.has_code(409, "idempotency_key_reused");
    assert_eq!(app.engine.payment_methods(&s.org).unwrap().len(), methods + 2);

    // A number, and a bulk license assignment.
    let page = b.get("/admin/numbers").await;
    let key = page.hidden("number-form", "idempotency_key");
    let number = [
        ("csrf", t.as_str()),
        ("idempotency_key", &key),
        ("number", "+18002660100"),
        ("kind", "toll_free"),
        ("user", ""),
    ];
    for _ in 0..2 {
        let r = b.post("/admin/numbers", &number).await;
        assert_eq!((r.status, r.location.as_str()), (303, "/admin/numbers"), "{r:?}");
    }
    assert_eq!(app.engine.numbers(&s.org).unwrap().len(), 1);
    let page = b.get("/admin/users").await;
    let key = page.hidden("bulk", "idempotency_key");
    let bulk = [
        ("csrf", t.as_str()),
        ("idempotency_key", &key),
        ("sku", "communications_credits"),
        ("user_ids", &s.bob),
        ("user_ids", &s.cy),
        ("action", "assign"),
    ];
    for _ in 0..2 {
        let r = b.post("/admin/users/assign", &bulk).await;
        assert_eq!((r.status, r.location.as_str()), (303, "/admin/users"), "{r:?}");
        assert_eq!(b.get("/admin/users").await.flash().as_deref(), Some("Communications Credits assigned to 2 users."));
    }
    let subs = app.engine.subscriptions(&s.org).unwrap();
    let credits = subs.iter().find(|v| v.sku == "communications_credits").unwrap();
    assert_eq!(credits.assigned, 3, "{credits:?}");
    assert_eq!(balance(&app, &s.org), before + 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_shown_next_to_its_field_with_the_api_code_and_kept() {
    let app = spawn_app().await;
    let s = seed(&app);
    let before = balance(&app, &s.org);
    let (mut b, page) = Browser::signed_in(&app, &s.admin).await;
    let t = page.csrf();
    let r = b.post("/admin/billing/funds", &[("csrf", &t), ("amount", "10.00"), ("payment_method_id", &s.card)]).await;
    r.has_code(422, "below_minimum_purchase");
    assert!(r.text.contains("id=\"funds-amount-error\""), "the error sits by the amount field");
    assert!(r.text.contains("value=\"10.00\""), "the value is kept");
    assert!(r.text.contains("aria-invalid=\"true\" aria-describedby=\"funds-amount-error\""));
    b.post("/admin/billing/funds", &[("csrf", &t), ("amount", "50.005"), ("payment_method_id", &s.card)])
        .await
        .has_code(422, "invalid_amount");
    let r =
        b.post("/admin/billing/funds", &[("csrf", &t), ("amount", "<b>5</b>"), ("payment_method_id", &s.card)]).await;
    r.has_code(422, "invalid_amount");
    assert!(r.text.contains("value=\"&lt;b&gt;5&lt;") && !r.text.contains("<b>5</b>"), "values are escaped");

    // A declined card: the order is recorded as failed with its reason.
    let r = b
        .post(
            "/admin/billing/cards",
            &[("csrf", &t), ("number", "4000 0000 0000 0002"), ("exp", "12/2034"), ("holder", "Bob")],
        )
        .await;
    assert_eq!(r.status, 303, "{r:?}");
    let declined = app
        .engine
        .payment_methods(&s.org)
        .unwrap()
        .into_iter()
        .find(|p| p.card.as_ref().is_some_and(|c| c.last4 == "0002"))
        .unwrap();
    let r =
        b.post("/admin/billing/funds", &[("csrf", &t), ("amount", "75.00"), ("payment_method_id", &declined.id)]).await;
    r.has_code(402, "payment_declined");
    assert!(r.text.contains("value=\"75.00\""));
    assert!(
        r.text.contains("class=\"status-failed\">failed</td><td>payment_declined"),
        "the failed order and its reason are listed"
    );
    // A card whose expiry has passed; a malformed expiry.
    let r = b
        .post(
            "/admin/billing/cards",
            &[("csrf", &t), ("number", "4242424242424242"), ("exp", "01/2020"), ("holder", "Old")],
        )
        .await;
    r.has_code(402, "expired_card");
    assert!(r.text.contains("id=\"card-exp-error\"") && r.text.contains("value=\"01&#x2f;2020\""));
    assert!(!r.text.contains("4242424242424242"), "a card number is never sent back");
    b.post("/admin/billing/cards", &[("csrf", &t), ("number", "4242424242424242"), ("exp", "13/2030")])
        .await
        .has_code(422, "invalid_card");
    // Auto-recharge below the minimum.
    let r = b
        .post(
            "/admin/billing/auto-recharge",
            &[
                ("csrf", &t),
                ("enabled", "on"),
                ("amount", "20.00"),
                ("threshold", "5.00"),
                ("payment_method_id", &s.card),
            ],
        )
        .await;
    r.has_code(422, "below_minimum_purchase");
    assert!(r.text.contains("id=\"auto_recharge-amount-error\"") && r.text.contains("value=\"20.00\""));
    b.post(
        "/admin/billing/auto-recharge",
        &[("csrf", &t), ("enabled", "on"), ("amount", "50.00"), ("threshold", "-1"), ("payment_method_id", &s.card)],
    )
    .await
    .has_code(422, "invalid_amount");
    // Numbers, licenses and policies.
    let r = b.post("/admin/numbers", &[("csrf", &t), ("number", "+1 555"), ("kind", "toll_free"), ("user", "")]).await;
    r.has_code(422, "invalid_phone_number");
    assert!(r.text.contains("id=\"number-number-error\"") && r.text.contains("value=\"+1 555\""));
    let r = b
        .post(
            "/admin/users/assign",
            &[("csrf", &t), ("sku", "calling_plan_domestic"), ("user_ids", &s.bob), ("user_ids", &s.cy)],
        )
        .await;
    assert_eq!(r.status, 303, "{r:?}");
    let path = format!("/admin/users/{}/licenses", s.bob);
    b.post(&path, &[("csrf", &t), ("skus", "calling_plan_domestic")])
        .await
        .has_code(422, "license_requires_phone_system");
    let path = format!("/admin/users/{}", s.ada);
    let r = b
        .post(
            &path,
            &[
                ("csrf", &t),
                ("dial_out_policy", "domestic"),
                ("conference_dial_out_policy", "international"),
                ("spend_limit", "ten"),
            ],
        )
        .await;
    r.has_code(422, "invalid_amount");
    assert!(r.text.contains("value=\"ten\""));
    let r = b
        .post(
            &path,
            &[
                ("csrf", &t),
                ("dial_out_policy", "domestic"),
                ("conference_dial_out_policy", "disabled"),
                ("spend_limit", "25.50"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{r:?}");
    let ada = app.engine.user(&s.org, &s.ada).unwrap();
    assert_eq!(
        (ada.dial_out_policy.as_str(), ada.conference_dial_out_policy.as_str(), ada.spend_limit),
        ("domestic", "disabled", Some(2_550))
    );
    // Usage filters.
    let r = b.get("/admin/usage?from=2026-13-01&country=Germany").await;
    r.has_code(422, "invalid_time");
    assert!(r.text.contains("data-code=\"invalid_country\"") && r.text.contains("value=\"GERMANY\""));
    b.get("/admin/usage?user=nobody%40contoso.example").await.has_code(404, "unknown_user");
    assert_eq!(balance(&app, &s.org), before, "nothing refused changed the balance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_shown_before_a_change_elsewhere_does_not_undo_it() {
    let app = spawn_app().await;
    let s = seed(&app);
    let (mut b, _) = Browser::signed_in(&app, &s.admin).await;
    let now = Timestamp::now();
    // Ada's page is shown, then her spend limit and a license change through the API.
    let page = b.get(&format!("/admin/users/{}", s.ada)).await;
    let users = b.get("/admin/users").await;
    app.engine
        .apply_one(
            now,
            Command::UpdateUser(commcredits_engine::admin::UserChanges {
                org: s.org.clone(),
                user: s.ada.clone(),
                spend_limit: Some(Some("20.00".into())),
                ..Default::default()
            }),
        )
        .unwrap();
    app.engine
        .apply_one(
            now,
            Command::AssignLicense {
                org: s.org.clone(),
                sku: "communications_credits".into(),
                users: vec![s.bob.clone()],
            },
        )
        .unwrap();
    // The admin changes only the dial-out policy on the old page: the limit stays 20.00.
    let form = "policy-form";
    let r = b
        .post(
            &format!("/admin/users/{}", s.ada),
            &[
                ("csrf", &page.csrf()),
                ("was_dial_out_policy", &page.hidden(form, "was_dial_out_policy")),
                ("was_conference_dial_out_policy", &page.hidden(form, "was_conference_dial_out_policy")),
                ("was_spend_limit", &page.hidden(form, "was_spend_limit")),
                ("dial_out_policy", "domestic"),
                ("conference_dial_out_policy", &page.hidden(form, "was_conference_dial_out_policy")),
                ("spend_limit", &page.hidden(form, "was_spend_limit")),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{r:?}");
    let ada = app.engine.user(&s.org, &s.ada).unwrap();
    assert_eq!((ada.dial_out_policy.as_str(), ada.spend_limit), ("domestic", Some(2_000)));
    // On the old users page Bob held Phone System only; the admin unticks nothing and
    // ticks nothing new but saves: the license assigned meanwhile stays.
    let lic = format!("lic-{}", s.bob);
    assert_eq!(users.hidden(&lic, "held"), "phone_system");
    let r = b
        .post(
            &format!("/admin/users/{}/licenses", s.bob),
            &[("csrf", &users.csrf()), ("held_shown", "1"), ("held", "phone_system"), ("skus", "phone_system")],
        )
        .await;
    assert_eq!(r.status, 303, "{r:?}");
    let mut held = app.engine.user(&s.org, &s.bob).unwrap().licenses;
    held.sort();
    assert_eq!(held, ["communications_credits", "phone_system"]);
    // What the admin does change applies: on a page that shows both, unticking
    // Communications Credits removes it and keeps the rest.
    let r = b
        .post(
            &format!("/admin/users/{}/licenses", s.bob),
            &[
                ("csrf", &users.csrf()),
                ("held_shown", "1"),
                ("held", "phone_system"),
                ("held", "communications_credits"),
                ("skus", "phone_system"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(app.engine.user(&s.org, &s.bob).unwrap().licenses, ["phone_system"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_table_pages_back_and_forth_with_its_filters_and_without_javascript() {
    let app = spawn_app().await;
    let s = seed(&app);
    // 120 domestic calls (three pages) besides the seed's three to London.
    let now = Timestamp::now();
    let mut csv = String::from("call_id,type,user,from,to,start_time,duration_seconds\n");
    for i in 0..120i64 {
        let start = now.checked_sub(jiff::SignedDuration::from_mins(i + 1)).unwrap();
        csv.push_str(&format!("page-{i},outbound,ada@contoso.example,+14155550100,+14155550123,{start},30\n"));
    }
    let report = app.engine.import_cdrs(&s.org, csv.as_bytes(), now, &mut |_| {}).unwrap();
    assert_eq!(report.charged, 120, "{report:?}");
    let (mut b, _) = Browser::signed_in(&app, &s.admin).await;
    let from = &now.checked_sub(jiff::SignedDuration::from_hours(72)).unwrap().to_string()[..10];
    let to = &now.to_string()[..10];
    let filters = [format!("from={from}"), format!("to={to}"), "country=US".to_string()];
    let keeps_filters = |href: &str| {
        assert!(href.starts_with("/admin/usage?"), "{href}");
        for f in &filters {
            assert!(href.contains(f.as_str()), "{href} lost {f}");
        }
    };

    let first = b.get(&format!("/admin/usage?from={from}&to={to}&country=US")).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.calls().len(), 50);
    assert!(first.text.contains("Page 1 of 3"), "no page number on the first page");
    assert_eq!(first.link("prev-page"), None, "no page before the first");
    let next = first.link("next-page").expect("a next page");
    keeps_filters(&next);
    let second = b.get(&next).await;
    assert_eq!((second.status, second.calls().len()), (200, 50));
    assert!(second.text.contains("Page 2 of 3"));
    let third = b.get(&second.link("next-page").expect("a third page")).await;
    assert_eq!((third.status, third.calls().len()), (200, 20));
    assert!(third.text.contains("Page 3 of 3"));
    assert_eq!(third.link("next-page"), None);
    let all: std::collections::HashSet<String> = [&first, &second, &third].iter().flat_map(|p| p.calls()).collect();
    assert_eq!(all.len(), 120, "every call once, none from London");

    // Back again, page by page: the same rows, the filters kept.
    let prev = third.link("prev-page").expect("a previous page");
    keeps_filters(&prev);
    let back = b.get(&prev).await;
    assert_eq!(back.status, 200, "{back:?}");
    assert_eq!(back.calls(), second.calls());
    assert!(back.text.contains("Page 2 of 3"));
    let prev = back.link("prev-page").expect("a previous page");
    keeps_filters(&prev);
    assert!(!prev.contains("cursor="), "the first page has no cursor: {prev}");
    let back = b.get(&prev).await;
    assert_eq!(back.calls(), first.calls());
    assert_eq!(back.link("prev-page"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_are_cached_and_pages_are_not() {
    let app = spawn_app().await;
    let s = seed(&app);
    let (mut b, page) = Browser::signed_in(&app, &s.admin).await;
    // Attribute values are HTML-escaped ('/' as &#x2f;).
    let text = page.text.replace("&#x2f;", "/");
    let css = text.split("href=\"/admin/static/admin.css?v=").nth(1).expect("the stylesheet link");
    let css = format!("/admin/static/admin.css?v={}", &css[..css.find('"').unwrap()]);
    let client = reqwest::Client::new();
    for path in [css.as_str(), "/admin/static/htmx.min.js"] {
        let r = client.get(format!("{}{path}", app.base)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "public, max-age=31536000, immutable");
    }
    let js = client.get(format!("{}/admin/static/htmx.min.js", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(js.starts_with("/* htmx 2.0.11") && js.contains("htmx"), "the vendored htmx with its licence line");
    let r = client.get(format!("{}/admin/login", app.base)).send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    let _ = b.get("/admin/static/nothing.js").await;
}

// ---------------------------------------------------------------- the browser

mod browser {
    use super::*;
    use fantoccini::actions::{InputSource, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
    use fantoccini::{Client, ClientBuilder, Locator};
    use std::os::unix::process::CommandExt;
    use std::path::PathBuf;
    use std::process::{Child, Command as Process, Stdio};
    use std::time::Duration;

    const CHROMIUM: &str = "/usr/bin/chromium";
    const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

    struct Driver(Child);

    /// chromedriver leads a process group of its own, which the Chromium it starts
    /// joins: the whole group ends with the test, also when a failed assertion left the
    /// browser session open.
    impl Drop for Driver {
        fn drop(&mut self) {
            let _ =
                Process::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).stderr(Stdio::null()).status();
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// chromedriver on a free port, and a headless Chromium session through it.
    async fn start() -> (Driver, Client) {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: the admin pages' browser tests need Debian's chromium and chromium-driver \
                 (apt-get install -y chromium chromium-driver; .ci/run installs them)"
            );
        }
        let port = free_port();
        let child = Process::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver(child);
        let url = format!("http://127.0.0.1:{port}");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--window-size=1280,1000", "--lang=en-US", "--hide-scrollbars"]
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match ClientBuilder::new(connector.clone()).capabilities(caps.clone()).connect(&url).await {
                Ok(c) => return (driver, c),
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("chromedriver at {url} did not start a Chromium session: {e}"),
            }
        }
    }

    fn shots_dir() -> PathBuf {
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        let dir = target.join("admin-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The width and height of a PNG (its IHDR chunk).
    fn png_size(png: &[u8]) -> (u64, u64) {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        let be = |at: usize| u64::from(u32::from_be_bytes(png[at..at + 4].try_into().unwrap()));
        (be(16), be(20))
    }

    /// A screenshot of the whole page, not only of what the window shows: the window
    /// is made as tall as the document (at the width it has), then given its size back.
    async fn shot(c: &Client, name: &str) {
        const MEASURE: &str = "return [document.documentElement.scrollHeight, \
             Math.max(0, window.outerHeight - window.innerHeight), \
             document.documentElement.clientWidth, window.devicePixelRatio];";
        let measure = || async {
            let m = c.execute(MEASURE, vec![]).await.expect("the page's size");
            let n = |i: usize| m[i].as_f64().unwrap_or_else(|| panic!("{m:?}"));
            (n(0) as u64, n(1) as u64, n(2) as u64, n(3))
        };
        let (width, height) = c.get_window_size().await.unwrap();
        // Taller content can reflow once more (a scrollbar that goes): measure again.
        let mut tall = 0;
        for _ in 0..3 {
            let (doc, frame, _, _) = measure().await;
            if doc == tall {
                break;
            }
            tall = doc;
            c.set_window_size(width as u32, (doc + frame) as u32).await.unwrap();
        }
        let png = c.screenshot().await.expect("a screenshot");
        let (doc, _, inner, ratio) = measure().await;
        let (w, h) = png_size(&png);
        assert_eq!(
            (w, h),
            ((inner as f64 * ratio).round() as u64, (doc as f64 * ratio).round() as u64),
            "{name}: the screenshot holds the whole page"
        );
        std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
        c.set_window_size(width as u32, height as u32).await.unwrap();
    }

    async fn text(c: &Client, css: &str) -> String {
        let e = c.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(css)).await;
        e.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    /// Clicks a button that leaves the page, and waits until the next page replaced it.
    async fn submit(c: &Client, css: &str) {
        let old = c.find(Locator::Css("html")).await.unwrap();
        click(c, css).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while old.tag_name().await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "{css} did not lead to another page");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn fill(c: &Client, css: &str, value: &str) {
        let e = c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
    }

    async fn click(c: &Client, css: &str) {
        c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.unwrap();
    }

    /// Waits for the page after a form's redirect to show its message.
    async fn flash(c: &Client) -> String {
        text(c, "p.flash").await
    }

    async fn sign_in(c: &Client, base: &str, key: &str) {
        c.goto(&format!("{base}/admin/login")).await.unwrap();
        fill(c, "#key", key).await;
        submit(c, "form button[type=submit]").await;
        text(c, "#balance").await;
    }

    /// A fetch from inside the page, with the browser's cookies: [status, body].
    async fn post_from_page(c: &Client, path: &str, fields: serde_json::Value) -> (u64, String) {
        let v = c
            .execute(
                "const [path, fields] = arguments; \
                 return fetch(path, {method: 'POST', body: new URLSearchParams(fields), credentials: 'same-origin', redirect: 'manual'}) \
                   .then(r => r.text().then(t => [r.status, t]));",
                vec![serde_json::json!(path), fields],
            )
            .await
            .expect("the page's fetch");
        (v[0].as_u64().unwrap(), v[1].as_str().unwrap().to_string())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_admin_center_in_chromium() {
        let app = spawn_app().await;
        let s = seed(&app);
        let (_driver, c) = start().await;
        let base = app.base.clone();
        let start_balance = balance(&app, &s.org);

        // Sign in with the admin key: the overview shows the organization's figures.
        c.goto(&format!("{base}/admin/login")).await.unwrap();
        shot(&c, "login").await;
        sign_in(&c, &base, &s.admin).await;
        let cur = |minor: i64| format!("{}.{:02} USD", minor / 100, minor % 100);
        assert_eq!(text(&c, "#balance").await, cur(start_balance));
        shot(&c, "overview").await;

        // Buy credits with the card.
        c.goto(&format!("{base}/admin/billing")).await.unwrap();
        fill(&c, "#funds-amount", "50.00").await;
        c.find(Locator::Css("#funds-method")).await.unwrap().select_by_value(&s.card).await.unwrap();
        submit(&c, "#funds-form button[type=submit]").await;
        let msg = flash(&c).await;
        assert!(msg.starts_with("Bought 50.00 USD of credits."), "{msg}");
        assert_eq!(text(&c, "#balance").await, cur(start_balance + 5_000));
        // A double click on "Buy credits" places one order.
        let orders = app.engine.orders(&s.org).unwrap().len();
        fill(&c, "#funds-amount", "50.00").await;
        c.find(Locator::Css("#funds-method")).await.unwrap().select_by_value(&s.card).await.unwrap();
        let old = c.find(Locator::Css("html")).await.unwrap();
        let button = c.find(Locator::Css("#funds-form button[type=submit]")).await.unwrap();
        let press = |a: MouseActions| {
            a.then(PointerAction::Down { button: MOUSE_BUTTON_LEFT })
                .then(PointerAction::Up { button: MOUSE_BUTTON_LEFT })
        };
        let double = press(
            press(MouseActions::new("mouse".into()).then(PointerAction::MoveToElement {
                element: button,
                duration: None,
                x: 0.0,
                y: 0.0,
            }))
            .then(PointerAction::Pause { duration: Duration::from_millis(15) }),
        );
        c.perform_actions(double).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while old.tag_name().await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "the double click did not lead to another page");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let msg = flash(&c).await;
        assert!(msg.starts_with("Bought 50.00 USD of credits."), "{msg}");
        assert_eq!(app.engine.orders(&s.org).unwrap().len(), orders + 1, "one order for a double click");
        assert_eq!(text(&c, "#balance").await, cur(start_balance + 10_000));
        // Turn on auto-recharge.
        let enabled = c.find(Locator::Css("#ar-enabled")).await.unwrap();
        if !enabled.is_selected().await.unwrap() {
            enabled.click().await.unwrap();
        }
        fill(&c, "#ar-amount", "60.00").await;
        fill(&c, "#ar-threshold", "20.00").await;
        c.find(Locator::Css("#ar-method")).await.unwrap().select_by_value(&s.card).await.unwrap();
        submit(&c, "#ar-form button[type=submit]").await;
        let msg = flash(&c).await;
        assert_eq!(msg, "Auto-recharge is on: 60.00 USD when the available balance falls below 20.00 USD.");
        let credits = app.engine.credits(&s.org).unwrap();
        assert!(credits.auto_recharge.enabled);
        assert_eq!((credits.auto_recharge.amount, credits.auto_recharge.threshold), (6_000, 2_000));
        assert_eq!(credits.auto_recharge.payment_method_id.as_deref(), Some(s.card.as_str()));
        shot(&c, "billing").await;
        // The overview shows the new balance.
        submit(&c, "nav.sections a[href='/admin']").await;
        assert_eq!(text(&c, "#balance").await, cur(start_balance + 10_000));

        // Assign Communications Credits to two users at once.
        c.goto(&format!("{base}/admin/users")).await.unwrap();
        click(&c, &format!("#sel-{}", s.bob)).await;
        click(&c, &format!("#sel-{}", s.cy)).await;
        c.find(Locator::Css("#bulk-sku")).await.unwrap().select_by_value("communications_credits").await.unwrap();
        submit(&c, "#bulk button[value=assign]").await;
        assert_eq!(flash(&c).await, "Communications Credits assigned to 2 users.");
        for u in [&s.bob, &s.cy] {
            let v = app.engine.user(&s.org, u).unwrap();
            assert!(v.licenses.contains(&"communications_credits".to_string()), "{v:?}");
            let toggle = c.find(Locator::Css(&format!("#lic-{u}-communications_credits"))).await.unwrap();
            assert!(toggle.is_selected().await.unwrap(), "the toggle shows the license");
        }
        shot(&c, "users").await;
        c.goto(&format!("{base}/admin/users/{}", s.ada)).await.unwrap();
        text(&c, "#policy-form").await;
        shot(&c, "user").await;

        // The month's usage: the page, then its Excel and CSV exports.
        c.goto(&format!("{base}/admin/usage")).await.unwrap();
        assert!(text(&c, "#usage-totals").await.starts_with(&format!("{} calls", s.calls)));
        shot(&c, "usage").await;
        let cookie = c.get_named_cookie("cc_admin").await.expect("the session cookie");
        let http = reqwest::Client::new();
        let mut files = HashMap::new();
        for id in ["export-xlsx", "export-csv"] {
            let href = c.find(Locator::Id(id)).await.unwrap().attr("href").await.unwrap().unwrap();
            let r = http
                .get(format!("{base}{href}"))
                .header("cookie", format!("cc_admin={}", cookie.value()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{href}");
            let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
            let disposition = r.headers()["content-disposition"].to_str().unwrap().to_string();
            files.insert(id, (ctype, disposition, r.bytes().await.unwrap().to_vec()));
        }
        let (ctype, disposition, xlsx) = &files["export-xlsx"];
        assert_eq!(ctype, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet");
        assert!(disposition.starts_with("attachment; filename=\"pstn-usage-") && disposition.ends_with(".xlsx\""));
        assert_eq!(&xlsx[..4], b"PK\x03\x04", "a workbook is a zip");
        {
            use calamine::Reader;
            let mut wb: calamine::Xlsx<_> =
                calamine::open_workbook_from_rs(std::io::Cursor::new(xlsx.clone())).unwrap();
            let sheet = wb.sheet_names()[0].clone();
            let range = wb.worksheet_range(&sheet).unwrap();
            let rows: Vec<_> = range.rows().collect();
            assert_eq!(rows.len(), 1 + s.calls, "the header and one row per call");
            assert_eq!(rows[0][0].to_string(), "UsageId");
            assert_eq!(rows[0][19].to_string(), "Capability");
        }
        let (ctype, _, csv) = &files["export-csv"];
        assert_eq!(ctype, "text/csv; charset=utf-8");
        let csv = String::from_utf8(csv.clone()).unwrap();
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        assert_eq!(
            header[..20],
            [
                "UsageId",
                "Call ID",
                "Conference ID",
                "User Location",
                "AAD ObjectId",
                "UPN",
                "User Display Name",
                "Caller ID",
                "Call Type",
                "Number Type",
                "Domestic/International",
                "Destination Dialed",
                "Destination Number",
                "Start Time",
                "End Time",
                "Duration Seconds",
                "Connection Fee",
                "Charge",
                "Currency",
                "Capability"
            ]
        );
        assert_eq!(csv.lines().count(), 1 + s.calls);
        // Without the session the export is not served.
        let bare = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let r = bare.get(format!("{base}/admin/usage/export?format=csv")).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/admin/login"));

        for page in ["numbers", "pools", "notifications"] {
            c.goto(&format!("{base}/admin/{page}")).await.unwrap();
            text(&c, "main h1").await;
            shot(&c, page).await;
        }

        // CSRF: a POST from the page without the token is refused.
        let (status, body) = post_from_page(
            &c,
            "/admin/billing/funds",
            serde_json::json!({"amount": "50.00", "payment_method_id": s.card}),
        )
        .await;
        assert_eq!(status, 403);
        assert!(body.contains("data-code=\"invalid_csrf_token\""), "{body}");

        // A phone's width: the same pages, one column.
        c.set_window_size(390, 844).await.unwrap();
        for page in ["", "/billing", "/users", "/usage"] {
            c.goto(&format!("{base}/admin{page}")).await.unwrap();
            text(&c, "main h1").await;
            let name = if page.is_empty() { "overview" } else { &page[1..] };
            shot(&c, &format!("phone-{name}")).await;
        }
        c.set_window_size(1280, 1000).await.unwrap();

        // Sign out: the session ends.
        c.goto(&format!("{base}/admin")).await.unwrap();
        submit(&c, "form.signout button").await;
        assert_eq!(flash(&c).await, "Signed out.");
        c.goto(&format!("{base}/admin/billing")).await.unwrap();
        assert!(c.current_url().await.unwrap().path().ends_with("/admin/login"));
        c.find(Locator::Css("#key")).await.expect("the sign-in form");

        // A reader: billing without forms, and a forged POST with a valid token refused.
        sign_in(&c, &base, &s.reader).await;
        c.goto(&format!("{base}/admin/billing")).await.unwrap();
        text(&c, "#read-only").await;
        assert!(c.find(Locator::Css("#funds-form")).await.is_err(), "a reader is not offered the purchase form");
        shot(&c, "billing-reader").await;
        let csrf = c.find(Locator::Css("input[name=csrf]")).await.unwrap().attr("value").await.unwrap().unwrap();
        let before = balance(&app, &s.org);
        let (status, body) = post_from_page(
            &c,
            "/admin/billing/funds",
            serde_json::json!({"csrf": csrf, "amount": "50.00", "payment_method_id": s.card}),
        )
        .await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("data-code=\"forbidden\""), "{body}");
        assert_eq!(balance(&app, &s.org), before);
        c.close().await.unwrap();
    }
}
