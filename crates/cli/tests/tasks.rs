//! Agents and tasks end to end on a real server: bundles pushed and deployed, tasks whose
//! agents (written with the official ACP SDKs, or hostile) run in real sandboxes on real
//! filesystems, messages streamed as server-sent events, permissions answered by policies and
//! by people, the workspace's mode decided by the principal's rights, cancels, and hostile agents
//! that fail their own task only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{assert_envelope, Harness, Reply};
use serde_json::{json, Value};

/// Pushes `bundle` as a version of agent `name` (created when missing) and deploys it; returns
/// the version's id.
async fn deploy(h: &Harness, ns: &str, token: &str, name: &str, bundle: Vec<u8>) -> String {
    let r = h.call(Method::POST, &format!("/v1/namespaces/{ns}/agents"), Some(token), json!({"name": name})).await;
    assert!(r.status == StatusCode::CREATED || r.status == StatusCode::CONFLICT, "{}", r.body);
    let r = push(h, ns, token, name, bundle).await;
    assert!(r.status == StatusCode::CREATED || r.status == StatusCode::OK, "{}", r.body);
    let version = r.body["id"].as_str().expect("a version").to_owned();
    let r = h
        .call(
            Method::POST,
            &format!("/v1/namespaces/{ns}/agents/{name}/deploy"),
            Some(token),
            json!({"version": version}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["active_version"], json!(version));
    version
}

async fn push(h: &Harness, ns: &str, token: &str, name: &str, bundle: Vec<u8>) -> Reply {
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/namespaces/{ns}/agents/{name}/versions"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/x-tar")
        .body(Body::from(bundle))
        .expect("request");
    h.send(req).await
}

async fn filesystem(h: &Harness, ns: &str, token: &str) -> String {
    let r = h
        .call(
            Method::POST,
            &format!("/v1/namespaces/{ns}/filesystems"),
            Some(token),
            json!({"name": "repo", "size_bytes": 64 << 20}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_str().expect("id").to_owned()
}

async fn event(h: &Harness, ns: &str, token: &str, task: &str, body: Value) -> Reply {
    h.call(Method::POST, &format!("/v1/namespaces/{ns}/tasks/{task}/events"), Some(token), body).await
}

/// The task's messages (a page after `after`).
async fn messages(h: &Harness, ns: &str, token: &str, task: &str, after: u64) -> Vec<Value> {
    let r = h
        .call(
            Method::GET,
            &format!("/v1/namespaces/{ns}/tasks/{task}/messages?after={after}&limit=1000"),
            Some(token),
            Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["items"].as_array().expect("items").clone()
}

/// Waits (polling the messages, at most `within`) until `done` holds for them; returns them.
async fn wait_messages(
    h: &Harness,
    ns: &str,
    token: &str,
    task: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let all = messages(h, ns, token, task, 0).await;
        if done(&all) {
            return all;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "the messages within {} s: {}",
                within.as_secs(),
                serde_json::to_string_pretty(&all).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent's text replies, in order (its `agent_message_chunk`s).
fn replies(all: &[Value]) -> Vec<String> {
    all.iter()
        .filter(|m| m["type"] == "agent_message_chunk")
        .filter_map(|m| m["data"]["content"]["text"].as_str().map(str::to_owned))
        .collect()
}

fn turns(all: &[Value]) -> usize {
    all.iter().filter(|m| m["type"] == "turn_end").count()
}

async fn task(h: &Harness, ns: &str, token: &str, id: &str) -> Value {
    let r = h.call(Method::GET, &format!("/v1/namespaces/{ns}/tasks/{id}"), Some(token), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

async fn wait_status(h: &Harness, ns: &str, token: &str, id: &str, want: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let t = task(h, ns, token, id).await;
        if t["status"] == want {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} is {} within {} s, not {want}: {t}",
            t["status"],
            within.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn read_fs_file(h: &Harness, ns: &str, token: &str, fs: &str, path: &str) -> Reply {
    h.call(Method::GET, &format!("/v1/namespaces/{ns}/filesystems/{fs}/files?path={path}"), Some(token), Value::Null)
        .await
}

const TURN: Duration = Duration::from_secs(60);

async fn wait_ended(h: &Harness, ns: &str, token: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + TURN;
    loop {
        let t = task(h, ns, token, id).await;
        if matches!(t["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "task {id} did not end: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_sdk_agent_converses_edits_its_workspace_with_permission_and_is_cancelled() {
    let h = Harness::with_namespaces(&["acme"]).await;
    let (_, dev) = h.create_key("acme", "dev", "developer").await;
    let bundle = common::agents::echo_py();
    let version = deploy(&h, "acme", &dev, "echo", bundle.clone()).await;
    // The same bundle again is the same version: content-addressed.
    let again = push(&h, "acme", &dev, "echo", bundle).await;
    assert_eq!((again.status, again.body["id"].clone()), (StatusCode::OK, json!(version)));
    let fs = filesystem(&h, "acme", &dev).await;

    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/acme/tasks",
            Some(&dev),
            json!({"agent": "echo", "filesystem": {"id": fs}, "message": "hello"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["filesystem"]["mode"], "rw", "a developer gets the workspace read-write");
    let id = r.body["id"].as_str().expect("id").to_owned();

    // The first message is answered; the turn is recorded with its thought and plan.
    let all = wait_messages(&h, "acme", &dev, &id, TURN, |m| turns(m) >= 1).await;
    assert_eq!(replies(&all), ["echo: hello"], "{all:?}");
    let kinds: Vec<&str> = all.iter().filter_map(|m| m["type"].as_str()).collect();
    for kind in ["user_message", "status", "agent_thought_chunk", "plan", "agent_message_chunk", "turn_end"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let seqs: Vec<u64> = all.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "numbered from 1 without a gap");
    assert_eq!(task(&h, "acme", &dev, &id).await["status"], "running");

    // An edit through the ACP fs methods, allowed by the policies: the file is on the filesystem.
    let r = event(&h, "acme", &dev, &id, json!({"type": "message", "content": "write notes.txt from the agent"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let all = wait_messages(&h, "acme", &dev, &id, TURN, |m| turns(m) >= 2).await;
    assert_eq!(replies(&all).last().map(String::as_str), Some("wrote notes.txt"), "{all:?}");
    assert!(all.iter().any(|m| m["type"] == "permission_decision"
        && m["data"]["outcome"] == "allow_once"
        && m["data"]["by"] == "policy"));
    let file = read_fs_file(&h, "acme", &dev, &fs, "notes.txt").await;
    assert_eq!((file.status, file.text()), (StatusCode::OK, "from the agent".to_owned()));

    // An owner forbids edits: the next one is refused, and the file stays as it was.
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/acme/policies",
            Some(&h.admin),
            json!({"name": "no-edits", "policy": "forbid (principal, action == Bulkhead::Action::\"task.tool_call\", resource) when { context.kind == \"edit\" };"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let policy = r.body["id"].as_str().expect("a policy id").to_owned();
    event(&h, "acme", &dev, &id, json!({"type": "message", "content": "write notes.txt overwritten"})).await;
    let all = wait_messages(&h, "acme", &dev, &id, TURN, |m| turns(m) >= 3).await;
    assert_eq!(replies(&all).last().map(String::as_str), Some("refused"), "{all:?}");
    let file = read_fs_file(&h, "acme", &dev, &fs, "notes.txt").await;
    assert_eq!(file.text(), "from the agent");
    // The decision is in the namespace's audit chain, as the agent's sandbox's.
    let audit = h.call(Method::GET, "/v1/namespaces/acme/audit?limit=1000", Some(&h.admin), Value::Null).await;
    let denied = audit.body["items"].as_array().expect("records").iter().any(|r| {
        r["action"] == "task.tool_call"
            && r["decision"] == "deny"
            && r["principal"].as_str().is_some_and(|p| p.starts_with("sandbox:"))
    });
    assert!(denied, "{}", audit.body);

    // A path outside /workspace is refused by the client, whatever the agent asks.
    let r =
        h.call(Method::DELETE, &format!("/v1/namespaces/acme/policies/{policy}"), Some(&h.admin), Value::Null).await;
    assert!(r.status.is_success(), "{}", r.body);
    event(&h, "acme", &dev, &id, json!({"type": "message", "content": "read ../../etc/shadow"})).await;
    let all = wait_messages(&h, "acme", &dev, &id, TURN, |m| turns(m) >= 4).await;
    let last = replies(&all).last().cloned().unwrap_or_default();
    assert!(last.starts_with("read failed"), "{last}");

    // A cancel event stops the prompt in flight; the task goes on.
    event(&h, "acme", &dev, &id, json!({"type": "message", "content": "sleep 60"})).await;
    let thought = |n: usize| {
        move |m: &[Value]| m.iter().any(|x| x["data"]["content"]["text"].as_str() == Some(&format!("turn {n}: sleep")))
    };
    wait_messages(&h, "acme", &dev, &id, TURN, thought(5)).await;
    let r = event(&h, "acme", &dev, &id, json!({"type": "cancel"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let all = wait_messages(&h, "acme", &dev, &id, Duration::from_secs(20), |m| turns(m) >= 5).await;
    let last = all.iter().rev().find(|m| m["type"] == "turn_end").expect("a turn end");
    assert_eq!(last["data"]["stop_reason"], "cancelled", "{all:?}");
    assert_eq!(task(&h, "acme", &dev, &id).await["status"], "running");

    // Cancelling the task mid-prompt: the task is cancelled, its sandbox gone.
    event(&h, "acme", &dev, &id, json!({"type": "message", "content": "sleep 60"})).await;
    wait_messages(&h, "acme", &dev, &id, TURN, thought(6)).await;
    let sandbox = task(&h, "acme", &dev, &id).await["sandbox"].as_str().expect("a sandbox").to_owned();
    let r = h.call(Method::POST, &format!("/v1/namespaces/acme/tasks/{id}/cancel"), Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    let s = h.call(Method::GET, &format!("/v1/namespaces/acme/sandboxes/{sandbox}"), Some(&dev), Value::Null).await;
    assert_eq!(s.body["status"], "deleted", "{}", s.body);
    let r = event(&h, "acme", &dev, &id, json!({"type": "message", "content": "hello?"})).await;
    assert_envelope(&r, "conflict");
}

#[tokio::test]
async fn a_principal_that_may_only_read_the_filesystem_gets_a_read_only_workspace() {
    let h = Harness::with_namespaces(&["acme"]).await;
    let (key, dev) = h.create_key("acme", "reader", "developer").await;
    deploy(&h, "acme", &dev, "echo", common::agents::echo_py()).await;
    let fs = filesystem(&h, "acme", &dev).await;
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/acme/policies",
            Some(&h.admin),
            json!({"name": "read-only", "policy": format!("forbid (principal == Bulkhead::Key::\"{key}\", action == Bulkhead::Action::\"filesystem.mount_rw\", resource);")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/acme/tasks",
            Some(&dev),
            json!({"agent": "echo", "filesystem": {"id": fs},
                "message": "shell touch /workspace/x; echo done; grep ' /agent ' /proc/self/mountinfo"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["filesystem"]["mode"], "ro", "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    let all = wait_messages(&h, "acme", &dev, &id, TURN, |m| turns(m) >= 1).await;
    let reply = replies(&all).join("");
    assert!(reply.starts_with("exit 0") && reply.contains("Read-only file system"), "the write fails inside: {reply}");
    // The agent's code is mounted from a view that names no host path, data dir or device.
    let data_dir = h.dir.path().display().to_string();
    assert!(reply.contains(" /agent ") && reply.contains("overlay"), "{reply}");
    assert!(!reply.contains(&data_dir) && !reply.contains("/agents/") && !reply.contains("/dev/"), "{reply}");
    // Asking for read-write outright is refused, not lowered.
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/acme/tasks",
            Some(&dev),
            json!({"agent": "echo", "filesystem": {"id": fs, "mode": "rw"}}),
        )
        .await;
    assert_envelope(&r, "forbidden");
    h.call(Method::POST, &format!("/v1/namespaces/acme/tasks/{id}/cancel"), Some(&dev), Value::Null).await;
}

#[tokio::test]
async fn permissions_asked_of_a_person_are_answered_by_events_and_time_out_as_rejections() {
    let h = Harness::with_namespaces(&["acme"]).await;
    let (_, dev) = h.create_key("acme", "dev", "developer").await;
    deploy(&h, "acme", &dev, "echo", common::agents::echo_py()).await;
    let fs = filesystem(&h, "acme", &dev).await;
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/acme/tasks",
            Some(&dev),
            json!({"agent": "echo", "filesystem": {"id": fs}, "permissions": "ask", "permission_timeout_seconds": 2,
                   "message": "write a.txt first"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    let all = wait_messages(&h, "acme", &dev, &id, TURN, |m| m.iter().any(|x| x["type"] == "permission_request")).await;
    let request = all.iter().find(|x| x["type"] == "permission_request").expect("a request")["data"]["request"]
        .as_str()
        .expect("its id")
        .to_owned();
    let r =
        event(&h, "acme", &dev, &id, json!({"type": "permission", "request": request, "outcome": "allow_once"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let all = wait_messages(&h, "acme", &dev, &id, TURN, |m| turns(m) >= 1).await;
    assert_eq!(replies(&all).last().map(String::as_str), Some("wrote a.txt"));
    assert_eq!(read_fs_file(&h, "acme", &dev, &fs, "a.txt").await.text(), "first");
    // Unanswered, a request is rejected when its time is up.
    event(&h, "acme", &dev, &id, json!({"type": "message", "content": "write b.txt second"})).await;
    let all = wait_messages(&h, "acme", &dev, &id, TURN, |m| turns(m) >= 2).await;
    assert_eq!(replies(&all).last().map(String::as_str), Some("refused"));
    assert!(all.iter().any(|m| m["type"] == "permission_decision" && m["data"]["by"] == "timeout"), "{all:?}");
    assert_eq!(read_fs_file(&h, "acme", &dev, &fs, "b.txt").await.status, StatusCode::NOT_FOUND);
    // An answer to a request that does not wait is refused, and changes nothing.
    let r =
        event(&h, "acme", &dev, &id, json!({"type": "permission", "request": "perm_nope", "outcome": "bogus"})).await;
    assert_envelope(&r, "invalid_request");
    let r =
        event(&h, "acme", &dev, &id, json!({"type": "permission", "request": request, "outcome": "allow_once"})).await;
    assert_envelope(&r, "conflict");
    // Bodies are one JSON object and nothing more.
    let raw = |body: &'static str| {
        Request::builder()
            .method(Method::POST)
            .uri(format!("/v1/namespaces/acme/tasks/{id}/events"))
            .header("authorization", format!("Bearer {dev}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request")
    };
    for body in [r#"{"type": "cancel"} trailing"#, r#"["message", "hi"]"#, r#"{"type": "cancel", "content": "x"}"#] {
        assert_envelope(&h.send(raw(body)).await, "invalid_request");
    }
    h.call(Method::POST, &format!("/v1/namespaces/acme/tasks/{id}/cancel"), Some(&dev), Value::Null).await;
}

#[tokio::test]
async fn messages_stream_as_server_sent_events_and_resume_without_gap_or_duplicate() {
    let h = Harness::with_namespaces(&["acme"]).await;
    let (_, dev) = h.create_key("acme", "dev", "developer").await;
    deploy(&h, "acme", &dev, "echo", common::agents::echo_py()).await;
    let r = h
        .call(Method::POST, "/v1/namespaces/acme/tasks", Some(&dev), json!({"agent": "echo", "message": "chunks 40"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/namespaces/acme/tasks/{id}/messages");
    let mut body = h.open_events(&path, &dev).await;
    let first = common::read_events(&mut body, TURN, |r| r.len() >= 10).await;
    drop(body);
    let cut = first[9]["seq"].as_u64().expect("seq");
    wait_messages(&h, "acme", &dev, &id, TURN, |m| turns(m) >= 1).await;
    // Resume after the tenth: the rest, each once, in order.
    let req = Request::builder()
        .uri(&path)
        .header("authorization", format!("Bearer {dev}"))
        .header("accept", "text/event-stream")
        .header("last-event-id", cut.to_string())
        .body(Body::empty())
        .expect("request");
    let resp = tower::ServiceExt::oneshot(h.app.clone(), req).await.expect("infallible");
    let mut body = resp.into_body();
    let total = messages(&h, "acme", &dev, &id, 0).await.len() as u64;
    let rest = common::read_events(&mut body, TURN, |r| r.last().and_then(|m| m["seq"].as_u64()) == Some(total)).await;
    let seqs: Vec<u64> = first[..10].iter().chain(rest.iter()).filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    let chunks: Vec<String> = replies(&rest.iter().chain(first.iter()).cloned().collect::<Vec<_>>());
    assert_eq!(chunks.len(), 40);
    h.call(Method::POST, &format!("/v1/namespaces/acme/tasks/{id}/cancel"), Some(&dev), Value::Null).await;
}

#[tokio::test]
async fn hostile_agents_fail_their_own_task_with_a_reason() {
    let h = Harness::with_config("runc", |c| c.tasks.answer_timeout = Duration::from_secs(3)).await;
    h.create_namespace("acme").await;
    let (_, dev) = h.create_key("acme", "dev", "developer").await;
    for (agent, needle) in [
        ("garbage", "not JSON-RPC"),
        ("exit", "exited with status 3"),
        ("hang", "did not open a session"),
        ("huge-line", "longer than"),
        ("bad-rpc", "never sent"),
        ("flood", "messages"),
    ] {
        deploy(&h, "acme", &dev, agent, common::agents::hostile(agent)).await;
        let r = h
            .call(Method::POST, "/v1/namespaces/acme/tasks", Some(&dev), json!({"agent": agent, "message": "hi"}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{agent}: {}", r.body);
        let id = r.body["id"].as_str().expect("id").to_owned();
        let t = wait_status(&h, "acme", &dev, &id, "failed", Duration::from_secs(120)).await;
        let reason = t["reason"].as_str().unwrap_or_default();
        // A huge line or a flood may outrun the output the supervisor retains before the server
        // has read it: the task fails naming that.
        let also = if agent == "huge-line" || agent == "flood" { "outran" } else { needle };
        assert!(reason.contains(needle) || reason.contains(also), "{agent}: {reason}");
        assert!(t.get("sandbox").is_none(), "{agent}: its sandbox is gone: {t}");
    }
    // The server serves on.
    let r = h.call(Method::GET, "/healthz", None, Value::Null).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn bundles_and_manifests_are_checked_and_tenants_never_meet() {
    let h = Harness::with_namespaces(&["acme", "globex"]).await;
    let (_, dev) = h.create_key("acme", "dev", "developer").await;
    let (_, other) = h.create_key("globex", "dev", "developer").await;
    let (_, viewer) = h.create_key("acme", "eyes", "viewer").await;
    let r = h.call(Method::POST, "/v1/namespaces/acme/agents", Some(&dev), json!({"name": "coder"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let dir = common::tempdir();
    let write = |manifest: &str| {
        std::fs::write(dir.path().join("agent.json"), manifest).expect("write");
        common::agents::bundle(dir.path(), &[])
    };
    for (manifest, field) in [
        (r#"{"protocol": "acp"}"#, "command"),
        (r#"{"command": [], "protocol": "acp"}"#, "command"),
        (r#"{"command": ["x"], "protocol": "mcp"}"#, "protocol"),
        (r#"{"command": ["x"], "protocol": "acp", "surprise": 1}"#, "surprise"),
        (r#"{"command": ["x"], "protocol": "acp", "idle_timeout_seconds": 0}"#, "idle_timeout_seconds"),
        (r#"{"command": ["x"], "protocol": "acp", "filesystem_mode": "rwx"}"#, "filesystem_mode"),
        (r#"{"command": ["x"], "protocol": "acp", "egress": {"allow": ["not a host!"]}}"#, "egress.allow"),
        (r#"{"command": ["x"], "protocol": "acp", "env": {"1X": "y"}}"#, "env"),
        (r#"{"command": ["x"], "protocol": "acp", "resources": {"memory_bytes": 0}}"#, "resources.memory_bytes"),
        (r#"not json"#, "agent.json"),
    ] {
        let r = push(&h, "acme", &dev, "coder", write(manifest)).await;
        assert_envelope(&r, "invalid_request");
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{manifest}: {message}");
    }
    // No agent.json; an escaping entry.
    std::fs::remove_file(dir.path().join("agent.json")).expect("rm");
    let r = push(&h, "acme", &dev, "coder", common::agents::bundle(dir.path(), &[])).await;
    assert_envelope(&r, "invalid_request");
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    header.set_mode(0o644);
    let mut b = tar::Builder::new(Vec::new());
    let name = b"../escape";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_cksum();
    b.append(&header, &b"x"[..]).expect("append");
    let r = push(&h, "acme", &dev, "coder", b.into_inner().expect("tar")).await;
    assert_envelope(&r, "invalid_request");
    // A namespace's bundles stay within its disk quota.
    let mut tiny = common::namespace_body("tiny");
    tiny["quotas"]["disk_bytes"] = json!(64 << 10);
    let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), tiny).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    h.call(Method::POST, "/v1/namespaces/tiny/agents", Some(&h.admin), json!({"name": "big"})).await;
    std::fs::write(dir.path().join("agent.json"), r#"{"command": ["true"], "protocol": "acp"}"#).expect("write");
    std::fs::write(dir.path().join("weights.bin"), vec![7u8; 100 << 10]).expect("write");
    let r = push(&h, "tiny", &h.admin, "big", common::agents::bundle(dir.path(), &[])).await;
    assert_envelope(&r, "quota_exceeded");
    std::fs::remove_file(dir.path().join("weights.bin")).expect("rm");
    // Roles and tenants.
    let ok = write(r#"{"command": ["true"], "protocol": "acp"}"#);
    assert_envelope(&push(&h, "acme", &viewer, "coder", ok.clone()).await, "forbidden");
    assert_envelope(&push(&h, "globex", &dev, "coder", ok.clone()).await, "not_found");
    let r = h.call(Method::GET, "/v1/namespaces/globex/agents/coder", Some(&other), Value::Null).await;
    assert_envelope(&r, "not_found");
    let r = h.call(Method::POST, "/v1/namespaces/globex/tasks", Some(&other), json!({"agent": "coder"})).await;
    assert_envelope(&r, "invalid_request");
    let r = h.call(Method::POST, "/v1/namespaces/acme/tasks", Some(&dev), json!({"agent": "coder"})).await;
    assert_envelope(&r, "conflict");
    // Deploys and rollbacks.
    let v1 = push(&h, "acme", &dev, "coder", ok).await.body["id"].as_str().expect("v1").to_owned();
    let v2 = push(&h, "acme", &dev, "coder", write(r#"{"command": ["false"], "protocol": "acp"}"#)).await.body["id"]
        .as_str()
        .expect("v2")
        .to_owned();
    assert_ne!(v1, v2);
    let r = h.call(Method::POST, "/v1/namespaces/acme/agents/coder/rollback", Some(&dev), Value::Null).await;
    assert_envelope(&r, "conflict");
    for v in [&v1, &v2] {
        let r =
            h.call(Method::POST, "/v1/namespaces/acme/agents/coder/deploy", Some(&dev), json!({"version": v})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    // New tasks run the active version; after a rollback, the previous one.
    let r = h.call(Method::POST, "/v1/namespaces/acme/tasks", Some(&dev), json!({"agent": "coder"})).await;
    assert_eq!((r.status, r.body["version"].clone()), (StatusCode::CREATED, json!(v2)), "{}", r.body);
    // (Its agent exits at once: each task ends before the next, within the namespace's cpu.)
    wait_ended(&h, "acme", &dev, r.body["id"].as_str().expect("id")).await;
    let r = h.call(Method::POST, "/v1/namespaces/acme/agents/coder/rollback", Some(&dev), Value::Null).await;
    assert_eq!((r.status, r.body["active_version"].clone()), (StatusCode::OK, json!(v1)), "{}", r.body);
    let r = h.call(Method::POST, "/v1/namespaces/acme/tasks", Some(&dev), json!({"agent": "coder"})).await;
    assert_eq!((r.status, r.body["version"].clone()), (StatusCode::CREATED, json!(v1)), "{}", r.body);
    wait_ended(&h, "acme", &dev, r.body["id"].as_str().expect("id")).await;
    // Lists filter by agent.
    let r = h.call(Method::GET, "/v1/namespaces/acme/tasks?agent=coder&limit=10", Some(&viewer), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let items = r.body["items"].as_array().expect("items");
    assert!(items.len() >= 2 && items.iter().all(|t| t["agent"] == "coder"), "{}", r.body);
    let r = h.call(Method::GET, "/v1/namespaces/acme/tasks?agent=nosuch", Some(&viewer), Value::Null).await;
    assert_envelope(&r, "invalid_request");
    // A version named outright runs, whatever is deployed.
    let r =
        h.call(Method::POST, "/v1/namespaces/acme/tasks", Some(&dev), json!({"agent": "coder", "version": v2})).await;
    assert_eq!((r.status, r.body["version"].clone()), (StatusCode::CREATED, json!(v2)), "{}", r.body);
    wait_ended(&h, "acme", &dev, r.body["id"].as_str().expect("id")).await;
    let r = h.call(Method::GET, "/v1/namespaces/acme/agents/coder/versions", Some(&viewer), Value::Null).await;
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(2), "{}", r.body);
    let r = h
        .call(Method::POST, "/v1/namespaces/acme/agents/coder/deploy", Some(&dev), json!({"version": "ver_nope"}))
        .await;
    assert_envelope(&r, "invalid_request");
    // Deleted, the agent takes its unpacked bundles with it.
    let digests: Vec<String> = r_versions(&h, &dev).await;
    let dirs: Vec<_> =
        digests.iter().map(|d| bulkhead_server::service::agents::bundle_dir(&h.state, "acme", d)).collect();
    assert_eq!(dirs.len(), 2);
    assert!(dirs.iter().all(|d| d.join("agent.json").is_file()), "{dirs:?}");
    let r = h.call(Method::DELETE, "/v1/namespaces/acme/agents/coder", Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
    let r = h.call(Method::GET, "/v1/namespaces/acme/agents/coder", Some(&dev), Value::Null).await;
    assert_envelope(&r, "not_found");
}

async fn r_versions(h: &Harness, token: &str) -> Vec<String> {
    let r = h.call(Method::GET, "/v1/namespaces/acme/agents/coder/versions", Some(token), Value::Null).await;
    r.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|v| v["digest"].as_str().expect("digest").to_owned())
        .collect()
}

#[tokio::test]
async fn a_task_whose_sandbox_is_deleted_goes_idle_and_resumes_on_its_next_message() {
    let h = Harness::with_namespaces(&["acme"]).await;
    let (_, dev) = h.create_key("acme", "dev", "developer").await;
    deploy(&h, "acme", &dev, "echo", common::agents::echo_py()).await;
    let r =
        h.call(Method::POST, "/v1/namespaces/acme/tasks", Some(&dev), json!({"agent": "echo", "message": "one"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    wait_messages(&h, "acme", &dev, &id, TURN, |m| turns(m) >= 1).await;
    // A message larger than the bound is kept as its size and hash.
    let r = event(
        &h,
        "acme",
        &dev,
        &id,
        json!({"type": "message", "content": "shell head -c 400000 /dev/zero | tr '\\0' x"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let all = wait_messages(&h, "acme", &dev, &id, TURN, |m| turns(m) >= 2).await;
    let big = all.iter().rfind(|m| m["type"] == "agent_message_chunk").expect("the reply");
    assert_eq!(big["data"]["truncated"], json!(true), "{big}");
    assert!(big["data"]["bytes"].as_u64().unwrap_or(0) > 400_000, "{big}");
    let sandbox = task(&h, "acme", &dev, &id).await["sandbox"].as_str().expect("a sandbox").to_owned();
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/acme/sandboxes/{sandbox}"), Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let t = wait_status(&h, "acme", &dev, &id, "idle", TURN).await;
    assert!(t.get("sandbox").is_none(), "{t}");
    let r = event(&h, "acme", &dev, &id, json!({"type": "message", "content": "two"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let all = wait_messages(&h, "acme", &dev, &id, TURN, |m| turns(m) >= 3).await;
    assert_eq!(replies(&all).last().map(String::as_str), Some("echo: two"));
    h.call(Method::POST, &format!("/v1/namespaces/acme/tasks/{id}/cancel"), Some(&dev), Value::Null).await;
}

#[tokio::test]
async fn a_tasks_sandbox_is_read_as_the_task_and_a_cancel_at_once_leaves_no_sandbox() {
    let h = Harness::with_namespaces(&["acme"]).await;
    let (_, dev) = h.create_key("acme", "dev", "developer").await;
    let (_, viewer) = h.create_key("acme", "eyes", "viewer").await;
    deploy(&h, "acme", &dev, "echo", common::agents::echo_py()).await;
    let r =
        h.call(Method::POST, "/v1/namespaces/acme/tasks", Some(&dev), json!({"agent": "echo", "message": "one"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    wait_messages(&h, "acme", &dev, &id, TURN, |m| turns(m) >= 1).await;
    let sandbox = task(&h, "acme", &dev, &id).await["sandbox"].as_str().expect("a sandbox").to_owned();
    // The agent's output is the conversation: a viewer, who may not read the task, may not read it
    // through the sandbox's processes either.
    let processes = format!("/v1/namespaces/acme/sandboxes/{sandbox}/processes");
    assert_envelope(&h.call(Method::GET, &processes, Some(&viewer), Value::Null).await, "forbidden");
    let r = h.call(Method::GET, &processes, Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let prc = r.body["items"][0]["id"].as_str().expect("the agent's process").to_owned();
    let output = format!("{processes}/{prc}/output?after=0");
    assert_envelope(&h.call(Method::GET, &output, Some(&viewer), Value::Null).await, "forbidden");
    h.call(Method::POST, &format!("/v1/namespaces/acme/tasks/{id}/cancel"), Some(&dev), Value::Null).await;

    // Cancelled as soon as it is created, again and again: no sandbox is left running.
    for _ in 0..3 {
        let r = h
            .call(Method::POST, "/v1/namespaces/acme/tasks", Some(&dev), json!({"agent": "echo", "message": "x"}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let id = r.body["id"].as_str().expect("id").to_owned();
        let r = h.call(Method::POST, &format!("/v1/namespaces/acme/tasks/{id}/cancel"), Some(&dev), Value::Null).await;
        assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{}", r.body);
    }
    let deadline = tokio::time::Instant::now() + TURN;
    loop {
        let r = h.call(Method::GET, "/v1/namespaces/acme/sandboxes?limit=1000", Some(&dev), Value::Null).await;
        let live: Vec<&Value> =
            r.body["items"].as_array().expect("items").iter().filter(|s| s["status"] == "running").collect();
        if live.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "sandboxes of cancelled tasks run on: {live:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
