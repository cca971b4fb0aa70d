//! Prometheus metrics, every series labelled with its namespace: counters and the exec latency
//! histogram kept in memory since the server started, and gauges read at scrape time from the
//! store and the sandboxes' cgroups. `GET /metrics` (platform admin) shows every namespace;
//! `GET /v1/namespaces/{ns}/metrics` shows one namespace's series and nothing else.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use bulkhead_api::ErrorBody;
use bulkhead_core::Action;
use bulkhead_store::SandboxStatus;

use crate::auth::Ctx;
use crate::error::ApiResult;
use crate::extract::PathParams;
use crate::state::AppState;

/// Upper bounds of the exec latency histogram, in seconds.
const EXEC_BUCKETS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; EXEC_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Counters {
    /// (namespace, route, status) → requests.
    requests: BTreeMap<(String, String, u16), u64>,
    creates: BTreeMap<String, u64>,
    /// (namespace, reason) → sandboxes that ended failed.
    failures: BTreeMap<(String, String), u64>,
    quota_rejections: BTreeMap<String, u64>,
    exec: BTreeMap<String, Histogram>,
}

/// The server's metrics since it started.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Counters) -> R) -> R {
        f(&mut self.counters.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn request(&self, namespace: &str, route: &str, status: u16) {
        self.with(|c| *c.requests.entry((namespace.to_owned(), route.to_owned(), status)).or_default() += 1);
    }

    pub fn sandbox_created(&self, namespace: &str) {
        self.with(|c| *c.creates.entry(namespace.to_owned()).or_default() += 1);
    }

    pub fn sandbox_failed(&self, namespace: &str, reason: &str) {
        // The kind of failure, not its details: a bounded label.
        let kind = reason.split(':').next().unwrap_or(reason).to_owned();
        self.with(|c| *c.failures.entry((namespace.to_owned(), kind)).or_default() += 1);
    }

    pub fn quota_rejection(&self, namespace: &str) {
        self.with(|c| *c.quota_rejections.entry(namespace.to_owned()).or_default() += 1);
    }

    pub fn exec(&self, namespace: &str, seconds: f64) {
        self.with(|c| {
            let h = c.exec.entry(namespace.to_owned()).or_default();
            for (i, bound) in EXEC_BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        });
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The text exposition of `only` (one namespace) or of every namespace.
async fn render(state: &AppState, only: Option<&str>) -> ApiResult<String> {
    let keep = |ns: &str| only.is_none_or(|o| o == ns);
    let mut out = String::new();
    // Gauges, now.
    let mut running: BTreeMap<String, (u64, u64, u64, u64)> = BTreeMap::new();
    for s in state.store.active_sandboxes().await? {
        if s.status != SandboxStatus::Running || !keep(&s.namespace) {
            continue;
        }
        let e = running.entry(s.namespace.clone()).or_default();
        e.0 += 1;
        e.1 += s.cpu_millis;
        if let Ok(st) = state.runtime.stats(&s.namespace, &s.id).await {
            e.2 += st.memory_bytes;
            e.3 += st.cpu_usage_ns;
        }
    }
    let _ = writeln!(
        out,
        "# HELP bulkhead_sandboxes_running Sandboxes running now.\n# TYPE bulkhead_sandboxes_running gauge"
    );
    for (ns, v) in &running {
        let _ = writeln!(out, "bulkhead_sandboxes_running{{namespace=\"{}\"}} {}", label(ns), v.0);
    }
    let _ = writeln!(out, "# HELP bulkhead_cpu_millis_allocated CPU of running sandboxes, thousandths of a core.\n# TYPE bulkhead_cpu_millis_allocated gauge");
    for (ns, v) in &running {
        let _ = writeln!(out, "bulkhead_cpu_millis_allocated{{namespace=\"{}\"}} {}", label(ns), v.1);
    }
    let _ = writeln!(out, "# HELP bulkhead_memory_bytes Memory in use by running sandboxes, from their cgroups.\n# TYPE bulkhead_memory_bytes gauge");
    for (ns, v) in &running {
        let _ = writeln!(out, "bulkhead_memory_bytes{{namespace=\"{}\"}} {}", label(ns), v.2);
    }
    let _ = writeln!(out, "# HELP bulkhead_cpu_seconds CPU used by the running sandboxes so far, from their cgroups.\n# TYPE bulkhead_cpu_seconds gauge");
    for (ns, v) in &running {
        let _ = writeln!(out, "bulkhead_cpu_seconds{{namespace=\"{}\"}} {:.3}", label(ns), v.3 as f64 / 1e9);
    }
    // Counters since start.
    let snapshot = state.metrics.with(|c| {
        (c.requests.clone(), c.creates.clone(), c.failures.clone(), c.quota_rejections.clone(), c.exec.clone())
    });
    let (requests, creates, failures, rejections, exec) = snapshot;
    let _ = writeln!(out, "# HELP bulkhead_api_requests_total API requests by route and status.\n# TYPE bulkhead_api_requests_total counter");
    for ((ns, route, status), n) in requests.iter().filter(|((ns, _, _), _)| keep(ns)) {
        let _ = writeln!(
            out,
            "bulkhead_api_requests_total{{namespace=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
            label(ns),
            label(route)
        );
    }
    let _ = writeln!(
        out,
        "# HELP bulkhead_sandbox_creates_total Sandboxes started.\n# TYPE bulkhead_sandbox_creates_total counter"
    );
    for (ns, n) in creates.iter().filter(|(ns, _)| keep(ns)) {
        let _ = writeln!(out, "bulkhead_sandbox_creates_total{{namespace=\"{}\"}} {n}", label(ns));
    }
    let _ = writeln!(out, "# HELP bulkhead_sandbox_failures_total Sandboxes that ended failed, by reason.\n# TYPE bulkhead_sandbox_failures_total counter");
    for ((ns, reason), n) in failures.iter().filter(|((ns, _), _)| keep(ns)) {
        let _ = writeln!(
            out,
            "bulkhead_sandbox_failures_total{{namespace=\"{}\",reason=\"{}\"}} {n}",
            label(ns),
            label(reason)
        );
    }
    let _ = writeln!(out, "# HELP bulkhead_quota_rejections_total Creates refused with quota_exceeded.\n# TYPE bulkhead_quota_rejections_total counter");
    for (ns, n) in rejections.iter().filter(|(ns, _)| keep(ns)) {
        let _ = writeln!(out, "bulkhead_quota_rejections_total{{namespace=\"{}\"}} {n}", label(ns));
    }
    let _ = writeln!(
        out,
        "# HELP bulkhead_exec_seconds Exec latency, from request to exit.\n# TYPE bulkhead_exec_seconds histogram"
    );
    for (ns, h) in exec.iter().filter(|(ns, _)| keep(ns)) {
        let ns = label(ns);
        for (i, bound) in EXEC_BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "bulkhead_exec_seconds_bucket{{namespace=\"{ns}\",le=\"{bound}\"}} {}", h.counts[i]);
        }
        let _ = writeln!(out, "bulkhead_exec_seconds_bucket{{namespace=\"{ns}\",le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "bulkhead_exec_seconds_sum{{namespace=\"{ns}\"}} {:.6}", h.sum);
        let _ = writeln!(out, "bulkhead_exec_seconds_count{{namespace=\"{ns}\"}} {}", h.count);
    }
    Ok(out)
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Every namespace's series, in the Prometheus text format (platform admin).
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn platform(ctx: Ctx) -> ApiResult<Response> {
    ctx.authorize(Action::PlatformMetricsRead, None, "metrics")?;
    Ok(text(render(&ctx.state, None).await?))
}

/// One namespace's series and nothing else.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/metrics", tag = "metrics", params(("ns" = String, Path)),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn namespace(ctx: Ctx, PathParams(ns): PathParams<String>) -> ApiResult<Response> {
    ctx.authorize(Action::MetricsRead, Some(&ns), format!("metrics:{ns}"))?;
    crate::routes::load_namespace(&ctx, &ns).await?;
    Ok(text(render(&ctx.state, Some(&ns)).await?))
}
