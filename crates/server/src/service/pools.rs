//! Warm pools: per namespace and image, sandboxes started before any create asks for them, so
//! that a create is a claim instead of a start.
//!
//! - **What a pool sandbox is.** A sandbox of its namespace (its cgroup, its host id range, its
//!   network), started from the pool's image with the namespace's default limits and nothing of
//!   any claimant: no environment but the image's, no `/run` files, no filesystem, no agent code,
//!   no egress (its row allows none), no workload token. Its row (`pooled`) counts against the
//!   namespace's quotas like any active sandbox; no list or lookup of the namespace shows it, and
//!   it is never metered to the namespace until it is claimed.
//! - **A claim** ([`Pools::reserve`], then `sandboxes::create`): a create of the namespace that
//!   names the pool's image (and needs nothing a claim cannot bind: brokered credentials, whose
//!   CA must be in place at start) takes a ready pool sandbox. Its id becomes the new sandbox's
//!   id; the store turns the pool's row into the claimant's in one transaction with the quota
//!   check; the runtime binds the claimant's limits, writable size, `/run` files, filesystem,
//!   agent code and environment (`Runtime::claim`). A pool sandbox serves one claim: once
//!   reserved it is claimed or destroyed, never handed out again.
//! - **The filler** ([`spawn`]): keeps each pool at its size, one start at a time, as the
//!   namespace's quotas allow (admitted like a create, a pool stays short when the quota is
//!   full); shrinks pools whose size went down or whose config went, and those of a namespace
//!   over its quotas (lowered under them); and under memory pressure (the host's `MemAvailable`
//!   below [`crate::state::PoolSettings::min_available_bytes`]) destroys ready pool sandboxes,
//!   one per pass, and starts none.
//! - **Pools give way**: a create of the namespace that its quotas refuse (one that cannot
//!   claim: another image, brokered credentials; or a claim larger than the pool sandbox) has a
//!   ready pool sandbox of the namespace destroyed and is admitted again ([`give_way`]): pools
//!   use what the namespace's quotas leave, never what its own creates need.
//! - **At start** the pool sandboxes of the previous process are destroyed (reconciliation) and
//!   the filler starts fresh ones.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use bulkhead_runtime::spec::OciKind;
use bulkhead_store::{NamespaceRow, SandboxRow, SandboxStatus, WarmPoolRow};

use super::{ServiceError, ServiceResult};
use crate::state::AppState;

/// The most sandboxes one pool may keep.
pub const MAX_POOL_SIZE: u64 = 1000;

/// The creator a pool sandbox's row names until it is claimed.
pub const POOL_CREATOR: &str = "pool";

type PoolKey = (String, String);

/// The server's warm pools: which pool sandboxes are ready to claim, and which are starting.
#[derive(Default)]
pub struct Pools {
    /// Started, unclaimed and unreserved pool sandboxes by (namespace, image id), oldest first.
    ready: Mutex<HashMap<PoolKey, VecDeque<String>>>,
    /// Pool sandboxes being started, by (namespace, image id).
    starting: Mutex<HashMap<PoolKey, usize>>,
    /// Wakes the filler (a claim, a size change).
    wake: std::sync::Arc<tokio::sync::Notify>,
    /// [`crate::state::PoolSettings::min_available_bytes`] as changed while the server runs.
    min_available: Mutex<Option<u64>>,
    /// When the last claim went through: the filler holds its next pass until
    /// [`REFILL_DELAY`] after it.
    last_claim: Mutex<Option<std::time::Instant>>,
    /// Where the filler's next look for a pool below its size begins (an index into the pools
    /// in the store's order), so that pools take turns: one namespace's churn cannot keep
    /// another's from refilling.
    next_fill: std::sync::atomic::AtomicUsize,
}

/// How long after a claim the filler waits before it refills. A claim is followed at once by
/// the claimant's first requests (an exec, a file), and a refill is a sandbox start: the OCI
/// runtime, mounts and the store's writer, on the same cores. The start itself runs at a
/// tenth of the CPU weight (`bulkhead_runtime::cgroup::POOL_CPU_SHARES`, `POOL_NICE`), but the
/// server's part of it does not; so it waits for the claimant's first moments. It waits once
/// per pass: claims in a row (any namespace's) slow the filler to a pass every `REFILL_DELAY`
/// at most, and never stop it. `bench --only images` measures create → first output from a
/// pool with it.
pub const REFILL_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// The state of one pool, as `GET .../pools` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub config: WarmPoolRow,
    /// Sandboxes ready to claim now.
    pub ready: u64,
    /// Sandboxes being started.
    pub starting: u64,
}

/// A ready pool sandbox taken for one create. Dropped without [`Reservation::claimed`] or
/// [`Reservation::release`], it is destroyed (in the background): something of the create may
/// have named it.
pub struct Reservation {
    state: AppState,
    key: PoolKey,
    id: String,
    settled: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reservation({} of {}/{})", self.id, self.key.0, self.key.1)
    }
}

impl Reservation {
    /// The pool sandbox's id: the id of the sandbox the create makes.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The claim went through: the sandbox is the claimant's now.
    pub fn claimed(mut self) {
        self.settled = true;
        *self.state.pools.last_claim.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
        self.state.pools.wake.notify_one();
    }

    /// Gives the sandbox back, untouched: only when nothing of the claimant reached it or its row
    /// (the store refused the claim for a quota, before any binding).
    pub fn release(mut self) {
        self.settled = true;
        let mut ready = self.state.pools.ready.lock().unwrap_or_else(|e| e.into_inner());
        ready.entry(self.key.clone()).or_default().push_front(self.id.clone());
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (state, ns, id) = (self.state.clone(), self.key.0.clone(), self.id.clone());
        tokio::spawn(async move {
            discard(&state, &ns, &id, "pool_discarded").await;
            state.pools.wake.notify_one();
        });
    }
}

impl Pools {
    /// Takes a ready sandbox of the pool of `image_id` in `namespace`, if there is one.
    pub fn reserve(state: &AppState, namespace: &str, image_id: &str) -> Option<Reservation> {
        let key = (namespace.to_owned(), image_id.to_owned());
        let id = state.pools.ready.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&key)?.pop_front()?;
        Some(Reservation { state: state.clone(), key, id, settled: false })
    }

    /// Sets the host's `MemAvailable` below which pools give sandboxes back (bytes; 0: never),
    /// in place of the server's setting, and wakes the filler.
    pub fn set_min_available(&self, bytes: u64) {
        *self.min_available.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
        self.wake.notify_one();
    }

    /// Forgets pool sandbox `id` (it is being destroyed).
    pub fn forget(&self, id: &str) {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        for ids in ready.values_mut() {
            ids.retain(|i| i != id);
        }
    }

    /// Pool sandboxes being started for namespace `ns`, of every image.
    fn starting_in(&self, ns: &str) -> usize {
        self.starting.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|(k, _)| k.0 == ns).map(|(_, n)| n).sum()
    }

    fn ready_count(&self, key: &PoolKey) -> usize {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).get(key).map_or(0, VecDeque::len)
    }

    fn starting_count(&self, key: &PoolKey) -> usize {
        self.starting.lock().unwrap_or_else(|e| e.into_inner()).get(key).copied().unwrap_or(0)
    }

    fn take_ready(&self, key: &PoolKey) -> Option<String> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).get_mut(key)?.pop_back()
    }

    fn add_starting(&self, key: &PoolKey, delta: isize) {
        let mut starting = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        let n = starting.entry(key.clone()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            starting.remove(key);
        }
    }
}

/// The pools of `namespace` with what each holds now.
pub async fn list(state: &AppState, namespace: &str) -> ServiceResult<Vec<PoolStatus>> {
    let configs = state.store.warm_pools(Some(namespace)).await?;
    Ok(configs
        .into_iter()
        .map(|config| {
            let key = (config.namespace.clone(), config.image_id.clone());
            let (ready, starting) = (state.pools.ready_count(&key), state.pools.starting_count(&key));
            PoolStatus { config, ready: ready as u64, starting: starting as u64 }
        })
        .collect())
}

/// Sets the size of the pool of `image_id` in namespace `ns` (0 removes the pool; the filler
/// starts or destroys sandboxes to match, in the background) and answers its status. Errors:
/// `Conflict` for a pool on a namespace whose tier runs on gVisor (it has none).
pub async fn set(state: &AppState, ns: &NamespaceRow, image_id: &str, size: u64) -> ServiceResult<PoolStatus> {
    if size > MAX_POOL_SIZE {
        return Err(ServiceError::Invalid(format!("size: at most {MAX_POOL_SIZE}")));
    }
    // A claim mounts into the sandbox's mount namespace, which gVisor keeps in its own kernel.
    let class = state.config.runtime_classes.get(&ns.isolation);
    if size > 0 && class.is_some_and(|c| OciKind::of(&c.runtime) == OciKind::Gvisor) {
        return Err(ServiceError::Conflict(format!(
            "namespace {}'s isolation tier {:?} runs on gVisor, which has no warm pools",
            ns.name, ns.isolation
        )));
    }
    let namespace = ns.name.as_str();
    match state.store.set_warm_pool(namespace, image_id, size, crate::time::now_ms()).await {
        Err(bulkhead_store::StoreError::NotFound(what)) => {
            return Err(ServiceError::NotFound(format!("{what} not found")))
        }
        other => other?,
    }
    state.pools.wake.notify_one();
    let key = (namespace.to_owned(), image_id.to_owned());
    Ok(PoolStatus {
        config: WarmPoolRow {
            namespace: namespace.to_owned(),
            image_id: image_id.to_owned(),
            size,
            updated_at_ms: crate::time::now_ms(),
        },
        ready: state.pools.ready_count(&key) as u64,
        starting: state.pools.starting_count(&key) as u64,
    })
}

/// Destroys one ready pool sandbox of namespace `ns` (the oldest of any of its pools), so that
/// a create of the namespace that its quotas refuse can be admitted: pools use what the
/// namespace's quotas leave, never what its own creates need. False when it has none.
pub async fn give_way(state: &AppState, ns: &str) -> bool {
    let victim = {
        let mut ready = state.pools.ready.lock().unwrap_or_else(|e| e.into_inner());
        ready.iter_mut().filter(|(k, _)| k.0 == ns).find_map(|(_, ids)| ids.pop_front())
    };
    let Some(id) = victim else { return false };
    tracing::info!(sandbox = %id, namespace = %ns, "a warm pool sandbox gives way to a create");
    discard(state, ns, &id, "pool_gave_way").await;
    true
}

/// Removes every pool of namespace `ns`, waits for the pool sandboxes being started for it (at
/// most a minute), and destroys its unclaimed ones: before the namespace is deleted.
pub async fn drain_namespace(state: &AppState, ns: &str) -> ServiceResult<()> {
    for pool in state.store.warm_pools(Some(ns)).await? {
        state.store.set_warm_pool(ns, &pool.image_id, 0, crate::time::now_ms()).await?;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while state.pools.starting_in(ns) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let pooled: Vec<SandboxRow> =
        state.store.active_sandboxes().await?.into_iter().filter(|s| s.pooled && s.namespace == ns).collect();
    for row in pooled {
        state.pools.forget(&row.id);
        discard(state, ns, &row.id, "namespace_deleted").await;
    }
    Ok(())
}

/// Removes every pool of image `image_id` (in every namespace) and destroys their ready
/// sandboxes: before the image itself is deleted.
pub async fn drain_image(state: &AppState, image_id: &str) -> ServiceResult<()> {
    for pool in state.store.warm_pools(None).await?.into_iter().filter(|p| p.image_id == image_id) {
        state.store.set_warm_pool(&pool.namespace, image_id, 0, crate::time::now_ms()).await?;
        let key = (pool.namespace.clone(), pool.image_id.clone());
        while let Some(id) = state.pools.take_ready(&key) {
            discard(state, &pool.namespace, &id, "pool_drained").await;
        }
    }
    // And those still starting: their teardown waits for their start.
    let starting: Vec<SandboxRow> = state
        .store
        .active_sandboxes()
        .await?
        .into_iter()
        .filter(|s| s.pooled && s.image.as_ref().is_some_and(|i| i.id == image_id))
        .collect();
    for row in starting {
        discard(state, &row.namespace, &row.id, "pool_drained").await;
    }
    Ok(())
}

/// Destroys unclaimed pool sandbox `id` of `namespace` (a row that is no longer a pool's, such
/// as one claimed meanwhile, is left alone: checked again under the sandbox's lock).
async fn discard(state: &AppState, namespace: &str, id: &str, reason: &str) {
    match super::sandboxes::get_any(state, namespace, id).await {
        Ok(Some(row)) if row.pooled => {
            if let Err(e) = super::sandboxes::destroy_if_pooled(state, &row, reason).await {
                tracing::warn!(sandbox = %id, error = %e, "destroying a pool sandbox failed");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(sandbox = %id, error = %e, "looking up a pool sandbox failed"),
    }
}

/// How often the filler looks at the pools when nothing wakes it.
const FILL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the filler until the process ends, or until nothing else holds the server's state
/// (it holds the state only while a pass runs or it waits to be woken).
pub fn spawn(state: AppState) {
    let weak = std::sync::Arc::downgrade(&state.0);
    drop(state);
    tokio::spawn(async move {
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let mut state = AppState(inner);
            // Within REFILL_DELAY of a claim, the pass waits for the claimant's first moments;
            // once, so that claims in a row delay passes but never stop them.
            let since = state.pools.last_claim.lock().unwrap_or_else(|e| e.into_inner()).map(|t| t.elapsed());
            if let Some(wait) = since.and_then(|s| REFILL_DELAY.checked_sub(s)) {
                drop(state);
                tokio::time::sleep(wait).await;
                let Some(inner) = weak.upgrade() else { return };
                state = AppState(inner);
            }
            let busy = match fill_pass(&state).await {
                Ok(busy) => busy,
                Err(e) => {
                    tracing::warn!(error = %e, "warm pool pass failed");
                    false
                }
            };
            if !busy {
                // Woken by a claim or a size change, or at the next interval; waiting holds
                // the wake-up alone, not the state (a `notify_one` meanwhile is kept).
                let wake = state.pools.wake.clone();
                drop(state);
                let _ = tokio::time::timeout(FILL_INTERVAL, wake.notified()).await;
            }
        }
    });
}

/// The host's `MemAvailable` in bytes (`/proc/meminfo`); `None` when it cannot be read.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 =
        text.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// One pass: forgets ready sandboxes that ended, shrinks what is over its size, then (without
/// memory pressure) starts one sandbox for the first pool below its size. True when it did
/// something, so that the next pass follows at once.
async fn fill_pass(state: &AppState) -> ServiceResult<bool> {
    let configs = state.store.warm_pools(None).await?;
    let wanted: HashMap<PoolKey, u64> =
        configs.iter().map(|c| ((c.namespace.clone(), c.image_id.clone()), c.size)).collect();
    // Ready ids whose rows are no longer unclaimed pool sandboxes (they died, expired, or went
    // with their namespace) are forgotten.
    let active = state.store.active_sandboxes().await?;
    let live: HashSet<String> =
        active.iter().filter(|s| s.pooled && s.status == SandboxStatus::Running).map(|s| s.id.clone()).collect();
    let keys: Vec<PoolKey> = {
        let mut ready = state.pools.ready.lock().unwrap_or_else(|e| e.into_inner());
        for ids in ready.values_mut() {
            ids.retain(|id| live.contains(id));
        }
        ready.retain(|_, ids| !ids.is_empty());
        ready.keys().cloned().collect()
    };
    // Over its size (or no longer configured): the newest ready sandbox goes.
    for key in &keys {
        let size = wanted.get(key).copied().unwrap_or(0);
        if state.pools.ready_count(key) + state.pools.starting_count(key) > size as usize {
            if let Some(id) = state.pools.take_ready(key) {
                discard(state, &key.0, &id, "pool_shrunk").await;
                return Ok(true);
            }
        }
    }
    // A namespace over its quotas (they were lowered under its pools) gives a ready sandbox back.
    let with_ready: HashSet<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    for ns in with_ready {
        let Some(row) = state.store.get_namespace(ns).await? else { continue };
        let mine: Vec<&SandboxRow> = active.iter().filter(|s| s.namespace == ns).collect();
        let (cpu, memory): (u64, u64) =
            mine.iter().fold((0, 0), |(c, m), s| (c.saturating_add(s.cpu_millis), m.saturating_add(s.memory_bytes)));
        let q = &row.quotas;
        let over = mine.len() as u64 > q.max_sandboxes || cpu > q.cpu_millis || memory > q.memory_bytes;
        if over && give_way(state, ns).await {
            return Ok(true);
        }
    }
    let floor = state
        .pools
        .min_available
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or(state.config.pools.min_available_bytes);
    if floor > 0 && mem_available().is_some_and(|a| a < floor) {
        let victim = keys.iter().find_map(|k| state.pools.take_ready(k).map(|id| (k.0.clone(), id)));
        if let Some((ns, id)) = victim {
            tracing::info!(sandbox = %id, namespace = %ns, "memory pressure: a warm pool gives back a sandbox");
            discard(state, &ns, &id, "pool_memory_pressure").await;
            return Ok(true);
        }
        return Ok(false);
    }
    // Pools take turns, from the one after the last that started a sandbox.
    let first = state.pools.next_fill.load(std::sync::atomic::Ordering::Relaxed);
    for i in 0..configs.len() {
        let at = (first + i) % configs.len();
        let config = &configs[at];
        let key = (config.namespace.clone(), config.image_id.clone());
        if state.pools.ready_count(&key) + state.pools.starting_count(&key) >= config.size as usize {
            continue;
        }
        if start_one(state, &key).await? {
            state.pools.next_fill.store(at + 1, std::sync::atomic::Ordering::Relaxed);
            return Ok(true);
        }
    }
    Ok(false)
}

/// Starts one sandbox for the pool `key`; false when the namespace's quotas have no room (or
/// the namespace or image went meanwhile).
async fn start_one(state: &AppState, key: &PoolKey) -> ServiceResult<bool> {
    let Some(ns) = state.store.get_namespace(&key.0).await? else { return Ok(false) };
    let Some(image) = state.store.find_image(Some(&key.0), &key.1).await? else { return Ok(false) };
    state.pools.add_starting(key, 1);
    let started = create_pooled(state, &ns, &image).await;
    state.pools.add_starting(key, -1);
    match started {
        Ok(row) => {
            state
                .pools
                .ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key.clone())
                .or_default()
                .push_back(row.id);
            Ok(true)
        }
        Err(ServiceError::QuotaExceeded(_)) => Ok(false),
        Err(e) => {
            tracing::warn!(namespace = %key.0, image = %key.1, error = %e, "a warm pool sandbox failed to start");
            Ok(false)
        }
    }
}

/// The limits of a pool sandbox until its claim: the defaults of a create.
pub fn pool_limits(ns: &NamespaceRow) -> (u64, u64) {
    let q = &ns.quotas;
    (super::sandboxes::DEFAULT_CPU_MILLIS.min(q.cpu_millis), super::sandboxes::DEFAULT_MEMORY_BYTES.min(q.memory_bytes))
}

/// Starts a pool sandbox of `image` in `ns`.
async fn create_pooled(
    state: &AppState,
    ns: &NamespaceRow,
    image: &bulkhead_store::ImageRow,
) -> ServiceResult<SandboxRow> {
    let (cpu_millis, memory_bytes) = pool_limits(ns);
    let config = super::images::config_of(image)?;
    let disk_bytes = super::sandboxes::DEFAULT_DISK_BYTES.min(memory_bytes);
    let root = super::images::root(state, image, disk_bytes).await?;
    let plan = super::sandboxes::Plan {
        cpu_millis,
        memory_bytes,
        // Recycled after the namespace's longest TTL, like any sandbox it could have been.
        ttl_seconds: ns.quotas.max_sandbox_ttl_seconds,
        env: super::images::merge_env(&config.env, Vec::new()),
        filesystem: None,
        id: bulkhead_core::ids::new_id(bulkhead_core::ids::prefix::SANDBOX),
        creator: POOL_CREATOR.to_owned(),
        run_files: Vec::new(),
        workload_token_hash: None,
        secrets: Vec::new(),
        egress: None,
        root,
        image: Some(super::images::sandbox_image(image, &config)),
        disk_bytes: Some(disk_bytes),
        task: None,
        start: super::sandboxes::Start::Pool,
    };
    super::sandboxes::create(state, ns, plan).await
}
