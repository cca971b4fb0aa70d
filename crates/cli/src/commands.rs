//! The client subcommands: namespace, key, audit (sandbox, exec and cp are in `sandbox`).

use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_api::{CreateKey, CreateNamespace, EgressCeiling, Namespace, Quotas, QuotasPatch, Role, UpdateNamespace};
use bulkhead_client::{AuditFilter, Client};
use clap::{Args, Subcommand, ValueEnum};

use crate::output;
use crate::units::{format_bytes, format_cpu, format_seconds, parse_bytes, parse_cpu, parse_seconds};
use crate::Global;

/// The client for `global`: its token, or on the server's host the admin token file.
pub fn client(global: &Global) -> anyhow::Result<Client> {
    let token = match &global.token {
        Some(t) => Some(t.trim().to_owned()),
        None => {
            let dir = global.data_dir.clone().unwrap_or_else(crate::default_data_dir);
            let path = dir.join(bulkhead_server::bootstrap::ADMIN_TOKEN_FILE);
            match std::fs::read_to_string(&path) {
                Ok(t) => Some(t.trim().to_owned()),
                Err(_) => None,
            }
        }
    };
    if token.is_none() {
        bail!("no token: set BULKHEAD_TOKEN (or --token), or run on the server's host as a user who can read its admin.token");
    }
    Ok(Client::new(&global.url, token))
}

/// Every item of a paged listing: calls `page` with each `next_cursor` (first `None`) until a
/// page has none.
pub async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, bulkhead_client::Error>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<bulkhead_api::Page<T>, bulkhead_client::Error>>,
{
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let p = page(cursor.take()).await?;
        all.extend(p.items);
        match p.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
    }
}

#[derive(Args, Clone, Default)]
pub struct QuotaArgs {
    /// CPU for all sandboxes together, in cores (`1.5`) or thousandths (`500m`).
    #[arg(long, value_parser = parse_cpu)]
    cpu: Option<u64>,
    /// Memory for all sandboxes together (`4GiB`).
    #[arg(long, value_parser = parse_bytes)]
    memory: Option<u64>,
    /// Disk for all filesystems together (`20GiB`).
    #[arg(long, value_parser = parse_bytes)]
    disk: Option<u64>,
    /// Sandboxes at once.
    #[arg(long)]
    max_sandboxes: Option<u64>,
    /// Processes per sandbox.
    #[arg(long)]
    pids: Option<u64>,
    /// Longest sandbox life (`24h`).
    #[arg(long, value_parser = parse_seconds)]
    max_ttl: Option<u64>,
    /// API requests a second of all the namespace's principals together (default 1000).
    #[arg(long = "api-rps", value_name = "N")]
    api_rps: Option<u64>,
    /// Commands running at once, and sandbox creates in flight at once (default 32).
    #[arg(long = "max-execs", value_name = "N")]
    max_execs: Option<u64>,
}

impl QuotaArgs {
    fn patch(&self) -> QuotasPatch {
        QuotasPatch {
            cpu_millis: self.cpu,
            memory_bytes: self.memory,
            disk_bytes: self.disk,
            max_sandboxes: self.max_sandboxes,
            pids_per_sandbox: self.pids,
            max_sandbox_ttl_seconds: self.max_ttl,
            api_requests_per_second: self.api_rps,
            max_concurrent_execs: self.max_execs,
        }
    }
}

#[derive(Subcommand)]
pub enum NamespaceCmd {
    /// Create a namespace; unset quotas take the defaults (1 core, 1GiB, 10GiB disk, 10 sandboxes,
    /// 1000 API requests a second, 32 commands at once).
    Create {
        name: String,
        /// Isolation tier (a runtime class of the server).
        #[arg(long)]
        isolation: Option<String>,
        #[command(flatten)]
        quotas: QuotaArgs,
        /// The egress ceiling's entries from the start: a domain (`pypi.org`), `*.domain` or a
        /// CIDR, each with an optional `:port` or `:low-high`; repeatable. Default: no egress.
        #[arg(long = "egress-allow", value_name = "ENTRY")]
        egress_allow: Vec<String>,
        /// Bytes per second shared by all the namespace's egress (`10MiB`).
        #[arg(long = "egress-bandwidth", value_name = "BYTES", value_parser = crate::units::parse_bytes)]
        egress_bandwidth: Option<u64>,
        #[command(flatten)]
        placement: PlacementArgs,
    },
    /// List namespaces.
    List,
    /// Show one namespace.
    Get { name: String },
    /// Change quotas, or the egress ceiling: what the namespace's sandboxes may ask to reach at
    /// most (empty by default: no egress).
    Update {
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
        /// Replaces the ceiling's entries: a domain (`pypi.org`), `*.domain` or a CIDR, each with
        /// an optional `:port` or `:low-high`; repeatable.
        #[arg(long = "egress-allow", value_name = "ENTRY")]
        egress_allow: Vec<String>,
        /// Bytes per second shared by all the namespace's egress (`10MiB`); keeps the entries.
        #[arg(long = "egress-bandwidth", value_name = "BYTES", value_parser = crate::units::parse_bytes)]
        egress_bandwidth: Option<u64>,
        /// Empties the ceiling: no egress at all.
        #[arg(long = "no-egress", conflicts_with_all = ["egress_allow", "egress_bandwidth"])]
        no_egress: bool,
        #[command(flatten)]
        placement: PlacementArgs,
    },
    /// Delete a namespace and everything it owns.
    Delete { name: String },
}

/// Where a namespace's sandboxes run.
#[derive(Args, Default)]
pub struct PlacementArgs {
    /// `shared` (the host's shared cores) or `dedicated` (cores and memory of its own; the
    /// running sandboxes move at once).
    #[arg(long, value_enum)]
    placement: Option<PlacementArg>,
    /// Dedicated cores (default: the cpu quota rounded up).
    #[arg(long = "dedicated-cpus", value_name = "N", requires = "placement")]
    dedicated_cpus: Option<u32>,
    /// Memory reserved for a dedicated namespace (`2GiB`; default: its memory quota).
    #[arg(long = "reserved-memory", value_name = "BYTES", value_parser = crate::units::parse_bytes, requires = "placement")]
    reserved_memory: Option<u64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PlacementArg {
    Shared,
    Dedicated,
}

impl PlacementArgs {
    fn spec(&self) -> Option<bulkhead_api::PlacementSpec> {
        let mode = match self.placement? {
            PlacementArg::Shared => bulkhead_api::PlacementMode::Shared,
            PlacementArg::Dedicated => bulkhead_api::PlacementMode::Dedicated,
        };
        Some(bulkhead_api::PlacementSpec { mode, cpus: self.dedicated_cpus, memory_bytes: self.reserved_memory })
    }
}

/// `shared`, or `dedicated 2-3` (the cores it holds).
fn format_placement(p: &bulkhead_api::Placement) -> String {
    match (&p.mode, &p.cpuset) {
        (bulkhead_api::PlacementMode::Dedicated, Some(cpus)) => format!("dedicated {cpus}"),
        (bulkhead_api::PlacementMode::Dedicated, None) => "dedicated".into(),
        (bulkhead_api::PlacementMode::Shared, _) => "shared".into(),
    }
}

fn namespace_row(n: &Namespace) -> Vec<String> {
    let q = &n.quotas;
    vec![
        n.name.clone(),
        n.isolation.clone(),
        format_cpu(q.cpu_millis),
        format_bytes(q.memory_bytes),
        format_bytes(q.disk_bytes),
        q.max_sandboxes.to_string(),
        q.pids_per_sandbox.to_string(),
        format_seconds(q.max_sandbox_ttl_seconds),
        q.api_requests_per_second.to_string(),
        q.max_concurrent_execs.to_string(),
        format_placement(&n.placement),
    ]
}

const NAMESPACE_HEADERS: [&str; 11] =
    ["NAME", "ISOLATION", "CPU", "MEMORY", "DISK", "SANDBOXES", "PIDS", "MAX TTL", "API RPS", "EXECS", "PLACEMENT"];

fn show_namespace(n: &Namespace, global: &Global) -> anyhow::Result<()> {
    output::item(global.json, n, &NAMESPACE_HEADERS, namespace_row)
}

pub async fn namespace(cmd: NamespaceCmd, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    match cmd {
        NamespaceCmd::Create { name, isolation, quotas, egress_allow, egress_bandwidth, placement } => {
            let d = bulkhead_core::Quotas::DEFAULT;
            let p = quotas.patch();
            let quotas = Quotas {
                cpu_millis: p.cpu_millis.unwrap_or(d.cpu_millis),
                memory_bytes: p.memory_bytes.unwrap_or(d.memory_bytes),
                disk_bytes: p.disk_bytes.unwrap_or(d.disk_bytes),
                max_sandboxes: p.max_sandboxes.unwrap_or(d.max_sandboxes),
                pids_per_sandbox: p.pids_per_sandbox.unwrap_or(d.pids_per_sandbox),
                max_sandbox_ttl_seconds: p.max_sandbox_ttl_seconds.unwrap_or(d.max_sandbox_ttl_seconds),
                api_requests_per_second: p.api_requests_per_second.unwrap_or(d.api_requests_per_second),
                max_concurrent_execs: p.max_concurrent_execs.unwrap_or(d.max_concurrent_execs),
            };
            let egress = (!egress_allow.is_empty() || egress_bandwidth.is_some())
                .then_some(EgressCeiling { allow: egress_allow, max_bandwidth_bytes_per_second: egress_bandwidth });
            let body = CreateNamespace { name, isolation, placement: placement.spec(), egress, quotas };
            let n = c.create_namespace(&body).await?;
            show_namespace(&n, global)?;
        }
        NamespaceCmd::List => {
            let c = &c;
            let all = all_pages(|cursor| async move { c.list_namespaces(Some(1000), cursor.as_deref()).await }).await?;
            output::list(global.json, &all, &NAMESPACE_HEADERS, namespace_row)?;
        }
        NamespaceCmd::Get { name } => show_namespace(&c.get_namespace(&name).await?, global)?,
        NamespaceCmd::Update { name, quotas, egress_allow, egress_bandwidth, no_egress, placement } => {
            let patch = quotas.patch();
            let egress = if no_egress {
                Some(EgressCeiling::default())
            } else if egress_allow.is_empty() && egress_bandwidth.is_none() {
                None
            } else {
                // The ceiling is replaced whole: what is not given is kept.
                let current = c.get_namespace(&name).await?.egress;
                Some(EgressCeiling {
                    allow: if egress_allow.is_empty() { current.allow } else { egress_allow },
                    max_bandwidth_bytes_per_second: egress_bandwidth.or(current.max_bandwidth_bytes_per_second),
                })
            };
            let placement = placement.spec();
            if patch == QuotasPatch::default() && egress.is_none() && placement.is_none() {
                bail!(
                    "nothing to change: give at least one of --cpu, --memory, --disk, --max-sandboxes, --pids, \
                     --max-ttl, --api-rps, --max-execs, --egress-allow, --egress-bandwidth, --no-egress, --placement"
                );
            }
            let quotas = (patch != QuotasPatch::default()).then_some(patch);
            let n = c.update_namespace(&name, &UpdateNamespace { quotas, egress, placement }).await?;
            show_namespace(&n, global)?;
        }
        NamespaceCmd::Delete { name } => {
            c.delete_namespace(&name).await?;
            output::note(global.json, format_args!("deleted namespace {name}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Owner,
    Admin,
    Developer,
    Viewer,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Owner => Role::Owner,
            RoleArg::Admin => Role::Admin,
            RoleArg::Developer => Role::Developer,
            RoleArg::Viewer => Role::Viewer,
        }
    }
}

/// The role as the CLI spells it: `owner`, `admin`, `developer` or `viewer`.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Owner => "owner",
        Role::Admin => "admin",
        Role::Developer => "developer",
        Role::Viewer => "viewer",
    }
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create a key; its token is printed once.
    Create {
        /// The namespace.
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Lifetime, such as `30d`; default: no expiry.
        #[arg(long, value_parser = parse_seconds)]
        expires_in: Option<u64>,
    },
    /// List a namespace's keys.
    List {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
    },
    /// Revoke a key at once.
    Revoke {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        id: String,
    },
}

pub async fn key(cmd: KeyCmd, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    match cmd {
        KeyCmd::Create { ns, name, role, expires_in } => {
            let expires_at = expires_in
                .map(|s| {
                    let t = std::time::SystemTime::now()
                        .checked_add(std::time::Duration::from_secs(s))
                        .context("--expires-in is too far away")?;
                    anyhow::Ok(humantime::format_rfc3339_seconds(t).to_string())
                })
                .transpose()?;
            let k = c.create_key(&ns, &CreateKey { name, role: role.into(), expires_at, projects: None }).await?;
            if global.json {
                output::json(&k)?;
            } else {
                output::fields(&[
                    ("id", k.key.id.clone()),
                    ("name", k.key.name.clone()),
                    ("role", role_name(k.key.role).to_owned()),
                    ("expires", k.key.expires_at.clone().unwrap_or_else(|| "never".into())),
                    ("token", k.token.clone()),
                ]);
                eprintln!("The token is shown only this once; store it now.");
            }
        }
        KeyCmd::List { ns } => {
            let (c, ns) = (&c, ns.as_str());
            let all = all_pages(|cursor| async move { c.list_keys(ns, Some(1000), cursor.as_deref()).await }).await?;
            output::list(global.json, &all, &["ID", "NAME", "ROLE", "CREATED", "EXPIRES"], |k| {
                vec![
                    k.id.clone(),
                    k.name.clone(),
                    role_name(k.role).to_owned(),
                    k.created_at.clone(),
                    k.expires_at.clone().unwrap_or_else(|| "never".into()),
                ]
            })?;
        }
        KeyCmd::Revoke { ns, id } => {
            c.revoke_key(&ns, &id).await?;
            output::note(global.json, format_args!("revoked key {id}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct AuditArgs {
    /// The namespace; without it, the platform chain (admin only).
    #[arg(long, env = "BULKHEAD_NAMESPACE")]
    ns: Option<String>,
    /// Recompute the chain instead of listing it; exits 2 when it is broken.
    #[arg(long)]
    verify: bool,
    /// Only this action, such as `key.create`.
    #[arg(long)]
    action: Option<String>,
    /// Records at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Records before this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// At most this many records (default: all).
    #[arg(long)]
    limit: Option<usize>,
}

pub async fn audit(args: AuditArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    let ns = args.ns.as_deref();
    if args.verify {
        let v = c.verify_audit(ns).await?;
        if global.json {
            output::json(&v)?;
        } else if v.ok && v.pruned > 0 {
            println!(
                "audit chain {} intact: {} records after a checkpoint ({} older records pruned{})",
                ns.unwrap_or("platform"),
                v.records,
                v.pruned,
                v.pruned_at.as_deref().map(|t| format!(", last at {t}")).unwrap_or_default()
            );
        } else if v.ok {
            println!("audit chain {} intact: {} records", ns.unwrap_or("platform"), v.records);
        } else {
            println!(
                "audit chain {} BROKEN at seq {}: {} records",
                ns.unwrap_or("platform"),
                v.first_bad_seq.map(|s| s.to_string()).unwrap_or_default(),
                v.records
            );
        }
        return Ok(if v.ok { ExitCode::SUCCESS } else { ExitCode::from(2) });
    }
    let mut all = Vec::new();
    let mut filter = AuditFilter { action: args.action, since: args.since, until: args.until, ..Default::default() };
    loop {
        let want = args.limit.map(|l| l.saturating_sub(all.len())).unwrap_or(1000).min(1000);
        if want == 0 {
            break;
        }
        filter.limit = Some(want as u32);
        let page = c.audit(ns, &filter).await?;
        all.extend(page.items);
        match page.next_cursor {
            Some(next) => filter.cursor = Some(next),
            None => break,
        }
    }
    output::list(global.json, &all, &["SEQ", "TIME", "PRINCIPAL", "ACTION", "RESOURCE", "DECISION", "STATUS"], |r| {
        vec![
            r.seq.to_string(),
            r.time.clone(),
            r.principal.clone(),
            r.action.clone(),
            r.resource.clone(),
            r.decision.clone(),
            r.status.to_string(),
        ]
    })?;
    Ok(ExitCode::SUCCESS)
}
