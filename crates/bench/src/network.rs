//! What a network of its own adds to a sandbox's start: `create → first exec output` on a
//! second server started with `--network isolated` (a network namespace, a veth, a /30 and the
//! API relay per sandbox), against the same measure on the bench's own loopback-only server in
//! the same run (target: ≤ 3 ms more at the median).
//!
//! `--only network` measures just this, on two servers of its own started side by side, the
//! runs alternating between them so that whatever else the host does weighs on both alike; and
//! then what the egress gateway costs a connection ([`egress`]): against the bench's own test
//! host ([`crate::testhost`]), connection setup (connect + one small request and its answer)
//! and bulk throughput from inside a sandbox of the `--network isolated` server, through its
//! gateway, against the same client run on the host straight to the same server, the rounds
//! alternating (targets: setup ≤ 1.2× direct, throughput ≥ 0.8× direct, at the medians).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulkhead_api::{
    CreateNamespace, CreateSandbox, EgressCeiling, ExecRequest, Quotas, SandboxEgress, UpdateNamespace,
};
use bulkhead_client::Client;
use serde::Serialize;

use crate::{stat, Stat};

/// Runs before the measured ones on each server, left out of the figures (the first sandbox
/// mounts the server's shared view, the first network warms the kernel's caches).
const WARMUP: usize = 3;

/// A server of the bench's own with a namespace `net` to create sandboxes in; killed when
/// dropped (the caller purges its names).
struct Server {
    _process: crate::ServerProcess,
    client: Client,
}

impl Server {
    /// Starts `bulkhead serve` with `extra` arguments on `data_dir`, `state_dir` and
    /// `cgroup_prefix`, and makes the namespace `net`.
    async fn start(
        bulkhead: &Path,
        data_dir: &Path,
        state_dir: &Path,
        cgroup_prefix: &str,
        extra: &[&str],
    ) -> anyhow::Result<Server> {
        let started = crate::server::Serve { bulkhead, data_dir, state_dir, cgroup_prefix, host_registry: None, extra }
            .spawn()
            .with_context(|| format!("start bulkhead serve {}", extra.join(" ")))?;
        let process = crate::ServerProcess(started.child);
        let admin = std::fs::read_to_string(data_dir.join("admin.token"))?.trim().to_owned();
        let client = Client::new(&started.url, Some(admin));
        let quotas = Quotas {
            cpu_millis: 100_000,
            memory_bytes: 1 << 40,
            disk_bytes: 1 << 30,
            max_sandboxes: 10,
            pids_per_sandbox: 256,
            max_sandbox_ttl_seconds: 3600,
            api_requests_per_second: crate::RAISED_API_REQUESTS_PER_SECOND,
            max_concurrent_execs: crate::RAISED_MAX_CONCURRENT_EXECS,
        };
        client
            .create_namespace(&CreateNamespace {
                name: "net".into(),
                isolation: None,
                placement: None,
                egress: None,
                quotas,
            })
            .await?;
        Ok(Server { _process: process, client })
    }

    /// One create → first output of `echo ready`, timed; the sandbox is deleted after, untimed.
    async fn create_once(&self) -> anyhow::Result<Duration> {
        let small = CreateSandbox { cpu_millis: Some(100), memory_bytes: Some(64 << 20), ..Default::default() };
        let echo = ExecRequest { cmd: vec!["echo".into(), "ready".into()], ..Default::default() };
        let t = Instant::now();
        let s = self.client.create_sandbox("net", &small).await?;
        let r = self.client.exec("net", &s.id, &echo).await?;
        let elapsed = t.elapsed();
        if r.stdout != "ready\n" {
            bail!("unexpected output {:?}", r.stdout);
        }
        self.client.delete_sandbox("net", &s.id).await?;
        Ok(elapsed)
    }

    async fn finish(self) -> anyhow::Result<()> {
        self.client.delete_namespace("net").await?;
        Ok(())
    }
}

/// Starts `bulkhead serve --network isolated` on `data_dir`, `state_dir` and `cgroup_prefix`
/// (with `image_args`: [`crate::images::DefaultImage::serve_args`]), and times `runs` creates → first output of `echo ready` (each sandbox deleted after); the
/// server is killed before this returns (the caller purges its names).
pub async fn networked_create(
    bulkhead: &Path,
    data_dir: &Path,
    state_dir: &Path,
    cgroup_prefix: &str,
    runtime_class: &str,
    image_args: &[String],
    runs: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut extra = vec!["--runtime-class", runtime_class, "--network", "isolated"];
    extra.extend(image_args.iter().map(String::as_str));
    let server = Server::start(bulkhead, data_dir, state_dir, cgroup_prefix, &extra).await?;
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        out.push(server.create_once().await?);
    }
    server.finish().await?;
    Ok(out)
}

/// The figures of `--only network`.
#[derive(Debug, Serialize)]
pub struct NetworkComparison {
    pub command_line: String,
    /// Create → first output on the loopback-only server.
    pub loopback_only: Stat,
    /// The same on the `--network isolated` server, runs alternating with the other's.
    pub isolated: Stat,
    /// `isolated.p50_ms - loopback_only.p50_ms` (target ≤ 3).
    pub added_p50_ms: f64,
    /// `isolated.p50_ms / loopback_only.p50_ms`.
    pub ratio_p50: f64,
    /// The median of the differences of the pairs of runs (each isolated run less the
    /// loopback-only run beside it): steadier than `added_p50_ms` on a busy host.
    pub added_paired_p50_ms: f64,
    /// Connection setup and bulk throughput through the egress gateway against direct.
    pub egress: EgressComparison,
}

/// Where the two servers of [`compare`] keep their host state.
pub struct ServerNames<'a> {
    pub data_dir: &'a Path,
    pub state_dir: &'a Path,
    pub cgroup_prefix: &'a str,
}

/// Makes the bench's test host ([`crate::testhost`]), starts a loopback-only server on
/// `loopback` and a `--network isolated` one on `isolated` (its `--egress-dns` on the test
/// host's /26, so that nothing it looks up leaves this machine), both with `runtime_class` and
/// the default image's `image_args`, and times `runs` creates → first output on each,
/// alternating, after [`WARMUP`] untimed ones on each; then [`egress`] on the isolated server
/// with `load`. Both servers are killed and the test host removed before this returns,
/// whatever happens (the caller purges the servers' names).
pub async fn compare(
    bulkhead: &Path,
    loopback: ServerNames<'_>,
    isolated: ServerNames<'_>,
    runtime_class: &str,
    image_args: &[String],
    runs: usize,
    load: EgressLoad,
) -> anyhow::Result<NetworkComparison> {
    let host = crate::testhost::TestHost::new().context("make the bench's test host")?;
    let dns = format!("{}:53", host.dns);
    let mut plain = vec!["--runtime-class", runtime_class, "--network", "loopback-only"];
    let mut networked = vec!["--runtime-class", runtime_class, "--network", "isolated", "--egress-dns", &dns];
    plain.extend(image_args.iter().map(String::as_str));
    networked.extend(image_args.iter().map(String::as_str));
    let a = Server::start(bulkhead, loopback.data_dir, loopback.state_dir, loopback.cgroup_prefix, &plain).await?;
    let b = Server::start(bulkhead, isolated.data_dir, isolated.state_dir, isolated.cgroup_prefix, &networked).await?;
    for _ in 0..WARMUP {
        a.create_once().await?;
        b.create_once().await?;
    }
    let (mut la, mut lb) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs {
        // Which goes first alternates too.
        if i % 2 == 0 {
            la.push(a.create_once().await?);
            lb.push(b.create_once().await?);
        } else {
            lb.push(b.create_once().await?);
            la.push(a.create_once().await?);
        }
    }
    eprintln!(
        "egress: {} rounds of {} connection setups and a {} MiB download, through the gateway and direct ...",
        load.rounds, load.connects, load.bulk_mib
    );
    let egress = egress(&b, &host, load).await?;
    a.finish().await?;
    b.finish().await?;
    drop(host);
    let mut paired: Vec<f64> = la.iter().zip(&lb).map(|(a, b)| (b.as_secs_f64() - a.as_secs_f64()) * 1000.0).collect();
    paired.sort_by(f64::total_cmp);
    let added_paired_p50_ms = paired.get(paired.len() / 2).copied().unwrap_or(f64::NAN);
    let (loopback_only, isolated) = (stat(la), stat(lb));
    Ok(NetworkComparison {
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        added_p50_ms: isolated.p50_ms - loopback_only.p50_ms,
        ratio_p50: isolated.p50_ms / loopback_only.p50_ms,
        added_paired_p50_ms,
        loopback_only,
        isolated,
        egress,
    })
}

/// Prints the figures of [`compare`] as a table.
pub fn print(r: &NetworkComparison) {
    println!("command: {}\n", r.command_line);
    println!("{:<44} {:>6} {:>10} {:>10}", "measure", "n", "p50 ms", "p99 ms");
    crate::row("sandbox create → first exec output", &r.loopback_only);
    crate::row("  the same with a network (--network isolated)", &r.isolated);
    println!(
        "  a network adds {:.2} ms at p50 (target ≤ 3 ms); isolated / loopback-only at p50: {:.3}",
        r.added_p50_ms, r.ratio_p50
    );
    println!(
        "  median of the paired differences (isolated run − loopback-only run beside it): {:.2} ms",
        r.added_paired_p50_ms
    );
    print_egress(&r.egress);
}

/// Prints the figures of [`egress`].
pub fn print_egress(e: &EgressComparison) {
    println!(
        "\negress gateway against a direct connection to the same test host ({}), {} rounds alternating",
        e.test_host, e.rounds
    );
    println!("{:<44} {:>6} {:>10} {:>10}", "measure", "n", "p50 ms", "p99 ms");
    crate::row("baseline: connect + small request, direct", &e.setup_direct);
    crate::row("  the same from a sandbox, via its gateway", &e.setup_gateway);
    println!("  gateway / direct at p50: {:.3} (target ≤ 1.2)", e.setup_ratio_p50);
    crate::row(&format!("baseline: {} MiB download, direct", e.bulk_mib), &e.bulk_direct);
    crate::row("  the same from a sandbox, via its gateway", &e.bulk_gateway);
    println!(
        "  throughput at p50: direct {:.0} MiB/s, gateway {:.0} MiB/s; gateway / direct: {:.3} (target ≥ 0.8)",
        e.bulk_direct_mib_s, e.bulk_gateway_mib_s, e.bulk_ratio_p50
    );
}

/// What the egress comparison does: `rounds` rounds (after one untimed) on each side, each
/// round `connects` connection setups and one download of `bulk_mib` MiB.
#[derive(Debug, Clone, Copy)]
pub struct EgressLoad {
    pub rounds: usize,
    pub connects: usize,
    pub bulk_mib: u64,
}

/// The client, run by python3 in the sandbox and on the host alike with the server's address,
/// port, the number of connection setups and the MiB to download: each setup is a new
/// connection, one small HTTP request and its whole answer; then one download. Timed with
/// `time.perf_counter`; prints `{"connect_s": [...], "bulk_s": ..., "bulk_bytes": ...}`.
const CLIENT_PY: &str = r#"
import json, socket, sys, time
addr, port, n, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sink = bytearray(1 << 20)
def get(path):
    s = socket.create_connection((addr, port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path.encode(), addr.encode()))
    head = b""
    while b"\r\n\r\n" not in head:
        got = s.recv(65536)
        if not got:
            raise SystemExit("closed before the answer's head: %r" % head)
        head += got
    head, _, body = head.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit("answer: %r" % head)
    length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0]
    left = length - len(body)
    while left > 0:
        got = s.recv_into(sink, min(left, len(sink)))
        if not got:
            raise SystemExit("closed %d bytes short" % left)
        left -= got
    s.close()
    return length
connect_s = []
for _ in range(n):
    t = time.perf_counter()
    get("/small")
    connect_s.append(time.perf_counter() - t)
t = time.perf_counter()
got = get("/bytes/%d" % mib)
bulk_s = time.perf_counter() - t
print(json.dumps({"connect_s": connect_s, "bulk_s": bulk_s, "bulk_bytes": got}))
"#;

/// What one run of [`CLIENT_PY`] printed.
#[derive(Debug, serde::Deserialize)]
struct ClientRun {
    connect_s: Vec<f64>,
    bulk_s: f64,
    bulk_bytes: u64,
}

impl ClientRun {
    fn parse(out: &str, load: EgressLoad, side: &str) -> anyhow::Result<ClientRun> {
        let run: ClientRun =
            serde_json::from_str(out.trim()).with_context(|| format!("the {side} client printed {out:?}"))?;
        if run.connect_s.len() != load.connects || run.bulk_bytes != load.bulk_mib << 20 {
            bail!("the {side} client did not do what it was asked: {out}");
        }
        Ok(run)
    }
}

/// The client's arguments against `host`.
fn client_args(host: &crate::testhost::TestHost, load: EgressLoad) -> Vec<String> {
    vec![
        "python3".into(),
        "-c".into(),
        CLIENT_PY.into(),
        host.server.to_string(),
        crate::testhost::TestHost::PORT.to_string(),
        load.connects.to_string(),
        load.bulk_mib.to_string(),
    ]
}

/// The figures of [`egress`].
#[derive(Debug, Serialize)]
pub struct EgressComparison {
    /// The test host's server, `ADDR:PORT`, on the bench's own /26.
    pub test_host: String,
    pub rounds: usize,
    pub connects_per_round: usize,
    pub bulk_mib: u64,
    /// Connect + one small request and its answer, from the host straight to the test host.
    pub setup_direct: Stat,
    /// The same from inside a sandbox, through its egress gateway.
    pub setup_gateway: Stat,
    /// `setup_gateway.p50_ms / setup_direct.p50_ms` (target ≤ 1.2).
    pub setup_ratio_p50: f64,
    /// Each round's download, timed from the connect to the last byte.
    pub bulk_direct: Stat,
    pub bulk_gateway: Stat,
    /// The medians of the rounds' throughputs.
    pub bulk_direct_mib_s: f64,
    pub bulk_gateway_mib_s: f64,
    /// `bulk_gateway_mib_s / bulk_direct_mib_s` (target ≥ 0.8).
    pub bulk_ratio_p50: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// On `server` (a `--network isolated` one whose namespace `net` has no sandbox left): sets
/// the namespace's egress ceiling to the test host's /26, creates a sandbox allowed that /26,
/// and runs [`CLIENT_PY`] in it (through the gateway) and on the host (straight), rounds
/// alternating and which side goes first alternating too, after one untimed round on each.
/// The sandbox is deleted after.
async fn egress(
    server: &Server,
    host: &crate::testhost::TestHost,
    load: EgressLoad,
) -> anyhow::Result<EgressComparison> {
    let c = &server.client;
    let ceiling = EgressCeiling { allow: vec![host.cidr.clone()], max_bandwidth_bytes_per_second: None };
    c.update_namespace("net", &UpdateNamespace { quotas: None, egress: Some(ceiling), placement: None })
        .await
        .context("set the namespace's egress ceiling")?;
    // Both cores: the sandbox's cpu limit is not what is measured.
    let create = CreateSandbox {
        cpu_millis: Some(2000),
        memory_bytes: Some(512 << 20),
        egress: Some(SandboxEgress { allow: vec![host.cidr.clone()], credentials: Vec::new() }),
        ..Default::default()
    };
    let s = c.create_sandbox("net", &create).await.context("create the egress sandbox")?;
    let result = egress_rounds(c, &s.id, host, load).await;
    let deleted = c.delete_sandbox("net", &s.id).await;
    let r = result?;
    deleted?;
    Ok(r)
}

async fn egress_rounds(
    c: &Client,
    id: &str,
    host: &crate::testhost::TestHost,
    load: EgressLoad,
) -> anyhow::Result<EgressComparison> {
    let args = client_args(host, load);
    let exec = ExecRequest { cmd: args.clone(), timeout_seconds: Some(600), ..Default::default() };
    let through_gateway = || async {
        let r = c.exec("net", id, &exec).await?;
        if r.exit_code != 0 || r.timed_out {
            bail!("the client in the sandbox failed ({}): {}", r.exit_code, r.stderr.trim());
        }
        ClientRun::parse(&r.stdout, load, "sandbox")
    };
    let direct = || async {
        let out = tokio::process::Command::new(&args[0])
            .args(&args[1..])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("run python3 on the host")?;
        if !out.status.success() {
            bail!("the client on the host failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        ClientRun::parse(&String::from_utf8_lossy(&out.stdout), load, "host")
    };
    through_gateway().await.context("the untimed round through the gateway")?;
    direct().await.context("the untimed direct round")?;
    let (mut gateway, mut straight) = (Vec::with_capacity(load.rounds), Vec::with_capacity(load.rounds));
    for i in 0..load.rounds {
        if i % 2 == 0 {
            gateway.push(through_gateway().await?);
            straight.push(direct().await?);
        } else {
            straight.push(direct().await?);
            gateway.push(through_gateway().await?);
        }
    }
    let setups = |runs: &[ClientRun]| {
        stat(runs.iter().flat_map(|r| r.connect_s.iter().map(|s| Duration::from_secs_f64(*s))).collect())
    };
    let bulk = |runs: &[ClientRun]| stat(runs.iter().map(|r| Duration::from_secs_f64(r.bulk_s)).collect());
    let mib_s = |runs: &[ClientRun]| median(runs.iter().map(|r| load.bulk_mib as f64 / r.bulk_s).collect());
    let (setup_direct, setup_gateway) = (setups(&straight), setups(&gateway));
    let (bulk_direct_mib_s, bulk_gateway_mib_s) = (mib_s(&straight), mib_s(&gateway));
    Ok(EgressComparison {
        test_host: format!("{}:{}", host.server, crate::testhost::TestHost::PORT),
        rounds: load.rounds,
        connects_per_round: load.connects,
        bulk_mib: load.bulk_mib,
        setup_ratio_p50: setup_gateway.p50_ms / setup_direct.p50_ms,
        setup_direct,
        setup_gateway,
        bulk_direct: bulk(&straight),
        bulk_gateway: bulk(&gateway),
        bulk_ratio_p50: bulk_gateway_mib_s / bulk_direct_mib_s,
        bulk_direct_mib_s,
        bulk_gateway_mib_s,
    })
}
