//! `bulkhead serve` as a child process on loopback, for the bench and for the end-to-end tests:
//! one way to start the real server on a data dir, state dir and cgroup prefix of the caller's
//! own, and to learn its URL and first admin token from what it prints.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server has to print that it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A `bulkhead serve` to start on `127.0.0.1:0`.
#[derive(Debug, Clone, Copy)]
pub struct Serve<'a> {
    /// The `bulkhead` binary.
    pub bulkhead: &'a Path,
    pub data_dir: &'a Path,
    /// `--state-dir`: bundles and OCI runtime state.
    pub state_dir: &'a Path,
    /// `--cgroup-prefix`: the server's top cgroup.
    pub cgroup_prefix: &'a str,
    /// `--host-registry`; the host's shared registry when `None`.
    pub host_registry: Option<&'a Path>,
    /// Further arguments to `serve`.
    pub extra: &'a [&'a str],
}

/// A server that printed its URL. Its stdout is drained and its stderr passed on to this
/// process's stderr for as long as it runs; the caller owns the child (kill and wait for it).
#[derive(Debug)]
pub struct Started {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The admin token, when this start printed one (the first start on a data dir).
    pub first_token: Option<String>,
}

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("spawn {binary}: {source}")]
    Spawn { binary: String, source: std::io::Error },
    /// It exited before listening; what it wrote on stderr.
    #[error("{0}")]
    Exited(String),
    #[error("the server did not listen within {0:?}")]
    TimedOut(Duration),
}

impl Serve<'_> {
    /// Starts the server and waits until it listens (at most a minute).
    pub fn spawn(&self) -> Result<Started, StartError> {
        let mut cmd = Command::new(self.bulkhead);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.data_dir)
            .arg("--state-dir")
            .arg(self.state_dir)
            .args(["--cgroup-prefix", self.cgroup_prefix]);
        if let Some(registry) = self.host_registry {
            cmd.arg("--host-registry").arg(registry);
        }
        let mut child = cmd
            .args(self.extra)
            // Warnings only, unless the bench's caller asks for more (a breakdown at debug level).
            .env("BULKHEAD_LOG", std::env::var("BULKHEAD_LOG").unwrap_or_else(|_| "warn".to_owned()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| StartError::Spawn { binary: self.bulkhead.display().to_string(), source })?;
        // Stderr goes on to ours, and is kept for a failed start's error.
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    let _ = tx.send(line);
                }
            });
        }
        let Some(stdout) = child.stdout.take() else {
            return Err(StartError::Exited("the server has no stdout".to_owned()));
        };
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + START_TIMEOUT;
        let mut first_token = None;
        let url = loop {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartError::TimedOut(START_TIMEOUT));
            }
            let Some(Ok(line)) = lines.next() else {
                let _ = child.wait();
                // The stderr thread ends with the process; collect everything it saw.
                let err: Vec<String> = rx.iter().collect();
                return Err(StartError::Exited(err.join("\n")));
            };
            if let Some(t) = line.strip_prefix("admin token") {
                first_token = t.rsplit(' ').next().map(str::to_owned);
            }
            if let Some(u) = line.strip_prefix("bulkhead listening on ") {
                break u.to_owned();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Started { child, url, first_token })
    }
}
