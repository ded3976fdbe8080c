//! The PostgreSQL adapter, for servers: several `commcredits serve` processes may share
//! one database. It mirrors the SQLite adapter statement for statement (same columns,
//! same ORDER BY), so the conformance suite sees the same behaviour from both.
//!
//! How it stays correct with many writers:
//! - every write is one `SERIALIZABLE` transaction; a serialization failure (40001) or a
//!   deadlock (40P01), from any statement or from COMMIT, rolls back and runs the closure
//!   again (bounded, with a short randomized backoff);
//! - [`Tx::lock_org`] takes an advisory lock on the organization and then its account row
//!   `FOR UPDATE`. Under SERIALIZABLE a row lock alone does not make writers queue: the
//!   snapshot is taken by the transaction's first statement, so a writer that waited for
//!   the lock finds the row changed after its snapshot and fails with 40001. The
//!   advisory lock is therefore taken *before* the snapshot exists whenever possible:
//!   when `lock_org` is the transaction's first statement (BEGIN is sent lazily), and, on
//!   a retry, for every organization the failed attempt locked. Concurrent charging on
//!   one organization then waits in line instead of aborting.
//!
//! The client is the synchronous `postgres` crate, because the [`Store`] trait is
//! synchronous and is called from plain threads and from tokio's `spawn_blocking`
//! threads. A `postgres::Client` drives its own small tokio runtime, which is fine on
//! those threads but panics on an async worker thread: never call the store from async
//! code directly (the pool closes its connections on a plain thread for that reason).
//!
//! The pool is written here rather than taken from `r2d2_postgres`: it is a few dozen
//! lines, it keeps each connection's prepared statements next to it, and it lets a
//! transaction that left a connection in an unknown state (a failed cleanup, a panic)
//! discard that connection instead of returning it.

use crate::rows::*;
use crate::sqlite::{micros, ts};
use crate::{store_error, Store, Tx};
use ::postgres::config::Host;
use ::postgres::error::SqlState;
use ::postgres::types::{FromSql, ToSql};
use ::postgres::{Client, Config, NoTls, Row, Statement};
use commcredits_core::{Error, ErrorCode, Result, Timestamp};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// One column of a bulk insert: `f` of every row, as the array UNNEST turns back into rows.
fn column<'a, R, T>(rows: &'a [R], f: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (2, include_str!("../migrations/postgres/0002_keys_idempotency.sql")),
    (3, include_str!("../migrations/postgres/0003_delivery.sql")),
    (4, include_str!("../migrations/postgres/0004_cdrs_time_order.sql")),
    // Numbered apart from SQLite's: SQLite's 5 clusters its calls table (a PostgreSQL
    // heap has no clustered order), so the same change is 6 there.
    (5, include_str!("../migrations/postgres/0005_reservations_pending.sql")),
    (6, include_str!("../migrations/postgres/0006_idempotency_expiry.sql")),
    (7, include_str!("../migrations/postgres/0007_notices_pending.sql")),
];

/// Connections per store, opened lazily. A PostgreSQL backend is a process: a few
/// servers with 16 each stay far below the usual `max_connections` of 100.
pub const MAX_CONNECTIONS: usize = 16;
/// Connections per store for report scans ([`Store::read_report`]), a pool of their
/// own: however many exports clients read slowly, the `MAX_CONNECTIONS` above stay free
/// for authentication, call control and everything else.
pub const MAX_REPORT_CONNECTIONS: usize = 4;
/// How long a caller waits for a free connection before giving up.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of one write before a serialization failure is reported.
pub const MAX_WRITE_ATTEMPTS: u32 = 10;
/// Applies when the URL sets no `connect_timeout`: an unreachable server fails fast.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Rows per bulk INSERT (arrays of this many values per column).
const BULK_ROWS: usize = 2_000;
const BEGIN_WRITE: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";
const BEGIN_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// FNV-1a: a hash that every build and every server computes the same way, so all
/// servers agree on advisory lock keys (std's hasher promises no such stability).
const fn fnv1a(prefix: &[u8], bytes: &[u8]) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < prefix.len() + bytes.len() {
        let b = if i < prefix.len() { prefix[i] } else { bytes[i - prefix.len()] };
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash as i64
}

/// The advisory lock held while migrations run: servers starting together on one
/// database apply them once, one after the other.
const MIGRATION_LOCK_KEY: i64 = fnv1a(b"commcredits:", b"schema_migrations");

fn org_lock_key(org_id: &str) -> i64 {
    fnv1a(b"commcredits:org:", org_id.as_bytes())
}

fn poisoned() -> Error {
    Error::new(ErrorCode::Internal, "a thread panicked while holding the connection pool")
}

/// 40001 and 40P01: the transaction lost a race and may simply be run again.
fn is_conflict(err: &::postgres::Error) -> bool {
    matches!(err.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

/// Class 22 (data exception: a NUL or invalid byte in text, a number out of range, a
/// string too long): PostgreSQL refused a value one command sent, and nothing else is
/// wrong with the connection or the transaction beyond that command's savepoint.
fn is_data_error(err: &::postgres::Error) -> bool {
    err.code().is_some_and(|c| c.code().starts_with("22"))
}

/// The server's own words for a data error, without the value (which may be long).
fn data_error_message(err: &::postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

/// The store's error for a database error. The client's own message is only its kind
/// ("db error"): the server's message, detail and SQLSTATE are in the error's sources.
fn pg_error(context: &str, err: &::postgres::Error) -> Error {
    use std::error::Error as _;
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if let Some(db) = err.as_db_error() {
        message.push_str(&format!(" (SQLSTATE {})", db.code().code()));
    }
    store_error(context, message)
}

/// A short randomized pause before attempt `attempt + 1`, growing with each attempt, so
/// writers that collided do not collide again in step.
fn backoff(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let cap_us: u64 = (1_000u64 << attempt.min(6)).min(50_000);
    // RandomState is seeded randomly; hashing nothing with a fresh one is a cheap random
    // number without a dependency.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    Duration::from_micros(cap_us / 2 + random % (cap_us / 2 + 1))
}

/// `postgres://user@host:port/db` for logs: never the password, nor other options.
fn describe_config(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(h) if h.contains(':') => format!("[{h}]:{port}"),
                Host::Tcp(h) => format!("{h}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let user = config.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let db = config.get_dbname().or(config.get_user()).unwrap_or("");
    format!("postgres://{user}{}/{db}", hosts.join(","))
}

fn parse_config(url: &str) -> Result<Config> {
    // The parser's message names the offending option, not the URL, so no secret leaks.
    let mut config: Config =
        url.parse().map_err(|err| Error::new(ErrorCode::InvalidInput, format!("invalid PostgreSQL URL: {err}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("commcredits");
    }
    Ok(config)
}

/// Runs `work` on a plain thread and waits for it. A `postgres::Client` blocks on its
/// own runtime when it connects and when it closes, which tokio refuses on an async
/// worker thread; on a plain thread it is always allowed.
fn on_plain_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    std::thread::spawn(work).join().map_err(|_| Error::new(ErrorCode::Internal, "database helper thread panicked"))
}

// -- the pool --

/// A pooled connection and its prepared statements (a statement belongs to the
/// session that prepared it).
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
    /// Set when the session may hold a transaction or locks we could not clean up.
    dirty: bool,
}

fn connect(config: &Config, description: &str) -> Result<Conn> {
    let client = config.connect(NoTls).map_err(|err| pg_error(&format!("cannot connect to {description}"), &err))?;
    Ok(Conn { client, statements: HashMap::new(), dirty: false })
}

struct PoolState {
    idle: Vec<Conn>,
    /// Idle plus checked out.
    open: usize,
}

struct Pool {
    config: Config,
    description: String,
    max: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

impl Pool {
    fn get(&self) -> Result<Pooled<'_>> {
        let deadline = Instant::now() + CHECKOUT_TIMEOUT;
        let mut state = self.state.lock().map_err(|_| poisoned())?;
        loop {
            while let Some(conn) = state.idle.pop() {
                if !conn.client.is_closed() {
                    return Ok(Pooled { pool: self, conn: Some(conn) });
                }
                state.open -= 1;
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match connect(&self.config, &self.description) {
                    Ok(conn) => Ok(Pooled { pool: self, conn: Some(conn) }),
                    Err(err) => {
                        if let Ok(mut state) = self.state.lock() {
                            state.open -= 1;
                        }
                        self.freed.notify_one();
                        Err(err)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(store_error(
                    "connection pool",
                    format!("all {} connections stayed busy for {CHECKOUT_TIMEOUT:?}", self.max),
                ));
            }
            state = self.freed.wait_timeout(state, deadline - now).map_err(|_| poisoned())?.0;
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = match self.state.get_mut() {
            Ok(state) => std::mem::take(&mut state.idle),
            Err(p) => std::mem::take(&mut p.into_inner().idle),
        };
        if !idle.is_empty() {
            let _ = on_plain_thread(move || {
                for conn in idle {
                    let _ = conn.client.close();
                }
            });
        }
    }
}

/// A checked-out connection; goes back to the pool on drop unless it may be unclean.
struct Pooled<'p> {
    pool: &'p Pool,
    conn: Option<Conn>,
}

impl Pooled<'_> {
    fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("a pooled connection is present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        // A panic may have left a transaction open or a session lock held.
        let reusable = !conn.dirty && !conn.client.is_closed() && !std::thread::panicking();
        let discarded = match self.pool.state.lock() {
            Ok(mut state) if reusable => {
                state.idle.push(conn);
                None
            }
            Ok(mut state) => {
                state.open -= 1;
                Some(conn)
            }
            Err(_) => Some(conn),
        };
        self.pool.freed.notify_one();
        // Closing a session releases whatever it held.
        drop(discarded);
    }
}

// -- the store --

pub struct PostgresStore {
    pool: Pool,
    /// Report scans only (see [`MAX_REPORT_CONNECTIONS`]).
    reports: Pool,
    retries: AtomicU64,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/db[?options]`, or the
    /// `key=value` form) and applies pending migrations. Without TLS for now.
    pub fn open(url: &str) -> Result<PostgresStore> {
        let config = parse_config(url)?;
        let description = describe_config(&config);
        // Servers open their store from async `main`, where a `postgres::Client` may not
        // block on its runtime: the first connection and the migrations run on a plain
        // thread, and the connection then joins the pool.
        let (c, d) = (config.clone(), description.clone());
        let first = on_plain_thread(move || -> Result<Conn> {
            let mut conn = connect(&c, &d)?;
            migrate(&mut conn)?;
            Ok(conn)
        })??;
        Ok(PostgresStore {
            reports: Pool {
                config: config.clone(),
                description: description.clone(),
                max: MAX_REPORT_CONNECTIONS,
                state: Mutex::new(PoolState { idle: Vec::new(), open: 0 }),
                freed: Condvar::new(),
            },
            pool: Pool {
                config,
                description,
                max: MAX_CONNECTIONS,
                state: Mutex::new(PoolState { idle: vec![first], open: 1 }),
                freed: Condvar::new(),
            },
            retries: AtomicU64::new(0),
        })
    }

    /// Writes run again so far because of serialization failures, deadlocks or a lost
    /// connection (a gauge for /metrics and for tests).
    pub fn write_retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

/// Applies pending migrations in one transaction that holds an advisory lock, so
/// servers starting together on one database apply each migration exactly once.
fn migrate(conn: &mut Conn) -> Result<()> {
    let e = |context: &'static str| move |err: ::postgres::Error| pg_error(context, &err);
    let result = (|| {
        let mut tx = conn.client.transaction().map_err(e("begin migration"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY]).map_err(e("lock migrations"))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .map_err(e("migrations table"))?;
        let current: i64 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])
            .map_err(e("read schema version"))?
            .get(0);
        for (version, sql) in MIGRATIONS {
            if *version > current {
                tx.batch_execute(sql).map_err(|err| pg_error(&format!("migration {version}"), &err))?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                    &[version, &micros(Timestamp::now())],
                )
                .map_err(e("record migration"))?;
            }
        }
        tx.commit().map_err(e("commit migration"))
    })();
    if result.is_err() {
        // `Transaction` rolled back on drop; if that failed too, the session is unusable.
        conn.dirty = true;
    }
    result
}

enum Attempt {
    Done(Result<()>),
    /// Run the closure again; `cause` explains why, `locked` are the advisory keys of
    /// the organizations the attempt locked, `lost` says the connection died.
    Retry {
        cause: String,
        locked: Vec<i64>,
        lost: bool,
    },
}

impl Store for PostgresStore {
    fn write(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        let mut pooled = self.pool.get()?;
        let mut prelock: Vec<i64> = Vec::new();
        let mut attempt = 1;
        loop {
            match attempt_write(pooled.conn(), &prelock, f) {
                Attempt::Done(result) => return result,
                Attempt::Retry { cause, locked, lost } => {
                    if attempt >= MAX_WRITE_ATTEMPTS {
                        return Err(store_error(&format!("write abandoned after {attempt} attempts"), cause));
                    }
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    prelock.extend(locked);
                    prelock.sort_unstable();
                    prelock.dedup();
                    if lost {
                        drop(pooled);
                        std::thread::sleep(backoff(attempt));
                        pooled = self.pool.get()?;
                    } else {
                        std::thread::sleep(backoff(attempt));
                    }
                    attempt += 1;
                }
            }
        }
    }

    fn read(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        read_on(&self.pool, f)
    }

    fn read_report(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        read_on(&self.reports, f)
    }

    fn describe(&self) -> String {
        self.pool.description.clone()
    }
}

impl PostgresStore {
    /// Connections open now in the main pool and in the report pool (for tests).
    pub fn open_connections(&self) -> (usize, usize) {
        let open = |p: &Pool| p.state.lock().map(|s| s.open).unwrap_or(0);
        (open(&self.pool), open(&self.reports))
    }
}

/// A read-only transaction on a connection of `pool`.
fn read_on(pool: &Pool, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
    let mut pooled = pool.get()?;
    let mut tx = PgTx::new(pooled.conn(), BEGIN_READ, true, Vec::new());
    let result = f(&mut tx);
    // A read-only transaction has nothing to commit; ROLLBACK also ends an aborted one.
    if tx.begun && tx.conn.client.batch_execute("ROLLBACK").is_err() {
        tx.conn.dirty = true;
    }
    result
}

/// One attempt of a write: session locks from earlier attempts, the closure, COMMIT.
fn attempt_write(conn: &mut Conn, prelock: &[i64], f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Attempt {
    if !prelock.is_empty() {
        // Outside any transaction, so the snapshot that BEGIN's first statement takes
        // comes after every other writer of these organizations has finished. Sorted,
        // so two retrying writers never wait for each other in a cycle.
        let sql: Vec<String> = prelock.iter().map(|k| format!("SELECT pg_advisory_lock({k})")).collect();
        if let Err(err) = conn.client.batch_execute(&sql.join("; ")) {
            let lost = conn.client.is_closed();
            if !lost && conn.client.batch_execute("SELECT pg_advisory_unlock_all()").is_err() {
                conn.dirty = true;
            }
            return if is_conflict(&err) || lost {
                Attempt::Retry { cause: pg_error("lock organizations", &err).message, locked: Vec::new(), lost }
            } else {
                Attempt::Done(Err(pg_error("lock organizations", &err)))
            };
        }
    }
    let mut tx = PgTx::new(conn, BEGIN_WRITE, false, prelock.to_vec());
    let result = f(&mut tx);
    tx.finish(result)
}

// -- transactions --

struct PgTx<'c> {
    conn: &'c mut Conn,
    begin_sql: &'static str,
    read_only: bool,
    /// BEGIN is sent with the first statement, so that `lock_org` can come before it.
    begun: bool,
    depth: u32,
    /// Session-level advisory locks held by this attempt (released after it ends).
    held: Vec<i64>,
    /// Organizations locked by this attempt.
    locked: Vec<String>,
    /// Advisory keys of the organizations this attempt locked or tried to lock: a retry
    /// takes them before its snapshot.
    lock_keys: Vec<i64>,
    /// The first serialization failure or deadlock seen: the attempt must be retried
    /// even if the closure swallowed the error (say, by rolling back a savepoint).
    conflict: Option<String>,
    /// The connection died; nothing was committed.
    lost: bool,
    /// PostgreSQL refuses every statement after an error until a rollback to a
    /// savepoint taken before it: the depth and message of such an error.
    aborted: Option<(u32, String)>,
}

impl<'c> PgTx<'c> {
    fn new(conn: &'c mut Conn, begin_sql: &'static str, read_only: bool, held: Vec<i64>) -> PgTx<'c> {
        PgTx {
            conn,
            begin_sql,
            read_only,
            begun: false,
            depth: 0,
            held,
            locked: Vec::new(),
            lock_keys: Vec::new(),
            conflict: None,
            lost: false,
            aborted: None,
        }
    }

    /// Wraps a database error with the store's code and remembers what it means for the
    /// transaction (retry, lost connection, aborted).
    fn fail(&mut self, context: &str, err: ::postgres::Error) -> Error {
        let mut error = pg_error(context, &err);
        if is_data_error(&err) {
            // The value of one command, not the store, is at fault: the engine rolls that
            // command back to its savepoint and answers it alone; the batch goes on.
            error = Error::new(
                ErrorCode::InvalidInput,
                format!("a value of the request cannot be stored ({context}: {})", data_error_message(&err)),
            );
        }
        if is_conflict(&err) && self.conflict.is_none() {
            self.conflict = Some(error.message.clone());
        }
        if self.conn.client.is_closed() {
            self.lost = true;
        }
        if self.begun && self.aborted.is_none() {
            self.aborted = Some((self.depth, error.message.clone()));
        }
        error
    }

    /// Runs statements that take no parameters, after BEGIN when it is still due
    /// (one round trip for both).
    fn simple(&mut self, context: &str, sql: &str) -> Result<()> {
        let result = if self.begun {
            self.conn.client.batch_execute(sql)
        } else {
            self.begun = true;
            self.conn.client.batch_execute(&format!("{}; {sql}", self.begin_sql))
        };
        result.map_err(|err| self.fail(context, err))
    }

    fn begin(&mut self) -> Result<()> {
        if self.begun {
            return Ok(());
        }
        self.begun = true;
        let sql = self.begin_sql;
        self.conn.client.batch_execute(sql).map_err(|err| self.fail("begin", err))
    }

    /// The connection's prepared statement for `sql`, prepared on first use.
    fn statement(&mut self, context: &str, sql: &'static str) -> Result<Statement> {
        if let Some(st) = self.conn.statements.get(sql) {
            return Ok(st.clone());
        }
        match self.conn.client.prepare(sql) {
            Ok(st) => {
                self.conn.statements.insert(sql, st.clone());
                Ok(st)
            }
            Err(err) => Err(self.fail(context, err)),
        }
    }

    fn exec(&mut self, context: &str, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        self.begin()?;
        let st = self.statement(context, sql)?;
        self.conn.client.execute(&st, params).map_err(|err| self.fail(context, err))
    }

    fn one<T>(
        &mut self,
        context: &str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
        map: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<Option<T>> {
        self.begin()?;
        let st = self.statement(context, sql)?;
        match self.conn.client.query_opt(&st, params) {
            Ok(row) => row.as_ref().map(map).transpose(),
            Err(err) => Err(self.fail(context, err)),
        }
    }

    fn many<T>(
        &mut self,
        context: &str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
        map: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.begin()?;
        let st = self.statement(context, sql)?;
        match self.conn.client.query(&st, params) {
            Ok(rows) => rows.iter().map(map).collect(),
            Err(err) => Err(self.fail(context, err)),
        }
    }

    fn count(&mut self, context: &str, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<i64> {
        Ok(self.one(context, sql, params, |r| get(r, 0))?.unwrap_or(0))
    }

    /// Ends a write attempt: COMMIT, or ROLLBACK and why; then releases session locks.
    fn finish(mut self, result: Result<()>) -> Attempt {
        let outcome = if let Some(cause) = self.conflict.take() {
            self.rollback();
            Attempt::Retry { cause, locked: self.locked_keys(), lost: false }
        } else if self.lost {
            // The connection died before COMMIT was sent: nothing was committed.
            Attempt::Retry {
                cause: "the connection to the database was lost".into(),
                locked: self.locked_keys(),
                lost: true,
            }
        } else {
            match result {
                Err(err) => {
                    self.rollback();
                    Attempt::Done(Err(err))
                }
                Ok(()) if !self.begun => Attempt::Done(Ok(())),
                Ok(()) => {
                    if let Some((_, cause)) = self.aborted.take() {
                        // COMMIT would silently roll back: say so instead of pretending.
                        self.rollback();
                        Attempt::Done(Err(store_error(
                            "commit",
                            format!(
                                "the transaction was aborted by an earlier error that was not rolled back ({cause})"
                            ),
                        )))
                    } else {
                        match self.conn.client.batch_execute("COMMIT") {
                            Ok(()) => Attempt::Done(Ok(())),
                            // A failed COMMIT has rolled the transaction back.
                            Err(err) if is_conflict(&err) => Attempt::Retry {
                                cause: pg_error("commit", &err).message,
                                locked: self.locked_keys(),
                                lost: false,
                            },
                            Err(err) => {
                                // If the connection died during COMMIT, whether it committed
                                // is unknown: report, never retry.
                                if self.conn.client.is_closed() {
                                    self.conn.dirty = true;
                                }
                                Attempt::Done(Err(pg_error("commit", &err)))
                            }
                        }
                    }
                }
            }
        };
        if !self.held.is_empty()
            && !self.conn.client.is_closed()
            && self.conn.client.batch_execute("SELECT pg_advisory_unlock_all()").is_err()
        {
            self.conn.dirty = true;
        }
        outcome
    }

    fn rollback(&mut self) {
        if self.begun && !self.conn.client.is_closed() && self.conn.client.batch_execute("ROLLBACK").is_err() {
            self.conn.dirty = true;
        }
    }

    fn locked_keys(&self) -> Vec<i64> {
        self.lock_keys.clone()
    }
}

// -- rows --

fn get<'a, T: FromSql<'a>>(r: &'a Row, i: usize) -> Result<T> {
    r.try_get(i).map_err(|err| pg_error("decode row", &err))
}

fn time(r: &Row, i: usize) -> Result<Timestamp> {
    Ok(ts(get(r, i)?))
}

fn opt_time(r: &Row, i: usize) -> Result<Option<Timestamp>> {
    Ok(get::<Option<i64>>(r, i)?.map(ts))
}

/// Months (`YYYYMM`) are BIGINT columns like every integer; rows carry them as i32.
fn month(r: &Row, i: usize) -> Result<i32> {
    let v: i64 = get(r, i)?;
    i32::try_from(v).map_err(|_| store_error("decode row", format!("month {v} out of range")))
}

fn opt_month(r: &Row, i: usize) -> Result<Option<i32>> {
    get::<Option<i64>>(r, i)?
        .map(|v| i32::try_from(v).map_err(|_| store_error("decode row", "month out of range")))
        .transpose()
}

// Column lists as macros so that every statement is a `&'static str` (the key of the
// per-connection statement cache) built at compile time. Identical to the SQLite ones.
macro_rules! org_cols {
    () => {
        "org_id, name, currency, country, notification_emails, low_balance_minor, suspended, created_at, disabled_notices"
    };
}
fn org_row(r: &Row) -> Result<OrgRow> {
    let emails: String = get(r, 4)?;
    Ok(OrgRow {
        org_id: get(r, 0)?,
        name: get(r, 1)?,
        currency: get(r, 2)?,
        country: get(r, 3)?,
        notification_emails: emails.lines().filter(|l| !l.is_empty()).map(str::to_string).collect(),
        low_balance_minor: get(r, 5)?,
        suspended: get(r, 6)?,
        created_at: time(r, 7)?,
        disabled_notices: get::<String>(r, 8)?.lines().filter(|l| !l.is_empty()).map(str::to_string).collect(),
    })
}

macro_rules! delivery_cols {
    () => {
        "org_id, delivery_id, notice_id, channel, target, status, attempts, next_attempt_at, last_error, sent_at, created_at"
    };
}
fn delivery_row(r: &Row) -> Result<DeliveryRow> {
    Ok(DeliveryRow {
        org_id: get(r, 0)?,
        delivery_id: get(r, 1)?,
        notice_id: get(r, 2)?,
        channel: get(r, 3)?,
        target: get(r, 4)?,
        status: get(r, 5)?,
        attempts: get(r, 6)?,
        next_attempt_at: time(r, 7)?,
        last_error: get(r, 8)?,
        sent_at: opt_time(r, 9)?,
        created_at: time(r, 10)?,
    })
}

fn webhook_row(r: &Row) -> Result<WebhookRow> {
    Ok(WebhookRow {
        org_id: get(r, 0)?,
        webhook_id: get(r, 1)?,
        url: get(r, 2)?,
        secret: get(r, 3)?,
        created_at: time(r, 4)?,
    })
}

fn notice_row(r: &Row) -> Result<NoticeRow> {
    Ok(NoticeRow {
        seq: get(r, 0)?,
        org_id: get(r, 1)?,
        notice_id: get(r, 2)?,
        kind: get(r, 3)?,
        created_at: time(r, 4)?,
        subject: get(r, 5)?,
        body: get(r, 6)?,
        data: get(r, 7)?,
        status: get(r, 8)?,
    })
}

macro_rules! user_cols {
    () => {
        "org_id, user_id, upn, display_name, usage_location, phone_number, dial_out, conference_dial_out, spend_limit_minor, created_at"
    };
}
fn user_row(r: &Row) -> Result<UserRow> {
    Ok(UserRow {
        org_id: get(r, 0)?,
        user_id: get(r, 1)?,
        upn: get(r, 2)?,
        display_name: get(r, 3)?,
        usage_location: get(r, 4)?,
        phone_number: get(r, 5)?,
        dial_out: get(r, 6)?,
        conference_dial_out: get(r, 7)?,
        spend_limit_minor: get(r, 8)?,
        created_at: time(r, 9)?,
    })
}

fn number_row(r: &Row) -> Result<NumberRow> {
    Ok(NumberRow {
        org_id: get(r, 0)?,
        number: get(r, 1)?,
        kind: get(r, 2)?,
        user_id: get(r, 3)?,
        created_at: time(r, 4)?,
    })
}

macro_rules! pm_cols {
    () => {
        "org_id, pm_id, kind, brand, last4, exp_month, exp_year, holder, token, agreement_number, created_at"
    };
}
fn pm_row(r: &Row) -> Result<PaymentMethodRow> {
    Ok(PaymentMethodRow {
        org_id: get(r, 0)?,
        pm_id: get(r, 1)?,
        kind: get(r, 2)?,
        brand: get(r, 3)?,
        last4: get(r, 4)?,
        exp_month: get(r, 5)?,
        exp_year: get(r, 6)?,
        holder: get(r, 7)?,
        token: get(r, 8)?,
        agreement_number: get(r, 9)?,
        created_at: time(r, 10)?,
    })
}

macro_rules! account_cols {
    () => {
        "org_id, currency, balance_minor, reserved_minor, ar_enabled, ar_amount_minor, ar_threshold_minor, ar_payment_method_id, ar_armed, exhausted_notified, low_balance_notified"
    };
}
fn account_row(r: &Row) -> Result<AccountRow> {
    Ok(AccountRow {
        org_id: get(r, 0)?,
        currency: get(r, 1)?,
        balance_minor: get(r, 2)?,
        reserved_minor: get(r, 3)?,
        ar_enabled: get(r, 4)?,
        ar_amount_minor: get(r, 5)?,
        ar_threshold_minor: get(r, 6)?,
        ar_payment_method_id: get(r, 7)?,
        ar_armed: get(r, 8)?,
        exhausted_notified: get(r, 9)?,
        low_balance_notified: get(r, 10)?,
    })
}

macro_rules! lot_cols {
    () => {
        "org_id, lot_id, order_id, amount_minor, remaining_minor, reserved_minor, purchased_at, expires_at, expired, expiring_notified"
    };
}
fn lot_row(r: &Row) -> Result<LotRow> {
    Ok(LotRow {
        org_id: get(r, 0)?,
        lot_id: get(r, 1)?,
        order_id: get(r, 2)?,
        amount_minor: get(r, 3)?,
        remaining_minor: get(r, 4)?,
        reserved_minor: get(r, 5)?,
        purchased_at: time(r, 6)?,
        expires_at: time(r, 7)?,
        expired: get(r, 8)?,
        expiring_notified: get(r, 9)?,
    })
}

macro_rules! ledger_cols {
    () => {
        "seq, org_id, entry_id, kind, amount_minor, balance_after_minor, lot_id, call_id, order_id, at, memo"
    };
}
fn ledger_row(r: &Row) -> Result<LedgerRow> {
    Ok(LedgerRow {
        seq: get(r, 0)?,
        org_id: get(r, 1)?,
        entry_id: get(r, 2)?,
        kind: get(r, 3)?,
        amount_minor: get(r, 4)?,
        balance_after_minor: get(r, 5)?,
        lot_id: get(r, 6)?,
        call_id: get(r, 7)?,
        order_id: get(r, 8)?,
        at: time(r, 9)?,
        memo: get(r, 10)?,
    })
}

macro_rules! order_cols {
    () => {
        "org_id, order_id, kind, amount_minor, currency, payment_method_id, po_number, status, failure_reason, lot_id, created_at, completed_at"
    };
}
fn order_row(r: &Row) -> Result<OrderRow> {
    Ok(OrderRow {
        org_id: get(r, 0)?,
        order_id: get(r, 1)?,
        kind: get(r, 2)?,
        amount_minor: get(r, 3)?,
        currency: get(r, 4)?,
        payment_method_id: get(r, 5)?,
        po_number: get(r, 6)?,
        status: get(r, 7)?,
        failure_reason: get(r, 8)?,
        lot_id: get(r, 9)?,
        created_at: time(r, 10)?,
        completed_at: opt_time(r, 11)?,
    })
}

macro_rules! pool_cols {
    () => {
        "org_id, scope, kind, month, used_minutes, reserved_minutes, notified_80, notified_100"
    };
}
fn pool_row(r: &Row) -> Result<PoolUsageRow> {
    Ok(PoolUsageRow {
        org_id: get(r, 0)?,
        scope: get(r, 1)?,
        kind: get(r, 2)?,
        month: month(r, 3)?,
        used_minutes: get(r, 4)?,
        reserved_minutes: get(r, 5)?,
        notified_80: get(r, 6)?,
        notified_100: get(r, 7)?,
    })
}

macro_rules! res_cols {
    () => {
        "org_id, call_id, call_type, user_id, from_number, to_number, state, created_at, updated_at, expires_at, granted_seconds, used_seconds, plan_scope, plan_kind, plan_month, plan_minutes, money_minor, earmarks, spend_month, rate_prefix, rate_name, rate_per_minute, connection_fee_minor, increment_seconds, domestic, dest_country, emergency"
    };
}
fn res_row(r: &Row) -> Result<ReservationRow> {
    Ok(ReservationRow {
        org_id: get(r, 0)?,
        call_id: get(r, 1)?,
        call_type: get(r, 2)?,
        user_id: get(r, 3)?,
        from_number: get(r, 4)?,
        to_number: get(r, 5)?,
        state: get(r, 6)?,
        created_at: time(r, 7)?,
        updated_at: time(r, 8)?,
        expires_at: time(r, 9)?,
        granted_seconds: get(r, 10)?,
        used_seconds: get(r, 11)?,
        plan_scope: get(r, 12)?,
        plan_kind: get(r, 13)?,
        plan_month: opt_month(r, 14)?,
        plan_minutes: get(r, 15)?,
        money_minor: get(r, 16)?,
        earmarks: get(r, 17)?,
        spend_month: month(r, 18)?,
        rate_prefix: get(r, 19)?,
        rate_name: get(r, 20)?,
        rate_per_minute: get(r, 21)?,
        connection_fee_minor: get(r, 22)?,
        increment_seconds: get(r, 23)?,
        domestic: get(r, 24)?,
        dest_country: get(r, 25)?,
        emergency: get(r, 26)?,
    })
}

macro_rules! cdr_cols {
    () => {
        "org_id, call_id, usage_id, call_type, user_id, from_number, to_number, dest_country, domestic, start_at, end_at, duration_seconds, charged_seconds, overrun_seconds, plan_minutes, plan_kind, charge_minor, connection_fee_minor, currency, funding, rate_name, rate_per_minute, source"
    };
}
fn cdr_row(r: &Row) -> Result<CdrRow> {
    Ok(CdrRow {
        org_id: get(r, 0)?,
        call_id: get(r, 1)?,
        usage_id: get(r, 2)?,
        call_type: get(r, 3)?,
        user_id: get(r, 4)?,
        from_number: get(r, 5)?,
        to_number: get(r, 6)?,
        dest_country: get(r, 7)?,
        domestic: get(r, 8)?,
        start_at: time(r, 9)?,
        end_at: time(r, 10)?,
        duration_seconds: get(r, 11)?,
        charged_seconds: get(r, 12)?,
        overrun_seconds: get(r, 13)?,
        plan_minutes: get(r, 14)?,
        plan_kind: get(r, 15)?,
        charge_minor: get(r, 16)?,
        connection_fee_minor: get(r, 17)?,
        currency: get(r, 18)?,
        funding: get(r, 19)?,
        rate_name: get(r, 20)?,
        rate_per_minute: get(r, 21)?,
        source: get(r, 22)?,
    })
}

fn api_key_row(r: &Row) -> Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        org_id: get(r, 0)?,
        key_id: get(r, 1)?,
        role: get(r, 2)?,
        name: get(r, 3)?,
        secret_hash: get(r, 4)?,
        created_at: time(r, 5)?,
        revoked_at: opt_time(r, 6)?,
    })
}

fn pair(r: &Row) -> Result<(String, String)> {
    Ok((get(r, 0)?, get(r, 1)?))
}

impl Tx for PgTx<'_> {
    fn savepoint(&mut self) -> Result<()> {
        self.depth += 1;
        let sql = format!("SAVEPOINT sp{}", self.depth);
        self.simple("savepoint", &sql)
    }

    fn release_savepoint(&mut self) -> Result<()> {
        let sql = format!("RELEASE SAVEPOINT sp{}", self.depth);
        self.simple("release savepoint", &sql)?;
        self.depth -= 1;
        Ok(())
    }

    fn rollback_savepoint(&mut self) -> Result<()> {
        let sql = format!("ROLLBACK TO SAVEPOINT sp{0}; RELEASE SAVEPOINT sp{0}", self.depth);
        self.simple("rollback savepoint", &sql)?;
        // Rolling back to a savepoint taken before an error makes the transaction usable again.
        if matches!(self.aborted, Some((depth, _)) if depth >= self.depth) {
            self.aborted = None;
        }
        self.depth -= 1;
        Ok(())
    }

    fn lock_org(&mut self, org_id: &str) -> Result<()> {
        if self.read_only || self.locked.iter().any(|o| o == org_id) {
            // A read-only snapshot needs no lock (as SQLite, where this is a no-op).
            return Ok(());
        }
        let key = org_lock_key(org_id);
        // Remembered before trying: when waiting for the lock ends in a serialization
        // failure, the retry must take this lock before its snapshot.
        self.lock_keys.push(key);
        if !self.held.contains(&key) {
            if !self.begun {
                // Session-level, before BEGIN: the transaction's snapshot is taken after
                // this organization's previous writer committed, so it queues instead of
                // failing on the row lock below.
                let st = self.statement("lock org", "SELECT pg_advisory_lock($1)")?;
                self.conn.client.execute(&st, &[&key]).map_err(|err| self.fail("lock org", err))?;
                self.held.push(key);
            } else {
                self.exec("lock org", "SELECT pg_advisory_xact_lock($1)", &[&key])?;
            }
        }
        self.exec("lock org", "SELECT 1 FROM accounts WHERE org_id = $1 FOR UPDATE", &[&org_id])?;
        self.locked.push(org_id.to_string());
        Ok(())
    }

    fn insert_org(&mut self, o: &OrgRow) -> Result<()> {
        self.exec(
            "insert org",
            concat!("INSERT INTO orgs (", org_cols!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
            &[
                &o.org_id,
                &o.name,
                &o.currency,
                &o.country,
                &o.notification_emails.join("\n"),
                &o.low_balance_minor,
                &o.suspended,
                &micros(o.created_at),
                &o.disabled_notices.join("\n"),
            ],
        )
        .map(drop)
    }

    fn get_org(&mut self, org_id: &str) -> Result<Option<OrgRow>> {
        self.one("get org", concat!("SELECT ", org_cols!(), " FROM orgs WHERE org_id = $1"), &[&org_id], org_row)
    }

    fn find_org_by_name(&mut self, name: &str) -> Result<Vec<OrgRow>> {
        self.many("find org", concat!("SELECT ", org_cols!(), " FROM orgs WHERE name = $1"), &[&name], org_row)
    }

    fn update_org(&mut self, o: &OrgRow) -> Result<()> {
        self.exec(
            "update org",
            "UPDATE orgs SET name = $2, notification_emails = $3, low_balance_minor = $4, suspended = $5, \
             disabled_notices = $6 WHERE org_id = $1",
            &[
                &o.org_id,
                &o.name,
                &o.notification_emails.join("\n"),
                &o.low_balance_minor,
                &o.suspended,
                &o.disabled_notices.join("\n"),
            ],
        )
        .map(drop)
    }

    fn list_orgs(&mut self) -> Result<Vec<OrgRow>> {
        self.many("list orgs", concat!("SELECT ", org_cols!(), " FROM orgs ORDER BY created_at, org_id"), &[], org_row)
    }

    fn insert_user(&mut self, u: &UserRow) -> Result<()> {
        self.exec(
            "insert user",
            concat!("INSERT INTO users (", user_cols!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
            &[
                &u.org_id,
                &u.user_id,
                &u.upn,
                &u.display_name,
                &u.usage_location,
                &u.phone_number,
                &u.dial_out,
                &u.conference_dial_out,
                &u.spend_limit_minor,
                &micros(u.created_at),
            ],
        )
        .map(drop)
    }

    fn update_user(&mut self, u: &UserRow) -> Result<()> {
        self.exec(
            "update user",
            "UPDATE users SET upn = $3, display_name = $4, usage_location = $5, phone_number = $6, dial_out = $7, \
             conference_dial_out = $8, spend_limit_minor = $9 WHERE org_id = $1 AND user_id = $2",
            &[
                &u.org_id,
                &u.user_id,
                &u.upn,
                &u.display_name,
                &u.usage_location,
                &u.phone_number,
                &u.dial_out,
                &u.conference_dial_out,
                &u.spend_limit_minor,
            ],
        )
        .map(drop)
    }

    fn get_user(&mut self, org_id: &str, user_id: &str) -> Result<Option<UserRow>> {
        self.one(
            "get user",
            concat!("SELECT ", user_cols!(), " FROM users WHERE org_id = $1 AND user_id = $2"),
            &[&org_id, &user_id],
            user_row,
        )
    }

    fn get_user_by_upn(&mut self, org_id: &str, upn: &str) -> Result<Option<UserRow>> {
        self.one(
            "get user by upn",
            concat!("SELECT ", user_cols!(), " FROM users WHERE org_id = $1 AND upn = $2"),
            &[&org_id, &upn],
            user_row,
        )
    }

    fn list_users(&mut self, org_id: &str) -> Result<Vec<UserRow>> {
        self.many(
            "list users",
            concat!("SELECT ", user_cols!(), " FROM users WHERE org_id = $1 ORDER BY upn"),
            &[&org_id],
            user_row,
        )
    }

    fn set_subscription(&mut self, org_id: &str, sku: &str, quantity: i64) -> Result<()> {
        self.exec(
            "set subscription",
            "INSERT INTO subscriptions (org_id, sku, quantity) VALUES ($1, $2, $3) \
             ON CONFLICT (org_id, sku) DO UPDATE SET quantity = excluded.quantity",
            &[&org_id, &sku, &quantity],
        )
        .map(drop)
    }

    fn list_subscriptions(&mut self, org_id: &str) -> Result<Vec<(String, i64)>> {
        self.many(
            "list subscriptions",
            "SELECT sku, quantity FROM subscriptions WHERE org_id = $1 ORDER BY sku",
            &[&org_id],
            |r| Ok((get(r, 0)?, get(r, 1)?)),
        )
    }

    fn user_licenses(&mut self, org_id: &str, user_id: &str) -> Result<Vec<String>> {
        self.many(
            "user licenses",
            "SELECT sku FROM licenses WHERE org_id = $1 AND user_id = $2 ORDER BY sku",
            &[&org_id, &user_id],
            |r| get(r, 0),
        )
    }

    fn set_user_licenses(&mut self, org_id: &str, user_id: &str, skus: &[String]) -> Result<()> {
        self.exec("clear licenses", "DELETE FROM licenses WHERE org_id = $1 AND user_id = $2", &[&org_id, &user_id])?;
        if !skus.is_empty() {
            // One statement for the whole set (SQLite inserts row by row: no round trips there).
            self.exec(
                "add licenses",
                "INSERT INTO licenses (org_id, user_id, sku) SELECT $1, $2, unnest($3::text[])",
                &[&org_id, &user_id, &skus],
            )?;
        }
        Ok(())
    }

    fn seats_used(&mut self, org_id: &str, sku: &str) -> Result<i64> {
        self.count("seats used", "SELECT COUNT(*) FROM licenses WHERE org_id = $1 AND sku = $2", &[&org_id, &sku])
    }

    fn count_licensed_users(&mut self, org_id: &str, country: Option<&str>, skus: &[String]) -> Result<i64> {
        if skus.is_empty() {
            return Ok(0);
        }
        self.count(
            "count licensed users",
            "SELECT COUNT(DISTINCT l.user_id) FROM licenses l JOIN users u ON u.org_id = l.org_id AND u.user_id = l.user_id \
             WHERE l.org_id = $1 AND l.sku = ANY($3::text[]) AND ($2::text IS NULL OR u.usage_location = $2::text)",
            &[&org_id, &country, &skus],
        )
    }

    fn insert_number(&mut self, n: &NumberRow) -> Result<()> {
        self.exec(
            "insert number",
            "INSERT INTO numbers (org_id, number, kind, user_id, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&n.org_id, &n.number, &n.kind, &n.user_id, &micros(n.created_at)],
        )
        .map(drop)
    }

    fn get_number(&mut self, org_id: &str, number: &str) -> Result<Option<NumberRow>> {
        self.one(
            "get number",
            "SELECT org_id, number, kind, user_id, created_at FROM numbers WHERE org_id = $1 AND number = $2",
            &[&org_id, &number],
            number_row,
        )
    }

    fn list_numbers(&mut self, org_id: &str) -> Result<Vec<NumberRow>> {
        self.many(
            "list numbers",
            "SELECT org_id, number, kind, user_id, created_at FROM numbers WHERE org_id = $1 ORDER BY number",
            &[&org_id],
            number_row,
        )
    }

    fn insert_payment_method(&mut self, p: &PaymentMethodRow) -> Result<()> {
        self.exec(
            "insert payment method",
            concat!(
                "INSERT INTO payment_methods (",
                pm_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ),
            &[
                &p.org_id,
                &p.pm_id,
                &p.kind,
                &p.brand,
                &p.last4,
                &p.exp_month,
                &p.exp_year,
                &p.holder,
                &p.token,
                &p.agreement_number,
                &micros(p.created_at),
            ],
        )
        .map(drop)
    }

    fn get_payment_method(&mut self, org_id: &str, pm_id: &str) -> Result<Option<PaymentMethodRow>> {
        self.one(
            "get payment method",
            concat!("SELECT ", pm_cols!(), " FROM payment_methods WHERE org_id = $1 AND pm_id = $2"),
            &[&org_id, &pm_id],
            pm_row,
        )
    }

    fn list_payment_methods(&mut self, org_id: &str) -> Result<Vec<PaymentMethodRow>> {
        self.many(
            "list payment methods",
            concat!("SELECT ", pm_cols!(), " FROM payment_methods WHERE org_id = $1 ORDER BY created_at, pm_id"),
            &[&org_id],
            pm_row,
        )
    }

    fn insert_account(&mut self, a: &AccountRow) -> Result<()> {
        self.exec(
            "insert account",
            concat!(
                "INSERT INTO accounts (",
                account_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ),
            &[
                &a.org_id,
                &a.currency,
                &a.balance_minor,
                &a.reserved_minor,
                &a.ar_enabled,
                &a.ar_amount_minor,
                &a.ar_threshold_minor,
                &a.ar_payment_method_id,
                &a.ar_armed,
                &a.exhausted_notified,
                &a.low_balance_notified,
            ],
        )
        .map(drop)
    }

    fn get_account(&mut self, org_id: &str) -> Result<Option<AccountRow>> {
        self.one(
            "get account",
            concat!("SELECT ", account_cols!(), " FROM accounts WHERE org_id = $1"),
            &[&org_id],
            account_row,
        )
    }

    fn update_account(&mut self, a: &AccountRow) -> Result<()> {
        self.exec(
            "update account",
            "UPDATE accounts SET balance_minor = $2, reserved_minor = $3, ar_enabled = $4, ar_amount_minor = $5, \
             ar_threshold_minor = $6, ar_payment_method_id = $7, ar_armed = $8, exhausted_notified = $9, \
             low_balance_notified = $10 WHERE org_id = $1",
            &[
                &a.org_id,
                &a.balance_minor,
                &a.reserved_minor,
                &a.ar_enabled,
                &a.ar_amount_minor,
                &a.ar_threshold_minor,
                &a.ar_payment_method_id,
                &a.ar_armed,
                &a.exhausted_notified,
                &a.low_balance_notified,
            ],
        )
        .map(drop)
    }

    fn insert_lot(&mut self, l: &LotRow) -> Result<()> {
        self.exec(
            "insert lot",
            concat!("INSERT INTO lots (", lot_cols!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
            &[
                &l.org_id,
                &l.lot_id,
                &l.order_id,
                &l.amount_minor,
                &l.remaining_minor,
                &l.reserved_minor,
                &micros(l.purchased_at),
                &micros(l.expires_at),
                &l.expired,
                &l.expiring_notified,
            ],
        )
        .map(drop)
    }

    fn update_lot(&mut self, l: &LotRow) -> Result<()> {
        self.exec(
            "update lot",
            "UPDATE lots SET remaining_minor = $3, reserved_minor = $4, expired = $5, expiring_notified = $6 \
             WHERE org_id = $1 AND lot_id = $2",
            &[&l.org_id, &l.lot_id, &l.remaining_minor, &l.reserved_minor, &l.expired, &l.expiring_notified],
        )
        .map(drop)
    }

    fn open_lots(&mut self, org_id: &str) -> Result<Vec<LotRow>> {
        self.many(
            "open lots",
            concat!("SELECT ", lot_cols!(), " FROM lots WHERE org_id = $1 AND remaining_minor > 0"),
            &[&org_id],
            lot_row,
        )
    }

    fn list_lots(&mut self, org_id: &str) -> Result<Vec<LotRow>> {
        self.many(
            "list lots",
            concat!("SELECT ", lot_cols!(), " FROM lots WHERE org_id = $1 ORDER BY purchased_at, lot_id"),
            &[&org_id],
            lot_row,
        )
    }

    fn append_ledger(&mut self, l: &LedgerRow) -> Result<()> {
        self.exec(
            "append ledger",
            "INSERT INTO ledger (org_id, entry_id, kind, amount_minor, balance_after_minor, lot_id, call_id, order_id, at, memo) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &l.org_id,
                &l.entry_id,
                &l.kind,
                &l.amount_minor,
                &l.balance_after_minor,
                &l.lot_id,
                &l.call_id,
                &l.order_id,
                &micros(l.at),
                &l.memo,
            ],
        )
        .map(drop)
    }

    fn append_ledger_many(&mut self, entries: &[LedgerRow]) -> Result<()> {
        // UNNEST ... WITH ORDINALITY keeps the entries' order in their sequence numbers.
        for chunk in entries.chunks(BULK_ROWS) {
            self.exec(
                "append ledger",
                "INSERT INTO ledger (org_id, entry_id, kind, amount_minor, balance_after_minor, lot_id, call_id, order_id, at, memo) \
                 SELECT a, b, c, d, e, f, g, h, i, j FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], \
                 $6::text[], $7::text[], $8::text[], $9::int8[], $10::text[]) WITH ORDINALITY AS u(a, b, c, d, e, f, g, h, i, j, n) \
                 ORDER BY n",
                &[
                    &column(chunk, |l| l.org_id.as_str()),
                    &column(chunk, |l| l.entry_id.as_str()),
                    &column(chunk, |l| l.kind.as_str()),
                    &column(chunk, |l| l.amount_minor),
                    &column(chunk, |l| l.balance_after_minor),
                    &column(chunk, |l| l.lot_id.as_deref()),
                    &column(chunk, |l| l.call_id.as_deref()),
                    &column(chunk, |l| l.order_id.as_deref()),
                    &column(chunk, |l| micros(l.at)),
                    &column(chunk, |l| l.memo.as_str()),
                ],
            )?;
        }
        Ok(())
    }

    fn list_ledger(&mut self, org_id: &str, after_seq: i64, limit: usize) -> Result<Vec<LedgerRow>> {
        self.many(
            "list ledger",
            concat!("SELECT ", ledger_cols!(), " FROM ledger WHERE org_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"),
            &[&org_id, &after_seq, &(limit as i64)],
            ledger_row,
        )
    }

    fn ledger_totals(&mut self, org_id: &str) -> Result<Vec<(String, i64)>> {
        // SUM(BIGINT) is NUMERIC in PostgreSQL; the totals fit BIGINT like every amount.
        self.many(
            "ledger totals",
            "SELECT kind, SUM(amount_minor)::BIGINT FROM ledger WHERE org_id = $1 GROUP BY kind ORDER BY kind",
            &[&org_id],
            |r| Ok((get(r, 0)?, get(r, 1)?)),
        )
    }

    fn insert_order(&mut self, o: &OrderRow) -> Result<()> {
        self.exec(
            "insert order",
            concat!(
                "INSERT INTO orders (",
                order_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            &[
                &o.org_id,
                &o.order_id,
                &o.kind,
                &o.amount_minor,
                &o.currency,
                &o.payment_method_id,
                &o.po_number,
                &o.status,
                &o.failure_reason,
                &o.lot_id,
                &micros(o.created_at),
                &o.completed_at.map(micros),
            ],
        )
        .map(drop)
    }

    fn update_order(&mut self, o: &OrderRow) -> Result<()> {
        self.exec(
            "update order",
            "UPDATE orders SET status = $3, failure_reason = $4, lot_id = $5, completed_at = $6 \
             WHERE org_id = $1 AND order_id = $2",
            &[&o.org_id, &o.order_id, &o.status, &o.failure_reason, &o.lot_id, &o.completed_at.map(micros)],
        )
        .map(drop)
    }

    fn get_order(&mut self, org_id: &str, order_id: &str) -> Result<Option<OrderRow>> {
        self.one(
            "get order",
            concat!("SELECT ", order_cols!(), " FROM orders WHERE org_id = $1 AND order_id = $2"),
            &[&org_id, &order_id],
            order_row,
        )
    }

    fn list_orders(&mut self, org_id: &str) -> Result<Vec<OrderRow>> {
        self.many(
            "list orders",
            concat!("SELECT ", order_cols!(), " FROM orders WHERE org_id = $1 ORDER BY created_at, order_id"),
            &[&org_id],
            order_row,
        )
    }

    fn get_pool_usage(&mut self, org_id: &str, month: i32, scope: &str, kind: &str) -> Result<Option<PoolUsageRow>> {
        self.one(
            "get pool",
            concat!(
                "SELECT ",
                pool_cols!(),
                " FROM pool_usage WHERE org_id = $1 AND month = $2 AND scope = $3 AND kind = $4"
            ),
            &[&org_id, &i64::from(month), &scope, &kind],
            pool_row,
        )
    }

    fn put_pool_usage(&mut self, p: &PoolUsageRow) -> Result<()> {
        self.exec(
            "put pool",
            concat!(
                "INSERT INTO pool_usage (",
                pool_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (org_id, month, scope, kind) DO UPDATE SET \
                 used_minutes = excluded.used_minutes, reserved_minutes = excluded.reserved_minutes, \
                 notified_80 = excluded.notified_80, notified_100 = excluded.notified_100"
            ),
            &[
                &p.org_id,
                &p.scope,
                &p.kind,
                &i64::from(p.month),
                &p.used_minutes,
                &p.reserved_minutes,
                &p.notified_80,
                &p.notified_100,
            ],
        )
        .map(drop)
    }

    fn list_pool_usage(&mut self, org_id: &str, month: i32) -> Result<Vec<PoolUsageRow>> {
        self.many(
            "list pools",
            concat!("SELECT ", pool_cols!(), " FROM pool_usage WHERE org_id = $1 AND month = $2 ORDER BY scope, kind"),
            &[&org_id, &i64::from(month)],
            pool_row,
        )
    }

    fn get_user_spend(&mut self, org_id: &str, user_id: &str, month: i32) -> Result<Option<UserSpendRow>> {
        self.one(
            "get user spend",
            "SELECT org_id, user_id, month, spent_minor, reserved_minor FROM user_spend \
             WHERE org_id = $1 AND user_id = $2 AND month = $3",
            &[&org_id, &user_id, &i64::from(month)],
            |r| {
                Ok(UserSpendRow {
                    org_id: get(r, 0)?,
                    user_id: get(r, 1)?,
                    month: self::month(r, 2)?,
                    spent_minor: get(r, 3)?,
                    reserved_minor: get(r, 4)?,
                })
            },
        )
    }

    fn put_user_spend(&mut self, s: &UserSpendRow) -> Result<()> {
        self.exec(
            "put user spend",
            "INSERT INTO user_spend (org_id, user_id, month, spent_minor, reserved_minor) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (org_id, user_id, month) DO UPDATE SET spent_minor = excluded.spent_minor, \
             reserved_minor = excluded.reserved_minor",
            &[&s.org_id, &s.user_id, &i64::from(s.month), &s.spent_minor, &s.reserved_minor],
        )
        .map(drop)
    }

    fn insert_reservation(&mut self, r: &ReservationRow) -> Result<()> {
        self.exec(
            "insert reservation",
            concat!(
                "INSERT INTO reservations (",
                res_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, \
                 $21, $22, $23, $24, $25, $26, $27)"
            ),
            &[
                &r.org_id,
                &r.call_id,
                &r.call_type,
                &r.user_id,
                &r.from_number,
                &r.to_number,
                &r.state,
                &micros(r.created_at),
                &micros(r.updated_at),
                &micros(r.expires_at),
                &r.granted_seconds,
                &r.used_seconds,
                &r.plan_scope,
                &r.plan_kind,
                &r.plan_month.map(i64::from),
                &r.plan_minutes,
                &r.money_minor,
                &r.earmarks,
                &i64::from(r.spend_month),
                &r.rate_prefix,
                &r.rate_name,
                &r.rate_per_minute,
                &r.connection_fee_minor,
                &r.increment_seconds,
                &r.domestic,
                &r.dest_country,
                &r.emergency,
            ],
        )
        .map(drop)
    }

    fn update_reservation(&mut self, r: &ReservationRow) -> Result<()> {
        self.exec(
            "update reservation",
            "UPDATE reservations SET state = $3, updated_at = $4, expires_at = $5, granted_seconds = $6, used_seconds = $7, \
             plan_minutes = $8, money_minor = $9, earmarks = $10 WHERE org_id = $1 AND call_id = $2",
            &[
                &r.org_id,
                &r.call_id,
                &r.state,
                &micros(r.updated_at),
                &micros(r.expires_at),
                &r.granted_seconds,
                &r.used_seconds,
                &r.plan_minutes,
                &r.money_minor,
                &r.earmarks,
            ],
        )
        .map(drop)
    }

    fn reserved_call_ids(&mut self, org_id: &str, call_ids: &[&str]) -> Result<Vec<String>> {
        self.many(
            "reserved call ids",
            "SELECT call_id FROM reservations WHERE org_id = $1 AND call_id = ANY($2)",
            &[&org_id, &call_ids],
            |r| get(r, 0),
        )
    }

    fn get_reservation(&mut self, org_id: &str, call_id: &str) -> Result<Option<ReservationRow>> {
        self.one(
            "get reservation",
            concat!("SELECT ", res_cols!(), " FROM reservations WHERE org_id = $1 AND call_id = $2"),
            &[&org_id, &call_id],
            res_row,
        )
    }

    fn count_pending_reservations(&mut self, org_id: &str) -> Result<i64> {
        self.count(
            "count pending",
            "SELECT COUNT(*) FROM reservations WHERE org_id = $1 AND state = 'pending'",
            &[&org_id],
        )
    }

    fn pending_reservations(&mut self, org_id: &str) -> Result<Vec<ReservationRow>> {
        self.many(
            "pending reservations",
            concat!(
                "SELECT ",
                res_cols!(),
                " FROM reservations WHERE org_id = $1 AND state = 'pending' ORDER BY created_at, call_id"
            ),
            &[&org_id],
            res_row,
        )
    }

    fn insert_cdrs(&mut self, rows: &[CdrRow]) -> Result<()> {
        // One statement per chunk: the columns travel as arrays and UNNEST turns them
        // back into rows, so a batch costs one round trip, not one per row.
        for chunk in rows.chunks(BULK_ROWS) {
            self.exec(
                "insert cdrs",
                concat!(
                    "INSERT INTO cdrs (",
                    cdr_cols!(),
                    ") SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::text[], $9::bool[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], \
                     $14::int8[], $15::int8[], $16::text[], $17::int8[], $18::int8[], $19::text[], $20::text[], \
                     $21::text[], $22::text[], $23::text[])"
                ),
                &[
                    &column(chunk, |c| c.org_id.as_str()),
                    &column(chunk, |c| c.call_id.as_str()),
                    &column(chunk, |c| c.usage_id.as_str()),
                    &column(chunk, |c| c.call_type.as_str()),
                    &column(chunk, |c| c.user_id.as_deref()),
                    &column(chunk, |c| c.from_number.as_str()),
                    &column(chunk, |c| c.to_number.as_str()),
                    &column(chunk, |c| c.dest_country.as_deref()),
                    &column(chunk, |c| c.domestic),
                    &column(chunk, |c| micros(c.start_at)),
                    &column(chunk, |c| micros(c.end_at)),
                    &column(chunk, |c| c.duration_seconds),
                    &column(chunk, |c| c.charged_seconds),
                    &column(chunk, |c| c.overrun_seconds),
                    &column(chunk, |c| c.plan_minutes),
                    &column(chunk, |c| c.plan_kind.as_deref()),
                    &column(chunk, |c| c.charge_minor),
                    &column(chunk, |c| c.connection_fee_minor),
                    &column(chunk, |c| c.currency.as_str()),
                    &column(chunk, |c| c.funding.as_str()),
                    &column(chunk, |c| c.rate_name.as_deref()),
                    &column(chunk, |c| c.rate_per_minute.as_deref()),
                    &column(chunk, |c| c.source.as_str()),
                ],
            )?;
        }
        Ok(())
    }

    fn insert_reservations(&mut self, rows: &[ReservationRow]) -> Result<()> {
        for chunk in rows.chunks(BULK_ROWS) {
            self.exec(
                "insert reservations",
                concat!(
                    "INSERT INTO reservations (",
                    res_cols!(),
                    ") SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::text[], \
                     $14::text[], $15::int8[], $16::int8[], $17::int8[], $18::text[], $19::int8[], $20::text[], \
                     $21::text[], $22::text[], $23::int8[], $24::int8[], $25::bool[], $26::text[], $27::bool[])"
                ),
                &[
                    &column(chunk, |r| r.org_id.as_str()),
                    &column(chunk, |r| r.call_id.as_str()),
                    &column(chunk, |r| r.call_type.as_str()),
                    &column(chunk, |r| r.user_id.as_deref()),
                    &column(chunk, |r| r.from_number.as_str()),
                    &column(chunk, |r| r.to_number.as_str()),
                    &column(chunk, |r| r.state.as_str()),
                    &column(chunk, |r| micros(r.created_at)),
                    &column(chunk, |r| micros(r.updated_at)),
                    &column(chunk, |r| micros(r.expires_at)),
                    &column(chunk, |r| r.granted_seconds),
                    &column(chunk, |r| r.used_seconds),
                    &column(chunk, |r| r.plan_scope.as_deref()),
                    &column(chunk, |r| r.plan_kind.as_deref()),
                    &column(chunk, |r| r.plan_month.map(i64::from)),
                    &column(chunk, |r| r.plan_minutes),
                    &column(chunk, |r| r.money_minor),
                    &column(chunk, |r| r.earmarks.as_str()),
                    &column(chunk, |r| i64::from(r.spend_month)),
                    &column(chunk, |r| r.rate_prefix.as_deref()),
                    &column(chunk, |r| r.rate_name.as_deref()),
                    &column(chunk, |r| r.rate_per_minute.as_deref()),
                    &column(chunk, |r| r.connection_fee_minor),
                    &column(chunk, |r| r.increment_seconds),
                    &column(chunk, |r| r.domestic),
                    &column(chunk, |r| r.dest_country.as_deref()),
                    &column(chunk, |r| r.emergency),
                ],
            )?;
        }
        Ok(())
    }

    fn insert_cdr(&mut self, c: &CdrRow) -> Result<()> {
        self.exec(
            "insert cdr",
            concat!(
                "INSERT INTO cdrs (",
                cdr_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, \
                 $21, $22, $23)"
            ),
            &[
                &c.org_id,
                &c.call_id,
                &c.usage_id,
                &c.call_type,
                &c.user_id,
                &c.from_number,
                &c.to_number,
                &c.dest_country,
                &c.domestic,
                &micros(c.start_at),
                &micros(c.end_at),
                &c.duration_seconds,
                &c.charged_seconds,
                &c.overrun_seconds,
                &c.plan_minutes,
                &c.plan_kind,
                &c.charge_minor,
                &c.connection_fee_minor,
                &c.currency,
                &c.funding,
                &c.rate_name,
                &c.rate_per_minute,
                &c.source,
            ],
        )
        .map(drop)
    }

    fn get_cdr(&mut self, org_id: &str, call_id: &str) -> Result<Option<CdrRow>> {
        self.one(
            "get cdr",
            concat!("SELECT ", cdr_cols!(), " FROM cdrs WHERE org_id = $1 AND call_id = $2"),
            &[&org_id, &call_id],
            cdr_row,
        )
    }

    fn for_each_cdr(
        &mut self,
        org_id: &str,
        from: Timestamp,
        to: Timestamp,
        f: &mut dyn FnMut(&mut CdrRow) -> Result<()>,
    ) -> Result<()> {
        use postgres::fallible_iterator::FallibleIterator;
        const CONTEXT: &str = "scan cdrs";
        self.begin()?;
        let st = self.statement(
            CONTEXT,
            concat!(
                "SELECT ",
                cdr_cols!(),
                " FROM cdrs WHERE org_id = $1 AND start_at >= $2 AND start_at < $3 ORDER BY start_at, call_id"
            ),
        )?;
        let (from, to) = (micros(from), micros(to));
        let params: [&(dyn ToSql + Sync); 3] = [&org_id, &from, &to];
        // query_raw streams rows from the server as they come: memory stays flat.
        let mut failure = None;
        let mut stopped = None;
        match self.conn.client.query_raw(&st, params) {
            Ok(mut rows) => loop {
                match rows.next() {
                    Ok(Some(row)) => {
                        if let Err(e) = cdr_row(&row).and_then(|mut c| f(&mut c)) {
                            stopped = Some(e);
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                }
            },
            Err(err) => failure = Some(err),
        }
        if let Some(err) = failure {
            return Err(self.fail(CONTEXT, err));
        }
        stopped.map_or(Ok(()), Err)
    }

    fn list_cdrs(&mut self, org_id: &str, from: Timestamp, to: Timestamp) -> Result<Vec<CdrRow>> {
        self.many(
            "list cdrs",
            concat!(
                "SELECT ",
                cdr_cols!(),
                " FROM cdrs WHERE org_id = $1 AND start_at >= $2 AND start_at < $3 ORDER BY start_at, call_id"
            ),
            &[&org_id, &micros(from), &micros(to)],
            cdr_row,
        )
    }

    fn insert_denial(&mut self, d: &DenialRow) -> Result<()> {
        self.exec(
            "insert denial",
            "INSERT INTO denials (org_id, at, call_id, call_type, user_id, to_number, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&d.org_id, &micros(d.at), &d.call_id, &d.call_type, &d.user_id, &d.to_number, &d.reason],
        )
        .map(drop)
    }

    fn list_denials(&mut self, org_id: &str) -> Result<Vec<DenialRow>> {
        self.many(
            "list denials",
            "SELECT seq, org_id, at, call_id, call_type, user_id, to_number, reason FROM denials \
             WHERE org_id = $1 ORDER BY seq",
            &[&org_id],
            |r| {
                Ok(DenialRow {
                    seq: get(r, 0)?,
                    org_id: get(r, 1)?,
                    at: time(r, 2)?,
                    call_id: get(r, 3)?,
                    call_type: get(r, 4)?,
                    user_id: get(r, 5)?,
                    to_number: get(r, 6)?,
                    reason: get(r, 7)?,
                })
            },
        )
    }

    fn insert_notice(&mut self, n: &NoticeRow) -> Result<()> {
        self.exec(
            "insert notice",
            "INSERT INTO notices (org_id, notice_id, kind, created_at, subject, body, data, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&n.org_id, &n.notice_id, &n.kind, &micros(n.created_at), &n.subject, &n.body, &n.data, &n.status],
        )
        .map(drop)
    }

    fn list_notices(&mut self, org_id: &str) -> Result<Vec<NoticeRow>> {
        self.many(
            "list notices",
            "SELECT seq, org_id, notice_id, kind, created_at, subject, body, data, status FROM notices \
             WHERE org_id = $1 ORDER BY seq",
            &[&org_id],
            |r| {
                Ok(NoticeRow {
                    seq: get(r, 0)?,
                    org_id: get(r, 1)?,
                    notice_id: get(r, 2)?,
                    kind: get(r, 3)?,
                    created_at: time(r, 4)?,
                    subject: get(r, 5)?,
                    body: get(r, 6)?,
                    data: get(r, 7)?,
                    status: get(r, 8)?,
                })
            },
        )
    }

    fn due_lots(&mut self, now: Timestamp, limit: usize) -> Result<Vec<(String, String)>> {
        self.many(
            "due lots",
            "SELECT org_id, lot_id FROM lots WHERE NOT expired AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
            &[&micros(now), &(limit as i64)],
            pair,
        )
    }

    fn lots_expiring_before(&mut self, before: Timestamp, limit: usize) -> Result<Vec<(String, String)>> {
        self.many(
            "expiring lots",
            "SELECT org_id, lot_id FROM lots WHERE NOT expired AND NOT expiring_notified AND remaining_minor > 0 \
             AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
            &[&micros(before), &(limit as i64)],
            pair,
        )
    }

    fn due_reservations(&mut self, now: Timestamp, limit: usize) -> Result<Vec<(String, String)>> {
        self.many(
            "due reservations",
            "SELECT org_id, call_id FROM reservations WHERE state = 'pending' AND expires_at <= $1 \
             ORDER BY expires_at LIMIT $2",
            &[&micros(now), &(limit as i64)],
            pair,
        )
    }

    fn pending_orders(&mut self, limit: usize) -> Result<Vec<(String, String)>> {
        self.many(
            "pending orders",
            "SELECT org_id, order_id FROM orders WHERE status = 'pending' ORDER BY created_at LIMIT $1",
            &[&(limit as i64)],
            pair,
        )
    }

    fn insert_api_key(&mut self, k: &ApiKeyRow) -> Result<()> {
        self.exec(
            "insert api key",
            "INSERT INTO api_keys (org_id, key_id, role, name, secret_hash, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&k.org_id, &k.key_id, &k.role, &k.name, &k.secret_hash, &micros(k.created_at), &k.revoked_at.map(micros)],
        )
        .map(drop)
    }

    fn find_api_key(&mut self, secret_hash: &str) -> Result<Option<ApiKeyRow>> {
        self.one(
            "find api key",
            "SELECT org_id, key_id, role, name, secret_hash, created_at, revoked_at FROM api_keys WHERE secret_hash = $1",
            &[&secret_hash],
            api_key_row,
        )
    }

    fn list_api_keys(&mut self, org_id: &str) -> Result<Vec<ApiKeyRow>> {
        self.many(
            "list api keys",
            "SELECT org_id, key_id, role, name, secret_hash, created_at, revoked_at FROM api_keys \
             WHERE org_id = $1 ORDER BY created_at, key_id",
            &[&org_id],
            api_key_row,
        )
    }

    fn revoke_api_key(&mut self, org_id: &str, key_id: &str, at: Timestamp) -> Result<bool> {
        Ok(self.exec(
            "revoke api key",
            "UPDATE api_keys SET revoked_at = $3 WHERE org_id = $1 AND key_id = $2 AND revoked_at IS NULL",
            &[&org_id, &key_id, &micros(at)],
        )? == 1)
    }

    fn get_idempotency(&mut self, org_id: &str, key: &str) -> Result<Option<IdempotencyRow>> {
        self.one(
            "get idempotency",
            "SELECT org_id, idem_key, fingerprint, status, body, created_at, expires_at, call_id FROM idempotency \
             WHERE org_id = $1 AND idem_key = $2",
            &[&org_id, &key],
            |r| {
                Ok(IdempotencyRow {
                    org_id: get(r, 0)?,
                    key: get(r, 1)?,
                    fingerprint: get(r, 2)?,
                    status: get(r, 3)?,
                    body: get(r, 4)?,
                    created_at: time(r, 5)?,
                    expires_at: time(r, 6)?,
                    call_id: get(r, 7)?,
                })
            },
        )
    }

    fn put_idempotency(&mut self, i: &IdempotencyRow) -> Result<()> {
        self.exec(
            "put idempotency",
            "INSERT INTO idempotency (org_id, idem_key, fingerprint, status, body, created_at, expires_at, call_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (org_id, idem_key) DO UPDATE SET fingerprint = excluded.fingerprint, status = excluded.status, \
             body = excluded.body, created_at = excluded.created_at, expires_at = excluded.expires_at, \
             call_id = excluded.call_id",
            &[
                &i.org_id,
                &i.key,
                &i.fingerprint,
                &i.status,
                &i.body,
                &micros(i.created_at),
                &micros(i.expires_at),
                &i.call_id,
            ],
        )
        .map(drop)
    }

    fn take_idempotency(&mut self, i: &IdempotencyRow, now: Timestamp) -> Result<bool> {
        // Of two transactions racing for one lapsed claim, the second waits for the
        // first's row lock and then finds the lease renewed (or fails to serialize and
        // is retried, and then finds it): it takes nothing.
        Ok(self.exec(
            "take idempotency key",
            "INSERT INTO idempotency (org_id, idem_key, fingerprint, status, body, created_at, expires_at, call_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (org_id, idem_key) DO UPDATE SET fingerprint = excluded.fingerprint, status = excluded.status, \
             body = excluded.body, created_at = excluded.created_at, expires_at = excluded.expires_at, \
             call_id = excluded.call_id \
             WHERE idempotency.expires_at <= $9",
            &[
                &i.org_id,
                &i.key,
                &i.fingerprint,
                &i.status,
                &i.body,
                &micros(i.created_at),
                &micros(i.expires_at),
                &i.call_id,
                &micros(now),
            ],
        )? == 1)
    }

    fn replace_claim(&mut self, i: &IdempotencyRow, claim: &str) -> Result<bool> {
        Ok(self.exec(
            "replace idempotency claim",
            "UPDATE idempotency SET fingerprint = $3, status = $4, body = $5, created_at = $6, expires_at = $7, \
             call_id = $8 WHERE org_id = $1 AND idem_key = $2 AND status = 0 AND body = $9",
            &[
                &i.org_id,
                &i.key,
                &i.fingerprint,
                &i.status,
                &i.body,
                &micros(i.created_at),
                &micros(i.expires_at),
                &i.call_id,
                &claim,
            ],
        )? == 1)
    }

    fn delete_idempotency(&mut self, org_id: &str, key: &str) -> Result<()> {
        self.exec("delete idempotency", "DELETE FROM idempotency WHERE org_id = $1 AND idem_key = $2", &[&org_id, &key])
            .map(drop)
    }

    fn delete_call_idempotency(&mut self, org_id: &str, call_id: &str) -> Result<usize> {
        self.exec(
            "delete call idempotency",
            "DELETE FROM idempotency WHERE org_id = $1 AND call_id = $2",
            &[&org_id, &call_id],
        )
        .map(|n| n as usize)
    }

    fn delete_expired_idempotency(&mut self, now: Timestamp, limit: usize) -> Result<usize> {
        self.exec(
            "delete expired idempotency",
            "DELETE FROM idempotency WHERE (org_id, idem_key) IN \
             (SELECT org_id, idem_key FROM idempotency WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2)",
            &[&micros(now), &(limit as i64)],
        )
        .map(|n| n as usize)
    }

    fn count_open_reservations_all(&mut self) -> Result<i64> {
        self.count("count open reservations", "SELECT COUNT(*) FROM reservations WHERE state = 'pending'", &[])
    }

    fn count_pending_notices_all(&mut self) -> Result<i64> {
        self.count("count pending notices", "SELECT COUNT(*) FROM notices WHERE status = 'pending'", &[])
    }

    fn get_notice(&mut self, org_id: &str, notice_id: &str) -> Result<Option<NoticeRow>> {
        self.one(
            "get notice",
            "SELECT seq, org_id, notice_id, kind, created_at, subject, body, data, status FROM notices \
             WHERE org_id = $1 AND notice_id = $2",
            &[&org_id, &notice_id],
            notice_row,
        )
    }

    fn set_notice_status(&mut self, org_id: &str, notice_id: &str, status: &str) -> Result<()> {
        self.exec(
            "set notice status",
            "UPDATE notices SET status = $3 WHERE org_id = $1 AND notice_id = $2",
            &[&org_id, &notice_id, &status],
        )
        .map(drop)
    }

    fn insert_webhook(&mut self, w: &WebhookRow) -> Result<()> {
        self.exec(
            "insert webhook",
            "INSERT INTO webhooks (org_id, webhook_id, url, secret, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&w.org_id, &w.webhook_id, &w.url, &w.secret, &micros(w.created_at)],
        )
        .map(drop)
    }

    fn get_webhook(&mut self, org_id: &str, webhook_id: &str) -> Result<Option<WebhookRow>> {
        self.one(
            "get webhook",
            "SELECT org_id, webhook_id, url, secret, created_at FROM webhooks WHERE org_id = $1 AND webhook_id = $2",
            &[&org_id, &webhook_id],
            webhook_row,
        )
    }

    fn list_webhooks(&mut self, org_id: &str) -> Result<Vec<WebhookRow>> {
        self.many(
            "list webhooks",
            "SELECT org_id, webhook_id, url, secret, created_at FROM webhooks WHERE org_id = $1 \
             ORDER BY created_at, webhook_id",
            &[&org_id],
            webhook_row,
        )
    }

    fn delete_webhook(&mut self, org_id: &str, webhook_id: &str) -> Result<bool> {
        Ok(self.exec(
            "delete webhook",
            "DELETE FROM webhooks WHERE org_id = $1 AND webhook_id = $2",
            &[&org_id, &webhook_id],
        )? == 1)
    }

    fn insert_delivery(&mut self, d: &DeliveryRow) -> Result<()> {
        self.exec(
            "insert delivery",
            concat!(
                "INSERT INTO deliveries (",
                delivery_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ),
            &[
                &d.org_id,
                &d.delivery_id,
                &d.notice_id,
                &d.channel,
                &d.target,
                &d.status,
                &d.attempts,
                &micros(d.next_attempt_at),
                &d.last_error,
                &d.sent_at.map(micros),
                &micros(d.created_at),
            ],
        )
        .map(drop)
    }

    fn update_delivery(&mut self, d: &DeliveryRow) -> Result<()> {
        self.exec(
            "update delivery",
            "UPDATE deliveries SET status = $3, attempts = $4, next_attempt_at = $5, last_error = $6, sent_at = $7 \
             WHERE org_id = $1 AND delivery_id = $2",
            &[
                &d.org_id,
                &d.delivery_id,
                &d.status,
                &d.attempts,
                &micros(d.next_attempt_at),
                &d.last_error,
                &d.sent_at.map(micros),
            ],
        )
        .map(drop)
    }

    fn get_delivery(&mut self, org_id: &str, delivery_id: &str) -> Result<Option<DeliveryRow>> {
        self.one(
            "get delivery",
            concat!("SELECT ", delivery_cols!(), " FROM deliveries WHERE org_id = $1 AND delivery_id = $2"),
            &[&org_id, &delivery_id],
            delivery_row,
        )
    }

    fn list_deliveries(&mut self, org_id: &str) -> Result<Vec<DeliveryRow>> {
        self.many(
            "list deliveries",
            concat!("SELECT ", delivery_cols!(), " FROM deliveries WHERE org_id = $1 ORDER BY created_at, delivery_id"),
            &[&org_id],
            delivery_row,
        )
    }

    fn notice_deliveries(&mut self, org_id: &str, notice_id: &str) -> Result<Vec<DeliveryRow>> {
        self.many(
            "notice deliveries",
            concat!(
                "SELECT ",
                delivery_cols!(),
                " FROM deliveries WHERE org_id = $1 AND notice_id = $2 ORDER BY created_at, delivery_id"
            ),
            &[&org_id, &notice_id],
            delivery_row,
        )
    }

    fn due_deliveries(
        &mut self,
        now: Timestamp,
        channel: Option<&str>,
        limit: usize,
        per_org: usize,
    ) -> Result<Vec<(String, String)>> {
        self.many(
            "due deliveries",
            "SELECT org_id, delivery_id FROM (SELECT org_id, delivery_id, next_attempt_at, \
             ROW_NUMBER() OVER (PARTITION BY org_id ORDER BY next_attempt_at, delivery_id) AS n \
             FROM deliveries WHERE status = 'pending' AND next_attempt_at <= $1 AND ($3::TEXT IS NULL OR channel = $3)) d \
             WHERE n <= $4 ORDER BY next_attempt_at, delivery_id LIMIT $2",
            &[&micros(now), &(limit as i64), &channel, &(per_org as i64)],
            pair,
        )
    }

    fn count_failed_deliveries_all(&mut self) -> Result<i64> {
        self.count("count failed deliveries", "SELECT COUNT(*) FROM deliveries WHERE status = 'failed'", &[])
    }

    fn put_rate_deck(&mut self, d: &RateDeckRow) -> Result<()> {
        self.exec(
            "put rate deck",
            "INSERT INTO rate_decks (kind, currency, csv, entries, imported_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (kind, currency) DO UPDATE SET csv = excluded.csv, entries = excluded.entries, \
             imported_at = excluded.imported_at",
            &[&d.kind, &d.currency, &d.csv, &d.entries, &micros(d.imported_at)],
        )
        .map(drop)
    }

    fn list_rate_decks(&mut self) -> Result<Vec<RateDeckRow>> {
        self.many(
            "list rate decks",
            "SELECT kind, currency, csv, entries, imported_at FROM rate_decks ORDER BY kind, currency",
            &[],
            |r| {
                Ok(RateDeckRow {
                    kind: get(r, 0)?,
                    currency: get(r, 1)?,
                    csv: get(r, 2)?,
                    entries: get(r, 3)?,
                    imported_at: time(r, 4)?,
                })
            },
        )
    }
}

// -- fresh databases for tests --

/// A brand-new, empty database on a PostgreSQL server, made for one test and dropped
/// (`DROP DATABASE ... WITH (FORCE)`, which also ends sessions still connected) when
/// this value is dropped. Open stores on [`TestDatabase::url`]; drop them before this
/// value so their pools close their own connections first.
///
/// ```no_run
/// let db = commcredits_store::postgres::test_database("postgres://postgres@127.0.0.1:5432/test")?;
/// let store = commcredits_store::open(db.url())?;
/// // ... use the store; drop it, then `db` ...
/// # Ok::<(), commcredits_core::Error>(())
/// ```
///
/// Safe to create and drop from async tests: the server round trips run on a plain
/// thread.
pub struct TestDatabase {
    url: String,
    name: String,
    maintenance: Config,
}

impl TestDatabase {
    /// The new database's URL: the base URL with only the database name replaced.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name (`commcredits_test_...`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let config = self.maintenance.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let dropped = on_plain_thread(move || -> std::result::Result<(), String> {
            let mut client = config.connect(NoTls).map_err(|e| pg_error("connect", &e).message)?;
            client.batch_execute(&sql).map_err(|e| pg_error("drop database", &e).message)
        });
        if let Err(e) = dropped.map_err(|e| e.to_string()).and_then(|r| r) {
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

/// Creates a fresh, uniquely named database on the server of `base_url` (which must
/// allow `CREATE DATABASE`; its own database is only used to connect) and returns it;
/// it is dropped with the returned value. Fails, never skips, when the server cannot be
/// reached: tests that need PostgreSQL should fail loudly without one.
pub fn test_database(base_url: &str) -> Result<TestDatabase> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let maintenance = parse_config(base_url)?;
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let name = format!("commcredits_test_{}_{}_{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let config = maintenance.clone();
    let sql = format!("CREATE DATABASE \"{name}\"");
    let target = describe_config(&maintenance);
    on_plain_thread(move || -> Result<()> {
        let mut client = config.connect(NoTls).map_err(|err| pg_error(&format!("cannot connect to {target}"), &err))?;
        client.batch_execute(&sql).map_err(|err| pg_error(&format!("cannot create a database on {target}"), &err))
    })??;
    let url = with_database(base_url, &name);
    Ok(TestDatabase { url, name, maintenance })
}

/// `url` with its database name replaced by `dbname` (URL or `key=value` form).
fn with_database(url: &str, dbname: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // key=value form: a later key overrides an earlier one.
        return format!("{url} dbname={dbname}");
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = before_query.split_once('/').map_or(before_query, |(a, _)| a);
    let kept: Vec<&str> = query.split('&').filter(|p| !p.is_empty() && !p.starts_with("dbname=")).collect();
    let query = if kept.is_empty() { String::new() } else { format!("?{}", kept.join("&")) };
    format!("{scheme}://{authority}/{dbname}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_never_shows_the_password() {
        let config = parse_config("postgres://app:s3cret@db.example.com:6432/billing?sslmode=disable").unwrap();
        let d = describe_config(&config);
        assert_eq!(d, "postgres://app@db.example.com:6432/billing");
        assert!(!d.contains("s3cret"));
        let config = parse_config("host=localhost user=app password=s3cret dbname=billing").unwrap();
        assert_eq!(describe_config(&config), "postgres://app@localhost:5432/billing");
    }

    #[test]
    fn test_database_urls_replace_only_the_database() {
        assert_eq!(with_database("postgres://u:p@h:5432/test", "x"), "postgres://u:p@h:5432/x");
        assert_eq!(with_database("postgresql://h", "x"), "postgresql://h/x");
        assert_eq!(
            with_database("postgres://h/test?dbname=test&application_name=a", "x"),
            "postgres://h/x?application_name=a"
        );
        assert_eq!(with_database("host=h user=u", "x"), "host=h user=u dbname=x");
    }

    #[test]
    fn lock_keys_are_stable() {
        // Every server, whatever its build, must compute the same keys: pin them.
        assert_eq!(org_lock_key("o1"), -671_084_301_235_095_915);
        assert_eq!(MIGRATION_LOCK_KEY, -2_708_088_280_667_435_562);
        assert_ne!(org_lock_key("o1"), org_lock_key("o2"));
        assert_ne!(org_lock_key("schema_migrations"), MIGRATION_LOCK_KEY);
    }
}
