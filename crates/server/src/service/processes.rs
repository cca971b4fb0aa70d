//! Background processes of a sandbox: started, listed, their output read from a sequence number
//! on, their stdin streamed, signalled and resized. The processes and their retained output live
//! in the sandbox's supervisor (bounded there); the server keeps nothing of them but what a
//! request is passing through.

use bulkhead_api::Signal;

use super::{ServiceError, ServiceResult};
use crate::service::records::{ProcessInfo, ProcessOutput, ProcessSpec, TtySize};
use crate::state::AppState;

/// Starts a process in a running sandbox and counts it in the namespace's ledger as an exec.
pub async fn start(state: &AppState, namespace: &str, sandbox: &str, spec: ProcessSpec) -> ServiceResult<ProcessInfo> {
    let info = state.runtime.spawn_process(sandbox, spec).await?;
    super::metering::count_exec(state, namespace).await;
    Ok(info)
}

/// Holds `slot` (the process's place among its namespace's running commands) until process
/// `id` of `sandbox` exits, or the sandbox ends, by following its exit and none of its output.
pub fn hold_until_exit(state: &AppState, sandbox: &str, id: &str, slot: crate::ratelimit::Slot) {
    let (state, sandbox, id) = (state.clone(), sandbox.to_owned(), id.to_owned());
    tokio::spawn(async move {
        let _slot = slot;
        // No output: every sequence number is at most `u64::MAX`.
        let Ok(mut events) = state.runtime.process_output(&sandbox, &id, u64::MAX).await else { return };
        while let Some(event) = events.next().await {
            if matches!(event, Ok(crate::service::records::ProcessEvent::Exit(_)) | Err(_)) {
                return;
            }
        }
    });
}

/// The sandbox's processes: running ones and those that ended in the last 10 minutes.
pub async fn list(state: &AppState, sandbox: &str) -> ServiceResult<Vec<ProcessInfo>> {
    Ok(state.runtime.processes(sandbox).await?)
}

/// One process of the sandbox.
pub async fn get(state: &AppState, sandbox: &str, id: &str) -> ServiceResult<ProcessInfo> {
    Ok(state.runtime.process(sandbox, id).await?)
}

/// The process's output events with a `seq` above `after`, then (once it ends) its exit.
pub async fn output(state: &AppState, sandbox: &str, id: &str, after: u64) -> ServiceResult<ProcessOutput> {
    Ok(state.runtime.process_output(sandbox, id, after).await?)
}

/// Writes every chunk arriving on `data` to the process's stdin, then closes it when `eof`;
/// answers the bytes written. An error on `data` stops the writing (stdin stays open).
pub async fn stdin(
    state: &AppState,
    sandbox: &str,
    id: &str,
    data: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    eof: bool,
) -> ServiceResult<u64> {
    Ok(state.runtime.process_stdin(sandbox, id, data, eof).await?)
}

/// Sends `signal` (a number from [`signal_number`]) to the process.
pub async fn signal(state: &AppState, sandbox: &str, id: &str, signal: i32) -> ServiceResult<()> {
    Ok(state.runtime.signal_process(sandbox, id, signal).await?)
}

/// Sets the size of the process's terminal.
pub async fn resize(state: &AppState, sandbox: &str, id: &str, size: TtySize) -> ServiceResult<()> {
    Ok(state.runtime.resize_process(sandbox, id, size).await?)
}

/// Linux's standard signals by name, numbered as on every Linux architecture Bulkhead runs on
/// (x86-64 and arm64 share them).
const SIGNALS: [(&str, i32); 31] = [
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// The real-time signals' numbers: the kernel's 32 to 64 but the two the C library keeps for
/// itself (32, 33).
const REALTIME: std::ops::RangeInclusive<i64> = 34..=64;

/// What a refused signal is shown as: at most 32 characters of it.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(32).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// A signal's number if `n` is one: 1 to 31 or 34 to 64.
fn known_number(n: i64) -> Option<i32> {
    let known = (1..=31).contains(&n) || REALTIME.contains(&n);
    known.then(|| i32::try_from(n).ok()).flatten()
}

/// The number of a signal given as a JSON number (`15`) or a string: a name (`SIGTERM`,
/// `TERM`, any case) or a decimal number written plainly (`15`). Refused naming it: a number
/// outside 1 to 64 or one of 32 and 33, padding (`"SIGHUP "`), signs or leading zeros (`"+1"`,
/// `"010"`), an unknown name.
pub fn signal_number(signal: &Signal) -> ServiceResult<i32> {
    const EXPECTED: &str = "a name such as SIGTERM or TERM, or a number 1 to 64 other than 32 and 33";
    match signal {
        Signal::Number(n) => {
            known_number(*n).ok_or_else(|| ServiceError::Invalid(format!("signal: {n} is not a signal ({EXPECTED})")))
        }
        Signal::Name(s) => {
            let plain_number = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
            let n = if plain_number {
                s.parse::<i64>().ok().and_then(known_number)
            } else {
                let upper = s.to_ascii_uppercase();
                let name = upper.strip_prefix("SIG").unwrap_or(&upper);
                SIGNALS.iter().find(|(k, _)| *k == name).map(|(_, n)| *n)
            };
            n.ok_or_else(|| ServiceError::Invalid(format!("signal: {} is not a signal ({EXPECTED})", shown(s))))
        }
    }
}

#[cfg(test)]
mod tests {
    use bulkhead_api::Signal;

    use super::signal_number;

    fn name(s: &str) -> Signal {
        Signal::Name(s.to_owned())
    }

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(signal_number(&name("SIGTERM")).ok(), Some(15));
        assert_eq!(signal_number(&name("TERM")).ok(), Some(15));
        assert_eq!(signal_number(&name("sigkill")).ok(), Some(9));
        assert_eq!(signal_number(&name("15")).ok(), Some(15));
        assert_eq!(signal_number(&name("SIGWINCH")).ok(), Some(28));
        assert_eq!(signal_number(&name("34")).ok(), Some(34));
        assert_eq!(signal_number(&name("64")).ok(), Some(64));
        assert_eq!(signal_number(&Signal::Number(15)).ok(), Some(15));
        assert_eq!(signal_number(&Signal::Number(64)).ok(), Some(64));
        for bad in ["SIGFOO", "0", "32", "33", "65", "-9", "", "SIG", "TERM15", "SIGHUP ", " HUP", "+1", "010", "1.0"] {
            let e = signal_number(&name(bad)).expect_err(bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{bad:?}: {e}");
        }
        for bad in [0, 32, 33, 65, -1, i64::MAX] {
            let e = signal_number(&Signal::Number(bad)).expect_err("number");
            assert!(e.to_string().contains(&bad.to_string()), "{bad}: {e}");
        }
        // A long name is shown cut short.
        let e = signal_number(&name(&"X".repeat(5000))).expect_err("long").to_string();
        assert!(e.len() < 200, "{e}");
    }
}
