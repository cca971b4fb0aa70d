//! A cgroup of its own for every command. The runtime hands the supervisor the sandbox's own
//! grouping cgroup as a directory descriptor (`--cgroup-fd`: cgroup v2's unified directory, or
//! on cgroup v1 the sandbox's `freezer` directory), owned by the sandbox's root. For each exec
//! and each background process the supervisor makes a child cgroup there (`mkdirat`), and the
//! command's child moves itself into it between fork and exec, before it drops to its user.
//! Ending a command then ends every descendant, also those that left its session or process
//! group (`setsid`, a double fork, `nohup`): v2 writes `cgroup.kill`; v1 freezes the cgroup,
//! sends SIGKILL to every member while none can fork, and thaws it.
//!
//! Without the descriptor (the supervisor's unit tests, run outside a sandbox) commands fall
//! back to their process group, which a `setsid` descendant leaves.
//!
//! A command that exits by itself leaves its background children running (as a shell does);
//! its cgroup is removed once empty, by [`sweep`].

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Which kernel interface the delegated directory has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// cgroup v2: `cgroup.kill` (or `cgroup.freeze` on kernels before 5.14).
    V2,
    /// cgroup v1's freezer hierarchy: `freezer.state`.
    V1Freezer,
}

impl Flavor {
    /// The file a command's child writes `0` to, to move itself into its cgroup. On v1 that
    /// is `tasks`, which moves the calling thread alone: the child between fork and exec has
    /// no other thread, so the whole process moves, and the kernel skips the global
    /// threadgroup lock that a write to `cgroup.procs` takes (its write side waits for an RCU
    /// grace period, milliseconds per command). v2 domain cgroups move whole processes only.
    fn join_file(self) -> &'static str {
        match self {
            Flavor::V2 => "cgroup.procs",
            Flavor::V1Freezer => "tasks",
        }
    }
}

struct Delegated {
    dir: OwnedFd,
    flavor: Flavor,
}

static DELEGATED: OnceLock<Delegated> = OnceLock::new();
static NEXT_EXEC: AtomicU64 = AtomicU64::new(1);

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn openat(dir: RawFd, path: &str, flags: i32) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: `c` is NUL-terminated and outlives the call; openat returns a new fd or -1.
    let fd = unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn write_at(dir: RawFd, name: &str, value: &str) -> io::Result<()> {
    let fd = openat(dir, name, libc::O_WRONLY)?;
    // SAFETY: writes `value`'s bytes from a valid buffer to an fd we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), value.as_ptr().cast(), value.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn read_at(dir: RawFd, name: &str) -> io::Result<String> {
    use std::io::Read;
    let fd = openat(dir, name, libc::O_RDONLY)?;
    let mut f = std::fs::File::from(fd);
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

fn flavor_of(dir: RawFd) -> Option<Flavor> {
    let exists = |name: &str| {
        let Ok(c) = cstr(name) else { return false };
        // SAFETY: `c` is NUL-terminated; faccessat only inspects the path.
        unsafe { libc::faccessat(dir, c.as_ptr(), libc::F_OK, 0) == 0 }
    };
    if exists("cgroup.controllers") || exists("cgroup.type") {
        Some(Flavor::V2)
    } else if exists("freezer.state") || exists("tasks") {
        Some(Flavor::V1Freezer)
    } else {
        None
    }
}

/// Adopts the delegated cgroup directory inherited as `fd` (marked close-on-exec here so no
/// command inherits it). Fails when `fd` is not a cgroup directory.
pub(crate) fn adopt(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("no cgroup directory on fd {fd}")));
    }
    // SAFETY: as above; close-on-exec keeps commands from inheriting the directory.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    let flavor = flavor_of(fd)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("fd {fd} is not a cgroup directory")))?;
    // SAFETY: the runtime hands the supervisor this directory at `fd` and nothing else owns it.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = DELEGATED.set(Delegated { dir, flavor });
    std::thread::spawn(|| Sweeper::global().run());
    Ok(())
}

/// Adopts a directory for tests: a fake cgroup tree in a tempdir, or a real delegated cgroup.
#[cfg(test)]
pub(crate) fn adopt_dir(dir: OwnedFd, flavor: Flavor) -> CommandCgroups {
    CommandCgroups { dir, flavor }
}

/// The per-command cgroups under one delegated directory.
pub(crate) struct CommandCgroups {
    dir: OwnedFd,
    flavor: Flavor,
}

/// How a command's tree is ended: its own cgroup, or (without one) its process group.
pub(crate) struct Group {
    cgroup: Option<CommandCgroup>,
    /// The command's pid, which is also its process group and session (it calls setsid).
    pub(crate) pid: i32,
}

/// One command's cgroup.
pub(crate) struct CommandCgroup {
    name: String,
    dir: OwnedFd,
    flavor: Flavor,
    /// `cgroup.procs` (v1: `tasks`), opened for the child to write `0` to between fork and
    /// exec.
    procs: OwnedFd,
}

impl CommandCgroup {
    /// The descriptor the child writes `0` to, to move itself in.
    pub(crate) fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }
}

impl CommandCgroups {
    /// Makes the cgroup `name` (a fresh one: an existing directory of that name is an error).
    pub(crate) fn create(&self, name: &str) -> io::Result<CommandCgroup> {
        let c = cstr(name)?;
        // SAFETY: `c` is NUL-terminated; mkdirat creates one directory under our fd.
        if unsafe { libc::mkdirat(self.dir.as_raw_fd(), c.as_ptr(), 0o755) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let made = (|| {
            let dir = openat(self.dir.as_raw_fd(), name, libc::O_DIRECTORY | libc::O_RDONLY)?;
            let procs = openat(dir.as_raw_fd(), self.flavor.join_file(), libc::O_WRONLY)?;
            Ok(CommandCgroup { name: name.to_owned(), dir, flavor: self.flavor, procs })
        })();
        if made.is_err() {
            // SAFETY: as above; removes the directory just made.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) };
        }
        made
    }

    /// Removes the cgroup `name`; `Ok(false)` while it still has members.
    pub(crate) fn remove(&self, name: &str) -> io::Result<bool> {
        let c = cstr(name)?;
        // SAFETY: `c` is NUL-terminated; unlinkat with AT_REMOVEDIR removes an empty cgroup.
        if unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(true),
            Some(libc::EBUSY) | Some(libc::ENOTEMPTY) => Ok(false),
            _ => Err(e),
        }
    }
}

/// Members of a cgroup, read from `cgroup.procs` (pids in the sandbox's pid namespace).
fn members(dir: RawFd) -> Vec<i32> {
    read_at(dir, "cgroup.procs")
        .map(|t| t.lines().filter_map(|l| l.trim().parse::<i32>().ok()).collect())
        .unwrap_or_default()
}

fn kill_members(dir: RawFd) -> usize {
    let pids = members(dir);
    for pid in &pids {
        if *pid > 1 {
            // SAFETY: kill takes plain integers; the pid was read from the command's cgroup.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }
    pids.len()
}

/// Kills every member of the cgroup open at `dir`, whatever it forks meanwhile.
pub(crate) fn kill_dir(dir: RawFd, flavor: Flavor) {
    match flavor {
        Flavor::V2 => {
            if write_at(dir, "cgroup.kill", "1").is_ok() {
                return;
            }
            freeze_kill_thaw(dir, "cgroup.freeze", "1", "0", |d| {
                read_at(d, "cgroup.events").is_ok_and(|e| e.lines().any(|l| l == "frozen 1"))
            });
        }
        Flavor::V1Freezer => {
            freeze_kill_thaw(dir, "freezer.state", "FROZEN", "THAWED", |d| {
                read_at(d, "freezer.state").is_ok_and(|s| s.trim() == "FROZEN")
            });
        }
    }
}

fn freeze_kill_thaw(dir: RawFd, control: &str, freeze: &str, thaw: &str, frozen: impl Fn(RawFd) -> bool) {
    // A few rounds: a member that forked between the read and the kill is caught by the next.
    for _ in 0..50 {
        let froze = write_at(dir, control, freeze).is_ok();
        if froze {
            for _ in 0..200 {
                if frozen(dir) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let killed = kill_members(dir);
        let _ = write_at(dir, control, thaw);
        if killed == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl Group {
    pub(crate) fn new(cgroup: Option<CommandCgroup>, pid: i32) -> Group {
        Group { cgroup, pid }
    }

    /// Kills the command and every descendant (its process group only, without a cgroup).
    pub(crate) fn kill(&self) {
        match &self.cgroup {
            Some(cg) => kill_dir(cg.dir.as_raw_fd(), cg.flavor),
            None => {
                if self.pid > 1 {
                    // SAFETY: kill takes plain integers; a negative pid names the process group.
                    unsafe { libc::kill(-self.pid, libc::SIGKILL) };
                }
            }
        }
    }

    /// Hands the cgroup to the sweeper, which removes it once its last member is gone.
    pub(crate) fn release(self) {
        if let Some(cg) = self.cgroup {
            Sweeper::global().add(cg.name);
        }
    }
}

/// The delegated directory, when the runtime handed one over.
pub(crate) fn delegated() -> Option<CommandCgroups> {
    let d = DELEGATED.get()?;
    let dir = d.dir.try_clone().ok()?;
    Some(CommandCgroups { dir, flavor: d.flavor })
}

/// Creates a cgroup for a command: `name`, or `exec-<n>` for an exec. `Ok(None)` without a
/// delegated directory.
pub(crate) fn for_command(name: Option<&str>) -> io::Result<Option<CommandCgroup>> {
    let Some(cgroups) = delegated() else { return Ok(None) };
    let name = match name {
        Some(n) => n.to_owned(),
        None => format!("exec-{}", NEXT_EXEC.fetch_add(1, Ordering::Relaxed)),
    };
    cgroups.create(&name).map(Some)
}

/// Removes command cgroups once they are empty.
struct Sweeper {
    pending: Mutex<Vec<String>>,
    wake: Condvar,
}

impl Sweeper {
    fn global() -> &'static Sweeper {
        static SWEEPER: OnceLock<Sweeper> = OnceLock::new();
        SWEEPER.get_or_init(|| Sweeper { pending: Mutex::new(Vec::new()), wake: Condvar::new() })
    }

    fn add(&self, name: String) {
        // Most commands leave nothing behind: remove at once, and only queue the others.
        if let Some(cg) = delegated() {
            if cg.remove(&name).unwrap_or(true) {
                return;
            }
        }
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push(name);
        self.wake.notify_all();
    }

    fn run(&self) {
        loop {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            while pending.is_empty() {
                pending = self.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
            }
            drop(pending);
            std::thread::sleep(Duration::from_secs(1));
            sweep();
        }
    }
}

/// Tries once to remove every queued command cgroup that is empty now.
pub(crate) fn sweep() {
    let Some(cg) = delegated() else { return };
    let sweeper = Sweeper::global();
    let names = std::mem::take(&mut *sweeper.pending.lock().unwrap_or_else(|e| e.into_inner()));
    let left: Vec<String> = names.into_iter().filter(|n| !cg.remove(n).unwrap_or(true)).collect();
    sweeper.pending.lock().unwrap_or_else(|e| e.into_inner()).extend(left);
}

/// Moves the calling process into the cgroup whose `cgroup.procs` (v1: `tasks`; the caller
/// has no other thread) is open at `procs`. Runs
/// between fork and exec: only `write`, which is async-signal-safe.
pub(crate) fn join_in_child(procs: RawFd) -> io::Result<()> {
    // SAFETY: write of a static one-byte buffer to an fd the parent opened for us.
    if unsafe { libc::write(procs, b"0".as_ptr().cast(), 1) } != 1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_fd(path: &std::path::Path) -> OwnedFd {
        openat(libc::AT_FDCWD, path.to_str().unwrap(), libc::O_DIRECTORY | libc::O_RDONLY).unwrap()
    }

    /// A fake v2 tree: mkdirat makes a plain directory, so the files the kernel would create are
    /// made by hand; what the supervisor writes is then read back.
    #[test]
    fn v2_kill_writes_cgroup_kill_and_removal_waits_for_emptiness() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "").unwrap();
        let fd = dir_fd(d.path());
        assert_eq!(flavor_of(fd.as_raw_fd()), Some(Flavor::V2));
        let cgs = adopt_dir(fd, Flavor::V2);
        // cgroup.procs must exist to be opened: the kernel makes it; the fake needs it first.
        let e = cgs.create("prc_a").err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(!d.path().join("prc_a").exists(), "a half-made cgroup is removed");
        std::fs::create_dir(d.path().join("prc_b")).unwrap();
        assert!(cgs.create("prc_b").is_err(), "an existing cgroup is not reused");
        std::fs::remove_dir(d.path().join("prc_b")).unwrap();

        // A cgroup made as the kernel would.
        std::fs::create_dir(d.path().join("prc_c")).unwrap();
        std::fs::write(d.path().join("prc_c/cgroup.procs"), "").unwrap();
        std::fs::write(d.path().join("prc_c/cgroup.kill"), "").unwrap();
        let dir = dir_fd(&d.path().join("prc_c"));
        kill_dir(dir.as_raw_fd(), Flavor::V2);
        assert_eq!(std::fs::read_to_string(d.path().join("prc_c/cgroup.kill")).unwrap(), "1");
        // Files inside: not empty, so not removed (the kernel says EBUSY; a plain dir ENOTEMPTY).
        assert!(!cgs.remove("prc_c").unwrap());
        for f in ["cgroup.procs", "cgroup.kill"] {
            std::fs::remove_file(d.path().join("prc_c").join(f)).unwrap();
        }
        assert!(cgs.remove("prc_c").unwrap());
        assert!(cgs.remove("prc_c").unwrap(), "removing a gone cgroup is done");
    }

    #[test]
    fn v1_kill_freezes_and_thaws() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("freezer.state"), "THAWED").unwrap();
        std::fs::write(d.path().join("cgroup.procs"), "").unwrap();
        let fd = dir_fd(d.path());
        assert_eq!(flavor_of(fd.as_raw_fd()), Some(Flavor::V1Freezer));
        kill_dir(fd.as_raw_fd(), Flavor::V1Freezer);
        // Frozen for the kill, thawed after so the kills land.
        assert_eq!(std::fs::read_to_string(d.path().join("freezer.state")).unwrap(), "THAWED");
    }

    #[test]
    fn a_plain_directory_is_no_cgroup() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(flavor_of(dir_fd(d.path()).as_raw_fd()), None);
    }
}
