//! `queue`: builds waiting for a node, ordered by lane priority, then log position.

use std::collections::{BTreeMap, HashMap};

use meshgate_domain::{Event, Recorded};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Projection;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub build_id: Uuid,
    pub issue_id: String,
    pub lane: String,
    pub script: String,
    /// Global position of the request: a requeued build keeps its place.
    pub position: u64,
    /// The attempt the next claim will carry (queued) or the current one (running).
    pub attempt: u32,
    /// The node running it, while it runs.
    #[serde(default)]
    pub node_id: Option<String>,
}

/// A configured lane, as the scheduler needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaneRule {
    pub name: String,
    pub priority: i64,
    /// A node must have every one of these labels to run the lane's builds.
    pub required_labels: Vec<String>,
    /// Most builds of the lane running at once across the pool (`1`: a mutex).
    pub max_running: Option<usize>,
}

/// A node asking for work.
#[derive(Debug, Clone, Copy)]
pub struct NodeAsk<'a> {
    pub node_id: &'a str,
    pub labels: &'a [String],
    pub slots: usize,
}

/// Queued builds. Running builds are kept aside so that a requeue restores their entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Queue {
    pub queued: BTreeMap<Uuid, QueueEntry>,
    pub running: BTreeMap<Uuid, QueueEntry>,
    /// Entries changed since the last save, with the change's number (as `Builds` keeps its
    /// views'): a save costs what changed, not the depth of the queue.
    #[serde(skip)]
    changed: BTreeMap<Uuid, u64>,
    #[serde(skip)]
    changes: u64,
}

/// The queue's state; which entries are not yet saved is bookkeeping, not state.
impl PartialEq for Queue {
    fn eq(&self, other: &Queue) -> bool {
        self.queued == other.queued && self.running == other.running
    }
}

impl Eq for Queue {}

/// An entry of the queue as a save finds it: queued, running, or gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueChange {
    Queued(QueueEntry),
    Running(QueueEntry),
    Gone(Uuid),
}

impl Queue {
    /// Queued builds in the order nodes are served: higher lane priority first, then log order.
    /// Lanes missing from `priorities` have priority 0.
    pub fn ordered(&self, priorities: &HashMap<String, i64>) -> Vec<&QueueEntry> {
        let mut entries: Vec<_> = self.queued.values().collect();
        entries.sort_by_key(|e| (-priorities.get(&e.lane).copied().unwrap_or(0), e.position));
        entries
    }

    /// Builds a node is running now.
    pub fn held_by(&self, node_id: &str) -> usize {
        self.running.values().filter(|e| e.node_id.as_deref() == Some(node_id)).count()
    }

    /// The build a node should claim next, if any: none while the node's slots are full; otherwise
    /// the first queued build (lane priority, then log order) whose lane's labels the node has,
    /// whose lane is below its `max_running`, and whose (issue, script) is not running already.
    /// Lanes missing from `lanes` have priority 0, no labels and no cap.
    pub fn next_for(&self, lanes: &[LaneRule], node: &NodeAsk<'_>) -> Option<&QueueEntry> {
        if self.held_by(node.node_id) >= node.slots {
            return None;
        }
        let default = LaneRule::default();
        let rule = |lane: &str| lanes.iter().find(|l| l.name == lane).unwrap_or(&default);
        let mut candidates: Vec<&QueueEntry> = self.queued.values().collect();
        candidates.sort_by_key(|e| (-rule(&e.lane).priority, e.position));
        candidates.into_iter().find(|entry| {
            let lane = rule(&entry.lane);
            let labelled = lane.required_labels.iter().all(|l| node.labels.contains(l));
            let below_cap =
                lane.max_running.is_none_or(|cap| self.running.values().filter(|r| r.lane == entry.lane).count() < cap);
            let intent_free = !self.running.values().any(|r| r.issue_id == entry.issue_id && r.script == entry.script);
            labelled && below_cap && intent_free
        })
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
    /// 2: saved one row per entry, not whole.
    const VERSION: u32 = 2;

    fn wants(event_type: &str) -> bool {
        matches!(
            event_type,
            "BuildRequested" | "BuildClaimed" | "BuildRequeued" | "BuildSucceeded" | "BuildFailed" | "BuildCancelled"
        )
    }

    fn apply(&mut self, recorded: &Recorded) {
        let touched = match &recorded.event {
            Event::BuildRequested(e) => Some(e.build_id),
            Event::BuildClaimed(e) => Some(e.build_id),
            Event::BuildRequeued(e) => Some(e.build_id),
            Event::BuildSucceeded(e) => Some(e.build_id),
            Event::BuildFailed(e) => Some(e.build_id),
            Event::BuildCancelled(e) => Some(e.build_id),
            _ => None,
        };
        if let Some(build_id) = touched {
            self.touch(build_id);
        }
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
                        node_id: None,
                    },
                );
            }
            Event::BuildClaimed(e) => {
                if let Some(mut entry) = self.queued.remove(&e.build_id) {
                    entry.attempt = e.attempt;
                    entry.node_id = Some(e.node_id.clone());
                    self.running.insert(e.build_id, entry);
                }
            }
            Event::BuildRequeued(e) => {
                if let Some(mut entry) = self.running.remove(&e.build_id) {
                    entry.attempt = e.next_attempt;
                    entry.node_id = None;
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
    /// The queue as saved: its queued and running entries.
    pub fn restore(queued: Vec<QueueEntry>, running: Vec<QueueEntry>) -> Queue {
        let by_id = |entries: Vec<QueueEntry>| entries.into_iter().map(|e| (e.build_id, e)).collect();
        Queue { queued: by_id(queued), running: by_id(running), ..Queue::default() }
    }

    /// The entries changed since the last save, and a mark for [`Queue::saved`].
    pub fn changed(&self) -> (Vec<QueueChange>, u64) {
        let change = |id: &Uuid| match (self.queued.get(id), self.running.get(id)) {
            (Some(entry), _) => QueueChange::Queued(entry.clone()),
            (None, Some(entry)) => QueueChange::Running(entry.clone()),
            (None, None) => QueueChange::Gone(*id),
        };
        (self.changed.keys().map(change).collect(), self.changes)
    }

    /// The changes [`Queue::changed`] gave with `mark` are saved.
    pub fn saved(&mut self, mark: u64) {
        self.changed.retain(|_, change| *change > mark);
    }

    fn touch(&mut self, build_id: Uuid) {
        self.changes += 1;
        self.changed.insert(build_id, self.changes);
    }

    fn finish(&mut self, build_id: Uuid) {
        self.queued.remove(&build_id);
        self.running.remove(&build_id);
    }
}
