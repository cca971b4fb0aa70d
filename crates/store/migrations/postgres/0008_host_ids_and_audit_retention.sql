-- The store's identity in the host registry, host id ranges kept in the namespace row, and
-- audit retention.

-- The id under which this store (and every replica of it) holds host-global resources in the
-- host registry. Made once, never changed.
CREATE TABLE store_identity (
    id       BIGINT  PRIMARY KEY CHECK (id = 1),
    store_id TEXT COLLATE "C"    NOT NULL
);
SELECT bulkhead_lock_table('store_identity', NULL);
INSERT INTO store_identity (id, store_id) VALUES (1, 'sto_' || replace(gen_random_uuid()::text, '-', ''));

-- A namespace's host uid/gid range, as the host registry handed it out. Rows made before keep
-- the range their slot gave them (1000000 + 65536 * slot).
ALTER TABLE namespaces ADD COLUMN id_start BIGINT;
ALTER TABLE namespaces ADD COLUMN id_count BIGINT;
UPDATE namespaces SET id_start = 1000000 + 65536 * id_slot, id_count = 65536 WHERE id_slot IS NOT NULL;
CREATE UNIQUE INDEX namespaces_by_id_start ON namespaces (id_start);

-- Where a pruned chain begins: the last pruned record's seq (also how many were pruned) and
-- hash, which the first record kept links to, and when the chain was last pruned.
CREATE TABLE audit_checkpoints (
    chain   TEXT COLLATE "C"    PRIMARY KEY,
    seq     BIGINT  NOT NULL CHECK (seq > 0),
    hash    TEXT COLLATE "C"    NOT NULL,
    time_ms BIGINT  NOT NULL
);
SELECT bulkhead_lock_table('audit_checkpoints', 'chain');
