//! One function per parser of outside input. Each feeds the bytes to the real parser and
//! asserts its contract: a value or an error with the parser's stable code, never a
//! panic, and where formatting is defined, parse -> format -> parse gives the same value.
//! The fuzz targets in `fuzz/` call these, and `tests/corpus.rs` replays every saved
//! input through them, so a crash once found stays fixed.

use commcredits_core::catalog::{DeckKind, RateDeck};
use commcredits_core::money::Currency;
use commcredits_core::period::parse_period_time;
use commcredits_core::phone::{Destination, E164};
use commcredits_core::rating::{affordable_seconds, charge_minor};
use commcredits_core::{ErrorCode, Result};

/// Currencies of every minor-unit exponent the product bills in (0, 2 and 3).
const CURRENCIES: [&str; 4] = ["USD", "JPY", "KWD", "EUR"];

fn currency(selector: u8) -> Currency {
    Currency::parse(CURRENCIES[usize::from(selector) % CURRENCIES.len()]).expect("a known currency")
}

/// Outside text is UTF-8 by the time it reaches the parsers (the HTTP layer and CSV
/// reader refuse anything else), so other bytes are not an input.
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(result: &Result<T>, allowed: &[ErrorCode]) {
    if let Err(e) = result {
        assert!(allowed.contains(&e.code), "unexpected error code {:?}: {}", e.code, e.message);
    }
}

/// Amounts in major units (`50.00`): the first byte picks the currency.
pub fn amount(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let Some(t) = text(rest) else { return };
    let cur = currency(sel);
    let parsed = cur.parse_major(t);
    assert_code(&parsed, &[ErrorCode::InvalidAmount, ErrorCode::AmountOverflow]);
    if let Ok(minor) = parsed {
        let formatted = cur.format_minor(minor);
        assert_eq!(cur.parse_major(&formatted).ok(), Some(minor), "{t:?} -> {minor} -> {formatted:?}");
    }
    let positive = cur.parse_positive_major(t);
    assert_code(&positive, &[ErrorCode::InvalidAmount, ErrorCode::AmountOverflow]);
    if let Ok(minor) = positive {
        assert!(minor > 0);
    }
}

/// Currency codes.
pub fn currency_code(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let parsed = Currency::parse(t);
    assert_code(&parsed, &[ErrorCode::InvalidCurrency]);
    if let Ok(c) = parsed {
        assert_eq!(Currency::parse(c.code()).ok(), Some(c));
    }
}

/// Phone numbers and dialed destinations (emergency short codes or E.164).
pub fn phone(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let parsed = E164::parse(t);
    assert_code(&parsed, &[ErrorCode::InvalidPhoneNumber]);
    if let Ok(n) = &parsed {
        let again = E164::parse(&n.to_string()).expect("a formatted number parses");
        assert_eq!(&again, n, "{t:?}");
    }
    let codes = ["911".to_string(), "112".to_string(), "999".to_string()];
    let dest = Destination::parse(t, &codes);
    assert_code(&dest, &[ErrorCode::InvalidPhoneNumber]);
    if let Ok(d) = dest {
        assert_eq!(Destination::parse(&d.as_text(), &codes).ok(), Some(d.clone()), "{t:?}");
    }
}

/// Report period bounds: RFC 3339 instants or dates.
pub fn period(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let parsed = parse_period_time("from", t);
    assert_code(&parsed, &[ErrorCode::InvalidTime]);
    if let Ok(ts) = parsed {
        let formatted = ts.to_string();
        assert_eq!(parse_period_time("from", &formatted).ok(), Some(ts), "{t:?} -> {formatted:?}");
    }
}

/// Rate-deck CSV import; a deck that loads must also rate: every entry prices a call
/// and sizes a budget without panicking.
pub fn rate_deck(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let Some(t) = text(rest) else { return };
    let cur = currency(sel);
    let kind = [DeckKind::Outbound, DeckKind::DialOut, DeckKind::TollFree][usize::from(sel >> 4) % 3];
    let parsed = RateDeck::parse_csv(kind, cur, t);
    assert_code(&parsed, &[ErrorCode::InvalidRateDeck]);
    let Ok(deck) = parsed else { return };
    assert!(!deck.is_empty());
    for rate in deck.entries() {
        for seconds in [1, 59, 60, 61, 3600, 86_400] {
            let price = charge_minor(rate, cur, seconds);
            assert!(price >= 0, "negative price {price} for {rate:?}");
        }
        let s = affordable_seconds(rate, cur, 1_000_000, 86_400);
        assert!(s == 0 || charge_minor(rate, cur, s) <= 1_000_000);
        let digits = format!("{}0000", rate.prefix);
        assert!(deck.lookup(&digits).is_some(), "prefix {} not found", rate.prefix);
    }
}
