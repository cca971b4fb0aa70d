//! Queries of idempotency keys: a claim is taken in one transaction that also clears expired
//! answers, so of concurrent claims exactly one wins.

use async_trait::async_trait;
use sqlx::Row;

use super::SqliteStore;
use crate::{IdempotencyClaim, IdempotencyStore, IdempotentReply, Result, StoreError};

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn claim_idempotent(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
        expired_before_ms: i64,
    ) -> Result<IdempotencyClaim> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM idempotency WHERE scope = ? AND key = ? AND status <> 0 AND created_at_ms < ?")
            .bind(scope)
            .bind(key)
            .bind(expired_before_ms)
            .execute(&mut *tx)
            .await?;
        // A little of the table's expired answers goes with every claim, so it holds about a
        // lifetime's worth of creates.
        sqlx::query(
            "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency \
             WHERE created_at_ms < ? AND status <> 0 ORDER BY created_at_ms LIMIT 16)",
        )
        .bind(expired_before_ms)
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency (scope, key, fingerprint, status, body, created_at_ms, node) \
             VALUES (?, ?, ?, 0, '', ?, ?) ON CONFLICT (scope, key) DO NOTHING",
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
            let row = sqlx::query("SELECT fingerprint, status, body FROM idempotency WHERE scope = ? AND key = ?")
                .bind(scope)
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
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
            sqlx::query("UPDATE idempotency SET status = ?, body = ? WHERE scope = ? AND key = ? AND status = 0")
                .bind(i64::from(reply.status))
                .bind(&reply.body)
                .bind(scope)
                .bind(key);
        self.execute(update).await?;
        Ok(())
    }

    async fn release_idempotent(&self, scope: &str, key: &str) -> Result<()> {
        let delete =
            sqlx::query("DELETE FROM idempotency WHERE scope = ? AND key = ? AND status = 0").bind(scope).bind(key);
        self.execute(delete).await?;
        Ok(())
    }

    async fn release_pending_idempotency(&self) -> Result<u64> {
        let delete = sqlx::query("DELETE FROM idempotency WHERE status = 0 AND node IN (?, '')").bind(&self.node);
        Ok(self.execute(delete).await?.rows_affected())
    }
}
