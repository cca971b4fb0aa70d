//! `Idempotency-Key` on creates. The first answer of a successful create is stored under the
//! principal, the action and the key; the same request again gets that answer back, a different
//! body under the same key is a 409. A key creation is never replayed with its token (the token
//! is stored nowhere): its replay is a 409 that names the key already created.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bulkhead_core::ids::hex;
use bulkhead_store::IdempotentReply;
use sha2::{Digest, Sha256};

use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::state::now_ms;

pub const HEADER: &str = "idempotency-key";

/// A create in progress under an idempotency key.
pub struct Idempotency {
    slot: Option<(String, String, String)>,
}

pub enum Begin {
    /// Go on with the create; call [`Idempotency::finish`] with its answer.
    Fresh(Idempotency),
    /// The same request was answered before.
    Replay(IdempotentReply),
}

impl Idempotency {
    pub async fn begin(
        ctx: &Ctx,
        headers: &HeaderMap,
        action: &str,
        ns: Option<&str>,
        body: &[u8],
    ) -> ApiResult<Begin> {
        let Some(value) = headers.get(HEADER) else { return Ok(Begin::Fresh(Idempotency { slot: None })) };
        let key = value
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| ApiError::Invalid("Idempotency-Key: must be 1 to 255 visible ASCII characters".into()))?;
        let principal = ctx.principal.audit_name();
        let scope = match ns {
            Some(ns) => format!("ns:{ns}:{principal}:{action}"),
            None => format!("platform:{principal}:{action}"),
        };
        let fingerprint = hex(&Sha256::digest(body));
        if let Some(reply) = ctx.state.store.get_idempotent(&scope, key).await? {
            if reply.fingerprint != fingerprint {
                return Err(ApiError::Conflict(
                    "Idempotency-Key was already used with a different request body".into(),
                ));
            }
            return Ok(Begin::Replay(reply));
        }
        Ok(Begin::Fresh(Idempotency { slot: Some((scope, key.to_owned(), fingerprint)) }))
    }

    /// Stores the answer of a successful create for replays.
    pub async fn finish(self, ctx: &Ctx, status: StatusCode, body: &str) -> ApiResult<()> {
        if let Some((scope, key, fingerprint)) = self.slot {
            let reply = IdempotentReply { fingerprint, status: status.as_u16(), body: body.to_owned() };
            ctx.state.store.put_idempotent(&scope, &key, &reply, now_ms()).await?;
        }
        Ok(())
    }
}

/// The stored answer, sent again with `Idempotent-Replayed: true`.
pub fn replay_response(reply: IdempotentReply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let mut r = (status, [("content-type", "application/json")], reply.body).into_response();
    r.headers_mut().insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
    r
}
