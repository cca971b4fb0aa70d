//! `bulkhead doctor`: the host resources of Bulkhead on this machine that belong to no live
//! sandbox. It reads the host directly (cgroups, the runtime state dir, processes, mounts,
//! named network namespaces, loop devices), so it runs as root on the server's host, and asks
//! the server, when one answers, which sandboxes are live.
//!
//! How a resource is judged:
//! - sandbox-level resources (bundles, OCI state, sandbox cgroups, supervisors, mounts, netns,
//!   loop devices) are expected only when they name a sandbox the server reports as creating or
//!   running; with no server to ask, every one of them is a leak;
//! - a filesystem's loop device and mount are kept while the filesystem exists, so they are
//!   expected when they name a filesystem the server reports, and are leaks otherwise (or with
//!   no server to ask);
//! - the prefix cgroup and the per-namespace cgroups are the server's standing configuration
//!   (they outlive sandboxes and server restarts), so they are a leak only when a process sits
//!   directly in them or, when the server answers, when their namespace no longer exists.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bulkhead_client::{AuditFilter, Client, ClientError};
use bulkhead_runtime::host::{self, HostResource};
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
    /// The host registry shared by the Bulkhead servers of this host.
    #[arg(long, env = "BULKHEAD_HOST_REGISTRY", default_value = bulkhead_runtime::hostreg::DEFAULT_PATH)]
    host_registry: PathBuf,
    /// Instead of looking for leaks: removes this store's entry from the host registry and
    /// releases every host id range and cgroup prefix it holds. Only for a server whose data
    /// is gone for good (its files would otherwise be owned by ids another server may get).
    #[arg(long, value_name = "STORE_ID")]
    forget_owner: Option<String>,
}

/// Where in the server's tree a resource sits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// The prefix cgroup itself.
    Top,
    /// A namespace's cgroup.
    Namespace(String),
    /// Anything of one sandbox.
    Sandbox,
    /// A filesystem's loop device or mount, which the server keeps while the filesystem
    /// exists, whether or not a sandbox uses it.
    Filesystem,
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
    fn sandbox(r: HostResource) -> Found {
        Found { kind: r.kind, name: r.name, level: Level::Sandbox, busy: false }
    }
}

/// What the server reports as alive.
#[derive(Debug, Default)]
struct Live {
    sandboxes: HashSet<String>,
    namespaces: HashSet<String>,
    filesystems: HashSet<String>,
}

/// One leaked resource, as printed.
#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct Leak {
    kind: &'static str,
    resource: String,
}

fn is_leak(found: &Found, live: Option<&Live>) -> bool {
    match &found.level {
        Level::Sandbox => match live {
            Some(l) => !l.sandboxes.iter().any(|id| found.name.contains(id.as_str())),
            None => true,
        },
        Level::Filesystem => match live {
            Some(l) => !l.filesystems.iter().any(|id| found.name.contains(id.as_str())),
            None => true,
        },
        Level::Namespace(ns) => found.busy || live.is_some_and(|l| !l.namespaces.contains(ns)),
        Level::Top => found.busy || live.is_some_and(|l| l.namespaces.is_empty()),
    }
}

/// The cgroup dirs of this server, placed in its tree.
fn cgroups(prefix: &str) -> Vec<Found> {
    host::cgroups_of(Path::new(CGROUP_ROOT), prefix)
        .into_iter()
        .map(|c| {
            let level = match c.below_prefix.as_slice() {
                [] => Level::Top,
                [ns] => Level::Namespace(ns.clone()),
                _ => Level::Sandbox,
            };
            let busy = level != Level::Sandbox && c.busy;
            Found { kind: "cgroup", name: c.path.display().to_string(), level, busy }
        })
        .collect()
}

/// Everything of Bulkhead on this host that this server may own.
fn scan(args: &DoctorArgs, data_dir: Option<&Path>) -> Vec<Found> {
    // Mounts name absolute, resolved paths.
    let state = std::fs::canonicalize(&args.state_dir).unwrap_or_else(|_| args.state_dir.clone());
    let state_name = state.display().to_string();
    let mut found = cgroups(&args.cgroup_prefix);
    // The view every sandbox's mounts come from is the server's standing configuration, like
    // its prefix cgroup.
    let view = format!(" on {}", state.join(bulkhead_runtime::oci::VIEW_DIR).display());
    let (views, mounts): (Vec<_>, Vec<_>) =
        host::mounts_under(&state_name).into_iter().partition(|m| m.name.ends_with(&view));
    found.extend(views.into_iter().map(|r| Found { kind: r.kind, name: r.name, level: Level::Top, busy: false }));
    // Filesystems are mounted under the state dir's `filesystems/` from loop devices of the
    // data dir's images for as long as they exist: they are judged by filesystem, not sandbox.
    let filesystems = state.join("filesystems").display().to_string();
    let (fs_mounts, mounts): (Vec<_>, Vec<_>) =
        mounts.into_iter().partition(|m| host::mentions_dir(&m.name, &filesystems));
    let sandbox_level = host::dir_entries(&state.join("sandboxes"), "bundle")
        .into_iter()
        .chain(host::dir_entries(&state.join("runc"), "oci-state"))
        .chain(mounts)
        .chain(host::netns("bulkhead"));
    found.extend(sandbox_level.map(Found::sandbox));
    let fs_level =
        fs_mounts.into_iter().chain(data_dir.map(|d| host::loop_devices(&d.join("filesystems"))).unwrap_or_default());
    found.extend(fs_level.map(|r| Found { kind: r.kind, name: r.name, level: Level::Filesystem, busy: false }));
    // A supervisor is named with its cgroup, so a live sandbox's supervisor carries its id.
    found.extend(host::supervisors_of(&args.cgroup_prefix).iter().map(|s| Found::sandbox(s.resource())));
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

/// The live sandboxes and existing namespaces, from the server.
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

/// What the server at `--url` reports as alive; `None`, said in one line on stderr, when no
/// server answers or there is no token to ask it with.
async fn live(global: &Global) -> anyhow::Result<Option<Live>> {
    let unasked = |why: String| {
        eprintln!("{why}: every sandbox resource on this host counts as a leak");
        Ok(None)
    };
    let Ok(c) = client(global) else {
        return unasked(format!("no token for the server at {}", global.url));
    };
    match ask(&c).await {
        Ok(live) => Ok(Some(live)),
        Err(ClientError::Transport { .. }) => unasked(format!("no server answers at {}", global.url)),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "the server at {} would not say which sandboxes are live (doctor needs the platform admin token)",
            global.url
        ))),
    }
}

pub async fn doctor(args: DoctorArgs, global: &Global) -> anyhow::Result<ExitCode> {
    if !host::is_root() {
        anyhow::bail!("doctor reads this host's cgroups, processes and mounts: run it as root on the server's host");
    }
    if let Some(owner) = &args.forget_owner {
        let registry = bulkhead_runtime::hostreg::HostRegistry::open(&args.host_registry)?;
        if !registry.forget_owner(owner)? {
            anyhow::bail!("{owner} is not an owner in the host registry {}", args.host_registry.display());
        }
        println!("{owner} no longer holds anything in the host registry {}", args.host_registry.display());
        return Ok(ExitCode::SUCCESS);
    }
    // The host first, then the server: a sandbox created in between is then known to the
    // server, not reported as a leak.
    let found = scan(&args, global.data_dir.as_deref());
    let live = live(global).await?;
    let mut leaks: Vec<Leak> = found
        .iter()
        .filter(|f| is_leak(f, live.as_ref()))
        .map(|f| Leak { kind: f.kind, resource: f.name.clone() })
        .collect();
    leaks.sort();
    leaks.dedup();
    if global.json {
        output::json(&leaks)?;
    } else if leaks.is_empty() {
        println!("no leaked host resources");
    } else {
        let rows: Vec<Vec<String>> = leaks.iter().map(|l| vec![l.kind.to_owned(), l.resource.clone()]).collect();
        table(&["KIND", "RESOURCE"], &rows);
    }
    Ok(if leaks.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(name: &str, level: Level, busy: bool) -> Found {
        Found { kind: "cgroup", name: name.into(), level, busy }
    }

    #[test]
    fn judging() {
        let live = Live {
            sandboxes: ["sbx_live".to_owned()].into_iter().collect(),
            namespaces: ["acme".to_owned()].into_iter().collect(),
            filesystems: ["fs_live".to_owned()].into_iter().collect(),
        };
        let sbx = |n: &str| found(n, Level::Sandbox, false);
        assert!(!is_leak(&sbx("/sys/fs/cgroup/pids/b/acme/sbx_live"), Some(&live)));
        assert!(is_leak(&sbx("/sys/fs/cgroup/pids/b/acme/sbx_dead"), Some(&live)));
        assert!(is_leak(&sbx("/sys/fs/cgroup/pids/b/acme/sbx_live"), None));
        // A filesystem's mount and loop device are live while the filesystem exists, with or
        // without a sandbox.
        let fs = |n: &str| found(n, Level::Filesystem, false);
        assert!(!is_leak(&fs("/dev/loop1 on /run/b/filesystems/fs_live"), Some(&live)));
        assert!(!is_leak(&fs("/dev/loop1 (/d/filesystems/images/fs_live.img)"), Some(&live)));
        assert!(is_leak(&fs("/dev/loop2 on /run/b/filesystems/fs_gone"), Some(&live)));
        assert!(is_leak(&fs("/dev/loop1 on /run/b/filesystems/fs_live"), None));
        let ns = |n: &str, busy| found("x", Level::Namespace(n.into()), busy);
        assert!(!is_leak(&ns("acme", false), Some(&live)));
        assert!(is_leak(&ns("gone", false), Some(&live)));
        assert!(!is_leak(&ns("gone", false), None));
        assert!(is_leak(&ns("acme", true), Some(&live)));
        assert!(!is_leak(&found("x", Level::Top, false), Some(&live)));
        assert!(is_leak(&found("x", Level::Top, false), Some(&Live::default())));
        assert!(is_leak(&found("x", Level::Top, true), None));
    }
}
