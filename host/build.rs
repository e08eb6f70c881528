//! Link options for the `weir` binary.
//!
//! On Linux with glibc 2.36 or newer the binary is linked with packed
//! relative relocations (`-z pack-relative-relocs`, DT_RELR). A
//! position-independent Rust binary of this size carries ~1.4 MB of
//! `R_X86_64_RELATIVE` entries, which the dynamic loader reads at every
//! start, so they stayed resident for the life of the process; packed, they
//! take ~16 KB. Address-space randomisation is unchanged. Older glibc cannot
//! load such a binary, so the option is left out there.
//!
//! On x86_64 Linux, where rustc links with its own lld, the functions weir
//! runs from start to steady state are placed together at the front of
//! `.text`, in the order `link/startup-order/*.txt` list them
//! (`--symbol-ordering-file`; `link/profile-startup` regenerates the lists).
//! Spread over 23 MB of code, they kept ~9.5 MB of the binary resident
//! through the kernel's 64 KB fault-around; together, ~2.5 MB. Names a
//! build does not have are skipped, so a stale list costs memory only.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let native = std::env::var("HOST").ok() == std::env::var("TARGET").ok();
    if target_os == "linux" && target_env == "gnu" && native && glibc_has_dt_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=link/startup-order");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    if links_with_rust_lld() {
        let order = startup_order().expect("host/link/startup-order is readable");
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// The lists of every build as one file in `OUT_DIR`, each name once: a
/// build finds its own names and the linker skips the others.
///
/// There is one list per way of building the binary, since symbol names
/// carry a hash of each crate's features: `cargo build`/`run`/`install -p
/// weir` (`build.txt`); `cargo test`/`bench -p weir`, where dev-dependencies
/// add features to shared crates such as tokio's `test-util`
/// (`package-tests.txt`); `cargo test --workspace`, as CI runs it, where
/// every member's dependencies add theirs (`workspace-tests.txt`).
///
/// Names ending in `.llvm.<n>` (~5 %: functions rustc's ThinLTO shares
/// between codegen units) hash their unit's contents. They come only from
/// dependencies: weir itself is one codegen unit (workspace `Cargo.toml`),
/// and release builds carry no debug info, which put the checkout's path
/// into the hash. So the names match at any path and after edits to weir.
fn startup_order() -> std::io::Result<PathBuf> {
    let dir = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("link/startup-order");
    let mut lists = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "txt") {
            lists.push(path);
        }
    }
    lists.sort();
    let mut seen = HashSet::new();
    let mut order = String::new();
    for list in lists {
        for name in std::fs::read_to_string(list)?.lines() {
            if seen.insert(name.to_owned()) {
                order.push_str(name);
                order.push('\n');
            }
        }
    }
    let out = Path::new(&std::env::var("OUT_DIR").unwrap_or_default()).join("startup-order.txt");
    std::fs::write(&out, order)?;
    Ok(out)
}

/// Whether the binary is linked by rustc's own lld, which reads a symbol
/// ordering file: the default on x86_64-unknown-linux-gnu since Rust 1.90
/// (this workspace needs 1.95), unless a linker or linker flags are
/// configured, which may be GNU ld.
fn links_with_rust_lld() -> bool {
    let target = std::env::var("TARGET").unwrap_or_default();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    target == "x86_64-unknown-linux-gnu"
        && std::env::var_os("RUSTC_LINKER").is_none()
        && !flags.contains("link")
}

/// Whether this machine's glibc loads DT_RELR binaries (2.36 and newer):
/// `getconf GNU_LIBC_VERSION` prints e.g. `glibc 2.36`.
fn glibc_has_dt_relr() -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 36)
}
