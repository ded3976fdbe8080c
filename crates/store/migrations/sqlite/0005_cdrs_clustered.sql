-- Calls are stored in the order reports read them: the table is clustered on
-- (org_id, start_at, call_id) (WITHOUT ROWID), so a report scans it in place instead
-- of following an index entry to a table row for every call, and a new call updates
-- two B-trees instead of three. The call id stays unique per organization through
-- its own index. Rewrites the table once.
CREATE TABLE cdrs_clustered (
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
    PRIMARY KEY (org_id, start_at, call_id)
) WITHOUT ROWID;
INSERT INTO cdrs_clustered SELECT org_id, call_id, usage_id, call_type, user_id, from_number, to_number,
    dest_country, domestic, start_at, end_at, duration_seconds, charged_seconds, overrun_seconds, plan_minutes,
    plan_kind, charge_minor, connection_fee_minor, currency, funding, rate_name, rate_per_minute, source
    FROM cdrs ORDER BY org_id, start_at, call_id;
DROP TABLE cdrs;
ALTER TABLE cdrs_clustered RENAME TO cdrs;
CREATE UNIQUE INDEX cdrs_call ON cdrs (org_id, call_id);
