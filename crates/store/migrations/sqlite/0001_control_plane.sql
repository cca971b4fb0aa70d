-- The control plane: the platform's admin credential, namespaces, API keys, audit chains and
-- idempotent-create replays.

CREATE TABLE platform (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    admin_token_hash TEXT    NOT NULL,
    created_at_ms    INTEGER NOT NULL
);

CREATE TABLE namespaces (
    name                    TEXT    PRIMARY KEY,
    isolation               TEXT    NOT NULL,
    cpu_millis              INTEGER NOT NULL CHECK (cpu_millis > 0),
    memory_bytes            INTEGER NOT NULL CHECK (memory_bytes > 0),
    disk_bytes              INTEGER NOT NULL CHECK (disk_bytes >= 0),
    max_sandboxes           INTEGER NOT NULL CHECK (max_sandboxes >= 0),
    pids_per_sandbox        INTEGER NOT NULL CHECK (pids_per_sandbox > 0),
    max_sandbox_ttl_seconds INTEGER NOT NULL CHECK (max_sandbox_ttl_seconds > 0),
    created_at_ms           INTEGER NOT NULL,
    updated_at_ms           INTEGER NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id            TEXT    PRIMARY KEY,
    namespace     TEXT    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('owner', 'admin', 'developer', 'viewer')),
    token_hash    TEXT    NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    UNIQUE (namespace, name)
) STRICT;

-- The head of each chain: the last sequence number and hash. Appends update it in the same
-- transaction as the record, so cutting records off the end of a chain is detectable.
CREATE TABLE audit_heads (
    chain     TEXT    PRIMARY KEY,
    last_seq  INTEGER NOT NULL,
    last_hash TEXT    NOT NULL
) STRICT;

CREATE TABLE audit_records (
    chain      TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    time_ms    INTEGER NOT NULL,
    principal  TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    resource   TEXT    NOT NULL,
    decision   TEXT    NOT NULL,
    status     INTEGER NOT NULL,
    request_id TEXT    NOT NULL,
    detail     TEXT    NOT NULL,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    PRIMARY KEY (chain, seq)
) STRICT;

CREATE INDEX audit_records_by_action ON audit_records (chain, action, seq);

-- Answers to creates that carried an Idempotency-Key, replayed when the same principal sends the
-- same key again. Bodies never hold a token: key creations are stored without it.
CREATE TABLE idempotency (
    scope         TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    fingerprint   TEXT    NOT NULL,
    status        INTEGER NOT NULL,
    body          TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) STRICT;
