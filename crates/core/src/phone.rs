//! Phone numbers (E.164) and countries (ISO 3166 alpha-2).

use crate::err;
use crate::error::{ErrorCode, Result};
use std::fmt;

/// An ISO 3166-1 alpha-2 country code, upper case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Parses the shape only; whether the catalog knows it is checked by `Catalog::country`.
    pub fn parse(text: &str) -> Result<Country> {
        let t = text.trim().as_bytes();
        if t.len() != 2 || !t.iter().all(|b| b.is_ascii_alphabetic()) {
            return Err(err!(ErrorCode::InvalidCountry, "'{text}' is not an ISO 3166 alpha-2 country code"));
        }
        Ok(Country([t[0].to_ascii_uppercase(), t[1].to_ascii_uppercase()]))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A valid E.164 number: '+' and up to 15 digits, that libphonenumber accepts as
/// a possible number of a known country calling code.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct E164 {
    digits: String,
    country: Option<Country>,
}

/// Characters of a phone number as given: E.164 has at most 15 digits after '+', and
/// this leaves room for spaces, dashes, dots and parentheses between them. Longer text
/// is refused before it is parsed, cached or echoed.
pub const MAX_NUMBER_TEXT_CHARS: usize = 32;

/// Numbers already validated: libphonenumber's validation (~20 µs for a new number)
/// costs far more than a lookup, and call traffic repeats numbers. Shared by all
/// threads, so a CDR import can validate a batch's numbers on one thread while it
/// charges the previous batch on another. Only valid numbers are kept (a failure is
/// recomputed: keeping them would let anyone fill the cache with junk), keyed on text
/// of at most [`MAX_NUMBER_TEXT_CHARS`], and the cache is bounded by bytes: cleared
/// when full.
const PARSE_CACHE_MAX_BYTES: usize = 8 * 1024 * 1024;

/// What one entry costs beyond its key's and digits' bytes (two `String`s, the country,
/// the map's slot), roughly: the bound need not be exact, only hold.
const PARSE_CACHE_ENTRY_OVERHEAD_BYTES: usize = 96;

#[derive(Default)]
struct ParseCache {
    numbers: std::collections::HashMap<String, E164>,
    bytes: usize,
}

fn parse_cache() -> &'static std::sync::RwLock<ParseCache> {
    static PARSED: std::sync::OnceLock<std::sync::RwLock<ParseCache>> = std::sync::OnceLock::new();
    PARSED.get_or_init(Default::default)
}

impl E164 {
    /// Parses and validates a number (valid ones are memoized: the same text always
    /// gives the same answer).
    pub fn parse(text: &str) -> Result<E164> {
        if text.chars().count() > MAX_NUMBER_TEXT_CHARS {
            return Err(err!(
                ErrorCode::InvalidPhoneNumber,
                "a phone number is at most {MAX_NUMBER_TEXT_CHARS} characters ('+' and up to 15 digits)"
            ));
        }
        if let Some(hit) = parse_cache().read().ok().and_then(|c| c.numbers.get(text).cloned()) {
            return Ok(hit);
        }
        let parsed = E164::parse_uncached(text)?;
        if let Ok(mut c) = parse_cache().write() {
            let cost = text.len() + parsed.digits.len() + PARSE_CACHE_ENTRY_OVERHEAD_BYTES;
            if c.bytes + cost > PARSE_CACHE_MAX_BYTES {
                *c = ParseCache::default();
            }
            if c.numbers.insert(text.to_string(), parsed.clone()).is_none() {
                c.bytes += cost;
            }
        }
        Ok(parsed)
    }

    /// Bytes the cache of valid numbers holds, as it counts them.
    pub fn cache_bytes() -> usize {
        parse_cache().read().map(|c| c.bytes).unwrap_or(0)
    }

    fn parse_uncached(text: &str) -> Result<E164> {
        let t = text.trim();
        let compact: String = t.chars().filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.')).collect();
        let Some(rest) = compact.strip_prefix('+') else {
            return Err(err!(
                ErrorCode::InvalidPhoneNumber,
                "'{text}' is not an E.164 number (it must start with '+')"
            ));
        };
        if rest.is_empty() || rest.len() > 15 || !rest.bytes().all(|b| b.is_ascii_digit()) || rest.starts_with('0') {
            return Err(err!(ErrorCode::InvalidPhoneNumber, "'{text}' is not an E.164 number (+ and 1 to 15 digits)"));
        }
        let parsed = phonenumber::parse(None, &compact)
            .map_err(|e| err!(ErrorCode::InvalidPhoneNumber, "'{text}' is not a valid phone number: {e}"))?;
        if !phonenumber::is_valid(&parsed) {
            return Err(err!(ErrorCode::InvalidPhoneNumber, "'{text}' is not a valid number for its country"));
        }
        let country = parsed.country().id().and_then(|id| Country::parse(id.as_ref()).ok());
        Ok(E164 { digits: rest.to_string(), country })
    }

    /// The digits after '+'.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// The country the number belongs to, when it is a geographic one.
    pub fn country(&self) -> Option<Country> {
        self.country
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.digits)
    }
}

/// What a call's destination is: a regular number or a short emergency code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Number(E164),
    Emergency(String),
}

impl Destination {
    /// Parses a dialed destination. A short code is accepted only when it is one of
    /// `emergency_codes` (those of the caller's country); anything else must be E.164.
    pub fn parse(text: &str, emergency_codes: &[String]) -> Result<Destination> {
        let t = text.trim();
        if emergency_codes.iter().any(|c| c == t) {
            return Ok(Destination::Emergency(t.to_string()));
        }
        E164::parse(t).map(Destination::Number)
    }

    pub fn as_text(&self) -> String {
        match self {
            Destination::Number(n) => n.to_string(),
            Destination::Emergency(c) => c.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_countries() {
        let n = E164::parse("+1 415 555 0100").unwrap();
        assert_eq!(n.digits(), "14155550100");
        assert_eq!(n.country().unwrap().as_str(), "US");
        assert_eq!(E164::parse("+442079460000").unwrap().country().unwrap().as_str(), "GB");
        assert_eq!(E164::parse("+4915112345678").unwrap().country().unwrap().as_str(), "DE");
        for bad in ["4155550100", "+", "+0123", "+1234567890123456", "+1abc", "", "+1800123456"] {
            assert_eq!(E164::parse(bad).unwrap_err().code, ErrorCode::InvalidPhoneNumber, "{bad}");
        }
        assert_eq!(Country::parse("us").unwrap().as_str(), "US");
        assert!(Country::parse("USA").is_err());
    }

    #[test]
    fn overlong_text_is_refused_unparsed_and_failures_are_not_cached() {
        let long = format!("+{}", "1".repeat(200_000));
        let e = E164::parse(&long).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidPhoneNumber);
        assert!(e.message.len() < 200, "the number is not echoed: {}", e.message);
        // Formatting characters within the bound are still accepted.
        assert_eq!(E164::parse("+1 (415) 555-0100").unwrap().digits(), "14155550100");
        for n in 0..1_000 {
            // Within the length bound, but not numbers: never cached.
            assert!(E164::parse(&format!("+1abc{n}")).is_err());
        }
        assert!(
            parse_cache().read().unwrap().numbers.keys().all(|k| !k.starts_with("+1abc")),
            "failures are not cached"
        );
        assert!(E164::cache_bytes() <= PARSE_CACHE_MAX_BYTES);
    }

    #[test]
    fn emergency_codes_only_for_the_callers_country() {
        let us = vec!["911".to_string()];
        assert_eq!(Destination::parse("911", &us).unwrap(), Destination::Emergency("911".into()));
        assert!(Destination::parse("999", &us).is_err());
    }
}
