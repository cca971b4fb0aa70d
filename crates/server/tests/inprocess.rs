//! The API in-process over the in-memory runtime and filesystem storage: no root, no cgroups,
//! no loop devices. These run beside the real-kernel tests of `crates/cli/tests`, never instead
//! of them: they check what the server does (routing, authorization, quotas, the services, the
//! error envelope), the others check what the kernel does.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bulkhead_runtime::fake::{FakeRuntime, FakeStorage};
use bulkhead_server::bootstrap::{self, Backends};
use bulkhead_server::{app, ServerConfig};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Harness {
    _dir: tempfile::TempDir,
    app: axum::Router,
    admin: String,
    runtime: FakeRuntime,
    storage: FakeStorage,
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    raw: Vec<u8>,
}

impl Harness {
    async fn new() -> Harness {
        let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().expect("tempdir");
        let mut config = ServerConfig::new(dir.path().join("data"), SocketAddr::from(([127, 0, 0, 1], 0)));
        config.runtime.state_dir = dir.path().join("state");
        // A cgroup prefix of its own: a server holds its prefix's lock for itself alone.
        config.runtime.cgroup_prefix = format!("bulkhead-test-fake-{}", bulkhead_core::ids::new_id(""));
        config.host_registry = dir.path().join("host-registry");
        let (runtime, storage) = (FakeRuntime::new(), FakeStorage::new());
        let (r, s) = (runtime.clone(), storage.clone());
        let started =
            bootstrap::start_with(config, move |_, _| Ok(Backends { runtime: Arc::new(r), storage: Arc::new(s) }))
                .await
                .expect("bootstrap over the fakes");
        let admin = started.new_admin_token.expect("first start makes an admin token");
        Harness { _dir: dir, app: app(started.state), admin, runtime, storage }
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        let (status, headers) = (resp.status(), resp.headers().clone());
        let raw = resp.into_body().collect().await.expect("body").to_bytes().to_vec();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Reply { status, headers, body, raw }
    }

    async fn call(&self, method: Method, path: &str, token: &str, body: Value) -> Reply {
        let b = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {token}"));
        let req = if body.is_null() {
            b.body(Body::empty())
        } else {
            b.header("content-type", "application/json").body(Body::from(body.to_string()))
        };
        self.send(req.expect("request")).await
    }

    async fn raw(&self, method: Method, path: &str, token: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        let mut b = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {token}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Body::from(body)).expect("request")).await
    }

    async fn namespace(&self, name: &str, disk_bytes: u64) {
        let body = json!({"name": name, "quotas": {"cpu_millis": 2000, "memory_bytes": 2147483648u64,
            "disk_bytes": disk_bytes, "max_sandboxes": 2, "pids_per_sandbox": 128, "max_sandbox_ttl_seconds": 3600}});
        let r = self.call(Method::POST, "/v1/namespaces", &self.admin, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }

    /// Creates filesystem `w` of `size_bytes` in namespace `ns`; its id.
    async fn filesystem(&self, ns: &str, size_bytes: u64) -> String {
        let body = json!({"name": "w", "size_bytes": size_bytes});
        let r = self.call(Method::POST, &format!("/v1/namespaces/{ns}/filesystems"), &self.admin, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["id"].as_str().expect("id").to_owned()
    }
}

fn assert_error(r: &Reply, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.raw));
    assert_eq!(r.body["error"]["code"], code, "{}", r.body);
    assert!(r.body["error"]["request_id"].as_str().is_some_and(|s| !s.is_empty()), "{}", r.body);
}

#[tokio::test]
async fn sandboxes_are_created_run_commands_and_are_deleted() {
    let h = Harness::new().await;
    h.namespace("alpha", 1 << 30).await;
    let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", &h.admin, json!({"env": {"A": "1"}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    assert_eq!(r.body["status"], "running");
    let spec = h.runtime.sandbox(&id).expect("the runtime has the sandbox").spec;
    assert!(spec.env.contains(&("A".to_owned(), "1".to_owned())));
    assert!(spec.run_files.iter().any(|f| f.dir == "bulkhead" && f.name == "token"), "a workload token");
    assert!(h.runtime.namespace_limits("alpha").is_some(), "the namespace's cgroup was made first");

    let exec = format!("/v1/namespaces/alpha/sandboxes/{id}/exec");
    let r = h.call(Method::POST, &exec, &h.admin, json!({"cmd": ["echo", "hello", "world"]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["stdout"], "hello world\n");
    assert_eq!(r.body["exit_code"], 0);
    let r = h.call(Method::POST, &exec, &h.admin, json!({"cmd": ["sh", "-c", "exit 3"]})).await;
    assert_eq!(r.body["exit_code"], 3, "{}", r.body);
    let r = h.call(Method::POST, &exec, &h.admin, json!({"cmd": []})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    // What the commands printed is in the namespace's log, and they were metered.
    let r = h.call(Method::GET, "/v1/namespaces/alpha/logs", &h.admin, Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["records"][0]["sandbox"], id.as_str(), "{}", r.body);
    assert_eq!(r.body["records"][0]["data"], "hello world\n", "{}", r.body);
    let r = h.call(Method::GET, "/v1/namespaces/alpha/usage?granularity=minute", &h.admin, Value::Null).await;
    assert_eq!(r.body["totals"]["exec_count"], 2, "{}", r.body);
    let r = h.raw(Method::GET, "/v1/namespaces/alpha/metrics", &h.admin, &[], Vec::new()).await;
    let text = String::from_utf8_lossy(&r.raw);
    assert!(text.contains("bulkhead_sandboxes_running{namespace=\"alpha\"} 1"), "{text}");

    // Files inside the sandbox.
    let files = format!("/v1/namespaces/alpha/sandboxes/{id}/files?path=/tmp/x.txt");
    let r = h.raw(Method::PUT, &files, &h.admin, &[], b"inside".to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = h.raw(Method::GET, &files, &h.admin, &[], Vec::new()).await;
    assert_eq!((r.status, r.raw.as_slice()), (StatusCode::OK, &b"inside"[..]));
    let r = h.raw(Method::GET, &files.replace("x.txt", "none"), &h.admin, &[], Vec::new()).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");

    // Past the namespace's quota of two sandboxes.
    let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", &h.admin, json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", &h.admin, json!({})).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded");

    let path = format!("/v1/namespaces/alpha/sandboxes/{id}");
    let r = h.call(Method::DELETE, &path, &h.admin, Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(h.runtime.sandbox(&id).is_none(), "the runtime's sandbox is gone");
    let r = h.call(Method::GET, &path, &h.admin, Value::Null).await;
    assert_eq!(r.body["status"], "deleted", "{}", r.body);
    let r = h.call(Method::POST, &exec, &h.admin, json!({"cmd": ["true"]})).await;
    assert_error(&r, StatusCode::CONFLICT, "conflict");
}

#[tokio::test]
async fn filesystem_files_are_conditional_and_bounded_by_its_size() {
    let h = Harness::new().await;
    h.namespace("alpha", 64 << 20).await;
    let fs = h.filesystem("alpha", 16 << 20).await;
    // Past the namespace's disk_bytes.
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/alpha/filesystems",
            &h.admin,
            json!({"name": "big", "size_bytes": 60 << 20}),
        )
        .await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded");

    let file = format!("/v1/namespaces/alpha/filesystems/{fs}/files?path=src/a.txt");
    let r = h.raw(Method::PUT, &file, &h.admin, &[("if-none-match", "*")], b"one".to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let etag = r.headers["etag"].to_str().expect("etag").to_owned();
    assert_eq!(h.storage.file(&fs, "src/a.txt").as_deref(), Some(&b"one"[..]));
    let r = h.raw(Method::GET, &file, &h.admin, &[], Vec::new()).await;
    assert_eq!((r.status, r.raw.as_slice()), (StatusCode::OK, &b"one"[..]));
    assert_eq!(r.headers["etag"].to_str().ok(), Some(etag.as_str()));
    let r = h.raw(Method::PUT, &file, &h.admin, &[("if-none-match", "*")], b"two".to_vec()).await;
    assert_error(&r, StatusCode::PRECONDITION_FAILED, "conflict");
    let r = h.raw(Method::PUT, &file, &h.admin, &[("if-match", "\"stale\"")], b"two".to_vec()).await;
    assert_error(&r, StatusCode::PRECONDITION_FAILED, "conflict");
    let r = h.raw(Method::PUT, &file, &h.admin, &[("if-match", &etag)], b"two".to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

    let list = format!("/v1/namespaces/alpha/filesystems/{fs}/files?path=src&list=true");
    let r = h.raw(Method::GET, &list, &h.admin, &[], Vec::new()).await;
    assert_eq!(r.body["items"][0]["name"], "a.txt", "{}", r.body);
    assert_eq!(r.body["items"][0]["type"], "file");
    let r = h.raw(Method::GET, &file.replace("src/a.txt", "/etc/passwd"), &h.admin, &[], Vec::new()).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let r = h.raw(Method::GET, &file.replace("src/a.txt", "src/none"), &h.admin, &[], Vec::new()).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = h.raw(Method::DELETE, &file.replace("src/a.txt", "src"), &h.admin, &[], Vec::new()).await;
    assert_error(&r, StatusCode::CONFLICT, "conflict");

    // The filesystem is full at its size: 429 quota_exceeded, and the old content stays.
    let big = vec![7u8; 9 << 20];
    let other = file.replace("src/a.txt", "big1");
    let r = h.raw(Method::PUT, &other, &h.admin, &[], big.clone()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = h.raw(Method::PUT, &file.replace("src/a.txt", "big2"), &h.admin, &[], big).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded");
    assert_eq!(h.storage.file(&fs, "src/a.txt").as_deref(), Some(&b"two"[..]));
    let r = h.call(Method::GET, &format!("/v1/namespaces/alpha/filesystems/{fs}"), &h.admin, Value::Null).await;
    assert_eq!(r.body["used_bytes"], (9u64 << 20) + 3, "{}", r.body);
}

#[tokio::test]
async fn filesystem_archives_are_swapped_in_whole_and_refused_while_mounted() {
    let h = Harness::new().await;
    h.namespace("alpha", 1 << 30).await;
    let fs = h.filesystem("alpha", 16 << 20).await;
    let file = format!("/v1/namespaces/alpha/filesystems/{fs}/files?path=old.txt");
    let r = h.raw(Method::PUT, &file, &h.admin, &[], b"old".to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let archive = format!("/v1/namespaces/alpha/filesystems/{fs}/archive");
    let r = h.raw(Method::GET, &archive, &h.admin, &[], Vec::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/x-tar");
    let mut entries = tar::Archive::new(r.raw.as_slice());
    let names: Vec<String> = entries
        .entries()
        .expect("tar")
        .map(|e| e.expect("entry").path().expect("path").display().to_string())
        .collect();
    assert_eq!(names, vec!["old.txt"]);

    let mut new = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    new.append_data(&mut header, "dir/new.txt", &b"new"[..]).expect("append");
    let new = new.into_inner().expect("tar");
    let r = h.raw(Method::PUT, &archive, &h.admin, &[], new.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!({"entries": 1, "bytes": 3}));
    assert_eq!(h.storage.file(&fs, "old.txt"), None, "the whole content was replaced");
    assert_eq!(h.storage.file(&fs, "dir/new.txt").as_deref(), Some(&b"new"[..]));
    let r = h.raw(Method::PUT, &archive, &h.admin, &[], b"not a tar archive at all".repeat(40)).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(h.storage.file(&fs, "dir/new.txt").as_deref(), Some(&b"new"[..]), "a refused upload changes nothing");

    // A running sandbox mounts it: the archive is refused, the delete needs force.
    let body = json!({"filesystem": {"id": fs, "mode": "rw"}});
    let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", &h.admin, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let sbx = r.body["id"].as_str().expect("id").to_owned();
    let workspace = h.runtime.sandbox(&sbx).expect("sandbox").spec.workspace.expect("a workspace");
    assert!(workspace.source.ends_with(format!("{fs}/data")), "{workspace:?}");
    let r = h.raw(Method::PUT, &archive, &h.admin, &[], new).await;
    assert_error(&r, StatusCode::CONFLICT, "conflict");
    let path = format!("/v1/namespaces/alpha/filesystems/{fs}");
    let r = h.call(Method::DELETE, &path, &h.admin, Value::Null).await;
    assert_error(&r, StatusCode::CONFLICT, "conflict");
    let r = h.call(Method::DELETE, &format!("{path}?force=true"), &h.admin, Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(h.runtime.sandbox(&sbx).is_none());
    assert_eq!(h.storage.file(&fs, "dir/new.txt"), None, "deletion destroys the data");
}
