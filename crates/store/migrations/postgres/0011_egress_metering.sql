-- Egress metered from the gateway's counters, per ledger bucket: payload bytes the sandboxes
-- sent and received through the gateway, connections it forwarded, and attempts it denied.
-- Where metering of each sandbox's egress counters stands is kept in memory only: the counters
-- themselves live in the server's process and start from zero with it.
ALTER TABLE usage_buckets ADD COLUMN egress_bytes_out BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_buckets ADD COLUMN egress_bytes_in BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_buckets ADD COLUMN egress_connections BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_buckets ADD COLUMN egress_denied BIGINT NOT NULL DEFAULT 0;
