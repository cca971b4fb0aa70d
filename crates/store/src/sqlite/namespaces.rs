//! Queries of the namespaces aggregate: the platform row, the store's identity, namespaces,
//! what they hold, and their API keys.

use async_trait::async_trait;
use bulkhead_core::placement::Placement;
use bulkhead_core::Quotas;
use sqlx::Row;

use super::{all, as_u64, insert_row, one, select, to_json, Columns, Constraints, SqliteStore};
use crate::rows::placement_column;
use crate::{KeyRow, NamespaceRow, NamespaceStore, NamespaceUse, Result, StoreError};

#[async_trait]
impl NamespaceStore for SqliteStore {
    async fn admin_token_hash(&self) -> Result<Option<String>> {
        let q = sqlx::query_scalar("SELECT admin_token_hash FROM platform WHERE id = 1");
        Ok(q.fetch_optional(&self.pool).await?)
    }

    async fn init_admin_token_hash(&self, hash: &str, now_ms: i64) -> Result<()> {
        let q = sqlx::query("INSERT INTO platform (id, admin_token_hash, created_at_ms) VALUES (1, ?, ?)")
            .bind(hash)
            .bind(now_ms);
        Constraints::default().taken("admin token".into()).check(self.execute(q).await)?;
        Ok(())
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

    async fn create_namespace(&self, ns: &NamespaceRow) -> Result<()> {
        let mut tx = self.write_tx().await?;
        insert_row(&mut *tx, ns, Constraints::default().taken(format!("namespace {}", ns.name))).await?;
        tx.commit().await
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<NamespaceRow>> {
        one(&self.pool, sqlx::query(&select::<NamespaceRow>("WHERE name = ?")).bind(name)).await
    }

    async fn list_namespaces(&self, after: Option<&str>, limit: u32, only: Option<&str>) -> Result<Vec<NamespaceRow>> {
        let sql = select::<NamespaceRow>("WHERE name > ? AND (? IS NULL OR name = ?) ORDER BY name LIMIT ?");
        all(&self.pool, sqlx::query(&sql).bind(after.unwrap_or("")).bind(only).bind(only).bind(i64::from(limit))).await
    }

    async fn update_namespace_quotas(&self, name: &str, q: &Quotas, now_ms: i64) -> Result<Option<NamespaceRow>> {
        // In a transaction: its commit's failure (a full disk) is an error, where a statement's
        // own implicit commit after its first row would fail unseen.
        let mut tx = self.write_tx().await?;
        let sql = format!(
            "UPDATE namespaces SET cpu_millis = ?, memory_bytes = ?, disk_bytes = ?, max_sandboxes = ?, \
             pids_per_sandbox = ?, max_sandbox_ttl_seconds = ?, api_requests_per_second = ?, \
             max_concurrent_execs = ?, updated_at_ms = ? WHERE name = ? \
             RETURNING {}",
            NamespaceRow::COLUMNS
        );
        let update = q.bind_all(sqlx::query(&sql))?.bind(now_ms).bind(name);
        let row = one(&mut *tx, update).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn update_namespace_egress(
        &self,
        name: &str,
        egress: &bulkhead_core::egress::Ceiling,
        now_ms: i64,
    ) -> Result<Option<NamespaceRow>> {
        let mut tx = self.write_tx().await?;
        let sql = format!(
            "UPDATE namespaces SET egress = ?, updated_at_ms = ? WHERE name = ? RETURNING {}",
            NamespaceRow::COLUMNS
        );
        let update = sqlx::query(&sql).bind(to_json(Some(egress))?).bind(now_ms).bind(name);
        let row = one(&mut *tx, update).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn update_namespace_placement(
        &self,
        name: &str,
        placement: &Placement,
        now_ms: i64,
    ) -> Result<Option<NamespaceRow>> {
        let mut tx = self.write_tx().await?;
        let sql = format!(
            "UPDATE namespaces SET placement = ?, updated_at_ms = ? WHERE name = ? RETURNING {}",
            NamespaceRow::COLUMNS
        );
        let update = sqlx::query(&sql).bind(placement_column(placement)?).bind(now_ms).bind(name);
        let row = one(&mut *tx, update).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn delete_namespace(&self, name: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
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

    async fn namespace_use(&self, namespace: &str) -> Result<NamespaceUse> {
        let rows = sqlx::query(
            "SELECT 's' AS kind, COUNT(*) AS a, COALESCE(SUM(cpu_millis), 0) AS b, COALESCE(SUM(memory_bytes), 0) AS c, \
             '' AS id FROM sandboxes WHERE namespace = ?1 AND status IN ('creating', 'running') \
             UNION ALL SELECT 'f', 0, size_bytes, 0, id FROM filesystems WHERE namespace = ?1",
        )
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?;
        let mut u = NamespaceUse::default();
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

    async fn create_key(&self, key: &KeyRow) -> Result<()> {
        let names =
            Constraints::default().taken(format!("key {}", key.name)).missing(format!("namespace {}", key.namespace));
        let _w = self.write_lock.lock().await;
        insert_row(&self.pool, key, names).await
    }

    async fn get_key(&self, namespace: &str, id: &str) -> Result<Option<KeyRow>> {
        self.get_in(namespace, id).await
    }

    async fn list_keys(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<KeyRow>> {
        self.page(namespace, after, limit).await
    }

    async fn delete_key(&self, namespace: &str, id: &str) -> Result<bool> {
        self.delete_in::<KeyRow>(namespace, id).await
    }

    async fn key_by_token_hash(&self, token_hash: &str) -> Result<Option<KeyRow>> {
        one(&self.pool, sqlx::query(&select::<KeyRow>("WHERE token_hash = ?")).bind(token_hash)).await
    }
}
