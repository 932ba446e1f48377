//! `meshgate-worker`: the agent that runs on build machines (Macs, mostly). It claims builds it
//! may run from a meshgate gateway (long poll), runs the named script with the build's facts in
//! its environment and the Xcode the build requires, heartbeats while it runs, sends its log live,
//! uploads its artifacts and whole log, and reports the result. Results are spooled to disk until
//! the gateway has answered.
//!
//! Prints one line per step on stdout (`claimed`, `started`, `finished`, `reported`), for
//! operators and for the process tests.
//!
//! - [`settings`]: flags over a `[worker]` table, checked; every path absolute.
//! - [`scripts`]: the scripts file (scripts, hooks, Xcodes by hand).
//! - [`xcodes`]: finding the node's Xcodes.
//! - [`gateway`]: the node API, over HTTPS.
//! - [`build`]: one build, from the hooks to the result; [`group`] its process groups,
//!   [`output`] its log, [`live_log`] the log sent while it runs, [`artifacts`] what it produced,
//!   [`findings`] what its log and folders say.
//! - [`spool`]: results kept on disk until the gateway answers.
//! - [`doctor`]: what a node has, checked.

pub mod artifacts;
pub mod build;
pub mod doctor;
pub mod findings;
pub mod gateway;
pub mod group;
pub mod live_log;
pub mod output;
pub mod scripts;
pub mod settings;
pub mod spool;
pub mod xcodes;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshgate_domain::node_api::ClaimRequest;
use meshgate_domain::xcode::Xcode;
use secrecy::SecretString;
use tokio::sync::{watch, Semaphore};

pub use settings::{FileSettings, Settings, WorkerArgs};

use build::Node;
use gateway::{backoff, Gateway};
use scripts::Scripts;
use spool::{Spool, Spooled};

/// Shortest pool token accepted (the gateway's rule).
const MIN_TOKEN_LEN: usize = 32;

/// Reads the pool token, refusing a file others may write or anyone may read.
pub fn read_token(path: &Path) -> anyhow::Result<SecretString> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o022 != 0 || mode & 0o004 != 0 {
        anyhow::bail!(
            "token file {} is group- or world-writable or world-readable; run `chmod 0400 {}`",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read token file {}", path.display()))?;
    let token = text.trim();
    if token.chars().count() < MIN_TOKEN_LEN {
        anyhow::bail!(
            "token file {} holds {} characters; the pool token has at least {MIN_TOKEN_LEN}",
            path.display(),
            token.chars().count()
        );
    }
    Ok(SecretString::from(token.to_owned()))
}

/// The node's Xcodes: found in the search folder, then listed by hand in the scripts file and the
/// settings (which win for the same version).
pub fn node_xcodes(settings: &Settings, scripts: Option<&Scripts>) -> Vec<Xcode> {
    let found = settings.xcode_search_dir.as_deref().map(xcodes::discover).unwrap_or_default();
    let mut listed = scripts.map(Scripts::xcodes).unwrap_or_default();
    listed.extend(settings.xcodes.iter().cloned());
    xcodes::merge(found, listed)
}

/// Runs the agent until `shutdown` resolves (SIGTERM, say), then drains: no new claims; running
/// builds get `drain_seconds` to finish before they are stopped and reported cancelled.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let token = read_token(&settings.token_file)?;
    let scripts = Scripts::load(&settings.scripts)?;
    let xcodes = node_xcodes(&settings, Some(&scripts));
    std::fs::create_dir_all(&settings.work_dir)
        .with_context(|| format!("cannot create {}", settings.work_dir.display()))?;
    let spool = Arc::new(Spool::open(&settings.work_dir.join("spool"))?);
    let (drain_tx, draining) = watch::channel(None);
    let node = Arc::new(Node {
        node_id: settings.node_id.clone(),
        gateway: Gateway::new(
            &settings.gateway,
            token,
            settings.ca_file.as_deref(),
            settings.client_identity.as_ref(),
        )?,
        scripts,
        xcodes,
        work_dir: settings.work_dir.clone(),
        draining,
    });
    let versions: Vec<&str> = node.xcodes.iter().map(|x| x.version.as_str()).collect();
    println!(
        "worker {} ready: {} slots, labels [{}], xcodes [{}]",
        node.node_id,
        settings.slots,
        settings.labels.join(","),
        versions.join(",")
    );
    tracing::info!(node_id = %node.node_id, slots = settings.slots, xcodes = ?versions, "worker started");

    // Results spooled by an earlier run, then a retry now and then for any the gateway missed.
    let flusher = {
        let (node, spool) = (Arc::clone(&node), Arc::clone(&spool));
        tokio::spawn(async move {
            loop {
                spool::flush(&node.gateway, &spool).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };

    let drain_after = Duration::from_secs(settings.drain_seconds);
    tokio::spawn(async move {
        shutdown.await;
        println!("draining");
        let _ = drain_tx.send(Some(tokio::time::Instant::now() + drain_after));
        // Keep the sender alive so the draining moment stays visible.
        std::future::pending::<()>().await;
    });

    let ask = ClaimRequest {
        node_id: settings.node_id.clone(),
        labels: settings.labels.clone(),
        slots: settings.slots,
        wait_seconds: Some(settings.claim_wait),
        xcodes: node.xcodes.clone(),
    };
    let slots = Arc::new(Semaphore::new(settings.slots));
    let mut draining = node.draining.clone();
    let mut failures = 0;
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => permit?,
            _ = draining.wait_for(Option::is_some) => break,
        };
        let claimed = tokio::select! {
            claimed = node.gateway.claim(&ask) => claimed,
            _ = draining.wait_for(Option::is_some) => break,
        };
        match claimed {
            Ok(Some(claim)) => {
                failures = 0;
                println!("claimed {} attempt {}", claim.build.build_id, claim.attempt);
                let (node, spool) = (Arc::clone(&node), Arc::clone(&spool));
                tokio::spawn(async move {
                    let result = build::run_build(&node, &claim).await;
                    let spooled = Spooled { build_id: claim.build.build_id, result };
                    match spool.put(&spooled) {
                        Ok(path) => {
                            spool::deliver(&node.gateway, &spool, &path, &spooled, 5).await;
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
    let _all = slots.acquire_many(settings.slots as u32).await?;
    flusher.abort();
    spool::flush(&node.gateway, &spool).await;
    println!("worker {} stopped", node.node_id);
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The signals are caught from the call on, not from the
/// first poll: call it before saying the process is ready, so a stop that follows at once drains
/// instead of ending the process by the signal's default. Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let (terminate, interrupt) = (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok());
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(terminate) => {}
            _ = wait(interrupt) => {}
        }
    }
}
