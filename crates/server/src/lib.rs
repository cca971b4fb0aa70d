//! Bulkhead's HTTP server: the only crate that knows HTTP and JSON. [`app`] builds the whole
//! router from a state, so tests drive it in-process; [`serve`] binds it and runs until SIGINT
//! or SIGTERM.
//!
//! **Invariant:** every route but `/healthz`, `/openapi.json`, the console's static files
//! ([`console`], under `/console/`) and the console's sign-in through a namespace's provider
//! ([`console_oidc`], `/console/oidc/start` and `/callback`, which read only the namespace's
//! identity settings and hand out nothing but the provider's own ID token) authenticates through
//! [`auth::Ctx`] and calls `ctx.authorize` with its action before reading a body or the store.
//! **Invariant:** every route of the API is registered through utoipa's router, so the OpenAPI
//! document is the route table and cannot drift from it (the console's files are not the API).
//! **Invariant:** handlers ([`mod@routes`]) parse, authorize, call a service ([`service`]) and convert
//! its answer; services know nothing of HTTP and answer [`service::ServiceError`], which
//! [`error`] maps to status and code once. Modules depend downwards only: `routes` → `service` →
//! `state` (a leaf, with `time`, `text`, `metrics`, `logs`, `limits`, `ratelimit`, `hostids`,
//! `identity_cache`, `nodes`) →
//! the store and runtime traits; nothing below `routes` imports it.

pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod console;
pub mod console_oidc;
pub mod convert;
pub mod error;
pub mod extract;
pub mod forward;
pub mod hostids;
pub mod idempotency;
pub mod identity;
pub mod identity_cache;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod nodes;
pub mod ratelimit;
pub mod request;
pub mod routes;
pub mod service;
pub mod state;
pub mod text;
pub mod time;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{middleware, Json, Router};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use service::{metering, sandboxes};
pub use state::{AppState, ServerConfig};

#[derive(OpenApi)]
#[openapi(
    info(title = "Bulkhead", description = "Multi-tenant runtime for AI agents."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Every documented route, unrouted yet: the single route table.
fn api_routes() -> OpenApiRouter<AppState> {
    use routes::{
        agents, audit, filesystems, fsdata, health, identity, images, keys, logs, metrics, namespaces, pools,
        processes, projects, sandboxes, secrets, tasks, usage,
    };
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(namespaces::create, namespaces::list))
        .routes(routes!(namespaces::get, namespaces::update, namespaces::delete))
        .routes(routes!(namespaces::permissions))
        .routes(routes!(keys::create, keys::list))
        .routes(routes!(keys::get, keys::revoke))
        .routes(routes!(audit::list))
        .routes(routes!(audit::verify))
        .routes(routes!(audit::platform_list))
        .routes(routes!(audit::platform_verify))
        .routes(routes!(sandboxes::create, sandboxes::list))
        .routes(routes!(sandboxes::get, sandboxes::delete))
        .routes(routes!(sandboxes::exec))
        .routes(routes!(sandboxes::read_file, sandboxes::write_file))
        // Background processes of a sandbox.
        .routes(routes!(processes::start, processes::list))
        .routes(routes!(processes::get))
        .routes(routes!(processes::output))
        .routes(routes!(processes::stdin))
        .routes(routes!(processes::signal))
        .routes(routes!(processes::resize))
        .routes(routes!(processes::attach))
        .routes(routes!(usage::get))
        .routes(routes!(logs::get))
        .routes(routes!(identity::get, identity::set))
        .routes(routes!(identity::create_policy, identity::list_policies))
        .routes(routes!(identity::delete_policy))
        .routes(routes!(identity::explain))
        .routes(routes!(identity::schema))
        .routes(routes!(secrets::create, secrets::list))
        .routes(routes!(secrets::delete))
        .routes(routes!(metrics::platform))
        .routes(routes!(metrics::namespace))
        .routes(routes!(projects::create, projects::list))
        .routes(routes!(projects::delete))
        .routes(routes!(filesystems::create, filesystems::list))
        .routes(routes!(filesystems::get, filesystems::resize, filesystems::delete))
        .routes(routes!(fsdata::read_archive, fsdata::write_archive))
        .routes(routes!(fsdata::read_file, fsdata::write_file, fsdata::delete_file))
        .routes(routes!(images::import))
        .routes(routes!(images::create, images::list))
        .routes(routes!(images::get, images::delete))
        .routes(routes!(images::publish))
        .routes(routes!(images::create_public, images::list_public))
        .routes(routes!(images::delete_public))
        .routes(routes!(images::snapshot))
        .routes(routes!(pools::list))
        .routes(routes!(pools::set, pools::delete))
        // Agents, their versions, and tasks.
        .routes(routes!(agents::create, agents::list))
        .routes(routes!(agents::get, agents::delete))
        .routes(routes!(agents::push, agents::versions))
        .routes(routes!(agents::deploy))
        .routes(routes!(agents::rollback))
        .routes(routes!(tasks::create, tasks::list))
        .routes(routes!(tasks::get))
        .routes(routes!(tasks::event))
        .routes(routes!(tasks::messages))
        .routes(routes!(tasks::get_state, tasks::put_state))
        .routes(routes!(tasks::cancel))
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_routes().into_openapi();
    document_answers(&mut doc);
    doc
}

/// What every route's own annotation leaves implicit, added to the document once: unique
/// operation ids, the rate limits ([`document_rate_limits`]), the server-side errors
/// ([`document_server_errors`]) and byte bodies as binary strings.
fn document_answers(doc: &mut utoipa::openapi::OpenApi) {
    // utoipa names an operation after its handler, and handlers of different modules share
    // names (`create`, `list`); generators need them unique: `{tag}_{handler}`.
    for op in operations(doc) {
        if let (Some(tag), Some(id)) = (op.tags.as_ref().and_then(|t| t.first()), op.operation_id.as_ref()) {
            op.operation_id = Some(format!("{tag}_{id}"));
        }
    }
    document_rate_limits(doc);
    document_creates_in_progress(doc);
    document_server_errors(doc);
    document_binary_bodies(doc);
}

/// The operations of `doc`, mutably.
fn operations(doc: &mut utoipa::openapi::OpenApi) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    doc.paths.paths.values_mut().flat_map(item_operations)
}

/// The operations of one path, mutably.
fn item_operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// The `Retry-After` header of an answer worth repeating: whole seconds, at least 1.
fn retry_after_header() -> utoipa::openapi::header::Header {
    use utoipa::openapi::{header::HeaderBuilder, ObjectBuilder, Type};
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)))
        .description(Some("Whole seconds to wait, at least 1"))
        .build()
}

/// Every create that takes an `Idempotency-Key` may answer `409 conflict` with `Retry-After`
/// while the key's first request still runs (see [`idempotency`]): a client asks again then,
/// and gets the first request's answer.
fn document_creates_in_progress(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    use utoipa::ToSchema;
    const WHY: &str = "the Idempotency-Key's first request is still running (then with `Retry-After`: ask \
                       again after it, and get that request's answer)";
    for op in operations(doc) {
        let keyed = op
            .parameters
            .iter()
            .flatten()
            .any(|p| p.parameter_in == ParameterIn::Header && p.name.eq_ignore_ascii_case(idempotency::HEADER));
        if !keyed {
            continue;
        }
        let answer = op.responses.responses.entry("409".to_owned()).or_insert_with(|| {
            let content =
                ContentBuilder::new().schema(Some(Ref::from_schema_name(bulkhead_api::ErrorBody::name()))).build();
            ResponseBuilder::new().content("application/json", content).build().into()
        });
        if let RefOr::T(r) = answer {
            r.description = if r.description.is_empty() {
                format!("`conflict`: {WHY}")
            } else {
                format!("{}; or {WHY}", r.description)
            };
            r.headers.insert("Retry-After".to_owned(), retry_after_header());
        }
    }
}

/// Every route may answer `500 internal` (a bug or a panic: the body has the request id and
/// nothing else); every authenticated one `503 unavailable` with `Retry-After` (the store, which
/// authentication reads, busy past its timeout or failing to write: what was asked is not known
/// to be done); a write may also answer `507 insufficient_storage` (the server's own disk is full).
fn document_server_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    use utoipa::ToSchema;
    let answer = |description: &str| {
        let content =
            ContentBuilder::new().schema(Some(Ref::from_schema_name(bulkhead_api::ErrorBody::name()))).build();
        ResponseBuilder::new().description(description).content("application/json", content)
    };
    let internal = answer("`internal`: the server failed; the body carries only the request id").build();
    let unavailable = answer("`unavailable`: the server's store is busy or could not write; retry after `Retry-After`")
        .header("Retry-After", retry_after_header())
        .build();
    let full = answer("`insufficient_storage`: the server's own disk is full; nothing was written").build();
    for op in operations(doc) {
        let writes = op.request_body.is_some();
        // `security(())` on a route: no requirement, or only the empty one.
        let open = op.security.as_ref().is_some_and(|s| s.iter().all(|r| *r == Default::default()));
        let answers = &mut op.responses.responses;
        answers.entry("500".to_owned()).or_insert_with(|| internal.clone().into());
        if !open {
            answers.entry("503".to_owned()).or_insert_with(|| unavailable.clone().into());
        }
        if writes {
            answers.entry("507".to_owned()).or_insert_with(|| full.clone().into());
        }
    }
}

/// Bodies of raw bytes (files, archives, bundles, stdin) are `string`s of format `binary`, which
/// is what generators make byte streams of (utoipa writes `Vec<u8>` as an array of integers).
fn document_binary_bodies(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    let binary = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .build()
    };
    for op in operations(doc) {
        let mut contents: Vec<&mut utoipa::openapi::Content> = Vec::new();
        if let Some(body) = op.request_body.as_mut() {
            contents.extend(body.content.iter_mut().map(|(_, c)| c));
        }
        for answer in op.responses.responses.values_mut() {
            if let utoipa::openapi::RefOr::T(answer) = answer {
                contents.extend(answer.content.iter_mut().map(|(_, c)| c));
            }
        }
        for content in contents {
            let bytes = matches!(&content.schema, Some(utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Array(a)))
                if matches!(&a.items, utoipa::openapi::schema::ArrayItems::RefOrSchema(item)
                    if matches!(item.as_ref(), utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(o))
                        if o.format == Some(SchemaFormat::KnownFormat(KnownFormat::Int32)) && o.minimum.is_some())));
            if bytes {
                content.schema = Some(binary().into());
            }
        }
    }
}

/// Every route of a namespace may answer `429 rate_limited` with `Retry-After`: its namespace's
/// request bucket is empty, or (commands and creates) its `max_concurrent_execs` are in flight
/// (see [`ratelimit`]). Documented on each such route; a route that names a 429 of its own
/// (`quota_exceeded`) has its description say both.
fn document_rate_limits(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    use utoipa::ToSchema;
    const WHY: &str = "`rate_limited`: the namespace's api_requests_per_second, or for commands and sandbox \
                       creates its max_concurrent_execs; retry after `Retry-After` seconds";
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name(bulkhead_api::ErrorBody::name()))).build();
    let answer = ResponseBuilder::new()
        .description(WHY)
        .content("application/json", content)
        .header("Retry-After", retry_after_header())
        .build();
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/v1/namespaces/{ns}") {
            continue;
        }
        for op in item_operations(item) {
            match op.responses.responses.entry("429".to_owned()) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(answer.clone().into());
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    if let RefOr::T(r) = o.get_mut() {
                        r.description = format!("{}; or {WHY}", r.description);
                        r.headers.insert("Retry-After".to_owned(), retry_after_header());
                    }
                }
            }
        }
    }
}

/// The whole application for `state`.
pub fn app(state: AppState) -> Router {
    let (router, mut doc) = api_routes().split_for_parts();
    document_answers(&mut doc);
    let doc = Arc::new(doc);
    let max_body = state.config.max_body_bytes;
    router
        .route_layer(middleware::from_fn_with_state(state.clone(), audit::middleware))
        .route("/openapi.json", get(move || async move { Json(doc.as_ref().clone()) }))
        .merge(console::routes())
        .method_not_allowed_fallback(request::method_not_allowed)
        .fallback(request::not_found)
        .layer(middleware::from_fn(console::headers))
        // A peer's sandbox's requests go to its node before anything here reads them.
        .layer(middleware::from_fn_with_state(state.clone(), forward::middleware))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(request::panic_response))
        .layer(middleware::from_fn(request::middleware))
        .with_state(state)
}

/// Serves `listener` until SIGINT or SIGTERM, finishing requests in flight (for at most 15 s).
///
/// Each connection is served by hyper's HTTP/1 server and watched by
/// [`limits::watchdog`]: at most `max_connections` at once (the rest wait in the listen queue),
/// and closed when its header does not arrive within the header timeout, when it is idle past
/// the idle timeout, or when its peer stops reading a response for the stall timeout. Request
/// bodies fail when they deliver less than 64 KiB, and do not end, within the stall timeout
/// ([`limits::StallBody`]). hyper's own `header_read_timeout` is not used: it also runs while a
/// kept-alive connection waits for its next request, so it cannot tell a slow header from an
/// idle connection.
pub async fn serve(state: AppState, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let url = match &state.config.advertise_url {
        Some(url) => url.clone(),
        None => format!("http://{}", listener.local_addr()?),
    };
    service::nodes::start(&state, url)
        .await
        .map_err(|e| std::io::Error::other(format!("joining the store's nodes: {e}")))?;
    sandboxes::spawn_reaper(state.clone());
    metering::spawn_meter(state.clone());
    service::pools::spawn(state.clone());
    service::egress_audit::spawn_flush(state.clone(), state.config.egress_audit_interval);
    let limits = state.config.connections;
    let last_flush = state.clone();
    let router = app(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    // Connections hold a receiver each; a shutdown tells them to drain and waits for them.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    // Request heads and body chunks are read into at most this much per connection.
    http.max_buf_size(64 * 1024).header_read_timeout(None);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // No Nagle: small JSON answers must not wait for a delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let conn_state = Arc::new(limits::ConnState::default());
        let io = hyper_util::rt::TokioIo::new(limits::Watched::new(tcp, conn_state.clone()));
        let service = connection_service(router.clone(), conn_state.clone(), limits.stall_timeout);
        // With upgrades: a process's attachment becomes a WebSocket on the same connection
        // (from then on the connection is the WebSocket's, outside the watchdog and the count).
        let conn = http.serve_connection(io, service).with_upgrades();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::pin!(conn);
            let watchdog = limits::watchdog(conn_state, limits);
            tokio::pin!(watchdog);
            let mut draining = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                        break;
                    }
                    why = &mut watchdog => {
                        tracing::debug!(%peer, why, "connection closed");
                        break;
                    }
                    _ = stop.changed(), if !draining => {
                        // Finish the request in flight, take no other.
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    // Requests in flight get a while to finish; live tails and long execs would never end on
    // their own, so the wait is bounded. Every connection holds a receiver until it ends.
    if tokio::time::timeout(SHUTDOWN_GRACE, stop_tx.closed()).await.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "requests still in flight at shutdown were cut");
    }
    // The denials of the interval cut short are audited too.
    if let Err(e) = service::egress_audit::flush_now(&last_flush).await {
        tracing::warn!(error = %e, "the last egress denial audit failed");
    }
    Ok(())
}

/// How long a shutdown waits for requests in flight.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// The router as one connection's hyper service: request bodies stall-limited, and each request
/// counted in flight on the connection until its response body is done.
fn connection_service(
    router: Router,
    conn: Arc<limits::ConnState>,
    stall: std::time::Duration,
) -> impl hyper::service::Service<
    axum::http::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let in_flight = conn.begin();
        let req = req.map(|b| axum::body::Body::new(limits::StallBody::new(b, stall)));
        let response = router.clone().oneshot(req);
        async move {
            let response = response.await?;
            Ok(response.map(|body| {
                axum::body::Body::new(body.map_frame(move |frame| {
                    let _ = &in_flight;
                    frame
                }))
            }))
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
