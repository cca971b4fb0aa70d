//! Authentication and the per-request context. [`Ctx`] is the first extractor of every
//! authenticated handler: it turns the bearer token (the admin token, an API key, a sandbox's
//! workload token, or a user's OpenID Connect token for the namespace in the path) into a
//! [`Principal`] and gives the handler [`Ctx::authorize`]: the tenant boundary first, then one
//! decision of the namespace's Cedar policies. It also notes the action for the audit middleware.

use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use bulkhead_core::token::{ADMIN_TOKEN_PREFIX, KEY_TOKEN_PREFIX, MAX_TOKEN_LEN, WORKLOAD_TOKEN_PREFIX};
use bulkhead_core::{tenancy, Action, Decision, Principal, Tenancy};
use bulkhead_policy::{CompiledSet, Request, ResourceRef};

use crate::error::{ApiError, ApiResult};
use crate::request::{ClientRequestId, RequestId};
use crate::state::AppState;
use crate::time::now_ms;

/// What the audit middleware needs to know about a request, filled in as it is served.
#[derive(Debug, Default)]
pub struct AuditInfo {
    pub principal: Option<Principal>,
    pub action: Option<&'static str>,
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
    /// The policies that decide for this principal: its namespace's, or the built-ins alone for
    /// the platform admin.
    policies: CompiledSet,
    /// The namespace incarnation this request is authenticated into: the principal's own
    /// namespace when the path names it (or names none), the path's namespace for the platform
    /// admin; `None` for a request of one namespace's principal on another's path. Per-namespace
    /// observability is keyed by it.
    pub tenant: Option<crate::metrics::Tenant>,
}

fn bearer(parts: &Parts) -> ApiResult<&str> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthenticated("missing Authorization: Bearer token".into()))?;
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
        let principal =
            Principal::Sandbox { id: sbx.id, namespace: sbx.namespace, creator: sbx.creator, project: sbx.project };
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
        let principal = authenticate(state, bearer(parts)?, path_ns).await?;
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
        let policies = match principal.namespace() {
            None => state.identity.builtin().clone(),
            Some(ns) => crate::identity::policies(state, ns).await?,
        };
        Ok(Ctx { state: state.clone(), principal, request_id, client_request_id, slot, policies, tenant })
    }
}

impl Ctx {
    /// Decides `action` on `namespace` (`None` for platform-level actions) for this principal,
    /// and notes it for the audit log. `resource` names what the action is on.
    pub fn authorize(&self, action: Action, namespace: Option<&str>, resource: impl Into<String>) -> ApiResult<()> {
        let resource = resource.into();
        let (decision, deciding) = match tenancy(&self.principal, namespace) {
            Tenancy::Foreign => (Decision::NotFound, Vec::new()),
            Tenancy::Operator | Tenancy::Own(_) => {
                let d = self.decide(action, namespace, &resource);
                (if d.allowed { Decision::Allow } else { Decision::Forbidden }, d.policies)
            }
        };
        self.slot.with(|info| {
            info.action = Some(action.name());
            info.mutating = action.is_mutating();
            info.resource = resource;
            info.decision = Some(decision);
            if decision == Decision::Forbidden && !deciding.is_empty() {
                info.detail.insert("policies".into(), deciding.clone().into());
            }
        });
        match decision {
            Decision::Allow => Ok(()),
            Decision::Forbidden => Err(self.forbidden(action, &deciding)),
            // Exactly what a namespace that does not exist answers.
            Decision::NotFound => Err(ApiError::namespace_not_found(namespace.unwrap_or_default())),
        }
    }

    /// One decision of the policies for this principal, inside the tenant boundary (the caller
    /// has drawn it). `resource` is `sandbox:<id>`, `filesystem:<id>`, ... or names the namespace.
    pub fn decide(&self, action: Action, namespace: Option<&str>, resource: &str) -> bulkhead_policy::Decision {
        let resource = crate::identity::resource_ref(resource, namespace);
        self.decide_on(action.name(), action.target_role(), namespace, &resource)
    }

    fn decide_on(
        &self,
        action: &str,
        target_role: Option<bulkhead_core::Role>,
        namespace: Option<&str>,
        resource: &ResourceRef,
    ) -> bulkhead_policy::Decision {
        let principal = crate::identity::principal_ref(&self.principal);
        let ns = namespace.or(self.principal.namespace()).unwrap_or_default();
        let d = self.policies.decide(&Request { principal: &principal, namespace: ns, action, resource, target_role });
        if !d.errors.is_empty() {
            tracing::warn!(action, errors = ?d.errors, "policy evaluation errors");
        }
        d
    }

    /// A further check inside an authorized request (mounting a filesystem at create): a 403
    /// naming the action when the policies do not allow it.
    pub fn check(&self, action: Action, namespace: &str, resource: &ResourceRef) -> ApiResult<()> {
        let d = self.decide_on(action.name(), None, Some(namespace), resource);
        self.enforce(action.name(), d)
    }

    /// Decides the request's action again once the project of its filesystem, or of the
    /// filesystem its sandbox mounts, is known, so that policies written on projects
    /// (`resource in Bulkhead::Project::"prj_…"`) hold for both. Only an action whose resource is
    /// of `resource`'s type is decided again (a sandbox create that mounts a filesystem is
    /// decided by [`Ctx::check`] instead); without a project the first decision stands, since it
    /// was already on this very resource.
    pub fn recheck(&self, namespace: &str, resource: &ResourceRef) -> ApiResult<()> {
        let Some(action) = self.slot.with(|info| info.action) else { return Ok(()) };
        let applies = match resource {
            ResourceRef::Filesystem { project: Some(_), .. } => {
                action.starts_with("filesystem.") && !matches!(action, "filesystem.create" | "filesystem.list")
            }
            ResourceRef::Sandbox { project: Some(_), .. } => matches!(
                action,
                "sandbox.get"
                    | "sandbox.delete"
                    | "sandbox.exec"
                    | "sandbox.file.read"
                    | "sandbox.file.write"
                    | "logs.read"
            ),
            _ => false,
        };
        if !applies {
            return Ok(());
        }
        let d = self.decide_on(action, None, Some(namespace), resource);
        self.enforce(action, d)
    }

    fn enforce(&self, action: &str, d: bulkhead_policy::Decision) -> ApiResult<()> {
        if d.allowed {
            return Ok(());
        }
        self.slot.with(|info| {
            info.decision = Some(Decision::Forbidden);
            info.detail.insert("denied".into(), action.into());
            if !d.policies.is_empty() {
                info.detail.insert("policies".into(), d.policies.clone().into());
            }
        });
        Err(self.forbidden_named(action, &d.policies))
    }

    fn forbidden(&self, action: Action, deciding: &[String]) -> ApiError {
        self.forbidden_named(action.name(), deciding)
    }

    fn forbidden_named(&self, action: &str, deciding: &[String]) -> ApiError {
        let by = if deciding.is_empty() { String::new() } else { format!(" (forbidden by {})", deciding.join(", ")) };
        ApiError::Forbidden(format!("{} may not {action}{by}", self.principal.audit_name()))
    }

    /// The name of the action this request was authorized for, once it has been.
    pub fn action_name(&self) -> Option<&'static str> {
        self.slot.with(|info| info.action)
    }

    /// The compiled policies deciding for this request's principal.
    pub fn policies(&self) -> &CompiledSet {
        &self.policies
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
