//! `bulkhead serve`: logs, bootstrap, bind, serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_server::bootstrap::{self, ADMIN_TOKEN_FILE};
use bulkhead_server::state::RuntimeClass;
use bulkhead_server::ServerConfig;
use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::Global;

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BULKHEAD_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
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
    /// The sandbox supervisor binary (default: bulkhead-supervisor beside this binary).
    #[arg(long, env = "BULKHEAD_SUPERVISOR")]
    supervisor: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(flatten)]
    outbound: OutboundArgs,
}

/// Where fetches a tenant directs (its identity provider) may go.
#[derive(Args)]
pub struct OutboundArgs {
    /// A range of special-purpose addresses (loopback, private, link-local, ...) the server may
    /// fetch from on a tenant's behalf, such as 10.20.0.0/16; repeat for more. Public addresses
    /// need none. Plain http is allowed only to these ranges.
    #[arg(long = "outbound-allow", value_name = "CIDR", env = "BULKHEAD_OUTBOUND_ALLOW", value_delimiter = ',')]
    allow: Vec<bulkhead_core::outbound::Cidr>,
    /// The DNS server (ADDR:PORT) that resolves the names of tenant-directed fetches. Default:
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
    config.runtime.state_dir = args.state_dir.clone();
    config.runtime.cgroup_prefix = args.cgroup_prefix.clone();
    config.outbound = args.outbound.config();
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
    let started = bootstrap::start(config).await.context("cannot start")?;
    if let Some(token) = &started.new_admin_token {
        println!("admin token (shown once; also in {}): {token}", data_dir.join(ADMIN_TOKEN_FILE).display());
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("bulkhead listening on http://{addr}");
    tracing::info!(%addr, data_dir = %data_dir.display(), "serving");
    bulkhead_server::serve(started.state, listener).await.context("server failed")?;
    Ok(ExitCode::SUCCESS)
}
