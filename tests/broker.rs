//! The embedded broker, seen from MQTT clients: what devices publish reaches
//! subscribers, at QoS 0 and 1, and an oversized packet is refused without
//! taking the broker down.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, QoS};
use weir::broker::{self, EmbeddedBroker, MAX_PACKET_BYTES};
use weir::config::EmbeddedConfig;
use weir_test_support::{Subscriber, publish_many};

const WAIT: Duration = Duration::from_secs(10);

fn start_broker() -> (EmbeddedBroker, String) {
    let broker = broker::start(&EmbeddedConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_connections: 100,
    })
    .expect("start the embedded broker");
    let url = format!("mqtt://{}", broker.local_addr());
    (broker, url)
}

#[tokio::test]
async fn qos0_publishes_reach_a_subscriber_through_the_embedded_broker() {
    let (_broker, url) = start_broker();
    let subscriber = Subscriber::connect(&url, &["devices/+/temp_hum"], 0).await;

    publish_many(
        &url,
        |i| format!("devices/d{}/temp_hum", i % 4),
        |i| format!(r#"{{"temp":{i}}}"#).into_bytes(),
        20,
        0,
    )
    .await;

    let received = subscriber.collect(20, WAIT).await;
    assert_eq!(received.len(), 20, "{received:?}");
    assert_eq!(received[5].topic, "devices/d1/temp_hum");
    assert_eq!(received[5].payload_str(), r#"{"temp":5}"#);
    assert!(received.iter().all(|m| m.qos == 0));
}

#[tokio::test]
async fn qos1_publishes_are_acknowledged_and_delivered_in_order_at_qos1() {
    let (_broker, url) = start_broker();
    let subscriber = Subscriber::connect(&url, &["alerts/#"], 1).await;

    // More than rumqttd's in-flight window of 100, so delivery has to wait
    // for the subscriber's PUBACKs.
    publish_many(
        &url,
        |_| "alerts/high".to_owned(),
        |i| i.to_string().into_bytes(),
        250,
        1,
    )
    .await;

    let received = subscriber.collect(250, WAIT).await;
    let payloads: Vec<String> = received.iter().map(|m| m.payload_str()).collect();
    let expected: Vec<String> = (0..250).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);
    assert!(received.iter().all(|m| m.qos == 1));
}

#[tokio::test]
async fn a_packet_over_the_size_cap_closes_its_publisher_and_reaches_nobody() {
    let (_broker, url) = start_broker();
    let subscriber = Subscriber::connect(&url, &["big/#"], 1).await;

    let mut options = MqttOptions::new("oversized", "127.0.0.1", port_of(&url));
    options.set_max_packet_size(4 * MAX_PACKET_BYTES, 4 * MAX_PACKET_BYTES);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .publish(
            "big/one",
            QoS::AtLeastOnce,
            false,
            vec![b'x'; MAX_PACKET_BYTES + 1],
        )
        .await
        .unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Err(e) => return e,
                Ok(Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    panic!("the broker acknowledged an oversized publish")
                }
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the broker closes the connection");
    drop(closed);

    // The broker is still serving: a publish that fits gets through, and it
    // is the only thing the subscriber saw.
    publish_many(&url, |_| "big/fits".to_owned(), |_| vec![b'y'; 1024], 1, 1).await;
    let received = subscriber.collect(2, Duration::from_secs(1)).await;
    let topics: Vec<&str> = received.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, ["big/fits"]);
}

#[tokio::test]
async fn a_packet_at_the_size_cap_is_delivered() {
    let (_broker, url) = start_broker();
    let subscriber = Subscriber::connect(&url, &["edge"], 1).await;
    // Remaining length = 2 (topic length) + 4 (topic) + 2 (packet id) + payload.
    let payload_len = MAX_PACKET_BYTES - 2 - "edge".len() - 2;

    publish_many(
        &url,
        |_| "edge".to_owned(),
        move |_| vec![b'z'; payload_len],
        1,
        1,
    )
    .await;

    let message = subscriber.recv_timeout(WAIT).await.expect("the message");
    assert_eq!(message.payload.len(), payload_len);
}

#[tokio::test]
async fn a_stopped_broker_disconnects_its_clients() {
    let (broker, url) = start_broker();
    let mut options = MqttOptions::new("watcher", "127.0.0.1", port_of(&url));
    options.set_keep_alive(Duration::from_secs(30));
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    // The CONNACK.
    eventloop.poll().await.unwrap();

    tokio::task::spawn_blocking(move || broker.stop())
        .await
        .unwrap();

    let outcome =
        tokio::time::timeout(WAIT, async { while eventloop.poll().await.is_ok() {} }).await;
    assert!(outcome.is_ok(), "the connection outlived the broker");
}

fn port_of(url: &str) -> u16 {
    url.rsplit_once(':').unwrap().1.parse().unwrap()
}
