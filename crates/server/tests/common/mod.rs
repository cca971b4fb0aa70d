//! In-process harness: a real server state on a temporary data dir (real SQLite file), driven
//! through `app(state)` without a socket.

#![allow(dead_code)]

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use bulkhead_server::{app, bootstrap, AppState, ServerConfig};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub state: AppState,
    pub app: Router,
    pub admin: String,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Harness {
    pub async fn new() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ServerConfig::new(dir.path().join("data"), SocketAddr::from(([127, 0, 0, 1], 0)));
        let started = bootstrap::start(config).await.expect("bootstrap");
        let admin = started.new_admin_token.expect("first start makes an admin token");
        let app = app(started.state.clone());
        Harness { dir, state: started.state, app, admin }
    }

    /// Sends a request; `body` as JSON unless it is `Value::Null`.
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Value) -> Reply {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let req = if body.is_null() {
            b.body(Body::empty()).expect("request")
        } else {
            b.header("content-type", "application/json").body(Body::from(body.to_string())).expect("request")
        };
        self.send(req).await
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
