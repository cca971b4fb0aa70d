//! The authorization matrix: every route of the OpenAPI document × every kind of principal (the
//! platform admin, a key of each role, a user signed in through the namespace's OpenID Connect
//! provider, a sandbox's workload token, no token) × own, foreign and missing namespace, against
//! a table written here by hand from PRODUCT.md's role table and the built-in policies. A route
//! without a row fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../oidc/tests/support/provider.rs"]
mod oidc_provider;

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bulkhead_core::outbound::OutboundPolicy;
use common::{assert_envelope, namespace_body, read_events, Harness, Reply};
use http_body_util::BodyExt;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    PlatformAdmin,
    Owner,
    Admin,
    Developer,
    Viewer,
    /// A user of namespace alpha's identity provider whose group maps to `developer`.
    SsoDeveloper,
    /// The workload token of a sandbox of alpha: the sandbox the route's `{id}` names when it
    /// names one, so that it asks about itself.
    Workload,
    Anonymous,
}

const EVERYONE: [Who; 8] = [
    Who::PlatformAdmin,
    Who::Owner,
    Who::Admin,
    Who::Developer,
    Who::Viewer,
    Who::SsoDeveloper,
    Who::Workload,
    Who::Anonymous,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Own,
    Foreign,
    Missing,
}

/// The expected status for `who` on `op` in its own namespace (or at platform level).
fn expected_own(op: &str, who: Who) -> u16 {
    use Who::*;
    if who == Anonymous {
        return if op == "GET /healthz" { 200 } else { 401 };
    }
    if who == SsoDeveloper {
        // A user's token is one of the namespace's provider: it signs in only on a path that
        // names that namespace, and is then a developer.
        return match op {
            "GET /healthz" => 200,
            _ if !op.contains("{ns}") => 401,
            _ => expected_own(op, Developer),
        };
    }
    if who == Workload {
        // A sandbox has no role: the built-in policies grant it only the secrets injected into
        // it (no route) and itself.
        return match op {
            "GET /healthz" | "GET /v1/namespaces/{ns}/sandboxes/{id}" => 200,
            // Reading its own processes is reading itself (`sandbox.get`).
            "GET /v1/namespaces/{ns}/sandboxes/{id}/processes"
            | "GET /v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}"
            | "GET /v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/output" => 200,
            _ => 403,
        };
    }
    // `success` when the role may, 403 when it may not.
    let may = |allowed: bool, success: u16| if allowed { success } else { 403 };
    let platform = who == PlatformAdmin;
    let managers = matches!(who, PlatformAdmin | Owner | Admin);
    // Identity settings and policies are the owner's: an admin could otherwise grant itself
    // what the roles withhold.
    let owners = matches!(who, PlatformAdmin | Owner);
    // Running code and file contents need a developer; a viewer sees metadata only.
    let developers = who != Viewer;
    match op {
        "GET /healthz" => 200,
        "POST /v1/namespaces" => may(platform, 201),
        "GET /v1/namespaces" | "GET /v1/namespaces/{ns}" => 200,
        "GET /v1/namespaces/{ns}/permissions" => 200,
        "PATCH /v1/namespaces/{ns}" => may(platform, 200),
        "DELETE /v1/namespaces/{ns}" => may(platform, 204),
        "POST /v1/namespaces/{ns}/keys" => may(managers, 201),
        "GET /v1/namespaces/{ns}/keys" | "GET /v1/namespaces/{ns}/keys/{id}" => may(managers, 200),
        "DELETE /v1/namespaces/{ns}/keys/{id}" => may(managers, 204),
        "GET /v1/namespaces/{ns}/audit" | "GET /v1/namespaces/{ns}/audit/verify" => 200,
        "GET /v1/namespaces/{ns}/usage" | "GET /v1/namespaces/{ns}/metrics" => 200,
        "GET /v1/namespaces/{ns}/logs" => 200,
        "GET /metrics" => may(platform, 200),
        "GET /v1/audit" | "GET /v1/audit/verify" => may(platform, 200),
        "GET /v1/namespaces/{ns}/sandboxes" | "GET /v1/namespaces/{ns}/sandboxes/{id}" => 200,
        "POST /v1/namespaces/{ns}/sandboxes" => may(developers, 201),
        "DELETE /v1/namespaces/{ns}/sandboxes/{id}" => may(developers, 204),
        "POST /v1/namespaces/{ns}/sandboxes/{id}/exec" => may(developers, 200),
        "GET /v1/namespaces/{ns}/sandboxes/{id}/files" => may(developers, 200),
        "PUT /v1/namespaces/{ns}/sandboxes/{id}/files" => may(developers, 204),
        // Processes: reading them is reading the sandbox; running, writing, signalling,
        // resizing and attaching are `sandbox.exec`.
        "GET /v1/namespaces/{ns}/sandboxes/{id}/processes"
        | "GET /v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}"
        | "GET /v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/output" => 200,
        "POST /v1/namespaces/{ns}/sandboxes/{id}/processes" => may(developers, 200),
        "POST /v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/stdin" => may(developers, 200),
        "POST /v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/signal"
        | "POST /v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/resize" => may(developers, 204),
        // In process there is no connection to upgrade: past authorization and the lookups, the
        // request is refused as one that cannot upgrade.
        "GET /v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/attach" => may(developers, 400),
        "GET /v1/namespaces/{ns}/projects" => 200,
        "POST /v1/namespaces/{ns}/projects" => may(developers, 201),
        "DELETE /v1/namespaces/{ns}/projects/{id}" => may(developers, 204),
        "GET /v1/namespaces/{ns}/filesystems" | "GET /v1/namespaces/{ns}/filesystems/{id}" => 200,
        "POST /v1/namespaces/{ns}/filesystems" => may(developers, 201),
        "PATCH /v1/namespaces/{ns}/filesystems/{id}" => may(developers, 200),
        "DELETE /v1/namespaces/{ns}/filesystems/{id}" => may(developers, 204),
        "GET /v1/namespaces/{ns}/filesystems/{id}/archive" => may(developers, 200),
        "PUT /v1/namespaces/{ns}/filesystems/{id}/archive" => may(developers, 200),
        "GET /v1/namespaces/{ns}/filesystems/{id}/files" => may(developers, 200),
        "PUT /v1/namespaces/{ns}/filesystems/{id}/files" => may(developers, 204),
        "DELETE /v1/namespaces/{ns}/filesystems/{id}/files" => may(developers, 204),
        "GET /v1/namespaces/{ns}/identity" => may(managers, 200),
        "PUT /v1/namespaces/{ns}/identity" => may(owners, 200),
        "POST /v1/namespaces/{ns}/policies" => may(owners, 201),
        "GET /v1/namespaces/{ns}/policies" => may(managers, 200),
        "DELETE /v1/namespaces/{ns}/policies/{id}" => may(owners, 204),
        "POST /v1/namespaces/{ns}/authz/explain" => may(managers, 200),
        "GET /v1/policy-schema" => 200,
        "POST /v1/namespaces/{ns}/secrets" => may(managers, 201),
        "GET /v1/namespaces/{ns}/secrets" => 200,
        "DELETE /v1/namespaces/{ns}/secrets/{name}" => may(managers, 204),
        // Images: `{name}` is a key's id here, which names no image: an import gets past
        // authorization to the name's check, a read or a delete to the lookup.
        "PUT /v1/namespaces/{ns}/images/{name}/archive" => may(developers, 400),
        // A pull gets past authorization to the check of its source, which names no registry.
        "POST /v1/namespaces/{ns}/images" => may(developers, 400),
        "GET /v1/namespaces/{ns}/images" => 200,
        "GET /v1/namespaces/{ns}/images/{name}" => 404,
        "DELETE /v1/namespaces/{ns}/images/{name}" => may(developers, 404),
        // A snapshot of the world's sandbox (booted from the default image).
        "POST /v1/namespaces/{ns}/sandboxes/{id}/snapshot" => may(developers, 201),
        // Public images are the operator's alone.
        "PUT /v1/images/{name}/archive" => may(platform, 400),
        "POST /v1/images" => may(platform, 400),
        "GET /v1/images" => may(platform, 200),
        "DELETE /v1/images/{name}" => may(platform, 404),
        // Agents: the world's agent `coder` has one deployed version and no task.
        "POST /v1/namespaces/{ns}/agents" => may(developers, 201),
        "GET /v1/namespaces/{ns}/agents" | "GET /v1/namespaces/{ns}/agents/{agent}" => 200,
        "GET /v1/namespaces/{ns}/agents/{agent}/versions" => 200,
        "DELETE /v1/namespaces/{ns}/agents/{agent}" => may(developers, 204),
        // The body is JSON, not a bundle: refused once the role may push.
        "POST /v1/namespaces/{ns}/agents/{agent}/versions" => may(developers, 400),
        "POST /v1/namespaces/{ns}/agents/{agent}/deploy" => may(developers, 400),
        // One version deployed: nothing to roll back to.
        "POST /v1/namespaces/{ns}/agents/{agent}/rollback" => may(developers, 409),
        // Tasks: the world's task of `coder` has completed (its agent exits at once).
        "POST /v1/namespaces/{ns}/tasks" => may(developers, 400),
        "GET /v1/namespaces/{ns}/tasks" => 200,
        "GET /v1/namespaces/{ns}/tasks/{id}" | "GET /v1/namespaces/{ns}/tasks/{id}/messages" => may(developers, 200),
        "GET /v1/namespaces/{ns}/tasks/{id}/state" => may(developers, 200),
        "PUT /v1/namespaces/{ns}/tasks/{id}/state" => may(developers, 204),
        "POST /v1/namespaces/{ns}/tasks/{id}/events" => may(developers, 409),
        "POST /v1/namespaces/{ns}/tasks/{id}/cancel" => may(developers, 200),
        // Warm pools: `{image}` is the public default image, whose pool in a namespace only the
        // platform admin sizes (a namespace's admins size their own images' pools).
        "GET /v1/namespaces/{ns}/pools" => 200,
        "PUT /v1/namespaces/{ns}/pools/{image}" => may(platform, 200),
        "DELETE /v1/namespaces/{ns}/pools/{image}" => may(platform, 204),
        other => panic!("route {other} has no row in the authorization matrix; add one"),
    }
}

fn expected(op: &str, who: Who, target: Target) -> u16 {
    let own = expected_own(op, who);
    if !op.contains("{ns}") || who == Who::Anonymous {
        return own;
    }
    match (target, who) {
        (Target::Own, _) => own,
        (Target::Foreign, Who::PlatformAdmin) => own,
        // Another namespace has another provider (or none): the user's token signs in nowhere
        // else, the same for a namespace that does not exist.
        (Target::Foreign | Target::Missing, Who::SsoDeveloper) => 401,
        // Another tenant's namespace and one that does not exist look the same to everyone.
        (Target::Foreign | Target::Missing, _) => 404,
    }
}

fn body_for(method: &Method, template: &str) -> Value {
    match (method.as_str(), template) {
        ("POST", "/v1/namespaces") => namespace_body("gamma"),
        ("PATCH", "/v1/namespaces/{ns}/filesystems/{id}") => json!({"size_bytes": 32 << 20}),
        ("PATCH", _) => json!({"quotas": {"max_sandboxes": 3}}),
        // Size 0: the world keeps no pool sandbox.
        ("PUT", "/v1/namespaces/{ns}/pools/{image}") => json!({"size": 0}),
        ("POST", "/v1/namespaces/{ns}/keys") => json!({"name": "fresh", "role": "developer"}),
        ("POST", "/v1/namespaces/{ns}/sandboxes") => json!({"memory_bytes": 64 << 20}),
        ("POST", "/v1/namespaces/{ns}/sandboxes/{id}/exec") => json!({"cmd": ["true"]}),
        ("PUT", "/v1/namespaces/{ns}/sandboxes/{id}/files") => json!("file contents"),
        ("POST", "/v1/namespaces/{ns}/sandboxes/{id}/processes") => json!({"cmd": ["true"]}),
        ("POST", "/v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/signal") => json!({"signal": "CONT"}),
        ("POST", "/v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/resize") => json!({"rows": 30, "cols": 100}),
        ("POST", "/v1/namespaces/{ns}/sandboxes/{id}/snapshot") => json!({"name": "snap"}),
        ("POST", "/v1/namespaces/{ns}/projects") => json!({"name": "fresh"}),
        ("POST", "/v1/namespaces/{ns}/filesystems") => json!({"name": "fresh", "size_bytes": 16 << 20}),
        ("PUT", "/v1/namespaces/{ns}/identity") => json!({"oidc": {
            "issuer": "https://idp.example.com", "audience": "bulkhead", "role_mappings": {"eng": "developer"}}}),
        ("POST", "/v1/namespaces/{ns}/policies") => json!({"name": "fresh",
            "policy": "permit(principal, action == Bulkhead::Action::\"sandbox.get\", resource);"}),
        ("POST", "/v1/namespaces/{ns}/secrets") => json!({"name": "fresh", "value": "v"}),
        ("POST", "/v1/namespaces/{ns}/images" | "/v1/images") => json!({"name": "fresh", "source": "Not A Reference"}),
        ("POST", "/v1/namespaces/{ns}/agents") => json!({"name": "fresh"}),
        ("POST", "/v1/namespaces/{ns}/agents/{agent}/versions") => json!({"not": "a bundle"}),
        ("POST", "/v1/namespaces/{ns}/agents/{agent}/deploy") => {
            json!({"version": "ver_00000000000000000000000000000000"})
        }
        ("POST", "/v1/namespaces/{ns}/tasks") => json!({"agent": "nosuch"}),
        ("PUT", "/v1/namespaces/{ns}/tasks/{id}/state") => json!({"step": 1}),
        ("POST", "/v1/namespaces/{ns}/tasks/{id}/events") => json!({"type": "message", "content": "hi"}),
        _ => Value::Null,
    }
}

struct World {
    h: Harness,
    tokens: Vec<(Who, Option<String>)>,
    /// A developer key of each namespace, the one the key routes act on.
    victim: [(String, String); 2],
    /// The resource of each namespace that the route's `{id}` names, when it is not a key.
    resources: Option<[String; 2]>,
    /// The id prefix of that resource, for the missing case.
    missing_prefix: &'static str,
    /// For the routes of one process: a process of each namespace's sandbox that ended, and one
    /// that runs on a terminal.
    processes: Option<[(String, String); 2]>,
}

async fn world_for(template: &str, who: Who) -> World {
    let mut w = world().await;
    let admin = w.h.admin.clone();
    let make = |kind: &'static str| {
        let h = &w.h;
        let admin = admin.clone();
        async move {
            let mut ids = Vec::new();
            for ns in ["alpha", "beta"] {
                let id = match kind {
                    "sbx_" => h.create_sandbox(ns, &admin, json!({"memory_bytes": 64 << 20})).await,
                    "pol_" => {
                        let body = json!({"name": "p",
                            "policy": "forbid(principal, action == Bulkhead::Action::\"sandbox.exec\", resource);"});
                        let r =
                            h.call(Method::POST, &format!("/v1/namespaces/{ns}/policies"), Some(&admin), body).await;
                        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
                        r.body["id"].as_str().unwrap().to_owned()
                    }
                    "secret" => {
                        let body = json!({"name": "s", "value": "hunter2"});
                        let r = h.call(Method::POST, &format!("/v1/namespaces/{ns}/secrets"), Some(&admin), body).await;
                        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
                        "s".to_owned()
                    }
                    "agent" => {
                        deploy_agent(h, ns, &admin).await;
                        "coder".to_owned()
                    }
                    "tsk_" => {
                        deploy_agent(h, ns, &admin).await;
                        let path = format!("/v1/namespaces/{ns}/tasks");
                        let r = h.call(Method::POST, &path, Some(&admin), json!({"agent": "coder"})).await;
                        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
                        let id = r.body["id"].as_str().unwrap().to_owned();
                        // Its agent exits at once: the task completes, and stays.
                        let get = format!("{path}/{id}");
                        for _ in 0..600 {
                            let r = h.call(Method::GET, &get, Some(&admin), Value::Null).await;
                            if r.body["status"] != "starting" && r.body["status"] != "running" {
                                break;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        id
                    }
                    "prj_" => {
                        let r = h
                            .call(
                                Method::POST,
                                &format!("/v1/namespaces/{ns}/projects"),
                                Some(&admin),
                                json!({"name": "p"}),
                            )
                            .await;
                        r.body["id"].as_str().unwrap().to_owned()
                    }
                    _ => {
                        let body = json!({"name": "f", "size_bytes": 16 << 20});
                        let r =
                            h.call(Method::POST, &format!("/v1/namespaces/{ns}/filesystems"), Some(&admin), body).await;
                        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
                        let id = r.body["id"].as_str().unwrap().to_owned();
                        let file = format!("/v1/namespaces/{ns}/filesystems/{id}/files?path=doomed.txt");
                        let r = h.call(Method::PUT, &file, Some(&admin), json!("bytes")).await;
                        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
                        id
                    }
                };
                ids.push(id);
            }
            [ids[0].clone(), ids[1].clone()]
        }
    };
    for (marker, kind) in [
        ("/sandboxes/{id}", "sbx_"),
        ("/projects/{id}", "prj_"),
        ("/filesystems/{id}", "fs_"),
        ("/policies/{id}", "pol_"),
        ("/secrets/{name}", "secret"),
        ("/agents/{agent}", "agent"),
        ("/tasks/{id}", "tsk_"),
    ] {
        if template.contains(marker) {
            let ids = make(kind).await;
            w.resources = Some(ids);
            w.missing_prefix = kind;
        }
    }
    if let (true, Some(sandboxes)) = (template.contains("/processes/{pid}"), &w.resources) {
        let mut pairs = Vec::new();
        for (ns, sbx) in ["alpha", "beta"].iter().zip(sandboxes) {
            let path = format!("/v1/namespaces/{ns}/sandboxes/{sbx}/processes");
            let start = |body: Value| w.h.call(Method::POST, &path, Some(&admin), body);
            let done = start(json!({"cmd": ["true"]})).await.body["id"].as_str().unwrap().to_owned();
            let live = start(json!({"cmd": ["cat"], "tty": {"rows": 24, "cols": 80}})).await;
            let live = live.body["id"].as_str().unwrap().to_owned();
            // Read to its end: the first process has exited.
            let out = w.h.call(Method::GET, &format!("{path}/{done}/output"), Some(&admin), Value::Null).await;
            assert_eq!(out.status, StatusCode::OK);
            pairs.push((done, live));
        }
        w.processes = Some([pairs[0].clone(), pairs[1].clone()]);
    }
    if who == Who::Workload {
        let sandbox = match (&w.resources, w.missing_prefix) {
            (Some([own, _]), "sbx_") => own.clone(),
            _ => w.h.create_sandbox("alpha", &admin, json!({"memory_bytes": 64 << 20})).await,
        };
        let (code, token, _) = w.h.sh("alpha", &sandbox, &admin, "cat /run/bulkhead/token").await;
        assert_eq!(code, 0);
        w.tokens.push((Who::Workload, Some(token.trim().to_owned())));
    }
    w
}

/// Agent `coder` of `ns` with one version deployed, whose command exits at once.
async fn deploy_agent(h: &Harness, ns: &str, admin: &str) {
    let r = h.call(Method::POST, &format!("/v1/namespaces/{ns}/agents"), Some(admin), json!({"name": "coder"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let dir = common::tempdir();
    std::fs::write(dir.path().join("agent.json"), r#"{"command": ["true"], "protocol": "acp"}"#).unwrap();
    let req = axum::http::Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/namespaces/{ns}/agents/coder/versions"))
        .header("authorization", format!("Bearer {admin}"))
        .body(axum::body::Body::from(common::agents::bundle(dir.path(), &[])))
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let version = r.body["id"].clone();
    let r = h
        .call(
            Method::POST,
            &format!("/v1/namespaces/{ns}/agents/coder/deploy"),
            Some(admin),
            json!({"version": version}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// The test identity provider, one for the whole test.
fn provider() -> &'static oidc_provider::TestProvider {
    static PROVIDER: OnceLock<oidc_provider::TestProvider> = OnceLock::new();
    PROVIDER.get_or_init(oidc_provider::TestProvider::start)
}

async fn world() -> World {
    // The test identity provider is on loopback: `--outbound-allow 127.0.0.0/8`.
    let h = Harness::with_config("runc", |c| {
        c.outbound.policy = OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
    })
    .await;
    h.create_namespace("alpha").await;
    h.create_namespace("beta").await;
    let issuer = provider().issuer();
    let body = json!({"oidc": {"issuer": issuer, "audience": "bulkhead", "role_mappings": {"eng": "developer"}}});
    let r = h.call(Method::PUT, "/v1/namespaces/alpha/identity", Some(&h.admin), body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let user = provider().mint(json!({"sub": "uma", "email": "uma@alpha.test", "groups": ["eng"]}), None);
    let mut tokens =
        vec![(Who::PlatformAdmin, Some(h.admin.clone())), (Who::SsoDeveloper, Some(user)), (Who::Anonymous, None)];
    for (who, role) in
        [(Who::Owner, "owner"), (Who::Admin, "admin"), (Who::Developer, "developer"), (Who::Viewer, "viewer")]
    {
        let (_, token) = h.create_key("alpha", role, role).await;
        tokens.push((who, Some(token)));
    }
    let (a, _) = h.create_key("alpha", "victim", "developer").await;
    let (b, _) = h.create_key("beta", "victim", "developer").await;
    World {
        h,
        tokens,
        victim: [("alpha".into(), a), ("beta".into(), b)],
        resources: None,
        missing_prefix: "key_",
        processes: None,
    }
}

fn operations() -> Vec<(Method, String)> {
    let doc = bulkhead_server::openapi();
    let value = serde_json::to_value(&doc).expect("openapi serializes");
    let mut ops = Vec::new();
    for (path, item) in value["paths"].as_object().expect("paths") {
        for (method, _) in item.as_object().expect("path item") {
            if let Ok(m) = method.to_uppercase().parse::<Method>() {
                ops.push((m, path.clone()));
            }
        }
    }
    assert!(ops.len() >= 21, "the OpenAPI document lost routes: {ops:?}");
    ops
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_every_principal_every_namespace() {
    let mut checked = 0;
    for (method, template) in operations() {
        let op = format!("{method} {template}");
        // A read changes nothing that another case sees: one world, with every principal's
        // token, serves all the cases of a GET route.
        let reads = if method == Method::GET { Some(world_for(&template, Who::Workload).await) } else { None };
        // The cases of a change that is refused (401, 403, 404, 400, 409) change nothing: they
        // share one world (with every principal's token), made when the first of them runs.
        let mut refused: Option<World> = None;
        for who in EVERYONE {
            let mut foreign_and_missing = Vec::new();
            for target in [Target::Own, Target::Foreign, Target::Missing] {
                if !template.contains("{ns}") && target != Target::Own {
                    continue;
                }
                // A fresh world per case of a change that goes through: deletes must not change
                // what later cases see.
                let fresh;
                let succeeds = (200..300).contains(&expected(&op, who, target));
                let w = match &reads {
                    Some(w) => w,
                    None if succeeds => {
                        fresh = world_for(&template, who).await;
                        &fresh
                    }
                    None => {
                        if refused.is_none() {
                            refused = Some(world_for(&template, Who::Workload).await);
                        }
                        refused.as_ref().expect("made just now")
                    }
                };
                let (ns, mut id) = match target {
                    Target::Own => (w.victim[0].0.clone(), w.victim[0].1.clone()),
                    Target::Foreign => (w.victim[1].0.clone(), w.victim[1].1.clone()),
                    Target::Missing => ("ghost".to_owned(), "key_00000000000000000000000000000000".to_owned()),
                };
                if let Some([a, b]) = &w.resources {
                    id = match target {
                        Target::Own => a.clone(),
                        Target::Foreign => b.clone(),
                        Target::Missing if w.missing_prefix == "secret" => "s".to_owned(),
                        Target::Missing if w.missing_prefix == "agent" => "coder".to_owned(),
                        Target::Missing => format!("{}00000000000000000000000000000000", w.missing_prefix),
                    };
                }
                let pid = match (&w.processes, target) {
                    (Some(p), Target::Own | Target::Foreign) => {
                        let (done, live) = &p[usize::from(target == Target::Foreign)];
                        if template.ends_with("/{pid}") || template.ends_with("/output") {
                            done.clone()
                        } else {
                            live.clone()
                        }
                    }
                    _ => "prc_00000000000000000000000000000000".to_owned(),
                };
                let mut path = template
                    .replace("{ns}", &ns)
                    .replace("{id}", &id)
                    .replace("{name}", &id)
                    .replace("{agent}", &id)
                    .replace("{image}", "default")
                    .replace("{pid}", &pid);
                if template.ends_with("/sandboxes/{id}/files") {
                    path.push_str(if method == Method::GET { "?path=/etc/hosts" } else { "?path=/tmp/written" });
                }
                if template.ends_with("/filesystems/{id}/files") {
                    path.push_str(match method.as_str() {
                        "GET" => "?path=.&list=true",
                        "PUT" => "?path=dir/written.txt",
                        _ => "?path=doomed.txt",
                    });
                }
                let token = w.tokens.iter().find(|(t, _)| *t == who).and_then(|(_, tok)| tok.clone());
                let body = if template.ends_with("/authz/explain") {
                    let victim = if target == Target::Foreign { &w.victim[1].1 } else { &w.victim[0].1 };
                    json!({"principal": format!("key:{victim}"), "action": "sandbox.exec",
                        "resource": format!("namespace:{ns}")})
                } else {
                    body_for(&method, &template)
                };
                let r = w.h.call(method.clone(), &path, token.as_deref(), body).await;
                let want = expected(&op, who, target);
                assert_eq!(r.status.as_u16(), want, "{op} as {who:?} on {target:?}: {}", r.body);
                if !r.status.is_success() {
                    let code = match want {
                        401 => "unauthenticated",
                        403 => "forbidden",
                        404 => "not_found",
                        400 => "invalid_request",
                        409 => "conflict",
                        _ => unreachable!(),
                    };
                    assert_envelope(&r, code);
                }
                if want == 404 && who != Who::PlatformAdmin {
                    let message = r.body["error"]["message"].as_str().unwrap_or_default().replace(&ns, "NS");
                    foreign_and_missing.push((r.status, message));
                }
                checked += 1;
            }
            if let [a, b] = foreign_and_missing.as_slice() {
                assert_eq!(a, b, "{op} as {who:?}: a foreign namespace must look exactly like a missing one");
            }
        }
    }
    assert!(checked > 250, "only {checked} cases ran");
}

#[tokio::test]
async fn a_key_lists_only_its_own_namespace() {
    let w = world().await;
    let token = w.tokens.iter().find(|(t, _)| *t == Who::Viewer).and_then(|(_, t)| t.clone());
    let r = w.h.call(Method::GET, "/v1/namespaces", token.as_deref(), Value::Null).await;
    let names: Vec<&str> = r.body["items"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alpha"]);
    let r = w.h.call(Method::GET, "/v1/namespaces", Some(&w.h.admin), Value::Null).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn admins_cannot_mint_or_revoke_owner_keys_but_owners_can() {
    let w = world().await;
    let admin = w.tokens.iter().find(|(t, _)| *t == Who::Admin).and_then(|(_, t)| t.clone()).unwrap();
    let owner = w.tokens.iter().find(|(t, _)| *t == Who::Owner).and_then(|(_, t)| t.clone()).unwrap();
    let r =
        w.h.call(Method::POST, "/v1/namespaces/alpha/keys", Some(&admin), json!({"name": "o2", "role": "owner"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r =
        w.h.call(Method::POST, "/v1/namespaces/alpha/keys", Some(&owner), json!({"name": "o2", "role": "owner"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let r = w.h.call(Method::DELETE, &format!("/v1/namespaces/alpha/keys/{id}"), Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = w.h.call(Method::DELETE, &format!("/v1/namespaces/alpha/keys/{id}"), Some(&owner), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
}

#[tokio::test]
async fn revocation_and_expiry_take_effect_on_the_next_request() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let (id, token) = h.create_key("alpha", "ci", "developer").await;
    let r = h.call(Method::GET, "/v1/namespaces/alpha", Some(&token), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/keys/{id}"), Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h.call(Method::GET, "/v1/namespaces/alpha", Some(&token), Value::Null).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_envelope(&r, "unauthenticated");

    // A key whose namespace is deleted dies with it.
    let (_, token) = h.create_key("alpha", "ci2", "viewer").await;
    assert_eq!(h.call(Method::GET, "/v1/namespaces/alpha", Some(&token), Value::Null).await.status, StatusCode::OK);
    assert_eq!(
        h.call(Method::DELETE, "/v1/namespaces/alpha", Some(&h.admin), Value::Null).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.call(Method::GET, "/v1/namespaces", Some(&token), Value::Null).await.status, StatusCode::UNAUTHORIZED);

    // An expired key is refused: expiry is checked against the clock on every request.
    h.create_namespace("alpha").await;
    let soon =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + std::time::Duration::from_secs(3)).to_string();
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/alpha/keys",
            Some(&h.admin),
            json!({"name": "brief", "role": "viewer", "expires_at": soon}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let token = r.body["token"].as_str().unwrap().to_owned();
    assert_eq!(h.call(Method::GET, "/v1/namespaces/alpha", Some(&token), Value::Null).await.status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert_eq!(
        h.call(Method::GET, "/v1/namespaces/alpha", Some(&token), Value::Null).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// Processes of the sandbox a scope walk goes over: one that ended (`done`) and one that runs
/// on a terminal (`live`).
struct Pids<'a> {
    done: &'a str,
    live: &'a str,
}

/// Process ids for a walk over a sandbox that has none (or may not be seen).
const NO_PIDS: Pids<'static> =
    Pids { done: "prc_0123456789abcdef0123456789abcdef", live: "prc_0123456789abcdef0123456789abcdee" };

/// One request of the scope walk: a route that takes a sandbox id, on sandbox `id`, as `token`.
/// Exec goes both buffered and streamed.
fn sandbox_requests(method: &Method, template: &str, id: &str, token: &str, pids: &Pids<'_>) -> Vec<Request<Body>> {
    let pid = if template.ends_with("/{pid}") || template.ends_with("/output") { pids.done } else { pids.live };
    let path = template.replace("{ns}", "alpha").replace("{id}", id).replace("{pid}", pid);
    let base = || Request::builder().method(method.clone()).header("authorization", format!("Bearer {token}"));
    let json_body = |b: Value| Body::from(b.to_string());
    match (method.as_str(), template) {
        ("GET", "/v1/namespaces/{ns}/sandboxes/{id}") | ("DELETE", "/v1/namespaces/{ns}/sandboxes/{id}") => {
            vec![base().uri(path).body(Body::empty()).unwrap()]
        }
        ("POST", "/v1/namespaces/{ns}/sandboxes/{id}/exec") => {
            let cmd = json!({"cmd": ["sh", "-c", "cat /workspace/data.txt; echo touched > /workspace/data.txt"]});
            vec![
                base().uri(&path).header("content-type", "application/json").body(json_body(cmd.clone())).unwrap(),
                base()
                    .uri(&path)
                    .header("content-type", "application/json")
                    .header("accept", "application/x-ndjson")
                    .body(json_body(cmd))
                    .unwrap(),
            ]
        }
        ("GET", "/v1/namespaces/{ns}/sandboxes/{id}/files") => {
            vec![base().uri(format!("{path}?path=/workspace/data.txt")).body(Body::empty()).unwrap()]
        }
        ("PUT", "/v1/namespaces/{ns}/sandboxes/{id}/files") => {
            vec![base().uri(format!("{path}?path=/workspace/data.txt")).body(Body::from("overwritten")).unwrap()]
        }
        ("POST", "/v1/namespaces/{ns}/sandboxes/{id}/processes") => {
            let cmd = json!({"cmd": ["true"]});
            vec![base().uri(path).header("content-type", "application/json").body(json_body(cmd)).unwrap()]
        }
        ("GET", "/v1/namespaces/{ns}/sandboxes/{id}/processes")
        | ("GET", "/v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}")
        | ("GET", "/v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/output") => {
            vec![base().uri(path).body(Body::empty()).unwrap()]
        }
        ("POST", "/v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/stdin") => {
            vec![base().uri(path).body(Body::from("typed")).unwrap()]
        }
        ("POST", "/v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/signal") => {
            let body = json!({"signal": "CONT"});
            vec![base().uri(path).header("content-type", "application/json").body(json_body(body)).unwrap()]
        }
        ("POST", "/v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/resize") => {
            let body = json!({"rows": 30, "cols": 100});
            vec![base().uri(path).header("content-type", "application/json").body(json_body(body)).unwrap()]
        }
        ("GET", "/v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/attach") => {
            // In process there is no connection to upgrade: a request that gets past authorization
            // and the lookups is refused as one that cannot upgrade (a 400), never a 404.
            vec![base()
                .uri(path)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .body(Body::empty())
                .unwrap()]
        }
        ("POST", "/v1/namespaces/{ns}/sandboxes/{id}/snapshot") => {
            let body = json!({"name": "scoped"});
            vec![base().uri(path).header("content-type", "application/json").body(json_body(body)).unwrap()]
        }
        _ => panic!("{method} {template} takes a sandbox id and has no request in the scope walk; add one"),
    }
}

/// Every route of the OpenAPI document that takes a sandbox id, deletes last.
fn sandbox_operations() -> Vec<(Method, String)> {
    let mut ops: Vec<(Method, String)> =
        operations().into_iter().filter(|(_, path)| path.contains("/sandboxes/{id}")).collect();
    ops.sort_by_key(|(m, p)| (*m == Method::DELETE, *m == Method::GET, p.clone()));
    assert!(ops.len() >= 5, "{ops:?}");
    ops
}

/// The `data:` lines of a live tail until one carries `until`.
async fn tail_until(body: &mut Body, until: &str) -> Vec<Value> {
    read_events(body, Duration::from_secs(30), |records| {
        records.iter().any(|r| r["data"].as_str().is_some_and(|d| d.contains(until)))
    })
    .await
}

/// A sandbox carries the project of the filesystem it mounts: a key limited to project A sees a
/// sandbox that mounts a project-B filesystem exactly as a missing one on every route that takes
/// a sandbox id (walked from the OpenAPI document), in lists and in logs, and changes nothing
/// through it; policies on project B hold for the sandbox; the same key works on a sandbox of
/// project A.
#[tokio::test]
async fn a_key_limited_to_projects_sees_sandboxes_of_other_projects_as_missing() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    let post = |path: &'static str, body: Value| {
        let h = &h;
        let admin = admin.clone();
        async move {
            let r = h.call(Method::POST, &format!("/v1/namespaces/alpha/{path}"), Some(&admin), body).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r.body["id"].as_str().unwrap().to_owned()
        }
    };
    let pa = post("projects", json!({"name": "pa"})).await;
    let pb = post("projects", json!({"name": "pb"})).await;
    let fsa = post("filesystems", json!({"name": "fa", "size_bytes": 16 << 20, "project": pa})).await;
    let fsb = post("filesystems", json!({"name": "fb", "size_bytes": 16 << 20, "project": pb})).await;
    for (fs, data) in [(&fsa, "project-a-data"), (&fsb, "project-b-data")] {
        let path = format!("/v1/namespaces/alpha/filesystems/{fs}/files?path=data.txt");
        let req = Request::builder()
            .method(Method::PUT)
            .uri(path)
            .header("authorization", format!("Bearer {admin}"))
            .body(Body::from(data))
            .unwrap();
        assert_eq!(h.send(req).await.status, StatusCode::NO_CONTENT);
    }
    let mount = |fs: &str| json!({"memory_bytes": 64 << 20, "filesystem": {"id": fs, "mode": "rw"}});
    let sa = h.create_sandbox("alpha", &admin, mount(&fsa)).await;
    let sb = h.create_sandbox("alpha", &admin, mount(&fsb)).await;
    let scoped = h.create_project_key("alpha", "scoped", "developer", &[&pa]).await;
    h.sh("alpha", &sb, &admin, "echo b-before").await;
    h.sh("alpha", &sa, &admin, "echo a-before").await;

    // Mounting project B's filesystem is refused as a missing filesystem.
    let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", Some(&scoped), mount(&fsb)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_envelope(&r, "not_found");

    // Every route that takes a sandbox id: project B's sandbox answers as a missing one does.
    let missing = "sbx_0123456789abcdef0123456789abcdef";
    let mut walked = 0;
    for (method, template) in sandbox_operations() {
        let seen = sandbox_requests(&method, &template, &sb, &scoped, &NO_PIDS);
        let absent = sandbox_requests(&method, &template, missing, &scoped, &NO_PIDS);
        for (req, ghost) in seen.into_iter().zip(absent) {
            let r: Reply = h.send(req).await;
            let g: Reply = h.send(ghost).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {template}: {}", r.body);
            assert_envelope(&r, "not_found");
            assert_eq!(
                r.body["error"]["message"].as_str().unwrap().replace(&sb, "ID"),
                g.body["error"]["message"].as_str().unwrap().replace(missing, "ID"),
                "{method} {template}: another project's sandbox must look exactly like a missing one"
            );
            walked += 1;
        }
    }
    assert!(walked >= 6, "{walked}");

    // Not listed; its logs are missing when asked for, absent otherwise, live or not.
    let r = h.call(Method::GET, "/v1/namespaces/alpha/sandboxes", Some(&scoped), Value::Null).await;
    let ids: Vec<&str> = r.body["items"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [sa.as_str()], "{}", r.body);
    for id in [sb.as_str(), missing] {
        let r =
            h.call(Method::GET, &format!("/v1/namespaces/alpha/logs?sandbox={id}"), Some(&scoped), Value::Null).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
        assert_envelope(&r, "not_found");
    }
    let r = h.call(Method::GET, "/v1/namespaces/alpha/logs", Some(&scoped), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let records = r.body["records"].as_array().unwrap();
    assert!(records.iter().any(|r| r["sandbox"] == sa.as_str()), "{}", r.body);
    assert!(records.iter().all(|r| r["sandbox"] != sb.as_str()), "project B's output leaked: {}", r.body);
    let mut body = h.open_events("/v1/namespaces/alpha/logs?after=0", &scoped).await;
    let replayed = tail_until(&mut body, "a-before").await;
    h.sh("alpha", &sb, &admin, "echo b-live").await;
    h.sh("alpha", &sa, &admin, "echo a-live").await;
    let live = tail_until(&mut body, "a-live").await;
    for r in replayed.iter().chain(&live) {
        assert_ne!(r["sandbox"], sb.as_str(), "a tail showed project B's output: {r}");
    }
    drop(body);

    // Nor do the audit records of project B's sandbox, filesystem and project show.
    let r = h.call(Method::GET, "/v1/namespaces/alpha/audit?limit=1000", Some(&scoped), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let resources: Vec<&str> =
        r.body["items"].as_array().unwrap().iter().map(|r| r["resource"].as_str().unwrap()).collect();
    assert!(resources.contains(&format!("sandbox:{sa}").as_str()), "{resources:?}");
    for hidden in [format!("sandbox:{sb}"), format!("filesystem:{fsb}"), format!("project:{pb}")] {
        assert!(!resources.contains(&hidden.as_str()), "{hidden} leaked through the audit log: {resources:?}");
    }

    // Nothing changed through it: it runs, and its file holds what it held.
    let r = h.call(Method::GET, &format!("/v1/namespaces/alpha/sandboxes/{sb}"), Some(&admin), Value::Null).await;
    assert_eq!(r.body["status"], "running", "{}", r.body);
    let (code, out, _) = h.sh("alpha", &sb, &admin, "cat /workspace/data.txt").await;
    assert_eq!((code, out.as_str()), (0, "project-b-data"));

    // Policies on project B hold for its sandboxes, for keys of the whole namespace too.
    let (_, dev) = h.create_key("alpha", "dev", "developer").await;
    let rule = format!(
        "forbid(principal, action == Bulkhead::Action::\"sandbox.exec\", resource in Bulkhead::Project::\"{pb}\");"
    );
    post("policies", json!({"name": "no-b-exec", "policy": rule})).await;
    let exec = |id: &str| format!("/v1/namespaces/alpha/sandboxes/{id}/exec");
    let r = h.call(Method::POST, &exec(&sb), Some(&dev), json!({"cmd": ["true"]})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_envelope(&r, "forbidden");
    let r = h.call(Method::POST, &exec(&sa), Some(&dev), json!({"cmd": ["true"]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // `authz/explain` by a manager limited to project A: project B's sandbox, as principal or as
    // resource, is explained exactly as a missing one, so the answer never tells it exists.
    let scoped_admin = h.create_project_key("alpha", "scoped-admin", "admin", &[&pa]).await;
    let (dev_id, _) = h.create_key("alpha", "dev2", "developer").await;
    let explain = |principal: String, resource: String| {
        let h = &h;
        let token = scoped_admin.clone();
        async move {
            let body = json!({"principal": principal, "action": "sandbox.exec", "resource": resource});
            h.call(Method::POST, "/v1/namespaces/alpha/authz/explain", Some(&token), body).await
        }
    };
    let seen = explain(format!("sandbox:{sb}"), "namespace:alpha".into()).await;
    let ghost = explain(format!("sandbox:{missing}"), "namespace:alpha".into()).await;
    assert_eq!(seen.status, StatusCode::BAD_REQUEST, "{}", seen.body);
    assert_eq!(
        seen.body["error"]["message"].as_str().unwrap().replace(&sb, "ID"),
        ghost.body["error"]["message"].as_str().unwrap().replace(missing, "ID"),
        "explain told another project's sandbox from a missing one"
    );
    let seen = explain(format!("key:{dev_id}"), format!("sandbox:{sb}")).await;
    let ghost = explain(format!("key:{dev_id}"), format!("sandbox:{missing}")).await;
    assert_eq!(seen.status, StatusCode::OK, "{}", seen.body);
    assert_eq!(seen.body, ghost.body, "explain told another project's sandbox from a missing one");
    // The namespace-wide admin is told the truth: the policy on project B denies.
    let body =
        json!({"principal": format!("key:{dev_id}"), "action": "sandbox.exec", "resource": format!("sandbox:{sb}")});
    let r = h.call(Method::POST, "/v1/namespaces/alpha/authz/explain", Some(&admin), body).await;
    assert_eq!(r.body["decision"], "deny", "{}", r.body);

    // The same key, on project A's sandbox: every route works.
    let processes = format!("/v1/namespaces/alpha/sandboxes/{sa}/processes");
    let start = |body: Value| h.call(Method::POST, &processes, Some(&admin), body);
    let done = start(json!({"cmd": ["echo", "done"]})).await.body["id"].as_str().unwrap().to_owned();
    let live =
        start(json!({"cmd": ["cat"], "tty": {"rows": 24, "cols": 80}})).await.body["id"].as_str().unwrap().to_owned();
    // Its output ends with its exit.
    let out = h.call(Method::GET, &format!("{processes}/{done}/output"), Some(&admin), Value::Null).await;
    assert!(String::from_utf8_lossy(&out.raw).contains("\"exit\""), "{}", String::from_utf8_lossy(&out.raw));
    let pids = Pids { done: &done, live: &live };
    for (method, template) in sandbox_operations() {
        for req in sandbox_requests(&method, &template, &sa, &scoped, &pids) {
            let r = h.send(req).await;
            if template.ends_with("/attach") {
                assert_eq!(r.status, StatusCode::BAD_REQUEST, "{template}: {}", String::from_utf8_lossy(&r.raw));
                assert!(r.body["error"]["message"].as_str().unwrap().starts_with("attach:"), "{}", r.body);
                continue;
            }
            assert!(r.status.is_success(), "{method} {template}: {} {}", r.status, String::from_utf8_lossy(&r.raw));
        }
    }
    let r = h.call(Method::GET, &format!("/v1/namespaces/alpha/sandboxes/{sa}"), Some(&admin), Value::Null).await;
    assert_eq!(r.body["status"], "deleted", "{}", r.body);
}

/// A secret the policies refuse to the sandbox being created refuses the create, and the audit
/// record says so: a denial of `secret.read`, naming the secret and the sandbox that would have
/// read it, with the forbid that decided.
#[tokio::test]
async fn a_secret_refused_at_create_is_audited_as_a_denial_naming_it() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    let (_, dev) = h.create_key("alpha", "dev", "developer").await;
    for name in ["db", "open"] {
        let r = h
            .call(Method::POST, "/v1/namespaces/alpha/secrets", Some(&admin), json!({"name": name, "value": "v"}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let rule = "forbid(principal, action == Bulkhead::Action::\"secret.read\", resource == Bulkhead::Secret::\"db\");";
    let r = h
        .call(Method::POST, "/v1/namespaces/alpha/policies", Some(&admin), json!({"name": "no-db", "policy": rule}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let policy = r.body["id"].as_str().unwrap().to_owned();
    // Whoever creates it, the platform admin included: the sandbox is the principal, decided by
    // its namespace's policies.
    for token in [&dev, &admin] {
        let body = json!({"memory_bytes": 64 << 20, "secrets": [
            {"name": "open", "env": "OPEN"}, {"name": "db", "env": "DB"}]});
        let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", Some(token), body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
        assert_envelope(&r, "forbidden");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("may not secret.read db") && message.contains(&policy), "{message}");
    }
    let r = h.call(Method::GET, "/v1/namespaces/alpha/audit?action=sandbox.create", Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let records = r.body["items"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{}", r.body);
    for record in records {
        assert_eq!(record["decision"], "deny", "{record}");
        assert_eq!(record["status"], 403, "{record}");
        let detail: Value = serde_json::from_str(record["detail"].as_str().unwrap()).unwrap();
        assert_eq!(detail["denied"], "secret.read", "{record}");
        assert_eq!(detail["denied_resource"], "secret:db", "{record}");
        assert!(detail["denied_principal"].as_str().unwrap().starts_with("sandbox:sbx_"), "{record}");
        assert_eq!(detail["policies"], json!([policy]), "{record}");
    }
}

/// A live tail is decided again every few seconds through the policies: one added while it runs
/// ends it, as a revoked key does.
#[tokio::test]
async fn a_policy_added_during_a_log_tail_ends_it() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let (_, dev) = h.create_key("alpha", "dev", "developer").await;
    let mut body = h.open_events("/v1/namespaces/alpha/logs", &dev).await;
    let rule =
        "forbid(principal in Bulkhead::Role::\"developer\", action == Bulkhead::Action::\"logs.read\", resource);";
    let r = h
        .call(Method::POST, "/v1/namespaces/alpha/policies", Some(&h.admin), json!({"name": "quiet", "policy": rule}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(frame) = body.frame().await {
            frame.expect("a frame");
        }
    })
    .await;
    assert!(ended.is_ok(), "the tail outlived the policy that forbids it");
    let r = h.call(Method::GET, "/v1/namespaces/alpha/logs", Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
}

/// The projects a new key may be limited to are bounded by the caller's scope, not by what the
/// policies let it do with projects: a `forbid` on `project.list` does not stop an owner from
/// minting a key of one of its namespace's projects, and a key limited to projects still cannot
/// mint one of another project.
#[tokio::test]
async fn a_new_keys_projects_are_bounded_by_scope_not_by_project_list() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let (_, owner) = h.create_key("alpha", "o", "owner").await;
    let mut projects = Vec::new();
    for name in ["a", "b"] {
        let r = h.call(Method::POST, "/v1/namespaces/alpha/projects", Some(&owner), json!({ "name": name })).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        projects.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let policy = json!({"name": "no-project-lists",
        "policy": "forbid(principal, action == Bulkhead::Action::\"project.list\", resource);"});
    let r = h.call(Method::POST, "/v1/namespaces/alpha/policies", Some(&owner), policy).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let key = |projects: Value| json!({"name": "k", "role": "owner", "projects": projects});
    let r = h.call(Method::POST, "/v1/namespaces/alpha/keys", Some(&owner), key(json!([projects[0]]))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let limited = r.body["token"].as_str().unwrap().to_owned();
    let r = h.call(Method::POST, "/v1/namespaces/alpha/keys", Some(&limited), key(json!([projects[1]]))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = h.call(Method::POST, "/v1/namespaces/alpha/keys", Some(&limited), key(Value::Null)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
}
