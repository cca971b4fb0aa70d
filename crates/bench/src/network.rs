//! What a network of its own adds to a sandbox's start: `create → first exec output` on a
//! second server started with `--network isolated` (a network namespace, a veth, a /30 and the
//! API relay per sandbox), against the same measure on the bench's own loopback-only server in
//! the same run (target: ≤ 3 ms more at the median).
//!
//! `--only network` measures just this, on two servers of its own started side by side, the
//! runs alternating between them so that whatever else the host does weighs on both alike.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulkhead_api::{CreateNamespace, CreateSandbox, ExecRequest, Quotas};
use bulkhead_client::Client;
use serde::Serialize;

use crate::{stat, Stat};

/// Runs before the measured ones on each server, left out of the figures (the first sandbox
/// mounts the server's shared view, the first network warms the kernel's caches).
const WARMUP: usize = 3;

/// A server of the bench's own with a namespace `net` to create sandboxes in; killed when
/// dropped (the caller purges its names).
struct Server {
    _process: crate::ServerProcess,
    client: Client,
}

impl Server {
    /// Starts `bulkhead serve` with `extra` arguments on `data_dir`, `state_dir` and
    /// `cgroup_prefix`, and makes the namespace `net`.
    async fn start(
        bulkhead: &Path,
        data_dir: &Path,
        state_dir: &Path,
        cgroup_prefix: &str,
        extra: &[&str],
    ) -> anyhow::Result<Server> {
        let started = crate::server::Serve { bulkhead, data_dir, state_dir, cgroup_prefix, host_registry: None, extra }
            .spawn()
            .with_context(|| format!("start bulkhead serve {}", extra.join(" ")))?;
        let process = crate::ServerProcess(started.child);
        let admin = std::fs::read_to_string(data_dir.join("admin.token"))?.trim().to_owned();
        let client = Client::new(&started.url, Some(admin));
        let quotas = Quotas {
            cpu_millis: 100_000,
            memory_bytes: 1 << 40,
            disk_bytes: 1 << 30,
            max_sandboxes: 10,
            pids_per_sandbox: 256,
            max_sandbox_ttl_seconds: 3600,
        };
        client.create_namespace(&CreateNamespace { name: "net".into(), isolation: None, quotas }).await?;
        Ok(Server { _process: process, client })
    }

    /// One create → first output of `echo ready`, timed; the sandbox is deleted after, untimed.
    async fn create_once(&self) -> anyhow::Result<Duration> {
        let small = CreateSandbox { cpu_millis: Some(100), memory_bytes: Some(64 << 20), ..Default::default() };
        let echo = ExecRequest { cmd: vec!["echo".into(), "ready".into()], ..Default::default() };
        let t = Instant::now();
        let s = self.client.create_sandbox("net", &small).await?;
        let r = self.client.exec("net", &s.id, &echo).await?;
        let elapsed = t.elapsed();
        if r.stdout != "ready\n" {
            bail!("unexpected output {:?}", r.stdout);
        }
        self.client.delete_sandbox("net", &s.id).await?;
        Ok(elapsed)
    }

    async fn finish(self) -> anyhow::Result<()> {
        self.client.delete_namespace("net").await?;
        Ok(())
    }
}

/// Starts `bulkhead serve --network isolated` on `data_dir`, `state_dir` and `cgroup_prefix`,
/// and times `runs` creates → first output of `echo ready` (each sandbox deleted after); the
/// server is killed before this returns (the caller purges its names).
pub async fn networked_create(
    bulkhead: &Path,
    data_dir: &Path,
    state_dir: &Path,
    cgroup_prefix: &str,
    runtime_class: &str,
    runs: usize,
) -> anyhow::Result<Vec<Duration>> {
    let extra = ["--runtime-class", runtime_class, "--network", "isolated"];
    let server = Server::start(bulkhead, data_dir, state_dir, cgroup_prefix, &extra).await?;
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        out.push(server.create_once().await?);
    }
    server.finish().await?;
    Ok(out)
}

/// The figures of `--only network`.
#[derive(Debug, Serialize)]
pub struct NetworkComparison {
    pub command_line: String,
    /// Create → first output on the loopback-only server.
    pub loopback_only: Stat,
    /// The same on the `--network isolated` server, runs alternating with the other's.
    pub isolated: Stat,
    /// `isolated.p50_ms - loopback_only.p50_ms` (target ≤ 3).
    pub added_p50_ms: f64,
    /// `isolated.p50_ms / loopback_only.p50_ms`.
    pub ratio_p50: f64,
    /// The median of the differences of the pairs of runs (each isolated run less the
    /// loopback-only run beside it): steadier than `added_p50_ms` on a busy host.
    pub added_paired_p50_ms: f64,
}

/// Where the two servers of [`compare`] keep their host state.
pub struct ServerNames<'a> {
    pub data_dir: &'a Path,
    pub state_dir: &'a Path,
    pub cgroup_prefix: &'a str,
}

/// Starts a loopback-only server on `loopback` and a `--network isolated` one on `isolated`,
/// both with `runtime_class`, and times `runs` creates → first output on each, alternating,
/// after [`WARMUP`] untimed ones on each. Both servers are killed before this returns (the
/// caller purges their names).
pub async fn compare(
    bulkhead: &Path,
    loopback: ServerNames<'_>,
    isolated: ServerNames<'_>,
    runtime_class: &str,
    runs: usize,
) -> anyhow::Result<NetworkComparison> {
    let plain = ["--runtime-class", runtime_class];
    let networked = ["--runtime-class", runtime_class, "--network", "isolated"];
    let a = Server::start(bulkhead, loopback.data_dir, loopback.state_dir, loopback.cgroup_prefix, &plain).await?;
    let b = Server::start(bulkhead, isolated.data_dir, isolated.state_dir, isolated.cgroup_prefix, &networked).await?;
    for _ in 0..WARMUP {
        a.create_once().await?;
        b.create_once().await?;
    }
    let (mut la, mut lb) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs {
        // Which goes first alternates too.
        if i % 2 == 0 {
            la.push(a.create_once().await?);
            lb.push(b.create_once().await?);
        } else {
            lb.push(b.create_once().await?);
            la.push(a.create_once().await?);
        }
    }
    a.finish().await?;
    b.finish().await?;
    let mut paired: Vec<f64> = la.iter().zip(&lb).map(|(a, b)| (b.as_secs_f64() - a.as_secs_f64()) * 1000.0).collect();
    paired.sort_by(f64::total_cmp);
    let added_paired_p50_ms = paired.get(paired.len() / 2).copied().unwrap_or(f64::NAN);
    let (loopback_only, isolated) = (stat(la), stat(lb));
    Ok(NetworkComparison {
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        added_p50_ms: isolated.p50_ms - loopback_only.p50_ms,
        ratio_p50: isolated.p50_ms / loopback_only.p50_ms,
        added_paired_p50_ms,
        loopback_only,
        isolated,
    })
}

/// Prints the figures of [`compare`] as a table.
pub fn print(r: &NetworkComparison) {
    println!("command: {}\n", r.command_line);
    println!("{:<44} {:>6} {:>10} {:>10}", "measure", "n", "p50 ms", "p99 ms");
    crate::row("sandbox create → first exec output", &r.loopback_only);
    crate::row("  the same with a network (--network isolated)", &r.isolated);
    println!(
        "  a network adds {:.2} ms at p50 (target ≤ 3 ms); isolated / loopback-only at p50: {:.3}",
        r.added_p50_ms, r.ratio_p50
    );
    println!(
        "  median of the paired differences (isolated run − loopback-only run beside it): {:.2} ms",
        r.added_paired_p50_ms
    );
}
