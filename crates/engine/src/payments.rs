//! Payment methods and gateways. Card numbers stop here: the gateway turns them into
//! an opaque token, and only brand, last 4, expiry, holder and the token are stored.

use commcredits_core::{err, ErrorCode, Result, Timestamp};
use commcredits_store::{OrderRow, PaymentMethodRow};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A card as typed by an admin. Lives only as long as the request.
#[derive(Clone)]
pub struct CardInput {
    pub number: String,
    pub exp_month: u32,
    pub exp_year: i32,
    pub holder: String,
}

impl std::fmt::Debug for CardInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the number, even in debug output.
        write!(f, "CardInput(**** {:02}/{})", self.exp_month, self.exp_year)
    }
}

/// What a gateway keeps for a card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardToken {
    pub brand: String,
    pub last4: String,
    pub exp_month: u32,
    pub exp_year: i32,
    pub token: String,
}

/// Why a charge failed, with the stable code (`payment_declined`, `expired_card`...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentFailure {
    pub code: ErrorCode,
    pub message: String,
}

/// A payment gateway. `charge` must be idempotent on `order_id`: a retry after a crash
/// between the charge and recording it never charges twice.
pub trait PaymentGateway: Send + Sync {
    fn tokenize_card(&self, card: &CardInput, now: Timestamp) -> Result<CardToken>;
    fn charge(
        &self,
        order_id: &str,
        amount_minor: i64,
        currency: &str,
        method: &PaymentMethodRow,
        now: Timestamp,
    ) -> std::result::Result<String, PaymentFailure>;
}

/// Gateway calls that may be outstanding at once in this process. A call that does not
/// answer within its timeout keeps its thread until the gateway returns; past this
/// many such calls, orders are left pending (for the jobs) instead of piling up threads.
pub const MAX_OUTSTANDING_CHARGES: usize = 16;

static OUTSTANDING_CHARGES: AtomicUsize = AtomicUsize::new(0);

/// Asks the gateway to charge `order`, waiting at most `timeout`. None: no answer in
/// time (or too many calls outstanding): the order stays pending and is charged again
/// later, which the gateway's idempotency on the order id makes safe.
pub fn charge_with_timeout(
    gateway: &Arc<dyn PaymentGateway>,
    order: &OrderRow,
    method: PaymentMethodRow,
    now: Timestamp,
    timeout: Duration,
) -> Option<std::result::Result<String, PaymentFailure>> {
    if OUTSTANDING_CHARGES.fetch_add(1, Ordering::SeqCst) >= MAX_OUTSTANDING_CHARGES {
        OUTSTANDING_CHARGES.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let gateway = gateway.clone();
    let (order_id, amount_minor, currency) = (order.order_id.clone(), order.amount_minor, order.currency.clone());
    let spawned = std::thread::Builder::new().name("gateway-charge".into()).spawn(move || {
        let result = gateway.charge(&order_id, amount_minor, &currency, &method, now);
        OUTSTANDING_CHARGES.fetch_sub(1, Ordering::SeqCst);
        let _ = tx.send(result);
    });
    if spawned.is_err() {
        OUTSTANDING_CHARGES.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    rx.recv_timeout(timeout).ok()
}

/// Parses `MM/YYYY` (or `MM/YY`).
pub fn parse_expiry(text: &str) -> Result<(u32, i32)> {
    let bad = || err!(ErrorCode::InvalidCard, "expiry '{text}' must be MM/YYYY");
    let (m, y) = text.trim().split_once('/').ok_or_else(bad)?;
    let month: u32 = m.parse().map_err(|_| bad())?;
    let mut year: i32 = y.parse().map_err(|_| bad())?;
    if y.len() == 2 {
        year += 2000;
    }
    if !(1..=12).contains(&month) || !(2000..=2100).contains(&year) {
        return Err(bad());
    }
    Ok((month, year))
}

pub fn luhn_valid(digits: &str) -> bool {
    if digits.len() < 12 || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

pub fn card_brand(digits: &str) -> &'static str {
    let p2: u32 = digits.get(..2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let p4: u32 = digits.get(..4).and_then(|s| s.parse().ok()).unwrap_or(0);
    if digits.starts_with('4') {
        "visa"
    } else if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) {
        "mastercard"
    } else if p2 == 34 || p2 == 37 {
        "amex"
    } else if p4 == 6011 || p2 == 65 {
        "discover"
    } else {
        "card"
    }
}

/// True when a card valid through `exp_month/exp_year` has expired at `now` (UTC):
/// a card is good until the last moment of its expiry month.
pub fn card_expired(exp_month: u32, exp_year: i32, now: Timestamp) -> bool {
    let d = now.to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let (y, m) = (i32::from(d.year()), u32::from(d.month() as u8));
    (exp_year, exp_month) < (y, m)
}

/// The built-in sandbox: validates cards (Luhn, expiry) and has test numbers with
/// fixed outcomes. Enterprise Agreement orders always succeed (invoiced later).
#[derive(Default)]
pub struct SandboxGateway;

pub const CARD_DECLINED: &str = "4000000000000002";
pub const CARD_EXPIRED_AT_CHARGE: &str = "4000000000000069";

impl PaymentGateway for SandboxGateway {
    fn tokenize_card(&self, card: &CardInput, now: Timestamp) -> Result<CardToken> {
        let digits: String = card.number.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if !luhn_valid(&digits) {
            return Err(err!(ErrorCode::InvalidCard, "the card number is not valid (checksum)"));
        }
        if !(1..=12).contains(&card.exp_month) {
            return Err(err!(ErrorCode::InvalidCard, "expiry month must be 1 to 12"));
        }
        if card_expired(card.exp_month, card.exp_year, now) {
            return Err(err!(ErrorCode::ExpiredCard, "the card expired in {:02}/{}", card.exp_month, card.exp_year));
        }
        // The token carries the sandbox outcome, as payment sandboxes' test tokens do.
        let behaviour = match digits.as_str() {
            CARD_DECLINED => "decline",
            CARD_EXPIRED_AT_CHARGE => "expired",
            _ => "ok",
        };
        Ok(CardToken {
            brand: card_brand(&digits).to_string(),
            last4: digits[digits.len() - 4..].to_string(),
            exp_month: card.exp_month,
            exp_year: card.exp_year,
            token: format!("sbx_{behaviour}_{}", uuid::Uuid::now_v7().simple()),
        })
    }

    fn charge(
        &self,
        order_id: &str,
        amount_minor: i64,
        currency: &str,
        method: &PaymentMethodRow,
        now: Timestamp,
    ) -> std::result::Result<String, PaymentFailure> {
        if amount_minor <= 0 {
            return Err(PaymentFailure { code: ErrorCode::InvalidAmount, message: "amount must be positive".into() });
        }
        if method.kind == "enterprise_agreement" {
            return Ok(format!("ea_{order_id}"));
        }
        let token = method.token.as_deref().unwrap_or("");
        let (m, y) = (method.exp_month.unwrap_or(0) as u32, method.exp_year.unwrap_or(0) as i32);
        if token.starts_with("sbx_expired_") || card_expired(m, y, now) {
            return Err(PaymentFailure {
                code: ErrorCode::ExpiredCard,
                message: format!(
                    "the card ending {} (expiry {:02}/{}) was refused as expired",
                    method.last4.as_deref().unwrap_or("????"),
                    m,
                    y
                ),
            });
        }
        if token.starts_with("sbx_decline_") {
            return Err(PaymentFailure {
                code: ErrorCode::PaymentDeclined,
                message: format!("the card ending {} was declined", method.last4.as_deref().unwrap_or("????")),
            });
        }
        if !token.starts_with("sbx_ok_") {
            return Err(PaymentFailure { code: ErrorCode::PaymentDeclined, message: "unknown card token".into() });
        }
        Ok(format!("ch_{order_id}_{amount_minor}{currency}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-15T00:00:00Z".parse().unwrap()
    }

    fn card(n: &str, m: u32, y: i32) -> CardInput {
        CardInput { number: n.into(), exp_month: m, exp_year: y, holder: "A".into() }
    }

    #[test]
    fn sandbox_validates_and_tokenizes() {
        let g = SandboxGateway;
        assert!(luhn_valid("4242424242424242"));
        assert!(!luhn_valid("4242424242424241"));
        let t = g.tokenize_card(&card("4242 4242 4242 4242", 12, 2030), now()).unwrap();
        assert_eq!((t.brand.as_str(), t.last4.as_str()), ("visa", "4242"));
        assert!(!t.token.contains("4242424242424242"));
        assert_eq!(
            g.tokenize_card(&card("4242424242424241", 12, 2030), now()).unwrap_err().code,
            ErrorCode::InvalidCard
        );
        assert_eq!(
            g.tokenize_card(&card("4242424242424242", 10, 2026), now()).unwrap_err().code,
            ErrorCode::ExpiredCard
        );
        // valid through the end of its expiry month
        assert!(g.tokenize_card(&card("4242424242424242", 11, 2026), now()).is_ok());
        assert_eq!(parse_expiry("07/2029").unwrap(), (7, 2029));
        assert_eq!(parse_expiry("07/29").unwrap(), (7, 2029));
        assert!(parse_expiry("13/2029").is_err());
    }

    #[test]
    fn sandbox_test_numbers_have_fixed_outcomes() {
        let g = SandboxGateway;
        let pm = |n: &str, m: u32, y: i32| {
            let t = g.tokenize_card(&card(n, m, y), now()).unwrap();
            PaymentMethodRow {
                org_id: "o".into(),
                pm_id: "p".into(),
                kind: "card".into(),
                brand: Some(t.brand),
                last4: Some(t.last4),
                exp_month: Some(i64::from(t.exp_month)),
                exp_year: Some(i64::from(t.exp_year)),
                holder: None,
                token: Some(t.token),
                agreement_number: None,
                created_at: now(),
            }
        };
        assert!(g.charge("o1", 5000, "USD", &pm("4242424242424242", 12, 2030), now()).is_ok());
        assert_eq!(
            g.charge("o1", 5000, "USD", &pm(CARD_DECLINED, 12, 2030), now()).unwrap_err().code,
            ErrorCode::PaymentDeclined
        );
        assert_eq!(
            g.charge("o1", 5000, "USD", &pm(CARD_EXPIRED_AT_CHARGE, 12, 2030), now()).unwrap_err().code,
            ErrorCode::ExpiredCard
        );
        // valid when saved, expired by the time a recharge runs
        let saved = pm("4242424242424242", 11, 2026);
        let later: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        assert_eq!(g.charge("o1", 5000, "USD", &saved, later).unwrap_err().code, ErrorCode::ExpiredCard);
    }
}
