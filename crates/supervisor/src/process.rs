//! Background processes: a table keyed by the server's id (`prc_…`). Each process runs in its
//! own cgroup like an exec, with pipes or a terminal; a thread per process reads its output into
//! a bounded buffer of numbered events ([`MAX_RETAINED_BYTES`] per process, oldest dropped
//! first), and another waits for its exit (and its timeout). Output is followed from any
//! sequence number still retained. A finished process stays listed for [`KEEP_FINISHED`], at
//! most [`MAX_FINISHED`] of them.
//!
//! Stdin of a tty process goes to the terminal's master side; its `eof` sends the terminal's EOF
//! character (VEOF, normally ^D), which ends a read at the start of a line in canonical mode:
//! closing the master instead would hang up the terminal (SIGHUP to the whole session) and lose
//! the output still to come.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::cgroup::Group;
use crate::launch::{self, Input, Launch, LaunchError, Launched};
use crate::protocol::{
    self, kind, Done, Failure, FailureKind, OutputStreamKind, ProcessInfo, ProcessSpec, ProcessStatus, TtySize, CHUNK,
};

/// Output bytes retained per process; older events are dropped first.
pub const MAX_RETAINED_BYTES: usize = 8 << 20;
/// Output bytes retained by all processes of the sandbox together at most: the supervisor is
/// PID 1 and its memory is the sandbox's, so this is also at most an eighth of the sandbox's
/// memory limit (see [`retention_budget`]).
pub const MAX_RETAINED_TOTAL: usize = 64 << 20;
/// How long a finished process stays in the table.
pub const KEEP_FINISHED: Duration = Duration::from_secs(600);
/// Finished processes kept at most; the oldest go first.
pub const MAX_FINISHED: usize = 64;
/// How long output is still read after the process exited, for what its pipes still hold.
const DRAIN_GRACE: Duration = Duration::from_millis(50);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The retained output of one process.
pub(crate) struct Output {
    events: VecDeque<(u64, OutputStreamKind, Arc<Vec<u8>>)>,
    bytes: usize,
    last_seq: u64,
    limit: usize,
    /// The bytes retained by every process of the table, this one's included.
    total: Arc<AtomicUsize>,
}

impl Drop for Output {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Output {
    #[cfg(test)]
    fn with_limit(limit: usize) -> Output {
        Output::counted(limit, &Arc::default())
    }

    fn counted(limit: usize, total: &Arc<AtomicUsize>) -> Output {
        Output { events: VecDeque::new(), bytes: 0, last_seq: 0, limit, total: total.clone() }
    }

    /// Drops the oldest event, keeping at least `keep`; the bytes it freed.
    fn drop_oldest(&mut self, keep: usize) -> usize {
        if self.events.len() <= keep {
            return 0;
        }
        let Some((_, _, d)) = self.events.pop_front() else { return 0 };
        self.bytes -= d.len();
        self.total.fetch_sub(d.len(), Ordering::Relaxed);
        d.len()
    }

    /// Appends an event and drops the oldest ones past the limit (the newest always stays).
    pub(crate) fn push(&mut self, stream: OutputStreamKind, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        self.last_seq += 1;
        self.bytes += data.len();
        self.total.fetch_add(data.len(), Ordering::Relaxed);
        self.events.push_back((self.last_seq, stream, Arc::new(data)));
        while self.bytes > self.limit && self.drop_oldest(1) > 0 {}
    }

    /// Retained events with `seq > after`.
    pub(crate) fn since(&self, after: u64) -> Vec<(u64, OutputStreamKind, Arc<Vec<u8>>)> {
        let start = self.events.partition_point(|e| e.0 <= after);
        self.events.iter().skip(start).cloned().collect()
    }
}

struct State {
    info: ProcessInfo,
    output: Output,
    /// When it finished, for retention.
    ended: Option<Instant>,
}

pub(crate) struct Process {
    state: Mutex<State>,
    changed: Condvar,
    /// Where stdin goes: the pipe, or a copy of the terminal's master. `None` once closed.
    stdin: Mutex<Option<File>>,
    /// The terminal's master, for resizes.
    pty: Option<OwnedFd>,
    group: Mutex<Option<Group>>,
}

impl Process {
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut lock(&self.state));
        self.changed.notify_all();
    }

    fn info(&self) -> ProcessInfo {
        lock(&self.state).info.clone()
    }
}

pub(crate) struct Table {
    processes: Arc<Mutex<HashMap<String, Arc<Process>>>>,
    /// Output bytes retained by all processes together, and the most they may hold.
    retained: Arc<AtomicUsize>,
    budget: usize,
}

impl Default for Table {
    fn default() -> Table {
        Table::with_budget(retention_budget(memory_limit()))
    }
}

/// The sandbox's memory limit in bytes, read from its own cgroup (v2 `memory.max`, v1
/// `memory.limit_in_bytes`); `None` when unlimited or unreadable.
fn memory_limit() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .filter(|l| *l < 1 << 60)
}

/// What all processes' output may hold together: [`MAX_RETAINED_TOTAL`], and at most an
/// eighth of the sandbox's memory limit `limit`.
pub fn retention_budget(limit: Option<u64>) -> usize {
    match limit {
        Some(l) => MAX_RETAINED_TOTAL.min((l / 8) as usize),
        None => MAX_RETAINED_TOTAL,
    }
}

/// Brings the output retained by all of `processes` under `budget`: the oldest events of
/// finished processes go first (the longest finished first), then the oldest events of the
/// running process that holds the most (each keeps its newest event).
fn enforce_budget(processes: &Mutex<HashMap<String, Arc<Process>>>, retained: &AtomicUsize, budget: usize) {
    if retained.load(Ordering::Relaxed) <= budget {
        return;
    }
    let all: Vec<Arc<Process>> = lock(processes).values().cloned().collect();
    let mut finished: Vec<(Instant, &Arc<Process>)> =
        all.iter().filter_map(|p| lock(&p.state).ended.map(|e| (e, p))).collect();
    finished.sort_by_key(|(e, _)| *e);
    for (_, p) in finished {
        let mut st = lock(&p.state);
        while retained.load(Ordering::Relaxed) > budget && st.output.drop_oldest(0) > 0 {}
        if retained.load(Ordering::Relaxed) <= budget {
            return;
        }
    }
    while retained.load(Ordering::Relaxed) > budget {
        let largest = all.iter().max_by_key(|p| lock(&p.state).output.bytes);
        let Some(p) = largest else { return };
        if lock(&p.state).output.drop_oldest(1) == 0 {
            return;
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Signal numbers a process may be sent: the standard ones and the real-time range, not the
/// two the C library keeps for itself (32, 33) and not 0.
pub fn valid_signal(signal: i32) -> bool {
    (1..=31).contains(&signal) || (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal)
}

impl Table {
    pub(crate) fn global() -> &'static Table {
        static TABLE: OnceLock<Table> = OnceLock::new();
        TABLE.get_or_init(Table::default)
    }

    /// A table whose processes retain at most `budget` output bytes together. Its processes'
    /// exits are reported by the process's one reaping thread, started here if it is not yet.
    pub(crate) fn with_budget(budget: usize) -> Table {
        crate::reaper::Reaper::start();
        Table { processes: Arc::default(), retained: Arc::default(), budget }
    }

    fn get(&self, id: &str) -> Result<Arc<Process>, Failure> {
        lock(&self.processes)
            .get(id)
            .cloned()
            .ok_or_else(|| Failure::new(FailureKind::NotFound, format!("process {id} not found")))
    }

    /// Forgets finished processes past their retention.
    fn prune(&self) {
        let mut table = lock(&self.processes);
        let mut finished: Vec<(Instant, String)> =
            table.iter().filter_map(|(id, p)| lock(&p.state).ended.map(|e| (e, id.clone()))).collect();
        finished.sort();
        let excess = finished.len().saturating_sub(MAX_FINISHED);
        for (i, (ended, id)) in finished.iter().enumerate() {
            if i < excess || ended.elapsed() >= KEEP_FINISHED {
                table.remove(id);
            }
        }
    }

    pub(crate) fn list(&self) -> Vec<ProcessInfo> {
        self.prune();
        let mut out: Vec<ProcessInfo> = lock(&self.processes).values().map(|p| p.info()).collect();
        out.sort_by(|a, b| a.started_at_ms.cmp(&b.started_at_ms).then_with(|| a.id.cmp(&b.id)));
        out
    }

    pub(crate) fn info(&self, id: &str) -> Result<ProcessInfo, Failure> {
        self.prune();
        Ok(self.get(id)?.info())
    }

    /// Starts a process and returns its first state.
    pub(crate) fn spawn(&self, spec: ProcessSpec) -> Result<ProcessInfo, Failure> {
        self.spawn_with_limit(spec, MAX_RETAINED_BYTES.min(self.budget))
    }

    pub(crate) fn spawn_with_limit(&self, spec: ProcessSpec, limit: usize) -> Result<ProcessInfo, Failure> {
        if !valid_id(&spec.id) {
            return Err(Failure::new(FailureKind::InvalidRequest, format!("bad process id {:?}", spec.id)));
        }
        if let Some(t) = spec.tty {
            if t.rows == 0 || t.cols == 0 {
                return Err(Failure::new(FailureKind::InvalidRequest, "a terminal needs at least one row and column"));
            }
        }
        self.prune();
        if lock(&self.processes).contains_key(&spec.id) {
            return Err(Failure::new(FailureKind::InvalidRequest, format!("process {} exists", spec.id)));
        }
        let launch = Launch {
            argv: &spec.argv,
            env: &spec.env,
            cwd: &spec.cwd,
            user: spec.user.as_deref(),
            input: Input::Pipe,
            tty: spec.tty,
            cgroup: Some(&spec.id),
        };
        let mut info = ProcessInfo {
            id: spec.id.clone(),
            argv: shown_argv(&spec.argv),
            pid: 0,
            status: ProcessStatus::Running,
            exit_code: None,
            signal: None,
            timed_out: false,
            tty: spec.tty.is_some(),
            user: spec.user.clone(),
            started_at_ms: now_ms(),
            ended_at_ms: None,
        };
        let started = Instant::now();
        let launched = match launch::launch(&launch) {
            Ok(l) => l,
            Err(LaunchError::Refused(f)) => return Err(f),
            Err(e) => {
                // As an exec answers: the reason as output, status 127 (126 when not executable
                // or when the working directory cannot be entered).
                let program = spec.argv.first().map(String::as_str).unwrap_or_default();
                let Some((code, message)) = e.not_started(program, &spec.cwd) else {
                    return Err(Failure::new(FailureKind::Io, "a refused launch"));
                };
                let stream = if spec.tty.is_some() { OutputStreamKind::Pty } else { OutputStreamKind::Stderr };
                let mut output = Output::counted(limit, &self.retained);
                output.push(stream, message.into_bytes());
                info.status = ProcessStatus::Exited;
                info.exit_code = Some(code);
                info.ended_at_ms = Some(now_ms());
                let process = Process {
                    state: Mutex::new(State { info: info.clone(), output, ended: Some(Instant::now()) }),
                    changed: Condvar::new(),
                    stdin: Mutex::new(None),
                    pty: None,
                    group: Mutex::new(None),
                };
                lock(&self.processes).insert(spec.id, Arc::new(process));
                return Ok(info);
            }
        };
        let Launched { mut child, pid, exited, group, pty } = launched;
        info.pid = pid;
        let (stdin, readers): (Option<File>, Vec<(File, OutputStreamKind)>) = match &pty {
            Some(master) => {
                let copy = |m: &OwnedFd| m.try_clone().map(File::from);
                match (copy(master), copy(master)) {
                    (Ok(w), Ok(r)) => (Some(w), vec![(r, OutputStreamKind::Pty)]),
                    (Err(e), _) | (_, Err(e)) => {
                        group.kill();
                        group.release();
                        return Err(Failure::from_io("open the terminal", &e));
                    }
                }
            }
            None => {
                let mut readers = Vec::new();
                if let Some(o) = child.stdout.take() {
                    readers.push((File::from(OwnedFd::from(o)), OutputStreamKind::Stdout));
                }
                if let Some(e) = child.stderr.take() {
                    readers.push((File::from(OwnedFd::from(e)), OutputStreamKind::Stderr));
                }
                (child.stdin.take().map(|s| File::from(OwnedFd::from(s))), readers)
            }
        };
        let process = Arc::new(Process {
            state: Mutex::new(State {
                info: info.clone(),
                output: Output::counted(limit, &self.retained),
                ended: None,
            }),
            changed: Condvar::new(),
            stdin: Mutex::new(stdin),
            pty,
            group: Mutex::new(Some(group)),
        });
        lock(&self.processes).insert(spec.id.clone(), process.clone());

        // The reader: output into the buffer until every stream ends or the waiter says stop.
        let (stop_r, stop_w) = pipe().map_err(|e| Failure::from_io("pipe", &e))?;
        let reader = {
            let process = process.clone();
            let budget = (self.processes.clone(), self.retained.clone(), self.budget);
            std::thread::Builder::new().spawn(move || {
                read_output(&process, readers, stop_r, &|| enforce_budget(&budget.0, &budget.1, budget.2))
            })
        };
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                if let Some(g) = lock(&process.group).as_ref() {
                    g.kill();
                }
                return Err(Failure::from_io("the sandbox is at its process limit", &e));
            }
        };
        let deadline = spec.timeout_ms.map(|t| started + Duration::from_millis(t));
        let waiter = {
            let process = process.clone();
            std::thread::Builder::new().spawn(move || {
                let mut timed_out = false;
                let status = loop {
                    let wait = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    let got = match wait {
                        Some(w) if !timed_out => exited.recv_timeout(w),
                        _ => exited.recv().map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
                    };
                    match got {
                        Ok(s) => break Some(s),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            timed_out = true;
                            if let Some(g) = lock(&process.group).as_ref() {
                                g.kill();
                            }
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
                    }
                };
                // Whatever the pipes still hold, then stop reading (background children may
                // keep them open).
                let drain_until = Instant::now() + DRAIN_GRACE;
                while !reader.is_finished() && Instant::now() < drain_until {
                    std::thread::sleep(Duration::from_millis(2));
                }
                let _ = (&stop_w).write_all(b"x");
                let _ = reader.join();
                drop(child);
                let group = lock(&process.group).take();
                if let Some(g) = group {
                    if timed_out {
                        g.kill();
                    }
                    g.release();
                }
                // Stdin of a process that is gone is closed: writers get an error, not a hang.
                // A writer still blocked on a full pipe (a background child holds its other end)
                // keeps the lock; it ends on its own, and the exit is not held up by it.
                if let Ok(mut stdin) = process.stdin.try_lock() {
                    *stdin = None;
                }
                process.update(|st| {
                    let status = status.unwrap_or(0);
                    if libc::WIFEXITED(status) {
                        st.info.exit_code = Some(libc::WEXITSTATUS(status));
                    } else if libc::WIFSIGNALED(status) {
                        st.info.signal = Some(libc::WTERMSIG(status));
                    }
                    st.info.timed_out = timed_out;
                    st.info.status = ProcessStatus::Exited;
                    st.info.ended_at_ms = Some(now_ms());
                    st.ended = Some(Instant::now());
                });
            })
        };
        if let Err(e) = waiter {
            if let Some(g) = lock(&process.group).as_ref() {
                g.kill();
            }
            return Err(Failure::from_io("the sandbox is at its process limit", &e));
        }
        Ok(info)
    }

    /// Streams output events after `after` on `conn`, then the final state.
    pub(crate) fn follow(&self, conn: &mut UnixStream, id: &str, after: u64) -> io::Result<()> {
        let process = match self.get(id) {
            Ok(p) => p,
            Err(f) => return protocol::write_json(conn, kind::FAILURE, &f),
        };
        // At once, so the caller's stream opens before the process prints anything.
        protocol::write_json(conn, kind::FOLLOWING, &process.info())?;
        let mut last = after;
        loop {
            let (events, done) = {
                let mut st = lock(&process.state);
                loop {
                    let events = st.output.since(last);
                    let done = st.info.status == ProcessStatus::Exited;
                    if !events.is_empty() || done {
                        break (events, done.then(|| st.info.clone()));
                    }
                    let (next, _) =
                        process.changed.wait_timeout(st, Duration::from_secs(1)).unwrap_or_else(|e| e.into_inner());
                    st = next;
                    if peer_gone(conn) {
                        return Ok(());
                    }
                }
            };
            for (seq, stream, data) in events {
                protocol::write_frame(conn, kind::OUTPUT, &protocol::encode_output(seq, stream, &data))?;
                last = seq;
            }
            if let Some(info) = done {
                // Events that arrived with the exit were sent above; nothing comes after.
                let rest = lock(&process.state).output.since(last);
                for (seq, stream, data) in rest {
                    protocol::write_frame(conn, kind::OUTPUT, &protocol::encode_output(seq, stream, &data))?;
                }
                return protocol::write_json(conn, kind::PROCESS, &info);
            }
        }
    }

    /// Writes the data frames on `conn` to the process's stdin; closes it at the end when `eof`.
    pub(crate) fn stdin(&self, conn: &mut UnixStream, id: &str, eof: bool) -> Result<u64, Failure> {
        let process = self.get(id)?;
        let tty = process.pty.is_some();
        let mut written = 0u64;
        let mut guard = lock(&process.stdin);
        loop {
            match protocol::read_frame(conn) {
                Ok(Some((kind::DATA, data))) => {
                    let Some(w) = guard.as_mut() else {
                        return Err(Failure::new(FailureKind::InvalidRequest, format!("stdin of {id} is closed")));
                    };
                    if let Err(e) = write_until_exit(w, &data, &process) {
                        *guard = None;
                        // A process that exited mid-write (its pipe broke, its terminal hung up,
                        // or it never read again) is a conflict, like a signal to it.
                        if e.kind() == io::ErrorKind::WouldBlock || lock(&process.state).ended.is_some() {
                            return Err(Failure::new(FailureKind::Exited, format!("process {id} has exited")));
                        }
                        return Err(Failure::from_io(&format!("stdin of {id}"), &e));
                    }
                    written += data.len() as u64;
                }
                Ok(Some((kind::DATA_END, _))) => break,
                Ok(Some((other, _))) => {
                    return Err(Failure::new(FailureKind::InvalidRequest, format!("unexpected frame kind {other}")));
                }
                // The caller went away before the end: stdin stays open for a later write.
                Ok(None) | Err(_) => return Ok(written),
            }
        }
        if eof {
            if tty {
                if let Some(w) = guard.as_mut() {
                    let veof = terminal_eof(w.as_raw_fd());
                    write_until_exit(w, &[veof], &process)
                        .map_err(|e| Failure::from_io(&format!("stdin of {id}"), &e))?;
                }
            } else {
                *guard = None;
            }
        }
        Ok(written)
    }

    pub(crate) fn signal(&self, id: &str, signal: i32) -> Result<(), Failure> {
        if !valid_signal(signal) {
            return Err(Failure::new(FailureKind::InvalidRequest, format!("unknown signal {signal}")));
        }
        let process = self.get(id)?;
        let exited = || Failure::new(FailureKind::Exited, format!("process {id} has exited"));
        if lock(&process.state).ended.is_some() {
            return Err(exited());
        }
        let group = lock(&process.group);
        // Finished: the pid may be another process's by now, so nothing is sent.
        let Some(g) = group.as_ref() else { return Err(exited()) };
        if signal == libc::SIGKILL {
            g.kill();
        } else {
            // SAFETY: kill takes plain integers; the process is ours and not yet reaped (its
            // group is taken only after its exit), so the pid is still its.
            if unsafe { libc::kill(g.pid, signal) } != 0 {
                let e = io::Error::last_os_error();
                // Reaped, its group not yet taken: it is exiting.
                if e.raw_os_error() == Some(libc::ESRCH) {
                    return Err(exited());
                }
                return Err(Failure::from_io(&format!("signal {id}"), &e));
            }
        }
        Ok(())
    }

    pub(crate) fn resize(&self, id: &str, size: TtySize) -> Result<(), Failure> {
        let process = self.get(id)?;
        let Some(master) = &process.pty else {
            return Err(Failure::new(FailureKind::InvalidRequest, format!("process {id} has no terminal")));
        };
        if size.rows == 0 || size.cols == 0 {
            return Err(Failure::new(FailureKind::InvalidRequest, "a terminal needs at least one row and column"));
        }
        launch::set_size(master.as_raw_fd(), size).map_err(|e| Failure::from_io(&format!("resize {id}"), &e))
    }
}

/// The terminal's EOF character (VEOF), ^D when it cannot be read.
fn terminal_eof(fd: RawFd) -> u8 {
    // SAFETY: termios is plain data; zeroed is a valid value for tcgetattr to fill.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr fills `t` from a terminal fd we hold.
    if unsafe { libc::tcgetattr(fd, &mut t) } == 0 && t.c_cc[libc::VEOF] != 0 {
        t.c_cc[libc::VEOF]
    } else {
        4
    }
}

/// Writes all of `data` to a process's stdin. A pipe blocks as usual (its reader's exit ends a
/// write with `EPIPE`); a terminal's master is non-blocking, so a process that stops reading
/// is waited for with `poll`, and once it has exited the write ends with `WouldBlock`.
fn write_until_exit(w: &mut File, mut data: &[u8], process: &Process) -> io::Result<()> {
    while !data.is_empty() {
        match w.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if lock(&process.state).ended.is_some() {
                    return Err(e);
                }
                let mut p = libc::pollfd { fd: w.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                // SAFETY: one valid pollfd for the call's duration; at most 100 ms.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The argv a process is listed with: at most [`SHOWN_ARGS`] arguments of at most
/// [`SHOWN_ARG_BYTES`] bytes each (cut on a character boundary, marked with `…`), so that every
/// answer about processes stays far below a frame's bound whatever argv they were started with
/// (up to the kernel's `ARG_MAX`).
fn shown_argv(argv: &[String]) -> Vec<String> {
    let mut shown: Vec<String> = argv
        .iter()
        .take(SHOWN_ARGS)
        .map(|a| {
            if a.len() <= SHOWN_ARG_BYTES {
                return a.clone();
            }
            let mut end = SHOWN_ARG_BYTES;
            while !a.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &a[..end])
        })
        .collect();
    if argv.len() > SHOWN_ARGS {
        shown.push(format!("… {} more", argv.len() - SHOWN_ARGS));
    }
    shown
}

/// Arguments of a listed argv.
const SHOWN_ARGS: usize = 32;
/// Bytes of each listed argument.
const SHOWN_ARG_BYTES: usize = 256;

/// Whether the other end of `conn` closed (the caller stopped following).
fn peer_gone(conn: &UnixStream) -> bool {
    let mut p = libc::pollfd { fd: conn.as_raw_fd(), events: libc::POLLIN | libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd for the call's duration; a zero timeout does not block.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds into a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both fds were just made by pipe2 and are owned by nothing else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Reads the process's streams into its buffer until all end, or `stop` becomes readable (then
/// what is readable at once is taken, and no more).
fn read_output(process: &Process, mut streams: Vec<(File, OutputStreamKind)>, stop: File, trim: &dyn Fn()) {
    let mut buf = vec![0u8; CHUNK];
    let mut stopping = false;
    while !streams.is_empty() {
        let mut fds: Vec<libc::pollfd> =
            streams.iter().map(|(f, _)| libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        fds.push(libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        let timeout = if stopping { 0 } else { -1 };
        // SAFETY: `fds` is a valid array of pollfd of the given length for the call's duration.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if n == 0 && stopping {
            return;
        }
        if fds.last().is_some_and(|p| p.revents != 0) {
            stopping = true;
        }
        let mut closed = Vec::new();
        for (i, p) in fds[..streams.len()].iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            let (f, stream) = &mut streams[i];
            match f.read(&mut buf) {
                // A terminal's master is non-blocking: nothing to read after all.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                // A terminal's master reads EIO once no process holds its slave.
                Ok(0) | Err(_) => closed.push(i),
                Ok(k) => {
                    let data = buf[..k].to_vec();
                    let stream = *stream;
                    process.update(|st| st.output.push(stream, data));
                    trim();
                }
            }
        }
        for i in closed.into_iter().rev() {
            streams.remove(i);
        }
    }
}

/// Answers a request about processes on `conn`.
pub(crate) fn handle(conn: &mut UnixStream, request: crate::protocol::Request) -> io::Result<()> {
    use crate::protocol::Request;
    let table = Table::global();
    let done = |conn: &mut UnixStream, r: Result<u64, Failure>| match r {
        Ok(bytes) => protocol::write_json(conn, kind::DONE, &Done { bytes }),
        Err(f) => protocol::write_json(conn, kind::FAILURE, &f),
    };
    match request {
        Request::Spawn(spec) => match table.spawn(spec) {
            Ok(info) => protocol::write_json(conn, kind::PROCESS, &info),
            Err(f) => protocol::write_json(conn, kind::FAILURE, &f),
        },
        Request::List => protocol::write_json(conn, kind::PROCESSES, &table.list()),
        Request::Get { id } => match table.info(&id) {
            Ok(info) => protocol::write_json(conn, kind::PROCESS, &info),
            Err(f) => protocol::write_json(conn, kind::FAILURE, &f),
        },
        Request::Output { id, after } => table.follow(conn, &id, after),
        Request::Stdin { id, eof } => {
            let r = table.stdin(conn, &id, eof);
            done(conn, r)
        }
        Request::Signal { id, signal } => {
            let r = table.signal(&id, signal).map(|()| 0);
            done(conn, r)
        }
        Request::Resize { id, rows, cols } => {
            let r = table.resize(&id, TtySize { rows, cols }).map(|()| 0);
            done(conn, r)
        }
        other => {
            let f = Failure::new(FailureKind::InvalidRequest, format!("not a process request: {other:?}"));
            protocol::write_json(conn, kind::FAILURE, &f)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::protocol::{read_frame, write_frame};

    fn spec(id: &str, argv: &[&str]) -> ProcessSpec {
        ProcessSpec {
            id: id.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: "/".into(),
            user: None,
            tty: None,
            timeout_ms: Some(60_000),
        }
    }

    /// Follows `id` from `after` to its exit: the events and the final state.
    fn follow(table: &Table, id: &str, after: u64) -> (Vec<(u64, OutputStreamKind, Vec<u8>)>, ProcessInfo) {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| table.follow(&mut ours, id, after).unwrap());
            let mut events = Vec::new();
            loop {
                let (k, p) = read_frame(&mut theirs).unwrap().unwrap();
                match k {
                    kind::FOLLOWING => assert!(events.is_empty(), "the first frame"),
                    kind::OUTPUT => events.push(protocol::decode_output(p).unwrap()),
                    kind::PROCESS => return (events, serde_json::from_slice(&p).unwrap()),
                    other => panic!("frame {other}: {}", String::from_utf8_lossy(&p)),
                }
            }
        })
    }

    fn bytes(events: &[(u64, OutputStreamKind, Vec<u8>)], stream: OutputStreamKind) -> Vec<u8> {
        events.iter().filter(|e| e.1 == stream).flat_map(|e| e.2.clone()).collect()
    }

    /// Streams `data` to the process's stdin as the server does: data frames, then the end.
    fn write_stdin(table: &Table, id: &str, data: &[u8], eof: bool) -> Result<u64, Failure> {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        std::thread::scope(|s| {
            let writer = s.spawn(move || {
                for chunk in data.chunks(CHUNK) {
                    if write_frame(&mut theirs, kind::DATA, chunk).is_err() {
                        return;
                    }
                }
                let _ = write_frame(&mut theirs, kind::DATA_END, &[]);
            });
            let r = table.stdin(&mut ours, id, eof);
            drop(ours);
            writer.join().unwrap();
            r
        })
    }

    #[test]
    fn stdin_to_a_terminal_that_never_reads_ends_when_its_process_does() {
        let table = Table::default();
        let mut s = spec("prc_w1", &["sleep", "1"]);
        s.tty = Some(TtySize { rows: 24, cols: 80 });
        table.spawn(s).unwrap();
        // Far more complete lines than a terminal buffers: the write can only end by the exit.
        let e = write_stdin(&table, "prc_w1", &b"a\n".repeat(1 << 19), false).unwrap_err();
        assert_eq!(e.kind, FailureKind::Exited, "{}", e.message);
        assert!(e.message.contains("prc_w1"), "{}", e.message);
    }

    #[test]
    fn a_listed_argv_is_bounded() {
        let long = "é".repeat(1000);
        let argv: Vec<String> = std::iter::repeat_n(long.clone(), 40).collect();
        let shown = shown_argv(&argv);
        assert_eq!(shown.len(), SHOWN_ARGS + 1);
        assert!(shown[0].ends_with('…') && shown[0].len() <= SHOWN_ARG_BYTES + '…'.len_utf8());
        assert_eq!(shown[SHOWN_ARGS], "… 8 more");
        assert_eq!(shown_argv(&["sh".into(), "-c".into()]), ["sh", "-c"]);
    }

    #[test]
    fn the_table_lists_gets_and_refuses() {
        let table = Table::default();
        let info = table.spawn(spec("prc_t1", &["sh", "-c", "echo out; echo err >&2; exit 3"])).unwrap();
        assert_eq!(info.status, ProcessStatus::Running);
        assert!(info.pid > 0);
        let (events, end) = follow(&table, "prc_t1", 0);
        assert_eq!(bytes(&events, OutputStreamKind::Stdout), b"out\n");
        assert_eq!(bytes(&events, OutputStreamKind::Stderr), b"err\n");
        assert_eq!((end.status, end.exit_code, end.signal), (ProcessStatus::Exited, Some(3), None));
        assert!(end.ended_at_ms.is_some());
        assert_eq!(table.info("prc_t1").unwrap(), end);
        assert_eq!(table.list(), vec![end]);

        let e = table.info("prc_none").unwrap_err();
        assert_eq!(e.kind, FailureKind::NotFound);
        assert!(e.message.contains("prc_none"));
        let e = table.spawn(spec("prc_t1", &["true"])).unwrap_err();
        assert_eq!(e.kind, FailureKind::InvalidRequest, "an id in use");
        let e = table.spawn(spec("../x", &["true"])).unwrap_err();
        assert_eq!(e.kind, FailureKind::InvalidRequest, "an id that is no cgroup name");
        let e = table.spawn(spec("prc_t2", &[])).unwrap_err();
        assert_eq!(e.kind, FailureKind::InvalidRequest);
        let mut s = spec("prc_t3", &["true"]);
        s.user = Some("no-such-user-xyz".into());
        assert_eq!(table.spawn(s).unwrap_err().message, "unknown user \"no-such-user-xyz\"");
        // A program that cannot run: listed as exited with 127 and the reason as output.
        table.spawn(spec("prc_t4", &["/no/such/program"])).unwrap();
        let (events, end) = follow(&table, "prc_t4", 0);
        assert_eq!(end.exit_code, Some(127));
        assert!(String::from_utf8_lossy(&bytes(&events, OutputStreamKind::Stderr)).contains("cannot run"));
        let mut s = spec("prc_t5", &["pwd"]);
        s.cwd = "/no/such/dir".into();
        table.spawn(s).unwrap();
        let (events, end) = follow(&table, "prc_t5", 0);
        assert_eq!(end.exit_code, Some(126));
        let err = String::from_utf8_lossy(&bytes(&events, OutputStreamKind::Stderr)).into_owned();
        assert!(err.starts_with("bulkhead: cannot enter the working directory \"/no/such/dir\""), "{err}");
    }

    #[test]
    fn all_processes_together_retain_at_most_the_budget() {
        assert_eq!(retention_budget(Some(128 << 20)), 16 << 20, "an eighth of the sandbox's memory");
        assert_eq!(retention_budget(Some(4 << 30)), MAX_RETAINED_TOTAL);
        assert_eq!(retention_budget(None), MAX_RETAINED_TOTAL);
        let table = Table::with_budget(256 << 10);
        let print = |id: &str| spec(id, &["sh", "-c", "head -c 204800 /dev/zero"]);
        table.spawn(print("prc_b1")).unwrap();
        let (first, _) = follow(&table, "prc_b1", 0);
        assert_eq!(bytes(&first, OutputStreamKind::Stdout).len(), 204800);
        table.spawn(print("prc_b2")).unwrap();
        let (second, _) = follow(&table, "prc_b2", 0);
        assert_eq!(bytes(&second, OutputStreamKind::Stdout).len(), 204800, "the newest keeps its own");
        assert!(table.retained.load(Ordering::Relaxed) <= 256 << 10);
        // The finished one gave up its oldest events first.
        let (left, _) = follow(&table, "prc_b1", 0);
        let kept = bytes(&left, OutputStreamKind::Stdout).len();
        assert!(kept <= (256 << 10) - 204800, "{kept}");
        assert_eq!(follow(&table, "prc_b2", 0).0, second, "the running one lost nothing");
    }

    #[test]
    fn signals_are_checked_and_delivered() {
        let table = Table::default();
        table.spawn(spec("prc_s1", &["sleep", "60"])).unwrap();
        for bad in [0, -1, 32, 33, 65, 1000] {
            assert_eq!(table.signal("prc_s1", bad).unwrap_err().kind, FailureKind::InvalidRequest, "{bad}");
        }
        assert_eq!(table.signal("prc_nope", 15).unwrap_err().kind, FailureKind::NotFound);
        table.signal("prc_s1", libc::SIGTERM).unwrap();
        let (_, end) = follow(&table, "prc_s1", 0);
        assert_eq!(end.signal, Some(libc::SIGTERM));
        // A finished process is not signalled again (its pid may be another's): it has exited.
        for sig in [libc::SIGKILL, libc::SIGTERM] {
            let e = table.signal("prc_s1", sig).unwrap_err();
            assert_eq!((e.kind, e.message.as_str()), (FailureKind::Exited, "process prc_s1 has exited"));
        }
        // A timeout ends it, and says so.
        let mut s = spec("prc_s2", &["sleep", "60"]);
        s.timeout_ms = Some(200);
        table.spawn(s).unwrap();
        let (_, end) = follow(&table, "prc_s2", 0);
        assert!(end.timed_out);
        assert_eq!(end.signal, Some(libc::SIGKILL));
    }

    #[test]
    fn output_resumes_after_a_sequence_number() {
        let table = Table::default();
        let script = "for i in 1 2 3 4 5; do echo line$i; sleep 0.02; done";
        table.spawn(spec("prc_r1", &["sh", "-c", script])).unwrap();
        let (all, _) = follow(&table, "prc_r1", 0);
        assert_eq!(bytes(&all, OutputStreamKind::Stdout), b"line1\nline2\nline3\nline4\nline5\n");
        let seqs: Vec<u64> = all.iter().map(|e| e.0).collect();
        assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>(), "numbered from 1 without gaps");
        let (rest, _) = follow(&table, "prc_r1", 1);
        assert_eq!(rest, all[1..].to_vec());
        let (none, end) = follow(&table, "prc_r1", all.len() as u64);
        assert!(none.is_empty());
        assert_eq!(end.exit_code, Some(0));
    }

    #[test]
    fn retention_drops_the_oldest_output_and_bounds_finished_processes() {
        let mut out = Output::with_limit(100);
        for i in 0..10u8 {
            out.push(OutputStreamKind::Stdout, vec![i; 30]);
        }
        let kept = out.since(0);
        // 3 events of 30 bytes fit in 100; the newest are kept, numbered as they came.
        assert_eq!(kept.iter().map(|e| e.0).collect::<Vec<_>>(), [8, 9, 10]);
        assert_eq!(out.bytes, 90);
        // A resume from before the oldest retained starts at the oldest retained.
        assert_eq!(out.since(2).len(), 3);
        // One event larger than the limit is still kept whole, alone.
        out.push(OutputStreamKind::Stderr, vec![0; 500]);
        assert_eq!(out.since(0).iter().map(|e| e.0).collect::<Vec<_>>(), [11]);

        // Through a process: 1 MiB of output with a 64 KiB bound.
        let table = Table::default();
        let s = spec("prc_b1", &["head", "-c", "1048576", "/dev/zero"]);
        table.spawn_with_limit(s, 64 << 10).unwrap();
        // Read only once it ended: a follower would have been sent the events as they came.
        while table.info("prc_b1").unwrap().status == ProcessStatus::Running {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (events, _) = follow(&table, "prc_b1", 0);
        let total: usize = events.iter().map(|e| e.2.len()).sum();
        assert!(total <= 64 << 10, "{total}");
        assert!(events[0].0 > 1, "the oldest events were dropped");

        // At most MAX_FINISHED finished processes stay listed.
        let table = Table::default();
        for i in 0..MAX_FINISHED + 6 {
            let id = format!("prc_f{i}");
            table.spawn(spec(&id, &["true"])).unwrap();
            follow(&table, &id, 0);
        }
        let listed = table.list();
        assert_eq!(listed.len(), MAX_FINISHED);
        assert!(listed.iter().all(|p| p.id != "prc_f0"), "the oldest finished went first");
    }

    #[test]
    fn a_terminal_is_resized_and_its_size_seen() {
        let table = Table::default();
        let mut s =
            spec("prc_p1", &["sh", "-c", "trap 'echo winch' WINCH; stty size; while ! read x; do :; done; stty size"]);
        s.tty = Some(TtySize { rows: 24, cols: 80 });
        table.spawn(s).unwrap();
        // Wait for the first size before resizing.
        let seen = |table: &Table| {
            let st = lock(&table.get("prc_p1").unwrap().state).output.since(0);
            String::from_utf8_lossy(&st.iter().flat_map(|e| e.2.to_vec()).collect::<Vec<u8>>()).into_owned()
        };
        for _ in 0..500 {
            if seen(&table).contains("24 80") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        table.resize("prc_p1", TtySize { rows: 40, cols: 100 }).unwrap();
        for _ in 0..500 {
            if seen(&table).contains("winch") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        write_stdin(&table, "prc_p1", b"\n", false).unwrap();
        let (events, end) = follow(&table, "prc_p1", 0);
        assert!(events.iter().all(|e| e.1 == OutputStreamKind::Pty));
        let text = String::from_utf8_lossy(&bytes(&events, OutputStreamKind::Pty)).into_owned();
        assert!(text.contains("24 80"), "{text:?}");
        assert!(text.contains("winch"), "SIGWINCH on resize: {text:?}");
        assert!(text.contains("40 100"), "{text:?}");
        assert_eq!(end.exit_code, Some(0));
        assert!(end.tty);
        // Resizing a process without a terminal is refused.
        table.spawn(spec("prc_p2", &["true"])).unwrap();
        assert_eq!(table.resize("prc_p2", TtySize { rows: 1, cols: 1 }).unwrap_err().kind, FailureKind::InvalidRequest);
    }

    #[test]
    fn a_terminal_eof_ends_a_read_without_hanging_up() {
        let table = Table::default();
        let mut s = spec("prc_p3", &["sh", "-c", "cat; echo after-eof"]);
        s.tty = Some(TtySize { rows: 24, cols: 80 });
        table.spawn(s).unwrap();
        write_stdin(&table, "prc_p3", b"typed\n", true).unwrap();
        let (events, end) = follow(&table, "prc_p3", 0);
        let text = String::from_utf8_lossy(&bytes(&events, OutputStreamKind::Pty)).into_owned();
        assert!(text.contains("after-eof"), "{text:?}");
        assert_eq!(end.exit_code, Some(0));
    }

    #[test]
    fn fifty_mebibytes_of_stdin_arrive_exactly() {
        let table = Table::default();
        table.spawn(spec("prc_i1", &["sha256sum"])).unwrap();
        // Pseudo-random bytes (xorshift), so a dropped or repeated chunk changes the digest.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..50 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        // In two writes: stdin stays open between them.
        let (a, b) = data.split_at(17 << 20);
        assert_eq!(write_stdin(&table, "prc_i1", a, false).unwrap(), a.len() as u64);
        assert_eq!(write_stdin(&table, "prc_i1", b, true).unwrap(), b.len() as u64);
        let (events, end) = follow(&table, "prc_i1", 0);
        assert_eq!(end.exit_code, Some(0));
        // Digested here: a `sha256sum` child of this process would race the table's reaper,
        // which reaps every exited child (as PID 1 in a sandbox must).
        use sha2::Digest;
        let want = format!("{:x}", sha2::Sha256::digest(&data));
        let got = bytes(&events, OutputStreamKind::Stdout);
        assert_eq!(got[..64], *want.as_bytes());
        // Closed: a further write fails and names the process.
        let e = write_stdin(&table, "prc_i1", b"x", false).unwrap_err();
        assert!(e.message.contains("prc_i1"), "{e:?}");
    }
}
