//! Queries of the nodes aggregate. One process opens a SQLite store, so it has one node, and
//! no other process changes what it caches.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::SqliteStore;
use crate::{Changes, NodeRow, NodeStore, Result};

fn node_row(row: &SqliteRow) -> Result<NodeRow> {
    Ok(NodeRow {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        started_at_ms: row.try_get("started_at_ms")?,
        lease_until_ms: row.try_get("lease_until_ms")?,
        lost_at_ms: row.try_get("lost_at_ms")?,
    })
}

#[async_trait]
impl NodeStore for SqliteStore {
    async fn register_node(&self, id: &str, url: &str, now_ms: i64, lease_until_ms: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO nodes (id, url, started_at_ms, lease_until_ms, lost_at_ms) VALUES (?, ?, ?, ?, NULL) \
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, started_at_ms = excluded.started_at_ms, \
             lease_until_ms = excluded.lease_until_ms, lost_at_ms = NULL",
        )
        .bind(id)
        .bind(url)
        .bind(now_ms)
        .bind(lease_until_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE sandboxes SET node = ? WHERE node = ''").bind(id).execute(&mut *tx).await?;
        sqlx::query("UPDATE idempotency SET node = ? WHERE node = ''").bind(id).execute(&mut *tx).await?;
        sqlx::query("UPDATE filesystems SET node = ? WHERE node = ''").bind(id).execute(&mut *tx).await?;
        tx.commit().await
    }

    async fn renew_node(&self, id: &str, lease_until_ms: i64) -> Result<bool> {
        let q = sqlx::query("UPDATE nodes SET lease_until_ms = ? WHERE id = ? AND lost_at_ms IS NULL")
            .bind(lease_until_ms)
            .bind(id);
        Ok(self.execute(q).await?.rows_affected() == 1)
    }

    async fn nodes(&self) -> Result<Vec<NodeRow>> {
        let rows = sqlx::query("SELECT id, url, started_at_ms, lease_until_ms, lost_at_ms FROM nodes ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(node_row).collect()
    }

    async fn expire_nodes(&self, me: &str, now_ms: i64, reason: &str) -> Result<Vec<(String, Vec<String>)>> {
        let mut tx = self.write_tx().await?;
        let lost: Vec<String> = sqlx::query_scalar(
            "UPDATE nodes SET lost_at_ms = ? WHERE id <> ? AND lost_at_ms IS NULL AND lease_until_ms < ? RETURNING id",
        )
        .bind(now_ms)
        .bind(me)
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        let mut declared = Vec::with_capacity(lost.len());
        for node in lost {
            let sandboxes: Vec<String> = sqlx::query_scalar(
                "UPDATE sandboxes SET status = 'failed', reason = ?, ended_at_ms = ?, workload_token_hash = NULL \
                 WHERE node = ? AND status IN ('creating', 'running') RETURNING id",
            )
            .bind(reason)
            .bind(now_ms)
            .bind(&node)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM idempotency WHERE status = 0 AND node = ?").bind(&node).execute(&mut *tx).await?;
            declared.push((node, sandboxes));
        }
        tx.commit().await?;
        Ok(declared)
    }

    async fn remove_node(&self, id: &str) -> Result<()> {
        self.execute(sqlx::query("DELETE FROM nodes WHERE id = ?").bind(id)).await?;
        Ok(())
    }

    async fn token_key(&self, sealed: &str, now_ms: i64) -> Result<String> {
        let mut tx = self.write_tx().await?;
        sqlx::query("INSERT INTO token_key (id, sealed, created_at_ms) VALUES (1, ?, ?) ON CONFLICT (id) DO NOTHING")
            .bind(sealed)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let stored: String =
            sqlx::query_scalar("SELECT sealed FROM token_key WHERE id = 1").fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn changes(&self) -> Result<Option<Changes>> {
        Ok(None)
    }
}
