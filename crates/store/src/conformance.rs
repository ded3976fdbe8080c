//! The conformance suite: behaviour every [`Store`] adapter must show. Each function
//! takes a factory that opens a fresh, empty store; `crate::conformance_tests!` turns
//! them into `#[test]`s for one adapter, so SQLite and PostgreSQL run the very same
//! checks.

use crate::rows::*;
use crate::{Store, Tx};
use commcredits_core::{Error, ErrorCode, Result, Timestamp};
use std::sync::Arc;

pub type Factory<'a> = &'a dyn Fn() -> Box<dyn Store>;

fn t(s: &str) -> Timestamp {
    s.parse().expect("test timestamp")
}

fn org(id: &str) -> OrgRow {
    OrgRow {
        org_id: id.into(),
        name: format!("Org {id}"),
        currency: "USD".into(),
        country: "US".into(),
        notification_emails: vec!["billing@example.com".into(), "it@example.com".into()],
        low_balance_minor: Some(1000),
        suspended: false,
        created_at: t("2026-01-01T00:00:00Z"),
        disabled_notices: vec!["low_balance".into()],
    }
}

pub(crate) fn account(org_id: &str, balance: i64, reserved: i64) -> AccountRow {
    AccountRow {
        org_id: org_id.into(),
        currency: "USD".into(),
        balance_minor: balance,
        reserved_minor: reserved,
        ar_enabled: false,
        ar_amount_minor: 0,
        ar_threshold_minor: 0,
        ar_payment_method_id: None,
        ar_armed: true,
        exhausted_notified: false,
        low_balance_notified: false,
    }
}

fn ledger(org_id: &str, kind: &str, amount: i64) -> LedgerRow {
    LedgerRow {
        seq: 0,
        org_id: org_id.into(),
        entry_id: format!("{kind}-{amount}"),
        kind: kind.into(),
        amount_minor: amount,
        balance_after_minor: 0,
        lot_id: None,
        call_id: None,
        order_id: None,
        at: t("2026-01-02T00:00:00Z"),
        memo: String::new(),
    }
}

fn write(store: &dyn Store, mut f: impl FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
    store.write(&mut |tx| f(tx))
}

fn read<T>(store: &dyn Store, mut f: impl FnMut(&mut dyn Tx) -> Result<T>) -> T {
    let mut out = None;
    store
        .read(&mut |tx| {
            out = Some(f(tx)?);
            Ok(())
        })
        .expect("read");
    out.expect("read produced a value")
}

pub fn orgs_and_users_round_trip(open: Factory) {
    let s = open();
    let o = org("o1");
    let u = UserRow {
        org_id: "o1".into(),
        user_id: "u1".into(),
        upn: "ada@example.com".into(),
        display_name: "Ada".into(),
        usage_location: "US".into(),
        phone_number: Some("+14155550100".into()),
        dial_out: "international".into(),
        conference_dial_out: "domestic".into(),
        spend_limit_minor: Some(2500),
        created_at: t("2026-01-01T00:00:01Z"),
    };
    write(&*s, |tx| {
        tx.insert_org(&o)?;
        tx.insert_user(&u)?;
        tx.set_subscription("o1", "phone_system", 5)?;
        tx.set_subscription("o1", "phone_system", 7)?;
        tx.set_user_licenses("o1", "u1", &["phone_system".into(), "calling_plan_domestic".into()])
    })
    .unwrap();
    assert_eq!(read(&*s, |tx| tx.get_org("o1")), Some(o.clone()));
    assert_eq!(read(&*s, |tx| tx.get_org("nope")), None);
    assert_eq!(read(&*s, |tx| tx.find_org_by_name("Org o1")).len(), 1);
    assert_eq!(read(&*s, |tx| tx.get_user_by_upn("o1", "ada@example.com")), Some(u.clone()));
    // Another organization never sees this one's users.
    assert_eq!(read(&*s, |tx| tx.get_user("o2", "u1")), None);
    assert_eq!(read(&*s, |tx| tx.list_subscriptions("o1")), vec![("phone_system".to_string(), 7)]);
    assert_eq!(read(&*s, |tx| tx.seats_used("o1", "phone_system")), 1);
    assert_eq!(read(&*s, |tx| tx.count_licensed_users("o1", Some("US"), &["calling_plan_domestic".into()])), 1);
    assert_eq!(read(&*s, |tx| tx.count_licensed_users("o1", Some("GB"), &["calling_plan_domestic".into()])), 0);
    let mut changed = u.clone();
    changed.spend_limit_minor = None;
    changed.dial_out = "disabled".into();
    write(&*s, |tx| tx.update_user(&changed)).unwrap();
    assert_eq!(read(&*s, |tx| tx.get_user("o1", "u1")), Some(changed.clone()));
}

pub fn failed_write_leaves_nothing(open: Factory) {
    let s = open();
    let r = write(&*s, |tx| {
        tx.insert_org(&org("o1"))?;
        Err(Error::new(ErrorCode::InvalidInput, "refused"))
    });
    assert_eq!(r.unwrap_err().code, ErrorCode::InvalidInput);
    assert_eq!(read(&*s, |tx| tx.get_org("o1")), None);
}

/// The batch path: a failed command inside its savepoint is undone alone, the rest commits.
pub fn savepoints_isolate_commands_in_a_batch(open: Factory) {
    let s = open();
    write(&*s, |tx| {
        for id in ["a", "b", "c"] {
            tx.savepoint()?;
            let r = tx.insert_org(&org(id)).and_then(|_| {
                if id == "b" {
                    Err(Error::new(ErrorCode::InvalidInput, "b fails"))
                } else {
                    Ok(())
                }
            });
            match r {
                Ok(()) => tx.release_savepoint()?,
                Err(_) => tx.rollback_savepoint()?,
            }
        }
        Ok(())
    })
    .unwrap();
    let ids: Vec<String> = read(&*s, |tx| tx.list_orgs()).into_iter().map(|o| o.org_id).collect();
    assert_eq!(ids, vec!["a".to_string(), "c".to_string()]);
}

pub fn ledger_is_append_only_and_paginates(open: Factory) {
    let s = open();
    write(&*s, |tx| {
        tx.insert_org(&org("o1"))?;
        tx.append_ledger(&ledger("o1", "purchase", 5000))?;
        tx.append_ledger(&ledger("o1", "charge", -120))?;
        tx.append_ledger(&ledger("o1", "charge", -30))?;
        tx.append_ledger(&ledger("o2", "purchase", 999))?;
        Ok(())
    })
    .unwrap();
    let page1 = read(&*s, |tx| tx.list_ledger("o1", 0, 2));
    assert_eq!(page1.len(), 2);
    assert!(page1[0].seq < page1[1].seq);
    let page2 = read(&*s, |tx| tx.list_ledger("o1", page1[1].seq, 2));
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0].amount_minor, -30);
    let totals = read(&*s, |tx| tx.ledger_totals("o1"));
    assert_eq!(totals, vec![("charge".to_string(), -150), ("purchase".to_string(), 5000)]);
}

pub fn accounts_and_lots_round_trip_and_refuse_negative_available(open: Factory) {
    let s = open();
    let lot = LotRow {
        org_id: "o1".into(),
        lot_id: "l1".into(),
        order_id: Some("ord1".into()),
        amount_minor: 5000,
        remaining_minor: 5000,
        reserved_minor: 0,
        purchased_at: t("2024-02-29T12:00:00Z"),
        expires_at: t("2025-02-28T12:00:00Z"),
        expired: false,
        expiring_notified: false,
    };
    write(&*s, |tx| {
        tx.insert_org(&org("o1"))?;
        tx.insert_account(&account("o1", 5000, 0))?;
        tx.insert_lot(&lot)
    })
    .unwrap();
    assert_eq!(read(&*s, |tx| tx.open_lots("o1")), vec![lot.clone()]);
    let mut a = account("o1", 5000, 100);
    a.ar_enabled = true;
    a.ar_payment_method_id = Some("pm".into());
    write(&*s, |tx| tx.update_account(&a)).unwrap();
    assert_eq!(read(&*s, |tx| tx.get_account("o1")), Some(a.clone()));
    // reserved > balance would make available negative: the store refuses it.
    let bad = account("o1", 50, 100);
    assert!(write(&*s, |tx| tx.update_account(&bad)).is_err());
    let mut spent = lot.clone();
    spent.remaining_minor = 0;
    write(&*s, |tx| tx.update_lot(&spent)).unwrap();
    assert!(read(&*s, |tx| tx.open_lots("o1")).is_empty());
    assert_eq!(read(&*s, |tx| tx.list_lots("o1")).len(), 1);
    assert_eq!(read(&*s, |tx| tx.due_lots(t("2025-03-01T00:00:00Z"), 10)), vec![("o1".to_string(), "l1".to_string())]);
    assert!(read(&*s, |tx| tx.due_lots(t("2025-02-28T11:59:59Z"), 10)).is_empty());
}

pub fn orders_pools_spend_and_notices(open: Factory) {
    let s = open();
    let mut o = OrderRow {
        org_id: "o1".into(),
        order_id: "ord1".into(),
        kind: "auto_recharge".into(),
        amount_minor: 5000,
        currency: "USD".into(),
        payment_method_id: "pm1".into(),
        po_number: Some("PO-7".into()),
        status: "pending".into(),
        failure_reason: None,
        lot_id: None,
        created_at: t("2026-03-01T00:00:00Z"),
        completed_at: None,
    };
    let pool = PoolUsageRow {
        org_id: "o1".into(),
        scope: "US".into(),
        kind: "domestic".into(),
        month: 202603,
        used_minutes: 10,
        reserved_minutes: 5,
        notified_80: false,
        notified_100: false,
    };
    let notice = NoticeRow {
        seq: 0,
        org_id: "o1".into(),
        notice_id: "n1".into(),
        kind: "recharge_failed".into(),
        created_at: t("2026-03-01T00:00:01Z"),
        subject: "Recharge failed".into(),
        body: "expired card".into(),
        data: "{\"reason\":\"expired_card\"}".into(),
        status: "pending".into(),
    };
    write(&*s, |tx| {
        tx.insert_order(&o)?;
        tx.put_pool_usage(&pool)?;
        tx.put_user_spend(&UserSpendRow {
            org_id: "o1".into(),
            user_id: "u1".into(),
            month: 202603,
            spent_minor: 10,
            reserved_minor: 5,
        })?;
        tx.insert_notice(&notice)
    })
    .unwrap();
    assert_eq!(read(&*s, |tx| tx.pending_orders(10)), vec![("o1".to_string(), "ord1".to_string())]);
    o.status = "failed".into();
    o.failure_reason = Some("expired_card".into());
    o.completed_at = Some(t("2026-03-01T00:00:02Z"));
    write(&*s, |tx| tx.update_order(&o)).unwrap();
    assert_eq!(read(&*s, |tx| tx.get_order("o1", "ord1")), Some(o.clone()));
    assert!(read(&*s, |tx| tx.pending_orders(10)).is_empty());
    let mut p2 = pool.clone();
    p2.used_minutes = 15;
    p2.notified_80 = true;
    write(&*s, |tx| tx.put_pool_usage(&p2)).unwrap();
    assert_eq!(read(&*s, |tx| tx.get_pool_usage("o1", 202603, "US", "domestic")), Some(p2.clone()));
    assert!(read(&*s, |tx| tx.list_pool_usage("o1", 202604)).is_empty());
    assert_eq!(read(&*s, |tx| tx.get_user_spend("o1", "u1", 202603)).unwrap().spent_minor, 10);
    let n = read(&*s, |tx| tx.list_notices("o1"));
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].data, notice.data);
}

/// The CDRs of 1 March 2026 as `for_each_cdr` hands them over.
fn stream(store: &dyn Store, org_id: &str) -> Vec<CdrRow> {
    let mut streamed = Vec::new();
    store
        .read(&mut |tx| {
            tx.for_each_cdr(org_id, t("2026-03-01T00:00:00Z"), t("2026-03-02T00:00:00Z"), &mut |c| {
                streamed.push(c.clone());
                Ok(())
            })
        })
        .unwrap();
    streamed
}

pub fn reservations_cdrs_and_due_scans(open: Factory) {
    let s = open();
    let r = ReservationRow {
        org_id: "o1".into(),
        call_id: "c1".into(),
        call_type: "outbound".into(),
        user_id: Some("u1".into()),
        from_number: "+14155550100".into(),
        to_number: "+442079460000".into(),
        state: "pending".into(),
        created_at: t("2026-03-01T10:00:00Z"),
        updated_at: t("2026-03-01T10:00:00Z"),
        expires_at: t("2026-03-01T10:05:30Z"),
        granted_seconds: 300,
        used_seconds: 0,
        plan_scope: Some("US".into()),
        plan_kind: Some("international".into()),
        plan_month: Some(202603),
        plan_minutes: 2,
        money_minor: 36,
        earmarks: "l1:36".into(),
        spend_month: 202603,
        rate_prefix: Some("44".into()),
        rate_name: Some("United Kingdom".into()),
        rate_per_minute: Some("0.0120".into()),
        connection_fee_minor: 0,
        increment_seconds: 60,
        domestic: false,
        dest_country: Some("GB".into()),
        emergency: false,
    };
    write(&*s, |tx| tx.insert_reservation(&r)).unwrap();
    assert!(write(&*s, |tx| tx.insert_reservation(&r)).is_err(), "call ids are unique per organization");
    assert_eq!(read(&*s, |tx| tx.get_reservation("o1", "c1")), Some(r.clone()));
    // Which of many call ids are taken: more ids than one statement binds, in any order,
    // another organization's ids not counted.
    let many: Vec<String> = (0..1_200).map(|i| format!("x{i}")).chain(["c1".to_string()]).rev().collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(read(&*s, |tx| tx.reserved_call_ids("o1", &many)), vec!["c1".to_string()]);
    assert!(read(&*s, |tx| tx.reserved_call_ids("o2", &many)).is_empty());
    assert!(read(&*s, |tx| tx.reserved_call_ids("o1", &[])).is_empty());
    assert_eq!(read(&*s, |tx| tx.count_pending_reservations("o1")), 1);
    assert_eq!(read(&*s, |tx| tx.pending_reservations("o1")), vec![r.clone()]);
    assert!(read(&*s, |tx| tx.due_reservations(t("2026-03-01T10:05:29Z"), 10)).is_empty());
    assert_eq!(read(&*s, |tx| tx.due_reservations(t("2026-03-01T10:05:30Z"), 10)).len(), 1);
    let mut done = r.clone();
    done.state = "settled".into();
    done.used_seconds = 125;
    write(&*s, |tx| tx.update_reservation(&done)).unwrap();
    assert!(read(&*s, |tx| tx.due_reservations(t("2026-03-02T00:00:00Z"), 10)).is_empty());
    let cdr = CdrRow {
        org_id: "o1".into(),
        call_id: "c1".into(),
        usage_id: "usage-1".into(),
        call_type: "outbound".into(),
        user_id: Some("u1".into()),
        from_number: r.from_number.clone(),
        to_number: r.to_number.clone(),
        dest_country: Some("GB".into()),
        domestic: false,
        start_at: t("2026-03-01T10:00:00Z"),
        end_at: t("2026-03-01T10:02:05Z"),
        duration_seconds: 125,
        charged_seconds: 125,
        overrun_seconds: 0,
        plan_minutes: 2,
        plan_kind: Some("international".into()),
        charge_minor: 1,
        connection_fee_minor: 0,
        currency: "USD".into(),
        funding: "plan_and_credits".into(),
        rate_name: Some("United Kingdom".into()),
        rate_per_minute: Some("0.0120".into()),
        source: "realtime".into(),
    };
    write(&*s, |tx| {
        tx.insert_cdr(&cdr)?;
        tx.insert_denial(&DenialRow {
            seq: 0,
            org_id: "o1".into(),
            at: t("2026-03-01T11:00:00Z"),
            call_id: "c2".into(),
            call_type: "outbound".into(),
            user_id: Some("u1".into()),
            to_number: "+33612345678".into(),
            reason: "insufficient_funds".into(),
        })
    })
    .unwrap();
    assert_eq!(read(&*s, |tx| tx.get_cdr("o1", "c1")), Some(cdr.clone()));
    assert_eq!(read(&*s, |tx| tx.list_cdrs("o1", t("2026-03-01T00:00:00Z"), t("2026-03-02T00:00:00Z"))).len(), 1);
    assert!(read(&*s, |tx| tx.list_cdrs("o1", t("2026-03-01T10:00:01Z"), t("2026-03-02T00:00:00Z"))).is_empty());
    assert_eq!(stream(&*s, "o1"), vec![cdr.clone()]);
    // Several rows stream in order, each whole: a toll-free call (no user, no plan, no
    // rate name) between two others, and a call at the same instant ordered by call id.
    let toll_free = CdrRow {
        call_id: "c0".into(),
        usage_id: "usage-0".into(),
        call_type: "toll_free_inbound".into(),
        user_id: None,
        dest_country: None,
        plan_kind: None,
        rate_name: None,
        rate_per_minute: None,
        source: "import".into(),
        ..cdr.clone()
    };
    let later = CdrRow {
        call_id: "c9".into(),
        usage_id: "usage-9".into(),
        start_at: t("2026-03-01T10:30:00Z"),
        from_number: "+4930123456789".into(),
        ..cdr.clone()
    };
    write(&*s, |tx| tx.insert_cdrs(&[later.clone(), toll_free.clone()])).unwrap();
    assert_eq!(stream(&*s, "o1"), vec![toll_free, cdr.clone(), later]);
    assert_eq!(read(&*s, |tx| tx.list_denials("o1"))[0].reason, "insufficient_funds");
}

pub fn rate_decks_replace(open: Factory) {
    let s = open();
    let mut d = RateDeckRow {
        kind: "outbound".into(),
        currency: "USD".into(),
        csv: "a".into(),
        entries: 1,
        imported_at: t("2026-01-01T00:00:00Z"),
    };
    write(&*s, |tx| tx.put_rate_deck(&d)).unwrap();
    d.csv = "b".into();
    d.entries = 2;
    write(&*s, |tx| tx.put_rate_deck(&d)).unwrap();
    assert_eq!(read(&*s, |tx| tx.list_rate_decks()), vec![d.clone()]);
}

pub fn api_keys_and_idempotency(open: Factory) {
    let s = open();
    let k = ApiKeyRow {
        org_id: "o1".into(),
        key_id: "k1".into(),
        role: "admin".into(),
        name: "ci".into(),
        secret_hash: "ab".repeat(32),
        created_at: t("2026-01-01T00:00:00Z"),
        revoked_at: None,
    };
    write(&*s, |tx| tx.insert_api_key(&k)).unwrap();
    assert_eq!(read(&*s, |tx| tx.find_api_key(&"ab".repeat(32))), Some(k.clone()));
    assert_eq!(read(&*s, |tx| tx.list_api_keys("o1")).len(), 1);
    assert!(read(&*s, |tx| tx.list_api_keys("")).is_empty());
    let mut revoked = false;
    write(&*s, |tx| {
        revoked = tx.revoke_api_key("o1", "k1", t("2026-02-01T00:00:00Z"))?;
        Ok(())
    })
    .unwrap();
    assert!(revoked);
    assert!(read(&*s, |tx| tx.find_api_key(&"ab".repeat(32))).unwrap().revoked_at.is_some());
    let mut again = true;
    write(&*s, |tx| {
        again = tx.revoke_api_key("o1", "k1", t("2026-02-02T00:00:00Z"))?;
        Ok(())
    })
    .unwrap();
    assert!(!again, "a key is revoked once");
    let mut i = IdempotencyRow {
        org_id: "o1".into(),
        key: "abc".into(),
        fingerprint: "f".into(),
        status: 201,
        body: "{}".into(),
        created_at: t("2026-01-01T00:00:00Z"),
        expires_at: t("2026-01-02T00:00:00Z"),
        call_id: None,
    };
    write(&*s, |tx| tx.put_idempotency(&i)).unwrap();
    // A put replaces every field.
    i.body = "{\"id\":1}".into();
    i.fingerprint = "g".into();
    i.expires_at = t("2026-01-03T00:00:00Z");
    i.call_id = Some("c1".into());
    write(&*s, |tx| tx.put_idempotency(&i)).unwrap();
    assert_eq!(read(&*s, |tx| tx.get_idempotency("o1", "abc")), Some(i.clone()));
    assert_eq!(read(&*s, |tx| tx.get_idempotency("o2", "abc")), None);
    write(&*s, |tx| tx.delete_idempotency("o1", "abc")).unwrap();
    assert_eq!(read(&*s, |tx| tx.get_idempotency("o1", "abc")), None);
}

fn claim(key: &str, token: &str, at: &str, lease_until: &str) -> IdempotencyRow {
    IdempotencyRow {
        org_id: "o1".into(),
        key: key.into(),
        fingerprint: "f".into(),
        status: 0,
        body: token.into(),
        created_at: t(at),
        expires_at: t(lease_until),
        call_id: None,
    }
}

fn taken(s: &dyn Store, i: &IdempotencyRow, now: &str) -> bool {
    let mut out = false;
    write(s, |tx| {
        out = tx.take_idempotency(i, t(now))?;
        Ok(())
    })
    .unwrap();
    out
}

/// A key is taken by one request at a time: a live record (a claim within its lease,
/// an answer within its time to live) stays; a lapsed one is replaced; only the holder
/// of a claim can refresh it or answer.
pub fn idempotency_claims_lapse_and_only_their_holder_answers(open: Factory) {
    let s = open();
    let first = claim("k", "token-1", "2026-01-01T00:00:00Z", "2026-01-01T00:02:00Z");
    assert!(taken(&*s, &first, "2026-01-01T00:00:00Z"), "a new key is taken");
    let second = claim("k", "token-2", "2026-01-01T00:01:00Z", "2026-01-01T00:03:00Z");
    assert!(!taken(&*s, &second, "2026-01-01T00:01:00Z"), "a claim within its lease is not taken");
    assert_eq!(read(&*s, |tx| tx.get_idempotency("o1", "k")), Some(first.clone()));
    // The holder refreshes its lease; another token cannot.
    let mut refreshed = first.clone();
    refreshed.expires_at = t("2026-01-01T00:04:00Z");
    let replace = |i: &IdempotencyRow, token: &str| {
        let mut out = false;
        write(&*s, |tx| {
            out = tx.replace_claim(i, token)?;
            Ok(())
        })
        .unwrap();
        out
    };
    assert!(!replace(&refreshed, "token-2"));
    assert!(replace(&refreshed, "token-1"));
    assert!(!taken(&*s, &second, "2026-01-01T00:03:00Z"), "the refreshed lease still holds");
    // Once the lease lapses (at its instant), another request takes the key; the first
    // holder can then neither refresh nor answer.
    assert!(taken(&*s, &second, "2026-01-01T00:04:00Z"));
    assert_eq!(read(&*s, |tx| tx.get_idempotency("o1", "k")), Some(second.clone()));
    let mut answer = second.clone();
    answer.status = 200;
    answer.body = "{\"rows\":3}".into();
    answer.expires_at = t("2026-01-02T00:04:00Z");
    assert!(!replace(&answer, "token-1"));
    assert!(replace(&answer, "token-2"));
    assert!(!replace(&answer, "token-2"), "an answered key is no claim any more");
    assert_eq!(read(&*s, |tx| tx.get_idempotency("o1", "k")), Some(answer.clone()));
    // An answer within its time to live is not taken either; an expired one is.
    let third = claim("k", "token-3", "2026-01-01T12:00:00Z", "2026-01-01T12:02:00Z");
    assert!(!taken(&*s, &third, "2026-01-01T12:00:00Z"));
    assert!(taken(&*s, &third, "2026-01-02T00:04:00Z"));
    assert_eq!(read(&*s, |tx| tx.get_idempotency("o1", "k")), Some(third));
    // Another organization's key of the same name is its own.
    let mut other = claim("k", "token-o2", "2026-01-01T00:00:00Z", "2026-01-01T00:02:00Z");
    other.org_id = "o2".into();
    assert!(taken(&*s, &other, "2026-01-01T00:00:00Z"));
}

/// Of writers racing for one lapsed claim, exactly one takes it.
pub fn a_lapsed_claim_is_taken_once(open: Factory) {
    let s: Arc<dyn Store> = Arc::from(open());
    let stale = claim("k", "crashed", "2026-01-01T00:00:00Z", "2026-01-01T00:02:00Z");
    assert!(taken(&*s, &stale, "2026-01-01T00:00:00Z"));
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|n| {
            let (s, barrier) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mine = claim("k", &format!("token-{n}"), "2026-01-01T01:00:00Z", "2026-01-01T01:02:00Z");
                barrier.wait();
                taken(&*s, &mine, "2026-01-01T01:00:00Z")
            })
        })
        .collect();
    let winners: Vec<bool> = threads.into_iter().map(|th| th.join().unwrap()).filter(|w| *w).collect();
    assert_eq!(winners.len(), 1, "one writer takes the lapsed claim");
    let holder = read(&*s, |tx| tx.get_idempotency("o1", "k")).unwrap();
    assert!(holder.body.starts_with("token-"), "{holder:?}");
}

/// Records end: with their call, or in bounded sweeps once expired.
pub fn idempotency_records_end_with_their_call_or_expire(open: Factory) {
    let s = open();
    let mut rows = Vec::new();
    for (key, call, expires) in [
        ("authorize:c1", Some("c1"), "2026-01-02T00:00:00Z"),
        ("update:c1:10:60", Some("c1"), "2026-01-02T00:00:00Z"),
        ("authorize:c2", Some("c2"), "2026-01-02T00:00:00Z"),
        ("a", None, "2026-01-01T01:00:00Z"),
        ("b", None, "2026-01-01T02:00:00Z"),
        ("c", None, "2026-01-01T03:00:00Z"),
        ("d", None, "2026-01-05T00:00:00Z"),
    ] {
        let mut i = claim(key, "{}", "2026-01-01T00:00:00Z", expires);
        i.status = 200;
        i.call_id = call.map(String::from);
        rows.push(i);
    }
    write(&*s, |tx| rows.iter().try_for_each(|i| tx.put_idempotency(i))).unwrap();
    let mut n = 0;
    write(&*s, |tx| {
        n = tx.delete_call_idempotency("o1", "c1")?;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 2);
    assert_eq!(read(&*s, |tx| tx.get_idempotency("o1", "update:c1:10:60")), None);
    assert!(read(&*s, |tx| tx.get_idempotency("o1", "authorize:c2")).is_some());
    write(&*s, |tx| tx.delete_call_idempotency("o2", "c2").map(drop)).unwrap();
    assert!(read(&*s, |tx| tx.get_idempotency("o1", "authorize:c2")).is_some(), "another organization's call");
    // Sweeps are bounded and take the oldest expiry first.
    let sweep = |now: &str, limit: usize| {
        let mut n = 0;
        write(&*s, |tx| {
            n = tx.delete_expired_idempotency(t(now), limit)?;
            Ok(())
        })
        .unwrap();
        n
    };
    assert_eq!(sweep("2026-01-01T03:00:00Z", 2), 2);
    assert_eq!(read(&*s, |tx| tx.get_idempotency("o1", "a")), None);
    assert_eq!(read(&*s, |tx| tx.get_idempotency("o1", "b")), None);
    assert!(read(&*s, |tx| tx.get_idempotency("o1", "c")).is_some());
    assert_eq!(sweep("2026-01-01T03:00:00Z", 2), 1, "expiring at the instant counts");
    assert_eq!(sweep("2026-01-01T03:00:00Z", 2), 0);
    assert_eq!(sweep("2026-01-03T00:00:00Z", 10), 1);
    assert!(read(&*s, |tx| tx.get_idempotency("o1", "d")).is_some());
}

pub fn webhooks_and_deliveries(open: Factory) {
    let s = open();
    let w = WebhookRow {
        org_id: "o1".into(),
        webhook_id: "w1".into(),
        url: "https://hooks.example/cc".into(),
        secret: "s".into(),
        created_at: t("2026-01-01T00:00:00Z"),
    };
    let notice = NoticeRow {
        seq: 0,
        org_id: "o1".into(),
        notice_id: "n1".into(),
        kind: "balance_exhausted".into(),
        created_at: t("2026-01-01T00:00:00Z"),
        subject: "s".into(),
        body: "b".into(),
        data: "{}".into(),
        status: "pending".into(),
    };
    let mut d = DeliveryRow {
        org_id: "o1".into(),
        delivery_id: "d1".into(),
        notice_id: "n1".into(),
        channel: "email".into(),
        target: "a@example.com\nb@example.com".into(),
        status: "pending".into(),
        attempts: 0,
        next_attempt_at: t("2026-01-01T00:00:00Z"),
        last_error: None,
        sent_at: None,
        created_at: t("2026-01-01T00:00:00Z"),
    };
    write(&*s, |tx| {
        tx.insert_webhook(&w)?;
        tx.insert_notice(&notice)?;
        tx.insert_delivery(&d)
    })
    .unwrap();
    assert_eq!(read(&*s, |tx| tx.get_webhook("o1", "w1")), Some(w.clone()));
    assert_eq!(read(&*s, |tx| tx.list_webhooks("o1")).len(), 1);
    assert_eq!(read(&*s, |tx| tx.get_notice("o1", "n1")).unwrap().kind, "balance_exhausted");
    assert_eq!(
        read(&*s, |tx| tx.due_deliveries(t("2026-01-01T00:00:00Z"), None, 10, 10)),
        vec![("o1".to_string(), "d1".to_string())]
    );
    d.attempts = 1;
    d.next_attempt_at = t("2026-01-01T00:05:00Z");
    d.last_error = Some("connection refused".into());
    write(&*s, |tx| {
        tx.update_delivery(&d)?;
        tx.set_notice_status("o1", "n1", "failed")
    })
    .unwrap();
    assert!(read(&*s, |tx| tx.due_deliveries(t("2026-01-01T00:04:59Z"), None, 10, 10)).is_empty());
    assert_eq!(read(&*s, |tx| tx.get_delivery("o1", "d1")), Some(d.clone()));
    assert_eq!(read(&*s, |tx| tx.list_deliveries("o1")), vec![d.clone()]);
    assert_eq!(read(&*s, |tx| tx.notice_deliveries("o1", "n1")), vec![d.clone()]);
    assert!(read(&*s, |tx| tx.notice_deliveries("o1", "n2")).is_empty());
    assert_eq!(read(&*s, |tx| tx.get_notice("o1", "n1")).unwrap().status, "failed");
    d.status = "failed".into();
    write(&*s, |tx| tx.update_delivery(&d)).unwrap();
    assert_eq!(read(&*s, |tx| tx.count_failed_deliveries_all()), 1);
    let mut deleted = false;
    write(&*s, |tx| {
        deleted = tx.delete_webhook("o1", "w1")?;
        Ok(())
    })
    .unwrap();
    assert!(deleted);
    assert!(read(&*s, |tx| tx.list_webhooks("o1")).is_empty());
}

/// Writers from several threads serialize: no update is lost.
pub fn concurrent_writers_lose_nothing(open: Factory) {
    let s: Arc<dyn Store> = Arc::from(open());
    write(&*s, |tx| {
        tx.insert_org(&org("o1"))?;
        tx.insert_account(&account("o1", 0, 0))
    })
    .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    write(&*s, |tx| {
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
    assert_eq!(read(&*s, |tx| tx.get_account("o1")).unwrap().balance_minor, 200);
}

/// Reads refuse to write.
pub fn reads_are_read_only(open: Factory) {
    let s = open();
    let r = s.read(&mut |tx| tx.insert_org(&org("o1")));
    assert!(r.is_err());
    assert_eq!(read(&*s, |tx| tx.get_org("o1")), None);
}

/// Expands to one `#[test]` per conformance check for an adapter.
/// `$open` is an expression of type `fn() -> Box<dyn Store>` opening a fresh store.
#[macro_export]
macro_rules! conformance_tests {
    ($open:expr) => {
        $crate::conformance_tests!(@each $open;
            orgs_and_users_round_trip,
            failed_write_leaves_nothing,
            savepoints_isolate_commands_in_a_batch,
            ledger_is_append_only_and_paginates,
            accounts_and_lots_round_trip_and_refuse_negative_available,
            orders_pools_spend_and_notices,
            reservations_cdrs_and_due_scans,
            rate_decks_replace,
            api_keys_and_idempotency,
            idempotency_claims_lapse_and_only_their_holder_answers,
            a_lapsed_claim_is_taken_once,
            idempotency_records_end_with_their_call_or_expire,
            webhooks_and_deliveries,
            concurrent_writers_lose_nothing,
            reads_are_read_only
        );
    };
    (@each $open:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                $crate::conformance::$name(&$open);
            }
        )*
    };
}
