//! Charging throughput and rate lookup, printed as figures (no pass/fail target).
//!
//!   cargo bench -p commcredits-engine --bench charging
//!
//! Durable call cycles: each cycle is an authorize and an end, each committed with
//! `synchronous=FULL` on a file database (an acknowledged change survives power loss).
//! "unbatched" commits every command; "batched" commits a batch of commands together
//! through the same write path (group commit).

use commcredits_core::catalog::{DeckKind, Rate, RateDeck};
use commcredits_core::money::Currency;
use commcredits_core::Timestamp;
use commcredits_engine::calls::AuthorizeRequest;
use commcredits_engine::{Command, Engine, Outcome};
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::Instant;

struct Tenant {
    org: String,
    user: String,
}

fn ids(results: Vec<commcredits_core::Result<Outcome>>) -> Vec<String> {
    results
        .into_iter()
        .map(|r| match r.expect("setup command") {
            Outcome::Created { id } => id,
            o => panic!("unexpected {o:?}"),
        })
        .collect()
}

fn tenants(e: &Engine, n: usize, now: Timestamp) -> Vec<Tenant> {
    let orgs = ids(e
        .apply(
            now,
            (0..n)
                .map(|i| Command::CreateOrg {
                    name: format!("bench-{i}"),
                    currency: "USD".into(),
                    country: "US".into(),
                    emails: vec![],
                })
                .collect(),
        )
        .unwrap());
    let users = ids(e
        .apply(
            now,
            orgs.iter()
                .map(|o| Command::CreateUser {
                    org: o.clone(),
                    upn: "caller@bench.example".into(),
                    display_name: "Caller".into(),
                    usage_location: "GB".into(),
                    phone_number: None,
                })
                .collect(),
        )
        .unwrap());
    let mut setup = Vec::new();
    for (o, u) in orgs.iter().zip(&users) {
        for sku in ["phone_system", "communications_credits"] {
            setup.push(Command::AddSubscription { org: o.clone(), sku: sku.into(), quantity: 1 });
        }
        setup.push(Command::SetLicenses {
            org: o.clone(),
            user: u.clone(),
            skus: vec!["phone_system".into(), "communications_credits".into()],
        });
    }
    for chunk in setup.chunks(5_000) {
        e.apply(now, chunk.to_vec()).unwrap().into_iter().for_each(|r| {
            r.unwrap();
        });
    }
    let pms = ids(e
        .apply(
            now,
            orgs.iter().map(|o| Command::AddAgreement { org: o.clone(), agreement_number: "EA-1".into() }).collect(),
        )
        .unwrap());
    let orders: Vec<Command> = orgs
        .iter()
        .zip(&pms)
        .map(|(o, pm)| Command::PlaceOrder {
            org: o.clone(),
            amount: "1000000".into(),
            payment_method_id: pm.clone(),
            po_number: None,
            purchased_at: None,
        })
        .collect();
    for chunk in orders.chunks(5_000) {
        e.apply(now, chunk.to_vec()).unwrap();
    }
    orgs.into_iter().zip(users).map(|(org, user)| Tenant { org, user }).collect()
}

fn authorize(t: &Tenant, call_id: String) -> Command {
    Command::Authorize(AuthorizeRequest {
        org: t.org.clone(),
        call_id,
        call_type: "outbound".into(),
        user: Some(t.user.clone()),
        from: "+442079460000".into(),
        to: "+14155550100".into(),
        requested_seconds: Some(300),
    })
}

/// Runs `cycles` authorize+end cycles over `tenants`, `batch` commands per commit.
fn cycles(e: &Engine, tenants: &[Tenant], cycles: usize, batch: usize, tag: &str, now: Timestamp) -> f64 {
    let start = Instant::now();
    let mut i = 0;
    while i < cycles {
        let n = batch.min(cycles - i);
        let auth: Vec<Command> =
            (i..i + n).map(|k| authorize(&tenants[k % tenants.len()], format!("{tag}-{k}"))).collect();
        let ends: Vec<Command> = (i..i + n)
            .map(|k| Command::End {
                org: tenants[k % tenants.len()].org.clone(),
                call_id: format!("{tag}-{k}"),
                duration_seconds: 95,
            })
            .collect();
        if batch == 1 {
            for c in auth.into_iter().chain(ends) {
                e.apply_one(now, c).unwrap();
            }
        } else {
            for r in e.apply(now, auth).unwrap().into_iter().chain(e.apply(now, ends).unwrap()) {
                r.unwrap();
            }
        }
        i += n;
    }
    cycles as f64 / start.elapsed().as_secs_f64()
}

fn synthetic_deck(n: usize) -> RateDeck {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut seen = std::collections::HashSet::new();
    let mut entries = Vec::with_capacity(n);
    while entries.len() < n {
        let len = 3 + (next() % 7) as usize;
        let prefix: String = (0..len)
            .map(|k| char::from(b'0' + if k == 0 { 1 + (next() % 9) as u8 } else { (next() % 10) as u8 }))
            .collect();
        if seen.insert(prefix.clone()) {
            entries.push(Rate {
                prefix,
                name: "x".into(),
                connection_fee_minor: 0,
                per_minute: Decimal::new(123, 4),
                increment_seconds: 60,
                premium: false,
            });
        }
    }
    RateDeck::new(DeckKind::Outbound, Currency::parse("USD").unwrap(), entries).unwrap()
}

/// Runs the call-cycle scenarios on one engine and prints them; returns the
/// unbatched one-organization rate.
fn call_cycles(e: &Engine, label: &str, scale: usize) -> f64 {
    let now: Timestamp = "2026-11-02T09:00:00Z".parse().unwrap();
    println!("{label}");
    let one = tenants(e, 1, now);
    let many = tenants(e, 1_000, now);
    let runs: [(&str, &[Tenant], usize, usize); 4] = [
        ("1 busy organization, unbatched", &one, 1_000 / scale, 1),
        ("1 busy organization, batches of 256", &one, 20_000 / scale, 256),
        ("1,000 organizations, unbatched", &many, 1_000 / scale, 1),
        ("1,000 organizations, batches of 256", &many, 20_000 / scale, 256),
    ];
    let mut first = 0.0;
    for (k, (label, ts, n, batch)) in runs.iter().enumerate() {
        let rate = cycles(e, ts, *n, *batch, &format!("r{k}"), now);
        if k == 0 {
            first = rate;
        }
        println!(
            "  {label:<40} {rate:>10.0} call cycles/s  ({n} cycles, authorize + end, {} commits)",
            if *batch == 1 { 2 * n } else { 2 * n.div_ceil(*batch) }
        );
    }
    for t in one.iter().chain(many.iter().take(3)) {
        e.check_books(&t.org).unwrap();
    }
    first
}

/// pgbench's TPC-B-like transactions per second with `clients` clients for 10 s, on a
/// fresh database of the same server.
fn pgbench(base: &str, clients: u32) -> Option<f64> {
    let db = commcredits_store::postgres::test_database(base).ok()?;
    let url = db.url().to_string();
    let init = std::process::Command::new("pgbench").args(["-i", "-q", "-s", "1", &url]).output().ok()?;
    if !init.status.success() {
        return None;
    }
    let c = clients.to_string();
    let out = std::process::Command::new("pgbench")
        .args(["-b", "tpcb-like", "-T", "10", "-c", &c, "-j", &c, "-n", &url])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find(|l| l.starts_with("tps = ")).and_then(|l| l[6..].split_whitespace().next()?.parse().ok())
}

fn main() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = commcredits_store::sqlite::SqliteStore::open(&url).unwrap();
    let e = Engine::new(Arc::new(store)).unwrap();
    call_cycles(
        &e,
        &format!("commcredits charging benchmark (SQLite file, WAL, synchronous=FULL; {})", dir.path().display()),
        1,
    );

    // The same on PostgreSQL, and pgbench against the same server for scale.
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match commcredits_store::postgres::test_database(&base) {
        Err(err) => println!("PostgreSQL skipped in this benchmark run: cannot reach {base}: {err}"),
        Ok(db) => {
            let store = commcredits_store::postgres::PostgresStore::open(db.url()).unwrap();
            let e = Engine::new(Arc::new(store)).unwrap();
            let ours = call_cycles(&e, "PostgreSQL (SERIALIZABLE, synchronous_commit as configured)", 2);
            let commits = 2.0 * ours;
            match (pgbench(&base, 1), pgbench(&base, 8)) {
                (Some(one), Some(eight)) => {
                    println!("  pgbench -b tpcb-like, 1 client             {one:>10.0} tps");
                    println!("  pgbench -b tpcb-like, 8 clients            {eight:>10.0} tps");
                    println!(
                        "  ratio: unbatched commits/s {commits:.0} (2 per cycle) / pgbench 1-client tps = {:.2}",
                        commits / one
                    );
                }
                _ => println!("  pgbench did not run (is it installed?)"),
            }
        }
    }

    let deck = synthetic_deck(250_000);
    let numbers: Vec<String> =
        (0..1_000_000u64).map(|i| format!("{}", 10_000_000_000u64 + (i * 7_919_993) % 89_999_999_999)).collect();
    let start = Instant::now();
    let mut hits = 0usize;
    for n in &numbers {
        if deck.lookup(n).is_some() {
            hits += 1;
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / numbers.len() as f64;
    println!(
        "  rate lookup, 250,000-prefix deck        {ns:>10.0} ns/lookup  ({} lookups, {hits} matched)",
        numbers.len()
    );
}
