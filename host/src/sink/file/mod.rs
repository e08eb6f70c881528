//! The `file` sink: JSON Lines files with size-based rotation.
//!
//! # Output format
//!
//! One JSON object per message, one message per line (`\n`-terminated),
//! the shape `weir plugin test` prints (without its `line` key), so a file
//! sink's output can be fed back to `weir plugin test --input`:
//!
//! ```text
//! {"topic":"devices/d1/temp_hum","payload":{"temp":31},"ts":1700000000123,"fields":{"device":"d1"}}
//! {"topic":"raw/x","payload_text":"not json","ts":1700000000124}
//! ```
//!
//! - `payload`: the payload as JSON when it parses as JSON (re-serialized
//!   compactly, so a pretty-printed payload still takes one line);
//! - `payload_text`: otherwise, the payload as text (invalid UTF-8 replaced
//!   by U+FFFD); an empty payload is `"payload_text":""`;
//! - `ts`: milliseconds since the Unix epoch;
//! - `fields`: topic captures and plugin-set fields, left out when empty.
//!
//! # Rotation
//!
//! Before a line would take the file past `max_file_bytes`, the file is
//! closed and renamed: `path` → `path.1`, `path.1` → `path.2`, …, up to
//! `path.<max_files>`; the oldest beyond that is deleted (`max_files = 0`
//! keeps no old file). Lines are never split across files; a line larger
//! than `max_file_bytes` gets a file of its own.
//!
//! # Durability
//!
//! A batch is written and flushed to the operating system before its
//! messages are acknowledged: it survives a crash of weir, not a power cut
//! (no fsync per batch; edge gateways often write to flash). A write that
//! fails half-way truncates the file back to where the batch started, so a
//! retry never leaves a torn line behind.

mod encode;
mod sink;

pub use encode::Lines;
pub(crate) use encode::write_record;
pub use sink::{FileError, FileSink};
