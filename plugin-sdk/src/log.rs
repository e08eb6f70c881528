//! Structured logging through the host: a record becomes a `tracing` event
//! tagged with the plugin's name.
//!
//! Natively (unit tests) nothing is sent anywhere: records are kept in a
//! per-thread capture that [`testing`](crate::testing) hands back with each
//! run, so tests can assert on them. Fields come first and the message is a
//! capitalised sentence, as in the host's own logs:
//! `log::info("Dropped duplicate.", &[("key", key)])`.

/// Severity of a log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing, normally off.
    Trace,
    /// Information useful when debugging the plugin.
    Debug,
    /// Something worth knowing in normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

/// One captured record (native builds only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Severity.
    pub level: Level,
    /// The sentence.
    pub message: String,
    /// The structured fields, in order.
    pub fields: Vec<(String, String)>,
}

/// Writes a record at `level`.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::__bindings::weir::plugin::host;
        let level = match level {
            Level::Trace => host::Level::Trace,
            Level::Debug => host::Level::Debug,
            Level::Info => host::Level::Info,
            Level::Warn => host::Level::Warn,
            Level::Error => host::Level::Error,
        };
        host::log(level, message, fields);
    }
    #[cfg(not(target_arch = "wasm32"))]
    capture::push(Record {
        level,
        message: message.to_owned(),
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    });
}

/// Writes a trace record.
pub fn trace(message: &str, fields: &[(&str, &str)]) {
    log(Level::Trace, message, fields);
}

/// Writes a debug record.
pub fn debug(message: &str, fields: &[(&str, &str)]) {
    log(Level::Debug, message, fields);
}

/// Writes an info record.
pub fn info(message: &str, fields: &[(&str, &str)]) {
    log(Level::Info, message, fields);
}

/// Writes a warning record.
pub fn warn(message: &str, fields: &[(&str, &str)]) {
    log(Level::Warn, message, fields);
}

/// Writes an error record.
pub fn error(message: &str, fields: &[(&str, &str)]) {
    log(Level::Error, message, fields);
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod capture {
    use std::cell::RefCell;

    use super::Record;

    /// Records kept per thread; beyond this the oldest are dropped so a long
    /// native run that never drains the capture stays bounded.
    const MAX_RECORDS: usize = 10_000;

    thread_local! {
        static RECORDS: RefCell<Vec<Record>> = const { RefCell::new(Vec::new()) };
    }

    pub(crate) fn push(record: Record) {
        RECORDS.with(|records| {
            let mut records = records.borrow_mut();
            if records.len() == MAX_RECORDS {
                records.remove(0);
            }
            records.push(record);
        });
    }

    pub(crate) fn take() -> Vec<Record> {
        RECORDS.with(|records| std::mem::take(&mut *records.borrow_mut()))
    }
}
