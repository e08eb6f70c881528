//! Run a plugin natively, in a unit test, through the same batch code the
//! wasm export runs.
//!
//! [`Harness::run`] encodes [`TestMessage`]s into the contract's flat batch
//! (ten descriptor words per message plus one shared buffer), calls the
//! SDK's batch loop, and decodes the outcome the way the host does: parts
//! whose flag is clear are taken from the input. Only the wasm boundary
//! itself is skipped.
//!
//! ```
//! use serde_json::json;
//! use weir_sdk::testing::{Harness, TestMessage};
//! use weir_sdk::{Message, Result};
//!
//! #[weir_sdk::filter]
//! fn hot(msg: &Message) -> Result<bool> {
//!     Ok(msg.get_f64("temp")? > 30.0)
//! }
//!
//! let mut harness = Harness::<Plugin>::new(json!({})).unwrap();
//! let run = harness.run(&[
//!     TestMessage::json("t", json!({"temp": 31})),
//!     TestMessage::json("t", json!({"temp": 20})),
//!     TestMessage::text("t", "oops"),
//! ]);
//! assert_eq!(run.passed_inputs(), [0]);
//! assert!(run.outputs[0].is_passthrough());
//! assert_eq!(run.failed_inputs(), [2]);
//! ```

use std::fmt;

use serde_json::Value;

use crate::__bindings::weir::plugin::types::{Batch, Outcome};
use crate::log::Record;
use crate::message::{self, EVENT_WORDS, Fields, encode_field, join_i64, split_i64};
use crate::output::{OUTPUT_WORDS, flag, word};
use crate::{Aggregate, Kind, Transform, Window, aggregate, config, log, runtime};

/// One input message for a test run. Timestamp and QoS default to 0.
#[derive(Clone, Debug, PartialEq)]
pub struct TestMessage {
    topic: String,
    payload: Vec<u8>,
    fields: Vec<(String, String)>,
    timestamp_ms: i64,
    qos: u8,
}

impl TestMessage {
    /// A message with raw payload bytes.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            fields: Vec::new(),
            timestamp_ms: 0,
            qos: 0,
        }
    }

    /// A message with a text payload.
    pub fn text(topic: impl Into<String>, text: &str) -> Self {
        Self::new(topic, text)
    }

    /// A message whose payload is `value` as compact JSON.
    pub fn json(topic: impl Into<String>, value: Value) -> Self {
        Self::new(topic, value.to_string())
    }

    /// Adds a field (a topic capture).
    #[must_use]
    pub fn field(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.fields.push((key.into(), value.into()));
        self
    }

    /// Sets the timestamp, in milliseconds since the Unix epoch.
    #[must_use]
    pub fn ts(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// Sets the QoS.
    #[must_use]
    pub fn qos(mut self, qos: u8) -> Self {
        self.qos = qos;
        self
    }
}

/// One output of a run, with every part resolved as the host resolves it.
#[derive(Clone, Debug, PartialEq)]
pub struct TestOutput {
    /// Index of the input it came from.
    pub input: usize,
    /// The topic (the input's, unless changed).
    pub topic: String,
    /// The payload (the input's, unless changed).
    pub payload: Vec<u8>,
    /// The fields (the input's, unless changed).
    pub fields: Vec<(String, String)>,
    /// The timestamp (the input's, unless changed).
    pub timestamp_ms: i64,
    /// Which parts the plugin sent as new values (flag set) rather than
    /// leaving them to the input.
    pub changed: Changed,
}

/// Which parts of an output were sent as new values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// A new topic was sent.
    pub topic: bool,
    /// A new payload was sent.
    pub payload: bool,
    /// A new field set was sent.
    pub fields: bool,
    /// A new timestamp was sent.
    pub timestamp: bool,
}

impl TestOutput {
    /// True if no part was sent as new: the host reuses the input as is.
    pub fn is_passthrough(&self) -> bool {
        self.changed == Changed::default()
    }

    /// The payload as text; panics if it is not UTF-8.
    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("output payload is UTF-8")
    }

    /// The payload parsed as JSON; panics if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).expect("output payload is JSON")
    }

    /// The value of one field.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One failed input of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestFailure {
    /// Index of the input.
    pub input: usize,
    /// The message the host would log.
    pub message: String,
}

/// Everything one [`Harness::run`] produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    /// Outputs, in emission order.
    pub outputs: Vec<TestOutput>,
    /// Failed inputs.
    pub failures: Vec<TestFailure>,
    /// Log records written during the run.
    pub logs: Vec<Record>,
}

impl Run {
    /// The input index of each output, in order (for a filter: the inputs it
    /// kept).
    pub fn passed_inputs(&self) -> Vec<usize> {
        self.outputs.iter().map(|o| o.input).collect()
    }

    /// The input index of each failure, in order.
    pub fn failed_inputs(&self) -> Vec<usize> {
        self.failures.iter().map(|f| f.input).collect()
    }

    /// The failure message of input `input`, if it failed.
    pub fn failure(&self, input: usize) -> Option<&str> {
        self.failures
            .iter()
            .find(|f| f.input == input)
            .map(|f| f.message.as_str())
    }
}

/// A plugin instance under test.
///
/// For a function-form plugin the type is the `Plugin` struct the macro
/// generated next to the function: `Harness::<Plugin>::new(…)`.
pub struct Harness<P> {
    plugin: P,
    init_logs: Vec<Record>,
}

impl<P: Transform> Harness<P> {
    /// Initialises the plugin with `config` (a JSON object, as the host
    /// sends the manifest's table). The error is the text the host reports.
    pub fn new(config: Value) -> Result<Self, String> {
        Self::from_config_str(&config.to_string())
    }

    /// Initialises the plugin from a raw config string.
    pub fn from_config_str(config: &str) -> Result<Self, String> {
        log::capture::take();
        let plugin = config::init::<P>(config)?;
        Ok(Self {
            plugin,
            init_logs: log::capture::take(),
        })
    }

    /// Runs one batch.
    pub fn run(&mut self, messages: &[TestMessage]) -> Run {
        log::capture::take();
        let batch = encode(messages);
        let outcome = runtime::process_batch(&mut self.plugin, &batch);
        let mut run = decode(messages, &outcome);
        run.logs = log::capture::take();
        run
    }

    /// Runs one message.
    pub fn run_one(&mut self, message: TestMessage) -> Run {
        self.run(std::slice::from_ref(&message))
    }

    /// The plugin, to inspect its state.
    pub fn plugin(&self) -> &P {
        &self.plugin
    }

    /// The plugin, to change its state (or call its
    /// [`Stateful`](crate::Stateful) methods directly).
    pub fn plugin_mut(&mut self) -> &mut P {
        &mut self.plugin
    }

    /// Hands this instance's state to a fresh instance, as a hot reload
    /// does: `snapshot` here, then `init` with `config` and `restore`
    /// there. The error is the text the host would log.
    pub fn reload(&self, config: Value) -> Result<Self, String>
    where
        P: crate::Stateful,
    {
        let state = crate::Stateful::snapshot(&self.plugin).map_err(crate::Error::into_message)?;
        let mut next = Self::new(config)?;
        crate::Stateful::restore(&mut next.plugin, &state).map_err(crate::Error::into_message)?;
        Ok(next)
    }

    /// Log records written during `init`.
    pub fn init_logs(&self) -> &[Record] {
        &self.init_logs
    }
}

impl<P> fmt::Debug for Harness<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("plugin", &std::any::type_name::<P>())
            .finish_non_exhaustive()
    }
}

/// What a plugin reports before `init`, minus the name and version (which
/// the export macro takes from the plugin crate's `Cargo.toml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// The plugin's kind.
    pub kind: Kind,
    /// `(key, description)` for each config key.
    pub config_keys: Vec<(String, String)>,
}

/// The metadata `P` reports to the host.
pub fn metadata<P: Transform>() -> Metadata {
    let meta = runtime::metadata::<P>("", "");
    Metadata {
        kind: P::KIND,
        config_keys: meta
            .config_keys
            .into_iter()
            .map(|k| (k.name, k.description))
            .collect(),
    }
}

/// Takes the log records written on this thread since the last take.
pub fn take_logs() -> Vec<Record> {
    log::capture::take()
}

fn encode(messages: &[TestMessage]) -> Batch {
    let mut data = Vec::new();
    let mut events = Vec::with_capacity(messages.len() * EVENT_WORDS);
    for m in messages {
        let mut words = [0; EVENT_WORDS];
        let at = message::word::TOPIC;
        (words[at], words[at + 1]) = append(&mut data, m.topic.as_bytes());
        let at = message::word::PAYLOAD;
        (words[at], words[at + 1]) = append(&mut data, &m.payload);
        let start = data.len();
        for (key, value) in &m.fields {
            encode_field(&mut data, key, value);
        }
        let at = message::word::FIELDS;
        (words[at], words[at + 1]) = span(start, data.len());
        let at = message::word::TIMESTAMP;
        (words[at], words[at + 1]) = split_i64(m.timestamp_ms);
        words[message::word::QOS] = u32::from(m.qos);
        events.extend_from_slice(&words);
    }
    Batch { events, data }
}

fn append(data: &mut Vec<u8>, bytes: &[u8]) -> (u32, u32) {
    let start = data.len();
    data.extend_from_slice(bytes);
    span(start, data.len())
}

/// `(offset, length)` of `start..end`.
fn span(start: usize, end: usize) -> (u32, u32) {
    (
        u32::try_from(start).expect("test batch fits in 4 GiB"),
        u32::try_from(end - start).expect("test batch fits in 4 GiB"),
    )
}

/// Resolves the outcome against the inputs, checking every word and span as
/// the host must.
fn decode(messages: &[TestMessage], outcome: &Outcome) -> Run {
    let (emitted, rest) = outcome.emitted.as_chunks::<OUTPUT_WORDS>();
    assert!(
        rest.is_empty(),
        "SDK bug: {} emitted words, not a multiple of {OUTPUT_WORDS}",
        outcome.emitted.len()
    );
    let outputs = emitted
        .iter()
        .map(|words| decode_output(messages, &outcome.data, words))
        .collect();
    let failures = outcome
        .failures
        .iter()
        .map(|f| TestFailure {
            input: f.input as usize,
            message: f.message.clone(),
        })
        .collect();
    Run {
        outputs,
        failures,
        logs: Vec::new(),
    }
}

/// One output's ten words, resolved against its input.
fn decode_output(messages: &[TestMessage], data: &[u8], words: &[u32; OUTPUT_WORDS]) -> TestOutput {
    let input = words[word::INPUT] as usize;
    let msg = messages
        .get(input)
        .unwrap_or_else(|| panic!("SDK bug: output for input {input} of {}", messages.len()));
    let flags = words[word::FLAGS];
    let defined = flag::TOPIC | flag::PAYLOAD | flag::FIELDS | flag::TIMESTAMP;
    assert_eq!(
        flags & !defined,
        0,
        "SDK bug: undefined flag bits in {words:?}"
    );
    // The words of a part whose flag is clear, or `None` after checking
    // they are 0 as the contract requires.
    let pair = |bit: u32, at: usize| -> Option<(u32, u32)> {
        let pair = (words[at], words[at + 1]);
        if flags & bit == 0 {
            assert_eq!(pair, (0, 0), "SDK bug: words of a kept part in {words:?}");
            None
        } else {
            Some(pair)
        }
    };
    let part = |(offset, len): (u32, u32)| -> &[u8] {
        let start = offset as usize;
        start
            .checked_add(len as usize)
            .and_then(|end| data.get(start..end))
            .unwrap_or_else(|| {
                panic!("SDK bug: output span ({offset}, {len}) outside the outcome data")
            })
    };
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).expect("SDK bug: non-UTF-8 text");
    let topic = pair(flag::TOPIC, word::TOPIC);
    let payload = pair(flag::PAYLOAD, word::PAYLOAD);
    let fields = pair(flag::FIELDS, word::FIELDS);
    let timestamp = pair(flag::TIMESTAMP, word::TIMESTAMP);
    TestOutput {
        input,
        topic: topic.map_or_else(|| msg.topic.clone(), |s| text(part(s))),
        payload: payload.map_or_else(|| msg.payload.clone(), |s| part(s).to_vec()),
        fields: fields.map_or_else(
            || msg.fields.clone(),
            |s| {
                Fields::new(part(s))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            },
        ),
        timestamp_ms: timestamp.map_or(msg.timestamp_ms, |(low, high)| join_i64(low, high)),
        changed: Changed {
            topic: topic.is_some(),
            payload: payload.is_some(),
            fields: fields.is_some(),
            timestamp: timestamp.is_some(),
        },
    }
}

/// An aggregate plugin under test: accumulators driven natively through the
/// same code the `aggregate` exports run, by the ids a host would choose.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # use serde_json::{Value, json};
/// # use weir_sdk::{Aggregate, Message, NoConfig, Result, Window};
/// # struct Count;
/// # impl Aggregate for Count {
/// #     type Config = NoConfig;
/// #     type Acc = u64;
/// #     fn init(_: NoConfig) -> Result<Self> { Ok(Count) }
/// #     fn create(&self) -> u64 { 0 }
/// #     fn add(&self, acc: &mut u64, _: &Message) -> Result<()> { *acc += 1; Ok(()) }
/// #     fn merge(&self, into: &mut u64, from: &u64) { *into += from }
/// #     fn finish(&self, acc: u64, _: &Window) -> Result<Option<Value>> { Ok(Some(json!({"n": acc}))) }
/// # }
/// use weir_sdk::testing::{AggregateHarness, TestMessage};
///
/// let mut h = AggregateHarness::<Count>::new(json!({})).unwrap();
/// h.add(1, &[TestMessage::text("t", "a"), TestMessage::text("t", "b")]);
/// h.add(2, &[TestMessage::text("t", "c")]);
/// h.merge(1, 2);
/// assert_eq!(h.finish(1).unwrap(), Some(json!({"n": 3})));
/// ```
pub struct AggregateHarness<P: Aggregate> {
    state: aggregate::State<P>,
}

impl<P: Aggregate> fmt::Debug for AggregateHarness<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateHarness")
            .field("plugin", &std::any::type_name::<P>())
            .field("live", &self.state.accs.len())
            .finish()
    }
}

impl<P: Aggregate> AggregateHarness<P> {
    /// Initialises the plugin with `config`; the error is the host's text.
    pub fn new(config: Value) -> Result<Self, String> {
        let plugin = aggregate::build::<P>(&config.to_string())?;
        Ok(Self {
            state: aggregate::State::new(plugin),
        })
    }

    /// Feeds `messages` to accumulator `id`; returns the rejected messages
    /// as `(index, reason)`.
    pub fn add(&mut self, id: u32, messages: &[TestMessage]) -> Vec<(usize, String)> {
        let batch = encode(messages);
        let targets: Vec<u32> = (0..messages.len() as u32).flat_map(|i| [i, id]).collect();
        self.state
            .accumulate(&batch, &targets)
            .into_iter()
            .map(|f| (f.input as usize, f.message))
            .collect()
    }

    /// Folds accumulator `source` into `target`.
    pub fn merge(&mut self, target: u32, source: u32) {
        self.state.merge(target, source);
    }

    /// Finishes accumulator `id` for a window `[0, 1000)` with no group.
    pub fn finish(&mut self, id: u32) -> Result<Option<Value>, String> {
        let window = Window {
            start_ms: 0,
            end_ms: 1000,
            ..Window::default()
        };
        self.finish_window(id, &window)
    }

    /// Finishes accumulator `id` for `window`: the aggregate fields it
    /// returned, `None` for no output, or the failure.
    pub fn finish_window(&mut self, id: u32, window: &Window) -> Result<Option<Value>, String> {
        let payload = serde_json::json!({
            "window_start": window.start_ms,
            "window_end": window.end_ms,
        });
        let mut description = TestMessage::json(window.topic.clone(), payload).ts(window.start_ms);
        for (k, v) in &window.group {
            description = description.field(k.clone(), v.clone());
        }
        let batch = encode(std::slice::from_ref(&description));
        let outcome = self.state.finish(&[id], &batch);
        if let Some(f) = outcome.failures.first() {
            return Err(f.message.clone());
        }
        let run = decode(std::slice::from_ref(&description), &outcome);
        Ok(run.outputs.first().map(TestOutput::json))
    }

    /// The serialised state of accumulator `id`.
    pub fn snapshot(&self, id: u32) -> Result<Vec<u8>, String> {
        self.state.snapshot(id)
    }

    /// Sets accumulator `id` from a snapshot.
    pub fn restore(&mut self, id: u32, state: &[u8]) -> Result<(), String> {
        self.state.restore(id, state)
    }

    /// Accumulators currently held.
    pub fn live(&self) -> usize {
        self.state.accs.len()
    }

    /// The plugin.
    pub fn plugin(&self) -> &P {
        &self.state.plugin
    }
}
