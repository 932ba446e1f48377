//! Sending notifications again, at an operator's request: one key (`POST
//! /api/v1/notifications/resend`), or every key abandoned in a time window (`POST
//! /api/v1/notifications/recover`). Each request is a `NotificationResendRequested` event on the
//! key's stream, appended at its exact version after the lifecycle allowed it; the sink's task then
//! finds the key due again, with a fresh budget of tries.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use meshgate_domain::event::NotificationResendRequested;
use meshgate_domain::notification::{decide_resend, replay, NotificationError, NotificationId};
use meshgate_domain::notify::Milestone;
use meshgate_domain::stream::notification_stream;
use meshgate_domain::{Event, ExpectedVersion};
use uuid::Uuid;

use crate::store::{decide_and_append, Decision, EventStore, NewEvent, Retry, StoreError, StreamAppend, RETRY_FOR};

#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    #[error("`{0}` is not a notification key (sink/build/milestone)")]
    BadKey(String),
    #[error(transparent)]
    Refused(#[from] NotificationError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads `sink/build/milestone`.
pub fn parse_key(key: &str) -> Result<NotificationId, ResendError> {
    let bad = || ResendError::BadKey(key.to_owned());
    let mut parts = key.splitn(3, '/');
    let (Some(sink), Some(build), Some(milestone)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    Ok(NotificationId {
        sink: sink.to_owned(),
        build_id: Uuid::parse_str(build).map_err(|_| bad())?,
        milestone: Milestone::parse(milestone).ok_or_else(bad)?,
    })
}

/// Records the request to send `id` again, if its lifecycle allows it; answers the position.
pub async fn request(
    store: &dyn EventStore,
    id: &NotificationId,
    force: bool,
    requested_by: &str,
    now: DateTime<Utc>,
) -> Result<u64, ResendError> {
    let stream = &notification_stream(&id.key());
    let load = |_| async move { Ok::<_, ResendError>(store.read_stream(stream).await?) };
    let decided = decide_and_append(store, Retry::For(RETRY_FOR), load, |stored| {
        let events: Vec<Event> = stored.iter().filter_map(|e| e.decode().ok().map(|r| r.event)).collect();
        decide_resend(&replay(&events), id, force)?;
        let event = Event::NotificationResendRequested(NotificationResendRequested {
            key: id.key(),
            sink: id.sink.clone(),
            build_id: id.build_id,
            milestone: id.milestone,
            requested_by: requested_by.to_owned(),
            force,
            requested_at: now,
        });
        let append = StreamAppend {
            stream: stream.clone(),
            expected: ExpectedVersion::from_current(stored.last().map(|s| s.version)),
            events: vec![NewEvent::from_domain(&event, Uuid::now_v7(), None, now)],
        };
        Ok(Decision::append(vec![append], ()))
    })
    .await?;
    Ok(decided.last_position.unwrap_or_default())
}

/// The keys abandoned between `since` and `until` (of one sink, if given), oldest first, read
/// from the log.
pub async fn abandoned_between(
    store: &dyn EventStore,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    sink: Option<&str>,
) -> Result<Vec<NotificationId>, StoreError> {
    let mut found = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let head = *store.head().borrow();
    let mut batches = store.scan(0, head, &["NotificationAbandoned"]);
    while let Some((batch, _)) = batches.try_next().await? {
        for recorded in batch {
            if let Event::NotificationAbandoned(e) = recorded.event {
                let in_window = (since..=until).contains(&recorded.recorded_at);
                if in_window && sink.is_none_or(|s| s == e.sink) && seen.insert(e.key) {
                    found.push(NotificationId { sink: e.sink, build_id: e.build_id, milestone: e.milestone });
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_into_their_parts_and_anything_else_is_refused() {
        let build = Uuid::from_u128(7);
        let id = parse_key(&format!("team/{build}/failed")).unwrap();
        assert_eq!((id.sink.as_str(), id.build_id, id.milestone), ("team", build, Milestone::Failed));
        for bad in ["team", "team/nope/failed", &format!("team/{build}/exploded")] {
            assert!(matches!(parse_key(bad), Err(ResendError::BadKey(_))), "{bad}");
        }
    }
}
