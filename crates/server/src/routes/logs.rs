//! A namespace's exec output: a page of retained records, or with `Accept: text/event-stream`
//! a live tail as server-sent events (each event's `id` is the record's `seq`, its `data` the
//! record as JSON). A tail with `after` or `since` first replays the retained records that
//! match, then continues live without a gap or a duplicate. Records hold the exact bytes a
//! command wrote: `encoding=base64` carries them as base64, the default as UTF-8 text (records
//! are cut between characters, so only bytes that are not UTF-8 at all are replaced).
//!
//! A sandbox's records are in the sandbox's scope: a filter naming a sandbox the principal may
//! not see is a 404 like a missing one, and a key limited to projects never gets the records of
//! a sandbox that mounts a filesystem outside them, in a page or a tail.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bulkhead_api::{Encoding, ErrorBody, LogPage, LogParams};
use bulkhead_core::ids::{is_id, prefix};
use bulkhead_core::{Action, Principal, Target};
use tokio::sync::broadcast::error::RecvError;

use super::answers::ReadErrors;
use super::load_namespace;
use super::scope::Visible;
use crate::auth::{Ctx, Decider};
use crate::error::{ApiError, ApiResult};
use crate::extract::{PathParams, QueryParams};
use crate::limits::Direction;
use crate::logs::{Entry, Filter};
use crate::service::logs;
use crate::time::parse_rfc3339;

const MAX_LIMIT: u32 = 10_000;

fn filter(params: &LogParams) -> ApiResult<Filter> {
    if let Some(s) = &params.sandbox {
        if !is_id(prefix::SANDBOX, s) {
            return Err(ApiError::Invalid("sandbox: not a sandbox id".into()));
        }
    }
    Ok(Filter {
        sandbox: params.sandbox.clone(),
        since_ms: params.since.as_deref().map(|s| parse_rfc3339("since", s)).transpose()?,
        until_ms: params.until.as_deref().map(|s| parse_rfc3339("until", s)).transpose()?,
        after: params.after,
    })
}

/// Exec output of the namespace's sandboxes, oldest first; live with `Accept: text/event-stream`.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/logs", tag = "logs", params(("ns" = String, Path), LogParams),
    responses((status = 200, description = "A page of records, or server-sent events of LogRecord when tailing", body = LogPage),
        (status = 400, body = ErrorBody), ReadErrors))]
pub async fn get(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    QueryParams(params): QueryParams<LogParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    ctx.authorize(Action::LogsRead, &Target::namespace(&ns))?;
    let filter = filter(&params)?;
    let encoding = params.encoding.unwrap_or_default();
    let limit = params.limit.unwrap_or(1000);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::Invalid(format!("limit: must be between 1 and {MAX_LIMIT}")));
    }
    // The log is kept under the namespace's incarnation: a namespace created again under an old
    // name never reads what the old one left.
    let row = load_namespace(&ctx, &ns).await?;
    let (ns, key) = (row.name, row.incarnation);
    if let Some(id) = &filter.sandbox {
        // The sandbox routes' door: a sandbox the principal may not see is not there.
        super::sandboxes::load_sandbox(&ctx, &ns, id).await?;
    }
    let tail = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().starts_with("text/event-stream")));
    if tail {
        return tail_response(ctx, ns, key, filter, encoding).await;
    }
    let (entries, more) = logs::query(&ctx.state, &key, &filter, limit as usize).await?;
    // The cursor is the last record read, seen or not, so hidden records are never read twice.
    let next_after = if more { entries.last().map(|e| e.seq) } else { None };
    let mut visible = Visible::new(ctx.decider(), Action::LogsRead);
    let mut records = Vec::with_capacity(entries.len());
    for e in &entries {
        if visible.sandbox(&ctx.state, &ns, &e.sandbox).await {
            records.push(e.to_wire(encoding));
        }
    }
    Ok(Json(LogPage { records, next_after }).into_response())
}

fn event(entry: &Entry, encoding: Encoding) -> Event {
    let data = serde_json::to_string(&entry.to_wire(encoding)).unwrap_or_default();
    Event::default().id(entry.seq.to_string()).data(data)
}

/// Retained records that match (when asked for), then live ones. The subscription starts before
/// the replay is read, and live records at or below the last replayed `seq` are skipped.
async fn tail_response(ctx: Ctx, ns: String, key: String, filter: Filter, encoding: Encoding) -> ApiResult<Response> {
    // A live tail is a long-running download, counted until the client goes.
    let guard = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Download)?;
    let mut live = ctx.state.logs.subscribe();
    let mut backlog = Vec::new();
    if filter.after.is_some() || filter.since_ms.is_some() {
        let (entries, _) = logs::query(&ctx.state, &key, &filter, MAX_LIMIT as usize).await?;
        backlog = entries;
    }
    let mut last = backlog.last().map(|e| e.seq).or(filter.after).unwrap_or(0);
    let (state, principal) = (ctx.state.clone(), ctx.principal.clone());
    let mut visible = Visible::new(ctx.decider(), Action::LogsRead);
    let stream = async_stream(move |tx| async move {
        let _guard = guard;
        for e in &backlog {
            if !visible.sandbox(&state, &ns, &e.sandbox).await {
                continue;
            }
            if tx.send(event(e, encoding)).await.is_err() {
                return;
            }
        }
        // A tail ends when its key is revoked or expires, its sandbox ends, its namespace goes,
        // or the namespace's policies no longer allow it: checked every few seconds.
        let mut recheck = tokio::time::interval(Duration::from_secs(5));
        recheck.tick().await;
        loop {
            let received = tokio::select! {
                // The client went away: release the tail at once, not at the next record.
                () = tx.closed() => return,
                r = live.recv() => r,
                _ = recheck.tick() => {
                    match still_allowed(&state, &principal, &ns, filter.sandbox.as_deref()).await {
                        Some(decider) => visible.refresh(decider),
                        None => return,
                    }
                    continue;
                }
            };
            match received {
                Ok(record) => {
                    if record.namespace != key || record.entry.seq <= last || !filter.matches(&record.entry) {
                        continue;
                    }
                    if !visible.sandbox(&state, &ns, &record.entry.sandbox).await {
                        last = record.entry.seq;
                        continue;
                    }
                    last = record.entry.seq;
                    if tx.send(event(&record.entry, encoding)).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    let note = Event::default().event("lagged").data(format!("{n} records of the server were missed"));
                    if tx.send(note).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// The decisions of the principal that opened a tail, with the namespace's policies as they are
/// now, when it may still read the tail's logs: its credential still stands, and `logs.read`
/// on the namespace (and on the sandbox the tail is of) is still allowed.
async fn still_allowed(
    state: &crate::state::AppState,
    principal: &Principal,
    ns: &str,
    sandbox: Option<&str>,
) -> Option<Decider> {
    if !still_valid(state, principal, ns).await {
        return None;
    }
    let decider = Decider::load(state, principal.clone()).await.ok()?;
    if !decider.sees(Action::LogsRead, &Target::namespace(ns)) {
        return None;
    }
    if let Some(id) = sandbox {
        let row = crate::service::sandboxes::get(state, ns, id).await.ok()??;
        if !decider.sees(Action::LogsRead, &super::sandboxes::sandbox_target(&row)) {
            return None;
        }
    }
    Some(decider)
}

/// Whether the credential of the principal that opened a tail still stands.
async fn still_valid(state: &crate::state::AppState, principal: &Principal, ns: &str) -> bool {
    let now = crate::time::now_ms();
    let found = match principal {
        Principal::Admin => true,
        Principal::Key { id, .. } => {
            matches!(crate::service::namespaces::get_key(state, ns, id).await, Ok(Some(k)) if k.expires_at_ms.is_none_or(|t| t > now))
        }
        Principal::Sandbox { id, .. } => {
            matches!(crate::service::sandboxes::get(state, ns, id).await, Ok(Some(s)) if s.status.is_active() && s.expires_at_ms > now)
        }
        // A user's token is not kept; the namespace's existence is what can be checked.
        Principal::User { .. } => true,
    };
    found && matches!(crate::service::namespaces::get(state, ns).await, Ok(Some(_)))
}

/// A stream fed by a task: the task ends when the client goes away (its sends fail).
fn async_stream<F, Fut>(f: F) -> impl futures_util::Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) })
}
