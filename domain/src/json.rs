//! A JSON tree that borrows from the text it was read from.
//!
//! Ingest reads every delivery once into this tree, then takes the delivery's fields and its
//! fingerprint from it. Strings without escapes point into the received bytes and objects keep
//! their members in a vector, so reading a body costs a few allocations rather than one per
//! string and one per map node as with `serde_json::Value`. Lookups follow `Value`: when a key is
//! repeated, its last value counts, and numbers are the `serde_json::Number` that `Value` would
//! hold, so a fingerprint taken over either tree is the same.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Number, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Object<'a>),
}

/// An object's members in the order they were read, repeated keys included.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Object<'a>(Vec<(Cow<'a, str>, Json<'a>)>);

impl<'a> Json<'a> {
    /// Reads a JSON text; strings without escapes borrow from `bytes`.
    pub fn from_slice(bytes: &'a [u8]) -> Result<Json<'a>, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// A tree over an already parsed `Value`, borrowing its strings.
    pub fn borrow(value: &'a Value) -> Json<'a> {
        match value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(n.clone()),
            Value::String(s) => Json::String(Cow::Borrowed(s)),
            Value::Array(items) => Json::Array(items.iter().map(Json::borrow).collect()),
            Value::Object(map) => {
                Json::Object(Object(map.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Json::borrow(v))).collect()))
            }
        }
    }

    /// The same document as an owned `Value` (repeated keys: the last value).
    pub fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::String(s) => Value::String(s.as_ref().to_owned()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(object) => {
                Value::Object(object.0.iter().map(|(k, v)| (k.as_ref().to_owned(), v.to_value())).collect())
            }
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Json::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Json::Object(object) => Some(object),
            _ => None,
        }
    }

    /// A member of an object; `None` for anything else.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        self.as_object()?.get(key)
    }
}

impl<'a> Object<'a> {
    /// The value of `key`; the last one if the key is repeated.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// Each key once, with its last value, in byte order of the keys.
    pub fn sorted(&self) -> Vec<(&str, &Json<'a>)> {
        let mut members: Vec<(&str, &Json<'a>)> = self.0.iter().rev().map(|(k, v)| (k.as_ref(), v)).collect();
        // Stable: of a repeated key, the last value read comes first and is the one kept.
        members.sort_by(|a, b| a.0.cmp(b.0));
        members.dedup_by(|later, kept| later.0 == kept.0);
        members
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json<'de>, D::Error> {
        Json::deserialize(deserializer)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Json<'de>, E> {
        // As `Value` does: a number JSON cannot hold reads as null.
        Ok(Number::from_f64(n).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(key) = map.next_key_seed(KeySeed)? {
            members.push((key, map.next_value()?));
        }
        Ok(Json::Object(Object(members)))
    }
}

/// Reads an object key, borrowing it when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(KeySeed)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescaped_strings_and_keys_borrow_from_the_text() {
        let text = br#"{"plain":"text","esc\u0061ped":"a\nb"}"#;
        let Json::Object(object) = Json::from_slice(text).unwrap() else { panic!("an object") };
        let (key, value) = &object.0[0];
        assert!(matches!(key, Cow::Borrowed("plain")));
        assert!(matches!(value, Json::String(Cow::Borrowed("text"))));
        let (key, value) = &object.0[1];
        assert_eq!(key, "escaped");
        assert_eq!(value.as_str(), Some("a\nb"));
    }

    #[test]
    fn a_repeated_key_reads_as_its_last_value_like_value_does() {
        let text = r#"{"b":1,"a":2,"b":3,"c":{"x":[1,2.5,-3,null,true]}}"#;
        let json = Json::from_slice(text.as_bytes()).unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(json.get("b"), Some(&Json::Number(3.into())));
        assert_eq!(json.to_value(), value);
        let sorted = json.as_object().unwrap().sorted();
        let keys: Vec<&str> = sorted.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(sorted[1].1, &Json::Number(3.into()));
    }

    #[test]
    fn invalid_text_is_an_error() {
        for text in ["", "{", "[1,]", r#"{"a":}"#, "nul", "\"\\x\""] {
            assert!(Json::from_slice(text.as_bytes()).is_err(), "{text:?}");
        }
    }
}
