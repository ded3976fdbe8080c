//! Minute pools: per organization, scope (country or whole organization), kind and
//! calendar month (UTC). Sized from assigned licenses; used and reserved in whole minutes.

use crate::catalog::{PoolKind, PoolScope};
use jiff::Timestamp;

/// A calendar month in UTC, as `yyyymm` (202611).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month(pub i32);

impl Month {
    pub fn of(t: Timestamp) -> Month {
        let d = t.to_zoned_datetime(jiff::tz::TimeZone::UTC);
        Month(i32::from(d.year()) * 100 + i32::from(d.month()))
    }

    pub fn label(self) -> String {
        format!("{:04}-{:02}", self.0 / 100, self.0 % 100)
    }

    /// The first instant of this month.
    pub fn start(self) -> Timestamp {
        let date = jiff::civil::date((self.0 / 100) as i16, (self.0 % 100) as i8, 1);
        date.to_zoned_datetime(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub scope: PoolScope,
    pub kind: PoolKind,
}

/// Minutes left in a pool; never negative, even when licenses were removed mid-month.
pub fn remaining_minutes(size: i64, used: i64, reserved: i64) -> i64 {
    (size - used - reserved).max(0)
}

/// The thresholds (80, 100 percent) that usage passed when it went from `before` to `after`.
pub fn crossed_thresholds(size: i64, before: i64, after: i64) -> Vec<u8> {
    if size <= 0 {
        return Vec::new();
    }
    [80u8, 100]
        .into_iter()
        .filter(|p| {
            let mark = i64::from(*p) * size; // compare used*100 against p*size: no division
            before * 100 < mark && after * 100 >= mark
        })
        .collect()
}

/// Percent used, rounded down, for reports.
pub fn percent_used(size: i64, used: i64) -> i64 {
    if size <= 0 {
        if used > 0 {
            100
        } else {
            0
        }
    } else {
        used * 100 / size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_thresholds() {
        let t: Timestamp = "2026-11-28T10:00:00Z".parse().unwrap();
        assert_eq!(Month::of(t), Month(202611));
        assert_eq!(Month(202611).label(), "2026-11");
        assert_eq!(Month(202612).start(), "2026-12-01T00:00:00Z".parse().unwrap());
        assert_eq!(crossed_thresholds(100, 79, 80), vec![80]);
        assert_eq!(crossed_thresholds(100, 70, 120), vec![80, 100]);
        assert_eq!(crossed_thresholds(100, 80, 99), Vec::<u8>::new());
        assert_eq!(crossed_thresholds(0, 0, 10), Vec::<u8>::new());
        assert_eq!(remaining_minutes(100, 90, 20), 0);
    }
}
