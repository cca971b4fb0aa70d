//! End to end: the real `bulkhead serve` on a temporary data dir, driven by the real CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::process::Server;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

#[test]
fn first_session_through_the_cli() {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
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
    // Rate limits not given: the defaults.
    assert_eq!(ns["quotas"]["api_requests_per_second"], 1000);
    assert_eq!(ns["quotas"]["max_concurrent_execs"], 32);
    let table = server.ok(None, &["namespace", "list"]);
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
    assert!(table.contains("acme") && table.contains("2GiB") && table.contains("1.5"), "{table}");
    let ns = server
        .json(None, &["namespace", "update", "acme", "--max-sandboxes", "3", "--api-rps", "2000", "--max-execs", "40"]);
    assert_eq!(ns["quotas"]["api_requests_per_second"], 2000);
    assert_eq!(ns["quotas"]["max_concurrent_execs"], 40);
    assert_eq!(ns["quotas"]["max_sandboxes"], 3);
    let table = server.ok(None, &["namespace", "get", "acme"]);
    assert!(table.contains("API RPS") && table.contains("2000"), "{table}");

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
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
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
