//! `meshgate projections rebuild [--verify]`: recompute every projection from position 0.

use std::sync::Arc;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use meshgate_domain::Event;
use meshgate_projections::ProjectionSet;

use crate::config::Config;
use crate::projector::{apply_decoded, checkpoints_of, decode_batch, from_checkpoints, Decoded};

/// Positions read per query during a rebuild.
const REBUILD_RANGE: u64 = 8192;
use crate::store::sqlite::{checkpoints, read_range_of_types, SqliteStore, WriterOptions};
use crate::store::EventStore;

/// Folds the log from position 0 up to `until` (inclusive), reporting progress. Reading and
/// decoding run on one thread, folding on another.
pub fn fold_log(conn: &rusqlite::Connection, until: u64, progress: &ProgressBar) -> anyhow::Result<ProjectionSet> {
    let wanted: Vec<&str> = Event::TYPES.iter().copied().filter(|t| ProjectionSet::wants(t)).collect();
    let (batches, folder_input) = std::sync::mpsc::sync_channel::<Vec<Decoded>>(8);
    std::thread::scope(|scope| {
        let folder = scope.spawn(move || {
            let mut set = ProjectionSet::default();
            for decoded in folder_input {
                apply_decoded(&mut set, &decoded);
                if let Some(Decoded::Skip(upto)) = decoded.last() {
                    progress.set_position(*upto);
                }
            }
            set
        });
        let mut after = 0;
        while after < until {
            let upto = until.min(after + REBUILD_RANGE);
            let batch = read_range_of_types(conn, after, upto, &wanted).context("cannot read the event log")?;
            let mut decoded = decode_batch(&batch)?;
            decoded.push(Decoded::Skip(upto));
            if batches.send(decoded).is_err() {
                break;
            }
            after = upto;
        }
        drop(batches);
        folder.join().map_err(|_| anyhow::anyhow!("the folding thread panicked"))
    })
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
