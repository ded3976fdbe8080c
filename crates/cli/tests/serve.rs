//! `commcredits serve --demo` as a new user runs it: the printed key works with the
//! README's curl example, and SIGTERM stops the server cleanly (exit 0).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(addr: &str, path: &str, key: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn serve_demo_prints_a_working_key_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("serve.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_commcredits"))
        .args(["--db", &db, "serve", "--demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut key, mut org, mut addr, mut admin) = (String::new(), String::new(), String::new(), String::new());
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(k) = line.strip_prefix("Admin API key:") {
            key = k.trim().to_string();
        } else if let Some(a) = line.strip_prefix("Admin center:") {
            admin = a.split_whitespace().next().unwrap_or("").to_string();
        } else if let Some(o) = line.strip_prefix("Demo organization:") {
            org = o.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("Listening on http://") {
            addr = rest.split_whitespace().next().unwrap().to_string();
            break;
        }
    }
    assert!(key.starts_with("cc_") && !org.is_empty() && !addr.is_empty(), "key {key:?} org {org:?} addr {addr:?}");
    let (status, body) = get(&addr, &format!("/v1/orgs/{org}/credits"), &key);
    assert_eq!(status, 200, "{body}");
    let credits: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(credits["currency"], "USD");
    assert!(credits["balance"].as_i64().unwrap() > 0);
    let (status, _) = get(&addr, "/healthz", "");
    assert_eq!(status, 200);
    assert_eq!(admin, format!("http://{addr}/admin/login"), "the admin center's address is printed");
    let (status, body) = get(&addr, "/admin/login", "");
    assert_eq!(status, 200, "{body}");
    // Graceful stop.
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second start on the same database does not seed again.
    let out =
        Command::new(env!("CARGO_BIN_EXE_commcredits")).args(["--db", &db, "--json", "org", "list"]).output().unwrap();
    let orgs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(orgs.as_array().unwrap().len(), 1);
}
