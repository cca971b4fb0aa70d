//! Queries of the usage ledger: one row per namespace and time bucket, added to by upserts;
//! a metering sample lands in the ledger in one transaction with the sandbox's mark.

use async_trait::async_trait;

use super::{all, as_i64, select, Columns, Query, SqliteStore};
use crate::{MeterMark, Result, SandboxRow, UsageBucket, UsageDelta, UsageStore};

const USAGE_UPSERT: &str = "INSERT INTO usage_buckets (namespace, bucket_ms, cpu_ns, memory_byte_ms, sandbox_ms, \
     memory_peak_bytes, exec_count, quota_rejections, io_read_bytes, io_write_bytes, egress_bytes_out, egress_bytes_in, \
     egress_connections, egress_denied) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (namespace, bucket_ms) DO UPDATE SET cpu_ns = cpu_ns + excluded.cpu_ns, \
     memory_byte_ms = memory_byte_ms + excluded.memory_byte_ms, sandbox_ms = sandbox_ms + excluded.sandbox_ms, \
     memory_peak_bytes = MAX(memory_peak_bytes, excluded.memory_peak_bytes), \
     exec_count = exec_count + excluded.exec_count, quota_rejections = quota_rejections + excluded.quota_rejections, \
     io_read_bytes = io_read_bytes + excluded.io_read_bytes, io_write_bytes = io_write_bytes + excluded.io_write_bytes, \
     egress_bytes_out = egress_bytes_out + excluded.egress_bytes_out, \
     egress_bytes_in = egress_bytes_in + excluded.egress_bytes_in, \
     egress_connections = egress_connections + excluded.egress_connections, \
     egress_denied = egress_denied + excluded.egress_denied";

/// Adds `d` to the namespace's bucket at `bucket_ms`.
fn usage_upsert<'q>(namespace: &'q str, bucket_ms: i64, d: &'q UsageDelta) -> Result<Query<'q>> {
    d.bind_all(sqlx::query(USAGE_UPSERT).bind(namespace).bind(bucket_ms))
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn add_usage(&self, namespace: &str, bucket_ms: i64, delta: &UsageDelta) -> Result<()> {
        // A counter bumped on the hot path (an exec): as durable as an audit append.
        self.ledger_execute(usage_upsert(namespace, bucket_ms, delta)?).await
    }

    async fn meter_sandbox(
        &self,
        sandbox: &SandboxRow,
        bucket_ms: i64,
        delta: &UsageDelta,
        mark: MeterMark,
        at_ms: i64,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
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
        usage_upsert(&sandbox.namespace, bucket_ms, delta)?.execute(&mut *tx).await?;
        tx.commit().await
    }

    async fn usage(&self, namespace: &str, from_ms: i64, to_ms: i64) -> Result<Vec<UsageBucket>> {
        let sql = select::<UsageBucket>("WHERE namespace = ? AND bucket_ms >= ? AND bucket_ms < ? ORDER BY bucket_ms");
        all(&self.pool, sqlx::query(&sql).bind(namespace).bind(from_ms).bind(to_ms)).await
    }
}
