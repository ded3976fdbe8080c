//! What an outside client must not be able to do to the server: keep connections or
//! exports open forever, starve call control with reports, lock valid keys out by
//! failing to authenticate, or read /metrics when it is protected. A real server
//! (`serve_connections`, the loop `serve` runs) on a loopback port per test.
//!
//! Waits are generous ceilings, never latency figures: a check that something answers
//! at all, or that a connection is closed at all.

mod common;

use commcredits_server::limits::Limits;
use commcredits_server::ServerOptions;
use common::{read_to_close, start, start_with, Server, PATIENCE};
use serde_json::Value;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

// ---------------------------------------------------------------- failed authentication

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_from_an_address_never_lock_out_a_valid_key() {
    let s = start(ServerOptions::default(), 0).await;
    let reader = s.key("reader");
    let credits = format!("/v1/orgs/{}/credits", s.org);
    for i in 0..commcredits_server::auth::MAX_FAILURES * 2 {
        s.get(&credits, &format!("cc_{i:064}")).await;
    }
    // Further failures are refused...
    let (status, body) = s.get(&credits, "cc_guess").await;
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")), "{body}");
    // ...but a valid key from the same address always passes, and call control goes on.
    let (status, body) = s.get(&credits, &reader).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.authorize("after-failures").await;
    assert_eq!((status, body["decision"].as_str()), (200, Some("allow")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_addresses_count_only_through_trusted_proxies() {
    let get = |s: &Server, xff: &str, key: &str| {
        let rb = s
            .client
            .get(format!("{}/v1/orgs/{}/credits", s.base, s.org))
            .bearer_auth(key.to_string())
            .header("x-forwarded-for", xff.to_string());
        async move { rb.send().await.expect("answered").status().as_u16() }
    };
    // The test client is on 127.0.0.1: trusted, X-Forwarded-For names the client.
    let trusted = ServerOptions { trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()], ..ServerOptions::default() };
    let s = start(trusted, 0).await;
    for i in 0..=commcredits_server::auth::MAX_FAILURES {
        get(&s, "198.51.100.1", &format!("cc_{i:064}")).await;
    }
    assert_eq!(get(&s, "198.51.100.1", "cc_bad").await, 429);
    // Another client behind the same proxy is not blocked by the first one's failures.
    assert_eq!(get(&s, "198.51.100.2", "cc_bad").await, 401);

    // Without trusted proxies the header is ignored: rotating it does not escape the limit.
    let s = start(ServerOptions::default(), 0).await;
    for i in 0..=commcredits_server::auth::MAX_FAILURES {
        get(&s, &format!("198.51.100.{i}"), &format!("cc_{i:064}")).await;
    }
    assert_eq!(get(&s, "203.0.113.77", "cc_bad").await, 429);
}

// ---------------------------------------------------------------- connections and timeouts

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_a_header_is_closed_by_the_header_timeout() {
    let limits = Limits { header_read_timeout: Duration::from_secs(1), ..Limits::default() };
    let s = start(ServerOptions { limits, ..ServerOptions::default() }, 0).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    tokio::time::timeout(PATIENCE, read_to_close(&mut c)).await.expect("the server closes a half-sent header");
    // An idle connection that never sends a byte is closed too.
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    tokio::time::timeout(PATIENCE, read_to_close(&mut idle)).await.expect("the server closes an idle connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_body_is_answered_and_closed() {
    let limits = Limits { body_read_timeout: Duration::from_secs(1), ..Limits::default() };
    let s = start(ServerOptions { limits, ..ServerOptions::default() }, 0).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/calls/authorize HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"org_id\":",
        s.call_control
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(PATIENCE, read_to_close(&mut c)).await.expect("a stalled body is cut off");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 422") && text.contains("\"invalid_input\""), "a problem, not silence: {text}");
    // Call control is untouched.
    assert_eq!(s.authorize("after-stalled-body").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_past_the_bound_are_refused_and_call_control_recovers() {
    let limits = Limits { max_connections: 8, header_read_timeout: Duration::from_secs(2), ..Limits::default() };
    let s = start(ServerOptions { limits, ..ServerOptions::default() }, 0).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(c);
    }
    // Give the server a moment to accept the eight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(s.addr).await.unwrap();
    let answer = tokio::time::timeout(PATIENCE, read_to_close(&mut extra)).await.expect("refused, not left hanging");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"overloaded\"") && text.to_ascii_lowercase().contains("retry-after"), "{text}");
    // The held connections send no more: the header timeout frees their places, and
    // call control is answered again.
    for c in &mut held {
        tokio::time::timeout(PATIENCE, read_to_close(c)).await.expect("closed by the header timeout");
    }
    assert_eq!(s.authorize("after-the-flood").await.0, 200);
    assert_eq!(s.get("/healthz", "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_address_cannot_take_every_connection() {
    let limits =
        Limits { max_connections_per_address: 4, header_read_timeout: Duration::from_secs(2), ..Limits::default() };
    let s = start(ServerOptions { limits, ..ServerOptions::default() }, 0).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The fifth connection of the address is refused while the server has room for
    // thousands more from other addresses.
    let mut extra = TcpStream::connect(s.addr).await.unwrap();
    let answer = tokio::time::timeout(PATIENCE, read_to_close(&mut extra)).await.expect("refused, not left hanging");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503") && text.contains("\"overloaded\""), "{text}");
    for c in &mut held {
        tokio::time::timeout(PATIENCE, read_to_close(c)).await.expect("closed by the header timeout");
    }
    // Their places are given back when they close.
    assert_eq!(s.authorize("after-the-address-flood").await.0, 200);
}

// ---------------------------------------------------------------- exports

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn never_reading_export_clients_do_not_stop_call_control() {
    // Every client of this test is on loopback: the per-address bound (tested below) is
    // lifted so that 600 connections reach the report slots.
    let limits = Limits { unlimited: vec!["127.0.0.0/8".parse().unwrap()], ..Limits::default() };
    let s = start_with(ServerOptions { limits, ..ServerOptions::default() }, 4_000, Some(4096)).await;
    let keys: Vec<String> = (0..4).map(|_| s.key("reader")).collect();
    let mut clients = Vec::new();
    // More than tokio's blocking pool has threads (512).
    for i in 0..600 {
        clients.push(s.export_and_never_read(&keys[i % keys.len()]).await);
    }
    // Let the server take them all in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Ten seconds is generous for a local answer that takes milliseconds; the failure
    // this guards against is no answer at all while exports hold the server.
    let s = Server { client: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap(), ..s };
    for i in 0..3 {
        assert_eq!(s.get("/healthz", "").await.0, 200);
        let (status, body) = s.authorize(&format!("while-exports-stall-{i}")).await;
        assert_eq!((status, body["decision"].as_str()), (200, Some("allow")), "{body}");
    }
    // Other report work is refused as overloaded rather than queued behind the exports.
    let (status, body) = s.get(&s.export_path("csv"), &s.key("reader")).await;
    assert!(matches!(status, 200 | 503), "{status} {body}");
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exports_are_bounded_per_key_and_a_stalled_one_is_dropped() {
    let limits = Limits { send_timeout: Duration::from_secs(1), max_exports_per_key: 1, ..Limits::default() };
    let s = start(ServerOptions { limits, ..ServerOptions::default() }, 3_000).await;
    let reader = s.key("reader");
    let mut stalled = s.export_and_never_read(&reader).await;
    // While that export is running, the key's next one is refused with a reason and a time.
    let mut refused = false;
    let r = s.client.get(format!("{}{}", s.base, s.export_path("csv"))).bearer_auth(&reader).send().await.unwrap();
    if r.status() == 429 {
        assert!(r.headers().contains_key("retry-after"));
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(body["code"], "rate_limited");
        refused = true;
    }
    assert!(refused, "a second export of the same key is refused while the first runs");
    // The client that reads nothing is dropped after the send timeout, and its export
    // gives its slot back: the key exports again, in full.
    tokio::time::timeout(PATIENCE, read_to_close(&mut stalled)).await.expect("the stalled export is dropped");
    let mut whole = None;
    for _ in 0..50 {
        let r = s.client.get(format!("{}{}", s.base, s.export_path("csv"))).bearer_auth(&reader).send().await.unwrap();
        if r.status() == 200 {
            whole = Some(r.text().await.expect("the export is read whole"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let whole = whole.expect("the key's slot came back");
    assert_eq!(whole.lines().count(), 3_001, "header and every call");
    assert!(whole.contains(&s.upn));
}

// ---------------------------------------------------------------- metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_token() {
    let open = start(ServerOptions::default(), 0).await;
    assert_eq!(open.get("/metrics", "").await.0, 200, "open by default");
    let s = start(ServerOptions { metrics_token: Some("scrape-me".into()), ..ServerOptions::default() }, 0).await;
    let (status, body) = s.get("/metrics", "").await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    assert_eq!(s.get("/metrics", "not-it").await.0, 401);
    let r = s.client.get(format!("{}/metrics", s.base)).bearer_auth("scrape-me").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("commcredits_notices_pending"));
}
