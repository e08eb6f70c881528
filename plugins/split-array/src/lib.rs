//! `split-array`: a flat-map that turns a message carrying a JSON array
//! into one message per element, e.g. a gateway's batched readings into
//! one reading per message.
//!
//! Each output's payload is the element as compact JSON. With `keep`, the
//! listed top-level keys of the parent payload are copied into every
//! element (an element's own key wins), which requires elements to be
//! objects; without `keep`, elements of any JSON type are emitted as they
//! are. An empty array emits nothing. A payload that is not JSON, or a
//! `field` that is missing or not an array, fails the message.

use serde::Deserialize;
use serde_json::Value;
use weir_sdk::{Message, Output, Result};

/// The plugin's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitArray {
    /// Dotted path to the array; `""` means the payload is the array.
    field: String,
    /// Append `/<index>` to each output's topic.
    #[serde(default)]
    topic_suffix_index: bool,
    /// Top-level keys of the parent to copy into each element.
    #[serde(default)]
    keep: Vec<String>,
}

#[weir_sdk::flat_map(describe(
    field = "Dotted path to the array (\"\" for a payload that is the array itself).",
    topic_suffix_index = "Append /<index> to each output's topic (default false).",
    keep = "Top-level keys of the parent to copy into each element object (default none)."
))]
fn split_array(msg: &Message, cfg: &SplitArray) -> Result<Vec<Output>> {
    let path = &cfg.field;
    let Value::Array(elements) = msg.get_value(path)? else {
        return Err(format!("field \"{path}\" is not an array").into());
    };
    let parent = msg.json()?;
    let mut outputs = Vec::with_capacity(elements.len());
    for (index, element) in elements.iter().enumerate() {
        let mut output = if cfg.keep.is_empty() {
            Output::new().json(element)
        } else {
            let Value::Object(fields) = element else {
                return Err(format!(
                    "element {index} of \"{path}\" is not an object, so `keep` cannot add keys to it"
                )
                .into());
            };
            let mut merged = fields.clone();
            for key in &cfg.keep {
                if let Some(value) = parent.get(key)
                    && !merged.contains_key(key)
                {
                    merged.insert(key.clone(), value.clone());
                }
            }
            Output::new().json(&Value::Object(merged))
        };
        if cfg.topic_suffix_index {
            output = output.topic(format!("{}/{index}", msg.topic()));
        }
        outputs.push(output);
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_sdk::testing::{Harness, TestMessage};

    use super::*;

    fn payloads(run: &weir_sdk::testing::Run) -> Vec<Value> {
        run.outputs.iter().map(|o| o.json()).collect()
    }

    #[test]
    fn each_element_becomes_one_message_in_order() {
        let mut h = Harness::<Plugin>::new(json!({"field": "readings"})).unwrap();
        let run = h.run_one(
            TestMessage::json("gw/1", json!({"readings": [{"t": 1}, 2, "three", null]}))
                .field("gateway", "1")
                .ts(9),
        );
        assert_eq!(
            payloads(&run),
            [json!({"t": 1}), json!(2), json!("three"), json!(null)]
        );
        for out in &run.outputs {
            assert_eq!((out.topic.as_str(), out.timestamp_ms), ("gw/1", 9));
            assert_eq!(out.field("gateway"), Some("1"));
            assert!(!out.changed.topic);
        }
    }

    #[test]
    fn keep_copies_parent_keys_without_overriding_the_elements_own() {
        let mut h = Harness::<Plugin>::new(json!({
            "field": "data.items",
            "keep": ["site", "unit", "absent"],
            "topic_suffix_index": true,
        }))
        .unwrap();
        let run = h.run_one(TestMessage::json(
            "site/a",
            json!({"site": "a", "unit": "C", "data": {"items": [{"v": 1}, {"v": 2, "unit": "F"}]}}),
        ));
        assert_eq!(
            payloads(&run),
            [
                json!({"v": 1, "site": "a", "unit": "C"}),
                json!({"v": 2, "site": "a", "unit": "F"})
            ]
        );
        let topics: Vec<_> = run.outputs.iter().map(|o| o.topic.as_str()).collect();
        assert_eq!(topics, ["site/a/0", "site/a/1"]);
    }

    #[test]
    fn an_empty_path_splits_a_payload_that_is_itself_an_array() {
        let mut h = Harness::<Plugin>::new(json!({"field": ""})).unwrap();
        let run = h.run(&[
            TestMessage::json("t", json!([1, 2])),
            TestMessage::json("t", json!([])),
        ]);
        assert_eq!(run.passed_inputs(), [0, 0]);
    }

    #[test]
    fn messages_without_a_splittable_array_fail_alone() {
        let mut h = Harness::<Plugin>::new(json!({"field": "items", "keep": ["id"]})).unwrap();
        let run = h.run(&[
            TestMessage::json("t", json!({"other": []})),
            TestMessage::json("t", json!({"items": {"a": 1}})),
            TestMessage::json("t", json!({"items": [{"a": 1}, 5]})),
            TestMessage::text("t", "nope"),
            TestMessage::json("t", json!({"id": 7, "items": [{"a": 1}]})),
        ]);
        assert_eq!(run.passed_inputs(), [4]);
        assert_eq!(run.failure(0), Some(r#"field "items" is missing"#));
        assert_eq!(run.failure(1), Some(r#"field "items" is not an array"#));
        assert_eq!(
            run.failure(2),
            Some(r#"element 1 of "items" is not an object, so `keep` cannot add keys to it"#)
        );
        assert!(
            run.failure(3)
                .unwrap()
                .contains("payload is not valid JSON")
        );
        assert_eq!(run.outputs[0].json(), json!({"a": 1, "id": 7}));
    }

    #[test]
    fn the_path_is_required() {
        let err = Harness::<Plugin>::new(json!({"keep": []})).unwrap_err();
        assert_eq!(err, "invalid config: missing field `field`");
    }
}
