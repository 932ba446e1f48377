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

/// `prefix` and `name` as one string (what `format!` makes, at a fraction of its cost: the three
/// streams of each delivery are named on the webhook's path).
fn joined(prefix: &str, name: &str) -> String {
    let mut stream = String::with_capacity(prefix.len() + name.len());
    stream.push_str(prefix);
    stream.push_str(name);
    stream
}

/// The stream holding every delivery that had this fingerprint.
pub fn delivery_stream(fingerprint: &Fingerprint) -> String {
    joined("delivery-", fingerprint.as_str())
}

/// What every intent's stream name starts with (an issue's intents: `intent-{issue}/…`).
pub const INTENT_PREFIX: &str = "intent-";
/// What every build's stream name starts with.
pub const BUILD_PREFIX: &str = "build-";

/// The stream recording which build serves an intent.
pub fn intent_stream(intent: &IntentKey) -> String {
    joined(INTENT_PREFIX, intent.as_str())
}

/// The stream holding one build's whole life.
pub fn build_stream(build_id: Uuid) -> String {
    joined(BUILD_PREFIX, build_id.hyphenated().encode_lower(&mut Uuid::encode_buffer()))
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

    #[test]
    fn the_streams_of_a_delivery_are_named_as_the_log_holds_them() {
        // Names are in every log: a change would make each stream look new.
        let build_id = Uuid::parse_str("01A25208-4358-747A-A9C9-1941AFBC3DBC").unwrap();
        assert_eq!(build_stream(build_id), "build-01a25208-4358-747a-a9c9-1941afbc3dbc");
        assert_eq!(intent_stream(&IntentKey::new("MOB-1", "ios-build")), "intent-MOB-1/ios-build");
        let fingerprint = Fingerprint::parse("ca1c11a3bd219a0eb04fcfed9103a09b").unwrap();
        assert_eq!(delivery_stream(&fingerprint), "delivery-ca1c11a3bd219a0eb04fcfed9103a09b");
    }
}
