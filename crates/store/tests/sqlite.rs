//! The conformance suite on the SQLite adapter, plus what only a file database shows.

use commcredits_store::sqlite::SqliteStore;
use commcredits_store::{conformance_tests, OrgRow, Store};

fn open_fresh() -> Box<dyn Store> {
    Box::new(SqliteStore::open("sqlite::memory:").expect("open sqlite"))
}

conformance_tests!(open_fresh);

#[test]
fn committed_writes_survive_reopening_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    {
        let s = SqliteStore::open(&url).unwrap();
        s.write(&mut |tx| {
            tx.insert_org(&OrgRow {
                org_id: "o1".into(),
                name: "Durable".into(),
                currency: "EUR".into(),
                country: "DE".into(),
                notification_emails: vec![],
                low_balance_minor: None,
                suspended: false,
                created_at: "2026-01-01T00:00:00Z".parse().unwrap(),
                disabled_notices: vec![],
            })
        })
        .unwrap();
    }
    let s = SqliteStore::open(&url).unwrap();
    let mut name = None;
    s.read(&mut |tx| {
        name = tx.get_org("o1")?.map(|o| o.name);
        Ok(())
    })
    .unwrap();
    assert_eq!(name.as_deref(), Some("Durable"));
}

#[test]
fn ledger_rows_cannot_be_changed_even_with_raw_sql() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let s = SqliteStore::open(path.to_str().unwrap()).unwrap();
    s.write(&mut |tx| {
        tx.append_ledger(&commcredits_store::LedgerRow {
            seq: 0,
            org_id: "o1".into(),
            entry_id: "e".into(),
            kind: "purchase".into(),
            amount_minor: 1,
            balance_after_minor: 1,
            lot_id: None,
            call_id: None,
            order_id: None,
            at: "2026-01-01T00:00:00Z".parse().unwrap(),
            memo: String::new(),
        })
        .map(drop)
    })
    .unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    assert!(raw.execute("UPDATE ledger SET amount_minor = 2", []).is_err());
    assert!(raw.execute("DELETE FROM ledger", []).is_err());
}

/// The same suite through the write-behind wrapper that bulk CDR imports use: it must
/// answer as the database would.
mod write_behind {
    use commcredits_store::overlay::WriteBehindStore;
    use commcredits_store::sqlite::SqliteStore;
    use commcredits_store::{conformance_tests, Store};

    fn open_fresh() -> Box<dyn Store> {
        Box::new(WriteBehindStore(Box::new(SqliteStore::open("sqlite::memory:").expect("open sqlite"))))
    }

    conformance_tests!(open_fresh);
}
