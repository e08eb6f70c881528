//! Messages → `PutTimeseriesData` request bodies.
//!
//! Each message becomes one row: a measurement, a data source and tags
//! rendered from templates, a time in microseconds, and typed fields taken
//! from the payload's top-level JSON object. Rows are laid out exactly as
//! the official SDKs lay them out (see the module doc of
//! [`super`]), and cut into requests of at most [`MAX_ROWS`] rows and
//! [`MAX_REQUEST_BYTES`] bytes. A message that cannot become a valid row
//! (not a JSON object, a name the service refuses, a value over a limit, an
//! undefined template variable) is rejected alone, with a reason that says
//! what to change.
//!
//! Encoding runs for every message, so it is kept lean (target: ≤ 1 µs
//! per row, `benches/tablestore.rs`): the payload's top-level object is
//! read into entries that borrow from the payload (`payload.rs`), each row
//! is checked in buffers reused message after message and written at once
//! into the request's FlatBuffer by the `flatbuffers` crate's builder,
//! which the requests of a batch reuse (`Flat`). Past the first rows, a
//! row allocates nothing unless a key needs lowercasing, a string has
//! escapes, a value is a nested object or array, or a name, measurement,
//! data source or tag is new to the request.
//!
//! What this module must never do: accept, reject or type a message
//! differently from a plain decode into `serde_json::Value` (the unit tests
//! hold it to that reference), or let one message's data leak into
//! another's row through the reused buffers.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeSet;
use std::ops::Range;

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, TableFinishedWIPOffset, Vector, WIPOffset};
use prost::Message as _;
use serde_json::Value as Json;

use super::payload::{Entry, Object, by_name, find, read_object};
use super::proto;
use crate::config::{MetaUpdateMode, StringType};
use crate::message::Message;
use crate::sink::Rejected;
use crate::template::{Payload, Template, plain};

/// Most rows in one `PutTimeseriesData` (the service's limit).
pub const MAX_ROWS: usize = 200;

/// Most bytes of one request body. The service's limit is 4 MB; weir stays
/// a little under it so that protobuf framing never tips a body over.
pub const MAX_REQUEST_BYTES: usize = 4_000_000;

/// Most fields in one row (the service's limit).
pub const MAX_FIELDS: usize = 1024;

/// Largest string or binary value (the service's limit: 2 MB).
pub const MAX_VALUE_BYTES: usize = 2 << 20;

/// Longest measurement name, in bytes.
pub const MAX_MEASUREMENT_BYTES: usize = 128;

/// Longest data source, in bytes.
pub const MAX_DATA_SOURCE_BYTES: usize = 256;

/// Longest field name, in bytes.
pub const MAX_FIELD_NAME_BYTES: usize = 128;

/// Field names may not contain these (the service keeps them for itself).
pub const RESERVED_FIELD_NAMES: [&str; 6] = [
    "_m_name",
    "_data_source",
    "_tags",
    "_time",
    "_meta_update_time",
    "_attributes",
];

/// FlatBuffers `DataType` of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DataType {
    /// int64.
    Long = 1,
    /// bool.
    Boolean = 2,
    /// f64.
    Double = 3,
    /// UTF-8 text.
    String = 4,
    /// Bytes.
    Binary = 5,
}

/// A typed value as the FlatBuffer writer reads it.
#[derive(Clone, Copy, Debug)]
enum FieldRef<'a> {
    Long(i64),
    Boolean(bool),
    Double(f64),
    String(&'a str),
    Binary(&'a [u8]),
}

impl FieldRef<'_> {
    fn data_type(self) -> DataType {
        match self {
            FieldRef::Long(_) => DataType::Long,
            FieldRef::Boolean(_) => DataType::Boolean,
            FieldRef::Double(_) => DataType::Double,
            FieldRef::String(_) => DataType::String,
            FieldRef::Binary(_) => DataType::Binary,
        }
    }
}

/// What the FlatBuffer writer and the size estimate read of a row: an
/// owned [`Row`], or the row [`RowSpec::encode`] is building.
trait RowView {
    fn measurement(&self) -> &str;
    fn data_source(&self) -> &str;
    /// Sorted by name.
    fn tags(&self) -> impl Iterator<Item = (&str, &str)>;
    fn time_us(&self) -> i64;
    /// Sorted by name.
    fn fields(&self) -> impl Iterator<Item = (&str, FieldRef<'_>)>;
}

/// Everything that decides how a message becomes a row.
#[derive(Clone, Debug)]
pub struct RowSpec {
    /// The timeseries table.
    pub table: String,
    /// Measurement name template.
    pub measurement: Template,
    /// Data source template; empty when `None`.
    pub data_source: Option<Template>,
    /// Tag templates by tag name.
    pub tags: Vec<(String, Template)>,
    /// Payload fields to write; every top-level field when `None`.
    pub fields: Option<Vec<String>>,
    /// Fields always stored as STRING.
    pub string_fields: BTreeSet<String>,
    /// Fields always stored as BINARY.
    pub binary_fields: BTreeSet<String>,
    /// How other strings are stored.
    pub strings: StringType,
    /// Store integers as DOUBLE.
    pub int_as_double: bool,
    /// Time template (microseconds); arrival time when `None`.
    pub timestamp: Option<Template>,
    /// `meta_update_mode` of every request.
    pub meta_update_mode: MetaUpdateMode,
    /// Render undefined template variables as `null`.
    pub undefined_vars_as_null: bool,
}

/// One `PutTimeseriesData` body and the batch index of each of its rows.
#[derive(Clone, Debug)]
pub struct Chunk {
    /// The protobuf body.
    pub body: Bytes,
    /// `indices[i]` is the batch index of row group `i`.
    pub indices: Vec<usize>,
}

/// One typed value.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// LONG.
    Long(i64),
    /// BOOLEAN.
    Boolean(bool),
    /// DOUBLE.
    Double(f64),
    /// STRING.
    String(String),
    /// BINARY.
    Binary(Vec<u8>),
}

/// One row, checked against the service's rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Measurement name.
    pub measurement: String,
    /// Data source ("" when none).
    pub data_source: String,
    /// Tags, sorted by name.
    pub tags: Vec<(String, String)>,
    /// Microseconds since the epoch.
    pub time_us: i64,
    /// Fields, sorted by (lowercase) name.
    pub fields: Vec<(String, FieldValue)>,
}

impl RowView for Row {
    fn measurement(&self) -> &str {
        &self.measurement
    }

    fn data_source(&self) -> &str {
        &self.data_source
    }

    fn tags(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn time_us(&self) -> i64 {
        self.time_us
    }

    fn fields(&self) -> impl Iterator<Item = (&str, FieldRef<'_>)> {
        self.fields.iter().map(|(name, value)| {
            let value = match value {
                FieldValue::Long(v) => FieldRef::Long(*v),
                FieldValue::Boolean(v) => FieldRef::Boolean(*v),
                FieldValue::Double(v) => FieldRef::Double(*v),
                FieldValue::String(v) => FieldRef::String(v),
                FieldValue::Binary(v) => FieldRef::Binary(v),
            };
            (name.as_str(), value)
        })
    }
}

/// An upper bound of the bytes `row` adds to a FlatBuffer (as if nothing
/// were shared).
fn size_bound(row: &impl RowView) -> usize {
    const ROW: usize = 256;
    const ITEM: usize = 40;
    let text = |s: &str| s.len() + ITEM;
    let mut n = ROW + text(row.measurement()) + text(row.data_source());
    for (k, v) in row.tags() {
        n += text(k) + text(v) + ITEM;
    }
    for (name, value) in row.fields() {
        n += text(name)
            + match value {
                FieldRef::String(s) => text(s),
                FieldRef::Binary(b) => b.len() + 2 * ITEM,
                _ => 16,
            };
    }
    n
}

/// A typed field value that still borrows from the payload.
#[derive(Debug)]
enum Typed<'b> {
    Long(i64),
    Boolean(bool),
    Double(f64),
    String(Cow<'b, str>),
    Binary(Cow<'b, str>),
}

impl Typed<'_> {
    fn as_ref(&self) -> FieldRef<'_> {
        match self {
            Typed::Long(v) => FieldRef::Long(*v),
            Typed::Boolean(v) => FieldRef::Boolean(*v),
            Typed::Double(v) => FieldRef::Double(*v),
            Typed::String(v) => FieldRef::String(v),
            Typed::Binary(v) => FieldRef::Binary(v.as_bytes()),
        }
    }

    fn into_owned(self) -> FieldValue {
        match self {
            Typed::Long(v) => FieldValue::Long(v),
            Typed::Boolean(v) => FieldValue::Boolean(v),
            Typed::Double(v) => FieldValue::Double(v),
            Typed::String(v) => FieldValue::String(v.into_owned()),
            Typed::Binary(v) => FieldValue::Binary(v.into_owned().into_bytes()),
        }
    }
}

/// The row of the message at hand, in buffers reused message after
/// message: everything is cleared or overwritten before it is read.
#[derive(Default)]
struct Draft<'b> {
    /// The payload's top-level entries, sorted by key, one per key.
    entries: Vec<(Cow<'b, str>, Entry<'b>)>,
    measurement: String,
    data_source: String,
    /// Tag values, back to back.
    tag_text: String,
    /// (index into [`RowSpec::tags`], range of `tag_text`), sorted.
    tags: Vec<(usize, Range<usize>)>,
    /// The rendered timestamp.
    time: String,
    time_us: i64,
    /// Sorted by name.
    fields: Vec<(Cow<'b, str>, Typed<'b>)>,
}

/// A [`Draft`] with the spec that names its tags.
struct DraftRow<'d, 'b> {
    spec: &'d RowSpec,
    draft: &'d Draft<'b>,
}

impl RowView for DraftRow<'_, '_> {
    fn measurement(&self) -> &str {
        &self.draft.measurement
    }

    fn data_source(&self) -> &str {
        &self.draft.data_source
    }

    fn tags(&self) -> impl Iterator<Item = (&str, &str)> {
        self.draft.tags.iter().map(|(i, at)| {
            (
                self.spec.tags[*i].0.as_str(),
                &self.draft.tag_text[at.clone()],
            )
        })
    }

    fn time_us(&self) -> i64 {
        self.draft.time_us
    }

    fn fields(&self) -> impl Iterator<Item = (&str, FieldRef<'_>)> {
        self.draft
            .fields
            .iter()
            .map(|(name, value)| (name.as_ref(), value.as_ref()))
    }
}

impl RowSpec {
    /// Encodes `batch` into requests of at most [`MAX_ROWS`] rows and
    /// [`MAX_REQUEST_BYTES`] bytes; messages that cannot be rows are pushed
    /// to `rejected`.
    pub fn encode(&self, batch: &[Message], rejected: &mut Vec<Rejected>) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        let mut draft = Draft::default();
        let rows = batch.len().min(MAX_ROWS);
        let mut flat = Flat::with_rows(rows);
        let mut indices = Vec::with_capacity(rows);
        let mut bytes = 0;
        let budget = MAX_REQUEST_BYTES - 512 - self.table.len();
        for (index, message) in batch.iter().enumerate() {
            if let Err(reason) = self.draft(message, &mut draft) {
                rejected.push(Rejected { index, reason });
                continue;
            }
            let row = DraftRow {
                spec: self,
                draft: &draft,
            };
            let size = size_bound(&row);
            if size > budget {
                rejected.push(Rejected {
                    index,
                    reason: format!(
                        "the row would take about {size} bytes, over the {MAX_REQUEST_BYTES}-byte request limit"
                    ),
                });
                continue;
            }
            if indices.len() == MAX_ROWS || bytes + size > budget {
                let next = Vec::with_capacity(rows);
                chunks.push(self.chunk(&mut flat, std::mem::replace(&mut indices, next)));
                bytes = 0;
            }
            bytes += size;
            flat.push(&row);
            indices.push(index);
        }
        if !indices.is_empty() {
            chunks.push(self.chunk(&mut flat, indices));
        }
        chunks
    }

    fn chunk(&self, flat: &mut Flat, indices: Vec<usize>) -> Chunk {
        let body = request_body(&self.table, flat.finish(), self.meta_update_mode);
        Chunk {
            body: Bytes::from(body),
            indices,
        }
    }

    /// The row of one message, or why there is none.
    pub fn row(&self, m: &Message) -> Result<Row, String> {
        let mut draft = Draft::default();
        self.draft(m, &mut draft)?;
        let row = DraftRow {
            spec: self,
            draft: &draft,
        };
        Ok(Row {
            measurement: draft.measurement.clone(),
            data_source: draft.data_source.clone(),
            tags: row
                .tags()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            time_us: draft.time_us,
            fields: draft
                .fields
                .into_iter()
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect(),
        })
    }

    /// Fills `d` with the row of `m`, or says why there is none. The checks
    /// run in the order a reader of the row would meet the problems:
    /// payload, measurement, data source, tags, time, fields.
    fn draft<'b>(&self, m: &'b Message, d: &mut Draft<'b>) -> Result<(), String> {
        read_object(&m.payload, &mut d.entries)?;
        {
            let payload = Object {
                entries: &d.entries,
                whole: OnceCell::new(),
            };
            d.measurement.clear();
            self.render(
                "measurement",
                &self.measurement,
                m,
                &payload,
                &mut d.measurement,
            )?;
            check_measurement(&d.measurement)?;
            d.data_source.clear();
            if let Some(t) = &self.data_source {
                self.render("data_source", t, m, &payload, &mut d.data_source)?;
            }
            check_data_source(&d.data_source)?;
            d.tag_text.clear();
            d.tags.clear();
            for (i, (name, template)) in self.tags.iter().enumerate() {
                let start = d.tag_text.len();
                self.render("tags", template, m, &payload, &mut d.tag_text)?;
                check_tag(name, &d.tag_text[start..])?;
                d.tags.push((i, start..d.tag_text.len()));
            }
            let text = &d.tag_text;
            let tag =
                |(i, at): &(usize, Range<usize>)| (self.tags[*i].0.as_str(), &text[at.clone()]);
            d.tags.sort_by(|a, b| tag(a).cmp(&tag(b)));

            d.time_us = match &self.timestamp {
                None => m.timestamp_ms.saturating_mul(1000),
                Some(t) => {
                    d.time.clear();
                    self.render("timestamp", t, m, &payload, &mut d.time)?;
                    parse_time(&d.time)?
                }
            };
        }

        d.fields.clear();
        match &self.fields {
            None => {
                for (key, entry) in d.entries.drain(..) {
                    self.add(key, entry, &mut d.fields)?;
                }
            }
            Some(names) => {
                for key in names {
                    if let Some(at) = find(&d.entries, key) {
                        let (key, entry) = d.entries[at].clone();
                        self.add(key, entry, &mut d.fields)?;
                    }
                }
            }
        }
        if d.fields.is_empty() {
            return Err(match &self.fields {
                None => "the payload has no field to write (null values are not written)".into(),
                Some(names) => format!(
                    "the payload has none of the fields {} (null values are not written)",
                    names.join(", ")
                ),
            });
        }
        if d.fields.len() > MAX_FIELDS {
            return Err(format!(
                "the row has {} fields, over the limit of {MAX_FIELDS}",
                d.fields.len()
            ));
        }
        d.fields.sort_by(|a, b| by_name(&a.0, &b.0));
        if let Some(pair) = d.fields.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!(
                "two payload fields are both named \"{}\" once lowercased",
                pair[0].0
            ));
        }
        Ok(())
    }

    /// Appends `t` rendered for `m` to `out`.
    fn render(
        &self,
        what: &str,
        t: &Template,
        m: &Message,
        payload: &dyn Payload,
        out: &mut String,
    ) -> Result<(), String> {
        t.render_payload(m, payload, &mut plain, out, self.undefined_vars_as_null)
            .map_err(|e| format!("{what}: {e}"))
    }

    /// Adds the payload entry `key` to `fields`, typed and named; a null is
    /// not written.
    fn add<'b>(
        &self,
        key: Cow<'b, str>,
        entry: Entry<'b>,
        fields: &mut Vec<(Cow<'b, str>, Typed<'b>)>,
    ) -> Result<(), String> {
        if let Some(value) = self.value(&key, entry)? {
            fields.push((field_name(key)?, value));
        }
        Ok(())
    }

    /// The typed value of a payload field; `None` for null (not written).
    fn value<'b>(&self, key: &str, entry: Entry<'b>) -> Result<Option<Typed<'b>>, String> {
        let text = match entry {
            Entry::Json(Json::Null) => return Ok(None),
            Entry::Json(Json::Bool(b)) => return Ok(Some(Typed::Boolean(b))),
            Entry::Json(Json::Number(n)) => {
                return Ok(Some(match n.as_i64() {
                    Some(i) if !self.int_as_double => Typed::Long(i),
                    _ => Typed::Double(n.as_f64().unwrap_or(f64::NAN)),
                }));
            }
            Entry::Str(s) => s,
            Entry::Json(nested) => Cow::Owned(nested.to_string()),
        };
        if text.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "field \"{key}\" is {} bytes, over the {MAX_VALUE_BYTES}-byte value limit",
                text.len()
            ));
        }
        let listed = |set: &BTreeSet<String>| !set.is_empty() && set.contains(key);
        let as_string = listed(&self.string_fields)
            || (self.strings == StringType::String && !listed(&self.binary_fields));
        Ok(Some(if as_string {
            Typed::String(text)
        } else {
            Typed::Binary(text)
        }))
    }
}

/// A payload key as a field name: lowercased (the service's names are
/// lowercase), then checked.
fn field_name(key: Cow<'_, str>) -> Result<Cow<'_, str>, String> {
    let why = |why| format!("payload field \"{key}\" {why}");
    if key.bytes().any(|c| c.is_ascii_uppercase()) {
        let name = key.to_ascii_lowercase();
        check_field_name(&name).map_err(why)?;
        Ok(Cow::Owned(name))
    } else {
        check_field_name(&key).map_err(why)?;
        Ok(key)
    }
}

/// Why `name` (already lowercase) cannot be a field name.
pub fn check_field_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_FIELD_NAME_BYTES {
        return Err(format!(
            "cannot be a field name: names are 1 to {MAX_FIELD_NAME_BYTES} bytes"
        ));
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    {
        return Err("cannot be a field name: names are made of a-z, 0-9 and _".into());
    }
    if name.as_bytes()[0].is_ascii_digit() {
        return Err("cannot be a field name: names do not start with a digit".into());
    }
    // Every reserved name starts with `_`: most names need no search.
    if name.contains('_')
        && let Some(r) = RESERVED_FIELD_NAMES.iter().find(|r| name.contains(*r))
    {
        return Err(format!(
            "cannot be a field name: it contains \"{r}\", which the service reserves"
        ));
    }
    Ok(())
}

/// Why `m` cannot be a measurement name.
pub fn check_measurement(m: &str) -> Result<(), String> {
    if m.is_empty() || m.len() > MAX_MEASUREMENT_BYTES {
        return Err(format!(
            "the measurement {m:?} is {} bytes; it must be 1 to {MAX_MEASUREMENT_BYTES}",
            m.len()
        ));
    }
    if let Some(c) = m
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '#')
    {
        return Err(format!(
            "the measurement {m:?} contains {c:?}: no spaces, invisible characters or #"
        ));
    }
    Ok(())
}

/// Why `s` cannot be a data source.
pub fn check_data_source(s: &str) -> Result<(), String> {
    if s.len() > MAX_DATA_SOURCE_BYTES {
        return Err(format!(
            "the data source is {} bytes, over {MAX_DATA_SOURCE_BYTES}",
            s.len()
        ));
    }
    Ok(())
}

/// Why a tag cannot be written.
pub fn check_tag(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|c| (b'!'..=b'~').contains(&c)) {
        return Err(format!(
            "tag name {name:?} must be non-empty printable ASCII without spaces"
        ));
    }
    for (what, text) in [("name", name), ("value", value)] {
        if let Some(c) = text.chars().find(|c| matches!(c, '"' | '=')) {
            return Err(format!(
                "tag {what} {text:?} contains {c:?}: tags cannot contain \" or ="
            ));
        }
    }
    Ok(())
}

/// A rendered timestamp: a whole, non-negative number of microseconds.
fn parse_time(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(t) if t >= 0 => Ok(t),
        Ok(_) => Err(format!("timestamp {text:?} is negative")),
        Err(_) => Err(format!(
            "timestamp {text:?} is not a whole number of microseconds since the epoch"
        )),
    }
}

/// FlatBuffer bytes a typical row takes, to size a request's buffer up
/// front (it grows when rows are larger).
const ROW_BYTES_GUESS: usize = 256;

/// vtable slot `n` is at voffset `4 + 2n`.
const fn slot(n: u16) -> u16 {
    4 + 2 * n
}

type Text = WIPOffset<&'static str>;
type Table = WIPOffset<TableFinishedWIPOffset>;
type Offsets<T> = WIPOffset<Vector<'static, ForwardsUOffset<T>>>;
/// A row's field names and types.
type Schema = (Vec<Text>, Vec<u8>);
/// `field_names` and `field_types` as written.
type SchemaVectors = (Offsets<&'static str>, WIPOffset<Vector<'static, u8>>);

/// One request's `FlatBufferRows`, written row after row with the
/// `flatbuffers` builder. The builder (with its buffer) and the scratch
/// vectors are reused from one request of a batch to the next.
///
/// What a request repeats is written once and pointed to by every row
/// that has it: texts (names, measurements, data sources, tags) as the
/// builder's shared strings, and a row's field names and types, and its
/// tags, when they are the previous row's.
struct Flat {
    fbb: FlatBufferBuilder<'static>,
    groups: Vec<Table>,
    longs: Vec<i64>,
    bools: Vec<bool>,
    doubles: Vec<f64>,
    strings: Vec<Text>,
    binaries: Vec<Table>,
    tag_tables: Vec<Table>,
    /// The texts the previous row pointed to, slot by slot.
    measurement: Recent,
    data_source: Recent,
    legacy_tags: Recent,
    field_names: Vec<Recent>,
    tag_texts: Vec<(Recent, Recent)>,
    /// The field names and types of the row being written; those of the
    /// previous row, and the vectors written for them.
    schema: Schema,
    last_schema: Repeat<Schema, SchemaVectors>,
    /// The tags of the row being written; those of the previous row, and
    /// the `tag_list` written for them.
    tags: Vec<(Text, Text)>,
    last_tags: Repeat<Vec<(Text, Text)>, Offsets<TableFinishedWIPOffset>>,
}

/// The shared string one slot of the previous row pointed to. Rows of a
/// request mostly repeat their neighbour's names, measurement, data source
/// and tags: comparing with it is cheaper than the builder's search of all
/// the request's shared strings, which is only done when it differs.
#[derive(Default)]
struct Recent {
    text: String,
    at: Option<Text>,
}

impl Recent {
    /// `text` as a shared string of the request in `fbb`.
    #[inline]
    fn shared(&mut self, fbb: &mut FlatBufferBuilder<'static>, text: &str) -> Text {
        if let Some(at) = self.at
            && self.text == text
        {
            return at;
        }
        let at = fbb.create_shared_string(text);
        self.text.clear();
        self.text.push_str(text);
        self.at = Some(at);
        at
    }
}

/// What the previous row wrote from `key`, for a row with the same key to
/// point to.
struct Repeat<K, V> {
    key: K,
    at: Option<V>,
}

impl<K: Default, V> Default for Repeat<K, V> {
    fn default() -> Self {
        Repeat {
            key: K::default(),
            at: None,
        }
    }
}

impl<K: PartialEq, V: Copy> Repeat<K, V> {
    /// What was written from `key`: the previous row's, or what `write`
    /// writes. `key` then becomes the previous row's, and the old one is
    /// handed back in `key` for its buffers.
    #[inline]
    fn get_or_write(&mut self, key: &mut K, write: impl FnOnce(&K) -> V) -> V {
        if let Some(at) = self.at
            && self.key == *key
        {
            return at;
        }
        let at = write(key);
        std::mem::swap(&mut self.key, key);
        self.at = Some(at);
        at
    }
}

impl Flat {
    fn with_rows(rows: usize) -> Flat {
        Flat {
            fbb: FlatBufferBuilder::with_capacity(ROW_BYTES_GUESS * rows.max(1)),
            groups: Vec::with_capacity(rows),
            longs: Vec::new(),
            bools: Vec::new(),
            doubles: Vec::new(),
            strings: Vec::new(),
            binaries: Vec::new(),
            tag_tables: Vec::new(),
            measurement: Recent::default(),
            data_source: Recent::default(),
            legacy_tags: Recent::default(),
            field_names: Vec::new(),
            tag_texts: Vec::new(),
            schema: Default::default(),
            last_schema: Repeat::default(),
            tags: Vec::new(),
            last_tags: Repeat::default(),
        }
    }

    /// Adds `row` as a row group of its own: `FlatBufferRowGroup {
    /// measurement_name, field_names, field_types, rows: [
    /// FlatBufferRowInGroup { data_source, tags: "", time, field_values,
    /// tag_list } ] }`.
    fn push(&mut self, row: &impl RowView) {
        let Flat {
            fbb,
            groups,
            longs,
            bools,
            doubles,
            strings,
            binaries,
            tag_tables,
            measurement,
            data_source,
            legacy_tags,
            field_names,
            tag_texts,
            schema,
            last_schema,
            tags,
            last_tags,
        } = self;
        let measurement = measurement.shared(fbb, row.measurement());
        schema.0.clear();
        schema.1.clear();
        longs.clear();
        bools.clear();
        doubles.clear();
        strings.clear();
        binaries.clear();
        // Each value in the typed vector of its type, in field order.
        for (i, (name, value)) in row.fields().enumerate() {
            if i == field_names.len() {
                field_names.push(Recent::default());
            }
            schema.0.push(field_names[i].shared(fbb, name));
            schema.1.push(value.data_type() as u8);
            match value {
                FieldRef::Long(v) => longs.push(v),
                FieldRef::Boolean(v) => bools.push(v),
                FieldRef::Double(v) => doubles.push(v),
                FieldRef::String(v) => strings.push(fbb.create_string(v)),
                FieldRef::Binary(v) => {
                    // BytesValue { value: [byte] }
                    let bytes = fbb.create_vector(v);
                    let start = fbb.start_table();
                    fbb.push_slot_always(slot(0), bytes);
                    binaries.push(fbb.end_table(start));
                }
            }
        }
        let (field_names, field_types) = last_schema.get_or_write(schema, |(names, types)| {
            (fbb.create_vector(names), fbb.create_vector(types))
        });
        // Empty typed vectors are left out, as the SDKs do.
        let longs = (!longs.is_empty()).then(|| fbb.create_vector(longs));
        let bools = (!bools.is_empty()).then(|| fbb.create_vector(bools));
        let doubles = (!doubles.is_empty()).then(|| fbb.create_vector(doubles));
        let strings = (!strings.is_empty()).then(|| fbb.create_vector(strings));
        let binaries = (!binaries.is_empty()).then(|| fbb.create_vector(binaries));
        let start = fbb.start_table();
        if let Some(v) = longs {
            fbb.push_slot_always(slot(0), v);
        }
        if let Some(v) = bools {
            fbb.push_slot_always(slot(1), v);
        }
        if let Some(v) = doubles {
            fbb.push_slot_always(slot(2), v);
        }
        if let Some(v) = strings {
            fbb.push_slot_always(slot(3), v);
        }
        if let Some(v) = binaries {
            fbb.push_slot_always(slot(4), v);
        }
        let values = fbb.end_table(start);

        let data_source = data_source.shared(fbb, row.data_source());
        let legacy_tags = legacy_tags.shared(fbb, "");
        tags.clear();
        for (i, (k, v)) in row.tags().enumerate() {
            if i == tag_texts.len() {
                tag_texts.push(Default::default());
            }
            let (name, value) = &mut tag_texts[i];
            tags.push((name.shared(fbb, k), value.shared(fbb, v)));
        }
        let tag_list = last_tags.get_or_write(tags, |tags| {
            tag_tables.clear();
            for &(name, value) in tags {
                // Tag { name, value }
                let start = fbb.start_table();
                fbb.push_slot_always(slot(0), name);
                fbb.push_slot_always(slot(1), value);
                tag_tables.push(fbb.end_table(start));
            }
            fbb.create_vector(tag_tables)
        });

        // No meta_cache_update_time, as the Python SDK.
        let start = fbb.start_table();
        fbb.push_slot_always(slot(2), row.time_us());
        fbb.push_slot_always(slot(0), data_source);
        fbb.push_slot_always(slot(1), legacy_tags);
        fbb.push_slot_always(slot(3), values);
        fbb.push_slot_always(slot(5), tag_list);
        let row_table = fbb.end_table(start);
        let in_group = fbb.create_vector(&[row_table]);

        let start = fbb.start_table();
        fbb.push_slot_always(slot(0), measurement);
        fbb.push_slot_always(slot(1), field_names);
        fbb.push_slot_always(slot(2), field_types);
        fbb.push_slot_always(slot(3), in_group);
        groups.push(fbb.end_table(start));
    }

    /// The finished buffer of the rows pushed since the last call; the
    /// builder is then reset (it keeps its buffer) and shares nothing with
    /// what it held.
    fn finish(&mut self) -> Vec<u8> {
        let fbb = &mut self.fbb;
        let groups = fbb.create_vector(&self.groups);
        // FlatBufferRows { row_groups }
        let start = fbb.start_table();
        fbb.push_slot_always(slot(0), groups);
        let root = fbb.end_table(start);
        // No file identifier: the SDKs finish without one.
        fbb.finish_minimal(root);
        let data = fbb.finished_data().to_vec();
        fbb.reset();
        self.groups.clear();
        let recent = [
            &mut self.measurement,
            &mut self.data_source,
            &mut self.legacy_tags,
        ];
        recent
            .into_iter()
            .chain(&mut self.field_names)
            .chain(self.tag_texts.iter_mut().flat_map(|(k, v)| [k, v]))
            .for_each(|r| r.at = None);
        self.last_schema.at = None;
        self.last_tags.at = None;
        data
    }
}

/// The `FlatBufferRows` of `rows`: one row group per row, as the SDKs do.
pub fn flat_rows<'r>(rows: impl Iterator<Item = &'r Row>, count: usize) -> Vec<u8> {
    let mut flat = Flat::with_rows(count);
    for row in rows {
        flat.push(row);
    }
    flat.finish()
}

/// The protobuf body of a `PutTimeseriesData` carrying `flat` rows.
pub fn request_body(table: &str, flat: Vec<u8>, mode: MetaUpdateMode) -> Vec<u8> {
    let crc = crc32c::crc32c(&flat) as i32;
    let request = proto::PutTimeseriesDataRequest {
        table_name: table.to_owned(),
        rows_data: proto::TimeseriesRows {
            r#type: proto::RowsSerializeType::RstFlatBuffer as i32,
            rows_data: flat,
            flatbuffer_crc32c: Some(crc),
        },
        meta_update_mode: Some(match mode {
            MetaUpdateMode::Normal => proto::MetaUpdateMode::MumNormal,
            MetaUpdateMode::Ignore => proto::MetaUpdateMode::MumIgnore,
        } as i32),
        supported_table_version: Some(1),
    };
    request.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Fields;

    fn spec() -> RowSpec {
        RowSpec {
            table: "tstable".into(),
            measurement: Template::parse("m_re2").unwrap(),
            data_source: Some(Template::parse("${device}").unwrap()),
            tags: vec![
                ("z".into(), Template::parse("last").unwrap()),
                ("client".into(), Template::parse("${device}").unwrap()),
            ],
            fields: None,
            string_fields: BTreeSet::from(["name".into()]),
            binary_fields: BTreeSet::new(),
            strings: StringType::Binary,
            int_as_double: false,
            timestamp: None,
            meta_update_mode: MetaUpdateMode::Normal,
            undefined_vars_as_null: false,
        }
    }

    fn message(payload: &str) -> Message {
        let mut m = Message::new("devices/d1/data", payload.to_owned(), 1_700_000_000_123);
        m.fields = Fields::from_pairs([("device", "123456")]);
        m
    }

    #[test]
    fn payload_fields_are_typed_lowercased_and_sorted() {
        let row = spec()
            .row(&message(
                r#"{"Temp": 23.5, "hum": 90, "ok": true, "name": "dev", "note": "hi", "big": 18446744073709551615, "obj": {"a": [1]}, "gone": null}"#,
            ))
            .unwrap();
        assert_eq!(row.measurement, "m_re2");
        assert_eq!(row.data_source, "123456");
        assert_eq!(
            row.tags,
            [
                ("client".into(), "123456".into()),
                ("z".into(), "last".into())
            ]
        );
        assert_eq!(row.time_us, 1_700_000_000_123_000);
        assert_eq!(
            row.fields,
            vec![
                ("big".into(), FieldValue::Double(18446744073709551615.0)),
                ("hum".into(), FieldValue::Long(90)),
                ("name".into(), FieldValue::String("dev".into())),
                ("note".into(), FieldValue::Binary(b"hi".to_vec())),
                ("obj".into(), FieldValue::Binary(br#"{"a":[1]}"#.to_vec())),
                ("ok".into(), FieldValue::Boolean(true)),
                ("temp".into(), FieldValue::Double(23.5)),
            ]
        );
    }

    #[test]
    fn strings_default_to_string_when_asked_except_binary_fields_and_ints_can_be_doubles() {
        let spec = RowSpec {
            strings: StringType::String,
            binary_fields: BTreeSet::from(["raw".into()]),
            int_as_double: true,
            fields: Some(vec!["a".into(), "raw".into(), "n".into(), "absent".into()]),
            ..spec()
        };
        let row = spec
            .row(&message(r#"{"a": "x", "raw": "y", "n": 3, "skipped": 1}"#))
            .unwrap();
        assert_eq!(
            row.fields,
            vec![
                ("a".into(), FieldValue::String("x".into())),
                ("n".into(), FieldValue::Double(3.0)),
                ("raw".into(), FieldValue::Binary(b"y".to_vec())),
            ]
        );
    }

    #[test]
    fn a_timestamp_template_gives_microseconds() {
        let spec = RowSpec {
            timestamp: Some(Template::parse("${t}").unwrap()),
            ..spec()
        };
        assert_eq!(
            spec.row(&message(r#"{"t": 42, "v": 1}"#)).unwrap().time_us,
            42
        );
        for (payload, reason) in [
            (r#"{"t": -1, "v": 1}"#, "negative"),
            (r#"{"t": 1.5, "v": 1}"#, "whole number"),
            (r#"{"v": 1}"#, "timestamp: variable ${t} is undefined"),
        ] {
            let err = spec.row(&message(payload)).unwrap_err();
            assert!(err.contains(reason), "{payload}: {err}");
        }
    }

    #[test]
    fn messages_the_service_would_refuse_are_rejected_with_a_reason() {
        let bad_measurement = RowSpec {
            measurement: Template::parse("${m}").unwrap(),
            ..spec()
        };
        let cases: [(&RowSpec, &str, &str); 9] = [
            (&spec(), "[1, 2]", "not a JSON object"),
            (&spec(), "not json", "not JSON"),
            (&spec(), r#"{"gone": null}"#, "no field to write"),
            (
                &spec(),
                r#"{"bad-name": 1}"#,
                "payload field \"bad-name\" cannot be a field name",
            ),
            (&spec(), r#"{"1st": 1}"#, "do not start with a digit"),
            (&spec(), r#"{"x_time": 1}"#, "\"_time\""),
            (&spec(), r#"{"A": 1, "a": 2}"#, "both named \"a\""),
            (
                &bad_measurement,
                r#"{"m": "has space", "v": 1}"#,
                "no spaces",
            ),
            (&bad_measurement, r#"{"m": "", "v": 1}"#, "must be 1 to 128"),
        ];
        for (spec, payload, reason) in cases {
            let err = spec.row(&message(payload)).unwrap_err();
            assert!(err.contains(reason), "{payload}: {err}");
        }
        let mut m = message(r#"{"v": 1}"#);
        m.fields = Fields::from_pairs([("device", "a=b")]);
        assert!(spec().row(&m).unwrap_err().contains("cannot contain"));
        let huge = format!(r#"{{"v": "{}"}}"#, "x".repeat(MAX_VALUE_BYTES + 1));
        assert!(
            spec()
                .row(&message(&huge))
                .unwrap_err()
                .contains("value limit")
        );
    }

    #[test]
    fn batches_are_cut_at_200_rows_and_bad_messages_are_left_out() {
        let mut batch: Vec<Message> = (0..450)
            .map(|i| message(&format!(r#"{{"v": {i}}}"#)))
            .collect();
        batch[7] = message("[]");
        let mut rejected = Vec::new();
        let chunks = spec().encode(&batch, &mut rejected);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].index, 7);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.indices.len()).collect();
        assert_eq!(sizes, [200, 200, 49]);
        assert_eq!(chunks[0].indices[7], 8, "indices skip the rejected message");
        assert_eq!(*chunks[2].indices.last().unwrap(), 449);
    }

    #[test]
    fn requests_stay_under_4_mb_and_an_oversized_row_is_rejected() {
        let big = |n: usize| message(&format!(r#"{{"v": "{}"}}"#, "x".repeat(n)));
        let batch: Vec<Message> = (0..20).map(|_| big(1_500_000)).collect();
        let mut rejected = Vec::new();
        let chunks = spec().encode(&batch, &mut rejected);
        assert!(rejected.is_empty());
        assert_eq!(chunks.iter().map(|c| c.indices.len()).sum::<usize>(), 20);
        for c in &chunks {
            assert!(c.body.len() <= MAX_REQUEST_BYTES, "{}", c.body.len());
        }
        assert_eq!(chunks.len(), 10, "two rows of 1.5 MB per request");
        let many: Vec<(&str, String)> =
            (0..1100).map(|i| ("f", format!("\"f{i}\": {i}"))).collect();
        let wide = format!(
            "{{{}}}",
            many.iter()
                .map(|(_, s)| s.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(
            spec()
                .row(&message(&wide))
                .unwrap_err()
                .contains("over the limit of 1024")
        );
    }

    #[test]
    fn the_request_body_carries_type_crc_mode_and_table_version() {
        let flat = vec![1, 2, 3];
        let body = request_body("t", flat.clone(), MetaUpdateMode::Ignore);
        let decoded = proto::PutTimeseriesDataRequest::decode(body.as_slice()).unwrap();
        assert_eq!(decoded.table_name, "t");
        assert_eq!(decoded.rows_data.r#type, 0);
        assert_eq!(decoded.rows_data.rows_data, flat);
        assert_eq!(
            decoded.rows_data.flatbuffer_crc32c,
            Some(crc32c::crc32c(&flat) as i32)
        );
        assert_eq!(decoded.meta_update_mode, Some(1));
        assert_eq!(decoded.supported_table_version, Some(1));
        // `type = 0` is on the wire (08 00), as the required field must be.
        let rows_at = body.iter().position(|&b| b == 0x12).unwrap();
        assert_eq!(&body[rows_at + 2..rows_at + 4], [0x08, 0x00]);
    }

    /// The encoder as it was before it read payloads into borrowed entries:
    /// a decode into `serde_json::Value`, owned strings, a fresh string
    /// per template. The encoder must accept, reject and type exactly as
    /// this does, with the same reasons.
    mod reference {
        use super::super::*;
        use crate::template::plain;

        pub fn row(spec: &RowSpec, m: &Message) -> Result<Row, String> {
            let json: Json = serde_json::from_slice(&m.payload)
                .map_err(|e| format!("the payload is not JSON: {e}"))?;
            let Json::Object(object) = &json else {
                return Err(
                    "the payload is not a JSON object: its fields become the row's fields".into(),
                );
            };
            let measurement = render(spec, "measurement", &spec.measurement, m, &json)?;
            check_measurement(&measurement)?;
            let data_source = match &spec.data_source {
                Some(t) => render(spec, "data_source", t, m, &json)?,
                None => String::new(),
            };
            check_data_source(&data_source)?;
            let mut tags = Vec::with_capacity(spec.tags.len());
            for (name, template) in &spec.tags {
                let value = render(spec, "tags", template, m, &json)?;
                check_tag(name, &value)?;
                tags.push((name.clone(), value));
            }
            tags.sort();
            let time_us = match &spec.timestamp {
                None => m.timestamp_ms.saturating_mul(1000),
                Some(t) => parse_time(&render(spec, "timestamp", t, m, &json)?)?,
            };
            let mut fields = Vec::with_capacity(object.len());
            let mut add = |key: &str, value: &Json| -> Result<(), String> {
                if let Some(v) = value_of(spec, key, value)? {
                    let name = key.to_ascii_lowercase();
                    check_field_name(&name)
                        .map_err(|why| format!("payload field \"{key}\" {why}"))?;
                    fields.push((name, v));
                }
                Ok(())
            };
            match &spec.fields {
                None => {
                    for (key, value) in object {
                        add(key, value)?;
                    }
                }
                Some(names) => {
                    for key in names {
                        if let Some(value) = object.get(key) {
                            add(key, value)?;
                        }
                    }
                }
            }
            if fields.is_empty() {
                return Err(match &spec.fields {
                    None => {
                        "the payload has no field to write (null values are not written)".into()
                    }
                    Some(names) => format!(
                        "the payload has none of the fields {} (null values are not written)",
                        names.join(", ")
                    ),
                });
            }
            if fields.len() > MAX_FIELDS {
                return Err(format!(
                    "the row has {} fields, over the limit of {MAX_FIELDS}",
                    fields.len()
                ));
            }
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(pair) = fields.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(format!(
                    "two payload fields are both named \"{}\" once lowercased",
                    pair[0].0
                ));
            }
            Ok(Row {
                measurement,
                data_source,
                tags,
                time_us,
                fields,
            })
        }

        fn render(
            spec: &RowSpec,
            what: &str,
            t: &Template,
            m: &Message,
            json: &Json,
        ) -> Result<String, String> {
            let mut out = String::new();
            if spec.undefined_vars_as_null {
                t.render_or_null(m, Some(json), &mut plain, &mut out);
            } else {
                t.render(m, Some(json), &mut plain, &mut out)
                    .map_err(|e| format!("{what}: {e}"))?;
            }
            Ok(out)
        }

        fn value_of(spec: &RowSpec, key: &str, value: &Json) -> Result<Option<FieldValue>, String> {
            let text_type = |text: String| -> Result<FieldValue, String> {
                if text.len() > MAX_VALUE_BYTES {
                    return Err(format!(
                        "field \"{key}\" is {} bytes, over the {MAX_VALUE_BYTES}-byte value limit",
                        text.len()
                    ));
                }
                let as_string = spec.string_fields.contains(key)
                    || (spec.strings == StringType::String && !spec.binary_fields.contains(key));
                Ok(if as_string {
                    FieldValue::String(text)
                } else {
                    FieldValue::Binary(text.into_bytes())
                })
            };
            Ok(Some(match value {
                Json::Null => return Ok(None),
                Json::Bool(b) => FieldValue::Boolean(*b),
                Json::Number(n) => match n.as_i64() {
                    Some(i) if !spec.int_as_double => FieldValue::Long(i),
                    _ => FieldValue::Double(n.as_f64().unwrap_or(f64::NAN)),
                },
                Json::String(s) => text_type(s.clone())?,
                nested => text_type(nested.to_string())?,
            }))
        }
    }

    /// Payloads that probe every corner of reading a payload: escapes,
    /// duplicate and mixed-case keys, nulls, every kind of number, nested
    /// values with unsorted keys, bad names, non-objects, broken JSON.
    const TRICKY: &[&str] = &[
        r#"{"v": 1}"#,
        r#"{"b": 2, "a": 1, "A": 3}"#,
        r#"{"a": 1, "a": 2}"#,
        r#"{"a": 1, "a": null}"#,
        r#"{"a": null, "A": 1}"#,
        r#"{"a": "x", "a": "y", "b": "\u00e9t\u00e9 \"q\" \\ \n"}"#,
        r#"{"k\u0065y": "v", "key": "w"}"#,
        r#"{"n": -9223372036854775808, "p": 9223372036854775807, "u": 9223372036854775808}"#,
        r#"{"f": 1.0, "e": 1e3, "g": -0.0, "h": 1.5e-7, "big": 1e300, "i": 100000000000000000000}"#,
        r#"{"o": {"z": 1, "a": [true, null, "s", {"y": 2, "b": 1}]}, "arr": [], "e": {}}"#,
        r#"{"Temp": 23.5, "hum": 90, "ok": false, "name": "dev", "note": "", "seq": 7}"#,
        r#"{"1st": 1, "x_time": 2, "bad-name": 3, "Upper_tags": 4}"#,
        r#"{"x_time": 1, "bad-name": 2}"#,
        r#"{"device": "d=1", "v": 1}"#,
        r#"{"m": "has space", "v": 1}"#,
        r#"{"m": "", "v": 1}"#,
        r#"{"m": "ok", "src": "s", "t": 5, "v": 1}"#,
        r#"{"m": 7, "src": {"b": 1, "a": [2]}, "t": "12", "v": 1}"#,
        r#"{"m": "x", "src": "s", "t": 6, "o": {"z": "zz", "a": [0, 1, 2, {"y": "Y"}]}, "a": 1}"#,
        r#"{"t": -1, "v": 1}"#,
        r#"{"t": 1.5, "v": 1}"#,
        r#"{"t": "x", "v": 1}"#,
        r#"{"gone": null}"#,
        r#"{}"#,
        r#"  {"spaced" : 1 }  "#,
        r#"{"$serde_json::private::RawValue": "{\"a\": 1}"}"#,
        r#"{"$serde_json::private::RawValue": "[1]"}"#,
        r#"{"a": 1, "$serde_json::private::RawValue": "x"}"#,
        r#"[1, 2]"#,
        r#""text""#,
        r#"12"#,
        r#"null"#,
        "not json",
        r#"{"a": 1"#,
        r#"{"a": 1} x"#,
        r#"{"a": 1,}"#,
        r#"{"a": "\ud800"}"#,
        "",
        r#"{"z": -0, "y": -0.0, "x": 0, "w": -0e3, "v": 0e999999999, "u": 1E+2, "t2": 0.1e1}"#,
        r#"{"a": 1e400}"#,
        r#"{"a": -1e400}"#,
        r#"{"a": 1e-400, "b": 2.2250738585072011e-308, "c": 5e-324, "d": 1.7976931348623157e308}"#,
        r#"{"a": 1.8e308}"#,
        r#"{"a": 0.30000000000000004, "b": 123456789012345678901234567890, "c": -18446744073709551616}"#,
        r#"{"a": -9223372036854775809, "b": 18446744073709551616, "c": 12345678901234567890}"#,
        r#"{"a": 01}"#,
        r#"{"a": 1.}"#,
        r#"{"a": .5}"#,
        r#"{"a": -}"#,
        r#"{"a": +1}"#,
        r#"{"a": 1e}"#,
        r#"{"a": 1.5.2}"#,
        r#"{"a": truex}"#,
        r#"{"a": tru}"#,
        r#"{"a": nul}"#,
        r#"{"a" 1}"#,
        r#"{a: 1}"#,
        r#"{"a": 1 "b": 2}"#,
        "{\"a\": \"tab\there\"}",
        "{\"a\":\t1,\r\n\"b\" :\n2}",
        "\u{feff}{\"a\": 1}",
        r#"{"long": "0123456789abcdef0123456789abcdef\"", "k": "0123456789abcdef0123456789abcdef"}"#,
        r#"{"ünï": "cödé 温度 🌡", "cödé": 1}"#,
    ];

    fn tricky_specs() -> Vec<RowSpec> {
        let t = |s: &str| Template::parse(s).unwrap();
        vec![
            spec(),
            RowSpec {
                measurement: t("${m}"),
                data_source: Some(t("${src}")),
                tags: vec![
                    ("b".into(), t("${o.a.3.y}")),
                    ("a".into(), t("${o.z}")),
                    ("a".into(), t("0")),
                ],
                timestamp: Some(t("${t}")),
                strings: StringType::String,
                binary_fields: BTreeSet::from(["b".into()]),
                ..spec()
            },
            RowSpec {
                measurement: t("m-${payload.m}"),
                undefined_vars_as_null: true,
                data_source: Some(t("${payload}|${nope}/${payload.o.a.3.y}")),
                fields: Some(vec![
                    "a".into(),
                    "A".into(),
                    "key".into(),
                    "a".into(),
                    "v".into(),
                ]),
                int_as_double: true,
                ..spec()
            },
        ]
    }

    #[test]
    fn rows_and_reasons_are_what_a_decode_into_a_json_value_gives() {
        for spec in tricky_specs() {
            for payload in TRICKY {
                let m = message(payload);
                assert_eq!(
                    spec.row(&m),
                    reference::row(&spec, &m),
                    "{payload} with {spec:?}"
                );
            }
        }
    }

    #[test]
    fn payloads_that_are_not_utf_8_are_refused_as_a_json_value_refuses_them() {
        for payload in [&b"{\"a\": \"\xff\"}"[..], b"{\"\xc3\": 1}", b"\xff"] {
            let m = Message::new("t", payload.to_vec(), 0);
            let spec = spec();
            assert_eq!(spec.row(&m), reference::row(&spec, &m), "{payload:?}");
            assert!(spec.row(&m).unwrap_err().contains("not JSON"));
        }
    }

    #[test]
    fn random_payloads_give_the_rows_a_decode_into_a_json_value_gives() {
        let mut next = super::super::random(0x9e37_79b9_7f4a_7c15);
        const KEYS: [&str; 8] = ["a", "B", "b", "m", "src", "t", "o", "k\\u0031"];
        const VALUES: [&str; 20] = [
            "1",
            "-2",
            "3.25",
            "true",
            "null",
            r#""s""#,
            r#""\t\u00e9""#,
            r#"{"y": 1, "x": [2]}"#,
            "[]",
            "1e2",
            r#""a b""#,
            "18446744073709551615",
            "-0",
            "0.1",
            "-1.5e-3",
            "9007199254740993",
            "1.00000000000000011102230246251565",
            "4.9e-324",
            r#""é""#,
            "-9223372036854775808",
        ];
        let specs = tricky_specs();
        for _ in 0..3000 {
            let n = next(6);
            let body: Vec<String> = (0..n)
                .map(|_| {
                    format!(
                        r#""{}": {}"#,
                        KEYS[next(8) as usize],
                        VALUES[next(20) as usize]
                    )
                })
                .collect();
            let payload = format!("{{{}}}", body.join(", "));
            let m = message(&payload);
            for spec in &specs {
                assert_eq!(spec.row(&m), reference::row(spec, &m), "{payload}");
            }
        }
    }

    #[test]
    fn reused_buffers_give_the_bytes_of_fresh_ones_request_after_request() {
        // Batches of mixed messages, some rejected, over several requests:
        // each body equals one written afresh from the reference rows.
        for spec in tricky_specs() {
            let batch: Vec<Message> = (0..450)
                .map(|i| message(TRICKY[i % TRICKY.len()]))
                .collect();
            let mut rejected = Vec::new();
            let chunks = spec.encode(&batch, &mut rejected);
            let expected_rejected: Vec<usize> = batch
                .iter()
                .enumerate()
                .filter(|(_, m)| reference::row(&spec, m).is_err())
                .map(|(i, _)| i)
                .collect();
            assert_eq!(
                rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
                expected_rejected
            );
            assert!(!chunks.is_empty());
            for chunk in &chunks {
                let rows: Vec<Row> = chunk
                    .indices
                    .iter()
                    .map(|&i| reference::row(&spec, &batch[i]).unwrap())
                    .collect();
                let fresh = request_body(
                    &spec.table,
                    flat_rows(rows.iter(), rows.len()),
                    spec.meta_update_mode,
                );
                assert_eq!(chunk.body.as_ref(), fresh.as_slice());
            }
        }
    }

    #[test]
    fn crc32c_matches_the_check_value() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }
}
