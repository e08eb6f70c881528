//! The `weir` binary's code layout: `host/build.rs` hands the linker
//! `host/link/startup-order/*.txt`, the functions weir runs from start to
//! steady state, so they sit together instead of being spread over the
//! whole `.text`, and a running weir keeps a fraction of its code resident.

#![cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]

use std::collections::HashMap;
use std::process::Command;

/// Text symbols of the `weir` binary: name → (address, size). A local
/// symbol can have many copies (one per codegen unit); the lowest address
/// is kept, which is the ordered one when the order was applied.
fn text_symbols() -> HashMap<String, (u64, u64)> {
    let out = Command::new("nm")
        .args(["--defined-only", "--print-size", env!("CARGO_BIN_EXE_weir")])
        .output()
        .expect("nm (binutils) runs");
    assert!(out.status.success(), "nm failed: {out:?}");
    let mut symbols: HashMap<String, (u64, u64)> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [address, size, "t" | "T" | "w" | "W", name] = parts[..] else {
            continue;
        };
        let (Ok(address), Ok(size)) = (
            u64::from_str_radix(address, 16),
            u64::from_str_radix(size, 16),
        ) else {
            continue;
        };
        let entry = symbols.entry(name.to_owned()).or_insert((address, size));
        if address < entry.0 {
            *entry = (address, size);
        }
    }
    symbols
}

#[test]
fn the_startup_functions_are_linked_together() {
    let symbols = text_symbols();
    // One list per way of building (host/build.rs, `startup_order`); this
    // binary is one of them, so most of one list must name its functions.
    let regenerate = "regenerate them with host/link/profile-startup (needs valgrind, mosquitto, mosquitto-clients)";
    let mut found: Vec<(u64, u64)> = Vec::new();
    let mut best = (0, 1);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/link/startup-order");
    let lists = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
    for path in lists.map(|entry| entry.unwrap().path()) {
        if path.extension().is_none_or(|e| e != "txt") {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let listed: Vec<&str> = text.lines().collect();
        let here: Vec<(u64, u64)> = listed
            .iter()
            .filter_map(|name| symbols.get(*name).copied())
            .collect();
        if here.len() * best.1 > best.0 * listed.len() {
            best = (here.len(), listed.len());
        }
        found.extend(here);
    }
    assert!(
        best.0 * 10 >= best.1 * 8,
        "only {} of the {} functions in the closest list in host/link/startup-order are in \
         this build (another rustc or changed dependencies rename them): {regenerate}",
        best.0,
        best.1
    );

    found.sort_unstable();
    found.dedup_by_key(|(address, _)| *address);
    let bytes: u64 = found.iter().map(|(_, size)| size).sum();
    let start = found[0].0;
    let end = found
        .iter()
        .map(|(address, size)| address + size)
        .max()
        .unwrap();
    let text: u64 = symbols.values().map(|(_, size)| size).sum();
    println!(
        "closest list: {} of {} functions present; all lists: {} functions, {} KiB, \
         span {} KiB of {} KiB of code",
        best.0,
        best.1,
        found.len(),
        bytes / 1024,
        (end - start) / 1024,
        text / 1024
    );
    // Together they span a little more than their size (alignment padding,
    // small functions sharing their sections); left where rustc's codegen
    // units put them, they are scattered over nearly all of `.text`.
    assert!(
        end - start <= 2 * bytes,
        "the listed functions span {} KiB for {} KiB of code: the linker did not \
         apply host/link/startup-order (host/build.rs passes it to rustc's lld; \
         a configured linker or linker flags turn it off)",
        (end - start) / 1024,
        bytes / 1024
    );
}
