//! `Idempotency-Key` on every create. Every route that creates something goes through
//! [`create`], which claims the key in the store before the create starts, so:
//!
//! - the same request again (same principal, action, key and body) gets the first answer back,
//!   with `Idempotent-Replayed: true`, for [`LIFETIME_MS`] and across restarts of the server;
//! - a request under a key that another request holds and has not answered yet is a 409
//!   `conflict` saying so, with `Retry-After: 1` (it is not run, and not waited for: the client
//!   retries once the first has answered, and then gets its answer), so concurrent retries make
//!   one resource;
//! - the same key with a different body is a 409 `conflict`;
//! - only a successful create is remembered: a failed one frees its key, and a retry runs again.
//!
//! Once claimed, the create runs in a task of its own, so a client that goes away cannot cut it
//! off between the resource and its stored answer. A key creation is never replayed with its
//! token (the token is stored nowhere): its replay is a 409 that names the key already created.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bulkhead_core::ids::hex;
use bulkhead_store::{IdempotencyClaim, IdempotentReply, Store};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::time::now_ms;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The answer header that marks a replay.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// How long an answer is replayed: a day.
pub const LIFETIME_MS: i64 = 24 * 3600 * 1000;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// The answer of a successful create: what the client gets now, and what a replay gets.
pub struct Created {
    pub status: StatusCode,
    /// The JSON body of the answer.
    pub body: String,
    /// The JSON body stored for replays, when it differs from `body` (a new key's answer holds
    /// its token, which is stored nowhere).
    pub stored: Option<String>,
}

impl Created {
    /// A create answered with `value` as JSON.
    pub fn json(status: StatusCode, value: &impl Serialize) -> ApiResult<Created> {
        let body = serde_json::to_string(value).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Created { status, body, stored: None })
    }

    fn into_response(self) -> Response {
        (self.status, [("content-type", "application/json")], self.body).into_response()
    }
}

/// What a repeated request gets: the stored answer again, or (for key creation) an error.
pub type OnReplay = fn(IdempotentReply) -> ApiResult<Response>;

/// The stored answer, sent again with `Idempotent-Replayed: true`.
pub fn replay_response(reply: IdempotentReply) -> ApiResult<Response> {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let mut r = (status, [("content-type", "application/json")], reply.body).into_response();
    r.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    Ok(r)
}

/// The key of a request, if it carries one: 1 to 255 visible ASCII characters.
fn key_of(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    // Two keys on one request cannot both hold; taking either would be a guess.
    if values.next().is_some() {
        return Err(ApiError::Invalid("Idempotency-Key: given more than once".into()));
    }
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::Invalid(format!("Idempotency-Key: must be 1 to {MAX_KEY_LEN} visible ASCII characters"))
        })?;
    Ok(Some(key.to_owned()))
}

/// Runs the create `make` once per idempotency key. Call it right after `ctx.authorize` with
/// the create's action; `ns` is the namespace the create is in (`None` for platform creates).
/// Without an `Idempotency-Key` header `make` simply runs.
pub async fn create<F, Fut>(
    ctx: Ctx,
    headers: &HeaderMap,
    ns: Option<&str>,
    body: Bytes,
    on_replay: OnReplay,
    make: F,
) -> ApiResult<Response>
where
    F: FnOnce(Ctx, Bytes) -> Fut + Send + 'static,
    Fut: Future<Output = ApiResult<Created>> + Send + 'static,
{
    let Some(key) = key_of(headers)? else {
        return make(ctx, body).await.map(Created::into_response);
    };
    // The action decided for this request names the create; a create that was not authorized
    // first has none and is refused here.
    let action = ctx.action_name().ok_or_else(|| ApiError::Internal("a create ran before authorization".into()))?;
    let principal = ctx.principal.audit_name();
    let scope = match ns {
        Some(ns) => format!("ns:{ns}:{principal}:{action}"),
        None => format!("platform:{principal}:{action}"),
    };
    let fingerprint = hex(&Sha256::digest(&body));
    ctx.audit_detail("idempotency_key", key.as_str());
    let now = now_ms();
    let store = ctx.state.store.clone();
    let different_body = || {
        ApiError::Conflict(
            "Idempotency-Key was already used with a different request body (or for another resource)".into(),
        )
    };
    match store.claim_idempotent(&scope, &key, &fingerprint, now, now.saturating_sub(LIFETIME_MS)).await? {
        IdempotencyClaim::Claimed => {}
        IdempotencyClaim::InProgress { fingerprint: held } => {
            return Err(if held == fingerprint {
                ApiError::InProgress(
                    "a request with this Idempotency-Key is in progress; retry once it has answered".into(),
                )
            } else {
                different_body()
            });
        }
        IdempotencyClaim::Done(reply) => {
            if reply.fingerprint != fingerprint {
                return Err(different_body());
            }
            ctx.audit_detail("idempotent_replay", true);
            return on_replay(reply);
        }
    }
    let claim = Claim { store, scope, key, armed: true };
    let task = tokio::spawn(async move {
        let mut claim = claim;
        match make(ctx, body).await {
            Ok(created) => {
                let stored = created.stored.clone().unwrap_or_else(|| created.body.clone());
                let reply = IdempotentReply { fingerprint, status: created.status.as_u16(), body: stored };
                match claim.store.finish_idempotent(&claim.scope, &claim.key, &reply).await {
                    Ok(()) => claim.armed = false,
                    // The resource exists and the client gets its answer; only a retry would
                    // not find it. The claim is freed below.
                    Err(e) => tracing::error!(error = %e, "storing an idempotent answer failed"),
                }
                claim.release().await;
                Ok(created)
            }
            Err(e) => {
                claim.release().await;
                Err(e)
            }
        }
    });
    match task.await {
        Ok(result) => result.map(Created::into_response),
        Err(e) => Err(ApiError::Internal(format!("a create ended abnormally: {e}"))),
    }
}

/// [`create`] of something in namespace `ns`, made by `make(ctx, ns, headers, body)`. Call it
/// right after `ctx.authorize`, as [`create`].
pub async fn create_in<F, Fut>(
    ctx: Ctx,
    ns: String,
    headers: HeaderMap,
    body: Bytes,
    on_replay: OnReplay,
    make: F,
) -> ApiResult<Response>
where
    F: FnOnce(Ctx, String, HeaderMap, Bytes) -> Fut + Send + 'static,
    Fut: Future<Output = ApiResult<Created>> + Send + 'static,
{
    let (scope, request_headers) = (ns.clone(), headers.clone());
    create(ctx, &request_headers, Some(&scope), body, on_replay, move |ctx, body| make(ctx, ns, headers, body)).await
}

/// A claim on an idempotency key without an answer yet; freed when the create fails, and when
/// the task running it panics.
struct Claim {
    store: Arc<dyn Store>,
    scope: String,
    key: String,
    armed: bool,
}

impl Claim {
    async fn release(&mut self) {
        if std::mem::take(&mut self.armed) {
            if let Err(e) = self.store.release_idempotent(&self.scope, &self.key).await {
                tracing::error!(error = %e, "freeing an idempotency key failed");
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, scope, key) = (self.store.clone(), std::mem::take(&mut self.scope), std::mem::take(&mut self.key));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.release_idempotent(&scope, &key).await {
                    tracing::error!(error = %e, "freeing an idempotency key failed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_visible_ascii() {
        let mut h = HeaderMap::new();
        assert_eq!(key_of(&h).ok(), Some(None));
        h.insert(HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(key_of(&h).ok(), Some(Some("abc-123".to_owned())));
        h.insert(HEADER, HeaderValue::from_static("a b"));
        assert!(key_of(&h).is_err());
        h.insert(HEADER, HeaderValue::from_str(&"k".repeat(MAX_KEY_LEN + 1)).unwrap_or(HeaderValue::from_static("")));
        assert!(key_of(&h).is_err());
    }
}
