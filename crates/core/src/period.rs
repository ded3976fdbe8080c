//! Bounds of report periods as people write them: an RFC 3339 instant, or a calendar
//! date meaning the start of that day in UTC.

use crate::err;
use crate::error::{ErrorCode, Result};
use jiff::Timestamp;

/// Parses a period bound: `2026-11-01T09:00:00Z` (any RFC 3339 instant) as itself, and
/// `2026-11-01` as the instant that day starts in UTC. So `--from 2026-10-01 --to
/// 2026-11-01` is the whole of October.
pub fn parse_period_time(what: &str, text: &str) -> Result<Timestamp> {
    let t = text.trim();
    if let Ok(instant) = t.parse::<Timestamp>() {
        return Ok(instant);
    }
    let invalid = || {
        err!(
            ErrorCode::InvalidTime,
            "{what} '{text}' is neither an RFC 3339 time such as 2026-11-01T09:00:00Z nor a date such as 2026-11-01"
        )
    };
    // A date and nothing else: "2026-11-01T09:00" (no offset) is refused, not cut.
    if t.len() != 10 {
        return Err(invalid());
    }
    let date: jiff::civil::Date = t.parse().map_err(|_| invalid())?;
    date.to_zoned_datetime(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()).map_err(|_| invalid())
}

/// Whether `text` is a calendar date (`YYYY-MM-DD`) rather than an instant.
pub fn is_date(text: &str) -> bool {
    let t = text.trim();
    t.len() == 10 && t.parse::<jiff::civil::Date>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_the_start_of_their_utc_day_and_instants_themselves() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(parse_period_time("from", "2026-10-01").unwrap(), t("2026-10-01T00:00:00Z"));
        assert_eq!(parse_period_time("to", " 2026-11-01 ").unwrap(), t("2026-11-01T00:00:00Z"));
        assert_eq!(parse_period_time("from", "2026-10-01T09:30:00+02:00").unwrap(), t("2026-10-01T07:30:00Z"));
        for bad in ["2026-13-01", "2026-10-01T09:00", "yesterday", "", "2026-10"] {
            assert_eq!(parse_period_time("from", bad).unwrap_err().code, ErrorCode::InvalidTime, "{bad}");
        }
        assert!(is_date("2026-10-01"));
        assert!(!is_date("2026-10-01T00:00:00Z"));
    }
}
