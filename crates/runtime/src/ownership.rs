//! Exclusive ownership of a server's host directories and cgroup prefix.
//!
//! One `bulkhead serve` owns a data dir, a state dir and a cgroup prefix: a second server on any
//! of them would reconcile the first one's sandboxes as orphans, kill them and unmount its
//! filesystems. Each is therefore held by an exclusive `flock(2)` on a lock file, taken first
//! thing at start (before the store is opened or anything on the host is touched) with
//! `LOCK_NB`, and held by an open descriptor for the life of the process:
//! - `<data-dir>/lock`, `<state-dir>/lock`;
//! - `/run/bulkhead-locks/cgroup-<prefix>.lock` for the cgroup prefix (cgroups are
//!   host-global).
//!
//! The kernel drops an `flock` with the last descriptor of its open file, so a server killed
//! with `kill -9` holds nothing and its restart takes the locks at once; there is no stale lock
//! to clean up and no pid to guess. The holder writes `pid <pid>` and `data_dir <path>` into
//! the file it holds, so a refused start names who holds it.
//!
//! What no other user of the host can do to a lock: the directory of every lock file must be
//! owned by this process's user and writable by nobody else (the cgroup locks' directory is made
//! 0700 under `/run`, never in the world-writable `/run/lock`, so no user can plant, replace,
//! rename or redirect a lock file there), and the file must be a regular file of this user,
//! opened without following a symlink and without blocking (a fifo is refused, not waited on).
//!
//! A lock file is removed by its holder when the lock is released. That is sound because a
//! taker checks, once it holds the `flock`, that the path still names the file it locked; if
//! not (the holder removed it in between), it starts over.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where the locks of cgroup prefixes live: host-global, like the prefixes, root's alone, and
/// gone at reboot with the cgroups they guard.
pub const CGROUP_LOCK_DIR: &str = "/run/bulkhead-locks";

/// An exclusive lock held until dropped; dropping it removes the lock file, then releases it.
#[derive(Debug)]
pub struct HostLock {
    file: Option<File>,
    path: PathBuf,
}

impl HostLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        // Unlinked while still held: whoever opened this file meanwhile finds, once it holds
        // the lock, that the path names another file (or none), and starts over.
        let _ = std::fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it; `holder` is what that process wrote (its pid and data
    /// dir), or `starting` when it has not written it yet.
    #[error("{what} is in use by another bulkhead server ({holder}); one server owns a {kind} at a time")]
    Held { what: String, kind: &'static str, holder: String },
    /// The lock file or its directory is not what this server's user made (another owner,
    /// writable by others, a symlink, a fifo or other non-regular file).
    #[error("lock file {}: not trusted: {reason}", path.display())]
    Untrusted { path: PathBuf, reason: String },
    #[error("lock file {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn fstat(fd: &impl AsRawFd) -> std::io::Result<libc::stat> {
    // SAFETY: a zeroed stat is a valid value for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a stat that lives for the call.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Why `st` is not something this user alone controls, if it is not.
fn untrusted(st: &libc::stat, kind: libc::mode_t, what: &str) -> Option<String> {
    if st.st_mode & libc::S_IFMT != kind {
        return Some(format!(
            "the {what} is not a {}",
            if kind == libc::S_IFDIR { "directory" } else { "regular file" }
        ));
    }
    if st.st_uid != euid() {
        return Some(format!("the {what} is owned by uid {}, not this server's {}", st.st_uid, euid()));
    }
    if st.st_mode & 0o022 != 0 {
        return Some(format!("the {what} is writable by other users (mode {:o})", st.st_mode & 0o7777));
    }
    None
}

/// Opens the directory `dir` (which must exist) without following a symlink, and checks it.
fn open_dir(dir: &Path, path: &Path) -> Result<OwnedFd, LockError> {
    let io = |source| LockError::Io { path: path.to_owned(), source };
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| io(std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: a NUL-terminated path and plain flags.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_RDONLY) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
            return Err(LockError::Untrusted { path: path.to_owned(), reason: "its directory is a symlink".into() });
        }
        return Err(io(e));
    }
    // SAFETY: the kernel just returned this descriptor, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = fstat(&fd).map_err(io)?;
    if let Some(reason) = untrusted(&st, libc::S_IFDIR, "directory") {
        return Err(LockError::Untrusted { path: path.to_owned(), reason });
    }
    Ok(fd)
}

/// Takes the lock at `path` (made 0600 when missing) for `what` (such as `state dir
/// /run/bulkhead`), a `kind` of resource (`state dir`, `data dir`, `cgroup prefix`), and records
/// `data_dir` as the holder's. The directory of `path` must exist (see [`lock_cgroup_prefix`]
/// for the cgroup locks' own). Never blocks: a lock another process holds is
/// [`LockError::Held`]; a file or directory another user could have made or changed is
/// [`LockError::Untrusted`].
pub fn lock(path: &Path, what: &str, kind: &'static str, data_dir: &Path) -> Result<HostLock, LockError> {
    let io = |source| LockError::Io { path: path.to_owned(), source };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io(std::io::ErrorKind::InvalidInput.into()));
    };
    let dir = open_dir(dir, path)?;
    let cname = CString::new(name.as_bytes()).map_err(|_| io(std::io::ErrorKind::InvalidInput.into()))?;
    loop {
        // SAFETY: a valid dir fd, a NUL-terminated single name, plain flags and mode.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                cname.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ELOOP) {
                return Err(LockError::Untrusted { path: path.to_owned(), reason: "it is a symlink".into() });
            }
            return Err(io(e));
        }
        // SAFETY: the kernel just returned this descriptor, owned by nothing else.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let st = fstat(&file).map_err(io)?;
        if let Some(reason) = untrusted(&st, libc::S_IFREG, "lock file") {
            return Err(LockError::Untrusted { path: path.to_owned(), reason });
        }
        // SAFETY: flock takes a descriptor this function owns and plain flags.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = (&mut file).take(4096).read_to_string(&mut text);
                let holder = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(", ");
                let holder = if holder.is_empty() { "starting".to_owned() } else { holder };
                return Err(LockError::Held { what: what.to_owned(), kind, holder });
            }
            return Err(io(e));
        }
        // The holder before may have removed the file between our open and our flock: then
        // this lock is on a file no one else will ever open. Start over on what the path names.
        let mut now: libc::stat =
            // SAFETY: a zeroed stat is a valid value for fstatat to fill.
            unsafe { std::mem::zeroed() };
        // SAFETY: a valid dir fd, a NUL-terminated name and a stat that lives for the call.
        let same = unsafe { libc::fstatat(dir.as_raw_fd(), cname.as_ptr(), &mut now, libc::AT_SYMLINK_NOFOLLOW) } == 0
            && now.st_dev == st.st_dev
            && now.st_ino == st.st_ino;
        if !same {
            continue;
        }
        let record = format!("pid {}\ndata_dir {}\n", std::process::id(), data_dir.display());
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(record.as_bytes()).map_err(io)?;
        return Ok(HostLock { file: Some(file), path: path.to_owned() });
    }
}

/// Takes the lock of cgroup prefix `prefix` (checked by the host registry: no `/`) in
/// [`CGROUP_LOCK_DIR`], made 0700 for root when missing.
pub fn lock_cgroup_prefix(prefix: &str, data_dir: &Path) -> Result<HostLock, LockError> {
    lock_cgroup_prefix_in(Path::new(CGROUP_LOCK_DIR), prefix, data_dir)
}

fn lock_cgroup_prefix_in(dir: &Path, prefix: &str, data_dir: &Path) -> Result<HostLock, LockError> {
    let path = dir.join(format!("cgroup-{prefix}.lock"));
    // Non-recursive: the parent (`/run`) is the host's, not made here.
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(LockError::Io { path, source }),
    }
    lock(&path, &format!("cgroup prefix {prefix:?}"), "cgroup prefix", data_dir)
}

use std::os::unix::fs::DirBuilderExt;

/// Who holds the lock at `path`, from what the holder wrote into it: `(pid, data dir)`, when a
/// live process holds it (a server killed with `kill -9` leaves its file behind, and its pid
/// may have been reused since). Probes with a shared `flock` that it drops at once, so a start
/// racing this probe may be refused once, as `starting`; never takes the lock for long.
pub fn holder(path: &Path) -> Option<(u32, PathBuf)> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a NUL-terminated path and plain flags.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor, owned by nothing else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    if fstat(&file).ok().is_none_or(|st| st.st_mode & libc::S_IFMT != libc::S_IFREG) {
        return None;
    }
    // SAFETY: flock takes a descriptor this function owns and plain flags.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return None; // Nobody holds it; dropping the file drops the probe.
    }
    let mut text = String::new();
    (&mut file).take(4096).read_to_string(&mut text).ok()?;
    let pid: u32 = text.lines().find_map(|l| l.strip_prefix("pid "))?.trim().parse().ok()?;
    let data_dir = text.lines().find_map(|l| l.strip_prefix("data_dir "))?.trim();
    Some((pid, PathBuf::from(data_dir)))
}

/// The lock file of cgroup prefix `prefix`.
pub fn cgroup_lock_path(prefix: &str) -> PathBuf {
    Path::new(CGROUP_LOCK_DIR).join(format!("cgroup-{prefix}.lock"))
}

/// Removes the lock file at `path` unless a live process holds it (for a purge, once the
/// server that held it is gone: a server killed with `kill -9` leaves its files behind).
pub fn remove_unheld(path: &Path) {
    if path.exists() {
        let _ = lock(path, "a purged lock", "lock", Path::new("-")).map(drop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn a_second_holder_is_refused_and_named_and_a_dropped_lock_is_free_at_once() {
        let dir = private_dir();
        let path = dir.path().join("lock");
        let first = lock(&path, "state dir /x", "state dir", Path::new("/data/one")).unwrap();
        let refused = lock(&path, "state dir /x", "state dir", Path::new("/data/two")).unwrap_err();
        let text = refused.to_string();
        assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
        assert!(text.contains("data_dir /data/one"), "{text}");
        assert!(text.contains("state dir /x"), "{text}");
        drop(first);
        assert!(!path.exists(), "a released lock's file is removed");
        let again = lock(&path, "state dir /x", "state dir", Path::new("/data/two")).unwrap();
        assert_eq!(std::fs::read_to_string(again.path()).unwrap().lines().nth(1), Some("data_dir /data/two"));
    }

    #[test]
    fn what_another_user_could_plant_is_refused() {
        let dir = private_dir();
        let path = dir.path().join("lock");
        let untrusted =
            |p: &Path| matches!(lock(p, "x", "state dir", Path::new("/d")), Err(LockError::Untrusted { .. }));
        // A symlink in place of the lock file.
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &path).unwrap();
        assert!(untrusted(&path));
        std::fs::remove_file(&path).unwrap();
        // A fifo: refused at once, never waited on.
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path and a mode.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(untrusted(&path));
        std::fs::remove_file(&path).unwrap();
        // A file others may write.
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(untrusted(&path));
        std::fs::remove_file(&path).unwrap();
        // A directory others may write (as /run/lock is), or a symlinked directory.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(untrusted(&open.join("lock")));
        assert!(matches!(lock_cgroup_prefix_in(&open, "p", Path::new("/d")), Err(LockError::Untrusted { .. })));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(untrusted(&link.join("lock")));
    }

    #[test]
    fn a_cgroup_prefix_lock_makes_its_private_directory() {
        let dir = private_dir();
        let locks = dir.path().join("locks");
        let held = lock_cgroup_prefix_in(&locks, "bulkhead-x", Path::new("/d")).unwrap();
        assert_eq!(std::fs::metadata(&locks).unwrap().permissions().mode() & 0o7777, 0o700);
        assert!(matches!(lock_cgroup_prefix_in(&locks, "bulkhead-x", Path::new("/e")), Err(LockError::Held { .. })));
        let path = locks.join("cgroup-bulkhead-x.lock");
        assert_eq!(holder(&path), Some((std::process::id(), PathBuf::from("/d"))));
        drop(held);
        assert_eq!(holder(&path), None, "a released lock has no holder");
        let again = lock_cgroup_prefix_in(&locks, "bulkhead-x", Path::new("/e")).unwrap();
        // A file left by a server killed with `kill -9` names a pid, but nobody holds it.
        drop(again);
        std::fs::write(&path, format!("pid {}\ndata_dir /dead\n", std::process::id())).unwrap();
        assert_eq!(holder(&path), None, "a stale file names nobody");
    }
}
