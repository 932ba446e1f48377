//! Keeps the projections following the log: catch up from the saved checkpoints, then apply each
//! new commit as the store announces it, saving checkpoints now and then and on shutdown.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use meshgate_domain::{Event, Recorded};
use meshgate_projections::{Builds, Checkpointed, Dedupe, Outbox, Projection, ProjectionSet, Queue};
use tokio::sync::watch;

use crate::store::{Checkpoint, EventStore, StoreError, StoredEvent};

/// Positions read from the store in one go while catching up.
const CATCH_UP_RANGE: usize = 8192;
/// A restart after a crash replays at most this many events beyond the saved projections (a
/// million took 1.2–1.8 s on the development machine, docs/benchmarks.md). Webhooks
/// are accepted meanwhile; reads and readiness wait.
const SAVE_EVERY_EVENTS: u64 = 2_000_000;
/// Below that, a save waits for this many events and this long since the last one.
const SAVE_AFTER_EVENTS: u64 = 10_000;
const SAVE_AFTER: Duration = Duration::from_secs(600);

/// Whether the projections are due a save, `events` and `elapsed` after the last one (they are
/// saved at shutdown as well).
///
/// A save writes every projection's whole state, so its cost grows with the history (0.67 s for
/// 151 MB at 129,000 builds), and all it buys is a shorter replay after a crash. Until 2026-11-28
/// a save was due every 30 s when anything had been appended: a quiet gateway with a long history
/// rewrote all of it twice a minute to spare a replay of milliseconds. Now a crash replays at most
/// ten thousand events or ten minutes' worth, whichever is more, and never more than two million.
pub fn save_due(events: u64, elapsed: Duration) -> bool {
    events >= SAVE_EVERY_EVENTS || (events >= SAVE_AFTER_EVENTS && elapsed >= SAVE_AFTER)
}

/// Shared, read-mostly access to the live projections.
#[derive(Clone)]
pub struct Projections {
    set: Arc<RwLock<ProjectionSet>>,
    position: watch::Receiver<u64>,
}

impl Projections {
    /// Reads the projections.
    pub fn read<T>(&self, f: impl FnOnce(&ProjectionSet) -> T) -> T {
        let guard = self.set.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }

    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// Changes whenever the projections apply new events.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.position.clone()
    }

    /// Waits until the projections have applied everything up to `position`.
    pub async fn caught_up_to(&self, position: u64, within: Duration) -> bool {
        let mut rx = self.position.clone();
        tokio::time::timeout(within, rx.wait_for(|p| *p >= position)).await.is_ok_and(|r| r.is_ok())
    }
}

/// A stored event made ready for the projections.
pub enum Decoded {
    /// An event some projection reads.
    Apply(Box<Recorded>),
    /// An event no projection reads: only the checkpoint moves.
    Skip(u64),
}

/// Decodes the events the projections read; the others are only positions.
pub fn decode_batch(batch: &[StoredEvent]) -> Result<Vec<Decoded>, StoreError> {
    batch
        .iter()
        .map(|stored| {
            if ProjectionSet::wants(&stored.event_type) {
                let recorded = stored
                    .decode()
                    .map_err(|e| StoreError::caused(format_args!("event at position {}", stored.position), e))?;
                Ok(Decoded::Apply(Box::new(recorded)))
            } else {
                Ok(Decoded::Skip(stored.position))
            }
        })
        .collect()
}

pub fn apply_decoded(set: &mut ProjectionSet, decoded: &[Decoded]) {
    for item in decoded {
        match item {
            Decoded::Apply(recorded) => set.apply(recorded),
            Decoded::Skip(position) => set.skip_to(*position),
        }
    }
}

/// Decodes and applies a batch of stored events.
pub fn apply_batch(set: &mut ProjectionSet, batch: &[StoredEvent]) -> Result<(), StoreError> {
    apply_decoded(set, &decode_batch(batch)?);
    Ok(())
}

/// Serializes every projection as a checkpoint.
pub fn checkpoints_of(set: &ProjectionSet) -> Vec<Checkpoint> {
    fn one<P: Projection>(c: &Checkpointed<P>) -> Checkpoint {
        Checkpoint {
            name: P::NAME.to_owned(),
            position: c.position,
            state: serde_json::to_string(&c.state).unwrap_or_default(),
        }
    }
    vec![one(&set.builds), one(&set.queue), one(&set.dedupe), one(&set.outbox)]
}

/// Rebuilds a projection set from saved checkpoints; a missing or unreadable one starts from 0.
pub fn from_checkpoints(checkpoints: &[Checkpoint]) -> ProjectionSet {
    fn one<P: Projection>(checkpoints: &[Checkpoint]) -> Checkpointed<P> {
        checkpoints
            .iter()
            .find(|c| c.name == P::NAME)
            .and_then(|c| match serde_json::from_str(&c.state) {
                Ok(state) => Some(Checkpointed { position: c.position, state }),
                Err(e) => {
                    tracing::warn!(projection = P::NAME, error = %e, "checkpoint unreadable; rebuilding from the start");
                    None
                }
            })
            .unwrap_or_default()
    }
    ProjectionSet {
        builds: one::<Builds>(checkpoints),
        queue: one::<Queue>(checkpoints),
        dedupe: one::<Dedupe>(checkpoints),
        outbox: one::<Outbox>(checkpoints),
    }
}

/// Loads the checkpoints and returns the shared projections and the task that keeps them live.
pub async fn start(
    store: Arc<dyn EventStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Projections, impl Future<Output = ()>), StoreError> {
    let set = from_checkpoints(&store.load_checkpoints().await?);
    let (position_tx, position_rx) = watch::channel(set.position());
    let set = Arc::new(RwLock::new(set));
    let projections = Projections { set: Arc::clone(&set), position: position_rx };
    // Subscribed here, before the caller can serve a request, not when `follow` first runs on its
    // thread: the writer publishes a request's events only if someone listens when it runs the
    // request, so a delivery appended in between and committed after the first catch-up read
    // reached the projections only with the next commit (outbound tests waited 30 s for it).
    let feed = store.committed();
    Ok((projections, follow(store, set, position_tx, feed, shutdown)))
}

/// The thread the live projections fold on.
pub struct Follower(std::thread::JoinHandle<()>);

impl Follower {
    /// Runs `follow` (from [`start`]) on a thread of its own with a single-threaded runtime.
    /// Folding every commit is steady work; on the request threads it competed with answering
    /// webhooks, here it takes what the log's writer leaves of its core.
    pub fn spawn(follow: impl Future<Output = ()> + Send + 'static) -> std::io::Result<Follower> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread =
            std::thread::Builder::new().name("meshgate-projector".into()).spawn(move || runtime.block_on(follow))?;
        Ok(Follower(thread))
    }

    /// Waits for the follower to save its checkpoints and end (after its shutdown resolved).
    pub async fn join(self) {
        let thread = self.0;
        if let Ok(Err(_)) = tokio::task::spawn_blocking(move || thread.join()).await {
            tracing::error!("the projections' thread panicked");
        }
    }
}

async fn follow(
    store: Arc<dyn EventStore>,
    set: Arc<RwLock<ProjectionSet>>,
    position: watch::Sender<u64>,
    mut feed: Option<tokio::sync::broadcast::Receiver<Arc<[StoredEvent]>>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut head = store.head();
    let mut saved_at = (*position.borrow(), Instant::now());
    let mut behind = true;
    loop {
        if behind {
            let current = *position.borrow();
            if let Err(e) = catch_up(&*store, &set, &position).await {
                tracing::error!(error = %e, position = current, "projections cannot read the log; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = &mut shutdown => break,
                }
            }
        }
        let reached = *position.borrow();
        if save_due(reached - saved_at.0, saved_at.1.elapsed()) {
            save(&*store, &set).await;
            saved_at = (reached, Instant::now());
        }
        match feed.as_mut() {
            Some(committed) => tokio::select! {
                batch = committed.recv() => match batch {
                    Ok(batch) => match apply_fresh(&set, &position, &batch) {
                        Ok(applied) => behind = !applied,
                        Err(e) => {
                            tracing::error!(error = %e, "projections cannot apply a commit; reading the log");
                            behind = true;
                        }
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "projections fell behind the commit feed; reading the log");
                        behind = true;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        feed = None;
                        behind = true;
                    }
                },
                _ = &mut shutdown => break,
            },
            None => tokio::select! {
                changed = head.wait_for(|h| *h > reached) => {
                    if changed.is_err() { break }
                    behind = true;
                },
                _ = &mut shutdown => break,
            },
        }
    }
    // Apply what committed before shutdown, then save.
    let _ = catch_up(&*store, &set, &position).await;
    save(&*store, &set).await;
}

/// Applies the events of a committed batch the projections have not seen. False if the batch
/// starts after a gap (the log must be read first).
fn apply_fresh(
    set: &RwLock<ProjectionSet>,
    position: &watch::Sender<u64>,
    batch: &[StoredEvent],
) -> Result<bool, StoreError> {
    let current = *position.borrow();
    let fresh = &batch[batch.partition_point(|e| e.position <= current)..];
    match fresh.first() {
        None => return Ok(true),
        Some(first) if first.position != current + 1 => return Ok(false),
        Some(_) => {}
    }
    advance(set, position, fresh)?;
    Ok(true)
}

/// Applies events that follow the projections' position directly, and moves the position to the
/// last of them. Decoding happens before the projections are locked.
fn advance(
    set: &RwLock<ProjectionSet>,
    position: &watch::Sender<u64>,
    events: &[StoredEvent],
) -> Result<(), StoreError> {
    let Some(last) = events.last().map(|e| e.position) else {
        return Ok(());
    };
    let decoded = decode_batch(events)?;
    {
        let mut guard = set.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        apply_decoded(&mut guard, &decoded);
    }
    position.send_replace(last);
    Ok(())
}

async fn catch_up(
    store: &dyn EventStore,
    set: &RwLock<ProjectionSet>,
    position: &watch::Sender<u64>,
) -> Result<(), StoreError> {
    let wanted = projected_types();
    let mut from = *position.borrow();
    let mut read = store.read_decoded(from, CATCH_UP_RANGE, &wanted).await?;
    loop {
        let (decoded, covered) = read;
        let fold = async { fold_range(set, position, &decoded, covered) };
        if covered - from < CATCH_UP_RANGE as u64 {
            fold.await;
            return Ok(());
        }
        // The next range is read (on a blocking thread) while this one is folded.
        let (next, ()) = tokio::join!(biased; store.read_decoded(covered, CATCH_UP_RANGE, &wanted), fold);
        (read, from) = (next?, covered);
    }
}

/// Applies a range read by `read_decoded` that covered positions up to `covered`.
fn fold_range(set: &RwLock<ProjectionSet>, position: &watch::Sender<u64>, decoded: &[Recorded], covered: u64) {
    if covered <= *position.borrow() {
        return;
    }
    let mut guard = set.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    for recorded in decoded {
        guard.apply(recorded);
    }
    guard.skip_to(covered);
    drop(guard);
    position.send_replace(covered);
}

/// The event types some projection folds; the others are only positions to them.
pub fn projected_types() -> Vec<&'static str> {
    Event::TYPES.iter().copied().filter(|t| ProjectionSet::wants(t)).collect()
}

/// Saves every projection. Serializing whole states takes a while on a large log, so it runs on a
/// blocking thread, not on one of the threads answering requests.
async fn save(store: &dyn EventStore, set: &Arc<RwLock<ProjectionSet>>) {
    let set = Arc::clone(set);
    let serialized = tokio::task::spawn_blocking(move || {
        let guard = set.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        checkpoints_of(&guard)
    })
    .await;
    let checkpoints = match serialized {
        Ok(checkpoints) => checkpoints,
        Err(e) => {
            tracing::warn!(error = %e, "cannot serialize projection checkpoints");
            return;
        }
    };
    let (position, bytes) =
        (checkpoints.iter().map(|c| c.position).min(), checkpoints.iter().map(|c| c.state.len()).sum::<usize>());
    let started = Instant::now();
    match store.save_checkpoints(checkpoints).await {
        Ok(()) => tracing::debug!(
            position,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "projection checkpoints saved"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot save projection checkpoints"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_save_is_due_after_two_million_events_or_ten_thousand_and_ten_minutes() {
        let minute = Duration::from_secs(60);
        assert!(!save_due(1, 60 * minute), "a handful of events never rewrites the state");
        assert!(!save_due(9_999, 60 * minute));
        assert!(!save_due(1_999_999, 9 * minute));
        assert!(save_due(10_000, 10 * minute));
        assert!(save_due(2_000_000, Duration::ZERO));
    }
}
