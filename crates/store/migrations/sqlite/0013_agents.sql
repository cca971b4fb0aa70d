-- Agents and tasks. An agent is a name in a namespace; its versions are uploaded bundles,
-- immutable and content-addressed (`digest`, the sha256 of the bundle as stored), whose
-- `manifest` is the validated `agent.json` as JSON. `deploys` is the agent's deploy history, a
-- JSON array of version ids, the active one last: a deploy appends, a rollback drops the last.
CREATE TABLE agents (
    id            TEXT    PRIMARY KEY,
    namespace     TEXT    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    deploys       TEXT    NOT NULL DEFAULT '[]',
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    UNIQUE (namespace, name)
) STRICT;

CREATE TABLE agent_versions (
    id            TEXT    PRIMARY KEY,
    namespace     TEXT    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    agent_id      TEXT    NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    digest        TEXT    NOT NULL,
    manifest      TEXT    NOT NULL,
    size_bytes    INTEGER NOT NULL CHECK (size_bytes >= 0),
    created_at_ms INTEGER NOT NULL,
    UNIQUE (agent_id, digest)
) STRICT;
CREATE INDEX agent_versions_by_namespace ON agent_versions (namespace, digest);

-- A task: one conversation of an agent version in a sandbox (`sandbox_id`, the current one;
-- NULL while idle or ended). `plan` is what its sandbox is started from (JSON, kept so that an
-- idle task resumes as it started); `session_id` the ACP session the agent opened. `state` is
-- the task's JSON document and `state_version` its version (the ETag). `last_seq` is the last
-- message's sequence number.
CREATE TABLE tasks (
    id                TEXT    PRIMARY KEY,
    namespace         TEXT    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    agent_id          TEXT    NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    version_id        TEXT    NOT NULL REFERENCES agent_versions (id) ON DELETE CASCADE,
    filesystem_id     TEXT,
    filesystem_mode   TEXT,
    project_id        TEXT,
    permissions       TEXT    NOT NULL CHECK (permissions IN ('policy', 'ask')),
    status            TEXT    NOT NULL
        CHECK (status IN ('starting', 'running', 'idle', 'completed', 'failed', 'cancelled')),
    reason            TEXT,
    sandbox_id        TEXT,
    session_id        TEXT,
    plan              TEXT    NOT NULL,
    creator           TEXT    NOT NULL,
    created_at_ms     INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL,
    ended_at_ms       INTEGER,
    state             TEXT    NOT NULL DEFAULT '{}',
    state_version     INTEGER NOT NULL DEFAULT 0,
    input_tokens      INTEGER NOT NULL DEFAULT 0,
    output_tokens     INTEGER NOT NULL DEFAULT 0,
    last_seq          INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX tasks_by_namespace ON tasks (namespace, id);
CREATE INDEX tasks_live ON tasks (status) WHERE status IN ('starting', 'running');

-- A task's messages, numbered from 1 without a gap: what the agent sent (session updates,
-- permission requests, turn ends), what was sent to it, and the task's status changes. `body`
-- is the message as the API shows it (JSON).
CREATE TABLE task_messages (
    task_id       TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    type          TEXT    NOT NULL,
    body          TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (task_id, seq)
) STRICT, WITHOUT ROWID;

-- The task whose agent a sandbox runs: its workload principal's `task`.
ALTER TABLE sandboxes ADD COLUMN task_id TEXT;
CREATE INDEX sandboxes_by_task ON sandboxes (task_id) WHERE task_id IS NOT NULL;
