//! Queries of the usage ledger: one row per namespace and time bucket, added to by upserts;
//! a metering sample lands in the ledger in one transaction with the sandbox's mark, both in
//! the sandbox's namespace's scope.

use async_trait::async_trait;

use super::{as_i64, pg, select, Columns, PgStore, Query, Scope};
use crate::{MeterMark, Result, SandboxRow, UsageBucket, UsageDelta, UsageStore};

const USAGE_UPSERT: &str = "INSERT INTO usage_buckets AS u (namespace, bucket_ms, cpu_ns, memory_byte_ms, sandbox_ms, \
     memory_peak_bytes, exec_count, quota_rejections, io_read_bytes, io_write_bytes, egress_bytes_out, egress_bytes_in, \
     egress_connections, egress_denied) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (namespace, bucket_ms) DO UPDATE SET cpu_ns = u.cpu_ns + excluded.cpu_ns, \
     memory_byte_ms = u.memory_byte_ms + excluded.memory_byte_ms, sandbox_ms = u.sandbox_ms + excluded.sandbox_ms, \
     memory_peak_bytes = GREATEST(u.memory_peak_bytes, excluded.memory_peak_bytes), \
     exec_count = u.exec_count + excluded.exec_count, quota_rejections = u.quota_rejections + excluded.quota_rejections, \
     io_read_bytes = u.io_read_bytes + excluded.io_read_bytes, io_write_bytes = u.io_write_bytes + excluded.io_write_bytes, \
     egress_bytes_out = u.egress_bytes_out + excluded.egress_bytes_out, \
     egress_bytes_in = u.egress_bytes_in + excluded.egress_bytes_in, \
     egress_connections = u.egress_connections + excluded.egress_connections, \
     egress_denied = u.egress_denied + excluded.egress_denied";

/// Adds `d` to the namespace's bucket at `bucket_ms`; `sql` is [`USAGE_UPSERT`] in
/// PostgreSQL's placeholders.
fn usage_upsert<'q>(sql: &'q str, namespace: &'q str, bucket_ms: i64, d: &'q UsageDelta) -> Result<Query<'q>> {
    d.bind_all(sqlx::query(sql).bind(namespace).bind(bucket_ms))
}

#[async_trait]
impl UsageStore for PgStore {
    async fn add_usage(&self, namespace: &str, bucket_ms: i64, delta: &UsageDelta) -> Result<()> {
        let sql = pg(USAGE_UPSERT);
        self.write(Scope::Namespace(namespace), usage_upsert(&sql, namespace, bucket_ms, delta)?).await?;
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
        let mut tx = self.scoped(Scope::Namespace(&sandbox.namespace)).await?;
        let marked = sqlx::query(
            "UPDATE sandboxes SET metered_cpu_ns = $1, metered_io_read_bytes = $2, metered_io_write_bytes = $3, \
             metered_at_ms = $4 WHERE id = $5 AND namespace = $6",
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
        let sql = pg(USAGE_UPSERT);
        usage_upsert(&sql, &sandbox.namespace, bucket_ms, delta)?.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn usage(&self, namespace: &str, from_ms: i64, to_ms: i64) -> Result<Vec<UsageBucket>> {
        let sql = select::<UsageBucket>("WHERE namespace = ? AND bucket_ms >= ? AND bucket_ms < ? ORDER BY bucket_ms");
        self.read_all(Scope::Namespace(namespace), sqlx::query(&sql).bind(namespace).bind(from_ms).bind(to_ms)).await
    }
}
