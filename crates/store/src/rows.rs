//! How each row type the stores keep maps to its columns: one text for both stores, which keep
//! the same columns under the same names (the migrations of each dialect) and read and bind them
//! alike. [`row_mappings!`] expands to the `Columns` and `Table` implementations of every row
//! type (and the `Column` reading and binding of each column type) in a child module of the
//! store's module (`sqlite::rows`, `postgres::rows`), against that store's row type and its
//! `Query`, `Columns`, `Table`, `as_u64` and `json_column`; what reads no row is here as
//! functions.

use bulkhead_core::placement::Placement;

use crate::{QuotaBreach, Result, StoreError};

/// [`StoreError::Quota`] when `requested` on top of `used` goes past `limit`.
pub(crate) fn within(quota: &'static str, limit: u64, used: u64, requested: u64) -> Result<()> {
    if used.saturating_add(requested) > limit {
        return Err(StoreError::Quota(QuotaBreach { quota, limit, used, requested }));
    }
    Ok(())
}

/// A `u64` as the `INTEGER`/`BIGINT` column that keeps it.
pub(crate) fn as_i64(v: u64) -> i64 {
    // Quotas and sequence numbers are bounded far below i64::MAX by the core's validation.
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A list of names kept as JSON text; `what` names the column in the error.
pub(crate) fn names(text: &str, what: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// `value` as the text of a nullable JSON column.
pub(crate) fn to_json<T: serde::Serialize>(value: Option<&T>) -> Result<Option<String>> {
    value.map(|v| serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))).transpose()
}

/// The placement column: NULL for `shared`, the default.
pub(crate) fn placement_column(p: &Placement) -> Result<Option<String>> {
    match p {
        Placement::Shared => Ok(None),
        dedicated => to_json(Some(dedicated)),
    }
}

/// The `Columns` and `Table` implementations of every row type, against `$row` (the store's
/// result row type); invoked in a child module of the store's module (`super` is the store's).
macro_rules! row_mappings {
    ($row:ty) => {
        use std::str::FromStr;

        use bulkhead_core::audit::{AuditEvent, AuditRecord, Checkpoint};
        use bulkhead_core::{Quotas, Role};
        use sqlx::Row;

        use super::{as_u64, json_column, Columns, Query, Table};
        use $crate::rows::{as_i64, names, placement_column, to_json};
        use $crate::{
            AgentRow, FilesystemRow, ImageRow, KeyRow, MeterMark, NamespaceRow, PolicyRow, ProjectRow, Result,
            SandboxRow, SandboxStatus, SecretRow, StoreError, TaskRow, UsageBucket, UsageDelta, VersionRow,
        };

        /// A value one column holds, read by the column's name and bound as the store writes it.
        pub(super) trait Column: Sized {
            fn read(row: &$row, col: &str) -> Result<Self>;
            fn bind_to<'q>(&'q self, q: Query<'q>) -> Query<'q>;
        }

        $crate::rows::decoded_columns!($row; String, Option<String>, i64, Option<i64>, Vec<u8>);

        /// Counts and sizes, which the store writes from `u64`s: a negative one is corrupt.
        impl Column for u64 {
            fn read(row: &$row, col: &str) -> Result<Self> {
                as_u64(row, col)
            }
            fn bind_to<'q>(&'q self, q: Query<'q>) -> Query<'q> {
                q.bind(as_i64(*self))
            }
        }

        /// HTTP statuses.
        impl Column for u16 {
            fn read(row: &$row, col: &str) -> Result<Self> {
                let v: i64 = row.try_get(col)?;
                u16::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col} out of range")))
            }
            fn bind_to<'q>(&'q self, q: Query<'q>) -> Query<'q> {
                q.bind(i64::from(*self))
            }
        }

        impl Columns for AgentRow {
            const COLUMNS: &'static str = "id, namespace, name, deploys, created_at_ms, updated_at_ms";

            fn from_row(row: &$row) -> Result<Self> {
                let deploys: String = row.try_get("deploys")?;
                Ok(AgentRow {
                    id: row.try_get("id")?,
                    namespace: row.try_get("namespace")?,
                    name: row.try_get("name")?,
                    deploys: names(&deploys, "agent deploys")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    updated_at_ms: row.try_get("updated_at_ms")?,
                })
            }

            fn bind_all<'q>(&'q self, q: Query<'q>) -> Result<Query<'q>> {
                let deploys = serde_json::to_string(&self.deploys).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(q.bind(&self.id)
                    .bind(&self.namespace)
                    .bind(&self.name)
                    .bind(deploys)
                    .bind(self.created_at_ms)
                    .bind(self.updated_at_ms))
            }
        }

        impl Table for AgentRow {
            const TABLE: &'static str = "agents";
            const KEY: &'static str = "id";
        }

        impl Columns for VersionRow {
            const COLUMNS: &'static str = "id, namespace, agent_id, digest, manifest, size_bytes, created_at_ms";

            fn from_row(row: &$row) -> Result<Self> {
                Ok(VersionRow {
                    id: row.try_get("id")?,
                    namespace: row.try_get("namespace")?,
                    agent_id: row.try_get("agent_id")?,
                    digest: row.try_get("digest")?,
                    manifest: row.try_get("manifest")?,
                    size_bytes: as_u64(row, "size_bytes")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                })
            }

            fn bind_all<'q>(&'q self, q: Query<'q>) -> Result<Query<'q>> {
                Ok(q.bind(&self.id)
                    .bind(&self.namespace)
                    .bind(&self.agent_id)
                    .bind(&self.digest)
                    .bind(&self.manifest)
                    .bind(as_i64(self.size_bytes))
                    .bind(self.created_at_ms))
            }
        }

        impl Table for VersionRow {
            const TABLE: &'static str = "agent_versions";
            const KEY: &'static str = "id";
        }

        impl Columns for TaskRow {
            const COLUMNS: &'static str = "id, namespace, agent_id, version_id, filesystem_id, filesystem_mode, project_id, \
                 permissions, status, reason, sandbox_id, session_id, plan, creator, created_at_ms, updated_at_ms, \
                 ended_at_ms, input_tokens, output_tokens, last_seq";

            fn from_row(row: &$row) -> Result<Self> {
                let filesystem_id: Option<String> = row.try_get("filesystem_id")?;
                let filesystem_mode: Option<String> = row.try_get("filesystem_mode")?;
                Ok(TaskRow {
                    id: row.try_get("id")?,
                    namespace: row.try_get("namespace")?,
                    agent_id: row.try_get("agent_id")?,
                    version_id: row.try_get("version_id")?,
                    filesystem: filesystem_id.map(|id| (id, filesystem_mode.unwrap_or_else(|| "ro".to_owned()))),
                    project: row.try_get("project_id")?,
                    permissions: row.try_get("permissions")?,
                    status: row.try_get("status")?,
                    reason: row.try_get("reason")?,
                    sandbox_id: row.try_get("sandbox_id")?,
                    session_id: row.try_get("session_id")?,
                    plan: row.try_get("plan")?,
                    creator: row.try_get("creator")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    updated_at_ms: row.try_get("updated_at_ms")?,
                    ended_at_ms: row.try_get("ended_at_ms")?,
                    input_tokens: as_u64(row, "input_tokens")?,
                    output_tokens: as_u64(row, "output_tokens")?,
                    last_seq: as_u64(row, "last_seq")?,
                })
            }

            fn bind_all<'q>(&'q self, q: Query<'q>) -> Result<Query<'q>> {
                Ok(q.bind(&self.id)
                    .bind(&self.namespace)
                    .bind(&self.agent_id)
                    .bind(&self.version_id)
                    .bind(self.filesystem.as_ref().map(|(id, _)| id.as_str()))
                    .bind(self.filesystem.as_ref().map(|(_, mode)| mode.as_str()))
                    .bind(self.project.as_deref())
                    .bind(&self.permissions)
                    .bind(&self.status)
                    .bind(self.reason.as_deref())
                    .bind(self.sandbox_id.as_deref())
                    .bind(self.session_id.as_deref())
                    .bind(&self.plan)
                    .bind(&self.creator)
                    .bind(self.created_at_ms)
                    .bind(self.updated_at_ms)
                    .bind(self.ended_at_ms)
                    .bind(as_i64(self.input_tokens))
                    .bind(as_i64(self.output_tokens))
                    .bind(as_i64(self.last_seq)))
            }
        }

        impl Table for TaskRow {
            const TABLE: &'static str = "tasks";
            const KEY: &'static str = "id";
        }

        $crate::rows::from_columns!($row; AuditEvent { time_ms, principal, action, resource, decision, status, request_id, detail });

        impl Columns for AuditRecord {
            const COLUMNS: &'static str =
                "chain, seq, time_ms, principal, action, resource, decision, status, request_id, detail, prev_hash, hash";

            fn from_row(row: &$row) -> Result<Self> {
                Ok(AuditRecord {
                    chain: row.try_get("chain")?,
                    seq: as_u64(row, "seq")?,
                    event: AuditEvent::from_row(row)?,
                    prev_hash: row.try_get("prev_hash")?,
                    hash: row.try_get("hash")?,
                })
            }

            fn bind_all<'q>(&'q self, q: Query<'q>) -> Result<Query<'q>> {
                let q = self.event.bind_all(q.bind(&self.chain).bind(as_i64(self.seq)))?;
                Ok(q.bind(&self.prev_hash).bind(&self.hash))
            }
        }

        impl Table for AuditRecord {
            const TABLE: &'static str = "audit_records";
            const KEY: &'static str = "seq";
        }

        $crate::rows::from_columns!($row; Checkpoint in "audit_checkpoints" by "chain" { seq, hash, time_ms });

        $crate::rows::from_columns!($row; ProjectRow in "projects" by "id" { id, namespace, name, created_at_ms });

        $crate::rows::from_columns!($row; FilesystemRow in "filesystems" by "id" {
            id,
            namespace,
            name,
            project_id,
            size_bytes,
            created_at_ms,
            updated_at_ms,
            node,
        });

        $crate::rows::from_columns!($row; PolicyRow in "policies" by "id" { id, namespace, name, text, created_at_ms });

        $crate::rows::from_columns!($row; SecretRow in "secrets" by "name" { id, namespace, name, sealed, created_at_ms, updated_at_ms });

        impl Columns for ImageRow {
            const COLUMNS: &'static str =
                "id, namespace, name, digest, config, layers, size_bytes, source, created_at_ms, status";

            fn from_row(row: &$row) -> Result<Self> {
                let layers: String = row.try_get("layers")?;
                Ok(ImageRow {
                    id: row.try_get("id")?,
                    namespace: row.try_get("namespace")?,
                    name: row.try_get("name")?,
                    digest: row.try_get("digest")?,
                    config: row.try_get("config")?,
                    layers: names(&layers, "image layers")?,
                    size_bytes: as_u64(row, "size_bytes")?,
                    source: row.try_get("source")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    status: row.try_get("status")?,
                })
            }

            fn bind_all<'q>(&'q self, q: Query<'q>) -> Result<Query<'q>> {
                let layers = serde_json::to_string(&self.layers).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(q.bind(&self.id)
                    .bind(self.namespace.as_deref())
                    .bind(&self.name)
                    .bind(&self.digest)
                    .bind(&self.config)
                    .bind(layers)
                    .bind(as_i64(self.size_bytes))
                    .bind(&self.source)
                    .bind(self.created_at_ms)
                    .bind(&self.status))
            }
        }

        impl Table for ImageRow {
            const TABLE: &'static str = "images";
            const KEY: &'static str = "id";
        }

        $crate::rows::from_columns!($row; Quotas {
            cpu_millis,
            memory_bytes,
            disk_bytes,
            max_sandboxes,
            pids_per_sandbox,
            max_sandbox_ttl_seconds,
            api_requests_per_second,
            max_concurrent_execs,
        });

        impl Columns for NamespaceRow {
            const COLUMNS: &'static str = "name, isolation, cpu_millis, memory_bytes, disk_bytes, max_sandboxes, \
                 pids_per_sandbox, max_sandbox_ttl_seconds, api_requests_per_second, max_concurrent_execs, created_at_ms, updated_at_ms, id_start, id_count, incarnation, egress, placement";

            fn from_row(row: &$row) -> Result<Self> {
                let id_range = |col: &str| -> Result<u32> {
                    let v: Option<i64> = row.try_get(col)?;
                    v.and_then(|s| u32::try_from(s).ok())
                        .ok_or_else(|| StoreError::Corrupt("namespace without a host id range".into()))
                };
                let incarnation: Option<String> = row.try_get("incarnation")?;
                Ok(NamespaceRow {
                    name: row.try_get("name")?,
                    isolation: row.try_get("isolation")?,
                    quotas: Quotas::from_row(row)?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    updated_at_ms: row.try_get("updated_at_ms")?,
                    id_start: id_range("id_start")?,
                    id_count: id_range("id_count")?,
                    incarnation: incarnation.ok_or_else(|| StoreError::Corrupt("namespace without incarnation".into()))?,
                    egress: json_column(row, "egress", "namespace egress")?,
                    placement: json_column(row, "placement", "namespace placement")?.unwrap_or_default(),
                })
            }

            fn bind_all<'q>(&'q self, q: Query<'q>) -> Result<Query<'q>> {
                Ok(self
                    .quotas
                    .bind_all(q.bind(&self.name).bind(&self.isolation))?
                    .bind(self.created_at_ms)
                    .bind(self.updated_at_ms)
                    .bind(i64::from(self.id_start))
                    .bind(i64::from(self.id_count))
                    .bind(&self.incarnation)
                    .bind(to_json(self.egress.as_ref())?)
                    .bind(placement_column(&self.placement)?))
            }
        }

        impl Table for NamespaceRow {
            const TABLE: &'static str = "namespaces";
            const KEY: &'static str = "name";
        }

        impl Columns for KeyRow {
            const COLUMNS: &'static str = "id, namespace, name, role, token_hash, created_at_ms, expires_at_ms, projects";

            fn from_row(row: &$row) -> Result<Self> {
                let role: String = row.try_get("role")?;
                let projects: Option<String> = row.try_get("projects")?;
                Ok(KeyRow {
                    id: row.try_get("id")?,
                    namespace: row.try_get("namespace")?,
                    name: row.try_get("name")?,
                    role: Role::from_str(&role).map_err(StoreError::Corrupt)?,
                    token_hash: row.try_get("token_hash")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    expires_at_ms: row.try_get("expires_at_ms")?,
                    projects: projects.map(|t| names(&t, "key projects")).transpose()?,
                })
            }

            fn bind_all<'q>(&'q self, q: Query<'q>) -> Result<Query<'q>> {
                let projects = self.projects.as_ref().map(|p| serde_json::to_string(p).unwrap_or_default());
                Ok(q.bind(&self.id)
                    .bind(&self.namespace)
                    .bind(&self.name)
                    .bind(self.role.as_str())
                    .bind(&self.token_hash)
                    .bind(self.created_at_ms)
                    .bind(self.expires_at_ms)
                    .bind(projects))
            }
        }

        impl Table for KeyRow {
            const TABLE: &'static str = "api_keys";
            const KEY: &'static str = "id";
        }

        impl Columns for SandboxRow {
            const COLUMNS: &'static str = "id, namespace, status, reason, isolation, cpu_millis, memory_bytes, pids, \
                 ttl_seconds, created_at_ms, expires_at_ms, ended_at_ms, filesystem_id, filesystem_mode, metered_cpu_ns, \
                 metered_at_ms, metered_io_read_bytes, metered_io_write_bytes, creator, workload_token_hash, secrets, project_id, egress, image_id, image, disk_bytes, task_id, pooled, node";

            fn from_row(row: &$row) -> Result<Self> {
                let status: String = row.try_get("status")?;
                let filesystem_id: Option<String> = row.try_get("filesystem_id")?;
                let filesystem_mode: Option<String> = row.try_get("filesystem_mode")?;
                let secrets: String = row.try_get("secrets")?;
                Ok(SandboxRow {
                    id: row.try_get("id")?,
                    namespace: row.try_get("namespace")?,
                    status: SandboxStatus::parse(&status)
                        .ok_or_else(|| StoreError::Corrupt(format!("sandbox status {status}")))?,
                    reason: row.try_get("reason")?,
                    isolation: row.try_get("isolation")?,
                    cpu_millis: as_u64(row, "cpu_millis")?,
                    memory_bytes: as_u64(row, "memory_bytes")?,
                    pids: as_u64(row, "pids")?,
                    ttl_seconds: as_u64(row, "ttl_seconds")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    expires_at_ms: row.try_get("expires_at_ms")?,
                    ended_at_ms: row.try_get("ended_at_ms")?,
                    filesystem: filesystem_id.map(|id| (id, filesystem_mode.unwrap_or_else(|| "ro".to_owned()))),
                    metered: MeterMark {
                        cpu_ns: as_u64(row, "metered_cpu_ns")?,
                        io_read_bytes: as_u64(row, "metered_io_read_bytes")?,
                        io_write_bytes: as_u64(row, "metered_io_write_bytes")?,
                    },
                    metered_at_ms: row.try_get("metered_at_ms")?,
                    creator: row.try_get("creator")?,
                    workload_token_hash: row.try_get("workload_token_hash")?,
                    secrets: names(&secrets, "sandbox secrets")?,
                    project: row.try_get("project_id")?,
                    egress: json_column(row, "egress", "sandbox egress")?,
                    image: json_column(row, "image", "sandbox image")?,
                    disk_bytes: row.try_get::<Option<i64>, _>("disk_bytes")?.map(|v| u64::try_from(v).unwrap_or(0)),
                    task: row.try_get("task_id")?,
                    pooled: row.try_get::<i64, _>("pooled")? != 0,
                    node: row.try_get("node")?,
                })
            }

            fn bind_all<'q>(&'q self, q: Query<'q>) -> Result<Query<'q>> {
                let secrets = serde_json::to_string(&self.secrets).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(q.bind(&self.id)
                    .bind(&self.namespace)
                    .bind(self.status.as_str())
                    .bind(self.reason.as_deref())
                    .bind(&self.isolation)
                    .bind(as_i64(self.cpu_millis))
                    .bind(as_i64(self.memory_bytes))
                    .bind(as_i64(self.pids))
                    .bind(as_i64(self.ttl_seconds))
                    .bind(self.created_at_ms)
                    .bind(self.expires_at_ms)
                    .bind(self.ended_at_ms)
                    .bind(self.filesystem.as_ref().map(|(id, _)| id.as_str()))
                    .bind(self.filesystem.as_ref().map(|(_, mode)| mode.as_str()))
                    .bind(as_i64(self.metered.cpu_ns))
                    .bind(self.metered_at_ms)
                    .bind(as_i64(self.metered.io_read_bytes))
                    .bind(as_i64(self.metered.io_write_bytes))
                    .bind(&self.creator)
                    .bind(self.workload_token_hash.as_deref())
                    .bind(secrets)
                    .bind(self.project.as_deref())
                    .bind(to_json(self.egress.as_ref())?)
                    .bind(self.image.as_ref().map(|i| i.id.as_str()))
                    .bind(to_json(self.image.as_ref())?)
                    .bind(self.disk_bytes.map(as_i64))
                    .bind(self.task.as_deref())
                    .bind(i64::from(self.pooled))
                    .bind(&self.node))
            }
        }

        impl Table for SandboxRow {
            const TABLE: &'static str = "sandboxes";
            const KEY: &'static str = "id";
        }

        $crate::rows::from_columns!($row; UsageDelta {
            cpu_ns,
            memory_byte_ms,
            sandbox_ms,
            memory_peak_bytes,
            exec_count,
            quota_rejections,
            io_read_bytes,
            io_write_bytes,
            egress_bytes_out,
            egress_bytes_in,
            egress_connections,
            egress_denied,
        });

        impl Columns for UsageBucket {
            const COLUMNS: &'static str = "bucket_ms, cpu_ns, memory_byte_ms, sandbox_ms, memory_peak_bytes, exec_count, \
                 quota_rejections, io_read_bytes, io_write_bytes, egress_bytes_out, egress_bytes_in, egress_connections, \
                 egress_denied";

            fn from_row(row: &$row) -> Result<Self> {
                Ok(UsageBucket { bucket_ms: row.try_get("bucket_ms")?, usage: UsageDelta::from_row(row)? })
            }

            fn bind_all<'q>(&'q self, q: Query<'q>) -> Result<Query<'q>> {
                self.usage.bind_all(q.bind(self.bucket_ms))
            }
        }

        impl Table for UsageBucket {
            const TABLE: &'static str = "usage_buckets";
            const KEY: &'static str = "bucket_ms";
        }
    };
}
pub(crate) use row_mappings;

/// Implements `Columns` for a struct whose fields are columns of the same names, each read and
/// bound with `Column`; with `in "<table>" by "<key>"`, `Table` too. Expanded inside
/// [`row_mappings!`], against its row type `$row`.
macro_rules! from_columns {
    ($row:ty; $ty:ident in $table:literal by $key:literal { $($field:ident),+ $(,)? }) => {
        $crate::rows::from_columns!($row; $ty { $($field),+ });
        impl Table for $ty {
            const TABLE: &'static str = $table;
            const KEY: &'static str = $key;
        }
    };
    ($row:ty; $ty:ident { $first:ident $(, $field:ident)* $(,)? }) => {
        impl Columns for $ty {
            const COLUMNS: &'static str = concat!(stringify!($first) $(, ", ", stringify!($field))*);
            fn from_row(row: &$row) -> Result<Self> {
                Ok($ty { $first: Column::read(row, stringify!($first))?, $($field: Column::read(row, stringify!($field))?),* })
            }
            fn bind_all<'q>(&'q self, q: Query<'q>) -> Result<Query<'q>> {
                let q = self.$first.bind_to(q);
                $(let q = self.$field.bind_to(q);)*
                Ok(q)
            }
        }
    };
}
pub(crate) use from_columns;

/// Columns the store's driver decodes as they are (`Column` for each type given), expanded
/// inside [`row_mappings!`].
macro_rules! decoded_columns {
    ($row:ty; $($ty:ty),+) => {$(
        impl Column for $ty {
            fn read(row: &$row, col: &str) -> Result<Self> {
                Ok(row.try_get(col)?)
            }
            fn bind_to<'q>(&'q self, q: Query<'q>) -> Query<'q> {
                q.bind(self)
            }
        }
    )+};
}
pub(crate) use decoded_columns;
