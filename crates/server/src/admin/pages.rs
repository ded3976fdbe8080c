//! The view models of the admin pages: what each template shows, built from the
//! engine's reads and views. Money arrives in minor units and leaves as text formatted
//! with its currency; nothing here decides anything the engine decides.

use commcredits_core::catalog::Sku;
use commcredits_core::money::Currency;
use commcredits_core::{ErrorCode, Result, Timestamp};
use commcredits_engine::usage::UsageFilter;
use commcredits_engine::views::{OrderView, PaymentMethodView};
use commcredits_engine::Engine;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Rows of the usage table per page.
pub const USAGE_PAGE_ROWS: usize = 50;
/// Users listed at once (a search narrows them).
pub const MAX_USERS_SHOWN: usize = 500;
/// Notices listed on the notifications page, newest first.
pub const MAX_NOTICES_SHOWN: usize = 100;
/// Days the overview's spend chart covers.
pub const OVERVIEW_DAYS: i64 = 30;
/// Longest period the usage chart draws one bar per day for.
pub const MAX_CHART_DAYS: i64 = 366;

/// Minor units as text with thousands separators and the currency: `1,234.50 USD`.
pub fn money(cur: Currency, minor: i64) -> String {
    format!("{} {}", group(&cur.format_minor(minor)), cur.code())
}

/// Minor units as a form value in major units without grouping: `1234.50`.
pub fn major(cur: Currency, minor: i64) -> String {
    cur.format_minor(minor)
}

fn group(decimal: &str) -> String {
    let (sign, rest) = decimal.strip_prefix('-').map(|r| ("-", r)).unwrap_or(("", decimal));
    let (int, frac) = rest.split_once('.').map(|(i, f)| (i, Some(f))).unwrap_or((rest, None));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{out}.{f}"),
        None => format!("{sign}{out}"),
    }
}

/// `2026-11-05T10:00:00Z` as `2026-11-05 10:00 UTC`.
pub fn when(iso: &str) -> String {
    if iso.len() >= 16 {
        format!("{} {} UTC", &iso[..10], &iso[11..16])
    } else {
        iso.to_string()
    }
}

/// The date part of an RFC 3339 time.
pub fn day(iso: &str) -> String {
    iso.chars().take(10).collect()
}

/// What the people who read the pages call each SKU.
pub fn sku_label(sku: &str) -> &'static str {
    match sku {
        "phone_system" => "Phone System",
        "calling_plan_domestic" => "Domestic Calling Plan",
        "calling_plan_international" => "International Calling Plan",
        "audio_conferencing" => "Audio Conferencing",
        "communications_credits" => "Communications Credits",
        "e5" => "E5",
        _ => "Unknown license",
    }
}

pub fn pm_label(p: &PaymentMethodView) -> String {
    match (&p.card, &p.agreement_number) {
        (Some(c), _) => format!("{} ending {} (expires {:02}/{})", c.brand, c.last4, c.exp_month, c.exp_year),
        (None, Some(a)) => format!("Enterprise Agreement {a}"),
        _ => p.id.clone(),
    }
}

// ---------------------------------------------------------------- charts

/// A bar chart drawn as inline SVG by the template: bars, axis labels and the same
/// figures as a table for screen readers and for reading exact values.
#[derive(Serialize, Default)]
pub struct Chart {
    pub title: String,
    pub desc: String,
    pub width: i64,
    pub height: i64,
    pub bars: Vec<Bar>,
    pub y_labels: Vec<Label>,
    pub x_labels: Vec<Label>,
    /// Every bar as (label, value) for the data table.
    pub rows: Vec<(String, String)>,
    pub empty: bool,
}

#[derive(Serialize)]
pub struct Bar {
    pub x: i64,
    pub y: i64,
    pub w: i64,
    pub h: i64,
    pub label: String,
}

#[derive(Serialize)]
pub struct Label {
    pub x: i64,
    pub y: i64,
    pub text: String,
}

const PLOT_LEFT: i64 = 90;
const PLOT_TOP: i64 = 10;
const PLOT_HEIGHT: i64 = 180;

/// One bar per (label, value), value in minor units; heights in integer pixels.
pub fn bar_chart(cur: Currency, title: &str, points: &[(String, i64)]) -> Chart {
    let max = points.iter().map(|(_, v)| *v).max().unwrap_or(0).max(0);
    let n = points.len().max(1) as i64;
    let slot = (640 / n).max(3);
    let width = PLOT_LEFT + slot * n + 10;
    let bars = points
        .iter()
        .enumerate()
        .map(|(i, (label, v))| {
            let h =
                if max > 0 { (i128::from((*v).max(0)) * i128::from(PLOT_HEIGHT) / i128::from(max)) as i64 } else { 0 };
            Bar {
                x: PLOT_LEFT + slot * i as i64 + slot / 8,
                y: PLOT_TOP + PLOT_HEIGHT - h,
                w: (slot - slot / 4).max(1),
                h,
                label: format!("{label}: {}", money(cur, *v)),
            }
        })
        .collect();
    let y_labels = [max, max / 2, 0]
        .iter()
        .enumerate()
        .map(|(i, v)| Label { x: PLOT_LEFT - 6, y: PLOT_TOP + PLOT_HEIGHT * i as i64 / 2 + 4, text: money(cur, *v) })
        .collect();
    // At most about eight dates under the axis, always the first and the last.
    let every = (points.len() as i64 / 8).max(1) as usize;
    let x_labels = points
        .iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0 || *i + 1 == points.len())
        .map(|(i, (label, _))| Label {
            x: PLOT_LEFT + slot * i as i64 + slot / 2,
            y: PLOT_TOP + PLOT_HEIGHT + 18,
            text: label.chars().skip(5).collect(),
        })
        .collect();
    let total: i64 = points.iter().map(|(_, v)| *v).sum();
    Chart {
        title: title.to_string(),
        desc: format!(
            "{} days from {} to {}; {} in all, the highest day {}.",
            points.len(),
            points.first().map(|p| p.0.as_str()).unwrap_or("-"),
            points.last().map(|p| p.0.as_str()).unwrap_or("-"),
            money(cur, total),
            money(cur, max)
        ),
        width,
        height: PLOT_TOP + PLOT_HEIGHT + 28,
        bars,
        y_labels,
        x_labels,
        rows: points.iter().map(|(l, v)| (l.clone(), money(cur, *v))).collect(),
        empty: total == 0,
    }
}

/// Every UTC day from `from` (inclusive) to `to` (exclusive), with its sum from `by_day`.
fn days(from: Timestamp, to: Timestamp, by_day: &HashMap<String, i64>) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let mut d = from.to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
    let end = to.to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
    let last_is_partial = to.as_second() % 86_400 != 0;
    while d < end || (last_is_partial && d == end) {
        let key = d.to_string();
        let v = by_day.get(&key).copied().unwrap_or(0);
        out.push((key, v));
        match d.tomorrow() {
            Ok(n) => d = n,
            Err(_) => break,
        }
        if out.len() as i64 > MAX_CHART_DAYS {
            break;
        }
    }
    out
}

// ---------------------------------------------------------------- overview

#[derive(Serialize)]
pub struct NoticeLine {
    pub at: String,
    pub kind: String,
    pub subject: String,
    pub status: String,
}

#[derive(Serialize)]
pub struct Overview {
    pub balance: String,
    pub available: String,
    pub reserved: String,
    pub days_left: Option<i64>,
    pub daily_spend: String,
    pub enough_history: bool,
    pub lookback_days: i64,
    pub auto_recharge: String,
    pub recommended: String,
    pub chart: Chart,
    pub notices: Vec<NoticeLine>,
}

pub fn overview(engine: &Engine, org: &str, now: Timestamp) -> Result<Overview> {
    let credits = engine.credits(org)?;
    let cur = Currency::parse(&credits.currency)?;
    let rec = engine.recommend(org, now)?;
    let from = Timestamp::from_second((now.as_second() / 86_400 - (OVERVIEW_DAYS - 1)) * 86_400)
        .map_err(|e| commcredits_core::Error::new(ErrorCode::Internal, e.to_string()))?;
    let summary = engine.summary(org, from, now)?;
    let by_day: HashMap<String, i64> = summary.by_day.iter().map(|d| (d.day.clone(), d.usage.spend)).collect();
    let chart = bar_chart(cur, &format!("Credits spend per day, last {OVERVIEW_DAYS} days"), &days(from, now, &by_day));
    let ar = &credits.auto_recharge;
    let mut notices = engine.notices(org)?;
    notices.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    Ok(Overview {
        balance: money(cur, credits.balance),
        available: money(cur, credits.available),
        reserved: money(cur, credits.reserved),
        days_left: rec.days_until_empty,
        daily_spend: money(cur, rec.daily_spend.mean),
        enough_history: rec.enough_history,
        lookback_days: rec.lookback_days,
        auto_recharge: if ar.enabled {
            format!("on: {} when the available balance falls below {}", money(cur, ar.amount), money(cur, ar.threshold))
        } else {
            "off".into()
        },
        recommended: format!(
            "recharge {} when the available balance falls below {}",
            money(cur, rec.recommended_amount),
            money(cur, rec.recommended_threshold)
        ),
        chart,
        notices: notices
            .iter()
            .take(5)
            .map(|n| NoticeLine {
                at: when(&n.created_at),
                kind: n.kind.clone(),
                subject: n.subject.clone(),
                status: n.status.clone(),
            })
            .collect(),
    })
}

// ---------------------------------------------------------------- billing

#[derive(Serialize)]
pub struct Choice {
    pub value: String,
    pub label: String,
}

#[derive(Serialize)]
pub struct LotLine {
    pub amount: String,
    pub remaining: String,
    pub purchased: String,
    pub expires: String,
    pub state: &'static str,
}

#[derive(Serialize)]
pub struct OrderLine {
    pub at: String,
    pub kind: String,
    pub amount: String,
    pub method: String,
    pub po_number: String,
    pub status: String,
    pub failure_reason: String,
}

#[derive(Serialize)]
pub struct Billing {
    pub currency: String,
    pub balance: String,
    pub available: String,
    pub minimum_purchase: String,
    pub methods: Vec<Choice>,
    pub agreements: Vec<Choice>,
    pub ar_enabled: bool,
    pub ar_amount: String,
    pub ar_threshold: String,
    pub ar_method: String,
    pub recommended_amount: String,
    pub recommended_threshold: String,
    pub lots: Vec<LotLine>,
    pub orders: Vec<OrderLine>,
}

pub fn billing(engine: &Engine, org: &str, now: Timestamp) -> Result<Billing> {
    let credits = engine.credits(org)?;
    let cur = Currency::parse(&credits.currency)?;
    let pms = engine.payment_methods(org)?;
    let labels: HashMap<String, String> = pms.iter().map(|p| (p.id.clone(), pm_label(p))).collect();
    let rec = engine.recommend(org, now)?;
    let mut lots = credits.lots.clone();
    lots.sort_by(|a, b| a.expires_at.cmp(&b.expires_at));
    let mut orders: Vec<OrderView> = engine.orders(org)?;
    orders.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    let ar = &credits.auto_recharge;
    Ok(Billing {
        currency: cur.code().into(),
        balance: money(cur, credits.balance),
        available: money(cur, credits.available),
        minimum_purchase: money(cur, rec.minimum_purchase),
        methods: pms.iter().map(|p| Choice { value: p.id.clone(), label: pm_label(p) }).collect(),
        agreements: pms
            .iter()
            .filter(|p| p.kind == "enterprise_agreement")
            .map(|p| Choice { value: p.id.clone(), label: pm_label(p) })
            .collect(),
        ar_enabled: ar.enabled,
        ar_amount: if ar.amount > 0 { major(cur, ar.amount) } else { major(cur, rec.recommended_amount) },
        ar_threshold: if ar.enabled || ar.threshold > 0 {
            major(cur, ar.threshold)
        } else {
            major(cur, rec.recommended_threshold)
        },
        ar_method: ar.payment_method_id.clone().unwrap_or_default(),
        recommended_amount: money(cur, rec.recommended_amount),
        recommended_threshold: money(cur, rec.recommended_threshold),
        lots: lots
            .iter()
            .map(|l| LotLine {
                amount: money(cur, l.amount),
                remaining: money(cur, l.remaining),
                purchased: when(&l.purchased_at),
                expires: day(&l.expires_at),
                state: if l.expired {
                    "expired"
                } else if l.remaining == 0 {
                    "used up"
                } else {
                    "open"
                },
            })
            .collect(),
        orders: orders
            .iter()
            .map(|o| OrderLine {
                at: when(&o.created_at),
                kind: if o.kind == "auto_recharge" { "auto-recharge".into() } else { o.kind.clone() },
                amount: money(cur, o.amount),
                method: labels.get(&o.payment_method_id).cloned().unwrap_or_else(|| o.payment_method_id.clone()),
                po_number: o.po_number.clone().unwrap_or_default(),
                status: o.status.clone(),
                failure_reason: o.failure_reason.clone().unwrap_or_default(),
            })
            .collect(),
    })
}

// ---------------------------------------------------------------- users

#[derive(Serialize)]
pub struct SkuColumn {
    pub sku: String,
    pub label: &'static str,
    pub quantity: i64,
    pub assigned: i64,
    pub available: i64,
}

#[derive(Serialize)]
pub struct UserLine {
    pub id: String,
    pub upn: String,
    pub display_name: String,
    pub location: String,
    pub phone: String,
    /// sku -> held.
    pub holds: BTreeMap<String, bool>,
    pub dial_out: String,
    pub conference_dial_out: String,
    pub spend_limit: String,
}

#[derive(Serialize)]
pub struct Users {
    pub q: String,
    pub skus: Vec<SkuColumn>,
    pub users: Vec<UserLine>,
    pub total: usize,
    pub truncated: bool,
}

pub fn users(engine: &Engine, org: &str, q: &str) -> Result<Users> {
    let cur = Currency::parse(&engine.org_view(org)?.currency)?;
    let subs = engine.subscriptions(org)?;
    // Columns in the catalog's order, for the SKUs the organization buys.
    let skus: Vec<SkuColumn> = Sku::ALL
        .iter()
        .filter_map(|s| subs.iter().find(|v| v.sku == s.as_str()))
        .map(|v| SkuColumn {
            sku: v.sku.clone(),
            label: sku_label(&v.sku),
            quantity: v.quantity,
            assigned: v.assigned,
            available: v.available,
        })
        .collect();
    let needle = q.trim().to_lowercase();
    let all = engine.users(org)?;
    let total = all.len();
    let mut found: Vec<_> = all
        .into_iter()
        .filter(|u| {
            needle.is_empty()
                || u.upn.to_lowercase().contains(&needle)
                || u.display_name.to_lowercase().contains(&needle)
                || u.phone_number.as_deref().is_some_and(|p| p.contains(&needle))
        })
        .collect();
    found.sort_by(|a, b| a.display_name.to_lowercase().cmp(&b.display_name.to_lowercase()).then(a.upn.cmp(&b.upn)));
    let truncated = found.len() > MAX_USERS_SHOWN;
    found.truncate(MAX_USERS_SHOWN);
    Ok(Users {
        q: q.trim().to_string(),
        users: found
            .iter()
            .map(|u| UserLine {
                id: u.id.clone(),
                upn: u.upn.clone(),
                display_name: u.display_name.clone(),
                location: u.usage_location.clone(),
                phone: u.phone_number.clone().unwrap_or_default(),
                holds: skus.iter().map(|s| (s.sku.clone(), u.licenses.contains(&s.sku))).collect(),
                dial_out: u.dial_out_policy.clone(),
                conference_dial_out: u.conference_dial_out_policy.clone(),
                spend_limit: u.spend_limit.map(|m| money(cur, m)).unwrap_or_default(),
            })
            .collect(),
        skus,
        total,
        truncated,
    })
}

#[derive(Serialize)]
pub struct UserDetail {
    pub id: String,
    pub upn: String,
    pub display_name: String,
    pub location: String,
    pub phone: String,
    pub licenses: Vec<&'static str>,
    pub dial_out: String,
    pub conference_dial_out: String,
    /// Major units for the form; empty when there is no limit.
    pub spend_limit: String,
    pub currency: String,
    pub policies: [&'static str; 3],
}

pub fn user(engine: &Engine, org: &str, user: &str) -> Result<UserDetail> {
    let cur = Currency::parse(&engine.org_view(org)?.currency)?;
    let u = engine.user(org, user)?;
    Ok(UserDetail {
        id: u.id.clone(),
        upn: u.upn.clone(),
        display_name: u.display_name.clone(),
        location: u.usage_location.clone(),
        phone: u.phone_number.clone().unwrap_or_default(),
        licenses: u.licenses.iter().map(|s| sku_label(s)).collect(),
        dial_out: u.dial_out_policy.clone(),
        conference_dial_out: u.conference_dial_out_policy.clone(),
        spend_limit: u.spend_limit.map(|m| major(cur, m)).unwrap_or_default(),
        currency: cur.code().into(),
        policies: ["international", "domestic", "disabled"],
    })
}

// ---------------------------------------------------------------- numbers, pools, notices

#[derive(Serialize)]
pub struct NumberLine {
    pub number: String,
    pub kind: String,
    pub user: String,
    pub added: String,
}

#[derive(Serialize)]
pub struct Numbers {
    pub numbers: Vec<NumberLine>,
    pub users: Vec<Choice>,
}

pub fn numbers(engine: &Engine, org: &str) -> Result<Numbers> {
    let users = engine.users(org)?;
    let upn: HashMap<&str, &str> = users.iter().map(|u| (u.id.as_str(), u.upn.as_str())).collect();
    let mut numbers = engine.numbers(org)?;
    numbers.sort_by(|a, b| a.number.cmp(&b.number));
    Ok(Numbers {
        numbers: numbers
            .iter()
            .map(|n| NumberLine {
                number: n.number.clone(),
                kind: n.kind.replace('_', "-"),
                user: n.user_id.as_deref().map(|id| upn.get(id).copied().unwrap_or(id).to_string()).unwrap_or_default(),
                added: day(&n.created_at),
            })
            .collect(),
        users: users.iter().map(|u| Choice { value: u.upn.clone(), label: u.upn.clone() }).collect(),
    })
}

#[derive(Serialize)]
pub struct PoolLine {
    pub name: String,
    pub month: String,
    pub size: i64,
    pub used: i64,
    pub reserved: i64,
    pub available: i64,
    pub percent_used: i64,
    pub level: &'static str,
}

pub fn pools(engine: &Engine, org: &str, now: Timestamp) -> Result<Vec<PoolLine>> {
    let countries = engine.catalog();
    Ok(engine
        .pools(org, now)?
        .into_iter()
        .map(|p| {
            let place = if p.country == "*" {
                "organization-wide".to_string()
            } else {
                countries.country(&p.country).map(|c| c.name.to_string()).unwrap_or_else(|_| p.country.clone())
            };
            let kind = match p.kind.as_str() {
                "domestic" => "Domestic calling",
                "international" => "International calling",
                "dial_out" => "Conferencing dial-out",
                _ => "Minutes",
            };
            PoolLine {
                name: format!("{kind}, {place}"),
                month: p.month,
                size: p.size,
                used: p.used,
                reserved: p.reserved,
                available: p.available,
                percent_used: p.percent_used,
                level: if p.percent_used >= 100 {
                    "full"
                } else if p.percent_used >= 80 {
                    "high"
                } else {
                    "ok"
                },
            }
        })
        .collect())
}

#[derive(Serialize)]
pub struct DeliveryLine {
    pub channel: String,
    pub target: String,
    pub status: String,
    pub attempts: i64,
    pub detail: String,
}

#[derive(Serialize)]
pub struct NoticeDetail {
    pub at: String,
    pub kind: String,
    pub subject: String,
    pub body: String,
    pub status: String,
    pub deliveries: Vec<DeliveryLine>,
}

pub fn notifications(engine: &Engine, org: &str) -> Result<Vec<NoticeDetail>> {
    let mut notices = engine.notices(org)?;
    notices.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    notices.truncate(MAX_NOTICES_SHOWN);
    let mut by_notice: HashMap<String, Vec<DeliveryLine>> = HashMap::new();
    for d in engine.deliveries(org)? {
        let detail = match (d.status.as_str(), &d.sent_at, &d.next_attempt_at, &d.last_error) {
            ("sent", Some(at), _, _) => format!("sent {}", when(at)),
            ("pending", _, Some(next), Some(e)) => format!("retry at {}: {e}", when(next)),
            ("pending", _, Some(next), None) => format!("next attempt {}", when(next)),
            (_, _, _, Some(e)) => e.clone(),
            _ => String::new(),
        };
        by_notice.entry(d.notice_id.clone()).or_default().push(DeliveryLine {
            channel: d.channel.clone(),
            target: d.target.join(", "),
            status: d.status.clone(),
            attempts: d.attempts,
            detail,
        });
    }
    Ok(notices
        .iter()
        .map(|n| NoticeDetail {
            at: when(&n.created_at),
            kind: n.kind.clone(),
            subject: n.subject.clone(),
            body: n.body.clone(),
            status: n.status.clone(),
            deliveries: by_notice.remove(&n.id).unwrap_or_default(),
        })
        .collect())
}

// ---------------------------------------------------------------- usage

/// The usage page's filters as the form has them (dates, not instants).
#[derive(Serialize, Clone, Default, Debug)]
pub struct UsageForm {
    pub from: String,
    pub to: String,
    pub user: String,
    pub call_type: String,
    pub funding: String,
    pub capability: String,
    pub country: String,
}

impl UsageForm {
    /// The query string of these filters (for paging and export links).
    pub fn query(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("from", &self.from),
            ("to", &self.to),
            ("user", &self.user),
            ("type", &self.call_type),
            ("funding", &self.funding),
            ("capability", &self.capability),
            ("country", &self.country),
        ] {
            if !v.is_empty() {
                s.append_pair(k, v);
            }
        }
        s.finish()
    }
}

/// A date of the form (`YYYY-MM-DD`) as the instant its UTC day starts.
pub fn date_start(field: &str, text: &str) -> Result<Timestamp> {
    let d: jiff::civil::Date = text.trim().parse().map_err(|_| {
        commcredits_core::Error::new(
            ErrorCode::InvalidTime,
            format!("{field} '{text}' is not a date such as 2026-11-01"),
        )
    })?;
    d.to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp())
        .map_err(|e| commcredits_core::Error::new(ErrorCode::InvalidTime, e.to_string()))
}

#[derive(Serialize)]
pub struct UsageLine {
    pub start: String,
    pub user: String,
    pub call_type: String,
    pub destination: String,
    pub domestic: String,
    pub duration: i64,
    pub charge: String,
    pub funding: String,
    pub capability: String,
}

#[derive(Serialize)]
pub struct Usage {
    pub calls: usize,
    pub spend: String,
    pub rows: Vec<UsageLine>,
    pub next: Option<String>,
    pub paged: bool,
    /// The query of the page before this one (filters and its cursor, none for the
    /// first page); absent on the first page.
    pub prev: Option<String>,
    /// This page's number and how many there are (`USAGE_PAGE_ROWS` rows each).
    pub page_number: usize,
    pub pages: usize,
    pub chart: Chart,
    pub query: String,
    pub users: Vec<Choice>,
}

/// The report page: totals and the chart from one streamed scan, then one page of rows.
pub fn usage(
    engine: &Engine,
    org: &str,
    form: &UsageForm,
    filter: &UsageFilter,
    cursor: Option<&str>,
) -> Result<Usage> {
    let cur = Currency::parse(&engine.org_view(org)?.currency)?;
    let mut by_day: HashMap<String, i64> = HashMap::new();
    let mut spend = 0i64;
    // Paging backwards from the same scan: the cursor of the page before is the row
    // `USAGE_PAGE_ROWS` before this page's cursor, so the last ids up to the cursor are
    // kept (no more than a page's worth).
    let mut seen = 0usize;
    let mut recent: VecDeque<String> = VecDeque::with_capacity(USAGE_PAGE_ROWS + 1);
    let mut found: Option<(usize, Option<String>)> = None;
    let calls = engine.for_each_usage(org, filter, &mut |r| {
        *by_day.entry(day(&r.start_time)).or_default() += r.charge;
        spend += r.charge;
        if let (Some(c), None) = (cursor, &found) {
            if recent.len() > USAGE_PAGE_ROWS {
                recent.pop_front();
            }
            recent.push_back(r.usage_id.clone());
            if r.usage_id == c {
                let before = (recent.len() > USAGE_PAGE_ROWS).then(|| recent[0].clone());
                found = Some((seen + 1, before));
            }
        }
        seen += 1;
        Ok(())
    })?;
    let (from, to) = (filter.from.unwrap_or(Timestamp::UNIX_EPOCH), filter.to.unwrap_or(Timestamp::MAX));
    let chart = bar_chart(cur, "Credits spend per day", &days(from, to, &by_day));
    let page = engine.usage_page(org, filter, cursor, USAGE_PAGE_ROWS)?;
    // Where this page starts (rows before it), and the previous page's query.
    let (start, prev) = match found {
        Some((start, before)) => {
            let mut q = form_urlencoded::Serializer::new(form.query());
            if let Some(b) = before {
                q.append_pair("cursor", &b);
            }
            (start, Some(q.finish()))
        }
        None => (0, None),
    };
    let mut users: Vec<Choice> =
        engine.users(org)?.iter().map(|u| Choice { value: u.upn.clone(), label: u.upn.clone() }).collect();
    users.sort_by(|a, b| a.value.cmp(&b.value));
    Ok(Usage {
        calls,
        spend: money(cur, spend),
        rows: page
            .items
            .iter()
            .map(|r| UsageLine {
                start: when(&r.start_time),
                user: if r.upn.is_empty() { "(toll-free caller)".into() } else { r.upn.clone() },
                call_type: r.call_type.clone(),
                destination: r.destination_number.clone(),
                domestic: r.domestic_international.clone(),
                duration: r.duration_seconds,
                charge: money(cur, r.charge),
                funding: r.funding.clone(),
                capability: r.capability.clone(),
            })
            .collect(),
        next: page.next_cursor,
        paged: cursor.is_some(),
        prev,
        page_number: start.div_ceil(USAGE_PAGE_ROWS) + 1,
        pages: calls.div_ceil(USAGE_PAGE_ROWS).max(1),
        chart,
        query: form.query(),
        users,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_grouped_with_its_currency() {
        let usd = Currency::parse("USD").unwrap();
        assert_eq!(money(usd, 123_456_789), "1,234,567.89 USD");
        assert_eq!(money(usd, 5), "0.05 USD");
        assert_eq!(money(usd, -100_000), "-1,000.00 USD");
        assert_eq!(money(Currency::parse("JPY").unwrap(), 1_000_000), "1,000,000 JPY");
        assert_eq!(major(usd, 5_000), "50.00");
    }

    #[test]
    fn charts_scale_bars_in_integers() {
        let usd = Currency::parse("USD").unwrap();
        let c = bar_chart(usd, "t", &[("2026-11-01".into(), 0), ("2026-11-02".into(), 50), ("2026-11-03".into(), 100)]);
        assert_eq!(c.bars.iter().map(|b| b.h).collect::<Vec<_>>(), vec![0, PLOT_HEIGHT / 2, PLOT_HEIGHT]);
        assert_eq!(c.rows[2], ("2026-11-03".to_string(), "1.00 USD".to_string()));
        assert!(!c.empty);
        assert!(bar_chart(usd, "t", &[]).empty);
    }

    #[test]
    fn days_cover_the_period() {
        let from: Timestamp = "2026-11-01T00:00:00Z".parse().unwrap();
        let to: Timestamp = "2026-11-04T00:00:00Z".parse().unwrap();
        let m = HashMap::from([("2026-11-02".to_string(), 7)]);
        assert_eq!(
            days(from, to, &m),
            vec![("2026-11-01".into(), 0), ("2026-11-02".into(), 7), ("2026-11-03".into(), 0)]
        );
        let noon: Timestamp = "2026-11-03T12:00:00Z".parse().unwrap();
        assert_eq!(days(from, noon, &m).len(), 3);
    }
}
