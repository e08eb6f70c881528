//! Small MQTT 3.1.1 clients for tests, built on `rumqttc`.
//!
//! Owns nothing but its own connections; each client runs its event loop on
//! a thread of its own (see the crate docs for why). Every wait is bounded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode,
};

/// How long connecting and subscribing may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a clean disconnect may take.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between reconnection attempts while the broker is down (rumqttc
/// retries on the next poll, which would otherwise spin).
const RECONNECT_DELAY: Duration = Duration::from_millis(50);

/// One message a [`Subscriber`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The topic it was published on.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// The QoS it was delivered with (the lower of the publish's and the
    /// subscription's).
    pub qos: u8,
    /// The retain flag as delivered.
    pub retain: bool,
}

impl Received {
    /// The payload as UTF-8 (lossy).
    pub fn payload_str(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// How a [`Subscriber`] connects.
#[derive(Debug, Clone)]
pub struct SubscriberOptions {
    /// The client id; a unique one by default.
    pub client_id: String,
    /// `false` keeps a persistent session: the broker queues QoS 1 messages
    /// while the subscriber is away and delivers them when one with the same
    /// client id connects again.
    pub clean_session: bool,
}

impl Default for SubscriberOptions {
    fn default() -> Self {
        SubscriberOptions {
            client_id: unique_client_id("weir-test-sub"),
            clean_session: true,
        }
    }
}

/// A client subscribed to some filters that collects every publish it
/// receives. It reconnects (and resubscribes if the broker forgot its
/// session) when the broker restarts.
///
/// Dropping it disconnects without waiting; [`disconnect`](Self::disconnect)
/// waits until the broker has seen the DISCONNECT.
pub struct Subscriber {
    received: Arc<Mutex<mpsc::Receiver<Received>>>,
    client: AsyncClient,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Connects to `url` (`mqtt://host:port`) with a fresh clean session and
    /// subscribes to `filters` at `qos`; returns once the broker granted them.
    ///
    /// # Panics
    ///
    /// When the connection or the subscription fails or takes over 10 s.
    pub async fn connect(url: &str, filters: &[&str], qos: u8) -> Subscriber {
        Self::connect_with(url, filters, qos, SubscriberOptions::default()).await
    }

    /// [`connect`](Self::connect) with explicit options (a fixed client id,
    /// a persistent session).
    pub async fn connect_with(
        url: &str,
        filters: &[&str],
        qos: u8,
        options: SubscriberOptions,
    ) -> Subscriber {
        let url = url.to_owned();
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        blocking(move || Self::connect_blocking(&url, &filters, qos, options)).await
    }

    /// [`connect_with`](Self::connect_with) for tests without a runtime.
    pub fn connect_blocking(
        url: &str,
        filters: &[impl AsRef<str>],
        qos: u8,
        options: SubscriberOptions,
    ) -> Subscriber {
        assert!(
            !filters.is_empty(),
            "a subscriber needs at least one filter"
        );
        let mut mqtt = mqtt_options(url, &options.client_id);
        mqtt.set_clean_session(options.clean_session);
        let (client, eventloop) = AsyncClient::new(mqtt, 64);
        let filters: Vec<SubscribeFilter> = filters
            .iter()
            .map(|f| SubscribeFilter::new(f.as_ref().to_owned(), to_qos(qos)))
            .collect();
        let (publishes, received) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let client = client.clone();
            let stopping = stopping.clone();
            let url = url.to_owned();
            std::thread::Builder::new()
                .name(format!("subscriber {}", options.client_id))
                .spawn(move || {
                    runtime().block_on(subscriber_loop(
                        eventloop, client, filters, publishes, ready_tx, stopping, url,
                    ))
                })
                .expect("spawn the subscriber thread")
        };
        match ready_rx.recv_timeout(CONNECT_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => panic!("subscriber {url}: {reason}"),
            Err(_) => panic!("subscriber {url}: not subscribed within {CONNECT_TIMEOUT:?}"),
        }
        Subscriber {
            received: Arc::new(Mutex::new(received)),
            client,
            stopping,
            thread: Some(thread),
        }
    }

    /// The next message, or `None` if none arrives within `timeout`.
    pub async fn recv_timeout(&self, timeout: Duration) -> Option<Received> {
        let received = self.received.clone();
        blocking(move || recv(&received, timeout)).await
    }

    /// Up to `n` messages, waiting at most `timeout` in total. Returns what
    /// arrived, so the caller's assertion can show it.
    pub async fn collect(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let received = self.received.clone();
        blocking(move || collect(&received, n, timeout)).await
    }

    /// [`recv_timeout`](Self::recv_timeout) for tests without a runtime.
    pub fn recv_timeout_blocking(&self, timeout: Duration) -> Option<Received> {
        recv(&self.received, timeout)
    }

    /// [`collect`](Self::collect) for tests without a runtime.
    pub fn collect_blocking(&self, n: usize, timeout: Duration) -> Vec<Received> {
        collect(&self.received, n, timeout)
    }

    /// Disconnects cleanly and waits until the broker closed the connection,
    /// so that what is published next is queued for a persistent session
    /// rather than delivered to this one.
    pub async fn disconnect(self) {
        blocking(move || self.disconnect_blocking()).await
    }

    /// [`disconnect`](Self::disconnect) for tests without a runtime.
    pub fn disconnect_blocking(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the subscriber thread panicked");
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
    }
}

async fn subscriber_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<SubscribeFilter>,
    publishes: mpsc::Sender<Received>,
    ready: mpsc::Sender<Result<(), String>>,
    stopping: Arc<AtomicBool>,
    url: String,
) {
    let mut subscribed = false;
    let mut disconnect_deadline = None;
    loop {
        let event = match disconnect_deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(event) => event,
                Err(_) => return,
            },
            None => eventloop.poll().await,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                // A fresh session (first connection, or the broker lost a
                // clean one across a restart) has no subscriptions.
                if !(connack.session_present && subscribed)
                    && let Err(e) = client.subscribe_many(filters.clone()).await
                {
                    let _ = ready.send(Err(format!("subscribe: {e}")));
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                let refused = suback
                    .return_codes
                    .iter()
                    .any(|code| matches!(code, SubscribeReasonCode::Failure));
                if refused {
                    let _ = ready.send(Err(format!("broker refused a filter: {suback:?}")));
                    return;
                }
                subscribed = true;
                let _ = ready.send(Ok(()));
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let _ = publishes.send(Received {
                    topic: publish.topic,
                    payload: publish.payload,
                    qos: publish.qos as u8,
                    retain: publish.retain,
                });
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Keep polling until the broker closes the connection: then
                // it has processed the DISCONNECT.
                disconnect_deadline = Some(tokio::time::Instant::now() + DISCONNECT_TIMEOUT);
            }
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                if !subscribed {
                    let _ = ready.send(Err(format!("connect to {url}: {e}")));
                    return;
                }
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

/// Publishes `n` messages to `url`, the `i`-th on `topic(i)` with
/// `payload(i)`, and returns once all of them are acknowledged (QoS 1:
/// PUBACK, QoS 2: PUBCOMP, QoS 0: written to the socket), then disconnects.
///
/// # Panics
///
/// On a connection error, or when it takes over 10 s plus 1 ms per message.
pub async fn publish_many(
    url: &str,
    topic: impl FnMut(usize) -> String + Send + 'static,
    payload: impl FnMut(usize) -> Vec<u8> + Send + 'static,
    n: usize,
    qos: u8,
) {
    let url = url.to_owned();
    blocking(move || publish_many_blocking(&url, topic, payload, n, qos)).await
}

/// [`publish_many`] for tests without a runtime.
pub fn publish_many_blocking(
    url: &str,
    mut topic: impl FnMut(usize) -> String,
    mut payload: impl FnMut(usize) -> Vec<u8>,
    n: usize,
    qos: u8,
) {
    let timeout = CONNECT_TIMEOUT + Duration::from_millis(n as u64);
    let mqtt = mqtt_options(url, &unique_client_id("weir-test-pub"));
    let (client, mut eventloop) = AsyncClient::new(mqtt, 1024);
    let qos = to_qos(qos);
    let work = async {
        let produce = async {
            for i in 0..n {
                client
                    .publish(topic(i), qos, false, payload(i))
                    .await
                    .expect("queue a publish");
            }
        };
        let drive = async {
            let mut done = 0;
            while done < n {
                let event = eventloop
                    .poll()
                    .await
                    .unwrap_or_else(|e| panic!("publish to {url}: {e} ({done}/{n} done)"));
                let counts = matches!(
                    (qos, event),
                    (QoS::AtMostOnce, Event::Outgoing(Outgoing::Publish(_)))
                        | (QoS::AtLeastOnce, Event::Incoming(Packet::PubAck(_)))
                        | (QoS::ExactlyOnce, Event::Incoming(Packet::PubComp(_)))
                );
                done += usize::from(counts);
            }
        };
        tokio::join!(produce, drive);
        client.disconnect().await.expect("queue a disconnect");
        // Drive the DISCONNECT out; the broker then closes the connection.
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    };
    runtime().block_on(async {
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| {
                panic!("publish {n} messages to {url}: not done within {timeout:?}")
            })
    });
}

fn recv(received: &Mutex<mpsc::Receiver<Received>>, timeout: Duration) -> Option<Received> {
    let received = received
        .lock()
        .expect("the receiver lock is never poisoned");
    received.recv_timeout(timeout).ok()
}

fn collect(
    received: &Mutex<mpsc::Receiver<Received>>,
    n: usize,
    timeout: Duration,
) -> Vec<Received> {
    let deadline = Instant::now() + timeout;
    let received = received
        .lock()
        .expect("the receiver lock is never poisoned");
    let mut messages = Vec::with_capacity(n);
    while messages.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(message) => messages.push(message),
            Err(_) => break,
        }
    }
    messages
}

/// Runs blocking work on the caller's runtime's blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A runtime of the helper's own, immune to the test's paused clock.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a Tokio runtime")
}

fn mqtt_options(url: &str, client_id: &str) -> MqttOptions {
    let (host, port) = parse_url(url);
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
    options
}

/// `mqtt://host:port` (or `tcp://`, or bare `host:port`).
fn parse_url(url: &str) -> (String, u16) {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("MQTT url {url:?} has no port"));
    let port = port
        .parse()
        .unwrap_or_else(|_| panic!("MQTT url {url:?} has a bad port"));
    (host.to_owned(), port)
}

fn to_qos(qos: u8) -> QoS {
    rumqttc::qos(qos).unwrap_or_else(|_| panic!("QoS {qos} is not 0, 1 or 2"))
}

fn unique_client_id(prefix: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
