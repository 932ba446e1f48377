//! Which builds `meshgate log archive` may move out of the live log: a fold over the log that
//! knows, for every build, where it stands, when it was last heard of, whether its notifications
//! are decided, and the positions of its streams.
//!
//! A build's streams are its own (`build-…`), its page's (`page-…`) and its notification keys'
//! (`notification-…`, told by their first event's build id). They move whole or not at all, and
//! only when the build finished, nothing about it was recorded at or after the cut, every
//! notification about it was delivered or abandoned, and none of its events is the log's last (the
//! position the next append counts from).
//!
//! The current build of each intent (the last one its stream activated) stays whatever its age:
//! a late copy of a change is folded by comparing it with the intent's current build, whose
//! stream must be there to say which transition it was started for. Older builds of an intent are
//! never compared with, so they may go.
//!
//! A delivery's stream (`delivery-…`: the body as received, where it was routed) goes with the
//! builds it was routed to, once all of them go (or went in an earlier archive: a build the live
//! log no longer holds), and one routed nowhere (ignored) goes on its own; in both cases only when
//! nothing of it was recorded at or after the cut. Events of other streams that name a build (an
//! intent's activation, a node's claim of a lane, a click in chat) stay: they belong to streams
//! that go on.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use meshgate_domain::build::BuildState;
use meshgate_domain::notification::NotificationState;
use meshgate_domain::stream::BUILD_PREFIX;
use meshgate_domain::{Event, Recorded};
use uuid::Uuid;

const PAGE_PREFIX: &str = "page-";
const NOTIFICATION_PREFIX: &str = "notification-";
const DELIVERY_PREFIX: &str = "delivery-";
use meshgate_domain::stream::INTENT_PREFIX;

/// The fold; [`ArchivePlanner::plan`] says what may go.
#[derive(Debug, Default)]
pub struct ArchivePlanner {
    builds: HashMap<Uuid, Candidate>,
    /// Which build each notification stream is about (by its first event).
    notifications: HashMap<String, Uuid>,
    deliveries: HashMap<String, Delivery>,
    /// Each intent's current build, by the intent's stream.
    current: HashMap<String, Uuid>,
}

/// A delivery's stream as the planner sees it.
#[derive(Debug, Default)]
struct Delivery {
    last_at: Option<DateTime<Utc>>,
    /// The builds it was routed to (started or folded into), by every copy and replay.
    builds: Vec<Uuid>,
    positions: Vec<u64>,
}

#[derive(Debug)]
struct Candidate {
    state: BuildState,
    /// When anything of its streams was last recorded.
    last_at: DateTime<Utc>,
    /// Notification keys about it, by stream, as they stand.
    notifications: HashMap<String, NotificationState>,
    /// Every position of its streams, in log order.
    positions: Vec<u64>,
}

impl Candidate {
    fn new(at: DateTime<Utc>) -> Self {
        Candidate { state: BuildState::New, last_at: at, notifications: HashMap::new(), positions: Vec::new() }
    }
}

/// What may go, and why the rest stays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchivePlan {
    /// The builds whose streams go, in no particular order.
    pub builds: Vec<Uuid>,
    /// What goes, a build's or a delivery's streams at a time (each to be removed whole), each
    /// with its positions in log order.
    pub groups: Vec<Vec<u64>>,
    /// Their events' positions, in log order.
    pub positions: Vec<u64>,
    /// Builds kept because they are queued or running (or their stream was never requested).
    pub unfinished: usize,
    /// Finished builds kept because something about them was recorded at or after the cut.
    pub recent: usize,
    /// Finished builds before the cut kept because a notification about them is not decided.
    pub undecided: usize,
    /// A build kept because it holds the log's last event.
    pub last: usize,
    /// Finished builds kept because each is the current build of its issue and trigger.
    pub current: usize,
    /// Deliveries whose streams go (with their builds, or routed nowhere).
    pub deliveries: usize,
}

/// Which build a stream belongs to, by its name, when the name says so.
fn named_build(stream: &str) -> Option<Uuid> {
    let id = stream.strip_prefix(BUILD_PREFIX).or_else(|| stream.strip_prefix(PAGE_PREFIX))?;
    Uuid::parse_str(id).ok()
}

impl ArchivePlanner {
    /// Folds one event of the log (every type: the planner reads them all).
    pub fn apply(&mut self, recorded: &Recorded) {
        let stream = recorded.stream.as_str();
        if let (true, Event::IntentActivated(e)) = (stream.starts_with(INTENT_PREFIX), &recorded.event) {
            self.current.insert(stream.to_owned(), e.build_id);
            return;
        }
        if stream.starts_with(DELIVERY_PREFIX) {
            let delivery = self.deliveries.entry(stream.to_owned()).or_default();
            delivery.last_at = delivery.last_at.max(Some(recorded.recorded_at));
            delivery.positions.push(recorded.position);
            match &recorded.event {
                Event::WebhookRouted(e) => delivery.builds.extend_from_slice(&e.build_ids),
                Event::DeliveryReplayed(e) => delivery.builds.extend_from_slice(&e.build_ids),
                _ => {}
            }
            return;
        }
        let build_id = if let Some(id) = named_build(stream) {
            id
        } else if stream.starts_with(NOTIFICATION_PREFIX) {
            match self.notifications.get(stream) {
                Some(id) => *id,
                None => {
                    // A key's stream is the build's when its first event says so; one that names
                    // no build (a queue notice) stays in the log.
                    let Some(id) = recorded.event.build_id() else { return };
                    self.notifications.insert(stream.to_owned(), id);
                    id
                }
            }
        } else {
            return;
        };
        let candidate = self.builds.entry(build_id).or_insert_with(|| Candidate::new(recorded.recorded_at));
        candidate.last_at = candidate.last_at.max(recorded.recorded_at);
        candidate.positions.push(recorded.position);
        if stream.starts_with(BUILD_PREFIX) {
            let state = std::mem::replace(&mut candidate.state, BuildState::New);
            candidate.state = meshgate_domain::build::evolve(state, &recorded.event);
        } else if stream.starts_with(NOTIFICATION_PREFIX) {
            let state = candidate.notifications.remove(stream).unwrap_or(NotificationState::Pending);
            let state = meshgate_domain::notification::evolve(state, &recorded.event);
            candidate.notifications.insert(stream.to_owned(), state);
        }
    }

    /// The builds whose streams may leave a log whose last position is `head`, for a cut at
    /// `before`.
    pub fn plan(self, before: DateTime<Utc>, head: u64) -> ArchivePlan {
        let mut plan = ArchivePlan::default();
        let mut kept = std::collections::HashSet::new();
        let current: std::collections::HashSet<Uuid> = self.current.into_values().collect();
        for (build_id, candidate) in self.builds {
            let stays = if !candidate.state.is_finished() {
                &mut plan.unfinished
            } else if candidate.last_at >= before {
                &mut plan.recent
            } else if candidate.notifications.values().any(|n| !n.is_done()) {
                &mut plan.undecided
            } else if candidate.positions.contains(&head) {
                &mut plan.last
            } else if current.contains(&build_id) {
                &mut plan.current
            } else {
                plan.positions.extend_from_slice(&candidate.positions);
                plan.builds.push(build_id);
                plan.groups.push(candidate.positions);
                continue;
            };
            *stays += 1;
            kept.insert(build_id);
        }
        for delivery in self.deliveries.into_values() {
            let old = delivery.last_at.is_some_and(|at| at < before);
            if old && !delivery.builds.iter().any(|b| kept.contains(b)) && !delivery.positions.contains(&head) {
                plan.positions.extend_from_slice(&delivery.positions);
                plan.groups.push(delivery.positions);
                plan.deliveries += 1;
            }
        }
        plan.positions.sort_unstable();
        plan
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use meshgate_domain::event::{
        BuildClaimed, BuildSucceeded, NotificationAbandoned, NotificationAttempted, NotificationDelivered,
        PageRequested,
    };
    use meshgate_domain::notification::AbandonReason;
    use meshgate_domain::notify::Milestone;
    use meshgate_domain::stream::{build_stream, notification_stream, page_stream};

    use super::*;

    struct Log {
        events: Vec<Recorded>,
        at: DateTime<Utc>,
    }

    impl Log {
        fn new() -> Self {
            Log { events: Vec::new(), at: DateTime::from_timestamp(1_780_000_000, 0).unwrap() }
        }

        fn push(&mut self, stream: String, event: Event) -> u64 {
            let position = self.events.len() as u64 + 1;
            self.at += Duration::minutes(1);
            self.events.push(Recorded {
                position,
                stream,
                version: 0,
                event,
                correlation_id: Uuid::nil(),
                recorded_at: self.at,
            });
            position
        }

        fn new_id(&self) -> Uuid {
            Uuid::from_u128(self.events.len() as u128 + 1)
        }

        fn request(&mut self, build_id: Uuid) {
            let requested = crate::testing::requested(build_id, 1, self.at);
            self.push(build_stream(build_id), Event::BuildRequested(requested));
        }

        fn claim(&mut self, build_id: Uuid) {
            let lease_expires_at = self.at + Duration::minutes(5);
            let claimed = BuildClaimed { build_id, node_id: "mac-1".into(), attempt: 1, lease_expires_at };
            self.push(build_stream(build_id), Event::BuildClaimed(claimed));
        }

        fn succeed(&mut self, build_id: Uuid) {
            let done = BuildSucceeded { build_id, attempt: 1, report: None };
            self.push(build_stream(build_id), Event::BuildSucceeded(done));
        }

        fn finished(&mut self) -> Uuid {
            let id = self.new_id();
            self.request(id);
            self.claim(id);
            self.succeed(id);
            id
        }

        fn notify(&mut self, build_id: Uuid, sink: &str, outcome: Option<bool>) {
            let key = format!("{sink}/{build_id}/succeeded");
            let stream = notification_stream(&key);
            let milestone = Milestone::Succeeded;
            let attempted = NotificationAttempted {
                key: key.clone(),
                sink: sink.into(),
                build_id,
                milestone,
                attempt: 1,
                status: Some(503),
                excerpt: String::new(),
                next_attempt_at: Some(self.at + Duration::minutes(1)),
            };
            self.push(stream.clone(), Event::NotificationAttempted(attempted));
            match outcome {
                Some(true) => {
                    let delivered = NotificationDelivered {
                        key,
                        sink: sink.into(),
                        build_id,
                        milestone,
                        attempts: 2,
                        message_ref: None,
                    };
                    self.push(stream, Event::NotificationDelivered(delivered));
                }
                Some(false) => {
                    let abandoned = NotificationAbandoned {
                        key,
                        sink: sink.into(),
                        build_id,
                        milestone,
                        attempts: 2,
                        reason: AbandonReason::GaveUp { attempts: 2 },
                    };
                    self.push(stream, Event::NotificationAbandoned(abandoned));
                }
                None => {}
            }
        }

        fn plan(&self, before: DateTime<Utc>) -> ArchivePlan {
            self.plan_ids(before).0
        }

        /// The plan, and the ids of the builds it moves, sorted.
        fn plan_ids(&self, before: DateTime<Utc>) -> (ArchivePlan, Vec<Uuid>) {
            let mut planner = ArchivePlanner::default();
            for e in &self.events {
                planner.apply(e);
            }
            let plan = planner.plan(before, self.events.len() as u64);
            let mut ids = plan.builds.clone();
            ids.sort();
            (plan, ids)
        }

        fn positions_of(&self, build_id: Uuid) -> Vec<u64> {
            let mut streams = vec![build_stream(build_id), page_stream(build_id)];
            let keys = self.events.iter().filter(|e| e.event.build_id() == Some(build_id));
            streams.extend(keys.filter(|e| e.stream.starts_with(NOTIFICATION_PREFIX)).map(|e| e.stream.clone()));
            self.events.iter().filter(|e| streams.contains(&e.stream)).map(|e| e.position).collect()
        }
    }

    #[test]
    fn a_finished_build_goes_with_its_page_and_its_decided_notifications() {
        let mut log = Log::new();
        let build = log.finished();
        log.notify(build, "slack", Some(true));
        log.notify(build, "youtrack", Some(false));
        let page = PageRequested { build_id: build, issue_id: "MOB-1".into(), reason: "both failed".into() };
        log.push(page_stream(build), Event::PageRequested(page));
        let later = log.finished();
        let cut = log.at + Duration::minutes(1);

        let (plan, ids) = log.plan_ids(cut);
        assert_eq!(ids, vec![build]);
        assert_eq!(plan.positions, log.positions_of(build));
        assert_eq!(plan.groups, std::slice::from_ref(&plan.positions));
        assert_eq!(plan.positions.len(), 3 + 2 + 2 + 1, "build, two keys (attempt and outcome), page");
        assert_eq!(
            (plan.recent, plan.unfinished, plan.undecided, plan.last),
            (0, 0, 0, 1),
            "{later} holds the last event"
        );
    }

    #[test]
    fn unfinished_recent_and_undecided_builds_stay() {
        let mut log = Log::new();
        let running = log.new_id();
        log.request(running);
        log.claim(running);
        let undecided = log.finished();
        log.notify(undecided, "slack", None);
        let cut = log.at + Duration::seconds(30);
        let recent = log.finished();
        let _last = log.finished();

        let plan = log.plan(cut);
        assert!(plan.builds.is_empty() && plan.positions.is_empty(), "{plan:?}");
        assert_eq!((plan.unfinished, plan.undecided, plan.recent), (1, 1, 2), "{recent}");
    }

    #[test]
    fn a_build_heard_of_after_the_cut_stays_whatever_stream_it_was_heard_in() {
        let mut log = Log::new();
        let build = log.finished();
        let cut = log.at + Duration::seconds(30);
        // Its notification was decided after the cut.
        log.notify(build, "slack", Some(true));
        log.finished();
        let plan = log.plan(cut);
        assert!(plan.builds.is_empty());
        assert_eq!(plan.recent, 2);
    }

    #[test]
    fn a_delivery_goes_with_the_builds_it_was_routed_to_or_alone_when_ignored() {
        use meshgate_domain::event::{WebhookIgnored, WebhookRouted};
        let mut log = Log::new();
        let routed = |id: Uuid| {
            Event::WebhookRouted(WebhookRouted { correlation_id: id, issue_id: "MOB-1".into(), build_ids: vec![id] })
        };
        let gone = log.finished();
        let with_gone = log.push("delivery-a".into(), routed(gone));
        let running = log.new_id();
        log.request(running);
        let with_running = log.push("delivery-b".into(), routed(running));
        let ignored = Event::WebhookIgnored(WebhookIgnored {
            correlation_id: Uuid::nil(),
            issue_id: "MOB-2".into(),
            reason: meshgate_domain::event::IgnoreReason::NoTriggerMatched,
        });
        let alone = log.push("delivery-c".into(), ignored);
        // A build archived earlier: the live log no longer holds it.
        let earlier = log.push("delivery-d".into(), routed(Uuid::from_u128(999)));
        let cut = log.at + Duration::seconds(30);
        let late = log.push("delivery-e".into(), routed(gone));
        log.finished();

        let plan = log.plan(cut);
        assert_eq!(plan.deliveries, 3, "{plan:?}");
        for p in [with_gone, alone, earlier] {
            assert!(plan.positions.contains(&p), "{p}");
        }
        for p in [with_running, late] {
            assert!(!plan.positions.contains(&p), "{p}");
        }
        assert_eq!(plan.groups.len(), plan.builds.len() + 3);
    }

    #[test]
    fn an_intent_s_current_build_stays_and_the_builds_it_replaced_go() {
        use meshgate_domain::event::IntentActivated;
        let mut log = Log::new();
        let activated = |build_id: Uuid| {
            let activated =
                IntentActivated { intent_key: "MOB-1/ios-build".into(), build_id, correlation_id: Uuid::nil() };
            Event::IntentActivated(activated)
        };
        let first = log.finished();
        log.push("intent-MOB-1/ios-build".into(), activated(first));
        let second = log.finished();
        log.push("intent-MOB-1/ios-build".into(), activated(second));
        log.finished();
        let (plan, ids) = log.plan_ids(log.at + Duration::minutes(1));
        assert!(ids.contains(&first) && !ids.contains(&second), "{ids:?}");
        assert_eq!(plan.current, 1);
    }

    #[test]
    fn a_notice_that_names_no_build_is_no_build_of_its_own() {
        let mut log = Log::new();
        let build = log.finished();
        log.finished();
        let (_, ids) = log.plan_ids(log.at + Duration::minutes(1));
        assert_eq!(ids, vec![build]);
        // Nothing but build streams and their keys is read.
        assert!(named_build("node-mac-1").is_none() && named_build("page-not-a-uuid").is_none());
    }
}
