//! The embedded store: one SQLite file in the data dir, in WAL mode with `synchronous=FULL`
//! (an acknowledged write survives a crash), foreign keys on, and migrations compiled into the
//! binary. Writes go through one in-process lock, so a read-then-write such as an audit append
//! never races another writer, and write transactions begin `IMMEDIATE`: they take SQLite's
//! write lock up front (waiting for it if need be) instead of upgrading a read snapshot, which
//! SQLite refuses at once when another connection wrote meanwhile.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bulkhead_core::audit::{self, AuditEvent, AuditRecord, Checkpoint, Verification};
use bulkhead_core::{Quotas, Role};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row, SqlitePool};
use tokio::sync::Mutex;

use crate::{
    AuditQuery, FilesystemRow, IdempotencyClaim, IdempotentReply, KeyRow, MeterMark, NamespaceRow, PolicyRow,
    ProjectRow, QuotaBreach, Result, SandboxRow, SandboxStatus, SecretRow, Store, StoreError, UsageBucket, UsageDelta,
};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "control plane", include_str!("../migrations/sqlite/0001_control_plane.sql")),
    (2, "sandboxes", include_str!("../migrations/sqlite/0002_sandboxes.sql")),
    (3, "filesystems", include_str!("../migrations/sqlite/0003_filesystems.sql")),
    (4, "usage", include_str!("../migrations/sqlite/0004_usage.sql")),
    (5, "io metering", include_str!("../migrations/sqlite/0005_io_metering.sql")),
    (6, "identity", include_str!("../migrations/sqlite/0006_identity.sql")),
    (7, "sandbox project", include_str!("../migrations/sqlite/0007_sandbox_project.sql")),
    (8, "host ids and audit retention", include_str!("../migrations/sqlite/0008_host_ids_and_audit_retention.sql")),
    (9, "namespace incarnation", include_str!("../migrations/sqlite/0009_namespace_incarnation.sql")),
];

/// Records an audit chain keeps unless told otherwise ([`SqliteStore::with_audit_retention`]).
pub const DEFAULT_AUDIT_RETENTION: u64 = 50_000;

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    pool: SqlitePool,
    write: Mutex<()>,
    /// Records each audit chain keeps; older ones are pruned behind a checkpoint.
    audit_retention: u64,
}

fn migrator() -> Migrator {
    let migrations: Vec<Migration> = MIGRATIONS
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(*version, Cow::Borrowed(*description), MigrationType::Simple, Cow::Borrowed(*sql), false)
        })
        .collect();
    Migrator { migrations: Cow::Owned(migrations), ignore_missing: false, locking: true, no_tx: false }
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // Checkpoints run in the background (below), not inside a request's commit, where
            // their fsync of the whole database would land on one unlucky request.
            .pragma("wal_autocheckpoint", "0");
        // WAL mode is a property of the file: set it, and migrate, on one connection before the
        // pool opens any other, so that no connection's setup ever meets a write in flight.
        {
            let mut first = options.clone().journal_mode(SqliteJournalMode::Wal).connect().await?;
            migrator().run(&mut first).await?;
            first.close().await?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        let checkpoints = pool.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                if checkpoints.is_closed() {
                    return;
                }
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&checkpoints).await {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
        });
        Ok(Self { pool, write: Mutex::new(()), audit_retention: DEFAULT_AUDIT_RETENTION })
    }

    /// Keeps at most `records` (at least 1) records per audit chain; the oldest are pruned as
    /// new ones are appended.
    pub fn with_audit_retention(mut self, records: u64) -> Self {
        self.audit_retention = records.max(1);
        self
    }
}

fn as_i64(v: u64) -> i64 {
    // Quotas and sequence numbers are bounded far below i64::MAX by the core's validation.
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn as_u64(row: &SqliteRow, col: &str) -> Result<u64> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col} is negative")))
}

fn namespace_row(row: &SqliteRow) -> Result<NamespaceRow> {
    Ok(NamespaceRow {
        name: row.try_get("name")?,
        isolation: row.try_get("isolation")?,
        quotas: Quotas {
            cpu_millis: as_u64(row, "cpu_millis")?,
            memory_bytes: as_u64(row, "memory_bytes")?,
            disk_bytes: as_u64(row, "disk_bytes")?,
            max_sandboxes: as_u64(row, "max_sandboxes")?,
            pids_per_sandbox: as_u64(row, "pids_per_sandbox")?,
            max_sandbox_ttl_seconds: as_u64(row, "max_sandbox_ttl_seconds")?,
        },
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        id_start: {
            let v: Option<i64> = row.try_get("id_start")?;
            v.and_then(|s| u32::try_from(s).ok())
                .ok_or_else(|| StoreError::Corrupt("namespace without a host id range".into()))?
        },
        id_count: {
            let v: Option<i64> = row.try_get("id_count")?;
            v.and_then(|s| u32::try_from(s).ok())
                .ok_or_else(|| StoreError::Corrupt("namespace without a host id range".into()))?
        },
        incarnation: {
            let incarnation: Option<String> = row.try_get("incarnation")?;
            incarnation.ok_or_else(|| StoreError::Corrupt("namespace without incarnation".into()))?
        },
    })
}

fn sandbox_row(row: &SqliteRow) -> Result<SandboxRow> {
    let status: String = row.try_get("status")?;
    Ok(SandboxRow {
        id: row.try_get("id")?,
        namespace: row.try_get("namespace")?,
        status: SandboxStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("sandbox status {status}")))?,
        reason: row.try_get("reason")?,
        isolation: row.try_get("isolation")?,
        cpu_millis: as_u64(row, "cpu_millis")?,
        memory_bytes: as_u64(row, "memory_bytes")?,
        pids: as_u64(row, "pids")?,
        ttl_seconds: as_u64(row, "ttl_seconds")?,
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        ended_at_ms: row.try_get("ended_at_ms")?,
        filesystem: {
            let id: Option<String> = row.try_get("filesystem_id")?;
            let mode: Option<String> = row.try_get("filesystem_mode")?;
            id.map(|id| (id, mode.unwrap_or_else(|| "ro".to_owned())))
        },
        metered: MeterMark {
            cpu_ns: as_u64(row, "metered_cpu_ns")?,
            io_read_bytes: as_u64(row, "metered_io_read_bytes")?,
            io_write_bytes: as_u64(row, "metered_io_write_bytes")?,
        },
        metered_at_ms: row.try_get("metered_at_ms")?,
        creator: row.try_get("creator")?,
        workload_token_hash: row.try_get("workload_token_hash")?,
        secrets: {
            let text: String = row.try_get("secrets")?;
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("sandbox secrets: {e}")))?
        },
        project: row.try_get("project_id")?,
    })
}

fn policy_row(row: &SqliteRow) -> Result<PolicyRow> {
    Ok(PolicyRow {
        id: row.try_get("id")?,
        namespace: row.try_get("namespace")?,
        name: row.try_get("name")?,
        text: row.try_get("text")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

fn secret_row(row: &SqliteRow) -> Result<SecretRow> {
    Ok(SecretRow {
        id: row.try_get("id")?,
        namespace: row.try_get("namespace")?,
        name: row.try_get("name")?,
        sealed: row.try_get("sealed")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

const USAGE_UPSERT: &str = "INSERT INTO usage_buckets (namespace, bucket_ms, cpu_ns, memory_byte_ms, sandbox_ms, \
     memory_peak_bytes, exec_count, quota_rejections, io_read_bytes, io_write_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (namespace, bucket_ms) DO UPDATE SET cpu_ns = cpu_ns + excluded.cpu_ns, \
     memory_byte_ms = memory_byte_ms + excluded.memory_byte_ms, sandbox_ms = sandbox_ms + excluded.sandbox_ms, \
     memory_peak_bytes = MAX(memory_peak_bytes, excluded.memory_peak_bytes), \
     exec_count = exec_count + excluded.exec_count, quota_rejections = quota_rejections + excluded.quota_rejections, \
     io_read_bytes = io_read_bytes + excluded.io_read_bytes, io_write_bytes = io_write_bytes + excluded.io_write_bytes";

fn usage_query<'q>(
    namespace: &'q str,
    bucket_ms: i64,
    d: &UsageDelta,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    sqlx::query(USAGE_UPSERT)
        .bind(namespace)
        .bind(bucket_ms)
        .bind(as_i64(d.cpu_ns))
        .bind(as_i64(d.memory_byte_ms))
        .bind(as_i64(d.sandbox_ms))
        .bind(as_i64(d.memory_peak_bytes))
        .bind(as_i64(d.exec_count))
        .bind(as_i64(d.quota_rejections))
        .bind(as_i64(d.io_read_bytes))
        .bind(as_i64(d.io_write_bytes))
}

const SANDBOX_COLUMNS: &str = "id, namespace, status, reason, isolation, cpu_millis, memory_bytes, pids, ttl_seconds, \
     created_at_ms, expires_at_ms, ended_at_ms, filesystem_id, filesystem_mode, metered_cpu_ns, metered_at_ms, \
    metered_io_read_bytes, metered_io_write_bytes, creator, workload_token_hash, secrets, project_id";

fn key_row(row: &SqliteRow) -> Result<KeyRow> {
    let role: String = row.try_get("role")?;
    Ok(KeyRow {
        id: row.try_get("id")?,
        namespace: row.try_get("namespace")?,
        name: row.try_get("name")?,
        role: Role::from_str(&role).map_err(StoreError::Corrupt)?,
        token_hash: row.try_get("token_hash")?,
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        projects: {
            let text: Option<String> = row.try_get("projects")?;
            match text {
                None => None,
                Some(t) => {
                    Some(serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("key projects: {e}")))?)
                }
            }
        },
    })
}

fn project_row(row: &SqliteRow) -> Result<ProjectRow> {
    Ok(ProjectRow {
        id: row.try_get("id")?,
        namespace: row.try_get("namespace")?,
        name: row.try_get("name")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

fn filesystem_row(row: &SqliteRow) -> Result<FilesystemRow> {
    Ok(FilesystemRow {
        id: row.try_get("id")?,
        namespace: row.try_get("namespace")?,
        name: row.try_get("name")?,
        project_id: row.try_get("project_id")?,
        size_bytes: as_u64(row, "size_bytes")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

const FILESYSTEM_COLUMNS: &str = "id, namespace, name, project_id, size_bytes, created_at_ms, updated_at_ms";

fn audit_row(row: &SqliteRow) -> Result<AuditRecord> {
    let status: i64 = row.try_get("status")?;
    Ok(AuditRecord {
        chain: row.try_get("chain")?,
        seq: as_u64(row, "seq")?,
        event: AuditEvent {
            time_ms: row.try_get("time_ms")?,
            principal: row.try_get("principal")?,
            action: row.try_get("action")?,
            resource: row.try_get("resource")?,
            decision: row.try_get("decision")?,
            status: u16::try_from(status).map_err(|_| StoreError::Corrupt("status out of range".into()))?,
            request_id: row.try_get("request_id")?,
            detail: row.try_get("detail")?,
        },
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// The chain's checkpoint as stored.
/// A chain's head: its last sequence number and hash; `None` for a chain with no record yet.
async fn read_head(conn: &mut sqlx::SqliteConnection, chain: &str) -> Result<Option<(u64, String)>> {
    let row = sqlx::query("SELECT last_seq, last_hash FROM audit_heads WHERE chain = ?")
        .bind(chain)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => Ok(Some((as_u64(&row, "last_seq")?, row.try_get("last_hash")?))),
        None => Ok(None),
    }
}

async fn read_checkpoint(conn: &mut sqlx::SqliteConnection, chain: &str) -> Result<Option<Checkpoint>> {
    let row = sqlx::query("SELECT seq, hash, time_ms FROM audit_checkpoints WHERE chain = ?")
        .bind(chain)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => Ok(Some(Checkpoint {
            seq: as_u64(&row, "seq")?,
            hash: row.try_get("hash")?,
            time_ms: row.try_get("time_ms")?,
        })),
        None => Ok(None),
    }
}

/// The last pruned sequence number of a chain; 0 when nothing was pruned.
async fn checkpoint_seq(conn: &mut sqlx::SqliteConnection, chain: &str) -> Result<u64> {
    Ok(read_checkpoint(conn, chain).await?.map_or(0, |c| c.seq))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

const NAMESPACE_COLUMNS: &str = "name, isolation, cpu_millis, memory_bytes, disk_bytes, max_sandboxes, \
     pids_per_sandbox, max_sandbox_ttl_seconds, created_at_ms, updated_at_ms, id_start, id_count, incarnation";
const NAMESPACE_INSERT_COLUMNS: &str = NAMESPACE_COLUMNS;
/// The columns `audit_row` reads: every query of records selects exactly these.
const AUDIT_COLUMNS: &str =
    "chain, seq, time_ms, principal, action, resource, decision, status, request_id, detail, prev_hash, hash";
const KEY_COLUMNS: &str = "id, namespace, name, role, token_hash, created_at_ms, expires_at_ms, projects";

#[async_trait]
impl Store for SqliteStore {
    async fn admin_token_hash(&self) -> Result<Option<String>> {
        let row = sqlx::query("SELECT admin_token_hash FROM platform WHERE id = 1").fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.try_get("admin_token_hash")).transpose()?)
    }

    async fn init_admin_token_hash(&self, hash: &str, now_ms: i64) -> Result<()> {
        let _w = self.write.lock().await;
        let r = sqlx::query("INSERT INTO platform (id, admin_token_hash, created_at_ms) VALUES (1, ?, ?)")
            .bind(hash)
            .bind(now_ms)
            .execute(&self.pool)
            .await;
        match r {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("admin token".into())),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    async fn create_namespace(&self, ns: &NamespaceRow) -> Result<()> {
        let _w = self.write.lock().await;
        let q = &ns.quotas;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let r = sqlx::query(&format!(
            "INSERT INTO namespaces ({NAMESPACE_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&ns.name)
        .bind(&ns.isolation)
        .bind(as_i64(q.cpu_millis))
        .bind(as_i64(q.memory_bytes))
        .bind(as_i64(q.disk_bytes))
        .bind(as_i64(q.max_sandboxes))
        .bind(as_i64(q.pids_per_sandbox))
        .bind(as_i64(q.max_sandbox_ttl_seconds))
        .bind(ns.created_at_ms)
        .bind(ns.updated_at_ms)
        .bind(i64::from(ns.id_start))
        .bind(i64::from(ns.id_count))
        .bind(&ns.incarnation)
        .execute(&mut *tx)
        .await;
        match r {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(format!("namespace {}", ns.name))),
            other => other?,
        };
        tx.commit().await?;
        Ok(())
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<NamespaceRow>> {
        let row = sqlx::query(&format!("SELECT {NAMESPACE_COLUMNS} FROM namespaces WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(namespace_row).transpose()
    }

    async fn list_namespaces(&self, after: Option<&str>, limit: u32, only: Option<&str>) -> Result<Vec<NamespaceRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {NAMESPACE_COLUMNS} FROM namespaces WHERE name > ? AND (? IS NULL OR name = ?) ORDER BY name LIMIT ?"
        ))
        .bind(after.unwrap_or(""))
        .bind(only)
        .bind(only)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(namespace_row).collect()
    }

    async fn update_namespace_quotas(&self, name: &str, q: &Quotas, now_ms: i64) -> Result<Option<NamespaceRow>> {
        let _w = self.write.lock().await;
        let row = sqlx::query(&format!(
            "UPDATE namespaces SET cpu_millis = ?, memory_bytes = ?, disk_bytes = ?, max_sandboxes = ?, \
             pids_per_sandbox = ?, max_sandbox_ttl_seconds = ?, updated_at_ms = ? WHERE name = ? \
             RETURNING {NAMESPACE_COLUMNS}"
        ))
        .bind(as_i64(q.cpu_millis))
        .bind(as_i64(q.memory_bytes))
        .bind(as_i64(q.disk_bytes))
        .bind(as_i64(q.max_sandboxes))
        .bind(as_i64(q.pids_per_sandbox))
        .bind(as_i64(q.max_sandbox_ttl_seconds))
        .bind(now_ms)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(namespace_row).transpose()
    }

    async fn delete_namespace(&self, name: &str) -> Result<bool> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let deleted = sqlx::query("DELETE FROM namespaces WHERE name = ?").bind(name).execute(&mut *tx).await?;
        if deleted.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM audit_records WHERE chain = ?").bind(name).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM audit_heads WHERE chain = ?").bind(name).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM audit_checkpoints WHERE chain = ?").bind(name).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM idempotency WHERE scope LIKE ? ESCAPE '\\'")
            .bind(format!("ns:{name}:%"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn create_key(&self, key: &KeyRow) -> Result<()> {
        let _w = self.write.lock().await;
        let projects = key.projects.as_ref().map(|p| serde_json::to_string(p).unwrap_or_default());
        let r = sqlx::query(&format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(&key.id)
            .bind(&key.namespace)
            .bind(&key.name)
            .bind(key.role.as_str())
            .bind(&key.token_hash)
            .bind(key.created_at_ms)
            .bind(key.expires_at_ms)
            .bind(projects)
            .execute(&self.pool)
            .await;
        match r {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!("key {}", key.name))),
            Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                Err(StoreError::NotFound(format!("namespace {}", key.namespace)))
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    async fn get_key(&self, namespace: &str, id: &str) -> Result<Option<KeyRow>> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE namespace = ? AND id = ?"))
            .bind(namespace)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_row).transpose()
    }

    async fn list_keys(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<KeyRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE namespace = ? AND id > ? ORDER BY id LIMIT ?"
        ))
        .bind(namespace)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_row).collect()
    }

    async fn delete_key(&self, namespace: &str, id: &str) -> Result<bool> {
        let _w = self.write.lock().await;
        let r = sqlx::query("DELETE FROM api_keys WHERE namespace = ? AND id = ?")
            .bind(namespace)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn key_by_token_hash(&self, token_hash: &str) -> Result<Option<KeyRow>> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE token_hash = ?"))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_row).transpose()
    }

    async fn append_audit(&self, chain: &str, event: AuditEvent) -> Result<AuditRecord> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let head = read_head(&mut tx, chain).await?;
        let record = audit::seal(chain, head.as_ref().map(|(s, h)| (*s, h.as_str())), event);
        let e = &record.event;
        sqlx::query(
            "INSERT INTO audit_records (chain, seq, time_ms, principal, action, resource, decision, status, \
             request_id, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(chain)
        .bind(as_i64(record.seq))
        .bind(e.time_ms)
        .bind(&e.principal)
        .bind(&e.action)
        .bind(&e.resource)
        .bind(&e.decision)
        .bind(i64::from(e.status))
        .bind(&e.request_id)
        .bind(&e.detail)
        .bind(&record.prev_hash)
        .bind(&record.hash)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO audit_heads (chain, last_seq, last_hash) VALUES (?, ?, ?) \
             ON CONFLICT (chain) DO UPDATE SET last_seq = excluded.last_seq, last_hash = excluded.last_hash",
        )
        .bind(chain)
        .bind(as_i64(record.seq))
        .bind(&record.hash)
        .execute(&mut *tx)
        .await?;
        // Retention: keep the newest `audit_retention` records; the checkpoint moves to the last
        // record pruned, whose hash the first record kept links to. Sequence numbers are
        // contiguous, so what is kept is `seq - checkpoint`.
        let pruned_through = checkpoint_seq(&mut tx, chain).await?;
        let keep_from = record.seq.saturating_sub(self.audit_retention);
        if keep_from > pruned_through {
            let last: String = sqlx::query("SELECT hash FROM audit_records WHERE chain = ? AND seq = ?")
                .bind(chain)
                .bind(as_i64(keep_from))
                .fetch_one(&mut *tx)
                .await?
                .try_get("hash")?;
            sqlx::query("DELETE FROM audit_records WHERE chain = ? AND seq <= ?")
                .bind(chain)
                .bind(as_i64(keep_from))
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO audit_checkpoints (chain, seq, hash, time_ms) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, time_ms = excluded.time_ms",
            )
            .bind(chain)
            .bind(as_i64(keep_from))
            .bind(&last)
            .bind(record.event.time_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(record)
    }

    async fn store_id(&self) -> Result<String> {
        let row = sqlx::query("SELECT store_id FROM store_identity WHERE id = 1").fetch_one(&self.pool).await?;
        let id: String = row.try_get("store_id")?;
        let ok = id.strip_prefix("sto_").is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(StoreError::Corrupt(format!("store id {id:?}")));
        }
        Ok(id)
    }

    async fn audit_checkpoint(&self, chain: &str) -> Result<Option<Checkpoint>> {
        let mut conn = self.pool.acquire().await?;
        read_checkpoint(&mut conn, chain).await
    }

    async fn verify_audit(&self, chain: &str) -> Result<Verification> {
        // One read transaction: in WAL mode its snapshot holds for every statement in it, so
        // the checkpoint, the records and the head agree however many appends run meanwhile.
        let mut tx = self.pool.begin().await?;
        let checkpoint = read_checkpoint(&mut tx, chain).await?;
        let head = read_head(&mut tx, chain).await?;
        let mut verifier = match &checkpoint {
            Some(c) => audit::Verifier::after(chain, c),
            None => audit::Verifier::new(chain),
        };
        let mut after = checkpoint.as_ref().map_or(0, |c| c.seq);
        const BATCH: i64 = 1000;
        loop {
            let rows = sqlx::query(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_records WHERE chain = ? AND seq > ? ORDER BY seq LIMIT ?"
            ))
            .bind(chain)
            .bind(as_i64(after))
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await?;
            for row in &rows {
                let record = audit_row(row)?;
                after = record.seq;
                verifier.push(&record);
            }
            if rows.len() < BATCH as usize {
                break;
            }
        }
        tx.commit().await?;
        Ok(verifier.finish(head.as_ref().map(|(s, h)| (*s, h.as_str()))))
    }

    async fn list_audit(&self, chain: &str, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_records WHERE chain = ? AND seq > ? \
             AND (? IS NULL OR action = ?) AND (? IS NULL OR time_ms >= ?) AND (? IS NULL OR time_ms < ?) \
             ORDER BY seq LIMIT ?"
        ))
        .bind(chain)
        .bind(as_i64(q.after_seq))
        .bind(q.action.as_deref())
        .bind(q.action.as_deref())
        .bind(q.since_ms)
        .bind(q.since_ms)
        .bind(q.until_ms)
        .bind(q.until_ms)
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_row).collect()
    }

    async fn audit_head(&self, chain: &str) -> Result<Option<(u64, String)>> {
        let mut conn = self.pool.acquire().await?;
        read_head(&mut conn, chain).await
    }

    async fn admit_sandbox(&self, sbx: &SandboxRow, quotas: &Quotas) -> Result<()> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(cpu_millis), 0) AS cpu, COALESCE(SUM(memory_bytes), 0) AS mem \
             FROM sandboxes WHERE namespace = ? AND status IN ('creating', 'running')",
        )
        .bind(&sbx.namespace)
        .fetch_one(&mut *tx)
        .await?;
        let (n, cpu, mem) = (as_u64(&row, "n")?, as_u64(&row, "cpu")?, as_u64(&row, "mem")?);
        let checks = [
            ("max_sandboxes", quotas.max_sandboxes, n, 1),
            ("cpu_millis", quotas.cpu_millis, cpu, sbx.cpu_millis),
            ("memory_bytes", quotas.memory_bytes, mem, sbx.memory_bytes),
        ];
        for (quota, limit, used, requested) in checks {
            if used.saturating_add(requested) > limit {
                return Err(StoreError::Quota(QuotaBreach { quota, limit, used, requested }));
            }
        }
        sqlx::query(&format!(
            "INSERT INTO sandboxes ({SANDBOX_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&sbx.id)
        .bind(&sbx.namespace)
        .bind(sbx.status.as_str())
        .bind(sbx.reason.as_deref())
        .bind(&sbx.isolation)
        .bind(as_i64(sbx.cpu_millis))
        .bind(as_i64(sbx.memory_bytes))
        .bind(as_i64(sbx.pids))
        .bind(as_i64(sbx.ttl_seconds))
        .bind(sbx.created_at_ms)
        .bind(sbx.expires_at_ms)
        .bind(sbx.ended_at_ms)
        .bind(sbx.filesystem.as_ref().map(|(id, _)| id.as_str()))
        .bind(sbx.filesystem.as_ref().map(|(_, mode)| mode.as_str()))
        .bind(as_i64(sbx.metered.cpu_ns))
        .bind(sbx.metered_at_ms)
        .bind(as_i64(sbx.metered.io_read_bytes))
        .bind(as_i64(sbx.metered.io_write_bytes))
        .bind(&sbx.creator)
        .bind(sbx.workload_token_hash.as_deref())
        .bind(serde_json::to_string(&sbx.secrets).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .bind(sbx.project.as_deref())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_sandbox(&self, namespace: &str, id: &str) -> Result<Option<SandboxRow>> {
        let row = sqlx::query(&format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE namespace = ? AND id = ?"))
            .bind(namespace)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(sandbox_row).transpose()
    }

    async fn list_sandboxes(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<SandboxRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE namespace = ? AND id > ? ORDER BY id LIMIT ?"
        ))
        .bind(namespace)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sandbox_row).collect()
    }

    async fn active_sandboxes(&self) -> Result<Vec<SandboxRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE status IN ('creating', 'running') ORDER BY expires_at_ms"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sandbox_row).collect()
    }

    async fn set_sandbox_status(
        &self,
        id: &str,
        status: SandboxStatus,
        reason: Option<&str>,
        ended_at_ms: Option<i64>,
    ) -> Result<Option<SandboxRow>> {
        let _w = self.write.lock().await;
        let row = sqlx::query(&format!(
            "UPDATE sandboxes SET status = ?, reason = COALESCE(?, reason), ended_at_ms = COALESCE(?, ended_at_ms) \
             WHERE id = ? RETURNING {SANDBOX_COLUMNS}"
        ))
        .bind(status.as_str())
        .bind(reason)
        .bind(ended_at_ms)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(sandbox_row).transpose()
    }

    async fn create_project(&self, p: &ProjectRow) -> Result<()> {
        let _w = self.write.lock().await;
        let r = sqlx::query("INSERT INTO projects (id, namespace, name, created_at_ms) VALUES (?, ?, ?, ?)")
            .bind(&p.id)
            .bind(&p.namespace)
            .bind(&p.name)
            .bind(p.created_at_ms)
            .execute(&self.pool)
            .await;
        match r {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!("project {}", p.name))),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    async fn get_project(&self, namespace: &str, id: &str) -> Result<Option<ProjectRow>> {
        let row = sqlx::query("SELECT id, namespace, name, created_at_ms FROM projects WHERE namespace = ? AND id = ?")
            .bind(namespace)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(project_row).transpose()
    }

    async fn list_projects(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<ProjectRow>> {
        let rows = sqlx::query(
            "SELECT id, namespace, name, created_at_ms FROM projects WHERE namespace = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(namespace)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(project_row).collect()
    }

    async fn delete_project(&self, namespace: &str, id: &str) -> Result<bool> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let used: i64 = sqlx::query("SELECT COUNT(*) AS n FROM filesystems WHERE project_id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if used > 0 {
            return Err(StoreError::Conflict(format!("filesystems of project {id}")));
        }
        let r = sqlx::query("DELETE FROM projects WHERE namespace = ? AND id = ?")
            .bind(namespace)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    async fn admit_filesystem(&self, f: &FilesystemRow, disk_bytes: u64) -> Result<()> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let used: i64 = sqlx::query("SELECT COALESCE(SUM(size_bytes), 0) AS used FROM filesystems WHERE namespace = ?")
            .bind(&f.namespace)
            .fetch_one(&mut *tx)
            .await?
            .try_get("used")?;
        let used = u64::try_from(used).unwrap_or(0);
        if used.saturating_add(f.size_bytes) > disk_bytes {
            return Err(StoreError::Quota(QuotaBreach {
                quota: "disk_bytes",
                limit: disk_bytes,
                used,
                requested: f.size_bytes,
            }));
        }
        let r = sqlx::query(&format!("INSERT INTO filesystems ({FILESYSTEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"))
            .bind(&f.id)
            .bind(&f.namespace)
            .bind(&f.name)
            .bind(f.project_id.as_deref())
            .bind(as_i64(f.size_bytes))
            .bind(f.created_at_ms)
            .bind(f.updated_at_ms)
            .execute(&mut *tx)
            .await;
        match r {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(format!("filesystem {}", f.name))),
            other => other?,
        };
        tx.commit().await?;
        Ok(())
    }

    async fn get_filesystem(&self, namespace: &str, id: &str) -> Result<Option<FilesystemRow>> {
        let row = sqlx::query(&format!("SELECT {FILESYSTEM_COLUMNS} FROM filesystems WHERE namespace = ? AND id = ?"))
            .bind(namespace)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(filesystem_row).transpose()
    }

    async fn list_filesystems(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<FilesystemRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {FILESYSTEM_COLUMNS} FROM filesystems WHERE namespace = ? AND id > ? ORDER BY id LIMIT ?"
        ))
        .bind(namespace)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(filesystem_row).collect()
    }

    async fn all_filesystems(&self) -> Result<Vec<FilesystemRow>> {
        let rows = sqlx::query(&format!("SELECT {FILESYSTEM_COLUMNS} FROM filesystems ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(filesystem_row).collect()
    }

    async fn resize_filesystem(
        &self,
        namespace: &str,
        id: &str,
        size_bytes: u64,
        disk_bytes: u64,
        now_ms: i64,
    ) -> Result<Option<FilesystemRow>> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let used: i64 =
            sqlx::query("SELECT COALESCE(SUM(size_bytes), 0) AS used FROM filesystems WHERE namespace = ? AND id != ?")
                .bind(namespace)
                .bind(id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("used")?;
        let used = u64::try_from(used).unwrap_or(0);
        if used.saturating_add(size_bytes) > disk_bytes {
            return Err(StoreError::Quota(QuotaBreach {
                quota: "disk_bytes",
                limit: disk_bytes,
                used,
                requested: size_bytes,
            }));
        }
        let row = sqlx::query(&format!(
            "UPDATE filesystems SET size_bytes = ?, updated_at_ms = ? WHERE namespace = ? AND id = ? RETURNING {FILESYSTEM_COLUMNS}"
        ))
        .bind(as_i64(size_bytes))
        .bind(now_ms)
        .bind(namespace)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(filesystem_row).transpose()
    }

    async fn delete_filesystem(&self, namespace: &str, id: &str) -> Result<bool> {
        let _w = self.write.lock().await;
        let r = sqlx::query("DELETE FROM filesystems WHERE namespace = ? AND id = ?")
            .bind(namespace)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn namespace_use(&self, namespace: &str) -> Result<crate::NamespaceUse> {
        let rows = sqlx::query(
            "SELECT 's' AS kind, COUNT(*) AS a, COALESCE(SUM(cpu_millis), 0) AS b, COALESCE(SUM(memory_bytes), 0) AS c, \
             '' AS id FROM sandboxes WHERE namespace = ?1 AND status IN ('creating', 'running') \
             UNION ALL SELECT 'f', 0, size_bytes, 0, id FROM filesystems WHERE namespace = ?1",
        )
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?;
        let mut u = crate::NamespaceUse::default();
        for row in &rows {
            let kind: String = row.try_get("kind")?;
            if kind == "s" {
                u.sandboxes = as_u64(row, "a")?;
                u.cpu_millis = as_u64(row, "b")?;
                u.memory_bytes = as_u64(row, "c")?;
            } else {
                u.disk_bytes += as_u64(row, "b")?;
                u.filesystem_ids.push(row.try_get("id")?);
            }
        }
        Ok(u)
    }

    async fn sandboxes_using(&self, filesystem_id: &str) -> Result<Vec<SandboxRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE filesystem_id = ? AND status IN ('creating', 'running')"
        ))
        .bind(filesystem_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sandbox_row).collect()
    }

    async fn add_usage(&self, namespace: &str, bucket_ms: i64, delta: &UsageDelta) -> Result<()> {
        let _w = self.write.lock().await;
        usage_query(namespace, bucket_ms, delta).execute(&self.pool).await?;
        Ok(())
    }

    async fn meter_sandbox(
        &self,
        sandbox: &SandboxRow,
        bucket_ms: i64,
        delta: &UsageDelta,
        mark: MeterMark,
        at_ms: i64,
    ) -> Result<()> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let marked = sqlx::query(
            "UPDATE sandboxes SET metered_cpu_ns = ?, metered_io_read_bytes = ?, metered_io_write_bytes = ?, \
             metered_at_ms = ? WHERE id = ? AND namespace = ?",
        )
        .bind(as_i64(mark.cpu_ns))
        .bind(as_i64(mark.io_read_bytes))
        .bind(as_i64(mark.io_write_bytes))
        .bind(at_ms)
        .bind(&sandbox.id)
        .bind(&sandbox.namespace)
        .execute(&mut *tx)
        .await?;
        // The sandbox went with its namespace: its usage must not land in the ledger of a
        // namespace created since under the same name.
        if marked.rows_affected() == 0 {
            return Ok(());
        }
        usage_query(&sandbox.namespace, bucket_ms, delta).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_identity(&self, namespace: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT config FROM namespace_identity WHERE namespace = ?")
            .bind(namespace)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("config")).transpose()?)
    }

    async fn put_identity(&self, namespace: &str, config: Option<&str>, now_ms: i64) -> Result<()> {
        let _w = self.write.lock().await;
        let r = match config {
            Some(config) => {
                sqlx::query(
                    "INSERT INTO namespace_identity (namespace, config, updated_at_ms) VALUES (?, ?, ?) \
                     ON CONFLICT (namespace) DO UPDATE SET config = excluded.config, updated_at_ms = excluded.updated_at_ms",
                )
                .bind(namespace)
                .bind(config)
                .bind(now_ms)
                .execute(&self.pool)
                .await
            }
            None => {
                sqlx::query("DELETE FROM namespace_identity WHERE namespace = ?").bind(namespace).execute(&self.pool).await
            }
        };
        match r {
            Err(e) if is_foreign_key_violation(&e) => Err(StoreError::NotFound(format!("namespace {namespace}"))),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    async fn create_policy(&self, p: &PolicyRow, max: u32) -> Result<()> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM policies WHERE namespace = ?")
            .bind(&p.namespace)
            .fetch_one(&mut *tx)
            .await?;
        if count >= i64::from(max) {
            return Err(StoreError::Quota(QuotaBreach {
                quota: "policies",
                limit: u64::from(max),
                used: u64::try_from(count).unwrap_or(0),
                requested: 1,
            }));
        }
        let r = sqlx::query("INSERT INTO policies (id, namespace, name, text, created_at_ms) VALUES (?, ?, ?, ?, ?)")
            .bind(&p.id)
            .bind(&p.namespace)
            .bind(&p.name)
            .bind(&p.text)
            .bind(p.created_at_ms)
            .execute(&mut *tx)
            .await;
        match r {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(format!("policy {}", p.name))),
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        tx.commit().await?;
        Ok(())
    }

    async fn all_policies(&self, namespace: &str) -> Result<Vec<PolicyRow>> {
        let rows = sqlx::query(
            "SELECT id, namespace, name, text, created_at_ms FROM policies WHERE namespace = ? ORDER BY id",
        )
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(policy_row).collect()
    }

    async fn list_policies(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<PolicyRow>> {
        let rows = sqlx::query(
            "SELECT id, namespace, name, text, created_at_ms FROM policies WHERE namespace = ? AND id > ? \
             ORDER BY id LIMIT ?",
        )
        .bind(namespace)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(policy_row).collect()
    }

    async fn delete_policy(&self, namespace: &str, id: &str) -> Result<bool> {
        let _w = self.write.lock().await;
        let r = sqlx::query("DELETE FROM policies WHERE namespace = ? AND id = ?")
            .bind(namespace)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn data_key(&self, namespace: &str, wrapped: &[u8]) -> Result<Vec<u8>> {
        let _w = self.write.lock().await;
        let r =
            sqlx::query("INSERT INTO namespace_data_keys (namespace, wrapped) VALUES (?, ?) ON CONFLICT DO NOTHING")
                .bind(namespace)
                .bind(wrapped)
                .execute(&self.pool)
                .await;
        if let Err(e) = r {
            if is_foreign_key_violation(&e) {
                return Err(StoreError::NotFound(format!("namespace {namespace}")));
            }
            return Err(e.into());
        }
        let stored: Vec<u8> = sqlx::query_scalar("SELECT wrapped FROM namespace_data_keys WHERE namespace = ?")
            .bind(namespace)
            .fetch_one(&self.pool)
            .await?;
        Ok(stored)
    }

    async fn put_secret(&self, sec: &SecretRow) -> Result<bool> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let updated = sqlx::query("UPDATE secrets SET sealed = ?, updated_at_ms = ? WHERE namespace = ? AND name = ?")
            .bind(&sec.sealed)
            .bind(sec.updated_at_ms)
            .bind(&sec.namespace)
            .bind(&sec.name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 0 {
            let r = sqlx::query(
                "INSERT INTO secrets (id, namespace, name, sealed, created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&sec.id)
            .bind(&sec.namespace)
            .bind(&sec.name)
            .bind(&sec.sealed)
            .bind(sec.created_at_ms)
            .bind(sec.updated_at_ms)
            .execute(&mut *tx)
            .await;
            if let Err(e) = r {
                if is_foreign_key_violation(&e) {
                    return Err(StoreError::NotFound(format!("namespace {}", sec.namespace)));
                }
                return Err(e.into());
            }
        }
        tx.commit().await?;
        Ok(updated == 0)
    }

    async fn get_secret(&self, namespace: &str, name: &str) -> Result<Option<SecretRow>> {
        let row = sqlx::query(
            "SELECT id, namespace, name, sealed, created_at_ms, updated_at_ms FROM secrets WHERE namespace = ? AND name = ?",
        )
        .bind(namespace)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(secret_row).transpose()
    }

    async fn list_secrets(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<SecretRow>> {
        // Metadata only: the sealed value stays in the database.
        let rows = sqlx::query(
            "SELECT id, namespace, name, X'' AS sealed, created_at_ms, updated_at_ms FROM secrets \
             WHERE namespace = ? AND name > ? ORDER BY name LIMIT ?",
        )
        .bind(namespace)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(secret_row).collect()
    }

    async fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool> {
        let _w = self.write.lock().await;
        let r = sqlx::query("DELETE FROM secrets WHERE namespace = ? AND name = ?")
            .bind(namespace)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn sandbox_by_workload_token(&self, token_hash: &str) -> Result<Option<SandboxRow>> {
        let row = sqlx::query(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE workload_token_hash = ? AND status IN ('creating', 'running')"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(sandbox_row).transpose()
    }

    async fn usage(&self, namespace: &str, from_ms: i64, to_ms: i64) -> Result<Vec<UsageBucket>> {
        let rows = sqlx::query(
            "SELECT bucket_ms, cpu_ns, memory_byte_ms, sandbox_ms, memory_peak_bytes, exec_count, quota_rejections, \
             io_read_bytes, io_write_bytes FROM usage_buckets WHERE namespace = ? AND bucket_ms >= ? AND bucket_ms < ? ORDER BY bucket_ms",
        )
        .bind(namespace)
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(UsageBucket {
                    bucket_ms: row.try_get("bucket_ms")?,
                    usage: UsageDelta {
                        cpu_ns: as_u64(row, "cpu_ns")?,
                        memory_byte_ms: as_u64(row, "memory_byte_ms")?,
                        sandbox_ms: as_u64(row, "sandbox_ms")?,
                        memory_peak_bytes: as_u64(row, "memory_peak_bytes")?,
                        exec_count: as_u64(row, "exec_count")?,
                        quota_rejections: as_u64(row, "quota_rejections")?,
                        io_read_bytes: as_u64(row, "io_read_bytes")?,
                        io_write_bytes: as_u64(row, "io_write_bytes")?,
                    },
                })
            })
            .collect()
    }

    async fn claim_idempotent(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
        expired_before_ms: i64,
    ) -> Result<IdempotencyClaim> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM idempotency WHERE scope = ? AND key = ? AND status <> 0 AND created_at_ms < ?")
            .bind(scope)
            .bind(key)
            .bind(expired_before_ms)
            .execute(&mut *tx)
            .await?;
        // A little of the table's expired answers goes with every claim, so it holds about a
        // lifetime's worth of creates.
        sqlx::query(
            "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency \
             WHERE created_at_ms < ? AND status <> 0 ORDER BY created_at_ms LIMIT 16)",
        )
        .bind(expired_before_ms)
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency (scope, key, fingerprint, status, body, created_at_ms) VALUES (?, ?, ?, 0, '', ?) \
             ON CONFLICT (scope, key) DO NOTHING",
        )
        .bind(scope)
        .bind(key)
        .bind(fingerprint)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let claim = if inserted.rows_affected() == 1 {
            IdempotencyClaim::Claimed
        } else {
            let row = sqlx::query("SELECT fingerprint, status, body FROM idempotency WHERE scope = ? AND key = ?")
                .bind(scope)
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
            let status: i64 = row.try_get("status")?;
            let fingerprint: String = row.try_get("fingerprint")?;
            if status == 0 {
                IdempotencyClaim::InProgress { fingerprint }
            } else {
                IdempotencyClaim::Done(IdempotentReply {
                    fingerprint,
                    status: u16::try_from(status).map_err(|_| StoreError::Corrupt("status out of range".into()))?,
                    body: row.try_get("body")?,
                })
            }
        };
        tx.commit().await?;
        Ok(claim)
    }

    async fn finish_idempotent(&self, scope: &str, key: &str, reply: &IdempotentReply) -> Result<()> {
        let _w = self.write.lock().await;
        sqlx::query("UPDATE idempotency SET status = ?, body = ? WHERE scope = ? AND key = ? AND status = 0")
            .bind(i64::from(reply.status))
            .bind(&reply.body)
            .bind(scope)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn release_idempotent(&self, scope: &str, key: &str) -> Result<()> {
        let _w = self.write.lock().await;
        sqlx::query("DELETE FROM idempotency WHERE scope = ? AND key = ? AND status = 0")
            .bind(scope)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn release_pending_idempotency(&self) -> Result<u64> {
        let _w = self.write.lock().await;
        let r = sqlx::query("DELETE FROM idempotency WHERE status = 0").execute(&self.pool).await?;
        Ok(r.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str) -> NamespaceRow {
        NamespaceRow {
            name: name.into(),
            isolation: "container".into(),
            quotas: Quotas::DEFAULT,
            created_at_ms: 1,
            updated_at_ms: 1,
            id_start: 1_000_000 + 65_536 * NEXT_RANGE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            id_count: 65_536,
            incarnation: bulkhead_core::ids::new_incarnation(),
        }
    }

    static NEXT_RANGE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    fn key(ns: &str, name: &str) -> KeyRow {
        KeyRow {
            id: bulkhead_core::ids::new_id("key_"),
            namespace: ns.into(),
            name: name.into(),
            role: Role::Developer,
            token_hash: bulkhead_core::ids::new_id("h"),
            created_at_ms: 1,
            expires_at_ms: None,
            projects: None,
        }
    }

    fn event(n: i64) -> AuditEvent {
        AuditEvent {
            time_ms: n,
            principal: "admin".into(),
            action: "key.create".into(),
            resource: "key:x".into(),
            decision: "allow".into(),
            status: 201,
            request_id: "req_1".into(),
            detail: "{}".into(),
        }
    }

    #[tokio::test]
    async fn retention_prunes_behind_a_checkpoint_that_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap().with_audit_retention(4);
        let mut last = None;
        for i in 1..=3 {
            last = Some(s.append_audit("acme", event(i)).await.unwrap());
        }
        assert_eq!(s.audit_checkpoint("acme").await.unwrap(), None);
        for i in 4..=11 {
            last = Some(s.append_audit("acme", event(i)).await.unwrap());
        }
        let all = s.list_audit("acme", &AuditQuery { limit: 100, ..Default::default() }).await.unwrap();
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![8, 9, 10, 11]);
        let cp = s.audit_checkpoint("acme").await.unwrap().unwrap();
        assert_eq!((cp.seq, cp.time_ms), (7, 11));
        assert_eq!(cp.hash, all[0].prev_hash);
        let v = s.verify_audit("acme").await.unwrap();
        assert!(v.ok && v.records == 4 && v.pruned == 7 && v.pruned_at_ms == Some(11), "{v:?}");
        assert_eq!(last.unwrap().seq, 11);
        // Another chain keeps its own records.
        s.append_audit("other", event(1)).await.unwrap();
        assert!(s.verify_audit("other").await.unwrap().ok);
        // Editing a kept record is caught.
        sqlx::query("UPDATE audit_records SET principal = 'key:forged' WHERE chain = 'acme' AND seq = 9")
            .execute(&s.pool)
            .await
            .unwrap();
        let v = s.verify_audit("acme").await.unwrap();
        assert_eq!((v.ok, v.first_bad_seq), (false, Some(9)));
        // The namespace's checkpoint goes with it.
        s.create_namespace(&ns("acme")).await.unwrap();
        s.delete_namespace("acme").await.unwrap();
        assert_eq!(s.audit_checkpoint("acme").await.unwrap(), None);
        let id = s.store_id().await.unwrap();
        assert!(id.starts_with("sto_"));
        assert_eq!(s.store_id().await.unwrap(), id);
    }

    #[tokio::test]
    async fn namespace_delete_cascades_keys_and_chain() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap();
        s.create_namespace(&ns("acme")).await.unwrap();
        assert!(matches!(s.create_namespace(&ns("acme")).await, Err(StoreError::Conflict(_))));
        let k = key("acme", "ci");
        s.create_key(&k).await.unwrap();
        assert!(matches!(s.create_key(&key("acme", "ci")).await, Err(StoreError::Conflict(_))));
        assert!(matches!(s.create_key(&key("nope", "ci")).await, Err(StoreError::NotFound(_))));
        s.append_audit("acme", event(1)).await.unwrap();
        let r2 = s.append_audit("acme", event(2)).await.unwrap();
        assert_eq!(r2.seq, 2);
        assert_eq!(s.audit_head("acme").await.unwrap(), Some((2, r2.hash.clone())));
        assert_eq!(s.key_by_token_hash(&k.token_hash).await.unwrap(), Some(k.clone()));

        assert!(s.delete_namespace("acme").await.unwrap());
        assert!(!s.delete_namespace("acme").await.unwrap());
        assert_eq!(s.key_by_token_hash(&k.token_hash).await.unwrap(), None);
        assert_eq!(s.audit_head("acme").await.unwrap(), None);
        assert!(s.list_audit("acme", &AuditQuery { limit: 10, ..Default::default() }).await.unwrap().is_empty());
    }

    fn sandbox(ns: &str, cpu: u64) -> SandboxRow {
        SandboxRow {
            id: bulkhead_core::ids::new_id("sbx_"),
            namespace: ns.into(),
            status: SandboxStatus::Creating,
            reason: None,
            isolation: "container".into(),
            cpu_millis: cpu,
            memory_bytes: 1 << 20,
            pids: 10,
            ttl_seconds: 60,
            created_at_ms: 1,
            expires_at_ms: 60_001,
            ended_at_ms: None,
            filesystem: None,
            metered: MeterMark::default(),
            creator: "key:k".into(),
            workload_token_hash: None,
            secrets: Vec::new(),
            metered_at_ms: None,
            project: None,
        }
    }

    #[tokio::test]
    async fn admission_is_checked_against_active_sandboxes_and_slots_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap();
        s.create_namespace(&ns("acme")).await.unwrap();
        s.create_namespace(&ns("globex")).await.unwrap();
        let a = s.get_namespace("acme").await.unwrap().unwrap();
        let g = s.get_namespace("globex").await.unwrap().unwrap();
        assert_ne!(a.id_start, g.id_start);
        let quotas = Quotas { max_sandboxes: 2, cpu_millis: 1000, ..Quotas::DEFAULT };
        let first = sandbox("acme", 600);
        s.admit_sandbox(&first, &quotas).await.unwrap();
        match s.admit_sandbox(&sandbox("acme", 600), &quotas).await {
            Err(StoreError::Quota(b)) => assert_eq!((b.quota, b.limit, b.used), ("cpu_millis", 1000, 600)),
            other => panic!("{other:?}"),
        }
        s.admit_sandbox(&sandbox("acme", 100), &quotas).await.unwrap();
        match s.admit_sandbox(&sandbox("acme", 100), &quotas).await {
            Err(StoreError::Quota(b)) => assert_eq!(b.quota, "max_sandboxes"),
            other => panic!("{other:?}"),
        }
        // Another namespace's quota is its own.
        s.admit_sandbox(&sandbox("globex", 900), &quotas).await.unwrap();
        // An ended sandbox frees its share.
        s.set_sandbox_status(&first.id, SandboxStatus::Stopped, Some("ttl_expired"), Some(5)).await.unwrap();
        s.admit_sandbox(&sandbox("acme", 600), &quotas).await.unwrap();
        assert_eq!(s.active_sandboxes().await.unwrap().len(), 3);
        let got = s.get_sandbox("acme", &first.id).await.unwrap().unwrap();
        assert_eq!(got.reason.as_deref(), Some("ttl_expired"));
        assert!(s.get_sandbox("globex", &first.id).await.unwrap().is_none());
        // A namespace keeps the range it was created with.
        s.delete_namespace("acme").await.unwrap();
        let fresh = ns("acme");
        s.create_namespace(&fresh).await.unwrap();
        let again = s.get_namespace("acme").await.unwrap().unwrap();
        assert_eq!((again.id_start, again.id_count), (fresh.id_start, 65_536));
        assert!(s.get_sandbox("acme", &first.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_pagination_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let s = SqliteStore::open(&path).await.unwrap();
            for n in ["c", "a", "b"] {
                s.create_namespace(&ns(n)).await.unwrap();
            }
            s.init_admin_token_hash("h", 1).await.unwrap();
            assert!(matches!(s.init_admin_token_hash("h2", 1).await, Err(StoreError::Conflict(_))));
        }
        let s = SqliteStore::open(&path).await.unwrap();
        assert_eq!(s.admin_token_hash().await.unwrap().as_deref(), Some("h"));
        let page: Vec<_> = s.list_namespaces(None, 2, None).await.unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(page, ["a", "b"]);
        let page: Vec<_> = s.list_namespaces(Some("b"), 2, None).await.unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(page, ["c"]);
        let only: Vec<_> = s.list_namespaces(None, 10, Some("b")).await.unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(only, ["b"]);
    }

    #[tokio::test]
    async fn idempotency_claims_are_exclusive_answered_released_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let claim = |fp: &'static str, now: i64| {
            let s = &s;
            async move { s.claim_idempotent("ns:a:key:k:x", "k1", fp, now, now - 100).await.unwrap() }
        };
        assert_eq!(claim("f1", 1000).await, IdempotencyClaim::Claimed);
        assert_eq!(claim("f1", 1001).await, IdempotencyClaim::InProgress { fingerprint: "f1".into() });
        s.release_idempotent("ns:a:key:k:x", "k1").await.unwrap();
        assert_eq!(claim("f2", 1002).await, IdempotencyClaim::Claimed);
        let reply = IdempotentReply { fingerprint: "f2".into(), status: 201, body: "{}".into() };
        s.finish_idempotent("ns:a:key:k:x", "k1", &reply).await.unwrap();
        // An answered key is not released by a late release.
        s.release_idempotent("ns:a:key:k:x", "k1").await.unwrap();
        assert_eq!(claim("f2", 1050).await, IdempotencyClaim::Done(reply));
        // Past its lifetime the answer no longer counts.
        assert_eq!(claim("f3", 5000).await, IdempotencyClaim::Claimed);
        assert_eq!(s.release_pending_idempotency().await.unwrap(), 1);
        assert_eq!(claim("f4", 5001).await, IdempotencyClaim::Claimed);
    }
}
