//! The `tablestore` sink: rows into an Alibaba Cloud Tablestore
//! timeseries table, with `PutTimeseriesData`.
//!
//! # Wire protocol
//!
//! Every call is `POST <endpoint>/<Action>` with a proto2 body and the
//! `x-ots-*` headers: `x-ots-date` (UTC, milliseconds), `x-ots-apiversion:
//! 2015-12-31`, `x-ots-accesskeyid`, `x-ots-instancename`,
//! `x-ots-contentmd5` (Base64 MD5 of the body), `x-ots-ststoken` with STS
//! credentials, and `x-ots-signature`: V2, Base64 HMAC-SHA1 with the
//! AccessKey secret over `/<Action>\nPOST\n\n` and every `x-ots-*` header
//! sent, sorted, as `name:value\n` ([`sign`]). Each call is signed when it
//! is sent, so a retry carries a fresh date. The response must carry an
//! `x-ots-contentmd5` that matches its body and an `authorization: OTS
//! <id>:<sig>` signed with the same secret; a response that fails either
//! check is not trusted (and the write is retried).
//!
//! `PutTimeseriesDataRequest` ([`proto`]) holds the table name,
//! `supported_table_version = 1`, the `meta_update_mode`, and
//! `TimeseriesRows { type = RST_FLAT_BUFFER (always serialized), rows_data,
//! flatbuffer_crc32c }` where `rows_data` is a FlatBuffer `FlatBufferRows`
//! (no file identifier) and the checksum is CRC-32C of those bytes, bit-cast
//! to i32. The rows are laid out as the official SDKs lay them out
//! ([`encode`]): one row group per row, named by the row's measurement;
//! fields sorted by name, `field_names[i]`/`field_types[i]` describing
//! field *i* and each value in the typed vector of its type, in field
//! order; empty typed vectors left out; tags as a `tag_list` of
//! `Tag { name, value }` sorted by name (written even when empty), the
//! legacy `tags` string empty; `data_source` always written (`""` when
//! there is none); `time` in microseconds. Unlike the SDKs, weir writes
//! what a request repeats once and points every row that has it there:
//! texts (field names, measurements, data sources, tags), and a row's
//! `field_names`, `field_types` and `tag_list` when they are the previous
//! row's ([`encode`], with the `flatbuffers` crate's builder). FlatBuffers
//! readers follow such offsets like any other, so the bytes differ from
//! the SDKs' and the decoded rows do not.
//!
//! # Rows
//!
//! - `measurement`, `data_source` and each tag value are templates;
//!   fields are the payload's top-level JSON fields (or the ones listed in
//!   `fields`). Names are lowercased, as the service requires.
//! - Types: `true`/`false` → BOOLEAN; integers → LONG (DOUBLE with
//!   `int_as_double`); other numbers → DOUBLE; strings, and nested objects
//!   and arrays written as compact JSON, → BINARY unless listed in
//!   `string_fields` or `strings = "string"` (then STRING unless listed in
//!   `binary_fields`); `null` is not written.
//! - **Strings default to BINARY**, as in EMQX 4.4's Tablestore action
//!   (the seed scenario this sink was built for): rows written by weir
//!   have the column types such a deployment already has. EMQX 5 stores
//!   strings as STRING; `strings = "string"` does the same.
//! - `timestamp` renders to whole microseconds; without it the row's time
//!   is the message's arrival time, whose resolution is one millisecond —
//!   two messages of one timeseries in the same millisecond are the same
//!   point, and the second overwrites the first. Send a timestamp field
//!   when that matters.
//!
//! # Limits and failures
//!
//! A request holds at most 200 rows and stays under 4 MB; larger batches
//! are cut into several requests. A message that cannot be a valid row
//! (not a JSON object, a name or value the service refuses) is rejected
//! alone with a reason. Retried: throttling codes (`OTSServerBusy`, …),
//! `OTSTimeout`, `OTSInternalServerError`, `OTSServerUnavailable`, other
//! 5xx, timeouts, connection failures and untrustworthy answers (a rewrite
//! is an upsert of the same point). Never retried: parameter and
//! authorization errors; a whole batch refused with `OTSParameterInvalid`
//! is bisected by the driver down to the bad row. Rows listed in a 200's
//! `failed_rows` are retried or dead-lettered alone, by their code.
//!
//! At start-up the table is described (`DescribeTimeseriesTable`); with
//! `auto_create` a missing table is created first. Wrong credentials stop
//! `weir run` with the service's reason (e.g. `Signature mismatch`).
//!
//! What this module must never do: log or print the AccessKey secret or the
//! STS token, or send a request over the service's limits.

pub mod client;
pub mod encode;
mod payload;
pub mod proto;
pub mod sign;
mod sink;

pub use client::{Client, ClientSettings, OtsError};
pub use encode::{Chunk, FieldValue, Row, RowSpec};
pub use sink::TablestoreSink;

/// A small deterministic generator for the randomised tests: each call
/// gives a number below its argument (xorshift64).
#[cfg(test)]
fn random(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    }
}
