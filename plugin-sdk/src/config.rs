//! Config handling shared by the wasm export and the testing harness:
//! parsing the JSON config string the host passes to `init`, and
//! discovering a config type's keys for the plugin's metadata.
//!
//! Keys are discovered without running any user code: [`keys`] drives the
//! type's `Deserialize` impl with a deserializer that only records the
//! field list serde derive hands to `deserialize_struct`, then stops.

use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

use crate::Transform;

/// Parses `config` and builds the plugin; errors are the exact text the host
/// reports, `invalid config: <reason>`.
pub(crate) fn init<T: Transform>(config: &str) -> Result<T, String> {
    let config = parse::<T::Config>(config).map_err(|e| format!("invalid config: {e}"))?;
    T::init(config).map_err(|e| format!("invalid config: {e}"))
}

pub(crate) fn parse<C: DeserializeOwned>(config: &str) -> Result<C, String> {
    // A plugin without a config table may be handed an empty string.
    let config = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    serde_json::from_str(config).map_err(|e| {
        // The host generated this JSON from the manifest, so a position in
        // it would point the user at text they never wrote.
        let mut message = e.to_string();
        if e.line() > 0
            && let Some(at) = message.rfind(" at line ")
        {
            message.truncate(at);
        }
        message
    })
}

/// The serde field names of `C`, if `C` deserializes as a struct (through
/// `Option`, `Box` and newtype wrappers); empty otherwise.
pub(crate) fn keys<C: DeserializeOwned>() -> Vec<&'static str> {
    let mut keys = Vec::new();
    // The recorder always ends in `Stop`; the keys are the point.
    let _ = C::deserialize(KeyRecorder { keys: &mut keys });
    keys
}

struct KeyRecorder<'k> {
    keys: &'k mut Vec<&'static str>,
}

/// The recorder's only error: "stop here".
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("config key discovery stops here")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> Deserializer<'de> for KeyRecorder<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.keys.extend_from_slice(fields);
        Err(Stop)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::NoConfig;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only the field names matter here")]
    struct Sample {
        field: String,
        #[serde(rename = "op")]
        operator: String,
        #[serde(default)]
        value: f64,
    }

    #[test]
    fn keys_are_the_serde_names_of_a_struct_and_empty_for_anything_else() {
        assert_eq!(keys::<Sample>(), ["field", "op", "value"]);
        assert_eq!(keys::<Option<Box<Sample>>>(), ["field", "op", "value"]);
        assert!(keys::<NoConfig>().is_empty());
        assert!(keys::<std::collections::HashMap<String, String>>().is_empty());
    }

    #[test]
    fn parse_errors_carry_serde_wording_without_a_position() {
        let err = parse::<Sample>(r#"{"feild": "a"}"#).err().unwrap();
        assert_eq!(
            err,
            "unknown field `feild`, expected one of `field`, `op`, `value`"
        );
        let err = parse::<Sample>(r#"{"field": "a"}"#).err().unwrap();
        assert_eq!(err, "missing field `op`");
    }

    #[test]
    fn no_config_accepts_nothing_and_refuses_any_key() {
        assert_eq!(parse::<NoConfig>(""), Ok(NoConfig));
        assert_eq!(parse::<NoConfig>("{}"), Ok(NoConfig));
        assert_eq!(parse::<NoConfig>("null"), Ok(NoConfig));
        let err = parse::<NoConfig>(r#"{"x": 1}"#).unwrap_err();
        assert_eq!(err, "this plugin takes no configuration, but got key `x`");
    }
}
