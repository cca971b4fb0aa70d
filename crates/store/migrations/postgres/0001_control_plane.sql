-- The control plane: the platform's admin credential, namespaces, API keys, audit chains and
-- idempotent-create replays. PostgreSQL's dialect of the SQLite schema of the same number.
--
-- Row-level security is a second lock behind the store's own `WHERE namespace = ...`: every
-- table has it enabled and forced (its owner, who runs these migrations, is held to it too).
-- A tenant table's rows are visible only to a transaction whose `bulkhead.namespace` setting
-- names their namespace; platform-wide work sets `bulkhead.scope = 'platform'`, explicitly.
-- A transaction that sets neither sees no row and can write none.

-- Locks `t`: row-level security enabled and forced, a `tenant` policy keyed by the column
-- `col` (NULL: a platform table, no tenant policy) and a `platform` policy.
CREATE FUNCTION bulkhead_lock_table(t regclass, col text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
    IF col IS NOT NULL THEN
        EXECUTE format(
            'CREATE POLICY tenant ON %s USING (%I = current_setting(''bulkhead.namespace'', true))', t, col);
    END IF;
    EXECUTE format(
        'CREATE POLICY platform ON %s USING (current_setting(''bulkhead.scope'', true) = ''platform'')', t);
END
$$;

CREATE TABLE platform (
    id               BIGINT  PRIMARY KEY CHECK (id = 1),
    admin_token_hash TEXT COLLATE "C"    NOT NULL,
    created_at_ms    BIGINT  NOT NULL
);
SELECT bulkhead_lock_table('platform', NULL);

CREATE TABLE namespaces (
    name                    TEXT COLLATE "C"    PRIMARY KEY,
    isolation               TEXT COLLATE "C"    NOT NULL,
    cpu_millis              BIGINT  NOT NULL CHECK (cpu_millis > 0),
    memory_bytes            BIGINT  NOT NULL CHECK (memory_bytes > 0),
    disk_bytes              BIGINT  NOT NULL CHECK (disk_bytes >= 0),
    max_sandboxes           BIGINT  NOT NULL CHECK (max_sandboxes >= 0),
    pids_per_sandbox        BIGINT  NOT NULL CHECK (pids_per_sandbox > 0),
    max_sandbox_ttl_seconds BIGINT  NOT NULL CHECK (max_sandbox_ttl_seconds > 0),
    created_at_ms           BIGINT  NOT NULL,
    updated_at_ms           BIGINT  NOT NULL
);
SELECT bulkhead_lock_table('namespaces', 'name');

CREATE TABLE api_keys (
    id            TEXT COLLATE "C"    PRIMARY KEY,
    namespace     TEXT COLLATE "C"    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    name          TEXT COLLATE "C"    NOT NULL,
    role          TEXT COLLATE "C"    NOT NULL CHECK (role IN ('owner', 'admin', 'developer', 'viewer')),
    token_hash    TEXT COLLATE "C"    NOT NULL UNIQUE,
    created_at_ms BIGINT  NOT NULL,
    expires_at_ms BIGINT,
    UNIQUE (namespace, name)
);
SELECT bulkhead_lock_table('api_keys', 'namespace');

-- The head of each chain: the last sequence number and hash. Appends update it in the same
-- transaction as the record, so cutting records off the end of a chain is detectable. A
-- chain is its namespace's (or the platform's, `_platform`).
CREATE TABLE audit_heads (
    chain     TEXT COLLATE "C"    PRIMARY KEY,
    last_seq  BIGINT  NOT NULL,
    last_hash TEXT COLLATE "C"    NOT NULL
);
SELECT bulkhead_lock_table('audit_heads', 'chain');

CREATE TABLE audit_records (
    chain      TEXT COLLATE "C"    NOT NULL,
    seq        BIGINT  NOT NULL,
    time_ms    BIGINT  NOT NULL,
    principal  TEXT COLLATE "C"    NOT NULL,
    action     TEXT COLLATE "C"    NOT NULL,
    resource   TEXT COLLATE "C"    NOT NULL,
    decision   TEXT COLLATE "C"    NOT NULL,
    status     BIGINT  NOT NULL,
    request_id TEXT COLLATE "C"    NOT NULL,
    detail     TEXT COLLATE "C"    NOT NULL,
    prev_hash  TEXT COLLATE "C"    NOT NULL,
    hash       TEXT COLLATE "C"    NOT NULL,
    PRIMARY KEY (chain, seq)
);
SELECT bulkhead_lock_table('audit_records', 'chain');

CREATE INDEX audit_records_by_action ON audit_records (chain, action, seq);

-- Answers to creates that carried an Idempotency-Key, replayed when the same principal sends the
-- same key again. Bodies never hold a token: key creations are stored without it. A scope
-- `ns:<namespace>:...` is that namespace's; any other is the platform's.
CREATE TABLE idempotency (
    scope         TEXT COLLATE "C"    NOT NULL,
    key           TEXT COLLATE "C"    NOT NULL,
    fingerprint   TEXT COLLATE "C"    NOT NULL,
    status        BIGINT  NOT NULL,
    body          TEXT COLLATE "C"    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    namespace     TEXT COLLATE "C"    GENERATED ALWAYS AS
        (CASE WHEN scope LIKE 'ns:%' THEN split_part(scope, ':', 2) END) STORED,
    PRIMARY KEY (scope, key)
);
SELECT bulkhead_lock_table('idempotency', 'namespace');
