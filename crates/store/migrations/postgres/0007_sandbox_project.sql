-- A sandbox carries the project of the filesystem it mounts, fixed at create: whoever may not
-- see that project may not see the sandbox either. NULL when it mounts nothing, or a filesystem
-- in no project (the sandbox's `filesystem_id` tells the two apart).
ALTER TABLE sandboxes ADD COLUMN project_id TEXT COLLATE "C";

-- Idempotency claims: a row with status 0 is a create in progress under its key; the answer
-- replaces it when the create succeeds, and it is removed when the create fails. Answers live a
-- day; claims remove a few expired ones each, oldest first.
CREATE INDEX idempotency_by_age ON idempotency (created_at_ms);
