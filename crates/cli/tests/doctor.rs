//! `bulkhead doctor` knows the world: on a host with a real server, a namespace and a
//! filesystem (its loop device, its mount, the namespace's cgroups) and no sandbox, it finds
//! nothing leaked, whether the server answers or not; with one leak of each kind planted under
//! that server's names (mount, overlay, loop device, cgroup, process, network namespace, veth,
//! nftables table), it names each with why and exits 1. Runs as root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::process::{text, Server};
use serde_json::Value;

/// A server on a `bulkhead-test-` data dir with namespace `acme` and one filesystem, and no
/// sandbox. The dir is dropped last (after the server).
struct Healthy {
    server: Server,
    registry: PathBuf,
    _dir: tempfile::TempDir,
}

fn healthy() -> Healthy {
    let dir = common::tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    server.ok(None, &["namespace", "create", "acme", "--cpu", "2", "--memory", "2GiB"]);
    server.ok(None, &["fs", "create", "--ns", "acme", "data", "--size", "16MiB"]);
    Healthy { registry: data.join("host-registry"), server, _dir: dir }
}

impl Healthy {
    /// Doctor pointed at this server's state dir, cgroup prefix, registry and data dir (and at
    /// its URL with the admin token file unless `extra` says otherwise).
    fn doctor(&self, extra: &[&str]) -> Output {
        let registry = self.registry.display().to_string();
        let mut args = vec!["--host-registry", registry.as_str()];
        args.extend_from_slice(extra);
        self.server.doctor(None, &args)
    }

    /// Doctor when no server answers: what is live comes from the data dir's store.
    fn doctor_unanswered(&self, extra: &[&str]) -> Output {
        let mut args = vec!["--url", "http://127.0.0.1:1"];
        args.extend_from_slice(extra);
        self.doctor(&args)
    }

    fn net_prefix(&self) -> String {
        let owners = bulkhead_runtime::hostreg::HostRegistry::open(&self.registry).unwrap().owners().unwrap();
        assert_eq!(owners.len(), 1, "{owners:?}");
        owners[0].net_prefix.clone()
    }
}

fn assert_clean(out: &Output, what: &str) {
    assert!(out.status.success(), "doctor {what}: {}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(text(&out.stdout), "no leaked host resources\n", "{what}");
}

/// One test, in this order, because every test server's own host registry hands out the same
/// first network name prefix: a second test in parallel would see this one's planted network
/// objects as its own.
#[test]
fn doctor_finds_nothing_on_a_healthy_host_and_names_one_leak_of_each_kind() {
    let mut h = healthy();
    // The filesystem's loop device and mount are there.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(mounts.contains(&format!("{}/filesystems/fs_", h.server.state_dir.display())), "{mounts}");
    assert_clean(&h.doctor(&[]), "with the server answering");
    let out = h.doctor_unanswered(&[]);
    assert_clean(&out, "with no server answering (the store says what is live)");
    assert!(text(&out.stderr).contains("no server answers") && text(&out.stderr).contains("read from the store"));

    planted_leaks_are_named_with_why(&h);

    h.server.stop();
    assert_clean(&h.doctor(&[]), "with the server stopped");
    let out = h.doctor(&["--json"]);
    assert!(out.status.success());
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), Value::Array(vec![]));
}

/// Runs a command that must succeed.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Undoes what a test planted on the host, last planted first, even when the test panics.
#[derive(Default)]
struct Planted {
    undo: Vec<Box<dyn FnOnce()>>,
}

impl Planted {
    fn then(&mut self, undo: impl FnOnce() + 'static) {
        self.undo.push(Box::new(undo));
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        while let Some(undo) = self.undo.pop() {
            undo();
        }
    }
}

fn quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n.div_ceil(2)];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()[..n].to_owned()
}

/// A cgroup dir of `prefix` on the pids hierarchy (v1) or the unified one (v2).
fn cgroup_dir(prefix: &str, below: &str) -> PathBuf {
    let root = Path::new("/sys/fs/cgroup");
    let top = if root.join("cgroup.controllers").exists() { root.join(prefix) } else { root.join("pids").join(prefix) };
    top.join(below)
}

/// The net prefix no owner of `registry` holds: `ours` with its digits flipped.
fn other_net_prefix(ours: &str) -> String {
    let n = u16::from_str_radix(&ours[2..], 16).unwrap();
    format!("bh{:04x}", n ^ 0xffff)
}

/// Plants one leak of each kind under the names of `h`'s server, checks that doctor names each
/// with why, removes them all and checks that they are gone.
fn planted_leaks_are_named_with_why(h: &Healthy) {
    let state = h.server.state_dir.clone();
    let data = std::fs::canonicalize(&h.server.data_dir).unwrap();
    let net = h.net_prefix();
    let body = random_hex(32);
    let sbx = format!("sbx_{body}");
    let fs_id = format!("fs_{}", random_hex(32));
    let mut planted = Planted::default();

    // A mount in a dead sandbox's bundle (the bundle dir is a leak of its own).
    let bundle = state.join("sandboxes").join(&sbx);
    let bundle_mount = bundle.join("rootfs");
    std::fs::create_dir_all(&bundle_mount).unwrap();
    {
        let bundle = bundle.clone();
        planted.then(move || {
            let _ = std::fs::remove_dir_all(&bundle);
        });
    }
    run("mount", &["-t", "tmpfs", "tmpfs", bundle_mount.to_str().unwrap()]);
    {
        let m = bundle_mount.clone();
        planted.then(move || quiet("umount", &["-l", m.to_str().unwrap()]));
    }

    // An image's overlay root of a dead sandbox.
    let layers = state.join("test-layers");
    let overlay = state.join("rootfs").join(&sbx);
    for d in ["lower", "upper", "work"] {
        std::fs::create_dir_all(layers.join(d)).unwrap();
    }
    std::fs::create_dir_all(&overlay).unwrap();
    {
        let (layers, rootfs) = (layers.clone(), state.join("rootfs"));
        planted.then(move || {
            let _ = std::fs::remove_dir_all(&layers);
            let _ = std::fs::remove_dir_all(&rootfs);
        });
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        layers.join("lower").display(),
        layers.join("upper").display(),
        layers.join("work").display()
    );
    run("mount", &["-t", "overlay", "overlay", "-o", &opts, overlay.to_str().unwrap()]);
    {
        let m = overlay.clone();
        planted.then(move || quiet("umount", &["-l", m.to_str().unwrap()]));
    }

    // A loop device of a filesystem the store does not have.
    let image = data.join("filesystems").join("images").join(format!("{fs_id}.img"));
    std::fs::File::create(&image).unwrap().set_len(1 << 20).unwrap();
    {
        let image = image.clone();
        planted.then(move || {
            let _ = std::fs::remove_file(&image);
        });
    }
    let device = run("losetup", &["--find", "--show", image.to_str().unwrap()]).trim().to_owned();
    {
        let device = device.clone();
        planted.then(move || quiet("losetup", &["-d", &device]));
    }

    // A dead sandbox's cgroup in a live namespace, and a process in it.
    let cgroup = cgroup_dir(&h.server.cgroup_prefix, &format!("acme/{sbx}"));
    std::fs::create_dir_all(&cgroup).unwrap();
    {
        let cgroup = cgroup.clone();
        planted.then(move || {
            let _ = std::fs::remove_dir(&cgroup);
        });
    }
    let mut sleeper: Child = Command::new("sleep").arg("600").spawn().unwrap();
    let pid = sleeper.id();
    planted.then(move || {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    });
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()).unwrap();

    // A dead sandbox's network namespace, veth pair and nftables table, and a table of a
    // prefix no owner holds.
    let netns = format!("{net}-{body}");
    run("ip", &["netns", "add", &netns]);
    {
        let netns = netns.clone();
        planted.then(move || quiet("ip", &["netns", "del", &netns]));
    }
    let (veth, peer) = (format!("{net}{}", &body[..9]), format!("{net}{}", random_hex(9)));
    run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
    {
        let veth = veth.clone();
        planted.then(move || quiet("ip", &["link", "del", &veth]));
    }
    let table = format!("{net}_{body}");
    let stranger = format!("{}_nat", other_net_prefix(&net));
    for t in [&table, &stranger] {
        run("nft", &["add", "table", "inet", t]);
        let t = t.clone();
        planted.then(move || quiet("nft", &["delete", "table", "inet", &t]));
    }

    let dead = format!("no live sandbox {sbx} of store sto_");
    let expected: Vec<(&str, String, String)> = vec![
        ("mount", format!("tmpfs on {}", bundle_mount.display()), dead.clone()),
        ("bundle", bundle.display().to_string(), dead.clone()),
        ("overlay", format!("overlay on {}", overlay.display()), dead.clone()),
        ("loop", format!("{device} ({})", image.display()), format!("no filesystem {fs_id} of store sto_")),
        ("cgroup", cgroup.display().to_string(), dead.clone()),
        ("process", format!("pid {pid} (sleep) in cgroup "), dead.clone()),
        ("netns", netns.clone(), dead.clone()),
        ("veth", veth.clone(), format!("no live sandbox sbx_{}… of store sto_", &body[..9])),
        ("veth", peer.clone(), "no live sandbox sbx_".into()),
        ("nft table", format!("inet {table}"), dead.clone()),
        ("nft table", format!("inet {stranger}"), "no owner in the host registry".into()),
    ];
    let check = |out: Output, how: &str| {
        assert_eq!(out.status.code(), Some(1), "doctor {how} must fail: {}{}", text(&out.stdout), text(&out.stderr));
        let leaks: Value = serde_json::from_slice(&out.stdout).unwrap();
        let leaks = leaks.as_array().unwrap();
        for (kind, resource, why) in &expected {
            assert!(
                leaks.iter().any(|l| l["kind"] == *kind
                    && l["resource"].as_str().unwrap().starts_with(resource.as_str())
                    && l["why"].as_str().unwrap().starts_with(why.as_str())),
                "doctor {how}: no {kind} {resource} ({why}) in {}",
                serde_json::to_string_pretty(leaks).unwrap()
            );
        }
        // Nothing live is reported: the filesystem and the namespace are the server's.
        for l in leaks {
            let r = l["resource"].as_str().unwrap();
            assert!(
                r.contains(&body) || r.contains(&fs_id) || r == veth || r == peer || r.ends_with(&stranger),
                "doctor {how} reports something live: {l}"
            );
        }
    };
    check(h.doctor(&["--json"]), "with the server answering");
    check(h.doctor_unanswered(&["--json"]), "with no server answering");
    // The table names each with why.
    let out = h.doctor(&[]);
    let shown = text(&out.stdout);
    assert!(shown.starts_with("KIND") && shown.lines().next().unwrap().contains("WHY"), "{shown}");
    assert!(shown.contains(&dead), "{shown}");

    drop(planted);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&body), "{mounts}");
    assert!(!run("losetup", &["-a"]).contains(&fs_id));
    assert!(!run("ip", &["netns", "list"]).contains(&netns));
    assert!(!run("ip", &["link"]).contains(&veth));
    let tables = run("nft", &["list", "tables"]);
    assert!(!tables.contains(&table) && !tables.contains(&stranger), "{tables}");
    assert!(!cgroup.exists());
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert_clean(&h.doctor(&[]), "after the cleanup");
}
