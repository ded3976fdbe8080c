//! The HTTP surface under abuse. Every route of the OpenAPI document (read from the
//! document, not listed here), the admin pages and forms (found by following the
//! signed-in pages' links and forms), `/healthz`, `/metrics` and `/openapi.json` are sent
//! malformed, oversized, slow and concurrent input through a real server on loopback.
//!
//! What must hold: no answer is a 5xx other than the documented `503 overloaded`;
//! every error answer carries a stable code (problem+json, or the admin pages' HTML with
//! its `data-code`); nothing is left unanswered; while the abuse runs, a funded user's
//! authorize is allowed within a generous ceiling; the process's resident memory grows
//! by a bounded amount.
//!
//! Input the HTTP parser itself refuses (bytes no request line or header may hold, a
//! header past hyper's buffer) is answered by hyper before any route sees it, with a
//! bare 4xx and no body; those cases are held to "4xx or closed, never a 5xx or a hang".
//!
//! `ABUSE_SCALE=10` multiplies the floods (connections, slow clients, rounds of junk).
//! `ABUSE_SEED=n` replays a run's junk.

mod common;

use commcredits_core::{ErrorCode, Timestamp};
use commcredits_engine::payments::CardInput;
use commcredits_engine::Command;
use commcredits_server::limits::Limits;
use commcredits_server::ServerOptions;
use common::{created, secret, US_FROM, US_TO};
use futures::StreamExt;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Longest any one abusive request may go unanswered (or unclosed).
const CEILING: Duration = Duration::from_secs(20);
/// Longest the funded user's authorize may take while the abuse runs.
const AUTHORIZE_CEILING: Duration = Duration::from_secs(10);
/// The server's header timeout here: also how long an idle connection is kept.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- raw HTTP

/// A request body as it goes on the wire.
#[derive(Clone)]
enum Body {
    None,
    Bytes(Vec<u8>),
    /// `n` bytes of `fill` with a Content-Length, written in pieces (no big buffer here).
    Repeat(u8, usize),
    /// `n` bytes of `fill`, chunked, with no Content-Length.
    Chunked(u8, usize),
    /// The bytes, one a second (a slow-loris body).
    Trickle(Vec<u8>),
}

#[derive(Clone)]
struct Req {
    method: String,
    /// Path and query, as bytes: they may be anything.
    target: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    body: Body,
    /// The request is not valid HTTP/1.1 (hyper refuses it before routing).
    protocol: bool,
    /// What the case is, for the report.
    case: String,
}

impl Req {
    fn new(method: &str, target: impl Into<Vec<u8>>, case: impl Into<String>) -> Req {
        Req {
            method: method.into(),
            target: target.into(),
            headers: Vec::new(),
            body: Body::None,
            protocol: false,
            case: case.into(),
        }
    }

    fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn body(mut self, content_type: Option<&str>, body: Body) -> Req {
        if let Some(ct) = content_type {
            self.headers.push(("content-type".into(), ct.as_bytes().to_vec()));
        }
        self.body = body;
        self
    }

    fn protocol(mut self) -> Req {
        self.protocol = true;
        self
    }

    fn head(&self) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(self.method.as_bytes());
        h.push(b' ');
        h.extend_from_slice(&self.target);
        h.extend_from_slice(b" HTTP/1.1\r\nhost: abuse\r\nconnection: close\r\n");
        for (k, v) in &self.headers {
            h.extend_from_slice(k.as_bytes());
            h.extend_from_slice(b": ");
            h.extend_from_slice(v);
            h.extend_from_slice(b"\r\n");
        }
        match &self.body {
            Body::None => {}
            Body::Bytes(b) | Body::Trickle(b) => {
                h.extend_from_slice(format!("content-length: {}\r\n", b.len()).as_bytes())
            }
            Body::Repeat(_, n) => h.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
            Body::Chunked(..) => h.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        h.extend_from_slice(b"\r\n");
        h
    }
}

#[derive(Debug)]
enum Outcome {
    Answer {
        status: u16,
        content_type: String,
        body: Vec<u8>,
        took: Duration,
    },
    /// Closed with no answer.
    Closed,
    /// The connection could not be made.
    NotConnected(String),
    /// Neither answered nor closed within the ceiling.
    Hung,
}

/// A connection from `from` (any 127.x.y.z: loopback takes them all, so a flood can come
/// from many client addresses).
async fn connect(addr: SocketAddr, from: Ipv4Addr, recv_buffer: Option<u32>) -> std::io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(b) = recv_buffer {
        socket.set_recv_buffer_size(b)?;
    }
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    socket.connect(addr).await
}

async fn write_body(w: &mut (impl AsyncWriteExt + Unpin), body: &Body) -> std::io::Result<()> {
    const PIECE: usize = 64 * 1024;
    match body {
        Body::None => Ok(()),
        Body::Bytes(b) => w.write_all(b).await,
        Body::Repeat(fill, n) => {
            let piece = vec![*fill; PIECE];
            let mut left = *n;
            while left > 0 {
                let k = left.min(PIECE);
                w.write_all(&piece[..k]).await?;
                left -= k;
            }
            Ok(())
        }
        Body::Chunked(fill, n) => {
            let piece = vec![*fill; PIECE];
            let mut left = *n;
            while left > 0 {
                let k = left.min(PIECE);
                w.write_all(format!("{k:x}\r\n").as_bytes()).await?;
                w.write_all(&piece[..k]).await?;
                w.write_all(b"\r\n").await?;
                left -= k;
            }
            w.write_all(b"0\r\n\r\n").await
        }
        Body::Trickle(b) => {
            for byte in b {
                w.write_all(std::slice::from_ref(byte)).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(())
        }
    }
}

/// Sends `req` on a new connection and reads the answer (the writing goes on beside the
/// reading, so an answer sent before the body is all written is still read).
async fn send(addr: SocketAddr, from: Ipv4Addr, req: &Req) -> Outcome {
    match connect(addr, from, None).await {
        Ok(stream) => send_on(stream, req).await,
        Err(e) => Outcome::NotConnected(e.to_string()),
    }
}

/// As [`send`], on a connection already open.
async fn send_on(stream: tokio::net::TcpStream, req: &Req) -> Outcome {
    let start = Instant::now();
    let (mut r, mut w) = stream.into_split();
    let (head, body) = (req.head(), req.body.clone());
    let writer = tokio::spawn(async move {
        if w.write_all(&head).await.is_ok() {
            let _ = write_body(&mut w, &body).await;
        }
        // Keep the write half open: shutting it would end a body the server still reads.
        w
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(CEILING, async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if answer_complete(&got) {
                break;
            }
        }
    })
    .await;
    writer.abort();
    match parse_answer(&got, start.elapsed()) {
        Some(a) => a,
        None if read.is_err() => Outcome::Hung,
        None => Outcome::Closed,
    }
}

fn head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// The answer's whole body is in: by its length, or the chunked ending.
fn answer_complete(b: &[u8]) -> bool {
    let Some(end) = head_end(b) else { return false };
    let head = String::from_utf8_lossy(&b[..end]);
    if let Some(n) = header_of(&head, "content-length").and_then(|n| n.parse::<usize>().ok()) {
        return b.len() >= end + n;
    }
    header_of(&head, "transfer-encoding").is_some_and(|t| t.contains("chunked")) && b.ends_with(b"0\r\n\r\n")
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 || b.len() < eol + 2 + n {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[(eol + 4 + n).min(b.len())..];
    }
    out
}

fn parse_answer(b: &[u8], took: Duration) -> Option<Outcome> {
    let end = head_end(b)?;
    let head = String::from_utf8_lossy(&b[..end]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let content_type = header_of(&head, "content-type").unwrap_or_default();
    let body = if header_of(&head, "transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        dechunk(&b[end..])
    } else {
        b[end..].to_vec()
    };
    Some(Outcome::Answer { status, content_type, body, took })
}

// ---------------------------------------------------------------- judging answers

#[derive(Default)]
struct Tally {
    by_status: BTreeMap<String, usize>,
    failures: Vec<String>,
    slowest: Duration,
}

impl Tally {
    fn fail(&mut self, what: String) {
        if self.failures.len() < 200 {
            self.failures.push(what);
        }
    }
}

fn stable_codes() -> Vec<&'static str> {
    ErrorCode::ALL.iter().map(|c| c.as_str()).collect()
}

/// The stable code of an error answer: problem+json's `code`, or the admin pages' `data-code`.
fn code_of(content_type: &str, body: &[u8]) -> Option<String> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if media == "application/problem+json" {
        let v: Value = serde_json::from_slice(body).ok()?;
        return v["code"].as_str().map(str::to_string);
    }
    if media == "text/html" {
        let text = String::from_utf8_lossy(body);
        let at = text.find("data-code=\"")? + "data-code=\"".len();
        return Some(text[at..].split('"').next()?.to_string());
    }
    None
}

fn judge(tally: &Mutex<Tally>, route: &str, req: &Req, outcome: &Outcome) {
    let mut t = tally.lock().unwrap();
    let what = || format!("{} {route} [{}]", req.method, req.case);
    match outcome {
        Outcome::Hung => {
            *t.by_status.entry("hung".into()).or_default() += 1;
            t.fail(format!("{}: no answer and not closed within {CEILING:?}", what()));
        }
        Outcome::NotConnected(e) => {
            *t.by_status.entry("not connected".into()).or_default() += 1;
            t.fail(format!("{}: cannot connect: {e}", what()));
        }
        Outcome::Closed => {
            *t.by_status.entry("closed".into()).or_default() += 1;
            if !req.protocol {
                t.fail(format!("{}: closed without an answer", what()));
            }
        }
        Outcome::Answer { status, content_type, body, took } => {
            *t.by_status.entry(status.to_string()).or_default() += 1;
            t.slowest = t.slowest.max(*took);
            let code = code_of(content_type, body);
            let text = || String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
            if *status >= 500 {
                if !(*status == 503 && code.as_deref() == Some("overloaded")) {
                    t.fail(format!("{}: {status} {content_type} {}", what(), text()));
                }
            } else if *status >= 400 {
                if req.protocol && body.is_empty() {
                    // hyper's own refusal of a request it cannot parse.
                } else if !code.as_deref().is_some_and(|c| stable_codes().contains(&c)) {
                    t.fail(format!("{}: {status} without a stable code ({content_type}) {}", what(), text()));
                }
            }
        }
    }
}

// ---------------------------------------------------------------- the targets

/// A route to abuse, with everything needed to reach past authentication.
#[derive(Clone)]
struct Target {
    method: String,
    /// The template, as in the document.
    route: String,
    /// The path with real values in it.
    path: String,
    /// Query parameter names.
    query: Vec<String>,
    /// Request body: its media type and a plausible JSON body (None when not JSON).
    media: Option<String>,
    sample: Option<Value>,
    /// Headers that get the request past authentication (a key, or a session and the CSRF token).
    auth: Vec<(String, String)>,
    /// Form fields (admin forms), with their values from the page.
    form: Vec<(String, String)>,
}

/// The schema behind a `$ref`.
fn resolve<'a>(doc: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(&r.replacen('#', "", 1)).map(|t| resolve(doc, t)).unwrap_or(&Value::Null),
        None => s,
    }
}

/// A plausible value of a schema, with real ids where a field names one.
fn sample(doc: &Value, schema: &Value, field: &str, ids: &BTreeMap<&str, String>, depth: usize) -> Value {
    let s = resolve(doc, schema);
    if depth > 6 {
        return Value::Null;
    }
    if let Some(v) = ids.get(field) {
        return json!(v);
    }
    for k in ["oneOf", "anyOf", "allOf"] {
        if let Some(first) = s.get(k).and_then(Value::as_array).and_then(|a| a.iter().find(|x| x["type"] != "null")) {
            return sample(doc, first, field, ids, depth + 1);
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array).and_then(|a| a.first()) {
        return e.clone();
    }
    let ty = match &s["type"] {
        Value::Array(a) => a.iter().find(|t| *t != "null").cloned().unwrap_or(Value::Null),
        t => t.clone(),
    };
    match ty.as_str() {
        Some("integer") => json!(60),
        Some("number") => json!(1.5),
        Some("boolean") => json!(true),
        Some("array") => json!([sample(doc, &s["items"], field, ids, depth + 1)]),
        Some("string") => json!("abuse"),
        _ => {
            let mut o = serde_json::Map::new();
            for (k, v) in s["properties"].as_object().into_iter().flatten() {
                o.insert(k.clone(), sample(doc, v, k, ids, depth + 1));
            }
            Value::Object(o)
        }
    }
}

/// Every operation of the OpenAPI document as a target.
fn api_targets(doc: &Value, ids: &BTreeMap<&str, String>, key_for: impl Fn(&str, &str) -> String) -> Vec<Target> {
    let mut out = Vec::new();
    for (route, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let mut path = route.clone();
            let mut query = Vec::new();
            for p in op["parameters"].as_array().into_iter().flatten() {
                let p = resolve(doc, p);
                let name = p["name"].as_str().unwrap_or_default();
                match p["in"].as_str() {
                    Some("path") => {
                        let v = ids.get(name).cloned().unwrap_or_else(|| format!("abuse-{name}"));
                        path = path.replace(&format!("{{{name}}}"), &v);
                    }
                    Some("query") => query.push(name.to_string()),
                    _ => {}
                }
            }
            let (media, schema) = op["requestBody"]["content"]
                .as_object()
                .and_then(|c| c.iter().next())
                .map(|(m, c)| (Some(m.clone()), c["schema"].clone()))
                .unwrap_or((None, Value::Null));
            let sample = (media.as_deref() == Some("application/json")).then(|| sample(doc, &schema, "", ids, 0));
            let key = key_for(method, route);
            out.push(Target {
                method: method.to_ascii_uppercase(),
                route: route.clone(),
                path,
                query,
                media,
                sample,
                auth: vec![("authorization".into(), format!("Bearer {key}"))],
                form: Vec::new(),
            });
        }
    }
    out
}

/// Undoes the templates' HTML escaping of an attribute.
fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The values of attribute `name` in `tag`.
fn attr(tag: &str, name: &str) -> Option<String> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(unescape(tag[at..].split('"').next()?))
}

/// The admin pages a signed-in admin reaches from the overview, and every form on them.
async fn admin_targets(base: &str, cookie: &str) -> Vec<Target> {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec!["/admin".to_string()];
    let mut out = Vec::new();
    let auth = vec![("cookie".to_string(), cookie.to_string())];
    while let Some(page) = todo.pop() {
        if !seen.insert(page.clone()) || seen.len() > 60 {
            continue;
        }
        let r = client.get(format!("{base}{page}")).header("cookie", cookie).send().await.expect("an admin page");
        let html_page = r.headers().get("content-type").is_some_and(|c| c.to_str().unwrap_or("").contains("html"));
        let text = r.text().await.unwrap_or_default();
        let (route, query) =
            page.split_once('?').map(|(p, q)| (p.to_string(), q.to_string())).unwrap_or((page.clone(), String::new()));
        out.push(Target {
            method: "GET".into(),
            route: route.clone(),
            path: route.clone(),
            query: form_urlencoded::parse(query.as_bytes()).map(|(k, _)| k.to_string()).collect(),
            media: None,
            sample: None,
            auth: auth.clone(),
            form: Vec::new(),
        });
        if !html_page {
            continue;
        }
        for piece in text.split("href=\"").skip(1) {
            let link = unescape(piece.split('"').next().unwrap_or_default());
            if link.starts_with("/admin") && !link.contains("logout") && !link.starts_with("/admin/static") {
                todo.push(link);
            }
        }
        for piece in text.split("<form").skip(1) {
            let (tag, rest) = piece.split_once('>').unwrap_or((piece, ""));
            let form_html = rest.split("</form>").next().unwrap_or_default();
            if !attr(tag, "method").is_some_and(|m| m.eq_ignore_ascii_case("post")) {
                continue;
            }
            let Some(action) = attr(tag, "action") else { continue };
            let mut fields = Vec::new();
            for input in form_html
                .split('<')
                .filter(|t| t.starts_with("input") || t.starts_with("select") || t.starts_with("textarea"))
            {
                if let Some(name) = attr(input, "name") {
                    fields.push((name, attr(input, "value").unwrap_or_else(|| "1".into())));
                }
            }
            out.push(Target {
                method: "POST".into(),
                route: action.clone(),
                path: action,
                query: Vec::new(),
                media: Some("application/x-www-form-urlencoded".into()),
                sample: None,
                auth: auth.clone(),
                form: fields,
            });
        }
    }
    // Signing out ends the session the other forms need: last.
    out.sort_by_key(|t| t.route.contains("logout"));
    out
}

// ---------------------------------------------------------------- the junk

fn junk_text(rng: &mut rand::rngs::StdRng, n: usize) -> String {
    (0..n).map(|_| char::from_u32(rng.random_range(0x20..0x2FFF)).unwrap_or('x')).collect()
}

/// Values no field should take quietly: huge and odd numbers, wrong types, control text.
fn odd_values(rng: &mut rand::rngs::StdRng) -> Vec<(&'static str, String)> {
    vec![
        ("i64 max", "9223372036854775807".into()),
        ("i64 min", "-9223372036854775808".into()),
        ("past u64", "184467440737095516150000".into()),
        ("1e400", "1e400".into()),
        ("-1e308", "-1e308".into()),
        ("negative", "-1".into()),
        ("fraction", "0.000000001".into()),
        ("null", "null".into()),
        ("array", "[1,[2],{}]".into()),
        ("object", "{\"a\":{}}".into()),
        ("bool", "false".into()),
        ("empty text", "\"\"".into()),
        ("NUL text", "\"a\\u0000b\"".into()),
        ("control text", "\"\\u001b[31m\\u0085\"".into()),
        ("lone surrogate", "\"\\ud800\"".into()),
        ("huge number text", format!("\"{}\"", "9".repeat(5000))),
        ("long text", serde_json::to_string(&junk_text(rng, 3000)).unwrap()),
        ("amount text", "\"99999999999999999999.99\"".into()),
    ]
}

/// The cases sent to one target.
fn cases(t: &Target, rng: &mut rand::rngs::StdRng, deep: usize) -> Vec<Req> {
    let mut v = Vec::new();
    let q = |pairs: &[(&str, &str)]| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, val) in pairs {
            s.append_pair(k, val);
        }
        s.finish()
    };
    let base = |case: &str, target: Vec<u8>| {
        let mut r = Req::new(&t.method, target, case);
        for (k, val) in &t.auth {
            r = r.header(k, val.as_bytes());
        }
        r
    };
    let plain = t.path.as_bytes().to_vec();
    let with = |suffix: &[u8]| [t.path.as_bytes(), suffix].concat();

    // ---- paths, query strings, headers: every method
    v.push(base("baseline", plain.clone()).body(t.media.as_deref(), body_of(t, None)));
    v.push(base("invalid UTF-8 in the path, raw", with(b"/\xff\xfe")).protocol());
    v.push(base("invalid UTF-8 in the path, escaped", with(b"%ff%fe%c0%80")));
    v.push(base("NUL in the path", with(b"%00")));
    v.push(base("control character in the path", with(b"%1b%7f")));
    v.push(base("raw space in the path", with(b" x")).protocol());
    v.push(base("dot segments", [b"/../../..".as_slice(), t.path.as_bytes(), b"/./../x"].concat()));
    v.push(base("long path segment", with(format!("/{}", "a".repeat(20_000)).as_bytes())));
    for name in t.query.iter().map(String::as_str).chain(["junk"]) {
        v.push(base(
            &format!("huge query value {name}"),
            with(format!("?{}", q(&[(name, &"9".repeat(30_000))])).as_bytes()),
        ));
        v.push(base(&format!("invalid UTF-8 query {name}"), with(format!("?{name}=%ff%fe&{name}=%c3").as_bytes())));
        v.push(
            base(
                &format!("raw invalid UTF-8 query {name}"),
                with(format!("?{name}=\u{0}").as_bytes()).into_iter().map(|b| if b == 0 { 0xff } else { b }).collect(),
            )
            .protocol(),
        );
        v.push(base(&format!("NUL query {name}"), with(format!("?{name}=a%00b").as_bytes())));
        v.push(base(
            &format!("odd query {name}"),
            with(format!("?{}", q(&[(name, "-9223372036854775809"), (name, "1e400"), (name, "")])).as_bytes()),
        ));
        v.push(base(
            &format!("junk query {name}"),
            with(format!("?{}", q(&[(name, &junk_text(rng, 200))])).as_bytes()),
        ));
    }
    v.push(base(
        "many query parameters",
        with(format!("?{}", (0..3000).map(|i| format!("p{i}=1")).collect::<Vec<_>>().join("&")).as_bytes()),
    ));
    v.push(base("huge header value", plain.clone()).header("x-junk", "a".repeat(60_000)));
    v.push(base("header past the parser's buffer", plain.clone()).header("x-junk", "a".repeat(600_000)).protocol());
    v.push(base("invalid UTF-8 in a header", plain.clone()).header("x-junk", b"\xff\xfe\xc0".to_vec()));
    v.push(
        base("invalid UTF-8 in the idempotency key", plain.clone())
            .header("idempotency-key", b"k\xff\xfe".to_vec())
            .body(t.media.as_deref(), body_of(t, None)),
    );
    v.push(
        base("huge idempotency key", plain.clone())
            .header("idempotency-key", "k".repeat(20_000))
            .body(t.media.as_deref(), body_of(t, None)),
    );
    v.push(base("NUL in a header", plain.clone()).header("x-junk", b"a\0b".to_vec()).protocol());
    v.push(base("control character in a header", plain.clone()).header("x-junk", b"a\x01b".to_vec()).protocol());
    v.push(base("many headers", plain.clone()).header("x-a", "1").header("x-b", "2").protocol());
    if let Some(r) = v.last_mut() {
        for i in 0..150 {
            r.headers.push((format!("x-many-{i}"), b"1".to_vec()));
        }
    }
    v.push(
        base("two content lengths", plain.clone())
            .header("content-length", "3")
            .header("content-length", "5")
            .protocol(),
    );
    v.push(base("invalid UTF-8 authorization", plain.clone()).header("authorization", b"Bearer \xff\xfe".to_vec()));
    v.push(base("huge authorization", plain.clone()).header("authorization", format!("Bearer {}", "x".repeat(50_000))));
    v.push(base("bad method token", plain.clone()).protocol());
    if let Some(r) = v.last_mut() {
        r.method = "G\x01T".into();
    }
    v.push(base("huge cookie", plain.clone()).header("cookie", format!("cc_admin={}", "z".repeat(30_000))));

    // ---- bodies: every method (a GET with a body must not confuse the server either)
    let limit = if t.media.as_deref() == Some("text/csv") {
        commcredits_server::MAX_CSV_BODY
    } else if t.route.starts_with("/admin") {
        commcredits_server::admin::MAX_FORM_BODY
    } else {
        commcredits_server::MAX_JSON_BODY
    };
    let ct = t.media.as_deref().or(Some("application/json"));
    v.push(base("body over the limit", plain.clone()).body(ct, Body::Repeat(b'[', limit + 1)));
    v.push(base("chunked body over the limit", plain.clone()).body(ct, Body::Chunked(b'7', limit + 1)));
    v.push(
        base("announced body never sent", plain.clone())
            .header("content-length", format!("{}", limit * 4))
            .header("content-type", ct.unwrap_or_default())
            .protocol(),
    );
    v.push(base("deep nesting [", plain.clone()).body(ct, Body::Bytes(vec![b'['; deep])));
    v.push(base("deep nesting {", plain.clone()).body(ct, Body::Bytes("{\"a\":".repeat(deep / 5).into_bytes())));
    v.push(
        base("invalid UTF-8 body", plain.clone()).body(ct, Body::Bytes(b"{\"name\":\"\xff\xfe\xc0\x80\"}".to_vec())),
    );
    v.push(base("NUL bytes body", plain.clone()).body(ct, Body::Bytes(b"{\"a\0\":\0}\0".to_vec())));
    v.push(
        base("raw control characters in a string", plain.clone())
            .body(ct, Body::Bytes(b"{\"name\":\"a\x01\x1b\"}".to_vec())),
    );
    v.push(
        base("random bytes body", plain.clone()).body(ct, Body::Bytes((0..4096).map(|_| rng.random::<u8>()).collect())),
    );
    for (what, text) in [
        ("null", "null"),
        ("array", "[]"),
        ("string", "\"x\""),
        ("number", "1e400"),
        ("empty object", "{}"),
        ("empty", ""),
    ] {
        v.push(base(&format!("body is {what}"), plain.clone()).body(ct, Body::Bytes(text.as_bytes().to_vec())));
    }
    for media in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin1",
        "\u{1}/\u{2}",
    ] {
        let protocol = media.starts_with('\u{1}');
        let r = base(&format!("content type {media:?}"), plain.clone()).body(Some(media), body_of(t, None));
        v.push(if protocol { r.protocol() } else { r });
    }
    v.push(base("no content type", plain.clone()).body(None, body_of(t, None)));

    // ---- fields of a JSON body: missing, duplicated, odd values
    if let Some(Value::Object(fields)) = &t.sample {
        for name in fields.keys() {
            let mut missing = fields.clone();
            missing.remove(name);
            v.push(
                base(&format!("missing {name}"), plain.clone())
                    .body(ct, Body::Bytes(Value::Object(missing).to_string().into_bytes())),
            );
            let text = Value::Object(fields.clone()).to_string();
            let dup = format!("{{\"{name}\":{},{}", json!("dup"), &text[1..]);
            v.push(base(&format!("duplicated {name}"), plain.clone()).body(ct, Body::Bytes(dup.into_bytes())));
            for (what, raw) in odd_values(rng) {
                v.push(base(&format!("{name} = {what}"), plain.clone()).body(ct, body_of(t, Some((name, &raw)))));
            }
        }
        v.push(base("unknown field", plain.clone()).body(ct, body_of(t, Some(("\u{0}unknown", "1")))));
    }
    // ---- fields of a form: missing, duplicated, odd values
    if !t.form.is_empty() {
        let enc = |pairs: &[(String, String)]| {
            let mut s = form_urlencoded::Serializer::new(String::new());
            for (k, val) in pairs {
                s.append_pair(k, val);
            }
            s.finish().into_bytes()
        };
        let form_ct = Some("application/x-www-form-urlencoded");
        for (i, (name, _)) in t.form.iter().enumerate() {
            let mut missing = t.form.clone();
            missing.remove(i);
            v.push(base(&format!("form without {name}"), plain.clone()).body(form_ct, Body::Bytes(enc(&missing))));
            let mut dup = t.form.clone();
            dup.push((name.clone(), "dup".into()));
            v.push(base(&format!("form with {name} twice"), plain.clone()).body(form_ct, Body::Bytes(enc(&dup))));
            for (what, raw) in odd_values(rng) {
                let mut odd = t.form.clone();
                odd[i].1 = raw.trim_matches('"').replace("\\u0000", "\0").replace("\\u001b", "\u{1b}");
                v.push(base(&format!("form {name} = {what}"), plain.clone()).body(form_ct, Body::Bytes(enc(&odd))));
            }
            let mut bad = enc(&t.form);
            bad.extend_from_slice(format!("&{name}=%ff%fe%00").as_bytes());
            v.push(base(&format!("form {name} invalid UTF-8"), plain.clone()).body(form_ct, Body::Bytes(bad)));
        }
        v.push(
            base("form as JSON", plain.clone()).body(Some("application/json"), Body::Bytes(b"{\"csrf\":1}".to_vec())),
        );
    }
    v
}

/// The target's body: the form or the JSON sample, with one field's raw JSON replaced.
fn body_of(t: &Target, replace: Option<(&str, &str)>) -> Body {
    if !t.form.is_empty() {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, val) in &t.form {
            s.append_pair(k, val);
        }
        return Body::Bytes(s.finish().into_bytes());
    }
    match (&t.sample, replace) {
        (Some(Value::Object(fields)), Some((name, raw))) => {
            let mut parts: Vec<String> = fields
                .iter()
                .filter(|(k, _)| k.as_str() != name)
                .map(|(k, val)| format!("{}:{val}", json!(k)))
                .collect();
            parts.push(format!("{}:{raw}", json!(name)));
            Body::Bytes(format!("{{{}}}", parts.join(",")).into_bytes())
        }
        (Some(s), _) => Body::Bytes(s.to_string().into_bytes()),
        (None, _) if t.media.as_deref() == Some("text/csv") => Body::Bytes(
            b"call_id,type,user,from,to,start_time,duration_seconds\nx,outbound,\xff,+1,+2,nope,-1\n".to_vec(),
        ),
        (None, _) => Body::None,
    }
}

// ---------------------------------------------------------------- memory

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.trim_start_matches(':').trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- the test

fn scale() -> usize {
    std::env::var("ABUSE_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_survives_abuse_and_call_control_keeps_answering() {
    let scale = scale();
    let seed: u64 = std::env::var("ABUSE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("ABUSE_SEED={seed} ABUSE_SCALE={scale}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Both ends of every connection are in this process.
    println!(
        "connections that fit under the open-file limit: {:?}",
        commcredits_server::limits::connections_that_fit()
    );

    let limits = Limits {
        header_read_timeout: HEADER_TIMEOUT,
        body_read_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(8),
        send_timeout: Duration::from_secs(3),
        ..Limits::default()
    };
    // The server's send buffer is small, as across a real network, so that an answer
    // nobody reads stalls the server's writes instead of filling kernel buffers.
    let s = common::start_with(ServerOptions { limits: limits.clone(), ..ServerOptions::default() }, 2_000, Some(4096))
        .await;

    // A second organization takes the abuse, so that nothing it is sent (a huge grant,
    // a blocked policy) can spend or block the probe's organization.
    let now = Timestamp::now();
    let one = |c: Command| s.engine.apply_one(now, c).unwrap_or_else(|e| panic!("{e}"));
    let victim = created(one(Command::CreateOrg {
        name: "Fabrikam".into(),
        currency: "USD".into(),
        country: "US".into(),
        emails: vec!["billing@example.com".into()],
    }));
    let bob = created(one(Command::CreateUser {
        org: victim.clone(),
        upn: "bob@example.com".into(),
        display_name: "Bob".into(),
        usage_location: "US".into(),
        phone_number: None,
    }));
    for sku in ["phone_system", "communications_credits"] {
        one(Command::AddSubscription { org: victim.clone(), sku: sku.into(), quantity: 5 });
        one(Command::AssignLicense { org: victim.clone(), sku: sku.into(), users: vec![bob.clone()] });
    }
    let token = s
        .engine
        .gateway()
        .tokenize_card(
            &CardInput { number: "4242424242424242".into(), exp_month: 12, exp_year: 2035, holder: "B".into() },
            now,
        )
        .unwrap();
    let card = created(one(Command::AddCard { org: victim.clone(), token, holder: None }));
    let admin =
        secret(one(Command::CreateKey { org: Some(victim.clone()), role: "admin".into(), name: "abused".into() }));
    let operator = secret(one(Command::CreateKey { org: None, role: "operator".into(), name: "abused-op".into() }));
    let call_control = s.call_control.clone();

    let ids: BTreeMap<&str, String> = [
        ("org", victim.clone()),
        ("org_id", victim.clone()),
        ("user", bob.clone()),
        ("user_id", bob.clone()),
        ("user_ids", bob.clone()),
        ("payment_method_id", card.clone()),
        ("kind", "toll_free".into()),
        ("currency", "USD".into()),
        ("call_id", "abuse-call".into()),
        ("from", US_FROM.into()),
        ("to", US_TO.into()),
    ]
    .into_iter()
    .collect();
    let (_, doc) = commcredits_server::api();
    let doc = serde_json::to_value(&doc).unwrap();
    let mut targets = api_targets(&doc, &ids, |method, route| {
        if route.starts_with("/v1/calls") {
            call_control.clone()
        } else if route.starts_with("/v1/rates") || (route == "/v1/orgs" && method == "post") {
            operator.clone()
        } else {
            admin.clone()
        }
    });
    // A deck kind and currency for the rate route that no organization here is charged in.
    for t in &mut targets {
        t.path = t.path.replace("/toll_free/USD", "/toll_free/EUR");
    }
    let api_count = targets.len();
    for route in ["/healthz", "/metrics", "/openapi.json"] {
        targets.push(Target {
            method: "GET".into(),
            route: route.into(),
            path: route.into(),
            query: Vec::new(),
            media: None,
            sample: None,
            auth: Vec::new(),
            form: Vec::new(),
        });
    }
    let cookie = admin_cookie(&s.base, &admin).await;
    let admin_found = admin_targets(&s.base, &cookie).await;
    let admin_count = admin_found.len();
    for t in &admin_found {
        println!("admin target: {} {} {:?}", t.method, t.route, t.form.iter().map(|f| &f.0).collect::<Vec<_>>());
    }
    targets.extend(admin_found);
    // Wrong methods, once per path.
    // Per route template: a path with real values, the methods it takes, its authentication.
    type Methods = (String, Vec<String>, Vec<(String, String)>);
    let mut paths: BTreeMap<String, Methods> = BTreeMap::new();
    for t in &targets {
        let e = paths.entry(t.route.clone()).or_insert((t.path.clone(), Vec::new(), t.auth.clone()));
        e.1.push(t.method.clone());
    }
    println!(
        "targets: {api_count} operations of the OpenAPI document, {admin_count} admin pages and forms, 3 others; {} paths",
        paths.len()
    );
    assert!(api_count >= 38, "the document has only {api_count} operations");
    assert!(admin_count >= 15, "only {admin_count} admin pages and forms were found");

    let mut all: Vec<(String, Req)> = Vec::new();
    for _ in 0..scale {
        for t in &targets {
            for r in cases(t, &mut rng, 100_000) {
                all.push((t.route.clone(), r));
            }
        }
    }
    for (route, (path, methods, auth)) in &paths {
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "BREW"] {
            if !methods.iter().any(|x| x == m) {
                let mut r = Req::new(m, path.as_bytes().to_vec(), format!("wrong method {m}"));
                for (k, v) in auth {
                    r = r.header(k, v.as_bytes());
                }
                all.push((route.clone(), r));
            }
        }
    }

    let rss_before = status_kib("VmRSS");
    let hwm_before = status_kib("VmHWM");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = tokio::spawn(probe_call_control(
        s.base.clone(),
        s.org.clone(),
        s.ada.clone(),
        s.call_control.clone(),
        stop.clone(),
    ));
    let started = Instant::now();

    // Slow clients run beside the junk: slow-loris headers and bodies, readers that never read.
    let slow = tokio::spawn(slow_clients(
        s.addr,
        s.call_control.clone(),
        s.export_path("csv"),
        s.key("reader"),
        40 * scale,
        tally.clone(),
    ));

    // The junk, 32 requests at a time, from client addresses 127.0.1.x.
    let total = all.len();
    let addr = s.addr;
    futures::stream::iter(all.into_iter().enumerate())
        .for_each_concurrent(32, |(i, (route, req))| {
            let tally = tally.clone();
            async move {
                let from = Ipv4Addr::new(127, 0, 1, (i % 200) as u8 + 1);
                let outcome = send(addr, from, &req).await;
                judge(&tally, &route, &req, &outcome);
            }
        })
        .await;
    let junk_took = started.elapsed();
    println!("{total} junk requests in {junk_took:?}; VmRSS now {} MiB", status_kib("VmRSS") / 1024);

    // Thousands of connections at once from many addresses, each asking something real.
    // Both ends of every connection are in this process: the flood is sized to fit the
    // open-file limit (raised to its hard maximum), and says so when it had to shrink.
    let flood_size = flood_size(2_500 * scale.min(3));
    let round = flood(addr, &targets, flood_size, tally.clone()).await;
    println!("flood: {round}");
    let rss_after_flood = status_kib("VmRSS");
    // The same again: what the first round left behind must not grow with a second.
    let round = flood(addr, &targets, flood_size, tally.clone()).await;
    println!("second flood: {round}");
    let rss_after_second = status_kib("VmRSS");

    slow.await.expect("the slow clients");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let probe = probe.await.expect("the probe");
    let rss_after = status_kib("VmRSS");
    let hwm_after = status_kib("VmHWM");
    // The server still answers as before.
    assert_eq!(s.get("/healthz", "").await.0, 200);
    let t = tally.lock().unwrap();
    println!("answers by status: {:?}", t.by_status);
    println!("slowest answer: {:?}", t.slowest);
    println!(
        "authorize while abused: {} allowed of {}, slowest {:?}, median {:?}",
        probe.allowed,
        probe.sent,
        probe.times.last().copied().unwrap_or_default(),
        probe.times.get(probe.times.len() / 2).copied().unwrap_or_default()
    );
    println!(
        "memory: VmRSS {} -> {} MiB, VmHWM {} -> {} MiB; whole run {:?}",
        rss_before / 1024,
        rss_after / 1024,
        hwm_before / 1024,
        hwm_after / 1024,
        started.elapsed()
    );
    assert!(t.failures.is_empty(), "{} failures (seed {seed}):\n{}", t.failures.len(), t.failures.join("\n"));
    assert!(
        t.by_status.get("slow reader cut off").copied().unwrap_or(0) > 0,
        "no export to a reader that stopped reading was cut off by the send timeout: {:?}",
        t.by_status
    );
    assert!(probe.sent >= 5, "the probe sent only {} authorizes", probe.sent);
    assert_eq!(probe.allowed, probe.sent, "every authorize of the funded user is allowed: {:?}", probe.errors);
    assert!(
        probe.times.last().is_some_and(|t| *t < AUTHORIZE_CEILING),
        "authorize answered within {AUTHORIZE_CEILING:?}: {:?}",
        probe.times.last()
    );
    println!(
        "memory: VmRSS after the first flood {} MiB, after the second {} MiB",
        rss_after_flood / 1024,
        rss_after_second / 1024
    );
    // Both ends of every connection are in this process: the figures hold the clients'
    // buffers too, so the bounds are generous; what they catch is growth without end.
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    assert!(growth_mib < 400, "resident memory grew by {growth_mib} MiB");
    let second_mib = rss_after_second.saturating_sub(rss_after_flood) / 1024;
    assert!(second_mib < 100, "a second flood grew resident memory by {second_mib} MiB more");
}

/// Signs in to the admin pages; the session cookie.
async fn admin_cookie(base: &str, key: &str) -> String {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = client.get(format!("{base}/admin/login")).send().await.unwrap();
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
        .collect();
    let text = r.text().await.unwrap();
    let at = text.find("name=\"csrf\" value=\"").expect("a sign-in form") + "name=\"csrf\" value=\"".len();
    let csrf = text[at..].split('"').next().unwrap().to_string();
    let r = client
        .post(format!("{base}/admin/login"))
        .header("cookie", cookies.join("; "))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            form_urlencoded::Serializer::new(String::new()).append_pair("csrf", &csrf).append_pair("key", key).finish(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "signed in");
    let session: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
        .filter(|c| c.starts_with("cc_admin="))
        .collect();
    assert!(!session.is_empty(), "a session cookie");
    session.join("; ")
}

#[derive(Default)]
struct Probe {
    sent: usize,
    allowed: usize,
    times: Vec<Duration>,
    errors: Vec<String>,
}

/// Authorizes and ends a call of the funded user every 200 ms until told to stop.
async fn probe_call_control(
    base: String,
    org: String,
    ada: String,
    key: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Probe {
    let client = reqwest::Client::builder().timeout(CEILING).build().unwrap();
    let mut p = Probe::default();
    let mut i = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        i += 1;
        let call = format!("probe-{i}");
        let body = json!({"org_id": org, "call_id": call, "type": "outbound", "user_id": ada,
                          "from": US_FROM, "to": US_TO, "requested_seconds": 300});
        let start = Instant::now();
        let r = client.post(format!("{base}/v1/calls/authorize")).bearer_auth(&key).json(&body).send().await;
        p.times.push(start.elapsed());
        p.sent += 1;
        match r {
            Ok(r) => {
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if status == 200 && v["decision"] == "allow" {
                    p.allowed += 1;
                    let _ = client
                        .post(format!("{base}/v1/calls/{call}/end"))
                        .bearer_auth(&key)
                        .json(&json!({"org_id": org, "duration_seconds": 1}))
                        .send()
                        .await;
                } else {
                    p.errors.push(format!("{status} {v}"));
                }
            }
            Err(e) => p.errors.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.times.sort();
    p
}

/// Slow-loris headers and bodies (a byte a second) and answers nobody reads. Each must
/// end by the server's limits, within the ceiling.
async fn slow_clients(
    addr: SocketAddr,
    key: String,
    export: String,
    reader: String,
    n: usize,
    tally: Arc<Mutex<Tally>>,
) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let (key, export, reader, tally) = (key.clone(), export.clone(), reader.clone(), tally.clone());
        let from = Ipv4Addr::new(127, 0, 2, (i % 250) as u8 + 1);
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = connect(addr, from, Some(4096)).await else { return };
            let route = match i % 3 {
                0 => {
                    // A header, a byte a second: closed by the header timeout.
                    let head =
                        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
                    let (mut r, mut w) = c.into_split();
                    let writer = tokio::spawn(async move {
                        for b in head {
                            if w.write_all(&[*b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    });
                    let mut sink = Vec::new();
                    let closed = tokio::time::timeout(CEILING, r.read_to_end(&mut sink)).await.is_ok();
                    writer.abort();
                    let mut t = tally.lock().unwrap();
                    *t.by_status.entry("slow header closed".into()).or_default() += usize::from(closed);
                    if !closed {
                        t.fail(format!("a slow-loris header was not closed within {CEILING:?}"));
                    }
                    return;
                }
                1 => "/v1/calls/authorize",
                _ => "export",
            };
            if route == "export" {
                // Asks for an export and reads nothing: dropped by the send timeout.
                let req = format!("GET {export} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\n\r\n");
                let _ = c.write_all(req.as_bytes()).await;
                // It reads a byte a second for a while (too slow to make room in its
                // window), then all it can: the export must have been cut off by the send
                // timeout, not sent whole, and the connection ended.
                let mut buf = [0u8; 16 * 1024];
                let mut got = Vec::new();
                for _ in 0..6 {
                    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf[..1])).await {
                        got.extend_from_slice(&buf[..n]);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let closed = tokio::time::timeout(CEILING, async {
                    loop {
                        match c.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                })
                .await
                .is_ok();
                let head = String::from_utf8_lossy(&got[..got.len().min(4096)]).into_owned();
                let refused = !head.contains(" 200 ");
                let whole = got.ends_with(b"0\r\n\r\n");
                let mut t = tally.lock().unwrap();
                // A refusal is the documented one: no export slot for the key (429) or
                // none at all (503), with its stable code.
                let documented = (head.starts_with("HTTP/1.1 429 ") && head.contains("\"rate_limited\""))
                    || (head.starts_with("HTTP/1.1 503 ") && head.contains("\"overloaded\""));
                if refused && !documented {
                    let first = head.lines().next().unwrap_or("nothing").to_string();
                    t.fail(format!("a slow reader's export was refused without a documented answer: {first}"));
                }
                let key = if refused {
                    "slow reader refused"
                } else if whole {
                    "slow reader sent whole"
                } else {
                    "slow reader cut off"
                };
                *t.by_status.entry(key.into()).or_default() += 1;
                if !closed {
                    t.fail(format!("a reader that stopped reading was not dropped within {CEILING:?}"));
                } else if whole && !refused {
                    t.fail("a reader that stopped reading for 6 s was sent the whole export".into());
                }
                return;
            }
            // A body, a byte a second: answered by the request timeout (503) or read whole.
            drop(c);
            let body = json!({"org_id": "o", "call_id": format!("slow-{i}"), "type": "outbound", "user_id": "u",
                              "from": US_FROM, "to": US_TO})
            .to_string();
            let req = Req::new("POST", route, "slow-loris body")
                .header("authorization", format!("Bearer {key}"))
                .body(Some("application/json"), Body::Trickle(body.into_bytes()));
            let outcome = send(addr, from, &req).await;
            judge(&tally, route, &req, &outcome);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// How many flood connections fit beside everything else the process holds open:
/// each takes two descriptors (client and server end), plus 300 from one address.
fn flood_size(wanted: usize) -> usize {
    let Some(fit) = commcredits_server::limits::connections_that_fit() else { return wanted };
    let room = (fit / 2).saturating_sub(300 + 500);
    assert!(room >= 500, "the open-file limit leaves room for only {room} flood connections: raise `ulimit -n`");
    if room < wanted {
        println!("flood shrunk from {wanted} to {room} connections to fit the open-file limit");
    }
    wanted.min(room)
}

/// `n` connections at once, spread over client addresses (the per-address bound is 256),
/// plus 300 from one address (past that bound); each asks a GET of a target. Returns a summary.
async fn flood(addr: SocketAddr, targets: &[Target], n: usize, tally: Arc<Mutex<Tally>>) -> String {
    let gets: Vec<Target> = targets
        .iter()
        .filter(|t| t.method == "GET" && !t.path.contains("export") && !t.path.contains("pstn-usage"))
        .cloned()
        .collect();
    let start = Instant::now();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    // Every connection is open before any sends its request.
    let all_open = Arc::new(tokio::sync::Barrier::new(n + 300));
    for i in 0..n + 300 {
        let all_open = all_open.clone();
        let t = gets[i % gets.len()].clone();
        let tally = tally.clone();
        let refused = refused.clone();
        // 200 a address, then 300 from a single one.
        let from = if i < n { Ipv4Addr::new(127, 0, 3, (i / 200) as u8 + 1) } else { Ipv4Addr::new(127, 0, 4, 1) };
        tasks.push(tokio::spawn(async move {
            let mut req = Req::new("GET", t.path.as_bytes().to_vec(), format!("flood from {from}"));
            for (k, v) in &t.auth {
                req = req.header(k, v.as_bytes());
            }
            let stream = connect(addr, from, None).await;
            let connected = Instant::now();
            all_open.wait().await;
            if connected.elapsed() + Duration::from_secs(1) >= HEADER_TIMEOUT {
                // Idle for the header timeout while the others connected: the server may
                // rightly have closed it.
                req.protocol = true;
            }
            let outcome = match stream {
                Ok(stream) => send_on(stream, &req).await,
                Err(e) => Outcome::NotConnected(e.to_string()),
            };
            if let Outcome::Answer { status: 503, .. } = outcome {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            judge(&tally, &t.route, &req, &outcome);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    format!(
        "{} connections at once ({} from one address) in {:?}, {} answered 503 overloaded",
        n + 300,
        300,
        start.elapsed(),
        refused.load(std::sync::atomic::Ordering::Relaxed)
    )
}

/// A connection refused at the bound gets its `503 overloaded`, even when its request was
/// already on the way: the refusal must not be lost to a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_reads_its_refusal() {
    let limits = Limits { max_connections_per_address: 4, ..Limits::default() };
    let s = common::start(ServerOptions { limits, ..ServerOptions::default() }, 0).await;
    let from = Ipv4Addr::new(127, 0, 5, 1);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = connect(s.addr, from, None).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut answered = 0;
    let tries = 100;
    for _ in 0..tries {
        // A request with a large header, sent at once, as any client sends it.
        let req = Req::new("GET", "/healthz", "refused").header("x-pad", "p".repeat(32 * 1024));
        if let Outcome::Answer { status: 503, content_type, body, .. } = send(s.addr, from, &req).await {
            assert_eq!(code_of(&content_type, &body).as_deref(), Some("overloaded"));
            answered += 1;
        }
    }
    println!("refused connections that read their 503: {answered} of {tries}");
    assert_eq!(answered, tries, "every refused connection reads its 503");
    drop(held);
}
