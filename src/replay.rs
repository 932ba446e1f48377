//! Recorded deliveries decided again under today's triggers (`meshgate deliveries replay`, `POST
//! /api/v1/deliveries/replay`): the log keeps every body, so deliveries that were ignored (a
//! trigger named the wrong state, a project was missing) can start their builds once the triggers
//! are fixed. Each replayed delivery gets a `DeliveryReplayed` event on its own stream, appended at
//! its exact version together with what it starts, so replaying twice starts nothing new; what it
//! starts carries the delivery's correlation id and, as its cause, the delivery's event.

use chrono::{DateTime, Utc};
use meshgate_domain::event::{DeliveryReplayed, IgnoreReason, RequestSource};
use meshgate_domain::ingest::{
    decide_intent, matched_intents, IngestPolicy, IntentDecision, PlannedAppend, Transition,
};
use meshgate_domain::{payload, Event, ExpectedVersion};
use serde::Serialize;
use uuid::Uuid;

use crate::ingest::{caused_by, load_intent, IngestError};
use crate::store::{EventStore, StoreError};

/// What became of one ignored delivery.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplayedDelivery {
    pub correlation_id: Uuid,
    pub issue_id: String,
    pub received_at: DateTime<Utc>,
    /// `started`, `folded`, `already_built`, `still_ignored`, `replayed_before`, `would_start` or
    /// `would_fold`.
    #[schema(value_type = String)]
    pub outcome: &'static str,
    pub build_ids: Vec<Uuid>,
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
    #[error("delivery {0}'s streams kept changing")]
    Contention(Uuid),
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
            if matches!(replayed.outcome, "started") {
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
    crate::store::scan(store, &["WebhookIgnored"], |recorded| {
        let Event::WebhookIgnored(ignored) = &recorded.event else { return };
        let replayable = !matches!(ignored.reason, IgnoreReason::DuplicateDelivery | IgnoreReason::SelfTest);
        if replayable && (since..=until).contains(&recorded.recorded_at) && seen.insert(recorded.stream.clone()) {
            streams.push(recorded.stream);
        }
    })
    .await?;
    Ok(streams)
}

async fn replay_one(
    store: &dyn EventStore,
    policy: &IngestPolicy<'_>,
    stream: &str,
    dry_run: bool,
) -> Result<Option<ReplayedDelivery>, ReplayError> {
    for _ in 0..16 {
        let stored = store.read_stream(stream).await?;
        let Some(first) = stored.first() else { return Ok(None) };
        let Ok(Event::WebhookReceived(received)) = first.decode().map(|r| r.event) else { return Ok(None) };
        let mut entry = ReplayedDelivery {
            correlation_id: received.correlation_id,
            issue_id: received.issue_id.clone(),
            received_at: received.received_at,
            outcome: "still_ignored",
            build_ids: Vec::new(),
        };
        let replayed_before = stored.iter().any(|e| e.event_type == "DeliveryReplayed");
        if replayed_before {
            entry.outcome = "replayed_before";
            return Ok(Some(entry));
        }
        // Stored bodies were accepted once: one that no longer parses is left as it was.
        let Ok((_, delivery)) = payload::parse_bytes(received.body.as_bytes()) else { return Ok(Some(entry)) };
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
        for (trigger, intent) in matched_intents(policy, &delivery) {
            let view = load_intent(store, &intent).await?;
            let decision =
                decide_intent(&view, trigger, &intent, &transition, policy.same_transition, &mut Uuid::now_v7);
            entry.build_ids.push(decision.build_id());
            outcomes.push(match decision {
                IntentDecision::Started { .. } => "started",
                IntentDecision::Coalesced { .. } => "folded",
                IntentDecision::AlreadyBuilt { .. } => "already_built",
            });
            if !matches!(decision, IntentDecision::AlreadyBuilt { .. }) {
                appends.extend(decision.into_appends());
            }
        }
        entry.outcome = ["started", "folded", "already_built"]
            .into_iter()
            .find(|o| outcomes.contains(o))
            .unwrap_or("still_ignored");
        if outcomes.is_empty() {
            return Ok(Some(entry));
        }
        if dry_run {
            entry.outcome = match entry.outcome {
                "started" => "would_start",
                "folded" => "would_fold",
                other => other,
            };
            return Ok(Some(entry));
        }
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
        match store.append(caused_by(appends, received.correlation_id, Some(first.id), now)).await {
            Ok(_) => return Ok(Some(entry)),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ReplayError::Contention(Uuid::nil()))
}
