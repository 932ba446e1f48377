//! The build aggregate: one requested run of a script for an intent, as an enum state machine.
//!
//! `decide(&state, &command, now) -> Result<Vec<Event>, BuildError>` and `evolve(state, &event)`.
//! Illegal transitions are named errors, never scattered `if`s in the shell.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{
    ArtifactStored, BuildCancelled, BuildClaimed, BuildFailed, BuildLeaseRenewed, BuildReport, BuildRequestFolded,
    BuildRequested, BuildRequeued, BuildRetryScheduled, BuildSucceeded, Event, FoldReason,
};
use crate::node_api::FailureReason;

/// Where a build stands in its life.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BuildState {
    /// No event yet: the stream does not exist.
    New,
    /// Waiting for a node; `attempt` is the number the next claim will carry.
    Queued {
        attempt: u32,
    },
    /// Claimed by a node and running there under a lease.
    Running {
        attempt: u32,
        node_id: String,
        lease_expires_at: DateTime<Utc>,
    },
    Succeeded {
        attempt: u32,
    },
    Failed {
        attempt: u32,
        reason: String,
    },
    Cancelled {
        reason: String,
    },
}

impl BuildState {
    /// Queued or running: an intent with an active build coalesces new transitions into it.
    pub fn is_active(&self) -> bool {
        matches!(self, BuildState::Queued { .. } | BuildState::Running { .. })
    }

    pub fn is_finished(&self) -> bool {
        matches!(self, BuildState::Succeeded { .. } | BuildState::Failed { .. } | BuildState::Cancelled { .. })
    }

    /// The state's name as used in the API and logs.
    pub fn name(&self) -> &'static str {
        match self {
            BuildState::New => "new",
            BuildState::Queued { .. } => "queued",
            BuildState::Running { .. } => "running",
            BuildState::Succeeded { .. } => "succeeded",
            BuildState::Failed { .. } => "failed",
            BuildState::Cancelled { .. } => "cancelled",
        }
    }
}

/// How a node says an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportedOutcome {
    Succeeded,
    Failed {
        reason: FailureReason,
        /// The node's `retry_on` rule the failure matched: infrastructure, not the change.
        retry_rule: Option<String>,
    },
    /// The node stopped the build (it was cancelled, or the node is draining).
    Cancelled,
}

/// What can be asked of a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildCommand {
    Request(Box<BuildRequested>),
    Fold {
        correlation_id: Uuid,
        reason: FoldReason,
    },
    Claim {
        node_id: String,
        lease_expires_at: DateTime<Utc>,
    },
    /// A heartbeat: extends the lease of the node's current attempt.
    Renew {
        node_id: String,
        attempt: u32,
        lease_expires_at: DateTime<Utc>,
    },
    Requeue {
        reason: String,
    },
    /// The lease reaper: requeue an expired attempt, or fail the build after `max_attempts`.
    Expire {
        max_attempts: u32,
    },
    /// A node's result for its attempt. A failure that matched a retry rule queues the build again
    /// while `attempt < max_attempts`.
    Report {
        node_id: String,
        attempt: u32,
        outcome: ReportedOutcome,
        report: Box<BuildReport>,
        max_attempts: u32,
    },
    /// A file the attempt produced, uploaded by the node that holds it.
    StoreArtifact {
        node_id: String,
        attempt: u32,
        name: String,
        bytes: u64,
        sha256: String,
    },
    Succeed {
        attempt: u32,
    },
    Fail {
        attempt: u32,
        reason: String,
    },
    Cancel {
        reason: String,
    },
}

impl BuildCommand {
    fn action(&self) -> &'static str {
        match self {
            BuildCommand::Request(_) => "request",
            BuildCommand::Fold { .. } => "fold into",
            BuildCommand::Claim { .. } => "claim",
            BuildCommand::Renew { .. } => "renew the lease of",
            BuildCommand::Requeue { .. } => "requeue",
            BuildCommand::Expire { .. } => "expire the lease of",
            BuildCommand::Report { .. } => "report a result for",
            BuildCommand::StoreArtifact { .. } => "store an artifact of",
            BuildCommand::Succeed { .. } => "succeed",
            BuildCommand::Fail { .. } => "fail",
            BuildCommand::Cancel { .. } => "cancel",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("cannot {action} a build that is {state}")]
    IllegalTransition { action: &'static str, state: &'static str },
    #[error("attempt {reported} is stale: the current attempt is {current}")]
    StaleAttempt { reported: u32, current: u32 },
    #[error("attempt {attempt} is held by node {holder}, not {node}")]
    NotHolder { attempt: u32, holder: String, node: String },
    #[error("the lease runs until {lease_expires_at}")]
    LeaseNotExpired { lease_expires_at: DateTime<Utc> },
}

/// The reason of a requeue because the node's lease ran out (the node is presumed lost).
pub const LEASE_EXPIRED: &str = "lease_expired";

/// Decides what a command appends to a build's stream.
pub fn decide(
    state: &BuildState,
    build_id: Uuid,
    command: &BuildCommand,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, BuildError> {
    let illegal = || BuildError::IllegalTransition { action: command.action(), state: state.name() };
    let event = match (state, command) {
        (BuildState::New, BuildCommand::Request(requested)) => Event::BuildRequested((**requested).clone()),
        (BuildState::New, _) | (_, BuildCommand::Request(_)) => return Err(illegal()),
        (_, BuildCommand::Fold { correlation_id, reason }) => {
            if *reason == FoldReason::Coalesced && !state.is_active() {
                return Err(illegal());
            }
            Event::BuildRequestFolded(BuildRequestFolded {
                build_id,
                correlation_id: *correlation_id,
                reason: *reason,
                folded_at: now,
                transition_at: None,
            })
        }
        (BuildState::Queued { attempt }, BuildCommand::Claim { node_id, lease_expires_at }) => {
            Event::BuildClaimed(BuildClaimed {
                build_id,
                node_id: node_id.clone(),
                attempt: *attempt,
                lease_expires_at: *lease_expires_at,
            })
        }
        (
            BuildState::Running { attempt, node_id, .. },
            BuildCommand::Renew { node_id: node, attempt: reported, lease_expires_at },
        ) => {
            check_holder(*attempt, node_id, *reported, node)?;
            Event::BuildLeaseRenewed(BuildLeaseRenewed {
                build_id,
                node_id: node.clone(),
                attempt: *reported,
                lease_expires_at: *lease_expires_at,
            })
        }
        (BuildState::Running { attempt, .. }, BuildCommand::Requeue { reason }) => {
            Event::BuildRequeued(BuildRequeued { build_id, next_attempt: attempt + 1, reason: reason.clone() })
        }
        (BuildState::Running { attempt, lease_expires_at, .. }, BuildCommand::Expire { max_attempts }) => {
            if *lease_expires_at > now {
                return Err(BuildError::LeaseNotExpired { lease_expires_at: *lease_expires_at });
            }
            if *attempt >= *max_attempts {
                Event::BuildFailed(BuildFailed {
                    build_id,
                    attempt: *attempt,
                    reason: "node_lost".into(),
                    report: None,
                })
            } else {
                Event::BuildRequeued(BuildRequeued {
                    build_id,
                    next_attempt: attempt + 1,
                    reason: LEASE_EXPIRED.into(),
                })
            }
        }
        (
            BuildState::Running { attempt, node_id, .. },
            BuildCommand::Report { node_id: node, attempt: reported, outcome, report, max_attempts },
        ) => {
            check_holder(*attempt, node_id, *reported, node)?;
            let mut report = (**report).clone();
            match outcome {
                ReportedOutcome::Succeeded => {
                    Event::BuildSucceeded(BuildSucceeded { build_id, attempt: *reported, report: Some(report) })
                }
                ReportedOutcome::Failed { reason, retry_rule: Some(rule) } if reported < max_attempts => {
                    report.retry_rule = Some(rule.clone());
                    Event::BuildRetryScheduled(BuildRetryScheduled {
                        build_id,
                        attempt: *reported,
                        next_attempt: reported + 1,
                        reason: reason.as_str().to_owned(),
                        rule: rule.clone(),
                        report: Some(report),
                    })
                }
                ReportedOutcome::Failed { reason, retry_rule } => {
                    // Past the cap a retryable failure is an ordinary one; the report names the rule.
                    report.retry_rule.clone_from(retry_rule);
                    Event::BuildFailed(BuildFailed {
                        build_id,
                        attempt: *reported,
                        reason: reason.as_str().to_owned(),
                        report: Some(report),
                    })
                }
                ReportedOutcome::Cancelled => Event::BuildCancelled(BuildCancelled {
                    build_id,
                    reason: "stopped_on_node".into(),
                    cancelled_at: now,
                    report: Some(report),
                }),
            }
        }
        (
            BuildState::Running { attempt, node_id, .. },
            BuildCommand::StoreArtifact { node_id: node, attempt: reported, name, bytes, sha256 },
        ) => {
            check_holder(*attempt, node_id, *reported, node)?;
            Event::ArtifactStored(ArtifactStored {
                build_id,
                attempt: *reported,
                node_id: node.clone(),
                name: name.clone(),
                bytes: *bytes,
                sha256: sha256.clone(),
            })
        }
        (BuildState::Running { attempt: current, .. }, BuildCommand::Succeed { attempt }) => {
            check_attempt(*current, *attempt)?;
            Event::BuildSucceeded(BuildSucceeded { build_id, attempt: *attempt, report: None })
        }
        (BuildState::Running { attempt: current, .. }, BuildCommand::Fail { attempt, reason }) => {
            check_attempt(*current, *attempt)?;
            Event::BuildFailed(BuildFailed { build_id, attempt: *attempt, reason: reason.clone(), report: None })
        }
        (BuildState::Queued { .. } | BuildState::Running { .. }, BuildCommand::Cancel { reason }) => {
            Event::BuildCancelled(BuildCancelled { build_id, reason: reason.clone(), cancelled_at: now, report: None })
        }
        _ => return Err(illegal()),
    };
    Ok(vec![event])
}

fn check_holder(current: u32, holder: &str, reported: u32, node: &str) -> Result<(), BuildError> {
    check_attempt(current, reported)?;
    if holder != node {
        return Err(BuildError::NotHolder { attempt: current, holder: holder.to_owned(), node: node.to_owned() });
    }
    Ok(())
}

fn check_attempt(current: u32, reported: u32) -> Result<(), BuildError> {
    if current == reported {
        Ok(())
    } else {
        Err(BuildError::StaleAttempt { reported, current })
    }
}

/// Folds one event of the build's stream into its state. Events that do not change the state
/// (folds, or events of other streams) leave it as it is.
pub fn evolve(state: BuildState, event: &Event) -> BuildState {
    match (state, event) {
        (BuildState::New, Event::BuildRequested(_)) => BuildState::Queued { attempt: 1 },
        (BuildState::Queued { .. }, Event::BuildClaimed(e)) => {
            BuildState::Running { attempt: e.attempt, node_id: e.node_id.clone(), lease_expires_at: e.lease_expires_at }
        }
        (BuildState::Running { attempt, node_id, .. }, Event::BuildLeaseRenewed(e)) => {
            BuildState::Running { attempt, node_id, lease_expires_at: e.lease_expires_at }
        }
        (BuildState::Running { .. }, Event::BuildRequeued(e)) => BuildState::Queued { attempt: e.next_attempt },
        (BuildState::Running { .. }, Event::BuildRetryScheduled(e)) => BuildState::Queued { attempt: e.next_attempt },
        (BuildState::Running { .. }, Event::BuildSucceeded(e)) => BuildState::Succeeded { attempt: e.attempt },
        (BuildState::Running { .. }, Event::BuildFailed(e)) => {
            BuildState::Failed { attempt: e.attempt, reason: e.reason.clone() }
        }
        (BuildState::Queued { .. } | BuildState::Running { .. }, Event::BuildCancelled(e)) => {
            BuildState::Cancelled { reason: e.reason.clone() }
        }
        (state, _) => state,
    }
}

/// The state after a whole stream.
pub fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> BuildState {
    events.into_iter().fold(BuildState::New, evolve)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_787_562_900 + s, 0).unwrap()
    }

    fn id() -> Uuid {
        Uuid::from_u128(7)
    }

    fn requested() -> BuildRequested {
        BuildRequested {
            build_id: id(),
            issue_id: "MOB-1".into(),
            project: "MOB".into(),
            summary: None,
            trigger: "ios-build".into(),
            script: "ios-build".into(),
            lane: "default".into(),
            git_ref: "feature/MOB-1".into(),
            requested_by: Some("jane".into()),
            intent_key: "MOB-1/ios-build".into(),
            correlation_id: Uuid::from_u128(1),
            requested_at: t(0),
            transition_at: None,
            source: crate::event::RequestSource::Webhook,
            xcode: None,
            rebuild_of: None,
        }
    }

    /// given(events).when(command).then(events) / .then_err(error)
    struct Given(Vec<Event>);

    fn given(events: Vec<Event>) -> Given {
        Given(events)
    }

    impl Given {
        fn when(self, command: BuildCommand) -> When {
            let state = replay(&self.0);
            When(decide(&state, id(), &command, t(100)))
        }
    }

    struct When(Result<Vec<Event>, BuildError>);

    impl When {
        #[track_caller]
        fn then(self, expected: Vec<Event>) {
            assert_eq!(self.0, Ok(expected));
        }
        #[track_caller]
        fn then_err(self, expected: BuildError) {
            assert_eq!(self.0, Err(expected));
        }
    }

    fn claimed(attempt: u32) -> Event {
        Event::BuildClaimed(BuildClaimed { build_id: id(), node_id: "mac-1".into(), attempt, lease_expires_at: t(120) })
    }

    #[test]
    fn a_new_build_is_requested_and_queued() {
        given(vec![]).when(BuildCommand::Request(Box::new(requested()))).then(vec![Event::BuildRequested(requested())]);
        assert_eq!(replay(&[Event::BuildRequested(requested())]), BuildState::Queued { attempt: 1 });
    }

    #[test]
    fn a_build_cannot_be_requested_twice() {
        given(vec![Event::BuildRequested(requested())])
            .when(BuildCommand::Request(Box::new(requested())))
            .then_err(BuildError::IllegalTransition { action: "request", state: "queued" });
    }

    #[test]
    fn a_queued_build_is_claimed_with_its_attempt() {
        given(vec![Event::BuildRequested(requested())])
            .when(BuildCommand::Claim { node_id: "mac-1".into(), lease_expires_at: t(120) })
            .then(vec![claimed(1)]);
    }

    #[test]
    fn a_requeued_build_is_claimed_with_the_next_attempt() {
        let requeued =
            Event::BuildRequeued(BuildRequeued { build_id: id(), next_attempt: 2, reason: "node_lost".into() });
        given(vec![Event::BuildRequested(requested()), claimed(1), requeued])
            .when(BuildCommand::Claim { node_id: "mac-1".into(), lease_expires_at: t(120) })
            .then(vec![claimed(2)]);
    }

    #[test]
    fn a_result_for_a_stale_attempt_is_refused() {
        let requeued =
            Event::BuildRequeued(BuildRequeued { build_id: id(), next_attempt: 2, reason: "node_lost".into() });
        given(vec![Event::BuildRequested(requested()), claimed(1), requeued, claimed(2)])
            .when(BuildCommand::Succeed { attempt: 1 })
            .then_err(BuildError::StaleAttempt { reported: 1, current: 2 });
    }

    #[test]
    fn only_one_result_is_ever_accepted() {
        let done = Event::BuildSucceeded(BuildSucceeded { build_id: id(), attempt: 1, report: None });
        given(vec![Event::BuildRequested(requested()), claimed(1), done])
            .when(BuildCommand::Fail { attempt: 1, reason: "exit 1".into() })
            .then_err(BuildError::IllegalTransition { action: "fail", state: "succeeded" });
    }

    #[test]
    fn coalescing_needs_an_active_build_but_duplicates_fold_forever() {
        let cancelled = Event::BuildCancelled(BuildCancelled {
            build_id: id(),
            reason: "x".into(),
            cancelled_at: t(1),
            report: None,
        });
        let history = vec![Event::BuildRequested(requested()), cancelled];
        given(history.clone())
            .when(BuildCommand::Fold { correlation_id: Uuid::from_u128(2), reason: FoldReason::Coalesced })
            .then_err(BuildError::IllegalTransition { action: "fold into", state: "cancelled" });
        given(history)
            .when(BuildCommand::Fold { correlation_id: Uuid::from_u128(2), reason: FoldReason::DuplicateDelivery })
            .then(vec![Event::BuildRequestFolded(BuildRequestFolded {
                build_id: id(),
                correlation_id: Uuid::from_u128(2),
                reason: FoldReason::DuplicateDelivery,
                folded_at: t(100),
                transition_at: None,
            })]);
    }

    #[test]
    fn a_finished_build_cannot_be_cancelled() {
        let failed = Event::BuildFailed(BuildFailed { build_id: id(), attempt: 1, reason: "x".into(), report: None });
        given(vec![Event::BuildRequested(requested()), claimed(1), failed])
            .when(BuildCommand::Cancel { reason: "superseded".into() })
            .then_err(BuildError::IllegalTransition { action: "cancel", state: "failed" });
    }

    fn report(node: &str, attempt: u32) -> BuildCommand {
        BuildCommand::Report {
            node_id: node.into(),
            attempt,
            outcome: ReportedOutcome::Succeeded,
            report: Box::new(BuildReport { node_id: node.into(), ..BuildReport::default() }),
            max_attempts: 3,
        }
    }

    fn failed_with_rule(attempt: u32, max_attempts: u32) -> BuildCommand {
        BuildCommand::Report {
            node_id: "mac-1".into(),
            attempt,
            outcome: ReportedOutcome::Failed {
                reason: FailureReason::ScriptFailed,
                retry_rule: Some("Failed to boot simulator".into()),
            },
            report: Box::new(BuildReport { node_id: "mac-1".into(), exit_code: Some(65), ..BuildReport::default() }),
            max_attempts,
        }
    }

    #[test]
    fn a_failure_matching_a_retry_rule_queues_the_next_attempt_until_the_cap_then_fails_naming_the_rule() {
        let history = vec![Event::BuildRequested(requested()), claimed(1)];
        let retried = decide(&replay(&history), id(), &failed_with_rule(1, 2), t(100)).unwrap();
        let Event::BuildRetryScheduled(retry) = &retried[0] else { panic!("{retried:?}") };
        assert_eq!((retry.attempt, retry.next_attempt, retry.rule.as_str()), (1, 2, "Failed to boot simulator"));
        assert_eq!(retry.report.as_ref().unwrap().retry_rule.as_deref(), Some("Failed to boot simulator"));
        let mut history = history;
        history.extend(retried);
        assert_eq!(replay(&history), BuildState::Queued { attempt: 2 });
        history.push(claimed(2));
        let last = decide(&replay(&history), id(), &failed_with_rule(2, 2), t(100)).unwrap();
        let Event::BuildFailed(failed) = &last[0] else { panic!("{last:?}") };
        assert_eq!(failed.reason, "script_failed");
        assert_eq!(failed.report.as_ref().unwrap().retry_rule.as_deref(), Some("Failed to boot simulator"));
        // A failure without a rule is final at once.
        let plain = BuildCommand::Report {
            node_id: "mac-1".into(),
            attempt: 1,
            outcome: ReportedOutcome::Failed { reason: FailureReason::ScriptFailed, retry_rule: None },
            report: Box::default(),
            max_attempts: 3,
        };
        let history = vec![Event::BuildRequested(requested()), claimed(1)];
        assert!(matches!(&decide(&replay(&history), id(), &plain, t(100)).unwrap()[0], Event::BuildFailed(_)));
    }

    #[test]
    fn only_the_holder_of_the_running_attempt_stores_artifacts() {
        let store = |node: &str, attempt| BuildCommand::StoreArtifact {
            node_id: node.into(),
            attempt,
            name: "App.ipa".into(),
            bytes: 3,
            sha256: "ab".repeat(32),
        };
        let history = vec![Event::BuildRequested(requested()), claimed(1)];
        given(history.clone()).when(store("mac-1", 1)).then(vec![Event::ArtifactStored(ArtifactStored {
            build_id: id(),
            attempt: 1,
            node_id: "mac-1".into(),
            name: "App.ipa".into(),
            bytes: 3,
            sha256: "ab".repeat(32),
        })]);
        given(history.clone()).when(store("mac-2", 1)).then_err(BuildError::NotHolder {
            attempt: 1,
            holder: "mac-1".into(),
            node: "mac-2".into(),
        });
        let done = Event::BuildSucceeded(BuildSucceeded { build_id: id(), attempt: 1, report: None });
        given(vec![Event::BuildRequested(requested()), claimed(1), done])
            .when(store("mac-1", 1))
            .then_err(BuildError::IllegalTransition { action: "store an artifact of", state: "succeeded" });
    }

    #[test]
    fn the_holder_of_the_current_attempt_renews_and_reports() {
        let history = vec![Event::BuildRequested(requested()), claimed(1)];
        given(history.clone())
            .when(BuildCommand::Renew { node_id: "mac-1".into(), attempt: 1, lease_expires_at: t(300) })
            .then(vec![Event::BuildLeaseRenewed(BuildLeaseRenewed {
                build_id: id(),
                node_id: "mac-1".into(),
                attempt: 1,
                lease_expires_at: t(300),
            })]);
        given(history.clone()).when(report("mac-2", 1)).then_err(BuildError::NotHolder {
            attempt: 1,
            holder: "mac-1".into(),
            node: "mac-2".into(),
        });
        let renewed = Event::BuildLeaseRenewed(BuildLeaseRenewed {
            build_id: id(),
            node_id: "mac-1".into(),
            attempt: 1,
            lease_expires_at: t(300),
        });
        let state = replay(&[Event::BuildRequested(requested()), claimed(1), renewed]);
        assert!(matches!(state, BuildState::Running { lease_expires_at, .. } if lease_expires_at == t(300)));
    }

    #[test]
    fn an_expired_lease_requeues_until_the_last_attempt_then_fails_with_node_lost() {
        // claimed(n) leases run until t(120); decide runs at t(100) in the harness, so use replay.
        let history = vec![Event::BuildRequested(requested()), claimed(1)];
        let state = replay(&history);
        assert_eq!(
            decide(&state, id(), &BuildCommand::Expire { max_attempts: 2 }, t(100)),
            Err(BuildError::LeaseNotExpired { lease_expires_at: t(120) })
        );
        let requeue = decide(&state, id(), &BuildCommand::Expire { max_attempts: 2 }, t(121)).unwrap();
        assert!(matches!(&requeue[0], Event::BuildRequeued(r) if r.next_attempt == 2 && r.reason == "lease_expired"));
        let mut history = history;
        history.extend(requeue);
        history.push(claimed(2));
        let lost = decide(&replay(&history), id(), &BuildCommand::Expire { max_attempts: 2 }, t(121)).unwrap();
        assert!(matches!(&lost[0], Event::BuildFailed(f) if f.reason == "node_lost" && f.attempt == 2));
    }

    #[test]
    fn folds_do_not_change_the_state() {
        let fold = Event::BuildRequestFolded(BuildRequestFolded {
            build_id: id(),
            correlation_id: Uuid::from_u128(3),
            reason: FoldReason::DuplicateDelivery,
            folded_at: t(5),
            transition_at: None,
        });
        let state = replay(&[Event::BuildRequested(requested()), fold.clone(), fold]);
        assert_eq!(state, BuildState::Queued { attempt: 1 });
    }
}
