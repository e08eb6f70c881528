//! The read-only view of one input message that a plugin receives.
//!
//! A [`Message`] borrows its topic, payload and fields straight from the
//! batch buffer the host sent; building one copies and decodes nothing, so a
//! plugin pays only for what it reads. The payload is parsed as JSON at most
//! once per message, on the first JSON accessor, and the parsed value is
//! cached for the others. This module must never allocate on the path that
//! does not touch JSON or fields.

use std::cell::OnceCell;

use serde_json::Value;

use crate::__bindings::weir::plugin::types::{Event, Span};
use crate::json::lookup;
use crate::{Error, Result};

/// One input message: topic, payload, fields (topic captures such as
/// `{device}`), timestamp and QoS.
///
/// All accessors are lazy. The JSON accessors ([`json`](Self::json),
/// [`get_f64`](Self::get_f64), …) parse the payload on first use and reuse
/// the result; their errors name the path they were asked for.
pub struct Message<'a> {
    topic: &'a [u8],
    payload: &'a [u8],
    fields: &'a [u8],
    timestamp_ms: i64,
    qos: u8,
    json: OnceCell<std::result::Result<Value, String>>,
}

impl<'a> Message<'a> {
    /// Borrows an event's parts out of the batch buffer. An out-of-range
    /// span is a host bug; it fails this message only.
    pub(crate) fn from_event(event: &Event, data: &'a [u8]) -> std::result::Result<Self, String> {
        Ok(Self {
            topic: slice(data, event.topic, "topic")?,
            payload: slice(data, event.payload, "payload")?,
            fields: slice(data, event.fields, "fields")?,
            timestamp_ms: event.timestamp_ms,
            qos: event.qos,
            json: OnceCell::new(),
        })
    }

    /// The MQTT topic the message arrived on.
    ///
    /// MQTT topics are UTF-8 and the host checks them; should one ever not
    /// be, this returns its longest valid prefix and
    /// [`topic_bytes`](Self::topic_bytes) has the raw bytes.
    pub fn topic(&self) -> &'a str {
        match std::str::from_utf8(self.topic) {
            Ok(topic) => topic,
            Err(e) => std::str::from_utf8(&self.topic[..e.valid_up_to()]).unwrap_or_default(),
        }
    }

    /// The topic as raw bytes.
    pub fn topic_bytes(&self) -> &'a [u8] {
        self.topic
    }

    /// The payload bytes, exactly as received.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The payload as text; fails if it is not UTF-8.
    pub fn payload_str(&self) -> Result<&'a str> {
        std::str::from_utf8(self.payload)
            .map_err(|e| Error::new(format!("payload is not valid UTF-8: {e}")))
    }

    /// Milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    /// The MQTT QoS the message was delivered with (0, 1 or 2).
    pub fn qos(&self) -> u8 {
        self.qos
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
        Fields::new(self.fields)
    }

    /// The payload parsed as JSON (parsed on the first call, then cached).
    ///
    /// Fails with `payload is not valid JSON: <reason>`.
    pub fn json(&self) -> Result<&Value> {
        let parsed = self
            .json
            .get_or_init(|| serde_json::from_slice(self.payload).map_err(|e| e.to_string()));
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
        let root = self
            .json()
            .map_err(|e| e.context(format_args!("cannot read field \"{path}\"")))?;
        lookup(root, path).ok_or_else(|| Error::new(format!("field \"{path}\" is missing")))
    }

    /// The number at `path`, as `f64` (integers included).
    ///
    /// Fails as [`get_value`](Self::get_value) does, or with `field "a.b" is
    /// not a number`.
    pub fn get_f64(&self, path: &str) -> Result<f64> {
        self.get_typed(path, "a number", Value::as_f64)
    }

    /// The integer at `path`; fails with `field "a.b" is not an integer` for
    /// fractions, strings and integers beyond `i64`.
    pub fn get_i64(&self, path: &str) -> Result<i64> {
        self.get_typed(path, "an integer", Value::as_i64)
    }

    /// The string at `path`; fails with `field "a.b" is not a string`.
    pub fn get_str(&self, path: &str) -> Result<&str> {
        self.get_typed(path, "a string", Value::as_str)
    }

    /// The boolean at `path`; fails with `field "a.b" is not a boolean`.
    pub fn get_bool(&self, path: &str) -> Result<bool> {
        self.get_typed(path, "a boolean", Value::as_bool)
    }

    fn get_typed<'s, T>(
        &'s self,
        path: &str,
        what: &str,
        read: impl FnOnce(&'s Value) -> Option<T>,
    ) -> Result<T> {
        read(self.get_value(path)?)
            .ok_or_else(|| Error::new(format!("field \"{path}\" is not {what}")))
    }

    pub(crate) fn raw_fields(&self) -> &'a [u8] {
        self.fields
    }
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic())
            .field("payload", &String::from_utf8_lossy(self.payload))
            .field("fields", &self.fields().collect::<Vec<_>>())
            .field("timestamp_ms", &self.timestamp_ms)
            .field("qos", &self.qos)
            .finish()
    }
}

fn slice<'a>(data: &'a [u8], span: Span, part: &str) -> std::result::Result<&'a [u8], String> {
    let start = span.offset as usize;
    start
        .checked_add(span.len as usize)
        .and_then(|end| data.get(start..end))
        .ok_or_else(|| {
            format!(
                "host bug: the {part} span (offset {}, length {}) lies outside the batch data ({} bytes)",
                span.offset,
                span.len,
                data.len()
            )
        })
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

    fn span(offset: u32, len: u32) -> Span {
        Span { offset, len }
    }

    fn message(data: &[u8], payload: Span, fields: Span) -> Message<'_> {
        let event = Event {
            topic: span(0, 0),
            payload,
            fields,
            timestamp_ms: 0,
            qos: 0,
        };
        Message::from_event(&event, data).unwrap()
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
        let event = Event {
            topic: span(4, 10),
            payload: span(0, 0),
            fields: span(0, 0),
            timestamp_ms: 0,
            qos: 0,
        };
        let err = Message::from_event(&event, b"abc").unwrap_err();
        assert!(err.contains("topic span (offset 4, length 10)"), "{err}");
    }
}
