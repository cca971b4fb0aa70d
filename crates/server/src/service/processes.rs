//! Background processes of a sandbox: started, listed, their output read from a sequence number
//! on, their stdin streamed, signalled and resized. The processes and their retained output live
//! in the sandbox's supervisor (bounded there); the server keeps nothing of them but what a
//! request is passing through.

use super::{ServiceError, ServiceResult};
use crate::service::records::{ProcessInfo, ProcessOutput, ProcessSpec, TtySize};
use crate::state::AppState;

/// Starts a process in a running sandbox and counts it in the namespace's ledger as an exec.
pub async fn start(state: &AppState, namespace: &str, sandbox: &str, spec: ProcessSpec) -> ServiceResult<ProcessInfo> {
    let info = state.runtime.spawn_process(sandbox, spec).await?;
    super::metering::count_exec(state, namespace).await;
    Ok(info)
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

/// The number of a signal given as `SIGTERM`, `TERM` (any case) or `15`; anything else (an
/// unknown name, a number outside 1 to 31) is refused naming it.
pub fn signal_number(signal: &str) -> ServiceResult<i32> {
    let s = signal.trim();
    if let Ok(n) = s.parse::<i32>() {
        if SIGNALS.iter().any(|(_, k)| *k == n) {
            return Ok(n);
        }
    } else {
        let upper = s.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some((_, n)) = SIGNALS.iter().find(|(k, _)| *k == name) {
            return Ok(*n);
        }
    }
    Err(ServiceError::Invalid(format!("signal: {signal:?} is not a signal (such as SIGTERM, TERM or 15)")))
}

#[cfg(test)]
mod tests {
    use super::signal_number;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(signal_number("SIGTERM").ok(), Some(15));
        assert_eq!(signal_number("TERM").ok(), Some(15));
        assert_eq!(signal_number("sigkill").ok(), Some(9));
        assert_eq!(signal_number("15").ok(), Some(15));
        assert_eq!(signal_number("SIGWINCH").ok(), Some(28));
        for bad in ["SIGFOO", "0", "32", "-9", "", "SIG", "TERM15"] {
            assert!(signal_number(bad).is_err(), "{bad:?}");
        }
    }
}
