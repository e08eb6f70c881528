//! One plugin instance: a `Store`, the guest's exports, and recovery.
//!
//! [`Instance::process`] (and [`Instance::process_owned`], the same for a
//! batch the caller gives away) never fails as a whole. What goes wrong is
//! reported per input record in the [`BatchOutcome`]:
//!
//! - the guest rejects a record (a `failure` in its outcome): that record
//!   fails, the rest of the batch is processed as usual;
//! - the guest traps (a panic, an `unreachable`): the `Store` is poisoned, so
//!   it is dropped and a fresh instance is built from the `InstancePre` and
//!   initialised with the same config; the batch is then re-run in halves on
//!   fresh instances until the failing records are isolated, so one bad
//!   record fails alone (a batch of n with one bad record costs about
//!   2·log2(n) extra calls, only when something traps);
//! - the batch overruns its CPU deadline or hits the memory cap: the whole
//!   batch fails (re-running it would cost the deadline again, or the memory
//!   again) and the next batch runs on a fresh instance.
//!
//! Each of these is logged and counted once, through [`crate::telemetry`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{ComponentNamedList, Func, Lift, Lower, TypedFunc};
use wasmtime::{Store, UpdateDeadline};

use super::batch::{self, Inputs, Lowered};
use super::bindings::Transformer;
use super::bindings::weir::plugin::types::{Outcome, PluginKind};
use super::contract::{STATE_INTERFACE, TRANSFORM_INTERFACE};
use super::host::{HostState, MemoryCapExceeded};
use super::{ConfigKey, ContractError, Limits, Metadata, Plugin, Pre, to_anyhow};
use crate::message::Message;
use crate::telemetry;

/// Why a plugin could not be loaded or started.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read plugin {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The file is not a plugin for this weir.
    #[error("{} is {cause}", path.display())]
    Contract {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        cause: ContractError,
    },
    /// Compilation failed.
    #[error("cannot compile {}: {cause:#}", path.display())]
    Compile {
        /// The file.
        path: PathBuf,
        /// The compiler's error.
        cause: anyhow::Error,
    },
    /// The component imports something weir does not provide.
    #[error("cannot link {}: {cause:#}", path.display())]
    Link {
        /// The file.
        path: PathBuf,
        /// What is missing.
        cause: anyhow::Error,
    },
    /// Instantiation or a call before `init` failed.
    #[error("plugin {plugin:?} failed to {stage}: {reason}")]
    Start {
        /// The plugin.
        plugin: String,
        /// `instantiate`, `describe itself` or `initialise`.
        stage: &'static str,
        /// Why.
        reason: String,
    },
    /// The config has a key the plugin does not accept.
    #[error(
        "plugin {plugin:?} does not accept config key {key:?}{}; it accepts: {accepted}",
        suggestion.as_ref().map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default()
    )]
    UnknownConfigKey {
        /// The plugin.
        plugin: String,
        /// The key.
        key: String,
        /// The closest accepted key, if one is close.
        suggestion: Option<String>,
        /// Every accepted key.
        accepted: String,
    },
    /// The plugin is of another kind than the step needs (an aggregate
    /// plugin where a transform is needed, or the other way round).
    #[error("plugin {plugin:?} is {is}, but {needed}")]
    WrongKind {
        /// The plugin.
        plugin: String,
        /// What it is (`an aggregate plugin (world aggregator)`).
        is: &'static str,
        /// What the caller needs, with where it goes.
        needed: &'static str,
    },
    /// `init` returned an error.
    #[error("plugin {plugin:?} refused its config: {reason}")]
    InitRefused {
        /// The plugin.
        plugin: String,
        /// The plugin's own words.
        reason: String,
    },
}

/// Why a record failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// The plugin reported the record as failed.
    Rejected,
    /// The plugin trapped (panicked) on the record.
    Trap,
    /// The batch ran past its CPU deadline.
    Deadline,
    /// The instance reached its memory cap.
    MemoryCap,
    /// The plugin emitted an output that breaks the contract.
    InvalidOutput,
    /// No instance could be built to process the record.
    Unavailable,
}

impl FailureKind {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Rejected => "rejected",
            FailureKind::Trap => "trap",
            FailureKind::Deadline => "deadline",
            FailureKind::MemoryCap => "memory_cap",
            FailureKind::InvalidOutput => "invalid_output",
            FailureKind::Unavailable => "unavailable",
        }
    }
}

/// An output message, with the index of the input it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Index of the input in the batch.
    pub input: usize,
    /// The message.
    pub message: Message,
}

/// A failed input record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Index of the input in the batch.
    pub input: usize,
    /// What kind of failure.
    pub kind: FailureKind,
    /// Why, for the operator.
    pub reason: String,
}

/// What became of a batch. Outputs are in input order (and emission order
/// within an input); an input with neither output nor failure was dropped.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// The outputs.
    pub outputs: Vec<Output>,
    /// The failed inputs, sorted by input index.
    pub failures: Vec<Failure>,
}

/// Counters of one instance, for reports and tests.
#[derive(Clone, Debug, Default)]
pub struct InstanceStats {
    /// Batches processed.
    pub batches: u64,
    /// Records handed in.
    pub records_in: u64,
    /// Records emitted.
    pub records_out: u64,
    /// Failed records, by kind.
    pub failures: BTreeMap<FailureKind, u64>,
    /// Instances rebuilt after a trap, deadline or memory-cap hit.
    pub restarts: u64,
}

/// A running plugin instance with its config.
pub struct Instance {
    plugin: Plugin,
    name: Arc<str>,
    config_json: String,
    limits: Limits,
    live: Option<Live>,
    stats: InstanceStats,
    /// Registered at the first batch (an instance may be built before
    /// `weir run` installs its metrics recorder).
    metrics: Option<telemetry::PluginMetrics>,
}

struct Live {
    store: Store<HostState>,
    bindings: Transformer,
    /// The `process` export, called with [`Lowered`] batches; its type was
    /// checked against `(Lowered, ) -> (Outcome, )` at instantiation.
    process: Func,
    /// The `state` interface, when the plugin exports it.
    state: Option<StateFns>,
}

/// The optional `state` interface's functions, looked up by name: the
/// `transformer` bindings do not know it, so plugins without it load as
/// before.
struct StateFns {
    snapshot: TypedFunc<(), (Result<Vec<u8>, String>,)>,
    restore: TypedFunc<(Vec<u8>,), (Result<(), String>,)>,
}

/// A live guest instance: something with a `Store` that [`call`] guards.
pub(super) trait Guest {
    /// The instance's store.
    fn store(&mut self) -> &mut Store<HostState>;
}

impl Guest for Live {
    fn store(&mut self) -> &mut Store<HostState> {
        &mut self.store
    }
}

/// A call into the guest that did not return normally.
pub(super) struct CallError {
    pub(super) kind: FailureKind,
    pub(super) reason: String,
}

impl Instance {
    pub(super) fn new(
        plugin: Plugin,
        name: &str,
        config: &serde_json::Map<String, serde_json::Value>,
        limits: Limits,
    ) -> Result<Self, PluginError> {
        let metadata = plugin.metadata()?;
        check_config_keys(&metadata, config)?;
        let name: Arc<str> = Arc::from(name);
        let config_json = serde_json::Value::Object(config.clone()).to_string();
        let live = start(&plugin, &name, &config_json, limits)?;
        Ok(Instance {
            plugin,
            name,
            config_json,
            limits,
            live: Some(live),
            stats: InstanceStats::default(),
            metrics: None,
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
    pub fn stats(&self) -> &InstanceStats {
        &self.stats
    }

    /// Whether the plugin can hand its state over (it exports the `state`
    /// interface, world `stateful-transformer`).
    pub fn has_state(&self) -> bool {
        self.plugin.info().state_export.is_some()
    }

    /// The plugin's serialised state (its `snapshot` export). An error is
    /// the plugin's refusal, a failed call, or a plugin without state.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        self.call_state("snapshot", |live| {
            let f = &live.state.as_ref().expect("checked").snapshot;
            f.call(&mut live.store, ()).map(|(r,)| r)
        })
    }

    /// Replaces the state `init` built with `state` (its `restore`
    /// export). An error is the plugin's refusal or a failed call; the
    /// instance must then not be used.
    pub fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        self.call_state("restore", |live| {
            let f = &live.state.as_ref().expect("checked").restore;
            f.call(&mut live.store, (state.to_vec(),)).map(|(r,)| r)
        })
    }

    /// One call into the `state` interface; a failed call loses the
    /// instance.
    fn call_state<R>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Live) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, String> {
        let deadline = self.limits.batch_deadline;
        let live = self
            .live
            .as_mut()
            .ok_or("the instance was lost to a trap")?;
        if live.state.is_none() {
            return Err("the plugin does not export weir:plugin/state".into());
        }
        match call(live, deadline, f) {
            Ok(r) => r,
            Err(e) => {
                self.live = None;
                Err(format!("{what} failed ({}): {}", e.kind.as_str(), e.reason))
            }
        }
    }

    /// Runs a batch through the plugin. See the module docs for what happens
    /// when something goes wrong.
    pub fn process(&mut self, messages: &[Message]) -> BatchOutcome {
        self.process_inputs(Inputs::Borrowed(messages))
    }

    /// Like [`process`](Self::process), for a batch the caller no longer
    /// needs: each input becomes its (last) output instead of being cloned
    /// into it, so a passthrough touches no reference count. The outcome is
    /// the same.
    pub fn process_owned(&mut self, messages: Vec<Message>) -> BatchOutcome {
        self.process_inputs(Inputs::Owned(messages))
    }

    fn process_inputs(&mut self, inputs: Inputs<'_>) -> BatchOutcome {
        let records_in = inputs.as_slice().len();
        let mut result = BatchOutcome::default();
        self.run(inputs, 0, &mut result);
        result.failures.sort_by_key(|f| f.input);
        self.stats.batches += 1;
        self.stats.records_in += records_in as u64;
        self.stats.records_out += result.outputs.len() as u64;
        (self
            .metrics
            .get_or_insert_with(|| telemetry::PluginMetrics::new(&self.name)))
        .records(records_in, result.outputs.len());
        let mut by_kind: BTreeMap<FailureKind, (usize, &str)> = BTreeMap::new();
        for f in &result.failures {
            let entry = by_kind.entry(f.kind).or_insert((0, &f.reason));
            entry.0 += 1;
        }
        for (kind, (count, first_reason)) in by_kind {
            *self.stats.failures.entry(kind).or_default() += count as u64;
            telemetry::plugin_failed(&self.name, kind.as_str(), count, first_reason);
        }
        result
    }

    fn run(&mut self, inputs: Inputs<'_>, offset: usize, result: &mut BatchOutcome) {
        let messages = inputs.as_slice();
        if messages.is_empty() {
            return;
        }
        if self.live.is_none() {
            match start(&self.plugin, &self.name, &self.config_json, self.limits) {
                Ok(live) => self.live = Some(live),
                Err(e) => {
                    let reason = e.to_string();
                    let kind = FailureKind::Unavailable;
                    return fail_all(messages.len(), offset, kind, &reason, result);
                }
            }
        }
        let live = self.live.as_mut().expect("started above");
        let batch = match Lowered::new(messages) {
            Ok(batch) => batch,
            Err(batch::BatchTooLarge) if messages.len() > 1 => {
                let (head, tail) = messages.split_at(messages.len() / 2);
                self.run(Inputs::Borrowed(head), offset, result);
                self.run(Inputs::Borrowed(tail), offset + head.len(), result);
                return;
            }
            Err(batch::BatchTooLarge) => {
                let reason = "the message is larger than the 4 GiB a batch can carry";
                return fail_all(1, offset, FailureKind::Unavailable, reason, result);
            }
        };
        let called = call(live, self.limits.batch_deadline, |live| {
            // SAFETY: `instantiate` checked this type, for another lifetime
            // of the same borrowed messages.
            let process: TypedFunc<(Lowered<'_>,), (Outcome,)> =
                unsafe { TypedFunc::new_unchecked(live.process) };
            process
                .call(&mut live.store, (batch,))
                .map(|(outcome,)| outcome)
        });
        match called {
            Ok(outcome) => {
                let len = messages.len();
                if let Err(reason) = batch::decode(outcome, inputs, offset, result) {
                    fail_all(len, offset, FailureKind::InvalidOutput, &reason, result);
                }
            }
            Err(e) => {
                // A trapped Store must not be used again.
                self.live = None;
                self.stats.restarts += 1;
                telemetry::plugin_restarted(&self.name, e.kind.as_str());
                if e.kind == FailureKind::Trap && messages.len() > 1 {
                    // Rare enough that the halves may clone their outputs.
                    let (head, tail) = messages.split_at(messages.len() / 2);
                    self.run(Inputs::Borrowed(head), offset, result);
                    self.run(Inputs::Borrowed(tail), offset + head.len(), result);
                } else {
                    fail_all(messages.len(), offset, e.kind, &e.reason, result);
                }
            }
        }
    }
}

fn fail_all(len: usize, offset: usize, kind: FailureKind, reason: &str, result: &mut BatchOutcome) {
    result.failures.extend((0..len).map(|i| Failure {
        input: offset + i,
        kind,
        reason: reason.to_owned(),
    }));
}

/// Instantiates the plugin and runs `init`.
fn start(
    plugin: &Plugin,
    name: &Arc<str>,
    config_json: &str,
    limits: Limits,
) -> Result<Live, PluginError> {
    let mut live = instantiate(plugin, name, limits)?;
    let init = call(&mut live, limits.batch_deadline, |live| {
        live.bindings
            .weir_plugin_transform()
            .call_init(&mut live.store, config_json)
    });
    init_outcome(name, init).map(|()| live)
}

/// What a guest's `init` call came to: refused (the plugin's reason) or
/// failed to run (a trap, a deadline), both naming the plugin.
pub(super) fn init_outcome(
    name: &str,
    init: Result<Result<(), String>, CallError>,
) -> Result<(), PluginError> {
    match init {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(PluginError::InitRefused {
            plugin: name.to_owned(),
            reason,
        }),
        Err(e) => Err(PluginError::Start {
            plugin: name.to_owned(),
            stage: "initialise",
            reason: e.reason,
        }),
    }
}

/// A fresh store with the instance's limits.
pub(super) fn new_store(plugin: &Plugin, name: &Arc<str>, limits: Limits) -> Store<HostState> {
    let mut store = Store::new(
        &plugin.inner.runtime.engine,
        HostState::new(
            name.clone(),
            limits.memory_cap_bytes,
            plugin.inner.runtime.ticker.clone(),
        ),
    );
    store.limiter(|state| &mut state.limits);
    // The epoch advances only when some call is past its deadline (see
    // `ticker`); each store checks whether it is its own.
    store.epoch_deadline_callback(|store| {
        Ok(if store.data().overdue() {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Continue(1)
        })
    });
    store.set_epoch_deadline(1);
    store
}

/// Describes an instantiation failure.
pub(super) fn start_error(name: &str, e: wasmtime::Error) -> PluginError {
    PluginError::Start {
        plugin: name.to_owned(),
        stage: "instantiate",
        reason: describe(&to_anyhow(e), None),
    }
}

fn instantiate(plugin: &Plugin, name: &Arc<str>, limits: Limits) -> Result<Live, PluginError> {
    let Pre::Transform(pre) = &plugin.inner.pre else {
        return Err(PluginError::WrongKind {
            plugin: name.to_string(),
            is: "an aggregate plugin (world aggregator)",
            needed: "a plain step needs a filter, map or flat-map plugin; use it in a window step",
        });
    };
    let mut store = new_store(plugin, name, limits);
    // Instantiation runs the guest's start functions.
    let _awake = store.data_mut().awake(limits.batch_deadline);
    let instance = pre
        .instance_pre()
        .instantiate(&mut store)
        .map_err(|e| start_error(name, e))?;
    let bindings = Transformer::new(&mut store, &instance).map_err(|e| start_error(name, e))?;
    let process = *export_func::<(Lowered<'static>,), (Outcome,)>(
        &mut store,
        &instance,
        plugin,
        name,
        TRANSFORM_INTERFACE,
        "process",
    )?
    .func();
    let state = match plugin.info().state_export {
        None => None,
        Some(_) => Some(StateFns {
            snapshot: export_func(
                &mut store,
                &instance,
                plugin,
                name,
                STATE_INTERFACE,
                "snapshot",
            )?,
            restore: export_func(
                &mut store,
                &instance,
                plugin,
                name,
                STATE_INTERFACE,
                "restore",
            )?,
        }),
    };
    Ok(Live {
        store,
        bindings,
        process,
        state,
    })
}

/// The function `func` of the instance's `interface` export (at the
/// contract version the plugin was built against), typed as `(P) -> (R)`.
/// Functions that take a [`Lowered`] batch borrow their messages, so their
/// callers keep the untyped [`Func`] and type it per call, for the call's
/// lifetime, with [`TypedFunc::new_unchecked`].
pub(super) fn export_func<P, R>(
    store: &mut Store<HostState>,
    instance: &wasmtime::component::Instance,
    plugin: &Plugin,
    name: &str,
    interface: &str,
    func: &str,
) -> Result<TypedFunc<P, R>, PluginError>
where
    P: ComponentNamedList + Lower,
    R: ComponentNamedList + Lift,
{
    let export = format!("{interface}@{}", plugin.info().contract_version);
    let found = instance
        .get_export_index(&mut *store, None, &export)
        .and_then(|iface| instance.get_export_index(&mut *store, Some(&iface), func))
        .and_then(|index| instance.get_func(&mut *store, index))
        .ok_or_else(|| PluginError::Start {
            plugin: name.to_owned(),
            stage: "instantiate",
            reason: format!("its {export} export has no `{func}` function"),
        })?;
    found.typed(&*store).map_err(|e| start_error(name, e))
}

/// Reads metadata from a throwaway instance.
pub(super) fn read_metadata(plugin: &Plugin) -> Result<Metadata, PluginError> {
    let label: Arc<str> = Arc::from(plugin.path().display().to_string());
    let limits = Limits::default();
    let described = match &plugin.inner.pre {
        Pre::Transform(_) => {
            let mut live = instantiate(plugin, &label, limits)?;
            call(&mut live, limits.batch_deadline, |live| {
                live.bindings
                    .weir_plugin_transform()
                    .call_metadata(&mut live.store)
            })
        }
        Pre::Aggregate(_) => {
            let mut live = super::aggregate::instantiate(plugin, &label, limits)?;
            super::aggregate::metadata(&mut live, limits)
        }
    };
    let m = described.map_err(|e| PluginError::Start {
        plugin: label.to_string(),
        stage: "describe itself",
        reason: e.reason,
    })?;
    Ok(Metadata {
        name: m.name,
        version: m.version,
        kind: match m.kind {
            PluginKind::Filter => "filter",
            PluginKind::Map => "map",
            PluginKind::FlatMap => "flat-map",
            PluginKind::Aggregate => "aggregate",
        }
        .to_owned(),
        config_keys: m
            .config_keys
            .into_iter()
            .map(|k| ConfigKey {
                name: k.name,
                description: k.description,
            })
            .collect(),
    })
}

/// Calls into the guest under the deadline, and classifies a failure.
pub(super) fn call<L: Guest, R>(
    live: &mut L,
    deadline: Duration,
    f: impl FnOnce(&mut L) -> wasmtime::Result<R>,
) -> Result<R, CallError> {
    live.store().set_epoch_deadline(1);
    live.store().data().last_stderr.lock().unwrap().take();
    let _awake = live.store().data_mut().awake(deadline);
    f(live).map_err(|e| {
        let e = to_anyhow(e);
        let stderr = live.store().data().last_stderr.lock().unwrap().take();
        let kind = classify(&e);
        let reason = match kind {
            FailureKind::Deadline => format!(
                "the plugin ran past its {} ms deadline and was interrupted",
                deadline.as_millis()
            ),
            _ => describe(&e, stderr),
        };
        CallError { kind, reason }
    })
}

fn classify(e: &anyhow::Error) -> FailureKind {
    if e.chain().any(|c| c.is::<MemoryCapExceeded>()) {
        return FailureKind::MemoryCap;
    }
    match e.chain().find_map(|c| c.downcast_ref::<wasmtime::Trap>()) {
        Some(wasmtime::Trap::Interrupt) => FailureKind::Deadline,
        _ => FailureKind::Trap,
    }
}

fn describe(e: &anyhow::Error, stderr: Option<String>) -> String {
    let root = e.root_cause().to_string();
    match stderr {
        Some(line) => format!("{root} (the plugin's last words: {line})"),
        None => root,
    }
}

pub(super) fn check_config_keys(
    metadata: &Metadata,
    config: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), PluginError> {
    for key in config.keys() {
        if metadata.config_keys.iter().any(|k| &k.name == key) {
            continue;
        }
        let suggestion = metadata
            .config_keys
            .iter()
            .map(|k| (strsim::damerau_levenshtein(&k.name, key), &k.name))
            .filter(|(d, _)| *d <= 2)
            .min()
            .map(|(_, name)| name.clone());
        let accepted = if metadata.config_keys.is_empty() {
            "no keys".to_owned()
        } else {
            metadata
                .config_keys
                .iter()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(PluginError::UnknownConfigKey {
            plugin: metadata.name.clone(),
            key: key.clone(),
            suggestion,
            accepted,
        });
    }
    Ok(())
}
