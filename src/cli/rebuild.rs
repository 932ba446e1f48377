//! `meshgate projections rebuild [--verify]`: recompute every projection from position 0.

use std::sync::Arc;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use meshgate_projections::ProjectionSet;

use crate::config::Config;
use crate::projector::{apply_batch, checkpoints_of, from_checkpoints, READ_BATCH};
use crate::store::sqlite::{checkpoints, read_all, SqliteStore, WriterOptions};
use crate::store::EventStore;

/// Folds the log from position 0 up to `until` (inclusive), reporting progress.
pub fn fold_log(conn: &rusqlite::Connection, until: u64, progress: &ProgressBar) -> anyhow::Result<ProjectionSet> {
    let mut set = ProjectionSet::default();
    let mut after = 0;
    while after < until {
        let limit = READ_BATCH.min((until - after) as usize);
        let batch = read_all(conn, after, limit).context("cannot read the event log")?;
        let Some(last) = batch.last().map(|e| e.position) else {
            break;
        };
        apply_batch(&mut set, &batch)?;
        progress.inc(batch.len() as u64);
        after = last;
    }
    Ok(set)
}

pub async fn run(config: &Config, verify: bool) -> anyhow::Result<()> {
    let path = config.log_path();
    let conn = SqliteStore::open_read_only(&path)
        .with_context(|| format!("cannot open the event log at {}", path.display()))?;
    let head: u64 = conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| r.get(0))?;
    let saved = from_checkpoints(&checkpoints(&conn)?);
    let until = if verify { saved.position() } else { head };
    let progress = ProgressBar::new(until);
    progress.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events ({per_sec}, {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message(if verify { "verifying" } else { "rebuilding" });
    let started = std::time::Instant::now();
    let rebuilt = fold_log(&conn, until, &progress)?;
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
