//! Wiring: broker → router → rules → sinks, and an orderly shutdown.
//!
//! Each rule has a bounded queue and one worker thread. The worker takes
//! whatever is queued (up to [`RULE_BATCH`] messages) as one batch, checks
//! payloads (size, JSON), runs the batch through the rule's plugin steps —
//! each step one call into WebAssembly for the whole batch — and hands every
//! output to every sink of the rule. Plugin calls are CPU work, so they run
//! on the rule's own thread, never on the async runtime.
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

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use tokio::sync::{Notify, mpsc};

use crate::ack::AckToken;
use crate::config::{Backpressure, Config, PayloadFormat, RuleConfig};
use crate::engine::Instance;
use crate::message::{Fields, Message};
use crate::rule::{Router, subscriptions};
use crate::sink::{RunningSink, SinkContext, SinkHandle, SinkInput};
use crate::source::{Incoming, Source};
use crate::telemetry;

/// Most messages a rule takes from its queue for one batch.
pub const RULE_BATCH: usize = 256;

/// A running pipeline.
pub struct Pipeline {
    source: Source,
    router: tokio::task::JoinHandle<()>,
    rules: Vec<RuleWorker>,
    sinks: Vec<(String, RunningSink)>,
}

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
            rules.push(RuleWorker::start(rule, config, &handles, runtime.clone())?);
        }
        let (tx, rx) = mpsc::channel(crate::source::HANDOFF_CAPACITY);
        let router = tokio::spawn(route(
            rx,
            Router::new(&config.rules),
            rules.iter().map(|r| r.queue.clone()).collect(),
        ));
        let source = Source::start(&config.broker, subscriptions(&config.rules), tx)?;
        Ok(Pipeline {
            source,
            router,
            rules,
            sinks,
        })
    }

    /// Stops intake, drains every rule, flushes every sink, lets the
    /// acknowledgements out, and disconnects.
    pub async fn shutdown(self) {
        let Pipeline {
            source,
            router,
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

/// The router task: source → rule queues.
async fn route(mut rx: mpsc::Receiver<Incoming>, router: Router, queues: Vec<Arc<RuleQueue>>) {
    while let Some(Incoming { message, ack }) = rx.recv().await {
        let mut targets: Vec<(usize, Fields)> = Vec::new();
        router.route(&message.topic, |rule, captures| {
            targets.push((rule, Fields::from_pairs(captures.iter().copied())));
        });
        for (rule, fields) in targets {
            let mut m = message.clone();
            m.fields = fields;
            queues[rule].push(m, ack.clone()).await;
        }
        ack.accept();
    }
}

/// A rule's bounded queue, pushed from the async router and popped by the
/// rule's thread.
struct RuleQueue {
    name: Arc<str>,
    state: Mutex<QueueState>,
    capacity: usize,
    policy: Backpressure,
    /// Wakes the worker thread.
    ready: Condvar,
    /// Wakes a router waiting for room.
    room: Notify,
}

struct QueueState {
    items: VecDeque<(Message, AckToken)>,
    closed: bool,
}

impl RuleQueue {
    async fn push(&self, message: Message, ack: AckToken) {
        let mut entry = Some((message, ack));
        loop {
            let notified = self.room.notified();
            {
                let mut state = self.state.lock().unwrap();
                if state.items.len() < self.capacity {
                    state.items.push_back(entry.take().expect("pushed once"));
                    self.ready.notify_one();
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
                        self.ready.notify_one();
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
    fn pop_batch(&self, max: usize) -> Vec<(Message, AckToken)> {
        let mut state = self.state.lock().unwrap();
        while state.items.is_empty() && !state.closed {
            state = self.ready.wait(state).unwrap();
        }
        let n = state.items.len().min(max);
        let batch: Vec<_> = state.items.drain(..n).collect();
        drop(state);
        self.room.notify_waiters();
        batch
    }

    fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.ready.notify_all();
    }
}

/// A rule's worker thread and queue.
struct RuleWorker {
    queue: Arc<RuleQueue>,
    thread: std::thread::JoinHandle<()>,
}

impl RuleWorker {
    fn start(
        rule: &RuleConfig,
        config: &Config,
        sinks: &BTreeMap<String, SinkHandle>,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<RuleWorker> {
        let mut steps = Vec::new();
        for step in &rule.steps {
            let plugin = &config.plugins[&step.plugin];
            let instance = plugin
                .plugin
                .instantiate(&step.plugin, &step.config, plugin.limits)
                .with_context(|| format!("rule {:?}: step {:?}", rule.name, step.plugin))?;
            steps.push(instance);
        }
        let to = rule.to.iter().map(|name| sinks[name].clone()).collect();
        let errors = rule.errors.as_ref().map(|name| sinks[name].clone());
        let queue = Arc::new(RuleQueue {
            name: Arc::from(rule.name.as_str()),
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                closed: false,
            }),
            capacity: rule.queue_size.max(1),
            policy: rule.backpressure,
            ready: Condvar::new(),
            room: Notify::new(),
        });
        let mut worker = Worker {
            rule: Arc::from(rule.name.as_str()),
            format: rule.format,
            max_payload_bytes: rule.max_payload_bytes,
            steps,
            to,
            errors,
            runtime,
        };
        let q = queue.clone();
        let thread = std::thread::Builder::new()
            .name(format!("rule-{}", rule.name))
            .spawn(move || {
                loop {
                    let batch = q.pop_batch(RULE_BATCH);
                    if batch.is_empty() {
                        return;
                    }
                    worker.process(batch);
                }
            })
            .context("cannot start a rule thread")?;
        Ok(RuleWorker { queue, thread })
    }
}

struct Worker {
    rule: Arc<str>,
    format: PayloadFormat,
    max_payload_bytes: usize,
    steps: Vec<Instance>,
    to: Vec<SinkHandle>,
    errors: Option<SinkHandle>,
    runtime: tokio::runtime::Handle,
}

impl Worker {
    fn process(&mut self, batch: Vec<(Message, AckToken)>) {
        let started = Instant::now();
        telemetry::rule_received(&self.rule, batch.len());
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

        // Plugin steps, each over the whole batch.
        for s in 0..self.steps.len() {
            if messages.is_empty() {
                break;
            }
            // The step consumes its inputs (a passthrough moves rather than
            // clones); a failure is reported with the rule's original input,
            // the message a user can replay.
            let outcome = self.steps[s].process_owned(std::mem::take(&mut messages));
            let step = self.steps[s].name().to_owned();
            for f in &outcome.failures {
                let input = origin[f.input];
                let kind = f.kind.as_str();
                self.report(&inputs[input], &tokens[input], kind, Some(&step), &f.reason);
            }
            origin = outcome.outputs.iter().map(|o| origin[o.input]).collect();
            messages = outcome.outputs.into_iter().map(|o| o.message).collect();
        }

        // Deliver.
        telemetry::rule_emitted(&self.rule, messages.len());
        for (m, &input) in messages.into_iter().zip(&origin) {
            for sink in &self.to {
                let input = SinkInput {
                    message: m.clone(),
                    ack: tokens[input].clone(),
                };
                if self.runtime.block_on(sink.send(input)).is_err() {
                    tracing::error!(rule = %self.rule, sink = sink.name(), "Sink is closed; the message stays unacknowledged.");
                }
            }
        }
        for token in tokens {
            token.accept();
        }
        telemetry::rule_latency(&self.rule, started.elapsed());
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
