//! Queries of idempotency keys: a claim is taken in one transaction that also clears expired
//! answers, so of concurrent claims (from any process) exactly one wins. A scope
//! `ns:<namespace>:...` is read and written in that namespace's scope, any other in the
//! platform's.

use async_trait::async_trait;
use sqlx::Row;

use super::{PgStore, Scope};
use crate::{IdempotencyClaim, IdempotencyStore, IdempotentReply, Result, StoreError};

/// The scope an idempotency scope's rows live in (the table's generated `namespace` column).
fn key_scope(scope: &str) -> Scope<'_> {
    match scope.strip_prefix("ns:").and_then(|rest| rest.split(':').next()) {
        Some(namespace) => Scope::Namespace(namespace),
        None => Scope::Platform,
    }
}

#[async_trait]
impl IdempotencyStore for PgStore {
    async fn claim_idempotent(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
        expired_before_ms: i64,
    ) -> Result<IdempotencyClaim> {
        let mut tx = self.scoped(key_scope(scope)).await?;
        sqlx::query("DELETE FROM idempotency WHERE scope = $1 AND key = $2 AND status <> 0 AND created_at_ms < $3")
            .bind(scope)
            .bind(key)
            .bind(expired_before_ms)
            .execute(&mut *tx)
            .await?;
        // A little of the scope's expired answers goes with every claim, so it holds about a
        // lifetime's worth of creates.
        sqlx::query(
            "DELETE FROM idempotency WHERE ctid IN (SELECT ctid FROM idempotency \
             WHERE scope = $1 AND created_at_ms < $2 AND status <> 0 ORDER BY created_at_ms LIMIT 16)",
        )
        .bind(scope)
        .bind(expired_before_ms)
        .execute(&mut *tx)
        .await?;
        // A concurrent claim of the same key waits for this one's commit, then does nothing.
        let inserted = sqlx::query(
            "INSERT INTO idempotency (scope, key, fingerprint, status, body, created_at_ms, node) \
             VALUES ($1, $2, $3, 0, '', $4, $5) ON CONFLICT (scope, key) DO NOTHING",
        )
        .bind(scope)
        .bind(key)
        .bind(fingerprint)
        .bind(now_ms)
        .bind(&self.node)
        .execute(&mut *tx)
        .await?;
        let claim = if inserted.rows_affected() == 1 {
            IdempotencyClaim::Claimed
        } else {
            let row = sqlx::query("SELECT fingerprint, status, body FROM idempotency WHERE scope = $1 AND key = $2")
                .bind(scope)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?
                // The winner released its claim between the insert and this read: busy, retryable.
                .ok_or_else(|| StoreError::Busy(format!("idempotency key {key} changed hands")))?;
            let status: i64 = row.try_get("status")?;
            let fingerprint: String = row.try_get("fingerprint")?;
            if status == 0 {
                IdempotencyClaim::InProgress { fingerprint }
            } else {
                IdempotencyClaim::Done(IdempotentReply {
                    fingerprint,
                    status: u16::try_from(status).map_err(|_| StoreError::Corrupt("status out of range".into()))?,
                    body: row.try_get("body")?,
                })
            }
        };
        tx.commit().await?;
        Ok(claim)
    }

    async fn finish_idempotent(&self, scope: &str, key: &str, reply: &IdempotentReply) -> Result<()> {
        let update =
            sqlx::query("UPDATE idempotency SET status = $1, body = $2 WHERE scope = $3 AND key = $4 AND status = 0")
                .bind(i64::from(reply.status))
                .bind(&reply.body)
                .bind(scope)
                .bind(key);
        self.write(key_scope(scope), update).await?;
        Ok(())
    }

    async fn release_idempotent(&self, scope: &str, key: &str) -> Result<()> {
        let delete =
            sqlx::query("DELETE FROM idempotency WHERE scope = $1 AND key = $2 AND status = 0").bind(scope).bind(key);
        self.write(key_scope(scope), delete).await?;
        Ok(())
    }

    async fn release_pending_idempotency(&self) -> Result<u64> {
        let delete = sqlx::query("DELETE FROM idempotency WHERE status = 0 AND node IN ($1, '')").bind(&self.node);
        Ok(self.write(Scope::Platform, delete).await?.rows_affected())
    }
}
