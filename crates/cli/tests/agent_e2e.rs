//! The example agent (`examples/acp-agent`, on the official npm ACP SDK) end to end, on real
//! input: a `bulkhead serve` with isolated sandbox networks on the test's own internet, whose
//! OpenAI-compatible model (`model.test`, scripted) the agent reaches through the egress gateway
//! with the API key brokered (it never enters the sandbox). A filesystem holds a small
//! repository with a failing test; a task asked to fix it reads, edits (through the ACP file
//! methods, after asking permission) and runs the test in its sandbox, streaming messages; the
//! filesystem then holds the fix.

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
    let requests: Vec<_> = w.internet.requests().into_iter().filter(|r| r.path == "/v1/chat/completions").collect();
    assert_eq!(requests.len(), 4, "{requests:?}");
    for r in &requests {
        let auth = r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("authorization")).map(|(_, v)| v.as_str());
        assert_eq!(auth, Some(format!("Bearer {KEY}").as_str()), "{r:?}");
    }
    let found = all.iter().any(|m| m.to_string().contains(KEY));
    assert!(!found, "the key is in no message");

    let (s, b) = w.call(reqwest::Method::POST, &format!("/v1/namespaces/{NS}/tasks/{task}/cancel"), None).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("cancelled")), "{b}");
}
