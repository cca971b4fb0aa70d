-- Block io metered from the kernel's io (v2) or blkio (v1) controller, per ledger bucket, and
-- where metering of each sandbox's io counters stands.
ALTER TABLE usage_buckets ADD COLUMN io_read_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_buckets ADD COLUMN io_write_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN metered_io_read_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN metered_io_write_bytes BIGINT NOT NULL DEFAULT 0;
