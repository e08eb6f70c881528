//! The one driver every sink runs on.
//!
//! [`spawn`] starts a task that owns a [`Sink`] and everything around it:
//!
//! - **Intake and buffer.** [`SinkHandle::send`] takes buffer space for the
//!   message (its topic, payload and field bytes) before handing it over;
//!   the space is held until the message leaves the driver (written, dead-
//!   lettered or dropped), so `max_buffer_bytes` bounds what waits *and*
//!   what is in flight. A full buffer makes `send` wait: that is how a slow
//!   or failing service slows the source down.
//! - **Batching.** A batch is cut when it holds `batch_size` messages, when
//!   the next message would take its payload bytes past `max_batch_bytes`,
//!   or `batch_time` after its first message arrived.
//! - **Writes in flight.** At most `inflight_window` batches are being
//!   delivered at once; while the window is full, the next batch fills up
//!   and then intake stops.
//! - **Delivery of a batch.** Encode (messages that cannot be encoded are
//!   given up on alone), write, then by outcome: all written → accept; some
//!   messages failed → accept the rest, retry the retryable ones alone, give
//!   up on the permanent ones; whole write failed and retryable → back off
//!   (capped exponential, full jitter) and retry, until `max_retries` or a
//!   message's `request_ttl` runs out; whole write failed permanently →
//!   bisect, so one bad message does not sink the others.
//! - **Giving up.** What is given up on goes to the dead-letter sink with its
//!   ack token (accepted once that sink accepts it), or is counted, logged
//!   and dropped with its token accepted, so a poison message is not
//!   redelivered forever.
//! - **Acks.** `query_mode = "sync"`: a token is accepted once its message is
//!   written; `"async"`: once the driver has buffered it.
//! - **Shutdown.** [`RunningSink::shutdown`] stops intake, writes what is
//!   buffered without waiting for `batch_time`, waits for writes in flight
//!   (and their retries), then returns.
//!
//! All time comes from `tokio::time`, so tests run on a paused clock.
//!
//! What the driver must never do: hold a message without holding its buffer
//! space, accept a token before its message is safe (`sync`), or lose a
//! token (every path ends in accept, dead letter, or a drop that abandons it
//! for redelivery).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{ErrorClass, Rejected, SharedHealth, Sink, SinkInput, Written};
use crate::ack::AckToken;
use crate::config::{DriverConfig, QueryMode};
use crate::message::Message;
use crate::telemetry::SinkMetrics;

/// Ceiling of the first retry's delay. Short, so that a blip (a dropped
/// connection, a restarting service) costs little.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// No retry waits longer than this, so a service that comes back after an
/// outage is used again within about this long. Doubling from
/// [`BACKOFF_BASE`] reaches it at the eighth retry.
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// The sink has stopped taking messages (it is shutting down or its task
/// ended).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sink {sink:?} is closed")]
pub struct SinkClosed {
    /// The sink's name.
    pub sink: String,
}

/// Where messages for one sink go. Cheap to clone.
#[derive(Clone)]
pub struct SinkHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    name: Arc<str>,
    tx: mpsc::UnboundedSender<(Message, Meta)>,
    buffer: Arc<Semaphore>,
    /// Permits of `buffer` when empty; a larger message takes them all.
    capacity: u32,
    query_mode: QueryMode,
    metrics: Arc<SinkMetrics>,
    health: SharedHealth,
    writes: watch::Receiver<WriteHealth>,
}

/// What the last write said about the service behind a sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteHealth {
    /// Nothing written yet.
    Unknown,
    /// The service answered (even if it refused some messages: bad data is
    /// not a health problem).
    Reachable,
    /// The last write failed in a way retrying may cure (network, overload,
    /// a service restarting): the error, with its causes.
    Unreachable(String),
}

impl SinkHandle {
    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Hands a message to the sink. Waits while the sink's buffer
    /// (`max_buffer_bytes`) is full: that is the backpressure.
    pub async fn send(&self, input: SinkInput) -> Result<(), SinkClosed> {
        let inner = &self.inner;
        let bytes = message_bytes(&input.message);
        let permits = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, inner.capacity);
        let permit = inner
            .buffer
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| self.closed())?;
        inner.metrics.received(bytes);
        let slot = BufferSlot {
            _permit: permit,
            bytes,
            metrics: inner.metrics.clone(),
        };
        let (ack, keep) = match inner.query_mode {
            QueryMode::Sync => (None, Some(input.ack)),
            QueryMode::Async => (Some(input.ack), None),
        };
        let meta = Meta {
            ack: keep,
            slot,
            received: Instant::now(),
        };
        inner
            .tx
            .send((input.message, meta))
            .map_err(|_| self.closed())?;
        // Async mode: buffered is accepted.
        if let Some(ack) = ack {
            ack.accept();
        }
        Ok(())
    }

    /// Whether the sink's service is reachable.
    pub async fn healthcheck(&self) -> anyhow::Result<()> {
        self.inner.health.check().await
    }

    /// How often the health check should run.
    pub fn healthcheck_interval(&self) -> Duration {
        self.inner.health.interval()
    }

    /// The outcome of the latest write, updated as writes finish.
    pub fn write_health(&self) -> watch::Receiver<WriteHealth> {
        self.inner.writes.clone()
    }

    fn closed(&self) -> SinkClosed {
        SinkClosed {
            sink: self.inner.name.to_string(),
        }
    }
}

impl std::fmt::Debug for SinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SinkHandle").field(&self.inner.name).finish()
    }
}

/// A started sink: its handle, and the way to stop it.
pub struct RunningSink {
    /// Where to send messages.
    pub handle: SinkHandle,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningSink {
    /// Stops intake, flushes what is buffered, waits for writes in flight
    /// (acks fire), then returns.
    pub async fn shutdown(self) {
        // New sends fail from here on; sends already past the buffer are
        // drained by the task.
        self.handle.inner.buffer.close();
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(sink = %self.handle.inner.name, error = %e, "Sink driver task failed.");
        }
    }
}

impl std::fmt::Debug for RunningSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RunningSink")
            .field(&self.handle.inner.name)
            .finish()
    }
}

/// Starts the driver task of `sink`, named `name`, with `config`'s options.
/// What it gives up on goes to `dead_letter` when there is one.
///
/// Must be called inside a Tokio runtime.
pub fn spawn<S: Sink>(
    name: &str,
    sink: S,
    config: &DriverConfig,
    dead_letter: Option<SinkHandle>,
) -> RunningSink {
    spawn_with(name, sink, config, dead_letter, || {
        rand::random_range(0.0..=1.0)
    })
}

/// [`spawn`] with the jitter source given (tests use a fixed one to check
/// the backoff schedule exactly).
fn spawn_with<S: Sink>(
    name: &str,
    sink: S,
    config: &DriverConfig,
    dead_letter: Option<SinkHandle>,
    jitter: fn() -> f64,
) -> RunningSink {
    let name: Arc<str> = name.into();
    let metrics = Arc::new(SinkMetrics::new(&name));
    let capacity = u32::try_from(config.max_buffer_bytes.min(Semaphore::MAX_PERMITS))
        .unwrap_or(u32::MAX)
        .max(1);
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let (writes_tx, writes) = watch::channel(WriteHealth::Unknown);
    let shared = Arc::new(Shared {
        name: name.clone(),
        sink,
        metrics: metrics.clone(),
        config: config.clone(),
        dead_letter,
        jitter,
        writes: writes_tx,
    });
    let health: SharedHealth = Arc::new(HealthOf(shared.clone()));
    let handle = SinkHandle {
        inner: Arc::new(HandleInner {
            name,
            tx,
            buffer: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            query_mode: config.query_mode,
            metrics,
            health,
            writes,
        }),
    };
    let task = tokio::spawn(run(shared, rx, stop_rx));
    RunningSink {
        handle,
        stop: stop_tx,
        task,
    }
}

/// The health check of the sink inside `Shared`.
struct HealthOf<S>(Arc<Shared<S>>);

impl<S: Sink> super::Health for HealthOf<S> {
    fn check(&self) -> super::HealthFuture<'_> {
        Box::pin(self.0.sink.healthcheck())
    }

    fn interval(&self) -> Duration {
        self.0.sink.healthcheck_interval()
    }
}

/// Bytes a message holds in the buffer.
fn message_bytes(m: &Message) -> usize {
    m.topic.len() + m.payload.len() + m.fields.encoded().len()
}

/// Buffer space held by one message; released (and the gauge lowered) when
/// the message leaves the driver, whichever way it leaves.
struct BufferSlot {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
    metrics: Arc<SinkMetrics>,
}

impl Drop for BufferSlot {
    fn drop(&mut self) {
        self.metrics.released(self.bytes);
    }
}

/// What the driver keeps beside each message.
struct Meta {
    /// `None` in async mode (accepted when buffered).
    ack: Option<AckToken>,
    slot: BufferSlot,
    received: Instant,
}

/// Messages delivered together, and how often they were retried.
struct Group {
    messages: Vec<Message>,
    metas: Vec<Meta>,
    retries: u32,
}

impl Group {
    fn new(retries: u32) -> Self {
        Group {
            messages: Vec::new(),
            metas: Vec::new(),
            retries,
        }
    }

    /// An empty first try with room for `n` messages.
    fn with_capacity(n: usize) -> Self {
        Group {
            messages: Vec::with_capacity(n),
            metas: Vec::with_capacity(n),
            retries: 0,
        }
    }

    fn push(&mut self, (message, meta): (Message, Meta)) {
        self.messages.push(message);
        self.metas.push(meta);
    }

    fn len(&self) -> usize {
        self.messages.len()
    }

    fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    fn into_items(self) -> impl Iterator<Item = (Message, Meta)> {
        self.messages.into_iter().zip(self.metas)
    }

    /// Splits into two halves (first half keeps the order's front).
    fn bisect(self) -> (Group, Group) {
        let retries = self.retries;
        let half = self.len() / 2;
        let mut first = Group::new(retries);
        let mut second = Group::new(retries);
        for (i, item) in self.into_items().enumerate() {
            if i < half {
                first.push(item);
            } else {
                second.push(item);
            }
        }
        (first, second)
    }
}

/// What the task and its delivery jobs share.
struct Shared<S> {
    name: Arc<str>,
    sink: S,
    metrics: Arc<SinkMetrics>,
    config: DriverConfig,
    dead_letter: Option<SinkHandle>,
    /// A number in [0, 1] per retry: the full-jitter fraction.
    jitter: fn() -> f64,
    /// The latest write's verdict on the service.
    writes: watch::Sender<WriteHealth>,
}

/// The driver task: intake, batching, the window of deliveries.
async fn run<S: Sink>(
    shared: Arc<Shared<S>>,
    mut rx: mpsc::UnboundedReceiver<(Message, Meta)>,
    mut stop: oneshot::Receiver<()>,
) {
    let config = &shared.config;
    let batch_size = config.batch_size.max(1);
    let window = config.inflight_window.max(1);
    let mut batch = Group::new(0);
    let mut batch_bytes = 0usize;
    let mut deadline = Instant::now();
    // A message that did not fit the current batch by bytes.
    let mut carry: Option<(Message, Meta)> = None;
    let mut jobs: JoinSet<()> = JoinSet::new();
    let mut stopping = false;
    let mut input_done = false;

    loop {
        let ready = !batch.is_empty()
            && (batch.len() >= batch_size
                || carry.is_some()
                || input_done
                || Instant::now() >= deadline);
        if ready && jobs.len() < window {
            // Whatever is already waiting joins the batch: with
            // `batch_time = 0` this is the only batching, and it grows by
            // itself with the load (messages pile up while a write is out).
            while !input_done && carry.is_none() && batch.len() < batch_size {
                match rx.try_recv() {
                    Ok(item) => {
                        let bytes = item.0.payload.len();
                        if batch_bytes + bytes > config.max_batch_bytes {
                            carry = Some(item);
                        } else {
                            batch_bytes += bytes;
                            batch.push(item);
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => input_done = true,
                }
            }
            // The next batch is likely this one's size: room for that many
            // saves its growth, a reallocation per doubling.
            let next = Group::with_capacity(batch.len());
            let full = std::mem::replace(&mut batch, next);
            batch_bytes = 0;
            jobs.spawn(deliver(shared.clone(), full));
            if let Some(item) = carry.take() {
                batch_bytes = item.0.payload.len();
                deadline = Instant::now() + config.batch_time;
                batch.push(item);
            }
            continue;
        }
        if input_done && batch.is_empty() && carry.is_none() {
            while let Some(joined) = jobs.join_next().await {
                report_join(&shared.name, joined);
            }
            shared.sink.close().await;
            return;
        }
        let can_take = !input_done && carry.is_none() && batch.len() < batch_size;
        tokio::select! {
            biased;
            Some(joined) = jobs.join_next(), if !jobs.is_empty() => {
                report_join(&shared.name, joined);
            }
            _ = &mut stop, if !stopping => {
                // Stop intake; what was already sent is still received.
                stopping = true;
                rx.close();
            }
            item = rx.recv(), if can_take => match item {
                Some(item) => {
                    let bytes = item.0.payload.len();
                    if !batch.is_empty() && batch_bytes + bytes > config.max_batch_bytes {
                        carry = Some(item);
                    } else {
                        if batch.is_empty() {
                            deadline = Instant::now() + config.batch_time;
                        }
                        batch_bytes += bytes;
                        batch.push(item);
                    }
                }
                None => input_done = true,
            },
            _ = tokio::time::sleep_until(deadline), if !batch.is_empty() && Instant::now() < deadline => {}
        }
    }
}

fn report_join(sink: &str, joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        // The job's tokens were dropped unaccepted: their messages stay
        // unacknowledged and the broker redelivers them.
        tracing::error!(sink, error = %e, "Sink delivery job failed.");
    }
}

/// Delivers one batch: encode, write, and retry, bisect or give up as the
/// outcome says, until every message is accepted or given up on.
async fn deliver<S: Sink>(shared: Arc<Shared<S>>, batch: Group) {
    let mut queue = VecDeque::from([batch]);
    while let Some(group) = queue.pop_front() {
        let group = shared.drop_expired(group).await;
        if group.is_empty() {
            continue;
        }
        let retries = group.retries;
        let mut rejected: Vec<Rejected> = Vec::new();
        let request = shared.sink.encode(&group.messages, &mut rejected);
        let mut items: Vec<Option<(Message, Meta)>> = group.into_items().map(Some).collect();
        if !rejected.is_empty() {
            let mut given_up = Vec::new();
            for r in &rejected {
                if let Some(item) = items.get_mut(r.index).and_then(Option::take) {
                    given_up.push(item);
                }
            }
            shared
                .metrics
                .encode_failed(given_up.len(), &rejected[0].reason);
            shared.give_up(given_up, "encode").await;
        }
        let live = items.iter().filter(|i| i.is_some()).count();
        if live == 0 {
            continue;
        }

        let started = Instant::now();
        let result = shared.sink.write(&request).await;
        drop(request);
        shared.metrics.write_latency(started.elapsed());

        shared.writes.send_if_modified(|now| {
            let verdict = match &result {
                Err(error) if shared.sink.classify(error) == ErrorClass::Retryable => {
                    WriteHealth::Unreachable(error_chain(error))
                }
                _ => WriteHealth::Reachable,
            };
            let changed = *now != verdict;
            *now = verdict;
            changed
        });
        match result {
            Ok(Written::All) => shared.written(items.into_iter().flatten()),
            Ok(Written::Partial(failures)) => {
                let mut retry = Group::new(retries);
                let mut permanent = Vec::new();
                let mut first_reason = [None, None];
                for f in &failures {
                    let Some(item) = items.get_mut(f.index).and_then(Option::take) else {
                        continue;
                    };
                    match f.class {
                        ErrorClass::Retryable => {
                            first_reason[0].get_or_insert(f.reason.as_str());
                            retry.push(item);
                        }
                        ErrorClass::Permanent => {
                            first_reason[1].get_or_insert(f.reason.as_str());
                            permanent.push(item);
                        }
                    }
                }
                if let Some(reason) = first_reason[0] {
                    shared
                        .metrics
                        .write_failed("retryable", retry.len(), reason);
                }
                if let Some(reason) = first_reason[1] {
                    shared
                        .metrics
                        .write_failed("permanent", permanent.len(), reason);
                }
                shared.written(items.into_iter().flatten());
                shared.give_up(permanent, "permanent").await;
                if !retry.is_empty()
                    && let Some(group) = shared.backoff(retry).await
                {
                    queue.push_front(group);
                }
            }
            Err(error) => {
                let class = shared.sink.classify(&error);
                shared
                    .metrics
                    .write_failed(class.as_str(), live, &error_chain(&error));
                let mut group = Group::new(retries);
                for item in items.into_iter().flatten() {
                    group.push(item);
                }
                match class {
                    ErrorClass::Retryable => {
                        if let Some(group) = shared.backoff(group).await {
                            queue.push_front(group);
                        }
                    }
                    ErrorClass::Permanent if group.len() > 1 => {
                        let (first, second) = group.bisect();
                        queue.push_front(second);
                        queue.push_front(first);
                    }
                    ErrorClass::Permanent => {
                        shared
                            .give_up(group.into_items().collect(), "permanent")
                            .await
                    }
                }
            }
        }
    }
}

impl<S: Sink> Shared<S> {
    /// Accepts (sync mode) the tokens of written messages.
    fn written(&self, items: impl Iterator<Item = (Message, Meta)>) {
        let mut n = 0;
        for (_, meta) in items {
            n += 1;
            if let Some(ack) = meta.ack {
                ack.accept();
            }
        }
        if n > 0 {
            self.metrics.written(n);
        }
    }

    /// Waits before retrying `group`, or gives up on it when it may not be
    /// retried any more. Returns the group to retry.
    async fn backoff(&self, mut group: Group) -> Option<Group> {
        if self
            .config
            .max_retries
            .is_some_and(|max| group.retries >= max)
        {
            self.give_up(group.into_items().collect(), "retries_exhausted")
                .await;
            return None;
        }
        let delay = backoff_ceiling(group.retries).mul_f64((self.jitter)().clamp(0.0, 1.0));
        // Wake no later than the first request_ttl expiry, so that a
        // message is given up on when its ttl says, not up to a backoff cap
        // later.
        let mut wake = Instant::now() + delay;
        if let Some(ttl) = self.config.request_ttl
            && let Some(expiry) = group.metas.iter().map(|m| m.received + ttl).min()
        {
            wake = wake.min(expiry);
        }
        tokio::time::sleep_until(wake).await;
        group.retries += 1;
        self.metrics.retried(group.retries, delay);
        Some(group)
    }

    /// Gives up on the messages of `group` whose `request_ttl` ran out;
    /// returns the rest.
    async fn drop_expired(&self, group: Group) -> Group {
        let Some(ttl) = self.config.request_ttl else {
            return group;
        };
        let now = Instant::now();
        if group.metas.iter().all(|m| now < m.received + ttl) {
            return group;
        }
        let mut live = Group::new(group.retries);
        let mut expired = Vec::new();
        for (message, meta) in group.into_items() {
            if now < meta.received + ttl {
                live.push((message, meta));
            } else {
                expired.push((message, meta));
            }
        }
        self.give_up(expired, "ttl_expired").await;
        live
    }

    /// Hands messages to the dead-letter sink with their tokens, or accepts
    /// their tokens and drops them when there is none. Logged and counted
    /// once per call.
    async fn give_up(&self, items: Vec<(Message, Meta)>, reason: &'static str) {
        if items.is_empty() {
            return;
        }
        let dead_letter = self.dead_letter.as_ref();
        self.metrics
            .gave_up(reason, items.len(), dead_letter.map(SinkHandle::name));
        let mut closed = 0;
        for (message, meta) in items {
            let Meta { ack, slot, .. } = meta;
            // Free our buffer before waiting on the dead-letter sink's.
            drop(slot);
            let ack = ack.unwrap_or_else(AckToken::untracked);
            match dead_letter {
                // The token travels with the message. If the dead-letter
                // sink is closed (it was shut down first, against the
                // documented order), the token is dropped with the input:
                // the message stays unacknowledged and is redelivered.
                Some(dl) => {
                    if dl.send(SinkInput { message, ack }).await.is_err() {
                        closed += 1;
                    }
                }
                None => ack.accept(),
            }
        }
        if closed > 0 {
            self.metrics.dead_letter_closed(closed);
        }
    }
}

/// The ceiling of the delay before retry number `retry + 1`:
/// `BACKOFF_BASE * 2^retry`, capped at [`BACKOFF_CAP`]. The actual delay is
/// a uniformly random fraction of it ("full jitter"), so that many writers
/// failing together do not retry together.
pub fn backoff_ceiling(retry: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1u32 << retry.min(20))
        .min(BACKOFF_CAP)
}

/// An error with its sources, `outer: inner: root`.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::ack::{AckOutcome, track};
    use crate::sink::MessageFailure;

    /// What a test sink's write does, given the payloads of its request.
    type Behaviour = dyn Fn(&[String], usize) -> Result<Written, TestError> + Send + Sync;

    #[derive(Debug, thiserror::Error)]
    #[error("{0:?} failure")]
    struct TestError(ErrorClass);

    /// One write a test sink saw.
    #[derive(Clone, Debug)]
    struct Call {
        at: Duration,
        payloads: Vec<String>,
    }

    /// A sink whose writes are recorded, optionally held at a gate, and
    /// answered by a closure. Payload `reject` fails to encode.
    #[derive(Clone)]
    struct TestSink {
        start: Instant,
        calls: Arc<Mutex<Vec<Call>>>,
        behaviour: Arc<Behaviour>,
        gate: Option<Arc<Semaphore>>,
        /// Whether payload `reject` fails to encode.
        rejects: bool,
        running: Arc<AtomicUsize>,
        max_running: Arc<AtomicUsize>,
    }

    impl TestSink {
        fn new(
            behaviour: impl Fn(&[String], usize) -> Result<Written, TestError> + Send + Sync + 'static,
        ) -> Self {
            TestSink {
                start: Instant::now(),
                calls: Arc::default(),
                behaviour: Arc::new(behaviour),
                gate: None,
                rejects: true,
                running: Arc::default(),
                max_running: Arc::default(),
            }
        }

        fn ok() -> Self {
            Self::new(|_, _| Ok(Written::All))
        }

        fn gated(mut self) -> (Self, Arc<Semaphore>) {
            let gate = Arc::new(Semaphore::new(0));
            self.gate = Some(gate.clone());
            (self, gate)
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }

        fn batches(&self) -> Vec<Vec<String>> {
            self.calls().into_iter().map(|c| c.payloads).collect()
        }
    }

    impl Sink for TestSink {
        type Request = Vec<String>;
        type Error = TestError;

        fn encode(&self, batch: &[Message], rejected: &mut Vec<Rejected>) -> Vec<String> {
            let mut out = Vec::new();
            for (index, m) in batch.iter().enumerate() {
                let text = String::from_utf8(m.payload.to_vec()).unwrap();
                if self.rejects && text == "reject" {
                    rejected.push(Rejected {
                        index,
                        reason: "cannot encode".into(),
                    });
                } else {
                    out.push(text);
                }
            }
            out
        }

        async fn write(&self, request: &Vec<String>) -> Result<Written, TestError> {
            let attempt = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(Call {
                    at: self.start.elapsed(),
                    payloads: request.clone(),
                });
                calls.len()
            };
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            (self.behaviour)(request, attempt)
        }

        fn classify(&self, error: &TestError) -> ErrorClass {
            error.0
        }
    }

    type Outcome = Arc<Mutex<Option<AckOutcome>>>;

    fn input(payload: &str) -> (SinkInput, Outcome) {
        let outcome: Outcome = Arc::default();
        let o = outcome.clone();
        let ack = track(move |x| *o.lock().unwrap() = Some(x));
        let input = SinkInput {
            message: Message::new("", payload.to_owned(), 0),
            ack,
        };
        (input, outcome)
    }

    fn config() -> DriverConfig {
        DriverConfig {
            batch_size: 100,
            batch_time: Duration::from_millis(10),
            request_ttl: None,
            ..DriverConfig::default()
        }
    }

    fn start(sink: &TestSink, config: &DriverConfig, dl: Option<SinkHandle>) -> RunningSink {
        spawn_with("test", sink.clone(), config, dl, || 1.0)
    }

    async fn send_all(handle: &SinkHandle, payloads: &[&str]) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for p in payloads {
            let (i, o) = input(p);
            handle.send(i).await.unwrap();
            outcomes.push(o);
        }
        outcomes
    }

    fn outcome(o: &Outcome) -> Option<AckOutcome> {
        *o.lock().unwrap()
    }

    /// Lets every ready task run without moving the paused clock.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_is_written_when_batch_time_passes() {
        let sink = TestSink::ok();
        let cfg = DriverConfig {
            batch_time: Duration::from_millis(50),
            ..config()
        };
        let running = start(&sink, &cfg, None);
        let acks = send_all(&running.handle, &["a", "b", "c"]).await;

        tokio::time::sleep(Duration::from_millis(49)).await;
        settle().await;
        assert!(sink.calls().is_empty(), "written before batch_time");

        tokio::time::sleep(Duration::from_millis(2)).await;
        settle().await;
        assert_eq!(sink.batches(), [["a", "b", "c"]]);
        assert_eq!(sink.calls()[0].at, Duration::from_millis(50));
        assert!(
            acks.iter()
                .all(|o| outcome(o) == Some(AckOutcome::Accepted))
        );
        running.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_cut_at_batch_size_without_waiting() {
        let sink = TestSink::ok();
        let cfg = DriverConfig {
            batch_size: 3,
            batch_time: Duration::from_secs(3600),
            inflight_window: 4,
            ..config()
        };
        let running = start(&sink, &cfg, None);
        send_all(&running.handle, &["1", "2", "3", "4", "5", "6", "7"]).await;
        settle().await;
        assert_eq!(sink.batches(), [["1", "2", "3"], ["4", "5", "6"]]);
        assert!(sink.calls().iter().all(|c| c.at.is_zero()));
        running.shutdown().await;
        assert_eq!(sink.batches().concat(), ["1", "2", "3", "4", "5", "6", "7"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_cut_before_it_passes_max_batch_bytes() {
        let sink = TestSink::ok();
        let cfg = DriverConfig {
            max_batch_bytes: 10,
            batch_time: Duration::from_secs(3600),
            inflight_window: 4,
            ..config()
        };
        let running = start(&sink, &cfg, None);
        send_all(
            &running.handle,
            &["aaaa", "bbbb", "cccc", "dddddddddddddd", "e"],
        )
        .await;
        settle().await;
        // A message larger than the limit still goes, alone.
        assert_eq!(
            sink.batches(),
            vec![vec!["aaaa", "bbbb"], vec!["cccc"], vec!["dddddddddddddd"]]
        );
        running.shutdown().await;
        assert_eq!(sink.batches().last().unwrap(), &["e"]);
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_back_off_exponentially_up_to_the_cap() {
        // Fails 9 times, then succeeds.
        let sink = TestSink::new(|_, attempt| {
            if attempt <= 9 {
                Err(TestError(ErrorClass::Retryable))
            } else {
                Ok(Written::All)
            }
        });
        let cfg = DriverConfig {
            batch_time: Duration::ZERO,
            ..config()
        };
        let running = start(&sink, &cfg, None);
        let acks = send_all(&running.handle, &["x"]).await;
        tokio::time::sleep(Duration::from_secs(60)).await;

        let at: Vec<u128> = sink.calls().iter().map(|c| c.at.as_millis()).collect();
        let gaps: Vec<u128> = at.windows(2).map(|w| w[1] - w[0]).collect();
        // Jitter is fixed at 1.0 here, so each delay is its ceiling.
        assert_eq!(gaps, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(outcome(&acks[0]), Some(AckOutcome::Accepted));
        running.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn write_health_follows_retryable_failures_and_recovery_but_not_bad_data() {
        // Attempt 1 fails retryably, 2 succeeds, 3 fails permanently (the
        // service answered: bad data is not a health problem).
        let sink = TestSink::new(|_, attempt| match attempt {
            1 => Err(TestError(ErrorClass::Retryable)),
            3 => Err(TestError(ErrorClass::Permanent)),
            _ => Ok(Written::All),
        });
        let cfg = DriverConfig {
            batch_time: Duration::ZERO,
            ..config()
        };
        let running = start(&sink, &cfg, None);
        let mut health = running.handle.write_health();
        assert_eq!(*health.borrow(), WriteHealth::Unknown);

        let _acks = send_all(&running.handle, &["x"]).await;
        health.changed().await.unwrap();
        assert_eq!(
            *health.borrow_and_update(),
            WriteHealth::Unreachable("Retryable failure".into())
        );
        health.changed().await.unwrap();
        assert_eq!(*health.borrow_and_update(), WriteHealth::Reachable);

        let _acks = send_all(&running.handle, &["y"]).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(sink.calls().len(), 3);
        assert!(!health.has_changed().unwrap(), "still reachable");
        running.shutdown().await;
    }

    #[test]
    fn backoff_ceilings_double_from_the_base_and_stop_at_the_cap() {
        assert_eq!(backoff_ceiling(0), BACKOFF_BASE);
        assert_eq!(backoff_ceiling(1), BACKOFF_BASE * 2);
        assert_eq!(backoff_ceiling(3), BACKOFF_BASE * 8);
        assert_eq!(backoff_ceiling(7), BACKOFF_CAP);
        assert_eq!(backoff_ceiling(u32::MAX), BACKOFF_CAP);
    }

    #[tokio::test(start_paused = true)]
    async fn full_jitter_keeps_each_delay_under_its_ceiling() {
        let sink = TestSink::new(|_, attempt| {
            if attempt <= 6 {
                Err(TestError(ErrorClass::Retryable))
            } else {
                Ok(Written::All)
            }
        });
        let cfg = DriverConfig {
            batch_time: Duration::ZERO,
            ..config()
        };
        let running = spawn("test", sink.clone(), &cfg, None);
        send_all(&running.handle, &["x"]).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let calls = sink.calls();
        assert_eq!(calls.len(), 7);
        for (retry, pair) in calls.windows(2).enumerate() {
            let gap = pair[1].at - pair[0].at;
            assert!(
                gap <= backoff_ceiling(retry as u32),
                "retry {retry}: {gap:?}"
            );
        }
        running.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn after_max_retries_a_message_is_dropped_and_its_token_accepted() {
        let sink = TestSink::new(|_, _| Err(TestError(ErrorClass::Retryable)));
        let cfg = DriverConfig {
            batch_time: Duration::ZERO,
            max_retries: Some(3),
            ..config()
        };
        let running = start(&sink, &cfg, None);
        let acks = send_all(&running.handle, &["x"]).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(sink.calls().len(), 4, "one attempt and three retries");
        assert_eq!(outcome(&acks[0]), Some(AckOutcome::Accepted));
        running.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn request_ttl_expiry_hands_the_message_and_its_token_to_the_dead_letter_sink() {
        let (dl_sink, dl_gate) = TestSink::ok().gated();
        let dl = start(&dl_sink, &config(), None);
        let sink = TestSink::new(|_, _| Err(TestError(ErrorClass::Retryable)));
        let cfg = DriverConfig {
            batch_time: Duration::ZERO,
            request_ttl: Some(Duration::from_secs(5)),
            ..config()
        };
        let running = start(&sink, &cfg, Some(dl.handle.clone()));
        let acks = send_all(&running.handle, &["late"]).await;

        tokio::time::sleep(Duration::from_secs(4)).await;
        settle().await;
        assert!(dl_sink.calls().is_empty(), "gave up before the ttl");

        tokio::time::sleep(Duration::from_secs(10)).await;
        settle().await;
        // Attempts at 0, .1, .3, .7, 1.5, 3.1 s; the next would be at
        // 6.3 s, past the ttl: the message is given up on at 5 s instead.
        assert_eq!(sink.calls().len(), 6);
        assert_eq!(dl_sink.batches(), [["late"]]);
        let dl_at = dl_sink.calls()[0].at;
        assert!(
            dl_at >= Duration::from_secs(5) && dl_at <= Duration::from_millis(5_010),
            "{dl_at:?}"
        );
        assert_eq!(
            outcome(&acks[0]),
            None,
            "dead-letter sink has not written yet"
        );
        dl_gate.add_permits(1);
        settle().await;
        assert_eq!(outcome(&acks[0]), Some(AckOutcome::Accepted));
        running.shutdown().await;
        dl.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_batch_failure_is_bisected_down_to_the_bad_message() {
        let sink = TestSink::new(|payloads, _| {
            if payloads.iter().any(|p| p == "poison") {
                Err(TestError(ErrorClass::Permanent))
            } else {
                Ok(Written::All)
            }
        });
        let dl_sink = TestSink::ok();
        let dl = start(&dl_sink, &config(), None);
        let running = start(&sink, &config(), Some(dl.handle.clone()));
        let payloads = ["0", "1", "2", "3", "4", "poison", "6", "7"];
        let acks = send_all(&running.handle, &payloads).await;
        running.shutdown().await;
        dl.shutdown().await;

        let written: Vec<String> = sink
            .calls()
            .into_iter()
            .filter(|c| !c.payloads.iter().any(|p| p == "poison"))
            .flat_map(|c| c.payloads)
            .collect();
        assert_eq!(written, ["0", "1", "2", "3", "4", "6", "7"]);
        // 8 → 4+4 → 2+2 → 1+1: one write per level for the bad half, one
        // per good half.
        assert_eq!(
            sink.batches(),
            vec![
                vec!["0", "1", "2", "3", "4", "poison", "6", "7"],
                vec!["0", "1", "2", "3"],
                vec!["4", "poison", "6", "7"],
                vec!["4", "poison"],
                vec!["4"],
                vec!["poison"],
                vec!["6", "7"],
            ]
        );
        assert_eq!(dl_sink.batches(), [["poison"]]);
        assert!(
            acks.iter()
                .all(|o| outcome(o) == Some(AckOutcome::Accepted))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn per_message_failures_are_retried_alone_or_dead_lettered() {
        let sink = TestSink::new(|payloads, attempt| {
            let failures = payloads
                .iter()
                .enumerate()
                .filter_map(|(index, p)| match (p.as_str(), attempt) {
                    ("flaky", 1) => Some(MessageFailure {
                        index,
                        class: ErrorClass::Retryable,
                        reason: "busy".into(),
                    }),
                    ("broken", _) => Some(MessageFailure {
                        index,
                        class: ErrorClass::Permanent,
                        reason: "bad row".into(),
                    }),
                    _ => None,
                })
                .collect::<Vec<_>>();
            Ok(if failures.is_empty() {
                Written::All
            } else {
                Written::Partial(failures)
            })
        });
        let dl_sink = TestSink::ok();
        let dl = start(&dl_sink, &config(), None);
        let running = start(&sink, &config(), Some(dl.handle.clone()));
        let acks = send_all(&running.handle, &["ok", "flaky", "broken", "fine"]).await;
        running.shutdown().await;
        dl.shutdown().await;

        assert_eq!(
            sink.batches(),
            vec![vec!["ok", "flaky", "broken", "fine"], vec!["flaky"]]
        );
        assert_eq!(dl_sink.batches(), [["broken"]]);
        assert!(
            acks.iter()
                .all(|o| outcome(o) == Some(AckOutcome::Accepted))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_cannot_be_encoded_fails_alone() {
        let sink = TestSink::ok();
        let dl_sink = TestSink {
            rejects: false,
            ..TestSink::ok()
        };
        let dl = start(&dl_sink, &config(), None);
        let running = start(&sink, &config(), Some(dl.handle.clone()));
        send_all(&running.handle, &["a", "reject", "b"]).await;
        running.shutdown().await;
        dl.shutdown().await;
        assert_eq!(sink.batches(), [["a", "b"]]);
        assert_eq!(dl_sink.batches(), [["reject"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_that_panics_abandons_only_its_batch() {
        let sink = TestSink::new(|payloads, _| {
            assert!(!payloads.iter().any(|p| p == "boom"), "a bug in the sink");
            Ok(Written::All)
        });
        let cfg = DriverConfig {
            batch_size: 1,
            ..config()
        };
        let running = start(&sink, &cfg, None);
        let acks = send_all(&running.handle, &["a", "boom", "b"]).await;
        running.shutdown().await;
        assert_eq!(sink.batches(), [["a"], ["boom"], ["b"]]);
        let outcomes: Vec<_> = acks.iter().map(outcome).collect();
        use AckOutcome::{Abandoned, Accepted};
        assert_eq!(outcomes, [Some(Accepted), Some(Abandoned), Some(Accepted)]);
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_batch_time_a_batch_is_what_waited_during_the_last_write() {
        let (sink, gate) = TestSink::ok().gated();
        let cfg = DriverConfig {
            batch_time: Duration::ZERO,
            batch_size: 4,
            ..config()
        };
        let running = start(&sink, &cfg, None);
        // Three at once: they go out together, at once.
        send_all(&running.handle, &["1", "2", "3"]).await;
        settle().await;
        assert_eq!(sink.batches(), [["1", "2", "3"]]);
        assert_eq!(sink.calls()[0].at, Duration::ZERO, "no waiting for company");
        // Six more arrive while that write is out.
        send_all(&running.handle, &["4", "5", "6", "7", "8", "9"]).await;
        settle().await;
        assert_eq!(sink.calls().len(), 1);

        gate.add_permits(10);
        running.shutdown().await;
        assert_eq!(
            sink.batches(),
            [
                vec!["1", "2", "3"],
                vec!["4", "5", "6", "7"],
                vec!["8", "9"]
            ],
            "what waited goes out together, up to batch_size"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_writes_run_at_once_than_the_inflight_window() {
        let (sink, gate) = TestSink::ok().gated();
        let cfg = DriverConfig {
            batch_size: 1,
            inflight_window: 2,
            ..config()
        };
        let running = start(&sink, &cfg, None);
        let acks = send_all(&running.handle, &["1", "2", "3", "4", "5"]).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(sink.calls().len(), 2);

        gate.add_permits(1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(sink.calls().len(), 3);

        gate.add_permits(10);
        running.shutdown().await;
        assert_eq!(sink.max_running.load(Ordering::SeqCst), 2);
        assert_eq!(sink.batches().concat(), ["1", "2", "3", "4", "5"]);
        assert!(
            acks.iter()
                .all(|o| outcome(o) == Some(AckOutcome::Accepted))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sync_mode_accepts_a_token_only_once_its_batch_is_written() {
        let (sink, gate) = TestSink::ok().gated();
        let running = start(&sink, &config(), None);
        let acks = send_all(&running.handle, &["x"]).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(sink.calls().len(), 1, "the write started");
        assert_eq!(outcome(&acks[0]), None);
        gate.add_permits(1);
        settle().await;
        assert_eq!(outcome(&acks[0]), Some(AckOutcome::Accepted));
        running.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn async_mode_accepts_a_token_once_the_driver_buffered_it() {
        let (sink, gate) = TestSink::ok().gated();
        let cfg = DriverConfig {
            query_mode: QueryMode::Async,
            ..config()
        };
        let running = start(&sink, &cfg, None);
        let acks = send_all(&running.handle, &["x"]).await;
        assert_eq!(outcome(&acks[0]), Some(AckOutcome::Accepted));
        assert!(sink.calls().is_empty());
        gate.add_permits(1);
        running.shutdown().await;
        assert_eq!(sink.batches(), [["x"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn send_waits_while_the_buffer_is_full() {
        let (sink, gate) = TestSink::ok().gated();
        let cfg = DriverConfig {
            max_buffer_bytes: 10,
            batch_time: Duration::ZERO,
            ..config()
        };
        let running = start(&sink, &cfg, None);
        // Two 5-byte messages fill the 10-byte buffer.
        send_all(&running.handle, &["11111", "22222"]).await;
        let (third, third_ack) = input("33333");
        let handle = running.handle.clone();
        let mut pending = tokio::spawn(async move { handle.send(third).await });

        let waited = tokio::time::timeout(Duration::from_secs(5), &mut pending).await;
        assert!(waited.is_err(), "send returned while the buffer was full");

        // The first write finishes and frees its bytes.
        gate.add_permits(1);
        pending.await.unwrap().unwrap();
        gate.add_permits(10);
        running.shutdown().await;
        assert_eq!(sink.batches().concat(), ["11111", "22222", "33333"]);
        assert_eq!(outcome(&third_ack), Some(AckOutcome::Accepted));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_flushes_the_buffer_and_waits_for_writes_then_refuses_sends() {
        let sink = TestSink::ok();
        let cfg = DriverConfig {
            batch_size: 2,
            batch_time: Duration::from_secs(3600),
            ..config()
        };
        let running = start(&sink, &cfg, None);
        let handle = running.handle.clone();
        let acks = send_all(&handle, &["a", "b", "c"]).await;
        let before = Instant::now();
        running.shutdown().await;
        assert_eq!(
            Instant::now(),
            before,
            "shutdown did not wait for batch_time"
        );
        assert_eq!(sink.batches(), [vec!["a", "b"], vec!["c"]]);
        assert!(
            acks.iter()
                .all(|o| outcome(o) == Some(AckOutcome::Accepted))
        );
        let (late, late_ack) = input("late");
        assert_eq!(
            handle.send(late).await,
            Err(SinkClosed {
                sink: "test".into()
            })
        );
        assert_eq!(outcome(&late_ack), Some(AckOutcome::Abandoned));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_retries_in_flight() {
        let sink = TestSink::new(|_, attempt| {
            if attempt < 3 {
                Err(TestError(ErrorClass::Retryable))
            } else {
                Ok(Written::All)
            }
        });
        let running = start(&sink, &config(), None);
        let acks = send_all(&running.handle, &["x"]).await;
        running.shutdown().await;
        assert_eq!(sink.calls().len(), 3);
        assert_eq!(outcome(&acks[0]), Some(AckOutcome::Accepted));
    }
}
