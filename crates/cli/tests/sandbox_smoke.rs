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
