//! Bulkhead's sandbox runtime: the only crate that touches Linux namespaces, cgroups, mounts
//! and the OCI runtime. The server sees the [`Runtime`] trait; [`oci::OciRuntime`] implements
//! it with a real OCI runtime (runc by default), one cgroup per namespace holding one per
//! sandbox ([`cgroup`]), and the in-sandbox supervisor for exec and files ([`client`]). Beside
//! it, [`FilesystemStorage`] is what the server needs of filesystems (their lifecycle, and the
//! files and archive APIs with the semantics of [`files`]); [`storage::Storage`] implements it
//! with loop-mounted ext4 images. The `fake` feature adds in-memory fakes of both traits
//! (`fake::FakeRuntime`, `fake::FakeStorage`) for tests without root.
//!
//! **Invariant:** only this crate (and the supervisor inside the sandbox) calls into the kernel
//! for isolation: it spawns the OCI runtime, writes cgroup files and owns the host directories
//! of sandboxes. It never decides who may do what: callers have authorized every request.

pub mod archive;
pub mod baseline;
pub mod broker;
pub mod cgroup;
pub mod client;
pub mod confined;
pub mod dynmods;
pub mod egress;
#[cfg(feature = "fake")]
pub mod fake;
pub mod files;
pub mod gateway;
pub mod host;
pub mod hostreg;
pub mod image;
pub mod net;
pub mod oci;
pub mod ownership;
pub mod rootfs;
pub mod seccomp;
mod spawn;
pub mod spec;
pub mod storage;
pub mod watch;

use async_trait::async_trait;
pub use bulkhead_supervisor::protocol::{DirEntry, FileType};
pub use bulkhead_supervisor::protocol::{ExecSpec, Exit};
pub use client::{DirPage, ExecEvent, ExecStream, FileStream};
// Background processes (exec/process part).
pub use bulkhead_supervisor::protocol::{OutputStreamKind, ProcessInfo, ProcessSpec, ProcessStatus, TtySize};
pub use client::{ProcessEvent, ProcessOutput};
pub use storage::FilesystemStorage;

/// A range of host user and group ids that a namespace's sandboxes map their ids onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub host_start: u32,
    pub size: u32,
}

/// Limits of a namespace as a whole, applied to its cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceLimits {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids: u64,
    /// Where its sandboxes run on the host's cores.
    pub placement: CpuPlacement,
}

/// A namespace's cores and memory reservation as the kernel is told them (see
/// [`bulkhead_core::placement`] for what the server admits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuPlacement {
    /// The cores its sandboxes may run on; `None` leaves its cpuset as the kernel made it.
    pub cpus: Option<bulkhead_core::placement::CpuSet>,
    /// The cores are the namespace's alone: on cgroup v2 an exclusive cpuset partition (a
    /// remote partition root: `cpuset.cpus.exclusive` and `cpuset.cpus.partition`), which takes
    /// them from every cgroup outside it; on v1 the server keeps every other cgroup of its own
    /// off them (the kernel's `cpu_exclusive` flag would need the server's top cgroup to hold all
    /// its cores against the host's other cgroups).
    pub dedicated: bool,
    /// Memory protected from reclaim (v2 `memory.min`), in bytes; 0 for none. Cgroup v1 has no
    /// such protection: there the reservation is the server's admission alone.
    pub memory_min_bytes: u64,
}

/// Everything needed to start one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub id: String,
    pub namespace: String,
    /// The runtime class's OCI runtime binary, such as `runc`.
    pub oci_runtime: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids: u64,
    /// Size of the writable `/tmp`.
    pub tmp_bytes: u64,
    pub ids: IdRange,
    /// Environment of every command, on top of `PATH` and `HOME`.
    pub env: Vec<(String, String)>,
    /// A filesystem mounted at `/workspace`.
    pub workspace: Option<Workspace>,
    /// An agent's code (an unpacked bundle on the host), mounted read-only at `/agent`.
    pub agent_code: Option<std::path::PathBuf>,
    /// Files the sandbox reads from `/run/<dir>/<name>`: its workload token, secrets. They
    /// live on the host's tmpfs state dir only, owned by the sandbox's root, mode 0400, and are
    /// mounted read-only.
    pub run_files: Vec<RunFile>,
    /// The namespace's CA certificate (PEM) that the sandbox trusts on top of the host's
    /// bundle, for brokered credentials (see [`egress`]); `None` when the namespace brokers
    /// nothing.
    pub extra_ca_pem: Option<String>,
    /// What the root filesystem is made of.
    pub root: RootSpec,
    /// Started for a warm pool, before any claimant exists (see [`Runtime::claim`]): its
    /// environment is the image's and the runtime's only, it has no `/run` files, filesystem or
    /// agent code, and `/run/bulkhead`, `/run/secrets`, `/workspace` and `/agent` are left
    /// empty for a claim to fill. `workspace`, `agent_code`, `run_files` and `extra_ca_pem`
    /// must be empty.
    pub pooled: bool,
}

/// A sandbox's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSpec {
    /// The host's system directories read-only under a generated `/etc` (`bulkhead serve
    /// --root host`): for hosts without an image, never chosen silently.
    Host,
    /// An OCI image: its unpacked layers under an overlay whose writable upper layer belongs to
    /// the sandbox alone and is removed with it.
    Image(ImageRoot),
}

/// The root of a sandbox started from an image (see [`image`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRoot {
    /// The unpacked layers on the host, bottom first (as [`image::LayerStore::layer_path`]
    /// gives them): files keep the image's own ids there, and the sandbox sees them mapped
    /// onto its namespace's [`IdRange`] through idmapped mounts.
    pub layers: Vec<std::path::PathBuf>,
    /// The size of the writable upper layer in bytes: a write past it fails with `ENOSPC`.
    pub writable_bytes: u64,
}

/// A file under `/run` in a sandbox.
#[derive(Clone, PartialEq, Eq)]
pub struct RunFile {
    /// `bulkhead` or `secrets`.
    pub dir: String,
    pub name: String,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for RunFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The contents are credentials.
        write!(f, "RunFile(/run/{}/{}, {} bytes)", self.dir, self.name, self.data.len())
    }
}

/// A filesystem attached to a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// Where it is mounted on the host.
    pub source: std::path::PathBuf,
    pub read_only: bool,
}

/// Where an attached filesystem appears inside the sandbox.
pub const WORKSPACE_PATH: &str = "/workspace";

/// Where a task's agent code appears inside its sandbox, read-only.
pub const AGENT_PATH: &str = "/agent";

/// Resource use of one sandbox, read from its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxStats {
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub pids: u64,
    /// Processes the kernel's OOM killer ended in this sandbox.
    pub oom_kills: u64,
    /// Forks the kernel refused because the sandbox was at its pids limit.
    pub pids_limit_hits: u64,
    /// Bytes read from and written to block devices by the sandbox's processes, as the kernel's
    /// io (v2) or blkio (v1) controller accounts them.
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    /// What the egress gateway forwarded for the sandbox (zero without a network).
    pub egress: egress::EgressStats,
}

/// A sandbox as the host sees it, for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSandbox {
    pub id: String,
    /// Its namespace, when its cgroup tells.
    pub namespace: Option<String>,
    /// Whether its supervisor still runs.
    pub running: bool,
    /// The store its bundle names as its owner; `None` when it has no bundle (only OCI
    /// runtime state or a cgroup of this server's) or a bundle without the mark.
    pub owner: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The host cannot run sandboxes; the message says what to install or enable.
    #[error("{0}")]
    Unavailable(String),
    /// The OCI runtime refused or failed.
    #[error("OCI runtime {runtime} failed to {action}: {detail}")]
    Oci { runtime: String, action: &'static str, detail: String },
    /// The resource is in a state that does not allow the operation now.
    #[error("{0}")]
    Busy(String),
    /// The sandbox is not on this host (any more).
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// The supervisor answered a file request with a failure.
    #[error("{}", .0.message)]
    File(bulkhead_supervisor::protocol::Failure),
    /// The supervisor broke the protocol: treated as a hostile or crashed sandbox.
    #[error("sandbox supervisor: {0}")]
    Protocol(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    // --- Exec and background processes ---
    /// The request cannot be carried out as given: an unknown user, a bad signal number, a
    /// resize of a process without a terminal. The message says which.
    #[error("{0}")]
    Invalid(String),
    /// No process with this id in the sandbox (never started, or finished and forgotten).
    #[error("process {0} not found")]
    ProcessNotFound(String),
}

impl RuntimeError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let what = what.into();
        move |source| RuntimeError::Io { what, source }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// What the server needs from a sandbox runtime.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Creates or updates the cgroup of a namespace with its limits.
    async fn ensure_namespace(&self, namespace: &str, limits: &NamespaceLimits) -> Result<()>;
    /// Removes a namespace's cgroup; its sandboxes must be gone.
    async fn remove_namespace(&self, namespace: &str) -> Result<()>;
    /// Starts a sandbox and returns once its supervisor can take requests.
    async fn create(&self, spec: &SandboxSpec) -> Result<()>;
    /// Binds a sandbox started with [`SandboxSpec::pooled`] to its claimant, as `spec` (the
    /// same id, namespace, image and runtime) describes it, before anything of the claimant
    /// runs in it: the cgroup's cpu and memory limits, the size of the writable root, the `/run`
    /// files (workload token, secrets), the filesystem at `/workspace` and agent code at
    /// `/agent` (attached on the host and propagated into the running sandbox, read-only where
    /// asked, locked there), and the environment of every command from now on. A sandbox is
    /// claimed once; on an error the caller deletes it (it is never handed out again).
    /// `Invalid` for what a claim cannot bind (`extra_ca_pem`), or a sandbox not started
    /// pooled; the default is `Unavailable`: a runtime without warm pools.
    async fn claim(&self, spec: &SandboxSpec) -> Result<()> {
        Err(RuntimeError::Unavailable(format!("this runtime cannot claim sandbox {}: it keeps no warm pools", spec.id)))
    }
    /// Runs a command in a sandbox; the stream yields output as it is produced, then the exit.
    async fn exec(&self, id: &str, spec: ExecSpec, stdin: Vec<u8>) -> Result<ExecStream>;
    // ---- Files inside a sandbox (the files API) ----
    /// Starts reading a file of at most `max_bytes` inside a sandbox, as `user` (a name, uid or
    /// `uid:gid` of the sandbox's image; its root when `None`). A file that cannot be read fails
    /// here, before any byte is returned, and never blocks (a fifo, socket or device is refused
    /// at once). The stream is pulled: nothing is read ahead.
    async fn read_file(
        &self,
        id: &str,
        path: &std::path::Path,
        user: Option<String>,
        max_bytes: u64,
    ) -> Result<FileStream>;
    /// Writes a file inside a sandbox, atomically, from the chunks arriving on `data` (at most
    /// `max_bytes`), as `user`; an error on `data` abandons the write and keeps the previous
    /// content. `mode` (at most `0o1777`) when given; otherwise an existing file keeps its mode
    /// and a new one gets 0644.
    async fn write_file(
        &self,
        id: &str,
        path: &std::path::Path,
        data: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
        max_bytes: u64,
        mode: Option<u32>,
        user: Option<String>,
    ) -> Result<()>;
    /// A page of the directory `path` inside a sandbox, as `user`: at most `limit` entries whose
    /// names sort (by their bytes) after `after`.
    async fn list_dir(
        &self,
        id: &str,
        path: &std::path::Path,
        user: Option<String>,
        after: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<DirPage>;
    // ---- end of files ----
    /// Stops a sandbox and removes every host resource it held. Idempotent.
    async fn delete(&self, namespace: &str, id: &str) -> Result<()>;
    /// Every sandbox this runtime has on the host.
    async fn list(&self) -> Result<Vec<HostSandbox>>;
    /// Namespaces that have a cgroup on the host.
    async fn namespaces(&self) -> Result<Vec<String>>;
    /// The address the server's API listens on, once it listens: sandboxes with a network of
    /// their own reach it through their gateway at `$BULKHEAD_URL`. Nothing to do for a runtime
    /// without sandbox networks.
    async fn serve_api(&self, _addr: std::net::SocketAddr) {}
    /// The server is shutting down (its sandboxes keep running, to be adopted by the next
    /// start): what the runtime holds for creates to come, such as spare sandbox networks, is
    /// released. Nothing to do for most runtimes.
    async fn shutdown(&self) {}
    /// Who decides the sandboxes' egress (see [`egress`]); set once by the server when it
    /// starts, before it creates or adopts sandboxes. Until it is set, every connection and DNS
    /// query of a sandbox is denied. Nothing to do for a runtime without sandbox networks.
    fn set_egress_decider(&self, _decider: std::sync::Arc<dyn egress::EgressDecider>) {}
    /// Resolves when the init of sandbox `id` of `namespace` has died (at once when it has
    /// already), with the reason to record: `init exited with signal N`, `init exited with
    /// status N`, `oom`. `NotRunning` when the sandbox has no live init to watch.
    async fn wait_init(&self, namespace: &str, id: &str) -> Result<String>;
    /// Whether the supervisor of sandbox `id` answers a ping within `timeout`: `Ok` when it
    /// answers at all (also when it refuses for lack of a thread, and when the server itself
    /// lacks the descriptors or memory to ask: that is no sign of the supervisor's), an error
    /// when it does not.
    async fn ping(&self, id: &str, timeout: std::time::Duration) -> Result<()>;
    /// Freezes (`true`) or thaws every process of a sandbox (a consistent snapshot of its root:
    /// nothing in it changes or races a reader meanwhile). `Busy` when it does not freeze in
    /// time. Nothing to do for a runtime without cgroups.
    async fn freeze(&self, _namespace: &str, _id: &str, _frozen: bool) -> Result<()> {
        Ok(())
    }
    /// The upper directory of a sandbox started from an image (see [`rootfs::upper_of`]): its
    /// changes to the image, in overlayfs's format, for a snapshot. `None` for a sandbox with
    /// the host's root, or one not on this host.
    fn upper_dir(&self, _id: &str) -> Option<std::path::PathBuf> {
        None
    }
    /// Resource use of a running sandbox.
    async fn stats(&self, namespace: &str, id: &str) -> Result<SandboxStats>;

    // --- Background processes ---
    /// Starts a background process in its own cgroup; returns once it runs (or failed to start:
    /// `Invalid` for an empty argv or unknown user; a program that cannot be executed starts
    /// and exits with 127, as an exec does).
    async fn spawn_process(&self, sandbox: &str, spec: ProcessSpec) -> Result<ProcessInfo>;
    /// Every process of the sandbox the supervisor still retains (running, and finished ones
    /// for 10 minutes, at most 64).
    async fn processes(&self, sandbox: &str) -> Result<Vec<ProcessInfo>>;
    /// One process; `ProcessNotFound` when the supervisor does not have it.
    async fn process(&self, sandbox: &str, id: &str) -> Result<ProcessInfo>;
    /// Events with `seq > after` (seq starts at 1; from the oldest retained when `after` is
    /// older); stays open until the process exits, then yields `Exit` and ends.
    async fn process_output(&self, sandbox: &str, id: &str, after: u64) -> Result<ProcessOutput>;
    /// Writes every chunk of `data` to the process's stdin (any size, streamed with
    /// backpressure), then closes stdin when `eof`. Returns the bytes written.
    async fn process_stdin(
        &self,
        sandbox: &str,
        id: &str,
        data: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
        eof: bool,
    ) -> Result<u64>;
    /// Sends signal number `signal` (the server parses names); `SIGKILL` ends every
    /// descendant. `Invalid` for 0 or an unknown number.
    async fn signal_process(&self, sandbox: &str, id: &str, signal: i32) -> Result<()>;
    /// Resizes a tty process's terminal; `Invalid` for a process without one.
    async fn resize_process(&self, sandbox: &str, id: &str, size: TtySize) -> Result<()>;
}
