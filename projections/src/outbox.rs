//! `outbox`: build milestones and, per notification key, where its delivery stands. The outbound
//! dispatcher asks it what is due for a sink; every attempt it makes comes back as an event.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use meshgate_domain::notification::{evolve, NotificationState};
use meshgate_domain::notify::{notification_key, Milestone};
use meshgate_domain::{Event, Recorded};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Projection;

/// Milestones older than this (against the newest event) are forgotten.
const KEEP_HOURS: i64 = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilestoneRecord {
    pub build_id: Uuid,
    pub milestone: Milestone,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbox {
    /// By global position, so notifications go out in log order.
    pub milestones: BTreeMap<u64, MilestoneRecord>,
    /// Where each notification key stands, folded with the domain's `notification::evolve`.
    pub keys: HashMap<String, NotificationState>,
    /// `sink/build` → the message later states of the build edit in place.
    #[serde(default)]
    pub message_refs: HashMap<String, String>,
    /// Keys an operator asked to send again, by the position of the request: due for their sink
    /// only, whatever their milestone's age, until they are delivered or abandoned again.
    #[serde(default)]
    pub resent: BTreeMap<u64, (String, MilestoneRecord)>,
}

impl Outbox {
    /// Milestones a sink still has to send, oldest first: recorded within `window` of `now`, not
    /// delivered or abandoned, accepted by `wanted`, and not waiting for a later retry.
    pub fn due(
        &self,
        sink: &str,
        now: DateTime<Utc>,
        window: Duration,
        wanted: impl Fn(Milestone) -> bool,
    ) -> Vec<MilestoneRecord> {
        let resent = self.resent.values().filter(|(s, _)| s == sink).map(|(_, m)| m);
        self.milestones
            .values()
            .filter(|m| m.at >= now - window && wanted(m.milestone))
            .chain(resent)
            .filter(|m| {
                let key = notification_key(sink, m.build_id, m.milestone);
                self.keys.get(&key).is_none_or(|k| k.is_due(now))
            })
            .copied()
            .collect()
    }

    /// The earliest retry a sink is waiting for, if any.
    pub fn next_retry(&self, sink: &str) -> Option<DateTime<Utc>> {
        let prefix = format!("{sink}/");
        self.keys.iter().filter(|(k, _)| k.starts_with(&prefix)).filter_map(|(_, s)| s.next_attempt_at()).min()
    }

    /// The message a sink posted first for a build, if it keeps one.
    pub fn message_ref(&self, sink: &str, build_id: Uuid) -> Option<&str> {
        self.message_refs.get(&format!("{sink}/{build_id}")).map(String::as_str)
    }

    pub fn key(&self, key: &str) -> Option<&NotificationState> {
        self.keys.get(key)
    }

    fn abandoned(&self, sink: &str, build_id: Uuid) -> bool {
        let prefix = format!("{sink}/{build_id}/");
        self.keys.iter().any(|(k, s)| k.starts_with(&prefix) && matches!(s, NotificationState::Abandoned { .. }))
    }

    fn failing(&self, sink: &str, build_id: Uuid) -> bool {
        let prefix = format!("{sink}/{build_id}/");
        self.keys.iter().any(|(k, s)| k.starts_with(&prefix) && !s.is_delivered() && s.attempts() > 0)
    }

    /// Why on-call should be paged about a build, if they should: the tracker comment was
    /// abandoned while chat also failed for the build, or every chat sink abandoned it.
    pub fn page_reason(&self, build_id: Uuid, chat_sinks: &[String], tracker: Option<&str>) -> Option<&'static str> {
        let tracker_abandoned = tracker.is_some_and(|t| self.abandoned(t, build_id));
        let chat_failed = chat_sinks.is_empty() || chat_sinks.iter().any(|s| self.failing(s, build_id));
        if tracker_abandoned && chat_failed {
            return Some("tracker comment abandoned and chat failing");
        }
        if !chat_sinks.is_empty() && chat_sinks.iter().all(|s| self.abandoned(s, build_id)) {
            return Some("every chat sink abandoned");
        }
        None
    }

    /// Whether any page was abandoned (the pager itself is failing).
    pub fn pager_failing(&self, pager: &str) -> bool {
        let prefix = format!("{pager}/");
        self.keys.iter().any(|(k, s)| k.starts_with(&prefix) && matches!(s, NotificationState::Abandoned { .. }))
    }
}

impl Projection for Outbox {
    const NAME: &'static str = "outbox";

    fn wants(event_type: &str) -> bool {
        matches!(
            event_type,
            "BuildRequested"
                | "BuildClaimed"
                | "BuildSucceeded"
                | "BuildFailed"
                | "BuildRequeued"
                | "BuildCancelled"
                | "NotificationAttempted"
                | "NotificationDelivered"
                | "NotificationAbandoned"
                | "NotificationResendRequested"
                | "PageRequested"
        )
    }

    fn apply(&mut self, recorded: &Recorded) {
        if let Some((build_id, milestone)) = Milestone::of(&recorded.event) {
            self.milestones
                .insert(recorded.position, MilestoneRecord { build_id, milestone, at: recorded.recorded_at });
            let horizon = recorded.recorded_at - Duration::hours(KEEP_HOURS);
            while self.milestones.first_key_value().is_some_and(|(_, m)| m.at < horizon) {
                self.milestones.pop_first();
            }
            return;
        }
        let key = match &recorded.event {
            Event::NotificationAttempted(e) => &e.key,
            Event::NotificationDelivered(e) => {
                if let Some(message) = &e.message_ref {
                    self.message_refs.entry(format!("{}/{}", e.sink, e.build_id)).or_insert_with(|| message.clone());
                }
                &e.key
            }
            Event::NotificationAbandoned(e) => &e.key,
            Event::NotificationResendRequested(e) => {
                let due = MilestoneRecord { build_id: e.build_id, milestone: e.milestone, at: recorded.recorded_at };
                self.resent.insert(recorded.position, (e.sink.clone(), due));
                &e.key
            }
            _ => return,
        };
        let state = self.keys.entry(key.clone()).or_default();
        *state = evolve(std::mem::take(state), &recorded.event);
        if state.is_done() {
            let done = key.clone();
            self.resent.retain(|_, (sink, m)| notification_key(sink, m.build_id, m.milestone) != done);
        }
    }
}
