//! Observability stays inside its tenant: a namespace deleted and created again under its name
//! starts with none of the old one's counters, logs, usage or audit records; another tenant's
//! probes of a namespace's paths do not count in its series; unauthenticated requests to made-up
//! namespaces add no series.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::Harness;
use serde_json::{json, Value};

async fn platform_metrics(h: &Harness) -> String {
    let r = h.call(Method::GET, "/metrics", Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK);
    r.text()
}

/// The samples of `ns` in the platform's exposition.
fn samples_of(all: &str, ns: &str) -> Vec<String> {
    let label = format!("namespace=\"{ns}\"");
    all.lines().filter(|l| !l.starts_with('#') && l.contains(&label)).map(str::to_owned).collect()
}

#[tokio::test]
async fn a_namespace_created_again_starts_with_nothing_of_the_old_one() {
    let h = Harness::with_namespaces(&["reuse1"]).await;
    let (old_key, old_owner) = h.create_key("reuse1", "boss", "owner").await;
    let sbx = h.create_sandbox("reuse1", &old_owner, json!({})).await;
    let (code, out, _) = h.sh("reuse1", &sbx, &old_owner, "echo old-tenant-secret-output").await;
    assert_eq!((code, out.as_str()), (0, "old-tenant-secret-output\n"));
    let r =
        h.call(Method::POST, "/v1/namespaces/reuse1/sandboxes", Some(&old_owner), json!({"cpu_millis": 999_999})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    // The old tenant has counters, logs, usage and audit records.
    let own = h.call(Method::GET, "/v1/namespaces/reuse1/metrics", Some(&old_owner), Value::Null).await.text();
    assert!(own.contains("bulkhead_sandbox_creates_total{namespace=\"reuse1\"} 1"), "{own}");
    let logs = h.call(Method::GET, "/v1/namespaces/reuse1/logs", Some(&old_owner), Value::Null).await;
    assert!(logs.body.to_string().contains("old-tenant-secret-output"), "{}", logs.body);

    let r = h.call(Method::DELETE, "/v1/namespaces/reuse1", Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    h.create_namespace("reuse1").await;
    let (_, owner) = h.create_key("reuse1", "boss", "owner").await;

    // Metrics: nothing of the old incarnation, on the namespace's endpoint or the platform's.
    let r = h.call(Method::GET, "/v1/namespaces/reuse1/metrics", Some(&owner), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK);
    let own: Vec<String> = r.text().lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect();
    for exposition in [own.join("\n"), samples_of(&platform_metrics(&h).await, "reuse1").join("\n")] {
        for old in [
            "bulkhead_sandbox_creates_total",
            "bulkhead_quota_rejections_total",
            "bulkhead_exec_seconds",
            "/v1/namespaces/{ns}/sandboxes\",status=\"201\"",
            "/v1/namespaces/{ns}/sandboxes\",status=\"429\"",
            "/v1/namespaces/{ns}/sandboxes/{id}/exec",
            "/v1/namespaces/{ns}/logs",
        ] {
            assert!(!exposition.contains(old), "the old tenant's {old} shows:\n{exposition}");
        }
    }
    // Logs, usage and audit: empty of the old tenant.
    let r = h.call(Method::GET, "/v1/namespaces/reuse1/logs", Some(&owner), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["records"], json!([]), "{}", r.body);
    let r = h
        .call(
            Method::GET,
            "/v1/namespaces/reuse1/usage?granularity=day&from=2020-01-01T00:00:00Z",
            Some(&owner),
            Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let totals = &r.body["totals"];
    assert_eq!((totals["exec_count"].as_u64(), totals["quota_rejections"].as_u64()), (Some(0), Some(0)), "{}", r.body);
    assert_eq!(totals["sandbox_seconds"].as_f64(), Some(0.0), "{}", r.body);
    let r = h.call(Method::GET, "/v1/namespaces/reuse1/audit", Some(&owner), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let audit = r.body.to_string();
    for old in [sbx.as_str(), old_key.as_str(), "sandbox.exec"] {
        assert!(!audit.contains(old), "the old tenant's audit record ({old}) shows: {audit}");
    }
    // The old owner's key is nothing in the new namespace.
    let r = h.call(Method::GET, "/v1/namespaces/reuse1/metrics", Some(&old_owner), Value::Null).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn another_tenants_probes_leave_the_victims_series_unchanged() {
    let h = Harness::with_namespaces(&["victim", "mallory"]).await;
    let (_, victim) = h.create_key("victim", "dev", "developer").await;
    let (_, attacker) = h.create_key("mallory", "dev", "owner").await;
    let sbx = h.create_sandbox("victim", &victim, json!({})).await;
    let r = h.call(Method::GET, &format!("/v1/namespaces/victim/sandboxes/{sbx}"), Some(&victim), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK);
    // The counters (the gauges move with the sandbox's own use).
    let counters = |all: &str| -> Vec<String> {
        samples_of(all, "victim").into_iter().filter(|l| l.starts_with("bulkhead_api_requests_total")).collect()
    };
    let before = counters(&platform_metrics(&h).await);
    assert!(!before.is_empty(), "{before:?}");

    let probes = [
        format!("/v1/namespaces/victim/sandboxes/{sbx}"),
        "/v1/namespaces/victim/sandboxes/sbx_00000000000000000000000000000000".to_owned(),
        "/v1/namespaces/victim/keys".to_owned(),
        "/v1/namespaces/victim/metrics".to_owned(),
        "/v1/namespaces/victim/logs".to_owned(),
        "/v1/namespaces/victim".to_owned(),
    ];
    for _ in 0..10 {
        for path in &probes {
            let r = h.call(Method::GET, path, Some(&attacker), Value::Null).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        }
        let r = h
            .call(Method::DELETE, &format!("/v1/namespaces/victim/sandboxes/{sbx}"), Some(&attacker), Value::Null)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    let after = counters(&platform_metrics(&h).await);
    assert_eq!(after, before, "the attacker's probes counted in the victim's series");
    // They are counted, without a namespace.
    let all = platform_metrics(&h).await;
    assert!(
        all.lines().any(|l| l.starts_with(
            "bulkhead_api_requests_unattributed_total{route=\"/v1/namespaces/{ns}/keys\",status=\"404\"}"
        )),
        "{all}"
    );
}

#[tokio::test]
async fn unauthenticated_requests_to_made_up_namespaces_add_no_series() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let (_, dev) = h.create_key("alpha", "dev", "developer").await;
    let r = h.call(Method::GET, "/v1/namespaces/alpha/sandboxes", Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK);
    // One round first, so the unattributed series these requests use exist.
    let shapes = ["/sandboxes", "/keys", "/sandboxes/sbx_1", "/metrics", ""];
    let tokens = [None, Some("bh_not_a_key"), Some("a.b.c")];
    let send = |i: usize| {
        let path = format!("/v1/namespaces/made-up-{i}{}", shapes[i % shapes.len()]);
        let token = tokens[i % tokens.len()];
        let h = &h;
        async move {
            let r = h.call(Method::GET, &path, token, Value::Null).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        }
    };
    for i in 0..shapes.len() * tokens.len() {
        send(i).await;
    }
    // The scrape counts itself (unattributed) once it has answered: scrape once before counting.
    platform_metrics(&h).await;
    let before = platform_metrics(&h).await;
    let series_before = h.state.metrics.namespace_series();
    for i in 0..1000 {
        send(1000 + i).await;
    }
    let after = platform_metrics(&h).await;
    assert_eq!(after.lines().count(), before.lines().count(), "1,000 unauthenticated requests added series:\n{after}");
    assert!(!after.contains("made-up"), "a made-up namespace got a series:\n{after}");
    assert_eq!(h.state.metrics.namespace_series(), series_before);
}
