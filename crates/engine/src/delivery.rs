//! Delivering the outbox: e-mail over SMTP (lettre, rustls) and signed webhooks.
//!
//! A notice written in a transaction gets, in that same transaction, one delivery row
//! per channel (an e-mail to the organization's recipients, a POST to each webhook).
//! A worker claims due deliveries (a lease, so two servers do not send the same one at
//! once), sends outside any transaction, and records the result: sent, or a retry at
//! an exponentially growing, jittered delay, or failed after the last attempt. Each
//! e-mail carries a stable Message-ID and each webhook the notice id, so a receiver can
//! drop the rare duplicate (a crash between sending and recording).

use crate::{internal, new_id, Command, Engine, Outcome};
use commcredits_core::money::Currency;
use commcredits_core::{err, ErrorCode, Result, Timestamp};
use commcredits_store::{DeliveryRow, NoticeRow, OrgRow, Tx, WebhookRow};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

/// Header carrying a webhook's signature: `t=<unix seconds>,v1=<hex HMAC-SHA256>` of
/// `"<t>.<body>"` with the endpoint's secret.
pub const SIGNATURE_HEADER: &str = "Commcredits-Signature";
/// Header carrying the notice id (the same on every retry).
pub const NOTICE_HEADER: &str = "Commcredits-Notice-Id";

/// An e-mail ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email {
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// Stable per notice: `<notice-id@commcredits>`.
    pub message_id: String,
}

pub trait Mailer: Send + Sync {
    fn send(&self, email: &Email) -> std::result::Result<(), String>;
}

pub trait WebhookSender: Send + Sync {
    /// POSTs `body`; Ok on a 2xx answer.
    fn post(&self, url: &str, headers: &[(String, String)], body: &str) -> std::result::Result<(), String>;
}

/// SMTP through lettre: `smtp://host:port` (plain), `smtp://host:port?tls=required`
/// (STARTTLS), `smtps://user:pass@host` (implicit TLS), credentials optional.
pub struct SmtpMailer {
    transport: lettre::SmtpTransport,
    from: lettre::message::Mailbox,
}

impl SmtpMailer {
    pub fn new(url: &str, from: &str) -> Result<SmtpMailer> {
        let transport = lettre::SmtpTransport::from_url(url)
            .map_err(|e| err!(ErrorCode::InvalidInput, "--smtp-url '{}': {e}", redact(url)))?
            .timeout(Some(Duration::from_secs(20)))
            .build();
        let from = from.parse().map_err(|e| err!(ErrorCode::InvalidEmail, "--mail-from '{from}': {e}"))?;
        Ok(SmtpMailer { transport, from })
    }
}

/// A URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}***{}", &url[..s + 3], &url[a..]),
        _ => url.to_string(),
    }
}

impl Mailer for SmtpMailer {
    fn send(&self, email: &Email) -> std::result::Result<(), String> {
        use lettre::message::{header::ContentType, MultiPart, SinglePart};
        use lettre::Transport;
        let mut b = lettre::Message::builder()
            .from(self.from.clone())
            .subject(&email.subject)
            .message_id(Some(email.message_id.clone()));
        for to in &email.to {
            b = b.to(to.parse().map_err(|e| format!("recipient {to}: {e}"))?);
        }
        let msg = b
            .multipart(
                MultiPart::alternative()
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(email.text.clone()))
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(email.html.clone())),
            )
            .map_err(|e| e.to_string())?;
        self.transport.send(&msg).map(drop).map_err(|e| e.to_string())
    }
}

/// Webhooks over HTTP(S) with ureq (rustls), 10 s per attempt.
pub struct HttpWebhooks {
    agent: ureq::Agent,
}

impl Default for HttpWebhooks {
    fn default() -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build();
        HttpWebhooks { agent: config.into() }
    }
}

impl WebhookSender for HttpWebhooks {
    fn post(&self, url: &str, headers: &[(String, String)], body: &str) -> std::result::Result<(), String> {
        let mut req = self.agent.post(url).header("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send(body).map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("the endpoint answered {status}"))
        }
    }
}

/// How deliveries are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Attempts in all before a delivery is marked failed.
    pub max_attempts: i64,
    /// How long a claimed delivery is left alone before another worker may take it.
    pub lease: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(3600),
            max_attempts: 8,
            lease: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The delay after `attempts` failed attempts: exponential, capped, ±20% jitter.
    pub fn delay(&self, attempts: i64) -> Duration {
        let exp =
            self.first_delay.saturating_mul(1u32 << attempts.clamp(1, 20).saturating_sub(1) as u32).min(self.max_delay);
        let jitter = 0.8 + (rand::random::<u32>() % 401) as f64 / 1000.0;
        exp.mul_f64(jitter)
    }
}

/// The channels a worker can deliver on, and where the admin pages are.
#[derive(Clone)]
pub struct Delivery {
    /// None: e-mail is not configured, e-mail deliveries wait (kept and shown).
    pub mailer: Option<Arc<dyn Mailer>>,
    pub webhooks: Arc<dyn WebhookSender>,
    /// Base URL of the admin pages, for links in e-mails.
    pub public_url: String,
    pub retry: RetryPolicy,
}

impl Delivery {
    pub fn new(mailer: Option<Arc<dyn Mailer>>, public_url: &str) -> Delivery {
        Delivery {
            mailer,
            webhooks: Arc::new(HttpWebhooks::default()),
            public_url: public_url.trim_end_matches('/').to_string(),
            retry: RetryPolicy::default(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DeliveryReport {
    pub sent: usize,
    pub retrying: usize,
    pub failed: usize,
}

/// What a worker needs to send one delivery.
#[derive(Clone, Debug)]
pub struct DeliveryJob {
    pub delivery: DeliveryRow,
    pub notice: NoticeRow,
    pub org: OrgRow,
    pub webhook: Option<WebhookRow>,
}

/// Enqueues the deliveries of a new notice (same transaction as the notice).
pub(crate) fn enqueue(tx: &mut dyn Tx, notice: &NoticeRow, now: Timestamp) -> Result<()> {
    let Some(org) = tx.get_org(&notice.org_id)? else { return Ok(()) };
    if org.disabled_notices.contains(&notice.kind) {
        return Ok(());
    }
    let mut targets: Vec<(&str, String)> = Vec::new();
    if !org.notification_emails.is_empty() {
        targets.push(("email", org.notification_emails.join("\n")));
    }
    for w in tx.list_webhooks(&org.org_id)? {
        targets.push(("webhook", w.webhook_id));
    }
    for (channel, target) in targets {
        tx.insert_delivery(&DeliveryRow {
            org_id: org.org_id.clone(),
            delivery_id: new_id(),
            notice_id: notice.notice_id.clone(),
            channel: channel.into(),
            target,
            status: "pending".into(),
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
            sent_at: None,
            created_at: now,
        })?;
    }
    Ok(())
}

/// Claims a due delivery for `lease`; None when it is not (or no longer) due.
pub(crate) fn claim(
    tx: &mut dyn Tx,
    org_id: &str,
    delivery_id: &str,
    now: Timestamp,
    lease: Duration,
) -> Result<Outcome> {
    let Some(mut d) = tx.get_delivery(org_id, delivery_id)? else { return Ok(Outcome::Count(0)) };
    if d.status != "pending" || d.next_attempt_at > now {
        return Ok(Outcome::Count(0));
    }
    let notice = tx.get_notice(org_id, &d.notice_id)?.ok_or_else(|| internal("delivery without notice"))?;
    let org = crate::org(tx, org_id)?;
    let webhook = if d.channel == "webhook" { tx.get_webhook(org_id, &d.target)? } else { None };
    d.next_attempt_at = now + jiff::SignedDuration::try_from(lease).map_err(|e| internal(e.to_string()))?;
    tx.update_delivery(&d)?;
    Ok(Outcome::Delivery(Box::new(DeliveryJob { delivery: d, notice, org, webhook })))
}

/// Records an attempt's result and the notice's overall status.
pub(crate) fn record(
    tx: &mut dyn Tx,
    org_id: &str,
    delivery_id: &str,
    error: Option<&str>,
    retry_in: Duration,
    max_attempts: i64,
    now: Timestamp,
) -> Result<Outcome> {
    let Some(mut d) = tx.get_delivery(org_id, delivery_id)? else { return Ok(Outcome::Count(0)) };
    if d.status != "pending" {
        return Ok(Outcome::Count(0));
    }
    d.attempts += 1;
    match error {
        None => {
            d.status = "sent".into();
            d.sent_at = Some(now);
            d.last_error = None;
        }
        Some(e) => {
            d.last_error = Some(e.chars().take(500).collect());
            if d.attempts >= max_attempts {
                d.status = "failed".into();
            } else {
                d.next_attempt_at =
                    now + jiff::SignedDuration::try_from(retry_in).map_err(|e| internal(e.to_string()))?;
            }
        }
    }
    tx.update_delivery(&d)?;
    let all = tx.notice_deliveries(org_id, &d.notice_id)?;
    let status = if all.iter().any(|x| x.status == "failed") {
        "failed"
    } else if all.iter().all(|x| x.status == "sent") {
        "sent"
    } else {
        "pending"
    };
    tx.set_notice_status(org_id, &d.notice_id, status)?;
    Ok(Outcome::Count(1))
}

fn money_fields(data: &serde_json::Value) -> Vec<(String, String)> {
    let cur = data.get("currency").and_then(|c| c.as_str()).and_then(|c| Currency::parse(c).ok());
    let label = |k: &str| match k {
        "amount" => "Amount",
        "balance" => "Balance",
        "available" => "Available",
        "level" => "Warning level",
        "remaining" => "Remaining",
        "reason" => "Reason",
        "message" => "Details",
        "pool" => "Pool",
        "country" => "Country",
        "month" => "Month",
        "used" => "Minutes used",
        "size" => "Pool size (minutes)",
        "percent" => "Percent used",
        "expires_at" => "Expires",
        "order_id" => "Order",
        "lot_id" => "Funds lot",
        _ => "",
    };
    let mut out = Vec::new();
    if let Some(obj) = data.as_object() {
        for (k, v) in obj {
            let l = label(k);
            if l.is_empty() {
                continue;
            }
            let text = match (k.as_str(), v, cur) {
                ("amount" | "balance" | "available" | "level" | "remaining", serde_json::Value::Number(n), Some(c)) => {
                    format!("{} {}", c.format_minor(n.as_i64().unwrap_or(0)), c.code())
                }
                ("percent", v, _) => format!("{v}%"),
                (_, serde_json::Value::String(s), _) => s.clone(),
                (_, v, _) => v.to_string(),
            };
            out.push((l.to_string(), text));
        }
    }
    out
}

const TEXT_TEMPLATE: &str = "{{ body }}\n\n{% for f in facts %}{{ f[0] }}: {{ f[1] }}\n{% endfor %}\nOrganization: {{ org }}\nAdmin center: {{ link }}\n\n-- \ncommcredits notice {{ id }} ({{ kind }})\n";
const HTML_TEMPLATE: &str = "<!doctype html><html><body style=\"font-family:sans-serif\"><p>{{ body }}</p><table>{% for f in facts %}<tr><th align=\"left\">{{ f[0] }}</th><td>{{ f[1] }}</td></tr>{% endfor %}</table><p>Organization: {{ org }}<br><a href=\"{{ link }}\">Open the admin center</a></p><p style=\"color:#555;font-size:small\">commcredits notice {{ id }} ({{ kind }})</p></body></html>";

/// Renders a notice as an e-mail (plain text and HTML, stating the facts).
pub fn render_email(job: &DeliveryJob, public_url: &str) -> Result<Email> {
    let data: serde_json::Value = serde_json::from_str(&job.notice.data).unwrap_or_default();
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            minijinja::AutoEscape::Html
        } else {
            minijinja::AutoEscape::None
        }
    });
    env.add_template("notice.txt", TEXT_TEMPLATE).map_err(|e| internal(e.to_string()))?;
    env.add_template("notice.html", HTML_TEMPLATE).map_err(|e| internal(e.to_string()))?;
    let ctx = minijinja::context! {
        body => &job.notice.body,
        facts => money_fields(&data),
        org => &job.org.name,
        link => format!("{public_url}/admin"),
        id => &job.notice.notice_id,
        kind => &job.notice.kind,
    };
    let render = |name: &str| env.get_template(name).and_then(|t| t.render(&ctx)).map_err(|e| internal(e.to_string()));
    Ok(Email {
        to: job.delivery.target.lines().filter(|l| !l.is_empty()).map(str::to_string).collect(),
        subject: job.notice.subject.clone(),
        text: render("notice.txt")?,
        html: render("notice.html")?,
        message_id: format!("<{}@commcredits>", job.notice.notice_id),
    })
}

/// The JSON a webhook receives for a notice.
pub fn webhook_body(notice: &NoticeRow) -> String {
    let data: serde_json::Value = serde_json::from_str(&notice.data).unwrap_or_default();
    serde_json::json!({
        "id": notice.notice_id,
        "type": notice.kind,
        "org_id": notice.org_id,
        "created_at": crate::views::iso(notice.created_at),
        "subject": notice.subject,
        "data": data,
    })
    .to_string()
}

/// `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn sign(secret: &str, unix: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{unix}.{body}").as_bytes());
    format!("t={unix},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// What a receiver does: checks the signature header against the body, and that the
/// timestamp is within `tolerance_s` of `now_unix` (replay protection).
pub fn verify(secret: &str, header: &str, body: &str, now_unix: i64, tolerance_s: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = x.parse::<i64>().ok(),
            Some(("v1", x)) => v1 = hex::decode(x).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    if (now_unix - t).abs() > tolerance_s {
        return false;
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{t}.{body}").as_bytes());
    mac.verify_slice(&v1).is_ok()
}

fn webhook_headers(w: &WebhookRow, notice_id: &str, body: &str, now: Timestamp) -> Vec<(String, String)> {
    vec![(SIGNATURE_HEADER.into(), sign(&w.secret, now.as_second(), body)), (NOTICE_HEADER.into(), notice_id.into())]
}

impl Engine {
    /// Sends every due delivery once (bounded), recording each result.
    pub fn deliver_due(&self, now: Timestamp, d: &Delivery) -> Result<DeliveryReport> {
        let mut report = DeliveryReport::default();
        // Without a mailer, e-mails wait; only webhooks are taken.
        let channel = if d.mailer.is_some() { None } else { Some("webhook") };
        let due = self.read(|tx| tx.due_deliveries(now, channel, 200))?;
        for (org, id) in due {
            let claimed = self.apply_one(
                now,
                Command::ClaimDelivery { org: org.clone(), delivery_id: id.clone(), lease: d.retry.lease },
            )?;
            let Outcome::Delivery(job) = claimed else { continue };
            let result = match job.delivery.channel.as_str() {
                "email" => match &d.mailer {
                    Some(m) => {
                        render_email(&job, &d.public_url).map_err(|e| e.message).and_then(|email| m.send(&email))
                    }
                    None => continue,
                },
                _ => match &job.webhook {
                    Some(w) => {
                        let body = webhook_body(&job.notice);
                        d.webhooks.post(&w.url, &webhook_headers(w, &job.notice.notice_id, &body, now), &body)
                    }
                    None => Err("the webhook was deleted".into()),
                },
            };
            let attempts = job.delivery.attempts + 1;
            match &result {
                Ok(()) => report.sent += 1,
                Err(_) if attempts >= d.retry.max_attempts => report.failed += 1,
                Err(_) => report.retrying += 1,
            }
            self.apply_one(
                now,
                Command::RecordDelivery {
                    org,
                    delivery_id: id,
                    error: result.err(),
                    retry_in: d.retry.delay(attempts),
                    max_attempts: d.retry.max_attempts,
                },
            )?;
        }
        Ok(report)
    }

    /// Sends a test event to one webhook now and answers whether it was accepted.
    pub fn test_webhook(
        &self,
        org_id: &str,
        webhook_id: &str,
        sender: &dyn WebhookSender,
        now: Timestamp,
    ) -> Result<()> {
        let w = self
            .read(|tx| {
                crate::org(tx, org_id)?;
                tx.get_webhook(org_id, webhook_id)
            })?
            .ok_or_else(|| err!(ErrorCode::NotFound, "no webhook '{webhook_id}'"))?;
        let notice = NoticeRow {
            seq: 0,
            org_id: org_id.into(),
            notice_id: new_id(),
            kind: "webhook_test".into(),
            created_at: now,
            subject: "commcredits webhook test".into(),
            body: "A test event: the endpoint is reachable and verifies signatures.".into(),
            data: "{}".into(),
            status: "sent".into(),
        };
        let body = webhook_body(&notice);
        sender
            .post(&w.url, &webhook_headers(&w, &notice.notice_id, &body, now), &body)
            .map_err(|e| err!(ErrorCode::WebhookFailed, "the endpoint did not accept the test event: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let h = sign("whsec_x", 1_700_000_000, "{\"a\":1}");
        assert!(verify("whsec_x", &h, "{\"a\":1}", 1_700_000_010, 300));
        assert!(!verify("whsec_x", &h, "{\"a\":2}", 1_700_000_010, 300));
        assert!(!verify("whsec_y", &h, "{\"a\":1}", 1_700_000_010, 300));
        assert!(!verify("whsec_x", &h, "{\"a\":1}", 1_700_001_000, 300));
        assert!(!verify("whsec_x", "garbage", "{\"a\":1}", 1_700_000_000, 300));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        let d1 = p.delay(1).as_secs_f64();
        let d3 = p.delay(3).as_secs_f64();
        assert!((24.0..=36.0).contains(&d1), "{d1}");
        assert!((96.0..=144.0).contains(&d3), "{d3}");
        assert!(p.delay(30).as_secs() <= 4320);
        assert_eq!(redact("smtp://u:secret@host:25"), "smtp://***@host:25");
    }
}
