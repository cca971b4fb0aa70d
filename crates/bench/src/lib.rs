//! Bulkhead's speed measured side by side with raw baselines in the same run: a bare
//! fork/exec, the bare OCI runtime running a bundle with a sandbox's isolation on the same
//! image root (through `bulkhead_runtime::baseline`), the unauthenticated health check, bare
//! processes, a quiet tenant alone, Cedar alone. [`run`] starts its own `bulkhead serve`
//! process (real SQLite, real runtime, HTTP on loopback, sandboxes on the platform's default
//! image: see [`images`]) on a temporary data dir, drives it over HTTP with `bulkhead-client`
//! like any client, prints a table of medians, p99s and ratios, and writes the figures as JSON.
//! As root, on the host. Reached as `bulkhead bench` and as the `bulkhead-bench` binary.
//!
//! The bench is a program rather than a library of reusable parts: its errors are `anyhow`
//! chains printed once by whichever binary runs it.

pub mod crash;
pub mod images;
pub mod load;
pub mod network;
pub mod parts;
pub mod placement;
pub mod policy;
pub mod ratelimit;
pub mod replicas;
pub mod server;
pub mod tasks;
pub mod testhost;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulkhead_api::{CreateFilesystem, CreateKey, CreateNamespace, CreateSandbox, ExecRequest, Quotas, Role};
use bulkhead_client::Client;
use bulkhead_runtime::baseline::RawContainer;
use bulkhead_runtime::hostreg::{ID_BASE, ID_RANGE};
use bulkhead_runtime::oci::OciConfig;
use bulkhead_runtime::{IdRange, ImageRoot, RootSpec, SandboxSpec};
use clap::Args;
use serde::Serialize;

use crate::load::{ApiThroughput, Density, NoisyNeighbour};
use crate::parts::ExecParts;
use crate::policy::PolicyBench;

/// The bench's namespaces raise their request rate and commands at once to the bounds, so that
/// the throughput figures measure the server, not the tenant's rate limits (the defaults, 1,000
/// requests a second and 32 commands, would cap them). `--only ratelimit` measures the limits.
pub const RAISED_API_REQUESTS_PER_SECOND: u64 = 1_000_000;
/// See [`RAISED_API_REQUESTS_PER_SECOND`].
pub const RAISED_MAX_CONCURRENT_EXECS: u64 = 100_000;

/// What to measure and how much: the flags of `bulkhead bench` and of `bulkhead-bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Sequential create → first output runs (and raw OCI runtime runs).
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Exec round trips in one sandbox.
    #[arg(long, default_value_t = 500)]
    execs: usize,
    /// The cpu limit of the sandbox the execs run in, in thousandths of a core (the created
    /// sandboxes' 100 unless told).
    #[arg(long, default_value_t = 100)]
    exec_cpu_millis: u64,
    /// Sandboxes created at once.
    #[arg(long, default_value_t = 100)]
    concurrent: usize,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "bench.json")]
    out: PathBuf,
    /// Bytes of the tree pushed and pulled as an archive.
    #[arg(long, default_value_t = 128 << 20)]
    archive_bytes: u64,
    /// The OCI runtime of the benchmarked isolation tier (and of the raw baseline): `runc` or
    /// `crun` for the container tier, `runsc` for the gvisor tier (its sandboxes run on
    /// gVisor's kernel; see docs/ARCHITECTURE.md, *The gvisor tier*).
    #[arg(long, default_value = "runc")]
    runtime: String,
    /// Idle sandboxes (the smallest allowed) held at once, against as many bare processes;
    /// 0 skips.
    #[arg(long, default_value_t = 200)]
    density: usize,
    /// The cpu limit of each of those sandboxes, in thousandths of a core (10 is the least
    /// allowed, but at 10 the sandbox's own start is throttled to a crawl).
    #[arg(long, default_value_t = 100)]
    density_cpu_millis: u64,
    /// Connections hammering the API at once.
    #[arg(long, default_value_t = 32)]
    api_concurrency: usize,
    /// Seconds of API load, on authorized reads and on `/healthz` each; 0 skips.
    #[arg(long, default_value_t = 5)]
    api_seconds: u64,
    /// Exec round trips of the quiet tenant, alone and beside a noisy one; 0 skips.
    #[arg(long, default_value_t = 300)]
    noisy_execs: usize,
    /// The noisy tenant's noises, each in a sandbox of its own.
    #[arg(long, value_delimiter = ',', default_value = "fork-bomb,memory-hog,cpu-burn")]
    noise: Vec<String>,
    /// `--only placement`: tenant A's noises, each measured alone, then all at once.
    #[arg(long, value_delimiter = ',', default_value = "fork-bomb,memory-hog,cpu-burn,disk-flood,net-flood")]
    placement_noise: Vec<String>,
    /// Measure one section alone: `network` (create → first output, loopback-only against
    /// `--network isolated`, runs alternating between two servers; then connection setup and
    /// bulk throughput through the egress gateway against direct, to a test host the bench
    /// makes on a documentation /26 of this machine's own), or `images` (the raw OCI runtime
    /// on the default image's layers and on the host's base; create → first output from the
    /// default image and from a template, alternating; snapshot; idle sandboxes on the image).
    /// `tasks`: event in → first message out through a task against the same agent on its
    /// stdio, alternating; then `--tasks` tasks at once and their memory. `ratelimit`: tenant
    /// B's API p50/p99 alone, beside tenant A flooding the API (`--api-concurrency` connections
    /// for `--api-seconds`) at its limit, and beside the same flood with A unlimited.
    /// `placement`: tenant B's exec round trips alone and beside each of tenant A's noises (and
    /// all of them at once), with B `shared` and then `dedicated`. `replicas` (needs `--store`):
    /// authorized reads a second against one replica and then two on one PostgreSQL store, an
    /// exec on the sandbox's replica against one forwarded by the other, and how long a key
    /// revoked through one replica still works on the other.
    #[arg(long, value_parser = ["network", "images", "tasks", "ratelimit", "placement", "replicas"])]
    only: Option<String>,
    /// `--only replicas`: a PostgreSQL server's URL whose role may create databases (the bench
    /// makes one of its own there and drops it at the end), such as the
    /// `$BULKHEAD_TEST_STORE` that `scripts/with-postgres` gives.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// `--only replicas`: keys revoked through one replica and timed until the other refuses them.
    #[arg(long, default_value_t = 20)]
    revocations: usize,
    /// `--only ratelimit`: tenant A's `api_requests_per_second` while it floods.
    #[arg(long, default_value_t = 100)]
    ratelimit_rps: u64,
    /// `--only tasks`: tasks created at once.
    #[arg(long, default_value_t = 100)]
    tasks: usize,
    /// The default image every server of the bench boots (an OCI image layout tar built by
    /// `scripts/build-default-image`), unpacked once per run into a layer store of the run's
    /// own. Default: `$BULKHEAD_DEFAULT_IMAGE`, else `/var/tmp/bulkhead-images/default.tar`,
    /// else `/var/lib/bulkhead/default-image.tar`.
    #[arg(long, value_name = "PATH")]
    default_image: Option<PathBuf>,
    /// `--only network`: rounds of the egress comparison on each side (after one untimed).
    #[arg(long, default_value_t = 20)]
    egress_rounds: usize,
    /// `--only network`: connection setups (connect + a small request and its answer) per
    /// round.
    #[arg(long, default_value_t = 50)]
    egress_connects: usize,
    /// `--only network`: MiB downloaded once per round.
    #[arg(long, default_value_t = 256)]
    egress_bulk_mib: u64,
}

/// Whether the tier of OCI runtime `runtime` has warm pools (the gvisor tier has none).
fn has_pools(runtime: &str) -> bool {
    bulkhead_runtime::spec::OciKind::of(runtime) == bulkhead_runtime::spec::OciKind::Native
}

/// The density figures (see [`load::density`]) of `args.density` sandboxes of the benchmarked
/// tier: the smallest the API admits on the container tier, those gVisor can hold on the
/// gvisor tier.
async fn density(
    args: &BenchArgs,
    admin: &Client,
    cgroups: &bulkhead_runtime::cgroup::Cgroups,
    prefix: &str,
) -> anyhow::Result<Density> {
    let memory = match bulkhead_runtime::spec::OciKind::of(&args.runtime) {
        bulkhead_runtime::spec::OciKind::Native => load::DENSITY_MEMORY_BYTES,
        bulkhead_runtime::spec::OciKind::Gvisor => load::GVISOR_DENSITY_MEMORY_BYTES,
    };
    load::density(admin, cgroups, prefix, args.density, args.density_cpu_millis, memory).await
}

/// Latencies of one measure: how many, median and 99th percentile in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The [`Stat`] of `samples` (NaN percentiles when there are none).
pub fn stat(mut samples: Vec<Duration>) -> Stat {
    samples.sort();
    let pick = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN)
    };
    Stat { n: samples.len(), p50_ms: pick(0.5), p99_ms: pick(0.99) }
}

#[derive(Debug, Serialize)]
struct Report {
    host: String,
    command_line: String,
    fork_exec: Stat,
    /// The raw OCI runtime with a whole core, on the default image's layers (an overlay with a
    /// tmpfs upper, mounted once for all its runs).
    raw_oci_first_output: Stat,
    /// The raw OCI runtime under the benchmarked sandboxes' own cpu limit, on the same root.
    raw_oci_first_output_sandbox_cpu: Stat,
    /// The raw OCI runtime with a whole core on the host's base (`--root host`), as the raw
    /// baseline ran before sandboxes had images.
    raw_oci_first_output_host_root: Stat,
    /// The cpu limit of the benchmarked sandboxes, in thousandths of a core.
    sandbox_cpu_millis: u64,
    create_to_first_output: Stat,
    /// The same on a server with `--network isolated`.
    create_to_first_output_networked: Stat,
    create_vs_raw_p50: f64,
    create_vs_raw_sandbox_cpu_p50: f64,
    exec_round_trip: Stat,
    /// Exec round trip p50 over the fork/exec measured interleaved with the execs.
    exec_vs_fork_p50: f64,
    /// The cpu limit of the sandbox the execs ran in, in thousandths of a core.
    exec_sandbox_cpu_millis: u64,
    /// Where an exec's time goes, each part measured interleaved with the execs.
    exec_parts: ExecParts,
    delete_to_clean: Stat,
    concurrent_creates: usize,
    concurrent_total_ms: f64,
    concurrent_create: Stat,
    filesystem_create_to_mountable: Stat,
    archive_mib: f64,
    archive_push_mib_s: f64,
    archive_pull_mib_s: f64,
    local_tar_copy_mib_s: f64,
    /// Sandboxes from the default image and from a template; the default image's import.
    images: images::ImagesReport,
    /// Authorized reads per second against `/healthz`; absent when skipped.
    api_throughput: Option<ApiThroughput>,
    /// Idle sandboxes (on the default image) held at once against bare processes; absent when
    /// skipped.
    density: Option<Density>,
    /// A quiet tenant's exec latency alone and beside a noisy one; absent when skipped.
    noisy_neighbour: Option<NoisyNeighbour>,
    /// A sandbox's death noticed, and the server back after `kill -9`.
    recovery: crash::Recovery,
    /// Authorization decisions per second with 100 custom policies, against Cedar alone.
    policy: PolicyBench,
}

fn host() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok()))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} cpus, {} GiB, Linux {}", mem / 1024 / 1024, kernel.trim())
}

/// The bare OCI runtime: a bundle with the sandbox's isolation, a cpu limit of `cpu_millis`
/// and root `root` (an image root is mounted once, before the runs) whose process is
/// `echo ready`, run `n` times, each timed to the first line of output.
fn raw_oci(
    config: OciConfig,
    oci: &str,
    n: usize,
    ids: IdRange,
    cpu_millis: u64,
    root: &RootSpec,
) -> anyhow::Result<Vec<Duration>> {
    let spec = SandboxSpec {
        id: "sbx_rawbaseline".into(),
        namespace: "raw".into(),
        oci_runtime: oci.into(),
        cpu_millis,
        memory_bytes: 128 << 20,
        pids: 64,
        tmp_bytes: 64 << 20,
        ids,
        env: vec![],
        workspace: None,
        agent_code: None,
        run_files: Vec::new(),
        extra_ca_pem: None,
        root: root.clone(),
        pooled: false,
    };
    let mut container = RawContainer::prepare(config, &spec, &["/bin/echo", "ready"])?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (elapsed, line) = container.run_to_first_line()?;
        if line != "ready" {
            bail!("raw {oci} run printed {line:?}, not \"ready\"");
        }
        out.push(elapsed);
    }
    Ok(out)
}

/// The raw OCI runtime's runs of [`raw_baselines`], each to the first line of output.
struct RawRuns {
    /// On the default image's layers with a whole core.
    image: Vec<Duration>,
    /// On the same root at the sandboxes' cpu limit.
    image_sandbox_cpu: Vec<Duration>,
    /// On the host's base with a whole core.
    host: Vec<Duration>,
}

/// The raw OCI runtime's baselines, `args.runs` runs each: on the root a sandbox of the
/// default image gets (its layers as the server's admin API lists them, under an overlay with a
/// tmpfs upper as large as a sandbox of the bench's gets), with a whole core and at
/// `sandbox_cpu` millicores; then on the host's base with a whole core, as before images. The
/// containers use a state dir and cgroup prefix of their own ([`Names::raw`]).
async fn raw_baselines(
    admin: &Client,
    bulkhead: &Path,
    data: &Path,
    settings: &Names,
    image: &images::DefaultImage,
    args: &BenchArgs,
    sandbox_cpu: u64,
) -> anyhow::Result<RawRuns> {
    let layers = images::root_of_default(admin, &image.public_layers).await?;
    // A state dir and cgroup prefix of their own: the server holds its own for itself alone.
    let (raw_state, raw_prefix) = settings.raw();
    let oci = args.runtime.clone();
    let config = OciConfig {
        state_dir: raw_state,
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        cgroup_prefix: raw_prefix,
        supervisor: bulkhead.with_file_name("bulkhead-supervisor"),
        runtimes: vec![("container".into(), oci.clone())],
        owner: "bench-baseline".into(),
        data_dir: data.to_owned(),
        network: None,
        egress_ca_pem: None,
        egress_dns: None,
        lxcfs: Some("/var/lib/lxcfs".into()),
    };
    // The same kind of host id range a namespace gets (one the server does not hand out).
    let ids = IdRange { host_start: ID_BASE - ID_RANGE, size: ID_RANGE };
    // The writable root of the bench's sandboxes: the smaller of 1 GiB and their 64 MiB.
    let root = RootSpec::Image(ImageRoot { layers, writable_bytes: 64 << 20 });
    Ok(RawRuns {
        image: raw_oci(config.clone(), &oci, args.runs, ids, 1000, &root)?,
        image_sandbox_cpu: raw_oci(config.clone(), &oci, args.runs, ids, sandbox_cpu, &root)?,
        // gVisor cannot run the host's base (see docs/ARCHITECTURE.md, *The gvisor tier*): no
        // samples, printed as NaN.
        host: match bulkhead_runtime::spec::OciKind::of(&oci) {
            bulkhead_runtime::spec::OciKind::Native => raw_oci(config, &oci, args.runs, ids, 1000, &RootSpec::Host)?,
            bulkhead_runtime::spec::OciKind::Gvisor => Vec::new(),
        },
    })
}

/// The figures of `--only images`.
#[derive(Debug, Serialize)]
struct ImagesAlone {
    host: String,
    command_line: String,
    /// The raw OCI runtime with a whole core on the default image's layers.
    raw_oci_first_output: Stat,
    /// The same at the sandboxes' cpu limit.
    raw_oci_first_output_sandbox_cpu: Stat,
    /// The same with a whole core on the host's base.
    raw_oci_first_output_host_root: Stat,
    sandbox_cpu_millis: u64,
    /// The server's first start (the default image recorded; its layers unpacked before).
    first_start_to_answering: Stat,
    images: images::ImagesReport,
}

/// `--only images`: one loopback-only server on the default image; the raw baselines, the
/// images section and the density on it; then the same cleanup as [`run`].
async fn only_images(
    args: &BenchArgs,
    bulkhead: &Path,
    data: &Path,
    settings: &Names,
    image: &images::DefaultImage,
) -> anyhow::Result<()> {
    let result = images_alone(args, bulkhead, data, settings, image).await;
    leave_nothing_behind(settings).await;
    let _ = std::fs::remove_dir_all(data);
    forget_in_host_registry(&settings.cgroup_prefix);
    let report = result?;
    println!("host: {}", report.host);
    println!("command: {}\n", report.command_line);
    println!("{:<44} {:>6} {:>10} {:>10}", "measure", "n", "p50 ms", "p99 ms");
    row("baseline: raw OCI runtime, image root", &report.raw_oci_first_output);
    row(
        &format!("  the same at the sandbox's {} millicores", report.sandbox_cpu_millis),
        &report.raw_oci_first_output_sandbox_cpu,
    );
    row("  the same on the host's base (whole core)", &report.raw_oci_first_output_host_root);
    row("first start → first authenticated answer", &report.first_start_to_answering);
    images::print(&report.images);
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", args.out.display()))?;
    println!("\nfigures written to {}", args.out.display());
    Ok(())
}

async fn images_alone(
    args: &BenchArgs,
    bulkhead: &Path,
    data: &Path,
    settings: &Names,
    image: &images::DefaultImage,
) -> anyhow::Result<ImagesAlone> {
    let runtime_class = format!("container={}", args.runtime);
    let image_args = image.serve_args();
    let mut extra = vec!["--runtime-class", runtime_class.as_str(), "--network", "loopback-only"];
    extra.extend(image_args.iter().map(String::as_str));
    let serve = server::Serve {
        bulkhead,
        data_dir: &data.join("data"),
        state_dir: &settings.state_dir,
        cgroup_prefix: &settings.cgroup_prefix,
        host_registry: None,
        extra: &extra,
    };
    let t = Instant::now();
    let started = serve.spawn().context("start bulkhead serve")?;
    let server = ServerProcess(started.child);
    let admin = std::fs::read_to_string(data.join("data").join("admin.token"))?.trim().to_owned();
    let first_start = crash::until_answering(&started.url, &admin, t).await?;
    let admin_client = Client::new(&started.url, Some(admin));
    let quotas = Quotas {
        cpu_millis: 100 * 1000,
        memory_bytes: 1 << 40,
        disk_bytes: 1 << 30,
        max_sandboxes: 10,
        pids_per_sandbox: 256,
        max_sandbox_ttl_seconds: 3600,
        api_requests_per_second: RAISED_API_REQUESTS_PER_SECOND,
        max_concurrent_execs: RAISED_MAX_CONCURRENT_EXECS,
    };
    admin_client
        .create_namespace(&CreateNamespace {
            name: "bench".into(),
            isolation: None,
            placement: None,
            egress: None,
            quotas,
        })
        .await?;
    let key = admin_client
        .create_key(
            "bench",
            &CreateKey { name: "bench".into(), role: Role::Developer, expires_at: None, projects: None },
        )
        .await?;
    let c = Client::new(&started.url, Some(key.token));
    let small = CreateSandbox { cpu_millis: Some(100), memory_bytes: Some(64 << 20), ..Default::default() };
    let sandbox_cpu = small.cpu_millis.context("the bench's sandbox cpu")?;

    eprintln!("baselines: raw {} on the default image's layers, then on the host's base ...", args.runtime);
    let raws = raw_baselines(&admin_client, bulkhead, data, settings, image, args, sandbox_cpu).await?;
    let pools = has_pools(&args.runtime);
    let section =
        images::Section { developer: &c, admin: &admin_client, ns: "bench", sandbox: &small, runs: args.runs, pools };
    let mut images = images::measure(&section, image, stat(raws.image_sandbox_cpu.clone())).await?;
    admin_client.delete_namespace("bench").await?;
    if args.density > 0 {
        eprintln!("density: {0} bare processes, then {0} idle sandboxes on the default image ...", args.density);
        let cgroups = load::cgroups(&settings.cgroup_prefix)?;
        images.density = Some(density(args, &admin_client, &cgroups, &settings.cgroup_prefix).await?);
    }
    drop(server);
    Ok(ImagesAlone {
        host: host(),
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        raw_oci_first_output: stat(raws.image),
        raw_oci_first_output_sandbox_cpu: stat(raws.image_sandbox_cpu),
        raw_oci_first_output_host_root: stat(raws.host),
        sandbox_cpu_millis: sandbox_cpu,
        first_start_to_answering: stat(vec![first_start]),
        images,
    })
}

/// The figures of `--only tasks`.
#[derive(Debug, Serialize)]
struct TasksAlone {
    host: String,
    command_line: String,
    tasks: tasks::TasksReport,
}

/// `--only tasks`: one loopback-only server on the default image; [`tasks::measure`]; then the
/// same cleanup as [`run`].
async fn only_tasks(
    args: &BenchArgs,
    bulkhead: &Path,
    data: &Path,
    settings: &Names,
    image: &images::DefaultImage,
) -> anyhow::Result<()> {
    let result = async {
        let runtime_class = format!("container={}", args.runtime);
        let image_args = image.serve_args();
        let mut extra = vec!["--runtime-class", runtime_class.as_str(), "--network", "loopback-only"];
        extra.extend(image_args.iter().map(String::as_str));
        let serve = server::Serve {
            bulkhead,
            data_dir: &data.join("data"),
            state_dir: &settings.state_dir,
            cgroup_prefix: &settings.cgroup_prefix,
            host_registry: None,
            extra: &extra,
        };
        let started = serve.spawn().context("start bulkhead serve")?;
        let pid = started.child.id();
        let server = ServerProcess(started.child);
        let admin = std::fs::read_to_string(data.join("data").join("admin.token"))?.trim().to_owned();
        let admin = Client::new(&started.url, Some(admin));
        let report = tasks::measure(&admin, args.runs, args.tasks, pid).await;
        drop(server);
        report
    }
    .await;
    leave_nothing_behind(settings).await;
    let _ = std::fs::remove_dir_all(data);
    forget_in_host_registry(&settings.cgroup_prefix);
    let report =
        TasksAlone { host: host(), command_line: std::env::args().collect::<Vec<_>>().join(" "), tasks: result? };
    println!("host: {}", report.host);
    println!("command: {}\n", report.command_line);
    println!("{:<44} {:>6} {:>10} {:>10}", "measure", "n", "p50 ms", "p99 ms");
    tasks::print(&report.tasks);
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", args.out.display()))?;
    println!("\nfigures written to {}", args.out.display());
    Ok(())
}

/// Runs `measure` against one loopback-only server of its own (the admin's client and the
/// server's URL), then the same cleanup as [`run`], whatever `measure` did.
async fn with_loopback_server<T, F, Fut>(
    args: &BenchArgs,
    bulkhead: &Path,
    data: &Path,
    settings: &Names,
    image: &images::DefaultImage,
    serve_extra: &[&str],
    measure: F,
) -> anyhow::Result<T>
where
    F: FnOnce(Client, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let result = async {
        let runtime_class = format!("container={}", args.runtime);
        let image_args = image.serve_args();
        let mut extra = vec!["--runtime-class", runtime_class.as_str(), "--network", "loopback-only"];
        extra.extend(image_args.iter().map(String::as_str));
        extra.extend_from_slice(serve_extra);
        let serve = server::Serve {
            bulkhead,
            data_dir: &data.join("data"),
            state_dir: &settings.state_dir,
            cgroup_prefix: &settings.cgroup_prefix,
            host_registry: None,
            extra: &extra,
        };
        let started = serve.spawn().context("start bulkhead serve")?;
        let server = ServerProcess(started.child);
        let admin = std::fs::read_to_string(data.join("data").join("admin.token"))?.trim().to_owned();
        let admin = Client::new(&started.url, Some(admin));
        let report = measure(admin, started.url.clone()).await;
        drop(server);
        report
    }
    .await;
    leave_nothing_behind(settings).await;
    // The server's own data; the run's (the public layer store) is its caller's to remove, as
    // a caller may start another server on it.
    let _ = std::fs::remove_dir_all(data.join("data"));
    forget_in_host_registry(&settings.cgroup_prefix);
    result
}

/// `--only ratelimit`: one loopback-only server; [`ratelimit::measure`].
async fn only_ratelimit(
    args: &BenchArgs,
    bulkhead: &Path,
    data: &Path,
    settings: &Names,
    image: &images::DefaultImage,
) -> anyhow::Result<()> {
    let seconds = args.api_seconds.max(1);
    let figures = with_loopback_server(args, bulkhead, data, settings, image, &[], |admin, url| async move {
        ratelimit::measure(&admin, &url, args.ratelimit_rps, args.api_concurrency, seconds).await
    })
    .await;
    let _ = std::fs::remove_dir_all(data);
    report_section(args, "ratelimit", &figures?, ratelimit::print)
}

/// `--only placement`: two loopback-only servers, one after the other; [`placement::measure`].
async fn only_placement(
    args: &BenchArgs,
    bulkhead: &Path,
    data: &Path,
    settings: &Names,
    image: &images::DefaultImage,
) -> anyhow::Result<()> {
    let result = placement_on_two_servers(args, bulkhead, data, settings, image).await;
    let _ = std::fs::remove_dir_all(data);
    result
}

async fn placement_on_two_servers(
    args: &BenchArgs,
    bulkhead: &Path,
    data: &Path,
    settings: &Names,
    image: &images::DefaultImage,
) -> anyhow::Result<()> {
    let noises = load::noises(&args.placement_noise)?;
    let cgroups = load::cgroups(&settings.cgroup_prefix)?;
    let execs = args.noisy_execs.max(1);
    // First the control plane in the cgroup it was started in (the default; the host's root
    // here), then in its own weighted one; the same noises, the same B, one server each.
    let unweighted = ["--control-plane-cpu-weight", "0"];
    let baseline = with_loopback_server(args, bulkhead, data, settings, image, &unweighted, |admin, _url| {
        let (cgroups, noises) = (&cgroups, &noises);
        async move { placement::measure(&admin, cgroups, execs, noises, placement::ControlPlane::Unweighted).await }
    })
    .await?;
    let weight = bulkhead_runtime::cgroup::CONTROL_PLANE_CPU_WEIGHT.to_string();
    let weighted_args = ["--control-plane-cpu-weight", weight.as_str()];
    let weighted = with_loopback_server(args, bulkhead, data, settings, image, &weighted_args, |admin, _url| {
        let (cgroups, noises) = (&cgroups, &noises);
        async move { placement::measure(&admin, cgroups, execs, noises, placement::ControlPlane::Weighted).await }
    })
    .await?;
    let figures = placement::PlacementReport::merge(baseline, weighted);
    report_section(args, "placement", &figures, placement::print)
}

/// `--only replicas`: a database of its own on `--store`'s server, two replicas on it (the
/// second with the first's master key); [`replicas::measure`]; then the database dropped.
async fn only_replicas(
    args: &BenchArgs,
    bulkhead: &Path,
    data: &Path,
    settings: &Names,
    image: &images::DefaultImage,
) -> anyhow::Result<()> {
    use sqlx::{Connection, Executor};
    let Some(server) = args.store.as_deref() else {
        bail!("--only replicas needs --store postgres://... (scripts/with-postgres gives one as $BULKHEAD_TEST_STORE)");
    };
    let database = format!("bulkhead_bench_{}", std::process::id());
    let url = with_database(server, &database)?;
    let mut admin_conn = sqlx::PgConnection::connect(server).await.context("connect to --store")?;
    admin_conn.execute(format!("CREATE DATABASE {database}").as_str()).await.context("create the bench's database")?;
    let result = replicas_on(args, bulkhead, data, settings, image, &url).await;
    leave_nothing_behind(settings).await;
    forget_in_host_registry(&settings.cgroup_prefix);
    forget_in_host_registry(&settings.net().1);
    let _ = admin_conn.execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str()).await;
    let _ = std::fs::remove_dir_all(data);
    report_section(args, "replicas", &result?, replicas::print)
}

/// `url` with its database (the path) replaced by `database`, its query kept.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").context("--store: not a URL")? + 3;
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

async fn replicas_on(
    args: &BenchArgs,
    bulkhead: &Path,
    data: &Path,
    settings: &Names,
    image: &images::DefaultImage,
    url: &str,
) -> anyhow::Result<replicas::ReplicaReport> {
    let runtime_class = format!("container={}", args.runtime);
    let image_args = image.serve_args();
    let mut extra = vec!["--runtime-class", runtime_class.as_str(), "--network", "loopback-only", "--store", url];
    extra.extend(image_args.iter().map(String::as_str));
    let (data_a, data_b) = (data.join("data"), data.join("net"));
    let a = server::Serve {
        bulkhead,
        data_dir: &data_a,
        state_dir: &settings.state_dir,
        cgroup_prefix: &settings.cgroup_prefix,
        host_registry: None,
        extra: &extra,
    }
    .spawn()
    .context("start replica A")?;
    let _a_process = ServerProcess(a.child);
    let admin = a.first_token.clone().context("replica A made no admin token: the database is not new")?;
    let admin = Client::new(&a.url, Some(admin));
    let token = replicas::tenant(&admin).await?;
    let (concurrency, seconds) = (args.api_concurrency.max(2), args.api_seconds.max(1));
    let one = replicas::one(&a.url, &token, concurrency, seconds).await?;
    // Replica B: the same master key, as `BULKHEAD_MASTER_KEY` would give it.
    std::fs::create_dir_all(&data_b)?;
    std::fs::copy(data_a.join("master.key"), data_b.join("master.key")).context("copy the master key")?;
    let (b_state, b_prefix) = settings.net();
    let b = server::Serve {
        bulkhead,
        data_dir: &data_b,
        state_dir: &b_state,
        cgroup_prefix: &b_prefix,
        host_registry: None,
        extra: &extra,
    }
    .spawn()
    .context("start replica B")?;
    let _b_process = ServerProcess(b.child);
    let execs = args.noisy_execs.max(1);
    replicas::measure(&admin, &a.url, &b.url, &token, one, concurrency, seconds, execs, args.revocations.max(1)).await
}

/// Prints one `--only` section's figures under the host and the command line, and writes them
/// as JSON (`{"host", "command_line", <name>: figures}`) to `--out`.
fn report_section<T: Serialize>(args: &BenchArgs, name: &str, figures: &T, print: fn(&T)) -> anyhow::Result<()> {
    let (host, command_line) = (host(), std::env::args().collect::<Vec<_>>().join(" "));
    println!("host: {host}");
    println!("command: {command_line}\n");
    print(figures);
    let report = serde_json::json!({"host": host, "command_line": command_line, name: figures});
    write_figures(args, &report)
}

/// Writes a section's figures as JSON to `--out`.
fn write_figures(args: &BenchArgs, report: &impl Serialize) -> anyhow::Result<()> {
    std::fs::write(&args.out, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("write {}", args.out.display()))?;
    println!("\nfigures written to {}", args.out.display());
    Ok(())
}

/// Where the bench's server keeps its host state: a state dir and cgroup prefix of its own.
struct Names {
    state_dir: PathBuf,
    cgroup_prefix: String,
}

impl Names {
    /// The state dir and cgroup prefix of the second server, with `--network isolated`.
    fn net(&self) -> (PathBuf, String) {
        (PathBuf::from(format!("{}-net", self.state_dir.display())), format!("{}-net", self.cgroup_prefix))
    }

    /// The state dir and cgroup prefix of the bare OCI runtime's baseline containers.
    fn raw(&self) -> (PathBuf, String) {
        (PathBuf::from(format!("{}-raw", self.state_dir.display())), format!("{}-raw", self.cgroup_prefix))
    }
}

/// Runs the whole bench against a server of the `bulkhead` binary at `bulkhead` (its
/// `bulkhead-supervisor` beside it), prints the table and writes the JSON to `args.out`.
/// Everything it made on the host is removed whatever happens.
pub async fn run(args: &BenchArgs, bulkhead: &Path) -> anyhow::Result<()> {
    let archive = images::find_default_image(args.default_image.as_deref())?;
    let tag: String = std::process::id().to_string();
    let data = tempdir_path(&format!("bulkhead-bench-{tag}"))?;
    let settings = Names {
        state_dir: PathBuf::from(format!("/run/bulkhead-bench-{tag}")),
        cgroup_prefix: format!("bulkhead-bench-{tag}"),
    };
    eprintln!("default image: importing {} into the run's public layer store ...", archive.display());
    let image = match images::DefaultImage::import(&archive, &data.join("public-layers")) {
        Ok(image) => image,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&data);
            return Err(e);
        }
    };
    eprintln!(
        "default image: {} layers, {:.0} MiB unpacked, first import {:.1} s",
        image.layers,
        image.size_bytes as f64 / (1 << 20) as f64,
        image.import.as_secs_f64()
    );
    match args.only.as_deref() {
        Some("network") => return only_network(args, bulkhead, &data, &settings, &image).await,
        Some("images") => return only_images(args, bulkhead, &data, &settings, &image).await,
        Some("tasks") => return only_tasks(args, bulkhead, &data, &settings, &image).await,
        Some("ratelimit") => return only_ratelimit(args, bulkhead, &data, &settings, &image).await,
        Some("placement") => return only_placement(args, bulkhead, &data, &settings, &image).await,
        Some("replicas") => return only_replicas(args, bulkhead, &data, &settings, &image).await,
        _ => {}
    }
    let result = bench(args, bulkhead, &data, &settings, &image).await;
    // Whatever happened, leave nothing behind.
    leave_nothing_behind(&settings).await;
    let _ = std::fs::remove_dir_all(&data);
    forget_in_host_registry(&settings.cgroup_prefix);
    forget_in_host_registry(&settings.net().1);
    let report = result?;
    print(&report);
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", args.out.display()))?;
    println!("\nfigures written to {}", args.out.display());
    Ok(())
}

/// `--only network`: [`network::compare`] on the bench's two servers' names, then the same
/// cleanup as [`run`].
async fn only_network(
    args: &BenchArgs,
    bulkhead: &Path,
    data: &Path,
    settings: &Names,
    image: &images::DefaultImage,
) -> anyhow::Result<()> {
    let (net_state, net_prefix) = settings.net();
    let runtime_class = format!("container={}", args.runtime);
    let result = network::compare(
        bulkhead,
        network::ServerNames {
            data_dir: &data.join("data"),
            state_dir: &settings.state_dir,
            cgroup_prefix: &settings.cgroup_prefix,
        },
        network::ServerNames { data_dir: &data.join("net"), state_dir: &net_state, cgroup_prefix: &net_prefix },
        &runtime_class,
        &image.serve_args(),
        args.runs,
        network::EgressLoad {
            rounds: args.egress_rounds,
            connects: args.egress_connects,
            bulk_mib: args.egress_bulk_mib,
        },
    )
    .await;
    leave_nothing_behind(settings).await;
    let _ = std::fs::remove_dir_all(data);
    forget_in_host_registry(&settings.cgroup_prefix);
    forget_in_host_registry(&net_prefix);
    let report = result?;
    network::print(&report);
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", args.out.display()))?;
    println!("\nfigures written to {}", args.out.display());
    Ok(())
}

/// Removes every host resource of the bench's server (the server is gone by now). A sandbox
/// that fought its teardown, such as a fork bomb on cgroup v1, can keep a cgroup busy for a
/// while, so this tries a few times and says so when something stays.
async fn leave_nothing_behind(settings: &Names) {
    let cgroup_root = Path::new("/sys/fs/cgroup");
    let mut last = None;
    let (raw_state, raw_prefix) = settings.raw();
    let _ = bulkhead_runtime::oci::purge(&raw_state, cgroup_root, &raw_prefix);
    let (net_state, net_prefix) = settings.net();
    let _ = bulkhead_runtime::oci::purge(&net_state, cgroup_root, &net_prefix);
    for _ in 0..10 {
        match bulkhead_runtime::oci::purge(&settings.state_dir, cgroup_root, &settings.cgroup_prefix) {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Some(e) = last {
        eprintln!(
            "warning: the bench could not remove all it made ({e}); see `bulkhead doctor --state-dir {} \
             --cgroup-prefix {}`",
            settings.state_dir.display(),
            settings.cgroup_prefix
        );
    }
}

/// The bench's server held host id ranges and its cgroup prefix in the host's registry; its
/// data is gone now, so its entry goes too.
fn forget_in_host_registry(cgroup_prefix: &str) {
    use bulkhead_runtime::hostreg::{HostRegistry, DEFAULT_PATH};
    let forgotten = HostRegistry::open(Path::new(DEFAULT_PATH)).and_then(|r| {
        for owner in r.owners()?.iter().filter(|o| o.cgroup_prefixes.iter().any(|p| p == cgroup_prefix)) {
            r.forget_owner(&owner.id)?;
        }
        Ok(())
    });
    if let Err(e) = forgotten {
        eprintln!("warning: the bench's server is still listed in the host registry: {e}");
    }
}

fn tempdir_path(name: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

/// The server under test, as its own process; killed when dropped.
pub(crate) struct ServerProcess(pub(crate) Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench(
    args: &BenchArgs,
    bulkhead: &Path,
    data: &Path,
    settings: &Names,
    image: &images::DefaultImage,
) -> anyhow::Result<Report> {
    let oci = args.runtime.clone();
    let noises = load::noises(&args.noise)?;
    let runtime_class = format!("container={oci}");
    let image_args = image.serve_args();
    // Loopback-only (no longer the server's default): the figures against which the network's
    // cost is measured, and what they have always been measured on.
    let mut extra = vec!["--runtime-class", runtime_class.as_str(), "--network", "loopback-only"];
    extra.extend(image_args.iter().map(String::as_str));
    let serve = server::Serve {
        bulkhead,
        data_dir: &data.join("data"),
        state_dir: &settings.state_dir,
        cgroup_prefix: &settings.cgroup_prefix,
        host_registry: None,
        extra: &extra,
    };
    let t = Instant::now();
    let started = serve.spawn().context("start bulkhead serve")?;
    let mut server = ServerProcess(started.child);
    let url = started.url;
    let admin = std::fs::read_to_string(data.join("data").join("admin.token"))?.trim().to_owned();
    let first_start = crash::until_answering(&url, &admin, t).await?;

    let admin_client = Client::new(&url, Some(admin.clone()));
    let quotas = Quotas {
        cpu_millis: 1000 * 1000,
        memory_bytes: 1 << 40,
        disk_bytes: 1 << 40,
        max_sandboxes: (args.concurrent as u64).max(10) + 10,
        pids_per_sandbox: 256,
        max_sandbox_ttl_seconds: 3600,
        api_requests_per_second: RAISED_API_REQUESTS_PER_SECOND,
        max_concurrent_execs: RAISED_MAX_CONCURRENT_EXECS,
    };
    admin_client
        .create_namespace(&CreateNamespace {
            name: "bench".into(),
            isolation: None,
            placement: None,
            egress: None,
            quotas,
        })
        .await?;
    let key = admin_client
        .create_key(
            "bench",
            &CreateKey { name: "bench".into(), role: Role::Developer, expires_at: None, projects: None },
        )
        .await?;
    let token = key.token;
    let c = Client::new(&url, Some(token.clone()));
    let small = CreateSandbox { cpu_millis: Some(100), memory_bytes: Some(64 << 20), ..Default::default() };
    let echo = ExecRequest { cmd: vec!["echo".into(), "ready".into()], ..Default::default() };

    eprintln!("baselines: fork/exec and raw {oci} (on the default image's layers, then on the host's base) ...");
    let fork = parts::fork_exec_true(args.runs.max(args.execs))?;
    let sandbox_cpu = small.cpu_millis.context("the bench's sandbox cpu")?;
    let raws = raw_baselines(&admin_client, bulkhead, data, settings, image, args, sandbox_cpu).await?;

    eprintln!("create → first output and delete, {} runs ...", args.runs);
    let mut create = Vec::with_capacity(args.runs);
    let mut delete = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let t = Instant::now();
        let s = c.create_sandbox("bench", &small).await?;
        let r = c.exec("bench", &s.id, &echo).await?;
        create.push(t.elapsed());
        if r.stdout != "ready\n" {
            bail!("unexpected output {:?}", r.stdout);
        }
        let t = Instant::now();
        c.delete_sandbox("bench", &s.id).await?;
        delete.push(t.elapsed());
        if settings.state_dir.join("sandboxes").join(&s.id).exists() {
            bail!("sandbox {} left its bundle after delete", s.id);
        }
    }

    let pools = has_pools(&args.runtime);
    let section =
        images::Section { developer: &c, admin: &admin_client, ns: "bench", sandbox: &small, runs: args.runs, pools };
    let images = images::measure(&section, image, stat(raws.image_sandbox_cpu.clone())).await?;

    eprintln!("create → first output with a network of its own (--network isolated), {} runs ...", args.runs);
    let (net_state, net_prefix) = settings.net();
    let networked = network::networked_create(
        bulkhead,
        &data.join("net"),
        &net_state,
        &net_prefix,
        &runtime_class,
        &image_args,
        args.runs,
    )
    .await?;

    let deaths = args.runs.clamp(1, 20);
    eprintln!("sandbox death → failed, {deaths} runs ...");
    let deaths = crash::death_to_failed(&c, "bench", &settings.state_dir, deaths).await?;

    eprintln!("exec round trip and its parts, {} execs ...", args.execs);
    let cgroups = load::cgroups(&settings.cgroup_prefix)?;
    let exec_sandbox = CreateSandbox { cpu_millis: Some(args.exec_cpu_millis), ..small.clone() };
    let s = c.create_sandbox("bench", &exec_sandbox).await?;
    let (execs, exec_parts) =
        parts::exec_parts(&c, "bench", &s.id, &settings.state_dir, &cgroups, &data.join("parts"), args.execs).await?;
    c.delete_sandbox("bench", &s.id).await?;

    eprintln!("{} concurrent creates ...", args.concurrent);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrent {
        let c = c.clone();
        let small = small.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let s = c.create_sandbox("bench", &small).await?;
            Ok::<_, bulkhead_client::ClientError>((s.id, t.elapsed()))
        }));
    }
    let mut each = Vec::new();
    let mut ids_created = Vec::new();
    for task in tasks {
        let (id, d) = task.await??;
        ids_created.push(id);
        each.push(d);
    }
    let total = t.elapsed();
    for id in ids_created {
        c.delete_sandbox("bench", &id).await?;
    }
    eprintln!("filesystems: create → mountable, archive push and pull of {} MiB ...", args.archive_bytes >> 20);
    let fs_size = (args.archive_bytes * 3).max(64 << 20);
    let mut fs_create = Vec::new();
    let mut last = None;
    for i in 0..20 {
        let t = Instant::now();
        let f = c
            .create_filesystem("bench", &CreateFilesystem { name: format!("f{i}"), size_bytes: fs_size, project: None })
            .await?;
        fs_create.push(t.elapsed());
        if let Some(prev) = last.replace(f.id.clone()) {
            c.delete_filesystem("bench", &prev, false).await?;
        }
    }
    let fs_id = last.context("a filesystem")?;
    let tree = data.join("tree");
    make_tree(&tree, args.archive_bytes)?;
    let tarball = std::process::Command::new("tar").arg("-C").arg(&tree).args(["-cf", "-", "."]).output()?;
    if !tarball.status.success() {
        bail!("tar failed");
    }
    let t = Instant::now();
    c.upload_archive("bench", &fs_id, tarball.stdout).await?;
    let push = t.elapsed();
    let t = Instant::now();
    let mut sink = std::io::sink();
    c.download_archive("bench", &fs_id, &mut sink, |_| {}).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let pull = t.elapsed();
    // The same bytes through plain tar, directory to directory, on the same disk.
    let copy = data.join("copy");
    std::fs::create_dir_all(&copy)?;
    let t = Instant::now();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("tar -C '{}' -cf - . | tar -C '{}' -xf - && sync", tree.display(), copy.display()))
        .status()?;
    let local = t.elapsed();
    if !status.success() {
        bail!("local tar copy failed");
    }
    c.delete_filesystem("bench", &fs_id, false).await?;

    let api_throughput = if args.api_seconds > 0 && args.api_concurrency > 0 {
        eprintln!(
            "API throughput: {} connections, {} s on /healthz, then {} s on GET /v1/namespaces/bench ...",
            args.api_concurrency, args.api_seconds, args.api_seconds
        );
        Some(load::api_throughput(&url, "bench", &token, args.api_concurrency, args.api_seconds).await?)
    } else {
        None
    };
    admin_client.delete_namespace("bench").await?;
    let density = if args.density > 0 {
        eprintln!("density: {0} bare processes, then {0} idle sandboxes held at once ...", args.density);
        Some(density(args, &admin_client, &cgroups, &settings.cgroup_prefix).await?)
    } else {
        None
    };
    let noisy_neighbour = if args.noisy_execs > 0 {
        eprintln!("noisy neighbour: {} execs of tenant B, alone and beside tenant A's noise ...", args.noisy_execs);
        Some(load::noisy_neighbour(&admin_client, &cgroups, args.noisy_execs, &noises).await?)
    } else {
        None
    };
    let adopted = 10;
    eprintln!("kill -9 of the server with {adopted} sandboxes running, then a restart, 5 times ...");
    let quotas = Quotas {
        cpu_millis: 100 * adopted as u64,
        memory_bytes: 1 << 40,
        disk_bytes: 1 << 30,
        max_sandboxes: adopted as u64,
        pids_per_sandbox: 64,
        max_sandbox_ttl_seconds: 3600,
        api_requests_per_second: RAISED_API_REQUESTS_PER_SECOND,
        max_concurrent_execs: RAISED_MAX_CONCURRENT_EXECS,
    };
    admin_client
        .create_namespace(&CreateNamespace {
            name: "restart".into(),
            isolation: None,
            placement: None,
            egress: None,
            quotas,
        })
        .await?;
    let mut running = Vec::new();
    for _ in 0..adopted {
        running.push(admin_client.create_sandbox("restart", &small).await?.id);
    }
    let mut restarts = Vec::new();
    let mut url = url.clone();
    for _ in 0..5 {
        let _ = server.0.kill();
        let _ = server.0.wait();
        let t = Instant::now();
        let started = serve.spawn().context("restart bulkhead serve")?;
        server = ServerProcess(started.child);
        url = started.url;
        restarts.push(crash::until_answering(&url, &admin, t).await?);
    }
    let admin_client = Client::new(&url, Some(admin.clone()));
    for id in &running {
        let r = admin_client.exec("restart", id, &echo).await?;
        if r.stdout != "ready\n" {
            bail!("sandbox {id} did not survive the restarts: {:?}", r.stdout);
        }
    }
    admin_client.delete_namespace("restart").await?;
    let recovery = crash::Recovery {
        death_to_failed: stat(deaths),
        adopted_sandboxes: adopted,
        restart_to_answering: stat(restarts),
        first_start_to_answering: stat(vec![first_start]),
    };
    drop(server);
    let mib = args.archive_bytes as f64 / (1 << 20) as f64;

    let fork = stat(fork);
    let raw = stat(raws.image);
    let raw_sandbox_cpu = stat(raws.image_sandbox_cpu);
    let create = stat(create);
    let execs = stat(execs);
    Ok(Report {
        host: host(),
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        fork_exec: fork,
        raw_oci_first_output: raw,
        raw_oci_first_output_sandbox_cpu: raw_sandbox_cpu,
        raw_oci_first_output_host_root: stat(raws.host),
        sandbox_cpu_millis: sandbox_cpu,
        create_to_first_output: create,
        create_to_first_output_networked: stat(networked),
        create_vs_raw_p50: create.p50_ms / raw.p50_ms,
        create_vs_raw_sandbox_cpu_p50: create.p50_ms / raw_sandbox_cpu.p50_ms,
        exec_round_trip: execs,
        exec_vs_fork_p50: exec_parts.exec_vs_fork_p50,
        exec_sandbox_cpu_millis: args.exec_cpu_millis,
        exec_parts,
        delete_to_clean: stat(delete),
        concurrent_creates: args.concurrent,
        concurrent_total_ms: total.as_secs_f64() * 1000.0,
        concurrent_create: stat(each),
        filesystem_create_to_mountable: stat(fs_create),
        archive_mib: mib,
        archive_push_mib_s: mib / push.as_secs_f64(),
        archive_pull_mib_s: mib / pull.as_secs_f64(),
        local_tar_copy_mib_s: mib / local.as_secs_f64(),
        images,
        api_throughput,
        density,
        noisy_neighbour,
        recovery,
        policy: policy::policy_bench()?,
    })
}

/// A tree of `bytes` in 1 MiB files of pseudo-random content (incompressible, so no layer
/// gets it for free), spread over a few directories.
fn make_tree(root: &Path, bytes: u64) -> anyhow::Result<()> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..(bytes >> 20).max(1) {
        let dir = root.join(format!("d{}", i % 8));
        std::fs::create_dir_all(&dir)?;
        for chunk in buf.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(dir.join(format!("f{i}.bin")), &buf)?;
    }
    Ok(())
}

fn row(name: &str, s: &Stat) {
    println!("{name:<44} {:>6} {:>10.2} {:>10.2}", s.n, s.p50_ms, s.p99_ms);
}

fn print(r: &Report) {
    println!("host: {}", r.host);
    println!("command: {}\n", r.command_line);
    println!("{:<44} {:>6} {:>10} {:>10}", "measure", "n", "p50 ms", "p99 ms");
    row("baseline: fork/exec of /bin/true", &r.fork_exec);
    row("baseline: raw OCI runtime run → first output", &r.raw_oci_first_output);
    row(
        &format!("  the same at the sandbox's {} millicores", r.sandbox_cpu_millis),
        &r.raw_oci_first_output_sandbox_cpu,
    );
    row("  the same on the host's base (whole core)", &r.raw_oci_first_output_host_root);
    row("sandbox create → first exec output", &r.create_to_first_output);
    row("  the same with a network (--network isolated)", &r.create_to_first_output_networked);
    println!(
        "  a network adds {:.2} ms at p50 (target ≤ 3 ms)",
        r.create_to_first_output_networked.p50_ms - r.create_to_first_output.p50_ms
    );
    row(&format!("exec round trip (HTTP, `true`, {} millicores)", r.exec_sandbox_cpu_millis), &r.exec_round_trip);
    row("delete → every host resource gone", &r.delete_to_clean);
    row(&format!("{} concurrent creates, each", r.concurrent_creates), &r.concurrent_create);
    println!("\n{} concurrent creates: {:.0} ms in all", r.concurrent_creates, r.concurrent_total_ms);
    println!(
        "create → first output vs raw OCI runtime (p50): {:.2}x; vs raw at the sandbox's cpu limit: {:.2}x",
        r.create_vs_raw_p50, r.create_vs_raw_sandbox_cpu_p50
    );
    println!("exec round trip vs fork/exec measured beside it (p50): {:.2}x", r.exec_vs_fork_p50);
    print_parts(&r.exec_parts);
    row("filesystem create → mountable", &r.filesystem_create_to_mountable);
    println!(
        "archive of {:.0} MiB: push {:.0} MiB/s, pull {:.0} MiB/s; plain tar dir → dir {:.0} MiB/s",
        r.archive_mib, r.archive_push_mib_s, r.archive_pull_mib_s, r.local_tar_copy_mib_s
    );
    images::print(&r.images);
    if let Some(a) = &r.api_throughput {
        print_api(a);
    }
    if let Some(d) = &r.density {
        print_density(d);
    }
    if let Some(n) = &r.noisy_neighbour {
        print_noisy(n);
    }
    let v = &r.recovery;
    println!();
    row("baseline: delete → every host resource gone", &r.delete_to_clean);
    row("sandbox init killed (kill -9) → API says failed", &v.death_to_failed);
    row("baseline: first start → first authenticated answer", &v.first_start_to_answering);
    row(&format!("kill -9 + restart ({} sandboxes adopted) → answer", v.adopted_sandboxes), &v.restart_to_answering);
    let p = &r.policy;
    println!("\nauthorization: sandbox.exec with {} custom Cedar policies", p.custom_policies);
    println!("{:<56} {:>12.0} decisions/s", "baseline: Cedar alone over the whole set", p.cedar_alone_per_s);
    println!(
        "{:<56} {:>12.0} decisions/s  {:.0}x",
        "Bulkhead's policy engine (indexed)", p.decisions_per_s, p.vs_cedar_alone
    );
}

fn print_parts(p: &ExecParts) {
    println!("\nwhere an exec's time goes (each part measured interleaved with the execs; parts overlap)");
    println!("{:<44} {:>6} {:>10} {:>10} {:>8}", "part", "n", "p50 µs", "p99 µs", "share");
    let line = |name: &str, s: &Stat, share: f64| {
        println!("{name:<44} {:>6} {:>10.1} {:>10.1} {:>7.1}%", s.n, s.p50_ms * 1e3, s.p99_ms * 1e3, share * 100.0)
    };
    line("exec round trip (HTTP, `true`)", &p.exec_round_trip, 1.0);
    for part in &p.parts {
        line(&part.name, &part.stat, part.share_of_exec_p50);
    }
    if let Some(why) = &p.cgroup_fork_skipped {
        println!("(fork/exec in the sandbox's cgroup not measured: {why})");
    }
}

fn print_api(a: &ApiThroughput) {
    println!("\nAPI throughput: {} keep-alive connections, {:.0} s each", a.concurrency, a.seconds);
    println!("{:<52} {:>10.0} req/s", "baseline: GET /healthz (no authentication)", a.healthz_per_s);
    println!(
        "{:<52} {:>10.0} req/s  {:.2}x healthz",
        "GET /v1/namespaces/{ns} (developer key)", a.authorized_get_per_s, a.authorized_vs_healthz
    );
    if a.healthz_not_200 + a.authorized_get_not_200 > 0 {
        println!("answers other than 200: healthz {}, authorized {}", a.healthz_not_200, a.authorized_get_not_200);
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("(the load client runs on the same {cpus} cpus as the server, so both figures are low bounds)");
}

fn print_density(d: &Density) {
    println!(
        "\ndensity: {} of {} idle sandboxes held at once ({} millicores, {} MiB each)",
        d.reached,
        d.target,
        d.sandbox_cpu_millis,
        d.sandbox_memory_bytes >> 20
    );
    if let Some(why) = &d.stopped_because {
        println!("stopped at: {why}");
    }
    println!(
        "{:<52} {:>10.2} MiB  ± {:.2} (host drift)",
        "baseline: bare `sleep infinity` process, host memory", d.bare_process_mib, d.bare_drift_mib_per_process
    );
    // A ratio means something only when both figures stand above the host's own drift.
    let ratio =
        if d.bare_process_mib > d.bare_drift_mib_per_process && d.host_mib_per_sandbox > d.host_drift_mib_per_sandbox {
            format!("{:.1}x bare", d.sandbox_vs_bare_process)
        } else {
            "(within the host's drift: no ratio)".to_owned()
        };
    println!(
        "{:<52} {:>10.2} MiB  ± {:.2} (host drift)  {ratio}",
        "idle sandbox, host memory (MemAvailable drop)", d.host_mib_per_sandbox, d.host_drift_mib_per_sandbox,
    );
    println!("{:<52} {:>10.2} MiB", "idle sandbox, charged to its cgroup (incl. page cache)", d.cgroup_mib_per_sandbox);
    println!(
        "{:<52} {:>10.2} MiB",
        "idle sandbox, supervisor VmRSS (incl. shared pages)", d.supervisor_rss_mib_per_sandbox
    );
    println!("1,000 such sandboxes would take {:.1} GiB of host memory", d.projected_gib_per_1000);
    println!("create all {:.0} ms, delete all {:.0} ms", d.create_all_ms, d.delete_all_ms);
    row("density: create, each (sequential)", &d.create_each);
    row("density: delete, each (sequential)", &d.delete_each);
}

fn print_noisy(n: &NoisyNeighbour) {
    println!("\nnoisy neighbour: tenant B's exec round trips (`true`), alone, then beside tenant A");
    row("tenant B exec round trip, alone", &n.b_alone);
    row("tenant B exec round trip, A noisy", &n.b_with_noisy_a);
    println!("B with noisy A vs B alone: p50 {:.2}x, p99 {:.2}x", n.p50_ratio, n.p99_ratio);
    println!("tenant A over the {:.0} ms window:", n.window_ms);
    for a in &n.a_noise {
        println!(
            "  {:<11} {:>4} millicores {:>4} MiB: {:.2} cores used, {} pids-limit hits, {} pids at end, {} OOM kills{}",
            a.name,
            a.cpu_millis,
            a.memory_bytes >> 20,
            a.cpu_cores,
            a.pids_limit_hits,
            a.pids_at_end,
            a.oom_kills,
            a.ended_early.as_deref().map(|e| format!("; ended early: {e}")).unwrap_or_default()
        );
    }
    match &n.a_teardown_error {
        None => println!("tenant A deleted (noise running) in {:.0} ms", n.a_teardown_ms),
        Some(e) => println!("tenant A delete (noise running) FAILED after {:.0} ms: {e}", n.a_teardown_ms),
    }
}
