//! One aggregate plugin instance (world `aggregator`): the accumulators of
//! a window step, and what happens when the guest fails.
//!
//! The host names accumulators by `u32` ids (see `wit/plugin.wit`,
//! interface `aggregate`); this type only carries calls across the
//! boundary, under the same memory cap and CPU deadline as a transform.
//! Which accumulator a message goes to, and when a window is finished, is
//! decided by [`crate::window`].
//!
//! Accumulator state lives in the guest's `Store`, and a trap, a deadline
//! overrun or a memory-cap hit poisons the whole `Store`: every accumulator
//! of the instance is gone. Such a call returns [`StateLost`]; the instance
//! is rebuilt (and initialised with the same config) on the next call, and
//! the caller fails the windows whose state was lost. The failure is logged
//! and counted once, here. A message the plugin rejects (a `failure`) is
//! not a loss: it leaves every accumulator as it was.

use std::sync::Arc;

use wasmtime::Store;

use super::aggregator_bindings::Aggregator as Bindings;
use super::batch::{self, Encoder, Inputs};
use super::bindings::weir::plugin::types::Batch;
use super::host::HostState;
use super::instance::{
    CallError, Guest, call, check_config_keys, init_outcome, new_store, start_error,
};
use super::{BatchOutcome, Failure, FailureKind, Limits, Plugin, PluginError, Pre};
use crate::message::Message;
use crate::telemetry;

/// The guest failed in a way that poisons its `Store` (trap, deadline,
/// memory cap): every accumulator of the instance is gone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the aggregate plugin failed ({}): {reason}; its accumulators are lost", kind.as_str())]
pub struct StateLost {
    /// What happened.
    pub kind: FailureKind,
    /// Why, for the operator.
    pub reason: String,
}

/// Counters of one aggregator, for reports and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AggregatorStats {
    /// Messages handed to `accumulate` (a message fed to two accumulators
    /// counts once).
    pub records_in: u64,
    /// Accumulators finished.
    pub finished: u64,
    /// Instances rebuilt after a loss.
    pub restarts: u64,
}

/// A running aggregate plugin instance with its config.
pub struct Aggregator {
    plugin: Plugin,
    name: Arc<str>,
    config_json: String,
    limits: Limits,
    live: Option<Live>,
    encoder: Encoder,
    /// Reused `targets` words.
    targets: Vec<u32>,
    stats: AggregatorStats,
}

pub(super) struct Live {
    store: Store<HostState>,
    bindings: Bindings,
}

impl Guest for Live {
    fn store(&mut self) -> &mut Store<HostState> {
        &mut self.store
    }
}

/// Instantiates an aggregate plugin (without `init`).
pub(super) fn instantiate(
    plugin: &Plugin,
    name: &Arc<str>,
    limits: Limits,
) -> Result<Live, PluginError> {
    let Pre::Aggregate(pre) = &plugin.inner.pre else {
        return Err(PluginError::WrongKind {
            plugin: name.to_string(),
            is: "a transform plugin (world transformer)",
            needed: "a window step needs an aggregate plugin (world aggregator)",
        });
    };
    let mut store = new_store(plugin, name, limits);
    let bindings = pre
        .instantiate(&mut store)
        .map_err(|e| start_error(name, e))?;
    Ok(Live { store, bindings })
}

/// Calls the guest's `metadata`.
pub(super) fn metadata(
    live: &mut Live,
    limits: Limits,
) -> Result<super::bindings::weir::plugin::types::Metadata, CallError> {
    call(live, limits.batch_deadline, |live| {
        live.bindings
            .weir_plugin_aggregate()
            .call_metadata(&mut live.store)
    })
}

fn start(
    plugin: &Plugin,
    name: &Arc<str>,
    config_json: &str,
    limits: Limits,
) -> Result<Live, PluginError> {
    let mut live = instantiate(plugin, name, limits)?;
    let init = call(&mut live, limits.batch_deadline, |live| {
        live.bindings
            .weir_plugin_aggregate()
            .call_init(&mut live.store, config_json)
    });
    init_outcome(name, init).map(|()| live)
}

impl Aggregator {
    pub(super) fn new(
        plugin: Plugin,
        name: &str,
        config: &serde_json::Map<String, serde_json::Value>,
        limits: Limits,
    ) -> Result<Self, PluginError> {
        let name: Arc<str> = Arc::from(name);
        // The kind first: a transform's metadata cannot be read this way.
        if !plugin.is_aggregate() {
            instantiate(&plugin, &name, limits)?;
        }
        let metadata = plugin.metadata()?;
        check_config_keys(&metadata, config)?;
        let config_json = serde_json::Value::Object(config.clone()).to_string();
        let live = start(&plugin, &name, &config_json, limits)?;
        Ok(Aggregator {
            plugin,
            name,
            config_json,
            limits,
            live: Some(live),
            encoder: Encoder::new(),
            targets: Vec::new(),
            stats: AggregatorStats::default(),
        })
    }

    /// The name this instance reports under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin this instance runs.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Counters since the instance was created.
    pub fn stats(&self) -> &AggregatorStats {
        &self.stats
    }

    /// Folds `messages` into accumulators: each `(message index, id)` pair
    /// of `targets` feeds one message to one accumulator. Returns the
    /// messages the plugin rejected (sorted by index); those changed no
    /// accumulator.
    pub fn accumulate(
        &mut self,
        messages: &[Message],
        targets: &[(u32, u32)],
    ) -> Result<Vec<Failure>, StateLost> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        self.stats.records_in += messages.len() as u64;
        let mut words = std::mem::take(&mut self.targets);
        words.clear();
        words.extend(targets.iter().flat_map(|&(m, id)| [m, id]));
        // Taken out for the call (which needs `&mut self`), put back after:
        // its buffers are reused from batch to batch.
        let mut encoder = std::mem::replace(&mut self.encoder, Encoder::new());
        let batch = match encoder.encode(messages) {
            Ok(batch) => batch,
            Err(batch::BatchTooLarge) => {
                self.encoder = encoder;
                self.targets = words;
                return Ok((0..messages.len())
                    .map(|input| Failure {
                        input,
                        kind: FailureKind::Unavailable,
                        reason: "the batch is larger than the 4 GiB a call can carry".into(),
                    })
                    .collect());
            }
        };
        let result = self.call(|live| {
            live.bindings
                .weir_plugin_aggregate()
                .call_accumulate(&mut live.store, batch, &words)
        });
        self.encoder = encoder;
        self.targets = words;
        let failures = result?;
        let mut out: Vec<Failure> = Vec::with_capacity(failures.len());
        for f in failures {
            let input = f.input as usize;
            if input >= messages.len() {
                // A guest that names a message it was not given broke the
                // contract; its state can no longer be trusted either.
                return Err(self.lose(CallError {
                    kind: FailureKind::InvalidOutput,
                    reason: format!(
                        "the plugin rejected message {input} of a batch of {}",
                        messages.len()
                    ),
                }));
            }
            out.push(Failure {
                input,
                kind: FailureKind::Rejected,
                reason: f.message,
            });
        }
        out.sort_by_key(|f| f.input);
        if !out.is_empty() {
            telemetry::plugin_failed(&self.name, "rejected", out.len(), &out[0].reason);
        }
        Ok(out)
    }

    /// Folds accumulator `source` into `target`; `source` is unchanged.
    pub fn merge(&mut self, target: u32, source: u32) -> Result<(), StateLost> {
        self.call(|live| {
            live.bindings
                .weir_plugin_aggregate()
                .call_merge(&mut live.store, target, source)
        })
    }

    /// Finishes accumulators into output messages and releases them.
    /// `windows[i]` is `(id, description)`: the message describing the
    /// window of accumulator `id` (see `wit/plugin.wit`, `finish`). The
    /// outcome's input indices refer to `windows`.
    pub fn finish(&mut self, windows: Vec<(u32, Message)>) -> Result<BatchOutcome, StateLost> {
        if windows.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let (ids, messages): (Vec<u32>, Vec<Message>) = windows.into_iter().unzip();
        self.stats.finished += ids.len() as u64;
        let mut encoder = std::mem::replace(&mut self.encoder, Encoder::new());
        let batch: &Batch = match encoder.encode(&messages) {
            Ok(batch) => batch,
            Err(batch::BatchTooLarge) => {
                self.encoder = encoder;
                // Window descriptions are small; this cannot happen short of
                // billions of windows. Release them rather than leak.
                self.discard(&ids)?;
                let mut outcome = BatchOutcome::default();
                outcome.failures.extend((0..ids.len()).map(|input| Failure {
                    input,
                    kind: FailureKind::Unavailable,
                    reason: "too many windows for one call".into(),
                }));
                return Ok(outcome);
            }
        };
        let outcome = self.call(|live| {
            live.bindings
                .weir_plugin_aggregate()
                .call_finish(&mut live.store, &ids, batch)
        });
        self.encoder = encoder;
        let outcome = outcome?;
        let mut result = BatchOutcome::default();
        if let Err(reason) = batch::decode(outcome, Inputs::Owned(messages), 0, &mut result) {
            result.outputs.clear();
            result.failures = (0..ids.len())
                .map(|input| Failure {
                    input,
                    kind: FailureKind::InvalidOutput,
                    reason: reason.clone(),
                })
                .collect();
        }
        result.failures.sort_by_key(|f| f.input);
        Ok(result)
    }

    /// Releases accumulators without output.
    pub fn discard(&mut self, ids: &[u32]) -> Result<(), StateLost> {
        if ids.is_empty() {
            return Ok(());
        }
        self.call(|live| {
            live.bindings
                .weir_plugin_aggregate()
                .call_discard(&mut live.store, ids)
        })
    }

    /// The serialised state of accumulator `id`; the inner error is the
    /// plugin's refusal.
    pub fn snapshot(&mut self, id: u32) -> Result<Result<Vec<u8>, String>, StateLost> {
        self.call(|live| {
            live.bindings
                .weir_plugin_aggregate()
                .call_snapshot(&mut live.store, id)
        })
    }

    /// Sets accumulator `id` to a state [`snapshot`](Self::snapshot)
    /// returned; the inner error is the plugin's refusal.
    pub fn restore(&mut self, id: u32, state: &[u8]) -> Result<Result<(), String>, StateLost> {
        self.call(|live| {
            live.bindings
                .weir_plugin_aggregate()
                .call_restore(&mut live.store, id, state)
        })
    }

    /// Runs one call on the live instance (starting one if the last was
    /// lost).
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Live) -> wasmtime::Result<R>,
    ) -> Result<R, StateLost> {
        if self.live.is_none() {
            match start(&self.plugin, &self.name, &self.config_json, self.limits) {
                Ok(live) => self.live = Some(live),
                Err(e) => {
                    let reason = e.to_string();
                    telemetry::plugin_failed(&self.name, "unavailable", 1, &reason);
                    return Err(StateLost {
                        kind: FailureKind::Unavailable,
                        reason,
                    });
                }
            }
        }
        let live = self.live.as_mut().expect("started above");
        match call(live, self.limits.batch_deadline, f) {
            Ok(r) => Ok(r),
            Err(e) => Err(self.lose(e)),
        }
    }

    /// Drops the poisoned instance; the next call starts a fresh one.
    fn lose(&mut self, e: CallError) -> StateLost {
        self.live = None;
        self.stats.restarts += 1;
        telemetry::plugin_restarted(&self.name, e.kind.as_str());
        telemetry::plugin_failed(&self.name, e.kind.as_str(), 1, &e.reason);
        StateLost {
            kind: e.kind,
            reason: e.reason,
        }
    }
}
