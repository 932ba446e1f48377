//! Times serialized as chrono serializes them, for less: RFC 3339 in UTC with `Z` and as many
//! fractional digits as the time needs (none, 3, 6 or 9), read back by chrono's own `Deserialize`.
//!
//! chrono's `Serialize` hands the serializer a `Display`, which serde_json escapes a character at a
//! time; formatting into a string first and writing that once took a time from about 2,000
//! instructions to a few hundred, and every event and build view holds one or more
//! (`meshgate-bench instructions`). Used as `#[serde(serialize_with = "…rfc3339::serialize")]`,
//! or `rfc3339::option::serialize` for an `Option`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
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
}

struct Text<'a>(&'a DateTime<Utc>);

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(self.0, serializer)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    #[derive(Serialize)]
    struct Ours {
        #[serde(serialize_with = "serialize")]
        at: DateTime<Utc>,
        #[serde(serialize_with = "option::serialize")]
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
    }
}
