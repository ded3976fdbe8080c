//! Rating: what a duration costs on a rate, rounded half-up once per call.

use crate::catalog::Rate;
use crate::money::Currency;
use rust_decimal::prelude::*;

/// Billable seconds: the duration rounded up to the billing increment.
pub fn billable_seconds(rate: &Rate, seconds: u32) -> u64 {
    let inc = u64::from(rate.increment_seconds.max(1));
    u64::from(seconds).div_ceil(inc) * inc
}

/// The price of `seconds` on `rate` in minor units: connection fee plus billable
/// minutes times the per-minute rate, rounded half-up to the minor unit once.
/// Zero seconds cost nothing (an unanswered call pays no connection fee).
pub fn charge_minor(rate: &Rate, currency: Currency, seconds: u32) -> i64 {
    if seconds == 0 {
        return 0;
    }
    let billable = Decimal::from(billable_seconds(rate, seconds));
    let scale = Decimal::from(10i64.pow(currency.exponent()));
    // Multiply before dividing so that the only rounding is the final half-up one.
    // Checked: a deck's rate is outside input, and a huge one overflows Decimal. Such a
    // price does not fit in i64 either way, so it saturates like one that just misses.
    let usage = billable
        .checked_mul(rate.per_minute)
        .and_then(|u| u.checked_mul(scale))
        .map(|u| (u / Decimal::from(60)).round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero))
        .and_then(|u| u.to_i64())
        .unwrap_or(i64::MAX);
    rate.connection_fee_minor.saturating_add(usage)
}

/// The longest duration, a whole number of increments and at most `cap_seconds`
/// rounded up to an increment, whose price fits in `budget_minor`. 0 when not even
/// one increment fits.
pub fn affordable_seconds(rate: &Rate, currency: Currency, budget_minor: i64, cap_seconds: u32) -> u32 {
    let inc = rate.increment_seconds.max(1);
    // Whole increments that fit in a u32 of seconds: a cap near u32::MAX rounds down to
    // the last whole increment instead of wrapping.
    let max_increments = u64::from(cap_seconds.max(1)).div_ceil(u64::from(inc)).min(u64::from(u32::MAX / inc)).max(1);
    if budget_minor < charge_minor(rate, currency, inc) {
        return 0;
    }
    let seconds = |increments: u64| u32::try_from(increments * u64::from(inc)).unwrap_or(u32::MAX);
    if charge_minor(rate, currency, seconds(max_increments)) <= budget_minor {
        return seconds(max_increments);
    }
    // Binary search on the number of increments: price is monotonic in duration.
    let (mut lo, mut hi) = (1u64, max_increments);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if charge_minor(rate, currency, seconds(mid)) <= budget_minor {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    seconds(lo)
}

/// Plan minutes a duration consumes: whole minutes, rounded up.
pub fn plan_minutes(seconds: u32) -> i64 {
    i64::from(seconds.div_ceil(60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rate(fee: i64, per_minute: &str, inc: u32) -> Rate {
        Rate {
            prefix: "1".into(),
            name: "t".into(),
            connection_fee_minor: fee,
            per_minute: Decimal::from_str_exact(per_minute).unwrap(),
            increment_seconds: inc,
            premium: false,
        }
    }

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    #[test]
    fn rounds_up_to_increment_and_half_up_once() {
        let r = rate(0, "0.0190", 60);
        assert_eq!(billable_seconds(&r, 1), 60);
        assert_eq!(billable_seconds(&r, 61), 120);
        assert_eq!(charge_minor(&r, usd(), 0), 0);
        // 1 min at 0.019 = 1.9 cents -> 2
        assert_eq!(charge_minor(&r, usd(), 30), 2);
        // 3 min = 5.7 cents -> 6 (not 3 x 2 = 6 by luck: check 5 min = 9.5 -> 10, per-minute rounding would give 10 as well)
        assert_eq!(charge_minor(&r, usd(), 300), 10);
        // 0.0250 for 1 minute = 2.5 cents -> 3 (half-up); 3 minutes = 7.5 -> 8, not 3 x 3 = 9
        let r = rate(0, "0.0250", 60);
        assert_eq!(charge_minor(&r, usd(), 60), 3);
        assert_eq!(charge_minor(&r, usd(), 180), 8);
        // per-second billing: 61 s at 0.06/min = 6.1 cents -> 6, plus fee 5
        let r = rate(5, "0.0600", 1);
        assert_eq!(charge_minor(&r, usd(), 61), 11);
        // JPY has no minor unit
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(charge_minor(&rate(0, "2.5", 60), jpy, 60), 3);
    }

    #[test]
    fn affordable_respects_budget_and_cap() {
        let r = rate(10, "0.1000", 60);
        // fee 10 + 10 per minute
        assert_eq!(affordable_seconds(&r, usd(), 19, 600), 0);
        assert_eq!(affordable_seconds(&r, usd(), 20, 600), 60);
        assert_eq!(affordable_seconds(&r, usd(), 55, 600), 240);
        assert_eq!(affordable_seconds(&r, usd(), 1_000, 300), 300);
        // cap not a multiple of the increment: rounded up to a whole increment
        assert_eq!(affordable_seconds(&r, usd(), 1_000, 90), 120);
        assert_eq!(affordable_seconds(&rate(0, "0", 60), usd(), 0, 300), 300);
        // A cap at the top of the range stays a whole number of increments, unwrapped.
        assert_eq!(affordable_seconds(&rate(0, "0", 60), usd(), 0, u32::MAX), u32::MAX / 60 * 60);
        assert_eq!(affordable_seconds(&r, usd(), 30, u32::MAX), 120);
    }

    proptest! {
        #[test]
        fn affordable_is_the_maximum_that_fits(fee in 0i64..50, cents in 0u32..500, inc in prop::sample::select(vec![1u32, 6, 30, 60]), budget in 0i64..5_000, cap in 1u32..4_000) {
            let r = rate(fee, &format!("{}.{:04}", cents / 100, (cents % 100) * 100), inc);
            let s = affordable_seconds(&r, usd(), budget, cap);
            if s > 0 {
                prop_assert!(charge_minor(&r, usd(), s) <= budget);
                prop_assert_eq!(s % inc, 0);
                let next = s + inc;
                prop_assert!(next > cap.div_ceil(inc) * inc || charge_minor(&r, usd(), next) > budget);
            } else {
                prop_assert!(charge_minor(&r, usd(), inc) > budget);
            }
        }

        #[test]
        fn price_is_monotonic(fee in 0i64..50, cents in 0u32..500, a in 0u32..10_000, b in 0u32..10_000) {
            let r = rate(fee, &format!("0.{:04}", cents), 60);
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(charge_minor(&r, usd(), lo) <= charge_minor(&r, usd(), hi));
        }
    }
}
