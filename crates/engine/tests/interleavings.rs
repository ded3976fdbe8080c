//! Random interleavings of authorize / update / end / timeout / purchases, applied in
//! random batches, never spend a minute or a cent twice: after every batch the books
//! balance, and at the end the CDRs add up exactly to the ledger and the pools.

mod common;
use commcredits_core::Timestamp;
use commcredits_engine::calls::AuthorizeRequest;
use commcredits_engine::{Command, Engine};
use common::*;
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Clone, Debug)]
enum Op {
    Authorize { call: u8, user: u8, dest: u8, secs: u32 },
    Update { call: u8, used: u32, more: u32 },
    End { call: u8, secs: u32 },
    Purchase,
    Advance { secs: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..10, 0u8..3, 0u8..4, 1u32..900).prop_map(|(call, user, dest, secs)| Op::Authorize { call, user, dest, secs }),
        2 => (0u8..10, 0u32..1200, 0u32..600).prop_map(|(call, used, more)| Op::Update { call, used, more }),
        3 => (0u8..10, 0u32..1500).prop_map(|(call, secs)| Op::End { call, secs }),
        1 => Just(Op::Purchase),
        1 => (1u32..2000).prop_map(|secs| Op::Advance { secs }),
    ]
}

const DESTS: [&str; 4] = ["+14155550100", "+447400123456", "+4930123456", "+12125550123"];

fn run(ops: Vec<Op>, batch_sizes: Vec<usize>) {
    let e: Engine = engine();
    let mut now: Timestamp = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    // Small pools make plan-then-credits continuations common: 2 US users × 3000 is
    // large, so use mostly short calls and many of them to reach it rarely; the credits
    // side is stressed through a small balance.
    e.purchase(&o.id, "50", &o.card, None, None, now).unwrap();
    let users = [o.ada.clone(), o.bob.clone(), o.cy.clone()];
    let mut generation: HashMap<u8, u32> = HashMap::new();
    let mut ops = ops.into_iter().peekable();
    let mut sizes = batch_sizes.into_iter().cycle();
    while ops.peek().is_some() {
        let n = sizes.next().unwrap_or(1).max(1);
        let mut batch = Vec::new();
        for op in ops.by_ref().take(n) {
            let id = |call: u8, generation: &HashMap<u8, u32>| {
                format!("c{call}-{}", generation.get(&call).copied().unwrap_or(0))
            };
            let cmd = match op {
                Op::Authorize { call, user, dest, secs } => {
                    *generation.entry(call).or_insert(0) += 1;
                    Command::Authorize(AuthorizeRequest {
                        org: o.id.clone(),
                        call_id: id(call, &generation),
                        call_type: "outbound".into(),
                        user: Some(users[user as usize].clone()),
                        from: "+14155550111".into(),
                        to: DESTS[dest as usize].into(),
                        requested_seconds: Some(secs),
                    })
                }
                Op::Update { call, used, more } => Command::Update {
                    org: o.id.clone(),
                    call_id: id(call, &generation),
                    used_seconds: used,
                    requested_seconds: more,
                },
                Op::End { call, secs } => {
                    Command::End { org: o.id.clone(), call_id: id(call, &generation), duration_seconds: secs }
                }
                Op::Purchase => Command::PlaceOrder {
                    org: o.id.clone(),
                    amount: "50".into(),
                    payment_method_id: o.card.clone(),
                    po_number: None,
                    purchased_at: None,
                },
                Op::Advance { secs } => {
                    now += jiff::SignedDuration::from_secs(i64::from(secs));
                    e.run_jobs(now).unwrap();
                    continue;
                }
            };
            batch.push(cmd);
        }
        // Individual commands may fail (unknown call, ended call): that is the point.
        let _ = e.apply(now, batch).unwrap();
        let b = e.check_books(&o.id).unwrap_or_else(|err| panic!("{err}"));
        assert!(b.available >= 0);
    }
    // Let every reservation time out, then everything must add up.
    now += jiff::SignedDuration::from_hours(3);
    e.run_jobs(now).unwrap();
    let b = e.check_books(&o.id).unwrap();
    assert_eq!(b.reserved, 0);
    let cdrs = e.cdrs(&o.id, t("2026-01-01T00:00:00Z"), t("2027-12-01T00:00:00Z")).unwrap();
    let charged: i64 = cdrs.iter().map(|c| c.charge_minor).sum();
    assert_eq!(charged, b.charges, "CDR charges must equal ledger charges");
    let plan_minutes: i64 = cdrs.iter().map(|c| c.plan_minutes).sum();
    let pools = e.pools(&o.id, t("2026-11-15T00:00:00Z")).unwrap();
    let used: i64 = pools.iter().map(|p| p.used).sum();
    assert_eq!(plan_minutes, used, "CDR plan minutes must equal pool usage");
    for p in &pools {
        assert_eq!(p.reserved, 0);
        assert!(p.used <= p.size);
    }
    for c in &cdrs {
        assert!(c.charged_seconds <= c.duration_seconds);
        assert_eq!(c.charged_seconds + c.overrun_seconds, c.duration_seconds);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
    #[test]
    fn interleavings_never_spend_twice(ops in prop::collection::vec(op(), 10..80), batch_sizes in prop::collection::vec(1usize..12, 1..6)) {
        run(ops, batch_sizes);
    }
}

#[test]
fn long_call_crosses_from_plan_to_credits_through_updates() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    e.purchase(&o.id, "50", &o.card, None, None, now).unwrap();
    // Leave Ada's US domestic pool 3 minutes.
    for (i, m) in [1440u32, 1440, 1440, 1440, 237].into_iter().enumerate() {
        let id = format!("fill{i}");
        auth(&e, now, &o.id, &id, "outbound", Some(&o.cy), "+14155550100", "+12125550199", Some(m * 60));
        end(&e, now, &o.id, &id, m * 60);
    }
    let a = auth(&e, now, &o.id, "long", "outbound", Some(&o.ada), "+14155550100", "+12125550123", Some(120));
    assert_eq!((a.funding.as_str(), a.granted_seconds, a.plan_minutes), ("plan", 120, 2));
    let u = update(&e, now, &o.id, "long", 120, 300);
    assert_eq!(u.granted_seconds, 300);
    let v = end(&e, now, &o.id, "long", 400);
    assert_eq!((v.plan_minutes, v.funding.as_str()), (3, "plan_and_credits"));
    // 400 s - 180 s on the plan = 220 s on credits at the NANP rate (0.0100/min, 6 s increments): 3.67 -> 4 cents.
    assert_eq!(v.charge, 4);
    check(&e, &o.id);
}
