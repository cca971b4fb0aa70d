//! Bulkhead's persistent state behind one [`Store`] trait. The server holds an
//! `Arc<dyn Store>`; [`sqlite::SqliteStore`] is the embedded default, and
//! [`postgres::PgStore`] keeps the same state in a PostgreSQL database (`--store
//! postgres://...`), with row-level security as a second lock on every tenant's rows.
//!
//! [`Store`] is the sum of one trait per aggregate, each in its own module with its row types:
//! [`NamespaceStore`] (the platform's own rows, namespaces and their API keys),
//! [`SandboxStore`], [`FilesystemStore`] (projects and filesystems), [`IdentityStore`]
//! (identity settings, custom policies, secrets), [`UsageStore`] (the metering ledger),
//! [`AuditStore`] (hash-chained audit records), [`IdempotencyStore`] (replayable creates) and
//! [`ImageStore`] (private and public images), [`AgentStore`] (agents, versions, tasks and
//! their messages) and [`NodeStore`] (the servers sharing the store, their leases, the token
//! key, and changes to cached rows).
//! A caller that calls the store's methods imports [`prelude`], which brings every one into
//! scope.
//!
//! **Invariant:** the store trusts its callers to have authorized the request; it never decides
//! who may do what. Every query that reads tenant rows is keyed by the namespace, so a caller
//! that passes the principal's namespace cannot reach another tenant's rows.

mod agents;
mod audit;
#[cfg(test)]
mod conformance;
mod egress_ca;
mod filesystems;
mod idempotency;
mod identity;
mod images;
mod namespaces;
mod nodes;
pub mod postgres;
mod rows;
mod sandboxes;
pub mod sqlite;
mod usage;

pub use agents::{AgentRow, AgentStore, StateWrite, TaskMessageRow, TaskRow, TaskUpdate, VersionRow};
pub use audit::{AuditQuery, AuditStore};
pub use egress_ca::EgressCaStore;
pub use filesystems::{FilesystemRow, FilesystemStore, ProjectRow};
pub use idempotency::{IdempotencyClaim, IdempotencyStore, IdempotentReply};
pub use identity::{IdentityStore, PolicyRow, SecretRow};
pub use images::{ImageDeletion, ImageRow, ImageStore};
pub use namespaces::{KeyRow, NamespaceRow, NamespaceStore, NamespaceUse};
pub use nodes::{Change, Changes, NodeRow, NodeStore};
pub use sandboxes::{MeterMark, SandboxImage, SandboxRow, SandboxStatus, SandboxStore, WarmPoolRow};
pub use usage::{UsageBucket, UsageDelta, UsageStore};

/// The store's traits, to call its methods on an `Arc<dyn Store>`: `use bulkhead_store::prelude::*;`.
/// The aggregate traits come in unnamed, so they never clash with a caller's own names.
pub mod prelude {
    pub use crate::Store;
    pub use crate::{
        AgentStore as _, AuditStore as _, EgressCaStore as _, FilesystemStore as _, IdempotencyStore as _,
        IdentityStore as _, ImageStore as _, NamespaceStore as _, NodeStore as _, SandboxStore as _, UsageStore as _,
    };
}

/// Everything the control plane persists: every aggregate's trait. Any type that implements
/// them all is a `Store` (a blanket impl), so `Arc<dyn Store>` reaches every method.
pub trait Store:
    NamespaceStore
    + SandboxStore
    + FilesystemStore
    + IdentityStore
    + UsageStore
    + AuditStore
    + IdempotencyStore
    + EgressCaStore
    + ImageStore
    + AgentStore
    + NodeStore
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: NamespaceStore
        + SandboxStore
        + FilesystemStore
        + IdentityStore
        + UsageStore
        + AuditStore
        + IdempotencyStore
        + EgressCaStore
        + ImageStore
        + AgentStore
        + NodeStore
        + Send
        + Sync
        + 'static
{
}

/// Which quota an admission would break, its limit and what is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaBreach {
    pub quota: &'static str,
    pub limit: u64,
    pub used: u64,
    pub requested: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique name is already taken.
    #[error("{0} already exists")]
    Conflict(String),
    /// A row the operation needs is not there (for example the namespace of a new key).
    #[error("{0} not found")]
    NotFound(String),
    /// A stored value the code cannot read back: a bug or a database edited by hand.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The disk under the store is full (`SQLITE_FULL`, `ENOSPC`, `EDQUOT`): nothing was
    /// written; reads still work.
    #[error("the store's disk is full: {0}")]
    Full(String),
    /// The database stayed locked past the busy timeout, or no connection came free: nothing
    /// was written; retryable.
    #[error("the store is busy: {0}")]
    Busy(String),
    /// The store failed to read or write its files (an IO error, a failed fsync): what was
    /// asked is not known to be durable, so it is never acknowledged; retryable.
    #[error("the store's disk failed: {0}")]
    Io(String),
    #[error("database: {0}")]
    Database(sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A sandbox admission would break a namespace quota.
    #[error("quota {} exceeded: limit {}, in use {}, requested {}", .0.quota, .0.limit, .0.used, .0.requested)]
    Quota(QuotaBreach),
}

/// PostgreSQL's SQLSTATEs the store names ([`StoreError::from`]).
const PG_DISK_FULL: &str = "53100";
const PG_OUT_OF_MEMORY: &str = "53200";
const PG_TOO_MANY_CONNECTIONS: &str = "53300";
const PG_DEADLOCK: &str = "40P01";
const PG_LOCK_NOT_AVAILABLE: &str = "55P03";
const PG_IO_ERROR: &str = "58030";
/// A value PostgreSQL's text cannot hold (`character_not_in_repertoire`: a NUL character). No
/// stored row holds one, so a key that does names no row: [`StoreError::NotFound`], as SQLite's
/// lookup of it answers.
const PG_NOT_IN_REPERTOIRE: &str = "22021";
/// A serialization failure (`40001`): the transaction lost a race to another and is retried by
/// the store; it stays [`StoreError::Database`] so that the retry can tell it apart.
pub(crate) const PG_SERIALIZATION_FAILURE: &str = "40001";

/// SQLite's primary result codes the store names ([`StoreError::from`]).
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;
/// `SQLITE_IOERR_SHMSIZE`: the WAL index could not grow, which on a full disk is `ENOSPC`.
const SQLITE_IOERR_SHMSIZE: i64 = SQLITE_IOERR | (19 << 8);

/// Names the failures the caller answers differently from a bug: a full disk, a busy database
/// and a failed read or write of the store's files (SQLite's result codes, PostgreSQL's
/// SQLSTATEs). Anything else stays [`StoreError::Database`].
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let code = match &e {
            sqlx::Error::Database(db) if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() => {
                let state = db.code().map(|c| c.into_owned()).unwrap_or_default();
                return match state.as_str() {
                    PG_DISK_FULL => StoreError::Full(e.to_string()),
                    PG_DEADLOCK | PG_LOCK_NOT_AVAILABLE | PG_TOO_MANY_CONNECTIONS | PG_OUT_OF_MEMORY => {
                        StoreError::Busy(e.to_string())
                    }
                    PG_IO_ERROR => StoreError::Io(e.to_string()),
                    PG_NOT_IN_REPERTOIRE => StoreError::NotFound("a name with a NUL character".into()),
                    _ => StoreError::Database(e),
                };
            }
            sqlx::Error::Database(db) => db.code().and_then(|c| c.parse::<i64>().ok()),
            sqlx::Error::Io(io) => {
                return match io.kind() {
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                        StoreError::Full(io.to_string())
                    }
                    _ => StoreError::Io(io.to_string()),
                };
            }
            sqlx::Error::PoolTimedOut => return StoreError::Busy("no database connection came free".into()),
            _ => None,
        };
        match code {
            Some(SQLITE_IOERR_SHMSIZE) => StoreError::Full(e.to_string()),
            Some(c) => match c & 0xff {
                SQLITE_FULL => StoreError::Full(e.to_string()),
                SQLITE_BUSY | SQLITE_LOCKED => StoreError::Busy(e.to_string()),
                SQLITE_IOERR => StoreError::Io(e.to_string()),
                _ => StoreError::Database(e),
            },
            None => StoreError::Database(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
