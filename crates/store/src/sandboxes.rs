//! The sandboxes aggregate: sandboxes, their admission against a namespace's quotas and their
//! lifecycle state.

use async_trait::async_trait;
use bulkhead_core::Quotas;

use crate::Result;

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
    /// What the sandbox asked of the network at create; `None`: nothing (no egress).
    pub egress: Option<bulkhead_core::egress::SandboxEgress>,
    /// The sandbox's cgroup counters at the last metering sample.
    pub metered: MeterMark,
    /// When it was last metered; `None` before the first sample.
    pub metered_at_ms: Option<i64>,
    /// The image it started from; `None` for the host's base (`--root host`).
    pub image: Option<SandboxImage>,
    /// The size of its writable root in bytes; `None` without an image.
    pub disk_bytes: Option<u64>,
    /// The task whose agent the sandbox runs (`tsk_…`), if any.
    pub task: Option<String>,
    /// A warm pool's sandbox, not yet claimed: it counts against its namespace's quotas, and no
    /// list or lookup of the namespace's sandboxes shows it (see [`SandboxStore::claim_sandbox`]).
    pub pooled: bool,
    /// The node that runs it (`node_…`, see [`crate::NodeStore`]).
    pub node: String,
}

/// A warm pool: how many started sandboxes of an image a namespace keeps ready to claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmPoolRow {
    pub namespace: String,
    /// `img_…`: the namespace's own image or a public one.
    pub image_id: String,
    /// Sandboxes to keep ready, at least 1 (a pool of 0 is no row).
    pub size: u64,
    pub updated_at_ms: i64,
}

/// The image a sandbox started from, and what of its configuration the sandbox's commands
/// default to (kept with the sandbox, so an exec needs no lookup of the image).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxImage {
    /// `img_…`.
    pub id: String,
    pub name: String,
    /// Its manifest's digest.
    pub digest: String,
    /// The image's `User`: what commands and file operations run as when the request names
    /// no user; `None` is root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The image's `WorkingDir`: where commands start when the request names no `cwd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

/// A sandbox's monotonic cgroup counters at a metering sample; the next sample meters the
/// difference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeterMark {
    pub cpu_ns: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

/// Sandboxes of every namespace.
#[async_trait]
pub trait SandboxStore: Send + Sync {
    /// Inserts `sandbox` (status `creating`) when the namespace's quotas allow it, atomically
    /// with the check: `max_sandboxes`, `cpu_millis` and `memory_bytes` over active sandboxes.
    /// A sandbox of an image that is no longer recorded (deleted meanwhile) is
    /// [`crate::StoreError::NotFound`].
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
    /// Active sandboxes that mount the filesystem.
    async fn sandboxes_using(&self, filesystem_id: &str) -> Result<Vec<SandboxRow>>;
    /// The active sandbox whose workload token has this keyed hash.
    async fn sandbox_by_workload_token(&self, token_hash: &str) -> Result<Option<SandboxRow>>;

    // --- Warm pools ---
    /// Turns the unclaimed pool sandbox `claimed.id` of `claimed.namespace` into `claimed`
    /// (`pooled` false, with its status: `running` once the runtime bound it), atomically with the quota check of
    /// [`SandboxStore::admit_sandbox`] counting every other active sandbox: the pool sandbox's
    /// own share is replaced by the claimant's. [`crate::StoreError::NotFound`] when there is no
    /// such pool sandbox (claimed or ended meanwhile) or its image is gone; `Quota` when the
    /// claimant's request does not fit, and the pool sandbox is left as it was.
    async fn claim_sandbox(&self, claimed: &SandboxRow, quotas: &Quotas) -> Result<()>;
    /// Sets the size of the warm pool of `image_id` in `namespace`; 0 removes it.
    /// [`crate::StoreError::NotFound`] when the namespace or the image does not exist.
    async fn set_warm_pool(&self, namespace: &str, image_id: &str, size: u64, now_ms: i64) -> Result<()>;
    /// The warm pools of `namespace`, or of every namespace, by namespace and image.
    async fn warm_pools(&self, namespace: Option<&str>) -> Result<Vec<WarmPoolRow>>;
}
