//! The sandbox lifecycle on the server side: admission and start, teardown with a reason, the
//! reaper of expired sandboxes, and the reconciliation of the store against the host at start.
//! Handlers call in here; only this module calls the runtime's `create` and `delete`.

use std::collections::{HashMap, HashSet};

use bulkhead_runtime::{IdRange, NamespaceLimits, SandboxSpec};
use bulkhead_store::{MeterMark, NamespaceRow, SandboxRow, SandboxStatus, StoreError};

use super::{ServiceError, ServiceResult};
use crate::state::AppState;
use crate::time::now_ms;

use bulkhead_runtime::hostreg::ID_BASE;

/// The host ids of a namespace's sandboxes: the range the host registry handed the namespace,
/// kept in its row.
pub fn id_range(ns: &NamespaceRow) -> ServiceResult<IdRange> {
    if ns.id_start < ID_BASE || ns.id_count == 0 || ns.id_start.checked_add(ns.id_count).is_none() {
        return Err(ServiceError::Internal(format!("namespace {} has no valid host id range", ns.name)));
    }
    Ok(IdRange { host_start: ns.id_start, size: ns.id_count })
}

/// Limits of a namespace's cgroup: its quotas, processes for all its sandboxes (counted as the
/// host counts them for the namespace's runtime class, see
/// [`bulkhead_runtime::spec::OciKind::host_tasks`]), and its placement on the host's cores.
pub fn namespace_limits(state: &AppState, ns: &NamespaceRow) -> NamespaceLimits {
    let q = &ns.quotas;
    let kind = state.config.runtime_classes.get(&ns.isolation).map(|c| bulkhead_runtime::spec::OciKind::of(&c.runtime));
    let per_sandbox = kind.map_or(q.pids_per_sandbox, |k| k.host_tasks(q.pids_per_sandbox));
    NamespaceLimits {
        cpu_millis: q.cpu_millis,
        memory_bytes: q.memory_bytes,
        pids: per_sandbox.saturating_mul(q.max_sandboxes.max(1)).min(4_194_304),
        placement: state.placements.cpu_placement(&ns.name),
    }
}

/// A create's cpu when the request names none (at most the namespace's quota), in millicores.
pub const DEFAULT_CPU_MILLIS: u64 = 1000;
/// A create's memory when the request names none (at most the namespace's quota), in bytes.
pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;
/// The smallest writable root, in bytes.
pub const MIN_DISK_BYTES: u64 = 16 << 20;
/// The writable root's size when the request names none (at most the sandbox's memory).
pub const DEFAULT_DISK_BYTES: u64 = 1 << 30;

/// How a create comes by its sandbox.
#[derive(Debug, Default)]
pub enum Start {
    /// Started now, for the create.
    #[default]
    Cold,
    /// Started now for a warm pool, unclaimed (see [`super::pools`]).
    Pool,
    /// A ready pool sandbox, claimed: its id is the plan's.
    Claim(super::pools::Reservation),
}

/// What a create asks for, resolved against the namespace's quotas.
#[derive(Debug)]
pub struct Plan {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub ttl_seconds: u64,
    pub env: Vec<(String, String)>,
    /// The filesystem to mount at `/workspace`, and `rw` or `ro`.
    pub filesystem: Option<(bulkhead_store::FilesystemRow, String)>,
    /// The sandbox's id, chosen before the create so that policies can be asked about it.
    pub id: String,
    /// `key:<id>`, `user:<sub>` or `sandbox:<id>`.
    pub creator: String,
    /// Files under `/run` (the workload token, secrets).
    pub run_files: Vec<bulkhead_runtime::RunFile>,
    /// The keyed hash of the workload token in `run_files`.
    pub workload_token_hash: Option<String>,
    /// Names of the secrets handed to the sandbox.
    pub secrets: Vec<String>,
    /// What the sandbox may reach on the network, checked against the namespace's ceiling.
    pub egress: Option<bulkhead_core::egress::SandboxEgress>,
    /// What it boots from: the host's base, or an image's layers under a writable layer.
    pub root: bulkhead_runtime::RootSpec,
    /// The image (with `root` an image's), as the sandbox records it.
    pub image: Option<bulkhead_store::SandboxImage>,
    /// The size of the writable root in bytes (with an image).
    pub disk_bytes: Option<u64>,
    /// The task whose agent the sandbox runs, and that agent's unpacked bundle (at `/agent`).
    pub task: Option<(String, std::path::PathBuf)>,
    /// Cold, for a pool, or a claim of a pool sandbox.
    pub start: Start,
}

/// Admits, records and starts a sandbox of `ns`; or, with [`Start::Claim`], binds a ready pool
/// sandbox to the plan instead of starting one.
pub async fn create(state: &AppState, ns: &NamespaceRow, mut plan: Plan) -> ServiceResult<SandboxRow> {
    let class = state
        .config
        .runtime_classes
        .get(&ns.isolation)
        .ok_or_else(|| {
            ServiceError::Conflict(format!("isolation tier {:?} is no longer configured on this server", ns.isolation))
        })?
        .clone();
    // The namespace's CA, for a sandbox with credentials: made (once) before anything is admitted.
    let extra_ca_pem = super::egress_broker::sandbox_ca_pem(state, &ns.name, plan.egress.as_ref()).await?;
    let start = std::mem::take(&mut plan.start);
    let pooled = matches!(start, Start::Pool);
    let now = now_ms();
    let ttl_ms = i64::try_from(plan.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    let row = SandboxRow {
        id: plan.id.clone(),
        namespace: ns.name.clone(),
        status: SandboxStatus::Creating,
        reason: None,
        isolation: ns.isolation.clone(),
        cpu_millis: plan.cpu_millis,
        memory_bytes: plan.memory_bytes,
        pids: ns.quotas.pids_per_sandbox,
        ttl_seconds: plan.ttl_seconds,
        created_at_ms: now,
        expires_at_ms: now.saturating_add(ttl_ms),
        ended_at_ms: None,
        filesystem: plan.filesystem.as_ref().map(|(f, mode)| (f.id.clone(), mode.clone())),
        metered: MeterMark::default(),
        metered_at_ms: None,
        creator: plan.creator.clone(),
        workload_token_hash: plan.workload_token_hash.clone(),
        secrets: plan.secrets.clone(),
        project: plan.filesystem.as_ref().and_then(|(f, _)| f.project_id.clone()),
        egress: plan.egress.clone(),
        image: plan.image.clone(),
        disk_bytes: plan.disk_bytes,
        task: plan.task.as_ref().map(|(id, _)| id.clone()),
        pooled,
        node: state.node.id.clone(),
    };
    // Where a create's time goes, at debug level (ms since `began`, cumulative).
    let began = std::time::Instant::now();
    let _guard = state.sandbox_locks.lock(&row.id).await;
    if let Start::Claim(reservation) = start {
        return claim(state, ns, row, plan, Started { class, extra_ca_pem, began }, reservation).await;
    }
    let mut admitted = state.store.admit_sandbox(&row, &ns.quotas).await;
    // The namespace's ready pool sandboxes give way to its own creates, never to a pool.
    while !pooled && matches!(admitted, Err(StoreError::Quota(_))) && super::pools::give_way(state, &ns.name).await {
        admitted = state.store.admit_sandbox(&row, &ns.quotas).await;
    }
    match admitted {
        Err(StoreError::Quota(b)) => return Err(ServiceError::quota(&b)),
        // The image was deleted between its lookup and the admission.
        Err(StoreError::NotFound(what)) if what.starts_with("image ") => {
            return Err(ServiceError::NotFound(format!("{what} not found")))
        }
        other => other?,
    }
    let admitted_ms = lap(began);
    let workspace = match workspace(state, plan.filesystem.as_ref()).await {
        Ok(w) => w,
        Err((reason, e)) => {
            state.store.set_sandbox_status(&row.id, SandboxStatus::Failed, Some(&reason), Some(now_ms())).await?;
            return Err(e);
        }
    };
    let spec = sandbox_spec(ns, &row, plan, workspace, class, extra_ca_pem)?;
    let started = super::placement::start_in(state, ns, async { Ok(state.runtime.create(&spec).await?) }).await;
    if let Err(e) = started {
        let reason = format!("start_failed: {e}");
        if !pooled {
            state.metrics.sandbox_failed(&crate::metrics::Tenant::of(ns), &reason);
        }
        state.store.set_sandbox_status(&row.id, SandboxStatus::Failed, Some(&reason), Some(now_ms())).await?;
        tracing::warn!(sandbox = %row.id, error = %e, "a sandbox failed to start");
        // Retryable: what stops a start (the OCI runtime killed or timed out, the host short of
        // something for a moment) is not the request's fault. The detail is the host's, kept in
        // the log; nothing is left of the attempt.
        return Err(ServiceError::Runtime(bulkhead_runtime::RuntimeError::Unavailable(format!(
            "sandbox {} failed to start and is marked failed; nothing of it is left, retry the create",
            row.id
        ))));
    }
    let bound_ms = lap(began);
    // A sandbox never moves: the requests that follow its create are routed from memory.
    state.node.remember_home(&row.id, &row.node);
    let Some(row) = state.store.set_sandbox_status(&row.id, SandboxStatus::Running, None, None).await? else {
        // Its namespace was deleted while it started: nothing of it may stay on the host.
        if let Err(e) = state.runtime.delete(&ns.name, &row.id).await {
            tracing::warn!(sandbox = %row.id, error = %e, "teardown of a sandbox whose namespace went failed");
        }
        return Err(ServiceError::NotFound(format!(
            "namespace {} was deleted while sandbox {} started",
            ns.name, row.id
        )));
    };
    if pooled {
        tracing::debug!(sandbox = %row.id, namespace = %ns.name, "warm pool sandbox started");
    } else {
        state.metrics.sandbox_created(&crate::metrics::Tenant::of(ns));
        tracing::info!(sandbox = %row.id, namespace = %ns.name, claimed = false, "sandbox started");
        tracing::debug!(sandbox = %row.id, claimed = false, admitted_ms, bound_ms, running_ms = lap(began), "create timing");
    }
    watch(state, &row);
    Ok(row)
}

/// Milliseconds since `began`, as a fraction (for the debug timing lines).
fn lap(began: std::time::Instant) -> f64 {
    began.elapsed().as_secs_f64() * 1000.0
}

/// What a create resolved before it admits its sandbox, for [`claim`] and [`sandbox_spec`].
struct Started {
    class: crate::state::RuntimeClass,
    extra_ca_pem: Option<String>,
    began: std::time::Instant,
}

/// Binds the ready pool sandbox of `reservation` to `row` (the claimant's, status `running`)
/// and then records the claim: the binding first, so that one transaction both admits the
/// claim against the namespace's quotas and marks it running, and the claimant's first request
/// finds it bound. A pool sandbox that anything of the claimant reached is never given back: on
/// any failure (the binding's, the quota's, the pool sandbox gone meanwhile) the reservation is
/// dropped, which destroys it, and the claimant gets the error (`503` to retry, `429` for a
/// quota).
async fn claim(
    state: &AppState,
    ns: &NamespaceRow,
    mut row: SandboxRow,
    plan: Plan,
    started: Started,
    reservation: super::pools::Reservation,
) -> ServiceResult<SandboxRow> {
    if reservation.id() != row.id {
        return Err(ServiceError::Internal("a claim's plan names another sandbox".into()));
    }
    let began = started.began;
    let workspace = workspace(state, plan.filesystem.as_ref()).await.map_err(|(_, e)| e)?;
    // What the pool sandbox used before its claim is not the claimant's: metering starts from
    // its counters now.
    if let Ok(stats) = state.runtime.stats(&ns.name, &row.id).await {
        row.metered = MeterMark {
            cpu_ns: stats.cpu_usage_ns,
            io_read_bytes: stats.io_read_bytes,
            io_write_bytes: stats.io_write_bytes,
        };
    }
    let spec = sandbox_spec(ns, &row, plan, workspace, started.class, started.extra_ca_pem)?;
    if let Err(e) = state.runtime.claim(&spec).await {
        state.metrics.sandbox_failed(&crate::metrics::Tenant::of(ns), &format!("start_failed: {e}"));
        tracing::warn!(sandbox = %row.id, error = %e, "binding a claimed pool sandbox failed");
        return Err(ServiceError::Runtime(bulkhead_runtime::RuntimeError::Unavailable(format!(
            "the warm pool sandbox for this create failed to bind and is destroyed; nothing of it is left, retry \
             the create (sandbox {})",
            row.id
        ))));
    }
    let bound_ms = lap(began);
    row.status = SandboxStatus::Running;
    let mut claimed = state.store.claim_sandbox(&row, &ns.quotas).await;
    // The namespace's other ready pool sandboxes give way to its own creates.
    while matches!(claimed, Err(StoreError::Quota(_))) && super::pools::give_way(state, &ns.name).await {
        claimed = state.store.claim_sandbox(&row, &ns.quotas).await;
    }
    match claimed {
        Err(StoreError::Quota(b)) => return Err(ServiceError::quota(&b)),
        Err(StoreError::NotFound(what)) if what.starts_with("image ") => {
            return Err(ServiceError::NotFound(format!("{what} not found")))
        }
        // The pool sandbox ended between its reservation and its claim.
        Err(StoreError::NotFound(_)) => {
            return Err(ServiceError::Runtime(bulkhead_runtime::RuntimeError::Unavailable(format!(
                "sandbox {} ended before it could be claimed; retry the create",
                row.id
            ))))
        }
        other => other?,
    }
    // The pool refills only now, after the claim's own writes.
    reservation.claimed();
    state.node.remember_home(&row.id, &row.node);
    state.metrics.sandbox_created(&crate::metrics::Tenant::of(ns));
    tracing::info!(sandbox = %row.id, namespace = %ns.name, claimed = true, "sandbox started");
    tracing::debug!(sandbox = %row.id, claimed = true, bound_ms, running_ms = lap(began), "create timing");
    // Its init has been watched since its pool started it.
    Ok(row)
}

/// The filesystem a create mounts, mounted again first should its mount have vanished
/// underneath; on failure the reason its sandbox is marked failed with, and the error.
async fn workspace(
    state: &AppState,
    filesystem: Option<&(bulkhead_store::FilesystemRow, String)>,
) -> Result<Option<bulkhead_runtime::Workspace>, (String, ServiceError)> {
    let Some((f, mode)) = filesystem else { return Ok(None) };
    match state.storage.ensure_mounted(&f.id).await {
        Ok(_) => {
            Ok(Some(bulkhead_runtime::Workspace { source: state.storage.data_dir(&f.id), read_only: mode == "ro" }))
        }
        Err(e) => Err((format!("start_failed: filesystem {}: {e}", f.id), e.into())),
    }
}

/// The runtime's spec of sandbox `row` of `ns` as `plan` asks.
fn sandbox_spec(
    ns: &NamespaceRow,
    row: &SandboxRow,
    plan: Plan,
    workspace: Option<bulkhead_runtime::Workspace>,
    class: crate::state::RuntimeClass,
    extra_ca_pem: Option<String>,
) -> ServiceResult<SandboxSpec> {
    Ok(SandboxSpec {
        id: row.id.clone(),
        namespace: ns.name.clone(),
        oci_runtime: class.runtime,
        cpu_millis: row.cpu_millis,
        memory_bytes: row.memory_bytes,
        pids: row.pids,
        tmp_bytes: row.memory_bytes.min(1 << 30),
        ids: id_range(ns)?,
        env: plan.env,
        workspace,
        agent_code: plan.task.map(|(_, code)| code),
        run_files: plan.run_files,
        extra_ca_pem,
        root: plan.root,
        pooled: row.pooled,
    })
}

/// A page of the namespace's sandboxes, by id.
pub async fn list(
    state: &AppState,
    namespace: &str,
    after: Option<&str>,
    limit: u32,
) -> ServiceResult<Vec<SandboxRow>> {
    Ok(state.store.list_sandboxes(namespace, after, limit).await?)
}

/// Runs a command in a running sandbox and counts it in the namespace's ledger; the stream
/// yields its output, then its exit. The count is written while the command runs.
pub async fn exec(
    state: &AppState,
    namespace: &str,
    id: &str,
    spec: bulkhead_runtime::ExecSpec,
    stdin: Vec<u8>,
) -> ServiceResult<Exec> {
    let stream = state.runtime.exec(id, spec, stdin).await?;
    let (state, namespace) = (state.clone(), namespace.to_owned());
    let counted = tokio::spawn(async move { super::metering::count_exec(&state, &namespace).await });
    Ok(Exec { stream, counted: Some(counted) })
}

/// A started command's events ([`bulkhead_runtime::ExecStream`]: output, then its exit or an
/// error) beside the write of its count in the namespace's ledger, which runs while the command
/// does. The last event is yielded only once the count is written, so no answer shows a
/// command's end before the ledger holds it. Dropping it cancels the command; the count is
/// still written.
pub struct Exec {
    stream: bulkhead_runtime::ExecStream,
    counted: Option<tokio::task::JoinHandle<()>>,
}

impl Exec {
    /// The next event; `None` after the last.
    pub async fn next(&mut self) -> Option<bulkhead_runtime::Result<bulkhead_runtime::ExecEvent>> {
        let event = self.stream.next().await;
        let output =
            matches!(event, Some(Ok(bulkhead_runtime::ExecEvent::Stdout(_) | bulkhead_runtime::ExecEvent::Stderr(_))));
        if !output {
            if let Some(counted) = self.counted.take() {
                // The count's task logs its own failure; a panic in it is not the command's.
                let _ = counted.await;
            }
        }
        event
    }
}

/// Starts reading a file inside a running sandbox as `user` (its root when `None`), bounded by
/// the files API's size. A directory, a special file, a missing file or one the user may not
/// read fails here, at once.
pub async fn read_file(
    state: &AppState,
    id: &str,
    path: &std::path::Path,
    user: Option<String>,
) -> ServiceResult<bulkhead_runtime::FileStream> {
    Ok(state.runtime.read_file(id, path, user, state.config.sandbox_limits.file_bytes).await?)
}

/// Writes a file inside a running sandbox as `user`, atomically, from the chunks on `data`
/// (bounded by the files API's size); an error on `data` abandons the write. `mode` when given
/// (checked by the caller: at most `0o1777`); otherwise an existing file keeps its mode.
pub async fn write_file(
    state: &AppState,
    id: &str,
    path: &std::path::Path,
    data: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    mode: Option<u32>,
    user: Option<String>,
) -> ServiceResult<()> {
    let max = state.config.sandbox_limits.file_bytes;
    Ok(state.runtime.write_file(id, path, data, max, mode, user).await?)
}

/// A page of the directory `path` inside a running sandbox, as `user`: at most `limit` entries
/// whose names sort after `after`.
pub async fn list_dir(
    state: &AppState,
    id: &str,
    path: &std::path::Path,
    user: Option<String>,
    after: Option<Vec<u8>>,
    limit: u32,
) -> ServiceResult<super::listing::Listing> {
    let page = state.runtime.list_dir(id, path, user, after, limit).await?;
    Ok(super::listing::Listing { entries: page.entries.into_iter().map(Into::into).collect(), more: page.more })
}

/// Stops a sandbox and frees every host resource it held; records `status` and `reason`.
/// A sandbox that already ended is left as it is.
pub async fn destroy(
    state: &AppState,
    row: &SandboxRow,
    status: SandboxStatus,
    reason: &str,
) -> ServiceResult<SandboxRow> {
    destroy_at(state, row, status, reason, None).await
}

/// [`destroy`], recording `ended_at_ms` (milliseconds since the epoch) as the moment the sandbox
/// ended when it is known to be earlier than the teardown (a sandbox found dead); metering
/// stops there.
async fn destroy_at(
    state: &AppState,
    row: &SandboxRow,
    status: SandboxStatus,
    reason: &str,
    ended_at_ms: Option<i64>,
) -> ServiceResult<SandboxRow> {
    destroy_when(state, row, status, reason, ended_at_ms, |_| true).await
}

/// Destroys sandbox `row` only while it is still an unclaimed warm pool sandbox: checked under
/// its lock, so a claim that holds the lock meanwhile keeps it (see `service::pools`).
pub async fn destroy_if_pooled(state: &AppState, row: &SandboxRow, reason: &str) -> ServiceResult<()> {
    destroy_when(state, row, SandboxStatus::Deleted, reason, None, |current| current.pooled).await.map(|_| ())
}

/// [`destroy_at`] when `still` holds for the sandbox's current row, read under its lock.
async fn destroy_when(
    state: &AppState,
    row: &SandboxRow,
    status: SandboxStatus,
    reason: &str,
    ended_at_ms: Option<i64>,
    still: impl FnOnce(&SandboxRow) -> bool,
) -> ServiceResult<SandboxRow> {
    let _guard = state.sandbox_locks.lock(&row.id).await;
    // Gone from the store (its namespace deleted meanwhile): nothing of it is left to end.
    let Some(current) = state.store.get_sandbox(&row.namespace, &row.id).await? else {
        return Ok(row.clone());
    };
    if !current.status.is_active() || !still(&current) {
        return Ok(current);
    }
    if current.pooled {
        state.pools.forget(&current.id);
    }
    // A peer's sandbox (a namespace delete through this replica) ends in the store; its node's
    // sweep then meters it a last time and frees its host side (see `service::nodes`).
    let here = state.node.is_mine(&current.node);
    // The last sample, before the cgroup and its counters are gone; a sandbox found dead is
    // metered up to its death. An unclaimed pool sandbox was never the namespace's to pay for.
    if !current.pooled && here {
        if let Err(e) = super::metering::sample_until(state, &current, ended_at_ms).await {
            tracing::warn!(sandbox = %row.id, error = %e, "final metering sample failed");
        }
    }
    if here {
        state.runtime.delete(&row.namespace, &row.id).await?;
    }
    let ended = ended_at_ms.map_or_else(now_ms, |t| t.min(now_ms()));
    let updated = state.store.set_sandbox_status(&row.id, status, Some(reason), Some(ended)).await?;
    // Its workload token dies with it.
    state.keys.evict_sandbox(&row.id);
    tracing::info!(sandbox = %row.id, namespace = %row.namespace, reason, "sandbox ended");
    Ok(updated.unwrap_or(current))
}

/// Tears down every sandbox of a namespace and its cgroup, before the namespace is deleted: its
/// warm pools first (none starts after), then every active sandbox, again until none is left
/// (a create admitted meanwhile is found on the next pass).
pub async fn destroy_namespace(state: &AppState, ns: &str) -> ServiceResult<()> {
    super::pools::drain_namespace(state, ns).await?;
    for _ in 0..10 {
        let active: Vec<SandboxRow> =
            state.store.active_sandboxes().await?.into_iter().filter(|s| s.namespace == ns).collect();
        if active.is_empty() {
            break;
        }
        for row in &active {
            destroy(state, row, SandboxStatus::Deleted, "namespace_deleted").await?;
        }
    }
    state.runtime.remove_namespace(ns).await?;
    let mut after = None;
    loop {
        let page = state.store.list_filesystems(ns, after.as_deref(), 1000).await?;
        for f in &page {
            state.storage.delete(&f.id).await?;
        }
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.id.clone()),
            _ => break,
        }
    }
    Ok(())
}

/// Ends every sandbox whose TTL has passed.
pub async fn reap_expired(state: &AppState) -> ServiceResult<usize> {
    let now = now_ms();
    // This node's: a peer's sandbox is its own reaper's.
    let active = super::nodes::mine(state, state.store.active_sandboxes().await?);
    Ok(reap(state, &active, now).await)
}

/// Stops those of `rows` (a snapshot of active sandboxes, possibly stale) that expired by `now`
/// (milliseconds since the epoch), each checked again under its lock against the store: a pool
/// sandbox claimed since the snapshot is its claimant's, with the claimant's own expiry. The
/// number of rows found expired in the snapshot.
pub async fn reap(state: &AppState, rows: &[SandboxRow], now: i64) -> usize {
    let expired: Vec<&SandboxRow> = rows.iter().filter(|s| s.expires_at_ms <= now).collect();
    for row in &expired {
        let still_expired = |current: &SandboxRow| current.expires_at_ms <= now;
        if let Err(e) = destroy_when(state, row, SandboxStatus::Stopped, "ttl_expired", None, still_expired).await {
            tracing::warn!(sandbox = %row.id, error = %e, "expiry teardown failed; will retry");
        }
    }
    expired.len()
}

/// Runs the reaper of expired sandboxes and the health check of supervisors until the process
/// ends.
pub fn spawn_reaper(state: AppState) {
    super::spawn_every(&state, state.config.reap_interval, "reaper", |state| async move { reap_expired(&state).await });
    let failures = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<String, (u32, i64)>::new()));
    super::spawn_every(&state, HEALTH_INTERVAL, "health check", move |state| {
        let failures = failures.clone();
        async move { check_health(&state, &failures).await }
    });
}

/// How often every running sandbox's supervisor is pinged.
pub const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3);
/// How long a ping may wait for its answer.
pub const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Pings in a row without an answer after which a live supervisor counts as hung. A ping counts
/// as unanswered only when the supervisor is stopped, or asleep with no CPU time since the last
/// look (see `bulkhead_runtime::watch::liveness`): one that waits for CPU in a sandbox busy at
/// its quota answers late, not never. So a hung supervisor is found within about
/// `HEALTH_FAILURES × HEALTH_INTERVAL + HEALTH_TIMEOUT` (about 15 s).
pub const HEALTH_FAILURES: u32 = 3;

/// One pass of the health check: pings every running sandbox's supervisor at once (each bounded
/// by [`HEALTH_TIMEOUT`]); a sandbox whose supervisor missed [`HEALTH_FAILURES`] pings in a row
/// ends `failed` with `supervisor not answering`. A dead init is the watcher's (see [`watch`]);
/// this finds one that lives but no longer serves (stopped, or stuck).
async fn check_health(
    state: &AppState,
    failures: &std::sync::Mutex<HashMap<String, (u32, i64)>>,
) -> ServiceResult<usize> {
    let running: Vec<SandboxRow> = super::nodes::mine(state, state.store.active_sandboxes().await?)
        .into_iter()
        .filter(|s| s.status == SandboxStatus::Running)
        .collect();
    let sent = now_ms();
    let pings = running.iter().map(|row| async move { (row, state.runtime.ping(&row.id, HEALTH_TIMEOUT).await) });
    let answers = futures_util::future::join_all(pings).await;
    let mut hung = Vec::new();
    {
        let mut failures = failures.lock().unwrap_or_else(|e| e.into_inner());
        let live: HashSet<&str> = running.iter().map(|r| r.id.as_str()).collect();
        failures.retain(|id, _| live.contains(id.as_str()));
        for (row, answer) in answers {
            match answer {
                Ok(()) => {
                    failures.remove(&row.id);
                }
                Err(e) => {
                    let (n, since) = failures.entry(row.id.clone()).or_insert((0, sent));
                    *n += 1;
                    tracing::warn!(sandbox = %row.id, misses = *n, error = %e, "a supervisor did not answer its ping");
                    if *n >= HEALTH_FAILURES {
                        hung.push((row.clone(), *since));
                    }
                }
            }
        }
    }
    for (row, since) in &hung {
        let reason = format!("supervisor not answering: {HEALTH_FAILURES} pings in a row went unanswered");
        // It stopped serving at its first missed ping: metering stops there.
        ended(state, row, &reason, *since).await;
        failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&row.id);
    }
    Ok(hung.len())
}

/// Watches the init of running sandbox `row` for as long as it lives: when it dies while the
/// sandbox is active (not by a delete, an expiry or a namespace delete, which end the sandbox
/// first), the sandbox ends `failed` with the runtime's reason (`init exited with signal 9`,
/// `oom`, ...), its host resources are freed, its quota released, and its metering stops.
pub fn watch(state: &AppState, row: &SandboxRow) {
    let (state, row) = (state.clone(), row.clone());
    tokio::spawn(async move {
        match state.runtime.wait_init(&row.namespace, &row.id).await {
            Ok(reason) => ended(&state, &row, &reason, now_ms()).await,
            // No init to watch: dead already (between reconciliation and this watch), unless its
            // supervisor still answers, which only the health check can then follow.
            Err(e) => match state.runtime.ping(&row.id, HEALTH_TIMEOUT).await {
                Err(_) => ended(&state, &row, "init exited (its exit status could not be read)", now_ms()).await,
                Ok(()) => tracing::warn!(sandbox = %row.id, error = %e, "cannot watch the sandbox's init"),
            },
        }
    });
}

/// Ends `row` as failed with `reason` at `died_at_ms`, unless it has already ended (a delete, an expiry or a
/// namespace delete kills the init too, and ends the sandbox first).
async fn ended(state: &AppState, row: &SandboxRow, reason: &str, died_at_ms: i64) {
    match destroy_at(state, row, SandboxStatus::Failed, reason, Some(died_at_ms)).await {
        Ok(ended) if ended.status == SandboxStatus::Failed && ended.reason.as_deref() == Some(reason) => {
            tracing::warn!(sandbox = %row.id, namespace = %row.namespace, reason, "sandbox died");
            if let Some(tenant) = crate::state::tenant(state, &row.namespace).await {
                state.metrics.sandbox_failed(&tenant, reason);
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(sandbox = %row.id, error = %e, "teardown of a dead sandbox failed; the health check retries")
        }
    }
}

/// At start: every sandbox the store believes active is adopted (and its init watched, see
/// [`watch`]) when its supervisor still runs (and its TTL has not passed), and otherwise torn
/// down and marked failed; every sandbox the host has but the store does not know as active is
/// an orphan and removed, unless its bundle carries another store's owner mark; cgroups of
/// namespaces that no longer exist are removed.
pub async fn reconcile(state: &AppState) -> ServiceResult<ReconcileReport> {
    let mut report = ReconcileReport::default();
    let host = state.runtime.list().await?;
    let running: HashSet<&str> = host.iter().filter(|h| h.running).map(|h| h.id.as_str()).collect();
    // This node's: its peers' sandboxes run on their hosts.
    let active = super::nodes::mine(state, state.store.active_sandboxes().await?);
    let known: HashMap<&str, &SandboxRow> = active.iter().map(|s| (s.id.as_str(), s)).collect();
    let now = now_ms();
    let me = state.host_ids.owner.as_str();
    for row in &active {
        if row.pooled {
            // The pools of the last process: recycled, the filler starts new ones.
            state.runtime.delete(&row.namespace, &row.id).await?;
            state.store.set_sandbox_status(&row.id, SandboxStatus::Deleted, Some("pool_recycled"), Some(now)).await?;
            continue;
        }
        if row.status == SandboxStatus::Running && running.contains(row.id.as_str()) && row.expires_at_ms > now {
            report.adopted += 1;
            watch(state, row);
            continue;
        }
        state.runtime.delete(&row.namespace, &row.id).await?;
        let (status, reason) = if row.expires_at_ms <= now {
            (SandboxStatus::Stopped, "ttl_expired")
        } else {
            (SandboxStatus::Failed, "lost: the sandbox was not running when the server started")
        };
        if status == SandboxStatus::Failed {
            if let Some(tenant) = crate::state::tenant(state, &row.namespace).await {
                state.metrics.sandbox_failed(&tenant, reason);
            }
        }
        state.store.set_sandbox_status(&row.id, status, Some(reason), Some(now)).await?;
        report.failed += 1;
    }
    for h in &host {
        if let Some(owner) = h.owner.as_deref().filter(|o| *o != me) {
            // Another store's sandbox in this state dir (it was that server's before): not ours
            // to judge.
            tracing::warn!(sandbox = %h.id, owner, "leaving alone a sandbox of another store");
            continue;
        }
        if !known.contains_key(h.id.as_str()) {
            state.runtime.delete(h.namespace.as_deref().unwrap_or(""), &h.id).await?;
            report.orphans += 1;
        }
    }
    for ns in state.runtime.namespaces().await? {
        if state.store.get_namespace(&ns).await?.is_none() {
            state.runtime.remove_namespace(&ns).await?;
        }
    }
    Ok(report)
}

/// What reconciliation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileReport {
    pub adopted: usize,
    pub failed: usize,
    pub orphans: usize,
}

/// Sandbox `id` of namespace `ns`, if it exists (in any status); an unclaimed warm pool
/// sandbox is no sandbox of the namespace's yet.
pub async fn get(state: &AppState, ns: &str, id: &str) -> ServiceResult<Option<SandboxRow>> {
    Ok(state.store.get_sandbox(ns, id).await?.filter(|s| !s.pooled))
}

/// [`get`], warm pool sandboxes included.
pub async fn get_any(state: &AppState, ns: &str, id: &str) -> ServiceResult<Option<SandboxRow>> {
    Ok(state.store.get_sandbox(ns, id).await?)
}
