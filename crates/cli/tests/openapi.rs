//! The OpenAPI document is generated from the route table and served at `/openapi.json`.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::Harness;
use serde_json::Value;

#[tokio::test]
async fn openapi_is_served_and_lists_every_route() {
    let h = Harness::new().await;
    let r = h.call(Method::GET, "/openapi.json", None, Value::Null).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true));
    let paths = r.body["paths"].as_object().unwrap();
    // Every route the contract names for this stage, by method.
    let expected = [
        ("get", "/healthz"),
        ("post", "/v1/namespaces"),
        ("get", "/v1/namespaces"),
        ("get", "/v1/namespaces/{ns}"),
        ("patch", "/v1/namespaces/{ns}"),
        ("delete", "/v1/namespaces/{ns}"),
        ("post", "/v1/namespaces/{ns}/keys"),
        ("get", "/v1/namespaces/{ns}/keys"),
        ("get", "/v1/namespaces/{ns}/keys/{id}"),
        ("delete", "/v1/namespaces/{ns}/keys/{id}"),
        ("get", "/v1/namespaces/{ns}/audit"),
        ("get", "/v1/namespaces/{ns}/audit/verify"),
        ("get", "/v1/audit"),
        ("get", "/v1/audit/verify"),
    ];
    for (method, path) in expected {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing from /openapi.json");
    }
    // And every documented operation is really routed: none answers "no such route".
    for (path, item) in paths {
        for (method, _) in item.as_object().unwrap() {
            let concrete = path.replace("{ns}", "ghost").replace("{id}", "key_0");
            let m: Method = method.to_uppercase().parse().unwrap();
            let r = h.call(m, &concrete, Some(&h.admin), Value::Null).await;
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(r.body["error"]["message"], "no such route", "{method} {path}");
        }
    }
    let schemas = r.body["components"]["schemas"].as_object().unwrap();
    for s in ["CreateNamespace", "Namespace", "Quotas", "CreateKey", "CreatedKey", "AuditRecord", "ErrorBody"] {
        assert!(schemas.contains_key(s), "schema {s} missing");
    }
    // A route that takes two bodies describes both: a pull or a build.
    let body = &paths["/v1/namespaces/{ns}/images"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["$ref"], "#/components/schemas/CreateImage", "{body}");
    let refs: Vec<&str> =
        schemas["CreateImage"]["oneOf"].as_array().unwrap().iter().filter_map(|v| v["$ref"].as_str()).collect();
    assert_eq!(refs, ["#/components/schemas/PullImage", "#/components/schemas/BuildImage"]);
    // Warm pools are documented with their bodies.
    for s in ["WarmPool", "SetWarmPool"] {
        assert!(schemas.contains_key(s), "schema {s} missing");
    }
}
