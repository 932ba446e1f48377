//! Generated logs for the projection properties: only legal build histories, made by the domain's
//! own `decide`, with positions assigned in order.

use chrono::{DateTime, Utc};
use meshgate_domain::build::{decide, replay, BuildCommand};
use meshgate_domain::event::{BuildRequested, FoldReason, IgnoreReason, WebhookIgnored, WebhookRouted};
use meshgate_domain::{Event, Recorded};
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub enum Action {
    Request(u8),
    Fold(u8, bool),
    Claim(u8),
    Renew(u8),
    Requeue(u8),
    Succeed(u8),
    Fail(u8),
    Cancel(u8),
    /// A failure matching a retry rule (queued again below the cap of 3 attempts).
    Retry(u8),
    /// The running attempt stores an artifact.
    Artifact(u8),
    Ignored(u8),
    Routed(u8, u8),
}

pub fn action() -> impl Strategy<Value = Action> {
    let b = 0u8..4;
    prop_oneof![
        b.clone().prop_map(Action::Request),
        (b.clone(), any::<bool>()).prop_map(|(b, dup)| Action::Fold(b, dup)),
        b.clone().prop_map(Action::Claim),
        b.clone().prop_map(Action::Renew),
        b.clone().prop_map(Action::Requeue),
        b.clone().prop_map(Action::Succeed),
        b.clone().prop_map(Action::Fail),
        b.clone().prop_map(Action::Cancel),
        b.clone().prop_map(Action::Retry),
        b.clone().prop_map(Action::Artifact),
        (0u8..4).prop_map(Action::Ignored),
        (0u8..4, b).prop_map(|(f, b)| Action::Routed(f, b)),
    ]
}

pub fn at(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_787_562_900 + s, 0).unwrap_or_default()
}

fn build_id(b: u8) -> Uuid {
    Uuid::from_u128(1000 + u128::from(b))
}

fn fingerprint(f: u8) -> String {
    format!("{f:064x}")
}

/// Turns actions into a legal log; actions the domain refuses are dropped.
pub fn log_of(actions: &[Action]) -> Vec<Recorded> {
    let mut log: Vec<Recorded> = Vec::new();
    for (i, action) in actions.iter().enumerate() {
        let now = at(i as i64);
        let (stream, events) = match *action {
            Action::Ignored(f) => (
                format!("delivery-{}", fingerprint(f)),
                vec![Event::WebhookIgnored(WebhookIgnored {
                    correlation_id: Uuid::from_u128(i as u128),
                    issue_id: "MOB-1".into(),
                    reason: IgnoreReason::NoTriggerMatched,
                })],
            ),
            Action::Routed(f, b) => (
                format!("delivery-{}", fingerprint(f)),
                vec![Event::WebhookRouted(WebhookRouted {
                    correlation_id: Uuid::from_u128(i as u128),
                    issue_id: "MOB-1".into(),
                    build_ids: vec![build_id(b)],
                })],
            ),
            Action::Request(b)
            | Action::Fold(b, _)
            | Action::Claim(b)
            | Action::Renew(b)
            | Action::Requeue(b)
            | Action::Succeed(b)
            | Action::Fail(b)
            | Action::Retry(b)
            | Action::Artifact(b)
            | Action::Cancel(b) => {
                let id = build_id(b);
                let stream = meshgate_domain::stream::build_stream(id);
                let history: Vec<&Event> = log.iter().filter(|r| r.stream == stream).map(|r| &r.event).collect();
                let state = replay(history);
                let attempt = match &state {
                    meshgate_domain::BuildState::Running { attempt, .. } => *attempt,
                    _ => 1,
                };
                let command = match *action {
                    Action::Request(_) => BuildCommand::Request(Box::new(requested(id, b, now))),
                    Action::Fold(_, dup) => BuildCommand::Fold {
                        correlation_id: Uuid::from_u128(i as u128),
                        reason: if dup { FoldReason::DuplicateDelivery } else { FoldReason::Coalesced },
                    },
                    Action::Claim(_) => BuildCommand::Claim { node_id: "mac-1".into(), lease_expires_at: at(1000) },
                    Action::Renew(_) => BuildCommand::Renew {
                        node_id: "mac-1".into(),
                        attempt,
                        lease_expires_at: at(2000 - 10 * i64::from(b)),
                    },
                    Action::Requeue(_) => BuildCommand::Requeue { reason: "node_lost".into() },
                    Action::Succeed(_) => BuildCommand::Succeed { attempt },
                    Action::Fail(_) => BuildCommand::Fail { attempt, reason: "exit 1".into() },
                    Action::Retry(_) => BuildCommand::Report {
                        node_id: "mac-1".into(),
                        attempt,
                        outcome: meshgate_domain::ReportedOutcome::Failed {
                            reason: meshgate_domain::node_api::FailureReason::ScriptFailed,
                            retry_rule: Some("Failed to boot simulator".into()),
                        },
                        report: Box::default(),
                        max_attempts: 3,
                    },
                    Action::Artifact(_) => BuildCommand::StoreArtifact {
                        node_id: "mac-1".into(),
                        attempt,
                        name: format!("App-{i}.ipa"),
                        bytes: i as u64,
                        sha256: format!("{i:064x}"),
                    },
                    _ => BuildCommand::Cancel { reason: "superseded".into() },
                };
                match decide(&state, id, &command, now) {
                    Ok(events) => (stream, events),
                    Err(_) => continue,
                }
            }
        };
        for event in events {
            let version = log.iter().filter(|r| r.stream == stream).count() as u64;
            log.push(Recorded {
                position: log.len() as u64 + 1,
                stream: stream.clone(),
                version,
                event,
                correlation_id: Uuid::from_u128(i as u128),
                recorded_at: now,
            });
        }
    }
    log
}

pub fn requested(build_id: Uuid, b: u8, now: DateTime<Utc>) -> BuildRequested {
    BuildRequested {
        build_id,
        issue_id: format!("MOB-{b}"),
        project: "MOB".into(),
        summary: Some("summary".into()),
        trigger: "ios-build".into(),
        script: "ios-build".into(),
        lane: if b.is_multiple_of(2) { "default".into() } else { "signing".into() },
        git_ref: format!("feature/MOB-{b}"),
        requested_by: None,
        intent_key: format!("MOB-{b}/ios-build"),
        correlation_id: Uuid::nil(),
        requested_at: now,
        transition_at: None,
        source: Default::default(),
        xcode: (b == 3).then(|| "16.2".into()),
        rebuild_of: None,
    }
}

mod properties {
    use super::*;
    use crate::ProjectionSet;

    fn fold_all<'a>(events: impl IntoIterator<Item = &'a Recorded>) -> ProjectionSet {
        let mut set = ProjectionSet::default();
        for event in events {
            set.apply(event);
        }
        set
    }

    proptest! {
        #[test]
        fn an_event_delivered_again_any_number_of_times_changes_nothing(
            actions in proptest::collection::vec(action(), 0..60),
            replays in proptest::collection::vec((any::<proptest::sample::Index>(), any::<proptest::sample::Index>()), 0..20),
        ) {
            let log = log_of(&actions);
            let clean = fold_all(&log);
            prop_assume!(!log.is_empty());
            // Deliver the log with earlier events replayed at random later points.
            let mut delivered: Vec<&Recorded> = Vec::new();
            let mut inserts: Vec<(usize, usize)> = replays.iter().map(|(at, which)| (at.index(log.len()), which.index(log.len()))).collect();
            inserts.sort();
            let mut next = inserts.into_iter().peekable();
            for (i, event) in log.iter().enumerate() {
                delivered.push(event);
                while let Some((_, which)) = next.next_if(|(at, _)| *at == i) {
                    delivered.push(&log[which.min(i)]);
                }
            }
            prop_assert_eq!(fold_all(delivered), clean);
        }

        #[test]
        fn what_the_read_model_does_not_save_comes_back_from_the_builds_in_flight(
            actions in proptest::collection::vec(action(), 0..60),
        ) {
            // The read model saves the builds' views, not the queue, and of the stats' builds in
            // flight only those whose attempts failed (what a save after every event would hold).
            // After any event, what a load restores from the views equals the fold.
            let mut set = ProjectionSet::default();
            for event in &log_of(&actions) {
                set.apply(event);
                prop_assert_eq!(&crate::Queue::of_views(set.builds.in_memory()), &set.queue);
                let rows = set.stats.changed().flying.into_iter().filter_map(|(id, f)| f.map(|f| (id, f)));
                let restored = crate::Stats::restore(
                    set.stats.days().clone(),
                    set.stats.flight().clone(),
                    rows,
                    set.builds.in_memory(),
                );
                prop_assert_eq!(&restored, &set.stats);
            }
        }

        #[test]
        fn duplicate_deliveries_folded_into_builds_leave_their_state_unchanged(
            actions in proptest::collection::vec(action(), 0..60),
            copies in 1usize..5,
        ) {
            let without: Vec<Action> = actions.iter().filter(|a| !matches!(a, Action::Fold(_, true))).cloned().collect();
            let mut with = Vec::new();
            for a in &without {
                with.push(a.clone());
                if let Action::Request(b) | Action::Claim(b) = a {
                    with.extend(std::iter::repeat_n(Action::Fold(*b, true), copies));
                }
            }
            let a = fold_all(&log_of(&without));
            let b = fold_all(&log_of(&with));
            let states = |s: &ProjectionSet| s.builds.in_memory().map(|b| b.state.clone()).collect::<Vec<_>>();
            prop_assert_eq!(states(&a), states(&b));
            // Positions shift by the folds inserted; what is queued, and in which order, must not.
            let queue = |s: &ProjectionSet| {
                let priorities = [("signing".to_owned(), 5)].into();
                let order = |q: &crate::Queue| q.ordered(&priorities).iter().map(|e| (e.build_id, e.attempt)).collect::<Vec<_>>();
                (order(&s.queue), s.queue.running().keys().copied().collect::<Vec<_>>())
            };
            prop_assert_eq!(queue(&a), queue(&b));
        }

        #[test]
        fn saving_and_letting_finished_builds_go_along_the_way_changes_nothing_a_rebuild_sees(
            actions in proptest::collection::vec(action(), 0..80),
            saves in proptest::collection::vec(any::<bool>(), 80),
        ) {
            let log = log_of(&actions);
            let everything = fold_all(&log);
            // A live set: now and then its changed views are saved (to `disk`) and its finished
            // builds let go; a later event about one brings it back first, as the shell does.
            let mut live = ProjectionSet::default();
            let mut disk = std::collections::BTreeMap::new();
            for (event, save) in log.iter().zip(saves.iter().cycle()) {
                let missing = live.builds.missing(std::iter::once(event));
                live.builds.restore(missing.iter().filter_map(|id| disk.get(id).cloned()));
                live.apply(event);
                if *save {
                    let (views, mark) = live.builds.changed();
                    views.into_iter().for_each(|v| drop(disk.insert(v.build_id, v)));
                    live.builds.saved(mark);
                }
            }
            let (views, mark) = live.builds.changed();
            views.into_iter().for_each(|v| drop(disk.insert(v.build_id, v)));
            live.builds.saved(mark);
            let folded: std::collections::BTreeMap<_, _> =
                everything.builds.in_memory().map(|b| (b.build_id, b.clone())).collect();
            prop_assert_eq!(disk, folded);
            prop_assert!(live.builds.in_memory().all(|b| b.state.is_active()), "memory keeps the active builds only");
            // The reaper's index holds every running build, by the end of its lease.
            let mut leases: Vec<_> = everything
                .builds
                .in_memory()
                .filter_map(|b| match b.state {
                    meshgate_domain::build::BuildState::Running { lease_expires_at, .. } => Some((lease_expires_at, b.build_id)),
                    _ => None,
                })
                .collect();
            leases.sort();
            let leases: Vec<_> = leases.into_iter().map(|(_, id)| id).collect();
            prop_assert_eq!(live.builds.expired_leases(DateTime::<Utc>::MAX_UTC), leases);
            prop_assert_eq!(&live.queue, &everything.queue);
        }
    }

    #[test]
    fn the_queue_serves_higher_priority_lanes_first_then_log_order() {
        let log = log_of(&[Action::Request(0), Action::Request(1), Action::Request(2), Action::Request(3)]);
        let set = fold_all(&log);
        let priorities = [("signing".to_owned(), 10)].into();
        let order: Vec<_> = set.queue.ordered(&priorities).iter().map(|e| e.issue_id.clone()).collect();
        assert_eq!(order, ["MOB-1", "MOB-3", "MOB-0", "MOB-2"]);
    }

    #[test]
    fn a_finished_build_frees_its_intent_and_leaves_the_queue() {
        let log = log_of(&[Action::Request(0), Action::Claim(0), Action::Request(1), Action::Succeed(0)]);
        let set = fold_all(&log);
        let active: Vec<&str> =
            set.builds.in_memory().filter(|b| b.state.is_active()).map(|b| b.intent_key.as_str()).collect();
        assert_eq!(active, ["MOB-1/ios-build"]);
        assert_eq!(set.queue.len(), 1);
        assert_eq!(set.builds.list(None, Some("succeeded")).len(), 1);
    }

    #[test]
    fn a_requeued_build_returns_to_its_place_with_the_next_attempt() {
        let log = log_of(&[Action::Request(0), Action::Request(2), Action::Claim(0), Action::Requeue(0)]);
        let set = fold_all(&log);
        let order = set.queue.ordered(&Default::default());
        assert_eq!(order[0].issue_id, "MOB-0");
        assert_eq!(order[0].attempt, 2);
    }
}

/// The lanes the tests share: `default`, and `signing` (priority 10, the `signing` label, one
/// build at a time).
pub(crate) fn lanes() -> Vec<crate::LaneRule> {
    use crate::LaneRule;
    vec![
        LaneRule { name: "default".into(), priority: 0, required_labels: vec![], max_running: None, xcode: None },
        LaneRule {
            name: "signing".into(),
            priority: 10,
            required_labels: vec!["signing".into()],
            max_running: Some(1),
            xcode: None,
        },
    ]
}

mod scheduling {
    use super::*;
    use crate::{NodeAsk, ProjectionSet};

    fn fold_all(events: &[Recorded]) -> ProjectionSet {
        let mut set = ProjectionSet::default();
        events.iter().for_each(|e| set.apply(e));
        set
    }

    #[test]
    fn a_node_gets_only_lanes_whose_labels_it_has_highest_priority_first() {
        // MOB-0 and MOB-2 are in `default`, MOB-1 and MOB-3 in `signing`.
        let set = fold_all(&log_of(&[Action::Request(0), Action::Request(1), Action::Request(2), Action::Request(3)]));
        let plain: Vec<String> = vec![];
        let signer = vec!["signing".to_owned()];
        let ask = |labels| NodeAsk { node_id: "n", labels, slots: 2, xcodes: &[] };
        assert_eq!(set.queue.next_for(&lanes(), &ask(&plain)).unwrap().issue_id, "MOB-0");
        assert_eq!(set.queue.next_for(&lanes(), &ask(&signer)).unwrap().issue_id, "MOB-1");
    }

    #[test]
    fn a_lane_at_its_cap_and_a_node_at_its_slots_get_nothing_more() {
        // MOB-1 (signing) is running on mac-1: the signing lane is at its cap of 1.
        let set = fold_all(&log_of(&[Action::Request(1), Action::Request(3), Action::Claim(1)]));
        let signer = vec!["signing".to_owned()];
        let other = NodeAsk { node_id: "mac-2", labels: &signer, slots: 4, xcodes: &[] };
        assert!(set.queue.next_for(&lanes(), &other).is_none());
        let set = fold_all(&log_of(&[Action::Request(0), Action::Request(2), Action::Claim(0)]));
        let full = NodeAsk { node_id: "mac-1", labels: &signer, slots: 1, xcodes: &[] };
        assert_eq!(set.queue.held_by("mac-1"), 1);
        assert!(set.queue.next_for(&lanes(), &full).is_none());
        let roomy = NodeAsk { node_id: "mac-1", labels: &signer, slots: 2, xcodes: &[] };
        assert_eq!(set.queue.next_for(&lanes(), &roomy).unwrap().issue_id, "MOB-2");
    }
}

mod leases {
    use super::*;
    use crate::ProjectionSet;

    #[test]
    fn leases_expire_at_their_time_and_not_before() {
        // Action::Claim leases run until at(1000).
        let mut set = ProjectionSet::default();
        log_of(&[Action::Request(0), Action::Claim(0), Action::Request(1)]).iter().for_each(|e| set.apply(e));
        assert!(set.builds.expired_leases(at(999)).is_empty());
        assert_eq!(set.builds.expired_leases(at(1000)), [Uuid::from_u128(1000)]);
    }
}
