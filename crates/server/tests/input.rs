//! Bad input through the HTTP API: it gets a clear 4xx problem, costs bounded memory
//! and answer size, and never reaches the store; report periods take dates; CSV exports
//! never hand a spreadsheet a formula.

use commcredits_core::Timestamp;
use commcredits_engine::payments::CardInput;
use commcredits_engine::{Command, Engine, Outcome};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

struct TestApp {
    base: String,
    engine: Arc<Engine>,
    client: reqwest::Client,
    org: String,
    admin: String,
    call_control: String,
    bob: String,
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

/// A server on a loopback port with one organization: Bob (GB) holds Phone System and
/// Communications Credits, and the account holds 50.00.
async fn spawn_app() -> TestApp {
    let store = commcredits_store::sqlite::SqliteStore::open("sqlite::memory:").expect("open the store");
    let engine = Arc::new(Engine::new(Arc::new(store)).expect("engine"));
    let now = Timestamp::now();
    let one = |c: Command| engine.apply_one(now, c).unwrap_or_else(|e| panic!("{e}"));
    let org = created(one(Command::CreateOrg {
        name: "Contoso".into(),
        currency: "USD".into(),
        country: "US".into(),
        emails: vec!["billing@contoso.com".into()],
    }));
    let bob = created(one(Command::CreateUser {
        org: org.clone(),
        upn: "bob@contoso.com".into(),
        display_name: "=HYPERLINK(\"http://evil.example\",\"Bob\")".into(),
        usage_location: "GB".into(),
        phone_number: None,
    }));
    for sku in ["phone_system", "communications_credits"] {
        one(Command::AddSubscription { org: org.clone(), sku: sku.into(), quantity: 5 });
        one(Command::AssignLicense { org: org.clone(), sku: sku.into(), users: vec![bob.clone()] });
    }
    let token = engine
        .gateway()
        .tokenize_card(
            &CardInput { number: "4242424242424242".into(), exp_month: 12, exp_year: 2030, holder: "Contoso".into() },
            now,
        )
        .unwrap();
    let card = created(one(Command::AddCard { org: org.clone(), token, holder: None }));
    engine.purchase(&org, "50.00", &card, None, None, now).unwrap();
    let admin = secret(one(Command::CreateKey { org: Some(org.clone()), role: "admin".into(), name: "admin".into() }));
    let call_control =
        secret(one(Command::CreateKey { org: None, role: "call_control".into(), name: "switch".into() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let router = commcredits_server::router(commcredits_server::App::new(engine.clone()));
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.expect("serve");
    });
    TestApp { base: format!("http://{addr}"), engine, client: reqwest::Client::new(), org, admin, call_control, bob }
}

struct Resp {
    status: u16,
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

impl TestApp {
    async fn send(&self, method: &str, path: &str, key: &str, body: Option<(&str, Vec<u8>)>) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.client.request(m, format!("{}{}", self.base, path)).bearer_auth(key);
        if let Some((ctype, bytes)) = body {
            rb = rb.header("content-type", ctype).body(bytes);
        }
        let r = rb.send().await.expect("answered");
        let status = r.status().as_u16();
        Resp { status, text: r.text().await.unwrap_or_default() }
    }

    async fn post_json(&self, path: &str, key: &str, body: Value) -> Resp {
        self.send("POST", path, key, Some(("application/json", body.to_string().into_bytes()))).await
    }
}

#[tokio::test]
async fn a_cdr_file_of_bad_lines_gets_a_bounded_answer_with_counts() {
    let app = spawn_app().await;
    let mut csv = String::from("call_id,type,user,from,to,start_time,duration_seconds\n");
    for _ in 0..500_000 {
        csv.push_str("x\n");
    }
    let r =
        app.send("POST", &format!("/v1/orgs/{}/cdrs", app.org), &app.admin, Some(("text/csv", csv.into_bytes()))).await;
    assert_eq!(r.status, 200, "{}", &r.text[..r.text.len().min(300)]);
    // Before: 45 MB of JSON listing every row.
    assert!(r.text.len() < 200_000, "the answer is {} bytes", r.text.len());
    let v = r.json();
    assert_eq!(v["rows"], 500_000);
    assert_eq!(v["rejected_total"], 500_000);
    assert_eq!(v["rejected"].as_array().unwrap().len(), commcredits_engine::cdr::MAX_REPORTED_REJECTS);
    assert_eq!(v["rejected_by_code"], json!({"invalid_cdr": 500_000}));
}

#[tokio::test]
async fn control_characters_are_refused_in_bodies_paths_and_queries() {
    let app = spawn_app().await;
    let authorize = |call_id: &str| {
        json!({"org_id": app.org, "call_id": call_id, "type": "outbound", "user_id": app.bob,
               "from": "+442079460000", "to": "+14155550100"})
    };
    let r = app.post_json("/v1/calls/authorize", &app.call_control, authorize("bad\u{0}id")).await;
    assert_eq!((r.status, r.code()), (422, "invalid_input".into()), "{}", r.text);
    assert!(r.json()["detail"].as_str().unwrap().contains("call_id"), "{}", r.text);
    let r = app.post_json("/v1/calls/authorize", &app.call_control, authorize("tab\there")).await;
    assert_eq!(r.code(), "invalid_input", "{}", r.text);
    // A NUL in an array's item, and in a field name.
    let r = app
        .post_json(
            &format!("/v1/orgs/{}/licenses/assign", app.org),
            &app.admin,
            json!({"sku": "phone_system", "user_ids": ["a\u{0}"]}),
        )
        .await;
    assert_eq!(r.code(), "invalid_input", "{}", r.text);
    let r = app.post_json(&format!("/v1/orgs/{}/users", app.org), &app.admin, json!({"up\u{1}n": "x"})).await;
    assert_eq!(r.code(), "invalid_input", "{}", r.text);
    // In a path segment and in a query string, percent-encoded.
    let r = app
        .send(
            "POST",
            "/v1/calls/bad%00id/end",
            &app.call_control,
            Some(("application/json", json!({"org_id": app.org, "duration_seconds": 1}).to_string().into_bytes())),
        )
        .await;
    assert_eq!((r.status, r.code()), (422, "invalid_input".into()), "{}", r.text);
    let r = app.send("GET", &format!("/v1/orgs/{}/users?cursor=a%00b", app.org), &app.admin, None).await;
    assert_eq!((r.status, r.code()), (422, "invalid_input".into()), "{}", r.text);
    // The good call still goes through.
    let r = app.post_json("/v1/calls/authorize", &app.call_control, authorize("good")).await;
    assert_eq!((r.status, r.json()["decision"].clone()), (200, json!("allow")), "{}", r.text);
}

#[tokio::test]
async fn every_text_field_has_a_length_bound() {
    let app = spawn_app().await;
    let users = format!("/v1/orgs/{}/users", app.org);
    let user = |upn: String, name: String| json!({"upn": upn, "display_name": name, "usage_location": "US"});
    let r = app.post_json(&users, &app.admin, user("eve@contoso.com".into(), "E".repeat(201))).await;
    assert_eq!(r.code(), "invalid_input", "{}", r.text);
    assert!(r.json()["detail"].as_str().unwrap().contains("display_name is longer than 200"), "{}", r.text);
    let r = app.post_json(&users, &app.admin, user(format!("{}@contoso.com", "e".repeat(300)), "Eve".into())).await;
    assert_eq!(r.code(), "invalid_input", "{}", r.text);
    let r = app.post_json(&users, &app.admin, user("eve@contoso.com".into(), "E".repeat(200))).await;
    assert_eq!(r.status, 201, "a name at the bound is fine: {}", r.text);
    let r = app.send("GET", &format!("/v1/orgs/{}/users?cursor={}", app.org, "c".repeat(129)), &app.admin, None).await;
    assert_eq!(r.code(), "invalid_input", "{}", r.text);
    let r = app.send("GET", &format!("/v1/orgs/{}/users/{}", app.org, "u".repeat(257)), &app.admin, None).await;
    assert_eq!(r.code(), "invalid_input", "{}", r.text);
}

/// 100 numbers of 200,000 digits each: each is refused before it is parsed, cached or
/// echoed; the cache holds valid numbers only.
#[tokio::test]
async fn overlong_numbers_are_refused_without_being_kept_or_echoed() {
    let app = spawn_app().await;
    let numbers = format!("/v1/orgs/{}/numbers", app.org);
    let cached_before = commcredits_core::phone::E164::cache_bytes();
    for n in 0..100 {
        let number = format!("+{n}{}", "1".repeat(199_990));
        let r = app.post_json(&numbers, &app.admin, json!({"number": number, "kind": "service"})).await;
        assert_eq!(r.status, 422, "{}", &r.text[..r.text.len().min(200)]);
        assert!(r.text.len() < 1_000, "the answer echoes {} bytes", r.text.len());
    }
    // Within the generic text bound but over the number's: refused by the number's check.
    let r =
        app.post_json(&numbers, &app.admin, json!({"number": format!("+{}", "1".repeat(40)), "kind": "service"})).await;
    assert_eq!(r.code(), "invalid_phone_number", "{}", r.text);
    assert!(commcredits_core::phone::E164::cache_bytes() <= cached_before + 1_000);
}

#[tokio::test]
async fn report_periods_take_dates_as_the_start_of_their_utc_day() {
    let app = spawn_app().await;
    let csv = format!(
        "call_id,type,user,from,to,start_time,duration_seconds\n\
         oct,outbound,{bob},+442079460000,+14155550100,2026-10-31T23:59:00Z,60\n\
         nov,outbound,{bob},+442079460000,+14155550100,2026-11-01T00:00:00Z,60\n",
        bob = app.bob
    );
    let r =
        app.send("POST", &format!("/v1/orgs/{}/cdrs", app.org), &app.admin, Some(("text/csv", csv.into_bytes()))).await;
    assert_eq!(r.json()["charged"], 2, "{}", r.text);
    let usage = |q: &str| format!("/v1/orgs/{}/reports/pstn-usage?{q}", app.org);
    let r = app.send("GET", &usage("from=2026-10-01&to=2026-11-01"), &app.admin, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ids: Vec<Value> = r.json()["items"].as_array().unwrap().iter().map(|i| i["call_id"].clone()).collect();
    assert_eq!(ids, vec![json!("oct")], "{}", r.text);
    // The same period as instants.
    let r2 = app.send("GET", &usage("from=2026-10-01T00:00:00Z&to=2026-11-01T00:00:00Z"), &app.admin, None).await;
    assert_eq!(r.json()["items"], r2.json()["items"]);
    let r = app
        .send("GET", &format!("/v1/orgs/{}/reports/summary?from=2026-11-01&to=2026-12-01", app.org), &app.admin, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app.send("GET", &usage("from=2026-11-31&to=2026-12-01"), &app.admin, None).await;
    assert_eq!((r.status, r.code()), (422, "invalid_time".into()), "{}", r.text);
    // The CSV export: Bob's display name is text, his number a number.
    let r = app.send("GET", &usage("from=2026-11-01&to=2026-12-01&format=csv"), &app.admin, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let row = r.text.lines().nth(1).unwrap();
    assert!(row.contains(",\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"Bob\"\")\",+442079460000,"), "{row}");
    drop(app.engine);
}
