//! Projections: pure folds over the event log.
//!
//! Each projection has a stable name ([`Projection::NAME`]) and is kept with the global position of
//! the last event it applied ([`Checkpointed`]). Applying an event at or below that position is a
//! no-op, so a subscription that delivers an event twice cannot change the state. The shell saves
//! checkpoints and resumes from them; `meshgate projections rebuild` recomputes them from position 0
//! with the very same `apply`.

mod builds;
mod dedupe;
mod outbox;
mod queue;

pub use builds::{BuildView, Builds, FoldRecord};
pub use dedupe::Dedupe;
pub use outbox::{MilestoneRecord, Outbox};
pub use queue::{LaneRule, NodeAsk, Queue, QueueEntry};

use meshgate_domain::Recorded;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A pure fold over events.
pub trait Projection: Default + Clone + PartialEq + Serialize + DeserializeOwned {
    /// Stable name: the key of the projection's checkpoint.
    const NAME: &'static str;

    /// Whether events of this type change the projection (lets the runner skip decoding others).
    fn wants(event_type: &str) -> bool;

    fn apply(&mut self, event: &Recorded);
}

/// A projection and the position of the last event applied to it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpointed<P> {
    pub position: u64,
    pub state: P,
}

impl<P: Projection> Checkpointed<P> {
    /// Applies an event once: events at or below the checkpoint are skipped.
    pub fn apply(&mut self, event: &Recorded) {
        if event.position <= self.position {
            return;
        }
        if P::wants(event.event.event_type()) {
            self.state.apply(event);
        }
        self.position = event.position;
    }

    /// Moves the checkpoint over events this projection does not read.
    pub fn skip_to(&mut self, position: u64) {
        self.position = self.position.max(position);
    }
}

/// Every projection the gateway keeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProjectionSet {
    pub builds: Checkpointed<Builds>,
    pub queue: Checkpointed<Queue>,
    pub dedupe: Checkpointed<Dedupe>,
    pub outbox: Checkpointed<Outbox>,
}

impl ProjectionSet {
    /// The names of the projections, as their checkpoints are stored.
    pub const NAMES: [&'static str; 4] = [Builds::NAME, Queue::NAME, Dedupe::NAME, Outbox::NAME];

    /// Whether any projection reads events of this type.
    pub fn wants(event_type: &str) -> bool {
        Builds::wants(event_type) || Queue::wants(event_type) || Dedupe::wants(event_type) || Outbox::wants(event_type)
    }

    pub fn apply(&mut self, event: &Recorded) {
        self.builds.apply(event);
        self.queue.apply(event);
        self.dedupe.apply(event);
        self.outbox.apply(event);
    }

    /// Moves every checkpoint over an event no projection reads.
    pub fn skip_to(&mut self, position: u64) {
        self.builds.skip_to(position);
        self.queue.skip_to(position);
        self.dedupe.skip_to(position);
        self.outbox.skip_to(position);
    }

    /// The position every projection has reached.
    pub fn position(&self) -> u64 {
        self.builds.position.min(self.queue.position).min(self.dedupe.position).min(self.outbox.position)
    }

    /// The names of the projections whose states differ between two sets.
    pub fn differences(&self, other: &ProjectionSet) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.builds != other.builds {
            names.push(Builds::NAME);
        }
        if self.queue != other.queue {
            names.push(Queue::NAME);
        }
        if self.dedupe != other.dedupe {
            names.push(Dedupe::NAME);
        }
        if self.outbox != other.outbox {
            names.push(Outbox::NAME);
        }
        names
    }
}

#[cfg(test)]
pub(crate) mod testing;
