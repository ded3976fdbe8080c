-- Notification settings and delivery: which notices an organization turned off,
-- webhook endpoints, and one delivery row per notice and channel (the outbox's
-- work queue, with attempts and the next try).
ALTER TABLE orgs ADD COLUMN disabled_notices TEXT NOT NULL DEFAULT '';

CREATE TABLE webhooks (
    org_id TEXT COLLATE "C" NOT NULL,
    webhook_id TEXT COLLATE "C" NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, webhook_id)
);

CREATE TABLE deliveries (
    org_id TEXT COLLATE "C" NOT NULL,
    delivery_id TEXT COLLATE "C" NOT NULL,
    notice_id TEXT COLLATE "C" NOT NULL,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT COLLATE "C" NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    sent_at BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, delivery_id)
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_notice ON deliveries (org_id, notice_id);
