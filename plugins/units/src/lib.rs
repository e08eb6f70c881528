//! `units`: a map that converts numeric fields between units and renames
//! top-level keys of a JSON object payload.
//!
//! Conversions run first, on the original key names (dotted paths are
//! allowed), then renames. Converted values are rounded to `decimals`
//! places. A payload that is not a JSON object, or that lacks a field to
//! convert, fails that message; a missing key to rename is skipped, since
//! renaming is about shape, not presence.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use weir_sdk::json::lookup_mut;
use weir_sdk::{Message, Output};

/// The most decimals worth keeping: an `f64` carries about 15 significant
/// digits, and `10^decimals` must stay exact.
const MAX_DECIMALS: u32 = 10;

/// The plugin's config, checked once when the plugin starts.
#[derive(Debug, Deserialize)]
#[serde(try_from = "UnitsTable")]
struct Units {
    rename: BTreeMap<String, String>,
    convert: BTreeMap<String, Conversion>,
    decimals: u32,
}

/// The config table as written in the manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnitsTable {
    /// Top-level keys to rename, old name → new name.
    #[serde(default)]
    rename: BTreeMap<String, String>,
    /// Fields to convert, dotted path → conversion.
    #[serde(default)]
    convert: BTreeMap<String, Conversion>,
    /// Decimal places converted values are rounded to.
    #[serde(default = "default_decimals")]
    decimals: u32,
}

fn default_decimals() -> u32 {
    2
}

impl TryFrom<UnitsTable> for Units {
    type Error = String;

    fn try_from(table: UnitsTable) -> Result<Self, String> {
        if table.rename.is_empty() && table.convert.is_empty() {
            return Err("nothing to do: set `rename`, `convert` or both".to_owned());
        }
        if table.decimals > MAX_DECIMALS {
            return Err(format!(
                "`decimals` is {}, at most {MAX_DECIMALS} is supported",
                table.decimals
            ));
        }
        Ok(Self {
            rename: table.rename,
            convert: table.convert,
            decimals: table.decimals,
        })
    }
}

/// A unit conversion, written as in the config (`temp = "f_to_c"`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Conversion {
    /// Degrees Fahrenheit to Celsius.
    FToC,
    /// Degrees Celsius to Fahrenheit.
    CToF,
    /// Kelvin to degrees Celsius.
    KelvinToC,
    /// Degrees Celsius to kelvin.
    CToKelvin,
    /// Miles per hour to kilometres per hour.
    MphToKmh,
    /// Kilometres per hour to miles per hour.
    KmhToMph,
    /// Metres per second to kilometres per hour.
    MpsToKmh,
    /// Kilometres per hour to metres per second.
    KmhToMps,
    /// Pascal to hectopascal.
    PaToHpa,
    /// Hectopascal to pascal.
    HpaToPa,
}

impl Conversion {
    fn apply(self, x: f64) -> f64 {
        const KM_PER_MILE: f64 = 1.609_344;
        const ZERO_C_IN_K: f64 = 273.15;
        match self {
            Conversion::FToC => (x - 32.0) * 5.0 / 9.0,
            Conversion::CToF => x * 9.0 / 5.0 + 32.0,
            Conversion::KelvinToC => x - ZERO_C_IN_K,
            Conversion::CToKelvin => x + ZERO_C_IN_K,
            Conversion::MphToKmh => x * KM_PER_MILE,
            Conversion::KmhToMph => x / KM_PER_MILE,
            Conversion::MpsToKmh => x * 3.6,
            Conversion::KmhToMps => x / 3.6,
            Conversion::PaToHpa => x / 100.0,
            Conversion::HpaToPa => x * 100.0,
        }
    }
}

/// Rounds half away from zero to `decimals` places.
fn round(x: f64, decimals: u32) -> f64 {
    // `decimals` is at most MAX_DECIMALS, so the cast cannot wrap.
    let scale = 10f64.powi(decimals as i32);
    (x * scale).round() / scale
}

#[weir_sdk::map(describe(
    rename = "Top-level keys to rename, old = \"new\".",
    convert = "Fields to convert, path = \"f_to_c\" (also c_to_f, kelvin_to_c, c_to_kelvin, mph_to_kmh, kmh_to_mph, mps_to_kmh, kmh_to_mps, pa_to_hpa, hpa_to_pa).",
    decimals = "Decimal places for converted values (default 2)."
))]
fn units(msg: &Message, cfg: &Units) -> weir_sdk::Result<Output> {
    // Parsed straight into an owned value: the payload is rewritten anyway.
    let mut payload: Value = serde_json::from_slice(msg.payload())
        .map_err(|e| format!("payload is not valid JSON: {e}"))?;
    if !payload.is_object() {
        return Err("payload is not a JSON object".into());
    }
    for (path, conversion) in &cfg.convert {
        let value =
            lookup_mut(&mut payload, path).ok_or_else(|| format!("field \"{path}\" is missing"))?;
        let number = value
            .as_f64()
            .ok_or_else(|| format!("field \"{path}\" is not a number"))?;
        let converted = round(conversion.apply(number), cfg.decimals);
        *value = serde_json::Number::from_f64(converted)
            .map(Value::Number)
            .ok_or_else(|| format!("field \"{path}\" converts to a non-finite number"))?;
    }
    if let Value::Object(object) = &mut payload {
        for (old, new) in &cfg.rename {
            if let Some(value) = object.remove(old) {
                object.insert(new.clone(), value);
            }
        }
    }
    Ok(Output::new().json(&payload))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_sdk::testing::{Harness, TestMessage, metadata};

    use super::*;

    fn convert_one(conversion: &str, value: f64) -> Value {
        let mut h = Harness::<Plugin>::new(json!({"convert": {"v": conversion}})).unwrap();
        let run = h.run_one(TestMessage::json("t", json!({ "v": value })));
        run.outputs[0].json()["v"].clone()
    }

    #[test]
    fn every_conversion_gives_the_textbook_value_rounded_to_two_decimals() {
        for (conversion, input, expected) in [
            ("f_to_c", 212.0, json!(100.0)),
            ("f_to_c", 0.0, json!(-17.78)),
            ("c_to_f", 37.0, json!(98.6)),
            ("kelvin_to_c", 0.0, json!(-273.15)),
            ("c_to_kelvin", 25.0, json!(298.15)),
            ("mph_to_kmh", 60.0, json!(96.56)),
            ("kmh_to_mph", 100.0, json!(62.14)),
            ("mps_to_kmh", 10.0, json!(36.0)),
            ("kmh_to_mps", 36.0, json!(10.0)),
            ("pa_to_hpa", 101_325.0, json!(1013.25)),
            ("hpa_to_pa", 1013.25, json!(101_325.0)),
        ] {
            assert_eq!(
                convert_one(conversion, input),
                expected,
                "{conversion}({input})"
            );
        }
    }

    #[test]
    fn conversion_runs_before_renaming_and_other_keys_are_kept() {
        let mut h = Harness::<Plugin>::new(json!({
            "convert": {"temp_f": "f_to_c", "wind.speed": "mph_to_kmh"},
            "rename": {"temp_f": "temp_c", "absent": "ignored"},
            "decimals": 1,
        }))
        .unwrap();
        let run = h.run_one(
            TestMessage::json(
                "t",
                json!({"temp_f": 98.6, "wind": {"speed": 10}, "id": "x"}),
            )
            .field("device", "a"),
        );
        let out = &run.outputs[0];
        assert_eq!(
            out.json(),
            json!({"temp_c": 37.0, "wind": {"speed": 16.1}, "id": "x"})
        );
        assert!(out.changed.payload && !out.changed.topic && !out.changed.fields);
    }

    #[test]
    fn messages_that_cannot_be_converted_fail_alone() {
        let mut h = Harness::<Plugin>::new(json!({"convert": {"temp": "c_to_f"}})).unwrap();
        let run = h.run(&[
            TestMessage::json("t", json!([1, 2])),
            TestMessage::json("t", json!({"hum": 3})),
            TestMessage::json("t", json!({"temp": "hot"})),
            TestMessage::text("t", "{"),
            TestMessage::json("t", json!({"temp": 0})),
        ]);
        assert_eq!(run.passed_inputs(), [4]);
        assert_eq!(run.failure(0), Some("payload is not a JSON object"));
        assert_eq!(run.failure(1), Some(r#"field "temp" is missing"#));
        assert_eq!(run.failure(2), Some(r#"field "temp" is not a number"#));
        assert!(
            run.failure(3)
                .unwrap()
                .starts_with("payload is not valid JSON: ")
        );
        assert_eq!(run.outputs[0].json(), json!({"temp": 32.0}));
    }

    #[test]
    fn config_mistakes_are_refused_before_any_message() {
        let refuse = |config| Harness::<Plugin>::new(config).unwrap_err();
        assert_eq!(
            refuse(json!({})),
            "invalid config: nothing to do: set `rename`, `convert` or both"
        );
        assert_eq!(
            refuse(json!({"convert": {"t": "c_to_f"}, "decimals": 11})),
            "invalid config: `decimals` is 11, at most 10 is supported"
        );
        assert!(refuse(json!({"convert": {"t": "f_to_k"}})).starts_with(
            "invalid config: unknown variant `f_to_k`, expected one of `f_to_c`, `c_to_f`,"
        ));
        assert!(
            refuse(json!({"renames": {}})).starts_with("invalid config: unknown field `renames`")
        );
    }

    #[test]
    fn metadata_lists_the_table_keys() {
        let keys: Vec<_> = metadata::<Plugin>()
            .config_keys
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["rename", "convert", "decimals"]);
    }
}
