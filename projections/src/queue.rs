//! `queue`: builds waiting for a node, ordered by lane priority, then log position.

use std::collections::{BTreeMap, HashMap};

use meshgate_domain::{Event, Recorded};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Projection;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub build_id: Uuid,
    pub issue_id: String,
    pub lane: String,
    pub script: String,
    /// Global position of the request: a requeued build keeps its place.
    pub position: u64,
    /// The attempt the next claim will carry.
    pub attempt: u32,
}

/// Queued builds. Running builds are kept aside so that a requeue restores their entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queue {
    pub queued: BTreeMap<Uuid, QueueEntry>,
    pub running: BTreeMap<Uuid, QueueEntry>,
}

impl Queue {
    /// Queued builds in the order nodes are served: higher lane priority first, then log order.
    /// Lanes missing from `priorities` have priority 0.
    pub fn ordered(&self, priorities: &HashMap<String, i64>) -> Vec<&QueueEntry> {
        let mut entries: Vec<_> = self.queued.values().collect();
        entries.sort_by_key(|e| (-priorities.get(&e.lane).copied().unwrap_or(0), e.position));
        entries
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }
}

impl Projection for Queue {
    const NAME: &'static str = "queue";

    fn wants(event_type: &str) -> bool {
        matches!(
            event_type,
            "BuildRequested" | "BuildClaimed" | "BuildRequeued" | "BuildSucceeded" | "BuildFailed" | "BuildCancelled"
        )
    }

    fn apply(&mut self, recorded: &Recorded) {
        match &recorded.event {
            Event::BuildRequested(e) => {
                self.queued.insert(
                    e.build_id,
                    QueueEntry {
                        build_id: e.build_id,
                        issue_id: e.issue_id.clone(),
                        lane: e.lane.clone(),
                        script: e.script.clone(),
                        position: recorded.position,
                        attempt: 1,
                    },
                );
            }
            Event::BuildClaimed(e) => {
                if let Some(entry) = self.queued.remove(&e.build_id) {
                    self.running.insert(e.build_id, entry);
                }
            }
            Event::BuildRequeued(e) => {
                if let Some(mut entry) = self.running.remove(&e.build_id) {
                    entry.attempt = e.next_attempt;
                    self.queued.insert(e.build_id, entry);
                }
            }
            Event::BuildSucceeded(e) => self.finish(e.build_id),
            Event::BuildFailed(e) => self.finish(e.build_id),
            Event::BuildCancelled(e) => self.finish(e.build_id),
            _ => {}
        }
    }
}

impl Queue {
    fn finish(&mut self, build_id: Uuid) {
        self.queued.remove(&build_id);
        self.running.remove(&build_id);
    }
}
