//! `queue`: builds waiting for a node, ordered by lane priority, then log position.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use meshgate_domain::build::BuildState;
use meshgate_domain::xcode::{can_run, Xcode};
use meshgate_domain::{Event, Recorded};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{BuildView, Projection};

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
    /// The Xcode its trigger requires (its lane's otherwise applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xcode: Option<String>,
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
    /// The Xcode the lane's builds require when their trigger names none.
    pub xcode: Option<String>,
}

impl LaneRule {
    /// The Xcode a build of this lane requires: its trigger's, else the lane's.
    pub fn xcode_for<'a>(&'a self, entry: &'a QueueEntry) -> Option<&'a str> {
        entry.xcode.as_deref().or(self.xcode.as_deref())
    }
}

/// A node asking for work.
#[derive(Debug, Clone, Copy)]
pub struct NodeAsk<'a> {
    pub node_id: &'a str,
    pub labels: &'a [String],
    pub slots: usize,
    pub xcodes: &'a [Xcode],
}

/// Queued builds. Running builds are kept aside so that a requeue restores their entry.
#[derive(Debug, Clone, Default)]
pub struct Queue {
    queued: BTreeMap<Uuid, QueueEntry>,
    running: BTreeMap<Uuid, QueueEntry>,
    /// The queued builds of each lane in log order: a claim reads the head of each lane instead
    /// of sorting the whole queue (which a backlog makes deep).
    lanes: BTreeMap<String, BTreeSet<(u64, Uuid)>>,
    /// How many queued builds of each lane name each Xcode of their own (`None`: none, the lane's
    /// applies): whether anyone can serve a lane depends on these alone, not on its depth.
    xcodes: BTreeMap<String, BTreeMap<Option<String>, usize>>,
}

/// The queue's state; the lanes' orders are an index of it.
impl PartialEq for Queue {
    fn eq(&self, other: &Queue) -> bool {
        self.queued == other.queued && self.running == other.running
    }
}

impl Eq for Queue {}

impl QueueEntry {
    /// The entry of a queued or running build (running: with its node) as its view has it. The
    /// queue is not saved: the read model restores it from the views of the builds in flight,
    /// which hold all it keeps (the property tests check the two agree after any sequence of
    /// events).
    pub fn of_view(view: &BuildView) -> Option<QueueEntry> {
        let (attempt, node_id) = match &view.state {
            BuildState::Queued { attempt } => (*attempt, None),
            BuildState::Running { attempt, node_id, .. } => (*attempt, Some(node_id.clone())),
            _ => return None,
        };
        Some(QueueEntry {
            build_id: view.build_id,
            issue_id: view.issue_id.clone(),
            lane: view.lane.clone(),
            script: view.script.clone(),
            position: view.position,
            attempt,
            node_id,
            xcode: view.xcode.clone(),
        })
    }
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
    /// whose lane is below its `max_running`, whose (issue, script) is not running already, and
    /// whose Xcode requirement (its trigger's, else its lane's) one of the node's Xcodes meets.
    /// Lanes missing from `lanes` have priority 0, no labels and no cap.
    pub fn next_for(&self, lanes: &[LaneRule], node: &NodeAsk<'_>) -> Option<&QueueEntry> {
        self.next_unpaused(lanes, node, |_| false)
    }

    /// [`Queue::next_for`], skipping the lanes `paused` says are held.
    pub fn next_unpaused(
        &self,
        lanes: &[LaneRule],
        node: &NodeAsk<'_>,
        paused: impl Fn(&str) -> bool,
    ) -> Option<&QueueEntry> {
        if self.held_by(node.node_id) >= node.slots {
            return None;
        }
        let default = LaneRule::default();
        let rule = |lane: &str| lanes.iter().find(|l| l.name == lane).unwrap_or(&default);
        // What runs, counted once: per lane, and the (issue, script) pairs.
        let mut running_in: HashMap<&str, usize> = HashMap::new();
        let mut busy: HashSet<(&str, &str)> = HashSet::new();
        for r in self.running.values() {
            *running_in.entry(r.lane.as_str()).or_default() += 1;
            busy.insert((r.issue_id.as_str(), r.script.as_str()));
        }
        // The lanes with queued builds, highest priority first; within a priority, log order
        // across its lanes: the earliest of each lane's first claimable build.
        let mut levels: BTreeMap<Reverse<i64>, Vec<(&str, &LaneRule)>> = BTreeMap::new();
        for lane in self.lanes.keys() {
            let rule = rule(lane);
            levels.entry(Reverse(rule.priority)).or_default().push((lane, rule));
        }
        for at_level in levels.values() {
            let mut best: Option<&QueueEntry> = None;
            for (lane, rule) in at_level {
                let labelled = rule.required_labels.iter().all(|l| node.labels.contains(l));
                let below_cap = rule.max_running.is_none_or(|cap| running_in.get(lane).copied().unwrap_or(0) < cap);
                if !labelled || !below_cap || paused(lane) {
                    continue;
                }
                let first = self.lanes[*lane]
                    .iter()
                    .filter_map(|(_, id)| self.queued.get(id))
                    .filter(|e| can_run(rule.xcode_for(e), node.xcodes))
                    .find(|e| !busy.contains(&(e.issue_id.as_str(), e.script.as_str())));
                if let Some(entry) = first {
                    if best.is_none_or(|b| entry.position < b.position) {
                        best = Some(entry);
                    }
                }
            }
            if best.is_some() {
                return best;
            }
        }
        None
    }

    /// How many builds of `lane` are queued and how many run (without sorting anything).
    pub fn in_lane(&self, lane: &str) -> (usize, usize) {
        (self.queued_count_in(lane), self.running.values().filter(|r| r.lane == lane).count())
    }

    /// The queued builds of `lane`, in log order.
    pub fn queued_in<'a>(&'a self, lane: &str) -> impl Iterator<Item = &'a QueueEntry> + 'a {
        self.queued_in_from(lane, 0)
    }

    /// The queued builds of `lane` from log position `position` on, in log order.
    pub fn queued_in_from<'a>(&'a self, lane: &str, position: u64) -> impl Iterator<Item = &'a QueueEntry> + 'a {
        let order = self.lanes.get(lane).map(|order| order.range((position, Uuid::nil())..));
        order.into_iter().flatten().filter_map(|(_, id)| self.queued.get(id))
    }

    /// The Xcode requirements of `lane`'s queued builds, each once: a build's own, `None` for the
    /// builds that name none (the lane's requirement applies to them).
    pub fn xcodes_queued_in<'a>(&'a self, lane: &str) -> impl Iterator<Item = Option<&'a str>> + 'a {
        self.xcodes.get(lane).into_iter().flat_map(|counts| counts.keys().map(Option::as_deref))
    }

    /// The lanes with queued builds.
    pub fn lanes_queued(&self) -> impl Iterator<Item = &str> {
        self.lanes.keys().map(String::as_str)
    }

    /// How many builds of `lane` are queued.
    pub fn queued_count_in(&self, lane: &str) -> usize {
        self.lanes.get(lane).map_or(0, BTreeSet::len)
    }

    /// How many builds of `lane` are queued before log position `position`, counted from the
    /// nearer end: as many steps as the shorter side has builds (a lane's newest builds behind a
    /// long backlog are counted from the back).
    pub fn queued_before_in(&self, lane: &str, position: u64) -> usize {
        let Some(order) = self.lanes.get(lane) else { return 0 };
        let key = (position, Uuid::nil());
        let (mut earlier, mut later) = (order.range(..key), order.range(key..));
        let mut steps = 0;
        loop {
            match (earlier.next(), later.next()) {
                (None, _) => return steps,
                (Some(_), None) => return order.len() - steps,
                (Some(_), Some(_)) => steps += 1,
            }
        }
    }

    /// The queued build of `lane` that has waited longest (the first in log order).
    pub fn oldest_in(&self, lane: &str) -> Option<&QueueEntry> {
        self.lanes.get(lane)?.first().and_then(|(_, id)| self.queued.get(id))
    }

    /// The queued entries, by build.
    pub fn queued(&self) -> &BTreeMap<Uuid, QueueEntry> {
        &self.queued
    }

    /// The running entries, by build.
    pub fn running(&self) -> &BTreeMap<Uuid, QueueEntry> {
        &self.running
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
    /// 2: saved one row per entry, not whole. 3: entries carry their Xcode requirement; retries
    /// requeue. 4: not saved, restored from the builds in flight.
    const VERSION: u32 = 4;

    fn wants(event_type: &str) -> bool {
        matches!(
            event_type,
            "BuildRequested"
                | "BuildClaimed"
                | "BuildRequeued"
                | "BuildRetryScheduled"
                | "BuildSucceeded"
                | "BuildFailed"
                | "BuildCancelled"
        )
    }

    fn apply(&mut self, recorded: &Recorded) {
        match &recorded.event {
            Event::BuildRequested(e) => {
                self.enqueue(QueueEntry {
                    build_id: e.build_id,
                    issue_id: e.issue_id.clone(),
                    lane: e.lane.clone(),
                    script: e.script.clone(),
                    position: recorded.position,
                    attempt: 1,
                    node_id: None,
                    xcode: e.xcode.clone(),
                });
            }
            Event::BuildClaimed(e) => {
                if let Some(mut entry) = self.dequeue(e.build_id) {
                    entry.attempt = e.attempt;
                    entry.node_id = Some(e.node_id.clone());
                    self.running.insert(e.build_id, entry);
                }
            }
            Event::BuildRequeued(e) => self.requeue(e.build_id, e.next_attempt),
            Event::BuildRetryScheduled(e) => self.requeue(e.build_id, e.next_attempt),
            Event::BuildSucceeded(e) => self.finish(e.build_id),
            Event::BuildFailed(e) => self.finish(e.build_id),
            Event::BuildCancelled(e) => self.finish(e.build_id),
            _ => {}
        }
    }
}

impl Queue {
    /// The queue of the builds in flight, from their views ([`QueueEntry::of_view`]).
    pub fn of_views<'a>(views: impl IntoIterator<Item = &'a BuildView>) -> Queue {
        let (running, queued) = views.into_iter().filter_map(QueueEntry::of_view).partition(|e| e.node_id.is_some());
        Queue::restore(queued, running)
    }

    /// The queue of these queued and running entries.
    pub fn restore(queued: Vec<QueueEntry>, running: Vec<QueueEntry>) -> Queue {
        let mut queue = Queue { running: running.into_iter().map(|e| (e.build_id, e)).collect(), ..Queue::default() };
        for entry in queued {
            queue.enqueue(entry);
        }
        queue
    }

    /// Queues an entry, in its lane's order too.
    fn enqueue(&mut self, entry: QueueEntry) {
        self.dequeue(entry.build_id);
        self.lanes.entry(entry.lane.clone()).or_default().insert((entry.position, entry.build_id));
        *self.xcodes.entry(entry.lane.clone()).or_default().entry(entry.xcode.clone()).or_default() += 1;
        self.queued.insert(entry.build_id, entry);
    }

    /// Takes an entry out of the queue and of its lane's order.
    fn dequeue(&mut self, build_id: Uuid) -> Option<QueueEntry> {
        let entry = self.queued.remove(&build_id)?;
        self.unlane(&entry);
        Some(entry)
    }

    fn unlane(&mut self, entry: &QueueEntry) {
        if let Some(order) = self.lanes.get_mut(&entry.lane) {
            order.remove(&(entry.position, entry.build_id));
            if order.is_empty() {
                self.lanes.remove(&entry.lane);
            }
        }
        if let Some(counts) = self.xcodes.get_mut(&entry.lane) {
            if let Some(count) = counts.get_mut(&entry.xcode) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&entry.xcode);
                }
            }
            if counts.is_empty() {
                self.xcodes.remove(&entry.lane);
            }
        }
    }

    /// A running build back in the queue, in its place.
    fn requeue(&mut self, build_id: Uuid, next_attempt: u32) {
        if let Some(mut entry) = self.running.remove(&build_id) {
            entry.attempt = next_attempt;
            entry.node_id = None;
            self.enqueue(entry);
        }
    }

    fn finish(&mut self, build_id: Uuid) {
        self.dequeue(build_id);
        self.running.remove(&build_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a claim chooses, by its definition: every queued build sorted by lane priority, then
    /// log position, and the first that the node may run.
    fn by_definition<'a>(queue: &'a Queue, lanes: &[LaneRule], node: &NodeAsk<'_>) -> Option<&'a QueueEntry> {
        if queue.held_by(node.node_id) >= node.slots {
            return None;
        }
        let default = LaneRule::default();
        let rule = |lane: &str| lanes.iter().find(|l| l.name == lane).unwrap_or(&default);
        let mut candidates: Vec<&QueueEntry> = queue.queued.values().collect();
        candidates.sort_by_key(|e| (-rule(&e.lane).priority, e.position));
        candidates.into_iter().find(|entry| {
            let lane = rule(&entry.lane);
            let labelled = lane.required_labels.iter().all(|l| node.labels.contains(l));
            let running_in_lane = queue.running.values().filter(|r| r.lane == entry.lane).count();
            let below_cap = lane.max_running.is_none_or(|cap| running_in_lane < cap);
            let intent_free = !queue.running.values().any(|r| r.issue_id == entry.issue_id && r.script == entry.script);
            let xcode = entry.xcode.as_deref().or(lane.xcode.as_deref());
            let has_xcode = xcode.is_none_or(|x| node.xcodes.iter().any(|n| n.version.split('.').next() == Some(x)));
            labelled && below_cap && intent_free && has_xcode
        })
    }

    const LANES: [&str; 3] = ["default", "signing", "nightly"];
    const LABELS: [&str; 2] = ["signing", "xcode-16"];

    /// Xcode majors a build or lane may require, and a node may have.
    const XCODES: [&str; 3] = ["15", "16", "17"];

    fn entry() -> impl Strategy<Value = (usize, usize, usize, bool, usize, Option<usize>)> {
        // lane, issue, script, running, node, xcode
        (0..3usize, 0..4usize, 0..2usize, any::<bool>(), 0..2usize, proptest::option::weighted(0.3, 0..3usize))
    }

    fn rule() -> impl Strategy<Value = (i64, Vec<bool>, Option<usize>, Option<usize>)> {
        (
            -1..2i64,
            proptest::collection::vec(any::<bool>(), 2),
            proptest::option::of(0..3usize),
            proptest::option::weighted(0.3, 0..3usize),
        )
    }

    proptest! {
        /// The lanes' order gives the claim the definition gives, whatever the queue, the lanes'
        /// rules (some lanes unconfigured) and the node; after requeues and finishes too.
        #[test]
        fn a_claim_reads_the_lanes_heads_and_chooses_as_the_sorted_queue_would(
            entries in proptest::collection::vec(entry(), 0..40),
            rules in proptest::collection::vec(rule(), 3),
            configured in proptest::collection::vec(any::<bool>(), 3),
            node_labels in proptest::collection::vec(any::<bool>(), 2),
            node_xcodes in proptest::collection::vec(any::<bool>(), 3),
            node in 0..2usize,
            slots in 0..4usize,
            shuffle in proptest::collection::vec(0..40usize, 0..10),
        ) {
            let made: Vec<QueueEntry> = entries
                .iter()
                .enumerate()
                .map(|(i, (lane, issue, script, running, node, xcode))| QueueEntry {
                    build_id: Uuid::from_u128(i as u128 + 1),
                    issue_id: format!("MOB-{issue}"),
                    lane: LANES[*lane].into(),
                    script: format!("script-{script}"),
                    position: 1000 - 7 * i as u64,
                    attempt: 1,
                    node_id: running.then(|| format!("mac-{node}")),
                    xcode: xcode.map(|x| XCODES[x].to_owned()),
                })
                .collect();
            let (running, queued): (Vec<_>, Vec<_>) = made.into_iter().partition(|e| e.node_id.is_some());
            let mut queue = Queue::restore(queued, running);
            // Some builds move: a running one requeued (back to its place), a queued one finished.
            for i in shuffle {
                let id = Uuid::from_u128(i as u128 + 1);
                if let Some(mut entry) = queue.running.remove(&id) {
                    entry.node_id = None;
                    queue.enqueue(entry);
                } else {
                    queue.finish(id);
                }
            }
            // The lanes' Xcode requirements are those of their queued builds, each once.
            for lane in LANES {
                let mut defined: Vec<Option<&str>> =
                    queue.queued.values().filter(|e| e.lane == lane).map(|e| e.xcode.as_deref()).collect();
                defined.sort_unstable();
                defined.dedup();
                prop_assert_eq!(queue.xcodes_queued_in(lane).collect::<Vec<_>>(), defined, "{}", lane);
            }
            let lanes: Vec<LaneRule> = rules
                .iter()
                .zip(LANES)
                .zip(&configured)
                .filter(|(_, configured)| **configured)
                .map(|(((priority, labels, cap, xcode), name), _)| LaneRule {
                    name: name.into(),
                    priority: *priority,
                    required_labels: LABELS.iter().zip(labels).filter(|(_, on)| **on).map(|(l, _)| (*l).into()).collect(),
                    max_running: *cap,
                    xcode: xcode.map(|x| XCODES[x].to_owned()),
                })
                .collect();
            let labels: Vec<String> = LABELS.iter().zip(&node_labels).filter(|(_, on)| **on).map(|(l, _)| (*l).into()).collect();
            let node_id = format!("mac-{node}");
            let xcodes: Vec<Xcode> = XCODES
                .iter()
                .zip(&node_xcodes)
                .filter(|(_, on)| **on)
                .map(|(major, _)| Xcode { version: format!("{major}.2"), path: format!("/Applications/Xcode-{major}.app") })
                .collect();
            let ask = NodeAsk { node_id: &node_id, labels: &labels, slots, xcodes: &xcodes };
            prop_assert_eq!(queue.next_for(&lanes, &ask), by_definition(&queue, &lanes, &ask));
            let laned: usize = queue.lanes.values().map(BTreeSet::len).sum();
            prop_assert_eq!(laned, queue.queued.len(), "every queued build is in its lane's order, once");
        }
    }
}
