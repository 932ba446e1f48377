//! The read model rebuilt from a log of a million events or more: `meshgate projections rebuild`
//! as an operator runs it (a fresh process), the same fold in this process, opening the log (its
//! stream index rebuilt), and the live projections catching up through the store.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use meshgate::projector::{self, Follower};
use meshgate::store::sqlite::{SqliteStore, WriterOptions};
use meshgate::store::{EventStore, StreamAppend};
use meshgate_domain::ingest::{IngestPolicy, SAME_TRANSITION};

use crate::server::{plan_for, tempfile_dir, trigger};

/// Writes a log of about `events` events as ingest makes them (four per delivery: received,
/// routed, intent activated, build requested), then times a rebuild of every projection.
pub(crate) async fn rebuild(events: u64) -> anyhow::Result<()> {
    let dir = tempfile_dir("meshgate-bench-rebuild")?;
    let path = dir.join("events.sqlite");
    let store = SqliteStore::open(&path, WriterOptions::default())?;
    let triggers = [trigger()];
    let policy = IngestPolicy { triggers: &triggers, bot_login: None, same_transition: SAME_TRANSITION };
    let deliveries = events.div_ceil(4);
    let progress = ProgressBar::new(deliveries);
    progress.set_message("writing the log");
    for chunk_start in (0..deliveries).step_by(2000) {
        let mut appends: Vec<StreamAppend> = Vec::new();
        for n in chunk_start..(chunk_start + 2000).min(deliveries) {
            appends.extend(plan_for(n, &policy)?);
        }
        store.append(appends).await?;
        progress.inc(2000);
    }
    progress.finish_and_clear();
    let head = *store.head().borrow();
    drop(store);
    // Fold the WAL into the database before timing, so the rebuild does not race a checkpoint.
    let conn = rusqlite::Connection::open(&path)?;
    conn.busy_timeout(Duration::from_secs(60))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);

    // As an operator runs it: `meshgate projections rebuild`, a fresh process on the log.
    let config = dir.join("bench.toml");
    std::fs::write(&config, format!("[server]\ndata_dir = '{}'\n", dir.display()))?;
    let output = std::process::Command::new(crate::gateway_binary()?)
        .arg("--config")
        .arg(&config)
        .args(["projections", "rebuild"])
        .env("RUST_LOG", "warn")
        .output()?;
    let said = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "projections rebuild failed: {}", String::from_utf8_lossy(&output.stderr));
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!();
    println!("rebuild: log of {head} events ({:.0} MiB): {}", size as f64 / (1024.0 * 1024.0), said.trim());

    // The same fold inside this process, whose heap the writing left behind.
    let started = Instant::now();
    let log = path.clone();
    let scratch = path.with_extension("readmodel.sqlite").with_extension("sqlite.bench");
    let model = meshgate::readmodel::ReadModel::open(&scratch)?;
    let reader = meshgate::store::sqlite::Reader::open(&log)?;
    let set =
        meshgate::rebuild::fold(&reader, head, meshgate_projections::OutboxConfig::default(), &model, |_| {}).await?;
    let elapsed = started.elapsed();
    println!(
        "rebuild in the process that wrote the log: {} builds in memory at the end, {:.2} s = {:.0} events/s",
        set.builds.in_memory_len(),
        elapsed.as_secs_f64(),
        head as f64 / elapsed.as_secs_f64()
    );
    // Opening the log rebuilds the writer's stream index from it (ADR 0006).
    let started = Instant::now();
    let store = SqliteStore::open(&path, WriterOptions::default())?;
    println!("open: stream index of {head} events rebuilt in {:.2} s", started.elapsed().as_secs_f64());
    drop(store);
    catch_up(&path, head).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Times what a gateway restarting without checkpoints does before it is ready: the live
/// projections catch up through the store (the replay a crash costs, bounded by how often they
/// are saved).
async fn catch_up(log: &Path, head: u64) -> anyhow::Result<()> {
    let path = log.with_extension("readmodel.sqlite");
    for file in [path.clone(), path.with_extension("sqlite-wal"), path.with_extension("sqlite-shm")] {
        let _ = std::fs::remove_file(file);
    }
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(log, WriterOptions::default())?);
    let started = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let readmodel = Arc::new(meshgate::readmodel::ReadModel::open(&path)?);
    let (projections, follow) =
        projector::start(store, readmodel, meshgate_projections::OutboxConfig::default(), async {
            let _ = stopped.await;
        })
        .await?;
    let follower = Follower::spawn(follow)?;
    let caught_up = projections.caught_up_to(head, Duration::from_secs(600)).await;
    let elapsed = started.elapsed();
    let _ = stop.send(());
    follower.join().await;
    anyhow::ensure!(caught_up, "the live projections did not catch up within 600 s");
    println!(
        "catch-up without checkpoints (live projections, through the store): {head} events in {:.2} s = {:.0} events/s",
        elapsed.as_secs_f64(),
        head as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
