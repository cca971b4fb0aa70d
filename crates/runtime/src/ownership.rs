//! Exclusive ownership of a server's host directories and cgroup prefix.
//!
//! One `bulkhead serve` owns a data dir, a state dir and a cgroup prefix: a second server on any
//! of them would reconcile the first one's sandboxes as orphans, kill them and unmount its
//! filesystems. Each is therefore held by an exclusive `flock(2)` on a lock file, taken at start
//! with `LOCK_NB` and held by an open descriptor for the life of the process:
//! - `<data-dir>/lock`, `<state-dir>/lock`;
//! - `/run/lock/bulkhead/cgroup-<prefix>.lock` for the cgroup prefix (cgroups are host-global).
//!
//! The kernel drops an `flock` with the last descriptor of its open file, so a server killed
//! with `kill -9` holds nothing and its restart takes the locks at once; there is no stale lock
//! to clean up and no pid to guess. The holder writes `pid <pid>` and `data_dir <path>` into
//! the file it holds, so a refused start names who holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the locks of cgroup prefixes live: host-global, like the prefixes, and gone at reboot
/// with the cgroups they guard.
pub const CGROUP_LOCK_DIR: &str = "/run/lock/bulkhead";

/// An exclusive lock held until dropped.
#[derive(Debug)]
pub struct HostLock {
    _file: File,
    path: PathBuf,
}

impl HostLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it; `holder` is what that process wrote (its pid and data
    /// dir), or empty when it has not written it yet.
    #[error("{what} is in use by another bulkhead server ({holder}); one server owns a {kind} at a time")]
    Held { what: String, kind: &'static str, holder: String },
    #[error("lock file {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Takes the lock at `path` (made 0600 when missing) for `what` (such as `state dir
/// /run/bulkhead`), a `kind` of resource (`state dir`, `data dir`, `cgroup prefix`), and records
/// `data_dir` as the holder's. Never blocks: a lock another process holds is
/// [`LockError::Held`].
pub fn lock(path: &Path, what: &str, kind: &'static str, data_dir: &Path) -> Result<HostLock, LockError> {
    let io = |source| LockError::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).create(dir).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    // SAFETY: flock takes a descriptor this function owns and plain flags.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut text = String::new();
            let _ = file.take(4096).read_to_string(&mut text);
            let holder = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(", ");
            let holder = if holder.is_empty() { "starting".to_owned() } else { holder };
            return Err(LockError::Held { what: what.to_owned(), kind, holder });
        }
        return Err(io(e));
    }
    let record = format!("pid {}\ndata_dir {}\n", std::process::id(), data_dir.display());
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(record.as_bytes()).map_err(io)?;
    Ok(HostLock { _file: file, path: path.to_owned() })
}

/// Removes the lock file at `path` unless a live process holds it (for a purge, once the
/// server that held it is gone).
pub fn remove_unheld(path: &Path) {
    let Ok(file) = OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW).open(path) else {
        return;
    };
    // SAFETY: flock takes a descriptor this function owns and plain flags.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        let _ = std::fs::remove_file(path);
    }
}

/// The lock file of cgroup prefix `prefix` (checked by the host registry: no `/`).
pub fn cgroup_lock_path(prefix: &str) -> PathBuf {
    Path::new(CGROUP_LOCK_DIR).join(format!("cgroup-{prefix}.lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_named_and_a_dropped_lock_is_free_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = lock(&path, "state dir /x", "state dir", Path::new("/data/one")).unwrap();
        let refused = lock(&path, "state dir /x", "state dir", Path::new("/data/two")).unwrap_err();
        let text = refused.to_string();
        assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
        assert!(text.contains("data_dir /data/one"), "{text}");
        assert!(text.contains("state dir /x"), "{text}");
        drop(first);
        let again = lock(&path, "state dir /x", "state dir", Path::new("/data/two")).unwrap();
        assert_eq!(std::fs::read_to_string(again.path()).unwrap().lines().nth(1), Some("data_dir /data/two"));
    }

    #[test]
    fn a_symlink_in_place_of_the_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &path).unwrap();
        assert!(matches!(lock(&path, "x", "state dir", Path::new("/d")), Err(LockError::Io { .. })));
    }
}
