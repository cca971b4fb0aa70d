//! Bad input of every kind gets a clean 4xx with the envelope, names the field, and changes
//! nothing.

#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{assert_envelope, namespace_body, Harness};
use serde_json::{json, Value};

fn with_quota(field: &str, value: Value) -> Value {
    let mut b = namespace_body("acme");
    b["quotas"][field] = value;
    b
}

#[tokio::test]
async fn bad_namespace_creates_are_400_naming_the_field() {
    let h = Harness::new().await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "name"),
        (json!({"name": "acme"}), "quotas"),
        (json!({"name": "acme", "quotas": {}}), "cpu_millis"),
        (namespace_body("Acme"), "name"),
        (namespace_body("1acme"), "name"),
        (namespace_body("acme-"), "name"),
        (namespace_body("ac/me"), "name"),
        (namespace_body(&"a".repeat(64)), "name"),
        (namespace_body(""), "name"),
        (
            {
                let mut b = namespace_body("acme");
                b["bogus"] = json!(1);
                b
            },
            "bogus",
        ),
        (
            {
                let mut b = namespace_body("acme");
                b["quotas"]["gpus"] = json!(1);
                b
            },
            "gpus",
        ),
        (
            {
                let mut b = namespace_body("acme");
                b["isolation"] = json!("vm-of-doom");
                b
            },
            "isolation",
        ),
        (
            {
                let mut b = namespace_body("acme");
                b["name"] = json!(7);
                b
            },
            "name",
        ),
        (with_quota("memory_bytes", json!(9223372036854775808u64)), "quotas.memory_bytes"),
        (with_quota("memory_bytes", json!(18446744073709551615u64)), "quotas.memory_bytes"),
        (with_quota("memory_bytes", json!(1e30)), "quotas.memory_bytes"),
        (with_quota("memory_bytes", json!(-1)), "quotas.memory_bytes"),
        (with_quota("memory_bytes", json!(1.5)), "quotas.memory_bytes"),
        (with_quota("memory_bytes", json!("4GiB")), "quotas.memory_bytes"),
        (with_quota("cpu_millis", json!(0)), "quotas.cpu_millis"),
        (with_quota("pids_per_sandbox", json!(0)), "quotas.pids_per_sandbox"),
        (with_quota("max_sandbox_ttl_seconds", json!(0)), "quotas.max_sandbox_ttl_seconds"),
        (with_quota("max_sandboxes", json!(10_000_000)), "quotas.max_sandboxes"),
        (with_quota("disk_bytes", json!(null)), "quotas.disk_bytes"),
    ];
    for (body, field) in cases {
        let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
        assert_envelope(&r, "invalid_request");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: message {message:?} does not name {field}");
    }
    // Nothing was created along the way.
    let r = h.call(Method::GET, "/v1/namespaces", Some(&h.admin), Value::Null).await;
    assert_eq!(r.body["items"], json!([]));
    // The isolation error lists the tiers this server offers.
    let mut b = namespace_body("acme");
    b["isolation"] = json!("gvisor");
    let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), b).await;
    assert!(r.body["error"]["message"].as_str().unwrap().contains("container"), "{}", r.body);
}

#[tokio::test]
async fn bad_updates_keys_and_queries_are_400() {
    let h = Harness::with_namespaces(&["acme"]).await;
    let admin = Some(h.admin.as_str());
    let cases: Vec<(Method, &str, Value, &str)> = vec![
        (Method::PATCH, "/v1/namespaces/acme", json!({}), "quotas"),
        (Method::PATCH, "/v1/namespaces/acme", json!({"quotas": {}}), "quotas"),
        (Method::PATCH, "/v1/namespaces/acme", json!({"isolation": "container"}), "isolation"),
        (Method::PATCH, "/v1/namespaces/acme", json!({"quotas": {"memory_bytes": 0}}), "quotas.memory_bytes"),
        (Method::PATCH, "/v1/namespaces/acme", json!({"quotas": {"cpu": 1}}), "cpu"),
        (Method::POST, "/v1/namespaces/acme/keys", json!({"name": "ci"}), "role"),
        (Method::POST, "/v1/namespaces/acme/keys", json!({"name": "ci", "role": "root"}), "role"),
        (Method::POST, "/v1/namespaces/acme/keys", json!({"name": "CI", "role": "viewer"}), "name"),
        (
            Method::POST,
            "/v1/namespaces/acme/keys",
            json!({"name": "ci", "role": "viewer", "expires_at": "tomorrow"}),
            "expires_at",
        ),
        (
            Method::POST,
            "/v1/namespaces/acme/keys",
            json!({"name": "ci", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            Method::POST,
            "/v1/namespaces/acme/keys",
            json!({"name": "ci", "role": "viewer", "expires_at": "9999-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (Method::POST, "/v1/namespaces/acme/keys", json!({"name": "ci", "role": "viewer", "token": "x"}), "token"),
        (Method::GET, "/v1/namespaces?limit=0", Value::Null, "limit"),
        (Method::GET, "/v1/namespaces?limit=100000", Value::Null, "limit"),
        (Method::GET, "/v1/namespaces?limit=-1", Value::Null, "limit"),
        (Method::GET, "/v1/namespaces?cursor=zz", Value::Null, "cursor"),
        (Method::GET, "/v1/namespaces?color=red", Value::Null, "color"),
        (Method::GET, "/v1/namespaces/acme/audit?since=yesterday", Value::Null, "since"),
        (Method::GET, "/v1/namespaces/acme/audit?cursor=6b3a31", Value::Null, "cursor"),
    ];
    for (method, path, body, field) in cases {
        let r = h.call(method.clone(), path, admin, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method} {path} {body}: {}", r.body);
        assert_envelope(&r, "invalid_request");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{method} {path} {body}: {message:?} does not name {field}");
    }
    let r = h.call(Method::GET, "/v1/namespaces/acme/keys", admin, Value::Null).await;
    assert_eq!(r.body["items"], json!([]), "a rejected key create left a key behind");
    let r = h.call(Method::GET, "/v1/namespaces/acme", admin, Value::Null).await;
    let mut quotas = namespace_body("acme")["quotas"].clone();
    // The rate limits it was created without are shown with their defaults.
    quotas["api_requests_per_second"] = json!(1000);
    quotas["max_concurrent_execs"] = json!(32);
    assert_eq!(r.body["quotas"], quotas, "a rejected update changed quotas");
}

/// An array where the API has an object is refused at every depth, on every route (serde's
/// derived structs would take their fields from it in order), and nothing changes.
#[tokio::test]
async fn arrays_in_place_of_objects_are_400_naming_where() {
    let h = Harness::with_namespaces(&["acme"]).await;
    let admin = Some(h.admin.as_str());
    let quotas = json!([2000, 2147483648u64, 10737418240u64, 5, 128, 3600]);
    let cases: Vec<(Method, &str, Value, &str)> = vec![
        (Method::POST, "/v1/namespaces", json!(["iron", null, null, quotas]), "body"),
        (Method::POST, "/v1/namespaces", json!({"name": "iron", "quotas": quotas}), "quotas"),
        (Method::PATCH, "/v1/namespaces/acme", json!({"quotas": [1000]}), "quotas"),
        (Method::PATCH, "/v1/namespaces/acme", json!({"placement": ["dedicated", 1, 5000000]}), "placement"),
        (Method::PATCH, "/v1/namespaces/acme", json!({"egress": [["pypi.org"]]}), "egress"),
        (Method::PATCH, "/v1/namespaces/acme", json!([{"cpu_millis": 1000}]), "body"),
        (Method::POST, "/v1/namespaces/acme/keys", json!(["ci", "viewer"]), "body"),
        (Method::POST, "/v1/namespaces/acme/sandboxes", json!({"filesystem": ["fs_0", "rw"]}), "filesystem"),
        (
            Method::POST,
            "/v1/namespaces/acme/sandboxes",
            json!({"egress": {"allow": [], "credentials": [["h", "s", "x-key", "{}"]]}}),
            "egress.credentials[0]",
        ),
    ];
    for (method, path, body, at) in cases {
        let r = h.call(method.clone(), path, admin, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method} {path} {body}: {}", r.body);
        assert_envelope(&r, "invalid_request");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(at), "{method} {path} {body}: {message:?} does not start with {at}");
    }
    let r = h.call(Method::GET, "/v1/namespaces/iron", admin, Value::Null).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = h.call(Method::GET, "/v1/namespaces/acme", admin, Value::Null).await;
    assert_eq!(r.body["placement"], json!({"mode": "shared"}));
    assert_eq!(r.body["quotas"]["cpu_millis"], 2000);
    let r = h.call(Method::GET, "/v1/namespaces/acme/keys", admin, Value::Null).await;
    assert_eq!(r.body["items"], json!([]));
}

fn raw(method: Method, path: &str, token: &str, content_type: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {token}"));
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn malformed_requests_are_clean_4xx() {
    let h = Harness::new().await;
    let t = h.admin.clone();
    let json_ct = Some("application/json");
    let cases: Vec<(Request<Body>, u16, &str)> = vec![
        (raw(Method::POST, "/v1/namespaces", &t, json_ct, b"{not json".to_vec()), 400, "invalid_request"),
        (raw(Method::POST, "/v1/namespaces", &t, json_ct, b"".to_vec()), 400, "invalid_request"),
        (raw(Method::POST, "/v1/namespaces", &t, json_ct, b"[]".to_vec()), 400, "invalid_request"),
        (raw(Method::POST, "/v1/namespaces", &t, json_ct, vec![0xff, 0xfe, 0x00]), 400, "invalid_request"),
        (
            raw(Method::POST, "/v1/namespaces", &t, json_ct, b"{\"name\":\"a\"} trailing".to_vec()),
            400,
            "invalid_request",
        ),
        (
            raw(
                Method::POST,
                "/v1/namespaces",
                &t,
                Some("text/plain"),
                namespace_body("acme").to_string().into_bytes(),
            ),
            415,
            "invalid_request",
        ),
        (
            raw(Method::POST, "/v1/namespaces", &t, None, namespace_body("acme").to_string().into_bytes()),
            415,
            "invalid_request",
        ),
        (raw(Method::POST, "/v1/namespaces", &t, json_ct, vec![b' '; 2 * 1024 * 1024]), 413, "payload_too_large"),
        (
            raw(
                Method::POST,
                "/v1/namespaces",
                &t,
                json_ct,
                format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            ),
            400,
            "invalid_request",
        ),
        (raw(Method::PUT, "/v1/namespaces", &t, None, vec![]), 405, "invalid_request"),
        (raw(Method::GET, "/v1/nothing-here", &t, None, vec![]), 404, "not_found"),
        (raw(Method::GET, "/v1/namespaces/%ff%fe", &t, None, vec![]), 400, "invalid_request"),
        (raw(Method::GET, "/v1/namespaces/..%2f..%2fetc", &t, None, vec![]), 404, "not_found"),
        (raw(Method::GET, "/v1/namespaces/a%00b", &t, None, vec![]), 404, "not_found"),
        (raw(Method::GET, "/v1/namespaces/acme/keys/..", &t, None, vec![]), 404, "not_found"),
        (raw(Method::GET, &format!("/v1/namespaces/{}", "x".repeat(5000)), &t, None, vec![]), 404, "not_found"),
    ];
    for (req, status, code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let r = h.send(req).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {}", String::from_utf8_lossy(&r.raw));
        assert_envelope(&r, code);
    }
    let r = h.call(Method::GET, "/v1/namespaces", Some(&t), Value::Null).await;
    assert_eq!(r.body["items"], json!([]));
}

#[tokio::test]
async fn bad_credentials_are_401() {
    let h = Harness::new().await;
    let long = format!("bhk_{}", "a".repeat(10_000));
    let headers: [&[u8]; 8] = [
        b"",
        b"Bearer",
        b"Bearer ",
        b"Basic abc",
        b"Bearer bhk_nope",
        b"Bearer bha_nope",
        b"Bearer \xff\xfe",
        long.as_bytes(),
    ];
    for header in headers {
        let value = axum::http::HeaderValue::from_bytes(header).unwrap();
        let req = Request::builder().uri("/v1/namespaces").header("authorization", value).body(Body::empty()).unwrap();
        let r = h.send(req).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{header:?}");
        assert_envelope(&r, "unauthenticated");
    }
    let req = Request::builder().uri("/v1/namespaces").body(Body::empty()).unwrap();
    assert_eq!(h.send(req).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn request_ids_are_made_by_the_server() {
    let h = Harness::new().await;
    let req = Request::builder()
        .uri("/v1/namespaces/ghost")
        .header("authorization", format!("Bearer {}", h.admin))
        .header("x-request-id", "trace-42")
        .body(Body::empty())
        .unwrap();
    let r = h.send(req).await;
    // A client cannot choose the id of its request (it could take another tenant's).
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(id.starts_with("req_"), "{id}");
    assert_eq!(r.body["error"]["request_id"], id.as_str());
    let req =
        Request::builder().uri("/healthz").header("x-request-id", "bad id with spaces").body(Body::empty()).unwrap();
    let r = h.send(req).await;
    let id = r.headers["x-request-id"].to_str().unwrap();
    assert!(id.starts_with("req_"), "{id}");
}

#[tokio::test]
async fn idempotent_creates_replay_and_refuse_reuse() {
    let h = Harness::new().await;
    let send = |body: Value, key: &'static str| {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/namespaces")
            .header("authorization", format!("Bearer {}", h.admin))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body.to_string()))
            .unwrap();
        h.send(req)
    };
    let first = send(namespace_body("acme"), "k1").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = send(namespace_body("acme"), "k1").await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = send(namespace_body("other"), "k1").await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    assert_envelope(&other, "conflict");
    let plain = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), namespace_body("acme")).await;
    assert_eq!(plain.status, StatusCode::CONFLICT, "a second create of a taken name without the key conflicts");

    // A key create is never replayed with its token.
    let req = || {
        Request::builder()
            .method(Method::POST)
            .uri("/v1/namespaces/acme/keys")
            .header("authorization", format!("Bearer {}", h.admin))
            .header("content-type", "application/json")
            .header("idempotency-key", "k2")
            .body(Body::from(json!({"name": "ci", "role": "viewer"}).to_string()))
            .unwrap()
    };
    let first = h.send(req()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let token = first.body["token"].as_str().unwrap().to_owned();
    let again = h.send(req()).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(!String::from_utf8_lossy(&again.raw).contains(&token));
    assert!(again.body["error"]["message"].as_str().unwrap().contains(first.body["id"].as_str().unwrap()));
}
