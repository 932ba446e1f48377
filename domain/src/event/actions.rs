//! The events of what people ask where they are: a rebuild, an action from chat (a Slack button,
//! a Matrix reaction) with who asked and what became of it, how far a room was read, and the
//! queue held and let go.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A finished build was asked for again: `rebuild_id` is the new build (its `BuildRequested` has
/// `rebuild_of`). Appended to the repeated build's stream, so both timelines show the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRebuilt {
    pub build_id: Uuid,
    pub rebuild_id: Uuid,
    /// Who asked, as the timeline names them (`admin`, `<@U024BE7LH>` on Slack, a Matrix user id).
    pub by: String,
    /// Where they asked: `admin` (the dashboard, the API, the CLI), `slack`, `matrix`.
    pub via: String,
}

/// An action on a build from chat, once per request (its stream is the request's: a click Slack
/// sends again, or a reaction seen twice, finds it there and does nothing more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildActionRequested {
    /// The chat's own id of the request (Slack's `action_ts`, a Matrix reaction's event id).
    pub request_id: String,
    /// `slack` or `matrix`.
    pub via: String,
    /// The sink the build's message is on.
    pub sink: String,
    /// The chat's id of who asked (`U024BE7LH`, `@alice:example.org`).
    pub user: String,
    pub action: crate::action::ActionKind,
    pub build_id: Uuid,
    pub outcome: crate::action::ActionOutcome,
    /// The new build, when the action started one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild_id: Option<Uuid>,
}

/// How far the gateway has read a chat room for actions (a Matrix `/sync` `next_batch`), recorded
/// after the actions of a batch: a restart goes on from there, so it misses no reaction, and one
/// read again finds its request already recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatSynced {
    pub sink: String,
    pub since: String,
}

/// An operator holds the queue: nodes claim nothing from `lanes` (none: every lane) until resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePaused {
    pub lanes: Vec<String>,
    pub reason: String,
    pub by: String,
    /// What chat is told of it under (its notifications' id); none in pauses recorded before
    /// chat was told of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<Uuid>,
}

/// An operator lets nodes claim from `lanes` again (none: everything paused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueResumed {
    pub lanes: Vec<String>,
    pub by: String,
    /// As [`QueuePaused::notice`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<Uuid>,
}

/// A lane has had queued builds no live node could claim for its `unservable_alert_seconds`:
/// on-call is paged and chat told, once, about `build_id` (the lane's oldest queued build) until
/// the lane can be served again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneUnservable {
    pub lane: String,
    pub build_id: Uuid,
}

/// The lane can be served again (a node that can run its builds is back, or nothing waits): the
/// page is resolved and chat told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneServable {
    pub lane: String,
    /// The build the page was about.
    pub build_id: Uuid,
}
