//! The `mqtt` sink: republishes messages to an MQTT broker.
//!
//! # Wire behaviour
//!
//! Each message becomes one PUBLISH: topic from the `topic` template,
//! payload from the `payload` template or the message's own payload bytes,
//! the sink's `qos` (0 or 1) and `retain` flag. Templates render with plain
//! escaping (strings as they are, JSON compact). A message whose topic
//! renders empty or with a wildcard (`+`, `#`) or NUL, or whose template
//! has an undefined variable (unless `undefined_vars_as_null`), fails alone
//! and permanently (dead letter or drop).
//!
//! # Connection
//!
//! The sink has its own client connection: the sink's own `url`,
//! `client_id` and credentials when it has them, else the subscription's
//! broker settings with client id `<client_id>-out-<sink>` (a broker
//! disconnects a second client with the same id). It speaks MQTT 3.1.1
//! whatever the subscription's `protocol` says (acknowledgement tracking
//! needs nothing from v5), always with a clean session: weir keeps the
//! unacknowledged messages itself and the driver retries them, so a resumed
//! broker session would only duplicate them.
//!
//! The rumqttc event loop runs in its own task, never waits on anything but
//! the network, and reconnects with exponential backoff between the
//! broker's `reconnect_min` and `reconnect_max`.
//!
//! # Acknowledgement
//!
//! rumqttc 0.25 has no per-publish completion future (it is unreleased
//! upstream, bytebeamio/rumqtt#805), so the sink follows the event loop:
//! the event-loop task hands the queued publishes to rumqttc's state
//! machine in the order they were queued, as many as the in-flight window
//! (100) has room for, and sends them with one write; the state machine
//! reports `Outgoing::Publish(pkid)` in that same order, and
//! `Incoming::PubAck(pkid)` when the broker has each.
//! A QoS 1 message is written only once its PUBACK arrived; QoS 0 once it
//! was flushed to the socket. When the connection drops, everything not yet
//! acknowledged fails as retryable, including publishes not yet sent, and
//! the driver retries them: a broker that is down means retries and a full
//! buffer, never a lost message.

mod config;
mod encode;
mod sink;

pub use config::MqttSettings;
pub use encode::{Encoder, Publish};
pub use sink::{MqttError, MqttSink};
