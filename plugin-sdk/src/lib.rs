//! Write weir plugins in Rust. A filter is one annotated function:
//!
//! ```
//! use serde::Deserialize;
//! use weir_sdk::{Message, Result};
//!
//! #[derive(Deserialize)]
//! struct Hot { field: String, above: f64 }
//!
//! #[weir_sdk::filter]
//! fn hot(msg: &Message, cfg: &Hot) -> Result<bool> {
//!     Ok(msg.get_f64(&cfg.field)? > cfg.above)
//! }
//! ```
//!
//! Build it as a WebAssembly component and drop the `.wasm` next to the
//! manifest:
//!
//! ```text
//! cargo build --profile guest --target wasm32-wasip2 -p hot
//! ```
//!
//! (the plugin crate has `crate-type = ["cdylib"]` and depends on
//! `weir-sdk`, `serde` and, for tests, `serde_json`).
//!
//! # Three function forms
//!
//! | attribute | signature | per message |
//! | --- | --- | --- |
//! | [`#[filter]`](filter) | `fn(&Message, &Config) -> Result<bool>` | `true` passes the input unchanged |
//! | [`#[map]`](map) | `fn(&Message, &Config) -> Result<Output>` | exactly one output |
//! | [`#[flat_map]`](flat_map) | `fn(&Message, &Config) -> Result<Vec<Output>>` | zero or more outputs (any `IntoIterator<Item = Output>`) |
//!
//! The config argument may be left out (the plugin then takes
//! [`NoConfig`]). The config type is any `serde::de::DeserializeOwned`
//! struct; it is parsed once, in `init`, from the JSON object the host builds
//! from the manifest's table, and an error refuses the config with `invalid
//! config: <serde's reason>`. Use `#[serde(deny_unknown_fields)]` so typos
//! are caught. Describe keys for `weir plugin inspect` with
//! `#[weir_sdk::filter(describe(field = "Dotted path to the number."))]`.
//!
//! **What the macros generate.** Next to the function, each macro generates
//! a private `struct Plugin` (in the function's module), implementing
//! [`Transform`] with the function as its `process`, and exports it with
//! [`export!`]. Name that type in tests (`use super::*;` in a `tests`
//! module): `testing::Harness::<Plugin>::new(json!({…}))`. One plugin per
//! crate: a component exports one `transform`.
//!
//! # Stateful plugins: the trait
//!
//! Implement [`Transform`] and call [`export!`]. The SDK builds the value in
//! `init`, keeps it for the life of the instance, and passes `&mut self` to
//! every [`process`](Transform::process) call: state lives there, never in
//! statics. The `dedupe` example plugin is the model.
//!
//! To keep that state across a hot reload, also implement [`Stateful`]
//! (`snapshot` to bytes, `restore` from them) and export with
//! [`export_stateful!`] instead of [`export!`]: the component then exports
//! the `state` interface too (world `stateful-transformer`), and weir hands
//! the running version's state to the new one. Without it a new version
//! starts with the state its `init` builds.
//!
//! # Messages and outputs
//!
//! A [`Message`] borrows its parts from the batch buffer and decodes nothing
//! until asked: [`topic`](Message::topic), [`payload`](Message::payload),
//! [`field`](Message::field) (topic captures), and JSON accessors for
//! [dotted paths](json::lookup): [`get_f64`](Message::get_f64)`("a.b.0")`,
//! [`get_str`](Message::get_str), … read one value straight from the payload
//! bytes, and [`json`](Message::json) parses the whole payload once. Errors
//! name the path (`field "a.b" is missing`).
//!
//! An [`Output`] is a list of changes to the input (topic, payload, JSON
//! payload, fields, timestamp); parts left alone are sent back unflagged and
//! the host reuses the input's bytes, so a passthrough copies nothing.
//!
//! # Errors and panics
//!
//! An `Err` from a plugin fails that message only: the host gets a
//! `failure` with the error's text, and the other messages of the batch are
//! unaffected. A panic is not caught: it aborts the instance (wasm32 has no
//! unwinding), and the host fails the batch, rebuilds the instance and
//! isolates the message.
//!
//! # Host services
//!
//! [`log`] writes structured records into the host's log, tagged with the
//! plugin's name; [`now_ms`] reads the host's clock. Plugins have no other
//! access to the outside world (no files, network or environment).
//!
//! # Aggregate plugins
//!
//! Windows (`tumbling`, `hopping`, `sliding`, `session`, `count`) are
//! managed by the host; a plugin that folds a window's messages into a
//! result implements [`Aggregate`] (create, add, merge, finish) and calls
//! [`export_aggregate!`]. The [`aggregate`] module shows a complete one;
//! `plugins/stats` is the ready-made one.
//!
//! # Testing natively
//!
//! Plugin crates compile natively too (the wasm exports exist only on
//! `wasm32`), and [`testing::Harness`] runs a plugin through the same batch
//! code the wasm export runs. Logs go to a capture the harness returns.

#![deny(missing_docs)]

// The macros name this crate `::weir_sdk`; this makes that path work in the
// SDK's own tests and doctests too.
extern crate self as weir_sdk;

pub mod aggregate;
mod config;
mod error;
pub mod json;
pub mod log;
mod message;
mod output;
#[doc(hidden)]
pub mod runtime;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod transform;

pub use aggregate::{Aggregate, Window};
pub use error::{Error, Result};
pub use message::{Fields, Message};
pub use output::{Emitter, Output};
pub use transform::{Kind, NoConfig, Stateful, Transform};
/// Turns `fn(&Message, &Config) -> Result<bool>` into a filter plugin.
///
/// See the [crate docs](crate) for the generated `Plugin` type.
pub use weir_sdk_macros::filter;
/// Turns `fn(&Message, &Config) -> Result<Vec<Output>>` into a flat-map
/// plugin.
pub use weir_sdk_macros::flat_map;
/// Turns `fn(&Message, &Config) -> Result<Output>` into a map plugin.
pub use weir_sdk_macros::map;

/// Bindings for the `transformer` world, generated once here so plugin
/// crates depend on `weir-sdk` alone.
#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "transformer",
        pub_export_macro: true,
        export_macro_name: "__export_transformer",
        default_bindings_module: "weir_sdk::__bindings",
        // Lets `log` take `&[(&str, &str)]` without building `String`s.
        ownership: Borrowing { duplicate_if_necessary: false },
    });
}

/// Bindings for the `aggregator` world. Its shared interfaces are the
/// `transformer` bindings' own, so a batch has one type in both worlds.
#[doc(hidden)]
pub mod __aggregator_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "aggregator",
        pub_export_macro: true,
        export_macro_name: "__export_aggregator",
        default_bindings_module: "weir_sdk::__aggregator_bindings",
        with: {
            "weir:plugin/types@0.1.0": weir_sdk::__bindings::weir::plugin::types,
            "weir:plugin/host@0.1.0": weir_sdk::__bindings::weir::plugin::host,
        },
    });
}

/// Bindings for the `state-export` world: the `state` interface alone,
/// exported next to the `transformer` bindings' `transform` so the
/// component is a `stateful-transformer`. (Generating that world here
/// would define the `transform` export a second time.)
#[doc(hidden)]
pub mod __state_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "state-export",
        pub_export_macro: true,
        export_macro_name: "__export_state",
        default_bindings_module: "weir_sdk::__state_bindings",
    });
}

/// The current wall-clock time, in milliseconds since the Unix epoch, as
/// the host sees it (natively: the system clock).
pub fn now_ms() -> i64 {
    #[cfg(target_arch = "wasm32")]
    {
        __bindings::weir::plugin::host::now_ms()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Exports a [`Transform`] type as the component's `transform` interface.
///
/// Call it once per plugin crate, at any module level. It expands to
/// nothing outside `wasm32`, so plugin crates build and test natively. The
/// plugin's name and version are the plugin crate's `CARGO_PKG_NAME` and
/// `CARGO_PKG_VERSION`.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __WeirExport;

            impl $crate::__bindings::exports::weir::plugin::transform::Guest for __WeirExport {
                fn metadata()
                -> $crate::__bindings::exports::weir::plugin::transform::PluginMetadata {
                    $crate::runtime::metadata::<$plugin>(
                        ::core::env!("CARGO_PKG_NAME"),
                        ::core::env!("CARGO_PKG_VERSION"),
                    )
                }

                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::runtime::init::<$plugin>(&config)
                }

                fn process(
                    batch: $crate::__bindings::exports::weir::plugin::transform::Batch,
                ) -> $crate::__bindings::exports::weir::plugin::transform::Outcome {
                    $crate::runtime::process::<$plugin>(batch)
                }
            }

            $crate::__bindings::__export_transformer!(__WeirExport with_types_in $crate::__bindings);
        };

        // Natively nothing is exported, but naming the entry point keeps the
        // plugin's code alive for the dead-code lint, as the export does on
        // wasm32.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn(&str) -> ::core::result::Result<(), ::std::string::String> =
            $crate::runtime::init::<$plugin>;

        /// The plugin's entry points natively, for benchmarks (see
        /// `weir_sdk::runtime::Native`).
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        #[allow(dead_code, reason = "used only by benchmarks that include the plugin's source")]
        pub fn __weir_native() -> $crate::runtime::Native {
            $crate::runtime::Native::of::<$plugin>()
        }
    };
}

/// Exports a [`Stateful`] [`Transform`] type as the component's `transform`
/// and `state` interfaces (world `stateful-transformer`), so its state
/// moves to the new version on a hot reload.
///
/// Use it instead of [`export!`], once per plugin crate. It expands to
/// nothing outside `wasm32`, so plugin crates build and test natively
/// ([`testing::Harness::reload`] runs the hand-over).
#[macro_export]
macro_rules! export_stateful {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__bindings::exports::weir::plugin::transform as __t;

            struct __WeirExport;

            impl __t::Guest for __WeirExport {
                fn metadata() -> __t::PluginMetadata {
                    $crate::runtime::metadata::<$plugin>(
                        ::core::env!("CARGO_PKG_NAME"),
                        ::core::env!("CARGO_PKG_VERSION"),
                    )
                }

                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::runtime::init::<$plugin>(&config)
                }

                fn process(batch: __t::Batch) -> __t::Outcome {
                    $crate::runtime::process::<$plugin>(batch)
                }
            }

            impl $crate::__state_bindings::exports::weir::plugin::state::Guest for __WeirExport {
                fn snapshot()
                -> ::core::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    $crate::runtime::snapshot::<$plugin>()
                }

                fn restore(
                    state: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::runtime::restore::<$plugin>(&state)
                }
            }

            $crate::__bindings::__export_transformer!(__WeirExport with_types_in $crate::__bindings);
            $crate::__state_bindings::__export_state!(
                __WeirExport with_types_in $crate::__state_bindings
            );
        };

        // Natively nothing is exported; naming the entry points keeps the
        // plugin's code alive for the dead-code lint.
        #[cfg(not(target_arch = "wasm32"))]
        const _: (
            fn(&str) -> ::core::result::Result<(), ::std::string::String>,
            fn() -> ::core::result::Result<::std::vec::Vec<u8>, ::std::string::String>,
            fn(&[u8]) -> ::core::result::Result<(), ::std::string::String>,
        ) = (
            $crate::runtime::init::<$plugin>,
            $crate::runtime::snapshot::<$plugin>,
            $crate::runtime::restore::<$plugin>,
        );

        /// The plugin's entry points natively, for benchmarks (see
        /// `weir_sdk::runtime::Native`).
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        #[allow(dead_code, reason = "used only by benchmarks that include the plugin's source")]
        pub fn __weir_native() -> $crate::runtime::Native {
            $crate::runtime::Native::of::<$plugin>()
        }
    };
}
