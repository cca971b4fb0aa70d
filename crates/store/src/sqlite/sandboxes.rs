//! Queries of the sandboxes aggregate: admission in one transaction with the quota check,
//! lookups and status changes.

use async_trait::async_trait;
use bulkhead_core::Quotas;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{
    all, as_i64, as_u64, insert_row, json_column, names, one, select, to_json, within, Columns, Constraints, Query,
    SqliteStore, Table,
};
use crate::{MeterMark, Result, SandboxRow, SandboxStatus, SandboxStore, StoreError, WarmPoolRow};

impl Columns for SandboxRow {
    const COLUMNS: &'static str = "id, namespace, status, reason, isolation, cpu_millis, memory_bytes, pids, \
         ttl_seconds, created_at_ms, expires_at_ms, ended_at_ms, filesystem_id, filesystem_mode, metered_cpu_ns, \
         metered_at_ms, metered_io_read_bytes, metered_io_write_bytes, creator, workload_token_hash, secrets, project_id, egress, image_id, image, disk_bytes, task_id, pooled, node";

    fn from_row(row: &SqliteRow) -> Result<Self> {
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

#[async_trait]
impl SandboxStore for SqliteStore {
    async fn admit_sandbox(&self, sbx: &SandboxRow, quotas: &Quotas) -> Result<()> {
        let mut tx = self.write_tx().await?;
        check_admission(&mut tx, sbx, quotas, None).await?;
        insert_row(&mut *tx, sbx, Constraints::default()).await?;
        tx.commit().await
    }

    async fn get_sandbox(&self, namespace: &str, id: &str) -> Result<Option<SandboxRow>> {
        self.get_in(namespace, id).await
    }

    async fn list_sandboxes(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<SandboxRow>> {
        let sql = select::<SandboxRow>("WHERE namespace = ? AND id > ? AND pooled = 0 ORDER BY id LIMIT ?");
        all(&self.pool, sqlx::query(&sql).bind(namespace).bind(after.unwrap_or("")).bind(i64::from(limit))).await
    }

    async fn active_sandboxes(&self) -> Result<Vec<SandboxRow>> {
        let sql = select::<SandboxRow>("WHERE status IN ('creating', 'running') ORDER BY expires_at_ms");
        all(&self.pool, sqlx::query(&sql)).await
    }

    async fn set_sandbox_status(
        &self,
        id: &str,
        status: SandboxStatus,
        reason: Option<&str>,
        ended_at_ms: Option<i64>,
    ) -> Result<Option<SandboxRow>> {
        // In a transaction, so that a failed commit is seen (see `update_namespace_quotas`).
        let mut tx = self.write_tx().await?;
        let sql = format!(
            "UPDATE sandboxes SET status = ?, reason = COALESCE(?, reason), ended_at_ms = COALESCE(?, ended_at_ms) \
             WHERE id = ? RETURNING {}",
            SandboxRow::COLUMNS
        );
        let row =
            one(&mut *tx, sqlx::query(&sql).bind(status.as_str()).bind(reason).bind(ended_at_ms).bind(id)).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn sandboxes_using(&self, filesystem_id: &str) -> Result<Vec<SandboxRow>> {
        let sql = select::<SandboxRow>("WHERE filesystem_id = ? AND status IN ('creating', 'running')");
        all(&self.pool, sqlx::query(&sql).bind(filesystem_id)).await
    }

    async fn sandbox_by_workload_token(&self, token_hash: &str) -> Result<Option<SandboxRow>> {
        let sql = select::<SandboxRow>("WHERE workload_token_hash = ? AND status IN ('creating', 'running')");
        one(&self.pool, sqlx::query(&sql).bind(token_hash)).await
    }

    async fn claim_sandbox(&self, claimed: &SandboxRow, quotas: &Quotas) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let found =
            sqlx::query("SELECT 1 FROM sandboxes WHERE id = ? AND namespace = ? AND pooled = 1 AND status = 'running'")
                .bind(&claimed.id)
                .bind(&claimed.namespace)
                .fetch_optional(&mut *tx)
                .await?;
        if found.is_none() {
            return Err(StoreError::NotFound(format!("pool sandbox {}", claimed.id)));
        }
        check_admission(&mut tx, claimed, quotas, Some(&claimed.id)).await?;
        sqlx::query("DELETE FROM sandboxes WHERE id = ?").bind(&claimed.id).execute(&mut *tx).await?;
        insert_row(&mut *tx, claimed, Constraints::default()).await?;
        tx.commit().await
    }

    async fn set_warm_pool(&self, namespace: &str, image_id: &str, size: u64, now_ms: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        if size == 0 {
            sqlx::query("DELETE FROM warm_pools WHERE namespace = ? AND image_id = ?")
                .bind(namespace)
                .bind(image_id)
                .execute(&mut *tx)
                .await?;
            return tx.commit().await;
        }
        let image = sqlx::query("SELECT 1 FROM images WHERE id = ? AND (namespace IS NULL OR namespace = ?)")
            .bind(image_id)
            .bind(namespace)
            .fetch_optional(&mut *tx)
            .await?;
        let ns =
            sqlx::query("SELECT 1 FROM namespaces WHERE name = ?").bind(namespace).fetch_optional(&mut *tx).await?;
        if image.is_none() || ns.is_none() {
            return Err(StoreError::NotFound(format!("image {image_id} of namespace {namespace}")));
        }
        sqlx::query(
            "INSERT INTO warm_pools (namespace, image_id, size, updated_at_ms) VALUES (?, ?, ?, ?) \
             ON CONFLICT (namespace, image_id) DO UPDATE SET size = excluded.size, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(namespace)
        .bind(image_id)
        .bind(as_i64(size))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    async fn warm_pools(&self, namespace: Option<&str>) -> Result<Vec<WarmPoolRow>> {
        let rows = sqlx::query(
            "SELECT namespace, image_id, size, updated_at_ms FROM warm_pools \
             WHERE ?1 IS NULL OR namespace = ?1 ORDER BY namespace, image_id",
        )
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(WarmPoolRow {
                    namespace: r.try_get("namespace")?,
                    image_id: r.try_get("image_id")?,
                    size: as_u64(r, "size")?,
                    updated_at_ms: r.try_get("updated_at_ms")?,
                })
            })
            .collect()
    }
}

/// Checks, in the admission's transaction, that `sbx` fits its namespace's quotas beside every
/// other active sandbox (all of them but `replacing`, whose share a claim replaces), and that
/// its image is still recorded.
async fn check_admission(
    tx: &mut sqlx::SqliteConnection,
    sbx: &SandboxRow,
    quotas: &Quotas,
    replacing: Option<&str>,
) -> Result<()> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, COALESCE(SUM(cpu_millis), 0) AS cpu, COALESCE(SUM(memory_bytes), 0) AS mem \
         FROM sandboxes WHERE namespace = ? AND status IN ('creating', 'running') AND id != ?",
    )
    .bind(&sbx.namespace)
    .bind(replacing.unwrap_or(""))
    .fetch_one(&mut *tx)
    .await?;
    let (n, cpu, mem) = (as_u64(&row, "n")?, as_u64(&row, "cpu")?, as_u64(&row, "mem")?);
    let checks = [
        ("max_sandboxes", quotas.max_sandboxes, n, 1),
        ("cpu_millis", quotas.cpu_millis, cpu, sbx.cpu_millis),
        ("memory_bytes", quotas.memory_bytes, mem, sbx.memory_bytes),
    ];
    for (quota, limit, used, requested) in checks {
        within(quota, limit, used, requested)?;
    }
    // The image, in the same transaction as a delete of it would check its users.
    if let Some(image) = &sbx.image {
        let found = sqlx::query("SELECT 1 FROM images WHERE id = ?").bind(&image.id).fetch_optional(&mut *tx).await?;
        if found.is_none() {
            return Err(StoreError::NotFound(format!("image {}", image.name)));
        }
    }
    Ok(())
}
