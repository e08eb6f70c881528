//! Crossing the boundary: host messages to a flat `batch`, and an `outcome`
//! back to host messages.
//!
//! Lowering writes each message's topic, payload and field set into one
//! buffer in the guest's memory and one fixed-size descriptor per message
//! into another, as the call lowers its argument. Decoding trusts nothing
//! the guest returned: every index and span is checked, and an output that
//! points outside its buffer fails its input instead of panicking the host.

use std::mem::MaybeUninit;
use std::sync::Arc;

use bytes::Bytes;
use wasmtime::ValRaw;
use wasmtime::component::__internal::{
    CanonicalAbiInfo, InstanceType, InterfaceType, LowerContext,
};
use wasmtime::component::{ComponentType, Lower};

use super::bindings::weir::plugin::types::{Batch, Failure as GuestFailure, Outcome};
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

/// The batch's messages do not fit the contract's 32-bit offsets.
#[derive(Debug)]
pub(super) struct BatchTooLarge;

/// A batch of host messages as the contract's `batch` record, written
/// straight into the guest's memory when the call lowers its argument.
///
/// Building the record in host buffers for wasmtime to copy into the guest
/// wrote every byte twice (measured: 12 – 15 % of a no-op plugin's round
/// trip at batch 64 – 1024). This writes each byte once, after asking the
/// guest's allocator for the two lists exactly as wasmtime's own lowering
/// of `list<u32>` and `list<u8>` does, so the guest owns and frees them
/// the same way.
///
/// Implementing [`Lower`] uses `wasmtime::component::__internal`, the
/// items `#[derive(Lower)]` expands to, outside wasmtime's stability
/// promise; the workspace pins wasmtime to one version, and the tests run
/// every plugin through this lowering.
pub(super) struct Lowered<'a> {
    messages: &'a [Message],
    /// Bytes of topics, payloads and field sets together.
    data_len: u32,
}

impl<'a> Lowered<'a> {
    /// Sizes the batch; refuses one whose offsets would not fit the
    /// contract's 32 bits.
    pub(super) fn new(messages: &'a [Message]) -> Result<Self, BatchTooLarge> {
        let events = messages.len() as u64 * (EVENT_WORDS as u64 * 4);
        let data: u64 = messages
            .iter()
            .map(|m| (m.topic.len() + m.payload.len() + m.fields.encoded().len()) as u64)
            .sum();
        match (u32::try_from(events), u32::try_from(data)) {
            (Ok(_), Ok(data_len)) => Ok(Lowered { messages, data_len }),
            _ => Err(BatchTooLarge),
        }
    }

    /// Allocates both lists in the guest and fills them; returns the flat
    /// form of the record: events pointer and length (in words), data
    /// pointer and length.
    fn lower<T>(&self, cx: &mut LowerContext<'_, T>) -> wasmtime::Result<[usize; 4]> {
        let words = self.messages.len() * EVENT_WORDS;
        let data_len = self.data_len as usize;
        let events_at = cx.realloc(0, 0, 4, words * 4)?;
        let data_at = cx.realloc(0, 0, 1, data_len)?;
        // `realloc` checked that each range lies in memory; a guest
        // allocator that hands out overlapping ranges fails the call.
        let (events, data) = disjoint(
            cx.as_slice_mut(),
            (events_at, words * 4),
            (data_at, data_len),
        )
        .ok_or_else(|| {
            wasmtime::format_err!("the plugin's allocator returned overlapping lists")
        })?;
        let mut end = 0;
        let mut put = |bytes: &[u8]| {
            let at = end;
            end += bytes.len();
            data[at..end].copy_from_slice(bytes);
            [at as u32, bytes.len() as u32]
        };
        for (m, event) in self
            .messages
            .iter()
            .zip(events.as_chunks_mut::<{ EVENT_WORDS * 4 }>().0)
        {
            let [topic_at, topic_len] = put(m.topic.as_bytes());
            let [payload_at, payload_len] = put(&m.payload);
            let [fields_at, fields_len] = put(m.fields.encoded());
            let ts = m.timestamp_ms as u64;
            let values = [
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
            ];
            for (word, value) in event.as_chunks_mut::<4>().0.iter_mut().zip(values) {
                *word = value.to_le_bytes();
            }
        }
        Ok([events_at, words, data_at, data_len])
    }
}

/// The two ranges of `memory`, if both lie in it and do not overlap (an
/// empty range overlaps nothing).
fn disjoint(
    memory: &mut [u8],
    (a, a_len): (usize, usize),
    (b, b_len): (usize, usize),
) -> Option<(&mut [u8], &mut [u8])> {
    fn range(memory: &mut [u8], at: usize, len: usize) -> Option<&mut [u8]> {
        memory.get_mut(at..)?.get_mut(..len)
    }
    if a_len == 0 {
        Some((&mut [], range(memory, b, b_len)?))
    } else if b_len == 0 {
        Some((range(memory, a, a_len)?, &mut []))
    } else if a <= b {
        let (low, high) = memory.split_at_mut_checked(b)?;
        Some((range(low, a, a_len)?, range(high, 0, b_len)?))
    } else {
        let (low, high) = memory.split_at_mut_checked(a)?;
        let b_range = range(low, b, b_len)?;
        Some((range(high, 0, a_len)?, b_range))
    }
}

// SAFETY: `Lower` is four `ValRaw`s, the flat form of a record of two
// lists, and `ABI` and `typecheck` are those of the bindings' own `Batch`,
// the same record.
unsafe impl ComponentType for Lowered<'_> {
    type Lower = [ValRaw; 4];
    const ABI: CanonicalAbiInfo = <Batch as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <Batch as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: both methods write what wasmtime's lowering of `Batch` writes:
// the flat form as 64-bit values (wasmtime's convention for 32-bit
// memories), or two pointer/length pairs of little-endian `u32`s.
unsafe impl Lower for Lowered<'_> {
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        dst: &mut MaybeUninit<[ValRaw; 4]>,
    ) -> wasmtime::Result<()> {
        let flat = self.lower(cx)?;
        dst.write(flat.map(|v| ValRaw::i64(v as i64)));
        Ok(())
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        let flat = self.lower(cx)?;
        for (i, value) in flat.into_iter().enumerate() {
            *cx.get::<4>(offset + 4 * i) = u32::try_from(value)?.to_le_bytes();
        }
        Ok(())
    }
}

/// The inputs of a batch, as the caller handed them over.
pub(super) enum Inputs<'a> {
    /// Each output clones the parts it keeps from its input.
    Borrowed(&'a [Message]),
    /// Each input moves into its last output; inputs without one are
    /// dropped. Saves the reference-count traffic of cloning (topic,
    /// payload and fields: three atomic increments per passthrough, and
    /// three decrements when the caller drops its copy).
    Owned(Vec<Message>),
}

impl Inputs<'_> {
    pub(super) fn as_slice(&self) -> &[Message] {
        match self {
            Inputs::Borrowed(messages) => messages,
            Inputs::Owned(messages) => messages,
        }
    }
}

/// Turns a guest's outcome into host outputs and failures, with input
/// indices shifted by `offset` (the position of `inputs` in the caller's
/// batch).
pub(super) fn decode(
    outcome: Outcome,
    inputs: Inputs<'_>,
    offset: usize,
    result: &mut BatchOutcome,
) -> Result<(), String> {
    let Outcome {
        emitted,
        data,
        failures,
    } = outcome;
    let (emitted, rest) = emitted.as_chunks::<EMITTED_WORDS>();
    let len = inputs.as_slice().len();
    // Check the shape and every index before producing anything, so that a
    // guest that breaks the contract fails its whole batch rather than half
    // of it. The same pass learns what the build pass can skip.
    if !rest.is_empty() {
        return Err(format!(
            "the plugin returned {} output words, not a multiple of {EMITTED_WORDS}",
            emitted.len() * EMITTED_WORDS + rest.len()
        ));
    }
    // In input order (as the SDK emits), and at most one output per input?
    let mut in_input_order = true;
    let mut one_each = true;
    let mut any_flags = 0;
    let mut next = 0;
    for words in emitted {
        check_index(words[0], len)?;
        in_input_order &= words[0] + 1 >= next;
        one_each &= words[0] >= next;
        next = words[0] + 1;
        any_flags |= words[1];
    }
    for f in &failures {
        check_index(f.input, len)?;
    }
    // Only a new part needs the bytes on the host's side of the boundary.
    let data = if any_flags & (NEW_TOPIC | NEW_PAYLOAD | NEW_FIELDS) != 0 {
        Bytes::from(data)
    } else {
        Bytes::new()
    };
    result.outputs.reserve(emitted.len());
    let input_at = |words: &[u32; EMITTED_WORDS]| words[0] as usize;
    // A filter's outcome: passthroughs only, built straight into place.
    if any_flags == 0 {
        match inputs {
            // Every input kept, in order: the tightest loop of all (measured:
            // a quarter of the instructions of the one below, per message).
            Inputs::Owned(messages) if one_each && emitted.len() == len => {
                let outputs = messages.into_iter().enumerate();
                result
                    .outputs
                    .extend(outputs.map(|(input, message)| Output {
                        input: offset + input,
                        message,
                    }));
            }
            Inputs::Owned(messages) if one_each => {
                let mut messages = messages.into_iter();
                // Index of the next message `messages` yields.
                let mut next = 0;
                for input in emitted.iter().map(input_at) {
                    // Drops the inputs in between: the plugin dropped them.
                    let message = messages.nth(input - next).expect("index checked above");
                    next = input + 1;
                    result.outputs.push(Output {
                        input: offset + input,
                        message,
                    });
                }
            }
            inputs => {
                let messages = inputs.as_slice();
                result
                    .outputs
                    .extend(emitted.iter().map(input_at).map(|input| Output {
                        input: offset + input,
                        message: messages[input].clone(),
                    }));
            }
        }
        push_failures(failures, offset, result);
        return Ok(());
    }
    let mut push = |input: usize, built: Result<Message, String>| match built {
        Ok(message) => result.outputs.push(Output {
            input: offset + input,
            message,
        }),
        Err(reason) => result.failures.push(Failure {
            input: offset + input,
            kind: FailureKind::InvalidOutput,
            reason,
        }),
    };
    match inputs {
        // The SDK emits in input order; the moves below rely on it.
        Inputs::Owned(messages) if in_input_order => {
            let mut rest = messages.into_iter();
            // The input the current outputs come from, once taken from `rest`.
            let mut current: Option<(usize, Message)> = None;
            let mut taken = 0;
            for (at, words) in emitted.iter().enumerate() {
                let input = words[0] as usize;
                if current.as_ref().is_none_or(|(i, _)| *i != input) {
                    // Inputs skipped over had no output (or no more): dropped.
                    let message = rest.nth(input - taken).expect("index checked above");
                    taken = input + 1;
                    current = Some((input, message));
                }
                let last = emitted
                    .get(at + 1)
                    .is_none_or(|next| next[0] as usize != input);
                let built = if last {
                    let (_, message) = current.take().expect("set above");
                    apply(message, &data, words)
                } else {
                    let (_, message) = current.as_ref().expect("set above");
                    derive(message, &data, words)
                };
                push(input, built);
            }
        }
        inputs => {
            let messages = inputs.as_slice();
            for words in emitted {
                let input = words[0] as usize;
                push(input, derive(&messages[input], &data, words));
            }
        }
    }
    push_failures(failures, offset, result);
    Ok(())
}

fn push_failures(failures: Vec<GuestFailure>, offset: usize, result: &mut BatchOutcome) {
    result
        .failures
        .extend(failures.into_iter().map(|f| Failure {
            input: offset + f.input as usize,
            kind: FailureKind::Rejected,
            reason: f.message,
        }));
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

/// The new parts an output carries, checked.
#[derive(Default)]
struct Changes {
    topic: Option<Arc<str>>,
    payload: Option<Bytes>,
    fields: Option<Fields>,
    timestamp_ms: Option<i64>,
}

impl Changes {
    fn read(data: &Bytes, words: &[u32; EMITTED_WORDS]) -> Result<Self, String> {
        let flags = words[1];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(format!("the plugin set unknown output flags {flags:#x}"));
        }
        let mut changes = Changes::default();
        if flags & NEW_TOPIC != 0 {
            let bytes = slice(data, words[2], words[3], "topic")?;
            let topic = std::str::from_utf8(&bytes)
                .map_err(|_| "the plugin emitted a topic that is not UTF-8".to_owned())?;
            changes.topic = Some(Arc::from(topic));
        }
        if flags & NEW_PAYLOAD != 0 {
            changes.payload = Some(slice(data, words[4], words[5], "payload")?);
        }
        if flags & NEW_FIELDS != 0 {
            let bytes = slice(data, words[6], words[7], "fields")?;
            changes.fields = Some(
                Fields::from_encoded(bytes).map_err(|err| format!("the plugin emitted a {err}"))?,
            );
        }
        if flags & NEW_TIMESTAMP != 0 {
            changes.timestamp_ms = Some((u64::from(words[8]) | (u64::from(words[9]) << 32)) as i64);
        }
        Ok(changes)
    }
}

/// The output `words` describe, built from a borrowed input: only the parts
/// it keeps are cloned.
fn derive(input: &Message, data: &Bytes, words: &[u32; EMITTED_WORDS]) -> Result<Message, String> {
    if words[1] == 0 {
        return Ok(input.clone());
    }
    let changes = Changes::read(data, words)?;
    Ok(Message {
        topic: changes.topic.unwrap_or_else(|| input.topic.clone()),
        payload: changes.payload.unwrap_or_else(|| input.payload.clone()),
        timestamp_ms: changes.timestamp_ms.unwrap_or(input.timestamp_ms),
        qos: input.qos,
        fields: changes.fields.unwrap_or_else(|| input.fields.clone()),
    })
}

/// The output `words` describe, made of the input itself.
fn apply(
    mut input: Message,
    data: &Bytes,
    words: &[u32; EMITTED_WORDS],
) -> Result<Message, String> {
    if words[1] == 0 {
        return Ok(input);
    }
    let changes = Changes::read(data, words)?;
    if let Some(topic) = changes.topic {
        input.topic = topic;
    }
    if let Some(payload) = changes.payload {
        input.payload = payload;
    }
    if let Some(fields) = changes.fields {
        input.fields = fields;
    }
    if let Some(timestamp_ms) = changes.timestamp_ms {
        input.timestamp_ms = timestamp_ms;
    }
    Ok(input)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Vec<Message> {
        (0..4)
            .map(|i| {
                let mut m = Message::new(format!("t/{i}"), format!("p{i}"), i);
                m.fields = Fields::from_pairs([("n", i.to_string().as_str())]);
                m.qos = 1;
                m
            })
            .collect()
    }

    /// An output of `input` with `flags`; spans and timestamp from `rest`.
    fn output(input: u32, flags: u32, rest: [u32; 8]) -> Vec<u32> {
        let mut words = vec![input, flags];
        words.extend(rest);
        words
    }

    fn outcome(outputs: &[Vec<u32>], data: &[u8], failures: &[(u32, &str)]) -> Outcome {
        Outcome {
            emitted: outputs.concat(),
            data: data.to_vec(),
            failures: failures
                .iter()
                .map(|&(input, message)| GuestFailure {
                    input,
                    message: message.to_owned(),
                })
                .collect(),
        }
    }

    /// Decodes `outcome` both ways and checks they agree.
    fn decode_both(outcome: impl Fn() -> Outcome, offset: usize) -> Result<BatchOutcome, String> {
        let inputs = inputs();
        let mut borrowed = BatchOutcome::default();
        let by_ref = decode(outcome(), Inputs::Borrowed(&inputs), offset, &mut borrowed);
        let mut owned = BatchOutcome::default();
        let by_value = decode(outcome(), Inputs::Owned(inputs.clone()), offset, &mut owned);
        assert_eq!(by_ref, by_value);
        assert_eq!(borrowed.outputs, owned.outputs);
        assert_eq!(borrowed.failures, owned.failures);
        by_ref.map(|()| borrowed)
    }

    #[test]
    fn lists_are_written_only_where_the_guest_allocated_them_apart() {
        let mut memory = [0_u8; 16];
        let spans = |m: &mut [u8], a, b| disjoint(m, a, b).map(|(x, y)| (x.len(), y.len()));
        // Either order; touching ends are not an overlap.
        assert_eq!(spans(&mut memory, (0, 8), (8, 8)), Some((8, 8)));
        assert_eq!(spans(&mut memory, (12, 4), (0, 12)), Some((4, 12)));
        let (a, b) = disjoint(&mut memory, (2, 3), (9, 2)).unwrap();
        a.fill(1);
        b.fill(2);
        assert_eq!(memory, [0, 0, 1, 1, 1, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 0]);
        // Overlapping (either way round), or past the end: refused.
        assert_eq!(spans(&mut memory, (0, 9), (8, 4)), None);
        assert_eq!(spans(&mut memory, (8, 4), (0, 9)), None);
        assert_eq!(spans(&mut memory, (4, 4), (4, 4)), None);
        assert_eq!(spans(&mut memory, (0, 4), (14, 4)), None);
        assert_eq!(spans(&mut memory, (20, 1), (0, 4)), None);
        // An empty list overlaps nothing, wherever its pointer is.
        assert_eq!(spans(&mut memory, (3, 0), (0, 16)), Some((0, 16)));
        assert_eq!(spans(&mut memory, (0, 16), (1, 0)), Some((16, 0)));
    }

    #[test]
    fn passthroughs_are_their_inputs_whether_borrowed_or_owned() {
        let got = decode_both(
            || {
                outcome(
                    &[output(1, 0, [0; 8]), output(3, 0, [0; 8])],
                    b"",
                    &[(2, "bad")],
                )
            },
            10,
        )
        .unwrap();
        let inputs = inputs();
        let expected = [(11, &inputs[1]), (13, &inputs[3])];
        let got_outputs: Vec<_> = got.outputs.iter().map(|o| (o.input, &o.message)).collect();
        assert_eq!(got_outputs, expected);
        assert_eq!(got.failures.len(), 1);
        assert_eq!(got.failures[0].input, 12);
        assert_eq!(got.failures[0].kind, FailureKind::Rejected);
    }

    #[test]
    fn changed_parts_replace_the_inputs_and_the_rest_is_kept() {
        // Input 0 twice (a copy with a new payload, then itself), input 1
        // as is, input 2 with a new topic, fields and timestamp.
        let mut fields = Vec::new();
        for part in ["k", "v"] {
            fields.extend_from_slice(&(part.len() as u32).to_le_bytes());
            fields.extend_from_slice(part.as_bytes());
        }
        let data = [b"new".as_slice(), b"alerts", &fields].concat();
        let outputs = [
            output(0, NEW_PAYLOAD, [0, 0, 0, 3, 0, 0, 0, 0]),
            output(0, 0, [0; 8]),
            output(1, 0, [0; 8]),
            output(
                2,
                NEW_TOPIC | NEW_FIELDS | NEW_TIMESTAMP,
                [3, 6, 0, 0, 9, fields.len() as u32, 7, 1],
            ),
        ];
        let got = decode_both(|| outcome(&outputs, &data, &[]), 0).unwrap();
        let inputs = inputs();
        let messages: Vec<_> = got.outputs.iter().map(|o| &o.message).collect();
        assert_eq!(
            got.outputs.iter().map(|o| o.input).collect::<Vec<_>>(),
            [0, 0, 1, 2]
        );
        assert_eq!(&messages[0].payload[..], b"new");
        assert_eq!(messages[0].topic, inputs[0].topic);
        assert_eq!(messages[1], &inputs[0]);
        assert_eq!(messages[2], &inputs[1]);
        assert_eq!(&*messages[3].topic, "alerts");
        assert_eq!(messages[3].payload, inputs[2].payload);
        assert_eq!(messages[3].fields.get("k"), Some("v"));
        assert_eq!(messages[3].timestamp_ms, 7 | 1 << 32);
        assert_eq!(messages[3].qos, 1);
        assert!(got.failures.is_empty());
    }

    #[test]
    fn outputs_out_of_input_order_or_repeated_are_kept_as_emitted() {
        let outputs = [
            output(3, 0, [0; 8]),
            output(1, 0, [0; 8]),
            output(1, 0, [0; 8]),
        ];
        let got = decode_both(|| outcome(&outputs, b"", &[]), 0).unwrap();
        let inputs = inputs();
        let got: Vec<_> = got.outputs.iter().map(|o| (o.input, &o.message)).collect();
        assert_eq!(got, [(3, &inputs[3]), (1, &inputs[1]), (1, &inputs[1])]);
    }

    #[test]
    fn a_bad_output_fails_its_input_and_a_bad_index_fails_the_batch() {
        let got = decode_both(
            || {
                outcome(
                    &[
                        output(0, NEW_PAYLOAD, [0, 0, 0, 9, 0, 0, 0, 0]),
                        output(1, 0, [0; 8]),
                    ],
                    b"abc",
                    &[],
                )
            },
            0,
        )
        .unwrap();
        assert_eq!(got.outputs.len(), 1);
        assert_eq!(got.failures[0].kind, FailureKind::InvalidOutput);
        assert_eq!(
            got.failures[0].reason,
            "the plugin emitted a payload span 0..9 outside its 3-byte buffer"
        );

        let err = decode_both(
            || outcome(&[output(0, 0, [0; 8]), output(4, 0, [0; 8])], b"", &[]),
            0,
        );
        assert_eq!(
            err.unwrap_err(),
            "the plugin referred to input 4 of a batch of 4"
        );
        let err = decode_both(|| outcome(&[output(0, 0, [0; 8])], b"", &[(7, "x")]), 0);
        assert_eq!(
            err.unwrap_err(),
            "the plugin referred to input 7 of a batch of 4"
        );
        let err = decode_both(
            || Outcome {
                emitted: vec![0; 13],
                data: Vec::new(),
                failures: Vec::new(),
            },
            0,
        );
        assert_eq!(
            err.unwrap_err(),
            "the plugin returned 13 output words, not a multiple of 10"
        );
    }
}
