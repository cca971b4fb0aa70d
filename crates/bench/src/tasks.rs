//! Tasks (`--only tasks`): event in → first message out through Bulkhead (the `POST .../events`
//! of a message, until its first message after the event comes out of the task's message
//! stream), against the same agent program driven directly over its stdio by the bench, a host
//! process of the same agent and SDK, in the same run, the two alternating run by run (target:
//! Bulkhead adds at most 5 ms at the median). Then `--tasks` tasks created at once, each a
//! sandbox running the agent, timed until all run, with the memory their sandboxes' cgroups
//! are charged and the server's own resident memory.
//!
//! The agent is the tests' `echo-py` (`crates/cli/tests/agents/echo-py`, on the official Python
//! ACP SDK, which `scripts/agent-deps` installs on the host): it answers every prompt with a
//! thought, a plan and a message.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulkhead_api::CreateTask;
use bulkhead_client::Client;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::{stat, Stat};

/// The figures of the tasks section.
#[derive(Debug, Serialize)]
pub struct TasksReport {
    /// The agent driven directly over its stdio: prompt written → first `session/update` read.
    pub direct_first_update: Stat,
    /// Through Bulkhead: event posted → first message after it read from the task's stream.
    pub event_to_first_message: Stat,
    /// Bulkhead's median minus the direct one, in milliseconds (target: ≤ 5).
    pub added_p50_ms: f64,
    /// Tasks created at once.
    pub concurrent_tasks: usize,
    /// How many of them ran.
    pub concurrent_running: usize,
    /// From the first create to the last task running, in milliseconds.
    pub concurrent_all_running_ms: f64,
    /// Memory charged to their sandboxes' cgroups while all ran (each its agent: python with the
    /// SDK, the supervisor), in MiB, in all and per task.
    pub concurrent_memory_mib: f64,
    pub concurrent_memory_per_task_mib: f64,
    /// The server's resident memory while they ran, in MiB.
    pub server_rss_mib: f64,
}

/// The echo-py agent's directory in the source tree.
fn agent_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/agents/echo-py")
}

/// The Python ACP SDK's site-packages, as `scripts/agent-deps` installs (and prints) it.
fn python_sdk() -> anyhow::Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/agent-deps");
    let out = std::process::Command::new(&script).output().context("run scripts/agent-deps")?;
    if !out.status.success() {
        bail!("scripts/agent-deps: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// The agent's bundle: its directory with the SDK as `site-packages/`, as a tar.
fn bundle(work: &Path, sdk: &Path) -> anyhow::Result<Vec<u8>> {
    let dir = work.join("bundle");
    std::fs::create_dir_all(&dir)?;
    for (from, to) in [(agent_dir(), dir.join("agent")), (sdk.to_owned(), dir.join("agent/site-packages"))] {
        let status = std::process::Command::new("cp").arg("-a").arg(&from).arg(&to).status()?;
        if !status.success() {
            bail!("copy {} into the bundle", from.display());
        }
    }
    let out = std::process::Command::new("tar").arg("-C").arg(dir.join("agent")).args(["-cf", "-", "."]).output()?;
    if !out.status.success() {
        bail!("tar the bundle: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// The agent as a host process, driven over its stdio.
struct Direct {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    next_id: u64,
    session: String,
}

impl Direct {
    async fn start(sdk: &Path, cwd: &Path) -> anyhow::Result<Direct> {
        let mut child = tokio::process::Command::new("python3")
            .arg(agent_dir().join("agent.py"))
            .env("PYTHONPATH", sdk)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start the agent on the host (python3)")?;
        let stdin = child.stdin.take().context("its stdin")?;
        let lines = BufReader::new(child.stdout.take().context("its stdout")?).lines();
        let mut d = Direct { child, stdin, lines, next_id: 0, session: String::new() };
        let caps = json!({"fs": {"readTextFile": false, "writeTextFile": false}, "terminal": false});
        d.call("initialize", json!({"protocolVersion": 1, "clientCapabilities": caps})).await?;
        let opened = d.call("session/new", json!({"cwd": cwd, "mcpServers": []})).await?;
        d.session = opened["sessionId"].as_str().context("a session id")?.to_owned();
        Ok(d)
    }

    async fn send(&mut self, method: &str, params: Value) -> anyhow::Result<u64> {
        self.next_id += 1;
        let line = json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params});
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(self.next_id)
    }

    async fn line(&mut self) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .context("the agent answers within 60 s")??
            .context("the agent's stdout ended")?;
        Ok(serde_json::from_str(&line)?)
    }

    async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.send(method, params).await?;
        loop {
            let v = self.line().await?;
            if v["id"] == json!(id) && v.get("method").is_none() {
                return Ok(v["result"].clone());
            }
        }
    }

    /// A prompt: the time to its first `session/update`; its answer read to the end.
    async fn prompt(&mut self, text: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let prompt = json!({"sessionId": self.session, "prompt": [{"type": "text", "text": text}]});
        let id = self.send("session/prompt", prompt).await?;
        let mut first = None;
        loop {
            let v = self.line().await?;
            if first.is_none() && v["method"] == "session/update" {
                first = Some(t.elapsed());
            }
            if v["id"] == json!(id) && v.get("method").is_none() {
                return first.context("an update before the answer");
            }
        }
    }
}

/// The section, on a server where `admin` may create namespace `tasks-bench`.
pub async fn measure(admin: &Client, runs: usize, concurrent: usize, server_pid: u32) -> anyhow::Result<TasksReport> {
    let work = tempdir()?;
    let result = measure_in(admin, runs, concurrent, server_pid, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("bulkhead-bench-tasks-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn measure_in(
    admin: &Client,
    runs: usize,
    concurrent: usize,
    server_pid: u32,
    work: &Path,
) -> anyhow::Result<TasksReport> {
    const NS: &str = "tasks-bench";
    let sdk = python_sdk()?;
    let bundle = bundle(work, &sdk)?;
    let quotas = bulkhead_api::Quotas {
        cpu_millis: 1000 * (concurrent as u64 + 2),
        memory_bytes: 1 << 40,
        disk_bytes: 1 << 30,
        max_sandboxes: concurrent as u64 + 2,
        pids_per_sandbox: 256,
        max_sandbox_ttl_seconds: 3600,
        api_requests_per_second: crate::RAISED_API_REQUESTS_PER_SECOND,
        max_concurrent_execs: crate::RAISED_MAX_CONCURRENT_EXECS,
    };
    admin
        .create_namespace(&bulkhead_api::CreateNamespace {
            name: NS.into(),
            isolation: None,
            placement: None,
            egress: None,
            quotas,
        })
        .await
        .context("create the bench's namespace")?;
    let result = async {
        admin.create_agent(NS, "echo").await?;
        let pushed = admin.push_agent(NS, "echo", bundle).await?;
        admin.deploy_agent(NS, "echo", &pushed.version.id).await?;

        // Latency: one task through Bulkhead and the agent on the host, alternating.
        eprintln!("tasks: event in → first message out, {runs} runs against the agent on its stdio ...");
        let task = admin
            .create_task(
                NS,
                &CreateTask {
                    agent: "echo".into(),
                    version: None,
                    filesystem: None,
                    message: None,
                    permissions: None,
                    permission_timeout_seconds: None,
                },
            )
            .await?;
        wait_running(admin, NS, std::slice::from_ref(&task.id)).await?;
        let mut stream = admin.follow_task(NS, &task.id, 0).await?;
        let mut direct = Direct::start(&sdk, work).await?;
        let (mut via, mut raw) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for i in 0..runs + 2 {
            let d = direct.prompt("hello").await?;
            let t = Instant::now();
            let accepted = admin.send_task_message(NS, &task.id, json!("hello")).await?;
            let first = loop {
                let m = stream.next().await?.context("the task's stream ended")?;
                if m.seq > accepted.seq {
                    break t.elapsed();
                }
            };
            // Drain the rest of the turn before the next.
            loop {
                let m = stream.next().await?.context("the task's stream ended")?;
                if m.kind == "turn_end" {
                    break;
                }
            }
            // The first two of each are warm-ups.
            if i >= 2 {
                raw.push(d);
                via.push(first);
            }
        }
        let _ = direct.child.kill().await;
        admin.cancel_task(NS, &task.id).await?;

        // Many at once.
        eprintln!("tasks: {concurrent} at once ...");
        let t = Instant::now();
        let creates: Vec<_> = (0..concurrent)
            .map(|_| {
                let c = admin.clone();
                tokio::spawn(async move {
                    let req = CreateTask {
                        agent: "echo".into(),
                        version: None,
                        filesystem: None,
                        message: None,
                        permissions: None,
                        permission_timeout_seconds: None,
                    };
                    c.create_task(NS, &req).await
                })
            })
            .collect();
        let mut made = Vec::with_capacity(concurrent);
        for h in creates {
            made.push(h.await.context("a create's task")?);
        }
        let ids: Vec<String> = made.iter().filter_map(|r| r.as_ref().ok().map(|t| t.id.clone())).collect();
        if let Some(Err(e)) = made.iter().find(|r| r.is_err()) {
            eprintln!("tasks: {} of {concurrent} were created: {e}", ids.len());
        }
        let running = wait_running(admin, NS, &ids).await?;
        let all_running = t.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let memory = namespace_memory(NS);
        let rss = rss_of(server_pid);
        for id in &ids {
            let _ = admin.cancel_task(NS, id).await;
        }
        let (via, raw) = (stat(via), stat(raw));
        Ok::<_, anyhow::Error>(TasksReport {
            added_p50_ms: via.p50_ms - raw.p50_ms,
            direct_first_update: raw,
            event_to_first_message: via,
            concurrent_tasks: concurrent,
            concurrent_running: running,
            concurrent_all_running_ms: all_running.as_secs_f64() * 1000.0,
            concurrent_memory_mib: memory as f64 / (1 << 20) as f64,
            concurrent_memory_per_task_mib: if running == 0 {
                f64::NAN
            } else {
                memory as f64 / (1 << 20) as f64 / running as f64
            },
            server_rss_mib: rss as f64 / (1 << 20) as f64,
        })
    }
    .await;
    let _ = admin.delete_namespace(NS).await;
    result
}

/// Waits (up to 5 minutes) until each task runs; answers how many do (the others failed).
async fn wait_running(c: &Client, ns: &str, ids: &[String]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut running = 0;
        let mut settled = 0;
        for id in ids {
            match c.get_task(ns, id).await?.status.as_str() {
                "running" => {
                    running += 1;
                    settled += 1;
                }
                "starting" => {}
                _ => settled += 1,
            }
        }
        if settled == ids.len() {
            return Ok(running);
        }
        if Instant::now() > deadline {
            bail!("{} of {} tasks ran within 5 minutes", running, ids.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The memory charged to namespace `ns`'s cgroup (cgroup v1's memory controller, or v2's), any
/// prefix: the sum of what is found.
fn namespace_memory(ns: &str) -> u64 {
    let mut total = 0;
    for (root, file) in [("/sys/fs/cgroup/memory", "memory.usage_in_bytes"), ("/sys/fs/cgroup", "memory.current")] {
        let Ok(prefixes) = std::fs::read_dir(root) else { continue };
        for p in prefixes.flatten() {
            let path = p.path().join(ns).join(file);
            if let Ok(text) = std::fs::read_to_string(&path) {
                total += text.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map_or(0, |k| k * 1024)
}

/// Prints the section's rows.
pub fn print(r: &TasksReport) {
    let row = |name: &str, s: &Stat| println!("{name:<44} {:>6} {:>10.2} {:>10.2}", s.n, s.p50_ms, s.p99_ms);
    row("baseline: the agent on its stdio, first update", &r.direct_first_update);
    row("task: event in → first message out", &r.event_to_first_message);
    println!("  added by Bulkhead at p50: {:+.2} ms (target ≤ +5 ms)", r.added_p50_ms);
    println!(
        "{} tasks at once: {} running after {:.0} ms; their sandboxes {:.0} MiB ({:.1} MiB a task), the server {:.0} MiB",
        r.concurrent_tasks,
        r.concurrent_running,
        r.concurrent_all_running_ms,
        r.concurrent_memory_mib,
        r.concurrent_memory_per_task_mib,
        r.server_rss_mib
    );
}
