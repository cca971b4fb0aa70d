//! The example agent (`examples/acp-agent`, on the official npm ACP SDK) end to end, on real
//! input: a `bulkhead serve` with isolated sandbox networks on the test's own internet, whose
//! OpenAI-compatible model (`model.test`, scripted) the agent reaches through the egress gateway
//! with the API key brokered (it never enters the sandbox). A filesystem holds a small
//! repository with a failing test; a task asked to fix it reads, edits (through the ACP file
//! methods, after asking permission) and runs the test in its sandbox, streaming messages; the
//! filesystem then holds the fix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::host::Host;
use common::internet::Internet;
use serde_json::{json, Value};

const NS: &str = "acme";
const KEY: &str = "sk-test-0123456789abcdef";
const BUGGY: &str = "def add(a, b):\n    return a - b\n";
const FIXED: &str = "def add(a, b):\n    return a + b\n";
const TEST: &str = "from calc import add\nassert add(2, 3) == 5, 'add(2, 3) is not 5'\nprint('1 passed')\n";

struct World {
    internet: Internet,
    host: Host,
    base: String,
    http: reqwest::Client,
}

impl World {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(self.host.admin_token());
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("the server answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn raw(&self, method: reqwest::Method, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.host.admin_token())
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("the server answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn messages(&self, task: &str) -> Vec<Value> {
        let (s, b) = self
            .call(reqwest::Method::GET, &format!("/v1/namespaces/{NS}/tasks/{task}/messages?limit=1000"), None)
            .await;
        assert_eq!(s, 200, "{b}");
        b["items"].as_array().expect("items").clone()
    }
}

/// The example agent's directory with `agent.json` pointed at the test's model.
fn example_bundle(dir: &Path) -> Vec<u8> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/acp-agent");
    assert!(
        example.join("node_modules/@agentclientprotocol/sdk").is_dir(),
        "the example agent's npm packages (scripts/agent-deps installs them)"
    );
    let status = std::process::Command::new("cp").arg("-a").arg(&example).arg(dir.join("agent")).status().expect("cp");
    assert!(status.success());
    let manifest = json!({
        "command": ["node", "/agent/agent.mjs"],
        "protocol": "acp",
        "env": {"OPENAI_BASE_URL": "https://model.test/v1", "OPENAI_MODEL": "scripted"},
        "egress": {"allow": ["model.test:443"], "credentials": [
            {"host": "model.test", "secret": "openai-api-key", "header": "Authorization", "format": "Bearer {secret}"}
        ]},
        "resources": {"memory_bytes": 512u64 << 20, "cpu_millis": 1000}
    });
    std::fs::write(dir.join("agent/agent.json"), manifest.to_string()).expect("agent.json");
    common::agents::bundle(&dir.join("agent"), &[])
}

/// A tar of the repository with the failing test.
fn repository() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, text) in [("calc.py", BUGGY), ("test_calc.py", TEST)] {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        b.append_data(&mut header, name, text.as_bytes()).expect("append");
    }
    b.into_inner().expect("tar")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_agent_fixes_a_failing_test_through_the_model_with_a_brokered_key() {
    let internet = Internet::new();
    let mut host = Host::new();
    let args = internet.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = host.serve(&args);
    let w = World { base: client.base().to_owned(), internet, host, http: reqwest::Client::new() };
    let (s, b) = w
        .call(reqwest::Method::POST, "/v1/namespaces", Some(json!({"name": NS, "quotas": common::roomy_quotas()})))
        .await;
    assert_eq!(s, 201, "{b}");
    let ceiling = json!({"egress": {"allow": ["model.test:443"]}});
    let (s, b) = w.call(reqwest::Method::PATCH, &format!("/v1/namespaces/{NS}"), Some(ceiling)).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/namespaces/{NS}/secrets"),
            Some(json!({"name": "openai-api-key", "value": KEY})),
        )
        .await;
    assert_eq!(s, 201, "{b}");

    // The agent, pushed and deployed.
    let dir = common::tempdir();
    let (s, b) =
        w.call(reqwest::Method::POST, &format!("/v1/namespaces/{NS}/agents"), Some(json!({"name": "coder"}))).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = w
        .raw(
            reqwest::Method::POST,
            &format!("/v1/namespaces/{NS}/agents/coder/versions"),
            "application/x-tar",
            example_bundle(dir.path()),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let version = b["id"].clone();
    let (s, b) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/namespaces/{NS}/agents/coder/deploy"),
            Some(json!({"version": version})),
        )
        .await;
    assert_eq!(s, 200, "{b}");

    // The repository, on a filesystem.
    let (s, b) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/namespaces/{NS}/filesystems"),
            Some(json!({"name": "repo", "size_bytes": 64 << 20})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let fs = b["id"].as_str().expect("id").to_owned();
    let (s, b) = w
        .raw(
            reqwest::Method::PUT,
            &format!("/v1/namespaces/{NS}/filesystems/{fs}/archive"),
            "application/x-tar",
            repository(),
        )
        .await;
    assert!(s == 200 || s == 204, "{s} {b}");

    // The task.
    let (s, b) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/namespaces/{NS}/tasks"),
            Some(json!({"agent": "coder", "filesystem": {"id": fs},
            "message": "fix the failing test in test_calc.py"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let task = b["id"].as_str().expect("id").to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let all = loop {
        let all = w.messages(&task).await;
        if all.iter().any(|m| m["type"] == "turn_end") {
            break all;
        }
        let (_, t) = w.call(reqwest::Method::GET, &format!("/v1/namespaces/{NS}/tasks/{task}"), None).await;
        assert!(t["status"] != "failed", "the task failed: {t}\n{all:#?}");
        assert!(tokio::time::Instant::now() < deadline, "no turn end within 180 s: {all:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let end = all.iter().find(|m| m["type"] == "turn_end").expect("a turn end");
    assert_eq!(end["data"]["stop_reason"], "end_turn", "{all:#?}");
    // It read, edited and ran, each a tool call that completed.
    let completed: Vec<&str> = all
        .iter()
        .filter(|m| m["type"] == "tool_call_update" && m["data"]["status"] == "completed")
        .filter_map(|m| m["data"]["toolCallId"].as_str())
        .collect();
    assert_eq!(completed.len(), 3, "{all:#?}");
    let kinds: Vec<&str> =
        all.iter().filter(|m| m["type"] == "tool_call").filter_map(|m| m["data"]["kind"].as_str()).collect();
    assert_eq!(kinds, ["read", "edit", "execute"], "{all:#?}");
    assert!(all.iter().any(|m| m["type"] == "permission_decision" && m["data"]["kind"] == "edit"), "{all:#?}");
    let text: String = all
        .iter()
        .filter(|m| m["type"] == "agent_message_chunk")
        .filter_map(|m| m["data"]["content"]["text"].as_str())
        .collect();
    assert!(
        text.contains("Fixed add(). The test said:") && text.contains("exit code 0") && text.contains("1 passed"),
        "{text}"
    );
    // The usage the model reported is the task's.
    let (_, t) = w.call(reqwest::Method::GET, &format!("/v1/namespaces/{NS}/tasks/{task}"), None).await;
    assert!(t["usage"]["input_tokens"].as_u64().unwrap_or(0) >= 400, "{t}");
    assert!(t["usage"]["sandbox_seconds"].as_f64().unwrap_or(0.0) > 0.0, "{t}");

    // The fix is on the filesystem.
    let resp = w
        .http
        .get(format!("{}/v1/namespaces/{NS}/filesystems/{fs}/files?path=calc.py", w.base))
        .bearer_auth(w.host.admin_token())
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.text().await.expect("text"), FIXED);

    // The model saw the key, brokered by the gateway; the agent's sandbox never had it.
    let model = |r: &common::internet::Request| r.path == "/v1/chat/completions";
    let requests = w.internet.wait_requests(|rs| rs.iter().filter(|r| model(r)).count() >= 4);
    let requests: Vec<_> = requests.into_iter().filter(model).collect();
    assert_eq!(requests.len(), 4, "{requests:?}");
    for r in &requests {
        let auth = r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("authorization")).map(|(_, v)| v.as_str());
        assert_eq!(auth, Some(format!("Bearer {KEY}").as_str()), "{r:?}");
    }
    let found = all.iter().any(|m| m.to_string().contains(KEY));
    assert!(!found, "the key is in no message");

    let (s, b) = w.call(reqwest::Method::POST, &format!("/v1/namespaces/{NS}/tasks/{task}/cancel"), None).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("cancelled")), "{b}");

    // An owner forbids edits: the agent asks, is refused by the policy, and the file stays.
    let (s, b) = w
        .raw(
            reqwest::Method::PUT,
            &format!("/v1/namespaces/{NS}/filesystems/{fs}/archive"),
            "application/x-tar",
            repository(),
        )
        .await;
    assert!(s == 200 || s == 204, "{s} {b}");
    let forbid = r#"forbid (principal, action == Bulkhead::Action::"task.tool_call", resource) when { context.kind == "edit" };"#;
    let (s, b) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/namespaces/{NS}/policies"),
            Some(json!({"name": "no-edits", "policy": forbid})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/namespaces/{NS}/tasks"),
            Some(json!({"agent": "coder", "filesystem": {"id": fs},
            "message": "fix the failing test in test_calc.py"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let task = b["id"].as_str().expect("id").to_owned();
    let all = wait_turns(&w, &task, 1).await;
    let refused = all.iter().any(|m| {
        m["type"] == "permission_decision"
            && m["data"]["kind"] == "edit"
            && m["data"]["outcome"] == "reject"
            && m["data"]["by"] == "policy"
    });
    assert!(refused, "{all:#?}");
    let failed = all.iter().any(|m| m["type"] == "tool_call_update" && m["data"]["status"] == "failed");
    assert!(failed, "the edit's tool call failed: {all:#?}");
    let resp = w
        .http
        .get(format!("{}/v1/namespaces/{NS}/filesystems/{fs}/files?path=calc.py", w.base))
        .bearer_auth(w.host.admin_token())
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.text().await.expect("text"), BUGGY);
    let (s, b) = w.call(reqwest::Method::POST, &format!("/v1/namespaces/{NS}/tasks/{task}/cancel"), None).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("cancelled")), "{b}");
}

/// Waits until task `task` is `want` (at most `within`); answers it.
async fn wait_status(w: &World, task: &str, want: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (s, t) = w.call(reqwest::Method::GET, &format!("/v1/namespaces/{NS}/tasks/{task}"), None).await;
        assert_eq!(s, 200, "{t}");
        if t["status"] == want {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "task {task} is not {want} within {} s: {t}", within.as_secs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the task has had `n` turns; answers its messages.
async fn wait_turns(w: &World, task: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let all = w.messages(task).await;
        if all.iter().filter(|m| m["type"] == "turn_end").count() >= n {
            return all;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} turns within 120 s: {all:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn last_reply(all: &[Value]) -> String {
    let last_turn = all.iter().rposition(|m| m["type"] == "user_message").unwrap_or(0);
    all[last_turn..]
        .iter()
        .filter(|m| m["type"] == "agent_message_chunk")
        .filter_map(|m| m["data"]["content"]["text"].as_str())
        .collect()
}

/// A server's cgroups of one sandbox: none may be left once it is gone.
fn cgroups_of(sandbox: &str) -> Vec<String> {
    let out = std::process::Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "5", "-type", "d", "-name", sandbox])
        .output()
        .expect("find");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_reads_its_state_goes_idle_resumes_and_its_messages_survive_a_crash() {
    let mut host = Host::new();
    let client = host.serve(&[]);
    let base = client.base().to_owned();
    let w = World { base, internet: Internet::new(), host, http: reqwest::Client::new() };
    let (s, b) = w
        .call(reqwest::Method::POST, "/v1/namespaces", Some(json!({"name": NS, "quotas": common::roomy_quotas()})))
        .await;
    assert_eq!(s, 201, "{b}");
    // echo-py, idle after 2 s without a prompt.
    let dir = common::tempdir();
    let agent = dir.path().join("echo");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(common::agents::agents_dir().join("echo-py"))
        .arg(&agent)
        .status()
        .expect("cp");
    assert!(status.success());
    let manifest = json!({"command": ["python3", "/agent/agent.py"], "protocol": "acp",
        "env": {"PYTHONPATH": "/agent/site-packages"}, "idle_timeout_seconds": 2});
    std::fs::write(agent.join("agent.json"), manifest.to_string()).expect("agent.json");
    let sdk = common::agents::python_sdk();
    let bundle = common::agents::bundle(&agent, &[(&sdk, "site-packages")]);
    let (s, b) =
        w.call(reqwest::Method::POST, &format!("/v1/namespaces/{NS}/agents"), Some(json!({"name": "echo"}))).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = w
        .raw(reqwest::Method::POST, &format!("/v1/namespaces/{NS}/agents/echo/versions"), "application/x-tar", bundle)
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/namespaces/{NS}/agents/echo/deploy"),
            Some(json!({"version": b["id"]})),
        )
        .await;
    assert_eq!(s, 200, "{b}");

    // The task's state, written by a person, read by the agent from inside with its token.
    let (s, b) =
        w.call(reqwest::Method::POST, &format!("/v1/namespaces/{NS}/tasks"), Some(json!({"agent": "echo"}))).await;
    assert_eq!(s, 201, "{b}");
    let task = b["id"].as_str().expect("id").to_owned();
    let (s, b) = w
        .call(reqwest::Method::PUT, &format!("/v1/namespaces/{NS}/tasks/{task}/state"), Some(json!({"note": "kept"})))
        .await;
    assert_eq!(s, 204, "{b}");
    // `If-Match: *` writes over whatever version there is; a stale ETag does not.
    let put = |etag: &'static str| {
        w.http
            .put(format!("{}/v1/namespaces/{NS}/tasks/{task}/state", w.base))
            .bearer_auth(w.host.admin_token())
            .header("if-match", etag)
            .json(&json!({"note": "kept"}))
            .send()
    };
    assert_eq!(put("*").await.expect("answer").status(), 204);
    assert_eq!(put("\"1\"").await.expect("answer").status(), 412);
    let (s, b) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/namespaces/{NS}/tasks/{task}/events"),
            Some(json!({"type": "message", "content": "state"})),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let all = wait_turns(&w, &task, 1).await;
    let reply = last_reply(&all);
    assert!(reply.contains("\"note\"") && reply.contains("kept"), "{reply}");

    // Idle: its sandbox, processes and cgroups are gone; the conversation is kept.
    let running = wait_status(&w, &task, "running", Duration::from_secs(10)).await;
    let sandbox = running["sandbox"].as_str().expect("a sandbox").to_owned();
    let idle = wait_status(&w, &task, "idle", Duration::from_secs(60)).await;
    assert!(idle.get("sandbox").is_none(), "{idle}");
    let (_, s) = w.call(reqwest::Method::GET, &format!("/v1/namespaces/{NS}/sandboxes/{sandbox}"), None).await;
    assert_eq!(s["status"], "deleted", "{s}");
    assert_eq!(cgroups_of(&sandbox), Vec::<String>::new());
    // The next event resumes it, in a new sandbox.
    let (s, b) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/namespaces/{NS}/tasks/{task}/events"),
            Some(json!({"type": "message", "content": "hello again"})),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let all = wait_turns(&w, &task, 2).await;
    assert_eq!(last_reply(&all), "echo: hello again");
    let (_, t) = w.call(reqwest::Method::GET, &format!("/v1/namespaces/{NS}/tasks/{task}"), None).await;
    assert_ne!(t["sandbox"].as_str(), Some(sandbox.as_str()), "{t}");

    // A crash of the server: the messages are all there after it, numbered as before, and a
    // stream resumed from the middle continues without a gap or a duplicate.
    let before = w.messages(&task).await;
    let mut host = w.host;
    let client = host.restart("isolated");
    let w = World { base: client.base().to_owned(), internet: w.internet, host, http: w.http };
    let after = w.messages(&task).await;
    assert_eq!(after[..before.len()], before[..]);
    let cut = before[before.len() / 2]["seq"].as_u64().expect("seq");
    let resp = w
        .http
        .get(format!("{}/v1/namespaces/{NS}/tasks/{task}/messages", w.base))
        .bearer_auth(w.host.admin_token())
        .header("accept", "text/event-stream")
        .header("last-event-id", cut.to_string())
        .send()
        .await
        .expect("a stream");
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let want = after.last().and_then(|m| m["seq"].as_u64()).expect("seq");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let ids = loop {
        let ids: Vec<u64> =
            text.lines().filter_map(|l| l.strip_prefix("id: ")).filter_map(|s| s.parse().ok()).collect();
        if ids.last() == Some(&want) {
            break ids;
        }
        use futures_util::StreamExt;
        let chunk = tokio::time::timeout_at(deadline, stream.next()).await.expect("events within 30 s");
        text.push_str(std::str::from_utf8(&chunk.expect("more").expect("bytes")).expect("utf-8"));
    };
    assert_eq!(ids, (cut + 1..=want).collect::<Vec<_>>());
    // The task waits, idle, and resumes on its next event.
    wait_status(&w, &task, "idle", Duration::from_secs(30)).await;
    let (s, b) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/namespaces/{NS}/tasks/{task}/events"),
            Some(json!({"type": "message", "content": "once more"})),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let all = wait_turns(&w, &task, 3).await;
    assert_eq!(last_reply(&all), "echo: once more");
    let (s, b) = w.call(reqwest::Method::POST, &format!("/v1/namespaces/{NS}/tasks/{task}/cancel"), None).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("cancelled")), "{b}");
}
