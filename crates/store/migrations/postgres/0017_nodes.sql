-- Nodes: the `bulkhead serve` processes that share this store, each with its host side (data
-- dir, state dir, cgroup prefix) and the sandboxes it runs. A node holds a lease it renews; a
-- node whose lease lapses is declared lost by the others (`lost_at_ms`), and its sandboxes
-- with it. PostgreSQL's dialect of the SQLite migration of the same number.
CREATE TABLE nodes (
    id             TEXT COLLATE "C" PRIMARY KEY,
    url            TEXT COLLATE "C" NOT NULL,
    started_at_ms  BIGINT NOT NULL,
    lease_until_ms BIGINT NOT NULL,
    lost_at_ms     BIGINT
);
SELECT bulkhead_lock_table('nodes', NULL);

-- The node that runs a sandbox, the node whose data dir holds a filesystem's image, and the
-- node whose request holds an idempotency claim (`''`: rows from before nodes, adopted by the
-- first node that starts).
ALTER TABLE sandboxes ADD COLUMN node TEXT COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE idempotency ADD COLUMN node TEXT COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE filesystems ADD COLUMN node TEXT COLLATE "C" NOT NULL DEFAULT '';
CREATE INDEX sandboxes_node_active ON sandboxes (node) WHERE status IN ('creating', 'running');

-- The key API tokens are hashed with, sealed (AES-256-GCM) under the master key, so that every
-- node of the store hashes alike; made by the first node that starts.
CREATE TABLE token_key (
    id            BIGINT PRIMARY KEY CHECK (id = 1),
    sealed        TEXT COLLATE "C" NOT NULL,
    created_at_ms BIGINT NOT NULL
);
SELECT bulkhead_lock_table('token_key', NULL);

-- What each process caches (authenticated keys, namespaces, policies, identity settings,
-- workload tokens) is told of every change on channel `bulkhead_changes`, at commit, whichever
-- node made it: `<kind>:<namespace>[:<id>]`.
CREATE FUNCTION bulkhead_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
    payload text;
BEGIN
    IF TG_OP = 'INSERT' THEN r := NEW; ELSE r := OLD; END IF;
    -- One statement per table: a record's fields are resolved when a statement first runs.
    IF TG_TABLE_NAME = 'api_keys' THEN
        payload := 'key:' || r.namespace || ':' || r.id;
    ELSIF TG_TABLE_NAME = 'namespaces' THEN
        payload := 'namespace:' || r.name;
    ELSIF TG_TABLE_NAME = 'policies' THEN
        payload := 'policies:' || r.namespace;
    ELSIF TG_TABLE_NAME = 'namespace_identity' THEN
        payload := 'identity:' || r.namespace;
    ELSE
        payload := 'sandbox:' || r.namespace || ':' || r.id;
    END IF;
    PERFORM pg_notify('bulkhead_changes', payload);
    RETURN NULL;
END
$$;
CREATE TRIGGER notify_change AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION bulkhead_notify_change();
CREATE TRIGGER notify_change AFTER UPDATE OR DELETE ON namespaces
    FOR EACH ROW EXECUTE FUNCTION bulkhead_notify_change();
CREATE TRIGGER notify_change AFTER INSERT OR UPDATE OR DELETE ON policies
    FOR EACH ROW EXECUTE FUNCTION bulkhead_notify_change();
CREATE TRIGGER notify_change AFTER INSERT OR UPDATE OR DELETE ON namespace_identity
    FOR EACH ROW EXECUTE FUNCTION bulkhead_notify_change();
-- A sandbox's workload token is revoked when it ends.
CREATE TRIGGER notify_change AFTER UPDATE OF workload_token_hash ON sandboxes
    FOR EACH ROW WHEN (OLD.workload_token_hash IS DISTINCT FROM NEW.workload_token_hash)
    EXECUTE FUNCTION bulkhead_notify_change();
