//! End to end: the real `bulkhead serve` on a temporary data dir, driven by the real CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

/// A running server; killed on drop if the test did not stop it, and every host resource of
/// its sandboxes removed.
struct Server {
    child: Option<Child>,
    url: String,
    data_dir: PathBuf,
    first_token: Option<String>,
    state_dir: PathBuf,
    cgroup_prefix: String,
}

/// A fresh runtime state dir and cgroup prefix for one test server.
fn runtime_names() -> (PathBuf, String) {
    let mut bytes = [0u8; 6];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
    let tag: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (PathBuf::from(format!("/run/bulkhead-test-{tag}")), format!("bulkhead-test-{tag}"))
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, runtime_names())
    }

    fn start_with(data_dir: &Path, (state_dir, cgroup_prefix): (PathBuf, String)) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--cgroup-prefix", &cgroup_prefix])
            .env("BULKHEAD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bulkhead serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut first_token = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = loop {
            assert!(Instant::now() < deadline, "server did not start");
            let line = lines.next().expect("server exited before listening").unwrap();
            if let Some(t) = line.strip_prefix("admin token") {
                first_token = t.rsplit(' ').next().map(str::to_owned);
            }
            if let Some(u) = line.strip_prefix("bulkhead listening on ") {
                break u.to_owned();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child: Some(child), url, data_dir: data_dir.to_owned(), first_token, state_dir, cgroup_prefix }
    }

    /// Runs the CLI against this server; `token` `None` means "fall back to the admin token file".
    fn cli(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("BULKHEAD_URL", &self.url)
            .env("BULKHEAD_DATA_DIR", &self.data_dir)
            .env_remove("BULKHEAD_TOKEN");
        if let Some(t) = token {
            c.env("BULKHEAD_TOKEN", t);
        }
        c.output().expect("run bulkhead")
    }

    fn ok(&self, token: Option<&str>, args: &[&str]) -> String {
        let out = self.cli(token, args);
        assert!(out.status.success(), "bulkhead {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, token: Option<&str>, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(token, &all)).expect("--json prints JSON")
    }

    /// Fails with exactly one line on stderr; returns it.
    fn fails(&self, token: Option<&str>, args: &[&str]) -> String {
        let out = self.cli(token, args);
        assert!(!out.status.success(), "bulkhead {args:?} should have failed");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "one line on error, got {err:?}");
        err
    }

    /// SIGTERM, and the server must exit cleanly.
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "server exited with {status} on SIGTERM");
                return;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = bulkhead_runtime::oci::purge(&self.state_dir, Path::new("/sys/fs/cgroup"), &self.cgroup_prefix);
    }
}

#[test]
fn first_session_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data);

    // First start: the admin token is printed once and written 0600.
    let printed = server.first_token.clone().expect("first start prints the admin token");
    let file = std::fs::read_to_string(data.join("admin.token")).unwrap();
    assert_eq!(file.trim(), printed);
    assert_eq!(std::fs::metadata(data.join("admin.token")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);

    // The admin (from the token file) creates a namespace with human units.
    let ns = server.json(None, &["namespace", "create", "acme", "--cpu", "1.5", "--memory", "2GiB", "--max-ttl", "2h"]);
    assert_eq!(ns["quotas"]["cpu_millis"], 1500);
    assert_eq!(ns["quotas"]["memory_bytes"], 2u64 << 30);
    assert_eq!(ns["quotas"]["max_sandbox_ttl_seconds"], 7200);
    let table = server.ok(None, &["namespace", "list"]);
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
    assert!(table.contains("acme") && table.contains("2GiB") && table.contains("1.5"), "{table}");
    let ns = server.json(None, &["namespace", "update", "acme", "--max-sandboxes", "3"]);
    assert_eq!(ns["quotas"]["max_sandboxes"], 3);

    // Keys: shown once, roles enforced, revocation immediate.
    let owner = server.json(None, &["key", "create", "--ns", "acme", "boss", "--role", "owner"]);
    let owner_token = owner["token"].as_str().unwrap().to_owned();
    let dev = server.json(
        Some(&owner_token),
        &["key", "create", "--ns", "acme", "ci", "--role", "developer", "--expires-in", "30d"],
    );
    let dev_token = dev["token"].as_str().unwrap().to_owned();
    let dev_id = dev["id"].as_str().unwrap().to_owned();
    assert!(dev["expires_at"].as_str().is_some());
    let keys = server.ok(Some(&owner_token), &["key", "list", "--ns", "acme"]);
    assert!(keys.contains(&dev_id) && keys.contains("developer"), "{keys}");
    assert!(!keys.contains(&dev_token[4..]), "key list must not show tokens");

    assert_eq!(server.json(Some(&dev_token), &["namespace", "get", "acme"])["name"], "acme");
    let err = server.fails(Some(&dev_token), &["namespace", "delete", "acme"]);
    assert!(err.starts_with("error: forbidden"), "{err}");
    let err = server.fails(Some(&dev_token), &["namespace", "get", "globex"]);
    assert!(err.starts_with("error: not_found"), "{err}");
    server.ok(Some(&owner_token), &["key", "revoke", "--ns", "acme", &dev_id]);
    let err = server.fails(Some(&dev_token), &["namespace", "get", "acme"]);
    assert!(err.starts_with("error: unauthenticated"), "{err}");

    // Bad input: one clear line, non-zero exit, nothing created.
    let err = server.fails(None, &["namespace", "create", "Not_A_Name"]);
    assert!(err.contains("invalid_request") && err.contains("name"), "{err}");
    let out = server.cli(None, &["namespace", "create", "x", "--memory", "4parsecs"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("parsecs"));
    let err = server.fails(None, &["namespace", "create", "tiny", "--memory", "1KiB"]);
    assert!(err.contains("quotas.memory_bytes"), "{err}");
    assert_eq!(server.json(None, &["namespace", "list"]).as_array().unwrap().len(), 1);

    // The audit chain shows what happened and verifies.
    let records = server.json(Some(&owner_token), &["audit", "--ns", "acme"]);
    let actions: Vec<&str> = records.as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    // The developer's denied delete and its probe of another namespace are on acme's chain.
    assert_eq!(
        actions,
        ["namespace.update", "key.create", "key.create", "namespace.delete", "namespace.get", "key.revoke"]
    );
    let v = server.json(Some(&owner_token), &["audit", "--ns", "acme", "--verify"]);
    assert_eq!(v["ok"], true);
    let platform = server.ok(None, &["audit", "--action", "namespace.create"]);
    assert!(platform.contains("namespace.create"), "{platform}");

    // Restart on the same data dir: no new admin token, every token and record kept.
    server.stop();
    let names = (server.state_dir.clone(), server.cgroup_prefix.clone());
    let server = Server::start_with(&data, names);
    assert!(server.first_token.is_none(), "a restart must not mint another admin token");
    assert_eq!(server.json(Some(&printed), &["namespace", "get", "acme"])["name"], "acme");
    assert_eq!(server.json(Some(&owner_token), &["audit", "--ns", "acme", "--verify"])["records"], 6);

    // Deleting the namespace takes its keys with it.
    server.ok(None, &["namespace", "delete", "acme"]);
    let err = server.fails(Some(&owner_token), &["namespace", "list"]);
    assert!(err.starts_with("error: unauthenticated"), "{err}");
}

#[test]
fn unreachable_server_and_missing_token_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["namespace", "list"])
        .env("BULKHEAD_URL", "http://127.0.0.1:9")
        .env("BULKHEAD_TOKEN", "bha_x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach"), "{err}");

    let out = Command::new(BIN)
        .args(["namespace", "list"])
        .env_remove("BULKHEAD_TOKEN")
        .env("BULKHEAD_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BULKHEAD_TOKEN"));
}
