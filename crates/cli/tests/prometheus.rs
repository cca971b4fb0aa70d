//! Prometheus metrics: every series carries its namespace (requests authenticated into none count
//! in one series without it), `/metrics` is the platform admin's
//! only, and a namespace's own endpoint shows its series and nothing of anyone else's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::Harness;
use serde_json::{json, Value};

#[tokio::test]
async fn metrics_are_labelled_by_namespace_and_scoped() {
    let (h, alpha_viewer, beta_owner) = Harness::with_alpha_viewer_and_beta_owner().await;
    let admin = h.admin.clone();
    let a = h.create_sandbox("alpha", &admin, json!({})).await;
    h.exec("alpha", &a, &admin, &["true"]).await;
    let b = h.create_sandbox("beta", &admin, json!({})).await;
    let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", Some(&admin), json!({"cpu_millis": 999_999})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);

    let r = h.call(Method::GET, "/metrics", Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let all = r.text();
    for line in [
        "bulkhead_sandboxes_running{namespace=\"alpha\"} 1",
        "bulkhead_sandboxes_running{namespace=\"beta\"} 1",
        "bulkhead_sandbox_creates_total{namespace=\"alpha\"} 1",
        "bulkhead_exec_seconds_count{namespace=\"alpha\"} 1",
        "bulkhead_quota_rejections_total{namespace=\"alpha\"} 1",
    ] {
        assert!(all.contains(line), "{line} missing from:\n{all}");
    }
    assert!(
        all.contains(
            "bulkhead_api_requests_total{namespace=\"alpha\",route=\"/v1/namespaces/{ns}/sandboxes\",status=\"201\"}"
        ),
        "{all}"
    );
    assert!(all.contains("bulkhead_memory_bytes{namespace=\"alpha\"}"), "{all}");
    // Egress series are declared; a loopback-only sandbox forwarded nothing, so none has a value.
    for family in ["bulkhead_egress_bytes_total", "bulkhead_egress_connections_total", "bulkhead_egress_denied_total"] {
        assert!(all.contains(&format!("# TYPE {family} counter")), "{all}");
        assert!(!all.contains(&format!("{family}{{")), "{all}");
    }
    // Every series carries its namespace, but the requests authenticated into none.
    for sample in all.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(
            sample.contains("namespace=\"") || sample.starts_with("bulkhead_api_requests_unattributed_total{"),
            "a series without its namespace: {sample}"
        );
    }

    // Namespace keys never read the platform's metrics.
    for token in [&alpha_viewer, &beta_owner] {
        let r = h.call(Method::GET, "/metrics", Some(token), Value::Null).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    // A namespace's own endpoint: its series only.
    let r = h.call(Method::GET, "/v1/namespaces/alpha/metrics", Some(&alpha_viewer), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK);
    let own = r.text();
    assert!(own.contains("bulkhead_sandboxes_running{namespace=\"alpha\"} 1"), "{own}");
    for sample in own.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(sample.contains("namespace=\"alpha\""), "another namespace's series leaked: {sample}");
    }
    assert!(!own.contains("beta"), "{own}");
    let r = h.call(Method::GET, "/v1/namespaces/alpha/metrics", Some(&beta_owner), Value::Null).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let _ = b;
}
