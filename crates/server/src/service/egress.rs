//! The server's side of egress (PRODUCT.md, *Network egress*): the runtime's gateway asks
//! [`EgressPolicy`] about every DNS query and every connection of a sandbox, and `authz/explain`
//! asks [`judge`] the same question.
//!
//! One decision, in order, each step ending it when it refuses:
//! 1. the sandbox must be running;
//! 2. the address, when there is one, must not be one no policy opens: the sandbox network
//!    (`--sandbox-cidr`), loopback, link-local, metadata, reserved, multicast, and private,
//!    shared or unique-local ranges the ceiling does not name (documentation ranges are ordinary
//!    destinations) — rule `always-denied`;
//! 3. the destination must match the sandbox's `egress.allow` (rule `allow`) and the namespace's
//!    *current* ceiling (rule `ceiling`), so a ceiling narrowed later holds for running sandboxes;
//! 4. the namespace's Cedar policies, through the one decision function: the sandbox's
//!    principal, action `network.connect`, resource `Bulkhead::Host::"<name>"` and
//!    `Bulkhead::Host::"<address>"`, context `{port, protocol}` (port 0 for DNS). A connection
//!    the gateway knows both a name and an address of is asked about each, and allowed only when
//!    both are: a `forbid` on the address holds whatever name reaches it, and one on the name
//!    whatever address it resolves to. The policies are read per decision from the identity
//!    cache, so a new `forbid` holds for the next connection.
//!
//! Every denial is counted and audited, aggregated, by the denial log (see `egress_audit`).

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bulkhead_core::egress::{self, Dest, Refusal};
use bulkhead_core::outbound::{canonical_ip, Cidr};
use bulkhead_core::{Action, Decision, Principal, Target};
pub use bulkhead_runtime::egress::Protocol;
use bulkhead_runtime::egress::{ConnectRequest, EgressDecider, Verdict};
use bulkhead_store::{NamespaceRow, SandboxRow, SandboxStatus};

use crate::auth::Decider;
use crate::error::ApiResult;
use crate::state::{AppState, Inner};

/// How one egress attempt is decided, with what explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub allowed: bool,
    /// The permits that allowed, the forbids that denied, or the rule (`always-denied`,
    /// `allow`, `ceiling`, `not-running`) that denied before the policies.
    pub policies: Vec<String>,
    /// Why it was denied, in words; `None` when allowed.
    pub reason: Option<String>,
    /// Policies that failed to evaluate.
    pub errors: Vec<String>,
}

impl Judgement {
    fn refused(rule: &str, reason: String) -> Judgement {
        Judgement { allowed: false, policies: vec![rule.to_owned()], reason: Some(reason), errors: Vec::new() }
    }
}

/// Decides whether sandbox `sandbox` of namespace `ns` may reach `dest` by `protocol` (see the
/// module's doc for the steps).
pub async fn judge(
    state: &AppState,
    ns: &NamespaceRow,
    sandbox: &SandboxRow,
    dest: &Dest<'_>,
    protocol: Protocol,
) -> ApiResult<Judgement> {
    if sandbox.status != SandboxStatus::Running {
        return Ok(Judgement::refused("not-running", format!("sandbox {} is {}", sandbox.id, sandbox.status.as_str())));
    }
    let ceiling = ns.egress.as_ref().map(|c| c.allow.as_slice()).unwrap_or_default();
    let allow = sandbox.egress.as_ref().map(|e| e.allow.as_slice()).unwrap_or_default();
    let net = state.config.runtime.sandbox_cidr;
    let sandbox_net = Cidr::new_v4(net.addr, net.len);
    if let Some(addr) = dest.addr.map(canonical_ip).filter(|a| sandbox_net.contains(*a)) {
        return Ok(Judgement::refused(
            Refusal::AlwaysDenied(bulkhead_core::outbound::Special::Shared).rule(),
            format!("{addr} is in the sandbox network and never reachable from a sandbox"),
        ));
    }
    if let Err(refusal) = egress::check(dest, allow, ceiling) {
        return Ok(Judgement::refused(refusal.rule(), refusal.reason(dest)));
    }
    let principal = Principal::Sandbox {
        id: sandbox.id.clone(),
        namespace: ns.name.clone(),
        creator: sandbox.creator.clone(),
        project: sandbox.project.clone(),
        task: sandbox.task.clone(),
    };
    let decider = Decider::load(state, principal).await?;
    let port = dest.port.unwrap_or(0);
    let addr = dest.addr.map(|a| canonical_ip(a).to_string());
    // Each resource the connection is known by: its name and the address it reaches. Every one
    // must be allowed; a forbid on any holds.
    let mut hosts: Vec<&str> = dest.name.into_iter().chain(addr.as_deref()).collect();
    hosts.dedup();
    let (mut permits, mut forbids, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    let mut denials = Vec::new();
    for host in hosts {
        let target = Target::host(&ns.name, host, port, protocol.as_str());
        let ruling = decider.ruling(Action::NetworkConnect, &target);
        errors.extend(ruling.errors);
        match ruling.decision {
            Decision::Allow => permits.extend(ruling.permits),
            Decision::Forbidden { policies } => {
                let what = match dest.name {
                    Some(name) if name != host => format!("{host} (the address {name} reached)"),
                    _ => host.to_owned(),
                };
                denials.push(if policies.is_empty() {
                    format!("no policy permits network.connect to {what}")
                } else {
                    format!("network.connect to {what} is forbidden by {}", policies.join(", "))
                });
                forbids.extend(policies);
            }
            Decision::NotFound(_) => {
                return Ok(Judgement::refused("not-found", "the sandbox's own namespace was hidden".into()));
            }
        }
    }
    for list in [&mut permits, &mut forbids, &mut errors] {
        list.sort();
        list.dedup();
    }
    if denials.is_empty() {
        return Ok(Judgement { allowed: true, policies: permits, reason: None, errors });
    }
    let mut reason = denials.join("; ");
    if let (None, Some(addr)) = (dest.name, &addr) {
        // Explain of an address answers for every connection to it.
        reason.push_str(&format!("; a connection by a name that resolves to {addr} is judged as {addr} too"));
    }
    Ok(Judgement { allowed: false, policies: forbids, reason: Some(reason), errors })
}

/// The server's [`EgressDecider`], handed to the runtime at start. It holds the state weakly:
/// the runtime is part of the state, and a decider outliving the server denies everything.
pub struct EgressPolicy {
    state: Weak<Inner>,
}

impl EgressPolicy {
    /// The decider of `state`'s server.
    pub fn new(state: &AppState) -> Arc<EgressPolicy> {
        Arc::new(EgressPolicy { state: Arc::downgrade(&state.0) })
    }

    async fn verdict(&self, state: &AppState, req: &ConnectRequest) -> ApiResult<Verdict> {
        let deny = |reason: String, rule: &str| Verdict::Deny { reason, policies: vec![rule.to_owned()] };
        let Some(ns) = namespace(state, &req.namespace).await? else {
            return Ok(deny(format!("namespace {} does not exist", req.namespace), "not-found"));
        };
        let Some(sandbox) = state.store.get_sandbox(&req.namespace, &req.sandbox).await? else {
            return Ok(deny(format!("sandbox {} does not exist", req.sandbox), "not-found"));
        };
        let dest = Dest { name: req.name.as_deref(), addr: req.addr, port: req.port };
        if dest.name.is_none() && dest.addr.is_none() {
            return Ok(deny("a request with neither a name nor an address".into(), "invalid"));
        }
        let j = judge(state, &ns, &sandbox, &dest, req.protocol).await?;
        if !j.allowed {
            return Ok(Verdict::Deny { reason: j.reason.unwrap_or_default(), policies: j.policies });
        }
        // A credential's host: the header to add and the namespace's CA to terminate TLS with.
        let broker = match (req.protocol, &req.name, &sandbox.egress) {
            (Protocol::Tcp, Some(name), Some(egress)) => {
                crate::service::egress_broker::broker_for(state, &ns.name, egress, name).await
            }
            _ => None,
        };
        Ok(Verdict::Allow {
            max_bandwidth_bytes_per_second: ns.egress.as_ref().and_then(|c| c.max_bandwidth_bytes_per_second),
            broker,
        })
    }
}

/// The namespace's row, from the cache when it holds it (a ceiling change replaces it there).
async fn namespace(state: &AppState, ns: &str) -> ApiResult<Option<NamespaceRow>> {
    if let Some(row) = state.namespaces.get(ns) {
        return Ok(Some(row));
    }
    let row = state.store.get_namespace(ns).await?;
    if let Some(row) = &row {
        state.namespaces.put(row.clone());
    }
    Ok(row)
}

#[async_trait]
impl EgressDecider for EgressPolicy {
    async fn decide(&self, req: &ConnectRequest) -> Verdict {
        let Some(inner) = self.state.upgrade() else {
            return Verdict::Deny { reason: "the server is stopping".into(), policies: vec!["unavailable".into()] };
        };
        let state = AppState(inner);
        let verdict = match self.verdict(&state, req).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(namespace = %req.namespace, sandbox = %req.sandbox, error = %e, "an egress decision failed; denied");
                Verdict::Deny { reason: "the decision failed".into(), policies: vec!["error".into()] }
            }
        };
        if let Verdict::Deny { policies, .. } = &verdict {
            let destination =
                req.name.clone().or_else(|| req.addr.map(|a| canonical_ip(a).to_string())).unwrap_or_default();
            // Counted and audited in aggregate (crate::service::egress_audit), never one record
            // or log line per attempt.
            state.denials.record(&req.namespace, &req.sandbox, &destination, req.port, policies);
        }
        verdict
    }
}
