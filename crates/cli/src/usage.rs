//! `bulkhead usage`: a namespace's metered usage as a table, with a small chart of cpu over time.

use std::process::ExitCode;

use clap::Args;

use crate::commands::client;
use crate::output::{self, table};
use crate::units::format_bytes;
use crate::Global;

#[derive(Args)]
pub struct UsageArgs {
    /// The namespace.
    #[arg(long, env = "BULKHEAD_NAMESPACE")]
    ns: String,
    /// How far back, such as `1h`, `24h` or `7d` (default 24h).
    #[arg(long, default_value = "24h")]
    since: String,
    /// Bucket size: minute, hour or day.
    #[arg(long, default_value = "hour")]
    granularity: String,
}

pub async fn usage(args: UsageArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    let span = humantime::parse_duration(&args.since)
        .map_err(|e| anyhow::anyhow!("--since {:?} is not a duration such as 24h: {e}", args.since))?;
    let from = std::time::SystemTime::now()
        .checked_sub(span)
        .ok_or_else(|| anyhow::anyhow!("--since {:?} is too far back", args.since))?;
    let from = humantime::format_rfc3339_seconds(from).to_string();
    let r = c.usage(&args.ns, Some(&from), None, Some(&args.granularity)).await?;
    if global.json {
        output::json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    let t = &r.totals;
    output::fields(&[
        ("namespace", r.namespace.clone()),
        ("period", format!("{} → {}", r.from, r.to)),
        ("cpu", format!("{:.1} s", t.cpu_seconds)),
        ("memory", format!("{:.1} GiB·h", t.memory_byte_seconds / (1u64 << 30) as f64 / 3600.0)),
        ("sandbox time", format!("{:.1} h", t.sandbox_seconds / 3600.0)),
        ("memory peak", format_bytes(t.memory_peak_bytes)),
        ("execs", t.exec_count.to_string()),
        ("quota rejections", t.quota_rejections.to_string()),
        ("block io", format!("{} read, {} written", format_bytes(t.io_read_bytes), format_bytes(t.io_write_bytes))),
        ("disk", format!("{} allocated, {} used", format_bytes(r.disk_bytes), format_bytes(r.disk_used_bytes))),
        (
            "egress",
            format!(
                "{} out, {} in, {} connections, {} denied",
                format_bytes(t.egress_bytes_out),
                format_bytes(t.egress_bytes_in),
                t.egress_connections,
                t.egress_denied
            ),
        ),
    ]);
    if r.buckets.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    // A bar per bucket, scaled to the busiest one.
    let max = r.buckets.iter().map(|b| b.usage.cpu_seconds).fold(0.0f64, f64::max).max(1e-9);
    let rows: Vec<Vec<String>> = r
        .buckets
        .iter()
        .map(|b| {
            let width = ((b.usage.cpu_seconds / max) * 30.0).round() as usize;
            vec![
                b.start.clone(),
                format!("{:.2}", b.usage.cpu_seconds),
                b.usage.exec_count.to_string(),
                "█".repeat(width),
            ]
        })
        .collect();
    table(&["BUCKET", "CPU S", "EXECS", "CPU"], &rows);
    Ok(ExitCode::SUCCESS)
}
