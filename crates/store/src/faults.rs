//! Deterministic fault injection for tests: [`FaultStore`] wraps any [`Store`] and,
//! following a seeded [`FaultPlan`], makes statements fail, commits fail or report an
//! error after committing (an unknown outcome), and re-runs write closures the way the
//! PostgreSQL adapter does after a serialization failure (the first attempt is cut off
//! partway or at its end, rolled back, and the same closure runs again).
//!
//! The same seed gives the same faults for the same sequence of calls, so a failing
//! simulation run is replayed by its seed alone.

use crate::*;
use std::sync::{Arc, Mutex};

/// How often each fault happens, in parts per million of the chances to inject it.
#[derive(Clone, Debug, Default)]
pub struct FaultRates {
    /// Per statement of a write transaction.
    pub write_statement: u32,
    /// Per statement of a read.
    pub read_statement: u32,
    /// Per write: COMMIT fails and the transaction is rolled back.
    pub commit_error: u32,
    /// Per write: COMMIT succeeds but the caller is told it failed.
    pub commit_unknown: u32,
    /// Per write attempt: the attempt is cut off by a serialization failure partway
    /// through and the closure is run again.
    pub retry_partway: u32,
    /// Per write attempt: the closure ran to its end, COMMIT reports a serialization
    /// failure, and the closure is run again.
    pub retry_at_commit: u32,
}

/// Faults injected so far, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub write_statement: u64,
    pub read_statement: u64,
    pub commit_error: u64,
    pub commit_unknown: u64,
    pub retry_partway: u64,
    pub retry_at_commit: u64,
    /// Writes that committed (whatever the caller was told).
    pub committed: u64,
}

impl std::ops::AddAssign<&FaultCounts> for FaultCounts {
    fn add_assign(&mut self, o: &FaultCounts) {
        let FaultCounts {
            write_statement,
            read_statement,
            commit_error,
            commit_unknown,
            retry_partway,
            retry_at_commit,
            committed,
        } = o;
        self.write_statement += write_statement;
        self.read_statement += read_statement;
        self.commit_error += commit_error;
        self.commit_unknown += commit_unknown;
        self.retry_partway += retry_partway;
        self.retry_at_commit += retry_at_commit;
        self.committed += committed;
    }
}

/// The seeded source of faults, shared by a store and its transactions.
pub struct FaultPlan {
    state: Mutex<PlanState>,
}

struct PlanState {
    rng: u64,
    rates: FaultRates,
    enabled: bool,
    counts: FaultCounts,
}

/// Retries of one write at most, as the PostgreSQL adapter bounds its own.
const MAX_INJECTED_RETRIES: u32 = 3;

impl FaultPlan {
    pub fn new(seed: u64, rates: FaultRates) -> Arc<FaultPlan> {
        Arc::new(FaultPlan {
            state: Mutex::new(PlanState {
                rng: seed ^ 0x9E37_79B9_7F4A_7C15,
                rates,
                enabled: true,
                counts: Default::default(),
            }),
        })
    }

    /// Turns injection on or off (set-up and final checks run without faults).
    pub fn set_enabled(&self, on: bool) {
        self.lock().enabled = on;
    }

    pub fn counts(&self) -> FaultCounts {
        self.lock().counts.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PlanState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A uniform number below `n` (n > 0) from the plan's generator.
    pub fn below(&self, n: u64) -> u64 {
        self.lock().next() % n.max(1)
    }

    /// Draws one chance of the fault `pick` chooses; counts it when it happens.
    fn chance(&self, pick: impl Fn(&FaultRates) -> u32, count: impl Fn(&mut FaultCounts)) -> bool {
        let mut s = self.lock();
        if !s.enabled {
            return false;
        }
        let rate = pick(&s.rates);
        if rate == 0 {
            return false;
        }
        let hit = s.next() % 1_000_000 < u64::from(rate);
        if hit {
            count(&mut s.counts);
        }
        hit
    }
}

impl PlanState {
    /// splitmix64: small, fast, and the same on every platform.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The error an injected fault answers with: a store error, as a real one would be.
fn injected(what: &str) -> Error {
    store_error("injected fault", what)
}

/// A [`Store`] whose writes and reads fail as its [`FaultPlan`] says.
pub struct FaultStore {
    inner: Arc<dyn Store>,
    plan: Arc<FaultPlan>,
}

impl FaultStore {
    pub fn new(inner: Arc<dyn Store>, plan: Arc<FaultPlan>) -> FaultStore {
        FaultStore { inner, plan }
    }

    pub fn plan(&self) -> &Arc<FaultPlan> {
        &self.plan
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Read,
    Write,
}

/// A transaction of a [`FaultStore`]: every statement first asks the plan.
pub struct FaultTx<'a> {
    inner: &'a mut dyn Tx,
    plan: &'a FaultPlan,
    mode: Mode,
    /// Statements left before a serialization failure cuts this attempt off; from then
    /// on every statement fails, as in an aborted PostgreSQL transaction.
    cut_after: Option<u32>,
    /// The attempt was cut off: it must be rolled back and run again, whatever the
    /// closure made of the error.
    conflict: bool,
}

impl FaultTx<'_> {
    fn statement(&mut self, name: &str) -> Result<()> {
        if self.conflict {
            return Err(injected(&format!("{name}: the transaction was aborted by a serialization failure")));
        }
        if let Some(left) = self.cut_after.as_mut() {
            if *left == 0 {
                self.conflict = true;
                return Err(injected(&format!("{name}: could not serialize access (serialization failure)")));
            }
            *left -= 1;
        }
        let hit = match self.mode {
            Mode::Write => self.plan.chance(|r| r.write_statement, |c| c.write_statement += 1),
            Mode::Read => self.plan.chance(|r| r.read_statement, |c| c.read_statement += 1),
        };
        if hit {
            return Err(injected(&format!("{name} failed")));
        }
        Ok(())
    }
}

impl Store for FaultStore {
    fn write(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        let plan = &*self.plan;
        let mut retries = 0;
        loop {
            let retry_partway =
                retries < MAX_INJECTED_RETRIES && plan.chance(|r| r.retry_partway, |c| c.retry_partway += 1);
            let retry_at_commit = !retry_partway
                && retries < MAX_INJECTED_RETRIES
                && plan.chance(|r| r.retry_at_commit, |c| c.retry_at_commit += 1);
            if retry_partway || retry_at_commit {
                // This attempt never commits: it is rolled back (the inner write sees an
                // error) and the same closure runs again, as after a serialization failure.
                let cut_after = retry_partway.then(|| plan.below(40) as u32);
                let _ = self.inner.write(&mut |tx| {
                    let mut ft = FaultTx { inner: tx, plan, mode: Mode::Write, cut_after, conflict: false };
                    let _ = f(&mut ft);
                    Err(injected("serialization failure"))
                });
                retries += 1;
                continue;
            }
            let mut outcome = Ok(());
            let result = self.inner.write(&mut |tx| {
                let mut ft = FaultTx { inner: tx, plan, mode: Mode::Write, cut_after: None, conflict: false };
                outcome = f(&mut ft);
                if outcome.is_ok() && plan.chance(|r| r.commit_error, |c| c.commit_error += 1) {
                    return Err(injected("COMMIT failed; the transaction was rolled back"));
                }
                outcome.clone()
            });
            result?;
            self.plan.lock().counts.committed += 1;
            if plan.chance(|r| r.commit_unknown, |c| c.commit_unknown += 1) {
                return Err(injected("the connection was lost during COMMIT; whether it committed is unknown"));
            }
            return Ok(());
        }
    }

    fn read(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        let plan = &*self.plan;
        self.inner.read(&mut |tx| {
            let mut ft = FaultTx { inner: tx, plan, mode: Mode::Read, cut_after: None, conflict: false };
            f(&mut ft)
        })
    }

    fn read_report(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        let plan = &*self.plan;
        self.inner.read_report(&mut |tx| {
            let mut ft = FaultTx { inner: tx, plan, mode: Mode::Read, cut_after: None, conflict: false };
            f(&mut ft)
        })
    }

    fn describe(&self) -> String {
        format!("faults({})", self.inner.describe())
    }
}

/// Forwards each `Tx` method to the inner transaction after asking the plan whether
/// this statement fails.
macro_rules! forward {
    ($( fn $name:ident(&mut self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        impl Tx for FaultTx<'_> {
            $(
                fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                    self.statement(stringify!($name))?;
                    self.inner.$name($($arg),*)
                }
            )*
        }
    };
}

forward! {
    fn savepoint(&mut self) -> Result<()>;
    fn release_savepoint(&mut self) -> Result<()>;
    fn rollback_savepoint(&mut self) -> Result<()>;
    fn lock_org(&mut self, org_id: &str) -> Result<()>;
    fn insert_org(&mut self, org: &OrgRow) -> Result<()>;
    fn get_org(&mut self, org_id: &str) -> Result<Option<OrgRow>>;
    fn find_org_by_name(&mut self, name: &str) -> Result<Vec<OrgRow>>;
    fn update_org(&mut self, org: &OrgRow) -> Result<()>;
    fn list_orgs(&mut self) -> Result<Vec<OrgRow>>;
    fn insert_user(&mut self, user: &UserRow) -> Result<()>;
    fn update_user(&mut self, user: &UserRow) -> Result<()>;
    fn get_user(&mut self, org_id: &str, user_id: &str) -> Result<Option<UserRow>>;
    fn get_user_by_upn(&mut self, org_id: &str, upn: &str) -> Result<Option<UserRow>>;
    fn list_users(&mut self, org_id: &str) -> Result<Vec<UserRow>>;
    fn set_subscription(&mut self, org_id: &str, sku: &str, quantity: i64) -> Result<()>;
    fn list_subscriptions(&mut self, org_id: &str) -> Result<Vec<(String, i64)>>;
    fn user_licenses(&mut self, org_id: &str, user_id: &str) -> Result<Vec<String>>;
    fn set_user_licenses(&mut self, org_id: &str, user_id: &str, skus: &[String]) -> Result<()>;
    fn seats_used(&mut self, org_id: &str, sku: &str) -> Result<i64>;
    fn count_licensed_users(&mut self, org_id: &str, country: Option<&str>, skus: &[String]) -> Result<i64>;
    fn insert_number(&mut self, n: &NumberRow) -> Result<()>;
    fn get_number(&mut self, org_id: &str, number: &str) -> Result<Option<NumberRow>>;
    fn list_numbers(&mut self, org_id: &str) -> Result<Vec<NumberRow>>;
    fn insert_payment_method(&mut self, pm: &PaymentMethodRow) -> Result<()>;
    fn get_payment_method(&mut self, org_id: &str, pm_id: &str) -> Result<Option<PaymentMethodRow>>;
    fn list_payment_methods(&mut self, org_id: &str) -> Result<Vec<PaymentMethodRow>>;
    fn insert_account(&mut self, a: &AccountRow) -> Result<()>;
    fn get_account(&mut self, org_id: &str) -> Result<Option<AccountRow>>;
    fn update_account(&mut self, a: &AccountRow) -> Result<()>;
    fn insert_lot(&mut self, lot: &LotRow) -> Result<()>;
    fn update_lot(&mut self, lot: &LotRow) -> Result<()>;
    fn open_lots(&mut self, org_id: &str) -> Result<Vec<LotRow>>;
    fn list_lots(&mut self, org_id: &str) -> Result<Vec<LotRow>>;
    fn append_ledger(&mut self, e: &LedgerRow) -> Result<()>;
    fn append_ledger_many(&mut self, entries: &[LedgerRow]) -> Result<()>;
    fn list_ledger(&mut self, org_id: &str, after_seq: i64, limit: usize) -> Result<Vec<LedgerRow>>;
    fn ledger_totals(&mut self, org_id: &str) -> Result<Vec<(String, i64)>>;
    fn insert_order(&mut self, o: &OrderRow) -> Result<()>;
    fn update_order(&mut self, o: &OrderRow) -> Result<()>;
    fn get_order(&mut self, org_id: &str, order_id: &str) -> Result<Option<OrderRow>>;
    fn list_orders(&mut self, org_id: &str) -> Result<Vec<OrderRow>>;
    fn get_pool_usage(&mut self, org_id: &str, month: i32, scope: &str, kind: &str) -> Result<Option<PoolUsageRow>>;
    fn put_pool_usage(&mut self, p: &PoolUsageRow) -> Result<()>;
    fn list_pool_usage(&mut self, org_id: &str, month: i32) -> Result<Vec<PoolUsageRow>>;
    fn get_user_spend(&mut self, org_id: &str, user_id: &str, month: i32) -> Result<Option<UserSpendRow>>;
    fn put_user_spend(&mut self, s: &UserSpendRow) -> Result<()>;
    fn insert_reservation(&mut self, r: &ReservationRow) -> Result<()>;
    fn insert_reservations(&mut self, rows: &[ReservationRow]) -> Result<()>;
    fn update_reservation(&mut self, r: &ReservationRow) -> Result<()>;
    fn get_reservation(&mut self, org_id: &str, call_id: &str) -> Result<Option<ReservationRow>>;
    fn reserved_call_ids(&mut self, org_id: &str, call_ids: &[&str]) -> Result<Vec<String>>;
    fn count_pending_reservations(&mut self, org_id: &str) -> Result<i64>;
    fn pending_reservations(&mut self, org_id: &str) -> Result<Vec<ReservationRow>>;
    fn insert_cdr(&mut self, c: &CdrRow) -> Result<()>;
    fn insert_cdrs(&mut self, rows: &[CdrRow]) -> Result<()>;
    fn get_cdr(&mut self, org_id: &str, call_id: &str) -> Result<Option<CdrRow>>;
    fn list_cdrs(&mut self, org_id: &str, from: Timestamp, to: Timestamp) -> Result<Vec<CdrRow>>;
    fn for_each_cdr( &mut self, org_id: &str, from: Timestamp, to: Timestamp, f: &mut dyn FnMut(&mut CdrRow) -> Result<()>) -> Result<()>;
    fn insert_denial(&mut self, d: &DenialRow) -> Result<()>;
    fn list_denials(&mut self, org_id: &str) -> Result<Vec<DenialRow>>;
    fn insert_notice(&mut self, n: &NoticeRow) -> Result<()>;
    fn list_notices(&mut self, org_id: &str) -> Result<Vec<NoticeRow>>;
    fn due_lots(&mut self, now: Timestamp, limit: usize) -> Result<Vec<(String, String)>>;
    fn lots_expiring_before(&mut self, before: Timestamp, limit: usize) -> Result<Vec<(String, String)>>;
    fn due_reservations(&mut self, now: Timestamp, limit: usize) -> Result<Vec<(String, String)>>;
    fn pending_orders(&mut self, limit: usize) -> Result<Vec<(String, String)>>;
    fn insert_api_key(&mut self, k: &ApiKeyRow) -> Result<()>;
    fn find_api_key(&mut self, secret_hash: &str) -> Result<Option<ApiKeyRow>>;
    fn list_api_keys(&mut self, org_id: &str) -> Result<Vec<ApiKeyRow>>;
    fn revoke_api_key(&mut self, org_id: &str, key_id: &str, at: Timestamp) -> Result<bool>;
    fn get_idempotency(&mut self, org_id: &str, key: &str) -> Result<Option<IdempotencyRow>>;
    fn put_idempotency(&mut self, i: &IdempotencyRow) -> Result<()>;
    fn take_idempotency(&mut self, i: &IdempotencyRow, now: Timestamp) -> Result<bool>;
    fn replace_claim(&mut self, i: &IdempotencyRow, claim: &str) -> Result<bool>;
    fn delete_idempotency(&mut self, org_id: &str, key: &str) -> Result<()>;
    fn delete_call_idempotency(&mut self, org_id: &str, call_id: &str) -> Result<usize>;
    fn delete_expired_idempotency(&mut self, now: Timestamp, limit: usize) -> Result<usize>;
    fn get_notice(&mut self, org_id: &str, notice_id: &str) -> Result<Option<NoticeRow>>;
    fn set_notice_status(&mut self, org_id: &str, notice_id: &str, status: &str) -> Result<()>;
    fn insert_webhook(&mut self, w: &WebhookRow) -> Result<()>;
    fn get_webhook(&mut self, org_id: &str, webhook_id: &str) -> Result<Option<WebhookRow>>;
    fn list_webhooks(&mut self, org_id: &str) -> Result<Vec<WebhookRow>>;
    fn delete_webhook(&mut self, org_id: &str, webhook_id: &str) -> Result<bool>;
    fn insert_delivery(&mut self, d: &DeliveryRow) -> Result<()>;
    fn update_delivery(&mut self, d: &DeliveryRow) -> Result<()>;
    fn get_delivery(&mut self, org_id: &str, delivery_id: &str) -> Result<Option<DeliveryRow>>;
    fn list_deliveries(&mut self, org_id: &str) -> Result<Vec<DeliveryRow>>;
    fn notice_deliveries(&mut self, org_id: &str, notice_id: &str) -> Result<Vec<DeliveryRow>>;
    fn due_deliveries( &mut self, now: Timestamp, channel: Option<&str>, limit: usize, per_org: usize) -> Result<Vec<(String, String)>>;
    fn count_failed_deliveries_all(&mut self) -> Result<i64>;
    fn count_open_reservations_all(&mut self) -> Result<i64>;
    fn count_pending_notices_all(&mut self) -> Result<i64>;
    fn put_rate_deck(&mut self, d: &RateDeckRow) -> Result<()>;
    fn list_rate_decks(&mut self) -> Result<Vec<RateDeckRow>>;
}
