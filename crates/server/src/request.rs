//! The outermost layer of every request: the request id, the tracing span that carries it and the
//! namespace on every log line, and the error envelope.
//!
//! The request id is always made here (`req_…`, random): it is the id of the answer's
//! `X-Request-Id` header, of the error envelope, of the audit record and of the log records, so
//! no client can choose it (and reuse another tenant's). A client's own `X-Request-Id`, when it
//! is at most 128 characters of `[A-Za-z0-9._:-]`, is kept beside it as the client request id
//! (in the log span and the audit record's `client_request_id`); any other value is ignored.

use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bulkhead_api::{ErrorBody, ErrorDetail};
use bulkhead_core::ids;
use tracing::Instrument;

use crate::error::{ApiError, ErrorMark};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest client request id kept.
pub const MAX_CLIENT_REQUEST_ID: usize = 128;

/// The server-made id of the request being served, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The client's own `X-Request-Id`, when it sent an acceptable one, in the request's extensions.
#[derive(Debug, Clone)]
pub struct ClientRequestId(pub String);

fn acceptable_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= MAX_CLIENT_REQUEST_ID
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| s.to_owned())
}

/// The namespace a path names, for the log span: `/v1/namespaces/{ns}/...`.
pub fn namespace_of(path: &str) -> &str {
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some("namespaces"), Some(ns)) if bulkhead_core::validate::is_name(ns) => ns,
        _ => "",
    }
}

pub async fn middleware(mut req: Request, next: Next) -> Response {
    let id = ids::new_id(ids::prefix::REQUEST);
    let client_id = req.headers().get(REQUEST_ID_HEADER).and_then(acceptable_request_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    if let Some(c) = &client_id {
        req.extensions_mut().insert(ClientRequestId(c.clone()));
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        client_request_id = client_id.as_deref().unwrap_or_default(),
        namespace = namespace_of(&path),
        method = %method,
        path = %path,
        principal = tracing::field::Empty,
    );
    let started = Instant::now();
    let response = if matches!(method, Method::DELETE | Method::PATCH | Method::PUT) {
        // A change runs to its end once it started, whether or not its client waits for the
        // answer: a client that disconnects mid-delete must not leave a half-torn-down sandbox
        // (or a change without its audit record). Creates are run the same way by
        // `idempotency::create`; commands (`exec`) stay tied to their connection.
        match tokio::spawn(next.run(req).instrument(span.clone())).await {
            Ok(response) => response,
            Err(e) => {
                tracing::warn!(parent: &span, error = %e, "a change's task ended without an answer");
                ApiError::Unavailable { message: "the server is stopping; retry".into(), retry_after_seconds: 2 }
                    .into_response()
            }
        }
    } else {
        next.run(req).instrument(span.clone()).await
    };
    let mut response = envelope(response, &id);
    let status = response.status();
    span.in_scope(|| {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        // Every change and every failure is logged at info; successful reads, the bulk of the
        // traffic, at debug (`BULKHEAD_LOG=debug` shows them), so logging does not halve the
        // read throughput.
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), ms, "request failed");
        } else if status.is_client_error() || !matches!(method, Method::GET | Method::HEAD) {
            tracing::info!(status = status.as_u16(), ms, "request");
        } else {
            tracing::debug!(status = status.as_u16(), ms, "request");
        }
    });
    // A forwarded answer keeps the request id of the replica that served it (its body and its
    // audit record name that one).
    let served_elsewhere =
        response.extensions().get::<Forwarded>().is_some() && response.headers().contains_key(REQUEST_ID_HEADER);
    if let (false, Ok(v)) = (served_elsewhere, HeaderValue::from_str(&id)) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// Marks an answer another replica gave (see [`crate::forward`]): passed on as it is, its error
/// envelope and request id included.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded;

/// Gives every error answer the JSON envelope: our own errors carry an [`ErrorMark`]; answers of
/// axum itself (unknown route, wrong method, body over the limit) are recognised by status.
fn envelope(response: Response, request_id: &str) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || response.extensions().get::<Forwarded>().is_some() {
        return response;
    }
    let mark = match response.extensions().get::<ErrorMark>() {
        Some(mark) => mark.clone(),
        None => {
            let err = ApiError::from_status(status);
            // Keep the original status: it is already the right one.
            let code = err.code();
            let message = match err {
                ApiError::Internal(_) => "internal error".to_owned(),
                other => other.to_string(),
            };
            ErrorMark { code, message }
        }
    };
    let body = ErrorBody {
        error: ErrorDetail { code: mark.code.to_owned(), message: mark.message, request_id: request_id.to_owned() },
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let (mut parts, _) = response.into_parts();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

/// The answer when a handler panics: a plain 500, enveloped like any other error.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("handler panicked".into()).into_response()
}

/// Unknown routes.
pub async fn not_found() -> Response {
    ApiError::NotFound("no such route".into()).into_response()
}

/// Known paths with a method they do not serve.
pub async fn method_not_allowed() -> Response {
    let mut r = ApiError::MethodNotAllowed("method not allowed on this path".into()).into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_taken_from_the_path() {
        assert_eq!(namespace_of("/v1/namespaces/acme/keys"), "acme");
        assert_eq!(namespace_of("/v1/namespaces/ACME"), "");
        assert_eq!(namespace_of("/healthz"), "");
    }

    #[test]
    fn hostile_request_ids_are_replaced() {
        assert!(acceptable_request_id(&HeaderValue::from_static("abc-123")).is_some());
        assert!(acceptable_request_id(&HeaderValue::from_static("a b")).is_none());
        assert!(acceptable_request_id(&HeaderValue::from_static("")).is_none());
        let long = "a".repeat(129);
        assert!(acceptable_request_id(&HeaderValue::from_str(&long).unwrap()).is_none());
    }
}
