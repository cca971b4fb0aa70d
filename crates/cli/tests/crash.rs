//! `kill -9` of the server with sandboxes running, then a restart: sandboxes that still run
//! are adopted, sandboxes that died meanwhile are marked failed with a reason, sandboxes the
//! store does not know are removed, and in the end nothing is left on the host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

struct Server {
    child: Child,
    url: String,
}

fn start(data: &Path, state: &Path, prefix: &str) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--network", "loopback-only", "--listen", "127.0.0.1:0"])
        .args(common::images::default_image_args())
        .args(common::process::store_args(data))
        .arg("--data-dir")
        .arg(data)
        .arg("--state-dir")
        .arg(state)
        .args(["--cgroup-prefix", prefix])
        // The control plane in its own weighted cgroup (not the default): its cgroup is made,
        // taken over after `kill -9`, and left on a clean stop.
        .args(["--control-plane-cpu-weight", "1000"])
        .arg("--host-registry")
        .arg(data.join("host-registry"))
        .env("BULKHEAD_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("server exited before listening").unwrap();
        if let Some(u) = line.strip_prefix("bulkhead listening on ") {
            break u.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, url }
}

fn http(server: &Server, token: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut c = Command::new("curl");
    c.args(["-s", "-w", "\n%{http_code}", "-X", method, "-H"])
        .arg(format!("authorization: Bearer {token}"))
        .arg(format!("{}{path}", server.url));
    if let Some(b) = body {
        c.args(["-H", "content-type: application/json", "--data-binary", b]);
    }
    let out = c.output().expect("curl (scripts/os-deps --test installs it)");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::Null))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cleanup(PathBuf, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = bulkhead_runtime::oci::purge(&self.0, Path::new("/sys/fs/cgroup"), &self.1);
    }
}

/// A server on a temporary data dir with runtime names of its own, and its namespace `alpha`
/// (64 pids per sandbox, `disk_bytes` of disk) created by the admin. Tests destructure it with
/// the server bound last: bindings drop in reverse order, so the server is killed before the
/// purge and the removal of its data dir.
struct Crashable {
    dir: tempfile::TempDir,
    _cleanup: Cleanup,
    prefix: String,
    state: PathBuf,
    data: PathBuf,
    admin: String,
    server: Server,
}

impl Crashable {
    fn start(disk_bytes: u64) -> Crashable {
        let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
        let data = dir.path().join("data");
        let (state, prefix) = common::process::runtime_names();
        let _cleanup = Cleanup(state.clone(), prefix.clone());
        let server = start(&data, &state, &prefix);
        let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_owned();
        let ns = format!(
            r#"{{"name":"alpha","quotas":{{"cpu_millis":2000,"memory_bytes":2147483648,"disk_bytes":{disk_bytes},"max_sandboxes":5,"pids_per_sandbox":64,"max_sandbox_ttl_seconds":3600}}}}"#
        );
        assert_eq!(http(&server, &admin, "POST", "/v1/namespaces", Some(&ns)).0, 201);
        Crashable { dir, _cleanup, prefix, state, data, admin, server }
    }
}

fn supervisor_pid(state: &Path, id: &str) -> i32 {
    std::fs::read_to_string(state.join("sandboxes").join(id).join("pid")).unwrap().trim().parse().unwrap()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

/// The cgroup of process `pid` that weighs its CPU (v1: the hierarchy with `cpu`; v2: the
/// unified one), and that cgroup's weight file as read (`cpu.shares` or `cpu.weight`).
fn cpu_cgroup(pid: u32) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v1 = text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == "cpu").then(|| path.to_owned())
    });
    match v1 {
        Some(path) => {
            let shares = std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{path}/cpu.shares")).unwrap();
            (path, shares.trim().to_owned())
        }
        None => {
            let path = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap().to_owned();
            let weight = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.weight")).unwrap();
            (path, weight.trim().to_owned())
        }
    }
}

/// The server runs in its own cgroup below its prefix, weighted ten times a namespace.
fn assert_weighted(server: &Server, prefix: &str) {
    let (path, weight) = cpu_cgroup(server.child.id());
    assert_eq!(path, format!("/{prefix}.control-plane"));
    let v1 = std::fs::read_to_string(format!("/proc/{}/cgroup", server.child.id())).unwrap().contains(":cpu");
    assert_eq!(weight, if v1 { "10240" } else { "1000" });
}

#[test]
fn kill_9_restart_reconciles_and_leaves_nothing() {
    let Crashable { dir: _dir, _cleanup, prefix, state, data, admin, mut server } = Crashable::start(0);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (code, body) = http(
            &server,
            &admin,
            "POST",
            "/v1/namespaces/alpha/sandboxes",
            Some(r#"{"memory_bytes":67108864,"cpu_millis":500}"#),
        );
        assert_eq!(code, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (survivor, casualty, orphan) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    assert_weighted(&server, &prefix);
    let exec = |s: &Server, id: &str, cmd: &str| {
        let body = serde_json::json!({"cmd": ["sh", "-c", cmd]}).to_string();
        http(s, &admin, "POST", &format!("/v1/namespaces/alpha/sandboxes/{id}/exec"), Some(&body))
    };
    assert_eq!(exec(&server, &survivor, "echo kept > /tmp/state").0, 200);

    // The crash.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    // While the server is down, one sandbox dies, and the store forgets another.
    let casualty_pid = supervisor_pid(&state, &casualty);
    let orphan_pid = supervisor_pid(&state, &orphan);
    assert!(Command::new("kill").args(["-9", &casualty_pid.to_string()]).status().unwrap().success());
    common::store_db::exec_blocking(&data, &format!("UPDATE sandboxes SET status = 'deleted' WHERE id = '{orphan}'"));

    let mut server = start(&data, &state, &prefix);
    // The control plane's cgroup that the crash left is taken over.
    assert_weighted(&server, &prefix);
    // Adopted: still running, its /tmp intact.
    let (code, body) = exec(&server, &survivor, "cat /tmp/state");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["stdout"], "kept\n");
    // Marked failed with a reason, and nothing of it left.
    let (_, body) = http(&server, &admin, "GET", &format!("/v1/namespaces/alpha/sandboxes/{casualty}"), None);
    assert_eq!(body["status"], "failed", "{body}");
    assert!(body["reason"].as_str().unwrap().starts_with("lost"), "{body}");
    assert!(!state.join("sandboxes").join(&casualty).exists());
    // The orphan is gone from the host.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(orphan_pid) {
        assert!(Instant::now() < deadline, "the orphan's supervisor still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!state.join("sandboxes").join(&orphan).exists());

    // Delete the survivor, stop the server: nothing of Bulkhead is left.
    let survivor_pid = supervisor_pid(&state, &survivor);
    assert_eq!(http(&server, &admin, "DELETE", &format!("/v1/namespaces/alpha/sandboxes/{survivor}"), None).0, 204);
    assert_eq!(http(&server, &admin, "DELETE", "/v1/namespaces/alpha", None).0, 204);
    assert!(Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap().success());
    assert!(server.child.wait().unwrap().success());
    assert!(!alive(survivor_pid));
    assert_eq!(std::fs::read_dir(state.join("sandboxes")).unwrap().count(), 0, "bundles left");
    assert_eq!(std::fs::read_dir(state.join("runc")).unwrap().count(), 0, "OCI runtime state left");
    let cgroups = bulkhead_runtime::cgroup::Cgroups::detect(Path::new("/sys/fs/cgroup"), &prefix).unwrap();
    assert!(cgroups.existing().is_empty(), "cgroups left: {:?}", cgroups.existing());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(state.to_str().unwrap()), "mounts left");
}

/// A file write the API acknowledged is there after `kill -9` and a restart; an archive upload
/// cut by `kill -9` half-way leaves the previous content and no staging behind.
#[test]
fn kill_9_keeps_acknowledged_files_and_drops_half_uploads() {
    let Crashable { dir, _cleanup, prefix, state, data, admin, mut server } = Crashable::start(1 << 30);
    let (code, body) = http(
        &server,
        &admin,
        "POST",
        "/v1/namespaces/alpha/filesystems",
        Some(r#"{"name":"d","size_bytes":134217728}"#),
    );
    assert_eq!(code, 201, "{body}");
    let fs = body["id"].as_str().unwrap().to_owned();
    let file = format!("/v1/namespaces/alpha/filesystems/{fs}/files?path=acked.txt");
    assert_eq!(http(&server, &admin, "PUT", &file, Some("acknowledged")).0, 204);

    // A 40 MiB upload, sent slowly; the server dies in the middle of it.
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("big"), vec![5u8; 40 << 20]).unwrap();
    let tarball = dir.path().join("big.tar");
    assert!(Command::new("tar").arg("-C").arg(&tree).args(["-cf"]).arg(&tarball).arg(".").status().unwrap().success());
    let mut upload = Command::new("curl")
        .args(["-s", "--limit-rate", "4M", "-X", "PUT", "-H"])
        .arg(format!("authorization: Bearer {admin}"))
        .arg("--data-binary")
        .arg(format!("@{}", tarball.display()))
        .arg(format!("{}/v1/namespaces/alpha/filesystems/{fs}/archive", server.url))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let _ = upload.wait();

    let server = start(&data, &state, &prefix);
    let mnt = state.join("filesystems").join(&fs);
    let entries: Vec<String> =
        std::fs::read_dir(&mnt).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(!entries.iter().any(|e| e.starts_with(".staging")), "staging left after restart: {entries:?}");
    let out = Command::new("curl")
        .args(["-s", "-H"])
        .arg(format!("authorization: Bearer {admin}"))
        .arg(format!("{}{file}", server.url))
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"acknowledged", "the acknowledged write is gone or the half upload replaced it");
    assert_eq!(http(&server, &admin, "DELETE", "/v1/namespaces/alpha", None).0, 204);
    assert!(!mnt.exists());
}
