//! Bulk CDR import runs through the write-behind transaction (`Engine::apply_bulk`):
//! it must answer and commit exactly what the plain path (`Engine::apply`) does, also
//! when rows are refused, repeated, exhaust a pool or the balance, cross the low-balance
//! level, start an auto-recharge, or meet a lot that expires — the cases where the
//! write-behind has to hand writes to the database inside a command's savepoint.

mod common;
use commcredits_core::Timestamp;
use commcredits_engine::cdr::CdrRecord;
use commcredits_engine::{Command, Engine, Outcome};
use common::*;
use serde_json::{json, Value};

/// Replaces every UUID in a text with `<id>`: two engines make different ids.
fn scrub(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let window = &b[i..(i + 36).min(b.len())];
        let is_uuid = window.len() == 36
            && window.iter().enumerate().all(|(k, c)| {
                if [8, 13, 18, 23].contains(&k) {
                    *c == b'-'
                } else {
                    c.is_ascii_hexdigit()
                }
            });
        if is_uuid {
            out.push_str("<id>");
            i += 36;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// A JSON value with ids and sequence numbers dropped and UUIDs in texts scrubbed.
fn normal(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| k == "call_id" || !(k == "id" || k == "seq" || k.ends_with("_id")))
                .map(|(k, v)| (k, normal(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(normal).collect()),
        Value::String(s) => Value::String(scrub(&s)),
        other => other,
    }
}

fn outcome(r: &commcredits_core::Result<Outcome>) -> Value {
    match r {
        Ok(Outcome::Ended(v)) => json!({"ended": serde_json::to_value(v).unwrap()}),
        Ok(Outcome::Duplicate { call_id }) => json!({"duplicate": call_id}),
        Ok(other) => json!({"other": format!("{other:?}")}),
        Err(e) => json!({"error": e.code.as_str(), "message": scrub(&e.message)}),
    }
}

/// Everything an organization's books show, ids aside.
fn state(e: &Engine, org: &str) -> Value {
    let from: Timestamp = "2020-01-01T00:00:00Z".parse().unwrap();
    let to: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
    let cdrs: Vec<Value> = e
        .cdrs(org, from, to)
        .unwrap()
        .iter()
        .map(|c| {
            json!([
                c.call_id,
                c.call_type,
                c.from_number,
                c.to_number,
                c.duration_seconds,
                c.charged_seconds,
                c.plan_minutes,
                c.charge_minor,
                c.funding,
                c.rate_name,
                c.source
            ])
        })
        .collect();
    normal(json!({
        "credits": serde_json::to_value(e.credits(org).unwrap()).unwrap(),
        "ledger": serde_json::to_value(e.ledger(org, None, 1_000).unwrap().entries).unwrap(),
        "orders": serde_json::to_value(e.orders(org).unwrap()).unwrap(),
        "notices": serde_json::to_value(e.notices(org).unwrap()).unwrap(),
        "pools": serde_json::to_value(e.pools(org, "2026-11-15T00:00:00Z".parse().unwrap()).unwrap()).unwrap(),
        "cdrs": cdrs,
        "denials": serde_json::to_value(e.denials(org).unwrap()).unwrap(),
    }))
}

/// An organization with little money, a lot about to expire, a low-balance level and
/// auto-recharge on, plus one real-time call whose id the file repeats.
fn prepared(setup_at: Timestamp, import_at: Timestamp) -> (Engine, Org) {
    let e = engine();
    let o = setup(&e, setup_at);
    // Bought twelve months before the import: it expires when the import runs.
    e.purchase(&o.id, "50.00", &o.card, None, Some("2025-11-01T12:00:00Z".parse().unwrap()), setup_at).unwrap();
    e.purchase(&o.id, "50.00", &o.card, None, None, setup_at).unwrap();
    one(
        &e,
        setup_at,
        Command::UpdateOrg {
            org: o.id.clone(),
            emails: None,
            low_balance: Some(Some("20.00".into())),
            suspended: None,
            disabled_notices: None,
        },
    );
    one(
        &e,
        setup_at,
        Command::SetAutoRecharge {
            org: o.id.clone(),
            enabled: true,
            amount: Some("50.00".into()),
            threshold: Some("10.00".into()),
            payment_method_id: Some(o.card.clone()),
        },
    );
    auth(&e, setup_at, &o.id, "live-1", "outbound", Some(&o.bob), "+442079460000", "+14155550100", None);
    end(&e, setup_at, &o.id, "live-1", 30);
    let _ = import_at;
    (e, o)
}

fn records(o: &Org) -> Vec<CdrRecord> {
    let start: Timestamp = "2026-11-02T08:00:00Z".parse().unwrap();
    let mut out = Vec::new();
    for i in 0..420u32 {
        let at = start + jiff::SignedDuration::from_secs(i64::from(i) * 60);
        let (user, to, kind) = match i % 7 {
            // Bob (GB, credits only) calls the US and UK mobiles (dear): credits.
            0 => (Some(o.bob.clone()), format!("+1415555{:04}", 100 + i), "outbound"),
            1 | 2 => (Some(o.bob.clone()), format!("+447400{:06}", 100_000 + i), "outbound"),
            // Ada (US plan + credits): the domestic pool first, then credits.
            3 | 4 => (Some(o.ada.clone()), format!("+1212555{:04}", i), "outbound"),
            // Cy (US plan only): refused once the pool is used up.
            5 => (Some(o.cy.clone()), format!("+1646555{:04}", i), "outbound"),
            _ => (Some("ada@contoso.com".into()), format!("+1312555{:04}", i), "outbound"),
        };
        let mut r = CdrRecord {
            org: o.id.clone(),
            line: u64::from(i) + 2,
            call_id: format!("cdr-{i}"),
            call_type: kind.into(),
            user,
            from: "+14155550100".into(),
            to,
            start_time: at,
            duration_seconds: 60 + (i * 37) % 3000,
        };
        match i {
            // Refused rows, each for its own reason.
            17 => r.to = "+1999".into(),
            29 => r.user = Some("nobody@contoso.com".into()),
            41 => r.start_time = "2027-01-01T00:00:00Z".parse().unwrap(),
            53 => r.call_type = "carrier_pigeon".into(),
            // The real-time call, and a row repeated in the same file.
            61 => r.call_id = "live-1".into(),
            75 => r.call_id = "cdr-74".into(),
            _ => {}
        }
        out.push(r);
    }
    out
}

/// Imports the same rows through `apply` on one engine and `apply_bulk` on the other,
/// requires the same answers row by row, and returns them.
fn import_both(
    plain: &Engine,
    bulk: &Engine,
    at: Timestamp,
    p: &[CdrRecord],
    b: &[CdrRecord],
) -> Vec<commcredits_core::Result<Outcome>> {
    let p_out = plain.apply(at, p.iter().cloned().map(Command::ImportCdr).collect()).unwrap();
    let b_out = bulk.apply_bulk(at, b.iter().cloned().map(Command::ImportCdr).collect()).unwrap();
    assert_eq!(p_out.iter().map(outcome).collect::<Vec<_>>(), b_out.iter().map(outcome).collect::<Vec<_>>());
    p_out
}

#[test]
fn bulk_import_commits_and_answers_exactly_what_the_plain_path_does() {
    let setup_at: Timestamp = "2026-11-01T09:00:00Z".parse().unwrap();
    let import_at: Timestamp = "2026-11-03T00:00:00Z".parse().unwrap();
    let (plain, po) = prepared(setup_at, import_at);
    let (bulk, bo) = prepared(setup_at, import_at);
    let (pr, br) = (records(&po), records(&bo));
    let mut answers = 0;
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    // Batches of uneven size, as a file's tail would be.
    for (p, b) in pr.chunks(97).zip(br.chunks(97)) {
        for x in &import_both(&plain, &bulk, import_at, p, b) {
            let k = outcome(x).as_object().unwrap().keys().next().unwrap().clone();
            let k = match x {
                Err(e) => format!("{k}:{}", e.code.as_str()),
                _ => k,
            };
            *kinds.entry(k).or_default() += 1;
            answers += 1;
        }
        assert_eq!(state(&plain, &po.id), state(&bulk, &bo.id));
        check(&plain, &po.id);
        check(&bulk, &bo.id);
    }
    assert_eq!(answers, 420);
    // The file met every case it was written for.
    let s = state(&bulk, &bo.id);
    let notices: Vec<&str> = s["notices"].as_array().unwrap().iter().map(|n| n["kind"].as_str().unwrap()).collect();
    for kind in ["low_balance", "pool_threshold"] {
        assert!(notices.contains(&kind), "no {kind} notice in {notices:?}");
    }
    assert!(s["ledger"].as_array().unwrap().iter().any(|l| l["kind"] == "expiry"), "no lot expired");
    assert!(s["orders"].as_array().unwrap().iter().any(|o| o["kind"] == "auto_recharge"), "{}", s["orders"]);
    for k in ["ended", "duplicate", "error:call_denied", "error:invalid_phone_number", "error:invalid_time"] {
        assert!(kinds.contains_key(k), "no {k} among {kinds:?}");
    }
}

/// The duplicate check that bulk import makes once per batch: a call id refused (a future
/// time) and then accepted, one repeated around a refusal within a batch, and the whole
/// file imported a second time (every call id now taken) answer and commit exactly as the
/// plain path does.
#[test]
fn call_ids_refused_then_charged_repeated_and_reimported_agree_with_the_plain_path() {
    let setup_at: Timestamp = "2026-11-01T09:00:00Z".parse().unwrap();
    let import_at: Timestamp = "2026-11-03T00:00:00Z".parse().unwrap();
    let (plain, po) = prepared(setup_at, import_at);
    let (bulk, bo) = prepared(setup_at, import_at);
    let tweak = |o: &Org| {
        let mut r = records(o);
        r[10].call_id = "x".into();
        r[10].start_time = "2027-01-01T00:00:00Z".parse().unwrap();
        r[11].call_id = "x".into();
        r[12].call_id = "x".into();
        r[17].call_id = "y".into();
        r[20].call_id = "y".into();
        r[30].call_id = "y".into();
        r
    };
    let (pr, br) = (tweak(&po), tweak(&bo));
    for round in 0..2 {
        for (p, b) in pr.chunks(140).zip(br.chunks(140)) {
            import_both(&plain, &bulk, import_at, p, b);
            assert_eq!(state(&plain, &po.id), state(&bulk, &bo.id), "round {round}");
        }
    }
}
