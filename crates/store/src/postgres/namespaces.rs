//! Queries of the namespaces aggregate: the platform row, the store's identity, namespaces,
//! what they hold, and their API keys. The platform's rows are read in the platform scope, a
//! namespace's in its own.

use async_trait::async_trait;
use bulkhead_core::placement::Placement;
use bulkhead_core::Quotas;
use sqlx::Row;

use super::{as_u64, insert_row, pg, select, to_json, Columns, Constraints, PgStore, Scope};
use crate::rows::placement_column;
use crate::{KeyRow, NamespaceRow, NamespaceStore, NamespaceUse, Result, StoreError};

#[async_trait]
impl NamespaceStore for PgStore {
    async fn admin_token_hash(&self) -> Result<Option<String>> {
        let mut tx = self.scoped(Scope::Platform).await?;
        let hash =
            sqlx::query_scalar("SELECT admin_token_hash FROM platform WHERE id = 1").fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        Ok(hash)
    }

    async fn init_admin_token_hash(&self, hash: &str, now_ms: i64) -> Result<()> {
        let q = sqlx::query("INSERT INTO platform (id, admin_token_hash, created_at_ms) VALUES (1, $1, $2)")
            .bind(hash)
            .bind(now_ms);
        self.write_named(Scope::Platform, q, Constraints::default().taken("admin token".into())).await?;
        Ok(())
    }

    async fn store_id(&self) -> Result<String> {
        let mut tx = self.scoped(Scope::Platform).await?;
        let row = sqlx::query("SELECT store_id FROM store_identity WHERE id = 1").fetch_one(&mut *tx).await?;
        tx.commit().await?;
        let id: String = row.try_get("store_id")?;
        let ok = id.strip_prefix("sto_").is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(StoreError::Corrupt(format!("store id {id:?}")));
        }
        Ok(id)
    }

    async fn create_namespace(&self, ns: &NamespaceRow) -> Result<()> {
        let mut tx = self.scoped(Scope::Namespace(&ns.name)).await?;
        insert_row(&mut tx, ns, Constraints::default().taken(format!("namespace {}", ns.name))).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<NamespaceRow>> {
        self.read_one(Scope::Namespace(name), sqlx::query(&select::<NamespaceRow>("WHERE name = ?")).bind(name)).await
    }

    async fn list_namespaces(&self, after: Option<&str>, limit: u32, only: Option<&str>) -> Result<Vec<NamespaceRow>> {
        let sql = select::<NamespaceRow>("WHERE name > ? AND (?::text IS NULL OR name = ?) ORDER BY name LIMIT ?");
        let q = sqlx::query(&sql).bind(after.unwrap_or("")).bind(only).bind(only).bind(i64::from(limit));
        // A list of one namespace is that namespace's; of all of them, the platform's.
        let scope = only.map_or(Scope::Platform, Scope::Namespace);
        self.read_all(scope, q).await
    }

    async fn update_namespace_quotas(&self, name: &str, q: &Quotas, now_ms: i64) -> Result<Option<NamespaceRow>> {
        let sql = pg(&format!(
            "UPDATE namespaces SET cpu_millis = ?, memory_bytes = ?, disk_bytes = ?, max_sandboxes = ?, \
             pids_per_sandbox = ?, max_sandbox_ttl_seconds = ?, api_requests_per_second = ?, \
             max_concurrent_execs = ?, updated_at_ms = ? WHERE name = ? \
             RETURNING {}",
            NamespaceRow::COLUMNS
        ));
        let update = q.bind_all(sqlx::query(&sql))?.bind(now_ms).bind(name);
        self.read_one(Scope::Namespace(name), update).await
    }

    async fn update_namespace_egress(
        &self,
        name: &str,
        egress: &bulkhead_core::egress::Ceiling,
        now_ms: i64,
    ) -> Result<Option<NamespaceRow>> {
        let sql = format!(
            "UPDATE namespaces SET egress = $1, updated_at_ms = $2 WHERE name = $3 RETURNING {}",
            NamespaceRow::COLUMNS
        );
        let update = sqlx::query(&sql).bind(to_json(Some(egress))?).bind(now_ms).bind(name);
        self.read_one(Scope::Namespace(name), update).await
    }

    async fn update_namespace_placement(
        &self,
        name: &str,
        placement: &Placement,
        now_ms: i64,
    ) -> Result<Option<NamespaceRow>> {
        let sql = format!(
            "UPDATE namespaces SET placement = $1, updated_at_ms = $2 WHERE name = $3 RETURNING {}",
            NamespaceRow::COLUMNS
        );
        let update = sqlx::query(&sql).bind(placement_column(placement)?).bind(now_ms).bind(name);
        self.read_one(Scope::Namespace(name), update).await
    }

    async fn delete_namespace(&self, name: &str) -> Result<bool> {
        let mut tx = self.scoped(Scope::Namespace(name)).await?;
        let deleted = sqlx::query("DELETE FROM namespaces WHERE name = $1").bind(name).execute(&mut *tx).await?;
        if deleted.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM audit_records WHERE chain = $1").bind(name).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM audit_heads WHERE chain = $1").bind(name).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM audit_checkpoints WHERE chain = $1").bind(name).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM idempotency WHERE namespace = $1").bind(name).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn namespace_use(&self, namespace: &str) -> Result<NamespaceUse> {
        let mut tx = self.scoped(Scope::Namespace(namespace)).await?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS a, COALESCE(SUM(cpu_millis), 0)::BIGINT AS b, \
             COALESCE(SUM(memory_bytes), 0)::BIGINT AS c \
             FROM sandboxes WHERE namespace = $1 AND status IN ('creating', 'running')",
        )
        .bind(namespace)
        .fetch_one(&mut *tx)
        .await?;
        let filesystems = sqlx::query("SELECT id, size_bytes FROM filesystems WHERE namespace = $1 ORDER BY id")
            .bind(namespace)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut u = NamespaceUse {
            sandboxes: as_u64(&row, "a")?,
            cpu_millis: as_u64(&row, "b")?,
            memory_bytes: as_u64(&row, "c")?,
            ..NamespaceUse::default()
        };
        for row in &filesystems {
            u.disk_bytes += as_u64(row, "size_bytes")?;
            u.filesystem_ids.push(row.try_get("id")?);
        }
        Ok(u)
    }

    async fn create_key(&self, key: &KeyRow) -> Result<()> {
        let names =
            Constraints::default().taken(format!("key {}", key.name)).missing(format!("namespace {}", key.namespace));
        let mut tx = self.scoped(Scope::Namespace(&key.namespace)).await?;
        insert_row(&mut tx, key, names).await?;
        tx.commit().await?;
        Ok(())
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
        // Authentication: the namespace is what the lookup finds out.
        self.read_one(Scope::Platform, sqlx::query(&select::<KeyRow>("WHERE token_hash = ?")).bind(token_hash)).await
    }
}
