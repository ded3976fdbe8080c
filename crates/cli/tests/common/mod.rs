//! Helpers shared by the tests that start `commcredits serve` processes: the CLI, a
//! minimal HTTP client that reports only answers actually received, and starting a
//! server on a free port.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The PostgreSQL server the tests create their databases on.
pub fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs the CLI with `--json` and returns its answer; panics when it fails.
pub fn cli(db: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_commcredits")).args(["--db", db, "--json"]).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stdout));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// POSTs JSON; an error means no complete HTTP answer came back.
pub fn post(addr: &str, path: &str, key: &str, body: &Value) -> std::io::Result<(u16, Value)> {
    request(addr, path, key, None, "application/json", &body.to_string())
}

/// POSTs `body` with an optional `Idempotency-Key`. An answer counts only when its
/// status line and its whole body (by `Content-Length` or the connection's close) came.
pub fn request(
    addr: &str,
    path: &str,
    key: &str,
    idempotency_key: Option<&str>,
    content_type: &str,
    body: &str,
) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let idem = idempotency_key.map(|k| format!("Idempotency-Key: {k}\r\n")).unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n{idem}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let json = text.split("\r\n\r\n").nth(1).and_then(|b| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    if status == 0 || json.is_null() {
        return Err(std::io::Error::other("no complete HTTP answer"));
    }
    Ok((status, json))
}

pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test that fails part-way must not leave servers running (on PostgreSQL they would
/// keep running jobs against a database the test is dropping).
impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `serve` on a free port with jobs every second and a 2 s reservation grace.
pub fn start_server(db: &str) -> Server {
    start_server_with(db, &["--jobs-every", "1", "--reservation-grace", "2"])
}

/// The server is killed and reaped when the returned value is dropped.
pub fn start_server_with(db: &str, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_commcredits"))
        .args(["--db", db, "serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read stdout on a thread (and keep reading it, so the server never blocks on a
    // full pipe): a server that hangs before saying where it listens fails the test at
    // the deadline instead of hanging it.
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in lines.map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("Listening on http://") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                }
            }
        }
    });
    let mut server = Server { child, addr: String::new() };
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => {
            server.addr = addr;
            server
        }
        Err(_) => panic!("a server did not start within 60 s"),
    }
}
