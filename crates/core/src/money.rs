//! Money: integer minor units with an ISO 4217 currency. Checked arithmetic only.

use crate::err;
use crate::error::{ErrorCode, Result};
use rust_decimal::prelude::*;
use std::fmt;

/// An ISO 4217 currency that exists and has a defined number of minor units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub fn parse(code: &str) -> Result<Currency> {
        let upper = code.trim().to_ascii_uppercase();
        let c = iso_currency::Currency::from_code(&upper)
            .ok_or_else(|| err!(ErrorCode::InvalidCurrency, "'{code}' is not an ISO 4217 currency code"))?;
        if c.exponent().is_none() {
            return Err(err!(
                ErrorCode::InvalidCurrency,
                "'{upper}' has no minor unit and cannot be a billing currency"
            ));
        }
        Ok(Currency(c))
    }

    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// Number of decimal places of the minor unit (2 for USD, 0 for JPY).
    pub fn exponent(self) -> u32 {
        self.0.exponent().unwrap_or(0) as u32
    }

    fn scale(self) -> i64 {
        10i64.pow(self.exponent())
    }

    /// Parses a decimal amount in major units ("50.00") into minor units.
    /// Rejects more decimals than the currency has, and overflow.
    pub fn parse_major(self, text: &str) -> Result<i64> {
        let t = text.trim();
        let d = Decimal::from_str_exact(t)
            .map_err(|_| err!(ErrorCode::InvalidAmount, "'{text}' is not a decimal amount"))?;
        if d.scale() > self.exponent() && d.normalize().scale() > self.exponent() {
            return Err(err!(
                ErrorCode::InvalidAmount,
                "'{text}' has more than {} decimals for {}",
                self.exponent(),
                self.code()
            ));
        }
        let minor = d
            .checked_mul(Decimal::from(self.scale()))
            .and_then(|m| m.to_i64())
            .ok_or_else(|| err!(ErrorCode::AmountOverflow, "'{text}' is too large"))?;
        Ok(minor)
    }

    /// Parses a positive amount (greater than zero).
    pub fn parse_positive_major(self, text: &str) -> Result<i64> {
        let minor = self.parse_major(text)?;
        if minor <= 0 {
            return Err(err!(ErrorCode::InvalidAmount, "amount must be greater than zero, got '{text}'"));
        }
        Ok(minor)
    }

    /// Formats minor units as a decimal in major units: 1234 USD -> "12.34".
    pub fn format_minor(self, minor: i64) -> String {
        let mut s = String::new();
        self.write_minor(&mut s, minor);
        s
    }

    /// [`Currency::format_minor`], appended to `out`.
    pub fn write_minor(self, out: &mut String, minor: i64) {
        let exp = self.exponent();
        let mut digits = itoa::Buffer::new();
        if exp == 0 {
            out.push_str(digits.format(minor));
            return;
        }
        let scale = self.scale().unsigned_abs();
        if minor < 0 {
            out.push('-');
        }
        let abs = minor.unsigned_abs();
        out.push_str(digits.format(abs / scale));
        out.push('.');
        let fraction = digits.format(abs % scale);
        (fraction.len()..exp as usize).for_each(|_| out.push('0'));
        out.push_str(fraction);
    }

    /// Converts a major-unit decimal (a rate-deck connection fee) to minor units,
    /// rounding half-up.
    pub fn decimal_to_minor(self, major: Decimal) -> Result<i64> {
        // Checked: a deck's fee is outside input, and near Decimal's limit the product overflows.
        major
            .checked_mul(Decimal::from(self.scale()))
            .map(|m| m.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero))
            .and_then(|m| m.to_i64())
            .ok_or_else(|| err!(ErrorCode::AmountOverflow, "{major} is too large"))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An amount of money in minor units of one currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Money {
        Money { amount_minor, currency }
    }

    pub fn checked_add(self, other: Money) -> Result<Money> {
        self.same_currency(other)?;
        let amount_minor = self
            .amount_minor
            .checked_add(other.amount_minor)
            .ok_or_else(|| err!(ErrorCode::AmountOverflow, "sum overflows"))?;
        Ok(Money { amount_minor, ..self })
    }

    pub fn checked_sub(self, other: Money) -> Result<Money> {
        self.same_currency(other)?;
        let amount_minor = self
            .amount_minor
            .checked_sub(other.amount_minor)
            .ok_or_else(|| err!(ErrorCode::AmountOverflow, "difference overflows"))?;
        Ok(Money { amount_minor, ..self })
    }

    fn same_currency(self, other: Money) -> Result<()> {
        if self.currency != other.currency {
            return Err(err!(ErrorCode::CurrencyMismatch, "cannot combine {} and {}", self.currency, other.currency));
        }
        Ok(())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.currency.format_minor(self.amount_minor), self.currency)
    }
}

/// Adds two minor-unit amounts, failing instead of wrapping.
pub fn add_minor(a: i64, b: i64) -> Result<i64> {
    a.checked_add(b).ok_or_else(|| err!(ErrorCode::AmountOverflow, "amount overflows"))
}

/// Subtracts two minor-unit amounts, failing instead of wrapping.
pub fn sub_minor(a: i64, b: i64) -> Result<i64> {
    a.checked_sub(b).ok_or_else(|| err!(ErrorCode::AmountOverflow, "amount overflows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("usd").unwrap()
    }

    #[test]
    fn parses_major_amounts() {
        assert_eq!(usd().parse_major("50.00").unwrap(), 5000);
        assert_eq!(usd().parse_major("50").unwrap(), 5000);
        assert_eq!(usd().parse_major("0.1").unwrap(), 10);
        assert_eq!(usd().parse_major("1.230").unwrap(), 123);
        assert_eq!(usd().parse_major("1.234").unwrap_err().code, ErrorCode::InvalidAmount);
        assert_eq!(usd().parse_major("abc").unwrap_err().code, ErrorCode::InvalidAmount);
        assert_eq!(usd().parse_major("1e3").unwrap_err().code, ErrorCode::InvalidAmount);
        assert_eq!(usd().parse_major("99999999999999999999").unwrap_err().code, ErrorCode::AmountOverflow);
        assert_eq!(usd().parse_positive_major("0").unwrap_err().code, ErrorCode::InvalidAmount);
        assert_eq!(usd().parse_positive_major("-5").unwrap_err().code, ErrorCode::InvalidAmount);
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(jpy.parse_major("500").unwrap(), 500);
        assert!(jpy.parse_major("5.5").is_err());
    }

    #[test]
    fn formats_minor_units() {
        assert_eq!(usd().format_minor(1234), "12.34");
        assert_eq!(usd().format_minor(5), "0.05");
        assert_eq!(usd().format_minor(-5), "-0.05");
        assert_eq!(Currency::parse("JPY").unwrap().format_minor(500), "500");
        // Against the general formatter, for currencies of 0, 2 and 3 decimals.
        let mut x: i64 = 0x5DEE_CE66;
        for code in ["JPY", "USD", "KWD"] {
            let c = Currency::parse(code).unwrap();
            let scale = c.scale().unsigned_abs();
            let width = c.exponent() as usize;
            for i in 0..5_000 {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let minor = match i {
                    0 => i64::MIN,
                    1 => i64::MAX,
                    2 => 0,
                    _ => x >> (i % 60),
                };
                let (sign, abs) = (if minor < 0 { "-" } else { "" }, minor.unsigned_abs());
                let expected = if width == 0 {
                    minor.to_string()
                } else {
                    format!("{sign}{}.{:0width$}", abs / scale, abs % scale)
                };
                assert_eq!(c.format_minor(minor), expected, "{code} {minor}");
            }
        }
    }

    #[test]
    fn rejects_unknown_currency_and_mixing() {
        assert_eq!(Currency::parse("XXY").unwrap_err().code, ErrorCode::InvalidCurrency);
        let eur = Currency::parse("EUR").unwrap();
        let e = Money::new(1, usd()).checked_add(Money::new(1, eur)).unwrap_err();
        assert_eq!(e.code, ErrorCode::CurrencyMismatch);
        assert!(Money::new(i64::MAX, usd()).checked_add(Money::new(1, usd())).is_err());
    }
}
