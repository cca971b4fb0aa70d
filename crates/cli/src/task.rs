//! The task subcommands: `task create` (then its messages as they come, until its turn ends, or
//! with `--follow` until the task does; `--detach` prints its id only), `task send`, `task
//! allow|reject` of a permission request, `task logs` (the same rendering; `--json` prints the raw
//! messages as NDJSON), `task state`, `task cancel`, `task list` and `task show`.
//!
//! A task's messages are rendered for people as a transcript: the agent's text as it streams,
//! its thoughts dimmed on a terminal (prefixed `thinking:` elsewhere), one line per tool call
//! and update with its status, the plan's entries, permission requests with the commands that
//! answer them, and the ends of turns.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_api::{CreateTask, Task, TaskFilesystem, TaskMessage};
use bulkhead_client::{Client, PermissionOutcome};
use clap::Subcommand;
use serde_json::Value;

use crate::commands::{all_pages, client};
use crate::output;
use crate::units::parse_seconds;
use crate::Global;

#[derive(Subcommand)]
pub enum TaskCmd {
    /// Start a task of an agent, with a first message, and show its messages as they come
    /// until the agent's turn ends (`--follow`: until the task ends; `--detach`: print the
    /// task's id only). Exits non-zero when the turn fails or the task ends first.
    Create {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// The agent: a name or an agt_… id.
        #[arg(long)]
        agent: String,
        /// A ver_… of the agent; default: its deployed version.
        #[arg(long)]
        version: Option<String>,
        /// A filesystem at /workspace: `ID` (the mode the agent asks for, as far as you may),
        /// `ID:rw` or `ID:ro`.
        #[arg(long = "fs", value_name = "ID[:rw|:ro]", value_parser = parse_task_fs)]
        filesystem: Option<TaskFilesystem>,
        /// Ask a person (`task allow` or `task reject`) for each of the agent's permission
        /// requests, instead of the namespace's policies alone.
        #[arg(long)]
        ask: bool,
        /// How long a permission request waits for its answer before it is rejected (`10m`).
        #[arg(long, value_name = "DURATION", value_parser = parse_seconds, requires = "ask")]
        permission_timeout: Option<u64>,
        /// Follow the task's messages until the task ends, not only to the end of the turn.
        #[arg(long, short = 'f', conflicts_with = "detach")]
        follow: bool,
        /// Print the task's id (with `--json`, the task) and return at once.
        #[arg(long, short = 'd')]
        detach: bool,
        /// The first message.
        message: Option<String>,
    },
    /// Send a message to a task: a prompt, queued behind the one in flight, that wakes an
    /// idle task. `-` reads it from standard input.
    Send {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// The task (tsk_…).
        id: String,
        message: String,
    },
    /// Allow a task's pending permission request.
    Allow {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// The task (tsk_…).
        id: String,
        /// The request (perm_…), as the task's messages show it.
        request: String,
        /// Allow every later request of the same kind in this task too.
        #[arg(long)]
        always: bool,
    },
    /// Reject a task's pending permission request.
    Reject {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// The task (tsk_…).
        id: String,
        /// The request (perm_…), as the task's messages show it.
        request: String,
    },
    /// A task's messages (`--json`: one JSON object a line); `--follow` waits for more until
    /// the task ends.
    Logs {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// The task (tsk_…).
        id: String,
        /// Follow new messages until the task ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the messages after this seq.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Print a task's state document (its ETag on standard error), or replace it with `--set`.
    State {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// The task (tsk_…).
        id: String,
        /// The new document: JSON, `@FILE`, or `@-` for standard input. Prints the new ETag.
        #[arg(long, value_name = "JSON|@FILE")]
        set: Option<String>,
        /// Replace it only if it is still at this ETag (as `task state` printed it).
        #[arg(long, value_name = "ETAG", requires = "set")]
        if_match: Option<String>,
    },
    /// Cancel a task: its prompt in flight is cancelled, its agent stopped and its sandbox
    /// removed (messages, state and files are kept). `--turn` cancels only the prompt in flight.
    Cancel {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// The task (tsk_…).
        id: String,
        /// Cancel only the prompt in flight; the task goes on.
        #[arg(long)]
        turn: bool,
    },
    /// List a namespace's tasks.
    #[command(alias = "ls")]
    List {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// Only this agent's tasks (a name or an agt_… id).
        #[arg(long)]
        agent: Option<String>,
    },
    /// Show one task.
    Show {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// The task (tsk_…).
        id: String,
    },
}

/// Parses `ID`, `ID:rw` or `ID:ro`: a task's filesystem, with the mode left to the agent's
/// manifest and the principal's rights when none is given.
fn parse_task_fs(s: &str) -> Result<TaskFilesystem, String> {
    let (id, mode) = match s.rsplit_once(':') {
        Some((id, mode @ ("rw" | "ro"))) => (id, Some(mode.to_owned())),
        Some(_) => return Err(format!("{s:?} is not ID, ID:rw or ID:ro")),
        None => (s, None),
    };
    if id.is_empty() {
        return Err(format!("{s:?} names no filesystem"));
    }
    Ok(TaskFilesystem { id: id.to_owned(), mode })
}

const TASK_HEADERS: [&str; 6] = ["ID", "AGENT", "VERSION", "STATUS", "MESSAGES", "CREATED"];

fn task_row(t: &Task) -> Vec<String> {
    vec![
        t.id.clone(),
        t.agent.clone(),
        t.version.clone(),
        t.status.clone(),
        t.last_message.to_string(),
        t.created_at.clone(),
    ]
}

/// Whether a task's status is one it never leaves.
fn ended(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

pub async fn task(cmd: TaskCmd, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    match cmd {
        TaskCmd::Create { ns, agent, version, filesystem, ask, permission_timeout, follow, detach, message } => {
            let req = CreateTask {
                agent,
                version,
                filesystem,
                message: message.map(Value::String),
                permissions: ask.then(|| "ask".to_owned()),
                permission_timeout_seconds: permission_timeout,
            };
            let t = c.create_task(&ns, &req).await?;
            if detach {
                if global.json {
                    output::json(&t)?;
                } else {
                    println!("{}", t.id);
                }
                return Ok(ExitCode::SUCCESS);
            }
            // The transcript starts with the task's id; under --json, whose standard output is
            // the messages, it goes to standard error.
            let header = format!("task {} of {} ({})", t.id, t.agent, t.version);
            if global.json {
                eprintln!("{header}");
            } else {
                println!("{header}");
            }
            if req.message.is_none() && !follow {
                // No turn to wait for: the task waits for `task send`.
                return Ok(ExitCode::SUCCESS);
            }
            let until = if follow { Until::TaskEnds } else { Until::TurnEnds };
            match watch(&c, &ns, &t.id, 0, until, global.json).await? {
                End::Turn { stop_reason, error } if stop_reason == "error" => {
                    bail!("the agent's turn failed: {}", error.unwrap_or_else(|| "no reason given".into()))
                }
                End::Turn { .. } => {}
                End::Task(t) if t.status == "completed" => {}
                End::Task(t) => match t.reason {
                    Some(reason) => bail!("task {} {}: {reason}", t.id, t.status),
                    None => bail!("task {} {}", t.id, t.status),
                },
            }
        }
        TaskCmd::Send { ns, id, message } => {
            let message = if message == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).context("cannot read standard input")?;
                text
            } else {
                message
            };
            let accepted = c.send_task_message(&ns, &id, Value::String(message)).await?;
            if global.json {
                output::json(&accepted)?;
            } else {
                println!("sent to {id} as message {}; the task is {}", accepted.seq, accepted.status);
            }
        }
        TaskCmd::Allow { ns, id, request, always } => {
            let outcome = if always { PermissionOutcome::AllowAlways } else { PermissionOutcome::AllowOnce };
            let accepted = c.answer_task_permission(&ns, &id, &request, outcome).await?;
            if global.json {
                output::json(&accepted)?;
            } else {
                println!("allowed {request} {}", if always { "from now on" } else { "once" });
            }
        }
        TaskCmd::Reject { ns, id, request } => {
            let accepted = c.answer_task_permission(&ns, &id, &request, PermissionOutcome::Reject).await?;
            if global.json {
                output::json(&accepted)?;
            } else {
                println!("rejected {request}");
            }
        }
        TaskCmd::Logs { ns, id, follow, after } => {
            if follow {
                watch(&c, &ns, &id, after, Until::TaskEnds, global.json).await?;
            } else {
                print_messages(&c, &ns, &id, after, global.json).await?;
            }
        }
        TaskCmd::State { ns, id, set, if_match } => match set {
            Some(source) => {
                let document = state_document(&source)?;
                let tag = c.put_task_state(&ns, &id, &document, if_match.as_deref()).await?;
                if global.json {
                    output::json(&serde_json::json!({ "etag": tag }))?;
                } else {
                    println!("{tag}");
                }
            }
            None => {
                let state = c.task_state(&ns, &id).await?;
                if global.json {
                    output::json(&serde_json::json!({ "etag": state.etag, "state": state.document }))?;
                } else {
                    output::json(&state.document)?;
                    if let Some(tag) = state.etag {
                        eprintln!("ETag {tag}");
                    }
                }
            }
        },
        TaskCmd::Cancel { ns, id, turn } => {
            if turn {
                let accepted = c.cancel_task_turn(&ns, &id).await?;
                if global.json {
                    output::json(&accepted)?;
                } else {
                    println!("cancelled the prompt in flight of {id}; the task is {}", accepted.status);
                }
            } else {
                let t = c.cancel_task(&ns, &id).await?;
                if global.json {
                    output::json(&t)?;
                } else {
                    println!("task {} is {}", t.id, t.status);
                }
            }
        }
        TaskCmd::List { ns, agent } => {
            // The agent is filtered here rather than with the list's `agent` parameter: the
            // server refuses that parameter beside `limit` and `cursor` (its page parameters
            // deny unknown fields). An agent that is not there is a 404 all the same.
            let name = match agent {
                Some(a) => Some(c.get_agent(&ns, &a).await?.name),
                None => None,
            };
            let (c, ns) = (&c, ns.as_str());
            let mut all =
                all_pages(|cursor| async move { c.list_tasks(ns, None, Some(1000), cursor.as_deref()).await }).await?;
            if let Some(name) = name {
                all.retain(|t| t.agent == name);
            }
            output::list(global.json, &all, &TASK_HEADERS, task_row)?;
        }
        TaskCmd::Show { ns, id } => {
            let t = c.get_task(&ns, &id).await?;
            if global.json {
                output::json(&t)?;
            } else {
                let mut pairs = vec![
                    ("id", t.id.clone()),
                    ("agent", t.agent.clone()),
                    ("version", t.version.clone()),
                    ("status", t.status.clone()),
                ];
                if let Some(r) = &t.reason {
                    pairs.push(("reason", r.clone()));
                }
                pairs.extend([
                    ("sandbox", t.sandbox.clone().unwrap_or_else(|| "-".into())),
                    ("filesystem", t.filesystem.as_ref().map_or("-".into(), |f| format!("{}:{}", f.id, f.mode))),
                    ("permissions", t.permissions.clone()),
                    ("tokens", format!("{} in, {} out", t.usage.input_tokens, t.usage.output_tokens)),
                    ("messages", t.last_message.to_string()),
                    ("created", t.created_at.clone()),
                    ("updated", t.updated_at.clone()),
                    ("ended", t.ended_at.clone().unwrap_or_else(|| "-".into())),
                ]);
                output::fields(&pairs);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--set`'s document: JSON given inline, or read from `@FILE` (`@-`: standard input).
fn state_document(source: &str) -> anyhow::Result<Value> {
    let (text, from) = match source.strip_prefix('@') {
        Some("-") => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("cannot read standard input")?;
            (text, "standard input".to_owned())
        }
        Some(path) => {
            let path = PathBuf::from(path);
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            (text, path.display().to_string())
        }
        None => (source.to_owned(), "--set".to_owned()),
    };
    serde_json::from_str(&text).with_context(|| format!("{from} is not JSON"))
}

/// How long [`watch`] follows a task.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Until the first `turn_end` (or the task's end, if it comes first).
    TurnEnds,
    /// Until the task has ended and every message was shown.
    TaskEnds,
}

/// How a [`watch`] ended.
enum End {
    Turn {
        stop_reason: String,
        error: Option<String>,
    },
    /// The task as it ended.
    Task(Box<Task>),
}

/// Shows the task's messages after `after` as they come, until `until`.
async fn watch(c: &Client, ns: &str, id: &str, after: u64, until: Until, json: bool) -> anyhow::Result<End> {
    let mut render = Render::new(ns, id);
    let mut stream = c.follow_task(ns, id, after).await?;
    while let Some(m) = stream.next().await? {
        show(&mut render, &m, json)?;
        if until == Until::TurnEnds && m.kind == "turn_end" {
            render.finish(&mut std::io::stdout().lock())?;
            let text = |k: &str| m.data.get(k).and_then(Value::as_str).map(str::to_owned);
            return Ok(End::Turn { stop_reason: text("stop_reason").unwrap_or_default(), error: text("error") });
        }
    }
    render.finish(&mut std::io::stdout().lock())?;
    let t = c.get_task(ns, id).await?;
    if !ended(&t.status) {
        bail!("the server ended the messages of {id} while it is {}", t.status);
    }
    Ok(End::Task(Box::new(t)))
}

/// Shows the task's messages after `after` that are there now, a page at a time.
async fn print_messages(c: &Client, ns: &str, id: &str, mut after: u64, json: bool) -> anyhow::Result<()> {
    let mut render = Render::new(ns, id);
    loop {
        let page = c.task_messages(ns, id, after, Some(1000)).await?;
        for m in &page.items {
            show(&mut render, m, json)?;
            after = m.seq;
        }
        if page.next_cursor.is_none() || page.items.is_empty() {
            break;
        }
    }
    render.finish(&mut std::io::stdout().lock())?;
    Ok(())
}

/// Shows one message: rendered for people, or as one JSON line.
fn show(render: &mut Render, m: &TaskMessage, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, m)?;
        out.write_all(b"\n")?;
    } else {
        render.message(&mut out, m)?;
    }
    out.flush().context("cannot write standard output")
}

/// What kind of streamed text a line of the transcript holds so far.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thought,
}

/// Renders a task's messages as a transcript.
struct Render {
    ns: String,
    task: String,
    /// ANSI styles: standard output is a terminal and `NO_COLOR` is not set.
    color: bool,
    /// The streamed text being written, if any.
    open: Option<Open>,
    /// Whether the last thing written ended a line.
    line_start: bool,
    /// Tool calls' titles, by their id.
    tools: HashMap<String, String>,
}

const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

impl Render {
    fn new(ns: &str, task: &str) -> Render {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Render { ns: ns.to_owned(), task: task.to_owned(), color, open: None, line_start: true, tools: HashMap::new() }
    }

    /// Ends the line of streamed text, if one is open.
    fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if !self.line_start {
            out.write_all(b"\n")?;
            self.line_start = true;
        }
        self.open = None;
        Ok(())
    }

    /// Writes a line of its own, `style`d on a terminal.
    fn line(&mut self, out: &mut impl Write, style: &str, text: &str) -> std::io::Result<()> {
        self.finish(out)?;
        if self.color && !style.is_empty() {
            writeln!(out, "{style}{text}{RESET}")
        } else {
            writeln!(out, "{text}")
        }
    }

    /// Writes streamed text of kind `open`, continuing the text of the same kind before it.
    fn stream(&mut self, out: &mut impl Write, open: Open, text: &str) -> std::io::Result<()> {
        if self.open != Some(open) {
            self.finish(out)?;
            self.open = Some(open);
            if open == Open::Thought && !self.color {
                out.write_all(b"thinking: ")?;
                self.line_start = false;
            }
        }
        if text.is_empty() {
            return Ok(());
        }
        match open {
            Open::Thought if self.color => write!(out, "{DIM}{text}{RESET}")?,
            _ => out.write_all(text.as_bytes())?,
        }
        self.line_start = text.ends_with('\n');
        Ok(())
    }

    fn message(&mut self, out: &mut impl Write, m: &TaskMessage) -> std::io::Result<()> {
        let d = &m.data;
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        match m.kind.as_str() {
            "agent_message_chunk" => self.stream(out, Open::Text, &content_text(&d["content"])),
            "agent_thought_chunk" => self.stream(out, Open::Thought, &content_text(&d["content"])),
            "user_message" | "user_message_chunk" => {
                let text = content_text(&d["content"]);
                let quoted: Vec<String> = text.lines().map(|l| format!("> {l}")).collect();
                self.line(out, BOLD, &quoted.join("\n"))
            }
            "tool_call" => {
                let id = s(d, "toolCallId");
                let title = Some(s(d, "title")).filter(|t| !t.is_empty()).unwrap_or_else(|| id.clone());
                self.tools.insert(id, title.clone());
                let kind = s(d, "kind");
                let status = Some(s(d, "status")).filter(|t| !t.is_empty()).unwrap_or_else(|| "pending".into());
                let kind = if kind.is_empty() { String::new() } else { format!(" [{kind}]") };
                self.line(out, "", &format!("tool: {title}{kind} {status}"))
            }
            "tool_call_update" => {
                let id = s(d, "toolCallId");
                if let Some(t) = d.get("title").and_then(Value::as_str) {
                    self.tools.insert(id.clone(), t.to_owned());
                }
                let title = self.tools.get(&id).cloned().unwrap_or(id);
                let status = s(d, "status");
                let said = tool_text(d);
                if status.is_empty() && said.is_empty() {
                    return Ok(());
                }
                let status = if status.is_empty() { "updated".to_owned() } else { status };
                let said = if said.is_empty() { String::new() } else { format!(": {said}") };
                self.line(out, "", &format!("tool: {title} {status}{said}"))
            }
            "plan" => {
                let entries = d.get("entries").and_then(Value::as_array).cloned().unwrap_or_default();
                let mut text = String::from("plan:");
                for e in &entries {
                    let mark = match s(e, "status").as_str() {
                        "completed" => "[x]",
                        "in_progress" => "[>]",
                        _ => "[ ]",
                    };
                    text.push_str(&format!("\n  {mark} {}", s(e, "content")));
                }
                self.line(out, DIM, &text)
            }
            "permission_request" => {
                let request = s(d, "request");
                let call = &d["tool_call"];
                let title = Some(s(call, "title"))
                    .filter(|t| !t.is_empty())
                    .or_else(|| self.tools.get(&s(call, "toolCallId")).cloned())
                    .unwrap_or_else(|| "a tool call".into());
                let kind = s(call, "kind");
                let kind = if kind.is_empty() { String::new() } else { format!(" [{kind}]") };
                let expires = d
                    .get("expires_in_seconds")
                    .and_then(Value::as_u64)
                    .map(|n| format!(", rejected in {n}s unless answered"))
                    .unwrap_or_default();
                let (ns, task) = (&self.ns, &self.task);
                let text = format!(
                    "permission wanted: {title}{kind} ({request}{expires})\n  \
                     allow:  bulkhead task allow --ns {ns} {task} {request} [--always]\n  \
                     reject: bulkhead task reject --ns {ns} {task} {request}"
                );
                self.line(out, BOLD, &text)
            }
            "permission_decision" => {
                let by = s(d, "by");
                let by = if by.is_empty() { String::new() } else { format!(" by {by}") };
                self.line(out, DIM, &format!("permission {}: {}{by}", s(d, "request"), s(d, "outcome")))
            }
            "turn_end" => {
                let mut text = format!("-- turn ended: {}", s(d, "stop_reason"));
                if let Some(u) = d.get("usage") {
                    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
                    text.push_str(&format!(" ({} tokens in, {} out)", n("input_tokens"), n("output_tokens")));
                }
                if let Some(e) = d.get("error").and_then(Value::as_str) {
                    text.push_str(&format!(": {e}"));
                }
                self.line(out, DIM, &text)
            }
            "status" => {
                let reason = d.get("reason").and_then(Value::as_str).map(|r| format!(": {r}")).unwrap_or_default();
                self.line(out, DIM, &format!("-- task {}{reason}", s(d, "status")))
            }
            "cancel" => self.line(out, DIM, "-- cancel of the prompt in flight asked"),
            "error" => self.line(out, BOLD, &format!("error: {}", s(d, "message"))),
            "log" => {
                let text = ["line", "text", "message"]
                    .iter()
                    .find_map(|k| d.get(*k).and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_else(|| d.to_string());
                self.line(out, DIM, &format!("log: {text}"))
            }
            // Updates people need not see (available commands, modes, session info, ...).
            _ => Ok(()),
        }
    }
}

/// The text of an ACP content block, or of an array of them; other blocks by their kind.
fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks.iter().map(content_text).collect::<Vec<_>>().join(""),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("text") | None => o.get("text").and_then(Value::as_str).unwrap_or_default().to_owned(),
            Some("resource_link") => {
                format!("[{}]", o.get("uri").and_then(Value::as_str).unwrap_or("resource"))
            }
            Some(other) => format!("[{other}]"),
        },
        _ => String::new(),
    }
}

/// The first line of what a tool call update says (its text content, or the path of a diff),
/// at most 120 characters.
fn tool_text(d: &Value) -> String {
    let Some(items) = d.get("content").and_then(Value::as_array) else {
        return String::new();
    };
    let said = items
        .iter()
        .find_map(|c| match c.get("type").and_then(Value::as_str) {
            Some("content") => Some(content_text(&c["content"])),
            Some("diff") => c.get("path").and_then(Value::as_str).map(|p| format!("diff of {p}")),
            Some("terminal") => Some("terminal".to_owned()),
            _ => None,
        })
        .unwrap_or_default();
    let first = said.lines().next().unwrap_or_default();
    if first.chars().count() > 120 {
        format!("{}...", first.chars().take(117).collect::<String>())
    } else {
        first.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: &str, data: Value) -> TaskMessage {
        TaskMessage { seq: 1, kind: kind.to_owned(), created_at: String::new(), data }
    }

    fn render(messages: &[TaskMessage]) -> String {
        let mut r = Render::new("acme", "tsk_1");
        r.color = false;
        let mut out = Vec::new();
        for m in messages {
            r.message(&mut out, m).unwrap();
        }
        r.finish(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn text(kind: &str, t: &str) -> TaskMessage {
        message(kind, serde_json::json!({"content": {"type": "text", "text": t}}))
    }

    #[test]
    fn a_turn_reads_as_a_transcript() {
        let out = render(&[
            message("user_message", serde_json::json!({"content": [{"type": "text", "text": "write a.txt hi"}]})),
            text("agent_thought_chunk", "turn 1: "),
            text("agent_thought_chunk", "write"),
            message(
                "plan",
                serde_json::json!({"entries": [{"content": "answer", "status": "in_progress", "priority": "medium"}]}),
            ),
            message(
                "tool_call",
                serde_json::json!({"toolCallId": "w1", "title": "Write a.txt", "kind": "edit", "status": "pending"}),
            ),
            message(
                "permission_request",
                serde_json::json!({"request": "perm_1", "tool_call": {"toolCallId": "w1"}, "expires_in_seconds": 600}),
            ),
            message(
                "permission_decision",
                serde_json::json!({"request": "perm_1", "outcome": "allow_once", "by": "person"}),
            ),
            message(
                "tool_call_update",
                serde_json::json!({"toolCallId": "w1", "status": "completed",
                                   "content": [{"type": "content", "content": {"type": "text", "text": "wrote a.txt"}}]}),
            ),
            text("agent_message_chunk", "wrote "),
            text("agent_message_chunk", "a.txt"),
            message("turn_end", serde_json::json!({"stop_reason": "end_turn"})),
        ]);
        let want = "> write a.txt hi\n\
                    thinking: turn 1: write\n\
                    plan:\n  [>] answer\n\
                    tool: Write a.txt [edit] pending\n\
                    permission wanted: Write a.txt (perm_1, rejected in 600s unless answered)\n  \
                    allow:  bulkhead task allow --ns acme tsk_1 perm_1 [--always]\n  \
                    reject: bulkhead task reject --ns acme tsk_1 perm_1\n\
                    permission perm_1: allow_once by person\n\
                    tool: Write a.txt completed: wrote a.txt\n\
                    wrote a.txt\n\
                    -- turn ended: end_turn\n";
        assert_eq!(out, want);
    }

    #[test]
    fn task_filesystems() {
        let f = parse_task_fs("fs_1").unwrap();
        assert_eq!((f.id.as_str(), f.mode), ("fs_1", None));
        assert_eq!(parse_task_fs("fs_1:ro").unwrap().mode.as_deref(), Some("ro"));
        assert!(parse_task_fs("fs_1:rx").is_err() && parse_task_fs(":rw").is_err());
    }
}
