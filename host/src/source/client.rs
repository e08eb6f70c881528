//! The two rumqttc clients, MQTT 3.1.1 and MQTT 5, behind one small
//! interface, so that the source loop (subscriptions, hand-off,
//! acknowledgement order, reconnects) is written once.
//!
//! rumqttc has a module per protocol with its own packet types; what the
//! source needs of either is five things: poll the event loop, subscribe,
//! acknowledge publishes, disconnect, and the publish's topic, payload and
//! QoS. [`Client`] is exactly that.
//!
//! **Acknowledgements in one write.** rumqttc's client hands each request
//! to the event loop through a channel, and the event loop writes and
//! flushes each one by itself: one `writev` system call and one turn of the
//! event loop per PUBACK. The 3.1.1 event loop exposes its
//! connection state and its framed connection, and the source's task owns
//! the event loop, so [`V4`] writes the PUBACKs that are ready between two
//! polls straight into the connection's buffer, through the state machine
//! exactly as rumqttc's own request path does, and flushes them once. The
//! MQTT 5 event loop keeps its connection private; [`V5`] queues each
//! acknowledgement through the client.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use rumqttc::v5;

use crate::config::{BrokerConfig, MqttProtocol};

/// Largest packet accepted from the broker.
const MAX_PACKET_BYTES: usize = 16 << 20;

/// QoS 1 messages an MQTT 5 broker may send before weir acknowledges them
/// (the CONNECT's Receive Maximum; unset, a v5 broker assumes 65 535). It
/// bounds what waits in the source, as Mosquitto's `max_inflight_messages`
/// does for 3.1.1 clients.
pub const RECEIVE_MAXIMUM: u16 = 1024;

/// What one poll of the event loop produced.
pub(super) enum Polled<A> {
    /// A CONNACK: the connection is up.
    Connected {
        /// The broker resumed a session.
        session_present: bool,
    },
    /// An incoming PUBLISH.
    Publish {
        /// Topic name (checked UTF-8).
        topic: Arc<str>,
        /// The payload.
        payload: Bytes,
        /// 0, 1 or 2.
        qos: u8,
        /// What acknowledges it.
        ack: A,
    },
    /// A PUBLISH whose topic is not UTF-8 (MQTT forbids it); QoS 0 or
    /// acknowledged at once.
    Malformed,
    /// A SUBACK, with a description of its return codes and whether the
    /// broker refused any filter.
    Subscribed {
        /// Packet id.
        pkid: u16,
        /// Return codes, for the log.
        codes: String,
        /// Whether any filter was refused.
        refused: bool,
    },
    /// Anything else (pings, acks of our own packets, outgoing events).
    Other,
}

/// One protocol's client and event loop.
pub(super) trait Client: Send + 'static {
    /// What acknowledges a publish (the publish itself, in rumqttc).
    type Ack: Send + 'static;

    /// Drives the connection; an error means it is down.
    fn poll(&mut self) -> impl Future<Output = Result<Polled<Self::Ack>, String>> + Send;
    /// The next event an earlier poll already read, if any, without
    /// polling. rumqttc reads every packet that has arrived in one go and
    /// hands them out one `poll` at a time; taking them here skips a turn
    /// of the source's `select!` (and the copies of its futures) for each.
    fn queued(&mut self) -> Option<Polled<Self::Ack>>;
    /// Queues a SUBSCRIBE without waiting.
    fn try_subscribe(&self, filter: &str, qos: u8) -> Result<(), String>;
    /// Queues an UNSUBSCRIBE without waiting.
    fn try_unsubscribe(&self, filter: &str) -> Result<(), String>;
    /// Sends the acknowledgements of `acks`, in order. Between connections
    /// there is nothing to acknowledge on (packet ids are per connection)
    /// and nothing is sent. An error says why some did not go out: the
    /// connection failed (the next [`poll`](Client::poll) reports it) or,
    /// over MQTT 5, the client's request queue was full.
    fn send_acks(
        &mut self,
        acks: impl Iterator<Item = Self::Ack> + Send,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Queues a DISCONNECT without waiting.
    fn try_disconnect(&self);
}

/// MQTT 3.1.1.
pub(super) struct V4 {
    client: rumqttc::AsyncClient,
    eventloop: rumqttc::EventLoop,
}

/// MQTT 5.
pub(super) struct V5 {
    client: v5::AsyncClient,
    eventloop: v5::EventLoop,
}

impl V4 {
    pub(super) fn new(config: &BrokerConfig, capacity: usize) -> anyhow::Result<V4> {
        let options = mqtt_options(config)?;
        let (client, eventloop) = rumqttc::AsyncClient::new(options, capacity);
        Ok(V4 { client, eventloop })
    }
}

impl V5 {
    pub(super) fn new(config: &BrokerConfig, capacity: usize) -> anyhow::Result<V5> {
        let mut options = v5::MqttOptions::new(&config.client_id, &config.host, config.port);
        options
            .set_keep_alive(config.keep_alive)
            .set_clean_start(config.clean_session)
            .set_manual_acks(true)
            .set_max_packet_size(Some(MAX_PACKET_BYTES as u32))
            .set_receive_maximum(Some(RECEIVE_MAXIMUM));
        if !config.clean_session {
            // In MQTT 5 a session ends with the connection unless it has an
            // expiry interval; 0xFFFFFFFF means it never expires, which is
            // what `clean_session = false` means in 3.1.1.
            options.set_session_expiry_interval(Some(u32::MAX));
        }
        if config.username.is_some() || config.password.is_some() {
            let password = config.password.as_ref().map(|p| p.expose().to_owned());
            options.set_credentials(
                config.username.clone().unwrap_or_default(),
                password.unwrap_or_default(),
            );
        }
        if let Some(tls) = &config.tls {
            options.set_transport(crate::tls::transport(tls).context("TLS settings")?);
        }
        let (client, eventloop) = v5::AsyncClient::new(options, capacity);
        Ok(V5 { client, eventloop })
    }
}

/// Builds the 3.1.1 options from the resolved broker config.
pub fn mqtt_options(config: &BrokerConfig) -> anyhow::Result<rumqttc::MqttOptions> {
    debug_assert_eq!(config.protocol, MqttProtocol::V311);
    let mut options = rumqttc::MqttOptions::new(&config.client_id, &config.host, config.port);
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(config.clean_session)
        .set_manual_acks(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    apply_login_and_tls(&mut options, config)?;
    Ok(options)
}

/// Sets credentials and TLS on 3.1.1 options: the parts the source and the
/// MQTT sink configure alike.
pub(crate) fn apply_login_and_tls(
    options: &mut rumqttc::MqttOptions,
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

fn qos_number(qos: rumqttc::QoS) -> u8 {
    match qos {
        rumqttc::QoS::AtMostOnce => 0,
        rumqttc::QoS::AtLeastOnce => 1,
        rumqttc::QoS::ExactlyOnce => 2,
    }
}

fn qos_of(qos: u8) -> rumqttc::QoS {
    if qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    }
}

impl Client for V4 {
    type Ack = rumqttc::Publish;

    async fn poll(&mut self) -> Result<Polled<Self::Ack>, String> {
        let event = self.eventloop.poll().await.map_err(|e| e.to_string())?;
        Ok(v4_polled(event))
    }

    fn queued(&mut self) -> Option<Polled<Self::Ack>> {
        // What rumqttc's own poll does first while connected.
        self.eventloop.network.as_ref()?;
        self.eventloop.state.events.pop_front().map(v4_polled)
    }

    fn try_subscribe(&self, filter: &str, qos: u8) -> Result<(), String> {
        self.client
            .try_subscribe(filter, qos_of(qos))
            .map_err(|e| e.to_string())
    }

    fn try_unsubscribe(&self, filter: &str) -> Result<(), String> {
        self.client
            .try_unsubscribe(filter)
            .map_err(|e| e.to_string())
    }

    async fn send_acks(
        &mut self,
        acks: impl Iterator<Item = Self::Ack> + Send,
    ) -> Result<(), String> {
        use rumqttc::{Event, Outgoing, PubAck, PubRec, QoS, Request};
        let eventloop = &mut self.eventloop;
        let Some(network) = eventloop.network.as_mut() else {
            return Ok(());
        };
        let mut written = false;
        for publish in acks {
            let request = match publish.qos {
                QoS::AtMostOnce => continue,
                QoS::AtLeastOnce => Request::PubAck(PubAck::new(publish.pkid)),
                QoS::ExactlyOnce => Request::PubRec(PubRec::new(publish.pkid)),
            };
            let packet = eventloop
                .state
                .handle_outgoing_packet(request)
                .map_err(|e| e.to_string())?;
            if let Some(packet) = packet {
                network.write(packet).await.map_err(|e| e.to_string())?;
                written = true;
            }
        }
        // The state machine reports each acknowledgement as an outgoing
        // event for `poll` to return; nobody reads those.
        eventloop.state.events.retain(|e| {
            !matches!(
                e,
                Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_))
            )
        });
        if written {
            let timeout = Duration::from_secs(eventloop.network_options.connection_timeout());
            match tokio::time::timeout(timeout, network.flush()).await {
                Ok(flushed) => flushed.map_err(|e| e.to_string())?,
                Err(_) => return Err(format!("no acknowledgement went out within {timeout:?}")),
            }
        }
        Ok(())
    }

    fn try_disconnect(&self) {
        let _ = self.client.try_disconnect();
    }
}

/// What one MQTT 3.1.1 event means to the source.
fn v4_polled(event: rumqttc::Event) -> Polled<rumqttc::Publish> {
    use rumqttc::{Event, Packet, SubscribeReasonCode};
    match event {
        Event::Incoming(Packet::ConnAck(ack)) => Polled::Connected {
            session_present: ack.session_present,
        },
        Event::Incoming(Packet::Publish(mut publish)) => {
            let topic: Arc<str> = Arc::from(publish.topic.as_str());
            let payload = std::mem::take(&mut publish.payload);
            Polled::Publish {
                topic,
                payload,
                qos: qos_number(publish.qos),
                ack: publish,
            }
        }
        Event::Incoming(Packet::SubAck(suback)) => Polled::Subscribed {
            pkid: suback.pkid,
            refused: suback
                .return_codes
                .iter()
                .any(|c| matches!(c, SubscribeReasonCode::Failure)),
            codes: format!("{:?}", suback.return_codes),
        },
        _ => Polled::Other,
    }
}

impl Client for V5 {
    type Ack = v5::mqttbytes::v5::Publish;

    async fn poll(&mut self) -> Result<Polled<Self::Ack>, String> {
        use v5::Event;
        use v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
        Ok(
            match self.eventloop.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::ConnAck(ack)) => Polled::Connected {
                    session_present: ack.session_present,
                },
                Event::Incoming(Packet::Publish(mut publish)) => {
                    let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                        if publish.qos != v5::mqttbytes::QoS::AtMostOnce {
                            let _ = self.client.try_ack(&publish);
                        }
                        return Ok(Polled::Malformed);
                    };
                    let topic: Arc<str> = Arc::from(topic);
                    let payload = std::mem::take(&mut publish.payload);
                    let qos = match publish.qos {
                        v5::mqttbytes::QoS::AtMostOnce => 0,
                        v5::mqttbytes::QoS::AtLeastOnce => 1,
                        v5::mqttbytes::QoS::ExactlyOnce => 2,
                    };
                    Polled::Publish {
                        topic,
                        payload,
                        qos,
                        ack: publish,
                    }
                }
                Event::Incoming(Packet::SubAck(suback)) => Polled::Subscribed {
                    pkid: suback.pkid,
                    refused: suback
                        .return_codes
                        .iter()
                        .any(|c| !matches!(c, SubscribeReasonCode::Success(_))),
                    codes: format!("{:?}", suback.return_codes),
                },
                _ => Polled::Other,
            },
        )
    }

    fn queued(&mut self) -> Option<Polled<Self::Ack>> {
        // This event loop keeps its connection private, so whether a queued
        // event belongs to the live connection is the poll's to decide.
        None
    }

    fn try_subscribe(&self, filter: &str, qos: u8) -> Result<(), String> {
        let qos = if qos == 0 {
            v5::mqttbytes::QoS::AtMostOnce
        } else {
            v5::mqttbytes::QoS::AtLeastOnce
        };
        self.client
            .try_subscribe(filter, qos)
            .map_err(|e| e.to_string())
    }

    fn try_unsubscribe(&self, filter: &str) -> Result<(), String> {
        self.client
            .try_unsubscribe(filter)
            .map_err(|e| e.to_string())
    }

    async fn send_acks(
        &mut self,
        acks: impl Iterator<Item = Self::Ack> + Send,
    ) -> Result<(), String> {
        // A full request queue refuses one acknowledgement, not the rest.
        let mut refused = None;
        for publish in acks {
            if let Err(e) = self.client.try_ack(&publish) {
                refused = Some(e.to_string());
            }
        }
        refused.map_or(Ok(()), Err)
    }

    fn try_disconnect(&self) {
        let _ = self.client.try_disconnect();
    }
}
