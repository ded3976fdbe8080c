//! Reports and bulk CDR import at scale, printed as figures next to the aims of issue 6
//! (a benchmark, not a timed test: whatever the result, it is printed).
//!
//!   cargo bench -p commcredits-engine --bench reports
//!   ROWS=200000 cargo bench -p commcredits-engine --bench reports
//!   BENCH_POSTGRES=postgres://postgres@127.0.0.1:5432/test ROWS=100000 cargo bench ...
//!     (the same phases on a fresh database of that PostgreSQL server, dropped after)
//!
//! The parent prepares a fresh SQLite file database (WAL, synchronous=FULL) with one
//! funded organization of 36 users, and a CDR CSV of `ROWS` calls (default 1,000,000).
//! Each measured phase then runs in its own child process (this binary, re-executed) so
//! that its peak resident memory (`VmHWM`, which only grows) is its own:
//!   import  `Engine::import_cdrs` of the CDR file (one durable commit per 1,000 rows),
//!   csv     `Engine::write_usage_csv` of every stored call to a file (BufWriter),
//!   xlsx    `Engine::write_usage_xlsx` of every stored call to a file.
//! Afterwards (not timed) the parent checks the three agree: calls charged, rows in each
//! file, and the sum of the `Charge` column against the ledger's charges.
//!
//! `PHASE_TIMEOUT_SECS` (default 600) bounds each child: one that runs longer is killed
//! and its last progress is reported.

use commcredits_core::Timestamp;
use commcredits_engine::usage::UsageFilter;
use commcredits_engine::{Command, Engine, Outcome};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The child's phase; its absence makes this process the parent.
const PHASE: &str = "COMMCREDITS_REPORTS_BENCH_PHASE";
const DB: &str = "COMMCREDITS_REPORTS_BENCH_DB";
const ORG: &str = "COMMCREDITS_REPORTS_BENCH_ORG";
const DIR: &str = "COMMCREDITS_REPORTS_BENCH_DIR";

const USERS: usize = 36;
const SETUP_AT: &str = "2026-09-30T23:00:00Z";
const FIRST_CALL_AT: &str = "2026-10-01T00:00:00Z";
/// Calls start evenly over four weeks from `FIRST_CALL_AT`.
const SPAN_SECONDS: i64 = 28 * 86_400;
const IMPORT_AT: &str = "2026-10-30T00:00:00Z";
/// The largest single purchase, in major units (`Config::max_purchase_major`).
const MAX_ORDER: f64 = 1_000_000.0;

const AIM_IMPORT: f64 = 100_000.0;
const AIM_CSV: f64 = 500_000.0;
const AIM_XLSX: f64 = 150_000.0;
const AIM_PEAK_MB: f64 = 100.0;

const CDR_FILE: &str = "cdrs.csv";
const CSV_FILE: &str = "usage.csv";
const XLSX_FILE: &str = "usage.xlsx";

fn main() {
    match std::env::var(PHASE) {
        Ok(phase) => child(&phase),
        Err(_) => parent(),
    }
}

// ---------------------------------------------------------------------------------
// Child: one measured phase, figures on stdout as `figure key=value ...`.
// ---------------------------------------------------------------------------------

/// A memory figure of this process from /proc/self/status (`VmHWM`: peak resident set;
/// `RssAnon`, `RssFile`, `RssShmem`: what is resident now), in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time this process has used so far (user + system, all threads), in seconds:
/// `/proc/self/stat` fields 14 and 15, in clock ticks of 1/100 s (Linux's USER_HZ).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    (tick(11) + tick(12)) / 100.0
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

fn child(phase: &str) {
    let dir = PathBuf::from(var(DIR));
    let org = var(ORG);
    let engine = Engine::open(&var(DB)).expect("open the database");
    // What the process holds before the phase: the engine, its catalog and rate decks.
    let base = status_kib("VmHWM");
    let cpu_start = cpu_secs();
    let start = Instant::now();
    let mut figures = match phase {
        "import" => {
            let file = File::open(dir.join(CDR_FILE)).expect("open the CDR file");
            let now: Timestamp = IMPORT_AT.parse().unwrap();
            let mut next = 100_000;
            // Progress every 100,000 rows, so that a child stopped by the timeout still
            // leaves its rate behind.
            let report = engine
                .import_cdrs(&org, file, now, &mut |done| {
                    if done >= next {
                        println!("progress rows={done} secs={:.3}", start.elapsed().as_secs_f64());
                        next += 100_000;
                    }
                })
                .expect("import");
            let secs = start.elapsed().as_secs_f64();
            for p in report.rejected.iter().take(5) {
                println!("reject line {} call {}: {} {}", p.line, p.call_id, p.code, p.message);
            }
            format!(
                "rows={} charged={} rejected={} duplicates={} charge={} secs={secs:.6}",
                report.rows,
                report.charged,
                report.rejected.len(),
                report.duplicates,
                report.charge
            )
        }
        "csv" => {
            let path = dir.join(CSV_FILE);
            let mut out = BufWriter::with_capacity(1 << 16, File::create(&path).expect("create the CSV file"));
            let n = engine.write_usage_csv(&org, &UsageFilter::default(), &mut out).expect("CSV export");
            out.flush().expect("flush the CSV file");
            drop(out);
            let secs = start.elapsed().as_secs_f64();
            format!("rows={n} secs={secs:.6} bytes={}", std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0))
        }
        "xlsx" => {
            let path = dir.join(XLSX_FILE);
            let n = engine.write_usage_xlsx(&org, &UsageFilter::default(), &path).expect(".xlsx export");
            let secs = start.elapsed().as_secs_f64();
            format!("rows={n} secs={secs:.6} bytes={}", std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0))
        }
        other => panic!("unknown phase '{other}'"),
    };
    figures.push_str(&format!(
        " cpu_secs={:.2} base_kib={base} hwm_kib={} anon_kib={} file_kib={} shmem_kib={}",
        cpu_secs() - cpu_start,
        status_kib("VmHWM"),
        status_kib("RssAnon"),
        status_kib("RssFile"),
        status_kib("RssShmem")
    ));
    println!("figure {figures}");
}

// ---------------------------------------------------------------------------------
// Parent: prepare, run the children, check, print.
// ---------------------------------------------------------------------------------

fn ids(results: Vec<commcredits_core::Result<Outcome>>) -> Vec<String> {
    results
        .into_iter()
        .map(|r| match r.expect("setup command") {
            Outcome::Created { id } => id,
            o => panic!("unexpected {o:?}"),
        })
        .collect()
}

/// One organization (USD, US) with `USERS` users in GB holding Teams Phone and
/// communications credits: every call is paid from credits.
fn organization(e: &Engine, now: Timestamp) -> String {
    let org = ids(e
        .apply(
            now,
            vec![Command::CreateOrg {
                name: "reports-bench".into(),
                currency: "USD".into(),
                country: "US".into(),
                emails: vec![],
            }],
        )
        .unwrap())
    .remove(0);
    let users = ids(e
        .apply(
            now,
            (0..USERS)
                .map(|k| Command::CreateUser {
                    org: org.clone(),
                    upn: upn(k),
                    display_name: format!("Caller {k:02}"),
                    usage_location: "GB".into(),
                    phone_number: None,
                })
                .collect(),
        )
        .unwrap());
    let mut setup: Vec<Command> = ["phone_system", "communications_credits"]
        .iter()
        .map(|sku| Command::AddSubscription { org: org.clone(), sku: (*sku).into(), quantity: USERS as i64 })
        .collect();
    setup.extend(users.iter().map(|u| Command::SetLicenses {
        org: org.clone(),
        user: u.clone(),
        skus: vec!["phone_system".into(), "communications_credits".into()],
    }));
    for r in e.apply(now, setup).unwrap() {
        r.expect("licenses");
    }
    org
}

/// Buys `orders` purchases of the largest amount.
fn fund(e: &Engine, org: &str, orders: usize, now: Timestamp) {
    let pm =
        ids(e.apply(now, vec![Command::AddAgreement { org: org.into(), agreement_number: "EA-1".into() }]).unwrap())
            .remove(0);
    let amount = format!("{MAX_ORDER:.0}");
    let placed = (0..orders)
        .map(|_| Command::PlaceOrder {
            org: org.into(),
            amount: amount.clone(),
            payment_method_id: pm.clone(),
            po_number: None,
            purchased_at: None,
        })
        .collect();
    for r in e.apply(now, placed).unwrap() {
        r.expect("order");
    }
}

fn upn(k: usize) -> String {
    format!("caller{k:02}@bench.example")
}

/// Writes `rows` CDRs; returns an upper bound of their cost in major units.
fn write_cdrs(path: &Path, rows: u64) -> f64 {
    let first: Timestamp = FIRST_CALL_AT.parse().unwrap();
    let mut out = BufWriter::with_capacity(1 << 16, File::create(path).unwrap());
    writeln!(out, "call_id,type,user,from,to,start_time,duration_seconds").unwrap();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut cost = 0.0;
    for i in 0..rows {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let r = seed;
        // 40% UK mobile (0.09/min, 1 s increments), 40% US (0.01/min, 6 s), 20% London
        // (0.02/min, 1 s): domestic and international calls of users located in GB.
        let (to, per_minute) = match i % 5 {
            0 | 1 => (format!("+4474001{:05}", r % 100_000), 0.09),
            2 | 3 => (format!("+1415555{:04}", 100 + r % 100), 0.01),
            _ => (format!("+44207946{:04}", r % 1_000), 0.02),
        };
        let duration = 1 + (r >> 20) % 600;
        cost += (duration + 60) as f64 / 60.0 * per_minute;
        let start = first + jiff::SignedDuration::from_secs(i as i64 * SPAN_SECONDS / rows as i64);
        let user = (i as usize * 7 + (r >> 40) as usize) % USERS;
        writeln!(out, "cdr-{i:08},outbound,{},+4420794{:05},{to},{start},{duration}", upn(user), 60_000 + user)
            .unwrap();
    }
    out.flush().unwrap();
    cost
}

/// What one child reported.
#[derive(Default)]
struct Run {
    figures: HashMap<String, String>,
    /// Last progress line: (rows, seconds).
    progress: Option<(f64, f64)>,
    notes: Vec<String>,
    /// Killed at the timeout, or failed.
    failed: Option<String>,
    wall: f64,
}

impl Run {
    fn num(&self, key: &str) -> Option<f64> {
        self.figures.get(key)?.parse().ok()
    }

    fn peak_mb(&self) -> Option<f64> {
        Some(self.num("hwm_kib")? * 1024.0 / 1e6)
    }
}

fn run_phase(phase: &str, dir: &Path, db: &str, org: &str, timeout: Duration) -> Run {
    let out_path = dir.join(format!("{phase}.out"));
    let out = File::create(&out_path).unwrap();
    let start = Instant::now();
    let mut child = Process::new(std::env::current_exe().unwrap())
        .env(PHASE, phase)
        .env(DB, db)
        .env(ORG, org)
        .env(DIR, dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("re-execute the bench binary");
    let mut run = Run::default();
    loop {
        match child.try_wait().expect("wait for the child") {
            Some(status) if status.success() => break,
            Some(status) => {
                run.failed = Some(format!("failed ({status})"));
                break;
            }
            None if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                run.failed = Some(format!("killed after {} s (PHASE_TIMEOUT_SECS)", timeout.as_secs()));
                break;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    run.wall = start.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    for line in text.lines() {
        let pairs = |rest: &str| -> HashMap<String, String> {
            rest.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect()
        };
        if let Some(rest) = line.strip_prefix("figure ") {
            run.figures = pairs(rest);
        } else if let Some(rest) = line.strip_prefix("progress ") {
            let p = pairs(rest);
            if let (Some(r), Some(s)) = (p.get("rows"), p.get("secs")) {
                run.progress = Some((r.parse().unwrap_or(0.0), s.parse().unwrap_or(0.0)));
            }
        } else {
            run.notes.push(line.to_string());
        }
    }
    run
}

/// Rows and the sum of the `Charge` column (minor units) of the exported CSV.
fn read_csv(path: &Path) -> (u64, i64) {
    let mut rdr = csv::Reader::from_path(path).unwrap();
    let col = rdr.headers().unwrap().iter().position(|h| h == "Charge").unwrap();
    let (mut rows, mut sum) = (0u64, 0i64);
    let mut rec = csv::StringRecord::new();
    while rdr.read_record(&mut rec).unwrap() {
        rows += 1;
        sum += (Decimal::from_str(&rec[col]).unwrap() * Decimal::from(100)).to_i64().unwrap();
    }
    (rows, sum)
}

/// Rows and the sum of the `Charge` column (cents) of the exported workbook, streamed
/// cell by cell.
fn read_xlsx(path: &Path) -> (u64, i64) {
    use calamine::{open_workbook, DataRef, Reader, Xlsx};
    let mut wb: Xlsx<_> = open_workbook(path).unwrap();
    let sheet = wb.sheet_names()[0].clone();
    let mut cells = wb.worksheet_cells_reader(&sheet).unwrap();
    let (mut rows, mut sum) = (0u64, 0i64);
    while let Some(cell) = cells.next_cell().unwrap() {
        let (row, col) = cell.get_position();
        if row > 0 && col == 17 {
            rows += 1;
            match cell.get_value() {
                DataRef::Float(v) => sum += (v * 100.0).round() as i64,
                DataRef::Int(v) => sum += v * 100,
                other => panic!("Charge at row {row} is {other:?}"),
            }
        }
    }
    (rows, sum)
}

fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn parent() {
    let rows: u64 = match std::env::var("ROWS") {
        Ok(v) => v.replace(['_', ','], "").parse().ok().filter(|n| *n > 0).expect("ROWS must be a positive number"),
        Err(_) => 1_000_000,
    };
    let timeout = Duration::from_secs(
        std::env::var("PHASE_TIMEOUT_SECS").ok().and_then(|v| v.parse().ok()).filter(|s| *s > 0).unwrap_or(600),
    );
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let db_path = dir.path().join("bench.db");
    let postgres = std::env::var("BENCH_POSTGRES").ok().map(|base| {
        commcredits_store::postgres::test_database(&base).expect("BENCH_POSTGRES: a server that allows CREATE DATABASE")
    });
    let (db, kind) = match &postgres {
        Some(pg) => (pg.url().to_string(), "PostgreSQL, a fresh database".to_string()),
        None => (format!("sqlite://{}", db_path.display()), "SQLite file, WAL, synchronous=FULL".to_string()),
    };
    println!(
        "commcredits reports benchmark: {} CDRs, 1 organization, {USERS} users ({kind}; {})",
        thousands(rows as f64),
        dir.path().display()
    );

    let t = Instant::now();
    let cost = write_cdrs(&dir.path().join(CDR_FILE), rows);
    let cdr_bytes = std::fs::metadata(dir.path().join(CDR_FILE)).unwrap().len();
    let orders = (cost / MAX_ORDER).ceil().max(1.0) as usize;
    let org = {
        let now: Timestamp = SETUP_AT.parse().unwrap();
        let e = Engine::open(&db).unwrap();
        let org = organization(&e, now);
        fund(&e, &org, orders, now);
        org
    };
    println!(
        "  prepared in {:.1} s: CDR file {:.1} MB; {orders} purchase(s) of {} USD (calls cost at most {} USD)",
        t.elapsed().as_secs_f64(),
        cdr_bytes as f64 / 1e6,
        thousands(MAX_ORDER),
        thousands(cost)
    );

    let import = run_phase("import", dir.path(), &db, &org, timeout);
    let csv = run_phase("csv", dir.path(), &db, &org, timeout);
    let xlsx = run_phase("xlsx", dir.path(), &db, &org, timeout);
    let db_bytes = std::fs::metadata(&db_path).map(|m| m.len()).unwrap_or(0);

    println!();
    println!(
        "  {:<14} {:>10} {:>9} {:>10} {:>12} {:>8} {:>9} {:>9} {:>8} {:>8}  output",
        "phase", "rows", "seconds", "rows/s", "aim rows/s", "", "peak MB", "base MB", "aim MB", ""
    );
    let mut verdicts = Vec::new();
    for (label, run, aim, unit) in [
        ("CDR import", &import, AIM_IMPORT, "durable rows/s"),
        ("CSV export", &csv, AIM_CSV, "rows/s"),
        (".xlsx export", &xlsx, AIM_XLSX, "rows/s"),
    ] {
        let output = match (label, &run.failed) {
            (_, Some(why)) => why.clone(),
            ("CDR import", None) => format!(
                "{} charged, {} rejected, {} duplicates",
                run.figures.get("charged").map(String::as_str).unwrap_or("?"),
                run.figures.get("rejected").map(String::as_str).unwrap_or("?"),
                run.figures.get("duplicates").map(String::as_str).unwrap_or("?"),
            ),
            (_, None) => format!("{:.1} MB file", run.num("bytes").unwrap_or(0.0) / 1e6),
        };
        // A durable row is a charged one: rows rejected or skipped are not counted.
        let done = if label == "CDR import" { run.num("charged") } else { run.num("rows") };
        let rate = done.zip(run.num("secs")).map(|(n, s)| n / s);
        let peak = run.peak_mb();
        let base = run.num("base_kib").map(|k| k * 1024.0 / 1e6);
        let show = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".into());
        println!(
            "  {label:<14} {:>10} {:>9} {:>10} {:>12} {:>8} {:>9} {:>9} {:>8} {:>8}  {output}",
            show(done, &thousands),
            show(run.num("secs"), &|s| format!("{s:.2}")),
            show(rate, &thousands),
            thousands(aim),
            rate.map(|r| met(r > aim)).unwrap_or("NOT met"),
            show(peak, &|p| format!("{p:.1}")),
            show(base, &|p| format!("{p:.1}")),
            format!("{AIM_PEAK_MB:.0}"),
            peak.map(|p| met(p < AIM_PEAK_MB)).unwrap_or("-"),
        );
        let speed = match (rate, run.progress) {
            (Some(r), _) => format!("{} {unit} (aim > {}): {}", thousands(r), thousands(aim), met(r > aim)),
            (None, Some((n, s))) => format!(
                "did not finish ({}); {} rows in {s:.0} s before that = {} rows/s (aim > {}): NOT met",
                run.failed.as_deref().unwrap_or("?"),
                thousands(n),
                thousands(n / s),
                thousands(aim)
            ),
            (None, None) => format!("no figure ({}): NOT met", run.failed.as_deref().unwrap_or("?")),
        };
        let memory = match peak {
            Some(p) => format!("peak {p:.1} MB (aim < {AIM_PEAK_MB:.0}): {}", met(p < AIM_PEAK_MB)),
            None => "peak memory not measured".into(),
        };
        verdicts.push(format!("{label}: {speed}; {memory}"));
        if let (Some(cpu), Some(n)) = (run.num("cpu_secs"), done) {
            // On a shared machine wall time includes waiting for a core; CPU time does not.
            verdicts.push(format!(
                "    CPU time {cpu:.2} s (user + system, all threads) = {} rows per CPU-second",
                if cpu > 0.0 { thousands(n / cpu) } else { "-".into() }
            ));
        }
        if let (Some(a), Some(f), Some(s)) = (run.num("anon_kib"), run.num("file_kib"), run.num("shmem_kib")) {
            verdicts.push(format!(
                "    resident at the end of the phase: {:.1} MB anonymous (heap), {:.1} MB file-backed, {:.1} MB shmem",
                a * 1024.0 / 1e6,
                f * 1024.0 / 1e6,
                s * 1024.0 / 1e6
            ));
        }
        for note in &run.notes {
            verdicts.push(format!("    {label} said: {note}"));
        }
    }
    println!();
    for v in verdicts {
        println!("  {v}");
    }
    println!(
        "  MB = 10^6 bytes of peak resident memory (VmHWM) of the phase's own process; base = before the phase \
         began (engine, catalog and rate decks loaded).{}",
        if postgres.is_some() {
            String::new()
        } else {
            format!(" Database after import: {:.1} MB.", db_bytes as f64 / 1e6)
        }
    );

    // Not timed: the three agree with each other and with the ledger.
    let t = Instant::now();
    let e = Engine::open(&db).unwrap();
    let books = e.check_books(&org).expect("the books balance");
    let charged = import.num("charged").unwrap_or(0.0) as u64;
    let import_charge = import.num("charge").unwrap_or(0.0) as i64;
    let mut checks = vec![format!("ledger charges {} cents, import reported {import_charge}", books.charges)];
    let mut agree = books.charges == import_charge;
    if csv.failed.is_none() {
        let (n, sum) = read_csv(&dir.path().join(CSV_FILE));
        checks.push(format!("CSV {n} rows, Charge sum {sum}"));
        agree &= n == charged && sum == books.charges;
    }
    if xlsx.failed.is_none() {
        let (n, sum) = read_xlsx(&dir.path().join(XLSX_FILE));
        checks.push(format!(".xlsx {n} rows, Charge sum {sum}"));
        agree &= n == charged && sum == books.charges;
    }
    println!(
        "  check ({:.1} s, not timed): {}; {charged} calls charged: {}",
        t.elapsed().as_secs_f64(),
        checks.join("; "),
        if agree { "all agree" } else { "MISMATCH" }
    );
}
