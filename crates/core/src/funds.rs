//! Funds lots: each purchase is a lot that expires 12 calendar months after purchase.
//! Charges consume the lot that expires first; what remains at expiry is written off.
//!
//! Money held by an open reservation is earmarked on specific lots (`reserved_minor`),
//! so a lot that expires while a call is up never leaves `available` negative: the
//! earmarked part is settled with the call and any unused rest is written off then.

use crate::err;
use crate::error::{ErrorCode, Result};
use jiff::{Span, Timestamp};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lot {
    pub id: String,
    pub amount_minor: i64,
    pub remaining_minor: i64,
    pub reserved_minor: i64,
    pub purchased_at: Timestamp,
    pub expires_at: Timestamp,
    /// Set when the lot has been written off; an expired lot keeps only earmarked money.
    pub expired: bool,
    /// Set once the funds-expiring notice for this lot has been written.
    pub expiring_notified: bool,
}

/// Purchase time plus 12 calendar months, in UTC, clamped to the month's end
/// (a Feb 29 purchase expires on Feb 28 of the next year).
pub fn expiry_of(purchased_at: Timestamp) -> Result<Timestamp> {
    let z = purchased_at.to_zoned_datetime(jiff::tz::TimeZone::UTC);
    z.checked_add(Span::new().months(12))
        .map(|z| z.timestamp())
        .map_err(|e| err!(ErrorCode::InvalidTime, "cannot compute expiry of {purchased_at}: {e}"))
}

impl Lot {
    pub fn new(id: String, amount_minor: i64, purchased_at: Timestamp) -> Result<Lot> {
        if amount_minor <= 0 {
            return Err(err!(ErrorCode::InvalidAmount, "a lot must hold a positive amount"));
        }
        Ok(Lot {
            id,
            amount_minor,
            remaining_minor: amount_minor,
            reserved_minor: 0,
            purchased_at,
            expires_at: expiry_of(purchased_at)?,
            expired: false,
            expiring_notified: false,
        })
    }

    /// Money that new reservations may take from this lot at `now`.
    pub fn spendable(&self, now: Timestamp) -> i64 {
        if self.expired || self.expires_at <= now {
            0
        } else {
            self.remaining_minor - self.reserved_minor
        }
    }
}

/// Orders lots the way they are consumed: first to expire first, then oldest purchase.
pub fn sort_for_spending(lots: &mut [Lot]) {
    lots.sort_by(|a, b| (a.expires_at, a.purchased_at, &a.id).cmp(&(b.expires_at, b.purchased_at, &b.id)));
}

/// Earmarks `amount_minor` on the spendable lots, first-expiring first.
/// Fails without changing anything when the lots cannot cover it.
pub fn reserve(lots: &mut [Lot], amount_minor: i64, now: Timestamp) -> Result<Vec<(String, i64)>> {
    let total: i64 = lots.iter().map(|l| l.spendable(now)).sum();
    if amount_minor < 0 || amount_minor > total {
        return Err(err!(ErrorCode::Internal, "cannot reserve {amount_minor}: {total} spendable"));
    }
    sort_for_spending(lots);
    let mut left = amount_minor;
    let mut out = Vec::new();
    for lot in lots.iter_mut() {
        if left == 0 {
            break;
        }
        let take = lot.spendable(now).min(left);
        if take > 0 {
            lot.reserved_minor += take;
            left -= take;
            out.push((lot.id.clone(), take));
        }
    }
    Ok(out)
}

/// Earmarks `amount_minor` more for a reservation that already holds `earmarks`, on
/// spendable lots first-expiring first, and merges them in: what the reservation held
/// stays where it is (on an expired lot too, where it still pays for the call).
pub fn reserve_more(
    lots: &mut [Lot],
    earmarks: &[(String, i64)],
    amount_minor: i64,
    now: Timestamp,
) -> Result<Vec<(String, i64)>> {
    let added = reserve(lots, amount_minor, now)?;
    let mut out = earmarks.to_vec();
    for (lot_id, amount) in added {
        match out.iter_mut().find(|(l, _)| *l == lot_id) {
            Some((_, held)) => *held += amount,
            None => out.push((lot_id, amount)),
        }
    }
    sort_earmarks(lots, &mut out);
    Ok(out)
}

/// Gives back up to `amount_minor` of a reservation's earmarks to the lots' available
/// money, from the latest-expiring lot first. Earmarks on lots that have expired are
/// kept: that money can pay for the call and nothing else, so it stays with the call
/// until it settles. Returns the earmarks left and the amount given back.
pub fn release(
    lots: &mut [Lot],
    earmarks: &[(String, i64)],
    amount_minor: i64,
    now: Timestamp,
) -> Result<(Vec<(String, i64)>, i64)> {
    if amount_minor < 0 {
        return Err(err!(ErrorCode::Internal, "cannot release {amount_minor}"));
    }
    let mut out = earmarks.to_vec();
    sort_earmarks(lots, &mut out);
    let mut left = amount_minor;
    for (lot_id, held) in out.iter_mut().rev() {
        if left == 0 {
            break;
        }
        let lot = lots
            .iter_mut()
            .find(|l| l.id == *lot_id)
            .ok_or_else(|| err!(ErrorCode::Internal, "reservation refers to unknown lot {lot_id}"))?;
        if lot.expired || lot.expires_at <= now {
            continue;
        }
        let give = (*held).min(left);
        *held -= give;
        lot.reserved_minor -= give;
        left -= give;
    }
    out.retain(|(_, a)| *a > 0);
    Ok((out, amount_minor - left))
}

/// Orders earmarks the way their money is spent: the lot that expires first (so one
/// already expired) first.
fn sort_earmarks(lots: &[Lot], earmarks: &mut [(String, i64)]) {
    let key = |id: &String| {
        lots.iter()
            .find(|l| &l.id == id)
            .map(|l| (l.expires_at, l.purchased_at))
            .unwrap_or((Timestamp::MAX, Timestamp::MAX))
    };
    earmarks.sort_by(|a, b| (key(&a.0), &a.0).cmp(&(key(&b.0), &b.0)));
}

/// What settling a reservation did to the lots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Charged per lot.
    pub charged: Vec<(String, i64)>,
    /// Released earmarks of lots that expired meanwhile: written off now.
    pub written_off: Vec<(String, i64)>,
}

/// Settles `charge_minor` against the earmarks of one reservation and releases the rest.
/// The charge is taken first-expiring first, so money on a lot that expired while the
/// call was up pays before live money; only what the call did not use of an expired
/// lot is written off.
pub fn settle(lots: &mut [Lot], earmarks: &[(String, i64)], charge_minor: i64) -> Result<Settlement> {
    let held: i64 = earmarks.iter().map(|(_, a)| a).sum();
    if charge_minor < 0 || charge_minor > held {
        return Err(err!(ErrorCode::Internal, "charge {charge_minor} exceeds the {held} reserved"));
    }
    let mut earmarks = earmarks.to_vec();
    sort_earmarks(lots, &mut earmarks);
    let mut left = charge_minor;
    let mut s = Settlement::default();
    for (lot_id, amount) in &earmarks {
        let lot = lots
            .iter_mut()
            .find(|l| &l.id == lot_id)
            .ok_or_else(|| err!(ErrorCode::Internal, "reservation refers to unknown lot {lot_id}"))?;
        let take = left.min(*amount);
        left -= take;
        lot.reserved_minor -= *amount;
        lot.remaining_minor -= take;
        if take > 0 {
            s.charged.push((lot_id.clone(), take));
        }
        let released = amount - take;
        if lot.expired && released > 0 {
            lot.remaining_minor -= released;
            s.written_off.push((lot_id.clone(), released));
        }
        debug_assert!(lot.remaining_minor >= lot.reserved_minor && lot.reserved_minor >= 0);
    }
    Ok(s)
}

/// Charges `amount_minor` directly (no reservation), first-expiring first.
pub fn charge_direct(lots: &mut [Lot], amount_minor: i64, now: Timestamp) -> Result<Vec<(String, i64)>> {
    let earmarks = reserve(lots, amount_minor, now)?;
    Ok(settle(lots, &earmarks, amount_minor)?.charged)
}

/// Writes off a lot at expiry: everything not earmarked by an open reservation.
/// Returns the amount written off, or None when the lot is not due.
pub fn expire(lot: &mut Lot, now: Timestamp) -> Option<i64> {
    if lot.expired || lot.expires_at > now {
        return None;
    }
    lot.expired = true;
    let off = lot.remaining_minor - lot.reserved_minor;
    lot.remaining_minor = lot.reserved_minor;
    Some(off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn expiry_is_twelve_calendar_months_clamped() {
        assert_eq!(expiry_of(ts("2024-02-29T10:00:00Z")).unwrap(), ts("2025-02-28T10:00:00Z"));
        assert_eq!(expiry_of(ts("2025-01-31T23:59:59Z")).unwrap(), ts("2026-01-31T23:59:59Z"));
        assert_eq!(expiry_of(ts("2025-03-15T00:00:00Z")).unwrap(), ts("2026-03-15T00:00:00Z"));
        assert_eq!(expiry_of(ts("2023-02-28T08:00:00Z")).unwrap(), ts("2024-02-28T08:00:00Z"));
    }

    #[test]
    fn first_expiring_lot_is_used_first() {
        let now = ts("2026-06-01T00:00:00Z");
        let mut lots = vec![
            Lot::new("new".into(), 1000, ts("2026-05-01T00:00:00Z")).unwrap(),
            Lot::new("old".into(), 300, ts("2025-07-01T00:00:00Z")).unwrap(),
        ];
        let charged = charge_direct(&mut lots, 500, now).unwrap();
        assert_eq!(charged, vec![("old".to_string(), 300), ("new".to_string(), 200)]);
        assert!(reserve(&mut lots, 801, now).is_err());
    }

    #[test]
    fn lot_expiring_during_a_call_keeps_its_earmark() {
        let mut lots = vec![Lot::new("a".into(), 1000, ts("2025-01-01T00:00:00Z")).unwrap()];
        let before = ts("2025-12-31T23:59:00Z");
        let earmarks = reserve(&mut lots, 400, before).unwrap();
        let after = ts("2026-01-01T00:00:01Z");
        assert_eq!(expire(&mut lots[0], after), Some(600));
        assert_eq!(lots[0].spendable(after), 0);
        let s = settle(&mut lots, &earmarks, 150).unwrap();
        assert_eq!(s.charged, vec![("a".to_string(), 150)]);
        assert_eq!(s.written_off, vec![("a".to_string(), 250)]);
        assert_eq!(lots[0].remaining_minor, 0);
        assert_eq!(expire(&mut lots[0], after), None);
    }

    #[test]
    fn a_reservation_keeps_its_expired_earmarks_and_grows_on_live_lots() {
        let mut lots = vec![
            Lot::new("a".into(), 1000, ts("2025-01-01T00:00:00Z")).unwrap(),
            Lot::new("b".into(), 1000, ts("2025-06-01T00:00:00Z")).unwrap(),
        ];
        let before = ts("2025-12-31T23:59:00Z");
        let earmarks = reserve(&mut lots, 400, before).unwrap();
        assert_eq!(earmarks, vec![("a".to_string(), 400)]);
        let after = ts("2026-01-01T00:00:01Z");
        assert_eq!(expire(&mut lots[0], after), Some(600));
        // Growing adds only the increase, on the live lot; the expired earmark stays.
        let grown = reserve_more(&mut lots, &earmarks, 100, after).unwrap();
        assert_eq!(grown, vec![("a".to_string(), 400), ("b".to_string(), 100)]);
        // Shrinking gives back live money, latest-expiring first, never the expired earmark.
        let (kept, released) = release(&mut lots, &grown, 150, after).unwrap();
        assert_eq!((kept.clone(), released), (vec![("a".to_string(), 400)], 100));
        assert_eq!((lots[1].reserved_minor, lots[1].spendable(after)), (0, 1000));
        // The expired earmark pays first; only its unused rest is written off.
        let grown = reserve_more(&mut lots, &kept, 50, after).unwrap();
        let reversed: Vec<_> = grown.iter().rev().cloned().collect();
        let s = settle(&mut lots, &reversed, 420).unwrap();
        assert_eq!(s.charged, vec![("a".to_string(), 400), ("b".to_string(), 20)]);
        assert_eq!(s.written_off, Vec::<(String, i64)>::new());
        assert_eq!((lots[0].remaining_minor, lots[1].remaining_minor, lots[1].reserved_minor), (0, 980, 0));
    }

    proptest! {
        /// Any sequence of reserve/settle/expire keeps each lot's books exact:
        /// amount = remaining + charged + written off, and 0 <= reserved <= remaining.
        #[test]
        fn lots_never_lose_or_double_count(ops in prop::collection::vec((0u8..5, 0i64..700, 0u32..400), 1..60)) {
            let start = ts("2025-01-01T00:00:00Z");
            let mut lots = vec![
                Lot::new("a".into(), 1000, start).unwrap(),
                Lot::new("b".into(), 700, ts("2025-03-01T00:00:00Z")).unwrap(),
            ];
            let total: i64 = lots.iter().map(|l| l.amount_minor).sum();
            let (mut charged, mut off) = (0i64, 0i64);
            let mut open: Vec<Vec<(String, i64)>> = Vec::new();
            let mut now = start;
            for (op, amount, days) in ops {
                now = now.checked_add(Span::new().hours(i64::from(days) * 6)).unwrap();
                match op {
                    0 => if let Ok(e) = reserve(&mut lots, amount, now) { open.push(e) },
                    3 => if let Some(e) = open.pop() {
                        let expired_before: i64 = e.iter().filter(|(l, _)| lots.iter().any(|x| &x.id == l && x.expired)).map(|x| x.1).sum();
                        let (kept, released) = release(&mut lots, &e, amount, now).unwrap();
                        let held: i64 = e.iter().map(|x| x.1).sum();
                        prop_assert_eq!(kept.iter().map(|x| x.1).sum::<i64>(), held - released);
                        // Money on an expired lot stays with its reservation.
                        let expired_after: i64 = kept.iter().filter(|(l, _)| lots.iter().any(|x| &x.id == l && x.expired)).map(|x| x.1).sum();
                        prop_assert_eq!(expired_before, expired_after);
                        open.push(kept);
                    },
                    4 => if let Some(e) = open.pop() {
                        let grown = reserve_more(&mut lots, &e, amount, now);
                        open.push(grown.unwrap_or(e));
                    },
                    1 => if let Some(e) = open.pop() {
                        let held: i64 = e.iter().map(|x| x.1).sum();
                        let s = settle(&mut lots, &e, amount.min(held)).unwrap();
                        charged += s.charged.iter().map(|x| x.1).sum::<i64>();
                        off += s.written_off.iter().map(|x| x.1).sum::<i64>();
                    },
                    _ => for l in lots.iter_mut() { off += expire(l, now).unwrap_or(0) },
                }
                for l in &lots {
                    prop_assert!(l.reserved_minor >= 0 && l.reserved_minor <= l.remaining_minor);
                }
                let remaining: i64 = lots.iter().map(|l| l.remaining_minor).sum();
                prop_assert_eq!(total, remaining + charged + off);
            }
        }
    }
}
