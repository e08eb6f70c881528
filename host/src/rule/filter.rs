//! Topic filters with named captures: `devices/{device}/temp_hum`.
//!
//! A filter is an MQTT topic filter in which a level may be written
//! `{name}`: it matches like `+` and hands the level's text to the message
//! as the field `name` (an MQTT subscriber cannot see the publisher's client
//! id, so the topic is where a device's identity usually comes from). The
//! broker is sent the plain MQTT form ([`TopicFilter::mqtt`]).
//!
//! Matching follows MQTT 3.1.1 §4.7 exactly: `+` matches one level (an
//! empty one too), `#` matches the parent level and everything below it
//! (`a/#` matches `a`), and topics starting with `$` (`$SYS/…`) are not
//! matched by a filter starting with a wildcard.
//!
//! Refused, with the reason: the empty filter, `#` anywhere but as the last
//! whole level, `+` or `#` inside a level, a capture that is not a whole
//! level or has a bad or repeated name, a capture named after a template
//! builtin (`topic`, `ts`, `qos`, `payload`: the builtin would hide it), and
//! `$share/…` (shared subscriptions are the rule's `share_group`).

use std::fmt;

/// A parsed topic filter.
#[derive(Clone, PartialEq, Eq)]
pub struct TopicFilter {
    written: String,
    mqtt: String,
    levels: Vec<Level>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Literal(String),
    /// `+`.
    Single,
    /// `{name}`: like `+`, and recorded.
    Capture(String),
    /// `#`, always last.
    Multi,
}

/// Why a topic filter is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// `""`.
    #[error("a topic filter cannot be empty")]
    Empty,
    /// `$share/group/...` or `$queue/...`.
    #[error("shared subscriptions are set with the rule's `share_group`, not in the filter")]
    Shared,
    /// `#` before the last level, or inside a level.
    #[error("`#` must be the last level, on its own (as in `a/#`)")]
    MultiNotLast,
    /// `a+` or `+b`.
    #[error("`+` must be a whole level (as in `a/+/c`), not part of {level:?}")]
    SingleInLevel {
        /// The level.
        level: String,
    },
    /// `a{x}` or `{x`.
    #[error("a capture must be a whole level written `{{name}}`, not {level:?}")]
    CaptureInLevel {
        /// The level.
        level: String,
    },
    /// `{}` or `{a b}`.
    #[error(
        "capture name {name:?} is not valid: use letters, digits, `_` and `-`, starting with a letter or `_`"
    )]
    BadCaptureName {
        /// The name.
        name: String,
    },
    /// `{id}/{id}`.
    #[error("capture {name:?} appears twice")]
    DuplicateCapture {
        /// The name.
        name: String,
    },
    /// `{topic}`: a template builtin would hide it.
    #[error("capture {name:?} would be hidden by the template builtin `${{{name}}}`; rename it")]
    ReservedCapture {
        /// The name.
        name: String,
    },
    /// A NUL character (MQTT forbids it in topics).
    #[error("a topic filter cannot contain the NUL character")]
    Nul,
}

/// Template builtins a capture may not be named after. `clientid` is not
/// here: a `{clientid}` capture is exactly how it gets a value.
const RESERVED: [&str; 4] = ["topic", "ts", "qos", "payload"];

impl TopicFilter {
    /// Parses a filter: `devices/{device}/temp_hum`, `a/+/#`.
    pub fn parse(text: &str) -> Result<TopicFilter, FilterError> {
        if text.is_empty() {
            return Err(FilterError::Empty);
        }
        if text.contains('\0') {
            return Err(FilterError::Nul);
        }
        if text.starts_with("$share/") || text.starts_with("$queue/") {
            return Err(FilterError::Shared);
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "#" if i + 1 == parts.len() => Level::Multi,
                "+" => Level::Single,
                p if p.contains('#') => return Err(FilterError::MultiNotLast),
                p if p.contains('+') => {
                    return Err(FilterError::SingleInLevel {
                        level: p.to_owned(),
                    });
                }
                p if p.starts_with('{') && p.ends_with('}') && p.len() >= 2 => {
                    let name = &p[1..p.len() - 1];
                    if !valid_name(name) {
                        return Err(FilterError::BadCaptureName {
                            name: name.to_owned(),
                        });
                    }
                    if RESERVED.contains(&name) {
                        return Err(FilterError::ReservedCapture {
                            name: name.to_owned(),
                        });
                    }
                    if levels
                        .iter()
                        .any(|l| matches!(l, Level::Capture(n) if n == name))
                    {
                        return Err(FilterError::DuplicateCapture {
                            name: name.to_owned(),
                        });
                    }
                    Level::Capture(name.to_owned())
                }
                p if p.contains('{') || p.contains('}') => {
                    return Err(FilterError::CaptureInLevel {
                        level: p.to_owned(),
                    });
                }
                p => Level::Literal(p.to_owned()),
            };
            levels.push(level);
        }
        let mqtt = levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Single | Level::Capture(_) => "+",
                Level::Multi => "#",
            })
            .collect::<Vec<_>>()
            .join("/");
        Ok(TopicFilter {
            written: text.to_owned(),
            mqtt,
            levels,
        })
    }

    /// The filter as written in the manifest.
    pub fn as_written(&self) -> &str {
        &self.written
    }

    /// The MQTT filter sent to the broker: captures become `+`.
    pub fn mqtt(&self) -> &str {
        &self.mqtt
    }

    /// Names of the captures, in level order.
    pub fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|l| match l {
            Level::Capture(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// MQTT matching.
    pub fn matches(&self, topic: &str) -> bool {
        // MQTT 3.1.1 §4.7.2: `$` topics are not matched by a leading wildcard.
        if topic.starts_with('$')
            && matches!(
                self.levels.first(),
                Some(Level::Single | Level::Capture(_) | Level::Multi)
            )
        {
            return false;
        }
        let mut topic_levels = Levels { rest: Some(topic) };
        for level in &self.levels {
            let Some(part) = topic_levels.next() else {
                // `a/#` matches `a`: `#` includes the parent level.
                return *level == Level::Multi;
            };
            match level {
                Level::Multi => return true,
                Level::Single | Level::Capture(_) => {}
                Level::Literal(text) => {
                    if text != part {
                        return false;
                    }
                }
            }
        }
        topic_levels.next().is_none()
    }

    /// `(name, value)` of each capture, in level order, for a topic this
    /// filter [matches](Self::matches) (for another topic, whatever its
    /// levels line up with). Computed as it is iterated: routing a message
    /// allocates nothing for its captures.
    pub fn captures<'f, 't>(&'f self, topic: &'t str) -> Captures<'f, 't> {
        Captures {
            levels: self.levels.iter(),
            topic: Levels { rest: Some(topic) },
        }
    }
}

/// The captures of a topic: see [`TopicFilter::captures`].
#[derive(Clone)]
pub struct Captures<'f, 't> {
    levels: std::slice::Iter<'f, Level>,
    topic: Levels<'t>,
}

impl<'f, 't> Iterator for Captures<'f, 't> {
    type Item = (&'f str, &'t str);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let level = self.levels.next()?;
            let part = self.topic.next()?;
            if let Level::Capture(name) = level {
                return Some((name.as_str(), part));
            }
        }
    }
}

/// A topic's levels, as `topic.split('/')` gives them, found with a plain
/// byte loop: topics are short, and `str::split`'s searcher cost ~90
/// instructions a level on the network thread (callgrind, the pipeline
/// bench's rule).
#[derive(Clone)]
struct Levels<'t> {
    rest: Option<&'t str>,
}

impl<'t> Iterator for Levels<'t> {
    type Item = &'t str;

    fn next(&mut self) -> Option<&'t str> {
        let rest = self.rest?;
        match rest.bytes().position(|b| b == b'/') {
            Some(end) => {
                self.rest = Some(&rest[end + 1..]);
                Some(&rest[..end])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicFilter({:?})", self.written)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl std::str::FromStr for TopicFilter {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopicFilter::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn matches(f: &str, topic: &str) -> bool {
        filter(f).matches(topic)
    }

    #[test]
    fn levels_are_what_split_gives() {
        for topic in [
            "",
            "/",
            "a",
            "a/",
            "/a",
            "a//b",
            "devices/d1/t",
            "é/ü/ß",
            "//",
        ] {
            let levels: Vec<&str> = Levels { rest: Some(topic) }.collect();
            assert_eq!(levels, topic.split('/').collect::<Vec<_>>(), "{topic:?}");
        }
    }

    fn captures<'t>(f: &TopicFilter, topic: &'t str) -> Option<Vec<(String, &'t str)>> {
        f.matches(topic)
            .then(|| f.captures(topic).map(|(n, v)| (n.to_owned(), v)).collect())
    }

    #[test]
    fn a_literal_filter_matches_only_the_same_topic() {
        assert!(matches("a/b/c", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("a/b/c", "a/b/c/d"));
        assert!(!matches("a/b/c", "a/b/C"));
        assert!(!matches("a/b", "a/b/"));
        assert!(matches("/a", "/a"));
        assert!(!matches("/a", "a"));
    }

    #[test]
    fn plus_matches_exactly_one_level_including_an_empty_one() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/+/c", "a//c"));
        assert!(!matches("a/+/c", "a/b/x/c"));
        assert!(!matches("a/+", "a"));
        assert!(matches("a/+", "a/"));
        assert!(matches("+", "a"));
        assert!(!matches("+", "a/b"));
        assert!(matches("+/+", "/a"));
        assert!(matches("+/b/+", "a/b/c"));
    }

    #[test]
    fn hash_matches_the_parent_level_and_everything_below() {
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/"));
        assert!(matches("a/#", "a/b"));
        assert!(matches("a/#", "a/b/c/d"));
        assert!(!matches("a/#", "ab"));
        assert!(!matches("a/#", "b/a"));
        assert!(matches("#", "a"));
        assert!(matches("#", "a/b/c"));
        assert!(matches("#", "/"));
        assert!(matches("a/+/#", "a/b"));
        assert!(matches("a/+/#", "a/b/c/d"));
        assert!(!matches("a/+/#", "a"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_a_leading_wildcard() {
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(!matches("{x}/broker/uptime", "$SYS/broker/uptime"));
        assert!(!matches("+", "$SYS"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(matches("$SYS/+/uptime", "$SYS/broker/uptime"));
        // Only the first level counts: a `$` further down is ordinary.
        assert!(matches("a/+", "a/$x"));
        assert!(matches("a/#", "a/$x/y"));
    }

    #[test]
    fn captures_are_extracted_in_level_order() {
        let f = filter("devices/{site}/{device}/temp_hum");
        assert_eq!(
            captures(&f, "devices/north/d-7/temp_hum"),
            Some(vec![("site".into(), "north"), ("device".into(), "d-7")])
        );
        assert_eq!(f.mqtt(), "devices/+/+/temp_hum");
        assert_eq!(f.as_written(), "devices/{site}/{device}/temp_hum");
        assert_eq!(f.capture_names().collect::<Vec<_>>(), ["site", "device"]);
    }

    #[test]
    fn a_capture_may_be_empty_and_may_sit_before_hash() {
        let f = filter("{tenant}/data/#");
        assert_eq!(captures(&f, "/data"), Some(vec![("tenant".into(), "")]));
        assert_eq!(
            captures(&f, "acme/data/x/y"),
            Some(vec![("tenant".into(), "acme")])
        );
        assert_eq!(f.mqtt(), "+/data/#");
    }

    #[test]
    fn captures_skip_plus_levels_and_stop_at_hash() {
        let f = filter("{site}/+/{device}/#");
        assert_eq!(
            captures(&f, "s1/x/d9/a/b"),
            Some(vec![("site".into(), "s1"), ("device".into(), "d9")])
        );
        assert_eq!(
            captures(&f, "s1/x/d9"),
            Some(vec![("site".into(), "s1"), ("device".into(), "d9")])
        );
        assert_eq!(captures(&f, "s1/x"), None);
        let last = filter("a/{x}");
        assert_eq!(captures(&last, "a/"), Some(vec![("x".into(), "")]));
        assert_eq!(captures(&last, "a/b/c"), None);
    }

    #[test]
    fn unicode_levels_match_and_capture_but_capture_names_are_ascii() {
        let f = filter("capteurs/{piece}/température");
        assert_eq!(
            captures(&f, "capteurs/salle-à-manger/température"),
            Some(vec![("piece".into(), "salle-à-manger")])
        );
        assert!(!f.matches("capteurs/x/temperature"));
        assert_eq!(
            TopicFilter::parse("capteurs/{pièce}"),
            Err(FilterError::BadCaptureName {
                name: "pièce".into()
            })
        );
    }

    #[test]
    fn invalid_filters_are_refused_with_a_reason() {
        let cases: &[(&str, FilterError)] = &[
            ("", FilterError::Empty),
            ("$share/g/a/b", FilterError::Shared),
            ("$queue/a/b", FilterError::Shared),
            ("a/#/b", FilterError::MultiNotLast),
            ("a/b#", FilterError::MultiNotLast),
            ("#/a", FilterError::MultiNotLast),
            ("a/b+", FilterError::SingleInLevel { level: "b+".into() }),
            (
                "a/x{id}",
                FilterError::CaptureInLevel {
                    level: "x{id}".into(),
                },
            ),
            (
                "a/{id",
                FilterError::CaptureInLevel {
                    level: "{id".into(),
                },
            ),
            ("a/{}", FilterError::BadCaptureName { name: "".into() }),
            (
                "a/{a b}",
                FilterError::BadCaptureName { name: "a b".into() },
            ),
            (
                "a/{1st}",
                FilterError::BadCaptureName { name: "1st".into() },
            ),
            (
                "{id}/x/{id}",
                FilterError::DuplicateCapture { name: "id".into() },
            ),
            (
                "a/{topic}",
                FilterError::ReservedCapture {
                    name: "topic".into(),
                },
            ),
            ("a/\0", FilterError::Nul),
        ];
        for (text, expected) in cases {
            assert_eq!(TopicFilter::parse(text).as_ref(), Err(expected), "{text:?}");
        }
        // Every reason reads as a sentence naming what to do.
        assert!(
            FilterError::Shared.to_string().contains("share_group"),
            "{}",
            FilterError::Shared
        );
    }

    #[test]
    fn clientid_is_a_legal_capture_name() {
        let f = filter("clients/{clientid}/up");
        assert_eq!(f.capture_names().collect::<Vec<_>>(), ["clientid"]);
    }
}
