-- API keys: only a SHA-256 hash of the secret is kept. Platform keys (operator,
-- call_control) have org_id '' so the table stays keyed by organization first.
CREATE TABLE api_keys (
    org_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    PRIMARY KEY (org_id, key_id)
);
CREATE UNIQUE INDEX api_keys_hash ON api_keys (secret_hash);

-- The first answer to a mutating request, stored in the same transaction as its effect.
CREATE TABLE idempotency (
    org_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, idem_key)
);
