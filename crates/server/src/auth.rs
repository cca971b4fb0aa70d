//! Authentication and the per-request context. [`Ctx`] is the first extractor of every
//! authenticated handler: it turns the bearer token (the admin token, an API key, a sandbox's
//! workload token, or a user's OpenID Connect token for the namespace in the path) into a
//! [`Principal`] and gives the handler its decisions, every one of them a call of
//! `bulkhead_policy::decide` on a typed [`Target`] made by [`Decider`] (the tenant boundary, then
//! the projects of a limited key, then the namespace's Cedar policies):
//!
//! - [`Ctx::authorize`], the request's action, noted for the audit middleware;
//! - [`Ctx::reauthorize`], the same action again once the target is looked up (its project known);
//! - [`Ctx::require`] and [`Ctx::decide`], a further decision inside the request (a mount mode),
//!   and [`Ctx::decide_as`] for another principal (a secret released to the sandbox being
//!   created), recorded in the audit record when they deny;
//! - [`Ctx::sees`], which items of a list, a log or an audit page the principal is shown.

use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use bulkhead_core::token::{ADMIN_TOKEN_PREFIX, KEY_TOKEN_PREFIX, MAX_TOKEN_LEN, WORKLOAD_TOKEN_PREFIX};
use bulkhead_core::{Action, Decision, Hidden, Principal, Target};
use bulkhead_policy::{CompiledSet, Ruling};

use crate::error::{ApiError, ApiResult};
use crate::request::{ClientRequestId, RequestId};
use crate::state::AppState;
use crate::time::now_ms;

/// What the audit middleware needs to know about a request, filled in as it is served.
#[derive(Debug, Default)]
pub struct AuditInfo {
    pub principal: Option<Principal>,
    /// The request's action, once authorized.
    pub action: Option<Action>,
    pub mutating: bool,
    pub resource: String,
    pub decision: Option<Decision>,
    /// The chain to append to, when the handler knows better than the default (the principal's
    /// namespace, or the platform chain for the admin).
    pub chain: Option<String>,
    pub detail: serde_json::Map<String, serde_json::Value>,
    /// The namespace incarnation the request was authenticated into, when it was: see
    /// [`Ctx::tenant`].
    pub tenant: Option<crate::metrics::Tenant>,
    /// The request was refused by its namespace's request bucket before anything was done.
    pub rate_limited: bool,
}

/// Shared between the audit middleware and the handler of one request.
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(pub Arc<Mutex<AuditInfo>>);

impl AuditSlot {
    pub fn with<R>(&self, f: impl FnOnce(&mut AuditInfo) -> R) -> R {
        let mut info = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut info)
    }
}

/// An authenticated request.
pub struct Ctx {
    pub state: AppState,
    pub principal: Principal,
    /// The server-made request id.
    pub request_id: String,
    /// The client's own `X-Request-Id`, when it sent an acceptable one.
    pub client_request_id: Option<String>,
    slot: AuditSlot,
    /// The decisions of this principal.
    decider: Decider,
    /// The namespace incarnation this request is authenticated into: the principal's own
    /// namespace when the path names it (or names none), the path's namespace for the platform
    /// admin; `None` for a request of one namespace's principal on another's path. Per-namespace
    /// observability is keyed by it.
    pub tenant: Option<crate::metrics::Tenant>,
}

/// The subprotocol a WebSocket client offers beside [`WS_BEARER_PREFIX`]`<token>`, and the one the
/// server answers with (a browser fails a handshake whose answer names none of its offers).
pub const WS_PROTOCOL: &str = "bulkhead";

/// A WebSocket upgrade's bearer token, for clients that cannot set `Authorization` (browsers):
/// `Sec-WebSocket-Protocol: bulkhead, base64url.bearer.bulkhead.<token in unpadded base64url>`,
/// the form Kubernetes' API server accepts (`base64url.bearer.authorization.k8s.io.<token>`).
/// Never a query parameter: URLs end up in logs and histories.
pub const WS_BEARER_PREFIX: &str = "base64url.bearer.bulkhead.";

/// The request's bearer token: its `Authorization: Bearer` header, or on a WebSocket upgrade
/// without one the token of its [`WS_BEARER_PREFIX`] subprotocol.
fn bearer(parts: &Parts) -> ApiResult<std::borrow::Cow<'_, str>> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return match subprotocol_bearer(parts)? {
            Some(token) => Ok(std::borrow::Cow::Owned(token)),
            None => Err(ApiError::Unauthenticated("missing Authorization: Bearer token".into())),
        };
    };
    header_bearer(value).map(std::borrow::Cow::Borrowed)
}

/// Whether `parts` is a WebSocket opening handshake (RFC 6455, 4.1) for a process's attach, the
/// one route that upgrades: `GET .../processes/{id}/attach` with `Upgrade: websocket`, a
/// `Connection` naming `upgrade` and a `Sec-WebSocket-Key`. Nothing else may authenticate with
/// the subprotocol, so no other request carries a token in a header proxies do not redact.
fn is_attach_handshake(parts: &Parts) -> bool {
    use axum::http::header::{CONNECTION, SEC_WEBSOCKET_KEY, UPGRADE};
    let header = |name| parts.headers.get(name).and_then(|v: &axum::http::HeaderValue| v.to_str().ok());
    parts.method == axum::http::Method::GET
        && parts.uri.path().ends_with("/attach")
        && parts.uri.path().contains("/processes/")
        && header(UPGRADE).is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        && header(CONNECTION).is_some_and(|c| c.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        && parts.headers.contains_key(SEC_WEBSOCKET_KEY)
}

/// The token of a WebSocket upgrade's [`WS_BEARER_PREFIX`] subprotocol, if it offers one (only
/// on a process attach's handshake, [`is_attach_handshake`]); one that is not unpadded base64url
/// of UTF-8 is a 401.
fn subprotocol_bearer(parts: &Parts) -> ApiResult<Option<String>> {
    use base64::Engine;
    if !is_attach_handshake(parts) {
        return Ok(None);
    }
    let offers = parts.headers.get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL);
    let encoded = offers
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(WS_BEARER_PREFIX));
    let Some(encoded) = encoded else { return Ok(None) };
    let malformed = || ApiError::Unauthenticated("malformed bearer subprotocol".into());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded).map_err(|_| malformed())?;
    String::from_utf8(bytes).map(Some).map_err(|_| malformed())
}

fn header_bearer(value: &axum::http::HeaderValue) -> ApiResult<&str> {
    let value = value.to_str().map_err(|_| ApiError::Unauthenticated("malformed Authorization header".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::Unauthenticated("Authorization must be a Bearer token".into()))?
        .trim();
    Ok(token)
}

/// The namespace a request's path names (`/v1/namespaces/<ns>/...`), if any.
fn path_namespace(parts: &Parts) -> Option<&str> {
    let rest = parts.uri.path().strip_prefix("/v1/namespaces/")?;
    let ns = rest.split('/').next()?;
    (!ns.is_empty()).then_some(ns)
}

/// Resolves a bearer token to a principal: one keyed hash, then the admin hash, the cache of
/// keys and workload tokens, and only on a miss one indexed read of the store. A token that is
/// none of ours is tried as an OpenID Connect token of the namespace in the path.
pub async fn authenticate(state: &AppState, token: &str, namespace: Option<&str>) -> ApiResult<Principal> {
    let invalid = || ApiError::Unauthenticated("invalid or expired token".into());
    if token.is_empty() || token.len() > bulkhead_oidc::MAX_TOKEN_BYTES {
        return Err(invalid());
    }
    let ours = [KEY_TOKEN_PREFIX, ADMIN_TOKEN_PREFIX, WORKLOAD_TOKEN_PREFIX].iter().any(|p| token.starts_with(p));
    if !ours {
        return match namespace {
            Some(ns) if token.bytes().filter(|b| *b == b'.').count() == 2 => {
                crate::identity::authenticate_user(state, ns, token).await
            }
            _ => Err(invalid()),
        };
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(invalid());
    }
    let hash = state.hasher.hash(token);
    if hash == state.admin_token_hash {
        return Ok(Principal::Admin);
    }
    let now = now_ms();
    if let Some((principal, _)) = state.keys.get(&hash, now) {
        return Ok(principal);
    }
    if token.starts_with(WORKLOAD_TOKEN_PREFIX) {
        // A sandbox's token lives exactly as long as the sandbox runs.
        let sbx = state.store.sandbox_by_workload_token(&hash).await?.ok_or_else(invalid)?;
        if sbx.expires_at_ms <= now {
            return Err(invalid());
        }
        let principal = Principal::Sandbox {
            id: sbx.id,
            namespace: sbx.namespace,
            creator: sbx.creator,
            project: sbx.project,
            task: sbx.task,
        };
        state.keys.insert(hash, principal.clone(), Some(sbx.expires_at_ms));
        return Ok(principal);
    }
    let key = state.store.key_by_token_hash(&hash).await?.ok_or_else(invalid)?;
    if key.expires_at_ms.is_some_and(|t| t <= now) {
        return Err(invalid());
    }
    let principal = Principal::Key { id: key.id, namespace: key.namespace, role: key.role, projects: key.projects };
    state.keys.insert(hash, principal.clone(), key.expires_at_ms);
    Ok(principal)
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let slot = parts.extensions.get::<AuditSlot>().cloned().unwrap_or_default();
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
        let client_request_id = parts.extensions.get::<ClientRequestId>().map(|r| r.0.clone());
        let path_ns = path_namespace(parts);
        let principal = authenticate(state, &bearer(parts)?, path_ns).await?;
        let home = principal.namespace().or(path_ns).filter(|ns| bulkhead_core::validate::is_name(ns));
        let tenant = match home {
            Some(ns) if path_ns.is_none_or(|p| p == ns) => crate::state::tenant(state, ns).await,
            _ => None,
        };
        slot.with(|info| {
            info.principal = Some(principal.clone());
            info.tenant = tenant.clone();
            if let Principal::User { email: Some(email), .. } = &principal {
                info.detail.insert("email".into(), email.clone().into());
            }
        });
        tracing::Span::current().record("principal", principal.audit_name());
        charge(state, &principal, &slot).await?;
        let decider = Decider::load(state, principal.clone()).await?;
        Ok(Ctx { state: state.clone(), principal, request_id, client_request_id, slot, decider, tenant })
    }
}

/// Charges an authenticated request to its principal's own namespace's request bucket (see
/// [`crate::ratelimit`]), before any other work: whatever the path names, so that a tenant's
/// requests on another's paths spend its own bucket, never the other's. The platform admin has
/// no bucket. A refusal is answered after [`crate::ratelimit::REFUSAL_PACE`], which paces a
/// client that does not wait. A refused request is not audited: it did nothing, and a flood
/// must not become a flood of audit writes (it shows in the namespace's request metrics as a
/// 429).
async fn charge(state: &AppState, principal: &Principal, slot: &AuditSlot) -> ApiResult<()> {
    let Some(ns) = principal.namespace() else { return Ok(()) };
    // A namespace deleted under a cached principal: the request fails further on.
    let Some(row) = crate::state::cached_namespace(state, ns).await else { return Ok(()) };
    if let Err(refused) = state.rate_limits.charge(ns, row.quotas.api_requests_per_second) {
        slot.with(|info| info.rate_limited = true);
        state.metrics.rate_limited(&crate::metrics::Tenant::of(&row), "requests");
        tokio::time::sleep(crate::ratelimit::REFUSAL_PACE).await;
        return Err(refused.into());
    }
    Ok(())
}

/// The decisions of one principal, with the policies of its namespace (the built-in ones alone
/// for the platform admin) as they were when it was made. The server's only caller of
/// `bulkhead_policy::decide`; clones share the compiled policies.
#[derive(Clone)]
pub struct Decider {
    principal: Principal,
    policies: CompiledSet,
}

impl Decider {
    /// The decider of `principal`, with its namespace's current policies. A stored policy that
    /// no longer compiles fails it (see [`crate::identity::policies`]).
    pub async fn load(state: &AppState, principal: Principal) -> ApiResult<Decider> {
        let policies = match principal.namespace() {
            None => state.identity.builtin().clone(),
            Some(ns) => crate::identity::policies(state, ns).await?,
        };
        Ok(Decider { principal, policies })
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Decides `action` on `target`, with the reasons; evaluation errors are logged.
    pub fn ruling(&self, action: Action, target: &Target) -> Ruling {
        // The server's one call of the decision function.
        #[allow(clippy::disallowed_methods)]
        let ruling = bulkhead_policy::decide(&self.policies, &self.principal, action, target);
        if !ruling.errors.is_empty() {
            tracing::warn!(action = action.name(), errors = ?ruling.errors, "policy evaluation errors");
        }
        ruling
    }

    /// Decides `action` on `target`.
    pub fn decide(&self, action: Action, target: &Target) -> Decision {
        self.ruling(action, target).decision
    }

    /// Whether the principal is shown `target` in the answer of `action` (an item of a list, a
    /// record of a log or of the audit chain).
    pub fn sees(&self, action: Action, target: &Target) -> bool {
        self.decide(action, target).is_allowed()
    }
}

/// What a request answers for a target it may not know of: exactly what it answers when the
/// target does not exist.
pub fn not_found(target: &Target) -> ApiError {
    match target {
        Target::Platform => ApiError::NotFound("not found".into()),
        Target::Namespace { namespace }
        | Target::Project { namespace, id: None }
        | Target::Key { namespace, id: None, .. } => ApiError::namespace_not_found(namespace),
        Target::Sandbox { id, .. } => ApiError::NotFound(format!("sandbox {id:?} not found")),
        Target::Filesystem { id, .. } => ApiError::NotFound(format!("filesystem {id:?} not found")),
        Target::Project { id: Some(id), .. } => ApiError::NotFound(format!("project {id:?} not found")),
        Target::Secret { name, .. } => ApiError::NotFound(format!("secret {name:?} not found")),
        Target::Key { id: Some(id), .. } => ApiError::NotFound(format!("key {id:?} not found")),
        Target::Policy { id, .. } => ApiError::NotFound(format!("policy {id:?} not found")),
        Target::Image { name, .. } => ApiError::NotFound(format!("image {name:?} not found")),
        Target::Host { namespace, .. } => ApiError::namespace_not_found(namespace),
        Target::Agent { name, .. } => ApiError::NotFound(format!("agent {name:?} not found")),
        Target::Task { id, .. } | Target::ToolCall { task: id, .. } => {
            ApiError::NotFound(format!("task {id:?} not found"))
        }
    }
}

impl Ctx {
    /// Decides the request's `action` on `target` (as the request names it, before any lookup)
    /// and notes both for the audit log: a 404 for another namespace's target (as for a missing
    /// namespace) or one outside a limited key's projects (as for a missing target), a 403
    /// naming the action and the forbids when the policies deny.
    pub fn authorize(&self, action: Action, target: &Target) -> ApiResult<()> {
        let decision = self.decider.decide(action, target);
        self.slot.with(|info| {
            info.action = Some(action);
            info.mutating = action.is_mutating();
            info.resource = target.audit_name();
            // A target hidden by projects is audited as a missing one is: not as a denial.
            if decision != Decision::NotFound(Hidden::Target) {
                info.decision = Some(decision.clone());
            }
            if let Decision::Forbidden { policies } = &decision {
                if !policies.is_empty() {
                    info.detail.insert("policies".into(), policies.clone().into());
                }
            }
        });
        self.answer(action, target, decision)
    }

    /// Decides the request's action again on its target once it is looked up, so that what the
    /// lookup found (a filesystem's project, the one a sandbox mounts) holds: a key limited to
    /// projects is answered as if a target outside them did not exist, and policies written on
    /// projects (`resource in Bulkhead::Project::"prj_…"`) hold. A denial is recorded.
    pub fn reauthorize(&self, target: &Target) -> ApiResult<()> {
        let Some(action) = self.slot.with(|info| info.action) else {
            return Err(ApiError::Internal("a target was looked up before the request was authorized".into()));
        };
        let decision = self.decide(action, target);
        self.answer(action, target, decision)
    }

    /// A further decision inside an authorized request (mounting a filesystem at create), as the
    /// API answers it: 403 naming the action, or 404 as for a missing target. A denial is
    /// recorded in the request's audit record.
    pub fn require(&self, action: Action, target: &Target) -> ApiResult<()> {
        let decision = self.decide(action, target);
        self.answer(action, target, decision)
    }

    /// [`Ctx::require`], with `hidden` the answer when the target is outside the projects of a
    /// limited key (a 400 naming the field of the body that named it, say).
    pub fn require_or(&self, action: Action, target: &Target, hidden: impl FnOnce() -> ApiError) -> ApiResult<()> {
        match self.decide(action, target) {
            Decision::NotFound(Hidden::Target) => Err(hidden()),
            decision => self.answer(action, target, decision),
        }
    }

    /// A further decision inside an authorized request, for the caller to answer. A denial by
    /// the policies is recorded in the request's audit record: the action, the target and the
    /// forbids. A target hidden by projects is not: it is answered and audited as a missing one.
    pub fn decide(&self, action: Action, target: &Target) -> Decision {
        let decision = self.decider.decide(action, target);
        self.record(None, action, target, &decision);
        decision
    }

    /// A further decision for another principal of the request's namespace, with that
    /// namespace's policies: a secret released to the sandbox being created. Recorded as
    /// [`Ctx::decide`] does, with the principal.
    pub async fn decide_as(&self, principal: Principal, action: Action, target: &Target) -> ApiResult<Decision> {
        let decider = Decider::load(&self.state, principal).await?;
        let decision = decider.decide(action, target);
        self.record(Some(decider.principal()), action, target, &decision);
        Ok(decision)
    }

    /// Whether the principal is shown `target` in the answer of the request's `action` (an item
    /// of a list). Not recorded: what is left out of an answer is not a denial.
    pub fn sees(&self, action: Action, target: &Target) -> bool {
        self.decider.sees(action, target)
    }

    /// Whether `target` is within this principal's reach: not hidden from it (in another
    /// namespace, or outside the projects a key is limited to), whatever the policies say of
    /// `action` on it. For checks of what a request names (a new key's projects), which are
    /// bounded by the caller's scope, not by its permissions. Not recorded.
    pub fn reaches(&self, action: Action, target: &Target) -> bool {
        !matches!(self.decider.decide(action, target), Decision::NotFound(_))
    }

    /// The decisions of this request's principal, for work that outlives the request's handler
    /// (a live tail).
    pub fn decider(&self) -> Decider {
        self.decider.clone()
    }

    fn record(&self, principal: Option<&Principal>, action: Action, target: &Target, decision: &Decision) {
        let Decision::Forbidden { policies } = decision else { return };
        self.slot.with(|info| {
            info.decision = Some(decision.clone());
            info.detail.insert("denied".into(), action.name().into());
            info.detail.insert("denied_resource".into(), target.audit_name().into());
            if let Some(p) = principal {
                info.detail.insert("denied_principal".into(), p.audit_name().into());
            }
            if !policies.is_empty() {
                info.detail.insert("policies".into(), policies.clone().into());
            }
        });
    }

    fn answer(&self, action: Action, target: &Target, decision: Decision) -> ApiResult<()> {
        match decision {
            Decision::Allow => Ok(()),
            Decision::Forbidden { policies } => Err(self.forbidden(action, &policies)),
            // Exactly what a namespace that does not exist answers.
            Decision::NotFound(Hidden::Namespace) => {
                Err(ApiError::namespace_not_found(target.namespace_name().unwrap_or_default()))
            }
            Decision::NotFound(Hidden::Target) => Err(not_found(target)),
        }
    }

    /// The 403 of `action` denied, naming the forbids that denied it.
    pub fn forbidden(&self, action: Action, policies: &[String]) -> ApiError {
        let by = if policies.is_empty() { String::new() } else { format!(" (forbidden by {})", policies.join(", ")) };
        ApiError::Forbidden(format!("{} may not {}{by}", self.principal.audit_name(), action.name()))
    }

    /// The name of the action this request was authorized for, once it has been.
    pub fn action_name(&self) -> Option<&'static str> {
        self.slot.with(|info| info.action.map(|a| a.name()))
    }

    /// Sends this request's audit record to `chain` (a namespace the handler has found, or the
    /// platform chain).
    pub fn audit_chain(&self, chain: &str) {
        self.slot.with(|info| info.chain = Some(chain.to_owned()));
    }

    /// Names what the action was on, once known better than at authorization (the new key).
    pub fn audit_resource(&self, resource: impl Into<String>) {
        let resource = resource.into();
        self.slot.with(|info| info.resource = resource);
    }

    /// Adds a fact to this request's audit record. Never pass a secret.
    pub fn audit_detail(&self, key: &str, value: impl Into<serde_json::Value>) {
        self.slot.with(|info| {
            info.detail.insert(key.to_owned(), value.into());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut req = axum::http::Request::builder().uri("/v1/namespaces/a/sandboxes/b/processes/c/attach");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).expect("request").into_parts().0
    }

    fn token_of(headers: &[(&str, &str)]) -> ApiResult<String> {
        bearer(&parts(headers)).map(|t| t.into_owned())
    }

    /// The headers of a browser's opening handshake, with `offer` as its subprotocols.
    fn handshake(offer: &str) -> Vec<(&str, &str)> {
        vec![
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", offer),
        ]
    }

    #[test]
    fn a_websocket_upgrade_may_carry_its_token_as_a_subprotocol() {
        // "bk_key_é" in unpadded base64url.
        let offer = format!("bulkhead, {WS_BEARER_PREFIX}Ymtfa2V5X8Op");
        let upgrade = handshake(&offer);
        assert_eq!(token_of(&upgrade).expect("a token"), "bk_key_é");
        // Authorization wins when both are there.
        let mut both = upgrade.clone();
        both.push(("authorization", "Bearer bk_other"));
        assert_eq!(token_of(&both).expect("a token"), "bk_other");
    }

    #[test]
    fn the_subprotocol_counts_only_on_a_process_attach_handshake() {
        let offer = format!("bulkhead, {WS_BEARER_PREFIX}YmtfeA");
        let full = handshake(&offer);
        let request = |method: &str, path: &str, headers: &[(&str, &str)]| {
            let mut req = axum::http::Request::builder().method(method).uri(path);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            bearer(&req.body(()).expect("request").into_parts().0).map(|t| t.into_owned())
        };
        let attach = "/v1/namespaces/a/sandboxes/b/processes/c/attach";
        assert_eq!(request("GET", attach, &full).expect("a token"), "bk_x");
        // Another method, another route, or a handshake missing a part: no token.
        for (method, path) in [("POST", attach), ("GET", "/v1/namespaces/a/keys"), ("POST", "/v1/namespaces/a/keys")] {
            let e = request(method, path, &full).expect_err(path);
            assert!(matches!(e, ApiError::Unauthenticated(m) if m.contains("missing")), "{method} {path}");
        }
        for missing in ["upgrade", "connection", "sec-websocket-key"] {
            let headers: Vec<_> = full.iter().copied().filter(|(k, _)| *k != missing).collect();
            let e = request("GET", attach, &headers).expect_err(missing);
            assert!(matches!(e, ApiError::Unauthenticated(m) if m.contains("missing")), "without {missing}");
        }
        let mut keep_alive = full.clone();
        keep_alive[1] = ("connection", "keep-alive");
        assert!(request("GET", attach, &keep_alive).is_err());
    }

    #[test]
    fn the_subprotocol_counts_only_on_an_upgrade_and_only_when_well_formed() {
        let offer = format!("{WS_BEARER_PREFIX}YmtfeA");
        // A plain request's subprotocol header authenticates nothing.
        let plain = token_of(&[("sec-websocket-protocol", offer.as_str())]).expect_err("no token");
        assert!(matches!(plain, ApiError::Unauthenticated(m) if m.contains("missing")));
        for bad in ["YmtfeA==", "not base64!", "_-8"] {
            let offer = format!("bulkhead, {WS_BEARER_PREFIX}{bad}");
            let e = token_of(&handshake(&offer)).expect_err(bad);
            assert!(matches!(e, ApiError::Unauthenticated(m) if m.contains("malformed")), "{bad}");
        }
        // An upgrade offering no token is the usual 401.
        let none = token_of(&handshake("bulkhead")).expect_err("none");
        assert!(matches!(none, ApiError::Unauthenticated(m) if m.contains("missing")));
    }
}
