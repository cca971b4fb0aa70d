-- Each namespace's egress CA (brokered credentials): its certificate and key, sealed under the
-- namespace's data key; NULL until the namespace first brokers a credential. (Issue 14's
-- policy migration adds the same column with the namespace's egress ceiling.)
ALTER TABLE namespaces ADD COLUMN egress_ca BLOB;
