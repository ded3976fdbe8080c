//! The auto-recharge decision: exactly one order per crossing of the threshold.

/// Auto-recharge settings and the latch that makes one crossing place one order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoRecharge {
    pub enabled: bool,
    pub amount_minor: i64,
    pub threshold_minor: i64,
    pub payment_method_id: Option<String>,
    /// Set when the settings change and when added funds lift the available balance to
    /// the threshold or above; the next fall below it places one order and clears it.
    /// Money released by calls that end never re-arms it, so a balance hovering at the
    /// threshold while calls come and go places one order, not one per call.
    pub armed: bool,
}

impl AutoRecharge {
    pub fn disabled() -> AutoRecharge {
        AutoRecharge { enabled: false, amount_minor: 0, threshold_minor: 0, payment_method_id: None, armed: true }
    }

    /// Observes the available balance after a change; true means: place one order now.
    /// `funds_added` tells that the change was a purchase or recharge.
    pub fn observe(&mut self, available_minor: i64, funds_added: bool) -> bool {
        if available_minor >= self.threshold_minor {
            if funds_added {
                self.armed = true;
            }
            return false;
        }
        if self.enabled && self.armed && self.payment_method_id.is_some() && self.amount_minor > 0 {
            self.armed = false;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ar() -> AutoRecharge {
        AutoRecharge {
            enabled: true,
            amount_minor: 5000,
            threshold_minor: 1000,
            payment_method_id: Some("pm".into()),
            armed: true,
        }
    }

    #[test]
    fn one_order_per_crossing() {
        let mut a = ar();
        assert!(!a.observe(1500, false));
        assert!(a.observe(900, false));
        assert!(!a.observe(800, false));
        // A call ending releases money: back above, but that is not new funding.
        assert!(!a.observe(1100, false));
        assert!(!a.observe(700, false));
        // The recharge lands: re-armed.
        assert!(!a.observe(5700, true));
        assert!(a.observe(999, false));
        let mut off = AutoRecharge::disabled();
        assert!(!off.observe(-1, false));
    }

    proptest! {
        /// Between two fundings that lift the balance to the threshold, at most one order
        /// is placed; it is placed only below the threshold; and after such a funding the
        /// first fall below places exactly one.
        #[test]
        fn one_order_per_funded_crossing(steps in prop::collection::vec((0i64..3000, prop::bool::weighted(0.2)), 1..200)) {
            let mut a = ar();
            let mut orders_since_funding = 0;
            let mut expect_order = true;
            for (b, funds_added) in steps {
                let placed = a.observe(b, funds_added);
                if funds_added && b >= 1000 {
                    orders_since_funding = 0;
                    expect_order = true;
                }
                if placed {
                    orders_since_funding += 1;
                    prop_assert!(b < 1000);
                }
                if b < 1000 && expect_order {
                    prop_assert!(placed);
                    expect_order = false;
                }
                prop_assert!(orders_since_funding <= 1);
            }
        }
    }
}
