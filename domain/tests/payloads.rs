//! The parser against the project's fixtures, and properties over arbitrary input.

use std::path::Path;

use meshgate_domain::event::{Body, Event, WebhookReceived};
use meshgate_domain::payload::{parse, parse_bytes};
use meshgate_domain::{EventKind, Fingerprint};
use proptest::prelude::*;
use serde_json::Value;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/youtrack")
}

fn json_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_sender_fixture_parses_and_every_event_type_is_covered() {
    let mut kinds = std::collections::BTreeSet::new();
    for path in json_files(&fixtures()) {
        let bytes = std::fs::read(&path).unwrap();
        let (_, delivery) = parse_bytes(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!delivery.project.is_empty());
        if !matches!(delivery.event, EventKind::Unknown(_)) {
            kinds.insert(delivery.event.as_str().to_owned());
        }
    }
    assert_eq!(kinds.len(), 11, "fixtures cover {kinds:?}");
}

#[test]
fn every_malformed_fixture_fails_naming_its_field() {
    let dir = fixtures().join("malformed");
    let expected: Value = serde_json::from_slice(&std::fs::read(dir.join("expected-fields.json")).unwrap()).unwrap();
    for (name, field) in expected.as_object().unwrap() {
        let error = parse_bytes(&std::fs::read(dir.join(name)).unwrap()).unwrap_err();
        assert_eq!(error.field(), field.as_str(), "{name}: {error}");
    }
}

#[test]
fn the_compact_and_pretty_forms_of_a_body_share_a_fingerprint() {
    let pretty = std::fs::read(fixtures().join("issueUpdated-state-building.json")).unwrap();
    let value: Value = serde_json::from_slice(&pretty).unwrap();
    let compact: Value = serde_json::from_str(&serde_json::to_string(&value).unwrap()).unwrap();
    assert_eq!(Fingerprint::of(&value), Fingerprint::of(&compact));
}

/// Fingerprints are stored in the log (the `delivery-…` streams): a change to a value here is a
/// change to what every later delivery of a change is recognised by (ADR 0014: the move from
/// SHA-256 to XXH3 was one, and says what it does to deliveries recorded before it).
#[test]
fn fingerprints_match_the_values_stored() {
    let files = [
        ("commentAdded.json", "65254c6d1ed9b78a61d1ee2bcc465135"),
        ("issueCreated.json", "cc3b6c91f191ed08f4c2dc11b6dc50f8"),
        ("issueDeleted.json", "23297f5c9c5e5ef2f4005b2f26af41be"),
        ("issueUpdated-state-building.json", "d9d44326cbf3097eb11fe5464f21fc49"),
        ("issueUpdated-summary-only.json", "2de1069e6ea285c5b2bbfd7aef1fa76c"),
        ("legacy-issueUpdated-state-building.json", "0b49616d54bdb7bbb1fa75db3673ed4c"),
        ("mob-commentAdded-by-bot.json", "ee4452ce0c65ae72ec8f084d3a11a909"),
        ("mob-commentAdded.json", "6751e2f163cc1531c1f99194021b658b"),
        ("mob-commentDeleted.json", "b302c4a114983631165d539187f3735e"),
        ("mob-commentUpdated.json", "66d681ef9d1076c82a69618f09f2ab5f"),
        ("mob-issueAttachmentAdded.json", "946412a8363f9b0c2b3dbeda290b6754"),
        ("mob-issueAttachmentDeleted.json", "3151cfe7bd79c386dfcb708bb4ef48e0"),
        ("mob-issueCreated.json", "5a22bb4b6d441e905f630f0c73a11f85"),
        ("mob-issueDeleted.json", "c5fddfd4a08147623af716f38fb349da"),
        ("mob-issueUpdated-by-bot.json", "f82b88033006b8d05a7c3b3fd83d8e4e"),
        ("mob-issueUpdated-every-value-shape.json", "27c34974bcb9d54fc7035da7ed184247"),
        ("mob-issueUpdated-state-building.json", "e0c4b72f1708ac9b66abea8c3a0a10b1"),
        ("mob-issueUpdated-state-open.json", "212b06762d6fdf2780ea10f6a1f89bd4"),
        ("mob-issueUpdated-updatedBy-null.json", "ecb73bc0ac3a517174132e256e1e97fa"),
        ("mob-unknown-event.json", "b0db2820a4caa5321181fe8c745c6095"),
        ("mob-workItemAdded.json", "e86a9803aed6ace86bf0687cd37c68cf"),
        ("mob-workItemDeleted.json", "21154280a64ce05cb5c2595136314a3c"),
        ("mob-workItemUpdated.json", "122039fbe3954c83d5816f4b9037000b"),
    ];
    for (name, expected) in files {
        let (fingerprint, _) = parse_bytes(&std::fs::read(fixtures().join(name)).unwrap()).unwrap();
        assert_eq!(fingerprint.as_str(), expected, "{name}");
    }
    let bodies = [
        (
            "53b5515ca784ea6b81fe1ae7f668450e",
            r#"{"event":"issueUpdated","id":"MOB-1","n":[1,-2,3.5,1e300,0.1,-0.0,18446744073709551615,-9223372036854775808],"s":"tab\t\"q\" \u00e9\ud83d\ude00 \\ /","dup":1,"dup":2,"nested":{"b":null,"a":[true,false,{}],"":""},"timestamp":"x"}"#,
        ),
        ("5f5fd426c74df470610cce09b36c694a", r#"[1,"a",{"z":1,"y":[]}]"#),
        ("36d934b0cce122de0f7c9d74bbb5eceb", r#""just a string""#),
        ("dc7048f8f8747f561349cde127705c16", r#"{"timestamp":1}"#),
    ];
    for (expected, body) in bodies {
        let value: Value = serde_json::from_str(body).unwrap();
        assert_eq!(Fingerprint::of(&value).as_str(), expected, "{body}");
        let tree = meshgate_domain::json::Json::from_slice(body.as_bytes()).unwrap();
        assert_eq!(Fingerprint::of_json(&tree).as_str(), expected, "{body}");
    }
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "[a-zA-Z0-9 _-]{0,12}".prop_map(Value::String),
        prop_oneof![Just("issueUpdated"), Just("MOB-1"), Just("State"), Just("Building")].prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let keys = prop_oneof![
            Just("event".to_owned()),
            Just("id".to_owned()),
            Just("project".to_owned()),
            Just("key".to_owned()),
            Just("shortName".to_owned()),
            Just("changedFields".to_owned()),
            Just("name".to_owned()),
            Just("value".to_owned()),
            Just("oldValue".to_owned()),
            Just("login".to_owned()),
            Just("minutes".to_owned()),
            Just("comments".to_owned()),
            Just("author".to_owned()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn the_parser_never_panics_on_arbitrary_json(value in arbitrary_json()) {
        let _ = parse(&value);
        let _ = Fingerprint::of(&value);
    }

    #[test]
    fn reading_the_text_agrees_with_reading_the_value(value in arbitrary_json()) {
        let text = serde_json::to_vec(&value).unwrap();
        match parse_bytes(&text) {
            Ok((fingerprint, delivery)) => {
                prop_assert_eq!(fingerprint, Fingerprint::of(&value));
                prop_assert_eq!(Ok(delivery), parse(&value));
            }
            Err(e) => prop_assert_eq!(Err(e), parse(&value)),
        }
    }

    #[test]
    fn the_parser_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_bytes(&bytes);
    }

    #[test]
    fn the_fingerprint_ignores_only_the_timestamp(value in arbitrary_json(), a in "[0-9:TZ.-]{0,24}", b in "[0-9:TZ.-]{0,24}") {
        if let Value::Object(mut map) = value {
            map.insert("timestamp".into(), Value::from(a));
            let first = Value::Object(map.clone());
            map.insert("timestamp".into(), Value::from(b));
            let second = Value::Object(map.clone());
            prop_assert_eq!(Fingerprint::of(&first), Fingerprint::of(&second));
            map.insert("zz-changed".into(), Value::Bool(true));
            prop_assert_ne!(Fingerprint::of(&first), Fingerprint::of(&Value::Object(map)));
        }
    }

    /// A received body is written into its `WebhookReceived` by hand (embedded as the JSON it is,
    /// without reading it again): what serde writes, byte for byte, and it reads back as it came.
    #[test]
    fn a_received_body_is_stored_as_serde_would_store_it(
        text in prop_oneof![
            arbitrary_json().prop_map(|v| v.to_string()),
            arbitrary_json().prop_map(|v| serde_json::to_string_pretty(&v).unwrap()),
            (arbitrary_json(), "[ \n\t]{1,2}").prop_map(|(v, space)| format!("{v}{space}")),
            (arbitrary_json(), "[ \n\t]{1,2}").prop_map(|(v, space)| format!("{space}{v}")),
            ".*",
            "[\\[{][^\\]}]*[\\]}]",
        ],
        strings in prop::array::uniform4(".*"),
        nanos in 0u32..1_000_000_000,
    ) {
        // A body the parser read knows it is JSON; any other text is read to learn whether it is.
        let body = meshgate_domain::payload::read(&text).map(|read| read.body).unwrap_or_else(|_| Body::new(text.clone()));
        let [event_type, issue_id, project, fingerprint] = strings;
        let received = WebhookReceived {
            correlation_id: uuid::Uuid::from_u128(u128::from(nanos) << 64 | 7),
            event_type,
            issue_id,
            project,
            fingerprint,
            body,
            received_at: chrono::DateTime::from_timestamp(1_787_562_927, nanos).unwrap(),
        };
        let event = Event::WebhookReceived(received.clone());
        let stored = event.encode();
        prop_assert_eq!(&stored, &serde_json::to_string(&received).unwrap());
        let back = Event::decode("WebhookReceived", Event::SCHEMA_VERSION, &stored).unwrap();
        let Event::WebhookReceived(back) = back else { panic!("a WebhookReceived") };
        prop_assert_eq!(back.body.as_str(), text.as_str());
        prop_assert_eq!(back, received);
    }
}
