//! Queries of the sandboxes aggregate: admission in one `SERIALIZABLE` transaction with the
//! quota check, lookups and status changes.

use async_trait::async_trait;
use bulkhead_core::Quotas;
use sqlx::Row;

use super::{as_i64, as_u64, insert_row, select, serializable, within, Columns, Constraints, PgStore, Scope};
use crate::{Result, SandboxRow, SandboxStatus, SandboxStore, StoreError, WarmPoolRow};

#[async_trait]
impl SandboxStore for PgStore {
    async fn admit_sandbox(&self, sbx: &SandboxRow, quotas: &Quotas) -> Result<()> {
        serializable!(self, Scope::Namespace(&sbx.namespace), |tx| {
            check_admission(&mut tx, sbx, quotas, None).await?;
            insert_row(&mut tx, sbx, Constraints::default()).await
        })
    }

    async fn get_sandbox(&self, namespace: &str, id: &str) -> Result<Option<SandboxRow>> {
        self.get_in(namespace, id).await
    }

    async fn list_sandboxes(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<SandboxRow>> {
        let sql = select::<SandboxRow>("WHERE namespace = ? AND id > ? AND pooled = 0 ORDER BY id LIMIT ?");
        let q = sqlx::query(&sql).bind(namespace).bind(after.unwrap_or("")).bind(i64::from(limit));
        self.read_all(Scope::Namespace(namespace), q).await
    }

    async fn active_sandboxes(&self) -> Result<Vec<SandboxRow>> {
        let sql = select::<SandboxRow>("WHERE status IN ('creating', 'running') ORDER BY expires_at_ms, id");
        self.read_all(Scope::Platform, sqlx::query(&sql)).await
    }

    async fn set_sandbox_status(
        &self,
        id: &str,
        status: SandboxStatus,
        reason: Option<&str>,
        ended_at_ms: Option<i64>,
    ) -> Result<Option<SandboxRow>> {
        let sql = format!(
            "UPDATE sandboxes SET status = $1, reason = COALESCE($2, reason), \
             ended_at_ms = COALESCE($3, ended_at_ms) WHERE id = $4 RETURNING {}",
            SandboxRow::COLUMNS
        );
        let q = sqlx::query(&sql).bind(status.as_str()).bind(reason).bind(ended_at_ms).bind(id);
        self.read_one(Scope::Platform, q).await
    }

    async fn sandboxes_using(&self, filesystem_id: &str) -> Result<Vec<SandboxRow>> {
        let sql = select::<SandboxRow>("WHERE filesystem_id = ? AND status IN ('creating', 'running') ORDER BY id");
        self.read_all(Scope::Platform, sqlx::query(&sql).bind(filesystem_id)).await
    }

    async fn sandbox_by_workload_token(&self, token_hash: &str) -> Result<Option<SandboxRow>> {
        // Authentication of a workload: the namespace is what the lookup finds out.
        let sql = select::<SandboxRow>("WHERE workload_token_hash = ? AND status IN ('creating', 'running')");
        self.read_one(Scope::Platform, sqlx::query(&sql).bind(token_hash)).await
    }

    async fn claim_sandbox(&self, claimed: &SandboxRow, quotas: &Quotas) -> Result<()> {
        serializable!(self, Scope::Namespace(&claimed.namespace), |tx| {
            // The pool's row goes first (rolled back with the transaction on any refusal below).
            let gone = sqlx::query(
                "DELETE FROM sandboxes WHERE id = $1 AND namespace = $2 AND pooled = 1 AND status = 'running'",
            )
            .bind(&claimed.id)
            .bind(&claimed.namespace)
            .execute(&mut *tx)
            .await?;
            if gone.rows_affected() != 1 {
                return Err(StoreError::NotFound(format!("pool sandbox {}", claimed.id)));
            }
            check_admission(&mut tx, claimed, quotas, Some(&claimed.id)).await?;
            insert_row(&mut tx, claimed, Constraints::default()).await
        })
    }

    async fn set_warm_pool(&self, namespace: &str, image_id: &str, size: u64, now_ms: i64) -> Result<()> {
        let mut tx = self.scoped(Scope::Namespace(namespace)).await?;
        if size == 0 {
            sqlx::query("DELETE FROM warm_pools WHERE namespace = $1 AND image_id = $2")
                .bind(namespace)
                .bind(image_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(());
        }
        let image = sqlx::query("SELECT 1 FROM images WHERE id = $1 AND (namespace IS NULL OR namespace = $2)")
            .bind(image_id)
            .bind(namespace)
            .fetch_optional(&mut *tx)
            .await?;
        let ns =
            sqlx::query("SELECT 1 FROM namespaces WHERE name = $1").bind(namespace).fetch_optional(&mut *tx).await?;
        if image.is_none() || ns.is_none() {
            return Err(StoreError::NotFound(format!("image {image_id} of namespace {namespace}")));
        }
        let upsert = sqlx::query(
            "INSERT INTO warm_pools (namespace, image_id, size, updated_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (namespace, image_id) DO UPDATE SET size = excluded.size, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(namespace)
        .bind(image_id)
        .bind(as_i64(size))
        .bind(now_ms);
        // The image or the namespace deleted meanwhile.
        let names = Constraints::default().missing(format!("image {image_id} of namespace {namespace}"));
        names.check(upsert.execute(&mut *tx).await)?;
        tx.commit().await?;
        Ok(())
    }

    async fn warm_pools(&self, namespace: Option<&str>) -> Result<Vec<WarmPoolRow>> {
        let scope = namespace.map_or(Scope::Platform, Scope::Namespace);
        let mut tx = self.scoped(scope).await?;
        let rows = sqlx::query(
            "SELECT namespace, image_id, size, updated_at_ms FROM warm_pools \
             WHERE $1::text IS NULL OR namespace = $1 ORDER BY namespace, image_id",
        )
        .bind(namespace)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
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

/// Checks, in the admission's `SERIALIZABLE` transaction, that `sbx` fits its namespace's
/// quotas beside every other active sandbox (all of them but `replacing`, whose share a claim
/// replaces), and that its image is still recorded. Two admissions that each read the other's
/// absence cannot both commit: one fails with a serialization failure and runs again.
async fn check_admission(
    tx: &mut sqlx::PgConnection,
    sbx: &SandboxRow,
    quotas: &Quotas,
    replacing: Option<&str>,
) -> Result<()> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, COALESCE(SUM(cpu_millis), 0)::BIGINT AS cpu, \
         COALESCE(SUM(memory_bytes), 0)::BIGINT AS mem \
         FROM sandboxes WHERE namespace = $1 AND status IN ('creating', 'running') AND id <> $2",
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
        let found = sqlx::query("SELECT 1 FROM images WHERE id = $1").bind(&image.id).fetch_optional(&mut *tx).await?;
        if found.is_none() {
            return Err(StoreError::NotFound(format!("image {}", image.name)));
        }
    }
    Ok(())
}
