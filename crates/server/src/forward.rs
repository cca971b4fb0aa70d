//! Forwarding between the replicas of a shared store: a sandbox runs on one node (its row's
//! `node`), and a request for it (`/v1/namespaces/{ns}/sandboxes/{id}` and everything under
//! it: exec, files, processes, their WebSocket attach, snapshot, delete) that reaches another
//! replica is passed to that node as it came — method, path, query, headers (the bearer token
//! included: the node that runs the sandbox authenticates and authorizes it as usual) and body
//! streamed both ways — and its answer is passed back. A WebSocket upgrade is joined end to end.
//!
//! Nothing is trusted from a forwarder: the receiving node decides as for any request. A
//! request that carries [`FORWARDED_HEADER`] is never forwarded again. When the node that runs
//! the sandbox is not live (its lease lapsed, not yet declared lost) the answer is
//! `503 unavailable` with `Retry-After`; once it is declared lost, its sandboxes have ended and
//! any replica answers for them.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::ApiError;
use crate::nodes::FORWARDED_HEADER;
use crate::state::AppState;
use crate::time::now_ms;

/// How long connecting to a peer may take before the request is answered `unavailable`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

fn client() -> &'static Client<HttpConnector, Body> {
    static CLIENT: OnceLock<Client<HttpConnector, Body>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector)
    })
}

/// The namespace and sandbox id a path addresses, when it addresses one sandbox.
fn sandbox_of(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v1/namespaces/")?;
    let (ns, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("sandboxes/")?;
    let id = rest.split('/').next()?;
    (!ns.is_empty() && !id.is_empty()).then_some((ns, id))
}

/// The middleware: passes a request for a peer's sandbox to that peer.
pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.node.shared {
        return next.run(req).await;
    }
    let Some((ns, id)) = sandbox_of(req.uri().path()).map(|(n, i)| (n.to_owned(), i.to_owned())) else {
        return next.run(req).await;
    };
    let row = match state.store.get_sandbox(&ns, &id).await {
        Ok(Some(row)) if !state.node.is_mine(&row.node) => row,
        // Not found, this node's, or the store failing: the handler answers as it would.
        _ => return next.run(req).await,
    };
    let mut peer = state.node.peer(&row.node).filter(|p| p.is_live(now_ms()));
    if peer.is_none() {
        // A node that started (or renewed) since the peers were last read.
        if let Ok(rows) = state.store.nodes().await {
            state.node.set_peers(rows);
            peer = state.node.peer(&row.node).filter(|p| p.is_live(now_ms()));
        }
    }
    let Some(peer) = peer else {
        if row.status.is_active() {
            return ApiError::Unavailable {
                message: format!("the node that runs sandbox {id} is not answering; retry"),
                retry_after_seconds: 2,
            }
            .into_response();
        }
        // Its node is gone and it has ended: any replica answers for an ended sandbox.
        return next.run(req).await;
    };
    if req.headers().contains_key(FORWARDED_HEADER) {
        tracing::warn!(sandbox = %id, node = %row.node, "a forwarded request for a sandbox of another node");
        return ApiError::Unavailable {
            message: format!("the replicas disagree on where sandbox {id} runs; retry"),
            retry_after_seconds: 1,
        }
        .into_response();
    }
    match forward(&state, &peer.url, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(sandbox = %id, node = %peer.id, url = %peer.url, error = %e, "forwarding failed");
            ApiError::Unavailable {
                message: format!("the node that runs sandbox {id} is not answering; retry"),
                retry_after_seconds: 1,
            }
            .into_response()
        }
    }
}

/// Headers that belong to one connection (RFC 9110, section 7.6.1), not passed on; an
/// upgrade's `Connection` and `Upgrade` are put back by [`forward`].
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Sends `req` to the node at `base` and returns its answer (joining a WebSocket upgrade).
async fn forward(state: &AppState, base: &str, mut req: Request) -> Result<Response, String> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = format!("{}{path}", base.trim_end_matches('/')).parse().map_err(|e| format!("peer url: {e}"))?;
    let upgrade = req.headers().get(header::UPGRADE).cloned();
    let incoming_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut out = axum::http::Request::builder().method(parts.method).uri(uri).version(axum::http::Version::HTTP_11);
    if let Some(headers) = out.headers_mut() {
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name) && name != header::HOST {
                headers.append(name.clone(), value.clone());
            }
        }
        if let Some(u) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, u.clone());
        }
        if let Ok(v) = HeaderValue::from_str(&state.node.id) {
            headers.insert(HeaderName::from_static(FORWARDED_HEADER), v);
        }
    }
    let out = out.body(body).map_err(|e| e.to_string())?;
    let mut answer = client().request(out).await.map_err(|e| e.to_string())?;
    if answer.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(incoming) = incoming_upgrade else { return Err("the peer upgraded a plain request".into()) };
        let outgoing = hyper::upgrade::on(&mut answer);
        tokio::spawn(async move {
            match tokio::try_join!(incoming, outgoing) {
                Ok((client_side, peer_side)) => {
                    let mut client_side = hyper_util::rt::TokioIo::new(client_side);
                    let mut peer_side = hyper_util::rt::TokioIo::new(peer_side);
                    let _ = tokio::io::copy_bidirectional(&mut client_side, &mut peer_side).await;
                }
                Err(e) => tracing::debug!(error = %e, "a forwarded upgrade failed"),
            }
        });
        let (parts, _) = answer.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = answer.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_of_one_sandbox_are_forwarded() {
        assert_eq!(sandbox_of("/v1/namespaces/acme/sandboxes/sbx_1"), Some(("acme", "sbx_1")));
        assert_eq!(sandbox_of("/v1/namespaces/acme/sandboxes/sbx_1/exec"), Some(("acme", "sbx_1")));
        assert_eq!(sandbox_of("/v1/namespaces/acme/sandboxes/sbx_1/processes/7/attach"), Some(("acme", "sbx_1")));
        assert_eq!(sandbox_of("/v1/namespaces/acme/sandboxes"), None);
        assert_eq!(sandbox_of("/v1/namespaces/acme/sandboxes/"), None);
        assert_eq!(sandbox_of("/v1/namespaces/acme/filesystems/fs_1"), None);
        assert_eq!(sandbox_of("/v1/namespaces//sandboxes/sbx_1"), None);
        assert_eq!(sandbox_of("/v1/namespaces"), None);
    }
}
