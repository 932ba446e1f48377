//! `decide_delivery` against hand-made log views.
use super::*;
use crate::payload::parse;
use serde_json::json;

fn triggers() -> Vec<Trigger> {
    vec![crate::trigger::tests::trigger()]
}

fn body(login: &str) -> serde_json::Value {
    json!({"event": "issueUpdated", "id": "MOB-1", "project": {"key": "MOB"}, "updatedBy": {"login": login},
           "changedFields": [{"name": "State", "oldValue": {"name": "Open"}, "value": {"name": "Building"}}]})
}

fn decide(view: &LogView, value: &serde_json::Value) -> Plan {
    let delivery = parse(value).unwrap();
    let fingerprint = Fingerprint::of(value);
    let input = DeliveryInput {
        correlation_id: Uuid::from_u128(1),
        received_at: DateTime::from_timestamp(0, 0).unwrap(),
        fingerprint: &fingerprint,
        body: "{}",
        delivery: &delivery,
    };
    let triggers = triggers();
    let policy = IngestPolicy { triggers: &triggers, bot_login: Some("meshgate-bot") };
    let mut next = 100u128;
    decide_delivery(view, &input, &policy, &mut || {
        next += 1;
        Uuid::from_u128(next)
    })
}

fn expectations(plan: &Plan) -> Vec<(&str, ExpectedVersion)> {
    plan.appends.iter().map(|a| (a.stream.split('-').next().unwrap(), a.expected)).collect()
}

#[test]
fn a_first_transition_claims_its_fingerprint_intent_and_build_streams() {
    let plan = decide(&LogView::assume_new(), &body("jane"));
    assert_eq!(plan.outcome, Outcome::Enqueued { build_ids: vec![Uuid::from_u128(101)] });
    assert_eq!(
        expectations(&plan),
        [
            ("delivery", ExpectedVersion::NoStream),
            ("intent", ExpectedVersion::NoStream),
            ("build", ExpectedVersion::NoStream)
        ]
    );
}

#[test]
fn a_seen_fingerprint_folds_into_its_builds_as_a_duplicate() {
    let view = LogView { delivery: DeliveryStream::Seen { build_ids: vec![Uuid::from_u128(9)] }, ..LogView::default() };
    let plan = decide(&view, &body("jane"));
    assert_eq!(plan.outcome, Outcome::Folded { build_ids: vec![Uuid::from_u128(9)] });
    assert!(
        matches!(&plan.appends[1].events[0], Event::BuildRequestFolded(f) if f.reason == FoldReason::DuplicateDelivery)
    );
}

/// A new delivery whose intent (MOB-1, ios-build) is at version 0 with build 9 current.
fn with_current_build(version: u64, state: BuildState) -> LogView {
    let current = CurrentBuild { build_id: Uuid::from_u128(9), version, state };
    LogView {
        delivery: DeliveryStream::New,
        intents: [(IntentKey::new("MOB-1", "ios-build"), IntentView { version: Some(0), current: Some(current) })]
            .into(),
    }
}

#[test]
fn a_seen_ignored_fingerprint_stays_ignored() {
    let view = LogView { delivery: DeliveryStream::Seen { build_ids: vec![] }, ..LogView::default() };
    assert_eq!(decide(&view, &body("jane")).outcome, Outcome::Ignored { reason: IgnoreReason::DuplicateDelivery });
}

#[test]
fn an_active_build_absorbs_a_new_transition_at_its_exact_version() {
    let view = with_current_build(3, BuildState::Queued { attempt: 1 });
    let plan = decide(&view, &body("jane"));
    assert_eq!(plan.outcome, Outcome::Folded { build_ids: vec![Uuid::from_u128(9)] });
    assert_eq!(expectations(&plan), [("delivery", ExpectedVersion::NoStream), ("build", ExpectedVersion::Exact(3))]);
}

#[test]
fn a_finished_build_lets_the_next_transition_start_a_new_one() {
    let view = with_current_build(3, BuildState::Succeeded { attempt: 1 });
    let plan = decide(&view, &body("jane"));
    assert_eq!(plan.outcome, Outcome::Enqueued { build_ids: vec![Uuid::from_u128(101)] });
    assert_eq!(expectations(&plan)[1], ("intent", ExpectedVersion::Exact(0)));
}

#[test]
fn leaving_the_trigger_state_cancels_the_active_build_at_its_exact_version() {
    let view = with_current_build(2, BuildState::Queued { attempt: 1 });
    let mut back = body("jane");
    back["changedFields"] =
        serde_json::json!([{"name": "State", "oldValue": {"name": "Building"}, "value": {"name": "Open"}}]);
    let plan = decide(&view, &back);
    assert_eq!(plan.outcome, Outcome::Cancelled { build_ids: vec![Uuid::from_u128(9)] });
    assert_eq!(expectations(&plan), [("delivery", ExpectedVersion::NoStream), ("build", ExpectedVersion::Exact(2))]);
    // With nothing active, the same delivery is just ignored.
    assert_eq!(decide(&LogView::default(), &back).outcome, Outcome::Ignored { reason: IgnoreReason::NoTriggerMatched });
}

#[test]
fn the_bots_own_changes_are_ignored() {
    let plan = decide(&LogView::assume_new(), &body("MESHGATE-BOT"));
    assert_eq!(plan.outcome, Outcome::Ignored { reason: IgnoreReason::BotAuthored });
    assert_eq!(plan.appends.len(), 1);
}

#[test]
fn the_delivery_stream_remembers_what_the_first_delivery_produced() {
    let plan = decide(&LogView::assume_new(), &body("jane"));
    assert_eq!(
        DeliveryStream::from_events(&plan.appends[0].events),
        DeliveryStream::Seen { build_ids: vec![Uuid::from_u128(101)] }
    );
}
