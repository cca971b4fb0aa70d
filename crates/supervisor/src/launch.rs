//! Starting one command, for an exec or a background process: its user resolved from the
//! sandbox's own `/etc`, its own cgroup (see [`crate::cgroup`]), a new session, stdin from
//! `/dev/null`, a pipe or a terminal. Between fork and exec the child, in this order, moves
//! itself into its cgroup (while it is still the sandbox's root, whom the cgroup's files
//! belong to), starts a session (and takes its terminal), drops to its user (setgroups,
//! setgid, setuid) and changes to its working directory as that user.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;

use crate::cgroup::{self, Group};
use crate::protocol::{Failure, FailureKind, TtySize};
use crate::reaper::Reaper;
use crate::users::{self, Credentials};

/// Where the command's stdin comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    /// `/dev/null`: the command reads EOF at once.
    Null,
    /// A pipe whose writing end the supervisor holds.
    Pipe,
}

/// What to start.
pub(crate) struct Launch<'a> {
    pub(crate) argv: &'a [String],
    pub(crate) env: &'a [(String, String)],
    pub(crate) cwd: &'a str,
    pub(crate) user: Option<&'a str>,
    pub(crate) input: Input,
    /// A terminal instead of pipes: stdin, stdout and stderr are its slave side.
    pub(crate) tty: Option<TtySize>,
    /// The cgroup's name (a process's id); an exec gets a numbered one.
    pub(crate) cgroup: Option<&'a str>,
}

/// A started command.
pub(crate) struct Launched {
    pub(crate) child: Child,
    pub(crate) pid: i32,
    /// Its wait status arrives here, from the reaper.
    pub(crate) exited: Receiver<i32>,
    pub(crate) group: Group,
    /// The terminal's master side, for a tty command.
    pub(crate) pty: Option<OwnedFd>,
}

/// Why a command did not start.
pub(crate) enum LaunchError {
    /// The request is wrong (an empty argv, an unknown user): answered as a failure.
    Refused(Failure),
    /// The program could not be run (missing, not executable): what a shell answers with
    /// status 127 (126 when not executable).
    Spawn(io::Error),
    /// The working directory could not be entered (missing, not a directory, not the user's
    /// to enter): status 126, as the OCI runtimes answer for an exec's bad cwd.
    Cwd(io::Error),
}

impl LaunchError {
    /// For a command that did not start: its exit status and the line it prints on stderr.
    /// `None` for a refused request.
    pub(crate) fn not_started(&self, program: &str, cwd: &str) -> Option<(i32, String)> {
        match self {
            LaunchError::Refused(_) => None,
            LaunchError::Spawn(e) => {
                let code = if e.kind() == io::ErrorKind::PermissionDenied { 126 } else { 127 };
                Some((code, format!("bulkhead: cannot run {program:?}: {e}\n")))
            }
            LaunchError::Cwd(e) => Some((126, format!("bulkhead: cannot enter the working directory {cwd:?}: {e}\n"))),
        }
    }
}

/// Opens a new terminal pair in the sandbox's devpts (mounted with `newinstance` at
/// `/dev/pts`): the master, and the slave's path.
fn open_pty(size: TtySize) -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: posix_openpt takes flags and returns a new fd or -1.
    // Non-blocking: a write to a terminal whose process stopped reading must not hang a thread
    // (the stdin writer waits with poll and gives up once the process has exited).
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if master < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `master` was just returned by posix_openpt and is owned by nothing else.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: grantpt and unlockpt take the master fd we own.
    if unsafe { libc::grantpt(master.as_raw_fd()) } != 0 || unsafe { libc::unlockpt(master.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes a NUL-terminated name of at most `name.len()` bytes into `name`.
    if unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `name` holds the NUL-terminated path ptsname_r wrote.
    let slave = unsafe { libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `slave` was just returned by open and is owned by nothing else.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    set_size(master.as_raw_fd(), size)?;
    Ok((master, slave))
}

/// Whether a command must set its `oom_score_adj` back to 0: the supervisor's own, which a
/// command inherits, is not 0 (the runtime sets it to -1000 from the host, right after the
/// sandbox starts and before any command is asked for), or cannot be read.
///
/// Read here, in the supervisor, rather than by every command: `/proc/self` is the
/// supervisor's own entry, which lives as long as the sandbox, while a command that opens its
/// own leaves an entry of an ended process behind in gVisor's procfs (runsc 2022-12 keeps up
/// to 1,000 of them, each about 45 KiB of its kernel's heap, charged to the sandbox's memory
/// cgroup): a small gVisor sandbox ran out of memory after a few hundred commands.
fn must_reset_oom_score() -> bool {
    match std::fs::read_to_string("/proc/self/oom_score_adj") {
        Ok(v) => v.trim() != "0",
        Err(_) => true,
    }
}

/// Sets the calling process's `oom_score_adj` to 0 (raising it needs no privilege). Runs
/// between fork and exec: only open, write and close, which are async-signal-safe.
fn reset_oom_score() -> io::Result<()> {
    // SAFETY: a NUL-terminated static path; open returns a new fd or -1.
    let fd = unsafe { libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: writes one byte from a static buffer to the fd just opened, then closes it.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let e = io::Error::last_os_error();
    // SAFETY: closes the fd opened above, once.
    unsafe { libc::close(fd) };
    if n != 1 {
        return Err(e);
    }
    Ok(())
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into a valid array of two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just returned by pipe2 and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets a terminal's size; the kernel sends SIGWINCH to its foreground process group.
pub(crate) fn set_size(master: i32, size: TtySize) -> io::Result<()> {
    let ws = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    if unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The environment bound at claim (see `Request::Bind`), which replaces the supervisor's own for
/// every command started after it.
static BOUND_ENV: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Binds the environment of every command from now on; false when one is bound already.
pub(crate) fn bind_env(env: Vec<(String, String)>) -> bool {
    BOUND_ENV.set(env).is_ok()
}

/// Resolves `user` inside the sandbox; unknown → a failure naming it.
pub(crate) fn credentials(user: Option<&str>) -> Result<Option<Credentials>, Failure> {
    match user {
        None => Ok(None),
        Some(u) => match users::resolve(u) {
            Ok(c) => Ok(Some(c)),
            Err(_) => Err(Failure::new(FailureKind::InvalidRequest, format!("unknown user {u:?}"))),
        },
    }
}

/// Starts the command.
pub(crate) fn launch(l: &Launch<'_>) -> Result<Launched, LaunchError> {
    let Some((program, args)) = l.argv.split_first() else {
        return Err(LaunchError::Refused(Failure::new(FailureKind::InvalidRequest, "cmd must not be empty")));
    };
    let creds = credentials(l.user).map_err(LaunchError::Refused)?;
    let cwd = CString::new(l.cwd.as_bytes())
        .map_err(|_| LaunchError::Refused(Failure::new(FailureKind::InvalidRequest, "cwd contains a NUL byte")))?;
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear();
    match BOUND_ENV.get() {
        Some(env) => cmd.envs(env.iter().map(|(k, v)| (k, v))),
        None => cmd.envs(std::env::vars_os()),
    };
    if let Some(c) = &creds {
        cmd.env("HOME", &c.home);
        if let Some(name) = &c.name {
            cmd.env("USER", name).env("LOGNAME", name);
        }
    }
    cmd.envs(l.env.iter().map(|(k, v)| (k, v)));

    let mut pty = None;
    let tty = l.tty.is_some();
    match l.tty {
        Some(size) => {
            let (master, slave) = open_pty(size).map_err(LaunchError::Spawn)?;
            let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(LaunchError::Spawn);
            cmd.stdin(dup(&slave)?).stdout(dup(&slave)?).stderr(Stdio::from(slave));
            pty = Some(master);
        }
        None => {
            let stdin = match l.input {
                Input::Null => Stdio::null(),
                Input::Pipe => Stdio::piped(),
            };
            cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
        }
    }

    let cg = cgroup::for_command(l.cgroup).map_err(LaunchError::Spawn)?;
    // The child writes a byte here when its chdir fails, which tells that failure from the
    // exec's (both come back from spawn as a bare errno). Close-on-exec on both ends.
    let (cwd_failed, cwd_failed_w) = pipe().map_err(LaunchError::Spawn)?;
    let cwd_failed_w_fd = cwd_failed_w.as_raw_fd();
    let procs = cg.as_ref().map(|c| c.procs_fd());
    let reset_oom = must_reset_oom_score();
    let ids = creds.as_ref().map(|c| {
        let groups: Vec<libc::gid_t> = c.groups.clone();
        (c.uid, c.gid, groups)
    });
    // SAFETY: the closure runs between fork and exec and calls only open, close, write, setsid, ioctl,
    // setgroups, setgid, setuid, chdir (and write again when it fails), all async-signal-safe syscalls, on data prepared
    // before the fork (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            // The supervisor is spared by the OOM killer (-1000); its commands are not.
            if reset_oom {
                reset_oom_score()?;
            }
            if let Some(fd) = procs {
                cgroup::join_in_child(fd)?;
            }
            // A new session: the command leads its own process group, the fallback handle on
            // its tree, and a terminal can become its controlling terminal.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some((uid, gid, groups)) = &ids {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::chdir(cwd.as_ptr()) != 0 {
                let e = io::Error::last_os_error();
                libc::write(cwd_failed_w_fd, b"c".as_ptr().cast(), 1);
                return Err(e);
            }
            Ok(())
        });
    }
    Reaper::global().spawning();
    let spawned = cmd.spawn();
    drop(cwd_failed_w);
    let exited = Reaper::global().spawned(spawned.as_ref().ok().map(|c| c.id() as i32));
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some(cg) = cg {
                Group::new(Some(cg), 0).release();
            }
            let mut byte = [0u8; 1];
            // SAFETY: a non-blocking read of at most one byte into a valid buffer; the write
            // end is closed (the child is gone and ours dropped), so it never blocks.
            let n = unsafe { libc::read(cwd_failed.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
            return Err(if n == 1 { LaunchError::Cwd(e) } else { LaunchError::Spawn(e) });
        }
    };
    let pid = child.id() as i32;
    let Some(exited) = exited else {
        return Err(LaunchError::Spawn(io::Error::other("spawned child was not tracked")));
    };
    Ok(Launched { child, pid, exited, group: Group::new(cg, pid), pty })
}
