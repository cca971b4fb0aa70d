-- A namespace's placement, set by the platform admin, as JSON: `{"mode": "dedicated", "cpus": N,
-- "memory_bytes": M, "cpuset": "2-3"}` (the cores it was admitted to); NULL is `shared`.
ALTER TABLE namespaces ADD COLUMN placement TEXT COLLATE "C";
