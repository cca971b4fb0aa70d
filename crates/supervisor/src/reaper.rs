//! Reaping. As PID 1 the supervisor inherits every orphan. One thread watches all children: it
//! peeks at the next exited child without reaping it (`WNOWAIT`), reaps and reports it when an
//! exec waits for that pid, reaps and forgets orphans, and leaves alone a child that a spawn in
//! progress may still reap itself (the standard library waits for a child whose exec failed).

use std::collections::HashMap;
use std::io;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

#[derive(Default)]
struct ReaperState {
    /// Exec children by pid, and where their wait status goes.
    tracked: HashMap<i32, SyncSender<i32>>,
    /// Spawns in progress.
    spawning: u32,
    /// Bumped on every spawn, so the reaper wakes when children may exist again.
    generation: u64,
}

pub(crate) struct Reaper {
    state: Mutex<ReaperState>,
    wake: Condvar,
}

impl Reaper {
    pub(crate) fn global() -> &'static Reaper {
        static REAPER: OnceLock<Reaper> = OnceLock::new();
        REAPER.get_or_init(|| Reaper { state: Mutex::new(ReaperState::default()), wake: Condvar::new() })
    }

    /// Starts the one reaping thread of this process, once: two would race for the same
    /// zombie and lose its status.
    pub(crate) fn start() {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            std::thread::spawn(|| Reaper::global().run());
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReaperState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn run(&self) {
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
    pub(crate) fn spawning(&self) {
        self.lock().spawning += 1;
    }

    /// Ends a spawn; with the child's pid when it started, and the channel on which its wait
    /// status will arrive.
    pub(crate) fn spawned(&self, pid: Option<i32>) -> Option<Receiver<i32>> {
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
