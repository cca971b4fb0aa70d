//! The agent subcommands: `agent create|list|show|rm`, `agent push NAME ./dir [--deploy]` (the
//! directory packed by the system GNU `tar` as it is: symlinks stored as symlinks, nothing
//! skipped; streamed, with the bytes sent on a terminal), `agent versions`, `agent deploy` and
//! `agent rollback`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ChildStdout;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use bulkhead_api::{Agent, AgentVersion};
use bulkhead_client::Client;
use clap::Subcommand;
use serde::Serialize;

use crate::commands::{all_pages, client};
use crate::fs::{first_line, Progress, Tar, REDRAW};
use crate::image::short_digest;
use crate::output;
use crate::units::format_bytes;
use crate::Global;

#[derive(Subcommand)]
pub enum AgentCmd {
    /// Create an agent; push a version and deploy it before tasks run it.
    Create {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// `[a-z0-9-]`, starting with a letter.
        name: String,
    },
    /// List a namespace's agents.
    #[command(alias = "ls")]
    List {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
    },
    /// Show one agent, by name or id.
    Show {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// A name or an agt_… id.
        name: String,
    },
    /// Delete an agent with its versions and ended tasks; refused while a task of it runs.
    #[command(alias = "delete")]
    Rm {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// A name or an agt_… id.
        name: String,
    },
    /// Push a directory (with `agent.json` at its root) as a version of the agent. Everything in
    /// it goes, symlinks as symlinks; the same content pushed again is the same version.
    Push {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// A name or an agt_… id.
        name: String,
        /// The agent's directory.
        dir: PathBuf,
        /// Deploy the version: new tasks run it.
        #[arg(long)]
        deploy: bool,
    },
    /// Make a version the one new tasks run; running tasks keep theirs.
    Deploy {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// A name or an agt_… id.
        name: String,
        /// A ver_… of the agent.
        version: String,
    },
    /// Deploy again the version deployed before the active one.
    Rollback {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// A name or an agt_… id.
        name: String,
    },
    /// List an agent's versions.
    Versions {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// A name or an agt_… id.
        name: String,
    },
}

const AGENT_HEADERS: [&str; 5] = ["ID", "NAME", "ACTIVE", "PREVIOUS", "UPDATED"];

fn agent_row(a: &Agent) -> Vec<String> {
    vec![
        a.id.clone(),
        a.name.clone(),
        a.active_version.clone().unwrap_or_else(|| "-".into()),
        a.previous_version.clone().unwrap_or_else(|| "-".into()),
        a.updated_at.clone(),
    ]
}

fn show_agent(a: &Agent, global: &Global) -> anyhow::Result<()> {
    output::item(global.json, a, &AGENT_HEADERS, agent_row)
}

const VERSION_HEADERS: [&str; 6] = ["ID", "ACTIVE", "DIGEST", "SIZE", "COMMAND", "CREATED"];

fn version_row(v: &AgentVersion) -> Vec<String> {
    vec![
        v.id.clone(),
        if v.active { "yes".into() } else { "-".into() },
        short_digest(&v.digest),
        format_bytes(v.size_bytes),
        v.manifest.command.join(" "),
        v.created_at.clone(),
    ]
}

/// What `agent push --json` prints.
#[derive(Serialize)]
struct PushOutput {
    version: AgentVersion,
    /// Whether the push made the version (`false`: the same bundle was that version already).
    new: bool,
    /// The agent after the deploy, with `--deploy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    deployed: Option<Agent>,
}

pub async fn agent(cmd: AgentCmd, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    match cmd {
        AgentCmd::Create { ns, name } => show_agent(&c.create_agent(&ns, &name).await?, global)?,
        AgentCmd::List { ns } => {
            let (c, ns) = (&c, ns.as_str());
            let all = all_pages(|cursor| async move { c.list_agents(ns, Some(1000), cursor.as_deref()).await }).await?;
            output::list(global.json, &all, &AGENT_HEADERS, agent_row)?;
        }
        AgentCmd::Show { ns, name } => {
            let a = c.get_agent(&ns, &name).await?;
            if global.json {
                output::json(&a)?;
            } else {
                output::fields(&[
                    ("id", a.id.clone()),
                    ("namespace", a.namespace.clone()),
                    ("name", a.name.clone()),
                    ("active version", a.active_version.clone().unwrap_or_else(|| "none: deploy one".into())),
                    ("previous version", a.previous_version.clone().unwrap_or_else(|| "-".into())),
                    ("created", a.created_at.clone()),
                    ("updated", a.updated_at.clone()),
                ]);
            }
        }
        AgentCmd::Rm { ns, name } => {
            c.delete_agent(&ns, &name).await?;
            output::note(global.json, format_args!("deleted agent {name}"));
        }
        AgentCmd::Push { ns, name, dir, deploy } => push(&c, &ns, &name, &dir, deploy, global).await?,
        AgentCmd::Deploy { ns, name, version } => show_agent(&c.deploy_agent(&ns, &name, &version).await?, global)?,
        AgentCmd::Rollback { ns, name } => show_agent(&c.rollback_agent(&ns, &name).await?, global)?,
        AgentCmd::Versions { ns, name } => {
            let (c, ns, name) = (&c, ns.as_str(), name.as_str());
            let all =
                all_pages(|cursor| async move { c.list_agent_versions(ns, name, Some(1000), cursor.as_deref()).await })
                    .await?;
            output::list(global.json, &all, &VERSION_HEADERS, version_row)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `tar` is told to pack an agent's directory: everything in it, symlinks as symlinks
/// (never followed), in name order and owned by root, so the same content packs to the same
/// bytes (the same version) wherever and by whomever it is pushed. Modification times are kept:
/// Python's bytecode caches are checked against them.
const PACK_ARGS: [&str; 8] =
    ["--format=gnu", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-cf", "-", "."];

/// `agent push`: `tar` packs the directory into the upload as it goes; a terminal sees the bytes
/// sent.
async fn push(c: &Client, ns: &str, name: &str, dir: &Path, deploy: bool, global: &Global) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{}: not a directory (an agent's directory, with agent.json at its root)", dir.display());
    }
    let manifest = dir.join("agent.json");
    if !std::fs::symlink_metadata(&manifest).is_ok_and(|m| m.is_file()) {
        bail!("{}: no agent.json at its root (a file with the agent's command and protocol)", dir.display());
    }
    // A missing agent is said plainly before anything is packed.
    c.get_agent(ns, name).await?;
    let tar = Tar::spawn(dir, &PACK_ARGS, Stdio::null(), Stdio::piped())?;
    let (packed, failure) = Packed::new(tar)?;
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let mut progress = Progress::new();
    let upload = c.push_agent_from(ns, name, Box::new(packed), move |n| counter.store(n, Ordering::Relaxed));
    tokio::pin!(upload);
    let mut tick = tokio::time::interval(REDRAW);
    let result = loop {
        tokio::select! {
            r = &mut upload => break r,
            _ = tick.tick(), if progress.tty => {
                let n = sent.load(Ordering::Relaxed);
                progress.draw(&format!("pushing {} to {name}: {} sent", dir.display(), format_bytes(n)));
            }
        }
    };
    // When tar failed, what it said explains the upload's failure better than the upload does.
    if let Some(why) = failure.lock().ok().and_then(|f| f.clone()) {
        bail!("tar could not pack {}: {why}", dir.display());
    }
    let pushed = result?;
    let v = &pushed.version;
    let what = if pushed.created { "new version" } else { "the same bundle is already version" };
    progress.finish(&format!(
        "pushed {} to {name} in {}: {what} {} ({}, {})",
        format_bytes(sent.load(Ordering::Relaxed)),
        progress.elapsed(),
        v.id,
        short_digest(&v.digest),
        format_bytes(v.size_bytes)
    ));
    let deployed = if deploy {
        let a = c.deploy_agent(ns, name, &v.id).await?;
        if !global.json {
            eprintln!("deployed {} to {name}: new tasks run it", v.id);
        }
        Some(a)
    } else {
        None
    };
    if global.json {
        output::json(&PushOutput { version: pushed.version, new: pushed.created, deployed })?;
    }
    Ok(())
}

/// What `tar` writes, as the upload reads it. At its end tar's exit status is checked: a tar
/// that failed (a file it could not read) ends the upload with an error rather than its end, so
/// the server never stores an archive that lacks something, and the failure is kept for the
/// error the command prints.
struct Packed {
    stdout: ChildStdout,
    tar: Option<Tar>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Packed {
    fn new(mut tar: Tar) -> anyhow::Result<(Packed, Arc<Mutex<Option<String>>>)> {
        let Some(stdout) = tar.child.stdout.take() else {
            bail!("tar has no standard output");
        };
        let failure = Arc::new(Mutex::new(None));
        Ok((Packed { stdout, tar: Some(tar), failure: failure.clone() }, failure))
    }
}

impl Read for Packed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        let Some(tar) = self.tar.take() else {
            return Ok(0);
        };
        let why = match tar.wait() {
            Ok((status, _)) if status.success() => return Ok(0),
            Ok((status, errors)) => first_line(&errors, status),
            Err(e) => format!("{e:#}"),
        };
        if let Ok(mut f) = self.failure.lock() {
            *f = Some(why.clone());
        }
        Err(std::io::Error::other(why))
    }
}
