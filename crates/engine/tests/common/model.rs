//! The reference model of what customers pay: rates, lots and earmarks, kept
//! independently of the engine's code (see `money_model.rs` for what it states).

use commcredits_core::Timestamp;
use std::collections::BTreeMap;

/// A published rate as the authorize answer states it.
#[derive(Clone, Debug)]
pub struct ModelRate {
    pub fee_minor: i64,
    /// The per-minute rate as an integer over 10^scale (0.0100 is 100 over 10^4).
    pub per_minute_units: i128,
    pub scale: u32,
    pub increment_seconds: i64,
}

impl ModelRate {
    pub fn parse(per_minute: &str, fee_minor: i64, increment_seconds: u32) -> ModelRate {
        let (int, frac) = per_minute.split_once('.').unwrap_or((per_minute, ""));
        let units: i128 = format!("{int}{frac}").parse().expect("a decimal rate");
        ModelRate {
            fee_minor,
            per_minute_units: units,
            scale: frac.len() as u32,
            increment_seconds: i64::from(increment_seconds.max(1)),
        }
    }

    /// SPEC §2: billable seconds are the duration rounded up to the increment; the
    /// charge is the connection fee plus billable minutes times the rate, rounded
    /// half-up to the cent once. Nothing at all for zero seconds.
    pub fn price_minor(&self, seconds: i64) -> i64 {
        if seconds <= 0 {
            return 0;
        }
        let billable =
            i128::from((seconds + self.increment_seconds - 1) / self.increment_seconds * self.increment_seconds);
        // cents = billable × units × 100 / (60 × 10^scale), rounded half-up.
        let num = billable * self.per_minute_units * 100;
        let den = 60 * 10i128.pow(self.scale);
        let cents = (2 * num + den) / (2 * den);
        self.fee_minor + i64::try_from(cents).unwrap()
    }
}

#[derive(Clone, Debug)]
pub struct ModelLot {
    pub purchased_at: Timestamp,
    pub expires_at: Timestamp,
    pub remaining: i64,
    pub reserved: i64,
    pub expired: bool,
}

#[derive(Clone, Debug)]
pub struct ModelCall {
    pub rate: ModelRate,
    pub granted: i64,
    pub used: i64,
    pub plan_minutes: i64,
    pub money: i64,
    /// Money held per lot.
    pub earmarks: BTreeMap<String, i64>,
    pub expires_at: Timestamp,
}

#[derive(Default)]
pub struct Model {
    pub lots: BTreeMap<String, ModelLot>,
    pub calls: BTreeMap<String, ModelCall>,
    pub charged: i64,
    pub written_off: i64,
    /// Calls settled: (call id, what the customer must pay).
    pub settled: Vec<(String, i64)>,
}

impl Model {
    pub fn spending_order(&self) -> Vec<String> {
        let mut ids: Vec<&String> = self.lots.keys().collect();
        ids.sort_by_key(|id| {
            let l = &self.lots[*id];
            (l.expires_at, l.purchased_at, (*id).clone())
        });
        ids.into_iter().cloned().collect()
    }

    pub fn live(&self, id: &str, now: Timestamp) -> bool {
        let l = &self.lots[id];
        !l.expired && l.expires_at > now
    }

    /// Expiry writes off what no open call holds.
    pub fn expire(&mut self, now: Timestamp) {
        for l in self.lots.values_mut() {
            if !l.expired && l.expires_at <= now {
                l.expired = true;
                self.written_off += l.remaining - l.reserved;
                l.remaining = l.reserved;
            }
        }
    }

    pub fn spendable(&self, now: Timestamp) -> i64 {
        self.lots.iter().filter(|(id, _)| self.live(id, now)).map(|(_, l)| l.remaining - l.reserved).sum()
    }

    /// Earmarks `amount` on live lots, first to expire first.
    pub fn reserve(&mut self, call: &str, mut amount: i64, now: Timestamp) {
        assert!(
            amount <= self.spendable(now),
            "call {call} reserves {amount} but only {} is spendable",
            self.spendable(now)
        );
        for id in self.spending_order() {
            if amount == 0 {
                break;
            }
            if !self.live(&id, now) {
                continue;
            }
            let l = self.lots.get_mut(&id).unwrap();
            let take = (l.remaining - l.reserved).min(amount);
            if take > 0 {
                l.reserved += take;
                amount -= take;
                *self.calls.get_mut(call).unwrap().earmarks.entry(id).or_default() += take;
            }
        }
    }

    /// Gives back `amount` of a call's money: live money, the latest to expire first.
    /// Money on an expired lot stays with the call to pay for it.
    pub fn release(&mut self, call: &str, mut amount: i64, now: Timestamp) {
        let mut order = self.spending_order();
        order.reverse();
        for id in order {
            if amount == 0 {
                break;
            }
            if !self.live(&id, now) {
                continue;
            }
            let c = self.calls.get_mut(call).unwrap();
            let Some(held) = c.earmarks.get_mut(&id) else { continue };
            let take = (*held).min(amount);
            *held -= take;
            if *held == 0 {
                c.earmarks.remove(&id);
            }
            self.lots.get_mut(&id).unwrap().reserved -= take;
            amount -= take;
        }
        assert_eq!(amount, 0, "call {call} gave back money earmarked on an expired lot while still open");
    }

    /// Charges `charge` from the call's earmarks, first to expire first, and releases
    /// the rest; what is released on an expired lot is written off now.
    pub fn settle(&mut self, call: &str, mut charge: i64) {
        let c = self.calls.remove(call).unwrap();
        assert!(charge <= c.money, "call {call} would be charged {charge} but holds {}", c.money);
        let mut held: Vec<(String, i64)> = c.earmarks.into_iter().collect();
        held.sort_by_key(|(id, _)| {
            let l = &self.lots[id];
            (l.expires_at, l.purchased_at, id.clone())
        });
        for (id, amount) in held {
            let l = self.lots.get_mut(&id).unwrap();
            let take = charge.min(amount);
            charge -= take;
            l.reserved -= amount;
            l.remaining -= take;
            if l.expired {
                l.remaining -= amount - take;
                self.written_off += amount - take;
            }
        }
        assert_eq!(charge, 0);
    }

    pub fn expired_share(&self, call: &str) -> i64 {
        self.calls[call].earmarks.iter().filter(|(id, _)| self.lots[*id].expired).map(|(_, a)| a).sum()
    }
}

/// The credit seconds of a grant: plan minutes pay first, in whole minutes.
pub fn credit_seconds(granted: i64, plan_minutes: i64) -> i64 {
    granted - granted.min(plan_minutes * 60)
}

/// What the customer must pay for a call that lasted `duration` seconds.
pub fn must_pay(c: &ModelCall, duration: i64) -> (i64, i64, i64) {
    let charged = duration.min(c.granted);
    let on_plan = charged.min(c.plan_minutes * 60);
    let plan_used = ((on_plan + 59) / 60).min(c.plan_minutes);
    (charged, plan_used, c.rate.price_minor(charged - on_plan))
}
