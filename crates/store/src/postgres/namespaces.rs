//! Queries of the namespaces aggregate: the platform row, the store's identity, namespaces,
//! what they hold, and their API keys. The platform's rows are read in the platform scope, a
//! namespace's in its own.

use std::str::FromStr;

use async_trait::async_trait;
use bulkhead_core::placement::Placement;
use bulkhead_core::{Quotas, Role};
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::{
    as_u64, from_columns, insert_row, json_column, names, pg, select, to_json, Columns, Constraints, PgStore, Query,
    Scope, Table,
};
use crate::{KeyRow, NamespaceRow, NamespaceStore, NamespaceUse, Result, StoreError};

from_columns!(Quotas {
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

    fn from_row(row: &PgRow) -> Result<Self> {
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

/// The placement column: NULL for `shared`, the default.
fn placement_column(p: &Placement) -> Result<Option<String>> {
    match p {
        Placement::Shared => Ok(None),
        dedicated => to_json(Some(dedicated)),
    }
}

impl Table for NamespaceRow {
    const TABLE: &'static str = "namespaces";
    const KEY: &'static str = "name";
}

impl Columns for KeyRow {
    const COLUMNS: &'static str = "id, namespace, name, role, token_hash, created_at_ms, expires_at_ms, projects";

    fn from_row(row: &PgRow) -> Result<Self> {
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
