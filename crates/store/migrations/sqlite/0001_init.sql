-- Every table is keyed by organization first, so every transaction stays inside one
-- organization (the shape a distributed SQL engine can shard on org_id).
-- Times are integer microseconds since the Unix epoch (UTC); money is integer minor units.

CREATE TABLE orgs (
    org_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    currency TEXT NOT NULL,
    country TEXT NOT NULL,
    notification_emails TEXT NOT NULL,          -- newline-separated
    low_balance_minor INTEGER,
    suspended INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE users (
    org_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    upn TEXT NOT NULL,
    display_name TEXT NOT NULL,
    usage_location TEXT NOT NULL,
    phone_number TEXT,
    dial_out TEXT NOT NULL,
    conference_dial_out TEXT NOT NULL,
    spend_limit_minor INTEGER,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, user_id)
);
CREATE UNIQUE INDEX users_upn ON users (org_id, upn);

CREATE TABLE subscriptions (
    org_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    PRIMARY KEY (org_id, sku)
);

CREATE TABLE licenses (
    org_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    PRIMARY KEY (org_id, user_id, sku)
);
CREATE INDEX licenses_sku ON licenses (org_id, sku);

CREATE TABLE numbers (
    org_id TEXT NOT NULL,
    number TEXT NOT NULL,
    kind TEXT NOT NULL,
    user_id TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, number)
);

CREATE TABLE payment_methods (
    org_id TEXT NOT NULL,
    pm_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    brand TEXT,
    last4 TEXT,
    exp_month INTEGER,
    exp_year INTEGER,
    holder TEXT,
    token TEXT,
    agreement_number TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, pm_id)
);

CREATE TABLE accounts (
    org_id TEXT PRIMARY KEY,
    currency TEXT NOT NULL,
    balance_minor INTEGER NOT NULL,
    reserved_minor INTEGER NOT NULL,
    ar_enabled INTEGER NOT NULL,
    ar_amount_minor INTEGER NOT NULL,
    ar_threshold_minor INTEGER NOT NULL,
    ar_payment_method_id TEXT,
    ar_armed INTEGER NOT NULL,
    exhausted_notified INTEGER NOT NULL,
    low_balance_notified INTEGER NOT NULL,
    CHECK (reserved_minor >= 0 AND balance_minor >= reserved_minor)
);

CREATE TABLE lots (
    org_id TEXT NOT NULL,
    lot_id TEXT NOT NULL,
    order_id TEXT,
    amount_minor INTEGER NOT NULL,
    remaining_minor INTEGER NOT NULL,
    reserved_minor INTEGER NOT NULL,
    purchased_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    expired INTEGER NOT NULL,
    expiring_notified INTEGER NOT NULL,
    PRIMARY KEY (org_id, lot_id),
    CHECK (reserved_minor >= 0 AND remaining_minor >= reserved_minor AND amount_minor >= remaining_minor)
);
CREATE INDEX lots_open ON lots (expired, expires_at);

CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    balance_after_minor INTEGER NOT NULL,
    lot_id TEXT,
    call_id TEXT,
    order_id TEXT,
    at INTEGER NOT NULL,
    memo TEXT NOT NULL
);
CREATE INDEX ledger_org ON ledger (org_id, seq);
-- The ledger is append-only: the database refuses changes to written entries.
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;

CREATE TABLE orders (
    org_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    payment_method_id TEXT NOT NULL,
    po_number TEXT,
    status TEXT NOT NULL,
    failure_reason TEXT,
    lot_id TEXT,
    created_at INTEGER NOT NULL,
    completed_at INTEGER,
    PRIMARY KEY (org_id, order_id)
);
CREATE INDEX orders_pending ON orders (status, created_at);

CREATE TABLE pool_usage (
    org_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    kind TEXT NOT NULL,
    month INTEGER NOT NULL,
    used_minutes INTEGER NOT NULL,
    reserved_minutes INTEGER NOT NULL,
    notified_80 INTEGER NOT NULL,
    notified_100 INTEGER NOT NULL,
    PRIMARY KEY (org_id, month, scope, kind)
);

CREATE TABLE user_spend (
    org_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    month INTEGER NOT NULL,
    spent_minor INTEGER NOT NULL,
    reserved_minor INTEGER NOT NULL,
    PRIMARY KEY (org_id, user_id, month)
);

CREATE TABLE reservations (
    org_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    call_type TEXT NOT NULL,
    user_id TEXT,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    granted_seconds INTEGER NOT NULL,
    used_seconds INTEGER NOT NULL,
    plan_scope TEXT,
    plan_kind TEXT,
    plan_month INTEGER,
    plan_minutes INTEGER NOT NULL,
    money_minor INTEGER NOT NULL,
    earmarks TEXT NOT NULL,
    spend_month INTEGER NOT NULL,
    rate_prefix TEXT,
    rate_name TEXT,
    rate_per_minute TEXT,
    connection_fee_minor INTEGER NOT NULL,
    increment_seconds INTEGER NOT NULL,
    domestic INTEGER NOT NULL,
    dest_country TEXT,
    emergency INTEGER NOT NULL,
    PRIMARY KEY (org_id, call_id)
);
CREATE INDEX reservations_due ON reservations (state, expires_at);

CREATE TABLE cdrs (
    org_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    usage_id TEXT NOT NULL,
    call_type TEXT NOT NULL,
    user_id TEXT,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    dest_country TEXT,
    domestic INTEGER NOT NULL,
    start_at INTEGER NOT NULL,
    end_at INTEGER NOT NULL,
    duration_seconds INTEGER NOT NULL,
    charged_seconds INTEGER NOT NULL,
    overrun_seconds INTEGER NOT NULL,
    plan_minutes INTEGER NOT NULL,
    plan_kind TEXT,
    charge_minor INTEGER NOT NULL,
    connection_fee_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    funding TEXT NOT NULL,
    rate_name TEXT,
    rate_per_minute TEXT,
    source TEXT NOT NULL,
    PRIMARY KEY (org_id, call_id)
);
CREATE INDEX cdrs_time ON cdrs (org_id, start_at);

CREATE TABLE notices (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id TEXT NOT NULL,
    notice_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    data TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX notices_org ON notices (org_id, seq);

CREATE TABLE denials (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    call_id TEXT NOT NULL,
    call_type TEXT NOT NULL,
    user_id TEXT,
    to_number TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX denials_org ON denials (org_id, at);

CREATE TABLE rate_decks (
    kind TEXT NOT NULL,
    currency TEXT NOT NULL,
    csv TEXT NOT NULL,
    entries INTEGER NOT NULL,
    imported_at INTEGER NOT NULL,
    PRIMARY KEY (kind, currency)
);
