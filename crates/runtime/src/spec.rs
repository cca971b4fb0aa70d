//! The OCI runtime spec of a sandbox: the isolation model of PRODUCT.md written down for the
//! OCI runtime. Every clause is here: a read-only root of the host's system directories and a
//! generated `/etc`, a size-limited `/tmp`, new pid/mount/uts/ipc/net/cgroup/user namespaces,
//! ids mapped onto the namespace's own host range, minimal capabilities, `no_new_privs`, the
//! seccomp profile, masked and read-only `/proc` paths, an allow-listed `/sys`, and cgroup
//! limits.
//!
//! The rule for what a sandbox sees of the host kernel: nothing host-wide that names or
//! measures anything outside the sandbox. So `/sys` is not the kernel's sysfs (whose block
//! devices name every tenant's filesystem image and count its I/O) but a read-only directory
//! with only [`SYS_BINDS`] and the sandbox's own cgroups; `/proc` hides [`MASKED`]; the host's
//! `/usr/local` (the operator's own software and configuration) is an empty directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use oci_spec::OciSpecError;

use crate::SandboxSpec;

/// Where the supervisor binary appears inside the sandbox.
pub const SUPERVISOR_PATH: &str = "/.bulkhead/supervisor";
/// Where the host's dynamic loader appears in a sandbox started from an image: the supervisor
/// is a program of the host, linked against the host's C library, which an image may not have
/// (or have in another version); so it runs through the host's loader with the host's
/// libraries ([`SUPERVISOR_LIB_PATH`]), which nothing else in the sandbox uses.
pub const SUPERVISOR_LOADER_PATH: &str = "/.bulkhead/ld.so";
/// Where the supervisor's libraries appear in a sandbox started from an image.
pub const SUPERVISOR_LIB_PATH: &str = "/.bulkhead/lib";
/// The directory of the supervisor and its loader in a sandbox started from an image.
pub const SUPERVISOR_DIR: &str = "/.bulkhead";

/// Whether a process's command line (`/proc/<pid>/cmdline`) is a sandbox supervisor's: the
/// supervisor itself, or the loader running it (see [`SUPERVISOR_LOADER_PATH`]).
pub fn is_supervisor_cmdline(cmdline: &[u8]) -> bool {
    let mut args = cmdline.split(|b| *b == 0);
    match args.next() {
        Some(a) if a == SUPERVISOR_PATH.as_bytes() => true,
        Some(a) if a == SUPERVISOR_LOADER_PATH.as_bytes() => {
            args.next() == Some(b"--library-path".as_slice())
                && args.next() == Some(SUPERVISOR_LIB_PATH.as_bytes())
                && args.next() == Some(SUPERVISOR_PATH.as_bytes())
        }
        _ => false,
    }
}

/// Where the supervisor binds its listening socket under gVisor ([`OciKind::Gvisor`]): in the
/// sandbox's control directory, bound read-write from the bundle's `control/` (owned by the
/// sandbox's root, 0700), where the host connects to it.
pub const CONTROL_PATH: &str = "/.bulkhead/control";
/// The supervisor's socket under gVisor, inside the sandbox.
pub const CONTROL_SOCKET_PATH: &str = "/.bulkhead/control/supervisor.sock";

/// The family of OCI runtime a runtime class runs: the bundle and the command line differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciKind {
    /// runc or crun: Linux namespaces around the host's kernel. The supervisor inherits its
    /// listening socket and its delegated cgroup directory as descriptors.
    Native,
    /// gVisor's `runsc`: the sandbox's system calls are served by gVisor's own kernel (the
    /// Sentry) in a user-space process. No descriptor reaches the sandbox: the supervisor binds
    /// its socket at [`CONTROL_SOCKET_PATH`]; `/proc` and `/sys` are gVisor's own (lxcfs and
    /// the host's sysfs are not bound), and the sandbox's cgroups are the host's, around the
    /// Sentry as a whole.
    Gvisor,
}

impl OciKind {
    /// The kind of the OCI runtime binary `runtime` (a path or a name): `runsc` is gVisor,
    /// anything else runs as runc does.
    pub fn of(runtime: &str) -> OciKind {
        if Path::new(runtime).file_name().is_some_and(|n| n == "runsc") {
            OciKind::Gvisor
        } else {
            OciKind::Native
        }
    }
}

/// The host tasks of a gVisor sandbox before any process of its own: gVisor's kernel (the
/// Sentry, a Go program) and its gofer, about 45 on a 2-CPU host.
pub const GVISOR_BASE_TASKS: u64 = 64;
/// The host tasks each process of a gVisor sandbox costs: gVisor's ptrace platform runs every
/// address space in a stub process of its own with a pool of threads (about 11 on a 2-CPU
/// host), and each thread of the sandbox in one of them.
pub const GVISOR_TASKS_PER_PROCESS: u64 = 16;

impl OciKind {
    /// The host's pids limit for a sandbox of this kind whose processes are limited to `pids`:
    /// `pids` for runc, where every process of the sandbox is a host task; under gVisor, where
    /// the host's pids controller counts gVisor's own tasks, [`GVISOR_BASE_TASKS`] and
    /// [`GVISOR_TASKS_PER_PROCESS`] per process.
    pub fn host_tasks(self, pids: u64) -> u64 {
        match self {
            OciKind::Native => pids,
            OciKind::Gvisor => {
                GVISOR_BASE_TASKS.saturating_add(pids.saturating_mul(GVISOR_TASKS_PER_PROCESS)).min(4_194_304)
            }
        }
    }
}

/// The file descriptor on which the supervisor inherits its listening socket.
pub const SUPERVISOR_FD: i32 = 3;
/// The descriptor at which the supervisor inherits its delegated cgroup directory (the
/// sandbox's own cgroup in the grouping hierarchy), where it makes one cgroup per command.
pub const CGROUP_FD: i32 = 4;
/// The search path every command gets unless it sets its own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The CFS period used for CPU quotas.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Host directories that make up the read-only base image. On a merged-`/usr` host most of
/// them are symlinks into `/usr`, and are reproduced as symlinks.
pub const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Host `/etc` subdirectories shared read-only with every sandbox: Debian's alternatives
/// (symlinks such as `awk -> mawk`) and the public CA certificates. Nothing secret.
pub const SHARED_ETC: &[&str] = &["alternatives", "ssl/certs"];

/// Where a sandbox that trusts a namespace CA finds its CA bundle when the host shares
/// `/etc/ssl/certs` and has Debian's `ca-certificates.crt` there: the path OpenSSL, curl, git,
/// Python and Node look at by default, so programs that ignore [`CA_BUNDLE_VARS`] trust it too.
pub const CA_BUNDLE_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where it finds it on a host without that file: in the sandbox's own `/run`.
pub const CA_BUNDLE_RUN_PATH: &str = "/run/ca-certificates.crt";
/// The variables that point TLS clients at the bundle (OpenSSL, Python `requests`, Node, curl,
/// git). A sandbox's own variable of the same name wins.
pub const CA_BUNDLE_VARS: &[&str] =
    &["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"];

/// `/proc` paths masked with an empty file or directory: host information no sandbox needs.
/// Besides the OCI runtimes' usual list: what names or measures other tenants' storage (block
/// devices and their I/O, swap, ext4's per-device state, file locks with device numbers), the
/// kernel's per-user key counts (which name other namespaces' host ids), the host's cgroup
/// count (the number of sandboxes on the host), pressure stall figures, and per-device
/// interrupt counts.
pub const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/key-users",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/diskstats",
    "/proc/partitions",
    "/proc/swaps",
    "/proc/fs",
    "/proc/locks",
    "/proc/cgroups",
    "/proc/pressure",
    "/proc/interrupts",
    "/proc/softirqs",
    "/proc/vmallocinfo",
    "/proc/slabinfo",
];

/// `/proc` files that lxcfs (a FUSE filesystem answering each reader with its own cgroup's
/// figures) provides and that a sandbox sees from it when the host runs it: `free`, `top`,
/// Python's and Node's memory and CPU figures then follow the sandbox's own limits and use, not
/// the host's. Paths relative to lxcfs's mount point and to `/`.
pub const LXCFS_PROC: &[&str] = &["proc/meminfo", "proc/cpuinfo", "proc/stat", "proc/uptime", "proc/loadavg"];

/// `/proc` paths mounted read-only.
pub const READ_ONLY: &[&str] = &["/proc/bus", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The parts of the host's sysfs a sandbox sees (host path, path inside), read-only: the CPUs
/// (`nproc`, `os.cpu_count()` and thread pools read `/sys/devices/system/cpu/online`). Its own
/// cgroups are mounted at `/sys/fs/cgroup`. Nothing else of sysfs is there.
pub const SYS_BINDS: &[(&str, &str)] = &[("/sys/devices/system/cpu", "/sys/devices/system/cpu")];

/// Where the sandbox's own cgroups appear.
pub const CGROUP_PATH: &str = "/sys/fs/cgroup";

/// The host's directory hidden under an empty read-only tmpfs: the operator's own software
/// and configuration, which the base image's bind of `/usr` would otherwise show.
pub const HIDDEN_USR_LOCAL: &str = "/usr/local";

/// Capabilities of the sandbox's root, inside its user namespace only: what a package manager
/// or a build needs to own and chmod files, and nothing that reaches the kernel or the network
/// stack (no `CAP_SYS_ADMIN`, `CAP_NET_ADMIN`, `CAP_NET_RAW`, `CAP_SYS_PTRACE`, `CAP_MKNOD`).
pub const CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::AuditWrite,
];

/// A directory of the base image: a read-only bind of a host directory, or a symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseEntry {
    Bind(String),
    Symlink { name: String, target: PathBuf },
}

/// Reads which system directories the host has and how (`/bin -> usr/bin` on merged-`/usr`).
pub fn base_entries(host_root: &Path) -> Vec<BaseEntry> {
    let mut out = Vec::new();
    for name in SYSTEM_DIRS {
        let path = host_root.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(&path) {
                    out.push(BaseEntry::Symlink { name: (*name).to_owned(), target });
                }
            }
            Ok(m) if m.is_dir() => out.push(BaseEntry::Bind((*name).to_owned())),
            _ => {}
        }
    }
    out
}

fn bind(source: &Path, destination: &str, read_only: bool) -> Result<Mount, OciSpecError> {
    let mut options = vec!["rbind", "nosuid", "nodev"];
    if read_only {
        options.push("ro");
    }
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options.into_iter().map(String::from).collect::<Vec<_>>())
        .build()
}

fn fs_mount(typ: &str, destination: &str, options: &[&str]) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(typ)
        .options(options.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .build()
}

/// Host paths the spec refers to.
#[derive(Debug, Clone)]
pub struct SpecPaths {
    /// The root filesystem: mount points only, shared by every sandbox of the server.
    pub rootfs: PathBuf,
    /// The generated `/etc`, shared by every sandbox of the server.
    pub etc: PathBuf,
    /// The sandbox's own `/etc/hosts`, which names its hostname.
    pub hosts: PathBuf,
    /// The supervisor binary on the host.
    pub supervisor: PathBuf,
    /// The directory with the supervisor, the host's loader (`ld.so`) and the libraries it
    /// needs (`lib/`), mounted at [`SUPERVISOR_DIR`] in sandboxes started from an image.
    pub supervisor_dir: PathBuf,
    /// Whether the supervisor needs the loader (it is dynamically linked).
    pub supervisor_dynamic: bool,
    /// Where lxcfs is mounted on the host, when it runs (see [`LXCFS_PROC`]).
    pub lxcfs: Option<PathBuf>,
    /// `cgroupsPath`, such as `/bulkhead/acme/sbx_…`.
    pub cgroups_path: String,
    /// Which of [`SHARED_ETC`] the host has (each has a mount point in `etc`).
    pub shared_etc: Vec<String>,
    /// Host directories mounted read-only at `/run/<name>`.
    pub run_dirs: Vec<(PathBuf, String)>,
    /// The network namespace the sandbox joins (`--network isolated`: made by the host, see
    /// [`crate::net`]); none for a new empty one of its own (loopback only).
    pub netns: Option<PathBuf>,
    /// The sandbox's CA bundle (the host's bundle and its namespace's CA, see
    /// [`ca_bundle`]) on the host, and where it appears inside ([`CA_BUNDLE_PATH`] or
    /// [`CA_BUNDLE_RUN_PATH`]); the sandbox's environment then names it ([`CA_BUNDLE_VARS`]).
    pub ca_bundle: Option<(PathBuf, String)>,
    /// The sandbox's own `/etc/resolv.conf` (naming its gateway's resolver, see
    /// [`resolv_conf`]); none for the shared empty one (loopback only).
    pub resolv_conf: Option<PathBuf>,
    /// A warm pool's sandbox (see `SandboxSpec::pooled`): the host's claim points (see
    /// `rootfs::make_claim_point`) bound read-only as slaves at `/workspace` and `/agent`, where
    /// a claim's mounts propagate.
    pub claim_points: Option<ClaimPoints>,
    /// The read-only view of the sandbox's agent code (see `rootfs::mount_readonly_view`),
    /// bound at `/agent`.
    pub agent_code: Option<PathBuf>,
    /// The OCI runtime the spec is for.
    pub kind: OciKind,
    /// The bundle's control directory, bound read-write at [`CONTROL_PATH`] under gVisor,
    /// where the supervisor binds its socket.
    pub control: PathBuf,
}

/// The host directories a warm pool's sandbox receives its claimant's mounts through.
#[derive(Debug, Clone)]
pub struct ClaimPoints {
    pub workspace: PathBuf,
    pub agent: PathBuf,
}

/// The OCI spec of `sandbox`; `base` from [`base_entries`].
pub fn build(sandbox: &SandboxSpec, base: &[BaseEntry], paths: &SpecPaths) -> Result<Spec, OciSpecError> {
    let tmp_size = format!("size={}", sandbox.tmp_bytes);
    let mut mounts = vec![
        fs_mount("proc", "/proc", &["nosuid", "noexec", "nodev"])?,
        fs_mount("tmpfs", "/dev", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        fs_mount("devpts", "/dev/pts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"])?,
        fs_mount("tmpfs", "/dev/shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        fs_mount("mqueue", "/dev/mqueue", &["nosuid", "noexec", "nodev"])?,
        fs_mount("tmpfs", "/tmp", &["nosuid", "nodev", "mode=1777", &tmp_size])?,
        fs_mount("tmpfs", "/run", &["nosuid", "nodev", "noexec", "mode=755", "size=16m"])?,
    ];
    let image_root = matches!(sandbox.root, crate::RootSpec::Image(_));
    if !image_root {
        mounts.push(bind(&paths.etc, "/etc", true)?);
    }
    mounts.push(bind(&paths.hosts, "/etc/hosts", true)?);
    if let Some(resolv) = &paths.resolv_conf {
        mounts.push(bind(resolv, "/etc/resolv.conf", true)?);
    }
    // An image brings its own `/etc` and system directories; the host's base is only for a
    // sandbox without one.
    if !image_root {
        for sub in &paths.shared_etc {
            mounts.push(bind(&Path::new("/etc").join(sub), &format!("/etc/{sub}"), true)?);
        }
        for entry in base {
            if let BaseEntry::Bind(name) = entry {
                mounts.push(bind(&Path::new("/").join(name), &format!("/{name}"), true)?);
            }
        }
        if base.iter().any(|e| matches!(e, BaseEntry::Bind(name) if name == "usr")) {
            mounts.push(fs_mount(
                "tmpfs",
                HIDDEN_USR_LOCAL,
                &["nosuid", "nodev", "noexec", "ro", "mode=755", "size=4k"],
            )?);
        }
    }
    let gvisor = paths.kind == OciKind::Gvisor;
    if gvisor {
        // gVisor's own `/proc` already answers with the sandbox's memory and CPUs, and its own
        // sysfs names nothing of the host; the host's cgroups are not the sandbox's to see.
        mounts.push(fs_mount("sysfs", "/sys", &["nosuid", "noexec", "nodev", "ro"])?);
    } else {
        if let Some(lxcfs) = &paths.lxcfs {
            for file in LXCFS_PROC {
                mounts.push(bind(&lxcfs.join(file), &format!("/{file}"), true)?);
            }
        }
        for (host, inside) in SYS_BINDS {
            let mut m = bind(Path::new(host), inside, true)?;
            if let Some(options) = m.options().clone() {
                m.set_options(Some(options.into_iter().chain(["noexec".to_owned()]).collect()));
            }
            mounts.push(m);
        }
        mounts.push(fs_mount("cgroup", CGROUP_PATH, &["nosuid", "noexec", "nodev", "relatime", "ro"])?);
    }
    if image_root {
        mounts.push(bind(&paths.supervisor_dir, SUPERVISOR_DIR, true)?);
    } else {
        mounts.push(bind(&paths.supervisor, SUPERVISOR_PATH, true)?);
    }
    if gvisor {
        mounts.push(bind(&paths.control, CONTROL_PATH, false)?);
    }
    if let Some(ws) = &sandbox.workspace {
        mounts.push(bind(&ws.source, crate::WORKSPACE_PATH, ws.read_only)?);
    }
    if let Some(code) = &paths.agent_code {
        mounts.push(bind(code, crate::AGENT_PATH, true)?);
    }
    if let Some(points) = &paths.claim_points {
        for (point, inside) in [(&points.workspace, crate::WORKSPACE_PATH), (&points.agent, crate::AGENT_PATH)] {
            let mut m = bind(point, inside, true)?;
            if let Some(options) = m.options().clone() {
                m.set_options(Some(options.into_iter().chain(["rslave".to_owned()]).collect()));
            }
            mounts.push(m);
        }
    }
    for (source, name) in &paths.run_dirs {
        mounts.push(bind(source, &format!("/run/{name}"), true)?);
    }
    let mut env = Vec::new();
    if let Some((source, inside)) = &paths.ca_bundle {
        mounts.push(bind(source, inside, true)?);
        env.extend(CA_BUNDLE_VARS.iter().map(|v| ((*v).to_owned(), inside.clone())));
    }
    env.extend(sandbox.env.iter().cloned());

    let mut caps: HashSet<Capability> = CAPABILITIES.iter().copied().collect();
    if gvisor {
        // In gVisor's kernel only, for the supervisor's first step: it mounts `/proc` afresh
        // with a small cache (see `bulkhead_supervisor::serve_path`), then drops this from
        // every set, its bounding set too, before it accepts a request. No command has it.
        caps.insert(Capability::SysAdmin);
    }
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
        .args(supervisor_args(image_root && paths.supervisor_dynamic, paths.kind))
        .env(environment(&env))
        .cwd("/")
        .no_new_privileges(true)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()?,
        )
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(4096u64)
            .hard(4096u64)
            .build()?])
        .build()?;

    let memory = i64::try_from(sandbox.memory_bytes).unwrap_or(i64::MAX);
    let quota = i64::try_from(sandbox.cpu_millis * CPU_PERIOD_US / 1000).unwrap_or(i64::MAX);
    let resources = LinuxResourcesBuilder::default()
        // Memory plus swap equal to memory: no swap, so the limit is the limit.
        .memory(LinuxMemoryBuilder::default().limit(memory).swap(memory).build()?)
        .cpu({
            let cpu = LinuxCpuBuilder::default().quota(quota).period(CPU_PERIOD_US);
            // A warm pool's sandbox starts in the background, at a tenth of the weight until claimed.
            let cpu = if sandbox.pooled { cpu.shares(crate::cgroup::POOL_CPU_SHARES) } else { cpu };
            cpu.build()?
        })
        .pids(
            LinuxPidsBuilder::default()
                .limit(i64::try_from(paths.kind.host_tasks(sandbox.pids)).unwrap_or(i64::MAX))
                .build()?,
        )
        .build()?;
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::User,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|t| match (&paths.netns, t) {
        (Some(path), LinuxNamespaceType::Network) => LinuxNamespaceBuilder::default().typ(t).path(path).build(),
        _ => LinuxNamespaceBuilder::default().typ(t).build(),
    })
    .collect::<Result<Vec<_>, _>>()?;
    let ids = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(sandbox.ids.host_start)
        .size(sandbox.ids.size)
        .build()?;
    let linux = LinuxBuilder::default()
        .uid_mappings(vec![ids])
        .gid_mappings(vec![ids])
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&paths.cgroups_path))
        .resources(resources)
        .masked_paths(MASKED.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .readonly_paths(READ_ONLY.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .seccomp(crate::seccomp::profile()?)
        .build()?;
    SpecBuilder::default()
        .version("1.0.2")
        // An image's root is its overlay, writable; the host's base is read-only.
        .root(RootBuilder::default().path(&paths.rootfs).readonly(!image_root).build()?)
        .hostname(sandbox.id.clone())
        .mounts(mounts)
        .process(process)
        .linux(linux)
        .build()
}

/// The supervisor's command line; through the host's loader (`via_loader`) in a sandbox
/// started from an image. Under gVisor it binds its socket itself (no descriptor is passed).
fn supervisor_args(via_loader: bool, kind: OciKind) -> Vec<String> {
    let mut args = Vec::new();
    if via_loader {
        args.extend([SUPERVISOR_LOADER_PATH, "--library-path", SUPERVISOR_LIB_PATH].map(String::from));
    }
    args.push(SUPERVISOR_PATH.to_owned());
    match kind {
        OciKind::Native => args.extend([
            "--listen-fd".to_owned(),
            SUPERVISOR_FD.to_string(),
            "--cgroup-fd".to_owned(),
            CGROUP_FD.to_string(),
        ]),
        OciKind::Gvisor => args.extend(["--listen-path".to_owned(), CONTROL_SOCKET_PATH.to_owned()]),
    }
    args
}

/// The supervisor's environment, which every command inherits: `PATH`, `HOME`, and the
/// sandbox's own variables (which may override them).
pub fn environment(extra: &[(String, String)]) -> Vec<String> {
    let mut vars: Vec<(String, String)> =
        vec![("PATH".to_owned(), DEFAULT_PATH.to_owned()), ("HOME".to_owned(), "/tmp".to_owned())];
    for (k, v) in extra {
        vars.retain(|(name, _)| name != k);
        vars.push((k.clone(), v.clone()));
    }
    vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The generated `/etc`, shared by all sandboxes: enough for programs to resolve users and
/// `localhost`, and nothing of the host's (no `shadow`, no keys, no configuration). Each sandbox
/// gets its own `hosts` ([`hosts_file`]) on top.
pub fn etc_files() -> Vec<(&'static str, String)> {
    vec![
        (
            "passwd",
            "root:x:0:0:root:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n".to_owned(),
        ),
        ("group", "root:x:0:\nnogroup:x:65534:\n".to_owned()),
        ("hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n".to_owned()),
        ("nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n".to_owned()),
        ("resolv.conf", String::new()),
    ]
}

/// A CA bundle: the host's bundle (PEM, possibly empty) followed by `extra` (a namespace CA's
/// certificate, PEM), each ending with a newline.
pub fn ca_bundle(host_bundle: &str, extra: &str) -> String {
    let mut out = String::with_capacity(host_bundle.len() + extra.len() + 2);
    for part in [host_bundle, extra] {
        if !part.is_empty() {
            out.push_str(part);
            if !part.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out
}

/// A networked sandbox's `/etc/resolv.conf`: its gateway's resolver only (the gateway answers
/// whatever server a query names anyway), names taken as given (no search list).
pub fn resolv_conf(gateway: std::net::Ipv4Addr) -> String {
    format!("nameserver {gateway}\noptions ndots:0\n")
}

/// A sandbox's `/etc/hosts`: `localhost` and its own hostname.
pub fn hosts_file(hostname: &str) -> String {
    format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{hostname}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdRange;

    fn sandbox() -> SandboxSpec {
        SandboxSpec {
            id: "sbx_0123".into(),
            namespace: "acme".into(),
            oci_runtime: "runc".into(),
            cpu_millis: 1500,
            memory_bytes: 256 << 20,
            pids: 64,
            tmp_bytes: 64 << 20,
            ids: IdRange { host_start: 1_065_536, size: 65536 },
            env: vec![("HOME".into(), "/work".into()), ("TOKEN".into(), "x".into())],
            workspace: Some(crate::Workspace { source: "/run/b/filesystems/fs_1".into(), read_only: true }),
            agent_code: None,
            run_files: Vec::new(),
            extra_ca_pem: None,
            root: crate::RootSpec::Host,
            pooled: false,
        }
    }

    #[test]
    fn spec_carries_the_isolation_model() {
        let paths = SpecPaths {
            rootfs: "/run/b/base/rootfs".into(),
            etc: "/run/b/etc".into(),
            hosts: "/run/b/sandboxes/sbx_0123/hosts".into(),
            supervisor: "/usr/local/bin/bulkhead-supervisor".into(),
            supervisor_dir: "/sd".into(),
            supervisor_dynamic: false,
            lxcfs: None,
            cgroups_path: "/bulkhead/acme/sbx_0123".into(),
            shared_etc: vec!["alternatives".into()],
            run_dirs: vec![(PathBuf::from("/b/run/bulkhead"), "bulkhead".into())],
            netns: None,
            ca_bundle: None,
            resolv_conf: None,
            claim_points: None,
            agent_code: None,
            kind: OciKind::Native,
            control: PathBuf::from("/b/control"),
        };
        let base =
            vec![BaseEntry::Bind("usr".into()), BaseEntry::Symlink { name: "bin".into(), target: "usr/bin".into() }];
        let spec = build(&sandbox(), &base, &paths).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["hostname"], "sbx_0123");
        assert_eq!(v["process"]["noNewPrivileges"], true);
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN" || c == "CAP_NET_RAW" || c == "CAP_SYS_PTRACE"));
        let ns: Vec<&str> =
            v["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        for t in ["pid", "network", "ipc", "uts", "mount", "user", "cgroup"] {
            assert!(ns.contains(&t), "{t} namespace missing");
        }
        assert_eq!(v["linux"]["uidMappings"][0]["hostID"], 1_065_536);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 150_000);
        // Only a warm pool's sandbox starts at a lower weight.
        assert!(v["linux"]["resources"]["cpu"].get("shares").is_none());
        let pooled = SandboxSpec { pooled: true, workspace: None, ..sandbox() };
        let pooled = serde_json::to_value(build(&pooled, &base, &paths).unwrap()).unwrap();
        assert_eq!(pooled["linux"]["resources"]["cpu"]["shares"], crate::cgroup::POOL_CPU_SHARES);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 64);
        assert_eq!(v["linux"]["cgroupsPath"], "/bulkhead/acme/sbx_0123");
        let env: Vec<&str> = v["process"]["env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
        assert_eq!(env, [&format!("PATH={DEFAULT_PATH}"), "HOME=/work", "TOKEN=x"]);
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let allowed = v["linux"]["seccomp"]["syscalls"][0]["names"].as_array().unwrap();
        assert!(allowed.iter().any(|n| n == "read"));
        for call in ["mount", "bpf", "keyctl", "perf_event_open", "ptrace", "init_module"] {
            assert!(!allowed.iter().any(|n| n == call), "{call} allowed");
        }
        let mounts = v["mounts"].as_array().unwrap();
        let tmp = mounts.iter().find(|m| m["destination"] == "/tmp").unwrap();
        assert!(tmp["options"].as_array().unwrap().iter().any(|o| o == "size=67108864"));
        let ws = mounts.iter().find(|m| m["destination"] == "/workspace").unwrap();
        assert!(ws["options"].as_array().unwrap().iter().any(|o| o == "ro"));
        let etc = mounts.iter().find(|m| m["destination"] == "/etc").unwrap();
        assert_eq!(etc["source"], "/run/b/etc");
        assert!(etc["options"].as_array().unwrap().iter().any(|o| o == "ro"));
        for m in mounts {
            let dest = m["destination"].as_str().unwrap();
            assert!(!["/root", "/home", "/var"].contains(&dest), "{dest} must not be mounted");
            assert_ne!(m["type"], "sysfs", "the kernel's sysfs names every tenant's block devices");
        }
        let local = mounts.iter().find(|m| m["destination"] == "/usr/local").unwrap();
        assert_eq!(local["type"], "tmpfs");
        assert!(local["options"].as_array().unwrap().iter().any(|o| o == "ro"));
        let masked = v["linux"]["maskedPaths"].as_array().unwrap();
        for path in ["/proc/diskstats", "/proc/partitions", "/proc/swaps", "/proc/fs", "/proc/key-users"] {
            assert!(masked.iter().any(|m| m == path), "{path} not masked");
        }
    }

    /// Paths of a sandbox on the host's base with nothing optional, for runc.
    fn minimal_paths() -> SpecPaths {
        SpecPaths {
            rootfs: "/r".into(),
            etc: "/e".into(),
            hosts: "/h".into(),
            supervisor: "/s".into(),
            supervisor_dir: "/sd".into(),
            supervisor_dynamic: false,
            lxcfs: None,
            cgroups_path: "/bulkhead/acme/sbx_0123".into(),
            shared_etc: vec![],
            run_dirs: vec![],
            netns: None,
            ca_bundle: None,
            resolv_conf: None,
            claim_points: None,
            agent_code: None,
            kind: OciKind::Native,
            control: PathBuf::from("/b/control"),
        }
    }

    #[test]
    fn an_isolated_sandbox_joins_the_hosts_network_namespace_for_it() {
        let mut paths = minimal_paths();
        let net = |paths: &SpecPaths| {
            let v = serde_json::to_value(build(&sandbox(), &[], paths).unwrap()).unwrap();
            let ns = v["linux"]["namespaces"].as_array().unwrap().clone();
            assert_eq!(ns.len(), 7);
            ns.into_iter().find(|n| n["type"] == "network").unwrap()
        };
        assert!(net(&paths).get("path").is_none(), "a new empty namespace by default");
        paths.netns = Some("/run/netns/bh12ab-0123".into());
        assert_eq!(net(&paths)["path"], "/run/netns/bh12ab-0123");
        // Its own resolv.conf, naming its gateway, over the shared empty one.
        let resolv = |paths: &SpecPaths| {
            let v = serde_json::to_value(build(&sandbox(), &[], paths).unwrap()).unwrap();
            v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/etc/resolv.conf").cloned()
        };
        assert!(resolv(&paths).is_none());
        paths.resolv_conf = Some("/v/sbx_0123/resolv.conf".into());
        let m = resolv(&paths).unwrap();
        assert_eq!(m["source"], "/v/sbx_0123/resolv.conf");
        assert!(m["options"].as_array().unwrap().contains(&serde_json::json!("ro")));
        assert_eq!(resolv_conf("100.64.0.1".parse().unwrap()), "nameserver 100.64.0.1\noptions ndots:0\n");
    }

    #[test]
    fn a_gvisor_spec_binds_its_control_dir_and_nothing_of_the_hosts_sys_or_proc() {
        assert_eq!(OciKind::of("/usr/bin/runsc"), OciKind::Gvisor);
        assert_eq!(OciKind::of("runsc"), OciKind::Gvisor);
        assert_eq!(OciKind::of("/usr/sbin/runc"), OciKind::Native);
        assert_eq!(OciKind::of("crun"), OciKind::Native);
        let paths = |kind: OciKind| SpecPaths { lxcfs: Some("/var/lib/lxcfs".into()), kind, ..minimal_paths() };
        let spec = |kind: OciKind| serde_json::to_value(build(&sandbox(), &[], &paths(kind)).unwrap()).unwrap();
        let (native, gvisor) = (spec(OciKind::Native), spec(OciKind::Gvisor));
        let args = |v: &serde_json::Value| v["process"]["args"].as_array().unwrap().clone();
        assert_eq!(
            args(&native)[1..],
            [
                serde_json::json!("--listen-fd"),
                serde_json::json!("3"),
                serde_json::json!("--cgroup-fd"),
                serde_json::json!("4")
            ]
        );
        assert_eq!(args(&gvisor)[1..], [serde_json::json!("--listen-path"), serde_json::json!(CONTROL_SOCKET_PATH)]);
        let mount = |v: &serde_json::Value, dest: &str| {
            v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == dest).cloned()
        };
        // The control dir, read-write, under gVisor only.
        let control = mount(&gvisor, CONTROL_PATH).unwrap();
        assert_eq!(control["source"], "/b/control");
        assert!(!control["options"].as_array().unwrap().contains(&serde_json::json!("ro")));
        assert!(mount(&native, CONTROL_PATH).is_none());
        // gVisor's own /sys and /proc: no lxcfs file, no host sysfs or cgroup bind.
        assert_eq!(mount(&gvisor, "/sys").unwrap()["type"], "sysfs");
        for dest in ["/proc/meminfo", "/sys/devices/system/cpu", CGROUP_PATH] {
            assert!(mount(&gvisor, dest).is_none(), "{dest} is bound under gVisor");
            assert!(mount(&native, dest).is_some(), "{dest} is not bound under runc");
        }
        // The supervisor alone starts with CAP_SYS_ADMIN in gVisor's kernel, to mount its
        // `/proc` (it drops it before any command); never under runc.
        let has = |v: &serde_json::Value, set: &str| {
            v["process"]["capabilities"][set].as_array().unwrap().contains(&serde_json::json!("CAP_SYS_ADMIN"))
        };
        for set in ["bounding", "effective", "permitted"] {
            assert!(has(&gvisor, set) && !has(&native, set), "{set}");
        }
        for set in ["inheritable", "ambient"] {
            assert!(!has(&gvisor, set) && !has(&native, set), "{set}");
        }
        // The host counts gVisor's own tasks: the pids limit makes room for them.
        assert_eq!(native["linux"]["resources"]["pids"]["limit"], 64);
        assert_eq!(gvisor["linux"]["resources"]["pids"]["limit"], GVISOR_BASE_TASKS + 64 * GVISOR_TASKS_PER_PROCESS);
        assert_eq!(OciKind::Native.host_tasks(64), 64);
    }

    #[test]
    fn a_sandbox_that_trusts_a_namespace_ca_gets_the_bundle_and_the_variables() {
        let mut paths = SpecPaths {
            shared_etc: vec!["ssl/certs".into()],
            ca_bundle: Some(("/v/sandboxes/sbx_0123/ca-certificates.crt".into(), CA_BUNDLE_PATH.into())),
            ..minimal_paths()
        };
        let mut sandbox = sandbox();
        sandbox.env.push(("GIT_SSL_CAINFO".into(), "/mine.pem".into()));
        let v = serde_json::to_value(build(&sandbox, &[], &paths).unwrap()).unwrap();
        let mounts = v["mounts"].as_array().unwrap();
        let certs = mounts.iter().position(|m| m["destination"] == "/etc/ssl/certs").unwrap();
        let bundle = mounts.iter().position(|m| m["destination"] == CA_BUNDLE_PATH).unwrap();
        assert!(bundle > certs, "the bundle is mounted over the shared directory's file");
        assert_eq!(mounts[bundle]["source"], "/v/sandboxes/sbx_0123/ca-certificates.crt");
        assert!(mounts[bundle]["options"].as_array().unwrap().iter().any(|o| o == "ro"));
        let env: Vec<&str> = v["process"]["env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
        for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE"] {
            assert!(env.contains(&format!("{var}={CA_BUNDLE_PATH}").as_str()), "{var} in {env:?}");
        }
        // The sandbox's own variable wins.
        assert!(env.contains(&"GIT_SSL_CAINFO=/mine.pem"));
        assert!(!env.contains(&format!("GIT_SSL_CAINFO={CA_BUNDLE_PATH}").as_str()));
        // Without a CA: no bundle, no variables.
        paths.ca_bundle = None;
        let v = serde_json::to_value(build(&self::sandbox(), &[], &paths).unwrap()).unwrap();
        assert!(!v["mounts"].as_array().unwrap().iter().any(|m| m["destination"] == CA_BUNDLE_PATH));
        assert!(!v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().starts_with("SSL_CERT_FILE=")));
        assert_eq!(ca_bundle("A\n", "B"), "A\nB\n");
        assert_eq!(ca_bundle("", "B\n"), "B\n");
        assert_eq!(ca_bundle("A", "B\n"), "A\nB\n");
    }

    #[test]
    fn generated_etc_has_no_secrets() {
        let files = etc_files();
        assert!(!files.iter().any(|(n, _)| *n == "shadow" || *n == "gshadow"));
    }
}
