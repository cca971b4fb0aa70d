//! Authentication and the per-request context. [`Ctx`] is the first extractor of every
//! authenticated handler: it turns the bearer token into a [`Principal`] and gives the handler
//! [`Ctx::authorize`], the only way to reach the core's single authorization function, which also
//! notes the action for the audit middleware.

use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use bulkhead_core::token::{ADMIN_TOKEN_PREFIX, KEY_TOKEN_PREFIX, MAX_TOKEN_LEN};
use bulkhead_core::{authorize, Action, Decision, Principal};

use crate::error::{ApiError, ApiResult};
use crate::request::RequestId;
use crate::state::{now_ms, AppState};

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
    pub request_id: String,
    slot: AuditSlot,
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

/// Resolves a bearer token to a principal: one keyed hash, then the admin hash, the key cache,
/// and only on a miss one indexed read of the store.
pub async fn authenticate(state: &AppState, token: &str) -> ApiResult<Principal> {
    let invalid = || ApiError::Unauthenticated("invalid or expired token".into());
    if token.len() > MAX_TOKEN_LEN || !(token.starts_with(KEY_TOKEN_PREFIX) || token.starts_with(ADMIN_TOKEN_PREFIX)) {
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
        let principal = authenticate(state, bearer(parts)?).await?;
        slot.with(|info| info.principal = Some(principal.clone()));
        tracing::Span::current().record("principal", principal.audit_name());
        Ok(Ctx { state: state.clone(), principal, request_id, slot })
    }
}

impl Ctx {
    /// Decides `action` on `namespace` (`None` for platform-level actions) for this principal,
    /// and notes it for the audit log. `resource` names what the action is on.
    pub fn authorize(&self, action: Action, namespace: Option<&str>, resource: impl Into<String>) -> ApiResult<()> {
        let decision = authorize(&self.principal, action, namespace);
        self.slot.with(|info| {
            info.action = Some(action.name());
            info.mutating = action.is_mutating();
            info.resource = resource.into();
            info.decision = Some(decision);
        });
        match decision {
            Decision::Allow => Ok(()),
            Decision::Forbidden => {
                Err(ApiError::Forbidden(format!("{} may not {}", self.principal.audit_name(), action.name())))
            }
            // Exactly what a namespace that does not exist answers.
            Decision::NotFound => Err(ApiError::namespace_not_found(namespace.unwrap_or_default())),
        }
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
