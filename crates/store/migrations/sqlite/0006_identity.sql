-- Identity and permissions: a namespace's single sign-on settings, its Cedar policies, its
-- secrets (encrypted under a per-namespace data key that is itself wrapped by the server's
-- master key), and each sandbox's creator, workload token and secrets.

CREATE TABLE namespace_identity (
    namespace     TEXT    PRIMARY KEY REFERENCES namespaces (name) ON DELETE CASCADE,
    config        TEXT    NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE policies (
    id            TEXT    PRIMARY KEY,
    namespace     TEXT    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    text          TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (namespace, name)
) STRICT;

CREATE TABLE namespace_data_keys (
    namespace TEXT PRIMARY KEY REFERENCES namespaces (name) ON DELETE CASCADE,
    -- The data key sealed by the master key: nonce || AES-256-GCM ciphertext and tag.
    wrapped   BLOB NOT NULL
) STRICT;

CREATE TABLE secrets (
    id            TEXT    PRIMARY KEY,
    namespace     TEXT    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    -- The value sealed by the namespace's data key: nonce || ciphertext and tag.
    sealed        BLOB    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    UNIQUE (namespace, name)
) STRICT;

ALTER TABLE sandboxes ADD COLUMN creator TEXT NOT NULL DEFAULT '';
ALTER TABLE sandboxes ADD COLUMN workload_token_hash TEXT;
ALTER TABLE sandboxes ADD COLUMN secrets TEXT NOT NULL DEFAULT '[]';
CREATE UNIQUE INDEX sandboxes_workload_token ON sandboxes (workload_token_hash) WHERE workload_token_hash IS NOT NULL;

-- A namespace's live sandboxes, for admission and the usage shown on every namespace read,
-- without walking every sandbox the namespace ever had.
CREATE INDEX sandboxes_active_by_namespace ON sandboxes (namespace, cpu_millis, memory_bytes)
    WHERE status IN ('creating', 'running');
