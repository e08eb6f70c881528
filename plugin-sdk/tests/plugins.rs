//! The SDK's contract with plugin authors, checked end to end through
//! `testing::Harness`: what each form emits, what a failure withdraws, and
//! what the SDK refuses on the host's behalf.

use serde::Deserialize;
use serde_json::json;
use weir_sdk::testing::{Harness, TestMessage, metadata};
use weir_sdk::{Emitter, Kind, Message, NoConfig, Output, Result, Transform};

mod tag {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Tag {
        pub(super) topic: String,
    }

    #[weir_sdk::map(describe(topic = "Where tagged messages go."))]
    fn tag(msg: &Message, cfg: &Tag) -> Result<Output> {
        Ok(Output::new()
            .topic(&cfg.topic)
            .field("from", msg.topic())
            .remove_field("secret"))
    }

    #[test]
    fn a_map_sends_only_the_parts_it_changed() {
        let mut h = Harness::<Plugin>::new(json!({"topic": "tagged"})).unwrap();
        let run = h.run_one(
            TestMessage::text("in/1", "payload")
                .field("device", "a")
                .field("secret", "s")
                .ts(7),
        );
        let out = &run.outputs[0];
        assert_eq!(out.topic, "tagged");
        assert_eq!(out.payload_str(), "payload");
        assert_eq!(
            out.fields,
            [
                ("device".into(), "a".into()),
                ("from".into(), "in/1".into())
            ]
        );
        assert_eq!(out.timestamp_ms, 7);
        assert!(out.changed.topic && out.changed.fields);
        assert!(!out.changed.payload && !out.changed.timestamp);
    }

    #[test]
    fn metadata_reports_the_kind_and_described_config_keys() {
        let meta = metadata::<Plugin>();
        assert_eq!(meta.kind, Kind::Map);
        assert_eq!(
            meta.config_keys,
            [("topic".to_owned(), "Where tagged messages go.".to_owned())]
        );
    }
}

mod explode {
    use super::*;

    #[weir_sdk::flat_map]
    fn explode(msg: &Message) -> Result<Vec<Output>> {
        let n = msg.get_i64("n")?;
        if n < 0 {
            return Err("n is negative".into());
        }
        Ok((0..n)
            .map(|i| Output::new().payload(i.to_string()).timestamp_ms(i))
            .collect())
    }

    #[test]
    fn a_flat_map_emits_every_output_in_order_and_may_emit_none() {
        let mut h = Harness::<Plugin>::new(json!({})).unwrap();
        let run = h.run(&[
            TestMessage::json("t", json!({"n": 2})),
            TestMessage::json("t", json!({"n": 0})),
            TestMessage::json("t", json!({"n": -1})),
            TestMessage::json("t", json!({"n": 1})),
        ]);
        let got: Vec<_> = run
            .outputs
            .iter()
            .map(|o| (o.input, o.payload_str(), o.timestamp_ms))
            .collect();
        assert_eq!(got, [(0, "0", 0), (0, "1", 1), (3, "0", 0)]);
        assert_eq!(run.failure(2), Some("n is negative"));
    }

    #[test]
    fn a_plugin_without_config_refuses_any_key() {
        let err = Harness::<Plugin>::new(json!({"n": 1})).unwrap_err();
        assert_eq!(
            err,
            "invalid config: this plugin takes no configuration, but got key `n`"
        );
        assert!(metadata::<Plugin>().config_keys.is_empty());
    }
}

/// Emits what the payload asks for, to probe the batch loop.
struct Probe {
    batches: usize,
}

impl Transform for Probe {
    type Config = NoConfig;
    const KIND: Kind = Kind::Filter;

    fn init(_: NoConfig) -> Result<Self> {
        weir_sdk::log::info("Probe ready.", &[]);
        Ok(Self { batches: 0 })
    }

    fn process(&mut self, msg: &Message, out: &mut Emitter) -> Result<()> {
        match msg.payload() {
            b"pass" => out.pass(),
            b"pass-then-fail" => {
                out.pass();
                return Err("changed my mind".into());
            }
            b"modify" => out.emit(Output::new().payload("x")),
            b"twice" => {
                out.pass();
                out.pass();
            }
            b"log" => weir_sdk::log::warn("Probe logged.", &[("batch", &self.batches.to_string())]),
            _ => {}
        }
        if msg.field("last").is_some() {
            self.batches += 1;
        }
        Ok(())
    }
}

fn probe(payloads: &[&str]) -> weir_sdk::testing::Run {
    let mut h = Harness::<Probe>::new(json!({})).unwrap();
    let messages: Vec<_> = payloads.iter().map(|p| TestMessage::text("t", p)).collect();
    h.run(&messages)
}

#[test]
fn a_failed_message_withdraws_its_outputs_and_leaves_the_others_alone() {
    let run = probe(&["pass", "pass-then-fail", "pass"]);
    assert_eq!(run.passed_inputs(), [0, 2]);
    assert_eq!(run.failure(1), Some("changed my mind"));
}

#[test]
fn a_filter_that_modifies_or_duplicates_a_message_fails_that_message() {
    let run = probe(&["modify", "twice", "pass"]);
    assert_eq!(run.passed_inputs(), [2]);
    assert!(
        run.failure(0)
            .unwrap()
            .contains("a filter may only pass its input unchanged")
    );
    assert!(
        run.failure(1)
            .unwrap()
            .contains("at most one output per message, but it emitted 2")
    );
}

#[test]
fn state_lives_in_the_plugin_across_batches_and_logs_come_back_with_each_run() {
    let mut h = Harness::<Probe>::new(json!({})).unwrap();
    assert_eq!(h.init_logs()[0].message, "Probe ready.");
    for _ in 0..3 {
        h.run_one(TestMessage::text("t", "").field("last", "yes"));
    }
    let run = h.run_one(TestMessage::text("t", "log"));
    assert_eq!(h.plugin().batches, 3);
    assert_eq!(run.logs.len(), 1);
    assert_eq!(run.logs[0].level, weir_sdk::log::Level::Warn);
    assert_eq!(run.logs[0].fields, [("batch".to_owned(), "3".to_owned())]);
}

#[test]
fn fields_can_be_replaced_wholesale_or_edited_one_by_one() {
    struct Fields;
    impl Transform for Fields {
        type Config = NoConfig;
        const KIND: Kind = Kind::FlatMap;
        fn init(_: NoConfig) -> Result<Self> {
            Ok(Self)
        }
        fn process(&mut self, _: &Message, out: &mut Emitter) -> Result<()> {
            out.emit(Output::new().fields([("only", "1")]).field("also", "2"));
            out.emit(
                Output::new()
                    .field("a", "new")
                    .field("z", "added")
                    .remove_field("b"),
            );
            out.emit(Output::new().fields(Vec::<(String, String)>::new()));
            Ok(())
        }
    }
    let mut h = Harness::<Fields>::new(json!({})).unwrap();
    let run = h.run_one(
        TestMessage::text("t", "")
            .field("a", "old")
            .field("b", "x")
            .field("c", "y"),
    );
    let fields: Vec<Vec<(&str, &str)>> = run
        .outputs
        .iter()
        .map(|o| {
            o.fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        })
        .collect();
    assert_eq!(
        fields,
        [
            vec![("only", "1"), ("also", "2")],
            vec![("a", "new"), ("c", "y"), ("z", "added")],
            vec![],
        ]
    );
    assert!(run.outputs[2].changed.fields);
}
