//! Projections: pure folds over the event log.
//!
//! Each projection has a stable name ([`Projection::NAME`]) and a version
//! ([`Projection::VERSION`], bumped whenever its fold or the way it is saved changes, so a saved
//! read model of an older version is rebuilt). The set moves one position: applying an event at
//! or below it is a no-op, so a subscription that delivers an event twice cannot change the state.
//! Memory holds what the hot paths need, sized by the work in flight; the shell saves the rest as
//! a read model on disk (a row per build changed, rows of the outbox and the stats that changed;
//! the queue is restored from the builds in flight) together with the position, and
//! `meshgate projections rebuild` recomputes it from position 0 with the very same `apply`.

mod archive;
mod builds;
mod deliveries;
mod nodes;
mod outbox;
mod queue;
mod stats;
mod unsaved;
mod waiting;

pub use archive::{ArchivePlan, ArchivePlanner};
pub use builds::{build_name, ArtifactRecord, BuildView, Builds, FoldRecord, RebuildRecord, RetryRecord};
pub use deliveries::{recent_deliveries, Delivery};
pub use nodes::{NodeView, Nodes};
pub use outbox::{Entry, MilestoneRecord, Outbox, OutboxChanges, OutboxConfig, OutboxRow, SinkSpec};
pub use queue::{LaneRule, NodeAsk, Queue, QueueEntry};
pub use stats::{
    DayStats, Flight, Flying, Histogram, LaneStats, NodeStats, Percentiles, ScriptStats, SeriesPoint, Stats,
    StatsAnswer, StatsChanges, TestStats, TriggerStats, KEEP_DAYS,
};
pub use waiting::{unservable, waiting, waiting_all, Slice, Waiting};

use meshgate_domain::{Event, Recorded};

/// A pure fold over events.
pub trait Projection {
    /// Stable name: the key of the projection's saved state.
    const NAME: &'static str;
    /// Bumped whenever `apply` changes what it makes of the log.
    const VERSION: u32;

    /// Whether events of this type change the projection (lets the runner skip decoding others).
    fn wants(event_type: &str) -> bool;

    fn apply(&mut self, event: &Recorded);
}

/// Every projection the gateway keeps, at one position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectionSet {
    /// The position of the last event applied (or skipped).
    pub position: u64,
    pub builds: Builds,
    pub queue: Queue,
    pub outbox: Outbox,
    pub nodes: Nodes,
    /// The lanes an operator holds.
    pub paused: meshgate_domain::pause::Paused,
    /// The farm's history, a day at a time.
    pub stats: Stats,
}

impl ProjectionSet {
    /// The names and versions of the projections, as their saved states record them.
    pub const VERSIONS: [(&'static str, u32); 6] = [
        (Builds::NAME, Builds::VERSION),
        (Queue::NAME, Queue::VERSION),
        (Outbox::NAME, Outbox::VERSION),
        (Nodes::NAME, Nodes::VERSION),
        // The pauses, folded here (`meshgate_domain::pause`).
        ("paused", 1),
        (Stats::NAME, Stats::VERSION),
    ];

    pub fn new(outbox: OutboxConfig) -> Self {
        ProjectionSet { outbox: Outbox::new(outbox), ..ProjectionSet::default() }
    }

    /// Whether any projection reads events of this type.
    pub fn wants(event_type: &str) -> bool {
        Builds::wants(event_type)
            || Queue::wants(event_type)
            || Outbox::wants(event_type)
            || Nodes::wants(event_type)
            || Stats::wants(event_type)
            || matches!(event_type, "QueuePaused" | "QueueResumed")
    }

    /// The event types some projection folds ([`ProjectionSet::wants`]); the others are only
    /// positions to them.
    pub fn projected_types() -> Vec<&'static str> {
        Event::TYPES.iter().copied().filter(|t| Self::wants(t)).collect()
    }

    /// Applies an event once: events at or below the position are skipped.
    pub fn apply(&mut self, event: &Recorded) {
        if event.position <= self.position {
            return;
        }
        let event_type = event.event.event_type();
        if Builds::wants(event_type) {
            self.builds.apply(event);
        }
        if Queue::wants(event_type) {
            self.queue.apply(event);
        }
        if Outbox::wants(event_type) {
            self.outbox.apply(event);
        }
        if Nodes::wants(event_type) {
            self.nodes.apply(event);
        }
        if Stats::wants(event_type) {
            self.stats.apply(event);
        }
        self.paused.apply(&event.event, event.recorded_at);
        self.position = event.position;
    }

    /// Moves the position over events no projection reads.
    pub fn skip_to(&mut self, position: u64) {
        self.position = self.position.max(position);
    }
}

#[cfg(test)]
pub(crate) mod testing;
