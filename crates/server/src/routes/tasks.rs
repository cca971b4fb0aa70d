//! Tasks: create one (an agent version's command in a sandbox with its code at `/agent` and the
//! filesystem at `/workspace`), list and read them, send them events (a message becomes a
//! prompt; a permission answer; a cancel of the prompt in flight), read their messages (a page,
//! or server-sent events resumable with `Last-Event-ID`), keep their state document (an ETag
//! and conditional writes), and cancel them. The agent is driven by `service::tasks`.
//!
//! The workspace's mode is decided once, at create, by the one decision function: read-write
//! when the agent needs it and the principal may mount the filesystem read-write, else
//! read-only when it may mount it read-only (the answer's `filesystem.mode` says which, and
//! `authz/explain` shows why). An idle task resumes on its next event with that same mode.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bulkhead_api::{
    CreateSandbox, CreateTask, ErrorBody, EventAccepted, Page, SandboxFilesystem, Task, TaskEvent, TaskMessage,
    TaskUsage,
};
use bulkhead_core::ids::{self, prefix};
use bulkhead_core::{Action, Decision, Scope, Target};
use serde_json::{json, Value};

use super::agents::load_agent;
use super::answers::{CheckedErrors, ConflictErrors, GuardedErrors};
use super::load_namespace;
use super::sandboxes::{create_sandbox, wants, TaskBoot};
use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json, next_cursor, Listed, PageParams, Paging, PathParams, QueryParams};
use crate::idempotency::{self, Created};
use crate::service::records::{AgentRow, StateWrite, TaskRow};
use crate::service::{agents, tasks};
use crate::time::{now_ms, rfc3339};

/// The longest a pending permission request waits by default, in seconds.
const DEFAULT_PERMISSION_TIMEOUT: u64 = 600;
/// The largest state document, in bytes.
const MAX_STATE_BYTES: usize = 1 << 20;

pub(crate) fn task_out(row: &TaskRow, agent: &str) -> Task {
    Task {
        id: row.id.clone(),
        namespace: row.namespace.clone(),
        agent: agent.to_owned(),
        version: row.version_id.clone(),
        status: row.status.clone(),
        reason: row.reason.clone(),
        sandbox: row.sandbox_id.clone(),
        filesystem: row.filesystem.as_ref().map(|(id, mode)| SandboxFilesystem { id: id.clone(), mode: mode.clone() }),
        permissions: row.permissions.clone(),
        usage: TaskUsage { input_tokens: row.input_tokens, output_tokens: row.output_tokens, sandbox_seconds: 0.0 },
        last_message: row.last_seq,
        created_at: rfc3339(row.created_at_ms),
        updated_at: rfc3339(row.updated_at_ms),
        ended_at: row.ended_at_ms.map(rfc3339),
    }
}

/// A task as decisions see it: in the scope of the filesystem it works on.
pub fn task_target(row: &TaskRow) -> Target {
    Target::Task {
        namespace: row.namespace.clone(),
        id: row.id.clone(),
        scope: Scope::of_sandbox(row.filesystem.is_some(), row.project.as_deref()),
    }
}

fn task_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("task {:?} not found", agents::shorten(id, 80)))
}

/// The task a request names, authorized for the request's action once its scope is known.
async fn load_task(ctx: &Ctx, ns: &str, id: &str) -> ApiResult<TaskRow> {
    load_namespace(ctx, ns).await?;
    if !ids::is_id(prefix::TASK, id) {
        return Err(task_not_found(id));
    }
    let row = ctx.state.store.get_task(ns, id).await?.ok_or_else(|| task_not_found(id))?;
    ctx.reauthorize(&task_target(&row))?;
    ctx.audit_resource(format!("task:{}", row.id));
    Ok(row)
}

async fn agent_name(ctx: &Ctx, row: &TaskRow) -> String {
    match agents::find(&ctx.state, &row.namespace, &row.agent_id).await {
        Ok(Some(a)) => a.name,
        _ => row.agent_id.clone(),
    }
}

/// Create a task: `{"agent", "version"?, "filesystem"?: {"id", "mode"?}, "message"?,
/// "permissions"?: "policy"|"ask", "permission_timeout_seconds"?}`. Its sandbox starts from the
/// version's image, with the version's resources, egress and secrets (each checked as a sandbox
/// create checks them), its code read-only at `/agent`, the filesystem at `/workspace` and a
/// workload token whose principal is the sandbox with this task as its `task`. The agent is
/// then initialized over ACP; the task is `starting` until its session is open.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/tasks", tag = "tasks", params(("ns" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create safe")),
    request_body = CreateTask,
    responses((status = 201, body = Task),
        (status = 409, description = "The agent has no deployed version, or the Idempotency-Key is in use", body = ErrorBody),
        (status = 429, description = "A namespace quota would be exceeded", body = ErrorBody), CheckedErrors))]
pub async fn create(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    ctx.authorize(Action::TaskCreate, &Target::namespace(&ns))?;
    idempotency::create_in(ctx, ns, headers, body, idempotency::replay_response, |ctx, ns, headers, body| async move {
        let result = create_task(&ctx, &ns, &headers, &body).await;
        super::note_rejection(&ctx.state, &ns, result).await
    })
    .await
}

async fn create_task(ctx: &Ctx, ns: &str, headers: &HeaderMap, body: &[u8]) -> ApiResult<Created> {
    let req: CreateTask = json(headers, body)?;
    // A missing namespace is a 404; a missing agent, a field of the body.
    load_namespace(ctx, ns).await?;
    let agent = load_agent(ctx, ns, &req.agent).await.map_err(|e| match e {
        ApiError::NotFound(_) => {
            ApiError::Invalid(format!("agent: namespace {ns} has no agent {:?}", agents::shorten(&req.agent, 80)))
        }
        other => other,
    })?;
    ctx.require(Action::TaskCreate, &Target::agent(ns, &agent.name))?;
    let version_id = match &req.version {
        Some(v) => v.clone(),
        None => agent.active().map(str::to_owned).ok_or_else(|| {
            ApiError::Conflict(format!("agent {} has no deployed version: deploy one, or name a version", agent.name))
        })?,
    };
    let version = agents::version_of(&ctx.state, &agent, &version_id).await.map_err(|_| {
        ApiError::Invalid(format!(
            "version: agent {} has no version {:?}",
            agent.name,
            agents::shorten(&version_id, 80)
        ))
    })?;
    let manifest = agents::manifest_of(&version)?;
    let permissions = req.permissions.clone().unwrap_or_else(|| "policy".to_owned());
    if permissions != "policy" && permissions != "ask" {
        return Err(ApiError::Invalid("permissions: \"policy\" or \"ask\"".into()));
    }
    let permission_timeout = req.permission_timeout_seconds.unwrap_or(DEFAULT_PERMISSION_TIMEOUT);
    if !(1..=86_400).contains(&permission_timeout) {
        return Err(ApiError::Invalid("permission_timeout_seconds: 1 to 86400".into()));
    }
    let first = req.message.as_ref().map(|m| tasks::prompt_of("message", m)).transpose()?;
    // The workspace's mode: what the agent needs, as far as the principal may mount it.
    let filesystem = match &req.filesystem {
        None => None,
        Some(f) => {
            if let Some(m) = &f.mode {
                if m != "rw" && m != "ro" {
                    return Err(ApiError::Invalid("filesystem.mode: \"rw\" or \"ro\"".into()));
                }
            }
            let row = super::filesystems::find_filesystem(ctx, ns, &f.id).await?;
            let target = super::filesystems::filesystem_target(&row);
            let needs = f.mode.clone().or_else(|| manifest.filesystem_mode.clone()).unwrap_or_else(|| "rw".into());
            let mode = if needs == "ro" {
                ctx.require(Action::FilesystemMountRo, &target)?;
                "ro"
            } else if f.mode.is_some() {
                // Asked for explicitly: granted or refused, never lowered.
                ctx.require(Action::FilesystemMountRw, &target)?;
                "rw"
            } else if ctx.decide(Action::FilesystemMountRw, &target) == Decision::Allow {
                "rw"
            } else {
                ctx.require(Action::FilesystemMountRo, &target)?;
                ctx.audit_detail("filesystem_lowered", "ro: the principal may not mount it read-write");
                "ro"
            };
            ctx.audit_detail("filesystem", format!("{}:{mode}", row.id));
            Some((row.id.clone(), mode.to_owned(), row.project_id.clone()))
        }
    };
    let id = ids::new_id(prefix::TASK);
    let resources = manifest.resources.clone().unwrap_or_default();
    let mut env = manifest.env.clone().unwrap_or_default();
    env.insert("BULKHEAD_TASK_ID".into(), id.clone());
    env.insert("BULKHEAD_NAMESPACE".into(), ns.to_owned());
    let sandbox = CreateSandbox {
        cpu_millis: resources.cpu_millis,
        memory_bytes: resources.memory_bytes,
        ttl_seconds: resources.ttl_seconds,
        env: Some(env),
        filesystem: filesystem.as_ref().map(|(id, mode, _)| SandboxFilesystem { id: id.clone(), mode: mode.clone() }),
        secrets: manifest.secrets.clone(),
        egress: manifest.egress.clone(),
        image: manifest.image.clone(),
        disk_bytes: resources.disk_bytes,
    };
    let plan = json!({
        "sandbox": sandbox,
        "permission_timeout_seconds": permission_timeout,
    });
    let now = now_ms();
    let row = TaskRow {
        id: id.clone(),
        namespace: ns.to_owned(),
        agent_id: agent.id.clone(),
        version_id: version.id.clone(),
        filesystem: filesystem.as_ref().map(|(id, mode, _)| (id.clone(), mode.clone())),
        project: filesystem.as_ref().and_then(|(_, _, p)| p.clone()),
        permissions,
        status: "starting".into(),
        reason: None,
        sandbox_id: None,
        session_id: None,
        plan: plan.to_string(),
        creator: ctx.principal.audit_name(),
        created_at_ms: now,
        updated_at_ms: now,
        ended_at_ms: None,
        input_tokens: 0,
        output_tokens: 0,
        last_seq: 0,
    };
    ctx.state.store.insert_task(&row).await?;
    ctx.audit_resource(format!("task:{id}"));
    ctx.audit_detail("agent", agent.name.clone());
    ctx.audit_detail("version", version.id.clone());
    let mut prompts = Vec::new();
    if let Some(blocks) = first {
        ctx.audit_detail("content_sha256", sha256_hex(&serde_json::to_vec(&blocks).unwrap_or_default()));
        tasks::record(&ctx.state, &id, vec![("user_message".into(), json!({"content": blocks}))]).await?;
        prompts.push(blocks);
    }
    // A cancel waits until the task's agent runs (or never will).
    let started = {
        let _starting = ctx.state.sandbox_locks.lock(&id).await;
        start(ctx, &row, &agent, prompts).await
    };
    let row = match started {
        Ok(row) => row,
        Err(e) => {
            // Refused or failed before it ran: the caller got no task, and none is kept.
            let _ = tasks::forget(&ctx.state, ns, &id).await;
            return Err(e);
        }
    };
    Created::json(StatusCode::CREATED, &task_out(&row, &agent.name))
}

/// Starts a sandbox for `task` from its plan and launches its agent's driver; a start that
/// fails fails the task (with the reason) and answers the error.
async fn start(ctx: &Ctx, task: &TaskRow, agent: &AgentRow, prompts: Vec<Vec<Value>>) -> ApiResult<TaskRow> {
    let version = agents::version_of(&ctx.state, agent, &task.version_id).await?;
    let manifest = agents::manifest_of(&version)?;
    let plan: Value = serde_json::from_str(&task.plan).map_err(|e| ApiError::Internal(format!("task plan: {e}")))?;
    let request: CreateSandbox =
        serde_json::from_value(plan["sandbox"].clone()).map_err(|e| ApiError::Internal(format!("task plan: {e}")))?;
    let permission_timeout = plan["permission_timeout_seconds"].as_u64().unwrap_or(DEFAULT_PERMISSION_TIMEOUT);
    let boot =
        TaskBoot { task: task.id.clone(), code: agents::bundle_dir(&ctx.state, &task.namespace, &version.digest) };
    let sandbox = match create_sandbox(ctx, &task.namespace, &request, Some(boot)).await {
        Ok(s) => s,
        Err(e) => {
            // A resume that cannot start leaves the task idle, for a later event to retry.
            let reason = format!("its sandbox did not start: {e}");
            let _ = tasks::set_status(&ctx.state, &task.id, "idle", Some(reason)).await;
            return Err(e);
        }
    };
    let row = tasks::attach_sandbox(&ctx.state, &task.id, &sandbox.id).await?;
    if row.ended() {
        // Cancelled while its sandbox started: the sandbox goes, and no agent runs.
        tasks::drop_sandbox(&ctx.state, &sandbox).await;
        return Ok(row);
    }
    tasks::launch(
        &ctx.state,
        tasks::Launch {
            task: row.clone(),
            sandbox,
            command: manifest.command.clone(),
            idle_timeout: Duration::from_secs(
                manifest.idle_timeout_seconds.unwrap_or(agents::DEFAULT_IDLE_TIMEOUT_SECONDS),
            ),
            permission_timeout: Duration::from_secs(permission_timeout),
            prompts,
        },
    );
    Ok(row)
}

/// The namespace's tasks, by id; `agent` keeps one agent's.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/tasks", tag = "tasks",
    params(("ns" = String, Path), TaskListParams),
    responses((status = 200, body = Page<Task>), CheckedErrors))]
pub async fn list(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    QueryParams(filter): QueryParams<TaskListParams>,
) -> ApiResult<Json<Page<Task>>> {
    ctx.authorize(Action::TaskList, &Target::namespace(&ns))?;
    let page = PageParams { limit: filter.limit, cursor: filter.cursor.clone() };
    let limit = page.limit()?;
    let after = page.after(TaskRow::CURSOR)?;
    load_namespace(&ctx, &ns).await?;
    let agent = match &filter.agent {
        Some(a) => Some(agents::find(&ctx.state, &ns, a).await?.ok_or_else(|| {
            ApiError::Invalid(format!("agent: namespace {ns} has no agent {:?}", agents::shorten(a, 80)))
        })?),
        None => None,
    };
    let rows = ctx.state.store.list_tasks(&ns, agent.as_ref().map(|a| a.id.as_str()), after.as_deref(), limit).await?;
    let cursor = next_cursor(&rows, limit, TaskRow::CURSOR, TaskRow::position);
    let mut names = std::collections::HashMap::new();
    let mut items = Vec::new();
    for r in rows.iter().filter(|r| ctx.sees(Action::TaskList, &task_target(r))) {
        if !names.contains_key(&r.agent_id) {
            let name = agent_name(&ctx, r).await;
            names.insert(r.agent_id.clone(), name);
        }
        items.push(task_out(r, &names[&r.agent_id]));
    }
    Ok(Json(Page { items, next_cursor: cursor }))
}

/// Filters of a task list.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TaskListParams {
    /// Only this agent's tasks (a name or an `agt_…` id).
    pub agent: Option<String>,
    /// 1 to 1000; default 100.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One task.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/tasks/{id}", tag = "tasks",
    params(("ns" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Task), GuardedErrors))]
pub async fn get(ctx: Ctx, PathParams((ns, id)): PathParams<(String, String)>) -> ApiResult<Json<Task>> {
    ctx.authorize(Action::TaskGet, &Target::task(&ns, &id))?;
    let row = load_task(&ctx, &ns, &id).await?;
    let name = agent_name(&ctx, &row).await;
    let mut out = task_out(&row, &name);
    out.usage.sandbox_seconds = ctx.state.store.task_sandbox_ms(&id, now_ms()).await? as f64 / 1000.0;
    Ok(Json(out))
}

/// Send an event: `{"type": "message", "content"}` (a string, or an array of ACP content
/// blocks) becomes a prompt, queued behind the one in flight and resuming an idle task;
/// `{"type": "permission", "request", "outcome": "allow_once"|"allow_always"|"reject"}`
/// answers a pending permission request (a `forbid` of the namespace's policies was applied
/// before it was asked); `{"type": "cancel"}` cancels the prompt in flight. 409 for a task that
/// has ended, or an answer to a request that no longer waits.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/tasks/{id}/events", tag = "tasks",
    params(("ns" = String, Path), ("id" = String, Path)),
    request_body = TaskEvent,
    responses((status = 202, body = EventAccepted), ConflictErrors))]
pub async fn event(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<EventAccepted>)> {
    ctx.authorize(Action::TaskEvent, &Target::task(&ns, &id))?;
    let req: TaskEvent = json(&headers, &body)?;
    let row = load_task(&ctx, &ns, &id).await?;
    if row.ended() {
        return Err(ApiError::Conflict(format!("task {id} has {}", row.status)));
    }
    ctx.audit_detail("type", req.kind.clone());
    enum Wanted {
        Prompt(Vec<Value>),
        Permission(String, String),
        Cancel,
    }
    let wanted = match req.kind.as_str() {
        "message" => {
            let content =
                req.content.as_ref().ok_or_else(|| ApiError::Invalid("content: required for a message".into()))?;
            let blocks = tasks::prompt_of("content", content)?;
            // Audited as a hash: the conversation is the task's, not the audit chain's.
            ctx.audit_detail("content_sha256", sha256_hex(&serde_json::to_vec(&blocks).unwrap_or_default()));
            Wanted::Prompt(blocks)
        }
        "permission" => {
            let request = req
                .request
                .clone()
                .ok_or_else(|| ApiError::Invalid("request: required for a permission answer".into()))?;
            let outcome = req
                .outcome
                .clone()
                .ok_or_else(|| ApiError::Invalid("outcome: required for a permission answer".into()))?;
            if !matches!(outcome.as_str(), "allow_once" | "allow_always" | "reject") {
                return Err(ApiError::Invalid("outcome: \"allow_once\", \"allow_always\" or \"reject\"".into()));
            }
            ctx.audit_detail("request", agents::shorten(&request, 80));
            ctx.audit_detail("outcome", outcome.clone());
            Wanted::Permission(request, outcome)
        }
        "cancel" => Wanted::Cancel,
        other => {
            return Err(ApiError::Invalid(format!(
                "type: {:?} is not an event: \"message\", \"permission\" or \"cancel\"",
                agents::shorten(other, 40)
            )))
        }
    };
    if req.kind != "message" && req.content.is_some() {
        return Err(ApiError::Invalid(format!("content: only a message has content, not a {}", req.kind)));
    }
    if req.kind != "permission" && (req.request.is_some() || req.outcome.is_some()) {
        return Err(ApiError::Invalid(format!(
            "request, outcome: only a permission answer has them, not a {}",
            req.kind
        )));
    }
    // One resume at a time: two messages to an idle task start one sandbox.
    let _resuming = ctx.state.sandbox_locks.lock(&id).await;
    let driver = ctx.state.tasks.driver(&id);
    let gone = || ApiError::Conflict(format!("task {id} is stopping; retry"));
    let (seq, status) = match (driver, wanted) {
        (Some(tx), Wanted::Prompt(blocks)) => {
            let (reply, answer) = tokio::sync::oneshot::channel();
            tx.send(tasks::Command::Prompt { blocks, reply }).await.map_err(|_| gone())?;
            match answer.await.map_err(|_| gone())? {
                Ok(seq) => (seq, row.status.clone()),
                Err(why) => {
                    return Err(ApiError::RateLimited {
                        message: format!("task {id}: {why}; send this one once the agent has answered"),
                        retry_after_seconds: 1,
                    })
                }
            }
        }
        (Some(tx), Wanted::Permission(request, outcome)) => {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let shown = agents::shorten(&request, 80);
            tx.send(tasks::Command::Permission { request, outcome, reply }).await.map_err(|_| gone())?;
            if !answer.await.map_err(|_| gone())? {
                return Err(ApiError::Conflict(format!("task {id} has no permission request {shown:?} waiting")));
            }
            (row.last_seq, row.status.clone())
        }
        (Some(tx), Wanted::Cancel) => {
            let seq = tasks::record(&ctx.state, &id, vec![("cancel".to_owned(), json!({}))])
                .await?
                .last()
                .copied()
                .unwrap_or(0);
            tx.send(tasks::Command::CancelTurn).await.map_err(|_| gone())?;
            (seq, row.status.clone())
        }
        (None, Wanted::Prompt(blocks)) => {
            // An idle task (or one whose agent just went idle) resumes with this prompt, once
            // the driver that went idle has let its sandbox go.
            let row = ctx.state.store.get_task(&ns, &id).await?.ok_or_else(|| task_not_found(&id))?;
            if row.ended() {
                return Err(ApiError::Conflict(format!("task {id} has {}", row.status)));
            }
            let agent = agents::find(&ctx.state, &ns, &row.agent_id)
                .await?
                .ok_or_else(|| ApiError::Conflict(format!("task {id}'s agent is gone")))?;
            let seq = tasks::record(&ctx.state, &id, vec![("user_message".to_owned(), json!({"content": blocks}))])
                .await?
                .last()
                .copied()
                .unwrap_or(0);
            tasks::set_status(&ctx.state, &id, "starting", None).await?;
            (seq, start(&ctx, &row, &agent, vec![blocks]).await?.status)
        }
        (None, Wanted::Permission(request, _)) => {
            return Err(ApiError::Conflict(format!(
                "task {id} has no permission request {:?} waiting: it is {}",
                agents::shorten(&request, 80),
                row.status
            )))
        }
        (None, Wanted::Cancel) => {
            return Err(ApiError::Conflict(format!("task {id} is {}: no prompt is in flight", row.status)))
        }
    };
    Ok((StatusCode::ACCEPTED, Json(EventAccepted { seq, status })))
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    bulkhead_core::ids::hex(&Sha256::digest(data))
}

/// Where a message read starts.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MessageParams {
    /// Messages after this sequence number (default 0: from the first).
    pub after: Option<u64>,
    /// A page's `next_cursor`: the same as `after`.
    pub cursor: Option<String>,
    /// At most this many in a page (1 to 1000, default 100); ignored by a stream.
    pub limit: Option<u32>,
}

/// The task's messages after `after`: a page (`{"items", "next_cursor"}` where the cursor is
/// the last `seq`), or with `Accept: text/event-stream` a live stream of server-sent events
/// whose `id` is each message's `seq` (resume with `Last-Event-ID`: no gap, no duplicate, across
/// a server restart too), ending with an `end` event once the task has ended and every message
/// was sent.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/tasks/{id}/messages", tag = "tasks",
    params(("ns" = String, Path), ("id" = String, Path), MessageParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume server-sent events after this seq")),
    responses((status = 200, description = "A page of messages; with `Accept: text/event-stream`, server-sent events \
            whose data is a TaskMessage and whose id its seq, live",
            content((Page<TaskMessage> = "application/json"), (TaskMessage = "text/event-stream"))), CheckedErrors))]
pub async fn messages(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    QueryParams(params): QueryParams<MessageParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    ctx.authorize(Action::TaskGet, &Target::task(&ns, &id))?;
    let last_event = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::Invalid("Last-Event-ID: must be a seq".into()))?,
        ),
        None => None,
    };
    let cursor = match &params.cursor {
        Some(c) => Some(c.parse::<u64>().map_err(|_| ApiError::Invalid("cursor: not a cursor of this list".into()))?),
        None => None,
    };
    let after = last_event.or(params.after).or(cursor).unwrap_or(0);
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Invalid("limit: 1 to 1000".into()));
    }
    let row = load_task(&ctx, &ns, &id).await?;
    if !wants(&headers, "text/event-stream") {
        let rows = tasks::read_messages(&ctx.state, &id, after, limit).await?;
        let items: Vec<TaskMessage> = rows.iter().map(message_out).collect();
        // More may follow whenever the page is full or was cut by its byte budget.
        let more = match items.last() {
            Some(m) => m.seq < ctx.state.store.get_task(&ns, &id).await?.map_or(0, |t| t.last_seq),
            None => false,
        };
        let next_cursor = more.then(|| items.last().map(|m| m.seq.to_string())).flatten();
        return Ok(Json(Page { items, next_cursor }).into_response());
    }
    let guard = ctx.state.streams.acquire(&ctx.principal, &ns, crate::limits::Direction::Download)?;
    let follow = ctx.state.tasks.follow(&id, row.last_seq);
    let state = ctx.state.clone();
    let stream = futures_util::stream::unfold(
        (state, id, ns, after, follow, Vec::<TaskMessage>::new().into_iter(), false, guard),
        |(state, id, ns, mut after, mut follow, mut buffered, done, guard)| async move {
            loop {
                if let Some(m) = buffered.next() {
                    after = m.seq;
                    let data = serde_json::to_string(&m).unwrap_or_default();
                    let event = Event::default().id(m.seq.to_string()).event("message").data(data);
                    return Some((Ok::<_, Infallible>(event), (state, id, ns, after, follow, buffered, done, guard)));
                }
                if done {
                    return None;
                }
                match tasks::read_messages(&state, &id, after, 500).await {
                    Ok(rows) if !rows.is_empty() => {
                        buffered = rows.iter().map(message_out).collect::<Vec<_>>().into_iter();
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let event = Event::default().event("error").data(e.to_string());
                        return Some((Ok(event), (state, id, ns, after, follow, buffered, true, guard)));
                    }
                }
                // Nothing more now: the end, once the task has ended; else wait for the next.
                let ended =
                    matches!(state.store.get_task(&ns, &id).await, Ok(Some(t)) if t.ended() && t.last_seq <= after);
                if ended {
                    let event = Event::default().event("end").data("{}");
                    return Some((Ok(event), (state, id, ns, after, follow, buffered, true, guard)));
                }
                // Woken by a new message, or every few seconds to look again.
                let _ = tokio::time::timeout(Duration::from_secs(5), follow.changed()).await;
            }
        },
    );
    let mut r = Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

fn message_out(m: &crate::service::records::TaskMessageRow) -> TaskMessage {
    TaskMessage {
        seq: m.seq,
        kind: m.kind.clone(),
        created_at: rfc3339(m.created_at_ms),
        data: serde_json::from_str(&m.body).unwrap_or(Value::Null),
    }
}

/// The task's state document (`{}` until one is written), with its version as the ETag. The
/// task's own agent reads it with its workload token.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/tasks/{id}/state", tag = "tasks",
    params(("ns" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "The JSON document, with an ETag", body = Object), GuardedErrors))]
pub async fn get_state(ctx: Ctx, PathParams((ns, id)): PathParams<(String, String)>) -> ApiResult<Response> {
    ctx.authorize(Action::TaskStateRead, &Target::task(&ns, &id))?;
    load_task(&ctx, &ns, &id).await?;
    let (state, version) = ctx.state.store.task_state(&ns, &id).await?.ok_or_else(|| task_not_found(&id))?;
    let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], state).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    Ok(r)
}

/// Replace the task's state document (a JSON value of at most 1 MiB). With `If-Match: "<etag>"`
/// only over that version (412 otherwise); unconditional without, or with `If-Match: *`. Answers the new ETag.
#[utoipa::path(put, path = "/v1/namespaces/{ns}/tasks/{id}/state", tag = "tasks",
    params(("ns" = String, Path), ("id" = String, Path),
        ("If-Match" = Option<String>, Header, description = "Write only over this version")),
    request_body = Object,
    responses((status = 204, description = "Written; the new ETag in the header"),
        (status = 412, description = "The state is no longer at the If-Match version", body = ErrorBody), CheckedErrors))]
pub async fn put_state(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    ctx.authorize(Action::TaskStateWrite, &Target::task(&ns, &id))?;
    if body.len() > MAX_STATE_BYTES {
        return Err(ApiError::PayloadTooLarge(format!("body: the state is larger than {MAX_STATE_BYTES} bytes")));
    }
    let value: Value = json(&headers, &body)?;
    let expected = match headers.get(header::IF_MATCH) {
        // `*` matches whatever version there is: the state always exists.
        None => None,
        Some(v) if v.as_bytes().trim_ascii() == b"*" => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(|s| s.trim().trim_matches('"'))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| ApiError::Invalid("If-Match: not an ETag of this state".into()))?,
        ),
    };
    load_task(&ctx, &ns, &id).await?;
    match ctx.state.store.put_task_state(&ns, &id, &value.to_string(), expected).await? {
        StateWrite::Written(version) => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
                r.headers_mut().insert(header::ETAG, v);
            }
            Ok(r)
        }
        StateWrite::Stale(current) => Err(ApiError::PreconditionFailed(format!(
            "If-Match: the state is at version \"{current}\" now; read it and retry"
        ))),
        StateWrite::NotFound => Err(task_not_found(&id)),
    }
}

/// Cancel a task: the prompt in flight is cancelled, its agent stopped and its sandbox removed;
/// the task is `cancelled` (its messages, state and files kept). A task that has ended is left
/// as it is.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/tasks/{id}/cancel", tag = "tasks",
    params(("ns" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Task), GuardedErrors))]
pub async fn cancel(ctx: Ctx, PathParams((ns, id)): PathParams<(String, String)>) -> ApiResult<Json<Task>> {
    ctx.authorize(Action::TaskCancel, &Target::task(&ns, &id))?;
    let row = load_task(&ctx, &ns, &id).await?;
    let name = agent_name(&ctx, &row).await;
    if row.ended() {
        return Ok(Json(task_out(&row, &name)));
    }
    // Not while a resume starts its sandbox: that one sees the task cancelled and removes it.
    let guard = ctx.state.sandbox_locks.lock(&id).await;
    let driver = ctx.state.tasks.driver(&id);
    if driver.is_none() {
        tasks::set_status(&ctx.state, &id, "cancelled", None).await?;
    }
    drop(guard);
    match driver {
        Some(tx) if tx.send(tasks::Command::Stop).await.is_ok() => {
            // The driver removes the sandbox and records the end; wait for it, boundedly.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline {
                if let Some(r) = ctx.state.store.get_task(&ns, &id).await? {
                    if r.ended() {
                        return Ok(Json(task_out(&r, &name)));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        _ => {
            tasks::set_status(&ctx.state, &id, "cancelled", None).await?;
        }
    }
    let row = ctx.state.store.get_task(&ns, &id).await?.ok_or_else(|| task_not_found(&id))?;
    Ok(Json(task_out(&row, &name)))
}
