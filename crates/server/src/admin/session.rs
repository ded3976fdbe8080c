//! Sessions of the admin pages: a signed cookie, not a server-side table.
//!
//! The cookie carries the API key's id, its organization, a random nonce and two
//! times (issued, idle expiry), with an HMAC-SHA256 over them under the server's
//! session secret. Every request checks the MAC and the times, then looks the key up
//! in the key store, so a revoked key ends its sessions at once and several servers
//! given the same secret (`COMMCREDITS_SESSION_SECRET`) accept each other's sessions
//! without sharing any state. The nonce binds the anti-forgery (CSRF) token of the
//! session's forms: `HMAC(secret, "csrf." + nonce)`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;

/// The session cookie's name.
pub const COOKIE: &str = "cc_admin";
/// The sign-in form's anti-forgery cookie (before any session exists).
pub const LOGIN_COOKIE: &str = "cc_admin_login";
/// A one-shot message shown after a redirect (POST-redirect-GET).
pub const FLASH_COOKIE: &str = "cc_admin_flash";
/// A session unused for this long ends.
pub const IDLE_SECONDS: i64 = 30 * 60;
/// A session ends this long after sign-in, however busy.
pub const MAX_AGE_SECONDS: i64 = 12 * 3600;
/// The idle expiry is pushed forward at most once a minute (each push sets a cookie).
pub const REFRESH_AFTER_SECONDS: i64 = 60;
/// Signed-out sessions remembered by this process (bounded: the oldest expire first).
const MAX_SIGNED_OUT: usize = 100_000;

/// What a session cookie says, once its MAC and times are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub key_id: String,
    pub org_id: String,
    /// 128 random bits, hex.
    pub nonce: String,
    pub issued_unix: i64,
    pub expires_unix: i64,
}

/// The session secret and the sessions signed out on this server.
pub struct Sessions {
    secret: [u8; 32],
    /// nonce -> the session's last possible expiry. A signed cookie cannot be recalled
    /// from a browser that kept a copy; this makes sign-out final on this server. Other
    /// servers still honour a copied cookie until its idle expiry (30 minutes at most).
    signed_out: Mutex<HashMap<String, i64>>,
}

/// 128 random bits, hex (session nonces, the forms' idempotency keys).
pub fn hex_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Ids are uuids and the nonce hex: nothing in them needs escaping in a cookie, and
/// a dot never appears inside a field.
fn plain(field: &str) -> bool {
    !field.is_empty() && field.len() <= 64 && field.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Sessions {
    /// With a configured secret (any text; several servers must share it), or a random
    /// one for this process (sessions then end when it restarts).
    pub fn new(secret: Option<&str>) -> Sessions {
        let secret = match secret {
            Some(s) if !s.trim().is_empty() => {
                use sha2::Digest;
                let mut out = [0u8; 32];
                out.copy_from_slice(&Sha256::digest(format!("commcredits admin sessions\n{}", s.trim()).as_bytes()));
                out
            }
            _ => rand::random(),
        };
        Sessions { secret, signed_out: Mutex::new(HashMap::new()) }
    }

    fn mac(&self, purpose: &str, text: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(b"\n");
        mac.update(text.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn verify(&self, purpose: &str, text: &str, mac_hex: &str) -> bool {
        let Ok(given) = hex::decode(mac_hex) else { return false };
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(b"\n");
        mac.update(text.as_bytes());
        mac.verify_slice(&given).is_ok()
    }

    /// A new session for a key, starting at `now_unix`.
    pub fn start(&self, key_id: &str, org_id: &str, now_unix: i64) -> Claims {
        Claims {
            key_id: key_id.into(),
            org_id: org_id.into(),
            nonce: hex_token(),
            issued_unix: now_unix,
            expires_unix: now_unix + IDLE_SECONDS,
        }
    }

    /// The cookie value of a session.
    pub fn encode(&self, c: &Claims) -> String {
        let payload = format!("v1.{}.{}.{}.{}.{}", c.key_id, c.org_id, c.nonce, c.issued_unix, c.expires_unix);
        let mac = self.mac("session", &payload);
        format!("{payload}.{mac}")
    }

    /// The session a cookie value holds, when its MAC is right, it has not expired
    /// (idle or absolute) and it was not signed out here.
    pub fn decode(&self, value: &str, now_unix: i64) -> Option<Claims> {
        let (payload, mac) = value.rsplit_once('.')?;
        if !self.verify("session", payload, mac) {
            return None;
        }
        let parts: Vec<&str> = payload.split('.').collect();
        let [version, key_id, org_id, nonce, issued, expires] = parts.as_slice() else { return None };
        if *version != "v1" || !plain(key_id) || !plain(org_id) || !plain(nonce) {
            return None;
        }
        let c = Claims {
            key_id: key_id.to_string(),
            org_id: org_id.to_string(),
            nonce: nonce.to_string(),
            issued_unix: issued.parse().ok()?,
            expires_unix: expires.parse().ok()?,
        };
        if now_unix >= c.expires_unix || now_unix >= c.issued_unix + MAX_AGE_SECONDS {
            return None;
        }
        let out = self.signed_out.lock().unwrap_or_else(|p| p.into_inner());
        if out.contains_key(&c.nonce) {
            return None;
        }
        Some(c)
    }

    /// The session with its idle expiry pushed forward, when it is due (else None).
    pub fn refreshed(&self, c: &Claims, now_unix: i64) -> Option<Claims> {
        let wanted = (now_unix + IDLE_SECONDS).min(c.issued_unix + MAX_AGE_SECONDS);
        (wanted - c.expires_unix >= REFRESH_AFTER_SECONDS).then(|| Claims { expires_unix: wanted, ..c.clone() })
    }

    /// Ends a session on this server (its cookie is cleared in the browser too).
    pub fn sign_out(&self, c: &Claims, now_unix: i64) {
        let mut out = self.signed_out.lock().unwrap_or_else(|p| p.into_inner());
        if out.len() >= MAX_SIGNED_OUT {
            out.retain(|_, until| *until > now_unix);
        }
        if out.len() >= MAX_SIGNED_OUT {
            // Still full: the session closest to its end of life makes room, so a new
            // sign-out is never dropped.
            if let Some(oldest) = out.iter().min_by_key(|(_, until)| **until).map(|(n, _)| n.clone()) {
                out.remove(&oldest);
            }
        }
        out.insert(c.nonce.clone(), c.issued_unix + MAX_AGE_SECONDS);
    }

    /// The anti-forgery token of a session's forms.
    pub fn csrf_token(&self, c: &Claims) -> String {
        self.mac("csrf", &c.nonce)
    }

    pub fn csrf_ok(&self, c: &Claims, token: &str) -> bool {
        self.verify("csrf", &c.nonce, token.trim())
    }

    /// A new sign-in nonce (for the login cookie) and the token its form carries.
    pub fn login_token(&self) -> (String, String) {
        let nonce = hex_token();
        let token = self.mac("login", &nonce);
        (nonce, token)
    }

    pub fn login_ok(&self, nonce: &str, token: &str) -> bool {
        plain(nonce) && self.verify("login", nonce, token.trim())
    }
}

/// A `Set-Cookie` value for the admin pages: HttpOnly, SameSite=Strict, Path=/admin,
/// Secure when the browser reached us over https.
pub fn set_cookie(name: &str, value: &str, max_age_seconds: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age_seconds}{secure}")
}

/// The value of a cookie in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Whether the browser reached us over https: a TLS-terminating proxy says so with
/// `X-Forwarded-Proto`. Trusting it can only add `Secure` to a cookie.
pub fn https(headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> bool {
    uri.scheme_str() == Some("https")
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').next().unwrap_or("").trim().eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sign_out_is_kept_even_when_the_list_is_full() {
        let s = Sessions::new(Some("secret"));
        {
            let mut out = s.signed_out.lock().unwrap();
            for i in 0..MAX_SIGNED_OUT {
                out.insert(format!("n{i}"), 1_000_000 + i as i64);
            }
        }
        let c = s.start("0190-key", "0190-org", 1_000);
        let v = s.encode(&c);
        s.sign_out(&c, 1_001);
        assert_eq!(s.decode(&v, 1_002), None, "the new sign-out was dropped");
        let out = s.signed_out.lock().unwrap();
        assert_eq!(out.len(), MAX_SIGNED_OUT);
        assert!(!out.contains_key("n0"), "the session nearest its end made room");
    }

    #[test]
    fn a_session_round_trips_and_refuses_tampering_and_expiry() {
        let s = Sessions::new(Some("shared secret"));
        let c = s.start("0190-key", "0190-org", 1_000);
        let v = s.encode(&c);
        assert_eq!(s.decode(&v, 1_001), Some(c.clone()));
        // Another server with the same secret accepts it; one with another does not.
        assert_eq!(Sessions::new(Some("shared secret")).decode(&v, 1_001), Some(c.clone()));
        assert_eq!(Sessions::new(Some("other")).decode(&v, 1_001), None);
        // Any change to the payload breaks the MAC.
        let forged = v.replacen("0190-org", "0190-orh", 1);
        assert_eq!(s.decode(&forged, 1_001), None);
        let later = v.replacen(&format!(".{}.", c.expires_unix), &format!(".{}.", c.expires_unix + 9_999), 1);
        assert_eq!(s.decode(&later, 1_001), None);
        // Idle expiry, refresh, and the absolute limit.
        assert_eq!(s.decode(&v, 1_000 + IDLE_SECONDS), None);
        assert!(s.refreshed(&c, 1_010).is_none());
        let r = s.refreshed(&c, 1_000 + 600).unwrap();
        assert_eq!(r.expires_unix, 1_600 + IDLE_SECONDS);
        assert!(s.decode(&s.encode(&r), 1_000 + IDLE_SECONDS + 1).is_some());
        let old = Claims { expires_unix: 1_000 + MAX_AGE_SECONDS + 100, ..c.clone() };
        assert_eq!(s.decode(&s.encode(&old), 1_000 + MAX_AGE_SECONDS), None);
        // CSRF tokens belong to one session.
        let t = s.csrf_token(&c);
        assert!(s.csrf_ok(&c, &t));
        let other = s.start("0190-key", "0190-org", 1_000);
        assert!(!s.csrf_ok(&other, &t));
        assert!(!s.csrf_ok(&c, ""));
        // Sign-out ends it here.
        s.sign_out(&c, 1_002);
        assert_eq!(s.decode(&v, 1_003), None);
        let (nonce, token) = s.login_token();
        assert!(s.login_ok(&nonce, &token));
        assert!(!s.login_ok(&nonce, &s.login_token().1));
    }
}
