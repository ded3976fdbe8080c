//! The setup the server's network tests share: a real server (`serve_connections`, the
//! loop `serve` runs) on a loopback port, with one funded organization.

#![allow(dead_code)]

use commcredits_core::Timestamp;
use commcredits_engine::payments::CardInput;
use commcredits_engine::{Command, Engine, Outcome};
use commcredits_server::ServerOptions;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any check here waits for an answer that must come.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Server {
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub engine: Arc<Engine>,
    pub client: reqwest::Client,
    pub call_control: String,
    pub org: String,
    pub ada: String,
    pub upn: String,
}

pub fn secret(o: Outcome) -> String {
    match o {
        Outcome::Key(k) => k.secret,
        other => panic!("expected a key, got {other:?}"),
    }
}

pub fn created(o: Outcome) -> String {
    match o {
        Outcome::Created { id } => id,
        other => panic!("expected Created, got {other:?}"),
    }
}

pub const US_FROM: &str = "+14155550100";
pub const US_TO: &str = "+12125550100";

/// A server with one funded organization whose user `ada` may call the US, and `calls`
/// settled calls in its usage report.
pub async fn start(options: ServerOptions, calls: usize) -> Server {
    start_with(options, calls, None).await
}

/// As [`start`]; `send_buffer_bytes` sets the server's socket send buffer (accepted
/// connections inherit the listener's), so that an answer the client does not read
/// stalls the server's writes after a few kilobytes instead of filling megabytes of
/// kernel buffer, as it would across a real network.
pub async fn start_with(options: ServerOptions, calls: usize, send_buffer_bytes: Option<u32>) -> Server {
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
    let upn = "ada@example.com".to_string();
    let ada = created(one(Command::CreateUser {
        org: org.clone(),
        upn: upn.clone(),
        display_name: "Ada".into(),
        usage_location: "US".into(),
        phone_number: None,
    }));
    for sku in ["phone_system", "communications_credits"] {
        one(Command::AddSubscription { org: org.clone(), sku: sku.into(), quantity: 5 });
        one(Command::AssignLicense { org: org.clone(), sku: sku.into(), users: vec![ada.clone()] });
    }
    let token = engine
        .gateway()
        .tokenize_card(
            &CardInput { number: "4242424242424242".into(), exp_month: 12, exp_year: 2035, holder: "A".into() },
            now,
        )
        .unwrap();
    created(one(Command::AddCard { org: org.clone(), token, holder: None }));
    let ea = created(one(Command::AddAgreement { org: org.clone(), agreement_number: "EA-1".into() }));
    assert_eq!(engine.purchase(&org, "5000.00", &ea, None, None, now).unwrap().status, "succeeded");
    if calls > 0 {
        let start = commcredits_engine::views::iso(Timestamp::from_second(now.as_second() - 86_400).unwrap());
        let mut csv = String::from("call_id,type,user,from,to,start_time,duration_seconds\n");
        for i in 0..calls {
            csv.push_str(&format!("cdr-{i},outbound,{upn},{US_FROM},{US_TO},{start},60\n"));
        }
        let report = engine.import_cdrs(&org, csv.as_bytes(), now, &mut |_| {}).unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected.first());
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(bytes) = send_buffer_bytes {
        socket.set_send_buffer_size(bytes).unwrap();
    }
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let listener = socket.listen(1024).expect("listen");
    let addr = listener.local_addr().unwrap();
    let limits = options.limits.clone();
    let app = commcredits_server::App::with_options(
        engine.clone(),
        commcredits_engine::delivery::Delivery::new(None, "http://127.0.0.1:8080"),
        &options,
    );
    let router = commcredits_server::router(app);
    tokio::spawn(async move {
        commcredits_server::serve_connections(listener, router, &limits, std::future::pending()).await.expect("serve");
    });
    let client = reqwest::Client::builder().timeout(PATIENCE).build().unwrap();
    Server { addr, base: format!("http://{addr}"), engine, client, call_control, org, ada, upn }
}

impl Server {
    pub fn key(&self, role: &str) -> String {
        secret(
            self.engine
                .apply_one(
                    Timestamp::now(),
                    Command::CreateKey { org: Some(self.org.clone()), role: role.into(), name: format!("{role} key") },
                )
                .unwrap(),
        )
    }

    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let mut rb = self.client.get(format!("{}{path}", self.base));
        if !key.is_empty() {
            rb = rb.bearer_auth(key);
        }
        let r = rb.send().await.unwrap_or_else(|e| panic!("GET {path} is answered: {e}"));
        let status = r.status().as_u16();
        (status, serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or(Value::Null))
    }

    pub async fn authorize(&self, call_id: &str) -> (u16, Value) {
        let body = json!({"org_id": self.org, "call_id": call_id, "type": "outbound", "user_id": self.ada,
                          "from": US_FROM, "to": US_TO, "requested_seconds": 300});
        let r = self
            .client
            .post(format!("{}/v1/calls/authorize", self.base))
            .bearer_auth(&self.call_control)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("authorize is answered: {e}"));
        let status = r.status().as_u16();
        (status, serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or(Value::Null))
    }

    pub fn export_path(&self, format: &str) -> String {
        format!(
            "/v1/orgs/{}/reports/pstn-usage?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&format={format}",
            self.org
        )
    }

    /// Opens a connection that asks for an export and then reads nothing.
    pub async fn export_and_never_read(&self, key: &str) -> TcpStream {
        // A small receive window: the server's writes stall after a few kilobytes.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(self.addr).await.expect("connect");
        let req = format!("GET {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n", self.export_path("csv"));
        s.write_all(req.as_bytes()).await.unwrap();
        s
    }
}

/// Reads until the peer closes the connection; the bytes read.
pub async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}
