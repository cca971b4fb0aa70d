-- Projects, filesystems, keys limited to projects, and filesystems attached to sandboxes.

CREATE TABLE projects (
    id            TEXT    PRIMARY KEY,
    namespace     TEXT    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (namespace, name)
) STRICT;

CREATE TABLE filesystems (
    id            TEXT    PRIMARY KEY,
    namespace     TEXT    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    project_id    TEXT    REFERENCES projects (id) ON DELETE RESTRICT,
    size_bytes    INTEGER NOT NULL CHECK (size_bytes > 0),
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    UNIQUE (namespace, name)
) STRICT;

-- A JSON array of project ids the key is limited to; NULL: the whole namespace.
ALTER TABLE api_keys ADD COLUMN projects TEXT;

ALTER TABLE sandboxes ADD COLUMN filesystem_id TEXT;
ALTER TABLE sandboxes ADD COLUMN filesystem_mode TEXT CHECK (filesystem_mode IN ('rw', 'ro'));
CREATE INDEX sandboxes_by_filesystem ON sandboxes (filesystem_id) WHERE filesystem_id IS NOT NULL;
