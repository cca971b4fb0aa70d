//! Queries of the audit chains: an append seals the record against the chain head, moves the
//! head and prunes past the retention behind a checkpoint, all in one transaction; a
//! verification reads checkpoint, records and head from one snapshot. Appends commit on the
//! store's own `synchronous=NORMAL` connection and are fsynced as `audit_sync` says; every read
//! first waits until each append before it is durable, so no record anyone saw can be lost to a
//! power loss.

use async_trait::async_trait;
use bulkhead_core::audit::{self, AuditEvent, AuditRecord, Checkpoint, Verification};
use sqlx::{Connection, Row, SqliteConnection};

use super::{all, as_i64, as_u64, insert_row, one, select, AuditSync, Constraints, SqliteStore};
use crate::{AuditQuery, AuditStore, Result};

/// A chain's head: its last sequence number and hash; `None` for a chain with no record yet.
async fn read_head(conn: &mut SqliteConnection, chain: &str) -> Result<Option<(u64, String)>> {
    let row = sqlx::query("SELECT last_seq, last_hash FROM audit_heads WHERE chain = ?")
        .bind(chain)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => Ok(Some((as_u64(&row, "last_seq")?, row.try_get("last_hash")?))),
        None => Ok(None),
    }
}

/// What an append needs of its chain, in one statement: the head ([`read_head`]) and the
/// sequence number pruned through (the checkpoint's, 0 while nothing was pruned).
async fn read_head_and_pruned(conn: &mut SqliteConnection, chain: &str) -> Result<(Option<(u64, String)>, u64)> {
    let row = sqlx::query(
        "SELECT h.last_seq, h.last_hash, (SELECT seq FROM audit_checkpoints WHERE chain = ?1) AS pruned \
         FROM (SELECT 1) LEFT JOIN audit_heads h ON h.chain = ?1",
    )
    .bind(chain)
    .fetch_one(&mut *conn)
    .await?;
    let head = match row.try_get::<Option<i64>, _>("last_seq")? {
        Some(_) => Some((as_u64(&row, "last_seq")?, row.try_get("last_hash")?)),
        None => None,
    };
    let pruned = match row.try_get::<Option<i64>, _>("pruned")? {
        Some(_) => as_u64(&row, "pruned")?,
        None => 0,
    };
    Ok((head, pruned))
}

/// The chain's checkpoint as stored; `None` while nothing was pruned.
async fn read_checkpoint(conn: &mut SqliteConnection, chain: &str) -> Result<Option<Checkpoint>> {
    one(conn, sqlx::query(&select::<Checkpoint>("WHERE chain = ?")).bind(chain)).await
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, chain: &str, event: AuditEvent) -> Result<AuditRecord> {
        // The store's write lock, then a write transaction on the connection that commits
        // without waiting for its fsync (`synchronous=NORMAL`).
        let lock = self.write_lock.lock().await;
        let mut conn = self.relaxed().await?;
        let record = self.append_on(&mut conn, chain, event).await?;
        conn.finished();
        let n = self.wal_sync.committed();
        drop(lock);
        // Appends that commit while this fsync runs share the next one.
        if self.audit_sync == AuditSync::Each {
            self.wal_sync.sync_through(n).await?;
        }
        Ok(record)
    }

    async fn list_audit(&self, chain: &str, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        self.wal_sync.sync_all().await?;
        let sql = select::<AuditRecord>(
            "WHERE chain = ? AND seq > ? \
             AND (? IS NULL OR action = ?) AND (? IS NULL OR time_ms >= ?) AND (? IS NULL OR time_ms < ?) \
             ORDER BY seq LIMIT ?",
        );
        let query = sqlx::query(&sql)
            .bind(chain)
            .bind(as_i64(q.after_seq))
            .bind(q.action.as_deref())
            .bind(q.action.as_deref())
            .bind(q.since_ms)
            .bind(q.since_ms)
            .bind(q.until_ms)
            .bind(q.until_ms)
            .bind(i64::from(q.limit));
        all(&self.pool, query).await
    }

    async fn audit_head(&self, chain: &str) -> Result<Option<(u64, String)>> {
        self.wal_sync.sync_all().await?;
        let mut conn = self.pool.acquire().await?;
        read_head(&mut conn, chain).await
    }

    async fn audit_checkpoint(&self, chain: &str) -> Result<Option<Checkpoint>> {
        self.wal_sync.sync_all().await?;
        let mut conn = self.pool.acquire().await?;
        read_checkpoint(&mut conn, chain).await
    }

    async fn verify_audit(&self, chain: &str) -> Result<Verification> {
        self.wal_sync.sync_all().await?;
        // One read transaction: in WAL mode its snapshot holds for every statement in it, so
        // the checkpoint, the records and the head agree however many appends run meanwhile.
        let mut tx = self.pool.begin().await?;
        let checkpoint = read_checkpoint(&mut tx, chain).await?;
        let head = read_head(&mut tx, chain).await?;
        let mut verifier = match &checkpoint {
            Some(c) => audit::Verifier::after(chain, c),
            None => audit::Verifier::new(chain),
        };
        let mut after = checkpoint.as_ref().map_or(0, |c| c.seq);
        const BATCH: i64 = 1000;
        let sql = select::<AuditRecord>("WHERE chain = ? AND seq > ? ORDER BY seq LIMIT ?");
        loop {
            let records: Vec<AuditRecord> =
                all(&mut *tx, sqlx::query(&sql).bind(chain).bind(as_i64(after)).bind(BATCH)).await?;
            for record in &records {
                after = record.seq;
                verifier.push(record);
            }
            if records.len() < BATCH as usize {
                break;
            }
        }
        tx.commit().await?;
        Ok(verifier.finish(head.as_ref().map(|(s, h)| (*s, h.as_str()))))
    }
}

impl SqliteStore {
    /// One audit append's transaction on `conn`: seal the record against the chain head, move
    /// the head, prune behind the checkpoint.
    async fn append_on(&self, conn: &mut SqliteConnection, chain: &str, event: AuditEvent) -> Result<AuditRecord> {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let (head, pruned_through) = read_head_and_pruned(&mut tx, chain).await?;
        let record = audit::seal(chain, head.as_ref().map(|(s, h)| (*s, h.as_str())), event);
        insert_row(&mut *tx, &record, Constraints::default()).await?;
        sqlx::query(
            "INSERT INTO audit_heads (chain, last_seq, last_hash) VALUES (?, ?, ?) \
             ON CONFLICT (chain) DO UPDATE SET last_seq = excluded.last_seq, last_hash = excluded.last_hash",
        )
        .bind(chain)
        .bind(as_i64(record.seq))
        .bind(&record.hash)
        .execute(&mut *tx)
        .await?;
        // Retention: keep the newest `audit_retention` records; the checkpoint moves to the last
        // record pruned, whose hash the first record kept links to. Sequence numbers are
        // contiguous, so what is kept is `seq - checkpoint`.
        let keep_from = record.seq.saturating_sub(self.audit_retention);
        if keep_from > pruned_through {
            let last: String = sqlx::query("SELECT hash FROM audit_records WHERE chain = ? AND seq = ?")
                .bind(chain)
                .bind(as_i64(keep_from))
                .fetch_one(&mut *tx)
                .await?
                .try_get("hash")?;
            sqlx::query("DELETE FROM audit_records WHERE chain = ? AND seq <= ?")
                .bind(chain)
                .bind(as_i64(keep_from))
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO audit_checkpoints (chain, seq, hash, time_ms) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, time_ms = excluded.time_ms",
            )
            .bind(chain)
            .bind(as_i64(keep_from))
            .bind(&last)
            .bind(record.event.time_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(record)
    }
}
