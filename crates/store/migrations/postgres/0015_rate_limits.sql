-- Per-namespace API rate limits: requests a second (the token bucket's rate; its burst is one
-- second's worth) and commands running at once (and, counted apart, sandbox creates in flight).
-- Namespaces made before this migration get the defaults.
ALTER TABLE namespaces ADD COLUMN api_requests_per_second BIGINT NOT NULL DEFAULT 1000;
ALTER TABLE namespaces ADD COLUMN max_concurrent_execs BIGINT NOT NULL DEFAULT 32;
