//! The supervisor's loops: accept requests, run commands with a timeout and output caps, read
//! and write files, and reap children as PID 1.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use crate::exec::exec;
use crate::protocol::{self, kind, Done, Failure, FailureKind, Request};
use crate::reaper::Reaper;

/// Serves requests on the listening socket inherited as `fd`, with every command in a cgroup of
/// its own under the delegated cgroup directory inherited as `cgroup_fd` (see the `cgroup`
/// module; without one, commands are grouped by process group only). Never returns on success.
///
/// First of all the supervisor makes itself non-dumpable (`PR_SET_DUMPABLE` 0): its
/// `/proc/1/fd/*` (the delegated cgroup directory, the listening socket, every command's
/// cgroup and pipes), `/proc/1/mem`, `/proc/1/environ`, `/proc/1/root` and `ptrace` of it then
/// need `CAP_SYS_PTRACE`, which no command has. Without it any command running as the
/// sandbox's root could reopen fd 4 and move itself out of its own cgroup, or walk up to the
/// namespace's other sandboxes. A command's `execve` makes it dumpable again, so its own
/// `/proc/self` stays as usual.
pub fn serve_fds(fd: RawFd, cgroup_fd: Option<RawFd>) -> io::Result<()> {
    make_undumpable()?;
    if let Some(c) = cgroup_fd {
        crate::cgroup::adopt(c)?;
    }
    serve_fd(fd)
}

/// Serves requests on a socket it binds at `path` itself, for OCI runtimes that hand no
/// descriptor to the sandbox (gVisor's `runsc`, whose gofer creates the socket on the host
/// through the bind-mounted control directory). Made non-dumpable first, as [`serve_fds`]; no
/// delegated cgroup: commands are grouped by process group. A file left at `path` by an earlier
/// supervisor of the same sandbox is replaced. Never returns on success.
///
/// Under gVisor, before anything else: `/proc` is mounted afresh with a cache of at most
/// [`PROC_DENTRY_CACHE`] unused entries (see [`small_proc_cache`]), and `CAP_SYS_ADMIN`, which
/// the runtime gives the supervisor for that alone, is dropped from every capability set and
/// the bounding set; an error if it cannot be, so no command ever has it.
pub fn serve_path(path: &std::path::Path) -> io::Result<()> {
    make_undumpable()?;
    if let Err(e) = small_proc_cache() {
        eprintln!("bulkhead-supervisor: /proc keeps gVisor's default cache: {e}");
    }
    drop_capability(CAP_SYS_ADMIN)?;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Only the sandbox's root reaches the directory (0700): the socket keeps its default mode
    // (gVisor's gofer refuses a chmod of a host socket).
    run(UnixListener::bind(path)?)
}

/// The most unused entries gVisor's procfs keeps cached, as mounted by [`small_proc_cache`].
const PROC_DENTRY_CACHE: u32 = 64;

/// Mounts gVisor's procfs at `/proc` over the runtime's, the same but for its cache of unused
/// entries: at most [`PROC_DENTRY_CACHE`] (`dentry_cache_limit`, gVisor's own mount option;
/// runsc gives the runtime's `/proc` its default, 1,000, and takes no option for it). Each
/// entry of an ended process, `/proc/<pid>` with its files, holds about 0.13 MiB of gVisor's
/// kernel, charged to the sandbox's memory: with 1,000 of them, commands that read
/// `/proc/<pid>` of short-lived processes (`ps` in a loop, or any program that reads
/// `/proc/self`) grew a sandbox by some 180 MiB. `nosuid,nodev,noexec`, as the runtime's.
fn small_proc_cache() -> io::Result<()> {
    let data = std::ffi::CString::new(format!("dentry_cache_limit={PROC_DENTRY_CACHE}"))
        .map_err(|_| io::Error::other("a NUL byte in mount data"))?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: NUL-terminated strings that outlive the call; mount reads them and keeps nothing.
    let rc = unsafe { libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), flags, data.as_ptr().cast()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `CAP_SYS_ADMIN`'s number (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;

/// `_LINUX_CAPABILITY_VERSION_3` (linux/capability.h): two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`, one 32-bit word of each set.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops capability `cap` from this process's bounding set (so no program it runs regains it)
/// and from its effective, permitted and inheritable sets; then checks that it is gone.
fn drop_capability(cap: u32) -> io::Result<()> {
    // SAFETY: PR_CAPBSET_DROP takes a capability number and changes only this thread's
    // bounding set; a capability the set lacks is no error.
    if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
    let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes one header and two data structs, which these are.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    data[word].effective &= !bit;
    data[word].permitted &= !bit;
    data[word].inheritable &= !bit;
    // SAFETY: capset reads one header and two data structs, which these are.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: PR_CAPBSET_READ takes a capability number and only reads.
    let bounded = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) };
    let mut check = [CapData::default(); 2];
    // SAFETY: as for the capget above.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, check.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let held = check[word].effective | check[word].permitted | check[word].inheritable;
    if bounded != 0 || held & bit != 0 {
        return Err(io::Error::other(format!("capability {cap} is still held")));
    }
    Ok(())
}

/// Makes this process non-dumpable (see [`serve_fds`]).
fn make_undumpable() -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes a plain integer argument and changes only this process.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Serves requests on the listening socket inherited as `fd`. Never returns on success.
pub fn serve_fd(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD only inspects the descriptor table; an invalid fd yields -1/EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("no listening socket on fd {fd}")));
    }
    // SAFETY: as above; marking the fd close-on-exec keeps commands from inheriting it.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the runtime hands the supervisor exactly one listening Unix socket at this fd and
    // nothing else in this process owns it.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    run(listener)
}

/// Serves requests on `listener`, reaping children, until the listener itself is broken.
///
/// An accept that fails for want of a resource (descriptors, memory: what the sandbox's own
/// processes can use up) or for a peer that went away is retried after a pause: the
/// supervisor is the sandbox's PID 1, and its exit would end the sandbox.
pub fn run(listener: UnixListener) -> io::Result<()> {
    Reaper::start();
    loop {
        let conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if is_transient(&e) => {
                eprintln!("bulkhead-supervisor: accept: {e}; retrying");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(e),
        };
        let refusal = conn.try_clone().ok();
        // A sandbox at its pids limit (a fork bomb) cannot get a thread: refuse this request
        // and keep serving, rather than die.
        let spawned = std::thread::Builder::new().spawn(move || {
            if let Err(e) = handle(conn) {
                eprintln!("bulkhead-supervisor: request failed: {e}");
            }
        });
        if spawned.is_err() {
            if let Some(c) = refusal {
                without_a_thread(c);
            }
        }
    }
}

/// Whether an `accept` error passes: anything but a listener that is not (or no longer) a
/// listening socket.
fn is_transient(e: &io::Error) -> bool {
    !matches!(e.raw_os_error(), Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP))
}

/// Serves a request when no thread can be had (the sandbox is at its pids limit, as under a
/// fork bomb): a signal to a process is answered here, on the accepting thread, since killing
/// a process's cgroup needs no new process; anything else is refused.
fn without_a_thread(mut conn: UnixStream) {
    let refuse = |conn: &mut UnixStream| {
        let f = Failure::new(FailureKind::Io, "the sandbox is at its process limit");
        let _ = protocol::write_json(conn, kind::FAILURE, &f);
    };
    // The server sends its request at once; a peer that does not is not waited for long.
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    match protocol::read_frame(&mut conn) {
        Ok(Some((kind::REQUEST, payload))) => match serde_json::from_slice::<Request>(&payload) {
            Ok(request @ Request::Signal { .. }) => {
                let _ = conn.set_read_timeout(None);
                if let Err(e) = crate::process::handle(&mut conn, request) {
                    eprintln!("bulkhead-supervisor: request failed: {e}");
                }
            }
            _ => refuse(&mut conn),
        },
        _ => refuse(&mut conn),
    }
}

fn handle(mut conn: UnixStream) -> io::Result<()> {
    let Some((k, payload)) = protocol::read_frame(&mut conn)? else { return Ok(()) };
    if k != kind::REQUEST {
        let f = Failure::new(FailureKind::InvalidRequest, "the first frame must be a request");
        return protocol::write_json(&mut conn, kind::FAILURE, &f);
    }
    let request: Request = match serde_json::from_slice(&payload) {
        Ok(r) => r,
        Err(e) => {
            let f = Failure::new(FailureKind::InvalidRequest, format!("bad request: {e}"));
            return protocol::write_json(&mut conn, kind::FAILURE, &f);
        }
    };
    match request {
        Request::Ping => protocol::write_json(&mut conn, kind::DONE, &Done { bytes: 0 }),
        Request::Bind { env } => {
            if crate::launch::bind_env(env) {
                protocol::write_json(&mut conn, kind::DONE, &Done { bytes: 0 })
            } else {
                let f = Failure::new(FailureKind::InvalidRequest, "the sandbox's environment is bound already");
                protocol::write_json(&mut conn, kind::FAILURE, &f)
            }
        }
        Request::Exec(spec) => exec(conn, spec),
        // File requests run on this thread, which ends with the request: a `user` changes
        // this thread's credentials only (see `files`).
        request @ (Request::ReadFile { .. } | Request::WriteFile { .. } | Request::ListDir { .. }) => {
            crate::files::serve(&mut conn, request)
        }
        request @ (Request::Spawn(_)
        | Request::List
        | Request::Get { .. }
        | Request::Output { .. }
        | Request::Stdin { .. }
        | Request::Signal { .. }
        | Request::Resize { .. }) => crate::process::handle(&mut conn, request),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::os::unix::net::UnixListener;

    pub(crate) fn start() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || super::run(listener));
        (dir, sock)
    }
}
