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
//! not compiled yet does not hold up the rest. Its rules start with the
//! others, but their steps wait for it and their queues hold their
//! messages. [`Reloader::compile_waiting`] compiles it on a blocking
//! thread; then each waiting step gets an instance `init`ed with its
//! config, and the rules take what their queues held. A plugin that
//! cannot start makes its rules reject their messages with the reason
//! (nothing waits on them) until a good build is put in its place; the
//! other rules run on. A manifest change made meanwhile is applied once
//! no compile runs.
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
    /// Plugins waited for that could not start, with their file's stamp
    /// when they were loaded: a later look at the same file (the watcher's
    /// first look, say) is not reported again.
    start_failed: HashMap<PathBuf, Stamp>,
    /// Health watchers of sinks started by a reload.
    sink_watchers: tokio::task::JoinSet<()>,
    /// Plugin files being compiled in the background.
    compiling: Arc<Mutex<HashSet<PathBuf>>>,
    /// The manifest changed while a plugin compiled: reload it after.
    manifest_deferred: bool,
    /// The last manifest load was refused (what ran before still runs).
    manifest_refused: bool,
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
            start_failed: HashMap::new(),
            sink_watchers: tokio::task::JoinSet::new(),
            compiling: Arc::default(),
            manifest_deferred: false,
            manifest_refused: false,
        }
    }

    /// The files to watch: the manifest and every plugin it names.
    pub fn files(&self) -> Vec<PathBuf> {
        std::iter::once(self.config.path.clone())
            .chain(self.config.plugins.values().map(|p| p.path.clone()))
            .chain(self.config.compiling.values().map(|p| p.path.clone()))
            .collect()
    }

    /// Compiles each plugin of [`Config::compiling`] on a blocking thread
    /// (one compile per file at a time); when one is done,
    /// [`Reloader::on_change`] hears of its file and starts the rules
    /// waiting for it. Called at start-up and after every manifest load.
    pub fn compile_waiting(&self) {
        for (name, pending) in &self.config.compiling {
            if !self.compiling.lock().unwrap().insert(pending.path.clone()) {
                continue;
            }
            tracing::info!(
                plugin = name,
                rules = self.waiting_for(name).join(", "),
                "Compiling the plugin in the background; the other rules run now, its rules' messages wait in their queues until it is ready."
            );
            let (runtime, again, compiling) = (
                self.runtime.clone(),
                self.again.clone(),
                self.compiling.clone(),
            );
            let path = pending.path.clone();
            tokio::spawn(async move {
                let load_path = path.clone();
                // The outcome is the runtime's to remember (compiled, or
                // the compiler's error by content hash); the next load
                // reads it.
                let _ = tokio::task::spawn_blocking(move || runtime.load(&load_path)).await;
                compiling.lock().unwrap().remove(&path);
                let _ = again.send(Change { path }).await;
            });
        }
    }

    /// The rules that wait for plugin `name`.
    fn waiting_for(&self, name: &str) -> Vec<String> {
        (self.config.waiting.iter())
            .filter(|rule| rule.plugins.contains(name))
            .map(|rule| rule.name.clone())
            .collect()
    }

    /// The model that runs now.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Handles a settled change to a watched file.
    pub async fn on_change(&mut self, pipeline: &mut Pipeline, change: Change) -> Outcome {
        if change.path == self.config.path {
            // The watcher's first look at start-up, a `touch`, an editor
            // saving without an edit: the same bytes load the same model.
            // (SIGHUP reloads regardless.)
            if let Ok(text) = tokio::fs::read_to_string(&change.path).await
                && *text == *self.config.source.0
            {
                let file = change.path.display();
                if std::mem::take(&mut self.manifest_refused) {
                    tracing::info!(%file, "Manifest is back to the version that runs; nothing changed.");
                } else {
                    tracing::debug!(%file, "Manifest file unchanged.");
                }
                return Outcome::Unchanged;
            }
            return self.reload_manifest(pipeline, true).await;
        }
        let waited_for = (self.config.compiling.iter())
            .find(|(_, pending)| pending.path == change.path)
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
    ///
    /// While a plugin compiles in the background, the reload waits until
    /// it is done (the rules waiting for it start first).
    pub async fn reload_manifest(&mut self, pipeline: &mut Pipeline, retry: bool) -> Outcome {
        let path = self.config.path.clone();
        let file = path.display().to_string();
        if !self.compiling.lock().unwrap().is_empty() {
            tracing::info!(
                file,
                "The manifest changed while a plugin compiles; it is reloaded once that is done."
            );
            self.manifest_deferred = true;
            return Outcome::Retrying;
        }
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
                self.manifest_refused = true;
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
    /// its file changed meanwhile. Its instances are built and `init`ed
    /// with each waiting step's config, swapped into the steps, and each
    /// rule with nothing left to wait for takes the messages its queue
    /// held. When the plugin cannot start (it does not compile, or refuses
    /// a step's config), its rules reject their messages with the reason
    /// (counted, sent to their `errors` sink) and the rest runs on; a good
    /// build in its place starts them.
    async fn start_waiting(&mut self, pipeline: &mut Pipeline, name: &str) -> Outcome {
        let pending = self.config.compiling[name].clone();
        if self.compiling.lock().unwrap().contains(&pending.path) {
            // Its compile ends with another change of this file.
            return Outcome::Retrying;
        }
        let before = stamp(&pending.path);
        if self.start_failed.get(&pending.path) == Some(&before) {
            // This very file could not start, and that was reported.
            tracing::debug!(plugin = name, file = %pending.path.display(), "Plugin file unchanged since it could not start.");
            return Outcome::Unchanged;
        }
        let runtime = self.runtime.clone();
        let path = pending.path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let plugin = runtime.load_unless_slow(&path)?;
            let version = match &plugin {
                Some(p) => p.metadata()?.version,
                None => String::new(),
            };
            Ok::<_, crate::engine::PluginError>(plugin.map(|p| (p, version)))
        })
        .await;
        let (plugin, version) = match loaded {
            Ok(Ok(Some(loaded))) => loaded,
            Ok(Ok(None)) => {
                // Another build was put in place meanwhile: compile it.
                self.compile_waiting();
                return Outcome::Retrying;
            }
            Ok(Err(e)) => {
                return self
                    .waiting_failed(pipeline, name, before, &e.to_string())
                    .await;
            }
            Err(e) => {
                let cause = format!("loading panicked: {e}");
                return self.waiting_failed(pipeline, name, before, &cause).await;
            }
        };

        // Every instance is built and initialised before any swap, so a
        // refusal starts none of the rules.
        let waiting = self.waiting_for(name);
        let steps: Vec<(String, usize, crate::config::StepConfig)> = (self.config.rules.iter())
            .filter(|rule| waiting.contains(&rule.name))
            .flat_map(|rule| {
                (rule.steps.iter().enumerate())
                    .filter(|(_, step)| step.plugin == name)
                    .map(|(i, step)| (rule.name.clone(), i, step.clone()))
            })
            .collect();
        let mut replacements = Vec::with_capacity(steps.len());
        for (rule, index, step) in steps {
            match Replacement::build(plugin.clone(), step, pending.limits).await {
                Ok(r) => replacements.push((rule, index, r)),
                Err(e) => {
                    let cause = format!("rule {rule:?}: {e}");
                    return self.waiting_failed(pipeline, name, before, &cause).await;
                }
            }
        }
        for (rule, index, next) in replacements {
            if let Err(reason) = pipeline.swap_step(&rule, index, next).await {
                let cause = format!("rule {rule:?}: {reason}");
                return self.waiting_failed(pipeline, name, before, &cause).await;
            }
        }

        // What runs now: the plugin is loaded, and the rules with nothing
        // left to wait for take their messages.
        self.health.set_plugin(name, version, plugin.content_hash());
        self.config.compiling.remove(name);
        self.config.plugins.insert(
            name.to_owned(),
            crate::config::PluginConfig {
                name: name.to_owned(),
                path: pending.path,
                config: pending.config,
                limits: pending.limits,
                plugin,
            },
        );
        for rule in &mut self.config.waiting {
            rule.plugins.remove(name);
            if rule.plugins.is_empty() {
                pipeline.release_rule(&rule.name);
                self.health
                    .set_rule(&rule.name, crate::health::RuleState::Running);
            }
        }
        self.config.waiting.retain(|rule| !rule.plugins.is_empty());
        tracing::info!(
            plugin = name,
            rules = waiting.join(", "),
            "Plugin compiled; its rules start with the messages their queues held."
        );
        self.after_compile(pipeline).await;
        Outcome::Applied
    }

    /// Plugin `name` cannot start: its waiting rules reject their messages
    /// with `problems`, and are marked failed. `before` is its file's stamp
    /// when it was loaded.
    async fn waiting_failed(
        &mut self,
        pipeline: &mut Pipeline,
        name: &str,
        before: Stamp,
        problems: &str,
    ) -> Outcome {
        let rules = self.waiting_for(name);
        for rule in &rules {
            pipeline.fail_rule(rule, problems.to_owned());
            self.health.set_rule(rule, crate::health::RuleState::Failed);
        }
        let path = self.config.compiling[name].path.clone();
        self.start_failed.insert(path.clone(), before);
        let file = path.display().to_string();
        telemetry::plugin_start_failed(name, &file, &rules.join(", "), problems);
        self.after_compile(pipeline).await;
        Outcome::Failed(problems.to_owned())
    }

    /// A manifest change that came while plugins compiled is applied once
    /// none does.
    async fn after_compile(&mut self, pipeline: &mut Pipeline) {
        if self.manifest_deferred && self.compiling.lock().unwrap().is_empty() {
            self.manifest_deferred = false;
            self.reload_manifest(pipeline, false).await;
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
            match Replacement::build(plugin.clone(), step, limits).await {
                Ok(r) => replacements.push((rule, index, r)),
                Err(e) => {
                    let cause = format!("rule {rule:?}: {e}");
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
                self.manifest_refused = true;
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
        self.manifest_refused = false;
        // The rules rebuilt from the new manifest have not been told.
        self.start_failed.clear();
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
