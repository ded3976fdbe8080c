//! The accounting identity and the other invariants of SPEC §2, checked from the
//! stored state. Tests call this after every scenario; `commcredits credits check`
//! lets an operator run it.

use crate::books::decode_earmarks;
use crate::{internal, org, Engine};
use commcredits_core::{Error, Result};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BooksReport {
    pub purchases: i64,
    pub adjustments: i64,
    pub charges: i64,
    pub expired: i64,
    pub balance: i64,
    pub reserved: i64,
    pub available: i64,
}

fn fail(org_id: &str, what: String) -> Error {
    internal(format!("invariant broken for {org_id}: {what}"))
}

impl Engine {
    /// Checks `sum(purchases) + sum(adjustments) = balance + sum(charges) + sum(expired)`,
    /// `balance = reserved + available`, `available >= 0`, and that lots, reservations,
    /// pools and per-user spend agree with each other.
    pub fn check_books(&self, org_id: &str) -> Result<BooksReport> {
        self.read(|tx| {
            org(tx, org_id)?;
            let totals: HashMap<String, i64> = tx.ledger_totals(org_id)?.into_iter().collect();
            let get = |k: &str| totals.get(k).copied().unwrap_or(0);
            let a = tx.get_account(org_id)?.ok_or_else(|| fail(org_id, "no account".into()))?;
            let r = BooksReport {
                purchases: get("purchase"),
                adjustments: get("adjustment"),
                charges: -get("charge"),
                expired: -get("expiry"),
                balance: a.balance_minor,
                reserved: a.reserved_minor,
                available: a.balance_minor - a.reserved_minor,
            };
            if r.purchases + r.adjustments != r.balance + r.charges + r.expired {
                return Err(fail(
                    org_id,
                    format!(
                        "purchases {} + adjustments {} != balance {} + charges {} + expired {}",
                        r.purchases, r.adjustments, r.balance, r.charges, r.expired
                    ),
                ));
            }
            if r.available < 0 || r.reserved < 0 || r.charges < 0 || r.expired < 0 {
                return Err(fail(org_id, format!("negative figure in {r:?}")));
            }
            let lots = tx.list_lots(org_id)?;
            let lot_remaining: i64 = lots.iter().map(|l| l.remaining_minor).sum();
            let lot_reserved: i64 = lots.iter().map(|l| l.reserved_minor).sum();
            if lot_remaining != r.balance || lot_reserved != r.reserved {
                return Err(fail(
                    org_id,
                    format!(
                        "lots hold {lot_remaining} (reserved {lot_reserved}) but the account says {} ({})",
                        r.balance, r.reserved
                    ),
                ));
            }
            let pending = tx.pending_reservations(org_id)?;
            let mut held_by_lot: HashMap<String, i64> = HashMap::new();
            let mut held_money = 0;
            let mut pool_held: HashMap<(i32, String, String), i64> = HashMap::new();
            let mut spend_held: HashMap<(String, i32), i64> = HashMap::new();
            for res in &pending {
                let e = decode_earmarks(&res.earmarks)?;
                let sum: i64 = e.iter().map(|(_, a)| a).sum();
                if sum != res.money_minor {
                    return Err(fail(
                        org_id,
                        format!("call {} earmarks {sum} but holds {}", res.call_id, res.money_minor),
                    ));
                }
                for (l, amt) in e {
                    *held_by_lot.entry(l).or_default() += amt;
                }
                held_money += res.money_minor;
                if let (Some(s), Some(k), Some(m)) = (&res.plan_scope, &res.plan_kind, res.plan_month) {
                    *pool_held.entry((m, s.clone(), k.clone())).or_default() += res.plan_minutes;
                }
                if let Some(u) = &res.user_id {
                    *spend_held.entry((u.clone(), res.spend_month)).or_default() += res.money_minor;
                }
            }
            if held_money != r.reserved {
                return Err(fail(org_id, format!("open calls hold {held_money} but {} is reserved", r.reserved)));
            }
            for l in &lots {
                if held_by_lot.get(&l.lot_id).copied().unwrap_or(0) != l.reserved_minor {
                    return Err(fail(
                        org_id,
                        format!(
                            "lot {} reserves {} but calls earmark {}",
                            l.lot_id,
                            l.reserved_minor,
                            held_by_lot.get(&l.lot_id).copied().unwrap_or(0)
                        ),
                    ));
                }
            }
            let months: std::collections::BTreeSet<i32> = pool_held.keys().map(|k| k.0).collect();
            for m in months {
                for p in tx.list_pool_usage(org_id, m)? {
                    let held = pool_held.get(&(m, p.scope.clone(), p.kind.clone())).copied().unwrap_or(0);
                    if held != p.reserved_minutes || p.used_minutes < 0 {
                        return Err(fail(
                            org_id,
                            format!(
                                "pool {}/{} {m} reserves {} but calls hold {held}",
                                p.scope, p.kind, p.reserved_minutes
                            ),
                        ));
                    }
                }
            }
            for ((u, m), held) in spend_held {
                let s = tx.get_user_spend(org_id, &u, m)?;
                let reserved = s.map(|s| s.reserved_minor).unwrap_or(0);
                if reserved != held {
                    return Err(fail(org_id, format!("user {u} {m} spend reserves {reserved} but calls hold {held}")));
                }
            }
            let last = tx.list_ledger(org_id, 0, usize::MAX >> 1)?.last().map(|e| e.balance_after_minor).unwrap_or(0);
            if last != r.balance {
                return Err(fail(org_id, format!("last ledger balance {last} != balance {}", r.balance)));
            }
            Ok(r)
        })
    }
}
