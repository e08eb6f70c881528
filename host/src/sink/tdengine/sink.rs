//! The TDengine sink: its connection (rebuilt after transport failures),
//! timeouts around every call of the `taos` crate, and the error table.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use taos::taos_query::common::{SchemalessPrecision, SchemalessProtocol, SmlDataBuilder};
use taos::{AsyncQueryable, AsyncTBuilder, Taos, TaosBuilder};
use tokio::sync::Mutex;

use super::config::TdengineSettings;
use super::encode::{Encoder, Request};
use crate::message::Message;
use crate::sink::{ErrorClass, MessageFailure, Rejected, Sink, Written};

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TdError {
    /// TDengine (or the client library) answered with an error code.
    #[error("TDengine error {code:#06x}: {message}")]
    Server {
        /// The code, `& 0xFFFF` as over WebSocket.
        code: u16,
        /// TDengine's message.
        message: String,
    },
    /// No answer within the sink's `timeout`.
    #[error("no answer from TDengine within {0:?}")]
    Timeout(Duration),
}

/// What to do about an error code (reference §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Network, overload, leader change: retry with backoff.
    Retryable,
    /// Retryable, and the connection must be rebuilt first.
    Reconnect,
    /// Database or table missing: run `auto_create`, then retry.
    Fixable,
    /// Bad data, syntax, auth: dead-letter (the driver bisects first).
    Permanent,
}

/// The table of reference §7, by code.
pub fn class_of(code: u16) -> Class {
    match code {
        // Network unavailable, broken link, read timeout, nodes offline,
        // too many sessions, network busy.
        0x000B | 0x0018..=0x0024 => Class::Retryable,
        // Retry needed, RPC queue out of memory, starting up, closing down.
        0x0125 | 0x0126 | 0x0130 | 0x0131 => Class::Retryable,
        // Database dropping / creating.
        0x0386 | 0x0396 => Class::Retryable,
        // Sync timeout, leader unreachable, not ready, restoring, buffer
        // full, write stall.
        0x0903 | 0x090C | 0x0911 | 0x0914 | 0x0916 | 0x0917 => Class::Retryable,
        // Client side: WebSocket, closed, send/receive timeout, I/O.
        0xE001..=0xE005 => Class::Reconnect,
        // Database, table or super table missing.
        0x0388 | 0x2603 | 0x0362 => Class::Fixable,
        // Syntax, auth (0x0357, 0xE006), db not specified, statement too
        // long (bisection shortens it), out-of-range timestamp or value,
        // invalid type, and anything unknown.
        _ => Class::Permanent,
    }
}

impl TdError {
    fn class(&self) -> Class {
        match self {
            TdError::Server { code, .. } => class_of(*code),
            TdError::Timeout(_) => Class::Reconnect,
        }
    }

    fn from_taos(e: &taos::Error) -> TdError {
        let code: i32 = e.code().into();
        TdError::Server {
            code: (code & 0xFFFF) as u16,
            message: redact(&e.message()),
        }
    }

    /// Whether the connection is to be rebuilt before the next call: after
    /// transport failures and timeouts, and after taosAdapter's generic
    /// `0xFFFF` (also what the crate reports for a socket it found closed),
    /// which the reference says to meet with one reconnect.
    fn drops_connection(&self) -> bool {
        match self {
            TdError::Server { code: 0xFFFF, .. } => true,
            other => other.class() == Class::Reconnect,
        }
    }

    /// Whether this is a wrong user, password or token.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            TdError::Server {
                code: 0x0357 | 0xE006,
                ..
            }
        )
    }
}

/// The crate's messages may quote the URL it dialed (a 401 reads
/// `Authentication failure: "wss://host/ws?token=…"`) or the DSN: hides
/// `token=` values and the password of `scheme://user:password@`.
fn redact(message: &str) -> String {
    let end = |s: &str| {
        s.find(|c: char| c == '&' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(s.len())
    };
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let token = rest.find("token=").map(|i| (i, i + "token=".len()));
        let password = rest.find("://").and_then(|i| {
            let after = i + 3;
            let authority = &rest[after..after + end(&rest[after..])];
            let at = authority.rfind('@')?;
            let colon = authority[..at].find(':')?;
            Some((after + colon + 1, after + at))
        });
        let hide = match (token, password) {
            (Some((t, from)), Some((p, _))) if t < p => (from, from + end(&rest[from..])),
            (_, Some((from, to))) => (from, to),
            (Some((_, from)), None) => (from, from + end(&rest[from..])),
            (None, None) => break,
        };
        out.push_str(&rest[..hide.0]);
        out.push_str("***");
        rest = &rest[hide.1..];
    }
    out.push_str(rest);
    out
}

/// Writes to TDengine through the official `taos` crate over WebSocket.
pub struct TdengineSink {
    settings: TdengineSettings,
    encoder: Encoder,
    /// The connection; `None` after a transport failure until the next call
    /// builds a new one (taos 0.12.3 never reconnects by itself).
    client: Mutex<Option<Arc<Taos>>>,
    /// Statements (or schemaless writes) sent, for the log.
    statements: AtomicU64,
    /// The next schemaless request id.
    req_ids: AtomicU64,
}

impl TdengineSink {
    /// A sink; the connection is made on the first call.
    pub fn new(settings: TdengineSettings) -> TdengineSink {
        let encoder = settings.encoder.clone();
        TdengineSink {
            settings,
            encoder,
            client: Mutex::new(None),
            statements: AtomicU64::new(0),
            req_ids: AtomicU64::new(1),
        }
    }

    /// Connects and runs `select server_version()`: at start-up, to refuse
    /// a wrong password or token with a clear error.
    pub async fn check(settings: &TdengineSettings) -> Result<String, TdError> {
        let taos = connect(settings.dsn.expose(), settings.timeout).await?;
        let version = with_timeout(settings.timeout, taos.server_version()).await?;
        Ok(version.to_string())
    }

    async fn client(&self) -> Result<Arc<Taos>, TdError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let taos = Arc::new(connect(self.settings.dsn.expose(), self.settings.timeout).await?);
        *guard = Some(taos.clone());
        Ok(taos)
    }

    /// Drops the connection so the next call builds a new one.
    async fn reset(&self, old: &Arc<Taos>) {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, old)) {
            *guard = None;
            tracing::debug!(sink = %self.settings.name, "Dropped the TDengine connection; the next write reconnects.");
        }
    }

    /// Runs one statement (or schemaless write) with a timeout;
    /// rebuilds the connection after a transport failure.
    async fn run(&self, text: &str) -> Result<(), TdError> {
        let client = self.client().await?;
        let result = match &self.encoder {
            Encoder::Sql { .. } => with_timeout(self.settings.timeout, client.exec(text))
                .await
                .map(drop),
            Encoder::Line { template, .. } => {
                let precision = if template.nanoseconds {
                    SchemalessPrecision::Nanosecond
                } else {
                    SchemalessPrecision::Millisecond
                };
                // taos 0.12.3 matches schemaless replies by req_id and
                // sends 0 when none is set: concurrent writes (the
                // inflight window) need their own, or the crate panics.
                let req_id = self.req_ids.fetch_add(1, Ordering::Relaxed);
                let data = SmlDataBuilder::default()
                    .protocol(SchemalessProtocol::Line)
                    .precision(precision)
                    .data(text.split('\n').map(str::to_owned).collect::<Vec<_>>())
                    .req_id(req_id)
                    .build()
                    .map_err(|e| TdError::Server {
                        code: 0xFFFF,
                        message: e.to_string(),
                    })?;
                with_timeout(self.settings.timeout, client.put(&data)).await
            }
        };
        if let Err(e) = &result
            && e.drops_connection()
        {
            self.reset(&client).await;
        }
        result
    }

    /// Runs a statement; on a missing database or table runs `auto_create`
    /// and tries once more.
    async fn run_fixing(&self, text: &str) -> Result<(), TdError> {
        match self.run(text).await {
            Err(e) if e.class() == Class::Fixable && !self.settings.auto_create.is_empty() => {
                tracing::info!(sink = %self.settings.name, error = %e, "Running auto_create statements.");
                for ddl in &self.settings.auto_create {
                    self.run_ddl(ddl).await?;
                }
                self.run(text).await
            }
            other => other,
        }
    }

    async fn run_ddl(&self, ddl: &str) -> Result<(), TdError> {
        let client = self.client().await?;
        let result = with_timeout(self.settings.timeout, client.exec(ddl)).await;
        if let Err(e) = &result
            && e.drops_connection()
        {
            self.reset(&client).await;
        }
        result.map(drop)
    }
}

async fn connect(dsn: &str, timeout: Duration) -> Result<Taos, TdError> {
    let builder = TaosBuilder::from_dsn(dsn).map_err(|e| TdError::from_taos(&e))?;
    let taos = with_timeout(timeout, builder.build()).await?;
    // `build` does no I/O: the socket opens on the first call. Open it now,
    // so a wrong password shows here.
    with_timeout(timeout, taos.exec("select server_status()")).await?;
    Ok(taos)
}

async fn with_timeout<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, taos::Error>>,
) -> Result<T, TdError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(TdError::Timeout(timeout)),
        Ok(Err(e)) => Err(TdError::from_taos(&e)),
        Ok(Ok(v)) => Ok(v),
    }
}

impl Sink for TdengineSink {
    type Request = Request;
    type Error = TdError;

    fn encode(&self, batch: &[Message], rejected: &mut Vec<Rejected>) -> Request {
        self.encoder.encode(batch, rejected)
    }

    async fn write(&self, request: &Request) -> Result<Written, TdError> {
        let statements = &request.statements;
        tracing::debug!(sink = %self.settings.name, statements = statements.len(), "Writing batch.");
        let mut failures = Vec::new();
        for (i, statement) in statements.iter().enumerate() {
            self.statements.fetch_add(1, Ordering::Relaxed);
            let Err(e) = self.run_fixing(&statement.text).await else {
                continue;
            };
            if statements.len() == 1 {
                // The driver retries or bisects the whole batch.
                return Err(e);
            }
            let reason = format!("statement {} of {} failed: {e}", i + 1, statements.len());
            // Retryable or Reconnect: the service is unwell, so this
            // statement and the ones after it are retried later, as a batch
            // of their own. Fixable or Permanent: something in this
            // statement is bad; its messages are retried as a batch of
            // their own, where the failure is the whole batch's and the
            // driver bisects it down to the bad rows, and the statements
            // after it (which do not depend on it) still run now.
            let unwell = matches!(e.class(), Class::Retryable | Class::Reconnect);
            let failed = if unwell {
                &statements[i..]
            } else {
                std::slice::from_ref(statement)
            };
            for index in failed.iter().flat_map(|s| s.indexes.iter().copied()) {
                failures.push(MessageFailure {
                    index,
                    class: ErrorClass::Retryable,
                    reason: reason.clone(),
                });
            }
            if unwell {
                break;
            }
        }
        Ok(if failures.is_empty() {
            Written::All
        } else {
            Written::Partial(failures)
        })
    }

    fn classify(&self, error: &TdError) -> ErrorClass {
        match error.class() {
            Class::Retryable | Class::Reconnect => ErrorClass::Retryable,
            Class::Fixable | Class::Permanent => ErrorClass::Permanent,
        }
    }

    fn healthcheck_interval(&self) -> Duration {
        self.settings.health_check_interval
    }

    async fn healthcheck(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        match with_timeout(self.settings.timeout, client.server_version()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                if e.drops_connection() {
                    self.reset(&client).await;
                }
                Err(e.into())
            }
        }
    }

    async fn close(&self) {
        self.client.lock().await.take();
        tracing::info!(
            sink = %self.settings.name,
            statements = self.statements.load(Ordering::Relaxed),
            "Statements sent."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_the_crate_never_show_a_token_or_password() {
        assert_eq!(
            redact(r#"Authentication failure: "wss://h:443/ws?token=abc&x=1""#),
            r#"Authentication failure: "wss://h:443/ws?token=***&x=1""#
        );
        assert_eq!(
            redact("invalid driver ws://root:pa:ss@h:6041/db?token=t"),
            "invalid driver ws://root:***@h:6041/db?token=***"
        );
        assert_eq!(redact("ws://h:6041/ws"), "ws://h:6041/ws");
    }

    #[test]
    fn error_codes_are_classified_as_the_reference_table_says() {
        for (code, class) in [
            (0x2600, Class::Permanent),
            (0x0216, Class::Permanent),
            (0x0357, Class::Permanent),
            (0x2616, Class::Permanent),
            (0x0388, Class::Fixable),
            (0x2603, Class::Fixable),
            (0x0362, Class::Fixable),
            (0x0219, Class::Permanent),
            (0x060B, Class::Permanent),
            (0x0224, Class::Permanent),
            (0x2605, Class::Permanent),
            (0x000B, Class::Retryable),
            (0x0018, Class::Retryable),
            (0x0024, Class::Retryable),
            (0x0125, Class::Retryable),
            (0x0131, Class::Retryable),
            (0x0386, Class::Retryable),
            (0x0903, Class::Retryable),
            (0x090C, Class::Retryable),
            (0x0917, Class::Retryable),
            (0xE001, Class::Reconnect),
            (0xE005, Class::Reconnect),
            (0xE006, Class::Permanent),
            (0xFFFF, Class::Permanent),
        ] {
            assert_eq!(class_of(code), class, "{code:#06x}");
        }
        assert_eq!(
            TdError::Timeout(Duration::from_secs(1)).class(),
            Class::Reconnect
        );
    }
}
