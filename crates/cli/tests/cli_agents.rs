//! Agents and tasks through the real CLI against the real `bulkhead serve`, with the echo-py
//! test agent (the official Python ACP SDK) in real sandboxes: `agent create`, `push` of a
//! directory (symlinks kept as symlinks, the same content the same version), `versions`,
//! `deploy`, `rollback`, `rm`; `task create` streaming the first turn, `send`, `logs` (rendered,
//! `--after`, `--json` as NDJSON, `--follow` until the task ends), permission requests asked of a
//! person and answered with `allow` and `reject`, `state` with ETags, `cancel`, `list`, `show`;
//! and one clear error line with a non-zero exit for what cannot be done.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{text, Server};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

/// How long a turn of the agent may take (its sandbox starting included).
const TURN: Duration = Duration::from_secs(90);

/// A copy of echo-py at `dir` with its SDK as `site-packages/` and a symlink `manifest-link` to
/// `agent.json`.
fn echo_dir(dir: &Path) {
    let copy = |from: &Path, to: &Path| {
        let status = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
        assert!(status.success(), "cp -a {} {}", from.display(), to.display());
    };
    copy(&common::agents::agents_dir().join("echo-py"), dir);
    copy(&common::agents::python_sdk(), &dir.join("site-packages"));
    std::os::unix::fs::symlink("agent.json", dir.join("manifest-link")).unwrap();
}

/// The task's messages as `task logs --json` prints them: one JSON object a line.
fn messages(server: &Server, token: Option<&str>, id: &str) -> Vec<Value> {
    let out = server.ok(token, &["task", "logs", "--ns", "acme", id, "--json"]);
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: an NDJSON line: {l:?}"))).collect()
}

/// Polls the task's messages until `done` holds for them, at most [`TURN`].
fn wait_for(server: &Server, token: Option<&str>, id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + TURN;
    loop {
        let all = messages(server, token, id);
        if done(&all) {
            return all;
        }
        assert!(Instant::now() < deadline, "the messages of {id} within {TURN:?}: {all:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn turns(all: &[Value]) -> usize {
    all.iter().filter(|m| m["type"] == "turn_end").count()
}

fn of_type(all: &[Value], kind: &str) -> usize {
    all.iter().filter(|m| m["type"] == kind).count()
}

/// The agent's text replies, in order.
fn replies(all: &[Value]) -> Vec<String> {
    all.iter()
        .filter(|m| m["type"] == "agent_message_chunk")
        .filter_map(|m| m["data"]["content"]["text"].as_str().map(str::to_owned))
        .collect()
}

/// The request id of the `n`th permission request (from 1).
fn request(all: &[Value], n: usize) -> String {
    let r = all.iter().filter(|m| m["type"] == "permission_request").nth(n - 1).expect("a permission request");
    r["data"]["request"].as_str().expect("its id").to_owned()
}

/// The `tsk_…` of a transcript's first line, `task tsk_… of AGENT (VERSION)`.
fn task_id(transcript: &str) -> String {
    let first = transcript.lines().next().unwrap_or_default();
    let id = first.strip_prefix("task ").and_then(|r| r.split_whitespace().next()).unwrap_or_default();
    assert!(id.starts_with("tsk_"), "a task id first: {transcript}");
    id.to_owned()
}

#[test]
fn agents_and_tasks_through_the_cli() {
    let work = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let server = Server::start(&work.path().join("data"));
    server.ok(None, &["namespace", "create", "acme", "--cpu", "2", "--memory", "2GiB"]);
    let key = server.json(None, &["key", "create", "--ns", "acme", "dev", "--role", "developer"]);
    let token = key["token"].as_str().unwrap().to_owned();
    let dev = Some(token.as_str());
    let bundle = work.path().join("echo");
    echo_dir(&bundle);
    let dir = bundle.to_str().unwrap();

    // Create; no version yet, so no task either.
    let a = server.json(dev, &["agent", "create", "--ns", "acme", "echo"]);
    assert!(a["id"].as_str().unwrap().starts_with("agt_") && a["name"] == "echo", "{a}");
    assert!(server.ok(dev, &["agent", "show", "--ns", "acme", "echo"]).contains("none: deploy one"));
    let err = server.fails(dev, &["task", "create", "--ns", "acme", "--agent", "echo", "hello"]);
    assert!(err.contains("no deployed version"), "{err}");

    // Push the directory: a new version, the bytes sent; the same content again is that version.
    let out = server.cli(dev, &["agent", "push", "--ns", "acme", "echo", dir]);
    let said = text(&out.stderr);
    assert!(out.status.success(), "push: {said}");
    assert!(
        said.trim_end().lines().count() == 1 && said.starts_with("pushed ") && said.contains("new version ver_"),
        "{said:?}"
    );
    let again = server.json(dev, &["agent", "push", "--ns", "acme", "echo", dir]);
    assert_eq!(again["new"], false, "{again}");
    let v1 = again["version"]["id"].as_str().unwrap().to_owned();
    assert!(said.contains(&v1), "{said} names {v1}");
    assert_eq!(again["version"]["manifest"]["command"], serde_json::json!(["python3", "/agent/agent.py"]));
    let versions = server.ok(dev, &["agent", "versions", "--ns", "acme", "echo"]);
    assert!(
        versions.starts_with("ID") && versions.contains(&v1) && versions.contains("python3 /agent/agent.py"),
        "{versions}"
    );
    let deployed = server.json(dev, &["agent", "deploy", "--ns", "acme", "echo", &v1]);
    assert_eq!(deployed["active_version"].as_str(), Some(v1.as_str()), "{deployed}");
    let list = server.json(dev, &["agent", "list", "--ns", "acme"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert!(server.ok(dev, &["agent", "list", "--ns", "acme"]).contains(&v1));

    // A task with a first message: the turn streams, and the command exits when it ends.
    let out = server.cli(dev, &["task", "create", "--ns", "acme", "--agent", "echo", "hello"]);
    let transcript = text(&out.stdout);
    assert!(out.status.success(), "task create: {}{transcript}", text(&out.stderr));
    assert!(transcript.contains("\necho: hello\n"), "{transcript}");
    assert!(transcript.contains("> hello\n") && transcript.contains("thinking: turn 1: hello"), "{transcript}");
    assert!(transcript.contains("plan:\n  [>] answer `hello`"), "{transcript}");
    assert!(transcript.trim_end().ends_with("-- turn ended: end_turn"), "{transcript}");
    let id = task_id(&transcript);

    // Send a message; the bundle's symlink is a symlink in the agent's sandbox.
    let sent = server.ok(dev, &["task", "send", "--ns", "acme", &id, "shell readlink /agent/manifest-link"]);
    assert!(sent.starts_with(&format!("sent to {id} as message ")), "{sent}");
    let all = wait_for(&server, dev, &id, |m| turns(m) >= 2);
    assert_eq!(replies(&all), ["echo: hello", "exit 0\nagent.json\n"], "{all:#?}");
    let seqs: Vec<u64> = all.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "each message once, in order");
    let logs = server.ok(dev, &["task", "logs", "--ns", "acme", &id]);
    assert!(logs.contains("echo: hello") && logs.contains("> shell readlink /agent/manifest-link\n"), "{logs}");
    assert!(logs.contains("exit 0\nagent.json\n"), "{logs}");
    let first_turn = all.iter().find(|m| m["type"] == "turn_end").unwrap()["seq"].as_u64().unwrap().to_string();
    let later = server.ok(dev, &["task", "logs", "--ns", "acme", &id, "--after", &first_turn]);
    assert!(!later.contains("echo: hello") && later.contains("agent.json"), "{later}");

    // State: empty, written, read back with its ETag; a stale ETag is refused.
    assert_eq!(server.ok(dev, &["task", "state", "--ns", "acme", &id]).trim(), "{}");
    let tag = server.ok(dev, &["task", "state", "--ns", "acme", &id, "--set", r#"{"step": 1, "notes": ["a"]}"#]);
    let tag = tag.trim().to_owned();
    assert!(tag.starts_with('"'), "{tag}");
    let state = server.json(dev, &["task", "state", "--ns", "acme", &id]);
    assert_eq!(state["state"], serde_json::json!({"step": 1, "notes": ["a"]}), "{state}");
    assert_eq!(state["etag"].as_str(), Some(tag.as_str()), "{state}");
    let file = work.path().join("state.json");
    std::fs::write(&file, br#"{"step": 2}"#).unwrap();
    let at_file = format!("@{}", file.display());
    let newer = server.ok(dev, &["task", "state", "--ns", "acme", &id, "--set", &at_file, "--if-match", &tag]);
    let err = server.fails(dev, &["task", "state", "--ns", "acme", &id, "--set", &at_file, "--if-match", &tag]);
    assert!(err.contains("412"), "a stale ETag: {err}");
    let out = server.cli(dev, &["task", "state", "--ns", "acme", &id]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), serde_json::json!({"step": 2}));
    assert_eq!(text(&out.stderr).trim(), format!("ETag {}", newer.trim()));
    let err = server.fails(dev, &["task", "state", "--ns", "acme", &id, "--set", "{"]);
    assert!(err.contains("not JSON"), "{err}");

    // List and show.
    let tasks = server.json(dev, &["task", "list", "--ns", "acme", "--agent", "echo"]);
    assert!(tasks.as_array().unwrap().iter().any(|t| t["id"] == id.as_str() && t["status"] == "running"), "{tasks}");
    let shown = server.ok(dev, &["task", "show", "--ns", "acme", &id]);
    assert!(shown.contains("status:") && shown.contains("running") && shown.contains(&v1), "{shown}");

    // Permissions asked of a person: the request shows the commands that answer it.
    let fs = server.json(dev, &["fs", "create", "--ns", "acme", "work", "--size", "64MiB"]);
    let fs = fs["id"].as_str().unwrap().to_owned();
    let args = [
        "task",
        "create",
        "--ns",
        "acme",
        "--agent",
        "echo",
        "--fs",
        &fs,
        "--ask",
        "--detach",
        "write a.txt from the cli",
    ];
    let asked = server.ok(dev, &args);
    let asked = asked.trim().to_owned();
    assert!(asked.starts_with("tsk_") && !asked.contains(char::is_whitespace), "--detach prints the id only: {asked}");
    let all = wait_for(&server, dev, &asked, |m| of_type(m, "permission_request") >= 1);
    let req = request(&all, 1);
    let logs = server.ok(dev, &["task", "logs", "--ns", "acme", &asked]);
    assert!(logs.contains(&format!("bulkhead task allow --ns acme {asked} {req}")), "{logs}");
    let allowed = server.ok(dev, &["task", "allow", "--ns", "acme", &asked, &req]);
    assert_eq!(allowed.trim(), format!("allowed {req} once"));
    let all = wait_for(&server, dev, &asked, |m| turns(m) >= 1);
    assert_eq!(replies(&all).last().map(String::as_str), Some("wrote a.txt"), "{all:#?}");
    assert_eq!(server.ok(dev, &["fs", "cat", "--ns", "acme", &fs, "a.txt"]), "from the cli");
    server.ok(dev, &["task", "send", "--ns", "acme", &asked, "write b.txt never"]);
    let all = wait_for(&server, dev, &asked, |m| of_type(m, "permission_request") >= 2);
    server.ok(dev, &["task", "reject", "--ns", "acme", &asked, &request(&all, 2)]);
    let all = wait_for(&server, dev, &asked, |m| turns(m) >= 2);
    assert_eq!(replies(&all).last().map(String::as_str), Some("refused"), "{all:#?}");
    assert!(server.fails(dev, &["fs", "cat", "--ns", "acme", &fs, "b.txt"]).contains("404"));

    // `logs --follow` runs until the task ends; a cancel ends it.
    let follower = Command::new(BIN)
        .args(["task", "logs", "--ns", "acme", &asked, "--follow"])
        .env("BULKHEAD_URL", &server.url)
        .env("BULKHEAD_TOKEN", &token)
        .env_remove("BULKHEAD_NAMESPACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let cancelled = server.ok(dev, &["task", "cancel", "--ns", "acme", &asked]);
    assert_eq!(cancelled.trim(), format!("task {asked} is cancelled"));
    let out = follower.wait_with_output().unwrap();
    let followed = text(&out.stdout);
    assert!(out.status.success(), "logs --follow: {}", text(&out.stderr));
    assert!(followed.contains("wrote a.txt") && followed.trim_end().ends_with("-- task cancelled"), "{followed}");
    let err = server.fails(dev, &["task", "send", "--ns", "acme", &asked, "hello?"]);
    assert!(err.contains("409") && err.contains("cancelled"), "{err}");
    assert_eq!(server.json(dev, &["task", "show", "--ns", "acme", &asked])["status"], "cancelled");

    // A turn that kills the agent fails the task: the transcript, then one error line.
    let out = server.cli(dev, &["task", "create", "--ns", "acme", "--agent", "echo", "exit 3"]);
    assert!(!out.status.success(), "a failed task exits non-zero: {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(err.starts_with("error: task tsk_") && err.contains(" failed"), "{err}");
    assert!(text(&out.stdout).contains("-- task failed"), "{}", text(&out.stdout));

    // Unknown agents, tasks and versions: one line each, non-zero.
    let err = server.fails(dev, &["task", "create", "--ns", "acme", "--agent", "nope", "hello"]);
    assert!(err.starts_with("error: ") && err.contains("nope"), "{err}");
    let err = server.fails(dev, &["agent", "show", "--ns", "acme", "nope"]);
    assert!(err.contains("404") && err.contains("nope"), "{err}");
    let err = server.fails(dev, &["agent", "push", "--ns", "acme", "nope", dir]);
    assert!(err.contains("404"), "{err}");
    assert!(server.fails(dev, &["task", "show", "--ns", "acme", "tsk_nope"]).contains("404"));
    let err = server.fails(dev, &["agent", "deploy", "--ns", "acme", "echo", "ver_nope"]);
    assert!(err.contains("ver_nope"), "{err}");
    let err = server.fails(dev, &["agent", "push", "--ns", "acme", "echo", work.path().join("data").to_str().unwrap()]);
    assert!(err.contains("no agent.json"), "{err}");

    // A second version deployed by the push, then rolled back.
    std::fs::write(bundle.join("NOTES"), b"version two\n").unwrap();
    let pushed = server.json(dev, &["agent", "push", "--ns", "acme", "echo", dir, "--deploy"]);
    let v2 = pushed["version"]["id"].as_str().unwrap().to_owned();
    assert!(pushed["new"] == true && v2 != v1, "{pushed}");
    assert_eq!(pushed["deployed"]["active_version"].as_str(), Some(v2.as_str()), "{pushed}");
    let back = server.json(dev, &["agent", "rollback", "--ns", "acme", "echo"]);
    assert_eq!(back["active_version"].as_str(), Some(v1.as_str()), "{back}");

    // An agent with a running task stays; once its tasks have ended it goes.
    let err = server.fails(dev, &["agent", "rm", "--ns", "acme", "echo"]);
    assert!(err.contains("409"), "{err}");
    assert_eq!(server.ok(dev, &["task", "cancel", "--ns", "acme", &id]).trim(), format!("task {id} is cancelled"));
    assert_eq!(server.ok(dev, &["agent", "rm", "--ns", "acme", "echo"]).trim(), "deleted agent echo");
    assert!(server.fails(dev, &["agent", "show", "--ns", "acme", "echo"]).contains("404"));
}
