//! `threshold`: a filter that keeps a message when a number in its JSON
//! payload passes a comparison, e.g. `temp > 30`.
//!
//! The semantics are shared with the C twin and must not drift: the field
//! is read by dotted path (see `weir_sdk::json::lookup`), must be a JSON
//! number, and is compared with the configured value as `f64`. A payload
//! that is not JSON, a missing field or a non-number fails that message
//! (with a text naming the field) instead of dropping it silently.

use serde::Deserialize;
use weir_sdk::{Message, Result};

/// The plugin's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Threshold {
    /// Dotted path to the number, e.g. `"sensor.temp"`.
    field: String,
    /// How the field compares with `value`.
    op: Op,
    /// The number to compare with.
    value: f64,
}

/// A comparison operator, written as in the config (`op = ">="`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Op::Gt => left > right,
            Op::Ge => left >= right,
            Op::Lt => left < right,
            Op::Le => left <= right,
            Op::Eq => left == right,
            Op::Ne => left != right,
        }
    }
}

#[weir_sdk::filter(describe(
    field = "Dotted path to the number in the JSON payload, e.g. \"sensor.temp\".",
    op = "Comparison: one of >, >=, <, <=, ==, !=.",
    value = "The number the field is compared with."
))]
fn threshold(msg: &Message, cfg: &Threshold) -> Result<bool> {
    let number = msg.get_f64(&cfg.field)?;
    Ok(cfg.op.holds(number, cfg.value))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_sdk::Kind;
    use weir_sdk::testing::{Harness, TestMessage, metadata};

    use super::*;

    fn harness(op: &str, value: f64) -> Harness<Plugin> {
        Harness::new(json!({"field": "temp", "op": op, "value": value})).unwrap()
    }

    fn temps(values: &[f64]) -> Vec<TestMessage> {
        values
            .iter()
            .map(|t| TestMessage::json("devices/a/t", json!({ "temp": t })))
            .collect()
    }

    #[test]
    fn each_operator_keeps_exactly_the_messages_it_holds_for() {
        let inputs = temps(&[29.0, 30.0, 31.0]);
        for (op, kept) in [
            (">", vec![2]),
            (">=", vec![1, 2]),
            ("<", vec![0]),
            ("<=", vec![0, 1]),
            ("==", vec![1]),
            ("!=", vec![0, 2]),
        ] {
            let run = harness(op, 30.0).run(&inputs);
            assert_eq!(run.passed_inputs(), kept, "op {op}");
            assert!(run.failures.is_empty());
        }
    }

    #[test]
    fn kept_messages_pass_through_without_a_copy() {
        let msg = TestMessage::json("devices/a/t", json!({"temp": 31}))
            .field("device", "a")
            .ts(5);
        let run = harness(">", 30.0).run_one(msg);
        let out = &run.outputs[0];
        assert!(out.is_passthrough());
        assert_eq!(out.topic, "devices/a/t");
        assert_eq!(out.field("device"), Some("a"));
        assert_eq!(out.timestamp_ms, 5);
    }

    #[test]
    fn integers_and_nested_paths_compare_as_numbers() {
        let mut h =
            Harness::<Plugin>::new(json!({"field": "s.vals.1", "op": ">=", "value": 2})).unwrap();
        let run = h.run(&[
            TestMessage::json("t", json!({"s": {"vals": [0, 2]}})),
            TestMessage::json("t", json!({"s": {"vals": [9, 1.5]}})),
        ]);
        assert_eq!(run.passed_inputs(), [0]);
    }

    #[test]
    fn bad_messages_fail_alone_with_a_message_naming_the_field() {
        let run = harness(">", 30.0).run(&[
            TestMessage::text("t", "not json"),
            TestMessage::json("t", json!({"hum": 40})),
            TestMessage::json("t", json!({"temp": "31"})),
            TestMessage::json("t", json!({"temp": 31})),
        ]);
        assert_eq!(run.passed_inputs(), [3]);
        assert_eq!(run.failed_inputs(), [0, 1, 2]);
        assert!(
            run.failure(0)
                .unwrap()
                .starts_with(r#"cannot read field "temp": payload is not valid JSON: "#)
        );
        assert_eq!(run.failure(1), Some(r#"field "temp" is missing"#));
        assert_eq!(run.failure(2), Some(r#"field "temp" is not a number"#));
    }

    #[test]
    fn config_errors_name_the_problem() {
        let err =
            Harness::<Plugin>::new(json!({"field": "t", "op": "=>", "value": 1})).unwrap_err();
        assert_eq!(
            err,
            "invalid config: unknown variant `=>`, expected one of `>`, `>=`, `<`, `<=`, `==`, `!=`"
        );
        let err = Harness::<Plugin>::new(json!({"feild": "t", "op": ">", "value": 1})).unwrap_err();
        assert_eq!(
            err,
            "invalid config: unknown field `feild`, expected one of `field`, `op`, `value`"
        );
        let err = Harness::<Plugin>::new(json!({"field": "t", "op": ">"})).unwrap_err();
        assert_eq!(err, "invalid config: missing field `value`");
        let err =
            Harness::<Plugin>::new(json!({"field": "t", "op": ">", "value": "3"})).unwrap_err();
        assert!(
            err.starts_with("invalid config: invalid type: string \"3\""),
            "{err}"
        );
    }

    #[test]
    fn metadata_lists_the_config_keys_with_descriptions() {
        let meta = metadata::<Plugin>();
        assert_eq!(meta.kind, Kind::Filter);
        let keys: Vec<_> = meta.config_keys.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["field", "op", "value"]);
        assert!(meta.config_keys.iter().all(|(_, d)| !d.is_empty()));
    }
}
