//! Background jobs, each bounded (a batch size and a number of rounds) and each
//! runnable at once with `commcredits jobs run`.

use crate::{Command, Engine, Outcome};
use commcredits_core::catalog::{PoolKind, PoolScope, Sku};
use commcredits_core::phone::Country;
use commcredits_core::pools::{Month, PoolKey};
use commcredits_core::{Result, Timestamp};
use commcredits_store::{PoolUsageRow, Tx};
use serde::Serialize;
use std::collections::BTreeSet;

const JOB_BATCH: usize = 500;
const MAX_ROUNDS: usize = 1_000;

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct JobReport {
    pub lots_expired: usize,
    pub reservations_expired: usize,
    pub expiring_notices: usize,
    pub pools_opened: usize,
    pub orders_charged: usize,
    /// Idempotency records deleted because they had expired.
    pub idempotency_expired: usize,
}

fn count(results: Vec<Result<Outcome>>) -> usize {
    results.into_iter().map(|r| if let Ok(Outcome::Count(n)) = r { n } else { 0 }).sum()
}

/// The pools an organization has this month: each (scope, kind) with a size.
pub(crate) fn pool_keys(engine: &Engine, tx: &mut dyn Tx, org_id: &str) -> Result<BTreeSet<PoolKey>> {
    let mut keys = BTreeSet::new();
    for u in tx.list_users(org_id)? {
        let held: Vec<Sku> = tx.user_licenses(org_id, &u.user_id)?.iter().filter_map(|s| Sku::parse(s).ok()).collect();
        let eff = engine.catalog().effective(&held);
        let Ok(country) = Country::parse(&u.usage_location) else {
            continue;
        };
        for kind in PoolKind::ALL {
            let scope = if kind == PoolKind::Conferencing { PoolScope::Org } else { PoolScope::Country(country) };
            let feeds = eff.iter().any(|s| engine.catalog().sku(*s).pools.contains(&kind));
            if feeds && engine.catalog().allowance(scope, kind) > 0 {
                keys.insert(PoolKey { scope, kind });
            }
        }
    }
    Ok(keys)
}

/// Opens this month's pools (the monthly reset): usage starts at zero in a new month.
pub(crate) fn open_pools(engine: &Engine, tx: &mut dyn Tx, org_id: &str, now: Timestamp) -> Result<Outcome> {
    let month = Month::of(now);
    let mut created = 0;
    for key in pool_keys(engine, tx, org_id)? {
        if tx.get_pool_usage(org_id, month.0, key.scope.as_str(), key.kind.as_str())?.is_none() {
            tx.put_pool_usage(&PoolUsageRow::empty(org_id, key.scope.as_str(), key.kind.as_str(), month.0))?;
            created += 1;
        }
    }
    Ok(Outcome::Count(created))
}

impl Engine {
    /// Applies one command per item a bounded scan finds, round after round, until the
    /// scan finds nothing or a round changes nothing; returns what the commands counted.
    fn drain(
        &self,
        now: Timestamp,
        mut scan: impl FnMut(&mut dyn Tx) -> Result<Vec<(String, String)>>,
        command: impl Fn(String, String) -> Command,
    ) -> Result<usize> {
        let mut total = 0;
        for _ in 0..MAX_ROUNDS {
            let due = self.read(&mut scan)?;
            if due.is_empty() {
                break;
            }
            let n = count(self.apply(now, due.into_iter().map(|(org, id)| command(org, id)).collect())?);
            total += n;
            if n == 0 {
                break;
            }
        }
        Ok(total)
    }

    /// Runs every background job that is due at `now`.
    pub fn run_jobs(&self, now: Timestamp) -> Result<JobReport> {
        // Timeouts first: settling releases earmarks on lots that may expire next.
        let reservations_expired = self.drain(
            now,
            |tx| tx.due_reservations(now, JOB_BATCH),
            |org, call_id| Command::TimeoutReservation { org, call_id },
        )?;
        let lots_expired =
            self.drain(now, |tx| tx.due_lots(now, JOB_BATCH), |org, lot_id| Command::ExpireLot { org, lot_id })?;
        let horizon = now + jiff::SignedDuration::from_hours(24 * self.config.expiring_notice_days);
        let expiring_notices = self.drain(
            now,
            |tx| tx.lots_expiring_before(horizon, JOB_BATCH),
            |org, lot_id| Command::NotifyExpiring { org, lot_id },
        )?;
        let mut pools_opened = 0;
        let orgs = self.read(|tx| tx.list_orgs())?;
        for chunk in orgs.chunks(JOB_BATCH) {
            let cmds = chunk.iter().map(|o| Command::OpenPools { org: o.org_id.clone() }).collect();
            pools_opened += count(self.apply(now, cmds)?);
        }
        // Orders left pending by a crash between placing and charging them.
        let pending = self.read(|tx| tx.pending_orders(JOB_BATCH))?;
        for (org, order) in &pending {
            self.charge_order(org, order, now)?;
        }
        // Expired idempotency records, a bounded batch per transaction so that call
        // control never waits long behind the sweep.
        let mut idempotency_expired = 0;
        for _ in 0..MAX_ROUNDS {
            let n = count(self.apply(now, vec![Command::SweepIdempotency { limit: JOB_BATCH }])?);
            idempotency_expired += n;
            if n < JOB_BATCH {
                break;
            }
        }
        Ok(JobReport {
            idempotency_expired,
            lots_expired,
            reservations_expired,
            expiring_notices,
            pools_opened,
            orders_charged: pending.len(),
        })
    }
}
