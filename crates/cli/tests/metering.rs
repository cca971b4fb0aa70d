//! Usage metered from the kernel: cpu time matches the cgroup's counter, a sandbox that ends
//! between two samples is still metered, execs and quota refusals are counted, and a namespace
//! sees only its own usage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::Harness;
use serde_json::{json, Value};

async fn usage(h: &Harness, ns: &str, token: &str) -> Value {
    let r = h
        .call(
            Method::GET,
            &format!("/v1/namespaces/{ns}/usage?granularity=minute&from=2020-01-01T00:00:00Z"),
            Some(token),
            Value::Null,
        )
        .await;
    // `from` far in the past is refused at minute granularity; ask for the last hour instead.
    if r.status == StatusCode::BAD_REQUEST {
        let r = h
            .call(Method::GET, &format!("/v1/namespaces/{ns}/usage?granularity=minute"), Some(token), Value::Null)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        return r.body;
    }
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

#[tokio::test]
async fn two_cpu_seconds_are_metered_as_two_within_ten_percent() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    let id = h.create_sandbox("alpha", &admin, json!({"cpu_millis": 1000})).await;
    let r = h.exec_with("alpha", &id, &admin, // Burns two seconds of its own cpu time, however busy the host is.
            json!({"cmd": ["python3", "-c", "import time\nwhile time.process_time() < 2: pass"], "timeout_seconds": 60})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A periodic sample in the middle of the sandbox's life, then the final one at delete.
    bulkhead_server::metering::sample_all(&h.state).await.unwrap();
    let kernel = h.state.runtime.stats("alpha", &id).await.unwrap().cpu_usage_ns as f64 / 1e9;
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{id}"), Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!((1.5..3.0).contains(&kernel), "the burner used {kernel:.2}s of cpu by the kernel's count");
    let u = usage(&h, "alpha", &admin).await;
    let metered = u["totals"]["cpu_seconds"].as_f64().unwrap();
    assert!((metered - kernel).abs() <= kernel * 0.1, "metered {metered:.3}s, the kernel counted {kernel:.3}s");
    assert!(u["totals"]["sandbox_seconds"].as_f64().unwrap() > 1.5, "{u}");
    assert!(u["totals"]["memory_byte_seconds"].as_f64().unwrap() > 0.0, "{u}");
    assert!(u["totals"]["memory_peak_bytes"].as_u64().unwrap() > 0, "{u}");
    assert_eq!(u["totals"]["exec_count"], 1, "{u}");
    assert!(!u["buckets"].as_array().unwrap().is_empty(), "{u}");
}

#[tokio::test]
async fn a_sandbox_that_ends_between_samples_is_still_metered() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    let id = h.create_sandbox("alpha", &admin, json!({})).await;
    h.exec("alpha", &id, &admin, &["python3", "-c", "import time\nwhile time.process_time() < 0.5: pass"]).await;
    // No periodic sample runs in between (the interval is 10 s): only the final one at delete.
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{id}"), Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let u = usage(&h, "alpha", &admin).await;
    let metered = u["totals"]["cpu_seconds"].as_f64().unwrap();
    assert!(metered >= 0.35, "a short-lived sandbox's cpu was lost: {u}");
}

#[tokio::test]
async fn rejections_are_counted_and_usage_is_per_namespace() {
    let (h, alpha_viewer, beta_owner) = Harness::with_alpha_viewer_and_beta_owner().await;
    let admin = h.admin.clone();
    let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", Some(&admin), json!({"cpu_millis": 999_999})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let u = usage(&h, "alpha", &alpha_viewer).await;
    assert_eq!(u["totals"]["quota_rejections"], 1, "{u}");
    // A loopback-only server forwards nothing: egress is there, and zero, in the totals too.
    assert_eq!(u["egress_bytes"], 0);
    for field in ["egress_bytes", "egress_bytes_out", "egress_bytes_in", "egress_connections", "egress_denied"] {
        assert_eq!(u["totals"][field], 0, "{field}: {u}");
    }
    // Beta sees its own (empty) usage and nothing of alpha's.
    let b = usage(&h, "beta", &beta_owner).await;
    assert_eq!(b["totals"]["quota_rejections"], 0, "{b}");
    let r = h.call(Method::GET, "/v1/namespaces/alpha/usage", Some(&beta_owner), Value::Null).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    for bad in ["granularity=week", "from=yesterday", "from=2030-01-01T00:00:00Z&to=2029-01-01T00:00:00Z"] {
        let r = h.call(Method::GET, &format!("/v1/namespaces/alpha/usage?{bad}"), Some(&admin), Value::Null).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}
