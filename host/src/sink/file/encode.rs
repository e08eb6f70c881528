//! Messages → JSON Lines.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;

use crate::message::Message;

/// One encoded batch: the lines, and where each ends (rotation happens only
/// between lines).
#[derive(Clone, Debug, Default)]
pub struct Lines {
    /// Every line, `\n`-terminated, back to back.
    pub bytes: Bytes,
    /// End offset (exclusive) of each line in `bytes`.
    pub ends: Vec<usize>,
}

/// One line (see the module doc of [`crate::sink::file`]).
#[derive(Serialize)]
struct Record<'a> {
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_text: Option<std::borrow::Cow<'a, str>>,
    ts: i64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    fields: BTreeMap<&'a str, &'a str>,
}

/// Appends `m` to `out` as one JSON object, without the newline.
pub(crate) fn write_record(m: &Message, out: &mut Vec<u8>) {
    let json = if m.payload.is_empty() {
        None
    } else {
        serde_json::from_slice::<serde_json::Value>(&m.payload).ok()
    };
    let payload_text = match json {
        Some(_) => None,
        None => Some(String::from_utf8_lossy(&m.payload)),
    };
    let record = Record {
        topic: &m.topic,
        payload: json,
        payload_text,
        ts: m.timestamp_ms,
        fields: m.fields.iter().collect(),
    };
    serde_json::to_writer(out, &record).expect("a record of strings and numbers serializes");
}

/// Encodes a batch, one line per message.
pub(crate) fn encode(batch: &[Message]) -> Lines {
    let mut out = Vec::with_capacity(batch.iter().map(|m| m.payload.len() + 64).sum());
    let mut ends = Vec::with_capacity(batch.len());
    for m in batch {
        write_record(m, &mut out);
        out.push(b'\n');
        ends.push(out.len());
    }
    Lines {
        bytes: out.into(),
        ends,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Fields;

    fn line(m: &Message) -> String {
        let mut out = Vec::new();
        write_record(m, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_payloads_are_embedded_compactly_with_fields() {
        let mut m = Message::new(
            "devices/d1/temp_hum",
            "{\n  \"temp\": 31\n}",
            1_700_000_000_123,
        );
        m.fields = Fields::from_pairs([("device", "d1")]);
        assert_eq!(
            line(&m),
            r#"{"topic":"devices/d1/temp_hum","payload":{"temp":31},"ts":1700000000123,"fields":{"device":"d1"}}"#
        );
    }

    #[test]
    fn other_payloads_are_text_and_empty_fields_are_left_out() {
        assert_eq!(
            line(&Message::new("raw", &b"caf\xc3\xa9 \xff"[..], 5)),
            "{\"topic\":\"raw\",\"payload_text\":\"café \u{fffd}\",\"ts\":5}"
        );
        assert_eq!(
            line(&Message::new("e", "", 0)),
            r#"{"topic":"e","payload_text":"","ts":0}"#
        );
    }

    #[test]
    fn a_batch_is_one_line_per_message_with_their_ends() {
        let lines = encode(&[Message::new("a", "1", 0), Message::new("b", "x y", 0)]);
        let text = std::str::from_utf8(&lines.bytes).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert_eq!(lines.ends, [text.find('\n').unwrap() + 1, text.len()]);
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
    }
}
