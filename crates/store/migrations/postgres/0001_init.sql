-- The PostgreSQL twin of migrations/sqlite/0001_init.sql: the same tables, columns and
-- keys, so both adapters behave the same.
-- Every table is keyed by organization first, so every transaction stays inside one
-- organization (the shape a distributed SQL engine can shard on org_id).
-- Times are BIGINT microseconds since the Unix epoch (UTC); money is BIGINT minor units;
-- flags are BOOLEAN.
-- Identifiers and everything the adapter sorts on use COLLATE "C" (byte order), which is
-- how SQLite compares text: ORDER BY gives the same order whatever the database's locale.

CREATE TABLE orgs (
    org_id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,
    currency TEXT COLLATE "C" NOT NULL,
    country TEXT COLLATE "C" NOT NULL,
    notification_emails TEXT NOT NULL,          -- newline-separated
    low_balance_minor BIGINT,
    suspended BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    org_id TEXT COLLATE "C" NOT NULL,
    user_id TEXT COLLATE "C" NOT NULL,
    upn TEXT COLLATE "C" NOT NULL,
    display_name TEXT NOT NULL,
    usage_location TEXT COLLATE "C" NOT NULL,
    phone_number TEXT COLLATE "C",
    dial_out TEXT NOT NULL,
    conference_dial_out TEXT NOT NULL,
    spend_limit_minor BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, user_id)
);
CREATE UNIQUE INDEX users_upn ON users (org_id, upn);

CREATE TABLE subscriptions (
    org_id TEXT COLLATE "C" NOT NULL,
    sku TEXT COLLATE "C" NOT NULL,
    quantity BIGINT NOT NULL,
    PRIMARY KEY (org_id, sku)
);

CREATE TABLE licenses (
    org_id TEXT COLLATE "C" NOT NULL,
    user_id TEXT COLLATE "C" NOT NULL,
    sku TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (org_id, user_id, sku)
);
CREATE INDEX licenses_sku ON licenses (org_id, sku);

CREATE TABLE numbers (
    org_id TEXT COLLATE "C" NOT NULL,
    number TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL,
    user_id TEXT COLLATE "C",
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, number)
);

CREATE TABLE payment_methods (
    org_id TEXT COLLATE "C" NOT NULL,
    pm_id TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL,
    brand TEXT,
    last4 TEXT,
    exp_month BIGINT,
    exp_year BIGINT,
    holder TEXT,
    token TEXT,
    agreement_number TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, pm_id)
);

CREATE TABLE accounts (
    org_id TEXT COLLATE "C" PRIMARY KEY,
    currency TEXT COLLATE "C" NOT NULL,
    balance_minor BIGINT NOT NULL,
    reserved_minor BIGINT NOT NULL,
    ar_enabled BOOLEAN NOT NULL,
    ar_amount_minor BIGINT NOT NULL,
    ar_threshold_minor BIGINT NOT NULL,
    ar_payment_method_id TEXT COLLATE "C",
    ar_armed BOOLEAN NOT NULL,
    exhausted_notified BOOLEAN NOT NULL,
    low_balance_notified BOOLEAN NOT NULL,
    CHECK (reserved_minor >= 0 AND balance_minor >= reserved_minor)
);

CREATE TABLE lots (
    org_id TEXT COLLATE "C" NOT NULL,
    lot_id TEXT COLLATE "C" NOT NULL,
    order_id TEXT COLLATE "C",
    amount_minor BIGINT NOT NULL,
    remaining_minor BIGINT NOT NULL,
    reserved_minor BIGINT NOT NULL,
    purchased_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    expired BOOLEAN NOT NULL,
    expiring_notified BOOLEAN NOT NULL,
    PRIMARY KEY (org_id, lot_id),
    CHECK (reserved_minor >= 0 AND remaining_minor >= reserved_minor AND amount_minor >= remaining_minor)
);
CREATE INDEX lots_open ON lots (expired, expires_at);

-- seq is assigned by the database. Unlike SQLite's AUTOINCREMENT it is not transactional:
-- a rolled-back append leaves a gap. The key is (org_id, seq), organization first.
CREATE TABLE ledger (
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    org_id TEXT COLLATE "C" NOT NULL,
    entry_id TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL,
    amount_minor BIGINT NOT NULL,
    balance_after_minor BIGINT NOT NULL,
    lot_id TEXT COLLATE "C",
    call_id TEXT COLLATE "C",
    order_id TEXT COLLATE "C",
    at BIGINT NOT NULL,
    memo TEXT NOT NULL,
    PRIMARY KEY (org_id, seq)
);
-- The ledger is append-only: the database refuses changes to written entries.
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger is append-only';
END;
$$;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

CREATE TABLE orders (
    org_id TEXT COLLATE "C" NOT NULL,
    order_id TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency TEXT COLLATE "C" NOT NULL,
    payment_method_id TEXT COLLATE "C" NOT NULL,
    po_number TEXT,
    status TEXT COLLATE "C" NOT NULL,
    failure_reason TEXT,
    lot_id TEXT COLLATE "C",
    created_at BIGINT NOT NULL,
    completed_at BIGINT,
    PRIMARY KEY (org_id, order_id)
);
CREATE INDEX orders_pending ON orders (status, created_at);

CREATE TABLE pool_usage (
    org_id TEXT COLLATE "C" NOT NULL,
    scope TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL,
    month BIGINT NOT NULL,
    used_minutes BIGINT NOT NULL,
    reserved_minutes BIGINT NOT NULL,
    notified_80 BOOLEAN NOT NULL,
    notified_100 BOOLEAN NOT NULL,
    PRIMARY KEY (org_id, month, scope, kind)
);

CREATE TABLE user_spend (
    org_id TEXT COLLATE "C" NOT NULL,
    user_id TEXT COLLATE "C" NOT NULL,
    month BIGINT NOT NULL,
    spent_minor BIGINT NOT NULL,
    reserved_minor BIGINT NOT NULL,
    PRIMARY KEY (org_id, user_id, month)
);

CREATE TABLE reservations (
    org_id TEXT COLLATE "C" NOT NULL,
    call_id TEXT COLLATE "C" NOT NULL,
    call_type TEXT COLLATE "C" NOT NULL,
    user_id TEXT COLLATE "C",
    from_number TEXT COLLATE "C" NOT NULL,
    to_number TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    granted_seconds BIGINT NOT NULL,
    used_seconds BIGINT NOT NULL,
    plan_scope TEXT COLLATE "C",
    plan_kind TEXT COLLATE "C",
    plan_month BIGINT,
    plan_minutes BIGINT NOT NULL,
    money_minor BIGINT NOT NULL,
    earmarks TEXT NOT NULL,
    spend_month BIGINT NOT NULL,
    rate_prefix TEXT COLLATE "C",
    rate_name TEXT,
    rate_per_minute TEXT,
    connection_fee_minor BIGINT NOT NULL,
    increment_seconds BIGINT NOT NULL,
    domestic BOOLEAN NOT NULL,
    dest_country TEXT COLLATE "C",
    emergency BOOLEAN NOT NULL,
    PRIMARY KEY (org_id, call_id)
);
CREATE INDEX reservations_due ON reservations (state, expires_at);

CREATE TABLE cdrs (
    org_id TEXT COLLATE "C" NOT NULL,
    call_id TEXT COLLATE "C" NOT NULL,
    usage_id TEXT COLLATE "C" NOT NULL,
    call_type TEXT COLLATE "C" NOT NULL,
    user_id TEXT COLLATE "C",
    from_number TEXT COLLATE "C" NOT NULL,
    to_number TEXT COLLATE "C" NOT NULL,
    dest_country TEXT COLLATE "C",
    domestic BOOLEAN NOT NULL,
    start_at BIGINT NOT NULL,
    end_at BIGINT NOT NULL,
    duration_seconds BIGINT NOT NULL,
    charged_seconds BIGINT NOT NULL,
    overrun_seconds BIGINT NOT NULL,
    plan_minutes BIGINT NOT NULL,
    plan_kind TEXT COLLATE "C",
    charge_minor BIGINT NOT NULL,
    connection_fee_minor BIGINT NOT NULL,
    currency TEXT COLLATE "C" NOT NULL,
    funding TEXT COLLATE "C" NOT NULL,
    rate_name TEXT,
    rate_per_minute TEXT,
    source TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (org_id, call_id)
);
CREATE INDEX cdrs_time ON cdrs (org_id, start_at);

CREATE TABLE notices (
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    org_id TEXT COLLATE "C" NOT NULL,
    notice_id TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    data TEXT NOT NULL,
    status TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (org_id, seq)
);
-- SQLite's notices_org (org_id, seq) is the primary key here. The platform-wide gauge
-- counts pending notices, as SQLite does, by a scan.

CREATE TABLE denials (
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    org_id TEXT COLLATE "C" NOT NULL,
    at BIGINT NOT NULL,
    call_id TEXT COLLATE "C" NOT NULL,
    call_type TEXT COLLATE "C" NOT NULL,
    user_id TEXT COLLATE "C",
    to_number TEXT COLLATE "C" NOT NULL,
    reason TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (org_id, seq)
);
CREATE INDEX denials_org ON denials (org_id, at);

-- Platform data (not per organization): a reference table on a sharded engine.
CREATE TABLE rate_decks (
    kind TEXT COLLATE "C" NOT NULL,
    currency TEXT COLLATE "C" NOT NULL,
    csv TEXT NOT NULL,
    entries BIGINT NOT NULL,
    imported_at BIGINT NOT NULL,
    PRIMARY KEY (kind, currency)
);
