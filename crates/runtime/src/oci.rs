//! The local OCI backend: each sandbox is a bundle under the state dir, run by the runtime
//! class's OCI runtime (runc by default) with the supervisor as its init process.
//!
//! Host layout, under the state dir (default `/run/bulkhead`):
//! `runc/` the OCI runtime's own state; `sandboxes/<id>/` the bundle: `config.json`,
//! `control/supervisor.sock` (0700: the socket whose listening end only the sandbox's supervisor
//! holds; under gVisor the supervisor binds it, through the control dir bound into the sandbox,
//! see [`spec::OciKind::Gvisor`]), `supervisor.log`; `view/`, a tmpfs of its own holding everything a sandbox sees of
//! the host: `rootfs/` (mount points only), `etc/` (the generated `/etc`), `supervisor` (a copy
//! of the binary), and `sandboxes/<id>/` (that sandbox's `hosts` and `/run` files).
//!
//! Why a tmpfs of its own: a bind mount shows in the sandbox's `/proc/self/mountinfo` as a
//! path inside the filesystem it comes from. Bound from the view, those paths are `/rootfs`,
//! `/etc`, `/sandboxes/<its own id>/hosts`: nothing of the state dir's location, the data dir,
//! or any other sandbox. It is mounted with the first sandbox and detached when the last
//! namespace goes.

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::Command;

use crate::cgroup::Cgroups;
use crate::client::FileStream;
use crate::spec::{self, BaseEntry, OciKind, SpecPaths, CGROUP_FD, SUPERVISOR_FD, SUPERVISOR_PATH};
use crate::{
    client, ExecSpec, ExecStream, HostSandbox, NamespaceLimits, ProcessInfo, ProcessOutput, ProcessSpec, Result,
    Runtime, RuntimeError, SandboxSpec, SandboxStats, TtySize,
};

/// How long an OCI runtime invocation may take before it is considered hung.
const OCI_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the local backend keeps its state and finds its parts.
#[derive(Debug, Clone)]
pub struct OciConfig {
    /// Host directory of bundles and OCI runtime state, such as `/run/bulkhead`.
    pub state_dir: PathBuf,
    /// Mount point of the cgroup hierarchy, normally `/sys/fs/cgroup`.
    pub cgroup_root: PathBuf,
    /// Name of this server's top cgroup, such as `bulkhead`.
    pub cgroup_prefix: String,
    /// The supervisor binary on the host.
    pub supervisor: PathBuf,
    /// Isolation tiers and their OCI runtime binaries, checked at start.
    pub runtimes: Vec<(String, String)>,
    /// The id of the store this runtime serves (`sto_…`), written into every bundle as its
    /// owner mark: reconciliation removes only sandboxes that carry this server's mark.
    pub owner: String,
    /// The server's data dir, recorded in the lock files as the holder's (see
    /// [`crate::ownership`]).
    pub data_dir: PathBuf,
    /// `--network isolated`: each sandbox gets a network of its own (see [`crate::net`]).
    /// None: loopback only.
    pub network: Option<crate::net::NetConfig>,
    /// `--egress-ca-file`'s contents (PEM): trust anchors for the upstream TLS of brokered
    /// hosts beside the web PKI roots (see [`crate::broker`]).
    pub egress_ca_pem: Option<Vec<u8>>,
    /// The upstream resolver of the egress gateway (`--egress-dns`); `None` for the host's.
    pub egress_dns: Option<std::net::SocketAddr>,
    /// Where lxcfs is mounted (`--lxcfs`, normally `/var/lib/lxcfs`): sandboxes see their own
    /// memory and CPU in `/proc` through it (see [`spec::LXCFS_PROC`]). Used only while an
    /// lxcfs filesystem is mounted there.
    pub lxcfs: Option<PathBuf>,
}

pub struct OciRuntime {
    config: OciConfig,
    /// Whether the view is mounted and prepared. Held while a bundle is made and while the view
    /// is detached, so that a detach never pulls the view from under a starting sandbox.
    view_ready: std::sync::Mutex<bool>,
    cgroups: Cgroups,
    base: Vec<BaseEntry>,
    /// Which of `spec::SHARED_ETC` the host has.
    shared_etc: Vec<String>,
    /// The inits of this runtime's sandboxes, watched (see [`crate::watch`]).
    inits: crate::watch::Inits,
    /// The CPU time (clock ticks) of each supervisor at its last unanswered ping.
    cpu_seen: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Sandbox networks, with `--network isolated`.
    network: Option<crate::net::Network>,
    /// The API at each networked sandbox's gateway (see [`crate::gateway`]).
    relays: crate::gateway::ApiRelays,
    /// Brokered credentials (see [`crate::broker`]), with the `--egress-ca-file` anchors.
    broker: std::sync::Arc<crate::broker::Broker>,
    /// DNS and the TCP forwarder at each networked sandbox's gateway (see [`crate::gateway`]).
    egress: Option<crate::gateway::EgressGateway>,
    /// The user namespaces whose id maps the layers of image roots are mounted through.
    idmaps: crate::rootfs::IdMaps,
    /// Each namespace's CPU quota as last set (`ensure_namespace`), in millicores: what a start
    /// may use at most (a sandbox's quota may not exceed its namespace's on cgroup v1).
    namespace_cpu: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// Whether an lxcfs filesystem is mounted at `dir`, with every file of [`spec::LXCFS_PROC`].
pub fn lxcfs_at(dir: &Path) -> bool {
    let wanted = dir.to_string_lossy();
    let mounted = fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines().any(|l| {
            l.split(' ').nth(4) == Some(wanted.as_ref())
                && l.split_once(" - ").is_some_and(|(_, rest)| rest.starts_with("fuse.lxcfs "))
        })
    });
    mounted && spec::LXCFS_PROC.iter().all(|f| dir.join(f).is_file())
}

/// Raises the soft limit of open files to the hard one: every networked sandbox's gateway holds
/// descriptors for its connections (bounded per sandbox, see [`crate::gateway`]), and the server
/// should run out of none of them before the sandboxes' own bounds apply.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is valid for writes of its size; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
    // SAFETY: `raised` is a valid rlimit; a soft limit up to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not raise the open files limit");
    }
}

/// The file in each bundle that names the store owning the sandbox.
pub const OWNER_FILE: &str = "owner";

/// The tmpfs under the state dir that holds what sandboxes see (see the module's doc).
pub const VIEW_DIR: &str = "view";

/// The file in the state dir that names the net prefix of the server's sandbox networks
/// (`--network isolated`), so that [`purge`] finds them with the state dir alone.
pub const NET_PREFIX_FILE: &str = "net_prefix";

/// The host's CA bundle, the start of the bundle of a sandbox that trusts a namespace CA.
pub const HOST_CA_BUNDLE: &str = spec::CA_BUNDLE_PATH;

fn is_sandbox_id(id: &str) -> bool {
    id.strip_prefix("sbx_")
        .is_some_and(|r| !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .mode(mode)
        .recursive(true)
        .create(path)
        .map_err(RuntimeError::io(format!("create {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(RuntimeError::io(format!("chmod {}", path.display())))
}

/// Writes the sandbox's `/run` files into `<own>/run/<dir>/`, owned by the sandbox's root
/// (mode 0400, directories 0500), and returns the directories to mount.
fn write_run_files(own: &Path, spec: &SandboxSpec) -> Result<Vec<(PathBuf, String)>> {
    let owner = Some(spec.ids.host_start);
    let mut dirs: Vec<(PathBuf, String)> = Vec::new();
    for file in &spec.run_files {
        if !safe_run_name(&file.dir) {
            return Err(RuntimeError::Protocol(format!("bad /run file name {}/{}", file.dir, file.name)));
        }
        let dir = own.join("run").join(&file.dir);
        if !dirs.iter().any(|(_, d)| *d == file.dir) {
            mkdir(&dir, 0o700)?;
            dirs.push((dir.clone(), file.dir.clone()));
        }
        write_run_file(&dir, file, owner)?;
    }
    for (dir, _) in &dirs {
        std::os::unix::fs::chown(dir, owner, owner).map_err(RuntimeError::io(format!("chown {}", dir.display())))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o500))
            .map_err(RuntimeError::io(format!("chmod {}", dir.display())))?;
    }
    traversable_run_dir(own)?;
    Ok(dirs)
}

/// Makes `<own>/run` traversable (0711, nothing listable): gVisor's gofer opens the sources of
/// the sandbox's binds as the sandbox's root, not the host's.
fn traversable_run_dir(own: &Path) -> Result<()> {
    let run = own.join("run");
    match fs::set_permissions(&run, fs::Permissions::from_mode(0o711)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(RuntimeError::io(format!("chmod {}", run.display()))(e))
        }
        _ => Ok(()),
    }
}

/// A `/run` directory or file name: one path component, not `.` or `..`, no NUL.
fn safe_run_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// Writes `file` into `dir` (mode 0400, owned by `owner`, never over an existing file).
fn write_run_file(dir: &Path, file: &crate::RunFile, owner: Option<u32>) -> Result<()> {
    use std::io::Write;
    if !safe_run_name(&file.name) {
        return Err(RuntimeError::Protocol(format!("bad /run file name {}/{}", file.dir, file.name)));
    }
    let path = dir.join(&file.name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&path)
        .map_err(RuntimeError::io(format!("write {}", path.display())))?;
    f.write_all(&file.data).map_err(RuntimeError::io(format!("write {}", path.display())))?;
    std::os::unix::fs::fchown(&f, owner, owner).map_err(RuntimeError::io(format!("chown {}", path.display())))
}

/// A warm pool's sandbox's claim points in its own directory of the view (see
/// [`crate::rootfs::make_claim_point`]).
const CLAIM_WORKSPACE: &str = "claim-workspace";
const CLAIM_AGENT: &str = "claim-agent";
/// Where a sandbox's agent code is mounted read-only in its own directory of the view (see
/// [`crate::rootfs::mount_readonly_view`]).
const AGENT_VIEW: &str = "agent";
/// The CPU a sandbox starts with when it asks for less, in millicores (see `create`).
const START_CPU_MILLIS: u64 = 1000;
/// How long a create waits for its new supervisor's first answer before it sets the sandbox's
/// own CPU quota anyway.
const START_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// In a warm pool's bundle until its claim: a [`PoolMark`] as JSON.
const POOLED_FILE: &str = "pooled";

/// What a warm pool's sandbox was started with that its claim may change.
#[derive(serde::Serialize, serde::Deserialize)]
struct PoolMark {
    /// The variables the runtime itself set, which the environment bound at claim keeps.
    env: Vec<(String, String)>,
    /// The size of its `/tmp`, in bytes: a claim asking the same leaves it mounted as it is.
    tmp_bytes: u64,
    /// The size of its writable root, in bytes, with an image root: likewise.
    writable_bytes: Option<u64>,
}

/// The `/run` directories of a warm pool's sandbox, empty until its claim writes them (see
/// [`write_run_files`] for their owner and modes): `bulkhead` and `secrets`.
fn empty_run_dirs(own: &Path, spec: &SandboxSpec) -> Result<Vec<(PathBuf, String)>> {
    let owner = Some(spec.ids.host_start);
    let mut dirs = Vec::new();
    for name in ["bulkhead", "secrets"] {
        let dir = own.join("run").join(name);
        mkdir(&dir, 0o500)?;
        std::os::unix::fs::chown(&dir, owner, owner).map_err(RuntimeError::io(format!("chown {}", dir.display())))?;
        dirs.push((dir, name.to_owned()));
    }
    traversable_run_dir(own)?;
    Ok(dirs)
}

/// Writes a claimant's `/run` files into the existing directories of a warm pool's sandbox
/// ([`empty_run_dirs`]), each as [`write_run_files`] would: mode 0400, owned by the sandbox's
/// root, never over an existing file.
fn write_claimed_run_files(own: &Path, spec: &SandboxSpec) -> Result<()> {
    for file in &spec.run_files {
        if !(file.dir == "bulkhead" || file.dir == "secrets") {
            return Err(RuntimeError::Protocol(format!("bad /run file name {}/{}", file.dir, file.name)));
        }
        write_run_file(&own.join("run").join(&file.dir), file, Some(spec.ids.host_start))?;
    }
    Ok(())
}

/// Where a hybrid cgroup v1 host mounts its (nearly empty) cgroup v2 hierarchy.
const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// Whether `runtime` must run with the hybrid layout's cgroup v2 mount hidden: crun refuses
/// "cgroups in hybrid mode" but works on the plain v1 hierarchies once the unified mount is
/// gone from its view.
pub fn needs_v1_view(runtime: &str) -> bool {
    let is_crun = Path::new(runtime).file_name().is_some_and(|n| n == "crun");
    is_crun
        && fs::read_to_string("/proc/self/mounts")
            .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(UNIFIED) && l.contains("cgroup2")))
            .unwrap_or(false)
}

/// Runs between fork and exec of the OCI runtime: a private mount namespace for it alone, in
/// which the unified cgroup mount is detached. The host's mounts are untouched.
fn hide_unified_cgroup() -> std::io::Result<()> {
    private_mount_namespace()?;
    // SAFETY: umount2 is a plain syscall, async-signal-safe, called in the forked child before
    // exec with a NUL-terminated static string.
    unsafe {
        if libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Moves the calling (forked, not yet exec'd) process into a mount namespace of its own whose
/// mounts propagate nowhere.
fn private_mount_namespace() -> std::io::Result<()> {
    // SAFETY: unshare and mount are plain syscalls, async-signal-safe, called in the forked
    // child before exec with a NUL-terminated static string.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = libc::MS_REC | libc::MS_PRIVATE;
        if libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), flags, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs between fork and exec of runsc: a private mount namespace for it alone, in which an
/// empty read-only tmpfs covers `/proc/sys/net`. runsc tells the host's network namespace
/// from a sandbox's by `net.core.rmem_default`, which only the host's had before Linux
/// namespaced it (6.x); on a newer kernel it takes every network namespace for the host's and
/// refuses to start gVisor's network stack in the sandbox's. (`/proc/sys/net/core` alone cannot
/// be covered: each network namespace has its own entries there.) Nothing of gVisor reads that
/// directory of the host. A covered `/proc` is not "fully visible", and the kernel then lets no
/// user namespace mount a procfs (runsc's gofer does): a clean procfs at `clean_proc` (an empty
/// directory) keeps one fully visible. The host's mounts are untouched.
fn hide_net_sysctls(clean_proc: &std::ffi::CStr) -> std::io::Result<()> {
    private_mount_namespace()?;
    // SAFETY: mount is a plain syscall, async-signal-safe, called in the forked child before
    // exec with NUL-terminated strings that outlive the calls.
    unsafe {
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(c"proc".as_ptr(), clean_proc.as_ptr(), c"proc".as_ptr(), flags, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let data = c"size=4k,mode=555";
        if libc::mount(c"tmpfs".as_ptr(), c"/proc/sys/net".as_ptr(), c"tmpfs".as_ptr(), flags, data.as_ptr().cast())
            != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The empty directory under the state dir where runsc's private mount namespace has a clean
/// procfs (see [`hide_net_sysctls`]).
const CLEAN_PROC_DIR: &str = "proc";

/// A command for the OCI runtime `runtime`, with the cgroup view it needs.
pub(crate) fn oci_command(runtime: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(runtime);
    if needs_v1_view(runtime) {
        // SAFETY: `hide_unified_cgroup` only makes async-signal-safe syscalls.
        unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, hide_unified_cgroup) };
    }
    cmd
}

/// Runs `<binary> --version` to check that an OCI runtime is installed.
fn check_runtime(tier: &str, binary: &str) -> Result<()> {
    let ok = std::process::Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        let package = Path::new(binary).file_name().and_then(|n| n.to_str()).unwrap_or("runc");
        Err(RuntimeError::Unavailable(format!(
            "the OCI runtime {binary:?} of isolation tier {tier:?} is not installed or does not run: \
             install it (Debian/Ubuntu: apt-get install {package}) or point the tier elsewhere with \
             --runtime-class {tier}=/path/to/runtime"
        )))
    }
}

/// Checks that this host can run sandboxes at all; the error says what to install or enable.
fn check_host(config: &OciConfig) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(RuntimeError::Unavailable(
            "sandboxes need root: run `bulkhead serve` as root (it drops every sandbox into an unprivileged user namespace)"
                .into(),
        ));
    }
    let userns =
        fs::read_to_string("/proc/sys/user/max_user_namespaces").ok().and_then(|s| s.trim().parse::<u64>().ok());
    if userns == Some(0) || !Path::new("/proc/self/ns/user").exists() {
        return Err(RuntimeError::Unavailable(
            "user namespaces are disabled: enable them (sysctl user.max_user_namespaces=15000)".into(),
        ));
    }
    if !config.supervisor.is_file() {
        return Err(RuntimeError::Unavailable(format!(
            "the sandbox supervisor {} is missing: install bulkhead-supervisor beside the bulkhead binary",
            config.supervisor.display()
        )));
    }
    for (tier, binary) in &config.runtimes {
        check_runtime(tier, binary)?;
    }
    Ok(())
}

fn is_mount_point(path: &Path) -> bool {
    let wanted = path.to_string_lossy();
    fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(wanted.as_ref())))
        .unwrap_or(false)
}

/// Mounts the view's tmpfs at `dir` unless it is mounted already (a restart keeps it, and the
/// sandboxes that outlived the server keep using it).
fn mount_view(dir: &Path) -> Result<()> {
    mkdir(dir, 0o711)?;
    if is_mount_point(dir) {
        return Ok(());
    }
    // The source is shown to sandboxes as the mount source: a neutral word.
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0711,nosuid,nodev,size=25%", "tmpfs"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(RuntimeError::io(format!("mount the sandbox view at {}", dir.display())))?;
    if !out.status.success() {
        return Err(RuntimeError::Io {
            what: format!("mount the sandbox view at {}", dir.display()),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        });
    }
    Ok(())
}

impl OciRuntime {
    /// Checks the host and prepares the state dir.
    ///
    /// The server holds the state dir and the cgroup prefix for itself alone before it calls
    /// this (see [`crate::ownership`]). Makes this process the child subreaper of the
    /// sandboxes' inits (see [`crate::watch`]).
    pub fn new(config: OciConfig) -> Result<OciRuntime> {
        check_host(&config)?;
        let broker = std::sync::Arc::new(crate::broker::Broker::new(config.egress_ca_pem.as_deref())?);
        mkdir(&config.state_dir, 0o711)?;
        crate::watch::become_subreaper().map_err(RuntimeError::io("become the subreaper of sandboxes' inits"))?;
        raise_open_files_limit();
        let cgroups = Cgroups::detect(&config.cgroup_root, &config.cgroup_prefix)?;
        mkdir(&config.state_dir.join("sandboxes"), 0o711)?;
        mkdir(&config.state_dir.join("runc"), 0o700)?;
        mkdir(&config.state_dir.join(crate::rootfs::ROOTFS_DIR), 0o711)?;
        let base = spec::base_entries(Path::new("/"));
        let shared_etc =
            spec::SHARED_ETC.iter().filter(|s| Path::new("/etc").join(s).is_dir()).map(|s| (*s).to_owned()).collect();
        // The view is mounted with the first sandbox; one left by a previous run (whose sandboxes
        // may still run) is adopted and refreshed.
        let adopted = is_mount_point(&config.state_dir.join(VIEW_DIR));
        let prefix_file = config.state_dir.join(NET_PREFIX_FILE);
        let network = match &config.network {
            Some(net) => {
                fs::write(&prefix_file, &net.net_prefix).map_err(RuntimeError::io("write the net prefix file"))?;
                Some(crate::net::Network::new(net.clone())?)
            }
            // Loopback only now, but sandboxes of an earlier isolated run may still hold their
            // networks: kept to remove them (and their rules stay until the last one goes).
            None => match fs::read_to_string(&prefix_file) {
                Ok(prefix) if !crate::net::sandboxes_on_host(prefix.trim()).is_empty() => {
                    Some(crate::net::Network::existing(prefix.trim())?)
                }
                _ => None,
            },
        };
        let egress = match &config.network {
            Some(net) => Some(crate::gateway::EgressGateway::new(&crate::gateway::EgressConfig {
                upstream_dns: config.egress_dns,
                sandbox_cidr: net.cidr,
                broker: broker.clone(),
            })),
            None => None,
        };
        let runtime = OciRuntime {
            config,
            view_ready: std::sync::Mutex::new(adopted),
            cgroups,
            base,
            shared_etc,
            inits: Default::default(),
            cpu_seen: Default::default(),
            network,
            relays: Default::default(),
            broker,
            egress,
            idmaps: Default::default(),
            namespace_cpu: Default::default(),
        };
        if adopted {
            runtime.prepare_base()?;
        }
        Ok(runtime)
    }

    /// The brokered-credentials relay the gateway hands brokered connections to.
    pub fn broker(&self) -> &std::sync::Arc<crate::broker::Broker> {
        &self.broker
    }

    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("sandboxes").join(id)
    }

    /// Where the root of sandbox `id` started from an image is mounted: outside its bundle, so
    /// that removing a bundle never walks into a root that is still mounted.
    pub(crate) fn image_root(&self, id: &str) -> PathBuf {
        self.config.state_dir.join(crate::rootfs::ROOTFS_DIR).join(id)
    }

    fn view(&self) -> PathBuf {
        self.config.state_dir.join(VIEW_DIR)
    }

    /// The sandbox's own files in the view: its `hosts` and `/run` directories.
    fn sandbox_view(&self, id: &str) -> PathBuf {
        self.view().join("sandboxes").join(id)
    }

    fn socket(&self, id: &str) -> PathBuf {
        self.bundle(id).join("control").join("supervisor.sock")
    }

    pub(crate) fn oci_root(&self) -> PathBuf {
        self.config.state_dir.join("runc")
    }

    /// Watches the init of sandbox `id` (see [`crate::watch`]) when its pid file names a live
    /// supervisor, or, with `just_started`, any live process: the OCI runtime has just written
    /// the file and the init may not have executed the supervisor yet (a pidfd follows the
    /// process through its exec). False when there is nothing to watch.
    fn watch_init(&self, namespace: &str, id: &str, just_started: bool) -> bool {
        let pid = if just_started { pid_file(&self.bundle(id)) } else { init_pid(&self.bundle(id)) };
        let Some(pid) = pid else {
            return false;
        };
        let cgroups = self.cgroups.clone();
        let (ns, sbx) = (namespace.to_owned(), id.to_owned());
        self.inits.watch(id, pid, move || cgroups.oom_kills(&ns, &sbx));
        true
    }

    /// The OCI runtime that runs `id` (recorded in its bundle), or the first configured one.
    fn runtime_of(&self, id: &str) -> String {
        fs::read_to_string(self.bundle(id).join("runtime"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| self.config.runtimes.first().map(|(_, b)| b.clone()))
            .unwrap_or_else(|| "runc".to_owned())
    }

    fn check_id(id: &str) -> Result<()> {
        if is_sandbox_id(id) {
            Ok(())
        } else {
            Err(RuntimeError::NotRunning(id.to_owned()))
        }
    }

    /// Writes the bundle of `spec` with `args` as its init process instead of the supervisor:
    /// the same isolation run by the bare OCI runtime (see `baseline`).
    pub(crate) fn raw_bundle(&self, spec: &SandboxSpec, args: &[&str]) -> Result<PathBuf> {
        self.prepare_bundle(spec, None)?;
        let path = self.bundle(&spec.id).join("config.json");
        let text = fs::read(&path).map_err(RuntimeError::io("read config.json"))?;
        let mut v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| RuntimeError::Protocol(e.to_string()))?;
        v["process"]["args"] = serde_json::json!(args);
        fs::write(&path, serde_json::to_vec(&v).map_err(|e| RuntimeError::Protocol(e.to_string()))?)
            .map_err(RuntimeError::io("write config.json"))?;
        Ok(self.bundle(&spec.id))
    }

    /// Mounts and prepares the view when it is not ready (for the first sandbox, and the first
    /// after the last namespace went).
    fn ensure_view(&self, ready: &mut bool) -> Result<()> {
        if !*ready {
            mount_view(&self.view())?;
            self.prepare_base()?;
            *ready = true;
        }
        Ok(())
    }

    /// Detaches the view once no namespace and no sandbox is left, so that a server with
    /// nothing to run leaves nothing mounted. Sandboxes still holding it (none, by then) would
    /// keep it alive in their own mount namespaces.
    fn release_view(&self) {
        let mut ready = self.view_ready.lock().unwrap_or_else(|e| e.into_inner());
        let bundles = fs::read_dir(self.config.state_dir.join("sandboxes")).map(|d| d.count()).unwrap_or(0);
        if !*ready || !self.cgroups.namespaces().is_empty() || bundles > 0 {
            return;
        }
        let view = self.view();
        match std::process::Command::new("umount").arg("-l").arg(&view).stderr(Stdio::null()).status() {
            Ok(s) if s.success() => *ready = false,
            _ => tracing::warn!(view = %view.display(), "could not detach the sandbox view"),
        }
    }

    /// The root filesystem, `/etc` and the supervisor every sandbox shares, made once per
    /// mount of the view: mount points and symlinks, the generated files, a copy of the
    /// supervisor. Read-only inside every sandbox.
    fn prepare_base(&self) -> Result<()> {
        let base = self.view();
        mkdir(&base.join("sandboxes"), 0o711)?;
        let rootfs = base.join("rootfs");
        mkdir(&rootfs, 0o755)?;
        for dir in ["proc", "dev", "sys", "tmp", "run", "etc", "workspace", "agent", ".bulkhead"] {
            mkdir(&rootfs.join(dir), 0o755)?;
        }
        // runc gives a tmpfs the mode of the directory it is mounted on (whatever `mode=` says):
        // `/tmp` is everyone's, with the sticky bit, as on any Linux.
        mkdir(&rootfs.join("tmp"), 0o1777)?;
        // `/sys` is not the kernel's sysfs but these mount points (see `spec::SYS_BINDS`).
        for inside in spec::SYS_BINDS.iter().map(|(_, inside)| *inside).chain([spec::CGROUP_PATH]) {
            mkdir(&rootfs.join(inside.trim_start_matches('/')), 0o755)?;
        }
        let supervisor = base.join("supervisor");
        let staged = base.join("supervisor.new");
        fs::copy(&self.config.supervisor, &staged).map_err(RuntimeError::io("copy the supervisor"))?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o755))
            .map_err(RuntimeError::io("chmod the supervisor"))?;
        fs::rename(&staged, &supervisor).map_err(RuntimeError::io("install the supervisor"))?;
        self.prepare_supervisor_dir(&base, &supervisor)?;
        for entry in &self.base {
            match entry {
                BaseEntry::Bind(name) => mkdir(&rootfs.join(name), 0o755)?,
                BaseEntry::Symlink { name, target } => {
                    let link = rootfs.join(name);
                    if fs::symlink_metadata(&link).is_err() {
                        symlink(target, &link).map_err(RuntimeError::io(format!("symlink {name}")))?;
                    }
                }
            }
        }
        let target = rootfs.join(SUPERVISOR_PATH.trim_start_matches('/'));
        fs::write(&target, b"").map_err(RuntimeError::io("create the supervisor mount point"))?;
        let etc = base.join("etc");
        mkdir(&etc, 0o755)?;
        for (name, content) in spec::etc_files() {
            fs::write(etc.join(name), content).map_err(RuntimeError::io(format!("write etc/{name}")))?;
        }
        // The dynamic linker's cache: library paths only, and none under the hidden
        // `/usr/local` (the host's cache would name the operator's own libraries).
        write_ld_cache(Path::new("/etc/ld.so.conf"), &etc);
        for sub in &self.shared_etc {
            mkdir(&etc.join(sub), 0o755)?;
        }
        Ok(())
    }

    /// The directory mounted at [`spec::SUPERVISOR_DIR`] in sandboxes started from an image:
    /// a hard link of the view's supervisor, and, when it is dynamically linked, the host's
    /// loader and the libraries `ldd` names, copied (so that the host's own files are never
    /// exposed).
    fn prepare_supervisor_dir(&self, base: &Path, supervisor: &Path) -> Result<()> {
        let dir = base.join("bulkhead");
        let _ = fs::remove_dir_all(&dir);
        mkdir(&dir.join("lib"), 0o755)?;
        // The mount point of a gVisor sandbox's control directory (see `spec::CONTROL_PATH`);
        // empty, and bound over by nothing, in a runc sandbox.
        mkdir(&dir.join("control"), 0o755)?;
        fs::hard_link(supervisor, dir.join("supervisor")).map_err(RuntimeError::io("link the supervisor"))?;
        let out = std::process::Command::new("ldd")
            .arg(supervisor)
            .stdin(Stdio::null())
            .output()
            .map_err(RuntimeError::io("run ldd on the supervisor"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (loader, libs) = parse_ldd(&text);
        let Some(loader) = loader else {
            // Statically linked: nothing to bring.
            return Ok(());
        };
        let copy = |from: &Path, to: &Path| -> Result<()> {
            fs::copy(from, to).map_err(RuntimeError::io(format!("copy {}", from.display())))?;
            fs::set_permissions(to, fs::Permissions::from_mode(0o755)).map_err(RuntimeError::io("chmod a library"))
        };
        copy(&loader, &dir.join("ld.so"))?;
        for lib in libs {
            if let Some(name) = lib.file_name() {
                copy(&lib, &dir.join("lib").join(name))?;
            }
        }
        Ok(())
    }

    /// Whether the supervisor runs through the loader in sandboxes started from an image.
    fn supervisor_dynamic(&self) -> bool {
        self.view().join("bulkhead").join("ld.so").exists()
    }

    /// Writes the bundle of `spec` (its control directory and its spec) and its files in the
    /// view (its own `hosts` and `/run` files); the sandbox joins the network namespace `netns`
    /// when given.
    fn prepare_bundle(&self, spec: &SandboxSpec, net: Option<&crate::net::SandboxNet>) -> Result<()> {
        let bundle = self.bundle(&spec.id);
        {
            let mut ready = self.view_ready.lock().unwrap_or_else(|e| e.into_inner());
            mkdir(&bundle, 0o711)?;
            // The owner mark first: whatever else of the bundle a crash leaves, it says whose.
            fs::write(bundle.join(OWNER_FILE), &self.config.owner).map_err(RuntimeError::io("write the owner mark"))?;
            self.ensure_view(&mut ready)?;
        }
        let own = self.sandbox_view(&spec.id);
        mkdir(&own, 0o711)?;
        let hosts = own.join("hosts");
        fs::write(&hosts, spec::hosts_file(&spec.id)).map_err(RuntimeError::io("write hosts"))?;
        let kind = OciKind::of(&spec.oci_runtime);
        let control = bundle.join("control");
        mkdir(&control, 0o700)?;
        if kind == OciKind::Gvisor {
            if matches!(spec.root, crate::RootSpec::Host) {
                return Err(RuntimeError::Invalid(
                    "a gVisor runtime class needs an image root (`--root image`): gVisor's gofer cannot \
                     remount the host's shared base read-only inside the sandbox's user namespace"
                        .into(),
                ));
            }
            if spec.pooled {
                return Err(RuntimeError::Invalid(
                    "warm pools are not available on a gVisor runtime class: a claim mounts into the \
                     sandbox's mount namespace, which gVisor keeps in its own kernel"
                        .into(),
                ));
            }
            // The supervisor binds its socket here, as the sandbox's root (through gVisor's
            // gofer, which holds the sandbox's id map).
            let owner = Some(spec.ids.host_start);
            std::os::unix::fs::chown(&control, owner, owner).map_err(RuntimeError::io("chown the control dir"))?;
        }
        fs::write(bundle.join("runtime"), &spec.oci_runtime).map_err(RuntimeError::io("write the runtime marker"))?;
        let resolv_conf = match net {
            Some(net) => {
                let path = own.join("resolv.conf");
                fs::write(&path, spec::resolv_conf(net.addrs.gateway))
                    .map_err(RuntimeError::io("write resolv.conf"))?;
                Some(path)
            }
            None => None,
        };
        let run_dirs = if spec.pooled {
            if !spec.run_files.is_empty() || spec.workspace.is_some() || spec.agent_code.is_some() {
                return Err(RuntimeError::Invalid("a warm pool's sandbox starts with nothing of a claimant".into()));
            }
            empty_run_dirs(&own, spec)?
        } else {
            write_run_files(&own, spec)?
        };
        let agent_code = match &spec.agent_code {
            Some(code) => {
                let view = own.join(AGENT_VIEW);
                crate::rootfs::mount_readonly_view(code, &view, &bundle.join("agent-scratch"))?;
                Some(view)
            }
            None => None,
        };
        let claim_points = if spec.pooled {
            let points = spec::ClaimPoints { workspace: own.join(CLAIM_WORKSPACE), agent: own.join(CLAIM_AGENT) };
            crate::rootfs::make_claim_point(&points.workspace)?;
            crate::rootfs::make_claim_point(&points.agent)?;
            Some(points)
        } else {
            None
        };
        let rootfs = match &spec.root {
            crate::RootSpec::Host => self.view().join("rootfs"),
            crate::RootSpec::Image(root) => {
                let target = self.image_root(&spec.id);
                let userns = self.idmaps.userns(spec.ids)?;
                crate::rootfs::mount_image_root(&target, &bundle.join("scratch"), root, spec.ids, &userns)?;
                target
            }
        };
        if spec.pooled && spec.extra_ca_pem.is_some() {
            return Err(RuntimeError::Invalid("a warm pool's sandbox has no brokered credentials".into()));
        }
        let ca_bundle = match (&spec.extra_ca_pem, &spec.root) {
            (Some(pem), crate::RootSpec::Host) => Some(self.write_ca_bundle(&own, pem)?),
            (Some(pem), crate::RootSpec::Image(_)) => Some(write_image_ca_bundle(&rootfs, &own, pem)?),
            (None, _) => None,
        };
        let base = self.view();
        let paths = SpecPaths {
            rootfs,
            etc: base.join("etc"),
            hosts,
            supervisor: base.join("supervisor"),
            supervisor_dir: base.join("bulkhead"),
            supervisor_dynamic: self.supervisor_dynamic(),
            lxcfs: self.config.lxcfs.clone().filter(|dir| lxcfs_at(dir)),
            cgroups_path: self.cgroups.sandbox_path(&spec.namespace, &spec.id),
            shared_etc: self.shared_etc.clone(),
            run_dirs,
            ca_bundle,
            netns: net.map(|n| n.names.netns_path()),
            resolv_conf,
            claim_points,
            agent_code,
            kind,
            control,
        };
        let oci = spec::build(spec, &self.base, &paths).map_err(|e| RuntimeError::Oci {
            runtime: spec.oci_runtime.clone(),
            action: "build the spec",
            detail: e.to_string(),
        })?;
        let json = serde_json::to_vec(&oci).map_err(|e| RuntimeError::Protocol(e.to_string()))?;
        // The spec holds the sandbox's environment: readable by root only.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(bundle.join("config.json"))
            .map_err(RuntimeError::io("write config.json"))?;
        std::io::Write::write_all(&mut f, &json).map_err(RuntimeError::io("write config.json"))
    }

    /// Writes the sandbox's CA bundle (the host's [`HOST_CA_BUNDLE`], then `extra_ca_pem`) into
    /// its own directory of the view, readable by all (certificates are public), and returns it
    /// with where it appears inside: over the host's bundle in the shared `/etc/ssl/certs`, or
    /// in `/run` on a host without one.
    fn write_ca_bundle(&self, own: &Path, extra_ca_pem: &str) -> Result<(PathBuf, String)> {
        let host = match fs::read_to_string(HOST_CA_BUNDLE) {
            Ok(pem) => Some(pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(RuntimeError::io(format!("read {HOST_CA_BUNDLE}"))(e)),
        };
        let path = own.join("ca-certificates.crt");
        fs::write(&path, spec::ca_bundle(host.as_deref().unwrap_or(""), extra_ca_pem))
            .map_err(RuntimeError::io("write the CA bundle"))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .map_err(RuntimeError::io("chmod the CA bundle"))?;
        let over_host = host.is_some() && self.shared_etc.iter().any(|s| s == "ssl/certs");
        let inside = if over_host { spec::CA_BUNDLE_PATH } else { spec::CA_BUNDLE_RUN_PATH };
        Ok((path, inside.to_owned()))
    }

    async fn run_oci(&self, runtime: &str, args: &[&str], action: &'static str) -> Result<std::process::Output> {
        let mut cmd = Command::from(oci_command(runtime));
        cmd.arg("--root").arg(self.oci_root()).args(args).stdin(Stdio::null()).kill_on_drop(true);
        let out = tokio::time::timeout(OCI_TIMEOUT, cmd.output())
            .await
            .map_err(|_| RuntimeError::Oci { runtime: runtime.into(), action, detail: "timed out".into() })?
            .map_err(|e| RuntimeError::Oci { runtime: runtime.into(), action, detail: e.to_string() })?;
        Ok(out)
    }

    /// Starts the bundle's container with the listening socket as its fd 3 and the sandbox's
    /// delegated cgroup directory (see [`Cgroups::delegate`]) as its fd 4; under gVisor, with
    /// neither (see [`Self::start_gvisor`]). `networked`: the sandbox joins a network
    /// namespace made for it.
    async fn start(&self, spec: &SandboxSpec, networked: bool) -> Result<()> {
        if OciKind::of(&spec.oci_runtime) == OciKind::Gvisor {
            return self.start_gvisor(spec, networked).await;
        }
        let socket = self.socket(&spec.id);
        let listener = UnixListener::bind(&socket).map_err(RuntimeError::io("bind the supervisor socket"))?;
        let cgroup_dir = self.cgroups.delegate(&spec.namespace, &spec.id, spec.ids.host_start)?;
        // No session keyring per sandbox: the kernel caps keys per user id (200 by default),
        // and every sandbox of a namespace has the same host id, so a keyring each would stop
        // a namespace at 200 sandboxes. The sandbox cannot use keyrings anyway (seccomp denies
        // keyctl, add_key and request_key).
        let run = ["--no-new-keyring", "--preserve-fds", "2"];
        let background = spec.pooled && can_renice();
        if !needs_v1_view(&spec.oci_runtime) {
            // Spawned without a fork of the server (`spawn`): the socket at fd 3 and the
            // cgroup directory at fd 4, where `--preserve-fds 2` hands them on to the
            // supervisor. A warm pool's start is background work: the OCI runtime, its init
            // and the supervisor it becomes run at POOL_NICE (inherited) until the claim sets
            // them back (`claim`).
            let bundle = self.bundle(&spec.id);
            let log = open_unnamed_log(&bundle).map_err(RuntimeError::io("open the supervisor log"))?;
            let null = fs::File::open("/dev/null").map_err(RuntimeError::io("open /dev/null"))?;
            let args = self.run_args(spec, &[], &run);
            let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
            let fds = [
                (null.as_fd(), 0),
                (log.as_fd(), 1),
                (log.as_fd(), 2),
                (listener.as_fd(), SUPERVISOR_FD),
                (cgroup_dir.as_fd(), CGROUP_FD),
            ];
            let nice = background.then_some(crate::cgroup::POOL_NICE);
            let mut child =
                crate::spawn::spawn(spec.oci_runtime.as_ref(), &args, &fds, nice).map_err(|e| RuntimeError::Oci {
                    runtime: spec.oci_runtime.clone(),
                    action: "start the sandbox",
                    detail: e.to_string(),
                })?;
            drop((listener, cgroup_dir, log, null));
            let status = tokio::time::timeout(OCI_TIMEOUT, child.wait()).await;
            return self.started(spec, status);
        }
        // An OCI runtime that needs the v1 view (`hide_unified_cgroup`) needs a fork: the
        // private mount namespace is made between the fork and the exec.
        let mut cmd = self.run_command(oci_command(&spec.oci_runtime), spec, &[], &run)?;
        let fd = listener.as_raw_fd();
        let cgroup_fd = cgroup_dir.as_raw_fd();
        // SAFETY: runs between fork and exec and calls only dup2, fcntl and setpriority, which
        // are async-signal-safe. It places the listening socket at
        // fd 3 and the cgroup directory at fd 4 (dup2 clears close-on-exec on the copies),
        // where `--preserve-fds 2` hands them on to the supervisor. Neither source fd is 3 or
        // 4 while the other is being placed: both were opened before, and 3 and 4 are taken in
        // order from their own sources.
        unsafe {
            cmd.pre_exec(move || {
                if background && libc::setpriority(libc::PRIO_PROCESS, 0, crate::cgroup::POOL_NICE) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Move the cgroup fd out of the way first should it sit at fd 3.
                let mut cg = cgroup_fd;
                if cg == SUPERVISOR_FD {
                    cg = libc::fcntl(cg, libc::F_DUPFD_CLOEXEC, 10);
                    if cg < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::dup2(fd, SUPERVISOR_FD) < 0 || libc::dup2(cg, CGROUP_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let status = tokio::time::timeout(OCI_TIMEOUT, cmd.status()).await;
        drop(listener);
        drop(cgroup_dir);
        self.started(spec, status)
    }

    /// Starts the bundle's container under gVisor's `runsc`, which passes no descriptor into
    /// the sandbox: the supervisor binds its socket in the control directory (`--host-uds
    /// create` lets gVisor's gofer make it on the host, where the server connects); the
    /// sandbox's cgroup is made (runsc places its Sentry and gofer in it) but not delegated;
    /// the network is gVisor's own stack over the sandbox's network namespace, or none (its
    /// own loopback only) without one.
    async fn start_gvisor(&self, spec: &SandboxSpec, networked: bool) -> Result<()> {
        drop(self.cgroups.delegate(&spec.namespace, &spec.id, spec.ids.host_start)?);
        let mut cmd = std::process::Command::new(&spec.oci_runtime);
        if networked {
            let clean_proc = self.config.state_dir.join(CLEAN_PROC_DIR);
            mkdir(&clean_proc, 0o700)?;
            let clean_proc = std::ffi::CString::new(clean_proc.into_os_string().into_encoded_bytes())
                .map_err(|_| RuntimeError::Invalid("a state dir with a NUL byte".into()))?;
            // SAFETY: `hide_net_sysctls` only makes async-signal-safe syscalls; the string
            // it reads is moved into the closure and lives as long as the command.
            unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || hide_net_sysctls(&clean_proc)) };
        }
        let mut cmd = self.run_command(cmd, spec, &gvisor_flags(networked), &[])?;
        let status = tokio::time::timeout(OCI_TIMEOUT, cmd.status()).await;
        self.started(spec, status)
    }

    /// `cmd` (an OCI runtime) with [`Self::run_args`]; its output into the supervisor's log.
    fn run_command(
        &self,
        cmd: std::process::Command,
        spec: &SandboxSpec,
        flags: &[&str],
        run_flags: &[&str],
    ) -> Result<Command> {
        let bundle = self.bundle(&spec.id);
        let log = open_unnamed_log(&bundle).map_err(RuntimeError::io("open the supervisor log"))?;
        let log2 = log.try_clone().map_err(RuntimeError::io("open the supervisor log"))?;
        let mut cmd = Command::from(cmd);
        cmd.args(self.run_args(spec, flags, run_flags))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// An OCI runtime's arguments for a sandbox's start: `--root`, the runtime's global
    /// `flags`, then `run --detach` with `run_flags`, the pid file, the bundle and the
    /// sandbox's id.
    fn run_args(&self, spec: &SandboxSpec, flags: &[&str], run_flags: &[&str]) -> Vec<std::ffi::OsString> {
        let bundle = self.bundle(&spec.id);
        let mut args: Vec<std::ffi::OsString> = vec!["--root".into(), self.oci_root().into()];
        args.extend(flags.iter().map(Into::into));
        args.extend(["run".into(), "--detach".into()]);
        args.extend(run_flags.iter().map(Into::into));
        args.extend([
            "--pid-file".into(),
            bundle.join("pid").into(),
            "--bundle".into(),
            bundle.into(),
            spec.id.clone().into(),
        ]);
        args
    }

    /// What follows the OCI runtime's `run` of `spec`, which ended with `status`: its init
    /// watched, and the supervisor spared by the OOM killer; or the error, with the log's tail.
    fn started(
        &self,
        spec: &SandboxSpec,
        status: std::result::Result<std::io::Result<std::process::ExitStatus>, tokio::time::error::Elapsed>,
    ) -> Result<()> {
        let bundle = self.bundle(&spec.id);
        let failed = |detail: String| RuntimeError::Oci {
            runtime: spec.oci_runtime.clone(),
            action: "start the sandbox",
            detail,
        };
        match status {
            Ok(Ok(s)) if s.success() => {
                if !self.watch_init(&spec.namespace, &spec.id, true) {
                    tracing::warn!(sandbox = %spec.id, "the started sandbox's init is not there to watch");
                }
                if OciKind::of(&spec.oci_runtime) == OciKind::Gvisor {
                    // The host process is gVisor's kernel, which holds every process of the
                    // sandbox: sparing it would leave the memory cgroup's OOM killer nothing
                    // to kill.
                    return Ok(());
                }
                // Best effort: without CAP_SYS_RESOURCE (a server in a container) it stays at 0
                // and the bounded output retention alone keeps the supervisor small.
                if let Err(e) = spare_from_oom_killer(&bundle.join("pid")) {
                    // The host's answer does not change from one sandbox to the next: said once
                    // as a warning, then at debug level.
                    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::debug!(sandbox = %spec.id, error = %e, "the supervisor is not spared by the OOM killer");
                    } else {
                        tracing::warn!(sandbox = %spec.id, error = %e,
                            "the supervisor is not spared by the OOM killer (this server lacks CAP_SYS_RESOURCE); \
                             bounded output retention alone keeps it small");
                    }
                }
                Ok(())
            }
            Ok(Ok(s)) => Err(failed(format!("{s}: {}", log_tail(&bundle.join("supervisor.log"))))),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed("timed out".into())),
        }
    }
}

/// runsc's global flags for a sandbox: `--host-uds create` (the supervisor binds its socket on
/// the host through the gofer; nothing in the sandbox may connect to a host socket), and
/// `--network sandbox` (gVisor's network stack, on the sandbox's veth) when it has a network
/// namespace of its own, `none` (loopback only) otherwise.
///
/// Not `--oci-seccomp`: gVisor's filter of the bundle's profile ignores a rule's own errno
/// (so `clone3` fails with `EPERM`, not `ENOSYS`, and no thread can start). The sandbox's
/// calls are served by gVisor's kernel, which itself runs under gVisor's own host filter.
fn gvisor_flags(networked: bool) -> [&'static str; 2] {
    ["--host-uds=create", if networked { "--network=sandbox" } else { "--network=none" }]
}

/// The dynamic loader and the libraries in `ldd`'s output: lines `name => /path (addr)` and the
/// loader's `/path (addr)`. `None` for a statically linked program.
fn parse_ldd(text: &str) -> (Option<PathBuf>, Vec<PathBuf>) {
    let (mut loader, mut libs) = (None, Vec::new());
    for line in text.lines().map(str::trim) {
        let path = match line.split_once(" => ") {
            Some((_, rest)) => rest.split(' ').next().filter(|p| p.starts_with('/')).map(PathBuf::from),
            None => {
                let first = line.split(' ').next().unwrap_or_default();
                if first.starts_with('/') {
                    loader = Some(PathBuf::from(first));
                }
                None
            }
        };
        libs.extend(path);
    }
    (loader, libs)
}

/// The CA bundle of a sandbox started from an image whose root is mounted at `rootfs`: the
/// image's own bundle ([`spec::CA_BUNDLE_PATH`] in it, read without following any link out of
/// the image, at most 4 MiB) followed by `extra_ca_pem`, written into the sandbox's own
/// directory `own`; it appears over the image's file when the image has one, in `/run`
/// otherwise.
fn write_image_ca_bundle(rootfs: &Path, own: &Path, extra_ca_pem: &str) -> Result<(PathBuf, String)> {
    const MAX: u64 = 4 << 20;
    let image = crate::confined::Root::open(rootfs)
        .ok()
        .and_then(|root| crate::confined::open_read(&root, spec::CA_BUNDLE_PATH.trim_start_matches('/')).ok())
        .filter(|(_, meta)| meta.is_file() && meta.len() <= MAX)
        .and_then(|(f, _)| {
            let mut text = String::new();
            f.take(MAX).read_to_string(&mut text).ok().map(|_| text)
        });
    let path = own.join("ca-certificates.crt");
    fs::write(&path, spec::ca_bundle(image.as_deref().unwrap_or(""), extra_ca_pem))
        .map_err(RuntimeError::io("write the CA bundle"))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).map_err(RuntimeError::io("chmod the CA bundle"))?;
    let inside = if image.is_some() { spec::CA_BUNDLE_PATH } else { spec::CA_BUNDLE_RUN_PATH };
    Ok((path, inside.to_owned()))
}

/// Sets the started supervisor's `oom_score_adj` (its host pid is in `pid_file`) to -1000, from
/// the host: the supervisor is PID 1 and holds the sandbox's processes and their output, so the
/// OOM killer takes a command instead (every command sets its own back to 0 before it runs).
/// The OCI runtime cannot do it once inside the sandbox's user namespace, and lowering it needs
/// `CAP_SYS_RESOURCE`, which only the host's root has (an error without it).
fn spare_from_oom_killer(pid_file: &Path) -> std::io::Result<()> {
    let pid: u32 = fs::read_to_string(pid_file)?
        .trim()
        .parse()
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "a bad pid file"))?;
    fs::write(format!("/proc/{pid}/oom_score_adj"), "-1000")
}

/// Library directories named by an `ld.so.conf` (following `include` lines, whose last
/// component may hold one `*`), in order, without those under [`spec::HIDDEN_USR_LOCAL`].
fn ld_conf_dirs(conf: &Path, depth: u32, out: &mut Vec<String>) {
    let Ok(text) = fs::read_to_string(conf) else { return };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some(pattern) = line.strip_prefix("include").filter(|r| r.starts_with([' ', '\t'])) {
            if depth == 0 {
                continue;
            }
            for pattern in pattern.split_whitespace() {
                let pattern = conf.parent().unwrap_or(Path::new("/")).join(pattern);
                let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name().and_then(|n| n.to_str())) else {
                    continue;
                };
                let (head, tail) = name.split_once('*').unwrap_or((name, ""));
                let exact = !name.contains('*');
                let mut files: Vec<PathBuf> = fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        if exact {
                            n == name
                        } else {
                            n.len() >= head.len() + tail.len() && n.starts_with(head) && n.ends_with(tail)
                        }
                    })
                    .map(|e| e.path())
                    .collect();
                files.sort();
                for f in files {
                    ld_conf_dirs(&f, depth - 1, out);
                }
            }
            continue;
        }
        if line.starts_with("hwcap") {
            continue;
        }
        for dir in line.split([' ', '\t', ',', ':', '=']).filter(|d| d.starts_with('/')) {
            let hidden = Path::new(dir).starts_with(spec::HIDDEN_USR_LOCAL);
            if !hidden && !out.iter().any(|d| d == dir) {
                out.push(dir.to_owned());
            }
        }
    }
}

/// Writes `<etc>/ld.so.conf` (the host's library directories of `host_conf` without those
/// under `/usr/local`) and builds `<etc>/ld.so.cache` from it with the host's `ldconfig`
/// (`-X`: the host's library links are never touched). Without `ldconfig` the sandbox has no
/// cache and the dynamic linker searches its built-in directories.
fn write_ld_cache(host_conf: &Path, etc: &Path) {
    let mut dirs = Vec::new();
    ld_conf_dirs(host_conf, 4, &mut dirs);
    let conf = etc.join("ld.so.conf");
    let body: String = dirs.iter().map(|d| format!("{d}\n")).collect();
    if fs::write(&conf, body).is_err() {
        return;
    }
    let built = ["/sbin/ldconfig", "/usr/sbin/ldconfig"].iter().find(|p| Path::new(p).exists()).map(|ldconfig| {
        std::process::Command::new(ldconfig)
            .arg("-X")
            .arg("-C")
            .arg(etc.join("ld.so.cache"))
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    });
    if !matches!(built, Some(Ok(s)) if s.success()) {
        tracing::warn!("no dynamic linker cache for sandboxes: ldconfig failed or is missing");
        let _ = fs::remove_file(etc.join("ld.so.cache"));
    }
}

/// Opens `<bundle>/supervisor.log` for appending through a detached copy of the bundle's mount
/// (`open_tree(OPEN_TREE_CLONE)`), so that the descriptor's path, which the sandbox reads as
/// `/proc/1/fd/1`, is `/supervisor.log` and not the host path of the state dir. The copy lives
/// as long as the descriptor and is in no mount namespace.
fn open_unnamed_log(bundle: &Path) -> std::io::Result<fs::File> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let dir = std::ffi::CString::new(bundle.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    // SAFETY: `dir` is a NUL-terminated string that outlives the call; open_tree reads it and
    // returns a new descriptor or -1, touching no other memory.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, dir.as_ptr(), flags) };
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open_tree and is owned by nothing else.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = c"supervisor.log";
    // SAFETY: `tree` is an open descriptor and `name` a NUL-terminated literal; openat returns a
    // new descriptor or -1.
    let log = unsafe {
        libc::openat(
            tree.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o600 as libc::c_uint,
        )
    };
    if log < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `log` was just returned by openat and is owned by nothing else.
    Ok(unsafe { fs::File::from_raw_fd(log) })
}

/// The pid in the bundle's pid file (written by the OCI runtime), when it is one.
fn pid_file(bundle: &Path) -> Option<i32> {
    let pid = fs::read_to_string(bundle.join("pid")).ok().and_then(|s| s.trim().parse::<i32>().ok())?;
    (pid > 1).then_some(pid)
}

/// The host pid of the sandbox's init from the bundle's pid file, when that pid is still this
/// sandbox's supervisor: a supervisor (its program) in a cgroup named after this sandbox. A pid
/// may be reused once its process is gone, by anything, another sandbox's supervisor included
/// (of this server or another), so the program alone does not tell.
fn init_pid(bundle: &Path) -> Option<i32> {
    let pid = pid_file(bundle)?;
    let id = bundle.file_name()?.to_str()?;
    let is_supervisor = fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| spec::is_supervisor_cmdline(&c) || is_gvisor_sandbox_cmdline(&c, id));
    let in_its_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|c| c.lines().any(|l| l.rsplit(':').next().is_some_and(|path| path.split('/').any(|seg| seg == id))))
        .unwrap_or(false);
    (is_supervisor && in_its_cgroup).then_some(pid)
}

/// Whether a process's command line is gVisor's sandbox process (its kernel, which holds the
/// supervisor) for sandbox `id`: `runsc-sandbox … boot … <id>`. Under gVisor that process, not
/// the supervisor, is what the OCI runtime's pid file names.
fn is_gvisor_sandbox_cmdline(cmdline: &[u8], id: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
    args.first() == Some(&b"runsc-sandbox".as_slice())
        && args.contains(&b"boot".as_slice())
        && args.last() == Some(&id.as_bytes())
}

/// SIGKILLs the sandbox's init (the supervisor, PID 1 of its pid namespace) when the pid file
/// still names it, and waits briefly for it to be gone.
async fn kill_init(bundle: &Path) {
    let Some(pid) = init_pid(bundle) else {
        return;
    };
    // The process itself, whatever happens to its pid: reaped below if it is this server's
    // child and no watcher took it.
    let pidfd = crate::watch::pidfd_open(pid);
    // SAFETY: kill takes plain integers; the pid was just checked to be this sandbox's supervisor.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for _ in 0..400 {
        let gone = match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // A zombie (state Z) holds nothing of the sandbox any more.
            Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        };
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if let Some(fd) = pidfd {
        crate::watch::reap_now(&fd);
    }
}

/// Pings a new sandbox's supervisor until it answers, for up to [`START_PING_TIMEOUT`]. Under
/// gVisor the socket appears only once the supervisor has bound it: until then a connection
/// finds nothing there (`NotRunning`), and is tried again.
async fn first_ping(socket: &Path, id: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + START_PING_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client::ping(socket, id, left).await {
            Err(RuntimeError::NotRunning(_)) if !left.is_zero() => tokio::time::sleep(Duration::from_millis(5)).await,
            answer => return answer,
        }
    }
}

/// Whether this process may set a thread's nice value back down (`CAP_SYS_NICE`): probed once,
/// on a thread of its own that raises its nice value by one and lowers it again. Without it a
/// warm pool's start runs at the normal priority (its claim could not set it back).
fn can_renice() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        std::thread::spawn(|| {
            // SAFETY: plain integers; `who` 0 is the calling thread.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 1) == 0 && libc::setpriority(libc::PRIO_PROCESS, 0, 0) == 0
            }
        })
        .join()
        .unwrap_or(false)
    })
}

/// The reason on `rx` once there is one; `None` when its watcher is gone without one.
async fn wait_reason(mut rx: tokio::sync::watch::Receiver<Option<String>>) -> Option<String> {
    rx.wait_for(Option::is_some).await.ok().and_then(|r| r.clone())
}

fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let tail: String = text.chars().rev().take(600).collect::<Vec<_>>().into_iter().rev().collect();
    tail.trim().replace('\n', " | ")
}

/// Removes every sandbox of a state dir, the cgroup tree of a prefix and the state dir itself,
/// synchronously. For teardown paths that cannot await (a test harness dropped during a panic)
/// and for `bulkhead doctor --purge`.
///
/// With a net prefix recorded in the state dir ([`NET_PREFIX_FILE`]), every network object of
/// that prefix goes too (see [`crate::net::purge`]), once the sandboxes are gone.
pub fn purge(state_dir: &Path, cgroup_root: &Path, cgroup_prefix: &str) -> Result<()> {
    let oci_root = state_dir.join("runc");
    for e in fs::read_dir(state_dir.join("sandboxes")).into_iter().flatten().flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let runtime = fs::read_to_string(e.path().join("runtime")).unwrap_or_else(|_| "runc".into());
        let _ = oci_command(runtime.trim())
            .arg("--root")
            .arg(&oci_root)
            .args(["delete", "--force", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    if let Ok(cgroups) = Cgroups::detect(cgroup_root, cgroup_prefix) {
        cgroups.remove_all()?;
    }
    if let Ok(prefix) = fs::read_to_string(state_dir.join(NET_PREFIX_FILE)) {
        crate::net::purge(prefix.trim())?;
    }
    crate::ownership::remove_unheld(&crate::ownership::cgroup_lock_path(cgroup_prefix));
    // Image roots, filesystems mounted under the state dir, and the view.
    for e in fs::read_dir(state_dir.join(crate::rootfs::ROOTFS_DIR)).into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().ends_with(".upper") {
            let _ = crate::rootfs::unmount_root(&e.path());
        }
    }
    for e in fs::read_dir(state_dir.join("filesystems")).into_iter().flatten().flatten() {
        let _ = std::process::Command::new("umount").arg("-l").arg(e.path()).stderr(Stdio::null()).status();
    }
    crate::rootfs::unmount_under(&state_dir.join("sandboxes"));
    let view = state_dir.join(VIEW_DIR);
    if is_mount_point(&view) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&view).stderr(Stdio::null()).status();
    }
    match fs::remove_dir_all(state_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::io(format!("remove {}", state_dir.display()))(e)),
    }
}

#[async_trait]
impl Runtime for OciRuntime {
    async fn ensure_namespace(&self, namespace: &str, limits: &NamespaceLimits) -> Result<()> {
        let cgroups = self.cgroups.clone();
        let (ns, cpu_millis, limits) = (namespace.to_owned(), limits.cpu_millis, limits.clone());
        tokio::task::spawn_blocking(move || cgroups.ensure_namespace(&ns, &limits))
            .await
            .map_err(|e| RuntimeError::Protocol(e.to_string()))??;
        self.namespace_cpu.lock().unwrap_or_else(|e| e.into_inner()).insert(namespace.to_owned(), cpu_millis);
        Ok(())
    }

    async fn remove_namespace(&self, namespace: &str) -> Result<()> {
        let cgroups = self.cgroups.clone();
        let ns = namespace.to_owned();
        tokio::task::spawn_blocking(move || cgroups.remove_namespace(&ns))
            .await
            .map_err(|e| RuntimeError::Protocol(e.to_string()))??;
        self.release_view();
        Ok(())
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<()> {
        Self::check_id(&spec.id)?;
        // Where a start's time goes, at debug level (the bench's breakdown).
        let t = std::time::Instant::now();
        let mut phases: Vec<(&str, f64)> = Vec::with_capacity(5);
        let mut lap = |name: &'static str| phases.push((name, t.elapsed().as_secs_f64() * 1000.0));
        let result = async {
            let mut spec = spec.clone();
            let net = match &self.network {
                Some(net) => {
                    let made = net.setup(&spec.id).await?;
                    // The API, at the sandbox's gateway, as `$BULKHEAD_URL`.
                    self.relays.start(&spec.id, made.addrs.gateway)?;
                    spec.env.retain(|(k, _)| k != "BULKHEAD_URL");
                    spec.env.push(("BULKHEAD_URL".into(), crate::gateway::ApiRelays::url(made.addrs.gateway)));
                    // Its DNS and forwarder, before anything in it runs.
                    if let Some(egress) = &self.egress {
                        egress.start(&spec.namespace, &spec.id, made.addrs.gateway)?;
                    }
                    Some(made)
                }
                None => None,
            };
            // The start runs at no less than START_CPU_MILLIS: the supervisor's own start is the
            // platform's work, and at a small quota it would leave the sandbox throttled for the
            // rest of the period, so that its first command waited for the next one. The
            // namespace's cgroup still bounds it; the sandbox's own quota is set once its
            // supervisor answers, before anything of the tenant runs.
            let wanted = spec.cpu_millis;
            let ceiling = self.namespace_cpu.lock().unwrap_or_else(|e| e.into_inner()).get(&spec.namespace).copied();
            spec.cpu_millis = spec.cpu_millis.max(START_CPU_MILLIS.min(ceiling.unwrap_or(wanted)));
            lap("network");
            self.prepare_bundle(&spec, net.as_ref())?;
            lap("bundle and root");
            if spec.pooled {
                let mark = PoolMark {
                    env: spec.env.iter().filter(|(k, _)| k == "BULKHEAD_URL").cloned().collect(),
                    tmp_bytes: spec.tmp_bytes,
                    writable_bytes: match &spec.root {
                        crate::RootSpec::Image(root) => Some(root.writable_bytes),
                        crate::RootSpec::Host => None,
                    },
                };
                let json = serde_json::to_vec(&mark).map_err(|e| RuntimeError::Protocol(e.to_string()))?;
                fs::write(self.bundle(&spec.id).join(POOLED_FILE), json)
                    .map_err(RuntimeError::io("write the warm pool mark"))?;
            }
            self.start(&spec, net.is_some()).await?;
            lap("OCI runtime run");
            if let Err(e) = first_ping(&self.socket(&spec.id), &spec.id).await {
                tracing::debug!(sandbox = %spec.id, error = %e, "a new supervisor did not answer its first ping");
            }
            lap("first ping");
            if wanted != spec.cpu_millis {
                let cgroups = self.cgroups.clone();
                let pids = OciKind::of(&spec.oci_runtime).host_tasks(spec.pids);
                let (ns, id, memory) = (spec.namespace.clone(), spec.id.clone(), spec.memory_bytes);
                tokio::task::spawn_blocking(move || cgroups.set_sandbox_limits(&ns, &id, wanted, memory, pids))
                    .await
                    .map_err(|e| RuntimeError::Protocol(e.to_string()))??;
            }
            lap("limits");
            Ok(())
        }
        .await;
        if result.is_ok() {
            tracing::debug!(sandbox = %spec.id, phases = ?phases, "sandbox started (ms since its start, cumulative)");
        }
        if let Err(e) = result {
            // Leave nothing behind of a sandbox that did not start: its init, if the OCI runtime
            // got that far, is killed with its cgroup, and reaped here, being this server's
            // child once the runtime is gone.
            if let Err(cleanup) = self.delete(&spec.namespace, &spec.id).await {
                tracing::warn!(sandbox = %spec.id, error = %cleanup, "cleanup after a failed start failed");
            }
            crate::watch::reap_orphans();
            return Err(e);
        }
        Ok(())
    }

    async fn claim(&self, spec: &SandboxSpec) -> Result<()> {
        Self::check_id(&spec.id)?;
        if spec.extra_ca_pem.is_some() {
            return Err(RuntimeError::Invalid("a claim cannot bind brokered credentials".into()));
        }
        let bundle = self.bundle(&spec.id);
        let mark = bundle.join(POOLED_FILE);
        let pool: PoolMark = match fs::read(&mark) {
            Ok(json) => serde_json::from_slice(&json).map_err(|e| RuntimeError::Protocol(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::Invalid(format!("sandbox {} is not a warm pool's", spec.id)))
            }
            Err(e) => return Err(RuntimeError::io("read the warm pool mark")(e)),
        };
        // Claimed once: the mark goes first, so that no second claim binds it again.
        fs::remove_file(&mark).map_err(RuntimeError::io("remove the warm pool mark"))?;
        // Where a claim's time goes, at debug level (the bench's breakdown).
        let t = std::time::Instant::now();
        let mut phases: Vec<(&str, f64)> = Vec::with_capacity(6);
        let lap = |name: &'static str, phases: &mut Vec<(&str, f64)>| {
            phases.push((name, t.elapsed().as_secs_f64() * 1000.0));
        };
        // The claimant's limits and the kernel's default CPU weight, then its threads' nice
        // values (they started at POOL_NICE, where this process may set them back): the rest
        // of the binding, the supervisor's part included, runs at the claimant's priority, and
        // a thread the supervisor starts afterwards inherits nice 0. A few writes to cgroup
        // files, not worth a blocking thread's hand-off.
        self.cgroups.set_sandbox_limits(&spec.namespace, &spec.id, spec.cpu_millis, spec.memory_bytes, spec.pids)?;
        let threads = if can_renice() { self.cgroups.sandbox_threads(&spec.namespace, &spec.id) } else { Vec::new() };
        for tid in threads {
            let Ok(tid) = libc::id_t::try_from(tid) else { continue };
            // SAFETY: plain integers; on Linux a thread id names that thread alone. A thread
            // that ended meanwhile (ESRCH) has nothing left to set.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 0) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(RuntimeError::io("set a claimed sandbox's nice value")(e));
                }
            }
        }
        lap("limits", &mut phases);
        if let crate::RootSpec::Image(root) = &spec.root {
            if pool.writable_bytes != Some(root.writable_bytes) {
                crate::rootfs::resize_upper(&self.image_root(&spec.id), root.writable_bytes)?;
            }
        }
        lap("root", &mut phases);
        let init = init_pid(&bundle).ok_or_else(|| RuntimeError::NotRunning(spec.id.clone()))?;
        let tmp_bytes = spec.tmp_bytes;
        if pool.tmp_bytes != tmp_bytes {
            // A few system calls (`fspick`, `fsconfig`), not worth a blocking thread's hand-off.
            crate::rootfs::resize_tmpfs_in(init, "/tmp", tmp_bytes)?;
        }
        lap("tmp", &mut phases);
        let own = self.sandbox_view(&spec.id);
        write_claimed_run_files(&own, spec)?;
        if let Some(ws) = &spec.workspace {
            crate::rootfs::attach_at_claim_point(&ws.source, &own.join(CLAIM_WORKSPACE), ws.read_only)?;
        }
        if let Some(code) = &spec.agent_code {
            let view = own.join(AGENT_VIEW);
            crate::rootfs::mount_readonly_view(code, &view, &bundle.join("agent-scratch"))?;
            crate::rootfs::attach_at_claim_point(&view, &own.join(CLAIM_AGENT), true)?;
        }
        lap("files and mounts", &mut phases);
        let mut env = spec.env.clone();
        for (k, v) in pool.env {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        let env = spec::environment(&env)
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        client::bind(&self.socket(&spec.id), &spec.id, env).await?;
        lap("bind", &mut phases);
        tracing::debug!(sandbox = %spec.id, phases = ?phases, "claim bound (ms since its start, cumulative)");
        Ok(())
    }

    async fn exec(&self, id: &str, spec: ExecSpec, stdin: Vec<u8>) -> Result<ExecStream> {
        Self::check_id(id)?;
        client::exec(&self.socket(id), id, spec, stdin).await
    }

    async fn read_file(
        &self,
        id: &str,
        path: &std::path::Path,
        user: Option<String>,
        max_bytes: u64,
    ) -> Result<FileStream> {
        Self::check_id(id)?;
        client::read_file(&self.socket(id), id, path, user, max_bytes).await
    }

    async fn write_file(
        &self,
        id: &str,
        path: &std::path::Path,
        data: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
        max_bytes: u64,
        mode: Option<u32>,
        user: Option<String>,
    ) -> Result<()> {
        Self::check_id(id)?;
        client::write_file(&self.socket(id), id, path, data, max_bytes, mode, user).await
    }

    async fn list_dir(
        &self,
        id: &str,
        path: &std::path::Path,
        user: Option<String>,
        after: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<crate::DirPage> {
        Self::check_id(id)?;
        client::list_dir(&self.socket(id), id, path, user, after, limit).await
    }

    async fn delete(&self, namespace: &str, id: &str) -> Result<()> {
        Self::check_id(id)?;
        let runtime = self.runtime_of(id);
        if OciKind::of(&runtime) == OciKind::Gvisor {
            // gVisor's kernel first, alone: runsc's delete of a running sandbox asks that kernel
            // to stop the container and waits 5 s for it; of a sandbox whose kernel is gone it
            // only stops the gofer and removes its state. The cgroup's kill below then finds
            // nothing, or what runsc left.
            kill_init(&self.bundle(id)).await;
            // runsc waits for the gofer and the kernel to be gone: the server, their subreaper,
            // reaps them meanwhile.
            let args = ["delete", "--force", id];
            let delete = self.run_oci(&runtime, &args, "delete the sandbox");
            tokio::pin!(delete);
            let out = loop {
                tokio::select! {
                    out = &mut delete => break out?,
                    () = tokio::time::sleep(Duration::from_millis(5)) => {
                        crate::watch::reap_orphans();
                    }
                }
            };
            if !out.status.success() {
                tracing::debug!(sandbox = id, error = %String::from_utf8_lossy(&out.stderr).trim(), "runsc delete failed");
            }
        }
        // Every process at once, even a fork bomb's, then the init: its death ends the pid
        // namespace, where the OCI runtime's own forced delete would poll in 100 ms steps.
        let cgroups = self.cgroups.clone();
        let (ns, sbx) = (namespace.to_owned(), id.to_owned());
        tokio::task::spawn_blocking(move || cgroups.kill_sandbox(&ns, &sbx))
            .await
            .map_err(|e| RuntimeError::Protocol(e.to_string()))?;
        kill_init(&self.bundle(id)).await;
        self.inits.forget(id);
        self.cpu_seen.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        let out = self.run_oci(&runtime, &["delete", "--force", id], "delete the sandbox").await?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.contains("does not exist") && !stderr.contains("not exist") {
                tracing::warn!(sandbox = id, error = %stderr.trim(), "OCI runtime delete failed; cleaning up by hand");
            }
            // Whatever the runtime left: its state dir for this id.
            let _ = fs::remove_dir_all(self.oci_root().join(id));
        }
        // Its root, with its writable layer (nothing runs in it any more).
        crate::rootfs::unmount_root(&self.image_root(id))?;
        let cgroups = self.cgroups.clone();
        let (ns, sbx) = (namespace.to_owned(), id.to_owned());
        tokio::task::spawn_blocking(move || cgroups.remove_sandbox(&ns, &sbx))
            .await
            .map_err(|e| RuntimeError::Protocol(e.to_string()))??;
        // Its network once nothing runs in it; a sandbox id of another shape never had one.
        self.relays.stop(id);
        if let Some(egress) = &self.egress {
            egress.stop(id);
        }
        if let Some(net) = &self.network {
            if crate::net::Names::of(&net.config().net_prefix, id).is_some() {
                net.teardown(id).await?;
            }
        }
        let own = self.sandbox_view(id);
        // A warm pool's claim points hold the claimant's filesystem: detached, and their
        // directories removed only once empty, before anything removes a tree.
        crate::rootfs::unmount_under(&own);
        for point in [CLAIM_WORKSPACE, CLAIM_AGENT, AGENT_VIEW] {
            match fs::remove_dir(own.join(point)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(RuntimeError::io(format!("remove the claim point {point} of {id}"))(e)),
            }
        }
        match fs::remove_dir_all(&own) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RuntimeError::io(format!("remove {}", own.display()))(e)),
        }
        let bundle = self.bundle(id);
        // What a server killed mid-create left mounted in the bundle (an image root's layers).
        crate::rootfs::unmount_under(&bundle);
        match fs::remove_dir_all(&bundle) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io(format!("remove {}", bundle.display()))(e)),
        }
    }

    async fn list(&self) -> Result<Vec<HostSandbox>> {
        let mut ids: Vec<String> = fs::read_dir(self.config.state_dir.join("sandboxes"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for e in fs::read_dir(self.oci_root()).into_iter().flatten().flatten() {
            ids.push(e.file_name().to_string_lossy().into_owned());
        }
        let cgroup_ns: std::collections::HashMap<String, String> =
            self.cgroups.sandboxes().into_iter().map(|(ns, id)| (id, ns)).collect();
        ids.extend(cgroup_ns.keys().cloned());
        // A network left by a sandbox whose bundle is gone (a crash between the two) is this
        // server's by its name prefix.
        let nets: std::collections::HashSet<String> =
            self.network.as_ref().map(|n| n.on_host()).unwrap_or_default().into_iter().collect();
        ids.extend(nets.iter().cloned());
        ids.sort();
        ids.dedup();
        let mut out = Vec::new();
        for id in ids.into_iter().filter(|i| is_sandbox_id(i)) {
            let runtime = self.runtime_of(&id);
            let running = match self.run_oci(&runtime, &["state", &id], "read the sandbox state").await {
                Ok(o) if o.status.success() => {
                    serde_json::from_slice::<serde_json::Value>(&o.stdout)
                        .ok()
                        .and_then(|v| v["status"].as_str().map(str::to_owned))
                        == Some("running".to_owned())
                }
                _ => false,
            };
            let namespace = cgroup_ns.get(&id).cloned();
            let owner = fs::read_to_string(self.bundle(&id).join(OWNER_FILE))
                .ok()
                .map(|s| s.trim().to_owned())
                .or_else(|| nets.contains(&id).then(|| self.config.owner.clone()));
            out.push(HostSandbox { id, namespace, running, owner });
        }
        Ok(out)
    }

    async fn namespaces(&self) -> Result<Vec<String>> {
        Ok(self.cgroups.namespaces())
    }

    async fn serve_api(&self, addr: std::net::SocketAddr) {
        self.relays.set_api(addr);
        // The sandboxes adopted at start had their relays and egress gateways in the server
        // that started them (their egress counters start again from zero).
        let Some(net) = &self.network else { return };
        let namespaces: std::collections::HashMap<String, Option<String>> = match self.list().await {
            Ok(list) => list.into_iter().map(|s| (s.id, s.namespace)).collect(),
            Err(_) => Default::default(),
        };
        for id in net.on_host() {
            match net.gateway_of(&id).await {
                Ok(Some(gateway)) => {
                    if let Err(e) = self.relays.start(&id, gateway) {
                        tracing::warn!(sandbox = %id, error = %e, "the API relay of an adopted sandbox did not start");
                    }
                    if let (Some(egress), Some(Some(namespace))) = (&self.egress, namespaces.get(&id)) {
                        if let Err(e) = egress.start(namespace, &id, gateway) {
                            tracing::warn!(sandbox = %id, error = %e, "the egress gateway of an adopted sandbox did not start");
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(sandbox = %id, error = %e, "the gateway of an adopted sandbox is unknown"),
            }
        }
    }

    async fn shutdown(&self) {
        if let Some(net) = &self.network {
            net.shutdown().await;
        }
    }

    async fn wait_init(&self, namespace: &str, id: &str) -> Result<String> {
        Self::check_id(id)?;
        let rx = match self.inits.receiver(id) {
            Some(rx) => rx,
            None if self.watch_init(namespace, id, false) => self
                .inits
                .receiver(id)
                .ok_or_else(|| RuntimeError::Busy(format!("sandbox {id}: deleted while its watch began")))?,
            None => {
                let pid = fs::read_to_string(self.bundle(id).join("pid")).unwrap_or_default();
                return Err(RuntimeError::NotRunning(format!(
                    "{id} (its pid file names {:?}, which is not a running supervisor)",
                    pid.trim()
                )));
            }
        };
        wait_reason(rx)
            .await
            .ok_or_else(|| RuntimeError::Busy(format!("sandbox {id}: its watch ended without a reason")))
    }

    async fn ping(&self, id: &str, timeout: Duration) -> Result<()> {
        Self::check_id(id)?;
        let answer = client::ping(&self.socket(id), id, timeout).await;
        let mut seen = self.cpu_seen.lock().unwrap_or_else(|e| e.into_inner());
        let e = match answer {
            Ok(()) => {
                seen.remove(id);
                return Ok(());
            }
            // The server could not even ask (out of descriptors or memory): that says nothing
            // of the supervisor, so it is no miss.
            Err(RuntimeError::Io { what, source }) => {
                tracing::warn!(sandbox = id, error = %source, "{what}: the server is short of a resource; no ping was sent");
                return Ok(());
            }
            Err(e) => e,
        };
        // No answer in time. A supervisor in the sandbox's own CPU quota answers late, not
        // never, when its commands use the whole quota: what counts as a miss is a supervisor
        // stopped, or one that made no progress since the last look and wants none.
        let Some(pid) = init_pid(&self.bundle(id)) else {
            seen.remove(id);
            return Err(e);
        };
        let (liveness, ticks) = crate::watch::liveness(pid, seen.get(id).copied());
        seen.insert(id.to_owned(), ticks);
        match liveness {
            crate::watch::Liveness::Runnable | crate::watch::Liveness::Progressed => {
                tracing::debug!(sandbox = id, ?liveness, "a supervisor answers late but is not hung");
                Ok(())
            }
            crate::watch::Liveness::Stopped | crate::watch::Liveness::Stuck => Err(e),
        }
    }

    async fn stats(&self, namespace: &str, id: &str) -> Result<SandboxStats> {
        Self::check_id(id)?;
        let mut stats = self.cgroups.stats(namespace, id)?;
        if let Some(egress) = &self.egress {
            stats.egress = egress.stats(id);
        }
        Ok(stats)
    }

    async fn freeze(&self, namespace: &str, id: &str, frozen: bool) -> Result<()> {
        Self::check_id(id)?;
        let cgroups = self.cgroups.clone();
        let (ns, sbx) = (namespace.to_owned(), id.to_owned());
        tokio::task::spawn_blocking(move || cgroups.freeze_sandbox(&ns, &sbx, frozen))
            .await
            .map_err(|e| RuntimeError::Protocol(e.to_string()))?
    }

    fn upper_dir(&self, id: &str) -> Option<PathBuf> {
        let dir = crate::rootfs::upper_of(&self.image_root(id)).join("u");
        (is_sandbox_id(id) && dir.is_dir()).then_some(dir)
    }

    fn set_egress_decider(&self, decider: std::sync::Arc<dyn crate::egress::EgressDecider>) {
        if let Some(egress) = &self.egress {
            egress.set_decider(decider);
        }
    }

    async fn spawn_process(&self, sandbox: &str, spec: ProcessSpec) -> Result<ProcessInfo> {
        Self::check_id(sandbox)?;
        client::spawn_process(&self.socket(sandbox), sandbox, spec).await
    }

    async fn processes(&self, sandbox: &str) -> Result<Vec<ProcessInfo>> {
        Self::check_id(sandbox)?;
        client::processes(&self.socket(sandbox), sandbox).await
    }

    async fn process(&self, sandbox: &str, id: &str) -> Result<ProcessInfo> {
        Self::check_id(sandbox)?;
        client::process(&self.socket(sandbox), sandbox, id).await
    }

    async fn process_output(&self, sandbox: &str, id: &str, after: u64) -> Result<ProcessOutput> {
        Self::check_id(sandbox)?;
        client::process_output(&self.socket(sandbox), sandbox, id, after).await
    }

    async fn process_stdin(
        &self,
        sandbox: &str,
        id: &str,
        data: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
        eof: bool,
    ) -> Result<u64> {
        Self::check_id(sandbox)?;
        client::process_stdin(&self.socket(sandbox), sandbox, id, data, eof).await
    }

    async fn signal_process(&self, sandbox: &str, id: &str, signal: i32) -> Result<()> {
        Self::check_id(sandbox)?;
        client::signal_process(&self.socket(sandbox), sandbox, id, signal).await
    }

    async fn resize_process(&self, sandbox: &str, id: &str, size: TtySize) -> Result<()> {
        Self::check_id(sandbox)?;
        client::resize_process(&self.socket(sandbox), sandbox, id, size).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linker_cache_names_no_directory_under_usr_local() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("conf.d")).unwrap();
        fs::write(d.join("ld.so.conf"), "include conf.d/*.conf\n/opt/lib # a comment\n").unwrap();
        fs::write(d.join("conf.d/libc.conf"), "# libc\n/usr/local/lib\n").unwrap();
        fs::write(d.join("conf.d/x86_64.conf"), "/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n").unwrap();
        fs::write(d.join("conf.d/loop.conf"), "include ../ld.so.conf\n/usr/lib/extra, /usr/local\n").unwrap();
        fs::write(d.join("conf.d/ignored.txt"), "/usr/lib/ignored\n").unwrap();
        let mut dirs = Vec::new();
        ld_conf_dirs(&d.join("ld.so.conf"), 4, &mut dirs);
        // An include loop ends at the depth bound; every directory is listed once.
        dirs.sort();
        assert_eq!(dirs, ["/lib/x86_64-linux-gnu", "/opt/lib", "/usr/lib/extra"]);
    }

    #[test]
    fn only_gvisors_sandbox_process_of_that_sandbox_counts_as_its_init() {
        let cmdline = |args: &[&str]| args.iter().flat_map(|a| a.bytes().chain([0])).collect::<Vec<u8>>();
        let sentry =
            cmdline(&["runsc-sandbox", "--root=/run/b/runc", "boot", "--bundle=/run/b/sandboxes/sbx_1", "sbx_1"]);
        assert!(is_gvisor_sandbox_cmdline(&sentry, "sbx_1"));
        assert!(!is_gvisor_sandbox_cmdline(&sentry, "sbx_2"), "another sandbox's kernel");
        let gofer = cmdline(&["runsc-gofer", "--root=/run/b/runc", "gofer", "--bundle", "/b", "sbx_1"]);
        assert!(!is_gvisor_sandbox_cmdline(&gofer, "sbx_1"), "the gofer is not the kernel");
        assert!(!is_gvisor_sandbox_cmdline(&cmdline(&["sleep", "boot", "sbx_1"]), "sbx_1"));
    }

    #[test]
    fn sandbox_ids_are_checked_before_they_touch_a_path() {
        assert!(super::is_sandbox_id("sbx_0123abcd"));
        for bad in ["sbx_", "sbx_../../etc", "key_0123", "sbx_a/b", ""] {
            assert!(!super::is_sandbox_id(bad), "{bad}");
        }
    }
}
