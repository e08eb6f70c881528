//! Crossing the boundary: host messages to a flat `batch`, and an `outcome`
//! back to host messages.
//!
//! Encoding appends each message's topic, payload and field set to one
//! buffer and writes one fixed-size descriptor per message; the buffers are
//! reused from batch to batch. Decoding trusts nothing the guest returned:
//! every index and span is checked, and an output that points outside its
//! buffer fails its input instead of panicking the host.

use std::sync::Arc;

use bytes::Bytes;

use super::bindings::weir::plugin::types::{Batch, Outcome};
use super::instance::{BatchOutcome, Failure, FailureKind, Output};
use crate::message::{Fields, Message};

/// Words per input message in `batch.events` (see `wit/plugin.wit`).
const EVENT_WORDS: usize = 10;
/// Words per output message in `outcome.emitted`.
const EMITTED_WORDS: usize = 10;
const NEW_TOPIC: u32 = 1 << 0;
const NEW_PAYLOAD: u32 = 1 << 1;
const NEW_FIELDS: u32 = 1 << 2;
const NEW_TIMESTAMP: u32 = 1 << 3;
const KNOWN_FLAGS: u32 = NEW_TOPIC | NEW_PAYLOAD | NEW_FIELDS | NEW_TIMESTAMP;

/// A batch is limited by the 32-bit offsets of the contract.
pub(super) const MAX_BATCH_BYTES: usize = u32::MAX as usize;

/// The reusable buffers of one instance's batches.
pub(super) struct Encoder {
    batch: Batch,
}

/// The batch's messages do not fit the contract's 32-bit offsets.
#[derive(Debug)]
pub(super) struct BatchTooLarge;

impl Encoder {
    pub(super) fn new() -> Self {
        Encoder {
            batch: Batch {
                events: Vec::new(),
                data: Vec::new(),
            },
        }
    }

    pub(super) fn encode(&mut self, messages: &[Message]) -> Result<&Batch, BatchTooLarge> {
        let Batch { events, data } = &mut self.batch;
        events.clear();
        data.clear();
        let total: usize = messages
            .iter()
            .map(|m| m.topic.len() + m.payload.len() + m.fields.encoded().len())
            .sum();
        if total > MAX_BATCH_BYTES || messages.len() > (u32::MAX as usize) / EVENT_WORDS {
            return Err(BatchTooLarge);
        }
        data.reserve(total);
        events.reserve(messages.len() * EVENT_WORDS);
        for m in messages {
            let [topic_at, topic_len] = push(data, m.topic.as_bytes());
            let [payload_at, payload_len] = push(data, &m.payload);
            let [fields_at, fields_len] = push(data, m.fields.encoded());
            let ts = m.timestamp_ms as u64;
            events.extend_from_slice(&[
                topic_at,
                topic_len,
                payload_at,
                payload_len,
                fields_at,
                fields_len,
                ts as u32,
                (ts >> 32) as u32,
                u32::from(m.qos),
                0,
            ]);
        }
        Ok(&self.batch)
    }
}

/// Appends bytes; returns their offset and length. The total was checked
/// against `u32::MAX` before encoding.
fn push(data: &mut Vec<u8>, bytes: &[u8]) -> [u32; 2] {
    let offset = data.len() as u32;
    data.extend_from_slice(bytes);
    [offset, bytes.len() as u32]
}

/// Turns a guest's outcome into host outputs and failures, with input
/// indices shifted by `offset` (the position of `inputs` in the caller's
/// batch).
pub(super) fn decode(
    outcome: Outcome,
    inputs: &[Message],
    offset: usize,
    result: &mut BatchOutcome,
) -> Result<(), String> {
    let Outcome {
        emitted,
        data,
        failures,
    } = outcome;
    // Check the shape and every index before producing anything, so that a
    // guest that breaks the contract fails its whole batch rather than half
    // of it.
    if emitted.len() % EMITTED_WORDS != 0 {
        return Err(format!(
            "the plugin returned {} output words, not a multiple of {EMITTED_WORDS}",
            emitted.len()
        ));
    }
    for words in emitted.chunks_exact(EMITTED_WORDS) {
        check_index(words[0], inputs.len())?;
    }
    for f in &failures {
        check_index(f.input, inputs.len())?;
    }
    let data = Bytes::from(data);
    result.outputs.reserve(emitted.len() / EMITTED_WORDS);
    for words in emitted.chunks_exact(EMITTED_WORDS) {
        let input = words[0] as usize;
        match build_output(&inputs[input], &data, words) {
            Ok(message) => result.outputs.push(Output {
                input: offset + input,
                message,
            }),
            Err(reason) => result.failures.push(Failure {
                input: offset + input,
                kind: FailureKind::InvalidOutput,
                reason,
            }),
        }
    }
    for f in failures {
        result.failures.push(Failure {
            input: offset + f.input as usize,
            kind: FailureKind::Rejected,
            reason: f.message,
        });
    }
    Ok(())
}

fn check_index(index: u32, len: usize) -> Result<(), String> {
    if (index as usize) < len {
        Ok(())
    } else {
        Err(format!(
            "the plugin referred to input {index} of a batch of {len}"
        ))
    }
}

fn build_output(input: &Message, data: &Bytes, words: &[u32]) -> Result<Message, String> {
    let flags = words[1];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(format!("the plugin set unknown output flags {flags:#x}"));
    }
    let mut message = input.clone();
    if flags & NEW_TOPIC != 0 {
        let bytes = slice(data, words[2], words[3], "topic")?;
        let topic = std::str::from_utf8(&bytes)
            .map_err(|_| "the plugin emitted a topic that is not UTF-8".to_owned())?;
        message.topic = Arc::from(topic);
    }
    if flags & NEW_PAYLOAD != 0 {
        message.payload = slice(data, words[4], words[5], "payload")?;
    }
    if flags & NEW_FIELDS != 0 {
        message.fields = Fields::from_encoded(slice(data, words[6], words[7], "fields")?)
            .map_err(|err| format!("the plugin emitted a {err}"))?;
    }
    if flags & NEW_TIMESTAMP != 0 {
        message.timestamp_ms = (u64::from(words[8]) | (u64::from(words[9]) << 32)) as i64;
    }
    Ok(message)
}

fn slice(data: &Bytes, offset: u32, len: u32, what: &str) -> Result<Bytes, String> {
    let start = offset as usize;
    let end = start + len as usize;
    if end > data.len() {
        return Err(format!(
            "the plugin emitted a {what} span {start}..{end} outside its {}-byte buffer",
            data.len()
        ));
    }
    Ok(data.slice(start..end))
}
