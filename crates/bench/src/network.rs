//! What a network of its own adds to a sandbox's start: `create → first exec output` on a
//! second server started with `--network isolated` (a network namespace, a veth, a /30 and the
//! API relay per sandbox), against the same measure on the bench's own loopback-only server in
//! the same run (target: ≤ 3 ms more at the median).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulkhead_api::{CreateNamespace, CreateSandbox, ExecRequest, Quotas};
use bulkhead_client::Client;

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
    let started =
        crate::server::Serve { bulkhead, data_dir, state_dir, cgroup_prefix, host_registry: None, extra: &extra }
            .spawn()
            .context("start bulkhead serve --network isolated")?;
    let _server = crate::ServerProcess(started.child);
    let admin = std::fs::read_to_string(data_dir.join("admin.token"))?.trim().to_owned();
    let c = Client::new(&started.url, Some(admin));
    let quotas = Quotas {
        cpu_millis: 100_000,
        memory_bytes: 1 << 40,
        disk_bytes: 1 << 30,
        max_sandboxes: 10,
        pids_per_sandbox: 256,
        max_sandbox_ttl_seconds: 3600,
    };
    c.create_namespace(&CreateNamespace { name: "net".into(), isolation: None, quotas }).await?;
    let small = CreateSandbox { cpu_millis: Some(100), memory_bytes: Some(64 << 20), ..Default::default() };
    let echo = ExecRequest { cmd: vec!["echo".into(), "ready".into()], ..Default::default() };
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let s = c.create_sandbox("net", &small).await?;
        let r = c.exec("net", &s.id, &echo).await?;
        out.push(t.elapsed());
        if r.stdout != "ready\n" {
            bail!("unexpected output {:?}", r.stdout);
        }
        c.delete_sandbox("net", &s.id).await?;
    }
    c.delete_namespace("net").await?;
    Ok(out)
}
