//! The glue between the contract's exports and a [`Transform`]: the batch
//! loop, the instance slot and the metadata builder.
//!
//! `process_batch` is the one batch loop: the wasm export and
//! [`testing::Harness`](crate::testing::Harness) both run it, so native tests
//! exercise the same span decoding and outcome encoding the host sees. It
//! must not allocate per message on the passthrough path, and it never
//! catches panics (wasm32 aborts; the host isolates the message).

use std::any::Any;
use std::cell::RefCell;

use crate::__bindings::exports::weir::plugin::transform::PluginMetadata;
use crate::__bindings::weir::plugin::types::{Batch, ConfigKey, Failure, Outcome, PluginKind};
use crate::{Emitter, Kind, Message, Transform, config};

/// Runs every event of `batch` through `plugin`.
pub(crate) fn process_batch<T: Transform>(plugin: &mut T, batch: &Batch) -> Outcome {
    let mut out = Emitter::with_capacity(batch.events.len());
    let mut failures = Vec::new();
    for (index, event) in batch.events.iter().enumerate() {
        // The host cannot send more than u32::MAX events: the index type of
        // the contract says so.
        let input = u32::try_from(index).expect("batch index fits in u32");
        let msg = match Message::from_event(event, &batch.data) {
            Ok(msg) => msg,
            Err(message) => {
                failures.push(Failure { input, message });
                continue;
            }
        };
        let mark = out.begin(input, msg.raw_fields());
        let result = plugin
            .process(&msg, &mut out)
            .map_err(crate::Error::into_message)
            .and_then(|()| out.check_kind(T::KIND, mark));
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

/// The plugin's self-description; `name` and `version` come from the user
/// crate (the export macro expands `env!("CARGO_PKG_…")` there).
pub fn metadata<T: Transform>(name: &str, version: &str) -> PluginMetadata {
    let config_keys = config::keys::<T::Config>()
        .into_iter()
        .map(|key| ConfigKey {
            name: key.to_owned(),
            description: T::CONFIG_DOCS
                .iter()
                .find(|(name, _)| *name == key)
                .map_or("", |(_, description)| description)
                .to_owned(),
        })
        .collect();
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
    INSTANCE.with(|slot| {
        let mut slot = slot.borrow_mut();
        match slot.as_mut().and_then(|p| p.downcast_mut::<T>()) {
            Some(plugin) => process_batch(plugin, &batch),
            None => fail_all(
                &batch,
                "host bug: process was called before a successful init",
            ),
        }
    })
}

fn fail_all(batch: &Batch, message: &str) -> Outcome {
    let failures = (0..batch.events.len())
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
