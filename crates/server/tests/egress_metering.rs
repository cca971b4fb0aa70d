//! Egress metering and the denial audit, in-process over the in-memory runtime, whose sandboxes'
//! egress counters the test moves as the gateway would: usage totals and buckets (both
//! directions, connections, denials), Prometheus counters that never go back, and aggregated,
//! bounded audit records of denials. The gateway itself is tested over a real network in
//! `crates/cli/tests`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bulkhead_runtime::egress::EgressCounters;
use bulkhead_runtime::fake::{FakeRuntime, FakeStorage};
use bulkhead_server::bootstrap::{self, Backends};
use bulkhead_server::service::egress_audit;
use bulkhead_server::{app, AppState, ServerConfig};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Harness {
    _dir: tempfile::TempDir,
    state: AppState,
    app: axum::Router,
    admin: String,
    runtime: FakeRuntime,
}

impl Harness {
    async fn new() -> Harness {
        let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().expect("tempdir");
        let mut config = ServerConfig::new(dir.path().join("data"), SocketAddr::from(([127, 0, 0, 1], 0)));
        config.runtime.state_dir = dir.path().join("state");
        config.runtime.cgroup_prefix = format!("bulkhead-test-fake-{}", bulkhead_core::ids::new_id(""));
        config.host_registry = dir.path().join("host-registry");
        let (runtime, storage) = (FakeRuntime::new(), FakeStorage::new());
        let (r, s) = (runtime.clone(), storage.clone());
        let started =
            bootstrap::start_with(config, move |_, _| Ok(Backends { runtime: Arc::new(r), storage: Arc::new(s) }))
                .await
                .expect("bootstrap over the fakes");
        let admin = started.new_admin_token.expect("first start makes an admin token");
        // No background sampler or flusher: the test takes every sample and flush itself.
        Harness { _dir: dir, app: app(started.state.clone()), state: started.state, admin, runtime }
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> (StatusCode, Vec<u8>) {
        let b = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {}", self.admin));
        let req = if body.is_null() {
            b.body(Body::empty())
        } else {
            b.header("content-type", "application/json").body(Body::from(body.to_string()))
        };
        let resp = self.app.clone().oneshot(req.expect("request")).await.expect("infallible");
        let status = resp.status();
        (status, resp.into_body().collect().await.expect("body").to_bytes().to_vec())
    }

    async fn json(&self, method: Method, path: &str, body: Value) -> Value {
        let (status, raw) = self.call(method, path, body).await;
        assert!(status.is_success(), "{status}: {}", String::from_utf8_lossy(&raw));
        serde_json::from_slice(&raw).unwrap_or(Value::Null)
    }

    async fn namespace(&self, name: &str) {
        let body = json!({"name": name, "quotas": {"cpu_millis": 2000, "memory_bytes": 2147483648u64,
            "disk_bytes": 1u64 << 30, "max_sandboxes": 4, "pids_per_sandbox": 128, "max_sandbox_ttl_seconds": 3600}});
        self.json(Method::POST, "/v1/namespaces", body).await;
    }

    /// A sandbox of `ns`, and its gateway's counters.
    async fn sandbox(&self, ns: &str) -> (String, Arc<EgressCounters>) {
        let r = self.json(Method::POST, &format!("/v1/namespaces/{ns}/sandboxes"), json!({})).await;
        let id = r["id"].as_str().expect("id").to_owned();
        let counters = self.runtime.egress(&id).expect("the fake runtime has the sandbox");
        (id, counters)
    }

    async fn metrics(&self, path: &str) -> String {
        let (status, raw) = self.call(Method::GET, path, Value::Null).await;
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(raw).expect("text")
    }

    async fn usage(&self, ns: &str) -> Value {
        self.json(Method::GET, &format!("/v1/namespaces/{ns}/usage?granularity=minute"), Value::Null).await
    }
}

/// What the gateway would count for one forwarded connection.
fn forward(c: &EgressCounters, out: u64, inn: u64) {
    c.bytes_out.fetch_add(out, Ordering::Relaxed);
    c.bytes_in.fetch_add(inn, Ordering::Relaxed);
    c.connections.fetch_add(1, Ordering::Relaxed);
}

/// The egress counters of `ns` in a Prometheus text: (bytes out, bytes in, connections, denied).
fn egress_series(text: &str, ns: &str) -> (u64, u64, u64, u64) {
    let v = |series: String| {
        text.lines().find_map(|l| l.strip_prefix(series.as_str())?.strip_prefix(' ')?.parse().ok()).unwrap_or(0)
    };
    (
        v(format!("bulkhead_egress_bytes_total{{namespace=\"{ns}\",direction=\"out\"}}")),
        v(format!("bulkhead_egress_bytes_total{{namespace=\"{ns}\",direction=\"in\"}}")),
        v(format!("bulkhead_egress_connections_total{{namespace=\"{ns}\"}}")),
        v(format!("bulkhead_egress_denied_total{{namespace=\"{ns}\"}}")),
    )
}

#[tokio::test]
async fn egress_is_metered_into_usage_and_prometheus_per_namespace_both_ways() {
    let h = Harness::new().await;
    h.namespace("alpha").await;
    h.namespace("beta").await;
    let (a1, c1) = h.sandbox("alpha").await;
    let (_a2, c2) = h.sandbox("alpha").await;
    let (_b, _cb) = h.sandbox("beta").await;

    // Before any sample, Prometheus already shows what the gateway counted.
    forward(&c1, 1_000, 50_000);
    forward(&c1, 200, 3_000);
    c1.denied.fetch_add(7, Ordering::Relaxed);
    forward(&c2, 10, 20);
    let all = h.metrics("/metrics").await;
    assert_eq!(egress_series(&all, "alpha"), (1_210, 53_020, 3, 7), "{all}");
    assert!(!all.contains("bulkhead_egress_bytes_total{namespace=\"beta\""), "beta forwarded nothing: {all}");

    // A periodic sample, more traffic, then the final sample at delete.
    bulkhead_server::metering::sample_all(&h.state).await.unwrap();
    assert_eq!(egress_series(&h.metrics("/metrics").await, "alpha"), (1_210, 53_020, 3, 7), "a sample moves nothing");
    forward(&c1, 500, 1_000);
    c1.denied.fetch_add(2, Ordering::Relaxed);
    assert_eq!(egress_series(&h.metrics("/metrics").await, "alpha"), (1_710, 54_020, 4, 9));
    h.json(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{a1}"), Value::Null).await;
    // Gone, yet its egress stays in the counters (they never go back).
    let own = h.metrics("/v1/namespaces/alpha/metrics").await;
    assert_eq!(egress_series(&own, "alpha"), (1_710, 54_020, 4, 9), "{own}");
    assert!(!own.contains("beta"), "{own}");

    let u = h.usage("alpha").await;
    let t = &u["totals"];
    assert_eq!(t["egress_bytes_out"], 1_710, "the periodic sample's and the final one's: {u}");
    assert_eq!(t["egress_bytes_in"], 54_020, "{u}");
    assert_eq!(t["egress_bytes"], 55_730, "{u}");
    assert_eq!(t["egress_connections"], 4, "{u}");
    assert_eq!(t["egress_denied"], 9, "{u}");
    assert_eq!(u["egress_bytes"], 55_730, "{u}");
    // The buckets add up to the totals.
    let buckets = u["buckets"].as_array().unwrap();
    assert!(!buckets.is_empty(), "{u}");
    for field in ["egress_bytes", "egress_bytes_out", "egress_bytes_in", "egress_connections", "egress_denied"] {
        let sum: u64 = buckets.iter().map(|b| b[field].as_u64().unwrap()).sum();
        assert_eq!(Value::from(sum), t[field], "{field}: {u}");
    }
    // The running sandbox's new egress is metered by the next sample, never twice.
    forward(&c2, 30, 40);
    bulkhead_server::metering::sample_all(&h.state).await.unwrap();
    bulkhead_server::metering::sample_all(&h.state).await.unwrap();
    let u = h.usage("alpha").await;
    assert_eq!(u["totals"]["egress_bytes"], 55_800, "{u}");
    assert_eq!(u["totals"]["egress_connections"], 5, "{u}");
    assert_eq!(egress_series(&h.metrics("/metrics").await, "alpha"), (1_740, 54_060, 5, 9));
    let b = h.usage("beta").await;
    assert_eq!((b["totals"]["egress_bytes"].as_u64(), b["egress_bytes"].as_u64()), (Some(0), Some(0)), "{b}");
}

#[tokio::test]
async fn denials_are_audited_in_aggregated_bounded_records() {
    let h = Harness::new().await;
    h.namespace("alpha").await;
    h.namespace("beta").await;
    let (loud, _) = h.sandbox("alpha").await;
    let (quiet, _) = h.sandbox("beta").await;
    let allow = vec!["allow".to_owned()];
    let limits = egress_audit::DenialLimits::default();
    // One sandbox hammers one denied host, then a hundred thousand others.
    for _ in 0..10_000 {
        h.state.denials.record("alpha", &loud, "denied.test", Some(443), &allow);
    }
    for i in 0..100_000 {
        h.state.denials.record("alpha", &loud, &format!("h{i}.denied.test"), Some(443), &allow);
    }
    h.state.denials.record("beta", &quiet, "198.51.100.7", Some(22), &["pol_nossh".to_owned()]);
    let batch = egress_audit::flush_now(&h.state).await.unwrap();
    assert_eq!(batch.denials(), 110_001);
    assert!(h.state.denials.log_lines(&batch).len() <= limits.max_log_lines + 1);

    let page = h.json(Method::GET, "/v1/namespaces/alpha/audit?action=network.connect&limit=1000", Value::Null).await;
    let records = page["items"].as_array().unwrap();
    assert_eq!(records.len(), limits.max_keys_per_sandbox + 1, "its own tallies and one for the rest: {page}");
    let detail =
        |r: &Value| -> Value { serde_json::from_str(r["detail"].as_str().unwrap_or("{}")).unwrap_or_default() };
    let host = records.iter().find(|r| r["resource"] == "host:denied.test").expect("the hammered host's record");
    assert_eq!(host["principal"], format!("sandbox:{loud}"));
    assert_eq!(host["decision"], "deny");
    let d = detail(host);
    assert_eq!((d["count"].as_u64(), d["port"].as_u64()), (Some(10_000), Some(443)), "{host}");
    assert_eq!(d["policies"], json!(["allow"]));
    let counted: u64 = records.iter().map(|r| detail(r)["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, 110_000, "every denial of alpha is in one record: {page}");
    assert!(records.iter().any(|r| r["resource"] == "host:*"), "the other-destinations record: {page}");
    // Beta's denial is in beta's chain only, and the chains still verify.
    let page = h.json(Method::GET, "/v1/namespaces/beta/audit?action=network.connect", Value::Null).await;
    let records = page["items"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{page}");
    assert_eq!(records[0]["resource"], "host:198.51.100.7");
    assert_eq!(detail(&records[0])["policies"], json!(["pol_nossh"]));
    for ns in ["alpha", "beta"] {
        let v = h.json(Method::GET, &format!("/v1/namespaces/{ns}/audit/verify"), Value::Null).await;
        assert_eq!(v["ok"], true, "{v}");
    }
    // The next interval starts empty.
    assert_eq!(egress_audit::flush_now(&h.state).await.unwrap().denials(), 0);
}

/// A sandbox's denial records are the sandbox's: a key limited to a project reads those of the
/// sandboxes in its project, never those of a sandbox outside it (the record's resource is the
/// host the sandbox tried; its principal names the sandbox).
#[tokio::test]
async fn a_key_limited_to_a_project_reads_only_its_sandboxes_denial_records() {
    let h = Harness::new().await;
    h.namespace("gamma").await;
    let post = |path: &'static str, body: Value| {
        let h = &h;
        async move {
            h.json(Method::POST, &format!("/v1/namespaces/gamma/{path}"), body).await["id"].as_str().unwrap().to_owned()
        }
    };
    let pa = post("projects", json!({"name": "pa"})).await;
    let pb = post("projects", json!({"name": "pb"})).await;
    let fa = post("filesystems", json!({"name": "fa", "size_bytes": 16 << 20, "project": pa})).await;
    let fb = post("filesystems", json!({"name": "fb", "size_bytes": 16 << 20, "project": pb})).await;
    let sa = post("sandboxes", json!({"filesystem": {"id": fa, "mode": "rw"}})).await;
    let sb = post("sandboxes", json!({"filesystem": {"id": fb, "mode": "rw"}})).await;
    let allow = vec!["allow".to_owned()];
    h.state.denials.record("gamma", &sa, "a.denied.test", Some(443), &allow);
    h.state.denials.record("gamma", &sb, "b.denied.test", Some(443), &allow);
    egress_audit::flush_now(&h.state).await.unwrap();
    let key = h
        .json(Method::POST, "/v1/namespaces/gamma/keys", json!({"name": "k", "role": "viewer", "projects": [pa]}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let req = Request::builder()
        .uri("/v1/namespaces/gamma/audit?action=network.connect")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let page: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let principals: Vec<&str> =
        page["items"].as_array().unwrap().iter().filter_map(|r| r["principal"].as_str()).collect();
    assert_eq!(principals, vec![format!("sandbox:{sa}").as_str()], "{page}");
    // The admin reads both.
    let all = h.json(Method::GET, "/v1/namespaces/gamma/audit?action=network.connect", Value::Null).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2, "{all}");
}
