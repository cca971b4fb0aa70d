//! `bulkhead serve`: logs, bootstrap, bind, serve.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use bulkhead_server::bootstrap::{self, ADMIN_TOKEN_FILE};
use bulkhead_server::limits::{ConnectionLimits, StreamLimits};
use bulkhead_server::state::{RootMode, RuntimeClass};
use bulkhead_server::ServerConfig;
use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::Global;

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--root`: what sandboxes boot from.
#[derive(Clone, Copy, ValueEnum)]
pub enum Root {
    /// An OCI image (the request's `image`, else the public image `default`) under a writable
    /// layer of the sandbox's own.
    Image,
    /// The host's system directories, read-only: for hosts without an image.
    Host,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BULKHEAD_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// This server's URL as browsers reach it (http or https, no query), such as
    /// https://bulkhead.example.com: the console's sign-in through a namespace's OpenID Connect
    /// provider sends browsers back to `<URL>/console/oidc/callback`. Default:
    /// `http://<listen address>` (the address bound).
    #[arg(long, env = "BULKHEAD_PUBLIC_URL", value_name = "URL", value_parser = bulkhead_server::console_oidc::parse_public_url)]
    public_url: Option<String>,
    /// An isolation tier and the OCI runtime that implements it, as `NAME=RUNTIME`; repeat for
    /// more. Default: `container=runc`.
    #[arg(long = "runtime-class", value_name = "NAME=RUNTIME")]
    runtime_classes: Vec<String>,
    /// Host directory of sandbox bundles and OCI runtime state.
    #[arg(long, env = "BULKHEAD_STATE_DIR", default_value = "/run/bulkhead")]
    state_dir: PathBuf,
    /// Name of this server's top cgroup.
    #[arg(long, env = "BULKHEAD_CGROUP_PREFIX", default_value = "bulkhead")]
    cgroup_prefix: String,
    /// The CPU weight of the server's own cgroup (`<prefix>.control-plane`, beside the top
    /// cgroup that holds every namespace), in cgroup v2 units, 1 to 10000, against the top
    /// cgroup's 100 (on cgroup v1, `cpu.shares` of ten times as much per 100): when tenants
    /// keep the CPU busy, the API, the runtime's calls and other tenants' execs still get a
    /// core. 0 (the default) leaves the server in the cgroup it was started in: on the hosts
    /// measured so far, 1000 did not move a quiet tenant's p99 beyond the noise between runs
    /// (`bulkhead bench --only placement` measures both).
    #[arg(
        long,
        env = "BULKHEAD_CONTROL_PLANE_CPU_WEIGHT",
        value_name = "WEIGHT",
        default_value_t = 0,
        value_parser = clap::value_parser!(u32).range(0..=10_000)
    )]
    control_plane_cpu_weight: u32,
    /// Sets the host's cgroup2 mount option `favordynmods` at start (keeping the mount's other
    /// options), so that a command joining its cgroup does not wait for an RCU grace period or
    /// for other tenants' forks: every exec makes such a migration. The option is the kernel's,
    /// for the whole host; `false` leaves the host's mount as it is. A host that refuses (a
    /// server in a container) is a warning.
    #[arg(
        long,
        env = "BULKHEAD_CGROUP_FAVORDYNMODS",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    cgroup_favordynmods: bool,
    /// The sandbox supervisor binary (default: bulkhead-supervisor beside this binary).
    #[arg(long, env = "BULKHEAD_SUPERVISOR")]
    supervisor: Option<PathBuf>,
    /// What network each sandbox has: `isolated` (the default: a network namespace, a veth and
    /// an address of its own, whose only way out is the egress gateway on its gateway address;
    /// needs nftables), or `loopback-only` (a new empty network namespace, no `$BULKHEAD_URL`).
    #[arg(long, env = "BULKHEAD_NETWORK", value_name = "MODE", default_value = "isolated")]
    network: bulkhead_runtime::net::NetworkMode,
    /// Where sandbox addresses come from with `--network isolated`: a /30 each.
    #[arg(long, env = "BULKHEAD_SANDBOX_CIDR", value_name = "CIDR", default_value = bulkhead_runtime::net::DEFAULT_SANDBOX_CIDR)]
    sandbox_cidr: bulkhead_runtime::net::Cidr,
    /// Trust anchors (a PEM file of CA certificates) for the upstream TLS of hosts whose
    /// credentials the gateway brokers, beside the public web PKI roots.
    #[arg(long, env = "BULKHEAD_EGRESS_CA_FILE", value_name = "PEM")]
    egress_ca_file: Option<PathBuf>,
    /// The host registry that every Bulkhead server on this host shares: which server (by its
    /// store's id) holds which host uid/gid range and cgroup prefix. It must survive reboots, as
    /// files on disk stay owned by the ranges. Default: /var/lib/bulkhead-host/registry.
    #[arg(long, env = "BULKHEAD_HOST_REGISTRY", value_name = "PATH")]
    host_registry: Option<PathBuf>,
    /// Audit records each chain keeps (every namespace's and the platform's); older records are
    /// pruned behind a checkpoint that keeps the chain verifiable. Default: 50000.
    #[arg(long, env = "BULKHEAD_AUDIT_RETAIN_RECORDS", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    audit_retain_records: Option<u64>,
    /// Where the control plane keeps its state: a PostgreSQL database
    /// (`postgres://user[:password]@host[:port]/database`). Migrations run as the URL's role,
    /// which needs `CREATEROLE` (or a role `<user>_serve` made beforehand and granted to it);
    /// requests are then served through `<user>_serve`, under row-level security. Default: the
    /// SQLite file `bulkhead.db` in the data dir.
    #[arg(long, env = "BULKHEAD_STORE", value_name = "URL", hide_env_values = true, value_parser = parse_store)]
    store: Option<String>,
    /// With a PostgreSQL store, several servers (each with its own data dir, state dir and
    /// cgroup prefix, all with the same `BULKHEAD_MASTER_KEY`) are replicas: any of them answers
    /// any request, and one for a sandbox another runs is forwarded to it. This is the URL the
    /// others reach this one at (`http://host:port`). Default: `http://<the address bound>`.
    #[arg(long, env = "BULKHEAD_ADVERTISE_URL", value_name = "URL", value_parser = parse_advertise_url)]
    advertise_url: Option<String>,
    /// With a PostgreSQL store: how long this server's lease holds unless renewed (it renews
    /// every third of it). A server whose lease lapses is declared lost by the others, and its
    /// sandboxes end `failed`.
    #[arg(long, env = "BULKHEAD_NODE_LEASE", default_value = "15s", value_parser = parse_lease)]
    node_lease: Duration,
    /// Where lxcfs is mounted: sandboxes then see their own memory, CPU and uptime in
    /// `/proc/meminfo`, `/proc/cpuinfo`, `/proc/stat`, `/proc/uptime` and `/proc/loadavg`
    /// (`scripts/up` installs and starts it). `none`: the host's figures.
    #[arg(long, env = "BULKHEAD_LXCFS", value_name = "DIR", default_value = "/var/lib/lxcfs")]
    lxcfs: String,
    /// Seconds a task's agent has to answer `initialize` and open its ACP session; one that
    /// does not fails its task. Default: 60.
    #[arg(long, env = "BULKHEAD_AGENT_ANSWER_TIMEOUT", value_name = "SECONDS", default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    agent_answer_timeout: u64,
    /// Warm pools give sandboxes back, one per second, and start none while the host's
    /// `MemAvailable` is below this (`2GiB`, `512MiB`, bytes; `0`: never). Default: a tenth of
    /// the host's memory, at least 512 MiB.
    #[arg(long, env = "BULKHEAD_POOL_MIN_AVAILABLE", value_name = "BYTES", value_parser = crate::units::parse_bytes)]
    pool_min_available: Option<u64>,
    /// What sandboxes boot from: `image` (an OCI image; the default) or `host` (the host's own
    /// system directories, read-only, for hosts without an image; creates naming an image are
    /// refused).
    #[arg(long, env = "BULKHEAD_ROOT", value_enum, default_value = "image")]
    root: Root,
    /// An OCI image layout (a directory or a tar) or `docker save` archive imported at start as the public image
    /// `default` (when the server has none, or the file's image differs), the image of every
    /// create that names none. Missing: a warning at start, and such creates are refused.
    #[arg(long, env = "BULKHEAD_DEFAULT_IMAGE", value_name = "PATH")]
    default_image: Option<PathBuf>,
    /// Where the layers of public images are unpacked (default: <data-dir>/images/public). One
    /// directory may serve several servers of one host (a layer is unpacked once); a directory
    /// named here is never collected, since another server's images may use its layers.
    #[arg(long, env = "BULKHEAD_PUBLIC_LAYERS", value_name = "DIR")]
    public_layers: Option<PathBuf>,
    /// The largest image: unpacked, and its archive as uploaded (`8GiB`).
    #[arg(long, env = "BULKHEAD_MAX_IMAGE_BYTES", value_name = "SIZE", default_value = "8GiB", value_parser = crate::units::parse_bytes)]
    max_image_bytes: u64,
    /// A registry (`HOST[:PORT]`, as image references name it) that image pulls may talk plain
    /// http to; repeatable. Pulls from any other registry take https, except from a loopback one.
    /// Its addresses must still pass the outbound rule (`--outbound-allow`).
    #[arg(long = "insecure-registry", env = "BULKHEAD_INSECURE_REGISTRY", value_name = "HOST[:PORT]", value_delimiter = ',', value_parser = parse_registry)]
    insecure_registries: Vec<String>,
    /// Log format on stderr.
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    outbound: OutboundArgs,
}

/// Bounds on connections and long-running streams (see `bulkhead_server::limits`).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct LimitArgs {
    /// Connections served at once; more wait in the listen queue.
    #[arg(long, env = "BULKHEAD_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Time a client has to send a complete request header, from the accept or from the first
    /// byte of a request on a kept-alive connection.
    #[arg(long, env = "BULKHEAD_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// A kept-alive connection with no request in flight is closed after this.
    #[arg(long, env = "BULKHEAD_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// A response the client reads nothing of, or a request body that sends nothing, for this
    /// long closes the connection and frees what the request held.
    #[arg(long, env = "BULKHEAD_STALL_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    stall_timeout: Duration,
    /// Long-running downloads (archives, files, streamed execs, log tails) and, separately,
    /// uploads one principal (key, sandbox token, user) may have open at once.
    #[arg(long, env = "BULKHEAD_MAX_STREAMS_PER_PRINCIPAL", default_value_t = 50)]
    max_streams_per_principal: usize,
    /// The same, for all principals of one namespace together.
    #[arg(long, env = "BULKHEAD_MAX_STREAMS_PER_NAMESPACE", default_value_t = 200)]
    max_streams_per_namespace: usize,
    /// The same, for the whole server.
    #[arg(long, env = "BULKHEAD_MAX_STREAMS", default_value_t = 1000)]
    max_streams: usize,
}

impl LimitArgs {
    fn apply(&self, config: &mut ServerConfig) -> anyhow::Result<()> {
        for (flag, d) in [
            ("--header-timeout", self.header_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--stall-timeout", self.stall_timeout),
        ] {
            if d < Duration::from_millis(100) {
                bail!("{flag}: at least 100ms");
            }
        }
        for (flag, n) in [
            ("--max-connections", self.max_connections),
            ("--max-streams-per-principal", self.max_streams_per_principal),
            ("--max-streams-per-namespace", self.max_streams_per_namespace),
            ("--max-streams", self.max_streams),
        ] {
            if n == 0 {
                bail!("{flag}: at least 1");
            }
        }
        config.connections = ConnectionLimits {
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            stall_timeout: self.stall_timeout,
        };
        config.streams = StreamLimits {
            per_principal: self.max_streams_per_principal,
            per_namespace: self.max_streams_per_namespace,
            total: self.max_streams,
        };
        Ok(())
    }
}

/// Where fetches a tenant directs (its identity provider) may go.
#[derive(Args)]
pub struct OutboundArgs {
    /// A range of special-purpose addresses (loopback, private, link-local, ...) the server may
    /// fetch from on a tenant's behalf, such as 10.20.0.0/16; repeat for more. Public addresses
    /// need none. Plain http is allowed only to these ranges.
    #[arg(long = "outbound-allow", value_name = "CIDR", env = "BULKHEAD_OUTBOUND_ALLOW", value_delimiter = ',')]
    allow: Vec<bulkhead_core::outbound::Cidr>,
    /// The DNS server (ADDR:PORT) that resolves the names of tenant-directed fetches and, with
    /// `--network isolated`, the names sandboxes may reach (for the egress gateway). Default:
    /// the host's resolver configuration.
    #[arg(long = "egress-dns", value_name = "ADDR:PORT", env = "BULKHEAD_EGRESS_DNS")]
    dns: Option<SocketAddr>,
}

impl OutboundArgs {
    fn config(&self) -> bulkhead_oidc::OutboundConfig {
        let policy = bulkhead_core::outbound::OutboundPolicy::new(self.allow.clone());
        bulkhead_oidc::OutboundConfig { policy, dns: self.dns }
    }
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_env("BULKHEAD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

pub async fn run(args: ServeArgs, global: &Global) -> anyhow::Result<ExitCode> {
    init_logs(args.log_format);
    let data_dir: PathBuf = global.data_dir.clone().unwrap_or_else(crate::default_data_dir);
    let mut config = ServerConfig::new(data_dir.clone(), args.listen);
    args.limits.apply(&mut config)?;
    config.runtime.state_dir = args.state_dir.clone();
    config.runtime.cgroup_prefix = args.cgroup_prefix.clone();
    config.runtime.network = args.network;
    config.runtime.sandbox_cidr = args.sandbox_cidr;
    config.runtime.egress_ca_file = args.egress_ca_file.clone();
    config.runtime.egress_dns = args.outbound.dns;
    config.runtime.lxcfs = (args.lxcfs != "none").then(|| PathBuf::from(&args.lxcfs));
    match &config.runtime.lxcfs {
        Some(dir) if !bulkhead_runtime::oci::lxcfs_at(dir) => tracing::warn!(
            lxcfs = %dir.display(),
            "lxcfs is not mounted there: sandboxes see the host's memory and CPU figures in /proc \
             (start it with `lxcfs {}`, or pass --lxcfs none)",
            dir.display()
        ),
        _ => {}
    }
    if let Some(path) = &args.host_registry {
        config.host_registry = path.clone();
    }
    if let Some(n) = args.audit_retain_records {
        config.audit_retention_records = n;
    }
    config.store = args.store.clone();
    config.advertise_url = args.advertise_url.clone();
    config.node_lease = args.node_lease;
    config.outbound = args.outbound.config();
    config.images.root = match args.root {
        Root::Image => RootMode::Image,
        Root::Host => RootMode::Host,
    };
    config.images.default_image = args.default_image.clone();
    config.tasks.answer_timeout = std::time::Duration::from_secs(args.agent_answer_timeout);
    if let Some(bytes) = args.pool_min_available {
        config.pools.min_available_bytes = bytes;
    }
    config.images.public_layers = args.public_layers.clone();
    if args.max_image_bytes == 0 {
        bail!("--max-image-bytes: at least 1 byte");
    }
    config.images.max_image_bytes = args.max_image_bytes;
    config.images.insecure_registries = args.insecure_registries.clone();
    if let Some(s) = &args.supervisor {
        config.runtime.supervisor = s.clone();
    }
    if !args.runtime_classes.is_empty() {
        config.runtime_classes.clear();
        for spec in &args.runtime_classes {
            let Some((name, runtime)) = spec.split_once('=') else {
                bail!("--runtime-class {spec:?}: expected NAME=RUNTIME, such as container=runc");
            };
            bulkhead_core::validate::name("--runtime-class", name)?;
            config.runtime_classes.insert(name.to_owned(), RuntimeClass { runtime: runtime.to_owned() });
        }
    }
    if args.cgroup_favordynmods {
        favor_dynamic_modifications();
    }
    let started = bootstrap::start(config).await.context("cannot start")?;
    if let Some(token) = &started.new_admin_token {
        println!("admin token (shown once; also in {}): {token}", data_dir.join(ADMIN_TOKEN_FILE).display());
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let public_url = args.public_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let _ = started.state.identity.public_url.set(public_url);
    // Sandboxes with a network of their own reach the API through their gateway.
    started.state.runtime.serve_api(addr).await;
    // Weighted before it says it listens: whoever waits for that line finds it in place.
    let control_plane = enter_control_plane(&args);
    println!("bulkhead listening on http://{addr}");
    tracing::info!(%addr, data_dir = %data_dir.display(), "serving");
    let runtime = started.state.runtime.clone();
    let served = bulkhead_server::serve(started.state, listener).await.context("server failed");
    // What the runtime made ahead for creates (spare sandbox networks) goes with the server.
    runtime.shutdown().await;
    if let Some(plane) = control_plane {
        if let Err(e) = plane.leave() {
            tracing::warn!(error = %e, "could not leave the control plane's cgroup");
        }
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Where the host's cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Moves this process into its own weighted cgroup (`--control-plane-cpu-weight`), once the
/// server has started (its sweep of what a previous run left has run). A host that refuses is
/// a warning: the server runs on, unweighted.
fn enter_control_plane(args: &ServeArgs) -> Option<bulkhead_runtime::cgroup::ControlPlane> {
    if args.control_plane_cpu_weight == 0 {
        return None;
    }
    let entered = bulkhead_runtime::cgroup::Cgroups::detect(Path::new(CGROUP_ROOT), &args.cgroup_prefix)
        .and_then(|cgroups| cgroups.enter_control_plane(std::process::id(), args.control_plane_cpu_weight));
    match entered {
        Ok(plane) => {
            tracing::info!(cgroup = %plane.dir().display(), weight = args.control_plane_cpu_weight, "control plane weighted");
            Some(plane)
        }
        Err(e) => {
            tracing::warn!(error = %e, "the control plane runs unweighted: its cgroup could not be made");
            None
        }
    }
}

/// `--cgroup-favordynmods`: sets the option, or says why not.
fn favor_dynamic_modifications() {
    use bulkhead_runtime::dynmods::{self, Outcome};
    match dynmods::favor_dynamic_modifications() {
        Ok(Outcome::Set(at)) => tracing::info!(mount = %at.display(), "cgroup2 mount option favordynmods set"),
        Ok(Outcome::AlreadySet(at)) => {
            tracing::debug!(mount = %at.display(), "cgroup2 mount option favordynmods already set")
        }
        Ok(Outcome::NoCgroup2) => tracing::info!(
            "no cgroup2 mount: a command joining its cgroup may wait for an RCU grace period \
             (mount cgroup2 with favordynmods beside the v1 hierarchies to avoid it)"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "could not set the cgroup2 mount option favordynmods: a command joining its cgroup may wait \
             for an RCU grace period and for other tenants' forks"
        ),
    }
}

/// A `--store` URL: PostgreSQL's (`postgres://` or `postgresql://`); anything else is refused
/// at once, before the server starts.
fn parse_store(url: &str) -> Result<String, String> {
    if bulkhead_store::postgres::is_postgres_url(url) {
        Ok(url.to_owned())
    } else {
        Err("a PostgreSQL URL, postgres://user[:password]@host[:port]/database".into())
    }
}

/// `--insecure-registry HOST[:PORT]`: a registry as an image reference names it (no scheme, no
/// path), lowercased.
fn parse_registry(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not HOST[:PORT] (such as registry.internal:5000)");
    let lower = s.trim().to_ascii_lowercase();
    let (host, port) = match lower.strip_prefix('[') {
        Some(rest) => {
            let (host, rest) = rest.split_once(']').ok_or_else(bad)?;
            host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            (host, if rest.is_empty() { None } else { Some(rest.strip_prefix(':').ok_or_else(bad)?) })
        }
        None => match lower.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (lower.as_str(), None),
        },
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
    if host_ok && port_ok {
        Ok(lower)
    } else {
        Err(bad())
    }
}

/// `--advertise-url`: `http://host[:port]`, with no path, query or credentials.
fn parse_advertise_url(s: &str) -> Result<String, String> {
    let authority = s
        .strip_prefix("http://")
        .ok_or("must be http://host:port (replicas forward to each other in plain HTTP)")?
        .trim_end_matches('/');
    let bad = |c: char| matches!(c, '/' | '?' | '#' | '@') || c.is_whitespace() || c.is_control();
    if authority.is_empty() || authority.contains(bad) {
        return Err("must be http://host:port, with no path, query or credentials".into());
    }
    Ok(format!("http://{authority}"))
}

/// `--node-lease`: a duration from 3 s to 10 min.
fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(Duration::from_secs(3)..=Duration::from_secs(600)).contains(&d) {
        return Err("must be between 3s and 10m".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn insecure_registries_are_host_and_port() {
        assert_eq!(parse_registry("Registry.Internal:5000").as_deref(), Ok("registry.internal:5000"));
        assert_eq!(parse_registry("10.1.2.3").as_deref(), Ok("10.1.2.3"));
        assert_eq!(parse_registry("[fd00::1]:5000").as_deref(), Ok("[fd00::1]:5000"));
        for bad in ["", "http://r:5000", "r:5000/x", "r:0", "r:70000", "[zz]:1", "a b"] {
            assert!(parse_registry(bad).is_err(), "{bad}");
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: LimitArgs,
    }

    /// The flags' defaults are the server's documented defaults.
    #[test]
    fn limit_flags_default_to_the_documented_bounds() {
        let cli = Cli::try_parse_from(["bulkhead"]).expect("defaults parse");
        let mut config = ServerConfig::new(PathBuf::from("/nonexistent"), "127.0.0.1:0".parse().expect("addr"));
        cli.limits.apply(&mut config).expect("defaults apply");
        assert_eq!(config.connections, ConnectionLimits::default());
        assert_eq!(config.streams, StreamLimits::default());
        assert_eq!(config.connections.header_timeout, Duration::from_secs(30));
        assert_eq!(config.connections.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.streams.per_principal, 50);
    }

    #[test]
    fn limit_flags_take_short_values_and_refuse_zero() {
        let cli =
            Cli::try_parse_from(["bulkhead", "--header-timeout", "1s", "--idle-timeout", "500ms"]).expect("parse");
        let mut config = ServerConfig::new(PathBuf::from("/nonexistent"), "127.0.0.1:0".parse().expect("addr"));
        cli.limits.apply(&mut config).expect("apply");
        assert_eq!(config.connections.header_timeout, Duration::from_secs(1));
        assert_eq!(config.connections.idle_timeout, Duration::from_millis(500));
        let zero = Cli::try_parse_from(["bulkhead", "--max-streams", "0"]).expect("parse");
        assert!(zero.limits.apply(&mut config).is_err());
    }

    #[test]
    fn advertise_urls_are_plain_http_host_and_port() {
        assert_eq!(parse_advertise_url("http://10.0.0.7:7070/").unwrap(), "http://10.0.0.7:7070");
        assert_eq!(parse_advertise_url("http://node-a:7070").unwrap(), "http://node-a:7070");
        for bad in
            ["https://a:1", "10.0.0.7:7070", "http://", "http://a:1/x", "http://u:p@a:1", "http://a:1?q", "http://a b"]
        {
            assert!(parse_advertise_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_lease_is_between_3_seconds_and_10_minutes() {
        assert_eq!(parse_lease("15s").unwrap(), Duration::from_secs(15));
        for bad in ["2s", "11m", "0s", "soon"] {
            assert!(parse_lease(bad).is_err(), "{bad}");
        }
    }
}
