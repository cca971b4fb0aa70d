//! Agents and tasks: create, list, get and delete agents; push a bundle as a version (from
//! bytes, or streamed from a reader with the bytes sent reported as they go), list versions,
//! deploy one and roll back; create, list and read tasks, send them events (messages,
//! permission answers, a cancel of the prompt in flight), read their messages as pages or as a
//! live stream that survives dropped connections, keep their state document, cancel them.

use std::io::Read;
use std::time::{Duration, Instant};

use bulkhead_api::{
    Agent, AgentVersion, CreateAgent, CreateTask, Deploy, EventAccepted, Page, Task, TaskEvent, TaskMessage,
};
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, ETAG, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;

use crate::lines::{reader_stream, SseEvents};
use crate::{namespace_path, page, seg, Client, Error, Result};

const EVENT_STREAM: &str = "text/event-stream";
/// Bytes read from a bundle's reader per chunk of an upload.
const CHUNK: usize = 256 * 1024;
/// Consecutive failed attempts of a message stream to (re)connect, or connections that ended
/// without a new message, after which it gives up.
const MAX_RECONNECTS: u32 = 6;
/// A connection that lasted this long was not failing: the count of failures starts over.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(10);

/// `/v1/namespaces/{ns}/agents{rest}`.
fn agents_path(ns: &str, rest: &str) -> String {
    namespace_path(ns, &format!("/agents{rest}"))
}

/// `/v1/namespaces/{ns}/agents/{agent}{rest}`, the agent percent-encoded.
fn agent_path(ns: &str, agent: &str, rest: &str) -> String {
    agents_path(ns, &format!("/{}{rest}", seg(agent)))
}

/// `/v1/namespaces/{ns}/tasks/{id}{rest}`, the id percent-encoded.
fn task_path(ns: &str, id: &str, rest: &str) -> String {
    namespace_path(ns, &format!("/tasks/{}{rest}", seg(id)))
}

/// A pushed bundle: its version, and whether the push made it (`false`: the same bundle was
/// pushed before and is that version already).
#[derive(Debug, Clone)]
pub struct Pushed {
    pub version: AgentVersion,
    pub created: bool,
}

/// How a person answers a pending permission request of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionOutcome {
    AllowOnce,
    /// Allowed, and every later request of the same kind in this task too.
    AllowAlways,
    Reject,
}

impl PermissionOutcome {
    /// As the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionOutcome::AllowOnce => "allow_once",
            PermissionOutcome::AllowAlways => "allow_always",
            PermissionOutcome::Reject => "reject",
        }
    }
}

/// A task's state document and its version (the ETag, quoted as HTTP sends it).
#[derive(Debug, Clone)]
pub struct TaskState {
    pub document: Value,
    pub etag: Option<String>,
}

#[derive(Serialize)]
struct TaskListQuery<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<&'a str>,
    #[serde(flatten)]
    page: bulkhead_api::PageParams,
}

#[derive(Serialize)]
struct MessageQuery {
    after: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
}

impl Client {
    /// Creates agent `name`; push a version and deploy it before tasks run it.
    pub async fn create_agent(&self, ns: &str, name: &str) -> Result<Agent> {
        self.create_in(ns, "/agents", &CreateAgent { name: name.to_owned() }).await
    }

    /// One page of the namespace's agents.
    pub async fn list_agents(&self, ns: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Agent>> {
        self.list_in(ns, "/agents", limit, cursor).await
    }

    /// One agent, by name or `agt_…` id.
    pub async fn get_agent(&self, ns: &str, agent: &str) -> Result<Agent> {
        self.send(self.request(Method::GET, &agent_path(ns, agent, ""))).await
    }

    /// Deletes an agent with its versions and ended tasks (a conflict while a task of it runs).
    pub async fn delete_agent(&self, ns: &str, agent: &str) -> Result<()> {
        self.delete_in(ns, "/agents", agent).await
    }

    /// Pushes `bundle` (a tar, plain, gzip or zstd, of the agent's code with `agent.json` at its
    /// root) as a version of `agent`.
    pub async fn push_agent(&self, ns: &str, agent: &str, bundle: Vec<u8>) -> Result<Pushed> {
        self.push_agent_body(ns, agent, reqwest::Body::from(bundle)).await
    }

    /// Pushes the bundle `source` yields, streamed a chunk at a time (never all of it in
    /// memory: read on a thread of its own a few chunks ahead of the connection); `progress` is
    /// called with the bytes handed to the connection so far after each chunk. A `source` that
    /// fails ends the upload, which the server then refuses.
    pub async fn push_agent_from(
        &self,
        ns: &str,
        agent: &str,
        source: Box<dyn Read + Send>,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<Pushed> {
        let mut sent = 0u64;
        let counted = reader_stream(source, CHUNK).map(move |chunk| {
            if let Ok(c) = &chunk {
                sent += c.len() as u64;
                progress(sent);
            }
            chunk
        });
        self.push_agent_body(ns, agent, reqwest::Body::wrap_stream(counted)).await
    }

    async fn push_agent_body(&self, ns: &str, agent: &str, body: reqwest::Body) -> Result<Pushed> {
        let builder = self
            .request(Method::POST, &agent_path(ns, agent, "/versions"))
            .header(CONTENT_TYPE, "application/x-tar")
            .body(body);
        let answer = self.send_raw(builder).await?;
        let created = answer.status() == StatusCode::CREATED.as_u16();
        Ok(Pushed { version: answer.json().await?, created })
    }

    /// One page of the agent's versions.
    pub async fn list_agent_versions(
        &self,
        ns: &str,
        agent: &str,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<AgentVersion>> {
        self.send(self.request(Method::GET, &agent_path(ns, agent, "/versions")).query(&page(limit, cursor))).await
    }

    /// Makes `version` (a `ver_…` of the agent) the one new tasks run; running tasks keep theirs.
    pub async fn deploy_agent(&self, ns: &str, agent: &str, version: &str) -> Result<Agent> {
        let body = Deploy { version: version.to_owned() };
        self.send(self.request(Method::POST, &agent_path(ns, agent, "/deploy")).json(&body)).await
    }

    /// Makes the version deployed before the active one active again (a conflict when there is
    /// none).
    pub async fn rollback_agent(&self, ns: &str, agent: &str) -> Result<Agent> {
        self.send(self.request(Method::POST, &agent_path(ns, agent, "/rollback"))).await
    }

    /// Creates a task: the agent's version runs in a sandbox of its own, and `req.message`, when
    /// given, is its first prompt.
    pub async fn create_task(&self, ns: &str, req: &CreateTask) -> Result<Task> {
        self.create_in(ns, "/tasks", req).await
    }

    /// One page of the namespace's tasks; `agent` (a name or an id) keeps that agent's.
    pub async fn list_tasks(
        &self,
        ns: &str,
        agent: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<Task>> {
        let query = TaskListQuery { agent, page: page(limit, cursor) };
        self.send(self.request(Method::GET, &namespace_path(ns, "/tasks")).query(&query)).await
    }

    /// One task.
    pub async fn get_task(&self, ns: &str, id: &str) -> Result<Task> {
        self.send(self.request(Method::GET, &task_path(ns, id, ""))).await
    }

    /// Sends an event to a task: the message it was recorded as, and the task's status after it.
    pub async fn task_event(&self, ns: &str, id: &str, event: &TaskEvent) -> Result<EventAccepted> {
        self.send(self.request(Method::POST, &task_path(ns, id, "/events")).json(event)).await
    }

    /// Sends a message (a string, or an array of ACP content blocks): a prompt, queued behind
    /// the one in flight, that resumes an idle task.
    pub async fn send_task_message(&self, ns: &str, id: &str, content: Value) -> Result<EventAccepted> {
        let event = TaskEvent { kind: "message".into(), content: Some(content), request: None, outcome: None };
        self.task_event(ns, id, &event).await
    }

    /// Answers the task's pending permission request `request` (`perm_…`).
    pub async fn answer_task_permission(
        &self,
        ns: &str,
        id: &str,
        request: &str,
        outcome: PermissionOutcome,
    ) -> Result<EventAccepted> {
        let event = TaskEvent {
            kind: "permission".into(),
            content: None,
            request: Some(request.to_owned()),
            outcome: Some(outcome.as_str().to_owned()),
        };
        self.task_event(ns, id, &event).await
    }

    /// Cancels the prompt in flight; the task goes on.
    pub async fn cancel_task_turn(&self, ns: &str, id: &str) -> Result<EventAccepted> {
        let event = TaskEvent { kind: "cancel".into(), content: None, request: None, outcome: None };
        self.task_event(ns, id, &event).await
    }

    /// A page of the task's messages after `after` (0: from the first), at most `limit` (1 to
    /// 1000, default 100); its `next_cursor` is the last `seq` when more may follow.
    pub async fn task_messages(&self, ns: &str, id: &str, after: u64, limit: Option<u32>) -> Result<Page<TaskMessage>> {
        let query = MessageQuery { after, limit };
        self.send(self.request(Method::GET, &task_path(ns, id, "/messages")).query(&query)).await
    }

    /// The task's messages after `after`, live: each once and in order, the stream reconnecting
    /// with `Last-Event-ID` when its connection drops, until the task has ended and every message
    /// was delivered.
    pub async fn follow_task(&self, ns: &str, id: &str, after: u64) -> Result<TaskMessages> {
        let mut stream = TaskMessages {
            client: self.clone(),
            path: task_path(ns, id, "/messages"),
            last: after,
            connection: None,
            connections: 0,
            connected_at: Instant::now(),
            failures: 0,
            ended: false,
        };
        // The first connection is made now, so that a task that is not there is an error here.
        stream.connection = Some(stream.connect().await?);
        Ok(stream)
    }

    /// The task's state document (`{}` until one is written) and its ETag.
    pub async fn task_state(&self, ns: &str, id: &str) -> Result<TaskState> {
        let answer = self.send_raw(self.request(Method::GET, &task_path(ns, id, "/state"))).await?;
        let etag = answer.header(ETAG).map(str::to_owned);
        Ok(TaskState { document: answer.json().await?, etag })
    }

    /// Replaces the task's state document; with `if_match` (an ETag, quoted or not) only over
    /// that version (a 412 otherwise). Answers the new ETag.
    pub async fn put_task_state(&self, ns: &str, id: &str, document: &Value, if_match: Option<&str>) -> Result<String> {
        let mut builder = self.request(Method::PUT, &task_path(ns, id, "/state")).json(document);
        if let Some(tag) = if_match {
            let tag = tag.trim();
            let quoted = if tag.starts_with('"') { tag.to_owned() } else { format!("\"{tag}\"") };
            builder = builder.header(IF_MATCH, quoted);
        }
        let answer = self.send_raw(builder).await?;
        match answer.header(ETAG) {
            Some(tag) => Ok(tag.to_owned()),
            None => Err(answer.call.unexpected(answer.status(), "the answer has no ETag")),
        }
    }

    /// Cancels a task: the prompt in flight is cancelled, its agent stopped and its sandbox
    /// removed; its messages, state and files are kept. A task that has ended stays as it is.
    pub async fn cancel_task(&self, ns: &str, id: &str) -> Result<Task> {
        self.send(self.request(Method::POST, &task_path(ns, id, "/cancel"))).await
    }
}

/// A task's messages, live (see [`Client::follow_task`]).
#[derive(Debug)]
pub struct TaskMessages {
    client: Client,
    path: String,
    /// The `seq` of the last message delivered: nothing at or below it is delivered again.
    last: u64,
    connection: Option<SseEvents>,
    /// Connections opened so far; the first starts at `after`, the next resume.
    connections: u32,
    connected_at: Instant,
    /// Consecutive connections that failed or ended without a new message.
    failures: u32,
    ended: bool,
}

impl TaskMessages {
    /// The `seq` of the last message delivered (or the `after` the stream started from).
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// The next message; `None` once the task has ended and every message was delivered. A
    /// dropped connection is resumed after the last message delivered; the stream gives up after
    /// [`MAX_RECONNECTS`] attempts in a row that bring nothing.
    pub async fn next(&mut self) -> Result<Option<TaskMessage>> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some(connection) = self.connection.as_mut() else {
                match self.connect().await {
                    Ok(c) => self.connection = Some(c),
                    Err(e) if retryable(&e) && self.failures < MAX_RECONNECTS => self.back_off().await,
                    Err(e) => return Err(e),
                }
                continue;
            };
            let status = connection.answer.status();
            let dropped = match connection.next().await {
                Ok(Some(event)) => match event.event.as_str() {
                    "message" => {
                        let m: TaskMessage =
                            serde_json::from_str(&event.data).map_err(|e| connection.answer.call.decode(status, e))?;
                        if m.seq <= self.last {
                            continue;
                        }
                        self.last = m.seq;
                        self.failures = 0;
                        return Ok(Some(m));
                    }
                    "end" => {
                        self.ended = true;
                        self.connection = None;
                        return Ok(None);
                    }
                    "error" => {
                        let detail = format!("the server broke off the stream: {}", event.data);
                        return Err(connection.answer.call.unexpected(status, detail));
                    }
                    // Events this client does not know are skipped.
                    _ => continue,
                },
                // The server closed the stream without its `end`, or the connection broke.
                Ok(None) => connection.answer.call.unexpected(status, "the stream ended before the task did"),
                Err(e @ Error::Receive { .. }) => e,
                Err(e) => return Err(e),
            };
            self.connection = None;
            if self.connected_at.elapsed() >= HEALTHY_CONNECTION {
                self.failures = 0;
            }
            if self.failures >= MAX_RECONNECTS {
                return Err(dropped);
            }
            self.back_off().await;
        }
    }

    /// Counts a failure and waits before the next attempt: 100 ms, doubling, at most 5 s.
    async fn back_off(&mut self) {
        self.failures += 1;
        let wait = Duration::from_millis(100 << self.failures.min(6)).min(Duration::from_secs(5));
        tokio::time::sleep(wait).await;
    }

    /// Opens the stream after the last message delivered: `after` on the first connection,
    /// `Last-Event-ID` on the next ones, as a browser's `EventSource` resumes.
    async fn connect(&mut self) -> Result<SseEvents> {
        let c = &self.client;
        let mut builder = c.request(Method::GET, &self.path).header(ACCEPT, EVENT_STREAM);
        builder = if self.connections == 0 {
            builder.query(&MessageQuery { after: self.last, limit: None })
        } else {
            builder.header("last-event-id", self.last.to_string())
        };
        let answer = c.send_raw(builder).await?;
        answer.expect_content_type(EVENT_STREAM)?;
        self.connections += 1;
        self.connected_at = Instant::now();
        Ok(SseEvents::new(answer, crate::MAX_LINE_BYTES))
    }
}

/// Whether a failed attempt to open a stream may succeed on another: the server could not be
/// reached or was busy.
fn retryable(e: &Error) -> bool {
    match e {
        Error::Transport { .. } | Error::Receive { .. } => true,
        Error::Api { status, .. } => matches!(status, 429 | 502 | 503 | 504),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn message(seq: u64) -> String {
        let m = serde_json::json!({"seq": seq, "type": "agent_message_chunk", "created_at": "t",
                                   "data": {"content": {"type": "text", "text": format!("part {seq}")}}});
        format!("id: {seq}\nevent: message\ndata: {m}\n\n")
    }

    /// Reads a request's head from `socket`.
    async fn head(socket: &mut tokio::net::TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(socket.read(&mut byte).await.unwrap(), 1, "a request head");
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap().to_ascii_lowercase()
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

    /// A connection that drops mid-event is resumed with `Last-Event-ID`; a message sent again
    /// is delivered once; the stream ends at `end`.
    #[tokio::test]
    async fn a_dropped_stream_resumes_without_gap_or_duplicate() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let h = head(&mut s).await;
            assert!(h.starts_with("get /v1/namespaces/acme/tasks/tsk_1/messages?after=0 "), "{h}");
            assert!(!h.contains("last-event-id"), "{h}");
            let body = format!("{OK}{}: keep-alive\n\n{}id: 3\nevent: mess", message(1), message(2));
            s.write_all(body.as_bytes()).await.unwrap();
            drop(s);
            let (mut s, _) = listener.accept().await.unwrap();
            let h = head(&mut s).await;
            assert!(h.contains("\r\nlast-event-id: 2\r\n"), "{h}");
            let body = format!("{OK}{}{}event: end\ndata: {{}}\n\n", message(2), message(3));
            s.write_all(body.as_bytes()).await.unwrap();
        });
        let c = Client::new(&format!("http://{addr}"), Some("t".into()));
        let mut stream = c.follow_task("acme", "tsk_1", 0).await.unwrap();
        let mut seqs = Vec::new();
        while let Some(m) = stream.next().await.unwrap() {
            seqs.push(m.seq);
        }
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(stream.last_seq(), 3);
        server.await.unwrap();
    }

    /// An error answer to the first connection is the caller's at once, never retried.
    #[tokio::test]
    async fn a_missing_task_is_an_error_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            head(&mut s).await;
            let body = r#"{"error":{"code":"not_found","message":"task \"tsk_2\" not found","request_id":"r"}}"#;
            let answer = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await.unwrap();
        });
        let c = Client::new(&format!("http://{addr}"), Some("t".into()));
        match c.follow_task("acme", "tsk_2", 5).await {
            Err(Error::Api { status: 404, code, .. }) => assert_eq!(code, "not_found"),
            other => panic!("{other:?}"),
        }
    }
}
