//! Write-behind for bulk work: [`WriteBehind`] wraps a [`Tx`] for the length of one
//! transaction, keeps the rows a CDR import reads and rewrites for every call
//! (organization, account, lots, users, licenses, numbers, minute pools, per-user
//! spend, reservations) in memory, and writes the net result when the batch ends:
//! reservations, CDRs and ledger entries as bulk inserts, each account, lot, pool and
//! spend row once with its last value.
//!
//! It changes *when* rows reach the database, never *what* the transaction commits:
//! - reads of the kept rows answer from memory exactly as the database would answer
//!   after the writes so far;
//! - savepoints cost nothing: a rollback truncates the log of writes and restores the
//!   kept rows from an undo log;
//! - anything else (notices, denials, orders, listings...) goes to the database: the
//!   log is written first, so the database answers with everything seen so far. Inside
//!   open savepoints the database's own savepoints are taken first, at the place in the
//!   log where each was opened, so a later rollback still undoes exactly the right part;
//!   a write that goes through also forgets every kept row (it may have changed them).
//!
//! What differs: an `append_ledger` is numbered when the log is written, and a
//! constraint violation of a buffered write (which the engine never makes: it looks up
//! before it inserts) surfaces as a store error when the log is written, which fails
//! the whole transaction — as any store error does.
//!
//! The conformance suite runs on SQLite through this wrapper too.

use crate::rows::*;
use crate::{store_error, Store, Tx};
use commcredits_core::{Result, Timestamp};
use std::collections::HashMap;

type OrgKey = String;
type Key2 = (String, String);
type PoolKey = (String, i32, String, String);
type SpendKey = (String, String, i32);

/// A buffered write, in the order it was made.
enum Op {
    Account(AccountRow),
    Lot(LotRow),
    Pool(PoolUsageRow),
    Spend(UserSpendRow),
    InsertReservation(ReservationRow),
    UpdateReservation(ReservationRow),
    Cdr(CdrRow),
    Ledger(LedgerRow),
}

/// What a kept row was before a write inside a savepoint (`None`: not kept).
enum Undo {
    Account(OrgKey, Option<Option<AccountRow>>),
    Lots(OrgKey, Option<Vec<LotRow>>),
    Pool(PoolKey, Option<Option<PoolUsageRow>>),
    Spend(SpendKey, Option<Option<UserSpendRow>>),
    Reservation(Box<(Key2, Option<Option<ReservationRow>>)>),
}

#[derive(Default)]
struct Kept {
    orgs: HashMap<OrgKey, Option<OrgRow>>,
    accounts: HashMap<OrgKey, Option<AccountRow>>,
    /// Lots as `open_lots` returned them, with later updates; answers filter again.
    lots: HashMap<OrgKey, Vec<LotRow>>,
    users: HashMap<Key2, Option<UserRow>>,
    upns: HashMap<Key2, Option<UserRow>>,
    licenses: HashMap<Key2, Vec<String>>,
    licensed: HashMap<(OrgKey, Option<String>, Vec<String>), i64>,
    numbers: HashMap<Key2, Option<NumberRow>>,
    pools: HashMap<PoolKey, Option<PoolUsageRow>>,
    spend: HashMap<SpendKey, Option<UserSpendRow>>,
    reservations: HashMap<Key2, Option<ReservationRow>>,
}

struct Savepoint {
    /// Where in the log (and the undo log) it was opened.
    log_at: usize,
    undo_at: usize,
    /// The database holds a savepoint for it (something went through inside it).
    in_db: bool,
}

pub struct WriteBehind<'a> {
    inner: &'a mut dyn Tx,
    log: Vec<Op>,
    kept: Kept,
    undo: Vec<Undo>,
    savepoints: Vec<Savepoint>,
    locked: Vec<String>,
}

fn k2(a: &str, b: &str) -> Key2 {
    (a.to_string(), b.to_string())
}

fn lot_is_open(l: &LotRow) -> bool {
    l.remaining_minor > 0
}

impl<'a> WriteBehind<'a> {
    pub fn new(inner: &'a mut dyn Tx) -> Self {
        WriteBehind {
            inner,
            log: Vec::new(),
            kept: Kept::default(),
            undo: Vec::new(),
            savepoints: Vec::new(),
            locked: Vec::new(),
        }
    }

    /// Writes what is buffered. Call it before the transaction commits.
    pub fn finish(mut self) -> Result<()> {
        if !self.savepoints.is_empty() {
            return Err(store_error("write-behind", "the batch ended with a savepoint still open"));
        }
        let ops = std::mem::take(&mut self.log);
        write_ops(self.inner, ops)
    }

    /// Learns in one query which of `call_ids` have no reservation yet, so that each
    /// call's own lookup answers from memory. Ids already kept are left as they are (the
    /// kept row is the current one); an id the database has is looked up when asked.
    pub fn know_reservations(&mut self, org_id: &str, call_ids: &[&str]) -> Result<()> {
        let unknown: Vec<&str> =
            call_ids.iter().copied().filter(|id| !self.kept.reservations.contains_key(&k2(org_id, id))).collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let found: std::collections::HashSet<String> =
            self.through_read()?.reserved_call_ids(org_id, &unknown)?.into_iter().collect();
        for id in unknown.into_iter().filter(|id| !found.contains(*id)) {
            self.kept.reservations.insert(k2(org_id, id), None);
        }
        Ok(())
    }

    /// Buffered writes not yet in the database.
    pub fn pending(&self) -> usize {
        self.log.len()
    }

    fn recording(&self) -> bool {
        !self.savepoints.is_empty()
    }

    /// Brings the database up to date before something goes through to it: each open
    /// savepoint not yet held by the database gets one, at its place in the log.
    fn sync(&mut self) -> Result<()> {
        let mut ops = std::mem::take(&mut self.log);
        // Split the log where each savepoint the database lacks was opened.
        let mut tails = Vec::new();
        for sp in self.savepoints.iter().rev().filter(|s| !s.in_db) {
            tails.push(ops.split_off(sp.log_at.min(ops.len())));
        }
        write_ops(self.inner, ops)?;
        for sp in self.savepoints.iter_mut().filter(|s| !s.in_db) {
            self.inner.savepoint()?;
            sp.in_db = true;
            write_ops(self.inner, tails.pop().unwrap_or_default())?;
        }
        for sp in &mut self.savepoints {
            sp.log_at = 0;
            sp.undo_at = 0;
        }
        self.undo.clear();
        Ok(())
    }

    /// Before a read that goes through.
    fn through_read(&mut self) -> Result<&mut dyn Tx> {
        if !self.log.is_empty() || self.savepoints.iter().any(|s| !s.in_db) {
            self.sync()?;
        }
        Ok(&mut *self.inner)
    }

    /// Before a write that goes through: it may change kept rows, so they are forgotten.
    fn through_write(&mut self) -> Result<&mut dyn Tx> {
        self.sync()?;
        self.kept = Kept::default();
        Ok(&mut *self.inner)
    }

    fn account(&mut self, org_id: &str) -> Result<Option<AccountRow>> {
        if let Some(a) = self.kept.accounts.get(org_id) {
            return Ok(a.clone());
        }
        let a = self.inner.get_account(org_id)?;
        self.kept.accounts.insert(org_id.to_string(), a.clone());
        Ok(a)
    }

    fn lots(&mut self, org_id: &str) -> Result<&mut Vec<LotRow>> {
        if !self.kept.lots.contains_key(org_id) {
            let lots = self.inner.open_lots(org_id)?;
            self.kept.lots.insert(org_id.to_string(), lots);
        }
        Ok(self.kept.lots.get_mut(org_id).expect("just kept"))
    }

    fn reservation(&mut self, org_id: &str, call_id: &str) -> Result<Option<ReservationRow>> {
        let key = k2(org_id, call_id);
        if let Some(r) = self.kept.reservations.get(&key) {
            return Ok(r.clone());
        }
        let r = self.inner.get_reservation(org_id, call_id)?;
        self.kept.reservations.insert(key, r.clone());
        Ok(r)
    }

    fn set_reservation(&mut self, r: &ReservationRow) {
        let key = k2(&r.org_id, &r.call_id);
        let before = self.kept.reservations.insert(key.clone(), Some(r.clone()));
        if self.recording() {
            self.undo.push(Undo::Reservation(Box::new((key, before))));
        }
    }

    fn restore(&mut self, u: Undo) {
        fn put<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, before: Option<V>) {
            match before {
                Some(v) => {
                    map.insert(key, v);
                }
                None => {
                    map.remove(&key);
                }
            }
        }
        match u {
            Undo::Account(k, b) => put(&mut self.kept.accounts, k, b),
            Undo::Lots(k, b) => put(&mut self.kept.lots, k, b),
            Undo::Pool(k, b) => put(&mut self.kept.pools, k, b),
            Undo::Spend(k, b) => put(&mut self.kept.spend, k, b),
            Undo::Reservation(kb) => {
                let (k, b) = *kb;
                put(&mut self.kept.reservations, k, b)
            }
        }
    }
}

/// Writes a stretch of the log: inserts in bulk and in order, updated rows once each
/// with their last value.
fn write_ops(tx: &mut dyn Tx, ops: Vec<Op>) -> Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut accounts: Vec<AccountRow> = Vec::new();
    let mut lots: Vec<LotRow> = Vec::new();
    let mut pools: Vec<PoolUsageRow> = Vec::new();
    let mut spend: Vec<UserSpendRow> = Vec::new();
    // Reservations: the last value of each, inserted when the stretch inserted it.
    let mut reservations: Vec<(ReservationRow, bool)> = Vec::new();
    let mut reservation_at: HashMap<Key2, usize> = HashMap::new();
    let mut cdrs = Vec::new();
    let mut ledger = Vec::new();
    fn last<T>(list: &mut Vec<T>, row: T, same: impl Fn(&T, &T) -> bool) {
        match list.iter_mut().find(|r| same(r, &row)) {
            Some(r) => *r = row,
            None => list.push(row),
        }
    }
    for op in ops {
        match op {
            Op::Account(a) => last(&mut accounts, a, |x, y| x.org_id == y.org_id),
            Op::Lot(l) => last(&mut lots, l, |x, y| x.org_id == y.org_id && x.lot_id == y.lot_id),
            Op::Pool(p) => last(&mut pools, p, |x, y| {
                x.org_id == y.org_id && x.month == y.month && x.scope == y.scope && x.kind == y.kind
            }),
            Op::Spend(s) => {
                last(&mut spend, s, |x, y| x.org_id == y.org_id && x.user_id == y.user_id && x.month == y.month)
            }
            Op::InsertReservation(r) | Op::UpdateReservation(r)
                if reservation_at.contains_key(&k2(&r.org_id, &r.call_id)) =>
            {
                let i = reservation_at[&k2(&r.org_id, &r.call_id)];
                reservations[i].0 = r;
            }
            Op::InsertReservation(r) => {
                reservation_at.insert(k2(&r.org_id, &r.call_id), reservations.len());
                reservations.push((r, true));
            }
            Op::UpdateReservation(r) => {
                reservation_at.insert(k2(&r.org_id, &r.call_id), reservations.len());
                reservations.push((r, false));
            }
            Op::Cdr(c) => cdrs.push(c),
            Op::Ledger(l) => ledger.push(l),
        }
    }
    let (inserted, updated): (Vec<_>, Vec<_>) = reservations.into_iter().partition(|(_, ins)| *ins);
    let inserted: Vec<ReservationRow> = inserted.into_iter().map(|(r, _)| r).collect();
    tx.insert_reservations(&inserted)?;
    for (r, _) in &updated {
        tx.update_reservation(r)?;
    }
    tx.insert_cdrs(&cdrs)?;
    tx.append_ledger_many(&ledger)?;
    for l in &lots {
        tx.update_lot(l)?;
    }
    for p in &pools {
        tx.put_pool_usage(p)?;
    }
    for s in &spend {
        tx.put_user_spend(s)?;
    }
    for a in &accounts {
        tx.update_account(a)?;
    }
    Ok(())
}

/// Reads of kept rows: from memory, filled from the database the first time.
macro_rules! kept_read {
    ($self:ident, $map:ident, $key:expr, $load:expr) => {{
        let key = $key;
        if let Some(v) = $self.kept.$map.get(&key) {
            return Ok(v.clone());
        }
        let v = $load;
        $self.kept.$map.insert(key, v.clone());
        Ok(v)
    }};
}

/// Calls that go straight to the database (after bringing it up to date).
macro_rules! through {
    (read $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        fn $name(&mut self, $($arg: $ty),*) -> Result<$ret> {
            self.through_read()?.$name($($arg),*)
        }
    };
    (write $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        fn $name(&mut self, $($arg: $ty),*) -> Result<$ret> {
            self.through_write()?.$name($($arg),*)
        }
    };
}

impl Tx for WriteBehind<'_> {
    fn savepoint(&mut self) -> Result<()> {
        self.savepoints.push(Savepoint { log_at: self.log.len(), undo_at: self.undo.len(), in_db: false });
        Ok(())
    }

    fn release_savepoint(&mut self) -> Result<()> {
        let sp = self.savepoints.pop().ok_or_else(|| store_error("release savepoint", "no savepoint is open"))?;
        if sp.in_db {
            self.inner.release_savepoint()?;
        }
        if self.savepoints.is_empty() {
            self.undo.clear();
        }
        Ok(())
    }

    fn rollback_savepoint(&mut self) -> Result<()> {
        let sp = self.savepoints.pop().ok_or_else(|| store_error("rollback savepoint", "no savepoint is open"))?;
        self.log.truncate(sp.log_at);
        if sp.in_db {
            // The database goes back to where it was; what was kept may be newer.
            self.inner.rollback_savepoint()?;
            self.undo.clear();
            self.kept = Kept::default();
        } else {
            while self.undo.len() > sp.undo_at {
                let u = self.undo.pop().expect("undo entry");
                self.restore(u);
            }
        }
        Ok(())
    }

    fn lock_org(&mut self, org_id: &str) -> Result<()> {
        if self.locked.iter().any(|o| o == org_id) {
            return Ok(());
        }
        self.inner.lock_org(org_id)?;
        self.locked.push(org_id.to_string());
        Ok(())
    }

    through!(write insert_org(org: &OrgRow) -> ());
    fn get_org(&mut self, org_id: &str) -> Result<Option<OrgRow>> {
        kept_read!(self, orgs, org_id.to_string(), self.inner.get_org(org_id)?)
    }
    through!(read find_org_by_name(name: &str) -> Vec<OrgRow>);
    through!(write update_org(org: &OrgRow) -> ());
    through!(read list_orgs() -> Vec<OrgRow>);

    through!(write insert_user(user: &UserRow) -> ());
    through!(write update_user(user: &UserRow) -> ());
    fn get_user(&mut self, org_id: &str, user_id: &str) -> Result<Option<UserRow>> {
        kept_read!(self, users, k2(org_id, user_id), self.inner.get_user(org_id, user_id)?)
    }
    fn get_user_by_upn(&mut self, org_id: &str, upn: &str) -> Result<Option<UserRow>> {
        kept_read!(self, upns, k2(org_id, upn), self.inner.get_user_by_upn(org_id, upn)?)
    }
    through!(read list_users(org_id: &str) -> Vec<UserRow>);
    through!(write set_subscription(org_id: &str, sku: &str, quantity: i64) -> ());
    through!(read list_subscriptions(org_id: &str) -> Vec<(String, i64)>);
    fn user_licenses(&mut self, org_id: &str, user_id: &str) -> Result<Vec<String>> {
        kept_read!(self, licenses, k2(org_id, user_id), self.inner.user_licenses(org_id, user_id)?)
    }
    through!(write set_user_licenses(org_id: &str, user_id: &str, skus: &[String]) -> ());
    through!(read seats_used(org_id: &str, sku: &str) -> i64);
    fn count_licensed_users(&mut self, org_id: &str, country: Option<&str>, skus: &[String]) -> Result<i64> {
        kept_read!(
            self,
            licensed,
            (org_id.to_string(), country.map(str::to_string), skus.to_vec()),
            self.inner.count_licensed_users(org_id, country, skus)?
        )
    }

    through!(write insert_number(n: &NumberRow) -> ());
    fn get_number(&mut self, org_id: &str, number: &str) -> Result<Option<NumberRow>> {
        kept_read!(self, numbers, k2(org_id, number), self.inner.get_number(org_id, number)?)
    }
    through!(read list_numbers(org_id: &str) -> Vec<NumberRow>);
    through!(write insert_payment_method(pm: &PaymentMethodRow) -> ());
    through!(read get_payment_method(org_id: &str, pm_id: &str) -> Option<PaymentMethodRow>);
    through!(read list_payment_methods(org_id: &str) -> Vec<PaymentMethodRow>);

    through!(write insert_account(a: &AccountRow) -> ());
    fn get_account(&mut self, org_id: &str) -> Result<Option<AccountRow>> {
        self.account(org_id)
    }
    fn update_account(&mut self, a: &AccountRow) -> Result<()> {
        // An UPDATE of a row that does not exist changes nothing: neither does this.
        if self.account(&a.org_id)?.is_some() {
            let before = self.kept.accounts.insert(a.org_id.clone(), Some(a.clone()));
            if self.recording() {
                self.undo.push(Undo::Account(a.org_id.clone(), before));
            }
            self.log.push(Op::Account(a.clone()));
        }
        Ok(())
    }
    through!(write insert_lot(lot: &LotRow) -> ());
    fn update_lot(&mut self, lot: &LotRow) -> Result<()> {
        let recording = self.recording();
        let lots = self.lots(&lot.org_id)?;
        let Some(i) = lots.iter().position(|l| l.lot_id == lot.lot_id) else {
            // A lot that was not open: rare, so the database handles it.
            return self.through_write()?.update_lot(lot);
        };
        let before = recording.then(|| lots.clone());
        lots[i] = lot.clone();
        if let Some(before) = before {
            self.undo.push(Undo::Lots(lot.org_id.clone(), Some(before)));
        }
        self.log.push(Op::Lot(lot.clone()));
        Ok(())
    }
    fn open_lots(&mut self, org_id: &str) -> Result<Vec<LotRow>> {
        Ok(self.lots(org_id)?.iter().filter(|l| lot_is_open(l)).cloned().collect())
    }
    through!(read list_lots(org_id: &str) -> Vec<LotRow>);
    fn append_ledger(&mut self, e: &LedgerRow) -> Result<()> {
        self.log.push(Op::Ledger(e.clone()));
        Ok(())
    }
    through!(read list_ledger(org_id: &str, after_seq: i64, limit: usize) -> Vec<LedgerRow>);
    through!(read ledger_totals(org_id: &str) -> Vec<(String, i64)>);
    through!(write insert_order(o: &OrderRow) -> ());
    through!(write update_order(o: &OrderRow) -> ());
    through!(read get_order(org_id: &str, order_id: &str) -> Option<OrderRow>);
    through!(read list_orders(org_id: &str) -> Vec<OrderRow>);

    fn get_pool_usage(&mut self, org_id: &str, month: i32, scope: &str, kind: &str) -> Result<Option<PoolUsageRow>> {
        kept_read!(
            self,
            pools,
            (org_id.to_string(), month, scope.to_string(), kind.to_string()),
            self.inner.get_pool_usage(org_id, month, scope, kind)?
        )
    }
    fn put_pool_usage(&mut self, p: &PoolUsageRow) -> Result<()> {
        let key = (p.org_id.clone(), p.month, p.scope.clone(), p.kind.clone());
        let before = self.kept.pools.insert(key.clone(), Some(p.clone()));
        if self.recording() {
            self.undo.push(Undo::Pool(key, before));
        }
        self.log.push(Op::Pool(p.clone()));
        Ok(())
    }
    through!(read list_pool_usage(org_id: &str, month: i32) -> Vec<PoolUsageRow>);
    fn get_user_spend(&mut self, org_id: &str, user_id: &str, month: i32) -> Result<Option<UserSpendRow>> {
        kept_read!(
            self,
            spend,
            (org_id.to_string(), user_id.to_string(), month),
            self.inner.get_user_spend(org_id, user_id, month)?
        )
    }
    fn put_user_spend(&mut self, s: &UserSpendRow) -> Result<()> {
        let key = (s.org_id.clone(), s.user_id.clone(), s.month);
        let before = self.kept.spend.insert(key.clone(), Some(s.clone()));
        if self.recording() {
            self.undo.push(Undo::Spend(key, before));
        }
        self.log.push(Op::Spend(s.clone()));
        Ok(())
    }

    fn insert_reservation(&mut self, r: &ReservationRow) -> Result<()> {
        if self.reservation(&r.org_id, &r.call_id)?.is_some() {
            return Err(store_error(
                "insert reservation",
                format!("a reservation for call '{}' already exists (unique key)", r.call_id),
            ));
        }
        self.set_reservation(r);
        self.log.push(Op::InsertReservation(r.clone()));
        Ok(())
    }
    fn update_reservation(&mut self, r: &ReservationRow) -> Result<()> {
        // An UPDATE of a row that does not exist changes nothing: neither does this.
        if self.reservation(&r.org_id, &r.call_id)?.is_some() {
            self.set_reservation(r);
            self.log.push(Op::UpdateReservation(r.clone()));
        }
        Ok(())
    }
    fn get_reservation(&mut self, org_id: &str, call_id: &str) -> Result<Option<ReservationRow>> {
        self.reservation(org_id, call_id)
    }
    through!(read count_pending_reservations(org_id: &str) -> i64);
    through!(read pending_reservations(org_id: &str) -> Vec<ReservationRow>);
    fn insert_cdr(&mut self, c: &CdrRow) -> Result<()> {
        self.log.push(Op::Cdr(c.clone()));
        Ok(())
    }
    fn reserved_call_ids(&mut self, org_id: &str, call_ids: &[&str]) -> Result<Vec<String>> {
        let mut found = Vec::new();
        let mut ask = Vec::new();
        for id in call_ids {
            match self.kept.reservations.get(&k2(org_id, id)) {
                Some(Some(_)) => found.push(id.to_string()),
                Some(None) => {}
                None => ask.push(*id),
            }
        }
        if !ask.is_empty() {
            found.extend(self.through_read()?.reserved_call_ids(org_id, &ask)?);
        }
        Ok(found)
    }
    through!(read get_cdr(org_id: &str, call_id: &str) -> Option<CdrRow>);
    through!(read list_cdrs(org_id: &str, from: Timestamp, to: Timestamp) -> Vec<CdrRow>);
    fn for_each_cdr(
        &mut self,
        org_id: &str,
        from: Timestamp,
        to: Timestamp,
        f: &mut dyn FnMut(&mut CdrRow) -> Result<()>,
    ) -> Result<()> {
        self.through_read()?.for_each_cdr(org_id, from, to, f)
    }
    through!(write insert_denial(d: &DenialRow) -> ());
    through!(read list_denials(org_id: &str) -> Vec<DenialRow>);

    through!(write insert_notice(n: &NoticeRow) -> ());
    through!(read list_notices(org_id: &str) -> Vec<NoticeRow>);

    through!(read due_lots(now: Timestamp, limit: usize) -> Vec<(String, String)>);
    through!(read lots_expiring_before(before: Timestamp, limit: usize) -> Vec<(String, String)>);
    through!(read due_reservations(now: Timestamp, limit: usize) -> Vec<(String, String)>);
    through!(read pending_orders(limit: usize) -> Vec<(String, String)>);

    through!(write insert_api_key(k: &ApiKeyRow) -> ());
    through!(read find_api_key(secret_hash: &str) -> Option<ApiKeyRow>);
    through!(read list_api_keys(org_id: &str) -> Vec<ApiKeyRow>);
    through!(write revoke_api_key(org_id: &str, key_id: &str, at: Timestamp) -> bool);
    through!(read get_idempotency(org_id: &str, key: &str) -> Option<IdempotencyRow>);
    through!(write put_idempotency(i: &IdempotencyRow) -> ());
    through!(write take_idempotency(i: &IdempotencyRow, now: Timestamp) -> bool);
    through!(write replace_claim(i: &IdempotencyRow, claim: &str) -> bool);
    through!(write delete_idempotency(org_id: &str, key: &str) -> ());
    through!(write delete_call_idempotency(org_id: &str, call_id: &str) -> usize);
    through!(write delete_expired_idempotency(now: Timestamp, limit: usize) -> usize);

    through!(read get_notice(org_id: &str, notice_id: &str) -> Option<NoticeRow>);
    through!(write set_notice_status(org_id: &str, notice_id: &str, status: &str) -> ());
    through!(write insert_webhook(w: &WebhookRow) -> ());
    through!(read get_webhook(org_id: &str, webhook_id: &str) -> Option<WebhookRow>);
    through!(read list_webhooks(org_id: &str) -> Vec<WebhookRow>);
    through!(write delete_webhook(org_id: &str, webhook_id: &str) -> bool);
    through!(write insert_delivery(d: &DeliveryRow) -> ());
    through!(write update_delivery(d: &DeliveryRow) -> ());
    through!(read get_delivery(org_id: &str, delivery_id: &str) -> Option<DeliveryRow>);
    through!(read list_deliveries(org_id: &str) -> Vec<DeliveryRow>);
    through!(read notice_deliveries(org_id: &str, notice_id: &str) -> Vec<DeliveryRow>);
    through!(read due_deliveries(now: Timestamp, channel: Option<&str>, limit: usize, per_org: usize) -> Vec<(String, String)>);
    through!(read count_failed_deliveries_all() -> i64);

    through!(read count_open_reservations_all() -> i64);
    through!(read count_pending_notices_all() -> i64);

    through!(write put_rate_deck(d: &RateDeckRow) -> ());
    through!(read list_rate_decks() -> Vec<RateDeckRow>);
}

/// A [`Store`] whose write transactions run through [`WriteBehind`]: what the
/// conformance suite runs on to show the wrapper answers as the database would.
pub struct WriteBehindStore(pub Box<dyn Store>);

impl Store for WriteBehindStore {
    fn write(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        self.0.write(&mut |tx| {
            let mut w = WriteBehind::new(tx);
            f(&mut w)?;
            w.finish()
        })
    }

    fn read(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        self.0.read(f)
    }

    fn read_report(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        self.0.read_report(f)
    }

    fn describe(&self) -> String {
        format!("write-behind over {}", self.0.describe())
    }
}

#[cfg(test)]
mod tests {
    //! The same random sequence of writes, reads, savepoints, releases and rollbacks,
    //! once straight on SQLite and once through [`WriteBehind`] on another SQLite
    //! database: every answer along the way and the committed rows must be the same.

    use super::*;
    use crate::sqlite::SqliteStore;

    fn at() -> Timestamp {
        "2026-03-01T10:00:00Z".parse().unwrap()
    }

    fn account(balance: i64) -> AccountRow {
        crate::conformance::account("o1", balance, 0)
    }

    fn reservation(call: u64, used: i64) -> ReservationRow {
        ReservationRow {
            org_id: "o1".into(),
            call_id: format!("c{call}"),
            call_type: "outbound".into(),
            user_id: None,
            from_number: "+14155550100".into(),
            to_number: "+442079460000".into(),
            state: if used > 0 { "settled".into() } else { "pending".into() },
            created_at: at(),
            updated_at: at(),
            expires_at: at(),
            granted_seconds: 300,
            used_seconds: used,
            plan_scope: None,
            plan_kind: None,
            plan_month: None,
            plan_minutes: 0,
            money_minor: 10,
            earmarks: String::new(),
            spend_month: 202603,
            rate_prefix: None,
            rate_name: None,
            rate_per_minute: None,
            connection_fee_minor: 0,
            increment_seconds: 60,
            domestic: false,
            dest_country: None,
            emergency: false,
        }
    }

    fn ledger(n: u64) -> LedgerRow {
        LedgerRow {
            seq: 0,
            org_id: "o1".into(),
            entry_id: format!("e{n}"),
            kind: "charge".into(),
            amount_minor: -(n as i64),
            balance_after_minor: 0,
            lot_id: None,
            call_id: None,
            order_id: None,
            at: at(),
            memo: String::new(),
        }
    }

    /// Everything the sequence can touch, as committed.
    fn dump(tx: &mut dyn Tx) -> Result<String> {
        let mut out = format!("{:?}\n{:?}\n", tx.get_account("o1")?, tx.open_lots("o1")?);
        for k in 0..3 {
            out += &format!("{:?}\n", tx.get_pool_usage("o1", 202603, &format!("S{k}"), "domestic")?);
            out += &format!("{:?}\n", tx.get_user_spend("o1", &format!("u{k}"), 202603)?);
        }
        for c in 0..6 {
            out += &format!("{:?}\n", tx.get_reservation("o1", &format!("c{c}"))?);
        }
        let ledger: Vec<String> = tx.list_ledger("o1", 0, 1000)?.into_iter().map(|l| l.entry_id).collect();
        let notices: Vec<String> = tx.list_notices("o1")?.into_iter().map(|n| n.notice_id).collect();
        let cdrs =
            tx.list_cdrs("o1", "2020-01-01T00:00:00Z".parse().unwrap(), "2030-01-01T00:00:00Z".parse().unwrap())?;
        out += &format!("{ledger:?}\n{notices:?}\n{}", cdrs.len());
        Ok(out)
    }

    /// One step on `tx`; its answer as text.
    fn step(tx: &mut dyn Tx, depth: &mut usize, op: u64, arg: u64) -> String {
        let answer = match op % 12 {
            0 => {
                *depth += 1;
                tx.savepoint().map(|_| String::new())
            }
            1 | 2 if *depth > 0 => {
                *depth -= 1;
                if op % 12 == 1 { tx.release_savepoint() } else { tx.rollback_savepoint() }.map(|_| String::new())
            }
            3 => tx.update_account(&account(arg as i64)).map(|_| String::new()),
            4 => {
                let mut p = PoolUsageRow::empty("o1", &format!("S{}", arg % 3), "domestic", 202603);
                p.used_minutes = arg as i64;
                tx.put_pool_usage(&p).map(|_| String::new())
            }
            5 => tx
                .put_user_spend(&UserSpendRow {
                    org_id: "o1".into(),
                    user_id: format!("u{}", arg % 3),
                    month: 202603,
                    spent_minor: arg as i64,
                    reserved_minor: 0,
                })
                .map(|_| String::new()),
            // A duplicate insert is an error on both (the engine would end the batch).
            6 => match tx.get_reservation("o1", &format!("c{}", arg % 6)) {
                Ok(None) => tx.insert_reservation(&reservation(arg % 6, 0)).map(|_| String::new()),
                other => other.map(|r| format!("{r:?}")),
            },
            7 => tx.update_reservation(&reservation(arg % 6, 1 + arg as i64)).map(|_| String::new()),
            8 => tx.append_ledger(&ledger(arg)).map(|_| String::new()),
            // Writes and reads that go through to the database.
            9 => tx
                .insert_notice(&NoticeRow {
                    seq: 0,
                    org_id: "o1".into(),
                    notice_id: format!("n{arg}"),
                    kind: "low_balance".into(),
                    created_at: at(),
                    subject: String::new(),
                    body: String::new(),
                    data: "{}".into(),
                    status: "pending".into(),
                })
                .map(|_| String::new()),
            10 => tx
                .list_ledger("o1", 0, 1000)
                .map(|l| format!("{:?}", l.iter().map(|e| &e.entry_id).collect::<Vec<_>>())),
            11 if arg.is_multiple_of(2) => {
                let ids: Vec<String> = (0..8).map(|i| format!("c{}", (arg / 2 + i) % 8)).collect();
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                tx.reserved_call_ids("o1", &ids).map(|mut found| {
                    found.sort();
                    format!("{found:?}")
                })
            }
            _ => dump(tx),
        };
        match answer {
            Ok(a) => a,
            Err(e) => format!("error {:?}", e.code),
        }
    }

    fn fresh() -> SqliteStore {
        let s = SqliteStore::open("sqlite::memory:").unwrap();
        s.write(&mut |tx| tx.insert_account(&account(1000))).unwrap();
        s
    }

    #[test]
    fn answers_and_commits_what_the_database_alone_does() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..100 {
            let (plain, buffered) = (fresh(), fresh());
            let ops: Vec<(u64, u64)> = (0..60).map(|_| (next(), next() % 50)).collect();
            let mut answers = (Vec::new(), Vec::new());
            plain
                .write(&mut |tx| {
                    answers.0.clear();
                    let mut depth = 0;
                    for (op, arg) in &ops {
                        answers.0.push(step(tx, &mut depth, *op, *arg));
                    }
                    while depth > 0 {
                        depth -= 1;
                        tx.release_savepoint()?;
                    }
                    Ok(())
                })
                .unwrap();
            buffered
                .write(&mut |tx| {
                    answers.1.clear();
                    let mut w = WriteBehind::new(tx);
                    let mut depth = 0;
                    for (op, arg) in &ops {
                        // Now and then learn which call ids are new, as an import does
                        // (only what the wrapper keeps changes, never an answer).
                        if (op >> 8).is_multiple_of(7) {
                            w.know_reservations("o1", &["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"])?;
                        }
                        answers.1.push(step(&mut w, &mut depth, *op, *arg));
                    }
                    while depth > 0 {
                        depth -= 1;
                        w.release_savepoint()?;
                    }
                    w.finish()
                })
                .unwrap();
            for (i, (a, b)) in answers.0.iter().zip(&answers.1).enumerate() {
                assert_eq!(a, b, "round {round}, step {i} ({:?})", ops[i]);
            }
            let mut committed = (String::new(), String::new());
            plain.read(&mut |tx| dump(tx).map(|d| committed.0 = d)).unwrap();
            buffered.read(&mut |tx| dump(tx).map(|d| committed.1 = d)).unwrap();
            if committed.0 != committed.1 {
                let diff: Vec<(&str, &str)> =
                    committed.0.lines().zip(committed.1.lines()).filter(|(a, b)| a != b).collect();
                panic!("round {round}: committed rows differ: {diff:#?}\nops {ops:?}\nanswers {:?}", answers.1);
            }
        }
    }
}
