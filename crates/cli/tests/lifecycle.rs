//! The server's picture of the host follows the host, and a server owns its host resources
//! alone: a sandbox whose init dies (killed from the host) or stops answering (stopped)
//! ends `failed` with a reason while the server runs, frees its host resources and its quota;
//! a second server on any of a server's data dir, state dir or cgroup prefix refuses to start
//! and touches nothing; a server killed with `kill -9` starts again at once and still watches
//! the sandboxes it adopts.
//!
//! Deadlines are generous (ten times the target and more): these machines are shared. The
//! bench reports the real times.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_api::{CreateSandbox, ExecRequest};
use bulkhead_client::Client;

mod common;

use common::host::{names, Host};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");
const NS: &str = "acme";

/// The host pid of a sandbox's init, from its bundle.
fn init_pid(state: &Path, sandbox: &str) -> i32 {
    std::fs::read_to_string(state.join("sandboxes").join(sandbox).join("pid")).unwrap().trim().parse().unwrap()
}

/// `kill -<sig> <pid>` from the host.
fn signal(pid: i32, sig: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Waits (at most `within`) until the sandbox is no longer active; returns its status and reason.
async fn ended(c: &Client, id: &str, within: Duration) -> (String, String) {
    let deadline = Instant::now() + within;
    loop {
        let s = c.get_sandbox(NS, id).await.unwrap();
        let status = s.status.clone();
        if status != "running" && status != "creating" {
            return (status, s.reason.unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "sandbox {id} still {status} after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn setup(host: &mut Host, names: &(PathBuf, String)) -> (String, String, Client) {
    let data = host.path("data");
    let (url, token) = host.serve_on(&data, names, &host.path("registry"), &[]).unwrap();
    let admin = Client::new(&url, token.clone());
    // One sandbox of one CPU fills the namespace's CPU quota.
    let quotas = bulkhead_api::Quotas {
        cpu_millis: 1000,
        memory_bytes: 4 << 30,
        disk_bytes: 1 << 30,
        max_sandboxes: 10,
        pids_per_sandbox: 256,
        max_sandbox_ttl_seconds: 3600,
        api_requests_per_second: 1000,
        max_concurrent_execs: 32,
    };
    admin
        .create_namespace(&bulkhead_api::CreateNamespace {
            name: NS.into(),
            isolation: None,
            placement: None,
            egress: None,
            quotas,
        })
        .await
        .unwrap();
    (url, token.unwrap(), admin)
}

fn one_cpu() -> CreateSandbox {
    CreateSandbox { cpu_millis: Some(1000), ..Default::default() }
}

fn cmd(argv: &[&str]) -> ExecRequest {
    ExecRequest { cmd: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

#[tokio::test]
async fn a_sandbox_whose_init_dies_ends_failed_with_its_reason_and_frees_what_it_held() {
    let mut host = Host::new();
    let names = names();
    let (_, _, c) = setup(&mut host, &names).await;
    let first = c.create_sandbox(NS, &one_cpu()).await.unwrap().id;
    // The quota is full.
    let refused = c.create_sandbox(NS, &one_cpu()).await.unwrap_err();
    assert!(refused.to_string().contains("quota"), "{refused}");

    // Killed from the host.
    let killed_at = Instant::now();
    signal(init_pid(&names.0, &first), "KILL");
    let (status, reason) = ended(&c, &first, Duration::from_secs(10)).await;
    eprintln!("init killed → sandbox failed in {:?}", killed_at.elapsed());
    assert_eq!((status.as_str(), reason.as_str()), ("failed", "init exited with signal 9"));
    let row = c.get_sandbox(NS, &first).await.unwrap();
    assert!(row.ended_at.is_some(), "metering stops at its end: {row:?}");
    // Its host resources are gone and its quota is free.
    assert!(!names.0.join("sandboxes").join(&first).exists(), "its bundle is removed");
    let cgroups = bulkhead_runtime::host::cgroups_of(Path::new("/sys/fs/cgroup"), &names.1);
    assert!(!cgroups.iter().any(|g| g.path.to_string_lossy().contains(&first)), "its cgroups are removed");
    let second = c.create_sandbox(NS, &one_cpu()).await.expect("the dead sandbox's quota is released").id;

    let r = c.exec(NS, &second, &cmd(&["echo", "next"])).await.unwrap();
    assert_eq!(r.stdout, "next\n");
    c.delete_sandbox(NS, &second).await.unwrap();

    // Deleting a sandbox is not a death: it stays `deleted` with no failure.
    let third = c.create_sandbox(NS, &one_cpu()).await.unwrap().id;
    c.delete_sandbox(NS, &third).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = c.get_sandbox(NS, &third).await.unwrap();
    assert_eq!(row.status, "deleted", "{row:?}");
}

#[tokio::test]
async fn a_supervisor_that_lives_but_does_not_answer_is_found_by_the_health_check() {
    let mut host = Host::new();
    let names = names();
    let (_, _, c) = setup(&mut host, &names).await;
    let id = c.create_sandbox(NS, &one_cpu()).await.unwrap().id;
    signal(init_pid(&names.0, &id), "STOP");
    let (status, reason) = ended(&c, &id, Duration::from_secs(90)).await;
    assert_eq!(status, "failed");
    assert!(reason.starts_with("supervisor not answering"), "{reason}");
    assert!(!names.0.join("sandboxes").join(&id).exists(), "a hung sandbox is torn down too");
    c.create_sandbox(NS, &one_cpu()).await.expect("its quota is released");
}

#[tokio::test]
async fn a_second_server_on_any_of_a_servers_host_resources_refuses_and_touches_nothing() {
    let mut host = Host::new();
    let names = names();
    let (url, token, c) = setup(&mut host, &names).await;
    let id = c.create_sandbox(NS, &CreateSandbox { cpu_millis: Some(250), ..Default::default() }).await.unwrap().id;
    let fs = c
        .create_filesystem(
            NS,
            &bulkhead_api::CreateFilesystem { name: "work".into(), size_bytes: 64 << 20, project: None },
        )
        .await
        .unwrap()
        .id;
    let cli = |args: &[&str], input: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new(BIN)
            .args(args)
            .env("BULKHEAD_URL", &url)
            .env("BULKHEAD_TOKEN", &token)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "bulkhead {args:?}");
        out.stdout
    };
    cli(&["fs", "put", "--ns", NS, &fs, "kept.txt"], b"still here");
    let registry = host.path("registry");
    let root = host.dir.path().to_owned();
    let other = |n: &str| root.join(n);

    // Its state dir, with a data dir and a cgroup prefix of its own.
    let (_, prefix_b) = self::names();
    let err_b = host.serve_on(&other("data-b"), &(names.0.clone(), prefix_b.clone()), &registry, &[]).unwrap_err();
    assert!(err_b.contains(&format!("state dir {}", names.0.display())) && err_b.contains("in use"), "{err_b}");
    // Its data dir.
    let names_c = self::names();
    let err_c = host.serve_on(&host.path("data"), &names_c, &registry, &[]).unwrap_err();
    assert!(err_c.contains("data dir") && err_c.contains("in use"), "{err_c}");
    // Its cgroup prefix, through a host registry that does not know it (the lock does).
    let (state_d, _) = self::names();
    let err = host.serve_on(&other("data-d"), &(state_d, names.1.clone()), &other("registry-d"), &[]).unwrap_err();
    assert!(err.contains("cgroup prefix") && err.contains("in use"), "{err}");
    for e in [&err_b, &err_c, &err] {
        assert_eq!(e.trim_end().lines().filter(|l| l.contains("error")).count(), 1, "one line: {e}");
    }

    // Doctor judges a state dir only against the store of the server that holds it.
    let out = std::process::Command::new(BIN)
        .args(["doctor", "--state-dir"])
        .arg(&names.0)
        .args(["--cgroup-prefix", &names.1, "--host-registry"])
        .arg(&registry)
        .env("BULKHEAD_DATA_DIR", other("data-b"))
        .env("BULKHEAD_URL", "http://127.0.0.1:9")
        .env_remove("BULKHEAD_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("belongs to the server with data dir"), "{err}");

    // The first server lost nothing.
    let r = c.exec(NS, &id, &cmd(&["echo", "alive"])).await.unwrap();
    assert_eq!(r.stdout, "alive\n");
    assert_eq!(cli(&["fs", "cat", "--ns", NS, &fs, "kept.txt"], b""), b"still here");

    // `kill -9` frees the locks with the process: the restart takes them at once, adopts the
    // sandbox and watches it as closely as one it started.
    host.crash();
    let (url2, _) = host.serve_on(&host.path("data"), &names, &registry, &[]).expect("a restart after kill -9 starts");
    assert_ne!(url, url2);
    let c = Client::new(&url2, Some(token));
    let r = c.exec(NS, &id, &cmd(&["echo", "adopted"])).await.unwrap();
    assert_eq!(r.stdout, "adopted\n");
    signal(init_pid(&names.0, &id), "KILL");
    let (status, reason) = ended(&c, &id, Duration::from_secs(10)).await;
    assert_eq!(status, "failed");
    assert!(reason.starts_with("init exited"), "{reason}");
}

/// A sandbox whose commands use its whole (small) CPU quota for longer than the health check
/// needs to declare a supervisor hung: its supervisor answers late, and the sandbox lives on.
#[tokio::test]
async fn a_sandbox_busy_at_a_small_cpu_quota_is_not_taken_for_hung() {
    let mut host = Host::new();
    let names = names();
    let (_, _, c) = setup(&mut host, &names).await;
    let id = c.create_sandbox(NS, &CreateSandbox { cpu_millis: Some(100), ..Default::default() }).await.unwrap().id;
    // 100 busy loops in a tenth of a CPU for 25 s (the exec's timeout ends them all), longer
    // than three missed pings would take.
    let burn = ExecRequest {
        cmd: ["sh", "-c", "i=0; while [ $i -lt 100 ]; do (while :; do :; done) & i=$((i+1)); done; wait"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        timeout_seconds: Some(25),
        ..Default::default()
    };
    let burned = c.exec(NS, &id, &burn).await;
    assert!(burned.is_ok(), "the busy exec ends by its timeout, not with its sandbox: {burned:?}");
    let row = c.get_sandbox(NS, &id).await.unwrap();
    assert_eq!(row.status, "running", "{row:?}");
    let r = c.exec(NS, &id, &cmd(&["echo", "still here"])).await.unwrap();
    assert_eq!(r.stdout, "still here\n");
}

/// A pid file that names another sandbox's supervisor (a pid reused after its own init died)
/// never makes a delete or a watch touch that other sandbox.
#[tokio::test]
async fn a_stale_pid_file_never_reaches_another_sandbox() {
    let mut host = Host::new();
    let names = names();
    let (_, _, c) = setup(&mut host, &names).await;
    let small = CreateSandbox { cpu_millis: Some(250), ..Default::default() };
    let (victim, other) =
        (c.create_sandbox(NS, &small).await.unwrap().id, c.create_sandbox(NS, &small).await.unwrap().id);
    let pid_file = |id: &str| names.0.join("sandboxes").join(id).join("pid");
    std::fs::copy(pid_file(&victim), pid_file(&other)).unwrap();
    c.delete_sandbox(NS, &other).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = c.get_sandbox(NS, &victim).await.unwrap();
    assert_eq!(row.status, "running", "{row:?}");
    let r = c.exec(NS, &victim, &cmd(&["echo", "untouched"])).await.unwrap();
    assert_eq!(r.stdout, "untouched\n");
}

/// A sandbox whose command was OOM-killed earlier, then whose init is killed from the host,
/// ended by that kill, not by the OOM killer: `oom` only for an OOM kill around the death.
#[tokio::test]
async fn an_earlier_oom_kill_does_not_name_a_later_death() {
    let mut host = Host::new();
    let names = names();
    let (_, _, c) = setup(&mut host, &names).await;
    let small = CreateSandbox { cpu_millis: Some(500), memory_bytes: Some(64 << 20), ..Default::default() };
    let id = c.create_sandbox(NS, &small).await.unwrap().id;
    // `tail` holds its whole line (no newline ever comes) until the OOM killer takes it.
    let hog = c.exec(NS, &id, &cmd(&["sh", "-c", "head -c 300000000 /dev/zero | tail -n 1 >/dev/null"])).await.unwrap();
    assert_ne!(hog.exit_code, 0, "the hog was killed: {hog:?}");
    let r = c.exec(NS, &id, &cmd(&["echo", "after the oom"])).await.unwrap();
    assert_eq!(r.stdout, "after the oom\n", "the supervisor outlived the OOM kill of a command");
    // The watcher reads the OOM count again every second: a kill well after that one is not it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    signal(init_pid(&names.0, &id), "KILL");
    let (status, reason) = ended(&c, &id, Duration::from_secs(10)).await;
    assert_eq!((status.as_str(), reason.as_str()), ("failed", "init exited with signal 9"));
}

/// An OCI runtime that dies mid-create (here: it leaves its container created, waiting to
/// start, and exits as if killed) makes the create a retryable 503, leaves nothing on the host,
/// and no zombie under the server, which is the subreaper of what the runtime leaves.
#[tokio::test]
async fn an_oci_runtime_killed_mid_create_leaves_no_zombie() {
    let mut host = Host::new();
    let names = names();
    let wrapper = host.path("runc-dies");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\n# `--root R run --detach ARGS...`: create only, then die as if killed.\n\
         if [ \"$3\" = run ]; then root=\"$2\"; shift 4; runc --root \"$root\" create \"$@\"; exit 137; fi\n\
         exec runc \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let data = host.path("data");
    let runtime_class = format!("container={}", wrapper.display());
    let store = common::process::store_args(&data);
    let extra: Vec<&str> = ["--network", "loopback-only", "--root", "host", "--runtime-class", &runtime_class]
        .into_iter()
        .chain(store.iter().map(String::as_str))
        .collect();
    let started = bulkhead_bench::server::Serve {
        bulkhead: Path::new(BIN),
        data_dir: &data,
        state_dir: &names.0,
        cgroup_prefix: &names.1,
        host_registry: Some(&host.path("registry")),
        extra: &extra,
    }
    .spawn()
    .unwrap();
    let server_pid = started.child.id();
    host.children.push(started.child);
    host.purge.push(names.clone());
    let c = Client::new(&started.url, started.first_token);
    let quotas = common::roomy_quotas();
    c.create_namespace(&bulkhead_api::CreateNamespace {
        name: NS.into(),
        isolation: None,
        placement: None,
        egress: None,
        quotas,
    })
    .await
    .unwrap();
    for _ in 0..3 {
        let e = c.create_sandbox(NS, &CreateSandbox { cpu_millis: Some(250), ..Default::default() }).await.unwrap_err();
        assert!(e.to_string().contains("503") || e.to_string().contains("unavailable"), "{e}");
    }
    let zombies: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let rest = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect::<Vec<_>>()).unwrap_or_default();
            rest.first() == Some(&"Z") && rest.get(1) == Some(&server_pid.to_string().as_str())
        })
        .collect();
    assert!(zombies.is_empty(), "zombies under the server: {zombies:?}");
    assert_eq!(std::fs::read_dir(names.0.join("sandboxes")).unwrap().count(), 0, "no bundle is left");
}
