//! The `null` sink: accepts everything and writes nothing.
//!
//! For benchmarks and for rules whose only purpose is a side effect of a
//! plugin: it runs on the shared driver like every other sink, so batching,
//! buffering and acknowledgement cost the same as for a real one. Output
//! format: none; a write counts the messages and their payload bytes.

mod encode;
mod sink;

pub use encode::Counted;
pub use sink::NullSink;
