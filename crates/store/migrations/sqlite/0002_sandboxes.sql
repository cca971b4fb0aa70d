-- Sandboxes, and the host id range of each namespace.

-- Each namespace owns host ids [1000000 + slot * 65536, +65536) for its sandboxes' user
-- namespaces. Slots are never reused (AUTOINCREMENT), so files a deleted namespace left behind
-- can never become another tenant's.
CREATE TABLE id_slots (
    slot      INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT    NOT NULL
);

ALTER TABLE namespaces ADD COLUMN id_slot INTEGER;

CREATE TABLE sandboxes (
    id             TEXT    PRIMARY KEY,
    namespace      TEXT    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    status         TEXT    NOT NULL CHECK (status IN ('creating', 'running', 'stopped', 'failed', 'deleted')),
    reason         TEXT,
    isolation      TEXT    NOT NULL,
    cpu_millis     INTEGER NOT NULL,
    memory_bytes   INTEGER NOT NULL,
    pids           INTEGER NOT NULL,
    ttl_seconds    INTEGER NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL,
    ended_at_ms    INTEGER
) STRICT;

CREATE INDEX sandboxes_by_namespace ON sandboxes (namespace, id);
CREATE INDEX sandboxes_active ON sandboxes (status, expires_at_ms) WHERE status IN ('creating', 'running');
