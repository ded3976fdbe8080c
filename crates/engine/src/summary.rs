//! Summaries of usage and credits spend (by day, user, destination country and call
//! type), dial-out usage by meeting organizer, the blocked users report and the funding
//! recommendation. Reads only. CDRs are scanned as a stream (`for_each_cdr`), so memory
//! holds the aggregates, never the calls. Money is integer minor units of the
//! organization's billing currency; no floating point anywhere.

use crate::views::{iso, AutoRechargeView};
use crate::{internal, org, Engine};
use commcredits_core::money::Currency;
use commcredits_core::phone::Country;
use commcredits_core::{err, ErrorCode, Result, Timestamp};
use commcredits_store::{CdrRow, OrgRow, UserRow};
use jiff::SignedDuration;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A recommendation from spend needs at least this many days since the first call.
pub const MIN_HISTORY_DAYS: i64 = 7;
/// The recommendation looks back at least this many days when there is history...
pub const MIN_LOOKBACK_DAYS: i64 = 30;
/// ...and at most this many.
pub const MAX_LOOKBACK_DAYS: i64 = 90;
/// Days between the balance crossing the threshold and the recharge being spendable
/// that the threshold must cover.
pub const LEAD_TIME_DAYS: i64 = 3;
/// Days of average spend a recommended recharge pays for.
pub const RECHARGE_COVER_DAYS: i64 = 14;

const DAY_SECONDS: i64 = 86_400;
const DAY_MICROS: i64 = DAY_SECONDS * 1_000_000;

/// Calls and what paid for them, over a group of CDRs.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Usage {
    /// Calls (CDRs), emergency and plan-paid calls included.
    pub calls: i64,
    /// Sum of the calls' durations.
    pub seconds: i64,
    /// Sum of the calls' durations in minutes, each call rounded up to a whole minute.
    pub minutes: i64,
    /// Minutes paid from calling plan and conferencing minute pools.
    pub plan_minutes: i64,
    /// Paid from Communications Credits (the CDRs' `Charge`), minor units of `currency`.
    pub spend: i64,
}

impl Usage {
    fn add(&mut self, c: &CdrRow) {
        self.calls += 1;
        self.seconds += c.duration_seconds;
        self.minutes += ceil_div(c.duration_seconds.max(0), 60);
        self.plan_minutes += c.plan_minutes;
        self.spend += c.charge_minor;
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DayUsage {
    /// UTC date `YYYY-MM-DD` the calls started on.
    pub day: String,
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UserUsage {
    /// Null for calls without a user: toll-free inbound calls.
    pub user_id: Option<String>,
    pub upn: Option<String>,
    pub display_name: Option<String>,
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CountryUsage {
    /// ISO 3166 alpha-2 country of the number dialed (for toll-free inbound, of the
    /// organization's toll-free number); null when unknown.
    pub country: Option<String>,
    /// The catalog's name of the country.
    pub name: Option<String>,
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CallTypeUsage {
    /// `outbound`, `toll_free_inbound` or `conference_dial_out`.
    pub call_type: String,
    #[serde(flatten)]
    pub usage: Usage,
}

/// Usage and credits spend of the calls started in [`from`, `to`). Every breakdown adds
/// up to `totals`. Days ascend; the other lists go by spend (highest first), then key.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SummaryView {
    pub from: String,
    pub to: String,
    pub currency: String,
    pub totals: Usage,
    /// Days with at least one call.
    pub by_day: Vec<DayUsage>,
    pub by_user: Vec<UserUsage>,
    pub by_country: Vec<CountryUsage>,
    pub by_call_type: Vec<CallTypeUsage>,
}

/// Conference dial-out of one meeting organizer.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct OrganizerDialOutView {
    pub organizer_id: String,
    pub upn: Option<String>,
    pub display_name: Option<String>,
    #[serde(flatten)]
    pub usage: Usage,
    pub currency: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ReasonCount {
    pub reason: String,
    pub count: i64,
}

/// A user refused calls in the period.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct BlockedUserView {
    /// Null for refusals without a known user (toll-free calls to unknown numbers,
    /// callers the organization does not know).
    pub user_id: Option<String>,
    pub upn: Option<String>,
    pub display_name: Option<String>,
    pub refusals: i64,
    /// Most frequent first, then by reason.
    pub reasons: Vec<ReasonCount>,
    pub first_refused_at: String,
    pub last_refused_at: String,
    pub last_reason: String,
}

/// Distribution of daily credits spend over the look-back, minor units. Days are
/// 24-hour periods ending at the recommendation's time; days without spend count as 0.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DailySpendView {
    pub days: i64,
    pub days_with_spend: i64,
    pub total: i64,
    /// `total / days`, rounded up to the minor unit.
    pub mean: i64,
    /// Percentiles by nearest rank on the sorted daily sums.
    pub p50: i64,
    pub p90: i64,
    pub p95: i64,
    pub max: i64,
}

/// Funding recommendation: auto-recharge amount and threshold from the daily spend.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Recommendation {
    pub as_of: String,
    pub currency: String,
    /// Whole days since the first call with a record (rounded up), at most 90; 0 without calls.
    pub history_days: i64,
    /// Days looked back: `history_days` within 30..=90.
    pub lookback_days: i64,
    pub window_from: String,
    pub window_to: String,
    /// False when the history is too short (under 7 days) or shows no credits spend:
    /// the amounts then fall back to the minimum purchase.
    pub enough_history: bool,
    pub daily_spend: DailySpendView,
    pub balance: i64,
    pub available: i64,
    /// Whole days the available balance lasts at the mean daily spend; null when nothing is spent.
    pub days_until_empty: Option<i64>,
    pub lead_time_days: i64,
    pub recommended_threshold: i64,
    pub recommended_amount: i64,
    pub minimum_purchase: i64,
    pub maximum_purchase: i64,
    pub current_auto_recharge: AutoRechargeView,
    /// The figures used and the choices made, in words.
    pub reasoning: Vec<String>,
}

impl Engine {
    /// Usage and credits spend of the calls started in [`from`, `to`), by day (UTC), by
    /// user, by destination country and by call type.
    pub fn summary(&self, org_id: &str, from: Timestamp, to: Timestamp) -> Result<SummaryView> {
        check_period(from, to)?;
        let (o, users, agg) = self.read(|tx| {
            let o = org(tx, org_id)?;
            let users = users_by_id(tx.list_users(org_id)?);
            let mut agg = Aggregate::default();
            tx.for_each_cdr(org_id, from, to, &mut |c| {
                same_currency(&o, c)?;
                agg.add(c);
                Ok(())
            })?;
            Ok((o, users, agg))
        })?;
        let by_day = agg
            .by_day
            .into_iter()
            .map(|(day, usage)| Ok(DayUsage { day: day_label(day)?, usage }))
            .collect::<Result<Vec<_>>>()?;
        let by_user = ranked(agg.by_user)
            .into_iter()
            .map(|(id, usage)| {
                let u = id.as_ref().and_then(|id| users.get(id));
                UserUsage {
                    upn: u.map(|u| u.upn.clone()),
                    display_name: u.map(|u| u.display_name.clone()),
                    user_id: id,
                    usage,
                }
            })
            .collect();
        let by_country = ranked(agg.by_country)
            .into_iter()
            .map(|(country, usage)| CountryUsage {
                name: country.as_deref().and_then(|c| self.country_name(c)),
                country,
                usage,
            })
            .collect();
        let by_call_type = ranked(agg.by_type.into_iter().map(|(k, v)| (Some(k), v)).collect())
            .into_iter()
            .map(|(call_type, usage)| CallTypeUsage { call_type: call_type.unwrap_or_default(), usage })
            .collect();
        Ok(SummaryView {
            from: iso(from),
            to: iso(to),
            currency: o.currency,
            totals: agg.all,
            by_day,
            by_user,
            by_country,
            by_call_type,
        })
    }

    /// Conference dial-out calls started in [`from`, `to`), per meeting organizer: by
    /// spend (highest first), then minutes (most first), then organizer id.
    pub fn dial_out_by_organizer(
        &self,
        org_id: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<OrganizerDialOutView>> {
        check_period(from, to)?;
        let (o, users, per) = self.read(|tx| {
            let o = org(tx, org_id)?;
            let users = users_by_id(tx.list_users(org_id)?);
            let mut per: HashMap<String, Usage> = HashMap::new();
            tx.for_each_cdr(org_id, from, to, &mut |c| {
                if c.call_type == "conference_dial_out" {
                    same_currency(&o, c)?;
                    if let Some(u) = &c.user_id {
                        per.entry(u.clone()).or_default().add(c);
                    }
                }
                Ok(())
            })?;
            Ok((o, users, per))
        })?;
        let mut rows: Vec<(String, Usage)> = per.into_iter().collect();
        rows.sort_by(|(a, x), (b, y)| y.spend.cmp(&x.spend).then(y.minutes.cmp(&x.minutes)).then(a.cmp(b)));
        Ok(rows
            .into_iter()
            .map(|(id, usage)| {
                let u = users.get(&id);
                OrganizerDialOutView {
                    upn: u.map(|u| u.upn.clone()),
                    display_name: u.map(|u| u.display_name.clone()),
                    organizer_id: id,
                    usage,
                    currency: o.currency.clone(),
                }
            })
            .collect())
    }

    /// Users refused calls in [`from`, `to`): how often, why, first and last time. Most
    /// refused first, then by user id; refusals without a known user last.
    pub fn blocked_users(&self, org_id: &str, from: Timestamp, to: Timestamp) -> Result<Vec<BlockedUserView>> {
        check_period(from, to)?;
        let (users, denials) = self.read(|tx| {
            org(tx, org_id)?;
            Ok((users_by_id(tx.list_users(org_id)?), tx.list_denials(org_id)?))
        })?;
        struct Acc {
            refusals: i64,
            reasons: HashMap<String, i64>,
            first: Timestamp,
            last: Timestamp,
            last_reason: String,
        }
        let mut per: HashMap<Option<String>, Acc> = HashMap::new();
        for d in denials.into_iter().filter(|d| d.at >= from && d.at < to) {
            let a = per.entry(d.user_id.clone()).or_insert_with(|| Acc {
                refusals: 0,
                reasons: HashMap::new(),
                first: d.at,
                last: d.at,
                last_reason: d.reason.clone(),
            });
            a.refusals += 1;
            *a.reasons.entry(d.reason.clone()).or_default() += 1;
            a.first = a.first.min(d.at);
            // Denials come in the order they were recorded: the later of equal times wins.
            if d.at >= a.last {
                a.last = d.at;
                a.last_reason = d.reason;
            }
        }
        let mut rows: Vec<(Option<String>, Acc)> = per.into_iter().collect();
        rows.sort_by(|(a, x), (b, y)| y.refusals.cmp(&x.refusals).then(a.is_none().cmp(&b.is_none())).then(a.cmp(b)));
        Ok(rows
            .into_iter()
            .map(|(id, a)| {
                let u = id.as_ref().and_then(|id| users.get(id));
                let mut reasons: Vec<ReasonCount> =
                    a.reasons.into_iter().map(|(reason, count)| ReasonCount { reason, count }).collect();
                reasons.sort_by(|x, y| y.count.cmp(&x.count).then(x.reason.cmp(&y.reason)));
                BlockedUserView {
                    upn: u.map(|u| u.upn.clone()),
                    display_name: u.map(|u| u.display_name.clone()),
                    user_id: id,
                    refusals: a.refusals,
                    reasons,
                    first_refused_at: iso(a.first),
                    last_refused_at: iso(a.last),
                    last_reason: a.last_reason,
                }
            })
            .collect())
    }

    /// The funding recommendation at `now`, from the credits spend of the calls started
    /// in the last 30 to 90 days (24-hour periods ending at `now`).
    pub fn recommend(&self, org_id: &str, now: Timestamp) -> Result<Recommendation> {
        let scan_from = days_before(now, MAX_LOOKBACK_DAYS)?;
        let (o, account, buckets, first, older) = self.read(|tx| {
            let o = org(tx, org_id)?;
            let account = tx.get_account(org_id)?.ok_or_else(|| internal("no account"))?;
            // Spend of each of the last 90 days, index 0 the most recent.
            let mut buckets = vec![0i64; MAX_LOOKBACK_DAYS as usize];
            let mut first: Option<Timestamp> = None;
            tx.for_each_cdr(org_id, scan_from, now, &mut |c| {
                same_currency(&o, c)?;
                first = Some(first.map_or(c.start_at, |f| f.min(c.start_at)));
                buckets[day_index(now, c.start_at)] += c.charge_minor;
                Ok(())
            })?;
            // Calls from before the 90 days make the history 90 days long, whatever the
            // last 90 days hold. The first such row answers it.
            let mut older = false;
            let reached_start = first.is_some_and(|f| day_index(now, f) + 1 >= MAX_LOOKBACK_DAYS as usize);
            if !reached_start {
                let probe = tx.for_each_cdr(org_id, Timestamp::UNIX_EPOCH, scan_from, &mut |_| {
                    older = true;
                    Err(err!(ErrorCode::Internal, "stop"))
                });
                if !older {
                    probe?;
                }
            }
            Ok((o, account, buckets, first, older))
        })?;
        let cur = Currency::parse(&o.currency)?;
        let unit = 10i64.pow(cur.exponent());
        let money = |minor: i64| format!("{} {}", cur.format_minor(minor), cur.code());
        let history_days = if older {
            MAX_LOOKBACK_DAYS
        } else {
            first
                .map(|f| ceil_div(now.as_microsecond() - f.as_microsecond(), DAY_MICROS).clamp(1, MAX_LOOKBACK_DAYS))
                .unwrap_or(0)
        };
        // Only days since the first call count: days before it would read as zero spend
        // and understate the rate. At least the minimum history, at most 90 days.
        let lookback =
            if history_days >= MIN_HISTORY_DAYS { history_days.min(MAX_LOOKBACK_DAYS) } else { MIN_LOOKBACK_DAYS };
        let daily_spend = distribution(&buckets[..lookback as usize]);
        let d = &daily_spend;
        let available = account.balance_minor - account.reserved_minor;
        let min_purchase = self.config.min_purchase_major.saturating_mul(unit);
        let max_purchase = self.config.max_purchase_major.saturating_mul(unit);
        let days_until_empty = (d.mean > 0).then(|| available.max(0) / d.mean);
        let mut reasoning = Vec::new();

        // The history and the window.
        reasoning.push(if older {
            format!("There are calls from more than {MAX_LOOKBACK_DAYS} days ago: the last {MAX_LOOKBACK_DAYS} days are used.")
        } else if history_days == 0 {
            format!("No call has a record yet: the last {lookback} days show no spend.")
        } else if history_days >= MIN_HISTORY_DAYS {
            format!(
                "The first call with a record started {} ago: the look-back covers those {} (at most {}), so days before the first call do not dilute the rate.",
                days(history_days),
                days(lookback),
                days(MAX_LOOKBACK_DAYS)
            )
        } else {
            format!(
                "The first call with a record started {} ago: too little history, the figures below cover the last {}.",
                days(history_days),
                days(lookback)
            )
        });
        // The distribution.
        reasoning.push(format!(
            "Over the last {} credits paid {} in all, {} a day on average (rounded up); on the busiest 5% of days {} or more.",
            days(lookback),
            money(d.total),
            money(d.mean),
            money(d.p95)
        ));
        reasoning.push(format!(
            "Credits paid something on {} of the {} days (the others count as 0); half of the days {} or less, the busiest 10% {} or more, the busiest day {}.",
            d.days_with_spend,
            lookback,
            money(d.p50),
            money(d.p90),
            money(d.max)
        ));
        // How long the balance lasts.
        reasoning.push(match days_until_empty {
            Some(0) => format!(
                "The available balance of {} does not cover one day at {} a day: it runs out within a day.",
                money(available),
                money(d.mean)
            ),
            Some(n) => format!(
                "The available balance of {} lasts about {} at {} a day.",
                money(available),
                days(n),
                money(d.mean)
            ),
            None => format!(
                "With no credits spend in the look-back, the available balance of {} is not being drawn down.",
                money(available)
            ),
        });

        let enough_history = history_days >= MIN_HISTORY_DAYS && d.total > 0;
        let (threshold, amount) = if !enough_history {
            let why = if history_days < MIN_HISTORY_DAYS {
                if history_days == 0 {
                    format!("there are no calls yet, and at least {} are needed", days(MIN_HISTORY_DAYS))
                } else {
                    format!(
                        "the first call started {} ago, and at least {} are needed",
                        days(history_days),
                        days(MIN_HISTORY_DAYS)
                    )
                }
            } else {
                format!("no call was paid from credits in the last {}", days(lookback))
            };
            let threshold = round_up_major(ceil_div(min_purchase, 2), unit);
            reasoning.push(format!(
                "There is too little history to recommend from spend: {why}. The recommendation falls back to the minimum purchase: recharge {}, with a threshold of half of it rounded up to a whole unit, {}.",
                money(min_purchase),
                money(threshold)
            ));
            (threshold, min_purchase)
        } else {
            let (basis, what) = if d.p95 >= d.mean {
                (d.p95, "the 95th-percentile daily spend".to_string())
            } else {
                (
                    d.mean,
                    "the average daily spend, which is above the 95th percentile because credits are spent on few days"
                        .to_string(),
                )
            };
            let raw = basis.saturating_mul(LEAD_TIME_DAYS);
            let threshold = round_up_major(raw, unit);
            reasoning.push(format!(
                "A recharge can take up to {} to arrive, so the threshold covers {} at {what}: {LEAD_TIME_DAYS} × {} = {}, rounded up to a whole unit: {}.",
                days(LEAD_TIME_DAYS),
                days(LEAD_TIME_DAYS),
                money(basis),
                money(raw),
                money(threshold)
            ));
            let raw = d.mean.saturating_mul(RECHARGE_COVER_DAYS);
            let rounded = round_up_major(raw, unit);
            let amount = rounded.clamp(min_purchase, max_purchase.max(min_purchase));
            reasoning.push(format!(
                "The recharge amount covers about {} at the average: {RECHARGE_COVER_DAYS} × {} = {}, rounded up to a whole unit: {}.",
                days(RECHARGE_COVER_DAYS),
                money(d.mean),
                money(raw),
                money(rounded)
            ));
            if amount > rounded {
                reasoning.push(format!(
                    "That is below the minimum purchase, so the recommended recharge is the minimum, {}.",
                    money(amount)
                ));
            } else if amount < rounded {
                reasoning.push(format!(
                    "That is above the largest single purchase, so the recommended recharge is that largest purchase, {}.",
                    money(amount)
                ));
            }
            (threshold, amount)
        };
        reasoning.push(if account.ar_enabled {
            format!(
                "Auto-recharge is on: it recharges {} when the available balance falls below {}.",
                money(account.ar_amount_minor),
                money(account.ar_threshold_minor)
            )
        } else {
            "Auto-recharge is off.".to_string()
        });

        Ok(Recommendation {
            as_of: iso(now),
            currency: o.currency.clone(),
            history_days,
            lookback_days: lookback,
            window_from: iso(days_before(now, lookback)?),
            window_to: iso(now),
            enough_history,
            daily_spend,
            balance: account.balance_minor,
            available,
            days_until_empty,
            lead_time_days: LEAD_TIME_DAYS,
            recommended_threshold: threshold,
            recommended_amount: amount,
            minimum_purchase: min_purchase,
            maximum_purchase: max_purchase,
            current_auto_recharge: AutoRechargeView {
                enabled: account.ar_enabled,
                amount: account.ar_amount_minor,
                threshold: account.ar_threshold_minor,
                payment_method_id: account.ar_payment_method_id.clone(),
            },
            reasoning,
        })
    }

    fn country_name(&self, code: &str) -> Option<String> {
        Country::parse(code).ok().and_then(|c| self.catalog().country_info(c)).map(|i| i.name.clone())
    }
}

#[derive(Default)]
struct Aggregate {
    all: Usage,
    /// By day number since the epoch (UTC).
    by_day: BTreeMap<i64, Usage>,
    by_user: HashMap<Option<String>, Usage>,
    by_country: HashMap<Option<String>, Usage>,
    by_type: HashMap<String, Usage>,
}

impl Aggregate {
    fn add(&mut self, c: &CdrRow) {
        self.all.add(c);
        self.by_day.entry(c.start_at.as_second().div_euclid(DAY_SECONDS)).or_default().add(c);
        self.by_user.entry(c.user_id.clone()).or_default().add(c);
        self.by_country.entry(c.dest_country.clone()).or_default().add(c);
        self.by_type.entry(c.call_type.clone()).or_default().add(c);
    }
}

/// By spend (highest first), then key, a null key last.
fn ranked(map: HashMap<Option<String>, Usage>) -> Vec<(Option<String>, Usage)> {
    let mut rows: Vec<(Option<String>, Usage)> = map.into_iter().collect();
    rows.sort_by(|(a, x), (b, y)| y.spend.cmp(&x.spend).then(a.is_none().cmp(&b.is_none())).then(a.cmp(b)));
    rows
}

fn users_by_id(users: Vec<UserRow>) -> HashMap<String, UserRow> {
    users.into_iter().map(|u| (u.user_id.clone(), u)).collect()
}

/// Money of different currencies is never added together.
fn same_currency(o: &OrgRow, c: &CdrRow) -> Result<()> {
    if c.currency != o.currency {
        return Err(internal(format!(
            "CDR {} is in {} but the organization bills in {}",
            c.call_id, c.currency, o.currency
        )));
    }
    Ok(())
}

fn check_period(from: Timestamp, to: Timestamp) -> Result<()> {
    if from >= to {
        return Err(err!(
            ErrorCode::InvalidInput,
            "the period must start before it ends ({} to {})",
            iso(from),
            iso(to)
        ));
    }
    Ok(())
}

fn day_label(day: i64) -> Result<String> {
    let t = Timestamp::from_second(day * DAY_SECONDS).map_err(|e| internal(format!("day {day}: {e}")))?;
    Ok(t.strftime("%Y-%m-%d").to_string())
}

fn days_before(now: Timestamp, days: i64) -> Result<Timestamp> {
    now.checked_sub(SignedDuration::from_secs(days * DAY_SECONDS))
        .map_err(|e| err!(ErrorCode::InvalidInput, "{} minus {days} days: {e}", iso(now)))
}

/// Which 24-hour period ending at `now` holds `t` (in [now - 90 days, now)): 0 for the
/// last 24 hours.
fn day_index(now: Timestamp, t: Timestamp) -> usize {
    let back = now.as_microsecond() - t.as_microsecond();
    (((back - 1).max(0) / DAY_MICROS) as usize).min(MAX_LOOKBACK_DAYS as usize - 1)
}

/// `a / b` rounded up, for `b > 0`.
fn ceil_div(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

/// Rounds minor units up to a whole major unit (`unit` minor units).
fn round_up_major(minor: i64, unit: i64) -> i64 {
    ceil_div(minor, unit).saturating_mul(unit)
}

/// The nearest-rank `p`th percentile of sorted values (at least one).
fn percentile(sorted: &[i64], p: i64) -> i64 {
    let n = sorted.len() as i64;
    let rank = ceil_div(p * n, 100).clamp(1, n);
    sorted[(rank - 1) as usize]
}

fn distribution(daily: &[i64]) -> DailySpendView {
    let mut sorted = daily.to_vec();
    sorted.sort_unstable();
    let days = sorted.len() as i64;
    let total: i64 = sorted.iter().sum();
    DailySpendView {
        days,
        days_with_spend: sorted.iter().filter(|s| **s > 0).count() as i64,
        total,
        mean: if days > 0 { ceil_div(total, days) } else { 0 },
        p50: if days > 0 { percentile(&sorted, 50) } else { 0 },
        p90: if days > 0 { percentile(&sorted, 90) } else { 0 },
        p95: if days > 0 { percentile(&sorted, 95) } else { 0 },
        max: sorted.last().copied().unwrap_or(0),
    }
}

fn days(n: i64) -> String {
    if n == 1 {
        "1 day".into()
    } else {
        format!("{n} days")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<i64> = (1..=20).collect();
        assert_eq!((percentile(&v, 50), percentile(&v, 90), percentile(&v, 95)), (10, 18, 19));
        assert_eq!(percentile(&[7], 95), 7);
        let d = distribution(&[0, 0, 3, 1]);
        assert_eq!((d.total, d.mean, d.p50, d.max, d.days_with_spend), (4, 1, 0, 3, 2));
        assert_eq!(distribution(&[0, 0, 10]).mean, 4);
    }

    #[test]
    fn rounding_up() {
        assert_eq!(ceil_div(7, 2), 4);
        assert_eq!(ceil_div(0, 60), 0);
        assert_eq!(ceil_div(-7, 2), -3);
        assert_eq!(round_up_major(12_301, 100), 12_400);
        assert_eq!(round_up_major(12_300, 100), 12_300);
        assert_eq!(round_up_major(5, 1), 5);
    }

    #[test]
    fn schemas_show_the_flattened_usage() {
        use utoipa::PartialSchema;
        let day = serde_json::to_string(&DayUsage::schema()).unwrap();
        assert!(day.contains("\"day\"") && day.contains("Usage"), "{day}");
        let r = serde_json::to_string(&Recommendation::schema()).unwrap();
        assert!(r.contains("reasoning") && r.contains("DailySpendView"), "{r}");
    }

    #[test]
    fn days_are_periods_ending_now() {
        let now: Timestamp = "2026-03-10T12:00:00Z".parse().unwrap();
        let at = |s: &str| day_index(now, s.parse().unwrap());
        assert_eq!(at("2026-03-10T11:59:59Z"), 0);
        assert_eq!(at("2026-03-09T12:00:00Z"), 0);
        assert_eq!(at("2026-03-09T11:59:59Z"), 1);
        assert_eq!(day_label(20_000).unwrap(), "2024-10-04");
    }
}
