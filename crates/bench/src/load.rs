//! The load figures of `bulkhead bench`, each beside a raw baseline measured in the same run:
//! how many idle sandboxes the host holds and what each costs in memory (against bare
//! processes), how many authorized reads per second the control plane answers (against the
//! unauthenticated health check), and how much a noisy tenant slows a quiet one's execs
//! (against the quiet tenant alone). Driven over HTTP against the bench's own server.
//! Throughput is measured with hyper's HTTP/1.1 client, one keep-alive connection per task.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulkhead_api::{CreateKey, CreateNamespace, CreateSandbox, ExecRequest, ExecResult, Quotas, Role};
use bulkhead_client::{Client, ClientError};
use bulkhead_runtime::cgroup::Cgroups;
use bulkhead_runtime::{host, SandboxStats};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::{stat, Stat};

const MIB: u64 = 1 << 20;
/// The smallest memory limit the API admits (`MIN_MEMORY_BYTES` in the server): the density
/// sandboxes' on the container tier.
pub const DENSITY_MEMORY_BYTES: u64 = 16 * MIB;
/// The density sandboxes' memory on the gvisor tier: gVisor's own kernel (a Go program) and
/// gofer are charged to the sandbox's cgroup, and at 16 MiB the OOM killer ends them.
pub const GVISOR_DENSITY_MEMORY_BYTES: u64 = 64 * MIB;
/// Room for the supervisor's threads and one command in an idle sandbox.
const DENSITY_PIDS: u64 = 16;
/// How long memory is left to settle before MemAvailable is read.
const SETTLE: Duration = Duration::from_secs(1);

fn mib(bytes: f64) -> f64 {
    bytes / MIB as f64
}

/// A namespace of the bench with a developer key; the client speaks for that key.
async fn tenant(admin: &Client, name: &str, quotas: Quotas) -> anyhow::Result<Client> {
    placed_tenant(admin, name, quotas, None).await
}

/// A namespace `name` with `quotas` and `placement`, and a developer key of it.
async fn placed_tenant(
    admin: &Client,
    name: &str,
    quotas: Quotas,
    placement: Option<bulkhead_api::PlacementSpec>,
) -> anyhow::Result<Client> {
    admin
        .create_namespace(&CreateNamespace { name: name.into(), isolation: None, placement, egress: None, quotas })
        .await
        .with_context(|| format!("create namespace {name}"))?;
    let key = admin
        .create_key(name, &CreateKey { name: "bench".into(), role: Role::Developer, expires_at: None, projects: None })
        .await
        .with_context(|| format!("create a key of {name}"))?;
    Ok(Client::new(admin.base(), Some(key.token)))
}

/// Deletes the bench's namespaces whatever happened before; the server tears their sandboxes
/// down. A namespace that was never created (or is gone already) answers 404, which is fine
/// here; a failed teardown is tried again a few times.
pub(crate) async fn delete_namespaces(admin: &Client, names: &[&str]) {
    for name in names {
        for _ in 0..3 {
            match admin.delete_namespace(name).await {
                Ok(()) | Err(ClientError::Api { status: 404, .. }) => break,
                Err(e) => {
                    eprintln!("delete namespace {name}: {e}; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Density.

/// Idle sandboxes held at once, and what each costs the host.
#[derive(Debug, Serialize)]
pub struct Density {
    /// Sandboxes asked for, and held at once before the first refusal.
    pub target: usize,
    pub reached: usize,
    /// Why creating stopped short of the target.
    pub stopped_because: Option<String>,
    pub sandbox_cpu_millis: u64,
    pub sandbox_memory_bytes: u64,
    pub create_all_ms: f64,
    pub create_each: Stat,
    pub delete_all_ms: f64,
    pub delete_each: Stat,
    /// Host memory per sandbox: the drop of MemAvailable while they are held (against the mean
    /// of before and after), divided by them.
    pub host_mib_per_sandbox: f64,
    /// MemAvailable's own drift between before and after, per sandbox: the uncertainty of the
    /// host figures (other work on the machine moves it).
    pub host_drift_mib_per_sandbox: f64,
    /// Memory charged to the sandboxes' own cgroups (supervisor, tmpfs, kernel objects).
    pub cgroup_mib_per_sandbox: f64,
    /// Resident memory of the sandboxes' supervisor processes (PID 1 of each).
    pub supervisor_rss_mib_per_sandbox: f64,
    /// The baseline: as many bare `sleep infinity` processes, measured the same way.
    pub bare_process_mib: f64,
    pub bare_drift_mib_per_process: f64,
    pub sandbox_vs_bare_process: f64,
    /// Host memory 1,000 such sandboxes would take, at the measured cost.
    pub projected_gib_per_1000: f64,
}

/// MemAvailable of `/proc/meminfo`, in bytes: the median of a few readings, so one page-cache
/// hiccup does not decide the figure.
async fn mem_available() -> anyhow::Result<u64> {
    let mut readings = Vec::new();
    for _ in 0..5 {
        let text = std::fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
        let kib = text
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .context("no MemAvailable in /proc/meminfo")?;
        readings.push(kib * 1024);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    readings.sort_unstable();
    Ok(readings[readings.len() / 2])
}

/// MemAvailable before something is held, while it is held, and after it is released.
struct MemProbe {
    before: u64,
    with: u64,
    after: u64,
}

impl MemProbe {
    /// Bytes the held things took: the drop while held against the mean of before and after,
    /// which cancels a steady drift of the rest of the host (other work on a shared machine).
    fn held_bytes(&self) -> f64 {
        (self.before as f64 + self.after as f64) / 2.0 - self.with as f64
    }

    /// How far the host moved on its own between before and after: the figure's uncertainty.
    fn drift_bytes(&self) -> f64 {
        (self.before as f64 - self.after as f64).abs()
    }

    /// Both figures per one of `n` things held, in MiB; NaN when nothing was held.
    fn per(&self, n: usize) -> PerUnit {
        if n == 0 {
            return PerUnit { mib: f64::NAN, drift_mib: f64::NAN };
        }
        PerUnit { mib: mib(self.held_bytes() / n as f64), drift_mib: mib(self.drift_bytes() / n as f64) }
    }
}

/// Host memory per thing held, and its uncertainty.
#[derive(Debug, Clone, Copy)]
struct PerUnit {
    mib: f64,
    drift_mib: f64,
}

/// Bare processes, killed and reaped when dropped.
struct BareProcesses(Vec<std::process::Child>);

impl Drop for BareProcesses {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The baseline: host memory per bare `sleep infinity` process, `n` of them held at once.
async fn bare_process_memory(n: usize) -> anyhow::Result<PerUnit> {
    let before = mem_available().await?;
    let mut held = BareProcesses(Vec::with_capacity(n));
    for _ in 0..n {
        let child = std::process::Command::new("sleep")
            .arg("infinity")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn sleep infinity")?;
        held.0.push(child);
    }
    tokio::time::sleep(SETTLE).await;
    let with = mem_available().await?;
    drop(held);
    tokio::time::sleep(SETTLE).await;
    let after = mem_available().await?;
    Ok(MemProbe { before, with, after }.per(n))
}

/// The summed VmRSS of the supervisors of the server with cgroup prefix `prefix`, in bytes.
fn supervisor_rss(prefix: &str) -> u64 {
    host::supervisors_of(prefix).iter().map(|s| s.rss_bytes).sum()
}

/// The recorded reason of a sandbox of `ns` that failed to start (a 500 answer carries none),
/// as `"; reason"`.
async fn failure_reason(c: &Client, ns: &str) -> Option<String> {
    let mut cursor = None;
    loop {
        let page = c.list_sandboxes(ns, Some(100), cursor.as_deref()).await.ok()?;
        if let Some(s) = page.items.iter().find(|s| s.status == "failed") {
            return s.reason.as_ref().map(|r| format!("; {r}"));
        }
        cursor = Some(page.next_cursor?);
    }
}

/// Holds `n` of the smallest sandboxes (`memory_bytes` each) at once in a namespace of their
/// own, measures what they cost, and deletes them; creating stops at the first refusal or
/// failure, which is reported.
pub async fn density(
    admin: &Client,
    cgroups: &Cgroups,
    prefix: &str,
    n: usize,
    cpu_millis: u64,
    memory_bytes: u64,
) -> anyhow::Result<Density> {
    let bare = bare_process_memory(n).await?;
    let result = density_in(admin, cgroups, prefix, n, cpu_millis, memory_bytes, bare).await;
    delete_namespaces(admin, &["density"]).await;
    result
}

async fn density_in(
    admin: &Client,
    cgroups: &Cgroups,
    prefix: &str,
    n: usize,
    cpu_millis: u64,
    memory_bytes: u64,
    bare: PerUnit,
) -> anyhow::Result<Density> {
    let quotas = Quotas {
        cpu_millis: (n as u64 * cpu_millis).max(1),
        memory_bytes: (n as u64 * memory_bytes).max(memory_bytes),
        disk_bytes: 0,
        max_sandboxes: n as u64,
        pids_per_sandbox: DENSITY_PIDS,
        max_sandbox_ttl_seconds: 3600,
        api_requests_per_second: crate::RAISED_API_REQUESTS_PER_SECOND,
        max_concurrent_execs: crate::RAISED_MAX_CONCURRENT_EXECS,
    };
    let c = tenant(admin, "density", quotas).await?;
    let smallest =
        CreateSandbox { cpu_millis: Some(cpu_millis), memory_bytes: Some(memory_bytes), ..Default::default() };
    tokio::time::sleep(SETTLE).await;
    let before = mem_available().await?;

    let mut ids = Vec::with_capacity(n);
    let mut create_each = Vec::with_capacity(n);
    let mut stopped_because = None;
    let t = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        match c.create_sandbox("density", &smallest).await {
            Ok(s) => {
                create_each.push(t.elapsed());
                ids.push(s.id);
            }
            Err(e) => {
                let detail = failure_reason(&c, "density").await.unwrap_or_default();
                stopped_because = Some(format!("sandbox {} of {n}: {e}{detail}", i + 1));
                break;
            }
        }
    }
    let create_all = t.elapsed();
    let reached = ids.len();

    tokio::time::sleep(SETTLE).await;
    let with = mem_available().await?;
    let supervisors = supervisor_rss(prefix);
    let charged: u64 = ids.iter().filter_map(|id| cgroups.stats("density", id).ok()).map(|s| s.memory_bytes).sum();
    // The oldest sandbox still answers once all are up: they are held, not merely recorded.
    if let Some(first) = ids.first() {
        let truth = ExecRequest { cmd: vec!["true".into()], ..Default::default() };
        c.exec("density", first, &truth).await.context("exec in the first of the held sandboxes")?;
    }

    let mut delete_each = Vec::with_capacity(reached);
    let t = Instant::now();
    for id in &ids {
        let t = Instant::now();
        c.delete_sandbox("density", id).await.with_context(|| format!("delete sandbox {id}"))?;
        delete_each.push(t.elapsed());
    }
    let delete_all = t.elapsed();
    tokio::time::sleep(SETTLE).await;
    let after = mem_available().await?;

    let host = MemProbe { before, with, after }.per(reached);
    let per = |bytes: u64| if reached == 0 { f64::NAN } else { mib(bytes as f64 / reached as f64) };
    Ok(Density {
        target: n,
        reached,
        stopped_because,
        sandbox_cpu_millis: cpu_millis,
        sandbox_memory_bytes: memory_bytes,
        create_all_ms: create_all.as_secs_f64() * 1000.0,
        create_each: stat(create_each),
        delete_all_ms: delete_all.as_secs_f64() * 1000.0,
        delete_each: stat(delete_each),
        host_mib_per_sandbox: host.mib,
        host_drift_mib_per_sandbox: host.drift_mib,
        cgroup_mib_per_sandbox: per(charged),
        supervisor_rss_mib_per_sandbox: per(supervisors),
        bare_process_mib: bare.mib,
        bare_drift_mib_per_process: bare.drift_mib,
        sandbox_vs_bare_process: if bare.mib > 0.0 { host.mib / bare.mib } else { f64::NAN },
        projected_gib_per_1000: host.mib * 1000.0 / 1024.0,
    })
}

// ---------------------------------------------------------------------------------------------
// API throughput.

/// Requests per second the server answers, authorized reads against the bare health check.
#[derive(Debug, Serialize)]
pub struct ApiThroughput {
    pub concurrency: usize,
    pub seconds: f64,
    /// `GET /healthz`, no authentication: the HTTP stack alone.
    pub healthz_per_s: f64,
    pub healthz_not_200: u64,
    /// `GET /v1/namespaces/{ns}` with a developer key: authentication, authorization, store.
    pub authorized_get_per_s: f64,
    pub authorized_get_not_200: u64,
    pub authorized_vs_healthz: f64,
}

/// The answers of one load run.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ok: u64,
    other: u64,
}

/// One request without a body (a `GET`, or a `DELETE`) over and over: its method, target and
/// headers, built once, and the status that counts as served.
struct Get {
    method: hyper::Method,
    uri: Uri,
    host: HeaderValue,
    auth: Option<HeaderValue>,
    served: u16,
}

impl Get {
    fn request(&self) -> anyhow::Result<Request<Empty<Bytes>>> {
        let mut req =
            Request::builder().method(self.method.clone()).uri(self.uri.clone()).header(HOST, self.host.clone());
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        Ok(req.body(Empty::new())?)
    }
}

/// The connection half of a client connection: a future that does its IO.
type Connection = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>;

/// A keep-alive HTTP/1.1 connection to `addr`: the sender of requests, and the connection that
/// must be driven (see [`drive`]) for them to be answered.
async fn connect(addr: SocketAddr) -> anyhow::Result<(SendRequest<Empty<Bytes>>, Connection)> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP handshake")
}

/// Runs `work` while driving `connection` in the same task, so that a request and its
/// connection's IO wake one task, not two.
async fn drive<T>(
    connection: Connection,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        done = work => done,
        end = connection => match end {
            Ok(()) => bail!("the server closed the connection"),
            Err(e) => Err(anyhow::Error::new(e).context("the connection failed")),
        },
    }
}

/// Sends `get` on `sender` and reads the whole answer; its status.
async fn send(sender: &mut SendRequest<Empty<Bytes>>, get: &Get) -> anyhow::Result<u16> {
    sender.ready().await.context("the connection closed")?;
    let response = sender.send_request(get.request()?).await.context("send a request")?;
    let status = response.status().as_u16();
    response.into_body().collect().await.context("read an answer")?;
    Ok(status)
}

/// One keep-alive connection sending `get` again and again until `until`.
async fn hammer_one(addr: SocketAddr, get: Arc<Get>, until: Instant) -> anyhow::Result<Counts> {
    let (mut sender, connection) = connect(addr).await?;
    let load = async {
        let mut counts = Counts::default();
        while Instant::now() < until {
            if send(&mut sender, &get).await? == get.served {
                counts.ok += 1;
            } else {
                counts.other += 1;
            }
        }
        Ok(counts)
    };
    drive(connection, load).await
}

/// `concurrency` connections sending `GET path` for `seconds`; 200s per second and the count
/// of other answers. One request first checks that the route answers 200 at all.
pub(crate) async fn hammer(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<(f64, u64)> {
    hammer_with(addr, (hyper::Method::GET, 200), path, token, concurrency, seconds).await
}

/// [`hammer`] with another method, and the status that counts as served (`DELETE` of a
/// missing sandbox: 404).
pub(crate) async fn hammer_with(
    addr: SocketAddr,
    (method, served): (hyper::Method, u16),
    path: &str,
    token: Option<&str>,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<(f64, u64)> {
    let get = Arc::new(Get {
        method: method.clone(),
        uri: path.parse().with_context(|| format!("the path {path}"))?,
        host: HeaderValue::from_str(&addr.to_string())?,
        auth: token.map(|t| HeaderValue::from_str(&format!("Bearer {t}"))).transpose()?,
        served,
    });
    let (mut sender, connection) = connect(addr).await?;
    let status = drive(connection, send(&mut sender, &get)).await?;
    if status != served {
        bail!("{method} {path} answered HTTP {status}, not {served}");
    }
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency).map(|_| tokio::spawn(hammer_one(addr, get.clone(), until))).collect();
    let mut total = Counts::default();
    for task in tasks {
        let c = task.await.context("a load task panicked")??;
        total.ok += c.ok;
        total.other += c.other;
    }
    Ok((total.ok as f64 / start.elapsed().as_secs_f64(), total.other))
}

/// The socket address of a server's `http://host:port` URL.
pub(crate) fn address(url: &str) -> anyhow::Result<SocketAddr> {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("the server's address in {url}"))
}

/// Authorized reads of namespace `ns` with `token` against `/healthz`, the same load on each.
pub async fn api_throughput(
    url: &str,
    ns: &str,
    token: &str,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<ApiThroughput> {
    let addr = address(url)?;
    let (healthz, healthz_other) = hammer(addr, "/healthz", None, concurrency, seconds).await?;
    let path = format!("/v1/namespaces/{ns}");
    let (authorized, authorized_other) = hammer(addr, &path, Some(token), concurrency, seconds).await?;
    Ok(ApiThroughput {
        concurrency,
        seconds: seconds as f64,
        healthz_per_s: healthz,
        healthz_not_200: healthz_other,
        authorized_get_per_s: authorized,
        authorized_get_not_200: authorized_other,
        authorized_vs_healthz: authorized / healthz,
    })
}

// ---------------------------------------------------------------------------------------------
// Noisy neighbour.

/// One kind of noise tenant A makes, in a sandbox of its own.
pub struct Noise {
    pub name: &'static str,
    cpu_millis: u64,
    memory_bytes: u64,
    /// Runs with a filesystem of A's at `/workspace` (a disk flood writes there).
    workspace: bool,
    /// The body of a Python function that makes the noise (indented by four spaces).
    body: &'static str,
}

/// A's noise: within A's quotas of one core and 256 MiB, each at its sandbox's limit.
pub const NOISES: [Noise; 5] = [
    // Every process forks for ever, so the sandbox sits at its pids limit and every process
    // spins on a failing fork.
    Noise {
        name: "fork-bomb",
        cpu_millis: 300,
        memory_bytes: 64 * MIB,
        workspace: false,
        body: r#"
    while True:
        try:
            os.fork()
        except OSError:
            pass
"#,
    },
    // A buffer grows until the OOM killer ends its process.
    Noise {
        name: "memory-hog",
        cpu_millis: 200,
        memory_bytes: 128 * MIB,
        workspace: false,
        body: r#"
    b = bytearray()
    while True:
        b += b'x' * (1 << 20)
"#,
    },
    // Eight busy loops against half a core.
    Noise {
        name: "cpu-burn",
        cpu_millis: 500,
        memory_bytes: 64 * MIB,
        workspace: false,
        body: r#"
    for _ in range(3):
        os.fork()
    while True:
        pass
"#,
    },
    // Direct I/O (past the page cache, so the writes are the sandbox's own on cgroup v1 too)
    // of 1 MiB blocks over a 256 MiB file on A's filesystem, for ever: the host's disk, under
    // the loop device of A's filesystem, is what it floods.
    Noise {
        name: "disk-flood",
        cpu_millis: 300,
        memory_bytes: 64 * MIB,
        workspace: true,
        body: r#"
    import mmap
    block = mmap.mmap(-1, 1 << 20)
    block.write(b'x' * (1 << 20))
    fd = os.open('/workspace/flood', os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    while True:
        os.lseek(fd, 0, os.SEEK_SET)
        for _ in range(256):
            os.write(fd, block)
"#,
    },
    // A stream of 64 KiB sends over the sandbox's own loopback as fast as the kernel takes
    // them: the host's network stack (softirq time, socket buffers), not a wire.
    Noise {
        name: "net-flood",
        cpu_millis: 300,
        memory_bytes: 64 * MIB,
        workspace: false,
        body: r#"
    import socket
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(1)
    if os.fork() == 0:
        peer, _ = server.accept()
        while peer.recv(1 << 20):
            pass
        os._exit(0)
    client = socket.create_connection(server.getsockname())
    chunk = b'x' * (64 << 10)
    while True:
        client.sendall(chunk)
"#,
    },
];

/// The program of a noise (its body replaces `BODY`): a small parent runs the noise in a
/// child marked as the OOM killer's first choice and starts it again whenever it dies, so the
/// exec itself lives until A is stopped.
const NOISE_PROGRAM: &str = r#"
import os, time
def noise():
BODY
while True:
    try:
        pid = os.fork()
    except OSError:
        time.sleep(0.1)
        continue
    if pid == 0:
        try:
            open('/proc/self/oom_score_adj', 'w').write('1000')
        except OSError:
            pass
        noise()
        os._exit(0)
    os.waitpid(pid, 0)
"#;

fn noise_program(body: &str) -> String {
    NOISE_PROGRAM.replace("BODY", body.trim_matches('\n'))
}

/// The noises named in `names` (`fork-bomb`, `memory-hog`, `cpu-burn`, `disk-flood`,
/// `net-flood`).
pub fn noises(names: &[String]) -> anyhow::Result<Vec<&'static Noise>> {
    names
        .iter()
        .map(|n| {
            NOISES.iter().find(|x| x.name == n.as_str()).with_context(|| {
                let known: Vec<&str> = NOISES.iter().map(|x| x.name).collect();
                format!("unknown noise {n:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

/// The size of the filesystem a disk flood writes on.
const NOISE_FILESYSTEM_BYTES: u64 = 512 * MIB;

/// How long each noise command may run; the bench deletes A long before.
const NOISE_TIMEOUT_SECONDS: u64 = 600;
/// How long the noise ramps up before B is measured.
const RAMP_UP: Duration = Duration::from_secs(1);

/// What one of A's noises did while B was measured.
#[derive(Debug, Serialize)]
pub struct NoiseFigures {
    pub name: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Cores used on average over the window, from the sandbox's cgroup.
    pub cpu_cores: f64,
    pub oom_kills: u64,
    pub pids_limit_hits: u64,
    pub pids_at_end: u64,
    /// Set when the noise command ended before A was stopped (it should run until then).
    pub ended_early: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NoisyNeighbour {
    /// B's exec round trips (`true`) in one sandbox, alone on the host.
    pub b_alone: Stat,
    /// The same while A's noise runs.
    pub b_with_noisy_a: Stat,
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    pub window_ms: f64,
    pub a_noise: Vec<NoiseFigures>,
    /// Delete of A's namespace while its noise runs, until every host resource is gone.
    pub a_teardown_ms: f64,
    /// Why that delete failed, when it did (the bench then deletes A again at its end).
    pub a_teardown_error: Option<String>,
}

/// Running noise execs, aborted when dropped so no error path leaves them behind.
struct NoiseTasks(Vec<JoinHandle<Result<ExecResult, ClientError>>>);

impl Drop for NoiseTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Exec round trips of `true` in a sandbox, each timed.
async fn exec_round_trips(c: &Client, ns: &str, id: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let truth = ExecRequest { cmd: vec!["true".into()], ..Default::default() };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = c.exec(ns, id, &truth).await.with_context(|| format!("exec in {ns}"))?;
        out.push(t.elapsed());
        if r.exit_code != 0 {
            bail!("`true` in {ns} exited {}", r.exit_code);
        }
    }
    Ok(out)
}

/// Tenant B's exec round trips alone, then with tenant A running a fork bomb, a memory hog
/// and a CPU burn at its quotas; A is deleted afterwards.
pub async fn noisy_neighbour(
    admin: &Client,
    cgroups: &Cgroups,
    execs: usize,
    noises: &[&Noise],
) -> anyhow::Result<NoisyNeighbour> {
    placed_noisy_neighbour(admin, cgroups, execs, noises, None).await
}

/// [`noisy_neighbour`] with tenant B (the quiet one) in `b_placement`.
pub async fn placed_noisy_neighbour(
    admin: &Client,
    cgroups: &Cgroups,
    execs: usize,
    noises: &[&Noise],
    b_placement: Option<bulkhead_api::PlacementSpec>,
) -> anyhow::Result<NoisyNeighbour> {
    let result = noisy_in(admin, cgroups, execs, noises, b_placement).await;
    delete_namespaces(admin, &["tenant-a", "tenant-b"]).await;
    result
}

async fn noisy_in(
    admin: &Client,
    cgroups: &Cgroups,
    execs: usize,
    noises: &[&Noise],
    b_placement: Option<bulkhead_api::PlacementSpec>,
) -> anyhow::Result<NoisyNeighbour> {
    let quiet = Quotas {
        cpu_millis: 1000,
        memory_bytes: 1024 * MIB,
        disk_bytes: 0,
        max_sandboxes: 1,
        pids_per_sandbox: 256,
        max_sandbox_ttl_seconds: 3600,
        api_requests_per_second: crate::RAISED_API_REQUESTS_PER_SECOND,
        max_concurrent_execs: crate::RAISED_MAX_CONCURRENT_EXECS,
    };
    let b = placed_tenant(admin, "tenant-b", quiet, b_placement).await?;
    let sb = b
        .create_sandbox(
            "tenant-b",
            &CreateSandbox { cpu_millis: Some(1000), memory_bytes: Some(64 * MIB), ..Default::default() },
        )
        .await
        .context("create B's sandbox")?;
    exec_round_trips(&b, "tenant-b", &sb.id, 10).await?;
    let alone = stat(exec_round_trips(&b, "tenant-b", &sb.id, execs).await?);

    let workspaces = noises.iter().filter(|n| n.workspace).count() as u64;
    // One core and 256 MiB, or what the noises take together when that is more (all five at once).
    let noisy = Quotas {
        cpu_millis: noises.iter().map(|n| n.cpu_millis).sum::<u64>().max(1000),
        memory_bytes: noises.iter().map(|n| n.memory_bytes).sum::<u64>().max(256 * MIB),
        disk_bytes: workspaces * NOISE_FILESYSTEM_BYTES,
        max_sandboxes: noises.len().max(1) as u64,
        pids_per_sandbox: 256,
        max_sandbox_ttl_seconds: 3600,
        api_requests_per_second: crate::RAISED_API_REQUESTS_PER_SECOND,
        max_concurrent_execs: crate::RAISED_MAX_CONCURRENT_EXECS,
    };
    let a = tenant(admin, "tenant-a", noisy).await?;
    let mut sandboxes = Vec::new();
    let mut tasks = NoiseTasks(Vec::new());
    for noise in noises {
        let filesystem = if noise.workspace {
            let req = bulkhead_api::CreateFilesystem {
                name: format!("{}-{}", noise.name, sandboxes.len()),
                size_bytes: NOISE_FILESYSTEM_BYTES,
                project: None,
            };
            let fs = a.create_filesystem("tenant-a", &req).await.context("create A's filesystem")?;
            Some(bulkhead_api::SandboxFilesystem { id: fs.id, mode: "rw".into() })
        } else {
            None
        };
        let spec = CreateSandbox {
            cpu_millis: Some(noise.cpu_millis),
            memory_bytes: Some(noise.memory_bytes),
            filesystem,
            ..Default::default()
        };
        let s = a.create_sandbox("tenant-a", &spec).await.with_context(|| format!("create A's {}", noise.name))?;
        let req = ExecRequest {
            cmd: vec!["/usr/bin/python3".into(), "-c".into(), noise_program(noise.body)],
            timeout_seconds: Some(NOISE_TIMEOUT_SECONDS),
            ..Default::default()
        };
        let (a, id) = (a.clone(), s.id.clone());
        tasks.0.push(tokio::spawn(async move { a.exec("tenant-a", &id, &req).await }));
        sandboxes.push(s.id);
    }
    tokio::time::sleep(RAMP_UP).await;

    let stats_of = |ids: &[String]| -> Vec<SandboxStats> {
        ids.iter().map(|id| cgroups.stats("tenant-a", id).unwrap_or_default()).collect()
    };
    let before = stats_of(&sandboxes);
    let t = Instant::now();
    let with = stat(exec_round_trips(&b, "tenant-b", &sb.id, execs).await?);
    let window = t.elapsed();
    let after = stats_of(&sandboxes);

    let mut a_noise = Vec::new();
    for (i, noise) in noises.iter().enumerate() {
        let task = &mut tasks.0[i];
        let ended_early = if task.is_finished() {
            Some(match task.await {
                Ok(Ok(r)) => format!("exited {} ({})", r.exit_code, r.stderr.trim()),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            })
        } else {
            None
        };
        let (b0, b1) = (&before[i], &after[i]);
        a_noise.push(NoiseFigures {
            name: noise.name.into(),
            cpu_millis: noise.cpu_millis,
            memory_bytes: noise.memory_bytes,
            cpu_cores: b1.cpu_usage_ns.saturating_sub(b0.cpu_usage_ns) as f64 / 1e9 / window.as_secs_f64(),
            oom_kills: b1.oom_kills.saturating_sub(b0.oom_kills),
            pids_limit_hits: b1.pids_limit_hits.saturating_sub(b0.pids_limit_hits),
            pids_at_end: b1.pids,
            ended_early,
        });
    }
    let t = Instant::now();
    let a_teardown_error = admin.delete_namespace("tenant-a").await.err().map(|e| e.to_string());
    let a_teardown = t.elapsed();
    drop(tasks);
    b.delete_sandbox("tenant-b", &sb.id).await?;

    Ok(NoisyNeighbour {
        b_alone: alone,
        b_with_noisy_a: with,
        p50_ratio: with.p50_ms / alone.p50_ms,
        p99_ratio: with.p99_ms / alone.p99_ms,
        window_ms: window.as_secs_f64() * 1000.0,
        a_noise,
        a_teardown_ms: a_teardown.as_secs_f64() * 1000.0,
        a_teardown_error,
    })
}

/// The cgroups of the bench's server, to read the sandboxes' counters.
pub fn cgroups(prefix: &str) -> anyhow::Result<Cgroups> {
    Ok(Cgroups::detect(Path::new("/sys/fs/cgroup"), prefix)?)
}
