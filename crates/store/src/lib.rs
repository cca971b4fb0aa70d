//! Bulkhead's persistent state behind one [`Store`] trait. The server holds an
//! `Arc<dyn Store>`; [`sqlite::SqliteStore`] is the embedded default, and a PostgreSQL store is
//! added by implementing the same traits, without touching a handler.
//!
//! [`Store`] is the sum of one trait per aggregate, each in its own module with its row types:
//! [`NamespaceStore`] (the platform's own rows, namespaces and their API keys),
//! [`SandboxStore`], [`FilesystemStore`] (projects and filesystems), [`IdentityStore`]
//! (identity settings, custom policies, secrets), [`UsageStore`] (the metering ledger),
//! [`AuditStore`] (hash-chained audit records) and [`IdempotencyStore`] (replayable creates).
//! A caller that calls the store's methods imports [`prelude`], which brings every one into
//! scope.
//!
//! **Invariant:** the store trusts its callers to have authorized the request; it never decides
//! who may do what. Every query that reads tenant rows is keyed by the namespace, so a caller
//! that passes the principal's namespace cannot reach another tenant's rows.

mod audit;
mod filesystems;
mod idempotency;
mod identity;
mod namespaces;
mod sandboxes;
pub mod sqlite;
mod usage;

pub use audit::{AuditQuery, AuditStore};
pub use filesystems::{FilesystemRow, FilesystemStore, ProjectRow};
pub use idempotency::{IdempotencyClaim, IdempotencyStore, IdempotentReply};
pub use identity::{IdentityStore, PolicyRow, SecretRow};
pub use namespaces::{KeyRow, NamespaceRow, NamespaceStore, NamespaceUse};
pub use sandboxes::{MeterMark, SandboxRow, SandboxStatus, SandboxStore};
pub use usage::{UsageBucket, UsageDelta, UsageStore};

/// The store's traits, to call its methods on an `Arc<dyn Store>`: `use bulkhead_store::prelude::*;`.
/// The aggregate traits come in unnamed, so they never clash with a caller's own names.
pub mod prelude {
    pub use crate::Store;
    pub use crate::{
        AuditStore as _, FilesystemStore as _, IdempotencyStore as _, IdentityStore as _, NamespaceStore as _,
        SandboxStore as _, UsageStore as _,
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
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A sandbox admission would break a namespace quota.
    #[error("quota {} exceeded: limit {}, in use {}, requested {}", .0.quota, .0.limit, .0.used, .0.requested)]
    Quota(QuotaBreach),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
