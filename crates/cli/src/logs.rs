//! `bulkhead logs`: a namespace's retained exec output, and with `-f` its live tail.

use std::io::Write;
use std::process::ExitCode;

use bulkhead_api::{LogRecord, LogStream};
use bulkhead_client::{LogQuery, LogTailEvent};
use clap::Args;

use crate::commands::client;
use crate::Global;

#[derive(Args)]
pub struct LogsArgs {
    /// The namespace.
    #[arg(long, env = "BULKHEAD_NAMESPACE")]
    ns: String,
    /// Only this sandbox's output.
    #[arg(long)]
    sandbox: Option<String>,
    /// From how far back: a duration such as `10m` or `24h`, or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Until an RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// Keep following new output.
    #[arg(short, long)]
    follow: bool,
}

fn since(s: &str) -> anyhow::Result<String> {
    if humantime::parse_rfc3339(s).is_ok() {
        return Ok(s.to_owned());
    }
    let span = humantime::parse_duration(s)
        .map_err(|e| anyhow::anyhow!("--since {s:?} is neither a duration such as 10m nor an RFC 3339 time: {e}"))?;
    let t = std::time::SystemTime::now()
        .checked_sub(span)
        .ok_or_else(|| anyhow::anyhow!("--since {s:?} is too far back"))?;
    Ok(humantime::format_rfc3339_millis(t).to_string())
}

/// Prints a record: its data as it was written, to stdout or stderr like the exec's own, with
/// the sandbox in front of each line when several sandboxes' output is mixed.
fn print(r: &LogRecord, prefix: bool, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let text = if prefix {
        let mut out = String::new();
        for line in r.data.split_inclusive('\n') {
            out.push_str(&format!("[{}] {line}", r.sandbox));
        }
        out
    } else {
        r.data.clone()
    };
    match r.stream {
        LogStream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        LogStream::Stderr => {
            let mut err = std::io::stderr().lock();
            err.write_all(text.as_bytes())?;
            err.flush()?;
        }
    }
    Ok(())
}

pub async fn logs(args: LogsArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    let mut q = LogQuery {
        sandbox: args.sandbox.clone(),
        since: args.since.as_deref().map(since).transpose()?,
        until: args.until.clone(),
        after: None,
        limit: Some(1000),
        encoding: None,
    };
    let prefix = args.sandbox.is_none();
    loop {
        let page = c.logs(&args.ns, &q).await?;
        for r in &page.records {
            print(r, prefix, global.json)?;
            q.after = Some(r.seq);
        }
        if page.next_after.is_none() {
            break;
        }
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Continue after the last record shown, so nothing is missed or shown twice.
    if q.after.is_none() {
        q.since = None;
    }
    let mut tail = c.tail_logs(&args.ns, &q).await?;
    while let Some(event) = tail.next().await? {
        match event {
            LogTailEvent::Record(r) => print(&r, prefix, global.json)?,
            LogTailEvent::Lagged(note) => eprintln!("warning: {note}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
