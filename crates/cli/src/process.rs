//! `bulkhead process start|list|get|logs|kill`: background processes of a sandbox.

use std::process::ExitCode;

use std::io::Write;

use anyhow::{bail, Context};
use base64::Engine;
use bulkhead_api::{CreateProcess, OutputStream, Process, ProcessEvent, ProcessStatus};
use bulkhead_client::Client;
use clap::Subcommand;

use crate::commands::client;
use crate::output;
use crate::sandbox::{env_map, exit_status, parse_env, write_out};
use crate::units::parse_seconds;
use crate::Global;

#[derive(Subcommand)]
pub enum ProcessCmd {
    /// Start a command in the background; prints its id (`prc_…`).
    Start {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        sandbox: String,
        /// An environment variable of the command, `KEY=VALUE`; repeatable.
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Absolute working directory inside the sandbox (default `/`).
        #[arg(long)]
        cwd: Option<String>,
        /// Run as this user of the image.
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// Kill the command after this long (`10m`, at most a day).
        #[arg(long, value_parser = parse_seconds)]
        timeout: Option<u64>,
        /// The program and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// The sandbox's processes (running, and ended in the last 10 minutes).
    List {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        sandbox: String,
    },
    /// One process.
    Get {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        sandbox: String,
        process: String,
    },
    /// A process's output from `--after` on, followed until it exits; exits with its code.
    Logs {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        sandbox: String,
        process: String,
        /// Only output after this `seq`.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Send a signal (default `TERM`) to a process.
    Kill {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        sandbox: String,
        process: String,
        /// `TERM`, `SIGKILL`, `9`, ...
        #[arg(long, short = 's', default_value = "TERM")]
        signal: String,
    },
}

fn row(p: &Process) -> Vec<String> {
    let status = match p.status {
        ProcessStatus::Running => "running".to_owned(),
        ProcessStatus::Exited => format!("exited {}", p.exit_code.unwrap_or_default()),
    };
    vec![p.id.clone(), status, p.started_at.clone(), p.cmd.join(" ")]
}

const HEADERS: [&str; 4] = ["ID", "STATUS", "STARTED", "COMMAND"];

pub async fn process(cmd: ProcessCmd, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    match cmd {
        ProcessCmd::Start { ns, sandbox, env, cwd, user, timeout, cmd } => {
            let req = CreateProcess { cmd, env: env_map(env), cwd, user, tty: None, timeout_seconds: timeout };
            let p = c.start_process(&ns, &sandbox, &req).await?;
            if global.json {
                output::json(&p)?;
            } else {
                println!("{}", p.id);
            }
        }
        ProcessCmd::List { ns, sandbox } => {
            let items = c.list_processes(&ns, &sandbox).await?;
            if global.json {
                output::json(&items)?;
            } else {
                output::table(&HEADERS, &items.iter().map(row).collect::<Vec<_>>());
            }
        }
        ProcessCmd::Get { ns, sandbox, process } => {
            let p = c.get_process(&ns, &sandbox, &process).await?;
            if global.json {
                output::json(&p)?;
            } else {
                output::table(&HEADERS, &[row(&p)]);
            }
        }
        ProcessCmd::Logs { ns, sandbox, process, after } => {
            let end = follow(&c, &ns, &sandbox, &process, after).await?;
            return Ok(exit_status(end.exit_code));
        }
        ProcessCmd::Kill { ns, sandbox, process, signal } => {
            c.signal_process(&ns, &sandbox, &process, &signal).await?;
            output::note(global.json, format_args!("sent {signal} to {process}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How a followed process ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ended {
    /// Its exit status, or 128 + the signal that ended it.
    pub exit_code: i32,
    pub timed_out: bool,
}

/// Follows a process's output from `after` on, writing each piece to our stdout or stderr as
/// it comes (a terminal's output to stdout), until its exit. A stream the server cuts short is
/// resumed after the last `seq` written; output the server no longer held is named on stderr.
pub(crate) async fn follow(c: &Client, ns: &str, sandbox: &str, pid: &str, after: u64) -> anyhow::Result<Ended> {
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr().lock());
    let mut last = after;
    // Consecutive resumes that brought nothing: the server is not merely cutting long streams.
    let mut idle = 0;
    loop {
        let mut stream = c.process_output(ns, sandbox, pid, last).await?;
        let before = last;
        loop {
            match stream.next().await? {
                Some(ProcessEvent::Output { seq, stream, data }) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(&data)
                        .context("the server sent output that is not base64")?;
                    match stream {
                        OutputStream::Stderr => write_out(&mut stderr, &bytes, "standard error")?,
                        OutputStream::Stdout | OutputStream::Pty => write_out(&mut stdout, &bytes, "standard output")?,
                    }
                    last = seq;
                }
                Some(ProcessEvent::Gap { from, to }) => {
                    writeln!(stderr, "warning: output {from} to {to} of {pid} was dropped before it was read").ok();
                    last = to;
                }
                Some(ProcessEvent::Exit { exit_code, timed_out, .. }) => return Ok(Ended { exit_code, timed_out }),
                None => break,
            }
        }
        idle = if last == before { idle + 1 } else { 0 };
        if idle >= 3 {
            bail!("the server ended the output stream of {pid} before its exit");
        }
    }
}
