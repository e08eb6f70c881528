//! `stats`: ready-made aggregates over windows, so the common cases need no
//! code.
//!
//! For each configured numeric field (a dotted path into the JSON payload)
//! it keeps count, sum, min, max, mean and variance (Welford's algorithm,
//! merged with Chan's formula), the first and last value by timestamp, and,
//! when percentiles are asked for, a DDSketch (`sketches-ddsketch`,
//! DataDog's algorithm: every percentile it reports is within
//! `relative_accuracy` (default 1 %) of the true value, in at most 2048
//! bins per field, and two sketches merge exactly).
//!
//! A result has `count` (messages in the window) and, per field `f` and
//! aggregate `a`, a key `f_a`: `temp_avg`, `temp_max`, `temp_p95`.
//! Aggregates: `count`, `sum`, `min`, `max`, `avg`, `first`, `last`,
//! `stddev` (population standard deviation, as eKuiper's `stddev`), and
//! `p<percent>` for each entry of `percentiles` (`0.5` → `p50`, `0.999` →
//! `p99_9`). A message without a field fails (counted by the host), unless
//! `skip_missing = true`, in which case that field alone skips it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};
use weir_sdk::{Aggregate, Message, Result, Window};

/// Every aggregate name `aggregates` accepts.
const AGGREGATES: [&str; 8] = [
    "count", "sum", "min", "max", "avg", "first", "last", "stddev",
];

/// The plugin's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Dotted paths of the numeric fields.
    fields: Vec<String>,
    /// Which aggregates to output (default: count, avg, min, max).
    #[serde(default = "default_aggregates")]
    aggregates: Vec<String>,
    /// Percentiles in (0, 1), e.g. `[0.5, 0.95]`.
    #[serde(default)]
    percentiles: Vec<f64>,
    /// Relative accuracy of percentiles (default 0.01).
    #[serde(default = "default_accuracy")]
    relative_accuracy: f64,
    /// Skip a field a message lacks instead of failing the message.
    #[serde(default)]
    skip_missing: bool,
}

fn default_aggregates() -> Vec<String> {
    ["count", "avg", "min", "max"].map(String::from).to_vec()
}

fn default_accuracy() -> f64 {
    0.01
}

/// The configured plugin.
struct Stats {
    fields: Vec<String>,
    aggregates: Vec<String>,
    percentiles: Vec<(f64, String)>,
    sketch: SketchConfig,
    skip_missing: bool,
}

/// One window's state.
#[derive(Serialize, Deserialize)]
struct Acc {
    /// Messages folded in.
    count: u64,
    /// One per configured field, in order.
    fields: Vec<FieldAcc>,
}

/// One field's running statistics.
#[derive(Clone, Default, Serialize, Deserialize)]
struct FieldAcc {
    n: u64,
    sum: f64,
    mean: f64,
    /// Sum of squared deviations from the mean (Welford's M2).
    m2: f64,
    min: Option<f64>,
    max: Option<f64>,
    /// `(timestamp, value)` of the earliest and latest reading.
    first: Option<(i64, f64)>,
    last: Option<(i64, f64)>,
    sketch: Option<DDSketch>,
}

impl FieldAcc {
    fn add(&mut self, ts: i64, v: f64, sketch: Option<SketchConfig>) {
        self.n += 1;
        self.sum += v;
        let delta = v - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (v - self.mean);
        self.min = Some(self.min.map_or(v, |m| m.min(v)));
        self.max = Some(self.max.map_or(v, |m| m.max(v)));
        // Ties keep the earlier arrival as first and the later as last.
        if self.first.is_none_or(|(t, _)| ts < t) {
            self.first = Some((ts, v));
        }
        if self.last.is_none_or(|(t, _)| ts >= t) {
            self.last = Some((ts, v));
        }
        if let Some(config) = sketch {
            self.sketch
                .get_or_insert_with(|| DDSketch::new(config))
                .add(v);
        }
    }

    fn merge(&mut self, o: &FieldAcc) {
        if o.n == 0 {
            return;
        }
        let n = self.n + o.n;
        let delta = o.mean - self.mean;
        self.mean += delta * o.n as f64 / n as f64;
        self.m2 += o.m2 + delta * delta * (self.n as f64) * (o.n as f64) / n as f64;
        self.n = n;
        self.sum += o.sum;
        self.min = [self.min, o.min].into_iter().flatten().reduce(f64::min);
        self.max = [self.max, o.max].into_iter().flatten().reduce(f64::max);
        if let Some((t, v)) = o.first
            && self.first.is_none_or(|(mine, _)| t < mine)
        {
            self.first = Some((t, v));
        }
        if let Some((t, v)) = o.last
            && self.last.is_none_or(|(mine, _)| t >= mine)
        {
            self.last = Some((t, v));
        }
        if let Some(theirs) = &o.sketch {
            match &mut self.sketch {
                // Same config on both sides: merging cannot fail.
                Some(mine) => {
                    let _ = mine.merge(theirs);
                }
                None => self.sketch = Some(theirs.clone()),
            }
        }
    }
}

impl Aggregate for Stats {
    type Config = Config;
    type Acc = Acc;
    const CONFIG_DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "fields",
            "Dotted paths of the numeric payload fields to aggregate.",
        ),
        (
            "aggregates",
            "count, sum, min, max, avg, first, last, stddev (default: count, avg, min, max).",
        ),
        (
            "percentiles",
            "Percentiles in (0, 1) from a DDSketch, e.g. [0.5, 0.95].",
        ),
        (
            "relative_accuracy",
            "Relative error bound of percentiles (default 0.01).",
        ),
        (
            "skip_missing",
            "Skip a field a message lacks instead of failing it (default false).",
        ),
    ];

    fn init(config: Config) -> Result<Self> {
        if config.fields.is_empty() {
            return Err("`fields` must name at least one field".into());
        }
        for a in &config.aggregates {
            if !AGGREGATES.contains(&a.as_str()) {
                return Err(format!(
                    "unknown aggregate \"{a}\"; known: {} (percentiles go in `percentiles`)",
                    AGGREGATES.join(", ")
                )
                .into());
            }
        }
        if !(config.relative_accuracy > 0.0 && config.relative_accuracy < 1.0) {
            return Err("`relative_accuracy` must be in (0, 1)".into());
        }
        let mut percentiles = Vec::new();
        for &p in &config.percentiles {
            if !(p > 0.0 && p < 1.0) {
                return Err(format!("percentile {p} is not in (0, 1); write 0.95 for p95").into());
            }
            percentiles.push((p, percentile_name(p)));
        }
        Ok(Stats {
            fields: config.fields,
            aggregates: config.aggregates,
            percentiles,
            sketch: SketchConfig::new(config.relative_accuracy, 2048, 1.0e-9),
            skip_missing: config.skip_missing,
        })
    }

    fn create(&self) -> Acc {
        Acc {
            count: 0,
            fields: vec![FieldAcc::default(); self.fields.len()],
        }
    }

    fn add(&self, acc: &mut Acc, msg: &Message) -> Result<()> {
        // Read every field before changing anything: a failure must leave
        // the accumulator as it was.
        let mut values = Vec::with_capacity(self.fields.len());
        for path in &self.fields {
            match msg.get_f64(path) {
                Ok(v) => values.push(Some(v)),
                Err(_) if self.skip_missing && msg.get(path).is_none() => values.push(None),
                Err(e) => return Err(e),
            }
        }
        let sketch = (!self.percentiles.is_empty()).then_some(self.sketch);
        let ts = msg.timestamp_ms();
        acc.count += 1;
        for (field, value) in acc.fields.iter_mut().zip(values) {
            if let Some(v) = value {
                field.add(ts, v, sketch);
            }
        }
        Ok(())
    }

    fn merge(&self, into: &mut Acc, from: &Acc) {
        into.count += from.count;
        for (mine, theirs) in into.fields.iter_mut().zip(&from.fields) {
            mine.merge(theirs);
        }
    }

    fn finish(&self, acc: Acc, _window: &Window) -> Result<Option<Value>> {
        let mut out = Map::new();
        out.insert("count".into(), json!(acc.count));
        for (name, f) in self.fields.iter().zip(&acc.fields) {
            let key = name.replace('.', "_");
            for a in &self.aggregates {
                let value = match a.as_str() {
                    "count" => json!(f.n),
                    "sum" => json!(f.sum),
                    "min" => json!(f.min),
                    "max" => json!(f.max),
                    "avg" => number(f.n, f.mean),
                    "first" => json!(f.first.map(|(_, v)| v)),
                    "last" => json!(f.last.map(|(_, v)| v)),
                    "stddev" => number(f.n, (f.m2 / f.n.max(1) as f64).sqrt()),
                    _ => unreachable!("checked in init"),
                };
                out.insert(format!("{key}_{a}"), value);
            }
            for (p, suffix) in &self.percentiles {
                let q = f
                    .sketch
                    .as_ref()
                    .and_then(|s| s.quantile(*p).ok().flatten());
                out.insert(format!("{key}_{suffix}"), json!(q));
            }
        }
        Ok(Some(Value::Object(out)))
    }
}

/// `null` for an empty field, else the number.
fn number(n: u64, v: f64) -> Value {
    if n == 0 { Value::Null } else { json!(v) }
}

/// `0.95` → `p95`, `0.999` → `p99_9`.
fn percentile_name(p: f64) -> String {
    let percent = format!("{}", (p * 1e6).round() / 1e4);
    format!("p{}", percent.replace('.', "_"))
}

weir_sdk::export_aggregate!(Stats);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_sdk::testing::{AggregateHarness, TestMessage};

    use super::*;

    fn reading(ts: i64, temp: f64) -> TestMessage {
        TestMessage::json("devices/d1/t", json!({ "temp": temp })).ts(ts)
    }

    #[test]
    fn every_aggregate_over_one_window() {
        let mut h = AggregateHarness::<Stats>::new(json!({
            "fields": ["temp"],
            "aggregates": ["count", "sum", "min", "max", "avg", "first", "last", "stddev"],
        }))
        .unwrap();
        // Out of timestamp order on purpose: first/last go by timestamp.
        let failures = h.add(1, &[reading(20, 4.0), reading(10, 2.0), reading(30, 6.0)]);
        assert!(failures.is_empty());
        let out = h.finish(1).unwrap().unwrap();
        assert_eq!(
            out,
            json!({
                "count": 3, "temp_count": 3, "temp_sum": 12.0, "temp_min": 2.0,
                "temp_max": 6.0, "temp_avg": 4.0, "temp_first": 2.0, "temp_last": 6.0,
                // Population stddev of 2, 4, 6: sqrt(8/3).
                "temp_stddev": (8.0f64 / 3.0).sqrt(),
            })
        );
    }

    #[test]
    fn merged_accumulators_equal_one_that_saw_everything() {
        let config = json!({
            "fields": ["temp"],
            "aggregates": ["count", "sum", "min", "max", "avg", "first", "last", "stddev"],
            "percentiles": [0.5],
        });
        let readings: Vec<_> = (0..40).map(|i| reading(i, ((i * 7) % 13) as f64)).collect();
        let mut whole = AggregateHarness::<Stats>::new(config.clone()).unwrap();
        whole.add(1, &readings);
        let mut parts = AggregateHarness::<Stats>::new(config).unwrap();
        parts.add(1, &readings[..15]);
        parts.add(2, &readings[15..]);
        parts.merge(3, 1);
        parts.merge(3, 2);
        let (a, b) = (
            whole.finish(1).unwrap().unwrap(),
            parts.finish(3).unwrap().unwrap(),
        );
        for key in [
            "count",
            "temp_sum",
            "temp_min",
            "temp_max",
            "temp_first",
            "temp_last",
            "temp_p50",
        ] {
            assert_eq!(a[key], b[key], "{key}");
        }
        for key in ["temp_avg", "temp_stddev"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!((x - y).abs() < 1e-9, "{key}: {x} vs {y}");
        }
    }

    #[test]
    fn percentiles_are_within_the_relative_accuracy() {
        let mut h = AggregateHarness::<Stats>::new(json!({
            "fields": ["temp"], "aggregates": [], "percentiles": [0.5, 0.95, 0.999],
        }))
        .unwrap();
        let readings: Vec<_> = (1..=1000).map(|i| reading(i, i as f64)).collect();
        h.add(1, &readings);
        let out = h.finish(1).unwrap().unwrap();
        for (key, exact) in [
            ("temp_p50", 500.0),
            ("temp_p95", 950.0),
            ("temp_p99_9", 999.0),
        ] {
            let got = out[key].as_f64().unwrap();
            assert!(
                (got - exact).abs() / exact <= 0.011,
                "{key}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn a_message_without_the_field_fails_and_changes_nothing() {
        let mut h = AggregateHarness::<Stats>::new(json!({"fields": ["temp", "hum"]})).unwrap();
        let failures = h.add(
            1,
            &[
                TestMessage::json("t", json!({"temp": 1, "hum": 2})),
                TestMessage::json("t", json!({"temp": 100})),
            ],
        );
        assert_eq!(failures, [(1, r#"field "hum" is missing"#.to_owned())]);
        let out = h.finish(1).unwrap().unwrap();
        assert_eq!(out["count"], 1);
        assert_eq!(out["temp_max"], 1.0);

        let mut h = AggregateHarness::<Stats>::new(
            json!({"fields": ["temp", "hum"], "skip_missing": true}),
        )
        .unwrap();
        h.add(1, &[TestMessage::json("t", json!({"temp": 100}))]);
        let out = h.finish(1).unwrap().unwrap();
        assert_eq!(
            (out["temp_max"].clone(), out["hum_max"].clone()),
            (json!(100.0), Value::Null)
        );
    }

    #[test]
    fn a_snapshot_restored_elsewhere_finishes_the_same() {
        let config = json!({"fields": ["temp"], "aggregates": ["avg", "stddev", "first"], "percentiles": [0.9]});
        let readings: Vec<_> = (0..20).map(|i| reading(i, (i * i) as f64)).collect();
        let mut a = AggregateHarness::<Stats>::new(config.clone()).unwrap();
        a.add(1, &readings[..10]);
        let state = a.snapshot(1).unwrap();
        let mut b = AggregateHarness::<Stats>::new(config).unwrap();
        b.restore(7, &state).unwrap();
        a.add(1, &readings[10..]);
        b.add(7, &readings[10..]);
        assert_eq!(a.finish(1).unwrap(), b.finish(7).unwrap());
    }

    #[test]
    fn config_mistakes_are_refused() {
        let err = AggregateHarness::<Stats>::new(json!({"fields": ["t"], "aggregates": ["mean"]}))
            .unwrap_err();
        assert!(err.contains("unknown aggregate \"mean\""), "{err}");
        let err = AggregateHarness::<Stats>::new(json!({"fields": ["t"], "percentiles": [95]}))
            .unwrap_err();
        assert!(err.contains("write 0.95 for p95"), "{err}");
        let err = AggregateHarness::<Stats>::new(json!({"fields": []})).unwrap_err();
        assert!(err.contains("at least one"), "{err}");
    }
}
