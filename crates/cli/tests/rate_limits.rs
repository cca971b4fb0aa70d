//! Per-namespace rate limits: a tenant flooding the API is refused with `429 rate_limited` and
//! `Retry-After` while another tenant's requests in the same window all succeed; commands
//! running at once and sandbox creates in flight stop at `max_concurrent_execs`; the new quotas
//! are validated, shown, and a PATCH that raises them holds at once. Outcomes only, never
//! durations: the host is shared.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bulkhead_server::ratelimit::SlotKind;
use common::{assert_envelope, Harness, Reply};
use serde_json::{json, Value};

async fn namespace_with(h: &Harness, name: &str, quotas: Value) {
    let mut body = common::namespace_body(name);
    for (k, v) in quotas.as_object().unwrap() {
        body["quotas"][k] = v.clone();
    }
    let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

async fn patch_quotas(h: &Harness, ns: &str, quotas: Value) -> Reply {
    h.call(Method::PATCH, &format!("/v1/namespaces/{ns}"), Some(&h.admin), json!({ "quotas": quotas })).await
}

/// A `429 rate_limited` with the envelope and a `Retry-After` of whole seconds, at least 1.
fn assert_rate_limited(r: &Reply) {
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_envelope(r, "rate_limited");
    let retry = r.headers.get("retry-after").expect("Retry-After").to_str().unwrap();
    assert!(retry.parse::<u64>().is_ok_and(|n| n >= 1), "Retry-After {retry:?}");
}

/// Sends `n` GETs of `path` as `token` all at once; the answers.
async fn flood(h: &Harness, path: &str, token: &str, n: usize) -> Vec<Reply> {
    let calls = (0..n).map(|_| h.call(Method::GET, path, Some(token), Value::Null));
    futures_util::future::join_all(calls).await
}

/// Writes `path` in sandbox `id` through the files API (which is not a command, so it takes no
/// place among the namespace's running ones).
async fn put_file(h: &Harness, ns: &str, id: &str, token: &str, path: &str) {
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("/v1/namespaces/{ns}/sandboxes/{id}/files?path={path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from("go"))
        .unwrap();
    let r = h.send(req).await;
    assert!(r.status.is_success(), "{} {}", r.status, r.body);
}

/// Waits until namespace `ns` has `n` commands running (an outcome, with a generous bound only
/// against a hang).
async fn until_running(h: &Harness, ns: &str, n: u64) {
    for _ in 0..1200 {
        if h.state.rate_limits.in_flight(ns, SlotKind::Exec) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("namespace {ns} never had {n} commands running: {}", h.state.rate_limits.in_flight(ns, SlotKind::Exec));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_tenant_is_limited_while_another_keeps_succeeding() {
    let h = Harness::new().await;
    // One request a second: a burst of one, so a flood is refused whatever the host's speed.
    namespace_with(&h, "flood", json!({"api_requests_per_second": 1})).await;
    h.create_namespace("calm").await;
    let (_, flooder) = h.create_key("flood", "flooder", "developer").await;
    let (_, viewer) = h.create_key("flood", "eyes", "viewer").await;
    let (_, calm) = h.create_key("calm", "calm", "developer").await;

    // Both tenants at once in the same window: the flooder's 60 requests and the calm tenant's 40.
    let (flooded, calmed) = tokio::join!(
        flood(&h, "/v1/namespaces/flood/sandboxes", &flooder, 60),
        flood(&h, "/v1/namespaces/calm/sandboxes", &calm, 40),
    );
    let limited: Vec<_> = flooded.iter().filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert!(!limited.is_empty(), "60 requests at once against a rate of 1 a second were never limited");
    for r in &flooded {
        if r.status != StatusCode::OK {
            assert_rate_limited(r);
        }
    }
    for r in &calmed {
        assert_eq!(r.status, StatusCode::OK, "the calm tenant was refused during the flood: {}", r.body);
    }

    // A request on another tenant's path, one that authorization refuses, and one for something
    // that does not exist are charged to the caller's own bucket: each is refused by it too,
    // and never by (or from) the other tenant's.
    let probes = [
        (Method::GET, "/v1/namespaces/calm/sandboxes", &flooder, StatusCode::NOT_FOUND),
        (Method::POST, "/v1/namespaces/flood/sandboxes", &viewer, StatusCode::FORBIDDEN),
        (
            Method::GET,
            "/v1/namespaces/flood/sandboxes/sbx_00000000000000000000000000000000",
            &flooder,
            StatusCode::NOT_FOUND,
        ),
    ];
    let mut forbidden = 0;
    for (method, path, token, otherwise) in probes {
        let mut refused = 0;
        for _ in 0..20 {
            let r = h.call(method.clone(), path, Some(token), json!({})).await;
            if r.status == StatusCode::TOO_MANY_REQUESTS {
                assert_rate_limited(&r);
                refused += 1;
            } else {
                assert_eq!(r.status, otherwise, "{method} {path}: {}", r.body);
                forbidden += usize::from(r.status == StatusCode::FORBIDDEN);
            }
        }
        assert!(refused > 0, "{method} {path}: 20 requests at a rate of 1 a second were never limited");
    }
    // The viewer's denied creates are each in the audit chain; its refused ones did nothing and
    // are not.
    let r = h.call(Method::GET, "/v1/namespaces/flood/audit?action=sandbox.create", Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let denials = r.body["items"].as_array().unwrap().iter().filter(|a| a["decision"] == "deny").count();
    assert_eq!(denials, forbidden, "{}", r.body);
    let r = h.call(Method::GET, "/v1/namespaces/calm/sandboxes", Some(&calm), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // The platform admin is never held by a tenant's bucket: it reads and changes the flooding
    // namespace meanwhile.
    let answers = flood(&h, "/v1/namespaces/flood", &h.admin, 20).await;
    assert!(answers.iter().all(|r| r.status == StatusCode::OK), "the admin was limited by a tenant's bucket");

    // A raised rate holds at once: a second's burst of the new rate.
    let r = patch_quotas(&h, "flood", json!({"api_requests_per_second": 1000})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["quotas"]["api_requests_per_second"], 1000);
    let after = flood(&h, "/v1/namespaces/flood/sandboxes", &flooder, 50).await;
    for r in &after {
        assert_eq!(r.status, StatusCode::OK, "refused after the rate was raised: {}", r.body);
    }
    // The refusals are counted in the flooding namespace's metrics, by limit.
    let r = h.call(Method::GET, "/v1/namespaces/flood/metrics", Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let text = r.text();
    assert!(text.contains("bulkhead_rate_limited_total{namespace=\"flood\",limit=\"requests\"}"), "{text}");
    let r = h.call(Method::GET, "/v1/namespaces/calm/metrics", Some(&h.admin), Value::Null).await;
    assert!(!r.text().contains("bulkhead_rate_limited_total{"), "{}", r.text());
    // The refused requests did nothing and are not in the audit chain; the rest of the chain
    // still verifies.
    let r = h.call(Method::GET, "/v1/namespaces/flood/audit/verify", Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["ok"], true, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_at_once_stop_at_max_concurrent_execs() {
    let h = Harness::new().await;
    namespace_with(&h, "busy", json!({"max_concurrent_execs": 2})).await;
    let (_, dev) = h.create_key("busy", "dev", "developer").await;
    let sbx = h.create_sandbox("busy", &dev, json!({})).await;
    let exec_path = format!("/v1/namespaces/busy/sandboxes/{sbx}/exec");
    let wait_for = |gate: &str| json!({"cmd": ["sh", "-c", format!("while [ ! -e {gate} ]; do sleep 0.05; done")]});

    // Two `sleep` loops run until the test lets them go.
    let first = h.spawn_exec("busy", &sbx, &dev, wait_for("/tmp/go1"));
    let second = h.spawn_exec("busy", &sbx, &dev, wait_for("/tmp/go1"));
    until_running(&h, "busy", 2).await;
    // A third command of any kind is refused meanwhile: an exec, a streamed exec, a process.
    let r = h.call(Method::POST, &exec_path, Some(&dev), json!({"cmd": ["true"]})).await;
    assert_rate_limited(&r);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("max_concurrent_execs"), "{}", r.body);
    let streamed = Request::builder()
        .method(Method::POST)
        .uri(&exec_path)
        .header("authorization", format!("Bearer {dev}"))
        .header("content-type", "application/json")
        .header("accept", "application/x-ndjson")
        .body(Body::from(json!({"cmd": ["true"]}).to_string()))
        .unwrap();
    assert_rate_limited(&h.send(streamed).await);
    let processes = format!("/v1/namespaces/busy/sandboxes/{sbx}/processes");
    assert_rate_limited(&h.call(Method::POST, &processes, Some(&dev), json!({"cmd": ["true"]})).await);
    // Another namespace's commands are counted apart.
    h.create_namespace("other").await;
    let other = h.create_sandbox("other", &h.admin.clone(), json!({})).await;
    assert_eq!(h.exec("other", &other, &h.admin, &["echo", "free"]).await["stdout"], "free\n");

    // Once they end, a command runs again.
    put_file(&h, "busy", &sbx, &dev, "/tmp/go1").await;
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(second.await.unwrap(), StatusCode::OK);
    assert_eq!(h.exec("busy", &sbx, &dev, &["echo", "again"]).await["stdout"], "again\n");

    // A background process holds its place while it runs, and frees it when it exits.
    let r = h.call(Method::POST, &processes, Some(&dev), wait_for("/tmp/go2")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let held = h.spawn_exec("busy", &sbx, &dev, wait_for("/tmp/go2"));
    until_running(&h, "busy", 2).await;
    assert_rate_limited(&h.call(Method::POST, &exec_path, Some(&dev), json!({"cmd": ["true"]})).await);

    // A PATCH that raises the bound holds at once, while the two still run.
    let r = patch_quotas(&h, "busy", json!({"max_concurrent_execs": 3})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["quotas"]["max_concurrent_execs"], 3);
    assert_eq!(h.exec("busy", &sbx, &dev, &["echo", "raised"]).await["stdout"], "raised\n");
    put_file(&h, "busy", &sbx, &dev, "/tmp/go2").await;
    assert_eq!(held.await.unwrap(), StatusCode::OK);
    until_running(&h, "busy", 0).await;
    let r = h.call(Method::GET, "/v1/namespaces/busy/metrics", Some(&h.admin), Value::Null).await;
    let text = r.text();
    assert!(text.contains("bulkhead_rate_limited_total{namespace=\"busy\",limit=\"execs\"} 4"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sandbox_creates_in_flight_stop_at_the_same_bound() {
    let h = Harness::new().await;
    namespace_with(&h, "makers", json!({"max_concurrent_execs": 1})).await;
    let (_, dev) = h.create_key("makers", "dev", "developer").await;
    // One create in flight (held here, as a slow create would hold it): the next is refused at
    // once, not queued.
    let slot = h.state.rate_limits.acquire("makers", SlotKind::Create, 1).unwrap();
    let r = h.call(Method::POST, "/v1/namespaces/makers/sandboxes", Some(&dev), json!({"cpu_millis": 100})).await;
    assert_rate_limited(&r);
    // Creates are counted apart from commands.
    assert_eq!(h.state.rate_limits.in_flight("makers", SlotKind::Exec), 0);
    drop(slot);
    let small = json!({"cpu_millis": 100, "memory_bytes": 64 << 20});
    let id = h.create_sandbox("makers", &dev, small.clone()).await;
    // Concurrent creates: each is made or refused with rate_limited, never queued without bound
    // nor failed otherwise.
    let creates = (0..3).map(|_| h.call(Method::POST, "/v1/namespaces/makers/sandboxes", Some(&dev), small.clone()));
    for r in futures_util::future::join_all(creates).await {
        if r.status != StatusCode::CREATED {
            assert_rate_limited(&r);
        }
    }
    assert_eq!(h.state.rate_limits.in_flight("makers", SlotKind::Create), 0);
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/makers/sandboxes/{id}"), Some(&dev), Value::Null).await;
    assert!(r.status.is_success(), "{}", r.body);
    // A deleted namespace keeps nothing in the limiter.
    let before = h.state.rate_limits.len();
    let r = h.call(Method::DELETE, "/v1/namespaces/makers", Some(&h.admin), Value::Null).await;
    assert!(r.status.is_success(), "{}", r.body);
    assert_eq!(h.state.rate_limits.len(), before - 1);
}

#[tokio::test]
async fn the_new_quotas_are_validated_shown_and_defaulted() {
    let h = Harness::new().await;
    // Absent: the defaults, shown in the namespace.
    h.create_namespace("plain").await;
    let r = h.call(Method::GET, "/v1/namespaces/plain", Some(&h.admin), Value::Null).await;
    assert_eq!(r.body["quotas"]["api_requests_per_second"], 1000, "{}", r.body);
    assert_eq!(r.body["quotas"]["max_concurrent_execs"], 32, "{}", r.body);

    let bad: [(&str, Value); 10] = [
        ("api_requests_per_second", json!(0)),
        ("api_requests_per_second", json!(1_000_001)),
        ("api_requests_per_second", json!(u64::MAX)),
        ("api_requests_per_second", json!("fast")),
        ("api_requests_per_second", json!(-1)),
        ("max_concurrent_execs", json!(0)),
        ("max_concurrent_execs", json!(100_001)),
        ("max_concurrent_execs", json!(1e30)),
        ("max_concurrent_execs", json!(2.5)),
        ("max_concurrent_execs", json!([1])),
    ];
    for (i, (field, value)) in bad.iter().enumerate() {
        let mut body = common::namespace_body(&format!("bad-{i}"));
        body["quotas"][field] = value.clone();
        let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field} = {value}: {}", r.body);
        assert_envelope(&r, "invalid_request");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("quotas.{field}")), "{field} = {value}: {message}");
        let mut patch = serde_json::Map::new();
        patch.insert((*field).to_owned(), value.clone());
        let r = patch_quotas(&h, "plain", Value::Object(patch)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "PATCH {field} = {value}: {}", r.body);
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "PATCH {field} = {value}: {message}");
    }
    // Nothing was made or changed.
    let r = h.call(Method::GET, "/v1/namespaces/bad-0", Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h.call(Method::GET, "/v1/namespaces/plain", Some(&h.admin), Value::Null).await;
    assert_eq!(r.body["quotas"]["api_requests_per_second"], 1000, "{}", r.body);

    // The bounds themselves are taken.
    let r = patch_quotas(&h, "plain", json!({"api_requests_per_second": 1_000_000, "max_concurrent_execs": 1})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["quotas"]["api_requests_per_second"], 1_000_000);
    assert_eq!(r.body["quotas"]["max_concurrent_execs"], 1);
    // A tenant may not change its own limits.
    let (_, owner) = h.create_key("plain", "boss", "owner").await;
    let r = h
        .call(Method::PATCH, "/v1/namespaces/plain", Some(&owner), json!({"quotas": {"api_requests_per_second": 7}}))
        .await;
    assert!(r.status == StatusCode::FORBIDDEN || r.status == StatusCode::NOT_FOUND, "{} {}", r.status, r.body);
}

#[tokio::test]
async fn openapi_documents_rate_limited_on_namespace_routes() {
    let doc = serde_json::to_value(bulkhead_server::openapi()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut namespaced = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let Some(responses) = op.get("responses") else { continue };
            if path.starts_with("/v1/namespaces/{ns}") {
                namespaced += 1;
                let answer = &responses["429"];
                assert!(answer["description"].as_str().unwrap().contains("rate_limited"), "{method} {path}");
                assert!(answer["headers"]["Retry-After"].is_object(), "{method} {path}");
            }
        }
    }
    assert!(namespaced > 40, "{namespaced}");
    let quotas = &doc["components"]["schemas"]["Quotas"];
    let required: Vec<&str> = quotas["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(!required.contains(&"api_requests_per_second") && !required.contains(&"max_concurrent_execs"));
    assert_eq!(quotas["properties"]["max_concurrent_execs"]["default"], 32);
}
