//! The read-only view of one input message that a plugin receives.
//!
//! A [`Message`] borrows its topic, payload and fields straight from the
//! batch buffer the host sent; building one copies and decodes nothing, so a
//! plugin pays only for what it reads: the topic is checked for UTF-8 when
//! asked for, fields are decoded when looked up. The typed getters
//! (`get_f64`, …) read their one path straight from the payload bytes
//! without building a tree; [`Message::json`] parses the whole payload into
//! a `Value` once and caches it, and the getters use that tree once it
//! exists. This module must never allocate on the path that does not touch
//! JSON or fields, nor when a typed getter reads a number, a boolean or a
//! string without escapes.

use std::cell::OnceCell;

use serde_json::Value;

use crate::json::{self, Found, lookup};
use crate::{Error, Result};

/// One input message: topic, payload, fields (topic captures such as
/// `{device}`), timestamp and QoS.
///
/// All accessors are lazy. [`json`](Self::json), [`get`](Self::get) and
/// [`get_value`](Self::get_value) parse the payload on first use and reuse
/// the result; the typed getters ([`get_f64`](Self::get_f64), …) read one
/// path without building a tree, or use the tree if one of the others built
/// it already (so a plugin reading many fields of a large payload may call
/// `json()` first). Errors name the path they were asked for.
pub struct Message<'a> {
    /// The message's descriptor, checked against `data` by `from_words`;
    /// parts are sliced out when asked for, so a plugin that reads nothing
    /// pays for nothing.
    words: &'a [u32; EVENT_WORDS],
    data: &'a [u8],
    json: OnceCell<std::result::Result<Value, String>>,
}

/// Words per input message in a batch's `events` (see `wit/plugin.wit`,
/// record `batch`).
pub(crate) const EVENT_WORDS: usize = 10;

/// Word indices of an input descriptor: each part is an `(offset, length)`
/// pair of words, the timestamp a `(low, high)` pair.
pub(crate) mod word {
    pub(crate) const TOPIC: usize = 0;
    pub(crate) const PAYLOAD: usize = 2;
    pub(crate) const FIELDS: usize = 4;
    pub(crate) const TIMESTAMP: usize = 6;
    pub(crate) const QOS: usize = 8;
}

impl<'a> Message<'a> {
    /// Borrows one input's parts out of the batch buffer, decoding its ten
    /// descriptor words. An out-of-range span (or a QoS that is not a byte)
    /// is a host bug; it fails this message only.
    // Inlined into the batch loop: this is most of a passthrough's work, and
    // the `guest` profile's opt-level "s" kept such helpers calls.
    #[inline(always)]
    pub(crate) fn from_words(
        words: &'a [u32; EVENT_WORDS],
        data: &'a [u8],
    ) -> std::result::Result<Self, String> {
        // One branch for the three spans and the QoS: sums in u64 cannot
        // wrap, so the furthest end is the only bound to check.
        let end = |at: usize| u64::from(words[at]) + u64::from(words[at + 1]);
        let furthest = end(word::TOPIC)
            .max(end(word::PAYLOAD))
            .max(end(word::FIELDS));
        if furthest > data.len() as u64 || words[word::QOS] > u32::from(u8::MAX) {
            return Err(describe_bad_words(words, data));
        }
        Ok(Self {
            words,
            data,
            json: OnceCell::new(),
        })
    }

    /// The part whose `(offset, length)` words start at `at` (in bounds:
    /// `from_words` checked).
    #[inline]
    fn part(&self, at: usize) -> &'a [u8] {
        let start = self.words[at] as usize;
        &self.data[start..start + self.words[at + 1] as usize]
    }

    /// The MQTT topic the message arrived on.
    ///
    /// MQTT topics are UTF-8 and the host checks them; should one ever not
    /// be, this returns its longest valid prefix and
    /// [`topic_bytes`](Self::topic_bytes) has the raw bytes.
    pub fn topic(&self) -> &'a str {
        let topic = self.part(word::TOPIC);
        match std::str::from_utf8(topic) {
            Ok(topic) => topic,
            Err(e) => std::str::from_utf8(&topic[..e.valid_up_to()]).unwrap_or_default(),
        }
    }

    /// The topic as raw bytes.
    pub fn topic_bytes(&self) -> &'a [u8] {
        self.part(word::TOPIC)
    }

    /// The payload bytes, exactly as received.
    pub fn payload(&self) -> &'a [u8] {
        self.part(word::PAYLOAD)
    }

    /// The payload as text; fails if it is not UTF-8.
    pub fn payload_str(&self) -> Result<&'a str> {
        std::str::from_utf8(self.payload())
            .map_err(|e| Error::new(format!("payload is not valid UTF-8: {e}")))
    }

    /// Milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> i64 {
        join_i64(self.words[word::TIMESTAMP], self.words[word::TIMESTAMP + 1])
    }

    /// The MQTT QoS the message was delivered with (0, 1 or 2).
    pub fn qos(&self) -> u8 {
        // At most 255: `from_words` checked.
        self.words[word::QOS] as u8
    }

    /// The value of a field (a topic capture such as `device` for
    /// `devices/{device}/temp`), decoded on demand.
    pub fn field(&self, name: &str) -> Option<&'a str> {
        self.fields()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// Every field, in the order the host sent them.
    pub fn fields(&self) -> Fields<'a> {
        Fields::new(self.raw_fields())
    }

    /// The payload parsed as JSON (parsed on the first call, then cached).
    ///
    /// Fails with `payload is not valid JSON: <reason>`.
    pub fn json(&self) -> Result<&Value> {
        let parsed = self
            .json
            .get_or_init(|| serde_json::from_slice(self.payload()).map_err(|e| e.to_string()));
        parsed
            .as_ref()
            .map_err(|e| Error::new(format!("payload is not valid JSON: {e}")))
    }

    /// The JSON value at a dotted `path`, or `None` if the payload is not
    /// JSON or the path leads nowhere. See [`json::lookup`](crate::json::lookup)
    /// for the path syntax.
    pub fn get(&self, path: &str) -> Option<&Value> {
        lookup(self.json().ok()?, path)
    }

    /// The value at `path`, which must exist.
    ///
    /// Fails with `field "a.b" is missing`, or with `cannot read field
    /// "a.b": payload is not valid JSON: <reason>`.
    pub fn get_value(&self, path: &str) -> Result<&Value> {
        let root = self.json().map_err(|e| e.context(reading(path)))?;
        lookup(root, path).ok_or_else(|| missing(path))
    }

    /// The number at `path`, as `f64` (integers included).
    ///
    /// Fails as [`get_value`](Self::get_value) does, or with `field "a.b" is
    /// not a number`.
    pub fn get_f64(&self, path: &str) -> Result<f64> {
        self.get_typed(path, "a number", Value::as_f64, Found::as_f64)
    }

    /// The integer at `path`; fails with `field "a.b" is not an integer` for
    /// fractions, strings and integers beyond `i64`.
    pub fn get_i64(&self, path: &str) -> Result<i64> {
        self.get_typed(path, "an integer", Value::as_i64, Found::as_i64)
    }

    /// The string at `path`; fails with `field "a.b" is not a string`.
    pub fn get_str(&self, path: &str) -> Result<&str> {
        let escaped = |found: Found<'a>| match found {
            Found::Str(s) => Some(Ok(s)),
            // Unescaping needs somewhere to keep the text: the tree.
            Found::EscapedStr => Some(Err(())),
            _ => None,
        };
        match self.get_typed(path, "a string", |v| v.as_str().map(Ok), escaped)? {
            Ok(s) => Ok(s),
            Err(()) => self.get_typed(path, "a string", Value::as_str, |_| None),
        }
    }

    /// The boolean at `path`; fails with `field "a.b" is not a boolean`.
    pub fn get_bool(&self, path: &str) -> Result<bool> {
        self.get_typed(path, "a boolean", Value::as_bool, Found::as_bool)
    }

    /// Reads `path` with `from_tree` if the payload was parsed already, else
    /// with `from_scan` over the bytes; the two must agree (see
    /// [`json::find`]), errors included.
    fn get_typed<'s, T>(
        &'s self,
        path: &str,
        what: &str,
        from_tree: impl FnOnce(&'s Value) -> Option<T>,
        from_scan: impl FnOnce(Found<'a>) -> Option<T>,
    ) -> Result<T> {
        let value = match self.json.get() {
            Some(_) => from_tree(self.get_value(path)?),
            None => match json::find(self.payload(), path) {
                Ok(Some(found)) => from_scan(found),
                Ok(None) => return Err(missing(path)),
                Err(e) => {
                    // Parsing the tree would fail the same way: remember it.
                    let _ = self.json.set(Err(e.to_string()));
                    return Err(self.json().unwrap_err().context(reading(path)));
                }
            },
        };
        value.ok_or_else(|| Error::new(format!("field \"{path}\" is not {what}")))
    }

    pub(crate) fn raw_fields(&self) -> &'a [u8] {
        self.part(word::FIELDS)
    }
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic())
            .field("payload", &String::from_utf8_lossy(self.payload()))
            .field("fields", &self.fields().collect::<Vec<_>>())
            .field("timestamp_ms", &self.timestamp_ms())
            .field("qos", &self.qos())
            .finish()
    }
}

/// The prefix of a getter's error when the payload is not JSON.
fn reading(path: &str) -> String {
    format!("cannot read field \"{path}\"")
}

fn missing(path: &str) -> Error {
    Error::new(format!("field \"{path}\" is missing"))
}

/// Why [`Message::from_words`] refused `words`: the first bad part.
#[cold]
fn describe_bad_words(words: &[u32; EVENT_WORDS], data: &[u8]) -> String {
    for (at, name) in [
        (word::TOPIC, "topic"),
        (word::PAYLOAD, "payload"),
        (word::FIELDS, "fields"),
    ] {
        if u64::from(words[at]) + u64::from(words[at + 1]) > data.len() as u64 {
            let (offset, len) = (words[at], words[at + 1]);
            return format!(
                "host bug: the {name} span (offset {offset}, length {len}) lies outside the batch data ({} bytes)",
                data.len()
            );
        }
    }
    let qos = words[word::QOS];
    format!("host bug: the message's QoS word is {qos}, more than a byte")
}

/// An s64 from its low and high words.
pub(crate) fn join_i64(low: u32, high: u32) -> i64 {
    // Reinterprets the two's-complement bits: the cast is the decoding.
    ((u64::from(high) << 32) | u64::from(low)) as i64
}

/// An s64 as its low and high words.
pub(crate) fn split_i64(value: i64) -> (u32, u32) {
    // Reinterprets the bits, then keeps each half: the casts are the
    // encoding.
    let bits = value as u64;
    (bits as u32, (bits >> 32) as u32)
}

/// The fields of a message, decoded one entry at a time.
///
/// Entries are `u32le key-len, key, u32le value-len, value`. A truncated or
/// non-UTF-8 entry ends the iteration: the host never sends one, and a
/// plugin is better served by the entries before it than by a panic.
#[derive(Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(crate) fn new(encoded: &'a [u8]) -> Self {
        Self { rest: encoded }
    }

    fn take(&mut self) -> Option<&'a str> {
        let item = self.rest.split_first_chunk::<4>().and_then(|(len, tail)| {
            let len = u32::from_le_bytes(*len) as usize;
            let item = std::str::from_utf8(tail.get(..len)?).ok()?;
            Some((item, &tail[len..]))
        });
        match item {
            Some((item, tail)) => {
                self.rest = tail;
                Some(item)
            }
            None => {
                self.rest = &[];
                None
            }
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let key = self.take()?;
        let value = self.take()?;
        Some((key, value))
    }
}

impl std::iter::FusedIterator for Fields<'_> {}

/// Appends one field entry in the contract's encoding.
pub(crate) fn encode_field(out: &mut Vec<u8>, key: &str, value: &str) {
    for part in [key, value] {
        let len = u32::try_from(part.len()).expect("a field is shorter than 4 GiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(part.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    type Span = (u32, u32);

    fn span(offset: u32, len: u32) -> Span {
        (offset, len)
    }

    /// A descriptor that lives as long as the test (a `Message` borrows it).
    fn words(topic: Span, payload: Span, fields: Span) -> &'static mut [u32; EVENT_WORDS] {
        let words = Box::leak(Box::new([0; EVENT_WORDS]));
        for (at, (offset, len)) in [
            (word::TOPIC, topic),
            (word::PAYLOAD, payload),
            (word::FIELDS, fields),
        ] {
            words[at] = offset;
            words[at + 1] = len;
        }
        words
    }

    fn message(data: &[u8], payload: Span, fields: Span) -> Message<'_> {
        Message::from_words(words(span(0, 0), payload, fields), data).unwrap()
    }

    #[test]
    fn fields_decode_in_order_and_stop_at_a_truncated_entry() {
        let mut data = Vec::new();
        encode_field(&mut data, "device", "a");
        encode_field(&mut data, "site", "");
        data.extend_from_slice(&[9, 0, 0, 0, b'x']);
        let msg = message(&data, span(0, 0), span(0, data.len() as u32));
        assert_eq!(
            msg.fields().collect::<Vec<_>>(),
            [("device", "a"), ("site", "")]
        );
        assert_eq!(msg.field("site"), Some(""));
        assert_eq!(msg.field("x"), None);
    }

    #[test]
    fn json_getters_name_the_path_in_every_error() {
        let data = br#"{"a":{"b":"x","n":[1,2.5]}}not json"#;
        let msg = message(data, span(0, 27), span(0, 0));
        assert_eq!(msg.get_f64("a.n.1").unwrap(), 2.5);
        assert_eq!(msg.get_i64("a.n.0").unwrap(), 1);
        assert_eq!(msg.get_str("a.b").unwrap(), "x");
        assert_eq!(msg.get("a.n"), Some(&json!([1, 2.5])));
        assert_eq!(
            msg.get_f64("a.c").unwrap_err().message(),
            r#"field "a.c" is missing"#
        );
        assert_eq!(
            msg.get_f64("a.b").unwrap_err().message(),
            r#"field "a.b" is not a number"#
        );
        assert_eq!(
            msg.get_i64("a.n.1").unwrap_err().message(),
            r#"field "a.n.1" is not an integer"#
        );
        assert_eq!(
            msg.get_bool("a").unwrap_err().message(),
            r#"field "a" is not a boolean"#
        );

        let bad = message(data, span(27, 8), span(0, 0));
        assert!(
            bad.json()
                .unwrap_err()
                .message()
                .starts_with("payload is not valid JSON: ")
        );
        assert!(
            bad.get_f64("a.b")
                .unwrap_err()
                .message()
                .starts_with(r#"cannot read field "a.b": payload is not valid JSON: "#)
        );
        assert_eq!(bad.get("a"), None);
    }

    #[test]
    fn a_span_outside_the_batch_is_reported_not_sliced() {
        let err =
            Message::from_words(words(span(4, 10), span(0, 0), span(0, 0)), b"abc").unwrap_err();
        assert!(err.contains("topic span (offset 4, length 10)"), "{err}");
        // An offset near u32::MAX must not wrap around to a valid range.
        let err = Message::from_words(words(span(0, 0), span(u32::MAX, 2), span(0, 0)), b"abc")
            .unwrap_err();
        assert!(err.contains("payload span"), "{err}");
        let err =
            Message::from_words(words(span(0, 0), span(0, 0), span(3, 1)), b"abc").unwrap_err();
        assert!(err.contains("fields span (offset 3, length 1)"), "{err}");
    }

    #[test]
    fn the_descriptor_words_decode_timestamp_qos_and_parts() {
        let data = b"topicbody";
        let w = words(span(0, 5), span(5, 4), span(9, 0));
        let (low, high) = split_i64(-1_700_000_000_123);
        w[word::TIMESTAMP] = low;
        w[word::TIMESTAMP + 1] = high;
        w[word::QOS] = 2;
        let msg = Message::from_words(w, data).unwrap();
        assert_eq!(msg.topic(), "topic");
        assert_eq!(msg.payload(), b"body");
        assert_eq!(msg.fields().count(), 0);
        assert_eq!(msg.timestamp_ms(), -1_700_000_000_123);
        assert_eq!(msg.qos(), 2);
        for ts in [0, 1, -1, i64::MIN, i64::MAX, 1_700_000_000_000] {
            let (low, high) = split_i64(ts);
            assert_eq!(join_i64(low, high), ts);
        }
        assert_eq!(split_i64(1 << 32 | 5), (5, 1));

        w[word::QOS] = 256;
        let err = Message::from_words(w, data).unwrap_err();
        assert!(err.contains("QoS word is 256"), "{err}");
    }
}
