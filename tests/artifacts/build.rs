//! Builds every guest plugin of the workspace from source, as WebAssembly
//! components, and writes `$OUT_DIR/guests.rs`: one `pub const` absolute path
//! per component, included by `src/lib.rs`.
//!
//! This script owns three steps, one function each:
//!
//! 1. [`build_rust_guests`]: one nested `cargo build --profile guest --target
//!    wasm32-wasip2 -p …` over this workspace, into `<target>/guests`, with
//!    the host build's flags, wrappers and profile overrides removed from the
//!    environment (wasmtime's `crates/test-programs/artifacts/build.rs`
//!    pattern). `<target>` is the workspace's target directory, so the test
//!    and bench profiles share one guest build.
//! 2. [`build_c_guest`]: C bindings generated from `wit/` with the
//!    `wit-bindgen-c` library (once per world, into `$OUT_DIR/c-bindings`,
//!    which `C_BINDINGS` names so a test can check the copies `weir new`
//!    ships in `plugin-sdk/c/bindings`), the plugin and the C kit (`plugin-sdk/c`)
//!    compiled by clang for `wasm32-wasi` (wasi-libc), and the core module
//!    turned into a component with the `wit-component` library, adding the
//!    WASI preview1 reactor adapter only when the module imports
//!    `wasi_snapshot_preview1`. No `wit-bindgen` or `wasm-tools` command line
//!    is needed.
//! 3. [`write_paths`]: the constants.
//!
//! It must never build the host package (`weir`, which pulls in wasmtime) and
//! never write outside the target directory. A guest that fails to build, or
//! a listed guest that produces no component, fails this build with a message
//! naming it: tests must not run against stale or missing plugins.

use anyhow::{Context, Result, bail, ensure};
use std::env;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One guest component this crate provides.
struct Guest {
    /// Package name for a Rust guest; the component's name for a C guest.
    /// Also the name in `ALL`.
    name: &'static str,
    lang: Lang,
    /// Doc comment of the generated constant.
    doc: &'static str,
}

enum Lang {
    /// A workspace member built by the nested cargo (a `cdylib`).
    Rust,
    /// Every `.c` file of a folder (relative to the workspace root), linked
    /// with the C kit, for a world of `wit/plugin.wit`.
    C {
        dir: &'static str,
        world: &'static str,
    },
}

/// Every guest, in the order of the generated constants and of `ALL`.
const GUESTS: &[Guest] = &[
    Guest {
        name: "threshold",
        lang: Lang::Rust,
        doc: "`plugins/threshold`: keeps a message when a numeric payload field passes a comparison (Rust, `weir-sdk`).",
    },
    Guest {
        name: "threshold-c",
        lang: Lang::C {
            dir: "plugins/threshold-c",
            world: "transformer",
        },
        doc: "`plugins/threshold-c`: the C twin of [`THRESHOLD`], same semantics, built with clang and the C kit.",
    },
    Guest {
        name: "units",
        lang: Lang::Rust,
        doc: "`plugins/units`: a map that converts numeric fields between units and renames keys.",
    },
    Guest {
        name: "split-array",
        lang: Lang::Rust,
        doc: "`plugins/split-array`: a flat-map that turns a JSON array payload into one message per element.",
    },
    Guest {
        name: "dedupe",
        lang: Lang::Rust,
        doc: "`plugins/dedupe`: a stateful filter that drops messages whose key it let through recently.",
    },
    Guest {
        name: "stats",
        lang: Lang::Rust,
        doc: "`plugins/stats`: an aggregate plugin (world `aggregator`): count, sum, min, max, avg, first, last, stddev, percentiles.",
    },
    Guest {
        name: "rise",
        lang: Lang::Rust,
        doc: "`plugins/rise`: an aggregate plugin: the largest rise of a reading within each window.",
    },
    Guest {
        name: "noop",
        lang: Lang::Rust,
        doc: "`tests/guests/noop`: passes every message through unchanged; the boundary-cost baseline.",
    },
    Guest {
        name: "chaos",
        lang: Lang::Rust,
        doc: "`tests/guests/chaos`: traps, loops, hogs memory or probes the sandbox on request.",
    },
    Guest {
        name: "agg-chaos",
        lang: Lang::Rust,
        doc: "`tests/guests/agg-chaos`: an aggregate plugin that counts and sums, and traps in `add` or `finish` on request.",
    },
    Guest {
        name: "tag-v1",
        lang: Lang::Rust,
        doc: "`tests/guests/tag-v1`: a map adding `\"tag\": \"tag-v1\"` to each payload (version 1.0.0); hot-reload tests swap it with [`TAG_V2`].",
    },
    Guest {
        name: "tag-v2",
        lang: Lang::Rust,
        doc: "`tests/guests/tag-v2`: the same source as [`TAG_V1`], tagging `tag-v2` (version 2.0.0).",
    },
    Guest {
        name: "tag-refuse",
        lang: Lang::Rust,
        doc: "`tests/guests/tag-refuse`: a transform whose `init` refuses every config.",
    },
    Guest {
        name: "conf-map",
        lang: Lang::Rust,
        doc: "`tests/conformance/plugins/rust/map`: the conformance map (Rust twin of the JS, Python and C ones).",
    },
    Guest {
        name: "conf-split",
        lang: Lang::Rust,
        doc: "`tests/conformance/plugins/rust/split`: the conformance flat-map.",
    },
    Guest {
        name: "conf-map-c",
        lang: Lang::C {
            dir: "tests/conformance/plugins/c/map",
            world: "transformer",
        },
        doc: "`tests/conformance/plugins/c/map`: the conformance map in C (the C kit's `weir_transform`).",
    },
    Guest {
        name: "conf-split-c",
        lang: Lang::C {
            dir: "tests/conformance/plugins/c/split",
            world: "transformer",
        },
        doc: "`tests/conformance/plugins/c/split`: the conformance flat-map in C.",
    },
    Guest {
        name: "conf-sum-c",
        lang: Lang::C {
            dir: "tests/conformance/plugins/c/sum",
            world: "aggregator",
        },
        doc: "`tests/conformance/plugins/c/sum`: the conformance aggregate in C (the C kit's aggregator world).",
    },
    Guest {
        name: "conf-sum",
        lang: Lang::Rust,
        doc: "`tests/conformance/plugins/rust/sum`: the conformance aggregate (world `aggregator`).",
    },
    Guest {
        name: "layout-probe",
        lang: Lang::Rust,
        doc: "`tests/guests/layout-probe`: benchmark guest taking batches in three layouts (exports another world).",
    },
];

/// The worlds of `wit/plugin.wit` a C plugin can be built for.
const C_WORLDS: [&str; 2] = ["transformer", "aggregator"];

/// The Rust guests' target and profile (the `guest` profile lives in the
/// workspace `Cargo.toml`).
const RUST_TARGET: &str = "wasm32-wasip2";
const RUST_PROFILE: &str = "guest";

/// Variables a nested cargo must not inherit: they configure the host build
/// (compiler flags, wrappers such as sccache or coverage tools, target,
/// target directory) or hand it the outer build's jobserver.
const HOST_ONLY_ENV: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_BUILD_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
];

/// Prefixes of host-only variables: profile overrides (`CARGO_PROFILE_DEV_*`
/// and friends) would otherwise leak into the `guest` profile, which
/// inherits `release`.
const HOST_ONLY_ENV_PREFIXES: &[&str] = &["CARGO_PROFILE_"];

/// What to install when the C toolchain is missing (Debian package names).
const C_TOOLCHAIN_HINT: &str = "install the C toolchain for wasm32-wasi with \
     `apt-get install -y clang lld wasi-libc libclang-rt-dev-wasm32` \
     (or point WASI_SDK_PATH at a wasi-sdk)";

fn main() {
    if let Err(error) = run() {
        // `{:#}` prints the whole context chain on one line.
        eprintln!("error: weir-test-artifacts: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR is not set")?);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR is not set")?);
    let root = manifest_dir
        .join("../..")
        .canonicalize()
        .context("cannot resolve the workspace root (two levels above tests/artifacts)")?;

    // Directories are scanned recursively by cargo. The root manifest holds
    // the `guest` profile; the lock file pins the guests' dependencies.
    for watched in [
        "wit",
        "plugin-sdk",
        "plugins",
        "tests/guests",
        "tests/conformance/plugins",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    // Every world's C bindings, in one folder (their file names differ).
    let c_bindings = out_dir.join("c-bindings");
    for world in C_WORLDS {
        generate_c_bindings(&root.join("wit"), world, &c_bindings)
            .with_context(|| format!("generating the C bindings of world `{world}`"))?;
    }

    let guests_dir = target_dir(&out_dir).join("guests");
    let mut built = Vec::with_capacity(GUESTS.len());
    let rust_paths = build_rust_guests(&root, &guests_dir)?;
    for guest in GUESTS {
        let path = match guest.lang {
            Lang::Rust => rust_paths
                .iter()
                .find(|(name, _)| *name == guest.name)
                .map(|(_, path)| path.clone())
                .expect("every Rust guest has a path"),
            Lang::C { dir, world } => {
                build_c_guest(&root, &out_dir, &c_bindings, guest.name, dir, world)
                    .with_context(|| format!("building the C guest `{dir}`"))?
            }
        };
        built.push((guest, path));
    }
    write_paths(&out_dir.join("guests.rs"), &built, &c_bindings)
}

/// The workspace's target directory: the nearest ancestor of `OUT_DIR` that
/// cargo marked with `CACHEDIR.TAG`. `OUT_DIR` is
/// `<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out`, so the fallback is
/// four levels up.
fn target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .or_else(|| out_dir.ancestors().nth(4))
        .unwrap_or(out_dir)
        .to_path_buf()
}

/// Step 1: builds every Rust guest with one nested cargo and returns
/// `(name, component path)` for each.
fn build_rust_guests(root: &Path, guests_dir: &Path) -> Result<Vec<(&'static str, PathBuf)>> {
    let names: Vec<&str> = GUESTS
        .iter()
        .filter(|guest| matches!(guest.lang, Lang::Rust))
        .map(|guest| guest.name)
        .collect();

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(["--profile", RUST_PROFILE, "--target", RUST_TARGET]);
    for name in &names {
        cmd.args(["-p", name]);
    }
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if HOST_ONLY_ENV.contains(&key)
            || HOST_ONLY_ENV_PREFIXES
                .iter()
                .any(|prefix| key.starts_with(prefix))
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("CARGO_TARGET_DIR", guests_dir);
    // A build that denies warnings (CI) denies them in the guests too.
    if host_denies_warnings() {
        cmd.env("RUSTFLAGS", "-D warnings");
    }

    // Diagnostics go to stderr (shown when this build fails); the JSON
    // messages on stdout say which files this build produced.
    cmd.arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());

    eprintln!("running: {cmd:?}");
    let output = cmd
        .spawn()
        .and_then(|child| child.wait_with_output())
        .with_context(|| format!("cannot run cargo to build the Rust guests ({cmd:?})"))?;
    ensure!(
        output.status.success(),
        "building the Rust guests failed ({}); the compiler output is above. Command: {cmd:?}",
        output.status
    );

    // A component counts only if cargo reported it in this build (fresh or
    // rebuilt): a file left by an older build of a crate that no longer
    // produces one must not pass. Debug-quoting a path quotes it as JSON
    // does for any path without control characters.
    let messages = String::from_utf8_lossy(&output.stdout);
    let out = guests_dir.join(RUST_TARGET).join(RUST_PROFILE);
    let paths: Vec<(&str, PathBuf)> = names
        .iter()
        .map(|name| (*name, out.join(format!("{}.wasm", name.replace('-', "_")))))
        .collect();
    let missing: Vec<String> = paths
        .iter()
        .filter(|(_, path)| {
            let quoted = format!("{:?}", path.display().to_string());
            !messages.lines().any(|line| {
                line.contains(r#""reason":"compiler-artifact""#) && line.contains(&quoted)
            })
        })
        .map(|(name, path)| format!("`{name}` ({})", path.display()))
        .collect();
    ensure!(
        missing.is_empty(),
        "cargo built the Rust guests but produced no component for {}; is each a \
         `[lib] crate-type = [\"cdylib\"]` package?",
        missing.join(", ")
    );
    Ok(paths)
}

/// Whether the host build runs with `-D warnings`.
fn host_denies_warnings() -> bool {
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split('\x1f').collect();
    flags.contains(&"-Dwarnings") || flags.windows(2).any(|pair| pair == ["-D", "warnings"])
}

/// Step 2: builds `<dir>/*.c` with the C kit and the bindings in `bindings`
/// into `$OUT_DIR/<name with _>.wasm` and returns that path.
fn build_c_guest(
    root: &Path,
    out_dir: &Path,
    bindings: &Path,
    name: &str,
    dir: &str,
    world: &str,
) -> Result<PathBuf> {
    let work = out_dir.join(name);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let plugin_dir = root.join(dir);
    let kit_dir = root.join("plugin-sdk/c");
    let mut sources = c_files(&plugin_dir)?;
    ensure!(
        !sources.is_empty(),
        "{} holds no .c file",
        plugin_dir.display()
    );
    sources.push(kit_dir.join("weir.c"));
    sources.push(bindings.join(format!("{world}.c")));
    sources.push(bindings.join(format!("{world}_component_type.o")));

    let core = work.join("core.wasm");
    let clang = WasiClang::find()?;
    // The kit builds for either world: `WEIR_AGGREGATOR` selects the
    // aggregate exports over the `aggregator` bindings.
    let defines: &[&str] = if world == "aggregator" {
        &["-DWEIR_AGGREGATOR"]
    } else {
        &[]
    };
    clang.link_reactor(&sources, &[bindings, &kit_dir], defines, &core)?;

    let component = out_dir.join(format!("{}.wasm", name.replace('-', "_")));
    componentize(&core, &component)?;
    Ok(component)
}

/// Writes `<world>.c`, `<world>.h` and `<world>_component_type.o` for the
/// world of the WIT package in `wit_dir`, as `wit-bindgen c` would.
fn generate_c_bindings(wit_dir: &Path, world: &str, out: &Path) -> Result<()> {
    use wit_bindgen_core::wit_parser::Resolve;

    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(wit_dir)
        .with_context(|| format!("parsing the WIT package in {}", wit_dir.display()))?;
    let world = resolve.select_world(&[package], Some(world))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .context("generating C bindings")?;

    fs::create_dir_all(out)?;
    for (file, contents) in files.iter() {
        fs::write(out.join(file), contents)
            .with_context(|| format!("writing {}", out.join(file).display()))?;
    }
    Ok(())
}

/// The `.c` files of a folder, sorted so the link order is stable.
fn c_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension() == Some(OsStr::new("c")) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A clang that can compile and link for `wasm32-wasi`: a wasi-sdk's when
/// `WASI_SDK_PATH` is set, else the system's (Debian's clang finds wasi-libc
/// under `/usr/{include,lib}/wasm32-wasi` by itself; other distributions
/// install a sysroot in `/usr/share/wasi-sysroot`).
struct WasiClang {
    program: PathBuf,
    sysroot: Option<PathBuf>,
}

impl WasiClang {
    fn find() -> Result<Self> {
        println!("cargo:rerun-if-env-changed=WASI_SDK_PATH");
        let clang = match env::var_os("WASI_SDK_PATH") {
            Some(sdk) => {
                let sdk = PathBuf::from(sdk);
                Self {
                    program: sdk.join("bin/clang"),
                    sysroot: Some(sdk.join("share/wasi-sysroot")),
                }
            }
            None => {
                let shared = PathBuf::from("/usr/share/wasi-sysroot");
                Self {
                    program: PathBuf::from("clang"),
                    sysroot: shared.is_dir().then_some(shared),
                }
            }
        };
        clang.check()?;
        Ok(clang)
    }

    /// Fails early, with the install hint, when clang, wasi-libc, the wasm32
    /// compiler-rt builtins or wasm-ld is missing: clang's own errors for
    /// these do not say which package to install.
    fn check(&self) -> Result<()> {
        let version = self.command().arg("--version").output();
        ensure!(
            matches!(&version, Ok(out) if out.status.success()),
            "cannot run `{}`: {C_TOOLCHAIN_HINT}",
            self.program.display()
        );
        for (query, what) in [
            ("-print-file-name=libc.a", "wasi-libc (libc.a)"),
            ("-print-libgcc-file-name", "compiler-rt builtins for wasm32"),
            ("-print-prog-name=wasm-ld", "the wasm-ld linker (lld)"),
        ] {
            let out = self.command().arg(query).output()?;
            let found = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            ensure!(
                out.status.success() && found.is_absolute() && found.exists(),
                "clang finds no {what} for wasm32-wasi: {C_TOOLCHAIN_HINT}"
            );
        }
        Ok(())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--target=wasm32-wasi");
        if let Some(sysroot) = &self.sysroot {
            cmd.arg(format!("--sysroot={}", sysroot.display()));
        }
        cmd
    }

    /// Compiles and links `inputs` into a reactor core module (exports
    /// `_initialize`, no `main`). Compiler warnings become cargo warnings.
    fn link_reactor(
        &self,
        inputs: &[PathBuf],
        include: &[&Path],
        defines: &[&str],
        out: &Path,
    ) -> Result<()> {
        let mut cmd = self.command();
        cmd.args([
            "-O2",
            "-mexec-model=reactor",
            "-Wall",
            "-Wextra",
            "-Wl,--strip-all",
        ]);
        for dir in include {
            cmd.arg("-I").arg(dir);
        }
        cmd.args(defines);
        cmd.arg("-o").arg(out).args(inputs);
        eprintln!("running: {cmd:?}");
        let output = cmd
            .output()
            .with_context(|| format!("cannot run {cmd:?}: {C_TOOLCHAIN_HINT}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprint!("{stderr}");
        for line in stderr.lines().filter(|line| line.contains("warning:")) {
            println!("cargo:warning={line}");
        }
        ensure!(
            output.status.success(),
            "clang failed ({}); its messages are above. Command: {cmd:?}",
            output.status
        );
        Ok(())
    }
}

/// Turns a core module built against the bindings into a component, as
/// `wasm-tools component new [--adapt …]` does.
fn componentize(core: &Path, out: &Path) -> Result<()> {
    use wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER;

    const PREVIEW1: &str = "wasi_snapshot_preview1";
    let module = fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let mut encoder = wit_component::ComponentEncoder::default();
    encoder.validate(true);
    encoder.module(&module)?;
    // Anything from wasi-libc that touches stdio, the clock or the
    // environment imports preview1; a pure computation imports nothing and
    // needs no adapter.
    if imports_module(&module, PREVIEW1)? {
        encoder.adapter(PREVIEW1, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER)?;
    }
    let component = encoder
        .encode()
        .with_context(|| format!("componentizing {}", core.display()))?;
    fs::write(out, component).with_context(|| format!("writing {}", out.display()))
}

/// Whether a core module imports anything from `module_name`.
fn imports_module(module: &[u8], module_name: &str) -> Result<bool> {
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        if let wasmparser::Payload::ImportSection(section) = payload? {
            for import in section.into_imports() {
                if import?.module == module_name {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// Step 3: writes the constants `src/lib.rs` includes.
fn write_paths(file: &Path, built: &[(&Guest, PathBuf)], c_bindings: &Path) -> Result<()> {
    let mut code = String::from("// Generated by tests/artifacts/build.rs. Do not edit.\n");
    let mut all = String::new();
    for (guest, path) in built {
        let path = path
            .to_str()
            .with_context(|| format!("{} is not UTF-8", path.display()))?;
        if !Path::new(path).is_absolute() {
            bail!("guest path {path} is not absolute");
        }
        let constant = guest.name.replace('-', "_").to_uppercase();
        writeln!(code, "\n/// {}", guest.doc)?;
        writeln!(code, "pub const {constant}: &str = {path:?};")?;
        writeln!(all, "    ({:?}, {constant}),", guest.name)?;
    }
    let c_bindings = c_bindings
        .to_str()
        .with_context(|| format!("{} is not UTF-8", c_bindings.display()))?;
    writeln!(
        code,
        "\n/// The folder of the C bindings of every world in [`C_WORLDS`], as \
         `wit-bindgen c wit --world <world>` writes them.\n\
         pub const C_BINDINGS: &str = {c_bindings:?};"
    )?;
    writeln!(
        code,
        "\n/// The worlds whose C bindings are in [`C_BINDINGS`].\n\
         pub const C_WORLDS: &[&str] = &{C_WORLDS:?};"
    )?;
    writeln!(
        code,
        "\n/// Every guest as `(name, component path)`, in the order above.\n\
         pub const ALL: &[(&str, &str)] = &[\n{all}];"
    )?;
    fs::write(file, code).with_context(|| format!("writing {}", file.display()))
}
