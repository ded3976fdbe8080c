//! The use cases of commcredits. Every state change is a [`Command`] applied by
//! [`Engine::apply`]: one store transaction for a whole batch, a savepoint per command
//! (a failing command is undone alone), one durable commit. Batching, invariants and
//! (later) idempotency live on this one path.

pub mod admin;
pub mod books;
pub mod builtin;
pub mod calls;
pub mod cdr;
pub mod delivery;
pub mod demo;
pub mod invariants;
pub mod jobs;
pub mod keys;
pub mod notices;
pub mod payments;
pub mod queries;
pub mod summary;
pub mod usage;
pub mod views;

use commcredits_core::catalog::{Catalog, DeckKind, RateDeck};
use commcredits_core::money::Currency;
use commcredits_core::{err, Error, ErrorCode, Result, Timestamp};
use commcredits_store::overlay::WriteBehind;
use commcredits_store::{OrgRow, RateDeckRow, Store, Tx};
use payments::{CardToken, PaymentGateway};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Settings with the product's defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Minimum manual purchase and recharge amount, in major units of the billing currency.
    pub min_purchase_major: i64,
    /// Largest manual purchase and recharge amount, in major units. Bounds every
    /// balance far below integer overflow.
    pub max_purchase_major: i64,
    /// Added to the granted time to form a reservation's validity.
    pub grace_seconds: i64,
    pub default_requested_seconds: u32,
    /// A `funds_expiring` notice is written this many days before a lot expires.
    pub expiring_notice_days: i64,
    /// Largest batch one `apply` accepts.
    pub max_batch: usize,
    /// How long the answer to a request with an `Idempotency-Key` (and a call-control
    /// decision) is replayed; after it the key is free again and `jobs run` deletes the
    /// record.
    pub idempotency_ttl_seconds: i64,
    /// The lease of a claim on an `Idempotency-Key` (a CDR upload, whose work spans
    /// several transactions). The holder renews it while it works; when the holder
    /// dies, another request can take the key once the lease has lapsed.
    pub claim_lease_seconds: i64,
    /// How long a denied authorize is answered again as it was, with no second decision
    /// and no second denial record (the retry of a lost answer). Later, the same call id
    /// is decided again.
    pub denial_replay_ms: i64,
    /// Seals webhook secrets at rest (`--secret-key`); without one, webhooks cannot be
    /// added (those stored in clear before keep working).
    pub secret_key: Option<delivery::SecretKey>,
    /// Longest wait for the payment gateway on one charge; an order not answered by
    /// then stays pending and the jobs charge it again (the gateway is idempotent on
    /// the order id).
    pub gateway_timeout: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            min_purchase_major: 50,
            max_purchase_major: 1_000_000,
            grace_seconds: 30,
            default_requested_seconds: 300,
            expiring_notice_days: 30,
            max_batch: 10_000,
            idempotency_ttl_seconds: 24 * 3600,
            claim_lease_seconds: 120,
            denial_replay_ms: 1_000,
            secret_key: None,
            gateway_timeout: std::time::Duration::from_secs(20),
        }
    }
}

/// Every state change the product knows.
#[derive(Clone, Debug)]
pub enum Command {
    CreateOrg {
        name: String,
        currency: String,
        country: String,
        emails: Vec<String>,
    },
    UpdateOrg {
        org: String,
        emails: Option<Vec<String>>,
        low_balance: Option<Option<String>>,
        suspended: Option<bool>,
        /// Notice kinds to turn off (the full list; others are on).
        disabled_notices: Option<Vec<String>>,
    },
    CreateUser {
        org: String,
        upn: String,
        display_name: String,
        usage_location: String,
        phone_number: Option<String>,
    },
    UpdateUser(admin::UserChanges),
    AddSubscription {
        org: String,
        sku: String,
        quantity: i64,
    },
    SetLicenses {
        org: String,
        user: String,
        skus: Vec<String>,
    },
    AssignLicense {
        org: String,
        sku: String,
        users: Vec<String>,
    },
    RemoveLicense {
        org: String,
        sku: String,
        users: Vec<String>,
    },
    AddNumber {
        org: String,
        number: String,
        kind: String,
        user: Option<String>,
    },
    AddCard {
        org: String,
        token: CardToken,
        holder: Option<String>,
    },
    AddAgreement {
        org: String,
        agreement_number: String,
    },
    PlaceOrder {
        org: String,
        amount: String,
        payment_method_id: String,
        po_number: Option<String>,
        purchased_at: Option<Timestamp>,
    },
    CompleteOrder {
        org: String,
        order_id: String,
        result: std::result::Result<String, payments::PaymentFailure>,
    },
    SetAutoRecharge {
        org: String,
        enabled: bool,
        amount: Option<String>,
        threshold: Option<String>,
        payment_method_id: Option<String>,
    },
    Authorize(calls::AuthorizeRequest),
    Update {
        org: String,
        call_id: String,
        used_seconds: u32,
        requested_seconds: u32,
    },
    End {
        org: String,
        call_id: String,
        duration_seconds: u32,
    },
    ImportCdr(cdr::CdrRecord),
    ImportRates {
        kind: DeckKind,
        currency: String,
        csv: String,
    },
    ExpireLot {
        org: String,
        lot_id: String,
    },
    TimeoutReservation {
        org: String,
        call_id: String,
    },
    NotifyExpiring {
        org: String,
        lot_id: String,
    },
    OpenPools {
        org: String,
    },
    AddWebhook {
        org: String,
        url: String,
    },
    DeleteWebhook {
        org: String,
        webhook_id: String,
    },
    ClaimDelivery {
        org: String,
        delivery_id: String,
        lease: std::time::Duration,
    },
    RecordDelivery {
        org: String,
        delivery_id: String,
        error: Option<String>,
        retry_in: std::time::Duration,
        max_attempts: i64,
    },
    CreateKey {
        org: Option<String>,
        role: String,
        name: String,
    },
    RevokeKey {
        org: Option<String>,
        key_id: String,
    },
    /// Claims an idempotency key for a request whose effects span several
    /// transactions (a CDR file): answers `Claimed` with the claim's token when this
    /// request may proceed, `Replayed` with the first answer, or
    /// `idempotency_key_in_use` while another request holds the claim. The claim is a
    /// lease (`Config::claim_lease_seconds`): a claim whose holder died lapses, and the
    /// key is then taken again, by one request only.
    ClaimAnswer {
        org: String,
        key: String,
        fingerprint: String,
    },
    /// Renews the lease of a claim while its holder works: `Count(1)`, or `Count(0)`
    /// when the claim lapsed and another request took the key.
    RefreshClaim {
        org: String,
        key: String,
        fingerprint: String,
        token: String,
    },
    /// Records the answer to a request claimed with `ClaimAnswer` (`Count(1)`), if the
    /// claim is still this request's (`Count(0)` when it lapsed and was taken). An
    /// answer of 500 or more is not kept: the claim is released and the request may be
    /// sent again.
    RememberAnswer {
        org: String,
        key: String,
        fingerprint: String,
        token: String,
        status: u16,
        body: serde_json::Value,
    },
    /// Runs `inner` once per (`org`, `key`): the answer `keep` asks for is stored in
    /// the same transaction as the effect and replayed afterwards. The same key with
    /// another `fingerprint` (request) fails with `conflict`.
    Idempotent {
        org: String,
        key: String,
        fingerprint: String,
        conflict: ErrorCode,
        keep: Keep,
        inner: Box<Command>,
    },
    /// Deletes at most `limit` idempotency records that have expired (`jobs run`).
    SweepIdempotency {
        limit: usize,
    },
}

/// Which answers [`Command::Idempotent`] keeps, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Every answer below 500, for `Config::idempotency_ttl_seconds`: a request's
    /// `Idempotency-Key`.
    Answer,
    /// Call control for `call_id`: only what deciding again could not give back. An
    /// allowed authorize (a call id is used once) and an update that granted time are
    /// kept until the call ends (at most `Config::idempotency_ttl_seconds`); a denied
    /// authorize for `Config::denial_replay_ms` (a retry of a lost answer); a refused
    /// update, an error or an `end` (which answers its first result by itself) not at
    /// all: those are decided again, on the situation as it is then.
    CallDecision { call_id: String },
}

/// What a command produced.
#[derive(Clone, Debug)]
pub enum Outcome {
    Created {
        id: String,
    },
    Done,
    Order(views::OrderView),
    Authorized(views::AuthorizeView),
    Updated(views::UpdateView),
    Ended(views::EndView),
    /// A CDR import row whose call id was already charged: nothing changed.
    Duplicate {
        call_id: String,
    },
    Count(usize),
    /// A user as the change left it.
    User(views::UserView),
    /// The credits account as the change left it.
    Credits(views::CreditsView),
    /// A claimed delivery, ready to send.
    Delivery(Box<delivery::DeliveryJob>),
    /// A new webhook, with its signing secret (shown once).
    Webhook(views::NewWebhook),
    /// A new API key, with its secret (shown once).
    Key(keys::NewKey),
    /// A claim on an idempotency key, held with this token (`ClaimAnswer`).
    Claimed {
        token: String,
    },
    /// The stored first answer to an idempotent request.
    Replayed {
        status: u16,
        body: serde_json::Value,
    },
}

/// What commands leave for after the commit: orders to send to the gateway. Manual
/// purchases are charged by the thread that placed them (its request waits for the
/// answer); automatic recharges, placed by call control among others, go to the order
/// worker so that no gateway call holds up the call writer.
#[derive(Default)]
pub(crate) struct Effects {
    pub orders: Vec<(String, String)>,
    pub recharges: Vec<(String, String)>,
}

impl Effects {
    fn absorb(&mut self, other: Effects) {
        self.orders.extend(other.orders);
        self.recharges.extend(other.recharges);
    }
}

pub struct Engine {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    decks: RwLock<HashMap<(DeckKind, Currency), Arc<RateDeck>>>,
    gateway: Arc<dyn PaymentGateway>,
    /// The order worker's queue, once [`Engine::start_order_worker`] ran.
    order_queue: std::sync::OnceLock<std::sync::mpsc::SyncSender<books::QueuedOrder>>,
    pub config: Config,
}

impl Engine {
    /// An engine on `store` with the shipped catalog, decks imported into the store
    /// replacing shipped ones, and the sandbox gateway.
    pub fn new(store: Arc<dyn Store>) -> Result<Engine> {
        Engine::with_gateway(store, Arc::new(payments::SandboxGateway))
    }

    pub fn with_gateway(store: Arc<dyn Store>, gateway: Arc<dyn PaymentGateway>) -> Result<Engine> {
        let mut decks = HashMap::new();
        for d in builtin::decks()? {
            decks.insert((d.kind, d.currency), Arc::new(d));
        }
        let engine = Engine {
            store,
            catalog: Arc::new(builtin::catalog()?),
            decks: RwLock::new(decks),
            gateway,
            order_queue: std::sync::OnceLock::new(),
            config: Config::default(),
        };
        engine.reload_decks()?;
        Ok(engine)
    }

    pub fn open(url: &str) -> Result<Engine> {
        Engine::new(Arc::from(commcredits_store::open(url)?))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn gateway(&self) -> &dyn PaymentGateway {
        &*self.gateway
    }

    /// Loads the decks imported with `rates import` over the shipped ones.
    fn reload_decks(&self) -> Result<()> {
        let rows = self.read(|tx| tx.list_rate_decks())?;
        // The map holds whole decks, so a panic elsewhere while it was held cannot have
        // left one half-written: a poisoned lock is taken as it is rather than stopping
        // every later call.
        let mut decks = self.decks.write().unwrap_or_else(|e| e.into_inner());
        for row in rows {
            let kind = DeckKind::parse(&row.kind)?;
            let cur = Currency::parse(&row.currency)?;
            decks.insert((kind, cur), Arc::new(RateDeck::parse_csv(kind, cur, &row.csv)?));
        }
        Ok(())
    }

    pub fn deck(&self, kind: DeckKind, currency: Currency) -> Result<Arc<RateDeck>> {
        self.decks.read().unwrap_or_else(|e| e.into_inner()).get(&(kind, currency)).cloned().ok_or_else(|| {
            err!(
                ErrorCode::InvalidRateDeck,
                "no {} rate deck for {currency}; import one with `rates import`",
                kind.as_str()
            )
        })
    }

    /// Runs a read on a consistent snapshot.
    pub fn read<T>(&self, mut f: impl FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
        let mut out = None;
        self.store.read(&mut |tx| {
            out = Some(f(tx)?);
            Ok(())
        })?;
        out.ok_or_else(|| err!(ErrorCode::Internal, "read produced nothing"))
    }

    /// Applies a batch of commands in one transaction with one durable commit. Each
    /// command runs in its own savepoint: its error undoes it alone and is returned in
    /// its slot. Recharge orders the batch placed are then sent to the gateway.
    pub fn apply(&self, now: Timestamp, commands: Vec<Command>) -> Result<Vec<Result<Outcome>>> {
        self.apply_timed(commands.into_iter().map(|c| (now, c)).collect())
    }

    /// Like [`Engine::apply`], each command at its own time (a replay or simulation
    /// batching events that happened over a span of time).
    pub fn apply_timed(&self, commands: Vec<(Timestamp, Command)>) -> Result<Vec<Result<Outcome>>> {
        self.apply_batch(commands, false)
    }

    /// Like [`Engine::apply`] for bulk work (CDR imports): the transaction runs through
    /// [`WriteBehind`], which keeps the rows every call reads and rewrites in memory and
    /// writes the batch's net result at the end in bulk. Same commands, same results,
    /// same committed state; far fewer statements.
    pub fn apply_bulk(&self, now: Timestamp, commands: Vec<Command>) -> Result<Vec<Result<Outcome>>> {
        self.apply_batch(commands.into_iter().map(|c| (now, c)).collect(), true)
    }

    fn apply_batch(&self, commands: Vec<(Timestamp, Command)>, write_behind: bool) -> Result<Vec<Result<Outcome>>> {
        if commands.len() > self.config.max_batch {
            return Err(err!(ErrorCode::InvalidInput, "a batch holds at most {} commands", self.config.max_batch));
        }
        let Some(last) = commands.iter().map(|(t, _)| *t).max() else {
            return Ok(Vec::new());
        };
        let mut results = Vec::with_capacity(commands.len());
        let mut effects = Effects::default();
        let mut deck_changed = false;
        self.store.write(&mut |db| {
            let mut run = |tx: &mut dyn Tx| -> Result<()> {
                results.clear();
                effects = Effects::default();
                for (now, cmd) in &commands {
                    tx.savepoint()?;
                    let mut local = Effects::default();
                    match self.execute(tx, cmd, *now, &mut local) {
                        Ok(o) => {
                            tx.release_savepoint()?;
                            effects.absorb(local);
                            deck_changed |= matches!(cmd, Command::ImportRates { .. });
                            results.push(Ok(o));
                        }
                        Err(e) if e.code == ErrorCode::StoreError => return Err(e),
                        Err(e) => {
                            tx.rollback_savepoint()?;
                            results.push(Err(e));
                        }
                    }
                }
                Ok(())
            };
            if write_behind {
                let mut w = WriteBehind::new(db);
                // Imported calls: which call ids are new, in one query per organization
                // instead of one per call. The organization is locked first, as a
                // command's books would (the lock comes before the snapshot).
                let mut imported: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
                for (_, cmd) in &commands {
                    if let Command::ImportCdr(r) = cmd {
                        imported.entry(r.org.as_str()).or_default().push(r.call_id.as_str());
                    }
                }
                for (org, call_ids) in &imported {
                    w.lock_org(org)?;
                    w.know_reservations(org, call_ids)?;
                }
                run(&mut w)?;
                w.finish()
            } else {
                run(db)
            }
        })?;
        if deck_changed {
            self.reload_decks()?;
        }
        for (org, order) in std::mem::take(&mut effects.orders) {
            // The batch is committed whatever happens here: an order the gateway could
            // not be asked about stays pending and `jobs run` charges it later.
            let _ = self.charge_order(&org, &order, last);
        }
        for (org, order) in std::mem::take(&mut effects.recharges) {
            self.charge_soon(org, order, last);
        }
        Ok(results)
    }

    /// Applies one command.
    pub fn apply_one(&self, now: Timestamp, command: Command) -> Result<Outcome> {
        self.apply(now, vec![command])?.pop().unwrap_or_else(|| Err(err!(ErrorCode::Internal, "no result")))
    }

    fn execute(&self, tx: &mut dyn Tx, cmd: &Command, now: Timestamp, fx: &mut Effects) -> Result<Outcome> {
        match cmd {
            Command::CreateOrg { name, currency, country, emails } => {
                admin::create_org(self, tx, name, currency, country, emails, now)
            }
            Command::UpdateOrg { org, emails, low_balance, suspended, disabled_notices } => admin::update_org(
                self,
                tx,
                org,
                emails.as_deref(),
                low_balance.as_ref(),
                *suspended,
                disabled_notices.as_deref(),
            ),
            Command::CreateUser { org, upn, display_name, usage_location, phone_number } => {
                admin::create_user(self, tx, org, upn, display_name, usage_location, phone_number.as_deref(), now)
            }
            Command::UpdateUser(c) => admin::update_user(self, tx, c),
            Command::AddSubscription { org, sku, quantity } => admin::add_subscription(self, tx, org, sku, *quantity),
            Command::SetLicenses { org, user, skus } => admin::set_licenses(self, tx, org, user, skus),
            Command::AssignLicense { org, sku, users } => admin::change_license(self, tx, org, sku, users, true),
            Command::RemoveLicense { org, sku, users } => admin::change_license(self, tx, org, sku, users, false),
            Command::AddNumber { org, number, kind, user } => {
                admin::add_number(self, tx, org, number, kind, user.as_deref(), now)
            }
            Command::AddCard { org, token, holder } => admin::add_card(tx, org, token, holder.as_deref(), now),
            Command::AddAgreement { org, agreement_number } => admin::add_agreement(tx, org, agreement_number, now),
            Command::PlaceOrder { org, amount, payment_method_id, po_number, purchased_at } => books::place_order(
                self,
                tx,
                org,
                amount,
                payment_method_id,
                po_number.as_deref(),
                *purchased_at,
                now,
                fx,
            ),
            Command::CompleteOrder { org, order_id, result } => {
                books::complete_order(self, tx, org, order_id, result, now, fx)
            }
            Command::SetAutoRecharge { org, enabled, amount, threshold, payment_method_id } => {
                books::set_auto_recharge(
                    self,
                    tx,
                    org,
                    *enabled,
                    amount.as_deref(),
                    threshold.as_deref(),
                    payment_method_id.as_deref(),
                    now,
                    fx,
                )
            }
            Command::Authorize(req) => calls::authorize(self, tx, req, now, fx).map(Outcome::Authorized),
            Command::Update { org, call_id, used_seconds, requested_seconds } => {
                calls::update(self, tx, org, call_id, *used_seconds, *requested_seconds, now, fx).map(Outcome::Updated)
            }
            Command::End { org, call_id, duration_seconds } => {
                let v = calls::end(self, tx, org, call_id, *duration_seconds, false, now, fx)?;
                // Call control's idempotency records end with the call.
                tx.delete_call_idempotency(org, call_id)?;
                Ok(Outcome::Ended(v))
            }
            Command::TimeoutReservation { org, call_id } => {
                let settled = calls::timeout(self, tx, org, call_id, now, fx)?;
                if matches!(settled, Outcome::Count(1)) {
                    tx.delete_call_idempotency(org, call_id)?;
                }
                Ok(settled)
            }
            Command::ImportCdr(rec) => cdr::import_one(self, tx, rec, now, fx),
            Command::ImportRates { kind, currency, csv } => import_rates(tx, *kind, currency, csv, now),
            Command::ExpireLot { org, lot_id } => books::expire_lot(self, tx, org, lot_id, now, fx),
            Command::NotifyExpiring { org, lot_id } => books::notify_expiring(self, tx, org, lot_id, now, fx),
            Command::OpenPools { org } => jobs::open_pools(self, tx, org, now),
            Command::AddWebhook { org, url } => admin::add_webhook(self, tx, org, url, now),
            Command::DeleteWebhook { org, webhook_id } => {
                crate::org(tx, org)?;
                if tx.delete_webhook(org, webhook_id)? {
                    Ok(Outcome::Done)
                } else {
                    Err(err!(ErrorCode::NotFound, "no webhook '{webhook_id}'"))
                }
            }
            Command::ClaimDelivery { org, delivery_id, lease } => delivery::claim(tx, org, delivery_id, now, *lease),
            Command::RecordDelivery { org, delivery_id, error, retry_in, max_attempts } => {
                delivery::record(tx, org, delivery_id, error.as_deref(), *retry_in, *max_attempts, now)
            }
            Command::CreateKey { org, role, name } => keys::create(tx, org.as_deref(), role, name, now),
            Command::RevokeKey { org, key_id } => keys::revoke(tx, org.as_deref(), key_id, now),
            Command::ClaimAnswer { org, key, fingerprint } => self.claim_answer(tx, org, key, fingerprint, now),
            Command::RefreshClaim { org, key, fingerprint, token } => {
                let claim = self.claim_row(org, key, fingerprint, token, now)?;
                Ok(Outcome::Count(usize::from(tx.replace_claim(&claim, token)?)))
            }
            Command::RememberAnswer { org, key, fingerprint, token, status, body } => {
                let row = if *status >= 500 {
                    // Nothing to replay: the claim is released (its lease ends now) and
                    // the request may be sent again.
                    commcredits_store::IdempotencyRow {
                        expires_at: now,
                        ..self.claim_row(org, key, fingerprint, token, now)?
                    }
                } else {
                    commcredits_store::IdempotencyRow {
                        org_id: org.clone(),
                        key: key.clone(),
                        fingerprint: fingerprint.clone(),
                        status: i64::from(*status),
                        body: body.to_string(),
                        created_at: now,
                        expires_at: later(now, jiff::SignedDuration::from_secs(self.config.idempotency_ttl_seconds))?,
                        call_id: None,
                    }
                };
                Ok(Outcome::Count(usize::from(tx.replace_claim(&row, token)?)))
            }
            Command::Idempotent { org, key, fingerprint, conflict, keep, inner } => {
                self.idempotent(tx, org, key, fingerprint, *conflict, keep, inner, now, fx)
            }
            Command::SweepIdempotency { limit } => Ok(Outcome::Count(tx.delete_expired_idempotency(now, *limit)?)),
        }
    }

    /// A claim on `key` held by `token`, with a lease from `now`.
    fn claim_row(
        &self,
        org: &str,
        key: &str,
        fingerprint: &str,
        token: &str,
        now: Timestamp,
    ) -> Result<commcredits_store::IdempotencyRow> {
        Ok(commcredits_store::IdempotencyRow {
            org_id: org.into(),
            key: key.into(),
            fingerprint: fingerprint.into(),
            status: 0,
            body: token.into(),
            created_at: now,
            expires_at: later(now, jiff::SignedDuration::from_secs(self.config.claim_lease_seconds))?,
            call_id: None,
        })
    }

    fn claim_answer(
        &self,
        tx: &mut dyn Tx,
        org: &str,
        key: &str,
        fingerprint: &str,
        now: Timestamp,
    ) -> Result<Outcome> {
        check_key(key)?;
        let in_use = || {
            err!(ErrorCode::IdempotencyKeyInUse, "a request with key '{key}' is still being processed; retry shortly")
        };
        if let Some(first) = tx.get_idempotency(org, key)?.filter(|f| f.expires_at > now) {
            if first.fingerprint != fingerprint {
                return Err(err!(ErrorCode::IdempotencyKeyReused, "'{key}' was already used for a different request"));
            }
            if first.status == 0 {
                return Err(in_use());
            }
            return replay(&first);
        }
        // No live record: take the key, in one conditional statement, so that of two
        // requests (or servers) racing for a lapsed claim one only goes on.
        let token = new_id();
        if !tx.take_idempotency(&self.claim_row(org, key, fingerprint, &token, now)?, now)? {
            return Err(in_use());
        }
        Ok(Outcome::Claimed { token })
    }

    fn idempotent(
        &self,
        tx: &mut dyn Tx,
        org: &str,
        key: &str,
        fingerprint: &str,
        conflict: ErrorCode,
        keep: &Keep,
        inner: &Command,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<Outcome> {
        check_key(key)?;
        let first = tx.get_idempotency(org, key)?;
        if let Some(first) = first.as_ref().filter(|f| f.expires_at > now) {
            if first.fingerprint != fingerprint {
                return Err(err!(conflict, "'{key}' was already used for a different request"));
            }
            if first.status == 0 {
                return Err(err!(
                    ErrorCode::IdempotencyKeyInUse,
                    "a request with key '{key}' is still being processed; retry shortly"
                ));
            }
            return replay(first);
        }
        tx.savepoint()?;
        let mut local = Effects::default();
        let result = self.execute(tx, inner, now, &mut local);
        match &result {
            Ok(_) => {
                tx.release_savepoint()?;
                fx.absorb(local);
            }
            Err(e) if e.code == ErrorCode::StoreError => return result,
            Err(_) => tx.rollback_savepoint()?,
        }
        let (status, body) = views::respond(&result);
        let ttl = jiff::SignedDuration::from_secs(self.config.idempotency_ttl_seconds);
        let (kept_for, call_id) = match keep {
            Keep::Answer => ((status < 500).then_some(ttl), None),
            Keep::CallDecision { call_id } => {
                let denial = jiff::SignedDuration::from_millis(self.config.denial_replay_ms);
                (call_decision_kept_for(status, &body, ttl, denial), Some(call_id.clone()))
            }
        };
        // A secret is shown once, in this answer: the stored copy says it is not shown again.
        let body = views::without_secrets(body);
        match kept_for {
            Some(d) => tx.put_idempotency(&commcredits_store::IdempotencyRow {
                org_id: org.into(),
                key: key.into(),
                fingerprint: fingerprint.into(),
                status: i64::from(status),
                body: body.to_string(),
                created_at: now,
                expires_at: later(now, d)?,
                call_id,
            })?,
            // An expired record of the key goes now rather than at the next sweep.
            None if first.is_some() => tx.delete_idempotency(org, key)?,
            None => {}
        }
        result
    }

    /// Resolves `--org`: an id, or an organization's exact name when it is unique.
    pub fn resolve_org(&self, text: &str) -> Result<OrgRow> {
        self.read(|tx| {
            if let Some(o) = tx.get_org(text)? {
                return Ok(o);
            }
            let mut by_name = tx.find_org_by_name(text)?;
            match by_name.len() {
                1 => Ok(by_name.remove(0)),
                0 => Err(err!(ErrorCode::OrgNotFound, "no organization '{text}'")),
                n => Err(err!(ErrorCode::InvalidInput, "{n} organizations are named '{text}': use the id")),
            }
        })
    }
}

/// How long a call-control answer is kept (see [`Keep::CallDecision`]), judged on the
/// answer as rendered, so that a replayed answer is judged as the first one was.
fn call_decision_kept_for(
    status: u16,
    body: &serde_json::Value,
    ttl: jiff::SignedDuration,
    denial: jiff::SignedDuration,
) -> Option<jiff::SignedDuration> {
    if status != 200 {
        return None;
    }
    if body["decision"] == "deny" {
        return Some(denial);
    }
    if !body["reason"].is_null() {
        // An update that could not grant more: decided again when asked again.
        return None;
    }
    // An allowed authorize, or an update that granted time.
    (body["decision"] == "allow" || body.get("total_granted_seconds").is_some()).then_some(ttl)
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 255 {
        return Err(err!(ErrorCode::InvalidInput, "an idempotency key is 1 to 255 characters"));
    }
    Ok(())
}

fn replay(first: &commcredits_store::IdempotencyRow) -> Result<Outcome> {
    let body = serde_json::from_str(&first.body).map_err(|e| internal(format!("stored answer: {e}")))?;
    // Rows stored before answers were kept without secrets are scrubbed here.
    Ok(Outcome::Replayed { status: first.status as u16, body: views::without_secrets(body) })
}

/// `now + d`, checked: a configured duration that overflows time is an error, not a panic.
fn later(now: Timestamp, d: jiff::SignedDuration) -> Result<Timestamp> {
    now.checked_add(d).map_err(|e| internal(format!("idempotency expiry: {e}")))
}

fn import_rates(tx: &mut dyn Tx, kind: DeckKind, currency: &str, csv: &str, now: Timestamp) -> Result<Outcome> {
    let cur = Currency::parse(currency)?;
    let deck = RateDeck::parse_csv(kind, cur, csv)?;
    tx.put_rate_deck(&RateDeckRow {
        kind: kind.as_str().into(),
        currency: cur.code().into(),
        csv: csv.to_string(),
        entries: deck.len() as i64,
        imported_at: now,
    })?;
    Ok(Outcome::Count(deck.len()))
}

/// Loads an organization or fails with `unknown_org`.
pub(crate) fn org(tx: &mut dyn Tx, org_id: &str) -> Result<OrgRow> {
    tx.get_org(org_id)?.ok_or_else(|| err!(ErrorCode::OrgNotFound, "no organization '{org_id}'"))
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub(crate) fn internal(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::Internal, msg)
}
