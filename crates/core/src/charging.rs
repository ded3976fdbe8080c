//! Real-time charging decisions: which pool and deck a call uses, how much of a
//! request can be granted from plan minutes and credits, and what a call costs at
//! settlement. Pure functions over values the caller loaded.

use crate::catalog::{Catalog, PoolKind, PoolScope, Rate, Sku};
use crate::err;
use crate::error::{ErrorCode, Result};
use crate::money::Currency;
use crate::phone::{Country, E164};
use crate::pools::PoolKey;
use crate::rating::{affordable_seconds, charge_minor, plan_minutes};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallType {
    Outbound,
    TollFreeInbound,
    ConferenceDialOut,
}

impl CallType {
    pub const ALL: [CallType; 3] = [CallType::Outbound, CallType::TollFreeInbound, CallType::ConferenceDialOut];

    pub fn as_str(self) -> &'static str {
        match self {
            CallType::Outbound => "outbound",
            CallType::TollFreeInbound => "toll_free_inbound",
            CallType::ConferenceDialOut => "conference_dial_out",
        }
    }

    pub fn parse(text: &str) -> Result<CallType> {
        CallType::ALL.into_iter().find(|t| t.as_str() == text.trim()).ok_or_else(|| {
            err!(
                ErrorCode::InvalidInput,
                "unknown call type '{text}' (outbound, toll_free_inbound, conference_dial_out)"
            )
        })
    }
}

impl fmt::Display for CallType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call was refused. The strings are part of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    InsufficientFunds,
    NoCreditsLicense,
    NoPhoneSystem,
    PlanMinutesExhausted,
    DestinationNotAllowed,
    SpendLimitReached,
    DialOutDisabled,
    UnknownUser,
    UnknownNumber,
    AccountSuspended,
}

impl DenyReason {
    pub const ALL: [DenyReason; 10] = [
        DenyReason::InsufficientFunds,
        DenyReason::NoCreditsLicense,
        DenyReason::NoPhoneSystem,
        DenyReason::PlanMinutesExhausted,
        DenyReason::DestinationNotAllowed,
        DenyReason::SpendLimitReached,
        DenyReason::DialOutDisabled,
        DenyReason::UnknownUser,
        DenyReason::UnknownNumber,
        DenyReason::AccountSuspended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::InsufficientFunds => "insufficient_funds",
            DenyReason::NoCreditsLicense => "no_credits_license",
            DenyReason::NoPhoneSystem => "no_phone_system",
            DenyReason::PlanMinutesExhausted => "plan_minutes_exhausted",
            DenyReason::DestinationNotAllowed => "destination_not_allowed",
            DenyReason::SpendLimitReached => "spend_limit_reached",
            DenyReason::DialOutDisabled => "dial_out_disabled",
            DenyReason::UnknownUser => "unknown_user",
            DenyReason::UnknownNumber => "unknown_number",
            DenyReason::AccountSuspended => "account_suspended",
        }
    }

    pub fn parse(text: &str) -> Option<DenyReason> {
        DenyReason::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-user dial-out policy (for PSTN calls and, separately, for conference dial-out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DialOutPolicy {
    #[default]
    International,
    Domestic,
    Disabled,
}

impl DialOutPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DialOutPolicy::International => "international",
            DialOutPolicy::Domestic => "domestic",
            DialOutPolicy::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Result<DialOutPolicy> {
        match text.trim() {
            "international" => Ok(DialOutPolicy::International),
            "domestic" => Ok(DialOutPolicy::Domestic),
            "disabled" => Ok(DialOutPolicy::Disabled),
            _ => Err(err!(
                ErrorCode::InvalidInput,
                "dial-out policy must be international, domestic or disabled, not '{text}'"
            )),
        }
    }
}

/// How a call was paid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Funding {
    Plan,
    Credits,
    PlanAndCredits,
    Emergency,
    None,
}

impl Funding {
    pub fn as_str(self) -> &'static str {
        match self {
            Funding::Plan => "plan",
            Funding::Credits => "credits",
            Funding::PlanAndCredits => "plan_and_credits",
            Funding::Emergency => "emergency",
            Funding::None => "none",
        }
    }

    pub fn parse(text: &str) -> Result<Funding> {
        [Funding::Plan, Funding::Credits, Funding::PlanAndCredits, Funding::Emergency, Funding::None]
            .into_iter()
            .find(|f| f.as_str() == text)
            .ok_or_else(|| err!(ErrorCode::InvalidInput, "unknown funding '{text}'"))
    }

    /// From what paid: plan minutes, and seconds on credits.
    pub fn of(plan_minutes: i64, credit_seconds: u32) -> Funding {
        match (plan_minutes > 0, credit_seconds > 0) {
            (true, true) => Funding::PlanAndCredits,
            (true, false) => Funding::Plan,
            (false, true) => Funding::Credits,
            (false, false) => Funding::None,
        }
    }
}

/// What the charging decision needs to know of the user placing (or organizing) the call.
#[derive(Clone, Debug)]
pub struct CallUser {
    pub usage_location: Country,
    /// Effective licenses (bundles expanded).
    pub licenses: Vec<Sku>,
    pub dial_out: DialOutPolicy,
    pub conference_dial_out: DialOutPolicy,
}

/// Where a call is rated and which plan pool may pay for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub pool: Option<PoolKey>,
    /// Whether credits may pay (Err carries the reason to give when nothing else can).
    pub credits: std::result::Result<(), DenyReason>,
    pub domestic: bool,
}

/// Decides deck, pool and credit eligibility for a non-emergency call.
/// `premium` tells whether the destination's rate is a premium-rate entry.
pub fn route(
    catalog: &Catalog,
    call_type: CallType,
    user: Option<&CallUser>,
    from: Option<&E164>,
    to: &E164,
    premium: bool,
) -> std::result::Result<Route, DenyReason> {
    match call_type {
        CallType::TollFreeInbound => {
            // The caller is rated (toll-free deck by caller prefix): there must be one.
            from.ok_or(DenyReason::UnknownNumber)?;
            Ok(Route { pool: None, credits: Ok(()), domestic: false })
        }
        CallType::Outbound => {
            let u = user.ok_or(DenyReason::UnknownUser)?;
            if !u.licenses.contains(&Sku::PhoneSystem) {
                return Err(DenyReason::NoPhoneSystem);
            }
            let domestic = to.country() == Some(u.usage_location);
            check_policy(u.dial_out, domestic)?;
            let kind = if domestic { PoolKind::Domestic } else { PoolKind::International };
            let scope = PoolScope::Country(u.usage_location);
            let has_plan = catalog.skus_feeding(kind).iter().any(|s| u.licenses.contains(s))
                && catalog.allowance(scope, kind) > 0
                && !premium;
            Ok(Route { pool: has_plan.then_some(PoolKey { scope, kind }), credits: credits_for(u), domestic })
        }
        CallType::ConferenceDialOut => {
            let u = user.ok_or(DenyReason::UnknownUser)?;
            // Without Audio Conferencing the organizer has no dial-out at all.
            if !u.licenses.contains(&Sku::AudioConferencing) {
                return Err(DenyReason::DialOutDisabled);
            }
            let domestic = to.country() == Some(u.usage_location);
            check_policy(u.conference_dial_out, domestic)?;
            let kind = PoolKind::Conferencing;
            let zone_a = to.country().is_some_and(|c| catalog.is_zone_a(c));
            let has_plan = zone_a && !premium && catalog.allowance(PoolScope::Org, kind) > 0;
            Ok(Route {
                pool: has_plan.then_some(PoolKey { scope: PoolScope::Org, kind }),
                credits: credits_for(u),
                domestic,
            })
        }
    }
}

fn check_policy(policy: DialOutPolicy, domestic: bool) -> std::result::Result<(), DenyReason> {
    match policy {
        DialOutPolicy::Disabled => Err(DenyReason::DialOutDisabled),
        DialOutPolicy::Domestic if !domestic => Err(DenyReason::DestinationNotAllowed),
        _ => Ok(()),
    }
}

fn credits_for(u: &CallUser) -> std::result::Result<(), DenyReason> {
    if u.licenses.contains(&Sku::CommunicationsCredits) {
        Ok(())
    } else {
        Err(DenyReason::NoCreditsLicense)
    }
}

/// Credits that may pay: the rate and the money that can be committed.
#[derive(Clone, Debug)]
pub struct CreditOffer<'a> {
    pub rate: &'a Rate,
    pub currency: Currency,
    pub available_minor: i64,
    /// Left of the user's monthly spend limit, when one is set.
    pub spend_left_minor: Option<i64>,
}

/// What was granted: seconds in all, whole plan minutes reserved, money reserved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub granted_seconds: u32,
    pub plan_minutes: i64,
    /// Seconds of the grant that credits pay for.
    pub credit_seconds: u32,
    pub money_minor: i64,
}

impl Grant {
    /// Seconds of the grant that plan minutes cover: its first whole minutes.
    pub fn plan_seconds(&self) -> u32 {
        let plan = u32::try_from(self.plan_minutes.max(0).saturating_mul(60)).unwrap_or(u32::MAX);
        plan.min(self.granted_seconds)
    }

    /// The part of this grant that pays for its first `seconds` (at most all of it):
    /// the plan minutes and the money those seconds need, never more than the grant
    /// holds. A reservation shrinks to this when a call asks for less than it holds, so
    /// the seconds kept are paid the way they were granted, whatever today's limits.
    pub fn first(&self, seconds: u32, rate: Option<&Rate>, currency: Currency) -> Grant {
        let seconds = seconds.min(self.granted_seconds);
        let on_plan = seconds.min(self.plan_seconds());
        let credit_seconds = seconds - on_plan;
        let money = match rate {
            Some(r) if credit_seconds > 0 => charge_minor(r, currency, credit_seconds),
            _ => 0,
        };
        Grant {
            granted_seconds: seconds,
            plan_minutes: plan_minutes(on_plan).min(self.plan_minutes),
            credit_seconds,
            money_minor: money.min(self.money_minor),
        }
    }
}

/// Grants as much of `requested_seconds` as plan minutes then credits can pay, and at
/// least one billing increment, or denies. `plan_remaining_minutes` is None when no
/// plan pool applies to the call.
pub fn grant(
    requested_seconds: u32,
    plan_remaining_minutes: Option<i64>,
    credits: std::result::Result<CreditOffer<'_>, DenyReason>,
) -> std::result::Result<Grant, DenyReason> {
    let req = requested_seconds.max(1);
    let plan_secs_avail = plan_remaining_minutes.unwrap_or(0).max(0).saturating_mul(60);
    if plan_secs_avail >= i64::from(req) {
        return Ok(Grant { granted_seconds: req, plan_minutes: plan_minutes(req), credit_seconds: 0, money_minor: 0 });
    }
    let plan_secs = plan_secs_avail as u32;
    let rest = req - plan_secs;
    let from_plan = Grant {
        granted_seconds: plan_secs,
        plan_minutes: i64::from(plan_secs / 60),
        credit_seconds: 0,
        money_minor: 0,
    };
    let offer = match credits {
        Ok(o) => o,
        Err(reason) => {
            return if plan_secs > 0 {
                Ok(from_plan)
            } else if plan_remaining_minutes.is_some() && reason == DenyReason::NoCreditsLicense {
                Err(DenyReason::PlanMinutesExhausted)
            } else {
                Err(reason)
            };
        }
    };
    let budget = match offer.spend_left_minor {
        Some(left) => left.min(offer.available_minor),
        None => offer.available_minor,
    };
    // An empty balance pays for nothing, even seconds that would round to a zero charge.
    let credit_secs = if budget > 0 { affordable_seconds(offer.rate, offer.currency, budget, rest) } else { 0 };
    if credit_secs == 0 {
        if plan_secs > 0 {
            return Ok(from_plan);
        }
        let funds_alone = if offer.available_minor > 0 {
            affordable_seconds(offer.rate, offer.currency, offer.available_minor, rest)
        } else {
            0
        };
        return Err(if funds_alone > 0 { DenyReason::SpendLimitReached } else { DenyReason::InsufficientFunds });
    }
    let credit_secs = credit_secs.min(rest.max(offer.rate.increment_seconds.min(credit_secs)));
    Ok(Grant {
        granted_seconds: plan_secs + credit_secs,
        plan_minutes: from_plan.plan_minutes,
        credit_seconds: credit_secs,
        money_minor: charge_minor(offer.rate, offer.currency, credit_secs),
    })
}

/// The final figures of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// Seconds paid for: the duration, capped at what was granted.
    pub charged_seconds: u32,
    /// Seconds beyond the grant: recorded, never charged.
    pub overrun_seconds: u32,
    pub plan_minutes: i64,
    pub credit_seconds: u32,
    pub charge_minor: i64,
}

/// Settles a duration against what a reservation holds. Never charges more than reserved.
pub fn settle(grant: &Grant, rate: Option<&Rate>, currency: Currency, duration_seconds: u32) -> Settled {
    let charged = duration_seconds.min(grant.granted_seconds);
    let on_plan = charged.min(grant.plan_seconds());
    let credit_seconds = charged - on_plan;
    let charge = match rate {
        Some(r) if credit_seconds > 0 => charge_minor(r, currency, credit_seconds),
        _ => 0,
    };
    Settled {
        charged_seconds: charged,
        overrun_seconds: duration_seconds - charged,
        plan_minutes: plan_minutes(on_plan).min(grant.plan_minutes),
        credit_seconds,
        charge_minor: charge.min(grant.money_minor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn rate(per_minute: &str) -> Rate {
        Rate {
            prefix: "1".into(),
            name: "x".into(),
            connection_fee_minor: 0,
            per_minute: Decimal::from_str_exact(per_minute).unwrap(),
            increment_seconds: 60,
            premium: false,
        }
    }

    fn offer(r: &Rate, available: i64) -> CreditOffer<'_> {
        CreditOffer {
            rate: r,
            currency: Currency::parse("USD").unwrap(),
            available_minor: available,
            spend_left_minor: None,
        }
    }

    #[test]
    fn plan_first_then_credits() {
        let r = rate("0.1000");
        assert_eq!(
            grant(300, Some(10), Ok(offer(&r, 0))).unwrap(),
            Grant { granted_seconds: 300, plan_minutes: 5, credit_seconds: 0, money_minor: 0 }
        );
        // 2 plan minutes left, 3 more minutes from credits at 10 cents
        assert_eq!(
            grant(300, Some(2), Ok(offer(&r, 1000))).unwrap(),
            Grant { granted_seconds: 300, plan_minutes: 2, credit_seconds: 180, money_minor: 30 }
        );
        // plan empty, no credits license
        assert_eq!(grant(300, Some(0), Err(DenyReason::NoCreditsLicense)), Err(DenyReason::PlanMinutesExhausted));
        assert_eq!(grant(300, None, Err(DenyReason::NoCreditsLicense)), Err(DenyReason::NoCreditsLicense));
        // plan partly covers, no credits: grant the plan part
        assert_eq!(grant(300, Some(2), Err(DenyReason::NoCreditsLicense)).unwrap().granted_seconds, 120);
        assert_eq!(grant(300, None, Ok(offer(&r, 9))), Err(DenyReason::InsufficientFunds));
        // Seconds that would round to a zero charge are still not free on an empty balance.
        let cheap = Rate { increment_seconds: 6, ..rate("0.0100") };
        assert_eq!(grant(300, None, Ok(offer(&cheap, 0))), Err(DenyReason::InsufficientFunds));
        assert_eq!(grant(300, None, Ok(offer(&cheap, 1))).unwrap().granted_seconds, 84);
        assert_eq!(
            grant(300, None, Ok(offer(&r, 25))).unwrap(),
            Grant { granted_seconds: 120, plan_minutes: 0, credit_seconds: 120, money_minor: 20 }
        );
        // at least one increment even when fewer seconds are asked for
        assert_eq!(grant(10, None, Ok(offer(&r, 25))).unwrap().granted_seconds, 60);
        let mut o = offer(&r, 1000);
        o.spend_left_minor = Some(5);
        assert_eq!(grant(300, None, Ok(o)), Err(DenyReason::SpendLimitReached));
    }

    #[test]
    fn the_first_seconds_of_a_grant_are_paid_as_granted() {
        let r = rate("0.1000");
        let usd = Currency::parse("USD").unwrap();
        let g = Grant { granted_seconds: 300, plan_minutes: 2, credit_seconds: 180, money_minor: 30 };
        // Within the plan part: plan minutes only, no money.
        assert_eq!(
            g.first(90, Some(&r), usd),
            Grant { granted_seconds: 90, plan_minutes: 2, credit_seconds: 0, money_minor: 0 }
        );
        assert_eq!(g.first(60, Some(&r), usd).plan_minutes, 1);
        // Beyond it: all the plan minutes and the price of the credit seconds.
        assert_eq!(
            g.first(200, Some(&r), usd),
            Grant { granted_seconds: 200, plan_minutes: 2, credit_seconds: 80, money_minor: 20 }
        );
        // Never more than the grant holds, in seconds or money.
        assert_eq!(g.first(999, Some(&r), usd), Grant { credit_seconds: 180, ..g.clone() });
        let short = Grant { money_minor: 15, ..g.clone() };
        assert_eq!(short.first(300, Some(&r), usd).money_minor, 15);
        // A plan-only grant of 90 s holds 2 minutes: its first 70 s still need both.
        let p = Grant { granted_seconds: 90, plan_minutes: 2, credit_seconds: 0, money_minor: 0 };
        assert_eq!(p.first(70, Some(&r), usd), Grant { granted_seconds: 70, ..p.clone() });
    }

    #[test]
    fn settlement_never_exceeds_the_grant() {
        let r = rate("0.1000");
        let usd = Currency::parse("USD").unwrap();
        let g = Grant { granted_seconds: 300, plan_minutes: 2, credit_seconds: 180, money_minor: 30 };
        let s = settle(&g, Some(&r), usd, 500);
        assert_eq!((s.charged_seconds, s.overrun_seconds, s.plan_minutes, s.charge_minor), (300, 200, 2, 30));
        let s = settle(&g, Some(&r), usd, 90);
        assert_eq!((s.plan_minutes, s.credit_seconds, s.charge_minor), (2, 0, 0));
        let s = settle(&g, Some(&r), usd, 121);
        assert_eq!((s.plan_minutes, s.credit_seconds, s.charge_minor), (2, 1, 10));
        let s = settle(&g, Some(&r), usd, 0);
        assert_eq!((s.plan_minutes, s.charge_minor), (0, 0));
    }
}
