-- The usage ledger: what each namespace used, per minute, metered from the kernel's counters.

CREATE TABLE usage_buckets (
    namespace         TEXT    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    bucket_ms         INTEGER NOT NULL,
    cpu_ns            INTEGER NOT NULL DEFAULT 0,
    memory_byte_ms    INTEGER NOT NULL DEFAULT 0,
    sandbox_ms        INTEGER NOT NULL DEFAULT 0,
    memory_peak_bytes INTEGER NOT NULL DEFAULT 0,
    exec_count        INTEGER NOT NULL DEFAULT 0,
    quota_rejections  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, bucket_ms)
) STRICT;

-- Where metering of each sandbox stands: its cgroup's cpu counter and the time of the last
-- sample, so a restart neither loses nor counts anything twice.
ALTER TABLE sandboxes ADD COLUMN metered_cpu_ns INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN metered_at_ms INTEGER;
