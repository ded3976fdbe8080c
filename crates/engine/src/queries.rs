//! Reads, answered with the contract's views.

use crate::calls::{load_pool, quote, AuthorizeRequest};
use crate::jobs::pool_keys;
use crate::views::*;
use crate::{admin, org, Engine};
use commcredits_core::catalog::{PoolKind, PoolScope};
use commcredits_core::pools::{Month, PoolKey};
use commcredits_core::{err, ErrorCode, Result, Timestamp};
use commcredits_store::CdrRow;

/// Largest page a list returns.
pub const MAX_PAGE: usize = 1_000;

impl Engine {
    pub fn org_view(&self, org_id: &str) -> Result<OrgView> {
        self.read(|tx| Ok(OrgView::from(&org(tx, org_id)?)))
    }

    pub fn orgs(&self) -> Result<Vec<OrgView>> {
        self.read(|tx| Ok(tx.list_orgs()?.iter().map(OrgView::from).collect()))
    }

    pub fn users(&self, org_id: &str) -> Result<Vec<UserView>> {
        self.read(|tx| {
            org(tx, org_id)?;
            let users = tx.list_users(org_id)?;
            users.iter().map(|u| Ok(UserView::new(u, tx.user_licenses(org_id, &u.user_id)?))).collect()
        })
    }

    pub fn user(&self, org_id: &str, user: &str) -> Result<UserView> {
        self.read(|tx| {
            org(tx, org_id)?;
            let u = admin::find_user(tx, org_id, user)?;
            let l = tx.user_licenses(org_id, &u.user_id)?;
            Ok(UserView::new(&u, l))
        })
    }

    pub fn subscriptions(&self, org_id: &str) -> Result<Vec<SubscriptionView>> {
        self.read(|tx| {
            org(tx, org_id)?;
            tx.list_subscriptions(org_id)?
                .into_iter()
                .map(|(sku, quantity)| {
                    let assigned = tx.seats_used(org_id, &sku)?;
                    Ok(SubscriptionView { sku, quantity, assigned, available: (quantity - assigned).max(0) })
                })
                .collect()
        })
    }

    pub fn numbers(&self, org_id: &str) -> Result<Vec<NumberView>> {
        self.read(|tx| {
            org(tx, org_id)?;
            Ok(tx.list_numbers(org_id)?.iter().map(NumberView::from).collect())
        })
    }

    pub fn payment_methods(&self, org_id: &str) -> Result<Vec<PaymentMethodView>> {
        self.read(|tx| {
            org(tx, org_id)?;
            Ok(tx.list_payment_methods(org_id)?.iter().map(PaymentMethodView::from).collect())
        })
    }

    pub fn credits(&self, org_id: &str) -> Result<CreditsView> {
        self.read(|tx| {
            org(tx, org_id)?;
            let a = tx.get_account(org_id)?.ok_or_else(|| err!(ErrorCode::Internal, "no account"))?;
            let lots = tx.list_lots(org_id)?;
            Ok(CreditsView::new(&a, &lots))
        })
    }

    /// One page of the ledger after `cursor` (the `next_cursor` of the previous page).
    pub fn ledger(&self, org_id: &str, cursor: Option<&str>, limit: usize) -> Result<LedgerPage> {
        let after = match cursor {
            Some(c) => parse_ledger_cursor(c)?,
            None => 0,
        };
        if limit == 0 || limit > MAX_PAGE {
            return Err(err!(ErrorCode::InvalidInput, "limit must be 1 to {MAX_PAGE}"));
        }
        self.read(|tx| {
            let o = org(tx, org_id)?;
            let rows = tx.list_ledger(org_id, after, limit + 1)?;
            let more = rows.len() > limit;
            let entries: Vec<LedgerEntryView> =
                rows.iter().take(limit).map(|e| LedgerEntryView::new(e, &o.currency)).collect();
            let next_cursor = if more { entries.last().map(|e| ledger_cursor(e.seq)) } else { None };
            Ok(LedgerPage { entries, next_cursor })
        })
    }

    pub fn orders(&self, org_id: &str) -> Result<Vec<OrderView>> {
        self.read(|tx| {
            org(tx, org_id)?;
            Ok(tx.list_orders(org_id)?.iter().map(OrderView::from).collect())
        })
    }

    pub fn notices(&self, org_id: &str) -> Result<Vec<NoticeView>> {
        self.read(|tx| {
            org(tx, org_id)?;
            Ok(tx.list_notices(org_id)?.iter().map(NoticeView::from).collect())
        })
    }

    pub fn deliveries(&self, org_id: &str) -> Result<Vec<DeliveryView>> {
        self.read(|tx| {
            org(tx, org_id)?;
            Ok(tx.list_deliveries(org_id)?.iter().map(DeliveryView::from).collect())
        })
    }

    pub fn webhooks(&self, org_id: &str) -> Result<Vec<WebhookView>> {
        self.read(|tx| {
            org(tx, org_id)?;
            Ok(tx.list_webhooks(org_id)?.iter().map(WebhookView::from).collect())
        })
    }

    pub fn notification_settings(&self, org_id: &str) -> Result<NotificationSettingsView> {
        self.read(|tx| {
            let o = org(tx, org_id)?;
            Ok(NotificationSettingsView {
                notification_emails: o.notification_emails.clone(),
                low_balance_level: o.low_balance_minor,
                currency: o.currency.clone(),
                enabled_notices: crate::notices::KINDS
                    .iter()
                    .filter(|k| !o.disabled_notices.iter().any(|d| d == *k))
                    .map(|k| k.to_string())
                    .collect(),
            })
        })
    }

    pub fn denials(&self, org_id: &str) -> Result<Vec<DenialView>> {
        self.read(|tx| {
            org(tx, org_id)?;
            Ok(tx.list_denials(org_id)?.iter().map(DenialView::from).collect())
        })
    }

    pub fn cdrs(&self, org_id: &str, from: Timestamp, to: Timestamp) -> Result<Vec<CdrRow>> {
        self.read(|tx| {
            org(tx, org_id)?;
            tx.list_cdrs(org_id, from, to)
        })
    }

    /// The organization's minute pools for the month of `at`.
    pub fn pools(&self, org_id: &str, at: Timestamp) -> Result<Vec<PoolView>> {
        let month = Month::of(at);
        self.read(|tx| {
            org(tx, org_id)?;
            let mut keys = pool_keys(self, tx, org_id)?;
            for row in tx.list_pool_usage(org_id, month.0)? {
                keys.insert(PoolKey { scope: PoolScope::parse(&row.scope)?, kind: PoolKind::parse(&row.kind)? });
            }
            keys.into_iter()
                .map(|key| {
                    let p = load_pool(self, tx, org_id, key, month)?;
                    Ok(PoolView::new(
                        key.scope.as_str(),
                        key.kind,
                        month.label(),
                        p.size,
                        p.row.used_minutes,
                        p.row.reserved_minutes,
                    ))
                })
                .collect()
        })
    }

    /// What a call would cost and who would pay; changes nothing.
    pub fn rate(&self, req: &AuthorizeRequest, now: Timestamp) -> Result<AuthorizeView> {
        quote(self, &req.org, req, now)
    }
}

/// The ledger cursor after the entry numbered `seq`: the `next_cursor` of a page.
pub fn ledger_cursor(seq: i64) -> String {
    seq.to_string()
}

/// The entry number a ledger cursor stands for ([`ledger_cursor`] read back).
pub fn parse_ledger_cursor(cursor: &str) -> Result<i64> {
    cursor.parse().map_err(|_| err!(ErrorCode::InvalidInput, "cursor '{cursor}' is not one this API returned"))
}
