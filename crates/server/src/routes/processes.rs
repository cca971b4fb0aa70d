//! Background processes of a sandbox: `POST .../sandboxes/{id}/processes` starts one, `GET` lists
//! them or shows one, `GET .../output` streams its output (NDJSON, or server-sent events with
//! `Accept: text/event-stream`) from a sequence number on, `POST .../stdin` streams a raw body of
//! any size to its stdin, `.../signal` and `.../resize` control it, and `GET .../attach` upgrades
//! to a WebSocket for an interactive terminal.
//!
//! Starting, writing, signalling, resizing and attaching are `sandbox.exec`; listing, showing and
//! reading output are `sandbox.get`, the action of reading the sandbox itself.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bulkhead_api::{
    AttachControl, CreateProcess, ErrorBody, OutputStream, Page, Process, ProcessEvent, ProcessOutputParams,
    ProcessStatus, ProcessStdinParams, SignalRequest, StdinResult, TtySize,
};
use bulkhead_core::ids::{self, prefix};
use bulkhead_core::{Action, Target};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;

use super::answers::{CheckedErrors, ConflictErrors, GuardedErrors};
use super::sandboxes::{check_command, load_running, wants, NDJSON};
use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json, PathParams, QueryParams};
use crate::limits::Direction;
use crate::service::processes;
use crate::service::records::{
    OutputStreamKind, ProcessEvent as RtEvent, ProcessInfo, ProcessSpec, ProcessStatus as RtStatus, TtySize as RtTty,
};
use crate::time::rfc3339;

/// The longest timeout of a background process: a day.
const MAX_PROCESS_TIMEOUT: u64 = 86_400;
/// The largest terminal, in rows or columns.
const MAX_TTY: u16 = 1000;

/// A process id of the right shape (`prc_` and 32 hex digits), or the 404 of a missing one,
/// which shows at most the first 40 characters of what was asked for.
fn check_id(pid: &str) -> ApiResult<()> {
    if ids::is_id(prefix::PROCESS, pid) {
        return Ok(());
    }
    let shown: String = pid.chars().take(40).collect();
    let more = if shown.len() < pid.len() { "…" } else { "" };
    Err(ApiError::NotFound(format!("process {shown:?}{more} not found: not a process id")))
}

fn exit_code(p: &ProcessInfo) -> i32 {
    p.exit_code.unwrap_or_else(|| 128 + p.signal.unwrap_or(0))
}

fn ms(t: u64) -> String {
    rfc3339(i64::try_from(t).unwrap_or(i64::MAX))
}

/// The wire form of a process of sandbox `sandbox`.
fn process_out(sandbox: &str, p: &ProcessInfo) -> Process {
    let exited = matches!(p.status, RtStatus::Exited);
    Process {
        id: p.id.clone(),
        sandbox: sandbox.to_owned(),
        cmd: p.argv.clone(),
        pid: p.pid,
        status: if exited { ProcessStatus::Exited } else { ProcessStatus::Running },
        exit_code: exited.then(|| exit_code(p)),
        signal: p.signal,
        timed_out: p.timed_out,
        tty: p.tty,
        user: p.user.clone(),
        started_at: ms(p.started_at_ms),
        ended_at: p.ended_at_ms.map(ms),
    }
}

/// A terminal size asked for (`POST .../resize`, an attachment's `resize`), its numbers read
/// wide so that any out of range is refused naming its field.
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct SizeRequest {
    rows: i64,
    cols: i64,
}

/// A control message from an attaching client (see `AttachControl`), read like
/// [`SizeRequest`].
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientControl {
    Resize { rows: i64, cols: i64 },
    Eof,
}

/// A terminal's size if `rows` and `cols` are 1 to 1000; otherwise the 400 naming the field
/// (`field` is where the size sits in the request, such as `tty.` or nothing).
fn check_size(field: &str, rows: i64, cols: i64) -> ApiResult<RtTty> {
    let one = |name: &str, n: i64| {
        u16::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_TTY).contains(n))
            .ok_or_else(|| ApiError::Invalid(format!("{field}{name}: must be between 1 and {MAX_TTY}, got {n}")))
    };
    Ok(RtTty { rows: one("rows", rows)?, cols: one("cols", cols)? })
}

fn check_tty(size: TtySize) -> ApiResult<RtTty> {
    check_size("tty.", i64::from(size.rows), i64::from(size.cols))
}

/// Start a process in the background; the answer is the running process. (A 200, not a 201:
/// like an exec, a start is an action in the sandbox, not a resource of the store, and it takes
/// no `Idempotency-Key`.)
#[utoipa::path(post, path = "/v1/namespaces/{ns}/sandboxes/{id}/processes", tag = "processes",
    params(("ns" = String, Path), ("id" = String, Path)), request_body = CreateProcess,
    responses((status = 200, body = Process), ConflictErrors))]
pub async fn start(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
    ctx.authorize(Action::SandboxExec, &Target::sandbox(&ns, &id))?;
    // As an exec's: an argv up to the kernel's bounds does not fit the general body limit.
    let body = super::sandboxes::exec_body(body).await?;
    let req: CreateProcess = json(&headers, &body)?;
    drop(body);
    let CreateProcess { cmd, env, cwd, user, tty, timeout_seconds } = req;
    let (env, cwd) = check_command(&cmd, env.as_ref(), cwd, user.as_deref())?;
    let tty = tty.map(check_tty).transpose()?;
    if let Some(t) = timeout_seconds {
        if !(1..=MAX_PROCESS_TIMEOUT).contains(&t) {
            return Err(ApiError::Invalid(format!("timeout_seconds: must be between 1 and {MAX_PROCESS_TIMEOUT}")));
        }
    }
    ctx.audit_detail("argv", cmd.clone());
    if let Some(u) = &user {
        ctx.audit_detail("user", u.clone());
    }
    let row = load_running(&ctx, &ns, &id).await?;
    let (user, cwd) = super::sandboxes::command_defaults(&row, user, cwd);
    let spec = ProcessSpec {
        id: ids::new_id(prefix::PROCESS),
        argv: cmd,
        env,
        cwd,
        user,
        tty,
        timeout_ms: timeout_seconds.map(|t| t * 1000),
    };
    ctx.audit_detail("process", spec.id.clone());
    // Held until the process exits (see `processes::hold_until_exit`).
    let slot = super::exec_slot(&ctx, &ns).await?;
    let info = processes::start(&ctx.state, &ns, &id, spec).await?;
    processes::hold_until_exit(&ctx.state, &id, &info.id, slot);
    Ok(Json(process_out(&id, &info)).into_response())
}

/// The sandbox's processes: running ones and those that ended in the last 10 minutes.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/sandboxes/{id}/processes", tag = "processes",
    params(("ns" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Page<Process>), (status = 409, body = ErrorBody), GuardedErrors))]
pub async fn list(ctx: Ctx, PathParams((ns, id)): PathParams<(String, String)>) -> ApiResult<Json<Page<Process>>> {
    ctx.authorize(Action::SandboxGet, &Target::sandbox(&ns, &id))?;
    load_running(&ctx, &ns, &id).await?;
    let items = processes::list(&ctx.state, &id).await?.iter().map(|p| process_out(&id, p)).collect();
    Ok(Json(Page { items, next_cursor: None }))
}

/// One process: its status and, once it ended, its exit.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}", tag = "processes",
    params(("ns" = String, Path), ("id" = String, Path), ("pid" = String, Path)),
    responses((status = 200, body = Process), (status = 409, body = ErrorBody), GuardedErrors))]
pub async fn get(
    ctx: Ctx,
    PathParams((ns, id, pid)): PathParams<(String, String, String)>,
) -> ApiResult<Json<Process>> {
    ctx.authorize(Action::SandboxGet, &Target::sandbox(&ns, &id))?;
    load_running(&ctx, &ns, &id).await?;
    check_id(&pid)?;
    Ok(Json(process_out(&id, &processes::get(&ctx.state, &id, &pid).await?)))
}

/// The wire event of a runtime event.
fn event_out(event: RtEvent) -> ProcessEvent {
    match event {
        RtEvent::Output { seq, stream, data } => ProcessEvent::Output {
            seq,
            stream: match stream {
                OutputStreamKind::Stdout => OutputStream::Stdout,
                OutputStreamKind::Stderr => OutputStream::Stderr,
                OutputStreamKind::Pty => OutputStream::Pty,
            },
            data: crate::text::base64(&data),
        },
        RtEvent::Exit(info) => {
            ProcessEvent::Exit { exit_code: exit_code(&info), signal: info.signal, timed_out: info.timed_out }
        }
    }
}

/// The `gap` event due before `event` when output events were skipped: `next` is the seq
/// expected next (`after + 1` at the start of a read) and moves past `event`'s.
fn gap_before(next: &mut u64, event: &ProcessEvent) -> Option<ProcessEvent> {
    let ProcessEvent::Output { seq, .. } = event else {
        return None;
    };
    let gap = (*seq > *next).then(|| ProcessEvent::Gap { from: *next, to: seq - 1 });
    *next = seq.saturating_add(1);
    gap
}

/// The process's output from `after` on (exclusive), as NDJSON lines of `ProcessEvent`, or as
/// server-sent events with `Accept: text/event-stream` (each output event's `id` is its `seq`,
/// and `Last-Event-ID` resumes after it). The stream stays open until the process exits and
/// ends with an `exit` event. When output older than the oldest kept (8 MiB per process) was
/// asked for, a `gap` event `{"type":"gap","from","to"}` names the seqs lost before the first
/// event kept (for server-sent events, an event of type `gap`).
#[utoipa::path(get, path = "/v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/output", tag = "processes",
    params(("ns" = String, Path), ("id" = String, Path), ("pid" = String, Path), ProcessOutputParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume server-sent events after this seq")),
    responses((status = 200, description = "NDJSON lines (or, with `Accept: text/event-stream`, server-sent events) of ProcessEvent",
            content((ProcessEvent = "application/x-ndjson"), (ProcessEvent = "text/event-stream"))),
        (status = 409, body = ErrorBody), CheckedErrors))]
pub async fn output(
    ctx: Ctx,
    PathParams((ns, id, pid)): PathParams<(String, String, String)>,
    QueryParams(params): QueryParams<ProcessOutputParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    ctx.authorize(Action::SandboxGet, &Target::sandbox(&ns, &id))?;
    let last_event = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::Invalid("Last-Event-ID: must be a seq".into()))?,
        ),
        None => None,
    };
    let after = last_event.or(params.after).unwrap_or(0);
    load_running(&ctx, &ns, &id).await?;
    check_id(&pid)?;
    let sse = wants(&headers, "text/event-stream");
    let guard = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Download)?;
    let events = processes::output(&ctx.state, &id, &pid, after).await?;
    let stream = futures_util::stream::unfold(Some((events, guard)), |state| async move {
        let (mut events, guard) = state?;
        match events.next().await {
            Some(Ok(e)) => {
                let last = matches!(e, RtEvent::Exit(_));
                let next = if last { None } else { Some((events, guard)) };
                Some((Ok(event_out(e)), next))
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "process output stream failed");
                Some((Err(ApiError::from(e).to_string()), None))
            }
            None => None,
        }
    });
    // Output dropped before this read asked for it is named by a `gap` event before the next
    // event kept.
    let mut next = after.saturating_add(1);
    let stream = stream.flat_map(move |e| {
        let gap = e.as_ref().ok().and_then(|event| gap_before(&mut next, event));
        futures_util::stream::iter(gap.map(Ok).into_iter().chain(std::iter::once(e)))
    });
    if sse {
        let events = stream.map(|e| {
            Ok::<_, Infallible>(match e {
                Ok(event) => {
                    let data = serde_json::to_string(&event).unwrap_or_default();
                    match event {
                        ProcessEvent::Output { seq, .. } => Event::default().id(seq.to_string()).data(data),
                        ProcessEvent::Gap { .. } => Event::default().event("gap").data(data),
                        ProcessEvent::Exit { .. } => Event::default().event("exit").data(data),
                    }
                }
                Err(message) => Event::default().event("error").data(message),
            })
        });
        return Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response());
    }
    let lines = stream.map(|e| match e {
        Ok(event) => {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            Ok::<_, std::io::Error>(Bytes::from(line))
        }
        // The stream is cut; the client sees no `exit` and resumes from its last `seq`.
        Err(message) => Err(std::io::Error::other(message)),
    });
    let mut r = Response::new(Body::from_stream(lines));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(r)
}

/// Write the raw body to the process's stdin, as it arrives (any size); `eof=true` closes stdin
/// after it.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/stdin", tag = "processes",
    params(("ns" = String, Path), ("id" = String, Path), ("pid" = String, Path), ProcessStdinParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = StdinResult), ConflictErrors))]
pub async fn stdin(
    ctx: Ctx,
    PathParams((ns, id, pid)): PathParams<(String, String, String)>,
    QueryParams(params): QueryParams<ProcessStdinParams>,
    body: Body,
) -> ApiResult<Json<StdinResult>> {
    ctx.authorize(Action::SandboxExec, &Target::sandbox(&ns, &id))?;
    load_running(&ctx, &ns, &id).await?;
    check_id(&pid)?;
    let eof = params.eof.unwrap_or(false);
    // The body itself never goes to the audit log: only its size and whether stdin was closed.
    ctx.audit_detail("process", pid.clone());
    ctx.audit_detail("eof", eof);
    let _stream = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Upload)?;
    // The body goes to the process as it arrives, a few chunks at a time.
    let (tx, rx) = tokio::sync::mpsc::channel(crate::limits::UPLOAD_QUEUE);
    let write = processes::stdin(&ctx.state, &id, &pid, rx, eof);
    let (received, written) = tokio::join!(crate::limits::pump_body(body, tx, u64::MAX), write);
    received.map_err(|_| ApiError::Invalid("body: could not be read to the end".into()))?;
    let bytes = written?;
    ctx.audit_detail("bytes", bytes);
    Ok(Json(StdinResult { bytes }))
}

/// Send a signal to the process: `{"signal": "SIGTERM"}` (or `TERM`, or `15`).
#[utoipa::path(post, path = "/v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/signal", tag = "processes",
    params(("ns" = String, Path), ("id" = String, Path), ("pid" = String, Path)), request_body = SignalRequest,
    responses((status = 204, description = "Sent"), ConflictErrors))]
pub async fn signal(
    ctx: Ctx,
    PathParams((ns, id, pid)): PathParams<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    ctx.authorize(Action::SandboxExec, &Target::sandbox(&ns, &id))?;
    let req: SignalRequest = json(&headers, &body)?;
    let number = processes::signal_number(&req.signal)?;
    ctx.audit_detail("process", pid.clone());
    ctx.audit_detail("signal", number);
    load_running(&ctx, &ns, &id).await?;
    check_id(&pid)?;
    processes::signal(&ctx.state, &id, &pid, number).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set the size of the process's terminal: `{"rows", "cols"}`.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/resize", tag = "processes",
    params(("ns" = String, Path), ("id" = String, Path), ("pid" = String, Path)), request_body = TtySize,
    responses((status = 204, description = "Resized"), ConflictErrors))]
pub async fn resize(
    ctx: Ctx,
    PathParams((ns, id, pid)): PathParams<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    ctx.authorize(Action::SandboxExec, &Target::sandbox(&ns, &id))?;
    let size: SizeRequest = json(&headers, &body)?;
    let size = check_size("", size.rows, size.cols)?;
    ctx.audit_detail("process", pid.clone());
    load_running(&ctx, &ns, &id).await?;
    check_id(&pid)?;
    processes::resize(&ctx.state, &id, &pid, size).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Attach to the process over a WebSocket: binary frames from the client are its stdin, binary
/// frames from the server its output (from `after` on, default the start); text frames are JSON
/// `AttachControl` messages: `resize` and `eof` in, `exit` (then the close) out. Closing the
/// socket without `eof` leaves the process running with its stdin open. A client that cannot
/// send `Authorization` (a browser) offers the subprotocols `bulkhead` and
/// `base64url.bearer.bulkhead.<token in unpadded base64url>`, and is answered `bulkhead`.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/sandboxes/{id}/processes/{pid}/attach", tag = "processes",
    params(("ns" = String, Path), ("id" = String, Path), ("pid" = String, Path), ProcessOutputParams),
    responses((status = 101, description = "Switching to the WebSocket protocol"), ConflictErrors))]
pub async fn attach(
    ctx: Ctx,
    PathParams((ns, id, pid)): PathParams<(String, String, String)>,
    QueryParams(params): QueryParams<ProcessOutputParams>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    ctx.authorize(Action::SandboxExec, &Target::sandbox(&ns, &id))?;
    load_running(&ctx, &ns, &id).await?;
    check_id(&pid)?;
    ctx.audit_detail("process", pid.clone());
    // A missing process is a plain 404, before the upgrade.
    processes::get(&ctx.state, &id, &pid).await?;
    // Only now is a request that cannot upgrade refused: a sandbox the caller may not see is a
    // 404 whatever its headers.
    let upgrade = upgrade.map_err(|r| ApiError::Invalid(format!("attach: {}", r.body_text())))?;
    // A client that sent its token as a subprotocol (a browser) offered `bulkhead` beside it and
    // must be answered with that; the token's own subprotocol is never echoed.
    let upgrade = upgrade.protocols([crate::auth::WS_PROTOCOL]);
    let guard = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Download)?;
    let events = processes::output(&ctx.state, &id, &pid, params.after.unwrap_or(0)).await?;
    let state = ctx.state.clone();
    Ok(upgrade.on_upgrade(move |socket| async move {
        let _guard = guard;
        attached(state, socket, id, pid, events).await;
    }))
}

/// A client's control message, or why it is not one (at most 200 characters of it: the
/// message may echo what was sent).
fn control(text: &str) -> Result<ClientControl, String> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = if path == "." || path.is_empty() {
            format!("control message: {}", e.into_inner())
        } else {
            format!("control message: {path}: {}", e.into_inner())
        };
        message.chars().take(200).collect()
    })
}

/// Runs an attachment until the process exits or the client goes.
async fn attached(
    state: crate::state::AppState,
    socket: WebSocket,
    sandbox: String,
    pid: String,
    mut events: crate::service::records::ProcessOutput,
) {
    let (mut sink, mut source) = socket.split();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(crate::limits::UPLOAD_QUEUE);
    // stdin is written by its own task for as long as the attachment lasts; `eof` from the
    // client ends it with stdin closed, the client's going away with stdin left open.
    let writer = {
        let (state, sandbox, pid) = (state.clone(), sandbox.clone(), pid.clone());
        tokio::spawn(async move {
            if let Err(e) = processes::stdin(&state, &sandbox, &pid, rx, true).await {
                tracing::debug!(error = %e, "attached stdin ended");
            }
        })
    };
    let mut tx = Some(tx);
    loop {
        tokio::select! {
            event = events.next() => {
                let frame = match event {
                    Some(Ok(RtEvent::Output { data, .. })) => Message::Binary(data.into()),
                    Some(Ok(RtEvent::Exit(info))) => {
                        let exit = AttachControl::Exit {
                            exit_code: exit_code(&info),
                            signal: info.signal,
                            timed_out: info.timed_out,
                        };
                        let _ = sink.send(Message::Text(serde_json::to_string(&exit).unwrap_or_default().into())).await;
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                    Some(Err(e)) => {
                        let error = AttachControl::Error { message: ApiError::from(e).to_string() };
                        let _ = sink.send(Message::Text(serde_json::to_string(&error).unwrap_or_default().into())).await;
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                    None => break,
                };
                if sink.send(frame).await.is_err() {
                    break;
                }
            }
            message = source.next() => {
                match message {
                    Some(Ok(Message::Binary(data))) => {
                        if let Some(t) = &tx {
                            if t.send(Ok(Vec::from(data))).await.is_err() {
                                tx = None;
                            }
                        }
                    }
                    Some(Ok(Message::Text(text))) => match control(text.as_str()) {
                        Ok(ClientControl::Resize { rows, cols }) => match check_size("", rows, cols) {
                            Ok(size) => {
                                // A process that just ended may miss its last resize: its exit follows.
                                if let Err(e) = processes::resize(&state, &sandbox, &pid, size).await {
                                    tracing::debug!(error = %e, "attached resize failed");
                                }
                            }
                            // A size out of bounds is refused like `POST .../resize`, naming the field;
                            // the attachment goes on.
                            Err(e) => {
                                let error = AttachControl::Error { message: e.to_string() };
                                let _ = sink.send(Message::Text(serde_json::to_string(&error).unwrap_or_default().into())).await;
                            }
                        },
                        // Dropping the sender ends the writer with stdin closed.
                        Ok(ClientControl::Eof) => tx = None,
                        Err(message) => {
                            let error = AttachControl::Error { message };
                            let _ = sink.send(Message::Text(serde_json::to_string(&error).unwrap_or_default().into())).await;
                        }
                    },
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
    }
    // Gone without `eof`: the writer is abandoned and stdin stays open.
    if let Some(t) = tx.take() {
        let _ = t.send(Err(std::io::Error::other("the attachment ended"))).await;
    }
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_out_of_range_name_their_field() {
        assert!(matches!(check_size("", 1, 1000), Ok(RtTty { rows: 1, cols: 1000 })));
        for (rows, cols, field) in [(0, 80, "rows:"), (24, 70000, "cols:"), (-1, 1, "rows:"), (1, 1001, "cols:")] {
            let e = check_size("", rows, cols).expect_err("out of range").to_string();
            assert!(e.starts_with(field), "{rows}x{cols}: {e}");
        }
        let e = check_tty(TtySize { rows: 24, cols: 0 }).expect_err("0 cols").to_string();
        assert!(e.starts_with("tty.cols:"), "{e}");
    }

    #[test]
    fn control_messages_read_wide_and_refuse_what_is_not_one() {
        assert!(matches!(
            control(r#"{"type":"resize","rows":0,"cols":70000}"#),
            Ok(ClientControl::Resize { rows: 0, cols: 70000 })
        ));
        assert!(matches!(control(r#"{"type":"eof"}"#), Ok(ClientControl::Eof)));
        for bad in [r#"{"type":"exit","exit_code":0}"#, r#"{"type":"resize","rows":1}"#, "[]", "not json"] {
            let e = control(bad).expect_err(bad);
            assert!(e.starts_with("control message:"), "{bad}: {e}");
        }
        let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(5000));
        assert!(control(&long).expect_err("long").chars().count() <= 200);
    }

    #[test]
    fn ids_that_are_not_process_ids_are_404s_echoing_little() {
        assert!(check_id(&format!("prc_{}", "0".repeat(32))).is_ok());
        for bad in ["prc_x".to_owned(), "x".repeat(5000), "sbx_00000000000000000000000000000000".to_owned()] {
            let e = check_id(&bad).expect_err("not an id");
            assert!(matches!(e, ApiError::NotFound(_)), "{e:?}");
            assert!(e.to_string().len() < 100, "{e}");
        }
    }

    fn out(seq: u64) -> ProcessEvent {
        ProcessEvent::Output { seq, stream: OutputStream::Stdout, data: String::new() }
    }

    #[test]
    fn a_gap_is_marked_before_the_first_event_kept() {
        // Resumed after 5 when the oldest kept is 9: 6 to 8 were dropped.
        let mut next = 6;
        assert!(matches!(gap_before(&mut next, &out(9)), Some(ProcessEvent::Gap { from: 6, to: 8 })));
        assert!(gap_before(&mut next, &out(10)).is_none());
        // Contiguous from the start: no gap, and none before the exit.
        let mut next = 1;
        assert!(gap_before(&mut next, &out(1)).is_none());
        assert!(gap_before(&mut next, &out(2)).is_none());
        let exit = ProcessEvent::Exit { exit_code: 0, signal: None, timed_out: false };
        assert!(gap_before(&mut next, &exit).is_none());
        assert_eq!(next, 3);
    }
}
