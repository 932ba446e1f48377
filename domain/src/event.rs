//! Every fact the gateway records. Each event has a stable type name (the variant name) and a
//! schema version; its data is stored as JSON. Changing an event's fields means a new schema version
//! and an upcaster in [`Event::decode`], never a silent reinterpretation of stored data. A field may
//! be added with a default that says what older events meant (`None`, `webhook`): they read as
//! before.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a delivery started no build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoreReason {
    /// No configured trigger watches this transition.
    NoTriggerMatched,
    /// The change was made by the gateway's own bot account (loop prevention).
    BotAuthored,
    /// An event type this version does not know.
    UnknownEvent,
    /// The same change was delivered before, and it started no build then either.
    DuplicateDelivery,
    /// A delivery the gateway's self-test posted to itself (`meshgate selftest`).
    SelfTest,
}

impl IgnoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::NoTriggerMatched => "no_trigger_matched",
            IgnoreReason::BotAuthored => "bot_authored",
            IgnoreReason::UnknownEvent => "unknown_event",
            IgnoreReason::DuplicateDelivery => "duplicate_delivery",
            IgnoreReason::SelfTest => "self_test",
        }
    }
}

/// Why a delivery or transition was absorbed into an existing build.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoldReason {
    /// The same change delivered again (several URLs, a proxy, a replay).
    DuplicateDelivery,
    /// A new transition for an intent whose build is still queued or running.
    Coalesced,
    /// A transition the build was already started for, found again: its webhook after a sweep
    /// found it, a sweep after its webhook, or a late webhook of an older change (ADR 0008).
    SameTransition,
}

impl FoldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FoldReason::DuplicateDelivery => "duplicate_delivery",
            FoldReason::Coalesced => "coalesced",
            FoldReason::SameTransition => "same_transition",
        }
    }
}

/// What started a build.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestSource {
    /// A webhook delivery.
    #[default]
    Webhook,
    /// A reconciliation sweep found the transition in YouTrack's activity stream.
    Reconcile,
    /// A recorded delivery decided again under today's triggers (`meshgate deliveries replay`).
    Replay,
    /// Someone asked for a finished build again (the dashboard, the CLI, a chat button or
    /// reaction): `rebuild_of` names it.
    Rebuild,
}

impl RequestSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestSource::Webhook => "webhook",
            RequestSource::Reconcile => "reconcile",
            RequestSource::Replay => "replay",
            RequestSource::Rebuild => "rebuild",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookReceived {
    pub correlation_id: Uuid,
    /// The sender's `event` field.
    pub event_type: String,
    pub issue_id: String,
    pub project: String,
    pub fingerprint: String,
    /// The body exactly as received. Stored as the JSON it is rather than as a JSON string of it
    /// (`event/received.rs`); both forms read back to the same bytes.
    pub body: Body,
    #[serde(with = "crate::rfc3339")]
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookIgnored {
    pub correlation_id: Uuid,
    pub issue_id: String,
    pub reason: IgnoreReason,
}

/// The builds a delivery's fingerprint stands for: later deliveries with the same fingerprint fold
/// into these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRouted {
    pub correlation_id: Uuid,
    pub issue_id: String,
    pub build_ids: Vec<Uuid>,
}

/// An intent now has this build as its current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentActivated {
    pub intent_key: String,
    pub build_id: Uuid,
    pub correlation_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequested {
    pub build_id: Uuid,
    pub issue_id: String,
    pub project: String,
    pub summary: Option<String>,
    pub trigger: String,
    pub script: String,
    pub lane: String,
    pub git_ref: String,
    pub requested_by: Option<String>,
    pub intent_key: String,
    pub correlation_id: Uuid,
    #[serde(with = "crate::rfc3339")]
    pub requested_at: DateTime<Utc>,
    /// When the transition happened on YouTrack's clock (the webhook's `updated`, the activity's
    /// `timestamp`); none when the sender did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::rfc3339::option")]
    pub transition_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "is_webhook")]
    pub source: RequestSource,
    /// The Xcode the trigger requires (`16.2` exactly, `16` any 16.x); none: the lane's, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xcode: Option<String>,
    /// The build this one repeats (a rebuild, `source` `rebuild`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild_of: Option<Uuid>,
}

fn is_webhook(source: &RequestSource) -> bool {
    *source == RequestSource::Webhook
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequestFolded {
    pub build_id: Uuid,
    pub correlation_id: Uuid,
    pub reason: FoldReason,
    #[serde(with = "crate::rfc3339")]
    pub folded_at: DateTime<Utc>,
    /// When the folded transition happened on YouTrack's clock, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::rfc3339::option")]
    pub transition_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildClaimed {
    pub build_id: Uuid,
    pub node_id: String,
    pub attempt: u32,
    #[serde(with = "crate::rfc3339")]
    pub lease_expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequeued {
    pub build_id: Uuid,
    /// The attempt the next claim will be.
    pub next_attempt: u32,
    pub reason: String,
}

/// A node renewed its lease on a build (a heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildLeaseRenewed {
    pub build_id: Uuid,
    pub node_id: String,
    pub attempt: u32,
    #[serde(with = "crate::rfc3339")]
    pub lease_expires_at: DateTime<Utc>,
}

/// What a node reported about a finished attempt.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildReport {
    pub node_id: String,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// 40 lower-case hex characters.
    pub commit_sha: Option<String>,
    pub failing_test: Option<String>,
    /// The end of the log, at most 4 KiB of valid UTF-8.
    pub log_tail: String,
    /// The node stopped the script: why, and whether SIGTERM was enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<crate::node_api::Stop>,
    /// Seconds without output after which the script was stopped as hung.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_output_seconds: Option<u64>,
    /// The script's `retry_on` rule the failure matched (infrastructure, not the change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_rule: Option<String>,
    /// What went wrong in the node's `after_build` hook (never a build failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_build: Option<String>,
    /// Artifacts not uploaded because the build's artifacts passed `max_artifact_bytes`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub artifacts_skipped: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A failure the node matched to a `retry_on` rule (infrastructure, not the change): the build is
/// queued again for another attempt, on any node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRetryScheduled {
    pub build_id: Uuid,
    /// The attempt that failed.
    pub attempt: u32,
    /// The attempt the next claim will be.
    pub next_attempt: u32,
    /// The failure's reason (`script_failed`, `timeout`, …).
    pub reason: String,
    /// The rule that matched (`Failed to boot simulator`, `exit:75`).
    pub rule: String,
    #[serde(default)]
    pub report: Option<BuildReport>,
}

/// A file a build produced, uploaded by the node that ran the attempt and kept by the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactStored {
    pub build_id: Uuid,
    pub attempt: u32,
    pub node_id: String,
    /// Its path under the build's artifacts (checked by [`crate::node_api::check_artifact_name`]).
    pub name: String,
    pub bytes: u64,
    /// 64 lower-case hex characters.
    pub sha256: String,
}

/// A build's logs were removed after `[retention] build_logs_days`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildLogsExpired {
    pub build_id: Uuid,
    /// The attempts whose logs were removed (every log the gateway held for the build).
    pub attempts: Vec<u32>,
    pub keep_days: u32,
}

/// A build's artifacts were removed after `[retention] artifacts_days`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactsExpired {
    pub build_id: Uuid,
    /// The names removed (every artifact the gateway held for the build).
    pub names: Vec<String>,
    pub keep_days: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSucceeded {
    pub build_id: Uuid,
    pub attempt: u32,
    #[serde(default)]
    pub report: Option<BuildReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildFailed {
    pub build_id: Uuid,
    pub attempt: u32,
    /// `script_failed`, `node_lost`, `unknown_script`, …
    pub reason: String,
    #[serde(default)]
    pub report: Option<BuildReport>,
}

/// A heartbeat or result that was refused because its attempt is no longer the build's current one
/// (or the build has finished).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildResultRejected {
    pub build_id: Uuid,
    pub node_id: String,
    pub attempt: u32,
    pub reason: String,
}

/// A `BuildCancelled`'s reason when a delivery moved its issue out of the trigger's state.
pub const LEFT_TRIGGER_STATE: &str = "left_trigger_state";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildCancelled {
    pub build_id: Uuid,
    /// Why: `left_trigger_state`, `expired` (the reaper), the operator's own words, `by <user> (<via>)`, …
    pub reason: String,
    #[serde(with = "crate::rfc3339")]
    pub cancelled_at: DateTime<Utc>,
    /// What the node reported, when it stopped the build itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<BuildReport>,
}

/// One reconciliation sweep over YouTrack's activity stream, whatever it found.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileSwept {
    pub sweep_id: Uuid,
    /// What ran it: `start`, `interval`, `api` or `cli`.
    pub trigger: String,
    #[serde(with = "crate::rfc3339")]
    pub window_start: DateTime<Utc>,
    /// Where the next sweep continues (the window's end, or the last activity read when the sweep
    /// stopped at its cap or an error).
    #[serde(with = "crate::rfc3339")]
    pub window_end: DateTime<Utc>,
    pub activities_read: u32,
    /// Transitions a trigger watches (author not the bot, issue still in the trigger's state).
    pub transitions_matched: u32,
    pub builds_started: Vec<Uuid>,
    /// Builds a transition folded into (still queued or running).
    pub builds_folded: Vec<Uuid>,
    /// Transitions already built (their webhook, or an earlier sweep).
    pub already_built: u32,
    /// Transitions of issues that have left the trigger's state since.
    pub left_since: u32,
    /// Why the sweep failed; empty when it read its window.
    pub errors: Vec<String>,
    /// It stopped at `max_activities_per_sweep`: the next sweep continues at `window_end` exactly.
    #[serde(default)]
    pub cut_short: bool,
}

/// A recorded delivery was decided again under today's triggers (`meshgate deliveries replay`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryReplayed {
    /// The delivery's own correlation id.
    pub correlation_id: Uuid,
    pub issue_id: String,
    pub build_ids: Vec<Uuid>,
    #[serde(with = "crate::rfc3339")]
    pub replayed_at: DateTime<Utc>,
}

/// `POST /api/v1/selftest` ran: what each check found.
/// A claim in a lane with a cap on running builds, recorded on the lane's stream at the exact
/// version the claim was decided on: two gateways cannot both grant the lane's last slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneClaimed {
    pub lane: String,
    pub build_id: Uuid,
    pub node_id: String,
    pub attempt: u32,
}

/// A build node as it presented itself to a claim: recorded when it is new or its labels or slots
/// changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSeen {
    pub node_id: String,
    pub labels: Vec<String>,
    pub slots: u32,
    /// The Xcodes it has.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xcodes: Vec<crate::xcode::Xcode>,
}

/// An operator stopped (or resumed) giving a node new builds; its running builds finish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDrained {
    pub node_id: String,
    pub draining: bool,
    pub reason: String,
    pub requested_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfTestRan {
    pub passed: bool,
    pub checks: Vec<SelfTestCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfTestCheck {
    pub check: String,
    /// `ok`, `failed` or `skipped`.
    pub result: String,
    pub detail: String,
}

/// A stored event could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("event type `{event_type}` has no schema version {version}")]
    UnknownVersion { event_type: String, version: u32 },
    #[error("event type `{event_type}`: {message}")]
    Data { event_type: String, message: String },
}

macro_rules! events {
    ($($variant:ident),+ $(,)?) => {
        /// Every event the gateway appends.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Event {
            $($variant($variant)),+
        }

        impl Event {
            /// Every stable type name, in declaration order.
            pub const TYPES: &'static [&'static str] = &[$(stringify!($variant)),+];

            /// The stable type name stored beside the data.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Event::$variant(_) => stringify!($variant)),+
                }
            }

            /// The data as stored: the variant's fields as a JSON object.
            pub fn encode(&self) -> String {
                if let Event::WebhookReceived(received) = self {
                    return received.encode();
                }
                // Serializing plain structs of strings, numbers and uuids into a String cannot fail.
                match self {
                    $(Event::$variant(e) => serde_json::to_string(e).unwrap_or_default()),+
                }
            }

            /// Reads stored data back, upcasting older schema versions.
            pub fn decode(event_type: &str, schema_version: u32, data: &str) -> Result<Event, DecodeError> {
                if schema_version != Event::SCHEMA_VERSION {
                    return Err(DecodeError::UnknownVersion { event_type: event_type.to_owned(), version: schema_version });
                }
                let data_error = |e: serde_json::Error| DecodeError::Data {
                    event_type: event_type.to_owned(),
                    message: e.to_string(),
                };
                match event_type {
                    $(stringify!($variant) => serde_json::from_str(data).map(Event::$variant).map_err(data_error),)+
                    other => Err(DecodeError::UnknownType(other.to_owned())),
                }
            }
        }
    };
}

events!(
    WebhookReceived,
    WebhookIgnored,
    WebhookRouted,
    IntentActivated,
    BuildRequested,
    BuildRequestFolded,
    BuildClaimed,
    BuildLeaseRenewed,
    BuildRequeued,
    BuildSucceeded,
    BuildFailed,
    BuildCancelled,
    BuildResultRejected,
    NotificationAttempted,
    NotificationDelivered,
    NotificationAbandoned,
    PageRequested,
    ReconcileSwept,
    NotificationResendRequested,
    DeliveryReplayed,
    SelfTestRan,
    LaneClaimed,
    NodeSeen,
    NodeDrained,
    BuildRetryScheduled,
    ArtifactStored,
    ArtifactsExpired,
    BuildRebuilt,
    BuildActionRequested,
    ChatSynced,
    QueuePaused,
    QueueResumed,
    LaneUnservable,
    LaneServable,
    BuildLogsExpired,
);

impl Event {
    /// Every event type is at schema version 1 so far.
    pub const SCHEMA_VERSION: u32 = 1;

    /// The build this event belongs to, if it is a build event.
    pub fn build_id(&self) -> Option<Uuid> {
        match self {
            Event::BuildRequested(e) => Some(e.build_id),
            Event::BuildRequestFolded(e) => Some(e.build_id),
            Event::BuildClaimed(e) => Some(e.build_id),
            Event::BuildLeaseRenewed(e) => Some(e.build_id),
            Event::BuildResultRejected(e) => Some(e.build_id),
            Event::BuildRequeued(e) => Some(e.build_id),
            Event::BuildSucceeded(e) => Some(e.build_id),
            Event::BuildFailed(e) => Some(e.build_id),
            Event::BuildCancelled(e) => Some(e.build_id),
            Event::IntentActivated(e) => Some(e.build_id),
            Event::NotificationAttempted(e) => Some(e.build_id),
            Event::NotificationDelivered(e) => Some(e.build_id),
            Event::NotificationAbandoned(e) => Some(e.build_id),
            Event::PageRequested(e) => Some(e.build_id),
            Event::NotificationResendRequested(e) => Some(e.build_id),
            Event::LaneClaimed(e) => Some(e.build_id),
            Event::BuildRetryScheduled(e) => Some(e.build_id),
            Event::ArtifactStored(e) => Some(e.build_id),
            Event::ArtifactsExpired(e) => Some(e.build_id),
            Event::BuildLogsExpired(e) => Some(e.build_id),
            Event::BuildRebuilt(e) => Some(e.build_id),
            Event::BuildActionRequested(e) => Some(e.build_id),
            Event::LaneUnservable(e) => Some(e.build_id),
            Event::LaneServable(e) => Some(e.build_id),
            Event::WebhookReceived(_)
            | Event::WebhookIgnored(_)
            | Event::WebhookRouted(_)
            | Event::ReconcileSwept(_)
            | Event::DeliveryReplayed(_)
            | Event::SelfTestRan(_)
            | Event::NodeSeen(_)
            | Event::NodeDrained(_)
            | Event::ChatSynced(_)
            | Event::QueuePaused(_)
            | Event::QueueResumed(_) => None,
        }
    }
}

/// An event as read back from the log, with where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// Global position: strictly increasing in commit order, from 1; gap-free until builds are
    /// archived (`meshgate log archive`), never given twice.
    pub position: u64,
    pub stream: String,
    /// Version within the stream, from 0.
    pub version: u64,
    pub event: Event,
    pub correlation_id: Uuid,
    #[serde(with = "crate::rfc3339")]
    pub recorded_at: DateTime<Utc>,
}

mod actions;
mod notifications;
mod received;
pub use actions::*;
pub use notifications::*;
pub use received::Body;

#[cfg(test)]
mod tests;
