//! The HTTP API of SPEC §3 end to end: a real server on a loopback port, a fresh
//! SQLite database per test, requests through reqwest. Every response is checked for
//! the common rules (never a 5xx, every error is an RFC 9457 problem with a `code`).

use commcredits_core::Timestamp;
use commcredits_engine::payments::CardInput;
use commcredits_engine::{Command, Engine, Outcome};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

// ---------------------------------------------------------------- harness

struct TestApp {
    /// Answers of this server that the OpenAPI document does not declare.
    undeclared: Arc<std::sync::Mutex<Vec<String>>>,
    base: String,
    engine: Arc<Engine>,
    client: reqwest::Client,
    operator: String,
    call_control: String,
}

#[derive(Debug, Clone)]
struct Resp {
    status: u16,
    ctype: String,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_string()
    }
}

enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

fn secret(o: Outcome) -> String {
    match o {
        Outcome::Key(k) => k.secret,
        other => panic!("expected a key, got {other:?}"),
    }
}

fn created(o: Outcome) -> String {
    match o {
        Outcome::Created { id } => id,
        other => panic!("expected Created, got {other:?}"),
    }
}

async fn spawn_app() -> TestApp {
    let store = commcredits_store::sqlite::SqliteStore::open("sqlite::memory:").expect("open the store");
    let mut engine = Engine::new(Arc::new(store)).expect("engine");
    engine.config.secret_key = Some(commcredits_engine::delivery::SecretKey::parse(&"5a".repeat(32)).unwrap());
    let engine = Arc::new(engine);
    let now = Timestamp::now();
    let operator = secret(
        engine
            .apply_one(now, Command::CreateKey { org: None, role: "operator".into(), name: "operator".into() })
            .unwrap(),
    );
    let call_control = secret(
        engine
            .apply_one(now, Command::CreateKey { org: None, role: "call_control".into(), name: "switch".into() })
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let undeclared = Arc::new(std::sync::Mutex::new(Vec::new()));
    // The webhook test below posts to a closed port on this machine: private addresses allowed.
    let delivery = commcredits_engine::delivery::Delivery {
        webhooks: Arc::new(commcredits_engine::delivery::HttpWebhooks::new(true)),
        ..commcredits_engine::delivery::Delivery::new(None, "http://127.0.0.1:8080")
    };
    let router = commcredits_server::router(commcredits_server::App::with_delivery(engine.clone(), delivery))
        .layer(axum::middleware::from_fn_with_state(undeclared.clone(), check_against_document));
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.expect("serve");
    });
    TestApp {
        undeclared,
        base: format!("http://{addr}"),
        engine,
        client: reqwest::Client::new(),
        operator,
        call_control,
    }
}

/// Holds every answer of an API route to the OpenAPI document: its status must be
/// declared for the route and method, with the content type it was sent with.
async fn check_against_document(
    axum::extract::State(undeclared): axum::extract::State<Arc<std::sync::Mutex<Vec<String>>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    let route = req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_string());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let doc = DOC.get_or_init(|| commcredits_server::api().1);
    if let Some(route) = route.filter(|r| r.starts_with("/v1/")) {
        let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let status = resp.status().as_u16();
        if let Err(e) = commcredits_server::openapi::check_answer(doc, &method, &route, status, ctype) {
            undeclared.lock().unwrap().push(e);
        }
    }
    resp
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let undeclared = std::mem::take(&mut *self.undeclared.lock().unwrap());
        if !undeclared.is_empty() && !std::thread::panicking() {
            panic!("answers the OpenAPI document does not declare:\n{}", undeclared.join("\n"));
        }
    }
}

impl TestApp {
    fn key(&self, org: &str, role: &str) -> String {
        secret(
            self.engine
                .apply_one(
                    Timestamp::now(),
                    Command::CreateKey { org: Some(org.into()), role: role.into(), name: format!("{role} key") },
                )
                .unwrap(),
        )
    }

    fn request(&self, method: &str, path: &str, key: &str) -> reqwest::RequestBuilder {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let rb = self.client.request(m, format!("{}{}", self.base, path));
        if key.is_empty() {
            rb
        } else {
            rb.bearer_auth(key)
        }
    }

    /// Sends without checking anything.
    async fn send_raw(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = rb.send().await.expect("the request is answered");
        let status = r.status().as_u16();
        let ctype = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let text = r.text().await.unwrap_or_default();
        Resp { status, ctype, text }
    }

    /// Sends and checks the rules every answer follows.
    async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = self.send_raw(rb).await;
        check_common(&r);
        r
    }

    async fn call(&self, method: &str, path: &str, key: &str, body: Body) -> Resp {
        let rb = self.request(method, path, key);
        let rb = match body {
            Body::None => rb,
            Body::Json(v) => rb.json(&v),
            Body::Raw(ct, bytes) => rb.header("content-type", ct).body(bytes),
        };
        self.send(rb).await
    }

    async fn get(&self, path: &str, key: &str) -> Resp {
        self.call("GET", path, key, Body::None).await
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call("POST", path, key, Body::Json(body)).await
    }

    async fn put(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call("PUT", path, key, Body::Json(body)).await
    }

    async fn patch(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call("PATCH", path, key, Body::Json(body)).await
    }

    async fn post_idem(&self, path: &str, key: &str, idem: &str, body: Value) -> Resp {
        self.send(self.request("POST", path, key).header("Idempotency-Key", idem).json(&body)).await
    }

    async fn put_idem(&self, path: &str, key: &str, idem: &str, body: Value) -> Resp {
        self.send(self.request("PUT", path, key).header("Idempotency-Key", idem).json(&body)).await
    }

    async fn authorize(&self, body: Value) -> Resp {
        self.post("/v1/calls/authorize", &self.call_control, body).await
    }

    async fn end(&self, org: &str, call_id: &str, secs: u32) -> Resp {
        self.post(
            &format!("/v1/calls/{call_id}/end"),
            &self.call_control,
            json!({"org_id": org, "duration_seconds": secs}),
        )
        .await
    }

    async fn credits(&self, org: &str, key: &str) -> Value {
        expect(&self.get(&format!("/v1/orgs/{org}/credits"), key).await, 200)
    }

    fn check_books(&self, org: &str) -> commcredits_engine::invariants::BooksReport {
        self.engine.check_books(org).unwrap_or_else(|e| panic!("books of {org}: {e}"))
    }
}

/// Never a 5xx; every error is problem+json with type, title, status, detail, code.
#[track_caller]
fn check_common(r: &Resp) {
    assert!(r.status < 500, "server error: {r:?}");
    if r.status >= 400 {
        assert!(r.ctype.starts_with("application/problem+json"), "error without problem+json: {r:?}");
        let v = r.json();
        for field in ["type", "title", "detail", "code"] {
            assert!(v[field].is_string(), "problem without `{field}`: {r:?}");
        }
        assert_eq!(v["status"].as_u64(), Some(u64::from(r.status)), "problem status differs: {r:?}");
        assert!(!v["code"].as_str().unwrap().is_empty(), "{r:?}");
    }
}

#[track_caller]
fn expect(r: &Resp, status: u16) -> Value {
    assert_eq!(r.status, status, "unexpected answer: {r:?}");
    r.json()
}

#[track_caller]
fn expect_problem(r: &Resp, status: u16, code: &str) {
    assert_eq!((r.status, r.code().as_str()), (status, code), "unexpected answer: {r:?}");
    assert!(r.ctype.starts_with("application/problem+json"), "{r:?}");
}

fn count_kind(items: &Value, field: &str, value: &str) -> usize {
    items.as_array().map(|a| a.iter().filter(|i| i[field] == value).count()).unwrap_or(0)
}

/// An organization made directly on the engine, with the keys of every role.
struct Seed {
    org: String,
    /// US, phone_system + calling_plan_domestic + communications_credits.
    ada: String,
    /// GB, phone_system + communications_credits (no plan).
    bob: String,
    card: String,
    ea: String,
    admin: String,
    billing: String,
    licenses: String,
    reader: String,
}

fn seed(app: &TestApp, name: &str, funds: Option<&str>) -> Seed {
    let e = &app.engine;
    let now = Timestamp::now();
    let one = |c: Command| e.apply_one(now, c).unwrap_or_else(|err| panic!("{err}"));
    let org = created(one(Command::CreateOrg {
        name: name.into(),
        currency: "USD".into(),
        country: "US".into(),
        emails: vec!["billing@example.com".into()],
    }));
    let user = |upn: &str, loc: &str| {
        created(one(Command::CreateUser {
            org: org.clone(),
            upn: upn.into(),
            display_name: upn.into(),
            usage_location: loc.into(),
            phone_number: None,
        }))
    };
    let ada = user("ada@example.com", "US");
    let bob = user("bob@example.com", "GB");
    for (sku, q) in [("phone_system", 10), ("calling_plan_domestic", 5), ("communications_credits", 5)] {
        one(Command::AddSubscription { org: org.clone(), sku: sku.into(), quantity: q });
    }
    for (sku, users) in [
        ("phone_system", vec![ada.clone(), bob.clone()]),
        ("calling_plan_domestic", vec![ada.clone()]),
        ("communications_credits", vec![ada.clone(), bob.clone()]),
    ] {
        one(Command::AssignLicense { org: org.clone(), sku: sku.into(), users });
    }
    let token = e
        .gateway()
        .tokenize_card(
            &CardInput { number: "4242424242424242".into(), exp_month: 12, exp_year: 2035, holder: "A".into() },
            now,
        )
        .unwrap();
    let card = created(one(Command::AddCard { org: org.clone(), token, holder: None }));
    let ea = created(one(Command::AddAgreement { org: org.clone(), agreement_number: "EA-1".into() }));
    if let Some(amount) = funds {
        let order = e.purchase(&org, amount, &ea, None, None, now).unwrap();
        assert_eq!(order.status, "succeeded");
    }
    Seed {
        admin: app.key(&org, "admin"),
        billing: app.key(&org, "billing_admin"),
        licenses: app.key(&org, "license_admin"),
        reader: app.key(&org, "reader"),
        org,
        ada,
        bob,
        card,
        ea,
    }
}

/// The same request with the same Idempotency-Key, eight at once.
async fn racing(app: &TestApp, path: &str, key: &str, idem: &str, body: Value) -> Vec<Resp> {
    futures::future::join_all((0..8).map(|_| app.post_idem(path, key, idem, body.clone()))).await
}

fn authorize_body(org: &str, call_id: &str, user: &str, from: &str, to: &str, secs: u32) -> Value {
    json!({"org_id": org, "call_id": call_id, "type": "outbound", "user_id": user, "from": from, "to": to,
           "requested_seconds": secs})
}

const UK_LANDLINE: &str = "+442079460000";
const UK_MOBILE: &str = "+447400123456";
const US_NUMBER: &str = "+14155550100";
const TOLL_FREE: &str = "+18002660100";
const CDR_HEADER: &str = "call_id,type,user,from,to,start_time,duration_seconds\n";

// ---------------------------------------------------------------- 1. an organization's life

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_organization_lives_its_whole_life_over_http() {
    let app = spawn_app().await;
    let op = app.operator.clone();

    // The operator creates the organization.
    let r = app
        .post(
            "/v1/orgs",
            &op,
            json!({"name": "Contoso", "currency": "USD", "country": "US", "notification_emails": ["billing@contoso.com"]}),
        )
        .await;
    let org = expect(&r, 201)["id"].as_str().expect("an id").to_string();
    let o = expect(&app.get(&format!("/v1/orgs/{org}"), &op).await, 200);
    assert_eq!(
        (o["name"].as_str(), o["currency"].as_str(), o["country"].as_str()),
        (Some("Contoso"), Some("USD"), Some("US"))
    );
    assert_eq!(o["notification_emails"], json!(["billing@contoso.com"]));
    let admin = app.key(&org, "admin");
    let p = |s: &str| format!("/v1/orgs/{org}{s}");

    // Users.
    let mut ids = std::collections::HashMap::new();
    for (upn, name, loc, phone) in [
        ("ada@contoso.com", "Ada", "US", Some("+14155550100")),
        ("bob@contoso.com", "Bob", "GB", None),
        ("cy@contoso.com", "Cy", "US", None),
        ("dee@contoso.com", "Dee", "DE", Some("+4930123456")),
    ] {
        let r = app
            .post(
                &p("/users"),
                &admin,
                json!({"upn": upn, "display_name": name, "usage_location": loc, "phone_number": phone}),
            )
            .await;
        ids.insert(name, expect(&r, 201)["id"].as_str().unwrap().to_string());
    }
    let (ada, bob, cy, dee) = (ids["Ada"].clone(), ids["Bob"].clone(), ids["Cy"].clone(), ids["Dee"].clone());
    let r = app
        .post(&p("/users"), &admin, json!({"upn": "ADA@contoso.com", "display_name": "x", "usage_location": "US"}))
        .await;
    expect_problem(&r, 409, "duplicate_upn");
    let users = expect(&app.get(&p("/users"), &admin).await, 200);
    assert_eq!(users["items"].as_array().unwrap().len(), 4, "{users}");
    let u = expect(&app.get(&p("/users/dee@contoso.com"), &admin).await, 200);
    assert_eq!((u["id"].as_str(), u["usage_location"].as_str()), (Some(dee.as_str()), Some("DE")));
    assert_eq!(u["phone_number"], "+4930123456");
    let u = expect(&app.patch(&p(&format!("/users/{bob}")), &admin, json!({"display_name": "Bob B."})).await, 200);
    assert_eq!(u["display_name"], "Bob B.");

    // Subscriptions and licenses.
    for (sku, q) in [("phone_system", 4), ("calling_plan_domestic", 2), ("communications_credits", 2)] {
        expect(&app.post(&p("/subscriptions"), &admin, json!({"sku": sku, "quantity": q})).await, 200);
    }
    let subs = expect(&app.get(&p("/subscriptions"), &admin).await, 200);
    assert_eq!(subs.as_array().unwrap().len(), 3, "{subs}");
    let r = app
        .put(
            &p(&format!("/users/{ada}/licenses")),
            &admin,
            json!({"skus": ["phone_system", "calling_plan_domestic", "communications_credits"]}),
        )
        .await;
    let u = expect(&r, 200);
    let held: BTreeSet<&str> = u["licenses"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(held, BTreeSet::from(["phone_system", "calling_plan_domestic", "communications_credits"]));
    let r = app.put(&p(&format!("/users/{cy}/licenses")), &admin, json!({"skus": ["calling_plan_domestic"]})).await;
    expect_problem(&r, 422, "license_requires_phone_system");
    let r = app
        .post(&p("/licenses/assign"), &admin, json!({"sku": "phone_system", "user_ids": [bob, cy, "dee@contoso.com"]}))
        .await;
    expect(&r, 200);
    // One credits seat left, two asked: nothing is assigned.
    let r =
        app.post(&p("/licenses/assign"), &admin, json!({"sku": "communications_credits", "user_ids": [bob, cy]})).await;
    expect_problem(&r, 409, "no_free_seat");
    for u in [&bob, &cy] {
        let v = expect(&app.get(&p(&format!("/users/{u}")), &admin).await, 200);
        assert!(!v["licenses"].as_array().unwrap().contains(&json!("communications_credits")), "{v}");
    }
    expect(
        &app.post(&p("/licenses/assign"), &admin, json!({"sku": "communications_credits", "user_ids": [bob]})).await,
        200,
    );
    let subs = expect(&app.get(&p("/subscriptions"), &admin).await, 200);
    let cc = subs.as_array().unwrap().iter().find(|s| s["sku"] == "communications_credits").unwrap().clone();
    assert_eq!((cc["quantity"].as_i64(), cc["assigned"].as_i64()), (Some(2), Some(2)), "{subs}");
    let pools = expect(&app.get(&p("/pools"), &admin).await, 200);
    let us = pools.as_array().unwrap().iter().find(|x| x["country"] == "US" && x["kind"] == "domestic").cloned();
    let us = us.unwrap_or_else(|| panic!("no US domestic pool: {pools}"));
    assert_eq!((us["size"].as_i64(), us["used"].as_i64()), (Some(3000), Some(0)), "{pools}");
    assert!(us["month"].is_string());

    // Numbers.
    let r = app.post(&p("/numbers"), &admin, json!({"number": TOLL_FREE, "kind": "toll_free"})).await;
    assert_eq!(expect(&r, 201)["id"], TOLL_FREE);
    expect(&app.post(&p("/numbers"), &admin, json!({"number": "+14155550111", "kind": "service"})).await, 201);
    let r = app.post(&p("/numbers"), &admin, json!({"number": TOLL_FREE, "kind": "toll_free"})).await;
    expect_problem(&r, 409, "duplicate_number");
    let nums = expect(&app.get(&p("/numbers"), &admin).await, 200);
    assert_eq!(count_kind(&nums["items"], "kind", "toll_free"), 1, "{nums}");
    assert!(
        nums["items"].as_array().unwrap().iter().any(|n| n["number"] == US_NUMBER && n["kind"] == "user"),
        "{nums}"
    );

    // Payment methods: cards never come back with their number.
    let card_body = |number: &str| json!({"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2035, "holder": "Contoso"}});
    let mut pm = std::collections::HashMap::new();
    for (name, number) in
        [("ok", "4242424242424242"), ("declined", "4000000000000002"), ("expired", "4000000000000069")]
    {
        let r = app.post(&p("/payment-methods"), &admin, card_body(number)).await;
        assert!(!r.text.contains(number), "{r:?}");
        pm.insert(name, expect(&r, 201)["id"].as_str().unwrap().to_string());
    }
    let r = app
        .post(&p("/payment-methods"), &admin, json!({"type": "enterprise_agreement", "agreement_number": "EA-1234"}))
        .await;
    let ea = expect(&r, 201)["id"].as_str().unwrap().to_string();
    let r = app.post(&p("/payment-methods"), &admin, card_body("4242424242424241")).await;
    expect_problem(&r, 422, "invalid_card");
    let r = app.get(&p("/payment-methods"), &admin).await;
    for number in ["4242424242424242", "4000000000000002", "4000000000000069"] {
        assert!(!r.text.contains(number), "{r:?}");
    }
    let methods = expect(&r, 200);
    let card = methods["items"].as_array().unwrap().iter().find(|m| m["id"] == pm["ok"]).unwrap().clone();
    assert_eq!((card["type"].as_str(), card["card"]["last4"].as_str()), (Some("card"), Some("4242")), "{card}");
    assert_eq!(card["card"]["brand"], "visa");
    assert_eq!(count_kind(&methods["items"], "type", "enterprise_agreement"), 1);

    // Funds.
    let funds = p("/credits/funds");
    let r = app.post(&funds, &admin, json!({"amount": 4999, "payment_method_id": pm["ok"]})).await;
    expect_problem(&r, 422, "below_minimum_purchase");
    let r = app.post(&funds, &admin, json!({"amount": 5000, "payment_method_id": pm["declined"]})).await;
    expect_problem(&r, 402, "payment_declined");
    let r = app.post(&funds, &admin, json!({"amount": 5000, "payment_method_id": pm["expired"]})).await;
    expect_problem(&r, 402, "expired_card");
    let r = app.post(&funds, &admin, json!({"amount": 5000, "payment_method_id": "nope"})).await;
    expect_problem(&r, 404, "unknown_payment_method");
    let order = expect(&app.post(&funds, &admin, json!({"amount": 10000, "payment_method_id": pm["ok"]})).await, 201);
    assert_eq!((order["status"].as_str(), order["kind"].as_str()), (Some("succeeded"), Some("purchase")), "{order}");
    assert_eq!((order["amount"].as_i64(), order["currency"].as_str()), (Some(10000), Some("USD")));
    let r = app.post(&funds, &admin, json!({"amount": 5000, "payment_method_id": ea, "po_number": "PO-77"})).await;
    let order = expect(&r, 201);
    assert_eq!((order["status"].as_str(), order["po_number"].as_str()), (Some("succeeded"), Some("PO-77")));
    let orders = expect(&app.get(&p("/orders"), &admin).await, 200);
    let failed: Vec<&Value> = orders["items"].as_array().unwrap().iter().filter(|o| o["status"] == "failed").collect();
    assert_eq!(failed.len(), 2, "{orders}");
    let reasons: BTreeSet<&str> = failed.iter().map(|o| o["failure_reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, BTreeSet::from(["expired_card", "payment_declined"]));
    let c = app.credits(&org, &admin).await;
    assert_eq!(
        (c["balance"].as_i64(), c["reserved"].as_i64(), c["available"].as_i64()),
        (Some(15000), Some(0), Some(15000))
    );
    assert_eq!(c["currency"], "USD");
    assert_eq!(c["lots"].as_array().unwrap().len(), 2, "{c}");
    for lot in c["lots"].as_array().unwrap() {
        for f in ["amount", "remaining", "purchased_at", "expires_at"] {
            assert!(!lot[f].is_null(), "lot without {f}: {lot}");
        }
    }

    // Auto-recharge: 50.00 when the available balance falls below 149.50.
    let ar = p("/credits/auto-recharge");
    let r = app
        .put(&ar, &admin, json!({"enabled": true, "amount": 100, "threshold": 14950, "payment_method_id": pm["ok"]}))
        .await;
    expect_problem(&r, 422, "below_minimum_purchase");
    let r = app
        .put(&ar, &admin, json!({"enabled": true, "amount": 5000, "threshold": 14950, "payment_method_id": pm["ok"]}))
        .await;
    let c = expect(&r, 200);
    assert_eq!(
        c["auto_recharge"],
        json!({"enabled": true, "amount": 5000, "threshold": 14950, "payment_method_id": pm["ok"]})
    );

    // Bob (GB, credits) calls a UK mobile: 0.09/min; reserving 10 minutes crosses the threshold.
    let a = expect(&app.authorize(authorize_body(&org, "call-1", &bob, UK_LANDLINE, UK_MOBILE, 600)).await, 200);
    assert_eq!((a["decision"].as_str(), a["funding"].as_str()), (Some("allow"), Some("credits")), "{a}");
    assert_eq!(a["granted_seconds"], 600);
    assert_eq!((a["reserved_amount"].as_i64(), a["currency"].as_str()), (Some(90), Some("USD")));
    assert!(a["rate_per_minute"].as_str().unwrap().starts_with("0.09"), "{a}");
    assert_eq!(a["connection_fee"], 0);
    assert!(a["increment_seconds"].as_u64().unwrap() >= 1);
    let u = app
        .post(
            "/v1/calls/call-1/update",
            &app.call_control,
            json!({"org_id": org, "used_seconds": 300, "requested_seconds": 300}),
        )
        .await;
    let u = expect(&u, 200);
    assert!(u["granted_seconds"].as_u64().unwrap() > 0, "{u}");
    let v = expect(&app.end(&org, "call-1", 400).await, 200);
    assert_eq!(
        (v["charge"].as_i64(), v["funding"].as_str(), v["plan_minutes"].as_i64()),
        (Some(60), Some("credits"), Some(0))
    );
    expect_problem(&app.end(&org, "never-authorized", 10).await, 404, "unknown_call");
    let orders = expect(&app.get(&p("/orders"), &admin).await, 200);
    let recharges: Vec<&Value> =
        orders["items"].as_array().unwrap().iter().filter(|o| o["kind"] == "auto_recharge").collect();
    assert_eq!(recharges.len(), 1, "{orders}");
    assert_eq!((recharges[0]["status"].as_str(), recharges[0]["amount"].as_i64()), (Some("succeeded"), Some(5000)));
    let notices = expect(&app.get(&p("/notifications"), &admin).await, 200);
    assert_eq!(count_kind(&notices["items"], "kind", "recharge_succeeded"), 1, "{notices}");

    // Ada calls the US on her plan.
    let a = expect(&app.authorize(authorize_body(&org, "call-2", &ada, US_NUMBER, "+12125550199", 300)).await, 200);
    assert_eq!((a["decision"].as_str(), a["funding"].as_str()), (Some("allow"), Some("plan")), "{a}");
    let v = expect(&app.end(&org, "call-2", 90).await, 200);
    assert_eq!((v["charge"].as_i64(), v["plan_minutes"].as_i64()), (Some(0), Some(2)), "{v}");
    let pools = expect(&app.get(&p("/pools"), &admin).await, 200);
    let us =
        pools.as_array().unwrap().iter().find(|x| x["country"] == "US" && x["kind"] == "domestic").unwrap().clone();
    assert_eq!(us["used"], 2, "{pools}");
    // Cy has no credits license and no plan: refused with a reason.
    let d = expect(&app.authorize(authorize_body(&org, "call-3", &cy, US_NUMBER, UK_MOBILE, 60)).await, 200);
    assert_eq!(d["decision"], "deny", "{d}");
    assert!(d["reason"].is_string(), "{d}");

    // A caller dials the toll-free number: always paid from credits.
    let r = app
        .authorize(json!({"org_id": org, "call_id": "tf-1", "type": "toll_free_inbound", "from": UK_LANDLINE, "to": TOLL_FREE}))
        .await;
    let a = expect(&r, 200);
    assert_eq!((a["decision"].as_str(), a["funding"].as_str()), (Some("allow"), Some("credits")), "{a}");
    let v = expect(&app.end(&org, "tf-1", 120).await, 200);
    assert!(v["charge"].as_i64().unwrap() > 0, "{v}");
    assert_eq!(v["funding"], "credits");

    // Emergency: allowed and free.
    let a = expect(&app.authorize(authorize_body(&org, "e-1", &cy, US_NUMBER, "911", 300)).await, 200);
    assert_eq!((a["decision"].as_str(), a["funding"].as_str()), (Some("allow"), Some("emergency")), "{a}");
    let v = expect(&app.end(&org, "e-1", 600).await, 200);
    assert_eq!(v["charge"], 0, "{v}");

    // The ledger, page by page.
    let mut entries = Vec::new();
    let mut url = p("/credits/ledger?limit=2");
    let mut pages = 0;
    loop {
        let page = expect(&app.get(&url, &admin).await, 200);
        pages += 1;
        let es = page["entries"].as_array().unwrap();
        assert!(es.len() <= 2, "{page}");
        entries.extend(es.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => url = p(&format!("/credits/ledger?limit=2&cursor={c}")),
            None => break,
        }
        assert!(pages < 50, "the cursor never ends");
    }
    assert!(pages >= 3, "{pages} pages");
    let all = expect(&app.get(&p("/credits/ledger?limit=1000"), &admin).await, 200);
    assert_eq!(entries, all["entries"].as_array().unwrap().clone(), "paging loses or repeats entries");
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(count_kind(&Value::Array(entries.clone()), "kind", "purchase"), 3);
    assert!(count_kind(&Value::Array(entries.clone()), "kind", "charge") >= 2);
    let sum: i64 = entries.iter().map(|e| e["amount"].as_i64().unwrap()).sum();
    let c = app.credits(&org, &admin).await;
    assert_eq!(Some(sum), c["balance"].as_i64(), "{entries:?}");
    assert_eq!(entries.last().unwrap()["balance_after"], c["balance"]);
    assert_eq!((c["reserved"].as_i64(), c["lots"].as_array().unwrap().len()), (Some(0), 3), "{c}");

    let orders = expect(&app.get(&p("/orders"), &admin).await, 200);
    assert_eq!(orders["items"].as_array().unwrap().len(), 5, "{orders}");

    let b = app.check_books(&org);
    assert_eq!((b.purchases, b.reserved, b.balance), (20000, 0, c["balance"].as_i64().unwrap()));
    assert_eq!(b.charges, 20000 - b.balance);
}

// ---------------------------------------------------------------- 2. roles

#[derive(Clone, Copy, Debug, PartialEq)]
enum Need {
    Operator,
    Read,
    Billing,
    Licenses,
    Calls,
    AdminOrCallControl,
}

fn may(need: Need, role: &str) -> bool {
    match need {
        Need::Operator => role == "operator",
        Need::Read => matches!(role, "operator" | "admin" | "billing_admin" | "license_admin" | "reader"),
        Need::Billing => matches!(role, "admin" | "billing_admin"),
        Need::Licenses => matches!(role, "admin" | "license_admin"),
        Need::Calls => role == "call_control",
        Need::AdminOrCallControl => matches!(role, "admin" | "call_control"),
    }
}

const ROLES: [&str; 6] = ["operator", "call_control", "admin", "billing_admin", "license_admin", "reader"];

fn deck_csv() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../catalog/rates/outbound-USD.csv"))
        .expect("the shipped USD deck")
}

/// A representative request of each route; bodies vary by role so every allowed one succeeds.
fn probe(s: &Seed, route: &str, role: &str) -> (&'static str, String, Body, Need) {
    let o = &s.org;
    let n = ROLES.iter().position(|r| *r == role).unwrap();
    match route {
        "create_org" => (
            "POST",
            "/v1/orgs".into(),
            Body::Json(json!({"name": format!("Org {role}"), "currency": "USD", "country": "US"})),
            Need::Operator,
        ),
        "get_org" => ("GET", format!("/v1/orgs/{o}"), Body::None, Need::Read),
        "create_user" => (
            "POST",
            format!("/v1/orgs/{o}/users"),
            Body::Json(json!({"upn": format!("{role}@example.com"), "display_name": role, "usage_location": "US"})),
            Need::Licenses,
        ),
        "list_users" => ("GET", format!("/v1/orgs/{o}/users"), Body::None, Need::Read),
        "get_user" => ("GET", format!("/v1/orgs/{o}/users/{}", s.ada), Body::None, Need::Read),
        "patch_user" => (
            "PATCH",
            format!("/v1/orgs/{o}/users/{}", s.bob),
            Body::Json(json!({"display_name": format!("Bob by {role}")})),
            Need::Licenses,
        ),
        "add_subscription" => (
            "POST",
            format!("/v1/orgs/{o}/subscriptions"),
            Body::Json(json!({"sku": "audio_conferencing", "quantity": 1})),
            Need::Billing,
        ),
        "list_subscriptions" => ("GET", format!("/v1/orgs/{o}/subscriptions"), Body::None, Need::Read),
        "set_licenses" => (
            "PUT",
            format!("/v1/orgs/{o}/users/{}/licenses", s.bob),
            Body::Json(json!({"skus": ["phone_system", "communications_credits"]})),
            Need::Licenses,
        ),
        "assign_licenses" => (
            "POST",
            format!("/v1/orgs/{o}/licenses/assign"),
            Body::Json(json!({"sku": "phone_system", "user_ids": [s.bob]})),
            Need::Licenses,
        ),
        "add_number" => (
            "POST",
            format!("/v1/orgs/{o}/numbers"),
            Body::Json(json!({"number": format!("+1415555020{n}"), "kind": "service"})),
            Need::Licenses,
        ),
        "list_numbers" => ("GET", format!("/v1/orgs/{o}/numbers"), Body::None, Need::Read),
        "list_pools" => ("GET", format!("/v1/orgs/{o}/pools"), Body::None, Need::Read),
        "add_payment_method" => (
            "POST",
            format!("/v1/orgs/{o}/payment-methods"),
            Body::Json(json!({"type": "enterprise_agreement", "agreement_number": format!("EA-{role}")})),
            Need::Billing,
        ),
        "list_payment_methods" => ("GET", format!("/v1/orgs/{o}/payment-methods"), Body::None, Need::Read),
        "get_credits" => ("GET", format!("/v1/orgs/{o}/credits"), Body::None, Need::Read),
        "add_funds" => (
            "POST",
            format!("/v1/orgs/{o}/credits/funds"),
            Body::Json(json!({"amount": 5000, "payment_method_id": s.ea})),
            Need::Billing,
        ),
        "set_auto_recharge" => (
            "PUT",
            format!("/v1/orgs/{o}/credits/auto-recharge"),
            Body::Json(json!({"enabled": false, "amount": 5000, "threshold": 1000, "payment_method_id": s.card})),
            Need::Billing,
        ),
        "get_ledger" => ("GET", format!("/v1/orgs/{o}/credits/ledger"), Body::None, Need::Read),
        "list_orders" => ("GET", format!("/v1/orgs/{o}/orders"), Body::None, Need::Read),
        "list_notifications" => ("GET", format!("/v1/orgs/{o}/notifications"), Body::None, Need::Read),
        "authorize" => (
            "POST",
            "/v1/calls/authorize".into(),
            Body::Json(authorize_body(o, "matrix-call", &s.bob, UK_LANDLINE, UK_MOBILE, 120)),
            Need::Calls,
        ),
        "update" => (
            "POST",
            "/v1/calls/matrix-call/update".into(),
            Body::Json(json!({"org_id": o, "used_seconds": 60, "requested_seconds": 60})),
            Need::Calls,
        ),
        "end" => (
            "POST",
            "/v1/calls/matrix-call/end".into(),
            Body::Json(json!({"org_id": o, "duration_seconds": 90})),
            Need::Calls,
        ),
        "import_cdrs" => {
            let csv =
                format!("{CDR_HEADER}cdr-{role},outbound,{},{UK_LANDLINE},{UK_MOBILE},{},60\n", s.bob, now_rfc3339());
            ("POST", format!("/v1/orgs/{o}/cdrs"), Body::Raw("text/csv", csv.into_bytes()), Need::AdminOrCallControl)
        }
        "import_rates" => {
            ("PUT", "/v1/rates/outbound/USD".into(), Body::Raw("text/csv", deck_csv().into_bytes()), Need::Operator)
        }
        other => panic!("no probe for {other}"),
    }
}

fn now_rfc3339() -> String {
    commcredits_engine::views::iso(Timestamp::now())
}

const ROUTES: [&str; 26] = [
    "create_org",
    "get_org",
    "create_user",
    "list_users",
    "get_user",
    "patch_user",
    "add_subscription",
    "list_subscriptions",
    "set_licenses",
    "assign_licenses",
    "add_number",
    "list_numbers",
    "list_pools",
    "add_payment_method",
    "list_payment_methods",
    "get_credits",
    "add_funds",
    "set_auto_recharge",
    "get_ledger",
    "list_orders",
    "list_notifications",
    "authorize",
    "update",
    "end",
    "import_cdrs",
    "import_rates",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_role_reaches_exactly_the_routes_of_the_matrix() {
    let app = spawn_app().await;
    let s = seed(&app, "Contoso", Some("100.00"));
    let keys: Vec<(&str, String)> = vec![
        ("operator", app.operator.clone()),
        ("call_control", app.call_control.clone()),
        ("admin", s.admin.clone()),
        ("billing_admin", s.billing.clone()),
        ("license_admin", s.licenses.clone()),
        ("reader", s.reader.clone()),
    ];
    let mut failures = Vec::new();
    for route in ROUTES {
        for (role, key) in &keys {
            let (method, path, body, need) = probe(&s, route, role);
            let r = app.call(method, &path, key, body).await;
            let ok = if may(need, role) {
                (200..300).contains(&r.status)
            } else {
                r.status == 403 && r.code() == "forbidden"
            };
            if !ok {
                failures.push(format!("{role} {method} {path} ({route}, {need:?}): {} {}", r.status, r.text));
            }
        }
    }
    assert!(failures.is_empty(), "role matrix violations:\n{}", failures.join("\n"));

    // What the reader could not do left no trace: only allowed roles' effects exist.
    let users = app.engine.users(&s.org).unwrap();
    let upns: BTreeSet<String> = users.iter().map(|u| u.upn.clone()).collect();
    assert!(upns.contains("admin@example.com") && upns.contains("license_admin@example.com"));
    assert!(!upns.contains("reader@example.com") && !upns.contains("billing_admin@example.com"), "{upns:?}");
    let orders = app.engine.orders(&s.org).unwrap();
    assert_eq!(orders.len(), 3, "seed + admin + billing_admin: {orders:?}");
    app.check_books(&s.org);
}

// ---------------------------------------------------------------- 3. organizations are walled off

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_never_reaches_another_organization() {
    let app = spawn_app().await;
    let a = seed(&app, "Contoso", Some("100.00"));
    let b = seed(&app, "Fabrikam", Some("200.00"));
    let missing = "01900000-0000-7000-8000-000000000000";
    let before = (
        app.engine.users(&b.org).unwrap(),
        app.engine.subscriptions(&b.org).unwrap(),
        app.engine.numbers(&b.org).unwrap(),
        app.engine.payment_methods(&b.org).unwrap(),
        app.engine.orders(&b.org).unwrap(),
        app.engine.credits(&b.org).unwrap(),
    );
    let org_routes =
        ROUTES.iter().filter(|r| !matches!(**r, "create_org" | "authorize" | "update" | "end" | "import_rates"));
    for key in [&a.admin, &a.billing, &a.licenses, &a.reader] {
        for route in org_routes.clone() {
            let (method, path, body, _) = probe(&b, route, "admin");
            let (_, ghost_path, ghost_body, _) = probe(&b, route, "admin");
            let r = app.call(method, &path, key, body).await;
            expect_problem(&r, 404, "not_found");
            assert!(!r.text.contains("Fabrikam") && !r.text.contains(&b.bob), "{r:?}");
            let ghost = app.call(method, &ghost_path.replace(&b.org, missing), key, ghost_body).await;
            assert_eq!(
                (r.status, r.json()),
                (ghost.status, ghost.json()),
                "{method} {path}: differs from a missing org"
            );
        }
    }
    // A's own routes naming B's users, payment methods and calls find nothing either.
    let pa = |x: &str| format!("/v1/orgs/{}{x}", a.org);
    for (method, path, body, code) in [
        ("GET", pa(&format!("/users/{}", b.bob)), Body::None, "unknown_user"),
        ("GET", pa("/users/bob@example.com"), Body::None, ""),
        ("PATCH", pa(&format!("/users/{}", b.bob)), Body::Json(json!({"display_name": "x"})), "unknown_user"),
        ("PUT", pa(&format!("/users/{}/licenses", b.bob)), Body::Json(json!({"skus": []})), "unknown_user"),
        (
            "POST",
            pa("/licenses/assign"),
            Body::Json(json!({"sku": "phone_system", "user_ids": [b.bob]})),
            "unknown_user",
        ),
        (
            "POST",
            pa("/numbers"),
            Body::Json(json!({"number": "+14155550177", "kind": "user", "user_id": b.bob})),
            "unknown_user",
        ),
        (
            "POST",
            pa("/credits/funds"),
            Body::Json(json!({"amount": 5000, "payment_method_id": b.ea})),
            "unknown_payment_method",
        ),
        (
            "PUT",
            pa("/credits/auto-recharge"),
            Body::Json(json!({"enabled": true, "amount": 5000, "threshold": 100, "payment_method_id": b.card})),
            "unknown_payment_method",
        ),
    ] {
        let r = app.call(method, &path, &a.admin, body).await;
        if code.is_empty() {
            // A's own Bob, not B's.
            assert_eq!(expect(&r, 200)["id"].as_str(), Some(a.bob.as_str()));
        } else {
            expect_problem(&r, 404, code);
        }
    }
    // Call control naming B's user under A's organization is refused as an unknown user.
    let d = expect(&app.authorize(authorize_body(&a.org, "x-org", &b.bob, UK_LANDLINE, UK_MOBILE, 60)).await, 200);
    assert_eq!((d["decision"].as_str(), d["reason"].as_str()), (Some("deny"), Some("unknown_user")), "{d}");
    expect(&app.authorize(authorize_body(&b.org, "b-call", &b.bob, UK_LANDLINE, UK_MOBILE, 60)).await, 200);
    expect_problem(&app.end(&a.org, "b-call", 30).await, 404, "unknown_call");
    expect(&app.end(&b.org, "b-call", 0).await, 200);

    let after = (
        app.engine.users(&b.org).unwrap(),
        app.engine.subscriptions(&b.org).unwrap(),
        app.engine.numbers(&b.org).unwrap(),
        app.engine.payment_methods(&b.org).unwrap(),
        app.engine.orders(&b.org).unwrap(),
        app.engine.credits(&b.org).unwrap(),
    );
    assert!(before == after, "organization B changed");
    // Its own organization still answers.
    expect(&app.get(&format!("/v1/orgs/{}/credits", a.org), &a.reader).await, 200);
}

// ---------------------------------------------------------------- 4. idempotency

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_with_an_idempotency_key_answer_the_first_result_once() {
    let app = spawn_app().await;
    let s = seed(&app, "Contoso", None);
    let (org, admin) = (s.org.clone(), s.admin.clone());
    let p = |x: &str| format!("/v1/orgs/{org}{x}");

    // Funds.
    let body = json!({"amount": 5000, "payment_method_id": s.card});
    let first = app.post_idem(&p("/credits/funds"), &admin, "fund-1", body.clone()).await;
    let again = app.post_idem(&p("/credits/funds"), &admin, "fund-1", body).await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!((first.status, first.json()), (again.status, again.json()));
    let r = app
        .post_idem(&p("/credits/funds"), &admin, "fund-1", json!({"amount": 6000, "payment_method_id": s.card}))
        .await;
    expect_problem(&r, 409, "idempotency_key_reused");
    assert_eq!(app.engine.orders(&org).unwrap().len(), 1);
    assert_eq!(app.credits(&org, &admin).await["balance"], 5000);
    // A declined payment is replayed as declined, still one order.
    let token = app
        .engine
        .gateway()
        .tokenize_card(
            &CardInput { number: "4000000000000002".into(), exp_month: 1, exp_year: 2035, holder: "x".into() },
            Timestamp::now(),
        )
        .unwrap();
    let declined = created(
        app.engine.apply_one(Timestamp::now(), Command::AddCard { org: org.clone(), token, holder: None }).unwrap(),
    );
    let body = json!({"amount": 5000, "payment_method_id": declined});
    let first = app.post_idem(&p("/credits/funds"), &admin, "fund-2", body.clone()).await;
    let again = app.post_idem(&p("/credits/funds"), &admin, "fund-2", body).await;
    expect_problem(&first, 402, "payment_declined");
    assert_eq!((first.status, first.json()), (again.status, again.json()));
    assert_eq!(app.engine.orders(&org).unwrap().len(), 2);

    // Auto-recharge.
    let body = json!({"enabled": true, "amount": 5000, "threshold": 1000, "payment_method_id": s.card});
    let first = app.put_idem(&p("/credits/auto-recharge"), &admin, "ar-1", body.clone()).await;
    let again = app.put_idem(&p("/credits/auto-recharge"), &admin, "ar-1", body).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!((first.status, first.json()), (again.status, again.json()));
    let r = app
        .put_idem(
            &p("/credits/auto-recharge"),
            &admin,
            "ar-1",
            json!({"enabled": false, "amount": 5000, "threshold": 1000}),
        )
        .await;
    expect_problem(&r, 409, "idempotency_key_reused");
    assert_eq!(app.credits(&org, &admin).await["auto_recharge"]["enabled"], true);

    // Users.
    let body = json!({"upn": "eve@example.com", "display_name": "Eve", "usage_location": "FR"});
    let first = app.post_idem(&p("/users"), &admin, "user-1", body.clone()).await;
    let again = app.post_idem(&p("/users"), &admin, "user-1", body).await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!((first.status, first.json()), (again.status, again.json()));
    let r = app
        .post_idem(
            &p("/users"),
            &admin,
            "user-1",
            json!({"upn": "eve2@example.com", "display_name": "Eve", "usage_location": "FR"}),
        )
        .await;
    expect_problem(&r, 409, "idempotency_key_reused");
    assert_eq!(app.engine.users(&org).unwrap().iter().filter(|u| u.upn.starts_with("eve")).count(), 1);
    // A key is 1 to 255 characters.
    let r = app.post_idem(&p("/users"), &admin, &"k".repeat(256), json!({})).await;
    expect_problem(&r, 422, "invalid_input");
    // The same key is another organization's own business.
    let other = seed(&app, "Fabrikam", None);
    let body = json!({"upn": "eve@example.com", "display_name": "Eve", "usage_location": "FR"});
    let r = app.post_idem(&format!("/v1/orgs/{}/users", other.org), &other.admin, "user-1", body).await;
    assert_ne!(expect(&r, 201)["id"], first.json()["id"]);

    // Retries racing the first request still make one effect.
    let rs = racing(
        &app,
        &p("/users"),
        &admin,
        "race-user",
        json!({"upn": "ray@example.com", "display_name": "Ray", "usage_location": "US"}),
    )
    .await;
    let ids: BTreeSet<String> = rs.iter().map(|r| expect(r, 201)["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 1, "{rs:?}");
    let orders_before = app.engine.orders(&org).unwrap().len();
    let rs =
        racing(&app, &p("/credits/funds"), &admin, "race-funds", json!({"amount": 7000, "payment_method_id": s.ea}))
            .await;
    let ids: BTreeSet<String> = rs.iter().map(|r| expect(r, 201)["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 1, "{rs:?}");
    assert_eq!(app.engine.orders(&org).unwrap().len(), orders_before + 1);
    assert_eq!(app.credits(&org, &admin).await["balance"], 12000);

    // CDR uploads.
    let csv = format!("{CDR_HEADER}cdr-1,outbound,{},{UK_LANDLINE},{UK_MOBILE},{},60\n", s.bob, now_rfc3339());
    let upload = |idem: &'static str, csv: String| {
        app.send(
            app.request("POST", &p("/cdrs"), &admin)
                .header("Idempotency-Key", idem)
                .header("content-type", "text/csv")
                .body(csv),
        )
    };
    let first = upload("cdr-1", csv.clone()).await;
    let again = upload("cdr-1", csv.clone()).await;
    let report = expect(&first, 200);
    assert_eq!((report["charged"].as_u64(), report["charge"].as_i64()), (Some(1), Some(9)), "{report}");
    assert_eq!(first.json(), again.json());
    expect_problem(&upload("cdr-1", csv.replace("cdr-1,", "cdr-2,")).await, 409, "idempotency_key_reused");
    // Without a key, the same file charges nothing twice.
    let r = expect(&upload("cdr-other", csv).await, 200);
    assert_eq!((r["charged"].as_u64(), r["duplicates"].as_u64()), (Some(0), Some(1)), "{r}");
    assert_eq!(app.credits(&org, &admin).await["balance"], 11991);

    // Call control: the call id makes a retried authorize answer the first result.
    let body = authorize_body(&org, "idem-call", &s.bob, UK_LANDLINE, UK_MOBILE, 600);
    let first = app.authorize(body.clone()).await;
    let again = app.authorize(body).await;
    let a = expect(&first, 200);
    assert_eq!(a["decision"], "allow", "{a}");
    assert_eq!(first.json(), again.json());
    let c = app.credits(&org, &admin).await;
    assert_eq!(c["reserved"], a["reserved_amount"], "reserved once: {c}");
    let r = app.authorize(authorize_body(&org, "idem-call", &s.bob, UK_LANDLINE, UK_MOBILE, 300)).await;
    expect_problem(&r, 409, "duplicate_call_id");
    assert_eq!(app.credits(&org, &admin).await["reserved"], a["reserved_amount"]);
    // A retried update answers the same.
    let ub = json!({"org_id": org, "used_seconds": 120, "requested_seconds": 300});
    let u1 = app.post("/v1/calls/idem-call/update", &app.call_control, ub.clone()).await;
    let u2 = app.post("/v1/calls/idem-call/update", &app.call_control, ub).await;
    expect(&u1, 200);
    assert_eq!(u1.json(), u2.json());
    // A repeated end answers the first result and changes nothing.
    let e1 = app.end(&org, "idem-call", 300).await;
    let v = expect(&e1, 200);
    assert_eq!(v["charge"], 45, "{v}");
    let balance = app.credits(&org, &admin).await["balance"].clone();
    let e2 = app.end(&org, "idem-call", 300).await;
    let e3 = app.end(&org, "idem-call", 999).await;
    assert_eq!(e1.json(), e2.json());
    assert_eq!((e3.status, e3.json()["charge"].clone()), (200, json!(45)), "{e3:?}");
    let c = app.credits(&org, &admin).await;
    assert_eq!((c["balance"].clone(), c["reserved"].clone()), (balance, json!(0)));
    let b = app.check_books(&org);
    assert_eq!((b.purchases, b.charges), (12000, 54));
}

// ---------------------------------------------------------------- 5. bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_a_4xx_problem_never_a_5xx() {
    let app = spawn_app().await;
    let s = seed(&app, "Contoso", Some("100.00"));
    let (org, admin, op, cc) = (s.org.clone(), s.admin.clone(), app.operator.clone(), app.call_control.clone());
    let p = |x: &str| format!("/v1/orgs/{org}{x}");
    let raw = |b: &str| Body::Raw("application/json", b.as_bytes().to_vec());

    // Malformed JSON.
    for b in ["{", "", "{\"name\": }", "nope"] {
        let r = app.call("POST", "/v1/orgs", &op, raw(b)).await;
        expect_problem(&r, 400, "invalid_json");
    }
    let r = app.call("POST", &p("/users"), &admin, Body::Raw("application/json", vec![0xff, 0xfe, b'{'])).await;
    expect_problem(&r, 400, "invalid_json");
    // Wrong types, missing and unknown fields.
    for (method, path, key, body) in [
        ("POST", "/v1/orgs".to_string(), &op, json!({"name": 5, "currency": "USD", "country": "US"})),
        ("POST", "/v1/orgs".to_string(), &op, json!({"name": "x", "currency": "USD"})),
        ("POST", "/v1/orgs".to_string(), &op, json!({"name": "x", "currency": "USD", "country": "US", "color": "red"})),
        ("POST", "/v1/orgs".to_string(), &op, json!(null)),
        ("POST", "/v1/orgs".to_string(), &op, json!([1, 2])),
        ("POST", p("/users"), &admin, json!({"upn": "x@example.com", "display_name": "x"})),
        (
            "POST",
            p("/users"),
            &admin,
            json!({"upn": "x@example.com", "display_name": "x", "usage_location": "US", "admin": true}),
        ),
        ("POST", p("/subscriptions"), &admin, json!({"sku": "e5", "quantity": "ten"})),
        ("POST", p("/subscriptions"), &admin, json!({"sku": "e5", "quantity": 1.5})),
        ("POST", p("/credits/funds"), &admin, json!({"amount": "50.00", "payment_method_id": s.card})),
        ("POST", p("/credits/funds"), &admin, json!({"amount": 1e30, "payment_method_id": s.card})),
        ("POST", p("/credits/funds"), &admin, json!({"payment_method_id": s.card})),
        ("PUT", p("/credits/auto-recharge"), &admin, json!({"enabled": "yes"})),
        ("PUT", p("/credits/auto-recharge"), &admin, json!({"amount": 5000})),
        ("POST", p("/licenses/assign"), &admin, json!({"sku": "e5", "user_ids": s.bob})),
        ("PUT", p(&format!("/users/{}/licenses", s.bob)), &admin, json!({"skus": "e5"})),
        ("PATCH", p(&format!("/users/{}", s.bob)), &admin, json!({"spend_limit": "lots"})),
        ("PATCH", p(&format!("/users/{}", s.bob)), &admin, json!({"shoe_size": 42})),
        ("POST", p("/payment-methods"), &admin, json!({"type": "card", "card": {"number": "4242424242424242"}})),
        ("POST", p("/payment-methods"), &admin, json!({"type": "card"})),
        ("POST", p("/payment-methods"), &admin, json!({"type": "bitcoin"})),
        ("POST", "/v1/calls/authorize".to_string(), &cc, json!({"org_id": org, "call_id": "x", "type": "outbound"})),
        ("POST", "/v1/calls/authorize".to_string(), &cc, {
            let mut b = authorize_body(&org, "neg", &s.bob, UK_LANDLINE, UK_MOBILE, 1);
            b["requested_seconds"] = json!(-5);
            b
        }),
        ("POST", "/v1/calls/authorize".to_string(), &cc, {
            let mut b = authorize_body(&org, "extra", &s.bob, UK_LANDLINE, UK_MOBILE, 1);
            b["priority"] = json!("high");
            b
        }),
        ("POST", "/v1/calls/x/update".to_string(), &cc, json!({"org_id": org, "used_seconds": "10"})),
        ("POST", "/v1/calls/x/end".to_string(), &cc, json!({"org_id": org})),
    ] {
        let r = app.call(method, &path, key, Body::Json(body.clone())).await;
        assert_eq!((r.status, r.code().as_str()), (422, "invalid_input"), "{method} {path} {body}: {r:?}");
    }

    // Authentication.
    for key in ["", "cc_nope", "not-a-key", &format!("cc_{}", "0".repeat(64))] {
        let r = app.get(&p("/credits"), key).await;
        expect_problem(&r, 401, "unauthorized");
    }
    let r = app.send(app.request("GET", &p("/credits"), "").header("Authorization", format!("Basic {admin}"))).await;
    expect_problem(&r, 401, "unauthorized");
    // A revoked key stops working.
    let extra = app.engine.apply_one(
        Timestamp::now(),
        Command::CreateKey { org: Some(org.clone()), role: "reader".into(), name: "temp".into() },
    );
    let Ok(Outcome::Key(k)) = extra else { panic!("{extra:?}") };
    expect(&app.get(&p("/credits"), &k.secret).await, 200);
    app.engine
        .apply_one(Timestamp::now(), Command::RevokeKey { org: Some(org.clone()), key_id: k.key.id.clone() })
        .unwrap();
    expect_problem(&app.get(&p("/credits"), &k.secret).await, 401, "unauthorized");

    // Unknown routes and wrong methods.
    for path in ["/", "/v1", "/v1/nope", "/v2/orgs", &p("/nope"), &p("/users/x/y/z"), "/v1/calls/x/hangup"] {
        expect_problem(&app.get(path, &admin).await, 404, "not_found");
    }
    for (method, path) in [
        ("DELETE", "/v1/orgs".to_string()),
        ("GET", "/v1/calls/authorize".into()),
        ("PUT", p("")),
        ("DELETE", p("/users")),
        ("POST", p("/credits")),
        ("GET", p("/credits/funds")),
        ("POST", "/healthz".into()),
    ] {
        let r = app.call(method, &path, &admin, Body::None).await;
        expect_problem(&r, 405, "method_not_allowed");
    }

    // Bodies over 256 KiB.
    let big = json!({"upn": "big@example.com", "display_name": "x".repeat(300 * 1024), "usage_location": "US"});
    expect_problem(&app.post(&p("/users"), &admin, big).await, 413, "payload_too_large");
    let big = authorize_body(&org, &"c".repeat(300 * 1024), &s.bob, UK_LANDLINE, UK_MOBILE, 60);
    expect_problem(&app.authorize(big).await, 413, "payload_too_large");
    // Just under the limit is read (and refused on its merits).
    let under = json!({"upn": "big@example.com", "display_name": "x".repeat(200 * 1024), "usage_location": "US"});
    expect_problem(&app.post(&p("/users"), &admin, under).await, 422, "invalid_input");

    // Page limits.
    for list in ["/users", "/numbers", "/payment-methods", "/orders", "/notifications", "/credits/ledger"] {
        for limit in [0, 5000] {
            let r = app.get(&p(&format!("{list}?limit={limit}")), &admin).await;
            expect_problem(&r, 422, "invalid_input");
        }
        expect(&app.get(&p(&format!("{list}?limit=1000")), &admin).await, 200);
    }
    expect_problem(&app.get(&p("/credits/ledger?cursor=abc"), &admin).await, 422, "invalid_input");

    // Phone numbers.
    let r = app
        .post(
            &p("/users"),
            &admin,
            json!({"upn": "z@example.com", "display_name": "z", "usage_location": "US", "phone_number": "12345"}),
        )
        .await;
    expect_problem(&r, 422, "invalid_phone_number");
    let r = app.post(&p("/numbers"), &admin, json!({"number": "not a number", "kind": "service"})).await;
    expect_problem(&r, 422, "invalid_phone_number");
    let r = app.authorize(authorize_body(&org, "bad-to", &s.bob, UK_LANDLINE, "12345", 60)).await;
    expect_problem(&r, 422, "invalid_phone_number");
    let r = app.authorize(authorize_body(&org, "bad-from", &s.bob, "abc", UK_MOBILE, 60)).await;
    expect_problem(&r, 422, "invalid_phone_number");

    // Odd values anywhere are 4xx (or accepted), never a server error.
    let weird_ids = ["", " ", "é", &"x".repeat(129), "a/b", "%00"];
    for id in weird_ids {
        let b = authorize_body(&org, id, &s.bob, UK_LANDLINE, UK_MOBILE, 60);
        let r = app.authorize(b).await;
        assert!(r.status == 422 || r.status == 200, "{id:?}: {r:?}");
    }
    for secs in [0u64, 1, 86_400, 86_401, u32::MAX as u64] {
        let id = format!("secs-{secs}");
        let mut b = authorize_body(&org, &id, &s.bob, UK_LANDLINE, UK_MOBILE, 0);
        b["requested_seconds"] = json!(secs);
        let r = app.authorize(b).await;
        assert!(matches!(r.status, 200 | 422), "{secs}: {r:?}");
        if r.json()["decision"] == "allow" {
            let e = app.end(&org, &id, 0).await;
            assert_eq!(expect(&e, 200)["charge"], 0, "{e:?}");
        }
    }
    let a = expect(&app.authorize(authorize_body(&org, "huge", &s.bob, UK_LANDLINE, UK_MOBILE, 60)).await, 200);
    assert_eq!(a["decision"], "allow", "{a}");
    for (used, more) in [(u32::MAX, u32::MAX), (0, u32::MAX), (u32::MAX, 60), (30, 0)] {
        let r = app
            .post("/v1/calls/huge/update", &cc, json!({"org_id": org, "used_seconds": used, "requested_seconds": more}))
            .await;
        assert!(r.status < 500, "{r:?}");
    }
    // End settles at most what was granted (120 s); the rest is overrun, not charged.
    let v = expect(&app.end(&org, "huge", u32::MAX).await, 200);
    assert_eq!((v["charged_seconds"].as_i64(), v["charge"].as_i64()), (Some(120), Some(18)), "{v}");
    assert_eq!(v["overrun_seconds"].as_i64(), Some(i64::from(u32::MAX) - 120), "{v}");
    for (path, body) in [
        (p("/credits/funds"), json!({"amount": -5000, "payment_method_id": s.ea})),
        (p("/credits/funds"), json!({"amount": 0, "payment_method_id": s.ea})),
        (p("/subscriptions"), json!({"sku": "e5", "quantity": i64::MAX})),
        (p("/subscriptions"), json!({"sku": "nope", "quantity": 1})),
        (p("/subscriptions"), json!({"sku": "e5", "quantity": -1})),
        (p("/licenses/assign"), json!({"sku": "phone_system", "user_ids": []})),
        (p("/licenses/assign"), json!({"sku": "phone_system", "user_ids": ["ghost"]})),
        (p("/numbers"), json!({"number": "+14155550123", "kind": "fax"})),
        (p("/numbers"), json!({"number": "+14155550123", "kind": "user", "user_id": "ghost"})),
        (p("/users"), json!({"upn": "not-an-email", "display_name": "x", "usage_location": "US"})),
        (p("/users"), json!({"upn": "q@example.com", "display_name": "x", "usage_location": "XX"})),
        (p("/users"), json!({"upn": "q@example.com", "display_name": "", "usage_location": "US"})),
        (p("/payment-methods"), json!({"type": "enterprise_agreement", "agreement_number": ""})),
        (
            p("/payment-methods"),
            json!({"type": "card", "card": {"number": "4242424242424242", "exp_month": 13, "exp_year": 2035}}),
        ),
        (
            p("/payment-methods"),
            json!({"type": "card", "card": {"number": "4242424242424242", "exp_month": 1, "exp_year": 2001}}),
        ),
        ("/v1/orgs".into(), json!({"name": "x", "currency": "XYZ", "country": "US"})),
        ("/v1/orgs".into(), json!({"name": "x", "currency": "USD", "country": "ZZ"})),
        ("/v1/orgs".into(), json!({"name": "", "currency": "USD", "country": "US"})),
        ("/v1/orgs".into(), json!({"name": "x", "currency": "USD", "country": "US", "notification_emails": ["nope"]})),
    ] {
        let key = if path == "/v1/orgs" { &op } else { &admin };
        let r = app.post(&path, key, body.clone()).await;
        assert!((400..500).contains(&r.status), "{path} {body}: {r:?}");
    }
    let u = expect(&app.patch(&p(&format!("/users/{}", s.bob)), &admin, json!({"spend_limit": i64::MAX})).await, 200);
    assert_eq!(u["spend_limit"], i64::MAX);
    let u = expect(&app.patch(&p(&format!("/users/{}", s.bob)), &admin, json!({"spend_limit": null})).await, 200);
    assert!(u["spend_limit"].is_null(), "{u}");
    for body in [json!({"spend_limit": -1}), json!({"dial_out_policy": "everywhere"}), json!({"usage_location": "ZZ"})]
    {
        let r = app.patch(&p(&format!("/users/{}", s.bob)), &admin, body.clone()).await;
        assert!((400..500).contains(&r.status), "{body}: {r:?}");
    }
    for body in [
        json!({"enabled": true, "amount": 5000, "threshold": -1, "payment_method_id": s.ea}),
        json!({"enabled": true, "amount": 5000, "threshold": 100}),
        json!({"enabled": true, "amount": 5000, "threshold": 100, "payment_method_id": "ghost"}),
    ] {
        let r = app.put(&p("/credits/auto-recharge"), &admin, body.clone()).await;
        assert!((400..500).contains(&r.status), "{body}: {r:?}");
    }
    let r = app.call("POST", &p("/cdrs"), &admin, Body::Raw("text/csv", b"not,a,header\n1,2,3\n".to_vec())).await;
    assert!((400..500).contains(&r.status), "{r:?}");
    let r = app.call("POST", &p("/cdrs"), &admin, Body::Raw("text/csv", vec![0xff, 0x00, 0xfe])).await;
    assert!(r.status < 500, "{r:?}");
    let r = app.call("PUT", "/v1/rates/outbound/USD", &op, Body::Raw("text/csv", b"prefix\n1\n".to_vec())).await;
    expect_problem(&r, 422, "invalid_rate_deck");
    let r = app.call("PUT", "/v1/rates/sideways/USD", &op, Body::Raw("text/csv", deck_csv().into_bytes())).await;
    assert!((400..500).contains(&r.status), "{r:?}");
    for path in
        [format!("/v1/orgs/{}", "x".repeat(5000)), "/v1/orgs/%E2%9C%93/credits".into(), "/v1/orgs/%00/users".into()]
    {
        let r = app.get(&path, &op).await;
        assert!((400..500).contains(&r.status), "{path}: {r:?}");
    }
    let r = app.send(app.request("POST", &p("/users"), &admin).header("Idempotency-Key", "").json(&json!({}))).await;
    assert!((400..500).contains(&r.status), "{r:?}");
    // The books are intact after all of it.
    app.check_books(&org);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_query_strings_are_problems() {
    let app = spawn_app().await;
    let s = seed(&app, "Contoso", None);
    for q in ["limit=abc", "limit=-1", "colour=red", "limit=99999999999999999999999"] {
        for list in ["/users", "/orders", "/credits/ledger"] {
            let r = app.send_raw(app.request("GET", &format!("/v1/orgs/{}{list}?{q}", s.org), &s.admin)).await;
            assert_eq!(r.status, 422, "{list}?{q}: {r:?}");
            assert!(r.ctype.starts_with("application/problem+json"), "{list}?{q}: {r:?}");
            assert_eq!(r.code(), "invalid_input", "{list}?{q}: {r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purchase_the_balance_cannot_hold_is_refused() {
    let app = spawn_app().await;
    let s = seed(&app, "Contoso", Some("100.00"));
    let r = app
        .post(
            &format!("/v1/orgs/{}/credits/funds", s.org),
            &s.admin,
            json!({"amount": i64::MAX, "payment_method_id": s.ea}),
        )
        .await;
    // Observed: 201 {"status": "pending", ...}: the gateway is charged, crediting the lot
    // overflows, the order stays pending and every later `jobs run` fails on it.
    assert!(r.status == 422 && matches!(r.code().as_str(), "amount_overflow" | "invalid_amount"), "{r:?}");
    let orders = app.engine.orders(&s.org).unwrap();
    assert!(orders.iter().all(|o| o.status != "pending"), "{orders:?}");
    app.engine.run_jobs(Timestamp::now()).expect("background jobs run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recharge_amount_the_balance_cannot_hold_is_refused() {
    let app = spawn_app().await;
    let s = seed(&app, "Contoso", Some("100.00"));
    let body = json!({"enabled": true, "amount": i64::MAX, "threshold": 9950, "payment_method_id": s.ea});
    let r = app.put(&format!("/v1/orgs/{}/credits/auto-recharge", s.org), &s.admin, body).await;
    // Observed: 200. A call then crosses the threshold: the recharge order is charged at
    // the gateway, cannot be credited, stays pending with no `recharge_failed` notice, and
    // every later `jobs run` fails with amount_overflow.
    if r.status == 200 {
        expect(&app.authorize(authorize_body(&s.org, "c1", &s.bob, UK_LANDLINE, UK_MOBILE, 600)).await, 200);
        expect(&app.end(&s.org, "c1", 600).await, 200);
        let orders = app.engine.orders(&s.org).unwrap();
        assert!(orders.iter().all(|o| o.status != "pending"), "a recharge is stuck: {orders:?}");
        app.engine.run_jobs(Timestamp::now()).expect("background jobs run");
    }
    assert!(r.status == 422 && matches!(r.code().as_str(), "amount_overflow" | "invalid_amount"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_named_twice_in_a_bulk_assignment_takes_one_seat() {
    let app = spawn_app().await;
    let s = seed(&app, "Contoso", None);
    let p = |x: &str| format!("/v1/orgs/{}{x}", s.org);
    // communications_credits: 5 seats, Ada and Bob hold 2; fill two more.
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = json!({"upn": format!("u{i}@example.com"), "display_name": "u", "usage_location": "US"});
        ids.push(expect(&app.post(&p("/users"), &s.admin, body).await, 201)["id"].as_str().unwrap().to_string());
    }
    expect(&app.post(&p("/licenses/assign"), &s.admin, json!({"sku": "phone_system", "user_ids": ids})).await, 200);
    let r = app
        .post(&p("/licenses/assign"), &s.admin, json!({"sku": "communications_credits", "user_ids": [ids[0], ids[1]]}))
        .await;
    expect(&r, 200);
    // One seat left; u2 named by id and by UPN. Observed: 409 no_free_seat "2 more requested".
    let r = app
        .post(
            &p("/licenses/assign"),
            &s.admin,
            json!({"sku": "communications_credits", "user_ids": [ids[2], "u2@example.com"]}),
        )
        .await;
    expect(&r, 200);
    let u = expect(&app.get(&p(&format!("/users/{}", ids[2])), &s.admin).await, 200);
    assert!(u["licenses"].as_array().unwrap().contains(&json!("communications_credits")), "{u}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_retries_of_a_cdr_upload_answer_the_first_report() {
    let app = spawn_app().await;
    let s = seed(&app, "Contoso", Some("100.00"));
    let mut csv = CDR_HEADER.to_string();
    for i in 0..50 {
        csv.push_str(&format!("cdr-{i},outbound,{},{UK_LANDLINE},{UK_MOBILE},{},60\n", s.bob, now_rfc3339()));
    }
    let path = format!("/v1/orgs/{}/cdrs", s.org);
    let rs = futures::future::join_all((0..6).map(|_| {
        let rb =
            app.request("POST", &path, &s.admin).header("Idempotency-Key", "cdr-k").header("content-type", "text/csv");
        app.send(rb.body(csv.clone()))
    }))
    .await;
    // A retry that arrives while the first upload is still being charged is told so
    // (409 idempotency_key_in_use); every other answer is the first report.
    let mut bodies = BTreeSet::new();
    for r in &rs {
        if r.status == 409 {
            assert_eq!(r.code(), "idempotency_key_in_use", "{r:?}");
        } else {
            bodies.insert(expect(r, 200).to_string());
        }
    }
    assert_eq!(bodies.len(), 1, "{bodies:#?}");
    let first: serde_json::Value = serde_json::from_str(bodies.iter().next().unwrap()).unwrap();
    assert_eq!(first["charged"], 50, "{first}");
    // Once it is done, a retry answers the first report.
    let again = app
        .send(
            app.request("POST", &path, &s.admin)
                .header("Idempotency-Key", "cdr-k")
                .header("content-type", "text/csv")
                .body(csv.clone()),
        )
        .await;
    assert_eq!(expect(&again, 200), first);
    assert_eq!(app.check_books(&s.org).charges, 450);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_stored_for_a_card_reveals_its_number() {
    use sha2::{Digest, Sha256};
    let app = spawn_app().await;
    let s = seed(&app, "Contoso", None);
    let path = format!("/v1/orgs/{}/payment-methods", s.org);
    let body = |number: &str| {
        format!(r#"{{"type":"card","card":{{"number":"{number}","exp_month":12,"exp_year":2035,"holder":"Contoso"}}}}"#)
    };
    let rb = app
        .request("POST", &path, &s.admin)
        .header("Idempotency-Key", "card-1")
        .header("content-type", "application/json");
    expect(&app.send(rb.body(body("4111111111111111"))).await, 201);
    let stored = app.engine.read(|tx| tx.get_idempotency(&s.org, "card-1")).unwrap().expect("the remembered answer");
    // Someone reading the database knows the brand, last 4, expiry and holder (stored in
    // clear), and the issuer's 6-digit prefix is public: 10^5 Luhn-valid candidates remain.
    let found = (0..1_000_000u32)
        .map(|m| format!("411111{m:06}1111"))
        .filter(|n| commcredits_engine::payments::luhn_valid(n))
        .find(|n| {
            let mut h = Sha256::new();
            h.update(format!("POST {path}\n{}", body(n)).as_bytes());
            hex::encode(h.finalize()) == stored.fingerprint
        });
    assert_eq!(found, None, "the stored idempotency fingerprint gives the card number away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_answers_the_first_answer_even_after_other_changes() {
    let app = spawn_app().await;
    let s = seed(&app, "Contoso", Some("100.00"));
    let p = |x: &str| format!("/v1/orgs/{}{x}", s.org);
    let body = json!({"enabled": false, "amount": 5000, "threshold": 1000, "payment_method_id": s.card});
    let first = app.put_idem(&p("/credits/auto-recharge"), &s.admin, "ar-k", body.clone()).await;
    expect(&first, 200);
    // Something else changes the account before the retry arrives.
    expect(&app.post(&p("/credits/funds"), &s.admin, json!({"amount": 5000, "payment_method_id": s.ea})).await, 201);
    let retry = app.put_idem(&p("/credits/auto-recharge"), &s.admin, "ar-k", body).await;
    // Observed: the retry shows balance 15000 and two lots; the first answer had 10000.
    assert_eq!((retry.status, retry.json()), (first.status, first.json()));
}

// ---------------------------------------------------------------- 6. failed authentication

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_authentications_are_rate_limited() {
    let app = spawn_app().await;
    let s = seed(&app, "Contoso", None);
    let path = format!("/v1/orgs/{}/credits", s.org);
    expect(&app.get(&path, &s.reader).await, 200);
    // A request without a key guesses nothing: it is answered 401 and not counted.
    for _ in 0..30 {
        expect_problem(&app.get(&path, "").await, 401, "unauthorized");
    }
    for i in 0..20 {
        expect_problem(&app.get(&path, &format!("cc_{:064}", i)).await, 401, "unauthorized");
    }
    // Further failures from the address are refused...
    expect_problem(&app.get(&path, "cc_guess").await, 429, "rate_limited");
    expect_problem(&app.get(&path, "").await, 401, "unauthorized");
    // ...but a valid key always passes: behind a load balancer every client shares one
    // address, and failures of others must not lock it out.
    expect(&app.get(&path, &s.reader).await, 200);
    expect_problem(&app.post("/v1/calls/authorize", &app.call_control, json!({})).await, 422, "invalid_input");
    // Routes without authentication still answer.
    expect(&app.get("/healthz", "").await, 200);
}

// ---------------------------------------------------------------- 7. OpenAPI, health, metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openapi_lists_exactly_the_api_and_health_and_metrics_answer() {
    let app = spawn_app().await;
    let s = seed(&app, "Contoso", Some("100.00"));
    let doc = expect(&app.get("/openapi.json", "").await, 200);
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with('3'), "{doc}");
    let paths = doc["paths"].as_object().expect("paths");
    let expected: BTreeSet<&str> = [
        "/v1/orgs",
        "/v1/orgs/{org}",
        "/v1/orgs/{org}/users",
        "/v1/orgs/{org}/users/{user}",
        "/v1/orgs/{org}/subscriptions",
        "/v1/orgs/{org}/users/{user}/licenses",
        "/v1/orgs/{org}/licenses/assign",
        "/v1/orgs/{org}/numbers",
        "/v1/orgs/{org}/pools",
        "/v1/orgs/{org}/payment-methods",
        "/v1/orgs/{org}/credits",
        "/v1/orgs/{org}/credits/funds",
        "/v1/orgs/{org}/credits/auto-recharge",
        "/v1/orgs/{org}/credits/ledger",
        "/v1/orgs/{org}/orders",
        "/v1/orgs/{org}/notifications",
        "/v1/orgs/{org}/notification-settings",
        "/v1/orgs/{org}/webhooks",
        "/v1/orgs/{org}/webhooks/{webhook}",
        "/v1/orgs/{org}/webhooks/{webhook}/test",
        "/v1/orgs/{org}/deliveries",
        "/v1/orgs/{org}/reports/pstn-usage",
        "/v1/orgs/{org}/reports/summary",
        "/v1/orgs/{org}/reports/blocked-users",
        "/v1/orgs/{org}/reports/dial-out",
        "/v1/orgs/{org}/credits/recommendation",
        "/v1/calls/authorize",
        "/v1/calls/{call_id}/update",
        "/v1/calls/{call_id}/end",
        "/v1/orgs/{org}/cdrs",
        "/v1/rates/{kind}/{currency}",
    ]
    .into_iter()
    .collect();
    let got: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    assert_eq!(got, expected);
    let expected_ops: BTreeSet<(&str, &str)> = [
        ("post", "/v1/orgs"),
        ("get", "/v1/orgs/{org}"),
        ("post", "/v1/orgs/{org}/users"),
        ("get", "/v1/orgs/{org}/users"),
        ("get", "/v1/orgs/{org}/users/{user}"),
        ("patch", "/v1/orgs/{org}/users/{user}"),
        ("post", "/v1/orgs/{org}/subscriptions"),
        ("get", "/v1/orgs/{org}/subscriptions"),
        ("put", "/v1/orgs/{org}/users/{user}/licenses"),
        ("post", "/v1/orgs/{org}/licenses/assign"),
        ("post", "/v1/orgs/{org}/numbers"),
        ("get", "/v1/orgs/{org}/numbers"),
        ("get", "/v1/orgs/{org}/pools"),
        ("post", "/v1/orgs/{org}/payment-methods"),
        ("get", "/v1/orgs/{org}/payment-methods"),
        ("get", "/v1/orgs/{org}/credits"),
        ("post", "/v1/orgs/{org}/credits/funds"),
        ("put", "/v1/orgs/{org}/credits/auto-recharge"),
        ("get", "/v1/orgs/{org}/credits/ledger"),
        ("get", "/v1/orgs/{org}/orders"),
        ("get", "/v1/orgs/{org}/notifications"),
        ("get", "/v1/orgs/{org}/notification-settings"),
        ("put", "/v1/orgs/{org}/notification-settings"),
        ("post", "/v1/orgs/{org}/webhooks"),
        ("get", "/v1/orgs/{org}/webhooks"),
        ("delete", "/v1/orgs/{org}/webhooks/{webhook}"),
        ("post", "/v1/orgs/{org}/webhooks/{webhook}/test"),
        ("get", "/v1/orgs/{org}/deliveries"),
        ("get", "/v1/orgs/{org}/reports/pstn-usage"),
        ("get", "/v1/orgs/{org}/reports/summary"),
        ("get", "/v1/orgs/{org}/reports/blocked-users"),
        ("get", "/v1/orgs/{org}/reports/dial-out"),
        ("get", "/v1/orgs/{org}/credits/recommendation"),
        ("post", "/v1/calls/authorize"),
        ("post", "/v1/calls/{call_id}/update"),
        ("post", "/v1/calls/{call_id}/end"),
        ("post", "/v1/orgs/{org}/cdrs"),
        ("put", "/v1/rates/{kind}/{currency}"),
    ]
    .into_iter()
    .collect();
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            if matches!(method.as_str(), "get" | "post" | "put" | "patch" | "delete" | "head" | "options" | "trace") {
                ops.insert((method.clone(), path.clone()));
            }
        }
    }
    let ops_ref: BTreeSet<(&str, &str)> = ops.iter().map(|(m, p)| (m.as_str(), p.as_str())).collect();
    assert_eq!(ops_ref, expected_ops);
    // Every documented operation is served (validation errors are fine).
    for (method, path) in &ops {
        let url = path
            .replace("{org}", &s.org)
            .replace("{user}", &s.bob)
            .replace("{call_id}", "probe-call")
            .replace("{webhook}", "probe-webhook")
            .replace("{kind}", "outbound")
            .replace("{currency}", "USD")
            + if path.contains("/reports/") { "?from=2026-01-01T00:00:00Z&to=2027-01-01T00:00:00Z" } else { "" };
        let key = if path.starts_with("/v1/calls") {
            &app.call_control
        } else if path == "/v1/orgs" || path.starts_with("/v1/rates") {
            &app.operator
        } else {
            &s.admin
        };
        let body = match method.as_str() {
            "get" => Body::None,
            _ if path.ends_with("/cdrs") || path.starts_with("/v1/rates") => Body::Raw("text/csv", b"x".to_vec()),
            _ => Body::Json(json!({})),
        };
        let r = app.call(&method.to_uppercase(), &url, key, body).await;
        assert_ne!(r.status, 405, "{method} {path}: {r:?}");
        assert!(!(r.status == 404 && r.json()["detail"] == "no such route"), "{method} {path}: {r:?}");
        assert!(!matches!(r.status, 401 | 403), "{method} {path}: {r:?}");
        if method == "get" {
            assert_eq!(r.status, 200, "{method} {path}: {r:?}");
        }
    }

    let h = app.get("/healthz", "").await;
    assert_eq!(expect(&h, 200)["status"], "ok");

    // Some traffic, then the metrics.
    let a = expect(&app.authorize(authorize_body(&s.org, "m-1", &s.bob, UK_LANDLINE, UK_MOBILE, 60)).await, 200);
    assert_eq!(a["decision"], "allow");
    let m = app.get("/metrics", "").await;
    assert_eq!(m.status, 200);
    assert!(m.ctype.starts_with("text/plain"), "{m:?}");
    for name in [
        "commcredits_http_requests_total",
        "commcredits_http_request_duration_seconds",
        "commcredits_authorize_decisions_total",
        "commcredits_reservations_open",
        "commcredits_notices_pending",
    ] {
        assert!(m.text.contains(name), "metrics without {name}:\n{}", m.text);
    }
    // Requests are labelled by their route template, not the raw path.
    assert!(m.text.contains("route=\"/v1/orgs/{org}/credits\""), "{}", m.text);
    assert!(!m.text.contains(&s.org), "an organization id leaked into metric labels");
    // One reservation is open: the gauge says so (other tests may hold more).
    let open = m
        .text
        .lines()
        .find(|l| l.starts_with("commcredits_reservations_open"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("a value for commcredits_reservations_open");
    assert!(open >= 1.0, "{open}");
}

// ---------------------------------------------------------------- 8. concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_authorizations_never_overspend() {
    const CALLS: usize = 500;
    let app = Arc::new(spawn_app().await);
    // One user holds credits; 50.00 pays for about 55 ten-minute UK mobile calls.
    let s = seed(&app, "Contoso", Some("50.00"));
    let c = app.credits(&s.org, &s.reader).await;
    assert_eq!((c["balance"].as_i64(), c["auto_recharge"]["enabled"].as_bool()), (Some(5000), Some(false)));

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (app, stop, org, key) = (app.clone(), stop.clone(), s.org.clone(), s.reader.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let c = app.credits(&org, &key).await;
                samples.push((
                    c["balance"].as_i64().unwrap(),
                    c["reserved"].as_i64().unwrap(),
                    c["available"].as_i64().unwrap(),
                ));
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            samples
        })
    };
    let answers = futures::future::join_all((0..CALLS).map(|i| {
        let app = app.clone();
        let body = authorize_body(&s.org, &format!("storm-{i}"), &s.bob, UK_LANDLINE, UK_MOBILE, 600);
        async move { app.authorize(body).await }
    }))
    .await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap();

    let mut allowed = Vec::new();
    for (i, r) in answers.iter().enumerate() {
        let v = expect(r, 200);
        match v["decision"].as_str() {
            Some("allow") => {
                assert_eq!(v["funding"], "credits", "{v}");
                allowed.push((
                    format!("storm-{i}"),
                    v["reserved_amount"].as_i64().unwrap(),
                    v["granted_seconds"].as_u64().unwrap(),
                ));
            }
            Some("deny") => assert_eq!(v["reason"], "insufficient_funds", "{v}"),
            _ => panic!("{v}"),
        }
    }
    assert!(!samples.is_empty());
    for (balance, reserved, available) in &samples {
        assert!(*available >= 0 && *reserved >= 0 && balance - reserved == *available, "{samples:?}");
    }
    let reserved_total: i64 = allowed.iter().map(|a| a.1).sum();
    let full = allowed.iter().filter(|a| a.2 == 600).count();
    assert!(allowed.iter().filter(|a| a.2 == 600).all(|a| a.1 == 90), "{allowed:?}");
    assert!(reserved_total <= 5000, "{reserved_total}");
    assert_eq!(full, 55, "ten-minute grants: {allowed:?}");
    assert!(allowed.len() <= 56, "{} allowed", allowed.len());
    let c = app.credits(&s.org, &s.reader).await;
    assert_eq!((c["reserved"].as_i64(), c["available"].as_i64()), (Some(reserved_total), Some(5000 - reserved_total)));
    // Nothing was refused while a whole ten-minute reservation was affordable (the last
    // call may be granted fewer seconds: at least one increment, at most what is left).
    assert!(5000 - reserved_total < 90, "{reserved_total} reserved: a ten-minute call was refused with money left");
    app.check_books(&s.org);

    // End every allowed call after ten minutes.
    let ends = futures::future::join_all(allowed.iter().map(|(id, _, _)| {
        let (app, org, id) = (app.clone(), s.org.clone(), id.clone());
        async move { app.end(&org, &id, 600).await }
    }))
    .await;
    let mut charged = 0;
    for (r, (id, reserved, _)) in ends.iter().zip(&allowed) {
        let v = expect(r, 200);
        assert_eq!(v["charge"].as_i64(), Some(*reserved), "{id}: {v}");
        charged += reserved;
    }
    let b = app.check_books(&s.org);
    assert_eq!(b.reserved, 0);
    assert_eq!(b.charges, charged);
    assert_eq!(b.charges, reserved_total, "every call paid exactly what it reserved");
    assert!(b.charges >= full as i64 * 90);
    assert_eq!(b.balance, 5000 - b.charges);
    assert!(b.available >= 0);
    let c = app.credits(&s.org, &s.reader).await;
    assert_eq!((c["balance"].as_i64(), c["reserved"].as_i64()), (Some(5000 - charged), Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notification_settings_webhooks_and_the_delivery_log() {
    let app = spawn_app().await;
    let s = seed(&app, "Contoso", None);
    let p = |x: &str| format!("/v1/orgs/{}{x}", s.org);
    let settings = expect(&app.get(&p("/notification-settings"), &s.admin).await, 200);
    assert_eq!(settings["enabled_notices"].as_array().unwrap().len(), 6, "{settings}");
    let body = json!({"notification_emails": ["ops@example.com"], "low_balance_level": 2500, "enabled_notices": ["recharge_failed", "balance_exhausted"]});
    let updated = expect(&app.put(&p("/notification-settings"), &s.admin, body).await, 200);
    assert_eq!(updated["notification_emails"], json!(["ops@example.com"]));
    assert_eq!(updated["low_balance_level"], 2500);
    assert_eq!(updated["enabled_notices"], json!(["recharge_failed", "balance_exhausted"]));
    let bad = app.put(&p("/notification-settings"), &s.admin, json!({"enabled_notices": ["nope"]})).await;
    assert_eq!((bad.status, bad.code().as_str()), (422, "invalid_input"));
    // Webhooks are the admin's: a billing admin or reader may not add one.
    // Port 9 on this machine: nothing listens, the connection is refused at once.
    let hook = json!({"url": "http://127.0.0.1:9/cc"});
    for key in [&s.reader, &s.billing, &s.licenses] {
        assert_eq!(app.post(&p("/webhooks"), key, hook.clone()).await.status, 403);
    }
    let created = expect(&app.post(&p("/webhooks"), &s.admin, hook).await, 201);
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let listed = expect(&app.get(&p("/webhooks"), &s.reader).await, 200);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains("whsec_"), "the secret is shown once: {listed}");
    // A refused call writes balance_exhausted: one e-mail and one webhook delivery queued.
    let r = app.authorize(authorize_body(&s.org, "broke", &s.bob, UK_LANDLINE, UK_MOBILE, 60)).await;
    assert_eq!(expect(&r, 200)["reason"], "insufficient_funds");
    let log = expect(&app.get(&p("/deliveries"), &s.reader).await, 200);
    let channels: BTreeSet<String> =
        log["items"].as_array().unwrap().iter().map(|d| d["channel"].as_str().unwrap().to_string()).collect();
    assert_eq!(channels, ["email".to_string(), "webhook".to_string()].into_iter().collect());
    let id = created["id"].as_str().unwrap();
    // The test send reaches nothing: a 422 problem that says why.
    let t = app.post(&p(&format!("/webhooks/{id}/test")), &s.admin, json!({})).await;
    assert_eq!((t.status, t.code().as_str()), (422, "webhook_failed"));
    expect(&app.call("DELETE", &p(&format!("/webhooks/{id}")), &s.admin, Body::None).await, 200);
    assert_eq!(app.call("DELETE", &p(&format!("/webhooks/{id}")), &s.admin, Body::None).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_stream_and_add_up() {
    let app = spawn_app().await;
    let s = seed(&app, "Contoso", Some("100.00"));
    let other = seed(&app, "Fabrikam", None);
    for i in 0..20 {
        let id = format!("r{i}");
        expect(&app.authorize(authorize_body(&s.org, &id, &s.bob, UK_LANDLINE, UK_MOBILE, 600)).await, 200);
        expect(&app.end(&s.org, &id, 60 + i * 7).await, 200);
    }
    let charges = app.check_books(&s.org).charges;
    let period = "from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z";
    let p = |x: &str| format!("/v1/orgs/{}{x}", s.org);
    // CSV: the original header, and the Charge column sums to the ledger's charges.
    let csv = app.get(&p(&format!("/reports/pstn-usage?{period}&format=csv")), &s.reader).await;
    assert_eq!(csv.status, 200, "{csv:?}");
    assert!(csv.ctype.starts_with("text/csv"));
    let mut lines = csv.text.lines();
    assert!(lines.next().unwrap().starts_with("UsageId,Call ID,Conference ID,User Location,AAD ObjectId,UPN"));
    let cents: i64 = csv
        .text
        .lines()
        .skip(1)
        .map(|l| {
            let charge = l.split(',').nth(17).unwrap();
            let (a, b) = charge.split_once('.').unwrap();
            a.parse::<i64>().unwrap() * 100 + b.parse::<i64>().unwrap()
        })
        .sum();
    assert_eq!(cents, charges);
    assert_eq!(csv.text.lines().count(), 21);
    // Excel: a real workbook (a zip).
    let xlsx =
        app.request("GET", &p(&format!("/reports/pstn-usage?{period}&format=xlsx")), &s.admin).send().await.unwrap();
    assert_eq!(xlsx.status(), 200);
    assert!(xlsx.headers()["content-type"].to_str().unwrap().contains("spreadsheetml"));
    let bytes = xlsx.bytes().await.unwrap();
    assert!(bytes.starts_with(b"PK") && bytes.len() > 1000);
    // The original product's bundle: Calls.Export.<id>.zip with the same CSV and the parameters.
    let bundle =
        app.request("GET", &p(&format!("/reports/pstn-usage?{period}&format=zip")), &s.reader).send().await.unwrap();
    assert_eq!(bundle.status(), 200);
    assert_eq!(bundle.headers()["content-type"], "application/zip");
    let disposition = bundle.headers()["content-disposition"].to_str().unwrap().to_string();
    assert!(disposition.contains("filename=\"Calls.Export.") && disposition.ends_with(".zip\""), "{disposition}");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bundle.bytes().await.unwrap())).unwrap();
    let csv_name = zip.file_names().map(|n| n.unwrap().to_string()).find(|n| n.ends_with(".csv")).unwrap();
    let mut inner = String::new();
    std::io::Read::read_to_string(&mut zip.by_name(&csv_name).unwrap(), &mut inner).unwrap();
    // The same rows as the CSV export (usage ids are stable; only the file around them differs).
    assert_eq!(inner, csv.text);
    let parameters: serde_json::Value = serde_json::from_reader(zip.by_name("parameters.json").unwrap()).unwrap();
    assert_eq!(parameters["rows"], 20);
    // JSON pages.
    let page = expect(&app.get(&p(&format!("/reports/pstn-usage?{period}&limit=15")), &s.reader).await, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 15);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest =
        expect(&app.get(&p(&format!("/reports/pstn-usage?{period}&limit=15&cursor={cursor}")), &s.reader).await, 200);
    assert_eq!(rest["items"].as_array().unwrap().len(), 5);
    // Summaries and the recommendation.
    let summary = expect(&app.get(&p(&format!("/reports/summary?{period}")), &s.reader).await, 200);
    assert_eq!(summary["totals"]["spend"], charges);
    let rec = expect(&app.get(&p("/credits/recommendation"), &s.reader).await, 200);
    assert!(!rec["reasoning"].as_array().unwrap().is_empty());
    assert!(rec["recommended_amount"].as_i64().unwrap() >= 5000);
    expect(&app.get(&p(&format!("/reports/blocked-users?{period}")), &s.reader).await, 200);
    expect(&app.get(&p(&format!("/reports/dial-out?{period}")), &s.reader).await, 200);
    // Bad input, another organization.
    let bad = app.get(&p("/reports/pstn-usage?from=yesterday&to=2100-01-01T00:00:00Z"), &s.reader).await;
    assert_eq!((bad.status, bad.code().as_str()), (422, "invalid_time"));
    let bad = app.get(&p(&format!("/reports/pstn-usage?{period}&format=pdf")), &s.reader).await;
    assert_eq!((bad.status, bad.code().as_str()), (422, "invalid_input"));
    let bad = app.get(&p(&format!("/reports/pstn-usage?{period}&user=nobody@example.com&format=csv")), &s.reader).await;
    assert_eq!(bad.status, 404);
    let probe = app.get(&p(&format!("/reports/summary?{period}")), &other.admin).await;
    assert_eq!((probe.status, probe.code().as_str()), (404, "not_found"));
}
