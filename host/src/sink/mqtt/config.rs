//! From the sink's config to rumqttc options.

use std::time::Duration;

use rumqttc::{MqttOptions, QoS};

use super::encode::Encoder;
use crate::config::{BrokerConfig, DriverConfig};
use crate::template::Template;

/// The largest MQTT packet (the "remaining length" field tops out at
/// 256 MiB). rumqttc's default outgoing limit is 10 KiB, and an oversized
/// publish fails the whole connection, so the sink lifts it: the broker's
/// own limit is the one that matters.
const MAX_OUTGOING_PACKET_BYTES: usize = 268_435_455;

/// Incoming packets are only acknowledgements (the sink subscribes to
/// nothing).
const MAX_INCOMING_PACKET_BYTES: usize = 64 << 10;

/// Unacknowledged QoS 1 publishes rumqttc keeps on the wire at once
/// (its default).
const INFLIGHT: u16 = 100;

/// Everything an MQTT sink needs to start.
#[derive(Clone)]
pub struct MqttSettings {
    /// Connection options.
    pub options: MqttOptions,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// How messages become publishes.
    pub encoder: Encoder,
    /// Publishes that may wait to be sent: enough for every write the
    /// driver may have in flight.
    pub send_capacity: usize,
}

impl MqttSettings {
    /// Resolves a sink's options. `own` is the sink's own broker, if it has
    /// one; otherwise `subscription`'s settings are used with client id
    /// `<client_id>-out-<sink>`.
    #[allow(
        clippy::too_many_arguments,
        reason = "mirrors the fields of SinkKind::Mqtt"
    )]
    pub fn resolve(
        sink: &str,
        topic: &Template,
        payload: Option<&Template>,
        qos: u8,
        retain: bool,
        own: Option<&BrokerConfig>,
        subscription: &BrokerConfig,
        driver: &DriverConfig,
    ) -> anyhow::Result<MqttSettings> {
        let (broker, client_id) = match own {
            Some(own) => (own, own.client_id.clone()),
            None => (
                subscription,
                format!("{}-out-{sink}", subscription.client_id),
            ),
        };
        let qos = match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            other => anyhow::bail!("qos must be 0 or 1, not {other}"),
        };
        Ok(MqttSettings {
            options: options(broker, client_id)?,
            reconnect_min: broker.reconnect_min,
            reconnect_max: broker.reconnect_max.max(broker.reconnect_min),
            encoder: Encoder::new(
                topic.clone(),
                payload.cloned(),
                qos,
                retain,
                driver.undefined_vars_as_null,
            ),
            send_capacity: driver
                .batch_size
                .saturating_mul(driver.inflight_window)
                .clamp(16, 1 << 20),
        })
    }
}

fn options(broker: &BrokerConfig, client_id: String) -> anyhow::Result<MqttOptions> {
    let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    // rumqttc refuses keep-alives under a second (other than zero).
    let keep_alive = if broker.keep_alive.is_zero() {
        Duration::ZERO
    } else {
        broker.keep_alive.max(Duration::from_secs(1))
    };
    options
        .set_keep_alive(keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(MAX_INCOMING_PACKET_BYTES, MAX_OUTGOING_PACKET_BYTES)
        .set_inflight(INFLIGHT);
    crate::source::apply_login_and_tls(&mut options, broker)?;
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MqttProtocol;

    fn broker(client_id: &str, port: u16) -> BrokerConfig {
        BrokerConfig {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            client_id: client_id.into(),
            username: None,
            password: None,
            protocol: MqttProtocol::V5,
            keep_alive: Duration::from_millis(300),
            clean_session: false,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            embedded: None,
        }
    }

    fn resolve(own: Option<&BrokerConfig>, qos: u8) -> anyhow::Result<MqttSettings> {
        MqttSettings::resolve(
            "alerts",
            &Template::parse("out/${topic}").unwrap(),
            None,
            qos,
            false,
            own,
            &broker("weir-1", 1883),
            &DriverConfig::default(),
        )
    }

    #[test]
    fn without_its_own_broker_the_sink_uses_the_subscription_with_its_own_client_id() {
        let settings = resolve(None, 1).unwrap();
        assert_eq!(settings.options.client_id(), "weir-1-out-alerts");
        assert_eq!(
            settings.options.broker_address(),
            ("127.0.0.1".into(), 1883)
        );
        assert!(settings.options.clean_session(), "always a clean session");
        assert_eq!(settings.options.keep_alive(), Duration::from_secs(1));
    }

    #[test]
    fn its_own_broker_is_used_as_configured() {
        let mut own = broker("exporter", 2883);
        own.username = Some("u".into());
        own.password = Some(crate::config::Secret::new("p"));
        let settings = resolve(Some(&own), 0).unwrap();
        assert_eq!(settings.options.client_id(), "exporter");
        assert_eq!(settings.options.broker_address().1, 2883);
        let login = settings.options.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("u", "p")
        );
    }

    #[test]
    fn qos_2_is_refused() {
        assert!(resolve(None, 2).is_err());
    }
}
