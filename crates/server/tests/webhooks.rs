//! Webhooks over HTTP: outbound addresses are checked when a webhook is added, a
//! replayed answer never shows the secret again, readers see URLs without their path,
//! and neither the server key nor any secret reaches the logs. And the other outbound
//! call the server makes, to the payment gateway, never holds up call control.

use commcredits_core::Timestamp;
use commcredits_engine::delivery::{self, Delivery, HttpWebhooks, SecretKey};
use commcredits_engine::{Command, Engine, Outcome};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, OnceLock};

const KEY_HEX: &str = "3b9f0c2d4e5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e";

/// Everything the process logs, at debug level (installed once per test binary).
fn captured() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        struct Sink(&'static Mutex<Vec<u8>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(logs))
            .try_init();
        logs
    })
}

struct Server {
    base: String,
    engine: Arc<Engine>,
    org: String,
    admin: String,
    reader: String,
    client: reqwest::Client,
}

fn key_secret(o: Outcome) -> String {
    match o {
        Outcome::Key(k) => k.secret,
        other => panic!("{other:?}"),
    }
}

async fn start(allow_private: bool) -> Server {
    captured();
    let store = commcredits_store::sqlite::SqliteStore::open("sqlite::memory:").unwrap();
    let mut engine = Engine::new(Arc::new(store)).unwrap();
    engine.config.secret_key = Some(SecretKey::parse(KEY_HEX).unwrap());
    let engine = Arc::new(engine);
    let now = Timestamp::now();
    let org = match engine
        .apply_one(
            now,
            Command::CreateOrg { name: "Contoso".into(), currency: "USD".into(), country: "US".into(), emails: vec![] },
        )
        .unwrap()
    {
        Outcome::Created { id } => id,
        other => panic!("{other:?}"),
    };
    let key = |role: &str| {
        key_secret(
            engine
                .apply_one(now, Command::CreateKey { org: Some(org.clone()), role: role.into(), name: role.into() })
                .unwrap(),
        )
    };
    let (admin, reader) = (key("admin"), key("reader"));
    let delivery =
        Delivery { webhooks: Arc::new(HttpWebhooks::new(allow_private)), ..Delivery::new(None, "http://cc.example") };
    let app = commcredits_server::App::with_delivery(engine.clone(), delivery);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = commcredits_server::router(app);
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    Server { base, engine, org, admin, reader, client: reqwest::Client::new() }
}

impl Server {
    async fn send(&self, method: &str, path: &str, key: &str, body: Option<Value>, idem: Option<&str>) -> (u16, Value) {
        let url = format!("{}/v1/orgs/{}{path}", self.base, self.org);
        let mut req = self.client.request(method.parse().unwrap(), url).bearer_auth(key);
        if let Some(k) = idem {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// A receiver on loopback that answers 204 to everything.
fn receiver() -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hits = Arc::new(Mutex::new(0));
    let count = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let (mut line, mut len) = (String::new(), 0usize);
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            *count.lock().unwrap() += 1;
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_webhook_is_refused_unless_private_addresses_are_allowed() {
    let s = start(false).await;
    let (addr, hits) = receiver();
    for url in [format!("http://{addr}/hook"), "http://169.254.169.254/latest".into(), "http://[::1]/x".into()] {
        let (status, body) = s.send("POST", "/webhooks", &s.admin, Some(json!({ "url": url })), None).await;
        assert_eq!((status, body["code"].as_str()), (422, Some("invalid_input")), "{url}: {body}");
        assert_eq!(body["detail"].as_str().or(body["message"].as_str()), Some(delivery::ADDRESS_REFUSED), "{body}");
    }
    assert!(s.engine.webhooks(&s.org).unwrap().is_empty());
    assert_eq!(*hits.lock().unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_delete_does_not_show_the_secret_and_readers_see_no_path() {
    let s = start(true).await;
    let (addr, _) = receiver();
    let url = format!("http://{addr}/hooks/cc?token=receiver-credential");
    let (status, first) = s.send("POST", "/webhooks", &s.admin, Some(json!({ "url": url })), Some("add-1")).await;
    assert_eq!(status, 201, "{first}");
    let secret = first["secret"].as_str().unwrap().to_string();
    let id = first["id"].as_str().unwrap().to_string();
    // Readers see where notices go, not the credential in the URL; admins see it all.
    let (_, listed) = s.send("GET", "/webhooks", &s.reader, None, None).await;
    assert_eq!(listed[0]["url"], json!(format!("http://{addr}")), "{listed}");
    assert!(!listed.to_string().contains("receiver-credential"));
    let (_, listed) = s.send("GET", "/webhooks", &s.admin, None, None).await;
    assert_eq!(listed[0]["url"], json!(url));
    let (status, _) = s.send("DELETE", &format!("/webhooks/{id}"), &s.admin, None, None).await;
    assert_eq!(status, 200);
    let (status, replay) = s.send("POST", "/webhooks", &s.admin, Some(json!({ "url": url })), Some("add-1")).await;
    assert_eq!(status, 201);
    assert_eq!(replay["id"], json!(id));
    assert!(replay["secret"].is_null(), "{replay}");
    assert!(replay["secret_note"].as_str().unwrap().contains("not shown again"), "{replay}");
    assert!(!replay.to_string().contains(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_the_server_key_nor_any_secret_is_logged() {
    let s = start(true).await;
    let (addr, hits) = receiver();
    let (status, created) =
        s.send("POST", "/webhooks", &s.admin, Some(json!({ "url": format!("http://{addr}/hook") })), None).await;
    assert_eq!(status, 201);
    let secret = created["secret"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let (status, _) = s.send("POST", &format!("/webhooks/{id}/test"), &s.admin, Some(json!({})), None).await;
    assert_eq!(status, 200);
    // A failing endpoint logs its detail: that path is covered too.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (_, failing) =
        s.send("POST", "/webhooks", &s.admin, Some(json!({ "url": format!("http://{closed}/x") })), None).await;
    let fid = failing["id"].as_str().unwrap().to_string();
    let (status, problem) = s.send("POST", &format!("/webhooks/{fid}/test"), &s.admin, Some(json!({})), None).await;
    assert_eq!(status, 422, "{problem}");
    assert!(!problem.to_string().contains("refused") && !problem.to_string().contains("os error"), "{problem}");
    let (engine, org) = (s.engine.clone(), s.org.clone());
    tokio::task::spawn_blocking(move || {
        let sealed = engine.read(|tx| tx.list_webhooks(&org)).unwrap();
        assert!(sealed.iter().all(|w| delivery::is_sealed(&w.secret)));
    })
    .await
    .unwrap();
    assert_eq!(*hits.lock().unwrap(), 1);
    let logs = String::from_utf8_lossy(&captured().lock().unwrap()).to_string();
    assert!(logs.contains("webhook delivery failed"), "the logs were not captured: {logs}");
    for (what, text) in [
        ("server key", KEY_HEX.to_string()),
        ("webhook secret", secret.clone()),
        ("webhook secret (hex part)", secret.trim_start_matches("whsec_").to_string()),
        ("admin key", s.admin.clone()),
        ("reader key", s.reader.clone()),
    ] {
        assert!(!logs.contains(&text), "the {what} is in the logs");
    }
}

// ---------------------------------------------------------------- recharges off the call path

/// The sandbox gateway, with charges that wait while `hold` is set.
#[derive(Default)]
struct SlowGateway {
    hold: Mutex<bool>,
    released: std::sync::Condvar,
    charges: Mutex<usize>,
}

impl commcredits_engine::payments::PaymentGateway for SlowGateway {
    fn tokenize_card(
        &self,
        card: &commcredits_engine::payments::CardInput,
        now: Timestamp,
    ) -> commcredits_core::Result<commcredits_engine::payments::CardToken> {
        commcredits_engine::payments::SandboxGateway.tokenize_card(card, now)
    }

    fn charge(
        &self,
        order_id: &str,
        amount_minor: i64,
        currency: &str,
        method: &commcredits_store::PaymentMethodRow,
        now: Timestamp,
    ) -> Result<String, commcredits_engine::payments::PaymentFailure> {
        let mut hold = self.hold.lock().unwrap();
        while *hold {
            hold = self.released.wait(hold).unwrap();
        }
        drop(hold);
        *self.charges.lock().unwrap() += 1;
        commcredits_engine::payments::SandboxGateway.charge(order_id, amount_minor, currency, method, now)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_hangs_does_not_delay_authorize_answers_and_the_recharge_lands_once() {
    let gateway = Arc::new(SlowGateway::default());
    let store = commcredits_store::sqlite::SqliteStore::open("sqlite::memory:").unwrap();
    let mut engine = Engine::with_gateway(Arc::new(store), gateway.clone()).unwrap();
    // Longer than the test's deadlines: a call that waited for the gateway would show.
    engine.config.gateway_timeout = std::time::Duration::from_secs(600);
    let engine = Arc::new(engine);
    let now = Timestamp::now();
    let one = |c: Command| engine.apply_one(now, c).unwrap();
    let id = |o: Outcome| match o {
        Outcome::Created { id } => id,
        other => panic!("{other:?}"),
    };
    let org = id(one(Command::CreateOrg {
        name: "Contoso".into(),
        currency: "USD".into(),
        country: "US".into(),
        emails: vec![],
    }));
    let bob = id(one(Command::CreateUser {
        org: org.clone(),
        upn: "bob@contoso.com".into(),
        display_name: "Bob".into(),
        usage_location: "GB".into(),
        phone_number: None,
    }));
    for sku in ["phone_system", "communications_credits"] {
        one(Command::AddSubscription { org: org.clone(), sku: sku.into(), quantity: 1 });
        one(Command::AssignLicense { org: org.clone(), sku: sku.into(), users: vec![bob.clone()] });
    }
    let card = commcredits_engine::payments::CardInput {
        number: "4242424242424242".into(),
        exp_month: 12,
        exp_year: 2030,
        holder: "Contoso".into(),
    };
    let token = engine.gateway().tokenize_card(&card, now).unwrap();
    let card = id(one(Command::AddCard { org: org.clone(), token, holder: None }));
    engine.purchase(&org, "50", &card, None, None, now).unwrap();
    one(Command::SetAutoRecharge {
        org: org.clone(),
        enabled: true,
        amount: Some("50".into()),
        threshold: Some("45".into()),
        payment_method_id: Some(card),
    });
    let switch = key_secret(one(Command::CreateKey { org: None, role: "call_control".into(), name: "switch".into() }));
    let app = commcredits_server::App::new(engine.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = commcredits_server::router(app);
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    let client = reqwest::Client::new();
    let authorize = |call_id: &str| {
        let body = json!({"org_id": org, "call_id": call_id, "type": "outbound", "user_id": bob,
                          "from": "+442079460000", "to": "+447400123456", "requested_seconds": 3600});
        let req = client.post(format!("{base}/v1/calls/authorize")).bearer_auth(&switch).json(&body).send();
        let gateway = gateway.clone();
        async move {
            // The deadline only keeps a failing run from hanging: past it the gateway is
            // let go (so the server can stop) and the test fails.
            let Ok(resp) = tokio::time::timeout(std::time::Duration::from_secs(30), req).await else {
                *gateway.hold.lock().unwrap() = false;
                gateway.released.notify_all();
                panic!("authorize waited for the payment gateway");
            };
            let resp = resp.unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    *gateway.hold.lock().unwrap() = true;
    // This call takes the available balance below 45.00: a recharge is placed, and the
    // gateway hangs on it. The call is answered all the same, and so is the next.
    assert!(authorize("c1").await["granted_seconds"].as_u64().unwrap() > 0);
    assert!(authorize("c2").await["granted_seconds"].as_u64().is_some());
    let orders =
        |e: &Engine| e.orders(&org).unwrap().into_iter().filter(|o| o.kind == "auto_recharge").collect::<Vec<_>>();
    assert_eq!(orders(&engine).iter().map(|o| o.status.as_str()).collect::<Vec<_>>(), ["pending"]);
    *gateway.hold.lock().unwrap() = false;
    gateway.released.notify_all();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while orders(&engine)[0].status == "pending" {
        assert!(std::time::Instant::now() < deadline, "the recharge was never charged");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let e = engine.clone();
    tokio::task::spawn_blocking(move || e.run_jobs(Timestamp::now()).unwrap()).await.unwrap();
    let done = orders(&engine);
    assert_eq!((done.len(), done[0].status.as_str()), (1, "succeeded"));
    assert_eq!(engine.credits(&org).unwrap().balance, 10_000);
    // One purchase and one recharge reached the gateway.
    assert_eq!(*gateway.charges.lock().unwrap(), 2);
}
