//! The audit chain: what is recorded, that no token enters it, and that editing a row behind
//! the server's back is caught by verification.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::store_db;
use common::Harness;
use serde_json::{json, Value};

async fn records(h: &Harness, path: &str) -> Vec<Value> {
    let r = h.call(Method::GET, path, Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn mutations_and_denials_are_recorded_and_tokens_never_are() {
    let h = Harness::with_namespaces(&["alpha", "beta"]).await;
    let (_, owner) = h.create_key("alpha", "boss", "owner").await;
    let (viewer_id, viewer) = h.create_key("alpha", "eyes", "viewer").await;

    // Allowed reads are not recorded; denials are, on the principal's own chain.
    assert_eq!(h.call(Method::GET, "/v1/namespaces/alpha", Some(&viewer), Value::Null).await.status, StatusCode::OK);
    let r =
        h.call(Method::POST, "/v1/namespaces/alpha/keys", Some(&viewer), json!({"name": "x", "role": "viewer"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = h.call(Method::GET, "/v1/namespaces/beta/keys", Some(&owner), Value::Null).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r =
        h.call(Method::PATCH, "/v1/namespaces/alpha", Some(&h.admin), json!({"quotas": {"max_sandboxes": 2}})).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/keys/{viewer_id}"), Some(&owner), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // An unauthenticated attempt lands on the platform chain.
    assert_eq!(
        h.call(Method::GET, "/v1/namespaces/alpha", Some("bhk_guess"), Value::Null).await.status,
        StatusCode::UNAUTHORIZED
    );

    let alpha = records(&h, "/v1/namespaces/alpha/audit").await;
    let summary: Vec<(String, String, String, u64)> = alpha
        .iter()
        .map(|r| {
            (
                r["principal"].as_str().unwrap().split(':').next().unwrap().to_owned(),
                r["action"].as_str().unwrap().to_owned(),
                r["decision"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let s = |p: &str, a: &str, d: &str, st: u64| (p.to_owned(), a.to_owned(), d.to_owned(), st);
    assert_eq!(
        summary,
        vec![
            s("admin", "key.create", "allow", 201),
            s("admin", "key.create", "allow", 201),
            s("key", "key.create", "deny", 403),
            s("key", "key.list", "deny", 404),
            s("admin", "namespace.update", "allow", 200),
            s("key", "key.revoke", "allow", 204),
        ]
    );
    for (i, r) in alpha.iter().enumerate() {
        assert_eq!(r["seq"], json!(i as u64 + 1));
        assert!(r["request_id"].as_str().unwrap().starts_with("req_"));
    }
    let platform = records(&h, "/v1/audit").await;
    let actions: Vec<&str> = platform.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["namespace.create", "namespace.create", "GET /v1/namespaces/{ns}"]);
    assert_eq!(platform[2]["decision"], "unauthenticated");
    // Beta's chain holds nothing of alpha's principals.
    assert!(records(&h, "/v1/namespaces/beta/audit").await.is_empty());

    // Filters and pagination.
    let only = records(&h, "/v1/namespaces/alpha/audit?action=key.create").await;
    assert_eq!(only.len(), 3);
    let r = h.call(Method::GET, "/v1/namespaces/alpha/audit?limit=4", Some(&h.admin), Value::Null).await;
    let cursor = r.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = records(&h, &format!("/v1/namespaces/alpha/audit?limit=4&cursor={cursor}")).await;
    assert_eq!(rest.iter().map(|r| r["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [5, 6]);
    let future = records(&h, "/v1/namespaces/alpha/audit?since=2999-01-01T00:00:00Z").await;
    assert!(future.is_empty());

    // No token, whole or in part, is anywhere in any chain.
    let all = format!("{alpha:?}{platform:?}");
    for token in [&owner, &viewer, &h.admin] {
        assert!(!all.contains(&token[4..20]), "a token leaked into the audit log");
    }
}

async fn verify(h: &Harness, path: &str) -> Value {
    let r = h.call(Method::GET, path, Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK);
    r.body
}

#[tokio::test]
async fn tampering_behind_the_servers_back_is_caught() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    for i in 0..5 {
        h.create_key("alpha", &format!("k{i}"), "viewer").await;
    }
    assert_eq!(
        verify(&h, "/v1/namespaces/alpha/audit/verify").await,
        json!({"ok": true, "records": 5, "first_bad_seq": null, "pruned": 0})
    );

    // Another process opens the database and rewrites history.
    let data = h.dir.path().join("data");
    store_db::exec(&data, "UPDATE audit_records SET principal = 'key:innocent' WHERE chain = 'alpha' AND seq = 3")
        .await;
    assert_eq!(
        verify(&h, "/v1/namespaces/alpha/audit/verify").await,
        json!({"ok": false, "records": 5, "first_bad_seq": 3, "pruned": 0})
    );

    // Recomputing the edited record's hash does not help: the next link breaks.
    let row = store_db::rows(
        &data,
        "SELECT CAST(time_ms AS TEXT), principal, action, resource, decision, request_id, CAST(status AS TEXT), \
         detail, prev_hash FROM audit_records WHERE chain = 'alpha' AND seq = 3",
    )
    .await
    .remove(0);
    let event = bulkhead_core::audit::AuditEvent {
        time_ms: row[0].parse().unwrap(),
        principal: row[1].clone(),
        action: row[2].clone(),
        resource: row[3].clone(),
        decision: row[4].clone(),
        request_id: row[5].clone(),
        status: row[6].parse().unwrap(),
        detail: row[7].clone(),
    };
    let forged = bulkhead_core::audit::record_hash("alpha", 3, &event, &row[8]);
    assert!(forged.bytes().all(|b| b.is_ascii_hexdigit()));
    store_db::exec(&data, &format!("UPDATE audit_records SET hash = '{forged}' WHERE chain = 'alpha' AND seq = 3"))
        .await;
    assert_eq!(verify(&h, "/v1/namespaces/alpha/audit/verify").await["first_bad_seq"], json!(4));

    // Cutting the tail off is caught against the chain head.
    let h2 = Harness::new().await;
    h2.create_namespace("alpha").await;
    for i in 0..3 {
        h2.create_key("alpha", &format!("k{i}"), "viewer").await;
    }
    let data2 = h2.dir.path().join("data");
    store_db::exec(&data2, "DELETE FROM audit_records WHERE chain = 'alpha' AND seq = 3").await;
    let r = h2.call(Method::GET, "/v1/namespaces/alpha/audit/verify", Some(&h2.admin), Value::Null).await;
    assert_eq!(r.body, json!({"ok": false, "records": 2, "first_bad_seq": 3, "pruned": 0}));

    // The platform chain verifies too.
    let r = h2.call(Method::GET, "/v1/audit/verify", Some(&h2.admin), Value::Null).await;
    assert_eq!(r.body["ok"], json!(true));
}
