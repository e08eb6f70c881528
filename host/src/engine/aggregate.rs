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
//! overrun or a memory-cap hit poisons the whole `Store`. So that such a
//! failure costs only the accumulator it happened in, this type keeps a
//! checkpoint of every accumulator's `snapshot` and a journal of the calls
//! since ([`super::journal`]): it rebuilds the others on a fresh instance,
//! retries the failed call one accumulator at a time, and gives up only
//! the one that fails again. The caller learns which from
//! [`Aggregator::take_lost`] and fails those windows. Only when nothing can
//! be rebuilt (the plugin cannot snapshot, or cannot start again) does a
//! call return [`StateLost`]: every accumulator is gone. Failures are
//! logged and counted once, here. A message the plugin rejects (a
//! `failure`) is not a loss: it leaves every accumulator as it was.
//!
//! The checkpoint is taken when the journal holds eight times as many
//! messages as there are accumulators (at least 4096), so it costs at most
//! an eighth of a `snapshot` call per message, and the journal's memory is
//! bounded by that many messages; when the last accumulator is released
//! the journal empties for free.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{Func, TypedFunc};

use super::aggregator_bindings::Aggregator as Bindings;
use super::batch::{self, Inputs, Lowered};
use super::bindings::weir::plugin::types::{Failure as GuestFailure, Outcome};
use super::contract::AGGREGATE_INTERFACE;
use super::host::HostState;
use super::instance::{
    CallError, Guest, call, check_config_keys, export_func, init_outcome, new_store, start_error,
};
use super::journal::{self, Journal, LostAccumulator, Op};
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
    /// Checkpoints taken (accumulator snapshots folded in).
    pub checkpoints: u64,
}

/// A running aggregate plugin instance with its config.
pub struct Aggregator {
    plugin: Plugin,
    name: Arc<str>,
    config_json: String,
    limits: Limits,
    live: Option<Live>,
    /// Reused `targets` words.
    targets: Vec<u32>,
    /// What rebuilding the accumulators after a trap needs.
    journal: Journal,
    stats: AggregatorStats,
}

pub(super) struct Live {
    store: Store<HostState>,
    bindings: Bindings,
    /// `accumulate` and `finish`, called with [`Lowered`] batches (see
    /// [`export_func`]).
    accumulate: Func,
    finish: Func,
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
    // Instantiation runs the guest's start functions.
    let _awake = store.data_mut().awake(limits.batch_deadline);
    let instance = pre
        .instance_pre()
        .instantiate(&mut store)
        .map_err(|e| start_error(name, e))?;
    let bindings = Bindings::new(&mut store, &instance).map_err(|e| start_error(name, e))?;
    let accumulate = *export_func::<(Lowered<'static>, &'static [u32]), (Vec<GuestFailure>,)>(
        &mut store,
        &instance,
        plugin,
        name,
        AGGREGATE_INTERFACE,
        "accumulate",
    )?
    .func();
    let finish = *export_func::<(&'static [u32], Lowered<'static>), (Outcome,)>(
        &mut store,
        &instance,
        plugin,
        name,
        AGGREGATE_INTERFACE,
        "finish",
    )?
    .func();
    Ok(Live {
        store,
        bindings,
        accumulate,
        finish,
    })
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
            targets: Vec::new(),
            journal: Journal::new(),
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
    /// accumulator. A trap costs only the accumulator it happened in (see
    /// [`Self::take_lost`]), unless the state cannot be rebuilt.
    pub fn accumulate(
        &mut self,
        messages: &[Message],
        targets: &[(u32, u32)],
    ) -> Result<Vec<Failure>, StateLost> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        self.stats.records_in += messages.len() as u64;
        let failures = match self.raw_accumulate(messages, targets) {
            Ok(failures) => {
                self.journal.accumulate(messages, targets);
                failures
            }
            Err(e) => self.isolate_accumulate(messages, targets, e)?,
        };
        if !failures.is_empty() {
            telemetry::plugin_failed(&self.name, "rejected", failures.len(), &failures[0].reason);
        }
        self.checkpoint_if_due()?;
        Ok(failures)
    }

    /// After `accumulate` trapped: rebuilds the state before it, then
    /// feeds each accumulator its part alone, giving up the ones that trap.
    fn isolate_accumulate(
        &mut self,
        messages: &[Message],
        targets: &[(u32, u32)],
        e: CallError,
    ) -> Result<Vec<Failure>, StateLost> {
        if !self.journal.on {
            return Err(self.total_loss(e));
        }
        let parts = journal::by_accumulator(targets);
        if let [(id, _)] = parts.as_slice() {
            self.give_up(self.journal.entries.len(), *id, e)?;
            return Ok(Vec::new());
        }
        self.recover()?;
        let mut failures: Vec<Failure> = Vec::new();
        for (id, part) in parts {
            match self.raw_accumulate(messages, &part) {
                Ok(f) => {
                    self.journal.accumulate(messages, &part);
                    failures.extend(f);
                }
                Err(e) => self.give_up(self.journal.entries.len(), id, e)?,
            }
        }
        failures.sort_by_key(|f| f.input);
        failures.dedup_by_key(|f| f.input);
        Ok(failures)
    }

    /// One `accumulate` call, its failures checked against the batch.
    fn raw_accumulate(
        &mut self,
        messages: &[Message],
        targets: &[(u32, u32)],
    ) -> Result<Vec<Failure>, CallError> {
        let mut words = std::mem::take(&mut self.targets);
        words.clear();
        words.extend(targets.iter().flat_map(|&(m, id)| [m, id]));
        let batch = match Lowered::new(messages) {
            Ok(batch) => batch,
            Err(batch::BatchTooLarge) => {
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
            // SAFETY: `instantiate` checked this type, for other lifetimes
            // of the same borrowed arguments.
            let accumulate: TypedFunc<(Lowered<'_>, &[u32]), (Vec<GuestFailure>,)> =
                unsafe { TypedFunc::new_unchecked(live.accumulate) };
            accumulate
                .call(&mut live.store, (batch, &words))
                .map(|(failures,)| failures)
        });
        self.targets = words;
        let failures = result?;
        let mut out: Vec<Failure> = Vec::with_capacity(failures.len());
        for f in failures {
            let input = f.input as usize;
            if input >= messages.len() {
                // A guest that names a message it was not given broke the
                // contract; its state can no longer be trusted either.
                let e = CallError {
                    kind: FailureKind::InvalidOutput,
                    reason: format!(
                        "the plugin rejected message {input} of a batch of {}",
                        messages.len()
                    ),
                };
                self.poisoned(&e);
                return Err(e);
            }
            out.push(Failure {
                input,
                kind: FailureKind::Rejected,
                reason: f.message,
            });
        }
        out.sort_by_key(|f| f.input);
        Ok(out)
    }

    /// Folds accumulator `source` into `target`; `source` is unchanged. A
    /// trap gives up `target` only (see [`Self::take_lost`]).
    pub fn merge(&mut self, target: u32, source: u32) -> Result<(), StateLost> {
        match self.raw_merge(target, source) {
            Ok(()) => self.journal.merge(target, source),
            Err(e) => self.give_up(self.journal.entries.len(), target, e)?,
        }
        self.checkpoint_if_due()
    }

    fn raw_merge(&mut self, target: u32, source: u32) -> Result<(), CallError> {
        self.call(|live| {
            live.bindings
                .weir_plugin_aggregate()
                .call_merge(&mut live.store, target, source)
        })
    }

    /// Finishes accumulators into output messages and releases them.
    /// `windows[i]` is `(id, description)`: the message describing the
    /// window of accumulator `id` (see `wit/plugin.wit`, `finish`). The
    /// outcome's input indices refer to `windows`. A trap fails only the
    /// window it happened in.
    pub fn finish(&mut self, windows: Vec<(u32, Message)>) -> Result<BatchOutcome, StateLost> {
        if windows.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let (ids, messages): (Vec<u32>, Vec<Message>) = windows.into_iter().unzip();
        self.stats.finished += ids.len() as u64;
        let outcome = match self.raw_finish(&ids, &messages) {
            Ok(outcome) => {
                self.journal.release(&ids);
                outcome
            }
            Err(e) => {
                if !self.journal.on {
                    return Err(self.total_loss(e));
                }
                self.recover()?;
                let mut result = BatchOutcome::default();
                for (input, (&id, message)) in ids.iter().zip(&messages).enumerate() {
                    let one = self.raw_finish(&[id], std::slice::from_ref(message));
                    // Finished or not, the accumulator is released.
                    self.journal.release(&[id]);
                    match one {
                        Ok(outcome) => {
                            result
                                .outputs
                                .extend(outcome.outputs.into_iter().map(|mut o| {
                                    o.input = input;
                                    o
                                }));
                            result
                                .failures
                                .extend(outcome.failures.into_iter().map(|mut f| {
                                    f.input = input;
                                    f
                                }));
                        }
                        Err(e) => {
                            result.failures.push(Failure {
                                input,
                                kind: e.kind,
                                reason: e.reason,
                            });
                            self.recover()?;
                        }
                    }
                }
                result
            }
        };
        self.checkpoint_if_due()?;
        Ok(outcome)
    }

    fn raw_finish(&mut self, ids: &[u32], messages: &[Message]) -> Result<BatchOutcome, CallError> {
        let batch = match Lowered::new(messages) {
            Ok(batch) => batch,
            Err(batch::BatchTooLarge) => {
                // Window descriptions are small; this cannot happen short of
                // billions of windows. Release them rather than leak.
                self.raw_discard(ids)?;
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
            // SAFETY: as in `raw_accumulate`.
            let finish: TypedFunc<(&[u32], Lowered<'_>), (Outcome,)> =
                unsafe { TypedFunc::new_unchecked(live.finish) };
            finish
                .call(&mut live.store, (ids, batch))
                .map(|(outcome,)| outcome)
        });
        let outcome = outcome?;
        let mut result = BatchOutcome::default();
        if let Err(reason) = batch::decode(outcome, Inputs::Borrowed(messages), 0, &mut result) {
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
        let result = self.raw_discard(ids);
        self.journal.release(ids);
        if let Err(e) = result {
            if !self.journal.on {
                return Err(self.total_loss(e));
            }
            self.recover()?;
        }
        self.checkpoint_if_due()
    }

    fn raw_discard(&mut self, ids: &[u32]) -> Result<(), CallError> {
        self.call(|live| {
            live.bindings
                .weir_plugin_aggregate()
                .call_discard(&mut live.store, ids)
        })
    }

    /// The serialised state of accumulator `id`; the inner error is the
    /// plugin's refusal. A trap gives up `id` (see [`Self::take_lost`]).
    pub fn snapshot(&mut self, id: u32) -> Result<Result<Vec<u8>, String>, StateLost> {
        match self.raw_snapshot(id) {
            Ok(r) => Ok(r),
            Err(e) => {
                let lost = StateLost {
                    kind: e.kind,
                    reason: e.reason.clone(),
                };
                self.give_up(self.journal.entries.len(), id, e)?;
                Err(lost)
            }
        }
    }

    fn raw_snapshot(&mut self, id: u32) -> Result<Result<Vec<u8>, String>, CallError> {
        self.call(|live| {
            live.bindings
                .weir_plugin_aggregate()
                .call_snapshot(&mut live.store, id)
        })
    }

    /// Sets accumulator `id` to a state [`snapshot`](Self::snapshot)
    /// returned; the inner error is the plugin's refusal.
    pub fn restore(&mut self, id: u32, state: &[u8]) -> Result<Result<(), String>, StateLost> {
        match self.raw_restore(id, state) {
            Ok(Ok(())) => {
                self.journal.restore(id, state);
                self.checkpoint_if_due()?;
                Ok(Ok(()))
            }
            Ok(Err(refused)) => Ok(Err(refused)),
            Err(e) => {
                let lost = StateLost {
                    kind: e.kind,
                    reason: e.reason.clone(),
                };
                // Journaled, then given up from that very entry.
                self.journal.restore(id, state);
                self.give_up(self.journal.entries.len().saturating_sub(1), id, e)?;
                Err(lost)
            }
        }
    }

    fn raw_restore(&mut self, id: u32, state: &[u8]) -> Result<Result<(), String>, CallError> {
        self.call(|live| {
            live.bindings
                .weir_plugin_aggregate()
                .call_restore(&mut live.store, id, state)
        })
    }

    /// Turns the checkpoint and journal off (`false`) or back on: without
    /// them a trap loses every accumulator, as [`StateLost`]. For
    /// measuring what isolation costs; on by default.
    pub fn set_trap_isolation(&mut self, on: bool) {
        if on != self.journal.on {
            if on {
                // Only from an empty instance: the journal must see every
                // accumulator from its start.
                self.live = None;
                self.journal = Journal::new();
            } else {
                self.journal.turn_off();
            }
        }
    }

    /// The accumulators given up since the last call: each had its own
    /// trap (or was fed from one that did), and its window must fail. The
    /// others were rebuilt and are intact.
    pub fn take_lost(&mut self) -> Vec<LostAccumulator> {
        self.journal.take_lost()
    }

    /// Folds the journal into a checkpoint when it is long enough.
    fn checkpoint_if_due(&mut self) -> Result<(), StateLost> {
        if !self.journal.wants_checkpoint() {
            return Ok(());
        }
        let mut snapshots = HashMap::new();
        for id in self.journal.dirty() {
            match self.raw_snapshot(id) {
                Ok(Ok(state)) => {
                    snapshots.insert(id, state);
                }
                Ok(Err(refused)) => {
                    tracing::warn!(
                        plugin = %self.name,
                        reason = %refused,
                        "The aggregate plugin cannot snapshot its accumulators: a trap will fail every open window of its step, not just its own."
                    );
                    self.journal.turn_off();
                    return Ok(());
                }
                Err(e) => self.give_up(self.journal.entries.len(), id, e)?,
            }
        }
        self.journal.checkpoint(snapshots);
        self.stats.checkpoints += 1;
        Ok(())
    }

    /// A call on accumulator `id` failed: gives it up from journal entry
    /// `at` on and rebuilds the others (everything is lost when the journal
    /// is off).
    fn give_up(&mut self, at: usize, id: u32, e: CallError) -> Result<(), StateLost> {
        if !self.journal.on {
            return Err(self.total_loss(e));
        }
        self.journal.give_up(at, id, e.kind, &e.reason);
        self.recover()
    }

    /// Rebuilds every accumulator on a fresh instance from the checkpoint
    /// and the journal. A call that traps again is split or given up, and
    /// the rebuild starts over; when nothing can be rebuilt, everything is
    /// lost.
    fn recover(&mut self) -> Result<(), StateLost> {
        const PASSES: usize = 64;
        for _ in 0..PASSES {
            self.live = None;
            match self.replay() {
                Ok(()) => return Ok(()),
                Err(Replay::Again) => continue,
                Err(Replay::Fatal(e)) => return Err(self.total_loss(e)),
            }
        }
        Err(self.total_loss(CallError {
            kind: FailureKind::Trap,
            reason: format!("the accumulators could not be rebuilt in {PASSES} attempts"),
        }))
    }

    fn replay(&mut self) -> Result<(), Replay> {
        let mut saved: Vec<u32> = self.journal.saved.keys().copied().collect();
        saved.sort_unstable();
        for id in saved {
            let state = self.journal.saved[&id].clone();
            match self.raw_restore(id, &state) {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    self.journal.give_up(0, id, FailureKind::Rejected, &reason);
                    return Err(Replay::Again);
                }
                Err(e) => {
                    self.journal.give_up(0, id, e.kind, &e.reason);
                    return Err(Replay::Again);
                }
            }
        }
        for at in 0..self.journal.entries.len() {
            let entry = self.journal.entries[at].clone();
            if !entry.discard_first.is_empty() {
                self.raw_discard(&entry.discard_first)
                    .map_err(Replay::Fatal)?;
            }
            match entry.op {
                Op::Nop => {}
                Op::Accumulate { messages, targets } => {
                    if let Err(e) = self.raw_accumulate(&messages, &targets) {
                        if !self.journal.split(at) {
                            self.journal.give_up(at, targets[0].1, e.kind, &e.reason);
                        }
                        return Err(Replay::Again);
                    }
                }
                Op::Merge { target, source } => {
                    if let Err(e) = self.raw_merge(target, source) {
                        self.journal.give_up(at, target, e.kind, &e.reason);
                        return Err(Replay::Again);
                    }
                }
                Op::Release(ids) => {
                    if !ids.is_empty() {
                        self.raw_discard(&ids).map_err(Replay::Fatal)?;
                    }
                }
                Op::Restore { id, state } => match self.raw_restore(id, &state) {
                    Ok(Ok(())) => {}
                    Ok(Err(reason)) => {
                        self.journal.give_up(at, id, FailureKind::Rejected, &reason);
                        return Err(Replay::Again);
                    }
                    Err(e) => {
                        self.journal.give_up(at, id, e.kind, &e.reason);
                        return Err(Replay::Again);
                    }
                },
            }
        }
        Ok(())
    }

    /// Nothing could be kept: the next call starts from an empty instance.
    fn total_loss(&mut self, e: CallError) -> StateLost {
        self.live = None;
        self.journal.reset();
        StateLost {
            kind: e.kind,
            reason: e.reason,
        }
    }

    /// Runs one call on the live instance (starting one if the last was
    /// lost).
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Live) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        if self.live.is_none() {
            match start(&self.plugin, &self.name, &self.config_json, self.limits) {
                Ok(live) => self.live = Some(live),
                Err(e) => {
                    let reason = e.to_string();
                    telemetry::plugin_failed(&self.name, "unavailable", 1, &reason);
                    return Err(CallError {
                        kind: FailureKind::Unavailable,
                        reason,
                    });
                }
            }
        }
        let live = self.live.as_mut().expect("started above");
        match call(live, self.limits.batch_deadline, f) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.poisoned(&e);
                Err(e)
            }
        }
    }

    /// Drops the poisoned instance; the next call starts a fresh one.
    fn poisoned(&mut self, e: &CallError) {
        self.live = None;
        self.stats.restarts += 1;
        telemetry::plugin_restarted(&self.name, e.kind.as_str());
        telemetry::plugin_failed(&self.name, e.kind.as_str(), 1, &e.reason);
    }
}

/// Why a replay stopped.
enum Replay {
    /// The journal changed (a call split or given up): start over.
    Again,
    /// Nothing can be rebuilt.
    Fatal(CallError),
}
