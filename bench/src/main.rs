//! `meshgate-bench`: the measurements of docs/benchmarks.md, kept out of the product's binary. It
//! runs gateways in its own process (ingest, dispatch, the store alone) or starts the `meshgate`
//! binary beside it as a service manager would (a history of millions of events, the live log,
//! `projections rebuild`), and drives them with load generators of its own.
//!
//! ```sh
//! cargo build --release -p meshgate -p meshgate-bench
//! ./target/release/meshgate-bench --seconds 10
//! ```

mod bounds;
mod burst;
mod chat_actions;
mod client;
mod dispatch;
mod history;
mod ingest;
mod instructions;
mod live_log;
mod process;
mod rebuild;
mod retention;
mod server;
mod shared;
mod stats;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The gateway binary's allocator (ADR 0015): the gateways measured in this process run with it.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "meshgate-bench", about = "Measure a meshgate gateway (docs/benchmarks.md)")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: ingest::BenchArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What the live log costs: a gateway and an agent run a build that prints a lot, while a
    /// reader follows its log.
    LiveLog(live_log::LiveLogArgs),
    /// How fast Slack's button clicks are answered, each once its decision is in the log.
    ChatActions(chat_actions::ChatActionsArgs),
    /// What the `stats` projection costs to fold on a long history, and its answers' time.
    Stats(stats::StatsArgs),
    /// How big the log gets per thousand builds, and its archive.
    Retention(retention::RetentionArgs),
    /// Instructions per accepted delivery, counted by callgrind (valgrind).
    Instructions(instructions::InstructionsArgs),
    /// The gateway beside a no-op server and a plain group-commit server, under the same load.
    Bounds(bounds::BoundsArgs),
    /// The gateway's memory right after a burst of deliveries.
    Burst(burst::BurstArgs),
}

/// The `meshgate` binary the benchmarks start: `MESHGATE_BIN`, else the one beside this binary
/// (the same profile of the same target directory).
pub fn gateway_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("MESHGATE_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()?.with_file_name("meshgate"),
    };
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build the gateway in the same profile first (cargo build --release -p meshgate)",
        path.display()
    );
    Ok(path)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    // The gateways measured here run as `meshgate serve` does, on its runtime.
    let runtime = match meshgate::app::runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let ran = runtime.block_on(async {
        match cli.command {
            Some(Command::LiveLog(args)) => live_log::run(args).await,
            Some(Command::ChatActions(args)) => chat_actions::run(args).await,
            Some(Command::Stats(args)) => stats::run(args).await,
            Some(Command::Retention(args)) => retention::run(args).await,
            Some(Command::Instructions(args)) => instructions::run(args).await,
            Some(Command::Bounds(args)) => bounds::run(args).await,
            Some(Command::Burst(args)) => burst::run(args).await,
            None => ingest::run(cli.args).await,
        }
    });
    match ran {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
