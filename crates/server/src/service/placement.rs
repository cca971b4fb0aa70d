//! Namespaces' placement on this host's cores: `shared` (every core no dedicated namespace
//! holds) or `dedicated` (cores and a memory reservation of its own), admitted against what the
//! host has left ([`bulkhead_core::placement::HostCapacity::admit`]) and applied to the
//! namespaces' cgroups at once, running sandboxes moved with them.
//!
//! Changes are serialized (one admission at a time, so two namespaces never get the same core);
//! the dedicated placements of the store are kept in memory for the shared namespaces' cpuset.
//! Until a namespace of this server is dedicated, nothing touches any cpuset: a host without
//! dedicated placements runs as it did without them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use bulkhead_core::placement::{check_request, Dedicated, HostCapacity, Placement};
use bulkhead_runtime::CpuPlacement;

use super::records::NamespaceRow;
use super::{ServiceError, ServiceResult};
use crate::state::AppState;
use crate::time::now_ms;

/// What a namespace asks for, before admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Shared,
    /// `cpus` cores (default: its cpu quota rounded up to whole cores) and `memory_bytes`
    /// reserved (default: its memory quota).
    Dedicated {
        cpus: Option<u32>,
        memory_bytes: Option<u64>,
    },
}

/// The server's placements.
pub struct Placements {
    /// This host's cores and memory; `None` when they cannot be read (then no namespace can be
    /// dedicated).
    capacity: Option<HostCapacity>,
    /// Every dedicated namespace's placement, by name.
    dedicated: RwLock<BTreeMap<String, Dedicated>>,
    /// Set once a namespace is dedicated: from then on the shared namespaces' cpusets are
    /// written too.
    in_use: AtomicBool,
    /// One change at a time (written), and no namespace's cgroup set from a placement a change
    /// is replacing (read).
    changes: tokio::sync::RwLock<()>,
}

impl Default for Placements {
    fn default() -> Self {
        Placements {
            capacity: bulkhead_runtime::host::capacity(),
            dedicated: Default::default(),
            in_use: AtomicBool::new(false),
            changes: Default::default(),
        }
    }
}

impl Placements {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Dedicated>> {
        self.dedicated.read().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, ns: &str, placement: &Placement) {
        let mut map = self.dedicated.write().unwrap_or_else(|e| e.into_inner());
        match placement.dedicated() {
            Some(d) => {
                map.insert(ns.to_owned(), d.clone());
                self.in_use.store(true, Ordering::Relaxed);
            }
            None => {
                map.remove(ns);
            }
        }
    }

    /// Where namespace `ns`'s sandboxes run, as the kernel is told it: from the placements as
    /// they are now (never from a row read before a change).
    pub fn cpu_placement(&self, ns: &str) -> CpuPlacement {
        let map = self.read();
        match map.get(ns) {
            Some(d) => CpuPlacement { cpus: Some(d.cpuset.clone()), dedicated: true, memory_min_bytes: d.memory_bytes },
            None if self.in_use.load(Ordering::Relaxed) => CpuPlacement {
                cpus: self.capacity.as_ref().map(|c| c.shared(map.values())),
                dedicated: false,
                memory_min_bytes: 0,
            },
            None => CpuPlacement::default(),
        }
    }

    /// Admits `request` for namespace `row` (its quotas as they will be) beside every other
    /// dedicated namespace. `Invalid` for a request out of bounds, `Conflict` naming what the
    /// host lacks.
    fn admit(&self, row: &NamespaceRow, request: &Request) -> ServiceResult<Placement> {
        let Request::Dedicated { cpus, memory_bytes } = request else { return Ok(Placement::Shared) };
        let q = &row.quotas;
        let cpus = cpus.unwrap_or_else(|| u32::try_from(q.cpu_millis.div_ceil(1000)).unwrap_or(u32::MAX).max(1));
        let memory_bytes = memory_bytes.unwrap_or(q.memory_bytes);
        check_request(cpus, memory_bytes, q.memory_bytes)?;
        let Some(capacity) = &self.capacity else {
            return Err(ServiceError::Conflict("placement: this host's cores cannot be read".into()));
        };
        let current = row.placement.dedicated().map(|d| &d.cpuset);
        let map = self.read();
        let others = map.iter().filter(|(name, _)| *name != &row.name).map(|(_, d)| d);
        let cpuset = capacity.admit(cpus, memory_bytes, current, others).map_err(ServiceError::Conflict)?;
        Ok(Placement::Dedicated(Dedicated { cpus, memory_bytes, cpuset }))
    }
}

/// Sets namespace `row`'s cgroup (its quotas, and its placement as it is now), then runs
/// `start` (a sandbox's start, which makes the sandbox's cgroups below it), both while no
/// placement change runs: a change waits for starts in flight, and a start behind a change sees
/// its outcome. Nothing a change applies is undone by a start that read the namespace before it.
pub async fn start_in<T, F>(state: &AppState, row: &NamespaceRow, start: F) -> ServiceResult<T>
where
    F: std::future::Future<Output = ServiceResult<T>>,
{
    let _stable = state.placements.changes.read().await;
    state.runtime.ensure_namespace(&row.name, &super::sandboxes::namespace_limits(state, row)).await?;
    start.await
}

/// Sets namespace `ns`'s quotas and has the kernel enforce them on its cgroup at once, refused
/// (`Invalid`) when they fall below its dedicated memory reservation, checked and written while
/// no placement change runs. `None` when it does not exist.
pub async fn update_quotas(
    state: &AppState,
    ns: &str,
    quotas: &bulkhead_core::Quotas,
) -> ServiceResult<Option<NamespaceRow>> {
    let _change = state.placements.changes.write().await;
    let Some(current) = state.store.get_namespace(ns).await? else { return Ok(None) };
    check_quotas(&current.placement, quotas)?;
    let Some(row) = state.store.update_namespace_quotas(ns, quotas, now_ms()).await? else { return Ok(None) };
    state.namespaces.put(row.clone());
    state.runtime.ensure_namespace(ns, &super::sandboxes::namespace_limits(state, &row)).await?;
    Ok(Some(row))
}

/// Checks quotas about to be set on a namespace against its placement: a dedicated reservation
/// stays within the memory quota (lower the reservation first).
pub fn check_quotas(placement: &Placement, quotas: &bulkhead_core::Quotas) -> ServiceResult<()> {
    match placement.dedicated() {
        Some(d) if d.memory_bytes > quotas.memory_bytes => Err(ServiceError::Invalid(format!(
            "quotas.memory_bytes: below the namespace's dedicated memory reservation ({} bytes); change its placement first",
            d.memory_bytes
        ))),
        _ => Ok(()),
    }
}

/// Loads the store's dedicated placements at start and applies every namespace's to its
/// cgroup (sandboxes adopted from the last process run where their namespace now belongs).
pub async fn load(state: &AppState) -> ServiceResult<()> {
    let mut after: Option<String> = None;
    loop {
        let page = state.store.list_namespaces(after.as_deref(), 500, None).await?;
        for row in &page {
            state.placements.set(&row.name, &row.placement);
        }
        match page.last() {
            Some(last) if page.len() == 500 => after = Some(last.name.clone()),
            _ => break,
        }
    }
    if let Some(capacity) = &state.placements.capacity {
        let map = state.placements.read();
        for problem in capacity.standing_conflicts(map.iter().map(|(ns, d)| (ns.as_str(), d))) {
            tracing::warn!(
                "placement: {problem}; the namespaces keep their cores until an admin changes their placement"
            );
        }
    }
    if state.placements.in_use.load(Ordering::Relaxed) {
        apply_all(state).await?;
    }
    Ok(())
}

/// Decides the placement of a namespace about to be created (`row`, shared), holding the
/// change lock until `create` (which stores the row) returns, so no other admission sees the
/// host between the two.
pub async fn create<F, Fut>(
    state: &AppState,
    mut row: NamespaceRow,
    request: &Request,
    create: F,
) -> ServiceResult<NamespaceRow>
where
    F: FnOnce(NamespaceRow) -> Fut,
    Fut: std::future::Future<Output = ServiceResult<NamespaceRow>>,
{
    let _change = state.placements.changes.write().await;
    row.placement = state.placements.admit(&row, request)?;
    let row = create(row).await?;
    if row.placement.dedicated().is_some() {
        state.placements.set(&row.name, &row.placement);
        // Its cores leave the shared namespaces now; its own cgroup gets them at its first create.
        apply_all(state).await?;
    }
    Ok(row)
}

/// Changes namespace `ns`'s placement: admitted (against `quotas` when the same change sets
/// them), stored, then applied to every namespace's cgroup (its running sandboxes move at
/// once). A failure to apply puts the old placement back (stored and applied) and is the error.
/// `None` when the namespace does not exist.
pub async fn update(
    state: &AppState,
    ns: &str,
    request: &Request,
    quotas: Option<&bulkhead_core::Quotas>,
) -> ServiceResult<Option<NamespaceRow>> {
    let _change = state.placements.changes.write().await;
    let Some(old) = state.store.get_namespace(ns).await? else { return Ok(None) };
    let mut basis = old.clone();
    if let Some(q) = quotas {
        basis.quotas = *q;
    }
    let placement = state.placements.admit(&basis, request)?;
    if placement == old.placement {
        // Nothing to store; the cgroups are written again all the same, so asking again repairs
        // whatever changed them behind the server's back.
        apply_all(state).await?;
        return Ok(Some(old));
    }
    let Some(row) = state.store.update_namespace_placement(ns, &placement, now_ms()).await? else { return Ok(None) };
    state.namespaces.put(row.clone());
    state.placements.set(ns, &row.placement);
    if let Err(e) = apply_all(state).await {
        tracing::warn!(namespace = ns, error = %e, "applying a placement failed; putting the old one back");
        if let Some(back) = state.store.update_namespace_placement(ns, &old.placement, now_ms()).await? {
            state.namespaces.put(back);
        }
        state.placements.set(ns, &old.placement);
        if let Err(e) = apply_all(state).await {
            tracing::warn!(namespace = ns, error = %e, "applying the old placement again failed");
        }
        return Err(e);
    }
    Ok(Some(row))
}

/// Forgets deleted namespace `ns`'s placement; its cores go back to the shared namespaces.
pub async fn forget(state: &AppState, ns: &str) {
    let _change = state.placements.changes.write().await;
    if state.placements.read().contains_key(ns) {
        state.placements.set(ns, &Placement::Shared);
        if let Err(e) = apply_all(state).await {
            tracing::warn!(namespace = ns, error = %e, "giving a deleted namespace's cores back failed");
        }
    }
}

/// Applies every placement to the namespaces with a cgroup: first the shared ones (which gives
/// up the cores a dedicated namespace is about to take), then the dedicated ones.
async fn apply_all(state: &AppState) -> ServiceResult<()> {
    let names = state.runtime.namespaces().await?;
    let mut rows = Vec::with_capacity(names.len());
    for name in &names {
        if let Some(row) = state.store.get_namespace(name).await? {
            rows.push(row);
        }
    }
    rows.sort_by_key(|r| r.placement.dedicated().is_some());
    for row in &rows {
        state.runtime.ensure_namespace(&row.name, &super::sandboxes::namespace_limits(state, row)).await?;
    }
    Ok(())
}
