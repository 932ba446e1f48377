//! Rebuilding the read model: the whole log, or its first positions, folded from position 0 into
//! a fresh read model as the log's [`LogReader::scan`] hands it over (`meshgate projections
//! rebuild`, its `--verify`, and the benchmarks). Memory stays bounded whatever the log's length:
//! the fold saves every [`SAVE_AFTER_EVENTS`] events and lets the finished builds go.

use futures_util::TryStreamExt;
use meshgate_domain::Recorded;
use meshgate_projections::{OutboxConfig, ProjectionSet};

use crate::projector::SAVE_AFTER_EVENTS;
use crate::readmodel::ReadModel;
use crate::store::{LogReader, StoreError};

/// Folds positions `1 ..= until` of the log into `into`, saving as it goes; `progress` hears the
/// last position folded after each batch.
pub async fn fold(
    log: &dyn LogReader,
    until: u64,
    outbox: OutboxConfig,
    into: &ReadModel,
    mut progress: impl FnMut(u64),
) -> Result<ProjectionSet, StoreError> {
    let wanted = ProjectionSet::projected_types();
    let mut set = ProjectionSet::new(outbox);
    let mut saved_at = 0;
    let mut batches = log.scan(0, until, &wanted);
    while let Some((batch, upto)) = batches.try_next().await? {
        fold_range(into, &mut set, &batch, upto, &mut saved_at)?;
        progress(upto);
    }
    save(into, &mut set)?;
    Ok(set)
}

/// Folds one range of the log that reaches `upto`, bringing back first the saved views of builds
/// memory let go, and saves every [`SAVE_AFTER_EVENTS`] events.
fn fold_range(
    into: &ReadModel,
    set: &mut ProjectionSet,
    batch: &[Recorded],
    upto: u64,
    saved_at: &mut u64,
) -> Result<(), StoreError> {
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

fn save(into: &ReadModel, set: &mut ProjectionSet) -> Result<(), StoreError> {
    let (views, mark) = set.builds.changed();
    let stats = set.stats.changed();
    let outbox = set.outbox.changed();
    into.save(&crate::readmodel::Snapshot::of(set, &views, &outbox, &stats))?;
    set.builds.saved(mark);
    set.outbox.saved(outbox.mark);
    set.stats.saved(stats.mark);
    Ok(())
}
