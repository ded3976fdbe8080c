//! `commcredits serve` takes its limits from flags and the environment: a half-sent
//! header is closed after `--header-timeout`, `/metrics` needs `--metrics-token` when
//! one is given (from the variable here), and a bad `--trusted-proxy` is refused.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("limits.db").display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_commcredits"));
    cmd.args(["--db", &db, "serve", "--listen", "127.0.0.1:0"]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = String::new();
    while let Some(Ok(line)) = lines.next() {
        if let Some(rest) = line.strip_prefix("Listening on http://") {
            addr = rest.split_whitespace().next().unwrap().to_string();
            break;
        }
    }
    assert!(!addr.is_empty(), "the server starts");
    Server { child, addr, _dir: dir }
}

fn get(addr: &str, path: &str, key: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn serve_applies_its_timeout_and_metrics_token_options() {
    let server = start(&["--header-timeout", "1"], &[("COMMCREDITS_METRICS_TOKEN", "scrape-me")]);
    assert_eq!(get(&server.addr, "/metrics", ""), 401);
    assert_eq!(get(&server.addr, "/metrics", "scrape-me"), 200);
    assert_eq!(get(&server.addr, "/healthz", ""), 200);
    // Half a header: the server closes the connection (read returns end of stream)
    // instead of waiting for the rest for ever.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    // (A read that times out is an error: only a close ends it well.)
    let mut rest = Vec::new();
    assert!(s.read_to_end(&mut rest).is_ok(), "closed by the header timeout");
}

#[test]
fn serve_refuses_a_malformed_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_commcredits"))
        .args(["--db", &db, "serve", "--listen", "127.0.0.1:0", "--trusted-proxy", "10.0.0.0/99"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not an address or a CIDR block"), "{stderr}");
}
