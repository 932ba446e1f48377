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

/// Fingerprints are stored in the log (the `delivery-…` streams): the values earlier versions
/// computed must come out the same, or a replayed delivery would start a second build.
#[test]
fn fingerprints_match_the_values_earlier_versions_stored() {
    let files = [
        ("commentAdded.json", "20cd971b0360437ca7087402cb4da94551d25334a681b316b1656c8427d5f44e"),
        ("issueCreated.json", "b03fdc9cb397989ace261591107dd93d83e34790e6479be7fbcf26a895ab3d2e"),
        ("issueDeleted.json", "2a01864889e14f0fe8a37cbc7d1f8c100f73e49ef8c0cb120a3f9fa02b4a0302"),
        ("issueUpdated-state-building.json", "6d4170038fc51c2335bfd42bb1e607c2cfca60b3dc429e3415d92bb434b3b382"),
        ("issueUpdated-summary-only.json", "044bfb75ff96ad914faae80949a541f28dde3fa1e424d36de03932b6ccd47132"),
        ("legacy-issueUpdated-state-building.json", "9c35fd11540ab74eb3b860b2103e7237c3a6c12a28e9de70beafe209dcd23eb8"),
        ("mob-commentAdded-by-bot.json", "60bdb32591a8017aa40694da1a7ca37e5a20c2a54ca0f328b34aa8a345eb6262"),
        ("mob-commentAdded.json", "d46114f537e59a84bbe167a5371c5d3b78af25bf294be0dcefba0476ca1bc705"),
        ("mob-commentDeleted.json", "a8119e5639538c988fdb7018313e182cb6e0b6720af636c2551b57ee0643c0e5"),
        ("mob-commentUpdated.json", "c0a29c5810fe98bf14901122022d8046119d3c249acaa75f5fe5ee669cf6a156"),
        ("mob-issueAttachmentAdded.json", "2f6f6251109cadb32dd80056649527a0c2cdd40a53efc304d75fb48b463b0ee3"),
        ("mob-issueAttachmentDeleted.json", "0dce1171c3ac454652995c203b45979f5c1f002e1f405b8029230dfb748d34bd"),
        ("mob-issueCreated.json", "df4f416466786cc4a2e94ae35f42da14383489b0af2f82f7888bb97ba6570fa6"),
        ("mob-issueDeleted.json", "ee3654f687b6608ae733605b99f83302e8be5d5eb27324a17600cd46d4bf651b"),
        ("mob-issueUpdated-by-bot.json", "4a3ff98176cb255b3fb7e30f81efdf83bfd4519e42416852791e6e199995a7fd"),
        ("mob-issueUpdated-every-value-shape.json", "3e5b27dfdcf665e833275ea0f47a5d28e09cef61424c149cfd2d16207fd9477e"),
        ("mob-issueUpdated-state-building.json", "085a71afb53132a9e40e1442646a07cde35a317701e9a9fa60808ef616d6bfb0"),
        ("mob-issueUpdated-state-open.json", "b71921626a9c6783e0a452661bcdd54b6d16ebee7d6adccfc9a1f8568593096f"),
        ("mob-issueUpdated-updatedBy-null.json", "55444be22dd9ac12658daff2deef0f9927d07c2f846499b0f2ecf13119258337"),
        ("mob-unknown-event.json", "be373d85e5d815d5053561dc278b62cf7a65307c51afcee604eb3ae6081f9de4"),
        ("mob-workItemAdded.json", "bd85ae24098c2d2e877e03b62fbbc481d5832b08fda23278013901111533e88d"),
        ("mob-workItemDeleted.json", "78f49a23679d6b28f0b508dbaf655ac6ee92181ce48315331caad039ba2e21ad"),
        ("mob-workItemUpdated.json", "ba18ca2cf9b20d9cec18351fd57873fe0d359527dcc20b90e09e08ba8b77facd"),
    ];
    for (name, expected) in files {
        let (fingerprint, _) = parse_bytes(&std::fs::read(fixtures().join(name)).unwrap()).unwrap();
        assert_eq!(fingerprint.as_str(), expected, "{name}");
    }
    let bodies = [
        (
            "0153736a5422ca2fa0a79c059675bec89b0aa3f63c05e05706b9e418f6c93b5c",
            r#"{"event":"issueUpdated","id":"MOB-1","n":[1,-2,3.5,1e300,0.1,-0.0,18446744073709551615,-9223372036854775808],"s":"tab\t\"q\" \u00e9\ud83d\ude00 \\ /","dup":1,"dup":2,"nested":{"b":null,"a":[true,false,{}],"":""},"timestamp":"x"}"#,
        ),
        ("aa30bae7f76537c3d5c061613d5118b29b118bafd87f0c06e7fbe5942fa0e24a", r#"[1,"a",{"z":1,"y":[]}]"#),
        ("f0a455fba8a2b32c7728b9409d4c681a5f717d659cb9fbd2e8f2b28479809d29", r#""just a string""#),
        ("44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", r#"{"timestamp":1}"#),
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
}
