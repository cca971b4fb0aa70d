//! Starting a program from the server without copying the server: `posix_spawnp(3)`, which
//! glibc implements with `clone(CLONE_VM | CLONE_VFORK)`, so the child runs in the server's
//! memory until it execs and nothing of the server's address space (its page tables, its
//! copy-on-write pages) is duplicated. A `fork` of a large, many-threaded server costs
//! milliseconds on a sandbox's start, and its copy-on-write faults slow the server after it;
//! this is what a sandbox's OCI runtime is started with.
//!
//! The child gets exactly the descriptors it is given, at the numbers it is given them (every
//! other descriptor of the server is close-on-exec), the server's environment, an empty signal
//! mask and every signal at its default disposition, as `std::process::Command` gives its
//! children. Its exit is awaited on a pidfd (`pidfd_open(2)`), on the event loop.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;

/// The lowest descriptor number a source descriptor is copied to before the spawn, above every
/// target, so that placing one descriptor never overwrites another's source.
const SOURCES_FROM: RawFd = 10;

/// A spawned child process, killed (`SIGKILL`) and reaped if dropped before [`Spawned::wait`]
/// returned (a timeout, a cancelled request), as `tokio::process::Command::kill_on_drop`.
pub(crate) struct Spawned {
    pid: libc::pid_t,
    pidfd: Option<AsyncFd<OwnedFd>>,
    reaped: bool,
}

/// Spawns `program` (looked up on `PATH` as `execvp` does) with `args` (without the program
/// name, which becomes `argv[0]`), the descriptors `fds` as `(source, target)` pairs (targets
/// distinct; at least 0, 1 and 2 should be among them), the server's environment, and, when
/// `nice` is set, that nice value from its first instruction on (the spawning thread's own, set
/// on a short-lived thread, which the child inherits). Returns once the child has exec'd the
/// program. Errors: a source cannot be duplicated, the program is not found or cannot be
/// executed (`posix_spawnp`'s error), or the nice value cannot be set.
pub(crate) fn spawn(
    program: &OsStr,
    args: &[&OsStr],
    fds: &[(BorrowedFd<'_>, RawFd)],
    nice: Option<i32>,
) -> std::io::Result<Spawned> {
    let invalid = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let path = CString::new(program.as_bytes()).map_err(invalid)?;
    let mut argv_owned = Vec::with_capacity(args.len() + 1);
    argv_owned.push(path.clone());
    for a in args {
        argv_owned.push(CString::new(a.as_bytes()).map_err(invalid)?);
    }
    let envp_owned: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    // Every source above every target, close-on-exec, owned here until the spawn is done.
    let sources = fds
        .iter()
        .map(|(fd, _)| {
            // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new one or -1.
            let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, SOURCES_FROM) };
            if copy < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: the kernel just returned this descriptor, owned by nothing else.
            Ok(unsafe { OwnedFd::from_raw_fd(copy) })
        })
        .collect::<std::io::Result<Vec<OwnedFd>>>()?;
    let placements: Vec<(RawFd, RawFd)> =
        sources.iter().zip(fds).map(|(source, (_, target))| (source.as_raw_fd(), *target)).collect();
    let run = move || spawn_now(&path, &argv_owned, &envp_owned, &placements);
    let pid = match nice {
        None => run()?,
        Some(nice) => std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: plain integers; `who` 0 is the calling thread, which ends after this
                // spawn, so its nice value is nobody else's.
                if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                run()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the spawning thread panicked")))
        })?,
    };
    drop(sources);
    let mut spawned = Spawned { pid, pidfd: None, reaped: false };
    // The child is not reaped until `wait` does it, so its pid cannot name another process.
    let pidfd = crate::watch::pidfd_open(pid).ok_or_else(std::io::Error::last_os_error)?;
    // SAFETY: the pidfd is owned by the AsyncFd from here on and closed only when it is dropped.
    let registered = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) };
    spawned.pidfd = Some(registered.map_err(std::io::Error::from)?);
    Ok(spawned)
}

/// The spawn itself: `posix_spawnp` with the file actions that place each descriptor, an empty
/// signal mask and every signal at its default. Returns the child's pid.
fn spawn_now(
    path: &CString,
    argv: &[CString],
    envp: &[CString],
    placements: &[(RawFd, RawFd)],
) -> std::io::Result<libc::pid_t> {
    let mut argv_ptrs: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut envp_ptrs: Vec<*mut libc::c_char> = envp.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp_ptrs.push(std::ptr::null_mut());
    let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(std::io::Error::from_raw_os_error(r)) };
    // SAFETY: each structure is initialised before use and destroyed on every path after it;
    // the strings and pointer arrays outlive the posix_spawnp call, which copies what the child
    // needs before it returns (the child has exec'd or failed by then).
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        if let Err(e) = check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(e);
        }
        let result = (|| {
            for (source, target) in placements {
                check(libc::posix_spawn_file_actions_adddup2(&mut actions, *source, *target))?;
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            check(libc::posix_spawnattr_setsigmask(&mut attr, &empty))?;
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            check(libc::posix_spawnattr_setsigdefault(&mut attr, &all))?;
            let flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(&mut attr, flags as libc::c_short))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawnp(
                &mut pid,
                path.as_ptr(),
                &actions,
                &attr,
                argv_ptrs.as_ptr(),
                envp_ptrs.as_ptr(),
            ))?;
            Ok(pid)
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        result
    }
}

impl Spawned {
    /// Waits for the child to exit and reaps it. Cancel-safe: dropping the future leaves the
    /// child to this value's drop.
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let Some(pidfd) = &self.pidfd else {
            return Err(std::io::Error::other("the child was already reaped"));
        };
        loop {
            let mut ready = pidfd.readable().await?;
            if let Some(status) = try_reap(self.pid)? {
                self.reaped = true;
                return Ok(status);
            }
            ready.clear_ready();
        }
    }
}

/// Reaps the child `pid` if it has exited.
fn try_reap(pid: libc::pid_t) -> std::io::Result<Option<ExitStatus>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid of this process's own child, which only its `Spawned` reaps;
        // `status` lives for the call.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(Some(ExitStatus::from_raw(status)));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let pid = self.pid;
        // SAFETY: kill of this process's own unreaped child, whose pid no other process can
        // have until it is reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // Reaped off the event loop: a killed child is gone within moments, but not at once.
        std::thread::spawn(move || {
            let mut status: libc::c_int = 0;
            // SAFETY: a blocking waitpid of this process's own unreaped child.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    fn pipe() -> (std::fs::File, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors on success.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both were just returned by the kernel.
        unsafe { (std::fs::File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[tokio::test]
    async fn places_descriptors_and_reports_the_exit_status() {
        let (mut out, out_w) = pipe();
        let (mut extra, extra_w) = pipe();
        let null = std::fs::File::open("/dev/null").unwrap();
        // The child writes to fd 1 and to fd 4, which it got from a descriptor of another number.
        let mut child = spawn(
            OsStr::new("sh"),
            &[OsStr::new("-c"), OsStr::new("echo out; echo four >&4; [ -e /proc/$$/fd/3 ] && echo three; exit 7")],
            &[(null.as_fd(), 0), (out_w.as_fd(), 1), (out_w.as_fd(), 2), (extra_w.as_fd(), 4)],
            None,
        )
        .unwrap();
        drop((out_w, extra_w));
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(7));
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        let mut four = String::new();
        extra.read_to_string(&mut four).unwrap();
        assert_eq!(four, "four\n");
        // Fd 3, not given, is not open in the child.
        assert_eq!(text, "out\n");
    }

    #[tokio::test]
    async fn the_nice_value_is_the_childs_from_its_start() {
        let (mut out, out_w) = pipe();
        let null = std::fs::File::open("/dev/null").unwrap();
        let mut child = spawn(
            OsStr::new("sh"),
            &[OsStr::new("-c"), OsStr::new("cut -d' ' -f19 /proc/self/stat")],
            &[(null.as_fd(), 0), (out_w.as_fd(), 1), (out_w.as_fd(), 2)],
            Some(7),
        )
        .unwrap();
        drop(out_w);
        assert!(child.wait().await.unwrap().success());
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        assert_eq!(text.trim(), "7");
        // The spawning thread was not this one: this thread's nice value is unchanged.
        // SAFETY: plain integers.
        assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, 0);
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error_and_a_dropped_child_is_killed() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let stdio = [(null.as_fd(), 0), (null.as_fd(), 1), (null.as_fd(), 2)];
        assert!(spawn(OsStr::new("/nonexistent/program"), &[], &stdio, None).is_err());
        let child = spawn(OsStr::new("sleep"), &[OsStr::new("600")], &stdio, None).unwrap();
        let pidfd = crate::watch::pidfd_open(child.pid).unwrap();
        drop(child);
        // The pidfd becomes readable once the killed child has exited.
        // SAFETY: the pidfd is owned by the AsyncFd from here on.
        let fd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }.unwrap();
        let ready = tokio::time::timeout(std::time::Duration::from_secs(30), fd.readable()).await;
        assert!(ready.is_ok(), "the dropped child still runs");
    }
}
