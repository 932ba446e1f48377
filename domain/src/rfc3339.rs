//! Times serialized and read as chrono does, for less: written in RFC 3339 in UTC with `Z` and as
//! many fractional digits as the time needs (none, 3, 6 or 9); read by chrono's strict RFC 3339
//! parser, and by its relaxed one (what its own `Deserialize` uses: a space for the `T`, say) only
//! when the strict one refuses.
//!
//! chrono's `Serialize` hands the serializer a `Display`, which serde_json escapes a character at a
//! time; formatting into a string first and writing that once took a time from about 2,000
//! instructions to a few hundred. Its relaxed parser goes through its general format machinery,
//! about 2,700 instructions a time. Every event and build view holds one or more
//! (`meshgate-bench instructions`, and `projections rebuild` reads every event of the log). Used
//! as `#[serde(with = "…rfc3339")]`, or `rfc3339::option` for an `Option`.

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    deserializer.deserialize_str(Rfc3339)
}

/// Reads a time from the text the deserializer holds (not copied into a string of its own), as
/// chrono's `Deserialize` reads it.
struct Rfc3339;

impl serde::de::Visitor<'_> for Rfc3339 {
    type Value = DateTime<Utc>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an RFC 3339 formatted date and time string")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
        DateTime::parse_from_rfc3339(text)
            .or_else(|_| text.parse::<DateTime<FixedOffset>>())
            .map(|at| at.with_timezone(&Utc))
            .map_err(E::custom)
    }
}

/// The same for an optional time.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(at: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => serializer.serialize_some(&Text(at)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Ok(Option::<Time>::deserialize(deserializer)?.map(|Time(at)| at))
    }
}

/// A time through [`serialize`] and [`deserialize`], for the `Option`'s inside.
struct Text<'a>(&'a DateTime<Utc>);

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(self.0, serializer)
    }
}

struct Time(DateTime<Utc>);

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize(deserializer).map(Time)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Ours {
        #[serde(with = "super")]
        at: DateTime<Utc>,
        #[serde(with = "option")]
        maybe: Option<DateTime<Utc>>,
    }

    #[derive(Serialize)]
    struct Chronos {
        at: DateTime<Utc>,
        maybe: Option<DateTime<Utc>>,
    }

    proptest! {
        #[test]
        fn times_are_written_exactly_as_chrono_writes_them(
            seconds in -62_000_000_000i64..250_000_000_000,
            nanos in prop_oneof![Just(0u32), (0u32..1000).prop_map(|ms| ms * 1_000_000), (0u32..1_000_000).prop_map(|us| us * 1000), 0u32..1_000_000_000],
            some in any::<bool>(),
        ) {
            let at = Utc.timestamp_opt(seconds, nanos).single().unwrap();
            let maybe = some.then_some(at);
            let ours = serde_json::to_string(&Ours { at, maybe }).unwrap();
            prop_assert_eq!(&ours, &serde_json::to_string(&Chronos { at, maybe }).unwrap());
            let back: serde_json::Value = serde_json::from_str(&ours).unwrap();
            prop_assert_eq!(serde_json::from_value::<DateTime<Utc>>(back["at"].clone()).unwrap(), at);
        }

        /// Whatever chrono reads (any precision, any offset, a space for the `T`), this reads the
        /// same; what it refuses, this refuses.
        #[test]
        fn times_are_read_exactly_as_chrono_reads_them(
            seconds in -62_000_000_000i64..250_000_000_000,
            nanos in 0u32..1_000_000_000,
            offset in -86_399i32..86_400,
            form in 0usize..6,
            noise in "[0-9TZ:. +-]{0,3}",
        ) {
            let at = Utc.timestamp_opt(seconds, nanos).single().unwrap();
            let local = at.with_timezone(&FixedOffset::east_opt(offset).unwrap());
            let mut text = match form {
                0 => at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                1 => local.to_rfc3339_opts(SecondsFormat::Secs, false),
                2 => local.to_rfc3339_opts(SecondsFormat::Millis, false),
                3 => local.to_rfc3339_opts(SecondsFormat::Nanos, true),
                4 => local.to_rfc3339().replacen('T', " ", 1),
                _ => local.to_rfc3339().to_lowercase(),
            };
            if form == 5 { text.push_str(&noise); }
            let json = serde_json::to_string(&text).unwrap();
            let chronos = serde_json::from_str::<DateTime<Utc>>(&json).ok();
            let ours = serde_json::from_str::<Ours>(&format!(r#"{{"at":{json},"maybe":{json}}}"#)).ok();
            prop_assert_eq!(ours.as_ref().map(|o| o.at), chronos);
            prop_assert_eq!(ours.and_then(|o| o.maybe), chronos);
        }
    }
}
