//! Authentication (Bearer API keys), the role matrix, and a limit on failed attempts.

use crate::error::{err, ApiError};
use crate::App;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use commcredits_core::ErrorCode;
use commcredits_engine::keys::{Principal, Role};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failed authentications allowed per client address per window; further failures
/// from that address are refused until the window ends. A valid key always passes.
pub const MAX_FAILURES: u32 = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses the limiter remembers: past this, the one that failed least
/// recently is forgotten, so a flood of spoofed or rotating addresses costs bounded memory.
pub const FAILURE_ADDRESSES: usize = 65_536;

/// Counts failed authentications per client address, in bounded memory. It is asked
/// only after a key was checked and found wrong: a caller with a valid key is never
/// refused because others (behind the same proxy, or a fuzzer) failed from its address.
pub struct FailureLimiter {
    seen: Mutex<lru::LruCache<IpAddr, (Instant, u32)>>,
}

impl Default for FailureLimiter {
    fn default() -> FailureLimiter {
        FailureLimiter::with_capacity(FAILURE_ADDRESSES)
    }
}

impl FailureLimiter {
    pub fn with_capacity(addresses: usize) -> FailureLimiter {
        let cap = NonZeroUsize::new(addresses).unwrap_or(NonZeroUsize::MIN);
        FailureLimiter { seen: Mutex::new(lru::LruCache::new(cap)) }
    }

    /// Records a failed attempt from `ip`; true when the address has used up its
    /// failures for the window (the attempt is then answered `rate_limited`).
    pub fn fail(&self, ip: IpAddr) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.get_or_insert_mut(ip, || (Instant::now(), 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 > MAX_FAILURES
    }

    /// Addresses remembered now (at most the capacity).
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The refusal once an address has failed too often.
pub(crate) fn too_many_failures(what: &str) -> ApiError {
    err(ErrorCode::RateLimited, format!("too many failed {what} from this address; try again in a minute"))
}

/// The address a request came from (the limiter's key): the peer, or, when the peer
/// is one of the `trusted` proxies, the nearest address in `X-Forwarded-For` that is
/// not itself a trusted proxy. An untrusted peer's `X-Forwarded-For` is ignored:
/// anyone can write that header.
pub(crate) fn client_ip(extensions: &axum::http::Extensions, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    forwarded_client(peer, headers, trusted)
}

fn forwarded_client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Each proxy appends the address it received from, so the list is read from its
    // end: the first address that no trusted proxy wrote is the client.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // A malformed hop ends what can be trusted: the last good address stands.
            Err(_) => break,
        }
    }
    client
}

/// The authenticated caller.
pub struct Auth(pub Principal);

impl FromRequestParts<Arc<App>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
        let secret = header.strip_prefix("Bearer ").map(str::trim).unwrap_or("").to_string();
        let missing = secret.is_empty();
        // The key is checked first: only a failure is counted, and only failures are refused.
        let principal = if missing {
            None
        } else {
            let engine = app.engine.clone();
            tokio::task::spawn_blocking(move || engine.authenticate(&secret))
                .await
                .map_err(|e| err(ErrorCode::Internal, e.to_string()))??
        };
        if let Some(p) = principal {
            return Ok(Auth(p));
        }
        if missing {
            // No key was tried, so nothing is guessed and nothing was looked up: always
            // 401, never counted (a client that forgot its header learns why at once).
            return Err(err(ErrorCode::Unauthorized, "send an API key as `Authorization: Bearer <key>`"));
        }
        let ip = client_ip(&parts.extensions, &parts.headers, &app.trusted_proxies);
        if app.failures.fail(ip) {
            return Err(too_many_failures("authentications"));
        }
        Err(err(ErrorCode::Unauthorized, "the API key is not valid or was revoked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&["198.51.100.7, 203.0.113.9"]);
        // From an untrusted peer the header is anyone's word.
        assert_eq!(
            forwarded_client("192.0.2.1".parse().unwrap(), &h, &trusted),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        // Through a trusted proxy: the nearest hop it received from.
        assert_eq!(forwarded_client(proxy, &h, &trusted), "203.0.113.9".parse::<IpAddr>().unwrap());
        // Several trusted proxies in a row are skipped; a client cannot skip an untrusted hop.
        let h = headers(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(forwarded_client(proxy, &h, &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
        // No header, or garbage: the proxy itself.
        assert_eq!(forwarded_client(proxy, &headers(&[]), &trusted), proxy);
        assert_eq!(forwarded_client(proxy, &headers(&["not-an-ip"]), &trusted), proxy);
        // Without trusted proxies the header never counts.
        assert_eq!(forwarded_client(proxy, &h, &[]), proxy);
    }

    #[test]
    fn limiter_refuses_after_the_allowance_and_forgets_least_recent() {
        let l = FailureLimiter::with_capacity(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(!l.fail(a));
        }
        assert!(l.fail(a));
        l.fail("192.0.2.2".parse().unwrap());
        l.fail("192.0.2.3".parse().unwrap());
        assert_eq!(l.len(), 2);
        // `a` failed least recently and was forgotten: it starts afresh.
        assert!(!l.fail(a));
    }
}

/// What a route needs of the caller within an organization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Any role of the organization, or an operator.
    Read,
    /// admin or billing_admin: money, payment methods, subscriptions.
    Billing,
    /// admin or license_admin: users, licenses, numbers.
    Licenses,
    /// admin, or a call_control key (bulk CDR import).
    AdminOrCallControl,
    /// admin only: integrations such as webhooks.
    Admin,
}

/// Checks a caller may act on `org_id`. A key of another organization gets 404, as
/// if the organization did not exist, so existence never leaks.
pub fn check_org(p: &Principal, org_id: &str, need: Need) -> Result<(), ApiError> {
    let not_found = || err(ErrorCode::NotFound, "no such organization");
    let forbidden = |what: &str| err(ErrorCode::Forbidden, format!("a {} key cannot {what}", p.role.as_str()));
    match p.role {
        Role::Operator => match need {
            Need::Read => Ok(()),
            _ => Err(forbidden("change an organization's data")),
        },
        Role::CallControl => match need {
            Need::AdminOrCallControl => Ok(()),
            _ => Err(forbidden("use organization routes")),
        },
        role => {
            if p.org_id.as_deref() != Some(org_id) {
                return Err(not_found());
            }
            let ok = match need {
                Need::Read => true,
                Need::Billing => matches!(role, Role::Admin | Role::BillingAdmin),
                Need::Licenses => matches!(role, Role::Admin | Role::LicenseAdmin),
                Need::AdminOrCallControl | Need::Admin => role == Role::Admin,
            };
            if ok {
                Ok(())
            } else {
                Err(forbidden("do this"))
            }
        }
    }
}

/// Checks a platform role.
pub fn check_platform(p: &Principal, role: Role) -> Result<(), ApiError> {
    if p.role == role {
        Ok(())
    } else {
        Err(err(ErrorCode::Forbidden, format!("this route needs a {} key", role.as_str())))
    }
}
