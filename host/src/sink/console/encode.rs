//! Messages → console lines.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use crate::config::ConsoleFormat;
use crate::message::Message;
use crate::sink::Rejected;
use crate::template::{LazyJson, Template, plain};

/// How each line is laid out.
#[derive(Clone, Debug)]
pub enum Layout {
    /// The human-readable line.
    Line,
    /// The file sink's JSON record.
    Json,
    /// A template; `null_undefined` renders undefined variables as `null`.
    Template {
        /// The template.
        template: Template,
        /// `undefined_vars_as_null`.
        null_undefined: bool,
    },
}

impl Layout {
    /// The layout a console sink's options ask for.
    pub fn new(format: ConsoleFormat, template: Option<Template>, null_undefined: bool) -> Self {
        match (template, format) {
            (Some(template), _) => Layout::Template {
                template,
                null_undefined,
            },
            (None, ConsoleFormat::Line) => Layout::Line,
            (None, ConsoleFormat::Json) => Layout::Json,
        }
    }

    /// Encodes a batch into lines; messages whose template cannot be
    /// rendered are rejected.
    pub fn encode(&self, batch: &[Message], rejected: &mut Vec<Rejected>) -> String {
        let mut out = String::new();
        for (index, m) in batch.iter().enumerate() {
            let start = out.len();
            match self.line(m, &mut out) {
                Ok(()) => out.push('\n'),
                Err(reason) => {
                    out.truncate(start);
                    rejected.push(Rejected { index, reason });
                }
            }
        }
        out
    }

    fn line(&self, m: &Message, out: &mut String) -> Result<(), String> {
        match self {
            Layout::Line => {
                human_line(m, out);
                Ok(())
            }
            Layout::Json => {
                let mut bytes = Vec::new();
                crate::sink::file::write_record(m, &mut bytes);
                out.push_str(&String::from_utf8(bytes).expect("serde_json writes UTF-8"));
                Ok(())
            }
            Layout::Template {
                template,
                null_undefined,
            } => {
                let json = LazyJson::new(&m.payload);
                template
                    .render_payload(m, &json, &mut plain, out, *null_undefined)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// `2026-11-21T01:02:03.456Z devices/d1/temp_hum {"temp":31} device=d1`.
fn human_line(m: &Message, out: &mut String) {
    let at = UNIX_EPOCH + Duration::from_millis(m.timestamp_ms.max(0) as u64);
    let _ = write!(out, "{} {} ", humantime::format_rfc3339_millis(at), m.topic);
    for c in String::from_utf8_lossy(&m.payload).chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    for (name, value) in m.fields.iter() {
        let needs_quotes = value.is_empty()
            || value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=');
        if needs_quotes {
            let _ = write!(out, " {name}={value:?}");
        } else {
            let _ = write!(out, " {name}={value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Fields;

    fn message() -> Message {
        // 2026-11-21T01:02:03.456Z
        let mut m = Message::new("devices/d1/temp_hum", r#"{"temp":31}"#, 1_795_222_923_456);
        m.fields = Fields::from_pairs([("device", "d1")]);
        m
    }

    #[test]
    fn the_line_layout_is_time_topic_payload_fields() {
        let out = Layout::Line.encode(&[message()], &mut Vec::new());
        assert_eq!(
            out,
            "2026-11-21T01:02:03.456Z devices/d1/temp_hum {\"temp\":31} device=d1\n"
        );
    }

    #[test]
    fn a_multi_line_payload_stays_on_one_line_and_odd_field_values_are_quoted() {
        let mut m = Message::new("t", "a\nb\r\n", 0);
        m.fields = Fields::from_pairs([("site", "north gate"), ("empty", "")]);
        let out = Layout::Line.encode(&[m], &mut Vec::new());
        assert_eq!(
            out,
            "1970-01-01T00:00:00.000Z t a\\nb\\r\\n site=\"north gate\" empty=\"\"\n"
        );
    }

    #[test]
    fn the_json_layout_is_the_file_record() {
        let out = Layout::Json.encode(&[message()], &mut Vec::new());
        assert_eq!(
            out,
            "{\"topic\":\"devices/d1/temp_hum\",\"payload\":{\"temp\":31},\"ts\":1795222923456,\"fields\":{\"device\":\"d1\"}}\n"
        );
    }

    #[test]
    fn a_template_renders_each_message_and_undefined_variables_reject_it() {
        let layout = Layout::new(
            ConsoleFormat::Line,
            Some(Template::parse("${device}: ${temp}°C").unwrap()),
            false,
        );
        let mut other = message();
        other.payload = r#"{"hum":1}"#.into();
        let mut rejected = Vec::new();
        let out = layout.encode(&[message(), other, message()], &mut rejected);
        assert_eq!(out, "d1: 31°C\nd1: 31°C\n");
        assert_eq!(
            rejected,
            [Rejected {
                index: 1,
                reason: "variable ${temp} is undefined".into()
            }]
        );
    }

    #[test]
    fn undefined_variables_render_as_null_when_asked() {
        let layout = Layout::new(
            ConsoleFormat::Json,
            Some(Template::parse("${missing}").unwrap()),
            true,
        );
        let mut rejected = Vec::new();
        assert_eq!(layout.encode(&[message()], &mut rejected), "null\n");
        assert!(rejected.is_empty());
    }
}
