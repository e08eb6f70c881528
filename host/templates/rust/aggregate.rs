//! {{name}}: a weir aggregate. Counts each window's readings and keeps the
//! highest `temp`; weir owns the windows (see the manifest's window step).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weir_sdk::{Aggregate, Message, NoConfig, Result, Window};

/// The plugin.
struct Max;

/// A window's state.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Acc {
    count: u64,
    max: Option<Value>,
}

fn higher(a: Option<Value>, b: Option<Value>) -> Option<Value> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.as_f64() > a.as_f64() { b } else { a }),
        (a, b) => a.or(b),
    }
}

impl Aggregate for Max {
    type Config = NoConfig;
    type Acc = Acc;

    fn init(_config: NoConfig) -> Result<Self> {
        Ok(Max)
    }

    fn create(&self) -> Acc {
        Acc::default()
    }

    fn add(&self, acc: &mut Acc, msg: &Message) -> Result<()> {
        msg.get_f64("temp")?;
        acc.count += 1;
        acc.max = higher(acc.max.take(), msg.get("temp").cloned());
        Ok(())
    }

    fn merge(&self, into: &mut Acc, from: &Acc) {
        into.count += from.count;
        into.max = higher(into.max.take(), from.max.clone());
    }

    fn finish(&self, acc: Acc, _window: &Window) -> Result<Option<Value>> {
        Ok(Some(json!({ "count": acc.count, "max": acc.max })))
    }
}

weir_sdk::export_aggregate!(Max);
