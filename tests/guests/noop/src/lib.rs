//! `noop`: a test guest that passes every message through unchanged and
//! does nothing else, so the boundary-cost benchmark measures the batch
//! crossing and the SDK's loop, not plugin work. It reads no part of the
//! message and takes no config.

use weir_sdk::{Message, Result};

#[weir_sdk::filter]
fn noop(_msg: &Message) -> Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_sdk::testing::{Harness, TestMessage};

    use super::*;

    #[test]
    fn every_message_passes_through_without_a_copy() {
        let mut h = Harness::<Plugin>::new(json!({})).unwrap();
        let run = h.run(&[
            TestMessage::text("a", "x"),
            TestMessage::new("b", vec![0xff, 0]),
        ]);
        assert_eq!(run.passed_inputs(), [0, 1]);
        assert!(run.outputs.iter().all(|o| o.is_passthrough()));
    }
}
