//! Load benchmark of the HTTP API: call-control cycles over loopback, printed as
//! figures (no pass/fail target).
//!
//!   cargo bench -p commcredits-server --bench load
//!
//! The real server runs in-process on 127.0.0.1 over a fresh SQLite file database
//! (WAL, durable commits, as in production). One busy organization with one funded
//! user places calls; a cycle is `POST /v1/calls/authorize` then
//! `POST /v1/calls/{call_id}/end` with the call_control key.
//!
//! Open-loop runs start cycles on a fixed timetable, independent of the responses, and
//! measure an authorize from the moment it was due: time spent queueing behind a slow
//! server counts (no coordinated omission). An end is measured from when it was sent,
//! right after its authorize answered. The closed-loop run keeps 64 workers busy for
//! the most the server will do. Latencies include every answered request. Open-loop
//! runs also show authorize timed from when it was sent: the gap to the figure from
//! when it was due is the generator's own lag (tokio timers tick per millisecond).

use commcredits_core::Timestamp;
use commcredits_engine::{Command, Engine, Outcome};
use commcredits_server::App;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Seconds each measured run offers load for.
const RUN_SECONDS: u64 = 5;
/// Offered rates of the open-loop runs, cycles per second.
const OPEN_RATES: [u64; 3] = [200, 500, 1_000];
/// Workers of the closed-loop run.
const CLOSED_WORKERS: usize = 64;
/// Most cycles one closed-loop worker runs (the time limit normally ends it first).
const MAX_CYCLES_PER_WORKER: usize = 100_000;
/// Open loop: cycles in flight beyond this are not started and count as errors.
const MAX_IN_FLIGHT: usize = 4_096;
/// Longest any one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a run waits for its cycles after the last was due; the rest are aborted.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

const FROM: &str = "+442079460000";
const TO: &str = "+14155550100";

struct Tenant {
    org: String,
    user: String,
    key: String,
}

fn created(r: commcredits_core::Result<Outcome>) -> String {
    match r.expect("setup command") {
        Outcome::Created { id } => id,
        o => panic!("unexpected {o:?}"),
    }
}

/// One organization with one licensed GB user, 1,000,000 USD of credits, and a
/// platform call_control key.
fn tenant(e: &Engine, now: Timestamp) -> Tenant {
    let org = created(e.apply_one(
        now,
        Command::CreateOrg { name: "load-bench".into(), currency: "USD".into(), country: "US".into(), emails: vec![] },
    ));
    let user = created(e.apply_one(
        now,
        Command::CreateUser {
            org: org.clone(),
            upn: "caller@bench.example".into(),
            display_name: "Caller".into(),
            usage_location: "GB".into(),
            phone_number: None,
        },
    ));
    for sku in ["phone_system", "communications_credits"] {
        e.apply_one(now, Command::AddSubscription { org: org.clone(), sku: sku.into(), quantity: 1 }).unwrap();
    }
    e.apply_one(
        now,
        Command::SetLicenses {
            org: org.clone(),
            user: user.clone(),
            skus: vec!["phone_system".into(), "communications_credits".into()],
        },
    )
    .unwrap();
    let pm = created(e.apply_one(now, Command::AddAgreement { org: org.clone(), agreement_number: "EA-1".into() }));
    e.apply_one(
        now,
        Command::PlaceOrder {
            org: org.clone(),
            amount: "1000000".into(),
            payment_method_id: pm,
            po_number: None,
            purchased_at: None,
        },
    )
    .unwrap();
    let key = match e
        .apply_one(now, Command::CreateKey { org: None, role: "call_control".into(), name: "load bench".into() })
    {
        Ok(Outcome::Key(k)) => k.secret,
        o => panic!("unexpected {o:?}"),
    };
    Tenant { org, user, key }
}

/// What the load generator needs; shared by every cycle.
struct Ctx {
    client: reqwest::Client,
    base: String,
    tenant: Tenant,
}

/// One cycle's measurements.
#[derive(Default)]
struct Sample {
    /// From when the cycle was due (includes any wait to be sent).
    authorize: Option<Duration>,
    /// From when the authorize was sent.
    authorize_sent: Option<Duration>,
    end: Option<Duration>,
    error: Option<String>,
}

fn transport(what: &str, e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else {
        "transport error"
    };
    format!("{what}: {kind}")
}

/// Sends one JSON POST; returns the status and the body (Null when unreadable).
async fn post(ctx: &Ctx, path: &str, body: &Value) -> Result<(u16, Value), reqwest::Error> {
    let r = ctx.client.post(format!("{}{path}", ctx.base)).bearer_auth(&ctx.tenant.key).json(body).send().await?;
    let status = r.status().as_u16();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

fn problem(what: &str, status: u16, body: &Value) -> String {
    format!("{what}: HTTP {status} {}", body["code"].as_str().unwrap_or("(no code)"))
}

/// Authorize then end one call; the authorize is timed from `due`.
async fn cycle(ctx: &Ctx, call_id: String, due: Instant) -> Sample {
    let mut s = Sample::default();
    let t = &ctx.tenant;
    let body = json!({
        "org_id": t.org, "call_id": call_id, "type": "outbound", "user_id": t.user,
        "from": FROM, "to": TO, "requested_seconds": 300,
    });
    let sent = Instant::now();
    let (status, v) = match post(ctx, "/v1/calls/authorize", &body).await {
        Ok(r) => r,
        Err(e) => {
            s.error = Some(transport("authorize", &e));
            return s;
        }
    };
    s.authorize = Some(due.elapsed());
    s.authorize_sent = Some(sent.elapsed());
    if status != 200 {
        s.error = Some(problem("authorize", status, &v));
        return s;
    }
    if v["decision"] != "allow" {
        s.error = Some(format!("authorize denied: {}", v["reason"].as_str().unwrap_or("(no reason)")));
        return s;
    }
    let sent = Instant::now();
    let body = json!({"org_id": t.org, "duration_seconds": 95});
    match post(ctx, &format!("/v1/calls/{call_id}/end"), &body).await {
        Ok((200, _)) => s.end = Some(sent.elapsed()),
        Ok((status, v)) => {
            s.end = Some(sent.elapsed());
            s.error = Some(problem("end", status, &v));
        }
        Err(e) => s.error = Some(transport("end", &e)),
    }
    s
}

struct Report {
    label: String,
    offered: Option<u64>,
    elapsed: Duration,
    samples: Vec<Sample>,
    /// Errors not tied to a sample: (what, how many).
    lost: Vec<(&'static str, usize)>,
}

/// Waits for every task until `deadline`, then aborts the rest.
async fn drain<T: 'static>(mut set: JoinSet<Vec<T>>, deadline: tokio::time::Instant) -> (Vec<T>, usize, usize) {
    let (mut out, mut panicked) = (Vec::new(), 0);
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(v))) => out.extend(v),
            Ok(Some(Err(_))) => panicked += 1,
            Ok(None) => return (out, 0, panicked),
            Err(_) => {
                let left = set.len();
                set.abort_all();
                return (out, left, panicked);
            }
        }
    }
}

/// Starts `rate` cycles a second for `seconds` on a fixed timetable.
async fn open_loop(ctx: &Arc<Ctx>, tag: &str, rate: u64, seconds: u64) -> Report {
    let n = rate * seconds;
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    let mut shed = 0;
    let start = tokio::time::Instant::now();
    for i in 0..n {
        let due = start + period * u32::try_from(i).expect("cycle count fits u32");
        tokio::time::sleep_until(due).await;
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            shed += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (ctx, in_flight, id) = (ctx.clone(), in_flight.clone(), format!("{tag}-{i}"));
        set.spawn(async move {
            let s = cycle(&ctx, id, due.into_std()).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            vec![s]
        });
    }
    let (samples, timed_out, panicked) = drain(set, tokio::time::Instant::now() + DRAIN_TIMEOUT).await;
    Report {
        label: format!("open loop, {rate} cycles/s for {seconds} s"),
        offered: Some(rate),
        elapsed: start.elapsed(),
        samples,
        lost: vec![
            ("not started: too many in flight", shed),
            ("aborted: not done in time", timed_out),
            ("task panicked", panicked),
        ],
    }
}

/// `workers` callers, each starting its next cycle when the last one ends.
async fn closed_loop(ctx: &Arc<Ctx>, tag: &str, workers: usize, seconds: u64) -> Report {
    let start = Instant::now();
    let stop = start + Duration::from_secs(seconds);
    let mut set = JoinSet::new();
    for w in 0..workers {
        let (ctx, tag) = (ctx.clone(), tag.to_string());
        set.spawn(async move {
            let mut out = Vec::new();
            for k in 0..MAX_CYCLES_PER_WORKER {
                let now = Instant::now();
                if now >= stop {
                    break;
                }
                out.push(cycle(&ctx, format!("{tag}-{w}-{k}"), now).await);
            }
            out
        });
    }
    let deadline = tokio::time::Instant::from_std(stop) + DRAIN_TIMEOUT;
    let (samples, timed_out, panicked) = drain(set, deadline).await;
    Report {
        label: format!("closed loop, {workers} workers for {seconds} s"),
        offered: None,
        elapsed: start.elapsed(),
        samples,
        lost: vec![("workers aborted: not done in time", timed_out), ("workers panicked", panicked)],
    }
}

/// p50, p99 and max in milliseconds (nearest rank).
fn percentiles(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort_unstable();
    let at = |p: f64| {
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1].as_secs_f64() * 1e3
    };
    format!("p50 {:>7.2}  p99 {:>7.2}  max {:>7.2} ms  (n={})", at(50.0), at(99.0), at(100.0), v.len())
}

fn print(r: Report) {
    let ok = r.samples.iter().filter(|s| s.error.is_none()).count();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for s in &r.samples {
        if let Some(e) = &s.error {
            *errors.entry(e.clone()).or_default() += 1;
        }
    }
    for (what, n) in &r.lost {
        if *n > 0 {
            *errors.entry(what.to_string()).or_default() += n;
        }
    }
    let total_errors: usize = errors.values().sum();
    let offered = r.offered.map_or_else(|| "max".to_string(), |o| format!("{o}/s"));
    println!("{}", r.label);
    println!(
        "  offered {offered:>6}  achieved {:>7.1} cycles/s  ({ok} cycles ok in {:.2} s, {total_errors} errors)",
        ok as f64 / r.elapsed.as_secs_f64(),
        r.elapsed.as_secs_f64()
    );
    let authorize: Vec<Duration> = r.samples.iter().filter_map(|s| s.authorize).collect();
    let end: Vec<Duration> = r.samples.iter().filter_map(|s| s.end).collect();
    let authorize_sent: Vec<Duration> = r.samples.iter().filter_map(|s| s.authorize_sent).collect();
    println!("  authorize  {}", percentiles(authorize));
    if r.offered.is_some() {
        println!("   from send {}", percentiles(authorize_sent));
    }
    println!("  end        {}", percentiles(end));
    for (e, n) in errors {
        println!("  error: {n} x {e}");
    }
}

fn main() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("load.db").display());
    let store = commcredits_store::sqlite::SqliteStore::open(&url).expect("open the database");
    let engine = Arc::new(Engine::new(Arc::new(store)).expect("engine"));
    let tenant = tenant(&engine, Timestamp::now());
    let org = tenant.org.clone();

    let server_rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("server").build().expect("server runtime");
    let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = App::new(engine.clone());
    let server = server_rt.spawn(async move {
        let service = commcredits_server::router(app).into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, service)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });

    println!(
        "commcredits HTTP load benchmark (SQLite file, WAL, durable commits; {}; server on http://{addr}, {} CPUs)",
        dir.path().display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("  1 organization, 1 user; cycle = authorize outbound {FROM} -> {TO} (300 s) + end after 95 s");

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("client")
        .build()
        .expect("client runtime");
    client_rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(1_024)
            .build()
            .expect("HTTP client");
        let ctx = Arc::new(Ctx { client, base: format!("http://{addr}"), tenant });
        let warm = closed_loop(&ctx, "warm", 8, 1).await;
        let warm_errors = warm.samples.iter().filter(|s| s.error.is_some()).count();
        println!("warm-up: {} cycles, {warm_errors} errors (not reported below)", warm.samples.len());
        for (k, rate) in OPEN_RATES.into_iter().enumerate() {
            print(open_loop(&ctx, &format!("open{k}"), rate, RUN_SECONDS).await);
        }
        print(closed_loop(&ctx, "closed", CLOSED_WORKERS, RUN_SECONDS).await);
    });
    drop(client_rt);

    // Stop serving; the writer drains its queue when the app is dropped.
    let _ = stop_tx.send(());
    match server_rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), server).await }) {
        Ok(Ok(Ok(()))) => {}
        other => println!("server did not stop cleanly: {other:?}"),
    }
    drop(server_rt);

    let books = engine.check_books(&org).expect("the books balance");
    println!("check_books: ok {books:?}");
}
