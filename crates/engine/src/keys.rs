//! API keys and roles. A key is a random 256-bit secret shown once; only its SHA-256
//! is stored. Platform keys (operator, call_control) belong to no organization.

use crate::{new_id, org, Engine, Outcome};
use commcredits_core::{err, ErrorCode, Result, Timestamp};
use commcredits_store::{ApiKeyRow, Tx};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// What a key may do. The strings are part of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Platform: creates organizations, imports rate decks, reads any organization.
    Operator,
    /// Platform: authorizes and settles calls for any organization.
    CallControl,
    /// Organization: everything in its organization.
    Admin,
    /// Organization: funds, payment methods, auto-recharge, subscriptions; reads all.
    BillingAdmin,
    /// Organization: users, licenses and numbers; reads all.
    LicenseAdmin,
    /// Organization: reads everything, changes nothing.
    Reader,
}

impl Role {
    pub const ALL: [Role; 6] =
        [Role::Operator, Role::CallControl, Role::Admin, Role::BillingAdmin, Role::LicenseAdmin, Role::Reader];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::CallControl => "call_control",
            Role::Admin => "admin",
            Role::BillingAdmin => "billing_admin",
            Role::LicenseAdmin => "license_admin",
            Role::Reader => "reader",
        }
    }

    pub fn parse(text: &str) -> Result<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text.trim()).ok_or_else(|| {
            err!(
                ErrorCode::InvalidInput,
                "unknown role '{text}' (operator, call_control, admin, billing_admin, license_admin, reader)"
            )
        })
    }

    pub fn is_platform(self) -> bool {
        matches!(self, Role::Operator | Role::CallControl)
    }
}

/// An authenticated key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub role: Role,
    /// None for platform keys.
    pub org_id: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct KeyView {
    pub id: String,
    pub role: String,
    pub org_id: Option<String>,
    pub name: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<&ApiKeyRow> for KeyView {
    fn from(k: &ApiKeyRow) -> Self {
        KeyView {
            id: k.key_id.clone(),
            role: k.role.clone(),
            org_id: (!k.org_id.is_empty()).then(|| k.org_id.clone()),
            name: k.name.clone(),
            created_at: crate::views::iso(k.created_at),
            revoked_at: k.revoked_at.map(crate::views::iso),
        }
    }
}

/// A new key: the only time its secret is shown.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct NewKey {
    #[serde(flatten)]
    pub key: KeyView,
    pub secret: String,
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("cc_{}", hex::encode(bytes))
}

pub(crate) fn create(tx: &mut dyn Tx, org_id: Option<&str>, role: &str, name: &str, now: Timestamp) -> Result<Outcome> {
    let role = Role::parse(role)?;
    match (role.is_platform(), org_id) {
        (true, Some(_)) => {
            return Err(err!(ErrorCode::InvalidInput, "{} keys are platform-wide: give no organization", role.as_str()))
        }
        (false, None) => {
            return Err(err!(ErrorCode::InvalidInput, "{} keys belong to an organization: give --org", role.as_str()))
        }
        (false, Some(o)) => {
            org(tx, o)?;
        }
        (true, None) => {}
    }
    let secret = new_secret();
    let row = ApiKeyRow {
        org_id: org_id.unwrap_or("").into(),
        key_id: new_id(),
        role: role.as_str().into(),
        name: name.trim().chars().take(100).collect(),
        secret_hash: hash_secret(&secret),
        created_at: now,
        revoked_at: None,
    };
    tx.insert_api_key(&row)?;
    Ok(Outcome::Key(NewKey { key: KeyView::from(&row), secret }))
}

pub(crate) fn revoke(tx: &mut dyn Tx, org_id: Option<&str>, key_id: &str, now: Timestamp) -> Result<Outcome> {
    if tx.revoke_api_key(org_id.unwrap_or(""), key_id, now)? {
        Ok(Outcome::Done)
    } else {
        Err(err!(ErrorCode::NotFound, "no active key '{key_id}'"))
    }
}

impl Engine {
    /// The key a secret belongs to, if it exists and is not revoked.
    pub fn authenticate(&self, secret: &str) -> Result<Option<Principal>> {
        if !secret.starts_with("cc_") || secret.len() != 67 {
            return Ok(None);
        }
        let hash = hash_secret(secret);
        let row = self.read(|tx| tx.find_api_key(&hash))?;
        Ok(row.filter(|k| k.revoked_at.is_none()).and_then(|k| {
            Some(Principal {
                key_id: k.key_id,
                role: Role::parse(&k.role).ok()?,
                org_id: (!k.org_id.is_empty()).then_some(k.org_id),
            })
        }))
    }

    /// Keys of an organization, or the platform keys when `org_id` is None.
    pub fn keys(&self, org_id: Option<&str>) -> Result<Vec<KeyView>> {
        self.read(|tx| {
            if let Some(o) = org_id {
                org(tx, o)?;
            }
            Ok(tx.list_api_keys(org_id.unwrap_or(""))?.iter().map(KeyView::from).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert_eq!(a.len(), 67);
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), hash_secret(&b));
        assert_eq!(Role::parse("billing_admin").unwrap(), Role::BillingAdmin);
        assert!(Role::parse("root").is_err());
    }
}
