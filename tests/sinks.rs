//! Sinks against real components: the file sink on real files, the MQTT
//! sink against a real Mosquitto (one per test, on a free loopback port).
//!
//! The driver's own behaviour (batching, backoff, bisection, acks, buffer)
//! is tested on a paused clock in `host/src/sink/driver.rs`; these tests
//! check what reaches the outside world, so they run on real time and every
//! wait is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weir::ack::{AckOutcome, AckToken, track};
use weir::config::{BrokerConfig, DriverConfig, MqttProtocol, SinkConfig, SinkKind};
use weir::sink::{RunningSink, SinkContext, SinkInput};
use weir::template::Template;
use weir::{Fields, Message};
use weir_test_support::weir::json_lines as read_lines;
use weir_test_support::{Mosquitto, Subscriber, SubscriberOptions};

/// Bound of every wait on the network.
const WAIT: Duration = Duration::from_secs(15);

fn broker(port: u16, client_id: &str) -> BrokerConfig {
    BrokerConfig {
        host: "127.0.0.1".into(),
        port,
        tls: None,
        client_id: client_id.into(),
        username: None,
        password: None,
        protocol: MqttProtocol::V311,
        keep_alive: Duration::from_secs(30),
        clean_session: true,
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        embedded: None,
    }
}

fn driver() -> DriverConfig {
    DriverConfig {
        batch_size: 10,
        batch_time: Duration::from_millis(5),
        request_ttl: None,
        ..DriverConfig::default()
    }
}

fn start(name: &str, kind: SinkKind, driver: DriverConfig) -> RunningSink {
    let config = SinkConfig {
        name: name.into(),
        driver,
        kind,
    };
    let context = SinkContext {
        broker: broker(1, "weir-test"),
    };
    weir::sink::start(&config, None, &context).expect("sink starts")
}

type Outcome = Arc<Mutex<Option<AckOutcome>>>;

fn tracked(on_done: impl FnOnce() + Send + 'static) -> (AckToken, Outcome) {
    let outcome: Outcome = Arc::default();
    let o = outcome.clone();
    let token = track(move |x| {
        on_done();
        *o.lock().unwrap() = Some(x);
    });
    (token, outcome)
}

fn message(topic: &str, payload: &str, device: &str) -> Message {
    let mut m = Message::new(topic, payload.to_owned(), 1_700_000_000_000);
    m.fields = Fields::from_pairs([("device", device)]);
    m
}

/// Waits until every outcome is known.
async fn all_done(outcomes: &[Outcome]) -> Vec<Option<AckOutcome>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now: Vec<_> = outcomes.iter().map(|o| *o.lock().unwrap()).collect();
        if now.iter().all(Option::is_some) || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

#[tokio::test]
async fn the_file_sink_writes_json_lines_and_rotates_real_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out/readings.jsonl");
    let running = start(
        "archive",
        SinkKind::File {
            path: path.clone(),
            max_file_bytes: 1000,
            max_files: 2,
        },
        driver(),
    );
    let mut outcomes = Vec::new();
    for i in 0..40 {
        let (ack, outcome) = tracked(|| {});
        let payload = format!(r#"{{"seq":{i},"temp":{}}}"#, 20 + i % 5);
        let input = SinkInput {
            message: message(&format!("devices/d{}/temp", i % 3), &payload, "dx"),
            ack,
        };
        running.handle.send(input).await.unwrap();
        outcomes.push(outcome);
    }
    running.shutdown().await;
    assert!(
        all_done(&outcomes)
            .await
            .iter()
            .all(|o| *o == Some(AckOutcome::Accepted))
    );

    // Oldest first: readings.jsonl.2, .1, then the live file.
    let files = [numbered(&path, 2), numbered(&path, 1), path.clone()];
    for f in &files {
        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0 && size <= 1000, "{}: {size} bytes", f.display());
    }
    assert!(!numbered(&path, 3).exists(), "only max_files rotated files");
    let records: Vec<serde_json::Value> = files.iter().flat_map(|f| read_lines(f)).collect();
    let seqs: Vec<i64> = records
        .iter()
        .map(|r| r["payload"]["seq"].as_i64().unwrap())
        .collect();
    // The oldest lines were rotated away; what is kept is the newest, in
    // order, without gaps.
    let first = seqs[0];
    assert_eq!(seqs, (first..40).collect::<Vec<_>>());
    assert!(first > 0, "40 lines cannot fit in three 1000-byte files");
    let last = records.last().unwrap();
    assert_eq!(last["topic"], "devices/d0/temp");
    assert_eq!(last["ts"], 1_700_000_000_000i64);
    assert_eq!(last["fields"]["device"], "dx");
}

#[tokio::test]
async fn a_file_sink_accepts_a_message_only_once_its_line_is_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acks.jsonl");
    let running = start(
        "acks",
        SinkKind::File {
            path: path.clone(),
            max_file_bytes: 1 << 20,
            max_files: 1,
        },
        driver(),
    );
    let mut outcomes = Vec::new();
    let seen_at_ack = Arc::new(Mutex::new(Vec::new()));
    for i in 0..5 {
        let (seen, p) = (seen_at_ack.clone(), path.clone());
        let marker = format!("marker-{i}");
        let (ack, outcome) = tracked(move || {
            // Runs when the token is accepted: the line must be there.
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            seen.lock().unwrap().push(text.contains(&marker));
        });
        let input = SinkInput {
            message: Message::new("t", format!("marker-{i}"), 0),
            ack,
        };
        running.handle.send(input).await.unwrap();
        outcomes.push(outcome);
    }
    all_done(&outcomes).await;
    assert_eq!(*seen_at_ack.lock().unwrap(), [true; 5]);
    running.shutdown().await;
    let texts: Vec<String> = read_lines(&path)
        .iter()
        .map(|r| r["payload_text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts,
        (0..5).map(|i| format!("marker-{i}")).collect::<Vec<_>>()
    );
}

fn mqtt_kind(port: u16, topic: &str, payload: Option<&str>, qos: u8) -> SinkKind {
    SinkKind::Mqtt {
        topic: Template::parse(topic).unwrap(),
        payload: payload.map(|p| Template::parse(p).unwrap()),
        qos,
        retain: false,
        broker: Some(broker(port, &format!("weir-sink-{port}-{qos}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_sink_publishes_on_the_rendered_topic() {
    let mosquitto = Mosquitto::start();
    let subscriber = Subscriber::connect(&mosquitto.url(), &["alerts/#"], 1).await;
    let running = start(
        "alerts",
        mqtt_kind(
            mosquitto.port(),
            "alerts/${device}/${payload.level}",
            Some(r#"{"device":"${device}","temp":${temp}}"#),
            1,
        ),
        driver(),
    );
    let mut outcomes = Vec::new();
    for (device, level, temp) in [("d1", "high", 41), ("d2", "low", -3), ("d1", "low", 5)] {
        let (ack, outcome) = tracked(|| {});
        let payload = format!(r#"{{"level":"{level}","temp":{temp}}}"#);
        let input = SinkInput {
            message: message("devices/x/temp_hum", &payload, device),
            ack,
        };
        running.handle.send(input).await.unwrap();
        outcomes.push(outcome);
    }

    let received = subscriber.collect(3, WAIT).await;
    let got: Vec<(String, String)> = received
        .iter()
        .map(|r| (r.topic.clone(), r.payload_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "alerts/d1/high".into(),
                r#"{"device":"d1","temp":41}"#.into()
            ),
            (
                "alerts/d2/low".into(),
                r#"{"device":"d2","temp":-3}"#.into()
            ),
            ("alerts/d1/low".into(), r#"{"device":"d1","temp":5}"#.into()),
        ]
    );
    assert!(received.iter().all(|r| r.qos == 1));
    assert_eq!(all_done(&outcomes).await, [Some(AckOutcome::Accepted); 3]);
    running.shutdown().await;
}

/// More publishes than the sink's in-flight window (100) at once: they go
/// out in window-sized turns as PUBACKs free room, all of them, in order.
/// One driver request at a time (two may be written in either order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_sink_sends_more_than_its_window_in_order() {
    const N: usize = 1000;
    let mosquitto = Mosquitto::start();
    let subscriber = Subscriber::connect(&mosquitto.url(), &["many/#"], 1).await;
    let driver = DriverConfig {
        batch_size: 500,
        inflight_window: 1,
        ..driver()
    };
    let running = start(
        "many",
        mqtt_kind(mosquitto.port(), "many/${device}", None, 1),
        driver,
    );
    let mut outcomes = Vec::new();
    for i in 0..N {
        let (ack, outcome) = tracked(|| {});
        let input = SinkInput {
            message: message("in", &format!("m{i}"), "d"),
            ack,
        };
        running.handle.send(input).await.unwrap();
        outcomes.push(outcome);
    }
    assert_eq!(all_done(&outcomes).await, [Some(AckOutcome::Accepted); N]);
    let payloads: Vec<String> = subscriber
        .collect(N, WAIT)
        .await
        .iter()
        .map(|r| r.payload_str())
        .collect();
    assert_eq!(
        payloads,
        (0..N).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    running.shutdown().await;
}

/// QoS 0 with `retain`: each publish is accepted once written, and the
/// broker keeps the last one per topic for subscribers that come later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_retained_publish_is_kept_by_the_broker() {
    let mosquitto = Mosquitto::start();
    let running = start(
        "state",
        SinkKind::Mqtt {
            topic: Template::parse("state/${device}").unwrap(),
            payload: None,
            qos: 0,
            retain: true,
            broker: Some(broker(mosquitto.port(), "weir-sink-retain")),
        },
        driver(),
    );
    let mut outcomes = Vec::new();
    for (device, payload) in [("d1", "old"), ("d2", "only"), ("d1", "new")] {
        let (ack, outcome) = tracked(|| {});
        let input = SinkInput {
            message: message("in", payload, device),
            ack,
        };
        running.handle.send(input).await.unwrap();
        outcomes.push(outcome);
    }
    assert_eq!(all_done(&outcomes).await, [Some(AckOutcome::Accepted); 3]);
    running.shutdown().await;

    // Subscribed after the fact: only retained messages can arrive.
    let subscriber = Subscriber::connect(&mosquitto.url(), &["state/#"], 1).await;
    let mut got: Vec<(String, String, u8, bool)> = subscriber
        .collect(2, WAIT)
        .await
        .iter()
        .map(|r| (r.topic.clone(), r.payload_str(), r.qos, r.retain))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("state/d1".into(), "new".into(), 0, true),
            ("state/d2".into(), "only".into(), 0, true),
        ]
    );
}

/// A TCP proxy that can hold back what the broker sends (PUBACKs) while
/// still passing on what the client sends.
struct HoldingProxy {
    port: u16,
    hold: watch::Sender<bool>,
}

impl HoldingProxy {
    async fn start(upstream: SocketAddr) -> HoldingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hold, held) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, None));
                tokio::spawn(pump(server_read, client_write, Some(held.clone())));
            }
        });
        HoldingProxy { port, hold }
    }

    fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }
}

async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut held: Option<watch::Receiver<bool>>,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(held) = &mut held
            && held.wait_for(|on| !*on).await.is_err()
        {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_message_is_accepted_only_after_the_brokers_puback() {
    let mosquitto = Mosquitto::start();
    let proxy = HoldingProxy::start(mosquitto.addr()).await;
    let subscriber = Subscriber::connect(&mosquitto.url(), &["held/#"], 1).await;
    let running = start(
        "held",
        mqtt_kind(proxy.port, "held/${device}", None, 1),
        driver(),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while running.handle.healthcheck().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sink never connected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    proxy.hold(true);
    let (ack, outcome) = tracked(|| {});
    let input = SinkInput {
        message: message("in", "payload-1", "d7"),
        ack,
    };
    running.handle.send(input).await.unwrap();

    // The broker has the message (it delivered it) but its PUBACK is held.
    let delivered = subscriber.recv_timeout(WAIT).await.expect("delivered");
    assert_eq!(
        (delivered.topic.as_str(), delivered.payload_str().as_str()),
        ("held/d7", "payload-1")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*outcome.lock().unwrap(), None, "accepted before the PUBACK");

    proxy.hold(false);
    assert_eq!(
        all_done(std::slice::from_ref(&outcome)).await,
        [Some(AckOutcome::Accepted)]
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_is_down_at_first_receives_every_message_once_started() {
    let mut mosquitto = Mosquitto::start();
    // A persistent session, so that the broker queues what the sink
    // publishes whether or not this subscriber has reconnected yet.
    let options = SubscriberOptions {
        clean_session: false,
        ..SubscriberOptions::default()
    };
    let subscriber = Subscriber::connect_with(&mosquitto.url(), &["late/#"], 1, options).await;
    mosquitto.stop();

    let running = start(
        "late",
        mqtt_kind(mosquitto.port(), "late/${device}", None, 1),
        driver(),
    );
    let broker_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let early_acks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut outcomes = Vec::new();
    for i in 0..25 {
        let (up, early) = (broker_up.clone(), early_acks.clone());
        let (ack, outcome) = tracked(move || {
            if !up.load(std::sync::atomic::Ordering::SeqCst) {
                early.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let input = SinkInput {
            message: message("in", &format!("m{i}"), &format!("d{}", i % 4)),
            ack,
        };
        running.handle.send(input).await.unwrap();
        outcomes.push(outcome);
    }

    // Retries against a dead broker: nothing may be accepted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(outcomes.iter().all(|o| o.lock().unwrap().is_none()));

    broker_up.store(true, std::sync::atomic::Ordering::SeqCst);
    let _mosquitto = tokio::task::spawn_blocking(move || {
        mosquitto.start_again();
        mosquitto
    })
    .await
    .unwrap();

    assert_eq!(all_done(&outcomes).await, [Some(AckOutcome::Accepted); 25]);
    assert_eq!(early_acks.load(std::sync::atomic::Ordering::SeqCst), 0);

    let mut payloads: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while payloads.len() < 25 && tokio::time::Instant::now() < deadline {
        let Some(r) = subscriber.recv_timeout(Duration::from_secs(1)).await else {
            continue;
        };
        assert_eq!(r.topic, format!("late/{}", device_of(&r.payload_str())));
        if !payloads.contains(&r.payload_str()) {
            payloads.push(r.payload_str());
        }
    }
    payloads.sort_by_key(|p| p[1..].parse::<u32>().unwrap());
    assert_eq!(
        payloads,
        (0..25).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    running.shutdown().await;
}

/// The device a payload `m<i>` was sent with.
fn device_of(payload: &str) -> String {
    let i: u32 = payload[1..].parse().unwrap();
    format!("d{}", i % 4)
}
