//! Report scans cannot take the connections everything else needs (PostgreSQL: a pool of
//! their own), and the counts /metrics asks for on every scrape read an index.
//!
//! The PostgreSQL server is the one of `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); without one the test fails, never skips.

use commcredits_store::postgres::{test_database, PostgresStore, MAX_CONNECTIONS, MAX_REPORT_CONNECTIONS};
use commcredits_store::Store;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the test waits for something that must happen; a ceiling, not a measure.
const PATIENCE: Duration = Duration::from_secs(20);

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sixteen_slow_report_scans_leave_every_pooled_connection_free() {
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let db = test_database(&base).expect("a PostgreSQL server that lets tests create databases");
    let store = Arc::new(PostgresStore::open(db.url()).expect("open"));
    let (release, scanning) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    // As many slow exports as the main pool has connections, each holding its scan open.
    let reports: Vec<_> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let (store, release, scanning) = (store.clone(), release.clone(), scanning.clone());
            std::thread::spawn(move || {
                store.read_report(&mut |tx| {
                    tx.list_rate_decks()?;
                    scanning.fetch_add(1, Ordering::SeqCst);
                    while !release.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Ok(())
                })
            })
        })
        .collect();
    wait_until("report scans start", || scanning.load(Ordering::SeqCst) >= MAX_REPORT_CONNECTIONS);
    // The others wait for a report connection instead of taking the main pool's.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(scanning.load(Ordering::SeqCst), MAX_REPORT_CONNECTIONS);
    assert_eq!(store.open_connections().1, MAX_REPORT_CONNECTIONS);
    // Meanwhile every one of the main pool's connections can be in use at once.
    let inside = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let (store, inside) = (store.clone(), inside.clone());
            std::thread::spawn(move || {
                store.read(&mut |tx| {
                    tx.list_rate_decks()?;
                    inside.fetch_add(1, Ordering::SeqCst);
                    let deadline = Instant::now() + PATIENCE;
                    while inside.load(Ordering::SeqCst) < MAX_CONNECTIONS && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Ok(())
                })
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap().expect("a read beside the report scans");
    }
    assert_eq!(inside.load(Ordering::SeqCst), MAX_CONNECTIONS, "all main connections were free together");
    release.store(true, Ordering::SeqCst);
    for r in reports {
        r.join().unwrap().expect("every report scan runs, in turn");
    }
    drop(store);
    drop(db);
}

#[test]
fn the_pending_notice_count_reads_an_index_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.db");
    drop(commcredits_store::sqlite::SqliteStore::open(&format!("sqlite://{}", path.display())).expect("migrate"));
    let conn = rusqlite::Connection::open(&path).unwrap();
    let plan: Vec<String> = conn
        .prepare("EXPLAIN QUERY PLAN SELECT COUNT(*) FROM notices WHERE status = 'pending'")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(plan.iter().any(|step| step.contains("notices_pending")), "{plan:?}");
}
