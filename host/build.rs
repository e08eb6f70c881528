//! Link options for the `weir` binary.
//!
//! On Linux with glibc 2.36 or newer the binary is linked with packed
//! relative relocations (`-z pack-relative-relocs`, DT_RELR). A
//! position-independent Rust binary of this size carries ~1.4 MB of
//! `R_X86_64_RELATIVE` entries, which the dynamic loader reads at every
//! start, so they stayed resident for the life of the process; packed, they
//! take ~16 KB. Address-space randomisation is unchanged. Older glibc cannot
//! load such a binary, so the option is left out there.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let native = std::env::var("HOST").ok() == std::env::var("TARGET").ok();
    if target_os == "linux" && target_env == "gnu" && native && glibc_has_dt_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
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
