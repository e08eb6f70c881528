//! The MQTT sink: its client, its event-loop task, and the bookkeeping that
//! turns the event loop's reports into per-publish outcomes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS, Request};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::config::MqttSettings;
use super::encode::{Encoder, Publish};
use crate::message::Message;

/// How long a health check waits for a connection that is not up yet.
const CONNECT_GRACE: Duration = Duration::from_secs(2);
use crate::sink::{ErrorClass, MessageFailure, Rejected, Sink, Written};
use crate::telemetry::SinkMetrics;

/// Longest a write waits for its acknowledgements while connected. A
/// broker that accepts a connection but never acknowledges is as good as
/// down: the write fails as retryable.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a closing sink waits for its DISCONNECT to go out.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Republishes messages over its own MQTT connection.
pub struct MqttSink {
    encoder: Encoder,
    tracker: Arc<Tracker>,
    address: String,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Why a write did not go through. Each variant's retry class is in
/// [`classify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttError {
    /// The client is between connections.
    #[error("not connected to the broker")]
    NotConnected,
    /// No publish of the write was acknowledged (connection lost, timeout).
    #[error("no publish was acknowledged: {0}")]
    NotAcknowledged(String),
}

/// Whether retrying may help: every MQTT failure is the connection's, never
/// a message's (those are rejected when encoding), so every one is.
fn classify(error: &MqttError) -> ErrorClass {
    match error {
        MqttError::NotConnected => ErrorClass::Retryable,
        MqttError::NotAcknowledged(_) => ErrorClass::Retryable,
    }
}

impl MqttSink {
    /// Creates the client and starts its event loop, which connects in the
    /// background (a broker that is down at start is retried, not an error).
    pub fn connect(name: &str, settings: MqttSettings) -> anyhow::Result<MqttSink> {
        let (host, port) = settings.options.broker_address();
        let address = format!("{host}:{port}");
        // The client only carries the DISCONNECT; publishes go through the
        // tracker (see `send_waiting`).
        let (client, eventloop) = AsyncClient::new(settings.options, 1);
        let tracker = Arc::new(Tracker {
            capacity: settings.send_capacity,
            ..Tracker::default()
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(drive(
            eventloop,
            client,
            tracker.clone(),
            SinkMetrics::new(name),
            (settings.reconnect_min, settings.reconnect_max),
            stop_rx,
        ));
        Ok(MqttSink {
            encoder: settings.encoder,
            tracker,
            address,
            stop: Mutex::new(Some(stop_tx)),
            task: Mutex::new(Some(task)),
        })
    }
}

impl Sink for MqttSink {
    type Request = Vec<Publish>;
    type Error = MqttError;

    fn encode(&self, batch: &[Message], rejected: &mut Vec<Rejected>) -> Vec<Publish> {
        self.encoder.encode(batch, rejected)
    }

    async fn write(&self, request: &Vec<Publish>) -> Result<Written, MqttError> {
        if !self.tracker.connected.load(Ordering::Acquire) {
            return Err(MqttError::NotConnected);
        }
        let mut failures = Vec::new();
        let mut waits = Vec::with_capacity(request.len());
        {
            // A publish and what completes it enter the tracker together,
            // under one lock, so that the two queues stay in step.
            let mut state = self.tracker.lock();
            for p in request {
                if state.waiting.len() >= self.tracker.capacity {
                    failures.push(MessageFailure {
                        index: p.index,
                        class: ErrorClass::Retryable,
                        reason: format!(
                            "the sink's send queue is full ({} publishes)",
                            self.tracker.capacity
                        ),
                    });
                    continue;
                }
                let (done, wait) = oneshot::channel();
                let mut publish = rumqttc::Publish::from_bytes(
                    p.topic.as_str(),
                    self.encoder.qos,
                    p.payload.clone(),
                );
                publish.retain = self.encoder.retain;
                state.waiting.push_back(publish);
                state.queued.push_back(done);
                waits.push((p.index, wait));
            }
        }
        self.tracker.wake.notify_one();
        let deadline = Instant::now() + WRITE_TIMEOUT;
        for (index, wait) in waits {
            let reason = match tokio::time::timeout_at(deadline, wait).await {
                Ok(Ok(Ok(()))) => continue,
                Ok(Ok(Err(reason))) => reason,
                Ok(Err(_)) => "the MQTT client stopped".to_owned(),
                Err(_) => format!("no acknowledgement within {WRITE_TIMEOUT:?}"),
            };
            failures.push(MessageFailure {
                index,
                class: ErrorClass::Retryable,
                reason,
            });
        }
        if failures.is_empty() {
            Ok(Written::All)
        } else if failures.len() == request.len() {
            Err(MqttError::NotAcknowledged(failures.swap_remove(0).reason))
        } else {
            Ok(Written::Partial(failures))
        }
    }

    fn classify(&self, error: &MqttError) -> ErrorClass {
        classify(error)
    }

    async fn healthcheck(&self) -> anyhow::Result<()> {
        // The connection comes up in the background: give a sink that has
        // just started (or is reconnecting) a moment before calling it down.
        let deadline = Instant::now() + CONNECT_GRACE;
        while !self.tracker.connected.load(Ordering::Acquire) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "not connected to {}",
                self.address
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn close(&self) {
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().unwrap_or_else(|p| p.into_inner()) {
            task.abort();
        }
    }
}

/// What a publish ended with: `Ok` once written (QoS 0) or acknowledged
/// (QoS 1), `Err(reason)` when the connection it was on is gone.
type Done = oneshot::Sender<Result<(), String>>;

/// Shared by the sink's writes and its event-loop task.
#[derive(Default)]
struct Tracker {
    state: Mutex<TrackState>,
    connected: AtomicBool,
    /// Wakes the event-loop task when publishes are waiting.
    wake: Notify,
    /// Most publishes that may wait to be sent.
    capacity: usize,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, TrackState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Publishes between "queued by a write" and "done".
#[derive(Default)]
struct TrackState {
    /// Publishes not yet handed to the event loop, in order.
    waiting: VecDeque<rumqttc::Publish>,
    /// What completes each publish not yet seen going out, in the order
    /// they were queued (the `waiting` ones are its tail).
    queued: VecDeque<Done>,
    /// QoS 1 publishes on the wire, by packet id, waiting for their PUBACK.
    unacked: HashMap<u16, Done>,
    /// A publish rumqttc holds back because its packet id is still taken
    /// (only when a broker acknowledges out of order); it goes out with
    /// that id once the id is acknowledged.
    collided: Option<(u16, Done)>,
}

impl TrackState {
    /// Follows one event of the event loop.
    fn on_event(&mut self, event: &Event) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let done = match self.collided.take() {
                    Some((id, done)) if id == *pkid => done,
                    other => {
                        self.collided = other;
                        match self.queued.pop_front() {
                            Some(done) => done,
                            None => return,
                        }
                    }
                };
                if *pkid == 0 {
                    // QoS 0: flushed to the socket is all there is.
                    let _ = done.send(Ok(()));
                } else if let Some(stale) = self.unacked.insert(*pkid, done) {
                    let _ = stale.send(Err("its packet id was reused".into()));
                }
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                if let Some(done) = self.queued.pop_front() {
                    self.collided = Some((*pkid, done));
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(done) = self.unacked.remove(&ack.pkid) {
                    let _ = done.send(Ok(()));
                }
            }
            _ => {}
        }
    }

    /// The connection is gone: fails every publish not acknowledged, sent
    /// or not (the driver retries them on the next connection).
    fn on_connection_lost(&mut self, reason: &str) {
        self.waiting.clear();
        let failed = self
            .queued
            .drain(..)
            .chain(self.unacked.drain().map(|(_, done)| done))
            .chain(self.collided.take().map(|(_, done)| done));
        for done in failed {
            let _ = done.send(Err(format!("connection lost: {reason}")));
        }
    }
}

/// Hands the waiting publishes to the event loop, as many as its in-flight
/// window has room for, and sends them with one flush.
///
/// rumqttc's own path for a publish (`AsyncClient::publish`) queues it for
/// the event loop, which writes and flushes each request by itself: one
/// `writev` system call and one event-loop turn per publish. This task owns
/// the event loop, and the 3.1.1 event loop exposes its state machine and
/// its framed connection, so the publishes take the same steps here
/// (`handle_outgoing_packet` assigns the packet id, records the publish as
/// in flight and queues the `Outgoing::Publish` event the tracker follows)
/// and share one write. The window is rumqttc's own rule: no new publish
/// while its in-flight count is at the maximum or a packet id collided.
///
/// An error means the connection failed; the caller cleans up as for a
/// failed poll.
async fn send_waiting(
    eventloop: &mut EventLoop,
    tracker: &Tracker,
    batch: &mut Vec<rumqttc::Publish>,
) -> Result<(), String> {
    if eventloop.state.collision.is_some() {
        return Ok(());
    }
    let Some(network) = eventloop.network.as_mut() else {
        return Ok(());
    };
    let mut room = eventloop
        .mqtt_options
        .inflight()
        .saturating_sub(eventloop.state.inflight());
    {
        let mut state = tracker.lock();
        while let Some(front) = state.waiting.front() {
            if front.qos != QoS::AtMostOnce {
                if room == 0 {
                    break;
                }
                room -= 1;
            }
            batch.extend(state.waiting.pop_front());
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    let mut publishes = batch.drain(..);
    while let Some(publish) = publishes.next() {
        let packet = eventloop
            .state
            .handle_outgoing_packet(Request::Publish(publish))
            .map_err(|e| e.to_string())?;
        match packet {
            Some(packet) => network.write(packet).await.map_err(|e| e.to_string())?,
            None => {
                // Its packet id collided: rumqttc holds it until that id is
                // acknowledged, and the rest wait their turn.
                let mut state = tracker.lock();
                for publish in publishes.rev() {
                    state.waiting.push_front(publish);
                }
                break;
            }
        }
    }
    let timeout = Duration::from_secs(eventloop.network_options.connection_timeout());
    match tokio::time::timeout(timeout, network.flush()).await {
        Ok(flushed) => flushed.map_err(|e| e.to_string()),
        Err(_) => Err(format!("the publishes did not go out within {timeout:?}")),
    }
}

/// The event-loop task: polls rumqttc (never waiting on anything else),
/// sends waiting publishes, reports to the tracker, reconnects with backoff.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    tracker: Arc<Tracker>,
    metrics: SinkMetrics,
    (reconnect_min, reconnect_max): (Duration, Duration),
    mut stop: oneshot::Receiver<()>,
) {
    let mut delay = reconnect_min;
    let mut failing = false;
    let mut batch = Vec::new();
    loop {
        let sent = if tracker.connected.load(Ordering::Acquire) {
            send_waiting(&mut eventloop, &tracker, &mut batch).await
        } else {
            Ok(())
        };
        let event = match sent {
            // Events rumqttc already queued (packets its last read took in,
            // the publishes just written) need no poll, which would hand
            // them out one per turn of this loop.
            Ok(()) if eventloop.network.is_some() && !eventloop.state.events.is_empty() => {
                let mut state = tracker.lock();
                for event in eventloop.state.events.drain(..) {
                    state.on_event(&event);
                }
                continue;
            }
            Ok(()) => tokio::select! {
                event = eventloop.poll() => event.map_err(|e| e.to_string()),
                _ = tracker.wake.notified() => continue,
                _ = &mut stop => break,
            },
            Err(error) => {
                // What rumqttc does when its own write fails.
                eventloop.clean();
                Err(error)
            }
        };
        match event {
            Ok(event) => {
                if let Event::Incoming(Packet::ConnAck(_)) = event {
                    tracker.connected.store(true, Ordering::Release);
                    delay = reconnect_min;
                    failing = false;
                    metrics.connected();
                }
                tracker.lock().on_event(&event);
            }
            Err(reason) => {
                tracker.connected.store(false, Ordering::Release);
                {
                    let mut state = tracker.lock();
                    // Events rumqttc queued before failing still tell what
                    // went out and what was acknowledged.
                    for event in eventloop.state.events.drain(..) {
                        state.on_event(&event);
                    }
                    // On a failure rumqttc moves unacknowledged publishes
                    // into `pending`, to send again on a resumed session;
                    // they fail here instead, and the driver retries them.
                    eventloop.pending.clear();
                    // rumqttc keeps a collided publish across reconnects and
                    // would stop sending; it was failed with the rest.
                    eventloop.state.collision = None;
                    state.on_connection_lost(&reason);
                }
                metrics.connection_failed(&reason, !failing);
                failing = true;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut stop => break,
                }
                delay = (delay * 2).min(reconnect_max);
            }
        }
    }
    // Say goodbye if connected; never wait long for a broker that is gone.
    if tracker.connected.swap(false, Ordering::AcqRel) {
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Outgoing(Outgoing::Disconnect) = event {
                    break;
                }
            }
        })
        .await;
    }
    tracker.lock().on_connection_lost("the sink is closing");
}

#[cfg(test)]
mod tests {
    use rumqttc::PubAck;

    use super::*;

    #[test]
    fn every_mqtt_error_is_retryable() {
        let table = [
            (MqttError::NotConnected, ErrorClass::Retryable),
            (
                MqttError::NotAcknowledged("connection lost".into()),
                ErrorClass::Retryable,
            ),
        ];
        for (error, class) in table {
            assert_eq!(classify(&error), class, "{error}");
        }
    }

    fn queue(state: &mut TrackState, n: usize) -> Vec<oneshot::Receiver<Result<(), String>>> {
        (0..n)
            .map(|_| {
                let (done, wait) = oneshot::channel();
                state.queued.push_back(done);
                wait
            })
            .collect()
    }

    fn outcome(wait: &mut oneshot::Receiver<Result<(), String>>) -> Option<Result<(), String>> {
        wait.try_recv().ok()
    }

    fn out(pkid: u16) -> Event {
        Event::Outgoing(Outgoing::Publish(pkid))
    }

    fn puback(pkid: u16) -> Event {
        Event::Incoming(Packet::PubAck(PubAck::new(pkid)))
    }

    #[test]
    fn a_qos1_publish_is_done_on_its_puback_not_when_it_goes_out() {
        let mut state = TrackState::default();
        let mut waits = queue(&mut state, 2);
        state.on_event(&out(1));
        state.on_event(&out(2));
        assert_eq!(outcome(&mut waits[0]), None);
        state.on_event(&puback(2));
        assert_eq!(outcome(&mut waits[1]), Some(Ok(())));
        assert_eq!(outcome(&mut waits[0]), None);
        state.on_event(&puback(1));
        assert_eq!(outcome(&mut waits[0]), Some(Ok(())));
    }

    #[test]
    fn a_qos0_publish_is_done_once_it_went_out() {
        let mut state = TrackState::default();
        let mut waits = queue(&mut state, 1);
        state.on_event(&out(0));
        assert_eq!(outcome(&mut waits[0]), Some(Ok(())));
    }

    #[test]
    fn a_collided_publish_waits_for_its_own_puback_after_the_earlier_one() {
        let mut state = TrackState::default();
        let mut waits = queue(&mut state, 2);
        state.on_event(&out(1));
        state.on_event(&Event::Outgoing(Outgoing::AwaitAck(1)));
        state.on_event(&puback(1));
        assert_eq!(outcome(&mut waits[0]), Some(Ok(())));
        // rumqttc sends the held publish with the freed id.
        state.on_event(&out(1));
        assert_eq!(outcome(&mut waits[1]), None);
        state.on_event(&puback(1));
        assert_eq!(outcome(&mut waits[1]), Some(Ok(())));
    }

    #[test]
    fn a_lost_connection_fails_every_publish_not_acknowledged_sent_or_not() {
        let mut state = TrackState::default();
        let mut waits = queue(&mut state, 4);
        state
            .waiting
            .push_back(rumqttc::Publish::new("t", QoS::AtLeastOnce, "4"));
        state.on_event(&out(1));
        state.on_event(&puback(1)); // done before the loss
        state.on_event(&out(2)); // on the wire, unacknowledged
        state.on_event(&out(3)); // likewise
        // Publish 4 never went out.
        state.on_connection_lost("reset");
        assert_eq!(outcome(&mut waits[0]), Some(Ok(())));
        for w in &mut waits[1..] {
            assert!(matches!(outcome(w), Some(Err(r)) if r.contains("reset")));
        }
        assert!(state.waiting.is_empty(), "nothing is sent after the loss");
        // What is queued after the loss goes out on the next connection.
        let mut next = queue(&mut state, 1);
        state.on_event(&out(1));
        state.on_event(&puback(1));
        assert_eq!(outcome(&mut next[0]), Some(Ok(())));
    }

    #[test]
    fn a_stale_puback_after_a_reconnect_completes_nothing() {
        let mut state = TrackState::default();
        let mut waits = queue(&mut state, 1);
        state.on_event(&out(3));
        state.on_connection_lost("reset");
        assert!(matches!(outcome(&mut waits[0]), Some(Err(_))));
        state.on_event(&puback(3));
        assert!(state.unacked.is_empty());
    }
}
