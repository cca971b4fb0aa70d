//! Exec: runs one command with a timeout and output caps, streams its output on the request's
//! connection, feeds it the stdin that arrives there, and kills it when the caller goes away.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::launch::{self, Input, Launch, LaunchError, Launched};
use crate::protocol::{self, kind, ExecSpec, Exit, Failure, FailureKind, CHUNK};

/// How long output is still collected after the command exited, for pipes that background
/// children keep open.
const DRAIN_GRACE: Duration = Duration::from_millis(50);

pub(crate) fn exec(mut conn: UnixStream, spec: ExecSpec) -> io::Result<()> {
    let started = Instant::now();
    let launch = Launch {
        argv: &spec.argv,
        env: &spec.env,
        cwd: &spec.cwd,
        user: spec.user.as_deref(),
        input: if spec.stdin { Input::Pipe } else { Input::Null },
        tty: None,
        cgroup: None,
    };
    let Launched { mut child, exited, group, .. } = match launch::launch(&launch) {
        Ok(l) => l,
        Err(LaunchError::Refused(f)) => return protocol::write_json(&mut conn, kind::FAILURE, &f),
        Err(e) => {
            // What a shell would answer: the reason on stderr, status 127 (126 when not
            // executable, or when the working directory cannot be entered).
            let program = spec.argv.first().map(String::as_str).unwrap_or_default();
            let Some((code, msg)) = e.not_started(program, &spec.cwd) else {
                return Err(io::Error::other("a refused launch"));
            };
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

    // Stdin and cancellation: with stdin, a thread reads the connection; data goes to the
    // child's stdin, and the connection closing early means the caller is gone, which kills
    // the command. Without stdin the loop below watches the connection itself (no thread to
    // start per exec): anything the caller sends is dropped, as the thread would drop it.
    let cancelled = Arc::new(AtomicBool::new(false));
    let stdin = child.stdin.take();
    let watch_conn = !spec.stdin;
    if spec.stdin {
        let mut reader = conn.try_clone()?;
        let cancelled = cancelled.clone();
        let reader_thread = std::thread::Builder::new().spawn(move || {
            let mut stdin = stdin;
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
            group.kill();
            group.release();
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
            // The caller is gone: the command and everything it started end.
            group.kill();
            let _ = exited.recv_timeout(Duration::from_secs(5));
            group.release();
            return Ok(());
        }
        if status.is_none() && !timed_out && Instant::now() >= deadline {
            timed_out = true;
            group.kill();
        }
        let open: Vec<RawFd> =
            [out.as_ref().map(|o| o.as_raw_fd()), err.as_ref().map(|e| e.as_raw_fd())].into_iter().flatten().collect();
        if open.is_empty() {
            if status.is_some() {
                break;
            }
            if watch_conn && caller_gone(conn.as_raw_fd()) {
                cancelled.store(true, Ordering::SeqCst);
                continue;
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
        if watch_conn {
            fds.push(libc::pollfd { fd: conn.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        // SAFETY: `fds` is a valid array of pollfd of the given length for the call's duration.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
        if n <= 0 {
            continue;
        }
        for p in &fds {
            if p.revents == 0 {
                continue;
            }
            if watch_conn && p.fd == conn.as_raw_fd() {
                if caller_gone(p.fd) {
                    cancelled.store(true, Ordering::SeqCst);
                }
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
    if timed_out {
        // Descendants that outlived the command (a setsid or double-forked child) end too.
        group.kill();
    }
    // Background children of a command that exited by itself keep running; the cgroup goes
    // once they are gone.
    group.release();
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

/// Without stdin: reads (and drops) whatever the caller sent on the connection at `fd`,
/// without blocking; true once the caller closed it or it broke.
fn caller_gone(fd: RawFd) -> bool {
    let mut scratch = [0u8; 512];
    // Bounded: a caller that keeps sending is looked at again on the next round.
    for _ in 0..64 {
        // SAFETY: a non-blocking recv of at most `scratch.len()` bytes into a valid buffer.
        let n = unsafe { libc::recv(fd, scratch.as_mut_ptr().cast(), scratch.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            continue;
        }
        if n == 0 {
            return true;
        }
        return !matches!(io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR));
    }
    false
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use crate::protocol::{kind, read_frame, write_frame, write_json, ExecSpec, Exit, Request};
    use crate::supervisor::testing::start;

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
            user: None,
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
        // A missing working directory is named as such, not blamed on the program.
        let mut s = spec(&["pwd"]);
        s.cwd = "/no/such/dir".into();
        let (_, err, exit) = exec_collect(&sock, s, None);
        assert_eq!(exit.exit_code, Some(126));
        assert_eq!(
            String::from_utf8_lossy(&err),
            "bulkhead: cannot enter the working directory \"/no/such/dir\": No such file or directory (os error 2)\n"
        );
        let (_, _, exit) = exec_collect(&sock, spec(&["sh", "-c", "kill -9 $$"]), None);
        assert_eq!(exit.signal, Some(9));
    }

    #[test]
    fn no_stdin_is_eof_at_once() {
        let (_d, sock) = start();
        // Without stdin, `cat` reads EOF at once and exits 0 (it would hang on an open pipe).
        let mut s = spec(&["cat"]);
        s.timeout_ms = 20_000;
        let (out, _, exit) = exec_collect(&sock, s, None);
        assert_eq!((out.as_slice(), exit.exit_code, exit.timed_out), (&b""[..], Some(0), false));
        let (out, _, exit) = exec_collect(&sock, spec(&["sh", "-c", "ls -l /proc/self/fd/0"]), None);
        assert!(String::from_utf8_lossy(&out).contains("/dev/null"), "{}", String::from_utf8_lossy(&out));
        assert_eq!(exit.exit_code, Some(0));
    }

    #[test]
    fn an_unknown_user_is_refused_by_name() {
        let (_d, sock) = start();
        let mut s = spec(&["id"]);
        s.user = Some("no-such-user-xyz".into());
        let mut c = UnixStream::connect(&sock).unwrap();
        write_json(&mut c, kind::REQUEST, &Request::Exec(s)).unwrap();
        let (k, p) = read_frame(&mut c).unwrap().unwrap();
        assert_eq!(k, kind::FAILURE);
        let f: crate::protocol::Failure = serde_json::from_slice(&p).unwrap();
        assert_eq!(f.kind, crate::protocol::FailureKind::InvalidRequest);
        assert_eq!(f.message, "unknown user \"no-such-user-xyz\"");
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
}
