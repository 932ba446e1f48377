//! Commands on one build: read its stream, decide, append at the exact version it was read at,
//! and decide again if another writer got there first.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use meshgate_domain::build::{decide, replay};
use meshgate_domain::event::BuildResultRejected;
use meshgate_domain::stream::build_stream;
use meshgate_domain::{BuildCommand, BuildError, BuildState, Event, ExpectedVersion};
use uuid::Uuid;

use crate::store::{EventStore, NewEvent, StoreError, StreamAppend};

const MAX_ATTEMPTS: usize = 8;

/// A command that was applied.
#[derive(Debug, Clone)]
pub struct Executed {
    pub events: Vec<Event>,
    /// The build's state after the command.
    pub state: BuildState,
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
    #[error("gave up after {MAX_ATTEMPTS} version conflicts")]
    Contention,
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
        let stream = build_stream(build_id);
        for _ in 0..MAX_ATTEMPTS {
            let stored = self.store.read_stream(&stream).await?;
            if stored.is_empty() && !matches!(command, BuildCommand::Request(_)) {
                return Err(CommandError::NotFound);
            }
            let history = stored.iter().map(|s| s.decode().map(|r| r.event)).collect::<Result<Vec<_>, _>>()?;
            let state = replay(&history);
            let events = match decide(&state, build_id, command, now) {
                Ok(events) => events,
                Err(error) => return Err(CommandError::Refused { error, history }),
            };
            let append = StreamAppend {
                stream: stream.clone(),
                expected: ExpectedVersion::from_current(stored.last().map(|s| s.version)),
                events: events.iter().map(|e| NewEvent::from_domain(e, correlation_id, None, now)).collect(),
            };
            match self.store.append(vec![append]).await {
                Ok(appended) => {
                    let state = events.iter().fold(state, meshgate_domain::build::evolve);
                    return Ok(Executed { events, state, last_position: appended.last_position });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommandError::Contention)
    }

    /// Claims a build together with `guard` (a lane's stream, appended at the version the claim
    /// was decided on), in one atomic append, once: a conflict on either stream answers
    /// [`CommandError::Contention`], and the caller decides again on fresher projections.
    pub async fn claim_guarded(
        &self,
        build_id: Uuid,
        correlation_id: Uuid,
        command: &BuildCommand,
        guard: StreamAppend,
    ) -> Result<Executed, CommandError> {
        let now = Utc::now();
        let stream = build_stream(build_id);
        let stored = self.store.read_stream(&stream).await?;
        if stored.is_empty() {
            return Err(CommandError::NotFound);
        }
        let history = stored.iter().map(|s| s.decode().map(|r| r.event)).collect::<Result<Vec<_>, _>>()?;
        let state = replay(&history);
        let events =
            decide(&state, build_id, command, now).map_err(|error| CommandError::Refused { error, history })?;
        let append = StreamAppend {
            stream,
            expected: ExpectedVersion::from_current(stored.last().map(|s| s.version)),
            events: events.iter().map(|e| NewEvent::from_domain(e, correlation_id, None, now)).collect(),
        };
        match self.store.append(vec![append, guard]).await {
            Ok(appended) => {
                let state = events.iter().fold(state, meshgate_domain::build::evolve);
                Ok(Executed { events, state, last_position: appended.last_position })
            }
            Err(StoreError::Conflict { .. }) => Err(CommandError::Contention),
            Err(e) => Err(e.into()),
        }
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
