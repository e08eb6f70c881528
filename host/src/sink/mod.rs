//! Sinks: where a rule's results go.
//!
//! A sink is split in two, as Vector splits `StreamSink` from its services:
//!
//! - a [`Sink`] says only how to talk to one service: encode a batch into a
//!   request, write a request, tell a retryable error from a permanent one,
//!   check health. It owns its connection and nothing else;
//! - the one [`driver`] runs every sink: batching by count, payload bytes and
//!   time; a bounded buffer whose fullness is the backpressure that reaches
//!   the source; bounded writes in flight; retries with capped exponential
//!   backoff and full jitter; bisection of batches that fail permanently;
//!   per-message failures; acknowledgement tokens; dead-lettering; metrics.
//!
//! The rest of weir sees a sink only through [`SinkHandle::send`] and
//! [`RunningSink::shutdown`]. [`start`] builds the built-in sinks from their
//! config: [`console`], [`file`], [`mqtt`], [`null`], [`tablestore`],
//! [`tdengine`]; new sinks implement
//! [`Sink`] and call [`driver::spawn`].
//!
//! What a `Sink` must never do: retry, sleep, buffer across writes, or touch
//! acknowledgement tokens — the driver owns all of that, so every sink
//! behaves the same under failure.

pub mod console;
pub mod driver;
pub mod file;
pub mod mqtt;
pub mod null;
pub mod tablestore;
pub mod tdengine;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;

use crate::ack::AckToken;
use crate::config::{BrokerConfig, SinkConfig, SinkKind};
use crate::message::Message;

pub use driver::{RunningSink, SinkClosed, SinkHandle, WriteHealth, spawn};

/// One message handed to a sink, with the token to accept once it is
/// delivered.
#[derive(Debug)]
pub struct SinkInput {
    /// The message.
    pub message: Message,
    /// Accepted when the message is written (`query_mode = "sync"`) or
    /// buffered (`"async"`); travels to the dead-letter sink if the sink
    /// gives up on it.
    pub ack: AckToken,
}

/// What sinks may need from the rest of the config.
#[derive(Clone, Debug)]
pub struct SinkContext {
    /// The subscription's broker, for MQTT sinks without their own URL.
    pub broker: BrokerConfig,
}

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// A later attempt may succeed (network, overload, service restarting).
    Retryable,
    /// The same request will fail again (bad data, schema mismatch).
    Permanent,
}

impl ErrorClass {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Permanent => "permanent",
        }
    }
}

/// A message of a batch that [`Sink::encode`] could not encode. It fails
/// permanently; the rest of the batch goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Index in the batch given to `encode`.
    pub index: usize,
    /// Why, for the log (e.g. `variable ${device} is undefined`).
    pub reason: String,
}

/// The outcome of a write that reached the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// Every encoded message was written.
    All,
    /// Some messages failed (Tablestore's `failed_rows`, MQTT publishes
    /// whose acknowledgement never came); the others were written.
    Partial(Vec<MessageFailure>),
}

/// One message of a write that failed while the rest succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageFailure {
    /// Index in the batch given to `encode`.
    pub index: usize,
    /// Whether retrying this message alone may help.
    pub class: ErrorClass,
    /// Why, for the log.
    pub reason: String,
}

/// How to talk to one service. See the module doc for what the driver does
/// around it.
///
/// Required: [`encode`](Self::encode), [`write`](Self::write). Defaults:
/// every error is retryable, health is always fine, closing does nothing.
pub trait Sink: Send + Sync + 'static {
    /// One encoded batch (a request body, a list of publishes, lines).
    type Request: Send + Sync + 'static;
    /// What a failed write reports.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Encodes `batch` into one request. Messages that cannot be encoded
    /// are pushed to `rejected` (each fails alone and permanently) and left
    /// out of the request. Called again for a retry after the batch
    /// changed, so it must not have side effects.
    fn encode(&self, batch: &[Message], rejected: &mut Vec<Rejected>) -> Self::Request;

    /// Writes one request. `Ok` means the service has the messages (less
    /// any [`Written::Partial`] failures); only then are they acknowledged
    /// in `sync` mode. Several writes may run at once (`inflight_window`).
    fn write(
        &self,
        request: &Self::Request,
    ) -> impl Future<Output = Result<Written, Self::Error>> + Send;

    /// Whether retrying a failed write may help. Keep this a table over the
    /// error's kinds, with a unit test per row (Vector's `RetryLogic`).
    fn classify(&self, error: &Self::Error) -> ErrorClass {
        let _ = error;
        ErrorClass::Retryable
    }

    /// Whether the service is reachable, for the health endpoint.
    fn healthcheck(&self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// How often [`report_health`] runs [`Sink::healthcheck`].
    fn healthcheck_interval(&self) -> std::time::Duration {
        HEALTHCHECK_INTERVAL
    }

    /// Called once, after the last write, when the sink shuts down: close
    /// connections politely, stop background tasks.
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Starts a sink's driver task. `dead_letter` is the handle of the sink
/// named by `dead_letter`, started before this one.
///
/// Must be called inside a Tokio runtime.
pub fn start(
    config: &SinkConfig,
    dead_letter: Option<SinkHandle>,
    context: &SinkContext,
) -> anyhow::Result<RunningSink> {
    let name = &config.name;
    let driver = &config.driver;
    Ok(match &config.kind {
        SinkKind::Console { format, template } => {
            let sink = console::ConsoleSink::stdout(
                *format,
                template.clone(),
                driver.undefined_vars_as_null,
            );
            spawn(name, sink, driver, dead_letter)
        }
        SinkKind::File {
            path,
            max_file_bytes,
            max_files,
        } => {
            let sink = file::FileSink::open(path, *max_file_bytes, *max_files)
                .with_context(|| format!("cannot open {}", path.display()))?;
            spawn(name, sink, driver, dead_letter)
        }
        SinkKind::Mqtt {
            topic,
            payload,
            qos,
            retain,
            broker,
        } => {
            let settings = mqtt::MqttSettings::resolve(
                name,
                topic,
                payload.as_ref(),
                *qos,
                *retain,
                broker.as_ref(),
                &context.broker,
                driver,
            )?;
            let sink = mqtt::MqttSink::connect(name, settings)?;
            spawn(name, sink, driver, dead_letter)
        }
        SinkKind::Null => spawn(name, null::NullSink, driver, dead_letter),
        SinkKind::Tablestore(config) => {
            let sink = tablestore::TablestoreSink::new(config)?
                .with_undefined_as_null(driver.undefined_vars_as_null);
            spawn(name, sink, driver, dead_letter)
        }
        SinkKind::Tdengine { .. } => {
            let settings = tdengine_settings(config).expect("a tdengine sink");
            spawn(
                name,
                tdengine::TdengineSink::new(settings),
                driver,
                dead_letter,
            )
        }
    })
}

/// How often [`report_health`] runs a sink's health check, unless the sink
/// says otherwise.
pub const HEALTHCHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest a health check may take before it counts as failed.
pub const HEALTHCHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps sink `handle`'s entry in the `/health` registry current, until
/// the sink shuts down: its health check at once and every
/// [`Sink::healthcheck_interval`], and the verdict of every write as it comes.
/// A change of state is logged once, not on every check.
pub async fn report_health(handle: SinkHandle, health: crate::health::Health) {
    let name = handle.name().to_owned();
    let mut writes = handle.write_health();
    let mut tick = tokio::time::interval(handle.healthcheck_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy: Option<bool> = None;
    loop {
        let verdict: Result<(), String> = tokio::select! {
            _ = tick.tick() => {
                match tokio::time::timeout(HEALTHCHECK_TIMEOUT, handle.healthcheck()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("health check: {e:#}")),
                    Err(_) => Err(format!("health check: no answer within {HEALTHCHECK_TIMEOUT:?}")),
                }
            }
            changed = writes.changed() => {
                if changed.is_err() {
                    return; // the sink is gone
                }
                match &*writes.borrow_and_update() {
                    WriteHealth::Unknown => continue,
                    WriteHealth::Reachable => Ok(()),
                    WriteHealth::Unreachable(e) => Err(e.clone()),
                }
            }
        };
        match verdict {
            Ok(()) => {
                if healthy == Some(false) {
                    tracing::info!(sink = %name, "Sink is healthy again.");
                }
                health.sink_ok(&name);
                healthy = Some(true);
            }
            Err(e) => {
                if healthy != Some(false) {
                    tracing::warn!(sink = %name, error = %e, "Sink is unhealthy.");
                }
                health.sink_failed(&name, e);
                healthy = Some(false);
            }
        }
    }
}

/// Checks, before the pipeline takes any message, that a sink's service is
/// usable as configured: for Tablestore, the table is described (created
/// with `auto_create`), so wrong credentials or a missing table stop
/// `weir run` at start-up with the service's reason. Other sinks have
/// nothing to check ahead.
pub async fn preflight(config: &SinkConfig) -> anyhow::Result<()> {
    match &config.kind {
        SinkKind::Tablestore(ts) => tablestore::TablestoreSink::new(ts)?.preflight().await,
        SinkKind::Tdengine { .. } => {
            let settings = tdengine_settings(config).expect("a tdengine sink");
            let name = &config.name;
            match tdengine::TdengineSink::check(&settings).await {
                Ok(version) => {
                    tracing::info!(sink = %name, server = %settings.shown, version = %version, "Connected to TDengine.");
                }
                Err(e) if e.is_auth() => anyhow::bail!(
                    "TDengine at {} refused the credentials: {e}; check the user and password (or the Cloud token) of the dsn",
                    settings.shown
                ),
                Err(e) => {
                    tracing::warn!(sink = %name, server = %settings.shown, error = %e, "TDengine is not reachable yet; writes will retry.");
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The settings of a `tdengine` sink; `None` for other sinks.
fn tdengine_settings(config: &SinkConfig) -> Option<tdengine::TdengineSettings> {
    let SinkKind::Tdengine {
        dsn,
        mode,
        auto_create,
        timeout,
        health_check_interval,
    } = &config.kind
    else {
        return None;
    };
    Some(tdengine::TdengineSettings::new(
        &config.name,
        dsn,
        mode,
        auto_create,
        *timeout,
        *health_check_interval,
        &config.driver,
    ))
}

/// The erased health check a [`SinkHandle`] carries.
trait Health: Send + Sync {
    fn check(&self) -> HealthFuture<'_>;
    fn interval(&self) -> std::time::Duration;
}

type HealthFuture<'a> = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

type SharedHealth = Arc<dyn Health>;
