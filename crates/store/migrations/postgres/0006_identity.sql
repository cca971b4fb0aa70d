-- Identity and permissions: a namespace's single sign-on settings, its Cedar policies, its
-- secrets (encrypted under a per-namespace data key that is itself wrapped by the server's
-- master key), and each sandbox's creator, workload token and secrets.

CREATE TABLE namespace_identity (
    namespace     TEXT COLLATE "C"    PRIMARY KEY REFERENCES namespaces (name) ON DELETE CASCADE,
    config        TEXT COLLATE "C"    NOT NULL,
    updated_at_ms BIGINT  NOT NULL
);
SELECT bulkhead_lock_table('namespace_identity', 'namespace');

CREATE TABLE policies (
    id            TEXT COLLATE "C"    PRIMARY KEY,
    namespace     TEXT COLLATE "C"    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    name          TEXT COLLATE "C"    NOT NULL,
    text          TEXT COLLATE "C"    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    UNIQUE (namespace, name)
);
SELECT bulkhead_lock_table('policies', 'namespace');

CREATE TABLE namespace_data_keys (
    namespace TEXT COLLATE "C"  PRIMARY KEY REFERENCES namespaces (name) ON DELETE CASCADE,
    -- The data key sealed by the master key: nonce || AES-256-GCM ciphertext and tag.
    wrapped   BYTEA NOT NULL
);
SELECT bulkhead_lock_table('namespace_data_keys', 'namespace');

CREATE TABLE secrets (
    id            TEXT COLLATE "C"    PRIMARY KEY,
    namespace     TEXT COLLATE "C"    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    name          TEXT COLLATE "C"    NOT NULL,
    -- The value sealed by the namespace's data key: nonce || ciphertext and tag.
    sealed        BYTEA   NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    updated_at_ms BIGINT  NOT NULL,
    UNIQUE (namespace, name)
);
SELECT bulkhead_lock_table('secrets', 'namespace');

ALTER TABLE sandboxes ADD COLUMN creator TEXT COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE sandboxes ADD COLUMN workload_token_hash TEXT COLLATE "C";
ALTER TABLE sandboxes ADD COLUMN secrets TEXT COLLATE "C" NOT NULL DEFAULT '[]';
CREATE UNIQUE INDEX sandboxes_workload_token ON sandboxes (workload_token_hash) WHERE workload_token_hash IS NOT NULL;

-- A namespace's live sandboxes, for admission and the usage shown on every namespace read,
-- without walking every sandbox the namespace ever had.
CREATE INDEX sandboxes_active_by_namespace ON sandboxes (namespace, cpu_millis, memory_bytes)
    WHERE status IN ('creating', 'running');
