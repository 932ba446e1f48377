//! The `meshgate-worker` command: the build-node agent, installed alone on build machines.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use meshgate_worker::{doctor, FileSettings, Settings, WorkerArgs};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "meshgate-worker",
    version,
    about = "The build-node agent of meshgate: claims builds from a gateway and runs them here",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: NodeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run(NodeArgs),
    /// Check what this node has: the gateway with its CA and token, the scripts and hooks, the
    /// Xcodes, the work dir, free disk.
    Doctor(NodeArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct NodeArgs {
    /// A TOML file with a `[worker]` table holding these settings (flags override it; its paths
    /// resolve against its folder).
    #[arg(long, env = "MESHGATE_WORKER_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    args: WorkerArgs,
}

impl NodeArgs {
    fn settings(self) -> anyhow::Result<Settings> {
        let file = self.config.as_deref().map(FileSettings::load).transpose()?.unwrap_or_default();
        Settings::merge(self.args, &file)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Doctor(args)) => check(args).await,
        Some(Command::Run(args)) => run(args).await,
        None => run(cli.args).await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate-worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: NodeArgs) -> anyhow::Result<()> {
    meshgate_worker::run(args.settings()?, meshgate_worker::shutdown_signal()).await
}

async fn check(args: NodeArgs) -> anyhow::Result<()> {
    doctor::report(&args.settings()?).await
}
