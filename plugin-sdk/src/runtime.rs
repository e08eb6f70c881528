//! The glue between the contract's exports and a [`Transform`]: the batch
//! loop, the instance slot and the metadata builder.
//!
//! `process_batch` is the one batch loop: the wasm export,
//! [`testing::Harness`](crate::testing::Harness) and [`Native`] all run it,
//! so native tests exercise the same word decoding and outcome encoding the
//! host sees. It must not allocate per message on the passthrough path, and
//! it never catches panics (wasm32 aborts; the host isolates the message).

use std::any::Any;
use std::cell::RefCell;

use crate::__bindings::exports::weir::plugin::transform::PluginMetadata;
use crate::__bindings::weir::plugin::types::{Batch, ConfigKey, Failure, Outcome, PluginKind};
use crate::message::{EVENT_WORDS, word};
use crate::{Emitter, Kind, Message, Transform, config};

/// Runs every message of `batch` through `plugin`.
pub(crate) fn process_batch<T: Transform>(plugin: &mut T, batch: &Batch) -> Outcome {
    let (events, rest) = batch.events.as_chunks::<EVENT_WORDS>();
    if !rest.is_empty() {
        // A torn descriptor means the host and the SDK disagree on the
        // layout: trust no message of the batch.
        return fail_all(
            batch,
            &format!(
                "host bug: the batch has {} event words, not a multiple of {EVENT_WORDS}",
                batch.events.len()
            ),
        );
    }
    let mut out = Emitter::with_capacity(events.len(), &batch.data);
    let mut failures = Vec::new();
    for (index, words) in events.iter().enumerate() {
        // The host cannot send more than u32::MAX messages: the index type
        // of the contract says so.
        let input = u32::try_from(index).expect("batch index fits in u32");
        let msg = match Message::from_words(words, &batch.data) {
            Ok(msg) => msg,
            Err(message) => {
                failures.push(Failure { input, message });
                continue;
            }
        };
        let fields = (words[word::FIELDS], words[word::FIELDS + 1]);
        let mark = out.begin(input, fields);
        let result = match plugin.process(&msg, &mut out) {
            Ok(()) => out.check_kind(T::KIND, mark),
            Err(error) => Err(error.into_message()),
        };
        if let Err(message) = result {
            out.rollback(mark);
            failures.push(Failure { input, message });
        }
    }
    let (emitted, data) = out.finish();
    Outcome {
        emitted,
        data,
        failures,
    }
}

/// The config keys `C` accepts, each with its description from `docs`
/// (empty when it has none): the `config-keys` of both worlds' metadata.
pub(crate) fn config_keys<C: serde::de::DeserializeOwned>(docs: &[(&str, &str)]) -> Vec<ConfigKey> {
    config::keys::<C>()
        .into_iter()
        .map(|key| ConfigKey {
            name: key.to_owned(),
            description: docs
                .iter()
                .find(|(name, _)| *name == key)
                .map_or("", |(_, description)| description)
                .to_owned(),
        })
        .collect()
}

/// The plugin's self-description; `name` and `version` come from the user
/// crate (the export macro expands `env!("CARGO_PKG_…")` there).
pub fn metadata<T: Transform>(name: &str, version: &str) -> PluginMetadata {
    let config_keys = config_keys::<T::Config>(T::CONFIG_DOCS);
    PluginMetadata {
        name: name.to_owned(),
        version: version.to_owned(),
        kind: match T::KIND {
            Kind::Filter => PluginKind::Filter,
            Kind::Map => PluginKind::Map,
            Kind::FlatMap => PluginKind::FlatMap,
        },
        config_keys,
    }
}

thread_local! {
    /// The instance `init` built. A component instance is single-threaded,
    /// so this is simply the one place the SDK keeps plugin state; it is
    /// type-erased because the slot is declared once, here, for every
    /// plugin type.
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// The `init` export: parses the config, builds the plugin, keeps it.
pub fn init<T: Transform>(config: &str) -> Result<(), String> {
    let plugin = config::init::<T>(config)?;
    INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(plugin)));
    Ok(())
}

/// The `process` export: runs the batch through the kept instance.
pub fn process<T: Transform>(batch: Batch) -> Outcome {
    process_kept::<T>(&batch)
}

fn process_kept<T: Transform>(batch: &Batch) -> Outcome {
    INSTANCE.with(|slot| {
        let mut slot = slot.borrow_mut();
        match slot.as_mut().and_then(|p| p.downcast_mut::<T>()) {
            Some(plugin) => process_batch(plugin, batch),
            None => fail_all(
                batch,
                "host bug: process was called before a successful init",
            ),
        }
    })
}

/// The `snapshot` export of a [`Stateful`](crate::Stateful) plugin.
pub fn snapshot<T: crate::Stateful>() -> Result<Vec<u8>, String> {
    INSTANCE.with(
        |slot| match slot.borrow().as_ref().and_then(|p| p.downcast_ref::<T>()) {
            Some(plugin) => plugin.snapshot().map_err(crate::Error::into_message),
            None => Err("host bug: snapshot was called before a successful init".to_owned()),
        },
    )
}

/// The `restore` export of a [`Stateful`](crate::Stateful) plugin.
pub fn restore<T: crate::Stateful>(state: &[u8]) -> Result<(), String> {
    INSTANCE.with(|slot| {
        match slot
            .borrow_mut()
            .as_mut()
            .and_then(|p| p.downcast_mut::<T>())
        {
            Some(plugin) => plugin.restore(state).map_err(crate::Error::into_message),
            None => Err("host bug: restore was called before a successful init".to_owned()),
        }
    })
}

/// A plugin compiled natively, driven exactly as the wasm exports drive it
/// (`init` keeps the instance in the same slot, `process` runs the same
/// batch loop), minus the wasm boundary. [`export!`](crate::export)
/// generates `__weir_native()` returning one, for benchmarks that compare a
/// plugin in wasm with the same plugin compiled natively.
#[derive(Clone, Copy, Debug)]
pub struct Native {
    init: fn(&str) -> Result<(), String>,
    process: fn(&Batch) -> Outcome,
}

impl Native {
    /// The entry points of `T`.
    pub fn of<T: Transform>() -> Self {
        Native {
            init: init::<T>,
            process: process_kept::<T>,
        }
    }

    /// As the `init` export (for this thread).
    pub fn init(&self, config: &str) -> Result<(), String> {
        (self.init)(config)
    }

    /// As the `process` export, without taking the batch.
    pub fn process(&self, batch: &Batch) -> Outcome {
        (self.process)(batch)
    }
}

/// Fails every message of `batch`, counting a torn trailing descriptor as
/// one, so that no input goes unanswered.
fn fail_all(batch: &Batch, message: &str) -> Outcome {
    let failures = (0..batch.events.len().div_ceil(EVENT_WORDS))
        .map(|index| Failure {
            input: u32::try_from(index).expect("batch index fits in u32"),
            message: message.to_owned(),
        })
        .collect();
    Outcome {
        emitted: Vec::new(),
        data: Vec::new(),
        failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Result;
    use crate::output::OUTPUT_WORDS;

    #[crate::filter]
    fn keep(_msg: &Message) -> Result<bool> {
        Ok(true)
    }

    fn run(events: Vec<u32>, data: &[u8]) -> Outcome {
        let mut plugin = config::init::<Plugin>("{}").unwrap();
        let batch = Batch {
            events,
            data: data.to_vec(),
        };
        process_batch(&mut plugin, &batch)
    }

    fn inputs(outcome: &Outcome) -> Vec<u32> {
        outcome.failures.iter().map(|f| f.input).collect()
    }

    #[test]
    fn a_bad_span_fails_only_its_message() {
        let mut events = vec![0; 3 * EVENT_WORDS];
        // Message 1's payload runs one byte past the data.
        events[EVENT_WORDS + word::PAYLOAD] = 2;
        events[EVENT_WORDS + word::PAYLOAD + 1] = 2;
        let outcome = run(events, b"abc");
        assert_eq!(inputs(&outcome), [1]);
        assert!(outcome.failures[0].message.contains("payload span"));
        // Two passthroughs: input index, then flags and spans all 0.
        let mut expected = vec![0; 2 * OUTPUT_WORDS];
        expected[OUTPUT_WORDS] = 2;
        assert_eq!(outcome.emitted, expected);
        assert!(outcome.data.is_empty());
    }

    #[test]
    fn a_torn_batch_fails_every_message() {
        let outcome = run(vec![0; EVENT_WORDS + 3], b"");
        assert_eq!(inputs(&outcome), [0, 1]);
        assert!(outcome.emitted.is_empty());
        assert!(
            outcome.failures[0]
                .message
                .contains("13 event words, not a multiple of 10"),
            "{}",
            outcome.failures[0].message
        );
        assert!(run(Vec::new(), b"").failures.is_empty());
    }
}
