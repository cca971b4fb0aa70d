//! Queries of the nodes aggregate, and the connection that listens for changes
//! (`LISTEN bulkhead_changes`, notified by migration 17's triggers at each commit).

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgRow};
use sqlx::Row;

use super::{PgStore, Scope};
use crate::{Change, Changes, NodeRow, NodeStore, Result};

/// The channel migration 17's triggers notify.
const CHANNEL: &str = "bulkhead_changes";

/// Changes waiting to be taken before the listener stops reading (it then waits).
const CHANGES_BACKLOG: usize = 1024;

fn node_row(row: &PgRow) -> Result<NodeRow> {
    Ok(NodeRow {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        started_at_ms: row.try_get("started_at_ms")?,
        lease_until_ms: row.try_get("lease_until_ms")?,
        lost_at_ms: row.try_get("lost_at_ms")?,
    })
}

#[async_trait]
impl NodeStore for PgStore {
    async fn register_node(&self, id: &str, url: &str, now_ms: i64, lease_until_ms: i64) -> Result<()> {
        let mut tx = self.scoped(Scope::Platform).await?;
        sqlx::query(
            "INSERT INTO nodes (id, url, started_at_ms, lease_until_ms, lost_at_ms) VALUES ($1, $2, $3, $4, NULL) \
             ON CONFLICT (id) DO UPDATE SET url = $2, started_at_ms = $3, lease_until_ms = $4, lost_at_ms = NULL",
        )
        .bind(id)
        .bind(url)
        .bind(now_ms)
        .bind(lease_until_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE sandboxes SET node = $1 WHERE node = ''").bind(id).execute(&mut *tx).await?;
        sqlx::query("UPDATE idempotency SET node = $1 WHERE node = ''").bind(id).execute(&mut *tx).await?;
        sqlx::query("UPDATE filesystems SET node = $1 WHERE node = ''").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn renew_node(&self, id: &str, lease_until_ms: i64) -> Result<bool> {
        let q = sqlx::query("UPDATE nodes SET lease_until_ms = $1 WHERE id = $2 AND lost_at_ms IS NULL")
            .bind(lease_until_ms)
            .bind(id);
        Ok(self.write(Scope::Platform, q).await?.rows_affected() == 1)
    }

    async fn nodes(&self) -> Result<Vec<NodeRow>> {
        let mut tx = self.scoped(Scope::Platform).await?;
        let rows = sqlx::query("SELECT id, url, started_at_ms, lease_until_ms, lost_at_ms FROM nodes ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(node_row).collect()
    }

    async fn expire_nodes(&self, me: &str, now_ms: i64, reason: &str) -> Result<Vec<(String, Vec<String>)>> {
        let mut tx = self.scoped(Scope::Platform).await?;
        // The row lock of each node's update makes a concurrent caller wait, then find the node
        // already lost: exactly one caller declares it.
        let lost: Vec<String> = sqlx::query_scalar(
            "UPDATE nodes SET lost_at_ms = $1 WHERE id <> $2 AND lost_at_ms IS NULL AND lease_until_ms < $1 \
             RETURNING id",
        )
        .bind(now_ms)
        .bind(me)
        .fetch_all(&mut *tx)
        .await?;
        let mut declared = Vec::with_capacity(lost.len());
        for node in lost {
            let sandboxes: Vec<String> = sqlx::query_scalar(
                "UPDATE sandboxes SET status = 'failed', reason = $1, ended_at_ms = $2, workload_token_hash = NULL \
                 WHERE node = $3 AND status IN ('creating', 'running') RETURNING id",
            )
            .bind(reason)
            .bind(now_ms)
            .bind(&node)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM idempotency WHERE status = 0 AND node = $1").bind(&node).execute(&mut *tx).await?;
            declared.push((node, sandboxes));
        }
        tx.commit().await?;
        Ok(declared)
    }

    async fn remove_node(&self, id: &str) -> Result<()> {
        self.write(Scope::Platform, sqlx::query("DELETE FROM nodes WHERE id = $1").bind(id)).await?;
        Ok(())
    }

    async fn token_key(&self, sealed: &str, now_ms: i64) -> Result<String> {
        let mut tx = self.scoped(Scope::Platform).await?;
        // A concurrent first start waits on the conflicting insert, then reads the winner's.
        sqlx::query("INSERT INTO token_key (id, sealed, created_at_ms) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING")
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
        // Its own connection as the URL's role (LISTEN reads no table); sqlx makes it again
        // when it is lost, and says so by a `None` from `try_recv`, after which what was
        // notified meanwhile is unknown.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(self.options.clone())
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(CHANGES_BACKLOG);
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    r = listener.try_recv() => r,
                    () = tx.closed() => break,
                };
                let change = match received {
                    Ok(Some(n)) => match Change::parse(n.payload()) {
                        Some(c) => c,
                        None => {
                            tracing::warn!(payload = n.payload(), "an unknown change notification");
                            continue;
                        }
                    },
                    Ok(None) => Change::Lost,
                    Err(e) => {
                        tracing::warn!(error = %e, "listening for changes failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        Change::Lost
                    }
                };
                if tx.send(change).await.is_err() {
                    break;
                }
            }
            pool.close().await;
        });
        Ok(Some(rx))
    }
}
