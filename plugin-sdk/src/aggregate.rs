//! Aggregate plugins: the [`Aggregate`] trait, the [`Window`] a result is
//! for, and the glue between the `aggregate` exports and the trait.
//!
//! The host owns windows and time; an aggregate plugin owns the arithmetic.
//! For every window of every group the host asks for one accumulator
//! ([`Aggregate::create`]), feeds it messages ([`Aggregate::add`]), may merge
//! two ([`Aggregate::merge`]: hopping windows are built from panes, sessions
//! merge when an event bridges them), and finally turns it into a result
//! ([`Aggregate::finish`]). Accumulators are serialised with serde for
//! snapshot/restore, so state survives a hot reload.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use serde_json::{Value, json};
//! use weir_sdk::{Aggregate, Message, Result, Window};
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     field: String,
//! }
//!
//! /// The mean of one numeric field.
//! struct Mean {
//!     field: String,
//! }
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Sum {
//!     n: u64,
//!     total: f64,
//! }
//!
//! impl Aggregate for Mean {
//!     type Config = Config;
//!     type Acc = Sum;
//!
//!     fn init(config: Config) -> Result<Self> {
//!         Ok(Mean { field: config.field })
//!     }
//!
//!     fn create(&self) -> Sum {
//!         Sum::default()
//!     }
//!
//!     fn add(&self, acc: &mut Sum, msg: &Message) -> Result<()> {
//!         let value = msg.get_f64(&self.field)?; // read first: a failure changes nothing
//!         acc.n += 1;
//!         acc.total += value;
//!         Ok(())
//!     }
//!
//!     fn merge(&self, into: &mut Sum, from: &Sum) {
//!         into.n += from.n;
//!         into.total += from.total;
//!     }
//!
//!     fn finish(&self, acc: Sum, _window: &Window) -> Result<Option<Value>> {
//!         Ok(Some(json!({ "mean": acc.total / acc.n as f64 })))
//!     }
//! }
//!
//! weir_sdk::export_aggregate!(Mean);
//! ```
//!
//! The host adds `window_start`, `window_end` and the group key fields to
//! every result, so `finish` returns only the aggregate fields.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::__bindings::weir::plugin::types::{
    Batch, Failure, Metadata as PluginMetadata, Outcome, PluginKind,
};
use crate::message::{EVENT_WORDS, word};
use crate::{Emitter, Message, Output, Result, config};

/// An aggregate plugin: its config, its accumulator type, and the five
/// steps of an accumulator's life.
///
/// The SDK owns the value [`init`](Self::init) returns and every
/// accumulator; export the type with
/// [`export_aggregate!`](crate::export_aggregate). See the [module
/// docs](crate::aggregate) for a complete example.
pub trait Aggregate: Sized + 'static {
    /// The config table from the manifest (the window step's `config`),
    /// parsed once before [`init`](Self::init). Use
    /// [`NoConfig`](crate::NoConfig) for none.
    type Config: DeserializeOwned;

    /// The running state of one window of one group. Serialised with
    /// serde (as JSON) for snapshot/restore.
    type Acc: Serialize + DeserializeOwned;

    /// One-line descriptions of config keys, `(key, description)`.
    const CONFIG_DOCS: &'static [(&'static str, &'static str)] = &[];

    /// Builds the plugin from its parsed config. An error refuses the
    /// config.
    fn init(config: Self::Config) -> Result<Self>;

    /// A new, empty accumulator.
    fn create(&self) -> Self::Acc;

    /// Folds one message in. An error fails this message only (the host
    /// counts and reports it); leave `acc` unchanged when failing, by
    /// reading everything from the message before changing it.
    fn add(&self, acc: &mut Self::Acc, msg: &Message<'_>) -> Result<()>;

    /// Folds `from` into `into`, as if `into` had also seen every message
    /// `from` saw.
    fn merge(&self, into: &mut Self::Acc, from: &Self::Acc);

    /// The result of a window: a JSON object of aggregate fields, or `None`
    /// for no output. An error fails this window's output only.
    fn finish(&self, acc: Self::Acc, window: &Window) -> Result<Option<Value>>;
}

/// The window a result is for, as the host describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// Start, ms since the Unix epoch (inclusive).
    pub start_ms: i64,
    /// End, ms since the Unix epoch (exclusive).
    pub end_ms: i64,
    /// The group key: `(field, value)` for each `group_by` entry.
    pub group: Vec<(String, String)>,
    /// The topic of the window's first message.
    pub topic: String,
}

impl Window {
    /// The value of one group key field.
    pub fn group(&self, key: &str) -> Option<&str> {
        self.group
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn from_message(msg: &Message<'_>) -> std::result::Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Bounds {
            window_start: i64,
            window_end: i64,
        }
        let bounds: Bounds = serde_json::from_slice(msg.payload())
            .map_err(|e| format!("host bug: the window description is not valid: {e}"))?;
        Ok(Window {
            start_ms: bounds.window_start,
            end_ms: bounds.window_end,
            group: msg
                .fields()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            topic: msg.topic().to_owned(),
        })
    }
}

/// An aggregate plugin and its live accumulators, by host id.
pub(crate) struct State<T: Aggregate> {
    pub(crate) plugin: T,
    pub(crate) accs: HashMap<u32, T::Acc>,
}

impl<T: Aggregate> State<T> {
    pub(crate) fn new(plugin: T) -> Self {
        State {
            plugin,
            accs: HashMap::new(),
        }
    }

    /// `accumulate`: feeds each `(message, id)` pair of `targets`.
    pub(crate) fn accumulate(&mut self, batch: &Batch, targets: &[u32]) -> Vec<Failure> {
        let (events, torn) = batch.events.as_chunks::<EVENT_WORDS>();
        let mut failures: Vec<Failure> = Vec::new();
        if !torn.is_empty() || !targets.len().is_multiple_of(2) {
            let reason = "host bug: torn batch or target words";
            return (0..events.len())
                .map(|i| Failure {
                    input: i as u32,
                    message: reason.to_owned(),
                })
                .collect();
        }
        // Pairs come grouped by message: the message (and its parsed JSON)
        // is built once for all its accumulators.
        let mut current: Option<(u32, std::result::Result<Message<'_>, String>)> = None;
        for pair in targets.chunks_exact(2) {
            let (input, id) = (pair[0], pair[1]);
            if failures.last().is_some_and(|f| f.input == input) {
                continue;
            }
            let Some(words) = events.get(input as usize) else {
                failures.push(Failure {
                    input,
                    message: format!("host bug: target names message {input}"),
                });
                continue;
            };
            if current.as_ref().is_none_or(|(i, _)| *i != input) {
                current = Some((input, Message::from_words(words, &batch.data)));
            }
            let msg = match &current.as_ref().expect("set above").1 {
                Ok(msg) => msg,
                Err(reason) => {
                    failures.push(Failure {
                        input,
                        message: reason.clone(),
                    });
                    continue;
                }
            };
            let plugin = &self.plugin;
            let acc = self.accs.entry(id).or_insert_with(|| plugin.create());
            if let Err(e) = plugin.add(acc, msg) {
                failures.push(Failure {
                    input,
                    message: e.into_message(),
                });
            }
        }
        failures
    }

    /// `merge`: folds `source` into `target`, leaving `source` as it was.
    pub(crate) fn merge(&mut self, target: u32, source: u32) {
        if target == source {
            return;
        }
        let Some(from) = self.accs.remove(&source) else {
            // Never fed: empty, and merging an empty accumulator is a no-op
            // except that `target` now exists.
            let plugin = &self.plugin;
            self.accs.entry(target).or_insert_with(|| plugin.create());
            return;
        };
        let plugin = &self.plugin;
        let into = self.accs.entry(target).or_insert_with(|| plugin.create());
        plugin.merge(into, &from);
        self.accs.insert(source, from);
    }

    /// `finish`: one result per window, then the accumulators are gone.
    pub(crate) fn finish(&mut self, ids: &[u32], windows: &Batch) -> Outcome {
        let (events, _) = windows.events.as_chunks::<EVENT_WORDS>();
        let mut out = Emitter::with_capacity(events.len(), &windows.data);
        let mut failures = Vec::new();
        for (index, words) in events.iter().enumerate() {
            let input = index as u32;
            let acc = match ids.get(index) {
                Some(id) => self.accs.remove(id),
                None => None,
            };
            let result = Message::from_words(words, &windows.data)
                .and_then(|msg| Window::from_message(&msg))
                .and_then(|window| {
                    let acc = acc.unwrap_or_else(|| self.plugin.create());
                    self.plugin
                        .finish(acc, &window)
                        .map_err(crate::Error::into_message)
                })
                .and_then(|value| match value {
                    None => Ok(None),
                    Some(v @ Value::Object(_)) => Ok(Some(v)),
                    Some(other) => Err(format!(
                        "finish must return a JSON object of aggregate fields, not {other}"
                    )),
                });
            let fields = (words[word::FIELDS], words[word::FIELDS + 1]);
            let mark = out.begin(input, fields);
            match result {
                Ok(Some(value)) => out.emit(Output::new().json(&value)),
                Ok(None) => {}
                Err(message) => {
                    out.rollback(mark);
                    failures.push(Failure { input, message });
                }
            }
        }
        let (emitted, data) = out.finish();
        Outcome {
            emitted,
            data,
            failures,
        }
    }

    /// `discard`.
    pub(crate) fn discard(&mut self, ids: &[u32]) {
        for id in ids {
            self.accs.remove(id);
        }
    }

    /// `snapshot`: the accumulator as JSON (an unseen id is empty).
    pub(crate) fn snapshot(&self, id: u32) -> std::result::Result<Vec<u8>, String> {
        let result = match self.accs.get(&id) {
            Some(acc) => serde_json::to_vec(acc),
            None => serde_json::to_vec(&self.plugin.create()),
        };
        result.map_err(|e| format!("cannot snapshot accumulator {id}: {e}"))
    }

    /// `restore`.
    pub(crate) fn restore(&mut self, id: u32, state: &[u8]) -> std::result::Result<(), String> {
        match serde_json::from_slice(state) {
            Ok(acc) => {
                self.accs.insert(id, acc);
                Ok(())
            }
            Err(e) => {
                self.accs.remove(&id);
                Err(format!("cannot restore accumulator {id}: {e}"))
            }
        }
    }
}

// ----- the exports -------------------------------------------------------

thread_local! {
    /// The `State<T>` `init` built (type-erased: declared once for every
    /// plugin type). A component instance is single-threaded.
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

fn with_state<T: Aggregate, R>(f: impl FnOnce(&mut State<T>) -> R) -> Option<R> {
    INSTANCE.with(|slot| {
        let mut slot = slot.borrow_mut();
        slot.as_mut()
            .and_then(|s| s.downcast_mut::<State<T>>())
            .map(f)
    })
}

/// Parses the config and builds the plugin; errors are the text the host
/// reports.
pub(crate) fn build<T: Aggregate>(config: &str) -> std::result::Result<T, String> {
    let config = config::parse::<T::Config>(config).map_err(|e| format!("invalid config: {e}"))?;
    T::init(config).map_err(|e| format!("invalid config: {e}"))
}

#[doc(hidden)]
pub mod exports {
    //! What [`export_aggregate!`](crate::export_aggregate) calls.

    use super::*;

    /// The plugin's self-description.
    pub fn metadata<T: Aggregate>(name: &str, version: &str) -> PluginMetadata {
        let config_keys = crate::runtime::config_keys::<T::Config>(T::CONFIG_DOCS);
        PluginMetadata {
            name: name.to_owned(),
            version: version.to_owned(),
            kind: PluginKind::Aggregate,
            config_keys,
        }
    }

    /// `init`.
    pub fn init<T: Aggregate>(config: &str) -> std::result::Result<(), String> {
        let plugin = build::<T>(config)?;
        INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(State::new(plugin))));
        Ok(())
    }

    const NOT_INITIALISED: &str = "host bug: called before a successful init";

    /// `accumulate`.
    pub fn accumulate<T: Aggregate>(batch: &Batch, targets: &[u32]) -> Vec<Failure> {
        with_state::<T, _>(|s| s.accumulate(batch, targets)).unwrap_or_else(|| {
            let n = batch.events.len() / EVENT_WORDS;
            (0..n as u32)
                .map(|input| Failure {
                    input,
                    message: NOT_INITIALISED.to_owned(),
                })
                .collect()
        })
    }

    /// `merge`.
    pub fn merge<T: Aggregate>(target: u32, source: u32) {
        with_state::<T, _>(|s| s.merge(target, source));
    }

    /// `finish`.
    pub fn finish<T: Aggregate>(ids: &[u32], windows: &Batch) -> Outcome {
        with_state::<T, _>(|s| s.finish(ids, windows)).unwrap_or_else(|| Outcome {
            emitted: Vec::new(),
            data: Vec::new(),
            failures: (0..ids.len() as u32)
                .map(|input| Failure {
                    input,
                    message: NOT_INITIALISED.to_owned(),
                })
                .collect(),
        })
    }

    /// `discard`.
    pub fn discard<T: Aggregate>(ids: &[u32]) {
        with_state::<T, _>(|s| s.discard(ids));
    }

    /// `snapshot`.
    pub fn snapshot<T: Aggregate>(id: u32) -> std::result::Result<Vec<u8>, String> {
        with_state::<T, _>(|s| s.snapshot(id)).unwrap_or_else(|| Err(NOT_INITIALISED.into()))
    }

    /// `restore`.
    pub fn restore<T: Aggregate>(id: u32, state: &[u8]) -> std::result::Result<(), String> {
        with_state::<T, _>(|s| s.restore(id, state)).unwrap_or_else(|| Err(NOT_INITIALISED.into()))
    }
}

/// Exports an [`Aggregate`] type as the component's `aggregate` interface
/// (world `aggregator`).
///
/// Call it once per plugin crate. It expands to nothing outside `wasm32`,
/// so the plugin builds and tests natively
/// ([`testing::AggregateHarness`](crate::testing::AggregateHarness)). The
/// plugin's name and version are its crate's.
#[macro_export]
macro_rules! export_aggregate {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__aggregator_bindings::exports::weir::plugin::aggregate as __agg;
            use $crate::aggregate::exports as __x;

            struct __WeirExport;

            impl __agg::Guest for __WeirExport {
                fn metadata() -> __agg::PluginMetadata {
                    __x::metadata::<$plugin>(
                        ::core::env!("CARGO_PKG_NAME"),
                        ::core::env!("CARGO_PKG_VERSION"),
                    )
                }

                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    __x::init::<$plugin>(&config)
                }

                fn accumulate(
                    batch: __agg::Batch,
                    targets: ::std::vec::Vec<u32>,
                ) -> ::std::vec::Vec<__agg::Failure> {
                    __x::accumulate::<$plugin>(&batch, &targets)
                }

                fn merge(target: u32, source: u32) {
                    __x::merge::<$plugin>(target, source)
                }

                fn finish(ids: ::std::vec::Vec<u32>, windows: __agg::Batch) -> __agg::Outcome {
                    __x::finish::<$plugin>(&ids, &windows)
                }

                fn discard(ids: ::std::vec::Vec<u32>) {
                    __x::discard::<$plugin>(&ids)
                }

                fn snapshot(
                    id: u32,
                ) -> ::core::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    __x::snapshot::<$plugin>(id)
                }

                fn restore(
                    id: u32,
                    state: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    __x::restore::<$plugin>(id, &state)
                }
            }

            $crate::__aggregator_bindings::__export_aggregator!(
                __WeirExport with_types_in $crate::__aggregator_bindings
            );
        };

        // Natively nothing is exported; naming the entry point keeps the
        // plugin's code alive for the dead-code lint.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn(&str) -> ::core::result::Result<(), ::std::string::String> =
            $crate::aggregate::exports::init::<$plugin>;
    };
}
