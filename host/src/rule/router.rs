//! Routing: which rules a message from the broker goes to.
//!
//! Every rule's filters are matched against the topic with MQTT semantics
//! (the broker already did, but a connection carries the subscriptions of
//! all rules, so the router decides which of them a message belongs to).
//! The first filter of a rule that matches gives the message its captures,
//! as fields. Rules with the same filter share one subscription on the
//! broker: [`subscriptions`] merges them.
//!
//! **Overlapping filters.** When two different subscriptions of one client
//! both match a topic (`devices/+/t` and `devices/#`), MQTT 3.1.1 brokers may
//! deliver the message once per subscription (Mosquitto 2 does). The router
//! cannot tell such a copy from a new publication, so each copy goes to every
//! matching rule. To keep "exactly the rules that match", weir subscribes
//! only to the filters that no other filter of the same share group covers
//! ([`subscriptions`]), so each message is delivered once and routed to every
//! rule it matches.

use std::collections::BTreeMap;

use crate::config::RuleConfig;
use crate::rule::{Captures, TopicFilter};
use crate::source::Subscription;

/// The broker subscriptions for a set of rules: one per distinct filter and
/// share group, at the highest QoS any rule asks for, leaving out filters
/// another subscription of the same group already covers.
pub fn subscriptions(rules: &[RuleConfig]) -> Vec<Subscription> {
    // (share group, filter) → qos
    let mut wanted: BTreeMap<(Option<&str>, &str), u8> = BTreeMap::new();
    for rule in rules {
        for filter in &rule.filters {
            let qos = wanted
                .entry((rule.share_group.as_deref(), filter.mqtt()))
                .or_default();
            *qos = (*qos).max(rule.qos);
        }
    }
    let keys: Vec<(Option<&str>, &str)> = wanted.keys().copied().collect();
    let mut out = Vec::new();
    for (&(group, filter), &qos) in &wanted {
        let covered = keys
            .iter()
            .find(|&&(g, other)| g == group && other != filter && covers(other, filter));
        if let Some((_, by)) = covered {
            // The covering subscription must carry the higher QoS.
            let by_qos = wanted[&(group, *by)];
            if by_qos >= qos {
                continue;
            }
        }
        out.push(Subscription {
            filter: match group {
                Some(g) => format!("$share/{g}/{filter}"),
                None => filter.to_owned(),
            },
            qos,
        });
    }
    out
}

/// Whether every topic `inner` matches is also matched by `outer`.
fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => continue,
            (Some(a), Some(b)) if a == b => continue,
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Matches topics to rules.
pub struct Router {
    rules: Vec<(usize, Vec<TopicFilter>)>,
}

impl Router {
    /// A router over `rules`, in order.
    pub fn new(rules: &[RuleConfig]) -> Self {
        Router {
            rules: rules
                .iter()
                .enumerate()
                .map(|(i, r)| (i, r.filters.clone()))
                .collect(),
        }
    }

    /// Calls `f(rule index, captures)` for every rule the topic matches
    /// (the captures of the rule's first matching filter).
    pub fn route<'t>(&self, topic: &'t str, mut f: impl FnMut(usize, Captures<'_, 't>)) {
        for (index, filters) in &self.rules {
            if let Some(filter) = filters.iter().find(|filter| filter.matches(topic)) {
                f(*index, filter.captures(topic));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_covering_filter_covers_what_it_matches() {
        assert!(covers("devices/#", "devices/+/t"));
        assert!(covers("devices/+/t", "devices/a/t"));
        assert!(covers("#", "a/b"));
        assert!(!covers("devices/+/t", "devices/#"));
        assert!(!covers("devices/a/t", "devices/+/t"));
        assert!(!covers("a/+", "a/b/c"));
        assert!(covers("a/+/+", "a/+/c"));
    }
}
