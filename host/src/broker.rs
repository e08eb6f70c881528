//! The embedded MQTT broker: `[broker] embedded = { listen, max_connections }`
//! runs rumqttd inside weir, so that devices on a gateway publish straight
//! to it and one binary is the whole edge stack.
//!
//! This module owns the broker's threads, its limits and its lifetime. It
//! never touches messages: weir's own source connects to it over TCP like
//! any other client, so the data path is the same with or without it.
//!
//! # What rumqttd (0.20) gives and does not give
//!
//! - **MQTT 3.1.1 only** on `listen`. rumqttd serves MQTT 5 on a listener
//!   of its own (another port); weir does not open one, so weir's source must
//!   use protocol 3.1.1 against the embedded broker.
//! - **No TLS, no authentication**: the broker is meant for the gateway's
//!   local network; the default `listen` is loopback.
//! - **No publisher identity downstream.** A subscriber receives the PUBLISH
//!   packet only (topic, payload, QoS, retain; for MQTT 5 also the
//!   publisher's own properties). rumqttd's router knows which connection
//!   published, but neither its network nor its in-process links pass that
//!   on. So `${clientid}` cannot be filled from the broker: a device must put
//!   its id in the topic (a capture, `devices/{clientid}/…`) or the payload,
//!   exactly as with Mosquitto or EMQX as seen by a subscriber.
//! - **Memory is bounded by the log, not by acknowledgements.** rumqttd keeps
//!   publishes in one in-memory commit log per subscription filter, in
//!   segments (see the constants below). When a log is full its oldest
//!   segment is dropped, even if a slow QoS 1 subscriber (or an offline
//!   persistent session) has not read it yet: that subscriber skips ahead.
//!   The window is [`SEGMENT_BYTES`] × [`SEGMENT_COUNT`] per filter; weir's
//!   source never blocks on the pipeline, so it only falls that far behind
//!   when weir is down. Retained messages (one per topic) and the state of
//!   offline persistent sessions are not bounded by rumqttd.
//! - **Stopping is partial.** [`EmbeddedBroker::stop`] closes the listener
//!   and every client connection and joins the server thread. rumqttd's
//!   router thread has no shutdown (it holds a sender to its own channel),
//!   so it stays parked, idle, with its logs, until the process exits. A
//!   manifest reload that changes `[broker.embedded]` therefore costs that
//!   memory once; weir starts the embedded broker once per run.
//! - rumqttd logs through `tracing` under the `rumqttd` target, at INFO for
//!   every connection and at ERROR for routine events (every clean client
//!   DISCONNECT logs `no-connection id N is already gone`). weir's default
//!   log filter should silence it (`rumqttd=off`) unless asked for.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};

use crate::config::EmbeddedConfig;

/// Largest MQTT packet a client may send (rumqttd checks the packet's
/// remaining length: topic + packet id + payload). A rule's default
/// `max_payload_bytes` is 256 KiB; the extra 4 KiB covers the topic. It also
/// bounds a connection's read buffer, so 1000 clients hold at most ~260 MiB
/// of partial packets even in the worst case. A larger packet closes the
/// publisher's connection.
pub const MAX_PACKET_BYTES: usize = 260 * 1024;

/// Size of one segment of a filter's in-memory log. A segment is the unit
/// rumqttd drops when a log is full, and the most it reads for a subscriber
/// at once; 1 MiB is about 10 000 typical sensor readings — a few seconds of
/// a busy gateway — without making one read stall other connections.
pub const SEGMENT_BYTES: usize = 1024 * 1024;

/// Segments kept per filter (the active one included), so a filter's log
/// holds at most 4 MiB (plus one packet). Memory is this times the number of
/// filters that carry traffic.
pub const SEGMENT_COUNT: usize = 4;

/// QoS 0 publishes handed to one subscriber per router turn (QoS 1 is capped
/// by rumqttd's fixed in-flight window of 100). Equal to that window, so both
/// kinds of subscriber are served in turns of the same size.
const OUTGOING_PACKETS_PER_TURN: u64 = 100;

/// Packets read from one client's socket before they are handed to the
/// router; bounds the per-connection incoming queue.
const INCOMING_PACKETS_PER_READ: usize = 100;

/// A client must send CONNECT this soon after opening its TCP connection, so
/// idle sockets cannot hold the `max_connections` slots.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`start`] waits for the broker to answer an MQTT CONNECT.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Every publish is also appended to this filter's log, so every topic
/// matches some filter. Without it rumqttd either disconnects a client that
/// publishes on a topic nobody subscribed to (`dynamic_filters = false`) or
/// creates one log per such topic (`dynamic_filters = true`), and a thousand
/// devices publishing before weir subscribes would hold a thousand logs.
/// Payloads are reference-counted, so this log shares their memory.
const CATCH_ALL_FILTER: &str = "#";

/// The client id of the readiness probe.
const PROBE_CLIENT_ID: &str = "weir-embedded-probe";

/// A running embedded broker. Dropping it stops it (see
/// [`EmbeddedBroker::stop`]).
#[derive(Debug)]
pub struct EmbeddedBroker {
    local_addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// The address clients connect to (the configured one, with port 0
    /// resolved to the port actually used).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes the listener and every client connection, and waits for the
    /// server thread to end. rumqttd's router thread stays parked until the
    /// process exits (see the module docs).
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(addr = %self.local_addr, "Embedded broker thread panicked.");
            }
            tracing::info!(addr = %self.local_addr, "Stopped embedded broker.");
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Starts the embedded broker and returns once it answers MQTT on its
/// address.
///
/// # Errors
///
/// When the address cannot be bound (in use, not local) or the broker does
/// not answer within 5 s.
pub fn start(config: &EmbeddedConfig) -> anyhow::Result<EmbeddedBroker> {
    let listen = resolve_port(config.listen)?;
    let router = Router::new(0, router_config(config.max_connections));
    // The router runs on a thread of its own from here on.
    let router_tx = router.spawn();
    let mut server = Server::new(server_settings(listen), router_tx, V4);

    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let (failed_tx, failed_rx) = mpsc::channel::<String>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("embedded broker: build its runtime")?;
    let thread = std::thread::Builder::new()
        .name("weir-broker".to_owned())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    result = server.start(LinkType::Remote) => {
                        // `start` only returns on an error, and only binding
                        // fails: [`start`] reports it.
                        let reason = match result {
                            Ok(()) => "server stopped".to_owned(),
                            Err(e) => e.to_string(),
                        };
                        if failed_tx.send(reason.clone()).is_err() {
                            tracing::error!(addr = %listen, reason, "Embedded broker stopped.");
                        }
                    }
                    _ = shutdown_rx => {}
                }
            });
            // Dropping the runtime drops every connection task, which closes
            // the client sockets.
            drop(runtime);
        })
        .context("embedded broker: spawn its thread")?;
    let broker = EmbeddedBroker {
        local_addr: listen,
        shutdown: Some(shutdown),
        thread: Some(thread),
    };

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(reason) = failed_rx.try_recv() {
            bail!("embedded broker on {listen}: {reason}");
        }
        match probe(listen) {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => {
                bail!(
                    "embedded broker on {listen}: not answering MQTT after {STARTUP_TIMEOUT:?}: {e}"
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    tracing::info!(
        addr = %listen,
        max_connections = config.max_connections,
        "Started embedded broker."
    );
    Ok(broker)
}

fn router_config(max_connections: usize) -> RouterConfig {
    RouterConfig {
        max_connections,
        max_outgoing_packet_count: OUTGOING_PACKETS_PER_TURN,
        max_segment_size: SEGMENT_BYTES,
        max_segment_count: SEGMENT_COUNT,
        custom_segment: None,
        initialized_filters: Some(vec![CATCH_ALL_FILTER.to_owned()]),
        shared_subscriptions_strategy: Default::default(),
    }
}

fn server_settings(listen: SocketAddr) -> ServerSettings {
    ServerSettings {
        name: "weir-embedded".to_owned(),
        listen,
        tls: None,
        // rumqttd pauses this long after each accepted connection; 0 keeps a
        // reconnect storm after a gateway reboot from queueing up.
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: CONNECT_TIMEOUT.as_millis() as u16,
            max_payload_size: MAX_PACKET_BYTES,
            max_inflight_count: INCOMING_PACKETS_PER_READ,
            auth: None,
            external_auth: None,
            // Every topic matches CATCH_ALL_FILTER, so this is never
            // consulted; `false` keeps rumqttd from creating per-topic logs
            // should that ever change.
            dynamic_filters: false,
        },
    }
}

/// rumqttd binds the address itself and cannot report the port it got, so
/// port 0 is resolved here: bind `:0`, read the port, release it.
fn resolve_port(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    if listen.port() != 0 {
        return Ok(listen);
    }
    TcpListener::bind(listen)
        .and_then(|listener| listener.local_addr())
        .with_context(|| format!("embedded broker: bind {listen}"))
}

/// Connects, sends CONNECT, expects a successful CONNACK, disconnects: the
/// broker is up and its router answers.
fn probe(addr: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_nodelay(true)?;
    let mut out = BytesMut::new();
    let mut connect = rumqttc::Connect::new(PROBE_CLIENT_ID);
    // rumqttd refuses keep-alive 0.
    connect.keep_alive = 5;
    connect.write(&mut out).map_err(io::Error::other)?;
    stream.write_all(&out)?;

    let mut incoming = BytesMut::new();
    let mut chunk = [0u8; 64];
    let connack = loop {
        match rumqttc::Packet::read(&mut incoming, 1024) {
            Ok(packet) => break packet,
            Err(rumqttc::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(io::Error::other(e)),
        }
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        incoming.extend_from_slice(&chunk[..read]);
    };
    match connack {
        rumqttc::Packet::ConnAck(ack) if ack.code == rumqttc::ConnectReturnCode::Success => {}
        other => return Err(io::Error::other(format!("unexpected answer {other:?}"))),
    }
    let mut out = BytesMut::new();
    rumqttc::Disconnect
        .write(&mut out)
        .map_err(io::Error::other)?;
    stream.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(max_connections: usize) -> EmbeddedConfig {
        EmbeddedConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_connections,
        }
    }

    #[test]
    fn port_zero_resolves_to_the_port_the_broker_answers_on() {
        let broker = start(&loopback(10)).unwrap();

        assert_ne!(broker.local_addr().port(), 0);
        probe(broker.local_addr()).unwrap();
    }

    #[test]
    fn an_address_in_use_is_an_error_naming_it() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let config = EmbeddedConfig {
            listen: taken.local_addr().unwrap(),
            max_connections: 10,
        };

        let error = start(&config).unwrap_err().to_string();

        assert!(
            error.contains(&taken.local_addr().unwrap().to_string()),
            "{error}"
        );
    }

    #[test]
    fn stop_closes_the_listener() {
        let broker = start(&loopback(10)).unwrap();
        let addr = broker.local_addr();

        broker.stop();

        assert!(TcpStream::connect(addr).is_err());
    }
}
