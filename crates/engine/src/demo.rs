//! `commcredits demo`: seeds a demo organization and runs a month of realistic traffic
//! through the same engine, then reports what happened. Deterministic: the same start
//! time gives the same month.
//!
//! The organization: 36 users in the US, GB and DE with calling plans, a toll-free
//! number, credits with auto-recharge on a card that expires in the middle of the
//! month (so a recharge fails and the admin reacts), a migrated lot that expires
//! during the month, a user with a monthly spend limit and one limited to domestic calls.

use crate::calls::AuthorizeRequest;
use crate::payments::CardInput;
use crate::views::{CreditsView, OrderView};
use crate::{Command, Engine, Outcome};
use commcredits_core::money::Currency;
use commcredits_core::pools::Month;
use commcredits_core::{err, ErrorCode, Result, Timestamp};
use jiff::{SignedDuration, Span};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Events of at most this span of simulated time share one transaction.
const BATCH_WINDOW_SECONDS: i64 = 600;
const BATCH_MAX: usize = 500;

#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    pub org_id: String,
    pub name: String,
    pub from: String,
    pub to: String,
    pub users: usize,
    pub calls: usize,
    pub denied: usize,
    pub by_funding: BTreeMap<String, usize>,
    pub credits_spend_by_type: BTreeMap<String, i64>,
    pub plan_minutes: i64,
    pub denials_by_reason: BTreeMap<String, usize>,
    pub notices_by_kind: BTreeMap<String, usize>,
    pub orders: Vec<OrderView>,
    pub credits: CreditsView,
    pub commits: usize,
    pub elapsed_ms: u128,
    /// The report as printed.
    pub text: String,
}

/// A small deterministic generator (xorshift64*): the demo needs variety, not security.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// Roughly exponential durations with the given mean, at least 5 s, at most `cap`.
    fn duration(&mut self, mean: u64, cap: u64) -> u32 {
        let u = (self.below(10_000) + 1) as f64 / 10_001.0;
        // Only call durations are drawn with floating point; money never is.
        let d = (-(u.ln()) * mean as f64) as u64;
        d.clamp(5, cap) as u32
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b'0' + self.below(10) as u8)).collect()
    }
}

fn destination(rng: &mut Rng, country: &str) -> String {
    let mobile = rng.chance(40);
    match (country, mobile) {
        ("US", _) => format!("+1{}555{}", ["212", "415", "312", "617", "206"][rng.below(5) as usize], rng.digits(4)),
        ("GB", false) => format!("+4420794{}", rng.digits(5)),
        ("GB", true) => format!("+447400{}", rng.digits(6)),
        ("DE", false) => format!("+49301234{}", rng.digits(4)),
        ("DE", true) => format!("+49151234{}", rng.digits(5)),
        ("FR", false) => format!("+3312345{}", rng.digits(4)),
        ("FR", true) => format!("+3361234{}", rng.digits(4)),
        ("IN", _) => format!("+9198765{}", rng.digits(5)),
        ("JP", _) => format!("+81312345{}", rng.digits(3)),
        ("MX", _) => format!("+525512345{}", rng.digits(3)),
        ("NG", _) => format!("+23480312{}", rng.digits(5)),
        _ => format!("+1212555{}", rng.digits(4)),
    }
}

const FIRST: [&str; 12] =
    ["Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kemi", "Liam"];
const LAST: [&str; 6] = ["Adler", "Brooks", "Costa", "Dietrich", "Evans", "Fischer"];

struct Call {
    id: String,
    kind: &'static str,
    user: Option<String>,
    from: String,
    to: String,
    start: Timestamp,
    duration: u32,
}

fn created(o: Outcome) -> Result<String> {
    match o {
        Outcome::Created { id } => Ok(id),
        _ => Err(err!(ErrorCode::Internal, "demo: unexpected outcome")),
    }
}

fn month_before(m: Month) -> Month {
    if m.0 % 100 == 1 {
        Month((m.0 / 100 - 1) * 100 + 12)
    } else {
        Month(m.0 - 1)
    }
}

/// Runs the demo and reports. `now` ends the simulated month.
pub fn run(engine: &Engine, now: Timestamp) -> Result<DemoReport> {
    let clock = std::time::Instant::now();
    // The month runs from the 15th to the 15th, so a card expiring at the end of the
    // first calendar month fails in the middle of the simulation.
    let mut m = month_before(Month::of(now));
    let mut start = m.start() + SignedDuration::from_hours(14 * 24);
    let mut end = start
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .checked_add(Span::new().months(1))
        .map_err(|e| err!(ErrorCode::Internal, "{e}"))?
        .timestamp();
    if end > now {
        m = month_before(m);
        start = m.start() + SignedDuration::from_hours(14 * 24);
        end = start
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .checked_add(Span::new().months(1))
            .map_err(|e| err!(ErrorCode::Internal, "{e}"))?
            .timestamp();
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (start.as_second() as u64));
    let name = "Contoso Demo".to_string();
    let one = |at: Timestamp, c: Command| engine.apply_one(at, c);
    let org = created(one(
        start,
        Command::CreateOrg {
            name: name.clone(),
            currency: "USD".into(),
            country: "US".into(),
            emails: vec!["admin@contoso.example".into(), "billing@contoso.example".into()],
        },
    )?)?;
    one(
        start,
        Command::UpdateOrg {
            org: org.clone(),
            emails: None,
            low_balance: Some(Some("30.00".into())),
            suspended: None,
            disabled_notices: None,
        },
    )?;
    for (sku, q) in [
        ("phone_system", 40),
        ("calling_plan_domestic", 32),
        ("calling_plan_international", 8),
        ("communications_credits", 30),
        ("audio_conferencing", 15),
    ] {
        one(start, Command::AddSubscription { org: org.clone(), sku: sku.into(), quantity: q })?;
    }
    // 18 US, 10 GB, 8 DE users.
    let mut users: Vec<(String, &'static str)> = Vec::new();
    let mut organizers: Vec<usize> = Vec::new();
    let plan = [("US", 18usize), ("GB", 10), ("DE", 8)];
    let mut n = 0;
    for (country, count) in plan {
        for i in 0..count {
            let first = FIRST[n % FIRST.len()];
            let last = LAST[(n / FIRST.len() + i) % LAST.len()];
            let number = match country {
                "US" => format!("+1415555{:04}", 100 + n),
                "GB" => format!("+44207946{:04}", 100 + n),
                _ => format!("+4930123{:05}", 45600 + n),
            };
            let upn = format!("{}.{}{}@contoso.example", first.to_lowercase(), last.to_lowercase(), n);
            let id = created(one(
                start,
                Command::CreateUser {
                    org: org.clone(),
                    upn,
                    display_name: format!("{first} {last}"),
                    usage_location: country.into(),
                    phone_number: Some(number),
                },
            )?)?;
            let mut skus = vec!["phone_system"];
            match i % 6 {
                0 => skus.extend(["calling_plan_international", "communications_credits"]),
                1 | 2 => skus.extend(["calling_plan_domestic", "communications_credits"]),
                3 => skus.extend(["calling_plan_domestic", "audio_conferencing", "communications_credits"]),
                4 => skus.extend(["calling_plan_domestic", "audio_conferencing"]),
                _ => skus.push("calling_plan_domestic"),
            }
            one(
                start,
                Command::SetLicenses {
                    org: org.clone(),
                    user: id.clone(),
                    skus: skus.iter().map(|s| s.to_string()).collect(),
                },
            )?;
            if skus.contains(&"audio_conferencing") {
                organizers.push(users.len());
            }
            users.push((id, country));
            n += 1;
        }
    }
    // Policies: one heavy international caller with a 5.00 monthly limit; one domestic-only.
    one(
        start,
        Command::UpdateUser(crate::admin::UserChanges {
            org: org.clone(),
            user: users[1].0.clone(),
            spend_limit: Some(Some("5.00".into())),
            ..Default::default()
        }),
    )?;
    one(
        start,
        Command::UpdateUser(crate::admin::UserChanges {
            org: org.clone(),
            user: users[2].0.clone(),
            dial_out: Some("domestic".into()),
            ..Default::default()
        }),
    )?;
    let toll_free = "+18002660100";
    one(
        start,
        Command::AddNumber { org: org.clone(), number: toll_free.into(), kind: "toll_free".into(), user: None },
    )?;
    // Funds: a balance migrated from the old system that expires ten days in, a fresh
    // purchase, and auto-recharge on a card that expires at the end of this month.
    let s = start.to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let card_input = CardInput {
        number: "4242424242424242".into(),
        exp_month: u32::from(s.month() as u8),
        exp_year: i32::from(s.year()),
        holder: "Contoso Ltd".into(),
    };
    let token = engine.gateway().tokenize_card(&card_input, start)?;
    let card = created(one(start, Command::AddCard { org: org.clone(), token, holder: Some("Contoso Ltd".into()) })?)?;
    let migrated_at = s
        .checked_add(Span::new().days(10))
        .and_then(|z| z.checked_sub(Span::new().months(12)))
        .map_err(|e| err!(ErrorCode::Internal, "{e}"))?
        .timestamp();
    engine.purchase(&org, "300.00", &card, None, Some(migrated_at), start)?;
    engine.purchase(&org, "50.00", &card, None, None, start)?;
    one(
        start,
        Command::SetAutoRecharge {
            org: org.clone(),
            enabled: true,
            amount: Some("50.00".into()),
            threshold: Some("25.00".into()),
            payment_method_id: Some(card.clone()),
        },
    )?;

    // Traffic for the month.
    let mut calls: Vec<Call> = Vec::new();
    let days = (end.as_second() - start.as_second()) / 86_400;
    for day in 0..days {
        let day_start = start + SignedDuration::from_hours(24 * day);
        let weekday = day_start.to_zoned_datetime(jiff::tz::TimeZone::UTC).weekday().to_monday_one_offset() <= 5;
        let at = |rng: &mut Rng| day_start + SignedDuration::from_secs(8 * 3600 + rng.below(10 * 3600) as i64);
        for (ui, (uid, country)) in users.iter().enumerate() {
            let count = if weekday { 2 + rng.below(5) } else { rng.below(2) };
            // The user with a spend limit calls abroad a lot.
            let abroad_share = if ui == 1 { 90 } else { 20 };
            for _ in 0..count {
                let dest_country = if rng.chance(abroad_share) {
                    ["US", "GB", "DE", "FR", "IN", "JP", "MX"][rng.below(7) as usize]
                } else {
                    country
                };
                calls.push(Call {
                    id: format!("demo-{}", calls.len()),
                    kind: "outbound",
                    user: Some(uid.clone()),
                    from: String::new(),
                    to: destination(&mut rng, dest_country),
                    start: at(&mut rng),
                    duration: rng.duration(200, 3600),
                });
            }
        }
        for _ in 0..if weekday { 30 } else { 6 } {
            let caller = ["US", "US", "US", "US", "GB", "DE", "MX", "FR"][rng.below(8) as usize];
            calls.push(Call {
                id: format!("demo-{}", calls.len()),
                kind: "toll_free_inbound",
                user: None,
                from: destination(&mut rng, caller),
                to: toll_free.into(),
                start: at(&mut rng),
                duration: rng.duration(240, 3600),
            });
        }
        for _ in 0..if weekday { 8 } else { 0 } {
            let organizer = organizers[rng.below(organizers.len() as u64) as usize];
            let dest = ["US", "GB", "DE", "FR", "US", "NG"][rng.below(6) as usize];
            calls.push(Call {
                id: format!("demo-{}", calls.len()),
                kind: "conference_dial_out",
                user: Some(users[organizer].0.clone()),
                from: String::new(),
                to: destination(&mut rng, dest),
                start: at(&mut rng),
                duration: rng.duration(900, 5400),
            });
        }
        if day == 3 {
            calls.push(Call {
                id: format!("demo-{}", calls.len()),
                kind: "outbound",
                user: Some(users[5].0.clone()),
                from: String::new(),
                to: "911".into(),
                start: at(&mut rng),
                duration: 240,
            });
        }
    }
    // Caller ids of users are their own numbers.
    let numbers: BTreeMap<String, String> =
        engine.users(&org)?.into_iter().map(|u| (u.id, u.phone_number.unwrap_or_default())).collect();
    for c in calls.iter_mut() {
        if let Some(u) = &c.user {
            c.from = numbers.get(u).cloned().unwrap_or_default();
        }
    }
    // Events in time order: authorize asks for the expected length (whole 5-minute
    // steps, at most an hour and a half), end settles the real duration.
    let mut events: Vec<(Timestamp, usize, bool)> = Vec::with_capacity(calls.len() * 2);
    for (i, c) in calls.iter().enumerate() {
        events.push((c.start, i, false));
        events.push((c.start + SignedDuration::from_secs(i64::from(c.duration)), i, true));
    }
    events.sort_by_key(|(t, i, is_end)| (*t, *is_end, *i));

    let mut commits = 0usize;
    let mut next_day = start;
    let mut reacted = false;
    let mut i = 0;
    while i < events.len() {
        let window_start = events[i].0;
        // Daily jobs (expiry, notices, the monthly pool reset) run at midnight.
        while next_day <= window_start {
            engine.run_jobs(next_day)?;
            next_day += SignedDuration::from_hours(24);
        }
        let mut batch = Vec::new();
        while i < events.len()
            && batch.len() < BATCH_MAX
            && events[i].0 < window_start + SignedDuration::from_secs(BATCH_WINDOW_SECONDS)
            && events[i].0 < next_day
        {
            let (t, ci, is_end) = events[i];
            let c = &calls[ci];
            let cmd = if is_end {
                Command::End { org: org.clone(), call_id: c.id.clone(), duration_seconds: c.duration }
            } else {
                Command::Authorize(AuthorizeRequest {
                    org: org.clone(),
                    call_id: c.id.clone(),
                    call_type: c.kind.into(),
                    user: c.user.clone(),
                    from: c.from.clone(),
                    to: c.to.clone(),
                    requested_seconds: Some((c.duration.div_ceil(300) * 300).min(5400)),
                })
            };
            batch.push((t, cmd));
            i += 1;
        }
        let last = batch.last().map(|(t, _)| *t).unwrap_or(window_start);
        for r in engine.apply_timed(batch)? {
            // Ends of refused calls answer unknown_call; anything else is a demo bug.
            if let Err(e) = r {
                if e.code != ErrorCode::UnknownCall {
                    return Err(err!(e.code, "demo traffic: {}", e.message));
                }
            }
        }
        commits += 1;
        // The admin has the recharge_failed e-mail but acts only when calls start
        // failing: the morning after the balance runs out, a new card and a purchase.
        if !reacted {
            let exhausted = engine.notices(&org)?.into_iter().find(|n| n.kind == crate::notices::BALANCE_EXHAUSTED);
            if let Some(n) = exhausted {
                let at: Timestamp = n.created_at.parse().map_err(|_| err!(ErrorCode::Internal, "bad time"))?;
                let morning = at
                    .to_zoned_datetime(jiff::tz::TimeZone::UTC)
                    .date()
                    .tomorrow()
                    .map_err(|e| err!(ErrorCode::Internal, "{e}"))?;
                let fix_at = morning
                    .to_zoned_datetime(jiff::tz::TimeZone::UTC)
                    .map_err(|e| err!(ErrorCode::Internal, "{e}"))?
                    .timestamp()
                    + SignedDuration::from_hours(9);
                if last >= fix_at {
                    let new_card = CardInput {
                        number: "5555555555554444".into(),
                        exp_month: 12,
                        exp_year: i32::from(s.year()) + 3,
                        holder: "Contoso Ltd".into(),
                    };
                    let token = engine.gateway().tokenize_card(&new_card, last)?;
                    let pm = created(one(
                        last,
                        Command::AddCard { org: org.clone(), token, holder: Some("Contoso Ltd".into()) },
                    )?)?;
                    engine.purchase(&org, "100.00", &pm, None, None, last)?;
                    one(
                        last,
                        Command::SetAutoRecharge {
                            org: org.clone(),
                            enabled: true,
                            amount: None,
                            threshold: None,
                            payment_method_id: Some(pm),
                        },
                    )?;
                    reacted = true;
                }
            }
        }
    }
    while next_day <= end {
        engine.run_jobs(next_day)?;
        next_day += SignedDuration::from_hours(24);
    }
    let books = engine.check_books(&org)?;
    report(engine, &org, &name, start, end, users.len(), commits, clock.elapsed().as_millis(), books)
}

fn report(
    engine: &Engine,
    org: &str,
    name: &str,
    start: Timestamp,
    end: Timestamp,
    users: usize,
    commits: usize,
    elapsed_ms: u128,
    books: crate::invariants::BooksReport,
) -> Result<DemoReport> {
    let cdrs = engine.cdrs(org, start, end + SignedDuration::from_hours(48))?;
    let denials = engine.denials(org)?;
    let orders = engine.orders(org)?;
    let notices = engine.notices(org)?;
    let credits = engine.credits(org)?;
    let cur = Currency::parse(&credits.currency)?;
    let money = |v: i64| format!("{} {}", cur.format_minor(v), cur.code());
    let mut by_funding = BTreeMap::new();
    let mut spend = BTreeMap::new();
    let mut plan_minutes = 0;
    for c in &cdrs {
        *by_funding.entry(c.funding.clone()).or_insert(0usize) += 1;
        *spend.entry(c.call_type.clone()).or_insert(0i64) += c.charge_minor;
        plan_minutes += c.plan_minutes;
    }
    let mut denials_by_reason = BTreeMap::new();
    for d in &denials {
        *denials_by_reason.entry(d.reason.clone()).or_insert(0usize) += 1;
    }
    let mut notices_by_kind = BTreeMap::new();
    for n in &notices {
        *notices_by_kind.entry(n.kind.clone()).or_insert(0usize) += 1;
    }
    let mut t = String::new();
    let day = |ts: &Timestamp| ts.strftime("%Y-%m-%d").to_string();
    let _ = writeln!(t, "Demo organization \"{name}\" ({org})");
    let _ = writeln!(
        t,
        "Simulated {} to {} (UTC): {users} users in US, GB and DE, toll-free +18002660100",
        day(&start),
        day(&end)
    );
    let _ = writeln!(t);
    let _ = writeln!(t, "Calls: {} completed, {} refused", cdrs.len(), denials.len());
    for (f, n) in &by_funding {
        let _ = writeln!(t, "  funded by {f:<17} {n:>6}");
    }
    let _ = writeln!(t, "  plan minutes used       {plan_minutes:>6}");
    let _ = writeln!(t, "Credits spent: {}", money(spend.values().sum()));
    for (k, v) in &spend {
        let _ = writeln!(t, "  {k:<22} {:>12}", money(*v));
    }
    if !denials_by_reason.is_empty() {
        let _ = writeln!(t, "Refused calls by reason:");
        for (r, n) in &denials_by_reason {
            let _ = writeln!(t, "  {r:<22} {n:>6}");
        }
    }
    let _ = writeln!(t, "Orders:");
    for o in &orders {
        let _ = writeln!(
            t,
            "  {}  {:<13} {:>12}  {}{}",
            &o.created_at[..16.min(o.created_at.len())],
            o.kind,
            money(o.amount),
            o.status,
            o.failure_reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
        );
    }
    let _ = writeln!(t, "Notices written:");
    for (k, n) in &notices_by_kind {
        let _ = writeln!(t, "  {k:<22} {n:>6}");
    }
    let _ = writeln!(
        t,
        "Final balance {} (reserved {}, available {}); expired {}",
        money(credits.balance),
        money(credits.reserved),
        money(credits.available),
        money(books.expired)
    );
    let _ = writeln!(
        t,
        "Books check: purchases {} = balance {} + charges {} + expired {}  OK",
        money(books.purchases + books.adjustments),
        money(books.balance),
        money(books.charges),
        money(books.expired)
    );
    let _ = writeln!(t, "{commits} batched commits in {:.1} s", elapsed_ms as f64 / 1000.0);
    let _ = writeln!(t);
    let _ = writeln!(t, "Explore: commcredits credits show --org {org}");
    let _ = writeln!(t, "         commcredits orders --org {org}    (also: ledger, pools, notifications, blocked)");
    Ok(DemoReport {
        org_id: org.into(),
        name: name.into(),
        from: start.to_string(),
        to: end.to_string(),
        users,
        calls: cdrs.len(),
        denied: denials.len(),
        by_funding,
        credits_spend_by_type: spend,
        plan_minutes,
        denials_by_reason,
        notices_by_kind,
        orders,
        credits,
        commits,
        elapsed_ms,
        text: t,
    })
}
