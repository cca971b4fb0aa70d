//! Queries of the audit chains: an append takes the chain's advisory lock
//! (`pg_advisory_xact_lock`, held to its commit), seals the record against the chain head,
//! moves the head and prunes past the retention behind a checkpoint, all in one transaction, so
//! that appends from any number of processes line up and a chain never forks; a verification
//! reads checkpoint, records and head from one snapshot (`REPEATABLE READ`). A chain is its
//! namespace's, read and written in that namespace's scope; the platform's chain in the
//! platform scope.

use async_trait::async_trait;
use bulkhead_core::audit::PLATFORM_CHAIN;
use bulkhead_core::audit::{self, AuditEvent, AuditRecord, Checkpoint, Verification};
use sqlx::{PgConnection, Row};

use super::{all, as_i64, as_u64, enter, insert_row, one, select, Constraints, PgStore, Scope, AUDIT_LOCK_CLASS};
use crate::{AuditQuery, AuditStore, Result};

/// The scope a chain lives in: its namespace's, or the platform's for the platform chain.
fn chain_scope(chain: &str) -> Scope<'_> {
    if chain == PLATFORM_CHAIN {
        Scope::Platform
    } else {
        Scope::Namespace(chain)
    }
}

/// `event` with every NUL character of its text replaced by U+FFFD.
fn without_nul(event: AuditEvent) -> AuditEvent {
    let clean = |s: String| if s.contains('\0') { s.replace('\0', "\u{fffd}") } else { s };
    AuditEvent {
        principal: clean(event.principal),
        action: clean(event.action),
        resource: clean(event.resource),
        decision: clean(event.decision),
        request_id: clean(event.request_id),
        detail: clean(event.detail),
        ..event
    }
}

/// A chain's head: its last sequence number and hash; `None` for a chain with no record yet.
async fn read_head(conn: &mut PgConnection, chain: &str) -> Result<Option<(u64, String)>> {
    let row = sqlx::query("SELECT last_seq, last_hash FROM audit_heads WHERE chain = $1")
        .bind(chain)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => Ok(Some((as_u64(&row, "last_seq")?, row.try_get("last_hash")?))),
        None => Ok(None),
    }
}

/// The chain's checkpoint as stored; `None` while nothing was pruned.
async fn read_checkpoint(conn: &mut PgConnection, chain: &str) -> Result<Option<Checkpoint>> {
    one(conn, sqlx::query(&select::<Checkpoint>("WHERE chain = ?")).bind(chain)).await
}

#[async_trait]
impl AuditStore for PgStore {
    async fn append_audit(&self, chain: &str, event: AuditEvent) -> Result<AuditRecord> {
        // PostgreSQL's text holds no NUL: such a character (a request's path can carry one) is
        // kept as U+FFFD, and the record is sealed as it is kept.
        let event = without_nul(event);
        let mut tx = self.scoped(chain_scope(chain)).await?;
        // Every append to the chain, from this process or another, waits here for the one
        // before it to commit (or roll back): the head it reads next is the last one.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(AUDIT_LOCK_CLASS)
            .bind(chain)
            .execute(&mut *tx)
            .await?;
        let head = read_head(&mut tx, chain).await?;
        let record = audit::seal(chain, head.as_ref().map(|(s, h)| (*s, h.as_str())), event);
        insert_row(&mut tx, &record, Constraints::default()).await?;
        sqlx::query(
            "INSERT INTO audit_heads (chain, last_seq, last_hash) VALUES ($1, $2, $3) \
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
        let pruned_through = read_checkpoint(&mut tx, chain).await?.map_or(0, |c| c.seq);
        let keep_from = record.seq.saturating_sub(self.audit_retention);
        if keep_from > pruned_through {
            let last: String = sqlx::query("SELECT hash FROM audit_records WHERE chain = $1 AND seq = $2")
                .bind(chain)
                .bind(as_i64(keep_from))
                .fetch_one(&mut *tx)
                .await?
                .try_get("hash")?;
            sqlx::query("DELETE FROM audit_records WHERE chain = $1 AND seq <= $2")
                .bind(chain)
                .bind(as_i64(keep_from))
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO audit_checkpoints (chain, seq, hash, time_ms) VALUES ($1, $2, $3, $4) \
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

    async fn list_audit(&self, chain: &str, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let sql = select::<AuditRecord>(
            "WHERE chain = ? AND seq > ? \
             AND (?::text IS NULL OR action = ?) AND (?::bigint IS NULL OR time_ms >= ?) \
             AND (?::bigint IS NULL OR time_ms < ?) \
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
        self.read_all(chain_scope(chain), query).await
    }

    async fn audit_head(&self, chain: &str) -> Result<Option<(u64, String)>> {
        let mut tx = self.scoped(chain_scope(chain)).await?;
        let head = read_head(&mut tx, chain).await?;
        tx.commit().await?;
        Ok(head)
    }

    async fn audit_checkpoint(&self, chain: &str) -> Result<Option<Checkpoint>> {
        let mut tx = self.scoped(chain_scope(chain)).await?;
        let checkpoint = read_checkpoint(&mut tx, chain).await?;
        tx.commit().await?;
        Ok(checkpoint)
    }

    async fn verify_audit(&self, chain: &str) -> Result<Verification> {
        // One snapshot for every statement: the checkpoint, the records and the head agree
        // however many appends run meanwhile.
        let tx = self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let mut tx = enter(tx, chain_scope(chain)).await?;
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
