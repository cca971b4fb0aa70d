//! `bulkhead-supervisor`: PID 1 of every sandbox. Started by the OCI runtime with its listening
//! socket at `--listen-fd` and its delegated cgroup directory at `--cgroup-fd`, or, under an
//! OCI runtime that passes no descriptors (gVisor), with `--listen-path`, where it binds the
//! socket itself; see the `bulkhead-supervisor` crate.

use std::process::ExitCode;

const USAGE: &str = "usage: bulkhead-supervisor --listen-fd N [--cgroup-fd M] | --listen-path PATH \
                     (started by the Bulkhead runtime inside a sandbox)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let served = match args.as_slice() {
        [_, flag, path] if flag == "--listen-path" => bulkhead_supervisor::serve_path(std::path::Path::new(path)),
        [_, flag, fd] if flag == "--listen-fd" => match fd.parse::<i32>() {
            Ok(fd) => bulkhead_supervisor::serve_fds(fd, None),
            Err(_) => return usage(),
        },
        [_, flag, fd, cflag, cfd] if flag == "--listen-fd" && cflag == "--cgroup-fd" => {
            match (fd.parse::<i32>(), cfd.parse::<i32>()) {
                (Ok(fd), Ok(cfd)) => bulkhead_supervisor::serve_fds(fd, Some(cfd)),
                _ => return usage(),
            }
        }
        _ => return usage(),
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead-supervisor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}
