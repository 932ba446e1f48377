//! `decide_delivery` against hand-made log views.
use super::*;
use crate::build::BuildState;
use crate::intent::CurrentBuild;
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
        body: &Body::new("{}"),
        delivery: &delivery,
    };
    let triggers = triggers();
    let policy =
        IngestPolicy { triggers: &triggers, bot_login: Some("meshgate-bot"), same_transition: SAME_TRANSITION };
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
    with_build_for(version, state, None)
}

/// The same, build 9 having been started for (or folded) a transition at `transition_ms`.
fn with_build_for(version: u64, state: BuildState, transition_ms: Option<i64>) -> LogView {
    let last_transition_at = transition_ms.and_then(DateTime::from_timestamp_millis);
    let current = CurrentBuild { build_id: Uuid::from_u128(9), version, state, last_transition_at };
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

fn at(ms: i64) -> serde_json::Value {
    let mut value = body("jane");
    value["updated"] = json!(ms);
    value
}

#[test]
fn a_webhook_of_a_transition_its_build_was_started_for_starts_nothing_even_when_the_build_finished() {
    // A sweep started build 9 for the transition at 1000; the webhook of it (updated 1000) comes late.
    let finished = with_build_for(3, BuildState::Succeeded { attempt: 1 }, Some(1000));
    let plan = decide(&finished, &at(1000));
    assert_eq!(plan.outcome, Outcome::Folded { build_ids: vec![Uuid::from_u128(9)] });
    assert_eq!(expectations(&plan), [("delivery", ExpectedVersion::NoStream), ("build", ExpectedVersion::Any)]);
    assert!(matches!(&plan.appends[1].events[0],
        Event::BuildRequestFolded(f) if f.reason == FoldReason::SameTransition && f.transition_at == DateTime::from_timestamp_millis(1000)));
    // Within the tolerance both ways, and an older change too: still that build.
    for ms in [2500, 0, -50_000] {
        assert_eq!(decide(&finished, &at(ms)).outcome, Outcome::Folded { build_ids: vec![Uuid::from_u128(9)] }, "{ms}");
    }
    // A later change is a new transition: a new build.
    assert_eq!(decide(&finished, &at(3001)).outcome, Outcome::Enqueued { build_ids: vec![Uuid::from_u128(101)] });
    // An active build takes the same transition at its exact version.
    let active = with_build_for(4, BuildState::Queued { attempt: 1 }, Some(1000));
    assert_eq!(expectations(&decide(&active, &at(1000)))[1], ("build", ExpectedVersion::Exact(4)));
}

#[test]
fn a_transition_of_unknown_time_is_decided_as_before() {
    // No `updated`: a finished build never covers it.
    let finished = with_build_for(3, BuildState::Succeeded { attempt: 1 }, Some(1000));
    assert_eq!(decide(&finished, &body("jane")).outcome, Outcome::Enqueued { build_ids: vec![Uuid::from_u128(101)] });
}

#[test]
fn a_build_covers_its_latest_transition_requested_or_folded() {
    let requested = |ms: Option<i64>| {
        Event::BuildRequested(crate::event::BuildRequested {
            build_id: Uuid::from_u128(9),
            issue_id: "MOB-1".into(),
            project: "MOB".into(),
            summary: None,
            trigger: "ios-build".into(),
            script: "ios-build".into(),
            lane: "default".into(),
            git_ref: "main".into(),
            requested_by: None,
            intent_key: "MOB-1/ios-build".into(),
            correlation_id: Uuid::from_u128(1),
            requested_at: DateTime::from_timestamp(500, 0).unwrap(),
            transition_at: ms.and_then(DateTime::from_timestamp_millis),
            source: RequestSource::Reconcile,
            xcode: None,
            rebuild_of: None,
        })
    };
    let folded = Event::BuildRequestFolded(BuildRequestFolded {
        build_id: Uuid::from_u128(9),
        correlation_id: Uuid::from_u128(2),
        reason: FoldReason::Coalesced,
        folded_at: DateTime::from_timestamp(600, 0).unwrap(),
        transition_at: DateTime::from_timestamp_millis(90_000),
    });
    let build = CurrentBuild::from_stream(Uuid::from_u128(9), 1, &[requested(Some(10_000)), folded]);
    assert_eq!(build.last_transition_at, DateTime::from_timestamp_millis(90_000));
    assert!(build.covers(DateTime::from_timestamp_millis(91_000), SAME_TRANSITION));
    assert!(!build.covers(DateTime::from_timestamp_millis(93_000), SAME_TRANSITION));
    assert!(!build.covers(None, SAME_TRANSITION));
    // A build recorded before change times were kept covers up to when it was requested.
    let old = CurrentBuild::from_stream(Uuid::from_u128(9), 0, &[requested(None)]);
    assert_eq!(old.last_transition_at, DateTime::from_timestamp(500, 0));
}

#[test]
fn the_self_test_delivery_is_recorded_and_never_routed() {
    let value =
        json!({"event": SELF_TEST_EVENT, "id": "SELFTEST-1", "project": {"key": "SELFTEST"}, "selfTestId": "x"});
    assert_eq!(decide(&LogView::assume_new(), &value).outcome, Outcome::Ignored { reason: IgnoreReason::SelfTest });
}
