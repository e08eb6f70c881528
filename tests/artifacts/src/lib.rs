//! Paths of every guest plugin, built from source by this crate's build
//! script as WebAssembly components (`wasm32-wasip2`).
//!
//! Tests and benches depend on this crate and load the components by path:
//!
//! ```no_run
//! let bytes = std::fs::read(weir_test_artifacts::THRESHOLD).unwrap();
//! # let _ = bytes;
//! ```
//!
//! The Rust guests are built once per target directory (in
//! `<target>/guests`), whatever the profile of the build that asks; the C
//! guest is built with clang and the C kit in `plugin-sdk/c`. See `build.rs`.

#![deny(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

#[cfg(test)]
mod tests {
    /// `\0asm`, version 13, layer 1: a component, not a core module.
    const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    #[test]
    fn every_guest_is_a_component_on_disk() {
        for (name, path) in super::ALL {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {path}: {e}"));
            assert_eq!(bytes.get(..8), Some(&COMPONENT_HEADER[..]), "{name}");
        }
    }

    /// `weir new --lang c` ships pre-generated C bindings (so a C project
    /// needs no `wit-bindgen`): they must be what `wit-bindgen-c` makes of
    /// the current `wit/` today.
    #[test]
    fn the_c_bindings_weir_new_ships_are_freshly_generated() {
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../plugin-sdk/c/bindings")
            .canonicalize()
            .expect("plugin-sdk/c/bindings exists");
        let fresh = std::path::Path::new(super::C_BINDINGS);
        for world in super::C_WORLDS {
            for file in [
                format!("{world}.c"),
                format!("{world}.h"),
                format!("{world}_component_type.o"),
            ] {
                let want = std::fs::read(fresh.join(&file)).unwrap();
                let have = std::fs::read(shipped.join(&file)).unwrap_or_default();
                assert!(
                    have == want,
                    "plugin-sdk/c/bindings/{file} is stale or missing: wit/ or wit-bindgen-c \
                     changed. Regenerate with `cp {}/* {}/`",
                    fresh.display(),
                    shipped.display()
                );
            }
        }
    }
}
