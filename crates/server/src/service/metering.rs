//! Metering from the kernel: each running sandbox's cgroup counters are sampled on an interval
//! and once more before its cgroup is removed, and the differences are added to the namespace's
//! usage ledger in one-minute buckets. Where metering of a sandbox stands is stored with it, so a
//! restart neither loses usage nor counts it twice.
//!
//! Egress is metered the same way from the egress gateway's counters of each sandbox
//! ([`bulkhead_runtime::SandboxStats::egress`]: bytes each way, connections, denials). Those
//! counters live in this process and start from zero with it, so where their metering stands is
//! kept in memory beside them ([`crate::metrics::Metrics::egress_mark`]), not in the store: a
//! restart loses at most what the gateway counted since the last sample, and never counts
//! anything twice.

use std::collections::BTreeMap;

use bulkhead_store::{MeterMark, NamespaceRow, SandboxRow, SandboxStatus, UsageDelta};

use super::ServiceResult;
use crate::metrics::{egress_delta, Running};
use crate::state::AppState;
use crate::time::now_ms;

/// Ledger bucket width.
pub const BUCKET_MS: i64 = 60_000;

/// The start of the bucket holding `ms`.
pub fn bucket(ms: i64) -> i64 {
    ms - ms.rem_euclid(BUCKET_MS)
}

/// Samples one sandbox; the caller holds the sandbox's lock and passes its current row. A
/// sandbox whose cgroup is gone has nothing more to meter.
pub async fn sample_locked(state: &AppState, row: &SandboxRow) -> ServiceResult<()> {
    sample_until(state, row, None).await
}

/// [`sample_locked`], metering time only up to `until_ms` (milliseconds since the epoch) when
/// given: the final sample of a sandbox found dead, whose time ended at its death, not at its
/// teardown. Time already metered past it stays metered.
pub async fn sample_until(state: &AppState, row: &SandboxRow, until_ms: Option<i64>) -> ServiceResult<()> {
    let Ok(stats) = state.runtime.stats(&row.namespace, &row.id).await else {
        return Ok(());
    };
    let now = until_ms.map_or_else(now_ms, |t| t.min(now_ms()));
    let since = row.metered_at_ms.unwrap_or(row.created_at_ms);
    let elapsed = u64::try_from(now.saturating_sub(since)).unwrap_or(0);
    let last = row.metered;
    let egress = egress_delta(state.metrics.egress_mark(&row.id), stats.egress);
    let delta = UsageDelta {
        cpu_ns: stats.cpu_usage_ns.saturating_sub(last.cpu_ns),
        memory_byte_ms: stats.memory_bytes.saturating_mul(elapsed),
        sandbox_ms: elapsed,
        memory_peak_bytes: stats.memory_peak_bytes,
        io_read_bytes: stats.io_read_bytes.saturating_sub(last.io_read_bytes),
        io_write_bytes: stats.io_write_bytes.saturating_sub(last.io_write_bytes),
        egress_bytes_out: egress.bytes_out,
        egress_bytes_in: egress.bytes_in,
        egress_connections: egress.connections,
        egress_denied: egress.denied,
        ..Default::default()
    };
    // Counters only grow; a smaller reading (a counter reset) meters nothing rather than
    // everything again.
    let mark = MeterMark {
        cpu_ns: stats.cpu_usage_ns.max(last.cpu_ns),
        io_read_bytes: stats.io_read_bytes.max(last.io_read_bytes),
        io_write_bytes: stats.io_write_bytes.max(last.io_write_bytes),
    };
    state.store.meter_sandbox(row, bucket(now), &delta, mark, now).await?;
    // In the ledger now: the egress mark moves, and the namespace's egress counters with it.
    let tenant = if egress == Default::default() { None } else { crate::state::tenant(state, &row.namespace).await };
    state.metrics.egress_metered(tenant.as_ref(), &row.id, stats.egress, egress);
    Ok(())
}

/// Samples every running sandbox, and forgets the egress marks of those that ended.
pub async fn sample_all(state: &AppState) -> ServiceResult<()> {
    // This node's: a peer's sandboxes' cgroups are on its host.
    let active = super::nodes::mine(state, state.store.active_sandboxes().await?);
    {
        let ids: std::collections::HashSet<&str> = active.iter().map(|r| r.id.as_str()).collect();
        state.metrics.egress_retain(|id| ids.contains(id));
    }
    for row in &active {
        // An unclaimed pool sandbox is metered from its claim on.
        if row.status != SandboxStatus::Running || row.pooled {
            continue;
        }
        let _guard = state.sandbox_locks.lock(&row.id).await;
        // Re-read under the lock: a teardown may have taken the final sample meanwhile.
        if let Some(current) = state.store.get_sandbox(&row.namespace, &row.id).await? {
            if current.status == SandboxStatus::Running && !current.pooled {
                sample_locked(state, &current).await?;
            }
        }
    }
    Ok(())
}

/// Runs the sampler until the process ends.
pub fn spawn_meter(state: AppState) {
    super::spawn_every(
        &state,
        state.config.meter_interval,
        "metering",
        |state| async move { sample_all(&state).await },
    );
}

/// Counts one exec in the namespace's ledger.
pub async fn count_exec(state: &AppState, namespace: &str) {
    let delta = UsageDelta { exec_count: 1, ..Default::default() };
    if let Err(e) = state.store.add_usage(namespace, bucket(now_ms()), &delta).await {
        tracing::warn!(error = %e, "metering an exec failed");
    }
}

/// Counts a create refused for a quota: in the namespace's metrics and its ledger.
pub async fn note_quota_rejection(state: &AppState, namespace: &str) {
    if let Some(tenant) = crate::state::tenant(state, namespace).await {
        state.metrics.quota_rejection(&tenant);
    }
    let delta = UsageDelta { quota_rejections: 1, ..Default::default() };
    if let Err(e) = state.store.add_usage(namespace, bucket(now_ms()), &delta).await {
        tracing::warn!(error = %e, "metering a quota rejection failed");
    }
}

/// The gauges of running sandboxes by namespace name, read now from the store and the
/// sandboxes' cgroups: of `only` or of every namespace.
pub async fn running(state: &AppState, only: Option<&str>) -> ServiceResult<BTreeMap<String, Running>> {
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    // Sandboxes of a deleted namespace are gone before its row, so the active ones belong to
    // the current incarnation of their name.
    for s in super::nodes::mine(state, state.store.active_sandboxes().await?) {
        if s.status != SandboxStatus::Running || only.is_some_and(|o| o != s.namespace) {
            continue;
        }
        let e = running.entry(s.namespace.clone()).or_default();
        e.sandboxes += 1;
        e.cpu_millis += s.cpu_millis;
        if let Ok(st) = state.runtime.stats(&s.namespace, &s.id).await {
            e.memory_bytes += st.memory_bytes;
            e.cpu_usage_ns += st.cpu_usage_ns;
            e.egress_now.insert(s.id.clone(), st.egress);
        }
    }
    Ok(running)
}

/// Every namespace that exists now.
pub async fn all_namespaces(state: &AppState) -> ServiceResult<Vec<NamespaceRow>> {
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = state.store.list_namespaces(after.as_deref(), 1000, None).await?;
        let done = page.len() < 1000;
        after = page.last().map(|r| r.name.clone());
        rows.extend(page);
        if done || after.is_none() {
            return Ok(rows);
        }
    }
}

/// Metered usage of a namespace over a period, and its disk now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageReport {
    pub total: UsageDelta,
    /// Bucket start (ms since the epoch) and the usage in it, oldest first; empty buckets left out.
    pub buckets: Vec<(i64, UsageDelta)>,
    /// Disk allocated to the namespace's filesystems.
    pub disk_bytes: u64,
    /// Disk written to them, from the host.
    pub disk_used_bytes: u64,
}

/// Adds `d` to `total`: every counter summed (saturating), the peak as the larger one.
pub fn add(total: &mut UsageDelta, d: &UsageDelta) {
    total.cpu_ns = total.cpu_ns.saturating_add(d.cpu_ns);
    total.memory_byte_ms = total.memory_byte_ms.saturating_add(d.memory_byte_ms);
    total.sandbox_ms = total.sandbox_ms.saturating_add(d.sandbox_ms);
    total.memory_peak_bytes = total.memory_peak_bytes.max(d.memory_peak_bytes);
    total.exec_count = total.exec_count.saturating_add(d.exec_count);
    total.quota_rejections = total.quota_rejections.saturating_add(d.quota_rejections);
    total.io_read_bytes = total.io_read_bytes.saturating_add(d.io_read_bytes);
    total.io_write_bytes = total.io_write_bytes.saturating_add(d.io_write_bytes);
    total.egress_bytes_out = total.egress_bytes_out.saturating_add(d.egress_bytes_out);
    total.egress_bytes_in = total.egress_bytes_in.saturating_add(d.egress_bytes_in);
    total.egress_connections = total.egress_connections.saturating_add(d.egress_connections);
    total.egress_denied = total.egress_denied.saturating_add(d.egress_denied);
}

/// The usage of `namespace` from `from` to `to` (ms since the epoch) in buckets `width` ms wide.
pub async fn usage(state: &AppState, namespace: &str, from: i64, to: i64, width: i64) -> ServiceResult<UsageReport> {
    let rows = state.store.usage(namespace, from - from.rem_euclid(BUCKET_MS), to).await?;
    let mut total = UsageDelta::default();
    let mut buckets: Vec<(i64, UsageDelta)> = Vec::new();
    for row in &rows {
        add(&mut total, &row.usage);
        let start = row.bucket_ms - row.bucket_ms.rem_euclid(width);
        match buckets.last_mut() {
            Some((s, d)) if *s == start => add(d, &row.usage),
            _ => {
                let mut d = UsageDelta::default();
                add(&mut d, &row.usage);
                buckets.push((start, d));
            }
        }
    }
    let u = state.store.namespace_use(namespace).await?;
    let disk_used_bytes = super::filesystems::disk_used(state, &u.filesystem_ids);
    Ok(UsageReport { total, buckets, disk_bytes: u.disk_bytes, disk_used_bytes })
}
