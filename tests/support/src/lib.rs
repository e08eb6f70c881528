//! Test helpers shared by weir's tests: a real Mosquitto broker per test, and
//! small MQTT clients to feed it and to watch what comes out of it.
//!
//! # Layout
//!
//! - [`mosquitto`]: [`Mosquitto`], Debian's `mosquitto` started on a free
//!   loopback port with persistence in its own temporary directory, so a test
//!   can stop and restart it and keep persistent sessions.
//!   With [`MosquittoOptions::tls`] it also listens for MQTT over TLS,
//!   with certificates from a fresh test CA ([`pki`]).
//! - [`mqtt`]: [`Subscriber`] (collects what arrives on some filters) and
//!   [`publish_many`] (publishes and waits for every acknowledgement).
//! - [`weir`]: [`WeirProcess`], the `weir` binary under test: its log, its
//!   HTTP endpoint, a SIGTERM stop, and a kill when the test ends.
//! - [`thread_cpu`], for benchmarks on a shared machine.
//!
//! Helpers panic with a message that says what failed instead of returning
//! errors: a test has nothing better to do with them. Every wait is bounded.
//!
//! The MQTT clients run their event loops on threads of their own, with their
//! own Tokio runtimes, and the async methods wait through
//! [`tokio::task::spawn_blocking`]. So they work the same from a
//! current-thread or a multi-thread test, do not stall the code under test
//! while they wait, and a test with a paused clock
//! (`#[tokio::test(start_paused = true)]`) does not see its clock jump while
//! a helper waits for the network (Tokio does not auto-advance while a
//! blocking task runs).

pub mod mosquitto;
pub mod mqtt;
pub mod pki;
pub mod weir;

pub use mosquitto::{Mosquitto, MosquittoOptions};
pub use mqtt::{Received, Subscriber, SubscriberOptions, publish_many};
pub use pki::Pki;
pub use weir::WeirProcess;

/// CPU time the calling thread has used: what a benchmark's work costs even
/// when other work shares the cores (print wall time beside it).
pub fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_subscriber_receives_what_publish_many_sent_in_order() {
        let broker = Mosquitto::start();
        let subscriber = Subscriber::connect(&broker.url(), &["t/#"], 1).await;

        publish_many(
            &broker.url(),
            |i| format!("t/{}", i % 3),
            |i| format!("m{i}").into_bytes(),
            50,
            1,
        )
        .await;

        let received = subscriber.collect(50, WAIT).await;
        let payloads: Vec<String> = received.iter().map(Received::payload_str).collect();
        let expected: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
        assert_eq!(payloads, expected);
        assert_eq!(received[4].topic, "t/1");
        assert_eq!(received[4].qos, 1);
        assert_eq!(
            subscriber.recv_timeout(Duration::from_millis(100)).await,
            None
        );
    }

    #[tokio::test]
    async fn a_restart_keeps_a_persistent_sessions_queued_qos1_message() {
        let mut broker = Mosquitto::start();
        let port = broker.port();
        let options = SubscriberOptions {
            client_id: "weir-test-persistent".to_owned(),
            clean_session: false,
        };
        Subscriber::connect_with(&broker.url(), &["queued/#"], 1, options.clone())
            .await
            .disconnect()
            .await;
        publish_many(
            &broker.url(),
            |_| "queued/x".to_owned(),
            |_| b"kept".to_vec(),
            1,
            1,
        )
        .await;

        broker.restart();

        assert_eq!(broker.port(), port);
        let subscriber = Subscriber::connect_with(&broker.url(), &["queued/#"], 1, options).await;
        let message = subscriber
            .recv_timeout(WAIT)
            .await
            .expect("the queued message");
        assert_eq!(message.topic, "queued/x");
        assert_eq!(message.payload_str(), "kept");
    }

    #[tokio::test]
    async fn a_stopped_broker_refuses_connections_until_started_again() {
        let mut broker = Mosquitto::start();
        broker.stop();
        assert!(!broker.is_running());
        assert!(std::net::TcpStream::connect(broker.addr()).is_err());

        broker.start_again();

        assert!(std::net::TcpStream::connect(broker.addr()).is_ok());
        assert!(
            broker.log().contains("mosquitto version"),
            "{}",
            broker.log()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn helpers_wait_for_the_network_without_jumping_a_paused_clock() {
        let broker = Mosquitto::start();
        let before = tokio::time::Instant::now();
        let subscriber = Subscriber::connect(&broker.url(), &["p"], 0).await;
        publish_many(&broker.url(), |_| "p".to_owned(), |_| b"x".to_vec(), 1, 0).await;

        assert!(subscriber.recv_timeout(WAIT).await.is_some());
        assert_eq!(tokio::time::Instant::now(), before);
    }
}
