//! What a plugin sends on: [`Output`] describes one output message as a set
//! of changes to its input, and [`Emitter`] writes outputs into the batch's
//! outcome.
//!
//! Each output is ten `u32` words of the outcome's `emitted` list (see
//! `wit/plugin.wit`, record `outcome`). Every part an output leaves alone
//! has its flag clear, so the host reuses the input's bytes: passing a
//! message through writes one small fixed-size descriptor and copies
//! nothing. Changed parts are appended to the outcome's single `data`
//! buffer.
//!
//! The descriptor words are zeroed for a whole batch at once, and an output
//! writes only its non-zero words: a passthrough is one store, where the
//! obvious code builds a ten-word array and copies it in (under the `guest`
//! profile's opt-level "s", a `memory.fill` and a `memory.copy` per message).

use serde_json::Value;

use crate::Kind;
use crate::message::{Fields, encode_field, split_i64};

/// Words per output message in an outcome's `emitted`.
pub(crate) const OUTPUT_WORDS: usize = 10;

/// Word indices of an output descriptor: each new part is an `(offset,
/// length)` pair of words, the new timestamp a `(low, high)` pair.
pub(crate) mod word {
    pub(crate) const INPUT: usize = 0;
    pub(crate) const FLAGS: usize = 1;
    pub(crate) const TOPIC: usize = 2;
    pub(crate) const PAYLOAD: usize = 4;
    pub(crate) const FIELDS: usize = 6;
    pub(crate) const TIMESTAMP: usize = 8;
}

/// Bits of the flags word: which parts are new.
pub(crate) mod flag {
    pub(crate) const TOPIC: u32 = 1 << 0;
    pub(crate) const PAYLOAD: u32 = 1 << 1;
    pub(crate) const FIELDS: u32 = 1 << 2;
    pub(crate) const TIMESTAMP: u32 = 1 << 3;
}

/// One output message, described by how it differs from its input.
///
/// `Output::new()` is the input unchanged; each setter replaces one part.
///
/// ```
/// # use serde_json::json;
/// use weir_sdk::Output;
///
/// let out = Output::new()
///     .topic("alerts/hot")
///     .json(&json!({"temp": 31.5}))
///     .field("severity", "high");
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    topic: Option<String>,
    payload: Option<Vec<u8>>,
    fields: FieldEdit,
    timestamp_ms: Option<i64>,
}

/// How an output's field set relates to its input's.
#[derive(Clone, Debug, Default, PartialEq)]
enum FieldEdit {
    /// The input's fields, unchanged (sent with the flag clear).
    #[default]
    Keep,
    /// The input's fields with these set (`Some`) or removed (`None`).
    Merge(Vec<(String, Option<String>)>),
    /// Exactly these fields.
    Replace(Vec<(String, String)>),
}

impl Output {
    /// The input message, unchanged.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends the output on another topic.
    #[must_use]
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Replaces the payload with these bytes (or text).
    #[must_use]
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = Some(payload.into());
        self
    }

    /// Replaces the payload with `value`, serialised as compact JSON.
    #[must_use]
    pub fn json(self, value: &Value) -> Self {
        // Writing a `Value` into a `Vec` has no failure mode: every map key
        // is a string and the writer cannot fail.
        let bytes = serde_json::to_vec(value).expect("a JSON value always serialises");
        self.payload(bytes)
    }

    /// Sets one field, keeping the input's other fields (or the ones given
    /// to [`fields`](Self::fields) before).
    #[must_use]
    pub fn field(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.edit_field(key.into(), Some(value.into()));
        self
    }

    /// Removes one field, keeping the others.
    #[must_use]
    pub fn remove_field(mut self, key: impl Into<String>) -> Self {
        self.edit_field(key.into(), None);
        self
    }

    /// Replaces the whole field set.
    #[must_use]
    pub fn fields<K, V>(mut self, fields: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        let fields = fields.into_iter().map(|(k, v)| (k.into(), v.into()));
        self.fields = FieldEdit::Replace(fields.collect());
        self
    }

    /// Sets the timestamp, in milliseconds since the Unix epoch.
    #[must_use]
    pub fn timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    fn edit_field(&mut self, key: String, value: Option<String>) {
        match &mut self.fields {
            FieldEdit::Keep => self.fields = FieldEdit::Merge(vec![(key, value)]),
            FieldEdit::Merge(edits) => match edits.iter_mut().find(|(k, _)| *k == key) {
                Some(edit) => edit.1 = value,
                None => edits.push((key, value)),
            },
            FieldEdit::Replace(fields) => {
                fields.retain(|(k, _)| *k != key);
                if let Some(value) = value {
                    fields.push((key, value));
                }
            }
        }
    }
}

/// Collects the outputs of one batch.
///
/// A plugin gets one per call of [`Transform::process`](crate::Transform::process)
/// and calls [`pass`](Self::pass) or [`emit`](Self::emit) zero or more
/// times. If `process` then fails, the outputs it emitted for that message
/// are withdrawn: a failed message has no outputs.
pub struct Emitter<'a> {
    /// `OUTPUT_WORDS` words per output, for the first `used` words; every
    /// word after them is 0, ready for the next output.
    emitted: Vec<u32>,
    used: usize,
    data: Vec<u8>,
    input: u32,
    /// The batch's data, where the current input's fields are.
    batch_data: &'a [u8],
    /// The current input's fields: `(offset, length)` in `batch_data`,
    /// checked by `Message::from_words`. Sliced only if a field is edited.
    input_fields: (u32, u32),
}

/// Where the outputs of the current message begin, for withdrawing them.
#[derive(Clone, Copy)]
pub(crate) struct Mark {
    /// Length of `emitted`, in words.
    emitted: usize,
    data: usize,
}

impl<'a> Emitter<'a> {
    pub(crate) fn with_capacity(outputs: usize, batch_data: &'a [u8]) -> Self {
        Self {
            // One zeroing of the batch's descriptors (see the module doc).
            emitted: vec![0; outputs.saturating_mul(OUTPUT_WORDS)],
            used: 0,
            // Stays unallocated for a batch of pure passthroughs.
            data: Vec::new(),
            input: 0,
            batch_data,
            input_fields: (0, 0),
        }
    }

    /// Sends the input message on unchanged; copies nothing.
    #[inline]
    pub fn pass(&mut self) {
        // Flags and spans 0: every part is the input's.
        let at = self.next_slot();
        self.emitted[at + word::INPUT] = self.input;
    }

    /// Claims the next output's ten zeroed words; returns the first's index.
    #[inline(always)]
    fn next_slot(&mut self) -> usize {
        let at = self.used;
        if self.emitted.len() - at < OUTPUT_WORDS {
            self.grow();
        }
        self.used = at + OUTPUT_WORDS;
        at
    }

    #[cold]
    fn grow(&mut self) {
        let len = self.emitted.len().max(OUTPUT_WORDS) * 2;
        self.emitted.resize(len, 0);
    }

    /// Sends one output message.
    pub fn emit(&mut self, output: Output) {
        let at = self.next_slot();
        self.emitted[at + word::INPUT] = self.input;
        let mut flags = 0;
        if let Some(topic) = output.topic {
            flags |= flag::TOPIC;
            let span = self.append(topic.as_bytes());
            self.put(at + word::TOPIC, span);
        }
        if let Some(payload) = output.payload {
            flags |= flag::PAYLOAD;
            let span = self.append(&payload);
            self.put(at + word::PAYLOAD, span);
        }
        let fields = match output.fields {
            FieldEdit::Keep => None,
            FieldEdit::Replace(fields) => {
                let start = self.data.len();
                for (key, value) in &fields {
                    encode_field(&mut self.data, key, value);
                }
                Some(self.span_from(start))
            }
            FieldEdit::Merge(edits) => Some(self.merge_fields(&edits)),
        };
        if let Some(span) = fields {
            flags |= flag::FIELDS;
            self.put(at + word::FIELDS, span);
        }
        if let Some(timestamp_ms) = output.timestamp_ms {
            flags |= flag::TIMESTAMP;
            self.put(at + word::TIMESTAMP, split_i64(timestamp_ms));
        }
        self.emitted[at + word::FLAGS] = flags;
    }

    /// Writes an `(offset, length)` or `(low, high)` pair at word `at`.
    fn put(&mut self, at: usize, (first, second): (u32, u32)) {
        self.emitted[at] = first;
        self.emitted[at + 1] = second;
    }

    /// Writes the input's fields with `edits` applied: set keys keep their
    /// position, new keys go last, removed keys are skipped.
    fn merge_fields(&mut self, edits: &[(String, Option<String>)]) -> (u32, u32) {
        let start = self.data.len();
        let (offset, len) = (self.input_fields.0 as usize, self.input_fields.1 as usize);
        let input_fields = &self.batch_data[offset..offset + len];
        for (key, value) in Fields::new(input_fields) {
            match edits.iter().find(|(k, _)| k == key) {
                Some((_, Some(new))) => encode_field(&mut self.data, key, new),
                Some((_, None)) => {}
                None => encode_field(&mut self.data, key, value),
            }
        }
        for (key, value) in edits {
            let Some(value) = value else { continue };
            if !Fields::new(input_fields).any(|(k, _)| k == key) {
                encode_field(&mut self.data, key, value);
            }
        }
        self.span_from(start)
    }

    fn append(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        self.span_from(start)
    }

    /// `(offset, length)` of the data written since `start`.
    fn span_from(&self, start: usize) -> (u32, u32) {
        // wasm32 memory is at most 4 GiB, so a guest buffer always fits.
        let offset = u32::try_from(start).expect("outcome data fits in 4 GiB");
        let end = u32::try_from(self.data.len()).expect("outcome data fits in 4 GiB");
        (offset, end - offset)
    }

    /// Starts the outputs of input `input`.
    pub(crate) fn begin(&mut self, input: u32, input_fields: (u32, u32)) -> Mark {
        self.input = input;
        self.input_fields = input_fields;
        Mark {
            emitted: self.used,
            data: self.data.len(),
        }
    }

    /// Withdraws everything emitted since `mark`.
    pub(crate) fn rollback(&mut self, mark: Mark) {
        // Zero again: the next outputs rely on it.
        self.emitted[mark.emitted..self.used].fill(0);
        self.used = mark.emitted;
        self.data.truncate(mark.data);
    }

    /// Checks that the outputs since `mark` are what the plugin's kind
    /// promises the host, so a broken plugin fails its messages instead of
    /// confusing the pipeline.
    #[inline]
    pub(crate) fn check_kind(&self, kind: Kind, mark: Mark) -> Result<(), String> {
        // Word counts, not output counts: no division on the way through.
        let new = &self.emitted[mark.emitted..self.used];
        match kind {
            Kind::Filter if new.is_empty() => Ok(()),
            // Flags 0: the input unchanged.
            Kind::Filter if new.len() == OUTPUT_WORDS && new[word::FLAGS] == 0 => Ok(()),
            Kind::Map if new.len() == OUTPUT_WORDS => Ok(()),
            Kind::FlatMap => Ok(()),
            _ => Err(kind_violation(kind, new)),
        }
    }

    /// The outcome's `emitted` words and `data`.
    pub(crate) fn finish(mut self) -> (Vec<u32>, Vec<u8>) {
        self.emitted.truncate(self.used);
        (self.emitted, self.data)
    }
}

/// What a plugin of `kind` did wrong by emitting the outputs `new`.
#[cold]
fn kind_violation(kind: Kind, new: &[u32]) -> String {
    let count = new.len() / OUTPUT_WORDS;
    match kind {
        Kind::Filter if count == 1 => "plugin bug: a filter may only pass its input unchanged, \
                                       but it emitted a modified message"
            .to_owned(),
        Kind::Filter => format!(
            "plugin bug: a filter emits at most one output per message, but it emitted {count}"
        ),
        _ => format!(
            "plugin bug: a map emits exactly one output per message, but it emitted {count}"
        ),
    }
}

impl std::fmt::Debug for Emitter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("input", &self.input)
            .field("emitted", &(self.used / OUTPUT_WORDS))
            .field("data_bytes", &self.data.len())
            .finish()
    }
}
