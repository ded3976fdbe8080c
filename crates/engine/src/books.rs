//! An organization's money inside one transaction: the account, its open lots, the
//! ledger, orders and the auto-recharge latch. Every change of money goes through
//! [`Books`], which writes the ledger entry next to the change and keeps
//! `balance = sum(lot remaining)` and `reserved = sum(lot reserved)`.

use crate::notices::{self, BALANCE_EXHAUSTED, FUNDS_EXPIRING, LOW_BALANCE, RECHARGE_FAILED, RECHARGE_SUCCEEDED};
use crate::payments::PaymentFailure;
use crate::views::OrderView;
use crate::{internal, new_id, org, Effects, Engine, Outcome};
use commcredits_core::funds::{self, Lot};
use commcredits_core::money::Currency;
use commcredits_core::recharge::AutoRecharge;
use commcredits_core::{err, ErrorCode, Result, Timestamp};
use commcredits_store::{AccountRow, LedgerRow, LotRow, OrderRow, OrgRow, Tx};
use serde_json::json;
use std::sync::Arc;

/// Orders the order worker's queue holds at most.
pub const ORDER_QUEUE_BOUND: usize = 1024;

/// An order waiting for the order worker.
pub(crate) struct QueuedOrder {
    org_id: String,
    order_id: String,
    now: Timestamp,
}

pub(crate) struct Books {
    pub org: OrgRow,
    pub account: AccountRow,
    pub currency: Currency,
    lots: Vec<Lot>,
    dirty: Vec<String>,
    /// Lots written off when the books were loaded.
    pub expired_on_load: usize,
    /// Set when a charge or a write-off took the balance to zero.
    drained: bool,
}

pub(crate) fn encode_earmarks(e: &[(String, i64)]) -> String {
    e.iter().map(|(l, a)| format!("{l}:{a}")).collect::<Vec<_>>().join(";")
}

pub(crate) fn decode_earmarks(text: &str) -> Result<Vec<(String, i64)>> {
    text.split(';')
        .filter(|s| !s.is_empty())
        .map(|p| {
            let (l, a) = p.rsplit_once(':').ok_or_else(|| internal(format!("bad earmark '{p}'")))?;
            Ok((l.to_string(), a.parse().map_err(|_| internal(format!("bad earmark '{p}'")))?))
        })
        .collect()
}

fn lot_from_row(r: LotRow) -> Lot {
    Lot {
        id: r.lot_id,
        amount_minor: r.amount_minor,
        remaining_minor: r.remaining_minor,
        reserved_minor: r.reserved_minor,
        purchased_at: r.purchased_at,
        expires_at: r.expires_at,
        expired: r.expired,
        expiring_notified: r.expiring_notified,
    }
}

impl Books {
    /// Locks the organization, loads its money, and writes off lots due at `now`.
    pub fn load(tx: &mut dyn Tx, org_id: &str, now: Timestamp, fx: &mut Effects) -> Result<Books> {
        tx.lock_org(org_id)?;
        let org = org(tx, org_id)?;
        let account =
            tx.get_account(org_id)?.ok_or_else(|| internal(format!("organization {org_id} has no account")))?;
        let currency = Currency::parse(&account.currency)?;
        let lots = tx.open_lots(org_id)?.into_iter().map(lot_from_row).collect();
        let mut b = Books { org, account, currency, lots, dirty: Vec::new(), expired_on_load: 0, drained: false };
        b.expired_on_load = b.expire_due(tx, now)?;
        if b.expired_on_load > 0 {
            // Persist the write-off and its consequences (notices, a recharge) at once,
            // whatever the caller does next.
            b.after_change(tx, now, fx, false)?;
            b.save(tx)?;
        }
        Ok(b)
    }

    pub fn available(&self) -> i64 {
        self.account.balance_minor - self.account.reserved_minor
    }

    /// Money new reservations may take at `now`.
    pub fn spendable(&self, now: Timestamp) -> i64 {
        self.lots.iter().map(|l| l.spendable(now)).sum()
    }

    fn touch(&mut self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            if !self.dirty.contains(&id) {
                self.dirty.push(id);
            }
        }
    }

    fn ledger(
        &self,
        tx: &mut dyn Tx,
        kind: &str,
        amount: i64,
        lot: Option<&str>,
        call: Option<&str>,
        order: Option<&str>,
        now: Timestamp,
        memo: String,
    ) -> Result<()> {
        tx.append_ledger(&LedgerRow {
            seq: 0,
            org_id: self.org.org_id.clone(),
            entry_id: new_id(),
            kind: kind.into(),
            amount_minor: amount,
            balance_after_minor: self.account.balance_minor,
            lot_id: lot.map(str::to_string),
            call_id: call.map(str::to_string),
            order_id: order.map(str::to_string),
            at: now,
            memo,
        })
        .map(drop)
    }

    /// Writes off what remains of every lot whose expiry has come.
    pub fn expire_due(&mut self, tx: &mut dyn Tx, now: Timestamp) -> Result<usize> {
        let mut n = 0;
        for i in 0..self.lots.len() {
            if let Some(off) = funds::expire(&mut self.lots[i], now) {
                n += 1;
                let id = self.lots[i].id.clone();
                self.touch([id.clone()]);
                if off > 0 {
                    self.account.balance_minor -= off;
                    self.drained |= self.account.balance_minor == 0;
                    let memo = format!("lot purchased {} expired", self.lots[i].purchased_at);
                    self.ledger(tx, "expiry", -off, Some(&id), None, None, now, memo)?;
                }
            }
        }
        Ok(n)
    }

    /// Earmarks money for a call; the caller has checked it is spendable.
    pub fn reserve(&mut self, amount: i64, now: Timestamp) -> Result<String> {
        if amount == 0 {
            return Ok(String::new());
        }
        let e = funds::reserve(&mut self.lots, amount, now)?;
        self.account.reserved_minor += amount;
        self.touch(e.iter().map(|(l, _)| l.clone()));
        Ok(encode_earmarks(&e))
    }

    /// Earmarks `amount` more for a reservation holding `earmarks`, on live lots; what it
    /// held stays where it is, so money on a lot that expired since keeps paying for the
    /// call. The caller has checked that `amount` is spendable.
    pub fn reserve_more(&mut self, earmarks: &str, amount: i64, now: Timestamp) -> Result<String> {
        if amount == 0 {
            return Ok(earmarks.to_string());
        }
        let e = funds::reserve_more(&mut self.lots, &decode_earmarks(earmarks)?, amount, now)?;
        self.account.reserved_minor = self
            .account
            .reserved_minor
            .checked_add(amount)
            .ok_or_else(|| err!(ErrorCode::AmountOverflow, "reserved money overflows"))?;
        self.touch(e.iter().map(|(l, _)| l.clone()));
        Ok(encode_earmarks(&e))
    }

    /// Gives back up to `amount` of a reservation's live money (the latest-expiring lot
    /// first) to the available balance; earmarks on expired lots stay with the call.
    /// Returns the earmarks left and the amount given back.
    pub fn release(&mut self, earmarks: &str, amount: i64, now: Timestamp) -> Result<(String, i64)> {
        let before = decode_earmarks(earmarks)?;
        let (e, released) = funds::release(&mut self.lots, &before, amount, now)?;
        self.touch(before.into_iter().map(|(l, _)| l));
        self.account.reserved_minor -= released;
        Ok((encode_earmarks(&e), released))
    }

    /// Charges `charge` against a reservation's earmarks and releases the rest.
    pub fn settle(
        &mut self,
        tx: &mut dyn Tx,
        earmarks: &str,
        charge: i64,
        call_id: &str,
        now: Timestamp,
        memo: String,
    ) -> Result<()> {
        let e = decode_earmarks(earmarks)?;
        let held: i64 = e.iter().map(|(_, a)| a).sum();
        // Earmarked lots are open (remaining >= reserved > 0), so they were loaded.
        let s = funds::settle(&mut self.lots, &e, charge)?;
        self.touch(e.iter().map(|(l, _)| l.clone()));
        self.account.reserved_minor -= held;
        if charge > 0 {
            self.account.balance_minor -= charge;
            self.drained |= self.account.balance_minor == 0;
            self.ledger(
                tx,
                "charge",
                -charge,
                s.charged.first().map(|(l, _)| l.as_str()),
                Some(call_id),
                None,
                now,
                memo,
            )?;
        }
        for (lot, off) in s.written_off {
            self.account.balance_minor -= off;
            self.drained |= self.account.balance_minor == 0;
            self.ledger(
                tx,
                "expiry",
                -off,
                Some(&lot),
                Some(call_id),
                None,
                now,
                "released after its lot expired".into(),
            )?;
        }
        Ok(())
    }

    /// Adds a purchased lot and its ledger entry.
    pub fn add_lot(
        &mut self,
        tx: &mut dyn Tx,
        amount: i64,
        order_id: &str,
        purchased_at: Timestamp,
        now: Timestamp,
        memo: String,
    ) -> Result<String> {
        let lot = Lot::new(new_id(), amount, purchased_at)?;
        let id = lot.id.clone();
        tx.insert_lot(&LotRow {
            org_id: self.org.org_id.clone(),
            lot_id: id.clone(),
            order_id: Some(order_id.into()),
            amount_minor: lot.amount_minor,
            remaining_minor: lot.remaining_minor,
            reserved_minor: 0,
            purchased_at: lot.purchased_at,
            expires_at: lot.expires_at,
            expired: false,
            expiring_notified: false,
        })?;
        self.lots.push(lot);
        self.account.balance_minor = self
            .account
            .balance_minor
            .checked_add(amount)
            .ok_or_else(|| err!(ErrorCode::AmountOverflow, "balance overflows"))?;
        self.account.exhausted_notified = false;
        self.ledger(tx, "purchase", amount, Some(&id), None, Some(order_id), now, memo)?;
        // A purchase recorded with a past date may already be due.
        self.expire_due(tx, now)?;
        Ok(id)
    }

    fn auto_recharge(&self) -> AutoRecharge {
        AutoRecharge {
            enabled: self.account.ar_enabled,
            amount_minor: self.account.ar_amount_minor,
            threshold_minor: self.account.ar_threshold_minor,
            payment_method_id: self.account.ar_payment_method_id.clone(),
            armed: self.account.ar_armed,
        }
    }

    /// After any change of money: the auto-recharge decision, low-balance and
    /// exhausted notices. `exhausted` says a call was refused or cut for lack of funds.
    pub fn after_change(&mut self, tx: &mut dyn Tx, now: Timestamp, fx: &mut Effects, exhausted: bool) -> Result<()> {
        self.after_change_funded(tx, now, fx, exhausted, false)
    }

    /// As [`Books::after_change`]; `funds_added` tells that a purchase or recharge landed.
    pub fn after_change_funded(
        &mut self,
        tx: &mut dyn Tx,
        now: Timestamp,
        fx: &mut Effects,
        exhausted: bool,
        funds_added: bool,
    ) -> Result<()> {
        let available = self.available();
        let cur = self.currency;
        let org_id = self.org.org_id.clone();
        if let Some(level) = self.org.low_balance_minor {
            if available < level && !self.account.low_balance_notified {
                self.account.low_balance_notified = true;
                notices::write(
                    tx,
                    &org_id,
                    LOW_BALANCE,
                    now,
                    format!("Communications Credits balance is low: {} {cur}", cur.format_minor(available)),
                    format!(
                        "The available balance is {} {cur}, below the warning level of {} {cur}.",
                        cur.format_minor(available),
                        cur.format_minor(level)
                    ),
                    json!({"available": available, "level": level, "currency": cur.code()}),
                )?;
            } else if available >= level {
                self.account.low_balance_notified = false;
            }
        }
        if (exhausted || self.drained) && !self.account.exhausted_notified {
            self.account.exhausted_notified = true;
            notices::write(
                tx,
                &org_id,
                BALANCE_EXHAUSTED,
                now,
                "Communications Credits balance exhausted".into(),
                format!(
                    "The Communications Credits balance has run out (available {} {cur}). Calls paid from credits are refused until funds are added.",
                    cur.format_minor(available)
                ),
                json!({"available": available, "balance": self.account.balance_minor, "currency": cur.code()}),
            )?;
        }
        let mut ar = self.auto_recharge();
        let place = ar.observe(available, funds_added);
        if place && recharge_held_back(tx, &org_id, now)? {
            // Re-armed (or still armed) while a recharge is in flight or within the
            // backoff after a failed one: the latch stays armed and nothing is placed;
            // the first change of money after the window places the order.
            ar.armed = true;
        } else if place {
            let pm = ar.payment_method_id.clone().unwrap_or_default();
            let order = OrderRow {
                org_id: org_id.clone(),
                order_id: new_id(),
                kind: "auto_recharge".into(),
                amount_minor: ar.amount_minor,
                currency: cur.code().into(),
                payment_method_id: pm,
                po_number: None,
                status: "pending".into(),
                failure_reason: None,
                lot_id: None,
                created_at: now,
                completed_at: None,
            };
            tx.insert_order(&order)?;
            fx.recharges.push((org_id.clone(), order.order_id));
        }
        self.account.ar_armed = ar.armed;
        Ok(())
    }

    pub fn save(&mut self, tx: &mut dyn Tx) -> Result<()> {
        for id in std::mem::take(&mut self.dirty) {
            let lot = self.lots.iter().find(|l| l.id == id).ok_or_else(|| internal("dirty lot vanished"))?;
            tx.update_lot(&LotRow {
                org_id: self.org.org_id.clone(),
                lot_id: lot.id.clone(),
                order_id: None,
                amount_minor: lot.amount_minor,
                remaining_minor: lot.remaining_minor,
                reserved_minor: lot.reserved_minor,
                purchased_at: lot.purchased_at,
                expires_at: lot.expires_at,
                expired: lot.expired,
                expiring_notified: lot.expiring_notified,
            })?;
        }
        // Kept on in release builds: these are the invariants money depends on.
        let sum_remaining: i64 = self.lots.iter().map(|l| l.remaining_minor).sum();
        let sum_reserved: i64 = self.lots.iter().map(|l| l.reserved_minor).sum();
        if sum_remaining != self.account.balance_minor
            || sum_reserved != self.account.reserved_minor
            || self.available() < 0
        {
            return Err(internal(format!(
                "books out of balance for {}: balance {} vs lots {}, reserved {} vs lots {}",
                self.org.org_id, self.account.balance_minor, sum_remaining, self.account.reserved_minor, sum_reserved
            )));
        }
        tx.update_account(&self.account)
    }
}

/// After a failed automatic recharge, no other is placed for this long: re-arming
/// auto-recharge with a card that keeps being declined makes one failed order (and
/// one notice) per window, not one per request.
pub const RECHARGE_FAILURE_BACKOFF: jiff::SignedDuration = jiff::SignedDuration::from_mins(15);

/// Whether an automatic recharge of `org_id` must wait: one is still pending (the
/// gateway has not answered), or one failed less than [`RECHARGE_FAILURE_BACKOFF`] ago.
fn recharge_held_back(tx: &mut dyn Tx, org_id: &str, now: Timestamp) -> Result<bool> {
    let since = now.checked_sub(RECHARGE_FAILURE_BACKOFF).map_err(|e| internal(e.to_string()))?;
    Ok(tx.list_orders(org_id)?.iter().any(|o| {
        o.kind == "auto_recharge"
            && (o.status == "pending" || (o.status == "failed" && o.completed_at.is_some_and(|at| at > since)))
    }))
}

/// The error a failed order answers with: its failure reason as a stable code.
pub fn failed_order_error(order: &OrderRow) -> Option<commcredits_core::Error> {
    if order.status != "failed" {
        return None;
    }
    let code = match order.failure_reason.as_deref() {
        Some("expired_card") => ErrorCode::ExpiredCard,
        Some("unknown_payment_method") => ErrorCode::PaymentMethodNotFound,
        _ => ErrorCode::PaymentDeclined,
    };
    Some(err!(
        code,
        "payment failed ({}); order {} is recorded as failed",
        order.failure_reason.as_deref().unwrap_or("declined"),
        order.order_id
    ))
}

fn min_purchase_minor(engine: &Engine, cur: Currency) -> i64 {
    engine.config.min_purchase_major * 10i64.pow(cur.exponent())
}

fn check_minimum(engine: &Engine, cur: Currency, amount: i64, what: &str) -> Result<()> {
    let max = engine.config.max_purchase_major.saturating_mul(10i64.pow(cur.exponent()));
    if amount > max {
        return Err(err!(
            ErrorCode::InvalidAmount,
            "{what} {} {cur} is above the largest single purchase of {} {cur}",
            cur.format_minor(amount),
            cur.format_minor(max)
        ));
    }
    let min = min_purchase_minor(engine, cur);
    if amount < min {
        return Err(err!(
            ErrorCode::BelowMinimumPurchase,
            "{what} {} {cur} is below the minimum purchase of {} {cur}",
            cur.format_minor(amount),
            cur.format_minor(min)
        ));
    }
    Ok(())
}

pub(crate) fn place_order(
    engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    amount: &str,
    pm_id: &str,
    po: Option<&str>,
    purchased_at: Option<Timestamp>,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<Outcome> {
    let o = org(tx, org_id)?;
    let cur = Currency::parse(&o.currency)?;
    let amount_minor = cur.parse_positive_major(amount)?;
    check_minimum(engine, cur, amount_minor, "the amount")?;
    let pm = tx
        .get_payment_method(org_id, pm_id)?
        .ok_or_else(|| err!(ErrorCode::PaymentMethodNotFound, "no payment method '{pm_id}' in this organization"))?;
    let po = po.map(str::trim).filter(|p| !p.is_empty());
    if po.is_some() && pm.kind != "enterprise_agreement" {
        return Err(err!(
            ErrorCode::InvalidInput,
            "a purchase order number applies to Enterprise Agreement orders only"
        ));
    }
    if let Some(at) = purchased_at {
        if at > now {
            return Err(err!(ErrorCode::InvalidTime, "--at {at} is in the future"));
        }
    }
    let order = OrderRow {
        org_id: org_id.into(),
        order_id: new_id(),
        kind: "purchase".into(),
        amount_minor,
        currency: cur.code().into(),
        payment_method_id: pm.pm_id.clone(),
        po_number: po.map(str::to_string),
        status: "pending".into(),
        failure_reason: None,
        lot_id: None,
        created_at: purchased_at.unwrap_or(now),
        completed_at: None,
    };
    tx.insert_order(&order)?;
    fx.orders.push((org_id.into(), order.order_id.clone()));
    Ok(Outcome::Order(OrderView::from(&order)))
}

pub(crate) fn complete_order(
    _engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    order_id: &str,
    result: &std::result::Result<String, PaymentFailure>,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<Outcome> {
    let mut b = Books::load(tx, org_id, now, fx)?;
    let mut order =
        tx.get_order(org_id, order_id)?.ok_or_else(|| err!(ErrorCode::NotFound, "no order '{order_id}'"))?;
    if order.status != "pending" {
        // Completed already (a retry after a crash): change nothing.
        return Ok(Outcome::Order(OrderView::from(&order)));
    }
    let cur = b.currency;
    order.completed_at = Some(now);
    match result {
        Ok(receipt) => {
            let memo = format!("{} order {} ({receipt})", order.kind, order.order_id);
            let lot = b.add_lot(tx, order.amount_minor, &order.order_id, order.created_at, now, memo)?;
            order.status = "succeeded".into();
            order.lot_id = Some(lot);
            if order.kind == "auto_recharge" {
                notices::write(
                    tx,
                    org_id,
                    RECHARGE_SUCCEEDED,
                    now,
                    format!("Communications Credits recharged: {} {cur}", cur.format_minor(order.amount_minor)),
                    format!(
                        "An automatic recharge of {} {cur} succeeded. The new balance is {} {cur}.",
                        cur.format_minor(order.amount_minor),
                        cur.format_minor(b.account.balance_minor)
                    ),
                    json!({"order_id": order.order_id, "amount": order.amount_minor, "balance": b.account.balance_minor, "currency": cur.code()}),
                )?;
            }
        }
        Err(f) => {
            order.status = "failed".into();
            order.failure_reason = Some(f.code.as_str().into());
            if order.kind == "auto_recharge" {
                notices::write(
                    tx,
                    org_id,
                    RECHARGE_FAILED,
                    now,
                    format!("Communications Credits recharge failed: {}", f.code),
                    format!(
                        "An automatic recharge of {} {cur} failed: {} ({}). The balance stays at {} {cur}; update the payment method to resume automatic recharges.",
                        cur.format_minor(order.amount_minor),
                        f.message,
                        f.code,
                        cur.format_minor(b.account.balance_minor)
                    ),
                    json!({"order_id": order.order_id, "amount": order.amount_minor, "reason": f.code.as_str(), "message": f.message, "balance": b.account.balance_minor, "currency": cur.code()}),
                )?;
            }
        }
    }
    tx.update_order(&order)?;
    let funded = order.status == "succeeded";
    b.after_change_funded(tx, now, fx, false, funded)?;
    b.save(tx)?;
    Ok(Outcome::Order(OrderView::from(&order)))
}

pub(crate) fn set_auto_recharge(
    engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    enabled: bool,
    amount: Option<&str>,
    threshold: Option<&str>,
    pm_id: Option<&str>,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<Outcome> {
    let mut b = Books::load(tx, org_id, now, fx)?;
    let cur = b.currency;
    if let Some(a) = amount {
        b.account.ar_amount_minor = cur.parse_positive_major(a)?;
    }
    if let Some(t) = threshold {
        let v = cur.parse_major(t)?;
        if v < 0 {
            return Err(err!(ErrorCode::InvalidAmount, "the threshold cannot be negative"));
        }
        b.account.ar_threshold_minor = v;
    }
    if let Some(pm) = pm_id {
        if tx.get_payment_method(org_id, pm)?.is_none() {
            return Err(err!(ErrorCode::PaymentMethodNotFound, "no payment method '{pm}' in this organization"));
        }
        b.account.ar_payment_method_id = Some(pm.to_string());
    }
    if enabled {
        check_minimum(engine, cur, b.account.ar_amount_minor, "the recharge amount")?;
        if b.account.ar_payment_method_id.is_none() {
            return Err(err!(ErrorCode::PaymentMethodNotFound, "auto-recharge needs a payment method"));
        }
    }
    b.account.ar_enabled = enabled;
    // New settings are a new start: the next fall below the threshold recharges.
    b.account.ar_armed = true;
    b.after_change(tx, now, fx, false)?;
    b.save(tx)?;
    let lots = tx.list_lots(org_id)?;
    Ok(Outcome::Credits(crate::views::CreditsView::new(&b.account, &lots)))
}

pub(crate) fn expire_lot(
    _engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    _lot_id: &str,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<Outcome> {
    // Loading the books writes off every due lot of the organization.
    let mut b = Books::load(tx, org_id, now, fx)?;
    let n = b.expired_on_load;
    b.after_change(tx, now, fx, false)?;
    b.save(tx)?;
    Ok(Outcome::Count(n))
}

pub(crate) fn notify_expiring(
    engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    lot_id: &str,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<Outcome> {
    let mut b = Books::load(tx, org_id, now, fx)?;
    let horizon = now
        .checked_add(jiff::SignedDuration::from_hours(24 * engine.config.expiring_notice_days))
        .map_err(|e| internal(e.to_string()))?;
    let cur = b.currency;
    let mut n = 0;
    if let Some(i) = b.lots.iter().position(|l| l.id == lot_id) {
        let lot = &b.lots[i];
        if !lot.expired && !lot.expiring_notified && lot.remaining_minor > 0 && lot.expires_at <= horizon {
            let (remaining, expires_at) = (lot.remaining_minor, lot.expires_at);
            notices::write(
                tx,
                org_id,
                FUNDS_EXPIRING,
                now,
                format!(
                    "{} {cur} of Communications Credits expire on {}",
                    cur.format_minor(remaining),
                    expires_at.strftime("%Y-%m-%d")
                ),
                format!(
                    "Funds of {} {cur} purchased on {} expire on {} UTC. Unused funds are written off at expiry.",
                    cur.format_minor(remaining),
                    lot.purchased_at.strftime("%Y-%m-%d"),
                    expires_at.strftime("%Y-%m-%d %H:%M")
                ),
                json!({"lot_id": lot_id, "remaining": remaining, "expires_at": expires_at.to_string(), "currency": cur.code()}),
            )?;
            b.lots[i].expiring_notified = true;
            b.touch([lot_id.to_string()]);
            n = 1;
        }
    }
    b.save(tx)?;
    Ok(Outcome::Count(n))
}

impl Engine {
    /// Sends a pending order to the gateway (outside any transaction) and records the
    /// result. Safe to repeat: a completed order is left as it is. The gateway gets
    /// `config.gateway_timeout`; an order it has not answered by then stays pending
    /// (the jobs charge it again, and the gateway is idempotent on the order id).
    pub fn charge_order(&self, org_id: &str, order_id: &str, now: Timestamp) -> Result<OrderView> {
        let (order, pm) = self.read(|tx| {
            let o =
                tx.get_order(org_id, order_id)?.ok_or_else(|| err!(ErrorCode::NotFound, "no order '{order_id}'"))?;
            let pm = tx.get_payment_method(org_id, &o.payment_method_id)?;
            Ok((o, pm))
        })?;
        if order.status != "pending" {
            return Ok(OrderView::from(&order));
        }
        let result = match pm {
            Some(pm) => {
                match crate::payments::charge_with_timeout(&self.gateway, &order, pm, now, self.config.gateway_timeout)
                {
                    Some(r) => r,
                    None => {
                        tracing::warn!(org = %org_id, order = %order_id, "the payment gateway did not answer in time; the order stays pending");
                        return Ok(OrderView::from(&order));
                    }
                }
            }
            None => Err(PaymentFailure {
                code: ErrorCode::PaymentMethodNotFound,
                message: "the payment method no longer exists".into(),
            }),
        };
        match self
            .apply_one(now, crate::Command::CompleteOrder { org: org_id.into(), order_id: order_id.into(), result })?
        {
            Outcome::Order(v) => Ok(v),
            _ => Err(internal("unexpected outcome")),
        }
    }

    /// Starts the order worker: automatic recharges placed from now on are charged on
    /// its thread, not on the thread that applied the batch (the call writer, for
    /// call control). Its queue is bounded; an order that finds it full stays pending
    /// for the jobs. The worker ends with the engine.
    pub fn start_order_worker(self: &Arc<Self>) {
        let (tx, rx) = std::sync::mpsc::sync_channel::<QueuedOrder>(ORDER_QUEUE_BOUND);
        if self.order_queue.set(tx).is_err() {
            return;
        }
        let engine = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("order-worker".into()).spawn(move || {
            while let Ok(q) = rx.recv() {
                let Some(e) = engine.upgrade() else { return };
                if let Err(err) = e.charge_order(&q.org_id, &q.order_id, q.now) {
                    tracing::error!(org = %q.org_id, order = %q.order_id, "charging an order failed: {err}");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the order worker ({e}); recharges wait for the jobs");
        }
    }

    /// Charges an automatic recharge: on the order worker when it runs, else at once.
    pub(crate) fn charge_soon(&self, org_id: String, order_id: String, now: Timestamp) {
        match self.order_queue.get() {
            Some(queue) => {
                if let Err(e) = queue.try_send(QueuedOrder { org_id, order_id, now }) {
                    let q = match e {
                        std::sync::mpsc::TrySendError::Full(q) | std::sync::mpsc::TrySendError::Disconnected(q) => q,
                    };
                    tracing::warn!(org = %q.org_id, order = %q.order_id, "the order queue is full; the jobs charge the order");
                }
            }
            None => {
                let _ = self.charge_order(&org_id, &order_id, now);
            }
        }
    }

    /// Places a manual purchase and charges it at once. A refused payment is recorded
    /// as a failed order and returned as an error with the gateway's code.
    pub fn purchase(
        &self,
        org_id: &str,
        amount: &str,
        pm_id: &str,
        po: Option<&str>,
        at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<OrderView> {
        let placed = self.apply_one(
            now,
            crate::Command::PlaceOrder {
                org: org_id.into(),
                amount: amount.into(),
                payment_method_id: pm_id.into(),
                po_number: po.map(str::to_string),
                purchased_at: at,
            },
        )?;
        let Outcome::Order(placed) = placed else {
            return Err(internal("unexpected outcome"));
        };
        // `apply` already sent it to the gateway; read the result.
        let order = self.read(|tx| tx.get_order(org_id, &placed.id))?.ok_or_else(|| internal("order vanished"))?;
        if let Some(e) = failed_order_error(&order) {
            return Err(e);
        }
        Ok(OrderView::from(&order))
    }
}
