//! The compute boundary, read back from the kernel: a fork bomb stops at the pids limit, a
//! memory hog dies inside its own cgroup, CPU stays within the quota, and the neighbour keeps
//! answering throughout. Admission control refuses what would pass a namespace quota.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::{assert_envelope, Harness};
use serde_json::{json, Value};

async fn namespace_with(h: &Harness, name: &str, quotas: Value) {
    let mut body = common::namespace_body(name);
    for (k, v) in quotas.as_object().unwrap() {
        body["quotas"][k] = v.clone();
    }
    let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn fork_bomb_stops_at_the_pids_limit_and_the_neighbour_answers() {
    let h = Harness::new().await;
    namespace_with(&h, "alpha", json!({"pids_per_sandbox": 48})).await;
    h.create_namespace("beta").await;
    let admin = h.admin.clone();
    let a = h.create_sandbox("alpha", &admin, json!({})).await;
    let b = h.create_sandbox("beta", &admin, json!({})).await;
    // A shell fork bomb, bounded by the exec timeout, while B is asked to answer.
    let bomb = h.spawn_exec(
        "alpha",
        &a,
        &admin,
        json!({"cmd": ["sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 3"], "timeout_seconds": 4}),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = h.state.runtime.stats("alpha", &a).await.unwrap();
    let v = h.exec("beta", &b, &admin, &["echo", "alive"]).await;
    assert_eq!(v["stdout"], "alive\n", "B must answer while A's fork bomb runs");
    // The bomb's own exec ends with its result, or with a conflict when the supervisor could not
    // even get a thread for it (the sandbox at its limit); never with a server error.
    let status = bomb.await.unwrap();
    assert!(status == StatusCode::OK || status == StatusCode::CONFLICT, "{status}");
    let after = h.state.runtime.stats("alpha", &a).await.unwrap();
    assert!(during.pids <= 48, "{} processes past a limit of 48", during.pids);
    assert!(after.pids_limit_hits > 0, "the kernel never refused a fork: the bomb did not reach the limit ({after:?})");
    let v = h.exec("beta", &b, &admin, &["echo", "alive"]).await;
    assert_eq!(v["stdout"], "alive\n");
    // A itself answers cleanly: a result (its own processes may still hold every pid) or a
    // conflict, never a server error.
    let r = h
        .call(Method::POST, &format!("/v1/namespaces/alpha/sandboxes/{a}/exec"), Some(&admin), json!({"cmd": ["true"]}))
        .await;
    assert!(r.status == StatusCode::OK || r.status == StatusCode::CONFLICT, "{} {}", r.status, r.body);
}

#[tokio::test]
async fn memory_hog_is_killed_inside_its_own_cgroup() {
    let h = Harness::with_namespaces(&["alpha", "beta"]).await;
    let admin = h.admin.clone();
    let a = h.create_sandbox("alpha", &admin, json!({"memory_bytes": 64 << 20})).await;
    let b = h.create_sandbox("beta", &admin, json!({})).await;
    let r = h.exec_with("alpha", &a, &admin, json!({"cmd": ["python3", "-c", "x = bytearray(512 * 1024 * 1024); print('survived')"], "timeout_seconds": 30})).await;
    // Either the hog got SIGKILL (the supervisor reports it) or the sandbox's init went with
    // it (a conflict); it never survives, and it never takes the server or B down.
    if r.status == StatusCode::OK {
        assert_ne!(r.body["stdout"], "survived\n", "{}", r.body);
        assert_eq!(r.body["signal"], 9, "{}", r.body);
    } else {
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    }
    let stats = h.state.runtime.stats("alpha", &a).await.unwrap();
    assert!(stats.oom_kills >= 1, "the kernel OOM-killed nothing in A's cgroup: {stats:?}");
    let v = h.exec("beta", &b, &admin, &["echo", "alive"]).await;
    assert_eq!(v["stdout"], "alive\n");
    let r = h.call(Method::GET, "/healthz", None, Value::Null).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn cpu_use_stays_within_the_quota() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    let a = h.create_sandbox("alpha", &admin, json!({"cpu_millis": 200})).await;
    let before = h.state.runtime.stats("alpha", &a).await.unwrap().cpu_usage_ns;
    let started = Instant::now();
    // Two busy loops for two seconds: unthrottled they would burn up to four cpu-seconds.
    let r = h.exec_with("alpha", &a, &admin, json!({"cmd": ["sh", "-c", "(while :; do :; done) & (while :; do :; done) & sleep 2; kill %1 %2"], "timeout_seconds": 10})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let wall = started.elapsed().as_secs_f64();
    let used = (h.state.runtime.stats("alpha", &a).await.unwrap().cpu_usage_ns - before) as f64 / 1e9;
    // 0.2 cores over the wall time, with generous room for scheduling granularity.
    let allowed = 0.2 * wall * 1.6 + 0.1;
    assert!(used > 0.05, "the loops did not run: {used:.3}s");
    assert!(
        used <= allowed,
        "A used {used:.3} cpu-seconds in {wall:.2}s with a quota of 0.2 cores (allowed {allowed:.3})"
    );
}

#[tokio::test]
async fn admission_control_names_the_quota_limit_and_use() {
    let h = Harness::new().await;
    namespace_with(
        &h,
        "alpha",
        json!({"max_sandboxes": 2, "cpu_millis": 1000, "memory_bytes": 256 << 20, "max_sandbox_ttl_seconds": 60}),
    )
    .await;
    let admin = h.admin.clone();
    let create = |body: Value| h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", Some(&admin), body);
    let r = create(json!({"cpu_millis": 2000})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_envelope(&r, "quota_exceeded");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("cpu_millis"), "{}", r.body);
    let r = create(json!({"ttl_seconds": 61})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("max_sandbox_ttl_seconds"), "{}", r.body);

    h.create_sandbox("alpha", &admin, json!({"cpu_millis": 600, "memory_bytes": 64 << 20})).await;
    let r = create(json!({"cpu_millis": 600, "memory_bytes": 64 << 20})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let m = r.body["error"]["message"].as_str().unwrap();
    assert!(m.contains("cpu_millis") && m.contains("limit 1000") && m.contains("in use 600"), "{m}");
    let r = create(json!({"cpu_millis": 100, "memory_bytes": 200 << 20})).await;
    assert!(r.body["error"]["message"].as_str().unwrap().contains("memory_bytes"), "{}", r.body);
    h.create_sandbox("alpha", &admin, json!({"cpu_millis": 100, "memory_bytes": 64 << 20})).await;
    let r = create(json!({"cpu_millis": 100, "memory_bytes": 16 << 20})).await;
    let m = r.body["error"]["message"].as_str().unwrap();
    assert!(m.contains("max_sandboxes") && m.contains("limit 2") && m.contains("in use 2"), "{m}");
    // Refused creates left nothing: two sandboxes, both running.
    let r = h.call(Method::GET, "/v1/namespaces/alpha/sandboxes", Some(&admin), Value::Null).await;
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|s| s["status"] == "running"));
    assert_eq!(std::fs::read_dir(h.runtime.state_dir.join("sandboxes")).unwrap().count(), 2);
}

#[tokio::test]
async fn ttl_expiry_ends_the_sandbox_and_frees_the_host() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    let id = h.create_sandbox("alpha", &admin, json!({"ttl_seconds": 1})).await;
    let bundle = h.runtime.state_dir.join("sandboxes").join(&id);
    assert!(bundle.exists());
    let deadline = Instant::now() + Duration::from_secs(20);
    let sandbox = loop {
        let r = h.call(Method::GET, &format!("/v1/namespaces/alpha/sandboxes/{id}"), Some(&admin), Value::Null).await;
        if r.body["status"] != "running" {
            break r.body;
        }
        assert!(Instant::now() < deadline, "the sandbox outlived its TTL: {}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(sandbox["status"], "stopped", "{sandbox}");
    assert_eq!(sandbox["reason"], "ttl_expired", "{sandbox}");
    assert!(!bundle.exists(), "the bundle outlived the sandbox");
    let r = h.exec_with("alpha", &id, &admin, json!({"cmd": ["true"]})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(h.state.runtime.stats("alpha", &id).await.is_err(), "its cgroup outlived it");
}

#[tokio::test]
async fn namespace_delete_tears_down_its_sandboxes() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    let a1 = h.create_sandbox("alpha", &admin, json!({})).await;
    let a2 = h.create_sandbox("alpha", &admin, json!({})).await;
    let r = h.call(Method::DELETE, "/v1/namespaces/alpha", Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    for id in [&a1, &a2] {
        assert!(!h.runtime.state_dir.join("sandboxes").join(id).exists());
    }
    let cgroups =
        bulkhead_runtime::cgroup::Cgroups::detect(std::path::Path::new("/sys/fs/cgroup"), &h.runtime.cgroup_prefix)
            .unwrap();
    assert!(cgroups.existing().is_empty(), "cgroups left: {:?}", cgroups.existing());
}

#[tokio::test]
async fn a_sandbox_deleted_in_the_middle_of_a_fork_bomb_is_gone_at_once() {
    let h = Harness::new().await;
    namespace_with(&h, "alpha", json!({"pids_per_sandbox": 256})).await;
    let admin = h.admin.clone();
    let id = h.create_sandbox("alpha", &admin, json!({"memory_bytes": 64 << 20})).await;
    // Python processes that fork for ever: the sandbox sits at its pids limit and under memory
    // pressure, with new processes every instant.
    let script = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n";
    let bomb = h.spawn_exec("alpha", &id, &admin, json!({"cmd": ["python3", "-c", script], "timeout_seconds": 60}));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let during = h.state.runtime.stats("alpha", &id).await.unwrap();
    assert!(during.pids > 100, "the bomb did not take off: {during:?}");
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{id}"), Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // The bomb's exec ends (the sandbox is gone), never with a server error.
    let status = tokio::time::timeout(Duration::from_secs(30), bomb).await.unwrap().unwrap();
    assert!(!status.is_server_error(), "{status}");
    assert!(h.state.runtime.stats("alpha", &id).await.is_err(), "its cgroup outlived it");
    assert!(!h.runtime.state_dir.join("sandboxes").join(&id).exists(), "its bundle outlived it");
    let left =
        bulkhead_runtime::cgroup::Cgroups::detect(std::path::Path::new("/sys/fs/cgroup"), &h.runtime.cgroup_prefix)
            .unwrap()
            .sandboxes();
    assert!(!left.iter().any(|(_, s)| *s == id), "{left:?}");
}
