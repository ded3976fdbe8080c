//! The conformance suite on the PostgreSQL adapter, each test on a brand-new database,
//! plus what only PostgreSQL shows: servers migrating one database together, retries of
//! serialization failures, the organization lock, use from tokio's blocking threads.
//!
//! The server is the one of `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Without a reachable server these tests
//! fail: they never skip.

use commcredits_core::{Error, ErrorCode, Result};
use commcredits_store::postgres::{test_database, PostgresStore, TestDatabase};
use commcredits_store::{conformance_tests, AccountRow, LedgerRow, OrgRow, Store, Tx};
use std::sync::{Arc, Barrier};

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn fresh_database() -> TestDatabase {
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string());
    test_database(&base).unwrap_or_else(|e| {
        panic!(
            "these tests need a PostgreSQL server on which they may create databases: set DATABASE_URL \
             (default {DEFAULT_DATABASE_URL}) to one. {e}"
        )
    })
}

/// A store on its own database. Drop closes the pool's connections, then drops the
/// database (`TestDatabase` runs `DROP DATABASE ... WITH (FORCE)`).
struct FreshStore {
    store: Option<PostgresStore>,
    db: Option<TestDatabase>,
}

impl FreshStore {
    fn new() -> FreshStore {
        let db = fresh_database();
        let store = PostgresStore::open(db.url()).expect("open the fresh database");
        FreshStore { store: Some(store), db: Some(db) }
    }

    fn store(&self) -> &PostgresStore {
        self.store.as_ref().expect("store")
    }
}

impl Drop for FreshStore {
    fn drop(&mut self) {
        drop(self.store.take());
        drop(self.db.take());
    }
}

impl Store for FreshStore {
    fn write(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        self.store().write(f)
    }
    fn read(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        self.store().read(f)
    }
    fn describe(&self) -> String {
        self.store().describe()
    }
}

fn open_fresh() -> Box<dyn Store> {
    Box::new(FreshStore::new())
}

conformance_tests!(open_fresh);

/// The same suite through the write-behind wrapper that bulk CDR imports use.
mod write_behind {
    use commcredits_store::overlay::WriteBehindStore;
    use commcredits_store::{conformance_tests, Store};

    fn open_fresh() -> Box<dyn Store> {
        Box::new(WriteBehindStore(super::open_fresh()))
    }

    conformance_tests!(open_fresh);
}

fn org(id: &str) -> OrgRow {
    OrgRow {
        org_id: id.into(),
        name: format!("Org {id}"),
        currency: "EUR".into(),
        country: "DE".into(),
        notification_emails: vec![],
        low_balance_minor: None,
        suspended: false,
        created_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        disabled_notices: vec![],
    }
}

fn account(org_id: &str) -> AccountRow {
    AccountRow {
        org_id: org_id.into(),
        currency: "EUR".into(),
        balance_minor: 0,
        reserved_minor: 0,
        ar_enabled: false,
        ar_amount_minor: 0,
        ar_threshold_minor: 0,
        ar_payment_method_id: None,
        ar_armed: true,
        exhausted_notified: false,
        low_balance_notified: false,
    }
}

fn balance(s: &dyn Store, org_id: &str) -> i64 {
    let mut out = 0;
    s.read(&mut |tx| {
        out = tx.get_account(org_id)?.expect("account").balance_minor;
        Ok(())
    })
    .unwrap();
    out
}

fn raw_client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("raw connection")
}

#[test]
fn servers_starting_together_migrate_a_fresh_database_once() {
    let db = fresh_database();
    let start = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url().to_string();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let s = PostgresStore::open(&url)?;
                s.write(&mut |tx| tx.set_subscription("o1", "e5", 1))?;
                Ok::<_, Error>(())
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap().expect("every server opens the database");
    }
    let mut raw = raw_client(db.url());
    let row = raw.query_one("SELECT COUNT(*), MIN(version), MAX(version) FROM schema_migrations", &[]).unwrap();
    // Each version applied exactly once, from 1 to the latest.
    let (count, min, max) = (row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2));
    assert_eq!((count, min), (max, 1));
    assert!(max >= 3);
    drop(raw);
}

#[test]
fn the_store_works_from_tokio_blocking_threads() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let db = fresh_database();
        let store: Arc<dyn Store> = Arc::from(commcredits_store::open(db.url()).expect("open via the URL dispatch"));
        assert!(store.describe().starts_with("postgres://"), "{}", store.describe());
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                tokio::task::spawn_blocking(move || {
                    let id = format!("o{i}");
                    store.write(&mut |tx| {
                        tx.insert_org(&org(&id))?;
                        tx.insert_account(&account(&id))
                    })?;
                    let mut found = None;
                    store.read(&mut |tx| {
                        found = tx.get_org(&id)?;
                        Ok(())
                    })?;
                    Ok::<_, Error>(found.map(|o| o.org_id))
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap().unwrap(), Some(format!("o{i}")));
        }
        // Dropped on an async worker thread: the pool closes its clients on a plain
        // thread, and the database is dropped from one too, so nothing panics.
        drop(store);
        drop(db);
    });
}

/// Charging on one organization from several threads, each write starting with
/// `lock_org`: the writers wait in line and none has to be run again.
#[test]
fn lock_org_makes_writers_of_one_organization_queue_instead_of_aborting() {
    let s = Arc::new(FreshStore::new());
    s.write(&mut |tx| {
        tx.insert_org(&org("o1"))?;
        tx.insert_account(&account("o1"))
    })
    .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    s.write(&mut |tx| {
                        tx.lock_org("o1")?;
                        let mut a = tx.get_account("o1")?.expect("account");
                        a.balance_minor += 1;
                        tx.update_account(&a)
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    assert_eq!(balance(&*s, "o1"), 200);
    assert_eq!(s.store().write_retries(), 0, "writers that lock first never conflict");
}

/// When `lock_org` comes after other statements the snapshot already exists, so a
/// contended first attempt fails with 40001; the retry takes the lock first and wins.
#[test]
fn lock_org_after_other_statements_still_loses_no_update() {
    let s = Arc::new(FreshStore::new());
    s.write(&mut |tx| {
        tx.insert_org(&org("o1"))?;
        tx.insert_account(&account("o1"))
    })
    .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    s.write(&mut |tx| {
                        tx.get_org("o1")?;
                        tx.lock_org("o1")?;
                        let mut a = tx.get_account("o1")?.expect("account");
                        a.balance_minor += 1;
                        tx.update_account(&a)
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    assert_eq!(balance(&*s, "o1"), 100);
    // Each write conflicts at most once: its retry holds the lock before its snapshot.
    let retries = s.store().write_retries();
    assert!(retries <= 100, "{retries} retries for 100 writes");
}

/// Two writers read-modify-write one row without locking, forced to overlap: one of them
/// fails with a serialization failure, inside a savepoint whose error it swallows. The
/// store still sees the failure, runs that closure again, and no update is lost.
#[test]
fn serialization_failures_are_retried_even_when_the_closure_swallows_them() {
    let s = Arc::new(FreshStore::new());
    s.write(&mut |tx| {
        tx.insert_org(&org("o1"))?;
        tx.insert_account(&account("o1"))
    })
    .unwrap();
    let both_read = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let s = s.clone();
            let both_read = both_read.clone();
            std::thread::spawn(move || {
                let mut runs = 0;
                s.write(&mut |tx| {
                    runs += 1;
                    let mut a = tx.get_account("o1")?.expect("account");
                    if runs == 1 {
                        both_read.wait();
                    }
                    a.balance_minor += 1;
                    tx.savepoint()?;
                    match tx.update_account(&a) {
                        Ok(()) => tx.release_savepoint(),
                        Err(_) => tx.rollback_savepoint(),
                    }
                })
                .unwrap();
                runs
            })
        })
        .collect();
    let runs: Vec<u32> = threads.into_iter().map(|th| th.join().unwrap()).collect();
    assert_eq!(balance(&*s, "o1"), 2);
    assert!(runs.iter().any(|&r| r > 1), "one writer ran again: {runs:?}");
    assert!(s.store().write_retries() >= 1);
}

/// SQLite goes on after a failed statement; PostgreSQL aborts the transaction until a
/// rollback. A closure that ignores such an error must not be told its writes committed.
#[test]
fn a_transaction_aborted_by_an_ignored_error_is_reported_not_committed() {
    let s = FreshStore::new();
    s.write(&mut |tx| tx.insert_org(&org("o1"))).unwrap();
    let r = s.write(&mut |tx| {
        tx.insert_org(&org("o2"))?;
        let _ignored = tx.insert_org(&org("o1"));
        Ok(())
    });
    assert_eq!(r.unwrap_err().code, ErrorCode::StoreError);
    let mut o2 = None;
    s.read(&mut |tx| {
        o2 = tx.get_org("o2")?;
        Ok(())
    })
    .unwrap();
    assert_eq!(o2, None);
}

#[test]
fn nested_savepoints_undo_only_the_inner_command() {
    let s = FreshStore::new();
    s.write(&mut |tx| {
        tx.savepoint()?;
        tx.insert_org(&org("a"))?;
        tx.savepoint()?;
        tx.insert_org(&org("b"))?;
        assert!(tx.insert_org(&org("b")).is_err(), "duplicate key");
        tx.rollback_savepoint()?;
        tx.release_savepoint()?;
        tx.insert_org(&org("c"))
    })
    .unwrap();
    let mut ids = Vec::new();
    s.read(&mut |tx| {
        ids = tx.list_orgs()?.into_iter().map(|o| o.org_id).collect();
        Ok(())
    })
    .unwrap();
    assert_eq!(ids, vec!["a".to_string(), "c".to_string()]);
}

#[test]
fn reads_may_call_lock_org_but_not_write() {
    let s = FreshStore::new();
    s.write(&mut |tx| {
        tx.insert_org(&org("o1"))?;
        tx.insert_account(&account("o1"))
    })
    .unwrap();
    s.read(&mut |tx| {
        tx.lock_org("o1")?;
        tx.get_account("o1").map(drop)
    })
    .expect("lock_org is a no-op on a snapshot, as on SQLite");
    let r = s.read(&mut |tx| tx.set_subscription("o1", "e5", 1));
    assert!(r.unwrap_err().message.contains("read-only"));
}

#[test]
fn ledger_rows_cannot_be_changed_even_with_raw_sql() {
    let s = FreshStore::new();
    s.write(&mut |tx| {
        for amount in [5, 7] {
            tx.append_ledger(&LedgerRow {
                seq: 0,
                org_id: "o1".into(),
                entry_id: format!("e{amount}"),
                kind: "purchase".into(),
                amount_minor: amount,
                balance_after_minor: amount,
                lot_id: None,
                call_id: None,
                order_id: None,
                at: "2026-01-01T00:00:00Z".parse().unwrap(),
                memo: String::new(),
            })?;
        }
        Ok(())
    })
    .unwrap();
    let mut raw = raw_client(s.db.as_ref().unwrap().url());
    let order: Vec<String> =
        raw.query("SELECT entry_id FROM ledger ORDER BY seq", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(order, ["e5", "e7"], "entries are numbered in the order they were appended");
    let err = raw.execute("UPDATE ledger SET amount_minor = 2", &[]).unwrap_err();
    let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert_eq!(message, "ledger is append-only");
    assert!(raw.execute("DELETE FROM ledger", &[]).is_err());
    assert!(raw.batch_execute("TRUNCATE ledger").is_err());
    let n: i64 = raw.query_one("SELECT COUNT(*) FROM ledger", &[]).unwrap().get(0);
    assert_eq!(n, 2);
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let err = test_database("postgres://postgres:hunter2@127.0.0.1:1/test").err().expect("no server on port 1");
    assert!(err.message.contains("127.0.0.1:1"), "{}", err.message);
    assert!(!err.message.contains("hunter2"), "{}", err.message);
    let err = PostgresStore::open("postgres://postgres:hunter2@127.0.0.1:1/test").err().expect("no server");
    assert_eq!(err.code, ErrorCode::StoreError);
    assert!(!err.message.contains("hunter2"), "{}", err.message);
}
