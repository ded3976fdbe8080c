-- Notification settings and delivery: which notices an organization turned off,
-- webhook endpoints, and one delivery row per notice and channel (the outbox's
-- work queue, with attempts and the next try).
ALTER TABLE orgs ADD COLUMN disabled_notices TEXT NOT NULL DEFAULT '';

CREATE TABLE webhooks (
    org_id TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, webhook_id)
);

CREATE TABLE deliveries (
    org_id TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    notice_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_error TEXT,
    sent_at INTEGER,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, delivery_id)
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_notice ON deliveries (org_id, notice_id);
