-- The usage ledger: what each namespace used, per minute, metered from the kernel's counters.

CREATE TABLE usage_buckets (
    namespace         TEXT COLLATE "C"    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    bucket_ms         BIGINT  NOT NULL,
    cpu_ns            BIGINT  NOT NULL DEFAULT 0,
    memory_byte_ms    BIGINT  NOT NULL DEFAULT 0,
    sandbox_ms        BIGINT  NOT NULL DEFAULT 0,
    memory_peak_bytes BIGINT  NOT NULL DEFAULT 0,
    exec_count        BIGINT  NOT NULL DEFAULT 0,
    quota_rejections  BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, bucket_ms)
);
SELECT bulkhead_lock_table('usage_buckets', 'namespace');

-- Where metering of each sandbox stands: its cgroup's cpu counter and the time of the last
-- sample, so a restart neither loses nor counts anything twice.
ALTER TABLE sandboxes ADD COLUMN metered_cpu_ns BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN metered_at_ms BIGINT;
