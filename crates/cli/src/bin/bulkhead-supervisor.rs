//! `bulkhead-supervisor`: PID 1 of every sandbox. Started by the OCI runtime with its listening
//! socket at `--listen-fd` and its
//! delegated cgroup directory at `--cgroup-fd`; see the `bulkhead-supervisor` crate.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let fds = match args.as_slice() {
        [_, flag, fd] if flag == "--listen-fd" => fd.parse::<i32>().ok().map(|fd| (fd, None)),
        [_, flag, fd, cflag, cfd] if flag == "--listen-fd" && cflag == "--cgroup-fd" => {
            fd.parse::<i32>().ok().zip(cfd.parse::<i32>().ok().map(Some))
        }
        _ => None,
    };
    let Some((fd, cgroup_fd)) = fds else {
        eprintln!(
            "usage: bulkhead-supervisor --listen-fd N [--cgroup-fd M] (started by the Bulkhead runtime inside a sandbox)"
        );
        return ExitCode::from(2);
    };
    match bulkhead_supervisor::serve_fds(fd, cgroup_fd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead-supervisor: {e}");
            ExitCode::FAILURE
        }
    }
}
