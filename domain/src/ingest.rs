//! Deciding what a delivery appends, given what the log holds about the streams it touches.
//!
//! The shell reads (or, on the fast path, assumes) a [`LogView`], calls [`decide_delivery`], and
//! appends the resulting [`Plan`] atomically with the expected versions it carries. If the store
//! reports a conflict, the view was stale: the shell reads the streams and decides again. So the
//! uniqueness rules hold through the store's optimistic concurrency, not through memory:
//!
//! - the first delivery of a fingerprint creates `delivery-{fp}` (expected: no stream);
//! - a new build for an intent appends `IntentActivated` to `intent-{key}` at its exact version;
//! - a transition coalesced into an active build appends to `build-{id}` at its exact version, so a
//!   build finishing at the same moment forces a re-decision instead of a lost transition;
//! - a transition the intent's current build was already started for (or folded) starts nothing,
//!   whether it comes by webhook or by a reconciliation sweep ([`decide_intent`], ADR 0008).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::build::BuildState;
use crate::event::{
    BuildCancelled, BuildRequestFolded, BuildRequested, Event, FoldReason, IgnoreReason, IntentActivated,
    RequestSource, WebhookIgnored, WebhookReceived, WebhookRouted,
};
use crate::fingerprint::Fingerprint;
use crate::payload::{Delivery, EventKind};
use crate::stream::{build_stream, delivery_stream, intent_stream, ExpectedVersion};
use crate::trigger::{IntentKey, Trigger};

/// What the gateway is configured to do with deliveries.
#[derive(Debug, Clone, Copy)]
pub struct IngestPolicy<'a> {
    pub triggers: &'a [Trigger],
    /// Deliveries authored by this login are ignored (the gateway's own comments).
    pub bot_login: Option<&'a str>,
    /// Two reports of a transition of one intent whose change times are this close are one
    /// transition (a webhook's `updated` and an activity's `timestamp` are normally equal).
    pub same_transition: chrono::Duration,
}

/// The default of `[reconcile] same_transition_ms`.
pub const SAME_TRANSITION: chrono::Duration = chrono::Duration::milliseconds(2000);

/// The event type of the delivery `meshgate selftest` posts to the gateway: recorded, never routed.
pub const SELF_TEST_EVENT: &str = "meshgateSelfTest";

/// One delivery as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryInput<'a> {
    pub correlation_id: Uuid,
    pub received_at: DateTime<Utc>,
    pub fingerprint: &'a Fingerprint,
    /// The body exactly as received.
    pub body: &'a str,
    pub delivery: &'a Delivery,
}

/// What the log says about a fingerprint's stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeliveryStream {
    /// Never delivered before.
    #[default]
    New,
    /// Delivered before; these are the builds the first delivery started or folded into (empty:
    /// it was ignored).
    Seen { build_ids: Vec<Uuid> },
}

impl DeliveryStream {
    /// Folds a `delivery-{fp}` stream.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut view = DeliveryStream::New;
        for event in events {
            match (&view, event) {
                (DeliveryStream::New, Event::WebhookReceived(_) | Event::WebhookIgnored(_)) => {
                    view = DeliveryStream::Seen { build_ids: Vec::new() }
                }
                (DeliveryStream::Seen { build_ids }, Event::WebhookRouted(routed)) if build_ids.is_empty() => {
                    view = DeliveryStream::Seen { build_ids: routed.build_ids.clone() }
                }
                _ => {}
            }
        }
        view
    }
}

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

/// What the log holds about the streams a delivery touches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogView {
    pub delivery: DeliveryStream,
    /// Intents not listed are taken to have no stream yet.
    pub intents: BTreeMap<IntentKey, IntentView>,
}

impl LogView {
    /// The fast-path guess: nothing seen before. Wrong guesses surface as append conflicts.
    pub fn assume_new() -> Self {
        LogView::default()
    }
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// At least one new build was requested.
    Enqueued {
        build_ids: Vec<Uuid>,
    },
    /// Every build it asked for already existed.
    Folded {
        build_ids: Vec<Uuid>,
    },
    /// It moved an issue out of a trigger's state: these active builds were cancelled.
    Cancelled {
        build_ids: Vec<Uuid>,
    },
    Ignored {
        reason: IgnoreReason,
    },
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Enqueued { .. } => "enqueued",
            Outcome::Folded { .. } => "folded",
            Outcome::Cancelled { .. } => "cancelled",
            Outcome::Ignored { .. } => "ignored",
        }
    }

    pub fn build_ids(&self) -> &[Uuid] {
        match self {
            Outcome::Enqueued { build_ids } | Outcome::Folded { build_ids } | Outcome::Cancelled { build_ids } => {
                build_ids
            }
            Outcome::Ignored { .. } => &[],
        }
    }
}

/// Events for one stream, appended only if the stream is as expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<Event>,
}

/// Everything a delivery appends, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub outcome: Outcome,
    pub appends: Vec<PlannedAppend>,
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
            })],
        },
    ];
    IntentDecision::Started { build_id, appends }
}

/// The triggers a delivery fires and the intents they stand for (none for bot-authored or
/// unknown deliveries).
pub fn matched_intents<'a>(policy: &IngestPolicy<'a>, delivery: &Delivery) -> Vec<(&'a Trigger, IntentKey)> {
    intents_where(policy, delivery, Trigger::matches)
}

/// The triggers whose state a delivery leaves, and their intents.
pub fn left_intents<'a>(policy: &IngestPolicy<'a>, delivery: &Delivery) -> Vec<(&'a Trigger, IntentKey)> {
    intents_where(policy, delivery, Trigger::leaves)
}

fn intents_where<'a>(
    policy: &IngestPolicy<'a>,
    delivery: &Delivery,
    test: fn(&Trigger, &Delivery) -> bool,
) -> Vec<(&'a Trigger, IntentKey)> {
    if ignore_reason_before_matching(policy, delivery).is_some() {
        return Vec::new();
    }
    policy.triggers.iter().filter(|t| test(t, delivery)).map(|t| (t, t.intent_for(&delivery.issue_id))).collect()
}

fn ignore_reason_before_matching(policy: &IngestPolicy<'_>, delivery: &Delivery) -> Option<IgnoreReason> {
    if matches!(&delivery.event, EventKind::Unknown(name) if name == SELF_TEST_EVENT) {
        return Some(IgnoreReason::SelfTest);
    }
    if matches!(delivery.event, EventKind::Unknown(_)) {
        return Some(IgnoreReason::UnknownEvent);
    }
    if let Some(bot) = policy.bot_login {
        if delivery.author_logins().any(|login| login.eq_ignore_ascii_case(bot)) {
            return Some(IgnoreReason::BotAuthored);
        }
    }
    None
}

/// Decides what one delivery appends. `new_build_id` is called once for each new build.
pub fn decide_delivery(
    view: &LogView,
    input: &DeliveryInput<'_>,
    policy: &IngestPolicy<'_>,
    new_build_id: &mut dyn FnMut() -> Uuid,
) -> Plan {
    let d = input.delivery;
    let received = Event::WebhookReceived(WebhookReceived {
        correlation_id: input.correlation_id,
        event_type: d.event.as_str().to_owned(),
        issue_id: d.issue_id.clone(),
        project: d.project.clone(),
        fingerprint: input.fingerprint.as_str().to_owned(),
        body: input.body.to_owned(),
        received_at: input.received_at,
    });
    let delivery_stream = delivery_stream(input.fingerprint);
    let ignored = |reason| {
        Event::WebhookIgnored(WebhookIgnored {
            correlation_id: input.correlation_id,
            issue_id: d.issue_id.clone(),
            reason,
        })
    };

    // A fingerprint seen before: fold into whatever the first delivery produced.
    if let DeliveryStream::Seen { build_ids } = &view.delivery {
        let mut appends =
            vec![PlannedAppend { stream: delivery_stream, expected: ExpectedVersion::Any, events: vec![received] }];
        if build_ids.is_empty() {
            appends[0].events.push(ignored(IgnoreReason::DuplicateDelivery));
            return Plan { outcome: Outcome::Ignored { reason: IgnoreReason::DuplicateDelivery }, appends };
        }
        for &build_id in build_ids {
            appends.push(PlannedAppend {
                stream: build_stream(build_id),
                expected: ExpectedVersion::Any,
                events: vec![fold(build_id, input, FoldReason::DuplicateDelivery)],
            });
        }
        return Plan { outcome: Outcome::Folded { build_ids: build_ids.clone() }, appends };
    }

    let mut first =
        PlannedAppend { stream: delivery_stream, expected: ExpectedVersion::NoStream, events: vec![received] };
    let matched = matched_intents(policy, d);
    // Builds of intents whose state this delivery leaves are cancelled, at their exact version.
    let mut cancels = Vec::new();
    for (_, intent) in left_intents(policy, d) {
        if let Some(active) = view.intents.get(&intent).and_then(|v| v.current.clone()).filter(|b| b.state.is_active())
        {
            cancels.push(PlannedAppend {
                stream: build_stream(active.build_id),
                expected: ExpectedVersion::Exact(active.version),
                events: vec![Event::BuildCancelled(BuildCancelled {
                    build_id: active.build_id,
                    reason: "left_trigger_state".into(),
                    cancelled_at: input.received_at,
                    report: None,
                })],
            });
        }
    }
    let cancelled: Vec<Uuid> = cancels.iter().filter_map(|a| a.events[0].build_id()).collect();
    let reason = ignore_reason_before_matching(policy, d)
        .or_else(|| (matched.is_empty() && cancels.is_empty()).then_some(IgnoreReason::NoTriggerMatched));
    if let Some(reason) = reason {
        first.events.push(ignored(reason));
        return Plan { outcome: Outcome::Ignored { reason }, appends: vec![first] };
    }

    let mut appends = cancels;
    let mut build_ids = Vec::new();
    let mut any_new = false;
    let transition = transition_of(input, RequestSource::Webhook);
    for (trigger, intent) in matched {
        let intent_view = view.intents.get(&intent).cloned().unwrap_or_default();
        let decision = decide_intent(&intent_view, trigger, &intent, &transition, policy.same_transition, new_build_id);
        any_new |= matches!(decision, IntentDecision::Started { .. });
        build_ids.push(decision.build_id());
        appends.extend(decision.into_appends());
    }
    let routed = if build_ids.is_empty() { cancelled.clone() } else { build_ids.clone() };
    first.events.push(Event::WebhookRouted(WebhookRouted {
        correlation_id: input.correlation_id,
        issue_id: d.issue_id.clone(),
        build_ids: routed,
    }));
    appends.insert(0, first);
    let outcome = if any_new {
        Outcome::Enqueued { build_ids }
    } else if !build_ids.is_empty() {
        Outcome::Folded { build_ids }
    } else {
        Outcome::Cancelled { build_ids: cancelled }
    };
    Plan { outcome, appends }
}

/// The transition a delivery reports.
pub fn transition_of<'a>(input: &DeliveryInput<'a>, source: RequestSource) -> Transition<'a> {
    let d = input.delivery;
    Transition {
        issue_id: &d.issue_id,
        project: &d.project,
        summary: d.summary.as_deref(),
        author: d.updated_by.as_ref().and_then(|u| u.login.as_deref()),
        at: d.updated.and_then(DateTime::from_timestamp_millis),
        source,
        correlation_id: input.correlation_id,
        recorded_at: input.received_at,
    }
}

fn fold(build_id: Uuid, input: &DeliveryInput<'_>, reason: FoldReason) -> Event {
    Event::BuildRequestFolded(BuildRequestFolded {
        build_id,
        correlation_id: input.correlation_id,
        reason,
        folded_at: input.received_at,
        transition_at: input.delivery.updated.and_then(DateTime::from_timestamp_millis),
    })
}

#[cfg(test)]
mod tests;
