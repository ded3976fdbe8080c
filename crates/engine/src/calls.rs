//! Real-time charging: authorize reserves plan minutes and money, update moves the
//! reservation, end (or the timeout) settles it once and writes the CDR.

use crate::books::Books;
use crate::notices::{self, POOL_THRESHOLD};
use crate::views::{AuthorizeView, EndView, UpdateView};
use crate::{admin, internal, new_id, Effects, Engine, Outcome};
use commcredits_core::catalog::{PoolKind, PoolScope, Rate, Sku};
use commcredits_core::charging::{
    self, CallType, CallUser, CreditOffer, DenyReason, DialOutPolicy, Funding, Grant, Route,
};
use commcredits_core::money::Currency;
use commcredits_core::phone::{Country, Destination, E164};
use commcredits_core::pools::{crossed_thresholds, remaining_minutes, Month, PoolKey};
use commcredits_core::{err, ErrorCode, Result, Timestamp};
use commcredits_store::{CdrRow, DenialRow, OrgRow, PoolUsageRow, ReservationRow, Tx, UserRow, UserSpendRow};
use rust_decimal::Decimal;
use serde_json::json;

/// The longest a single grant may be asked for.
pub const MAX_REQUESTED_SECONDS: u32 = 86_400;

#[derive(Clone, Debug)]
pub struct AuthorizeRequest {
    pub org: String,
    pub call_id: String,
    pub call_type: String,
    pub user: Option<String>,
    pub from: String,
    pub to: String,
    pub requested_seconds: Option<u32>,
}

/// A call with everything needed to decide on it, loaded in the transaction.
pub(crate) struct Priced {
    pub call_type: CallType,
    pub user: Option<UserRow>,
    pub from: String,
    pub to: String,
    pub emergency: bool,
    pub route: Option<Route>,
    pub rate: Option<Rate>,
    pub pool: Option<PoolState>,
    pub spend: Option<(i64, UserSpendRow)>,
    pub currency: Currency,
    pub dest_country: Option<Country>,
}

pub(crate) struct PoolState {
    pub key: PoolKey,
    pub size: i64,
    pub row: PoolUsageRow,
}

fn validate_call_id(call_id: &str) -> Result<()> {
    if call_id.is_empty() || call_id.len() > 128 || !call_id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(err!(ErrorCode::InvalidInput, "call id must be 1 to 128 printable characters without spaces"));
    }
    Ok(())
}

/// The size of a pool this month: licensed users (of the country) × allowance.
pub(crate) fn pool_size(engine: &Engine, tx: &mut dyn Tx, org_id: &str, key: PoolKey) -> Result<i64> {
    let skus: Vec<String> = engine.catalog().skus_feeding(key.kind).iter().map(|s| s.as_str().to_string()).collect();
    let country = match key.scope {
        PoolScope::Country(c) => Some(c.to_string()),
        PoolScope::Org => None,
    };
    let users = tx.count_licensed_users(org_id, country.as_deref(), &skus)?;
    Ok(users * engine.catalog().allowance(key.scope, key.kind))
}

pub(crate) fn load_pool(
    engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    key: PoolKey,
    month: Month,
) -> Result<PoolState> {
    let size = pool_size(engine, tx, org_id, key)?;
    let row = tx
        .get_pool_usage(org_id, month.0, key.scope.as_str(), key.kind.as_str())?
        .unwrap_or_else(|| PoolUsageRow::empty(org_id, key.scope.as_str(), key.kind.as_str(), month.0));
    Ok(PoolState { key, size, row })
}

fn call_user(engine: &Engine, tx: &mut dyn Tx, u: &UserRow) -> Result<CallUser> {
    let held: Vec<Sku> =
        tx.user_licenses(&u.org_id, &u.user_id)?.iter().map(|s| Sku::parse(s)).collect::<Result<_>>()?;
    Ok(CallUser {
        usage_location: Country::parse(&u.usage_location)?,
        licenses: engine.catalog().effective(&held),
        dial_out: DialOutPolicy::parse(&u.dial_out)?,
        conference_dial_out: DialOutPolicy::parse(&u.conference_dial_out)?,
    })
}

type Denied = (DenyReason, Option<UserRow>);

/// Validates a request and loads what the decision needs. Malformed input is an error;
/// a well-formed call that may not be made is a denial.
pub(crate) fn prepare(
    engine: &Engine,
    tx: &mut dyn Tx,
    org: &OrgRow,
    req: &AuthorizeRequest,
    month: Month,
    quote: bool,
) -> Result<std::result::Result<Priced, Denied>> {
    validate_call_id(&req.call_id)?;
    let call_type = CallType::parse(&req.call_type)?;
    if let Some(s) = req.requested_seconds {
        if s > MAX_REQUESTED_SECONDS {
            return Err(err!(ErrorCode::InvalidInput, "requested_seconds must be at most {MAX_REQUESTED_SECONDS}"));
        }
    }
    let currency = Currency::parse(&org.currency)?;
    let user_text = req.user.as_deref().map(str::trim).filter(|u| !u.is_empty());
    let user = match (call_type, user_text) {
        (CallType::TollFreeInbound, Some(_)) => {
            return Err(err!(
                ErrorCode::InvalidInput,
                "toll_free_inbound calls have no user_id: the caller is outside the organization"
            ))
        }
        (CallType::TollFreeInbound, None) => None,
        (_, None) => {
            return Err(err!(
                ErrorCode::InvalidInput,
                "{call_type} calls need the user_id of the caller or meeting organizer"
            ))
        }
        (_, Some(text)) => match admin::find_user(tx, &org.org_id, text) {
            Ok(u) => Some(u),
            Err(e) if e.code == ErrorCode::UserNotFound => return Ok(Err((DenyReason::UnknownUser, None))),
            Err(e) => return Err(e),
        },
    };
    // A quote of an outbound or dial-out call may leave the caller number out: the
    // user's usage location and the destination set the price. A call that is made
    // always names its caller, and a toll-free call is priced by it.
    let from = if quote && call_type != CallType::TollFreeInbound && req.from.trim().is_empty() {
        None
    } else {
        Some(E164::parse(&req.from).map_err(|e| err!(e.code, "from: {}", e.message))?)
    };
    let org_country = Country::parse(&org.country)?;
    let caller_country = match &user {
        Some(u) => Country::parse(&u.usage_location)?,
        None => org_country,
    };
    let emergency_codes: &[String] =
        if call_type == CallType::TollFreeInbound { &[] } else { engine.catalog().emergency_numbers(caller_country) };
    let dest = Destination::parse(&req.to, emergency_codes).map_err(|e| err!(e.code, "to: {}", e.message))?;
    let mut priced = Priced {
        call_type,
        user: user.clone(),
        from: from.as_ref().map(E164::to_string).unwrap_or_default(),
        to: dest.as_text(),
        emergency: false,
        route: None,
        rate: None,
        pool: None,
        spend: None,
        currency,
        dest_country: None,
    };
    let to = match dest {
        Destination::Emergency(_) => {
            // Emergency calls are always allowed and never charged, whatever the account.
            priced.emergency = true;
            priced.dest_country = Some(caller_country);
            return Ok(Ok(priced));
        }
        Destination::Number(n) => n,
    };
    priced.dest_country = to.country();
    if org.suspended {
        return Ok(Err((DenyReason::AccountSuspended, user)));
    }
    if call_type == CallType::TollFreeInbound {
        let ours = tx.get_number(&org.org_id, &to.to_string())?;
        if ours.is_none_or(|n| n.kind != "toll_free") {
            return Ok(Err((DenyReason::UnknownNumber, None)));
        }
    }
    let cu = match &user {
        Some(u) => Some(call_user(engine, tx, u)?),
        None => None,
    };
    let deck_kind = match call_type {
        CallType::Outbound => commcredits_core::catalog::DeckKind::Outbound,
        CallType::ConferenceDialOut => commcredits_core::catalog::DeckKind::DialOut,
        CallType::TollFreeInbound => commcredits_core::catalog::DeckKind::TollFree,
    };
    let deck = engine.deck(deck_kind, currency)?;
    let rated = match (call_type, &from) {
        (CallType::TollFreeInbound, Some(caller)) => caller,
        _ => &to,
    };
    let Some(rate) = deck.lookup(rated.digits()).cloned() else {
        return Ok(Err((DenyReason::DestinationNotAllowed, user)));
    };
    let route = match charging::route(engine.catalog(), call_type, cu.as_ref(), from.as_ref(), &to, rate.premium) {
        Ok(r) => r,
        Err(reason) => return Ok(Err((reason, user))),
    };
    if let Some(key) = route.pool {
        priced.pool = Some(load_pool(engine, tx, &org.org_id, key, month)?);
    }
    if let (Some(u), Ok(())) = (&user, route.credits) {
        if let Some(limit) = u.spend_limit_minor {
            let row = tx
                .get_user_spend(&org.org_id, &u.user_id, month.0)?
                .unwrap_or_else(|| UserSpendRow::empty(&org.org_id, &u.user_id, month.0));
            priced.spend = Some((limit, row));
        }
    }
    priced.rate = Some(rate);
    priced.route = Some(route);
    Ok(Ok(priced))
}

/// Grants `requested` seconds from what `priced` shows free, with `spendable` money.
/// `own` is what the call itself already holds (plan minutes, money): it is the call's
/// whatever today's limits say, so it counts as free even when a pool shrank below it
/// (a license removed), its money sits on a lot that has expired since, or the user's
/// spend limit was lowered under it. Only what the call would take beyond it is
/// subject to the pool, the live balance and the spend limit.
pub(crate) fn decide(
    priced: &Priced,
    requested: u32,
    spendable: i64,
    own: (i64, i64),
) -> std::result::Result<Grant, DenyReason> {
    let route = priced.route.as_ref().ok_or(DenyReason::DestinationNotAllowed)?;
    let rate = priced.rate.as_ref().ok_or(DenyReason::DestinationNotAllowed)?;
    let (own_minutes, own_minor) = own;
    let plan = priced.pool.as_ref().map(|p| {
        remaining_minutes(p.size, p.row.used_minutes, p.row.reserved_minutes.saturating_sub(own_minutes))
            .max(own_minutes)
    });
    let credits = route.credits.map(|()| CreditOffer {
        rate,
        currency: priced.currency,
        available_minor: spendable.saturating_add(own_minor),
        spend_left_minor: priced.spend.as_ref().map(|(limit, s)| {
            limit
                .saturating_sub(s.spent_minor)
                .saturating_sub(s.reserved_minor.saturating_sub(own_minor))
                .max(own_minor)
        }),
    });
    charging::grant(requested, plan, credits)
}

fn view(priced: Option<&Priced>, call_id: &str, currency: Currency, to: &str) -> AuthorizeView {
    let rate = priced.and_then(|p| p.rate.as_ref());
    AuthorizeView {
        call_id: call_id.into(),
        decision: "deny".into(),
        granted_seconds: 0,
        funding: Funding::None.as_str().into(),
        rate_per_minute: rate.map(|r| r.per_minute.to_string()),
        connection_fee: rate.map(|r| r.connection_fee_minor).unwrap_or(0),
        increment_seconds: rate.map(|r| r.increment_seconds).unwrap_or(0),
        currency: currency.code().into(),
        reason: None,
        plan_minutes: 0,
        reserved_amount: 0,
        destination: to.into(),
        destination_name: rate.map(|r| r.name.clone()),
        pool: priced.and_then(|p| p.pool.as_ref()).map(|p| format!("{}/{}", p.key.scope.as_str(), p.key.kind.as_str())),
    }
}

fn allow_view(priced: &Priced, call_id: &str, g: &Grant) -> AuthorizeView {
    let mut v = view(Some(priced), call_id, priced.currency, &priced.to);
    v.decision = "allow".into();
    v.granted_seconds = g.granted_seconds;
    v.funding = if priced.emergency { Funding::Emergency } else { Funding::of(g.plan_minutes, g.credit_seconds) }
        .as_str()
        .into();
    if priced.emergency {
        v.rate_per_minute = Some("0".into());
        v.destination_name = Some("Emergency".into());
    }
    v.plan_minutes = g.plan_minutes;
    v.reserved_amount = g.money_minor;
    v
}

fn deny_view(priced: Option<&Priced>, req: &AuthorizeRequest, currency: Currency, reason: DenyReason) -> AuthorizeView {
    let mut v = view(priced, &req.call_id, currency, priced.map(|p| p.to.as_str()).unwrap_or(req.to.as_str()));
    v.reason = Some(reason.as_str().into());
    v
}

/// Answers what a call would cost and who would pay, changing nothing.
pub fn quote(engine: &Engine, org_id: &str, req: &AuthorizeRequest, now: Timestamp) -> Result<AuthorizeView> {
    engine.read(|tx| {
        let org = crate::org(tx, org_id)?;
        let currency = Currency::parse(&org.currency)?;
        let spendable: i64 = tx
            .open_lots(org_id)?
            .iter()
            .map(|l| if l.expired || l.expires_at <= now { 0 } else { l.remaining_minor - l.reserved_minor })
            .sum();
        let requested = req.requested_seconds.unwrap_or(engine.config.default_requested_seconds);
        match prepare(engine, tx, &org, req, Month::of(now), true)? {
            Err((reason, _)) => Ok(deny_view(None, req, currency, reason)),
            Ok(p) if p.emergency => Ok(allow_view(
                &p,
                &req.call_id,
                &Grant { granted_seconds: requested.max(1), plan_minutes: 0, credit_seconds: 0, money_minor: 0 },
            )),
            Ok(p) => Ok(match decide(&p, requested, spendable, (0, 0)) {
                Ok(g) => allow_view(&p, &req.call_id, &g),
                Err(reason) => deny_view(Some(&p), req, currency, reason),
            }),
        }
    })
}

fn record_denial(
    tx: &mut dyn Tx,
    books: &mut Books,
    req: &AuthorizeRequest,
    user: Option<&UserRow>,
    reason: DenyReason,
    at: Timestamp,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<()> {
    tx.insert_denial(&DenialRow {
        seq: 0,
        org_id: books.org.org_id.clone(),
        at,
        call_id: req.call_id.clone(),
        call_type: req.call_type.clone(),
        user_id: user.map(|u| u.user_id.clone()),
        to_number: req.to.clone(),
        reason: reason.as_str().into(),
    })?;
    if reason == DenyReason::InsufficientFunds {
        books.after_change(tx, now, fx, true)?;
        books.save(tx)?;
    }
    Ok(())
}

pub(crate) fn authorize(
    engine: &Engine,
    tx: &mut dyn Tx,
    req: &AuthorizeRequest,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<AuthorizeView> {
    authorize_at(engine, tx, req, now, now, fx).map(|(v, _)| v)
}

/// Authorizes a call that started at `started` (now for real-time calls, the CDR's
/// start for imports). Returns the view and, when allowed, the reservation.
pub(crate) fn authorize_at(
    engine: &Engine,
    tx: &mut dyn Tx,
    req: &AuthorizeRequest,
    started: Timestamp,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<(AuthorizeView, Option<ReservationRow>)> {
    let mut books = Books::load(tx, &req.org, now, fx)?;
    // Every CDR, real-time or imported, has its reservation: one lookup tells.
    if tx.get_reservation(&req.org, &req.call_id)?.is_some() {
        return Err(err!(
            ErrorCode::DuplicateCallId,
            "call id '{}' was already used in this organization",
            req.call_id
        ));
    }
    let month = Month::of(started);
    let org = books.org.clone();
    let currency = books.currency;
    let requested = req.requested_seconds.unwrap_or(engine.config.default_requested_seconds).max(1);
    let mut priced = match prepare(engine, tx, &org, req, month, false)? {
        Ok(p) => p,
        Err((reason, user)) => {
            record_denial(tx, &mut books, req, user.as_ref(), reason, started, now, fx)?;
            return Ok((deny_view(None, req, currency, reason), None));
        }
    };
    let grant = if priced.emergency {
        Grant { granted_seconds: requested, plan_minutes: 0, credit_seconds: 0, money_minor: 0 }
    } else {
        match decide(&priced, requested, books.spendable(now), (0, 0)) {
            Ok(g) => g,
            Err(reason) => {
                let user = priced.user.clone();
                record_denial(tx, &mut books, req, user.as_ref(), reason, started, now, fx)?;
                return Ok((deny_view(Some(&priced), req, currency, reason), None));
            }
        }
    };
    if let Some(p) = priced.pool.as_mut() {
        p.row.reserved_minutes += grant.plan_minutes;
        tx.put_pool_usage(&p.row)?;
    }
    let earmarks = books.reserve(grant.money_minor, now)?;
    if let Some(u) = &priced.user {
        adjust_spend(tx, &org.org_id, &u.user_id, month.0, grant.money_minor, 0)?;
    }
    let rate = priced.rate.as_ref();
    let res = ReservationRow {
        org_id: org.org_id.clone(),
        call_id: req.call_id.clone(),
        call_type: priced.call_type.as_str().into(),
        user_id: priced.user.as_ref().map(|u| u.user_id.clone()),
        from_number: priced.from.clone(),
        to_number: priced.to.clone(),
        state: "pending".into(),
        created_at: started,
        updated_at: now,
        expires_at: now
            + jiff::SignedDuration::from_secs(i64::from(grant.granted_seconds) + engine.config.grace_seconds),
        granted_seconds: i64::from(grant.granted_seconds),
        used_seconds: 0,
        plan_scope: priced.pool.as_ref().map(|p| p.key.scope.as_str().to_string()),
        plan_kind: priced.pool.as_ref().map(|p| p.key.kind.as_str().to_string()),
        plan_month: priced.pool.as_ref().map(|_| month.0),
        plan_minutes: grant.plan_minutes,
        money_minor: grant.money_minor,
        earmarks,
        spend_month: month.0,
        rate_prefix: rate.map(|r| r.prefix.clone()),
        rate_name: rate.map(|r| r.name.clone()),
        rate_per_minute: rate.map(|r| r.per_minute.to_string()),
        connection_fee_minor: rate.map(|r| r.connection_fee_minor).unwrap_or(0),
        increment_seconds: i64::from(rate.map(|r| r.increment_seconds).unwrap_or(60)),
        domestic: priced.route.as_ref().is_some_and(|r| r.domestic) || priced.emergency,
        dest_country: priced.dest_country.map(|c| c.to_string()),
        emergency: priced.emergency,
    };
    tx.insert_reservation(&res)?;
    books.after_change(tx, now, fx, false)?;
    books.save(tx)?;
    Ok((allow_view(&priced, &req.call_id, &grant), Some(res)))
}

fn rate_of(res: &ReservationRow) -> Result<Option<Rate>> {
    match (&res.rate_prefix, &res.rate_per_minute) {
        (Some(prefix), Some(p)) => Ok(Some(Rate {
            prefix: prefix.clone(),
            name: res.rate_name.clone().unwrap_or_default(),
            connection_fee_minor: res.connection_fee_minor,
            per_minute: Decimal::from_str_exact(p).map_err(|e| internal(format!("stored rate '{p}': {e}")))?,
            increment_seconds: stored_seconds(res.increment_seconds, "billing increment")?,
            premium: false,
        })),
        _ => Ok(None),
    }
}

fn pending(tx: &mut dyn Tx, org_id: &str, call_id: &str) -> Result<ReservationRow> {
    tx.get_reservation(org_id, call_id)?
        .ok_or_else(|| err!(ErrorCode::UnknownCall, "no call '{call_id}' was authorized in this organization"))
}

/// Rebuilds the decision inputs for a call in progress.
fn reprice(engine: &Engine, tx: &mut dyn Tx, org: &OrgRow, res: &ReservationRow) -> Result<Priced> {
    let currency = Currency::parse(&org.currency)?;
    let user = match &res.user_id {
        Some(u) => tx.get_user(&org.org_id, u)?,
        None => None,
    };
    let credits = match (&user, CallType::parse(&res.call_type)?) {
        (_, CallType::TollFreeInbound) => Ok(()),
        (Some(u), _) if call_user(engine, tx, u)?.licenses.contains(&Sku::CommunicationsCredits) => Ok(()),
        _ => Err(DenyReason::NoCreditsLicense),
    };
    let month = Month(res.spend_month);
    let pool = match (&res.plan_scope, &res.plan_kind, res.plan_month) {
        (Some(scope), Some(kind), Some(m)) => {
            let key = PoolKey { scope: PoolScope::parse(scope)?, kind: PoolKind::parse(kind)? };
            Some(load_pool(engine, tx, &org.org_id, key, Month(m))?)
        }
        _ => None,
    };
    let spend = match &user {
        Some(u) if credits.is_ok() => match u.spend_limit_minor {
            Some(limit) => Some((
                limit,
                tx.get_user_spend(&org.org_id, &u.user_id, month.0)?
                    .unwrap_or_else(|| UserSpendRow::empty(&org.org_id, &u.user_id, month.0)),
            )),
            None => None,
        },
        _ => None,
    };
    let rate = rate_of(res)?;
    Ok(Priced {
        call_type: CallType::parse(&res.call_type)?,
        user,
        from: res.from_number.clone(),
        to: res.to_number.clone(),
        emergency: res.emergency,
        route: Some(Route { pool: pool.as_ref().map(|p| p.key), credits, domestic: res.domestic }),
        rate,
        pool,
        spend,
        currency,
        dest_country: res.dest_country.as_deref().and_then(|c| Country::parse(c).ok()),
    })
}

/// A stored count of seconds as the `u32` the protocol speaks; a row that does not fit
/// is corrupt, reported as an internal error rather than truncated.
fn stored_seconds(value: i64, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| internal(format!("stored {what} {value} is out of range")))
}

/// The grant a reservation holds, as the core's decision and settlement see it.
fn held_grant(res: &ReservationRow) -> Result<Grant> {
    let granted_seconds = stored_seconds(res.granted_seconds, "granted seconds")?;
    let mut g =
        Grant { granted_seconds, plan_minutes: res.plan_minutes, credit_seconds: 0, money_minor: res.money_minor };
    g.credit_seconds = granted_seconds - g.plan_seconds();
    Ok(g)
}

/// Moves a call's reservation to `target`: pool minutes, money (only the increase is
/// reserved, on live lots; a decrease gives back live money, the latest-expiring
/// first, while money on expired lots stays to pay for the call) and the user's spend.
fn move_reservation(
    tx: &mut dyn Tx,
    books: &mut Books,
    priced: &mut Priced,
    res: &mut ReservationRow,
    target: &Grant,
    now: Timestamp,
) -> Result<()> {
    let minutes_delta = target.plan_minutes - res.plan_minutes;
    if minutes_delta != 0 {
        let p = priced.pool.as_mut().ok_or_else(|| internal("a reservation holds plan minutes without its pool"))?;
        p.row.reserved_minutes += minutes_delta;
        tx.put_pool_usage(&p.row)?;
    }
    let held = res.money_minor;
    let money = if target.money_minor > held {
        res.earmarks = books.reserve_more(&res.earmarks, target.money_minor - held, now)?;
        target.money_minor
    } else if target.money_minor < held {
        let (kept, released) = books.release(&res.earmarks, held - target.money_minor, now)?;
        res.earmarks = kept;
        held - released
    } else {
        held
    };
    if let Some(uid) = &res.user_id {
        adjust_spend(tx, &books.org.org_id, uid, res.spend_month, money - held, 0)?;
    }
    res.granted_seconds = i64::from(target.granted_seconds);
    res.plan_minutes = target.plan_minutes;
    res.money_minor = money;
    Ok(())
}

/// Reports usage and asks for more. Seconds already used are never taken back: the
/// reservation never ends below `max(used, what it holds)` because of today's limits.
/// Asking for no more than it holds shrinks it to what was asked for, paid the way it
/// was granted (a part of what it holds); asking for more grows it only when more can
/// be paid, and otherwise keeps everything and answers 0 seconds with the reason.
pub(crate) fn update(
    engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    call_id: &str,
    used_seconds: u32,
    requested_seconds: u32,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<UpdateView> {
    if requested_seconds > MAX_REQUESTED_SECONDS {
        return Err(err!(ErrorCode::InvalidInput, "requested_seconds must be at most {MAX_REQUESTED_SECONDS}"));
    }
    let mut books = Books::load(tx, org_id, now, fx)?;
    let mut res = pending(tx, org_id, call_id)?;
    if res.state != "pending" {
        return Err(err!(ErrorCode::CallAlreadyEnded, "call '{call_id}' has already ended ({})", res.state));
    }
    let held = held_grant(&res)?;
    let current = held.granted_seconds;
    // Usage is cumulative: a lower figure than already reported is ignored.
    let used = used_seconds.max(stored_seconds(res.used_seconds, "used seconds")?).min(current);
    res.used_seconds = i64::from(used);
    res.updated_at = now;
    let wanted = used.saturating_add(requested_seconds);
    let mut reason = None;
    if res.emergency {
        res.granted_seconds = i64::from(wanted.max(current));
    } else if requested_seconds > 0 {
        let org = books.org.clone();
        let mut priced = reprice(engine, tx, &org, &res)?;
        if wanted <= current {
            let target = held.first(wanted, priced.rate.as_ref(), books.currency);
            move_reservation(tx, &mut books, &mut priced, &mut res, &target, now)?;
        } else {
            match decide(&priced, wanted, books.spendable(now), (res.plan_minutes, res.money_minor)) {
                Ok(g) if g.granted_seconds > current && g.plan_minutes >= res.plan_minutes => {
                    move_reservation(tx, &mut books, &mut priced, &mut res, &g, now)?;
                }
                Ok(_) => reason = Some(shortfall(&priced, books.spendable(now))),
                Err(r) => reason = Some(r),
            }
        }
        if reason == Some(DenyReason::InsufficientFunds) {
            books.after_change(tx, now, fx, true)?;
        }
    }
    let total = stored_seconds(res.granted_seconds, "granted seconds")?;
    let left = total
        .checked_sub(used)
        .ok_or_else(|| internal(format!("call {call_id} would hold {total} s with {used} s used")))?;
    res.expires_at = now
        .checked_add(jiff::SignedDuration::from_secs(i64::from(left) + engine.config.grace_seconds))
        .map_err(|e| internal(format!("reservation expiry: {e}")))?;
    tx.update_reservation(&res)?;
    books.after_change(tx, now, fx, false)?;
    books.save(tx)?;
    Ok(UpdateView {
        call_id: call_id.into(),
        granted_seconds: if reason.is_some() { 0 } else { left },
        used_seconds: used,
        total_granted_seconds: total,
        reason: reason.map(|r| r.as_str().to_string()),
    })
}

/// Why a call could not get more time although it keeps what it has.
fn shortfall(priced: &Priced, spendable: i64) -> DenyReason {
    match priced.route.as_ref().map(|r| r.credits) {
        Some(Err(DenyReason::NoCreditsLicense)) if priced.pool.is_some() => DenyReason::PlanMinutesExhausted,
        Some(Err(r)) => r,
        _ => match &priced.spend {
            Some((limit, s)) if limit - s.spent_minor - s.reserved_minor < spendable => DenyReason::SpendLimitReached,
            _ => DenyReason::InsufficientFunds,
        },
    }
}

/// Moves a user's monthly credits spend: money held by open calls and money spent.
fn adjust_spend(tx: &mut dyn Tx, org_id: &str, user_id: &str, month: i32, reserved: i64, spent: i64) -> Result<()> {
    if reserved == 0 && spent == 0 {
        return Ok(());
    }
    let mut s =
        tx.get_user_spend(org_id, user_id, month)?.unwrap_or_else(|| UserSpendRow::empty(org_id, user_id, month));
    let overflow = || err!(ErrorCode::AmountOverflow, "the monthly credits spend of user {user_id} overflows");
    s.reserved_minor = s.reserved_minor.checked_add(reserved).ok_or_else(overflow)?;
    s.spent_minor = s.spent_minor.checked_add(spent).ok_or_else(overflow)?;
    tx.put_user_spend(&s)
}

pub(crate) fn end(
    engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    call_id: &str,
    duration_seconds: u32,
    imported: bool,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<EndView> {
    let mut books = Books::load(tx, org_id, now, fx)?;
    let res = pending(tx, org_id, call_id)?;
    if res.state != "pending" {
        // A repeated end answers the first result and changes nothing.
        let cdr =
            tx.get_cdr(org_id, call_id)?.ok_or_else(|| internal(format!("call {call_id} ended without a CDR")))?;
        let mut v = EndView::from(&cdr);
        v.state = res.state;
        return Ok(v);
    }
    let state = if duration_seconds == 0 { "released" } else { "settled" };
    let v = settle_call(engine, tx, &mut books, res, duration_seconds, state, imported, now, fx)?;
    books.save(tx)?;
    Ok(v)
}

pub(crate) fn timeout(
    engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    call_id: &str,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<Outcome> {
    let mut books = Books::load(tx, org_id, now, fx)?;
    let res = pending(tx, org_id, call_id)?;
    if res.state != "pending" || res.expires_at > now {
        return Ok(Outcome::Count(0));
    }
    let used = stored_seconds(res.used_seconds, "used seconds")?;
    settle_call(engine, tx, &mut books, res, used, "expired", false, now, fx)?;
    books.save(tx)?;
    Ok(Outcome::Count(1))
}

/// Settles a pending reservation for `duration` seconds: pool minutes, money, the
/// user's spend, the CDR and the pool notices, all in this transaction.
fn settle_call(
    engine: &Engine,
    tx: &mut dyn Tx,
    books: &mut Books,
    mut res: ReservationRow,
    duration: u32,
    state: &str,
    imported: bool,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<EndView> {
    let org_id = books.org.org_id.clone();
    let rate = rate_of(&res)?;
    let grant = held_grant(&res)?;
    let s = charging::settle(&grant, rate.as_ref(), books.currency, duration);
    if let (Some(scope), Some(kind), Some(month)) = (&res.plan_scope, &res.plan_kind, res.plan_month) {
        let key = PoolKey { scope: PoolScope::parse(scope)?, kind: PoolKind::parse(kind)? };
        let mut p = load_pool(engine, tx, &org_id, key, Month(month))?;
        let before = p.row.used_minutes;
        p.row.reserved_minutes -= res.plan_minutes;
        p.row.used_minutes += s.plan_minutes;
        for pct in crossed_thresholds(p.size, before, p.row.used_minutes) {
            let flag = if pct == 80 { &mut p.row.notified_80 } else { &mut p.row.notified_100 };
            if !*flag {
                *flag = true;
                notices::write(
                    tx,
                    &org_id,
                    POOL_THRESHOLD,
                    now,
                    format!(
                        "{} {} minute pool passed {pct}% for {}",
                        scope_name(engine, scope),
                        kind,
                        Month(month).label()
                    ),
                    format!(
                        "The {kind} calling minute pool for {} has used {} of {} minutes ({}%) in {}.{}",
                        scope_name(engine, scope),
                        p.row.used_minutes,
                        p.size,
                        commcredits_core::pools::percent_used(p.size, p.row.used_minutes),
                        Month(month).label(),
                        if pct >= 100 {
                            " Further calls are paid from Communications Credits where users hold that license, or refused."
                        } else {
                            ""
                        }
                    ),
                    json!({"pool": kind, "country": scope, "month": Month(month).label(), "used": p.row.used_minutes, "size": p.size, "percent": pct}),
                )?;
            }
        }
        tx.put_pool_usage(&p.row)?;
    }
    books.settle(
        tx,
        &res.earmarks,
        s.charge_minor,
        &res.call_id,
        now,
        format!("call {} {} to {}", res.call_id, res.call_type, res.to_number),
    )?;
    if let Some(uid) = &res.user_id {
        adjust_spend(tx, &org_id, uid, res.spend_month, -res.money_minor, s.charge_minor)?;
    }
    let funding = if res.emergency { Funding::Emergency } else { Funding::of(s.plan_minutes, s.credit_seconds) };
    let cdr = CdrRow {
        org_id: org_id.clone(),
        call_id: res.call_id.clone(),
        usage_id: new_id(),
        call_type: res.call_type.clone(),
        user_id: res.user_id.clone(),
        from_number: res.from_number.clone(),
        to_number: res.to_number.clone(),
        dest_country: res.dest_country.clone(),
        domestic: res.domestic,
        start_at: res.created_at,
        end_at: res
            .created_at
            .checked_add(jiff::SignedDuration::from_secs(i64::from(duration)))
            .map_err(|e| err!(ErrorCode::InvalidInput, "a call of {duration} s ends beyond the calendar: {e}"))?,
        duration_seconds: i64::from(duration),
        charged_seconds: i64::from(s.charged_seconds),
        overrun_seconds: i64::from(s.overrun_seconds),
        plan_minutes: s.plan_minutes,
        plan_kind: res.plan_kind.clone(),
        charge_minor: s.charge_minor,
        connection_fee_minor: if s.charge_minor > 0 { res.connection_fee_minor.min(s.charge_minor) } else { 0 },
        currency: books.currency.code().into(),
        funding: funding.as_str().into(),
        rate_name: if res.emergency { Some("Emergency".into()) } else { res.rate_name.clone() },
        rate_per_minute: res.rate_per_minute.clone(),
        source: if imported { "import".into() } else { "realtime".into() },
    };
    tx.insert_cdr(&cdr)?;
    res.state = state.into();
    res.used_seconds = i64::from(s.charged_seconds);
    res.updated_at = now;
    tx.update_reservation(&res)?;
    books.after_change(tx, now, fx, false)?;
    let mut v = EndView::from(&cdr);
    v.state = state.into();
    Ok(v)
}

fn scope_name(engine: &Engine, scope: &str) -> String {
    if scope == "*" {
        return "organization-wide".into();
    }
    Country::parse(scope)
        .ok()
        .and_then(|c| engine.catalog().country_info(c))
        .map(|i| i.name.clone())
        .unwrap_or_else(|| scope.to_string())
}

/// Authorizes and settles a call in one step (offline charging of a CDR).
pub(crate) fn charge_offline(
    engine: &Engine,
    tx: &mut dyn Tx,
    req: &AuthorizeRequest,
    started: Timestamp,
    duration: u32,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<std::result::Result<EndView, String>> {
    let (view, res) = authorize_at(engine, tx, req, started, now, fx)?;
    let Some(res) = res else {
        return Ok(Err(view.reason.unwrap_or_else(|| "denied".into())));
    };
    let mut books = Books::load(tx, &req.org, now, fx)?;
    let v = settle_call(
        engine,
        tx,
        &mut books,
        res,
        duration,
        if duration == 0 { "released" } else { "settled" },
        true,
        now,
        fx,
    )?;
    books.save(tx)?;
    Ok(Ok(v))
}
