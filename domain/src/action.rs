//! What people ask of a build where they are, decided once for every way of asking: a rebuild (the
//! dashboard, the API, the CLI, a Slack button, a Matrix reaction) and an action from chat, which
//! is recorded once per request, allowed or not, with what became of it.
//!
//! A rebuild is a new build of the same issue, trigger, script, lane, git ref and Xcode as the
//! build it repeats, with a number of its own; it becomes its intent's current build, so a rebuild
//! asked for while the intent's build is queued or running starts nothing new.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::build::{decide, replay};
use crate::event::{BuildActionRequested, BuildRebuilt, BuildRequested, Event, IntentActivated, RequestSource};
use crate::intent::{IntentView, PlannedAppend};
use crate::stream::{action_stream, build_stream, intent_stream, ExpectedVersion};
use crate::trigger::IntentKey;
use crate::BuildCommand;

/// What a chat action asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Rebuild,
    Cancel,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Rebuild => "rebuild",
            ActionKind::Cancel => "cancel",
        }
    }

    pub fn parse(name: &str) -> Option<ActionKind> {
        [ActionKind::Rebuild, ActionKind::Cancel].into_iter().find(|k| k.as_str() == name)
    }
}

/// What became of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionOutcome {
    /// A new build was started.
    Rebuilt,
    /// The issue's build for the trigger was already queued or running: nothing new started.
    AlreadyQueued,
    Cancelled,
    /// The build had finished: there was nothing to cancel.
    AlreadyFinished,
    /// The user is not among the sink's `allowed_users`: nothing was done.
    NotAllowed,
}

impl ActionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionOutcome::Rebuilt => "rebuilt",
            ActionOutcome::AlreadyQueued => "already_queued",
            ActionOutcome::Cancelled => "cancelled",
            ActionOutcome::AlreadyFinished => "already_finished",
            ActionOutcome::NotAllowed => "not_allowed",
        }
    }
}

/// Who asked, where, and when.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// As the timeline names them: `admin`, a Slack user id, a Matrix user id.
    pub by: &'a str,
    /// `admin`, `slack` or `matrix`.
    pub via: &'a str,
    pub correlation_id: Uuid,
    pub at: DateTime<Utc>,
}

/// What a rebuild decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebuildDecision {
    /// A new build, `build_id`, repeats the old one.
    Started { build_id: Uuid, appends: Vec<PlannedAppend> },
    /// The intent's build is queued or running (the build itself, or a rebuild of it): that one
    /// answers the request.
    AlreadyQueued { build_id: Uuid },
}

impl RebuildDecision {
    pub fn build_id(&self) -> Uuid {
        match self {
            RebuildDecision::Started { build_id, .. } | RebuildDecision::AlreadyQueued { build_id } => *build_id,
        }
    }
}

/// The first event of a build's stream: what was asked for.
pub fn requested(build: &[Event]) -> Option<&BuildRequested> {
    build.iter().find_map(|e| match e {
        Event::BuildRequested(r) => Some(r),
        _ => None,
    })
}

/// Decides a rebuild of `original` given its intent as the log has it now.
pub fn decide_rebuild(
    original: &BuildRequested,
    intent: &IntentView,
    who: &Requester<'_>,
    new_build_id: impl FnOnce() -> Uuid,
) -> RebuildDecision {
    if let Some(current) = intent.current.as_ref().filter(|c| c.state.is_active()) {
        return RebuildDecision::AlreadyQueued { build_id: current.build_id };
    }
    let build_id = new_build_id();
    let key = IntentKey::new(&original.issue_id, &original.trigger);
    let appends = vec![
        PlannedAppend {
            stream: intent_stream(&key),
            expected: ExpectedVersion::from_current(intent.version),
            events: vec![Event::IntentActivated(IntentActivated {
                intent_key: original.intent_key.clone(),
                build_id,
                correlation_id: who.correlation_id,
            })],
        },
        PlannedAppend {
            stream: build_stream(build_id),
            expected: ExpectedVersion::NoStream,
            events: vec![Event::BuildRequested(BuildRequested {
                build_id,
                requested_by: Some(who.by.to_owned()),
                correlation_id: who.correlation_id,
                requested_at: who.at,
                transition_at: None,
                source: RequestSource::Rebuild,
                rebuild_of: Some(original.build_id),
                ..original.clone()
            })],
        },
        PlannedAppend {
            stream: build_stream(original.build_id),
            // A note on a build that has finished: its state does not depend on it.
            expected: ExpectedVersion::Any,
            events: vec![Event::BuildRebuilt(BuildRebuilt {
                build_id: original.build_id,
                rebuild_id: build_id,
                by: who.by.to_owned(),
                via: who.via.to_owned(),
            })],
        },
    ];
    RebuildDecision::Started { build_id, appends }
}

/// An action from chat, as the chat sent it.
#[derive(Debug, Clone)]
pub struct ChatAction<'a> {
    pub request_id: &'a str,
    pub sink: &'a str,
    pub user: &'a str,
    pub action: ActionKind,
    pub build_id: Uuid,
    /// Whether `user` is among the sink's `allowed_users`.
    pub allowed: bool,
}

/// What the log holds for an action: its request's stream, the build's stream and version, and
/// the build's intent.
#[derive(Debug, Clone, Default)]
pub struct ActionView {
    /// The request as recorded before (Slack sent the click again; the reaction was seen again).
    pub recorded: Option<BuildActionRequested>,
    pub build: Vec<Event>,
    /// The version of the build's stream (none: no such build).
    pub build_version: Option<u64>,
    pub intent: IntentView,
}

/// What an action decided: what to answer and what to append (nothing for a request already
/// recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionDecision {
    pub outcome: ActionOutcome,
    /// The build that answers a rebuild (the new one, or the one already queued).
    pub rebuild_id: Option<Uuid>,
    /// Whether this request was recorded before, and is only answered again.
    pub repeated: bool,
    pub appends: Vec<PlannedAppend>,
}

/// The build an action names is not in the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no build {0}")]
pub struct UnknownBuild(pub Uuid);

/// Decides an action from chat `via` (`slack`, `matrix`): once per request; a refused one is
/// recorded as refused; a cancel is the build's own cancel, a rebuild [`decide_rebuild`].
pub fn decide_action(
    view: &ActionView,
    via: &str,
    action: &ChatAction<'_>,
    correlation_id: Uuid,
    now: DateTime<Utc>,
    new_build_id: impl FnOnce() -> Uuid,
) -> Result<ActionDecision, UnknownBuild> {
    if let Some(recorded) = &view.recorded {
        return Ok(ActionDecision {
            outcome: recorded.outcome,
            rebuild_id: recorded.rebuild_id,
            repeated: true,
            appends: Vec::new(),
        });
    }
    let (Some(version), Some(original)) = (view.build_version, requested(&view.build)) else {
        return Err(UnknownBuild(action.build_id));
    };
    let who = Requester { by: action.user, via, correlation_id, at: now };
    let (outcome, rebuild_id, mut appends) = if !action.allowed {
        (ActionOutcome::NotAllowed, None, Vec::new())
    } else {
        match action.action {
            ActionKind::Cancel => {
                let command = BuildCommand::Cancel { reason: format!("by {} ({via})", action.user) };
                match decide(&replay(&view.build), action.build_id, &command, now) {
                    Ok(events) => (
                        ActionOutcome::Cancelled,
                        None,
                        vec![PlannedAppend {
                            stream: build_stream(action.build_id),
                            expected: ExpectedVersion::Exact(version),
                            events,
                        }],
                    ),
                    Err(_) => (ActionOutcome::AlreadyFinished, None, Vec::new()),
                }
            }
            ActionKind::Rebuild => match decide_rebuild(original, &view.intent, &who, new_build_id) {
                RebuildDecision::Started { build_id, appends } => (ActionOutcome::Rebuilt, Some(build_id), appends),
                RebuildDecision::AlreadyQueued { build_id } => {
                    (ActionOutcome::AlreadyQueued, Some(build_id), Vec::new())
                }
            },
        }
    };
    appends.insert(
        0,
        PlannedAppend {
            stream: action_stream(via, action.request_id),
            expected: ExpectedVersion::NoStream,
            events: vec![Event::BuildActionRequested(BuildActionRequested {
                request_id: action.request_id.to_owned(),
                via: via.to_owned(),
                sink: action.sink.to_owned(),
                user: action.user.to_owned(),
                action: action.action,
                build_id: action.build_id,
                outcome,
                rebuild_id,
            })],
        },
    );
    Ok(ActionDecision { outcome, rebuild_id, repeated: false, appends })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::BuildState;
    use crate::intent::CurrentBuild;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_787_562_900 + s, 0).unwrap()
    }

    fn original() -> BuildRequested {
        BuildRequested {
            build_id: Uuid::from_u128(1),
            issue_id: "MOB-7".into(),
            project: "MOB".into(),
            summary: Some("Crash".into()),
            trigger: "ios-build".into(),
            script: "ios-build".into(),
            lane: "default".into(),
            git_ref: "refs/heads/MOB-7".into(),
            requested_by: Some("alice".into()),
            intent_key: "MOB-7/ios-build".into(),
            correlation_id: Uuid::from_u128(9),
            requested_at: t(0),
            transition_at: Some(t(-1)),
            source: RequestSource::Webhook,
            xcode: Some("16.2".into()),
            rebuild_of: None,
        }
    }

    fn intent(state: BuildState) -> IntentView {
        let current = CurrentBuild { build_id: Uuid::from_u128(1), version: 3, state, last_transition_at: Some(t(-1)) };
        IntentView { version: Some(0), current: Some(current) }
    }

    fn who() -> Requester<'static> {
        Requester { by: "U024BE7LH", via: "slack", correlation_id: Uuid::from_u128(5), at: t(60) }
    }

    #[test]
    fn a_rebuild_of_a_finished_build_repeats_its_request_and_links_both_timelines() {
        let decision =
            decide_rebuild(&original(), &intent(BuildState::Failed { attempt: 1, reason: "x".into() }), &who(), || {
                Uuid::from_u128(2)
            });
        let RebuildDecision::Started { build_id, appends } = decision else { panic!("{decision:?}") };
        assert_eq!(build_id, Uuid::from_u128(2));
        assert_eq!(appends[0].stream, "intent-MOB-7/ios-build");
        assert_eq!(appends[0].expected, ExpectedVersion::Exact(0));
        let Event::BuildRequested(again) = &appends[1].events[0] else { panic!() };
        assert_eq!(appends[1].expected, ExpectedVersion::NoStream);
        assert_eq!((again.rebuild_of, again.source), (Some(Uuid::from_u128(1)), RequestSource::Rebuild));
        assert_eq!(
            (&again.git_ref, &again.script, &again.xcode),
            (&original().git_ref, &original().script, &original().xcode)
        );
        assert_eq!(
            (again.requested_by.as_deref(), again.requested_at, again.transition_at),
            (Some("U024BE7LH"), t(60), None)
        );
        let Event::BuildRebuilt(note) = &appends[2].events[0] else { panic!() };
        assert_eq!((note.build_id, note.rebuild_id, note.via.as_str()), (Uuid::from_u128(1), build_id, "slack"));
    }

    #[test]
    fn a_rebuild_while_the_intents_build_is_queued_or_running_starts_nothing() {
        for state in [BuildState::Queued { attempt: 1 }, BuildState::Queued { attempt: 2 }] {
            let decision = decide_rebuild(&original(), &intent(state), &who(), || unreachable!());
            assert_eq!(decision, RebuildDecision::AlreadyQueued { build_id: Uuid::from_u128(1) });
        }
    }

    fn view(state_events: Vec<Event>) -> ActionView {
        let mut build = vec![Event::BuildRequested(original())];
        build.extend(state_events);
        let version = build.len() as u64 - 1;
        ActionView { recorded: None, build_version: Some(version), intent: intent(replay(&build)), build }
    }

    fn click(action: ActionKind, allowed: bool) -> ChatAction<'static> {
        ChatAction { request_id: "1.2", sink: "team", user: "U024BE7LH", action, build_id: Uuid::from_u128(1), allowed }
    }

    /// A click from Slack on a build whose log is `view`.
    fn clicked(view: &ActionView, action: ActionKind, allowed: bool) -> Result<ActionDecision, UnknownBuild> {
        decide_action(view, "slack", &click(action, allowed), Uuid::nil(), t(9), || unreachable!())
    }

    #[test]
    fn a_cancel_from_chat_is_the_builds_own_cancel_recorded_with_the_request() {
        let decided = clicked(&view(vec![]), ActionKind::Cancel, true).unwrap();
        assert_eq!(decided.outcome, ActionOutcome::Cancelled);
        assert_eq!(decided.appends[0].stream, "action-slack-1.2");
        assert_eq!(decided.appends[0].expected, ExpectedVersion::NoStream);
        assert_eq!(decided.appends[1].expected, ExpectedVersion::Exact(0));
        let Event::BuildCancelled(cancelled) = &decided.appends[1].events[0] else { panic!() };
        assert_eq!(cancelled.reason, "by U024BE7LH (slack)");
    }

    #[test]
    fn a_request_seen_again_is_answered_as_before_and_appends_nothing() {
        let mut seen = view(vec![]);
        let first = clicked(&seen, ActionKind::Cancel, true).unwrap();
        let Event::BuildActionRequested(recorded) = &first.appends[0].events[0] else { panic!() };
        seen.recorded = Some(recorded.clone());
        let again = clicked(&seen, ActionKind::Cancel, true).unwrap();
        assert_eq!((again.outcome, again.repeated, again.appends.len()), (ActionOutcome::Cancelled, true, 0));
    }

    #[test]
    fn refusals_and_finished_builds_are_recorded_and_change_nothing() {
        let refused = clicked(&view(vec![]), ActionKind::Cancel, false).unwrap();
        assert_eq!((refused.outcome, refused.appends.len()), (ActionOutcome::NotAllowed, 1));
        let done = Event::BuildCancelled(crate::event::BuildCancelled {
            build_id: Uuid::from_u128(1),
            reason: "by admin".into(),
            cancelled_at: t(5),
            report: None,
        });
        let finished = clicked(&view(vec![done]), ActionKind::Cancel, true).unwrap();
        assert_eq!((finished.outcome, finished.appends.len()), (ActionOutcome::AlreadyFinished, 1));
        let unknown = clicked(&ActionView::default(), ActionKind::Rebuild, true);
        assert_eq!(unknown, Err(UnknownBuild(Uuid::from_u128(1))));
    }
}
