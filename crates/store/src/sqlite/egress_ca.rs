//! Queries of namespaces' egress CAs (`namespaces.egress_ca`).

use async_trait::async_trait;

use super::SqliteStore;
use crate::{EgressCaStore, Result, StoreError};

#[async_trait]
impl EgressCaStore for SqliteStore {
    async fn egress_ca(&self, namespace: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE namespaces SET egress_ca = ? WHERE name = ? AND egress_ca IS NULL")
            .bind(sealed)
            .bind(namespace)
            .execute(&mut *tx)
            .await?;
        let stored: Option<Option<Vec<u8>>> = sqlx::query_scalar("SELECT egress_ca FROM namespaces WHERE name = ?")
            .bind(namespace)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        match stored {
            Some(Some(ca)) => Ok(ca),
            Some(None) => Err(StoreError::Corrupt(format!("namespace {namespace} kept no egress CA"))),
            None => Err(StoreError::NotFound(format!("namespace {namespace}"))),
        }
    }

    async fn get_egress_ca(&self, namespace: &str) -> Result<Option<Vec<u8>>> {
        let stored: Option<Option<Vec<u8>>> = sqlx::query_scalar("SELECT egress_ca FROM namespaces WHERE name = ?")
            .bind(namespace)
            .fetch_optional(&self.pool)
            .await?;
        Ok(stored.flatten())
    }
}

#[cfg(test)]
mod tests {
    use crate::prelude::*;
    use crate::sqlite::SqliteStore;
    use crate::{NamespaceRow, StoreError};

    #[tokio::test]
    async fn the_first_ca_stored_is_the_one_kept_and_goes_with_its_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap();
        let row = |name: &str, start| NamespaceRow {
            name: name.into(),
            isolation: "container".into(),
            quotas: bulkhead_core::Quotas::DEFAULT,
            created_at_ms: 1,
            updated_at_ms: 1,
            id_start: start,
            id_count: 65_536,
            incarnation: bulkhead_core::ids::new_incarnation(),
            egress: None,
            placement: Default::default(),
        };
        s.create_namespace(&row("acme", 1_000_000)).await.unwrap();
        s.create_namespace(&row("globex", 1_065_536)).await.unwrap();
        assert_eq!(s.get_egress_ca("acme").await.unwrap(), None);
        assert_eq!(s.egress_ca("acme", b"first").await.unwrap(), b"first");
        assert_eq!(s.egress_ca("acme", b"second").await.unwrap(), b"first");
        assert_eq!(s.get_egress_ca("acme").await.unwrap().as_deref(), Some(&b"first"[..]));
        assert_eq!(s.get_egress_ca("globex").await.unwrap(), None);
        assert!(matches!(s.egress_ca("nope", b"x").await, Err(StoreError::NotFound(_))));
        assert_eq!(s.get_egress_ca("nope").await.unwrap(), None);
        // A namespace made again under the name starts with none.
        s.delete_namespace("acme").await.unwrap();
        s.create_namespace(&row("acme", 1_000_000)).await.unwrap();
        assert_eq!(s.get_egress_ca("acme").await.unwrap(), None);
    }
}
