//! The [`Transform`] trait every plugin implements (by hand, or through the
//! function-form macros), the plugin [`Kind`]s and [`NoConfig`].

use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};

use crate::{Emitter, Message, Result};

/// What a plugin does with each message; reported to the host in the
/// plugin's metadata and checked by the SDK after every message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Keeps or drops each message unchanged: at most one output per input,
    /// and only [`Emitter::pass`].
    Filter,
    /// Turns each message into exactly one output.
    Map,
    /// Turns each message into zero or more outputs.
    FlatMap,
}

/// A plugin: its config type, its kind, how it starts and what it does with
/// one message.
///
/// The SDK owns the value [`init`](Self::init) returns and hands it to
/// [`process`](Self::process) for every message of every batch, so state
/// lives in `self`, never in statics. Export the type with
/// [`export!`](crate::export).
///
/// ```
/// use std::collections::HashSet;
/// use serde::Deserialize;
/// use weir_sdk::{Emitter, Kind, Message, Result, Transform};
///
/// /// Passes only the first message of each device.
/// struct FirstSeen {
///     seen: HashSet<String>,
/// }
///
/// impl Transform for FirstSeen {
///     type Config = weir_sdk::NoConfig;
///     const KIND: Kind = Kind::Filter;
///
///     fn init(_: Self::Config) -> Result<Self> {
///         Ok(Self { seen: HashSet::new() })
///     }
///
///     fn process(&mut self, msg: &Message, out: &mut Emitter) -> Result<()> {
///         let device = msg.field("device").ok_or("no device field")?;
///         if self.seen.insert(device.to_owned()) {
///             out.pass();
///         }
///         Ok(())
///     }
/// }
///
/// weir_sdk::export!(FirstSeen);
/// ```
pub trait Transform: Sized + 'static {
    /// The config table from the manifest, parsed once before
    /// [`init`](Self::init). Its serde field names are reported to the host
    /// as the plugin's config keys. Use [`NoConfig`] for none.
    type Config: DeserializeOwned;

    /// What the plugin does with each message.
    const KIND: Kind;

    /// One-line descriptions of config keys, `(key, description)`, shown by
    /// `weir plugin inspect`. Keys without one get an empty description.
    const CONFIG_DOCS: &'static [(&'static str, &'static str)] = &[];

    /// Builds the plugin from its parsed config. An error refuses the config;
    /// the host reports it as `invalid config: <message>`.
    fn init(config: Self::Config) -> Result<Self>;

    /// Handles one message, emitting its outputs into `out`. An error fails
    /// this message only and withdraws whatever it emitted.
    fn process(&mut self, msg: &Message<'_>, out: &mut Emitter<'_>) -> Result<()>;
}

/// A [`Transform`] whose state survives a hot reload: the running version's
/// [`snapshot`](Self::snapshot) is handed to the new version's
/// [`restore`](Self::restore), after its `init`, at a batch boundary.
/// Export the type with [`export_stateful!`](crate::export_stateful)
/// (world `stateful-transformer`) instead of [`export!`](crate::export).
///
/// The bytes are the plugin's own format. Put a version in them: a new
/// version of the plugin must either read an older version's state or
/// refuse it with an error, and the host then keeps the running version.
pub trait Stateful: Transform {
    /// Serialises the state. An error keeps the running version in place.
    fn snapshot(&self) -> Result<Vec<u8>>;

    /// Replaces the state [`init`](Transform::init) built with one
    /// [`snapshot`](Self::snapshot) returned, possibly by an earlier
    /// version. An error refuses it and the host keeps the running version.
    fn restore(&mut self, state: &[u8]) -> Result<()>;
}

/// The config of a plugin that takes none: accepts an empty table (or
/// nothing at all) and refuses any key, so a misplaced setting is noticed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoConfig;

impl<'de> de::Deserialize<'de> for NoConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NoConfigVisitor;

        impl<'de> Visitor<'de> for NoConfigVisitor {
            type Value = NoConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an empty table")
            }

            fn visit_unit<E: de::Error>(self) -> Result<NoConfig, E> {
                Ok(NoConfig)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoConfig, A::Error> {
                match map.next_key::<String>()? {
                    None => Ok(NoConfig),
                    Some(key) => Err(de::Error::custom(format_args!(
                        "this plugin takes no configuration, but got key `{key}`"
                    ))),
                }
            }
        }

        deserializer.deserialize_any(NoConfigVisitor)
    }
}
