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

use super::bindings::weir::plugin::types::{Batch, Event, Outcome, Span};
use super::instance::{BatchOutcome, Failure, FailureKind, Output};
use crate::message::{Fields, Message};

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
        if total > MAX_BATCH_BYTES {
            return Err(BatchTooLarge);
        }
        data.reserve(total);
        events.reserve(messages.len());
        for m in messages {
            events.push(Event {
                topic: push(data, m.topic.as_bytes()),
                payload: push(data, &m.payload),
                fields: push(data, m.fields.encoded()),
                timestamp_ms: m.timestamp_ms,
                qos: m.qos,
            });
        }
        Ok(&self.batch)
    }
}

fn push(data: &mut Vec<u8>, bytes: &[u8]) -> Span {
    // The total was checked against u32::MAX before encoding.
    let offset = data.len() as u32;
    data.extend_from_slice(bytes);
    Span {
        offset,
        len: bytes.len() as u32,
    }
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
    // Check every index before producing anything, so that a guest that
    // breaks the contract fails its whole batch rather than half of it.
    for e in &emitted {
        check_index(e.input, inputs.len())?;
    }
    for f in &failures {
        check_index(f.input, inputs.len())?;
    }
    let data = Bytes::from(data);
    result.outputs.reserve(emitted.len());
    for e in emitted {
        let input = e.input as usize;
        match build_output(&inputs[input], &data, &e) {
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

fn build_output(
    input: &Message,
    data: &Bytes,
    e: &super::bindings::weir::plugin::types::Emitted,
) -> Result<Message, String> {
    let mut message = input.clone();
    if let Some(span) = e.topic {
        let bytes = slice(data, span, "topic")?;
        let topic = std::str::from_utf8(&bytes)
            .map_err(|_| "the plugin emitted a topic that is not UTF-8".to_owned())?;
        message.topic = Arc::from(topic);
    }
    if let Some(span) = e.payload {
        message.payload = slice(data, span, "payload")?;
    }
    if let Some(span) = e.fields {
        message.fields = Fields::from_encoded(slice(data, span, "fields")?)
            .map_err(|err| format!("the plugin emitted a {err}"))?;
    }
    if let Some(ts) = e.timestamp_ms {
        message.timestamp_ms = ts;
    }
    Ok(message)
}

fn slice(data: &Bytes, span: Span, what: &str) -> Result<Bytes, String> {
    let start = span.offset as usize;
    let end = start + span.len as usize;
    if end > data.len() {
        return Err(format!(
            "the plugin emitted a {what} span {start}..{end} outside its {}-byte buffer",
            data.len()
        ));
    }
    Ok(data.slice(start..end))
}
