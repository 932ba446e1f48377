//! The events of outbound notifications: each try, how it ended, pages, and operators' resends.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One HTTP try at delivering a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationAttempted {
    /// (sink, build, milestone), see [`crate::notify::notification_key`].
    pub key: String,
    pub sink: String,
    pub build_id: Uuid,
    pub milestone: crate::notify::Milestone,
    /// Counts from 1.
    pub attempt: u32,
    /// None: no answer (network error or timeout).
    pub status: Option<u16>,
    /// The start of the answer, for the audit.
    pub excerpt: String,
    /// When the next try is due; None when there is none (delivered, or abandoned).
    #[serde(default, with = "crate::rfc3339::option")]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationDelivered {
    pub key: String,
    pub sink: String,
    pub build_id: Uuid,
    pub milestone: crate::notify::Milestone,
    pub attempts: u32,
    /// The target's id for the message (Slack `ts`), so later states edit it in place.
    #[serde(default)]
    pub message_ref: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationAbandoned {
    pub key: String,
    pub sink: String,
    pub build_id: Uuid,
    pub milestone: crate::notify::Milestone,
    pub attempts: u32,
    pub reason: crate::notification::AbandonReason,
}

/// Neither chat nor the tracker could be told about a build: on-call is paged (once per build).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequested {
    pub build_id: Uuid,
    pub issue_id: String,
    pub reason: String,
}

/// An operator asked for a notification to be sent again (`POST /api/v1/notifications/resend`
/// or `recover`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationResendRequested {
    pub key: String,
    pub sink: String,
    pub build_id: Uuid,
    pub milestone: crate::notify::Milestone,
    /// Who asked: `admin` (the API), or the command.
    pub requested_by: String,
    /// Sent again even though it was delivered.
    pub force: bool,
    #[serde(with = "crate::rfc3339")]
    pub requested_at: DateTime<Utc>,
}
