//! Bulkhead's persistent state behind one [`Store`] trait. The server holds an
//! `Arc<dyn Store>`; [`sqlite::SqliteStore`] is the embedded default, and a PostgreSQL store is
//! added by implementing the same trait, without touching a handler.
//!
//! **Invariant:** the store trusts its callers to have authorized the request; it never decides
//! who may do what. Every query that reads tenant rows is keyed by the namespace, so a caller
//! that passes the principal's namespace cannot reach another tenant's rows.

pub mod sqlite;

use async_trait::async_trait;
use bulkhead_core::audit::{AuditEvent, AuditRecord, Checkpoint, Verification};
use bulkhead_core::{Quotas, Role};

/// A namespace as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRow {
    pub name: String,
    pub isolation: String,
    pub quotas: Quotas,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// First host uid/gid of the namespace's range, as the host registry handed it out.
    pub id_start: u32,
    /// Ids in the range.
    pub id_count: u32,
    /// This incarnation of the name: made at creation, never reused (see
    /// [`bulkhead_core::ids::new_incarnation`]). Per-namespace state kept outside the store is keyed
    /// by it, so a namespace deleted and created again starts with nothing of the old one's.
    pub incarnation: String,
}

/// A sandbox's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxStatus {
    Creating,
    Running,
    Stopped,
    Failed,
    Deleted,
}

impl SandboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxStatus::Creating => "creating",
            SandboxStatus::Running => "running",
            SandboxStatus::Stopped => "stopped",
            SandboxStatus::Failed => "failed",
            SandboxStatus::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<SandboxStatus> {
        [Self::Creating, Self::Running, Self::Stopped, Self::Failed, Self::Deleted]
            .into_iter()
            .find(|x| x.as_str() == s)
    }

    /// Whether the sandbox holds (or is about to hold) host resources and counts against quotas.
    pub fn is_active(self) -> bool {
        matches!(self, SandboxStatus::Creating | SandboxStatus::Running)
    }
}

/// A sandbox as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRow {
    pub id: String,
    pub namespace: String,
    pub status: SandboxStatus,
    /// Why it ended, once it has.
    pub reason: Option<String>,
    pub isolation: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids: u64,
    pub ttl_seconds: u64,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// The filesystem mounted at `/workspace` and its mode (`rw` or `ro`).
    pub filesystem: Option<(String, String)>,
    /// Who created it: `key:<id>`, `user:<sub>` or `sandbox:<id>`.
    pub creator: String,
    /// Keyed hash of the sandbox's workload token; `None` once it is revoked.
    pub workload_token_hash: Option<String>,
    /// Names of the secrets handed to it.
    pub secrets: Vec<String>,
    /// The project of the filesystem it mounts, fixed at create: the sandbox exposes that
    /// filesystem's data, so it is in that project's scope. `None` when it mounts nothing or a
    /// filesystem in no project.
    pub project: Option<String>,
    /// The sandbox's cgroup counters at the last metering sample.
    pub metered: MeterMark,
    /// When it was last metered; `None` before the first sample.
    pub metered_at_ms: Option<i64>,
}

/// A sandbox's monotonic cgroup counters at a metering sample; the next sample meters the
/// difference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeterMark {
    pub cpu_ns: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

/// Usage added to one bucket of a namespace's ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageDelta {
    pub cpu_ns: u64,
    pub memory_byte_ms: u64,
    pub sandbox_ms: u64,
    /// Taken as a maximum, not a sum.
    pub memory_peak_bytes: u64,
    pub exec_count: u64,
    pub quota_rejections: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

/// One bucket of a namespace's usage ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageBucket {
    pub bucket_ms: i64,
    pub usage: UsageDelta,
}

/// Which quota a sandbox admission would break, its limit and what is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaBreach {
    pub quota: &'static str,
    pub limit: u64,
    pub used: u64,
    pub requested: u64,
}

/// An API key as stored: metadata and the keyed hash of its token, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub role: Role,
    pub token_hash: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    /// Projects the key is limited to; `None`: the whole namespace.
    pub projects: Option<Vec<String>>,
}

/// A custom Cedar policy of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub text: String,
    pub created_at_ms: i64,
}

/// A secret as stored: its value sealed under the namespace's data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub sealed: Vec<u8>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A project: a permission boundary for filesystems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRow {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub created_at_ms: i64,
}

/// A filesystem as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesystemRow {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub project_id: Option<String>,
    pub size_bytes: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// What a namespace holds now: its active sandboxes and its filesystems.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceUse {
    pub sandboxes: u64,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Sum of its filesystems' sizes.
    pub disk_bytes: u64,
    pub filesystem_ids: Vec<String>,
}

/// Which audit records to list.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub action: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only records with a larger sequence number (the pagination cursor).
    pub after_seq: u64,
    pub limit: u32,
}

/// A stored answer to a create that carried an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentReply {
    /// SHA-256 (hex) of the request body the key was first used with.
    pub fingerprint: String,
    /// The HTTP status of the answer (never 0: 0 marks a claim in progress in the table).
    pub status: u16,
    /// The answer's JSON body.
    pub body: String,
}

/// What claiming an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key was free (or its answer had expired): the caller holds it until it calls
    /// [`Store::finish_idempotent`] or [`Store::release_idempotent`].
    Claimed,
    /// Another request holds the key and has not answered yet; `fingerprint` is its body's.
    InProgress { fingerprint: String },
    /// The key answered before.
    Done(IdempotentReply),
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

/// Everything the control plane persists.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The keyed hash of the platform admin token, once bootstrapped.
    async fn admin_token_hash(&self) -> Result<Option<String>>;
    /// Records the admin token's hash. Fails with `Conflict` when one is already set.
    async fn init_admin_token_hash(&self, hash: &str, now_ms: i64) -> Result<()>;

    async fn create_namespace(&self, ns: &NamespaceRow) -> Result<()>;
    async fn get_namespace(&self, name: &str) -> Result<Option<NamespaceRow>>;
    /// Namespaces in name order after `after`, at most `limit`; only `only` when given.
    async fn list_namespaces(&self, after: Option<&str>, limit: u32, only: Option<&str>) -> Result<Vec<NamespaceRow>>;
    async fn update_namespace_quotas(&self, name: &str, quotas: &Quotas, now_ms: i64) -> Result<Option<NamespaceRow>>;
    /// Deletes a namespace and everything it owns: keys, its audit chain, idempotent replays.
    /// Returns whether it existed.
    async fn delete_namespace(&self, name: &str) -> Result<bool>;

    async fn create_key(&self, key: &KeyRow) -> Result<()>;
    async fn get_key(&self, namespace: &str, id: &str) -> Result<Option<KeyRow>>;
    async fn list_keys(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<KeyRow>>;
    async fn delete_key(&self, namespace: &str, id: &str) -> Result<bool>;
    async fn key_by_token_hash(&self, token_hash: &str) -> Result<Option<KeyRow>>;

    /// The id under which this store holds host-global resources in the host registry: made
    /// with the store, the same for every replica of it, never changed.
    async fn store_id(&self) -> Result<String>;

    /// Appends `event` to `chain` atomically with the chain head, and returns the sealed record.
    /// When the chain then keeps more records than the store's retention allows, the oldest
    /// are pruned in the same transaction and the chain's checkpoint moves past them.
    async fn append_audit(&self, chain: &str, event: AuditEvent) -> Result<AuditRecord>;
    async fn list_audit(&self, chain: &str, query: &AuditQuery) -> Result<Vec<AuditRecord>>;
    /// The chain head: last sequence number and hash.
    async fn audit_head(&self, chain: &str) -> Result<Option<(u64, String)>>;
    /// Where the chain begins after pruning; `None` while nothing was pruned.
    async fn audit_checkpoint(&self, chain: &str) -> Result<Option<Checkpoint>>;
    /// Verifies the chain as it stands at one moment (checkpoint, records and head read from
    /// one snapshot, so appends and pruning meanwhile do not disturb it).
    async fn verify_audit(&self, chain: &str) -> Result<Verification>;

    /// Inserts `sandbox` (status `creating`) when the namespace's quotas allow it, atomically
    /// with the check: `max_sandboxes`, `cpu_millis` and `memory_bytes` over active sandboxes.
    async fn admit_sandbox(&self, sandbox: &SandboxRow, quotas: &Quotas) -> Result<()>;
    async fn get_sandbox(&self, namespace: &str, id: &str) -> Result<Option<SandboxRow>>;
    async fn list_sandboxes(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<SandboxRow>>;
    /// Every sandbox in `creating` or `running`, of every namespace.
    async fn active_sandboxes(&self) -> Result<Vec<SandboxRow>>;
    /// Sets the status (and reason and end time) of a sandbox; returns the new row.
    async fn set_sandbox_status(
        &self,
        id: &str,
        status: SandboxStatus,
        reason: Option<&str>,
        ended_at_ms: Option<i64>,
    ) -> Result<Option<SandboxRow>>;

    async fn create_project(&self, project: &ProjectRow) -> Result<()>;
    async fn get_project(&self, namespace: &str, id: &str) -> Result<Option<ProjectRow>>;
    async fn list_projects(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<ProjectRow>>;
    /// Deletes a project; `Conflict` while filesystems belong to it.
    async fn delete_project(&self, namespace: &str, id: &str) -> Result<bool>;

    /// Inserts `fs` when the namespace's filesystems stay within `disk_bytes`, atomically with
    /// the check.
    async fn admit_filesystem(&self, fs: &FilesystemRow, disk_bytes: u64) -> Result<()>;
    async fn get_filesystem(&self, namespace: &str, id: &str) -> Result<Option<FilesystemRow>>;
    async fn list_filesystems(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<FilesystemRow>>;
    /// Every filesystem of every namespace (to mount them at start).
    async fn all_filesystems(&self) -> Result<Vec<FilesystemRow>>;
    /// Sets a new size when the namespace's filesystems stay within `disk_bytes`.
    async fn resize_filesystem(
        &self,
        namespace: &str,
        id: &str,
        size_bytes: u64,
        disk_bytes: u64,
        now_ms: i64,
    ) -> Result<Option<FilesystemRow>>;
    async fn delete_filesystem(&self, namespace: &str, id: &str) -> Result<bool>;
    /// What the namespace holds now, in one read.
    async fn namespace_use(&self, namespace: &str) -> Result<NamespaceUse>;
    /// Active sandboxes that mount the filesystem.
    async fn sandboxes_using(&self, filesystem_id: &str) -> Result<Vec<SandboxRow>>;

    /// Adds `delta` to the namespace's ledger bucket starting at `bucket_ms`.
    async fn add_usage(&self, namespace: &str, bucket_ms: i64, delta: &UsageDelta) -> Result<()>;
    /// Adds a metering sample of a sandbox to its namespace's ledger and records where metering
    /// stands, in one transaction.
    async fn meter_sandbox(
        &self,
        sandbox: &SandboxRow,
        bucket_ms: i64,
        delta: &UsageDelta,
        mark: MeterMark,
        at_ms: i64,
    ) -> Result<()>;
    /// Ledger buckets of a namespace in `[from_ms, to_ms)`, oldest first.
    async fn usage(&self, namespace: &str, from_ms: i64, to_ms: i64) -> Result<Vec<UsageBucket>>;

    /// A namespace's identity settings (JSON), if set.
    async fn get_identity(&self, namespace: &str) -> Result<Option<String>>;
    /// Sets (or with `None` clears) a namespace's identity settings.
    async fn put_identity(&self, namespace: &str, config: Option<&str>, now_ms: i64) -> Result<()>;

    /// Adds a policy; a name taken in the namespace is a conflict. At most `max` per namespace.
    async fn create_policy(&self, policy: &PolicyRow, max: u32) -> Result<()>;
    /// Every policy of a namespace, by id.
    async fn all_policies(&self, namespace: &str) -> Result<Vec<PolicyRow>>;
    async fn list_policies(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<PolicyRow>>;
    async fn delete_policy(&self, namespace: &str, id: &str) -> Result<bool>;

    /// The namespace's wrapped data key, storing `wrapped` first when it has none; whichever
    /// is stored is returned.
    async fn data_key(&self, namespace: &str, wrapped: &[u8]) -> Result<Vec<u8>>;
    /// Creates the secret or replaces its value; true when it was created.
    async fn put_secret(&self, secret: &SecretRow) -> Result<bool>;
    async fn get_secret(&self, namespace: &str, name: &str) -> Result<Option<SecretRow>>;
    async fn list_secrets(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<SecretRow>>;
    async fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool>;

    /// The active sandbox whose workload token has this keyed hash.
    async fn sandbox_by_workload_token(&self, token_hash: &str) -> Result<Option<SandboxRow>>;

    /// Claims `key` in `scope` for a request whose body has `fingerprint`, in one transaction,
    /// so that of any number of concurrent claims exactly one gets [`IdempotencyClaim::Claimed`].
    /// An answer stored before `expired_before_ms` no longer counts and is replaced.
    async fn claim_idempotent(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
        expired_before_ms: i64,
    ) -> Result<IdempotencyClaim>;
    /// Stores the answer of the create that holds the claim on `key`.
    async fn finish_idempotent(&self, scope: &str, key: &str, reply: &IdempotentReply) -> Result<()>;
    /// Gives up a claim that has no answer (the create failed): the key is free again.
    async fn release_idempotent(&self, scope: &str, key: &str) -> Result<()>;
    /// Gives up every claim without an answer: called at start, when the process that held them
    /// is gone. Returns how many there were.
    async fn release_pending_idempotency(&self) -> Result<u64>;
}
