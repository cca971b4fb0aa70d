//! The supervisor's loops: accept requests, run commands with a timeout and output caps, read
//! and write files, and reap children as PID 1.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::protocol::{self, kind, Done, ExecSpec, Exit, Failure, FailureKind, Request, CHUNK};

/// How long output is still collected after the command exited, for pipes that background
/// children keep open.
const DRAIN_GRACE: Duration = Duration::from_millis(50);

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

/// Serves requests on `listener`, reaping children, until accepting fails.
pub fn run(listener: UnixListener) -> io::Result<()> {
    let reaper = Reaper::global();
    std::thread::spawn(move || reaper.run());
    loop {
        let (conn, _) = listener.accept()?;
        let mut refusal = conn.try_clone().ok();
        // A sandbox at its pids limit (a fork bomb) cannot get a thread: refuse this request
        // and keep serving, rather than die.
        let spawned = std::thread::Builder::new().spawn(move || {
            if let Err(e) = handle(conn) {
                eprintln!("bulkhead-supervisor: request failed: {e}");
            }
        });
        if spawned.is_err() {
            if let Some(c) = refusal.as_mut() {
                let f = Failure::new(FailureKind::Io, "the sandbox is at its process limit");
                let _ = protocol::write_json(c, kind::FAILURE, &f);
            }
        }
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
        Request::Exec(spec) => exec(conn, spec),
        Request::ReadFile { path, max_bytes } => match read_file(&mut conn, &path, max_bytes) {
            Ok(bytes) => protocol::write_json(&mut conn, kind::DONE, &Done { bytes }),
            Err(f) => protocol::write_json(&mut conn, kind::FAILURE, &f),
        },
        Request::WriteFile { path, max_bytes, mode } => match write_file(&mut conn, &path, max_bytes, mode) {
            Ok(bytes) => protocol::write_json(&mut conn, kind::DONE, &Done { bytes }),
            Err(f) => protocol::write_json(&mut conn, kind::FAILURE, &f),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Reaping. As PID 1 the supervisor inherits every orphan. One thread watches all children: it
// peeks at the next exited child without reaping it (`WNOWAIT`), reaps and reports it when an
// exec waits for that pid, reaps and forgets orphans, and leaves alone a child that a spawn in
// progress may still reap itself (the standard library waits for a child whose exec failed).

#[derive(Default)]
struct ReaperState {
    /// Exec children by pid, and where their wait status goes.
    tracked: HashMap<i32, SyncSender<i32>>,
    /// Spawns in progress.
    spawning: u32,
    /// Bumped on every spawn, so the reaper wakes when children may exist again.
    generation: u64,
}

struct Reaper {
    state: Mutex<ReaperState>,
    wake: Condvar,
}

impl Reaper {
    fn global() -> &'static Reaper {
        static REAPER: OnceLock<Reaper> = OnceLock::new();
        REAPER.get_or_init(|| Reaper { state: Mutex::new(ReaperState::default()), wake: Condvar::new() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReaperState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        loop {
            let seen = self.lock().generation;
            // SAFETY: siginfo_t is plain data; zeroed is a valid value for waitid to fill.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid with a valid pointer to a local siginfo_t. WNOWAIT leaves the child
            // a zombie, so nothing is reaped here.
            let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if rc != 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                    // No children at all: sleep until the next spawn.
                    let st = self.lock();
                    let _unused = self.wake.wait_timeout_while(st, Duration::from_secs(1), |s| s.generation == seen);
                }
                continue;
            }
            // SAFETY: waitid succeeded with WEXITED, so si_pid holds the exited child's pid.
            let pid = unsafe { info.si_pid() };
            let mut st = self.lock();
            let tx = st.tracked.remove(&pid);
            if tx.is_none() && st.spawning > 0 {
                // Perhaps the child of a spawn in progress: let the spawn finish first.
                drop(st);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            drop(st);
            let mut status = 0;
            // SAFETY: waitpid on a pid known to be our exited child, with a valid pointer.
            let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if reaped == pid {
                if let Some(tx) = tx {
                    let _ = tx.send(status);
                }
            }
        }
    }

    /// Notes that a spawn begins; pair with [`Reaper::spawned`].
    fn spawning(&self) {
        self.lock().spawning += 1;
    }

    /// Ends a spawn; with the child's pid when it started, and the channel on which its wait
    /// status will arrive.
    fn spawned(&self, pid: Option<i32>) -> Option<Receiver<i32>> {
        let mut st = self.lock();
        st.spawning -= 1;
        // The child exists now (or never will): wake a reaper that found no children.
        st.generation += 1;
        self.wake.notify_all();
        let pid = pid?;
        let (tx, rx) = mpsc::sync_channel(1);
        st.tracked.insert(pid, tx);
        Some(rx)
    }
}

// ---------------------------------------------------------------------------------------------
// Exec.

fn kill_group(pgid: i32) {
    if pgid > 1 {
        // SAFETY: kill takes plain integers; a negative pid names the process group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

fn exec(mut conn: UnixStream, spec: ExecSpec) -> io::Result<()> {
    let started = Instant::now();
    let Some((program, args)) = spec.argv.split_first() else {
        let f = Failure::new(FailureKind::InvalidRequest, "cmd must not be empty");
        return protocol::write_json(&mut conn, kind::FAILURE, &f);
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(std::env::vars_os())
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs between fork and exec and calls only setsid, which is
    // async-signal-safe. A new session makes the command the leader of its own process group,
    // so a timeout can kill the whole tree it starts.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    Reaper::global().spawning();
    let spawned = cmd.spawn();
    let exited = Reaper::global().spawned(spawned.as_ref().ok().map(|c| c.id() as i32));
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            // What a shell would answer: the reason on stderr, status 127 (126 when not
            // executable).
            let code = if e.kind() == io::ErrorKind::PermissionDenied { 126 } else { 127 };
            let msg = format!("bulkhead: cannot run {program:?}: {e}\n");
            protocol::write_frame(&mut conn, kind::STDERR, msg.as_bytes())?;
            let exit = Exit {
                exit_code: Some(code),
                signal: None,
                timed_out: false,
                stdout_truncated: false,
                stderr_truncated: false,
                duration_ms: started.elapsed().as_millis() as u64,
            };
            return protocol::write_json(&mut conn, kind::EXIT, &exit);
        }
    };
    let pid = child.id() as i32;
    let Some(exited) = exited else { return Err(io::Error::other("spawned child was not tracked")) };

    // Stdin and cancellation: a thread reads the connection; data goes to the child's stdin,
    // and the connection closing early means the caller is gone, which kills the command.
    let cancelled = Arc::new(AtomicBool::new(false));
    let stdin = child.stdin.take();
    {
        let mut reader = conn.try_clone()?;
        let cancelled = cancelled.clone();
        let want_stdin = spec.stdin;
        let reader_thread = std::thread::Builder::new().spawn(move || {
            let mut stdin = if want_stdin { stdin } else { None };
            loop {
                match protocol::read_frame(&mut reader) {
                    Ok(Some((kind::DATA, data))) => {
                        if let Some(s) = stdin.as_mut() {
                            if s.write_all(&data).is_err() {
                                stdin = None;
                            }
                        }
                    }
                    Ok(Some((kind::DATA_END, _))) => stdin = None,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        cancelled.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
        });
        if reader_thread.is_err() {
            // No thread for stdin and cancellation: the sandbox is at its process limit.
            kill_group(pid);
            let f = Failure::new(FailureKind::Io, "the sandbox is at its process limit");
            return protocol::write_json(&mut conn, kind::FAILURE, &f);
        }
    }

    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let mut sent = [0u64; 2];
    let mut truncated = [false; 2];
    let deadline = started + Duration::from_millis(spec.timeout_ms);
    let mut timed_out = false;
    let mut status: Option<i32> = None;
    let mut drain_until: Option<Instant> = None;
    let mut buf = vec![0u8; CHUNK];

    loop {
        if status.is_none() {
            match exited.try_recv() {
                Ok(s) => {
                    status = Some(s);
                    drain_until = Some(Instant::now() + DRAIN_GRACE);
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => break,
            }
        }
        if cancelled.load(Ordering::SeqCst) {
            kill_group(pid);
            let _ = exited.recv_timeout(Duration::from_secs(5));
            return Ok(());
        }
        if status.is_none() && !timed_out && Instant::now() >= deadline {
            timed_out = true;
            kill_group(pid);
        }
        let open: Vec<RawFd> =
            [out.as_ref().map(|o| o.as_raw_fd()), err.as_ref().map(|e| e.as_raw_fd())].into_iter().flatten().collect();
        if open.is_empty() {
            if status.is_some() {
                break;
            }
            // Output closed but the command still runs: wait for its exit or the deadline.
            let wait = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            match exited.recv_timeout(wait.min(Duration::from_millis(100))) {
                Ok(s) => status = Some(s),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            continue;
        }
        if let Some(until) = drain_until {
            if Instant::now() >= until {
                break;
            }
        }
        let mut fds: Vec<libc::pollfd> =
            open.iter().map(|fd| libc::pollfd { fd: *fd, events: libc::POLLIN, revents: 0 }).collect();
        // SAFETY: `fds` is a valid array of pollfd of the given length for the call's duration.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
        if n <= 0 {
            continue;
        }
        for p in &fds {
            if p.revents == 0 {
                continue;
            }
            let (slot, pipe): (usize, &mut dyn Read) = match (&mut out, &mut err) {
                (Some(o), _) if o.as_raw_fd() == p.fd => (0, o),
                (_, Some(e)) if e.as_raw_fd() == p.fd => (1, e),
                _ => continue,
            };
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => {
                    if slot == 0 {
                        out = None;
                    } else {
                        err = None;
                    }
                }
                Ok(n) => {
                    let room = spec.max_output_bytes.saturating_sub(sent[slot]) as usize;
                    let take = n.min(room);
                    if take < n {
                        truncated[slot] = true;
                    }
                    if take > 0 {
                        let k = if slot == 0 { kind::STDOUT } else { kind::STDERR };
                        if protocol::write_frame(&mut conn, k, &buf[..take]).is_err() {
                            cancelled.store(true, Ordering::SeqCst);
                        }
                        sent[slot] += take as u64;
                    }
                }
            }
        }
    }
    // Pipes still held by background children are closed here; they get EPIPE on write.
    drop(out);
    drop(err);
    let status = match status {
        Some(s) => s,
        None => exited.recv_timeout(Duration::from_secs(5)).unwrap_or(0),
    };
    let (exit_code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    let exit = Exit {
        exit_code,
        signal,
        timed_out,
        stdout_truncated: truncated[0],
        stderr_truncated: truncated[1],
        duration_ms: started.elapsed().as_millis() as u64,
    };
    protocol::write_json(&mut conn, kind::EXIT, &exit)
}

// ---------------------------------------------------------------------------------------------
// Files. Paths are resolved by the kernel inside the sandbox's own root: `..` and symlinks end
// at the sandbox's `/`, never outside.

fn read_file(conn: &mut UnixStream, path: &str, max_bytes: u64) -> Result<u64, Failure> {
    if !path.starts_with('/') {
        return Err(Failure::new(FailureKind::InvalidRequest, "path must be absolute"));
    }
    let mut file = fs::File::open(path).map_err(|e| Failure::from_io(path, &e))?;
    let meta = file.metadata().map_err(|e| Failure::from_io(path, &e))?;
    if !meta.is_file() {
        return Err(Failure::new(FailureKind::NotAFile, format!("{path}: not a regular file")));
    }
    if meta.len() > max_bytes {
        return Err(Failure::new(
            FailureKind::TooLarge,
            format!("{path}: {} bytes is over the {max_bytes} byte limit", meta.len()),
        ));
    }
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| Failure::from_io(path, &e))?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total > max_bytes {
            return Err(Failure::new(FailureKind::TooLarge, format!("{path}: grew past the {max_bytes} byte limit")));
        }
        protocol::write_frame(conn, kind::FILE_DATA, &buf[..n]).map_err(|e| Failure::from_io("connection", &e))?;
    }
}

fn write_file(conn: &mut UnixStream, path: &str, max_bytes: u64, mode: u32) -> Result<u64, Failure> {
    let target = Path::new(path);
    if !path.starts_with('/') || target.file_name().is_none() {
        return Err(Failure::new(FailureKind::InvalidRequest, "path must be an absolute file path"));
    }
    let dir = target.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(|e| Failure::from_io(&dir.display().to_string(), &e))?;
    if target.is_dir() {
        return Err(Failure::new(FailureKind::NotAFile, format!("{path}: is a directory")));
    }
    let tmp = dir.join(format!(".bulkhead-upload-{}", std::process::id() ^ (Instant::now().elapsed().subsec_nanos())));
    let tmp_name = tmp.display().to_string();
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Failure::from_io(path, &e))?;
    let result = (|| {
        let mut total = 0u64;
        loop {
            match protocol::read_frame(conn) {
                Ok(Some((kind::DATA, data))) => {
                    total += data.len() as u64;
                    if total > max_bytes {
                        return Err(Failure::new(
                            FailureKind::TooLarge,
                            format!("{path}: over the {max_bytes} byte limit"),
                        ));
                    }
                    file.write_all(&data).map_err(|e| Failure::from_io(path, &e))?;
                }
                Ok(Some((kind::DATA_END, _))) => break,
                Ok(Some(_)) => return Err(Failure::new(FailureKind::InvalidRequest, "unexpected frame")),
                Ok(None) | Err(_) => {
                    return Err(Failure::new(FailureKind::Io, "connection closed before the end of the data"))
                }
            }
        }
        file.sync_all().map_err(|e| Failure::from_io(path, &e))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode & 0o777)).map_err(|e| Failure::from_io(path, &e))?;
        fs::rename(&tmp, target).map_err(|e| Failure::from_io(path, &e))?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(total)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp_name);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{read_frame, write_frame, write_json};

    fn start() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || run(listener));
        (dir, sock)
    }

    fn exec_collect(sock: &Path, spec: ExecSpec, stdin: Option<&[u8]>) -> (Vec<u8>, Vec<u8>, Exit) {
        let mut c = UnixStream::connect(sock).unwrap();
        write_json(&mut c, kind::REQUEST, &Request::Exec(spec)).unwrap();
        if let Some(data) = stdin {
            write_frame(&mut c, kind::DATA, data).unwrap();
            write_frame(&mut c, kind::DATA_END, &[]).unwrap();
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            let (k, p) = read_frame(&mut c).unwrap().unwrap();
            match k {
                kind::STDOUT => out.extend(p),
                kind::STDERR => err.extend(p),
                kind::EXIT => return (out, err, serde_json::from_slice(&p).unwrap()),
                other => panic!("unexpected frame {other}"),
            }
        }
    }

    fn spec(argv: &[&str]) -> ExecSpec {
        ExecSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: "/".into(),
            timeout_ms: 10_000,
            max_output_bytes: 1 << 20,
            stdin: false,
        }
    }

    #[test]
    fn exec_output_stdin_exit_codes() {
        let (_d, sock) = start();
        let (out, _, exit) = exec_collect(&sock, spec(&["sh", "-c", "echo out; echo err >&2; exit 3"]), None);
        assert_eq!(out, b"out\n");
        assert_eq!(exit.exit_code, Some(3));
        let mut s = spec(&["cat"]);
        s.stdin = true;
        let (out, _, exit) = exec_collect(&sock, s, Some(b"hello"));
        assert_eq!(out, b"hello");
        assert_eq!(exit.exit_code, Some(0));
        let (_, err, exit) = exec_collect(&sock, spec(&["/no/such/binary"]), None);
        assert_eq!(exit.exit_code, Some(127));
        assert!(String::from_utf8_lossy(&err).contains("cannot run"));
        let (_, _, exit) = exec_collect(&sock, spec(&["sh", "-c", "kill -9 $$"]), None);
        assert_eq!(exit.signal, Some(9));
    }

    #[test]
    fn timeout_kills_the_process_group_and_caps_truncate() {
        let (_d, sock) = start();
        let mut s = spec(&["sh", "-c", "sleep 30 & sleep 30; echo never"]);
        s.timeout_ms = 300;
        let t = Instant::now();
        let (out, _, exit) = exec_collect(&sock, s, None);
        assert!(exit.timed_out);
        assert!(out.is_empty());
        assert!(t.elapsed() < Duration::from_secs(20));
        let mut s = spec(&["sh", "-c", "head -c 100000 /dev/zero"]);
        s.max_output_bytes = 1000;
        let (out, _, exit) = exec_collect(&sock, s, None);
        assert_eq!(out.len(), 1000);
        assert!(exit.stdout_truncated);
        assert_eq!(exit.exit_code, Some(0));
    }

    #[test]
    fn files_round_trip_and_limits_hold() {
        let (dir, sock) = start();
        let path = dir.path().join("sub/dir/f.txt").display().to_string();
        let mut c = UnixStream::connect(&sock).unwrap();
        write_json(&mut c, kind::REQUEST, &Request::WriteFile { path: path.clone(), max_bytes: 100, mode: 0o4755 })
            .unwrap();
        write_frame(&mut c, kind::DATA, b"content").unwrap();
        write_frame(&mut c, kind::DATA_END, &[]).unwrap();
        assert_eq!(read_frame(&mut c).unwrap().unwrap().0, kind::DONE);
        assert_eq!(fs::read(&path).unwrap(), b"content");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o755, "setuid bits are dropped");

        let mut c = UnixStream::connect(&sock).unwrap();
        write_json(&mut c, kind::REQUEST, &Request::ReadFile { path: path.clone(), max_bytes: 3 }).unwrap();
        let (k, p) = read_frame(&mut c).unwrap().unwrap();
        assert_eq!(k, kind::FAILURE);
        assert_eq!(serde_json::from_slice::<Failure>(&p).unwrap().kind, FailureKind::TooLarge);

        let mut c = UnixStream::connect(&sock).unwrap();
        write_json(&mut c, kind::REQUEST, &Request::WriteFile { path: path.clone(), max_bytes: 4, mode: 0o644 })
            .unwrap();
        write_frame(&mut c, kind::DATA, b"too long").unwrap();
        let (k, _) = read_frame(&mut c).unwrap().unwrap();
        assert_eq!(k, kind::FAILURE);
        assert_eq!(fs::read(&path).unwrap(), b"content", "a failed write leaves the old content");
    }
}
