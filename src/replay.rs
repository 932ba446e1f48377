//! Recorded deliveries decided again under today's triggers (`meshgate deliveries replay`, `POST
//! /api/v1/deliveries/replay`): the log keeps every body, so deliveries that were ignored (a
//! trigger named the wrong state, a project was missing) can start their builds once the triggers
//! are fixed. Each replayed delivery gets a `DeliveryReplayed` event on its own stream, appended at
//! its exact version together with what it starts, so replaying twice starts nothing new; what it
//! starts carries the delivery's correlation id and, as its cause, the delivery's event.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use meshgate_domain::event::{DeliveryReplayed, IgnoreReason, RequestSource, WebhookReceived};
use meshgate_domain::ingest::{matched_intents, IngestPolicy};
use meshgate_domain::intent::{decide_intent, IntentDecision, IntentOutcome, IntentView, PlannedAppend, Transition};
use meshgate_domain::{payload, Delivery, Event, ExpectedVersion, IntentKey, Trigger};
use serde::Serialize;
use uuid::Uuid;

use crate::ingest::{caused_by, load_intent, IngestError};
use crate::store::{decide_and_append, Decision, EventStore, Retry, StoreError, StoredEvent, RETRY_FOR};

/// What became of one ignored delivery.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplayedDelivery {
    pub correlation_id: Uuid,
    pub issue_id: String,
    pub received_at: DateTime<Utc>,
    pub outcome: ReplayOutcome,
    pub build_ids: Vec<Uuid>,
}

/// What became of an ignored delivery decided again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// A build was started.
    Started,
    /// The transition was folded into a queued or running build.
    Folded,
    /// The intent's build was already started for this transition.
    AlreadyBuilt,
    /// No trigger matches it today either.
    StillIgnored,
    /// It was replayed before: replaying again starts nothing.
    ReplayedBefore,
    /// A dry run: a build would be started.
    WouldStart,
    /// A dry run: the transition would be folded.
    WouldFold,
}

impl From<IntentOutcome> for ReplayOutcome {
    fn from(outcome: IntentOutcome) -> Self {
        match outcome {
            IntentOutcome::Started => ReplayOutcome::Started,
            IntentOutcome::Folded => ReplayOutcome::Folded,
            IntentOutcome::AlreadyBuilt => ReplayOutcome::AlreadyBuilt,
            IntentOutcome::WouldStart => ReplayOutcome::WouldStart,
            IntentOutcome::WouldFold => ReplayOutcome::WouldFold,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplayReport {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub dry_run: bool,
    pub deliveries: Vec<ReplayedDelivery>,
    pub builds_started: Vec<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// Decides again every delivery ignored between `since` and `until` (by when it was recorded).
pub async fn replay_deliveries(
    store: &dyn EventStore,
    policy: &IngestPolicy<'_>,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    dry_run: bool,
) -> Result<ReplayReport, ReplayError> {
    let mut report = ReplayReport { since, until, dry_run, deliveries: Vec::new(), builds_started: Vec::new() };
    for stream in ignored_between(store, since, until).await? {
        if let Some(replayed) = replay_one(store, policy, &stream, dry_run).await? {
            if replayed.outcome == ReplayOutcome::Started {
                report.builds_started.extend(&replayed.build_ids);
            }
            report.deliveries.push(replayed);
        }
    }
    Ok(report)
}

/// The streams of deliveries ignored in the window, for another reason than being a copy or the
/// self-test, oldest first.
async fn ignored_between(
    store: &dyn EventStore,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let mut streams: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let head = *store.head().borrow();
    let mut batches = store.scan(0, head, &["WebhookIgnored"]);
    while let Some((batch, _)) = batches.try_next().await? {
        for recorded in batch {
            let Event::WebhookIgnored(ignored) = &recorded.event else { continue };
            let replayable = !matches!(ignored.reason, IgnoreReason::DuplicateDelivery | IgnoreReason::SelfTest);
            if replayable && (since..=until).contains(&recorded.recorded_at) && seen.insert(recorded.stream.clone()) {
                streams.push(recorded.stream);
            }
        }
    }
    Ok(streams)
}

/// An ignored delivery as the log holds it, with the intents today's triggers match.
struct Loaded<'p> {
    stored: Vec<StoredEvent>,
    received: WebhookReceived,
    /// None: the body no longer parses (stored bodies were accepted once).
    delivery: Option<Delivery>,
    intents: Vec<(&'p Trigger, IntentKey, IntentView)>,
}

/// Reads a delivery's stream and its intents; none: no such delivery.
async fn load<'p>(
    store: &dyn EventStore,
    policy: &IngestPolicy<'p>,
    stream: &str,
) -> Result<Option<Loaded<'p>>, ReplayError> {
    let stored = store.read_stream(stream).await?;
    let Some(Ok(Event::WebhookReceived(received))) = stored.first().map(|e| e.decode().map(|r| r.event)) else {
        return Ok(None);
    };
    let delivery = payload::parse_bytes(received.body.as_str().as_bytes()).ok().map(|(_, delivery)| delivery);
    let mut intents = Vec::new();
    let replayed_before = stored.iter().any(|e| matches!(e.decode().map(|r| r.event), Ok(Event::DeliveryReplayed(_))));
    if let Some(delivery) = delivery.as_ref().filter(|_| !replayed_before) {
        for (trigger, intent) in matched_intents(policy, delivery) {
            let view = load_intent(store, &intent).await?;
            intents.push((trigger, intent, view));
        }
    }
    Ok(Some(Loaded { stored, received, delivery, intents }))
}

async fn replay_one(
    store: &dyn EventStore,
    policy: &IngestPolicy<'_>,
    stream: &str,
    dry_run: bool,
) -> Result<Option<ReplayedDelivery>, ReplayError> {
    let load = |_| async move { load(store, policy, stream).await };
    let decided = decide_and_append(store, Retry::For(RETRY_FOR), load, |loaded| {
        let Some(Loaded { stored, received, delivery, intents }) = loaded else { return Ok(Decision::nothing(None)) };
        let mut entry = ReplayedDelivery {
            correlation_id: received.correlation_id,
            issue_id: received.issue_id.clone(),
            received_at: received.received_at,
            outcome: ReplayOutcome::StillIgnored,
            build_ids: Vec::new(),
        };
        if stored.iter().any(|e| matches!(e.decode().map(|r| r.event), Ok(Event::DeliveryReplayed(_)))) {
            entry.outcome = ReplayOutcome::ReplayedBefore;
            return Ok(Decision::nothing(Some(entry)));
        }
        let Some(delivery) = delivery else { return Ok(Decision::nothing(Some(entry))) };
        let now = Utc::now();
        let transition = Transition {
            issue_id: &delivery.issue_id,
            project: &delivery.project,
            summary: delivery.summary.as_deref(),
            author: delivery.updated_by.as_ref().and_then(|u| u.login.as_deref()),
            at: delivery.updated.and_then(DateTime::from_timestamp_millis),
            source: RequestSource::Replay,
            correlation_id: received.correlation_id,
            recorded_at: now,
        };
        let mut appends: Vec<PlannedAppend> = Vec::new();
        let mut outcomes = Vec::new();
        for (trigger, intent, view) in intents {
            let decision = decide_intent(view, trigger, intent, &transition, policy.same_transition, &mut Uuid::now_v7);
            entry.build_ids.push(decision.build_id());
            outcomes.push(decision.outcome());
            if !matches!(decision, IntentDecision::AlreadyBuilt { .. }) {
                appends.extend(decision.into_appends());
            }
        }
        let Some(outcome) = outcomes.into_iter().min() else { return Ok(Decision::nothing(Some(entry))) };
        if dry_run {
            entry.outcome = outcome.dry().into();
            return Ok(Decision::nothing(Some(entry)));
        }
        entry.outcome = outcome.into();
        appends.push(PlannedAppend {
            stream: stream.to_owned(),
            expected: ExpectedVersion::Exact(stored.last().map_or(0, |e| e.version)),
            events: vec![Event::DeliveryReplayed(DeliveryReplayed {
                correlation_id: received.correlation_id,
                issue_id: received.issue_id.clone(),
                build_ids: entry.build_ids.clone(),
                replayed_at: now,
            })],
        });
        let cause = stored.first().map(|first| first.id);
        Ok(Decision::append(caused_by(appends, received.correlation_id, cause, now), Some(entry)))
    })
    .await?;
    Ok(decided.answer)
}
