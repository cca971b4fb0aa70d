-- Agents and tasks. An agent is a name in a namespace; its versions are uploaded bundles,
-- immutable and content-addressed (`digest`, the sha256 of the bundle as stored), whose
-- `manifest` is the validated `agent.json` as JSON. `deploys` is the agent's deploy history, a
-- JSON array of version ids, the active one last: a deploy appends, a rollback drops the last.
CREATE TABLE agents (
    id            TEXT COLLATE "C"    PRIMARY KEY,
    namespace     TEXT COLLATE "C"    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    name          TEXT COLLATE "C"    NOT NULL,
    deploys       TEXT COLLATE "C"    NOT NULL DEFAULT '[]',
    created_at_ms BIGINT  NOT NULL,
    updated_at_ms BIGINT  NOT NULL,
    UNIQUE (namespace, name)
);
SELECT bulkhead_lock_table('agents', 'namespace');

CREATE TABLE agent_versions (
    id            TEXT COLLATE "C"    PRIMARY KEY,
    namespace     TEXT COLLATE "C"    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    agent_id      TEXT COLLATE "C"    NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    digest        TEXT COLLATE "C"    NOT NULL,
    manifest      TEXT COLLATE "C"    NOT NULL,
    size_bytes    BIGINT  NOT NULL CHECK (size_bytes >= 0),
    created_at_ms BIGINT  NOT NULL,
    UNIQUE (agent_id, digest)
);
SELECT bulkhead_lock_table('agent_versions', 'namespace');
CREATE INDEX agent_versions_by_namespace ON agent_versions (namespace, digest);

-- A task: one conversation of an agent version in a sandbox (`sandbox_id`, the current one;
-- NULL while idle or ended). `plan` is what its sandbox is started from (JSON, kept so that an
-- idle task resumes as it started); `session_id` the ACP session the agent opened. `state` is
-- the task's JSON document and `state_version` its version (the ETag). `last_seq` is the last
-- message's sequence number.
CREATE TABLE tasks (
    id                TEXT COLLATE "C"    PRIMARY KEY,
    namespace         TEXT COLLATE "C"    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    agent_id          TEXT COLLATE "C"    NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    version_id        TEXT COLLATE "C"    NOT NULL REFERENCES agent_versions (id) ON DELETE CASCADE,
    filesystem_id     TEXT COLLATE "C",
    filesystem_mode   TEXT COLLATE "C",
    project_id        TEXT COLLATE "C",
    permissions       TEXT COLLATE "C"    NOT NULL CHECK (permissions IN ('policy', 'ask')),
    status            TEXT COLLATE "C"    NOT NULL
        CHECK (status IN ('starting', 'running', 'idle', 'completed', 'failed', 'cancelled')),
    reason            TEXT COLLATE "C",
    sandbox_id        TEXT COLLATE "C",
    session_id        TEXT COLLATE "C",
    plan              TEXT COLLATE "C"    NOT NULL,
    creator           TEXT COLLATE "C"    NOT NULL,
    created_at_ms     BIGINT  NOT NULL,
    updated_at_ms     BIGINT  NOT NULL,
    ended_at_ms       BIGINT,
    state             TEXT COLLATE "C"    NOT NULL DEFAULT '{}',
    state_version     BIGINT  NOT NULL DEFAULT 0,
    input_tokens      BIGINT  NOT NULL DEFAULT 0,
    output_tokens     BIGINT  NOT NULL DEFAULT 0,
    last_seq          BIGINT  NOT NULL DEFAULT 0
);
SELECT bulkhead_lock_table('tasks', 'namespace');
CREATE INDEX tasks_by_namespace ON tasks (namespace, id);
CREATE INDEX tasks_live ON tasks (status) WHERE status IN ('starting', 'running');

-- A task's messages, numbered from 1 without a gap: what the agent sent (session updates,
-- permission requests, turn ends), what was sent to it, and the task's status changes. `body`
-- is the message as the API shows it (JSON).
CREATE TABLE task_messages (
    task_id       TEXT COLLATE "C"    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    -- The task's namespace (not in SQLite's schema): the key of its row-level security.
    namespace     TEXT COLLATE "C"    NOT NULL,
    seq           BIGINT  NOT NULL,
    type          TEXT COLLATE "C"    NOT NULL,
    body          TEXT COLLATE "C"    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (task_id, seq)
);
SELECT bulkhead_lock_table('task_messages', 'namespace');

-- The task whose agent a sandbox runs: its workload principal's `task`.
ALTER TABLE sandboxes ADD COLUMN task_id TEXT COLLATE "C";
CREATE INDEX sandboxes_by_task ON sandboxes (task_id) WHERE task_id IS NOT NULL;
