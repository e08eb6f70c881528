//! The WebAssembly plugin runtime.
//!
//! Owns the one `wasmtime::Engine` that runs plugins, the compiled-component
//! cache, and plugin instances. A plugin is loaded once per content hash
//! ([`Runtime::load`] → [`Plugin`]), pre-linked ([`InstancePre`]), and then
//! instantiated as many times as it is used ([`Plugin::instantiate`] →
//! [`Instance`]), each instance in its own `Store` with its own limits.
//!
//! What this module guarantees: a guest can never take the process down. A
//! trap, a deadline overrun or a memory-cap hit becomes a counted failure of
//! the records concerned and a fresh instance; guests get no ambient
//! authority (no files, environment, network or inherited stdio).
//!
//! What it must never do: block on I/O while a guest runs, or hand a guest
//! anything the manifest did not grant.
//!
//! [`InstancePre`]: wasmtime::component::InstancePre

mod aggregate;
mod batch;
mod cache;
mod contract;
mod host;
mod instance;
mod journal;
mod ticker;

pub use ticker::PARK_AFTER;
use ticker::Ticker;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::component::{Component, HasSelf, Linker};

pub use self::aggregate::{Aggregator, AggregatorStats, StateLost};
pub use self::cache::LoadSource;
pub use self::contract::{ComponentInfo, ContractError};
pub use self::instance::{BatchOutcome, Failure, FailureKind, Instance, Output, PluginError};
pub use self::journal::LostAccumulator;

use self::cache::ArtifactCache;
use self::host::HostState;

/// Generated bindings for the `transformer` world.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transformer",
    });
}

/// Generated bindings for the `aggregator` world. Its shared interfaces
/// (`types`, `host`) are the `transformer` bindings' own, so batches,
/// outcomes and the host imports have one Rust type and one implementation.
mod aggregator_bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "aggregator",
        with: {
            "weir:plugin/types": super::bindings::weir::plugin::types,
            "weir:plugin/host": super::bindings::weir::plugin::host,
        },
    });
}

pub use bindings::weir::plugin::types::PluginKind;

/// Linear memory an instance may use unless the manifest says otherwise.
/// Protects the gateway: a leaking guest stops at this size, not at the OOM
/// killer.
pub const DEFAULT_MEMORY_CAP_BYTES: usize = 64 << 20;

/// CPU time a batch may take unless the manifest says otherwise. Protects the
/// pipeline: a guest stuck in a loop holds its rule for at most this long.
pub const DEFAULT_BATCH_DEADLINE: Duration = Duration::from_secs(1);

/// Options of the process-wide runtime.
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    /// Where compiled components are cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
}

impl RuntimeOptions {
    /// The default cache folder: `$WEIR_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/weir/components`, else `~/.cache/weir/components`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("WEIR_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("weir").join("components"))
    }
}

/// Limits applied to one plugin instance.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Cap on the instance's linear memory, in bytes.
    pub memory_cap_bytes: usize,
    /// CPU time one `process` call may take.
    pub batch_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_cap_bytes: DEFAULT_MEMORY_CAP_BYTES,
            batch_deadline: DEFAULT_BATCH_DEADLINE,
        }
    }
}

/// The process-wide plugin runtime: one engine, one linker, one cache.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

/// Two engines of one configuration: `engine` runs every plugin and
/// compiles nothing; `compiler` compiles, and is built on the first
/// compilation. A start whose plugins all come from the cache never builds
/// Cranelift (its target and settings), which keeps that code out of
/// memory: about 1 MB of resident code. wasmtime checks that an artifact
/// fits the engine that loads it (same tunables, features, target; CPU
/// features present), which holds here since both come from
/// [`engine_config`].
struct RuntimeInner {
    engine: wasmtime::Engine,
    compiler: OnceLock<wasmtime::Engine>,
    linker: Linker<HostState>,
    cache: ArtifactCache,
    /// Components already compiled in this process, by content hash.
    compiled: Mutex<std::collections::HashMap<[u8; 32], Component>>,
    /// Components that failed to compile in this process, by content hash,
    /// with the compiler's error: the same bytes fail the same way, so a
    /// large one is not compiled again to learn it.
    failed: Mutex<std::collections::HashMap<[u8; 32], String>>,
    /// Advances `engine`'s epoch when a guest call is past its deadline;
    /// its thread stops with the last clone (this one, and each store's).
    ticker: Ticker,
}

impl Runtime {
    /// Builds the engine, links the host imports and WASI, and starts the
    /// epoch ticker.
    pub fn new(options: RuntimeOptions) -> anyhow::Result<Self> {
        let mut config = engine_config();
        config.enable_compiler(false);
        let engine = wasmtime::Engine::new(&config).map_err(to_anyhow)?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(to_anyhow)?;
        bindings::Transformer::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(to_anyhow)?;

        let ticks = engine.clone();
        let ticker = Ticker::start(move || ticks.increment_epoch(), PARK_AFTER)?;

        let cache = ArtifactCache::new(&engine, options.cache_dir);
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                compiler: OnceLock::new(),
                linker,
                cache,
                compiled: Mutex::default(),
                failed: Mutex::default(),
                ticker,
            }),
        })
    }

    /// Loads a plugin component from a file: checks it is a component of a
    /// supported contract, compiles it (or takes it from the cache), links it
    /// and reads its metadata.
    pub fn load(&self, path: &Path) -> Result<Plugin, PluginError> {
        let bytes = std::fs::read(path).map_err(|e| PluginError::Read {
            path: path.to_owned(),
            cause: e,
        })?;
        self.load_bytes(path, &bytes)
    }

    /// Like [`Runtime::load`], except that a component that would take
    /// seconds to compile (a JavaScript or Python guest that is neither in
    /// the cache nor compiled in this process) is not compiled: `Ok(None)`.
    /// A file that is not a component is still an error at once. `weir run`
    /// compiles such a plugin in the background and starts its rules then.
    pub fn load_unless_slow(&self, path: &Path) -> Result<Option<Plugin>, PluginError> {
        let bytes = std::fs::read(path).map_err(|e| PluginError::Read {
            path: path.to_owned(),
            cause: e,
        })?;
        check_header(path, &bytes)?;
        let started = Instant::now();
        let hash = cache::content_hash(&bytes);
        if bytes.len() >= cache::LARGE_BYTES {
            let known = self.inner.compiled.lock().unwrap().contains_key(&hash)
                || self.inner.failed.lock().unwrap().contains_key(&hash)
                || self.inner.cache.contains(&hash);
            if !known {
                return Ok(None);
            }
        }
        self.load_checked(path, &bytes, hash, started).map(Some)
    }

    /// Like [`Runtime::load`], for bytes already in memory; `path` names them
    /// in messages.
    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Plugin, PluginError> {
        check_header(path, bytes)?;
        let started = Instant::now();
        self.load_checked(path, bytes, cache::content_hash(bytes), started)
    }

    /// [`Runtime::load_bytes`] past the header check, with the bytes'
    /// content hash (an 18 MB guest is hashed once per load).
    fn load_checked(
        &self,
        path: &Path,
        bytes: &[u8],
        hash: [u8; 32],
        started: Instant,
    ) -> Result<Plugin, PluginError> {
        let label = path.display().to_string();
        let (component, source) =
            self.compile(&label, &hash, bytes)
                .map_err(|e| PluginError::Compile {
                    path: path.to_owned(),
                    cause: e,
                })?;
        crate::telemetry::component_loaded(
            &label,
            source.as_str(),
            started.elapsed().as_secs_f64() * 1e3,
        );
        let info = contract::inspect(&self.inner.engine, &component).map_err(|e| {
            PluginError::Contract {
                path: path.to_owned(),
                cause: e,
            }
        })?;
        let instance_pre =
            self.inner
                .linker
                .instantiate_pre(&component)
                .map_err(|e| PluginError::Link {
                    path: path.to_owned(),
                    cause: to_anyhow(e),
                })?;
        let pre = match info.world {
            "aggregator" => {
                aggregator_bindings::AggregatorPre::new(instance_pre).map(Pre::Aggregate)
            }
            _ => bindings::TransformerPre::new(instance_pre).map(Pre::Transform),
        }
        .map_err(|e| PluginError::Link {
            path: path.to_owned(),
            cause: to_anyhow(e),
        })?;
        let plugin = Plugin {
            inner: Arc::new(PluginInner {
                path: path.to_owned(),
                hash,
                info,
                load_source: source,
                load_time: started.elapsed(),
                pre,
                runtime: self.inner.clone(),
                metadata: Mutex::new(None),
            }),
        };
        Ok(plugin)
    }

    fn compile(
        &self,
        label: &str,
        hash: &[u8; 32],
        bytes: &[u8],
    ) -> anyhow::Result<(Component, LoadSource)> {
        if let Some(component) = self.inner.compiled.lock().unwrap().get(hash) {
            return Ok((component.clone(), LoadSource::Memory));
        }
        if let Some(error) = self.inner.failed.lock().unwrap().get(hash) {
            return Err(anyhow::anyhow!("{error}"));
        }
        let (component, source) = self
            .inner
            .cache
            .get_or_compile(&self.inner.engine, || self.compiler(), label, hash, bytes)
            .inspect_err(|e| {
                let error = format!("{e:#}");
                self.inner.failed.lock().unwrap().insert(*hash, error);
            })?;
        self.inner
            .compiled
            .lock()
            .unwrap()
            .insert(*hash, component.clone());
        Ok((component, source))
    }

    /// The engine that compiles, built on first use.
    fn compiler(&self) -> anyhow::Result<&wasmtime::Engine> {
        if let Some(engine) = self.inner.compiler.get() {
            return Ok(engine);
        }
        let mut config = engine_config();
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = wasmtime::Engine::new(&config)
            .map_err(to_anyhow)
            .context("cannot set up the compiler")?;
        // Two threads compiling at once may both build one; either will do.
        Ok(self.inner.compiler.get_or_init(|| engine))
    }

    /// Whether the epoch ticker sleeps because no plugin has run for
    /// [`PARK_AFTER`]; the next plugin call wakes it.
    pub fn epoch_ticker_parked(&self) -> bool {
        self.inner.ticker.is_parked()
    }

    /// Whether this runtime has built its compiler: not while every plugin
    /// came from the cache.
    pub fn compiler_started(&self) -> bool {
        self.inner.compiler.get().is_some()
    }

    /// The engine plugins run on (for benchmarks and tools). It does not
    /// compile: use [`Runtime::compile_component`].
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    /// Compiles a component for [`Runtime::engine`], bypassing the cache
    /// (for benchmarks and tools).
    pub fn compile_component(&self, bytes: &[u8]) -> anyhow::Result<Component> {
        cache::compile(&self.inner.engine, self.compiler()?, bytes).map(|(_, component)| component)
    }
}

/// The configuration of both engines (see [`RuntimeInner`]); the compiler's
/// own settings are added where it is built.
fn engine_config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true).epoch_interruption(true);
    config
}

fn check_header(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    contract::check_header(bytes).map_err(|e| PluginError::Contract {
        path: path.to_owned(),
        cause: e,
    })
}

/// A loaded, linked plugin component, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    path: PathBuf,
    hash: [u8; 32],
    info: ComponentInfo,
    load_source: LoadSource,
    load_time: Duration,
    pre: Pre,
    /// Keeps the engine and its epoch ticker alive as long as any plugin or
    /// instance is: without ticks, deadlines would never fire.
    runtime: Arc<RuntimeInner>,
    metadata: Mutex<Option<Metadata>>,
}

/// The pre-linked component, by world.
enum Pre {
    Transform(bindings::TransformerPre<HostState>),
    Aggregate(aggregator_bindings::AggregatorPre<HostState>),
}

/// What a plugin says about itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Metadata {
    /// The plugin's name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// `filter`, `map`, `flat-map` or `aggregate`.
    pub kind: String,
    /// Config keys the plugin accepts, with their descriptions.
    pub config_keys: Vec<ConfigKey>,
}

/// A config key a plugin accepts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConfigKey {
    /// The key.
    pub name: String,
    /// One line describing it; may be empty.
    pub description: String,
}

impl Plugin {
    /// The file the plugin was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// SHA-256 of the component's bytes, in hex.
    pub fn content_hash(&self) -> String {
        cache::hex(&self.inner.hash)
    }

    /// The contract the component was built against, and its imports.
    pub fn info(&self) -> &ComponentInfo {
        &self.inner.info
    }

    /// Where the compiled code came from on this load.
    pub fn load_source(&self) -> LoadSource {
        self.inner.load_source
    }

    /// How long the load took (read excluded).
    pub fn load_time(&self) -> Duration {
        self.inner.load_time
    }

    /// The plugin's metadata, read once from a throwaway instance.
    pub fn metadata(&self) -> Result<Metadata, PluginError> {
        if let Some(m) = self.inner.metadata.lock().unwrap().as_ref() {
            return Ok(m.clone());
        }
        let m = instance::read_metadata(self)?;
        *self.inner.metadata.lock().unwrap() = Some(m.clone());
        Ok(m)
    }

    /// Whether the plugin is an aggregate plugin (world `aggregator`), for
    /// a window step, rather than a transform.
    pub fn is_aggregate(&self) -> bool {
        matches!(self.inner.pre, Pre::Aggregate(_))
    }

    /// Creates an aggregator instance (world `aggregator`): checks `config`
    /// against the plugin's accepted keys, instantiates, and runs `init`.
    pub fn instantiate_aggregator(
        &self,
        name: &str,
        config: &serde_json::Map<String, serde_json::Value>,
        limits: Limits,
    ) -> Result<Aggregator, PluginError> {
        Aggregator::new(self.clone(), name, config, limits)
    }

    /// Creates an instance: checks `config` against the plugin's accepted
    /// keys, instantiates, and runs `init`.
    pub fn instantiate(
        &self,
        name: &str,
        config: &serde_json::Map<String, serde_json::Value>,
        limits: Limits,
    ) -> Result<Instance, PluginError> {
        Instance::new(self.clone(), name, config, limits)
    }
}

/// Converts wasmtime's error type (not `anyhow::Error` since wasmtime 48)
/// into `anyhow`, keeping the chain and the ability to downcast.
pub(crate) fn to_anyhow(e: wasmtime::Error) -> anyhow::Error {
    anyhow::Error::from(e)
}
