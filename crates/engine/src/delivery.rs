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
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use commcredits_core::money::Currency;
use commcredits_core::{err, ErrorCode, Result, Timestamp};
use commcredits_store::{DeliveryRow, NoticeRow, OrgRow, Tx, WebhookRow};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Whether `url` may receive webhooks (checked when one is added); the text says
    /// why not.
    fn check(&self, _url: &str) -> std::result::Result<(), String> {
        Ok(())
    }
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

/// What a webhook answer says when the endpoint's address is refused.
pub const ADDRESS_REFUSED: &str =
    "the webhook's host does not resolve to a public internet address (private, loopback, link-local and metadata addresses are refused)";
/// What a webhook answer says for any failure to connect or send: the detail (which
/// can tell an open port from a closed one) is logged on the server only.
pub const UNREACHABLE: &str = "the endpoint could not be reached";

/// Longest DNS lookup of a webhook's host.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Cloud metadata services: refused even where private addresses are allowed.
fn is_metadata(ip: IpAddr) -> bool {
    match ip {
        // AWS, GCP and Azure; AWS ECS tasks; Alibaba Cloud; Oracle Cloud.
        IpAddr::V4(a) => [
            Ipv4Addr::new(169, 254, 169, 254),
            Ipv4Addr::new(169, 254, 170, 2),
            Ipv4Addr::new(100, 100, 100, 200),
            Ipv4Addr::new(192, 0, 0, 192),
        ]
        .contains(&a),
        IpAddr::V6(a) => {
            a == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || embedded_v4(a).is_some_and(|v4| is_metadata(IpAddr::V4(v4)))
        }
    }
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible, NAT64 or 6to4 IPv6 address:
/// reaching it reaches the IPv4 host, so it is judged as that host.
fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[..5] == [0; 5] && (s[5] == 0xffff || (s[5] == 0 && (s[6] != 0 || s[7] > 1))) {
        return Some(v4(s[6], s[7]));
    }
    // IPv4-translated (::ffff:0:a.b.c.d, RFC 2765).
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return Some(v4(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(v4(s[1], s[2]));
    }
    None
}

fn v4_public(a: Ipv4Addr) -> bool {
    let o = a.octets();
    let cgnat = o[0] == 100 && (o[1] & 0xc0) == 64;
    let benchmarking = o[0] == 198 && (o[1] & 0xfe) == 18;
    let ietf = o[0] == 192 && o[1] == 0 && o[2] == 0;
    !(o[0] == 0
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || cgnat
        || a.is_multicast()
        || o[0] >= 240
        || ietf
        || benchmarking
        || a.is_documentation())
}

fn v6_public(a: Ipv6Addr) -> bool {
    if a.is_unspecified() || a.is_loopback() {
        return false;
    }
    if let Some(v4) = embedded_v4(a) {
        return v4_public(v4);
    }
    let s0 = a.segments()[0];
    let unique_local = (s0 & 0xfe00) == 0xfc00;
    let link_local = (s0 & 0xffc0) == 0xfe80;
    let site_local = (s0 & 0xffc0) == 0xfec0;
    let documentation = s0 == 0x2001 && a.segments()[1] == 0x0db8;
    // Teredo (2001::/32) tunnels to an IPv4 host whose address is not read off plainly;
    // NAT64's local-use prefix (64:ff9b:1::/48) places its IPv4 address where the
    // operator chose. Neither is judged safe.
    let teredo = s0 == 0x2001 && a.segments()[1] == 0;
    let nat64_local = s0 == 0x64 && a.segments()[1] == 0xff9b && a.segments()[2] == 1;
    !(a.is_multicast() || unique_local || link_local || site_local || documentation || teredo || nat64_local)
}

/// Whether a webhook may be delivered to `ip`. Only public unicast addresses are,
/// unless `allow_private` (a server option for tests and closed networks) lets
/// loopback and private ranges through; metadata services never are.
pub fn address_allowed(ip: IpAddr, allow_private: bool) -> bool {
    if is_metadata(ip) {
        return false;
    }
    allow_private
        || match ip {
            IpAddr::V4(a) => v4_public(a),
            IpAddr::V6(a) => v6_public(a),
        }
}

/// A webhook URL's scheme, host and port; refuses anything but absolute http(s) URLs.
fn url_parts(url: &str) -> std::result::Result<(String, String, u16), String> {
    let uri: ureq::http::Uri = url.parse().map_err(|_| "the webhook URL is not a valid URL".to_string())?;
    let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return Err("a webhook URL is http:// or https://".into()),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| "the webhook URL has no host".to_string())?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((scheme, host, uri.port_u16().unwrap_or(default_port)))
}

/// A URL reduced to its scheme and host (and port): what readers and logs see, since
/// the path and query of a webhook URL often carry a credential.
pub fn url_origin(url: &str) -> String {
    match url_parts(url) {
        Ok((scheme, host, port)) => {
            let host = if host.contains(':') { format!("[{host}]") } else { host };
            let default = (scheme == "https" && port == 443) || (scheme == "http" && port == 80);
            if default {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}:{port}")
            }
        }
        Err(_) => "(not a URL)".into(),
    }
}

/// Resolves a webhook URL's host and checks every address it resolves to. The
/// addresses returned are the only ones the connection may use (pinned: a DNS answer
/// that changes between this check and the connection changes nothing).
pub fn resolve_webhook(url: &str, allow_private: bool) -> std::result::Result<Vec<SocketAddr>, String> {
    let (_, host, port) = url_parts(url)?;
    let mut addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let name = host.clone();
            std::thread::Builder::new()
                .name("webhook-dns".into())
                .spawn(move || {
                    let _ = tx.send((name.as_str(), port).to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
                })
                .map_err(|_| UNREACHABLE.to_string())?;
            match rx.recv_timeout(RESOLVE_TIMEOUT) {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    tracing::warn!(host = %host, error = %e, "webhook host does not resolve");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!(host = %host, "webhook host lookup timed out");
                    Vec::new()
                }
            }
        }
    };
    // One refused address refuses the name: the connection could otherwise land on it.
    if addrs.is_empty() || addrs.iter().any(|a| !address_allowed(a.ip(), allow_private)) {
        tracing::warn!(host = %host, addresses = ?addrs, "webhook address refused");
        return Err(ADDRESS_REFUSED.into());
    }
    addrs.truncate(16);
    Ok(addrs)
}

/// Hands ureq the addresses [`resolve_webhook`] checked, and no others.
#[derive(Debug)]
struct PinnedResolver(Vec<SocketAddr>);

impl ureq::unversioned::resolver::Resolver for PinnedResolver {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> std::result::Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let mut out = self.empty();
        for a in &self.0 {
            out.push(*a);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

/// Webhooks over HTTP(S) with ureq (rustls), 10 s per attempt. The host is resolved
/// and checked before every attempt and the connection pinned to the checked
/// addresses; no proxy from the environment, no redirects (a 3xx is a failed
/// attempt); failures are answered with generic text and logged in detail.
pub struct HttpWebhooks {
    config: ureq::config::Config,
    allow_private: bool,
}

impl Default for HttpWebhooks {
    fn default() -> Self {
        HttpWebhooks::new(false)
    }
}

impl HttpWebhooks {
    /// `allow_private`: let webhooks reach loopback and private addresses (tests, closed
    /// networks); metadata addresses stay refused.
    pub fn new(allow_private: bool) -> HttpWebhooks {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .build();
        HttpWebhooks { config, allow_private }
    }
}

impl WebhookSender for HttpWebhooks {
    fn check(&self, url: &str) -> std::result::Result<(), String> {
        resolve_webhook(url, self.allow_private).map(drop)
    }

    fn post(&self, url: &str, headers: &[(String, String)], body: &str) -> std::result::Result<(), String> {
        let addrs = resolve_webhook(url, self.allow_private)?;
        let agent = ureq::Agent::with_parts(
            self.config.clone(),
            ureq::unversioned::transport::DefaultConnector::default(),
            PinnedResolver(addrs),
        );
        let mut req = agent.post(url).header("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send(body).map_err(|e| {
            // Some transport errors quote the URL, whose path and query are often the
            // receiver's credential: the log gets its origin only.
            let detail = e.to_string().replace(url, &url_origin(url));
            tracing::warn!(endpoint = %url_origin(url), error = %detail, "webhook delivery failed");
            UNREACHABLE.to_string()
        })?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("the endpoint answered {status}"))
        }
    }
}

/// The server key that seals webhook secrets at rest (XChaCha20-Poly1305: random
/// 192-bit nonces cannot collide in practice, so no nonce counter has to be kept).
/// Given as 64 hex digits; never printed.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

/// How a sealed secret starts; anything else is a clear-text secret from before keys.
const SEALED_PREFIX: &str = "sealed:v1:";

impl SecretKey {
    /// Parses 64 hex digits (32 bytes), e.g. the output of `openssl rand -hex 32`.
    pub fn parse(text: &str) -> Result<SecretKey> {
        let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32).ok_or_else(|| {
            err!(ErrorCode::InvalidInput, "--secret-key must be 64 hex digits (32 bytes; `openssl rand -hex 32`)")
        })?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(SecretKey(key))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }

    /// Seals `secret` bound to `context` (the webhook's organization and id), so a
    /// sealed value copied onto another row does not open.
    pub fn seal(&self, context: &str, secret: &str) -> Result<String> {
        let nonce: [u8; 24] = rand::random();
        let sealed = self
            .cipher()
            .encrypt(&XNonce::from(nonce), Payload { msg: secret.as_bytes(), aad: context.as_bytes() })
            .map_err(|_| internal("sealing a secret failed"))?;
        Ok(format!("{SEALED_PREFIX}{}{}", hex::encode(nonce), hex::encode(sealed)))
    }

    /// Opens what [`SecretKey::seal`] made for `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<String> {
        let bad = || err!(ErrorCode::Internal, "a sealed secret does not open with this server's --secret-key");
        let raw = hex::decode(sealed.strip_prefix(SEALED_PREFIX).ok_or_else(bad)?).map_err(|_| bad())?;
        if raw.len() < 24 {
            return Err(bad());
        }
        let (nonce, body) = raw.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| bad())?;
        let clear = self
            .cipher()
            .decrypt(&XNonce::from(nonce), Payload { msg: body, aad: context.as_bytes() })
            .map_err(|_| bad())?;
        String::from_utf8(clear).map_err(|_| bad())
    }
}

/// Whether a stored webhook secret is sealed (not clear text).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

fn secret_context(org_id: &str, webhook_id: &str) -> String {
    format!("webhook-secret/{org_id}/{webhook_id}")
}

/// Seals a new webhook's secret for storage; without a key, webhooks cannot be added.
pub(crate) fn seal_webhook_secret(
    key: Option<&SecretKey>,
    org_id: &str,
    webhook_id: &str,
    secret: &str,
) -> Result<String> {
    let key = key.ok_or_else(|| {
        err!(
            ErrorCode::InvalidInput,
            "webhook secrets are kept encrypted: the server needs a key (--secret-key or COMMCREDITS_SECRET_KEY) before webhooks can be added"
        )
    })?;
    key.seal(&secret_context(org_id, webhook_id), secret)
}

/// A webhook's signing secret in clear: opened with the key, or as stored when it was
/// written before secrets were sealed.
pub fn webhook_secret(key: Option<&SecretKey>, w: &WebhookRow) -> Result<String> {
    if !is_sealed(&w.secret) {
        return Ok(w.secret.clone());
    }
    let key = key.ok_or_else(|| {
        err!(ErrorCode::Internal, "webhook secrets are sealed: the server needs its --secret-key to sign deliveries")
    })?;
    key.open(&secret_context(&w.org_id, &w.webhook_id), &w.secret)
}

/// How many deliveries run at once and how much of a round one organization may take.
#[derive(Clone, Debug)]
pub struct DeliveryLimits {
    /// Deliveries sent at the same time (one organization's go one after another).
    pub workers: usize,
    /// Deliveries taken in one round, in all.
    pub per_round: usize,
    /// Deliveries of one organization taken in one round.
    pub per_org_per_round: usize,
    /// After this long on one organization's deliveries in a round, the rest of them
    /// wait for the next round.
    pub per_org_time: Duration,
}

impl Default for DeliveryLimits {
    fn default() -> Self {
        DeliveryLimits { workers: 8, per_round: 200, per_org_per_round: 20, per_org_time: Duration::from_secs(30) }
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
    pub limits: DeliveryLimits,
}

impl Delivery {
    pub fn new(mailer: Option<Arc<dyn Mailer>>, public_url: &str) -> Delivery {
        Delivery {
            mailer,
            webhooks: Arc::new(HttpWebhooks::default()),
            public_url: public_url.trim_end_matches('/').to_string(),
            retry: RetryPolicy::default(),
            limits: DeliveryLimits::default(),
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

fn webhook_headers(secret: &str, notice_id: &str, body: &str, now: Timestamp) -> Vec<(String, String)> {
    vec![(SIGNATURE_HEADER.into(), sign(secret, now.as_second(), body)), (NOTICE_HEADER.into(), notice_id.into())]
}

/// What became of one delivery attempt.
enum Attempt {
    Sent,
    Retrying,
    Failed,
}

impl Engine {
    /// Sends due deliveries once, recording each result. Up to `limits.workers` are
    /// sent at once; one organization's deliveries go one after another on one worker,
    /// at most `limits.per_org_per_round` of them and for at most
    /// `limits.per_org_time`, so a slow endpoint or a flood of notices of one
    /// organization delays its own notices, not everyone's.
    pub fn deliver_due(&self, now: Timestamp, d: &Delivery) -> Result<DeliveryReport> {
        // Without a mailer, e-mails wait; only webhooks are taken.
        let channel = if d.mailer.is_some() { None } else { Some("webhook") };
        let per_org = d.limits.per_org_per_round.max(1);
        let due = self.read(|tx| tx.due_deliveries(now, channel, d.limits.per_round.max(1), per_org))?;
        // One queue entry per organization, the most overdue first.
        let mut by_org: Vec<(String, Vec<String>)> = Vec::new();
        for (org, id) in due {
            match by_org.iter_mut().find(|(o, _)| *o == org) {
                Some((_, ids)) => ids.push(id),
                None => by_org.push((org, vec![id])),
            }
        }
        let workers = d.limits.workers.clamp(1, 64).min(by_org.len());
        let queue = Mutex::new(std::collections::VecDeque::from(by_org));
        let report = Mutex::new(DeliveryReport::default());
        let failure: Mutex<Option<commcredits_core::Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let Some((org, ids)) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else {
                        return;
                    };
                    let started = Instant::now();
                    for id in ids {
                        if started.elapsed() >= d.limits.per_org_time {
                            break;
                        }
                        match self.deliver_one(now, d, &org, &id) {
                            Ok(Some(a)) => {
                                let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                                match a {
                                    Attempt::Sent => r.sent += 1,
                                    Attempt::Retrying => r.retrying += 1,
                                    Attempt::Failed => r.failed += 1,
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        Ok(report.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    /// Claims, sends and records one delivery; None when it was not due any more.
    fn deliver_one(&self, now: Timestamp, d: &Delivery, org: &str, id: &str) -> Result<Option<Attempt>> {
        let claimed = self
            .apply_one(now, Command::ClaimDelivery { org: org.into(), delivery_id: id.into(), lease: d.retry.lease })?;
        let Outcome::Delivery(job) = claimed else { return Ok(None) };
        let result = match job.delivery.channel.as_str() {
            "email" => match &d.mailer {
                Some(m) => render_email(&job, &d.public_url).map_err(|e| e.message).and_then(|email| m.send(&email)),
                None => return Ok(None),
            },
            _ => match &job.webhook {
                Some(w) => match webhook_secret(self.config.secret_key.as_ref(), w) {
                    Ok(secret) => {
                        let body = webhook_body(&job.notice);
                        d.webhooks.post(&w.url, &webhook_headers(&secret, &job.notice.notice_id, &body, now), &body)
                    }
                    Err(e) => {
                        tracing::error!(webhook = %w.webhook_id, "{}", e.message);
                        Err("the webhook's secret cannot be read by this server".into())
                    }
                },
                None => Err("the webhook was deleted".into()),
            },
        };
        let attempts = job.delivery.attempts + 1;
        let attempt = match &result {
            Ok(()) => Attempt::Sent,
            Err(_) if attempts >= d.retry.max_attempts => Attempt::Failed,
            Err(_) => Attempt::Retrying,
        };
        self.apply_one(
            now,
            Command::RecordDelivery {
                org: org.into(),
                delivery_id: id.into(),
                error: result.err(),
                retry_in: d.retry.delay(attempts),
                max_attempts: d.retry.max_attempts,
            },
        )?;
        Ok(Some(attempt))
    }

    /// Rewrites clear-text webhook secrets (stored before secrets were sealed) sealed
    /// with the server key; answers how many. Without a key, nothing changes.
    pub fn seal_webhook_secrets(&self) -> Result<usize> {
        let Some(key) = self.config.secret_key.clone() else { return Ok(0) };
        let mut sealed = 0;
        self.store().write(&mut |tx| {
            sealed = 0;
            for o in tx.list_orgs()? {
                for mut w in tx.list_webhooks(&o.org_id)? {
                    if is_sealed(&w.secret) {
                        continue;
                    }
                    w.secret = key.seal(&secret_context(&w.org_id, &w.webhook_id), &w.secret)?;
                    tx.delete_webhook(&w.org_id, &w.webhook_id)?;
                    tx.insert_webhook(&w)?;
                    sealed += 1;
                }
            }
            Ok(())
        })?;
        Ok(sealed)
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
        let secret = webhook_secret(self.config.secret_key.as_ref(), &w)?;
        sender
            .post(&w.url, &webhook_headers(&secret, &notice.notice_id, &body, now), &body)
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
    fn only_public_unicast_addresses_are_allowed() {
        let refused = [
            "0.0.0.0",
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.0.1",
            "169.254.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
            "fec0::1",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "64:ff9b:1::a00:1",
            "100.100.100.200",
        ];
        for ip in refused {
            assert!(!address_allowed(ip.parse().unwrap(), false), "{ip} allowed");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(address_allowed(ip.parse().unwrap(), false), "{ip} refused");
        }
        // The option for tests and closed networks opens private ranges, never metadata.
        assert!(address_allowed("127.0.0.1".parse().unwrap(), true));
        assert!(address_allowed("10.0.0.1".parse().unwrap(), true));
        for ip in [
            "169.254.169.254",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "100.100.100.200",
            "192.0.0.192",
            "169.254.170.2",
        ] {
            assert!(!address_allowed(ip.parse().unwrap(), true), "{ip} allowed");
        }
        assert_eq!(url_origin("https://u:p@hooks.example.com/x?token=1"), "https://hooks.example.com");
        assert_eq!(url_origin("http://[::1]:8080/x"), "http://[::1]:8080");
        assert!(resolve_webhook("ftp://example.com/", true).is_err());
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_context() {
        let key = SecretKey::parse(&"ab".repeat(32)).unwrap();
        let sealed = key.seal("o/w", "whsec_1").unwrap();
        assert!(is_sealed(&sealed) && !sealed.contains("whsec_1"));
        assert_eq!(key.open("o/w", &sealed).unwrap(), "whsec_1");
        assert!(key.open("o/other", &sealed).is_err());
        assert!(SecretKey::parse(&"cd".repeat(32)).unwrap().open("o/w", &sealed).is_err());
        assert_ne!(key.seal("o/w", "whsec_1").unwrap(), sealed, "a fresh nonce each time");
        assert!(SecretKey::parse("short").is_err());
        assert_eq!(format!("{key:?}"), "SecretKey(***)");
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
