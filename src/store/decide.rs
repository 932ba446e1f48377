//! One way to decide and append, for every command handler of the shell (deliveries, build
//! commands, notification tries and resends, replays, reconciliation sweeps), in the spirit of
//! fmodel's aggregate: load what the decision needs from the log, call the pure decide, append its
//! events at the versions they were decided on, and when another writer got there first (a version
//! conflict), load and decide again, within one budget. Uniqueness is the store's: a decision that
//! no longer holds is refused whole.

use std::future::Future;
use std::time::Duration;

use super::{EventStore, StoreError, StreamAppend};

/// How long a decision may be taken again after version conflicts.
///
/// A conflict means another append to the same streams landed first, so contenders get through
/// at least one per commit and none waits forever; but twenty transitions of one issue arriving
/// together coalesce one at a time, so no fixed number of tries is enough (sixteen refused a third
/// of 64 simultaneous ones). The bound is time, well inside the webhook sender's 5 s.
pub const RETRY_FOR: Duration = Duration::from_secs(2);

/// How conflicts are met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// One try: a conflict is answered at once, for a caller that decides again on fresher views
    /// of its own (a claim in a capped lane).
    Once,
    /// Load and decide again until this long has passed since the first try.
    For(Duration),
}

/// What a decision appends, and what it answers.
#[derive(Debug)]
pub struct Decision<T> {
    pub appends: Vec<StreamAppend>,
    pub answer: T,
}

impl<T> Decision<T> {
    pub fn append(appends: Vec<StreamAppend>, answer: T) -> Self {
        Decision { appends, answer }
    }

    /// Nothing to append: the decision is already in the log, or nothing is to be done.
    pub fn nothing(answer: T) -> Self {
        Decision { appends: Vec::new(), answer }
    }
}

/// A decision durably taken.
#[derive(Debug)]
pub struct Decided<T> {
    pub answer: T,
    /// The position of the last event appended (none: the decision appended nothing).
    pub last_position: Option<u64>,
}

/// Loads (`load(tries so far)`: a first try may assume instead of reading), decides and appends,
/// again after each version conflict while `retry` allows; past it,
/// [`StoreError::Contention`]. A refusal of `decide` or any other store error ends it at once.
pub async fn decide_and_append<V, T, E, L, F>(
    store: &dyn EventStore,
    retry: Retry,
    load: L,
    mut decide: impl FnMut(&V) -> Result<Decision<T>, E>,
) -> Result<Decided<T>, E>
where
    L: Fn(u32) -> F,
    F: Future<Output = Result<V, E>>,
    E: From<StoreError>,
{
    let deadline = match retry {
        Retry::Once => None,
        Retry::For(budget) => Some(tokio::time::Instant::now() + budget),
    };
    let mut tries = 0;
    loop {
        let view = load(tries).await?;
        tries += 1;
        let Decision { appends, answer } = decide(&view)?;
        if appends.iter().all(|a| a.events.is_empty()) {
            return Ok(Decided { answer, last_position: None });
        }
        match store.append(appends).await {
            Ok(appended) => return Ok(Decided { answer, last_position: Some(appended.last_position) }),
            Err(StoreError::Conflict { stream, .. }) => {
                if deadline.is_none_or(|d| tokio::time::Instant::now() >= d) {
                    return Err(StoreError::Contention { stream, tries }.into());
                }
                tracing::debug!(%stream, tries, "version conflict; deciding again");
            }
            Err(e) => return Err(e.into()),
        }
    }
}
