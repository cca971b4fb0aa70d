//! Forwarding between the replicas of a shared store: a sandbox runs on one node (its row's
//! `node`), a filesystem's image is in one node's data dir, and a task's agent is connected to
//! the node of its sandbox. A request for one of them (`/v1/namespaces/{ns}/sandboxes/{id}`,
//! `.../filesystems/{id}`, `.../tasks/{id}` and everything under them: exec, files, processes,
//! their WebSocket attach, snapshot, delete, task events), or a sandbox or task create that
//! mounts a filesystem, that reaches another replica is passed to that node as it came — method, path, query, headers (the bearer token
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
// Headers of one connection are not passed on; an upgrade's `Connection` and `Upgrade` are put
// back by `forward`.
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bulkhead_runtime::broker::strip_hop_by_hop;
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

/// What a request addresses that lives on one node: a sandbox, a filesystem or a task (by
/// path), or a filesystem a sandbox or task create mounts (by body).
#[derive(Debug, PartialEq, Eq)]
enum Addressed<S> {
    Sandbox(S, S),
    Filesystem(S, S),
    Task(S, S),
    /// `POST /v1/namespaces/{ns}/sandboxes` or `/tasks`: the body says.
    Create(S),
}

/// `segment` with its percent-escapes decoded, as the router decodes path parameters; `None`
/// when an escape is malformed or decodes to no UTF-8 (the router refuses those too).
fn decoded(segment: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !segment.contains('%') {
        return Some(std::borrow::Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(std::borrow::Cow::Owned)
}

/// What `method` and `path` address, when it is one thing of one node; its segments decoded
/// as the router decodes them, so that an escaped path is routed where its plain twin is.
fn addressed(method: &axum::http::Method, path: &str) -> Option<Addressed<String>> {
    let segments: Vec<String> =
        path.split('/').map(|s| decoded(s).map(std::borrow::Cow::into_owned)).collect::<Option<_>>()?;
    let path = segments.join("/");
    let found = addressed_plain(method, &path)?;
    Some(match found {
        Addressed::Sandbox(ns, id) => Addressed::Sandbox(ns.to_owned(), id.to_owned()),
        Addressed::Filesystem(ns, id) => Addressed::Filesystem(ns.to_owned(), id.to_owned()),
        Addressed::Task(ns, id) => Addressed::Task(ns.to_owned(), id.to_owned()),
        Addressed::Create(ns) => Addressed::Create(ns.to_owned()),
    })
}

/// [`addressed`] of a path already decoded.
fn addressed_plain<'a>(method: &axum::http::Method, path: &'a str) -> Option<Addressed<&'a str>> {
    let rest = path.strip_prefix("/v1/namespaces/")?;
    let (ns, rest) = rest.split_once('/')?;
    if ns.is_empty() {
        return None;
    }
    let (kind, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let id = rest.split('/').next().unwrap_or("");
    match (kind, id.is_empty()) {
        ("sandboxes", false) => Some(Addressed::Sandbox(ns, id)),
        ("filesystems", false) => Some(Addressed::Filesystem(ns, id)),
        ("tasks", false) => Some(Addressed::Task(ns, id)),
        ("sandboxes" | "tasks", true) if method == axum::http::Method::POST && rest.is_empty() => {
            Some(Addressed::Create(ns))
        }
        _ => None,
    }
}

/// Where a thing lives: its node, and whether it still holds host resources there (an ended
/// sandbox of a lost node is any replica's to answer for).
struct Home {
    node: String,
    active: bool,
    what: String,
}

/// The node of sandbox `id`: this node's own sandboxes, once seen, without a store read.
async fn sandbox_home(state: &AppState, ns: &str, id: &str) -> Option<Home> {
    if state.node.home(id).is_some_and(|n| state.node.is_mine(&n)) {
        return None;
    }
    let row = state.store.get_sandbox(ns, id).await.ok()??;
    // Keyed by id alone: ids are unique across namespaces, and a request naming another
    // namespace's sandbox is the handler's to refuse wherever it runs.
    state.node.remember_home(&row.id, &row.node);
    Some(Home { node: row.node, active: row.status.is_active(), what: format!("sandbox {id}") })
}

/// The node of filesystem `id`.
async fn filesystem_home(state: &AppState, ns: &str, id: &str) -> Option<Home> {
    let row = state.store.get_filesystem(ns, id).await.ok()??;
    Some(Home { node: row.node, active: true, what: format!("filesystem {id}") })
}

/// The node of `req`'s target; `None`: this one's to answer (also when the store fails: the
/// handler then answers as it would). A create's body is read here (bounded by
/// `max_body_bytes`) and put back.
async fn home_of(state: &AppState, req: &mut Request) -> Result<Option<Home>, Response> {
    let Some(target) = addressed(req.method(), req.uri().path()) else { return Ok(None) };
    Ok(match target {
        Addressed::Sandbox(ns, id) => sandbox_home(state, &ns, &id).await,
        Addressed::Filesystem(ns, id) => filesystem_home(state, &ns, &id).await,
        // A task's agent runs in its sandbox, and its connection lives on that sandbox's node;
        // a task with no sandbox starts one by its filesystem.
        Addressed::Task(ns, id) => task_home(state, &ns, &id).await,
        Addressed::Create(ns) => {
            let body = std::mem::take(req.body_mut());
            let bytes = match axum::body::to_bytes(body, state.config.max_body_bytes).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    // Over the bound, or cut off: answered here, as the handler would.
                    let too_large =
                        std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                    return Err(if too_large {
                        ApiError::PayloadTooLarge("request body too large".into()).into_response()
                    } else {
                        ApiError::Invalid(format!("body: {e}")).into_response()
                    });
                }
            };
            *req.body_mut() = Body::from(bytes.clone());
            let fs = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("filesystem")?.get("id")?.as_str().map(str::to_owned));
            match fs {
                Some(fs) => filesystem_home(state, &ns, &fs).await,
                None => None,
            }
        }
    })
}

/// The node of task `id`: its live sandbox's, else its filesystem's.
async fn task_home(state: &AppState, ns: &str, id: &str) -> Option<Home> {
    let task = state.store.get_task(ns, id).await.ok()??;
    if let Some(sbx) = &task.sandbox_id {
        let home = sandbox_home(state, ns, sbx).await?;
        if home.active {
            return Some(home);
        }
    }
    let (fs, _) = task.filesystem.as_ref()?;
    filesystem_home(state, ns, fs).await
}

/// The middleware: passes a request for what a peer holds to that peer.
pub async fn middleware(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if !state.node.shared {
        return next.run(req).await;
    }
    // A request another replica forwarded is this one's to answer, whatever this one believes
    // (it is never passed on again).
    if req.headers().contains_key(FORWARDED_HEADER) {
        return next.run(req).await;
    }
    let home = match home_of(&state, &mut req).await {
        Ok(Some(home)) if !state.node.is_mine(&home.node) => home,
        Ok(_) => return next.run(req).await,
        Err(refused) => return refused,
    };
    let what = home.what.clone();
    let mut peer = state.node.peer(&home.node).filter(|p| p.is_live(now_ms()));
    if peer.is_none() {
        // A node that started (or renewed) since the peers were last read.
        if let Ok(rows) = state.store.nodes().await {
            state.node.set_peers(rows);
            peer = state.node.peer(&home.node).filter(|p| p.is_live(now_ms()));
        }
    }
    let Some(peer) = peer else {
        if home.active {
            return ApiError::Unavailable {
                message: "the replica that holds it is not answering; retry".into(),
                retry_after_seconds: 2,
            }
            .into_response();
        }
        // Its node is gone and it has ended: any replica answers for an ended sandbox.
        return next.run(req).await;
    };
    match forward(&state, &peer.id, &peer.url, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(target = %what, node = %peer.id, url = %peer.url, error = %e, "forwarding failed");
            ApiError::Unavailable {
                message: "the replica that holds it is not answering; retry".into(),
                retry_after_seconds: 1,
            }
            .into_response()
        }
    }
}

/// Resolves once node `id` is no longer live (its lease lapsed, or it was declared lost), as
/// this node's lease loop last read it.
async fn gone(state: &AppState, id: &str) {
    let every = (state.node.lease / 6).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        if !state.node.peer(id).is_some_and(|p| p.is_live(now_ms())) {
            return;
        }
    }
}

/// Sends `req` to node `id` at `base` and returns its answer (joining a WebSocket upgrade). A
/// node that stops renewing its lease while its answer is awaited ends the wait.
async fn forward(state: &AppState, id: &str, base: &str, mut req: Request) -> Result<Response, String> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = format!("{}{path}", base.trim_end_matches('/')).parse().map_err(|e| format!("peer url: {e}"))?;
    let upgrade = req.headers().get(header::UPGRADE).cloned();
    let incoming_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let mut out = axum::http::Request::builder().method(parts.method).uri(uri).version(axum::http::Version::HTTP_11);
    if let Some(headers) = out.headers_mut() {
        for (name, value) in &parts.headers {
            if name != header::HOST {
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
    let mut answer = tokio::select! {
        answer = client().request(out) => answer.map_err(|e| e.to_string())?,
        () = gone(state, id) => return Err("the node stopped renewing its lease before it answered".into()),
    };
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
        let (mut parts, _) = answer.into_parts();
        parts.extensions.insert(crate::request::Forwarded);
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = answer.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.extensions.insert(crate::request::Forwarded);
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_one_connection_are_not_passed_on() {
        let mut h = axum::http::HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Hop , x-other"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("x-other", "2"),
            ("transfer-encoding", "chunked"),
            ("authorization", "Bearer t"),
            ("x-end-to-end", "3"),
            ("content-type", "application/json"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type", "x-end-to-end"]);
        // A `Connection` that names nothing valid removes only itself.
        let mut h = axum::http::HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static(", ,bad header"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn what_a_path_addresses() {
        use axum::http::Method;
        let get = |p| addressed(&Method::GET, p);
        let s = |ns: &str, id: &str| Some(Addressed::Sandbox(ns.to_owned(), id.to_owned()));
        assert_eq!(get("/v1/namespaces/acme/sandboxes/sbx_1"), s("acme", "sbx_1"));
        // Escapes decode as the router decodes them.
        assert_eq!(get("/v1/namespaces/acm%65/sandboxes/sbx%5F1/exec"), s("acme", "sbx_1"));
        assert_eq!(get("/v1/namespaces/acme/sandboxes/sbx_1%2"), None);
        assert_eq!(get("/v1/namespaces/acme/sandboxes/sbx_%FF"), None);
        assert_eq!(get("/v1/namespaces/acme/sandboxes/sbx_1/exec"), s("acme", "sbx_1"));
        assert_eq!(get("/v1/namespaces/acme/sandboxes/sbx_1/processes/7/attach"), s("acme", "sbx_1"));
        let fs = Some(Addressed::Filesystem("acme".to_owned(), "fs_1".to_owned()));
        assert_eq!(get("/v1/namespaces/acme/filesystems/fs_1/files/a/b"), fs);
        assert_eq!(
            get("/v1/namespaces/acme/tasks/tsk_1/messages"),
            Some(Addressed::Task("acme".to_owned(), "tsk_1".to_owned()))
        );
        let create = Some(Addressed::Create("acme".to_owned()));
        assert_eq!(addressed(&Method::POST, "/v1/namespaces/acme/sandboxes"), create);
        assert_eq!(addressed(&Method::POST, "/v1/namespaces/acme/tasks"), create);
        for local in [
            "/v1/namespaces/acme/sandboxes",
            "/v1/namespaces/acme/sandboxes/",
            "/v1/namespaces/acme/filesystems",
            "/v1/namespaces/acme/keys/key_1",
            "/v1/namespaces//sandboxes/sbx_1",
            "/v1/namespaces/acme",
            "/v1/namespaces",
            "/healthz",
        ] {
            assert_eq!(get(local), None, "{local}");
        }
        assert_eq!(addressed(&Method::POST, "/v1/namespaces/acme/filesystems"), None);
    }
}
