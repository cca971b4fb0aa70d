//! What every handler shares: the store, the token hasher, the configuration, and the cache of
//! authenticated keys that keeps the read path free of database writes and slow hashes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bulkhead_core::token::TokenHasher;
use bulkhead_core::Principal;
use bulkhead_runtime::{FilesystemStorage, Runtime};
use bulkhead_store::Store;

/// One runtime class: an isolation tier and the OCI runtime that implements it, the way a
/// Kubernetes RuntimeClass names a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeClass {
    /// The OCI runtime binary, such as `runc`.
    pub runtime: String,
}

/// Where the sandbox runtime keeps its host state.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Bundles and OCI runtime state; must be on a filesystem the sandboxes' mapped ids can
    /// traverse (default `/run/bulkhead`).
    pub state_dir: PathBuf,
    /// Name of this server's top cgroup (default `bulkhead`).
    pub cgroup_prefix: String,
    /// The sandbox supervisor binary (default: `bulkhead-supervisor` beside this executable).
    pub supervisor: PathBuf,
    /// What network each sandbox has (default: loopback only).
    pub network: bulkhead_runtime::net::NetworkMode,
    /// Where sandbox addresses come from with `network` isolated (default `100.64.0.0/10`).
    pub sandbox_cidr: bulkhead_runtime::net::Cidr,
    /// `--egress-ca-file`: a PEM file of trust anchors for the upstream TLS of brokered hosts,
    /// beside the web PKI roots (tests' own CA). Read and checked at start.
    pub egress_ca_file: Option<PathBuf>,
    /// The egress gateway's upstream resolver (`--egress-dns`); `None` for the host's.
    pub egress_dns: Option<std::net::SocketAddr>,
    /// Where lxcfs is mounted (`--lxcfs`, default `/var/lib/lxcfs`); `None` (`--lxcfs none`):
    /// sandboxes see the host's `/proc/meminfo` and friends.
    pub lxcfs: Option<PathBuf>,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("bulkhead-supervisor")))
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin/bulkhead-supervisor"));
        Self {
            state_dir: PathBuf::from("/run/bulkhead"),
            cgroup_prefix: "bulkhead".to_owned(),
            supervisor: beside,
            network: Default::default(),
            sandbox_cidr: bulkhead_runtime::net::Cidr { addr: std::net::Ipv4Addr::new(100, 64, 0, 0), len: 10 },
            egress_ca_file: None,
            egress_dns: None,
            lxcfs: Some(PathBuf::from("/var/lib/lxcfs")),
        }
    }
}

/// Limits of sandbox requests.
#[derive(Debug, Clone)]
pub struct SandboxLimits {
    /// Output kept per stream of a buffered exec.
    pub exec_output_bytes: u64,
    /// Output passed on per stream of a streamed exec.
    pub stream_output_bytes: u64,
    /// An operator's ceiling on a file read or written through the files APIs (a sandbox's and a
    /// filesystem's). Default: none (`u64::MAX`): a file body of any size up to the sandbox's or
    /// the filesystem's space streams through, and a write past that space is the kernel's
    /// `ENOSPC`, answered `quota_exceeded` with the previous content kept.
    pub file_bytes: u64,
    /// Largest file of a filesystem whose content-hash ETag is computed (before a download, and
    /// for an `If-Match` condition): 64 MiB. A larger file streams without an ETag, and only
    /// `If-Match: *` matches it.
    pub etag_bytes: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self { exec_output_bytes: 1 << 20, stream_output_bytes: 64 << 20, file_bytes: u64::MAX, etag_bytes: 64 << 20 }
    }
}

/// What a sandbox's root filesystem is (`bulkhead serve --root`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootMode {
    /// An OCI image (the request's `"image"`, else the public image `default`) under a writable
    /// layer of the sandbox's own.
    Image,
    /// The host's system directories read-only, for hosts without an image: sandboxes name no
    /// image, and a create that names one is refused.
    Host,
}

/// Images: where their layers live, the default image, bounds.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    /// What sandboxes boot from.
    pub root: RootMode,
    /// `--default-image`: an OCI image layout or `docker save` tar imported at start as the
    /// public image `default` (again when its digest changes).
    pub default_image: Option<PathBuf>,
    /// The layer store of public images; `None`: `<data-dir>/images/public`. One named here
    /// may be shared by several servers, so it is never collected (see
    /// `service::images::collect`).
    pub public_layers: Option<PathBuf>,
    /// The most bytes one image may take unpacked, and the largest archive upload.
    pub max_image_bytes: u64,
    /// The most entries one image may have (all its layers together).
    pub max_image_entries: u64,
    /// `--insecure-registry`: registries (`host[:port]`, as image references name them) that
    /// pulls talk plain http to; any other registry but a loopback one takes https.
    pub insecure_registries: Vec<String>,
}

/// 8 GiB: the default bound on an image, unpacked.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 8 << 30;

impl Default for ImageSettings {
    /// The library's default is the host's base: in-process servers (tests, embedders) boot no
    /// image unless told. `bulkhead serve` defaults to [`RootMode::Image`].
    fn default() -> Self {
        Self {
            root: RootMode::Host,
            default_image: None,
            public_layers: None,
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_image_entries: 2_000_000,
            insecure_registries: Vec::new(),
        }
    }
}

/// The layer stores of one server: the public one and one per namespace
/// (`<data-dir>/images/ns/<namespace>/`), each opened on first use. Imports into a store hold
/// its lock shared; a collection of its unreferenced layers holds it alone, so it never removes
/// a layer an import has unpacked but not yet recorded.
#[derive(Debug)]
pub struct LayerStores {
    public_root: PathBuf,
    private_root: PathBuf,
    /// Where uploads are spooled before an import reads them.
    pub spool_dir: PathBuf,
    open: std::sync::Mutex<HashMap<Option<String>, OpenStore>>,
    /// Why there is no default image, when there is none: what a create without `"image"`
    /// answers.
    pub default_missing: RwLock<Option<String>>,
}

#[derive(Debug, Clone)]
struct OpenStore {
    store: Option<Arc<bulkhead_runtime::image::LayerStore>>,
    lock: Arc<tokio::sync::RwLock<()>>,
}

impl LayerStores {
    /// The stores of a server with data dir `data_dir` and public layers at `public_root`.
    pub fn new(data_dir: &std::path::Path, public_root: PathBuf) -> Self {
        Self {
            public_root,
            private_root: data_dir.join("images").join("ns"),
            spool_dir: data_dir.join("images").join("spool"),
            open: Default::default(),
            default_missing: RwLock::new(None),
        }
    }

    /// The directory of the store of `namespace`'s private images, or with `None` the public one.
    pub fn root(&self, namespace: Option<&str>) -> PathBuf {
        match namespace {
            Some(ns) => self.private_root.join(ns),
            None => self.public_root.clone(),
        }
    }

    fn entry(&self, namespace: Option<&str>) -> OpenStore {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.entry(namespace.map(str::to_owned))
            .or_insert_with(|| OpenStore { store: None, lock: Default::default() })
            .clone()
    }

    /// The lock of a store: shared by imports, exclusive for a collection.
    pub fn lock(&self, namespace: Option<&str>) -> Arc<tokio::sync::RwLock<()>> {
        self.entry(namespace).lock
    }

    /// The store of `namespace` (or the public one), opened (and made) on a blocking thread
    /// the first time.
    pub async fn store(
        &self,
        namespace: Option<&str>,
    ) -> Result<Arc<bulkhead_runtime::image::LayerStore>, bulkhead_runtime::image::ImageError> {
        if let Some(store) = self.entry(namespace).store {
            return Ok(store);
        }
        let root = self.root(namespace);
        let opened = tokio::task::spawn_blocking(move || bulkhead_runtime::image::LayerStore::open(&root))
            .await
            .map_err(|e| bulkhead_runtime::image::ImageError::Io {
                what: "opening the layer store".into(),
                source: std::io::Error::other(e.to_string()),
            })??;
        let opened = Arc::new(opened);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let entry = open
            .entry(namespace.map(str::to_owned))
            .or_insert_with(|| OpenStore { store: None, lock: Default::default() });
        Ok(entry.store.get_or_insert(opened).clone())
    }

    /// Forgets namespace `ns`'s store (its namespace is being deleted; its directory goes too).
    pub fn forget(&self, ns: &str) {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&Some(ns.to_owned()));
    }
}

/// The server's configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Isolation tiers this server offers, by name. A namespace may only name one of these.
    pub runtime_classes: BTreeMap<String, RuntimeClass>,
    /// Largest request body accepted on JSON routes.
    pub max_body_bytes: usize,
    pub runtime: RuntimeSettings,
    pub sandbox_limits: SandboxLimits,
    /// How often the reaper looks for expired sandboxes.
    pub reap_interval: Duration,
    /// How often running sandboxes are metered (and once more when each ends).
    pub meter_interval: Duration,
    /// How long egress denials are tallied before their aggregated audit records are written.
    pub egress_audit_interval: Duration,
    /// Exec output a namespace keeps, in bytes; the oldest goes first.
    pub log_bytes_per_namespace: u64,
    /// How namespaces' OpenID Connect providers are checked (key set lifetime, refetch bound,
    /// clock leeway).
    pub oidc: bulkhead_oidc::ProviderOptions,
    /// The host registry shared by every server on the host (uid ranges, cgroup prefixes).
    pub host_registry: PathBuf,
    /// Records each audit chain keeps; older ones are pruned behind a checkpoint.
    pub audit_retention_records: u64,
    /// Where the control plane's state lives: `None`, the SQLite file in the data dir
    /// (`bulkhead.db`); `Some(url)`, the PostgreSQL database at `url`
    /// (`postgres://user[:password]@host[:port]/database`, see `bulkhead_store::postgres`).
    pub store: Option<String>,
    /// Connections at once, and the header, idle and stall timeouts of each.
    pub connections: crate::limits::ConnectionLimits,
    /// Long-running downloads and uploads at once per principal, namespace and server.
    pub streams: crate::limits::StreamLimits,
    /// Where fetches a tenant directs may go (the address policy and its allowed ranges) and the
    /// DNS server that resolves their names.
    pub outbound: bulkhead_oidc::OutboundConfig,
    /// Images: the root of sandboxes, the default image, the layer stores' bounds.
    pub images: ImageSettings,
    /// Tasks: how long an agent has to answer.
    pub tasks: TaskSettings,
    /// Warm pools: when they give sandboxes back to the host.
    pub pools: PoolSettings,
    /// `--advertise-url`: where the other replicas of a shared store reach this one
    /// (`http://host:port`); `None`: `http://<the address bound>`.
    pub advertise_url: Option<String>,
    /// `--node-lease`: how long this node's lease holds unless renewed (renewed every third of
    /// it); a node whose lease lapses is declared lost by its peers.
    pub node_lease: Duration,
}

/// How warm pools behave under memory pressure.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Below this much `MemAvailable` on the host (bytes), pools start nothing and give back one
    /// ready sandbox per pass (`--pool-min-available`; default: a tenth of the host's memory,
    /// at least 512 MiB). 0: never.
    pub min_available_bytes: u64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        let total = bulkhead_runtime::host::capacity().map_or(0, |c| c.memory_bytes);
        PoolSettings { min_available_bytes: (total / 10).max(512 << 20) }
    }
}

/// How tasks' agents are driven.
#[derive(Debug, Clone)]
pub struct TaskSettings {
    /// How long an agent has to answer `initialize` and open its session
    /// (`--agent-answer-timeout`, default 60 s); one that does not fails its task.
    pub answer_timeout: Duration,
}

impl Default for TaskSettings {
    fn default() -> Self {
        TaskSettings { answer_timeout: Duration::from_secs(60) }
    }
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        let mut runtime_classes = BTreeMap::new();
        runtime_classes.insert("container".to_owned(), RuntimeClass { runtime: "runc".to_owned() });
        Self {
            data_dir,
            listen,
            runtime_classes,
            max_body_bytes: 1024 * 1024,
            runtime: RuntimeSettings::default(),
            sandbox_limits: SandboxLimits::default(),
            reap_interval: Duration::from_millis(500),
            meter_interval: Duration::from_secs(10),
            egress_audit_interval: Duration::from_secs(10),
            log_bytes_per_namespace: 16 << 20,
            oidc: bulkhead_oidc::ProviderOptions::default(),
            host_registry: PathBuf::from(bulkhead_runtime::hostreg::DEFAULT_PATH),
            audit_retention_records: bulkhead_store::sqlite::DEFAULT_AUDIT_RETENTION,
            store: None,
            connections: Default::default(),
            streams: Default::default(),
            outbound: bulkhead_oidc::OutboundConfig::default(),
            images: ImageSettings::default(),
            tasks: TaskSettings::default(),
            pools: PoolSettings::default(),
            advertise_url: None,
            node_lease: crate::nodes::DEFAULT_LEASE,
        }
    }
}

/// How long an authenticated key is trusted without asking the store again. Revocation and
/// namespace deletion evict at once, through this server or (told by the store's change
/// notifications) through any replica; the bound is the backstop should a notification be lost.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// Entries kept at most; past it the cache is cleared rather than grown.
const KEY_CACHE_MAX: usize = 100_000;

#[derive(Debug, Clone)]
struct CachedKey {
    principal: Principal,
    expires_at_ms: Option<i64>,
    cached_at: Instant,
}

/// Keys authenticated recently, by token hash.
#[derive(Debug, Default)]
pub struct KeyCache {
    entries: RwLock<HashMap<String, CachedKey>>,
}

impl KeyCache {
    /// The principal for `token_hash` when cached, fresh and not expired at `now_ms`.
    pub fn get(&self, token_hash: &str, now_ms: i64) -> Option<(Principal, Option<i64>)> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(token_hash)?;
        if entry.cached_at.elapsed() > KEY_CACHE_TTL || entry.expires_at_ms.is_some_and(|t| t <= now_ms) {
            return None;
        }
        Some((entry.principal.clone(), entry.expires_at_ms))
    }

    pub fn insert(&self, token_hash: String, principal: Principal, expires_at_ms: Option<i64>) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= KEY_CACHE_MAX {
            entries.clear();
        }
        entries.insert(token_hash, CachedKey { principal, expires_at_ms, cached_at: Instant::now() });
    }

    /// Forgets one key (on revocation).
    pub fn evict_key(&self, key_id: &str) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, e| !matches!(&e.principal, Principal::Key { id, .. } if id == key_id));
    }

    /// Forgets a sandbox's workload token (the sandbox ended).
    pub fn evict_sandbox(&self, sandbox_id: &str) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, e| !matches!(&e.principal, Principal::Sandbox { id, .. } if id == sandbox_id));
    }

    /// Forgets every key (changes may have been missed).
    pub fn clear(&self) {
        self.entries.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Forgets every key of a namespace (on namespace deletion).
    pub fn evict_namespace(&self, ns: &str) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, e| e.principal.namespace() != Some(ns));
    }
}

/// One lock per sandbox or filesystem id, so that a create, a delete, a resize, an upload and
/// the reaper never act on the same resource at once.
#[derive(Debug, Default)]
pub struct SandboxLocks {
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl SandboxLocks {
    pub async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            // Forget locks nobody holds, so the map does not grow with every sandbox ever made.
            if map.len() > 1024 {
                map.retain(|_, l| Arc::strong_count(l) > 1);
            }
            map.entry(id.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// Namespaces by name, as last read or written through this server: the read path of every
/// namespaced request. Quota changes and deletes through this server update it at once; entries
/// also expire after a few seconds, which bounds staleness for replicas sharing a store.
#[derive(Debug, Default)]
pub struct NamespaceCache {
    rows: RwLock<HashMap<String, (bulkhead_store::NamespaceRow, Instant)>>,
}

const NAMESPACE_CACHE_TTL: Duration = Duration::from_secs(5);

impl NamespaceCache {
    pub fn get(&self, name: &str) -> Option<bulkhead_store::NamespaceRow> {
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        rows.get(name).filter(|(_, at)| at.elapsed() < NAMESPACE_CACHE_TTL).map(|(row, _)| row.clone())
    }

    pub fn put(&self, row: bulkhead_store::NamespaceRow) {
        let mut rows = self.rows.write().unwrap_or_else(|e| e.into_inner());
        if rows.len() >= KEY_CACHE_MAX {
            rows.clear();
        }
        rows.insert(row.name.clone(), (row, Instant::now()));
    }

    /// Forgets every namespace (changes may have been missed).
    pub fn clear(&self) {
        self.rows.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn remove(&self, name: &str) {
        self.rows.write().unwrap_or_else(|e| e.into_inner()).remove(name);
    }
}

pub struct Inner {
    pub store: Arc<dyn Store>,
    pub runtime: Arc<dyn Runtime>,
    pub storage: Arc<dyn FilesystemStorage>,
    pub hasher: TokenHasher,
    /// Keyed hash of the platform admin token.
    pub admin_token_hash: String,
    pub config: ServerConfig,
    pub keys: KeyCache,
    pub namespaces: NamespaceCache,
    pub sandbox_locks: SandboxLocks,
    pub metrics: crate::metrics::Metrics,
    /// Egress denials of the current interval, for the aggregated audit (the egress decider
    /// records, [`crate::service::egress_audit::spawn_flush`] writes).
    pub denials: crate::service::egress_audit::DenialLog,
    pub logs: crate::logs::LogBook,
    pub identity: crate::identity_cache::Identity,
    /// This server's owner entry in the host registry.
    pub host_ids: crate::hostids::HostIds,
    /// The exclusive locks of the data dir, the state dir and the cgroup prefix, held for the
    /// server's life.
    pub host_locks: Vec<bulkhead_runtime::ownership::HostLock>,
    /// Long-running streams open now, by owner.
    pub streams: crate::limits::Streams,
    /// Each namespace's request bucket and its commands and creates in flight.
    pub rate_limits: crate::ratelimit::NamespaceLimits,
    /// The layer stores of images, public and per namespace.
    pub layers: LayerStores,
    /// The drivers of tasks' agents, and who follows their messages.
    pub tasks: crate::service::tasks::TaskHub,
    pub pools: crate::service::pools::Pools,
    /// Namespaces' placement on this host's cores.
    pub placements: crate::service::placement::Placements,
    /// This server as a node of its store: its id, lease and peers.
    pub node: crate::nodes::Node,
}

/// Cheap to clone; handed to every handler.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The current incarnation of namespace `ns`, if it exists (the namespace cache, else the store).
pub async fn tenant(state: &AppState, ns: &str) -> Option<crate::metrics::Tenant> {
    cached_namespace(state, ns).await.map(|row| crate::metrics::Tenant::of(&row))
}

/// Namespace `ns`'s row from the namespace cache, else the store (and then cached); `None` when
/// it does not exist or the store cannot be read (logged).
pub async fn cached_namespace(state: &AppState, ns: &str) -> Option<bulkhead_store::NamespaceRow> {
    if let Some(row) = state.namespaces.get(ns) {
        return Some(row);
    }
    match state.store.get_namespace(ns).await {
        Ok(Some(row)) => {
            state.namespaces.put(row.clone());
            Some(row)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(namespace = ns, error = %e, "cannot read the namespace");
            None
        }
    }
}
