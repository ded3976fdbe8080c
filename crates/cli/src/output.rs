//! Printing: the API's JSON objects with `--json`, aligned text otherwise.

use commcredits_core::money::Currency;
use commcredits_core::Error;
use commcredits_engine::cdr::{ImportReport, RowProblem};
use commcredits_engine::demo::DemoReport;
use commcredits_engine::invariants::BooksReport;
use commcredits_engine::jobs::JobReport;
use commcredits_engine::views::*;
use serde::Serialize;

pub struct Out {
    pub json: bool,
}

fn money(amount: i64, currency: &str) -> String {
    match Currency::parse(currency) {
        Ok(c) => format!("{} {}", c.format_minor(amount), c.code()),
        Err(_) => format!("{amount} (minor units) {currency}"),
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{:<w$}", c, w = widths[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for r in rows {
        line(r);
    }
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

impl Out {
    fn json<T: Serialize + ?Sized>(&self, v: &T) -> bool {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(v)
                    .unwrap_or_else(|e| format!("{{\"code\":\"internal_error\",\"message\":\"{e}\"}}"))
            );
        }
        self.json
    }

    pub fn error(&self, e: &Error) {
        if self.json {
            println!("{}", serde_json::json!({"code": e.code.as_str(), "message": e.message}));
        } else {
            eprintln!("error[{}]: {}", e.code, e.message);
        }
    }

    /// An error with a list of details (`--json`: one object holding both).
    /// An error carrying `details` in `field`, and the fields of `extra` (a JSON object).
    pub fn error_with<T: Serialize>(&self, e: &Error, field: &str, details: &[T], extra: serde_json::Value) {
        if self.json {
            let mut v = serde_json::json!({"code": e.code.as_str(), "message": e.message});
            v[field] = serde_json::to_value(details).unwrap_or_default();
            if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
                v.extend(extra);
            }
            println!("{v}");
        } else {
            eprintln!("error[{}]: {}", e.code, e.message);
        }
    }

    /// An import of which no row could be charged: the error, with the report's first
    /// rejected rows and its counts.
    pub fn import_failed(&self, e: &Error, r: &ImportReport) {
        let counts = serde_json::json!({"rejected_total": r.rejected_total, "rejected_by_code": r.rejected_by_code});
        self.error_with(e, "rejected", &r.rejected, counts);
        if self.json {
            return;
        }
        let by_code: Vec<String> = r.rejected_by_code.iter().map(|(code, n)| format!("{n} {code}")).collect();
        eprintln!("  rejected by reason: {}", by_code.join(", "));
    }

    pub fn org(&self, o: &OrgView) {
        if self.json(o) {
            return;
        }
        println!("organization {}", o.id);
        println!("  name        {}", o.name);
        println!("  currency    {}", o.currency);
        println!("  country     {}", o.country);
        println!(
            "  notices to  {}",
            if o.notification_emails.is_empty() { "-".into() } else { o.notification_emails.join(", ") }
        );
        if let Some(l) = o.low_balance_level {
            println!("  low balance {}", money(l, &o.currency));
        }
        if o.suspended {
            println!("  SUSPENDED");
        }
    }

    pub fn orgs(&self, v: &[OrgView]) {
        if self.json(v) {
            return;
        }
        table(
            &["ID", "NAME", "CURRENCY", "COUNTRY"],
            v.iter().map(|o| vec![o.id.clone(), o.name.clone(), o.currency.clone(), o.country.clone()]).collect(),
        );
    }

    pub fn user(&self, u: &UserView) {
        if self.json(u) {
            return;
        }
        println!("user {}", u.id);
        println!("  upn              {}", u.upn);
        println!("  name             {}", u.display_name);
        println!("  usage location   {}", u.usage_location);
        println!("  phone number     {}", opt(&u.phone_number));
        println!("  licenses         {}", if u.licenses.is_empty() { "-".into() } else { u.licenses.join(", ") });
        println!("  dial-out         {} (conference: {})", u.dial_out_policy, u.conference_dial_out_policy);
        println!(
            "  spend limit      {}",
            u.spend_limit.map(|l| l.to_string() + " (minor units)").unwrap_or_else(|| "none".into())
        );
    }

    pub fn users(&self, v: &[UserView]) {
        if self.json(v) {
            return;
        }
        table(
            &["ID", "UPN", "NAME", "LOCATION", "NUMBER", "LICENSES"],
            v.iter()
                .map(|u| {
                    vec![
                        u.id.clone(),
                        u.upn.clone(),
                        u.display_name.clone(),
                        u.usage_location.clone(),
                        opt(&u.phone_number),
                        u.licenses.join(","),
                    ]
                })
                .collect(),
        );
    }

    pub fn subscriptions(&self, v: &[SubscriptionView]) {
        if self.json(v) {
            return;
        }
        table(
            &["SKU", "QUANTITY", "ASSIGNED", "FREE"],
            v.iter()
                .map(|s| vec![s.sku.clone(), s.quantity.to_string(), s.assigned.to_string(), s.available.to_string()])
                .collect(),
        );
    }

    pub fn numbers(&self, v: &[NumberView]) {
        if self.json(v) {
            return;
        }
        table(
            &["NUMBER", "KIND", "USER"],
            v.iter().map(|n| vec![n.number.clone(), n.kind.clone(), opt(&n.user_id)]).collect(),
        );
    }

    pub fn number(&self, n: &NumberView) {
        if self.json(n) {
            return;
        }
        self.numbers(std::slice::from_ref(n));
    }

    pub fn payment_method(&self, p: &PaymentMethodView) {
        if self.json(p) {
            return;
        }
        self.payment_methods(std::slice::from_ref(p));
    }

    pub fn payment_methods(&self, v: &[PaymentMethodView]) {
        if self.json(v) {
            return;
        }
        table(
            &["ID", "TYPE", "DETAILS"],
            v.iter()
                .map(|p| {
                    let details = match (&p.card, &p.agreement_number) {
                        (Some(c), _) => {
                            format!("{} ending {} expires {:02}/{}", c.brand, c.last4, c.exp_month, c.exp_year)
                        }
                        (None, Some(a)) => format!("agreement {a}"),
                        _ => "-".into(),
                    };
                    vec![p.id.clone(), p.kind.clone(), details]
                })
                .collect(),
        );
    }

    pub fn credits(&self, c: &CreditsView) {
        if self.json(c) {
            return;
        }
        let cur = &c.currency;
        println!("balance    {}", money(c.balance, cur));
        println!("reserved   {}", money(c.reserved, cur));
        println!("available  {}", money(c.available, cur));
        let ar = &c.auto_recharge;
        if ar.enabled {
            println!(
                "auto-recharge  on: {} when available falls below {} (payment method {})",
                money(ar.amount, cur),
                money(ar.threshold, cur),
                opt(&ar.payment_method_id)
            );
        } else {
            println!("auto-recharge  off");
        }
        if !c.lots.is_empty() {
            println!();
            table(
                &["LOT", "AMOUNT", "REMAINING", "PURCHASED", "EXPIRES", "STATE"],
                c.lots
                    .iter()
                    .map(|l| {
                        vec![
                            l.id.clone(),
                            money(l.amount, cur),
                            money(l.remaining, cur),
                            l.purchased_at.clone(),
                            l.expires_at.clone(),
                            if l.expired {
                                "expired".into()
                            } else if l.remaining == 0 {
                                "spent".into()
                            } else {
                                "open".into()
                            },
                        ]
                    })
                    .collect(),
            );
        }
    }

    pub fn order_and_credits(&self, o: &OrderView, c: &CreditsView) {
        if self.json(o) {
            return;
        }
        println!("order {} {}: {} {}", o.id, o.kind, money(o.amount, &o.currency), o.status);
        if let Some(po) = &o.po_number {
            println!("purchase order {po}");
        }
        println!();
        self.credits(c);
    }

    pub fn books(&self, b: &BooksReport, currency: &str) {
        if self.json(b) {
            return;
        }
        println!(
            "books balance: purchases {} + adjustments {} = balance {} + charges {} + expired {}",
            money(b.purchases, currency),
            money(b.adjustments, currency),
            money(b.balance, currency),
            money(b.charges, currency),
            money(b.expired, currency)
        );
        println!(
            "balance {} = reserved {} + available {}",
            money(b.balance, currency),
            money(b.reserved, currency),
            money(b.available, currency)
        );
    }

    pub fn ledger(&self, p: &LedgerPage) {
        if self.json(p) {
            return;
        }
        table(
            &["SEQ", "AT", "KIND", "AMOUNT", "BALANCE", "CALL/ORDER", "MEMO"],
            p.entries
                .iter()
                .map(|e| {
                    vec![
                        e.seq.to_string(),
                        e.at.clone(),
                        e.kind.clone(),
                        money(e.amount, &e.currency),
                        money(e.balance_after, &e.currency),
                        e.call_id.clone().or_else(|| e.order_id.clone()).unwrap_or_else(|| "-".into()),
                        e.memo.clone(),
                    ]
                })
                .collect(),
        );
        if let Some(c) = &p.next_cursor {
            println!("more: --after {c}");
        }
    }

    pub fn orders(&self, v: &[OrderView]) {
        if self.json(v) {
            return;
        }
        table(
            &["ID", "CREATED", "KIND", "AMOUNT", "STATUS", "REASON", "PO"],
            v.iter()
                .map(|o| {
                    vec![
                        o.id.clone(),
                        o.created_at.clone(),
                        o.kind.clone(),
                        money(o.amount, &o.currency),
                        o.status.clone(),
                        opt(&o.failure_reason),
                        opt(&o.po_number),
                    ]
                })
                .collect(),
        );
    }

    pub fn pools(&self, v: &[PoolView]) {
        if self.json(v) {
            return;
        }
        table(
            &["COUNTRY", "POOL", "MONTH", "USED", "RESERVED", "SIZE", "USED %"],
            v.iter()
                .map(|p| {
                    vec![
                        p.country.clone(),
                        p.kind.clone(),
                        p.month.clone(),
                        p.used.to_string(),
                        p.reserved.to_string(),
                        p.size.to_string(),
                        format!("{}%", p.percent_used),
                    ]
                })
                .collect(),
        );
    }

    pub fn notices(&self, v: &[NoticeView]) {
        if self.json(v) {
            return;
        }
        table(
            &["AT", "KIND", "STATUS", "SUBJECT"],
            v.iter().map(|n| vec![n.created_at.clone(), n.kind.clone(), n.status.clone(), n.subject.clone()]).collect(),
        );
    }

    pub fn denials(&self, v: &[DenialView]) {
        if self.json(v) {
            return;
        }
        table(
            &["AT", "CALL", "TYPE", "USER", "TO", "REASON"],
            v.iter()
                .map(|d| {
                    vec![
                        d.at.clone(),
                        d.call_id.clone(),
                        d.call_type.clone(),
                        opt(&d.user_id),
                        d.to.clone(),
                        d.reason.clone(),
                    ]
                })
                .collect(),
        );
    }

    pub fn authorize(&self, a: &AuthorizeView) {
        if self.json(a) {
            return;
        }
        if a.decision == "allow" {
            println!("allow: {} s granted, funded by {}", a.granted_seconds, a.funding);
        } else {
            println!("deny: {}", a.reason.as_deref().unwrap_or("denied"));
        }
        println!("  destination  {} ({})", a.destination, a.destination_name.as_deref().unwrap_or("no rate"));
        if let Some(r) = &a.rate_per_minute {
            println!(
                "  rate         {r} {}/min, connection fee {}, increment {} s",
                a.currency,
                money(a.connection_fee, &a.currency),
                a.increment_seconds
            );
        }
        if let Some(p) = &a.pool {
            println!("  plan pool    {p} ({} min reserved)", a.plan_minutes);
        }
        if a.reserved_amount > 0 {
            println!("  reserved     {}", money(a.reserved_amount, &a.currency));
        }
    }

    pub fn update(&self, u: &UpdateView) {
        if self.json(u) {
            return;
        }
        match &u.reason {
            Some(r) => println!(
                "no more time: {r} (the call has {} s in all, {} s used)",
                u.total_granted_seconds, u.used_seconds
            ),
            None => println!(
                "{} s more granted ({} s in all, {} s used)",
                u.granted_seconds, u.total_granted_seconds, u.used_seconds
            ),
        }
    }

    pub fn end(&self, v: &EndView) {
        if self.json(v) {
            return;
        }
        println!(
            "{} {}: {} s, charged {} on credits, {} plan minutes, funded by {}",
            v.call_id,
            v.state,
            v.duration_seconds,
            money(v.charge, &v.currency),
            v.plan_minutes,
            v.funding
        );
        if v.overrun_seconds > 0 {
            println!("  {} s beyond the grant were not charged", v.overrun_seconds);
        }
    }

    pub fn import(&self, r: &ImportReport, currency: &str) {
        if self.json(r) {
            return;
        }
        println!(
            "{} rows: {} charged ({}), {} already charged, {} rejected",
            r.rows,
            r.charged,
            money(r.charge, currency),
            r.duplicates,
            r.rejected_total
        );
        for p in r.rejected.iter().take(20) {
            println!("  line {}: {} [{}] {}", p.line, p.call_id, p.code, p.message);
        }
        if r.rejected_total > 20 {
            let by_code: Vec<String> = r.rejected_by_code.iter().map(|(code, n)| format!("{n} {code}")).collect();
            println!("  ... {} more (use --rejects FILE); by reason: {}", r.rejected_total - 20, by_code.join(", "));
        }
    }

    pub fn rates_imported(&self, kind: &str, currency: &str, n: usize) {
        if self.json(&serde_json::json!({"kind": kind, "currency": currency, "entries": n})) {
            return;
        }
        println!("{kind} deck for {currency} replaced: {n} rates");
    }

    pub fn jobs(&self, r: &JobReport, d: &commcredits_engine::delivery::DeliveryReport) {
        let mut v = serde_json::to_value(r).unwrap_or_default();
        v["deliveries"] = serde_json::to_value(d).unwrap_or_default();
        if self.json(&v) {
            return;
        }
        println!("reservations expired   {}", r.reservations_expired);
        println!("lots expired           {}", r.lots_expired);
        println!("expiring-funds notices {}", r.expiring_notices);
        println!("pools opened           {}", r.pools_opened);
        println!("pending orders charged {}", r.orders_charged);
        println!("idempotency expired    {}", r.idempotency_expired);
        println!("notices delivered      {} ({} to retry, {} failed)", d.sent, d.retrying, d.failed);
    }

    pub fn new_key(&self, k: &commcredits_engine::keys::NewKey) {
        if self.json(k) {
            return;
        }
        println!(
            "key {} ({}{})",
            k.key.id,
            k.key.role,
            k.key.org_id.as_ref().map(|o| format!(" of {o}")).unwrap_or_default()
        );
        println!("secret: {}", k.secret);
        println!("Store it now: it is shown only once. Use it as `Authorization: Bearer <secret>`.");
    }

    pub fn keys(&self, v: &[commcredits_engine::keys::KeyView]) {
        if self.json(v) {
            return;
        }
        table(
            &["ID", "ROLE", "NAME", "CREATED", "REVOKED"],
            v.iter()
                .map(|k| vec![k.id.clone(), k.role.clone(), k.name.clone(), k.created_at.clone(), opt(&k.revoked_at)])
                .collect(),
        );
    }

    pub fn report_written(&self, rows: usize, path: &str, format: &str) {
        if self.json(&serde_json::json!({"rows": rows, "output": path, "format": format})) {
            return;
        }
        println!("{rows} calls written to {path} ({format})");
    }

    /// JSON with --json, or the same JSON pretty-printed: for reports without a table yet.
    pub fn any<T: Serialize>(&self, v: &T) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }

    pub fn recommendation(&self, r: &commcredits_engine::summary::Recommendation) {
        if self.json(r) {
            return;
        }
        println!(
            "recommended: recharge {} when the available balance falls below {}",
            money(r.recommended_amount, &r.currency),
            money(r.recommended_threshold, &r.currency)
        );
        if let Some(d) = r.days_until_empty {
            println!("at the current rate the available balance lasts about {d} days");
        }
        println!();
        for line in &r.reasoning {
            println!("- {line}");
        }
    }

    pub fn summary(&self, s: &commcredits_engine::summary::SummaryView) {
        if self.json(s) {
            return;
        }
        let cur = &s.currency;
        println!(
            "{} to {}: {} calls, {} minutes, {} plan minutes, {} on credits",
            s.from,
            s.to,
            s.totals.calls,
            s.totals.minutes,
            s.totals.plan_minutes,
            money(s.totals.spend, cur)
        );
        println!();
        table(
            &["DAY", "CALLS", "MINUTES", "SPEND"],
            s.by_day
                .iter()
                .map(|d| {
                    vec![
                        d.day.clone(),
                        d.usage.calls.to_string(),
                        d.usage.minutes.to_string(),
                        money(d.usage.spend, cur),
                    ]
                })
                .collect(),
        );
        println!();
        table(
            &["USER", "CALLS", "MINUTES", "SPEND"],
            s.by_user
                .iter()
                .map(|u| {
                    vec![
                        u.upn.clone().unwrap_or_else(|| "(toll-free callers)".into()),
                        u.usage.calls.to_string(),
                        u.usage.minutes.to_string(),
                        money(u.usage.spend, cur),
                    ]
                })
                .collect(),
        );
        println!();
        table(
            &["COUNTRY", "CALLS", "MINUTES", "SPEND"],
            s.by_country
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone().or(c.country.clone()).unwrap_or_else(|| "-".into()),
                        c.usage.calls.to_string(),
                        c.usage.minutes.to_string(),
                        money(c.usage.spend, cur),
                    ]
                })
                .collect(),
        );
        println!();
        table(
            &["CALL TYPE", "CALLS", "MINUTES", "SPEND"],
            s.by_call_type
                .iter()
                .map(|c| {
                    vec![
                        c.call_type.clone(),
                        c.usage.calls.to_string(),
                        c.usage.minutes.to_string(),
                        money(c.usage.spend, cur),
                    ]
                })
                .collect(),
        );
    }

    pub fn done(&self, what: &str) {
        if self.json(&serde_json::json!({"ok": true, "message": what})) {
            return;
        }
        println!("{what}");
    }

    pub fn deliveries(&self, v: &[DeliveryView]) {
        if self.json(v) {
            return;
        }
        table(
            &["NOTICE", "CHANNEL", "STATUS", "ATTEMPTS", "SENT", "LAST ERROR"],
            v.iter()
                .map(|d| {
                    vec![
                        d.notice_id.clone(),
                        d.channel.clone(),
                        d.status.clone(),
                        d.attempts.to_string(),
                        opt(&d.sent_at),
                        opt(&d.last_error),
                    ]
                })
                .collect(),
        );
    }

    pub fn new_webhook(&self, w: &NewWebhook) {
        if self.json(w) {
            return;
        }
        println!("webhook {} -> {}", w.webhook.id, w.webhook.url);
        println!("signing secret: {}", w.secret);
        println!("Store it now: it is shown only once. Bodies are signed in the Commcredits-Signature header:");
        println!("t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\" with this secret>.");
    }

    pub fn webhooks(&self, v: &[WebhookView]) {
        if self.json(v) {
            return;
        }
        table(
            &["ID", "URL", "CREATED"],
            v.iter().map(|w| vec![w.id.clone(), w.url.clone(), w.created_at.clone()]).collect(),
        );
    }

    pub fn demo(&self, r: &DemoReport) {
        if self.json(r) {
            return;
        }
        print!("{}", r.text);
    }
}

/// A progress bar on a terminal; hidden when stderr is not one or output is JSON.
pub fn progress(len: u64, json: bool) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {per_sec} eta {eta}") {
        bar.set_style(style);
    }
    bar
}

/// The `--rejects` CSV file, written a row at a time as the import rejects them (it may
/// hold every rejected row of a file; memory holds none of them). Cells are made safe
/// for spreadsheets like every CSV the product writes.
pub struct RejectsFile {
    path: std::path::PathBuf,
    w: csv::Writer<std::fs::File>,
}

impl RejectsFile {
    pub fn create(path: &std::path::Path) -> commcredits_core::Result<RejectsFile> {
        let w = csv::Writer::from_path(path).map_err(|e| rejects_error(path, &e))?;
        let mut f = RejectsFile { path: path.to_path_buf(), w };
        f.w.write_record(["line", "call_id", "code", "message"]).map_err(|e| rejects_error(path, &e))?;
        Ok(f)
    }

    pub fn write(&mut self, r: &RowProblem) -> commcredits_core::Result<()> {
        use commcredits_engine::usage::spreadsheet_safe;
        let line = r.line.to_string();
        let cells = [line.as_str(), &r.call_id, &r.code, &r.message];
        for cell in cells {
            self.w.write_field(spreadsheet_safe(cell).as_bytes()).map_err(|e| rejects_error(&self.path, &e))?;
        }
        self.w.write_record(None::<&[u8]>).map_err(|e| rejects_error(&self.path, &e))
    }

    pub fn finish(mut self) -> commcredits_core::Result<()> {
        self.w.flush().map_err(|e| rejects_error(&self.path, &e))
    }
}

fn rejects_error(path: &std::path::Path, e: &dyn std::fmt::Display) -> commcredits_core::Error {
    commcredits_core::Error::new(
        commcredits_core::ErrorCode::InvalidInput,
        format!("cannot write {}: {e}", path.display()),
    )
}
