//! Why a queued build waits, computed from the queue and the nodes when asked (never stored): no
//! live node; no live node with the lane's labels or the build's Xcode; the lane's `max_running`
//! taken; every node that could run it busy; the same change already running; builds ahead of it.
//! Costs the work in flight (the queue's lanes, the running builds, the nodes), never history.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use meshgate_domain::xcode::can_run;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{LaneRule, NodeView, Queue, QueueEntry};

/// Why a queued build has not been claimed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Waiting {
    /// An operator holds its lane (or every lane).
    Paused { by: String, why: String, since: chrono::DateTime<chrono::Utc> },
    /// No node is live (polling for work or running a build, not draining, not lost).
    NoNodes,
    /// Live nodes exist, none with what the build needs.
    NoNodeWith {
        /// The lane's labels.
        labels: Vec<String>,
        /// The Xcode the build requires (its trigger's, else its lane's).
        xcode: Option<String>,
    },
    /// The lane runs at most `max_running` builds at once, and these hold it.
    LaneFull { max_running: usize, running: Vec<Uuid> },
    /// Every live node that could run it has its slots taken.
    NodesBusy { nodes: usize, slots: usize },
    /// A build of the same issue and script runs; this one follows it.
    SameChangeRunning { build_id: Uuid },
    /// Builds ahead of it (higher priority lanes, or earlier in its own) that its nodes take first;
    /// 0: it is next.
    Ahead { builds: usize },
}

impl Waiting {
    /// Its name, as the API's `reason` says it.
    pub fn reason(&self) -> &'static str {
        match self {
            Waiting::Paused { .. } => "paused",
            Waiting::NoNodes => "no_nodes",
            Waiting::NoNodeWith { .. } => "no_node_with",
            Waiting::LaneFull { .. } => "lane_full",
            Waiting::NodesBusy { .. } => "nodes_busy",
            Waiting::SameChangeRunning { .. } => "same_change_running",
            Waiting::Ahead { .. } => "ahead",
        }
    }
}

/// Whether no live node could ever claim the queued builds of `rule`'s lane: none has the lane's
/// labels and the Xcode of each of them (a lane with nothing queued is servable).
///
/// Asked every second per lane and at each scrape, under the projections' read lock, while the
/// lane's backlog may be deep (it grows while nobody can serve it): the nodes are asked once per
/// Xcode the lane's builds require, whatever the depth.
pub fn unservable<'a>(
    rule: &LaneRule,
    queue: &Queue,
    nodes: impl Iterator<Item = &'a NodeView>,
    live: impl Fn(&NodeView) -> bool,
) -> bool {
    let mut required = queue.xcodes_queued_in(&rule.name).peekable();
    if required.peek().is_none() {
        return false;
    }
    let live: Vec<&NodeView> = nodes.filter(|n| !n.draining && !n.lost && live(n)).collect();
    required.all(|own| !live.iter().any(|n| capable(n, rule, own.or(rule.xcode.as_deref()))))
}

/// Whether `node` can run a build of `rule`'s lane that requires `xcode`.
fn capable(node: &NodeView, rule: &LaneRule, xcode: Option<&str>) -> bool {
    rule.required_labels.iter().all(|l| node.labels.contains(l)) && can_run(xcode, &node.xcodes)
}

/// Why `entry` waits. `live` says which nodes are live; `lanes` are the configured lanes (one
/// missing has priority 0, no labels and no cap); `paused` what an operator holds.
pub fn waiting<'a>(
    entry: &QueueEntry,
    queue: &Queue,
    nodes: impl Iterator<Item = &'a NodeView>,
    lanes: &[LaneRule],
    paused: &meshgate_domain::pause::Paused,
    live: impl Fn(&NodeView) -> bool,
) -> Waiting {
    let live = live_nodes(nodes, live);
    let able = match held_back(entry, queue, &live, lanes, paused) {
        Ok(able) => able,
        Err(reason) => return reason,
    };
    // Ahead: queued builds its nodes would take first: every build of a higher priority lane
    // they can run (counted, not read), and those requested earlier in a lane of the same
    // priority.
    let priority = rule_of(lanes, &entry.lane).priority;
    let ahead = queue
        .lanes_queued()
        .filter(|lane| takes_lane(&able, lanes, lane))
        .map(|lane| match rule_of(lanes, lane).priority.cmp(&priority) {
            std::cmp::Ordering::Greater => queue.queued_count_in(lane),
            std::cmp::Ordering::Equal => queue.queued_before_in(lane, entry.position),
            std::cmp::Ordering::Less => 0,
        })
        .sum();
    Waiting::Ahead { builds: ahead }
}

/// Which queued builds [`waiting_all`] answers for: the first `limit` in the order nodes get them,
/// of every lane or of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice<'a> {
    pub lane: Option<&'a str>,
    pub limit: usize,
}

impl Slice<'_> {
    /// Every queued build.
    pub const ALL: Slice<'static> = Slice { lane: None, limit: usize::MAX };
}

/// Why the queued builds of `slice` wait, in the order nodes get them (`Queue::ordered`): what
/// [`waiting`] says of each, in one pass. The builds ahead of each are counted from how many of
/// each lane came before it, not over the whole queue again, and the walk ends at the slice's
/// last build: lanes of a higher priority than the slice's lane are counted whole, their builds
/// never visited, lanes of a lower one are not read, and a slice of one lane starts at its first
/// build, the builds of its priority before it counted. `GET /api/v1/queue` answers with it.
pub fn waiting_all<'q, 'a>(
    queue: &'q Queue,
    nodes: impl Iterator<Item = &'a NodeView>,
    lanes: &[LaneRule],
    paused: &meshgate_domain::pause::Paused,
    live: impl Fn(&NodeView) -> bool,
    slice: Slice<'_>,
) -> Vec<(&'q QueueEntry, Waiting)> {
    let live = live_nodes(nodes, live);
    // The lanes with queued builds by priority, highest first (`rule_of` gives each its rule).
    let mut levels: BTreeMap<Reverse<i64>, Vec<&'q str>> = BTreeMap::new();
    for lane in queue.lanes_queued() {
        levels.entry(Reverse(rule_of(lanes, lane).priority)).or_default().push(lane);
    }
    let level_of_slice = slice.lane.map(|lane| Reverse(rule_of(lanes, lane).priority));
    // Builds of each lane met so far in the order, which are ahead of the next one if its nodes
    // take that lane.
    let mut before: Vec<(&str, usize)> = Vec::new();
    let mut all = Vec::new();
    for (level, names) in &levels {
        if all.len() >= slice.limit || level_of_slice.is_some_and(|of_slice| *level > of_slice) {
            break;
        }
        if level_of_slice.is_some_and(|of_slice| *level < of_slice) {
            // Wholly ahead of the slice's builds (for the nodes that take them).
            before.extend(names.iter().map(|lane| (*lane, queue.queued_count_in(lane))));
            continue;
        }
        // With a lane asked for, the walk starts at its first build, the level's other lanes'
        // builds before it counted rather than visited, and ends with its builds.
        let from = match slice.lane {
            None => 0,
            Some(lane) => match queue.queued_in(lane).next() {
                Some(first) => first.position,
                None => break,
            },
        };
        if from > 0 {
            before.extend(names.iter().map(|lane| (*lane, queue.queued_before_in(lane, from))));
        }
        // The level's lanes in log order: each lane's builds are, so merge them by position.
        let mut heads: Vec<_> = names
            .iter()
            .map(|lane| {
                let mut rest = queue.queued_in_from(lane, from);
                (rest.next(), rest)
            })
            .collect();
        let lane_of_slice = slice.lane.and_then(|lane| names.iter().position(|name| *name == lane));
        while all.len() < slice.limit {
            if lane_of_slice.is_some_and(|at| heads[at].0.is_none()) {
                break;
            }
            let first = heads
                .iter_mut()
                .filter_map(|(head, rest)| Some((head.as_ref()?.position, head, rest)))
                .min_by_key(|h| h.0);
            let Some((_, head, rest)) = first else { break };
            let Some(entry) = std::mem::replace(head, rest.next()) else { break };
            if slice.lane.is_none_or(|lane| lane == entry.lane) {
                let why = match held_back(entry, queue, &live, lanes, paused) {
                    Err(reason) => reason,
                    Ok(able) => Waiting::Ahead {
                        builds: before.iter().filter(|(lane, _)| takes_lane(&able, lanes, lane)).map(|(_, n)| n).sum(),
                    },
                };
                all.push((entry, why));
            }
            match before.iter_mut().find(|(lane, _)| *lane == entry.lane) {
                Some((_, n)) => *n += 1,
                None => before.push((&entry.lane, 1)),
            }
        }
    }
    all
}

/// The live nodes: polling for work or running a build (`live`), not draining, not lost.
fn live_nodes<'a>(nodes: impl Iterator<Item = &'a NodeView>, live: impl Fn(&NodeView) -> bool) -> Vec<&'a NodeView> {
    nodes.filter(|n| !n.draining && !n.lost && live(n)).collect()
}

/// A lane's rule; one not configured has priority 0, no labels and no cap.
fn rule_of<'r>(lanes: &'r [LaneRule], lane: &str) -> &'r LaneRule {
    static UNCONFIGURED: LaneRule =
        LaneRule { name: String::new(), priority: 0, required_labels: Vec::new(), max_running: None, xcode: None };
    lanes.iter().find(|l| l.name == lane).unwrap_or(&UNCONFIGURED)
}

/// What holds `entry` back other than builds ahead of it, in the order [`Waiting`] lists them;
/// none: the live nodes able to run it (which take it once the builds ahead are gone).
fn held_back<'n>(
    entry: &QueueEntry,
    queue: &Queue,
    live: &[&'n NodeView],
    lanes: &[LaneRule],
    paused: &meshgate_domain::pause::Paused,
) -> Result<Vec<&'n NodeView>, Waiting> {
    if let Some(pause) = paused.of(&entry.lane) {
        return Err(Waiting::Paused { by: pause.by.clone(), why: pause.reason.clone(), since: pause.since });
    }
    let rule = rule_of(lanes, &entry.lane);
    let xcode = rule.xcode_for(entry);
    if live.is_empty() {
        return Err(Waiting::NoNodes);
    }
    let able: Vec<&NodeView> = live.iter().copied().filter(|n| capable(n, rule, xcode)).collect();
    if able.is_empty() {
        return Err(Waiting::NoNodeWith { labels: rule.required_labels.clone(), xcode: xcode.map(str::to_owned) });
    }
    if let Some(cap) = rule.max_running {
        let running: Vec<Uuid> =
            queue.running().values().filter(|r| r.lane == entry.lane).map(|r| r.build_id).collect();
        if running.len() >= cap {
            return Err(Waiting::LaneFull { max_running: cap, running });
        }
    }
    if let Some(same) = queue.running().values().find(|r| r.issue_id == entry.issue_id && r.script == entry.script) {
        return Err(Waiting::SameChangeRunning { build_id: same.build_id });
    }
    let free = able.iter().filter(|n| n.running.len() < n.slots as usize).count();
    if free == 0 {
        return Err(Waiting::NodesBusy { nodes: able.len(), slots: able.iter().map(|n| n.slots as usize).sum() });
    }
    Ok(able)
}

/// Whether some of `able` has `lane`'s labels: builds only other nodes could run are not ahead.
fn takes_lane(able: &[&NodeView], lanes: &[LaneRule], lane: &str) -> bool {
    let rule = rule_of(lanes, lane);
    able.iter().any(|n| rule.required_labels.iter().all(|l| n.labels.contains(l)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::testing::lanes;
    use meshgate_domain::pause::{Pause, Paused};

    fn entry(id: u128, issue: &str, lane: &str, node: Option<&str>) -> QueueEntry {
        QueueEntry {
            build_id: Uuid::from_u128(id),
            issue_id: issue.into(),
            lane: lane.into(),
            script: "ios-build".into(),
            position: id as u64,
            attempt: 1,
            node_id: node.map(str::to_owned),
            xcode: None,
        }
    }

    fn node(id: &str, labels: &[&str], slots: u32, running: &[u128]) -> NodeView {
        NodeView {
            node_id: id.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            slots,
            xcodes: Vec::new(),
            last_seen: chrono::DateTime::from_timestamp(1_787_562_900, 0).unwrap(),
            running: running.iter().map(|n| Uuid::from_u128(*n)).collect::<BTreeSet<_>>(),
            draining: false,
            lost: false,
        }
    }

    fn why(queue: &Queue, id: u128, nodes: &[NodeView]) -> Waiting {
        let entry = &queue.queued()[&Uuid::from_u128(id)];
        waiting(entry, queue, nodes.iter(), &lanes(), &Paused::default(), |_| true)
    }

    #[test]
    fn each_reason_in_its_order() {
        let all =
            [(1, "MOB-1", "default"), (2, "MOB-2", "default"), (3, "SIGN-1", "signing"), (4, "SIGN-2", "signing")];
        let queue = Queue::restore(all.iter().map(|(n, issue, lane)| entry(*n, issue, lane, None)).collect(), vec![]);
        assert_eq!(why(&queue, 1, &[]), Waiting::NoNodes);
        let plain = node("mac-1", &[], 1, &[]);
        assert_eq!(
            why(&queue, 3, std::slice::from_ref(&plain)),
            Waiting::NoNodeWith { labels: vec!["signing".into()], xcode: None }
        );
        // The signing builds go first on a node that can run them; MOB-1 is next among the rest.
        let signer = node("mac-2", &["signing"], 2, &[]);
        assert_eq!(why(&queue, 1, &[plain.clone(), signer.clone()]), Waiting::Ahead { builds: 2 });
        assert_eq!(
            why(&queue, 1, std::slice::from_ref(&plain)),
            Waiting::Ahead { builds: 0 },
            "only other nodes run signing"
        );
        assert_eq!(why(&queue, 2, std::slice::from_ref(&plain)), Waiting::Ahead { builds: 1 });
        // SIGN-1 runs: the lane is full for SIGN-2.
        let rest = [(1, "MOB-1", "default"), (2, "MOB-2", "default"), (4, "SIGN-2", "signing")];
        let queue = Queue::restore(
            rest.iter().map(|(n, issue, lane)| entry(*n, issue, lane, None)).collect(),
            vec![entry(3, "SIGN-1", "signing", Some("mac-2"))],
        );
        let signer = node("mac-2", &["signing"], 2, &[3]);
        assert_eq!(
            why(&queue, 4, std::slice::from_ref(&signer)),
            Waiting::LaneFull { max_running: 1, running: vec![Uuid::from_u128(3)] }
        );
        // Every node able to run MOB-1 busy.
        let busy = node("mac-1", &[], 1, &[9]);
        assert_eq!(why(&queue, 1, &[busy]), Waiting::NodesBusy { nodes: 1, slots: 1 });
        // Draining and lost nodes, and those not live, do not count.
        let draining = NodeView { draining: true, ..plain.clone() };
        assert_eq!(why(&queue, 1, &[draining]), Waiting::NoNodes);
        let entry = &queue.queued()[&Uuid::from_u128(1)];
        assert_eq!(
            waiting(entry, &queue, std::slice::from_ref(&plain).iter(), &lanes(), &Paused::default(), |_| false),
            Waiting::NoNodes
        );
        let mut held = Paused::default();
        let since = chrono::DateTime::from_timestamp(1_787_562_900, 0).unwrap();
        let pause = Pause { by: "admin".into(), reason: "Xcode upgrade".into(), since };
        held.lanes.insert("default".into(), pause);
        let paused = waiting(entry, &queue, std::slice::from_ref(&plain).iter(), &lanes(), &held, |_| true);
        assert_eq!(paused, Waiting::Paused { by: "admin".into(), why: "Xcode upgrade".into(), since });
        // The signing lane: no live node can serve it without a signing node.
        assert!(unservable(&lanes()[1], &queue, std::slice::from_ref(&plain).iter(), |_| true));
        assert!(!unservable(&lanes()[1], &queue, [plain.clone(), signer].iter(), |_| true));
        assert!(!unservable(&lanes()[0], &Queue::default(), [plain].iter(), |_| true), "nothing queued");
    }

    proptest::proptest! {
        /// One pass over the ordered queue says of every build what `waiting` says of it alone, in
        /// the order nodes get them; a slice says it of the slice's builds.
        #[test]
        fn waiting_all_says_what_waiting_says_of_each(
            queued in proptest::collection::vec((0..3usize, 0..4usize, proptest::option::weighted(0.3, 0..3usize)), 0..24),
            running in proptest::collection::vec((0..3usize, 0..4usize, 0..3usize), 0..4),
            rules in proptest::collection::vec((-1..2i64, proptest::bool::ANY, proptest::option::of(1..3usize)), 3),
            configured in proptest::collection::vec(proptest::bool::ANY, 3),
            nodes in proptest::collection::vec((proptest::bool::ANY, 1..3u32, proptest::collection::vec(proptest::bool::ANY, 3), 0..4usize), 0..4),
            paused_lane in proptest::option::weighted(0.2, 0..3usize),
            slice_lane in proptest::option::of(0..3usize),
            limit in 0..26usize,
        ) {
            const LANES: [&str; 3] = ["default", "signing", "nightly"];
            const XCODES: [&str; 3] = ["15", "16", "17"];
            let at = |i: usize| QueueEntry { position: 10 * i as u64 + 1, ..entry(i as u128 + 1, "", "", None) };
            let waiting_builds = queued.iter().enumerate().map(|(i, (lane, issue, xcode))| QueueEntry {
                issue_id: format!("MOB-{issue}"),
                lane: LANES[*lane].into(),
                xcode: xcode.map(|x| XCODES[x].to_owned()),
                ..at(i)
            });
            let running_builds = running.iter().enumerate().map(|(i, (lane, issue, node))| QueueEntry {
                issue_id: format!("MOB-{issue}"),
                lane: LANES[*lane].into(),
                node_id: Some(format!("mac-{node}")),
                ..at(100 + i)
            });
            let queue = Queue::restore(waiting_builds.collect(), running_builds.collect());
            let lanes: Vec<LaneRule> = rules
                .iter()
                .zip(LANES)
                .zip(&configured)
                .filter(|(_, on)| **on)
                .map(|(((priority, signing, cap), name), _)| LaneRule {
                    name: name.into(),
                    priority: *priority,
                    required_labels: if *signing { vec!["signing".into()] } else { vec![] },
                    max_running: *cap,
                    xcode: None,
                })
                .collect();
            let views: Vec<NodeView> = nodes
                .iter()
                .enumerate()
                .map(|(i, (signing, slots, has, state))| {
                    let labels: &[&str] = if *signing { &["signing"] } else { &[] };
                    let running: Vec<u128> = (0..u128::from(*slots)).filter(|_| *state == 3).map(|n| 100 + n).collect();
                    NodeView {
                        xcodes: XCODES
                            .iter()
                            .zip(has)
                            .filter(|(_, has)| **has)
                            .map(|(v, _)| meshgate_domain::xcode::Xcode { version: format!("{v}.0"), path: String::new() })
                            .collect(),
                        draining: *state == 1,
                        lost: *state == 2,
                        ..node(&format!("mac-{i}"), labels, *slots, &running)
                    }
                })
                .collect();
            let mut paused = Paused::default();
            if let Some(lane) = paused_lane {
                let since = chrono::DateTime::from_timestamp(1_787_562_900, 0).unwrap();
                paused.lanes.insert(LANES[lane].into(), Pause { by: "admin".into(), reason: "upgrade".into(), since });
            }
            let all = waiting_all(&queue, views.iter(), &lanes, &paused, |_| true, Slice::ALL);
            let priorities = lanes.iter().map(|l| (l.name.clone(), l.priority)).collect();
            let order: Vec<Uuid> = queue.ordered(&priorities).iter().map(|e| e.build_id).collect();
            proptest::prop_assert_eq!(all.iter().map(|(e, _)| e.build_id).collect::<Vec<_>>(), order);
            for (entry, why) in &all {
                proptest::prop_assert_eq!(why, &waiting(entry, &queue, views.iter(), &lanes, &paused, |_| true));
            }
            // A slice is the whole answer's builds of its lane, the first `limit` of them.
            let lane = slice_lane.map(|l| LANES[l]);
            let sliced = waiting_all(&queue, views.iter(), &lanes, &paused, |_| true, Slice { lane, limit });
            let expected: Vec<_> =
                all.iter().filter(|(e, _)| lane.is_none_or(|l| e.lane == l)).take(limit).cloned().collect();
            proptest::prop_assert_eq!(sliced, expected);
        }
    }

    /// What `unservable` answers, by its definition: every queued build of the lane, every node.
    fn unservable_by_definition(rule: &LaneRule, queue: &Queue, nodes: &[NodeView], live: &[bool]) -> bool {
        let mut queued = queue.queued().values().filter(|e| e.lane == rule.name).peekable();
        queued.peek().is_some()
            && queued.all(|e| {
                !nodes
                    .iter()
                    .zip(live)
                    .any(|(n, live)| *live && !n.draining && !n.lost && capable(n, rule, rule.xcode_for(e)))
            })
    }

    proptest::proptest! {
        /// Reading only the lane's builds, none when no node is live, and asking the nodes once
        /// per Xcode requirement answers as the definition does.
        #[test]
        fn unservable_answers_as_its_definition(
            builds in proptest::collection::vec((0..2usize, proptest::option::weighted(0.5, 0..3usize)), 0..12),
            lane_xcode in proptest::option::of(0..3usize),
            needs_signing in proptest::bool::ANY,
            nodes in proptest::collection::vec(
                (proptest::bool::ANY, proptest::collection::vec(proptest::bool::ANY, 3), 0..4usize),
                0..4,
            ),
        ) {
            const XCODES: [&str; 3] = ["15", "16", "17"];
            let queue = Queue::restore(
                builds
                    .iter()
                    .enumerate()
                    .map(|(i, (lane, xcode))| QueueEntry {
                        xcode: xcode.map(|x| XCODES[x].to_owned()),
                        ..entry(i as u128 + 1, "MOB-1", ["default", "signing"][*lane], None)
                    })
                    .collect(),
                vec![],
            );
            let rule = LaneRule {
                name: "signing".into(),
                required_labels: if needs_signing { vec!["signing".into()] } else { vec![] },
                xcode: lane_xcode.map(|x| XCODES[x].to_owned()),
                ..LaneRule::default()
            };
            // Each node: its labels, the Xcodes it has, and whether it is live, draining or lost.
            let (views, live): (Vec<NodeView>, Vec<bool>) = nodes
                .iter()
                .enumerate()
                .map(|(i, (signing, has, state))| {
                    let labels: &[&str] = if *signing { &["signing"] } else { &[] };
                    let xcodes = XCODES
                        .iter()
                        .zip(has)
                        .filter(|(_, has)| **has)
                        .map(|(v, _)| meshgate_domain::xcode::Xcode { version: format!("{v}.0"), path: format!("/Applications/Xcode-{v}.app") })
                        .collect();
                    let view = NodeView {
                        xcodes,
                        draining: *state == 1,
                        lost: *state == 2,
                        ..node(&format!("mac-{i}"), labels, 1, &[])
                    };
                    (view, *state != 3)
                })
                .unzip();
            let is_live = |n: &NodeView| views.iter().zip(&live).any(|(v, live)| v.node_id == n.node_id && *live);
            proptest::prop_assert_eq!(
                unservable(&rule, &queue, views.iter(), is_live),
                unservable_by_definition(&rule, &queue, &views, &live)
            );
        }
    }
}
