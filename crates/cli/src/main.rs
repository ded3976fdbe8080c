//! `commcredits`: the command line. Admin verbs work directly on the database given by
//! `--db`; output is human-readable, or the API's JSON objects with `--json`. Errors
//! print their stable code and exit with status 1 (2 for a command-line mistake).

/// `print!` that treats a closed pipe (`commcredits ledger ... | head`) as the end of
/// the output, not a crash: the reader has what it wanted, so exit quietly.
macro_rules! print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            panic!("failed printing to stdout: {e}");
        }
    }};
}

/// `println!` through the `print!` above.
macro_rules! println {
    () => { print!("\n") };
    ($($arg:tt)*) => { print!("{}\n", format_args!($($arg)*)) };
}

mod output;

use clap::{Args, Parser, Subcommand};
use commcredits_core::catalog::DeckKind;
use commcredits_core::{err, Error, ErrorCode, Result, Timestamp};
use commcredits_engine::admin::UserChanges;
use commcredits_engine::calls::AuthorizeRequest;
use commcredits_engine::payments::{parse_expiry, CardInput};
use commcredits_engine::{Command, Engine, Outcome};
use output::Out;
use std::io::Write;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "commcredits",
    version,
    about = "Real-time prepaid charging of Communications Credits for business telephony"
)]
struct Cli {
    /// Database URL: sqlite://PATH (default sqlite://commcredits.db).
    #[arg(long, global = true, env = "COMMCREDITS_DB", default_value = "sqlite://commcredits.db")]
    db: String,
    /// Print the API's JSON objects instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// SMTP server for notices: smtp://HOST:PORT, smtp://HOST:PORT?tls=required
    /// (STARTTLS), smtps://USER:PASS@HOST (implicit TLS). Without it notices are kept
    /// and shown, not e-mailed.
    #[arg(long, global = true, env = "COMMCREDITS_SMTP_URL")]
    smtp_url: Option<String>,
    /// Sender of notice e-mails.
    #[arg(
        long,
        global = true,
        env = "COMMCREDITS_MAIL_FROM",
        default_value = "commcredits <noreply@commcredits.invalid>"
    )]
    mail_from: String,
    /// Base URL of the admin pages, linked from e-mails.
    #[arg(long, global = true, env = "COMMCREDITS_PUBLIC_URL", default_value = "http://127.0.0.1:8080")]
    public_url: String,
    /// Seals webhook signing secrets at rest: 64 hex digits (`openssl rand -hex 32`).
    /// Without it webhooks cannot be added. Never printed or logged.
    #[arg(long, global = true, env = "COMMCREDITS_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// Let webhooks reach loopback and private addresses (tests, closed networks). Off:
    /// only public internet addresses are allowed; metadata addresses never are.
    #[arg(long, global = true, env = "COMMCREDITS_ALLOW_PRIVATE_WEBHOOKS")]
    allow_private_webhooks: bool,
    /// Act as if the time were this RFC 3339 instant (for replaying and testing).
    #[arg(long, global = true, env = "COMMCREDITS_NOW", hide = true)]
    now: Option<String>,
    #[command(subcommand)]
    command: Verb,
}

/// What keeps outside requests from stopping call control (README "Limits and timeouts").
#[derive(clap::Args)]
struct LimitArgs {
    /// Connections open at once; one more is answered 503 overloaded and closed.
    #[arg(long, env = "COMMCREDITS_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Connections open at once from one client address (trusted proxies excepted).
    #[arg(long, env = "COMMCREDITS_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    max_connections_per_address: usize,
    /// Seconds a client has to send a request's whole header (and an idle keep-alive
    /// connection waits for its next request).
    #[arg(long, env = "COMMCREDITS_HEADER_TIMEOUT", default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a client may go without sending any of a request body.
    #[arg(long, env = "COMMCREDITS_BODY_TIMEOUT", default_value_t = 30)]
    body_timeout: u64,
    /// Seconds from a request's header to its answer's header (a streamed export's
    /// length is not limited, only its pace: --send-timeout).
    #[arg(long, env = "COMMCREDITS_REQUEST_TIMEOUT", default_value_t = 300)]
    request_timeout: u64,
    /// Seconds a client may go without accepting any byte of an answer; then it is
    /// dropped and an export it was reading stops.
    #[arg(long, env = "COMMCREDITS_SEND_TIMEOUT", default_value_t = 30)]
    send_timeout: u64,
    /// Report work (exports, report pages, summaries) running at once; past it 503 overloaded.
    #[arg(long, env = "COMMCREDITS_MAX_REPORTS", default_value_t = 8)]
    max_reports: usize,
    /// File exports one key may run at once; past it 429 rate_limited.
    #[arg(long, env = "COMMCREDITS_MAX_EXPORTS_PER_KEY", default_value_t = 2)]
    max_exports_per_key: usize,
    /// A proxy (CIDR, or one address) whose X-Forwarded-For names the client for the
    /// failed-authentication limiter; repeatable, or comma-separated in the variable.
    #[arg(long = "trusted-proxy", env = "COMMCREDITS_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_proxy)]
    trusted_proxies: Vec<commcredits_server::limits::IpNet>,
    /// Requires `Authorization: Bearer TOKEN` on /metrics (open without it).
    #[arg(long, env = "COMMCREDITS_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
}

fn parse_proxy(text: &str) -> std::result::Result<commcredits_server::limits::IpNet, String> {
    let text = text.trim();
    text.parse::<commcredits_server::limits::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(commcredits_server::limits::IpNet::from))
        .map_err(|_| format!("'{text}' is not an address or a CIDR block such as 10.0.0.0/8"))
}

impl LimitArgs {
    /// The server's limits; a zero count or time is taken as the smallest sensible one.
    fn apply(&self, options: &mut commcredits_server::ServerOptions) {
        let secs = |s: u64| std::time::Duration::from_secs(s.max(1));
        options.limits = commcredits_server::limits::Limits {
            max_connections: match commcredits_server::limits::connections_that_fit() {
                Some(fit) if fit < self.max_connections => {
                    eprintln!(
                        "--max-connections {} is above what the open-file limit leaves room for: serving at most {fit}",
                        self.max_connections
                    );
                    fit
                }
                _ => self.max_connections,
            }
            .max(1),
            max_connections_per_address: self.max_connections_per_address.max(1),
            unlimited: Vec::new(),
            header_read_timeout: secs(self.header_timeout),
            body_read_timeout: secs(self.body_timeout),
            request_timeout: secs(self.request_timeout),
            send_timeout: secs(self.send_timeout),
            max_reports: self.max_reports.max(1),
            max_exports_per_key: self.max_exports_per_key.max(1),
        };
        options.trusted_proxies = self.trusted_proxies.clone();
        options.metrics_token = self.metrics_token.clone().filter(|t| !t.is_empty());
    }
}

#[derive(Subcommand)]
enum Verb {
    /// Run the HTTP API and the background jobs.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "COMMCREDITS_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Seed the demo organization (a month of traffic) when the database is empty,
        /// and print an admin key for it.
        #[arg(long)]
        demo: bool,
        /// Seconds between background job runs.
        #[arg(long, default_value_t = 15)]
        jobs_every: u64,
        /// Seconds a reservation stays valid beyond its granted time without an update or end.
        #[arg(long, default_value_t = 30)]
        reservation_grace: i64,
        /// Signs the admin pages' session cookies. Servers behind one address must share
        /// it; without it each start picks a random one (signing everyone out).
        #[arg(long, env = "COMMCREDITS_SESSION_SECRET", hide_env_values = true)]
        session_secret: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Organizations.
    #[command(subcommand)]
    Org(OrgVerb),
    /// Users of an organization.
    #[command(subcommand)]
    User(UserVerb),
    /// License subscriptions (seats).
    #[command(subcommand)]
    Subscription(SubscriptionVerb),
    /// License assignment.
    #[command(subcommand)]
    License(LicenseVerb),
    /// Phone numbers.
    #[command(subcommand)]
    Number(NumberVerb),
    /// Cards and Enterprise Agreements.
    #[command(subcommand, name = "payment-method")]
    PaymentMethod(PaymentMethodVerb),
    /// Buy Communications Credits.
    #[command(subcommand)]
    Funds(FundsVerb),
    /// Automatic recharge settings.
    #[command(subcommand, name = "auto-recharge")]
    AutoRecharge(AutoRechargeVerb),
    /// The credits account.
    #[command(subcommand)]
    Credits(CreditsVerb),
    /// The ledger of every change of money.
    Ledger {
        #[arg(long)]
        org: String,
        /// Continue after this cursor (printed at the end of the previous page).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Purchases and recharges, with status and failure reason.
    Orders {
        #[arg(long)]
        org: String,
    },
    /// Minute pools of the current month.
    Pools {
        #[arg(long)]
        org: String,
    },
    /// Notices written for the organization's admins.
    Notifications {
        #[arg(long)]
        org: String,
    },
    /// How much to recharge and when: from the organization's spend history.
    Recommend {
        #[arg(long)]
        org: String,
    },
    /// Reports: PSTN usage details to CSV or Excel, summaries.
    #[command(subcommand)]
    Report(ReportVerb),
    /// Deliveries of notices (e-mail, webhooks): status, attempts, last error.
    Deliveries {
        #[arg(long)]
        org: String,
    },
    /// Webhook endpoints that receive notices, signed with HMAC-SHA256.
    #[command(subcommand)]
    Webhook(WebhookVerb),
    /// Calls that were refused, with the reason.
    Blocked {
        #[arg(long)]
        org: String,
    },
    /// What a call would cost and who would pay; changes nothing.
    Rate {
        #[arg(long)]
        org: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        to: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long = "type", default_value = "outbound")]
        call_type: String,
        #[arg(long)]
        seconds: Option<u32>,
    },
    /// Real-time call control: authorize, update, end.
    #[command(subcommand)]
    Call(CallVerb),
    /// Offline charging of CDR files.
    #[command(subcommand)]
    Cdr(CdrVerb),
    /// Rate decks.
    #[command(subcommand)]
    Rates(RatesVerb),
    /// Background jobs.
    #[command(subcommand)]
    Jobs(JobsVerb),
    /// API keys for the HTTP API.
    #[command(subcommand)]
    Keys(KeysVerb),
    /// Seed a demo organization and run a month of traffic through the engine.
    Demo,
}

#[derive(Args)]
struct Period {
    #[arg(long)]
    org: String,
    /// Start of the period, inclusive: RFC 3339, or a date (its start in UTC).
    #[arg(long)]
    from: String,
    /// End of the period, exclusive: RFC 3339, or a date (its start in UTC).
    #[arg(long)]
    to: String,
}

#[derive(Subcommand)]
enum ReportVerb {
    /// Spend and calls by day, user, destination country and call type.
    Summary(Period),
    /// Conference dial-out per meeting organizer.
    DialOut(Period),
    /// Users whose calls were refused, and why.
    Blocked(Period),
    /// PSTN usage details: one row per call, the original product's columns then ours.
    Usage {
        #[arg(long)]
        org: String,
        /// Start of the period, inclusive: RFC 3339, or a date (its start in UTC).
        #[arg(long)]
        from: String,
        /// End of the period, exclusive: RFC 3339, or a date (its start in UTC).
        #[arg(long)]
        to: String,
        /// csv, xlsx, or zip (the original product's bundle: the CSV and parameters.json).
        #[arg(long, default_value = "csv")]
        format: String,
        #[arg(long)]
        output: std::path::PathBuf,
        /// Only this user (id or UPN).
        #[arg(long)]
        user: Option<String>,
        /// outbound, toll_free_inbound, conference_dial_out (or user_out, conf_out, ucap_in).
        #[arg(long = "type")]
        call_type: Option<String>,
        /// plan, credits, plan_and_credits, emergency.
        #[arg(long)]
        funding: Option<String>,
        /// MCOPSTN1, MCOPSTN2, MCOMEETADD, MCOPSTNPP.
        #[arg(long)]
        capability: Option<String>,
        /// Destination country (ISO 3166 alpha-2).
        #[arg(long)]
        country: Option<String>,
    },
}

#[derive(Subcommand)]
enum WebhookVerb {
    /// Add an endpoint; prints its signing secret once.
    Add {
        #[arg(long)]
        org: String,
        #[arg(long)]
        url: String,
    },
    List {
        #[arg(long)]
        org: String,
    },
    Delete {
        #[arg(long)]
        org: String,
        #[arg(long)]
        id: String,
    },
    /// Send a signed test event now.
    Test {
        #[arg(long)]
        org: String,
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum KeysVerb {
    /// Create a key and print its secret (shown once).
    Create {
        /// Organization for admin, billing_admin, license_admin and reader keys.
        #[arg(long)]
        org: Option<String>,
        /// operator, call_control (platform) or admin, billing_admin, license_admin, reader.
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys of an organization, or the platform keys.
    List {
        #[arg(long)]
        org: Option<String>,
    },
    Revoke {
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum OrgVerb {
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        currency: String,
        #[arg(long)]
        country: String,
        /// Notification recipient (repeatable).
        #[arg(long = "email")]
        emails: Vec<String>,
    },
    Show {
        #[arg(long)]
        org: String,
    },
    List,
    /// Change notification recipients, the low-balance warning level, suspension.
    Set {
        #[arg(long)]
        org: String,
        /// Replaces the recipients (repeatable).
        #[arg(long = "email")]
        emails: Vec<String>,
        /// Warning level in major units, or `none`.
        #[arg(long)]
        low_balance: Option<String>,
        #[arg(long)]
        suspended: Option<bool>,
        /// Notice kinds to turn off, comma-separated (`none` turns every kind on).
        #[arg(long)]
        notices_off: Option<String>,
    },
}

#[derive(Subcommand)]
enum UserVerb {
    Create {
        #[arg(long)]
        org: String,
        #[arg(long)]
        upn: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        location: String,
        #[arg(long)]
        number: Option<String>,
    },
    List {
        #[arg(long)]
        org: String,
    },
    Show {
        #[arg(long)]
        org: String,
        #[arg(long)]
        user: String,
    },
    /// Change a user's name, location, dial-out policies or monthly spend limit.
    Set {
        #[arg(long)]
        org: String,
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        location: Option<String>,
        /// international, domestic or disabled.
        #[arg(long)]
        dial_out: Option<String>,
        /// international, domestic or disabled.
        #[arg(long)]
        conference_dial_out: Option<String>,
        /// Monthly credits limit in major units, or `none`.
        #[arg(long)]
        spend_limit: Option<String>,
    },
}

#[derive(Subcommand)]
enum SubscriptionVerb {
    Add {
        #[arg(long)]
        org: String,
        #[arg(long)]
        sku: String,
        #[arg(long)]
        quantity: i64,
    },
    List {
        #[arg(long)]
        org: String,
    },
}

#[derive(Args)]
struct LicenseArgs {
    #[arg(long)]
    org: String,
    #[arg(long)]
    sku: String,
    /// User id or UPN (repeatable; all or nothing).
    #[arg(long = "user", required = true)]
    users: Vec<String>,
}

#[derive(Subcommand)]
enum LicenseVerb {
    Assign(LicenseArgs),
    Remove(LicenseArgs),
    /// Replace one user's licenses with exactly these SKUs.
    Set {
        #[arg(long)]
        org: String,
        #[arg(long)]
        user: String,
        #[arg(long = "sku")]
        skus: Vec<String>,
    },
}

#[derive(Subcommand)]
enum NumberVerb {
    Add {
        #[arg(long)]
        org: String,
        #[arg(long)]
        number: String,
        /// user, service or toll_free.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        user: Option<String>,
    },
    List {
        #[arg(long)]
        org: String,
    },
}

#[derive(Subcommand)]
enum PaymentMethodVerb {
    Add {
        #[arg(long)]
        org: String,
        #[arg(long, conflicts_with = "ea", requires = "exp")]
        card: Option<String>,
        /// Card expiry, MM/YYYY.
        #[arg(long)]
        exp: Option<String>,
        #[arg(long)]
        holder: Option<String>,
        /// Enterprise Agreement number.
        #[arg(long, required_unless_present = "card")]
        ea: Option<String>,
    },
    List {
        #[arg(long)]
        org: String,
    },
}

#[derive(Subcommand)]
enum FundsVerb {
    Add {
        #[arg(long)]
        org: String,
        /// Amount in major units of the billing currency (50.00).
        #[arg(long)]
        amount: String,
        #[arg(long)]
        payment_method: String,
        /// Purchase order number (Enterprise Agreement orders).
        #[arg(long)]
        po: Option<String>,
        /// Record a purchase made earlier (RFC 3339); expiry counts from it.
        #[arg(long)]
        at: Option<String>,
    },
}

#[derive(Subcommand)]
enum AutoRechargeVerb {
    Set {
        #[arg(long)]
        org: String,
        #[arg(long, action = clap::ArgAction::Set)]
        enabled: bool,
        #[arg(long)]
        amount: Option<String>,
        #[arg(long)]
        threshold: Option<String>,
        #[arg(long)]
        payment_method: Option<String>,
    },
}

#[derive(Subcommand)]
enum CreditsVerb {
    Show {
        #[arg(long)]
        org: String,
    },
    /// Verify the accounting identity and the invariants of the books.
    Check {
        #[arg(long)]
        org: String,
    },
}

#[derive(Subcommand)]
enum CallVerb {
    Authorize {
        #[arg(long)]
        org: String,
        #[arg(long)]
        call_id: String,
        /// outbound, toll_free_inbound or conference_dial_out.
        #[arg(long = "type")]
        call_type: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        seconds: Option<u32>,
    },
    Update {
        #[arg(long)]
        org: String,
        #[arg(long)]
        call_id: String,
        /// Seconds used since answer (cumulative).
        #[arg(long)]
        used: u32,
        /// Further seconds wanted.
        #[arg(long, default_value_t = 0)]
        seconds: u32,
    },
    End {
        #[arg(long)]
        org: String,
        #[arg(long)]
        call_id: String,
        #[arg(long)]
        duration: u32,
    },
}

#[derive(Subcommand)]
enum CdrVerb {
    /// Import a CSV with header call_id,type,user,from,to,start_time,duration_seconds.
    Import {
        #[arg(long)]
        org: String,
        file: std::path::PathBuf,
        /// Write rejected rows (line, call id, code, reason) to this CSV file.
        #[arg(long)]
        rejects: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum RatesVerb {
    /// Replace a rate deck (prefix,name,connection_fee,rate_per_minute,increment_seconds,premium).
    Import {
        file: std::path::PathBuf,
        /// outbound, dial_out or toll_free.
        #[arg(long, default_value = "outbound")]
        kind: String,
        #[arg(long)]
        currency: String,
    },
}

#[derive(Subcommand)]
enum JobsVerb {
    /// Run every due job now: lot expiry, reservation timeouts, pool reset, expiring-funds notices, pending orders.
    Run,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out { json: cli.json };
    match run(cli, &out) {
        Ok(code) => code,
        Err(e) => {
            out.error(&e);
            ExitCode::from(1)
        }
    }
}

use commcredits_core::period::parse_period_time;

fn parse_time(what: &str, text: &str) -> Result<Timestamp> {
    text.parse().map_err(|_| {
        err!(ErrorCode::InvalidTime, "{what} '{text}' is not an RFC 3339 time such as 2026-11-02T09:15:00Z")
    })
}

fn created(o: Outcome) -> Result<String> {
    match o {
        Outcome::Created { id } => Ok(id),
        _ => Err(err!(ErrorCode::Internal, "unexpected outcome")),
    }
}

fn none_or(text: Option<String>) -> Option<Option<String>> {
    text.map(|t| if t.eq_ignore_ascii_case("none") { None } else { Some(t) })
}

/// Runs one verb. An error is returned for `main` to print; a verb that printed its
/// own failure returns the exit code instead.
fn run(cli: Cli, out: &Out) -> Result<ExitCode> {
    let now = match &cli.now {
        Some(t) => parse_time("--now", t)?,
        None => Timestamp::now(),
    };
    let secret_key = cli.secret_key.as_deref().map(commcredits_engine::delivery::SecretKey::parse).transpose()?;
    let allow_private = cli.allow_private_webhooks;
    if let Verb::Serve { listen, demo, jobs_every, reservation_grace, session_secret, limits } = &cli.command {
        let channels = delivery(&cli.smtp_url, &cli.mail_from, &cli.public_url, allow_private)?;
        let secret = session_secret.as_deref();
        return serve(
            &cli.db,
            listen,
            *demo,
            *jobs_every,
            *reservation_grace,
            secret,
            limits,
            secret_key,
            channels,
            now,
        );
    }
    if matches!(cli.command, Verb::Demo) {
        let engine = Engine::open(&cli.db)?;
        let report = commcredits_engine::demo::run(&engine, now)?;
        out.demo(&report);
        return Ok(ExitCode::SUCCESS);
    }
    let mut engine = Engine::open(&cli.db)?;
    engine.config.secret_key = secret_key;
    let e = &engine;
    let org = |text: &str| -> Result<String> { Ok(e.resolve_org(text)?.org_id) };
    match cli.command {
        Verb::Demo | Verb::Serve { .. } => unreachable!("handled above"),
        Verb::Org(v) => match v {
            OrgVerb::Create { name, currency, country, emails } => {
                let id = created(e.apply_one(now, Command::CreateOrg { name, currency, country, emails })?)?;
                out.org(&e.org_view(&id)?);
            }
            OrgVerb::Show { org: o } => out.org(&e.org_view(&org(&o)?)?),
            OrgVerb::List => out.orgs(&e.orgs()?),
            OrgVerb::Set { org: o, emails, low_balance, suspended, notices_off } => {
                let id = org(&o)?;
                let emails = if emails.is_empty() { None } else { Some(emails) };
                let disabled_notices = notices_off.map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty() && *k != "none")
                        .map(str::to_string)
                        .collect()
                });
                e.apply_one(
                    now,
                    Command::UpdateOrg {
                        org: id.clone(),
                        emails,
                        low_balance: none_or(low_balance),
                        suspended,
                        disabled_notices,
                    },
                )?;
                out.org(&e.org_view(&id)?);
            }
        },
        Verb::User(v) => match v {
            UserVerb::Create { org: o, upn, name, location, number } => {
                let oid = org(&o)?;
                let id = created(e.apply_one(
                    now,
                    Command::CreateUser {
                        org: oid.clone(),
                        upn,
                        display_name: name,
                        usage_location: location,
                        phone_number: number,
                    },
                )?)?;
                out.user(&e.user(&oid, &id)?);
            }
            UserVerb::List { org: o } => out.users(&e.users(&org(&o)?)?),
            UserVerb::Show { org: o, user } => out.user(&e.user(&org(&o)?, &user)?),
            UserVerb::Set { org: o, user, name, location, dial_out, conference_dial_out, spend_limit } => {
                let oid = org(&o)?;
                e.apply_one(
                    now,
                    Command::UpdateUser(UserChanges {
                        org: oid.clone(),
                        user: user.clone(),
                        display_name: name,
                        usage_location: location,
                        dial_out,
                        conference_dial_out,
                        spend_limit: none_or(spend_limit),
                    }),
                )?;
                out.user(&e.user(&oid, &user)?);
            }
        },
        Verb::Subscription(v) => match v {
            SubscriptionVerb::Add { org: o, sku, quantity } => {
                let oid = org(&o)?;
                e.apply_one(now, Command::AddSubscription { org: oid.clone(), sku, quantity })?;
                out.subscriptions(&e.subscriptions(&oid)?);
            }
            SubscriptionVerb::List { org: o } => out.subscriptions(&e.subscriptions(&org(&o)?)?),
        },
        Verb::License(v) => {
            let (oid, users) = match v {
                LicenseVerb::Assign(a) => {
                    let oid = org(&a.org)?;
                    e.apply_one(now, Command::AssignLicense { org: oid.clone(), sku: a.sku, users: a.users.clone() })?;
                    (oid, a.users)
                }
                LicenseVerb::Remove(a) => {
                    let oid = org(&a.org)?;
                    e.apply_one(now, Command::RemoveLicense { org: oid.clone(), sku: a.sku, users: a.users.clone() })?;
                    (oid, a.users)
                }
                LicenseVerb::Set { org: o, user, skus } => {
                    let oid = org(&o)?;
                    e.apply_one(now, Command::SetLicenses { org: oid.clone(), user: user.clone(), skus })?;
                    (oid, vec![user])
                }
            };
            let views = users.iter().map(|u| e.user(&oid, u)).collect::<Result<Vec<_>>>()?;
            out.users(&views);
        }
        Verb::Number(v) => match v {
            NumberVerb::Add { org: o, number, kind, user } => {
                let oid = org(&o)?;
                let n = created(e.apply_one(now, Command::AddNumber { org: oid.clone(), number, kind, user })?)?;
                let view = e
                    .numbers(&oid)?
                    .into_iter()
                    .find(|x| x.number == n)
                    .ok_or_else(|| err!(ErrorCode::Internal, "number vanished"))?;
                out.number(&view);
            }
            NumberVerb::List { org: o } => out.numbers(&e.numbers(&org(&o)?)?),
        },
        Verb::PaymentMethod(v) => match v {
            PaymentMethodVerb::Add { org: o, card, exp, holder, ea } => {
                let oid = org(&o)?;
                let id = match (card, ea) {
                    (Some(number), None) => {
                        let (exp_month, exp_year) = parse_expiry(exp.as_deref().unwrap_or(""))?;
                        let token = e.gateway().tokenize_card(
                            &CardInput { number, exp_month, exp_year, holder: holder.clone().unwrap_or_default() },
                            now,
                        )?;
                        created(e.apply_one(now, Command::AddCard { org: oid.clone(), token, holder })?)?
                    }
                    (None, Some(agreement_number)) => {
                        created(e.apply_one(now, Command::AddAgreement { org: oid.clone(), agreement_number })?)?
                    }
                    _ => {
                        return Err(err!(
                            ErrorCode::InvalidInput,
                            "give either --card NUMBER --exp MM/YYYY or --ea AGREEMENT"
                        ))
                    }
                };
                let view = e
                    .payment_methods(&oid)?
                    .into_iter()
                    .find(|p| p.id == id)
                    .ok_or_else(|| err!(ErrorCode::Internal, "payment method vanished"))?;
                out.payment_method(&view);
            }
            PaymentMethodVerb::List { org: o } => out.payment_methods(&e.payment_methods(&org(&o)?)?),
        },
        Verb::Funds(FundsVerb::Add { org: o, amount, payment_method, po, at }) => {
            let oid = org(&o)?;
            let at = at.map(|t| parse_time("--at", &t)).transpose()?;
            let order = e.purchase(&oid, &amount, &payment_method, po.as_deref(), at, now)?;
            out.order_and_credits(&order, &e.credits(&oid)?);
        }
        Verb::AutoRecharge(AutoRechargeVerb::Set { org: o, enabled, amount, threshold, payment_method }) => {
            let oid = org(&o)?;
            e.apply_one(
                now,
                Command::SetAutoRecharge {
                    org: oid.clone(),
                    enabled,
                    amount,
                    threshold,
                    payment_method_id: payment_method,
                },
            )?;
            out.credits(&e.credits(&oid)?);
        }
        Verb::Credits(CreditsVerb::Show { org: o }) => out.credits(&e.credits(&org(&o)?)?),
        Verb::Credits(CreditsVerb::Check { org: o }) => {
            let oid = org(&o)?;
            let currency = e.credits(&oid)?.currency;
            out.books(&e.check_books(&oid)?, &currency);
        }
        Verb::Ledger { org: o, after, limit } => {
            let oid = org(&o)?;
            out.ledger(&e.ledger(&oid, after.as_deref(), limit)?);
        }
        Verb::Orders { org: o } => out.orders(&e.orders(&org(&o)?)?),
        Verb::Pools { org: o } => out.pools(&e.pools(&org(&o)?, now)?),
        Verb::Notifications { org: o } => out.notices(&e.notices(&org(&o)?)?),
        Verb::Blocked { org: o } => out.denials(&e.denials(&org(&o)?)?),
        Verb::Rate { org: o, user, to, from, call_type, seconds } => {
            let oid = org(&o)?;
            let from = match from {
                Some(f) => f,
                None => default_from(e, &oid, user.as_deref(), &call_type)?,
            };
            let req = AuthorizeRequest {
                org: oid,
                call_id: "quote".into(),
                call_type,
                user,
                from,
                to,
                requested_seconds: seconds,
            };
            out.authorize(&e.rate(&req, now)?);
        }
        Verb::Call(v) => match v {
            CallVerb::Authorize { org: o, call_id, call_type, user, from, to, seconds } => {
                let req =
                    AuthorizeRequest { org: org(&o)?, call_id, call_type, user, from, to, requested_seconds: seconds };
                match e.apply_one(now, Command::Authorize(req))? {
                    Outcome::Authorized(v) => out.authorize(&v),
                    _ => return Err(err!(ErrorCode::Internal, "unexpected outcome")),
                }
            }
            CallVerb::Update { org: o, call_id, used, seconds } => {
                match e.apply_one(
                    now,
                    Command::Update { org: org(&o)?, call_id, used_seconds: used, requested_seconds: seconds },
                )? {
                    Outcome::Updated(v) => out.update(&v),
                    _ => return Err(err!(ErrorCode::Internal, "unexpected outcome")),
                }
            }
            CallVerb::End { org: o, call_id, duration } => {
                match e.apply_one(now, Command::End { org: org(&o)?, call_id, duration_seconds: duration })? {
                    Outcome::Ended(v) => out.end(&v),
                    _ => return Err(err!(ErrorCode::Internal, "unexpected outcome")),
                }
            }
        },
        Verb::Cdr(CdrVerb::Import { org: o, file, rejects }) => {
            let oid = org(&o)?;
            let f = std::fs::File::open(&file)
                .map_err(|er| err!(ErrorCode::InvalidInput, "cannot read {}: {er}", file.display()))?;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let bar = output::progress(len, cli.json);
            let mut done_rows = 0;
            // The rejects file gets each rejected row as its batch is done.
            let mut rejects = rejects.as_deref().map(output::RejectsFile::create).transpose()?;
            let report =
                e.import_cdrs_with_rejects(&oid, bar.wrap_read(f), now, &mut |rows| done_rows = rows, &mut |p| {
                    rejects.as_mut().map_or(Ok(()), |r| r.write(p))
                })?;
            bar.finish_and_clear();
            if let Some(r) = rejects {
                r.finish()?;
            }
            if report.charged == 0 && !report.rejected.is_empty() && report.duplicates == 0 {
                // Nothing could be charged: one error, carrying the rows and why.
                let first = &report.rejected[0];
                let e = err!(
                    ErrorCode::InvalidCdr,
                    "no row of {} could be charged ({} rejected; line {}: {} {})",
                    file.display(),
                    report.rejected_total,
                    first.line,
                    first.code,
                    first.message
                );
                out.import_failed(&e, &report);
                return Ok(ExitCode::from(1));
            }
            let currency = e.credits(&oid)?.currency;
            out.import(&report, &currency);
        }
        Verb::Rates(RatesVerb::Import { file, kind, currency }) => {
            let csv = std::fs::read_to_string(&file)
                .map_err(|er| err!(ErrorCode::InvalidInput, "cannot read {}: {er}", file.display()))?;
            let kind = DeckKind::parse(&kind)?;
            match e.apply_one(now, Command::ImportRates { kind, currency: currency.clone(), csv })? {
                Outcome::Count(n) => out.rates_imported(kind.as_str(), &currency.to_ascii_uppercase(), n),
                _ => return Err(err!(ErrorCode::Internal, "unexpected outcome")),
            }
        }
        Verb::Jobs(JobsVerb::Run) => {
            let jobs = e.run_jobs(now)?;
            let sent = e.deliver_due(now, &delivery(&cli.smtp_url, &cli.mail_from, &cli.public_url, allow_private)?)?;
            out.jobs(&jobs, &sent);
        }
        Verb::Deliveries { org: o } => out.deliveries(&e.deliveries(&org(&o)?)?),
        Verb::Recommend { org: o } => out.recommendation(&e.recommend(&org(&o)?, now)?),
        Verb::Report(ReportVerb::Summary(p)) => out.summary(&e.summary(
            &org(&p.org)?,
            parse_period_time("--from", &p.from)?,
            parse_period_time("--to", &p.to)?,
        )?),
        Verb::Report(ReportVerb::DialOut(p)) => out.any(&e.dial_out_by_organizer(
            &org(&p.org)?,
            parse_period_time("--from", &p.from)?,
            parse_period_time("--to", &p.to)?,
        )?),
        Verb::Report(ReportVerb::Blocked(p)) => out.any(&e.blocked_users(
            &org(&p.org)?,
            parse_period_time("--from", &p.from)?,
            parse_period_time("--to", &p.to)?,
        )?),
        Verb::Report(ReportVerb::Usage {
            org: o,
            from,
            to,
            format,
            output,
            user,
            call_type,
            funding,
            capability,
            country,
        }) => {
            let oid = org(&o)?;
            let filter = commcredits_engine::usage::UsageFilter {
                from: Some(parse_period_time("--from", &from)?),
                to: Some(parse_period_time("--to", &to)?),
                user,
                call_type,
                funding,
                capability,
                country,
            };
            let bar = output::progress(0, cli.json);
            let rows = match format.as_str() {
                "csv" => {
                    let file = std::fs::File::create(&output)
                        .map_err(|er| err!(ErrorCode::InvalidInput, "cannot write {}: {er}", output.display()))?;
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
                    let n = e.write_usage_csv(&oid, &filter, &mut w)?;
                    w.flush().map_err(|er| err!(ErrorCode::InvalidInput, "cannot write {}: {er}", output.display()))?;
                    n
                }
                "xlsx" => e.write_usage_xlsx(&oid, &filter, &output)?,
                "zip" => {
                    let file = std::fs::File::create(&output)
                        .map_err(|er| err!(ErrorCode::InvalidInput, "cannot write {}: {er}", output.display()))?;
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
                    let id = commcredits_engine::usage::new_export_id();
                    let n = e.write_usage_zip(&oid, &filter, &id, now, &mut w)?;
                    w.flush().map_err(|er| err!(ErrorCode::InvalidInput, "cannot write {}: {er}", output.display()))?;
                    n
                }
                other => return Err(err!(ErrorCode::InvalidInput, "--format must be csv, xlsx or zip, not '{other}'")),
            };
            bar.finish_and_clear();
            out.report_written(rows, &output.display().to_string(), &format);
        }
        Verb::Webhook(v) => match v {
            WebhookVerb::Add { org: o, url } => {
                use commcredits_engine::delivery::{HttpWebhooks, WebhookSender};
                // The address is resolved and checked before the command, outside the transaction.
                HttpWebhooks::new(allow_private)
                    .check(url.trim())
                    .map_err(|m| Error::new(ErrorCode::InvalidInput, m))?;
                match e.apply_one(now, Command::AddWebhook { org: org(&o)?, url })? {
                    Outcome::Webhook(w) => out.new_webhook(&w),
                    _ => return Err(err!(ErrorCode::Internal, "unexpected outcome")),
                }
            }
            WebhookVerb::List { org: o } => out.webhooks(&e.webhooks(&org(&o)?)?),
            WebhookVerb::Delete { org: o, id } => {
                let oid = org(&o)?;
                e.apply_one(now, Command::DeleteWebhook { org: oid.clone(), webhook_id: id })?;
                out.webhooks(&e.webhooks(&oid)?);
            }
            WebhookVerb::Test { org: o, id } => {
                e.test_webhook(&org(&o)?, &id, &commcredits_engine::delivery::HttpWebhooks::new(allow_private), now)?;
                out.done("the endpoint accepted the signed test event");
            }
        },
        Verb::Keys(v) => match v {
            KeysVerb::Create { org: o, role, name } => {
                let oid = o.map(|o| org(&o)).transpose()?;
                match e.apply_one(now, Command::CreateKey { org: oid, role, name })? {
                    Outcome::Key(k) => out.new_key(&k),
                    _ => return Err(err!(ErrorCode::Internal, "unexpected outcome")),
                }
            }
            KeysVerb::List { org: o } => {
                let oid = o.map(|o| org(&o)).transpose()?;
                out.keys(&e.keys(oid.as_deref())?);
            }
            KeysVerb::Revoke { org: o, id } => {
                let oid = o.map(|o| org(&o)).transpose()?;
                e.apply_one(now, Command::RevokeKey { org: oid.clone(), key_id: id })?;
                out.keys(&e.keys(oid.as_deref())?);
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// The caller number `rate` assumes when none is given: the user's own number, or none
/// (the user's usage location is enough to price an outbound or dial-out call).
fn default_from(e: &Engine, org_id: &str, user: Option<&str>, call_type: &str) -> Result<String> {
    if call_type == "toll_free_inbound" {
        return Err(Error::new(
            ErrorCode::InvalidInput,
            "toll_free_inbound needs --from: the caller's number sets the price",
        ));
    }
    let number = match user {
        Some(u) => e.user(org_id, u)?.phone_number,
        None => None,
    };
    Ok(number.unwrap_or_default())
}

/// The delivery channels configured on the command line.
fn delivery(
    smtp_url: &Option<String>,
    mail_from: &str,
    public_url: &str,
    allow_private_webhooks: bool,
) -> Result<commcredits_engine::delivery::Delivery> {
    let mailer: Option<std::sync::Arc<dyn commcredits_engine::delivery::Mailer>> = match smtp_url {
        Some(url) => Some(std::sync::Arc::new(commcredits_engine::delivery::SmtpMailer::new(url, mail_from)?)),
        None => None,
    };
    Ok(commcredits_engine::delivery::Delivery {
        webhooks: std::sync::Arc::new(commcredits_engine::delivery::HttpWebhooks::new(allow_private_webhooks)),
        ..commcredits_engine::delivery::Delivery::new(mailer, public_url)
    })
}

fn serve(
    db: &str,
    listen: &str,
    demo: bool,
    jobs_every: u64,
    grace_seconds: i64,
    session_secret: Option<&str>,
    limits: &LimitArgs,
    secret_key: Option<commcredits_engine::delivery::SecretKey>,
    channels: commcredits_engine::delivery::Delivery,
    now: Timestamp,
) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let mut engine = Engine::open(db)?;
    engine.config.grace_seconds = grace_seconds.clamp(0, 3600);
    if secret_key.is_none() {
        eprintln!("No --secret-key: webhooks cannot be added (their secrets are kept encrypted).");
    }
    engine.config.secret_key = secret_key;
    // Secrets stored in clear before keys existed are sealed now (they keep working either way).
    let sealed = engine.seal_webhook_secrets()?;
    if sealed > 0 {
        eprintln!("Sealed {sealed} webhook secrets that were stored in clear.");
    }
    let engine = std::sync::Arc::new(engine);
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| err!(ErrorCode::Internal, "cannot start the runtime: {e}"))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(listen))
        .map_err(|e| err!(ErrorCode::InvalidInput, "cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| err!(ErrorCode::Internal, "{e}"))?;
    if demo {
        if engine.orgs()?.is_empty() {
            eprintln!("Seeding the demo organization (a month of traffic)...");
            let report = commcredits_engine::demo::run(&engine, now)?;
            let key = match engine.apply_one(
                now,
                Command::CreateKey {
                    org: Some(report.org_id.clone()),
                    role: "admin".into(),
                    name: "demo admin".into(),
                },
            )? {
                Outcome::Key(k) => k,
                _ => return Err(err!(ErrorCode::Internal, "unexpected outcome")),
            };
            let cc = match engine.apply_one(
                now,
                Command::CreateKey { org: None, role: "call_control".into(), name: "demo call control".into() },
            )? {
                Outcome::Key(k) => k,
                _ => return Err(err!(ErrorCode::Internal, "unexpected outcome")),
            };
            println!("{}", report.text.trim_end());
            println!();
            println!("Demo organization: {}", report.org_id);
            println!("API:               http://{addr}/v1 (OpenAPI at http://{addr}/openapi.json)");
            println!("Admin center:      http://{addr}/admin/login (sign in with the admin API key)");
            println!("Admin API key:     {}", key.secret);
            println!("Call-control key:  {}", cc.secret);
            println!("Keys are shown once. Try:");
            println!(
                "  curl -H 'Authorization: Bearer {}' http://{addr}/v1/orgs/{}/credits",
                key.secret, report.org_id
            );
        } else {
            println!("The database already holds organizations: not seeding the demo.");
            println!("Create a key with: commcredits --db {db} keys create --org ORG --role admin");
        }
    }
    println!("Listening on http://{addr} (API under /v1, OpenAPI at /openapi.json, admin center at /admin)");
    let mut options = commcredits_server::ServerOptions {
        jobs_every: std::time::Duration::from_secs(jobs_every.max(1)),
        session_secret: session_secret.map(str::to_string),
        ..commcredits_server::ServerOptions::default()
    };
    limits.apply(&mut options);
    runtime
        .block_on(commcredits_server::serve(engine, listener, channels, options))
        .map_err(|e| err!(ErrorCode::Internal, "server failed: {e}"))?;
    eprintln!("Stopped.");
    Ok(ExitCode::SUCCESS)
}
