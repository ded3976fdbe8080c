//! Crash harness through the real binary: `commcredits serve` under concurrent call
//! control, purchases and a CDR upload, killed with SIGKILL at a random moment and
//! restarted on the same database. Every acknowledged (2xx) authorize, update, end, purchase
//! and upload is kept in memory and checked against the stored state after the restart: nothing
//! acknowledged is lost or changed, no call or purchase is booked twice, one
//! recharge per threshold crossing, open reservations settle once, and the books
//! balance.
//!
//! All random choices come from one seed, printed at start; `CRASH_SEED=<n>` replays
//! it. `CRASH_CYCLES` sets the number of kill-and-restart cycles (default 2). The long
//! run: `CRASH_CYCLES=50 cargo test -p commcredits --release --test crash -- --nocapture`.
//! PostgreSQL tests use `DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/test),
//! make their own database and fail, never skip, when it cannot be reached.

mod common;

use commcredits_engine::Engine;
use common::{base_url, cli, request, start_server_with, Server};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const THREADS: usize = 16;
/// Seconds each call asks for: short, so reservations whose `end` was lost expire soon.
const CALL_SECONDS: u64 = 8;
const SERVE_ARGS: [&str; 4] = ["--jobs-every", "1", "--reservation-grace", "1"];

fn seed() -> u64 {
    match std::env::var("CRASH_SEED") {
        Ok(s) => s.parse().expect("CRASH_SEED is a number"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    }
}

fn cycles() -> usize {
    std::env::var("CRASH_CYCLES").ok().map(|s| s.parse().expect("CRASH_CYCLES is a number")).unwrap_or(2)
}

/// What the clients were told, by call id, order and upload.
#[derive(Default)]
struct Acks {
    /// Call id → the charge its acknowledged `end` answered (None: authorized only).
    calls: HashMap<String, Option<i64>>,
    /// Call id → the used seconds of its acknowledged `update`: the call is charged for
    /// at least that long, whether its `end` came or the timeout settled it.
    updates: HashMap<String, u32>,
    authorizes: usize,
    ends: usize,
    /// Idempotency key → (order id, body sent).
    purchases: HashMap<String, (String, Value)>,
    imports: usize,
    /// The acknowledged upload of this cycle: rows it charged and their total charge.
    upload: Option<(u64, i64)>,
}

struct Setup {
    org: String,
    pm: String,
    cc_key: String,
    admin_key: String,
}

fn setup(db: &str) -> Setup {
    let org = cli(db, &["org", "create", "--name", "Crash", "--currency", "USD", "--country", "GB"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    for sku in ["phone_system", "communications_credits"] {
        cli(db, &["subscription", "add", "--org", &org, "--sku", sku, "--quantity", "4"]);
    }
    for u in 0..4 {
        let upn = format!("u{u}@crash.example");
        cli(db, &["user", "create", "--org", &org, "--upn", &upn, "--name", &format!("User {u}"), "--location", "US"]);
        cli(
            db,
            &[
                "license",
                "set",
                "--org",
                &org,
                "--user",
                &upn,
                "--sku",
                "phone_system",
                "--sku",
                "communications_credits",
            ],
        );
    }
    let pm = cli(db, &["payment-method", "add", "--org", &org, "--ea", "EA-1"])["id"].as_str().unwrap().to_string();
    cli(db, &["funds", "add", "--org", &org, "--amount", "100", "--payment-method", &pm]);
    // Recharges of 50.00 below 99.50: the first half dollar of calls crosses it.
    cli(
        db,
        &[
            "auto-recharge",
            "set",
            "--org",
            &org,
            "--enabled",
            "true",
            "--amount",
            "50",
            "--threshold",
            "99.50",
            "--payment-method",
            &pm,
        ],
    );
    let cc_key = cli(db, &["keys", "create", "--role", "call_control"])["secret"].as_str().unwrap().to_string();
    let admin_key =
        cli(db, &["keys", "create", "--org", &org, "--role", "admin"])["secret"].as_str().unwrap().to_string();
    Setup { org, pm, cc_key, admin_key }
}

/// Sends to the first live server, starting at `first`; `None` when none answered.
fn send(
    addrs: &[String],
    alive: &[AtomicBool],
    first: usize,
    path: &str,
    key: &str,
    idem: Option<&str>,
    ct: &str,
    body: &str,
) -> Option<(u16, Value)> {
    for k in 0..addrs.len() {
        let i = (first + k) % addrs.len();
        if !alive[i].load(Ordering::SeqCst) {
            continue;
        }
        if let Ok(answer) = request(&addrs[i], path, key, idem, ct, body) {
            return Some(answer);
        }
    }
    None
}

fn calls_body(s: &Setup, call_id: &str, user: usize, seconds: u64) -> String {
    // Users located in the US calling a UK mobile (0.09 a minute, per second): international, paid from credits.
    json!({"org_id": s.org, "call_id": call_id, "type": "outbound", "user_id": format!("u{user}@crash.example"),
           "from": "+442079460000", "to": "+447400123456", "requested_seconds": seconds})
    .to_string()
}

fn cdr_csv(cycle: usize, rows: usize) -> String {
    let start = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let mut csv = String::from("call_id,type,user,from,to,start_time,duration_seconds\n");
    for r in 0..rows {
        csv.push_str(&format!(
            "imp-{cycle}-{r},outbound,u{}@crash.example,+442079460000,+33142685300,{start},{}\n",
            r % 4,
            30 + r % 90
        ));
    }
    csv
}

#[derive(Default)]
struct Summary {
    cycles: usize,
    lost: usize,
    double_charges: usize,
    identity_failures: usize,
}

/// One run: `servers` processes on `db`, `cycles` kill-and-restart rounds, each
/// killing `kill(rng)` of them.
fn run(name: &str, db: &str, servers: usize) {
    let seed = seed();
    let cycles = cycles();
    eprintln!("[{name}] CRASH_SEED={seed} CRASH_CYCLES={cycles}");
    let mut rng = StdRng::seed_from_u64(seed);
    let s = Arc::new(setup(db));
    let engine = Engine::open(db).unwrap();
    let mut acks = Acks::default();
    let mut summary = Summary::default();
    let mut procs: Vec<Server> = (0..servers).map(|_| start_server_with(db, &SERVE_ARGS)).collect();
    for cycle in 0..cycles {
        let addrs: Arc<Vec<String>> = Arc::new(procs.iter().map(|p| p.addr.clone()).collect());
        let alive: Arc<Vec<AtomicBool>> = Arc::new((0..servers).map(|_| AtomicBool::new(true)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let shared: Arc<Mutex<Acks>> = Arc::default();
        let progress = Arc::new(AtomicUsize::new(0));
        // Each thread has its own generator, drawn from the run's.
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let thread_seed: u64 = rng.random();
                let (s, addrs, alive, stop, shared, progress) =
                    (s.clone(), addrs.clone(), alive.clone(), stop.clone(), shared.clone(), progress.clone());
                std::thread::spawn(move || {
                    let mut rng = StdRng::seed_from_u64(thread_seed);
                    let json = "application/json";
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let first = rng.random_range(0..addrs.len());
                        // Thread 0 uploads CDRs once per cycle; threads 1 and 2 buy now and then.
                        if t == 0 && i == 1 {
                            let csv = cdr_csv(cycle, 400);
                            let key = format!("import-{cycle}");
                            let path = format!("/v1/orgs/{}/cdrs", s.org);
                            if let Some((200, v)) =
                                send(&addrs, &alive, first, &path, &s.cc_key, Some(&key), "text/csv", &csv)
                            {
                                let mut a = shared.lock().unwrap();
                                a.imports += 1;
                                a.upload = v["charged"].as_u64().zip(v["charge"].as_i64());
                            }
                            continue;
                        }
                        // Purchases from the second cycle on: the first one's calls cross the threshold.
                        if (t == 1 || t == 2) && cycle > 0 && rng.random_range(0..20) == 0 {
                            let key = format!("buy-{cycle}-{t}-{i}");
                            let body = json!({"amount": 5000, "payment_method_id": s.pm});
                            let path = format!("/v1/orgs/{}/credits/funds", s.org);
                            if let Some((201, v)) =
                                send(&addrs, &alive, first, &path, &s.admin_key, Some(&key), json, &body.to_string())
                            {
                                let id = v["id"].as_str().unwrap().to_string();
                                shared.lock().unwrap().purchases.insert(key, (id, body));
                            }
                            continue;
                        }
                        let id = format!("c{cycle}-t{t}-{i}");
                        let body = calls_body(&s, &id, rng.random_range(0..4), CALL_SECONDS);
                        let Some((200, v)) =
                            send(&addrs, &alive, first, "/v1/calls/authorize", &s.cc_key, None, json, &body)
                        else {
                            continue;
                        };
                        if v["decision"] != "allow" {
                            continue;
                        }
                        {
                            let mut a = shared.lock().unwrap();
                            a.calls.insert(id.clone(), None);
                            a.authorizes += 1;
                        }
                        let used = rng.random_range(1..=CALL_SECONDS);
                        let update = json!({"org_id": s.org, "used_seconds": used, "requested_seconds": CALL_SECONDS});
                        if let Some((200, u)) = send(
                            &addrs,
                            &alive,
                            first + 1,
                            &format!("/v1/calls/{id}/update"),
                            &s.cc_key,
                            None,
                            json,
                            &update.to_string(),
                        ) {
                            // The usage the server recorded (within the call's grant).
                            let recorded = u["used_seconds"].as_u64().unwrap() as u32;
                            shared.lock().unwrap().updates.insert(id.clone(), recorded);
                        }
                        let end =
                            json!({"org_id": s.org, "duration_seconds": rng.random_range(used..=CALL_SECONDS + 2)});
                        if let Some((200, e)) = send(
                            &addrs,
                            &alive,
                            first + 2,
                            &format!("/v1/calls/{id}/end"),
                            &s.cc_key,
                            None,
                            json,
                            &end.to_string(),
                        ) {
                            let mut a = shared.lock().unwrap();
                            a.calls.insert(id, Some(e["charge"].as_i64().unwrap()));
                            a.ends += 1;
                            progress.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        // Kill at a random moment: after some acknowledged ends, plus a random delay.
        // The first cycle runs until its calls (1 or 2 cents each) have crossed the threshold.
        let wait_for = if cycle == 0 { rng.random_range(80..120) } else { rng.random_range(5..60) };
        let start = Instant::now();
        while progress.load(Ordering::SeqCst) < wait_for && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1500)));
        let victims: Vec<usize> = if servers == 1 {
            vec![0]
        } else {
            let n = rng.random_range(1..=2);
            let mut all: Vec<usize> = (0..servers).collect();
            for k in 0..n {
                let j = rng.random_range(k..servers);
                all.swap(k, j);
            }
            all[..n].to_vec()
        };
        for &v in &victims {
            alive[v].store(false, Ordering::SeqCst);
            procs[v].kill();
        }
        if servers > 1 {
            // The survivors carry the traffic for a while.
            let before = progress.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
            // On loaded machines the first answers after a kill may take a while.
            let deadline = Instant::now() + Duration::from_secs(20);
            while progress.load(Ordering::SeqCst) <= before {
                assert!(Instant::now() < deadline, "[{name}] the surviving servers must keep serving");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        stop.store(true, Ordering::SeqCst);
        for th in threads {
            th.join().unwrap();
        }
        for &v in &victims {
            procs[v] = start_server_with(db, &SERVE_ARGS);
        }
        let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
        let cycle_acks = std::mem::take(&mut *shared.lock().unwrap());

        // After the restart: re-send `end` for some calls. An acknowledged end answers
        // its first charge; a lost one is settled now (or, for the rest, by the timeout).
        let mut calls: Vec<(String, Option<i64>)> = cycle_acks.calls.into_iter().collect();
        calls.sort();
        for (id, charge) in calls.iter_mut() {
            if !rng.random_bool(0.5) {
                continue;
            }
            let end = json!({"org_id": s.org, "duration_seconds": CALL_SECONDS}).to_string();
            let addr = &addrs[rng.random_range(0..addrs.len())];
            let (status, v) = request(addr, &format!("/v1/calls/{id}/end"), &s.cc_key, None, "application/json", &end)
                .unwrap_or_else(|e| panic!("[{name}] end of {id} after restart: {e}"));
            match charge {
                Some(c) if (status, v["charge"].as_i64()) != (200, Some(*c)) => {
                    eprintln!("[{name}] LOST: {id} acknowledged charge {c}, repeated end answers {status} {v}");
                    summary.lost += 1;
                }
                Some(_) => {}
                // The reservation may have timed out meanwhile: then the CDR says what it cost.
                None if status == 200 => *charge = v["charge"].as_i64(),
                None => {}
            }
        }
        // A purchase's repeated request answers the same order.
        for (key, (order, body)) in &cycle_acks.purchases {
            let path = format!("/v1/orgs/{}/credits/funds", s.org);
            let (status, v) = request(&addrs[0], &path, &s.admin_key, Some(key), "application/json", &body.to_string())
                .unwrap_or_else(|e| panic!("[{name}] purchase retry: {e}"));
            if status != 201 || v["id"].as_str() != Some(order) {
                eprintln!("[{name}] LOST: purchase {key} was order {order}, its retry answers {status} {v}");
                summary.lost += 1;
            }
        }
        // An acknowledged upload survived whole: its rows' CDRs are there, at the
        // acknowledged total, before anything is sent again.
        if let Some((charged, charge)) = cycle_acks.upload {
            let prefix = format!("imp-{cycle}-");
            let cdrs = engine
                .cdrs(&s.org, "2000-01-01T00:00:00Z".parse().unwrap(), "2100-01-01T00:00:00Z".parse().unwrap())
                .unwrap();
            let rows: Vec<_> = cdrs.iter().filter(|c| c.call_id.starts_with(&prefix)).collect();
            let total: i64 = rows.iter().map(|c| c.charge_minor).sum();
            if (rows.len() as u64, total) != (charged, charge) {
                eprintln!(
                    "[{name}] LOST: upload {cycle} acknowledged {charged} rows charged {charge}, the store has {} rows charged {total}",
                    rows.len()
                );
                summary.lost += 1;
            }
        }
        // The upload sent again without a key: each row is charged at most once.
        let (status, v) =
            request(&addrs[0], &format!("/v1/orgs/{}/cdrs", s.org), &s.cc_key, None, "text/csv", &cdr_csv(cycle, 400))
                .unwrap_or_else(|e| panic!("[{name}] upload after restart: {e}"));
        assert_eq!(status, 200, "[{name}] {v}");

        // Open reservations settle by the timeout job: every authorized call gets its CDR.
        let deadline = Instant::now() + Duration::from_secs(60);
        let all = |e: &Engine| {
            e.cdrs(&s.org, "2000-01-01T00:00:00Z".parse().unwrap(), "2100-01-01T00:00:00Z".parse().unwrap())
        };
        loop {
            let c = engine.credits(&s.org).unwrap();
            if c.available < 0 {
                summary.identity_failures += 1;
                eprintln!("[{name}] negative available balance: {c:?}");
            }
            let settled: std::collections::HashSet<String> =
                all(&engine).unwrap().into_iter().map(|c| c.call_id).collect();
            if c.reserved == 0 && calls.iter().all(|(id, _)| settled.contains(id)) {
                break;
            }
            assert!(Instant::now() < deadline, "[{name}] open reservations were never settled: {c:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        // No pending orders left (the jobs charge what a crash left pending).
        let deadline = Instant::now() + Duration::from_secs(60);
        while engine.orders(&s.org).unwrap().iter().any(|o| o.status == "pending") {
            assert!(Instant::now() < deadline, "[{name}] orders left pending");
            std::thread::sleep(Duration::from_millis(200));
        }

        acks.authorizes += cycle_acks.authorizes;
        acks.ends += cycle_acks.ends;
        acks.imports += cycle_acks.imports;
        acks.purchases.extend(cycle_acks.purchases);
        acks.updates.extend(cycle_acks.updates);
        acks.calls.extend(calls);
        summary.cycles += 1;
        check(name, &engine, &s, &acks, cycles_done_ids(cycle), &mut summary);
    }
    for mut p in procs {
        p.kill();
    }
    let total_cdrs = engine
        .cdrs(&s.org, "2000-01-01T00:00:00Z".parse().unwrap(), "2100-01-01T00:00:00Z".parse().unwrap())
        .unwrap()
        .len();
    let recharges = engine.orders(&s.org).unwrap().iter().filter(|o| o.kind == "auto_recharge").count();
    eprintln!(
        "[{name}] SUMMARY seed={seed} servers={servers} cycles={} acknowledged: ends={} authorizes={} updates={} purchases={} imports={} | cdrs={total_cdrs} recharges={recharges} | lost={} double_charges={} identity_failures={}",
        summary.cycles,
        acks.ends,
        acks.authorizes,
        acks.updates.len(),
        acks.purchases.len(),
        acks.imports,
        summary.lost,
        summary.double_charges,
        summary.identity_failures
    );
    assert_eq!(
        (summary.lost, summary.double_charges, summary.identity_failures),
        (0, 0, 0),
        "[{name}] lost, double charges, identity failures (replay with CRASH_SEED={seed})"
    );
    assert!(acks.ends > 0 && acks.authorizes > 0, "[{name}] the traffic must be acknowledged");
}

/// Ids of the imported rows of every cycle up to `cycle`.
fn cycles_done_ids(cycle: usize) -> Vec<String> {
    (0..=cycle).flat_map(|c| (0..400).map(move |r| format!("imp-{c}-{r}"))).collect()
}

fn check(name: &str, engine: &Engine, s: &Setup, acks: &Acks, imported: Vec<String>, summary: &mut Summary) {
    let cdrs =
        engine.cdrs(&s.org, "2000-01-01T00:00:00Z".parse().unwrap(), "2100-01-01T00:00:00Z".parse().unwrap()).unwrap();
    let mut cdr_count: HashMap<&str, (usize, i64)> = HashMap::new();
    let mut duration: HashMap<&str, i64> = HashMap::new();
    for c in &cdrs {
        let e = cdr_count.entry(c.call_id.as_str()).or_default();
        e.0 += 1;
        e.1 = c.charge_minor;
        duration.insert(c.call_id.as_str(), c.duration_seconds);
    }
    // An acknowledged update's usage is never forgotten: the call lasted at least that.
    for (id, used) in &acks.updates {
        if let Some(&d) = duration.get(id.as_str()) {
            if d < i64::from(*used) {
                eprintln!("[{name}] LOST: call {id} acknowledged {used} s used, its CDR says {d} s");
                summary.lost += 1;
            }
        }
    }
    // Every acknowledged authorize has exactly one CDR; an acknowledged end its charge.
    for (id, charge) in &acks.calls {
        match (cdr_count.get(id.as_str()), charge) {
            (None, _) => {
                eprintln!("[{name}] LOST: authorized call {id} has no CDR");
                summary.lost += 1;
            }
            (Some((n, _)), _) if *n > 1 => {
                eprintln!("[{name}] DOUBLE: call {id} has {n} CDRs");
                summary.double_charges += 1;
            }
            (Some((_, got)), Some(c)) if got != c => {
                eprintln!("[{name}] LOST: call {id} acknowledged charge {c}, CDR says {got}");
                summary.lost += 1;
            }
            _ => {}
        }
    }
    for id in &imported {
        if cdr_count.get(id.as_str()).map(|x| x.0) != Some(1) {
            eprintln!("[{name}] imported row {id}: {:?} CDRs", cdr_count.get(id.as_str()));
            summary.lost += 1;
        }
    }
    // The ledger: one charge entry per call, one purchase entry per order.
    let mut ledger = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = engine.ledger(&s.org, cursor.as_deref(), 500).unwrap();
        ledger.extend(page.entries);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut charges_by_call: HashMap<&str, (usize, i64)> = HashMap::new();
    let mut purchases_by_order: HashMap<&str, usize> = HashMap::new();
    for e in &ledger {
        match (e.kind.as_str(), &e.call_id, &e.order_id) {
            ("charge", Some(call), _) => {
                let x = charges_by_call.entry(call.as_str()).or_default();
                x.0 += 1;
                x.1 += e.amount.abs();
            }
            ("purchase", _, Some(order)) => *purchases_by_order.entry(order.as_str()).or_default() += 1,
            _ => {}
        }
    }
    for (call, (n, _)) in &charges_by_call {
        if *n > 1 {
            eprintln!("[{name}] DOUBLE: call {call} has {n} charge entries in the ledger");
            summary.double_charges += 1;
        }
    }
    for (id, charge) in &acks.calls {
        match (charge, charges_by_call.get(id.as_str())) {
            (Some(c), Some((_, booked))) if booked != c => {
                eprintln!("[{name}] call {id}: acknowledged {c}, ledger charged {booked}");
                summary.double_charges += 1;
            }
            (Some(c), None) if *c > 0 => {
                eprintln!("[{name}] LOST: call {id}: acknowledged charge {c}, no charge in the ledger");
                summary.lost += 1;
            }
            _ => {}
        }
    }
    let orders = engine.orders(&s.org).unwrap();
    for (key, (order, _)) in &acks.purchases {
        let n = orders.iter().filter(|o| &o.id == order).count();
        let booked = purchases_by_order.get(order.as_str()).copied().unwrap_or(0);
        if n != 1 || booked != 1 {
            eprintln!("[{name}] purchase {key} (order {order}): {n} orders, {booked} ledger entries");
            summary.lost += 1;
        }
    }
    for (order, n) in &purchases_by_order {
        if *n > 1 {
            eprintln!("[{name}] DOUBLE: order {order} booked {n} times");
            summary.double_charges += 1;
        }
    }
    // One recharge per crossing: none placed while the previous one was pending.
    let mut recharges: Vec<_> = orders.iter().filter(|o| o.kind == "auto_recharge").collect();
    recharges.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    if recharges.is_empty() {
        eprintln!("[{name}] the threshold was never crossed");
        summary.identity_failures += 1;
    }
    for w in recharges.windows(2) {
        // A recharge placed while an earlier one never completed is one too many.
        if w[0].completed_at.as_ref().is_none_or(|done| &w[1].created_at < done) {
            eprintln!("[{name}] DOUBLE: two recharges for one crossing: {w:?}");
            summary.double_charges += 1;
        }
    }
    // The accounting identity and its cross-checks.
    match engine.check_books(&s.org) {
        Ok(b) => {
            if b.purchases + b.adjustments != b.balance + b.charges + b.expired || b.available < 0 {
                eprintln!("[{name}] identity: {b:?}");
                summary.identity_failures += 1;
            }
            if cdrs.iter().map(|c| c.charge_minor).sum::<i64>() != b.charges {
                eprintln!("[{name}] CDR charges differ from the ledger's: {b:?}");
                summary.identity_failures += 1;
            }
        }
        Err(e) => {
            eprintln!("[{name}] check_books: {e}");
            summary.identity_failures += 1;
        }
    }
}

#[test]
fn sqlite_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = std::env::var("CRASH_DEBUG_DB")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("crash.db").display()));
    run("sqlite", &db, 1);
}

fn postgres() -> commcredits_store::postgres::TestDatabase {
    commcredits_store::postgres::test_database(&base_url())
        .unwrap_or_else(|e| panic!("PostgreSQL is needed (set DATABASE_URL, default {}): {e}", base_url()))
}

#[test]
fn postgres_survives_sigkill() {
    let database = postgres();
    run("postgres", database.url(), 1);
}

#[test]
fn postgres_three_servers_survive_kills() {
    let database = postgres();
    run("postgres-3", database.url(), 3);
}
