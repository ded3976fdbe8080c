//! The SQLite adapter: one file, WAL, `synchronous=FULL` so an acknowledged commit
//! survives power loss. One writer connection (SQLite allows one writer at a time;
//! `BEGIN IMMEDIATE` makes that explicit across processes), readers on their own
//! connections so reports never block charging.

use crate::rows::*;
use crate::{store_error, Store, Tx};
use commcredits_core::{Error, ErrorCode, Result, Timestamp};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::sync::Mutex;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_keys_idempotency.sql")),
    (3, include_str!("../migrations/sqlite/0003_delivery.sql")),
    (4, include_str!("../migrations/sqlite/0004_cdrs_time_order.sql")),
    (5, include_str!("../migrations/sqlite/0005_cdrs_clustered.sql")),
    (6, include_str!("../migrations/sqlite/0006_reservations_pending.sql")),
    (7, include_str!("../migrations/sqlite/0007_idempotency_expiry.sql")),
    (8, include_str!("../migrations/sqlite/0008_notices_pending.sql")),
];

pub struct SqliteStore {
    url: String,
    path: String,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Keeps a temporary directory alive for `sqlite::memory:` stores.
    _tmp: Option<tempfile::TempDir>,
}

fn e(context: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |err| store_error(context, err)
}

pub(crate) fn micros(t: Timestamp) -> i64 {
    t.as_microsecond()
}

pub(crate) fn ts(us: i64) -> Timestamp {
    Timestamp::from_microsecond(us).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(e("busy_timeout"))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA cache_size=-16384; PRAGMA temp_store=MEMORY;",
    )
    .map_err(e("configure"))?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub fn open(url: &str) -> Result<SqliteStore> {
        let (path, tmp) = if url == "sqlite::memory:" {
            // A real file in a private temp directory, so readers and the writer share it.
            let dir = tempfile::tempdir().map_err(|err| store_error("tempdir", err))?;
            (dir.path().join("commcredits.db").to_string_lossy().into_owned(), Some(dir))
        } else {
            (url.strip_prefix("sqlite://").unwrap_or(url).to_string(), None)
        };
        if path.is_empty() {
            return Err(Error::new(ErrorCode::InvalidInput, "empty database path"));
        }
        let writer = Connection::open(&path).map_err(|err| store_error(&format!("cannot open {path}"), err))?;
        configure(&writer)?;
        migrate(&writer)?;
        Ok(SqliteStore {
            url: url.to_string(),
            path,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            _tmp: tmp,
        })
    }

    fn reader(&self) -> Result<Connection> {
        if let Some(c) = self.readers.lock().map_err(|_| poisoned())?.pop() {
            return Ok(c);
        }
        let c = Connection::open(&self.path).map_err(e("open reader"))?;
        configure(&c)?;
        Ok(c)
    }
}

fn poisoned() -> Error {
    Error::new(ErrorCode::Internal, "a previous writer panicked")
}

fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(e("migrations table"))?;
    conn.execute_batch("BEGIN IMMEDIATE").map_err(e("begin migration"))?;
    let result = (|| {
        let current: i64 = conn
            .query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0))
            .map_err(e("read schema version"))?;
        for (version, sql) in MIGRATIONS {
            if *version > current {
                conn.execute_batch(sql).map_err(|err| store_error(&format!("migration {version}"), err))?;
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                    params![version, micros(Timestamp::now())],
                )
                .map_err(e("record migration"))?;
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(e("commit migration")),
        Err(err) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(err)
        }
    }
}

impl Store for SqliteStore {
    fn write(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        // A writer that panicked (a bug) poisons the lock and leaves its transaction
        // open: roll that back and go on, so one bad command cannot stop every later
        // write (call control included).
        let conn = self.writer.lock().unwrap_or_else(|p| {
            self.writer.clear_poison();
            p.into_inner()
        });
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK").map_err(e("roll back a panicked transaction"))?;
        }
        conn.execute_batch("BEGIN IMMEDIATE").map_err(e("begin"))?;
        let mut tx = SqliteTx { conn: &conn, depth: 0 };
        match f(&mut tx) {
            Ok(()) => conn.execute_batch("COMMIT").map_err(|err| {
                let _ = conn.execute_batch("ROLLBACK");
                store_error("commit", err)
            }),
            Err(err) => {
                conn.execute_batch("ROLLBACK").map_err(e("rollback"))?;
                Err(err)
            }
        }
    }

    fn read(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        let conn = self.reader()?;
        conn.execute_batch("PRAGMA query_only=ON; BEGIN").map_err(e("begin read"))?;
        let result = f(&mut SqliteTx { conn: &conn, depth: 0 });
        let _ = conn.execute_batch("COMMIT; PRAGMA query_only=OFF");
        if let Ok(mut pool) = self.readers.lock() {
            if pool.len() < 8 {
                pool.push(conn);
            }
        }
        result
    }

    fn describe(&self) -> String {
        if self._tmp.is_some() {
            "sqlite::memory:".into()
        } else {
            format!("sqlite://{}", self.url.strip_prefix("sqlite://").unwrap_or(&self.url))
        }
    }
}

struct SqliteTx<'c> {
    conn: &'c Connection,
    depth: u32,
}

impl SqliteTx<'_> {
    fn exec(&self, context: &str, sql: &str, p: impl rusqlite::Params) -> Result<usize> {
        self.conn.prepare_cached(sql).map_err(e(context))?.execute(p).map_err(e(context))
    }

    fn one<T>(
        &self,
        context: &str,
        sql: &str,
        p: impl rusqlite::Params,
        map: impl FnOnce(&Row) -> rusqlite::Result<T>,
    ) -> Result<Option<T>> {
        self.conn.prepare_cached(sql).map_err(e(context))?.query_row(p, map).optional().map_err(e(context))
    }

    fn many<T>(
        &self,
        context: &str,
        sql: &str,
        p: impl rusqlite::Params,
        map: impl FnMut(&Row) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut st = self.conn.prepare_cached(sql).map_err(e(context))?;
        let rows = st.query_map(p, map).map_err(e(context))?;
        rows.collect::<rusqlite::Result<Vec<T>>>().map_err(e(context))
    }
}

const ORG_COLS: &str =
    "org_id, name, currency, country, notification_emails, low_balance_minor, suspended, created_at, disabled_notices";
fn org_row(r: &Row) -> rusqlite::Result<OrgRow> {
    let emails: String = r.get(4)?;
    Ok(OrgRow {
        org_id: r.get(0)?,
        name: r.get(1)?,
        currency: r.get(2)?,
        country: r.get(3)?,
        notification_emails: emails.lines().filter(|l| !l.is_empty()).map(str::to_string).collect(),
        low_balance_minor: r.get(5)?,
        suspended: r.get(6)?,
        created_at: ts(r.get(7)?),
        disabled_notices: r.get::<_, String>(8)?.lines().filter(|l| !l.is_empty()).map(str::to_string).collect(),
    })
}

const DELIVERY_COLS: &str = "org_id, delivery_id, notice_id, channel, target, status, attempts, next_attempt_at, last_error, sent_at, created_at";
fn delivery_row(r: &Row) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        org_id: r.get(0)?,
        delivery_id: r.get(1)?,
        notice_id: r.get(2)?,
        channel: r.get(3)?,
        target: r.get(4)?,
        status: r.get(5)?,
        attempts: r.get(6)?,
        next_attempt_at: ts(r.get(7)?),
        last_error: r.get(8)?,
        sent_at: r.get::<_, Option<i64>>(9)?.map(ts),
        created_at: ts(r.get(10)?),
    })
}

fn webhook_row(r: &Row) -> rusqlite::Result<WebhookRow> {
    Ok(WebhookRow {
        org_id: r.get(0)?,
        webhook_id: r.get(1)?,
        url: r.get(2)?,
        secret: r.get(3)?,
        created_at: ts(r.get(4)?),
    })
}

fn notice_row(r: &Row) -> rusqlite::Result<NoticeRow> {
    Ok(NoticeRow {
        seq: r.get(0)?,
        org_id: r.get(1)?,
        notice_id: r.get(2)?,
        kind: r.get(3)?,
        created_at: ts(r.get(4)?),
        subject: r.get(5)?,
        body: r.get(6)?,
        data: r.get(7)?,
        status: r.get(8)?,
    })
}

const USER_COLS: &str = "org_id, user_id, upn, display_name, usage_location, phone_number, dial_out, conference_dial_out, spend_limit_minor, created_at";
fn user_row(r: &Row) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        org_id: r.get(0)?,
        user_id: r.get(1)?,
        upn: r.get(2)?,
        display_name: r.get(3)?,
        usage_location: r.get(4)?,
        phone_number: r.get(5)?,
        dial_out: r.get(6)?,
        conference_dial_out: r.get(7)?,
        spend_limit_minor: r.get(8)?,
        created_at: ts(r.get(9)?),
    })
}

const PM_COLS: &str =
    "org_id, pm_id, kind, brand, last4, exp_month, exp_year, holder, token, agreement_number, created_at";
fn pm_row(r: &Row) -> rusqlite::Result<PaymentMethodRow> {
    Ok(PaymentMethodRow {
        org_id: r.get(0)?,
        pm_id: r.get(1)?,
        kind: r.get(2)?,
        brand: r.get(3)?,
        last4: r.get(4)?,
        exp_month: r.get(5)?,
        exp_year: r.get(6)?,
        holder: r.get(7)?,
        token: r.get(8)?,
        agreement_number: r.get(9)?,
        created_at: ts(r.get(10)?),
    })
}

const ACCOUNT_COLS: &str = "org_id, currency, balance_minor, reserved_minor, ar_enabled, ar_amount_minor, ar_threshold_minor, ar_payment_method_id, ar_armed, exhausted_notified, low_balance_notified";
fn account_row(r: &Row) -> rusqlite::Result<AccountRow> {
    Ok(AccountRow {
        org_id: r.get(0)?,
        currency: r.get(1)?,
        balance_minor: r.get(2)?,
        reserved_minor: r.get(3)?,
        ar_enabled: r.get(4)?,
        ar_amount_minor: r.get(5)?,
        ar_threshold_minor: r.get(6)?,
        ar_payment_method_id: r.get(7)?,
        ar_armed: r.get(8)?,
        exhausted_notified: r.get(9)?,
        low_balance_notified: r.get(10)?,
    })
}

const LOT_COLS: &str = "org_id, lot_id, order_id, amount_minor, remaining_minor, reserved_minor, purchased_at, expires_at, expired, expiring_notified";
fn lot_row(r: &Row) -> rusqlite::Result<LotRow> {
    Ok(LotRow {
        org_id: r.get(0)?,
        lot_id: r.get(1)?,
        order_id: r.get(2)?,
        amount_minor: r.get(3)?,
        remaining_minor: r.get(4)?,
        reserved_minor: r.get(5)?,
        purchased_at: ts(r.get(6)?),
        expires_at: ts(r.get(7)?),
        expired: r.get(8)?,
        expiring_notified: r.get(9)?,
    })
}

const LEDGER_COLS: &str =
    "seq, org_id, entry_id, kind, amount_minor, balance_after_minor, lot_id, call_id, order_id, at, memo";
fn ledger_row(r: &Row) -> rusqlite::Result<LedgerRow> {
    Ok(LedgerRow {
        seq: r.get(0)?,
        org_id: r.get(1)?,
        entry_id: r.get(2)?,
        kind: r.get(3)?,
        amount_minor: r.get(4)?,
        balance_after_minor: r.get(5)?,
        lot_id: r.get(6)?,
        call_id: r.get(7)?,
        order_id: r.get(8)?,
        at: ts(r.get(9)?),
        memo: r.get(10)?,
    })
}

const ORDER_COLS: &str = "org_id, order_id, kind, amount_minor, currency, payment_method_id, po_number, status, failure_reason, lot_id, created_at, completed_at";
fn order_row(r: &Row) -> rusqlite::Result<OrderRow> {
    Ok(OrderRow {
        org_id: r.get(0)?,
        order_id: r.get(1)?,
        kind: r.get(2)?,
        amount_minor: r.get(3)?,
        currency: r.get(4)?,
        payment_method_id: r.get(5)?,
        po_number: r.get(6)?,
        status: r.get(7)?,
        failure_reason: r.get(8)?,
        lot_id: r.get(9)?,
        created_at: ts(r.get(10)?),
        completed_at: r.get::<_, Option<i64>>(11)?.map(ts),
    })
}

const POOL_COLS: &str = "org_id, scope, kind, month, used_minutes, reserved_minutes, notified_80, notified_100";
fn pool_row(r: &Row) -> rusqlite::Result<PoolUsageRow> {
    Ok(PoolUsageRow {
        org_id: r.get(0)?,
        scope: r.get(1)?,
        kind: r.get(2)?,
        month: r.get(3)?,
        used_minutes: r.get(4)?,
        reserved_minutes: r.get(5)?,
        notified_80: r.get(6)?,
        notified_100: r.get(7)?,
    })
}

const RES_COLS: &str = "org_id, call_id, call_type, user_id, from_number, to_number, state, created_at, updated_at, expires_at, granted_seconds, used_seconds, plan_scope, plan_kind, plan_month, plan_minutes, money_minor, earmarks, spend_month, rate_prefix, rate_name, rate_per_minute, connection_fee_minor, increment_seconds, domestic, dest_country, emergency";
fn res_row(r: &Row) -> rusqlite::Result<ReservationRow> {
    Ok(ReservationRow {
        org_id: r.get(0)?,
        call_id: r.get(1)?,
        call_type: r.get(2)?,
        user_id: r.get(3)?,
        from_number: r.get(4)?,
        to_number: r.get(5)?,
        state: r.get(6)?,
        created_at: ts(r.get(7)?),
        updated_at: ts(r.get(8)?),
        expires_at: ts(r.get(9)?),
        granted_seconds: r.get(10)?,
        used_seconds: r.get(11)?,
        plan_scope: r.get(12)?,
        plan_kind: r.get(13)?,
        plan_month: r.get(14)?,
        plan_minutes: r.get(15)?,
        money_minor: r.get(16)?,
        earmarks: r.get(17)?,
        spend_month: r.get(18)?,
        rate_prefix: r.get(19)?,
        rate_name: r.get(20)?,
        rate_per_minute: r.get(21)?,
        connection_fee_minor: r.get(22)?,
        increment_seconds: r.get(23)?,
        domestic: r.get(24)?,
        dest_country: r.get(25)?,
        emergency: r.get(26)?,
    })
}

const CDR_COLS: &str = "org_id, call_id, usage_id, call_type, user_id, from_number, to_number, dest_country, domestic, start_at, end_at, duration_seconds, charged_seconds, overrun_seconds, plan_minutes, plan_kind, charge_minor, connection_fee_minor, currency, funding, rate_name, rate_per_minute, source";
fn cdr_row(r: &Row) -> rusqlite::Result<CdrRow> {
    Ok(CdrRow {
        org_id: r.get(0)?,
        call_id: r.get(1)?,
        usage_id: r.get(2)?,
        call_type: r.get(3)?,
        user_id: r.get(4)?,
        from_number: r.get(5)?,
        to_number: r.get(6)?,
        dest_country: r.get(7)?,
        domestic: r.get(8)?,
        start_at: ts(r.get(9)?),
        end_at: ts(r.get(10)?),
        duration_seconds: r.get(11)?,
        charged_seconds: r.get(12)?,
        overrun_seconds: r.get(13)?,
        plan_minutes: r.get(14)?,
        plan_kind: r.get(15)?,
        charge_minor: r.get(16)?,
        connection_fee_minor: r.get(17)?,
        currency: r.get(18)?,
        funding: r.get(19)?,
        rate_name: r.get(20)?,
        rate_per_minute: r.get(21)?,
        source: r.get(22)?,
    })
}

/// Reads a CDR into `c`, reusing its strings' buffers.
fn refill_cdr_row(r: &Row, c: &mut CdrRow) -> rusqlite::Result<()> {
    fn text(r: &Row, i: usize, into: &mut String) -> rusqlite::Result<()> {
        into.clear();
        into.push_str(r.get_ref(i)?.as_str()?);
        Ok(())
    }
    fn opt_text(r: &Row, i: usize, into: &mut Option<String>) -> rusqlite::Result<()> {
        match r.get_ref(i)?.as_str_or_null()? {
            Some(v) => {
                let s = into.get_or_insert_with(String::new);
                s.clear();
                s.push_str(v);
            }
            None => *into = None,
        }
        Ok(())
    }
    text(r, 0, &mut c.org_id)?;
    text(r, 1, &mut c.call_id)?;
    text(r, 2, &mut c.usage_id)?;
    text(r, 3, &mut c.call_type)?;
    opt_text(r, 4, &mut c.user_id)?;
    text(r, 5, &mut c.from_number)?;
    text(r, 6, &mut c.to_number)?;
    opt_text(r, 7, &mut c.dest_country)?;
    c.domestic = r.get(8)?;
    c.start_at = ts(r.get(9)?);
    c.end_at = ts(r.get(10)?);
    c.duration_seconds = r.get(11)?;
    c.charged_seconds = r.get(12)?;
    c.overrun_seconds = r.get(13)?;
    c.plan_minutes = r.get(14)?;
    opt_text(r, 15, &mut c.plan_kind)?;
    c.charge_minor = r.get(16)?;
    c.connection_fee_minor = r.get(17)?;
    text(r, 18, &mut c.currency)?;
    text(r, 19, &mut c.funding)?;
    opt_text(r, 20, &mut c.rate_name)?;
    opt_text(r, 21, &mut c.rate_per_minute)?;
    text(r, 22, &mut c.source)?;
    Ok(())
}

fn api_key_row(r: &Row) -> rusqlite::Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        org_id: r.get(0)?,
        key_id: r.get(1)?,
        role: r.get(2)?,
        name: r.get(3)?,
        secret_hash: r.get(4)?,
        created_at: ts(r.get(5)?),
        revoked_at: r.get::<_, Option<i64>>(6)?.map(ts),
    })
}

/// Ids per `reserved_call_ids` statement (a statement binds at most 32,766 values).
const RESERVED_IDS_PER_STATEMENT: usize = 500;

fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
}

impl Tx for SqliteTx<'_> {
    fn savepoint(&mut self) -> Result<()> {
        self.depth += 1;
        self.conn.execute_batch(&format!("SAVEPOINT sp{}", self.depth)).map_err(e("savepoint"))
    }

    fn release_savepoint(&mut self) -> Result<()> {
        self.conn.execute_batch(&format!("RELEASE sp{}", self.depth)).map_err(e("release savepoint"))?;
        self.depth -= 1;
        Ok(())
    }

    fn rollback_savepoint(&mut self) -> Result<()> {
        self.conn
            .execute_batch(&format!("ROLLBACK TO sp{0}; RELEASE sp{0}", self.depth))
            .map_err(e("rollback savepoint"))?;
        self.depth -= 1;
        Ok(())
    }

    fn lock_org(&mut self, _org_id: &str) -> Result<()> {
        // BEGIN IMMEDIATE already holds the database's single write lock.
        Ok(())
    }

    fn insert_org(&mut self, o: &OrgRow) -> Result<()> {
        self.exec(
            "insert org",
            &format!("INSERT INTO orgs ({ORG_COLS}) VALUES ({})", placeholders(9)),
            params![
                o.org_id,
                o.name,
                o.currency,
                o.country,
                o.notification_emails.join("\n"),
                o.low_balance_minor,
                o.suspended,
                micros(o.created_at),
                o.disabled_notices.join("\n")
            ],
        )
        .map(drop)
    }

    fn get_org(&mut self, org_id: &str) -> Result<Option<OrgRow>> {
        self.one("get org", &format!("SELECT {ORG_COLS} FROM orgs WHERE org_id = ?1"), [org_id], org_row)
    }

    fn find_org_by_name(&mut self, name: &str) -> Result<Vec<OrgRow>> {
        self.many("find org", &format!("SELECT {ORG_COLS} FROM orgs WHERE name = ?1"), [name], org_row)
    }

    fn update_org(&mut self, o: &OrgRow) -> Result<()> {
        self.exec(
            "update org",
            "UPDATE orgs SET name = ?2, notification_emails = ?3, low_balance_minor = ?4, suspended = ?5, disabled_notices = ?6 WHERE org_id = ?1",
            params![o.org_id, o.name, o.notification_emails.join("\n"), o.low_balance_minor, o.suspended, o.disabled_notices.join("\n")],
        )
        .map(drop)
    }

    fn list_orgs(&mut self) -> Result<Vec<OrgRow>> {
        self.many("list orgs", &format!("SELECT {ORG_COLS} FROM orgs ORDER BY created_at, org_id"), [], org_row)
    }

    fn insert_user(&mut self, u: &UserRow) -> Result<()> {
        self.exec(
            "insert user",
            &format!("INSERT INTO users ({USER_COLS}) VALUES ({})", placeholders(10)),
            params![
                u.org_id,
                u.user_id,
                u.upn,
                u.display_name,
                u.usage_location,
                u.phone_number,
                u.dial_out,
                u.conference_dial_out,
                u.spend_limit_minor,
                micros(u.created_at)
            ],
        )
        .map(drop)
    }

    fn update_user(&mut self, u: &UserRow) -> Result<()> {
        self.exec(
            "update user",
            "UPDATE users SET upn = ?3, display_name = ?4, usage_location = ?5, phone_number = ?6, dial_out = ?7, conference_dial_out = ?8, spend_limit_minor = ?9 WHERE org_id = ?1 AND user_id = ?2",
            params![u.org_id, u.user_id, u.upn, u.display_name, u.usage_location, u.phone_number, u.dial_out, u.conference_dial_out, u.spend_limit_minor],
        )
        .map(drop)
    }

    fn get_user(&mut self, org_id: &str, user_id: &str) -> Result<Option<UserRow>> {
        self.one(
            "get user",
            &format!("SELECT {USER_COLS} FROM users WHERE org_id = ?1 AND user_id = ?2"),
            [org_id, user_id],
            user_row,
        )
    }

    fn get_user_by_upn(&mut self, org_id: &str, upn: &str) -> Result<Option<UserRow>> {
        self.one(
            "get user by upn",
            &format!("SELECT {USER_COLS} FROM users WHERE org_id = ?1 AND upn = ?2"),
            [org_id, upn],
            user_row,
        )
    }

    fn list_users(&mut self, org_id: &str) -> Result<Vec<UserRow>> {
        self.many(
            "list users",
            &format!("SELECT {USER_COLS} FROM users WHERE org_id = ?1 ORDER BY upn"),
            [org_id],
            user_row,
        )
    }

    fn set_subscription(&mut self, org_id: &str, sku: &str, quantity: i64) -> Result<()> {
        self.exec(
            "set subscription",
            "INSERT INTO subscriptions (org_id, sku, quantity) VALUES (?1, ?2, ?3) ON CONFLICT (org_id, sku) DO UPDATE SET quantity = excluded.quantity",
            params![org_id, sku, quantity],
        )
        .map(drop)
    }

    fn list_subscriptions(&mut self, org_id: &str) -> Result<Vec<(String, i64)>> {
        self.many(
            "list subscriptions",
            "SELECT sku, quantity FROM subscriptions WHERE org_id = ?1 ORDER BY sku",
            [org_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn user_licenses(&mut self, org_id: &str, user_id: &str) -> Result<Vec<String>> {
        self.many(
            "user licenses",
            "SELECT sku FROM licenses WHERE org_id = ?1 AND user_id = ?2 ORDER BY sku",
            [org_id, user_id],
            |r| r.get(0),
        )
    }

    fn set_user_licenses(&mut self, org_id: &str, user_id: &str, skus: &[String]) -> Result<()> {
        self.exec("clear licenses", "DELETE FROM licenses WHERE org_id = ?1 AND user_id = ?2", [org_id, user_id])?;
        for sku in skus {
            self.exec(
                "add license",
                "INSERT INTO licenses (org_id, user_id, sku) VALUES (?1, ?2, ?3)",
                [org_id, user_id, sku],
            )?;
        }
        Ok(())
    }

    fn seats_used(&mut self, org_id: &str, sku: &str) -> Result<i64> {
        Ok(self
            .one("seats used", "SELECT COUNT(*) FROM licenses WHERE org_id = ?1 AND sku = ?2", [org_id, sku], |r| {
                r.get(0)
            })?
            .unwrap_or(0))
    }

    fn count_licensed_users(&mut self, org_id: &str, country: Option<&str>, skus: &[String]) -> Result<i64> {
        if skus.is_empty() {
            return Ok(0);
        }
        let list = skus.iter().map(|s| format!("'{}'", s.replace('\'', "''"))).collect::<Vec<_>>().join(",");
        let sql = format!(
            "SELECT COUNT(DISTINCT l.user_id) FROM licenses l JOIN users u ON u.org_id = l.org_id AND u.user_id = l.user_id \
             WHERE l.org_id = ?1 AND l.sku IN ({list}) AND (?2 IS NULL OR u.usage_location = ?2)"
        );
        Ok(self.one("count licensed users", &sql, params![org_id, country], |r| r.get(0))?.unwrap_or(0))
    }

    fn insert_number(&mut self, n: &NumberRow) -> Result<()> {
        self.exec(
            "insert number",
            "INSERT INTO numbers (org_id, number, kind, user_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![n.org_id, n.number, n.kind, n.user_id, micros(n.created_at)],
        )
        .map(drop)
    }

    fn get_number(&mut self, org_id: &str, number: &str) -> Result<Option<NumberRow>> {
        self.one(
            "get number",
            "SELECT org_id, number, kind, user_id, created_at FROM numbers WHERE org_id = ?1 AND number = ?2",
            [org_id, number],
            |r| {
                Ok(NumberRow {
                    org_id: r.get(0)?,
                    number: r.get(1)?,
                    kind: r.get(2)?,
                    user_id: r.get(3)?,
                    created_at: ts(r.get(4)?),
                })
            },
        )
    }

    fn list_numbers(&mut self, org_id: &str) -> Result<Vec<NumberRow>> {
        self.many(
            "list numbers",
            "SELECT org_id, number, kind, user_id, created_at FROM numbers WHERE org_id = ?1 ORDER BY number",
            [org_id],
            |r| {
                Ok(NumberRow {
                    org_id: r.get(0)?,
                    number: r.get(1)?,
                    kind: r.get(2)?,
                    user_id: r.get(3)?,
                    created_at: ts(r.get(4)?),
                })
            },
        )
    }

    fn insert_payment_method(&mut self, p: &PaymentMethodRow) -> Result<()> {
        self.exec(
            "insert payment method",
            &format!("INSERT INTO payment_methods ({PM_COLS}) VALUES ({})", placeholders(11)),
            params![
                p.org_id,
                p.pm_id,
                p.kind,
                p.brand,
                p.last4,
                p.exp_month,
                p.exp_year,
                p.holder,
                p.token,
                p.agreement_number,
                micros(p.created_at)
            ],
        )
        .map(drop)
    }

    fn get_payment_method(&mut self, org_id: &str, pm_id: &str) -> Result<Option<PaymentMethodRow>> {
        self.one(
            "get payment method",
            &format!("SELECT {PM_COLS} FROM payment_methods WHERE org_id = ?1 AND pm_id = ?2"),
            [org_id, pm_id],
            pm_row,
        )
    }

    fn list_payment_methods(&mut self, org_id: &str) -> Result<Vec<PaymentMethodRow>> {
        self.many(
            "list payment methods",
            &format!("SELECT {PM_COLS} FROM payment_methods WHERE org_id = ?1 ORDER BY created_at, pm_id"),
            [org_id],
            pm_row,
        )
    }

    fn insert_account(&mut self, a: &AccountRow) -> Result<()> {
        self.exec(
            "insert account",
            &format!("INSERT INTO accounts ({ACCOUNT_COLS}) VALUES ({})", placeholders(11)),
            params![
                a.org_id,
                a.currency,
                a.balance_minor,
                a.reserved_minor,
                a.ar_enabled,
                a.ar_amount_minor,
                a.ar_threshold_minor,
                a.ar_payment_method_id,
                a.ar_armed,
                a.exhausted_notified,
                a.low_balance_notified
            ],
        )
        .map(drop)
    }

    fn get_account(&mut self, org_id: &str) -> Result<Option<AccountRow>> {
        self.one(
            "get account",
            &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE org_id = ?1"),
            [org_id],
            account_row,
        )
    }

    fn update_account(&mut self, a: &AccountRow) -> Result<()> {
        self.exec(
            "update account",
            "UPDATE accounts SET balance_minor = ?2, reserved_minor = ?3, ar_enabled = ?4, ar_amount_minor = ?5, ar_threshold_minor = ?6, ar_payment_method_id = ?7, ar_armed = ?8, exhausted_notified = ?9, low_balance_notified = ?10 WHERE org_id = ?1",
            params![a.org_id, a.balance_minor, a.reserved_minor, a.ar_enabled, a.ar_amount_minor, a.ar_threshold_minor, a.ar_payment_method_id, a.ar_armed, a.exhausted_notified, a.low_balance_notified],
        )
        .map(drop)
    }

    fn insert_lot(&mut self, l: &LotRow) -> Result<()> {
        self.exec(
            "insert lot",
            &format!("INSERT INTO lots ({LOT_COLS}) VALUES ({})", placeholders(10)),
            params![
                l.org_id,
                l.lot_id,
                l.order_id,
                l.amount_minor,
                l.remaining_minor,
                l.reserved_minor,
                micros(l.purchased_at),
                micros(l.expires_at),
                l.expired,
                l.expiring_notified
            ],
        )
        .map(drop)
    }

    fn update_lot(&mut self, l: &LotRow) -> Result<()> {
        self.exec(
            "update lot",
            "UPDATE lots SET remaining_minor = ?3, reserved_minor = ?4, expired = ?5, expiring_notified = ?6 WHERE org_id = ?1 AND lot_id = ?2",
            params![l.org_id, l.lot_id, l.remaining_minor, l.reserved_minor, l.expired, l.expiring_notified],
        )
        .map(drop)
    }

    fn open_lots(&mut self, org_id: &str) -> Result<Vec<LotRow>> {
        self.many(
            "open lots",
            &format!("SELECT {LOT_COLS} FROM lots WHERE org_id = ?1 AND remaining_minor > 0"),
            [org_id],
            lot_row,
        )
    }

    fn list_lots(&mut self, org_id: &str) -> Result<Vec<LotRow>> {
        self.many(
            "list lots",
            &format!("SELECT {LOT_COLS} FROM lots WHERE org_id = ?1 ORDER BY purchased_at, lot_id"),
            [org_id],
            lot_row,
        )
    }

    fn append_ledger(&mut self, l: &LedgerRow) -> Result<()> {
        self.append_ledger_many(std::slice::from_ref(l))
    }

    fn append_ledger_many(&mut self, entries: &[LedgerRow]) -> Result<()> {
        let mut st = self
            .conn
            .prepare_cached(
                "INSERT INTO ledger (org_id, entry_id, kind, amount_minor, balance_after_minor, lot_id, call_id, order_id, at, memo) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(e("append ledger"))?;
        for l in entries {
            st.execute(params![
                l.org_id,
                l.entry_id,
                l.kind,
                l.amount_minor,
                l.balance_after_minor,
                l.lot_id,
                l.call_id,
                l.order_id,
                micros(l.at),
                l.memo
            ])
            .map_err(e("append ledger"))?;
        }
        Ok(())
    }

    fn list_ledger(&mut self, org_id: &str, after_seq: i64, limit: usize) -> Result<Vec<LedgerRow>> {
        self.many(
            "list ledger",
            &format!("SELECT {LEDGER_COLS} FROM ledger WHERE org_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"),
            params![org_id, after_seq, limit as i64],
            ledger_row,
        )
    }

    fn ledger_totals(&mut self, org_id: &str) -> Result<Vec<(String, i64)>> {
        self.many(
            "ledger totals",
            "SELECT kind, SUM(amount_minor) FROM ledger WHERE org_id = ?1 GROUP BY kind ORDER BY kind",
            [org_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn insert_order(&mut self, o: &OrderRow) -> Result<()> {
        self.exec(
            "insert order",
            &format!("INSERT INTO orders ({ORDER_COLS}) VALUES ({})", placeholders(12)),
            params![
                o.org_id,
                o.order_id,
                o.kind,
                o.amount_minor,
                o.currency,
                o.payment_method_id,
                o.po_number,
                o.status,
                o.failure_reason,
                o.lot_id,
                micros(o.created_at),
                o.completed_at.map(micros)
            ],
        )
        .map(drop)
    }

    fn update_order(&mut self, o: &OrderRow) -> Result<()> {
        self.exec(
            "update order",
            "UPDATE orders SET status = ?3, failure_reason = ?4, lot_id = ?5, completed_at = ?6 WHERE org_id = ?1 AND order_id = ?2",
            params![o.org_id, o.order_id, o.status, o.failure_reason, o.lot_id, o.completed_at.map(micros)],
        )
        .map(drop)
    }

    fn get_order(&mut self, org_id: &str, order_id: &str) -> Result<Option<OrderRow>> {
        self.one(
            "get order",
            &format!("SELECT {ORDER_COLS} FROM orders WHERE org_id = ?1 AND order_id = ?2"),
            [org_id, order_id],
            order_row,
        )
    }

    fn list_orders(&mut self, org_id: &str) -> Result<Vec<OrderRow>> {
        self.many(
            "list orders",
            &format!("SELECT {ORDER_COLS} FROM orders WHERE org_id = ?1 ORDER BY created_at, order_id"),
            [org_id],
            order_row,
        )
    }

    fn get_pool_usage(&mut self, org_id: &str, month: i32, scope: &str, kind: &str) -> Result<Option<PoolUsageRow>> {
        self.one(
            "get pool",
            &format!(
                "SELECT {POOL_COLS} FROM pool_usage WHERE org_id = ?1 AND month = ?2 AND scope = ?3 AND kind = ?4"
            ),
            params![org_id, month, scope, kind],
            pool_row,
        )
    }

    fn put_pool_usage(&mut self, p: &PoolUsageRow) -> Result<()> {
        self.exec(
            "put pool",
            &format!(
                "INSERT INTO pool_usage ({POOL_COLS}) VALUES ({}) ON CONFLICT (org_id, month, scope, kind) DO UPDATE SET \
                 used_minutes = excluded.used_minutes, reserved_minutes = excluded.reserved_minutes, \
                 notified_80 = excluded.notified_80, notified_100 = excluded.notified_100",
                placeholders(8)
            ),
            params![p.org_id, p.scope, p.kind, p.month, p.used_minutes, p.reserved_minutes, p.notified_80, p.notified_100],
        )
        .map(drop)
    }

    fn list_pool_usage(&mut self, org_id: &str, month: i32) -> Result<Vec<PoolUsageRow>> {
        self.many(
            "list pools",
            &format!("SELECT {POOL_COLS} FROM pool_usage WHERE org_id = ?1 AND month = ?2 ORDER BY scope, kind"),
            params![org_id, month],
            pool_row,
        )
    }

    fn get_user_spend(&mut self, org_id: &str, user_id: &str, month: i32) -> Result<Option<UserSpendRow>> {
        self.one(
            "get user spend",
            "SELECT org_id, user_id, month, spent_minor, reserved_minor FROM user_spend WHERE org_id = ?1 AND user_id = ?2 AND month = ?3",
            params![org_id, user_id, month],
            |r| Ok(UserSpendRow { org_id: r.get(0)?, user_id: r.get(1)?, month: r.get(2)?, spent_minor: r.get(3)?, reserved_minor: r.get(4)? }),
        )
    }

    fn put_user_spend(&mut self, s: &UserSpendRow) -> Result<()> {
        self.exec(
            "put user spend",
            "INSERT INTO user_spend (org_id, user_id, month, spent_minor, reserved_minor) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (org_id, user_id, month) DO UPDATE SET spent_minor = excluded.spent_minor, reserved_minor = excluded.reserved_minor",
            params![s.org_id, s.user_id, s.month, s.spent_minor, s.reserved_minor],
        )
        .map(drop)
    }

    fn insert_reservation(&mut self, r: &ReservationRow) -> Result<()> {
        self.insert_reservations(std::slice::from_ref(r))
    }

    fn insert_reservations(&mut self, rows: &[ReservationRow]) -> Result<()> {
        let sql = format!("INSERT INTO reservations ({RES_COLS}) VALUES ({})", placeholders(27));
        let mut st = self.conn.prepare_cached(&sql).map_err(e("insert reservation"))?;
        for r in rows {
            st.execute(params![
                r.org_id,
                r.call_id,
                r.call_type,
                r.user_id,
                r.from_number,
                r.to_number,
                r.state,
                micros(r.created_at),
                micros(r.updated_at),
                micros(r.expires_at),
                r.granted_seconds,
                r.used_seconds,
                r.plan_scope,
                r.plan_kind,
                r.plan_month,
                r.plan_minutes,
                r.money_minor,
                r.earmarks,
                r.spend_month,
                r.rate_prefix,
                r.rate_name,
                r.rate_per_minute,
                r.connection_fee_minor,
                r.increment_seconds,
                r.domestic,
                r.dest_country,
                r.emergency
            ])
            .map_err(e("insert reservation"))?;
        }
        Ok(())
    }

    fn update_reservation(&mut self, r: &ReservationRow) -> Result<()> {
        self.exec(
            "update reservation",
            "UPDATE reservations SET state = ?3, updated_at = ?4, expires_at = ?5, granted_seconds = ?6, used_seconds = ?7, \
             plan_minutes = ?8, money_minor = ?9, earmarks = ?10 WHERE org_id = ?1 AND call_id = ?2",
            params![r.org_id, r.call_id, r.state, micros(r.updated_at), micros(r.expires_at), r.granted_seconds, r.used_seconds, r.plan_minutes, r.money_minor, r.earmarks],
        )
        .map(drop)
    }

    fn get_reservation(&mut self, org_id: &str, call_id: &str) -> Result<Option<ReservationRow>> {
        self.one(
            "get reservation",
            &format!("SELECT {RES_COLS} FROM reservations WHERE org_id = ?1 AND call_id = ?2"),
            [org_id, call_id],
            res_row,
        )
    }

    fn reserved_call_ids(&mut self, org_id: &str, call_ids: &[&str]) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for chunk in call_ids.chunks(RESERVED_IDS_PER_STATEMENT) {
            let sql = format!(
                "SELECT call_id FROM reservations WHERE org_id = ?1 AND call_id IN ({})",
                (2..chunk.len() + 2).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
            );
            let params = std::iter::once(&org_id).chain(chunk);
            found.extend(self.many("reserved call ids", &sql, rusqlite::params_from_iter(params), |r| r.get(0))?);
        }
        Ok(found)
    }

    fn count_pending_reservations(&mut self, org_id: &str) -> Result<i64> {
        Ok(self
            .one(
                "count pending",
                "SELECT COUNT(*) FROM reservations WHERE org_id = ?1 AND state = 'pending'",
                [org_id],
                |r| r.get(0),
            )?
            .unwrap_or(0))
    }

    fn pending_reservations(&mut self, org_id: &str) -> Result<Vec<ReservationRow>> {
        self.many(
            "pending reservations",
            &format!("SELECT {RES_COLS} FROM reservations WHERE org_id = ?1 AND state = 'pending' ORDER BY created_at, call_id"),
            [org_id],
            res_row,
        )
    }

    fn insert_cdr(&mut self, c: &CdrRow) -> Result<()> {
        self.insert_cdrs(std::slice::from_ref(c))
    }

    fn insert_cdrs(&mut self, rows: &[CdrRow]) -> Result<()> {
        let sql = format!("INSERT INTO cdrs ({CDR_COLS}) VALUES ({})", placeholders(23));
        let mut st = self.conn.prepare_cached(&sql).map_err(e("insert cdr"))?;
        for c in rows {
            st.execute(params![
                c.org_id,
                c.call_id,
                c.usage_id,
                c.call_type,
                c.user_id,
                c.from_number,
                c.to_number,
                c.dest_country,
                c.domestic,
                micros(c.start_at),
                micros(c.end_at),
                c.duration_seconds,
                c.charged_seconds,
                c.overrun_seconds,
                c.plan_minutes,
                c.plan_kind,
                c.charge_minor,
                c.connection_fee_minor,
                c.currency,
                c.funding,
                c.rate_name,
                c.rate_per_minute,
                c.source
            ])
            .map_err(e("insert cdr"))?;
        }
        Ok(())
    }

    fn get_cdr(&mut self, org_id: &str, call_id: &str) -> Result<Option<CdrRow>> {
        self.one(
            "get cdr",
            &format!("SELECT {CDR_COLS} FROM cdrs WHERE org_id = ?1 AND call_id = ?2"),
            [org_id, call_id],
            cdr_row,
        )
    }

    fn list_cdrs(&mut self, org_id: &str, from: Timestamp, to: Timestamp) -> Result<Vec<CdrRow>> {
        self.many(
            "list cdrs",
            &format!("SELECT {CDR_COLS} FROM cdrs WHERE org_id = ?1 AND start_at >= ?2 AND start_at < ?3 ORDER BY start_at, call_id"),
            params![org_id, micros(from), micros(to)],
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
        let sql = format!("SELECT {CDR_COLS} FROM cdrs WHERE org_id = ?1 AND start_at >= ?2 AND start_at < ?3 ORDER BY start_at, call_id");
        let mut st = self.conn.prepare_cached(&sql).map_err(e("scan cdrs"))?;
        let mut rows = st.query(params![org_id, micros(from), micros(to)]).map_err(e("scan cdrs"))?;
        // One row, refilled in place: its strings keep their buffers, so a scan of a
        // million calls allocates next to nothing.
        let mut row: Option<CdrRow> = None;
        while let Some(r) = rows.next().map_err(e("scan cdrs"))? {
            match row.as_mut() {
                Some(c) => refill_cdr_row(r, c).map_err(e("scan cdrs"))?,
                None => row = Some(cdr_row(r).map_err(e("scan cdrs"))?),
            }
            f(row.as_mut().expect("filled"))?;
        }
        Ok(())
    }

    fn insert_denial(&mut self, d: &DenialRow) -> Result<()> {
        self.exec(
            "insert denial",
            "INSERT INTO denials (org_id, at, call_id, call_type, user_id, to_number, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![d.org_id, micros(d.at), d.call_id, d.call_type, d.user_id, d.to_number, d.reason],
        )
        .map(drop)
    }

    fn list_denials(&mut self, org_id: &str) -> Result<Vec<DenialRow>> {
        self.many(
            "list denials",
            "SELECT seq, org_id, at, call_id, call_type, user_id, to_number, reason FROM denials WHERE org_id = ?1 ORDER BY seq",
            [org_id],
            |r| {
                Ok(DenialRow {
                    seq: r.get(0)?,
                    org_id: r.get(1)?,
                    at: ts(r.get(2)?),
                    call_id: r.get(3)?,
                    call_type: r.get(4)?,
                    user_id: r.get(5)?,
                    to_number: r.get(6)?,
                    reason: r.get(7)?,
                })
            },
        )
    }

    fn insert_notice(&mut self, n: &NoticeRow) -> Result<()> {
        self.exec(
            "insert notice",
            "INSERT INTO notices (org_id, notice_id, kind, created_at, subject, body, data, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![n.org_id, n.notice_id, n.kind, micros(n.created_at), n.subject, n.body, n.data, n.status],
        )
        .map(drop)
    }

    fn list_notices(&mut self, org_id: &str) -> Result<Vec<NoticeRow>> {
        self.many(
            "list notices",
            "SELECT seq, org_id, notice_id, kind, created_at, subject, body, data, status FROM notices WHERE org_id = ?1 ORDER BY seq",
            [org_id],
            |r| {
                Ok(NoticeRow {
                    seq: r.get(0)?,
                    org_id: r.get(1)?,
                    notice_id: r.get(2)?,
                    kind: r.get(3)?,
                    created_at: ts(r.get(4)?),
                    subject: r.get(5)?,
                    body: r.get(6)?,
                    data: r.get(7)?,
                    status: r.get(8)?,
                })
            },
        )
    }

    fn due_lots(&mut self, now: Timestamp, limit: usize) -> Result<Vec<(String, String)>> {
        self.many(
            "due lots",
            "SELECT org_id, lot_id FROM lots WHERE expired = 0 AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2",
            params![micros(now), limit as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn lots_expiring_before(&mut self, before: Timestamp, limit: usize) -> Result<Vec<(String, String)>> {
        self.many(
            "expiring lots",
            "SELECT org_id, lot_id FROM lots WHERE expired = 0 AND expiring_notified = 0 AND remaining_minor > 0 AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2",
            params![micros(before), limit as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn due_reservations(&mut self, now: Timestamp, limit: usize) -> Result<Vec<(String, String)>> {
        self.many(
            "due reservations",
            "SELECT org_id, call_id FROM reservations WHERE state = 'pending' AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2",
            params![micros(now), limit as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn pending_orders(&mut self, limit: usize) -> Result<Vec<(String, String)>> {
        self.many(
            "pending orders",
            "SELECT org_id, order_id FROM orders WHERE status = 'pending' ORDER BY created_at LIMIT ?1",
            params![limit as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn insert_api_key(&mut self, k: &ApiKeyRow) -> Result<()> {
        self.exec(
            "insert api key",
            "INSERT INTO api_keys (org_id, key_id, role, name, secret_hash, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![k.org_id, k.key_id, k.role, k.name, k.secret_hash, micros(k.created_at), k.revoked_at.map(micros)],
        )
        .map(drop)
    }

    fn find_api_key(&mut self, secret_hash: &str) -> Result<Option<ApiKeyRow>> {
        self.one(
            "find api key",
            "SELECT org_id, key_id, role, name, secret_hash, created_at, revoked_at FROM api_keys WHERE secret_hash = ?1",
            [secret_hash],
            api_key_row,
        )
    }

    fn list_api_keys(&mut self, org_id: &str) -> Result<Vec<ApiKeyRow>> {
        self.many(
            "list api keys",
            "SELECT org_id, key_id, role, name, secret_hash, created_at, revoked_at FROM api_keys WHERE org_id = ?1 ORDER BY created_at, key_id",
            [org_id],
            api_key_row,
        )
    }

    fn revoke_api_key(&mut self, org_id: &str, key_id: &str, at: Timestamp) -> Result<bool> {
        Ok(self.exec(
            "revoke api key",
            "UPDATE api_keys SET revoked_at = ?3 WHERE org_id = ?1 AND key_id = ?2 AND revoked_at IS NULL",
            params![org_id, key_id, micros(at)],
        )? == 1)
    }

    fn get_idempotency(&mut self, org_id: &str, key: &str) -> Result<Option<IdempotencyRow>> {
        self.one(
            "get idempotency",
            "SELECT org_id, idem_key, fingerprint, status, body, created_at, expires_at, call_id FROM idempotency \
             WHERE org_id = ?1 AND idem_key = ?2",
            [org_id, key],
            |r| {
                Ok(IdempotencyRow {
                    org_id: r.get(0)?,
                    key: r.get(1)?,
                    fingerprint: r.get(2)?,
                    status: r.get(3)?,
                    body: r.get(4)?,
                    created_at: ts(r.get(5)?),
                    expires_at: ts(r.get(6)?),
                    call_id: r.get(7)?,
                })
            },
        )
    }

    fn put_idempotency(&mut self, i: &IdempotencyRow) -> Result<()> {
        self.exec(
            "put idempotency",
            "INSERT INTO idempotency (org_id, idem_key, fingerprint, status, body, created_at, expires_at, call_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (org_id, idem_key) DO UPDATE SET fingerprint = excluded.fingerprint, status = excluded.status, \
             body = excluded.body, created_at = excluded.created_at, expires_at = excluded.expires_at, \
             call_id = excluded.call_id",
            params![i.org_id, i.key, i.fingerprint, i.status, i.body, micros(i.created_at), micros(i.expires_at), i.call_id],
        )
        .map(drop)
    }

    fn take_idempotency(&mut self, i: &IdempotencyRow, now: Timestamp) -> Result<bool> {
        Ok(self.exec(
            "take idempotency key",
            "INSERT INTO idempotency (org_id, idem_key, fingerprint, status, body, created_at, expires_at, call_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (org_id, idem_key) DO UPDATE SET fingerprint = excluded.fingerprint, status = excluded.status, \
             body = excluded.body, created_at = excluded.created_at, expires_at = excluded.expires_at, \
             call_id = excluded.call_id \
             WHERE idempotency.expires_at <= ?9",
            params![
                i.org_id,
                i.key,
                i.fingerprint,
                i.status,
                i.body,
                micros(i.created_at),
                micros(i.expires_at),
                i.call_id,
                micros(now)
            ],
        )? == 1)
    }

    fn replace_claim(&mut self, i: &IdempotencyRow, claim: &str) -> Result<bool> {
        Ok(self.exec(
            "replace idempotency claim",
            "UPDATE idempotency SET fingerprint = ?3, status = ?4, body = ?5, created_at = ?6, expires_at = ?7, \
             call_id = ?8 WHERE org_id = ?1 AND idem_key = ?2 AND status = 0 AND body = ?9",
            params![
                i.org_id,
                i.key,
                i.fingerprint,
                i.status,
                i.body,
                micros(i.created_at),
                micros(i.expires_at),
                i.call_id,
                claim
            ],
        )? == 1)
    }

    fn delete_idempotency(&mut self, org_id: &str, key: &str) -> Result<()> {
        self.exec("delete idempotency", "DELETE FROM idempotency WHERE org_id = ?1 AND idem_key = ?2", [org_id, key])
            .map(drop)
    }

    fn delete_call_idempotency(&mut self, org_id: &str, call_id: &str) -> Result<usize> {
        self.exec(
            "delete call idempotency",
            "DELETE FROM idempotency WHERE org_id = ?1 AND call_id = ?2",
            [org_id, call_id],
        )
    }

    fn delete_expired_idempotency(&mut self, now: Timestamp, limit: usize) -> Result<usize> {
        self.exec(
            "delete expired idempotency",
            "DELETE FROM idempotency WHERE rowid IN \
             (SELECT rowid FROM idempotency WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)",
            params![micros(now), limit as i64],
        )
    }

    fn count_open_reservations_all(&mut self) -> Result<i64> {
        Ok(self
            .one("count open reservations", "SELECT COUNT(*) FROM reservations WHERE state = 'pending'", [], |r| {
                r.get(0)
            })?
            .unwrap_or(0))
    }

    fn count_pending_notices_all(&mut self) -> Result<i64> {
        Ok(self
            .one("count pending notices", "SELECT COUNT(*) FROM notices WHERE status = 'pending'", [], |r| r.get(0))?
            .unwrap_or(0))
    }

    fn get_notice(&mut self, org_id: &str, notice_id: &str) -> Result<Option<NoticeRow>> {
        self.one(
            "get notice",
            "SELECT seq, org_id, notice_id, kind, created_at, subject, body, data, status FROM notices WHERE org_id = ?1 AND notice_id = ?2",
            [org_id, notice_id],
            notice_row,
        )
    }

    fn set_notice_status(&mut self, org_id: &str, notice_id: &str, status: &str) -> Result<()> {
        self.exec(
            "set notice status",
            "UPDATE notices SET status = ?3 WHERE org_id = ?1 AND notice_id = ?2",
            [org_id, notice_id, status],
        )
        .map(drop)
    }

    fn insert_webhook(&mut self, w: &WebhookRow) -> Result<()> {
        self.exec(
            "insert webhook",
            "INSERT INTO webhooks (org_id, webhook_id, url, secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![w.org_id, w.webhook_id, w.url, w.secret, micros(w.created_at)],
        )
        .map(drop)
    }

    fn get_webhook(&mut self, org_id: &str, webhook_id: &str) -> Result<Option<WebhookRow>> {
        self.one(
            "get webhook",
            "SELECT org_id, webhook_id, url, secret, created_at FROM webhooks WHERE org_id = ?1 AND webhook_id = ?2",
            [org_id, webhook_id],
            webhook_row,
        )
    }

    fn list_webhooks(&mut self, org_id: &str) -> Result<Vec<WebhookRow>> {
        self.many(
            "list webhooks",
            "SELECT org_id, webhook_id, url, secret, created_at FROM webhooks WHERE org_id = ?1 ORDER BY created_at, webhook_id",
            [org_id],
            webhook_row,
        )
    }

    fn delete_webhook(&mut self, org_id: &str, webhook_id: &str) -> Result<bool> {
        Ok(self.exec(
            "delete webhook",
            "DELETE FROM webhooks WHERE org_id = ?1 AND webhook_id = ?2",
            [org_id, webhook_id],
        )? == 1)
    }

    fn insert_delivery(&mut self, d: &DeliveryRow) -> Result<()> {
        self.exec(
            "insert delivery",
            &format!("INSERT INTO deliveries ({DELIVERY_COLS}) VALUES ({})", placeholders(11)),
            params![
                d.org_id,
                d.delivery_id,
                d.notice_id,
                d.channel,
                d.target,
                d.status,
                d.attempts,
                micros(d.next_attempt_at),
                d.last_error,
                d.sent_at.map(micros),
                micros(d.created_at)
            ],
        )
        .map(drop)
    }

    fn update_delivery(&mut self, d: &DeliveryRow) -> Result<()> {
        self.exec(
            "update delivery",
            "UPDATE deliveries SET status = ?3, attempts = ?4, next_attempt_at = ?5, last_error = ?6, sent_at = ?7 WHERE org_id = ?1 AND delivery_id = ?2",
            params![d.org_id, d.delivery_id, d.status, d.attempts, micros(d.next_attempt_at), d.last_error, d.sent_at.map(micros)],
        )
        .map(drop)
    }

    fn get_delivery(&mut self, org_id: &str, delivery_id: &str) -> Result<Option<DeliveryRow>> {
        self.one(
            "get delivery",
            &format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE org_id = ?1 AND delivery_id = ?2"),
            [org_id, delivery_id],
            delivery_row,
        )
    }

    fn list_deliveries(&mut self, org_id: &str) -> Result<Vec<DeliveryRow>> {
        self.many(
            "list deliveries",
            &format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE org_id = ?1 ORDER BY created_at, delivery_id"),
            [org_id],
            delivery_row,
        )
    }

    fn notice_deliveries(&mut self, org_id: &str, notice_id: &str) -> Result<Vec<DeliveryRow>> {
        self.many(
            "notice deliveries",
            &format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE org_id = ?1 AND notice_id = ?2 ORDER BY created_at, delivery_id"),
            [org_id, notice_id],
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
             FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ?1 AND (?3 IS NULL OR channel = ?3)) \
             WHERE n <= ?4 ORDER BY next_attempt_at, delivery_id LIMIT ?2",
            params![micros(now), limit as i64, channel, per_org as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn count_failed_deliveries_all(&mut self) -> Result<i64> {
        Ok(self
            .one("count failed deliveries", "SELECT COUNT(*) FROM deliveries WHERE status = 'failed'", [], |r| {
                r.get(0)
            })?
            .unwrap_or(0))
    }

    fn put_rate_deck(&mut self, d: &RateDeckRow) -> Result<()> {
        self.exec(
            "put rate deck",
            "INSERT INTO rate_decks (kind, currency, csv, entries, imported_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (kind, currency) DO UPDATE SET csv = excluded.csv, entries = excluded.entries, imported_at = excluded.imported_at",
            params![d.kind, d.currency, d.csv, d.entries, micros(d.imported_at)],
        )
        .map(drop)
    }

    fn list_rate_decks(&mut self) -> Result<Vec<RateDeckRow>> {
        self.many(
            "list rate decks",
            "SELECT kind, currency, csv, entries, imported_at FROM rate_decks ORDER BY kind, currency",
            [],
            |r| {
                Ok(RateDeckRow {
                    kind: r.get(0)?,
                    currency: r.get(1)?,
                    csv: r.get(2)?,
                    entries: r.get(3)?,
                    imported_at: ts(r.get(4)?),
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(org_id: &str, call_id: &str, start: &str) -> CdrRow {
        let start_at: Timestamp = start.parse().unwrap();
        CdrRow {
            org_id: org_id.into(),
            call_id: call_id.into(),
            usage_id: format!("usage-{call_id}"),
            call_type: "outbound".into(),
            user_id: (call_id != "tf").then(|| "u1".into()),
            from_number: "+442079460000".into(),
            to_number: "+14155550100".into(),
            dest_country: Some("US".into()),
            domestic: false,
            start_at,
            end_at: start_at + jiff::SignedDuration::from_secs(61),
            duration_seconds: 61,
            charged_seconds: 66,
            overrun_seconds: 0,
            plan_minutes: 0,
            plan_kind: None,
            charge_minor: 2,
            connection_fee_minor: 0,
            currency: "USD".into(),
            funding: "credits".into(),
            rate_name: Some("United States".into()),
            rate_per_minute: Some("0.0100".into()),
            source: "import".into(),
        }
    }

    /// Migration 5 rewrites the calls table clustered by time: a database made before it
    /// keeps every call, whole, in report order, and a call id stays unique.
    #[test]
    fn clustering_the_calls_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("before.db").to_string_lossy().into_owned();
        let calls = [
            call("o1", "c2", "2026-03-01T10:00:00Z"),
            call("o2", "c1", "2026-03-01T09:00:00Z"),
            call("o1", "c1", "2026-03-01T10:00:00Z"),
            call("o1", "tf", "2026-03-01T08:00:00Z"),
        ];
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
            )
            .unwrap();
            for (version, sql) in &MIGRATIONS[..4] {
                conn.execute_batch(sql).unwrap();
                conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)", [version]).unwrap();
            }
            SqliteTx { conn: &conn, depth: 0 }.insert_cdrs(&calls).unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let mut scanned = Vec::new();
        let mut got = None;
        store
            .read(&mut |tx| {
                let (from, to) = ("2026-03-01T00:00:00Z".parse().unwrap(), "2026-03-02T00:00:00Z".parse().unwrap());
                tx.for_each_cdr("o1", from, to, &mut |c| {
                    scanned.push(c.clone());
                    Ok(())
                })?;
                got = tx.get_cdr("o2", "c1")?;
                Ok(())
            })
            .unwrap();
        assert_eq!(scanned, vec![calls[3].clone(), calls[2].clone(), calls[0].clone()]);
        assert_eq!(got, Some(calls[1].clone()));
        let again = CdrRow { start_at: "2026-03-01T11:00:00Z".parse().unwrap(), ..calls[0].clone() };
        assert!(store.write(&mut |tx| tx.insert_cdr(&again)).is_err(), "a call id is unique per organization");
        let version: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.last().unwrap().0);
    }

    /// The migration that gives idempotency records an end gives the records kept
    /// before it one too: a claim left by a crash lapses after the lease, an answer
    /// after the time to live. The sweep and a call's end find records by index.
    #[test]
    fn records_kept_before_expiry_existed_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("before.db").to_string_lossy().into_owned();
        let expiry = MIGRATIONS.iter().position(|(_, sql)| sql.contains("idempotency_expiry")).unwrap();
        let created = micros("2026-03-01T10:00:00Z".parse().unwrap());
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
            )
            .unwrap();
            for (version, sql) in &MIGRATIONS[..expiry] {
                conn.execute_batch(sql).unwrap();
                conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)", [version]).unwrap();
            }
            for (key, status) in [("crashed-upload", 0), ("answered", 201)] {
                conn.execute(
                    "INSERT INTO idempotency (org_id, idem_key, fingerprint, status, body, created_at) \
                     VALUES ('o1', ?1, 'f', ?2, 'null', ?3)",
                    params![key, status, created],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        let mut rows = Vec::new();
        store
            .read(&mut |tx| {
                rows = vec![tx.get_idempotency("o1", "crashed-upload")?, tx.get_idempotency("o1", "answered")?];
                Ok(())
            })
            .unwrap();
        let expires: Vec<i64> = rows.iter().map(|r| micros(r.as_ref().unwrap().expires_at)).collect();
        assert_eq!(expires, vec![created + 120_000_000, created + 86_400_000_000]);
        let conn = store.writer.lock().unwrap();
        let plan = |sql: &str| -> String {
            let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = st.query_map([], |r| r.get::<_, String>(3)).unwrap();
            rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
        };
        let sweep = plan("SELECT rowid FROM idempotency WHERE expires_at <= 5 ORDER BY expires_at LIMIT 10");
        assert!(sweep.contains("idempotency_expiry"), "{sweep}");
        let call = plan("DELETE FROM idempotency WHERE org_id = 'o1' AND call_id = 'c1'");
        assert!(call.contains("idempotency_calls"), "{call}");
    }

    /// The lookups of calls in progress use the indexes of calls in progress (settled
    /// calls, nearly every row, are in neither).
    #[test]
    fn calls_in_progress_are_found_through_their_own_indexes() {
        let store = SqliteStore::open("sqlite::memory:").unwrap();
        let conn = store.writer.lock().unwrap();
        let plan = |sql: &str| -> String {
            let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = st.query_map([], |r| r.get::<_, String>(3)).unwrap();
            rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
        };
        let due = plan("SELECT org_id, call_id FROM reservations WHERE state = 'pending' AND expires_at <= 5 ORDER BY expires_at LIMIT 10");
        assert!(due.contains("reservations_due"), "{due}");
        let open = plan(&format!(
            "SELECT {RES_COLS} FROM reservations WHERE org_id = 'o1' AND state = 'pending' ORDER BY created_at, call_id"
        ));
        assert!(open.contains("reservations_pending") && !open.contains("TEMP B-TREE"), "{open}");
        let count = plan("SELECT COUNT(*) FROM reservations WHERE org_id = 'o1' AND state = 'pending'");
        assert!(count.contains("reservations_pending"), "{count}");
    }
}
