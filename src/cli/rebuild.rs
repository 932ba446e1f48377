//! `meshgate projections rebuild [--verify]`: recompute every projection from position 0.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use meshgate_domain::Recorded;
use meshgate_projections::ProjectionSet;

use crate::config::Config;
use crate::projector::{checkpoints_of, from_checkpoints, projected_types};

/// Positions read per query during a rebuild.
const REBUILD_RANGE: u64 = 8192;
use crate::store::sqlite::{checkpoints, read_range_decoded, SqliteStore, WriterOptions};
use crate::store::EventStore;

/// Threads reading and decoding the log during a rebuild, each taking every other range.
const READERS: u64 = 2;

/// Folds the log at `path` from position 0 up to `until` (inclusive), reporting progress. Two
/// threads read and decode alternate ranges of positions; the calling thread folds them in order.
pub fn fold_log(path: &Path, until: u64, progress: &ProgressBar) -> anyhow::Result<ProjectionSet> {
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
        let mut set = ProjectionSet::default();
        for range in 0..ranges {
            let (batch, upto) = inputs[(range % READERS) as usize]
                .recv()
                .map_err(|_| anyhow::anyhow!("a reading thread stopped early"))??;
            for recorded in &batch {
                set.apply(recorded);
            }
            set.skip_to(upto);
            progress.set_position(upto);
        }
        Ok(set)
    })
}

pub async fn run(config: &Config, verify: bool) -> anyhow::Result<()> {
    let path = config.log_path();
    let conn = SqliteStore::open_read_only(&path)
        .with_context(|| format!("cannot open the event log at {}", path.display()))?;
    let head: u64 = conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| r.get(0))?;
    let saved = from_checkpoints(&checkpoints::read(&path, &conn, head)?);
    let until = if verify { saved.position() } else { head };
    let progress = ProgressBar::new(until);
    progress.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events ({per_sec}, {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message(if verify { "verifying" } else { "rebuilding" });
    let started = std::time::Instant::now();
    let rebuilt = fold_log(&path, until, &progress)?;
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    let rate = until as f64 / elapsed.as_secs_f64().max(1e-9);
    if verify {
        let differences = rebuilt.differences(&saved);
        if differences.is_empty() {
            println!("projections match the log up to position {until} ({until} events in {elapsed:.2?}, {rate:.0} events/s)");
            return Ok(());
        }
        bail!("projections differ from a rebuild up to position {until}: {}", differences.join(", "));
    }
    let store = SqliteStore::open(&path, WriterOptions::default())?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    store.save_checkpoints(checkpoints_of(&rebuilt)).await?;
    println!(
        "rebuilt {} projections from {head} events in {elapsed:.2?} ({rate:.0} events/s)",
        ProjectionSet::NAMES.len()
    );
    Ok(())
}
