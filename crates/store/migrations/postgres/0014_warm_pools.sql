-- Warm pools: per namespace and image, how many started sandboxes to keep ready to claim. A
-- pool's sandboxes are rows of `sandboxes` with `pooled = 1` until a create claims one (the row
-- then becomes the claimant's, `pooled = 0`): they count against the namespace's quotas like any
-- active sandbox, and no list or lookup of the namespace's sandboxes shows them.
ALTER TABLE sandboxes ADD COLUMN pooled BIGINT NOT NULL DEFAULT 0 CHECK (pooled IN (0, 1));

CREATE TABLE warm_pools (
    namespace     TEXT COLLATE "C"    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    image_id      TEXT COLLATE "C"    NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    size          BIGINT NOT NULL CHECK (size > 0),
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (namespace, image_id)
);
SELECT bulkhead_lock_table('warm_pools', 'namespace');
