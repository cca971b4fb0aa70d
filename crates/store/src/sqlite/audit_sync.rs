//! When an audit append (or a usage counter's bump) is on disk. Appends commit on the store's
//! one connection with `synchronous=NORMAL` (`SqliteStore::relaxed`; every pooled connection
//! stays `FULL`): the commit is written into the WAL file (so it survives a crash of
//! the server process) without waiting for an fsync. Making it survive a power loss is this
//! module's: one `fdatasync` of the WAL file covers every commit written before it, so appends
//! that commit while an fsync runs share the next one (group commit).
//!
//! [`AuditSync::Each`] makes every append wait for an fsync that covers it before it returns;
//! [`AuditSync::Grouped`] returns at commit and leaves the fsync to a background flush within
//! the window. In both modes a read of the audit log (a list, the head, the checkpoint, a
//! verification) first waits for every append before it to be synced: a record that anyone
//! has seen never vanishes in a power loss, so the chain as anyone saw it is never forked by
//! an append that reuses a lost record's sequence number. What a power loss can cost in
//! `Grouped` mode is the records appended in the last window that nobody read yet; the chain
//! left is a prefix of the one before, and it verifies (SQLite's WAL recovery keeps whole
//! transactions, and a record and its chain head move in one).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::ConnectOptions;
use tokio::sync::Mutex;

use crate::{Result, StoreError};

/// When an audit append is durable against a power loss. Either way it has reached the WAL
/// file, and survives a crash of the server process, before `append_audit` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditSync {
    /// Each append returns only after an fsync that covers it (appends in flight at once
    /// share one fsync).
    Each,
    /// An append returns at commit; a background flush makes it durable within `within`, and
    /// any read of the audit log first makes every earlier append durable.
    Grouped { within: Duration },
}

impl super::SqliteStore {
    /// Runs one write statement with `synchronous=NORMAL`, under the write lock, durable as an
    /// audit append is ([`AuditSync`]): the usage ledger's counters bumped by every exec.
    pub(crate) async fn ledger_execute(&self, q: super::Query<'_>) -> Result<()> {
        let lock = self.write_lock.lock().await;
        let mut conn = self.relaxed().await?;
        q.execute(&mut *conn).await?;
        conn.finished();
        let n = self.wal_sync.committed();
        drop(lock);
        if self.audit_sync == AuditSync::Each {
            self.wal_sync.sync_through(n).await?;
        }
        Ok(())
    }

    /// The store's one connection whose commits reach the WAL file without waiting for an
    /// fsync (`synchronous=NORMAL`; [`WalSync`] makes them durable); the caller holds the write
    /// lock. Unless [`Relaxed::finished`] is called, the connection is closed when the guard
    /// goes (which rolls back whatever it left open, a cancelled request's transaction too) and
    /// the next call opens another. One connection of its own, not a pooled one switched to
    /// `NORMAL` and back: no statement but the caller's runs on the request's path.
    pub(crate) async fn relaxed(&self) -> Result<Relaxed<'_>> {
        let mut conn = self.relaxed.lock().await;
        if conn.is_none() {
            *conn = Some(self.relaxed_options.connect().await?);
        }
        Ok(Relaxed { conn, finished: false })
    }
}

/// [`SqliteStore::relaxed`](super::SqliteStore::relaxed)'s connection, held.
pub(crate) struct Relaxed<'a> {
    conn: tokio::sync::MutexGuard<'a, Option<sqlx::SqliteConnection>>,
    finished: bool,
}

impl Relaxed<'_> {
    /// The caller's work on it ended whole (committed, or nothing open): it may be used again.
    pub(crate) fn finished(&mut self) {
        self.finished = true;
    }
}

impl std::ops::Deref for Relaxed<'_> {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &Self::Target {
        // Set by `relaxed` before a guard exists, and taken only by the guard's drop.
        self.conn.as_ref().expect("a held relaxed connection is open")
    }
}

impl std::ops::DerefMut for Relaxed<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.conn.as_mut().expect("a held relaxed connection is open")
    }
}

impl Drop for Relaxed<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // Dropping a connection closes it; SQLite rolls back what it left open.
            self.conn.take();
        }
    }
}

/// The default: a power loss can cost at most the last 100 ms of unread audit records.
pub const DEFAULT_AUDIT_SYNC: AuditSync = AuditSync::Grouped { within: Duration::from_millis(100) };

/// The fsyncs of the WAL file that make audit appends durable.
#[derive(Debug)]
pub(crate) struct WalSync {
    wal: PathBuf,
    /// Audit commits so far (each takes the next number, under the store's write lock).
    committed: AtomicU64,
    /// The number of commits the last finished fsync covered; held while an fsync runs.
    synced: Mutex<u64>,
    /// The background flush's period in microseconds; 0 when there is none ([`AuditSync::Each`]).
    window_us: AtomicU64,
}

impl WalSync {
    /// The WAL syncer of the database at `db` (SQLite's WAL is `<db>-wal`).
    pub(crate) fn new(db: &Path) -> Arc<WalSync> {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        Arc::new(WalSync {
            wal: PathBuf::from(wal),
            committed: AtomicU64::new(0),
            synced: Mutex::new(0),
            window_us: AtomicU64::new(0),
        })
    }

    /// Notes one more audit commit written to the WAL; its number, for [`WalSync::sync_through`].
    pub(crate) fn committed(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Whether some commit is not known to be synced yet.
    async fn pending(&self) -> bool {
        *self.synced.lock().await < self.committed.load(Ordering::SeqCst)
    }

    /// Returns once commit number `n` (and every one before) is on disk: at once when an fsync
    /// since covered it, else after one more fsync, which covers every commit written before
    /// it starts.
    pub(crate) async fn sync_through(&self, n: u64) -> Result<()> {
        let mut synced = self.synced.lock().await;
        if *synced >= n {
            return Ok(());
        }
        // Every commit numbered up to here is written into the file already.
        let covered = self.committed.load(Ordering::SeqCst);
        let wal = self.wal.clone();
        let done = tokio::task::spawn_blocking(move || match std::fs::File::open(&wal) {
            Ok(f) => f.sync_data(),
            // No WAL: SQLite checkpointed it into the database, fsynced, and removed it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await
        .map_err(|e| std::io::Error::other(format!("the audit fsync task failed: {e}")))
        .and_then(|r| r)
        .map_err(|e| std::io::Error::new(e.kind(), format!("fsync of {}: {e}", self.wal.display())));
        done.map_err(|e| StoreError::from(sqlx::Error::Io(e)))?;
        *synced = covered;
        Ok(())
    }

    /// Makes every audit commit so far durable.
    pub(crate) async fn sync_all(&self) -> Result<()> {
        self.sync_through(self.committed.load(Ordering::SeqCst)).await
    }

    /// Sets the background flush's period: `None` for none.
    pub(crate) fn set_window(&self, within: Option<Duration>) {
        let us = within.map_or(0, |w| u64::try_from(w.as_micros()).unwrap_or(u64::MAX).max(1));
        self.window_us.store(us, Ordering::SeqCst);
    }

    /// The background flush of [`AuditSync::Grouped`]: every window, syncs what was committed
    /// since the last sync; ends when `pool` closes.
    pub(crate) fn spawn_flush(self: &Arc<Self>, pool: sqlx::SqlitePool) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let us = me.window_us.load(Ordering::SeqCst);
                // Without a window, look again now and then whether one was set.
                tokio::time::sleep(Duration::from_micros(if us == 0 { 100_000 } else { us })).await;
                if us != 0 && me.pending().await {
                    if let Err(e) = me.sync_all().await {
                        tracing::warn!(error = %e, "audit flush failed");
                    }
                }
                if pool.is_closed() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bulkhead_core::audit::AuditEvent;

    use super::AuditSync;
    use crate::prelude::*;
    use crate::sqlite::SqliteStore;
    use crate::AuditQuery;

    fn event(n: i64) -> AuditEvent {
        AuditEvent {
            time_ms: n,
            principal: "key:key_1".into(),
            action: "sandbox.exec".into(),
            resource: "sandbox:acme/sbx_1".into(),
            decision: "allow".into(),
            status: 200,
            request_id: format!("req_{n}"),
            detail: "{}".into(),
        }
    }

    /// Appends racing from many tasks make one contiguous chain that verifies, in either mode,
    /// and a read leaves nothing it may show unsynced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_make_one_chain_in_either_mode() {
        for sync in [AuditSync::Each, AuditSync::Grouped { within: Duration::from_secs(3600) }] {
            let dir = tempfile::tempdir().unwrap();
            let s = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap().with_audit_sync(sync));
            let tasks: Vec<_> = (0..8)
                .map(|t| {
                    let s = s.clone();
                    tokio::spawn(async move {
                        for i in 0..25 {
                            s.append_audit("acme", event(t * 100 + i)).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            if sync == AuditSync::Each {
                assert!(!s.wal_sync.pending().await, "an append returned before its fsync");
            }
            let records = s.list_audit("acme", &AuditQuery { limit: 1000, ..Default::default() }).await.unwrap();
            assert!(!s.wal_sync.pending().await, "{sync:?}: a read showed records not yet synced");
            assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=200).collect::<Vec<u64>>());
            let v = s.verify_audit("acme").await.unwrap();
            assert!(v.ok, "{sync:?}: {v:?}");
        }
    }

    /// In grouped mode an append returns before its fsync; the background flush syncs it.
    #[tokio::test]
    async fn grouped_appends_are_synced_by_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite"))
            .await
            .unwrap()
            .with_audit_sync(AuditSync::Grouped { within: Duration::from_millis(5) });
        s.append_audit("acme", event(1)).await.unwrap();
        // Not a timing assertion: it waits as long as the flush takes.
        while s.wal_sync.pending().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let reopened = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap();
        assert_eq!(reopened.audit_head("acme").await.unwrap().map(|(seq, _)| seq), Some(1));
    }

    /// The relaxed durability is the append's alone: every connection the pool hands out
    /// afterwards is back to `synchronous=FULL` (2), also after an append that failed.
    #[tokio::test]
    async fn the_pool_stays_fully_synchronous_around_appends() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap();
        for i in 0..20 {
            s.append_audit("acme", event(i)).await.unwrap();
        }
        // A failing append: the chain heads are gone.
        sqlx::query("DROP TABLE audit_heads").execute(&s.pool).await.unwrap();
        assert!(s.append_audit("acme", event(99)).await.is_err());
        let mut held = Vec::new();
        for _ in 0..8 {
            let mut conn = s.pool.acquire().await.unwrap();
            let level: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *conn).await.unwrap();
            assert_eq!(level, 2, "a pooled connection was left with relaxed durability");
            held.push(conn);
        }
    }

    /// Appends commit on the store's own `synchronous=NORMAL` (1) connection; a use of it that
    /// did not finish closes it, and the next append opens another and goes through.
    #[tokio::test]
    async fn appends_use_a_relaxed_connection_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap();
        s.append_audit("acme", event(1)).await.unwrap();
        {
            let mut conn = s.relaxed().await.unwrap();
            let level: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *conn).await.unwrap();
            assert_eq!(level, 1);
            // Left inside a transaction, as a cancelled append would leave it.
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.unwrap();
        }
        assert!(s.relaxed.lock().await.is_none(), "an unfinished use kept its connection");
        s.append_audit("acme", event(2)).await.unwrap();
        assert_eq!(s.audit_head("acme").await.unwrap().map(|(seq, _)| seq), Some(2));
    }
}
