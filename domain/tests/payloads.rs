//! The parser against the project's fixtures, and properties over arbitrary input.

use std::path::Path;

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
}
