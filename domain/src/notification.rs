//! The lifecycle of one notification, a (sink, build, milestone) key, as an enum state machine:
//! pending → attempting → delivered | abandoned, and back to attempting when an operator asks for
//! it to be sent again (an abandoned key, or with `force` a delivered one), with a fresh budget of
//! tries.
//!
//! The shell sends one try and hands what came back to [`decide`], which says what to record: the
//! attempt, and whether the key is now delivered, waits for a retry (when, by the retry policy,
//! which is data) or is abandoned (and why). [`evolve`] folds the recorded events back into the
//! state; the `outbox` projection keeps one state per key with the very same function.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{Event, NotificationAbandoned, NotificationAttempted, NotificationDelivered};
use crate::notify::{notification_key, truncate, Milestone};
use crate::retry::{classify, RetryPolicy, Verdict};

/// The longest excerpt of an answer or error kept in an attempt event.
pub const EXCERPT_GRAPHEMES: usize = 500;

/// Where one notification key stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NotificationState {
    /// Nothing tried yet.
    #[default]
    Pending,
    /// Tried and not done; `next_attempt_at` is when the next try is due (none: due now).
    /// `budget_from` is how many tries were made before the last resend: the retry policy counts
    /// the tries after it.
    Attempting {
        attempts: u32,
        next_attempt_at: Option<DateTime<Utc>>,
        #[serde(default, skip_serializing_if = "is_zero")]
        budget_from: u32,
    },
    Delivered {
        attempts: u32,
    },
    Abandoned {
        attempts: u32,
    },
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl NotificationState {
    /// Tries made since the last resend (all of them, if none).
    fn tries_in_budget(&self) -> u32 {
        match self {
            NotificationState::Attempting { attempts, budget_from, .. } => attempts - budget_from.min(attempts),
            other => other.attempts(),
        }
    }

    pub fn attempts(&self) -> u32 {
        match self {
            NotificationState::Pending => 0,
            NotificationState::Attempting { attempts, .. }
            | NotificationState::Delivered { attempts }
            | NotificationState::Abandoned { attempts } => *attempts,
        }
    }

    /// Delivered or abandoned: nothing more to do.
    pub fn is_done(&self) -> bool {
        matches!(self, NotificationState::Delivered { .. } | NotificationState::Abandoned { .. })
    }

    pub fn is_delivered(&self) -> bool {
        matches!(self, NotificationState::Delivered { .. })
    }

    /// When the next try is due, if one is waiting for a later moment.
    pub fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        match self {
            NotificationState::Attempting { next_attempt_at, .. } => *next_attempt_at,
            _ => None,
        }
    }

    /// Whether a try may be made at `now`.
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        match self {
            NotificationState::Pending => true,
            NotificationState::Attempting { next_attempt_at, .. } => next_attempt_at.is_none_or(|at| at <= now),
            NotificationState::Delivered { .. } | NotificationState::Abandoned { .. } => false,
        }
    }
}

/// Which notification a try was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationId {
    pub sink: String,
    pub build_id: Uuid,
    pub milestone: Milestone,
}

impl NotificationId {
    pub fn key(&self) -> String {
        notification_key(&self.sink, self.build_id, self.milestone)
    }
}

/// What one try came to, as the sink's protocol read the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TryOutcome {
    /// The answer's status (a protocol that answers 200 with an error maps it to the status it
    /// means); none when nothing came back (refused, reset, timed out, a certificate refused).
    pub status: Option<u16>,
    /// A local sink (the gateway's console) took the line: delivered, with no status.
    pub written: bool,
    /// The start of the answer, or why there was none (the error with its causes).
    pub detail: String,
    /// How long the target asked us to wait (`Retry-After`, or its body's equivalent).
    pub retry_after: Option<Duration>,
    /// The target's id for the message it made, where it gives one.
    pub message_ref: Option<String>,
    /// Why the target refused, in its own words, where its answer says (YouTrack's
    /// `error_description` for a command it cannot apply).
    pub said: Option<String>,
}

impl TryOutcome {
    pub fn succeeded(&self) -> bool {
        self.written || self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// No answer, 408, 425, 429 and 5xx are worth another try; other answers are final.
    pub fn retryable(&self) -> bool {
        !self.written && self.status.is_none_or(|s| classify(s) == Verdict::Retry)
    }
}

/// Why a notification was given up. Recorded as its words (`refused with 404`, `gave up after 5
/// attempts`), which read back as the reason they say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbandonReason {
    /// The target gave a final answer that is not a success, and what it said, if it said why.
    Refused { status: u16, said: Option<String> },
    /// Every try the policy allows was made.
    GaveUp { attempts: u32 },
    /// Words of an earlier release (such as `HTTP 500`), kept as they were recorded.
    Said(String),
}

impl std::fmt::Display for AbandonReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AbandonReason::Refused { status, said: None } => write!(f, "refused with {status}"),
            AbandonReason::Refused { status, said: Some(said) } => write!(f, "refused with {status}: {said}"),
            AbandonReason::GaveUp { attempts } => write!(f, "gave up after {attempts} attempts"),
            AbandonReason::Said(words) => f.write_str(words),
        }
    }
}

impl AbandonReason {
    /// The reason recorded words say.
    pub fn read(words: &str) -> AbandonReason {
        if let Some(refused) = words.strip_prefix("refused with ") {
            let (status, said) = match refused.split_once(": ") {
                Some((status, said)) => (status, Some(said.to_owned())),
                None => (refused, None),
            };
            if let Ok(status) = status.parse() {
                return AbandonReason::Refused { status, said };
            }
        }
        let attempts = words.strip_prefix("gave up after ").and_then(|r| r.strip_suffix(" attempts"));
        match attempts.and_then(|n| n.parse().ok()) {
            Some(attempts) => AbandonReason::GaveUp { attempts },
            None => AbandonReason::Said(words.to_owned()),
        }
    }
}

impl serde::Serialize for AbandonReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for AbandonReason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let words = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(AbandonReason::read(&words))
    }
}

/// A try that cannot be recorded, because the key is finished.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotificationError {
    #[error("notification {key} was already delivered")]
    AlreadyDelivered { key: String },
    #[error("notification {key} was already abandoned")]
    AlreadyAbandoned { key: String },
}

/// What to record for one try made at `now`. `random` is a fraction in `[0, 1)` for the jitter.
pub fn decide(
    state: &NotificationState,
    id: &NotificationId,
    outcome: &TryOutcome,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
    random: f64,
) -> Result<Vec<Event>, NotificationError> {
    let key = id.key();
    match state {
        NotificationState::Delivered { .. } => return Err(NotificationError::AlreadyDelivered { key }),
        NotificationState::Abandoned { .. } => return Err(NotificationError::AlreadyAbandoned { key }),
        NotificationState::Pending | NotificationState::Attempting { .. } => {}
    }
    let attempt = state.attempts() + 1;
    let in_budget = state.tries_in_budget() + 1;
    let next_wait = match (outcome.succeeded(), outcome.retryable()) {
        (false, true) => policy.next_wait(in_budget - 1, outcome.retry_after, random),
        _ => None,
    };
    let next_attempt_at = next_wait.map(|w| now + chrono::Duration::from_std(w).unwrap_or(chrono::Duration::MAX));
    let mut events = vec![Event::NotificationAttempted(NotificationAttempted {
        key: key.clone(),
        sink: id.sink.clone(),
        build_id: id.build_id,
        milestone: id.milestone,
        attempt,
        status: outcome.status,
        excerpt: truncate(&outcome.detail, EXCERPT_GRAPHEMES),
        next_attempt_at,
    })];
    if outcome.succeeded() {
        events.push(Event::NotificationDelivered(NotificationDelivered {
            key,
            sink: id.sink.clone(),
            build_id: id.build_id,
            milestone: id.milestone,
            attempts: attempt,
            message_ref: outcome.message_ref.clone(),
        }));
    } else if next_attempt_at.is_none() {
        let reason = match outcome.status {
            Some(status) if !outcome.retryable() => {
                AbandonReason::Refused { status, said: outcome.said.as_deref().map(|s| truncate(s, EXCERPT_GRAPHEMES)) }
            }
            _ => AbandonReason::GaveUp { attempts: in_budget },
        };
        events.push(Event::NotificationAbandoned(NotificationAbandoned {
            key,
            sink: id.sink.clone(),
            build_id: id.build_id,
            milestone: id.milestone,
            attempts: attempt,
            reason,
        }));
    }
    Ok(events)
}

/// Whether an operator may ask for a key to be sent again: not a delivered one, unless forced.
pub fn decide_resend(state: &NotificationState, id: &NotificationId, force: bool) -> Result<(), NotificationError> {
    match state {
        NotificationState::Delivered { .. } if !force => Err(NotificationError::AlreadyDelivered { key: id.key() }),
        _ => Ok(()),
    }
}

/// The state after one recorded event; events of other kinds leave it as it is.
pub fn evolve(state: NotificationState, event: &Event) -> NotificationState {
    match event {
        Event::NotificationAttempted(e) if !state.is_done() => NotificationState::Attempting {
            attempts: state.attempts().max(e.attempt),
            next_attempt_at: e.next_attempt_at,
            budget_from: match state {
                NotificationState::Attempting { budget_from, .. } => budget_from,
                _ => 0,
            },
        },
        // Due now, with a fresh budget; attempt numbers go on from where they were.
        Event::NotificationResendRequested(_) => NotificationState::Attempting {
            attempts: state.attempts(),
            next_attempt_at: None,
            budget_from: state.attempts(),
        },
        Event::NotificationDelivered(e) => NotificationState::Delivered { attempts: state.attempts().max(e.attempts) },
        Event::NotificationAbandoned(e) if !state.is_delivered() => {
            NotificationState::Abandoned { attempts: state.attempts().max(e.attempts) }
        }
        _ => state,
    }
}

/// The state a key's recorded events lead to.
pub fn replay(events: &[Event]) -> NotificationState {
    events.iter().fold(NotificationState::Pending, evolve)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_787_562_900 + s, 0).unwrap()
    }

    fn id() -> NotificationId {
        NotificationId { sink: "team".into(), build_id: Uuid::nil(), milestone: Milestone::Failed }
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            max_wait: Duration::from_secs(120),
            max_attempts,
        }
    }

    fn outcome(status: Option<u16>, retry_after: Option<u64>) -> TryOutcome {
        TryOutcome {
            status,
            written: false,
            detail: "answer".into(),
            said: None,
            retry_after: retry_after.map(Duration::from_secs),
            message_ref: None,
        }
    }

    fn attempted(attempt: u32, status: Option<u16>, next: Option<DateTime<Utc>>) -> Event {
        Event::NotificationAttempted(NotificationAttempted {
            key: id().key(),
            sink: "team".into(),
            build_id: Uuid::nil(),
            milestone: Milestone::Failed,
            attempt,
            status,
            excerpt: "answer".into(),
            next_attempt_at: next,
        })
    }

    fn abandoned(attempts: u32, reason: &str) -> Event {
        Event::NotificationAbandoned(NotificationAbandoned {
            key: id().key(),
            sink: "team".into(),
            build_id: Uuid::nil(),
            milestone: Milestone::Failed,
            attempts,
            reason: AbandonReason::read(reason),
        })
    }

    #[test]
    fn an_abandon_reason_is_recorded_as_its_words_and_read_back_as_the_reason_they_say() {
        for (reason, words) in [
            (AbandonReason::Refused { status: 404, said: None }, "\"refused with 404\""),
            (
                AbandonReason::Refused { status: 400, said: Some("Unknown state: Ready for QQA".into()) },
                "\"refused with 400: Unknown state: Ready for QQA\"",
            ),
            (AbandonReason::GaveUp { attempts: 5 }, "\"gave up after 5 attempts\""),
            (AbandonReason::Said("HTTP 500".into()), "\"HTTP 500\""),
        ] {
            assert_eq!(serde_json::to_string(&reason).unwrap(), words);
            assert_eq!(serde_json::from_str::<AbandonReason>(words).unwrap(), reason);
        }
        assert_eq!(AbandonReason::read("refused with many"), AbandonReason::Said("refused with many".into()));
    }

    fn delivered(attempts: u32) -> Event {
        Event::NotificationDelivered(NotificationDelivered {
            key: id().key(),
            sink: "team".into(),
            build_id: Uuid::nil(),
            milestone: Milestone::Failed,
            attempts,
            message_ref: None,
        })
    }

    /// given(recorded events).when(a try's outcome, max attempts).then(events to record)
    struct Given(Vec<Event>);
    struct When(Result<Vec<Event>, NotificationError>);

    fn given(events: Vec<Event>) -> Given {
        Given(events)
    }

    impl Given {
        fn when(self, outcome: TryOutcome, max_attempts: u32) -> When {
            When(decide(&replay(&self.0), &id(), &outcome, &policy(max_attempts), t(0), 0.5))
        }
    }

    impl When {
        #[track_caller]
        fn then(self, expected: Vec<Event>) {
            assert_eq!(self.0, Ok(expected));
        }
        #[track_caller]
        fn then_err(self, expected: NotificationError) {
            assert_eq!(self.0, Err(expected));
        }
    }

    #[test]
    fn a_success_is_recorded_as_the_attempt_and_the_delivery() {
        given(vec![]).when(outcome(Some(202), None), 8).then(vec![attempted(1, Some(202), None), delivered(1)]);
    }

    #[test]
    fn a_retryable_answer_schedules_the_next_try_no_sooner_than_retry_after() {
        given(vec![]).when(outcome(Some(429), Some(30)), 8).then(vec![attempted(1, Some(429), Some(t(30)))]);
        // No hint: full jitter under the doubling ceiling (attempt 2 of base 1 s: 2 s, half of it).
        given(vec![attempted(1, Some(503), Some(t(-1)))]).when(outcome(Some(503), None), 8).then(vec![attempted(
            2,
            Some(503),
            Some(t(1)),
        )]);
    }

    #[test]
    fn no_answer_is_retried_like_a_server_error() {
        given(vec![]).when(outcome(None, None), 8).then(vec![attempted(
            1,
            None,
            Some(DateTime::from_timestamp_millis(1_787_562_900_500).unwrap()),
        )]);
    }

    #[test]
    fn a_line_a_local_sink_wrote_is_delivered_without_a_status() {
        let written = TryOutcome { written: true, ..outcome(None, None) };
        given(vec![]).when(written, 8).then(vec![attempted(1, None, None), delivered(1)]);
    }

    #[test]
    fn a_final_answer_abandons_at_once_and_says_so() {
        given(vec![])
            .when(outcome(Some(400), None), 8)
            .then(vec![attempted(1, Some(400), None), abandoned(1, "refused with 400")]);
    }

    #[test]
    fn the_last_allowed_try_abandons_when_it_fails() {
        given(vec![attempted(1, Some(500), Some(t(-2))), attempted(2, Some(500), Some(t(-1)))])
            .when(outcome(Some(500), None), 3)
            .then(vec![attempted(3, Some(500), None), abandoned(3, "gave up after 3 attempts")]);
    }

    #[test]
    fn a_finished_key_records_no_further_try() {
        given(vec![attempted(1, Some(200), None), delivered(1)])
            .when(outcome(Some(200), None), 8)
            .then_err(NotificationError::AlreadyDelivered { key: id().key() });
        given(vec![attempted(1, Some(400), None), abandoned(1, "refused with 400")])
            .when(outcome(Some(200), None), 8)
            .then_err(NotificationError::AlreadyAbandoned { key: id().key() });
    }

    fn resend(force: bool) -> Event {
        Event::NotificationResendRequested(crate::event::NotificationResendRequested {
            key: id().key(),
            sink: "team".into(),
            build_id: Uuid::nil(),
            milestone: Milestone::Failed,
            requested_by: "admin".into(),
            force,
            requested_at: t(0),
        })
    }

    #[test]
    fn a_resent_key_gets_a_fresh_budget_and_its_attempts_go_on_counting() {
        let gave_up = vec![
            attempted(1, Some(500), Some(t(-2))),
            attempted(2, Some(500), None),
            abandoned(2, "gave up after 2 attempts"),
        ];
        assert_eq!(decide_resend(&replay(&gave_up), &id(), false), Ok(()));
        let mut resent = gave_up;
        resent.push(resend(false));
        assert!(replay(&resent).is_due(t(0)));
        // Attempt 3 is the first of a new budget of 2: a failure is retried, not abandoned.
        let retry_at = t(0) + chrono::Duration::milliseconds(500);
        given(resent.clone()).when(outcome(Some(500), None), 2).then(vec![attempted(3, Some(500), Some(retry_at))]);
        resent.push(attempted(3, Some(500), Some(t(-1))));
        given(resent)
            .when(outcome(Some(500), None), 2)
            .then(vec![attempted(4, Some(500), None), abandoned(4, "gave up after 2 attempts")]);
    }

    #[test]
    fn a_delivered_key_is_sent_again_only_when_forced() {
        let sent = vec![attempted(1, Some(200), None), delivered(1)];
        let state = replay(&sent);
        assert_eq!(decide_resend(&state, &id(), false), Err(NotificationError::AlreadyDelivered { key: id().key() }));
        assert_eq!(decide_resend(&state, &id(), true), Ok(()));
        let mut forced = sent;
        forced.push(resend(true));
        given(forced).when(outcome(Some(200), None), 8).then(vec![attempted(2, Some(200), None), delivered(2)]);
    }

    #[test]
    fn long_details_are_cut_for_the_audit() {
        let long = TryOutcome { detail: "x".repeat(10_000), ..outcome(Some(500), None) };
        let events = decide(&NotificationState::Pending, &id(), &long, &policy(8), t(0), 0.0).unwrap();
        let Event::NotificationAttempted(attempt) = &events[0] else { panic!("{events:?}") };
        assert_eq!(attempt.excerpt.chars().count(), EXCERPT_GRAPHEMES);
    }

    #[test]
    fn states_follow_the_recorded_events_and_a_delivery_is_never_undone() {
        let next = Some(t(5));
        assert_eq!(replay(&[]), NotificationState::Pending);
        assert_eq!(
            replay(&[attempted(1, Some(503), next)]),
            NotificationState::Attempting { attempts: 1, next_attempt_at: next, budget_from: 0 }
        );
        assert!(!replay(&[attempted(1, Some(503), next)]).is_due(t(4)));
        assert!(replay(&[attempted(1, Some(503), next)]).is_due(t(5)));
        let done =
            replay(&[attempted(1, Some(200), None), delivered(1), abandoned(1, "late"), attempted(2, None, None)]);
        assert_eq!(done, NotificationState::Delivered { attempts: 1 });
        assert!(!done.is_due(t(100)));
    }
}
