//! The JSON objects of the outside contract (SPEC §3). The CLI's `--json` prints these,
//! and the HTTP API answers with the same shapes. Amounts are integers in minor units
//! with a `currency` beside them; rates are decimal strings; times are RFC 3339 UTC.

use commcredits_core::catalog::PoolKind;
use commcredits_core::pools::percent_used;
use commcredits_core::Timestamp;
use commcredits_store::*;
use serde::Serialize;

/// RFC 3339 in UTC to the second, as the API prints times. Computed directly from the
/// Unix seconds (days to civil date, Hinnant's algorithm): reports format two times
/// per row, and this is several times faster than a general formatter.
pub fn iso(t: Timestamp) -> String {
    let mut s = String::with_capacity(20);
    write_iso(&mut s, t);
    s
}

/// [`iso`], appended to `out` (exports reuse one buffer for every row).
pub fn write_iso(out: &mut String, t: Timestamp) {
    use std::fmt::Write;
    let secs = t.as_second();
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9_999).contains(&year) {
        let _ = write!(out, "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60);
        return;
    }
    // Digits placed directly: the general formatter's padding was a quarter of a CSV
    // export's time.
    let mut b = *b"0000-00-00T00:00:00Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    out.push_str(std::str::from_utf8(&b).expect("ASCII digits"));
}

#[cfg(test)]
mod iso_tests {
    use super::*;

    #[test]
    fn matches_the_general_formatter() {
        let mut x: i64 = 0x1234_5678;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let secs = x.rem_euclid(253_402_300_799 + 62_135_596_800) - 62_135_596_800;
            let t = Timestamp::from_second(secs).unwrap();
            assert_eq!(iso(t), t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(), "{secs}");
        }
        for s in ["2024-02-29T23:59:59Z", "1970-01-01T00:00:00Z", "2000-03-01T00:00:00Z", "1969-12-31T23:59:59Z"] {
            assert_eq!(iso(s.parse().unwrap()), s);
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct OrgView {
    pub id: String,
    pub name: String,
    pub currency: String,
    pub country: String,
    pub notification_emails: Vec<String>,
    pub low_balance_level: Option<i64>,
    pub suspended: bool,
    pub created_at: String,
}

impl From<&OrgRow> for OrgView {
    fn from(o: &OrgRow) -> Self {
        OrgView {
            id: o.org_id.clone(),
            name: o.name.clone(),
            currency: o.currency.clone(),
            country: o.country.clone(),
            notification_emails: o.notification_emails.clone(),
            low_balance_level: o.low_balance_minor,
            suspended: o.suspended,
            created_at: iso(o.created_at),
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UserView {
    pub id: String,
    pub upn: String,
    pub display_name: String,
    pub usage_location: String,
    pub phone_number: Option<String>,
    pub licenses: Vec<String>,
    pub dial_out_policy: String,
    pub conference_dial_out_policy: String,
    pub spend_limit: Option<i64>,
    pub created_at: String,
}

impl UserView {
    pub fn new(u: &UserRow, licenses: Vec<String>) -> Self {
        UserView {
            id: u.user_id.clone(),
            upn: u.upn.clone(),
            display_name: u.display_name.clone(),
            usage_location: u.usage_location.clone(),
            phone_number: u.phone_number.clone(),
            licenses,
            dial_out_policy: u.dial_out.clone(),
            conference_dial_out_policy: u.conference_dial_out.clone(),
            spend_limit: u.spend_limit_minor,
            created_at: iso(u.created_at),
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SubscriptionView {
    pub sku: String,
    pub quantity: i64,
    pub assigned: i64,
    pub available: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct NumberView {
    pub number: String,
    pub kind: String,
    pub user_id: Option<String>,
    pub created_at: String,
}

impl From<&NumberRow> for NumberView {
    fn from(n: &NumberRow) -> Self {
        NumberView {
            number: n.number.clone(),
            kind: n.kind.clone(),
            user_id: n.user_id.clone(),
            created_at: iso(n.created_at),
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CardView {
    pub brand: String,
    pub last4: String,
    pub exp_month: i64,
    pub exp_year: i64,
    pub holder: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PaymentMethodView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card: Option<CardView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement_number: Option<String>,
    pub created_at: String,
}

impl From<&PaymentMethodRow> for PaymentMethodView {
    fn from(p: &PaymentMethodRow) -> Self {
        PaymentMethodView {
            id: p.pm_id.clone(),
            kind: p.kind.clone(),
            card: (p.kind == "card").then(|| CardView {
                brand: p.brand.clone().unwrap_or_default(),
                last4: p.last4.clone().unwrap_or_default(),
                exp_month: p.exp_month.unwrap_or(0),
                exp_year: p.exp_year.unwrap_or(0),
                holder: p.holder.clone(),
            }),
            agreement_number: p.agreement_number.clone(),
            created_at: iso(p.created_at),
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LotView {
    pub id: String,
    pub amount: i64,
    pub remaining: i64,
    pub reserved: i64,
    pub purchased_at: String,
    pub expires_at: String,
    pub expired: bool,
}

impl From<&LotRow> for LotView {
    fn from(l: &LotRow) -> Self {
        LotView {
            id: l.lot_id.clone(),
            amount: l.amount_minor,
            remaining: l.remaining_minor,
            reserved: l.reserved_minor,
            purchased_at: iso(l.purchased_at),
            expires_at: iso(l.expires_at),
            expired: l.expired,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AutoRechargeView {
    pub enabled: bool,
    pub amount: i64,
    pub threshold: i64,
    pub payment_method_id: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CreditsView {
    pub balance: i64,
    pub reserved: i64,
    pub available: i64,
    pub currency: String,
    pub lots: Vec<LotView>,
    pub auto_recharge: AutoRechargeView,
}

impl CreditsView {
    pub fn new(a: &AccountRow, lots: &[LotRow]) -> Self {
        CreditsView {
            balance: a.balance_minor,
            reserved: a.reserved_minor,
            available: a.balance_minor - a.reserved_minor,
            currency: a.currency.clone(),
            lots: lots.iter().map(LotView::from).collect(),
            auto_recharge: AutoRechargeView {
                enabled: a.ar_enabled,
                amount: a.ar_amount_minor,
                threshold: a.ar_threshold_minor,
                payment_method_id: a.ar_payment_method_id.clone(),
            },
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LedgerEntryView {
    pub seq: i64,
    pub id: String,
    pub kind: String,
    pub amount: i64,
    pub currency: String,
    pub balance_after: i64,
    pub lot_id: Option<String>,
    pub call_id: Option<String>,
    pub order_id: Option<String>,
    pub at: String,
    pub memo: String,
}

impl LedgerEntryView {
    pub fn new(e: &LedgerRow, currency: &str) -> Self {
        LedgerEntryView {
            seq: e.seq,
            id: e.entry_id.clone(),
            kind: e.kind.clone(),
            amount: e.amount_minor,
            currency: currency.to_string(),
            balance_after: e.balance_after_minor,
            lot_id: e.lot_id.clone(),
            call_id: e.call_id.clone(),
            order_id: e.order_id.clone(),
            at: iso(e.at),
            memo: e.memo.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LedgerPage {
    pub entries: Vec<LedgerEntryView>,
    /// Pass as `cursor` (HTTP) or `--after` (CLI) to read the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct OrderView {
    pub id: String,
    pub kind: String,
    pub amount: i64,
    pub currency: String,
    pub payment_method_id: String,
    pub po_number: Option<String>,
    pub status: String,
    pub failure_reason: Option<String>,
    pub lot_id: Option<String>,
    pub created_at: String,
    pub completed_at: Option<String>,
}

impl From<&OrderRow> for OrderView {
    fn from(o: &OrderRow) -> Self {
        OrderView {
            id: o.order_id.clone(),
            kind: o.kind.clone(),
            amount: o.amount_minor,
            currency: o.currency.clone(),
            payment_method_id: o.payment_method_id.clone(),
            po_number: o.po_number.clone(),
            status: o.status.clone(),
            failure_reason: o.failure_reason.clone(),
            lot_id: o.lot_id.clone(),
            created_at: iso(o.created_at),
            completed_at: o.completed_at.map(iso),
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PoolView {
    /// ISO country, or `*` for the organization-wide conferencing pool.
    pub country: String,
    pub kind: String,
    pub month: String,
    pub size: i64,
    pub used: i64,
    pub reserved: i64,
    pub available: i64,
    pub percent_used: i64,
}

impl PoolView {
    pub fn new(scope: &str, kind: PoolKind, month: String, size: i64, used: i64, reserved: i64) -> Self {
        PoolView {
            country: scope.to_string(),
            kind: kind.as_str().to_string(),
            month,
            size,
            used,
            reserved,
            available: commcredits_core::pools::remaining_minutes(size, used, reserved),
            percent_used: percent_used(size, used),
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct NoticeView {
    pub id: String,
    pub kind: String,
    pub created_at: String,
    pub subject: String,
    pub body: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub status: String,
}

impl From<&NoticeRow> for NoticeView {
    fn from(n: &NoticeRow) -> Self {
        NoticeView {
            id: n.notice_id.clone(),
            kind: n.kind.clone(),
            created_at: iso(n.created_at),
            subject: n.subject.clone(),
            body: n.body.clone(),
            data: serde_json::from_str(&n.data).unwrap_or(serde_json::Value::Null),
            status: n.status.clone(),
        }
    }
}

/// The answer to `authorize` (and to `rate`, which changes nothing).
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AuthorizeView {
    pub call_id: String,
    pub decision: String,
    pub granted_seconds: u32,
    pub funding: String,
    pub rate_per_minute: Option<String>,
    pub connection_fee: i64,
    pub increment_seconds: u32,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub plan_minutes: i64,
    pub reserved_amount: i64,
    pub destination: String,
    pub destination_name: Option<String>,
    pub pool: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UpdateView {
    pub call_id: String,
    /// Further seconds granted beyond `used_seconds`.
    pub granted_seconds: u32,
    pub used_seconds: u32,
    pub total_granted_seconds: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EndView {
    pub call_id: String,
    pub charge: i64,
    pub currency: String,
    pub funding: String,
    pub plan_minutes: i64,
    pub duration_seconds: i64,
    pub charged_seconds: i64,
    pub overrun_seconds: i64,
    pub state: String,
}

impl From<&CdrRow> for EndView {
    fn from(c: &CdrRow) -> Self {
        EndView {
            call_id: c.call_id.clone(),
            charge: c.charge_minor,
            currency: c.currency.clone(),
            funding: c.funding.clone(),
            plan_minutes: c.plan_minutes,
            duration_seconds: c.duration_seconds,
            charged_seconds: c.charged_seconds,
            overrun_seconds: c.overrun_seconds,
            state: String::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DenialView {
    pub at: String,
    pub call_id: String,
    pub call_type: String,
    pub user_id: Option<String>,
    pub to: String,
    pub reason: String,
}

impl From<&DenialRow> for DenialView {
    fn from(d: &DenialRow) -> Self {
        DenialView {
            at: iso(d.at),
            call_id: d.call_id.clone(),
            call_type: d.call_type.clone(),
            user_id: d.user_id.clone(),
            to: d.to_number.clone(),
            reason: d.reason.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub created_at: String,
}

impl From<&WebhookRow> for WebhookView {
    fn from(w: &WebhookRow) -> Self {
        WebhookView { id: w.webhook_id.clone(), url: w.url.clone(), created_at: iso(w.created_at) }
    }
}

/// A new webhook: the only time its signing secret is shown.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct NewWebhook {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// The signing secret, in the first answer only: a replay with the same
    /// Idempotency-Key answers null and a `secret_note`.
    #[schema(value_type = Option<String>)]
    pub secret: String,
    /// Only in a replay: why `secret` is null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_note: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub notice_id: String,
    /// email or webhook.
    pub channel: String,
    /// Recipients, or the webhook id.
    pub target: Vec<String>,
    /// pending, sent or failed.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub sent_at: Option<String>,
}

impl From<&DeliveryRow> for DeliveryView {
    fn from(d: &DeliveryRow) -> Self {
        DeliveryView {
            id: d.delivery_id.clone(),
            notice_id: d.notice_id.clone(),
            channel: d.channel.clone(),
            target: d.target.lines().map(str::to_string).collect(),
            status: d.status.clone(),
            attempts: d.attempts,
            next_attempt_at: (d.status == "pending").then(|| iso(d.next_attempt_at)),
            last_error: d.last_error.clone(),
            sent_at: d.sent_at.map(iso),
        }
    }
}

/// Notification settings of an organization.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct NotificationSettingsView {
    pub notification_emails: Vec<String>,
    /// Minor units; null when no low-balance warning is set.
    pub low_balance_level: Option<i64>,
    pub currency: String,
    /// Kinds on; the others are off.
    pub enabled_notices: Vec<String>,
}

/// An RFC 9457 problem document for an error, with its stable `code`.
pub fn problem(e: &commcredits_core::Error) -> serde_json::Value {
    serde_json::json!({
        "type": format!("urn:commcredits:problem:{}", e.code.as_str()),
        "title": e.code.as_str().replace('_', " "),
        "status": e.code.http_status(),
        "detail": e.message,
        "code": e.code.as_str(),
    })
}

fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// What is said in place of a secret when an answer is replayed.
pub const SECRET_NOT_SHOWN: &str =
    "the secret was shown once, in the first answer to this request; it is not shown again";

/// An answer as it may be stored and replayed: every `secret` field (a webhook's
/// signing secret, a new API key) is replaced by null, with `secret_note` saying why.
pub fn without_secrets(mut body: serde_json::Value) -> serde_json::Value {
    fn scrub(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if map.get("secret").is_some_and(|s| !s.is_null()) {
                    map.insert("secret".into(), serde_json::Value::Null);
                    map.insert("secret_note".into(), SECRET_NOT_SHOWN.into());
                }
                map.values_mut().for_each(scrub);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(scrub),
            _ => {}
        }
    }
    scrub(&mut body);
    body
}

/// The HTTP answer to a command's result: status and JSON body.
pub fn respond(result: &commcredits_core::Result<crate::Outcome>) -> (u16, serde_json::Value) {
    use crate::Outcome;
    match result {
        Err(e) => (e.code.http_status(), problem(e)),
        Ok(Outcome::Created { id }) => (201, serde_json::json!({ "id": id })),
        Ok(Outcome::Done) => (200, serde_json::json!({})),
        Ok(Outcome::Order(v)) => (201, json(v)),
        Ok(Outcome::Authorized(v)) => (200, json(v)),
        Ok(Outcome::Updated(v)) => (200, json(v)),
        Ok(Outcome::Ended(v)) => (200, json(v)),
        Ok(Outcome::Duplicate { call_id }) => (200, serde_json::json!({ "call_id": call_id, "duplicate": true })),
        Ok(Outcome::Count(n)) => (200, serde_json::json!({ "count": n })),
        Ok(Outcome::Key(k)) => (201, json(k)),
        Ok(Outcome::Webhook(w)) => (201, json(w)),
        Ok(Outcome::Delivery(_)) => (200, serde_json::json!({})),
        Ok(Outcome::User(v)) => (200, json(v)),
        Ok(Outcome::Credits(v)) => (200, json(v)),
        Ok(Outcome::Replayed { status, body }) => (*status, body.clone()),
        Ok(Outcome::Claimed { .. }) => (200, serde_json::json!({})),
    }
}
