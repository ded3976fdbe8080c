//! Whole-organization scenarios on the engine, with the accounting identity checked
//! after each.

mod common;
use commcredits_core::ErrorCode;
use commcredits_engine::payments::CardInput;
use commcredits_engine::Command;
use common::*;

#[test]
fn purchase_call_on_credits_and_settle() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    let order = e.purchase(&o.id, "50.00", &o.card, None, None, now).unwrap();
    assert_eq!(order.status, "succeeded");
    assert_eq!(e.credits(&o.id).unwrap().balance, 5000);
    // Bob (GB, no plan) calls the US on credits.
    let a = auth(&e, now, &o.id, "c1", "outbound", Some(&o.bob), "+442079460000", "+14155550100", None);
    assert_eq!(a.decision, "allow", "{a:?}");
    assert_eq!(a.funding, "credits");
    assert_eq!(a.granted_seconds, 300);
    let c = e.credits(&o.id).unwrap();
    assert_eq!(c.reserved, a.reserved_amount);
    assert!(c.reserved > 0);
    check(&e, &o.id);
    let v = end(&e, now, &o.id, "c1", 125);
    assert_eq!(v.funding, "credits");
    assert!(v.charge > 0 && v.charge <= a.reserved_amount);
    let c = e.credits(&o.id).unwrap();
    assert_eq!(c.reserved, 0);
    assert_eq!(c.balance, 5000 - v.charge);
    // A repeated end answers the first result and changes nothing.
    let again = end(&e, now, &o.id, "c1", 999);
    assert_eq!(again.charge, v.charge);
    assert_eq!(e.credits(&o.id).unwrap().balance, 5000 - v.charge);
    check(&e, &o.id);
}

#[test]
fn plan_minutes_first_then_credits_within_one_call() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    e.purchase(&o.id, "100", &o.card, None, None, now).unwrap();
    // Two US users with a domestic plan: pool of 6000 minutes. Use 5998 of it.
    for (i, minutes) in [1440u32, 1440, 1440, 1440, 238].into_iter().enumerate() {
        let id = format!("big{i}");
        let a = auth(&e, now, &o.id, &id, "outbound", Some(&o.cy), "+14155550100", "+12125550199", Some(minutes * 60));
        assert_eq!((a.funding.as_str(), a.granted_seconds), ("plan", minutes * 60));
        end(&e, now, &o.id, &id, minutes * 60);
    }
    let pools = e.pools(&o.id, now).unwrap();
    let us = pools.iter().find(|p| p.country == "US" && p.kind == "domestic").unwrap();
    assert_eq!((us.size, us.used), (6000, 5998));
    // Ada (plan + credits) gets 2 plan minutes then credits for the rest.
    let a = auth(&e, now, &o.id, "mixed", "outbound", Some(&o.ada), "+14155550100", "+12125550123", Some(600));
    assert_eq!(a.funding, "plan_and_credits", "{a:?}");
    assert_eq!(a.plan_minutes, 2);
    let v = end(&e, now, &o.id, "mixed", 300);
    assert_eq!(v.plan_minutes, 2);
    assert!(v.charge > 0);
    // Cy has no credits license: plan exhausted is the reason.
    let d = auth(&e, now, &o.id, "cy2", "outbound", Some(&o.cy), "+14155550100", "+12125550123", None);
    assert_eq!(d.decision, "deny");
    assert_eq!(d.reason.as_deref(), Some("plan_minutes_exhausted"));
    // Pool notices at 80% and 100% were written once each.
    let kinds: Vec<String> = e.notices(&o.id).unwrap().into_iter().map(|n| n.kind).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "pool_threshold").count(), 2, "{kinds:?}");
    check(&e, &o.id);
}

#[test]
fn denials_have_reasons_and_emergency_is_free() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    // No funds: Bob is refused for lack of funds, and admins hear it once.
    let d = auth(&e, now, &o.id, "d1", "outbound", Some(&o.bob), "+442079460000", "+14155550100", None);
    assert_eq!(d.reason.as_deref(), Some("insufficient_funds"));
    let d = auth(&e, now, &o.id, "d2", "outbound", Some(&o.bob), "+442079460000", "+14155550100", None);
    assert_eq!(d.reason.as_deref(), Some("insufficient_funds"));
    let exhausted = e.notices(&o.id).unwrap().iter().filter(|n| n.kind == "balance_exhausted").count();
    assert_eq!(exhausted, 1);
    // Emergency is allowed, free, whatever the balance.
    let a = auth(&e, now, &o.id, "e1", "outbound", Some(&o.bob), "+442079460000", "999", None);
    assert_eq!((a.decision.as_str(), a.funding.as_str()), ("allow", "emergency"));
    assert_eq!(end(&e, now, &o.id, "e1", 600).charge, 0);
    let d = auth(&e, now, &o.id, "d3", "outbound", Some("nobody@contoso.com"), "+442079460000", "+14155550100", None);
    assert_eq!(d.reason.as_deref(), Some("unknown_user"));
    let d = auth(&e, now, &o.id, "d4", "toll_free_inbound", None, "+442079460000", "+18005550100", None);
    assert_eq!(d.reason.as_deref(), Some("unknown_number"));
    e.apply_one(
        now,
        Command::UpdateUser(commcredits_engine::admin::UserChanges {
            org: o.id.clone(),
            user: o.bob.clone(),
            dial_out: Some("domestic".into()),
            ..Default::default()
        }),
    )
    .unwrap();
    let d = auth(&e, now, &o.id, "d5", "outbound", Some(&o.bob), "+442079460000", "+14155550100", None);
    assert_eq!(d.reason.as_deref(), Some("destination_not_allowed"));
    assert_eq!(e.denials(&o.id).unwrap().len(), 5);
    // Malformed input is an error with a code, not a denial.
    let err = e
        .apply_one(
            now,
            Command::Authorize(commcredits_engine::calls::AuthorizeRequest {
                org: o.id.clone(),
                call_id: "x".into(),
                call_type: "outbound".into(),
                user: Some(o.ada.clone()),
                from: "+14155550100".into(),
                to: "12345".into(),
                requested_seconds: None,
            }),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidPhoneNumber);
    check(&e, &o.id);
}

#[test]
fn auto_recharge_once_per_crossing_and_expired_card_fails() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    e.purchase(&o.id, "50", &o.card, None, None, now).unwrap();
    e.apply_one(
        now,
        Command::SetAutoRecharge {
            org: o.id.clone(),
            enabled: true,
            amount: Some("50".into()),
            threshold: Some("45".into()),
            payment_method_id: Some(o.card.clone()),
        },
    )
    .unwrap();
    // Several calls take the balance below 45: one recharge.
    for i in 0..6 {
        let id = format!("c{i}");
        let a = auth(&e, now, &o.id, &id, "outbound", Some(&o.bob), "+442079460000", "+447400123456", Some(3600));
        assert_eq!(a.decision, "allow");
        end(&e, now, &o.id, &id, 3600);
    }
    let orders = e.orders(&o.id).unwrap();
    let recharges: Vec<_> = orders.iter().filter(|o| o.kind == "auto_recharge").collect();
    assert_eq!(recharges.len(), 1, "{orders:?}");
    assert_eq!(recharges[0].status, "succeeded");
    assert_eq!(e.notices(&o.id).unwrap().iter().filter(|n| n.kind == "recharge_succeeded").count(), 1);
    check(&e, &o.id);

    // A card valid when saved that has expired when the recharge runs.
    let later = t("2026-12-05T10:00:00Z");
    let token = e
        .gateway()
        .tokenize_card(
            &CardInput { number: "5555555555554444".into(), exp_month: 11, exp_year: 2026, holder: "x".into() },
            now,
        )
        .unwrap();
    let short = common::created(e.apply_one(now, Command::AddCard { org: o.id.clone(), token, holder: None }).unwrap());
    let bal = e.credits(&o.id).unwrap().available;
    let threshold = format!("{}.{:02}", bal / 100, bal % 100);
    e.apply_one(
        now,
        Command::SetAutoRecharge {
            org: o.id.clone(),
            enabled: true,
            amount: Some("50".into()),
            threshold: Some(threshold),
            payment_method_id: Some(short),
        },
    )
    .unwrap();
    let a = auth(&e, later, &o.id, "late", "outbound", Some(&o.bob), "+442079460000", "+14155550100", Some(60));
    assert_eq!(a.decision, "allow");
    end(&e, later, &o.id, "late", 60);
    let orders = e.orders(&o.id).unwrap();
    let failed: Vec<_> = orders.iter().filter(|o| o.status == "failed").collect();
    assert_eq!(failed.len(), 1, "{orders:?}");
    assert_eq!(failed[0].failure_reason.as_deref(), Some("expired_card"));
    let n = e.notices(&o.id).unwrap();
    let f = n.iter().find(|n| n.kind == "recharge_failed").unwrap();
    assert!(f.body.contains("expired"), "{}", f.body);
    check(&e, &o.id);
}

#[test]
fn purchases_are_validated() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    assert_eq!(e.purchase(&o.id, "49.99", &o.card, None, None, now).unwrap_err().code, ErrorCode::BelowMinimumPurchase);
    assert_eq!(e.purchase(&o.id, "0", &o.card, None, None, now).unwrap_err().code, ErrorCode::InvalidAmount);
    assert_eq!(e.purchase(&o.id, "-50", &o.card, None, None, now).unwrap_err().code, ErrorCode::InvalidAmount);
    assert_eq!(
        e.purchase(&o.id, "99999999999999999999", &o.card, None, None, now).unwrap_err().code,
        ErrorCode::AmountOverflow
    );
    assert_eq!(e.purchase(&o.id, "50", "nope", None, None, now).unwrap_err().code, ErrorCode::PaymentMethodNotFound);
    let token = e
        .gateway()
        .tokenize_card(
            &CardInput { number: "4000000000000002".into(), exp_month: 1, exp_year: 2030, holder: "x".into() },
            now,
        )
        .unwrap();
    let declined =
        common::created(e.apply_one(now, Command::AddCard { org: o.id.clone(), token, holder: None }).unwrap());
    assert_eq!(e.purchase(&o.id, "50", &declined, None, None, now).unwrap_err().code, ErrorCode::PaymentDeclined);
    let orders = e.orders(&o.id).unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].failure_reason.as_deref(), Some("payment_declined"));
    let ea = common::created(
        e.apply_one(now, Command::AddAgreement { org: o.id.clone(), agreement_number: "EA-1234".into() }).unwrap(),
    );
    let ok = e.purchase(&o.id, "500", &ea, Some("PO-77"), None, now).unwrap();
    assert_eq!(ok.po_number.as_deref(), Some("PO-77"));
    assert_eq!(e.credits(&o.id).unwrap().balance, 50000);
    check(&e, &o.id);
}

#[test]
fn lots_expire_after_twelve_months_and_are_written_off() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    // A purchase migrated from Feb 29 2024 expired on Feb 28 2025; one from Jan 31 2026 expires Jan 31 2027.
    e.purchase(&o.id, "60", &o.card, None, Some(t("2024-02-29T12:00:00Z")), now).unwrap();
    e.purchase(&o.id, "70", &o.card, None, Some(t("2026-01-31T12:00:00Z")), now).unwrap();
    let c = e.credits(&o.id).unwrap();
    assert_eq!(c.balance, 7000, "{c:?}");
    let old = c.lots.iter().find(|l| l.amount == 6000).unwrap();
    assert_eq!(old.expires_at, "2025-02-28T12:00:00Z");
    assert!(old.expired);
    let newer = c.lots.iter().find(|l| l.amount == 7000).unwrap();
    assert_eq!(newer.expires_at, "2027-01-31T12:00:00Z");
    // 30 days before expiry a notice; at expiry the rest is written off.
    let r = e.run_jobs(t("2027-01-05T00:00:00Z")).unwrap();
    assert_eq!(r.expiring_notices, 1);
    let r = e.run_jobs(t("2027-01-06T00:00:00Z")).unwrap();
    assert_eq!(r.expiring_notices, 0);
    let r = e.run_jobs(t("2027-01-31T12:00:00Z")).unwrap();
    assert_eq!(r.lots_expired, 1);
    let c = e.credits(&o.id).unwrap();
    assert_eq!(c.balance, 0);
    let b = e.check_books(&o.id).unwrap();
    assert_eq!((b.purchases, b.expired), (13000, 13000));
}

#[test]
fn reservations_time_out_and_settle_last_reported_usage() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    e.purchase(&o.id, "50", &o.card, None, None, now).unwrap();
    let a = auth(&e, now, &o.id, "c1", "outbound", Some(&o.bob), "+442079460000", "+14155550100", Some(120));
    assert_eq!(a.granted_seconds, 120);
    let u = update(&e, t("2026-11-02T09:01:50Z"), &o.id, "c1", 110, 120);
    assert_eq!(u.granted_seconds, 120);
    assert_eq!(u.total_granted_seconds, 230);
    // Nothing more: at 09:01:50 + 120 s + 30 s grace the reservation expires.
    assert_eq!(e.run_jobs(t("2026-11-02T09:04:19Z")).unwrap().reservations_expired, 0);
    assert_eq!(e.run_jobs(t("2026-11-02T09:04:20Z")).unwrap().reservations_expired, 1);
    let cdr = &e.cdrs(&o.id, t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z")).unwrap()[0];
    assert_eq!(cdr.duration_seconds, 110);
    assert_eq!(e.credits(&o.id).unwrap().reserved, 0);
    let err =
        e.apply_one(now, Command::End { org: o.id.clone(), call_id: "nope".into(), duration_seconds: 1 }).unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownCall);
    check(&e, &o.id);
}

#[test]
fn licenses_seats_and_requirements() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    let u = created(
        e.apply_one(
            now,
            Command::CreateUser {
                org: o.id.clone(),
                upn: "dee@contoso.com".into(),
                display_name: "Dee".into(),
                usage_location: "DE".into(),
                phone_number: Some("+4930123456".into()),
            },
        )
        .unwrap(),
    );
    let err = e
        .apply_one(
            now,
            Command::AssignLicense { org: o.id.clone(), sku: "calling_plan_domestic".into(), users: vec![u.clone()] },
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::LicenseRequiresPhoneSystem);
    e.apply_one(now, Command::AddSubscription { org: o.id.clone(), sku: "e5".into(), quantity: 1 }).unwrap();
    e.apply_one(
        now,
        Command::SetLicenses {
            org: o.id.clone(),
            user: u.clone(),
            skus: vec!["e5".into(), "calling_plan_domestic".into()],
        },
    )
    .unwrap();
    let pools = e.pools(&o.id, now).unwrap();
    assert!(pools.iter().any(|p| p.country == "DE" && p.kind == "domestic" && p.size == 1200), "{pools:?}");
    assert!(pools.iter().any(|p| p.country == "*" && p.kind == "conferencing" && p.size == 60), "{pools:?}");
    // Bulk assignment is all-or-nothing: 5 credits seats, 2 used, 4 asked.
    let extra: Vec<String> = (0..4)
        .map(|i| {
            created(
                e.apply_one(
                    now,
                    Command::CreateUser {
                        org: o.id.clone(),
                        upn: format!("x{i}@contoso.com"),
                        display_name: "x".into(),
                        usage_location: "US".into(),
                        phone_number: None,
                    },
                )
                .unwrap(),
            )
        })
        .collect();
    let err = e
        .apply_one(
            now,
            Command::AssignLicense { org: o.id.clone(), sku: "communications_credits".into(), users: extra.clone() },
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NoFreeSeat);
    assert!(
        e.users(&o.id).unwrap().iter().filter(|u| u.licenses.contains(&"communications_credits".to_string())).count()
            == 2
    );
    assert_eq!(
        e.apply_one(now, Command::AssignLicense { org: o.id.clone(), sku: "nope".into(), users: extra })
            .unwrap_err()
            .code,
        ErrorCode::InvalidSku
    );
    let dup = e
        .apply_one(
            now,
            Command::CreateUser {
                org: o.id.clone(),
                upn: "DEE@contoso.com".into(),
                display_name: "x".into(),
                usage_location: "DE".into(),
                phone_number: None,
            },
        )
        .unwrap_err();
    assert_eq!(dup.code, ErrorCode::DuplicateUpn);
}

#[test]
fn early_answers_after_a_lot_expires_keep_the_books() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    // A lot bought almost a year ago; a call ends; the lot then expires.
    e.purchase(&o.id, "50", &o.card, None, Some(t("2025-11-02T10:00:00Z")), now).unwrap();
    let a = auth(&e, now, &o.id, "c1", "outbound", Some(&o.bob), "+442079460000", "+14155550100", Some(60));
    assert_eq!(a.decision, "allow");
    end(&e, now, &o.id, "c1", 60);
    let later = t("2026-11-02T10:00:01Z");
    // A repeated end, a timeout that is not due and a completed order each answer
    // early; the write-off they trigger must still be saved whole.
    end(&e, later, &o.id, "c1", 60);
    check(&e, &o.id);
    let c = e.credits(&o.id).unwrap();
    assert_eq!(c.balance, 0);
    assert!(c.lots[0].expired);
    // The balance reached zero by expiry: admins are told once.
    let n = e.notices(&o.id).unwrap();
    assert_eq!(n.iter().filter(|n| n.kind == "balance_exhausted").count(), 1, "{n:?}");
}

#[test]
fn a_never_funded_account_is_not_reported_exhausted_by_settings() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    e.apply_one(
        now,
        Command::SetAutoRecharge {
            org: o.id.clone(),
            enabled: false,
            amount: Some("50".into()),
            threshold: Some("10".into()),
            payment_method_id: Some(o.card.clone()),
        },
    )
    .unwrap();
    assert!(e.notices(&o.id).unwrap().is_empty());
}

#[test]
fn update_without_credits_stops_at_the_plan_with_its_reason() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    for (i, m) in [1440u32, 1440, 1440, 1440, 239].into_iter().enumerate() {
        let id = format!("fill{i}");
        auth(&e, now, &o.id, &id, "outbound", Some(&o.ada), "+14155550100", "+12125550199", Some(m * 60));
        end(&e, now, &o.id, &id, m * 60);
    }
    // One plan minute left; Cy has no credits license.
    let a = auth(&e, now, &o.id, "cy", "outbound", Some(&o.cy), "+14155550100", "+12125550123", Some(300));
    assert_eq!((a.decision.as_str(), a.granted_seconds), ("allow", 60));
    let u = update(&e, now, &o.id, "cy", 50, 300);
    assert_eq!(u.granted_seconds, 0);
    assert_eq!(u.reason.as_deref(), Some("plan_minutes_exhausted"));
    assert_eq!(u.total_granted_seconds, 60);
    let v = end(&e, now, &o.id, "cy", 75);
    assert_eq!((v.charged_seconds, v.overrun_seconds, v.charge), (60, 15, 0));
    check(&e, &o.id);
}

#[test]
fn pools_follow_licenses_as_they_come_and_go() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    let size = |e: &commcredits_engine::Engine| {
        e.pools(&o.id, now)
            .unwrap()
            .into_iter()
            .find(|p| p.country == "US" && p.kind == "domestic")
            .map(|p| (p.size, p.used, p.available))
    };
    assert_eq!(size(&e), Some((6000, 0, 6000)));
    // Use 4000 minutes, then take Cy's plan away: the pool shrinks below its use.
    for (i, m) in [1440u32, 1440, 1120].into_iter().enumerate() {
        let id = format!("u{i}");
        auth(&e, now, &o.id, &id, "outbound", Some(&o.ada), "+14155550100", "+12125550199", Some(m * 60));
        end(&e, now, &o.id, &id, m * 60);
    }
    e.apply_one(
        now,
        Command::RemoveLicense { org: o.id.clone(), sku: "calling_plan_domestic".into(), users: vec![o.cy.clone()] },
    )
    .unwrap();
    assert_eq!(size(&e), Some((3000, 4000, 0)));
    // Ada's next domestic call goes to credits (she holds them), and there are none yet.
    let d = auth(&e, now, &o.id, "after", "outbound", Some(&o.ada), "+14155550100", "+12125550123", None);
    assert_eq!(d.reason.as_deref(), Some("insufficient_funds"));
    // Licenses come back: the pool grows again within the month.
    e.apply_one(
        now,
        Command::AssignLicense { org: o.id.clone(), sku: "calling_plan_domestic".into(), users: vec![o.cy.clone()] },
    )
    .unwrap();
    assert_eq!(size(&e), Some((6000, 4000, 2000)));
    let a = auth(&e, now, &o.id, "again", "outbound", Some(&o.ada), "+14155550100", "+12125550123", None);
    assert_eq!(a.funding, "plan");
    // A new month starts empty.
    let december = t("2026-12-01T00:00:00Z");
    let r = e.run_jobs(december).unwrap();
    assert!(r.pools_opened >= 1);
    let dec = e.pools(&o.id, december).unwrap();
    let us = dec.iter().find(|p| p.country == "US" && p.kind == "domestic").unwrap();
    assert_eq!((us.month.as_str(), us.used), ("2026-12", 0));
    check(&e, &o.id);
}

#[test]
fn conference_dial_out_uses_the_zone_a_pool_then_credits() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    e.purchase(&o.id, "50", &o.card, None, None, now).unwrap();
    // Without Audio Conferencing there is no dial-out.
    let d = auth(&e, now, &o.id, "x", "conference_dial_out", Some(&o.ada), "+14155550100", "+442079460000", None);
    assert_eq!(d.reason.as_deref(), Some("dial_out_disabled"));
    e.apply_one(
        now,
        Command::AssignLicense { org: o.id.clone(), sku: "audio_conferencing".into(), users: vec![o.ada.clone()] },
    )
    .unwrap();
    // Zone A (GB): the organization-wide 60-minute pool pays.
    let a =
        auth(&e, now, &o.id, "gb", "conference_dial_out", Some(&o.ada), "+14155550100", "+442079460000", Some(3600));
    assert_eq!((a.funding.as_str(), a.pool.as_deref()), ("plan", Some("*/conferencing")));
    end(&e, now, &o.id, "gb", 3600);
    // Pool used up: the next Zone A call is paid from Ada's credits.
    let a = auth(&e, now, &o.id, "de", "conference_dial_out", Some(&o.ada), "+14155550100", "+4930123456", Some(300));
    assert_eq!(a.funding, "credits");
    end(&e, now, &o.id, "de", 300);
    // Nigeria is not in Zone A: credits at the dial-out rate, never the pool.
    let a =
        auth(&e, now, &o.id, "ng", "conference_dial_out", Some(&o.ada), "+14155550100", "+2348031234567", Some(300));
    assert_eq!((a.funding.as_str(), a.pool), ("credits", None));
    let kinds: Vec<String> = e.notices(&o.id).unwrap().into_iter().map(|n| n.kind).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "pool_threshold").count(), 2);
    check(&e, &o.id);
}

#[test]
fn concurrent_calls_never_overspend_and_recharge_once() {
    let e = std::sync::Arc::new(engine());
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    // An EA so recharges succeed; 100.00 of funds, recharge 50.00 below 95.00. The
    // 72.00 the calls spend never empties the balance, so no call waits on a recharge.
    let ea = created(
        e.apply_one(now, Command::AddAgreement { org: o.id.clone(), agreement_number: "EA-1".into() }).unwrap(),
    );
    e.purchase(&o.id, "100", &ea, None, None, now).unwrap();
    e.apply_one(
        now,
        Command::SetAutoRecharge {
            org: o.id.clone(),
            enabled: true,
            amount: Some("50".into()),
            threshold: Some("95".into()),
            payment_method_id: Some(ea.clone()),
        },
    )
    .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|th| {
            let (e, org, bob) = (e.clone(), o.id.clone(), o.bob.clone());
            std::thread::spawn(move || {
                for i in 0..10 {
                    let id = format!("t{th}-{i}");
                    // UK mobile at 0.09/min: ten minutes reserve 0.90.
                    let a =
                        auth(&e, now, &org, &id, "outbound", Some(&bob), "+442079460000", "+447400123456", Some(600));
                    assert_eq!(a.decision, "allow", "{a:?}");
                    end(&e, now, &org, &id, 600);
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let b = e.check_books(&o.id).unwrap();
    assert!(b.available >= 0);
    // 80 calls at 0.90 = 72.00. The first fall below 95.00 places one order. Whether
    // a second crossing happens depends on when the first recharge lands (calls keep
    // spending while it is charged): after it lands the balance is 150.00 less what was
    // spent, re-armed only if that is at least 95.00. One or two orders, never more.
    let recharges = e.orders(&o.id).unwrap().into_iter().filter(|o| o.kind == "auto_recharge").count();
    assert!((1..=2).contains(&recharges), "{recharges} recharges");
    assert_eq!(b.charges, 7200);
    assert_eq!(b.balance, 10000 + 5000 * recharges as i64 - 7200, "{:?}", e.orders(&o.id).unwrap());
}

#[test]
fn usage_reported_lower_than_before_is_ignored() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    e.purchase(&o.id, "50", &o.card, None, None, now).unwrap();
    auth(&e, now, &o.id, "c1", "outbound", Some(&o.bob), "+442079460000", "+447400123456", Some(300));
    assert_eq!(update(&e, now, &o.id, "c1", 200, 0).used_seconds, 200);
    // A confused call control reports less: the call keeps the higher figure, so a
    // timeout settles what was really used.
    assert_eq!(update(&e, now, &o.id, "c1", 30, 0).used_seconds, 200);
    assert_eq!(e.run_jobs(t("2026-11-02T10:00:00Z")).unwrap().reservations_expired, 1);
    let cdr = &e.cdrs(&o.id, t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z")).unwrap()[0];
    assert_eq!(cdr.duration_seconds, 200);
    check(&e, &o.id);
}

#[test]
fn an_order_left_pending_by_a_crash_is_charged_once_by_the_jobs() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    // The process died after committing the order and before asking the gateway.
    let order = commcredits_store::OrderRow {
        org_id: o.id.clone(),
        order_id: "ord-crash".into(),
        kind: "purchase".into(),
        amount_minor: 7500,
        currency: "USD".into(),
        payment_method_id: o.card.clone(),
        po_number: None,
        status: "pending".into(),
        failure_reason: None,
        lot_id: None,
        created_at: now,
        completed_at: None,
    };
    e.store().write(&mut |tx| tx.insert_order(&order)).unwrap();
    assert_eq!(e.credits(&o.id).unwrap().balance, 0);
    let r = e.run_jobs(now + jiff::SignedDuration::from_secs(60)).unwrap();
    assert_eq!(r.orders_charged, 1);
    let done = e.orders(&o.id).unwrap().into_iter().find(|x| x.id == "ord-crash").unwrap();
    assert_eq!(done.status, "succeeded");
    assert_eq!(e.credits(&o.id).unwrap().balance, 7500);
    // A second run finds nothing pending and charges nothing.
    assert_eq!(e.run_jobs(now + jiff::SignedDuration::from_secs(120)).unwrap().orders_charged, 0);
    assert_eq!(e.credits(&o.id).unwrap().balance, 7500);
    let b = e.check_books(&o.id).unwrap();
    assert_eq!(b.purchases, 7500);
}
