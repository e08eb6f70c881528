//! `rise`: the largest rise of a reading within each window, and when it
//! happened — an aggregate a fixed menu of `avg`/`max` cannot express,
//! which is why aggregation runs in plugins.
//!
//! The largest rise is the greatest `v[j] - v[i]` over readings `i` before
//! `j` (by timestamp): for a window of temperatures `20, 25, 18, 24` it is
//! `6` (from 18 to 24), not `max - min = 7`. The result is `{"rise": 6.0,
//! "rise_from_ts": …, "rise_to_ts": …}`; a window with fewer than two
//! readings produces no output.
//!
//! The accumulator keeps the window's readings, because events may arrive
//! out of order and a rise depends on their order; `finish` sorts them once
//! and scans in O(n). Merging (hopping panes, sessions) concatenates.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weir_sdk::{Aggregate, Message, Result, Window};

/// The plugin's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Dotted path of the numeric field.
    field: String,
}

/// The configured plugin.
struct Rise {
    field: String,
}

/// A window's readings, `(timestamp, value)`, in arrival order.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Readings(Vec<(i64, f64)>);

impl Aggregate for Rise {
    type Config = Config;
    type Acc = Readings;
    const CONFIG_DOCS: &'static [(&'static str, &'static str)] =
        &[("field", "Dotted path of the numeric payload field.")];

    fn init(config: Config) -> Result<Self> {
        Ok(Rise {
            field: config.field,
        })
    }

    fn create(&self) -> Readings {
        Readings::default()
    }

    fn add(&self, acc: &mut Readings, msg: &Message) -> Result<()> {
        let v = msg.get_f64(&self.field)?;
        acc.0.push((msg.timestamp_ms(), v));
        Ok(())
    }

    fn merge(&self, into: &mut Readings, from: &Readings) {
        into.0.extend_from_slice(&from.0);
    }

    fn finish(&self, mut acc: Readings, _window: &Window) -> Result<Option<Value>> {
        // Stable: readings with one timestamp keep their arrival order.
        acc.0.sort_by_key(|&(ts, _)| ts);
        let mut readings = acc.0.into_iter();
        let Some(first) = readings.next() else {
            return Ok(None);
        };
        let mut lowest = first;
        let mut best: Option<(f64, i64, i64)> = None;
        for (ts, v) in readings {
            let rise = v - lowest.1;
            if best.is_none_or(|(b, _, _)| rise > b) {
                best = Some((rise, lowest.0, ts));
            }
            if v < lowest.1 {
                lowest = (ts, v);
            }
        }
        Ok(best
            .map(|(rise, from, to)| json!({"rise": rise, "rise_from_ts": from, "rise_to_ts": to})))
    }
}

weir_sdk::export_aggregate!(Rise);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_sdk::testing::{AggregateHarness, TestMessage};

    use super::*;

    fn reading(ts: i64, temp: f64) -> TestMessage {
        TestMessage::json("t", json!({ "temp": temp })).ts(ts)
    }

    #[test]
    fn the_largest_rise_is_not_max_minus_min() {
        let mut h = AggregateHarness::<Rise>::new(json!({"field": "temp"})).unwrap();
        // Arrival order differs from time order: 20@1, 25@2, 18@3, 24@4.
        h.add(
            1,
            &[
                reading(3, 18.0),
                reading(1, 20.0),
                reading(4, 24.0),
                reading(2, 25.0),
            ],
        );
        assert_eq!(
            h.finish(1).unwrap(),
            Some(json!({"rise": 6.0, "rise_from_ts": 3, "rise_to_ts": 4}))
        );
    }

    #[test]
    fn merged_panes_see_rises_across_them() {
        let mut h = AggregateHarness::<Rise>::new(json!({"field": "temp"})).unwrap();
        h.add(1, &[reading(1, 10.0), reading(2, 9.0)]);
        h.add(2, &[reading(3, 15.0)]);
        h.merge(3, 1);
        h.merge(3, 2);
        assert_eq!(h.finish(3).unwrap().unwrap()["rise"], 6.0);
        // A falling window rises by a negative amount; one reading is no window.
        h.add(4, &[reading(1, 5.0), reading(2, 3.0)]);
        assert_eq!(h.finish(4).unwrap().unwrap()["rise"], -2.0);
        h.add(5, &[reading(1, 5.0)]);
        assert_eq!(h.finish(5).unwrap(), None);
    }
}
