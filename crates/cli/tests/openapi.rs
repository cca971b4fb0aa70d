//! The OpenAPI document is generated from the route table and served at `/openapi.json`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

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

/// One handler of the route table as its source declares it.
struct Handler {
    method: String,
    path: String,
    /// Its signature takes the request body (`Bytes`, `Body` or `Json<..>`).
    reads_body: bool,
    /// Where it is, for messages.
    at: String,
}

/// Every handler annotated with `#[utoipa::path(...)]` in the server's routes, read from the
/// sources: the route table as the code has it, independent of the document.
fn handlers() -> Vec<Handler> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/src/routes");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().path();
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, _) in text.match_indices("#[utoipa::path(") {
            let rest = &text[i + "#[utoipa::path(".len()..];
            let method = rest.split(',').next().unwrap().trim().to_owned();
            let path = rest.split("path = \"").nth(1).unwrap().split('"').next().unwrap().to_owned();
            let func = &rest[rest.find("pub async fn ").unwrap()..];
            let signature = &func[..func.find("->").unwrap()];
            let reads_body = [": Bytes", ": Body", "::Body", "Json<"].iter().any(|t| signature.contains(t));
            let name = func["pub async fn ".len()..].split('(').next().unwrap();
            let at = format!("{}::{name}", file.file_stem().unwrap().to_string_lossy());
            out.push(Handler { method, path, reads_body, at });
        }
    }
    out
}

/// The `application/json` answer is the error envelope.
fn is_envelope(answer: &Value) -> bool {
    answer["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorBody"
}

/// Every route of the table is in the document with its request body (when its handler reads
/// one), a success answer with a schema, and its error answers as the error envelope, whose
/// codes are the server's; so SDKs generated from the document cover the whole API.
#[tokio::test]
async fn openapi_describes_every_body_answer_and_error_of_the_route_table() {
    let h = Harness::new().await;
    let doc = h.call(Method::GET, "/openapi.json", None, Value::Null).await.body;
    let paths = doc["paths"].as_object().unwrap();
    let handlers = handlers();
    assert!(handlers.len() > 50, "found only {} handlers", handlers.len());

    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |m| (m.clone(), path.clone())))
        .collect();
    let routed: BTreeSet<(String, String)> = handlers.iter().map(|h| (h.method.clone(), h.path.clone())).collect();
    assert_eq!(documented, routed, "the document and the route table differ");

    // Operation ids are unique: generated clients name their functions after them.
    let mut ids = BTreeSet::new();
    for (method, path) in &documented {
        let id =
            paths[path][method]["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
        assert!(ids.insert(id.to_owned()), "{method} {path}: operationId {id} is not unique");
    }

    let mut missing = Vec::new();
    for handler in &handlers {
        let op = &paths[&handler.path][&handler.method];
        let what = format!("{} {} ({})", handler.method, handler.path, handler.at);
        // The request body, with a schema for each content type.
        match op.get("requestBody") {
            Some(body) if handler.reads_body => {
                let content = body["content"].as_object().unwrap();
                if content.is_empty() || content.values().any(|c| c.get("schema").is_none()) {
                    missing.push(format!("{what}: a request body without a schema"));
                }
            }
            Some(_) => missing.push(format!("{what}: documents a body its handler does not read")),
            None if handler.reads_body => missing.push(format!("{what}: no request body")),
            None => {}
        }
        let answers = op["responses"].as_object().unwrap();
        // Raw bytes are binary strings, which generators make byte streams of.
        let bodies = op.get("requestBody").into_iter().chain(answers.values());
        for (media, content) in bodies.filter_map(|b| b["content"].as_object()).flatten() {
            let raw = media == "application/octet-stream" || media == "application/x-tar";
            if raw && content["schema"] != serde_json::json!({"type": "string", "format": "binary"}) {
                missing.push(format!("{what}: {media} is not a binary string: {}", content["schema"]));
            }
        }
        // A success answer; every one with content has a schema, and only 204 and 101 have none.
        let successes: Vec<(&String, &Value)> =
            answers.iter().filter(|(s, _)| s.starts_with('2') || s.as_str() == "101").collect();
        if successes.is_empty() {
            missing.push(format!("{what}: no success answer"));
        }
        for (status, answer) in successes {
            let content = answer.get("content").and_then(Value::as_object);
            let bare = matches!(status.as_str(), "204" | "101");
            match content {
                None if !bare => missing.push(format!("{what}: {status} has no content")),
                Some(c) if c.values().any(|c| c.get("schema").is_none()) => {
                    missing.push(format!("{what}: {status} has content without a schema"))
                }
                _ => {}
            }
        }
        // Errors: each one is the envelope, and the ones every such route can answer are there.
        for (status, answer) in answers.iter().filter(|(s, _)| s.starts_with('4') || s.starts_with('5')) {
            if !is_envelope(answer) {
                missing.push(format!("{what}: {status} is not the error envelope"));
            }
        }
        let authenticated =
            op["security"].as_array().is_none_or(|s| s.iter().any(|r| r != &Value::Object(Default::default())));
        let mut expected = vec!["500"];
        if authenticated {
            expected.extend(["401", "503"]);
        }
        if handler.reads_body {
            expected.push("400");
        }
        if handler.path.contains('{') {
            expected.push("404");
        }
        if handler.path.starts_with("/v1/namespaces/{ns}") {
            expected.push("429");
        }
        for status in expected {
            if !answers.contains_key(status) {
                missing.push(format!("{what}: no {status} answer"));
            }
        }
    }
    assert!(missing.is_empty(), "incomplete OpenAPI document:\n{}", missing.join("\n"));

    // The envelope's code is an enum of exactly the codes the server answers.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["ErrorDetail"]["properties"]["code"]["$ref"], "#/components/schemas/ErrorCode");
    let codes: Vec<&str> =
        schemas["ErrorCode"]["enum"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let server: Vec<&str> = bulkhead_api::ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(codes, server);
}
