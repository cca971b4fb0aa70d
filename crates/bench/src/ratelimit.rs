//! `--only ratelimit`: what per-namespace rate limits buy a quiet tenant. Tenant B lists its
//! sandboxes at a steady interactive pace (well under its default 1,000 requests a second)
//! alone, then beside tenant A flooding the API from `--api-concurrency` connections at its
//! limit (`--ratelimit-rps`), then beside the same flood with A's limit raised out of the way;
//! first a flood of cheap reads, then one of audited mutations. B's p50/p99 in each phase are
//! printed with their ratio to B alone, and A's answers: served, or refused.

use std::time::{Duration, Instant};

use anyhow::Context;
use bulkhead_api::{CreateKey, CreateNamespace, Quotas, QuotasPatch, Role, UpdateNamespace};
use bulkhead_client::Client;
use serde::Serialize;

use crate::{stat, Stat};

/// Tenant B's pace: a request every 10 ms, 100 a second.
const PACE: Duration = Duration::from_millis(10);

/// The figures of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// What tenant A does meanwhile.
    pub name: String,
    /// Tenant B's latency of an authorized list.
    pub b: Stat,
    /// B's answers other than 200 (a limited B would show here).
    pub b_not_200: u64,
    /// `b.p50_ms / alone.p50_ms` and the same of p99 (1 for the phase alone).
    pub ratio_p50: f64,
    pub ratio_p99: f64,
    /// Tenant A's requests served a second, and those refused (429 `rate_limited`).
    pub a_served_per_s: f64,
    pub a_refused: u64,
}

/// The figures of `--only ratelimit`.
#[derive(Debug, Serialize)]
pub struct RateLimitReport {
    pub seconds: u64,
    pub concurrency: usize,
    /// A's `api_requests_per_second` while limited.
    pub a_rate: u64,
    /// B alone, then beside each of A's floods, limited and not.
    pub phases: Vec<Phase>,
}

/// A's floods: a cheap read (its sandboxes' list) and an audited mutation (a `DELETE` of a
/// sandbox that does not exist: a 404, and a record appended to A's audit chain).
const FLOODS: [(&str, hyper::Method, &str, u16); 2] = [
    ("lists", hyper::Method::GET, "/v1/namespaces/rl-a/sandboxes", 200),
    (
        "audited deletes",
        hyper::Method::DELETE,
        "/v1/namespaces/rl-a/sandboxes/sbx_00000000000000000000000000000000",
        404,
    ),
];

/// B's requests at [`PACE`] until `until`: latencies and answers other than 200.
async fn paced(b: &Client, ns: &str, until: Instant) -> (Vec<Duration>, u64) {
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut samples, mut failed) = (Vec::new(), 0);
    while Instant::now() < until {
        tick.tick().await;
        let t = Instant::now();
        match b.list_sandboxes(ns, Some(10), None).await {
            Ok(_) => samples.push(t.elapsed()),
            Err(_) => failed += 1,
        }
    }
    (samples, failed)
}

/// A namespace with a developer key: a client of the key, and its token.
async fn tenant(admin: &Client, name: &str, quotas: Quotas) -> anyhow::Result<(Client, String)> {
    admin
        .create_namespace(&CreateNamespace {
            name: name.into(),
            isolation: None,
            placement: None,
            egress: None,
            quotas,
        })
        .await
        .with_context(|| format!("create namespace {name}"))?;
    let key = admin
        .create_key(name, &CreateKey { name: "bench".into(), role: Role::Developer, expires_at: None, projects: None })
        .await
        .with_context(|| format!("create a key of {name}"))?;
    Ok((Client::new(admin.base(), Some(key.token.clone())), key.token))
}

fn phase(name: String, samples: Vec<Duration>, b_not_200: u64, alone: Option<&Stat>, a: (f64, u64)) -> Phase {
    let b = stat(samples);
    let (ratio_p50, ratio_p99) = alone.map(|s| (b.p50_ms / s.p50_ms, b.p99_ms / s.p99_ms)).unwrap_or((1.0, 1.0));
    Phase { name, b, b_not_200, ratio_p50, ratio_p99, a_served_per_s: a.0, a_refused: a.1 }
}

/// Makes tenants `rl-a` (at `a_rate` requests a second) and `rl-b` (the defaults), measures the
/// three phases for `seconds` each, and deletes both tenants whatever happened.
pub async fn measure(
    admin: &Client,
    url: &str,
    a_rate: u64,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<RateLimitReport> {
    let result = phases(admin, url, a_rate, concurrency, seconds).await;
    crate::load::delete_namespaces(admin, &["rl-a", "rl-b"]).await;
    result
}

async fn phases(
    admin: &Client,
    url: &str,
    a_rate: u64,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<RateLimitReport> {
    // Tenant B has the defaults of a new namespace; A the same but its rate.
    let d = bulkhead_core::Quotas::DEFAULT;
    let base = Quotas {
        cpu_millis: d.cpu_millis,
        memory_bytes: d.memory_bytes,
        disk_bytes: d.disk_bytes,
        max_sandboxes: d.max_sandboxes,
        pids_per_sandbox: d.pids_per_sandbox,
        max_sandbox_ttl_seconds: d.max_sandbox_ttl_seconds,
        api_requests_per_second: d.api_requests_per_second,
        max_concurrent_execs: d.max_concurrent_execs,
    };
    let (_, a_token) = tenant(admin, "rl-a", Quotas { api_requests_per_second: a_rate, ..base }).await?;
    let (b, _) = tenant(admin, "rl-b", base).await?;
    let addr = crate::load::address(url)?;
    let window = Duration::from_secs(seconds);
    // Warm: connections and caches.
    paced(&b, "rl-b", Instant::now() + Duration::from_millis(500)).await;

    let (samples, failed) = paced(&b, "rl-b", Instant::now() + window).await;
    let alone = phase("alone".into(), samples, failed, None, (0.0, 0));
    let mut phases = vec![alone.clone()];
    for (what, method, path, served) in FLOODS {
        for rate in [a_rate, bulkhead_core::quota::API_REQUESTS_PER_SECOND.max] {
            let quotas = QuotasPatch { api_requests_per_second: Some(rate), ..Default::default() };
            admin
                .update_namespace("rl-a", &UpdateNamespace { quotas: Some(quotas), egress: None, placement: None })
                .await
                .context("set tenant A's rate")?;
            let name = if rate == a_rate {
                format!("beside A's {what} at {rate} req/s")
            } else {
                format!("beside A's {what}, A unlimited")
            };
            let flood =
                crate::load::hammer_with(addr, (method.clone(), served), path, Some(&a_token), concurrency, seconds);
            let (flooded, (samples, failed)) = tokio::join!(flood, paced(&b, "rl-b", Instant::now() + window));
            let flooded = flooded.with_context(|| format!("tenant A's flood of {what}"))?;
            phases.push(phase(name, samples, failed, Some(&alone.b), flooded));
        }
    }
    Ok(RateLimitReport { seconds, concurrency, a_rate, phases })
}

/// The table of `--only ratelimit`.
pub fn print(r: &RateLimitReport) {
    println!(
        "{:<44} {:>6} {:>10} {:>10} {:>8} {:>8} {:>12} {:>10}",
        "tenant B's authorized list", "n", "p50 ms", "p99 ms", "×p50", "×p99", "A served/s", "A refused"
    );
    for p in &r.phases {
        println!(
            "{:<44} {:>6} {:>10.2} {:>10.2} {:>8.2} {:>8.2} {:>12.0} {:>10}",
            p.name, p.b.n, p.b.p50_ms, p.b.p99_ms, p.ratio_p50, p.ratio_p99, p.a_served_per_s, p.a_refused
        );
        if p.b_not_200 > 0 {
            println!("  tenant B was refused {} times", p.b_not_200);
        }
    }
}
