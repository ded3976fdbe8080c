//! Bad input never breaks more than its own command: on PostgreSQL (which refuses NUL in
//! text), a command whose value the database refuses fails alone, and the good commands
//! of the same batch are applied.

mod common;

use commcredits_core::ErrorCode;
use commcredits_engine::calls::AuthorizeRequest;
use commcredits_engine::{Command, Engine, Outcome};
use commcredits_store::postgres::{test_database, PostgresStore};
use common::*;
use std::sync::Arc;

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn authorize(org: &str, call_id: &str, user: &str) -> Command {
    Command::Authorize(AuthorizeRequest {
        org: org.into(),
        call_id: call_id.into(),
        call_type: "outbound".into(),
        user: Some(user.into()),
        from: "+442079460000".into(),
        to: "+14155550100".into(),
        requested_seconds: Some(60),
    })
}

#[test]
fn on_postgres_a_value_the_database_refuses_fails_only_its_own_command() {
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string());
    let db = test_database(&base).expect("a PostgreSQL server on which tests may create databases (DATABASE_URL)");
    let store = PostgresStore::open(db.url()).unwrap();
    let e = Engine::new(Arc::new(store)).unwrap();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    e.purchase(&o.id, "50.00", &o.card, None, None, now).unwrap();
    let results = e
        .apply(
            now,
            vec![
                authorize(&o.id, "good-1", &o.bob),
                authorize(&o.id, "bad\0id", &o.bob),
                authorize(&o.id, "good-2", &o.bob),
            ],
        )
        .expect("the batch is applied even though one command carries a NUL");
    assert!(matches!(&results[0], Ok(Outcome::Authorized(v)) if v.granted_seconds > 0), "{:?}", results[0]);
    let bad = results[1].as_ref().expect_err("PostgreSQL cannot store a NUL");
    assert_eq!(bad.code, ErrorCode::InvalidInput, "{bad}");
    assert!(matches!(&results[2], Ok(Outcome::Authorized(v)) if v.granted_seconds > 0), "{:?}", results[2]);
    // The good calls were really committed: ending them charges them.
    end(&e, now, &o.id, "good-1", 30);
    end(&e, now, &o.id, "good-2", 30);
    drop(e);
    drop(db);
}

/// A file of bad rows lists only the first rejects (by line) and counts them all, and the
/// caller that wants every reject gets each one, in line order, as its batch is done.
#[test]
fn an_import_of_many_bad_rows_lists_the_first_and_counts_them_all() {
    use commcredits_engine::cdr::MAX_REPORTED_REJECTS;
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    e.purchase(&o.id, "50.00", &o.card, None, None, now).unwrap();
    let mut csv = String::from("call_id,type,user,from,to,start_time,duration_seconds\n");
    let bad_rows = 5_000;
    for n in 0..bad_rows {
        if n % 2 == 0 {
            csv.push_str("x\n");
        } else {
            csv.push_str(&format!("b{n},outbound,{},+442079460000,+1,2026-11-01T10:00:00Z,60\n", o.bob));
        }
    }
    csv.push_str(&format!("good,outbound,{},+442079460000,+14155550100,2026-11-01T10:00:00Z,60\n", o.bob));
    let mut seen = Vec::new();
    let report = e
        .import_cdrs_with_rejects(&o.id, csv.as_bytes(), now, &mut |_| {}, &mut |p| {
            seen.push(p.line);
            Ok(())
        })
        .unwrap();
    assert_eq!(report.rows, bad_rows + 1);
    assert_eq!(report.charged, 1);
    assert_eq!(report.rejected_total, bad_rows);
    assert_eq!(report.rejected.len(), MAX_REPORTED_REJECTS);
    let lines: Vec<u64> = report.rejected.iter().map(|p| p.line).collect();
    assert_eq!(lines, (2..2 + MAX_REPORTED_REJECTS as u64).collect::<Vec<_>>());
    assert_eq!(report.rejected_by_code.get("invalid_cdr"), Some(&(bad_rows / 2)));
    assert_eq!(report.rejected_by_code.get("invalid_phone_number"), Some(&(bad_rows / 2)));
    assert_eq!(seen, (2..2 + bad_rows as u64).collect::<Vec<_>>(), "every reject once, in line order");
}

/// A field no id, number or type comes near, or one with a control character, is
/// refused on its row (and not echoed), before anything reaches the store.
#[test]
fn an_import_refuses_overlong_fields_and_control_characters_per_row() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    e.purchase(&o.id, "50.00", &o.card, None, None, now).unwrap();
    let long = "9".repeat(200_000);
    let csv = format!(
        "call_id,type,user,from,to,start_time,duration_seconds\n\
         long,outbound,{bob},+442079460000,+{long},2026-11-01T10:00:00Z,60\n\
         \"nul\0id\",outbound,{bob},+442079460000,+14155550100,2026-11-01T10:00:00Z,60\n\
         good,outbound,{bob},+442079460000,+14155550100,2026-11-01T10:00:00Z,60\n",
        bob = o.bob
    );
    let report = e.import_cdrs(&o.id, csv.as_bytes(), now, &mut |_| {}).unwrap();
    assert_eq!(report.charged, 1, "{report:?}");
    assert_eq!(report.rejected_total, 2);
    for p in &report.rejected {
        assert_eq!(p.code, "invalid_cdr", "{p:?}");
        assert!(p.message.len() < 400, "the message does not echo the field: {} bytes", p.message.len());
    }
}
