//! Tasks: one conversation of an agent version in a sandbox, driven over the Agent Client
//! Protocol (ACP, JSON-RPC 2.0 as newline-delimited JSON over the agent's stdin and stdout; see
//! <https://agentclientprotocol.com/protocol/overview>). Bulkhead is the client: it initializes
//! the agent, opens a session with `/workspace` as its working directory, turns each message
//! event into a `session/prompt`, records every `session/update` as the task's messages,
//! answers `session/request_permission` from the namespace's policies (or from a person, for a
//! task created with `"permissions": "ask"`), serves `fs/read_text_file` and
//! `fs/write_text_file` from the sandbox (confined to `/workspace`), and sends
//! `session/cancel` on a cancel event.
//!
//! One driver (a tokio task) per task with a sandbox holds the agent's process: it alone writes
//! its stdin and reads its stdout, so the protocol's state lives in one place. Events reach it
//! through [`TaskHub`]; messages are appended to the store (numbered there, in the transaction
//! that appends them) before anyone is told of them, so a stream resumed by sequence number
//! never sees a gap or a duplicate, across a restart too.
//!
//! A hostile agent fails its own task, with the reason recorded: bytes on stdout that are not
//! JSON-RPC, a line longer than [`MAX_LINE`], more than [`MAX_MESSAGES`] messages, output
//! faster than the supervisor retains it, no answer to `initialize` or `session/new` within
//! the server's answer timeout, answers to requests never sent, an exit. It never holds more
//! than one line of its output in the server's memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_core::{Action, Decision, Principal, Target};
use bulkhead_runtime::{OutputStreamKind, ProcessEvent, ProcessSpec};
use bulkhead_store::{SandboxRow, SandboxStatus, TaskRow, TaskUpdate};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::{ServiceError, ServiceResult};
use crate::auth::Decider;
use crate::state::AppState;
use crate::time::now_ms;

/// The longest line (one JSON-RPC message) an agent may write on stdout, in bytes.
pub const MAX_LINE: usize = 4 << 20;
/// The most messages a task records; an agent that floods past it fails its task.
pub const MAX_MESSAGES: u64 = 200_000;
/// The most bytes of messages a task records, together; past it the agent fails its task.
pub const MAX_TASK_MESSAGE_BYTES: u64 = 64 << 20;
/// The largest message kept whole, in bytes of JSON: a larger one (a tool call's output of
/// megabytes) is kept as its type, size and SHA-256.
pub const MAX_MESSAGE_BYTES: usize = 256 << 10;
/// How many bytes of messages a read gathers at most before it answers (a page is cut short).
pub const READ_BUDGET_BYTES: usize = 4 << 20;
/// What is kept of an agent's stderr for a failure's reason, in bytes.
const STDERR_TAIL: usize = 2048;
/// The ACP protocol version Bulkhead speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// Pending permission requests an agent may have at once.
const MAX_PENDING_PERMISSIONS: usize = 64;
/// How long a driver whose agent was killed waits to learn whether its sandbox was ended.
const SANDBOX_END_WAIT: Duration = Duration::from_secs(3);
/// Prompts that may wait behind the one in flight.
const MAX_QUEUED_PROMPTS: usize = 64;

/// What the API sends a task's driver.
#[derive(Debug)]
pub enum Command {
    /// A prompt (ACP content blocks). The driver records it as a `user_message` (so it comes
    /// before what the agent answers) and replies with its `seq`, or why it refused it (too
    /// many prompts wait).
    Prompt { blocks: Vec<Value>, reply: tokio::sync::oneshot::Sender<Result<u64, String>> },
    /// A person's answer to a pending permission request; the reply says whether it waited.
    Permission { request: String, outcome: String, reply: tokio::sync::oneshot::Sender<bool> },
    /// Cancel the prompt in flight (`session/cancel`).
    CancelTurn,
    /// End the task (`cancelled`, by the API).
    Stop,
}

/// The drivers of the tasks that have a sandbox, and the sequence numbers streams wait on.
#[derive(Default)]
pub struct TaskHub {
    drivers: Mutex<HashMap<String, mpsc::Sender<Command>>>,
    seqs: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl TaskHub {
    /// The driver of task `id`, when it runs.
    pub fn driver(&self, id: &str) -> Option<mpsc::Sender<Command>> {
        self.drivers.lock().unwrap_or_else(|e| e.into_inner()).get(id).filter(|tx| !tx.is_closed()).cloned()
    }

    /// Follows task `id`'s last sequence number, which starts at `last` when nobody follows yet.
    pub fn follow(&self, id: &str, last: u64) -> watch::Receiver<u64> {
        let mut seqs = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
        seqs.retain(|_, tx| tx.receiver_count() > 0);
        seqs.entry(id.to_owned()).or_insert_with(|| watch::channel(last).0).subscribe()
    }

    fn publish(&self, id: &str, seq: u64) {
        let seqs = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = seqs.get(id) {
            tx.send_if_modified(|s| {
                let newer = seq > *s;
                *s = (*s).max(seq);
                newer
            });
        }
    }

    fn register(&self, id: &str, tx: mpsc::Sender<Command>) {
        self.drivers.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), tx);
    }

    fn unregister(&self, id: &str) {
        self.drivers.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// Appends messages `(type, data)` to task `id` and wakes its streams; answers their sequence
/// numbers.
pub async fn record(state: &AppState, id: &str, messages: Vec<(String, Value)>) -> ServiceResult<Vec<u64>> {
    let rows: Vec<(String, String)> = messages.into_iter().map(|(k, v)| (k, v.to_string())).collect();
    let seqs = state.store.append_messages(id, &rows, now_ms()).await?;
    if let Some(last) = seqs.last() {
        state.tasks.publish(id, *last);
    }
    Ok(seqs)
}

/// Sets a task's status (with a `status` message), unless it has ended.
pub async fn set_status(state: &AppState, task: &str, status: &str, reason: Option<String>) -> ServiceResult<TaskRow> {
    let ended = matches!(status, "completed" | "failed" | "cancelled");
    let update = TaskUpdate {
        status: Some(status.to_owned()),
        reason: Some(reason.clone()),
        sandbox_id: (ended || status == "idle").then_some(None),
        ended_at_ms: ended.then(now_ms),
        at_ms: now_ms(),
        ..TaskUpdate::default()
    };
    let row = state
        .store
        .update_task(task, &update)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("task {task} not found")))?;
    if row.status == status {
        let mut data = json!({"status": status});
        if let Some(r) = &reason {
            data["reason"] = json!(r);
        }
        record(state, task, vec![("status".into(), data)]).await?;
    }
    Ok(row)
}

/// Forgets a task whose create failed (its messages with it).
pub async fn forget(state: &AppState, ns: &str, id: &str) -> ServiceResult<()> {
    state.store.delete_task(ns, id).await?;
    Ok(())
}

/// Removes a sandbox made for a task that ended meanwhile.
pub async fn drop_sandbox(state: &AppState, sandbox: &SandboxRow) {
    if let Err(e) = super::sandboxes::destroy(state, sandbox, SandboxStatus::Deleted, "task_ended").await {
        tracing::warn!(sandbox = %sandbox.id, error = %e, "a cancelled task's sandbox could not be removed");
    }
}

/// Records the sandbox a task's agent runs in now.
pub async fn attach_sandbox(state: &AppState, task: &str, sandbox: &str) -> ServiceResult<TaskRow> {
    let update = TaskUpdate { sandbox_id: Some(Some(sandbox.to_owned())), at_ms: now_ms(), ..TaskUpdate::default() };
    state
        .store
        .update_task(task, &update)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("task {task} not found")))
}

/// What a task's driver needs to start.
pub struct Launch {
    pub task: TaskRow,
    pub sandbox: SandboxRow,
    pub command: Vec<String>,
    pub idle_timeout: Duration,
    pub permission_timeout: Duration,
    /// Prompts to send once the session is open.
    pub prompts: Vec<Vec<Value>>,
}

/// Starts the driver of a task whose sandbox runs: it runs the agent's command and drives it
/// until the task ends or goes idle.
pub fn launch(state: &AppState, launch: Launch) {
    let (tx, rx) = mpsc::channel(256);
    state.tasks.register(&launch.task.id, tx);
    let state = state.clone();
    tokio::spawn(async move {
        let id = launch.task.id.clone();
        let sandbox = launch.sandbox.clone();
        let end = drive(&state, launch, rx).await;
        // An event that would resume the task waits until it has ended or gone idle.
        let _ending = state.sandbox_locks.lock(&id).await;
        finish(&state, &id, &sandbox, end).await;
        state.tasks.unregister(&id);
    });
}

/// How a driver ended.
#[derive(Debug)]
enum End {
    Idle,
    Completed,
    Cancelled,
    Failed(String),
}

async fn finish(state: &AppState, id: &str, sandbox: &SandboxRow, end: End) {
    let (status, reason, sandbox_reason) = match end {
        End::Idle => ("idle", None, "task_idle"),
        End::Completed => ("completed", None, "task_ended"),
        End::Cancelled => ("cancelled", None, "task_cancelled"),
        End::Failed(r) => ("failed", Some(r), "task_ended"),
    };
    if let Err(e) = super::sandboxes::destroy(state, sandbox, SandboxStatus::Deleted, sandbox_reason).await {
        tracing::warn!(task = id, sandbox = %sandbox.id, error = %e, "a task's sandbox could not be removed");
    }
    if let Err(e) = set_status(state, id, status, reason).await {
        tracing::warn!(task = id, error = %e, "a task's status could not be recorded");
    }
}

/// A request Bulkhead sent the agent, awaiting its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Initialize,
    NewSession,
    LoadSession,
    Prompt,
}

/// A permission request of the agent waiting for a person.
struct Waiting {
    rpc_id: Value,
    options: Vec<(String, String)>,
    kind: String,
    deadline: Instant,
}

struct Driver<'a> {
    state: &'a AppState,
    task: TaskRow,
    sandbox: SandboxRow,
    principal: Principal,
    stdin: mpsc::Sender<std::io::Result<Vec<u8>>>,
    next_id: u64,
    asked: HashMap<u64, Asked>,
    session: Option<String>,
    load_session: bool,
    in_turn: bool,
    queue: VecDeque<Vec<Value>>,
    waiting: HashMap<String, Waiting>,
    allowed_kinds: HashSet<String>,
    idle_timeout: Duration,
    permission_timeout: Duration,
    last_active: Instant,
    /// Until the session is open: when the agent must have answered.
    start_deadline: Option<Instant>,
    stopping: Option<End>,
    stderr: Vec<u8>,
    /// Messages decoded from the current output chunk, appended together.
    batch: Vec<(String, Value)>,
    messages: u64,
    /// Bytes of the task's messages so far.
    bytes: u64,
    /// The kind and title of each tool call the agent reported, by `toolCallId`: a permission
    /// request may name only the id (its `toolCall` is an update whose fields are optional).
    tool_calls: HashMap<String, (String, String)>,
    /// While `session/load` is answered: the agent replays the conversation, which the task's
    /// messages hold already.
    loading: bool,
}

async fn drive(state: &AppState, launch: Launch, mut commands: mpsc::Receiver<Command>) -> End {
    let Launch { task, sandbox, command, idle_timeout, permission_timeout, prompts } = launch;
    let cwd = if task.filesystem.is_some() { bulkhead_runtime::WORKSPACE_PATH.to_owned() } else { "/tmp".to_owned() };
    let spec = ProcessSpec {
        id: bulkhead_core::ids::new_id(bulkhead_core::ids::prefix::PROCESS),
        argv: command,
        env: Vec::new(),
        cwd: cwd.clone(),
        user: sandbox.image.as_ref().and_then(|i| i.user.clone()),
        tty: None,
        timeout_ms: None,
    };
    let process = spec.id.clone();
    if let Err(e) = super::processes::start(state, &task.namespace, &sandbox.id, spec).await {
        return End::Failed(format!("the agent's command did not start: {e}"));
    }
    let mut output = match state.runtime.process_output(&sandbox.id, &process, 0).await {
        Ok(o) => o,
        Err(e) => return End::Failed(format!("the agent's output could not be followed: {e}")),
    };
    let (stdin, stdin_rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(64);
    {
        let (state, sandbox, process) = (state.clone(), sandbox.id.clone(), process.clone());
        tokio::spawn(async move {
            if let Err(e) = state.runtime.process_stdin(&sandbox, &process, stdin_rx, true).await {
                tracing::debug!(sandbox, error = %e, "a task agent's stdin closed");
            }
        });
    }
    let principal = Principal::Sandbox {
        id: sandbox.id.clone(),
        namespace: task.namespace.clone(),
        creator: sandbox.creator.clone(),
        project: sandbox.project.clone(),
        task: Some(task.id.clone()),
    };
    let answer_timeout = state.config.tasks.answer_timeout;
    let bytes = match state.store.task_message_bytes(&task.id).await {
        Ok(b) => b,
        Err(e) => return End::Failed(format!("the task's messages could not be read: {e}")),
    };
    let mut d = Driver {
        state,
        task,
        sandbox,
        principal,
        stdin,
        next_id: 0,
        asked: HashMap::new(),
        session: None,
        load_session: false,
        in_turn: false,
        queue: prompts.into_iter().collect(),
        waiting: HashMap::new(),
        allowed_kinds: HashSet::new(),
        idle_timeout,
        permission_timeout,
        last_active: Instant::now(),
        start_deadline: Some(Instant::now() + answer_timeout),
        stopping: None,
        stderr: Vec::new(),
        batch: Vec::new(),
        messages: 0,
        bytes,
        tool_calls: HashMap::new(),
        loading: false,
    };
    let init = json!({
        "protocolVersion": PROTOCOL_VERSION,
        "clientCapabilities": {"fs": {"readTextFile": true, "writeTextFile": true}, "terminal": false},
        "clientInfo": {"name": "bulkhead", "version": env!("CARGO_PKG_VERSION")},
    });
    if let Err(end) = d.ask(Asked::Initialize, "initialize", init).await {
        return end;
    }
    let mut line: Vec<u8> = Vec::new();
    let mut last_seq = 0u64;
    let cwd_sent = cwd;
    loop {
        if let Some(end) = d.stopping.take() {
            return end;
        }
        let deadline = d.next_deadline();
        tokio::select! {
            event = output.next() => {
                // What has piled up behind the first event is taken too, and recorded together.
                let mut next = event;
                let mut taken = 0;
                loop {
                    let event = match next {
                        Some(Ok(e)) => e,
                        Some(Err(e)) => {
                            let _ = d.flush().await;
                            return d.sandbox_end_within(SANDBOX_END_WAIT).await.unwrap_or(End::Failed(format!("the agent's output broke off: {e}")));
                        }
                        None => {
                            let _ = d.flush().await;
                            return d.sandbox_end_within(SANDBOX_END_WAIT).await.unwrap_or(End::Failed("the agent's output ended without its exit".into()));
                        }
                    };
                    match event {
                        ProcessEvent::Output { seq, stream, data } => {
                            if last_seq != 0 && seq != last_seq + 1 || last_seq == 0 && seq != 1 {
                                let within = if line.is_empty() {
                                    String::new()
                                } else {
                                    format!(", within a line of {} bytes or more", line.len())
                                };
                                let _ = d.flush().await;
                                return End::Failed(format!(
                                    "the agent's output outran what is recorded: {} output events were lost{within}",
                                    seq.saturating_sub(last_seq + 1)
                                ));
                            }
                            last_seq = seq;
                            match stream {
                                OutputStreamKind::Stdout => {
                                    if let Err(end) = d.stdout(&mut line, &data, &cwd_sent).await {
                                        let _ = d.flush().await;
                                        return end;
                                    }
                                }
                                _ => d.keep_stderr(&data),
                            }
                        }
                        ProcessEvent::Exit(info) => {
                            let _ = d.flush().await;
                            if let Some(end) = d.stopping.take() {
                                return end;
                            }
                            // Killed with its sandbox (a TTL, a delete): the teardown records why just after.
                            let wait = if info.signal == Some(9) { SANDBOX_END_WAIT } else { Duration::ZERO };
                            if let Some(end) = d.sandbox_end_within(wait).await {
                                return end;
                            }
                            return match (info.exit_code, info.signal) {
                                (Some(0), _) => End::Completed,
                                (Some(code), _) => End::Failed(d.with_stderr(format!("the agent exited with status {code}"))),
                                (_, Some(sig)) => End::Failed(d.with_stderr(format!("the agent was killed by signal {sig}"))),
                                _ => End::Failed(d.with_stderr("the agent ended".into())),
                            };
                        }
                    }
                    taken += 1;
                    if d.stopping.is_some() {
                        break;
                    }
                    next = match output.try_next() {
                        Some(e) if taken < 1024 => Some(e),
                        Some(e) => {
                            // Enough for one transaction: the rest after it.
                            if let Err(end) = d.flush().await {
                                return end;
                            }
                            taken = 0;
                            Some(e)
                        }
                        None => break,
                    };
                }
                if let Err(end) = d.flush().await {
                    return end;
                }
            }
            command = commands.recv() => {
                let Some(command) = command else { return End::Cancelled };
                d.last_active = Instant::now();
                if let Err(end) = d.command(command).await {
                    return end;
                }
                if let Err(end) = d.flush().await {
                    return end;
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                if let Err(end) = d.tick().await {
                    return end;
                }
                if let Err(end) = d.flush().await {
                    return end;
                }
            }
        }
    }
}

impl Driver<'_> {
    /// When the agent's sandbox itself ended (its TTL, a delete, its namespace's delete): the
    /// task goes idle, to resume in a new one on its next event. `None` while it runs.
    async fn sandbox_end(&mut self) -> Option<End> {
        let row = self.state.store.get_sandbox(&self.task.namespace, &self.sandbox.id).await.ok()?;
        match row {
            Some(r) if r.status == SandboxStatus::Running => None,
            Some(r) => {
                let why = r.reason.unwrap_or_else(|| r.status.as_str().to_owned());
                let _ = self.note(
                    "error",
                    json!({"message": format!("the task's sandbox ended ({why}); the next message resumes the task")}),
                );
                let _ = self.flush().await;
                Some(End::Idle)
            }
            None => Some(End::Idle),
        }
    }

    async fn sandbox_end_within(&mut self, wait: Duration) -> Option<End> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(end) = self.sandbox_end().await {
                return Some(end);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut at = self.last_active + self.idle_timeout;
        if let Some(s) = self.start_deadline {
            at = at.min(s);
        }
        for w in self.waiting.values() {
            at = at.min(w.deadline);
        }
        at.max(Instant::now() + Duration::from_millis(5))
    }

    async fn send(&mut self, message: Value) -> Result<(), End> {
        let mut bytes = message.to_string().into_bytes();
        bytes.push(b'\n');
        self.stdin.send(Ok(bytes)).await.map_err(|_| End::Failed(self.with_stderr("the agent closed its stdin".into())))
    }

    async fn ask(&mut self, what: Asked, method: &str, params: Value) -> Result<(), End> {
        self.next_id += 1;
        self.asked.insert(self.next_id, what);
        self.send(json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})).await
    }

    fn fail(&self, why: impl Into<String>) -> End {
        End::Failed(why.into())
    }

    fn keep_stderr(&mut self, data: &[u8]) {
        self.stderr.extend_from_slice(data);
        if self.stderr.len() > STDERR_TAIL {
            self.stderr.drain(..self.stderr.len() - STDERR_TAIL);
        }
    }

    fn with_stderr(&self, reason: String) -> String {
        let tail = String::from_utf8_lossy(&self.stderr);
        let tail = tail.trim();
        if tail.is_empty() {
            reason
        } else {
            let last: Vec<&str> = tail.lines().rev().take(5).collect();
            let last: Vec<&str> = last.into_iter().rev().collect();
            format!("{reason}; its stderr ended with: {}", super::agents::shorten(&last.join(" | "), 600))
        }
    }

    /// Queues a message for the store.
    fn note(&mut self, kind: &str, data: Value) -> Result<(), End> {
        self.messages += 1;
        if self.task.last_seq + self.messages > MAX_MESSAGES {
            return Err(self.fail(format!("the agent sent more than {MAX_MESSAGES} messages")));
        }
        let text = data.to_string();
        let data = if text.len() > MAX_MESSAGE_BYTES {
            use sha2::{Digest, Sha256};
            json!({"truncated": true, "bytes": text.len(), "sha256": format!("{:x}", Sha256::digest(text.as_bytes()))})
        } else {
            data
        };
        self.bytes += data.to_string().len() as u64;
        if self.bytes > MAX_TASK_MESSAGE_BYTES {
            return Err(self.fail(format!("the agent sent more than {MAX_TASK_MESSAGE_BYTES} bytes of messages")));
        }
        self.batch.push((kind.to_owned(), data));
        Ok(())
    }

    /// Appends the queued messages; answers the last one's `seq`.
    async fn flush(&mut self) -> Result<Option<u64>, End> {
        if self.batch.is_empty() {
            return Ok(None);
        }
        let batch = std::mem::take(&mut self.batch);
        record(self.state, &self.task.id, batch)
            .await
            .map(|seqs| seqs.last().copied())
            .map_err(|e| End::Failed(format!("the task's messages could not be recorded: {e}")))
    }

    async fn stdout(&mut self, line: &mut Vec<u8>, data: &[u8], cwd: &str) -> Result<(), End> {
        let mut rest = data;
        while !rest.is_empty() {
            let (part, done) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], Some(i + 1)),
                None => (rest, None),
            };
            if line.len() + part.len() > MAX_LINE {
                return Err(self.fail(format!("the agent wrote a line longer than {MAX_LINE} bytes on stdout")));
            }
            line.extend_from_slice(part);
            match done {
                Some(n) => {
                    rest = &rest[n..];
                    let text = std::mem::take(line);
                    self.message(&text, cwd).await?;
                }
                None => rest = &[],
            }
        }
        Ok(())
    }

    async fn message(&mut self, text: &[u8], cwd: &str) -> Result<(), End> {
        let trimmed = text.trim_ascii();
        if trimmed.is_empty() {
            return Ok(());
        }
        let value: Value = match serde_json::from_slice(trimmed) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                let shown = String::from_utf8_lossy(&trimmed[..trimmed.len().min(120)]).into_owned();
                return Err(self.fail(format!("the agent wrote something that is not JSON-RPC on stdout: {shown:?}")));
            }
        };
        let method = value.get("method").and_then(Value::as_str).map(str::to_owned);
        let id = value.get("id").cloned().filter(|v| !v.is_null());
        match (method, id) {
            (Some(method), Some(id)) => {
                self.request(&method, id, value.get("params").cloned().unwrap_or(Value::Null)).await
            }
            (Some(method), None) => self.notification(&method, value.get("params").cloned().unwrap_or(Value::Null)),
            (None, Some(id)) => self.response(id, &value, cwd).await,
            (None, None) => Err(self.fail("the agent sent a JSON-RPC message with neither a method nor an id")),
        }
    }

    fn notification(&mut self, method: &str, params: Value) -> Result<(), End> {
        if method == "$/cancel_request" {
            // The agent withdrew a request of its own: a permission request no longer waits.
            if let Some(id) = params.get("requestId") {
                self.waiting.retain(|_, w| &w.rpc_id != id);
            }
            return Ok(());
        }
        if method != "session/update" {
            // Extensions (`_…`) and notifications Bulkhead does not know are ignored, per JSON-RPC.
            return Ok(());
        }
        let Some(mut update) = params.get("update").cloned().filter(Value::is_object) else {
            return Err(self.fail("the agent sent a session/update without an update"));
        };
        if params.get("sessionId").and_then(Value::as_str) != self.session.as_deref() {
            return Err(self.fail("the agent sent a session/update for another session"));
        }
        let kind = update
            .as_object_mut()
            .and_then(|o| o.remove("sessionUpdate"))
            .and_then(|v| v.as_str().map(str::to_owned))
            .filter(|k| !k.is_empty() && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .unwrap_or_else(|| "session_update".to_owned());
        self.last_active = Instant::now();
        if let Some(id) = update.get("toolCallId").and_then(Value::as_str) {
            let field = |k: &str| update.get(k).and_then(Value::as_str).map(|s| super::agents::shorten(s, 512));
            if self.tool_calls.len() < 10_000 || self.tool_calls.contains_key(id) {
                let known = self.tool_calls.entry(super::agents::shorten(id, 128)).or_default();
                if let Some(k) = field("kind") {
                    known.0 = k;
                }
                if let Some(t) = field("title") {
                    known.1 = t;
                }
            }
        }
        if self.loading {
            return Ok(());
        }
        self.note(&kind, update)
    }

    async fn response(&mut self, id: Value, value: &Value, cwd: &str) -> Result<(), End> {
        let Some(what) = id.as_u64().and_then(|n| self.asked.remove(&n)) else {
            return Err(self.fail(format!(
                "the agent answered a request that was never sent (id {})",
                super::agents::shorten(&id.to_string(), 40)
            )));
        };
        let error = value
            .get("error")
            .map(|e| e.get("message").and_then(Value::as_str).map_or_else(|| e.to_string(), str::to_owned));
        let result = value.get("result").cloned().unwrap_or(Value::Null);
        match what {
            Asked::Initialize => {
                if let Some(e) = error {
                    return Err(self.fail(format!("the agent refused initialize: {}", super::agents::shorten(&e, 300))));
                }
                let version = result.get("protocolVersion").and_then(Value::as_u64);
                if version != Some(PROTOCOL_VERSION) {
                    return Err(self.fail(format!(
                        "the agent speaks ACP protocol version {}, Bulkhead speaks {PROTOCOL_VERSION}",
                        version.map_or_else(|| "(none)".to_owned(), |v| v.to_string())
                    )));
                }
                self.load_session =
                    result.pointer("/agentCapabilities/loadSession").and_then(Value::as_bool) == Some(true);
                match self.task.session_id.clone().filter(|_| self.load_session) {
                    Some(session) => {
                        // Its replay comes before its answer, under this session's id.
                        self.session = Some(session.clone());
                        self.loading = true;
                        let params = json!({"sessionId": session, "cwd": cwd, "mcpServers": []});
                        self.ask(Asked::LoadSession, "session/load", params).await
                    }
                    None => {
                        let params = json!({"cwd": cwd, "mcpServers": []});
                        self.ask(Asked::NewSession, "session/new", params).await
                    }
                }
            }
            Asked::LoadSession => {
                self.loading = false;
                if error.is_some() {
                    self.session = None;
                    // The agent lost the session: a new one, with the task's files as they are.
                    let params = json!({"cwd": cwd, "mcpServers": []});
                    return self.ask(Asked::NewSession, "session/new", params).await;
                }
                self.session = self.task.session_id.clone();
                self.opened().await
            }
            Asked::NewSession => {
                if let Some(e) = error {
                    return Err(
                        self.fail(format!("the agent refused session/new: {}", super::agents::shorten(&e, 300)))
                    );
                }
                let Some(session) = result
                    .get("sessionId")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty() && s.len() <= 256)
                    .map(str::to_owned)
                else {
                    return Err(self.fail("the agent's session/new answer has no sessionId"));
                };
                self.session = Some(session.clone());
                let update = TaskUpdate { session_id: Some(Some(session)), at_ms: now_ms(), ..TaskUpdate::default() };
                self.state
                    .store
                    .update_task(&self.task.id, &update)
                    .await
                    .map_err(|e| End::Failed(format!("the task's session could not be recorded: {e}")))?;
                self.opened().await
            }
            Asked::Prompt => {
                self.in_turn = false;
                self.last_active = Instant::now();
                let mut data = json!({});
                match error {
                    Some(e) => {
                        data["stop_reason"] = json!("error");
                        data["error"] = json!(super::agents::shorten(&e, 2000));
                        // The agent's own detail of it (`error.data`), as it gave it, bounded.
                        if let Some(detail) = value.pointer("/error/data").filter(|d| !d.is_null()) {
                            data["detail"] = json!(super::agents::shorten(&detail.to_string(), 2000));
                        }
                    }
                    None => {
                        let reason = result.get("stopReason").and_then(Value::as_str).unwrap_or("end_turn");
                        data["stop_reason"] = json!(super::agents::shorten(reason, 64));
                        if let Some((input, output)) = usage(&result) {
                            data["usage"] = json!({"input_tokens": input, "output_tokens": output});
                            let update = TaskUpdate {
                                input_tokens: input,
                                output_tokens: output,
                                at_ms: now_ms(),
                                ..TaskUpdate::default()
                            };
                            let _ = self.state.store.update_task(&self.task.id, &update).await;
                        }
                    }
                }
                self.note("turn_end", data)?;
                self.next_prompt().await
            }
        }
    }

    /// The session is open: the task runs, and the first queued prompt goes.
    async fn opened(&mut self) -> Result<(), End> {
        self.start_deadline = None;
        self.flush().await?;
        set_status(self.state, &self.task.id, "running", None)
            .await
            .map_err(|e| End::Failed(format!("the task's status could not be recorded: {e}")))?;
        self.next_prompt().await
    }

    async fn next_prompt(&mut self) -> Result<(), End> {
        if self.in_turn || self.session.is_none() {
            return Ok(());
        }
        let Some(prompt) = self.queue.pop_front() else { return Ok(()) };
        self.in_turn = true;
        self.last_active = Instant::now();
        let params = json!({"sessionId": self.session, "prompt": prompt});
        self.ask(Asked::Prompt, "session/prompt", params).await
    }

    async fn command(&mut self, command: Command) -> Result<(), End> {
        match command {
            Command::Prompt { blocks, reply } => {
                if self.queue.len() >= MAX_QUEUED_PROMPTS {
                    let _ = reply.send(Err(format!("{MAX_QUEUED_PROMPTS} prompts wait already")));
                    return Ok(());
                }
                self.note("user_message", json!({"content": blocks}))?;
                let seq = self.flush().await?.unwrap_or_default();
                let _ = reply.send(Ok(seq));
                self.queue.push_back(blocks);
                self.next_prompt().await
            }
            Command::Permission { request, outcome, reply } => {
                let Some(w) = self.waiting.remove(&request) else {
                    let _ = reply.send(false);
                    return Ok(());
                };
                let _ = reply.send(true);
                if outcome == "allow_always" {
                    self.allowed_kinds.insert(w.kind.clone());
                }
                let allow = outcome != "reject";
                self.answer_permission(&request, w, allow, "user", &outcome).await
            }
            Command::CancelTurn => self.cancel_turn().await,
            Command::Stop => {
                self.cancel_turn().await?;
                self.stopping = Some(End::Cancelled);
                Ok(())
            }
        }
    }

    async fn cancel_turn(&mut self) -> Result<(), End> {
        // Pending permission requests are answered `cancelled`, as ACP asks of a cancelling client.
        let pending: Vec<String> = self.waiting.keys().cloned().collect();
        for request in pending {
            if let Some(w) = self.waiting.remove(&request) {
                let answer = json!({"jsonrpc": "2.0", "id": w.rpc_id, "result": {"outcome": {"outcome": "cancelled"}}});
                self.send(answer).await?;
                self.note("permission_decision", json!({"request": request, "outcome": "cancelled", "by": "cancel"}))?;
            }
        }
        if self.in_turn {
            if let Some(session) = self.session.clone() {
                self.send(json!({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": session}}))
                    .await?;
            }
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), End> {
        let now = Instant::now();
        if self.start_deadline.is_some_and(|d| d <= now) {
            return Err(self.fail(self.with_stderr(format!(
                "the agent did not open a session within {} s",
                self.state.config.tasks.answer_timeout.as_secs()
            ))));
        }
        let expired: Vec<String> =
            self.waiting.iter().filter(|(_, w)| w.deadline <= now).map(|(k, _)| k.clone()).collect();
        for request in expired {
            if let Some(w) = self.waiting.remove(&request) {
                self.answer_permission(&request, w, false, "timeout", "reject").await?;
            }
        }
        let idle = !self.in_turn && self.queue.is_empty() && self.waiting.is_empty() && self.session.is_some();
        if idle && now >= self.last_active + self.idle_timeout {
            self.stopping = Some(End::Idle);
        }
        Ok(())
    }

    async fn request(&mut self, method: &str, id: Value, params: Value) -> Result<(), End> {
        self.last_active = Instant::now();
        match method {
            "session/request_permission" => self.permission(id, params).await,
            "fs/read_text_file" | "fs/write_text_file" => {
                let (state, sandbox, user) = (
                    self.state.clone(),
                    self.sandbox.id.clone(),
                    self.sandbox.image.as_ref().and_then(|i| i.user.clone()),
                );
                let read_only = self.task.filesystem.as_ref().is_none_or(|(_, m)| m == "ro");
                let stdin = self.stdin.clone();
                let method = method.to_owned();
                // Served beside the driver: a large file does not hold up the protocol.
                tokio::spawn(async move {
                    let answer = match fs_method(&state, &sandbox, user, &method, &params, read_only).await {
                        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                        Err((code, message)) => {
                            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
                        }
                    };
                    let mut bytes = answer.to_string().into_bytes();
                    bytes.push(b'\n');
                    let _ = stdin.send(Ok(bytes)).await;
                });
                Ok(())
            }
            _ => {
                let answer = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601,
                    "message": format!("method {} is not offered by this client", super::agents::shorten(method, 64))}});
                self.send(answer).await
            }
        }
    }

    async fn permission(&mut self, id: Value, params: Value) -> Result<(), End> {
        let call = params.get("toolCall").cloned().unwrap_or(Value::Null);
        // What the request leaves out is what the agent reported of the call before.
        let known = call
            .get("toolCallId")
            .and_then(Value::as_str)
            .and_then(|id| self.tool_calls.get(id))
            .cloned()
            .unwrap_or_default();
        let kind = call.get("kind").and_then(Value::as_str).map(str::to_owned).unwrap_or(known.0);
        let kind = if !kind.is_empty() && kind.len() <= 32 && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            kind
        } else {
            "other".to_owned()
        };
        let kind = kind.as_str();
        let title = call.get("title").and_then(Value::as_str).map_or(known.1, |t| super::agents::shorten(t, 512));
        let options: Vec<(String, String)> = params
            .get("options")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|o| {
                        Some((o.get("optionId")?.as_str()?.to_owned(), o.get("kind")?.as_str()?.to_owned()))
                    })
                    .take(16)
                    .collect()
            })
            .unwrap_or_default();
        let request = bulkhead_core::ids::new_id("perm_");
        let decision = self.decide(kind, &title).await;
        let forbidden = !matches!(decision, Decision::Allow);
        let w =
            Waiting { rpc_id: id, options, kind: kind.to_owned(), deadline: Instant::now() + self.permission_timeout };
        if forbidden {
            return self.answer_permission(&request, w, false, "policy", "reject").await;
        }
        if self.task.permissions == "ask" && !self.allowed_kinds.contains(kind) {
            if self.waiting.len() >= MAX_PENDING_PERMISSIONS {
                return self.answer_permission(&request, w, false, "limit", "reject").await;
            }
            let options: Vec<Value> =
                w.options.iter().map(|(id, kind)| json!({"option_id": id, "kind": kind})).collect();
            self.note(
                "permission_request",
                json!({"request": request, "tool_call": call, "options": options,
                       "expires_in_seconds": self.permission_timeout.as_secs()}),
            )?;
            self.waiting.insert(request, w);
            return Ok(());
        }
        let by = if self.task.permissions == "ask" { "allow_always" } else { "policy" };
        self.answer_permission(&request, w, true, by, "allow_once").await
    }

    async fn decide(&self, kind: &str, title: &str) -> Decision {
        let target = Target::tool_call(&self.task.namespace, &self.task.id, kind, title);
        match Decider::load(self.state, self.principal.clone()).await {
            Ok(decider) => decider.decide(Action::TaskToolCall, &target),
            Err(_) => Decision::Forbidden { policies: Vec::new() },
        }
    }

    /// Answers a permission request with the option of the kind wanted, records the decision and
    /// audits it (the tool call's title as a hash).
    async fn answer_permission(
        &mut self,
        request: &str,
        w: Waiting,
        allow: bool,
        by: &str,
        outcome: &str,
    ) -> Result<(), End> {
        let wanted: &[&str] = match (allow, outcome) {
            (true, "allow_always") => &["allow_always", "allow_once"],
            (true, _) => &["allow_once", "allow_always"],
            (false, _) => &["reject_once", "reject_always"],
        };
        let chosen = wanted.iter().find_map(|k| w.options.iter().find(|(_, kind)| kind == k)).map(|(id, _)| id.clone());
        let result = match &chosen {
            Some(option) => json!({"outcome": {"outcome": "selected", "optionId": option}}),
            None => json!({"outcome": {"outcome": "cancelled"}}),
        };
        self.send(json!({"jsonrpc": "2.0", "id": w.rpc_id, "result": result})).await?;
        // What the agent was told: an allow or a reject it offered, else `cancelled`.
        let shown = match (&chosen, allow) {
            (None, _) => "cancelled",
            (Some(_), true) => outcome,
            (Some(_), false) => "reject",
        };
        self.note("permission_decision", json!({"request": request, "outcome": shown, "by": by, "kind": w.kind}))?;
        let detail = json!({"task": self.task.id, "kind": w.kind, "outcome": shown, "by": by, "request": request});
        let event = bulkhead_core::audit::AuditEvent {
            time_ms: now_ms(),
            principal: self.principal.audit_name(),
            action: Action::TaskToolCall.name().to_owned(),
            resource: format!("task:{}", self.task.id),
            decision: if allow { "allow" } else { "deny" }.to_owned(),
            status: if allow { 200 } else { 403 },
            request_id: String::new(),
            detail: detail.to_string(),
        };
        crate::audit::append_late(self.state, &self.task.namespace, event).await;
        Ok(())
    }
}

/// The token counts of a `session/prompt` answer: `usage` or `_meta.usage`, with
/// `inputTokens`/`outputTokens` or `input_tokens`/`output_tokens`.
fn usage(result: &Value) -> Option<(u64, u64)> {
    let u = result.get("usage").or_else(|| result.pointer("/_meta/usage"))?;
    let get = |a: &str, b: &str| u.get(a).or_else(|| u.get(b)).and_then(Value::as_u64).unwrap_or(0);
    let (i, o) = (get("inputTokens", "input_tokens"), get("outputTokens", "output_tokens"));
    (i > 0 || o > 0).then_some((i.min(1 << 40), o.min(1 << 40)))
}

/// The largest file the ACP file methods read or write.
const MAX_TEXT_FILE: u64 = 16 << 20;

/// Serves `fs/read_text_file` and `fs/write_text_file` from the sandbox, confined to
/// `/workspace` (an absolute path with no `..`, under it), as the sandbox's user. A JSON-RPC
/// error `(code, message)` otherwise.
async fn fs_method(
    state: &AppState,
    sandbox: &str,
    user: Option<String>,
    method: &str,
    params: &Value,
    read_only: bool,
) -> Result<Value, (i64, String)> {
    let invalid = |m: String| (-32602, m);
    let path = params.get("path").and_then(Value::as_str).ok_or_else(|| invalid("path: missing".into()))?;
    let confined = path.len() <= 4096
        && !path.contains('\0')
        && (path == bulkhead_runtime::WORKSPACE_PATH
            || path
                .strip_prefix("/workspace/")
                .is_some_and(|rest| rest.split('/').all(|c| !c.is_empty() && c != "." && c != "..")));
    if !confined {
        return Err(invalid(format!("path: {} is not a file under /workspace", super::agents::shorten(path, 200))));
    }
    let path = std::path::Path::new(path);
    let internal = |e: bulkhead_runtime::RuntimeError| (-32603, e.to_string());
    if method == "fs/read_text_file" {
        let mut stream = state.runtime.read_file(sandbox, path, user, MAX_TEXT_FILE).await.map_err(internal)?;
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk.map_err(internal)?);
        }
        let text = String::from_utf8(data).map_err(|_| (-32603, "the file is not UTF-8 text".to_owned()))?;
        let line = params.get("line").and_then(Value::as_u64).unwrap_or(1).max(1);
        let limit = params.get("limit").and_then(Value::as_u64);
        let content = if line == 1 && limit.is_none() {
            text
        } else {
            let lines = text.split_inclusive('\n').skip(usize::try_from(line - 1).unwrap_or(usize::MAX));
            match limit {
                Some(n) => lines.take(usize::try_from(n).unwrap_or(usize::MAX)).collect(),
                None => lines.collect(),
            }
        };
        return Ok(json!({"content": content}));
    }
    if read_only {
        return Err((-32603, "the workspace is read-only for this task".to_owned()));
    }
    let content = params.get("content").and_then(Value::as_str).ok_or_else(|| invalid("content: missing".into()))?;
    if content.len() as u64 > MAX_TEXT_FILE {
        return Err(invalid(format!("content: larger than {MAX_TEXT_FILE} bytes")));
    }
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.send(Ok(content.as_bytes().to_vec())).await;
    drop(tx);
    state.runtime.write_file(sandbox, path, rx, MAX_TEXT_FILE, None, user).await.map_err(internal)?;
    Ok(Value::Null)
}

/// The prompt an event's `content` is: a string (one text block) or an array of ACP content
/// blocks (objects with a `type`), at most 1 MiB as JSON. 400 naming the field otherwise.
pub fn prompt_of(field: &str, content: &Value) -> ServiceResult<Vec<Value>> {
    let blocks = match content {
        Value::String(s) => vec![json!({"type": "text", "text": s})],
        Value::Array(a) if !a.is_empty() && a.len() <= 256 => {
            for (i, b) in a.iter().enumerate() {
                if !b.get("type").is_some_and(Value::is_string) {
                    return Err(ServiceError::Invalid(format!(
                        "{field}[{i}]: an ACP content block has a string \"type\""
                    )));
                }
            }
            a.clone()
        }
        _ => {
            return Err(ServiceError::Invalid(format!("{field}: a string, or an array of 1 to 256 ACP content blocks")))
        }
    };
    if serde_json::to_vec(&blocks).map(|v| v.len()).unwrap_or(usize::MAX) > 1 << 20 {
        return Err(ServiceError::TooLarge(format!("{field}: larger than 1 MiB")));
    }
    Ok(blocks)
}

/// Task `id`'s messages after `after`: at most `limit`, fewer when they reach
/// [`READ_BUDGET_BYTES`] (at least one), read a few at a time.
pub async fn read_messages(
    state: &AppState,
    id: &str,
    after: u64,
    limit: u32,
) -> ServiceResult<Vec<bulkhead_store::TaskMessageRow>> {
    const BATCH: u32 = 32;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut from = after;
    while (out.len() as u32) < limit {
        let rows = state.store.task_messages(id, from, BATCH.min(limit - out.len() as u32)).await?;
        let done = rows.len() < BATCH as usize;
        for r in rows {
            if !out.is_empty() && bytes + r.body.len() > READ_BUDGET_BYTES {
                return Ok(out);
            }
            bytes += r.body.len();
            from = r.seq;
            out.push(r);
        }
        if done {
            break;
        }
    }
    Ok(out)
}

/// Every task that had a sandbox when the server last stopped is `idle` now: its sandbox is
/// removed (the agent's conversation is the task's messages, its files the filesystem's), and
/// it resumes on its next event. At start, before the API listens.
pub async fn reconcile(state: &AppState) -> ServiceResult<usize> {
    let live = state.store.tasks_in_status(&["starting", "running"]).await?;
    for task in &live {
        if let Some(sandbox) = &task.sandbox_id {
            if let Some(row) = state.store.get_sandbox(&task.namespace, sandbox).await? {
                if let Err(e) = super::sandboxes::destroy(state, &row, SandboxStatus::Deleted, "task_idle").await {
                    tracing::warn!(task = %task.id, error = %e, "a task's sandbox could not be removed at start");
                }
            }
        }
        set_status(state, &task.id, "idle", Some("the server restarted".into())).await?;
    }
    Ok(live.len())
}

/// A shared, cheap handle for spawn sites that only need to know a task ended.
pub type Hub = Arc<TaskHub>;
