//! `--only replicas`: Bulkhead on a PostgreSQL store, one replica and then two (each a real
//! `bulkhead serve` with its own data dir, state dir and cgroup prefix, the same master key),
//! same run: authorized reads a second against one replica, then against both at once; an
//! exec sent to the replica that runs the sandbox against one sent to the other (forwarded);
//! and how long a key revoked through one replica still works on the other.

use std::time::{Duration, Instant};

use anyhow::Context;
use bulkhead_api::{CreateKey, CreateNamespace, CreateSandbox, ExecRequest, Quotas, Role};
use bulkhead_client::Client;
use serde::Serialize;

use crate::{stat, Stat};

/// The figures of `--only replicas`.
#[derive(Debug, Serialize)]
pub struct ReplicaReport {
    pub seconds: u64,
    pub concurrency: usize,
    /// Authorized `GET /v1/namespaces/{ns}` a second against one replica (`concurrency`
    /// connections).
    pub one_replica_per_s: f64,
    /// The same load split over two replicas (half the connections each), summed.
    pub two_replicas_per_s: f64,
    /// `two_replicas_per_s / one_replica_per_s`.
    pub two_vs_one: f64,
    /// Answers other than 200 in either phase.
    pub not_200: u64,
    /// `exec true` sent to the replica that runs the sandbox.
    pub exec_on_holder: Stat,
    /// `exec true` sent to the other replica, which forwards it.
    pub exec_forwarded: Stat,
    /// From the revoke's answer (through one replica) to the first refusal of the key by the
    /// other replica, which had it cached.
    pub revocation_seen: Stat,
}

fn quotas() -> Quotas {
    let d = bulkhead_core::Quotas::DEFAULT;
    Quotas {
        cpu_millis: d.cpu_millis,
        memory_bytes: d.memory_bytes,
        disk_bytes: d.disk_bytes,
        max_sandboxes: d.max_sandboxes,
        pids_per_sandbox: d.pids_per_sandbox,
        max_sandbox_ttl_seconds: d.max_sandbox_ttl_seconds,
        // The throughput figures measure the replicas, not the namespace's limit.
        api_requests_per_second: 1_000_000,
        max_concurrent_execs: d.max_concurrent_execs,
    }
}

/// Makes the bench's tenant through `admin` (replica A's), and returns its developer token.
pub async fn tenant(admin: &Client) -> anyhow::Result<String> {
    admin
        .create_namespace(&CreateNamespace {
            name: "replicas".into(),
            isolation: None,
            placement: None,
            egress: None,
            quotas: quotas(),
        })
        .await
        .context("create namespace replicas")?;
    let key = admin
        .create_key(
            "replicas",
            &CreateKey { name: "bench".into(), role: Role::Developer, expires_at: None, projects: None },
        )
        .await
        .context("create a key")?;
    Ok(key.token)
}

/// Authorized reads a second against replica `url` alone.
pub async fn one(url: &str, token: &str, concurrency: usize, seconds: u64) -> anyhow::Result<(f64, u64)> {
    let addr = crate::load::address(url)?;
    crate::load::hammer(addr, "/v1/namespaces/replicas", Some(token), concurrency, seconds).await
}

/// The rest, once replica B (`b_url`) serves beside A (`a_url`, `admin` its client).
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    admin: &Client,
    a_url: &str,
    b_url: &str,
    token: &str,
    one_replica: (f64, u64),
    concurrency: usize,
    seconds: u64,
    execs: usize,
    revocations: usize,
) -> anyhow::Result<ReplicaReport> {
    let (a_addr, b_addr) = (crate::load::address(a_url)?, crate::load::address(b_url)?);
    let path = "/v1/namespaces/replicas";
    let half = (concurrency / 2).max(1);
    let (on_a, on_b) = tokio::join!(
        crate::load::hammer(a_addr, path, Some(token), half, seconds),
        crate::load::hammer(b_addr, path, Some(token), half, seconds),
    );
    let (on_a, on_b) = (on_a?, on_b?);
    let two = on_a.0 + on_b.0;

    // Execs: the sandbox runs on A; alternately through A and through B.
    let (a, b) = (Client::new(a_url, Some(token.to_owned())), Client::new(b_url, Some(token.to_owned())));
    let sbx = a.create_sandbox("replicas", &CreateSandbox::default()).await.context("create a sandbox on A")?;
    let cmd = ExecRequest { cmd: vec!["true".into()], ..Default::default() };
    for c in [&a, &b] {
        c.exec("replicas", &sbx.id, &cmd).await.context("a first exec")?;
    }
    let (mut holder, mut forwarded) = (Vec::with_capacity(execs), Vec::with_capacity(execs));
    for _ in 0..execs {
        for (c, into) in [(&a, &mut holder), (&b, &mut forwarded)] {
            let t = Instant::now();
            let r = c.exec("replicas", &sbx.id, &cmd).await.context("exec")?;
            into.push(t.elapsed());
            anyhow::ensure!(r.exit_code == 0, "exec true exited {}", r.exit_code);
        }
    }
    let _ = a.delete_sandbox("replicas", &sbx.id).await;

    // Revocations: B has the key cached (it just served it); A revokes it; B is asked at once
    // and again until it refuses.
    let mut seen = Vec::with_capacity(revocations);
    for i in 0..revocations {
        let key = admin
            .create_key(
                "replicas",
                &CreateKey { name: format!("doomed-{i}"), role: Role::Viewer, expires_at: None, projects: None },
            )
            .await
            .context("create a key to revoke")?;
        let doomed = Client::new(b_url, Some(key.token.clone()));
        doomed.get_namespace("replicas").await.context("the new key works on B")?;
        admin.revoke_key("replicas", &key.key.id).await.context("revoke through A")?;
        let t = Instant::now();
        loop {
            match doomed.get_namespace("replicas").await {
                Ok(_) => anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "B still takes a key revoked 60 s ago"),
                Err(bulkhead_client::Error::Api { status: 401, .. }) => break,
                Err(e) => return Err(e).context("asking B with the revoked key"),
            }
        }
        seen.push(t.elapsed());
    }
    Ok(ReplicaReport {
        seconds,
        concurrency,
        one_replica_per_s: one_replica.0,
        two_replicas_per_s: two,
        two_vs_one: two / one_replica.0,
        not_200: one_replica.1 + on_a.1 + on_b.1,
        exec_on_holder: stat(holder),
        exec_forwarded: stat(forwarded),
        revocation_seen: stat(seen),
    })
}

pub fn print(r: &ReplicaReport) {
    println!("\nreplicas on one PostgreSQL store ({} connections, {} s each):", r.concurrency, r.seconds);
    println!("  authorized reads/s, one replica     {:>10.0}", r.one_replica_per_s);
    println!("  authorized reads/s, two replicas    {:>10.0}  ({:.2}x)", r.two_replicas_per_s, r.two_vs_one);
    println!("  answers other than 200              {:>10}", r.not_200);
    let row =
        |name: &str, s: &Stat| println!("  {name:<36}{:>8.2} ms p50 {:>8.2} ms p99  (n={})", s.p50_ms, s.p99_ms, s.n);
    row("exec true on the sandbox's replica", &r.exec_on_holder);
    row("exec true through the other replica", &r.exec_forwarded);
    println!("  forwarding adds                     {:>8.2} ms p50", r.exec_forwarded.p50_ms - r.exec_on_holder.p50_ms);
    row("revoked key refused by the other", &r.revocation_seen);
}
