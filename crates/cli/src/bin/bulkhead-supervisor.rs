//! `bulkhead-supervisor`: PID 1 of every sandbox. Started by the OCI runtime with its listening
//! socket at `--listen-fd`; see the `bulkhead-supervisor` crate.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let fd = match args.as_slice() {
        [_, flag, fd] if flag == "--listen-fd" => fd.parse::<i32>().ok(),
        _ => None,
    };
    let Some(fd) = fd else {
        eprintln!("usage: bulkhead-supervisor --listen-fd N (started by the Bulkhead runtime inside a sandbox)");
        return ExitCode::from(2);
    };
    match bulkhead_supervisor::serve_fd(fd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead-supervisor: {e}");
            ExitCode::FAILURE
        }
    }
}
