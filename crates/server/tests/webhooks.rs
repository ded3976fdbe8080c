//! Webhooks over HTTP: outbound addresses are checked when a webhook is added, a
//! replayed answer never shows the secret again, readers see URLs without their path,
//! and neither the server key nor any secret reaches the logs.

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
