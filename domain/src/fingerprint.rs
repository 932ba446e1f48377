//! The delivery fingerprint: a SHA-256 over the body with `timestamp` removed.
//!
//! YouTrack stamps each payload with its send time, so two deliveries of one change (several URLs,
//! a proxy replay) differ only in `timestamp`. The hash is computed over a canonical rendering
//! (object keys sorted, no whitespace), so key order and formatting added by a proxy do not matter.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::json::Json;

/// 64 lower-case hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Fingerprint of a parsed body: every top-level key but `timestamp`, canonically rendered.
    pub fn of(body: &Value) -> Self {
        Self::of_json(&Json::borrow(body))
    }

    /// The same over the borrowed tree ingest reads a body into.
    pub fn of_json(body: &Json<'_>) -> Self {
        let mut hasher = Sha256::new();
        match body {
            Json::Object(object) => {
                hasher.update(b"{");
                for (key, value) in object.sorted().into_iter().filter(|(k, _)| *k != "timestamp") {
                    write_str(&mut hasher, key);
                    hasher.update(b":");
                    write_value(&mut hasher, value);
                    hasher.update(b",");
                }
                hasher.update(b"}");
            }
            other => write_value(&mut hasher, other),
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(64);
        for byte in hasher.finalize() {
            hex.push(HEX[usize::from(byte >> 4)] as char);
            hex.push(HEX[usize::from(byte & 0x0f)] as char);
        }
        Fingerprint(hex)
    }

    /// Accepts a stored fingerprint back (64 lower-case hex characters).
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Fingerprint(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn write_str(hasher: &mut Sha256, s: &str) {
    // Length-prefixed so that no two distinct documents render to the same bytes.
    hasher.update(b"\"");
    hasher.update((s.len() as u64).to_le_bytes());
    hasher.update(s.as_bytes());
}

fn write_value(hasher: &mut Sha256, value: &Json<'_>) {
    match value {
        Json::Null => hasher.update(b"n"),
        Json::Bool(true) => hasher.update(b"t"),
        Json::Bool(false) => hasher.update(b"f"),
        Json::Number(n) => {
            hasher.update(b"#");
            write_str(hasher, &n.to_string());
        }
        Json::String(s) => write_str(hasher, s),
        Json::Array(items) => {
            hasher.update(b"[");
            for item in items {
                write_value(hasher, item);
                hasher.update(b",");
            }
            hasher.update(b"]");
        }
        Json::Object(object) => {
            hasher.update(b"{");
            for (key, value) in object.sorted() {
                write_str(hasher, key);
                hasher.update(b":");
                write_value(hasher, value);
                hasher.update(b",");
            }
            hasher.update(b"}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deliveries_differing_only_in_timestamp_share_a_fingerprint() {
        let a = json!({"event": "issueUpdated", "timestamp": "2026-08-24T09:15:27.481Z", "id": "GW-1"});
        let b = json!({"id": "GW-1", "event": "issueUpdated", "timestamp": "2026-08-24T09:15:29.002Z"});
        assert_eq!(Fingerprint::of(&a), Fingerprint::of(&b));
    }

    #[test]
    fn a_different_change_has_a_different_fingerprint() {
        let a = json!({"event": "issueUpdated", "id": "GW-1", "updated": 1});
        let b = json!({"event": "issueUpdated", "id": "GW-1", "updated": 2});
        assert_ne!(Fingerprint::of(&a), Fingerprint::of(&b));
    }

    #[test]
    fn nested_timestamps_are_part_of_the_change() {
        let a = json!({"id": "GW-1", "x": {"timestamp": 1}});
        let b = json!({"id": "GW-1", "x": {"timestamp": 2}});
        assert_ne!(Fingerprint::of(&a), Fingerprint::of(&b));
    }

    #[test]
    fn string_boundaries_cannot_be_shifted() {
        let a = json!({"a": "b:c", "d": ""});
        let b = json!({"a": "b", "c:d": ""});
        assert_ne!(Fingerprint::of(&a), Fingerprint::of(&b));
    }

    #[test]
    fn fingerprints_round_trip_through_parse() {
        let fp = Fingerprint::of(&json!({"id": "GW-1"}));
        assert_eq!(Fingerprint::parse(fp.as_str()), Some(fp));
        assert_eq!(Fingerprint::parse("xyz"), None);
    }
}
