//! Authentication (Bearer API keys), the role matrix, and a limit on failed attempts.

use crate::error::{err, ApiError};
use crate::App;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use commcredits_core::ErrorCode;
use commcredits_engine::keys::{Principal, Role};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failed authentications allowed per client address per window.
pub const MAX_FAILURES: u32 = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Counts failed authentications per client address; bounded in size.
#[derive(Default)]
pub struct FailureLimiter {
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub(crate) fn blocked(&self, ip: IpAddr) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&ip).is_some_and(|(start, n)| start.elapsed() < FAILURE_WINDOW && *n >= MAX_FAILURES)
    }

    pub(crate) fn fail(&self, ip: IpAddr) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 100_000 {
            seen.retain(|_, (start, _)| start.elapsed() < FAILURE_WINDOW);
        }
        let e = seen.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= FAILURE_WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }
}

/// The address a request came from (the limiter's key).
pub(crate) fn client_ip(extensions: &axum::http::Extensions) -> IpAddr {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// The authenticated caller.
pub struct Auth(pub Principal);

impl FromRequestParts<Arc<App>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let ip = client_ip(&parts.extensions);
        if app.failures.blocked(ip) {
            return Err(err(
                ErrorCode::RateLimited,
                "too many failed authentications from this address; try again in a minute",
            ));
        }
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
        let secret = header.strip_prefix("Bearer ").map(str::trim).unwrap_or("");
        if secret.is_empty() {
            app.failures.fail(ip);
            return Err(err(ErrorCode::Unauthorized, "send an API key as `Authorization: Bearer <key>`"));
        }
        let engine = app.engine.clone();
        let secret = secret.to_string();
        let principal = tokio::task::spawn_blocking(move || engine.authenticate(&secret))
            .await
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))??;
        match principal {
            Some(p) => Ok(Auth(p)),
            None => {
                app.failures.fail(ip);
                Err(err(ErrorCode::Unauthorized, "the API key is not valid or was revoked"))
            }
        }
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
