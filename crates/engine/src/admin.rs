//! Organizations, users, subscriptions and licenses, numbers, payment methods.

use crate::payments::CardToken;
use crate::{new_id, org, Engine, Outcome};
use commcredits_core::catalog::Sku;
use commcredits_core::charging::DialOutPolicy;
use commcredits_core::money::Currency;
use commcredits_core::phone::E164;
use commcredits_core::{err, ErrorCode, Result, Timestamp};
use commcredits_store::{AccountRow, NumberRow, OrgRow, PaymentMethodRow, Tx, UserRow};

/// Parses an e-mail-like address (user principal names and notice recipients).
pub fn parse_email(text: &str) -> Result<String> {
    let t = text.trim();
    let ok = match t.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !t.chars().any(|c| c.is_whitespace() || c == ',' || c == ';')
                && !domain.contains('@')
        }
        None => false,
    };
    if !ok || t.len() > 254 {
        return Err(err!(ErrorCode::InvalidEmail, "'{text}' is not an e-mail address"));
    }
    Ok(t.to_ascii_lowercase())
}

fn non_empty(what: &str, text: &str) -> Result<String> {
    let t = text.trim();
    if t.is_empty() || t.len() > 200 {
        return Err(err!(ErrorCode::InvalidInput, "{what} must be 1 to 200 characters"));
    }
    Ok(t.to_string())
}

pub(crate) fn create_org(
    engine: &Engine,
    tx: &mut dyn Tx,
    name: &str,
    currency: &str,
    country: &str,
    emails: &[String],
    now: Timestamp,
) -> Result<Outcome> {
    let name = non_empty("name", name)?;
    let cur = Currency::parse(currency)?;
    let country = engine.catalog().country(country)?.country;
    let emails = emails.iter().map(|e| parse_email(e)).collect::<Result<Vec<_>>>()?;
    // Refuse a currency without decks early: no call could ever be priced.
    engine.deck(commcredits_core::catalog::DeckKind::Outbound, cur)?;
    let id = new_id();
    tx.insert_org(&OrgRow {
        org_id: id.clone(),
        name,
        currency: cur.code().into(),
        country: country.to_string(),
        notification_emails: emails,
        low_balance_minor: None,
        suspended: false,
        created_at: now,
        disabled_notices: vec![],
    })?;
    tx.insert_account(&AccountRow {
        org_id: id.clone(),
        currency: cur.code().into(),
        balance_minor: 0,
        reserved_minor: 0,
        ar_enabled: false,
        ar_amount_minor: 0,
        ar_threshold_minor: 0,
        ar_payment_method_id: None,
        ar_armed: true,
        exhausted_notified: false,
        low_balance_notified: false,
    })?;
    Ok(Outcome::Created { id })
}

pub(crate) fn update_org(
    _engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    emails: Option<&[String]>,
    low_balance: Option<&Option<String>>,
    suspended: Option<bool>,
    disabled_notices: Option<&[String]>,
) -> Result<Outcome> {
    let mut o = org(tx, org_id)?;
    if let Some(kinds) = disabled_notices {
        for k in kinds {
            if !crate::notices::KINDS.contains(&k.as_str()) {
                return Err(err!(
                    ErrorCode::InvalidInput,
                    "unknown notice kind '{k}' (known: {})",
                    crate::notices::KINDS.join(", ")
                ));
            }
        }
        let mut kinds = kinds.to_vec();
        kinds.sort();
        kinds.dedup();
        o.disabled_notices = kinds;
    }
    if let Some(emails) = emails {
        o.notification_emails = emails.iter().map(|e| parse_email(e)).collect::<Result<Vec<_>>>()?;
    }
    if let Some(level) = low_balance {
        let cur = Currency::parse(&o.currency)?;
        o.low_balance_minor = match level {
            Some(text) => Some(cur.parse_positive_major(text)?),
            None => None,
        };
    }
    if let Some(s) = suspended {
        o.suspended = s;
    }
    tx.update_org(&o)?;
    Ok(Outcome::Done)
}

/// Finds a user by id or UPN.
pub fn find_user(tx: &mut dyn Tx, org_id: &str, text: &str) -> Result<UserRow> {
    if let Some(u) = tx.get_user(org_id, text)? {
        return Ok(u);
    }
    if text.contains('@') {
        if let Some(u) = tx.get_user_by_upn(org_id, &text.trim().to_ascii_lowercase())? {
            return Ok(u);
        }
    }
    Err(err!(ErrorCode::UserNotFound, "no user '{text}' in this organization"))
}

pub(crate) fn create_user(
    engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    upn: &str,
    display_name: &str,
    usage_location: &str,
    phone_number: Option<&str>,
    now: Timestamp,
) -> Result<Outcome> {
    org(tx, org_id)?;
    let upn = parse_email(upn)?;
    let display_name = non_empty("display name", display_name)?;
    let location = engine.catalog().country(usage_location)?.country;
    let phone = phone_number.map(E164::parse).transpose()?;
    if tx.get_user_by_upn(org_id, &upn)?.is_some() {
        return Err(err!(ErrorCode::DuplicateUpn, "a user with UPN '{upn}' already exists"));
    }
    let id = new_id();
    if let Some(p) = &phone {
        claim_number(tx, org_id, &p.to_string(), "user", Some(&id), now)?;
    }
    tx.insert_user(&UserRow {
        org_id: org_id.into(),
        user_id: id.clone(),
        upn,
        display_name,
        usage_location: location.to_string(),
        phone_number: phone.map(|p| p.to_string()),
        dial_out: DialOutPolicy::International.as_str().into(),
        conference_dial_out: DialOutPolicy::International.as_str().into(),
        spend_limit_minor: None,
        created_at: now,
    })?;
    Ok(Outcome::Created { id })
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct UserChanges {
    pub org: String,
    pub user: String,
    pub display_name: Option<String>,
    pub usage_location: Option<String>,
    pub dial_out: Option<String>,
    pub conference_dial_out: Option<String>,
    /// `Some(None)` removes the limit.
    pub spend_limit: Option<Option<String>>,
}

pub(crate) fn update_user(engine: &Engine, tx: &mut dyn Tx, c: &UserChanges) -> Result<Outcome> {
    let o = org(tx, &c.org)?;
    let mut u = find_user(tx, &c.org, &c.user)?;
    if let Some(n) = &c.display_name {
        u.display_name = non_empty("display name", n)?;
    }
    if let Some(l) = &c.usage_location {
        u.usage_location = engine.catalog().country(l)?.country.to_string();
    }
    if let Some(p) = &c.dial_out {
        u.dial_out = DialOutPolicy::parse(p)?.as_str().into();
    }
    if let Some(p) = &c.conference_dial_out {
        u.conference_dial_out = DialOutPolicy::parse(p)?.as_str().into();
    }
    if let Some(limit) = &c.spend_limit {
        let cur = Currency::parse(&o.currency)?;
        u.spend_limit_minor = match limit {
            Some(text) => {
                let v = cur.parse_major(text)?;
                if v < 0 {
                    return Err(err!(ErrorCode::InvalidAmount, "a spend limit cannot be negative"));
                }
                Some(v)
            }
            None => None,
        };
    }
    tx.update_user(&u)?;
    user_outcome(tx, &u)
}

/// The user as a change left it, read in the same transaction.
fn user_outcome(tx: &mut dyn Tx, u: &UserRow) -> Result<Outcome> {
    let licenses = tx.user_licenses(&u.org_id, &u.user_id)?;
    Ok(Outcome::User(crate::views::UserView::new(u, licenses)))
}

pub(crate) fn add_subscription(
    _engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    sku: &str,
    quantity: i64,
) -> Result<Outcome> {
    org(tx, org_id)?;
    let sku = Sku::parse(sku)?;
    if quantity <= 0 || quantity > 1_000_000 {
        return Err(err!(ErrorCode::InvalidInput, "quantity must be 1 to 1000000"));
    }
    let current =
        tx.list_subscriptions(org_id)?.into_iter().find(|(s, _)| s == sku.as_str()).map(|(_, q)| q).unwrap_or(0);
    tx.set_subscription(org_id, sku.as_str(), current + quantity)?;
    Ok(Outcome::Count((current + quantity) as usize))
}

fn parse_skus(skus: &[String]) -> Result<Vec<Sku>> {
    let mut out: Vec<Sku> = skus.iter().map(|s| Sku::parse(s)).collect::<Result<_>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

fn held(tx: &mut dyn Tx, org_id: &str, user_id: &str) -> Result<Vec<Sku>> {
    tx.user_licenses(org_id, user_id)?.iter().map(|s| Sku::parse(s)).collect()
}

/// Checks seats for the licenses `adding` (sku -> number of new assignments).
fn check_seats(tx: &mut dyn Tx, org_id: &str, adding: &[(Sku, i64)]) -> Result<()> {
    let subs = tx.list_subscriptions(org_id)?;
    for (sku, n) in adding {
        if *n == 0 {
            continue;
        }
        let quantity = subs.iter().find(|(s, _)| s == sku.as_str()).map(|(_, q)| *q).unwrap_or(0);
        let used = tx.seats_used(org_id, sku.as_str())?;
        if used + n > quantity {
            return Err(err!(
                ErrorCode::NoFreeSeat,
                "no free seat of {sku}: {quantity} purchased, {used} assigned, {n} more requested"
            ));
        }
    }
    Ok(())
}

/// Replaces a user's licenses with exactly `skus`.
pub(crate) fn set_licenses(
    engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    user: &str,
    skus: &[String],
) -> Result<Outcome> {
    org(tx, org_id)?;
    let u = find_user(tx, org_id, user)?;
    let wanted = parse_skus(skus)?;
    engine.catalog().check_requirements(&wanted)?;
    let current = held(tx, org_id, &u.user_id)?;
    let adding: Vec<(Sku, i64)> = wanted.iter().filter(|s| !current.contains(s)).map(|s| (*s, 1)).collect();
    check_seats(tx, org_id, &adding)?;
    let names: Vec<String> = wanted.iter().map(|s| s.as_str().to_string()).collect();
    tx.set_user_licenses(org_id, &u.user_id, &names)?;
    user_outcome(tx, &u)
}

/// Assigns (or removes) one SKU for many users, all or nothing.
pub(crate) fn change_license(
    engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    sku: &str,
    users: &[String],
    assign: bool,
) -> Result<Outcome> {
    org(tx, org_id)?;
    let sku = Sku::parse(sku)?;
    if users.is_empty() {
        return Err(err!(ErrorCode::InvalidInput, "name at least one user"));
    }
    let mut plans = Vec::with_capacity(users.len());
    let mut new_assignments = 0i64;
    for text in users {
        let u = find_user(tx, org_id, text)?;
        // The same user named twice (by id and by UPN) counts once.
        if plans.iter().any(|(id, _)| *id == u.user_id) {
            continue;
        }
        let mut set = held(tx, org_id, &u.user_id)?;
        let had = set.contains(&sku);
        if assign && !had {
            set.push(sku);
            new_assignments += 1;
        } else if !assign && had {
            set.retain(|s| *s != sku);
        }
        set.sort();
        set.dedup();
        engine
            .catalog()
            .check_requirements(&set)
            .map_err(|e| err!(e.code, "{} ({}): {}", u.upn, u.user_id, e.message))?;
        plans.push((u.user_id.clone(), set));
    }
    if assign {
        check_seats(tx, org_id, &[(sku, new_assignments)])?;
    }
    for (user_id, set) in &plans {
        let names: Vec<String> = set.iter().map(|s| s.as_str().to_string()).collect();
        tx.set_user_licenses(org_id, user_id, &names)?;
    }
    Ok(Outcome::Count(plans.len()))
}

fn claim_number(
    tx: &mut dyn Tx,
    org_id: &str,
    number: &str,
    kind: &str,
    user: Option<&str>,
    now: Timestamp,
) -> Result<()> {
    if tx.get_number(org_id, number)?.is_some() {
        return Err(err!(ErrorCode::DuplicateNumber, "{number} is already in use in this organization"));
    }
    tx.insert_number(&NumberRow {
        org_id: org_id.into(),
        number: number.into(),
        kind: kind.into(),
        user_id: user.map(str::to_string),
        created_at: now,
    })
}

pub(crate) fn add_number(
    _engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    number: &str,
    kind: &str,
    user: Option<&str>,
    now: Timestamp,
) -> Result<Outcome> {
    org(tx, org_id)?;
    let n = E164::parse(number)?;
    if !matches!(kind, "user" | "service" | "toll_free") {
        return Err(err!(ErrorCode::InvalidInput, "number kind must be user, service or toll_free, not '{kind}'"));
    }
    let user_id = match user {
        Some(u) => Some(find_user(tx, org_id, u)?.user_id),
        None => None,
    };
    claim_number(tx, org_id, &n.to_string(), kind, user_id.as_deref(), now)?;
    if let Some(uid) = &user_id {
        let mut u = find_user(tx, org_id, uid)?;
        u.phone_number = Some(n.to_string());
        tx.update_user(&u)?;
    }
    Ok(Outcome::Created { id: n.to_string() })
}

pub(crate) fn add_card(
    tx: &mut dyn Tx,
    org_id: &str,
    t: &CardToken,
    holder: Option<&str>,
    now: Timestamp,
) -> Result<Outcome> {
    org(tx, org_id)?;
    let id = new_id();
    tx.insert_payment_method(&PaymentMethodRow {
        org_id: org_id.into(),
        pm_id: id.clone(),
        kind: "card".into(),
        brand: Some(t.brand.clone()),
        last4: Some(t.last4.clone()),
        exp_month: Some(i64::from(t.exp_month)),
        exp_year: Some(i64::from(t.exp_year)),
        holder: holder.map(str::to_string),
        token: Some(t.token.clone()),
        agreement_number: None,
        created_at: now,
    })?;
    Ok(Outcome::Created { id })
}

pub(crate) fn add_agreement(tx: &mut dyn Tx, org_id: &str, agreement: &str, now: Timestamp) -> Result<Outcome> {
    org(tx, org_id)?;
    let agreement = non_empty("agreement number", agreement)?;
    let id = new_id();
    tx.insert_payment_method(&PaymentMethodRow {
        org_id: org_id.into(),
        pm_id: id.clone(),
        kind: "enterprise_agreement".into(),
        brand: None,
        last4: None,
        exp_month: None,
        exp_year: None,
        holder: None,
        token: None,
        agreement_number: Some(agreement),
        created_at: now,
    })?;
    Ok(Outcome::Created { id })
}

pub(crate) fn add_webhook(
    engine: &Engine,
    tx: &mut dyn Tx,
    org_id: &str,
    url: &str,
    now: Timestamp,
) -> Result<Outcome> {
    org(tx, org_id)?;
    let url = url.trim();
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= 2000
        && !url.contains(|c: char| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(err!(ErrorCode::InvalidInput, "a webhook URL is http:// or https:// and at most 2000 characters"));
    }
    // The address is checked (resolved) before the command, outside the transaction,
    // and again before every delivery; here only the form.
    if url.parse::<ureq::http::Uri>().map_or(true, |u| u.host().is_none_or(str::is_empty)) {
        return Err(err!(ErrorCode::InvalidInput, "the webhook URL is not a valid URL with a host"));
    }
    if tx.list_webhooks(org_id)?.len() >= 20 {
        return Err(err!(ErrorCode::InvalidInput, "at most 20 webhooks per organization"));
    }
    let bytes: [u8; 32] = rand::random();
    let secret = format!("whsec_{}", hex::encode(bytes));
    let webhook_id = new_id();
    let sealed = crate::delivery::seal_webhook_secret(engine.config.secret_key.as_ref(), org_id, &webhook_id, &secret)?;
    let row = commcredits_store::WebhookRow {
        org_id: org_id.into(),
        webhook_id,
        url: url.into(),
        secret: sealed,
        created_at: now,
    };
    tx.insert_webhook(&row)?;
    Ok(Outcome::Webhook(crate::views::NewWebhook {
        webhook: crate::views::WebhookView::from(&row),
        secret,
        secret_note: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(parse_email(" Ada@Example.com ").unwrap(), "ada@example.com");
        for bad in ["ada", "ada@", "@x.com", "a b@x.com", "a@x", "a@.com", "a@x.com."] {
            assert_eq!(parse_email(bad).unwrap_err().code, ErrorCode::InvalidEmail, "{bad}");
        }
    }
}
