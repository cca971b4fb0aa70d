//! Chaos: rounds of `kill -9` of a real `bulkhead serve` at a random moment while client threads
//! are mid-request in a churn of sandbox creates (some with TTLs of a few seconds, so expiries
//! happen), execs, file uploads (to a filesystem and into sandboxes) and deletes, with random
//! `kill -9`s of sandbox supervisors and of the OCI runtime mid-create. After every restart on
//! the same data dir, state dir and cgroup prefix:
//!
//! - every acknowledged write is there: each file whose upload got a 2xx reads back with the
//!   same bytes; each acknowledged mutating request (create, upload, exec, delete) has an audit
//!   record carrying its `X-Request-Id`; each acknowledged create is known to the store and each
//!   acknowledged delete left the sandbox `deleted`; the usage ledger counts at least the execs
//!   that were acknowledged (it may count more: an exec is counted when it starts, so one cut
//!   by the kill may be counted without its answer arriving);
//! - every audit chain (the namespace's and the platform's) verifies;
//! - no sandbox is counted that does not run: each one listed `running` answers an exec or
//!   becomes `failed` within 10 s, and none stays `creating`;
//! - no host resource the store does not know: `bulkhead doctor` is clean;
//! - the server answers again (time from spawn to the first `/healthz`, printed, not asserted).
//!
//! The test prints what the kills fell inside and a summary; a failure names what was lost. A
//! sandbox the test itself killed the supervisor of while the server ran must end `failed`
//! while the server runs; one still `running` after 10 s is reported as `[dead sandbox stays
//! running]`.
//!
//! `BULKHEAD_CHAOS_ROUNDS` and `BULKHEAD_CHAOS_SEED` override the number of rounds (20) and the
//! random seed (printed at the start) for a local run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");
const NS: &str = "chaos";
const CLIENTS: usize = 4;
/// How long a sandbox listed `running` has to answer or become `failed`.
const SETTLE: Duration = Duration::from_secs(10);
/// Execs in a sandbox whose supervisor the test kills while the server runs: in these rounds.
const LIVE_KILL_EVERY: usize = 4;

// ---- randomness --------------------------------------------------------------------------

/// xorshift64*: enough for choosing, and reproducible from a printed seed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

fn urandom_seed() -> u64 {
    let mut b = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// The bytes of an upload: regenerated from `(seed, len)` to check it, so none are kept.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&r.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---- the host: a server's data dir, state dir and cgroup prefix, cleaned up on drop --------

/// One server's world across restarts. Dropping it (also during a panic) kills the server and
/// any OCI runtime process of its state dir, purges its state dir and cgroups (which unmounts
/// its filesystems) and removes its data dir.
struct World {
    server: Option<Child>,
    url: String,
    state: PathBuf,
    prefix: String,
    data: PathBuf,
    registry: PathBuf,
    admin: String,
    // Last: removed after the purge in `drop`.
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        // `bulkhead-test-` in the data dir's name makes anything left of it (a loop device of
        // its images) visible to the leak check.
        let dir = tempfile::Builder::new().prefix("bulkhead-test-chaos-").tempdir().unwrap();
        let data = dir.path().join("data");
        let tag = format!("{:012x}", urandom_seed() & 0xffff_ffff_ffff);
        let state = PathBuf::from(format!("/run/bulkhead-test-{tag}"));
        let prefix = format!("bulkhead-test-{tag}");
        let registry = data.join("host-registry");
        let mut w =
            World { server: None, url: String::new(), state, prefix, data, registry, admin: String::new(), _dir: dir };
        let (_, token) = w.spawn();
        w.admin = token.expect("the first start prints the admin token");
        w
    }

    /// Starts the server; answers the time from spawn to its first successful `/healthz`.
    fn spawn(&mut self) -> (Duration, Option<String>) {
        assert!(self.server.is_none());
        let t0 = Instant::now();
        let image = common::images::default_image_args();
        let store = common::process::store_args(&self.data);
        let extra: Vec<&str> = ["--network", "loopback-only"]
            .into_iter()
            .chain(image.iter().map(String::as_str))
            .chain(store.iter().map(String::as_str))
            .collect();
        let started = bulkhead_bench::server::Serve {
            bulkhead: Path::new(BIN),
            data_dir: &self.data,
            state_dir: &self.state,
            cgroup_prefix: &self.prefix,
            host_registry: Some(&self.registry),
            // The chaos is about the store and the sandboxes, not their networks.
            extra: &extra,
        }
        .spawn()
        .unwrap_or_else(|e| panic!("the server did not start again on its data dir: {e}"));
        self.server = Some(started.child);
        self.url = started.url;
        let deadline = t0 + Duration::from_secs(60);
        loop {
            let ok = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2"])
                .arg(format!("{}/healthz", self.url))
                .output()
                .map(|o| o.stdout == b"200")
                .unwrap_or(false);
            if ok {
                return (t0.elapsed(), started.first_token);
            }
            assert!(Instant::now() < deadline, "the server does not answer /healthz 60 s after its start");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill9(&mut self) {
        let mut child = self.server.take().expect("a server runs");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn stop(&mut self) {
        let mut child = self.server.take().expect("a server runs");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server ignored SIGTERM for 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn supervisor_pid(&self, id: &str) -> Option<i32> {
        std::fs::read_to_string(self.state.join("sandboxes").join(id).join("pid")).ok()?.trim().parse().ok()
    }

    /// `bulkhead doctor --json` for this server: (exit code, leaks as `kind resource`, stderr).
    fn doctor(&self) -> (i32, Vec<String>, String) {
        let out = Command::new(BIN)
            .args(["doctor", "--json", "--state-dir"])
            .arg(&self.state)
            .args(common::process::store_args(&self.data))
            .args(["--cgroup-prefix", &self.prefix, "--host-registry"])
            .arg(&self.registry)
            .env("BULKHEAD_URL", &self.url)
            .env("BULKHEAD_TOKEN", &self.admin)
            .env("BULKHEAD_DATA_DIR", &self.data)
            .env_remove("BULKHEAD_NAMESPACE")
            .output()
            .unwrap();
        let leaks = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            // The server runs loopback-only: the sandbox networks doctor sees (netns, veths,
            // nftables tables of `bh` prefixes) are those of other tests' servers running at
            // the same time, each with a host registry of its own, not this server's leaks (the
            // suite's leak check judges every one of them once nothing runs).
            .filter(|l| !matches!(l["kind"].as_str(), Some("netns" | "veth" | "nft table")))
            .map(|l| format!("{} {}", l["kind"].as_str().unwrap_or("?"), l["resource"].as_str().unwrap_or("?")))
            .collect();
        (out.status.code().unwrap_or(-1), leaks, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The OCI runtime processes working on this state dir: (pid, subcommand).
fn oci_processes(state: &Path) -> Vec<(i32, String)> {
    let state = state.display().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let Some(argv0) = args.first() else { continue };
        if !(argv0 == "runc" || argv0.ends_with("/runc")) || !args.iter().any(|a| a.contains(&state)) {
            continue;
        }
        let sub = args
            .iter()
            .find(|a| ["run", "create", "start", "delete", "kill", "state", "list"].contains(&a.as_str()))
            .cloned()
            .unwrap_or_default();
        found.push((pid, sub));
    }
    found
}

fn kill9_pid(pid: i32) -> bool {
    Command::new("kill").args(["-9", &pid.to_string()]).stderr(std::process::Stdio::null()).status().unwrap().success()
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // An OCI runtime the killed server left mid-create could start a container after the
        // purge: none survives it.
        for _ in 0..3 {
            for (pid, _) in oci_processes(&self.state) {
                kill9_pid(pid);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Err(e) = bulkhead_runtime::oci::purge(&self.state, Path::new("/sys/fs/cgroup"), &self.prefix) {
            eprintln!("chaos teardown: {e}");
        }
    }
}

// ---- HTTP -----------------------------------------------------------------------------------

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

enum Body {
    None,
    Json(Value),
    Bytes(Vec<u8>),
}

struct Reply {
    status: u16,
    request_id: String,
    bytes: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).chars().take(300).collect()
    }
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl Api {
    fn new(url: &str, token: &str) -> Api {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        Api { http, url: url.to_owned(), token: token.to_owned() }
    }

    /// The answer, or `Err` with the transport error (the server is gone).
    async fn call(&self, method: reqwest::Method, path: &str, body: Body) -> Result<Reply, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Bytes(b) => req.header("content-type", "application/octet-stream").body(b),
        };
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let request_id =
            resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?.to_vec();
        Ok(Reply { status, request_id, bytes })
    }

    async fn get(&self, path: &str) -> Result<Reply, String> {
        self.call(reqwest::Method::GET, path, Body::None).await
    }
}

fn sbx_path(id: &str) -> String {
    format!("/v1/namespaces/{NS}/sandboxes/{id}")
}

fn fs_file(fs: &str, path: &str) -> String {
    format!("/v1/namespaces/{NS}/filesystems/{fs}/files?path={path}")
}

// ---- what the churn does and what the server acknowledged ------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
enum Kind {
    Create,
    UploadFs,
    UploadSandbox,
    Exec,
    Delete,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::Create, Kind::UploadFs, Kind::UploadSandbox, Kind::Exec, Kind::Delete];
    fn code(self) -> u8 {
        Kind::ALL.iter().position(|k| *k == self).unwrap() as u8 + 1
    }
    fn from_code(c: u8) -> Option<Kind> {
        Kind::ALL.get(usize::from(c).checked_sub(1)?).copied()
    }
    /// The class the summary counts kills in.
    fn class(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::UploadFs | Kind::UploadSandbox => "upload",
            Kind::Exec => "exec",
            Kind::Delete => "delete",
        }
    }
}

/// Where an acknowledged file is read back.
#[derive(Clone, Debug)]
enum FileAt {
    /// A filesystem's file (written through the filesystem's route, or into a sandbox that
    /// mounts it at `/workspace`): it outlives every sandbox.
    Fs { fs: String, path: String },
    /// A file in a sandbox's own `/tmp`: there while the sandbox runs.
    Sandbox { id: String, path: String },
}

#[derive(Clone, Debug)]
struct AckedFile {
    at: FileAt,
    seed: u64,
    len: usize,
    round: usize,
    request_id: String,
}

#[derive(Clone, Debug)]
struct AckedRequest {
    round: usize,
    what: String,
    request_id: String,
}

#[derive(Clone, Debug)]
struct Sbx {
    id: String,
    /// Mounts the filesystem at `/workspace`.
    fs: bool,
}

/// Everything the server acknowledged, and what the chaos did.
#[derive(Default)]
struct Ledger {
    requests: Vec<AckedRequest>,
    files: Vec<AckedFile>,
    execs: u64,
    created: Vec<(usize, String)>,
    deleted: Vec<(usize, String)>,
    /// (kind, status or 0 for a transport error) → count.
    outcomes: BTreeMap<(Kind, u16), u64>,
    /// A few bodies of 5xx answers, by kind.
    errors: BTreeMap<Kind, Vec<String>>,
    /// Supervisors killed during the churn: (round, sandbox).
    supervisor_kills: Vec<(usize, String)>,
    /// OCI runtime processes killed, by subcommand.
    oci_kills: BTreeMap<String, u64>,
    /// Execs answered 200 with another output than the command's.
    wrong: Vec<String>,
    /// Sandboxes a thread saw answer 409 on an exec while the server ran.
    not_running_execs: u64,
}

struct Churn {
    api: Api,
    fs: String,
    round: usize,
    thread: usize,
    rng: Rng,
    mine: Vec<Sbx>,
    ledger: Arc<Mutex<Ledger>>,
    inflight: Arc<Vec<AtomicU8>>,
    n: u64,
}

impl Churn {
    /// One request, marked in flight while it runs; `None` when the server is gone.
    async fn request(&mut self, kind: Kind, method: reqwest::Method, path: &str, body: Body) -> Option<Reply> {
        self.inflight[self.thread].store(kind.code(), Ordering::SeqCst);
        let r = self.api.call(method, path, body).await;
        self.inflight[self.thread].store(0, Ordering::SeqCst);
        let mut l = self.ledger.lock().unwrap();
        match r {
            Ok(reply) => {
                *l.outcomes.entry((kind, reply.status)).or_default() += 1;
                if reply.status >= 500 {
                    let e = l.errors.entry(kind).or_default();
                    if e.len() < 6 {
                        e.push(format!("{} {}", reply.status, reply.text()));
                    }
                }
                Some(reply)
            }
            Err(_) => {
                *l.outcomes.entry((kind, 0)).or_default() += 1;
                None
            }
        }
    }

    fn acked(&self, what: String, reply: &Reply) {
        self.ledger.lock().unwrap().requests.push(AckedRequest {
            round: self.round,
            what,
            request_id: reply.request_id.clone(),
        });
    }

    fn upload_len(&mut self, small: bool) -> usize {
        let p = self.rng.below(100);
        let len = if p < 70 {
            self.rng.between(1, 16 << 10)
        } else if p < 95 || small {
            self.rng.between(16 << 10, 256 << 10)
        } else {
            self.rng.between(1 << 20, 4 << 20)
        };
        len as usize
    }

    /// One step of the churn; `false` when the server is gone.
    async fn step(&mut self) -> bool {
        self.n += 1;
        let choice = if self.mine.len() < 2 {
            0
        } else if self.mine.len() >= 4 {
            self.rng.between(20, 99)
        } else {
            self.rng.below(100)
        };
        match choice {
            0..=19 => self.create().await,
            20..=49 => self.exec().await,
            50..=69 => self.upload_fs().await,
            70..=87 => self.upload_sandbox().await,
            _ => self.delete().await,
        }
    }

    async fn create(&mut self) -> bool {
        let mut body = json!({"cpu_millis": 100, "memory_bytes": 64u64 << 20});
        let short = self.rng.chance(30);
        if short {
            body["ttl_seconds"] = json!(self.rng.between(1, 3));
        }
        let fs = self.rng.chance(40);
        if fs {
            body["filesystem"] = json!({"id": self.fs, "mode": "rw"});
        }
        let path = format!("/v1/namespaces/{NS}/sandboxes");
        let Some(r) = self.request(Kind::Create, reqwest::Method::POST, &path, Body::Json(body)).await else {
            return false;
        };
        if r.ok() {
            let id = r.json()["id"].as_str().unwrap_or_default().to_owned();
            self.acked(format!("create of {id}"), &r);
            self.ledger.lock().unwrap().created.push((self.round, id.clone()));
            // A sandbox of a short TTL is used too: requests to it race its expiry.
            self.mine.push(Sbx { id, fs });
        } else if r.status == 429 && !self.mine.is_empty() {
            return self.delete().await;
        }
        true
    }

    fn pick(&mut self) -> Option<Sbx> {
        if self.mine.is_empty() {
            return None;
        }
        let i = self.rng.below(self.mine.len() as u64) as usize;
        Some(self.mine[i].clone())
    }

    fn forget(&mut self, id: &str) {
        self.mine.retain(|s| s.id != id);
    }

    async fn exec(&mut self) -> bool {
        let Some(s) = self.pick() else { return true };
        let script = if self.rng.chance(20) { "sleep 0.3; echo $((6*7))" } else { "echo $((6*7))" };
        let body = json!({"cmd": ["sh", "-c", script]});
        let path = format!("{}/exec", sbx_path(&s.id));
        let Some(r) = self.request(Kind::Exec, reqwest::Method::POST, &path, Body::Json(body)).await else {
            return false;
        };
        if r.ok() {
            self.acked(format!("exec in {}", s.id), &r);
            let v = r.json();
            let mut l = self.ledger.lock().unwrap();
            l.execs += 1;
            // A command killed with its sandbox (its TTL ended, or its supervisor was killed) ends
            // with a signal; one that exits 0 printed what it prints.
            if v["exit_code"] == 0 && v["stdout"] != "42\n" {
                l.wrong.push(format!("round {}: exec in {} answered 200 with {v}", self.round, s.id));
            }
        } else if r.status == 409 || r.status == 404 {
            if r.status == 409 {
                self.ledger.lock().unwrap().not_running_execs += 1;
            }
            self.forget(&s.id);
        }
        true
    }

    async fn upload_fs(&mut self) -> bool {
        let len = self.upload_len(false);
        let seed = self.rng.next();
        let file = format!("chaos/r{}/t{}-{}", self.round, self.thread, self.n);
        let path = fs_file(&self.fs, &file);
        let Some(r) = self.request(Kind::UploadFs, reqwest::Method::PUT, &path, Body::Bytes(content(seed, len))).await
        else {
            return false;
        };
        if r.ok() {
            self.acked(format!("upload of {file} ({len} bytes) to filesystem {}", self.fs), &r);
            self.ledger.lock().unwrap().files.push(AckedFile {
                at: FileAt::Fs { fs: self.fs.clone(), path: file },
                seed,
                len,
                round: self.round,
                request_id: r.request_id.clone(),
            });
        }
        true
    }

    async fn upload_sandbox(&mut self) -> bool {
        let Some(s) = self.pick() else { return true };
        let len = self.upload_len(!s.fs);
        let seed = self.rng.next();
        let (inside, at) = if s.fs {
            let rel = format!("chaos/r{}/t{}-{}-via-{}", self.round, self.thread, self.n, s.id);
            (format!("/workspace/{rel}"), FileAt::Fs { fs: self.fs.clone(), path: rel })
        } else {
            let p = format!("/tmp/t{}-{}", self.thread, self.n);
            (p.clone(), FileAt::Sandbox { id: s.id.clone(), path: p })
        };
        let path = format!("{}/files?path={inside}", sbx_path(&s.id));
        let Some(r) =
            self.request(Kind::UploadSandbox, reqwest::Method::PUT, &path, Body::Bytes(content(seed, len))).await
        else {
            return false;
        };
        if r.ok() {
            self.acked(format!("upload of {inside} ({len} bytes) into {}", s.id), &r);
            self.ledger.lock().unwrap().files.push(AckedFile {
                at,
                seed,
                len,
                round: self.round,
                request_id: r.request_id.clone(),
            });
        } else if r.status == 409 || r.status == 404 {
            self.forget(&s.id);
        }
        true
    }

    async fn delete(&mut self) -> bool {
        let Some(s) = self.pick() else { return true };
        let Some(r) = self.request(Kind::Delete, reqwest::Method::DELETE, &sbx_path(&s.id), Body::None).await else {
            return false;
        };
        if r.ok() {
            self.acked(format!("delete of {}", s.id), &r);
            self.ledger.lock().unwrap().deleted.push((self.round, s.id.clone()));
        }
        if r.ok() || r.status == 404 {
            self.forget(&s.id);
        }
        true
    }
}

// ---- findings ----------------------------------------------------------------------------------

#[derive(Default)]
struct Findings {
    /// New problems: what was lost or lied about.
    new: Vec<String>,
    /// The known one: a sandbox whose supervisor died while the server ran stays `running`.
    known: Vec<String>,
    /// Doctor reports the test cannot judge as real leaks.
    notes: Vec<String>,
}

// ---- the test ------------------------------------------------------------------------------------

#[test]
fn chaos_kill_9_rounds_lose_nothing_acknowledged() {
    let rounds: usize = std::env::var("BULKHEAD_CHAOS_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("BULKHEAD_CHAOS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(urandom_seed);
    eprintln!("chaos: {rounds} rounds, seed {seed} (BULKHEAD_CHAOS_SEED={seed} repeats the choices)");
    let test_start = Instant::now();
    let mut rng = Rng::new(seed);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let mut world = World::new();
    eprintln!(
        "chaos: state dir {}, cgroup prefix {}, data dir {}",
        world.state.display(),
        world.prefix,
        world.data.display()
    );
    let admin = world.admin.clone();
    let api = |w: &World| Api::new(&w.url, &admin);
    let fs = rt.block_on(async {
        let a = api(&world);
        let ns = json!({"name": NS, "quotas": {"cpu_millis": 2000, "memory_bytes": 2u64 << 30,
            "disk_bytes": 1u64 << 30, "max_sandboxes": 16, "pids_per_sandbox": 64,
            "max_sandbox_ttl_seconds": 3600}});
        let r = a.call(reqwest::Method::POST, "/v1/namespaces", Body::Json(ns)).await.unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        let f = json!({"name": "churn", "size_bytes": 512u64 << 20});
        let path = format!("/v1/namespaces/{NS}/filesystems");
        let r = a.call(reqwest::Method::POST, &path, Body::Json(f)).await.unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_owned()
    });

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut findings = Findings::default();
    let mut kills_in: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut kills_in_kind: BTreeMap<Kind, u64> = BTreeMap::new();
    let mut restarts: Vec<Duration> = Vec::new();
    let mut live_supervisor_kills = 0u64;
    // Sandboxes running after the last check, handed to the next round's threads.
    let mut running: Vec<Sbx> = Vec::new();
    let mut fs_of: HashMap<String, bool> = HashMap::new();

    for round in 0..rounds {
        let churn_for = Duration::from_millis(rng.between(800, 4000));
        let inflight: Arc<Vec<AtomicU8>> = Arc::new((0..CLIENTS).map(|_| AtomicU8::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let steps = Arc::new(AtomicUsize::new(0));
        let snapshot: Vec<Option<Kind>> = std::thread::scope(|scope| {
            // Stops every thread of the round however this closure ends (a panic included).
            struct StopOnDrop(Arc<AtomicBool>);
            impl Drop for StopOnDrop {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _stop_guard = StopOnDrop(stop.clone());
            for t in 0..CLIENTS {
                let mut churn = Churn {
                    api: api(&world),
                    fs: fs.clone(),
                    round,
                    thread: t,
                    rng: Rng::new(rng.next()),
                    mine: running.iter().skip(t).step_by(CLIENTS).cloned().collect(),
                    ledger: ledger.clone(),
                    inflight: inflight.clone(),
                    n: 0,
                };
                let (stop, steps) = (stop.clone(), steps.clone());
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    while !stop.load(Ordering::SeqCst) {
                        steps.fetch_add(1, Ordering::Relaxed);
                        if !rt.block_on(churn.step()) {
                            // The server is gone: wait for the round to end.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                });
            }
            // The OCI runtime killer: now and then, every runc of this state dir that is
            // starting a container.
            {
                let (stop, state, ledger) = (stop.clone(), world.state.clone(), ledger.clone());
                let mut r = Rng::new(rng.next());
                scope.spawn(move || {
                    let mut seen = HashSet::new();
                    while !stop.load(Ordering::SeqCst) {
                        for (pid, sub) in oci_processes(&state) {
                            if !seen.insert(pid) || !["run", "create", "start"].contains(&sub.as_str()) {
                                continue;
                            }
                            if r.chance(8) && kill9_pid(pid) {
                                *ledger.lock().unwrap().oci_kills.entry(sub).or_default() += 1;
                            }
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                });
            }
            // The supervisor killer: at most one, at a random moment of the churn.
            if rng.chance(70) {
                let (stop, state, ledger) = (stop.clone(), world.state.clone(), ledger.clone());
                let at = Duration::from_millis(rng.below(churn_for.as_millis() as u64));
                let mut r = Rng::new(rng.next());
                scope.spawn(move || {
                    let t0 = Instant::now();
                    while t0.elapsed() < at {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let bundles: Vec<String> = std::fs::read_dir(state.join("sandboxes"))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    if bundles.is_empty() {
                        return;
                    }
                    let id = &bundles[r.below(bundles.len() as u64) as usize];
                    let pid = std::fs::read_to_string(state.join("sandboxes").join(id).join("pid"))
                        .ok()
                        .and_then(|p| p.trim().parse::<i32>().ok());
                    if let Some(pid) = pid {
                        if kill9_pid(pid) {
                            ledger.lock().unwrap().supervisor_kills.push((round, id.clone()));
                        }
                    }
                });
            }
            std::thread::sleep(churn_for);
            let snapshot: Vec<Option<Kind>> =
                inflight.iter().map(|k| Kind::from_code(k.load(Ordering::SeqCst))).collect();
            world.kill9();
            stop.store(true, Ordering::SeqCst);
            snapshot
        });
        for k in &snapshot {
            match k {
                Some(k) => {
                    *kills_in.entry(k.class()).or_default() += 1;
                    *kills_in_kind.entry(*k).or_default() += 1;
                }
                None => *kills_in.entry("between requests").or_default() += 1,
            }
        }

        // Restart on the same data dir, state dir and prefix.
        let (took, _) = world.spawn();
        restarts.push(took);
        let before = findings.new.len() + findings.known.len();
        let report = rt.block_on(check(&world, &api(&world), &fs, round, &ledger, &mut findings, &mut rng, &mut fs_of));
        if report.live_killed {
            live_supervisor_kills += 1;
        }
        running = report.running;
        let inside: Vec<&str> = snapshot.iter().map(|k| k.map(Kind::class).unwrap_or("idle")).collect();
        eprintln!(
            "chaos round {round:2}: killed after {:.1} s ({} steps), in flight {inside:?}; restart {:.0} ms to /healthz; \
             checked {} files, {} audit ids, {} sandboxes; {} new findings",
            churn_for.as_secs_f64(),
            steps.load(Ordering::Relaxed),
            took.as_secs_f64() * 1000.0,
            report.files,
            report.audit_ids,
            report.sandboxes,
            findings.new.len() + findings.known.len() - before,
        );
    }

    // The end: what became of the sandboxes; the namespace goes, the server stops cleanly.
    let ends = rt.block_on(async {
        let mut ends: BTreeMap<String, u64> = BTreeMap::new();
        for s in all_items(&api(&world), &format!("/v1/namespaces/{NS}/sandboxes"), "").await.unwrap_or_default() {
            let reason = s["reason"].as_str().unwrap_or("").split(':').next().unwrap_or("").to_owned();
            *ends.entry(format!("{} {reason}", s["status"].as_str().unwrap_or("?")).trim().to_owned()).or_default() +=
                1;
        }
        ends
    });
    rt.block_on(async {
        let r = api(&world).call(reqwest::Method::DELETE, &format!("/v1/namespaces/{NS}"), Body::None).await.unwrap();
        if r.status != 204 {
            findings.new.push(format!("the namespace delete at the end answered {}: {}", r.status, r.text()));
        }
    });
    world.stop();

    // The summary.
    let l = ledger.lock().unwrap();
    let mut sorted = restarts.clone();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    let max = sorted.last().copied().unwrap_or_default();
    eprintln!("\n==== chaos summary ({rounds} rounds, {:.0} s, seed {seed}) ====", test_start.elapsed().as_secs_f64());
    eprintln!("server kills × client threads, by what the thread had in flight: {kills_in:?}");
    eprintln!("  by request: {kills_in_kind:?}");
    eprintln!(
        "restart to first /healthz: median {:.0} ms, max {:.0} ms",
        median.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0
    );
    eprintln!(
        "supervisor kills: {} during the churn, {live_supervisor_kills} while the server ran in a check; \
         OCI runtime kills: {:?}",
        l.supervisor_kills.len(),
        l.oci_kills
    );
    eprintln!(
        "acknowledged: {} mutating requests, {} files, {} execs, {} creates, {} deletes; {} execs answered 409",
        l.requests.len(),
        l.files.len(),
        l.execs,
        l.created.len(),
        l.deleted.len(),
        l.not_running_execs
    );
    eprintln!("sandboxes at the end, by status and reason: {ends:?}");
    eprintln!("answers (kind, status; 0 = no answer: the server died) → count: {:?}", l.outcomes);
    // A 5xx is a finding unless the test's own fault explains it: a create whose OCI runtime
    // it killed answers 503 `unavailable` (retryable) and marks the sandbox failed. A 500 is
    // always a finding.
    let oci_killed: u64 = l.oci_kills.values().sum();
    for ((kind, status), n) in &l.outcomes {
        if *status < 500 {
            continue;
        }
        if *kind == Kind::Create && *status == 503 {
            if *n > oci_killed {
                findings.new.push(format!(
                    "{n} creates answered 503, more than the {oci_killed} OCI runtime processes the test killed"
                ));
            }
            findings.notes.push(format!(
                "{n} creates answered 503 `unavailable` after the test killed their OCI runtime ({oci_killed} kills)"
            ));
        } else {
            findings.new.push(format!("{n} answers {status} to {kind:?}: {:?}", l.errors.get(kind)));
        }
    }
    for (kind, errors) in &l.errors {
        for e in errors {
            eprintln!("  5xx or wrong answer to {kind:?}: {e}");
        }
    }
    findings.new.extend(l.wrong.iter().cloned());
    for n in &findings.notes {
        eprintln!("note: {n}");
    }
    for k in &findings.known {
        eprintln!("KNOWN: {k}");
    }
    for f in &findings.new {
        eprintln!("FAILED: {f}");
    }
    drop(l);
    assert!(
        findings.new.is_empty() && findings.known.is_empty(),
        "chaos: {} new findings, {} of the known dead-sandbox kind; first: {}",
        findings.new.len(),
        findings.known.len(),
        findings.new.first().or(findings.known.first()).cloned().unwrap_or_default()
    );
}

struct CheckReport {
    files: usize,
    audit_ids: usize,
    sandboxes: usize,
    live_killed: bool,
    /// Sandboxes that run, for the next round.
    running: Vec<Sbx>,
}

/// Every page of a namespace list route (`path` without a query).
async fn all_items(a: &Api, path: &str, query: &str) -> Result<Vec<Value>, String> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut p = format!("{path}?limit=1000{query}");
        if let Some(c) = &cursor {
            p.push_str(&format!("&cursor={c}"));
        }
        let r = a.get(&p).await?;
        if r.status != 200 {
            return Err(format!("GET {p}: {} {}", r.status, r.text()));
        }
        let v = r.json();
        items.extend(v["items"].as_array().cloned().unwrap_or_default());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(items),
        }
    }
}

/// The checks after a restart.
#[allow(clippy::too_many_arguments)]
async fn check(
    world: &World,
    a: &Api,
    fs: &str,
    round: usize,
    ledger: &Mutex<Ledger>,
    findings: &mut Findings,
    rng: &mut Rng,
    fs_of: &mut HashMap<String, bool>,
) -> CheckReport {
    let tag = |s: &str| format!("round {round}: {s}");
    let (requests, files, execs, created, deleted, sup_killed) = {
        let l = ledger.lock().unwrap();
        (
            l.requests.clone(),
            l.files.clone(),
            l.execs,
            l.created.clone(),
            l.deleted.clone(),
            l.supervisor_kills.iter().map(|(_, id)| id.clone()).collect::<HashSet<_>>(),
        )
    };
    let mut report = CheckReport { files: 0, audit_ids: 0, sandboxes: 0, live_killed: false, running: Vec::new() };

    // Audit chains verify.
    for (chain, path) in
        [(NS.to_owned(), format!("/v1/namespaces/{NS}/audit/verify")), ("platform".into(), "/v1/audit/verify".into())]
    {
        match a.get(&path).await {
            Ok(r) if r.status == 200 && r.json()["ok"] == true => {}
            Ok(r) => {
                findings.new.push(tag(&format!("the {chain} audit chain does not verify: {} {}", r.status, r.text())))
            }
            Err(e) => findings.new.push(tag(&format!("GET {path}: {e}"))),
        }
    }

    // Every acknowledged mutating request has its audit record.
    match all_items(a, &format!("/v1/namespaces/{NS}/audit"), "").await {
        Ok(records) => {
            let ids: HashSet<&str> = records.iter().filter_map(|r| r["request_id"].as_str()).collect();
            report.audit_ids = ids.len();
            for q in &requests {
                if q.request_id.is_empty() {
                    findings
                        .new
                        .push(tag(&format!("acknowledged {} (round {}) carried no X-Request-Id", q.what, q.round)));
                } else if !ids.contains(q.request_id.as_str()) {
                    findings.new.push(tag(&format!(
                        "LOST AUDIT RECORD: acknowledged {} (round {}, request {}) has no audit record",
                        q.what, q.round, q.request_id
                    )));
                }
            }
        }
        Err(e) => findings.new.push(tag(&format!("the audit log: {e}"))),
    }

    // The usage ledger counts at least the acknowledged execs.
    match a.get(&format!("/v1/namespaces/{NS}/usage?granularity=day")).await {
        Ok(r) if r.status == 200 => {
            let counted = r.json()["totals"]["exec_count"].as_u64().unwrap_or(0);
            if counted < execs {
                findings.new.push(tag(&format!(
                    "LOST USAGE: the ledger counts {counted} execs, {execs} were acknowledged ({} lost)",
                    execs - counted
                )));
            }
        }
        Ok(r) => findings.new.push(tag(&format!("usage: {} {}", r.status, r.text()))),
        Err(e) => findings.new.push(tag(&format!("usage: {e}"))),
    }

    // Acknowledged creates are known; acknowledged deletes stay deleted.
    for (r, id) in created.iter().filter(|(r, _)| *r == round) {
        match a.get(&sbx_path(id)).await {
            Ok(g) if g.status == 200 => {}
            Ok(g) => findings.new.push(tag(&format!(
                "LOST CREATE: the acknowledged create of {id} (round {r}): GET answers {} {}",
                g.status,
                g.text()
            ))),
            Err(e) => findings.new.push(tag(&format!("GET {id}: {e}"))),
        }
    }
    for (r, id) in deleted.iter().filter(|(r, _)| *r == round) {
        match a.get(&sbx_path(id)).await {
            // A delete that met the sandbox's TTL expiry answers 204 and leaves it `stopped`.
            Ok(g)
                if g.status == 404
                    || ["deleted", "stopped", "failed"].contains(&g.json()["status"].as_str().unwrap_or("")) => {}
            Ok(g) => findings.new.push(tag(&format!(
                "LOST DELETE: {id}, deleted with a 2xx in round {r}, is active again: {} {}",
                g.status,
                g.text()
            ))),
            Err(e) => findings.new.push(tag(&format!("GET {id}: {e}"))),
        }
    }

    // The sandboxes as the API lists them.
    let listed = match all_items(a, &format!("/v1/namespaces/{NS}/sandboxes"), "").await {
        Ok(l) => l,
        Err(e) => {
            findings.new.push(tag(&format!("the sandbox list: {e}")));
            Vec::new()
        }
    };
    let status_of: HashMap<String, String> = listed
        .iter()
        .map(|s| (s["id"].as_str().unwrap_or_default().to_owned(), s["status"].as_str().unwrap_or_default().to_owned()))
        .collect();
    let mut long_lived = Vec::new();
    for s in &listed {
        let id = s["id"].as_str().unwrap_or_default().to_owned();
        if s["status"] == "running" && s["ttl_seconds"].as_u64().unwrap_or(0) >= 60 {
            long_lived.push(id.clone());
        }
        fs_of.insert(id, !s["filesystem"].is_null());
    }
    long_lived.sort();

    // Files: every one acknowledged in this round, and a sample of the older ones.
    let mut to_check: Vec<&AckedFile> = files.iter().filter(|f| f.round == round).collect();
    let older: Vec<&AckedFile> = files.iter().filter(|f| f.round < round).collect();
    for _ in 0..older.len().min(10) {
        to_check.push(older[rng.below(older.len() as u64) as usize]);
    }
    for f in to_check {
        let (path, where_) = match &f.at {
            FileAt::Fs { fs, path } => (fs_file(fs, path), format!("filesystem {fs}: {path}")),
            FileAt::Sandbox { id, path } => {
                // A sandbox's /tmp lives as long as the sandbox runs.
                if status_of.get(id).map(String::as_str) != Some("running") || sup_killed.contains(id) {
                    continue;
                }
                (format!("{}/files?path={path}", sbx_path(id)), format!("sandbox {id}: {path}"))
            }
        };
        report.files += 1;
        let want = content(f.seed, f.len);
        match a.get(&path).await {
            Ok(r) if r.status == 200 && r.bytes == want => {}
            Ok(r) if r.status == 409 && matches!(f.at, FileAt::Sandbox { .. }) => {
                // Not running after all: the running check below judges the sandbox.
            }
            Ok(r) if r.status == 200 => findings.new.push(tag(&format!(
                "CORRUPTED FILE: {where_} (acknowledged in round {}, request {}): {} bytes read back, {} written, {}",
                f.round,
                f.request_id,
                r.bytes.len(),
                f.len,
                if r.bytes.len() == f.len { "different content" } else { "different length" }
            ))),
            Ok(r) => findings.new.push(tag(&format!(
                "LOST FILE: {where_} ({} bytes, acknowledged in round {}, request {}): {} {}",
                f.len,
                f.round,
                f.request_id,
                r.status,
                r.text()
            ))),
            Err(e) => findings.new.push(tag(&format!("read {where_}: {e}"))),
        }
    }

    // An upload cut by the kill leaves no temporary file behind in the filesystem (it would
    // count against its size for ever, and the tenant sees it).
    let dir = format!("/v1/namespaces/{NS}/filesystems/{fs}/files?list=true&limit=1000&path=chaos/r{round}");
    match a.get(&dir).await {
        Ok(r) if r.status == 200 => {
            let v = r.json();
            for e in v["items"].as_array().into_iter().flatten() {
                let name = e["name"].as_str().unwrap_or_default();
                if name.starts_with('.') {
                    findings.new.push(tag(&format!(
                        "LEFTOVER: chaos/r{round}/{name} ({} bytes) in filesystem {fs}: the temporary file of an \
                         upload cut by the kill, still there after the restart",
                        e["size"].as_u64().unwrap_or(0)
                    )));
                }
            }
        }
        Ok(r) if r.status == 404 => {}
        Ok(r) => findings.new.push(tag(&format!("list chaos/r{round}: {} {}", r.status, r.text()))),
        Err(e) => findings.new.push(tag(&format!("list chaos/r{round}: {e}"))),
    }

    // In some rounds, a supervisor dies while the server runs.
    let mut live_killed: Option<String> = None;
    if round % LIVE_KILL_EVERY == 1 {
        // One whose TTL does not end meanwhile.
        let ids = &long_lived;
        if !ids.is_empty() {
            let id = ids[rng.below(ids.len() as u64) as usize].clone();
            if let Some(pid) = world.supervisor_pid(&id) {
                if kill9_pid(pid) {
                    live_killed = Some(id);
                    report.live_killed = true;
                }
            }
        }
    }

    // No sandbox counted that does not run.
    let mut settled: HashMap<String, String> = HashMap::new();
    for (id, status) in &status_of {
        if status != "running" && status != "creating" {
            continue;
        }
        report.sandboxes += 1;
        let deadline = Instant::now() + SETTLE;
        let verdict = loop {
            let now = match a.get(&sbx_path(id)).await {
                Ok(r) if r.status == 200 => r.json()["status"].as_str().unwrap_or_default().to_owned(),
                Ok(r) => break Err(format!("GET answers {} {}", r.status, r.text())),
                Err(e) => break Err(e),
            };
            if now == "running" {
                let body = json!({"cmd": ["true"]});
                match a.call(reqwest::Method::POST, &format!("{}/exec", sbx_path(id)), Body::Json(body)).await {
                    Ok(r) if r.status == 200 && r.json()["exit_code"] == 0 => {
                        ledger.lock().unwrap().execs += 1;
                        break Ok(now);
                    }
                    Ok(r) if r.status == 200 => {
                        ledger.lock().unwrap().execs += 1;
                    }
                    _ => {}
                }
            } else if now != "creating" {
                break Ok(now);
            }
            if Instant::now() > deadline {
                break Err(format!("still {now:?} after {} s and does not answer an exec", SETTLE.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        match verdict {
            Ok(s) => {
                settled.insert(id.clone(), s);
            }
            Err(e) if live_killed.as_deref() == Some(id.as_str()) => findings.known.push(tag(&format!(
                "[dead sandbox stays running] {id}, its supervisor killed while the server ran: {e}"
            ))),
            Err(e) => {
                let why = match (status.as_str(), world.supervisor_pid(id)) {
                    ("creating", _) => "stays creating with no create in flight".to_owned(),
                    (_, Some(pid)) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                        format!("counted running, its supervisor (pid {pid}) is dead")
                    }
                    (_, None) => "counted running, with no bundle on the host".to_owned(),
                    _ => "counted running".to_owned(),
                };
                findings.new.push(tag(&format!("SANDBOX LIE: {id} {why}: {e}")));
            }
        }
    }
    report.running = settled
        .iter()
        .filter(|(_, s)| *s == "running")
        .map(|(id, _)| Sbx { id: id.clone(), fs: fs_of.get(id).copied().unwrap_or(false) })
        .collect();
    report.running.sort_by(|x, y| x.id.cmp(&y.id));

    // No host resource the store does not know. Doctor scans the host, then asks the server: a
    // sandbox whose TTL ends in between is reported; only what a second look still finds counts.
    let (code, leaks, stderr) = world.doctor();
    if code != 0 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (code2, leaks2, stderr2) = world.doctor();
        if code2 != 0 {
            let stay: Vec<&String> = leaks2.iter().filter(|l| leaks.contains(l)).collect();
            if stay.is_empty() && !leaks2.is_empty() {
                findings.notes.push(tag(&format!("doctor reported passing leaks: {leaks:?} then {leaks2:?}")));
            } else if leaks2.is_empty() {
                findings.new.push(tag(&format!("doctor failed (exit {code2}): {}", stderr2.trim())));
            } else {
                for l in stay {
                    findings.new.push(tag(&format!("HOST LEAK (doctor): {l}")));
                }
            }
        } else {
            findings.notes.push(tag(&format!("doctor's first look reported {leaks:?} ({})", stderr.trim())));
        }
    }
    report
}
