//! What one transition does to one intent, the same whichever way the gateway learned of it (a
//! webhook, a reconciliation sweep, a replay; ADR 0008): a transition the intent's current build
//! was already started for (or folded) starts nothing, one that comes while the build is queued or
//! running folds into it, any other starts a build. The intent's stream, appended at its exact
//! version, makes that one new build per intent at a time.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::build::BuildState;
use crate::event::{BuildRequestFolded, BuildRequested, Event, FoldReason, IntentActivated, RequestSource};
use crate::stream::{build_stream, intent_stream, ExpectedVersion};
use crate::trigger::{IntentKey, Trigger};

/// The build an intent currently points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentBuild {
    pub build_id: Uuid,
    /// Version of the build's stream.
    pub version: u64,
    pub state: BuildState,
    /// The latest transition the build was started for or had folded into (YouTrack's clock; the
    /// gateway's for events that did not say).
    pub last_transition_at: Option<DateTime<Utc>>,
}

impl CurrentBuild {
    /// Folds a build's stream, whose last event has `version`.
    pub fn from_stream(build_id: Uuid, version: u64, events: &[Event]) -> Self {
        let last_transition_at = events
            .iter()
            .filter_map(|e| match e {
                Event::BuildRequested(r) => Some(r.transition_at.unwrap_or(r.requested_at)),
                Event::BuildRequestFolded(f) => Some(f.transition_at.unwrap_or(f.folded_at)),
                _ => None,
            })
            .max();
        CurrentBuild { build_id, version, state: crate::build::replay(events), last_transition_at }
    }

    /// Whether a transition at `at` is one this build was already started for or folded: its
    /// latest transition is at most `same_transition` older. A transition of unknown time never is.
    pub fn covers(&self, at: Option<DateTime<Utc>>, same_transition: chrono::Duration) -> bool {
        matches!((at, self.last_transition_at), (Some(at), Some(last)) if last >= at - same_transition)
    }
}

/// What the log says about one intent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IntentView {
    /// Version of the intent's stream (`None`: no stream yet).
    pub version: Option<u64>,
    pub current: Option<CurrentBuild>,
}

impl IntentView {
    /// The build named by the last `IntentActivated` of an intent stream, and the stream's version.
    pub fn current_build_id<'a>(events: impl IntoIterator<Item = &'a Event>) -> Option<Uuid> {
        events
            .into_iter()
            .filter_map(|e| match e {
                Event::IntentActivated(a) => Some(a.build_id),
                _ => None,
            })
            .last()
    }
}

/// Events for one stream, appended only if the stream is as expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<Event>,
}

/// A transition of an issue into a trigger's state, however the gateway learned of it.
#[derive(Debug, Clone, Copy)]
pub struct Transition<'a> {
    pub issue_id: &'a str,
    pub project: &'a str,
    pub summary: Option<&'a str>,
    /// Who made the change.
    pub author: Option<&'a str>,
    /// When it happened on YouTrack's clock, if known.
    pub at: Option<DateTime<Utc>>,
    pub source: RequestSource,
    /// The delivery's (or the sweep's) correlation id.
    pub correlation_id: Uuid,
    /// When the gateway learned of it.
    pub recorded_at: DateTime<Utc>,
}

/// What one transition did to one intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentDecision {
    /// The intent's current build was already started for this transition (or a later one): the
    /// appends fold the report into it, for a webhook's audit; a sweep appends nothing.
    AlreadyBuilt { build_id: Uuid, appends: Vec<PlannedAppend> },
    /// A new transition while the intent's build is queued or running: folded into it.
    Coalesced { build_id: Uuid, appends: Vec<PlannedAppend> },
    /// A new build for the intent.
    Started { build_id: Uuid, appends: Vec<PlannedAppend> },
}

impl IntentDecision {
    pub fn build_id(&self) -> Uuid {
        match self {
            IntentDecision::AlreadyBuilt { build_id, .. }
            | IntentDecision::Coalesced { build_id, .. }
            | IntentDecision::Started { build_id, .. } => *build_id,
        }
    }

    pub fn into_appends(self) -> Vec<PlannedAppend> {
        match self {
            IntentDecision::AlreadyBuilt { appends, .. }
            | IntentDecision::Coalesced { appends, .. }
            | IntentDecision::Started { appends, .. } => appends,
        }
    }

    /// What the decision does, as a replay or a sweep reports it.
    pub fn outcome(&self) -> IntentOutcome {
        match self {
            IntentDecision::AlreadyBuilt { .. } => IntentOutcome::AlreadyBuilt,
            IntentDecision::Coalesced { .. } => IntentOutcome::Folded,
            IntentDecision::Started { .. } => IntentOutcome::Started,
        }
    }
}

/// What deciding a transition again did (a replay, a sweep), or in a dry run would do. Ordered by
/// precedence: of the intents one transition decides, the report names the first outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IntentOutcome {
    Started,
    Folded,
    AlreadyBuilt,
    WouldStart,
    WouldFold,
}

impl IntentOutcome {
    /// The outcome of a dry run: what the decision would do (a started build would start, a fold
    /// would fold; a transition already built stays so).
    pub fn dry(self) -> IntentOutcome {
        match self {
            IntentOutcome::Started => IntentOutcome::WouldStart,
            IntentOutcome::Folded => IntentOutcome::WouldFold,
            other => other,
        }
    }
}

/// Decides what a transition does to one of its intents, the same for a webhook and a sweep: a
/// transition the current build already covers starts nothing; otherwise it folds into a build
/// that is still queued or running, or starts a new one.
pub fn decide_intent(
    view: &IntentView,
    trigger: &Trigger,
    intent: &IntentKey,
    transition: &Transition<'_>,
    same_transition: chrono::Duration,
    new_build_id: &mut dyn FnMut() -> Uuid,
) -> IntentDecision {
    let fold = |current: &CurrentBuild, reason, expected| PlannedAppend {
        stream: build_stream(current.build_id),
        expected,
        events: vec![Event::BuildRequestFolded(BuildRequestFolded {
            build_id: current.build_id,
            correlation_id: transition.correlation_id,
            reason,
            folded_at: transition.recorded_at,
            transition_at: transition.at,
        })],
    };
    if let Some(current) = &view.current {
        if current.covers(transition.at, same_transition) {
            // A finished build takes the fold as a note; an active one at its exact version.
            let expected =
                if current.state.is_active() { ExpectedVersion::Exact(current.version) } else { ExpectedVersion::Any };
            let appends = vec![fold(current, FoldReason::SameTransition, expected)];
            return IntentDecision::AlreadyBuilt { build_id: current.build_id, appends };
        }
        if current.state.is_active() {
            let appends = vec![fold(current, FoldReason::Coalesced, ExpectedVersion::Exact(current.version))];
            return IntentDecision::Coalesced { build_id: current.build_id, appends };
        }
    }
    let build_id = new_build_id();
    let appends = vec![
        PlannedAppend {
            stream: intent_stream(intent),
            expected: ExpectedVersion::from_current(view.version),
            events: vec![Event::IntentActivated(IntentActivated {
                intent_key: intent.as_str().to_owned(),
                build_id,
                correlation_id: transition.correlation_id,
            })],
        },
        PlannedAppend {
            stream: build_stream(build_id),
            expected: ExpectedVersion::NoStream,
            events: vec![Event::BuildRequested(BuildRequested {
                build_id,
                issue_id: transition.issue_id.to_owned(),
                project: transition.project.to_owned(),
                summary: transition.summary.map(str::to_owned),
                trigger: trigger.name.clone(),
                script: trigger.script.clone(),
                lane: trigger.lane.clone(),
                git_ref: trigger.git_ref_for(transition.issue_id, transition.project),
                requested_by: transition.author.map(str::to_owned),
                intent_key: intent.as_str().to_owned(),
                correlation_id: transition.correlation_id,
                requested_at: transition.recorded_at,
                transition_at: transition.at,
                source: transition.source,
                xcode: trigger.xcode.clone(),
                rebuild_of: None,
            })],
        },
    ];
    IntentDecision::Started { build_id, appends }
}
