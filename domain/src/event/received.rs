//! A delivery's body in the log: [`Body`], text known to be JSON, and the stored form of
//! [`WebhookReceived`].
//!
//! A received body is JSON already: storing it as a JSON string would escape every quote (about a
//! tenth more bytes for a typical body, written twice by the log) and cost the time to escape. A
//! body that is an object or an array, without surrounding whitespace, is embedded as it is;
//! anything else (a trailing newline, say) is stored as a string, so the bytes always come back
//! exactly. Reading accepts both forms, including logs written before this.
//!
//! Only JSON may be embedded, and serde_json embeds only a `RawValue`, which it makes by reading
//! the text again: 10,700 instructions for the benchmark's 1.1 KB body, a thirtieth of a
//! delivery. A [`Body`] knows whether it is JSON without reading it again (the payload parser read
//! it, or the log held it embedded), so [`WebhookReceived::encode`] writes the event around it by
//! hand; a property test holds that encoding to serde's, byte for byte.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use super::WebhookReceived;

/// A delivery's body exactly as received, and whether it is one JSON value (every body the
/// gateway records is: the payload parser read it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    text: String,
    json: bool,
}

impl Body {
    /// Any text, read once to learn whether it is JSON.
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let json = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
        Body { text, json }
    }

    /// Text the payload parser read as JSON.
    pub(crate) fn read(text: String) -> Self {
        Body { text, json: true }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_string(self) -> String {
        self.text
    }

    /// Whether the text can stand in an event as the JSON it is: one object or array with nothing
    /// around it (JSON that starts and ends with its brackets is exactly that).
    fn embeddable(&self) -> bool {
        self.json && matches!(self.text.as_bytes(), [b'{', .., b'}'] | [b'[', .., b']'])
    }
}

impl Serialize for Body {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<&RawValue>(&self.text) {
            Ok(raw) if self.embeddable() => raw.serialize(serializer),
            _ => serializer.serialize_str(&self.text),
        }
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        if raw.get().starts_with('"') {
            // Stored as a string: JSON with space around it, or (never recorded, but read as it is)
            // any text.
            serde_json::from_str::<String>(raw.get()).map(Body::new).map_err(serde::de::Error::custom)
        } else {
            // Embedded: serde_json has just read it as JSON.
            Ok(Body::read(raw.get().to_owned()))
        }
    }
}

impl WebhookReceived {
    /// The stored form: what serde writes, with the body embedded without being read again.
    pub(super) fn encode(&self) -> String {
        fn value<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
            // Strings, a uuid: writing them into memory cannot fail.
            let _ = serde_json::to_writer(&mut *out, value);
        }
        let mut out = Vec::with_capacity(self.body.text.len() + 320);
        out.extend_from_slice(b"{\"correlation_id\":");
        value(&mut out, &self.correlation_id);
        out.extend_from_slice(b",\"event_type\":");
        value(&mut out, &self.event_type);
        out.extend_from_slice(b",\"issue_id\":");
        value(&mut out, &self.issue_id);
        out.extend_from_slice(b",\"project\":");
        value(&mut out, &self.project);
        out.extend_from_slice(b",\"fingerprint\":");
        value(&mut out, &self.fingerprint);
        out.extend_from_slice(b",\"body\":");
        if self.body.embeddable() {
            out.extend_from_slice(self.body.text.as_bytes());
        } else {
            value(&mut out, &self.body.text);
        }
        out.extend_from_slice(b",\"received_at\":");
        let _ = crate::rfc3339::serialize(&self.received_at, &mut serde_json::Serializer::new(&mut out));
        out.push(b'}');
        String::from_utf8(out).unwrap_or_default()
    }
}
