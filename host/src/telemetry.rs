//! Metric names, and the helpers that log and count a runtime event together.
//!
//! Every metric weir records is named here, once. A runtime error goes
//! through one helper that writes the log line and bumps the counter, so the
//! two never disagree. This module never decides anything; it only reports.

use metrics::counter;

/// Records handed to a plugin. Labels: `plugin`.
pub const PLUGIN_RECORDS_IN: &str = "weir_plugin_records_in_total";
/// Records a plugin emitted. Labels: `plugin`.
pub const PLUGIN_RECORDS_OUT: &str = "weir_plugin_records_out_total";
/// Records a plugin failed. Labels: `plugin`, `kind` (see
/// [`crate::engine::FailureKind::as_str`]).
pub const PLUGIN_FAILURES: &str = "weir_plugin_failures_total";
/// Plugin instances rebuilt after a trap, deadline or memory-cap hit.
/// Labels: `plugin`.
pub const PLUGIN_RESTARTS: &str = "weir_plugin_restarts_total";
/// Component loads. Labels: `outcome` = `memory`, `disk` or `compiled`.
pub const PLUGIN_LOADS: &str = "weir_plugin_loads_total";

/// Logs and counts records a plugin failed.
pub fn plugin_failed(plugin: &str, kind: &'static str, records: usize, reason: &str) {
    tracing::warn!(plugin, kind, records, reason, "Plugin failed records.");
    counter!(PLUGIN_FAILURES, "plugin" => plugin.to_owned(), "kind" => kind)
        .increment(records as u64);
}

/// Logs and counts the rebuild of a plugin instance.
pub fn plugin_restarted(plugin: &str, cause: &'static str) {
    tracing::info!(plugin, cause, "Rebuilt plugin instance.");
    counter!(PLUGIN_RESTARTS, "plugin" => plugin.to_owned()).increment(1);
}

/// Counts records through a plugin.
pub fn plugin_records(plugin: &str, records_in: usize, records_out: usize) {
    counter!(PLUGIN_RECORDS_IN, "plugin" => plugin.to_owned()).increment(records_in as u64);
    counter!(PLUGIN_RECORDS_OUT, "plugin" => plugin.to_owned()).increment(records_out as u64);
}

/// Logs and counts how a component was loaded.
pub fn component_loaded(path: &str, outcome: &'static str, millis: f64) {
    tracing::debug!(path, outcome, millis, "Loaded component.");
    counter!(PLUGIN_LOADS, "outcome" => outcome).increment(1);
}
