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
