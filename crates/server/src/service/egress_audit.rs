//! The audit of denied egress, aggregated. The egress decider reports every denial here
//! ([`DenialLog::record`]); denials are tallied per (namespace, sandbox, destination, port,
//! deciding policies) over an interval, and each interval ends with one audit record per tally
//! (action `network.connect`, decision `deny`, the count in its detail) in the namespace's
//! chain, and a few log lines. A sandbox that tries a denied host a million times makes one
//! record, not a million.
//!
//! **Invariant:** whatever sandboxes do, memory, audit records and log lines per interval are
//! bounded by [`DenialLimits`]: distinct tallies past a sandbox's, a namespace's or the server's
//! bound fold into one "other destinations" tally of their sandbox, and past the bound of those
//! into one count of denials without a tally; every denial is counted in exactly one of them.
//! Recording never logs and never waits on the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use bulkhead_core::audit::{cut, AuditEvent, PLATFORM_CHAIN};
use serde_json::{json, Map, Value};

use super::ServiceResult;
use crate::state::AppState;
use crate::time::now_ms;

/// The action of an egress record, as the policies name it.
pub const ACTION: &str = "network.connect";

/// A destination (a DNS name, at most 253 bytes, or an address) is kept up to this many bytes.
const MAX_DESTINATION_BYTES: usize = 253;
/// Deciding policies kept per tally, and bytes kept of each id.
const MAX_POLICIES: usize = 8;
const MAX_POLICY_BYTES: usize = 128;

/// The bounds of one interval of the denial log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenialLimits {
    /// Distinct tallies held at once, for the whole server.
    pub max_keys: usize,
    /// Distinct tallies of one namespace.
    pub max_keys_per_namespace: usize,
    /// Distinct tallies of one sandbox; its further destinations fold into its "other
    /// destinations" tally.
    pub max_keys_per_sandbox: usize,
    /// Sandboxes with an "other destinations" tally, for the whole server.
    pub max_overflow_sandboxes: usize,
    /// Log lines naming a tally per interval (the largest ones); one more line sums up the rest.
    pub max_log_lines: usize,
}

impl Default for DenialLimits {
    fn default() -> Self {
        DenialLimits {
            max_keys: 1024,
            max_keys_per_namespace: 64,
            max_keys_per_sandbox: 16,
            max_overflow_sandboxes: 1024,
            max_log_lines: 8,
        }
    }
}

/// What one tally is of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    namespace: String,
    sandbox: String,
    destination: String,
    port: Option<u16>,
    policies: Vec<String>,
}

/// Denials counted in one tally, and when the first and the last came (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    count: u64,
    first_ms: i64,
    last_ms: i64,
}

impl Tally {
    fn new(at_ms: i64) -> Tally {
        Tally { count: 1, first_ms: at_ms, last_ms: at_ms }
    }

    fn bump(&mut self, at_ms: i64) {
        self.count = self.count.saturating_add(1);
        self.last_ms = self.last_ms.max(at_ms);
    }
}

/// One interval's tallies.
#[derive(Debug, Default)]
struct Window {
    keys: HashMap<Key, Tally>,
    /// Distinct tallies by namespace, and by (namespace, sandbox).
    per_namespace: HashMap<String, usize>,
    per_sandbox: HashMap<(String, String), usize>,
    /// "Other destinations" tallies, by (namespace, sandbox).
    overflow: HashMap<(String, String), Tally>,
    /// Denials in no tally (every bound was reached).
    untallied: u64,
}

/// One aggregated record of denials: what [`DenialLog::take`] hands out at the end of an
/// interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenialRecord {
    pub namespace: String,
    pub sandbox: String,
    /// The name or address denied; `None` for the sandbox's "other destinations" tally (its
    /// distinct destinations went past a bound), which has no port and no policies either.
    pub destination: Option<String>,
    pub port: Option<u16>,
    /// The ids of the deciding policies, or the rule (`ceiling`, `allow`, `always-denied`).
    pub policies: Vec<String>,
    pub count: u64,
    /// The first and the last denial of the tally, ms since the epoch.
    pub first_ms: i64,
    pub last_ms: i64,
}

/// What one interval of the denial log adds up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenialBatch {
    /// One record per tally, largest count first.
    pub records: Vec<DenialRecord>,
    /// Denials in no record: every bound of the interval was reached.
    pub untallied: u64,
}

impl DenialBatch {
    /// Every denial of the interval, in a record or not.
    pub fn denials(&self) -> u64 {
        self.records.iter().fold(self.untallied, |n, r| n.saturating_add(r.count))
    }
}

/// Denied egress of every sandbox, tallied for the audit; see the module's doc. Shared by the
/// egress decider (which records) and the flusher (which takes a batch every interval).
#[derive(Debug, Default)]
pub struct DenialLog {
    limits: DenialLimits,
    window: Mutex<Window>,
}

impl DenialLog {
    pub fn new(limits: DenialLimits) -> DenialLog {
        DenialLog { limits, window: Mutex::new(Window::default()) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Window) -> R) -> R {
        f(&mut self.window.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Counts one denial: sandbox `sandbox` of `namespace` tried `destination` (a DNS name or an
    /// address, as the gateway found it) on `port` (`None` for a DNS query), and `policies`
    /// (policy ids, or the rule: `ceiling`, `allow`, `always-denied`) decided it. Cheap and never
    /// blocking on IO: it runs on the connection's path. Long values are cut (a destination to
    /// 253 bytes, at most 8 policies of 128 bytes).
    pub fn record(&self, namespace: &str, sandbox: &str, destination: &str, port: Option<u16>, policies: &[String]) {
        self.record_at(now_ms(), namespace, sandbox, destination, port, policies);
    }

    fn record_at(
        &self,
        at_ms: i64,
        namespace: &str,
        sandbox: &str,
        destination: &str,
        port: Option<u16>,
        policies: &[String],
    ) {
        let key = Key {
            namespace: namespace.to_owned(),
            sandbox: sandbox.to_owned(),
            destination: cut(destination, MAX_DESTINATION_BYTES).to_owned(),
            port,
            policies: policies.iter().take(MAX_POLICIES).map(|p| cut(p, MAX_POLICY_BYTES).to_owned()).collect(),
        };
        let limits = self.limits;
        self.with(|w| {
            if let Some(t) = w.keys.get_mut(&key) {
                t.bump(at_ms);
                return;
            }
            let sandbox_key = (key.namespace.clone(), key.sandbox.clone());
            let in_namespace = w.per_namespace.get(&key.namespace).copied().unwrap_or(0);
            let in_sandbox = w.per_sandbox.get(&sandbox_key).copied().unwrap_or(0);
            if w.keys.len() < limits.max_keys
                && in_namespace < limits.max_keys_per_namespace
                && in_sandbox < limits.max_keys_per_sandbox
            {
                *w.per_namespace.entry(key.namespace.clone()).or_default() += 1;
                *w.per_sandbox.entry(sandbox_key).or_default() += 1;
                w.keys.insert(key, Tally::new(at_ms));
                return;
            }
            if let Some(t) = w.overflow.get_mut(&sandbox_key) {
                t.bump(at_ms);
            } else if w.overflow.len() < limits.max_overflow_sandboxes {
                w.overflow.insert(sandbox_key, Tally::new(at_ms));
            } else {
                w.untallied = w.untallied.saturating_add(1);
            }
        });
    }

    /// Ends the interval: its tallies as records (largest count first), and a new, empty
    /// interval begins.
    pub fn take(&self) -> DenialBatch {
        let window = self.with(std::mem::take);
        let mut records: Vec<DenialRecord> = window
            .keys
            .into_iter()
            .map(|(k, t)| DenialRecord {
                namespace: k.namespace,
                sandbox: k.sandbox,
                destination: Some(k.destination),
                port: k.port,
                policies: k.policies,
                count: t.count,
                first_ms: t.first_ms,
                last_ms: t.last_ms,
            })
            .chain(window.overflow.into_iter().map(|((namespace, sandbox), t)| DenialRecord {
                namespace,
                sandbox,
                destination: None,
                port: None,
                policies: Vec::new(),
                count: t.count,
                first_ms: t.first_ms,
                last_ms: t.last_ms,
            }))
            .collect();
        records.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| {
                (&a.namespace, &a.sandbox, &a.destination, a.port).cmp(&(
                    &b.namespace,
                    &b.sandbox,
                    &b.destination,
                    b.port,
                ))
            })
        });
        DenialBatch { records, untallied: window.untallied }
    }

    /// The log lines of a batch: the largest `max_log_lines` records, then one line summing up
    /// (only when there were denials). What [`flush`] logs.
    pub fn log_lines(&self, batch: &DenialBatch) -> Vec<String> {
        let mut lines: Vec<String> = batch
            .records
            .iter()
            .take(self.limits.max_log_lines)
            .map(|r| {
                // Debug-quoted: a destination is what a sandbox sent (a TLS server name, a
                // Host header) and must not forge log lines.
                format!(
                    "egress denied: namespace={:?} sandbox={:?} destination={:?} port={} policies={:?} count={}",
                    r.namespace,
                    r.sandbox,
                    r.destination.as_deref().unwrap_or("<other destinations>"),
                    r.port.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    r.policies,
                    r.count
                )
            })
            .collect();
        if batch.denials() > 0 {
            lines.push(format!(
                "egress denials this interval: {} in {} audit records ({} not logged), {} beyond every bound",
                batch.denials(),
                batch.records.len(),
                batch.records.len().saturating_sub(self.limits.max_log_lines),
                batch.untallied
            ));
        }
        lines
    }
}

/// The audit event of one record. Its time is the last denial's; its principal the sandbox; its
/// resource `host:<destination>` (`host:*` for other destinations), as `authz/explain` names
/// it; status 403, what the API answers a denied request.
pub fn event(record: &DenialRecord, window_ms: i64) -> AuditEvent {
    let mut detail = Map::new();
    detail.insert("count".into(), json!(record.count));
    detail.insert("port".into(), record.port.map_or(Value::Null, |p| json!(p)));
    detail.insert("policies".into(), json!(record.policies));
    detail.insert("first".into(), json!(crate::time::rfc3339(record.first_ms)));
    detail.insert("last".into(), json!(crate::time::rfc3339(record.last_ms)));
    detail.insert("interval_ms".into(), json!(window_ms));
    if record.destination.is_none() {
        detail.insert("other_destinations".into(), json!(true));
    }
    AuditEvent {
        time_ms: record.last_ms,
        principal: format!("sandbox:{}", record.sandbox),
        action: ACTION.to_owned(),
        resource: format!("host:{}", record.destination.as_deref().unwrap_or("*")),
        decision: "deny".to_owned(),
        status: 403,
        request_id: String::new(),
        detail: bulkhead_core::audit::bounded_detail(&detail),
    }
}

/// Ends the interval of `state.denials`: appends its records to their namespaces' chains and
/// logs a bounded summary. A record of a sandbox the store no longer has in its namespace (the
/// namespace was deleted, maybe created again) goes to the platform chain, never into a new
/// incarnation's; denials beyond every bound make one platform record. Returns the batch.
pub async fn flush(state: &AppState, window_ms: i64) -> ServiceResult<DenialBatch> {
    let batch = state.denials.take();
    for line in state.denials.log_lines(&batch) {
        tracing::warn!("{line}");
    }
    let mut known: HashMap<(String, String), bool> = HashMap::new();
    let mut by_chain: BTreeMap<String, Vec<AuditEvent>> = BTreeMap::new();
    for r in &batch.records {
        let key = (r.namespace.clone(), r.sandbox.clone());
        let live = match known.get(&key) {
            Some(live) => *live,
            None => {
                let live = state.store.get_sandbox(&r.namespace, &r.sandbox).await?.is_some();
                known.insert(key, live);
                live
            }
        };
        let chain = if live { r.namespace.clone() } else { PLATFORM_CHAIN.to_owned() };
        by_chain.entry(chain).or_default().push(event(r, window_ms));
    }
    if batch.untallied > 0 {
        let mut detail = Map::new();
        detail.insert("count".into(), json!(batch.untallied));
        detail.insert("interval_ms".into(), json!(window_ms));
        by_chain.entry(PLATFORM_CHAIN.to_owned()).or_default().push(AuditEvent {
            time_ms: now_ms(),
            principal: "sandbox:*".to_owned(),
            action: ACTION.to_owned(),
            resource: "host:*".to_owned(),
            decision: "deny".to_owned(),
            status: 403,
            request_id: String::new(),
            detail: bulkhead_core::audit::bounded_detail(&detail),
        });
    }
    for (chain, events) in by_chain {
        for e in events {
            if let Err(err) = state.store.append_audit(&chain, e).await {
                // Handled here: the chain's next records are not tried, the other chains' are.
                tracing::error!(error = %err, chain, "appending an egress denial record failed");
                break;
            }
        }
    }
    Ok(batch)
}

/// Flushes the denial log every `interval` until the process ends.
pub fn spawn_flush(state: AppState, interval: Duration) {
    super::spawn_every(
        &state,
        interval,
        "egress denial audit",
        |state| async move { flush_now(&state).await.map(drop) },
    );
}

/// [`flush`] with the server's configured interval (at shutdown, the interval cut short).
pub async fn flush_now(state: &AppState) -> ServiceResult<DenialBatch> {
    let window_ms = i64::try_from(state.config.egress_audit_interval.as_millis()).unwrap_or(i64::MAX);
    flush(state, window_ms).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies() -> Vec<String> {
        vec!["allow".to_owned()]
    }

    #[test]
    fn repeated_denials_of_one_destination_make_one_record() {
        let log = DenialLog::default();
        for i in 0..1000 {
            log.record_at(1000 + i, "acme", "sbx_a", "denied.test", Some(443), &policies());
        }
        log.record_at(5000, "acme", "sbx_a", "denied.test", Some(80), &policies());
        let batch = log.take();
        assert_eq!(batch.records.len(), 2, "{batch:?}");
        let r = &batch.records[0];
        assert_eq!((r.destination.as_deref(), r.port, r.count), (Some("denied.test"), Some(443), 1000));
        assert_eq!((r.first_ms, r.last_ms), (1000, 1999));
        assert_eq!(batch.denials(), 1001);
        // A new interval starts empty.
        assert_eq!(log.take(), DenialBatch::default());
        assert!(log.log_lines(&DenialBatch::default()).is_empty());
    }

    #[test]
    fn a_sandbox_hammering_denied_hosts_makes_a_bounded_number_of_records_and_lines() {
        let limits = DenialLimits::default();
        let log = DenialLog::new(limits);
        let hostile = "x".repeat(5000);
        for i in 0..100_000u32 {
            // Every denial a new destination, port and policy list, some of them huge.
            let dest = if i % 1000 == 0 { format!("{hostile}{i}") } else { format!("h{i}.denied.test\n") };
            let many: Vec<String> = (0..(i % 20)).map(|p| format!("pol_{p}_{}", "y".repeat(300))).collect();
            log.record_at(i64::from(i), "acme", "sbx_loud", &dest, Some((i % 65_536) as u16), &many);
        }
        let batch = log.take();
        assert_eq!(batch.denials(), 100_000, "every denial is counted once");
        assert_eq!(batch.records.len(), limits.max_keys_per_sandbox + 1, "its own tallies and one for the rest");
        let other = batch.records.iter().find(|r| r.destination.is_none()).expect("the other-destinations tally");
        assert_eq!(other.count, 100_000 - limits.max_keys_per_sandbox as u64);
        assert_eq!(batch.records[0], *other, "largest first");
        for r in &batch.records {
            assert!(r.destination.as_ref().is_none_or(|d| d.len() <= MAX_DESTINATION_BYTES));
            assert!(r.policies.len() <= MAX_POLICIES && r.policies.iter().all(|p| p.len() <= MAX_POLICY_BYTES));
            let e = event(r, 10_000);
            assert!(e.detail.len() <= 4096, "{}", e.detail.len());
        }
        let lines = log.log_lines(&batch);
        assert_eq!(lines.len(), limits.max_log_lines + 1, "{lines:#?}");
        assert!(lines.iter().all(|l| !l.contains('\n')), "a destination forged a log line: {lines:#?}");
        assert!(lines.last().is_some_and(|l| l.contains("100000")), "{lines:#?}");
    }

    #[test]
    fn many_sandboxes_and_namespaces_stay_within_every_bound() {
        let limits = DenialLimits {
            max_keys: 50,
            max_keys_per_namespace: 20,
            max_keys_per_sandbox: 4,
            max_overflow_sandboxes: 30,
            max_log_lines: 3,
        };
        let log = DenialLog::new(limits);
        let mut total = 0u64;
        for ns in 0..10 {
            for sbx in 0..10 {
                for dest in 0..10 {
                    for _ in 0..3 {
                        log.record_at(
                            0,
                            &format!("ns{ns}"),
                            &format!("sbx_{ns}_{sbx}"),
                            &format!("d{dest}"),
                            None,
                            &[],
                        );
                        total += 1;
                    }
                }
            }
        }
        let batch = log.take();
        assert_eq!(batch.denials(), total);
        let tallies = batch.records.iter().filter(|r| r.destination.is_some()).count();
        let overflow = batch.records.len() - tallies;
        assert_eq!(tallies, limits.max_keys);
        assert!(overflow <= limits.max_overflow_sandboxes);
        assert!(batch.untallied > 0, "past every bound, denials are still counted");
        let mut per_ns: HashMap<&str, usize> = HashMap::new();
        let mut per_sbx: HashMap<&str, usize> = HashMap::new();
        for r in batch.records.iter().filter(|r| r.destination.is_some()) {
            *per_ns.entry(&r.namespace).or_default() += 1;
            *per_sbx.entry(&r.sandbox).or_default() += 1;
        }
        assert!(per_ns.values().all(|n| *n <= limits.max_keys_per_namespace), "{per_ns:?}");
        assert!(per_sbx.values().all(|n| *n <= limits.max_keys_per_sandbox), "{per_sbx:?}");
        assert_eq!(log.log_lines(&batch).len(), limits.max_log_lines + 1);
    }
}
