//! The MQTT source: one broker connection, its subscriptions, and the
//! acknowledgements.
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
//! window for this client is full of unacknowledged messages, so the
//! hand-off buffer is bounded by that window; it is still bounded here
//! ([`HANDOFF_CAPACITY`]) and a QoS 0 message that finds it full is dropped
//! (counted), as QoS 0 allows. QoS 1 messages are never dropped: they wait
//! in an overflow list, which the broker's window keeps finite.
//!
//! **Reconnects** back off exponentially from `reconnect_min` to
//! `reconnect_max`, and every new connection subscribes again (a broker
//! restarted without persistence forgot the subscriptions).

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};

use crate::ack::{self, AckOutcome, AckToken};
use crate::config::{BrokerConfig, MqttProtocol};
use crate::message::Message;
use crate::telemetry;

/// Messages the source hands to the router before it has to hold them.
pub const HANDOFF_CAPACITY: usize = 4096;

/// Requests the client may queue for the event loop (acks, subscribes).
/// Acks are sent with `try_ack`, so this must exceed the broker's in-flight
/// window; a full queue is retried on the next turn, never blocked on.
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
        if config.protocol != MqttProtocol::V311 {
            // rumqttc's v5 client has its own types; the pipeline speaks
            // 3.1.1 to brokers today and says so rather than pretending.
            anyhow::bail!("MQTT 5 subscriptions are not supported yet; use protocol = \"3.1.1\"");
        }
        let options = mqtt_options(config)?;
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let (phase, phase_rx) = watch::channel(Phase::Running);
        let task = tokio::spawn(run(
            client,
            eventloop,
            subscriptions,
            out,
            phase_rx,
            (config.reconnect_min, config.reconnect_max),
        ));
        Ok(Source { phase, task })
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

/// Builds rumqttc options from the resolved broker config.
pub fn mqtt_options(config: &BrokerConfig) -> anyhow::Result<MqttOptions> {
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(config.clean_session)
        .set_manual_acks(true)
        .set_max_packet_size(16 << 20, 16 << 20);
    apply_login_and_tls(&mut options, config)?;
    Ok(options)
}

/// Sets credentials and TLS on a connection's options: the parts the
/// source and the MQTT sink configure alike.
pub(crate) fn apply_login_and_tls(
    options: &mut MqttOptions,
    config: &BrokerConfig,
) -> anyhow::Result<()> {
    if let Some(user) = &config.username {
        let password = config
            .password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .unwrap_or_default();
        options.set_credentials(user.clone(), password);
    }
    if let Some(tls) = &config.tls {
        options.set_transport(crate::tls::transport(tls).context("TLS settings")?);
    }
    Ok(())
}

async fn run(
    client: AsyncClient,
    mut eventloop: EventLoop,
    subscriptions: Vec<Subscription>,
    out: mpsc::Sender<Incoming>,
    mut phase: watch::Receiver<Phase>,
    (backoff_min, backoff_max): (Duration, Duration),
) {
    let mut out = Some(out);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u64, u64, AckOutcome)>();
    let mut acks = AckQueue::default();
    let mut overflow: VecDeque<Incoming> = VecDeque::new();
    let mut backoff = backoff_min;
    let mut connection: u64 = 0;
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
            for publish in acks.ready() {
                let _ = client.try_ack(&publish);
            }
            let _ = client.try_disconnect();
            // Let the acknowledgements and the disconnect go out; bounded,
            // the broker may be gone.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while eventloop.poll().await.is_ok() {}
            })
            .await;
            return;
        }
        tokio::select! {
            biased;
            _ = phase.changed() => {}
            Some((conn, seq, outcome)) = done_rx.recv() => {
                if conn == connection {
                    acks.complete(seq, outcome);
                    for publish in acks.ready() {
                        if client.try_ack(&publish).is_err() {
                            telemetry::source_error("ack_queue_full", "Cannot queue an acknowledgement; the broker will redeliver.");
                        }
                    }
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connection += 1;
                    acks = AckQueue::default();
                    backoff = backoff_min;
                    tracing::info!(session_present = ack.session_present, "Connected to the broker.");
                    telemetry::source_connected(true);
                    for s in &subscriptions {
                        let qos = if s.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                        if let Err(e) = client.try_subscribe(s.filter.clone(), qos) {
                            tracing::error!(filter = %s.filter, error = %e, "Cannot subscribe.");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let Some(tx) = &out else {
                        // Draining: leave it unacknowledged for redelivery.
                        continue;
                    };
                    let incoming = accept(publish, connection, &mut acks, &done_tx);
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
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    tracing::info!(pkid = suback.pkid, codes = ?suback.return_codes, "Subscribed.");
                }
                Ok(_) => {}
                Err(e) => {
                    telemetry::source_connected(false);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Broker connection failed; reconnecting.");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = phase.changed() => {}
                    }
                    backoff = (backoff * 2).min(backoff_max);
                }
            }
        }
    }
}

/// Wraps a publish into a message with its ack token.
fn accept(
    publish: Publish,
    connection: u64,
    acks: &mut AckQueue,
    done: &mpsc::UnboundedSender<(u64, u64, AckOutcome)>,
) -> Incoming {
    let qos = match publish.qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    };
    let message = Message {
        topic: publish.topic.as_str().into(),
        payload: publish.payload.clone(),
        timestamp_ms: now_ms(),
        qos,
        fields: Default::default(),
    };
    telemetry::source_received(message.payload.len());
    let ack = if qos == 0 {
        ack::track(|_| {})
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
#[derive(Default)]
struct AckQueue {
    /// Sequence number of `pending[0]`.
    first: u64,
    pending: VecDeque<(Publish, Option<AckOutcome>)>,
    /// Set once a message was abandoned: nothing after it may be
    /// acknowledged on this connection (MQTT acknowledges in order).
    blocked: bool,
}

impl AckQueue {
    fn push(&mut self, publish: Publish) -> u64 {
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

    /// Acknowledgements that can be sent now, in order.
    fn ready(&mut self) -> Vec<Publish> {
        let mut out = Vec::new();
        while !self.blocked {
            match self.pending.front() {
                Some((_, Some(AckOutcome::Accepted))) => {
                    let (publish, _) = self.pending.pop_front().expect("front exists");
                    self.first += 1;
                    out.push(publish);
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
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(pkid: u16) -> Publish {
        let mut p = Publish::new("t", QoS::AtLeastOnce, vec![]);
        p.pkid = pkid;
        p
    }

    #[test]
    fn acknowledgements_go_out_in_arrival_order() {
        let mut q = AckQueue::default();
        let a = q.push(publish(1));
        let b = q.push(publish(2));
        let c = q.push(publish(3));
        q.complete(c, AckOutcome::Accepted);
        assert!(q.ready().is_empty(), "3 waits for 1 and 2");
        q.complete(a, AckOutcome::Accepted);
        assert_eq!(q.ready().iter().map(|p| p.pkid).collect::<Vec<_>>(), [1]);
        q.complete(b, AckOutcome::Accepted);
        assert_eq!(q.ready().iter().map(|p| p.pkid).collect::<Vec<_>>(), [2, 3]);
        let d = q.push(publish(4));
        q.complete(d, AckOutcome::Accepted);
        assert_eq!(q.ready().iter().map(|p| p.pkid).collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn an_abandoned_message_is_never_acknowledged_nor_anything_after_it() {
        let mut q = AckQueue::default();
        let a = q.push(publish(1));
        let b = q.push(publish(2));
        q.complete(b, AckOutcome::Accepted);
        q.complete(a, AckOutcome::Abandoned);
        assert!(q.ready().is_empty());
    }
}
