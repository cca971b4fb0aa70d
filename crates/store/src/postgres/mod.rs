//! The PostgreSQL store: the same aggregates as [`crate::sqlite`], the same migrations in
//! PostgreSQL's dialect (`migrations/postgres`), the same semantics, for a platform that runs
//! its control plane on a database it already runs and several servers on one database.
//!
//! **Concurrency.** Where SQLite serializes every writer behind one lock, this store relies on
//! PostgreSQL's: a write that checks a quota (sandbox admission and claims, filesystem
//! admission and resizes, the policy cap) runs `SERIALIZABLE` and is retried on a
//! serialization failure (SQLSTATE `40001`) up to [`SERIALIZABLE_ATTEMPTS`] times, then
//! answered [`StoreError::Busy`]; an audit append takes a transaction-scoped advisory lock on
//! its chain (`pg_advisory_xact_lock`), so that appends from any number of processes line up
//! and a chain never forks; read-modify-writes of one row lock it (`SELECT ... FOR UPDATE`).
//!
//! **Row-level security, a second lock.** Every table has row-level security enabled and
//! forced (migration 1's `bulkhead_lock_table`). A tenant table's `tenant` policy shows a row
//! only to a transaction whose `bulkhead.namespace` setting names the row's namespace; its
//! `platform` policy only to one whose `bulkhead.scope` setting is `platform`. Every
//! transaction of this store sets one of the two first (`set_config(..., true)`, the
//! `SET LOCAL` of a parameter): a method keyed by a namespace sets that namespace, and only the
//! platform-wide methods (those whose arguments name no namespace: the reaper's and
//! reconciliation's scans, lookups by token, admin lists) set the platform scope. A query that
//! forgot its `WHERE namespace = ...` therefore still sees only its namespace's rows, and one
//! that ran outside [`PgStore::scoped`] sees none.
//!
//! Migrations run as the URL's role, which owns the tables. The store then serves through a
//! role it creates ([`PgStore::serving_role`]: the URL's role name and `_serve`), which owns
//! nothing, logs in never, has neither `SUPERUSER` nor `BYPASSRLS` and holds only
//! `SELECT, INSERT, UPDATE, DELETE` on the tables: each pooled connection does `SET ROLE` to it
//! as it opens. A store that finds that role able to bypass row-level security refuses to open.

mod agents;
mod audit;
mod egress_ca;
mod filesystems;
mod idempotency;
mod identity;
mod images;
mod namespaces;
mod nodes;
mod sandboxes;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod usage;

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, PgPool, Postgres, Row, Transaction};

use crate::rows::{as_i64, to_json, within};
use crate::{Result, StoreError, PG_SERIALIZATION_FAILURE};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "control plane", include_str!("../../migrations/postgres/0001_control_plane.sql")),
    (2, "sandboxes", include_str!("../../migrations/postgres/0002_sandboxes.sql")),
    (3, "filesystems", include_str!("../../migrations/postgres/0003_filesystems.sql")),
    (4, "usage", include_str!("../../migrations/postgres/0004_usage.sql")),
    (5, "io metering", include_str!("../../migrations/postgres/0005_io_metering.sql")),
    (6, "identity", include_str!("../../migrations/postgres/0006_identity.sql")),
    (7, "sandbox project", include_str!("../../migrations/postgres/0007_sandbox_project.sql")),
    (
        8,
        "host ids and audit retention",
        include_str!("../../migrations/postgres/0008_host_ids_and_audit_retention.sql"),
    ),
    (9, "namespace incarnation", include_str!("../../migrations/postgres/0009_namespace_incarnation.sql")),
    (10, "egress", include_str!("../../migrations/postgres/0010_egress.sql")),
    (11, "egress metering", include_str!("../../migrations/postgres/0011_egress_metering.sql")),
    (12, "images", include_str!("../../migrations/postgres/0012_images.sql")),
    (13, "agents", include_str!("../../migrations/postgres/0013_agents.sql")),
    (14, "warm pools", include_str!("../../migrations/postgres/0014_warm_pools.sql")),
    (15, "rate limits", include_str!("../../migrations/postgres/0015_rate_limits.sql")),
    (16, "placement", include_str!("../../migrations/postgres/0016_placement.sql")),
    (17, "nodes", include_str!("../../migrations/postgres/0017_nodes.sql")),
];

/// Times a `SERIALIZABLE` transaction runs before a serialization failure is answered
/// [`StoreError::Busy`].
pub const SERIALIZABLE_ATTEMPTS: u32 = 8;

/// Connections each store's pool keeps at most: a server holds at most this many connections
/// (sockets) to its database, however busy it is.
pub const MAX_CONNECTIONS: u32 = 8;

/// Connections a store holds beside its pool: the one that listens for changes
/// ([`crate::NodeStore::changes`]), once asked for.
pub const LISTEN_CONNECTIONS: u32 = 1;

/// How long a pooled connection may stay idle before the pool closes it: what a burst opened is
/// given back to the database (whose connection slots every replica shares) soon after.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The advisory lock key (`pg_advisory_lock`) under which one process at a time sets up the
/// serving role and its grants; the first half of the key of every audit chain's lock.
const SETUP_LOCK: i64 = 0x6275_6c6b_6865_6164; // "bulkhead"
const AUDIT_LOCK_CLASS: i32 = 0x6275_6c6b; // "bulk"

/// What one transaction may see past row-level security: one namespace's rows, or (explicitly)
/// every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// The rows of this namespace (`bulkhead.namespace`).
    Namespace(&'a str),
    /// Every row: platform-wide work (`bulkhead.scope = 'platform'`).
    Platform,
}

/// The PostgreSQL implementation of [`Store`](crate::Store).
pub struct PgStore {
    pool: PgPool,
    /// Records each audit chain keeps; older ones are pruned behind a checkpoint.
    audit_retention: u64,
    role: String,
    /// The node this process is ([`PgStore::with_node`]): its idempotency claims are marked
    /// with it.
    node: String,
    /// How to connect as the URL's role: the connection that listens for changes.
    options: PgConnectOptions,
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

/// The first connection of a store that opens: a failure to reach the database, or to trust it
/// (TLS as the URL's `sslmode` and `sslrootcert` ask), is [`StoreError::Database`] with sqlx's
/// words, never taken for a failing disk as an IO error of a serving store is.
async fn connect(options: &PgConnectOptions) -> Result<PgConnection> {
    options.connect().await.map_err(StoreError::Database)
}

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/database`,
    /// the parameters of libpq's URIs), applies pending migrations as the URL's role, creates
    /// (or brings up to date) the serving role and its grants, and opens the pool that serves
    /// through it. Several processes may open one database at once: migrations and the role's
    /// setup each run under an advisory lock.
    ///
    /// Errors: [`StoreError::Database`] when the database cannot be reached or the URL's role may
    /// not create the serving role (it needs `CREATEROLE`, or the role made beforehand and
    /// granted to it); [`StoreError::Migrate`] when a migration fails;
    /// [`StoreError::Corrupt`] when the serving role can bypass row-level security.
    pub async fn open(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5));
        let role = {
            let mut first = connect(&options).await?;
            // The migrations are the platform's: they may rewrite any row.
            first.execute("SET bulkhead.scope = 'platform'").await?;
            migrator().run(&mut first).await?;
            let role = set_up_serving_role(&mut first).await?;
            first.close().await?;
            role
        };
        let set_role = format!("SET ROLE {}", quote_ident(&role));
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .idle_timeout(IDLE_TIMEOUT)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                let set_role = set_role.clone();
                Box::pin(async move {
                    conn.execute(set_role.as_str()).await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        Ok(Self { pool, audit_retention: crate::sqlite::DEFAULT_AUDIT_RETENTION, role, node: String::new(), options })
    }

    /// Connects to the database at `url` to read only, beside (or instead of) a live server
    /// (`bulkhead doctor --store`): no migration, no role set up, one connection serving through
    /// the serving role as [`PgStore::open`] made it, every transaction read-only (a write is
    /// refused by PostgreSQL). Errors: [`StoreError::Database`] when the database cannot be
    /// reached or no server ever opened it (no serving role, no tables).
    pub async fn open_read_only(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let role = {
            let mut first = connect(&options).await?;
            let user: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&mut first).await?;
            first.close().await?;
            serving_role_of(&user)
        };
        let setup = format!("SET ROLE {}; SET default_transaction_read_only = on", quote_ident(&role));
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .after_connect(move |conn, _| {
                let setup = setup.clone();
                Box::pin(async move {
                    conn.execute(setup.as_str()).await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        Ok(Self { pool, audit_retention: crate::sqlite::DEFAULT_AUDIT_RETENTION, role, node: String::new(), options })
    }

    /// Marks this process's idempotency claims with its node (`node_…`), so that a start releases
    /// only its own claims and a lost node's are released by its peers.
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

    /// The role the pool serves through: no login, owns nothing, no `BYPASSRLS`.
    pub fn serving_role(&self) -> &str {
        &self.role
    }

    /// Closes the pool's connections (waiting for those in use to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a transaction (`READ COMMITTED`) on the store's pool and role that sees what
    /// `scope` lets it see, and no more. Dropped without a commit, it rolls back.
    pub async fn scoped(&self, scope: Scope<'_>) -> Result<Transaction<'static, Postgres>> {
        let tx = self.pool.begin().await?;
        enter(tx, scope).await
    }

    /// [`PgStore::scoped`], `SERIALIZABLE`.
    async fn serializable(&self, scope: Scope<'_>) -> Result<Transaction<'static, Postgres>> {
        let tx = self.pool.begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE").await?;
        enter(tx, scope).await
    }

    /// The one row `q` finds in `scope`.
    async fn read_one<T: Columns>(&self, scope: Scope<'_>, q: Query<'_>) -> Result<Option<T>> {
        let mut tx = self.scoped(scope).await?;
        let row = one(&mut *tx, q).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Every row `q` finds in `scope`.
    async fn read_all<T: Columns>(&self, scope: Scope<'_>, q: Query<'_>) -> Result<Vec<T>> {
        let mut tx = self.scoped(scope).await?;
        let rows = all(&mut *tx, q).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Runs one write statement in a transaction of its own, in `scope`.
    async fn write(&self, scope: Scope<'_>, q: Query<'_>) -> Result<PgQueryResult> {
        let mut tx = self.scoped(scope).await?;
        let r = q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// [`PgStore::write`], its constraint failures named by `names`.
    async fn write_named(&self, scope: Scope<'_>, q: Query<'_>, names: Constraints) -> Result<PgQueryResult> {
        let mut tx = self.scoped(scope).await?;
        let r = names.check(q.execute(&mut *tx).await)?;
        tx.commit().await?;
        Ok(r)
    }

    /// The row of `T` in `namespace` whose key column ([`Table::KEY`]) is `key`.
    async fn get_in<T: Table>(&self, namespace: &str, key: &str) -> Result<Option<T>> {
        let sql = select::<T>(&format!("WHERE namespace = ? AND {} = ?", T::KEY));
        self.read_one(Scope::Namespace(namespace), sqlx::query(&sql).bind(namespace).bind(key)).await
    }

    /// Deletes the row of `T` in `namespace` whose key column is `key`; whether there was one.
    async fn delete_in<T: Table>(&self, namespace: &str, key: &str) -> Result<bool> {
        let sql = pg(&format!("DELETE FROM {} WHERE namespace = ? AND {} = ?", T::TABLE, T::KEY));
        let r = self.write(Scope::Namespace(namespace), sqlx::query(&sql).bind(namespace).bind(key)).await?;
        Ok(r.rows_affected() > 0)
    }

    /// A page of the rows of `T` in `namespace`: in key order after `after`, at most `limit`.
    async fn page<T: Table>(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<T>> {
        self.page_of::<T>(T::COLUMNS, namespace, after, limit).await
    }

    /// [`PgStore::page`] reading the select list `columns` instead of [`Columns::COLUMNS`].
    async fn page_of<T: Table>(
        &self,
        columns: &str,
        namespace: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<T>> {
        let (table, key) = (T::TABLE, T::KEY);
        let sql =
            pg(&format!("SELECT {columns} FROM {table} WHERE namespace = ? AND {key} > ? ORDER BY {key} LIMIT ?"));
        let q = sqlx::query(&sql).bind(namespace).bind(after.unwrap_or("")).bind(i64::from(limit));
        self.read_all(Scope::Namespace(namespace), q).await
    }
}

/// Sets `scope` for the rest of `tx` (`set_config(..., true)`: `SET LOCAL`).
async fn enter(mut tx: Transaction<'static, Postgres>, scope: Scope<'_>) -> Result<Transaction<'static, Postgres>> {
    let q = match scope {
        Scope::Namespace(ns) => sqlx::query("SELECT set_config('bulkhead.namespace', $1, true)").bind(ns),
        Scope::Platform => sqlx::query("SELECT set_config('bulkhead.scope', 'platform', true)"),
    };
    q.execute(&mut *tx).await?;
    Ok(tx)
}

/// Creates the serving role when missing, grants it what it needs and the URL's role its
/// membership, and checks that it cannot bypass row-level security; its name.
async fn set_up_serving_role(conn: &mut PgConnection) -> Result<String> {
    sqlx::query("SELECT pg_advisory_lock($1)").bind(SETUP_LOCK).execute(&mut *conn).await?;
    let r = set_up_serving_role_locked(conn).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(SETUP_LOCK).execute(&mut *conn).await;
    let role = r?;
    unlocked?;
    Ok(role)
}

async fn set_up_serving_role_locked(conn: &mut PgConnection) -> Result<String> {
    let user: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&mut *conn).await?;
    let role = serving_role_of(&user);
    let ident = quote_ident(&role);
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(&role)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        conn.execute(format!("CREATE ROLE {ident} NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT").as_str()).await?;
    }
    let member: bool =
        sqlx::query_scalar("SELECT pg_has_role(current_user, $1, 'MEMBER')").bind(&role).fetch_one(&mut *conn).await?;
    if !member {
        conn.execute(format!("GRANT {ident} TO CURRENT_USER").as_str()).await?;
    }
    for grant in [
        format!("GRANT USAGE ON SCHEMA public TO {ident}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {ident}"),
        format!("REVOKE ALL ON _sqlx_migrations FROM {ident}"),
        format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {ident}"),
    ] {
        conn.execute(grant.as_str()).await?;
    }
    let row = sqlx::query(
        "SELECT r.rolsuper, r.rolbypassrls, \
         (SELECT COUNT(*) FROM pg_class c WHERE c.relowner = r.oid) AS owned \
         FROM pg_roles r WHERE r.rolname = $1",
    )
    .bind(&role)
    .fetch_one(&mut *conn)
    .await?;
    let (superuser, bypass, owned): (bool, bool, i64) =
        (row.try_get("rolsuper")?, row.try_get("rolbypassrls")?, row.try_get("owned")?);
    if superuser || bypass || owned > 0 {
        return Err(StoreError::Corrupt(format!(
            "the serving role {role} must be no superuser, have no BYPASSRLS and own nothing"
        )));
    }
    Ok(role)
}

/// The serving role of the URL's role `user`: `<user>_serve` (63 bytes at most, PostgreSQL's
/// limit on a name).
fn serving_role_of(user: &str) -> String {
    let mut role = format!("{user}_serve");
    while role.len() > 63 {
        role.pop();
    }
    role
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether `e` is a serialization failure, which a `SERIALIZABLE` transaction is retried on.
fn is_serialization_failure(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(db)) => db.code().as_deref() == Some(PG_SERIALIZATION_FAILURE),
        _ => false,
    }
}

/// Runs `$body` (a block evaluating to `Result<T>`, its `?`s leaving it) in a `SERIALIZABLE`
/// transaction `$tx` of `$scope` and commits; a serialization failure, in the body or at the
/// commit, runs it all again, up to [`SERIALIZABLE_ATTEMPTS`] times, then is
/// [`StoreError::Busy`].
macro_rules! serializable {
    ($store:expr, $scope:expr, |$tx:ident| $body:block) => {{
        let mut attempt = 1;
        loop {
            let r: $crate::Result<_> = async {
                let mut $tx = $store.serializable($scope).await?;
                let value = $body?;
                $tx.commit().await?;
                Ok(value)
            }
            .await;
            match r {
                Err(e) if $crate::postgres::is_serialization_failure(&e) => {
                    if attempt >= $crate::postgres::SERIALIZABLE_ATTEMPTS {
                        break Err($crate::StoreError::Busy(format!("{e} (after {attempt} attempts)")));
                    }
                    attempt += 1;
                }
                other => break other,
            }
        }
    }};
}
use serializable;

/// `sql` with SQLite's placeholders (`?`, `?N`) made PostgreSQL's (`$1`, `$N`), so that a
/// statement reads the same in both stores.
fn pg(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '?' {
            out.push(c);
            continue;
        }
        out.push('$');
        if chars.peek().is_some_and(char::is_ascii_digit) {
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                out.push(d);
            }
        } else {
            n += 1;
            out.push_str(&n.to_string());
        }
    }
    out
}

/// A statement with its bound arguments.
type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// A value the store keeps as columns: how it is read back from a result row and bound to a
/// statement, column by column, in the order of [`Columns::COLUMNS`].
trait Columns: Sized {
    /// The select list [`Columns::from_row`] reads; every query of the value selects exactly these.
    const COLUMNS: &'static str;
    fn from_row(row: &PgRow) -> Result<Self>;
    /// Binds the value's columns to `q`, in the order of [`Columns::COLUMNS`].
    fn bind_all<'q>(&'q self, q: Query<'q>) -> Result<Query<'q>>;
}

/// A row type that is a table's row: its columns are the table's.
trait Table: Columns {
    /// The table.
    const TABLE: &'static str;
    /// The column that names a row within its namespace (or its chain).
    const KEY: &'static str;
}

/// The row types' columns ([`crate::rows`]), against this store's rows.
mod rows {
    crate::rows::row_mappings!(sqlx::postgres::PgRow);
}

/// `SELECT <T's columns> FROM <T's table> <rest>`, `rest`'s placeholders PostgreSQL's.
fn select<T: Table>(rest: &str) -> String {
    pg(&format!("SELECT {} FROM {} {rest}", T::COLUMNS, T::TABLE))
}

/// `INSERT INTO <T's table> (<T's columns>) VALUES ($1, ...)`, a placeholder a column.
fn insert<T: Table>() -> String {
    let placeholders: Vec<String> = (1..=T::COLUMNS.split(',').count()).map(|i| format!("${i}")).collect();
    format!("INSERT INTO {} ({}) VALUES ({})", T::TABLE, T::COLUMNS, placeholders.join(", "))
}

/// Inserts `row` into its table, the write's constraint failures named by `names`.
async fn insert_row<T: Table>(conn: &mut PgConnection, row: &T, names: Constraints) -> Result<()> {
    let sql = insert::<T>();
    names.check(row.bind_all(sqlx::query(&sql))?.execute(conn).await)?;
    Ok(())
}

/// The one row `q` finds, read as a `T`; `None` when it finds none.
async fn one<'c, T: Columns>(exec: impl Executor<'c, Database = Postgres>, q: Query<'_>) -> Result<Option<T>> {
    q.fetch_optional(exec).await?.as_ref().map(T::from_row).transpose()
}

/// Every row `q` finds, read as `T`s.
async fn all<'c, T: Columns>(exec: impl Executor<'c, Database = Postgres>, q: Query<'_>) -> Result<Vec<T>> {
    q.fetch_all(exec).await?.iter().map(T::from_row).collect()
}

/// What a write's constraint failures mean: the row whose unique key is already `taken`
/// becomes [`StoreError::Conflict`], a parent row a foreign key finds `missing` becomes
/// [`StoreError::NotFound`]; a failure left unnamed stays as [`StoreError::from`] names it.
#[derive(Debug, Default)]
struct Constraints {
    taken: Option<String>,
    missing: Option<String>,
}

impl Constraints {
    fn taken(mut self, what: String) -> Self {
        self.taken = Some(what);
        self
    }

    fn missing(mut self, what: String) -> Self {
        self.missing = Some(what);
        self
    }

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

fn as_u64(row: &PgRow, col: &str) -> Result<u64> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col} is negative")))
}

/// A nullable JSON column read into `T`; a value that does not parse is `Corrupt`, naming `what`.
fn json_column<T: serde::de::DeserializeOwned>(row: &PgRow, col: &str, what: &str) -> Result<Option<T>> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))).transpose()
}
