//! What people ask of a build where they are: a rebuild (the dashboard, the API, the CLI) and an
//! action from chat (a Slack button, a Matrix reaction), each loaded from the log, decided by the
//! domain (`meshgate_domain::action`) and appended at the versions it was decided on.

use chrono::Utc;
use meshgate_domain::action::{decide_action, decide_rebuild, requested, ActionDecision, ActionView, ChatAction};
use meshgate_domain::action::{RebuildDecision, Requester};
use meshgate_domain::event::DecodeError;
use meshgate_domain::stream::{action_stream, build_stream};
use meshgate_domain::trigger::IntentKey;
use meshgate_domain::Event;
use uuid::Uuid;

use crate::ingest::{caused_by, load_intent, IngestError};
use crate::store::{decide_and_append, Decision, EventStore, Retry, StoreError, RETRY_FOR};

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("build not found")]
    UnknownBuild,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored event cannot be read: {0}")]
    Decode(#[from] DecodeError),
}

impl From<IngestError> for ActionError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Store(e) => ActionError::Store(e),
            IngestError::Decode(e) => ActionError::Decode(e),
        }
    }
}

/// A build's stream, decoded, and its version.
async fn build_events(store: &dyn EventStore, build_id: Uuid) -> Result<(Vec<Event>, Option<u64>), ActionError> {
    let stored = store.read_stream(&build_stream(build_id)).await?;
    let events = stored.iter().map(|s| Ok(s.decode()?.event)).collect::<Result<Vec<_>, DecodeError>>()?;
    Ok((events, stored.last().map(|s| s.version)))
}

/// What a rebuild did: the build that answers it, and whether it is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    pub build_id: Uuid,
    pub started: bool,
    /// The position of the last event appended (none: nothing was).
    pub position: Option<u64>,
}

/// Rebuilds `build_id` for `by` (`via`: `admin` for the dashboard, the API and the CLI).
pub async fn rebuild(store: &dyn EventStore, build_id: Uuid, by: &str, via: &str) -> Result<Rebuilt, ActionError> {
    let correlation_id = Uuid::now_v7();
    let load = |_| async move {
        let (build, _) = build_events(store, build_id).await?;
        let original = requested(&build).cloned().ok_or(ActionError::UnknownBuild)?;
        let intent = load_intent(store, &IntentKey::new(&original.issue_id, &original.trigger)).await?;
        Ok::<_, ActionError>((original, intent))
    };
    let decided = decide_and_append(store, Retry::For(RETRY_FOR), load, |(original, intent)| {
        let now = Utc::now();
        let who = Requester { by, via, correlation_id, at: now };
        Ok(match decide_rebuild(original, intent, &who, Uuid::now_v7) {
            RebuildDecision::Started { build_id, appends } => {
                Decision::append(caused_by(appends, correlation_id, None, now), (build_id, true))
            }
            RebuildDecision::AlreadyQueued { build_id } => Decision::nothing((build_id, false)),
        })
    })
    .await?;
    let (build_id, started) = decided.answer;
    Ok(Rebuilt { build_id, started, position: decided.last_position })
}

/// An action from chat, decided once per request: a request seen before is answered as it was.
pub async fn from_chat(
    store: &dyn EventStore,
    via: &str,
    action: &ChatAction<'_>,
) -> Result<(ActionDecision, Option<u64>), ActionError> {
    let correlation_id = Uuid::now_v7();
    let load = |_| async move {
        let recorded = store.read_stream(&action_stream(via, action.request_id)).await?;
        let recorded = match recorded.first().map(|s| s.decode()).transpose()?.map(|r| r.event) {
            Some(Event::BuildActionRequested(r)) => Some(r),
            _ => None,
        };
        let (build, build_version) = build_events(store, action.build_id).await?;
        let intent = match requested(&build) {
            Some(original) => load_intent(store, &IntentKey::new(&original.issue_id, &original.trigger)).await?,
            None => Default::default(),
        };
        Ok::<_, ActionError>(ActionView { recorded, build, build_version, intent })
    };
    let decided = decide_and_append(store, Retry::For(RETRY_FOR), load, |view| {
        let now = Utc::now();
        let decision = decide_action(view, via, action, correlation_id, now, Uuid::now_v7)
            .map_err(|_| ActionError::UnknownBuild)?;
        let appends = caused_by(decision.appends.clone(), correlation_id, None, now);
        Ok(Decision::append(appends, decision))
    })
    .await?;
    Ok((decided.answer, decided.last_position))
}
