//! Stored forms of events: round trips, upcasting of older schemas, stable type names.

use super::*;

#[test]
fn events_round_trip_through_their_stored_form() {
    let event = Event::BuildCancelled(BuildCancelled {
        build_id: Uuid::nil(),
        reason: "superseded".into(),
        cancelled_at: DateTime::from_timestamp(1_787_562_927, 0).unwrap(),
        report: None,
    });
    let back = Event::decode(event.event_type(), Event::SCHEMA_VERSION, &event.encode()).unwrap();
    assert_eq!(back, event);
}

#[test]
fn unknown_types_and_versions_are_named_errors() {
    assert_eq!(Event::decode("Nope", 1, "{}"), Err(DecodeError::UnknownType("Nope".into())));
    assert!(matches!(Event::decode("BuildCancelled", 9, "{}"), Err(DecodeError::UnknownVersion { .. })));
    assert!(matches!(Event::decode("BuildCancelled", 1, "{}"), Err(DecodeError::Data { .. })));
}

fn received(body: &str) -> Event {
    Event::WebhookReceived(WebhookReceived {
        correlation_id: Uuid::nil(),
        event_type: "issueUpdated".into(),
        issue_id: "MOB-1".into(),
        project: "MOB".into(),
        fingerprint: "f".repeat(64),
        body: Body::new(body),
        received_at: DateTime::from_timestamp(1_787_562_927, 0).unwrap(),
    })
}

#[test]
fn received_bodies_come_back_byte_for_byte() {
    let compact = r#"{"event":"issueUpdated","id":"MOB-1","summary":"say \"hi\"\n"}"#;
    let stored = received(compact).encode();
    assert!(stored.contains(&format!(r#""body":{compact}"#)), "embedded as JSON, not escaped: {stored}");
    for body in [compact, "{\"id\": \"MOB-1\"}\n", " [1, 2] ", "\"just a string\"", "not json at all"] {
        let back = Event::decode("WebhookReceived", Event::SCHEMA_VERSION, &received(body).encode()).unwrap();
        assert_eq!(back, received(body), "{body:?}");
    }
}

#[test]
fn received_bodies_stored_as_strings_still_read() {
    let older = r#"{"correlation_id":"00000000-0000-0000-0000-000000000000","event_type":"issueUpdated","issue_id":"MOB-1","project":"MOB","fingerprint":"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff","body":"{\"id\":\"MOB-1\"}","received_at":"2026-08-24T09:15:27Z"}"#;
    let back = Event::decode("WebhookReceived", 1, older).unwrap();
    assert_eq!(back, received(r#"{"id":"MOB-1"}"#));
}

#[test]
fn type_names_are_stable() {
    assert_eq!(Event::TYPES.len(), 35);
    assert!(Event::TYPES.contains(&"BuildLogsExpired"));
    assert!(Event::TYPES.contains(&"BuildRebuilt"));
    assert!(Event::TYPES.contains(&"BuildActionRequested"));
    assert!(Event::TYPES.contains(&"BuildRetryScheduled"));
    assert!(Event::TYPES.contains(&"ArtifactStored"));
    assert!(Event::TYPES.contains(&"WebhookReceived"));
    assert!(Event::TYPES.contains(&"BuildRequestFolded"));
    assert!(Event::TYPES.contains(&"ReconcileSwept"));
}

#[test]
fn builds_and_folds_recorded_before_change_times_were_kept_still_read() {
    let older = r#"{"build_id":"00000000-0000-0000-0000-000000000009","correlation_id":"00000000-0000-0000-0000-000000000001","reason":"coalesced","folded_at":"2026-08-24T09:15:27Z"}"#;
    let Event::BuildRequestFolded(fold) = Event::decode("BuildRequestFolded", 1, older).unwrap() else { panic!() };
    assert_eq!(fold.transition_at, None);
    // And what is written now for them is what was written then.
    assert_eq!(Event::BuildRequestFolded(fold).encode(), older);
}

#[test]
fn reasons_say_their_names_as_they_are_stored() {
    use super::{FoldReason, IgnoreReason};
    for reason in [FoldReason::DuplicateDelivery, FoldReason::Coalesced, FoldReason::SameTransition] {
        assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
    }
    for reason in [
        IgnoreReason::NoTriggerMatched,
        IgnoreReason::BotAuthored,
        IgnoreReason::UnknownEvent,
        IgnoreReason::DuplicateDelivery,
        IgnoreReason::SelfTest,
    ] {
        assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
    }
}
