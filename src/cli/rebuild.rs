//! `meshgate projections rebuild [--verify]`: recompute the read model from position 0.
//!
//! The fold streams: it saves to a fresh read model file every fifty thousand events and lets the
//! finished builds go, so memory stays bounded whatever the log's length. Without `--verify` the
//! new file replaces the read model (the gateway must be stopped); with it, the log is folded up
//! to the saved read model's position into a scratch file and the two are compared row by row.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use meshgate_domain::Recorded;
use meshgate_projections::{OutboxConfig, ProjectionSet};

use crate::config::Config;
use crate::projector::{projected_types, SAVE_AFTER_EVENTS};
use crate::readmodel::{self, ReadModel};
use crate::store::sqlite::{lock_log, read_range_decoded, SqliteStore};
use crate::store::EventStore;

/// Positions read per query during a rebuild.
const REBUILD_RANGE: u64 = 8192;
/// Threads reading and decoding the log during a rebuild, each taking every other range.
const READERS: u64 = 2;

/// Folds the log at `path` from position 0 up to `until` (inclusive) into `into`, saving as it
/// goes, and reports progress. Two threads read and decode alternate ranges of positions; the
/// calling thread folds them in order.
pub fn fold_log(
    path: &Path,
    until: u64,
    outbox: OutboxConfig,
    into: &ReadModel,
    progress: &ProgressBar,
) -> anyhow::Result<ProjectionSet> {
    let wanted = projected_types();
    let ranges = until.div_ceil(REBUILD_RANGE);
    std::thread::scope(|scope| {
        let mut inputs = Vec::new();
        for reader in 0..READERS {
            let (batches, input) = std::sync::mpsc::sync_channel::<anyhow::Result<(Vec<Recorded>, u64)>>(4);
            inputs.push(input);
            let wanted = &wanted;
            scope.spawn(move || {
                let conn = match SqliteStore::open_read_only(path) {
                    Ok(conn) => conn,
                    Err(e) => return drop(batches.send(Err(e.into()))),
                };
                for range in (reader..ranges).step_by(READERS as usize) {
                    let after = range * REBUILD_RANGE;
                    let upto = until.min(after + REBUILD_RANGE);
                    let batch = read_range_decoded(&conn, after, upto, wanted)
                        .with_context(|| format!("cannot read the event log after position {after}"));
                    let failed = batch.is_err();
                    if batches.send(batch.map(|b| (b, upto))).is_err() || failed {
                        break;
                    }
                }
            });
        }
        let mut set = ProjectionSet::new(outbox);
        let mut saved_at = 0;
        for range in 0..ranges {
            let (batch, upto) = inputs[(range % READERS) as usize]
                .recv()
                .map_err(|_| anyhow::anyhow!("a reading thread stopped early"))??;
            fold_range(into, &mut set, &batch, upto, &mut saved_at)?;
            progress.set_position(upto);
        }
        save(into, &mut set)?;
        Ok(set)
    })
}

/// Folds one range of the log that reaches `upto`, bringing back first the saved views of builds
/// memory let go, and saves every [`SAVE_AFTER_EVENTS`] events.
fn fold_range(
    into: &ReadModel,
    set: &mut ProjectionSet,
    batch: &[Recorded],
    upto: u64,
    saved_at: &mut u64,
) -> anyhow::Result<()> {
    let missing = set.builds.missing(batch);
    if !missing.is_empty() {
        set.builds.restore(into.builds(&missing)?);
    }
    for recorded in batch {
        set.apply(recorded);
    }
    set.skip_to(upto);
    if upto - *saved_at >= SAVE_AFTER_EVENTS {
        save(into, set)?;
        *saved_at = upto;
    }
    Ok(())
}

fn save(into: &ReadModel, set: &mut ProjectionSet) -> anyhow::Result<()> {
    let (views, mark) = set.builds.changed();
    let (queue, queue_mark) = set.queue.changed();
    into.save(&views, &queue, &set.outbox, &set.nodes, set.position)?;
    set.builds.saved(mark);
    set.queue.saved(queue_mark);
    Ok(())
}

/// A scratch read model beside the real one, emptied first.
fn scratch(real: &Path, suffix: &str) -> anyhow::Result<(PathBuf, ReadModel)> {
    let path = real.with_extension(format!("sqlite.{suffix}"));
    remove(&path);
    let model = ReadModel::open(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok((path, model))
}

fn remove(path: &Path) {
    for file in [
        path.to_owned(),
        PathBuf::from(format!("{}-wal", path.display())),
        PathBuf::from(format!("{}-shm", path.display())),
    ] {
        let _ = std::fs::remove_file(file);
    }
}

pub async fn run(config: &Config, verify: bool) -> anyhow::Result<()> {
    let shared = config.store.backend.is_shared();
    let real = config.readmodel_path();
    let log = config.log_path();
    // Verifying runs beside a live gateway; replacing the read model needs it stopped.
    let _lock = match (verify, shared) {
        (true, _) => None,
        (false, false) => Some(lock_log(&log)?),
        (false, true) => Some(lock_log(&real)?),
    };
    let store = if shared { Some(crate::store::open::shared(config, 1).await?) } else { None };
    let head = match &store {
        Some(store) => *store.head().borrow(),
        None => {
            let conn = SqliteStore::open_read_only(&log)
                .with_context(|| format!("cannot open the event log at {}", log.display()))?;
            conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| r.get(0))?
        }
    };
    let outbox = crate::outbound::outbox_config(config);
    // Verified against a copy taken at one instant: the gateway may be saving as this runs.
    let copy = real.with_extension("sqlite.saved");
    let (until, saved) = if verify {
        remove(&copy);
        ReadModel::copy(&real, &copy).with_context(|| format!("cannot read {}", real.display()))?;
        let saved = ReadModel::open(&copy).with_context(|| format!("cannot open a copy of {}", real.display()))?;
        (saved.position()?.unwrap_or(0), Some(saved))
    } else {
        (head, None)
    };
    let progress = ProgressBar::new(until);
    progress.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events ({per_sec}, {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message(if verify { "verifying" } else { "rebuilding" });
    let started = std::time::Instant::now();
    let (scratch_path, fresh) = scratch(&real, if verify { "verify" } else { "rebuild" })?;
    let fresh = Arc::new(fresh);
    match store {
        Some(store) => {
            fold_store(store.as_ref(), until, outbox, &fresh, &progress).await?;
        }
        None => {
            let folding = Arc::clone(&fresh);
            let bar = progress.clone();
            tokio::task::spawn_blocking(move || fold_log(&log, until, outbox, &folding, &bar)).await??;
        }
    }
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    let rate = until as f64 / elapsed.as_secs_f64().max(1e-9);
    if let Some(saved) = saved {
        let differences = readmodel::differences(&saved, &fresh)?;
        drop((fresh, saved));
        remove(&scratch_path);
        remove(&copy);
        if differences.is_empty() {
            println!("the read model matches the log up to position {until} ({until} events in {elapsed:.2?}, {rate:.0} events/s)");
            return Ok(());
        }
        bail!("the read model differs from a rebuild up to position {until}: {}", differences.join("; "));
    }
    drop(fresh);
    remove(&real);
    std::fs::rename(&scratch_path, &real).with_context(|| format!("cannot replace {}", real.display()))?;
    let peak = peak_memory().map(|b| format!(", peak memory {:.0} MiB", b as f64 / 1048576.0)).unwrap_or_default();
    println!("rebuilt the read model from {head} events in {elapsed:.2?} ({rate:.0} events/s{peak})");
    Ok(())
}

/// [`fold_log`] through the store's own reads (a shared log): one range at a time.
async fn fold_store(
    store: &dyn EventStore,
    until: u64,
    outbox: OutboxConfig,
    into: &ReadModel,
    progress: &ProgressBar,
) -> anyhow::Result<ProjectionSet> {
    let wanted = projected_types();
    let mut set = ProjectionSet::new(outbox);
    let (mut after, mut saved_at) = (0, 0);
    while after < until {
        let limit = (until - after).min(REBUILD_RANGE) as usize;
        let (batch, covered) = store
            .read_decoded(after, limit, &wanted)
            .await
            .with_context(|| format!("cannot read the event log after position {after}"))?;
        if covered <= after {
            bail!("the event log ends at position {after}, before {until}");
        }
        fold_range(into, &mut set, &batch, covered, &mut saved_at)?;
        after = covered;
        progress.set_position(after);
    }
    save(into, &mut set)?;
    Ok(set)
}

/// This process's peak resident memory (Linux: `VmHWM` in `/proc/self/status`).
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse::<u64>();
    kib.ok().map(|k| k * 1024)
}
