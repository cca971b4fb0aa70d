-- Nodes: the `bulkhead serve` processes that share this store, each with its host side (data
-- dir, state dir, cgroup prefix) and the sandboxes it runs. A node holds a lease it renews; a
-- node whose lease lapses is declared lost by the others (`lost_at_ms`), and its sandboxes
-- with it. With the embedded SQLite store there is one node.
CREATE TABLE nodes (
    id             TEXT    PRIMARY KEY,
    url            TEXT    NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL,
    lost_at_ms     INTEGER
);

-- The node that runs a sandbox, the node whose data dir holds a filesystem's image, and the
-- node whose request holds an idempotency claim (`''`: rows from before nodes, adopted by the
-- first node that starts).
ALTER TABLE sandboxes ADD COLUMN node TEXT NOT NULL DEFAULT '';
ALTER TABLE idempotency ADD COLUMN node TEXT NOT NULL DEFAULT '';
ALTER TABLE filesystems ADD COLUMN node TEXT NOT NULL DEFAULT '';
CREATE INDEX sandboxes_node_active ON sandboxes (node) WHERE status IN ('creating', 'running');

-- The key API tokens are hashed with, sealed (AES-256-GCM) under the master key, so that every
-- node of the store hashes alike; made by the first node that starts.
CREATE TABLE token_key (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    sealed        TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
);
