//! Sandboxes through the real CLI against the real `bulkhead serve`: `sandbox`, `exec`
//! (streamed, exit code passed through, stdin), `cp` in and out, authorization, and
//! `bulkhead doctor` with a live sandbox, after teardown, and with a leak made on purpose.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::process::{text, Server};
use serde_json::Value;

/// A server on a temporary data dir with a namespace `acme` holding a developer and a viewer
/// key: the dir, the server, and the two tokens.
fn tenant_server() -> (tempfile::TempDir, Server, String, String) {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.ok(None, &["namespace", "create", "acme", "--cpu", "2", "--memory", "2GiB"]);
    let key = |name: &str, role: &str| {
        let k = server.json(None, &["key", "create", "--ns", "acme", name, "--role", role]);
        k["token"].as_str().unwrap().to_owned()
    };
    let (dev, viewer) = (key("dev", "developer"), key("look", "viewer"));
    (dir, server, dev, viewer)
}

#[test]
fn sandbox_exec_cp_and_doctor_through_the_cli() {
    let (dir, mut server, dev, viewer) = tenant_server();
    let dev = Some(dev.as_str());

    // Create with human units.
    let s = server.json(
        dev,
        &[
            "sandbox",
            "create",
            "--ns",
            "acme",
            "--cpu",
            "0.5",
            "--memory",
            "256MiB",
            "--ttl",
            "10m",
            "--env",
            "GREETING=hi there",
        ],
    );
    let id = s["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("sbx_"), "{s}");
    assert_eq!((s["status"].as_str(), s["cpu_millis"].as_u64()), (Some("running"), Some(500)), "{s}");
    assert_eq!((s["memory_bytes"].as_u64(), s["ttl_seconds"].as_u64()), (Some(256 << 20), Some(600)), "{s}");
    let list = server.ok(dev, &["sandbox", "list", "--ns", "acme"]);
    assert!(list.lines().next().unwrap().starts_with("ID"), "{list}");
    assert!(list.contains(&id) && list.contains("running"), "{list}");
    assert_eq!(server.json(dev, &["sandbox", "get", "--ns", "acme", &id])["id"], id.as_str());

    // Output streams to the right place and the exit code passes through.
    let out = server.cli(dev, &["exec", "--ns", "acme", &id, "--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!((text(&out.stdout).as_str(), text(&out.stderr).as_str()), ("out\n", "err\n"));
    // The sandbox's env, the command's env and cwd.
    let out = server.ok(
        dev,
        &[
            "exec",
            "--ns",
            "acme",
            &id,
            "--env",
            "WHO=me",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo $GREETING $WHO; pwd",
        ],
    );
    assert_eq!(out, "hi there me\n/tmp\n");
    // Standard input with -i.
    let input = b"line one\nline two\n";
    let out = server.run(dev, &["exec", "--ns", "acme", &id, "-i", "--", "cat"], input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, input);
    // A timeout: one error line and the status of timeout(1).
    let out = server.cli(dev, &["exec", "--ns", "acme", &id, "--timeout", "1s", "--", "sleep", "30"]);
    assert_eq!(out.status.code(), Some(124), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.trim_end().lines().count() == 1 && err.starts_with("error: ") && err.contains("timed out"), "{err:?}");
    // --json collects the output and still passes the exit code through.
    let out = server.cli(dev, &["exec", "--ns", "acme", &id, "--json", "--", "sh", "-c", "echo j; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["stdout"].as_str(), v["exit_code"].as_i64()), (Some("j\n"), Some(3)), "{v}");

    // cp in and out, byte for byte, through files and through - .
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let local = dir.path().join("payload.bin");
    std::fs::write(&local, &payload).unwrap();
    let remote = format!("{id}:/tmp/in/payload.bin");
    server.ok(dev, &["cp", "--ns", "acme", local.to_str().unwrap(), &remote]);
    let back = dir.path().join("back.bin");
    server.ok(dev, &["cp", "--ns", "acme", &remote, back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == payload, "the copy back differs");
    let sum = server.ok(dev, &["exec", "--ns", "acme", &id, "--", "wc", "-c", "/tmp/in/payload.bin"]);
    assert_eq!(sum.split_whitespace().next(), Some("200000"), "{sum}");
    // Into a directory: the remote file's name; no temporary file is left beside it.
    let into = dir.path().join("into");
    std::fs::create_dir(&into).unwrap();
    server.ok(dev, &["cp", "--ns", "acme", &remote, into.to_str().unwrap()]);
    let names: Vec<String> =
        std::fs::read_dir(&into).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["payload.bin"]);
    let out = server.run(dev, &["cp", "--ns", "acme", "-", &format!("{id}:/tmp/stdin.txt")], b"from stdin");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(server.ok(dev, &["cp", "--ns", "acme", &format!("{id}:/tmp/stdin.txt"), "-"]), "from stdin");
    let err = server.fails(dev, &["cp", "--ns", "acme", "a", "b"]);
    assert!(err.contains("exactly one"), "{err}");
    let err = server.fails(dev, &["cp", "--ns", "acme", &format!("{id}:/no/such/file"), back.to_str().unwrap()]);
    assert!(err.starts_with("error: "), "{err}");
    assert!(std::fs::read(&back).unwrap() == payload, "a failed copy must leave the local file alone");

    // A viewer may look but not run anything.
    let viewer = Some(viewer.as_str());
    assert!(server.ok(viewer, &["sandbox", "list", "--ns", "acme"]).contains(&id));
    let err = server.fails(viewer, &["exec", "--ns", "acme", &id, "--", "true"]);
    assert!(err.starts_with("error: ") && err.contains("forbidden"), "{err}");
    let err = server.fails(viewer, &["cp", "--ns", "acme", &remote, "-"]);
    assert!(err.contains("forbidden"), "{err}");
    // Only the platform admin sees every namespace, so only it may ask the doctor.
    let out = server.doctor(viewer, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.trim_end().lines().count() == 1, "{err:?}");
    assert!(err.contains("admin token") && err.contains("forbidden"), "{err}");

    // While the sandbox is live and the server answers, nothing is a leak.
    let out = server.doctor(None, &[]);
    assert!(out.status.success(), "doctor with a live sandbox: {}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(text(&out.stdout), "no leaked host resources\n");

    // Delete; with the server stopped, nothing of the sandbox is left.
    server.ok(dev, &["sandbox", "delete", "--ns", "acme", &id]);
    // The execs above are metered, and a viewer may read usage.
    let usage = server.json(viewer, &["usage", "--ns", "acme", "--since", "1h", "--granularity", "minute"]);
    assert!(usage["totals"]["exec_count"].as_u64().unwrap() >= 3, "{usage}");
    assert!(usage["totals"]["cpu_seconds"].as_f64().unwrap() > 0.0, "{usage}");
    let table = server.ok(viewer, &["usage", "--ns", "acme", "--since", "1h"]);
    assert!(table.contains("execs") && table.contains("cpu") && table.contains("egress"), "{table}");
    assert!(!server.ok(dev, &["sandbox", "list", "--ns", "acme"]).contains(&id));
    assert!(server.ok(dev, &["sandbox", "list", "--ns", "acme", "--all"]).contains("deleted"));
    server.stop();
    let out = server.doctor(None, &[]);
    assert!(out.status.success(), "doctor after teardown: {}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("no server answers"), "{}", text(&out.stderr));
    let out = server.doctor(None, &["--json"]);
    assert!(out.status.success());
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), Value::Array(vec![]));
}

#[test]
fn doctor_names_a_leak() {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"));
    let bundle = server.state_dir.join("sandboxes").join(format!("sbx_{}", "0".repeat(26)));
    std::fs::create_dir_all(&bundle).unwrap();
    let cgroup_root = Path::new("/sys/fs/cgroup");
    let top = if cgroup_root.join("cgroup.controllers").exists() {
        cgroup_root.join(&server.cgroup_prefix)
    } else {
        cgroup_root.join("pids").join(&server.cgroup_prefix)
    };
    // A sandbox cgroup no sandbox owns, in a namespace that exists (the cgroups of a namespace
    // that does not are the server's own to remove, and a server on a shared store sweeps them).
    server.ok(None, &["namespace", "create", "leakns"]);
    let cgroup = top.join("leakns").join("sbx_x");
    std::fs::create_dir_all(&cgroup).unwrap();

    let check = |server: &Server| {
        let out = server.doctor(None, &[]);
        assert_eq!(out.status.code(), Some(1), "doctor must fail on a leak: {}", text(&out.stderr));
        let table = text(&out.stdout);
        assert!(table.starts_with("KIND"), "{table}");
        assert!(table.contains(bundle.to_str().unwrap()), "{table}");
        assert!(table.contains(cgroup.to_str().unwrap()), "{table}");
    };
    check(&server);
    let out = server.doctor(None, &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let leaks: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        leaks.as_array().unwrap().iter().any(|l| l["kind"] == "bundle" && l["resource"] == bundle.to_str().unwrap()),
        "{leaks}"
    );
    server.stop();
    check(&server);

    std::fs::remove_dir(&bundle).unwrap();
    std::fs::remove_dir(&cgroup).unwrap();
    std::fs::remove_dir(cgroup.parent().unwrap()).unwrap();
    let _ = std::fs::remove_dir(&top);
    let out = server.doctor(None, &[]);
    assert!(out.status.success(), "doctor after cleanup: {}{}", text(&out.stdout), text(&out.stderr));
}

/// A filesystem stays mounted from its loop device for as long as it exists, used by a sandbox
/// or not: the doctor of a server that answers counts both as live, and the loop device of a
/// filesystem the server no longer has as a leak.
#[test]
fn doctor_counts_a_live_filesystem_as_live() {
    let (_dir, mut server, dev, _) = tenant_server();
    let dev = Some(dev.as_str());
    let f = server.json(dev, &["fs", "create", "--ns", "acme", "data", "--size", "16MiB"]);
    let fs_id = f["id"].as_str().unwrap().to_owned();
    let out = server.doctor(None, &[]);
    assert!(out.status.success(), "doctor with a live filesystem: {}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(text(&out.stdout), "no leaked host resources\n");
    let s = server.json(dev, &["sandbox", "create", "--ns", "acme", "--filesystem", &format!("{fs_id}:rw")]);
    let id = s["id"].as_str().unwrap().to_owned();
    let out = server.doctor(None, &[]);
    assert!(out.status.success(), "doctor with a sandbox on it: {}{}", text(&out.stdout), text(&out.stderr));
    server.ok(dev, &["sandbox", "delete", "--ns", "acme", &id]);
    server.ok(dev, &["fs", "delete", "--ns", "acme", &fs_id]);
    server.stop();
}
