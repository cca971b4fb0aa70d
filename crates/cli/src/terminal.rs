//! Interactive commands: `bulkhead exec -it SANDBOX -- CMD` and `bulkhead shell SANDBOX` start
//! the command as a background process on a terminal of this terminal's size, and attach to it
//! over a WebSocket: this terminal in raw mode (every key, Ctrl-C too, goes to the sandbox), its
//! size followed on `SIGWINCH`, restored when the command ends (or this one fails). The exit
//! code is the command's.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_api::{CreateProcess, TtySize};
use bulkhead_client::AttachEvent;
use clap::Args;

use crate::commands::client;
use crate::sandbox::{env_map, exit_status, parse_env, ExecArgs};
use crate::Global;

/// The size assumed when standard output is not a terminal.
const DEFAULT_SIZE: TtySize = TtySize { rows: 24, cols: 80 };

/// The program `bulkhead shell` runs: bash when the sandbox has it, else sh.
const SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi";

#[derive(Args)]
pub struct ShellArgs {
    /// The namespace.
    #[arg(long, env = "BULKHEAD_NAMESPACE")]
    ns: String,
    /// The sandbox's id.
    sandbox: String,
    /// Run the shell as this user of the image: a name, `uid`, `uid:gid` or `name:group`.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Absolute working directory inside the sandbox (default `/`).
    #[arg(long)]
    cwd: Option<String>,
    /// An environment variable of the shell, `KEY=VALUE`; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
}

/// `bulkhead shell SANDBOX`: an interactive shell in the sandbox.
pub async fn shell(args: ShellArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let exec = ExecArgs {
        ns: args.ns,
        sandbox: args.sandbox,
        env: args.env,
        cwd: args.cwd,
        user: args.user,
        timeout: None,
        stdin: true,
        stdin_file: None,
        tty: true,
        cmd: vec!["/bin/sh".into(), "-c".into(), SHELL.into()],
    };
    exec_tty(exec, global).await
}

/// The largest terminal the server accepts, in rows or columns.
const MAX_SIZE: u16 = 1000;

/// This terminal's size (at most [`MAX_SIZE`] each way), or [`DEFAULT_SIZE`] when it has none.
fn size() -> TtySize {
    match crossterm::terminal::size() {
        Ok((cols, rows)) if cols > 0 && rows > 0 => TtySize { rows: rows.min(MAX_SIZE), cols: cols.min(MAX_SIZE) },
        _ => DEFAULT_SIZE,
    }
}

/// Raw mode while it lives: restored on drop, whatever ends the session.
struct RawMode;

impl RawMode {
    fn enable() -> anyhow::Result<RawMode> {
        crossterm::terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Reads standard input on a thread of its own (a blocking read that never holds up the exit)
/// and hands the chunks over; an empty chunk is the end of input.
fn stdin_chunks() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if tx.blocking_send(buf[..n].to_vec()).is_err() || n == 0 {
                return;
            }
        }
    });
    rx
}

/// `bulkhead exec -t`: runs the command on a terminal and attaches this one to it.
pub async fn exec_tty(args: ExecArgs, global: &Global) -> anyhow::Result<ExitCode> {
    if args.stdin_file.is_some() {
        bail!("--stdin-file does not go with -t; pipe it without -t instead");
    }
    let c = client(global)?;
    let mut env = args.env;
    if !env.iter().any(|(k, _)| k == "TERM") {
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
        env.push(("TERM".into(), term));
    }
    let req = CreateProcess {
        cmd: args.cmd,
        env: env_map(env),
        cwd: args.cwd,
        user: args.user,
        tty: Some(size()),
        timeout_seconds: args.timeout,
    };
    let process = c.start_process(&args.ns, &args.sandbox, &req).await?;
    let attachment = c.attach_process(&args.ns, &args.sandbox, &process.id).await?;
    let (mut writer, mut reader) = attachment.split();
    let interactive = args.stdin && std::io::stdin().is_terminal();
    let _raw = if interactive { Some(RawMode::enable()?) } else { None };
    let mut input = if args.stdin { Some(stdin_chunks()) } else { None };
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .context("cannot watch the terminal's size")?;
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            event = reader.next() => match event? {
                Some(AttachEvent::Output(data)) => {
                    stdout.write_all(&data).and_then(|()| stdout.flush()).context("cannot write standard output")?;
                }
                Some(AttachEvent::Exit { exit_code, .. }) => return Ok(exit_status(exit_code)),
                Some(AttachEvent::Error(message)) => bail!("{message}"),
                None => bail!("the server closed the terminal before the command's exit"),
            },
            chunk = async { input.as_mut()?.recv().await }, if input.is_some() => match chunk {
                Some(data) if !data.is_empty() => writer.stdin(data).await?,
                _ => {
                    // End of our input: the command's stdin ends too.
                    input = None;
                    writer.eof().await?;
                }
            },
            _ = winch.recv() => {
                let TtySize { rows, cols } = size();
                writer.resize(rows, cols).await?;
            }
        }
    }
}
