//! The audit middleware. It runs around every routed request and, once the answer is known,
//! appends a record to the right chain for every mutating request (whatever its outcome), every
//! request that authorization denied, and every failed authentication. The answer leaves only
//! after its record is committed (it survives a crash of the server; the store fsyncs records
//! in groups and before any read of the log, see `bulkhead_store::sqlite::AuditSync`); if the
//! record cannot be written the client gets a 500, never a success that the log does not show.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bulkhead_core::audit::{AuditEvent, PLATFORM_CHAIN};
use bulkhead_core::{Decision, Principal};

use crate::auth::{AuditInfo, AuditSlot};
use crate::error::ApiError;
use crate::request::{ClientRequestId, RequestId};
use crate::state::AppState;
use crate::time::now_ms;

pub async fn middleware(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let slot = AuditSlot::default();
    req.extensions_mut().insert(slot.clone());
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default();
    let path = req.uri().path().to_owned();
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let client_request_id = req.extensions().get::<ClientRequestId>().map(|r| r.0.clone());

    let response = next.run(req).await;
    let status = response.status();
    let mut info = slot.with(std::mem::take);
    // In a namespace's series only when authenticated into it: probes of another tenant's paths
    // and unauthenticated requests do not touch (or make) its series.
    state.metrics.request(info.tenant.as_ref(), &route, status.as_u16());
    let tenant = info.tenant.clone();
    // The record's `request_id` is the server's; the client's own id is kept beside it.
    if let Some(c) = client_request_id {
        info.detail.insert("client_request_id".into(), c.into());
    }
    let Some((mut chain, event)) = record_for(info, &method, &route, &path, status, request_id) else {
        return response;
    };
    // A request of a namespace that was deleted (and maybe created again) while it ran: its
    // record goes to the platform chain, never into the chain of a new incarnation of the name.
    if let Some(t) = tenant.filter(|t| t.name == chain) {
        if crate::state::tenant(&state, &chain).await.is_none_or(|now| now.incarnation != t.incarnation) {
            chain = PLATFORM_CHAIN.to_owned();
        }
    }
    match state.store.append_audit(&chain, event).await {
        Ok(_) => response,
        // A full disk (507) or a busy or failing store (503) is answered as such, never a 500 and
        // never the handler's success: the request is not recorded, so it must not look done.
        Err(e) => {
            tracing::error!(error = %e, chain, "audit append failed");
            ApiError::from(e).into_response()
        }
    }
}

/// The chain and event for a request, or `None` when it is not audited (an allowed read).
fn record_for(
    info: AuditInfo,
    method: &Method,
    route: &str,
    path: &str,
    status: StatusCode,
    request_id: String,
) -> Option<(String, AuditEvent)> {
    // Refused by its namespace's request bucket before any work: not a record per request of a
    // flood (see `auth::charge`).
    if info.rate_limited {
        return None;
    }
    let denied = matches!(info.decision, Some(Decision::Forbidden { .. } | Decision::NotFound(_)));
    let unauthenticated = info.principal.is_none() && status == StatusCode::UNAUTHORIZED;
    let mutating = match info.action {
        Some(_) => info.mutating,
        // The request failed before its handler named an action (a body over the limit, say):
        // judge by method.
        None => !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS),
    };
    if !(mutating || denied || unauthenticated) {
        return None;
    }
    if info.principal.is_none() && !unauthenticated {
        return None;
    }
    let principal = info.principal.as_ref().map(Principal::audit_name).unwrap_or_else(|| "anonymous".to_owned());
    let chain = info
        .chain
        .clone()
        .or_else(|| info.principal.as_ref().and_then(|p| p.namespace().map(str::to_owned)))
        .unwrap_or_else(|| PLATFORM_CHAIN.to_owned());
    let action = info.action.map(|a| a.name().to_owned()).unwrap_or_else(|| format!("{method} {route}"));
    let resource =
        if info.resource.is_empty() { format!("path:{}", bulkhead_core::audit::cut(path, 256)) } else { info.resource };
    let decision = if denied {
        "deny"
    } else if unauthenticated {
        "unauthenticated"
    } else {
        "allow"
    };
    // Bounded: long values (an argv of megabytes) are kept as their length and SHA-256.
    let detail = bulkhead_core::audit::bounded_detail(&info.detail);
    Some((
        chain,
        AuditEvent {
            time_ms: now_ms(),
            principal,
            action,
            resource,
            decision: decision.to_owned(),
            status: status.as_u16(),
            request_id,
            detail,
        },
    ))
}

/// Appends a record that belongs to a request whose answer has already left: the exit of a
/// streamed exec, known only when its stream ends. A failure is logged here, where it is handled;
/// the client has its answer already.
pub async fn append_late(state: &AppState, chain: &str, event: AuditEvent) {
    if let Err(e) = state.store.append_audit(chain, event).await {
        tracing::error!(error = %e, chain, "audit append after the answer failed");
    }
}
