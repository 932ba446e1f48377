//! The audit's questions (`meshgate events`, `GET /api/v1/events`): which recorded events answer
//! a filter. Every backend answers alike: the SQL ones in a query made from the names here and in
//! [`crate::stream`], a backend that scans the log with [`EventFilter::matches`].

use uuid::Uuid;

use crate::stream::{BUILD_PREFIX, INTENT_PREFIX};

/// The type of the event that starts a build, naming its issue.
pub const BUILD_REQUESTED: &str = "BuildRequested";

/// The types of the events about a build that carry its id, not its issue's: notifications and
/// pages.
pub const ABOUT_A_BUILD: [&str; 4] =
    ["NotificationAttempted", "NotificationDelivered", "NotificationAbandoned", "PageRequested"];

/// An audit question: events matching every given filter, in log order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// The events that name the issue, every event of its intents' and builds' streams, and the
    /// notifications and pages about its builds.
    pub issue: Option<String>,
    /// The build's stream, and the notifications and pages about it.
    pub build: Option<Uuid>,
    pub stream: Option<String>,
    pub correlation_id: Option<Uuid>,
    pub event_type: Option<String>,
}

/// What an issue's audit needs to know beyond each event: its builds' streams and ids (from the
/// [`BUILD_REQUESTED`] events that name it).
#[derive(Debug, Clone, Default)]
pub struct IssueBuilds {
    pub streams: std::collections::HashSet<String>,
    pub ids: std::collections::HashSet<String>,
}

impl IssueBuilds {
    /// Notes a recorded event if it requests a build of `issue`.
    pub fn note(&mut self, issue: &str, stream: &str, event_type: &str, data: &str) {
        if event_type != BUILD_REQUESTED {
            return;
        }
        let data: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
        if data["issue_id"].as_str() == Some(issue) {
            self.streams.insert(stream.to_owned());
            if let Some(build) = data["build_id"].as_str() {
                self.ids.insert(build.to_owned());
            }
        }
    }
}

/// A recorded event as the audit looks at it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub stream: &'a str,
    pub event_type: &'a str,
    /// The event's data, a JSON object.
    pub data: &'a str,
    pub correlation_id: Uuid,
}

impl EventFilter {
    /// Whether `event` answers this question (`builds`: those of the filter's issue).
    pub fn matches(&self, event: Seen<'_>, builds: &IssueBuilds) -> bool {
        let data = || serde_json::from_str::<serde_json::Value>(event.data).unwrap_or_default();
        let text = |data: &serde_json::Value, key: &str| data[key].as_str().map(str::to_owned);
        if let Some(issue) = &self.issue {
            let data = data();
            let names = text(&data, "issue_id").as_deref() == Some(issue.as_str())
                || event.stream.starts_with(&format!("{INTENT_PREFIX}{issue}/"))
                || builds.streams.contains(event.stream)
                || (ABOUT_A_BUILD.contains(&event.event_type)
                    && text(&data, "build_id").is_some_and(|b| builds.ids.contains(&b)));
            if !names {
                return false;
            }
        }
        if let Some(build) = self.build {
            let build = build.to_string();
            if event.stream != format!("{BUILD_PREFIX}{build}") && text(&data(), "build_id") != Some(build) {
                return false;
            }
        }
        self.stream.as_ref().is_none_or(|s| s == event.stream)
            && self.correlation_id.is_none_or(|c| c == event.correlation_id)
            && self.event_type.as_ref().is_none_or(|t| t == event.event_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DecodeError, Event};

    #[test]
    fn the_types_the_audit_asks_for_are_event_types_with_the_fields_it_reads() {
        // A field of the wrong type is refused as such only by a type that has that field.
        let has = |event_type: &str, field: &str| match Event::decode(
            event_type,
            Event::SCHEMA_VERSION,
            &format!(r#"{{"{field}": 5}}"#),
        ) {
            Err(DecodeError::Data { message, .. }) => message.contains("invalid type"),
            Err(DecodeError::UnknownType(_)) => panic!("`{event_type}` is not an event type"),
            _ => false,
        };
        assert!(has(BUILD_REQUESTED, "issue_id") && has(BUILD_REQUESTED, "build_id"));
        for event_type in ABOUT_A_BUILD {
            assert!(has(event_type, "build_id"), "{event_type} has no build_id");
        }
        assert!(!has("NodeSeen", "build_id"), "the check tells a type without the field");
    }

    #[test]
    fn an_issue_is_answered_by_its_intents_builds_and_what_is_said_about_them() {
        let build = Uuid::from_u128(7);
        let mut builds = IssueBuilds::default();
        let requested = format!(r#"{{"issue_id":"MOB-1","build_id":"{build}"}}"#);
        builds.note("MOB-1", &format!("{BUILD_PREFIX}{build}"), BUILD_REQUESTED, &requested);
        let filter = EventFilter { issue: Some("MOB-1".into()), ..EventFilter::default() };
        let seen = |stream, event_type, data| Seen { stream, event_type, data, correlation_id: Uuid::nil() };
        let about_build = format!(r#"{{"build_id":"{build}"}}"#);
        let build_stream = format!("build-{build}");
        assert!(filter.matches(seen("intent-MOB-1/ios", "IntentActivated", "{}"), &builds));
        assert!(filter.matches(seen(&build_stream, "BuildClaimed", "{}"), &builds));
        assert!(filter.matches(seen("notification-x", "NotificationAttempted", &about_build), &builds));
        assert!(!filter.matches(seen("intent-MOB-10/ios", "IntentActivated", "{}"), &builds));
        assert!(!filter.matches(seen("node-mac", "NodeSeen", &about_build), &builds));
    }
}
