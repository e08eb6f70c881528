//! Messages → PUBLISH packets (topic, payload).

use bytes::Bytes;
use rumqttc::QoS;

use crate::message::Message;
use crate::sink::Rejected;
use crate::template::{LazyJson, Payload, Template, plain};

/// How messages become publishes.
#[derive(Clone, Debug)]
pub struct Encoder {
    topic: Template,
    payload: Option<Template>,
    /// The publish QoS.
    pub qos: QoS,
    /// The publish retain flag.
    pub retain: bool,
    null_undefined: bool,
}

/// One publish of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// Index of its message in the encoded batch.
    pub index: usize,
    /// The rendered topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
}

impl Encoder {
    /// An encoder; `null_undefined` is `undefined_vars_as_null`.
    pub fn new(
        topic: Template,
        payload: Option<Template>,
        qos: QoS,
        retain: bool,
        null_undefined: bool,
    ) -> Self {
        Encoder {
            topic,
            payload,
            qos,
            retain,
            null_undefined,
        }
    }

    /// Renders every message; those that cannot be published are rejected.
    pub fn encode(&self, batch: &[Message], rejected: &mut Vec<Rejected>) -> Vec<Publish> {
        let mut out = Vec::with_capacity(batch.len());
        for (index, m) in batch.iter().enumerate() {
            match self.publish(m) {
                Ok((topic, payload)) => out.push(Publish {
                    index,
                    topic,
                    payload,
                }),
                Err(reason) => rejected.push(Rejected { index, reason }),
            }
        }
        out
    }

    fn publish(&self, m: &Message) -> Result<(String, Bytes), String> {
        // Decoded once for both templates, and only if one looks into it.
        let json = LazyJson::new(&m.payload);
        let topic = self.render(&self.topic, m, &json)?;
        check_topic(&topic)?;
        let payload = match &self.payload {
            Some(template) => Bytes::from(self.render(template, m, &json)?),
            None => m.payload.clone(),
        };
        Ok((topic, payload))
    }

    fn render(
        &self,
        template: &Template,
        m: &Message,
        json: &dyn Payload,
    ) -> Result<String, String> {
        let mut out = String::new();
        template
            .render_payload(m, json, &mut plain, &mut out, self.null_undefined)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// A topic name a broker accepts in a PUBLISH (MQTT 3.1.1 §4.7).
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic renders empty".into());
    }
    if topic.len() > usize::from(u16::MAX) {
        return Err(format!("the topic is {} bytes, over 65535", topic.len()));
    }
    if let Some(c) = topic.chars().find(|c| matches!(c, '+' | '#' | '\0')) {
        return Err(format!("the topic {topic:?} contains {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Fields;

    fn encoder(topic: &str, payload: Option<&str>, null_undefined: bool) -> Encoder {
        Encoder::new(
            Template::parse(topic).unwrap(),
            payload.map(|p| Template::parse(p).unwrap()),
            QoS::AtLeastOnce,
            false,
            null_undefined,
        )
    }

    fn message(payload: &str) -> Message {
        let mut m = Message::new("devices/d1/temp_hum", payload.to_owned(), 7);
        m.fields = Fields::from_pairs([("device", "d1")]);
        m
    }

    #[test]
    fn topics_and_payloads_are_rendered_per_message() {
        let e = encoder(
            "alerts/${device}/${level}",
            Some("${device}:${temp}"),
            false,
        );
        let mut rejected = Vec::new();
        let out = e.encode(&[message(r#"{"level":"high","temp":40}"#)], &mut rejected);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(
            out,
            [Publish {
                index: 0,
                topic: "alerts/d1/high".into(),
                payload: Bytes::from_static(b"d1:40"),
            }]
        );
    }

    #[test]
    fn without_a_payload_template_the_payload_is_passed_through() {
        let e = encoder("copy/${topic}", None, false);
        let out = e.encode(&[message("raw \u{1} bytes")], &mut Vec::new());
        assert_eq!(out[0].topic, "copy/devices/d1/temp_hum");
        assert_eq!(out[0].payload, Bytes::from("raw \u{1} bytes"));
    }

    #[test]
    fn messages_that_cannot_be_published_are_rejected_alone() {
        let e = encoder("${kind}", None, false);
        let batch = [
            message(r#"{"kind":"ok"}"#),
            message(r#"{"other":1}"#),
            message(r#"{"kind":"a/+/b"}"#),
            message(r#"{"kind":""}"#),
            message(r#"{"kind":"fine"}"#),
        ];
        let mut rejected = Vec::new();
        let out = e.encode(&batch, &mut rejected);
        assert_eq!(
            out.iter()
                .map(|p| (p.index, p.topic.as_str()))
                .collect::<Vec<_>>(),
            [(0, "ok"), (4, "fine")]
        );
        let indices: Vec<usize> = rejected.iter().map(|r| r.index).collect();
        assert_eq!(indices, [1, 2, 3]);
        assert_eq!(rejected[0].reason, "variable ${kind} is undefined");
    }

    #[test]
    fn undefined_variables_render_as_null_when_asked() {
        let e = encoder("t/${missing}", None, true);
        let out = e.encode(&[message("{}")], &mut Vec::new());
        assert_eq!(out[0].topic, "t/null");
    }
}
