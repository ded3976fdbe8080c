//! Storage for commcredits: the [`Store`] trait, its rows, the SQLite adapter and the
//! conformance suite that every adapter must pass.
//!
//! The engine changes state only through [`Store::write`]: one transaction in which it
//! applies a batch of commands, each inside its own savepoint, and commits once (group
//! commit). Reads go through [`Store::read`].

pub mod conformance;
#[cfg(feature = "faults")]
pub mod faults;
pub mod overlay;
pub mod postgres;
pub mod rows;
pub mod sqlite;

use commcredits_core::{Error, ErrorCode, Result, Timestamp};
pub use rows::*;

/// A database that holds every organization's state.
pub trait Store: Send + Sync {
    /// Runs `f` inside one write transaction and commits when it returns Ok (rolls back
    /// on Err). The commit is durable when this returns.
    fn write(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()>;

    /// Runs `f` on a consistent snapshot. Writes inside `f` are refused.
    fn read(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()>;

    /// Like [`Store::read`], for report scans that may last as long as a client takes
    /// to download an export: an adapter with a connection pool runs them on a separate,
    /// smaller pool, so reports can never hold the connections that authentication and
    /// call control need.
    fn read_report(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        self.read(f)
    }

    /// A short description for logs ("sqlite:///path").
    fn describe(&self) -> String;
}

/// What a transaction can do. Every method is scoped to one organization, except the
/// rate decks (platform data) and the `due_*` scans of background jobs.
pub trait Tx {
    // -- batch support --
    /// Starts a nested unit of work; `rollback_savepoint` undoes only it.
    fn savepoint(&mut self) -> Result<()>;
    fn release_savepoint(&mut self) -> Result<()>;
    fn rollback_savepoint(&mut self) -> Result<()>;
    /// Takes the organization's write lock for the rest of the transaction
    /// (a no-op where the whole transaction is already exclusive).
    fn lock_org(&mut self, org_id: &str) -> Result<()>;

    // -- organizations --
    fn insert_org(&mut self, org: &OrgRow) -> Result<()>;
    fn get_org(&mut self, org_id: &str) -> Result<Option<OrgRow>>;
    fn find_org_by_name(&mut self, name: &str) -> Result<Vec<OrgRow>>;
    fn update_org(&mut self, org: &OrgRow) -> Result<()>;
    fn list_orgs(&mut self) -> Result<Vec<OrgRow>>;

    // -- users and licenses --
    fn insert_user(&mut self, user: &UserRow) -> Result<()>;
    fn update_user(&mut self, user: &UserRow) -> Result<()>;
    fn get_user(&mut self, org_id: &str, user_id: &str) -> Result<Option<UserRow>>;
    fn get_user_by_upn(&mut self, org_id: &str, upn: &str) -> Result<Option<UserRow>>;
    fn list_users(&mut self, org_id: &str) -> Result<Vec<UserRow>>;
    fn set_subscription(&mut self, org_id: &str, sku: &str, quantity: i64) -> Result<()>;
    fn list_subscriptions(&mut self, org_id: &str) -> Result<Vec<(String, i64)>>;
    fn user_licenses(&mut self, org_id: &str, user_id: &str) -> Result<Vec<String>>;
    fn set_user_licenses(&mut self, org_id: &str, user_id: &str, skus: &[String]) -> Result<()>;
    /// Seats in use per SKU (direct assignments).
    fn seats_used(&mut self, org_id: &str, sku: &str) -> Result<i64>;
    /// Users of `country` (all users when None) holding any of `skus` directly.
    fn count_licensed_users(&mut self, org_id: &str, country: Option<&str>, skus: &[String]) -> Result<i64>;

    // -- numbers and payment methods --
    fn insert_number(&mut self, n: &NumberRow) -> Result<()>;
    fn get_number(&mut self, org_id: &str, number: &str) -> Result<Option<NumberRow>>;
    fn list_numbers(&mut self, org_id: &str) -> Result<Vec<NumberRow>>;
    fn insert_payment_method(&mut self, pm: &PaymentMethodRow) -> Result<()>;
    fn get_payment_method(&mut self, org_id: &str, pm_id: &str) -> Result<Option<PaymentMethodRow>>;
    fn list_payment_methods(&mut self, org_id: &str) -> Result<Vec<PaymentMethodRow>>;

    // -- money --
    fn insert_account(&mut self, a: &AccountRow) -> Result<()>;
    fn get_account(&mut self, org_id: &str) -> Result<Option<AccountRow>>;
    fn update_account(&mut self, a: &AccountRow) -> Result<()>;
    fn insert_lot(&mut self, lot: &LotRow) -> Result<()>;
    fn update_lot(&mut self, lot: &LotRow) -> Result<()>;
    /// Lots still holding money (remaining > 0), any order.
    fn open_lots(&mut self, org_id: &str) -> Result<Vec<LotRow>>;
    fn list_lots(&mut self, org_id: &str) -> Result<Vec<LotRow>>;
    /// Appends to the ledger (the store numbers entries in the order they arrive).
    fn append_ledger(&mut self, e: &LedgerRow) -> Result<()>;
    /// Appends several entries, in order: one statement or round trip where the
    /// adapter can.
    fn append_ledger_many(&mut self, entries: &[LedgerRow]) -> Result<()> {
        entries.iter().try_for_each(|e| self.append_ledger(e))
    }
    /// Entries with seq > `after_seq`, oldest first, at most `limit`.
    fn list_ledger(&mut self, org_id: &str, after_seq: i64, limit: usize) -> Result<Vec<LedgerRow>>;
    /// Sum of amounts per ledger kind.
    fn ledger_totals(&mut self, org_id: &str) -> Result<Vec<(String, i64)>>;
    fn insert_order(&mut self, o: &OrderRow) -> Result<()>;
    fn update_order(&mut self, o: &OrderRow) -> Result<()>;
    fn get_order(&mut self, org_id: &str, order_id: &str) -> Result<Option<OrderRow>>;
    fn list_orders(&mut self, org_id: &str) -> Result<Vec<OrderRow>>;

    // -- pools and per-user spend --
    fn get_pool_usage(&mut self, org_id: &str, month: i32, scope: &str, kind: &str) -> Result<Option<PoolUsageRow>>;
    fn put_pool_usage(&mut self, p: &PoolUsageRow) -> Result<()>;
    fn list_pool_usage(&mut self, org_id: &str, month: i32) -> Result<Vec<PoolUsageRow>>;
    fn get_user_spend(&mut self, org_id: &str, user_id: &str, month: i32) -> Result<Option<UserSpendRow>>;
    fn put_user_spend(&mut self, s: &UserSpendRow) -> Result<()>;

    // -- calls --
    fn insert_reservation(&mut self, r: &ReservationRow) -> Result<()>;
    /// Inserts several reservations (bulk import): one statement or round trip where
    /// the adapter can.
    fn insert_reservations(&mut self, rows: &[ReservationRow]) -> Result<()> {
        rows.iter().try_for_each(|r| self.insert_reservation(r))
    }
    fn update_reservation(&mut self, r: &ReservationRow) -> Result<()>;
    fn get_reservation(&mut self, org_id: &str, call_id: &str) -> Result<Option<ReservationRow>>;
    /// Of `call_ids`, those that have a reservation in the organization (in any order; an
    /// id asked twice may be listed twice):
    /// a bulk import asks once per batch instead of once per call. Adapters answer in one
    /// statement per few hundred ids.
    fn reserved_call_ids(&mut self, org_id: &str, call_ids: &[&str]) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for id in call_ids {
            if self.get_reservation(org_id, id)?.is_some() {
                found.push(id.to_string());
            }
        }
        Ok(found)
    }
    fn count_pending_reservations(&mut self, org_id: &str) -> Result<i64>;
    fn pending_reservations(&mut self, org_id: &str) -> Result<Vec<ReservationRow>>;
    fn insert_cdr(&mut self, c: &CdrRow) -> Result<()>;
    /// Inserts several CDRs (bulk import), like [`Tx::insert_reservations`].
    fn insert_cdrs(&mut self, rows: &[CdrRow]) -> Result<()> {
        rows.iter().try_for_each(|c| self.insert_cdr(c))
    }
    fn get_cdr(&mut self, org_id: &str, call_id: &str) -> Result<Option<CdrRow>>;
    /// CDRs that started in [from, to), oldest first.
    fn list_cdrs(&mut self, org_id: &str, from: Timestamp, to: Timestamp) -> Result<Vec<CdrRow>>;
    /// Hands each CDR that started in [from, to) to `f`, oldest first, streaming: memory
    /// stays flat whatever the number of rows (an adapter may hand the same row, refilled,
    /// each time). The row is lent: `f` may keep it by swapping another `CdrRow` in, which
    /// the adapter then refills (so a reader can fill batches without copying). `f`
    /// returning an error stops the scan.
    fn for_each_cdr(
        &mut self,
        org_id: &str,
        from: Timestamp,
        to: Timestamp,
        f: &mut dyn FnMut(&mut CdrRow) -> Result<()>,
    ) -> Result<()>;
    fn insert_denial(&mut self, d: &DenialRow) -> Result<()>;
    fn list_denials(&mut self, org_id: &str) -> Result<Vec<DenialRow>>;

    // -- notices --
    fn insert_notice(&mut self, n: &NoticeRow) -> Result<()>;
    fn list_notices(&mut self, org_id: &str) -> Result<Vec<NoticeRow>>;

    // -- background scans (bounded by `limit`) --
    fn due_lots(&mut self, now: Timestamp, limit: usize) -> Result<Vec<(String, String)>>;
    fn lots_expiring_before(&mut self, before: Timestamp, limit: usize) -> Result<Vec<(String, String)>>;
    fn due_reservations(&mut self, now: Timestamp, limit: usize) -> Result<Vec<(String, String)>>;
    fn pending_orders(&mut self, limit: usize) -> Result<Vec<(String, String)>>;

    // -- API keys and idempotency --
    fn insert_api_key(&mut self, k: &ApiKeyRow) -> Result<()>;
    /// The key with this secret hash, revoked or not.
    fn find_api_key(&mut self, secret_hash: &str) -> Result<Option<ApiKeyRow>>;
    /// Keys of an organization (`""` for platform keys).
    fn list_api_keys(&mut self, org_id: &str) -> Result<Vec<ApiKeyRow>>;
    /// Revokes a key; false when there is no such active key.
    fn revoke_api_key(&mut self, org_id: &str, key_id: &str, at: Timestamp) -> Result<bool>;
    /// The record of a key, expired or not (the caller compares `expires_at`).
    fn get_idempotency(&mut self, org_id: &str, key: &str) -> Result<Option<IdempotencyRow>>;
    /// Inserts, or replaces every field of, an idempotency record.
    fn put_idempotency(&mut self, i: &IdempotencyRow) -> Result<()>;
    /// Takes a key with the record `i` (usually a claim): inserts it, or replaces a
    /// record of the key whose `expires_at` is at or before `now` (a lapsed claim, an
    /// expired answer), in one conditional statement, so that of two writers racing for
    /// a lapsed claim only one takes it. True when this call took the key.
    fn take_idempotency(&mut self, i: &IdempotencyRow, now: Timestamp) -> Result<bool>;
    /// Replaces the record of `i`'s key with `i` only while it is still the claim
    /// `claim` (status 0 with that token as body): the holder refreshing its lease or
    /// recording its answer. False when the claim is gone (lapsed and taken, or swept).
    fn replace_claim(&mut self, i: &IdempotencyRow, claim: &str) -> Result<bool>;
    fn delete_idempotency(&mut self, org_id: &str, key: &str) -> Result<()>;
    /// Deletes the records of one call (call control's own keys): they end with the call.
    fn delete_call_idempotency(&mut self, org_id: &str, call_id: &str) -> Result<usize>;
    /// Deletes at most `limit` records whose `expires_at` is at or before `now`, oldest
    /// expiry first; returns how many.
    fn delete_expired_idempotency(&mut self, now: Timestamp, limit: usize) -> Result<usize>;

    // -- notice delivery --
    fn get_notice(&mut self, org_id: &str, notice_id: &str) -> Result<Option<NoticeRow>>;
    fn set_notice_status(&mut self, org_id: &str, notice_id: &str, status: &str) -> Result<()>;
    fn insert_webhook(&mut self, w: &WebhookRow) -> Result<()>;
    fn get_webhook(&mut self, org_id: &str, webhook_id: &str) -> Result<Option<WebhookRow>>;
    fn list_webhooks(&mut self, org_id: &str) -> Result<Vec<WebhookRow>>;
    /// Deletes a webhook; false when there is none.
    fn delete_webhook(&mut self, org_id: &str, webhook_id: &str) -> Result<bool>;
    fn insert_delivery(&mut self, d: &DeliveryRow) -> Result<()>;
    fn update_delivery(&mut self, d: &DeliveryRow) -> Result<()>;
    fn get_delivery(&mut self, org_id: &str, delivery_id: &str) -> Result<Option<DeliveryRow>>;
    /// Deliveries of an organization, oldest first.
    fn list_deliveries(&mut self, org_id: &str) -> Result<Vec<DeliveryRow>>;
    /// Deliveries of one notice.
    fn notice_deliveries(&mut self, org_id: &str, notice_id: &str) -> Result<Vec<DeliveryRow>>;
    /// Pending deliveries whose next attempt is due, oldest due first; of one channel
    /// only when `channel` is given.
    /// Due deliveries, the most overdue first: at most `limit` in all and `per_org` of
    /// any one organization (so one organization's backlog cannot fill a round).
    fn due_deliveries(
        &mut self,
        now: Timestamp,
        channel: Option<&str>,
        limit: usize,
        per_org: usize,
    ) -> Result<Vec<(String, String)>>;
    fn count_failed_deliveries_all(&mut self) -> Result<i64>;

    // -- platform-wide gauges (metrics) --
    fn count_open_reservations_all(&mut self) -> Result<i64>;
    fn count_pending_notices_all(&mut self) -> Result<i64>;

    // -- platform data --
    fn put_rate_deck(&mut self, d: &RateDeckRow) -> Result<()>;
    fn list_rate_decks(&mut self) -> Result<Vec<RateDeckRow>>;
}

/// Wraps a database error with the store's stable code; details stay in the message.
pub fn store_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::StoreError, format!("{context}: {e}"))
}

/// Opens a store from a URL: `postgres://…` or `postgresql://…` (PostgreSQL),
/// `sqlite://PATH`, `sqlite::memory:` or a plain file path (SQLite).
pub fn open(url: &str) -> Result<Box<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(postgres::PostgresStore::open(url)?));
    }
    Ok(Box::new(sqlite::SqliteStore::open(url)?))
}
