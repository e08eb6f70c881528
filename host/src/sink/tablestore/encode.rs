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

use std::collections::BTreeSet;

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use prost::Message as _;
use serde_json::Value as Json;

use super::proto;
use crate::config::{MetaUpdateMode, StringType};
use crate::message::Message;
use crate::sink::Rejected;
use crate::template::{Template, plain};

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

impl FieldValue {
    fn data_type(&self) -> DataType {
        match self {
            FieldValue::Long(_) => DataType::Long,
            FieldValue::Boolean(_) => DataType::Boolean,
            FieldValue::Double(_) => DataType::Double,
            FieldValue::String(_) => DataType::String,
            FieldValue::Binary(_) => DataType::Binary,
        }
    }
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

impl Row {
    /// An upper bound of the bytes this row adds to a FlatBuffer.
    fn size_bound(&self) -> usize {
        const ROW: usize = 256;
        const ITEM: usize = 40;
        let text = |s: &str| s.len() + ITEM;
        let mut n = ROW + text(&self.measurement) + text(&self.data_source);
        for (k, v) in &self.tags {
            n += text(k) + text(v) + ITEM;
        }
        for (name, value) in &self.fields {
            n += text(name)
                + match value {
                    FieldValue::String(s) => text(s),
                    FieldValue::Binary(b) => b.len() + 2 * ITEM,
                    _ => 16,
                };
        }
        n
    }
}

impl RowSpec {
    /// Encodes `batch` into requests of at most [`MAX_ROWS`] rows and
    /// [`MAX_REQUEST_BYTES`] bytes; messages that cannot be rows are pushed
    /// to `rejected`.
    pub fn encode(&self, batch: &[Message], rejected: &mut Vec<Rejected>) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        let mut rows: Vec<(usize, Row)> = Vec::with_capacity(batch.len().min(MAX_ROWS));
        let mut bytes = 0;
        let budget = MAX_REQUEST_BYTES - 512 - self.table.len();
        for (index, message) in batch.iter().enumerate() {
            let row = match self.row(message) {
                Ok(row) => row,
                Err(reason) => {
                    rejected.push(Rejected { index, reason });
                    continue;
                }
            };
            let size = row.size_bound();
            if size > budget {
                rejected.push(Rejected {
                    index,
                    reason: format!(
                        "the row would take about {size} bytes, over the {MAX_REQUEST_BYTES}-byte request limit"
                    ),
                });
                continue;
            }
            if rows.len() == MAX_ROWS || bytes + size > budget {
                chunks.push(self.chunk(&rows));
                rows.clear();
                bytes = 0;
            }
            bytes += size;
            rows.push((index, row));
        }
        if !rows.is_empty() {
            chunks.push(self.chunk(&rows));
        }
        chunks
    }

    fn chunk(&self, rows: &[(usize, Row)]) -> Chunk {
        let flat = flat_rows(rows.iter().map(|(_, r)| r), rows.len());
        let body = request_body(&self.table, flat, self.meta_update_mode);
        Chunk {
            body: Bytes::from(body),
            indices: rows.iter().map(|(i, _)| *i).collect(),
        }
    }

    /// The row of one message, or why there is none.
    pub fn row(&self, m: &Message) -> Result<Row, String> {
        let json: Json = serde_json::from_slice(&m.payload)
            .map_err(|e| format!("the payload is not JSON: {e}"))?;
        let Json::Object(object) = &json else {
            return Err(
                "the payload is not a JSON object: its fields become the row's fields".into(),
            );
        };

        let measurement = self.render("measurement", &self.measurement, m, &json)?;
        check_measurement(&measurement)?;
        let data_source = match &self.data_source {
            Some(t) => self.render("data_source", t, m, &json)?,
            None => String::new(),
        };
        check_data_source(&data_source)?;
        let mut tags = Vec::with_capacity(self.tags.len());
        for (name, template) in &self.tags {
            let value = self.render("tags", template, m, &json)?;
            check_tag(name, &value)?;
            tags.push((name.clone(), value));
        }
        tags.sort();

        let time_us = match &self.timestamp {
            None => m.timestamp_ms.saturating_mul(1000),
            Some(t) => {
                let text = self.render("timestamp", t, m, &json)?;
                parse_time(&text)?
            }
        };

        let mut fields = Vec::with_capacity(object.len());
        let mut add = |key: &str, value: &Json| -> Result<(), String> {
            if let Some(v) = self.value(key, value)? {
                fields.push((field_name(key)?, v));
            }
            Ok(())
        };
        match &self.fields {
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
            return Err(match &self.fields {
                None => "the payload has no field to write (null values are not written)".into(),
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

    fn render(&self, what: &str, t: &Template, m: &Message, json: &Json) -> Result<String, String> {
        let mut out = String::new();
        if self.undefined_vars_as_null {
            t.render_or_null(m, Some(json), &mut plain, &mut out);
        } else {
            t.render(m, Some(json), &mut plain, &mut out)
                .map_err(|e| format!("{what}: {e}"))?;
        }
        Ok(out)
    }

    /// The typed value of a payload field; `None` for null (not written).
    fn value(&self, key: &str, value: &Json) -> Result<Option<FieldValue>, String> {
        let text_type = |text: String| -> Result<FieldValue, String> {
            if text.len() > MAX_VALUE_BYTES {
                return Err(format!(
                    "field \"{key}\" is {} bytes, over the {MAX_VALUE_BYTES}-byte value limit",
                    text.len()
                ));
            }
            let as_string = self.string_fields.contains(key)
                || (self.strings == StringType::String && !self.binary_fields.contains(key));
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
                Some(i) if !self.int_as_double => FieldValue::Long(i),
                _ => FieldValue::Double(n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => text_type(s.clone())?,
            nested => text_type(nested.to_string())?,
        }))
    }
}

/// A payload key as a field name: lowercased (the service's names are
/// lowercase), then checked.
fn field_name(key: &str) -> Result<String, String> {
    let name = key.to_ascii_lowercase();
    check_field_name(&name).map_err(|why| format!("payload field \"{key}\" {why}"))?;
    Ok(name)
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
    if let Some(r) = RESERVED_FIELD_NAMES.iter().find(|r| name.contains(*r)) {
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

/// The `FlatBufferRows` of `rows`: one row group per row, as the SDKs do.
pub fn flat_rows<'r>(rows: impl Iterator<Item = &'r Row>, count: usize) -> Vec<u8> {
    // vtable slot n is at voffset 4 + 2n.
    const fn slot(n: u16) -> u16 {
        4 + 2 * n
    }
    let mut fbb = FlatBufferBuilder::with_capacity(384 * count.max(1));
    let mut groups = Vec::with_capacity(count);
    // Scratch space reused row after row.
    let mut names = Vec::new();
    let mut types = Vec::new();
    let mut longs = Vec::new();
    let mut bools = Vec::new();
    let mut doubles = Vec::new();
    let mut strings = Vec::new();
    let mut binaries = Vec::new();
    let mut tags = Vec::new();
    for row in rows {
        let measurement = fbb.create_string(&row.measurement);
        names.clear();
        names.extend(row.fields.iter().map(|(n, _)| fbb.create_string(n)));
        let field_names = fbb.create_vector(&names);
        types.clear();
        types.extend(row.fields.iter().map(|(_, v)| v.data_type() as u8));
        let field_types = fbb.create_vector(&types);

        longs.clear();
        bools.clear();
        doubles.clear();
        strings.clear();
        binaries.clear();
        for (_, value) in &row.fields {
            match value {
                FieldValue::Long(v) => longs.push(*v),
                FieldValue::Boolean(v) => bools.push(*v),
                FieldValue::Double(v) => doubles.push(*v),
                FieldValue::String(v) => strings.push(fbb.create_string(v)),
                FieldValue::Binary(v) => {
                    let bytes = fbb.create_vector(v.as_slice());
                    let start = fbb.start_table();
                    fbb.push_slot_always(slot(0), bytes);
                    binaries.push(fbb.end_table(start));
                }
            }
        }
        // Empty typed vectors are left out, as the SDKs do.
        let longs_at = (!longs.is_empty()).then(|| fbb.create_vector(&longs));
        let bools_at = (!bools.is_empty()).then(|| fbb.create_vector(&bools));
        let doubles_at = (!doubles.is_empty()).then(|| fbb.create_vector(&doubles));
        let strings_at = (!strings.is_empty()).then(|| fbb.create_vector(&strings));
        let binaries_at = (!binaries.is_empty()).then(|| fbb.create_vector(&binaries));
        let start = fbb.start_table();
        if let Some(v) = longs_at {
            fbb.push_slot_always(slot(0), v);
        }
        if let Some(v) = bools_at {
            fbb.push_slot_always(slot(1), v);
        }
        if let Some(v) = doubles_at {
            fbb.push_slot_always(slot(2), v);
        }
        if let Some(v) = strings_at {
            fbb.push_slot_always(slot(3), v);
        }
        if let Some(v) = binaries_at {
            fbb.push_slot_always(slot(4), v);
        }
        let values = fbb.end_table(start);

        let data_source = fbb.create_string(&row.data_source);
        let legacy_tags = fbb.create_string("");
        tags.clear();
        for (k, v) in &row.tags {
            let name = fbb.create_string(k);
            let value = fbb.create_string(v);
            let start = fbb.start_table();
            fbb.push_slot_always(slot(0), name);
            fbb.push_slot_always(slot(1), value);
            tags.push(fbb.end_table(start));
        }
        let tag_list = fbb.create_vector(&tags);
        let start = fbb.start_table();
        fbb.push_slot_always(slot(0), data_source);
        fbb.push_slot_always(slot(1), legacy_tags);
        fbb.push_slot_always(slot(2), row.time_us);
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
    let groups = fbb.create_vector(&groups);
    let start = fbb.start_table();
    fbb.push_slot_always(slot(0), groups);
    let root = fbb.end_table(start);
    // No file identifier: the SDKs finish without one.
    fbb.finish_minimal(root);
    fbb.finished_data().to_vec()
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

    #[test]
    fn crc32c_matches_the_check_value() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }
}
