//! Summaries, dial-out by organizer, blocked users and the funding recommendation, on
//! real traffic charged by the engine: the figures are checked against what each call's
//! `end` answered, against the CDRs and against the ledger.

mod common;
use commcredits_core::Timestamp;
use commcredits_engine::summary::{Usage, MAX_LOOKBACK_DAYS};
use commcredits_engine::views::EndView;
use commcredits_engine::{Command, Engine};
use common::*;
use jiff::SignedDuration;
use std::collections::BTreeMap;

const ADA_NUMBER: &str = "+14155550100";
const BOB_NUMBER: &str = "+442079460001";
const TOLL_FREE: &str = "+18005550100";

fn at(t0: Timestamp, days: i64, hours: i64) -> Timestamp {
    t0 + SignedDuration::from_hours(days * 24 + hours)
}

/// Authorizes (for exactly `secs`), expects the call allowed and ends it after `secs`.
#[allow(clippy::too_many_arguments)]
fn call(
    e: &Engine,
    org: &str,
    start: Timestamp,
    id: &str,
    kind: &str,
    user: Option<&str>,
    from: &str,
    to: &str,
    secs: u32,
) -> EndView {
    let a = auth(e, start, org, id, kind, user, from, to, Some(secs));
    assert_eq!(a.decision, "allow", "{id}: {a:?}");
    assert_eq!(a.granted_seconds, secs, "{id}: {a:?}");
    end(e, start + SignedDuration::from_secs(i64::from(secs)), org, id, secs)
}

fn refused(e: &Engine, org: &str, now: Timestamp, id: &str, kind: &str, user: Option<&str>, to: &str) -> String {
    let d = auth(e, now, org, id, kind, user, BOB_NUMBER, to, None);
    assert_eq!(d.decision, "deny", "{id}: {d:?}");
    d.reason.unwrap()
}

fn usage(calls: i64, seconds: i64, minutes: i64, plan_minutes: i64, spend: i64) -> Usage {
    Usage { calls, seconds, minutes, plan_minutes, spend }
}

/// What the test itself knows of a call.
struct Rec {
    day: &'static str,
    user: Option<String>,
    country: &'static str,
    kind: &'static str,
    v: EndView,
}

fn add(u: &mut Usage, r: &Rec) {
    u.calls += 1;
    u.seconds += r.v.duration_seconds;
    u.minutes += (r.v.duration_seconds + 59) / 60;
    u.plan_minutes += r.v.plan_minutes;
    u.spend += r.v.charge;
}

#[test]
fn summaries_add_up_to_the_calls_the_cdrs_and_the_ledger() {
    let e = engine();
    let t0 = t("2026-09-01T00:00:00Z");
    let o = setup(&e, t0);
    e.purchase(&o.id, "500", &o.card, None, None, t0).unwrap();
    one(
        &e,
        t0,
        Command::AddNumber { org: o.id.clone(), number: TOLL_FREE.into(), kind: "toll_free".into(), user: None },
    );
    one(
        &e,
        t0,
        Command::AssignLicense {
            org: o.id.clone(),
            sku: "audio_conferencing".into(),
            users: vec![o.ada.clone(), o.bob.clone()],
        },
    );
    let (ada, bob) = (Some(o.ada.clone()), Some(o.bob.clone()));
    let mut recs: Vec<Rec> = Vec::new();
    let mut rec = |day, user: &Option<String>, country, kind, v: EndView| {
        recs.push(Rec { day, user: user.clone(), country, kind, v });
    };
    let (org, a, b) = (o.id.as_str(), Some(o.ada.as_str()), Some(o.bob.as_str()));

    // Day 1: Ada calls the US on her plan, Bob calls Nigeria on credits (10 min × 0.922).
    let v = call(&e, org, at(t0, 0, 10), "d1-ada-us", "outbound", a, ADA_NUMBER, "+12125550123", 300);
    assert_eq!((v.funding.as_str(), v.plan_minutes, v.charge), ("plan", 5, 0));
    rec("2026-09-01", &ada, "US", "outbound", v);
    let v = call(&e, org, at(t0, 0, 11), "d1-bob-ng", "outbound", b, BOB_NUMBER, "+2348031234567", 600);
    assert_eq!((v.funding.as_str(), v.charge), ("credits", 922));
    rec("2026-09-01", &bob, "NG", "outbound", v);
    // Bob's emergency call is free and still a call.
    let v = call(&e, org, at(t0, 0, 12), "d1-bob-999", "outbound", b, BOB_NUMBER, "999", 90);
    assert_eq!((v.funding.as_str(), v.charge), ("emergency", 0));
    rec("2026-09-01", &bob, "GB", "outbound", v);

    // Day 2: Bob calls the US; a caller from London rings the toll-free number (4 min ×
    // 0.044); Bob starts a call to Nigeria just before midnight: it counts on day 2.
    let v = call(&e, org, at(t0, 1, 9), "d2-bob-us", "outbound", b, BOB_NUMBER, "+14155550199", 125);
    assert_eq!(v.charge, 2);
    rec("2026-09-02", &bob, "US", "outbound", v);
    let v = call(&e, org, at(t0, 1, 10), "d2-tollfree", "toll_free_inbound", None, "+442079460000", TOLL_FREE, 240);
    assert_eq!(v.charge, 18);
    rec("2026-09-02", &None, "US", "toll_free_inbound", v);
    let late = t("2026-09-02T23:55:00Z");
    let v = call(&e, org, late, "d2-bob-late", "outbound", b, BOB_NUMBER, "+2348031234567", 900);
    assert_eq!(v.charge, 1383);
    rec("2026-09-02", &bob, "NG", "outbound", v);

    // Day 4: conference dial-out. The organization-wide pool is 2 × 60 minutes.
    let v = call(&e, org, at(t0, 3, 9), "d4-ada-gb", "conference_dial_out", a, ADA_NUMBER, "+442079460000", 2400);
    assert_eq!((v.funding.as_str(), v.plan_minutes, v.charge), ("plan", 40, 0));
    rec("2026-09-04", &ada, "GB", "conference_dial_out", v);
    let v = call(&e, org, at(t0, 3, 10), "d4-bob-gb", "conference_dial_out", b, BOB_NUMBER, "+442079460002", 600);
    assert_eq!((v.plan_minutes, v.charge), (10, 0));
    rec("2026-09-04", &bob, "GB", "conference_dial_out", v);
    // 70 minutes are left: Ada's 80-minute call to Germany finishes on credits.
    let v = call(&e, org, at(t0, 3, 11), "d4-ada-de", "conference_dial_out", a, ADA_NUMBER, "+4930123456", 4800);
    assert_eq!(v.plan_minutes, 70, "{v:?}");
    assert!(v.charge > 0, "{v:?}");
    rec("2026-09-04", &ada, "DE", "conference_dial_out", v);
    let v = call(&e, org, at(t0, 3, 13), "d4-ada-ng", "conference_dial_out", a, ADA_NUMBER, "+2348031234567", 300);
    assert_eq!((v.funding.as_str(), v.charge), ("credits", 507));
    rec("2026-09-04", &ada, "NG", "conference_dial_out", v);
    // Ada calls London: her plan is domestic only, so credits pay.
    let v = call(&e, org, at(t0, 3, 14), "d4-ada-gb-out", "outbound", a, ADA_NUMBER, "+442079460000", 185);
    assert_eq!((v.funding.as_str(), v.charge), ("credits", 6));
    rec("2026-09-04", &ada, "GB", "outbound", v);

    // Refusals: Cy (no credits, no audio conferencing), an unknown caller, an unknown
    // toll-free number.
    let cy = Some(o.cy.as_str());
    assert_eq!(refused(&e, org, at(t0, 0, 15), "r1", "outbound", cy, "+442079460000"), "no_credits_license");
    assert_eq!(refused(&e, org, at(t0, 2, 15), "r2", "outbound", cy, "+2348031234567"), "no_credits_license");
    assert_eq!(refused(&e, org, at(t0, 3, 15), "r3", "conference_dial_out", cy, "+442079460000"), "dial_out_disabled");
    assert_eq!(
        refused(&e, org, at(t0, 1, 16), "r4", "outbound", Some("nobody@contoso.com"), "+14155550123"),
        "unknown_user"
    );
    assert_eq!(refused(&e, org, at(t0, 4, 16), "r5", "toll_free_inbound", None, "+18005550199"), "unknown_number");
    check(&e, org);

    let (from, to) = (t0, at(t0, 10, 0));
    let s = e.summary(org, from, to).unwrap();
    assert_eq!(
        (s.from.as_str(), s.to.as_str(), s.currency.as_str()),
        ("2026-09-01T00:00:00Z", "2026-09-11T00:00:00Z", "USD")
    );

    // Every figure as the test's own calls give it.
    let mut total = Usage::default();
    let mut by_day: BTreeMap<String, Usage> = BTreeMap::new();
    let mut by_user: BTreeMap<Option<String>, Usage> = BTreeMap::new();
    let mut by_country: BTreeMap<Option<String>, Usage> = BTreeMap::new();
    let mut by_type: BTreeMap<String, Usage> = BTreeMap::new();
    for r in &recs {
        add(&mut total, r);
        add(by_day.entry(r.day.into()).or_default(), r);
        add(by_user.entry(r.user.clone()).or_default(), r);
        add(by_country.entry(Some(r.country.into())).or_default(), r);
        add(by_type.entry(r.kind.into()).or_default(), r);
    }
    assert_eq!(s.totals, total);
    assert_eq!(s.totals.calls, 11);
    assert_eq!(
        s.by_day.iter().map(|d| (d.day.clone(), d.usage)).collect::<Vec<_>>(),
        by_day.into_iter().collect::<Vec<_>>()
    );
    assert_eq!(s.by_user.iter().map(|u| (u.user_id.clone(), u.usage)).collect::<BTreeMap<_, _>>(), by_user);
    assert_eq!(s.by_country.iter().map(|c| (c.country.clone(), c.usage)).collect::<BTreeMap<_, _>>(), by_country);
    assert_eq!(s.by_call_type.iter().map(|c| (c.call_type.clone(), c.usage)).collect::<BTreeMap<_, _>>(), by_type);
    // Exact figures of a few rows.
    let ada_spend = recs.iter().filter(|r| r.user == ada).map(|r| r.v.charge).sum::<i64>();
    let ada_row = s.by_user.iter().find(|u| u.user_id == ada).unwrap();
    assert_eq!(ada_row.usage, usage(5, 300 + 2400 + 4800 + 300 + 185, 5 + 40 + 80 + 5 + 4, 5 + 40 + 70, ada_spend));
    assert_eq!(
        (ada_row.upn.as_deref(), ada_row.display_name.as_deref()),
        (Some("ada@contoso.com"), Some("ada@contoso.com"))
    );
    let toll_free = s.by_user.iter().find(|u| u.user_id.is_none()).unwrap();
    assert_eq!((toll_free.upn.as_deref(), toll_free.usage), (None, usage(1, 240, 4, 0, 18)));
    assert_eq!(s.by_user.last().unwrap().user_id, None, "toll-free spent least");
    let ng = s.by_country.iter().find(|c| c.country.as_deref() == Some("NG")).unwrap();
    assert_eq!(
        (ng.name.as_deref(), ng.usage),
        (Some("Nigeria"), usage(3, 600 + 900 + 300, 10 + 15 + 5, 0, 922 + 1383 + 507))
    );
    let gb = s.by_country.iter().find(|c| c.country.as_deref() == Some("GB")).unwrap();
    assert_eq!((gb.name.as_deref(), gb.usage.calls), (Some("United Kingdom"), 4));
    assert_eq!(s.by_day.iter().map(|d| d.day.as_str()).collect::<Vec<_>>(), ["2026-09-01", "2026-09-02", "2026-09-04"]);
    assert_eq!(s.by_day[1].usage, usage(3, 125 + 240 + 900, 3 + 4 + 15, 0, 2 + 18 + 1383));
    // Ordering: spend descending (then key) in every breakdown but days.
    for spends in [
        s.by_user.iter().map(|r| r.usage.spend).collect::<Vec<_>>(),
        s.by_country.iter().map(|r| r.usage.spend).collect(),
        s.by_call_type.iter().map(|r| r.usage.spend).collect(),
    ] {
        assert!(spends.windows(2).all(|w| w[0] >= w[1]), "{spends:?}");
    }

    // The CDRs and the ledger agree to the cent: every breakdown sums to the charges.
    let cdrs = e.cdrs(org, from, to).unwrap();
    assert_eq!(cdrs.len() as i64, s.totals.calls);
    let cdr_spend: i64 = cdrs.iter().map(|c| c.charge_minor).sum();
    let books = e.check_books(org).unwrap();
    assert_eq!(s.totals.spend, cdr_spend);
    assert_eq!(s.totals.spend, books.charges);
    assert_eq!(
        books.charges,
        922 + 1383 + 2 + 18 + recs.iter().filter(|r| r.day == "2026-09-04").map(|r| r.v.charge).sum::<i64>()
    );
    for sum in [
        s.by_day.iter().map(|r| r.usage.spend).sum::<i64>(),
        s.by_user.iter().map(|r| r.usage.spend).sum(),
        s.by_country.iter().map(|r| r.usage.spend).sum(),
        s.by_call_type.iter().map(|r| r.usage.spend).sum(),
    ] {
        assert_eq!(sum, books.charges);
    }
    assert_eq!(e.credits(org).unwrap().balance, 50_000 - books.charges);

    // A narrower period: only day 2.
    let day2 = e.summary(org, at(t0, 1, 0), at(t0, 2, 0)).unwrap();
    assert_eq!(day2.totals, s.by_day[1].usage);
    assert!(e.summary(org, to, from).is_err());
    // The JSON is flat: a row's usage sits beside its key.
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["by_day"][0]["day"], "2026-09-01");
    assert_eq!(json["by_day"][0]["spend"], 922);
    assert_eq!(json["totals"]["spend"], books.charges);

    // Dial-out by organizer: Ada (credits paid part) first, then Bob (all plan).
    let d = e.dial_out_by_organizer(org, from, to).unwrap();
    assert_eq!(d.len(), 2);
    let dial_spend: i64 = recs.iter().filter(|r| r.kind == "conference_dial_out").map(|r| r.v.charge).sum();
    assert_eq!(
        (d[0].organizer_id.as_str(), d[0].upn.as_deref(), d[0].usage, d[0].currency.as_str()),
        (o.ada.as_str(), Some("ada@contoso.com"), usage(3, 2400 + 4800 + 300, 40 + 80 + 5, 40 + 70, dial_spend), "USD")
    );
    assert_eq!((d[1].organizer_id.as_str(), d[1].usage), (o.bob.as_str(), usage(1, 600, 10, 10, 0)));
    assert_eq!(d[0].usage.plan_minutes + d[1].usage.plan_minutes, 120, "the whole conferencing pool");
    assert!(e.dial_out_by_organizer(org, at(t0, 4, 0), to).unwrap().is_empty());

    // Blocked users: Cy three times, then the refusals without a known user.
    let blocked = e.blocked_users(org, from, to).unwrap();
    assert_eq!(blocked.len(), 2, "{blocked:?}");
    let c = &blocked[0];
    assert_eq!((c.user_id.as_deref(), c.upn.as_deref(), c.refusals), (Some(o.cy.as_str()), Some("cy@contoso.com"), 3));
    let reasons: Vec<(&str, i64)> = c.reasons.iter().map(|r| (r.reason.as_str(), r.count)).collect();
    assert_eq!(reasons, [("no_credits_license", 2), ("dial_out_disabled", 1)]);
    assert_eq!(
        (c.first_refused_at.as_str(), c.last_refused_at.as_str()),
        ("2026-09-01T15:00:00Z", "2026-09-04T15:00:00Z")
    );
    assert_eq!(c.last_reason, "dial_out_disabled");
    let n = &blocked[1];
    assert_eq!((n.user_id.as_deref(), n.upn.as_deref(), n.refusals), (None, None, 2));
    let reasons: Vec<(&str, i64)> = n.reasons.iter().map(|r| (r.reason.as_str(), r.count)).collect();
    assert_eq!(reasons, [("unknown_number", 1), ("unknown_user", 1)]);
    assert_eq!((n.last_refused_at.as_str(), n.last_reason.as_str()), ("2026-09-05T16:00:00Z", "unknown_number"));
    // Only the period's refusals count.
    let later = e.blocked_users(org, at(t0, 2, 0), to).unwrap();
    assert_eq!(
        later.iter().map(|b| (b.user_id.clone(), b.refusals)).collect::<Vec<_>>(),
        [(Some(o.cy.clone()), 2), (None, 1)]
    );
    assert_eq!(later[0].first_refused_at, "2026-09-03T15:00:00Z");
    assert_eq!(e.denials(org).unwrap().len(), 5);
    check(&e, org);
}

/// Bob calls Nigeria on most of 46 days; Ada's plan calls and a toll-free call add days.
#[test]
fn recommendation_from_rich_history() {
    let e = engine();
    let t0 = t("2026-06-01T08:00:00Z");
    let o = setup(&e, t0);
    e.purchase(&o.id, "1000", &o.card, None, None, t0).unwrap();
    one(
        &e,
        t0,
        Command::AddNumber { org: o.id.clone(), number: TOLL_FREE.into(), kind: "toll_free".into(), user: None },
    );
    let org = o.id.as_str();
    let mut spent_by_day = vec![0i64; 46];
    for d in 0..46i64 {
        let minutes = (d * 7) % 23; // 0 on some days, up to 22 minutes
        if minutes > 0 {
            let v = call(
                &e,
                org,
                at(t0, d, 1),
                &format!("ng{d}"),
                "outbound",
                Some(o.bob.as_str()),
                BOB_NUMBER,
                "+2348031234567",
                minutes as u32 * 60,
            );
            assert_eq!(v.charge, minutes * 922 / 10 + i64::from(minutes * 922 % 10 >= 5));
            spent_by_day[d as usize] += v.charge;
        }
        if d % 3 == 0 {
            let v = call(
                &e,
                org,
                at(t0, d, 2),
                &format!("us{d}"),
                "outbound",
                Some(o.ada.as_str()),
                ADA_NUMBER,
                "+12125550123",
                600,
            );
            assert_eq!(v.charge, 0);
        }
        if d % 10 == 4 {
            let v = call(
                &e,
                org,
                at(t0, d, 3),
                &format!("tf{d}"),
                "toll_free_inbound",
                None,
                "+442079460000",
                TOLL_FREE,
                1800,
            );
            spent_by_day[d as usize] += v.charge;
        }
    }
    check(&e, org);
    // The first call started 45 days and 23 hours before: 46 days of history.
    let now = at(t0, 45, 23);
    let r = e.recommend(org, now).unwrap();
    assert!(r.enough_history, "{r:#?}");
    assert_eq!((r.history_days, r.lookback_days, r.currency.as_str()), (46, 46, "USD"));
    assert_eq!((r.window_from.as_str(), r.window_to.as_str()), ("2026-06-01T07:00:00Z", "2026-07-17T07:00:00Z"));

    // Recompute every figure from the CDRs: daily sums over 24-hour periods ending now.
    let day = 86_400_000_000i64;
    let from = now - SignedDuration::from_hours(24 * 46);
    let mut daily = vec![0i64; 46];
    for c in e.cdrs(org, from, now).unwrap() {
        let back = now.as_microsecond() - c.start_at.as_microsecond();
        daily[((back - 1) / day) as usize] += c.charge_minor;
    }
    // The same as what each call's `end` answered, day by day (calls start at 09:00-11:00,
    // the periods end at 07:00: day d is period 45 - d).
    let mut by_call = spent_by_day.clone();
    by_call.reverse();
    assert_eq!(daily, by_call);
    let total: i64 = daily.iter().sum();
    assert_eq!(total, e.check_books(org).unwrap().charges);
    let mut sorted = daily.clone();
    sorted.sort();
    let mean = (total + 45) / 46;
    let rank = |p: usize| sorted[(p * 46).div_ceil(100) - 1];
    let ds = &r.daily_spend;
    assert_eq!((ds.days, ds.total, ds.mean), (46, total, mean));
    assert_eq!((ds.p50, ds.p90, ds.p95, ds.max), (rank(50), rank(90), rank(95), *sorted.last().unwrap()));
    assert_eq!(ds.days_with_spend, daily.iter().filter(|s| **s > 0).count() as i64);
    assert_eq!(ds.p95, sorted[43]);
    assert!(ds.p95 >= ds.mean && ds.mean > 0);
    let credits = e.credits(org).unwrap();
    assert_eq!((r.balance, r.available), (credits.balance, credits.available));
    assert_eq!(r.days_until_empty, Some(credits.available / mean));
    // Threshold: 3 days at the 95th percentile, up to a whole dollar; amount: 14 days at
    // the mean, up to a whole dollar, within the purchase limits.
    let up = |minor: i64| (minor + 99) / 100 * 100;
    assert_eq!(r.lead_time_days, 3);
    assert_eq!(r.recommended_threshold, up(3 * ds.p95));
    assert_eq!(r.recommended_amount, up(14 * mean).clamp(5_000, 100_000_000));
    assert!(r.recommended_amount > 5_000, "rich history is above the minimum purchase: {r:#?}");
    assert_eq!((r.minimum_purchase, r.maximum_purchase), (5_000, 100_000_000));
    assert!(!r.current_auto_recharge.enabled);
    // The reasoning states the figures in words.
    let usd = |m: i64| format!("{}.{:02} USD", m / 100, m % 100);
    let text = r.reasoning.join("\n");
    assert!(
        text.contains(&format!(
            "Over the last 46 days credits paid {} in all, {} a day on average",
            usd(total),
            usd(mean)
        )),
        "{text}"
    );
    assert!(text.contains(&format!("on the busiest 5% of days {} or more", usd(ds.p95))), "{text}");
    assert!(text.contains(&format!("lasts about {} days", credits.available / mean)), "{text}");
    assert!(text.contains(&format!("3 × {} = {}", usd(ds.p95), usd(3 * ds.p95))), "{text}");
    assert!(text.contains(&usd(r.recommended_threshold)) && text.contains(&usd(r.recommended_amount)), "{text}");
    assert!(text.contains("Auto-recharge is off."), "{text}");
    assert!(!text.contains("too little history"), "{text}");

    // With calls from more than 90 days back the look-back is 90 days.
    let much_later = at(t0, 100, 0);
    let r = e.recommend(org, much_later).unwrap();
    assert_eq!((r.history_days, r.lookback_days), (MAX_LOOKBACK_DAYS, MAX_LOOKBACK_DAYS));
    let window = e.cdrs(org, much_later - SignedDuration::from_hours(24 * 90), much_later).unwrap();
    assert_eq!(r.daily_spend.total, window.iter().map(|c| c.charge_minor).sum::<i64>());
    assert_eq!(r.daily_spend.mean, (r.daily_spend.total + 89) / 90);
}

#[test]
fn small_spend_is_raised_to_the_minimum_purchase_over_the_minimum_look_back() {
    let e = engine();
    let t0 = t("2026-03-01T12:00:00Z");
    let o = setup(&e, t0);
    e.purchase(&o.id, "50", &o.card, None, None, t0).unwrap();
    let mut total = 0;
    for d in 0..10 {
        total += call(
            &e,
            &o.id,
            at(t0, d, 0),
            &format!("us{d}"),
            "outbound",
            Some(o.bob.as_str()),
            BOB_NUMBER,
            "+14155550199",
            1200,
        )
        .charge;
    }
    assert_eq!(total, 10 * 20);
    let now = at(t0, 10, 0);
    let r = e.recommend(&o.id, now).unwrap();
    // 10 days of history: only those 10 days count (days before the first call would
    // understate the rate).
    assert!(r.enough_history);
    assert_eq!((r.history_days, r.lookback_days), (10, 10));
    assert_eq!((r.daily_spend.total, r.daily_spend.mean, r.daily_spend.days_with_spend), (200, 20, 10));
    assert_eq!((r.daily_spend.p50, r.daily_spend.p95), (20, 20));
    assert_eq!(r.recommended_threshold, 100, "3 × 0.20 rounded up to a whole dollar");
    assert_eq!(r.recommended_amount, 5_000, "14 × 0.20 = 2.80 is raised to the minimum");
    assert_eq!(r.days_until_empty, Some((5_000 - 200) / 20));
    let text = r.reasoning.join("\n");
    assert!(text.contains("the look-back covers those 10 days"), "{text}");
    assert!(text.contains("below the minimum purchase"), "{text}");
    assert!(text.contains("50.00 USD"), "{text}");
}

#[test]
fn little_history_falls_back_to_the_minimum_purchase_and_says_so() {
    let e = engine();
    let t0 = t("2026-03-01T12:00:00Z");
    let o = setup(&e, t0);

    // No calls at all.
    let r = e.recommend(&o.id, t0).unwrap();
    assert!(!r.enough_history);
    assert_eq!((r.history_days, r.lookback_days, r.daily_spend.total), (0, 30, 0));
    assert_eq!((r.recommended_amount, r.recommended_threshold, r.days_until_empty), (5_000, 2_500, None));
    let text = r.reasoning.join("\n");
    assert!(text.contains("too little history"), "{text}");
    assert!(text.contains("falls back to the minimum purchase: recharge 50.00 USD"), "{text}");
    assert!(text.contains("threshold of half of it rounded up to a whole unit, 25.00 USD"), "{text}");

    // Three days of costly calls: still too little history, whatever the spend.
    e.purchase(&o.id, "200", &o.card, None, None, t0).unwrap();
    let mut total = 0;
    for d in 0..3 {
        total += call(
            &e,
            &o.id,
            at(t0, d, 1),
            &format!("ng{d}"),
            "outbound",
            Some(o.bob.as_str()),
            BOB_NUMBER,
            "+2348031234567",
            3000,
        )
        .charge;
    }
    assert_eq!(total, 3 * 4610);
    let now = at(t0, 3, 0);
    let r = e.recommend(&o.id, now).unwrap();
    assert!(!r.enough_history);
    assert_eq!((r.history_days, r.lookback_days), (3, 30));
    assert_eq!((r.daily_spend.total, r.daily_spend.mean, r.daily_spend.max), (total, (total + 29) / 30, 4610));
    assert_eq!((r.recommended_amount, r.recommended_threshold), (5_000, 2_500));
    assert_eq!(r.days_until_empty, Some((20_000 - total) / ((total + 29) / 30)));
    let text = r.reasoning.join("\n");
    assert!(text.contains("too little history to recommend from spend: the first call started 3 days ago, and at least 7 days are needed"), "{text}");

    // History from long ago but no spend in the last 90 days: falls back, and says why.
    let r = e.recommend(&o.id, at(t0, 200, 0)).unwrap();
    assert!(!r.enough_history);
    assert_eq!((r.history_days, r.lookback_days, r.daily_spend.total), (90, 90, 0));
    assert_eq!((r.recommended_amount, r.days_until_empty), (5_000, None));
    let text = r.reasoning.join("\n");
    assert!(text.contains("There are calls from more than 90 days ago"), "{text}");
    assert!(text.contains("no call was paid from credits in the last 90 days"), "{text}");

    // Auto-recharge settings in force are shown beside the recommendation.
    e.apply_one(
        now,
        Command::SetAutoRecharge {
            org: o.id.clone(),
            enabled: true,
            amount: Some("75".into()),
            threshold: Some("20".into()),
            payment_method_id: Some(o.card.clone()),
        },
    )
    .unwrap();
    let r = e.recommend(&o.id, now).unwrap();
    assert_eq!((r.current_auto_recharge.amount, r.current_auto_recharge.threshold), (7_500, 2_000));
    assert!(r.reasoning.join("\n").contains("recharges 75.00 USD when the available balance falls below 20.00 USD"));
    assert!(e.recommend("nope", now).is_err());
}
