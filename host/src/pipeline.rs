//! Wiring: broker → router → rules → sinks, and an orderly shutdown.
//!
//! Each rule has a bounded queue and one worker thread. The worker takes
//! whatever is queued (up to [`RULE_BATCH`] messages) as one batch, checks
//! payloads (size, JSON), runs the batch through the rule's plugin steps —
//! each step one call into WebAssembly for the whole batch — and hands every
//! output to every sink of the rule. Plugin calls are CPU work, so they run
//! on the rule's own thread, never on the async runtime.
//!
//! After a batch the worker lingers (the rule's `linger`, 200 µs by
//! default) until [`LINGER_FILL`] messages are queued before it takes the
//! next one: under load, messages then cross to it and on to the sinks
//! several at a time instead of one by one, each crossing a thread wake-up
//! on both sides. It lingers only while busy (see [`linger_after`]): the
//! first message after a quiet spell is taken at once, and messages that
//! come far apart cost no wait after them.
//!
//! Every message carries an ack token from the source ([`crate::ack`]): one
//! clone travels with each output to each sink, and with each error report
//! to the error sink; the source acknowledges the message once all of them
//! were accepted. A message a filter drops is acknowledged at once.
//!
//! What happens when a rule's queue is full is the rule's `backpressure`:
//! `block` makes the router wait (for QoS 1 the broker then stops sending
//! once its in-flight window is full); `drop_oldest` / `drop_newest` drop a
//! QoS 0 message, counted.
//!
//! Shutdown runs backwards: the source stops taking messages, rules drain
//! their queues, sinks flush, acknowledgements go out, the source
//! disconnects.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::ack::AckToken;
use crate::config::{Backpressure, Config, PayloadFormat, RuleConfig};
use crate::engine::{Aggregator, Instance};
use crate::message::{Fields, Message};
use crate::rule::{Router, subscriptions};
use crate::sink::{RunningSink, SinkContext, SinkHandle, SinkInput};
use crate::source::{Incoming, Source};
use crate::telemetry;
use crate::window::{SystemClock, WindowOperator};

/// Most messages a rule takes from its queue for one batch.
pub const RULE_BATCH: usize = 256;

/// Queued messages that end a rule's `linger` early (or the queue's
/// capacity, if smaller).
pub const LINGER_FILL: usize = 64;

/// How often an idle rule with window steps advances their watermarks
/// with the clock, so processing-time windows close without new input.
/// Bounds how late such a window is emitted.
pub const WINDOW_TICK: Duration = Duration::from_millis(50);

/// `origin` of a message no single input produced (a window's result):
/// acknowledged by nobody, reported as itself.
const NO_INPUT: usize = usize::MAX;

/// A running pipeline.
pub struct Pipeline {
    source: Source,
    router: tokio::task::JoinHandle<()>,
    /// New routing tables for the router (manifest reload).
    routes: mpsc::UnboundedSender<Routes>,
    rules: Vec<RuleWorker>,
    sinks: Vec<(String, RunningSink)>,
}

/// A routing table: the router and the queue of each rule, in rule order.
type Routes = (Router, Vec<Arc<RuleQueue>>);

impl Pipeline {
    /// Starts sinks, rules and the source, in that order, so nothing is
    /// received before there is somewhere to put it.
    pub async fn start(config: &Config) -> anyhow::Result<Pipeline> {
        for sink in config.sinks.values() {
            crate::sink::preflight(sink)
                .await
                .with_context(|| format!("sink {:?} failed to start", sink.name))?;
        }
        let sinks = start_sinks(config)?;
        let handles: BTreeMap<String, SinkHandle> = sinks
            .iter()
            .map(|(name, s)| (name.clone(), s.handle.clone()))
            .collect();
        let runtime = tokio::runtime::Handle::current();
        let mut rules = Vec::new();
        for rule in &config.rules {
            rules.push(RuleWorker::start(
                rule,
                config,
                &handles,
                runtime.clone(),
                false,
            )?);
        }
        let (tx, rx) = mpsc::channel(crate::source::HANDOFF_CAPACITY);
        let (routes, routes_rx) = mpsc::unbounded_channel();
        let router = tokio::spawn(route(
            rx,
            routes_rx,
            Router::new(&config.rules),
            rules.iter().map(|r| r.queue.clone()).collect(),
        ));
        let source = Source::start(&config.broker, subscriptions(&config.rules), tx)?;
        Ok(Pipeline {
            source,
            router,
            routes,
            rules,
            sinks,
        })
    }

    /// Every sink's handle, by name.
    pub fn sinks(&self) -> impl Iterator<Item = (&str, &SinkHandle)> {
        self.sinks
            .iter()
            .map(|(name, s)| (name.as_str(), &s.handle))
    }

    /// Every step that runs plugin `name`: `(rule, step index, step)`.
    pub fn steps_using(&self, name: &str) -> Vec<(String, usize, crate::config::StepConfig)> {
        self.rules
            .iter()
            .flat_map(|r| {
                r.config
                    .steps
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.plugin == name)
                    .map(|(i, s)| (r.config.name.clone(), i, s.clone()))
            })
            .collect()
    }

    /// Hands `next` to the worker of rule `rule`, which swaps it in for
    /// step `step` between two batches (the running batch finishes on the
    /// old version). Waits for the worker's answer.
    pub async fn swap_step(
        &self,
        rule: &str,
        step: usize,
        next: Replacement,
    ) -> Result<Swapped, String> {
        let Some(worker) = self.rules.iter().find(|r| r.config.name == rule) else {
            return Err(format!("rule {rule:?} is not running"));
        };
        let (done, answer) = oneshot::channel();
        worker.queue.command(Command::Swap { step, next, done });
        match answer.await {
            Ok(Ok(swapped)) => Ok(swapped),
            Ok(Err(failed)) => {
                // Dropped here, on the reload task, not on the rule thread.
                drop(failed.rejected);
                Err(failed.reason)
            }
            Err(_) => Err(format!(
                "rule {rule:?} stopped before it took the new version"
            )),
        }
    }

    /// Lets rule `rule`, whose queue held messages while its plugins
    /// compiled, take them: call once every pending step is swapped.
    pub fn release_rule(&self, rule: &str) {
        if let Some(worker) = self.rules.iter().find(|r| r.config.name == rule) {
            worker.queue.release();
        }
    }

    /// A plugin rule `rule` waits for cannot start: the rule rejects what
    /// its queue holds and what comes, with `reason`, until a working build
    /// is swapped in.
    pub fn fail_rule(&self, rule: &str, reason: String) {
        if let Some(worker) = self.rules.iter().find(|r| r.config.name == rule) {
            worker.queue.command(Command::Fail { reason });
            worker.queue.release();
        }
    }

    /// Stops intake, drains every rule, flushes every sink, lets the
    /// acknowledgements out, and disconnects.
    pub async fn shutdown(self) {
        let Pipeline {
            source,
            router,
            routes: _,
            rules,
            sinks,
        } = self;
        source.stop_intake();
        let _ = router.await;
        for rule in rules {
            rule.queue.close();
            let thread = rule.thread;
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        // Dead-letter sinks were started first; stop them last.
        for (_, sink) in sinks.into_iter().rev() {
            sink.shutdown().await;
        }
        source.stop().await;
    }
}

/// What a manifest reload changed in a running pipeline.
#[derive(Debug, Default)]
pub struct Changes {
    /// Rules started.
    pub rules_added: Vec<String>,
    /// Rules stopped (queue drained, windows flushed, unsubscribed).
    pub rules_removed: Vec<String>,
    /// Rules rebuilt from their new settings.
    pub rules_changed: Vec<String>,
    /// Unchanged rules switched to a rebuilt sink between two batches.
    pub rules_rewired: Vec<String>,
    /// Sinks started.
    pub sinks_added: Vec<String>,
    /// Sinks drained and stopped.
    pub sinks_removed: Vec<String>,
    /// Sinks rebuilt (the old one drained after the switch).
    pub sinks_changed: Vec<String>,
    /// `rule/plugin` steps of kept rules switched to another build of
    /// their plugin between two batches (state moved as on a file change).
    pub plugins_swapped: Vec<String>,
    /// Handles of the sinks started, for their health watchers.
    pub started: Vec<SinkHandle>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.rules_added.is_empty()
            && self.rules_removed.is_empty()
            && self.rules_changed.is_empty()
            && self.rules_rewired.is_empty()
            && self.sinks_added.is_empty()
            && self.sinks_removed.is_empty()
            && self.sinks_changed.is_empty()
            && self.plugins_swapped.is_empty()
    }
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [
            ("rules added", &self.rules_added),
            ("rules removed", &self.rules_removed),
            ("rules changed", &self.rules_changed),
            ("rules rewired", &self.rules_rewired),
            ("sinks added", &self.sinks_added),
            ("sinks removed", &self.sinks_removed),
            ("sinks changed", &self.sinks_changed),
            ("plugins swapped", &self.plugins_swapped),
        ];
        let mut first = true;
        for (what, names) in parts {
            if names.is_empty() {
                continue;
            }
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{what}: {}", names.join(", "))?;
        }
        if first {
            f.write_str("nothing")?;
        }
        Ok(())
    }
}

/// The sinks a rule writes to: `to`, `errors`, and window steps' `late_to`.
fn sinks_of(rule: &RuleConfig) -> impl Iterator<Item = &str> {
    rule.to
        .iter()
        .chain(&rule.errors)
        .chain(
            rule.steps
                .iter()
                .filter_map(|s| s.window.as_ref()?.late_to.as_ref()),
        )
        .map(String::as_str)
}

/// Whether a rule must be rebuilt: its settings differ, or a plugin it
/// runs has other limits. Another build of the same plugin is swapped in
/// instead ([`plugin_swaps`]). (Model types compare by their `Debug` text,
/// which covers every field; secrets print redacted, so a changed secret
/// alone does not count as a change.)
fn rule_differs(old: &Config, new: &Config, a: &RuleConfig, b: &RuleConfig) -> bool {
    if format!("{a:?}") != format!("{b:?}") || old.waiting.iter().any(|w| w.name == a.name) {
        return true;
    }
    b.steps.iter().any(|step| {
        let (Some(x), Some(y)) = (old.plugins.get(&step.plugin), new.plugins.get(&step.plugin))
        else {
            return true;
        };
        format!("{:?}", x.limits) != format!("{:?}", y.limits)
    })
}

/// The steps of rule `b` (kept, not rebuilt) whose plugin is another build
/// in `new`: `(step index, step)`.
fn plugin_swaps(
    old: &Config,
    new: &Config,
    b: &RuleConfig,
) -> Vec<(usize, crate::config::StepConfig)> {
    b.steps
        .iter()
        .enumerate()
        .filter(
            |(_, step)| match (old.plugins.get(&step.plugin), new.plugins.get(&step.plugin)) {
                (Some(x), Some(y)) => x.plugin.content_hash() != y.plugin.content_hash(),
                _ => false,
            },
        )
        .map(|(i, s)| (i, s.clone()))
        .collect()
}

impl Pipeline {
    /// Applies a reloaded manifest: diffs `new` against `old` (what runs)
    /// by name and rebuilds only what changed.
    ///
    /// - A new sink is started; a changed sink is started anew, the rules
    ///   that use it switch to it between two batches, and the old one is
    ///   drained (flushed, acknowledged) and stopped; a removed sink is
    ///   drained and stopped once no rule uses it.
    /// - A new rule is started and subscribed. A removed rule stops taking
    ///   messages (the router forgets it, its filters are unsubscribed), its
    ///   queue is drained, its open windows are finished and flushed. A
    ///   changed rule is a new worker whose queue waits until the old
    ///   worker has drained, so a topic's messages stay in order.
    /// - An unchanged rule is not touched: same worker, same windows.
    ///
    /// If a new sink or rule cannot start, what was started is stopped
    /// again and nothing changes; the error is returned.
    pub async fn apply(
        &mut self,
        old: &Config,
        new: &Config,
        health: &crate::health::Health,
    ) -> anyhow::Result<Changes> {
        let mut changes = Changes::default();
        let debug = |x: &dyn std::fmt::Debug| format!("{x:?}");

        // Sinks: added and changed; a sink whose dead-letter target is
        // rebuilt is rebuilt too (it holds the old target's handle).
        let mut rebuild: BTreeSet<String> = new
            .sinks
            .iter()
            .filter(|(name, s)| old.sinks.get(*name).is_none_or(|o| debug(o) != debug(*s)))
            .map(|(name, _)| name.clone())
            .collect();
        loop {
            let more: Vec<String> = new
                .sinks
                .values()
                .filter(|s| !rebuild.contains(&s.name))
                .filter(|s| {
                    s.driver
                        .dead_letter
                        .as_ref()
                        .is_some_and(|d| rebuild.contains(d))
                })
                .map(|s| s.name.clone())
                .collect();
            if more.is_empty() {
                break;
            }
            rebuild.extend(more);
        }
        for name in &rebuild {
            if old.sinks.contains_key(name) {
                changes.sinks_changed.push(name.clone());
            } else {
                changes.sinks_added.push(name.clone());
            }
        }
        changes.sinks_removed = old
            .sinks
            .keys()
            .filter(|n| !new.sinks.contains_key(*n))
            .cloned()
            .collect();

        let mut handles: BTreeMap<String, SinkHandle> = self
            .sinks
            .iter()
            .filter(|(name, _)| new.sinks.contains_key(name) && !rebuild.contains(name))
            .map(|(name, s)| (name.clone(), s.handle.clone()))
            .collect();
        let context = SinkContext {
            broker: new.broker.clone(),
        };
        let mut started: Vec<(String, RunningSink)> = Vec::new();
        let mut pending: Vec<&crate::config::SinkConfig> =
            rebuild.iter().map(|n| &new.sinks[n]).collect();
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for sink in pending {
                let dead_letter = match &sink.driver.dead_letter {
                    None => None,
                    Some(name) => match handles.get(name) {
                        Some(h) => Some(h.clone()),
                        None => {
                            rest.push(sink);
                            continue;
                        }
                    },
                };
                let started_sink = match crate::sink::preflight(sink).await {
                    Ok(()) => crate::sink::start(sink, dead_letter, &context),
                    Err(e) => Err(e),
                };
                match started_sink {
                    Ok(running) => {
                        handles.insert(sink.name.clone(), running.handle.clone());
                        started.push((sink.name.clone(), running));
                    }
                    Err(e) => {
                        for (_, s) in started.into_iter().rev() {
                            s.shutdown().await;
                        }
                        return Err(e.context(format!("sink {:?} failed to start", sink.name)));
                    }
                }
            }
            if rest.len() == before {
                for (_, s) in started.into_iter().rev() {
                    s.shutdown().await;
                }
                anyhow::bail!("dead-letter sinks form a cycle");
            }
            pending = rest;
        }

        // New builds of plugins in rules that stay: instances built and
        // initialised now, swapped in between batches below.
        let mut swaps = Vec::new();
        for rule in &new.rules {
            let Some(kept) = self.rules.iter().find(|w| w.config.name == rule.name) else {
                continue;
            };
            if rule_differs(old, new, &kept.config, rule) {
                continue;
            }
            for (index, step) in plugin_swaps(old, new, rule) {
                let p = &new.plugins[&step.plugin];
                let error = match Replacement::build(p.plugin.clone(), step, p.limits).await {
                    Ok(r) => {
                        swaps.push((rule.name.clone(), index, r));
                        continue;
                    }
                    Err(e) => anyhow::anyhow!(e),
                };
                for (_, s) in started.into_iter().rev() {
                    s.shutdown().await;
                }
                return Err(error.context(format!("rule {:?}", rule.name)));
            }
        }

        // Rules.
        let runtime = tokio::runtime::Handle::current();
        let mut next: Vec<RuleWorker> = Vec::new();
        let mut old_workers: Vec<RuleWorker> = Vec::new();
        let mut current: Vec<RuleWorker> = std::mem::take(&mut self.rules);
        let mut fresh: Vec<Arc<RuleQueue>> = Vec::new();
        let mut failure = None;
        for rule in &new.rules {
            let existing = current
                .iter()
                .position(|w| w.config.name == rule.name)
                .map(|i| current.remove(i));
            match existing {
                Some(w) if !rule_differs(old, new, &w.config, rule) => {
                    if sinks_of(rule).any(|s| rebuild.contains(s)) {
                        changes.rules_rewired.push(rule.name.clone());
                    }
                    next.push(w);
                }
                existing => {
                    let held = existing.is_some();
                    match RuleWorker::start(rule, new, &handles, runtime.clone(), held) {
                        Ok(w) => {
                            fresh.push(w.queue.clone());
                            next.push(w);
                        }
                        Err(e) => {
                            failure =
                                Some(e.context(format!("rule {:?} failed to start", rule.name)));
                        }
                    }
                    match existing {
                        Some(old_worker) => {
                            changes.rules_changed.push(rule.name.clone());
                            old_workers.push(old_worker);
                        }
                        None => changes.rules_added.push(rule.name.clone()),
                    }
                    if failure.is_some() {
                        break;
                    }
                }
            }
        }
        if let Some(e) = failure {
            // Put everything back as it was.
            let mut restored = Vec::new();
            for w in next.into_iter().chain(old_workers).chain(current) {
                if fresh.iter().any(|q| Arc::ptr_eq(q, &w.queue)) {
                    w.queue.close();
                    let _ = tokio::task::spawn_blocking(move || w.thread.join()).await;
                } else {
                    restored.push(w);
                }
            }
            restored.sort_by_key(|w| old.rules.iter().position(|r| r.name == w.config.name));
            self.rules = restored;
            for (_, s) in started.into_iter().rev() {
                s.shutdown().await;
            }
            return Err(e);
        }
        changes.rules_removed = current.iter().map(|w| w.config.name.clone()).collect();
        old_workers.extend(current);

        // Unchanged rules that use a rebuilt sink switch between batches.
        for w in &next {
            if !changes.rules_rewired.contains(&w.config.name) {
                continue;
            }
            let rule = &w.config;
            let (done, answer) = oneshot::channel();
            w.queue.command(Command::Rewire {
                to: rule.to.iter().map(|n| handles[n].clone()).collect(),
                errors: rule.errors.as_ref().map(|n| handles[n].clone()),
                late: rule
                    .steps
                    .iter()
                    .map(|s| {
                        s.window
                            .as_ref()?
                            .late_to
                            .as_ref()
                            .map(|n| handles[n].clone())
                    })
                    .collect(),
                done,
            });
            let _ = answer.await;
        }

        for (rule, index, replacement) in swaps {
            let plugin = replacement.plugin().clone();
            let Some(w) = next.iter().find(|w| w.config.name == rule) else {
                continue;
            };
            let name = w.config.steps[index].plugin.clone();
            let (done, answer) = oneshot::channel();
            w.queue.command(Command::Swap {
                step: index,
                next: replacement,
                done,
            });
            match answer.await {
                Ok(Ok(swapped)) => {
                    let version = plugin.metadata().map(|m| m.version).unwrap_or_default();
                    telemetry::plugin_swapped(
                        &name,
                        &rule,
                        &version,
                        &plugin.content_hash(),
                        swapped.state.as_str(),
                        swapped.pause,
                    );
                    telemetry::plugin_reloaded(&name);
                    changes.plugins_swapped.push(format!("{rule}/{name}"));
                }
                Ok(Err(failed)) => {
                    let cause = format!("rule {rule:?}: {}", failed.reason);
                    let file = plugin.path().display().to_string();
                    telemetry::plugin_reload_failed(&name, &file, &cause);
                }
                Err(_) => {}
            }
        }

        // Route to the new set, subscribe to what it needs.
        let _ = self.routes.send((
            Router::new(&new.rules),
            next.iter().map(|w| w.queue.clone()).collect(),
        ));
        self.source.set_subscriptions(subscriptions(&new.rules));

        // Old workers drain what they hold, then the rebuilt ones start.
        for w in old_workers {
            w.queue.close();
            let thread = w.thread;
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        for w in &next {
            if !w.pending && fresh.iter().any(|q| Arc::ptr_eq(q, &w.queue)) {
                w.queue.release();
            }
        }
        self.rules = next;
        for name in &changes.rules_added {
            health.set_rule(name, crate::health::RuleState::Running);
        }
        for name in &changes.rules_removed {
            health.remove_rule(name);
        }

        // Sinks no rule uses any more: drained and stopped.
        let (keep, retire): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sinks)
            .into_iter()
            .partition(|(name, _)| new.sinks.contains_key(name) && !rebuild.contains(name));
        self.sinks = keep;
        changes.started = started.iter().map(|(_, s)| s.handle.clone()).collect();
        self.sinks.extend(started);
        for (name, sink) in retire.into_iter().rev() {
            sink.shutdown().await;
            if !new.sinks.contains_key(&name) {
                health.remove_sink(&name);
            }
        }
        Ok(changes)
    }
}

/// Starts every sink, dead-letter targets before the sinks that use them.
fn start_sinks(config: &Config) -> anyhow::Result<Vec<(String, RunningSink)>> {
    let context = SinkContext {
        broker: config.broker.clone(),
    };
    let mut started: Vec<(String, RunningSink)> = Vec::new();
    let mut pending: Vec<&crate::config::SinkConfig> = config.sinks.values().collect();
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = Vec::new();
        for sink in pending {
            let dead_letter = match &sink.driver.dead_letter {
                None => None,
                Some(name) => match started.iter().find(|(n, _)| n == name) {
                    Some((_, s)) => Some(s.handle.clone()),
                    None => {
                        rest.push(sink);
                        continue;
                    }
                },
            };
            let running = crate::sink::start(sink, dead_letter, &context)
                .with_context(|| format!("sink {:?} failed to start", sink.name))?;
            started.push((sink.name.clone(), running));
        }
        anyhow::ensure!(rest.len() < before, "dead-letter sinks form a cycle");
        pending = rest;
    }
    Ok(started)
}

/// The router task: source → rule queues. A new routing table (manifest
/// reload) takes effect between two messages.
async fn route(
    mut rx: mpsc::Receiver<Incoming>,
    mut updates: mpsc::UnboundedReceiver<Routes>,
    mut router: Router,
    mut queues: Vec<Arc<RuleQueue>>,
) {
    // The rules a message goes to, with its fields for each; kept across
    // messages so that routing one allocates nothing but its fields.
    let mut targets: Vec<(usize, Fields)> = Vec::new();
    loop {
        let Incoming { message, ack } = tokio::select! {
            biased;
            Some((r, q)) = updates.recv() => {
                (router, queues) = (r, q);
                continue;
            }
            incoming = rx.recv() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        router.route(&message.topic, |rule, captures| {
            targets.push((rule, Fields::from_pairs(captures)));
        });
        for (rule, fields) in targets.drain(..) {
            let mut m = message.clone();
            m.fields = fields;
            queues[rule].push(m, ack.clone()).await;
        }
        ack.accept();
    }
}

/// How long a rule's worker lingers after a batch of `len` messages that
/// came `waited` after it asked for one. It lingers only while the rule is
/// busy: the batch held more than one message, or came within twice the
/// linger. A rule whose messages come far apart takes each at once and
/// goes straight back to waiting: lingering after it would cost a timed
/// wake-up per message and gather nothing.
fn linger_after(linger: Duration, len: usize, waited: Duration) -> Duration {
    if len > 1 || waited < linger * 2 {
        linger
    } else {
        Duration::ZERO
    }
}

/// A rule's bounded queue, pushed from the async router and popped by the
/// rule's thread.
struct RuleQueue {
    name: Arc<str>,
    state: Mutex<QueueState>,
    capacity: usize,
    policy: Backpressure,
    /// Wakes the worker thread when it waits (see `QueueState::waiting`).
    ready: Condvar,
    /// Wakes a router waiting for room.
    room: Notify,
}

struct QueueState {
    items: VecDeque<(Message, AckToken)>,
    /// Commands for the worker, taken before the next batch.
    commands: VecDeque<Command>,
    /// Messages wait (the worker does not take them) until released: a
    /// rule rebuilt by a manifest reload waits for its old worker to drain.
    held: bool,
    closed: bool,
    /// Whether the worker is blocked on `ready`. A push wakes it only
    /// then: `Condvar::notify_one` is a system call even with nobody
    /// waiting, and under load the worker is busy with the last batch.
    waiting: bool,
    /// Queued messages at which a push wakes the waiting worker: 1, or
    /// more while it lingers for a fuller batch.
    wake_at: usize,
}

/// What a rule's worker takes from its queue next.
enum Popped {
    /// Commands, handled before any further batch (so between batches).
    Commands(Vec<Command>),
    /// Messages to process.
    Batch(Vec<(Message, AckToken)>),
    /// Nothing arrived within the timeout.
    Idle,
    /// The queue is closed and empty.
    Closed,
}

impl RuleQueue {
    fn new(name: &str, capacity: usize, policy: Backpressure) -> RuleQueue {
        RuleQueue {
            name: Arc::from(name),
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                commands: VecDeque::new(),
                held: false,
                closed: false,
                waiting: false,
                wake_at: 1,
            }),
            capacity: capacity.max(1),
            policy,
            ready: Condvar::new(),
            room: Notify::new(),
        }
    }

    async fn push(&self, message: Message, ack: AckToken) {
        let mut entry = Some((message, ack));
        loop {
            let notified = self.room.notified();
            {
                let mut state = self.state.lock().unwrap();
                if state.items.len() < self.capacity {
                    state.items.push_back(entry.take().expect("pushed once"));
                    if state.waiting && state.items.len() >= state.wake_at {
                        self.ready.notify_one();
                    }
                    return;
                }
                let (message, ack) = entry.take().expect("pushed once");
                // Only QoS 0 may be dropped; QoS 1 always waits.
                match (self.policy, message.qos) {
                    (Backpressure::DropNewest, 0) => {
                        telemetry::rule_dropped(&self.name, "queue_full");
                        ack.accept();
                        return;
                    }
                    (Backpressure::DropOldest, 0) => {
                        if let Some((_, oldest)) = state.items.pop_front() {
                            telemetry::rule_dropped(&self.name, "queue_full");
                            oldest.accept();
                        }
                        state.items.push_back((message, ack));
                        if state.waiting && state.items.len() >= state.wake_at {
                            self.ready.notify_one();
                        }
                        return;
                    }
                    _ => entry = Some((message, ack)),
                }
            }
            notified.await;
        }
    }

    /// Blocks until messages are queued (or the queue is closed and empty:
    /// then returns nothing).
    #[cfg(test)]
    fn pop_batch(&self, max: usize) -> Vec<(Message, AckToken)> {
        match self.pop(max, None, Duration::ZERO) {
            Popped::Batch(batch) => batch,
            _ => Vec::new(),
        }
    }

    fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.ready.notify_all();
    }

    /// Lets the worker take messages again (see `held`).
    fn release(&self) {
        self.state.lock().unwrap().held = false;
        self.ready.notify_all();
    }

    /// Queues a command for the worker and wakes it.
    fn command(&self, command: Command) {
        self.state.lock().unwrap().commands.push_back(command);
        self.ready.notify_all();
    }

    /// Waits (up to `timeout`, or without limit) for commands or messages.
    /// Commands come first: a command queued while a batch runs is handled
    /// before the next batch.
    ///
    /// With a `linger`, first waits up to that long for [`LINGER_FILL`]
    /// messages (or a full queue) to take them as one batch; then takes
    /// what is queued, or waits on for the first message if nothing is.
    fn pop(&self, max: usize, timeout: Option<Duration>, linger: Duration) -> Popped {
        let deadline = timeout.map(|t| Instant::now() + t);
        let fill = self.capacity.min(LINGER_FILL);
        let mut linger_until = (!linger.is_zero()).then(|| Instant::now() + linger);
        let mut state = self.state.lock().unwrap();
        loop {
            if !state.commands.is_empty() {
                return Popped::Commands(state.commands.drain(..).collect());
            }
            if let Some(until) = linger_until
                && state.items.len() < fill
                && !state.held
                && !state.closed
            {
                let left = until.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    state.waiting = true;
                    state.wake_at = fill;
                    state = self.ready.wait_timeout(state, left).unwrap().0;
                    state.waiting = false;
                    state.wake_at = 1;
                    continue;
                }
            }
            linger_until = None;
            if !state.items.is_empty() && !state.held {
                let n = state.items.len().min(max);
                let batch: Vec<_> = state.items.drain(..n).collect();
                drop(state);
                self.room.notify_waiters();
                return Popped::Batch(batch);
            }
            if state.closed {
                return Popped::Closed;
            }
            match deadline {
                None => {
                    state.waiting = true;
                    state = self.ready.wait(state).unwrap();
                }
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Popped::Idle;
                    }
                    state.waiting = true;
                    state = self.ready.wait_timeout(state, left).unwrap().0;
                }
            }
            state.waiting = false;
        }
    }
}

/// A request to a rule's worker, handled between two batches.
enum Command {
    /// Replace the plugin instance of step `step`.
    Swap {
        step: usize,
        next: Replacement,
        done: oneshot::Sender<Result<Swapped, SwapFailed>>,
    },
    /// A pending step's plugin cannot start: reject every message, with
    /// `reason`, until a working build is swapped in.
    Fail { reason: String },
    /// Replace the sink handles (a sink was rebuilt by a manifest reload).
    Rewire {
        to: Vec<SinkHandle>,
        errors: Option<SinkHandle>,
        /// Late-event sink of each step (`None` for plain steps).
        late: Vec<Option<SinkHandle>>,
        done: oneshot::Sender<()>,
    },
}

/// A new plugin instance for a step, built and initialised off the rule's
/// thread.
pub enum Replacement {
    /// For a plain step.
    Transform(Box<Instance>),
    /// For a window step.
    Aggregate(Box<Aggregator>),
}

impl Replacement {
    /// A new instance of `plugin` for `step` (an aggregator for a window
    /// step), built and `init`ed with the step's config on a blocking
    /// thread; the refusal or failure as text.
    pub async fn build(
        plugin: crate::engine::Plugin,
        step: crate::config::StepConfig,
        limits: crate::engine::Limits,
    ) -> Result<Replacement, String> {
        let built = tokio::task::spawn_blocking(move || match &step.window {
            None => plugin
                .instantiate(&step.plugin, &step.config, limits)
                .map(|i| Replacement::Transform(Box::new(i))),
            Some(_) => plugin
                .instantiate_aggregator(&step.plugin, &step.config, limits)
                .map(|a| Replacement::Aggregate(Box::new(a))),
        })
        .await;
        match built {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("starting it panicked: {e}")),
        }
    }

    /// The plugin the instance runs.
    pub fn plugin(&self) -> &crate::engine::Plugin {
        match self {
            Replacement::Transform(i) => i.plugin(),
            Replacement::Aggregate(a) => a.plugin(),
        }
    }
}

/// What became of the state of a step whose plugin was swapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateHandover {
    /// Snapshot of the old version restored into the new one.
    Moved {
        /// Size of the snapshot(s).
        bytes: usize,
        /// Accumulators moved (window steps), else 1.
        parts: usize,
    },
    /// The old version had state but the new one cannot take it (it does
    /// not export `weir:plugin/state`): it starts with fresh state.
    Fresh,
    /// Neither version keeps state across a swap.
    Stateless,
}

impl StateHandover {
    /// Label for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            StateHandover::Moved { .. } => "moved",
            StateHandover::Fresh => "fresh",
            StateHandover::Stateless => "stateless",
        }
    }
}

/// A swap done at a batch boundary.
pub struct Swapped {
    /// How long the rule's worker spent on the swap (the pause its input
    /// saw).
    pub pause: Duration,
    /// What became of the state.
    pub state: StateHandover,
    /// The old instance, handed back so it is dropped off the rule thread
    /// (`None` when the step was waiting for its plugin).
    pub old: Option<Replacement>,
}

/// A swap the worker refused; the old version keeps running.
pub struct SwapFailed {
    /// Why, for the operator.
    pub reason: String,
    /// The new instance, handed back to be dropped off the rule thread.
    pub rejected: Replacement,
}

/// One step of a rule: a transform, or a window feeding an aggregate
/// plugin, or a step whose plugin is still compiling (its rule's queue
/// holds messages until every such step is swapped for a real one).
enum RuleStep {
    Transform(Box<Instance>),
    Window(Box<WindowStep>),
    Pending(Box<PendingStep>),
}

/// What a step waiting for its plugin needs to become a real one.
struct PendingStep {
    plugin: String,
    /// For a window step: its operator's name, window and late-event sink.
    window: Option<(String, crate::window::WindowSpec, Option<SinkHandle>)>,
}

struct WindowStep {
    op: WindowOperator,
    aggregator: Aggregator,
    /// Sink for events later than the allowed lateness.
    late: Option<SinkHandle>,
}

impl RuleStep {
    fn name(&self) -> &str {
        match self {
            RuleStep::Transform(i) => i.name(),
            RuleStep::Window(w) => w.aggregator.name(),
            RuleStep::Pending(p) => &p.plugin,
        }
    }
}

/// The rule input message `index` of a step's batch came from, and its
/// ack token; a window's result stands for itself (`fallback`, else an
/// empty message) with a token nobody waits on.
fn source(
    inputs: &[Message],
    tokens: &[AckToken],
    origin: &[usize],
    index: usize,
    fallback: Option<&Message>,
) -> (Message, AckToken) {
    match origin.get(index).copied() {
        Some(i) if i != NO_INPUT && i < inputs.len() => (inputs[i].clone(), tokens[i].clone()),
        _ => (
            fallback
                .cloned()
                .unwrap_or_else(|| Message::new("", Bytes::new(), 0)),
            AckToken::untracked(),
        ),
    }
}

/// A rule's worker thread and queue.
struct RuleWorker {
    config: RuleConfig,
    queue: Arc<RuleQueue>,
    thread: std::thread::JoinHandle<()>,
    /// A step waited for its plugin at the start: the queue stays held
    /// until [`Pipeline::release_rule`] or [`Pipeline::fail_rule`].
    pending: bool,
}

impl RuleWorker {
    fn start(
        rule: &RuleConfig,
        config: &Config,
        sinks: &BTreeMap<String, SinkHandle>,
        runtime: tokio::runtime::Handle,
        held: bool,
    ) -> anyhow::Result<RuleWorker> {
        let mut steps = Vec::new();
        for step in &rule.steps {
            let op_name = format!("{}/{}", rule.name, step.plugin);
            let late = || {
                let window = step.window.as_ref()?;
                window.late_to.as_ref().map(|n| sinks[n].clone())
            };
            let Some(plugin) = config.plugins.get(&step.plugin) else {
                anyhow::ensure!(
                    config.compiling.contains_key(&step.plugin),
                    "rule {:?}: plugin {:?} is not loaded",
                    rule.name,
                    step.plugin
                );
                steps.push(RuleStep::Pending(Box::new(PendingStep {
                    plugin: step.plugin.clone(),
                    window: (step.window.clone()).map(|w| (op_name, w, late())),
                })));
                continue;
            };
            let context = || format!("rule {:?}: step {:?}", rule.name, step.plugin);
            match &step.window {
                None => {
                    let instance = plugin
                        .plugin
                        .instantiate(&step.plugin, &step.config, plugin.limits)
                        .with_context(context)?;
                    steps.push(RuleStep::Transform(Box::new(instance)));
                }
                Some(window) => {
                    let aggregator = plugin
                        .plugin
                        .instantiate_aggregator(&step.plugin, &step.config, plugin.limits)
                        .with_context(context)?;
                    steps.push(RuleStep::Window(Box::new(WindowStep {
                        op: WindowOperator::new(&op_name, window.clone(), Arc::new(SystemClock)),
                        aggregator,
                        late: late(),
                    })));
                }
            }
        }
        let pending = steps.iter().any(|s| matches!(s, RuleStep::Pending(_)));
        let held = held || pending;
        let windowed = (rule.steps.iter()).any(|s| s.window.is_some());
        let rule_linger = rule.linger;
        let to = rule.to.iter().map(|name| sinks[name].clone()).collect();
        let errors = rule.errors.as_ref().map(|name| sinks[name].clone());
        let queue = Arc::new(RuleQueue::new(
            &rule.name,
            rule.queue_size,
            rule.backpressure,
        ));
        queue.state.lock().unwrap().held = held;
        let mut worker = Worker {
            rule: Arc::from(rule.name.as_str()),
            metrics: telemetry::RuleMetrics::new(&rule.name),
            format: rule.format,
            max_payload_bytes: rule.max_payload_bytes,
            steps,
            to,
            errors,
            runtime,
            failed: None,
        };
        let q = queue.clone();
        let thread = std::thread::Builder::new()
            .name(format!("rule-{}", rule.name))
            .spawn(move || {
                let tick = windowed.then_some(WINDOW_TICK);
                // Only right after a batch, and only while busy: the first
                // message after a quiet spell is taken at once.
                let mut linger = Duration::ZERO;
                loop {
                    let asked = Instant::now();
                    let popped = q.pop(RULE_BATCH, tick, linger);
                    linger = Duration::ZERO;
                    match popped {
                        Popped::Commands(commands) => {
                            for command in commands {
                                worker.command(command);
                            }
                        }
                        Popped::Batch(batch) => {
                            linger = linger_after(rule_linger, batch.len(), asked.elapsed());
                            worker.process(batch);
                            if windowed {
                                worker.tick(false);
                            }
                        }
                        Popped::Idle => worker.tick(false),
                        Popped::Closed => {
                            // Shutdown: open windows are finished, not lost.
                            worker.tick(true);
                            return;
                        }
                    }
                }
            })
            .context("cannot start a rule thread")?;
        Ok(RuleWorker {
            config: rule.clone(),
            queue,
            thread,
            pending,
        })
    }
}

struct Worker {
    rule: Arc<str>,
    metrics: telemetry::RuleMetrics,
    format: PayloadFormat,
    max_payload_bytes: usize,
    steps: Vec<RuleStep>,
    to: Vec<SinkHandle>,
    errors: Option<SinkHandle>,
    runtime: tokio::runtime::Handle,
    /// Why a step's plugin cannot start: while a step is pending and this
    /// is set, every message is rejected with it.
    failed: Option<String>,
}

impl Worker {
    fn command(&mut self, command: Command) {
        match command {
            Command::Swap { step, next, done } => {
                let result = self.swap(step, next);
                // The reload task may have given up waiting; then the old
                // instance (or the rejected one) is simply dropped here.
                let _ = done.send(result);
            }
            Command::Fail { reason } => self.failed = Some(reason),
            Command::Rewire {
                to,
                errors,
                late,
                done,
            } => {
                self.to = to;
                self.errors = errors;
                for (step, late) in self.steps.iter_mut().zip(late) {
                    if let RuleStep::Window(w) = step {
                        w.late = late;
                    }
                }
                let _ = done.send(());
            }
        }
    }

    /// Swaps step `index` to `next`, moving state across when both
    /// versions can; on any failure the old version stays.
    fn swap(&mut self, index: usize, next: Replacement) -> Result<Swapped, SwapFailed> {
        let started = Instant::now();
        let Some(step) = self.steps.get_mut(index) else {
            let reason = format!("the rule has no step {index}");
            return Err(SwapFailed {
                reason,
                rejected: next,
            });
        };
        if let RuleStep::Pending(pending) = step {
            let ready = match (pending.window.take(), next) {
                (None, Replacement::Transform(new)) => RuleStep::Transform(new),
                (Some((name, window, late)), Replacement::Aggregate(aggregator)) => {
                    RuleStep::Window(Box::new(WindowStep {
                        op: WindowOperator::new(&name, window, Arc::new(SystemClock)),
                        aggregator: *aggregator,
                        late,
                    }))
                }
                (window, rejected) => {
                    pending.window = window;
                    let reason = "the step is of another kind (plain step vs window step)";
                    return Err(SwapFailed {
                        reason: reason.into(),
                        rejected,
                    });
                }
            };
            *step = ready;
            if !self.steps.iter().any(|s| matches!(s, RuleStep::Pending(_))) {
                self.failed = None;
            }
            return Ok(Swapped {
                pause: started.elapsed(),
                state: StateHandover::Stateless,
                old: None,
            });
        }
        match (step, next) {
            (RuleStep::Transform(old), Replacement::Transform(mut new)) => {
                let state = if old.has_state() && new.has_state() {
                    let moved = old
                        .snapshot()
                        .and_then(|bytes| new.restore(&bytes).map(|()| bytes.len()));
                    match moved {
                        Ok(bytes) => StateHandover::Moved { bytes, parts: 1 },
                        Err(reason) => {
                            let rejected = Replacement::Transform(new);
                            return Err(SwapFailed { reason, rejected });
                        }
                    }
                } else if old.has_state() {
                    StateHandover::Fresh
                } else {
                    StateHandover::Stateless
                };
                let old = std::mem::replace(old, new);
                Ok(Swapped {
                    pause: started.elapsed(),
                    state,
                    old: Some(Replacement::Transform(old)),
                })
            }
            (RuleStep::Window(w), Replacement::Aggregate(mut new)) => {
                let mut bytes = 0;
                let ids = w.op.accumulators();
                for &id in &ids {
                    let moved = match w.aggregator.snapshot(id) {
                        Ok(Ok(state)) => {
                            bytes += state.len();
                            match new.restore(id, &state) {
                                Ok(Ok(())) => Ok(()),
                                Ok(Err(refused)) => Err(format!(
                                    "the new version refused accumulator {id}: {refused}"
                                )),
                                Err(lost) => Err(lost.to_string()),
                            }
                        }
                        Ok(Err(refused)) => Err(format!(
                            "the running version cannot snapshot accumulator {id}: {refused}"
                        )),
                        Err(lost) => Err(lost.to_string()),
                    };
                    if let Err(reason) = moved {
                        let rejected = Replacement::Aggregate(new);
                        return Err(SwapFailed { reason, rejected });
                    }
                }
                let old = std::mem::replace(&mut w.aggregator, *new);
                Ok(Swapped {
                    pause: started.elapsed(),
                    state: if ids.is_empty() {
                        StateHandover::Stateless
                    } else {
                        StateHandover::Moved {
                            bytes,
                            parts: ids.len(),
                        }
                    },
                    old: Some(Replacement::Aggregate(Box::new(old))),
                })
            }
            (_, rejected) => Err(SwapFailed {
                reason: "the step is of another kind (plain step vs window step)".into(),
                rejected,
            }),
        }
    }

    fn process(&mut self, batch: Vec<(Message, AckToken)>) {
        let started = Instant::now();
        self.metrics.received(batch.len());
        if let Some(pending) = self.steps.iter().find_map(|s| match s {
            RuleStep::Pending(p) => Some(p.plugin.clone()),
            _ => None,
        }) {
            // Only a rule whose plugin cannot start takes messages early.
            let reason = match &self.failed {
                Some(reason) => format!("plugin \"{pending}\" cannot start: {reason}"),
                None => format!("plugin \"{pending}\" is not ready"),
            };
            for (m, token) in batch {
                self.report(&m, &token, "plugin_not_started", Some(&pending), &reason);
                token.accept();
            }
            return;
        }
        let (inputs, tokens): (Vec<Message>, Vec<AckToken>) = batch.into_iter().unzip();

        // Check payloads; `origin[i]` is the input a message came from.
        let mut messages = Vec::with_capacity(inputs.len());
        let mut origin = Vec::with_capacity(inputs.len());
        for (i, m) in inputs.iter().enumerate() {
            if m.payload.len() > self.max_payload_bytes {
                let reason = format!(
                    "payload of {} bytes is over the rule's limit of {} bytes",
                    m.payload.len(),
                    self.max_payload_bytes
                );
                self.report(m, &tokens[i], "payload_too_large", None, &reason);
                continue;
            }
            if self.format == PayloadFormat::Json
                && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&m.payload)
            {
                let reason = format!("payload is not valid JSON: {e}");
                self.report(m, &tokens[i], "invalid_json", None, &reason);
                continue;
            }
            messages.push(m.clone());
            origin.push(i);
        }

        self.run_steps(0, messages, origin, &inputs, &tokens);
        for token in tokens {
            token.accept();
        }
        self.metrics.latency(started.elapsed());
    }

    /// Advances every window step with the clock (or, `flush`, finishes
    /// every open window) and sends the results on through the steps after
    /// it.
    fn tick(&mut self, flush: bool) {
        for s in 0..self.steps.len() {
            let RuleStep::Window(w) = &mut self.steps[s] else {
                continue;
            };
            let step = if flush {
                w.op.flush(&mut w.aggregator)
            } else {
                w.op.tick(&mut w.aggregator)
            };
            if step.outputs.is_empty() {
                continue;
            }
            let origin = vec![NO_INPUT; step.outputs.len()];
            self.run_steps(s + 1, step.outputs, origin, &[], &[]);
        }
    }

    /// Runs `messages` through the steps from `first` on, then delivers.
    /// `origin[i]` is the index in `inputs` (and `tokens`) of the rule
    /// input message `i` came from, or [`NO_INPUT`].
    fn run_steps(
        &mut self,
        first: usize,
        mut messages: Vec<Message>,
        mut origin: Vec<usize>,
        inputs: &[Message],
        tokens: &[AckToken],
    ) {
        // Plugin steps, each over the whole batch.
        for s in first..self.steps.len() {
            if messages.is_empty() {
                break;
            }
            let step = self.steps[s].name().to_owned();
            if let RuleStep::Window(w) = &mut self.steps[s] {
                let result =
                    w.op.process(&mut w.aggregator, std::mem::take(&mut messages));
                let late = w.late.clone();
                for r in &result.rejected {
                    let (m, token) = source(inputs, tokens, &origin, r.input, None);
                    self.report(&m, &token, r.kind, Some(&step), &r.reason);
                }
                for (input, message) in result.late {
                    let (_, token) = source(inputs, tokens, &origin, input, None);
                    if let Some(sink) = &late
                        && self
                            .runtime
                            .block_on(sink.send(SinkInput {
                                message,
                                ack: token,
                            }))
                            .is_err()
                    {
                        tracing::error!(rule = %self.rule, sink = sink.name(), "Late-event sink is closed.");
                    }
                }
                origin = vec![NO_INPUT; result.outputs.len()];
                messages = result.outputs;
                continue;
            }
            let RuleStep::Transform(instance) = &mut self.steps[s] else {
                // A pending step (window steps are handled above): only
                // window results reach it, as `process` rejects inputs
                // while a step is pending.
                for m in &messages {
                    let reason = format!("plugin \"{step}\" is not ready");
                    let token = AckToken::untracked();
                    self.report(m, &token, "plugin_not_started", Some(&step), &reason);
                }
                return;
            };
            // The step consumes its inputs (a passthrough moves rather than
            // clones); a failure is reported with the rule's original input,
            // the message a user can replay.
            let outcome = instance.process_owned(std::mem::take(&mut messages));
            for f in &outcome.failures {
                let kind = f.kind.as_str();
                let (m, token) = source(inputs, tokens, &origin, f.input, None);
                self.report(&m, &token, kind, Some(&step), &f.reason);
            }
            origin = outcome.outputs.iter().map(|o| origin[o.input]).collect();
            messages = outcome.outputs.into_iter().map(|o| o.message).collect();
        }

        // Deliver, in one `block_on` for the batch: entering the runtime
        // for each output cost ~1 000 instructions.
        self.metrics.emitted(messages.len());
        let (to, rule) = (&self.to, &self.rule);
        self.runtime.block_on(async {
            for (m, &input) in messages.into_iter().zip(&origin) {
                for sink in to {
                    let input = SinkInput {
                        message: m.clone(),
                        ack: tokens
                            .get(input)
                            .cloned()
                            .unwrap_or_else(AckToken::untracked),
                    };
                    if sink.send(input).await.is_err() {
                        tracing::error!(rule = %rule, sink = sink.name(), "Sink is closed; the message stays unacknowledged.");
                    }
                }
            }
        });
    }

    /// Logs and counts a message the rule could not process, and sends a
    /// report to the rule's error sink when it has one.
    fn report(
        &self,
        m: &Message,
        token: &AckToken,
        kind: &'static str,
        step: Option<&str>,
        reason: &str,
    ) {
        telemetry::rule_error(&self.rule, &m.topic, kind, step, reason);
        let Some(errors) = &self.errors else {
            return;
        };
        let payload = serde_json::json!({
            "rule": &*self.rule,
            "step": step,
            "kind": kind,
            "reason": reason,
            "topic": &*m.topic,
            "ts": m.timestamp_ms,
            "payload": String::from_utf8_lossy(&m.payload),
        });
        let report = Message {
            topic: m.topic.clone(),
            payload: serde_json::to_vec(&payload)
                .expect("a JSON value serialises")
                .into(),
            timestamp_ms: m.timestamp_ms,
            qos: m.qos,
            fields: m.fields.clone(),
        };
        let input = SinkInput {
            message: report,
            ack: token.clone(),
        };
        if self.runtime.block_on(errors.send(input)).is_err() {
            tracing::error!(rule = %self.rule, sink = errors.name(), "Error sink is closed.");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ack::{self, AckOutcome};

    type Outcomes = Arc<Mutex<Vec<(u64, AckOutcome)>>>;

    #[test]
    fn a_worker_lingers_only_while_messages_come_close_together() {
        let linger = Duration::from_micros(200);
        let us = Duration::from_micros;
        // Messages far apart: each taken alone, no wait after it.
        assert_eq!(linger_after(linger, 1, us(50_000)), Duration::ZERO);
        assert_eq!(linger_after(linger, 1, us(400)), Duration::ZERO);
        // Close together: a batch of several, or one soon after asking
        // (including one that arrived during the last linger).
        assert_eq!(linger_after(linger, 5, us(50_000)), linger);
        assert_eq!(linger_after(linger, 1, us(399)), linger);
        assert_eq!(linger_after(linger, 1, us(200)), linger);
        assert_eq!(linger_after(linger, 1, Duration::ZERO), linger);
        // `linger = "0s"`: never.
        assert_eq!(
            linger_after(Duration::ZERO, 64, Duration::ZERO),
            Duration::ZERO
        );
    }

    fn message(id: u64, qos: u8) -> Message {
        Message {
            topic: Arc::from("t"),
            payload: id.to_string().into_bytes().into(),
            timestamp_ms: 0,
            qos,
            fields: Fields::default(),
        }
    }

    fn token(outcomes: &Outcomes, id: u64) -> AckToken {
        let outcomes = outcomes.clone();
        ack::track(move |o| outcomes.lock().unwrap().push((id, o)))
    }

    fn ids(batch: &[(Message, AckToken)]) -> Vec<u64> {
        batch
            .iter()
            .map(|(m, _)| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
            .collect()
    }

    async fn push_all(queue: &RuleQueue, outcomes: &Outcomes, n: u64, qos: u8) {
        for id in 0..n {
            queue.push(message(id, qos), token(outcomes, id)).await;
        }
    }

    #[tokio::test]
    async fn drop_newest_keeps_the_first_messages_and_acknowledges_the_dropped() {
        let queue = RuleQueue::new("r", 3, Backpressure::DropNewest);
        let outcomes = Outcomes::default();
        push_all(&queue, &outcomes, 5, 0).await;
        let kept = queue.pop_batch(10);
        assert_eq!(ids(&kept), [0, 1, 2]);
        assert_eq!(
            *outcomes.lock().unwrap(),
            [(3, AckOutcome::Accepted), (4, AckOutcome::Accepted)],
            "a dropped QoS 0 message is done with, not left for redelivery"
        );
    }

    #[tokio::test]
    async fn drop_oldest_keeps_the_last_messages() {
        let queue = RuleQueue::new("r", 3, Backpressure::DropOldest);
        let outcomes = Outcomes::default();
        push_all(&queue, &outcomes, 5, 0).await;
        let kept = queue.pop_batch(10);
        assert_eq!(ids(&kept), [2, 3, 4]);
        let dropped: Vec<u64> = outcomes.lock().unwrap().iter().map(|(id, _)| *id).collect();
        assert_eq!(dropped, [0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn qos1_messages_wait_for_room_whatever_the_policy() {
        for policy in [
            Backpressure::DropNewest,
            Backpressure::DropOldest,
            Backpressure::Block,
        ] {
            let queue = Arc::new(RuleQueue::new("r", 2, policy));
            let outcomes = Outcomes::default();
            push_all(&queue, &outcomes, 2, 1).await;
            let pushing = tokio::spawn({
                let (queue, outcomes) = (queue.clone(), outcomes.clone());
                async move { queue.push(message(2, 1), token(&outcomes, 2)).await }
            });
            // However long it waits, the third message neither enters nor
            // is dropped while the queue is full.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            assert!(!pushing.is_finished(), "{policy:?}");
            assert!(outcomes.lock().unwrap().is_empty(), "{policy:?}");
            let first = queue.pop_batch(1);
            assert_eq!(ids(&first), [0], "{policy:?}");
            pushing.await.unwrap();
            let rest = queue.pop_batch(10);
            assert_eq!(ids(&rest), [1, 2], "{policy:?}");
            assert!(outcomes.lock().unwrap().is_empty(), "nothing dropped");
        }
    }

    /// A push wakes a worker blocked on the empty queue, with or without a
    /// timeout (the push signals only a waiting worker).
    #[tokio::test]
    async fn a_push_wakes_the_waiting_worker() {
        for timeout in [None, Some(Duration::from_secs(3600))] {
            let queue = Arc::new(RuleQueue::new("r", 4, Backpressure::Block));
            let outcomes = Outcomes::default();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn({
                let queue = queue.clone();
                move || {
                    let popped = match queue.pop(10, timeout, Duration::ZERO) {
                        Popped::Batch(batch) => ids(&batch),
                        _ => Vec::new(),
                    };
                    let _ = tx.send(popped);
                }
            });
            while !queue.state.lock().unwrap().waiting {
                std::thread::yield_now();
            }
            push_all(&queue, &outcomes, 1, 1).await;
            let popped = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the worker woke up for the pushed message");
            assert_eq!(popped, [0], "{timeout:?}");
            assert!(!queue.state.lock().unwrap().waiting);
        }
    }

    /// Pops on another thread; the result arrives on the receiver.
    fn pop_on_a_thread(
        queue: &Arc<RuleQueue>,
        linger: Duration,
    ) -> std::sync::mpsc::Receiver<(Vec<u64>, Duration)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let queue = queue.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let popped = match queue.pop(RULE_BATCH, None, linger) {
                Popped::Batch(batch) => ids(&batch),
                Popped::Commands(c) => vec![u64::MAX; c.len()],
                _ => Vec::new(),
            };
            let _ = tx.send((popped, started.elapsed()));
        });
        rx
    }

    /// Pops on another thread with an hour's linger, once the worker
    /// lingers.
    fn lingering(queue: &Arc<RuleQueue>) -> std::sync::mpsc::Receiver<(Vec<u64>, Duration)> {
        let popped = pop_on_a_thread(queue, Duration::from_secs(3600));
        while !queue.state.lock().unwrap().waiting {
            std::thread::yield_now();
        }
        popped
    }

    /// A lingering worker takes the messages pushed one by one as one
    /// batch, as soon as `LINGER_FILL` are queued, however long its linger.
    #[tokio::test]
    async fn a_lingering_worker_takes_one_batch_once_it_fills() {
        let queue = Arc::new(RuleQueue::new("r", 1000, Backpressure::Block));
        let outcomes = Outcomes::default();
        let popped = lingering(&queue);
        push_all(&queue, &outcomes, LINGER_FILL as u64 + 5, 1).await;
        let (batch, _) = popped
            .recv_timeout(Duration::from_secs(30))
            .expect("the worker stopped lingering at LINGER_FILL messages");
        // The pushes may outrun the wake-up; never fewer than the fill.
        assert!(batch.len() >= LINGER_FILL, "{}", batch.len());
        assert_eq!(batch, (0..batch.len() as u64).collect::<Vec<_>>());
    }

    /// A queue smaller than the fill ends the linger when it is full, so
    /// lingering does not make a QoS 0 rule drop what it would have taken.
    #[tokio::test]
    async fn a_lingering_worker_stops_when_its_queue_is_full() {
        let queue = Arc::new(RuleQueue::new("r", 3, Backpressure::DropNewest));
        let outcomes = Outcomes::default();
        let popped = lingering(&queue);
        push_all(&queue, &outcomes, 3, 0).await;
        let (batch, _) = popped
            .recv_timeout(Duration::from_secs(30))
            .expect("the worker stopped lingering at a full queue");
        assert_eq!(batch, [0, 1, 2]);
    }

    /// Fewer messages than the fill wait out the linger, then go as one
    /// batch; without a linger they go at once.
    #[tokio::test]
    async fn fewer_messages_wait_out_the_linger_and_go_together() {
        for linger in [Duration::from_millis(30), Duration::ZERO] {
            let queue = Arc::new(RuleQueue::new("r", 1000, Backpressure::Block));
            let outcomes = Outcomes::default();
            push_all(&queue, &outcomes, 3, 1).await;
            let (batch, waited) = pop_on_a_thread(&queue, linger)
                .recv_timeout(Duration::from_secs(30))
                .unwrap();
            assert_eq!(batch, [0, 1, 2], "{linger:?}");
            assert!(waited >= linger, "{waited:?} < {linger:?}");
        }
    }

    /// A command ends the linger at once: a reload does not wait for it.
    #[tokio::test]
    async fn a_command_interrupts_the_linger() {
        let queue = Arc::new(RuleQueue::new("r", 1000, Backpressure::Block));
        let outcomes = Outcomes::default();
        push_all(&queue, &outcomes, 1, 1).await;
        let popped = lingering(&queue);
        queue.command(Command::Fail {
            reason: "test".into(),
        });
        let (got, _) = popped.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(got, [u64::MAX], "the command, before the message");
        assert_eq!(ids(&queue.pop_batch(10)), [0]);
    }
}
