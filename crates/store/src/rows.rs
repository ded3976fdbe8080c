//! Rows as the store keeps them. Plain data: parsing into domain types happens in the engine.

use commcredits_core::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgRow {
    pub org_id: String,
    pub name: String,
    pub currency: String,
    pub country: String,
    pub notification_emails: Vec<String>,
    pub low_balance_minor: Option<i64>,
    pub suspended: bool,
    pub created_at: Timestamp,
    /// Notice kinds the organization turned off.
    pub disabled_notices: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRow {
    pub org_id: String,
    pub user_id: String,
    pub upn: String,
    pub display_name: String,
    pub usage_location: String,
    pub phone_number: Option<String>,
    pub dial_out: String,
    pub conference_dial_out: String,
    pub spend_limit_minor: Option<i64>,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberRow {
    pub org_id: String,
    pub number: String,
    pub kind: String,
    pub user_id: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentMethodRow {
    pub org_id: String,
    pub pm_id: String,
    /// `card` or `enterprise_agreement`.
    pub kind: String,
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub exp_month: Option<i64>,
    pub exp_year: Option<i64>,
    pub holder: Option<String>,
    /// The gateway's opaque token; never the card number.
    pub token: Option<String>,
    pub agreement_number: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRow {
    pub org_id: String,
    pub currency: String,
    pub balance_minor: i64,
    pub reserved_minor: i64,
    pub ar_enabled: bool,
    pub ar_amount_minor: i64,
    pub ar_threshold_minor: i64,
    pub ar_payment_method_id: Option<String>,
    pub ar_armed: bool,
    pub exhausted_notified: bool,
    pub low_balance_notified: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LotRow {
    pub org_id: String,
    pub lot_id: String,
    pub order_id: Option<String>,
    pub amount_minor: i64,
    pub remaining_minor: i64,
    pub reserved_minor: i64,
    pub purchased_at: Timestamp,
    pub expires_at: Timestamp,
    pub expired: bool,
    pub expiring_notified: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerRow {
    /// Assigned by the store on append.
    pub seq: i64,
    pub org_id: String,
    pub entry_id: String,
    /// `purchase`, `charge`, `expiry` or `adjustment`.
    pub kind: String,
    /// Signed: purchases and positive adjustments add, charges and expiries subtract.
    pub amount_minor: i64,
    pub balance_after_minor: i64,
    pub lot_id: Option<String>,
    pub call_id: Option<String>,
    pub order_id: Option<String>,
    pub at: Timestamp,
    pub memo: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderRow {
    pub org_id: String,
    pub order_id: String,
    /// `purchase` or `auto_recharge`.
    pub kind: String,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_method_id: String,
    pub po_number: Option<String>,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub failure_reason: Option<String>,
    pub lot_id: Option<String>,
    pub created_at: Timestamp,
    pub completed_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolUsageRow {
    pub org_id: String,
    pub scope: String,
    pub kind: String,
    pub month: i32,
    pub used_minutes: i64,
    pub reserved_minutes: i64,
    pub notified_80: bool,
    pub notified_100: bool,
}

impl PoolUsageRow {
    /// A pool with nothing used yet this month.
    pub fn empty(org_id: &str, scope: &str, kind: &str, month: i32) -> PoolUsageRow {
        PoolUsageRow {
            org_id: org_id.into(),
            scope: scope.into(),
            kind: kind.into(),
            month,
            used_minutes: 0,
            reserved_minutes: 0,
            notified_80: false,
            notified_100: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSpendRow {
    pub org_id: String,
    pub user_id: String,
    pub month: i32,
    pub spent_minor: i64,
    pub reserved_minor: i64,
}

impl UserSpendRow {
    /// A user who has spent nothing yet this month.
    pub fn empty(org_id: &str, user_id: &str, month: i32) -> UserSpendRow {
        UserSpendRow { org_id: org_id.into(), user_id: user_id.into(), month, spent_minor: 0, reserved_minor: 0 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationRow {
    pub org_id: String,
    pub call_id: String,
    pub call_type: String,
    pub user_id: Option<String>,
    pub from_number: String,
    pub to_number: String,
    /// `pending`, `settled`, `released` or `expired`.
    pub state: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub expires_at: Timestamp,
    pub granted_seconds: i64,
    pub used_seconds: i64,
    pub plan_scope: Option<String>,
    pub plan_kind: Option<String>,
    pub plan_month: Option<i32>,
    pub plan_minutes: i64,
    pub money_minor: i64,
    /// Money held per lot: `lot_id:amount` joined by `;`.
    pub earmarks: String,
    pub spend_month: i32,
    pub rate_prefix: Option<String>,
    pub rate_name: Option<String>,
    pub rate_per_minute: Option<String>,
    pub connection_fee_minor: i64,
    pub increment_seconds: i64,
    pub domestic: bool,
    pub dest_country: Option<String>,
    pub emergency: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CdrRow {
    pub org_id: String,
    pub call_id: String,
    pub usage_id: String,
    pub call_type: String,
    pub user_id: Option<String>,
    pub from_number: String,
    pub to_number: String,
    pub dest_country: Option<String>,
    pub domestic: bool,
    pub start_at: Timestamp,
    pub end_at: Timestamp,
    pub duration_seconds: i64,
    pub charged_seconds: i64,
    pub overrun_seconds: i64,
    pub plan_minutes: i64,
    pub plan_kind: Option<String>,
    pub charge_minor: i64,
    pub connection_fee_minor: i64,
    pub currency: String,
    pub funding: String,
    pub rate_name: Option<String>,
    pub rate_per_minute: Option<String>,
    /// `realtime` or `import`.
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoticeRow {
    pub seq: i64,
    pub org_id: String,
    pub notice_id: String,
    pub kind: String,
    pub created_at: Timestamp,
    pub subject: String,
    pub body: String,
    /// The notice's facts as a JSON object (amounts, reason, pool...).
    pub data: String,
    /// `pending` until a delivery worker sends it.
    pub status: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenialRow {
    pub seq: i64,
    pub org_id: String,
    pub at: Timestamp,
    pub call_id: String,
    pub call_type: String,
    pub user_id: Option<String>,
    pub to_number: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateDeckRow {
    pub kind: String,
    pub currency: String,
    pub csv: String,
    pub entries: i64,
    pub imported_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// `""` for platform keys (operator, call_control).
    pub org_id: String,
    pub key_id: String,
    pub role: String,
    pub name: String,
    /// SHA-256 of the secret, hex; the secret itself is never stored.
    pub secret_hash: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRow {
    /// The organization, or `""` for platform requests.
    pub org_id: String,
    pub key: String,
    /// A hash of the request (method, path, body) the key was first used with.
    pub fingerprint: String,
    /// The answer's HTTP status, or 0 for a claim: a request still being processed,
    /// whose `body` is then the claim's token.
    pub status: i64,
    pub body: String,
    pub created_at: Timestamp,
    /// When the record stops counting: an answer's time to live, a claim's lease.
    /// From then on the key is free again and the record is swept away.
    pub expires_at: Timestamp,
    /// The call a call-control record belongs to: it is deleted when the call ends.
    pub call_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookRow {
    pub org_id: String,
    pub webhook_id: String,
    pub url: String,
    /// The HMAC key bodies are signed with (kept: the server signs every delivery).
    pub secret: String,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRow {
    pub org_id: String,
    pub delivery_id: String,
    pub notice_id: String,
    /// `email` or `webhook`.
    pub channel: String,
    /// Recipients (newline-separated) for e-mail, the webhook id for webhooks.
    pub target: String,
    /// `pending`, `sent` or `failed`.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Timestamp,
    pub last_error: Option<String>,
    pub sent_at: Option<Timestamp>,
    pub created_at: Timestamp,
}
