-- Images: OCI images a sandbox boots from. `namespace` NULL is a public image (published by the
-- platform admin, seen by every namespace); otherwise the image is that namespace's alone and
-- goes with it. `config` is the image's run configuration as JSON (`{"env", "working_dir",
-- "user", "entrypoint", "cmd"}`), `layers` a JSON array of the layers' blob digests, bottom
-- first (directories of the namespace's layer store, or of the public one). `source` says where
-- it came from (`archive`, or a registry reference).
CREATE TABLE images (
    id            TEXT COLLATE "C"    PRIMARY KEY,
    namespace     TEXT COLLATE "C"    REFERENCES namespaces (name) ON DELETE CASCADE,
    name          TEXT COLLATE "C"    NOT NULL,
    digest        TEXT COLLATE "C"    NOT NULL,
    config        TEXT COLLATE "C"    NOT NULL,
    layers        TEXT COLLATE "C"    NOT NULL,
    size_bytes    BIGINT  NOT NULL CHECK (size_bytes >= 0),
    source        TEXT COLLATE "C"    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    status        TEXT COLLATE "C"    NOT NULL CHECK (status IN ('ready')),
    UNIQUE (namespace, name)
);
SELECT bulkhead_lock_table('images', 'namespace');
-- Every namespace reads the public images; only the platform writes them.
CREATE POLICY public_read ON images FOR SELECT USING (namespace IS NULL);

-- UNIQUE treats NULLs as distinct: one public image per name needs an index of its own.
CREATE UNIQUE INDEX images_public_name ON images (name) WHERE namespace IS NULL;
CREATE INDEX images_by_namespace ON images (namespace, id);

-- The image a sandbox started from (NULL: the host's base, `--root host`), and what of it the
-- sandbox keeps for its commands' defaults, as JSON `{"id", "name", "digest", "user"?,
-- "working_dir"?}`; `disk_bytes` is the size of its writable root.
ALTER TABLE sandboxes ADD COLUMN image_id TEXT COLLATE "C";
ALTER TABLE sandboxes ADD COLUMN image TEXT COLLATE "C";
ALTER TABLE sandboxes ADD COLUMN disk_bytes BIGINT;
CREATE INDEX sandboxes_by_image ON sandboxes (image_id) WHERE image_id IS NOT NULL;
