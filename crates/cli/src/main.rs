//! `bulkhead`: `bulkhead serve` runs the server; every other subcommand is a client of its HTTP
//! API. Errors print one line and exit non-zero.

mod agent;
mod commands;
mod doctor;
mod egress;
mod fs;
mod identity;
mod image;
mod logs;
mod output;
mod pool;
mod process;
mod sandbox;
mod serve;
mod task;
mod terminal;
mod units;
mod usage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bulkhead", version, about = "Multi-tenant runtime for AI agents")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// The server's URL.
    #[arg(long, global = true, env = "BULKHEAD_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// Bearer token. Without one, on the server's own host, the admin token file is used.
    #[arg(long, global = true, env = "BULKHEAD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The server's data dir, where the admin token file is looked for.
    #[arg(long, global = true, env = "BULKHEAD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<serve::ServeArgs>),
    /// Manage namespaces (platform admin).
    #[command(subcommand, alias = "ns")]
    Namespace(commands::NamespaceCmd),
    /// Manage a namespace's API keys.
    #[command(subcommand)]
    Key(commands::KeyCmd),
    /// Read or verify an audit chain.
    Audit(commands::AuditArgs),
    /// Manage a namespace's sandboxes.
    #[command(subcommand, alias = "sbx")]
    Sandbox(sandbox::SandboxCmd),
    /// Run a command in a sandbox: `bulkhead exec SANDBOX -- CMD ARGS...`; its output streams
    /// and its exit code becomes bulkhead's. `-i` sends standard input, `-it` attaches a terminal.
    Exec(sandbox::ExecArgs),
    /// An interactive shell in a sandbox (bash, else sh) on a terminal attached to this one;
    /// exits with the shell's exit code.
    Shell(terminal::ShellArgs),
    /// Manage a sandbox's background processes: `start`, `list`, `get`, `logs`, `kill`.
    #[command(subcommand)]
    Process(process::ProcessCmd),
    /// Copy a file into or out of a sandbox: `bulkhead cp ./f SANDBOX:/tmp/f` or back.
    Cp(sandbox::CpArgs),
    /// Manage a namespace's filesystems and their files: `push`/`pull` whole trees, `ls`, `cat`,
    /// `put`, `rm` single files.
    #[command(subcommand)]
    Fs(fs::FsCmd),
    /// Manage images sandboxes boot from: `import` an archive, `list`, `show`, `rm`; `--public`
    /// for the platform's public images.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Keep started sandboxes of an image ready for a namespace's creates: `set --image NAME
    /// --size N`, `list`, `rm --image NAME`.
    #[command(subcommand)]
    Pool(pool::PoolCmd),
    /// Manage a namespace's projects (permission boundaries for filesystems).
    #[command(subcommand)]
    Project(fs::ProjectCmd),
    /// List this host's Bulkhead resources that belong to no live sandbox (run as root on the
    /// server's host); exits 1 when there is one.
    Doctor(doctor::DoctorArgs),
    /// A namespace's metered usage (cpu, memory, sandbox time, execs, disk).
    Usage(usage::UsageArgs),
    /// A namespace's exec output; `-f` follows it live.
    Logs(logs::LogsArgs),
    /// Measure sandbox create, exec and delete against raw baselines (as root, release build).
    Bench(bulkhead_bench::BenchArgs),
    /// A namespace's single sign-on through an OpenID Connect provider: `get`, `set`, `clear`.
    #[command(subcommand)]
    Identity(identity::IdentityCmd),
    /// A namespace's Cedar policies: `add`, `list`, `rm`, `explain` a decision, print the `schema`.
    #[command(subcommand)]
    Policy(identity::PolicyCmd),
    /// A namespace's secrets, handed to sandboxes with `sandbox create --secret`; values are
    /// write-only.
    #[command(subcommand)]
    Secret(identity::SecretCmd),
    /// Manage a namespace's agents: `create`, `list`, `show`, `rm`, `push` a directory as a
    /// version, `versions`, `deploy` one, `rollback`.
    #[command(subcommand)]
    Agent(agent::AgentCmd),
    /// Run and converse with agents: `create` a task, `send` it messages, `allow` or `reject` its
    /// permission requests, read its `logs`, its `state`, `cancel` it, `list`, `show`.
    #[command(subcommand)]
    Task(task::TaskCmd),
    /// A sandbox's network egress: `explain` how a connection would be decided.
    #[command(subcommand)]
    Egress(egress::EgressCmd),
}

/// The default data dir: `/var/lib/bulkhead` for root, `$XDG_DATA_HOME/bulkhead` (or
/// `~/.local/share/bulkhead`) for anyone else.
pub fn default_data_dir() -> PathBuf {
    if bulkhead_runtime::host::is_root() {
        return PathBuf::from("/var/lib/bulkhead");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("bulkhead");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/bulkhead")
}

/// A reader that stops reading (`bulkhead task show ID | head -1`) closes the pipe: Rust ignores
/// SIGPIPE, so the next print fails, and `println!` panics on that. The command ends then, as
/// it would by SIGPIPE (status 141), without a panic's message.
fn quiet_on_a_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_a_closed_pipe();
    let cli = Cli::parse();
    // Requests are decided on the runtime's threads, and Cedar recurses on a policy's nesting:
    // the policy engine's bounds are chosen for this stack size (tokio's default is 2 MiB).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(bulkhead_policy::STACK_SIZE)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(*args, &cli.global).await,
            Command::Namespace(cmd) => commands::namespace(cmd, &cli.global).await,
            Command::Key(cmd) => commands::key(cmd, &cli.global).await,
            Command::Audit(args) => commands::audit(args, &cli.global).await,
            Command::Sandbox(cmd) => sandbox::sandbox(cmd, &cli.global).await,
            Command::Exec(args) => sandbox::exec(args, &cli.global).await,
            Command::Shell(args) => terminal::shell(args, &cli.global).await,
            Command::Process(cmd) => process::process(cmd, &cli.global).await,
            Command::Cp(args) => sandbox::cp(args, &cli.global).await,
            Command::Fs(cmd) => fs::fs(cmd, &cli.global).await,
            Command::Project(cmd) => fs::project(cmd, &cli.global).await,
            Command::Image(cmd) => image::image(cmd, &cli.global).await,
            Command::Pool(cmd) => pool::pool(cmd, &cli.global).await,
            Command::Bench(args) => {
                bulkhead_bench::run(&args, &std::env::current_exe()?).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Usage(args) => usage::usage(args, &cli.global).await,
            Command::Logs(args) => logs::logs(args, &cli.global).await,
            Command::Doctor(args) => doctor::doctor(args, &cli.global).await,
            Command::Identity(cmd) => identity::identity(cmd, &cli.global).await,
            Command::Policy(cmd) => identity::policy(cmd, &cli.global).await,
            Command::Secret(cmd) => identity::secret(cmd, &cli.global).await,
            Command::Egress(cmd) => egress::egress(cmd, &cli.global).await,
            Command::Agent(cmd) => agent::agent(cmd, &cli.global).await,
            Command::Task(cmd) => task::task(cmd, &cli.global).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and then each cause, joined by `: `. Every error names only
            // its own step and leaves its cause to `source()`, so each step appears once.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
