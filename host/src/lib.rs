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
//! - [`template`]: `${...}` templates for topics, payloads and statements.
//! - [`ack`]: at-least-once bookkeeping — when a source message may be acked.
//! - [`source`]: the MQTT connection, subscriptions and ordered acknowledgements.
//! - [`pipeline`]: wiring — router, rule queues and workers, sinks, shutdown.
//! - [`tls`]: rustls settings for `mqtts://` connections.
//! - [`sink`]: the `Sink` trait, the one driver every sink runs on (batching,
//!   retries, buffer, acks, dead letters), and the built-in sinks.
//! - [`config`]: the manifest — parsed, validated (every problem at once),
//!   resolved into the model the pipeline runs from.
//! - [`rule`]: topic filters with named captures, and routing to rules.
//! - `broker`: the embedded MQTT broker (rumqttd), feature `embedded-broker`.
//! - [`health`]: the health registry — which rules, sinks and plugins run,
//!   and whether they are well.
//! - [`http`]: the HTTP endpoint, `/metrics` (Prometheus) and `/health`.
//! - [`reload`]: hot reload — file watching, plugin swaps at batch
//!   boundaries with state carried over, manifest diffs.
//! - [`window`]: windows for aggregation — time, watermarks, lateness,
//!   assignment, the cap on open windows; drives aggregate plugins.

pub mod ack;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod cli;
pub mod config;
pub mod engine;
pub mod health;
pub mod http;
pub mod message;
pub mod pipeline;
pub mod reload;
pub mod rule;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod template;
pub mod tls;
pub mod window;

pub use message::{Fields, Message};
