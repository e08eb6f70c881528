//! The `console` sink: one line per message on stdout.
//!
//! # Output format
//!
//! - `format = "line"` (default), for people:
//!
//!   ```text
//!   2026-11-21T01:02:03.456Z devices/d1/temp_hum {"temp":31} device=d1
//!   ```
//!
//!   the message's timestamp (RFC 3339, UTC, milliseconds), its topic, its
//!   payload as text (invalid UTF-8 replaced by U+FFFD; CR and LF written as
//!   `\r` and `\n` so one message stays one line), then its fields as
//!   `name=value` (values with spaces, quotes or `=` are quoted);
//! - `format = "json"`: the JSON Lines record of the `file` sink
//!   (`{"topic","payload"|"payload_text","ts","fields"}`);
//! - `template = "..."`: the template rendered with plain escaping (strings
//!   as they are, JSON compact); a message whose template has an undefined
//!   variable fails alone unless `undefined_vars_as_null` is set.
//!
//! A batch is written with one locked write to stdout and flushed.

mod encode;
mod sink;

pub use encode::Layout;
pub use sink::ConsoleSink;
