//! Host-global resources across servers: two `bulkhead serve` processes on one host, each with
//! its own data dir, state dir and cgroup prefix, share one host registry. Their namespaces get
//! disjoint host id ranges (read from inside their sandboxes), a cgroup prefix has one owner,
//! and a range another server holds stops a start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use bulkhead_runtime::hostreg::HostRegistry;
use common::process::{runtime_names, Server};

/// Host id ranges `(inside, host start, size)` of a `/proc/self/uid_map` or `gid_map` text.
fn ranges(map: &str) -> Vec<(u64, u64, u64)> {
    map.lines()
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            assert_eq!(f.len(), 3, "{map}");
            (f[0], f[1], f[2])
        })
        .collect()
}

/// Creates namespace `ns` with a developer key and a sandbox on `server`, and returns the host
/// uid and gid ranges the sandbox's ids map onto, read inside it.
fn host_ids_seen_inside(server: &Server, ns: &str) -> Vec<(u64, u64)> {
    server.ok(None, &["namespace", "create", ns, "--cpu", "1", "--memory", "1GiB"]);
    let key = server.json(None, &["key", "create", "--ns", ns, "dev", "--role", "developer"]);
    let dev = key["token"].as_str().unwrap().to_owned();
    let s = server.json(Some(&dev), &["sandbox", "create", "--ns", ns]);
    let sbx = s["id"].as_str().unwrap().to_owned();
    let mut out = Vec::new();
    for file in ["/proc/self/uid_map", "/proc/self/gid_map"] {
        let map = server.ok(Some(&dev), &["exec", "--ns", ns, &sbx, "--", "cat", file]);
        let r = ranges(&map);
        assert!(!r.is_empty(), "{file}: {map}");
        out.extend(r.iter().map(|(_, start, size)| (*start, *size)));
    }
    server.ok(Some(&dev), &["sandbox", "delete", "--ns", ns, &sbx]);
    out
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

/// Starts two servers at the same moment on one registry.
fn start_two(dir: &Path, registry: &Path) -> (Server, Server) {
    let starts: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let (data, registry) = (dir.join(name), registry.to_owned());
            std::thread::spawn(move || Server::spawn(&data, runtime_names(), &registry, &[]))
        })
        .collect();
    let mut servers = starts.into_iter().map(|t| t.join().unwrap().expect("server start"));
    (servers.next().unwrap(), servers.next().unwrap())
}

#[test]
fn two_servers_on_one_host_map_namespaces_onto_disjoint_host_ids() {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let registry = dir.path().join("host").join("registry");
    let (a, b) = start_two(dir.path(), &registry);

    // The same namespace names on both, created at the same time.
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| [host_ids_seen_inside(&a, "acme"), host_ids_seen_inside(&a, "globex")].concat());
        let tb = s.spawn(|| [host_ids_seen_inside(&b, "acme"), host_ids_seen_inside(&b, "globex")].concat());
        (ta.join().unwrap(), tb.join().unwrap())
    });
    for x in &ra {
        for y in &rb {
            assert!(!overlap(*x, *y), "server a maps onto {x:?} and server b onto {y:?}: {ra:?} {rb:?}");
        }
    }
    // Within one server, its namespaces are disjoint too (uid and gid ranges are the same).
    assert!(!overlap(ra[0], ra[2]) && !overlap(rb[0], rb[2]), "{ra:?} {rb:?}");

    // The registry names two owners with two ranges each; a namespace delete gives its back.
    let reg = HostRegistry::open(&registry).unwrap();
    let owners = reg.owners().unwrap();
    assert_eq!(owners.len(), 2, "{owners:?}");
    assert_eq!(reg.id_claims().unwrap().len(), 4);
    a.ok(None, &["namespace", "delete", "globex"]);
    let claims = reg.id_claims().unwrap();
    assert_eq!(claims.len(), 3, "{claims:?}");
    assert!(!claims.iter().any(|c| u64::from(c.start) == ra[2].0), "{claims:?}");
}

#[test]
fn a_cgroup_prefix_has_one_server() {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let registry = dir.path().join("registry");
    let (state_a, prefix) = runtime_names();
    let first = Server::spawn(&dir.path().join("a"), (state_a, prefix.clone()), &registry, &[]).unwrap();

    // A second server (its own data and state dir) in the first one's cgroup prefix does not start,
    // and says who holds the prefix.
    let (state_b, _) = runtime_names();
    let data_b = dir.path().join("b");
    let err = match Server::spawn(&data_b, (state_b.clone(), prefix.clone()), &registry, &[]) {
        Ok(_) => panic!("two servers started in one cgroup prefix"),
        Err(e) => e,
    };
    // The prefix's lock refuses it first, naming the live holder (its pid and data dir); the
    // registry would name its store.
    let owner = HostRegistry::open(&registry).unwrap().owners().unwrap();
    let holder = owner.iter().find(|o| o.cgroup_prefixes.contains(&prefix)).expect("the prefix is held");
    assert!(
        err.contains(&prefix) && (err.contains(&holder.id) || err.contains(&format!("pid {}", first.pid()))),
        "{err}"
    );
    assert!(err.contains(&dir.path().join("a").display().to_string()), "{err}");
    assert!(!state_b.exists(), "the refused server touched the host");

    // The first server is unharmed and its sandboxes run.
    let ids = host_ids_seen_inside(&first, "acme");
    assert!(!ids.is_empty());

    // Once the first server is gone for good, the operator frees its entry and the prefix can
    // be used again.
    let reg = registry.display().to_string();
    let out = first.cli(None, &["doctor", "--host-registry", &reg, "--forget-owner", "sto_nobody"]);
    assert!(!out.status.success(), "forgetting an unknown owner succeeded");
    let mut first = first;
    first.ok(None, &["namespace", "delete", "acme"]);
    first.stop();
    first.ok(None, &["doctor", "--host-registry", &reg, "--forget-owner", &holder.id]);
    let second = Server::spawn(&data_b, (state_b, prefix.clone()), &registry, &[]).expect("the freed prefix");
    second.ok(None, &["namespace", "create", "acme", "--cpu", "1", "--memory", "1GiB"]);
}

/// A data dir wiped and used again holds a new store: that store takes over the entry of the one
/// it replaced, so the operator's server starts again in its cgroup prefix without a manual step.
#[test]
fn a_data_dir_made_again_takes_over_its_old_entry() {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let registry = dir.path().join("registry");
    let data = dir.path().join("data");
    let names = runtime_names();
    let mut first = Server::spawn(&data, names.clone(), &registry, &[]).unwrap();
    first.ok(None, &["namespace", "create", "acme", "--cpu", "1", "--memory", "1GiB"]);
    first.ok(None, &["namespace", "delete", "acme"]);
    first.stop();
    let old: Vec<String> = HostRegistry::open(&registry).unwrap().owners().unwrap().into_iter().map(|o| o.id).collect();
    assert_eq!(old.len(), 1);
    std::fs::remove_dir_all(&data).unwrap();

    let second = Server::spawn(&data, names.clone(), &registry, &[]).expect("a new store in the same data dir starts");
    second.ok(None, &["namespace", "create", "acme", "--cpu", "1", "--memory", "1GiB"]);
    let owners = HostRegistry::open(&registry).unwrap().owners().unwrap();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_ne!(owners[0].id, old[0], "the new store holds the entry");
    assert!(owners[0].cgroup_prefixes.contains(&names.1), "{owners:?}");
}

#[test]
fn a_range_held_by_another_server_stops_a_start() {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let (own_a, shared): (PathBuf, PathBuf) = (dir.path().join("a-registry"), dir.path().join("shared"));

    // Two servers that each made a namespace on a registry of their own: both hold the first
    // range, as every server did when the base was a constant.
    let names_a = runtime_names();
    let mut a = Server::spawn(&data_a, names_a.clone(), &own_a, &[]).unwrap();
    a.ok(None, &["namespace", "create", "acme", "--cpu", "1", "--memory", "1GiB"]);
    a.stop();
    let b = Server::spawn(&data_b, runtime_names(), &shared, &[]).unwrap();
    b.ok(None, &["namespace", "create", "globex", "--cpu", "1", "--memory", "1GiB"]);

    // Moved onto the shared registry, the first one must not start over the other's ids.
    let err = match Server::spawn(&data_a, names_a.clone(), &shared, &[]) {
        Ok(_) => panic!("a server started with host ids another server holds"),
        Err(e) => e,
    };
    assert!(err.contains("host ids") && err.contains("acme") && err.contains(&data_b.display().to_string()), "{err}");
    // On its own registry it still starts, with its namespace.
    let a = Server::spawn(&data_a, names_a, &own_a, &[]).unwrap();
    assert_eq!(a.json(None, &["namespace", "get", "acme"])["name"], "acme");
}

/// A server sets the kernel's cgroup2 mount option `favordynmods` at start (every exec's
/// command joins a cgroup, and without it that migration can wait for an RCU grace period and
/// for every fork on the host) and gives the mount's other options back: the mount is given
/// `nsdelegate` and no `favordynmods` first, and has both once the server listens. The mount's
/// own options are given back at the end, with `favordynmods` (as any server leaves it).
#[test]
fn a_server_sets_favordynmods_on_the_cgroup2_mount_and_keeps_its_other_options() {
    use bulkhead_runtime::dynmods;
    let mount = dynmods::cgroup2_mount().unwrap().expect("this host has a cgroup2 mount");
    let flags = |opts: &[String]| -> Vec<String> {
        opts.iter().filter(|o| !matches!(o.as_str(), "rw" | "ro" | "favordynmods")).cloned().collect()
    };
    let own = flags(&mount.super_options);
    let mut planted = own.clone();
    if !planted.iter().any(|f| f == "nsdelegate") {
        planted.push("nsdelegate".into());
    }
    dynmods::reconfigure(&mount.path, &planted).unwrap();
    let dir = common::tempdir();
    let server = Server::start(&dir.path().join("data"));
    let after = dynmods::cgroup2_mount().unwrap().unwrap().super_options;
    drop(server);
    let mut restored = own.clone();
    restored.push("favordynmods".into());
    dynmods::reconfigure(&mount.path, &restored).unwrap();
    assert!(after.iter().any(|o| o == "favordynmods"), "{after:?}");
    for f in &planted {
        assert!(after.contains(f), "{f} was dropped: {after:?}");
    }
}
