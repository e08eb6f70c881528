//! The console sink.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use super::encode::Layout;
use crate::config::ConsoleFormat;
use crate::message::Message;
use crate::sink::{Rejected, Sink, Written};
use crate::template::Template;

/// Writes one line per message to stdout (or, in tests, any writer).
#[derive(Clone)]
pub struct ConsoleSink {
    layout: Layout,
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl ConsoleSink {
    /// A console sink on stdout.
    pub fn stdout(format: ConsoleFormat, template: Option<Template>, null_undefined: bool) -> Self {
        Self::with_writer(
            Layout::new(format, template, null_undefined),
            Box::new(io::stdout()),
        )
    }

    /// A console sink writing to `out`.
    pub fn with_writer(layout: Layout, out: Box<dyn Write + Send>) -> Self {
        ConsoleSink {
            layout,
            out: Arc::new(Mutex::new(out)),
        }
    }
}

impl Sink for ConsoleSink {
    type Request = Arc<str>;
    type Error = io::Error;

    fn encode(&self, batch: &[Message], rejected: &mut Vec<Rejected>) -> Arc<str> {
        self.layout.encode(batch, rejected).into()
    }

    async fn write(&self, request: &Arc<str>) -> Result<Written, io::Error> {
        let out = self.out.clone();
        let text = request.clone();
        // A piped stdout can block; keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut out = out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            out.write_all(text.as_bytes())?;
            out.flush()
        })
        .await
        .map_err(io::Error::other)??;
        Ok(Written::All)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DriverConfig;
    use crate::sink::{SinkInput, spawn};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn messages_are_printed_one_line_each_in_order() {
        let buffer = Shared::default();
        let sink = ConsoleSink::with_writer(Layout::Line, Box::new(buffer.clone()));
        let running = spawn("console", sink, &DriverConfig::default(), None);
        for i in 0..3 {
            let input = SinkInput {
                message: Message::new("t", format!("m{i}"), 0),
                ack: crate::ack::AckToken::untracked(),
            };
            running.handle.send(input).await.unwrap();
        }
        running.shutdown().await;
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "1970-01-01T00:00:00.000Z t m0\n1970-01-01T00:00:00.000Z t m1\n1970-01-01T00:00:00.000Z t m2\n"
        );
    }
}
