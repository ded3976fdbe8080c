-- Every idempotency record ends: an answer after its time to live, a claim (status 0,
-- a request still being processed) when its lease lapses, a call-control record with
-- its call. Records kept before this had no end: they get one from their creation
-- (24 hours for answers, 2 minutes for claims, the server's figures).
ALTER TABLE idempotency ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE idempotency ADD COLUMN call_id TEXT;
UPDATE idempotency SET expires_at = created_at + CASE WHEN status = 0 THEN 120000000 ELSE 86400000000 END;
-- The sweep deletes by expiry; a call's end deletes its own records.
CREATE INDEX idempotency_expiry ON idempotency (expires_at);
CREATE INDEX idempotency_calls ON idempotency (org_id, call_id) WHERE call_id IS NOT NULL;
