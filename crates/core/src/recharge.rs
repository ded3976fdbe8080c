//! The auto-recharge decision: exactly one order per crossing of the threshold.

/// Auto-recharge settings and the latch that makes one crossing place one order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoRecharge {
    pub enabled: bool,
    pub amount_minor: i64,
    pub threshold_minor: i64,
    pub payment_method_id: Option<String>,
    /// True while the available balance is at or above the threshold (or since the
    /// settings changed): the next fall below it places an order and clears the latch.
    pub armed: bool,
}

impl AutoRecharge {
    pub fn disabled() -> AutoRecharge {
        AutoRecharge {
            enabled: false,
            amount_minor: 0,
            threshold_minor: 0,
            payment_method_id: None,
            armed: true,
        }
    }

    /// Observes the available balance after a change; true means: place one order now.
    pub fn observe(&mut self, available_minor: i64) -> bool {
        if available_minor >= self.threshold_minor {
            self.armed = true;
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
        assert!(!a.observe(1500));
        assert!(a.observe(900));
        assert!(!a.observe(800));
        assert!(!a.observe(0));
        assert!(!a.observe(6000));
        assert!(a.observe(999));
        let mut off = AutoRecharge::disabled();
        assert!(!off.observe(-1));
    }

    proptest! {
        /// Orders placed = number of downward crossings of the threshold.
        #[test]
        fn orders_equal_crossings(balances in prop::collection::vec(0i64..3000, 1..200)) {
            let mut a = ar();
            let mut orders = 0;
            let mut crossings = 0;
            let mut above = true;
            for b in balances {
                if a.observe(b) { orders += 1; }
                if above && b < 1000 { crossings += 1; }
                above = b >= 1000;
            }
            prop_assert_eq!(orders, crossings);
        }
    }
}
