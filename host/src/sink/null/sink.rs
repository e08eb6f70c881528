//! The null sink.

use super::encode::{self, Counted};
use crate::message::Message;
use crate::sink::{Rejected, Sink, Written};

/// Accepts everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullSink;

impl Sink for NullSink {
    type Request = Counted;
    type Error = std::convert::Infallible;

    fn encode(&self, batch: &[Message], _rejected: &mut Vec<Rejected>) -> Counted {
        encode::encode(batch)
    }

    async fn write(&self, _request: &Counted) -> Result<Written, Self::Error> {
        Ok(Written::All)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::ack::{AckOutcome, track};
    use crate::config::DriverConfig;
    use crate::sink::{SinkInput, spawn};

    #[tokio::test(start_paused = true)]
    async fn every_message_is_accepted() {
        let running = spawn("null", NullSink, &DriverConfig::default(), None);
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        for i in 0..10 {
            let o = outcomes.clone();
            let input = SinkInput {
                message: Message::new("t", format!("{i}"), 0),
                ack: track(move |x| o.lock().unwrap().push(x)),
            };
            running.handle.send(input).await.unwrap();
        }
        running.shutdown().await;
        assert_eq!(*outcomes.lock().unwrap(), [AckOutcome::Accepted; 10]);
    }
}
