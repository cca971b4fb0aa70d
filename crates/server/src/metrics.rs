//! Prometheus metrics: counters and the exec latency histogram kept in memory since the server
//! started, and gauges read at scrape time from the store and the sandboxes' cgroups.
//! `GET /metrics` (platform admin) shows every namespace; `GET /v1/namespaces/{ns}/metrics` shows
//! one namespace's series and nothing else.
//!
//! **Invariant:** a namespace's counters are keyed by its incarnation, not its name, and dropped
//! when it is deleted: a namespace created again under an old name starts from zero.
//! **Invariant:** a request counts in a namespace's series only when it was authenticated as a
//! principal of that namespace (or the platform admin acting on it); unauthenticated and
//! cross-tenant requests count in one series without a namespace label.
//! **Invariant:** every label's values come from a fixed set: route templates of the route
//! table, status codes of [`STATUSES`] (else `other`), failure kinds of [`FAILURE_KINDS`],
//! egress directions `out` and `in`.
//!
//! Egress counters (`bulkhead_egress_*_total`) come from the gateway's per-sandbox counters
//! ([`bulkhead_runtime::SandboxStats::egress`]): what the metering samples moved into the usage
//! ledger since the server started, plus what the running sandboxes' counters show beyond their
//! last sample, both read under one lock so a sample between two scrapes never makes a counter
//! go back. Where metering of each sandbox's egress stands (its mark) is kept here, in memory:
//! the gateway's counters live in this process too, and start from zero with it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;

use bulkhead_runtime::egress::EgressStats;
use bulkhead_store::NamespaceRow;

/// Upper bounds of the exec latency histogram, in seconds.
const EXEC_BUCKETS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// Status codes that get their own label value; any other is `other`.
pub const STATUSES: [u16; 20] =
    [200, 201, 204, 206, 304, 400, 401, 403, 404, 405, 409, 412, 413, 415, 416, 422, 429, 500, 503, 504];

/// Kinds of sandbox failure that get their own label value; any other is `other`.
pub const FAILURE_KINDS: [&str; 5] = ["start_failed", "lost", "init_exited", "oom", "unresponsive"];

/// One namespace incarnation: its name, and the id made when it was created.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tenant {
    pub name: String,
    pub incarnation: String,
}

impl Tenant {
    pub fn of(row: &NamespaceRow) -> Tenant {
        Tenant { name: row.name.clone(), incarnation: row.incarnation.clone() }
    }
}

fn status_label(status: u16) -> String {
    if STATUSES.contains(&status) {
        status.to_string()
    } else {
        "other".to_owned()
    }
}

fn route_label(route: &str) -> String {
    // Templates of the route table only (`/v1/namespaces/{ns}/...`): never a raw path.
    if route.is_empty() {
        "unmatched".to_owned()
    } else {
        route.to_owned()
    }
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; EXEC_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// One namespace incarnation's counters.
#[derive(Debug, Default, Clone)]
struct Series {
    /// (route template, status label) → requests.
    requests: BTreeMap<(String, String), u64>,
    creates: u64,
    /// failure kind → sandboxes that ended failed.
    failures: BTreeMap<String, u64>,
    quota_rejections: u64,
    /// Which limit (`requests`, `execs`, `creates`) → requests refused `rate_limited` by it.
    rate_limited: BTreeMap<&'static str, u64>,
    exec: Option<Histogram>,
    /// Egress metered into the ledger since the server started.
    egress: EgressStats,
}

#[derive(Debug, Default)]
struct Counters {
    /// Incarnation → its series.
    namespaces: BTreeMap<String, Series>,
    /// Requests not authenticated into any namespace: (route template, status label) → requests.
    unattributed: BTreeMap<(String, String), u64>,
    /// Incarnations deleted lately, oldest first: a request of one that finishes after the delete
    /// is not counted, so its series does not come back.
    gone: std::collections::VecDeque<String>,
    /// Sandbox id → the gateway's counters at its last metering sample. Entries of sandboxes
    /// that ended are dropped by [`Metrics::egress_retain`].
    egress_marks: HashMap<String, EgressStats>,
}

/// Deleted incarnations remembered, at most.
const GONE_KEPT: usize = 4096;

/// The server's metrics since it started.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Counters) -> R) -> R {
        f(&mut self.counters.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn series(&self, tenant: &Tenant, f: impl FnOnce(&mut Series)) {
        self.with(|c| {
            if !c.gone.contains(&tenant.incarnation) {
                f(c.namespaces.entry(tenant.incarnation.clone()).or_default());
            }
        });
    }

    /// Counts a request: in `tenant`'s series when it was authenticated into that namespace,
    /// else in the unattributed series.
    pub fn request(&self, tenant: Option<&Tenant>, route: &str, status: u16) {
        let key = (route_label(route), status_label(status));
        match tenant {
            Some(t) => self.series(t, |s| *s.requests.entry(key).or_default() += 1),
            None => self.with(|c| *c.unattributed.entry(key).or_default() += 1),
        }
    }

    pub fn sandbox_created(&self, tenant: &Tenant) {
        self.series(tenant, |s| s.creates += 1);
    }

    pub fn sandbox_failed(&self, tenant: &Tenant, reason: &str) {
        // The kind of failure, not its details: a bounded label.
        let kind = if reason.starts_with("init exited") {
            "init_exited"
        } else if reason.starts_with("supervisor not answering") {
            "unresponsive"
        } else {
            reason.split(':').next().unwrap_or(reason)
        };
        let kind = if FAILURE_KINDS.contains(&kind) { kind } else { "other" };
        self.series(tenant, |s| *s.failures.entry(kind.to_owned()).or_default() += 1);
    }

    pub fn quota_rejection(&self, tenant: &Tenant) {
        self.series(tenant, |s| s.quota_rejections += 1);
    }

    /// Counts a request refused `rate_limited` by one of the namespace's rate limits, named
    /// `requests`, or by [`crate::ratelimit::SlotKind::label`].
    pub fn rate_limited(&self, tenant: &Tenant, limit: &'static str) {
        self.series(tenant, |s| *s.rate_limited.entry(limit).or_default() += 1);
    }

    pub fn exec(&self, tenant: &Tenant, seconds: f64) {
        self.series(tenant, |s| {
            let h = s.exec.get_or_insert_with(Histogram::default);
            for (i, bound) in EXEC_BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        });
    }

    /// Drops everything of a namespace incarnation (the namespace was deleted), and counts
    /// nothing more for it.
    pub fn forget(&self, incarnation: &str) {
        self.with(|c| {
            c.namespaces.remove(incarnation);
            if c.gone.len() >= GONE_KEPT {
                c.gone.pop_front();
            }
            c.gone.push_back(incarnation.to_owned());
        });
    }

    /// Where metering of a sandbox's egress counters stands: their values at its last sample
    /// (zero before the first one).
    pub fn egress_mark(&self, sandbox: &str) -> EgressStats {
        self.with(|c| c.egress_marks.get(sandbox).copied().unwrap_or_default())
    }

    /// A metering sample of a sandbox's egress landed in the ledger: its counters stood at
    /// `mark`, `delta` more than at the sample before; `delta` counts in `tenant`'s series.
    /// The mark and the series change together, so a scrape sees either both or neither.
    pub fn egress_metered(&self, tenant: Option<&Tenant>, sandbox: &str, mark: EgressStats, delta: EgressStats) {
        self.with(|c| {
            c.egress_marks.insert(sandbox.to_owned(), mark);
            if let Some(t) = tenant.filter(|t| !c.gone.contains(&t.incarnation)) {
                let s = c.namespaces.entry(t.incarnation.clone()).or_default();
                s.egress = egress_sum(s.egress, delta);
            }
        });
    }

    /// Forgets the egress marks of sandboxes for which `keep` is false (they ended).
    pub fn egress_retain(&self, keep: impl Fn(&str) -> bool) {
        self.with(|c| c.egress_marks.retain(|id, _| keep(id)));
    }

    /// Namespace series held now (for tests of the bound).
    pub fn namespace_series(&self) -> usize {
        self.with(|c| c.namespaces.len())
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// What a gateway counter shows beyond its mark: the difference, or the whole reading when it is
/// below the mark (the counter started again from zero).
fn counter_delta(mark: u64, now: u64) -> u64 {
    if now >= mark {
        now - mark
    } else {
        now
    }
}

/// What the gateway's counters `now` show beyond `mark`, counter by counter (see
/// [`counter_delta`]).
pub fn egress_delta(mark: EgressStats, now: EgressStats) -> EgressStats {
    EgressStats {
        bytes_out: counter_delta(mark.bytes_out, now.bytes_out),
        bytes_in: counter_delta(mark.bytes_in, now.bytes_in),
        connections: counter_delta(mark.connections, now.connections),
        denied: counter_delta(mark.denied, now.denied),
    }
}

/// `a + b`, counter by counter (saturating).
pub fn egress_sum(a: EgressStats, b: EgressStats) -> EgressStats {
    EgressStats {
        bytes_out: a.bytes_out.saturating_add(b.bytes_out),
        bytes_in: a.bytes_in.saturating_add(b.bytes_in),
        connections: a.connections.saturating_add(b.connections),
        denied: a.denied.saturating_add(b.denied),
    }
}

/// Gauges of one namespace's running sandboxes, read at scrape time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Running {
    pub sandboxes: u64,
    /// CPU allocated, thousandths of a core.
    pub cpu_millis: u64,
    /// Memory in use, from the cgroups.
    pub memory_bytes: u64,
    /// CPU used so far, nanoseconds, from the cgroups.
    pub cpu_usage_ns: u64,
    /// Sandbox id → its gateway's egress counters now; what they show beyond the sandbox's mark
    /// is added to the namespace's egress counters.
    pub egress_now: BTreeMap<String, EgressStats>,
}

impl Metrics {
    /// The text exposition: the `running` gauges (by namespace name) and the counters of the
    /// incarnations in `rows` (every live namespace, or the one asked for); the unattributed
    /// series only when `one_namespace` is false.
    pub fn render(&self, rows: &[NamespaceRow], one_namespace: bool, running: &BTreeMap<String, Running>) -> String {
        let live: BTreeMap<&str, &str> = rows.iter().map(|r| (r.incarnation.as_str(), r.name.as_str())).collect();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP bulkhead_sandboxes_running Sandboxes running now.\n# TYPE bulkhead_sandboxes_running gauge"
        );
        for (ns, v) in running {
            let _ = writeln!(out, "bulkhead_sandboxes_running{{namespace=\"{}\"}} {}", label(ns), v.sandboxes);
        }
        let _ = writeln!(out, "# HELP bulkhead_cpu_millis_allocated CPU of running sandboxes, thousandths of a core.\n# TYPE bulkhead_cpu_millis_allocated gauge");
        for (ns, v) in running {
            let _ = writeln!(out, "bulkhead_cpu_millis_allocated{{namespace=\"{}\"}} {}", label(ns), v.cpu_millis);
        }
        let _ = writeln!(out, "# HELP bulkhead_memory_bytes Memory in use by running sandboxes, from their cgroups.\n# TYPE bulkhead_memory_bytes gauge");
        for (ns, v) in running {
            let _ = writeln!(out, "bulkhead_memory_bytes{{namespace=\"{}\"}} {}", label(ns), v.memory_bytes);
        }
        let _ = writeln!(out, "# HELP bulkhead_cpu_seconds CPU used by the running sandboxes so far, from their cgroups.\n# TYPE bulkhead_cpu_seconds gauge");
        for (ns, v) in running {
            let _ =
                writeln!(out, "bulkhead_cpu_seconds{{namespace=\"{}\"}} {:.3}", label(ns), v.cpu_usage_ns as f64 / 1e9);
        }
        // Counters since start, of the live incarnations only, by name; egress with what the
        // running sandboxes' counters show beyond their marks, under the same lock.
        let (series, unattributed, egress) = self.with(|c| {
            let series: BTreeMap<String, Series> = c
                .namespaces
                .iter()
                .filter_map(|(inc, s)| live.get(inc.as_str()).map(|name| ((*name).to_owned(), s.clone())))
                .collect();
            let mut egress: BTreeMap<String, EgressStats> =
                series.iter().map(|(ns, s)| (ns.clone(), s.egress)).collect();
            for (ns, r) in running {
                for (id, now) in &r.egress_now {
                    let mark = c.egress_marks.get(id).copied().unwrap_or_default();
                    let e = egress.entry(ns.clone()).or_default();
                    *e = egress_sum(*e, egress_delta(mark, *now));
                }
            }
            egress.retain(|_, e| *e != EgressStats::default());
            (series, c.unattributed.clone(), egress)
        });
        let _ = writeln!(out, "# HELP bulkhead_api_requests_total API requests authenticated into a namespace, by route and status.\n# TYPE bulkhead_api_requests_total counter");
        for (ns, s) in &series {
            for ((route, status), n) in &s.requests {
                let _ = writeln!(
                    out,
                    "bulkhead_api_requests_total{{namespace=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                    label(ns),
                    label(route)
                );
            }
        }
        if !one_namespace {
            let _ = writeln!(out, "# HELP bulkhead_api_requests_unattributed_total API requests not authenticated into a namespace (unauthenticated, cross-tenant, platform), by route and status.\n# TYPE bulkhead_api_requests_unattributed_total counter");
            for ((route, status), n) in &unattributed {
                let _ = writeln!(
                    out,
                    "bulkhead_api_requests_unattributed_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    label(route)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP bulkhead_sandbox_creates_total Sandboxes started.\n# TYPE bulkhead_sandbox_creates_total counter"
        );
        for (ns, s) in series.iter().filter(|(_, s)| s.creates > 0) {
            let _ = writeln!(out, "bulkhead_sandbox_creates_total{{namespace=\"{}\"}} {}", label(ns), s.creates);
        }
        let _ = writeln!(out, "# HELP bulkhead_sandbox_failures_total Sandboxes that ended failed, by reason.\n# TYPE bulkhead_sandbox_failures_total counter");
        for (ns, s) in &series {
            for (reason, n) in &s.failures {
                let _ = writeln!(
                    out,
                    "bulkhead_sandbox_failures_total{{namespace=\"{}\",reason=\"{}\"}} {n}",
                    label(ns),
                    label(reason)
                );
            }
        }
        let _ = writeln!(out, "# HELP bulkhead_quota_rejections_total Creates refused with quota_exceeded.\n# TYPE bulkhead_quota_rejections_total counter");
        for (ns, s) in series.iter().filter(|(_, s)| s.quota_rejections > 0) {
            let _ =
                writeln!(out, "bulkhead_quota_rejections_total{{namespace=\"{}\"}} {}", label(ns), s.quota_rejections);
        }
        let _ = writeln!(out, "# HELP bulkhead_rate_limited_total Requests refused with rate_limited by a namespace's rate limit (requests, execs, creates).\n# TYPE bulkhead_rate_limited_total counter");
        for (ns, s) in &series {
            for (limit, n) in &s.rate_limited {
                let _ =
                    writeln!(out, "bulkhead_rate_limited_total{{namespace=\"{}\",limit=\"{limit}\"}} {n}", label(ns));
            }
        }
        let _ = writeln!(
            out,
            "# HELP bulkhead_exec_seconds Exec latency, from request to exit.\n# TYPE bulkhead_exec_seconds histogram"
        );
        for (ns, h) in series.iter().filter_map(|(ns, s)| s.exec.as_ref().map(|h| (ns, h))) {
            let ns = label(ns);
            for (i, bound) in EXEC_BUCKETS.iter().enumerate() {
                let _ =
                    writeln!(out, "bulkhead_exec_seconds_bucket{{namespace=\"{ns}\",le=\"{bound}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "bulkhead_exec_seconds_bucket{{namespace=\"{ns}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "bulkhead_exec_seconds_sum{{namespace=\"{ns}\"}} {:.6}", h.sum);
            let _ = writeln!(out, "bulkhead_exec_seconds_count{{namespace=\"{ns}\"}} {}", h.count);
        }
        let _ = writeln!(out, "# HELP bulkhead_egress_bytes_total Payload bytes forwarded by the egress gateway, by direction (out: sent by the sandboxes, in: received).\n# TYPE bulkhead_egress_bytes_total counter");
        for (ns, e) in &egress {
            let ns = label(ns);
            let _ =
                writeln!(out, "bulkhead_egress_bytes_total{{namespace=\"{ns}\",direction=\"out\"}} {}", e.bytes_out);
            let _ = writeln!(out, "bulkhead_egress_bytes_total{{namespace=\"{ns}\",direction=\"in\"}} {}", e.bytes_in);
        }
        let _ = writeln!(out, "# HELP bulkhead_egress_connections_total Connections the egress gateway allowed and forwarded.\n# TYPE bulkhead_egress_connections_total counter");
        for (ns, e) in &egress {
            let _ = writeln!(out, "bulkhead_egress_connections_total{{namespace=\"{}\"}} {}", label(ns), e.connections);
        }
        let _ = writeln!(out, "# HELP bulkhead_egress_denied_total Connections and DNS queries the egress gateway denied.\n# TYPE bulkhead_egress_denied_total counter");
        for (ns, e) in &egress {
            let _ = writeln!(out, "bulkhead_egress_denied_total{{namespace=\"{}\"}} {}", label(ns), e.denied);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(incarnation: &str) -> Tenant {
        Tenant { name: "acme".into(), incarnation: incarnation.into() }
    }

    #[test]
    fn a_deleted_incarnation_counts_nothing_more() {
        let m = Metrics::default();
        let old = tenant("nsi_old");
        m.exec(&old, 0.01);
        m.sandbox_created(&old);
        m.request(Some(&old), "/v1/namespaces/{ns}", 200);
        assert_eq!(m.namespace_series(), 1);
        m.forget(&old.incarnation);
        assert_eq!(m.namespace_series(), 0);
        // A request of the old incarnation that finishes after the delete.
        m.request(Some(&old), "/v1/namespaces/{ns}", 200);
        m.exec(&old, 0.01);
        assert_eq!(m.namespace_series(), 0);
        // The new incarnation of the name counts from zero.
        let new = tenant("nsi_new");
        m.request(Some(&new), "/v1/namespaces/{ns}", 200);
        let creates = m.with(|c| c.namespaces.get("nsi_new").map(|s| s.creates));
        assert_eq!(creates, Some(0));
    }

    fn row(name: &str, incarnation: &str) -> NamespaceRow {
        NamespaceRow {
            name: name.into(),
            isolation: "container".into(),
            quotas: bulkhead_core::Quotas::DEFAULT,
            created_at_ms: 0,
            updated_at_ms: 0,
            id_start: 0,
            id_count: 0,
            incarnation: incarnation.into(),
            egress: None,
            placement: Default::default(),
        }
    }

    fn sample_value(text: &str, series: &str) -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn egress_counters_add_what_is_metered_to_what_is_not_yet_and_never_go_back() {
        let m = Metrics::default();
        let t = tenant("nsi_a");
        let rows = [row("acme", "nsi_a")];
        let e = |out, inn, conns, denied| EgressStats { bytes_out: out, bytes_in: inn, connections: conns, denied };
        let scrape = |now: EgressStats| {
            let mut running = BTreeMap::new();
            running.insert(
                "acme".to_owned(),
                Running { egress_now: [("sbx_a".to_owned(), now)].into(), ..Default::default() },
            );
            let text = m.render(&rows, true, &running);
            let v = |s| sample_value(&text, s).unwrap_or(0);
            (
                v("bulkhead_egress_bytes_total{namespace=\"acme\",direction=\"out\"}"),
                v("bulkhead_egress_bytes_total{namespace=\"acme\",direction=\"in\"}"),
                v("bulkhead_egress_connections_total{namespace=\"acme\"}"),
                v("bulkhead_egress_denied_total{namespace=\"acme\"}"),
            )
        };
        // Nothing yet: no series at all.
        assert!(!m.render(&rows, true, &BTreeMap::new()).contains("bulkhead_egress_bytes_total{"));
        // Not sampled yet: all of it is beyond the (zero) mark.
        assert_eq!(scrape(e(100, 1000, 2, 5)), (100, 1000, 2, 5));
        // Sampled: the mark moves with the series.
        m.egress_metered(Some(&t), "sbx_a", e(100, 1000, 2, 5), e(100, 1000, 2, 5));
        assert_eq!(m.egress_mark("sbx_a"), e(100, 1000, 2, 5));
        assert_eq!(scrape(e(100, 1000, 2, 5)), (100, 1000, 2, 5));
        assert_eq!(scrape(e(150, 1200, 3, 5)), (150, 1200, 3, 5));
        // The gateway's counters started again from zero (a restart of the sandbox's gateway):
        // what they show now is new.
        assert_eq!(egress_delta(e(150, 1200, 3, 5), e(10, 20, 1, 0)), e(10, 20, 1, 0));
        // The sandbox ended and was forgotten: its metered egress stays in the series.
        m.egress_metered(Some(&t), "sbx_a", e(150, 1200, 3, 5), e(50, 200, 1, 0));
        m.egress_retain(|_| false);
        assert_eq!(m.egress_mark("sbx_a"), EgressStats::default());
        assert_eq!(scrape(EgressStats::default()), (150, 1200, 3, 5));
        // A deleted namespace's egress goes with it.
        m.forget("nsi_a");
        m.egress_metered(Some(&t), "sbx_b", e(1, 1, 1, 1), e(1, 1, 1, 1));
        assert!(!m.render(&rows, true, &BTreeMap::new()).contains("bulkhead_egress_bytes_total{"));
    }

    #[test]
    fn label_values_come_from_fixed_sets() {
        let m = Metrics::default();
        for status in [200, 299, 418, 599, 1000] {
            m.request(None, "", status);
        }
        m.sandbox_failed(&tenant("nsi_a"), "start_failed: runc said no");
        m.sandbox_failed(&tenant("nsi_a"), "anything a tenant wrote: x");
        let (unattributed, failures) =
            m.with(|c| (c.unattributed.keys().cloned().collect::<Vec<_>>(), c.namespaces["nsi_a"].failures.clone()));
        assert_eq!(
            unattributed,
            vec![("unmatched".to_owned(), "200".to_owned()), ("unmatched".to_owned(), "other".to_owned())]
        );
        assert_eq!(failures.keys().map(String::as_str).collect::<Vec<_>>(), vec!["other", "start_failed"]);
    }
}
