-- Images: OCI images a sandbox boots from. `namespace` NULL is a public image (published by the
-- platform admin, seen by every namespace); otherwise the image is that namespace's alone and
-- goes with it. `config` is the image's run configuration as JSON (`{"env", "working_dir",
-- "user", "entrypoint", "cmd"}`), `layers` a JSON array of the layers' blob digests, bottom
-- first (directories of the namespace's layer store, or of the public one). `source` says where
-- it came from (`archive`, or a registry reference).
CREATE TABLE images (
    id            TEXT    PRIMARY KEY,
    namespace     TEXT    REFERENCES namespaces (name) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    digest        TEXT    NOT NULL,
    config        TEXT    NOT NULL,
    layers        TEXT    NOT NULL,
    size_bytes    INTEGER NOT NULL CHECK (size_bytes >= 0),
    source        TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('ready')),
    UNIQUE (namespace, name)
) STRICT;

-- SQLite's UNIQUE treats NULLs as distinct: one public image per name needs an index of its own.
CREATE UNIQUE INDEX images_public_name ON images (name) WHERE namespace IS NULL;
CREATE INDEX images_by_namespace ON images (namespace, id);

-- The image a sandbox started from (NULL: the host's base, `--root host`), and what of it the
-- sandbox keeps for its commands' defaults, as JSON `{"id", "name", "digest", "user"?,
-- "working_dir"?}`; `disk_bytes` is the size of its writable root.
ALTER TABLE sandboxes ADD COLUMN image_id TEXT;
ALTER TABLE sandboxes ADD COLUMN image TEXT;
ALTER TABLE sandboxes ADD COLUMN disk_bytes INTEGER;
CREATE INDEX sandboxes_by_image ON sandboxes (image_id) WHERE image_id IS NOT NULL;
