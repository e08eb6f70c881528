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
use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

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

/// How often an idle rule with window steps advances their watermarks
/// with the clock, so processing-time windows close without new input.
/// Bounds how late such a window is emitted.
pub const WINDOW_TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// `origin` of a message no single input produced (a window's result):
/// acknowledged by nobody, reported as itself.
const NO_INPUT: usize = usize::MAX;

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

    /// Every sink's handle, by name.
    pub fn sinks(&self) -> impl Iterator<Item = (&str, &SinkHandle)> {
        self.sinks
            .iter()
            .map(|(name, s)| (name.as_str(), &s.handle))
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
    fn new(name: &str, capacity: usize, policy: Backpressure) -> RuleQueue {
        RuleQueue {
            name: Arc::from(name),
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                closed: false,
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

    /// Like [`pop_batch`](Self::pop_batch), but gives up after `timeout`:
    /// `None` when it timed out, an empty batch when the queue is closed.
    fn pop_batch_timeout(
        &self,
        max: usize,
        timeout: std::time::Duration,
    ) -> Option<Vec<(Message, AckToken)>> {
        let state = self.state.lock().unwrap();
        let (mut state, waited) = self
            .ready
            .wait_timeout_while(state, timeout, |s| s.items.is_empty() && !s.closed)
            .unwrap();
        if waited.timed_out() && state.items.is_empty() && !state.closed {
            return None;
        }
        let n = state.items.len().min(max);
        let batch: Vec<_> = state.items.drain(..n).collect();
        drop(state);
        self.room.notify_waiters();
        Some(batch)
    }
}

/// One step of a rule: a transform, or a window feeding an aggregate plugin.
enum RuleStep {
    Transform(Box<Instance>),
    Window(Box<WindowStep>),
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
                    let name = format!("{}/{}", rule.name, step.plugin);
                    let op = WindowOperator::new(&name, window.clone(), Arc::new(SystemClock));
                    let late = window.late_to.as_ref().map(|n| sinks[n].clone());
                    steps.push(RuleStep::Window(Box::new(WindowStep {
                        op,
                        aggregator,
                        late,
                    })));
                }
            }
        }
        let windowed = steps.iter().any(|s| matches!(s, RuleStep::Window(_)));
        let to = rule.to.iter().map(|name| sinks[name].clone()).collect();
        let errors = rule.errors.as_ref().map(|name| sinks[name].clone());
        let queue = Arc::new(RuleQueue::new(
            &rule.name,
            rule.queue_size,
            rule.backpressure,
        ));
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
                    let batch = if windowed {
                        match q.pop_batch_timeout(RULE_BATCH, WINDOW_TICK) {
                            Some(batch) => batch,
                            None => {
                                worker.tick(false);
                                continue;
                            }
                        }
                    } else {
                        q.pop_batch(RULE_BATCH)
                    };
                    if batch.is_empty() {
                        // Shutdown: open windows are finished, not lost.
                        worker.tick(true);
                        return;
                    }
                    worker.process(batch);
                    if windowed {
                        worker.tick(false);
                    }
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
    steps: Vec<RuleStep>,
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

        self.run_steps(0, messages, origin, &inputs, &tokens);
        for token in tokens {
            token.accept();
        }
        telemetry::rule_latency(&self.rule, started.elapsed());
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
                unreachable!("window steps are handled above");
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

        // Deliver.
        telemetry::rule_emitted(&self.rule, messages.len());
        for (m, &input) in messages.into_iter().zip(&origin) {
            for sink in &self.to {
                let input = SinkInput {
                    message: m.clone(),
                    ack: tokens
                        .get(input)
                        .cloned()
                        .unwrap_or_else(AckToken::untracked),
                };
                if self.runtime.block_on(sink.send(input)).is_err() {
                    tracing::error!(rule = %self.rule, sink = sink.name(), "Sink is closed; the message stays unacknowledged.");
                }
            }
        }
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
}
