-- Network egress. A namespace's ceiling, set by the platform admin, as JSON
-- `{"allow": [entries], "max_bandwidth_bytes_per_second"?: N}`; NULL is the default, empty
-- ceiling (no egress). A sandbox's `egress` as asked at create, JSON `{"allow": [entries],
-- "credentials"?: [{host, secret, header, format}]}`; NULL: it asked for nothing. The entries
-- are checked by the server before they are stored (bulkhead_core::egress).
ALTER TABLE namespaces ADD COLUMN egress TEXT COLLATE "C";
ALTER TABLE sandboxes ADD COLUMN egress TEXT COLLATE "C";
-- The namespace's certificate authority for brokered credentials, its key sealed like a
-- secret's value; NULL until the namespace first brokers one.
ALTER TABLE namespaces ADD COLUMN egress_ca BYTEA;
