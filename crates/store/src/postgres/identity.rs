//! Queries of a namespace's identity aggregate: identity settings, custom policies (counted
//! against their cap in one `SERIALIZABLE` transaction), the data key and the secrets sealed
//! under it, all in the namespace's scope.

use async_trait::async_trait;

use super::{insert_row, select, serializable, within, Constraints, PgStore, Scope};
use crate::{IdentityStore, PolicyRow, Result, SecretRow};

/// A secret's metadata: its row with an empty value, so listing never reads a sealed one.
const SECRET_METADATA: &str = "id, namespace, name, ''::bytea AS sealed, created_at_ms, updated_at_ms";

#[async_trait]
impl IdentityStore for PgStore {
    async fn get_identity(&self, namespace: &str) -> Result<Option<String>> {
        let mut tx = self.scoped(Scope::Namespace(namespace)).await?;
        let config = sqlx::query_scalar("SELECT config FROM namespace_identity WHERE namespace = $1")
            .bind(namespace)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(config)
    }

    async fn put_identity(&self, namespace: &str, config: Option<&str>, now_ms: i64) -> Result<()> {
        let write = match config {
            Some(config) => sqlx::query(
                "INSERT INTO namespace_identity (namespace, config, updated_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (namespace) DO UPDATE SET config = excluded.config, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(namespace)
            .bind(config)
            .bind(now_ms),
            None => sqlx::query("DELETE FROM namespace_identity WHERE namespace = $1").bind(namespace),
        };
        let names = Constraints::default().missing(format!("namespace {namespace}"));
        self.write_named(Scope::Namespace(namespace), write, names).await?;
        Ok(())
    }

    async fn create_policy(&self, p: &PolicyRow, max: u32) -> Result<()> {
        serializable!(self, Scope::Namespace(&p.namespace), |tx| {
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM policies WHERE namespace = $1")
                .bind(&p.namespace)
                .fetch_one(&mut *tx)
                .await?;
            within("policies", u64::from(max), u64::try_from(count).unwrap_or(0), 1)?;
            insert_row(&mut tx, p, Constraints::default().taken(format!("policy {}", p.name))).await
        })
    }

    async fn all_policies(&self, namespace: &str) -> Result<Vec<PolicyRow>> {
        let sql = select::<PolicyRow>("WHERE namespace = ? ORDER BY id");
        self.read_all(Scope::Namespace(namespace), sqlx::query(&sql).bind(namespace)).await
    }

    async fn list_policies(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<PolicyRow>> {
        self.page(namespace, after, limit).await
    }

    async fn delete_policy(&self, namespace: &str, id: &str) -> Result<bool> {
        self.delete_in::<PolicyRow>(namespace, id).await
    }

    async fn data_key(&self, namespace: &str, wrapped: &[u8]) -> Result<Vec<u8>> {
        let mut tx = self.scoped(Scope::Namespace(namespace)).await?;
        let insert =
            sqlx::query("INSERT INTO namespace_data_keys (namespace, wrapped) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(namespace)
                .bind(wrapped);
        Constraints::default().missing(format!("namespace {namespace}")).check(insert.execute(&mut *tx).await)?;
        let stored = sqlx::query_scalar("SELECT wrapped FROM namespace_data_keys WHERE namespace = $1")
            .bind(namespace)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn put_secret(&self, sec: &SecretRow) -> Result<bool> {
        let mut tx = self.scoped(Scope::Namespace(&sec.namespace)).await?;
        let updated =
            sqlx::query("UPDATE secrets SET sealed = $1, updated_at_ms = $2 WHERE namespace = $3 AND name = $4")
                .bind(&sec.sealed)
                .bind(sec.updated_at_ms)
                .bind(&sec.namespace)
                .bind(&sec.name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if updated == 0 {
            let names = Constraints::default()
                .missing(format!("namespace {}", sec.namespace))
                .taken(format!("secret {}", sec.name));
            insert_row(&mut tx, sec, names).await?;
        }
        tx.commit().await?;
        Ok(updated == 0)
    }

    async fn get_secret(&self, namespace: &str, name: &str) -> Result<Option<SecretRow>> {
        self.get_in(namespace, name).await
    }

    async fn list_secrets(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<SecretRow>> {
        self.page_of(SECRET_METADATA, namespace, after, limit).await
    }

    async fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool> {
        self.delete_in::<SecretRow>(namespace, name).await
    }
}
