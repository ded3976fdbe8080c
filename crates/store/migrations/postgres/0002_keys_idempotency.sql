-- API keys: only a SHA-256 hash of the secret is kept. Platform keys (operator,
-- call_control) have org_id '' so the table stays keyed by organization first.
CREATE TABLE api_keys (
    org_id TEXT COLLATE "C" NOT NULL,
    key_id TEXT COLLATE "C" NOT NULL,
    role TEXT COLLATE "C" NOT NULL,
    name TEXT NOT NULL,
    secret_hash TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    PRIMARY KEY (org_id, key_id)
);
CREATE UNIQUE INDEX api_keys_hash ON api_keys (secret_hash);

-- The first answer to a mutating request, stored in the same transaction as its effect.
CREATE TABLE idempotency (
    org_id TEXT COLLATE "C" NOT NULL,
    idem_key TEXT COLLATE "C" NOT NULL,
    fingerprint TEXT NOT NULL,
    status BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, idem_key)
);
