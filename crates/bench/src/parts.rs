//! Where an exec's time goes: the exec round trip over HTTP beside each of its parts, measured
//! interleaved in the same run (rounds of a few of each, so that whatever else the machine
//! does falls on every part alike):
//! - HTTP round trips through the same client on its keep-alive connection: `GET /healthz`
//!   (no authentication) and an authorized `GET` of the sandbox (authentication, one decision,
//!   one store read);
//! - the supervisor round trip alone: `bulkhead_runtime`'s exec client straight to the
//!   sandbox's socket, no HTTP, no store;
//! - a bare fork/exec of `/bin/true` on the host, and (on cgroup v1, where one thread can move)
//!   from a thread in the sandbox's cgroups, under its cpu quota;
//! - in this process, on the same disk as the server's data: one authorization decision
//!   (built-in policies), an audit append and the exec counter's write to the usage ledger,
//!   each once waiting for its fsync and once with the fsync grouped in the background.
//!
//! The parts overlap (an authorized GET contains the decision), so their shares do not add
//! up to the whole; each says what that part alone costs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulkhead_api::ExecRequest;
use bulkhead_client::Client;
use bulkhead_core::audit::AuditEvent;
use bulkhead_core::{Quotas, Role};
use bulkhead_policy::{Engine, PrincipalRef, Request, ResourceRef};
use bulkhead_runtime::cgroup::{Cgroups, Version};
use bulkhead_runtime::{ExecEvent, ExecSpec};
use bulkhead_store::prelude::*;
use bulkhead_store::sqlite::{AuditSync, SqliteStore};
use bulkhead_store::{NamespaceRow, UsageDelta};
use serde::Serialize;

use crate::{stat, Stat};

/// Each part runs this many times in a row in every round.
const PER_ROUND: usize = 10;
/// Decisions timed together: one is too short for the clock.
const DECISION_BATCH: u32 = 1000;

/// One part of an exec's time.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub name: String,
    pub stat: Stat,
    /// This part's p50 over the exec round trip's p50.
    pub share_of_exec_p50: f64,
}

/// The exec round trip and its parts.
#[derive(Debug, Clone, Serialize)]
pub struct ExecParts {
    pub exec_round_trip: Stat,
    /// The host's bare fork/exec of `/bin/true`, interleaved with the execs.
    pub fork_exec: Stat,
    pub exec_vs_fork_p50: f64,
    pub parts: Vec<Part>,
    /// Why the fork/exec in the sandbox's cgroup is missing, when it is.
    pub cgroup_fork_skipped: Option<String>,
}

/// Where the exec of `true` in sandbox `id` of namespace `ns` spends its time; about `execs`
/// samples of each part. `state_dir` is the server's (for the supervisor's socket), `scratch`
/// a directory on the disk of the server's data dir (for the in-process store).
#[allow(clippy::too_many_arguments)]
pub async fn exec_parts(
    c: &Client,
    ns: &str,
    id: &str,
    state_dir: &Path,
    cgroups: &Cgroups,
    scratch: &Path,
    execs: usize,
) -> anyhow::Result<(Vec<Duration>, ExecParts)> {
    let truth = ExecRequest { cmd: vec!["true".into()], ..Default::default() };
    let socket = supervisor_socket(state_dir, id);
    let cgroup = SandboxCgroup::of(cgroups, ns, id);
    let store = Stores::open(scratch).await?;
    let decider = Decider::new()?;

    let rounds = execs.div_ceil(PER_ROUND).max(1);
    let mut s = Samples::default();
    for _ in 0..rounds {
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            let r = c.exec(ns, id, &truth).await?;
            s.exec.push(t.elapsed());
            if r.exit_code != 0 {
                bail!("`true` exited {}", r.exit_code);
            }
        }
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            c.health().await?;
            s.healthz.push(t.elapsed());
        }
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            c.get_sandbox(ns, id).await?;
            s.get.push(t.elapsed());
        }
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            supervisor_true(&socket, id).await?;
            s.supervisor.push(t.elapsed());
        }
        s.fork.extend(fork_exec_true(PER_ROUND)?);
        if let Ok(cg) = &cgroup {
            s.cgroup_fork.extend(cg.fork_exec_true(PER_ROUND)?);
        }
        for _ in 0..PER_ROUND {
            s.decision.push(decider.batch());
        }
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            store.each.append_audit("bench", exec_event()).await?;
            s.audit_each.push(t.elapsed());
        }
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            store.grouped.append_audit("bench", exec_event()).await?;
            s.audit_grouped.push(t.elapsed());
        }
        let delta = UsageDelta { exec_count: 1, ..Default::default() };
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            store.each.add_usage("bench", 0, &delta).await?;
            s.usage_each.push(t.elapsed());
        }
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            store.grouped.add_usage("bench", 0, &delta).await?;
            s.usage_grouped.push(t.elapsed());
        }
    }
    // The in-process chains are whole.
    for st in [&store.each, &store.grouped] {
        if !st.verify_audit("bench").await?.ok {
            bail!("the bench's own audit chain does not verify");
        }
    }
    let exec = stat(s.exec.clone());
    let fork = stat(s.fork.clone());
    let part = |name: &str, samples: Vec<Duration>| {
        let st = stat(samples);
        Part { name: name.to_owned(), stat: st, share_of_exec_p50: st.p50_ms / exec.p50_ms }
    };
    let mut parts = vec![
        part("HTTP: GET /healthz (keep-alive)", s.healthz),
        part("HTTP: authorized GET of the sandbox", s.get),
        part("authorization decision (built-in policies)", s.decision),
        part("audit append, waits for its fsync", s.audit_each),
        part("audit append, fsync grouped (not waited)", s.audit_grouped),
        part("usage: exec counter, waits for its fsync", s.usage_each),
        part("usage: exec counter, fsync grouped", s.usage_grouped),
        part("supervisor round trip (socket, no HTTP)", s.supervisor),
        part("fork/exec of /bin/true, host", s.fork),
    ];
    let cgroup_fork_skipped = match cgroup {
        Ok(_) => {
            parts.push(part("fork/exec of /bin/true, sandbox's cgroup", s.cgroup_fork));
            None
        }
        Err(why) => Some(why),
    };
    let report = ExecParts {
        exec_round_trip: exec,
        fork_exec: fork,
        exec_vs_fork_p50: exec.p50_ms / fork.p50_ms,
        parts,
        cgroup_fork_skipped,
    };
    Ok((s.exec, report))
}

#[derive(Default)]
struct Samples {
    exec: Vec<Duration>,
    healthz: Vec<Duration>,
    get: Vec<Duration>,
    supervisor: Vec<Duration>,
    fork: Vec<Duration>,
    cgroup_fork: Vec<Duration>,
    decision: Vec<Duration>,
    audit_each: Vec<Duration>,
    audit_grouped: Vec<Duration>,
    usage_each: Vec<Duration>,
    usage_grouped: Vec<Duration>,
}

/// The supervisor's socket of sandbox `id`, where the server's OCI runtime puts it:
/// `<state dir>/sandboxes/<id>/control/supervisor.sock`.
fn supervisor_socket(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("sandboxes").join(id).join("control").join("supervisor.sock")
}

/// `true` through the supervisor at `socket`, as the server starts an exec, to its exit.
async fn supervisor_true(socket: &Path, id: &str) -> anyhow::Result<()> {
    // Built from its wire form, so fields the protocol adds with defaults need no change here.
    let spec: ExecSpec = serde_json::from_value(serde_json::json!({
        "argv": ["true"], "env": [], "cwd": "/", "timeout_ms": 60_000,
        "max_output_bytes": 1 << 20, "stdin": false,
    }))?;
    let mut stream = bulkhead_runtime::client::exec(socket, id, spec, Vec::new())
        .await
        .with_context(|| format!("exec through {}", socket.display()))?;
    loop {
        match stream.next().await {
            Some(Ok(ExecEvent::Exit(exit))) if exit.exit_code == Some(0) => return Ok(()),
            Some(Ok(ExecEvent::Exit(exit))) => bail!("`true` through the supervisor ended {exit:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the supervisor's stream ended without an exit"),
        }
    }
}

/// `n` fork/execs of `/bin/true` from the calling thread, each timed.
pub fn fork_exec_true(n: usize) -> anyhow::Result<Vec<Duration>> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let s = std::process::Command::new("/bin/true").status()?;
            if !s.success() {
                bail!("/bin/true failed");
            }
            Ok(t.elapsed())
        })
        .collect()
}

/// The `tasks` files of a sandbox's cgroup in every cgroup v1 hierarchy it has. On v1 one
/// thread can join a cgroup alone, and what it forks starts there.
struct SandboxCgroup {
    tasks: Vec<PathBuf>,
}

impl SandboxCgroup {
    /// The sandbox's cgroups, or why a thread cannot join them.
    fn of(cgroups: &Cgroups, ns: &str, id: &str) -> Result<SandboxCgroup, String> {
        if cgroups.version() != Version::V1 {
            return Err("cgroup v2: a thread cannot join a domain cgroup on its own".into());
        }
        let rel = cgroups.sandbox_path(ns, id);
        let root = Path::new("/sys/fs/cgroup");
        let tasks: Vec<PathBuf> = std::fs::read_dir(root)
            .map_err(|e| format!("read {}: {e}", root.display()))?
            .flatten()
            .map(|h| h.path().join(rel.trim_start_matches('/')).join("tasks"))
            .filter(|t| t.exists())
            .collect();
        if !tasks.iter().any(|t| t.starts_with(root.join("cpu"))) {
            return Err(format!("no cpu cgroup at {rel}"));
        }
        Ok(SandboxCgroup { tasks })
    }

    /// `n` fork/execs of `/bin/true` from a thread of this process that joined the sandbox's
    /// cgroups first (its cpu quota, memory and pids limits); the thread ends with the last.
    fn fork_exec_true(&self, n: usize) -> anyhow::Result<Vec<Duration>> {
        let tasks = self.tasks.clone();
        std::thread::spawn(move || {
            // `/proc/thread-self` links to `<pid>/task/<tid>`.
            let link = std::fs::read_link("/proc/thread-self").context("read /proc/thread-self")?;
            let tid = link.file_name().and_then(|t| t.to_str()).context("this thread's id")?.to_owned();
            for t in &tasks {
                std::fs::write(t, &tid).with_context(|| format!("join {}", t.display()))?;
            }
            fork_exec_true(n)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the fork/exec thread panicked"))?
    }
}

/// Two stores of this process on the server's disk: one whose audit appends wait for their
/// fsync, one whose do not.
struct Stores {
    each: SqliteStore,
    grouped: SqliteStore,
}

impl Stores {
    async fn open(dir: &Path) -> anyhow::Result<Stores> {
        std::fs::create_dir_all(dir)?;
        let each = SqliteStore::open(&dir.join("each.db")).await?.with_audit_sync(AuditSync::Each);
        let grouped = SqliteStore::open(&dir.join("grouped.db"))
            .await?
            .with_audit_sync(bulkhead_store::sqlite::DEFAULT_AUDIT_SYNC);
        let ns = NamespaceRow {
            name: "bench".into(),
            isolation: "container".into(),
            quotas: Quotas::DEFAULT,
            created_at_ms: 1,
            updated_at_ms: 1,
            id_start: 1 << 30,
            id_count: 65_536,
            incarnation: bulkhead_core::ids::new_incarnation(),
            egress: None,
            placement: Default::default(),
        };
        each.create_namespace(&ns).await?;
        grouped.create_namespace(&ns).await?;
        Ok(Stores { each, grouped })
    }
}

/// The audit event of an exec of `true`, as the server records it.
fn exec_event() -> AuditEvent {
    AuditEvent {
        time_ms: 1,
        principal: "key:key_bench".into(),
        action: "sandbox.exec".into(),
        resource: "sandbox:bench/sbx_bench".into(),
        decision: "allow".into(),
        status: 200,
        request_id: bulkhead_core::ids::new_id("req_"),
        detail: r#"{"argv":["true"],"exit_code":0}"#.into(),
    }
}

/// The engine with the built-in policies only (as the bench's namespace has), deciding a
/// developer key's `sandbox.exec`.
struct Decider {
    set: bulkhead_policy::CompiledSet,
    principal: PrincipalRef,
    resource: ResourceRef,
}

impl Decider {
    fn new() -> anyhow::Result<Decider> {
        let d = Decider {
            set: Engine::new().builtin(),
            principal: PrincipalRef::Key { id: "key_bench".into(), role: Role::Developer },
            resource: ResourceRef::Sandbox { id: "sbx_bench".into(), project: None },
        };
        if !d.decide() {
            bail!("the built-in policies refuse a developer's exec");
        }
        Ok(d)
    }

    // The engine is asked directly: what is measured is the decision itself.
    #[allow(clippy::disallowed_methods)]
    fn decide(&self) -> bool {
        let req = Request {
            principal: &self.principal,
            namespace: "bench",
            action: "sandbox.exec",
            resource: &self.resource,
            target_role: None,
        };
        self.set.decide(std::hint::black_box(&req)).allowed
    }

    /// The mean time of one decision over a batch.
    fn batch(&self) -> Duration {
        let t = Instant::now();
        for _ in 0..DECISION_BATCH {
            std::hint::black_box(self.decide());
        }
        t.elapsed() / DECISION_BATCH
    }
}
