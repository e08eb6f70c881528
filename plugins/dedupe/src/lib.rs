//! `dedupe`: a stateful filter that drops a message whose key is among the
//! last `window` distinct keys it let through.
//!
//! The key is the JSON value at a dotted path, compared by its compact JSON
//! text (so `1` and `1.0` differ, and `"7"` differs from `7`), or the topic
//! when `key = "$topic"`. The window is first-in, first-out over distinct
//! keys: a duplicate does not refresh its key, so a key repeated forever is
//! let through again once `window` newer keys have pushed it out. Both
//! lookups and evictions are O(1).
//!
//! The window lives in the plugin instance, which the SDK owns: it survives
//! across batches and, through the contract's `state` interface
//! (snapshot/restore), a hot reload to a new version of the plugin. It does
//! not survive an instance rebuild after a trap. The snapshot is
//! [`STATE_MAGIC`] followed by each remembered key, oldest first, as a
//! little-endian `u32` length and the key's bytes; a new version with a
//! smaller `window` keeps the newest keys.

use std::collections::{HashSet, VecDeque};
use std::rc::Rc;

use serde::Deserialize;
use weir_sdk::{Emitter, Kind, Message, Result, Stateful, Transform};

/// First bytes of a snapshot: the format and its version.
const STATE_MAGIC: &[u8] = b"weir-dedupe/1\n";

/// The `key` value that selects the topic instead of a payload field.
const TOPIC_KEY: &str = "$topic";

/// The plugin's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Dotted path to the key in the JSON payload, or `"$topic"`.
    key: String,
    /// How many distinct keys are remembered.
    #[serde(default = "default_window")]
    window: usize,
}

fn default_window() -> usize {
    1000
}

/// The deduplicating filter and its window of recent keys.
struct Dedupe {
    key: Key,
    window: usize,
    /// Each remembered key is shared by the set (for lookups) and the
    /// queue (for eviction order).
    seen: HashSet<Rc<[u8]>>,
    order: VecDeque<Rc<[u8]>>,
    /// The current message's key, reused so a duplicate allocates nothing.
    scratch: Vec<u8>,
}

/// Where a message's key comes from.
enum Key {
    Topic,
    Path(String),
}

impl Dedupe {
    /// Writes the message's key into `scratch`.
    fn read_key(&mut self, msg: &Message) -> Result<()> {
        self.scratch.clear();
        match &self.key {
            Key::Topic => self.scratch.extend_from_slice(msg.topic_bytes()),
            Key::Path(path) => serde_json::to_writer(&mut self.scratch, msg.get_value(path)?)?,
        }
        Ok(())
    }

    /// Remembers the key in `scratch`, forgetting the oldest if the window
    /// is full. Returns false if it was already remembered.
    fn remember(&mut self) -> bool {
        if self.seen.contains(self.scratch.as_slice()) {
            return false;
        }
        if self.order.len() == self.window
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        let key: Rc<[u8]> = self.scratch.as_slice().into();
        self.seen.insert(Rc::clone(&key));
        self.order.push_back(key);
        true
    }
}

impl Transform for Dedupe {
    type Config = Config;
    const KIND: Kind = Kind::Filter;
    const CONFIG_DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "key",
            "Dotted path to the key in the JSON payload, or \"$topic\".",
        ),
        (
            "window",
            "How many distinct recent keys are remembered (default 1000).",
        ),
    ];

    fn init(config: Config) -> Result<Self> {
        if config.window == 0 {
            return Err("`window` must be at least 1".into());
        }
        let key = match config.key.as_str() {
            TOPIC_KEY => Key::Topic,
            _ => Key::Path(config.key),
        };
        // Sized up front: the window fills quickly on a busy topic, and
        // growing mid-stream would rehash on the hot path.
        Ok(Self {
            key,
            window: config.window,
            seen: HashSet::with_capacity(config.window),
            order: VecDeque::with_capacity(config.window),
            scratch: Vec::new(),
        })
    }

    fn process(&mut self, msg: &Message, out: &mut Emitter) -> Result<()> {
        self.read_key(msg)?;
        if self.remember() {
            out.pass();
        }
        Ok(())
    }
}

impl Stateful for Dedupe {
    fn snapshot(&self) -> Result<Vec<u8>> {
        let size: usize = self.order.iter().map(|k| 4 + k.len()).sum();
        let mut out = Vec::with_capacity(STATE_MAGIC.len() + size);
        out.extend_from_slice(STATE_MAGIC);
        for key in &self.order {
            let len = u32::try_from(key.len()).map_err(|_| "a key is over 4 GiB")?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(key);
        }
        Ok(out)
    }

    fn restore(&mut self, state: &[u8]) -> Result<()> {
        let mut rest = state
            .strip_prefix(STATE_MAGIC)
            .ok_or("the state is not a dedupe snapshot of format 1")?;
        let mut keys = VecDeque::new();
        while !rest.is_empty() {
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or("the state is truncated (a key length is cut off)")?;
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len {
                return Err("the state is truncated (a key is cut off)".into());
            }
            let (key, tail) = tail.split_at(len);
            keys.push_back(Rc::<[u8]>::from(key));
            rest = tail;
        }
        while keys.len() > self.window {
            keys.pop_front();
        }
        self.seen = keys.iter().cloned().collect();
        self.order = keys;
        Ok(())
    }
}

weir_sdk::export_stateful!(Dedupe);

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use weir_sdk::testing::{Harness, TestMessage, metadata};

    use super::*;

    fn ids(ids: &[Value]) -> Vec<TestMessage> {
        ids.iter()
            .map(|id| TestMessage::json("t", json!({ "id": id })))
            .collect()
    }

    #[test]
    fn a_repeated_key_is_dropped_within_the_window_and_across_batches() {
        let mut h = Harness::<Dedupe>::new(json!({"key": "id"})).unwrap();
        let run = h.run(&ids(&[json!(1), json!(2), json!(1)]));
        assert_eq!(run.passed_inputs(), [0, 1]);
        assert!(run.outputs.iter().all(|o| o.is_passthrough()));
        let run = h.run(&ids(&[json!(2), json!(3)]));
        assert_eq!(run.passed_inputs(), [1]);
    }

    #[test]
    fn keys_compare_by_their_json_text() {
        let mut h = Harness::<Dedupe>::new(json!({"key": "id"})).unwrap();
        let run = h.run(&ids(&[
            json!(1),
            json!(1.0),
            json!("1"),
            json!({"a": 1, "b": 2}),
            json!({"b": 2, "a": 1}),
        ]));
        assert_eq!(run.passed_inputs(), [0, 1, 2, 3]);
    }

    #[test]
    fn the_oldest_key_is_forgotten_once_the_window_is_full() {
        let mut h = Harness::<Dedupe>::new(json!({"key": "id", "window": 2})).unwrap();
        let run = h.run(&ids(&[
            json!("a"),
            json!("b"),
            json!("a"),
            json!("c"),
            json!("a"),
            json!("c"),
        ]));
        // "a" is still remembered at index 2 (the duplicate does not refresh
        // it), is pushed out by "c", so index 4 passes again.
        assert_eq!(run.passed_inputs(), [0, 1, 3, 4]);
    }

    #[test]
    fn the_topic_can_be_the_key() {
        let mut h = Harness::<Dedupe>::new(json!({"key": "$topic"})).unwrap();
        let run = h.run(&[
            TestMessage::text("a", "not json"),
            TestMessage::text("b", "x"),
            TestMessage::text("a", "y"),
        ]);
        assert_eq!(run.passed_inputs(), [0, 1]);
    }

    #[test]
    fn a_message_without_a_key_fails_and_is_not_remembered() {
        let mut h = Harness::<Dedupe>::new(json!({"key": "meta.id"})).unwrap();
        let run = h.run(&[
            TestMessage::json("t", json!({"meta": {}})),
            TestMessage::text("t", "{"),
            TestMessage::json("t", json!({"meta": {"id": null}})),
        ]);
        assert_eq!(run.failure(0), Some(r#"field "meta.id" is missing"#));
        assert!(
            run.failure(1)
                .unwrap()
                .contains("payload is not valid JSON")
        );
        assert_eq!(run.passed_inputs(), [2]);
        assert_eq!(h.plugin().order.len(), 1);
    }

    #[test]
    fn a_reload_hands_the_remembered_keys_to_the_new_instance() {
        let mut h = Harness::<Dedupe>::new(json!({"key": "id", "window": 3})).unwrap();
        h.run(&ids(&[json!(1), json!(2), json!(3), json!(4)]));
        let mut next = h.reload(json!({"key": "id", "window": 3})).unwrap();
        // 2, 3 and 4 are remembered across the reload; a fresh instance
        // would pass all four.
        let run = next.run(&ids(&[json!(4), json!(3), json!(2), json!(5)]));
        assert_eq!(run.passed_inputs(), [3]);
        let mut smaller = h.reload(json!({"key": "id", "window": 1})).unwrap();
        let run = smaller.run(&ids(&[json!(4), json!(3)]));
        assert_eq!(run.passed_inputs(), [1], "only the newest key is kept");
    }

    #[test]
    fn a_foreign_or_truncated_state_is_refused() {
        let mut h = Harness::<Dedupe>::new(json!({"key": "id"})).unwrap();
        let err = h.plugin_mut().restore(b"something else").unwrap_err();
        assert!(err.message().contains("not a dedupe snapshot"), "{err:?}");
        let mut cut = STATE_MAGIC.to_vec();
        cut.extend_from_slice(&9u32.to_le_bytes());
        cut.extend_from_slice(b"abc");
        let err = h.plugin_mut().restore(&cut).unwrap_err();
        assert!(err.message().contains("truncated"), "{err:?}");
    }

    #[test]
    fn config_is_checked_when_the_plugin_starts() {
        let err = Harness::<Dedupe>::new(json!({"key": "id", "window": 0})).unwrap_err();
        assert_eq!(err, "invalid config: `window` must be at least 1");
        let err = Harness::<Dedupe>::new(json!({"window": 5})).unwrap_err();
        assert_eq!(err, "invalid config: missing field `key`");
        let keys: Vec<_> = metadata::<Dedupe>()
            .config_keys
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["key", "window"]);
    }
}
