//! weir: an edge stream processor. It subscribes to MQTT topics, runs
//! user-supplied WebAssembly transforms over batches of messages, and writes
//! the results to TDengine, Tablestore, MQTT, files or the console.
//!
//! # Layout
//!
//! - [`message`]: the message every stage passes on, and its field sets.
//! - [`engine`]: the WebAssembly plugin runtime — one wasmtime engine, the
//!   compiled-component cache, instances with memory and CPU caps, trap
//!   recovery.
//! - [`telemetry`]: metric names, and the helpers that log and count a
//!   runtime event together.
//! - [`cli`]: the `weir` command line.

pub mod cli;
pub mod engine;
pub mod message;
pub mod telemetry;

pub use message::{Fields, Message};
