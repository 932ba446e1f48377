//! Keeps the projections following the log: load what the read model saved, catch up from its
//! position, then apply each new commit as the store announces it, saving to the read model about
//! every second and on shutdown (docs/adr/0003-projection-checkpoints.md).
//!
//! Memory holds what the hot paths need (queued and running builds, the queue, the outbox); a
//! finished build is let go once saved, and read from the read model after that
//! ([`Projections::build`], [`Projections::page_builds`]). An event about a build memory let go
//! brings its saved view back before it is applied.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use meshgate_domain::Recorded;
use meshgate_projections::{BuildView, OutboxConfig, ProjectionSet};
use tokio::sync::watch;
use uuid::Uuid;

use crate::readmodel::{ReadModel, Snapshot};
use crate::store::{Committed, EventStore, StoreError, StoredEvent};

/// Positions read from the store in one go while catching up.
const CATCH_UP_RANGE: usize = 8192;
/// A save is due this long after the last one if anything changed...
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// ... or after this many events (which bounds memory while catching up or rebuilding).
pub const SAVE_AFTER_EVENTS: u64 = 50_000;

/// Whether the projections are due a save, `events` and `elapsed` after the last one.
pub fn save_due(events: u64, elapsed: Duration) -> bool {
    events >= SAVE_AFTER_EVENTS || (events > 0 && elapsed >= SAVE_EVERY)
}

/// Shared access to the live projections: memory for the hot paths, the read model for the rest.
#[derive(Clone)]
pub struct Projections {
    set: Arc<RwLock<ProjectionSet>>,
    position: watch::Receiver<u64>,
    readmodel: Arc<ReadModel>,
}

impl Projections {
    /// Reads what memory holds.
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

    /// A build, from memory or else from the read model.
    pub async fn build(&self, build_id: Uuid) -> Result<Option<BuildView>, StoreError> {
        if let Some(view) = self.read(|p| p.builds.get(build_id).cloned()) {
            return Ok(Some(view));
        }
        let readmodel = Arc::clone(&self.readmodel);
        blocking(move || readmodel.build(build_id)).await
    }

    /// The build of `trigger` numbered `number`, from memory or else from the read model.
    pub async fn build_by_number(&self, trigger: &str, number: u64) -> Result<Option<BuildView>, StoreError> {
        if let Some(view) = self.read(|p| p.builds.by_number(trigger, number).cloned()) {
            return Ok(Some(view));
        }
        let (readmodel, trigger) = (Arc::clone(&self.readmodel), trigger.to_owned());
        blocking(move || readmodel.build_by_number(&trigger, number)).await
    }

    /// A page of builds of an issue and a state requested before `before`, newest first, with
    /// what memory holds in place of a saved row. Active builds are all in memory, so a page of
    /// queued or running ones never reads the read model; otherwise it reads saved rows only as
    /// far down as memory's own candidates do not already fill the page. A saved row out of date
    /// is one of a build memory holds: it matches a filter only if memory's view does too (a
    /// finished build stays finished, and queued or running pages do not read saved rows), so
    /// it is among memory's candidates and gives way to their view.
    pub async fn page_builds(
        &self,
        issue: Option<&str>,
        state: Option<&str>,
        before: u64,
        limit: usize,
    ) -> Result<Vec<BuildView>, StoreError> {
        let matches = |b: &BuildView| {
            b.position < before && issue.is_none_or(|i| b.issue_id == i) && state.is_none_or(|s| b.state.name() == s)
        };
        let mut page: Vec<BuildView> = self.read(|p| {
            let mut hot: Vec<&BuildView> = p.builds.in_memory().filter(|b| matches(b)).collect();
            // The newest `limit` without sorting the whole backlog.
            if hot.len() > limit {
                hot.select_nth_unstable_by_key(limit, |b| std::cmp::Reverse(b.position));
                hot.truncate(limit);
            }
            hot.sort_by_key(|b| std::cmp::Reverse(b.position));
            hot.into_iter().cloned().collect()
        });
        if !matches!(state, Some("queued" | "running")) {
            // Only saved builds newer than the last candidate memory gave can enter a full page.
            let above = if page.len() == limit { page.last().map_or(0, |b| b.position) } else { 0 };
            let (i, s) = (issue.map(str::to_owned), state.map(str::to_owned));
            let readmodel = Arc::clone(&self.readmodel);
            let saved = blocking(move || readmodel.page((i.as_deref(), s.as_deref()), (above, before), limit)).await?;
            let known: std::collections::HashSet<Uuid> = page.iter().map(|b| b.build_id).collect();
            page.extend(saved.into_iter().filter(|b| !known.contains(&b.build_id)));
            page.sort_by_key(|b| std::cmp::Reverse(b.position));
            page.truncate(limit);
        }
        Ok(page)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::caused("a read model query stopped", e))?
}

/// Decodes and applies a batch of stored events (tests and tools folding in memory only).
pub fn apply_batch(set: &mut ProjectionSet, batch: &[StoredEvent]) -> Result<(), StoreError> {
    for stored in batch {
        if ProjectionSet::wants(&stored.event_type) {
            let recorded = stored
                .decode()
                .map_err(|e| StoreError::caused(format_args!("event at position {}", stored.position), e))?;
            set.apply(&recorded);
        } else {
            set.skip_to(stored.position);
        }
    }
    Ok(())
}

/// Loads what the read model saved and returns the shared projections and the task that keeps
/// them live.
pub async fn start(
    store: Arc<dyn EventStore>,
    readmodel: Arc<ReadModel>,
    outbox: OutboxConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Projections, impl Future<Output = ()>), StoreError> {
    let head = *store.head().borrow();
    let loading = Arc::clone(&readmodel);
    let set = blocking(move || loading.load(outbox, head)).await?;
    let (position_tx, position_rx) = watch::channel(set.position);
    let set = Arc::new(RwLock::new(set));
    let projections = Projections { set: Arc::clone(&set), position: position_rx, readmodel: Arc::clone(&readmodel) };
    // Subscribed here, before the caller can serve a request, not when `follow` first runs on its
    // thread: the writer publishes a request's events only if someone listens when it runs the
    // request, so a delivery appended in between and committed after the first catch-up read
    // reached the projections only with the next commit (outbound tests waited 30 s for it).
    let feed = store.committed();
    Ok((projections, follow(store, readmodel, set, position_tx, feed, shutdown)))
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
    readmodel: Arc<ReadModel>,
    set: Arc<RwLock<ProjectionSet>>,
    position: watch::Sender<u64>,
    mut feed: Option<tokio::sync::broadcast::Receiver<Committed>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut head = store.head();
    let mut saved_at = (*position.borrow(), Instant::now());
    let mut behind = true;
    let live = Live { readmodel: &readmodel, set: &set, position: &position };
    loop {
        if behind {
            let current = *position.borrow();
            if let Err(e) = catch_up(&*store, &live, &mut saved_at).await {
                tracing::error!(error = %e, position = current, "projections cannot read the log; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = &mut shutdown => break,
                }
            }
        }
        let reached = *position.borrow();
        if save_due(reached - saved_at.0, saved_at.1.elapsed()) {
            live.save();
            saved_at = (reached, Instant::now());
        }
        // Nothing new: wake up for the next commit, or in time to save what changed.
        let unsaved = reached > saved_at.0;
        let save_in = SAVE_EVERY.saturating_sub(saved_at.1.elapsed());
        match feed.as_mut() {
            Some(committed) => tokio::select! {
                _ = tokio::time::sleep(save_in), if unsaved => {}
                batch = committed.recv() => match batch {
                    Ok(batch) => match live.apply_fresh(&batch) {
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
                _ = tokio::time::sleep(save_in), if unsaved => {}
                changed = head.wait_for(|h| *h > reached) => {
                    if changed.is_err() { break }
                    behind = true;
                },
                _ = &mut shutdown => break,
            },
        }
    }
    // Apply what committed before shutdown, then save.
    let _ = catch_up(&*store, &live, &mut saved_at).await;
    live.save();
}

/// The live projections and where they are saved.
struct Live<'a> {
    readmodel: &'a ReadModel,
    set: &'a RwLock<ProjectionSet>,
    position: &'a watch::Sender<u64>,
}

impl Live<'_> {
    /// Applies the events of a commit the projections have not seen. False if the commit starts
    /// after a gap (the log must be read first).
    fn apply_fresh(&self, commit: &Committed) -> Result<bool, StoreError> {
        let current = *self.position.borrow();
        if commit.through <= current {
            return Ok(true);
        }
        if commit.after > current {
            return Ok(false);
        }
        let fresh = &commit.events[commit.events.partition_point(|e| e.position <= current)..];
        // Decoded before the projections are locked.
        let mut decoded = Vec::new();
        for stored in fresh.iter().filter(|e| ProjectionSet::wants(&e.event_type)) {
            decoded.push(
                stored
                    .decode()
                    .map_err(|e| StoreError::caused(format_args!("event at position {}", stored.position), e))?,
            );
        }
        self.fold(&decoded, commit.through)?;
        Ok(true)
    }

    /// Applies decoded events and moves the position to `covered`, bringing back first the saved
    /// views of builds they are about that memory let go.
    fn fold(&self, decoded: &[Recorded], covered: u64) -> Result<(), StoreError> {
        if covered <= *self.position.borrow() {
            return Ok(());
        }
        let missing = self.set.read().unwrap_or_else(|p| p.into_inner()).builds.missing(decoded);
        let restored = if missing.is_empty() { Vec::new() } else { self.readmodel.builds(&missing)? };
        let mut guard = self.set.write().unwrap_or_else(|p| p.into_inner());
        guard.builds.restore(restored);
        for recorded in decoded {
            guard.apply(recorded);
        }
        guard.skip_to(covered);
        drop(guard);
        self.position.send_replace(covered);
        Ok(())
    }

    /// Saves what changed since the last save, then lets go of the finished builds saved. A
    /// failed save is logged and done again at the next one: memory keeps what it did not save.
    fn save(&self) {
        let started = Instant::now();
        let (views, mark, outbox, nodes, numbers, paused, stats, position) = {
            let guard = self.set.read().unwrap_or_else(|p| p.into_inner());
            let (views, mark) = guard.builds.changed();
            let (outbox, nodes, numbers) =
                (guard.outbox.changed(), guard.nodes.clone(), guard.builds.numbers().clone());
            let stats = guard.stats.changed();
            (views, mark, outbox, nodes, numbers, guard.paused.clone(), stats, guard.position)
        };
        let snapshot = Snapshot {
            views: &views,
            outbox: &outbox,
            nodes: &nodes,
            numbers: &numbers,
            paused: &paused,
            stats: &stats,
            position,
        };
        match self.readmodel.save(&snapshot) {
            Ok(()) => {
                let mut guard = self.set.write().unwrap_or_else(|p| p.into_inner());
                guard.builds.saved(mark);
                guard.outbox.saved(outbox.mark);
                guard.stats.saved(stats.mark);
                let in_memory = guard.builds.in_memory_len();
                drop(guard);
                tracing::debug!(
                    position,
                    builds = views.len(),
                    in_memory,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "read model saved"
                );
            }
            Err(e) => tracing::warn!(error = %crate::report::chain(&e), "cannot save the read model"),
        }
    }
}

async fn catch_up(store: &dyn EventStore, live: &Live<'_>, saved_at: &mut (u64, Instant)) -> Result<(), StoreError> {
    let wanted = ProjectionSet::projected_types();
    let mut from = *live.position.borrow();
    let mut read = store.read_decoded(from, CATCH_UP_RANGE, &wanted).await?;
    loop {
        let (decoded, covered) = read;
        let fold = async {
            live.fold(&decoded, covered)?;
            // A long catch-up saves as it goes, so memory stays bounded.
            if covered - saved_at.0 >= SAVE_AFTER_EVENTS {
                live.save();
                *saved_at = (covered, Instant::now());
            }
            Ok::<(), StoreError>(())
        };
        if covered - from < CATCH_UP_RANGE as u64 {
            return fold.await;
        }
        // The next range is read (on a blocking thread) while this one is folded.
        let (next, folded) = tokio::join!(biased; store.read_decoded(covered, CATCH_UP_RANGE, &wanted), fold);
        folded?;
        (read, from) = (next?, covered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_save_is_due_a_second_after_a_change_or_after_fifty_thousand_events() {
        assert!(!save_due(0, Duration::from_secs(3600)), "nothing changed, nothing to save");
        assert!(!save_due(1, Duration::from_millis(999)));
        assert!(save_due(1, Duration::from_secs(1)));
        assert!(save_due(50_000, Duration::ZERO));
    }
}
