//! The sandbox subcommands: `sandbox create|list|get|delete`, `exec` (streamed, exit code
//! passed through) and `cp` (files in and out of a sandbox).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use base64::Engine;
use bulkhead_api::{CreateProcess, CreateSandbox, Encoding, ExecEvent, ExecRequest, ProcessStatus, Sandbox};
use bulkhead_client::files::FileOptions;
use bulkhead_client::Client;
use clap::{Args, Subcommand};

use crate::commands::{all_pages, client};
use crate::output;
use crate::units::{format_bytes, format_cpu, format_seconds, parse_bytes, parse_cpu, parse_seconds};
use crate::Global;

/// The exit status of a command that ran out of time, as `timeout(1)` reports it.
const TIMED_OUT: u8 = 124;
/// The longest timeout of an exec, in seconds (the server's bound on `POST .../exec`).
const MAX_EXEC_TIMEOUT: u64 = 3600;

/// Parses `KEY=VALUE`.
pub(crate) fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

pub(crate) fn env_map(pairs: Vec<(String, String)>) -> Option<BTreeMap<String, String>> {
    if pairs.is_empty() {
        None
    } else {
        Some(pairs.into_iter().collect())
    }
}

#[derive(Subcommand)]
pub enum SandboxCmd {
    /// Create a sandbox; unset limits take the server's defaults.
    Create {
        /// The namespace.
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// CPU, in cores (`0.5`) or thousandths (`500m`).
        #[arg(long, value_parser = parse_cpu)]
        cpu: Option<u64>,
        /// Memory (`256MiB`).
        #[arg(long, value_parser = parse_bytes)]
        memory: Option<u64>,
        /// Lifetime (`10m`); the sandbox is deleted when it ends.
        #[arg(long, value_parser = parse_seconds)]
        ttl: Option<u64>,
        /// An environment variable of every command, `KEY=VALUE`; repeatable.
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// A filesystem to mount at /workspace, read-write (`ID` or `ID:rw`) or read-only (`ID:ro`).
        #[arg(long, value_name = "ID[:rw|:ro]", value_parser = crate::fs::parse_mount)]
        filesystem: Option<bulkhead_api::SandboxFilesystem>,
        /// A secret of the namespace, as an environment variable of every command
        /// (`NAME=env:VAR`) or a read-only file (`NAME=path:/run/secrets/FILE`); repeatable.
        #[arg(long = "secret", value_name = "NAME=env:VAR|NAME=path:FILE")]
        secret: Vec<String>,
        /// A destination the sandbox may reach, within the namespace's egress ceiling: a domain
        /// (`pypi.org`), `*.domain` or a CIDR, each with an optional `:port` or `:low-high`;
        /// repeatable. None: no egress.
        #[arg(long = "allow", value_name = "ENTRY")]
        allow: Vec<String>,
        /// The image to boot: a name or an img_… id (the namespace's own, else a public one).
        /// Default: the platform's default image.
        #[arg(long)]
        image: Option<String>,
        /// The size of the writable root (`2GiB`): what the sandbox may add to its image.
        /// Default: 1 GiB, at most the namespace's disk quota.
        #[arg(long, value_parser = parse_bytes)]
        disk: Option<u64>,
    },
    /// List a namespace's sandboxes (running ones; `--all` for ended ones too).
    List {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// Also sandboxes that have ended.
        #[arg(long)]
        all: bool,
    },
    /// Show one sandbox.
    Get {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        id: String,
    },
    /// Delete a sandbox: its processes, mounts and cgroups are gone when this returns.
    Delete {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        id: String,
    },
    /// Save a running sandbox's root as a new private image of its namespace (what it
    /// installed and changed, on top of its image): a template to start sandboxes from.
    Snapshot {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// The sandbox.
        id: String,
        /// The new image's name.
        name: String,
    },
}

const SANDBOX_HEADERS: [&str; 7] = ["ID", "STATUS", "CPU", "MEMORY", "TTL", "CREATED", "EXPIRES"];

fn sandbox_row(s: &Sandbox) -> Vec<String> {
    vec![
        s.id.clone(),
        s.status.clone(),
        format_cpu(s.cpu_millis),
        format_bytes(s.memory_bytes),
        format_seconds(s.ttl_seconds),
        s.created_at.clone(),
        s.expires_at.clone(),
    ]
}

fn show_sandbox(s: &Sandbox, global: &Global) -> anyhow::Result<()> {
    output::item(global.json, s, &SANDBOX_HEADERS, sandbox_row)
}

/// Whether a sandbox has not ended.
pub fn is_active(s: &Sandbox) -> bool {
    matches!(s.status.as_str(), "creating" | "running")
}

/// Every sandbox of a namespace, all pages.
pub async fn all_sandboxes(c: &Client, ns: &str) -> anyhow::Result<Vec<Sandbox>> {
    Ok(all_pages(|cursor| async move { c.list_sandboxes(ns, Some(1000), cursor.as_deref()).await }).await?)
}

pub async fn sandbox(cmd: SandboxCmd, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    match cmd {
        SandboxCmd::Create { ns, cpu, memory, ttl, env, filesystem, secret, allow, image, disk } => {
            let req = CreateSandbox {
                cpu_millis: cpu,
                memory_bytes: memory,
                ttl_seconds: ttl,
                env: env_map(env),
                filesystem,
                secrets: crate::identity::sandbox_secrets(&secret)?,
                egress: (!allow.is_empty()).then(|| bulkhead_api::SandboxEgress { allow, credentials: Vec::new() }),
                image,
                disk_bytes: disk,
            };
            show_sandbox(&c.create_sandbox(&ns, &req).await?, global)?;
        }
        SandboxCmd::List { ns, all } => {
            let mut sandboxes = all_sandboxes(&c, &ns).await?;
            if !all {
                sandboxes.retain(is_active);
            }
            output::list(global.json, &sandboxes, &SANDBOX_HEADERS, sandbox_row)?;
        }
        SandboxCmd::Get { ns, id } => {
            let s = c.get_sandbox(&ns, &id).await?;
            if global.json {
                output::json(&s)?;
            } else {
                let mut pairs = vec![
                    ("id", s.id.clone()),
                    ("namespace", s.namespace.clone()),
                    ("status", s.status.clone()),
                    ("isolation", s.isolation.clone()),
                    ("cpu", format_cpu(s.cpu_millis)),
                    ("memory", format_bytes(s.memory_bytes)),
                    ("pids", s.pids_limit.to_string()),
                    ("ttl", format_seconds(s.ttl_seconds)),
                    ("created", s.created_at.clone()),
                    ("expires", s.expires_at.clone()),
                ];
                if let Some(image) = &s.image {
                    pairs.push(("image", format!("{} ({})", image.name, image.id)));
                }
                if let Some(disk) = s.disk_bytes {
                    pairs.push(("disk", format_bytes(disk)));
                }
                if let Some(ended) = &s.ended_at {
                    pairs.push(("ended", ended.clone()));
                }
                if let Some(reason) = &s.reason {
                    pairs.push(("reason", reason.clone()));
                }
                output::fields(&pairs);
            }
        }
        SandboxCmd::Delete { ns, id } => {
            c.delete_sandbox(&ns, &id).await?;
            output::note(global.json, format_args!("deleted sandbox {id}"));
        }
        SandboxCmd::Snapshot { ns, id, name } => {
            let image = c.snapshot_sandbox(&ns, &id, &name).await?;
            if global.json {
                output::json(&image)?;
            } else {
                println!(
                    "{} {} {} layers, {}",
                    image.id,
                    image.name,
                    image.layers.len(),
                    crate::units::format_bytes(image.size_bytes)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct ExecArgs {
    /// The namespace.
    #[arg(long, env = "BULKHEAD_NAMESPACE")]
    pub(crate) ns: String,
    /// The sandbox's id.
    pub(crate) sandbox: String,
    /// An environment variable of this command, `KEY=VALUE`; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub(crate) env: Vec<(String, String)>,
    /// Absolute working directory inside the sandbox (default `/`).
    #[arg(long)]
    pub(crate) cwd: Option<String>,
    /// Run as this user of the image: a name, `uid`, `uid:gid` or `name:group`.
    #[arg(long, short = 'u')]
    pub(crate) user: Option<String>,
    /// Kill the command after this long (`60s`, at most `1h`).
    #[arg(long, value_parser = parse_seconds)]
    pub(crate) timeout: Option<u64>,
    /// Send this command's standard input to the command (any bytes, any size, streamed as it
    /// is read); with `-t`, forward it interactively.
    #[arg(short = 'i', long = "stdin")]
    pub(crate) stdin: bool,
    /// Send this file as the command's standard input (any bytes, any size, streamed).
    #[arg(long, value_name = "PATH", conflicts_with = "stdin")]
    pub(crate) stdin_file: Option<PathBuf>,
    /// Run the command on a terminal and attach this one to it (raw mode, its size followed):
    /// `bulkhead exec -it SANDBOX -- bash`. Exits with the command's exit code.
    #[arg(short = 't', long = "tty")]
    pub(crate) tty: bool,
    /// The program and its arguments (after `--`); not run through a shell.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub(crate) cmd: Vec<String>,
}

pub(crate) fn write_out(out: &mut impl Write, data: &[u8], what: &str) -> anyhow::Result<()> {
    out.write_all(data).and_then(|()| out.flush()).with_context(|| format!("cannot write {what}"))
}

/// The process exit status of a command's exit code (`1` for one no shell could report).
pub(crate) fn exit_status(code: i32) -> ExitCode {
    match u8::try_from(code) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(c) => ExitCode::from(c),
        Err(_) => ExitCode::FAILURE,
    }
}

/// Runs a command; its output streams to ours and its exit code becomes ours. Output is
/// carried as base64, so any bytes pass exactly; standard input (`-i`, `--stdin-file`) streams
/// through a background process ([`exec_streaming_stdin`]), so it has no size bound. With `--json`, the output is
/// collected and printed as one JSON object (its `stdout`/`stderr` as text) instead. With `-t`,
/// the command runs on a terminal attached to ours ([`crate::terminal`]).
pub async fn exec(args: ExecArgs, global: &Global) -> anyhow::Result<ExitCode> {
    if args.tty {
        return crate::terminal::exec_tty(args, global).await;
    }
    let c = client(global)?;
    if !global.json {
        let source: Option<Box<dyn Read + Send>> = if let Some(path) = &args.stdin_file {
            let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(Box::new(f))
        } else if args.stdin {
            Some(Box::new(std::io::stdin()))
        } else {
            None
        };
        if let Some(source) = source {
            return exec_streaming_stdin(&c, args, source).await;
        }
    }
    let stdin = if let Some(path) = &args.stdin_file {
        Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
    } else if args.stdin {
        let mut data = Vec::new();
        std::io::stdin().read_to_end(&mut data).context("cannot read standard input")?;
        Some(data)
    } else {
        None
    };
    let timeout = args.timeout;
    let encoding = if global.json { Encoding::Utf8 } else { Encoding::Base64 };
    let stdin = stdin.map(|d| match encoding {
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(d),
        Encoding::Utf8 => String::from_utf8_lossy(&d).into_owned(),
    });
    let req = ExecRequest {
        cmd: args.cmd,
        stdin,
        encoding: Some(encoding),
        user: args.user,
        env: env_map(args.env),
        cwd: args.cwd,
        timeout_seconds: timeout,
    };
    if global.json {
        let r = c.exec(&args.ns, &args.sandbox, &req).await?;
        output::json(&r)?;
        return Ok(if r.timed_out { ExitCode::from(TIMED_OUT) } else { exit_status(r.exit_code) });
    }
    let mut stream = c.exec_stream(&args.ns, &args.sandbox, &req).await?;
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr().lock());
    let decode = |data: &str| {
        base64::engine::general_purpose::STANDARD.decode(data).context("the server sent output that is not base64")
    };
    loop {
        match stream.next().await? {
            Some(ExecEvent::Stdout { data }) => write_out(&mut stdout, &decode(&data)?, "standard output")?,
            Some(ExecEvent::Stderr { data }) => write_out(&mut stderr, &decode(&data)?, "standard error")?,
            Some(ExecEvent::Exit { exit_code, timed_out, truncated, .. }) => {
                if timed_out {
                    // The server's default when no --timeout was given.
                    let limit = format_seconds(timeout.unwrap_or(60));
                    writeln!(stderr, "error: the command timed out after {limit} and was killed").ok();
                    return Ok(ExitCode::from(TIMED_OUT));
                }
                if truncated {
                    writeln!(stderr, "warning: the output went past the server's cap and was cut").ok();
                }
                return Ok(exit_status(exit_code));
            }
            Some(ExecEvent::Error { message }) => bail!("{message}"),
            None => bail!("the server ended the output stream before the command's exit"),
        }
    }
}

/// Runs a command whose standard input is `source`, of any size: the command starts as a
/// background process (the exec's default timeout of 60 seconds and bounds apply), `source`
/// streams to its stdin a chunk at a time (never held whole in memory) and is closed at its
/// end, and its output streams to ours as it comes until it exits, whose code becomes ours
/// (128 + the signal that killed it; 124 when it timed out). Stdin the command no longer reads
/// (it closed it, or exited) is not an error of ours.
async fn exec_streaming_stdin(c: &Client, args: ExecArgs, source: Box<dyn Read + Send>) -> anyhow::Result<ExitCode> {
    let timeout = args.timeout.unwrap_or(60);
    if timeout > MAX_EXEC_TIMEOUT {
        bail!("--timeout: at most {}", format_seconds(MAX_EXEC_TIMEOUT));
    }
    let req = CreateProcess {
        cmd: args.cmd,
        env: env_map(args.env),
        cwd: args.cwd,
        user: args.user,
        tty: None,
        timeout_seconds: Some(timeout),
    };
    let (ns, sandbox) = (args.ns, args.sandbox);
    let p = c.start_process(&ns, &sandbox, &req).await?;
    let stdin = c.process_stdin_from(&ns, &sandbox, &p.id, source, true);
    let output = crate::process::follow(c, &ns, &sandbox, &p.id, 0);
    tokio::pin!(stdin, output);
    let mut writing = true;
    let end = loop {
        tokio::select! {
            written = &mut stdin, if writing => {
                writing = false;
                if let Err(e) = written {
                    // Refused because the command closed its stdin or ended: its exit says how
                    // it went. Otherwise it waits for input that will not come: say why.
                    if matches!(c.get_process(&ns, &sandbox, &p.id).await, Ok(q) if q.status == ProcessStatus::Running) {
                        eprintln!("warning: not all of standard input reached the command: {e:#}");
                    }
                }
            }
            end = &mut output => break end?,
        }
    };
    if end.timed_out {
        eprintln!("error: the command timed out after {} and was killed", format_seconds(timeout));
        return Ok(ExitCode::from(TIMED_OUT));
    }
    Ok(exit_status(end.exit_code))
}

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// `-`: standard input or output.
    Std,
    Local(PathBuf),
    Sandbox {
        id: String,
        path: String,
    },
}

/// `SANDBOX:/abs/path` is a place in a sandbox: the part before the first `:` holds no `/`
/// and the part after is absolute. Anything else is local (`./a:b` stays local).
fn parse_place(s: &str) -> Place {
    if s == "-" {
        return Place::Std;
    }
    if let Some((id, path)) = s.split_once(':') {
        if !id.is_empty() && !id.contains('/') && path.starts_with('/') {
            return Place::Sandbox { id: id.to_owned(), path: path.to_owned() };
        }
    }
    Place::Local(PathBuf::from(s))
}

/// The last component of a path inside a sandbox.
fn remote_name(path: &str) -> Option<&str> {
    path.trim_end_matches('/').rsplit('/').next().filter(|n| !n.is_empty() && *n != "." && *n != "..")
}

#[derive(Args)]
pub struct CpArgs {
    /// The namespace.
    #[arg(long, env = "BULKHEAD_NAMESPACE")]
    ns: String,
    /// `SANDBOX:/abs/path`, a local path, or `-` for standard input.
    src: String,
    /// `SANDBOX:/abs/path`, a local path (or directory), or `-` for standard output.
    dst: String,
    /// Read or write the sandbox's file as this user of its image (name, uid or uid:gid).
    #[arg(long)]
    user: Option<String>,
    /// Permission bits of the file written into the sandbox, in octal (such as 0755); without
    /// it an existing file keeps its mode and a new one gets 0644.
    #[arg(long)]
    mode: Option<String>,
}

/// Copies a file into or out of a sandbox, streamed: the file is never held whole in memory.
pub async fn cp(args: CpArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let options = FileOptions { user: args.user, mode: args.mode };
    match (parse_place(&args.src), parse_place(&args.dst)) {
        (local @ (Place::Std | Place::Local(_)), Place::Sandbox { id, path }) => {
            copy_in(&client(global)?, &args.ns, &local, &id, path, &options).await?
        }
        (Place::Sandbox { id, path }, local @ (Place::Std | Place::Local(_))) => {
            if options.mode.is_some() {
                bail!("--mode: only when copying into a sandbox");
            }
            copy_out(&client(global)?, &args.ns, &id, &path, local, &options).await?
        }
        _ => bail!("exactly one of SRC and DST must be SANDBOX:/abs/path, the other a local path or -"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A local file (or standard input) into a sandbox; a `path` ending in `/` takes the local
/// file's name.
async fn copy_in(
    c: &Client,
    ns: &str,
    local: &Place,
    id: &str,
    mut path: String,
    options: &FileOptions,
) -> anyhow::Result<()> {
    let source: Box<dyn Read + Send> = match local {
        Place::Local(p) => Box::new(std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?),
        _ => Box::new(std::io::stdin()),
    };
    if path.ends_with('/') {
        let name = match local {
            Place::Local(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()),
            _ => None,
        };
        let Some(name) = name else {
            bail!("{path}: name the file to write, not only its directory");
        };
        path.push_str(&name);
    }
    c.upload_file(ns, id, &path, options, source).await?;
    Ok(())
}

/// A file of a sandbox to a local file (written atomically; into a directory under the
/// sandbox file's name) or to standard output, streamed as it arrives.
async fn copy_out(
    c: &Client,
    ns: &str,
    id: &str,
    path: &str,
    local: Place,
    options: &FileOptions,
) -> anyhow::Result<()> {
    match local {
        Place::Local(mut p) => {
            if p.is_dir() {
                let Some(name) = remote_name(path) else {
                    bail!("{path}: not a file name to copy into {}", p.display());
                };
                p.push(name);
            }
            let (mut file, tmp) = temp_beside(&p)?;
            let result = async {
                c.download_file(ns, id, path, options, &mut file).await?;
                file.sync_all()?;
                std::fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))
            }
            .await;
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        }
        _ => {
            let mut out = std::io::stdout();
            c.download_file(ns, id, path, options, &mut out).await?;
            out.flush().context("cannot write standard output")
        }
    }
}

/// A new temporary file beside `path` (with the permissions of the file it will replace),
/// for a write that renames it over `path` once complete, so that `path` is either untouched
/// or complete.
fn temp_beside(path: &Path) -> anyhow::Result<(std::fs::File, PathBuf)> {
    let name = path.file_name().with_context(|| format!("{}: not a file name", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{}.bulkhead-{}.tmp", name.to_string_lossy(), std::process::id()));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // A file that is replaced keeps its permissions.
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = f.set_permissions(meta.permissions());
    }
    Ok((f, tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places() {
        assert_eq!(parse_place("-"), Place::Std);
        assert_eq!(parse_place("sbx_1:/tmp/a"), Place::Sandbox { id: "sbx_1".into(), path: "/tmp/a".into() });
        assert_eq!(parse_place("./a:/b"), Place::Local("./a:/b".into()));
        assert_eq!(parse_place("a:b"), Place::Local("a:b".into()));
        assert_eq!(parse_place("/tmp/x"), Place::Local("/tmp/x".into()));
        assert_eq!(remote_name("/tmp/a.txt"), Some("a.txt"));
        assert_eq!(remote_name("/"), None);
    }

    #[test]
    fn env_pairs() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".to_owned(), "b=c".to_owned()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("x").is_err());
    }

    #[test]
    fn a_temporary_file_beside_replaces_with_the_old_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o751)).unwrap();
        let (mut f, tmp) = temp_beside(&p).unwrap();
        f.write_all(b"new").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o751);
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
