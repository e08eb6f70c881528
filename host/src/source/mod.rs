//! The MQTT source: one broker connection, its subscriptions, and the
//! acknowledgements.
//!
//! The connection speaks MQTT 3.1.1 or 5 (`[broker] protocol`), through
//! rumqttc's client for each; [`client`] hides the difference, so everything
//! below holds for both. With MQTT 5, `clean_session = false` asks for a
//! session that never expires (in MQTT 5 a session otherwise ends with the
//! connection) and the CONNECT's Receive Maximum is [`RECEIVE_MAXIMUM`].
//!
//! The rumqttc event loop runs in this module's task and nothing else runs
//! there: every incoming publish is handed to the router through a channel
//! without waiting, so keep-alives never stall behind slow work.
//!
//! **At-least-once.** The connection uses manual acknowledgements. A QoS 1
//! message is acknowledged (PUBACK) only when the pipeline reports that every
//! output of every rule it matched was accepted by its sinks
//! ([`crate::ack`]). MQTT requires PUBACKs in the order the PUBLISHes
//! arrived, and pipelines finish out of order, so completions wait in
//! [`AckQueue`] until everything before them is done. A message whose
//! outputs were abandoned (shutdown before a sink accepted them) is never
//! acknowledged: the broker delivers it again to the persistent session.
//! After a reconnect, acknowledgements of the previous connection are void
//! (packet ids are per connection), so those messages are redelivered too:
//! duplicates are possible, losses are not.
//!
//! **Flow control.** For QoS 1 the broker stops sending once its in-flight
//! window for this client (3.1.1: the broker's setting; 5: our Receive
//! Maximum) is full of unacknowledged messages, so the
//! hand-off buffer is bounded by that window; it is still bounded here
//! ([`HANDOFF_CAPACITY`]) and a QoS 0 message that finds it full is dropped
//! (counted), as QoS 0 allows. QoS 1 messages are never dropped: they wait
//! in an overflow list, which the broker's window keeps finite.
//!
//! **Reconnects** back off exponentially from `reconnect_min` to
//! `reconnect_max`, and every new connection subscribes again (a broker
//! restarted without persistence forgot the subscriptions).

mod client;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use self::client::{Client, Polled, V4, V5};
use crate::ack::{self, AckOutcome, AckToken};
use crate::config::{BrokerConfig, MqttProtocol};
use crate::message::Message;
use crate::telemetry;

pub(crate) use self::client::apply_login_and_tls;
pub use self::client::{RECEIVE_MAXIMUM, mqtt_options};

/// Messages the source hands to the router before it has to hold them.
pub const HANDOFF_CAPACITY: usize = 4096;

/// Requests the client may queue for the event loop (subscribes, and the
/// acknowledgements of an MQTT 5 connection). Acks are queued without
/// waiting, so this must exceed the broker's in-flight window.
const REQUEST_CAPACITY: usize = 65_536;

/// One subscription.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subscription {
    /// The filter as sent to the broker (`$share/g/devices/+/t` included).
    pub filter: String,
    /// 0 or 1.
    pub qos: u8,
}

/// A message from the broker with the token that acknowledges it.
pub struct Incoming {
    /// The message (no fields yet: captures are the router's).
    pub message: Message,
    /// Accept once every output is accepted; drop to leave it unacknowledged.
    pub ack: AckToken,
}

/// The running source.
pub struct Source {
    phase: watch::Sender<Phase>,
    subscriptions: watch::Sender<Vec<Subscription>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the source task is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Forward messages and send acknowledgements.
    Running,
    /// Forward nothing more (what still arrives stays unacknowledged, for
    /// redelivery), keep sending acknowledgements of what was forwarded.
    Draining,
    /// Disconnect.
    Stopped,
}

impl Source {
    /// Connects (in the background, retrying) and subscribes.
    pub fn start(
        config: &BrokerConfig,
        subscriptions: Vec<Subscription>,
        out: mpsc::Sender<Incoming>,
    ) -> anyhow::Result<Source> {
        let (phase, phase_rx) = watch::channel(Phase::Running);
        let (subs, subs_rx) = watch::channel(subscriptions);
        let backoff = (config.reconnect_min, config.reconnect_max);
        let task = match config.protocol {
            MqttProtocol::V311 => {
                let client = V4::new(config, REQUEST_CAPACITY)?;
                tokio::spawn(run(client, subs_rx.clone(), out, phase_rx, backoff))
            }
            MqttProtocol::V5 => {
                let client = V5::new(config, REQUEST_CAPACITY)?;
                tokio::spawn(run(client, subs_rx.clone(), out, phase_rx, backoff))
            }
        };
        Ok(Source {
            phase,
            subscriptions: subs,
            task,
        })
    }

    /// Replaces the subscriptions (a manifest reload added or removed
    /// rules): new filters are subscribed, filters no longer wanted are
    /// unsubscribed, on this connection and every later one.
    pub fn set_subscriptions(&self, subscriptions: Vec<Subscription>) {
        self.subscriptions.send_if_modified(|current| {
            let changed = *current != subscriptions;
            *current = subscriptions;
            changed
        });
    }

    /// Stops handing messages on (the hand-off channel closes), while
    /// acknowledgements of what was handed on still go out.
    pub fn stop_intake(&self) {
        let _ = self.phase.send(Phase::Draining);
    }

    /// Sends the acknowledgements that are ready and disconnects. Messages
    /// not acknowledged stay with the broker's session.
    pub async fn stop(self) {
        let _ = self.phase.send(Phase::Stopped);
        let _ = self.task.await;
    }
}

/// Resolves when `rx`'s value changes (`false`: its sender is gone) and
/// hands the receiver back.
async fn changed<T>(mut rx: watch::Receiver<T>) -> (bool, watch::Receiver<T>) {
    let open = rx.changed().await.is_ok();
    (open, rx)
}

type Changed<T> = Pin<Box<dyn Future<Output = (bool, watch::Receiver<T>)> + Send>>;

/// The source's two control channels, each waited on by one future that
/// lives across `run`'s loop. A `changed()` made afresh in every
/// `select!` registered and withdrew a waiter per message (~900
/// instructions per message on the network thread, under callgrind).
struct Controls {
    phase: Changed<Phase>,
    phase_open: bool,
    wanted: Changed<Vec<Subscription>>,
    wanted_open: bool,
}

impl Controls {
    fn new(phase: watch::Receiver<Phase>, wanted: watch::Receiver<Vec<Subscription>>) -> Self {
        Controls {
            phase: Box::pin(changed(phase)),
            phase_open: true,
            wanted: Box::pin(changed(wanted)),
            wanted_open: true,
        }
    }

    /// The next change: the subscriptions now wanted, or `None` when the
    /// phase changed (or a sender is gone: that channel is not waited on
    /// again). Cancel-safe: the waits live in `self`.
    async fn next(&mut self) -> Option<Vec<Subscription>> {
        tokio::select! {
            biased;
            (open, rx) = &mut self.phase, if self.phase_open => {
                self.phase_open = open;
                self.phase = Box::pin(changed(rx));
                None
            }
            (open, mut rx) = &mut self.wanted, if self.wanted_open => {
                self.wanted_open = open;
                let next = open.then(|| rx.borrow_and_update().clone());
                self.wanted = Box::pin(changed(rx));
                next
            }
            else => std::future::pending().await,
        }
    }
}

/// Subscribes the filters `next` adds and unsubscribes those it drops.
fn resubscribe<C: Client>(
    client: &mut C,
    subscriptions: &mut Vec<Subscription>,
    next: Vec<Subscription>,
) {
    for s in next.iter().filter(|s| !subscriptions.contains(s)) {
        tracing::info!(filter = %s.filter, qos = s.qos, "Subscribing.");
        if let Err(e) = client.try_subscribe(&s.filter, s.qos) {
            tracing::error!(filter = %s.filter, error = %e, "Cannot subscribe.");
        }
    }
    for s in subscriptions
        .iter()
        .filter(|s| !next.iter().any(|n| n.filter == s.filter))
    {
        tracing::info!(filter = %s.filter, "Unsubscribing.");
        if let Err(e) = client.try_unsubscribe(&s.filter) {
            tracing::error!(filter = %s.filter, error = %e, "Cannot unsubscribe.");
        }
    }
    *subscriptions = next;
}

async fn run<C: Client>(
    mut client: C,
    mut wanted: watch::Receiver<Vec<Subscription>>,
    out: mpsc::Sender<Incoming>,
    mut phase: watch::Receiver<Phase>,
    (backoff_min, backoff_max): (Duration, Duration),
) {
    let mut out = Some(out);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u64, u64, AckOutcome)>();
    let mut acks = AckQueue::<C::Ack>::default();
    let metrics = telemetry::SourceMetrics::default();
    let mut overflow: VecDeque<Incoming> = VecDeque::new();
    let mut backoff = backoff_min;
    let mut connection: u64 = 0;
    let mut subscriptions: Vec<Subscription> = wanted.borrow_and_update().clone();
    // Read at the top of every turn, like `phase`: in the `select!` below
    // the controls come last, so under load the broker's events win there.
    let mut wanted_now = wanted.clone();
    let mut controls = Controls::new(phase.clone(), wanted);
    loop {
        // Hand held messages on first, in order.
        while let (Some(tx), Some(front)) = (&out, overflow.pop_front()) {
            match tx.try_send(front) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(front)) => {
                    overflow.push_front(front);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => out = None,
            }
        }
        if wanted_now.has_changed().unwrap_or(false) {
            let next = wanted_now.borrow_and_update().clone();
            resubscribe(&mut client, &mut subscriptions, next);
        }
        let current = *phase.borrow_and_update();
        if current >= Phase::Draining && out.is_some() {
            // Closing the hand-off ends the router; what is held here is
            // dropped unacknowledged, for redelivery.
            out = None;
            overflow.clear();
        }
        if current == Phase::Stopped {
            // Acknowledgements completed during the drain are in `done_rx`.
            while let Ok((conn, seq, outcome)) = done_rx.try_recv() {
                if conn == connection {
                    acks.complete(seq, outcome);
                }
            }
            let _ = client
                .send_acks(std::iter::from_fn(|| acks.next_ready()))
                .await;
            client.try_disconnect();
            // Let the acknowledgements and the disconnect go out; bounded,
            // the broker may be gone.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while client.poll().await.is_ok() {}
            })
            .await;
            return;
        }
        // The controls are polled last: each poll of a waiting `watch`
        // takes its lock, and the broker's events come several per message.
        // The top of the loop reads them cheaply on every turn; the wait
        // here only wakes an idle loop. Events the last read already
        // queued come first, without a `select!`: under load most events
        // are these.
        let event = match client.queued() {
            Some(polled) => Ok(polled),
            None => tokio::select! {
                biased;
                Some(done) = done_rx.recv() => {
                    // Take every completion there is, and send what they
                    // made ready in one write.
                    let mut next = Some(done);
                    while let Some((conn, seq, outcome)) = next {
                        if conn == connection {
                            acks.complete(seq, outcome);
                        }
                        next = done_rx.try_recv().ok();
                    }
                    if let Err(e) = client.send_acks(std::iter::from_fn(|| acks.next_ready())).await {
                        telemetry::source_error("ack_not_sent", &e, "Cannot send acknowledgements; the broker will redeliver those messages.");
                    }
                    continue;
                }
                event = client.poll() => event,
                control = controls.next() => {
                    if let Some(next) = control {
                        resubscribe(&mut client, &mut subscriptions, next);
                    }
                    continue;
                }
            },
        };
        match event {
            Ok(Polled::Connected { session_present }) => {
                connection += 1;
                acks = AckQueue::default();
                backoff = backoff_min;
                tracing::info!(session_present, "Connected to the broker.");
                telemetry::source_connected(true);
                for s in &subscriptions {
                    if let Err(e) = client.try_subscribe(&s.filter, s.qos) {
                        tracing::error!(filter = %s.filter, error = %e, "Cannot subscribe.");
                    }
                }
            }
            Ok(Polled::Publish {
                topic,
                payload,
                qos,
                ack,
            }) => {
                let Some(tx) = &out else {
                    // Draining: leave it unacknowledged for redelivery.
                    continue;
                };
                metrics.received(payload.len());
                let incoming = accept(topic, payload, qos, ack, connection, &mut acks, &done_tx);
                match tx.try_send(incoming) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(incoming)) => {
                        if incoming.message.qos == 0 {
                            telemetry::source_dropped("handoff_full");
                            incoming.ack.accept();
                        } else {
                            overflow.push_back(incoming);
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => out = None,
                }
            }
            Ok(Polled::Malformed) => {
                telemetry::source_dropped("topic_not_utf8");
                tracing::warn!("Dropped a message whose topic is not UTF-8.");
            }
            Ok(Polled::Subscribed {
                pkid,
                codes,
                refused,
            }) => {
                if refused {
                    tracing::error!(
                        pkid,
                        codes,
                        "The broker refused a subscription; check the filter and the broker's ACL."
                    );
                } else {
                    tracing::info!(pkid, codes, "Subscribed.");
                }
            }
            Ok(Polled::Other) => {}
            Err(e) => {
                telemetry::source_connected(false);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Broker connection failed; reconnecting.");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    control = controls.next() => {
                        if let Some(next) = control {
                            resubscribe(&mut client, &mut subscriptions, next);
                        }
                    }
                }
                backoff = (backoff * 2).min(backoff_max);
            }
        }
    }
}

/// Wraps a publish into a message with its ack token.
fn accept<A: Send + 'static>(
    topic: std::sync::Arc<str>,
    payload: bytes::Bytes,
    qos: u8,
    publish: A,
    connection: u64,
    acks: &mut AckQueue<A>,
    done: &mpsc::UnboundedSender<(u64, u64, AckOutcome)>,
) -> Incoming {
    let message = Message {
        topic,
        payload,
        timestamp_ms: now_ms(),
        qos,
        fields: Default::default(),
    };
    let ack = if qos == 0 {
        // Nothing to acknowledge.
        AckToken::untracked()
    } else {
        let seq = acks.push(publish);
        let done = done.clone();
        ack::track(move |outcome| {
            let _ = done.send((connection, seq, outcome));
        })
    };
    Incoming { message, ack }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// QoS 1 messages of the current connection, in arrival order, waiting for
/// their acknowledgement to become sendable.
struct AckQueue<A> {
    /// Sequence number of `pending[0]`.
    first: u64,
    pending: VecDeque<(A, Option<AckOutcome>)>,
    /// Set once a message was abandoned: nothing after it may be
    /// acknowledged on this connection (MQTT acknowledges in order).
    blocked: bool,
}

impl<A> Default for AckQueue<A> {
    fn default() -> Self {
        AckQueue {
            first: 0,
            pending: VecDeque::new(),
            blocked: false,
        }
    }
}

impl<A> AckQueue<A> {
    fn push(&mut self, publish: A) -> u64 {
        self.pending.push_back((publish, None));
        self.first + self.pending.len() as u64 - 1
    }

    fn complete(&mut self, seq: u64, outcome: AckOutcome) {
        if let Some(index) = seq.checked_sub(self.first)
            && let Some(entry) = self.pending.get_mut(index as usize)
        {
            entry.1 = Some(outcome);
        }
    }

    /// The next acknowledgement that can be sent now: acknowledgements go
    /// out in arrival order. Taken one at a time, so that sending them
    /// allocates nothing.
    fn next_ready(&mut self) -> Option<A> {
        while !self.blocked {
            match self.pending.front() {
                Some((_, Some(AckOutcome::Accepted))) => {
                    let (publish, _) = self.pending.pop_front().expect("front exists");
                    self.first += 1;
                    return Some(publish);
                }
                Some((_, Some(AckOutcome::Abandoned))) => {
                    tracing::warn!(
                        "A message was abandoned before its sinks accepted it; it stays unacknowledged for redelivery."
                    );
                    self.blocked = true;
                }
                _ => break,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(pkid: u16) -> u16 {
        pkid
    }

    /// Every acknowledgement that can be sent now.
    fn ready(q: &mut AckQueue<u16>) -> Vec<u16> {
        std::iter::from_fn(|| q.next_ready()).collect()
    }

    #[test]
    fn acknowledgements_go_out_in_arrival_order() {
        let mut q = AckQueue::default();
        let a = q.push(publish(1));
        let b = q.push(publish(2));
        let c = q.push(publish(3));
        q.complete(c, AckOutcome::Accepted);
        assert!(ready(&mut q).is_empty(), "3 waits for 1 and 2");
        q.complete(a, AckOutcome::Accepted);
        assert_eq!(ready(&mut q), [1]);
        q.complete(b, AckOutcome::Accepted);
        assert_eq!(ready(&mut q), [2, 3]);
        let d = q.push(publish(4));
        q.complete(d, AckOutcome::Accepted);
        assert_eq!(ready(&mut q), [4]);
    }

    #[test]
    fn an_abandoned_message_is_never_acknowledged_nor_anything_after_it() {
        let mut q = AckQueue::default();
        let a = q.push(publish(1));
        let b = q.push(publish(2));
        q.complete(b, AckOutcome::Accepted);
        q.complete(a, AckOutcome::Abandoned);
        assert!(ready(&mut q).is_empty());
    }
}
