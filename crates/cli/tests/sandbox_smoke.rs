//! A sandbox's life in brief: create, exec, files, delete, nothing left.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::Harness;
use serde_json::{json, Value};

#[tokio::test]
async fn create_exec_files_delete() {
    let h = Harness::new().await;
    h.create_namespace("alpha").await;
    let admin = h.admin.clone();
    let t = std::time::Instant::now();
    let id = h.create_sandbox("alpha", &admin, json!({"env": {"GREETING": "hello"}})).await;
    eprintln!("create {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let v = h.exec("alpha", &id, &admin, &["sh", "-c", "echo $GREETING; hostname; id -u"]).await;
    eprintln!("exec {:?}", t.elapsed());
    for _ in 0..3 {
        let t = std::time::Instant::now();
        h.exec("alpha", &id, &admin, &["true"]).await;
        eprintln!("exec true {:?}", t.elapsed());
        let t = std::time::Instant::now();
        h.exec("alpha", &id, &admin, &["sh", "-c", "echo hi"]).await;
        eprintln!("exec sh {:?}", t.elapsed());
    }
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

    let t = std::time::Instant::now();
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{id}"), Some(&admin), Value::Null).await;
    eprintln!("delete {:?}", t.elapsed());
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = h.call(Method::GET, &format!("/v1/namespaces/alpha/sandboxes/{id}"), Some(&admin), Value::Null).await;
    assert_eq!(r.body["status"], "deleted");
    assert!(!h.runtime.state_dir.join("sandboxes").join(&id).exists());
}
