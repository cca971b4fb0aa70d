//! A sandbox's life in brief: create, exec, files, delete, nothing left.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::Harness;
use serde_json::{json, Value};

#[tokio::test]
async fn create_exec_files_delete() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    let id = h.create_sandbox("alpha", &admin, json!({"env": {"GREETING": "hello"}})).await;
    let v = h.exec("alpha", &id, &admin, &["sh", "-c", "echo $GREETING; hostname; id -u"]).await;
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["stdout"], format!("hello\n{id}\n0\n"), "{v}");

    let path = format!("/v1/namespaces/alpha/sandboxes/{id}/files?path=/tmp/x/y.txt");
    let req = axum::http::Request::builder()
        .method(Method::PUT)
        .uri(&path)
        .header("authorization", format!("Bearer {admin}"))
        .body(axum::body::Body::from("file body"))
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&r.raw));
    let r = h.call(Method::GET, &path, Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.raw, b"file body");
    let (code, out, _) = h.sh("alpha", &id, &admin, "cat /tmp/x/y.txt").await;
    assert_eq!((code, out.as_str()), (0, "file body"));

    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{id}"), Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = h.call(Method::GET, &format!("/v1/namespaces/alpha/sandboxes/{id}"), Some(&admin), Value::Null).await;
    assert_eq!(r.body["status"], "deleted");
    assert!(!h.runtime.state_dir.join("sandboxes").join(&id).exists());
}

/// The same life on crun, the faster OCI runtime, as a runtime class: on a hybrid cgroup v1
/// host it runs with the unified hierarchy hidden from its view.
#[tokio::test]
async fn crun_runtime_class_runs_sandboxes() {
    let h = Harness::with_oci_runtime("crun").await;
    h.create_namespace("alpha").await;
    let admin = h.admin.clone();
    let id = h.create_sandbox("alpha", &admin, json!({"memory_bytes": 64 << 20})).await;
    let (code, out, err) =
        h.sh("alpha", &id, &admin, "hostname; id -u; cat /proc/self/uid_map; unshare -U true && echo NESTED").await;
    assert_eq!(code, 1, "{out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], id);
    assert_eq!(lines[1], "0");
    assert!(lines[2].split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() >= 1_000_000, "{out}");
    assert!(!out.contains("NESTED"));
    let stats = h.state.runtime.stats("alpha", &id).await.unwrap();
    assert!(stats.memory_bytes > 0, "crun placed the sandbox in its cgroup: {stats:?}");
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{id}"), Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(h.state.runtime.stats("alpha", &id).await.is_err());
    assert!(!h.runtime.state_dir.join("sandboxes").join(&id).exists());
}

/// The sandbox's CPU quota as its cgroup on the host holds it, in microseconds per 100 ms period.
fn cpu_quota_us(h: &Harness, ns: &str, id: &str) -> (i64, String) {
    let prefix = &h.runtime.cgroup_prefix;
    for v1 in ["cpu,cpuacct", "cpu"] {
        let dir = std::path::Path::new("/sys/fs/cgroup").join(v1).join(prefix).join(ns).join(id);
        if let Ok(q) = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")) {
            return (q.trim().parse().unwrap(), std::fs::read_to_string(dir.join("cpu.stat")).unwrap());
        }
    }
    let dir = std::path::Path::new("/sys/fs/cgroup").join(prefix).join(ns).join(id);
    let max = std::fs::read_to_string(dir.join("cpu.max")).unwrap();
    (max.split_whitespace().next().unwrap().parse().unwrap(), std::fs::read_to_string(dir.join("cpu.stat")).unwrap())
}

#[tokio::test]
async fn a_small_sandbox_starts_unthrottled_and_then_holds_its_own_cpu_quota() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    for _ in 0..3 {
        let id = h.create_sandbox("alpha", &admin, json!({"cpu_millis": 100, "memory_bytes": 64 << 20})).await;
        // By the create's answer the quota is the sandbox's own: 100 millicores.
        let (quota, _) = cpu_quota_us(&h, "alpha", &id);
        assert_eq!(quota, 10_000, "the sandbox's quota after its create");
        // Its start (the supervisor's, at up to a core) left it nothing to wait for: the first
        // command finds the period's quota whole.
        let v = h.exec("alpha", &id, &admin, &["echo", "ready"]).await;
        assert_eq!(v["stdout"], "ready\n", "{v}");
        let (_, stat) = cpu_quota_us(&h, "alpha", &id);
        let throttled: u64 =
            stat.lines().find_map(|l| l.strip_prefix("nr_throttled ")).map_or(0, |v| v.trim().parse().unwrap());
        assert_eq!(throttled, 0, "the sandbox was throttled by its first command: {stat}");
        let r =
            h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{id}"), Some(&admin), Value::Null).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    }
}
