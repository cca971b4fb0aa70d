//! Queries of namespaces' egress CAs (`namespaces.egress_ca`), in the namespace's scope.

use async_trait::async_trait;

use super::{PgStore, Scope};
use crate::{EgressCaStore, Result, StoreError};

#[async_trait]
impl EgressCaStore for PgStore {
    async fn egress_ca(&self, namespace: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let mut tx = self.scoped(Scope::Namespace(namespace)).await?;
        // Of concurrent first stores, the second waits for the first's row lock, then finds the
        // CA set and keeps it.
        sqlx::query("UPDATE namespaces SET egress_ca = $1 WHERE name = $2 AND egress_ca IS NULL")
            .bind(sealed)
            .bind(namespace)
            .execute(&mut *tx)
            .await?;
        let stored: Option<Option<Vec<u8>>> = sqlx::query_scalar("SELECT egress_ca FROM namespaces WHERE name = $1")
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
        let mut tx = self.scoped(Scope::Namespace(namespace)).await?;
        let stored: Option<Option<Vec<u8>>> = sqlx::query_scalar("SELECT egress_ca FROM namespaces WHERE name = $1")
            .bind(namespace)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(stored.flatten())
    }
}
