//! Hot reload: plugins and the manifest change while messages flow, with
//! nothing lost, duplicated or reordered.
//!
//! [`watch`] notices settled changes to the manifest and to every plugin
//! file it names; `SIGHUP` asks for a manifest reload too (`weir run`
//! wires both, `--no-watch` leaves only `SIGHUP`). [`Reloader`] applies
//! them, one at a time, on the task that owns the pipeline.
//!
//! **A plugin file changed.** The new bytes are loaded (contract check,
//! compile through the engine's cache, link), and for every step that runs
//! the plugin a new instance is built and `init`ed with the step's config,
//! all off the rules' threads. Each instance is then handed to its rule's
//! worker, which swaps it in **between two batches**: the running batch
//! finishes on the old version, the next one runs on the new. When both
//! versions export `weir:plugin/state` (world `stateful-transformer`), the
//! old instance's snapshot is restored into the new one at that moment; a
//! window step moves every open accumulator the same way (the aggregator
//! world always has snapshot/restore). **Policy when state cannot move:** a
//! new version without the `state` export starts with the state its `init`
//! builds, and the swap is logged with `state=fresh`. Any failure — a file
//! that is not a plugin, the wrong world, a compile or link error, an
//! `init` or `restore` that refuses — keeps the old version running in
//! every rule, and is logged (naming the file and the cause) and counted
//! once ([`crate::telemetry::plugin_reload_failed`]).
//!
//! **A file that is still being written** is not loaded: the watcher waits
//! until it settles, and a file that fails to load is looked at again after
//! [`RETRY_AFTER`]; only a file that failed and stayed unchanged is
//! reported as bad.
//!
//! **The manifest changed.** It is loaded and validated in full; with any
//! error every problem is logged and nothing changes. Otherwise the new
//! model is diffed against the running one by name (see
//! [`crate::pipeline::Pipeline::apply`]): only what changed is rebuilt.
//!
//! **A large plugin compiles in the background.** The manifest is loaded
//! with [`Compile::Background`]: a JavaScript or Python component that is
//! not compiled yet does not hold up the rest. [`Reloader::compile_waiting`]
//! compiles it on a blocking thread, and when that is done the manifest is
//! loaded again, which starts the rules that waited for it (or reports
//! why the plugin cannot run, while the other rules keep running).
//!
//! What this module must never do: load a file it has not validated, stop
//! a rule to swap its plugin, or leave a rule without a working version.

pub mod watch;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use self::watch::{Change, Stamp, stamp};
use crate::config::{Compile, Config};
use crate::engine::{Plugin, Runtime};
use crate::health::Health;
use crate::pipeline::{Pipeline, Replacement, StateHandover};
use crate::telemetry;

/// How long after a failed load a file is looked at again. A file that is
/// unchanged by then is reported as bad; one that changed was still being
/// written.
pub const RETRY_AFTER: Duration = Duration::from_millis(250);

/// Applies reloads to a running pipeline.
pub struct Reloader {
    config: Config,
    runtime: Runtime,
    health: Health,
    /// Where rechecks are queued (the watcher's channel).
    again: mpsc::Sender<Change>,
    /// Files whose last load failed, with their stamp at the time.
    failed: HashMap<PathBuf, Stamp>,
    /// Health watchers of sinks started by a reload.
    sink_watchers: tokio::task::JoinSet<()>,
    /// Plugin files being compiled in the background.
    compiling: Arc<Mutex<HashSet<PathBuf>>>,
}

/// What became of one change.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The change took effect.
    Applied,
    /// Nothing to do (same content as what runs, or no file of interest).
    Unchanged,
    /// The file is looked at again shortly.
    Retrying,
    /// Refused; what ran before still runs.
    Failed(String),
}

impl Reloader {
    /// A reloader for the pipeline started from `config`.
    pub fn new(
        config: Config,
        runtime: Runtime,
        health: Health,
        again: mpsc::Sender<Change>,
    ) -> Self {
        Reloader {
            config,
            runtime,
            health,
            again,
            failed: HashMap::new(),
            sink_watchers: tokio::task::JoinSet::new(),
            compiling: Arc::default(),
        }
    }

    /// The files to watch: the manifest and every plugin it names.
    pub fn files(&self) -> Vec<PathBuf> {
        std::iter::once(self.config.path.clone())
            .chain(self.config.plugins.values().map(|p| p.path.clone()))
            .chain(self.config.compiling.values().cloned())
            .collect()
    }

    /// Compiles each plugin of [`Config::compiling`] on a blocking thread
    /// (one at a time per file), then asks for the manifest to be loaded
    /// again, which starts the rules waiting for it. Called at start-up and
    /// after every manifest load that leaves plugins to compile.
    pub fn compile_waiting(&self) {
        for (name, path) in &self.config.compiling {
            if !self.compiling.lock().unwrap().insert(path.clone()) {
                continue;
            }
            let rules: Vec<&str> = (self.config.waiting.iter())
                .filter(|rule| rule.plugins.contains(name))
                .map(|rule| rule.name.as_str())
                .collect();
            tracing::info!(
                plugin = name,
                rules = rules.join(", "),
                "Compiling the plugin in the background; its rules start when it is ready, the others run now."
            );
            let (runtime, again, compiling) = (
                self.runtime.clone(),
                self.again.clone(),
                self.compiling.clone(),
            );
            let (name, path) = (name.clone(), path.clone());
            tokio::spawn(async move {
                let load_path = path.clone();
                let loaded =
                    tokio::task::spawn_blocking(move || runtime.load(&load_path).map(drop)).await;
                if let Ok(Ok(())) = loaded {
                    tracing::info!(plugin = name, "Plugin compiled; starting its rules.");
                }
                // A failure is reported by the manifest load this asks for.
                compiling.lock().unwrap().remove(&path);
                let _ = again.send(Change { path }).await;
            });
        }
    }

    /// The model that runs now.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Handles a settled change to a watched file.
    pub async fn on_change(&mut self, pipeline: &mut Pipeline, change: Change) -> Outcome {
        if change.path == self.config.path {
            return self.reload_manifest(pipeline, true).await;
        }
        let waited_for = (self.config.compiling.iter())
            .find(|(_, path)| **path == change.path)
            .map(|(name, _)| name.clone());
        if let Some(name) = waited_for {
            return self.start_waiting(pipeline, &name).await;
        }
        let names: Vec<String> = self
            .config
            .plugins
            .values()
            .filter(|p| p.path == change.path)
            .map(|p| p.name.clone())
            .collect();
        let mut outcome = Outcome::Unchanged;
        for name in names {
            outcome = self.reload_plugin(pipeline, &name).await;
        }
        outcome
    }

    /// Loads and validates the manifest again and applies what changed. On
    /// any problem, every problem is logged and nothing changes. With
    /// `retry`, a manifest that fails is looked at again once (it may still
    /// be being written) before it is reported.
    pub async fn reload_manifest(&mut self, pipeline: &mut Pipeline, retry: bool) -> Outcome {
        let path = self.config.path.clone();
        let file = path.display().to_string();
        let before = stamp(&path);
        let new = match self.load_manifest().await {
            Ok(config) => config,
            Err(problems) => {
                if retry && stamp(&path) == before && self.failed.get(&path) != Some(&before) {
                    self.failed.insert(path.clone(), before);
                    let again = self.again.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(RETRY_AFTER).await;
                        let _ = again.send(Change { path }).await;
                    });
                    return Outcome::Retrying;
                }
                self.failed.remove(&path);
                telemetry::manifest_reload_failed(&file, problems.trim_end());
                return Outcome::Failed(problems);
            }
        };
        self.failed.remove(&path);
        if format!("{:?}", self.config.broker) != format!("{:?}", new.broker)
            || self.config.http != new.http
        {
            tracing::warn!(
                file,
                "[broker] and [http] changes take effect when weir restarts."
            );
        }
        self.apply_manifest(pipeline, new).await
    }

    /// Plugin `name`, which rules wait for, has compiled (or failed to), or
    /// its file changed meanwhile: the manifest is loaded again, which
    /// starts its rules. When that fails (the plugin does not compile, or
    /// refuses a step's config), its rules are marked failed and the rest
    /// runs on.
    async fn start_waiting(&mut self, pipeline: &mut Pipeline, name: &str) -> Outcome {
        match self.load_manifest().await {
            Ok(new) => self.apply_manifest(pipeline, new).await,
            Err(problems) => {
                let rules: Vec<&str> = (self.config.waiting.iter())
                    .filter(|rule| rule.plugins.contains(name))
                    .map(|rule| rule.name.as_str())
                    .collect();
                for rule in &rules {
                    self.health.set_rule(rule, crate::health::RuleState::Failed);
                }
                let file = self.config.compiling[name].display().to_string();
                telemetry::plugin_start_failed(name, &file, &rules.join(", "), problems.trim_end());
                Outcome::Failed(problems)
            }
        }
    }

    /// Loads and validates the manifest off the async threads; every
    /// problem as text when it is not valid.
    async fn load_manifest(&self) -> Result<Config, String> {
        let runtime = self.runtime.clone();
        let path = self.config.path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            crate::config::load(&path, &runtime, Compile::Background)
        })
        .await;
        match loaded {
            Ok(Ok(config)) => Ok(config),
            Ok(Err(diagnostics)) => Err(diagnostics.to_string()),
            Err(e) => Err(format!("loading panicked: {e}")),
        }
    }

    /// Reloads plugin `name` from its file and swaps it into every step
    /// that runs it.
    pub async fn reload_plugin(&mut self, pipeline: &Pipeline, name: &str) -> Outcome {
        let Some(current) = self.config.plugins.get(name) else {
            return Outcome::Unchanged;
        };
        let path = current.path.clone();
        let file = path.display().to_string();
        let limits = current.limits;
        let before = stamp(&path);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) => return self.failed(&path, before, name, &format!("cannot read it: {e}")),
        };
        if stamp(&path) != before {
            // Written to while we read: the watcher reports it again.
            return Outcome::Retrying;
        }
        let runtime = self.runtime.clone();
        let load_path = path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let plugin = runtime.load_bytes(&load_path, &bytes)?;
            let version = plugin.metadata()?.version;
            Ok::<_, crate::engine::PluginError>((plugin, version))
        })
        .await;
        let (plugin, version) = match loaded {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => return self.failed(&path, before, name, &e.to_string()),
            Err(e) => return self.failed(&path, before, name, &format!("loading panicked: {e}")),
        };
        let hash = plugin.content_hash();
        if hash == current.plugin.content_hash() {
            self.failed.remove(&path);
            tracing::debug!(plugin = name, file, "Plugin file unchanged.");
            return Outcome::Unchanged;
        }

        // Every new instance is built and initialised before any swap, so
        // a refusal leaves every rule on the old version.
        let steps = pipeline.steps_using(name);
        let mut replacements = Vec::with_capacity(steps.len());
        for (rule, index, step) in steps {
            let p = plugin.clone();
            let built = tokio::task::spawn_blocking(move || match &step.window {
                None => p
                    .instantiate(&step.plugin, &step.config, limits)
                    .map(|i| Replacement::Transform(Box::new(i))),
                Some(_) => p
                    .instantiate_aggregator(&step.plugin, &step.config, limits)
                    .map(|a| Replacement::Aggregate(Box::new(a))),
            })
            .await;
            match built {
                Ok(Ok(r)) => replacements.push((rule, index, r)),
                Ok(Err(e)) => {
                    let cause = format!("rule {rule:?}: {e}");
                    return self.failed(&path, before, name, &cause);
                }
                Err(e) => {
                    let cause = format!("rule {rule:?}: starting it panicked: {e}");
                    return self.failed(&path, before, name, &cause);
                }
            }
        }

        self.failed.remove(&path);
        let mut refused = Vec::new();
        let mut swapped = 0;
        for (rule, index, next) in replacements {
            match pipeline.swap_step(&rule, index, next).await {
                Ok(done) => {
                    swapped += 1;
                    if done.state == StateHandover::Fresh {
                        tracing::warn!(
                            plugin = name,
                            rule,
                            "The new version does not export weir:plugin/state; it starts with fresh state."
                        );
                    }
                    telemetry::plugin_swapped(
                        name,
                        &rule,
                        &version,
                        &hash,
                        done.state.as_str(),
                        done.pause,
                    );
                }
                Err(reason) => refused.push(format!("rule {rule:?}: {reason}")),
            }
        }
        if swapped > 0 || refused.is_empty() {
            self.adopt(name, plugin, &version);
        }
        if refused.is_empty() {
            telemetry::plugin_reloaded(name);
            Outcome::Applied
        } else {
            // Not retried: the file loaded fine, a rule refused it.
            let cause = refused.join("; ");
            telemetry::plugin_reload_failed(name, &file, &cause);
            Outcome::Failed(cause)
        }
    }

    async fn apply_manifest(&mut self, pipeline: &mut Pipeline, new: Config) -> Outcome {
        let file = new.path.display().to_string();
        let changes = match pipeline.apply(&self.config, &new, &self.health).await {
            Ok(changes) => changes,
            Err(e) => {
                let problems = format!("{e:#}");
                telemetry::manifest_reload_failed(&file, &problems);
                return Outcome::Failed(problems);
            }
        };
        for handle in &changes.started {
            self.sink_watchers.spawn(crate::sink::report_health(
                handle.clone(),
                self.health.clone(),
            ));
        }
        for (name, plugin) in &new.plugins {
            let version = plugin
                .plugin
                .metadata()
                .map(|m| m.version)
                .unwrap_or_default();
            self.health
                .set_plugin(name, version, plugin.plugin.content_hash());
        }
        for name in self.config.plugins.keys() {
            if !new.plugins.contains_key(name) {
                self.health.remove_plugin(name);
            }
        }
        for rule in &self.config.waiting {
            let kept = |name: &String| *name == rule.name;
            if !new.waiting.iter().map(|w| &w.name).any(kept)
                && !new.rules.iter().map(|r| &r.name).any(kept)
            {
                self.health.remove_rule(&rule.name);
            }
        }
        for rule in &new.waiting {
            self.health
                .set_rule(&rule.name, crate::health::RuleState::Starting);
        }
        self.config = new;
        self.compile_waiting();
        if changes.is_empty() {
            tracing::info!(file, "Manifest reloaded; nothing changed.");
            return Outcome::Unchanged;
        }
        telemetry::manifest_reloaded(&file, &changes.to_string());
        Outcome::Applied
    }

    /// Records `plugin` as what runs for `name`.
    fn adopt(&mut self, name: &str, plugin: Plugin, version: &str) {
        self.health.set_plugin(name, version, plugin.content_hash());
        if let Some(p) = self.config.plugins.get_mut(name) {
            p.plugin = plugin;
        }
    }

    /// A load failed: looked at again after [`RETRY_AFTER`] the first time,
    /// reported when it fails again on an unchanged file.
    fn failed(&mut self, path: &Path, before: Stamp, name: &str, cause: &str) -> Outcome {
        if self.failed.get(path) != Some(&before) {
            self.failed.insert(path.to_owned(), before);
            let again = self.again.clone();
            let change = Change {
                path: path.to_owned(),
            };
            tokio::spawn(async move {
                tokio::time::sleep(RETRY_AFTER).await;
                let _ = again.send(change).await;
            });
            tracing::debug!(plugin = name, file = %path.display(), cause, "Plugin file did not load; looking again once it settles.");
            return Outcome::Retrying;
        }
        self.failed.remove(path);
        telemetry::plugin_reload_failed(name, &path.display().to_string(), cause);
        Outcome::Failed(cause.to_owned())
    }
}
