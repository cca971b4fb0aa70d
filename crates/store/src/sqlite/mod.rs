//! The embedded store: one SQLite file in the data dir, in WAL mode with `synchronous=FULL`
//! (an acknowledged write survives a crash), foreign keys on, and migrations compiled into the
//! binary. Writes go through one in-process lock, so a read-then-write such as an audit append
//! never races another writer, and write transactions begin `IMMEDIATE`: they take SQLite's
//! write lock up front (waiting for it if need be) instead of upgrading a read snapshot, which
//! SQLite refuses at once when another connection wrote meanwhile.
//!
//! This module owns the connection, the migrations and the shapes every query shares. A row
//! type says once where it lives, how it is read and how it is bound (`Table`, `Columns`, most
//! often by `from_columns!`); `select` and `insert` build its statements from that, `one` and
//! `all` read it back, `insert_row` writes it with its constraint failures named
//! (`Constraints`), and `SqliteStore::get_in`, `SqliteStore::page` and `SqliteStore::delete_in`
//! are the lookups every namespace-scoped table has. `SqliteStore::write_tx` is the write
//! transaction, `SqliteStore::execute` a single write under the lock, and `within` checks a
//! quota. Each aggregate's queries live in a module of their own.

mod agents;
mod audit;
mod audit_sync;
mod egress_ca;
mod filesystems;
mod idempotency;
mod identity;
mod images;
mod namespaces;
mod nodes;
mod sandboxes;
#[cfg(test)]
mod tests;
mod usage;

use std::borrow::Cow;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row, Sqlite, SqliteConnection, SqlitePool, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use crate::rows::{as_i64, to_json, within};
use crate::{Result, StoreError};

pub use audit_sync::{AuditSync, DEFAULT_AUDIT_SYNC};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "control plane", include_str!("../../migrations/sqlite/0001_control_plane.sql")),
    (2, "sandboxes", include_str!("../../migrations/sqlite/0002_sandboxes.sql")),
    (3, "filesystems", include_str!("../../migrations/sqlite/0003_filesystems.sql")),
    (4, "usage", include_str!("../../migrations/sqlite/0004_usage.sql")),
    (5, "io metering", include_str!("../../migrations/sqlite/0005_io_metering.sql")),
    (6, "identity", include_str!("../../migrations/sqlite/0006_identity.sql")),
    (7, "sandbox project", include_str!("../../migrations/sqlite/0007_sandbox_project.sql")),
    (8, "host ids and audit retention", include_str!("../../migrations/sqlite/0008_host_ids_and_audit_retention.sql")),
    (9, "namespace incarnation", include_str!("../../migrations/sqlite/0009_namespace_incarnation.sql")),
    (10, "egress", include_str!("../../migrations/sqlite/0010_egress.sql")),
    (11, "egress metering", include_str!("../../migrations/sqlite/0011_egress_metering.sql")),
    (12, "images", include_str!("../../migrations/sqlite/0012_images.sql")),
    (13, "agents", include_str!("../../migrations/sqlite/0013_agents.sql")),
    (14, "warm pools", include_str!("../../migrations/sqlite/0014_warm_pools.sql")),
    (15, "rate limits", include_str!("../../migrations/sqlite/0015_rate_limits.sql")),
    (16, "placement", include_str!("../../migrations/sqlite/0016_placement.sql")),
    (17, "nodes", include_str!("../../migrations/sqlite/0017_nodes.sql")),
];

/// Records an audit chain keeps unless told otherwise ([`SqliteStore::with_audit_retention`]).
pub const DEFAULT_AUDIT_RETENTION: u64 = 50_000;

/// The SQLite implementation of [`Store`](crate::Store).
pub struct SqliteStore {
    pool: SqlitePool,
    write_lock: Mutex<()>,
    /// Records each audit chain keeps; older ones are pruned behind a checkpoint.
    audit_retention: u64,
    /// When what audit appends (and the exec counters) commit with `synchronous=NORMAL` is
    /// fsynced ([`audit_sync`]).
    audit_sync: AuditSync,
    wal_sync: std::sync::Arc<audit_sync::WalSync>,
    /// The one connection with `synchronous=NORMAL`, used under the write lock by audit
    /// appends and the ledger's counters only (`SqliteStore::relaxed`); opened on first use,
    /// and again after a use that did not finish.
    relaxed: Mutex<Option<SqliteConnection>>,
    /// How `relaxed` is opened.
    relaxed_options: SqliteConnectOptions,
    /// The node this process is ([`SqliteStore::with_node`]): its idempotency claims are marked
    /// with it.
    node: String,
}

fn migrator() -> Migrator {
    let migrations: Vec<Migration> = MIGRATIONS
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(*version, Cow::Borrowed(*description), MigrationType::Simple, Cow::Borrowed(*sql), false)
        })
        .collect();
    Migrator { migrations: Cow::Owned(migrations), ignore_missing: false, locking: true, no_tx: false }
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // Checkpoints run in the background (below), not inside a request's commit, where
            // their fsync of the whole database would land on one unlucky request.
            .pragma("wal_autocheckpoint", "0");
        // WAL mode is a property of the file: set it, and migrate, on one connection before the
        // pool opens any other, so that no connection's setup ever meets a write in flight.
        {
            let mut first = options.clone().journal_mode(SqliteJournalMode::Wal).connect().await?;
            migrator().run(&mut first).await?;
            first.close().await?;
        }
        // Audit appends: written into the WAL at commit, fsynced by `audit_sync`.
        let wal_sync = audit_sync::WalSync::new(path);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .after_release(|conn, _| Box::pin(async move { Ok(back_to_full(conn).await) }))
            .connect_with(options.clone())
            .await?;
        let checkpoints = pool.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                if checkpoints.is_closed() {
                    return;
                }
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&checkpoints).await {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
        });
        wal_sync.spawn_flush(pool.clone());
        let store = Self {
            pool,
            write_lock: Mutex::new(()),
            audit_retention: DEFAULT_AUDIT_RETENTION,
            audit_sync: AuditSync::Each,
            wal_sync,
            relaxed: Mutex::new(None),
            relaxed_options: options.synchronous(SqliteSynchronous::Normal),
            node: String::new(),
        };
        Ok(store.with_audit_sync(DEFAULT_AUDIT_SYNC))
    }

    /// Opens an existing database for reading only (`SQLITE_OPEN_READONLY`): no migration, no
    /// background checkpoint or flush, any write refused by SQLite. For `bulkhead doctor` beside
    /// (or instead of) a live server. A missing file is an error.
    pub async fn open_read_only(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        Ok(Self {
            pool,
            write_lock: Mutex::new(()),
            audit_retention: DEFAULT_AUDIT_RETENTION,
            audit_sync: AuditSync::Each,
            wal_sync: audit_sync::WalSync::new(path),
            relaxed: Mutex::new(None),
            relaxed_options: options,
            node: String::new(),
        })
    }

    /// Sets when an audit append is durable against a power loss (see [`AuditSync`]); the
    /// default is [`DEFAULT_AUDIT_SYNC`]. Call it once, right after [`SqliteStore::open`].
    pub fn with_audit_sync(mut self, sync: AuditSync) -> Self {
        self.wal_sync.set_window(match sync {
            AuditSync::Each => None,
            AuditSync::Grouped { within } => Some(within),
        });
        self.audit_sync = sync;
        self
    }

    /// Marks this process's idempotency claims with its node (`node_…`), so that a start releases
    /// only its own claims (see [`crate::IdempotencyStore::release_pending_idempotency`]).
    pub fn with_node(mut self, node: &str) -> Self {
        node.clone_into(&mut self.node);
        self
    }

    /// Keeps at most `records` (at least 1) records per audit chain; the oldest are pruned as
    /// new ones are appended.
    pub fn with_audit_retention(mut self, records: u64) -> Self {
        self.audit_retention = records.max(1);
        self
    }

    /// Begins a write transaction: the in-process write lock, then SQLite's (`BEGIN
    /// IMMEDIATE`). Dropped without [`WriteTx::commit`], it rolls back, then lets the lock go.
    async fn write_tx(&self) -> Result<WriteTx<'_>> {
        let lock = self.write_lock.lock().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _lock: lock })
    }

    /// Runs one write statement outside a transaction, under the write lock.
    async fn execute(&self, q: Query<'_>) -> sqlx::Result<sqlx::sqlite::SqliteQueryResult> {
        let _w = self.write_lock.lock().await;
        q.execute(&self.pool).await
    }

    /// The row of `T` in `namespace` whose key column ([`Table::KEY`]) is `key`.
    async fn get_in<T: Table>(&self, namespace: &str, key: &str) -> Result<Option<T>> {
        let sql = select::<T>(&format!("WHERE namespace = ? AND {} = ?", T::KEY));
        one(&self.pool, sqlx::query(&sql).bind(namespace).bind(key)).await
    }

    /// Deletes the row of `T` in `namespace` whose key column is `key`, under the write lock;
    /// whether there was one.
    async fn delete_in<T: Table>(&self, namespace: &str, key: &str) -> Result<bool> {
        let sql = format!("DELETE FROM {} WHERE namespace = ? AND {} = ?", T::TABLE, T::KEY);
        Ok(self.execute(sqlx::query(&sql).bind(namespace).bind(key)).await?.rows_affected() > 0)
    }

    /// A page of the rows of `T` in `namespace`: in key order after `after`, at most `limit`.
    async fn page<T: Table>(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<T>> {
        self.page_of::<T>(T::COLUMNS, namespace, after, limit).await
    }

    /// [`SqliteStore::page`] reading the select list `columns` instead of [`Columns::COLUMNS`].
    async fn page_of<T: Table>(
        &self,
        columns: &str,
        namespace: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<T>> {
        let (table, key) = (T::TABLE, T::KEY);
        let sql = format!("SELECT {columns} FROM {table} WHERE namespace = ? AND {key} > ? ORDER BY {key} LIMIT ?");
        all(&self.pool, sqlx::query(&sql).bind(namespace).bind(after.unwrap_or("")).bind(i64::from(limit))).await
    }
}

/// Whether a connection given back to the pool may be handed out again: only when it is at
/// `synchronous=FULL` and outside any transaction. SQLite refuses to change the safety level
/// inside a transaction, so one statement checks both. A connection still in a transaction is closed, which rolls the transaction back
/// and lets SQLite's write lock go: sqlx's `begin_with` can be cancelled (a client gone
/// mid-request drops the future) after its `BEGIN IMMEDIATE` ran and before a `Transaction`
/// exists to roll it back, and such a connection, reused, held the write lock behind the
/// store's own until every other writer failed with `database is locked` after the busy timeout.
///
/// sqlx's own count of open transactions must be zero too: a `COMMIT` that failed (a full disk)
/// and that SQLite rolled back by itself leaves the count at one, and every `begin_with` on that
/// connection would then fail.
async fn back_to_full(conn: &mut SqliteConnection) -> bool {
    use sqlx::TransactionManager;
    if <Sqlite as sqlx::Database>::TransactionManager::get_transaction_depth(conn) != 0 {
        return false;
    }
    sqlx::query("PRAGMA synchronous = FULL").execute(conn).await.is_ok()
}

/// A statement with its bound arguments.
type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

/// A value the store keeps as columns: how it is read back from a result row and bound to a
/// statement, column by column, in the order of [`Columns::COLUMNS`].
trait Columns: Sized {
    /// The select list [`Columns::from_row`] reads; every query of the value selects exactly these.
    const COLUMNS: &'static str;
    fn from_row(row: &SqliteRow) -> Result<Self>;
    /// Binds the value's columns to `q`, in the order of [`Columns::COLUMNS`].
    fn bind_all<'q>(&'q self, q: Query<'q>) -> Result<Query<'q>>;
}

/// A row type that is a table's row: its columns are the table's.
trait Table: Columns {
    /// The table.
    const TABLE: &'static str;
    /// The column that names a row within its namespace (or its chain): what
    /// [`SqliteStore::get_in`] looks up and [`SqliteStore::page`] orders by.
    const KEY: &'static str;
}

/// The row types' columns ([`crate::rows`]), against this store's rows.
mod rows {
    crate::rows::row_mappings!(sqlx::sqlite::SqliteRow);
}

/// `SELECT <T's columns> FROM <T's table> <rest>`.
fn select<T: Table>(rest: &str) -> String {
    format!("SELECT {} FROM {} {rest}", T::COLUMNS, T::TABLE)
}

/// `INSERT INTO <T's table> (<T's columns>) VALUES (?, ...)`, a placeholder a column.
fn insert<T: Table>() -> String {
    let placeholders = vec!["?"; T::COLUMNS.split(',').count()].join(", ");
    format!("INSERT INTO {} ({}) VALUES ({placeholders})", T::TABLE, T::COLUMNS)
}

/// Inserts `row` into its table, the write's constraint failures named by `names`.
async fn insert_row<'c, T: Table>(
    exec: impl sqlx::Executor<'c, Database = Sqlite>,
    row: &T,
    names: Constraints,
) -> Result<()> {
    let sql = insert::<T>();
    names.check(row.bind_all(sqlx::query(&sql))?.execute(exec).await)?;
    Ok(())
}

/// The one row `q` finds, read as a `T`; `None` when it finds none.
async fn one<'c, T: Columns>(exec: impl sqlx::Executor<'c, Database = Sqlite>, q: Query<'_>) -> Result<Option<T>> {
    q.fetch_optional(exec).await?.as_ref().map(T::from_row).transpose()
}

/// Every row `q` finds, read as `T`s.
async fn all<'c, T: Columns>(exec: impl sqlx::Executor<'c, Database = Sqlite>, q: Query<'_>) -> Result<Vec<T>> {
    q.fetch_all(exec).await?.iter().map(T::from_row).collect()
}

/// A write transaction: SQLite's write lock and the store's, held until it commits or drops.
struct WriteTx<'a> {
    // Declared first, so it is dropped (its rollback queued) before the lock is let go.
    tx: Transaction<'static, Sqlite>,
    _lock: MutexGuard<'a, ()>,
}

impl WriteTx<'_> {
    async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

impl Deref for WriteTx<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

/// What a write's constraint failures mean: the row whose unique key is already `taken`
/// becomes [`StoreError::Conflict`], a parent row a foreign key finds `missing` becomes
/// [`StoreError::NotFound`]; a failure left unnamed stays [`StoreError::Database`].
#[derive(Debug, Default)]
struct Constraints {
    taken: Option<String>,
    missing: Option<String>,
}

impl Constraints {
    /// Names the row a unique-constraint failure says exists (`"key ci"`).
    fn taken(mut self, what: String) -> Self {
        self.taken = Some(what);
        self
    }

    /// Names the row a foreign-key failure says is absent (`"namespace acme"`).
    fn missing(mut self, what: String) -> Self {
        self.missing = Some(what);
        self
    }

    /// The write's outcome, its constraint failures named.
    fn check<T>(self, r: sqlx::Result<T>) -> Result<T> {
        let e = match r {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let named = match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => self.taken.map(StoreError::Conflict),
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => self.missing.map(StoreError::NotFound),
            _ => None,
        };
        Err(named.unwrap_or_else(|| StoreError::from(e)))
    }
}

fn as_u64(row: &SqliteRow, col: &str) -> Result<u64> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col} is negative")))
}

/// A nullable JSON column read into `T`; a value that does not parse is `Corrupt`, naming `what`.
fn json_column<T: serde::de::DeserializeOwned>(row: &SqliteRow, col: &str, what: &str) -> Result<Option<T>> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))).transpose()
}
