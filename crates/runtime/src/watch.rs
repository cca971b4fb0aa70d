//! Watching each sandbox's init (its supervisor, PID 1 of the sandbox), so that a sandbox that
//! dies is known at once, not at the server's next start.
//!
//! Each init is watched through a pidfd (`pidfd_open(2)`, Linux 5.3), which becomes readable
//! when the process exits; a task per sandbox waits for that on the server's event loop, with no
//! thread and no polling. The server is the child subreaper of its process (`PR_SET_CHILD_SUBREAPER`,
//! set by [`crate::oci::OciRuntime::new`]): when the OCI runtime's `run --detach` exits, the init
//! it leaves is re-parented to the server, whose watcher reaps it with `waitid(P_PIDFD)` and so
//! learns exactly how it ended (`init exited with signal 9`, `init exited with status 1`). An
//! init the server did not start (it outlived a restart) is re-parented to the host's init
//! instead; its pidfd still says when it died, and how: from its zombie's `/proc/<pid>/stat`
//! before the host's init reaps it, or from `PIDFD_GET_INFO` (Linux 6.15) after. A `SIGKILL` while the sandbox's memory cgroup counts an OOM kill reads `oom`.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// Opens a pidfd for `pid`; `None` when the process is already gone.
pub(crate) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::O_NONBLOCK) };
    if fd < 0 {
        return None;
    }
    let fd = i32::try_from(fd).ok()?;
    // SAFETY: the kernel just returned this descriptor, owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How a process ended, from a wait status or a `siginfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signaled(i32),
    Unknown,
}

impl Ending {
    /// The reason recorded for the sandbox; `oom` when the kernel's OOM killer ended it
    /// (`oom_kills` counted in its memory cgroup and killed by `SIGKILL`).
    pub fn reason(self, oom_kills: u64) -> String {
        match self {
            Ending::Signaled(libc::SIGKILL) if oom_kills > 0 => "oom".to_owned(),
            Ending::Signaled(n) => format!("init exited with signal {n}"),
            Ending::Exited(n) => format!("init exited with status {n}"),
            Ending::Unknown if oom_kills > 0 => "oom".to_owned(),
            Ending::Unknown => "init exited (its exit status could not be read)".to_owned(),
        }
    }

    /// From a wait status (`exit_code` of `PIDFD_GET_INFO`, as `waitpid` returns it).
    fn from_wait_status(status: i32) -> Ending {
        if libc::WIFEXITED(status) {
            Ending::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Ending::Signaled(libc::WTERMSIG(status))
        } else {
            Ending::Unknown
        }
    }
}

/// Reaps `fd`'s process when it is this process's child; `None` when it is not (`ECHILD`).
fn reap(fd: &OwnedFd) -> Option<Ending> {
    // SAFETY: a zeroed siginfo_t is a valid value for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waitid fills `info`, which lives for the call; the pidfd is open.
        let r = unsafe {
            libc::waitid(libc::P_PIDFD, fd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG)
        };
        if r == 0 {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None;
    }
    // SAFETY: waitid succeeded, so `info` holds a SIGCHLD siginfo with si_status set, or is
    // still zeroed (si_pid 0) when the child had not changed state.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return None;
    }
    Some(match info.si_code {
        libc::CLD_EXITED => Ending::Exited(status),
        libc::CLD_KILLED | libc::CLD_DUMPED => Ending::Signaled(status),
        _ => Ending::Unknown,
    })
}

/// Reaps `fd`'s process now if it is this process's exited child (a sandbox's init that no
/// watcher took, so that it does not stay a zombie).
pub(crate) fn reap_now(fd: &OwnedFd) {
    let _ = reap(fd);
}

/// Reaps this process's exited children that are stages of an OCI runtime's init (`runc:[…]`,
/// `crun`'s the same way): left when the OCI runtime itself was killed or timed out mid-create,
/// they are re-parented to the server, the child subreaper, and nobody else waits for them.
/// So are gVisor's gofer and kernel (runsc re-executes itself, so their name is `exe`): runsc's
/// delete waits for them to be gone, which a zombie never is until reaped.
/// The server's own spawned children (`runc`, `mount`, …) are never touched: their names differ.
pub fn reap_orphans() -> usize {
    let mut reaped = 0;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else { continue };
        for pid in children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let zombie = stat_fields(pid).and_then(|f| f.first().cloned()).as_deref() == Some("Z");
            if zombie && (comm.starts_with("runc:[") || comm.starts_with("crun") || comm.trim_end() == "exe") {
                // SAFETY: a zeroed siginfo_t is a valid value for waitid to fill.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: waitid of one pid, which is this process's exited child; `info` lives
                // for the call.
                if unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG) }
                    == 0
                {
                    reaped += 1;
                }
            }
        }
    }
    reaped
}

/// What a supervisor that did not answer in time is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Stopped (`SIGSTOP`) or traced: it cannot answer until someone lets it.
    Stopped,
    /// A thread of it is runnable: it waits for CPU (its sandbox's quota used up), not hung.
    Runnable,
    /// Its CPU time grew since the last look: it works.
    Progressed,
    /// Asleep with no CPU time since the last look: hung.
    Stuck,
}

/// How process `pid` is doing, from its threads' states and its CPU time (`/proc/<pid>/stat`
/// utime + stime, clock ticks), against the CPU time `last` seen before; returns the CPU time
/// now too. A process that is gone is `Stuck`.
pub fn liveness(pid: i32, last: Option<u64>) -> (Liveness, u64) {
    let ticks = stat_fields(pid)
        .map(|f| {
            let at = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            at(11) + at(12)
        })
        .unwrap_or(0);
    let mut states = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        if let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) {
            if let Some(state) = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()) {
                states.push(state);
            }
        }
    }
    let liveness = if states.iter().any(|s| matches!(s, 'T' | 't')) {
        Liveness::Stopped
    } else if states.contains(&'R') {
        Liveness::Runnable
    } else if last.is_some_and(|l| ticks > l) {
        Liveness::Progressed
    } else {
        Liveness::Stuck
    };
    (liveness, ticks)
}

/// `struct pidfd_info` of `<linux/pidfd.h>` up to `exit_code` (`PIDFD_INFO_SIZE_VER0`, 64 bytes).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    ids: [u32; 11],
    exit_code: i32,
}

const PIDFD_INFO_EXIT: u64 = 1 << 3;
/// `_IOWR(0xFF, 11, struct pidfd_info)` with the 64-byte first version of the struct.
const PIDFD_GET_INFO: libc::c_ulong = (3 << 30) | (64 << 16) | (0xFF << 8) | 11;

/// The fields of `/proc/<pid>/stat` after the command's closing parenthesis: `[0]` is the state
/// (field 3), `[19]` the start time (field 22), `[49]` the exit code (field 52, Linux 3.5).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect())
}

/// The start time of process `pid` (clock ticks after boot), which tells it from a later process
/// given the same pid.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// The exit status of a process that is not this process's child: from its zombie's
/// `/proc/<pid>/stat` while its parent has not reaped it (the same process: `started` matches),
/// else where the kernel keeps it for the pidfd (`PIDFD_GET_INFO`, Linux 6.15 and later); the
/// host's init may take a moment to reap it.
async fn exit_info(fd: &OwnedFd, pid: i32, started: Option<u64>) -> Ending {
    for _ in 0..20 {
        if let Some(f) = stat_fields(pid) {
            let same = started.is_some() && f.get(19).and_then(|t| t.parse().ok()) == started;
            if same && f.first().map(String::as_str) == Some("Z") {
                if let Some(code) = f.get(49).and_then(|c| c.parse::<i32>().ok()) {
                    return Ending::from_wait_status(code);
                }
            }
        }
        let mut info = PidfdInfo { mask: PIDFD_INFO_EXIT, ..Default::default() };
        // SAFETY: PIDFD_GET_INFO fills at most the 64 bytes of `info`, which lives for the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), PIDFD_GET_INFO as _, &mut info as *mut PidfdInfo) };
        if r == 0 && info.mask & PIDFD_INFO_EXIT != 0 {
            return Ending::from_wait_status(info.exit_code);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ending::Unknown
}

/// How often a watcher reads its sandbox's OOM kill count again (one cgroup file): an OOM kill
/// of a command longer ago than this never names the init's death.
const OOM_LOOK: Duration = Duration::from_secs(1);

/// The watched inits, by sandbox id: each a channel that holds the reason once the init died.
#[derive(Default)]
pub(crate) struct Inits {
    map: Mutex<HashMap<String, watch::Receiver<Option<String>>>>,
}

impl Inits {
    /// Watches the init `pid` of sandbox `id` (unless it is watched already); `oom_kills` reads
    /// the sandbox's OOM kill count, every [`OOM_LOOK`] and once the init died: `oom` only when
    /// it rose since the last look. An init that is gone already reads as dead at
    /// once, how unknown.
    pub(crate) fn watch(&self, id: &str, pid: i32, oom_kills: impl Fn() -> u64 + Send + 'static) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(id) {
            return;
        }
        let (tx, rx) = watch::channel(None);
        map.insert(id.to_owned(), rx);
        drop(map);
        let id = id.to_owned();
        let started = start_time(pid);
        // OOM kills the sandbox had a moment before (read again every `OOM_LOOK`): only one
        // counted around the init's death says `oom`, not one of a command long before.
        let mut oom_before = oom_kills();
        tokio::spawn(async move {
            let ending = match pidfd_open(pid) {
                None => Ending::Unknown,
                // SAFETY: the pidfd is owned by the AsyncFd from here on and closed only when it
                // is dropped (or taken back with `into_inner`, which deregisters it first).
                Some(fd) => match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
                    Ok(afd) => {
                        let mut look = tokio::time::interval(OOM_LOOK);
                        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tokio::select! {
                                _ = afd.readable() => break,
                                _ = look.tick() => oom_before = oom_kills(),
                            }
                        }
                        let fd = afd.into_inner();
                        match reap(&fd) {
                            Some(ending) => ending,
                            None => exit_info(&fd, pid, started).await,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %id, error = %e, "cannot watch the sandbox's init");
                        return;
                    }
                },
            };
            let _ = tx.send(Some(ending.reason(oom_kills().saturating_sub(oom_before))));
        });
    }

    /// The reason the init of `id` died, once it has; `None` when it is not watched.
    pub(crate) fn receiver(&self, id: &str) -> Option<watch::Receiver<Option<String>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// Stops tracking `id` (its sandbox was deleted); a task still waiting ends when the init dies.
    pub(crate) fn forget(&self, id: &str) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// Makes this process the child subreaper of its descendants, so the inits the OCI runtime
/// leaves behind are its children (see the module's doc).
pub(crate) fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        assert_eq!(Ending::Signaled(9).reason(0), "init exited with signal 9");
        assert_eq!(Ending::Signaled(9).reason(1), "oom");
        assert_eq!(Ending::Signaled(6).reason(1), "init exited with signal 6");
        assert_eq!(Ending::Exited(1).reason(0), "init exited with status 1");
        assert_eq!(Ending::from_wait_status(9), Ending::Signaled(9));
        assert_eq!(Ending::from_wait_status(3 << 8), Ending::Exited(3));
        assert_eq!(std::mem::size_of::<PidfdInfo>(), 64);
    }

    #[tokio::test]
    #[allow(clippy::zombie_processes)] // the watcher reaps it, which is what is tested
    async fn a_child_killed_with_a_signal_is_reaped_and_its_signal_named() {
        let child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let inits = Inits::default();
        inits.watch("sbx_t", child.id() as i32, || 0);
        let mut rx = inits.receiver("sbx_t").unwrap();
        // SAFETY: kill takes plain integers; the child is ours and alive.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let reason = rx.wait_for(Option::is_some).await.unwrap().clone();
        assert_eq!(reason.as_deref(), Some("init exited with signal 9"));
        // Reaped by the watcher: no zombie is left.
        assert!(!std::path::Path::new(&format!("/proc/{}", child.id())).exists());
    }

    #[tokio::test]
    #[allow(clippy::zombie_processes)] // the watcher reaps it
    async fn a_child_that_exits_is_named_by_its_status() {
        let child = std::process::Command::new("sh").args(["-c", "sleep 0.2; exit 3"]).spawn().unwrap();
        let inits = Inits::default();
        inits.watch("sbx_u", child.id() as i32, || 0);
        let mut rx = inits.receiver("sbx_u").unwrap();
        let reason = rx.wait_for(Option::is_some).await.unwrap().clone();
        assert_eq!(reason.as_deref(), Some("init exited with status 3"));
    }

    #[test]
    fn a_stopped_process_is_stopped_a_busy_one_runnable_and_a_sleeping_one_stuck() {
        let mut sleeper = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let mut busy = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
        let (pid, busy_pid) = (sleeper.id() as i32, busy.id() as i32);
        std::thread::sleep(Duration::from_millis(200));
        let (l, ticks) = liveness(pid, None);
        assert_eq!(l, Liveness::Stuck);
        assert_eq!(liveness(pid, Some(ticks)).0, Liveness::Stuck);
        // SAFETY: kill takes plain integers; the pid is the sleep just started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(liveness(pid, Some(ticks)).0, Liveness::Stopped);
        // A busy loop is runnable, or at least shows CPU time.
        let (_, t0) = liveness(busy_pid, None);
        std::thread::sleep(Duration::from_millis(300));
        let l = liveness(busy_pid, Some(t0)).0;
        assert!(matches!(l, Liveness::Runnable | Liveness::Progressed), "{l:?}");
        for c in [&mut sleeper, &mut busy] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    #[tokio::test]
    async fn an_init_that_is_not_a_child_is_still_named_by_its_signal() {
        // A grandchild whose parent exits at once: re-parented away from this process (to the
        // host's init or a subreaper), as a sandbox's init is after a restart of the server.
        let out = std::process::Command::new("sh").args(["-c", "sleep 60 >/dev/null 2>&1 & echo $!"]).output().unwrap();
        let pid: i32 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
        let inits = Inits::default();
        inits.watch("sbx_v", pid, || 0);
        let mut rx = inits.receiver("sbx_v").unwrap();
        // SAFETY: kill takes plain integers; the pid is the sleep just started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let reason = rx.wait_for(Option::is_some).await.unwrap().clone();
        assert_eq!(reason.as_deref(), Some("init exited with signal 9"));
    }
}
