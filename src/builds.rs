//! Commands on one build: read its stream, decide, append at the exact version it was read at,
//! and decide again if another writer got there first ([`decide_and_append`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use meshgate_domain::build::{decide, replay};
use meshgate_domain::event::BuildResultRejected;
use meshgate_domain::stream::build_stream;
use meshgate_domain::{BuildCommand, BuildError, BuildState, Event, ExpectedVersion};
use uuid::Uuid;

use crate::store::{
    decide_and_append, Decision, EventStore, NewEvent, Retry, StoreError, StoredEvent, StreamAppend, RETRY_FOR,
};

/// A command that was applied.
#[derive(Debug, Clone)]
pub struct Executed {
    pub events: Vec<Event>,
    /// The build's state after the command.
    pub state: BuildState,
    /// The position of the last event appended (0: the command appended nothing).
    pub last_position: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("build not found")]
    NotFound,
    /// The domain refused the command; `history` is the build's stream as it was decided on.
    #[error("{error}")]
    Refused { error: BuildError, history: Vec<Event> },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored event cannot be read: {0}")]
    Decode(#[from] meshgate_domain::event::DecodeError),
}

#[derive(Clone)]
pub struct BuildService {
    store: Arc<dyn EventStore>,
}

impl BuildService {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        BuildService { store }
    }

    /// Applies a command to a build now; `correlation_id` is stamped on what it appends.
    pub async fn execute(
        &self,
        build_id: Uuid,
        correlation_id: Uuid,
        command: &BuildCommand,
    ) -> Result<Executed, CommandError> {
        self.execute_at(build_id, correlation_id, command, Utc::now()).await
    }

    /// Applies a command as of `now` (the lease reaper and tests pass their own clock).
    pub async fn execute_at(
        &self,
        build_id: Uuid,
        correlation_id: Uuid,
        command: &BuildCommand,
        now: DateTime<Utc>,
    ) -> Result<Executed, CommandError> {
        self.decide(build_id, correlation_id, command, now, Retry::For(RETRY_FOR), None).await
    }

    /// Claims a build together with `guard` (a lane's stream, appended at the version the claim
    /// was decided on), in one atomic append, once: a conflict on either stream answers
    /// [`StoreError::Contention`], and the caller decides again on fresher projections.
    pub async fn claim_guarded(
        &self,
        build_id: Uuid,
        correlation_id: Uuid,
        command: &BuildCommand,
        guard: StreamAppend,
    ) -> Result<Executed, CommandError> {
        self.decide(build_id, correlation_id, command, Utc::now(), Retry::Once, Some(guard)).await
    }

    /// Reads the build's stream, decides `command` on it and appends the events at the version
    /// read (with `guard`, in the same append).
    async fn decide(
        &self,
        build_id: Uuid,
        correlation_id: Uuid,
        command: &BuildCommand,
        now: DateTime<Utc>,
        retry: Retry,
        guard: Option<StreamAppend>,
    ) -> Result<Executed, CommandError> {
        let stream = &build_stream(build_id);
        let load = |_| async move { Ok::<_, CommandError>(self.store.read_stream(stream).await?) };
        let decided = decide_and_append(self.store.as_ref(), retry, load, |stored: &Vec<StoredEvent>| {
            if stored.is_empty() && !matches!(command, BuildCommand::Request(_)) {
                return Err(CommandError::NotFound);
            }
            let history = stored.iter().map(|s| s.decode().map(|r| r.event)).collect::<Result<Vec<_>, _>>()?;
            let state = replay(&history);
            let events =
                decide(&state, build_id, command, now).map_err(|error| CommandError::Refused { error, history })?;
            let append = StreamAppend {
                stream: stream.clone(),
                expected: ExpectedVersion::from_current(stored.last().map(|s| s.version)),
                events: events.iter().map(|e| NewEvent::from_domain(e, correlation_id, None, now)).collect(),
            };
            let state = events.iter().fold(state, meshgate_domain::build::evolve);
            Ok(Decision::append([append].into_iter().chain(guard.clone()).collect(), (events, state)))
        })
        .await?;
        let (events, state) = decided.answer;
        Ok(Executed { events, state, last_position: decided.last_position.unwrap_or_default() })
    }

    /// Records a refused heartbeat or result, so the log shows every stale attempt.
    pub async fn record_rejection(
        &self,
        build_id: Uuid,
        correlation_id: Uuid,
        node_id: &str,
        attempt: u32,
        reason: String,
    ) -> Result<(), StoreError> {
        let event =
            Event::BuildResultRejected(BuildResultRejected { build_id, node_id: node_id.to_owned(), attempt, reason });
        let append = StreamAppend {
            stream: build_stream(build_id),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::from_domain(&event, correlation_id, None, Utc::now())],
        };
        self.store.append(vec![append]).await.map(|_| ())
    }
}
