//! One function per parser of outside input. Each feeds the bytes to the real parser and
//! asserts its contract: a value or an error with the parser's stable code, never a
//! panic, and where formatting is defined, parse -> format -> parse gives the same value.
//! The fuzz targets in `fuzz/` call these, and `tests/corpus.rs` replays every saved
//! input through them, so a crash once found stays fixed.

pub mod http;

use commcredits_core::catalog::{DeckKind, RateDeck};
use commcredits_core::money::Currency;
use commcredits_core::period::parse_period_time;
use commcredits_core::phone::{Destination, E164};
use commcredits_core::rating::{affordable_seconds, charge_minor};
use commcredits_core::{ErrorCode, Result};
use commcredits_engine::calls::MAX_REQUESTED_SECONDS;
use commcredits_engine::cdr::{parse_cdrs, CdrRecord, CDR_HEADER, MAX_CDR_FIELD_CHARS};
use commcredits_engine::queries::{ledger_cursor, parse_ledger_cursor};

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

/// The fields of a parsed CDR row as the import holds them (without its line).
fn cdr_fields(r: &CdrRecord) -> [String; 7] {
    [
        r.call_id.clone(),
        r.call_type.clone(),
        r.user.clone().unwrap_or_default(),
        r.from.clone(),
        r.to.clone(),
        r.start_time.to_string(),
        r.duration_seconds.to_string(),
    ]
}

/// A whole CDR CSV file, read as the import reads it (before any charging): the file is
/// refused with `invalid_cdr`, or every row is counted once, as a record or as a reject
/// with a stable code and its line. Good records hold only what the checks let through,
/// and writing them back as CSV reads back as the same records.
pub fn cdr_file(data: &[u8]) {
    let parsed = parse_cdrs("org", data);
    assert_code(&parsed, &[ErrorCode::InvalidCdr]);
    let Ok(p) = parsed else { return };
    assert_eq!(p.rows, p.records.len() + p.rejected.len(), "every row counted once");
    for problem in &p.rejected {
        let code = problem.code.as_str();
        assert!(
            [ErrorCode::InvalidCdr.as_str(), ErrorCode::InvalidTime.as_str()].contains(&code),
            "unexpected row code {code}: {}",
            problem.message
        );
        assert!(problem.line >= 1);
    }
    for pair in p.records.windows(2) {
        assert!(pair[0].line < pair[1].line, "records out of line order");
    }
    for r in &p.records {
        assert!(r.line >= 2, "a record on the header's line");
        assert!(r.duration_seconds <= MAX_REQUESTED_SECONDS);
        for field in cdr_fields(r).iter().take(5) {
            assert!(field.chars().count() <= MAX_CDR_FIELD_CHARS);
            assert!(!field.chars().any(char::is_control), "{field:?}");
            assert_eq!(field.trim(), field);
        }
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CDR_HEADER).expect("writes to memory");
    for r in &p.records {
        w.write_record(cdr_fields(r)).expect("writes to memory");
    }
    let written = w.into_inner().expect("writes to memory");
    let again = parse_cdrs("org", written.as_slice()).expect("a written file reads back");
    assert!(again.rejected.is_empty(), "{:?}", again.rejected);
    let before: Vec<_> = p.records.iter().map(cdr_fields).collect();
    let after: Vec<_> = again.records.iter().map(cdr_fields).collect();
    assert_eq!(before, after);
}

/// Ledger page cursors: any text is a cursor or `invalid_input`, and every cursor a
/// page hands out reads back as its entry. With eight bytes or more the first eight are
/// also taken as an entry number, so the round trip sees the whole range.
pub fn page_cursor(data: &[u8]) {
    if let Some(bytes) = data.get(..8) {
        let seq = i64::from_le_bytes(bytes.try_into().expect("eight bytes"));
        assert_eq!(parse_ledger_cursor(&ledger_cursor(seq)).ok(), Some(seq));
    }
    let Some(t) = text(data) else { return };
    let parsed = parse_ledger_cursor(t);
    assert_code(&parsed, &[ErrorCode::InvalidInput]);
    if let Ok(seq) = parsed {
        assert_eq!(parse_ledger_cursor(&ledger_cursor(seq)).ok(), Some(seq), "{t:?}");
    }
}
