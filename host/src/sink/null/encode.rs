//! A null sink's "request": what would have been written.

use crate::message::Message;

/// Messages and payload bytes of one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// Messages in the batch.
    pub messages: usize,
    /// Their payload bytes.
    pub bytes: usize,
}

/// Counts a batch.
pub fn encode(batch: &[Message]) -> Counted {
    Counted {
        messages: batch.len(),
        bytes: batch.iter().map(|m| m.payload.len()).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_counted_by_messages_and_payload_bytes() {
        let batch = [Message::new("a", "123", 0), Message::new("bb", "", 0)];
        assert_eq!(
            encode(&batch),
            Counted {
                messages: 2,
                bytes: 3
            }
        );
    }
}
