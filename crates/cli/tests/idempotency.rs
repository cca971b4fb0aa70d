//! `Idempotency-Key` on every create, and server-made request ids. For each route that creates
//! something (every POST of the OpenAPI document that answers 201): the same request twice with
//! one key makes one resource and gets the same answer; the key with another body is a 409;
//! eight at once make exactly one resource; the key holds across a restart of `bulkhead serve`.
//! A client's `X-Request-Id` is never the id of the answer or of the audit record, only kept
//! beside it as `client_request_id`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::registry::Registry;
use std::path::Path;
use std::process::Command;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::process::{runtime_names, Server};
use common::{assert_envelope, namespace_body, Harness, Reply};
use serde_json::{json, Value};

/// Every create route: POST operations of the OpenAPI document that answer 201. Each must
/// document the `Idempotency-Key` header.
fn create_routes() -> Vec<String> {
    let doc = serde_json::to_value(bulkhead_server::openapi()).unwrap();
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(post) = item.get("post") else { continue };
        if post["responses"].get("201").is_none() {
            continue;
        }
        let documented = post["parameters"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"));
        assert!(documented, "POST {path} creates but does not document Idempotency-Key");
        routes.push(path.clone());
    }
    assert!(routes.len() >= 7, "{routes:?}");
    routes
}

/// A registry on loopback holding the busybox image as `tools/busybox:1`: the source of the
/// pull routes' creates.
fn registry() -> Registry {
    let registry = Registry::start(None);
    let work = common::tempdir();
    let layout = work.path().join("layout");
    common::images::busybox_image().write_dir(&layout);
    registry.push(&layout, "tools/busybox:1");
    registry
}

/// A create body for `route`, and another one; `n` makes names unique; `registry` is the
/// source of pulls.
fn bodies(route: &str, n: u32, registry: &Registry) -> (Value, Value) {
    let source = registry.source("tools/busybox:1");
    match route {
        "/v1/namespaces/{ns}/images" | "/v1/images" => {
            (json!({"name": format!("i{n}"), "source": source}), json!({"name": format!("j{n}"), "source": source}))
        }
        "/v1/namespaces" => (namespace_body(&format!("ns{n}")), namespace_body(&format!("other{n}"))),
        "/v1/namespaces/{ns}/keys" => {
            (json!({"name": format!("k{n}"), "role": "viewer"}), json!({"name": format!("k{n}"), "role": "developer"}))
        }
        "/v1/namespaces/{ns}/sandboxes" => (json!({"memory_bytes": 64 << 20}), json!({"memory_bytes": 96 << 20})),
        "/v1/namespaces/{ns}/projects" => (json!({"name": format!("p{n}")}), json!({"name": format!("q{n}")})),
        "/v1/namespaces/{ns}/filesystems" => (
            json!({"name": format!("f{n}"), "size_bytes": 16 << 20}),
            json!({"name": format!("g{n}"), "size_bytes": 16 << 20}),
        ),
        "/v1/namespaces/{ns}/policies" => {
            let p = "permit(principal, action == Bulkhead::Action::\"sandbox.get\", resource);";
            (json!({"name": format!("p{n}"), "policy": p}), json!({"name": format!("q{n}"), "policy": p}))
        }
        "/v1/namespaces/{ns}/secrets" => {
            (json!({"name": format!("s{n}"), "value": "one"}), json!({"name": format!("s{n}"), "value": "two"}))
        }
        "/v1/namespaces/{ns}/sandboxes/{id}/snapshot" => {
            (json!({"name": format!("snap{n}")}), json!({"name": format!("other-snap{n}")}))
        }
        "/v1/namespaces/{ns}/agents" => (json!({"name": format!("a{n}")}), json!({"name": format!("b{n}")})),
        // The body of a push is a bundle: `post` packs this manifest as its agent.json.
        "/v1/namespaces/{ns}/agents/{agent}/versions" => (
            json!({"command": ["true"], "protocol": "acp", "description": format!("v{n}")}),
            json!({"command": ["true"], "protocol": "acp", "description": format!("w{n}")}),
        ),
        // The agent of these tasks answers nothing and ends at once: each task completes.
        "/v1/namespaces/{ns}/tasks" => (
            json!({"agent": AGENT, "message": format!("m{n}")}),
            json!({"agent": AGENT, "message": format!("other m{n}")}),
        ),
        other => panic!("POST {other} creates and has no body in the idempotency test; add one"),
    }
}

/// The sandbox of namespace `acme` that the routes below a sandbox (snapshots) act on.
static SANDBOX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The agent of namespace `acme` that versions are pushed to and tasks run.
const AGENT: &str = "idem";

/// `route` with its parameters filled in: namespace `acme`, its sandbox, its agent.
fn concrete(route: &str) -> String {
    let path = route.replace("{ns}", "acme").replace("{agent}", AGENT);
    match SANDBOX.get() {
        Some(id) => path.replace("{id}", id),
        None => path,
    }
}

fn post(h: &Harness, route: &str, key: &str, body: &Value) -> Request<Body> {
    let b = Request::builder()
        .method(Method::POST)
        .uri(concrete(route))
        .header("authorization", format!("Bearer {}", h.admin))
        .header("idempotency-key", key);
    if route.ends_with("/versions") {
        return b.header("content-type", "application/x-tar").body(Body::from(manifest_bundle(body))).unwrap();
    }
    b.header("content-type", "application/json").body(Body::from(body.to_string())).unwrap()
}

/// A bundle whose agent.json is `manifest`: the same bytes for the same manifest, whenever it is
/// made (no time or owner of the test's files in it), so that a retry sends the same body.
fn manifest_bundle(manifest: &Value) -> Vec<u8> {
    let data = manifest.to_string().into_bytes();
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut header, "agent.json", data.as_slice()).unwrap();
    b.into_inner().unwrap()
}

/// How many resources the create route's list shows.
async fn count(h: &Harness, route: &str) -> usize {
    // A snapshot makes an image of the namespace.
    let route = if route.ends_with("/snapshot") { "/v1/namespaces/{ns}/images" } else { route };
    let path = format!("{}?limit=1000", concrete(route));
    let r = h.call(Method::GET, &path, Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
    r.body["items"].as_array().unwrap().len()
}

/// A key create's replay never holds the token: it is a 409 naming the key created.
fn assert_key_replay(first: &Reply, again: &Reply) {
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert_envelope(again, "conflict");
    let token = first.body["token"].as_str().unwrap();
    assert!(!String::from_utf8_lossy(&again.raw).contains(token));
    assert!(again.body["error"]["message"].as_str().unwrap().contains(first.body["id"].as_str().unwrap()));
}

/// A server with namespace `acme` that may pull from loopback registries.
async fn harness() -> Harness {
    let h = Harness::with_config("runc", |config| {
        config.outbound.policy = bulkhead_core::outbound::OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
    })
    .await;
    // Room for the sandbox that snapshots are taken of, beside the sandboxes the test creates.
    let mut namespace = common::namespace_body("acme");
    namespace["quotas"]["cpu_millis"] = json!(4000);
    let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), namespace).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let sandbox = h.create_sandbox("acme", &h.admin, json!({"memory_bytes": 64 << 20, "cpu_millis": 100})).await;
    SANDBOX.set(sandbox).expect("one harness per test");
    // The agent whose versions are pushed and whose tasks are created, deployed.
    let r = h.call(Method::POST, "/v1/namespaces/acme/agents", Some(&h.admin), json!({"name": AGENT})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let manifest =
        json!({"command": ["true"], "protocol": "acp", "resources": {"memory_bytes": 64 << 20, "cpu_millis": 100}});
    let push = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/namespaces/acme/agents/{AGENT}/versions"))
        .header("authorization", format!("Bearer {}", h.admin))
        .body(Body::from(manifest_bundle(&manifest)))
        .unwrap();
    let r = h.send(push).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let version = r.body["id"].clone();
    let r = h
        .call(
            Method::POST,
            &format!("/v1/namespaces/acme/agents/{AGENT}/deploy"),
            Some(&h.admin),
            json!({"version": version}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    h
}

#[tokio::test]
async fn every_create_made_twice_with_one_key_makes_one_resource_and_one_answer() {
    let h = harness().await;
    let registry = registry();
    // Keys are scoped by namespace, principal and action: routes of one action (an image
    // pulled, built or snapshotted) each get keys of their own.
    for (i, route) in create_routes().into_iter().enumerate() {
        let (body, other) = bodies(&route, 1, &registry);
        let before = count(&h, &route).await;
        let first = h.send(post(&h, &route, &format!("r{i}-retry-1"), &body)).await;
        assert_eq!(first.status, StatusCode::CREATED, "{route}: {}", first.body);
        let again = h.send(post(&h, &route, &format!("r{i}-retry-1"), &body)).await;
        if route.ends_with("/keys") {
            assert_key_replay(&first, &again);
        } else {
            assert_eq!(again.status, StatusCode::CREATED, "{route}: {}", again.body);
            assert_eq!(again.raw, first.raw, "{route}: a replay is the first answer");
            assert_eq!(again.headers["idempotent-replayed"], "true", "{route}");
        }
        assert_eq!(count(&h, &route).await, before + 1, "{route}: one resource");
        // The key with another body.
        let r = h.send(post(&h, &route, &format!("r{i}-retry-1"), &other)).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{route}: {}", r.body);
        assert_envelope(&r, "conflict");
        assert!(r.body["error"]["message"].as_str().unwrap().contains("different request body"), "{}", r.body);
        assert_eq!(count(&h, &route).await, before + 1, "{route}: one resource");
        // A failed create is not remembered: it runs again, and the key is free for a good one.
        let bad = json!({"unknown_field": true});
        for _ in 0..2 {
            let r = h.send(post(&h, &route, &format!("r{i}-retry-2"), &bad)).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{route}: {}", r.body);
            assert!(r.headers.get("idempotent-replayed").is_none(), "{route}");
        }
        let (good, _) = bodies(&route, 2, &registry);
        let r = h.send(post(&h, &route, &format!("r{i}-retry-2"), &good)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{route}: {}", r.body);
        // Two keys on one request: refused, and nothing is made.
        let (third, _) = bodies(&route, 4, &registry);
        let before = count(&h, &route).await;
        let mut req = post(&h, &route, &format!("r{i}-retry-3"), &third);
        req.headers_mut().append("idempotency-key", format!("r{i}-retry-4").parse().unwrap());
        let r = h.send(req).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{route}: {}", r.body);
        assert_envelope(&r, "invalid_request");
        assert!(r.body["error"]["message"].as_str().unwrap().contains("Idempotency-Key"), "{}", r.body);
        assert_eq!(count(&h, &route).await, before, "{route}: nothing made");
    }
}

/// Eight requests at once with one key: exactly one resource; each of the others gets the
/// first answer or a 409 saying the key is in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_with_one_key_make_exactly_one_resource() {
    let h = harness().await;
    let registry = registry();
    for (i, route) in create_routes().into_iter().enumerate() {
        let (body, _) = bodies(&route, 3, &registry);
        let before = count(&h, &route).await;
        let replies = futures_util::future::join_all(
            (0..8).map(|_| h.send(post(&h, &route, &format!("r{i}-concurrent"), &body))),
        )
        .await;
        let created: Vec<&Reply> = replies.iter().filter(|r| r.status == StatusCode::CREATED).collect();
        assert!(
            !created.is_empty(),
            "{route}: none was created: {:?}",
            replies.iter().map(|r| &r.body).collect::<Vec<_>>()
        );
        for r in &replies {
            match r.status {
                StatusCode::CREATED => assert_eq!(r.raw, created[0].raw, "{route}: one answer"),
                StatusCode::CONFLICT => assert_envelope(r, "conflict"),
                other => panic!("{route}: {other} {}", r.body),
            }
        }
        if route.ends_with("/keys") {
            assert_eq!(created.len(), 1, "{route}: a key's token is answered once");
        }
        assert_eq!(count(&h, &route).await, before + 1, "{route}: exactly one resource");
    }
}

fn curl(url: &str, token: &str, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-D", "-", "-X", method, "-H"])
        .arg(format!("authorization: Bearer {token}"))
        .arg(format!("{url}{path}"));
    if let Some(k) = key {
        c.arg("-H").arg(format!("idempotency-key: {k}"));
    }
    if let Some(b) = body {
        c.args(["-H", "content-type: application/json", "--data-binary"]).arg(b.to_string());
    }
    let out = c.output().expect("curl (scripts/os-deps --test installs it)");
    let text = String::from_utf8(out.stdout).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("an HTTP status line");
    (status, text)
}

fn body_of(answer: &str) -> Value {
    let (_, body) = answer.split_once("\r\n\r\n").expect("headers end");
    serde_json::from_str(body).unwrap()
}

/// The keys live in the store: after a restart of `bulkhead serve` the same requests get the
/// same answers and make nothing new; a claim whose create never answered (its process died)
/// is freed at start.
#[test]
fn idempotency_keys_survive_a_restart() {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let data = dir.path().join("data");
    let names = runtime_names();
    let mut server = Server::start_with(&data, names.clone());
    let admin = server.first_token.clone().expect("first start prints the admin token");
    let creates = [
        ("/v1/namespaces", namespace_body("acme")),
        ("/v1/namespaces/acme/projects", json!({"name": "p"})),
        ("/v1/namespaces/acme/filesystems", json!({"name": "f", "size_bytes": 16 << 20})),
        ("/v1/namespaces/acme/sandboxes", json!({"memory_bytes": 64 << 20})),
    ];
    let mut first = Vec::new();
    for (path, body) in &creates {
        let (status, answer) = curl(&server.url, &admin, "POST", path, Some("before-restart"), Some(body));
        assert_eq!(status, 201, "{path}: {answer}");
        first.push(body_of(&answer));
    }
    server.stop();
    // A claim left by a create that never answered.
    pending_claim(&data);
    let server = Server::start_with(&data, names);
    for ((path, body), first) in creates.iter().zip(&first) {
        let (status, answer) = curl(&server.url, &admin, "POST", path, Some("before-restart"), Some(body));
        assert_eq!(status, 201, "{path}: {answer}");
        assert!(answer.to_ascii_lowercase().contains("idempotent-replayed: true"), "{path}: {answer}");
        assert_eq!(&body_of(&answer), first, "{path}");
        let (status, list) = curl(&server.url, &admin, "GET", path, None, None);
        assert_eq!(status, 200, "{list}");
        let n = body_of(&list)["items"].as_array().unwrap().len();
        assert_eq!(n, 1, "{path}: one resource after the restart: {list}");
    }
    let (status, answer) =
        curl(&server.url, &admin, "POST", "/v1/namespaces", Some("orphaned"), Some(&namespace_body("other")));
    assert_eq!(status, 201, "a dead process's claim must not hold the key: {answer}");
}

fn pending_claim(data: &Path) {
    common::store_db::exec_blocking(
        data,
        "INSERT INTO idempotency (scope, key, fingerprint, status, body, created_at_ms) \
         VALUES ('platform:admin:namespace.create', 'orphaned', 'x', 0, '', 0)",
    );
}

/// The answer's `X-Request-Id`, the error envelope and the audit record carry the server's id;
/// a client's id is kept beside it as `client_request_id`, and only when it is sane.
#[tokio::test]
async fn request_ids_are_the_servers_and_a_clients_is_kept_beside_it() {
    let h = harness().await;
    let send = |method: Method, path: &str, client_id: &str, body: Option<Value>| {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", h.admin))
            .header("x-request-id", client_id);
        let body = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        h.send(b.body(body).unwrap())
    };
    // An error answer.
    let r = send(Method::GET, "/v1/namespaces/ghost", "victim-request-7", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(id.starts_with("req_"), "{id}");
    assert_eq!(r.body["error"]["request_id"], id.as_str());

    // An audited create, with a sane client id and then with one that is not kept.
    let r = send(Method::POST, "/v1/namespaces/acme/projects", "victim-request-7", Some(json!({"name": "p"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(id.starts_with("req_") && id != "victim-request-7", "{id}");
    let long = "x".repeat(129);
    let r = send(Method::POST, "/v1/namespaces/acme/projects", &long, Some(json!({"name": "q"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id2 = r.headers["x-request-id"].to_str().unwrap().to_owned();

    let r = h.call(Method::GET, "/v1/namespaces/acme/audit?action=project.create", Some(&h.admin), Value::Null).await;
    let records = r.body["items"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{}", r.body);
    assert_eq!(records[0]["request_id"], id.as_str());
    let detail: Value = serde_json::from_str(records[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["client_request_id"], "victim-request-7", "{detail}");
    assert_eq!(records[1]["request_id"], id2.as_str());
    let detail: Value = serde_json::from_str(records[1]["detail"].as_str().unwrap()).unwrap();
    assert!(detail.get("client_request_id").is_none(), "an over-long client id is not kept: {detail}");
    assert!(records.iter().all(|r| r["request_id"] != "victim-request-7"));

    // A streamed exec's closing record too.
    let sbx = h.create_sandbox("acme", &h.admin, json!({"memory_bytes": 64 << 20})).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/namespaces/acme/sandboxes/{sbx}/exec"))
        .header("authorization", format!("Bearer {}", h.admin))
        .header("content-type", "application/json")
        .header("accept", "application/x-ndjson")
        .header("x-request-id", "stream-client-1")
        .body(Body::from(json!({"cmd": ["true"]}).to_string()))
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(String::from_utf8_lossy(&r.raw).contains("\"exit\""), "{}", String::from_utf8_lossy(&r.raw));
    let path = "/v1/namespaces/acme/audit?action=sandbox.exec.exit";
    let r = h.call(Method::GET, path, Some(&h.admin), Value::Null).await;
    let records = r.body["items"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{}", r.body);
    assert_eq!(records[0]["request_id"], id.as_str());
    let detail: Value = serde_json::from_str(records[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["client_request_id"], "stream-client-1", "{detail}");

    let r = h.call(Method::GET, "/v1/namespaces/acme/audit/verify", Some(&h.admin), Value::Null).await;
    assert_eq!(r.body["ok"], true, "{}", r.body);
}

/// A key is checked against what a create acts on, not only its body: the same snapshot body
/// with the same key for another sandbox is another request (409), never the first's answer.
#[tokio::test]
async fn a_key_reused_for_another_sandbox_is_another_request() {
    let h = harness().await;
    let other = h.create_sandbox("acme", &h.admin, json!({"memory_bytes": 64 << 20, "cpu_millis": 100})).await;
    let route = "/v1/namespaces/{ns}/sandboxes/{id}/snapshot";
    let body = json!({"name": "snap-once"});
    let first = h.send(post(&h, route, "one-key", &body)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let mut req = post(&h, route, "one-key", &body);
    *req.uri_mut() = format!("/v1/namespaces/acme/sandboxes/{other}/snapshot").parse().unwrap();
    let r = h.send(req).await;
    assert_envelope(&r, "conflict");
    assert!(r.headers.get("idempotent-replayed").is_none());
}
