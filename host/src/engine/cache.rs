//! The on-disk cache of compiled components.
//!
//! Compiling a component is the slow part of loading it (milliseconds for a
//! Rust guest, seconds for a JavaScript or Python one). The cache keeps
//! wasmtime's serialized artifact under a name made of the component's
//! SHA-256 and a fingerprint of the wasmtime version and the engine's
//! configuration (tunables and enabled wasm features). wasmtime checks the
//! rest when it loads an artifact (the target, the compiler's flags, and
//! that the CPU has the features the code was compiled for).
//!
//! Loading an artifact runs native code from disk, so the folder is created
//! private to the user (0700) and only this module writes into it, through a
//! temporary file renamed into place (a reader never sees half a file). A
//! corrupt or incompatible artifact is not fatal: wasmtime refuses it, the
//! component is compiled again and the entry replaced.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::to_anyhow;

/// Where a component's compiled code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadSource {
    /// Already compiled earlier in this process.
    Memory,
    /// Read from the on-disk cache.
    Disk,
    /// Compiled now (and written to the cache, if there is one).
    Compiled,
}

impl LoadSource {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadSource::Memory => "memory",
            LoadSource::Disk => "disk",
            LoadSource::Compiled => "compiled",
        }
    }
}

/// Components from this size on take seconds to compile: they get a
/// progress line when compiled, and `weir run` compiles them off the start
/// path (a QuickJS guest is ~1.7 MB, a Python one ~18 MB; Rust and C ones
/// are tens to hundreds of KB and compile in well under a second).
pub(super) const LARGE_BYTES: usize = 1 << 20;

pub(super) struct ArtifactCache {
    dir: Option<PathBuf>,
    fingerprint: String,
}

impl ArtifactCache {
    pub(super) fn new(engine: &wasmtime::Engine, dir: Option<PathBuf>) -> Self {
        // DefaultHasher::new() uses fixed keys: stable for one build of weir,
        // and a change across builds only costs a recompile.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let fingerprint = format!("wasmtime-48.0.8-{:016x}", hasher.finish());
        ArtifactCache { dir, fingerprint }
    }

    fn entry(&self, hash: &[u8; 32]) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{}-{}.cwasm", hex(hash), self.fingerprint)))
    }

    /// Whether compiled code for `hash` is on disk (it may still turn out
    /// unusable and be compiled again).
    pub(super) fn contains(&self, hash: &[u8; 32]) -> bool {
        self.entry(hash).is_some_and(|p| p.exists())
    }

    /// The component for `bytes` on `engine`: from the cache, else compiled
    /// by `compiler` (only built when needed) and stored.
    pub(super) fn get_or_compile<'e>(
        &self,
        engine: &wasmtime::Engine,
        compiler: impl FnOnce() -> anyhow::Result<&'e wasmtime::Engine>,
        label: &str,
        hash: &[u8; 32],
        bytes: &[u8],
    ) -> anyhow::Result<(Component, LoadSource)> {
        let entry = self.entry(hash);
        if let Some(path) = entry.as_deref().filter(|p| p.exists()) {
            // SAFETY: the artifact was written by `store` below into a folder
            // private to this user; wasmtime checks its header, version and
            // configuration before using it.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(component) => return Ok((component, LoadSource::Disk)),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "Ignoring unusable compiled artifact; compiling again."
                ),
            }
        }
        // A JavaScript or Python guest carries its language's engine and
        // takes seconds to compile: say so before, and how long after.
        let started = std::time::Instant::now();
        let size_mib = bytes.len() as f64 / (1 << 20) as f64;
        let cached = self.dir.is_some();
        if bytes.len() >= LARGE_BYTES {
            tracing::info!(
                plugin = label,
                size_mib = format!("{size_mib:.1}"),
                cached,
                "Compiling a large plugin component (first start; may take seconds)."
            );
        }
        let (artifact, component) =
            compile(engine, compiler()?, bytes).context("compilation failed")?;
        if bytes.len() >= LARGE_BYTES {
            tracing::info!(
                plugin = label,
                ms = started.elapsed().as_millis() as u64,
                cached,
                "Compiled the plugin component; later starts load it from the cache."
            );
        }
        if let Some(path) = entry
            && let Err(e) = store(&path, &artifact)
        {
            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "Cannot write compiled artifact to the cache.");
        }
        Ok((component, LoadSource::Compiled))
    }
}

/// Compiles `bytes` with `compiler` and loads the result on `engine`, which
/// has the same configuration: the artifact (to store) and the component.
pub(super) fn compile(
    engine: &wasmtime::Engine,
    compiler: &wasmtime::Engine,
    bytes: &[u8],
) -> anyhow::Result<(Vec<u8>, Component)> {
    let artifact = compiler.precompile_component(bytes).map_err(to_anyhow)?;
    // SAFETY: the bytes were produced just above by the compiling engine,
    // whose configuration is `engine`'s.
    let component = unsafe { Component::deserialize(engine, &artifact) }.map_err(to_anyhow)?;
    Ok((artifact, component))
}

fn store(path: &Path, artifact: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().expect("cache entries live in a folder");
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create cache folder {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(artifact)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot rename into {}", path.display()))?;
    Ok(())
}

/// SHA-256 of a component's bytes.
pub(super) fn content_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
