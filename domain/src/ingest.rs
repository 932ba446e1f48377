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
//!   whether it comes by webhook or by a reconciliation sweep ([`crate::intent`], ADR 0008).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::event::{
    Body, BuildCancelled, BuildRequestFolded, Event, FoldReason, IgnoreReason, RequestSource, WebhookIgnored,
    WebhookReceived, WebhookRouted, LEFT_TRIGGER_STATE,
};
use crate::fingerprint::Fingerprint;
use crate::intent::{decide_intent, IntentDecision, IntentView, PlannedAppend, Transition};
use crate::payload::{Delivery, EventKind};
use crate::stream::{build_stream, delivery_stream, ExpectedVersion};
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
    /// The body exactly as received (the text `delivery` was read from).
    pub body: &'a Body,
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

/// Everything a delivery appends, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub outcome: Outcome,
    pub appends: Vec<PlannedAppend>,
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
        body: input.body.clone(),
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
                    reason: LEFT_TRIGGER_STATE.into(),
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
