//! `bulkhead-bench`: the bench of `bulkhead bench` as a binary of its own. It starts the
//! `bulkhead` binary beside it (or the one given) as its server. Errors print one line and exit
//! non-zero.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bulkhead-bench",
    version,
    about = "Measure sandbox create, exec and delete against raw baselines (as root, release build)"
)]
struct Cli {
    #[command(flatten)]
    args: bulkhead_bench::BenchArgs,
    /// The `bulkhead` binary whose server is measured (default: `bulkhead` beside this one;
    /// `bulkhead-supervisor` must be beside it).
    #[arg(long, value_name = "PATH")]
    bulkhead: Option<PathBuf>,
}

// The policy figures are measured on the main thread (8 MiB of stack, more than the policy
// engine's bounds need), not on the runtime's workers.
#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let bulkhead = match cli.bulkhead {
        Some(path) => Ok(path),
        None => std::env::current_exe().map(|exe| exe.with_file_name("bulkhead")),
    };
    let result = match bulkhead {
        Ok(bulkhead) => bulkhead_bench::run(&cli.args, &bulkhead).await,
        Err(e) => Err(anyhow::Error::new(e).context("find the bulkhead binary")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
