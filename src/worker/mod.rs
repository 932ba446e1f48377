//! `meshgate worker`: the build-node agent. It claims builds it may run (long poll), runs the
//! named script with the build's facts in its environment, heartbeats while it runs, uploads the
//! log and reports the result. Results are spooled to disk until the gateway has answered.
//!
//! Prints one line per step on stdout (`claimed`, `started`, `finished`, `reported`), for
//! operators and for the process tests.

mod client;
pub mod output;
mod run;
mod scripts;
mod spool;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use meshgate_domain::trigger::is_simple_name;
use tokio::sync::{watch, Semaphore};

pub use client::{backoff, Gateway};
pub use scripts::{Script, Scripts};

use crate::config::WorkerConfig;
use crate::secrets::Token;
use spool::{Spool, Spooled};

/// Flags override the `[worker]` section of `--config`.
#[derive(Debug, Default, Args)]
pub struct WorkerArgs {
    /// The gateway's base URL, such as http://gateway:8080.
    #[arg(long, env = "MESHGATE_GATEWAY")]
    gateway: Option<String>,
    /// This node's mesh_node_id: 1-64 of [A-Za-z0-9._-].
    #[arg(long, env = "MESHGATE_NODE_ID")]
    node_id: Option<String>,
    /// Labels this node offers, comma separated (such as xcode-16,signing).
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// Builds this node runs at once (default 1).
    #[arg(long)]
    slots: Option<usize>,
    /// File holding the pool token (`[nodes] token_file` on the gateway).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// TOML file naming the scripts this node runs.
    #[arg(long)]
    scripts: Option<PathBuf>,
    /// Where builds run, logs are kept and results are spooled.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Seconds a claim waits for work (default 30).
    #[arg(long)]
    claim_wait: Option<u64>,
    /// On SIGTERM: seconds running builds may finish before they are stopped and reported
    /// cancelled (default 300).
    #[arg(long)]
    drain_seconds: Option<u64>,
    /// A PEM bundle to trust beside the platform's store, for a gateway whose certificate comes
    /// from a private CA.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

/// Settings after flags and the config file are merged.
struct Settings {
    gateway: String,
    node_id: String,
    labels: Vec<String>,
    slots: usize,
    token_file: PathBuf,
    scripts: PathBuf,
    work_dir: PathBuf,
    claim_wait: u64,
    drain_seconds: u64,
    ca_file: Option<PathBuf>,
}

impl Settings {
    fn merge(args: WorkerArgs, file: &WorkerConfig) -> anyhow::Result<Settings> {
        let missing =
            |flag: &str| anyhow::anyhow!("--{flag} (or `{}` in [worker]) is required", flag.replace('-', "_"));
        Ok(Settings {
            gateway: args.gateway.or_else(|| file.gateway.clone()).ok_or_else(|| missing("gateway"))?,
            node_id: args.node_id.or_else(|| file.node_id.clone()).ok_or_else(|| missing("node-id"))?,
            labels: args.labels.unwrap_or_else(|| file.labels.clone()).into_iter().filter(|l| !l.is_empty()).collect(),
            slots: args.slots.or(file.slots).unwrap_or(1),
            token_file: args.token_file.or_else(|| file.token_file.clone()).ok_or_else(|| missing("token-file"))?,
            scripts: args.scripts.or_else(|| file.scripts.clone()).ok_or_else(|| missing("scripts"))?,
            work_dir: args.work_dir.or_else(|| file.work_dir.clone()).ok_or_else(|| missing("work-dir"))?,
            claim_wait: args.claim_wait.or(file.claim_wait_seconds).unwrap_or(30),
            drain_seconds: args.drain_seconds.or(file.drain_seconds).unwrap_or(300),
            ca_file: args.ca_file.or_else(|| file.ca_file.clone()),
        })
    }
}

/// What every build task of this agent shares.
pub struct Worker {
    pub node_id: String,
    pub gateway: Gateway,
    pub scripts: Scripts,
    pub work_dir: PathBuf,
    /// Set on SIGTERM: the moment running builds are stopped.
    pub draining: watch::Receiver<Option<tokio::time::Instant>>,
}

pub async fn run(args: WorkerArgs, file: &WorkerConfig) -> anyhow::Result<()> {
    let args = Settings::merge(args, file)?;
    if !is_simple_name(&args.node_id) {
        anyhow::bail!("--node-id must be 1-64 of [A-Za-z0-9._-]");
    }
    let labels = args.labels.clone();
    if let Some(bad) = labels.iter().find(|l| !is_simple_name(l)) {
        anyhow::bail!("label `{bad}` must be 1-64 of [A-Za-z0-9._-]");
    }
    if !(1..=256).contains(&args.slots) {
        anyhow::bail!("--slots must be between 1 and 256");
    }
    let token = Token::read(&args.token_file)?;
    let scripts = Scripts::load(&args.scripts)?;
    std::fs::create_dir_all(&args.work_dir).with_context(|| format!("cannot create {}", args.work_dir.display()))?;
    let spool = Arc::new(Spool::open(&args.work_dir.join("spool"))?);
    let (drain_tx, draining) = watch::channel(None);
    let worker = Arc::new(Worker {
        node_id: args.node_id.clone(),
        gateway: Gateway::new(&args.gateway, token.expose().to_owned(), args.ca_file.as_deref())?,
        scripts,
        work_dir: args.work_dir.clone(),
        draining,
    });
    println!("worker {} ready: {} slots, labels [{}]", worker.node_id, args.slots, labels.join(","));
    tracing::info!(node_id = %worker.node_id, slots = args.slots, "worker started");

    // Results spooled by an earlier run, then a retry now and then for any the gateway missed.
    let flusher = {
        let (worker, spool) = (Arc::clone(&worker), Arc::clone(&spool));
        tokio::spawn(async move {
            loop {
                spool::flush(&worker.gateway, &spool).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };

    let drain_after = Duration::from_secs(args.drain_seconds);
    tokio::spawn(async move {
        crate::cli::shutdown_signal().await;
        println!("draining");
        let _ = drain_tx.send(Some(tokio::time::Instant::now() + drain_after));
        // Keep the sender alive so the draining moment stays visible.
        std::future::pending::<()>().await;
    });

    let slots = Arc::new(Semaphore::new(args.slots));
    let mut draining = worker.draining.clone();
    let mut failures = 0;
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => permit?,
            _ = draining.wait_for(Option::is_some) => break,
        };
        let wait = Duration::from_secs(args.claim_wait);
        let claimed = tokio::select! {
            claimed = worker.gateway.claim(&worker.node_id, &labels, args.slots, wait) => claimed,
            _ = draining.wait_for(Option::is_some) => break,
        };
        match claimed {
            Ok(Some(claim)) => {
                failures = 0;
                println!("claimed {} attempt {}", claim.build.build_id, claim.attempt);
                let (worker, spool) = (Arc::clone(&worker), Arc::clone(&spool));
                tokio::spawn(async move {
                    let result = run::run_build(&worker, &claim).await;
                    let spooled = Spooled { build_id: claim.build.build_id, result };
                    match spool.put(&spooled) {
                        Ok(path) => {
                            spool::deliver(&worker.gateway, &spool, &path, &spooled, 5).await;
                        }
                        Err(e) => tracing::error!(error = %e, "cannot spool a result"),
                    }
                    drop(permit);
                });
            }
            Ok(None) => drop(permit),
            Err(e) => {
                drop(permit);
                failures += 1;
                tracing::warn!(error = %e, "claim failed; retrying");
                // A node told to stop while the gateway is unreachable stops now, not after the wait.
                tokio::select! {
                    _ = tokio::time::sleep(backoff(failures, Duration::from_millis(500), Duration::from_secs(30))) => {}
                    _ = draining.wait_for(Option::is_some) => break,
                }
            }
        }
    }
    // Wait for running builds (they stop by themselves at the drain deadline), then send what is left.
    let _all = slots.acquire_many(args.slots as u32).await?;
    flusher.abort();
    spool::flush(&worker.gateway, &spool).await;
    println!("worker {} stopped", worker.node_id);
    Ok(())
}
