//! First start and every start: the data dir (0700), the token key (0600), the SQLite store,
//! and the platform admin token, generated once, stored only as a keyed hash, and written to
//! `<data-dir>/admin.token` (0600); the layer stores of images and the default image
//! (`--default-image`), imported as the public image `default` when the store has none or its
//! digest changed.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulkhead_core::ids::{hex, random_bytes, unhex};
use bulkhead_core::token::{self, TokenHasher, ADMIN_TOKEN_PREFIX};
use bulkhead_store::postgres::PgStore;
use bulkhead_store::sqlite::SqliteStore;
use bulkhead_store::{Store, StoreError};

use bulkhead_runtime::oci::{OciConfig, OciRuntime};
use bulkhead_runtime::storage::Storage;
use bulkhead_runtime::{FilesystemStorage, Runtime};

use crate::state::{AppState, Inner, KeyCache, SandboxLocks, ServerConfig};
use crate::time::now_ms;

pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const TOKEN_KEY_FILE: &str = "token.key";
/// The master key that wraps namespaces' data keys, unless `BULKHEAD_MASTER_KEY` is set.
pub const MASTER_KEY_FILE: &str = "master.key";
pub const MASTER_KEY_ENV: &str = "BULKHEAD_MASTER_KEY";
pub const DATABASE_FILE: &str = "bulkhead.db";
/// The data dir's lock file, held by the server that owns it.
pub const DATA_LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("{0} is not a token key (64 hex digits); restore it or remove the whole data dir")]
    BadTokenKey(PathBuf),
    // The source is printed by the caller's error chain; repeating it here would print it twice.
    #[error("store")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] bulkhead_runtime::RuntimeError),
    #[error("reconciling sandboxes with the host: {0}")]
    Reconcile(String),
    #[error("{0}")]
    Identity(String),
    #[error("BULKHEAD_MASTER_KEY must be 64 hex digits (a 256-bit key)")]
    BadMasterKeyEnv,
    #[error(transparent)]
    HostRegistry(#[from] bulkhead_runtime::hostreg::RegistryError),
    /// Another live server holds the data dir.
    #[error("{0}")]
    Held(String),
}

/// The state of a started server, and the admin token when this start generated it.
pub struct Bootstrapped {
    pub state: AppState,
    pub new_admin_token: Option<String>,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError + '_ {
    move |source| BootstrapError::File { path: path.to_owned(), source }
}

/// Writes `contents` to `path` with mode 0600 atomically: a temporary file, fsync, rename, fsync
/// of the directory.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn token_key(data_dir: &Path) -> Result<[u8; 32], BootstrapError> {
    key_file(&data_dir.join(TOKEN_KEY_FILE))
}

/// The node id kept in `data_dir` ([`NODE_ID_FILE`]), made on first start.
fn node_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(crate::nodes::NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            let ok =
                id.strip_prefix("node_").is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if ok {
                Ok(id.to_owned())
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a node id", path.display()),
                ))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("node_{}", hex(&random_bytes::<16>()));
            write_secret_file(&path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// What the token key is sealed with: binds it to its use.
const TOKEN_KEY_AAD: &[u8] = b"bulkhead token key";

/// The token key of a shared store: the one the store keeps, sealed under the master key, or,
/// on the store's first start, this data dir's (a store that one server used before keeps its
/// tokens) or a new one. A replica whose master key differs cannot open it and does not start.
async fn shared_token_key(
    store: &dyn Store,
    master: &bulkhead_core::sealed::Key,
    data_dir: &Path,
) -> Result<[u8; 32], BootstrapError> {
    let path = data_dir.join(TOKEN_KEY_FILE);
    let mine = if path.exists() { key_file(&path)? } else { random_bytes::<32>() };
    let sealed = master.seal(&mine, TOKEN_KEY_AAD).map_err(|e| BootstrapError::Identity(e.to_string()))?;
    let stored = store.token_key(&hex(&sealed), now_ms()).await?;
    let opened = unhex(&stored)
        .and_then(|bytes| master.open(&bytes, TOKEN_KEY_AAD).ok())
        .and_then(|key| <[u8; 32]>::try_from(key).ok());
    opened.ok_or_else(|| {
        let whose = if std::env::var_os(MASTER_KEY_ENV).is_some() {
            format!("{MASTER_KEY_ENV} is not the master key")
        } else {
            format!(
                "{MASTER_KEY_ENV} is not set, and this data dir's own master key ({}) is not the one",
                data_dir.join(MASTER_KEY_FILE).display()
            )
        };
        BootstrapError::Identity(format!(
            "the store's token key is sealed under another master key ({whose} it was made with): start every \
             server of one store with the same {MASTER_KEY_ENV}"
        ))
    })
}

/// A 256-bit key kept as hex in a 0600 file, made on first use.
fn key_file(path: &Path) -> Result<[u8; 32], BootstrapError> {
    let path = path.to_owned();
    match fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = unhex(text.trim()).ok_or_else(|| BootstrapError::BadTokenKey(path.clone()))?;
            bytes.try_into().map_err(|_| BootstrapError::BadTokenKey(path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = random_bytes::<32>();
            write_secret_file(&path, format!("{}\n", hex(&key)).as_bytes()).map_err(file_err(&path))?;
            Ok(key)
        }
        Err(e) => Err(file_err(&path)(e)),
    }
}

/// The key that wraps every namespace's data key: `BULKHEAD_MASTER_KEY` (64 hex digits) when
/// set, else `<data>/master.key`, made on first start (mode 0600). Losing it loses every secret.
fn master_key(data_dir: &Path) -> Result<bulkhead_core::sealed::Key, BootstrapError> {
    if let Ok(text) = std::env::var(MASTER_KEY_ENV) {
        let bytes = unhex(text.trim()).ok_or(BootstrapError::BadMasterKeyEnv)?;
        return bulkhead_core::sealed::Key::from_bytes(&bytes).map_err(|_| BootstrapError::BadMasterKeyEnv);
    }
    let bytes = key_file(&data_dir.join(MASTER_KEY_FILE))?;
    bulkhead_core::sealed::Key::from_bytes(&bytes).map_err(|e| BootstrapError::Identity(e.to_string()))
}

/// Mounts every filesystem of this node the store knows, sweeps staging left by interrupted
/// uploads, and removes images the store does not know as this node's (a create that crashed
/// half-way).
async fn mount_filesystems(
    store: &dyn Store,
    storage: &dyn FilesystemStorage,
    node: &crate::nodes::Node,
) -> Result<(), BootstrapError> {
    // After a reboot the state dir is empty and the loop devices are gone: every mount is made
    // again from the images in the data dir. One that fails does not stop the start; its
    // requests answer `unavailable` and mount it again on demand (`ensure_mounted`).
    // This node's: a peer's filesystems are images in its own data dir.
    let known: Vec<_> = store.all_filesystems().await?.into_iter().filter(|f| node.is_mine(&f.node)).collect();
    for f in &known {
        match storage.mount(&f.id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(filesystem = %f.id, namespace = %f.namespace, "the image of a filesystem is missing")
            }
            Err(e) => {
                tracing::error!(filesystem = %f.id, error = %e, "mounting a filesystem failed; retried on demand")
            }
        }
    }
    // Only images in this server's own data dir: another server may share the state dir.
    for id in storage.ids() {
        if !known.iter().any(|f| f.id == id) {
            tracing::info!(filesystem = %id, "removing an orphaned filesystem image");
            storage.delete(&id).await?;
        }
    }
    Ok(())
}

/// Registers this server in the host registry: its owner entry (the store's id), its cgroup
/// prefix and the host id ranges of the namespaces it already has.
async fn host_ids(store: &dyn Store, config: &ServerConfig) -> Result<crate::hostids::HostIds, BootstrapError> {
    let owner = store.store_id().await?;
    let mut namespaces = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_namespaces(after.as_deref(), 1000, None).await?;
        after = page.last().map(|n| n.name.clone());
        let done = page.len() < 1000;
        namespaces.extend(page);
        if done {
            break;
        }
    }
    // The label is the data dir's canonical path: a store made again in the same data dir
    // takes over the entry of the one it replaced (see `HostRegistry::start_owner`).
    let data_dir = std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    let (path, label, prefix) =
        (config.host_registry.clone(), data_dir.display().to_string(), config.runtime.cgroup_prefix.clone());
    let started = tokio::task::spawn_blocking(move || {
        let registry = bulkhead_runtime::hostreg::HostRegistry::open(&path)?;
        crate::hostids::HostIds::start(registry, &owner, &label, &prefix, &namespaces)
    })
    .await
    .map_err(|e| bulkhead_runtime::hostreg::RegistryError::Io {
        path: config.host_registry.clone(),
        source: std::io::Error::other(e.to_string()),
    })??;
    Ok(started)
}

/// Refuses to start a server with sandbox networks beside a live replica of the same store on
/// this host: replicas of one store are one owner of the host registry, and share its network
/// names (the nftables table, namespaces and veths named by the owner's prefix), which one would
/// replace under the other.
fn refuse_networked_sibling(ids: &crate::hostids::HostIds, cgroup_prefix: &str) -> Result<(), BootstrapError> {
    let owners = ids.registry.owners()?;
    let Some(me) = owners.iter().find(|o| o.id == ids.owner) else { return Ok(()) };
    for other in me.cgroup_prefixes.iter().filter(|p| *p != cgroup_prefix) {
        let lock = bulkhead_runtime::ownership::cgroup_lock_path(other);
        if let Some((pid, data_dir)) = bulkhead_runtime::ownership::holder(&lock) {
            return Err(BootstrapError::Held(format!(
                "a replica of this store runs on this host (pid {pid}, data dir {}, cgroup prefix {other}) and \
                 replicas on one host share the store's network names: run one replica per host, or give \
                 every replica on this host --network loopback-only",
                data_dir.display()
            )));
        }
    }
    Ok(())
}

/// The host side of a server: its sandbox runtime and its filesystem storage.
pub struct Backends {
    pub runtime: Arc<dyn Runtime>,
    pub storage: Arc<dyn FilesystemStorage>,
}

/// The real backends: the OCI runtime with cgroups, and loop-mounted ext4 images, for the owner
/// `ids` (its store's id is the owner mark of its sandboxes; its net prefix names their
/// networks).
pub fn host_backends(config: &ServerConfig, ids: &crate::hostids::HostIds) -> Result<Backends, BootstrapError> {
    let network = match config.runtime.network {
        bulkhead_runtime::net::NetworkMode::LoopbackOnly => None,
        bulkhead_runtime::net::NetworkMode::Isolated => Some(bulkhead_runtime::net::NetConfig {
            net_prefix: ids.net_prefix.clone(),
            cidr: config.runtime.sandbox_cidr,
        }),
    };
    let egress_ca_pem = match &config.runtime.egress_ca_file {
        Some(path) => Some(fs::read(path).map_err(file_err(path))?),
        None => None,
    };
    let runtime = OciRuntime::new(OciConfig {
        state_dir: config.runtime.state_dir.clone(),
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        cgroup_prefix: config.runtime.cgroup_prefix.clone(),
        supervisor: config.runtime.supervisor.clone(),
        runtimes: config.runtime_classes.iter().map(|(tier, c)| (tier.clone(), c.runtime.clone())).collect(),
        owner: ids.owner.clone(),
        data_dir: config.data_dir.clone(),
        network,
        egress_ca_pem,
        egress_dns: config.runtime.egress_dns,
        lxcfs: config.runtime.lxcfs.clone(),
    })?;
    let storage = Storage::new(&config.data_dir, &config.runtime.state_dir)?;
    Ok(Backends { runtime: Arc::new(runtime), storage: Arc::new(storage) })
}

/// Prepares the data dir and the store and returns the server's state, on the host's backends.
pub async fn start(config: ServerConfig) -> Result<Bootstrapped, BootstrapError> {
    start_with(config, host_backends).await
}

/// Takes the data dir, the state dir and the cgroup prefix for this process alone (see
/// `bulkhead_runtime::ownership`), before anything else of either is read or written: one held
/// by another live server is [`BootstrapError::Held`], naming it, and nothing has been touched.
fn take_host(config: &ServerConfig) -> Result<Vec<bulkhead_runtime::ownership::HostLock>, BootstrapError> {
    use bulkhead_runtime::ownership;
    let dir = &config.data_dir;
    let canonical = fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
    let held = |e: ownership::LockError| BootstrapError::Held(e.to_string());
    let data = ownership::lock(
        &dir.join(DATA_LOCK_FILE),
        &format!("data dir {}", canonical.display()),
        "data dir",
        &canonical,
    )
    .map_err(held)?;
    // The cgroup prefix before the state dir: a refused start makes no state dir.
    let cgroup = ownership::lock_cgroup_prefix(&config.runtime.cgroup_prefix, &canonical).map_err(held)?;
    let state = &config.runtime.state_dir;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(state)
        .map_err(|source| BootstrapError::File { path: state.clone(), source })?;
    let state_lock =
        ownership::lock(&state.join("lock"), &format!("state dir {}", state.display()), "state dir", &canonical)
            .map_err(held)?;
    Ok(vec![data, state_lock, cgroup])
}

/// [`start`] on the backends `backends` makes for the store whose id it is given (called once
/// the host registry has this server; tests pass in-memory ones).
///
/// The data dir, the state dir and the cgroup prefix are this process's alone from the first
/// step (see [`take_host`]).
pub async fn start_with(
    config: ServerConfig,
    backends: impl FnOnce(&ServerConfig, &crate::hostids::HostIds) -> Result<Backends, BootstrapError>,
) -> Result<Bootstrapped, BootstrapError> {
    let dir = config.data_dir.clone();
    fs::create_dir_all(&dir).map_err(|source| BootstrapError::DataDir { path: dir.clone(), source })?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(|source| BootstrapError::DataDir { path: dir.clone(), source })?;
    let locks = take_host(&config)?;
    let node_id = node_id(&dir).map_err(file_err(&dir.join(crate::nodes::NODE_ID_FILE)))?;
    let master = master_key(&dir)?;
    let store: Arc<dyn Store> = match &config.store {
        Some(url) => {
            Arc::new(PgStore::open(url).await?.with_audit_retention(config.audit_retention_records).with_node(&node_id))
        }
        None => Arc::new(
            SqliteStore::open(&dir.join(DATABASE_FILE))
                .await?
                .with_audit_retention(config.audit_retention_records)
                .with_node(&node_id),
        ),
    };
    // A store several processes share (PostgreSQL) keeps the token key, so that every replica
    // hashes tokens alike; the embedded one keeps it in the data dir.
    let shared = config.store.is_some();
    let hasher = TokenHasher::new(if shared {
        shared_token_key(store.as_ref(), &master, &dir).await?
    } else {
        token_key(&dir)?
    });
    // Rows of no node (from before nodes) become this one's before anything looks at its own.
    let url = config.advertise_url.clone().unwrap_or_else(|| format!("http://{}", config.listen));
    let node = crate::nodes::Node::new(node_id, url, shared, config.node_lease);
    let now = now_ms();
    store.register_node(&node.id, &node.url(), now, now.saturating_add(node.lease_ms())).await?;
    if shared {
        // The start may outlast a lease (a default image to import): renewed meanwhile, so that
        // no peer declares this node lost while it starts.
        // The store held weakly: a server dropped before it serves (an in-process one) ends it.
        let (weak, id, lease) = (Arc::downgrade(&store), node.id.clone(), node.lease);
        node.renew_while_starting(tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let Some(store) = weak.upgrade() else { return };
                let until = now_ms().saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
                if let Err(e) = store.renew_node(&id, until).await {
                    tracing::warn!(error = %e, "renewing the lease while starting failed");
                }
            }
        }));
    }

    let mut new_admin_token = None;
    let admin_token_hash = match store.admin_token_hash().await? {
        Some(hash) => hash,
        None => {
            // The file first: a crash before the hash is stored only means the next start
            // generates another token and overwrites the file.
            let token = token::generate(ADMIN_TOKEN_PREFIX);
            let path = dir.join(ADMIN_TOKEN_FILE);
            write_secret_file(&path, format!("{token}\n").as_bytes()).map_err(file_err(&path))?;
            let hash = hasher.hash(&token);
            match store.init_admin_token_hash(&hash, now_ms()).await {
                Ok(()) => {
                    new_admin_token = Some(token);
                    hash
                }
                // Another replica made the store's admin token first: that one stands, and this
                // data dir keeps no token of its own.
                Err(StoreError::Conflict(_)) => {
                    let _ = fs::remove_file(&path);
                    store.admin_token_hash().await?.ok_or_else(|| {
                        BootstrapError::Identity("the store's admin token vanished while starting".into())
                    })?
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    // Creates that held an idempotency key when the last process ended will never answer: free
    // their keys, so a retry runs the create again.
    store.release_pending_idempotency().await?;
    // Host-global resources before anything touches the host: a prefix or a range another
    // server holds stops this start here.
    let host_ids = host_ids(store.as_ref(), &config).await?;
    if config.runtime.network == bulkhead_runtime::net::NetworkMode::Isolated {
        refuse_networked_sibling(&host_ids, &config.runtime.cgroup_prefix)?;
    }
    let Backends { runtime, storage } = backends(&config, &host_ids)?;
    mount_filesystems(store.as_ref(), storage.as_ref(), &node).await?;
    let identity = crate::identity_cache::Identity::new(master, config.oidc).map_err(BootstrapError::Identity)?;
    let logs_dir = dir.join("logs");
    let logs =
        crate::logs::LogBook::start(logs_dir.clone(), config.log_bytes_per_namespace).map_err(file_err(&logs_dir))?;
    let streams = crate::limits::Streams::new(config.streams);
    let public_layers = config.images.public_layers.clone().unwrap_or_else(|| dir.join("images").join("public"));
    let layers = crate::state::LayerStores::new(&dir, public_layers);
    let state = AppState(Arc::new(Inner {
        store,
        runtime,
        storage,
        hasher,
        admin_token_hash,
        config,
        keys: KeyCache::default(),
        namespaces: Default::default(),
        metrics: Default::default(),
        denials: Default::default(),
        sandbox_locks: SandboxLocks::default(),
        streams,
        rate_limits: Default::default(),
        logs,
        identity,
        host_ids,
        host_locks: locks,
        layers,
        tasks: Default::default(),
        pools: Default::default(),
        placements: Default::default(),
        node,
    }));
    // Uploads an interrupted import left; then the default image, before the first create.
    crate::service::images::sweep_spool(&state);
    crate::service::agents::sweep(&state);
    if state.config.images.root == crate::state::RootMode::Image || state.config.images.default_image.is_some() {
        crate::service::images::ensure_default(&state).await;
    }
    // The gateway asks the server about every connection of a sandbox, adopted ones included.
    state.runtime.set_egress_decider(crate::service::egress::EgressPolicy::new(&state));
    let report = crate::sandboxes::reconcile(&state).await.map_err(|e| BootstrapError::Reconcile(e.to_string()))?;
    if report != Default::default() {
        tracing::info!(
            adopted = report.adopted,
            failed = report.failed,
            orphans = report.orphans,
            "reconciled sandboxes"
        );
    }
    // Dedicated namespaces' cores, kept off the shared ones (adopted sandboxes included).
    crate::service::placement::load(&state).await.map_err(|e| BootstrapError::Reconcile(e.to_string()))?;
    // Tasks whose agents ran when the server stopped wait, idle, for their next event.
    match crate::service::tasks::reconcile(&state).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(tasks = n, "tasks whose agents ran at the last stop are idle"),
        Err(e) => return Err(BootstrapError::Reconcile(e.to_string())),
    }
    Ok(Bootstrapped { state, new_admin_token })
}
