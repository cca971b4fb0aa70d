//! In-process harness: a real server state on a temporary data dir (real SQLite file, real OCI
//! runtime, real cgroups), driven through `app(state)` without a socket. Each harness has its own
//! runtime state dir and cgroup prefix, so tests run in parallel without meeting, and tears
//! everything of its sandboxes down when dropped, even during a panic.

#![allow(dead_code)]

pub mod agents;
pub mod host;
pub mod images;
pub mod internet;
pub mod process;
pub mod registry;
pub mod sdk;
pub mod store_db;

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use bulkhead_server::state::RuntimeSettings;
use bulkhead_server::{app, bootstrap, AppState, ServerConfig};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub state: AppState,
    pub app: Router,
    pub admin: String,
    pub runtime: RuntimeSettings,
}

/// The supervisor binary built with this package.
pub const SUPERVISOR: &str = env!("CARGO_BIN_EXE_bulkhead-supervisor");

/// Runtime settings of a test server: its own state dir under `/run` (the sandboxes' mapped
/// root must be able to traverse it, which a private temporary dir does not allow) and its own
/// cgroup prefix. Both carry "bulkhead" so the suite's leak check sees anything left behind.
pub fn test_runtime() -> RuntimeSettings {
    let tag = bulkhead_core_tag();
    RuntimeSettings {
        state_dir: std::path::PathBuf::from(format!("/run/bulkhead-test-{tag}")),
        cgroup_prefix: format!("bulkhead-test-{tag}"),
        supervisor: SUPERVISOR.into(),
        // In-process servers test everything but the network: their sandboxes have loopback
        // only. The network and egress tests run `bulkhead serve --network isolated` with
        // `--egress-dns` into the tests' own internet (common::internet).
        network: bulkhead_runtime::net::NetworkMode::LoopbackOnly,
        ..Default::default()
    }
}

/// A temporary dir for a test's data dir, named `bulkhead-test-…`: the loop devices of its
/// filesystems carry the name in their backing file, so the suite's leak check sees them.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("bulkhead-test-").tempdir().expect("tempdir")
}

fn bulkhead_core_tag() -> String {
    let mut bytes = [0u8; 6];
    let f = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    f.expect("random");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Drop for Harness {
    fn drop(&mut self) {
        let r = &self.runtime;
        if let Err(e) =
            bulkhead_runtime::oci::purge(&r.state_dir, std::path::Path::new("/sys/fs/cgroup"), &r.cgroup_prefix)
        {
            eprintln!("harness teardown: {e}");
        }
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Reply {
    /// The body as UTF-8 text, such as a Prometheus exposition; panics when it is not UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8(self.raw.clone()).expect("a UTF-8 body")
    }
}

impl Harness {
    pub async fn new() -> Harness {
        Harness::with_oci_runtime("runc").await
    }

    /// A harness with the namespaces `names` created, each with the quotas of `namespace_body`.
    pub async fn with_namespaces(names: &[&str]) -> Harness {
        let h = Harness::new().await;
        for name in names {
            h.create_namespace(name).await;
        }
        h
    }

    /// Namespaces `alpha` and `beta`, a viewer key `eyes` of alpha and an owner key `boss` of
    /// beta: (harness, alpha viewer token, beta owner token).
    pub async fn with_alpha_viewer_and_beta_owner() -> (Harness, String, String) {
        let h = Harness::with_namespaces(&["alpha", "beta"]).await;
        let (_, alpha_viewer) = h.create_key("alpha", "eyes", "viewer").await;
        let (_, beta_owner) = h.create_key("beta", "boss", "owner").await;
        (h, alpha_viewer, beta_owner)
    }

    /// A harness whose `container` tier runs on `oci_runtime` (such as `crun`).
    pub async fn with_oci_runtime(oci_runtime: &str) -> Harness {
        Harness::with_config(oci_runtime, |_| {}).await
    }

    /// A harness whose configuration `tune` adjusts before the server starts.
    pub async fn with_config(oci_runtime: &str, tune: impl FnOnce(&mut ServerConfig)) -> Harness {
        // Server logs go to the test's captured output: shown when a test fails.
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn,bulkhead_server=info").try_init();
        let dir = tempdir();
        let mut config = ServerConfig::new(dir.path().join("data"), SocketAddr::from(([127, 0, 0, 1], 0)));
        config.runtime = test_runtime();
        config
            .runtime_classes
            .insert("container".into(), bulkhead_server::state::RuntimeClass { runtime: oci_runtime.to_owned() });
        config.reap_interval = std::time::Duration::from_millis(200);
        // A registry of its own, gone with the temporary dir, never the host's.
        config.host_registry = dir.path().join("host-registry");
        // Sandboxes boot the default image, as a server's do.
        let (layout, layers) = images::default_image_prepared();
        config.images.root = bulkhead_server::state::RootMode::Image;
        config.images.default_image = Some(layout);
        config.images.public_layers = Some(layers);
        // The suite run on PostgreSQL: a database of the server's own there.
        if let Some(admin) = bulkhead_store::postgres::testing::suite_server() {
            config.store = Some(bulkhead_store::postgres::testing::suite_database(&admin, &config.data_dir));
        }
        tune(&mut config);
        let runtime = config.runtime.clone();
        let started = bootstrap::start(config).await.expect("bootstrap (the tests need root and runc)");
        let admin = started.new_admin_token.expect("first start makes an admin token");
        bulkhead_server::sandboxes::spawn_reaper(started.state.clone());
        bulkhead_server::metering::spawn_meter(started.state.clone());
        bulkhead_server::service::pools::spawn(started.state.clone());
        let app = app(started.state.clone());
        Harness { dir, state: started.state, app, admin, runtime }
    }

    /// Creates a sandbox as `token` and returns its id.
    pub async fn create_sandbox(&self, ns: &str, token: &str, body: Value) -> String {
        let r = self.call(Method::POST, &format!("/v1/namespaces/{ns}/sandboxes"), Some(token), body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["id"].as_str().expect("id").to_owned()
    }

    /// Runs `cmd` in a sandbox as `token`; returns the exec answer.
    pub async fn exec(&self, ns: &str, id: &str, token: &str, cmd: &[&str]) -> Value {
        let r = self
            .call(Method::POST, &format!("/v1/namespaces/{ns}/sandboxes/{id}/exec"), Some(token), json!({"cmd": cmd}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{cmd:?}: {}", r.body);
        r.body
    }

    /// Posts `body` (a command with its options) to a sandbox's exec as `token`; the answer is
    /// returned whatever its status.
    pub async fn exec_with(&self, ns: &str, id: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, &format!("/v1/namespaces/{ns}/sandboxes/{id}/exec"), Some(token), body).await
    }

    /// Runs a shell snippet in a sandbox; returns (exit code, stdout, stderr).
    pub async fn sh(&self, ns: &str, id: &str, token: &str, script: &str) -> (i64, String, String) {
        let v = self.exec(ns, id, token, &["sh", "-c", script]).await;
        (
            v["exit_code"].as_i64().expect("exit_code"),
            v["stdout"].as_str().unwrap_or_default().to_owned(),
            v["stderr"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// Sends a request; `body` as JSON unless it is `Value::Null`.
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.send(request(method, path, token, body)).await
    }

    /// Starts `body` (a command with its options) on a sandbox's exec as `token` in a task of its
    /// own, so the test goes on meanwhile; the task yields the answer's status.
    pub fn spawn_exec(&self, ns: &str, id: &str, token: &str, body: Value) -> tokio::task::JoinHandle<StatusCode> {
        let req = request(Method::POST, &format!("/v1/namespaces/{ns}/sandboxes/{id}/exec"), Some(token), body);
        let app = self.app.clone();
        tokio::spawn(async move { app.oneshot(req).await.expect("infallible").status() })
    }

    /// Opens the server-sent-event stream of `path` as `token` (a live tail); asserts it started.
    pub async fn open_events(&self, path: &str, token: &str) -> Body {
        let req = Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "text/event-stream")
            .body(Body::empty())
            .expect("request");
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK);
        let content_type = resp.headers()["content-type"].to_str().expect("content-type");
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        resp.into_body()
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let raw = resp.into_body().collect().await.expect("body").to_bytes().to_vec();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Reply { status, headers, body, raw }
    }

    pub async fn create_namespace(&self, name: &str) {
        let r = self.call(Method::POST, "/v1/namespaces", Some(&self.admin), namespace_body(name)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }

    /// Creates a key of `role` limited to `projects` as the platform admin; returns its token.
    pub async fn create_project_key(&self, ns: &str, name: &str, role: &str, projects: &[&str]) -> String {
        let r = self
            .call(
                Method::POST,
                &format!("/v1/namespaces/{ns}/keys"),
                Some(&self.admin),
                json!({"name": name, "role": role, "projects": projects}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["token"].as_str().expect("token").to_owned()
    }

    /// Creates a key and returns (id, token).
    pub async fn create_key(&self, ns: &str, name: &str, role: &str) -> (String, String) {
        let r = self
            .call(
                Method::POST,
                &format!("/v1/namespaces/{ns}/keys"),
                Some(&self.admin),
                json!({"name": name, "role": role}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        (r.body["id"].as_str().expect("id").to_owned(), r.body["token"].as_str().expect("token").to_owned())
    }
}

/// A request as `Harness::call` sends it: bearer `token` if any, `body` as JSON unless it is
/// `Value::Null`.
pub fn request(method: Method, path: &str, token: Option<&str>, body: Value) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if body.is_null() {
        b.body(Body::empty()).expect("request")
    } else {
        b.header("content-type", "application/json").body(Body::from(body.to_string())).expect("request")
    }
}

/// The JSON records of a server-sent-event stream (its `data:` lines), read until `done` holds
/// for them; panics when that takes longer than `within` in total (keep-alive comments do not
/// extend it) or the stream ends.
pub async fn read_events(body: &mut Body, within: std::time::Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let records: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).expect("a JSON record"))
            .collect();
        if done(&records) {
            return records;
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("the records within {} s", within.as_secs()))
            .expect("the stream goes on")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).expect("utf-8"));
        }
    }
}

pub fn namespace_body(name: &str) -> Value {
    json!({
        "name": name,
        "quotas": {
            "cpu_millis": 2000,
            "memory_bytes": 2147483648u64,
            "disk_bytes": 10737418240u64,
            "max_sandboxes": 5,
            "pids_per_sandbox": 128,
            "max_sandbox_ttl_seconds": 3600
        }
    })
}

/// Every error answer has exactly the envelope of PRODUCT.md.
pub fn assert_envelope(r: &Reply, code: &str) {
    let e = &r.body["error"];
    assert_eq!(e["code"], code, "status {} body {}", r.status, String::from_utf8_lossy(&r.raw));
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.body);
    assert!(e["request_id"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.body);
    assert_eq!(r.body.as_object().map(|o| o.len()), Some(1), "{}", r.body);
    assert_eq!(e.as_object().map(|o| o.len()), Some(3), "{}", r.body);
}

/// A TCP listener on the host that records every peer.
pub struct Listener {
    pub addr: std::net::SocketAddr,
    peers: std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
}

impl Listener {
    pub fn bind(addr: std::net::SocketAddr) -> Listener {
        let l = std::net::TcpListener::bind(addr).unwrap();
        let addr = l.local_addr().unwrap();
        let peers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = peers.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                if let Ok(p) = s.peer_addr() {
                    seen.lock().unwrap().push(p);
                }
            }
        });
        Listener { addr, peers }
    }

    pub fn peers(&self) -> Vec<std::net::SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

/// Quotas roomy enough for the tests that create a few sandboxes with networks: 4 cores, 4 GiB,
/// 10 sandboxes of 256 pids, an hour each.
pub fn roomy_quotas() -> bulkhead_api::Quotas {
    bulkhead_api::Quotas {
        cpu_millis: 4000,
        memory_bytes: 4 << 30,
        disk_bytes: 1 << 30,
        max_sandboxes: 10,
        pids_per_sandbox: 256,
        max_sandbox_ttl_seconds: 3600,
        api_requests_per_second: 1000,
        max_concurrent_execs: 32,
    }
}
