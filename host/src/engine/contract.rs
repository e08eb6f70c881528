//! Which contract a component was built against, told before it runs.
//!
//! weir reads the component's type (its imports and exports) to say clearly
//! what is wrong with a file that is not a plugin for this weir: not
//! WebAssembly at all, a core module where a component is needed, a
//! component for another world, or one built against a contract version this
//! weir does not support.

use wasmtime::component::Component;

/// The contract line this weir supports.
pub const CONTRACT_PACKAGE: &str = "weir:plugin";
/// Versions of `weir:plugin` this weir has bindings for (semver line).
pub const SUPPORTED_LINE: &str = "0.1";
/// The interface a transform plugin exports.
pub(super) const TRANSFORM_INTERFACE: &str = "weir:plugin/transform";
/// The interface an aggregate plugin exports (world `aggregator`).
pub(super) const AGGREGATE_INTERFACE: &str = "weir:plugin/aggregate";
/// The interface a stateful transform also exports (world
/// `stateful-transformer`): snapshot and restore of its state.
pub(super) const STATE_INTERFACE: &str = "weir:plugin/state";

/// Why a file is not a plugin this weir can run.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The bytes do not start with the WebAssembly magic number.
    #[error("not a WebAssembly file (it does not start with the \\0asm magic number)")]
    NotWasm,
    /// A core module, where a component is needed.
    #[error(
        "a core WebAssembly module, not a component; build it for the wasm32-wasip2 target \
         or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// A binary of an unknown layer or version.
    #[error("an unsupported WebAssembly binary (layer {layer}, version {version})")]
    UnknownBinary {
        /// The layer field of the header.
        layer: u16,
        /// The version field of the header.
        version: u16,
    },
    /// A component that exports no `weir:plugin` interface.
    #[error(
        "a component that does not export {TRANSFORM_INTERFACE} (it exports: {exports}); \
         is it a weir plugin?"
    )]
    OtherWorld {
        /// What it does export.
        exports: String,
    },
    /// A plugin built against another contract version.
    #[error(
        "a plugin built against {CONTRACT_PACKAGE}@{found}; this weir supports \
         {CONTRACT_PACKAGE}@{SUPPORTED_LINE}.x"
    )]
    OtherVersion {
        /// The version it was built against.
        found: String,
    },
}

/// What a component's type says about it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ComponentInfo {
    /// The contract version it was built against (`0.1.0`).
    pub contract_version: String,
    /// The world, as weir names it (`transformer`, `stateful-transformer`
    /// or `aggregator`).
    pub world: &'static str,
    /// The full name of the exported `state` interface
    /// (`weir:plugin/state@0.1.0`), when the plugin can hand its state to
    /// a new version (world `stateful-transformer`).
    pub state_export: Option<String>,
    /// Every interface it imports, by full name.
    pub imports: Vec<String>,
    /// Every interface it exports, by full name.
    pub exports: Vec<String>,
}

/// Checks the 8-byte header: magic, then layer and version.
pub fn check_header(bytes: &[u8]) -> Result<(), ContractError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(ContractError::NotWasm);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    let layer = u16::from_le_bytes([bytes[6], bytes[7]]);
    match (layer, version) {
        (0, 1) => Err(ContractError::CoreModule),
        (1, _) => Ok(()),
        _ => Err(ContractError::UnknownBinary { layer, version }),
    }
}

/// Reads the component's imports and exports and finds the contract.
pub fn inspect(
    engine: &wasmtime::Engine,
    component: &Component,
) -> Result<ComponentInfo, ContractError> {
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let found = exports.iter().find_map(|name| {
        let (iface, version) = name.split_once('@')?;
        match iface {
            TRANSFORM_INTERFACE => Some(("transformer", version.to_owned())),
            AGGREGATE_INTERFACE => Some(("aggregator", version.to_owned())),
            _ => None,
        }
    });
    let Some((world, version)) = found else {
        return Err(ContractError::OtherWorld {
            exports: if exports.is_empty() {
                "nothing".to_owned()
            } else {
                exports.join(", ")
            },
        });
    };
    if !is_supported(&version) {
        return Err(ContractError::OtherVersion { found: version });
    }
    let state_export = exports
        .iter()
        .find(|name| {
            name.split_once('@')
                .is_some_and(|(iface, v)| iface == STATE_INTERFACE && v == version)
        })
        .cloned()
        .filter(|_| world == "transformer");
    let world = if state_export.is_some() {
        "stateful-transformer"
    } else {
        world
    };
    Ok(ComponentInfo {
        contract_version: version,
        world,
        state_export,
        imports,
        exports,
    })
}

/// `0.1.x` is supported; pre-release and build suffixes are ignored.
fn is_supported(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let mut parts = core.splitn(3, '.');
    let line = format!(
        "{}.{}",
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default()
    );
    line == SUPPORTED_LINE && parts.next().is_some_and(|p| p.parse::<u32>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_apart() {
        assert!(matches!(
            check_header(b"hello world"),
            Err(ContractError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"\0asm"),
            Err(ContractError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(ContractError::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
        assert!(matches!(
            check_header(b"\0asm\x02\0\x07\0"),
            Err(ContractError::UnknownBinary {
                layer: 7,
                version: 2
            })
        ));
    }

    #[test]
    fn only_the_supported_line_is_accepted() {
        assert!(is_supported("0.1.0"));
        assert!(is_supported("0.1.7"));
        assert!(is_supported("0.1.0-rc.1"));
        assert!(!is_supported("0.2.0"));
        assert!(!is_supported("1.1.0"));
        assert!(!is_supported("0.1"));
        assert!(!is_supported("0.10.0"));
    }
}
