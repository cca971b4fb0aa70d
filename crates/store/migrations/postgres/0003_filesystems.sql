-- Projects, filesystems, keys limited to projects, and filesystems attached to sandboxes.

CREATE TABLE projects (
    id            TEXT COLLATE "C"    PRIMARY KEY,
    namespace     TEXT COLLATE "C"    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    name          TEXT COLLATE "C"    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    UNIQUE (namespace, name)
);
SELECT bulkhead_lock_table('projects', 'namespace');

CREATE TABLE filesystems (
    id            TEXT COLLATE "C"    PRIMARY KEY,
    namespace     TEXT COLLATE "C"    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    name          TEXT COLLATE "C"    NOT NULL,
    project_id    TEXT COLLATE "C"    REFERENCES projects (id) ON DELETE RESTRICT,
    size_bytes    BIGINT  NOT NULL CHECK (size_bytes > 0),
    created_at_ms BIGINT  NOT NULL,
    updated_at_ms BIGINT  NOT NULL,
    UNIQUE (namespace, name)
);
SELECT bulkhead_lock_table('filesystems', 'namespace');

-- A JSON array of project ids the key is limited to; NULL: the whole namespace.
ALTER TABLE api_keys ADD COLUMN projects TEXT COLLATE "C";

ALTER TABLE sandboxes ADD COLUMN filesystem_id TEXT COLLATE "C";
ALTER TABLE sandboxes ADD COLUMN filesystem_mode TEXT COLLATE "C" CHECK (filesystem_mode IN ('rw', 'ro'));
CREATE INDEX sandboxes_by_filesystem ON sandboxes (filesystem_id) WHERE filesystem_id IS NOT NULL;
