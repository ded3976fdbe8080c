//! The notification outbox: each notice is written in the same transaction as the
//! event that causes it, so it exists exactly when its cause does. Delivery (e-mail,
//! webhooks) reads the outbox later.

use crate::new_id;
use commcredits_core::{Result, Timestamp};
use commcredits_store::{NoticeRow, Tx};

pub const RECHARGE_SUCCEEDED: &str = "recharge_succeeded";
pub const RECHARGE_FAILED: &str = "recharge_failed";
pub const BALANCE_EXHAUSTED: &str = "balance_exhausted";
pub const POOL_THRESHOLD: &str = "pool_threshold";
pub const LOW_BALANCE: &str = "low_balance";
pub const FUNDS_EXPIRING: &str = "funds_expiring";

/// Every kind of notice, for settings that turn some off.
pub const KINDS: [&str; 6] =
    [RECHARGE_SUCCEEDED, RECHARGE_FAILED, BALANCE_EXHAUSTED, POOL_THRESHOLD, LOW_BALANCE, FUNDS_EXPIRING];

pub(crate) fn write(
    tx: &mut dyn Tx,
    org_id: &str,
    kind: &str,
    now: Timestamp,
    subject: String,
    body: String,
    data: serde_json::Value,
) -> Result<()> {
    let notice = NoticeRow {
        seq: 0,
        org_id: org_id.into(),
        notice_id: new_id(),
        kind: kind.into(),
        created_at: now,
        subject,
        body,
        data: data.to_string(),
        status: "pending".into(),
    };
    tx.insert_notice(&notice)?;
    crate::delivery::enqueue(tx, &notice, now)
}
