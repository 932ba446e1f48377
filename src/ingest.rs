//! The ingest command handler: decide a delivery against the log, append with optimistic
//! concurrency, and decide again on conflict ([`decide_and_append`]).
//!
//! The first try assumes nothing was seen before (no reads): a first delivery of a new change, the
//! common case, costs one append. A wrong guess surfaces as a version conflict; the handler then
//! reads the streams the delivery touches and decides again. Uniqueness is enforced by the store.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use meshgate_domain::event::Body;
use meshgate_domain::ingest::{
    decide_delivery, left_intents, matched_intents, DeliveryInput, DeliveryStream, IngestPolicy, LogView, Outcome,
};
use meshgate_domain::intent::{CurrentBuild, IntentView};
use meshgate_domain::stream::{build_stream, delivery_stream, intent_stream};
use meshgate_domain::{Delivery, Event, Fingerprint, IntentKey, Trigger};
use uuid::Uuid;

use crate::store::{
    decide_and_append, Decision, EventStore, NewEvent, Retry, StoreError, StoredEvent, StreamAppend, RETRY_FOR,
};

/// A delivery durably recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub outcome: Outcome,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored event cannot be read: {0}")]
    Decode(#[from] meshgate_domain::event::DecodeError),
}

pub struct IngestService {
    store: Arc<dyn EventStore>,
    triggers: Vec<Trigger>,
    bot_login: Option<String>,
    same_transition: chrono::Duration,
}

impl IngestService {
    pub fn new(
        store: Arc<dyn EventStore>,
        triggers: Vec<Trigger>,
        bot_login: Option<String>,
        same_transition: chrono::Duration,
    ) -> Self {
        IngestService { store, triggers, bot_login, same_transition }
    }

    pub fn policy(&self) -> IngestPolicy<'_> {
        IngestPolicy {
            triggers: &self.triggers,
            bot_login: self.bot_login.as_deref(),
            same_transition: self.same_transition,
        }
    }

    /// Records a parsed delivery and everything it causes; answers once it is durable.
    #[tracing::instrument(skip_all, fields(correlation_id = %correlation_id, issue = %delivery.issue_id))]
    pub async fn ingest(
        &self,
        correlation_id: Uuid,
        received_at: DateTime<Utc>,
        body: &Body,
        fingerprint: Fingerprint,
        delivery: &Delivery,
    ) -> Result<Accepted, IngestError> {
        let input = DeliveryInput { correlation_id, received_at, fingerprint: &fingerprint, body, delivery };
        let policy = self.policy();
        // A delivery that leaves a trigger's state must see whether a build is active: no guessing.
        // Any other first try assumes nothing was seen (no reads); a wrong guess is a conflict.
        let guess = left_intents(&policy, delivery).is_empty();
        let fingerprint = &fingerprint;
        let load = |tries| async move {
            if tries == 0 && guess {
                Ok(LogView::assume_new())
            } else {
                self.load_view(fingerprint, delivery).await
            }
        };
        let decided = decide_and_append(self.store.as_ref(), Retry::For(RETRY_FOR), load, |view| {
            let plan = decide_delivery(view, &input, &policy, &mut Uuid::now_v7);
            Ok(Decision::append(to_store_appends(plan.appends, correlation_id, Utc::now()), plan.outcome))
        })
        .await?;
        tracing::debug!(outcome = decided.answer.name(), "delivery recorded");
        Ok(Accepted { outcome: decided.answer })
    }

    /// Reads what the log holds about the streams a delivery touches.
    async fn load_view(&self, fingerprint: &Fingerprint, delivery: &Delivery) -> Result<LogView, IngestError> {
        let seen = decode_all(&self.store.read_stream(&delivery_stream(fingerprint)).await?)?;
        let mut view = LogView { delivery: DeliveryStream::from_events(&seen), ..LogView::default() };
        if view.delivery != DeliveryStream::New {
            return Ok(view);
        }
        let policy = self.policy();
        let intents = matched_intents(&policy, delivery).into_iter().chain(left_intents(&policy, delivery));
        for (_, intent) in intents {
            let intent_view = load_intent(self.store.as_ref(), &intent).await?;
            view.intents.insert(intent, intent_view);
        }
        Ok(view)
    }
}

/// What the log holds about one intent: its stream's version and its current build.
pub async fn load_intent(store: &dyn EventStore, intent: &IntentKey) -> Result<IntentView, IngestError> {
    let stored = store.read_stream(&intent_stream(intent)).await?;
    let events = decode_all(&stored)?;
    let current = match IntentView::current_build_id(&events) {
        Some(build_id) => {
            let build = store.read_stream(&build_stream(build_id)).await?;
            let build_events = decode_all(&build)?;
            build.last().map(|last| CurrentBuild::from_stream(build_id, last.version, &build_events))
        }
        None => None,
    };
    Ok(IntentView { version: stored.last().map(|e| e.version), current })
}

fn decode_all(stored: &[StoredEvent]) -> Result<Vec<Event>, IngestError> {
    stored.iter().map(|s| Ok(s.decode()?.event)).collect()
}

/// Stamps a plan's events with ids, the correlation id, and the first event as their cause.
pub fn to_store_appends(
    planned: Vec<meshgate_domain::intent::PlannedAppend>,
    correlation_id: Uuid,
    now: DateTime<Utc>,
) -> Vec<StreamAppend> {
    caused_by(planned, correlation_id, None, now)
}

/// Stamps a plan's events with ids and the correlation id; `cause` is every event's cause (none:
/// the plan's first event).
pub fn caused_by(
    planned: Vec<meshgate_domain::intent::PlannedAppend>,
    correlation_id: Uuid,
    cause: Option<Uuid>,
    now: DateTime<Utc>,
) -> Vec<StreamAppend> {
    let mut cause = cause;
    planned
        .into_iter()
        .map(|append| StreamAppend {
            stream: append.stream,
            expected: append.expected,
            events: append
                .events
                .iter()
                .map(|event| {
                    let new = NewEvent::from_domain(event, correlation_id, cause, now);
                    cause.get_or_insert(new.id);
                    new
                })
                .collect(),
        })
        .collect()
}
