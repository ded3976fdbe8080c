//! The one table of stable error codes. The CLI prints these codes, the HTTP API
//! (a later layer) maps them to statuses from the same table, so a code never
//! changes meaning between interfaces.

use std::fmt;

/// Every error the product reports, with its stable machine-readable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidInput,
    InvalidAmount,
    AmountOverflow,
    InvalidCurrency,
    CurrencyMismatch,
    InvalidCountry,
    InvalidPhoneNumber,
    InvalidEmail,
    InvalidSku,
    InvalidTime,
    NotFound,
    OrgNotFound,
    UserNotFound,
    PaymentMethodNotFound,
    DuplicateUpn,
    DuplicateNumber,
    DuplicateCallId,
    NoFreeSeat,
    LicenseRequiresPhoneSystem,
    BelowMinimumPurchase,
    InvalidCard,
    PaymentDeclined,
    ExpiredCard,
    UnknownCall,
    CallAlreadyEnded,
    InvalidRateDeck,
    InvalidCdr,
    CallDenied,
    Unauthorized,
    Forbidden,
    /// A form of the admin pages came without its session's anti-forgery token.
    InvalidCsrfToken,
    IdempotencyKeyReused,
    InvalidJson,
    UnsupportedMediaType,
    PayloadTooLarge,
    RateLimited,
    Overloaded,
    MethodNotAllowed,
    IdempotencyKeyInUse,
    WebhookFailed,
    StoreError,
    Internal,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidInput,
        ErrorCode::InvalidAmount,
        ErrorCode::AmountOverflow,
        ErrorCode::InvalidCurrency,
        ErrorCode::CurrencyMismatch,
        ErrorCode::InvalidCountry,
        ErrorCode::InvalidPhoneNumber,
        ErrorCode::InvalidEmail,
        ErrorCode::InvalidSku,
        ErrorCode::InvalidTime,
        ErrorCode::NotFound,
        ErrorCode::OrgNotFound,
        ErrorCode::UserNotFound,
        ErrorCode::PaymentMethodNotFound,
        ErrorCode::DuplicateUpn,
        ErrorCode::DuplicateNumber,
        ErrorCode::DuplicateCallId,
        ErrorCode::NoFreeSeat,
        ErrorCode::LicenseRequiresPhoneSystem,
        ErrorCode::BelowMinimumPurchase,
        ErrorCode::InvalidCard,
        ErrorCode::PaymentDeclined,
        ErrorCode::ExpiredCard,
        ErrorCode::UnknownCall,
        ErrorCode::CallAlreadyEnded,
        ErrorCode::InvalidRateDeck,
        ErrorCode::InvalidCdr,
        ErrorCode::CallDenied,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::InvalidCsrfToken,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::InvalidJson,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::MethodNotAllowed,
        ErrorCode::IdempotencyKeyInUse,
        ErrorCode::WebhookFailed,
        ErrorCode::StoreError,
        ErrorCode::Internal,
    ];

    /// The stable code, as printed by the CLI and returned by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::InvalidAmount => "invalid_amount",
            ErrorCode::AmountOverflow => "amount_overflow",
            ErrorCode::InvalidCurrency => "invalid_currency",
            ErrorCode::CurrencyMismatch => "currency_mismatch",
            ErrorCode::InvalidCountry => "invalid_country",
            ErrorCode::InvalidPhoneNumber => "invalid_phone_number",
            ErrorCode::InvalidEmail => "invalid_email",
            ErrorCode::InvalidSku => "unknown_sku",
            ErrorCode::InvalidTime => "invalid_time",
            ErrorCode::NotFound => "not_found",
            ErrorCode::OrgNotFound => "unknown_org",
            ErrorCode::UserNotFound => "unknown_user",
            ErrorCode::PaymentMethodNotFound => "unknown_payment_method",
            ErrorCode::DuplicateUpn => "duplicate_upn",
            ErrorCode::DuplicateNumber => "duplicate_number",
            ErrorCode::DuplicateCallId => "duplicate_call_id",
            ErrorCode::NoFreeSeat => "no_free_seat",
            ErrorCode::LicenseRequiresPhoneSystem => "license_requires_phone_system",
            ErrorCode::BelowMinimumPurchase => "below_minimum_purchase",
            ErrorCode::InvalidCard => "invalid_card",
            ErrorCode::PaymentDeclined => "payment_declined",
            ErrorCode::ExpiredCard => "expired_card",
            ErrorCode::UnknownCall => "unknown_call",
            ErrorCode::CallAlreadyEnded => "call_already_ended",
            ErrorCode::InvalidRateDeck => "invalid_rate_deck",
            ErrorCode::InvalidCdr => "invalid_cdr",
            ErrorCode::CallDenied => "call_denied",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidCsrfToken => "invalid_csrf_token",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::IdempotencyKeyInUse => "idempotency_key_in_use",
            ErrorCode::WebhookFailed => "webhook_failed",
            ErrorCode::StoreError => "store_error",
            ErrorCode::Internal => "internal_error",
        }
    }

    /// The HTTP status the API answers with for this code.
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            NotFound | OrgNotFound | UserNotFound | PaymentMethodNotFound | UnknownCall => 404,
            DuplicateUpn | DuplicateNumber | DuplicateCallId | NoFreeSeat | CallAlreadyEnded | IdempotencyKeyReused
            | IdempotencyKeyInUse => 409,
            PaymentDeclined | ExpiredCard => 402,
            Unauthorized => 401,
            Forbidden | InvalidCsrfToken => 403,
            InvalidJson => 400,
            UnsupportedMediaType => 415,
            PayloadTooLarge => 413,
            RateLimited => 429,
            Overloaded => 503,
            MethodNotAllowed => 405,
            StoreError | Internal => 500,
            _ => 422,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with its stable code and a message meant for a person.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error { code, message: message.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand: `bail!(ErrorCode::X, "message {}", y)`.
#[macro_export]
macro_rules! err {
    ($code:expr, $($arg:tt)*) => { $crate::error::Error::new($code, format!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_snake_case() {
        let mut seen = HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {}", c);
            assert!(c.as_str().chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'));
        }
    }
}
