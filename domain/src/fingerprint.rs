//! The delivery fingerprint: a 128-bit XXH3 over the body with `timestamp` removed.
//!
//! YouTrack stamps each payload with its send time, so two deliveries of one change (several URLs,
//! a proxy replay) differ only in `timestamp`. The hash is computed over a canonical rendering
//! (object keys sorted, no whitespace, strings length-prefixed), so key order and formatting added
//! by a proxy do not matter. The rendering is written into one buffer and hashed in one call.
//!
//! Why a fast non-cryptographic hash is enough here (ADR 0014): only a body that came with a valid
//! webhook token is ever fingerprinted, and what a collision does is fold a delivery into the
//! builds an earlier one produced. A sender who could aim a collision at a future delivery would
//! have to know that delivery's body, and holding the token it could send that body itself to the
//! same effect; so collision resistance buys nothing against anyone who can reach this code. An
//! accidental collision among a billion deliveries has odds of about 10^-21. Over the rendering
//! of the benchmark's 1.1 KB body, SHA-256 took 51,000 instructions without the processor's SHA
//! instructions (a seventh of a delivery), XXH3 takes 1,200.
//!
//! Earlier versions stored SHA-256 fingerprints (64 hex characters); they stay in the log (in
//! `delivery-…` stream names and `WebhookReceived`), and [`Fingerprint::parse`] accepts them. A
//! delivery recorded under one and sent again after the upgrade gets a new fingerprint: it is
//! recorded as a delivery once more, and its intent's current build, which covers that transition,
//! folds it (ADR 0008), so it starts no build.

use std::io::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::json::Json;

/// 32 lower-case hex characters (64 for the SHA-256 fingerprints earlier versions stored).
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
        let mut rendering = Vec::with_capacity(4096);
        match body {
            Json::Object(object) => {
                rendering.push(b'{');
                for (key, value) in object.sorted().into_iter().filter(|(k, _)| *k != "timestamp") {
                    write_str(&mut rendering, key);
                    rendering.push(b':');
                    write_value(&mut rendering, value);
                    rendering.push(b',');
                }
                rendering.push(b'}');
            }
            other => write_value(&mut rendering, other),
        }
        let digest = xxhash_rust::xxh3::xxh3_128(&rendering).to_be_bytes();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(32);
        for byte in digest {
            hex.push(HEX[usize::from(byte >> 4)] as char);
            hex.push(HEX[usize::from(byte & 0x0f)] as char);
        }
        Fingerprint(hex)
    }

    /// Accepts a stored fingerprint back (32 lower-case hex characters, or 64 from an earlier
    /// version).
    pub fn parse(s: &str) -> Option<Self> {
        let ok = matches!(s.len(), 32 | 64) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
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

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Length-prefixed so that no two distinct documents render to the same bytes.
    out.push(b'"');
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &Json<'_>) {
    match value {
        Json::Null => out.push(b'n'),
        Json::Bool(true) => out.push(b't'),
        Json::Bool(false) => out.push(b'f'),
        Json::Number(n) => {
            // A string of the number's text: its length is known once it is written.
            out.extend_from_slice(b"#\"");
            let length_at = out.len();
            out.extend_from_slice(&[0; 8]);
            let _ = write!(out, "{n}");
            let length = (out.len() - length_at - 8) as u64;
            out[length_at..length_at + 8].copy_from_slice(&length.to_le_bytes());
        }
        Json::String(s) => write_str(out, s),
        Json::Array(items) => {
            out.push(b'[');
            for item in items {
                write_value(out, item);
                out.push(b',');
            }
            out.push(b']');
        }
        Json::Object(object) => {
            out.push(b'{');
            for (key, value) in object.sorted() {
                write_str(out, key);
                out.push(b':');
                write_value(out, value);
                out.push(b',');
            }
            out.push(b'}');
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
        assert_eq!(fp.as_str().len(), 32);
        assert_eq!(Fingerprint::parse(&fp.as_str().to_uppercase()), None);
        assert_eq!(Fingerprint::parse(fp.as_str()), Some(fp));
        assert_eq!(Fingerprint::parse("xyz"), None);
    }

    #[test]
    fn the_sha256_fingerprints_of_earlier_versions_are_read_back() {
        let stored = "6d4170038fc51c2335bfd42bb1e607c2cfca60b3dc429e3415d92bb434b3b382";
        assert_eq!(Fingerprint::parse(stored).map(|fp| fp.to_string()).as_deref(), Some(stored));
        assert_eq!(Fingerprint::parse(&stored[..40]), None);
    }
}
