//! The health registry: what runs right now and whether it is well, as the
//! `/health` endpoint reports it.
//!
//! The pipeline writes to it (a rule started, a sink failed a write and then
//! recovered, a plugin was reloaded); the HTTP endpoint reads a snapshot. It
//! owns only that picture: it never decides anything, and nothing on the data
//! path ever reads it. Writes take a short lock and never wait on I/O.
//!
//! Overall status: `degraded` when a sink is unhealthy or a rule is not
//! running, else `ok`. An empty registry (nothing configured yet) is `ok`:
//! the process is up, which is what a liveness probe asks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;

/// A cheap-to-clone handle on the registry; clones share it.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone)]
struct State {
    rules: BTreeMap<String, RuleHealth>,
    sinks: BTreeMap<String, SinkHealth>,
    plugins: BTreeMap<String, PluginHealth>,
}

/// What a rule is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleState {
    /// Taking messages and passing them on.
    Running,
    /// Being (re)built: during a reload, or waiting for its plugin's
    /// first compile.
    Starting,
    /// Stopped on purpose (shutting down).
    Stopped,
    /// Stopped by an error; the pipeline logged why.
    Failed,
}

/// One rule's entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleHealth {
    /// What it is doing.
    pub state: RuleState,
}

/// One sink's entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SinkHealth {
    /// Its last write (or health check) succeeded.
    pub healthy: bool,
    /// The last error, kept after recovery so an operator can see what
    /// happened; `null` if it never failed.
    pub last_error: Option<String>,
}

/// One plugin's entry: which build of it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PluginHealth {
    /// The version the plugin declares.
    pub version: String,
    /// SHA-256 of the component, hex.
    pub content_hash: String,
}

/// `ok` or `degraded`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every rule runs and every sink is healthy.
    Ok,
    /// Something is not well; the details say what.
    Degraded,
}

/// A snapshot, as served by `/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `ok` or `degraded`.
    pub status: Status,
    /// Seconds since the registry was created (process start).
    pub uptime_secs: u64,
    /// Rules by name.
    pub rules: BTreeMap<String, RuleHealth>,
    /// Sinks by name.
    pub sinks: BTreeMap<String, SinkHealth>,
    /// Plugins by name.
    pub plugins: BTreeMap<String, PluginHealth>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// An empty registry; uptime counts from now.
    pub fn new() -> Self {
        Health {
            inner: Arc::new(Inner {
                started: Instant::now(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Sets what rule `name` is doing.
    pub fn set_rule(&self, name: &str, state: RuleState) {
        self.state()
            .rules
            .insert(name.to_owned(), RuleHealth { state });
    }

    /// Forgets rule `name` (removed from the manifest).
    pub fn remove_rule(&self, name: &str) {
        self.state().rules.remove(name);
    }

    /// Sets sink `name`'s entry.
    pub fn set_sink(&self, name: &str, health: SinkHealth) {
        self.state().sinks.insert(name.to_owned(), health);
    }

    /// Marks sink `name` healthy, keeping its last error.
    pub fn sink_ok(&self, name: &str) {
        let mut state = self.state();
        let entry = state.sinks.entry(name.to_owned()).or_insert(SinkHealth {
            healthy: true,
            last_error: None,
        });
        entry.healthy = true;
    }

    /// Marks sink `name` unhealthy because of `error`.
    pub fn sink_failed(&self, name: &str, error: impl Into<String>) {
        self.set_sink(
            name,
            SinkHealth {
                healthy: false,
                last_error: Some(error.into()),
            },
        );
    }

    /// Forgets sink `name`.
    pub fn remove_sink(&self, name: &str) {
        self.state().sinks.remove(name);
    }

    /// Records which build of plugin `name` runs.
    pub fn set_plugin(
        &self,
        name: &str,
        version: impl Into<String>,
        content_hash: impl Into<String>,
    ) {
        self.state().plugins.insert(
            name.to_owned(),
            PluginHealth {
                version: version.into(),
                content_hash: content_hash.into(),
            },
        );
    }

    /// Forgets plugin `name`.
    pub fn remove_plugin(&self, name: &str) {
        self.state().plugins.remove(name);
    }

    /// The current picture.
    pub fn report(&self) -> Report {
        let state = self.state().clone();
        let degraded = state.sinks.values().any(|sink| !sink.healthy)
            || state
                .rules
                .values()
                .any(|rule| rule.state != RuleState::Running);
        Report {
            status: if degraded {
                Status::Degraded
            } else {
                Status::Ok
            },
            uptime_secs: self.inner.started.elapsed().as_secs(),
            rules: state.rules,
            sinks: state.sinks,
            plugins: state.plugins,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a map half-updated at
        // worst; the health picture is still better served than not.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_empty_registry_is_ok() {
        assert_eq!(Health::new().report().status, Status::Ok);
    }

    #[test]
    fn a_failed_sink_degrades_until_it_recovers_and_keeps_its_last_error() {
        let health = Health::new();
        health.sink_ok("tsdb");
        health.sink_failed("tsdb", "connection refused");
        assert_eq!(health.report().status, Status::Degraded);

        health.sink_ok("tsdb");

        let report = health.report();
        assert_eq!(report.status, Status::Ok);
        assert_eq!(
            report.sinks["tsdb"].last_error.as_deref(),
            Some("connection refused")
        );
    }

    #[test]
    fn a_rule_that_is_not_running_degrades() {
        let health = Health::new();
        health.set_rule("avg", RuleState::Running);
        assert_eq!(health.report().status, Status::Ok);

        health.set_rule("avg", RuleState::Failed);
        assert_eq!(health.report().status, Status::Degraded);

        health.remove_rule("avg");
        assert_eq!(health.report().status, Status::Ok);
    }

    #[test]
    fn clones_share_one_registry() {
        let health = Health::new();
        health.clone().set_plugin("threshold", "0.1.0", "ab12");

        assert_eq!(health.report().plugins["threshold"].version, "0.1.0");
    }

    #[test]
    fn the_report_serialises_to_the_documented_shape() {
        let health = Health::new();
        health.set_rule("avg", RuleState::Running);
        health.sink_ok("console");
        health.set_plugin("threshold", "0.1.0", "ab12");

        let value = serde_json::to_value(health.report()).unwrap();

        assert_eq!(
            value,
            json!({
                "status": "ok",
                "uptime_secs": 0,
                "rules": { "avg": { "state": "running" } },
                "sinks": { "console": { "healthy": true, "last_error": null } },
                "plugins": { "threshold": { "version": "0.1.0", "content_hash": "ab12" } },
            })
        );
    }
}
