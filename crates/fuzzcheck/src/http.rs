//! Requests through the real router, in process: the call-control JSON bodies and the
//! admin center's forms and report queries. One server (an in-memory SQLite store, one
//! funded organization, a call-control key and a signed-in admin session) answers every
//! input of a fuzzing process. Its contract: never a 5xx; an API refusal is a problem
//! document with a stable code; an admin answer is a page or a redirect within the
//! admin center; and the books of the organization balance after any sequence of inputs.
//!
//! An input's first byte picks the request, the rest is its body (or query string).
//! `$ORG`, `$USER` and `$UPN` in it stand for the organization's id, a licensed user's
//! id and UPN, so that saved inputs reach past "unknown organization".
//! `FUZZ_HTTP_TRACE=1` prints each answer's status and first bytes to stderr.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use commcredits_core::{ErrorCode, Timestamp};
use commcredits_engine::payments::CardInput;
use commcredits_engine::{Command, Engine, Outcome};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

/// Call ids the update and end requests name: few, so they meet the calls that
/// authorize requests opened.
const CALL_IDS: u8 = 8;
/// How often (in inputs) the books are checked: the check reads every lot.
const BOOKS_EVERY: u64 = 256;

struct Harness {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    engine: Arc<Engine>,
    call_control: String,
    org: String,
    user: String,
    upn: String,
    /// The admin session: its cookie header and the token its forms carry.
    cookie: String,
    csrf: String,
    inputs: AtomicU64,
}

/// One answer, read whole.
struct Answer {
    status: StatusCode,
    content_type: String,
    location: String,
    set_cookies: Vec<String>,
    body: Vec<u8>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(Harness::new)
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

/// The value of the first hidden `csrf` field of a page.
fn csrf_field(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = page.find(marker).unwrap_or_else(|| panic!("no csrf field in {page}")) + marker.len();
    page[at..].split('"').next().unwrap_or_default().to_string()
}

/// `name=value` of each `Set-Cookie`, as a `Cookie` header sends them back.
fn cookie_header(set_cookies: &[String]) -> String {
    set_cookies.iter().filter_map(|c| c.split(';').next()).collect::<Vec<_>>().join("; ")
}

impl Harness {
    fn new() -> Harness {
        // One worker runs the server's tasks (its group-commit writer); any thread may send.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
        let store = commcredits_store::sqlite::SqliteStore::open("sqlite::memory:").expect("open the store");
        let engine = Arc::new(Engine::new(Arc::new(store)).expect("engine"));
        let now = Timestamp::now();
        let one = |c: Command| engine.apply_one(now, c).unwrap_or_else(|e| panic!("{e}"));
        let call_control =
            secret(one(Command::CreateKey { org: None, role: "call_control".into(), name: "switch".into() }));
        let org = created(one(Command::CreateOrg {
            name: "Contoso".into(),
            currency: "USD".into(),
            country: "US".into(),
            emails: vec!["billing@example.com".into()],
        }));
        let admin =
            secret(one(Command::CreateKey { org: Some(org.clone()), role: "admin".into(), name: "admin".into() }));
        let upn = "ada@example.com".to_string();
        let user = created(one(Command::CreateUser {
            org: org.clone(),
            upn: upn.clone(),
            display_name: "Ada".into(),
            usage_location: "US".into(),
            phone_number: None,
        }));
        // A domestic plan only: international calls are paid from credits.
        for sku in ["phone_system", "communications_credits", "calling_plan_domestic", "audio_conferencing"] {
            one(Command::AddSubscription { org: org.clone(), sku: sku.into(), quantity: 5 });
            one(Command::AssignLicense { org: org.clone(), sku: sku.into(), users: vec![user.clone()] });
        }
        one(Command::AddNumber {
            org: org.clone(),
            number: "+18005550100".into(),
            kind: "toll_free".into(),
            user: None,
        });
        let token = engine
            .gateway()
            .tokenize_card(
                &CardInput { number: "4242424242424242".into(), exp_month: 12, exp_year: 2035, holder: "A".into() },
                now,
            )
            .expect("a test card");
        let card = created(one(Command::AddCard { org: org.clone(), token, holder: None }));
        let paid = engine.purchase(&org, "5000.00", &card, None, None, now).expect("a purchase");
        assert_eq!(paid.status, "succeeded");
        let router = {
            let _in_runtime = rt.enter();
            commcredits_server::router(commcredits_server::App::new(engine.clone()))
        };
        let mut h = Harness {
            rt,
            router,
            engine,
            call_control,
            org,
            user,
            upn,
            cookie: String::new(),
            csrf: String::new(),
            inputs: AtomicU64::new(0),
        };
        h.sign_in(&admin);
        h
    }

    fn send(&self, req: Request<Body>) -> Answer {
        self.rt.block_on(async {
            let r = self.router.clone().oneshot(req).await.expect("the router answers");
            let text = |name: header::HeaderName| {
                r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
            };
            let (content_type, location) = (text(header::CONTENT_TYPE), text(header::LOCATION));
            let set_cookies = r
                .headers()
                .get_all(header::SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect();
            let status = r.status();
            let body = axum::body::to_bytes(r.into_body(), usize::MAX).await.expect("a whole body").to_vec();
            if std::env::var_os("FUZZ_HTTP_TRACE").is_some() {
                eprintln!(
                    "TRACE {status} {location} {}",
                    String::from_utf8_lossy(&body).chars().take(300).collect::<String>().replace('\n', " ")
                );
            }
            Answer { status, content_type, location, set_cookies, body }
        })
    }

    fn sign_in(&mut self, key: &str) {
        let form = self.send(Request::get("/admin/login").body(Body::empty()).expect("a request"));
        assert_eq!(form.status, StatusCode::OK);
        let csrf = csrf_field(&String::from_utf8_lossy(&form.body));
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([("csrf", &csrf), ("key", &key.to_string())])
            .finish();
        let signed = self.send(
            Request::post("/admin/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::COOKIE, cookie_header(&form.set_cookies))
                .body(Body::from(body))
                .expect("a request"),
        );
        assert_eq!((signed.status, signed.location.as_str()), (StatusCode::SEE_OTHER, "/admin"));
        self.cookie = cookie_header(&signed.set_cookies);
        let overview = self
            .send(Request::get("/admin").header(header::COOKIE, &self.cookie).body(Body::empty()).expect("a request"));
        assert_eq!(overview.status, StatusCode::OK);
        self.csrf = csrf_field(&String::from_utf8_lossy(&overview.body));
    }

    fn fill(&self, bytes: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(bytes);
        if !text.contains('$') {
            return bytes.to_vec();
        }
        text.replace("$ORG", &self.org).replace("$USER", &self.user).replace("$UPN", &self.upn).into_bytes()
    }

    /// After every input: the books every [`BOOKS_EVERY`] inputs.
    fn after(&self) {
        if self.inputs.fetch_add(1, Ordering::Relaxed).is_multiple_of(BOOKS_EVERY) {
            if let Err(e) = self.engine.check_books(&self.org) {
                panic!("the books do not balance: {e}");
            }
        }
    }
}

fn known_code(code: &str) -> bool {
    ErrorCode::ALL.iter().any(|c| c.as_str() == code)
}

/// An API answer: a 2xx JSON document or a 4xx problem with a stable code.
#[track_caller]
fn check_api(what: &str, a: &Answer) {
    assert!(!a.status.is_server_error(), "{what}: {} {}", a.status, String::from_utf8_lossy(&a.body));
    let doc: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_else(|e| {
        panic!("{what}: {} answered no JSON ({e}): {:?}", a.status, String::from_utf8_lossy(&a.body))
    });
    if a.status.is_success() {
        return;
    }
    assert!(a.status.is_client_error(), "{what}: {}", a.status);
    assert!(a.content_type.starts_with("application/problem+json"), "{what}: {}", a.content_type);
    let code = doc["code"].as_str().unwrap_or_default();
    assert!(known_code(code), "{what}: unknown code in {doc}");
}

/// Call control: byte 0 picks authorize, update or end (and, for the last two, one of
/// [`CALL_IDS`] call ids); the rest is the JSON body, sent with the call-control key.
pub fn call_control(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else { return };
    let h = harness();
    let call = sel / 3 % CALL_IDS;
    let path = match sel % 3 {
        0 => "/v1/calls/authorize".to_string(),
        1 => format!("/v1/calls/c{call}/update"),
        _ => format!("/v1/calls/c{call}/end"),
    };
    let answer = h.send(
        Request::post(path.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {}", h.call_control))
            .body(Body::from(h.fill(body)))
            .expect("a request"),
    );
    check_api(&path, &answer);
    if answer.status.is_success() && sel % 3 == 0 {
        let view: serde_json::Value = serde_json::from_slice(&answer.body).expect("checked above");
        let decision = view["decision"].as_str().unwrap_or_default();
        assert!(["allow", "deny"].contains(&decision), "{view}");
        let granted = view["granted_seconds"].as_u64().expect("granted seconds");
        assert!(granted <= u64::from(commcredits_engine::calls::MAX_REQUESTED_SECONDS), "{view}");
        assert!(decision == "allow" || granted == 0, "{view}");
        assert!(view["reserved_amount"].as_i64().is_some_and(|r| r >= 0), "{view}");
    }
    h.after();
}

/// The admin center's forms, and its report queries: byte 0 picks the form (or the
/// page whose query string the rest is); the rest is the form body, after the session's
/// anti-forgery token.
pub fn admin_form(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let h = harness();
    let user = format!("/admin/users/{}", h.user);
    let licenses = format!("{user}/licenses");
    let forms = [
        "/admin/billing/funds",
        "/admin/billing/auto-recharge",
        "/admin/billing/cards",
        "/admin/billing/agreements",
        "/admin/users/assign",
        user.as_str(),
        licenses.as_str(),
        "/admin/numbers",
    ];
    let pages = ["/admin/usage", "/admin/usage/export", "/admin/users", "/admin/billing"];
    let pick = usize::from(sel) % (forms.len() + pages.len());
    let rest = h.fill(rest);
    let req = if let Some(path) = forms.get(pick) {
        let mut body = format!("csrf={}&", h.csrf).into_bytes();
        body.extend_from_slice(&rest);
        Request::post(*path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(Body::from(body))
    } else {
        // What a browser could not send as a query is refused before any page sees it.
        let Ok(query) = std::str::from_utf8(&rest) else { return };
        Request::get(format!("{}?{query}", pages[pick - forms.len()]).as_str()).body(Body::empty())
    };
    let Ok(mut req) = req else { return };
    req.headers_mut().insert(header::COOKIE, h.cookie.parse().expect("a cookie header"));
    let what = format!("{} {}", req.method(), req.uri());
    let a = h.send(req);
    assert!(!a.status.is_server_error(), "{what}: {} {}", a.status, String::from_utf8_lossy(&a.body));
    if a.status.is_redirection() {
        assert!(a.location.starts_with("/admin"), "{what}: redirected to {:?}", a.location);
        assert_ne!(a.location, "/admin/login", "{what}: the session was lost");
    } else if a.status.is_success() {
        let page = a.content_type.starts_with("text/html");
        let export = a.content_type.starts_with("text/csv") || a.content_type.contains("spreadsheetml");
        assert!(page || export, "{what}: {} answered {}", a.status, a.content_type);
    } else {
        assert!(a.status.is_client_error(), "{what}: {}", a.status);
        assert!(a.content_type.starts_with("text/html"), "{what}: an error is a page, not {}", a.content_type);
    }
    h.after();
}
