//! One cgroup per namespace, holding one per sandbox, on cgroup v1 and v2 behind one type.
//! The OCI runtime creates and removes the sandbox cgroup (`<prefix>/<namespace>/<sandbox>`)
//! with the sandbox's own limits; this module owns the namespace level, whose limits cap the
//! sum of its sandboxes, and sweeps whatever a crash left behind.
//!
//! Below the sandbox, in one hierarchy used for grouping (v2: the unified one; v1: `freezer`),
//! the sandbox's supervisor makes a cgroup per command: [`Cgroups::delegate`] creates the
//! sandbox's directory there before the OCI runtime starts it, hands the directory and its
//! `cgroup.procs` to the sandbox's root, and opens it for the supervisor. Every kill and
//! removal here walks those nested cgroups, children first. On v1 the freezer is the grouping
//! hierarchy because it has no limits (moving a command there changes no accounting: cpu,
//! memory and pids stay charged at the sandbox level) and it is what stops a forking tree for
//! the kill where v1 has no `cgroup.kill`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::spec::CPU_PERIOD_US;
use bulkhead_core::placement::CpuSet;

use crate::{CpuPlacement, NamespaceLimits, Result, RuntimeError, SandboxStats};

/// How the server's own cgroup ([`Cgroups::enter_control_plane`]) is named in
/// [`Cgroups::existing`]'s callers' terms below the prefix (doctor's levels). On the host it is
/// the top cgroup's sibling, `<prefix>.control-plane` ([`Cgroups::control_plane_name`]).
pub const CONTROL_PLANE: &str = "_control-plane";

/// The control plane's suggested CPU weight, in cgroup v2 units (1 to 10,000; the top cgroup
/// that holds every namespace has the kernel's default, 100): ten times all the tenants
/// together, so that tenants at their CPU quotas cannot make the server that answers every
/// other tenant wait for a core. What the placement bench measures against none.
pub const CONTROL_PLANE_CPU_WEIGHT: u32 = 1000;

/// The CPU weight of a warm pool's sandbox until it is claimed, as cgroup v1 `cpu.shares` (a
/// tenth of the kernel's default 1024; the OCI runtime maps it to v2's `cpu.weight`): a pool
/// refills in the background, and its start should not take a core from the sandboxes already
/// serving, least of all from the claimant whose claim triggered the refill; yet on a busy host
/// it still gets a tenth of a sandbox's share, so pools fill. The claim sets the default back
/// ([`Cgroups::set_sandbox_limits`]).
pub const POOL_CPU_SHARES: u64 = 102;

/// The nice value of a warm pool's start (the OCI runtime, its init and the supervisor it
/// becomes, which inherit it) until it is claimed: a tenth of a normal process's CPU weight
/// beside the server's own threads.
pub const POOL_NICE: i32 = 10;

/// The kernel's default CPU weight of a cgroup: v2 `cpu.weight`, and v1 `cpu.shares`.
const DEFAULT_CPU_WEIGHT_V2: &str = "100";
const DEFAULT_CPU_SHARES_V1: &str = "1024";

/// Which cgroup hierarchy the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One hierarchy per controller under the root (`cpu/`, `memory/`, `pids/`, ...).
    V1,
    /// The unified hierarchy at the root.
    V2,
}

/// The cgroup tree of one Bulkhead server.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    version: Version,
    prefix: String,
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(RuntimeError::io(format!("write {value:?} to {}", path.display())))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sums cgroup v2 `io.stat`'s `rbytes=` and `wbytes=` over every device.
fn io_stat_v2(path: &Path) -> (u64, u64) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let (mut read, mut write) = (0u64, 0u64);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=").and_then(|v| v.parse::<u64>().ok()) {
            read = read.saturating_add(v);
        } else if let Some(v) = field.strip_prefix("wbytes=").and_then(|v| v.parse::<u64>().ok()) {
            write = write.saturating_add(v);
        }
    }
    (read, write)
}

/// Sums cgroup v1 `blkio.throttle.io_service_bytes`' `Read` and `Write` lines over every device.
fn io_service_bytes_v1(path: &Path) -> (u64, u64) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let (mut read, mut write) = (0u64, 0u64);
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(_device), Some(op), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(v) = v.parse::<u64>() else { continue };
        match op {
            "Read" => read = read.saturating_add(v),
            "Write" => write = write.saturating_add(v),
            _ => {}
        }
    }
    (read, write)
}

/// A cpuset file's list (`cpuset.cpus`, `cpuset.cpus.exclusive`, ...).
fn read_cpuset(path: &Path) -> Result<CpuSet> {
    let text = fs::read_to_string(path).map_err(RuntimeError::io(format!("read {}", path.display())))?;
    CpuSet::parse(&text).map_err(|e| RuntimeError::Protocol(format!("{}: {e}", path.display())))
}

/// Creates a v1 cpuset cgroup whose cpus and memory nodes start as its parent's (a new v1
/// cpuset starts with neither, and takes no process until both are set).
fn cpuset_v1_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(RuntimeError::io(format!("create {}", dir.display())))?;
    let parent = dir.parent().unwrap_or(dir);
    for file in ["cpuset.mems", "cpuset.cpus"] {
        let own = fs::read_to_string(dir.join(file)).unwrap_or_default();
        if own.trim().is_empty() {
            let inherited = fs::read_to_string(parent.join(file))
                .map_err(RuntimeError::io(format!("read {}", parent.join(file).display())))?;
            write(&dir.join(file), inherited.trim())?;
        }
    }
    Ok(())
}

fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Cgroups {
    /// Detects the hierarchy mounted at `root` (normally `/sys/fs/cgroup`). `prefix` names the
    /// top cgroup of this server, such as `bulkhead`.
    pub fn detect(root: &Path, prefix: &str) -> Result<Cgroups> {
        let version = if root.join("cgroup.controllers").exists() {
            Version::V2
        } else if root.join("memory").is_dir() && root.join("pids").is_dir() && root.join("cpu").is_dir() {
            Version::V1
        } else {
            return Err(RuntimeError::Unavailable(format!(
                "no usable cgroup hierarchy at {}: mount cgroup v2 there, or cgroup v1 with the cpu, memory and pids controllers",
                root.display()
            )));
        };
        Ok(Cgroups { root: root.to_owned(), version, prefix: prefix.to_owned() })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The OCI `cgroupsPath` of a sandbox.
    pub fn sandbox_path(&self, namespace: &str, id: &str) -> String {
        format!("/{}/{namespace}/{id}", self.prefix)
    }

    /// Every hierarchy the server's cgroups may appear in: the root on v2; on v1 each mounted
    /// hierarchy (the OCI runtime creates the sandbox path in all of them).
    fn hierarchies(&self) -> Vec<PathBuf> {
        match self.version {
            Version::V2 => vec![self.root.clone()],
            Version::V1 => {
                let mut out: Vec<PathBuf> = fs::read_dir(&self.root)
                    .map(|entries| {
                        entries
                            .flatten()
                            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                            .map(|e| e.path())
                            .collect()
                    })
                    .unwrap_or_default();
                out.sort();
                out
            }
        }
    }

    fn controller(&self, name: &str) -> PathBuf {
        match self.version {
            Version::V2 => self.root.clone(),
            Version::V1 => self.root.join(name),
        }
    }

    /// Creates the namespace's cgroup (or updates it) with the namespace's limits.
    pub fn ensure_namespace(&self, namespace: &str, limits: &NamespaceLimits) -> Result<()> {
        let quota = limits.cpu_millis * CPU_PERIOD_US / 1000;
        match self.version {
            Version::V2 => {
                let top = self.root.join(&self.prefix);
                let ns = top.join(namespace);
                fs::create_dir_all(&ns).map_err(RuntimeError::io(format!("create {}", ns.display())))?;
                for dir in [&self.root, &top, &ns] {
                    write(&dir.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
                }
                write(&ns.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                write(&ns.join("memory.max"), &limits.memory_bytes.to_string())?;
                // Absent without swap accounting, where there is no swap to forbid.
                let _ = write(&ns.join("memory.swap.max"), "0");
                write(&ns.join("pids.max"), &limits.pids.to_string())?;
            }
            Version::V1 => {
                let path = |c: &str| self.controller(c).join(&self.prefix).join(namespace);
                for c in ["cpu", "memory", "pids"] {
                    let p = path(c);
                    fs::create_dir_all(&p).map_err(RuntimeError::io(format!("create {}", p.display())))?;
                }
                write(&path("cpu").join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&path("cpu").join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(&path("memory").join("memory.limit_in_bytes"), &limits.memory_bytes.to_string())?;
                write(&path("pids").join("pids.max"), &limits.pids.to_string())?;
            }
        }
        self.place_namespace(namespace, &limits.placement)
    }

    /// Moves a namespace to its cores (and its running sandboxes with it, live) and sets its
    /// memory reservation. Nothing when `placement.cpus` is `None`.
    ///
    /// - v2: the cpuset controller is enabled down to the namespace's cgroup, whose sandboxes
    ///   inherit its cpus. A dedicated namespace becomes a remote partition root (its cores
    ///   listed in the server's top cgroup's `cpuset.cpus.exclusive` and its own, then
    ///   `cpuset.cpus.partition` set to `root`), which takes its cores from every cgroup outside
    ///   it, the host's own processes included; its `memory.min` is the reservation (the top's
    ///   is `max`, so the protection reaches it). A shared one is a `member` with no exclusive
    ///   cpus and no protection. A partition the kernel refuses (it reads back `root invalid`)
    ///   is `Unavailable`, naming the kernel's reason.
    /// - v1: the namespace's `cpuset` cgroup gets the cores, and each sandbox's below it (v1
    ///   children do not follow their parent): first the parent grows to the union of old and
    ///   new, then the children move, then the parent shrinks, the order the kernel's subset
    ///   rule accepts. There is no memory protection on v1.
    fn place_namespace(&self, namespace: &str, placement: &CpuPlacement) -> Result<()> {
        let Some(cpus) = &placement.cpus else { return Ok(()) };
        match self.version {
            Version::V2 => {
                let top = self.root.join(&self.prefix);
                let ns = top.join(namespace);
                for dir in [&self.root, &top] {
                    write(&dir.join("cgroup.subtree_control"), "+cpuset")?;
                }
                let partition = ns.join("cpuset.cpus.partition");
                if placement.dedicated {
                    let top_exclusive = top.join("cpuset.cpus.exclusive");
                    let held = read_cpuset(&top_exclusive)?;
                    let held = held.union(cpus);
                    write(&top_exclusive, &held.to_string())?;
                    write(&ns.join("cpuset.cpus"), &cpus.to_string())?;
                    write(&ns.join("cpuset.cpus.exclusive"), &cpus.to_string())?;
                    write(&partition, "root")?;
                    let state = fs::read_to_string(&partition).unwrap_or_default();
                    if state.trim() != "root" {
                        return Err(RuntimeError::Unavailable(format!(
                            "the kernel refused cores {cpus} as an exclusive partition for namespace {namespace}: {}",
                            state.trim()
                        )));
                    }
                    write(&top.join("memory.min"), "max")?;
                    write(&ns.join("memory.min"), &placement.memory_min_bytes.to_string())?;
                } else {
                    if fs::read_to_string(&partition).is_ok_and(|p| p.trim() != "member") {
                        write(&partition, "member")?;
                    }
                    // Absent on kernels without exclusive cpus, where nothing was made exclusive.
                    write_if_present(&ns.join("cpuset.cpus.exclusive"), "\n")?;
                    write(&ns.join("cpuset.cpus"), &cpus.to_string())?;
                    write_if_present(&ns.join("memory.min"), "0")?;
                }
            }
            Version::V1 => {
                let base = self.root.join("cpuset");
                if !base.is_dir() {
                    return Err(RuntimeError::Unavailable(format!(
                        "no cpuset hierarchy at {}: placement needs the cpuset controller",
                        base.display()
                    )));
                }
                let top = base.join(&self.prefix);
                let ns = top.join(namespace);
                cpuset_v1_dir(&top)?;
                cpuset_v1_dir(&ns)?;
                let old = read_cpuset(&ns.join("cpuset.cpus"))?;
                write(&ns.join("cpuset.cpus"), &old.union(cpus).to_string())?;
                for child in fs::read_dir(&ns).into_iter().flatten().flatten() {
                    if child.path().is_dir() {
                        // A sandbox removed meanwhile has nothing left to move.
                        write_if_present(&child.path().join("cpuset.cpus"), &cpus.to_string())?;
                    }
                }
                write(&ns.join("cpuset.cpus"), &cpus.to_string())?;
            }
        }
        Ok(())
    }

    /// Removes `relative` (under the prefix) from every hierarchy, children first, killing any
    /// process still inside so that nothing can hold a cgroup alive.
    fn remove_tree(&self, relative: &Path) -> Result<()> {
        // First stop every process below, all at once (a fork bomb outruns one kill at a time).
        let base = match self.version {
            Version::V2 => self.root.clone(),
            Version::V1 => self.root.join("freezer"),
        };
        let top = base.join(&self.prefix).join(relative);
        if top.is_dir() {
            // The freeze of the top reaches every cgroup below (and the kill their members).
            self.kill_dir(&top);
        }
        for h in self.hierarchies() {
            let dir = h.join(&self.prefix).join(relative);
            if dir.is_dir() {
                remove_dir_tree(&dir)?;
            }
        }
        Ok(())
    }

    /// The sandbox's directory in the grouping hierarchy (v2: the unified tree; v1: freezer).
    fn grouping_dir(&self, namespace: &str, id: &str) -> PathBuf {
        let rel = Path::new(&self.prefix).join(namespace).join(id);
        match self.version {
            Version::V2 => self.root.join(rel),
            Version::V1 => self.root.join("freezer").join(rel),
        }
    }

    /// Creates the sandbox's cgroup in the grouping hierarchy before the OCI runtime starts it
    /// (the runtime accepts an existing cgroup path), gives the sandbox's root (host id
    /// `owner`) what it needs to make and fill a cgroup per command below it, and opens the
    /// directory for the supervisor. What is handed over: the directory (to make children) and
    /// its `cgroup.procs` (v2's rule that a move needs write access to the common ancestor's
    /// `cgroup.procs`; on v1 also `tasks`). The limits' files stay root's. On v2 the number of
    /// nested cgroups is capped by `cgroup.max.descendants` ([`MAX_COMMAND_CGROUPS`]).
    pub fn delegate(&self, namespace: &str, id: &str, owner: u32) -> Result<fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.grouping_dir(namespace, id);
        fs::create_dir_all(&dir).map_err(RuntimeError::io(format!("create {}", dir.display())))?;
        // The namespace's directory is root's and 0700: every sandbox of a namespace has the
        // same host ids, so should a handle on one sandbox's directory ever reach a command,
        // its `..` must lead nowhere: no listing of the other sandboxes, no path into theirs.
        if let Some(ns) = dir.parent() {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(ns, fs::Permissions::from_mode(0o700))
                .map_err(RuntimeError::io(format!("chmod {}", ns.display())))?;
        }
        let chown = |p: &Path| {
            std::os::unix::fs::chown(p, Some(owner), Some(owner))
                .map_err(RuntimeError::io(format!("chown {}", p.display())))
        };
        chown(&dir)?;
        chown(&dir.join("cgroup.procs"))?;
        match self.version {
            Version::V1 => {
                if dir.join("tasks").exists() {
                    chown(&dir.join("tasks"))?;
                }
            }
            Version::V2 => {
                if dir.join("cgroup.max.descendants").exists() {
                    write(&dir.join("cgroup.max.descendants"), &MAX_COMMAND_CGROUPS.to_string())?;
                }
            }
        }
        // Without O_CLOEXEC: the OCI runtime's child places it at the supervisor's fd.
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&dir)
            .map_err(RuntimeError::io(format!("open {}", dir.display())))
    }

    /// Sets a running sandbox's cpu, memory and process limits (what the OCI runtime set at
    /// start from its spec): a warm pool's sandbox gets its claimant's at claim, and its CPU
    /// weight back from [`POOL_CPU_SHARES`] to the kernel's default. Memory plus swap equals
    /// memory (no swap), written in the order the kernel accepts whether the limit grows or
    /// shrinks; a limit below what the sandbox already uses fails (`EBUSY`), leaving the old
    /// one.
    pub fn set_sandbox_limits(
        &self,
        namespace: &str,
        id: &str,
        cpu_millis: u64,
        memory_bytes: u64,
        pids: u64,
    ) -> Result<()> {
        let rel = Path::new(&self.prefix).join(namespace).join(id);
        let quota = cpu_millis * CPU_PERIOD_US / 1000;
        let memory = memory_bytes.to_string();
        match self.version {
            Version::V2 => {
                let dir = self.root.join(&rel);
                write(&dir.join("memory.max"), &memory)?;
                let _ = write(&dir.join("memory.swap.max"), "0");
                write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                write(&dir.join("cpu.weight"), DEFAULT_CPU_WEIGHT_V2)?;
                write(&dir.join("pids.max"), &pids.to_string())?;
            }
            Version::V1 => {
                write(&self.controller("pids").join(&rel).join("pids.max"), &pids.to_string())?;
                let mem = self.controller("memory").join(&rel);
                let (limit, memsw) = (mem.join("memory.limit_in_bytes"), mem.join("memory.memsw.limit_in_bytes"));
                let has_swap = memsw.exists();
                // memsw ≥ limit always: a growing limit raises memsw first, a shrinking one last.
                let grows = read_u64(&limit).is_none_or(|current| memory_bytes >= current);
                if has_swap && grows {
                    write(&memsw, &memory)?;
                }
                write(&limit, &memory)?;
                if has_swap && !grows {
                    write(&memsw, &memory)?;
                }
                let cpu = self.controller("cpu").join(&rel);
                write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(&cpu.join("cpu.shares"), DEFAULT_CPU_SHARES_V1)?;
            }
        }
        Ok(())
    }

    /// Every thread of sandbox `id` (host thread ids), its command cgroups' included: v2's
    /// `cgroup.threads`, v1's `tasks` in the `cpu` hierarchy, in the sandbox's cgroup and
    /// every cgroup below it. Empty when the cgroup is gone.
    pub fn sandbox_threads(&self, namespace: &str, id: &str) -> Vec<i32> {
        let rel = Path::new(&self.prefix).join(namespace).join(id);
        let (dir, file) = match self.version {
            Version::V2 => (self.root.join(&rel), "cgroup.threads"),
            Version::V1 => (self.controller("cpu").join(&rel), "tasks"),
        };
        let mut out = Vec::new();
        let mut dirs = vec![dir];
        while let Some(d) = dirs.pop() {
            let Ok(entries) = fs::read_dir(&d) else { continue };
            if let Ok(text) = fs::read_to_string(d.join(file)) {
                out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
            dirs.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
        out
    }

    /// Kills every process of a sandbox at once, however fast they fork, in every command
    /// cgroup below it too: with `cgroup.kill` where the kernel has it (v2, recursive),
    /// otherwise by freezing the cgroup (no process below runs, so none forks), sending SIGKILL
    /// to every member of every nested cgroup, and thawing them so the kills land.
    pub fn kill_sandbox(&self, namespace: &str, id: &str) {
        let rel = Path::new(&self.prefix).join(namespace).join(id);
        let dir = match self.version {
            Version::V2 => self.root.join(&rel),
            Version::V1 => self.root.join("freezer").join(&rel),
        };
        if dir.is_dir() {
            self.kill_dir(&dir);
        }
    }

    /// Kills every member of one cgroup and of every cgroup below it (`dir` in the v2 tree or
    /// the v1 freezer hierarchy).
    fn kill_dir(&self, dir: &Path) {
        match self.version {
            Version::V2 => {
                if write_existing(&dir.join("cgroup.kill"), "1").is_ok() {
                    return;
                }
                freeze_kill_thaw(dir, &dir.join("cgroup.freeze"), "1", "0", |d| {
                    fs::read_to_string(d.join("cgroup.events")).is_ok_and(|e| e.contains("frozen 1"))
                });
            }
            Version::V1 => {
                freeze_kill_thaw(dir, &dir.join("freezer.state"), "FROZEN", "THAWED", |d| {
                    fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
                });
            }
        }
    }

    /// Freezes (`true`) or thaws every process of a sandbox, the command cgroups below it too
    /// (a frozen parent holds its children whatever they ask): v2 `cgroup.freeze`, v1
    /// `freezer.state`, files that stay root's. A freeze returns once the kernel says frozen;
    /// `Busy` (and thawed again) when it does not within 2 s.
    pub fn freeze_sandbox(&self, namespace: &str, id: &str, frozen: bool) -> Result<()> {
        let dir = self.grouping_dir(namespace, id);
        let (control, value, is_frozen): (_, _, fn(&Path) -> bool) = match self.version {
            Version::V2 => (dir.join("cgroup.freeze"), if frozen { "1" } else { "0" }, |d| {
                fs::read_to_string(d.join("cgroup.events")).is_ok_and(|e| e.contains("frozen 1"))
            }),
            Version::V1 => (dir.join("freezer.state"), if frozen { "FROZEN" } else { "THAWED" }, |d| {
                fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
            }),
        };
        write_existing(&control, value).map_err(RuntimeError::io(format!("write {}", control.display())))?;
        if !frozen {
            return Ok(());
        }
        for _ in 0..2000 {
            if is_frozen(&dir) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let thaw = if self.version == Version::V2 { "0" } else { "THAWED" };
        let _ = write_existing(&control, thaw);
        Err(RuntimeError::Busy(format!("sandbox {id} did not freeze within 2 s")))
    }

    /// Removes whatever is left of a sandbox's cgroups.
    pub fn remove_sandbox(&self, namespace: &str, id: &str) -> Result<()> {
        self.remove_tree(&Path::new(namespace).join(id))
    }

    /// Removes a namespace's cgroups and everything under them, and the server's top cgroup
    /// when it was the last namespace.
    pub fn remove_namespace(&self, namespace: &str) -> Result<()> {
        self.remove_tree(Path::new(namespace))?;
        for h in self.hierarchies() {
            // Fails harmlessly while another namespace still has a cgroup.
            let _ = fs::remove_dir(h.join(&self.prefix));
        }
        Ok(())
    }

    /// Removes the server's whole tree and its control plane's cgroup (used when nothing
    /// should be left, with the server gone: a process still in them is killed).
    pub fn remove_all(&self) -> Result<()> {
        self.remove_tree(Path::new(""))?;
        for h in self.hierarchies() {
            let dir = h.join(self.control_plane_name());
            if dir.is_dir() {
                remove_dir_tree(&dir)?;
            }
        }
        Ok(())
    }

    /// Every cgroup directory of this server, in any hierarchy (its control plane's too).
    pub fn existing(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for h in self.hierarchies() {
            for top in [h.join(&self.prefix), h.join(self.control_plane_name())] {
                if top.is_dir() {
                    collect_dirs(&top, &mut out);
                }
            }
        }
        out
    }

    /// Sandbox ids with a cgroup, with their namespace.
    pub fn sandboxes(&self) -> Vec<(String, String)> {
        let top = self.controller("pids").join(&self.prefix);
        let mut out = Vec::new();
        for ns in fs::read_dir(&top).into_iter().flatten().flatten() {
            if !ns.path().is_dir() {
                continue;
            }
            for sbx in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                if sbx.path().is_dir() {
                    out.push((
                        ns.file_name().to_string_lossy().into_owned(),
                        sbx.file_name().to_string_lossy().into_owned(),
                    ));
                }
            }
        }
        out
    }

    /// Namespaces with a cgroup of this server.
    pub fn namespaces(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for h in self.hierarchies() {
            for ns in fs::read_dir(h.join(&self.prefix)).into_iter().flatten().flatten() {
                let name = ns.file_name().to_string_lossy().into_owned();
                if ns.path().is_dir() && !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        out.sort();
        out
    }

    /// The name of the server's own cgroup: `<prefix>.control-plane`, the top cgroup's sibling.
    pub fn control_plane_name(&self) -> String {
        format!("{}.control-plane", self.prefix)
    }

    /// Moves process `pid` (every thread of it) into its own cgroup beside the server's top
    /// cgroup ([`Cgroups::control_plane_name`]), with CPU weight `weight` in cgroup v2 units (1
    /// to 10,000; the top cgroup, which holds every namespace, has the default 100): v2 writes
    /// `cpu.weight` in the unified hierarchy; v1 writes `cpu.shares` (`weight * 1024 / 100`,
    /// the kernel's own mapping of one to the other) in the `cpu` hierarchy alone, leaving the
    /// process's memory, pids and cpuset cgroups as they were.
    ///
    /// The weight only matters when the CPU is contended: then the control plane gets `weight`
    /// parts to the 100 of all the tenants together, so tenants at their quotas (a fork bomb,
    /// a busy loop) do not queue the API, the runtime's calls and every other tenant's exec
    /// behind them. Beside the top cgroup rather than in it: inside, it would share the top
    /// cgroup's one slice with the tenants (measured: no gain, `bench --only placement`).
    ///
    /// Returns what [`ControlPlane::leave`] needs to put the process back. Errors: the weight
    /// out of range (`Protocol`), or a cgroup file the kernel refuses (`Io`).
    pub fn enter_control_plane(&self, pid: u32, weight: u32) -> Result<ControlPlane> {
        if !(1..=10_000).contains(&weight) {
            return Err(RuntimeError::Protocol(format!("control plane CPU weight {weight}: expected 1 to 10000")));
        }
        let (hierarchy, controller_line, weight_file, value) = match self.version {
            Version::V2 => (self.root.clone(), "", "cpu.weight", weight.to_string()),
            Version::V1 => (self.root.join("cpu"), "cpu", "cpu.shares", (u64::from(weight) * 1024 / 100).to_string()),
        };
        let dir = hierarchy.join(self.control_plane_name());
        fs::create_dir_all(&dir).map_err(RuntimeError::io(format!("create {}", dir.display())))?;
        if self.version == Version::V2 {
            write(&self.root.join("cgroup.subtree_control"), "+cpu")?;
        }
        write(&dir.join(weight_file), &value)?;
        let from = own_cgroup(pid, self.version, controller_line)
            .map(|rel| hierarchy.join(rel.trim_start_matches('/')))
            .filter(|d| *d != dir && d.is_dir())
            .unwrap_or_else(|| hierarchy.clone());
        write(&dir.join("cgroup.procs"), &pid.to_string())?;
        Ok(ControlPlane { pid, dir, from })
    }

    /// Resource use of a sandbox from its cgroup counters.
    /// Processes of sandbox `id` the kernel's OOM killer ended so far (one file read); 0 when
    /// its memory cgroup is gone.
    pub fn oom_kills(&self, namespace: &str, id: &str) -> u64 {
        let rel = Path::new(&self.prefix).join(namespace).join(id);
        match self.version {
            Version::V2 => keyed(&self.root.join(&rel).join("memory.events"), "oom_kill").unwrap_or(0),
            Version::V1 => {
                keyed(&self.root.join("memory").join(&rel).join("memory.oom_control"), "oom_kill").unwrap_or(0)
            }
        }
    }

    pub fn stats(&self, namespace: &str, id: &str) -> Result<SandboxStats> {
        let rel = Path::new(&self.prefix).join(namespace).join(id);
        let missing = || RuntimeError::NotRunning(id.to_owned());
        Ok(match self.version {
            Version::V2 => {
                let d = self.root.join(&rel);
                if !d.is_dir() {
                    return Err(missing());
                }
                let memory = read_u64(&d.join("memory.current")).unwrap_or(0);
                let (io_read_bytes, io_write_bytes) = io_stat_v2(&d.join("io.stat"));
                SandboxStats {
                    cpu_usage_ns: keyed(&d.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000,
                    memory_bytes: memory,
                    memory_peak_bytes: read_u64(&d.join("memory.peak")).unwrap_or(memory),
                    pids: read_u64(&d.join("pids.current")).unwrap_or(0),
                    oom_kills: keyed(&d.join("memory.events"), "oom_kill").unwrap_or(0),
                    pids_limit_hits: keyed(&d.join("pids.events"), "max").unwrap_or(0),
                    io_read_bytes,
                    io_write_bytes,
                    egress: Default::default(),
                }
            }
            Version::V1 => {
                let mem = self.root.join("memory").join(&rel);
                if !mem.is_dir() {
                    return Err(missing());
                }
                let (io_read_bytes, io_write_bytes) =
                    io_service_bytes_v1(&self.root.join("blkio").join(&rel).join("blkio.throttle.io_service_bytes"));
                SandboxStats {
                    cpu_usage_ns: read_u64(&self.root.join("cpuacct").join(&rel).join("cpuacct.usage")).unwrap_or(0),
                    memory_bytes: read_u64(&mem.join("memory.usage_in_bytes")).unwrap_or(0),
                    memory_peak_bytes: read_u64(&mem.join("memory.max_usage_in_bytes")).unwrap_or(0),
                    pids: read_u64(&self.root.join("pids").join(&rel).join("pids.current")).unwrap_or(0),
                    oom_kills: keyed(&mem.join("memory.oom_control"), "oom_kill").unwrap_or(0),
                    pids_limit_hits: keyed(&self.root.join("pids").join(&rel).join("pids.events"), "max").unwrap_or(0),
                    io_read_bytes,
                    io_write_bytes,
                    egress: Default::default(),
                }
            }
        })
    }
}

/// The server's process in its own cgroup ([`Cgroups::enter_control_plane`]).
#[derive(Debug)]
pub struct ControlPlane {
    pid: u32,
    /// `<hierarchy>/<prefix>.control-plane`.
    dir: PathBuf,
    /// Where the process was before, to go back to.
    from: PathBuf,
}

impl ControlPlane {
    /// The control plane's cgroup directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves the process back where it came from (the hierarchy's root when that is gone) and
    /// removes the control plane's cgroup. A cgroup that other processes still hold (children
    /// the server started) stays.
    pub fn leave(self) -> Result<()> {
        let back = match self.from.join("cgroup.procs").exists() {
            true => &self.from,
            false => self.dir.parent().unwrap_or(&self.dir),
        };
        write(&back.join("cgroup.procs"), &self.pid.to_string())?;
        match fs::remove_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                tracing::warn!(cgroup = %self.dir.display(), "processes the server started still hold its cgroup");
                return Ok(());
            }
            Err(e) => return Err(RuntimeError::io(format!("remove cgroup {}", self.dir.display()))(e)),
        }
        Ok(())
    }
}

/// The cgroup of process `pid` in the hierarchy that holds `controller` (v1), or in the unified
/// one (v2, `controller` unused), from `/proc/<pid>/cgroup` (`ID:CONTROLLERS:PATH` lines).
fn own_cgroup(pid: u32, version: Version, controller: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let ours = match version {
            Version::V2 => id == "0" && controllers.is_empty(),
            Version::V1 => controllers.split(',').any(|c| c == controller),
        };
        ours.then(|| path.to_owned())
    })
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_dirs(&e.path(), out);
        }
    }
}

/// Command cgroups a sandbox may have below it at once (v2's `cgroup.max.descendants`); the
/// pids limit bounds live commands, this bounds empty cgroups a tenant could make.
pub const MAX_COMMAND_CGROUPS: u32 = 4096;

/// Freezes the cgroup at `dir` through `control` (freezing every cgroup below it too), waits
/// (briefly) until `frozen` says so, kills every member of it and of every cgroup below, and
/// thaws them all: also a nested cgroup that froze itself (the sandbox's root owns those files),
/// whose killed members would otherwise never die.
fn freeze_kill_thaw(dir: &Path, control: &Path, freeze: &str, thaw: &str, frozen: impl Fn(&Path) -> bool) {
    let control_name = control.file_name().map(|n| n.to_owned()).unwrap_or_default();
    let mut dirs = Vec::new();
    collect_dirs(dir, &mut dirs);
    if write_existing(control, freeze).is_ok() {
        for _ in 0..200 {
            if frozen(dir) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for d in dirs.iter().rev() {
        kill_members(d);
    }
    for d in dirs.iter().rev() {
        let _ = write_existing(&d.join(&control_name), thaw);
    }
}

/// Writes a control file that the kernel made; never creates one (in a fake tree, nothing).
/// Writes `value` to a control file the kernel may lack; a missing one is no error.
fn write_if_present(path: &Path, value: &str) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    write(path, value)
}

fn write_existing(path: &Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    fs::OpenOptions::new().write(true).open(path)?.write_all(value.as_bytes())
}

fn kill_members(dir: &Path) {
    for name in ["cgroup.procs", "tasks"] {
        if let Ok(text) = fs::read_to_string(dir.join(name)) {
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill takes plain integers; the pid was read from the cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// rmdir of a cgroup tree, deepest first. A cgroup with live members is emptied with SIGKILL
/// and retried for a short while.
fn remove_dir_tree(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_dir_tree(&e.path())?;
        }
    }
    let mut delay = Duration::from_millis(1);
    for attempt in 0..12 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempt < 11 && e.raw_os_error() == Some(libc::EBUSY) => {
                kill_members(dir);
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(RuntimeError::io(format!("remove cgroup {}", dir.display()))(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake v1 cgroupfs: plain directories and files. The real kernel path is exercised by
    /// the sandbox integration tests.
    fn fake_v1() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for c in ["cpu", "cpuacct", "memory", "pids", "freezer"] {
            fs::create_dir(d.path().join(c)).unwrap();
        }
        d
    }

    #[test]
    fn v1_namespace_limits_and_removal() {
        let d = fake_v1();
        let cg = Cgroups::detect(d.path(), "bulkhead").unwrap();
        assert_eq!(cg.version(), Version::V1);
        let limits =
            NamespaceLimits { cpu_millis: 1500, memory_bytes: 1 << 30, pids: 512, placement: Default::default() };
        cg.ensure_namespace("acme", &limits).unwrap();
        let read = |p: &str| fs::read_to_string(d.path().join(p)).unwrap();
        assert_eq!(read("cpu/bulkhead/acme/cpu.cfs_quota_us"), "150000");
        assert_eq!(read("memory/bulkhead/acme/memory.limit_in_bytes"), (1u64 << 30).to_string());
        assert_eq!(read("pids/bulkhead/acme/pids.max"), "512");
        // The OCI runtime would create the sandbox in every hierarchy.
        fs::create_dir_all(d.path().join("freezer/bulkhead/acme/sbx_1")).unwrap();
        fs::create_dir_all(d.path().join("pids/bulkhead/acme/sbx_1")).unwrap();
        assert_eq!(cg.sandboxes(), vec![("acme".to_owned(), "sbx_1".to_owned())]);
        assert_eq!(cg.sandbox_path("acme", "sbx_1"), "/bulkhead/acme/sbx_1");
        // Plain files in the fake tree stand in for the kernel's control files.
        for p in ["cpu", "memory", "pids"] {
            for f in fs::read_dir(d.path().join(p).join("bulkhead/acme")).unwrap().flatten() {
                if f.path().is_file() {
                    fs::remove_file(f.path()).unwrap();
                }
            }
        }
        cg.remove_namespace("acme").unwrap();
        assert!(!d.path().join("freezer/bulkhead/acme").exists());
        assert!(!d.path().join("memory/bulkhead/acme").exists());
    }

    #[test]
    fn v2_is_detected_and_limits_written() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let cg = Cgroups::detect(d.path(), "bulkhead").unwrap();
        assert_eq!(cg.version(), Version::V2);
        cg.ensure_namespace(
            "acme",
            &NamespaceLimits { cpu_millis: 500, memory_bytes: 1 << 28, pids: 64, placement: Default::default() },
        )
        .unwrap();
        assert_eq!(fs::read_to_string(d.path().join("bulkhead/acme/cpu.max")).unwrap(), "50000 100000");
        assert_eq!(fs::read_to_string(d.path().join("bulkhead/acme/pids.max")).unwrap(), "64");
    }

    /// Removes the plain files a fake tree keeps where the kernel has control files.
    fn clear_files(dir: &Path) {
        for f in fs::read_dir(dir).unwrap().flatten() {
            if f.path().is_file() {
                fs::remove_file(f.path()).unwrap();
            }
        }
    }

    #[test]
    fn v1_control_plane_is_weighted_beside_the_top_cgroup_in_the_cpu_hierarchy_alone() {
        let d = fake_v1();
        let cg = Cgroups::detect(d.path(), "bulkhead").unwrap();
        let limits =
            NamespaceLimits { cpu_millis: 1000, memory_bytes: 1 << 30, pids: 64, placement: Default::default() };
        cg.ensure_namespace("acme", &limits).unwrap();
        let plane = cg.enter_control_plane(4242, CONTROL_PLANE_CPU_WEIGHT).unwrap();
        let dir = d.path().join("cpu/bulkhead.control-plane");
        assert_eq!(plane.dir(), dir);
        assert_eq!(fs::read_to_string(dir.join("cpu.shares")).unwrap(), "10240");
        assert_eq!(fs::read_to_string(dir.join("cgroup.procs")).unwrap(), "4242");
        for other in ["memory", "pids", "freezer"] {
            assert!(!d.path().join(other).join("bulkhead.control-plane").exists(), "{other}");
        }
        // Walks of the namespaces and their sandboxes never meet it; the server's cgroups do.
        assert_eq!(cg.namespaces(), vec!["acme".to_owned()]);
        assert!(cg.sandboxes().is_empty());
        assert!(cg.existing().contains(&dir));
        assert!(cg.enter_control_plane(1, 0).is_err());
        assert!(cg.enter_control_plane(1, 10_001).is_err());
        // Leaving puts the process back (here: the hierarchy's root, the fake has no other).
        clear_files(&dir);
        plane.leave().unwrap();
        assert_eq!(fs::read_to_string(d.path().join("cpu/cgroup.procs")).unwrap(), "4242");
        assert!(!dir.exists());
        assert!(d.path().join("cpu/bulkhead/acme").exists(), "the namespace's cgroup stays");
    }

    #[test]
    fn v2_control_plane_is_weighted_in_the_unified_hierarchy_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cgroup.controllers"), "cpu cpuset memory pids").unwrap();
        let cg = Cgroups::detect(d.path(), "bulkhead").unwrap();
        let plane = cg.enter_control_plane(4242, 500).unwrap();
        let dir = d.path().join("bulkhead.control-plane");
        assert_eq!(fs::read_to_string(dir.join("cpu.weight")).unwrap(), "500");
        assert_eq!(fs::read_to_string(dir.join("cgroup.procs")).unwrap(), "4242");
        assert_eq!(fs::read_to_string(d.path().join("cgroup.subtree_control")).unwrap(), "+cpu");
        assert!(cg.namespaces().is_empty());
        clear_files(&dir);
        plane.leave().unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn own_cgroup_reads_the_controllers_line() {
        let me = std::process::id();
        let text = fs::read_to_string(format!("/proc/{me}/cgroup")).unwrap();
        let v2 = text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned);
        assert_eq!(own_cgroup(me, Version::V2, ""), v2);
        let cpu = text.lines().find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == "cpu")));
        assert_eq!(own_cgroup(me, Version::V1, "cpu"), cpu.map(|l| l.splitn(3, ':').nth(2).unwrap().to_owned()));
    }

    fn placed(cpus: &str, dedicated: bool, memory_min_bytes: u64) -> NamespaceLimits {
        NamespaceLimits {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            pids: 64,
            placement: CpuPlacement { cpus: Some(CpuSet::parse(cpus).unwrap()), dedicated, memory_min_bytes },
        }
    }

    #[test]
    fn v2_dedicated_is_a_remote_partition_with_a_reservation_and_shared_undoes_it() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cgroup.controllers"), "cpuset cpu memory pids").unwrap();
        // What the kernel shows once cpuset is enabled at the root.
        fs::create_dir_all(d.path().join("bulkhead")).unwrap();
        fs::write(d.path().join("bulkhead/cpuset.cpus.exclusive"), "\n").unwrap();
        let cg = Cgroups::detect(d.path(), "bulkhead").unwrap();
        let read = |p: &str| fs::read_to_string(d.path().join(p)).unwrap().trim().to_owned();

        cg.ensure_namespace("gold", &placed("2-3", true, 1 << 29)).unwrap();
        assert!(read("cgroup.subtree_control").contains("+cpuset"));
        assert_eq!(read("bulkhead/cpuset.cpus.exclusive"), "2-3");
        assert_eq!(read("bulkhead/gold/cpuset.cpus"), "2-3");
        assert_eq!(read("bulkhead/gold/cpuset.cpus.exclusive"), "2-3");
        assert_eq!(read("bulkhead/gold/cpuset.cpus.partition"), "root");
        assert_eq!(read("bulkhead/gold/memory.min"), (1u64 << 29).to_string());
        assert_eq!(read("bulkhead/memory.min"), "max");
        // A second dedicated namespace adds its cores to the top's exclusive ones.
        cg.ensure_namespace("silver", &placed("1", true, 1 << 28)).unwrap();
        assert_eq!(read("bulkhead/cpuset.cpus.exclusive"), "1-3");
        // The shared ones get what is left.
        cg.ensure_namespace("tin", &placed("0", false, 0)).unwrap();
        assert_eq!(read("bulkhead/tin/cpuset.cpus"), "0");

        // Back to shared: a member again, nothing exclusive, nothing protected.
        cg.ensure_namespace("gold", &placed("0,2-3", false, 0)).unwrap();
        assert_eq!(read("bulkhead/gold/cpuset.cpus.partition"), "member");
        assert_eq!(read("bulkhead/gold/cpuset.cpus.exclusive"), "");
        assert_eq!(read("bulkhead/gold/cpuset.cpus"), "0,2-3");
        assert_eq!(read("bulkhead/gold/memory.min"), "0");
    }

    #[test]
    fn v1_placement_moves_the_namespace_and_its_sandboxes() {
        let d = fake_v1();
        fs::create_dir(d.path().join("cpuset")).unwrap();
        fs::write(d.path().join("cpuset/cpuset.cpus"), "0-3\n").unwrap();
        fs::write(d.path().join("cpuset/cpuset.mems"), "0\n").unwrap();
        let cg = Cgroups::detect(d.path(), "bulkhead").unwrap();
        let read = |p: &str| fs::read_to_string(d.path().join(p)).unwrap().trim().to_owned();

        cg.ensure_namespace("acme", &placed("0-2", false, 0)).unwrap();
        assert_eq!(read("cpuset/bulkhead/cpuset.cpus"), "0-3", "the top starts as its parent");
        assert_eq!(read("cpuset/bulkhead/acme/cpuset.mems"), "0");
        assert_eq!(read("cpuset/bulkhead/acme/cpuset.cpus"), "0-2");
        // A running sandbox (made by the OCI runtime as a copy of its parent) moves with it.
        fs::create_dir(d.path().join("cpuset/bulkhead/acme/sbx_1")).unwrap();
        fs::write(d.path().join("cpuset/bulkhead/acme/sbx_1/cpuset.cpus"), "0-2").unwrap();
        cg.ensure_namespace("acme", &placed("3", true, 1 << 29)).unwrap();
        assert_eq!(read("cpuset/bulkhead/acme/cpuset.cpus"), "3");
        assert_eq!(read("cpuset/bulkhead/acme/sbx_1/cpuset.cpus"), "3");
        // No memory protection file is made on v1: the reservation is admission only.
        assert!(!d.path().join("memory/bulkhead/acme/memory.min").exists());
    }

    #[test]
    fn no_placement_touches_no_cpuset() {
        let d = fake_v1();
        let cg = Cgroups::detect(d.path(), "bulkhead").unwrap();
        let limits =
            NamespaceLimits { cpu_millis: 1000, memory_bytes: 1 << 30, pids: 64, placement: Default::default() };
        cg.ensure_namespace("acme", &limits).unwrap();
        assert!(!d.path().join("cpuset").exists());
        let err = cg.ensure_namespace("acme", &placed("0", false, 0)).unwrap_err();
        assert!(err.to_string().contains("no cpuset hierarchy"), "{err}");
    }

    #[test]
    fn no_hierarchy_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let e = Cgroups::detect(d.path(), "bulkhead").unwrap_err();
        assert!(e.to_string().contains("cgroup"), "{e}");
    }
}

#[cfg(test)]
mod io_tests {
    use super::*;

    #[test]
    fn io_counters_sum_over_devices() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v2 = dir.path().join("io.stat");
        fs::write(&v2, "8:0 rbytes=100 wbytes=7 rios=1 wios=1\n7:3 rbytes=20 wbytes=3 rios=2 wios=1\n").expect("write");
        assert_eq!(io_stat_v2(&v2), (120, 10));
        let v1 = dir.path().join("blkio.throttle.io_service_bytes");
        fs::write(&v1, "8:0 Read 4096\n8:0 Write 512\n8:0 Sync 0\n7:1 Read 1\n7:1 Write 2\nTotal 4611\n")
            .expect("write");
        assert_eq!(io_service_bytes_v1(&v1), (4097, 514));
        assert_eq!(io_stat_v2(&dir.path().join("missing")), (0, 0));
    }
}

#[cfg(test)]
mod delegation_tests {
    use super::*;

    /// The runtime's side of per-command cgroups against a fake v2 tree: the sandbox's grouping
    /// directory is made and capped, and removal takes nested command cgroups first. Ownership
    /// (chown to the sandbox's root) is checked with the caller's own ids, which any user may set.
    #[test]
    fn v2_delegation_and_nested_removal() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let cg = Cgroups::detect(d.path(), "bulkhead").unwrap();
        let sbx = d.path().join("bulkhead/acme/sbx_1");
        fs::create_dir_all(&sbx).unwrap();
        for f in ["cgroup.procs", "cgroup.max.descendants", "cgroup.kill"] {
            fs::write(sbx.join(f), "").unwrap();
        }
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        let dir = cg.delegate("acme", "sbx_1", me).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(dir.metadata().unwrap().uid(), me);
        assert!(dir.metadata().unwrap().is_dir());
        assert_eq!(fs::read_to_string(sbx.join("cgroup.max.descendants")).unwrap(), MAX_COMMAND_CGROUPS.to_string());
        // The namespace's directory: nothing reaches the other sandboxes through it.
        let ns_mode = fs::metadata(d.path().join("bulkhead/acme")).unwrap().mode() & 0o7777;
        assert_eq!(ns_mode, 0o700, "{ns_mode:o}");

        // A command cgroup below it (the supervisor's mkdirat), then the sandbox's removal.
        fs::create_dir(sbx.join("exec-1")).unwrap();
        for f in ["cgroup.procs", "cgroup.max.descendants", "cgroup.kill"] {
            fs::remove_file(sbx.join(f)).unwrap();
        }
        cg.kill_sandbox("acme", "sbx_1");
        cg.remove_sandbox("acme", "sbx_1").unwrap();
        assert!(!sbx.exists());
        assert!(d.path().join("bulkhead/acme").exists(), "the namespace's cgroup stays");
    }

    /// v1: the grouping hierarchy is the freezer; a self-frozen nested command cgroup is thawed
    /// by the sandbox's kill so its members can die.
    #[test]
    fn v1_delegates_the_freezer_and_thaws_nested_cgroups() {
        let d = tempfile::tempdir().unwrap();
        for c in ["cpu", "cpuacct", "memory", "pids", "freezer"] {
            fs::create_dir(d.path().join(c)).unwrap();
        }
        let cg = Cgroups::detect(d.path(), "bulkhead").unwrap();
        let sbx = d.path().join("freezer/bulkhead/acme/sbx_1");
        fs::create_dir_all(&sbx).unwrap();
        for f in ["cgroup.procs", "tasks"] {
            fs::write(sbx.join(f), "").unwrap();
        }
        fs::write(sbx.join("freezer.state"), "THAWED").unwrap();
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        cg.delegate("acme", "sbx_1", me).unwrap();
        fs::create_dir(sbx.join("prc_a")).unwrap();
        fs::write(sbx.join("prc_a/freezer.state"), "FROZEN").unwrap();
        fs::write(sbx.join("prc_a/cgroup.procs"), "").unwrap();
        cg.kill_sandbox("acme", "sbx_1");
        assert_eq!(fs::read_to_string(sbx.join("prc_a/freezer.state")).unwrap(), "THAWED");
        assert_eq!(fs::read_to_string(sbx.join("freezer.state")).unwrap(), "THAWED");
    }
}
