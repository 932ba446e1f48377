//! Stream names and the optimistic-concurrency expectation attached to an append.
//!
//! Uniqueness rules are expressed as streams: one stream per delivery fingerprint (created with
//! [`ExpectedVersion::NoStream`]), one per intent (appended at an exact version), one per build,
//! one per notification key and one per page. Stream names are made here and nowhere else.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::fingerprint::Fingerprint;
use crate::trigger::IntentKey;

/// What the writer expects a stream to look like before it appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVersion {
    /// Append whatever the stream holds.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have this version (versions count from 0).
    Exact(u64),
}

impl ExpectedVersion {
    /// The expectation that matches a stream whose last version is `version` (`None`: no stream).
    pub fn from_current(version: Option<u64>) -> Self {
        match version {
            None => ExpectedVersion::NoStream,
            Some(v) => ExpectedVersion::Exact(v),
        }
    }

    /// Whether a stream whose last version is `current` satisfies this expectation.
    pub fn is_satisfied_by(self, current: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::Exact(v) => current == Some(v),
        }
    }
}

/// The stream holding every delivery that had this fingerprint.
pub fn delivery_stream(fingerprint: &Fingerprint) -> String {
    format!("delivery-{}", fingerprint.as_str())
}

/// What every intent's stream name starts with (an issue's intents: `intent-{issue}/…`).
pub const INTENT_PREFIX: &str = "intent-";
/// What every build's stream name starts with.
pub const BUILD_PREFIX: &str = "build-";

/// The stream recording which build serves an intent.
pub fn intent_stream(intent: &IntentKey) -> String {
    format!("{INTENT_PREFIX}{}", intent.as_str())
}

/// The stream holding one build's whole life.
pub fn build_stream(build_id: Uuid) -> String {
    format!("{BUILD_PREFIX}{build_id}")
}

/// The stream of one notification key (`sink/build/milestone`): its attempts and how it ended.
pub fn notification_stream(key: &str) -> String {
    format!("notification-{key}")
}

/// The stream of every reconciliation sweep (`ReconcileSwept`); read by its last event only.
pub fn reconcile_stream() -> String {
    "reconcile-sweeps".to_owned()
}

/// The stream of every self-test run through the API (`SelfTestRan`).
pub fn selftest_stream() -> String {
    "selftest-runs".to_owned()
}

/// The stream of one build node: how it presented itself (`NodeSeen`) and operators' drains.
pub fn node_stream(node_id: &str) -> String {
    format!("node-{node_id}")
}

/// The stream of the claims in a lane with a cap on running builds (`LaneClaimed`), appended at
/// its exact version with each claim.
pub fn lane_stream(lane: &str) -> String {
    format!("lane-{lane}")
}

/// The stream of a build's page: created with [`ExpectedVersion::NoStream`], so on-call is paged
/// once per build.
pub fn page_stream(build_id: Uuid) -> String {
    format!("page-{build_id}")
}

/// The stream of one request from chat (`via`: `slack`, `matrix`; `request_id`: the chat's id of
/// the click or reaction): created with [`ExpectedVersion::NoStream`], so a request sent again
/// does nothing more.
pub fn action_stream(via: &str, request_id: &str) -> String {
    format!("action-{via}-{request_id}")
}

/// The stream of a lane's watch: `LaneUnservable` and `LaneServable` in turn, appended at its
/// exact version, so a lane is paged about once per time it cannot be served.
pub fn lane_watch_stream(lane: &str) -> String {
    format!("lane-watch-{lane}")
}

/// The stream of the queue's pauses and resumes, appended at its exact version.
pub fn pause_stream() -> String {
    "queue-pauses".to_owned()
}

/// The stream of how far the gateway has read a chat sink's room for actions (`ChatSynced`).
pub fn chat_sync_stream(sink: &str) -> String {
    format!("chat-sync-{sink}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_match_the_streams_they_describe() {
        assert!(ExpectedVersion::NoStream.is_satisfied_by(None));
        assert!(!ExpectedVersion::NoStream.is_satisfied_by(Some(0)));
        assert!(ExpectedVersion::Exact(3).is_satisfied_by(Some(3)));
        assert!(!ExpectedVersion::Exact(3).is_satisfied_by(Some(4)));
        assert!(!ExpectedVersion::Exact(0).is_satisfied_by(None));
        assert!(ExpectedVersion::Any.is_satisfied_by(None));
        assert_eq!(ExpectedVersion::from_current(Some(2)), ExpectedVersion::Exact(2));
    }
}
