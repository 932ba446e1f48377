//! The `meshgate` command line.

mod archive;
mod backup;
mod builds;
pub(crate) mod check;
mod deliveries;
mod demo;
mod events;
mod gateway;
mod logs;
mod migrate;
pub mod queue;
mod rebuild;
mod reconcile;
mod setup;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
// The gateway stops on the same signals as the agent (Ctrl-C or SIGTERM).
use meshgate_worker::shutdown_signal;

use crate::app::{generate_missing_default_tokens, App};
use crate::config::Config;
use crate::http::reload::{reload_tokens, Reloadable};

#[derive(Debug, Parser)]
#[command(name = "meshgate", version, long_version = long_version(), about = "Gateway from YouTrack webhooks to a pool of build machines")]
pub struct Cli {
    /// Configuration file (TOML). Without one, the embedded defaults are used.
    #[arg(long, global = true, env = "MESHGATE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// `meshgate worker [flags]` runs the agent; `meshgate worker doctor [flags]` checks the node.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerCommand {
    #[command(subcommand)]
    check: Option<WorkerCheck>,
    #[command(flatten)]
    args: meshgate_worker::WorkerArgs,
}

#[derive(Debug, Subcommand)]
pub enum WorkerCheck {
    /// Check what this node has: the gateway with its CA and token, the scripts and hooks, the
    /// Xcodes, the work dir, free disk.
    Doctor(meshgate_worker::WorkerArgs),
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve,
    /// Show the whole loop on this machine: a gateway on loopback with a sample trigger, a build
    /// node running a sample script, and each build's timeline printed here.
    Demo(demo::DemoArgs),
    /// Write a commented sample configuration and fresh token files into DIR.
    Init {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where the gateway keeps its log and build logs (default: meshgate-data beside the file).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Token files.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Audit queries over the event log.
    Events(events::EventsArgs),
    /// Check what a rotation can break (secret files, the webhook token end to end, YouTrack's
    /// token, every sink) without starting a build; exit 1 if anything fails.
    Selftest,
    /// Sweep YouTrack's activity stream now for transitions no webhook brought.
    Reconcile(reconcile::ReconcileArgs),
    /// Recorded deliveries.
    Deliveries {
        #[command(subcommand)]
        command: deliveries::DeliveriesCommand,
    },
    /// Event log maintenance.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The log's retention: archive finished builds' streams out of the live log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Projection maintenance.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// A build's log (`--follow`: as it grows while the build runs).
    Logs(logs::LogsArgs),
    /// Hold the queue (every lane, or some) and let it go.
    Queue {
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// The farm on one screen, from the running gateway: nodes, running builds, and each queued
    /// build with why it waits.
    Status,
    /// What an operator asks of a build: a rebuild.
    Builds {
        #[command(subcommand)]
        command: builds::BuildsCommand,
    },
    /// Run the build-node agent: claim builds, run scripts, report results (`meshgate-worker`,
    /// the agent alone, is what build machines install).
    Worker(Box<WorkerCommand>),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration (`--config F`) and every file it names, without starting; print
    /// the effective configuration, secrets as file paths only. Exit 1 on any problem.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Write a new 64-hex-character token to FILE (mode 0400).
    Generate {
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy this configuration's event log into the (empty) log another configuration names, e.g.
    /// from SQLite to PostgreSQL; positions, ids and times are kept, and both logs are compared
    /// afterwards. Stop the gateways first.
    Migrate {
        /// The configuration whose `[store]` names the target log.
        #[arg(long)]
        to_config: PathBuf,
    },
    /// Copy the log (SQLite: as it stands at one commit; PostgreSQL: `pg_dump` of meshgate's
    /// tables) with the log-link key and a manifest of checksums into a new folder; the gateways
    /// may keep serving.
    Backup {
        /// A new or empty folder.
        dir: PathBuf,
    },
    /// Restore a backup into this configuration's data dir or database (which holds no log yet).
    Restore {
        /// The folder `store backup` wrote.
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Recompute every projection from position 0 and save it.
    Rebuild {
        /// Compare with the saved checkpoints instead of replacing them; exit 1 on a difference.
        #[arg(long)]
        verify: bool,
        /// Read the archives in this folder (`meshgate log archive --to`) beside the live log.
        #[arg(long, value_name = "DIR")]
        include_archives: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Move the streams of builds finished before a cut (and their decided notifications and
    /// pages) out of the live log into a compressed, checksummed archive; the gateway may keep
    /// serving.
    Archive(archive::ArchiveArgs),
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let load = || Config::load(cli.config.as_deref());
    match cli.command {
        Command::Serve => serve(load()?).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Init { dir, data_dir } => setup::init(&dir, data_dir.as_deref()),
        Command::Config { command: ConfigCommand::Check } => check::run(cli.config.as_deref()),
        Command::Token { command: TokenCommand::Generate { file, force } } => setup::generate(&file, force),
        Command::Events(args) => events::run(&load()?, &args).await,
        Command::Reconcile(args) => reconcile::run(&load()?, &args).await,
        Command::Selftest => {
            let checks = crate::selftest::run(&load()?).await;
            print!("{}", crate::selftest::table(&checks));
            if crate::selftest::passed(&checks) {
                Ok(())
            } else {
                anyhow::bail!(
                    "{} check(s) failed",
                    checks.iter().filter(|c| c.result == crate::selftest::CheckResult::Failed).count()
                )
            }
        }
        Command::Deliveries { command } => deliveries::run(&load()?, &command).await,
        Command::Store { command: StoreCommand::Migrate { to_config } } => migrate::run(&load()?, &to_config).await,
        Command::Store { command: StoreCommand::Backup { dir } } => backup::run_backup(&load()?, &dir).await,
        Command::Store { command: StoreCommand::Restore { dir } } => backup::run_restore(&load()?, &dir).await,
        Command::Projections { command: ProjectionsCommand::Rebuild { verify, include_archives } } => {
            rebuild::run(&load()?, verify, include_archives.as_deref()).await
        }
        Command::Log { command: LogCommand::Archive(args) } => archive::run(&load()?, &args).await,
        Command::Logs(args) => logs::run(&load()?, &args).await,
        Command::Builds { command } => builds::run(&load()?, &command).await,
        Command::Status => status::run(&load()?).await,
        Command::Queue { command } => queue::run(&load()?, &command).await,
        Command::Worker(worker) => match *worker {
            WorkerCommand { check: Some(WorkerCheck::Doctor(args)), .. } => {
                let settings = meshgate_worker::Settings::merge(args, &load()?.worker)?;
                meshgate_worker::doctor::report(&settings).await
            }
            WorkerCommand { args, .. } => {
                let settings = meshgate_worker::Settings::merge(args, &load()?.worker)?;
                meshgate_worker::run(settings, shutdown_signal()).await
            }
        },
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    serve_then(config, |_| Ok(())).await
}

/// Serves until Ctrl-C or SIGTERM; `started` runs once the gateway takes requests, with the
/// configuration as served (the port really bound).
pub(crate) async fn serve_then(
    mut config: Config,
    started: impl FnOnce(&Config) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // Bound first: deliveries arriving while the log opens wait in the backlog instead of being
    // refused, and links name the port really bound (`listen` may say port 0).
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
    config.server.listen = listener.local_addr()?;
    // What an operator needs at start, on standard output: lines, or JSON objects under
    // `[log] format = "json"` (every line a pipeline reads parses).
    let json = config.log.format == crate::config::LogFormat::Json;
    let say = |message: &str, key: &str, value: String| {
        if json {
            println!("{}", serde_json::json!({"level": "INFO", "message": message, key: value}));
        } else {
            println!("{message}: {value}");
        }
    };
    for path in generate_missing_default_tokens(&config)? {
        say("generated token file", "path", path.display().to_string());
    }
    for path in config.webhook_token_files() {
        say("webhook token file", "path", path.display().to_string());
    }
    say("admin token file", "path", config.admin_token_file().display().to_string());
    say("build pool token file", "path", config.nodes_token_file().display().to_string());
    let app = App::start(&config).await?;
    // Caught from here on (its default would end the process).
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot listen for SIGHUP: {e}"))?;
    let reloader = tokio::spawn(reload_on_hangup(hangups, Arc::clone(&app.handles.surfaces.reload)));
    // SIGTERM and SIGINT caught from here on, before the gateway says it listens: a service
    // manager that stops it right after it started gets the drain, not the default exit.
    let shutdown = shutdown_signal();
    let scheme = if config.tls_files().is_some() { "https" } else { "http" };
    // Before the line that says the gateway listens, which is the last of its start.
    if let Some(addr) = app.node_addr() {
        let url = format!("{scheme}://{addr}");
        if json {
            println!("{}", serde_json::json!({"level": "INFO", "message": "meshgate node API listening", "url": url}));
        } else {
            println!("meshgate node API listening on {url}");
        }
    }
    let url = format!("{scheme}://{}{}", listener.local_addr()?, config.webhook.path);
    if json {
        println!("{}", serde_json::json!({"level": "INFO", "message": "meshgate listening", "url": url}));
    } else {
        println!("meshgate listening on {url}");
    }
    tracing::info!(listen = %listener.local_addr()?, triggers = config.triggers.len(), "gateway started");
    if let Some(largest) = config.largest_recordable_body() {
        tracing::warn!(largest, "{}", config.too_large_bodies(largest));
    }
    started(&config)?;
    app.serve(listener, shutdown).await?;
    reloader.abort();
    tracing::info!("gateway stopped");
    Ok(())
}

/// Reloads the received tokens on every SIGHUP (`http::admin`); a refused reload is logged there.
async fn reload_on_hangup(mut hangups: tokio::signal::unix::Signal, state: Arc<Reloadable>) {
    while hangups.recv().await.is_some() {
        let state = Arc::clone(&state);
        let _ = tokio::task::spawn_blocking(move || reload_tokens(&state)).await;
    }
}

/// `meshgate --version`: the release, and the versions of what it writes and reads, which an
/// upgrade may move (docs/upgrading.md).
fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let projections: Vec<String> = meshgate_projections::ProjectionSet::VERSIONS
            .iter()
            .map(|(name, version)| format!("{name} {version}"))
            .collect();
        let backends =
            if cfg!(feature = "eventstoredb") { "sqlite, postgres, eventstoredb" } else { "sqlite, postgres" };
        format!(
            "{}\nbackends: {backends}\nevent schema {}\nSQLite log layout {}\nPostgreSQL schema {}\nread model: layout {}, {}",
            env!("CARGO_PKG_VERSION"),
            meshgate_domain::Event::SCHEMA_VERSION,
            crate::store::sqlite::SCHEMA_VERSION,
            crate::store::postgres::schema::version(),
            crate::readmodel::LAYOUT,
            projections.join(", ")
        )
    })
}
