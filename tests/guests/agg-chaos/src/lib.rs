//! Test guest: an aggregate plugin that counts messages and sums their
//! `v`, and traps on request, for the host's failure tests.
//!
//! - a message with `"panic": true` panics in `add` (a trap mid-batch);
//! - a window whose group has `device = "boom"` panics in `finish`;
//! - a message without a numeric `v` is rejected (a plain failure).

use serde_json::{Value, json};
use weir_sdk::{Aggregate, Message, NoConfig, Result, Window};

struct Chaos;

/// `(count, sum of v)`.
type Acc = (u64, f64);

impl Aggregate for Chaos {
    type Config = NoConfig;
    type Acc = Acc;

    fn init(_: NoConfig) -> Result<Self> {
        Ok(Chaos)
    }

    fn create(&self) -> Acc {
        (0, 0.0)
    }

    fn add(&self, acc: &mut Acc, msg: &Message) -> Result<()> {
        if msg.get_bool("panic").unwrap_or(false) {
            panic!("asked to panic in add");
        }
        let v = msg.get_f64("v")?;
        acc.0 += 1;
        acc.1 += v;
        Ok(())
    }

    fn merge(&self, into: &mut Acc, from: &Acc) {
        into.0 += from.0;
        into.1 += from.1;
    }

    fn finish(&self, acc: Acc, window: &Window) -> Result<Option<Value>> {
        if window.group("device") == Some("boom") {
            panic!("asked to panic in finish");
        }
        Ok(Some(json!({"n": acc.0, "sum": acc.1})))
    }
}

weir_sdk::export_aggregate!(Chaos);
