//! `bulkhead doctor`: the host resources of Bulkhead on this machine that nothing live owns,
//! each named with why. It reads the host directly (cgroups, the runtime state dir, processes,
//! mounts, loop devices, network namespaces, veths, nftables tables), so it runs as root on the
//! server's host. What is live it learns from the server when one answers (with the platform
//! admin's token), otherwise from the server's data dir: its store, opened read-only. Which
//! store owns a host-global name it learns from the host registry (`hostreg`): each owner's
//! data dir (its label), cgroup prefixes and network name prefix.
//!
//! What is known, and how each resource is judged:
//! - sandbox-level resources (bundles, OCI state, sandbox cgroups, the processes in them,
//!   mounts under the state dir, overlay roots under `<state-dir>/rootfs/`) are expected only
//!   when they name a sandbox that is creating or running; with nothing to ask (no server
//!   answers and the data dir has no store), every one of them is a leak;
//! - a filesystem's loop device (backed by `<data-dir>/filesystems/images/<id>.img`) and its
//!   mount (under `<state-dir>/filesystems/`) are kept while the filesystem exists, whether a
//!   sandbox uses it or not;
//! - the view tmpfs (`<state-dir>/view`), the prefix cgroup and the per-namespace cgroups are
//!   the server's standing configuration (they outlive sandboxes and server restarts): a
//!   namespace's cgroup is a leak when its namespace is gone, and either is a leak when a
//!   process sits directly in it;
//! - the control plane's cgroup (`<prefix>.control-plane`) holds the running server: a
//!   process in it is the server's, and the cgroup is a leak when no process holds it;
//! - host-global network objects are named with their owner's `net_prefix` (`bh` and four hex
//!   digits): network namespaces `<net_prefix>-<sandbox id without sbx_>`, veths
//!   `<net_prefix><first 9 characters of it>`, nftables tables `<net_prefix>_<rest>`. One whose
//!   prefix no owner in the host registry holds is a leak; otherwise it is judged by its
//!   owner's live sandboxes (this server's, or those of the store in the owner's data dir), and
//!   a table whose rest names no sandbox (not 9 to 32 hex digits) is the owner's own, live while
//!   the owner is registered.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bulkhead_client::{AuditFilter, Client, ClientError};
use bulkhead_runtime::cgroup::CONTROL_PLANE;
use bulkhead_runtime::host::{self, HostResource};
use bulkhead_runtime::hostreg::{HostRegistry, Owner};
use bulkhead_store::postgres::PgStore;
use bulkhead_store::prelude::*;
use bulkhead_store::sqlite::SqliteStore;
use clap::Args;
use serde::Serialize;

use crate::commands::all_pages;
use crate::commands::client;
use crate::output::{self, table};
use crate::Global;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Args)]
pub struct DoctorArgs {
    /// The server's runtime state dir (bundles and OCI runtime state).
    #[arg(long, env = "BULKHEAD_STATE_DIR", default_value = "/run/bulkhead")]
    state_dir: PathBuf,
    /// The name of the server's top cgroup.
    #[arg(long, env = "BULKHEAD_CGROUP_PREFIX", default_value = "bulkhead")]
    cgroup_prefix: String,
    /// The host registry shared by the Bulkhead servers of this host: who owns which network
    /// name prefix, and where each owner's data dir is.
    #[arg(long, env = "BULKHEAD_HOST_REGISTRY", default_value = bulkhead_runtime::hostreg::DEFAULT_PATH)]
    host_registry: PathBuf,
    /// Instead of looking for leaks: removes this store's entry from the host registry and
    /// releases every host id range and cgroup prefix it holds. Only for a server whose data
    /// is gone for good (its files would otherwise be owned by ids another server may get).
    #[arg(long, value_name = "STORE_ID")]
    forget_owner: Option<String>,
    /// The server's store when it is a PostgreSQL database (`serve --store`): read when the
    /// server does not answer, as the SQLite file in the data dir is otherwise.
    #[arg(long, env = "BULKHEAD_STORE", value_name = "URL", hide_env_values = true)]
    store: Option<String>,
}

/// Where in the host's picture a resource sits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// The server's standing configuration: the prefix cgroup, the view.
    Top,
    /// A namespace's cgroup.
    Namespace(String),
    /// The cgroup the server runs in (`<prefix>.control-plane`, beside the prefix cgroup).
    ControlPlane,
    /// Anything of one sandbox, with the sandbox it names (if it names one).
    Sandbox(Option<String>),
    /// A filesystem's loop device or mount, which the server keeps while the filesystem
    /// exists, whether or not a sandbox uses it; with the filesystem it names.
    Filesystem(Option<String>),
    /// Never expected, for the reason given: a process directly in a non-sandbox cgroup.
    Stray(String),
    /// A host-global network object: its owner's name prefix and the rest of its name.
    Net { prefix: String, rest: String },
}

/// A resource found on the host.
#[derive(Debug, Clone)]
struct Found {
    kind: &'static str,
    name: String,
    level: Level,
    /// A process sits directly in this cgroup.
    busy: bool,
}

impl Found {
    fn new(r: HostResource, level: Level) -> Found {
        Found { kind: r.kind, name: r.name, level, busy: false }
    }
}

/// What is alive for one store.
#[derive(Debug, Default, Clone)]
struct Live {
    /// The store's id, when known.
    store: Option<String>,
    /// Sandboxes creating or running.
    sandboxes: HashSet<String>,
    namespaces: HashSet<String>,
    filesystems: HashSet<String>,
}

impl Live {
    /// ` of store sto_…`, when the store is known.
    fn of(&self) -> String {
        self.store.as_ref().map(|s| format!(" of store {s}")).unwrap_or_default()
    }
}

/// What holds a network name prefix.
#[derive(Debug, Clone)]
enum NetOwner {
    /// An owner whose live sandboxes are known.
    Known(Live),
    /// An owner whose live sandboxes cannot be learned, and why (its data dir has no store).
    Unknown(String),
}

/// Everything a judgement needs to know besides the resource.
#[derive(Debug, Default)]
struct World {
    /// What this server has alive; `None` when nothing could say.
    live: Option<Live>,
    /// Why nothing could say, when `live` is `None`.
    unknown: String,
    /// The owners of the network name prefixes found on the host, by prefix.
    nets: HashMap<String, NetOwner>,
    /// The host registry, for messages.
    registry: PathBuf,
}

/// One leaked resource, as printed.
#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct Leak {
    kind: &'static str,
    resource: String,
    /// Why it is a leak.
    why: String,
}

/// The first id with `prefix` (such as `sbx_`) that `text` names: the prefix at the start of a
/// word, and the letters and digits after it.
fn named_id(text: &str, prefix: &str) -> Option<String> {
    text.match_indices(prefix).find_map(|(i, _)| {
        let starts_word = text[..i].chars().next_back().is_none_or(|c| !c.is_ascii_alphanumeric());
        let body: String = text[i + prefix.len()..].chars().take_while(char::is_ascii_alphanumeric).collect();
        (starts_word && !body.is_empty()).then(|| format!("{prefix}{body}"))
    })
}

/// Whether `s` is what network names keep of a sandbox id: 9 to 32 of its lowercase hex digits.
fn names_sandbox(s: &str) -> bool {
    (9..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Why `found` is a leak; `None` when something live owns it.
fn judge(found: &Found, world: &World) -> Option<String> {
    let live = world.live.as_ref();
    match &found.level {
        Level::Sandbox(id) => {
            let Some(l) = live else { return Some(world.unknown.clone()) };
            match id {
                Some(id) if l.sandboxes.contains(id) => None,
                Some(id) => Some(format!("no live sandbox {id}{}", l.of())),
                None => Some(format!("names no sandbox{}", l.of())),
            }
        }
        Level::Filesystem(id) => {
            let Some(l) = live else { return Some(world.unknown.clone()) };
            match id {
                Some(id) if l.filesystems.contains(id) => None,
                Some(id) => Some(format!("no filesystem {id}{}", l.of())),
                None => Some(format!("names no filesystem{}", l.of())),
            }
        }
        Level::Namespace(ns) => {
            if found.busy {
                return Some("a process sits directly in this namespace cgroup".into());
            }
            live.filter(|l| !l.namespaces.contains(ns)).map(|l| format!("namespace {ns} gone{}", l.of()))
        }
        Level::Top => {
            if found.busy {
                return Some("a process sits directly in the prefix cgroup".into());
            }
            live.filter(|l| l.namespaces.is_empty()).map(|l| format!("no namespace left{}", l.of()))
        }
        // The server leaves it when it stops; one that no process holds was left by a server
        // killed outright (the next start on this prefix takes it over).
        Level::ControlPlane if !found.busy => Some("no server runs in the control plane's cgroup".into()),
        Level::ControlPlane => None,
        Level::Stray(why) => Some(why.clone()),
        Level::Net { prefix, rest } => judge_net(found.kind, prefix, rest, world),
    }
}

fn judge_net(kind: &str, prefix: &str, rest: &str, world: &World) -> Option<String> {
    let l = match world.nets.get(prefix) {
        None => return Some(format!("no owner in the host registry {} holds {prefix}", world.registry.display())),
        Some(NetOwner::Unknown(why)) => return Some(why.clone()),
        Some(NetOwner::Known(l)) => l,
    };
    // Spare sandbox networks, made ahead of creates, live as long as their server.
    if bulkhead_runtime::net::is_spare(rest) {
        return None;
    }
    let body = rest.strip_prefix(['-', '_']).unwrap_or(rest);
    if !names_sandbox(body) {
        // An owner's own table (its rules for all its sandboxes) lives as long as the owner.
        return (kind != "nft table").then(|| format!("names no sandbox{}", l.of()));
    }
    let alive = l.sandboxes.iter().any(|id| id.strip_prefix("sbx_").is_some_and(|b| b.starts_with(body)));
    let more = if body.len() < 32 { "…" } else { "" };
    (!alive).then(|| format!("no live sandbox sbx_{body}{more}{}", l.of()))
}

/// Everything of Bulkhead on this host that this server (state dir, cgroup prefix, data dir)
/// may own, and every host-global network object of any owner. `state` and `data_dir` are
/// resolved, as mounts and loop devices name them.
fn scan(prefix: &str, state: &Path, data_dir: &Path) -> Vec<Found> {
    let mut found = Vec::new();
    for c in host::cgroups_of(Path::new(CGROUP_ROOT), prefix) {
        let level = match c.below_prefix.as_slice() {
            [] => Level::Top,
            [cp, ..] if cp == CONTROL_PLANE => Level::ControlPlane,
            [ns] => Level::Namespace(ns.clone()),
            [_, sbx, ..] => Level::Sandbox(Some(sbx.clone())),
        };
        let busy = !matches!(level, Level::Sandbox(_)) && c.busy;
        found.push(Found { kind: "cgroup", name: c.path.display().to_string(), level, busy });
    }
    // Supervisors and commands are in their sandbox's cgroup; nothing sits in the others.
    for p in host::processes_in(prefix) {
        let level = match p.below_prefix.as_slice() {
            [] => Level::Stray("in the prefix cgroup, not a sandbox's".into()),
            [ns] => Level::Stray(format!("in namespace {ns}'s cgroup, not a sandbox's")),
            [_, sbx, ..] => Level::Sandbox(Some(sbx.clone())),
        };
        found.push(Found::new(p.resource(), level));
    }
    // The view every sandbox's mounts come from is standing configuration; filesystems are
    // mounted under `filesystems/` for as long as they exist; the rest (bundle mounts, image
    // roots under `rootfs/`) is of one sandbox.
    let view = format!(" on {}", state.join(bulkhead_runtime::oci::VIEW_DIR).display());
    let filesystems = state.join("filesystems").display().to_string();
    for m in host::mounts_under(&state.display().to_string()) {
        let level = if m.name.ends_with(&view) {
            Level::Top
        } else if host::mentions_dir(&m.name, &filesystems) {
            Level::Filesystem(named_id(&m.name, "fs_"))
        } else {
            Level::Sandbox(named_id(&m.name, "sbx_"))
        };
        found.push(Found::new(m, level));
    }
    let entries = host::dir_entries(&state.join("sandboxes"), "bundle")
        .into_iter()
        .chain(host::dir_entries(&state.join("runc"), "oci-state"));
    for e in entries {
        let level = Level::Sandbox(named_id(&e.name, "sbx_"));
        found.push(Found::new(e, level));
    }
    for l in host::loop_devices(&data_dir.join("filesystems")) {
        let level = Level::Filesystem(named_id(&l.name, "fs_"));
        found.push(Found::new(l, level));
    }
    for n in host::net_objects() {
        // An nftables table is named `FAMILY NAME`.
        let name = n.name.rsplit(' ').next().unwrap_or_default();
        if let Some((prefix, rest)) = host::net_prefix_of(name) {
            let level = Level::Net { prefix: prefix.to_owned(), rest: rest.to_owned() };
            found.push(Found::new(n.clone(), level));
        }
    }
    found
}

/// A namespace's listing; none when the namespace was deleted since it was listed.
async fn unless_gone<T>(
    listing: impl std::future::Future<Output = Result<Vec<T>, ClientError>>,
) -> Result<Vec<T>, ClientError> {
    match listing.await {
        Err(ClientError::Api { status: 404, .. }) => Ok(Vec::new()),
        other => other,
    }
}

/// The live sandboxes, filesystems and existing namespaces, from the server.
async fn ask(c: &Client) -> Result<Live, ClientError> {
    // Only the platform admin sees every namespace; a namespace key would list its own and
    // make every other namespace's sandboxes look leaked. The platform audit chain is the
    // cheapest read that only the admin may do.
    c.audit(None, &AuditFilter { limit: Some(1), ..Default::default() }).await?;
    let mut live = Live::default();
    let names = all_pages(|cursor| async move { c.list_namespaces(Some(1000), cursor.as_deref()).await }).await?;
    for ns in names.into_iter().map(|n| n.name) {
        let sandboxes = unless_gone(all_pages(|cursor| {
            let ns = &ns;
            async move { c.list_sandboxes(ns, Some(1000), cursor.as_deref()).await }
        }))
        .await?;
        live.sandboxes.extend(sandboxes.into_iter().filter(crate::sandbox::is_active).map(|s| s.id));
        let filesystems = unless_gone(all_pages(|cursor| {
            let ns = &ns;
            async move { c.list_filesystems(ns, Some(1000), cursor.as_deref()).await }
        }))
        .await?;
        live.filesystems.extend(filesystems.into_iter().map(|f| f.id));
        live.namespaces.insert(ns);
    }
    Ok(live)
}

/// The store of a data dir, when it has one.
fn database(data_dir: &Path) -> Option<PathBuf> {
    Some(data_dir.join(bulkhead_server::bootstrap::DATABASE_FILE)).filter(|p| p.is_file())
}

/// What the store at `db` holds as alive.
async fn read_store(db: &Path) -> anyhow::Result<Live> {
    let store = SqliteStore::open_read_only(db).await.with_context(|| format!("open the store {}", db.display()))?;
    read_live(&store).await.with_context(|| format!("read the store {}", db.display()))
}

/// What the PostgreSQL store at `url` holds as alive.
async fn read_pg_store(url: &str) -> anyhow::Result<Live> {
    let store = PgStore::open_read_only(url).await.context("open the PostgreSQL store")?;
    let live = read_live(&store).await.context("read the PostgreSQL store");
    store.close().await;
    live
}

/// What `store` holds as alive.
async fn read_live(store: &dyn Store) -> Result<Live, bulkhead_store::StoreError> {
    let read = async {
        let mut live = Live { store: Some(store.store_id().await?), ..Live::default() };
        live.sandboxes = store.active_sandboxes().await?.into_iter().map(|s| s.id).collect();
        live.filesystems = store.all_filesystems().await?.into_iter().map(|f| f.id).collect();
        let mut after: Option<String> = None;
        loop {
            let page = store.list_namespaces(after.as_deref(), 1000, None).await?;
            after = page.last().map(|n| n.name.clone());
            let done = page.len() < 1000;
            live.namespaces.extend(page.into_iter().map(|n| n.name));
            if done {
                return Ok::<_, bulkhead_store::StoreError>(live);
            }
        }
    };
    read.await
}

/// What this server has alive: from the server at `--url`, or, when none answers or there is
/// no token to ask it with, from the store in `data_dir`; `Err` with why nothing could say.
/// Where it came from is said in one line on stderr.
async fn learn(global: &Global, data_dir: &Path, store: Option<&str>) -> anyhow::Result<Result<Live, String>> {
    let unasked = match client(global) {
        Err(_) => format!("no token for the server at {}", global.url),
        Ok(c) => match ask(&c).await {
            Ok(live) => return Ok(Ok(live)),
            Err(ClientError::Transport { .. }) => format!("no server answers at {}", global.url),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "the server at {} would not say which sandboxes are live (doctor needs the platform admin token)",
                    global.url
                )))
            }
        },
    };
    if let Some(url) = store {
        eprintln!("{unasked}: what is live is read from the store (PostgreSQL)");
        return Ok(Ok(read_pg_store(url).await?));
    }
    match database(data_dir) {
        Some(db) => {
            eprintln!("{unasked}: what is live is read from the store {}", db.display());
            Ok(Ok(read_store(&db).await?))
        }
        None => {
            eprintln!("{unasked} and {} has no store: every sandbox resource counts as a leak", data_dir.display());
            Ok(Err(format!("nothing says it is live ({unasked}, no store in {})", data_dir.display())))
        }
    }
}

/// The owners in the host registry; none when it has no file.
fn owners(path: &Path) -> anyhow::Result<Vec<Owner>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let registry = HostRegistry::open(path)?;
    Ok(registry.owners()?)
}

/// Whether `owner` is the server doctor looks at: the same store, or the same data dir (its
/// label), or its cgroup prefix.
fn is_this_server(owner: &Owner, live: Option<&Live>, data_dir: &Path, prefix: &str) -> bool {
    match live.and_then(|l| l.store.as_deref()) {
        Some(store) => owner.id == store,
        None => Path::new(&owner.label) == data_dir || owner.cgroup_prefixes.iter().any(|p| p == prefix),
    }
}

/// Who holds each network name prefix found on the host, and what of theirs is alive.
async fn net_owners(
    found: &[Found],
    owners: &[Owner],
    world: &World,
    data_dir: &Path,
    prefix: &str,
) -> HashMap<String, NetOwner> {
    let mut out = HashMap::new();
    for f in found {
        let Level::Net { prefix: net, .. } = &f.level else { continue };
        if out.contains_key(net) {
            continue;
        }
        let Some(owner) = owners.iter().find(|o| &o.net_prefix == net) else { continue };
        let held = if is_this_server(owner, world.live.as_ref(), data_dir, prefix) {
            match &world.live {
                Some(l) => NetOwner::Known(l.clone()),
                None => NetOwner::Unknown(world.unknown.clone()),
            }
        } else {
            match database(Path::new(&owner.label)) {
                Some(db) => match read_store(&db).await {
                    Ok(l) => NetOwner::Known(l),
                    Err(e) => NetOwner::Unknown(format!("the store of owner {} cannot be read: {e:#}", owner.id)),
                },
                None => NetOwner::Unknown(format!("owner {} has no store in {}", owner.id, owner.label)),
            }
        };
        out.insert(net.clone(), held);
    }
    out
}

pub async fn doctor(args: DoctorArgs, global: &Global) -> anyhow::Result<ExitCode> {
    if !host::is_root() {
        anyhow::bail!("doctor reads this host's cgroups, processes and mounts: run it as root on the server's host");
    }
    if let Some(owner) = &args.forget_owner {
        let registry = HostRegistry::open(&args.host_registry)?;
        if !registry.forget_owner(owner)? {
            anyhow::bail!("{owner} is not an owner in the host registry {}", args.host_registry.display());
        }
        println!("{owner} no longer holds anything in the host registry {}", args.host_registry.display());
        return Ok(ExitCode::SUCCESS);
    }
    // Mounts and loop devices name absolute, resolved paths; so do registry labels.
    let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    let state = resolve(&args.state_dir);
    let data_dir = resolve(&global.data_dir.clone().unwrap_or_else(crate::default_data_dir));
    // The state dir and the cgroup prefix are judged against the store of the server that
    // holds them: another server's answer (or store) would call every live sandbox a leak.
    for (lock, what) in [
        (state.join("lock"), format!("state dir {}", state.display())),
        (
            bulkhead_runtime::ownership::cgroup_lock_path(&args.cgroup_prefix),
            format!("cgroup prefix {:?}", args.cgroup_prefix),
        ),
    ] {
        if let Some((pid, holder)) = bulkhead_runtime::ownership::holder(&lock) {
            if holder != data_dir {
                anyhow::bail!(
                    "the {what} belongs to the server with data dir {} (pid {pid}), not {}: run doctor with --data-dir {} \
                     and that server's --url",
                    holder.display(),
                    data_dir.display(),
                    holder.display()
                );
            }
        }
    }
    // The host first, then what is live: a sandbox created in between is then known, not
    // reported as a leak.
    let found = scan(&args.cgroup_prefix, &state, &data_dir);
    let mut world = World { registry: args.host_registry.clone(), ..World::default() };
    let owners = owners(&args.host_registry)?;
    match learn(global, &data_dir, args.store.as_deref()).await? {
        Ok(mut live) => {
            if live.store.is_none() {
                live.store = owners
                    .iter()
                    .find(|o| is_this_server(o, None, &data_dir, &args.cgroup_prefix))
                    .map(|o| o.id.clone());
            }
            world.live = Some(live);
        }
        Err(why) => world.unknown = why,
    }
    world.nets = net_owners(&found, &owners, &world, &data_dir, &args.cgroup_prefix).await;
    let mut leaks: Vec<Leak> = found
        .iter()
        .filter_map(|f| judge(f, &world).map(|why| Leak { kind: f.kind, resource: f.name.clone(), why }))
        .collect();
    leaks.sort();
    leaks.dedup();
    if global.json {
        output::json(&leaks)?;
    } else if leaks.is_empty() {
        println!("no leaked host resources");
    } else {
        let rows: Vec<Vec<String>> =
            leaks.iter().map(|l| vec![l.kind.to_owned(), l.resource.clone(), l.why.clone()]).collect();
        table(&["KIND", "RESOURCE", "WHY"], &rows);
    }
    Ok(if leaks.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(name: &str, level: Level, busy: bool) -> Found {
        Found { kind: "cgroup", name: name.into(), level, busy }
    }

    fn live() -> Live {
        Live {
            store: Some("sto_1".into()),
            sandboxes: [format!("sbx_{}", "ab12".repeat(8)), "sbx_live".to_owned()].into_iter().collect(),
            namespaces: ["acme".to_owned()].into_iter().collect(),
            filesystems: ["fs_live".to_owned()].into_iter().collect(),
        }
    }

    fn world(live: Option<Live>) -> World {
        World { live, unknown: "nothing says".into(), registry: "/reg".into(), ..World::default() }
    }

    fn leak(f: &Found, w: &World) -> bool {
        judge(f, w).is_some()
    }

    #[test]
    fn judging() {
        let (known, unknown) = (world(Some(live())), world(None));
        let sbx = |n: &str| found(n, Level::Sandbox(named_id(n, "sbx_")), false);
        assert!(!leak(&sbx("/sys/fs/cgroup/pids/b/acme/sbx_live"), &known));
        assert!(!leak(&sbx("/sys/fs/cgroup/pids/b/acme/sbx_live/cmd-1"), &known));
        assert!(leak(&sbx("/sys/fs/cgroup/pids/b/acme/sbx_dead"), &known));
        // A live id that merely starts a dead one's is not it.
        assert!(leak(&sbx("/run/b/sandboxes/sbx_livelier"), &known));
        assert!(leak(&sbx("/run/b/sandboxes/sbx_live"), &unknown));
        assert!(leak(&sbx("tmpfs on /run/b/stray"), &known));
        // A filesystem's mount and loop device are live while the filesystem exists, with or
        // without a sandbox.
        let fs = |n: &str| found(n, Level::Filesystem(named_id(n, "fs_")), false);
        assert!(!leak(&fs("/dev/loop1 on /run/b/filesystems/fs_live"), &known));
        assert!(!leak(&fs("/dev/loop1 (/d/filesystems/images/fs_live.img)"), &known));
        assert!(leak(&fs("/dev/loop2 on /run/b/filesystems/fs_gone"), &known));
        assert!(leak(&fs("/dev/loop1 on /run/b/filesystems/fs_live"), &unknown));
        let ns = |n: &str, busy| found("x", Level::Namespace(n.into()), busy);
        assert!(!leak(&ns("acme", false), &known));
        assert!(leak(&ns("gone", false), &known));
        assert!(!leak(&ns("gone", false), &unknown));
        assert!(leak(&ns("acme", true), &known));
        assert!(!leak(&found("x", Level::Top, false), &known));
        assert!(leak(&found("x", Level::Top, false), &world(Some(Live::default()))));
        assert!(leak(&found("x", Level::Top, true), &unknown));
        assert!(leak(&found("x", Level::Stray("in the prefix cgroup".into()), false), &known));
        // The running server holds its control plane's cgroup; an empty one was left behind.
        assert!(!leak(&found("x", Level::ControlPlane, true), &known));
        assert!(leak(&found("x", Level::ControlPlane, false), &known));
    }

    #[test]
    fn every_leak_says_why() {
        let known = world(Some(live()));
        let why = |level: Level, busy| judge(&found("x", level, busy), &known).unwrap();
        assert_eq!(why(Level::Sandbox(Some("sbx_dead".into())), false), "no live sandbox sbx_dead of store sto_1");
        assert_eq!(why(Level::Filesystem(Some("fs_gone".into())), false), "no filesystem fs_gone of store sto_1");
        assert_eq!(why(Level::Namespace("gone".into()), false), "namespace gone gone of store sto_1");
        assert!(why(Level::Namespace("acme".into()), true).contains("process"));
        assert!(why(Level::Top, true).contains("process"));
        let unknown = world(None);
        assert_eq!(
            judge(&found("x", Level::Sandbox(Some("sbx_live".into())), false), &unknown).unwrap(),
            "nothing says"
        );
    }

    #[test]
    fn ids_are_read_from_names() {
        assert_eq!(named_id("/sys/fs/cgroup/pids/b/acme/sbx_0af/cmd", "sbx_").as_deref(), Some("sbx_0af"));
        assert_eq!(named_id("pid 7 (sleep) in cgroup /b/acme/sbx_x", "sbx_").as_deref(), Some("sbx_x"));
        assert_eq!(named_id("/dev/loop1 (/d/filesystems/images/fs_ab.img)", "fs_").as_deref(), Some("fs_ab"));
        assert_eq!(named_id("/d/xfs_ab", "fs_"), None);
        assert_eq!(named_id("/d/fs_/x", "fs_"), None);
        assert_eq!(named_id("/run/b/view", "sbx_"), None);
    }

    #[test]
    fn network_objects_are_judged_by_their_owner() {
        let body = "ab12".repeat(8);
        let mut w = world(Some(live()));
        w.nets.insert("bh0001".into(), NetOwner::Known(live()));
        w.nets.insert("bh0002".into(), NetOwner::Unknown("owner sto_2 has no store in /gone".into()));
        let net = |kind: &'static str, prefix: &str, rest: &str| Found {
            kind,
            name: format!("{prefix}{rest}"),
            level: Level::Net { prefix: prefix.into(), rest: rest.into() },
            busy: false,
        };
        // A live sandbox's netns, veth and table.
        assert_eq!(judge(&net("netns", "bh0001", &format!("-{body}")), &w), None);
        assert_eq!(judge(&net("veth", "bh0001", &body[..9]), &w), None);
        assert_eq!(judge(&net("nft table", "bh0001", &format!("_{body}")), &w), None);
        // The owner's own table.
        assert_eq!(judge(&net("nft table", "bh0001", "_nat"), &w), None);
        // Its spare networks.
        assert_eq!(judge(&net("netns", "bh0001", "-pool-0000002a"), &w), None);
        assert_eq!(judge(&net("veth", "bh0001", "p0000002a"), &w), None);
        // A dead sandbox's.
        let dead = "cd34".repeat(8);
        assert_eq!(
            judge(&net("netns", "bh0001", &format!("-{dead}")), &w).unwrap(),
            format!("no live sandbox sbx_{dead} of store sto_1")
        );
        assert_eq!(
            judge(&net("veth", "bh0001", &dead[..9]), &w).unwrap(),
            format!("no live sandbox sbx_{}… of store sto_1", &dead[..9])
        );
        assert!(judge(&net("nft table", "bh0001", &format!("_{dead}")), &w).is_some());
        assert_eq!(judge(&net("netns", "bh0001", "-x"), &w).unwrap(), "names no sandbox of store sto_1");
        // Of an owner whose store is gone, and of no owner.
        assert_eq!(
            judge(&net("netns", "bh0002", &format!("-{body}")), &w).unwrap(),
            "owner sto_2 has no store in /gone"
        );
        assert_eq!(
            judge(&net("nft table", "bh0003", "_nat"), &w).unwrap(),
            "no owner in the host registry /reg holds bh0003"
        );
    }

    #[test]
    fn the_server_is_found_in_the_registry() {
        let owner = Owner {
            id: "sto_1".into(),
            label: "/var/lib/b".into(),
            cgroup_prefixes: vec!["b".into()],
            net_prefix: "bh0000".into(),
        };
        assert!(is_this_server(&owner, None, Path::new("/var/lib/b"), "other"));
        assert!(is_this_server(&owner, None, Path::new("/elsewhere"), "b"));
        assert!(!is_this_server(&owner, None, Path::new("/elsewhere"), "other"));
        assert!(is_this_server(&owner, Some(&live()), Path::new("/elsewhere"), "other"));
        let other = Live { store: Some("sto_2".into()), ..Live::default() };
        assert!(!is_this_server(&owner, Some(&other), Path::new("/var/lib/b"), "b"));
    }
}
