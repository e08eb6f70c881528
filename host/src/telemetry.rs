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

/// The per-batch counters of one plugin instance, registered once (a
/// lookup by name and labels costs more than the count).
pub struct PluginMetrics {
    records_in: metrics::Counter,
    records_out: metrics::Counter,
}

impl PluginMetrics {
    /// The handles of plugin `plugin`.
    pub fn new(plugin: &str) -> Self {
        PluginMetrics {
            records_in: counter!(PLUGIN_RECORDS_IN, "plugin" => plugin.to_owned()),
            records_out: counter!(PLUGIN_RECORDS_OUT, "plugin" => plugin.to_owned()),
        }
    }

    /// Counts the records of one batch in and out.
    pub fn records(&self, records_in: usize, records_out: usize) {
        self.records_in.increment(records_in as u64);
        self.records_out.increment(records_out as u64);
    }
}

/// Logs and counts how a component was loaded.
pub fn component_loaded(path: &str, outcome: &'static str, millis: f64) {
    tracing::debug!(path, outcome, millis, "Loaded component.");
    counter!(PLUGIN_LOADS, "outcome" => outcome).increment(1);
}

/// Messages received from the broker. No labels.
pub const SOURCE_MESSAGES: &str = "weir_source_messages_total";
/// Payload bytes received from the broker. No labels.
pub const SOURCE_BYTES: &str = "weir_source_bytes_total";
/// Messages the source dropped. Labels: `reason`.
pub const SOURCE_DROPPED: &str = "weir_source_dropped_total";
/// Source errors. Labels: `kind`.
pub const SOURCE_ERRORS: &str = "weir_source_errors_total";
/// 1 while connected to the broker, else 0.
pub const SOURCE_CONNECTED: &str = "weir_source_connected";
/// Messages a rule took in. Labels: `rule`.
pub const RULE_MESSAGES_IN: &str = "weir_rule_messages_in_total";
/// Messages a rule handed to its sinks (per message, not per sink). Labels: `rule`.
pub const RULE_MESSAGES_OUT: &str = "weir_rule_messages_out_total";
/// Messages a rule could not process. Labels: `rule`, `kind`.
pub const RULE_ERRORS: &str = "weir_rule_errors_total";
/// Messages a rule dropped. Labels: `rule`, `reason`.
pub const RULE_DROPPED: &str = "weir_rule_dropped_total";
/// Time a rule takes for one batch, seconds. Labels: `rule`.
pub const RULE_BATCH_SECONDS: &str = "weir_rule_batch_seconds";

/// The source's per-message counters, registered once.
pub struct SourceMetrics {
    messages: metrics::Counter,
    bytes: metrics::Counter,
}

/// The handles (made after the recorder is installed).
impl Default for SourceMetrics {
    fn default() -> Self {
        SourceMetrics {
            messages: counter!(SOURCE_MESSAGES),
            bytes: counter!(SOURCE_BYTES),
        }
    }
}

impl SourceMetrics {
    /// Counts a message received from the broker.
    pub fn received(&self, bytes: usize) {
        self.messages.increment(1);
        self.bytes.increment(bytes as u64);
    }
}

/// Logs and counts a message the source dropped.
pub fn source_dropped(reason: &'static str) {
    static LOG: Throttle = Throttle::new();
    if let Some(dropped) = LOG.admit() {
        tracing::warn!(
            reason,
            dropped,
            "Source dropped QoS 0 messages; logged at most once a second, counted in {SOURCE_DROPPED}."
        );
    }
    counter!(SOURCE_DROPPED, "reason" => reason).increment(1);
}

/// Logs and counts a source error.
pub fn source_error(kind: &'static str, error: &str, message: &'static str) {
    tracing::error!(kind, error, "{message}");
    counter!(SOURCE_ERRORS, "kind" => kind).increment(1);
}

/// Records whether the source is connected.
pub fn source_connected(connected: bool) {
    metrics::gauge!(SOURCE_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

/// The per-batch metrics of one rule, registered once.
pub struct RuleMetrics {
    messages_in: metrics::Counter,
    messages_out: metrics::Counter,
    batch_seconds: metrics::Histogram,
}

impl RuleMetrics {
    /// The handles of rule `rule`.
    pub fn new(rule: &str) -> Self {
        RuleMetrics {
            messages_in: counter!(RULE_MESSAGES_IN, "rule" => rule.to_owned()),
            messages_out: counter!(RULE_MESSAGES_OUT, "rule" => rule.to_owned()),
            batch_seconds: metrics::histogram!(RULE_BATCH_SECONDS, "rule" => rule.to_owned()),
        }
    }

    /// Counts messages a rule took from its queue.
    pub fn received(&self, n: usize) {
        self.messages_in.increment(n as u64);
    }

    /// Counts messages a rule handed to its sinks.
    pub fn emitted(&self, n: usize) {
        self.messages_out.increment(n as u64);
    }

    /// Records how long a batch took through a rule.
    pub fn latency(&self, elapsed: std::time::Duration) {
        self.batch_seconds.record(elapsed.as_secs_f64());
    }
}

/// Logs and counts a message a rule dropped.
pub fn rule_dropped(rule: &str, reason: &'static str) {
    static LOG: Throttle = Throttle::new();
    if let Some(dropped) = LOG.admit() {
        tracing::warn!(
            rule,
            reason,
            dropped,
            "Rule dropped QoS 0 messages; logged at most once a second, counted in {RULE_DROPPED}."
        );
    }
    counter!(RULE_DROPPED, "rule" => rule.to_owned(), "reason" => reason).increment(1);
}

/// Logs and counts a message a rule could not process.
pub fn rule_error(rule: &str, topic: &str, kind: &'static str, step: Option<&str>, reason: &str) {
    tracing::warn!(
        rule,
        topic,
        kind,
        step,
        reason,
        "Rule could not process a message."
    );
    counter!(RULE_ERRORS, "rule" => rule.to_owned(), "kind" => kind).increment(1);
}

/// Messages handed to a sink. Labels: `sink`.
pub const SINK_MESSAGES_IN: &str = "weir_sink_messages_in_total";
/// Messages a sink wrote. Labels: `sink`.
pub const SINK_MESSAGES_WRITTEN: &str = "weir_sink_messages_written_total";
/// Messages a sink gave up on and handed to its dead-letter sink. Labels:
/// `sink`, `reason`.
pub const SINK_MESSAGES_DEAD_LETTERED: &str = "weir_sink_messages_dead_lettered_total";
/// Messages a sink gave up on and dropped (no dead-letter sink). Labels:
/// `sink`, `reason`.
pub const SINK_MESSAGES_DROPPED: &str = "weir_sink_messages_dropped_total";
/// Writes that succeeded (fully or partly). Labels: `sink`.
pub const SINK_BATCHES: &str = "weir_sink_batches_total";
/// Writes retried after a retryable failure. Labels: `sink`.
pub const SINK_RETRIES: &str = "weir_sink_retries_total";
/// Write and encode failures. Labels: `sink`, `class` = `retryable`,
/// `permanent` or `encode`.
pub const SINK_ERRORS: &str = "weir_sink_errors_total";
/// Time one write took, seconds (failed writes included). Labels: `sink`.
pub const SINK_WRITE_SECONDS: &str = "weir_sink_write_seconds";
/// Bytes buffered by a sink's driver, waiting or in flight. Labels: `sink`.
pub const SINK_BUFFERED_BYTES: &str = "weir_sink_buffered_bytes";
/// Connections of a sink to its service that failed or were lost. Labels:
/// `sink`.
pub const SINK_CONNECTION_ERRORS: &str = "weir_sink_connection_errors_total";

/// One sink's metric handles, resolved once, and the helpers that log and
/// count its runtime events together.
#[derive(Clone)]
pub struct SinkMetrics {
    sink: std::sync::Arc<str>,
    messages_in: metrics::Counter,
    written: metrics::Counter,
    batches: metrics::Counter,
    retries: metrics::Counter,
    write_seconds: metrics::Histogram,
    buffered_bytes: metrics::Gauge,
}

impl SinkMetrics {
    /// The handles of sink `sink`.
    pub fn new(sink: &str) -> Self {
        let label = sink.to_owned();
        SinkMetrics {
            sink: sink.into(),
            messages_in: counter!(SINK_MESSAGES_IN, "sink" => label.clone()),
            written: counter!(SINK_MESSAGES_WRITTEN, "sink" => label.clone()),
            batches: counter!(SINK_BATCHES, "sink" => label.clone()),
            retries: counter!(SINK_RETRIES, "sink" => label.clone()),
            write_seconds: metrics::histogram!(SINK_WRITE_SECONDS, "sink" => label.clone()),
            buffered_bytes: metrics::gauge!(SINK_BUFFERED_BYTES, "sink" => label),
        }
    }

    /// Counts a message handed to the sink.
    pub fn received(&self, bytes: usize) {
        self.messages_in.increment(1);
        self.buffered_bytes.increment(bytes as f64);
    }

    /// Counts bytes leaving the sink's buffer.
    pub fn released(&self, bytes: usize) {
        self.buffered_bytes.decrement(bytes as f64);
    }

    /// Counts a successful write of `messages` messages.
    pub fn written(&self, messages: usize) {
        self.batches.increment(1);
        self.written.increment(messages as u64);
    }

    /// Records how long a write took.
    pub fn write_latency(&self, elapsed: std::time::Duration) {
        self.write_seconds.record(elapsed.as_secs_f64());
    }

    /// Logs and counts a failed write (or a failed part of one) before the
    /// driver retries it, bisects it or gives up on it.
    pub fn write_failed(&self, class: &'static str, messages: usize, reason: &str) {
        tracing::warn!(sink = %self.sink, class, messages, reason, "Sink write failed.");
        counter!(SINK_ERRORS, "sink" => self.sink.to_string(), "class" => class)
            .increment(messages as u64);
    }

    /// Logs and counts messages the sink could not encode (each is given up
    /// on afterwards).
    pub fn encode_failed(&self, messages: usize, reason: &str) {
        tracing::warn!(sink = %self.sink, messages, reason, "Sink could not encode messages.");
        counter!(SINK_ERRORS, "sink" => self.sink.to_string(), "class" => "encode")
            .increment(messages as u64);
    }

    /// Counts a retry.
    pub fn retried(&self, attempt: u32, delay: std::time::Duration) {
        tracing::debug!(sink = %self.sink, attempt, delay_ms = delay.as_millis() as u64, "Retrying write.");
        self.retries.increment(1);
    }

    /// Logs and counts messages given up on: handed to the dead-letter sink
    /// `dead_letter`, or dropped when there is none.
    pub fn gave_up(&self, reason: &'static str, messages: usize, dead_letter: Option<&str>) {
        match dead_letter {
            Some(dead_letter) => {
                tracing::warn!(sink = %self.sink, reason, messages, dead_letter, "Sink gave up on messages; sending them to the dead-letter sink.");
                counter!(SINK_MESSAGES_DEAD_LETTERED, "sink" => self.sink.to_string(), "reason" => reason)
                    .increment(messages as u64);
            }
            None => {
                tracing::error!(sink = %self.sink, reason, messages, "Sink gave up on messages and dropped them.");
                counter!(SINK_MESSAGES_DROPPED, "sink" => self.sink.to_string(), "reason" => reason)
                    .increment(messages as u64);
            }
        }
    }

    /// Logs and counts messages given up on whose dead-letter sink was
    /// already closed: they stay unacknowledged, for redelivery.
    pub fn dead_letter_closed(&self, messages: usize) {
        tracing::error!(sink = %self.sink, messages, "Dead-letter sink is closed; the messages stay unacknowledged.");
        counter!(SINK_MESSAGES_DROPPED, "sink" => self.sink.to_string(), "reason" => "dead_letter_closed")
            .increment(messages as u64);
    }

    /// Logs and counts a lost or failed connection to the sink's service.
    /// `first` is false for repeated failures of one outage, which are
    /// counted but logged at debug level only.
    pub fn connection_failed(&self, reason: &str, first: bool) {
        if first {
            tracing::warn!(sink = %self.sink, reason, "Sink lost its connection; reconnecting.");
        } else {
            tracing::debug!(sink = %self.sink, reason, "Sink reconnect failed.");
        }
        counter!(SINK_CONNECTION_ERRORS, "sink" => self.sink.to_string()).increment(1);
    }

    /// Logs a (re)established connection.
    pub fn connected(&self) {
        tracing::info!(sink = %self.sink, "Sink connected.");
    }
}

/// Bucket upper bounds, in seconds, of every `*_seconds` histogram: from
/// 100 µs (a small batch through a plugin) to 10 s (a sink write that is
/// about to time out), roughly ×2.5 apart so quantiles stay within one step.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bucket upper bounds of every other histogram (counts and sizes: records
/// per batch, bytes per request): powers of 4 from 1 to about 4 million.
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes; without it they pile up in memory between scrapes.
const PROMETHEUS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the Prometheus recorder as the process's metrics recorder (once;
/// later calls return the same handle) and returns the handle `/metrics`
/// renders from. Histograms are Prometheus histograms with the buckets
/// above, not summaries.
///
/// If another recorder was installed first (a test's), weir's metrics go
/// there and the handle renders an empty page.
pub fn install_prometheus() -> metrics_exporter_prometheus::PrometheusHandle {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(SIZE_BUCKETS)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Suffix("_seconds".to_owned()),
                        LATENCY_BUCKETS_SECONDS,
                    )
                })
                .expect("the bucket lists are constant and not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("A metrics recorder was already installed; /metrics will be empty.");
            }
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("weir-metrics-upkeep".to_owned())
                .spawn(move || {
                    loop {
                        std::thread::sleep(PROMETHEUS_UPKEEP);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "Could not start metrics upkeep; histograms are folded at scrape time only.");
            }
            handle
        })
        .clone()
}

/// Windows finished with a result. Labels: `step`.
pub const WINDOW_FIRED: &str = "weir_window_fired_total";
/// Windows whose result failed (plugin failure, lost state). Labels:
/// `step`, `kind`.
pub const WINDOW_FAILED: &str = "weir_window_failed_total";
/// Events later than their windows' allowed lateness. Labels: `step`.
pub const WINDOW_LATE: &str = "weir_window_late_events_total";
/// Times a window step hit its `max_open` cap. Labels: `step`, `policy`.
pub const WINDOW_FULL: &str = "weir_window_full_total";
/// Open windows × groups of a window step. Labels: `step`.
pub const WINDOW_OPEN: &str = "weir_window_open";

/// Logs and counts windows whose result failed.
pub fn window_failed(step: &str, kind: &'static str, windows: usize, reason: &str) {
    if windows == 0 {
        return;
    }
    tracing::warn!(
        step,
        kind,
        windows,
        reason,
        "Windows failed; they produce no output."
    );
    counter!(WINDOW_FAILED, "step" => step.to_owned(), "kind" => kind).increment(windows as u64);
}

/// Counts a late event (logged at debug: a late stream would flood the log).
pub fn window_late(step: &str) {
    tracing::debug!(step, "Event is later than its windows' allowed lateness.");
    counter!(WINDOW_LATE, "step" => step.to_owned()).increment(1);
}

/// Logs and counts a window step at its cap.
pub fn window_full(step: &str, policy: &'static str, max_open: usize) {
    tracing::warn!(
        step,
        policy,
        max_open,
        "Window step is at its cap of open windows."
    );
    counter!(WINDOW_FULL, "step" => step.to_owned(), "policy" => policy).increment(1);
}

/// Counts windows finished with a result, and the open windows left.
pub fn window_open(step: &str, open: usize) {
    metrics::gauge!(WINDOW_OPEN, "step" => step.to_owned()).set(open as f64);
}

/// Counts windows finished with a result.
pub fn window_fired(step: &str, windows: usize) {
    counter!(WINDOW_FIRED, "step" => step.to_owned()).increment(windows as u64);
}

/// Lets an event that can repeat thousands of times a second (a dropped
/// message under overload) reach the log at most once a second; the
/// counter beside it counts every one.
struct Throttle {
    /// When the last line went out, in ms since [`Throttle::epoch`]; 0 =
    /// never.
    last_ms: std::sync::atomic::AtomicU64,
    /// Events since the last line.
    pending: std::sync::atomic::AtomicU64,
}

impl Throttle {
    const fn new() -> Throttle {
        Throttle {
            last_ms: std::sync::atomic::AtomicU64::new(0),
            pending: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn epoch() -> std::time::Instant {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *EPOCH.get_or_init(std::time::Instant::now)
    }

    /// Records one event; `Some(events since the last line, this one
    /// included)` when a line should be written now.
    fn admit(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        self.pending.fetch_add(1, Relaxed);
        // +1 so that the first event (at 0 ms) is not mistaken for "never".
        let now = Self::epoch().elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Relaxed);
        if last != 0 && now < last + 1000 {
            return None;
        }
        self.last_ms
            .compare_exchange(last, now, Relaxed, Relaxed)
            .ok()
            .map(|_| self.pending.swap(0, Relaxed))
    }
}

/// Hot reloads. Labels: `kind` = `plugin` or `manifest`, `outcome` =
/// `applied` or `failed`.
pub const RELOADS: &str = "weir_reloads_total";
/// Plugin hot reloads per plugin. Labels: `plugin`, `outcome` = `applied`
/// or `failed`.
pub const PLUGIN_RELOADS: &str = "weir_plugin_reloads_total";
/// Plugins compiled in the background (a large guest's first start) whose
/// rules could not start: the plugin does not compile, or refuses a step's
/// config. Labels: `plugin`.
pub const PLUGIN_START_FAILURES: &str = "weir_plugin_start_failures_total";
/// How long a plugin swap paused a rule, in seconds. Labels: `rule`.
pub const RELOAD_PAUSE_SECONDS: &str = "weir_reload_pause_seconds";

/// Logs and counts a plugin swapped into a rule's step at a batch
/// boundary.
pub fn plugin_swapped(
    plugin: &str,
    rule: &str,
    version: &str,
    hash: &str,
    state: &'static str,
    pause: std::time::Duration,
) {
    let pause_ms = pause.as_secs_f64() * 1e3;
    tracing::info!(
        plugin,
        rule,
        version,
        hash,
        state,
        pause_ms,
        "Plugin swapped."
    );
    metrics::histogram!(RELOAD_PAUSE_SECONDS, "rule" => rule.to_owned())
        .record(pause.as_secs_f64());
}

/// Logs and counts a plugin compiled in the background whose rules cannot
/// start; `problems` says why, `rules` names them.
pub fn plugin_start_failed(plugin: &str, file: &str, rules: &str, problems: &str) {
    tracing::error!(
        plugin,
        file,
        rules,
        problems,
        "The plugin cannot start; the rules that use it stay stopped, the others run on."
    );
    counter!(PLUGIN_START_FAILURES, "plugin" => plugin.to_owned()).increment(1);
}

/// Logs and counts a plugin reload that was refused: the old version keeps
/// running. `file` is the plugin file, `cause` says why.
pub fn plugin_reload_failed(plugin: &str, file: &str, cause: &str) {
    tracing::error!(
        plugin,
        file,
        cause,
        "Plugin reload failed; the running version stays."
    );
    counter!(RELOADS, "kind" => "plugin", "outcome" => "failed").increment(1);
    counter!(PLUGIN_RELOADS, "plugin" => plugin.to_owned(), "outcome" => "failed").increment(1);
}

/// Counts a plugin reload that took effect (each step's swap is logged by
/// [`plugin_swapped`]).
pub fn plugin_reloaded(plugin: &str) {
    counter!(RELOADS, "kind" => "plugin", "outcome" => "applied").increment(1);
    counter!(PLUGIN_RELOADS, "plugin" => plugin.to_owned(), "outcome" => "applied").increment(1);
}

/// Logs and counts a manifest reload that was refused: everything keeps
/// running as it was. `problems` is every diagnostic, one per line.
pub fn manifest_reload_failed(file: &str, problems: &str) {
    tracing::error!(
        file,
        problems,
        "Manifest reload failed; nothing was changed."
    );
    counter!(RELOADS, "kind" => "manifest", "outcome" => "failed").increment(1);
}

/// Logs and counts a manifest reload that took effect; `changes` says
/// what changed.
pub fn manifest_reloaded(file: &str, changes: &str) {
    tracing::info!(file, changes, "Manifest reloaded.");
    counter!(RELOADS, "kind" => "manifest", "outcome" => "applied").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_once_with_its_size() {
        let throttle = Throttle::new();
        assert_eq!(throttle.admit(), Some(1), "the first event is logged");
        let admitted: Vec<Option<u64>> = (0..999).map(|_| throttle.admit()).collect();
        assert!(admitted.iter().all(Option::is_none), "a burst is not");
        assert_eq!(
            throttle.pending.load(std::sync::atomic::Ordering::Relaxed),
            999
        );
    }
}
