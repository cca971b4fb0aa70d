//! How fast the server's picture follows the host, and how fast it is back after a crash:
//! - **death → failed**: a sandbox's init killed from the host (`kill -9`), until the API says
//!   `failed` (target: within a second). Its baseline is the same sandbox's delete measured in
//!   the same run (`delete → every host resource gone`): detection adds what the watcher takes.
//! - **restart → answering**: the server killed with `kill -9` while sandboxes run, then spawned
//!   again, until an authenticated request is answered (the locks free with the process, the
//!   running sandboxes are adopted and watched again). Its baseline is the first start of the
//!   server on the same data dir in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulkhead_api::CreateSandbox;
use bulkhead_client::Client;
use serde::Serialize;

use crate::Stat;

/// Figures of the crash and death measures.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    /// `kill -9` of a sandbox's init → `GET` says `failed`.
    pub death_to_failed: Stat,
    /// Sandboxes running while the server was killed and restarted.
    pub adopted_sandboxes: usize,
    /// Spawn of the restarted server → its first authenticated answer.
    pub restart_to_answering: Stat,
    /// Spawn of the first server on an empty data dir → its first authenticated answer.
    pub first_start_to_answering: Stat,
}

/// `kill -9 <pid>`.
fn kill9(pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
    if !status.success() {
        bail!("kill -KILL {pid} failed");
    }
    Ok(())
}

/// Creates `runs` sandboxes one after another, kills each one's init from the host and times
/// until the API reports it `failed`.
pub async fn death_to_failed(c: &Client, ns: &str, state_dir: &Path, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let small = CreateSandbox { cpu_millis: Some(100), memory_bytes: Some(64 << 20), ..Default::default() };
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = c.create_sandbox(ns, &small).await?;
        let pid_file = state_dir.join("sandboxes").join(&s.id).join("pid");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("read {}", pid_file.display()))?
            .trim()
            .parse()
            .context("a pid file")?;
        let t = Instant::now();
        kill9(pid)?;
        let deadline = t + Duration::from_secs(30);
        loop {
            let row = c.get_sandbox(ns, &s.id).await?;
            if row.status == "failed" {
                out.push(t.elapsed());
                break;
            }
            if Instant::now() > deadline {
                bail!("sandbox {} still {} 30 s after its init was killed", s.id, row.status);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(out)
}

/// Polls an authenticated read until it answers; the time from `since`.
pub async fn until_answering(url: &str, admin: &str, since: Instant) -> anyhow::Result<Duration> {
    let c = Client::new(url, Some(admin.to_owned()));
    let deadline = since + Duration::from_secs(60);
    loop {
        if c.list_namespaces(Some(1), None).await.is_ok() {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            bail!("the server at {url} did not answer within a minute of its start");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
