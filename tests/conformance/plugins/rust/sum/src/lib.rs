//! `conf-sum`, the conformance aggregate: the integer at `field` of each
//! message is counted and summed; a window's result is `{"count": n, "sum":
//! s}`. A message whose field is not an integer fails.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weir_sdk::{Aggregate, Message, Result, Window};

/// The config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Payload field to sum.
    field: String,
}

/// The configured plugin.
struct Sum {
    field: String,
}

/// Count and sum of a window.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Acc {
    count: i64,
    sum: i64,
}

impl Aggregate for Sum {
    type Config = Config;
    type Acc = Acc;
    const CONFIG_DOCS: &'static [(&'static str, &'static str)] =
        &[("field", "Payload field to sum (an integer).")];

    fn init(config: Config) -> Result<Self> {
        Ok(Sum {
            field: config.field,
        })
    }

    fn create(&self) -> Acc {
        Acc::default()
    }

    fn add(&self, acc: &mut Acc, msg: &Message) -> Result<()> {
        let v = msg.get_i64(&self.field)?;
        acc.count += 1;
        acc.sum += v;
        Ok(())
    }

    fn merge(&self, into: &mut Acc, from: &Acc) {
        into.count += from.count;
        into.sum += from.sum;
    }

    fn finish(&self, acc: Acc, _window: &Window) -> Result<Option<Value>> {
        Ok(Some(json!({"count": acc.count, "sum": acc.sum})))
    }
}

weir_sdk::export_aggregate!(Sum);
