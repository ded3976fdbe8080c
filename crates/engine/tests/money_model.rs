//! What the customer pays, checked against a small reference model rather than only
//! against the accounting identity.
//!
//! The model is independent of the engine's code: it rates a call's final charged
//! duration itself (plan minutes first in whole minutes, credits for the rest, the
//! connection fee plus billable minutes times the rate rounded half-up once per call,
//! never more than was granted), and it keeps its own lots and earmarks (money is
//! earmarked first-expiring first on live lots; expiry writes off only unearmarked
//! money; an earmark on a lot that expired pays for its own call; money a call still
//! holds is never written off while the call is open; a shrinking reservation gives
//! back its latest-expiring live money first). Random interleavings of authorize,
//! update, end, timeouts and offline CDR imports, with lots expiring under calls, spend limits changing,
//! licenses removed and a minute pool running out in the middle of calls, are applied
//! to the engine and to the model, and after every step both must agree to the cent.

mod common;
use commcredits_core::Timestamp;
use commcredits_engine::admin::UserChanges;
use commcredits_engine::{Command, Engine, Outcome};
use commcredits_store::{LotRow, ReservationRow};
use common::model::*;
use common::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const GRACE_SECONDS: i64 = 30;

// ---------------------------------------------------------------------------------
// The interleavings.

#[derive(Clone, Debug)]
enum Op {
    Authorize {
        call: u8,
        user: u8,
        dest: u8,
        secs: u32,
    },
    Update {
        call: u8,
        used: u32,
        more: u32,
    },
    End {
        call: u8,
        secs: u32,
    },
    /// A CDR from the switch, charged offline at once.
    Import {
        user: u8,
        dest: u8,
        secs: u32,
    },
    /// A lot bought so that it expires `expires_in` seconds from now.
    Purchase {
        expires_in: u32,
    },
    Advance {
        secs: u32,
    },
    SpendLimit {
        user: u8,
        limit: Option<&'static str>,
    },
    License {
        user: u8,
        sku: u8,
        assign: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..6, 0u8..3, 0u8..4, 1u32..900).prop_map(|(call, user, dest, secs)| Op::Authorize { call, user, dest, secs }),
        4 => (0u8..6, 0u32..1200, 0u32..600).prop_map(|(call, used, more)| Op::Update { call, used, more }),
        3 => (0u8..6, 0u32..1500).prop_map(|(call, secs)| Op::End { call, secs }),
        1 => (0u8..3, 0u8..4, 0u32..1500).prop_map(|(user, dest, secs)| Op::Import { user, dest, secs }),
        2 => (1u32..1500).prop_map(|expires_in| Op::Purchase { expires_in }),
        2 => (1u32..1000).prop_map(|secs| Op::Advance { secs }),
        1 => (0u8..2, prop::option::of(prop::sample::select(vec!["0.01", "0.02", "0.10", "0.50", "5.00"])))
            .prop_map(|(user, limit)| Op::SpendLimit { user, limit }),
        1 => (0u8..3, 0u8..2, any::<bool>()).prop_map(|(user, sku, assign)| Op::License { user, sku, assign }),
    ]
}

/// US domestic (plan for Ada and Cy), a UK mobile (per-second), Germany (whole
/// minutes), a US premium number (a connection fee, never on the plan).
const DESTS: [&str; 4] = ["+12125550123", "+447400123456", "+4930123456", "+19005550123"];
const SKUS: [&str; 2] = ["communications_credits", "calling_plan_domestic"];

fn reservation(e: &Engine, org: &str, call_id: &str) -> ReservationRow {
    e.read(|tx| tx.get_reservation(org, call_id)).unwrap().unwrap()
}

fn lots(e: &Engine, org: &str) -> Vec<LotRow> {
    e.read(|tx| tx.list_lots(org)).unwrap()
}

fn ledger_total(e: &Engine, org: &str, kind: &str) -> i64 {
    -e.read(|tx| tx.ledger_totals(org)).unwrap().into_iter().find(|(k, _)| k == kind).map(|(_, a)| a).unwrap_or(0)
}

/// Checks the engine's lots, write-offs and charges against the model's.
fn compare(e: &Engine, org: &str, m: &Model, step: &str) {
    e.check_books(org).unwrap_or_else(|err| panic!("{step}: {err}"));
    for l in lots(e, org) {
        let ml = m.lots.get(&l.lot_id).unwrap_or_else(|| panic!("{step}: lot {} unknown to the model", l.lot_id));
        assert_eq!(
            (l.remaining_minor, l.reserved_minor),
            (ml.remaining, ml.reserved),
            "{step}: lot {} (remaining, reserved) differs from the model",
            l.lot_id
        );
        // A lot spent to nothing before its expiry has nothing to write off, and the
        // engine never loads it again to mark it: only a lot holding money must agree.
        if l.remaining_minor > 0 {
            assert_eq!(l.expired, ml.expired, "{step}: lot {} expired or not, unlike the model", l.lot_id);
        }
    }
    assert_eq!(ledger_total(e, org, "expiry"), m.written_off, "{step}: money written off differs from the model");
    assert_eq!(ledger_total(e, org, "charge"), m.charged, "{step}: money charged differs from the model");
}

fn run(ops: Vec<Op>) {
    let e = engine();
    let mut now: Timestamp = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    // Leave the US domestic pool (two plan holders, 6,000 minutes) 3 minutes, so calls
    // run it out and continue on credits in the middle.
    for (i, minutes) in [1440u32, 1440, 1440, 1440, 237].into_iter().enumerate() {
        let id = format!("fill{i}");
        auth(&e, now, &o.id, &id, "outbound", Some(&o.cy), "+14155550100", "+12125550199", Some(minutes * 60));
        end(&e, now, &o.id, &id, minutes * 60);
    }
    let mut m = Model::default();
    let users = [o.ada.clone(), o.bob.clone(), o.cy.clone()];
    let mut generation: BTreeMap<u8, u32> = BTreeMap::new();
    let mut purchases = 0;
    let mut imports = 0u64;
    let buy = |e: &Engine, m: &mut Model, now: Timestamp, expires_in: u32| {
        let expires_at = now + jiff::SignedDuration::from_secs(i64::from(expires_in));
        let purchased_at = expires_at
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .checked_sub(jiff::Span::new().months(12))
            .unwrap()
            .timestamp();
        e.purchase(&o.id, "50", &o.card, None, Some(purchased_at), now).unwrap();
        let new = lots(e, &o.id).into_iter().find(|l| !m.lots.contains_key(&l.lot_id)).unwrap();
        assert_eq!((new.amount_minor, new.expires_at), (5000, expires_at));
        m.lots.insert(new.lot_id, ModelLot { purchased_at, expires_at, remaining: 5000, reserved: 0, expired: false });
    };
    // One lot that outlives every run, one that expires during it.
    buy(&e, &mut m, now, 3 * 86_400);
    buy(&e, &mut m, now, 600);
    compare(&e, &o.id, &m, "set-up");
    for (step, op) in ops.into_iter().enumerate() {
        let step = format!("step {step} {op:?}");
        let id = |call: u8, generation: &BTreeMap<u8, u32>| {
            format!("c{call}-{}", generation.get(&call).copied().unwrap_or(0))
        };
        match op {
            Op::Authorize { call, user, dest, secs } => {
                *generation.entry(call).or_insert(0) += 1;
                let call_id = id(call, &generation);
                let a = auth(
                    &e,
                    now,
                    &o.id,
                    &call_id,
                    "outbound",
                    Some(&users[user as usize]),
                    "+14155550111",
                    DESTS[dest as usize],
                    Some(secs),
                );
                if a.decision == "allow" {
                    let rate =
                        ModelRate::parse(a.rate_per_minute.as_deref().unwrap(), a.connection_fee, a.increment_seconds);
                    let granted = i64::from(a.granted_seconds);
                    assert!(granted >= 1 && granted <= i64::from(secs) + rate.increment_seconds, "{step}: {a:?}");
                    // The reservation is the price of the granted seconds the plan does not cover.
                    assert_eq!(
                        a.reserved_amount,
                        rate.price_minor(credit_seconds(granted, a.plan_minutes)),
                        "{step}: {a:?}"
                    );
                    let res = reservation(&e, &o.id, &call_id);
                    assert_eq!((res.money_minor, res.plan_minutes), (a.reserved_amount, a.plan_minutes), "{step}");
                    m.calls.insert(
                        call_id.clone(),
                        ModelCall {
                            rate,
                            granted,
                            used: 0,
                            plan_minutes: a.plan_minutes,
                            money: a.reserved_amount,
                            earmarks: BTreeMap::new(),
                            expires_at: now + jiff::SignedDuration::from_secs(granted + GRACE_SECONDS),
                        },
                    );
                    m.reserve(&call_id, a.reserved_amount, now);
                } else {
                    assert_eq!(a.reserved_amount, 0);
                }
            }
            Op::Update { call, used, more } => {
                let call_id = id(call, &generation);
                let r = e.apply_one(
                    now,
                    Command::Update {
                        org: o.id.clone(),
                        call_id: call_id.clone(),
                        used_seconds: used,
                        requested_seconds: more,
                    },
                );
                let Some(c) = m.calls.get(&call_id).cloned() else {
                    assert!(r.is_err(), "{step}: an update of a call not in progress must fail: {r:?}");
                    continue;
                };
                let Ok(Outcome::Updated(u)) = r else { panic!("{step}: {r:?}") };
                let used = i64::from(used).max(c.used).min(c.granted);
                let wanted = used + i64::from(more);
                let total = i64::from(u.total_granted_seconds);
                assert_eq!(i64::from(u.used_seconds), used, "{step}: {u:?}");
                // Seconds already used are never taken back; only the caller shrinks a
                // reservation, and never below what it asked for.
                assert!(total >= used, "{step}: the reservation moved below the seconds used: {u:?}");
                if more == 0 {
                    assert_eq!(total, c.granted, "{step}: {u:?}");
                } else if wanted <= c.granted {
                    assert!(total >= wanted && total <= c.granted, "{step}: {u:?}");
                } else {
                    assert!(total >= c.granted, "{step}: the reservation shrank when more was asked for: {u:?}");
                }
                match &u.reason {
                    Some(_) => {
                        assert_eq!(u.granted_seconds, 0, "{step}: {u:?}");
                        assert_eq!(total, c.granted, "{step}: a refused update changes nothing: {u:?}");
                    }
                    None => assert_eq!(i64::from(u.granted_seconds), total - used, "{step}: {u:?}"),
                }
                let res = reservation(&e, &o.id, &call_id);
                assert_eq!((res.granted_seconds, res.used_seconds), (total, used), "{step}");
                if total <= c.granted {
                    // A subset of what it held: never more plan minutes or money.
                    assert!(res.plan_minutes <= c.plan_minutes && res.money_minor <= c.money, "{step}: {res:?} {c:?}");
                }
                assert!(
                    res.money_minor >= c.rate.price_minor(credit_seconds(total, res.plan_minutes)),
                    "{step}: the call holds {} but its grant costs more: {res:?}",
                    res.money_minor
                );
                let expired = m.expired_share(&call_id);
                assert!(res.money_minor >= expired, "{step}: the call let go of money on an expired lot: {res:?}");
                let mc = m.calls.get_mut(&call_id).unwrap();
                mc.granted = total;
                mc.used = used;
                mc.plan_minutes = res.plan_minutes;
                mc.money = res.money_minor;
                mc.expires_at = now + jiff::SignedDuration::from_secs(total - used + GRACE_SECONDS);
                match res.money_minor - c.money {
                    d if d > 0 => m.reserve(&call_id, d, now),
                    d if d < 0 => m.release(&call_id, -d, now),
                    _ => {}
                }
            }
            Op::End { call, secs } => {
                let call_id = id(call, &generation);
                let r = e.apply_one(
                    now,
                    Command::End { org: o.id.clone(), call_id: call_id.clone(), duration_seconds: secs },
                );
                let Some(c) = m.calls.get(&call_id).cloned() else {
                    // Unknown (never authorized, or denied) or already ended.
                    continue;
                };
                let Ok(Outcome::Ended(v)) = r else { panic!("{step}: {r:?}") };
                let (charged, plan, charge) = must_pay(&c, i64::from(secs));
                assert_eq!(
                    (v.charged_seconds, v.overrun_seconds, v.plan_minutes, v.charge),
                    (charged, i64::from(secs) - charged, plan, charge),
                    "{step}: the customer must pay (charged s, overrun s, plan min, charge) for {c:?}"
                );
                m.settle(&call_id, charge);
                m.charged += charge;
                m.settled.push((call_id, charge));
            }
            Op::Import { user, dest, secs } => {
                imports += 1;
                let call_id = format!("cdr{imports}");
                let r = e.apply_one(
                    now,
                    Command::ImportCdr(commcredits_engine::cdr::CdrRecord {
                        org: o.id.clone(),
                        line: imports,
                        call_id: call_id.clone(),
                        call_type: "outbound".into(),
                        user: Some(users[user as usize].clone()),
                        from: "+14155550111".into(),
                        to: DESTS[dest as usize].into(),
                        start_time: now,
                        duration_seconds: secs,
                    }),
                );
                let Ok(Outcome::Ended(v)) = r else {
                    assert!(r.is_err(), "{step}: {r:?}");
                    continue;
                };
                // Charged the same way as a real-time call granted what the import was.
                let res = reservation(&e, &o.id, &call_id);
                let rate = ModelRate::parse(
                    res.rate_per_minute.as_deref().unwrap(),
                    res.connection_fee_minor,
                    u32::try_from(res.increment_seconds).unwrap(),
                );
                assert_eq!(
                    res.money_minor,
                    rate.price_minor(credit_seconds(res.granted_seconds, res.plan_minutes)),
                    "{step}: {res:?}"
                );
                let c = ModelCall {
                    rate,
                    granted: res.granted_seconds,
                    used: 0,
                    plan_minutes: res.plan_minutes,
                    money: res.money_minor,
                    earmarks: BTreeMap::new(),
                    expires_at: now,
                };
                let (charged, plan, charge) = must_pay(&c, i64::from(secs));
                assert_eq!(
                    (v.charged_seconds, v.overrun_seconds, v.plan_minutes, v.charge),
                    (charged, i64::from(secs) - charged, plan, charge),
                    "{step}: the customer must pay (charged s, overrun s, plan min, charge) for {c:?}"
                );
                m.calls.insert(call_id.clone(), c);
                m.reserve(&call_id, res.money_minor, now);
                m.settle(&call_id, charge);
                m.charged += charge;
                m.settled.push((call_id, charge));
            }
            Op::Purchase { expires_in } => {
                if purchases < 6 {
                    purchases += 1;
                    buy(&e, &mut m, now, expires_in);
                }
            }
            Op::Advance { secs } => {
                now += jiff::SignedDuration::from_secs(i64::from(secs));
                m.expire(now);
                e.run_jobs(now).unwrap();
                let due: Vec<String> =
                    m.calls.iter().filter(|(_, c)| c.expires_at <= now).map(|(id, _)| id.clone()).collect();
                for (call_id, c) in m.calls.clone() {
                    let res = reservation(&e, &o.id, &call_id);
                    if !due.contains(&call_id) {
                        assert_eq!(res.state, "pending", "{step}: {call_id} timed out early");
                        continue;
                    }
                    assert_eq!(res.state, "expired", "{step}: {call_id} did not time out");
                    let cdr = e.cdrs(&o.id, t("2026-01-01T00:00:00Z"), t("2028-01-01T00:00:00Z")).unwrap();
                    let cdr = cdr.iter().find(|r| r.call_id == call_id).unwrap();
                    let (charged, plan, charge) = must_pay(&c, c.used);
                    assert_eq!(
                        (cdr.duration_seconds, cdr.charged_seconds, cdr.plan_minutes, cdr.charge_minor),
                        (c.used, charged, plan, charge),
                        "{step}: a timed-out call pays for the usage last reported"
                    );
                    m.settle(&call_id, charge);
                    m.charged += charge;
                    m.settled.push((call_id, charge));
                }
            }
            Op::SpendLimit { user, limit } => {
                one(
                    &e,
                    now,
                    Command::UpdateUser(UserChanges {
                        org: o.id.clone(),
                        user: users[user as usize].clone(),
                        spend_limit: Some(limit.map(str::to_string)),
                        ..Default::default()
                    }),
                );
            }
            Op::License { user, sku, assign } => {
                let (org, sku, users) =
                    (o.id.clone(), SKUS[sku as usize].to_string(), vec![users[user as usize].clone()]);
                // Assigning what is held or removing what is not is refused: that changes nothing.
                let _ = e.apply_one(
                    now,
                    if assign {
                        Command::AssignLicense { org, sku, users }
                    } else {
                        Command::RemoveLicense { org, sku, users }
                    },
                );
            }
        }
        compare(&e, &o.id, &m, &step);
    }
    // Every call ends by timing out; then every cent is accounted for.
    now += jiff::SignedDuration::from_hours(30);
    m.expire(now);
    e.run_jobs(now).unwrap();
    for (call_id, c) in m.calls.clone() {
        let (_, _, charge) = must_pay(&c, c.used);
        m.settle(&call_id, charge);
        m.charged += charge;
    }
    compare(&e, &o.id, &m, "after every call timed out");
    let purchased: i64 = 5000 * m.lots.len() as i64;
    assert_eq!(purchased, m.charged + m.written_off + m.lots.values().map(|l| l.remaining).sum::<i64>());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]
    #[test]
    fn customers_pay_what_the_reference_model_says(ops in prop::collection::vec(op(), 10..70)) {
        run(ops);
    }
}

// ---------------------------------------------------------------------------------
// The two reported cases, step by step.

/// A call authorized for 300 s whose user's spend limit drops to 2 cents: an update
/// that asks for no more than the call holds keeps the seconds used and is paid from
/// what the call holds; one that asks for more is a shortfall with a reason.
#[test]
fn a_lowered_spend_limit_never_takes_back_used_seconds() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    e.purchase(&o.id, "50", &o.card, None, None, now).unwrap();
    // Bob (GB, credits only) calls a UK mobile: 0.09 per minute, per-second billing.
    let a = auth(&e, now, &o.id, "c1", "outbound", Some(&o.bob), "+442079460000", "+447400123456", Some(300));
    assert_eq!((a.decision.as_str(), a.granted_seconds, a.reserved_amount), ("allow", 300, 45), "{a:?}");
    let limit = |l: &str| {
        one(
            &e,
            now,
            Command::UpdateUser(UserChanges {
                org: o.id.clone(),
                user: o.bob.clone(),
                spend_limit: Some(Some(l.into())),
                ..Default::default()
            }),
        )
    };
    limit("0.02");
    let u = update(&e, now, &o.id, "c1", 250, 10);
    println!("update used 250 + 10 after the limit fell to 0.02: {u:?}");
    assert_eq!((u.granted_seconds, u.total_granted_seconds, u.reason.as_deref()), (10, 260, None));
    let res = reservation(&e, &o.id, "c1");
    // Expiry: the 10 s left plus the 30 s grace.
    assert_eq!(res.expires_at, now + jiff::SignedDuration::from_secs(40));
    // 260 s at 0.09 per minute = 39 cents; the 6 cents beyond are given back.
    assert_eq!(res.money_minor, 39);
    check(&e, &o.id);
    let v = end(&e, now, &o.id, "c1", 260);
    println!("end at 260 s: {v:?}");
    assert_eq!((v.charged_seconds, v.overrun_seconds, v.charge), (260, 0, 39));
    check(&e, &o.id);

    // Asking for more than the call holds while the limit forbids it: keep everything.
    limit("5.00");
    let a = auth(&e, now, &o.id, "c2", "outbound", Some(&o.bob), "+442079460000", "+447400123456", Some(300));
    assert_eq!(a.granted_seconds, 300);
    limit("0.02");
    // The 45 cents the call holds pay for 303 s (45.45 cents, rounded half-up once):
    // those 3 s more are granted without a cent more.
    let u = update(&e, now, &o.id, "c2", 250, 100);
    println!("update used 250 + 100 after the limit fell to 0.02: {u:?}");
    assert_eq!((u.granted_seconds, u.total_granted_seconds, u.reason.as_deref()), (53, 303, None));
    assert_eq!(reservation(&e, &o.id, "c2").money_minor, 45);
    let u = update(&e, now, &o.id, "c2", 300, 100);
    println!("update used 300 + 100 after the limit fell to 0.02: {u:?}");
    assert_eq!(
        (u.granted_seconds, u.total_granted_seconds, u.reason.as_deref()),
        (0, 303, Some("spend_limit_reached"))
    );
    let v = end(&e, now, &o.id, "c2", 320);
    assert_eq!((v.charged_seconds, v.overrun_seconds, v.charge), (303, 17, 45));
    check(&e, &o.id);
}

/// Two calls earmarked on a lot that then expires: an update reserves only the
/// increase on a live lot, and both identical calls cost the same.
#[test]
fn a_lot_expiring_under_calls_pays_for_them_once() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    // Lot A expires in 20 s, lot B in a year.
    e.purchase(&o.id, "50", &o.card, None, Some(t("2025-11-02T09:00:20Z")), now).unwrap();
    e.purchase(&o.id, "50", &o.card, None, None, now).unwrap();
    let lot_ids: Vec<String> = lots(&e, &o.id).into_iter().map(|l| l.lot_id).collect();
    let (lot_a, lot_b) = (lot_ids[0].clone(), lot_ids[1].clone());
    for c in ["c1", "c2"] {
        let a = auth(&e, now, &o.id, c, "outbound", Some(&o.bob), "+442079460000", "+447400123456", Some(300));
        assert_eq!((a.granted_seconds, a.reserved_amount), (300, 45));
        assert_eq!(reservation(&e, &o.id, c).earmarks, format!("{lot_a}:45"));
    }
    let later = t("2026-11-02T09:00:30Z");
    e.run_jobs(later).unwrap();
    // A's unearmarked 49.10 is written off; the 90 cents the calls hold stay for them.
    assert_eq!(ledger_total(&e, &o.id, "expiry"), 4910);
    let u = update(&e, later, &o.id, "c1", 30, 300);
    println!("update c1 used 30 + 300 after lot A expired: {u:?}");
    assert_eq!((u.granted_seconds, u.total_granted_seconds), (300, 330));
    let res = reservation(&e, &o.id, "c1");
    println!("c1 holds {} as {}", res.money_minor, res.earmarks);
    // 330 s cost 49.5 -> 50 cents: the 45 on A stay, the 5 more come from B.
    assert_eq!(res.earmarks, format!("{lot_a}:45;{lot_b}:5"));
    println!("written off after the update: {}", ledger_total(&e, &o.id, "expiry"));
    assert_eq!(ledger_total(&e, &o.id, "expiry"), 4910);
    check(&e, &o.id);
    let v1 = end(&e, later, &o.id, "c1", 300);
    let v2 = end(&e, later, &o.id, "c2", 300);
    println!("end c1: {v1:?}\nend c2: {v2:?}");
    assert_eq!((v1.charge, v2.charge), (45, 45));
    let l: Vec<(i64, i64)> = lots(&e, &o.id).iter().map(|l| (l.remaining_minor, l.reserved_minor)).collect();
    println!(
        "lots (remaining, reserved): {l:?}; charged {}, written off {}",
        ledger_total(&e, &o.id, "charge"),
        ledger_total(&e, &o.id, "expiry")
    );
    // Both calls were paid from A; B is whole; nothing of the calls was written off.
    assert_eq!(l, vec![(0, 0), (5000, 0)]);
    assert_eq!((ledger_total(&e, &o.id, "charge"), ledger_total(&e, &o.id, "expiry")), (90, 4910));
    check(&e, &o.id);
}
