//! Two replicas on one PostgreSQL store, each a real `bulkhead serve` with its own data dir,
//! state dir and cgroup prefix: one admin token and one token key for both; a command, a file
//! and a WebSocket attachment sent to the replica that does not run the sandbox are served by
//! the one that does, as are a filesystem's files and a sandbox that mounts it; a key revoked through one fails on the other at once (well before its
//! cache would have expired); and after a `kill -9` of one, the other declares it lost, its
//! sandboxes end `failed`, and the survivor goes on serving. The killed replica, started again,
//! frees what of its lost sandboxes was left on its host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_api::{CreateProcess, ExecRequest};
use bulkhead_client::AttachEvent;
use bulkhead_store::postgres::testing::TestPostgres;
use common::process::{runtime_names, Server};

/// Polls `check` every 200 ms until it holds or `within` passes (then panics with `what`).
fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sandbox_cgroup_exists(server: &Server, ns: &str, id: &str) -> bool {
    ["memory", "pids", "unified"]
        .iter()
        .any(|c| Path::new("/sys/fs/cgroup").join(c).join(&server.cgroup_prefix).join(ns).join(id).exists())
}

/// Mounts on the host whose mount point names `id`.
fn mounts_naming(id: &str) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(id)).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_serve_each_others_sandboxes_share_revocations_and_survive_a_kill() {
    let pg = TestPostgres::start().await;
    let url = pg.database().await;
    let dir = common::tempdir();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let lease = ["--store", &url, "--node-lease", "3s"];
    let mut a = Server::start_with_args(&data_a, runtime_names(), &lease);
    let admin = a.first_token.clone().expect("the first replica makes the store's admin token");
    // The same master key on every replica (as BULKHEAD_MASTER_KEY would give it).
    std::fs::create_dir_all(&data_b).unwrap();
    std::fs::copy(data_a.join("master.key"), data_b.join("master.key")).unwrap();
    let b = Server::start_with_args(&data_b, runtime_names(), &lease);
    assert!(b.first_token.is_none(), "one admin token per store");
    assert!(!data_b.join("admin.token").exists());
    let admin = Some(admin.as_str());

    // One store: what one replica makes, the other knows; the admin token works on both.
    a.ok(admin, &["namespace", "create", "acme", "--cpu", "8", "--memory", "8GiB"]);
    assert_eq!(b.json(admin, &["namespace", "get", "acme"])["name"], "acme");
    let dev = a.json(admin, &["key", "create", "--ns", "acme", "dev", "--role", "developer"]);
    let dev_token = dev["token"].as_str().unwrap().to_owned();
    let dev = Some(dev_token.as_str());

    // A sandbox on each replica; each replica serves both.
    let on_a = a.json(dev, &["sandbox", "create", "--ns", "acme"])["id"].as_str().unwrap().to_owned();
    let on_b = b.json(dev, &["sandbox", "create", "--ns", "acme"])["id"].as_str().unwrap().to_owned();
    assert!(sandbox_cgroup_exists(&a, "acme", &on_a) && !sandbox_cgroup_exists(&b, "acme", &on_a));
    assert!(sandbox_cgroup_exists(&b, "acme", &on_b) && !sandbox_cgroup_exists(&a, "acme", &on_b));
    for (via, sbx) in [(&a, &on_a), (&b, &on_a), (&a, &on_b), (&b, &on_b)] {
        let out = via.ok(dev, &["exec", "--ns", "acme", sbx, "--", "sh", "-c", "echo $((6 * 7)) from $(hostname)"]);
        assert_eq!(out.trim(), format!("42 from {sbx}"));
    }
    // Files and a streamed stdin through the replica that does not run the sandbox.
    let file = dir.path().join("note.txt");
    std::fs::write(&file, "across replicas\n").unwrap();
    b.ok(dev, &["cp", "--ns", "acme", file.to_str().unwrap(), &format!("{on_a}:/tmp/note.txt")]);
    let read = a.ok(dev, &["exec", "--ns", "acme", &on_a, "--", "cat", "/tmp/note.txt"]);
    assert_eq!(read, "across replicas\n");
    // A refusal through the other replica is the holder's own answer, envelope and all.
    let back = dir.path().join("back.txt");
    let missing = b.fails(dev, &["cp", "--ns", "acme", &format!("{on_a}:/tmp/absent.txt"), back.to_str().unwrap()]);
    assert!(missing.contains("not_found") && missing.contains("absent.txt"), "{missing}");
    // A WebSocket attachment through the other replica: stdin in, output out, the exit.
    let client = bulkhead_client::Client::new(&b.url, dev.map(str::to_owned));
    let cat =
        CreateProcess { cmd: vec!["sh".into(), "-c".into(), "read line; echo got $line".into()], ..Default::default() };
    let p = client.start_process("acme", &on_a, &cat).await.expect("start through the other replica");
    let (mut writer, mut reader) = client.attach_process("acme", &on_a, &p.id).await.expect("attach").split();
    writer.stdin(b"hello\n".to_vec()).await.expect("stdin");
    let mut seen = Vec::new();
    let exit = loop {
        match reader.next().await.expect("attachment") {
            Some(AttachEvent::Output(d)) => seen.extend(d),
            Some(AttachEvent::Exit { exit_code, .. }) => break exit_code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!((exit, String::from_utf8_lossy(&seen).into_owned()), (0, "got hello\n".to_owned()));
    let exec = client.exec("acme", &on_a, &ExecRequest { cmd: vec!["true".into()], ..Default::default() }).await;
    assert_eq!(exec.expect("exec through the client").exit_code, 0);

    // A filesystem's image is in the data dir of the replica that made it (A): its files, and a
    // sandbox that mounts it, are served through B too, on A.
    let fs =
        a.json(dev, &["fs", "create", "--ns", "acme", "work", "--size", "16MiB"])["id"].as_str().unwrap().to_owned();
    b.ok(dev, &["fs", "put", "--ns", "acme", &fs, "todo.txt", file.to_str().unwrap()]);
    assert_eq!(b.ok(dev, &["fs", "cat", "--ns", "acme", &fs, "todo.txt"]), "across replicas\n");
    let mounted =
        b.json(dev, &["sandbox", "create", "--ns", "acme", "--filesystem", &fs])["id"].as_str().unwrap().to_owned();
    assert!(sandbox_cgroup_exists(&a, "acme", &mounted), "a sandbox goes where its filesystem is");
    let cat = b.ok(dev, &["exec", "--ns", "acme", &mounted, "--", "cat", "/workspace/todo.txt"]);
    assert_eq!(cat, "across replicas\n");
    b.ok(dev, &["sandbox", "delete", "--ns", "acme", &mounted]);
    assert!(!sandbox_cgroup_exists(&a, "acme", &mounted));

    // A private image's layers are in the layer store of the replica that imported it: creates
    // through it boot it, creates through the other are refused, plainly.
    let archive = dir.path().join("tools.tar");
    // A layer of this test's own (no other test's public image has it).
    let own = common::images::Layer::new().file("etc/made-by", dir.path().to_str().unwrap().as_bytes(), 0o644);
    common::images::write_layout_tar(&archive, &[&common::images::busybox_image().layer(&own)]);
    a.json(dev, &["image", "import", "tools", archive.to_str().unwrap(), "--ns", "acme"]);
    let refused = b.fails(dev, &["sandbox", "create", "--ns", "acme", "--image", "tools"]);
    assert!(refused.contains("conflict") && refused.contains("another replica"), "{refused}");
    let booted =
        a.json(dev, &["sandbox", "create", "--ns", "acme", "--image", "tools"])["id"].as_str().unwrap().to_owned();
    a.ok(dev, &["sandbox", "delete", "--ns", "acme", &booted]);

    // A key revoked through one replica fails on the other at once: well within the 30 s its
    // cache would otherwise trust it.
    let doomed = a.json(admin, &["key", "create", "--ns", "acme", "doomed", "--role", "viewer"]);
    let (doomed_id, doomed) = (doomed["id"].as_str().unwrap().to_owned(), doomed["token"].as_str().unwrap().to_owned());
    b.ok(Some(&doomed), &["sandbox", "list", "--ns", "acme"]);
    let revoked_at = Instant::now();
    a.ok(admin, &["key", "revoke", "--ns", "acme", &doomed_id]);
    eventually(Duration::from_secs(20), "the revoked key fails on the other replica", || {
        !b.cli(Some(&doomed), &["sandbox", "list", "--ns", "acme"]).status.success()
    });
    eprintln!("revocation seen by the other replica after {:?}", revoked_at.elapsed());

    // An escaped path goes where its plain twin goes; a create's body over the bound is a 413
    // from the replica that reads it.
    let http = reqwest::Client::new();
    let escaped = format!("{}/v1/namespaces/acm%65/sandboxes/{}/exec", b.url, on_a.replacen('_', "%5F", 1));
    let answer = http
        .post(&escaped)
        .bearer_auth(&dev_token)
        .json(&serde_json::json!({"cmd": ["hostname"]}))
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!((status, body["stdout"].as_str().map(str::trim)), (200, Some(on_a.as_str())), "{body}");
    let big = vec![b' '; 2 << 20];
    let answer = http
        .post(format!("{}/v1/namespaces/acme/sandboxes", b.url))
        .bearer_auth(&dev_token)
        .body(big)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("payload_too_large")), "{body}");

    // A namespace deleted through one replica: the other frees its sandboxes there, mounts and
    // all.
    a.ok(admin, &["namespace", "create", "gone", "--cpu", "1", "--memory", "1GiB"]);
    let gone = b.json(admin, &["sandbox", "create", "--ns", "gone"])["id"].as_str().unwrap().to_owned();
    assert!(mounts_naming(&gone) > 0 && sandbox_cgroup_exists(&b, "gone", &gone));
    a.ok(admin, &["namespace", "delete", "gone"]);
    eventually(Duration::from_secs(30), "the holder frees a sandbox of a namespace deleted through the other", || {
        mounts_naming(&gone) == 0
            && !sandbox_cgroup_exists(&b, "gone", &gone)
            && !b.state_dir.join("sandboxes").join(&gone).exists()
    });

    // A replica with sandbox networks is refused beside them: replicas on one host share the
    // store's network names.
    let data_c = dir.path().join("c");
    std::fs::create_dir_all(&data_c).unwrap();
    std::fs::copy(data_a.join("master.key"), data_c.join("master.key")).unwrap();
    let registry = data_a.join("host-registry");
    let networked = ["--store", url.as_str(), "--network", "isolated"];
    let names_c = runtime_names();
    let refused = Server::spawn(&data_c, names_c.clone(), &registry, &networked).map(|_| ()).unwrap_err();
    let _ = bulkhead_runtime::oci::purge(&names_c.0, Path::new("/sys/fs/cgroup"), &names_c.1);
    assert!(refused.contains("replicas on one host share the store's network names"), "{refused}");

    // kill -9 of replica A: B declares it lost once its lease lapses, and A's sandbox ends.
    let pid = a.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    eventually(Duration::from_secs(60), "the survivor declares the killed replica's sandbox lost", || {
        let out = b.cli(dev, &["sandbox", "get", "--ns", "acme", &on_a, "--json"]);
        let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        row["status"] == "failed" && row["reason"].as_str().is_some_and(|r| r.starts_with("lost:"))
    });
    // The survivor goes on: its own sandbox, a new one, and the lost one answered for.
    let out = b.ok(dev, &["exec", "--ns", "acme", &on_b, "--", "echo", "still here"]);
    assert_eq!(out.trim(), "still here");
    let fresh = b.json(dev, &["sandbox", "create", "--ns", "acme"])["id"].as_str().unwrap().to_owned();
    assert_eq!(b.ok(dev, &["exec", "--ns", "acme", &fresh, "--", "echo", "new"]).trim(), "new");
    let refused = b.fails(dev, &["exec", "--ns", "acme", &on_a, "--", "true"]);
    assert!(refused.contains("not running") || refused.contains("failed") || refused.contains("conflict"), "{refused}");

    // Replica A again on its data dir: its lost sandbox is freed from its host.
    assert!(sandbox_cgroup_exists(&a, "acme", &on_a), "a kill -9 leaves the sandbox running");
    a.reap();
    let again = Server::start_with_args(&data_a, (a.state_dir.clone(), a.cgroup_prefix.clone()), &lease);
    assert!(!sandbox_cgroup_exists(&again, "acme", &on_a), "the restarted replica freed its lost sandbox");
    assert_eq!(again.ok(dev, &["exec", "--ns", "acme", &fresh, "--", "echo", "back"]).trim(), "back");
    drop(again);
    drop(a);
    drop(b);
    drop(pg);
}
