//! The resolved model: what the pipeline runs from.
//!
//! Every value here has been checked and every default applied: durations
//! are [`Duration`]s, paths are absolute, references between sections point
//! at entries that exist, templates and topic filters are parsed, plugins
//! are loaded and their configs accepted, secrets are resolved. Nothing
//! downstream re-validates; nothing here is ever built except by
//! [`super::load`] (and tests).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::secret::Secret;
use crate::engine::{Limits, Plugin};
use crate::rule::TopicFilter;
use crate::template::Template;

/// Default subscription port of `mqtt://`.
pub const MQTT_PORT: u16 = 1883;
/// Default subscription port of `mqtts://`.
pub const MQTTS_PORT: u16 = 8883;

/// A whole, valid manifest.
#[derive(Clone, Debug)]
pub struct Config {
    /// The manifest file (absolute).
    pub path: PathBuf,
    /// The manifest's text as it was loaded: a look at the file that
    /// finds the same bytes has nothing to reload.
    pub source: Source,
    /// The broker weir subscribes through.
    pub broker: BrokerConfig,
    /// Where `/metrics` and `/health` are served; `None` when disabled.
    pub http: Option<SocketAddr>,
    /// Plugins by name.
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Sinks by name.
    pub sinks: BTreeMap<String, SinkConfig>,
    /// Rules, in manifest order.
    pub rules: Vec<RuleConfig>,
    /// Plugins not compiled yet, by name: loaded with
    /// [`super::Compile::Background`], weir compiles them off the start
    /// path. Empty otherwise.
    pub compiling: BTreeMap<String, PendingPlugin>,
    /// The rules (in `rules`, in manifest order) with a step that runs a
    /// plugin of `compiling`: their queues hold messages until it is ready.
    pub waiting: Vec<WaitingRule>,
}

/// The text a [`Config`] was loaded from. Its `Debug` shows the length
/// only: a manifest may hold a password written inline.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Source(pub std::sync::Arc<str>);

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Source({} bytes)", self.0.len())
    }
}

/// A plugin whose component is compiled in the background.
#[derive(Clone, Debug)]
pub struct PendingPlugin {
    /// The component file (absolute).
    pub path: PathBuf,
    /// The plugin's own config table.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Limits of each instance.
    pub limits: Limits,
}

/// A rule that starts when its plugins have compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitingRule {
    /// The rule's name.
    pub name: String,
    /// The plugins of [`Config::compiling`] its steps run.
    pub plugins: BTreeSet<String>,
}

/// An MQTT connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Host name or address.
    pub host: String,
    /// Port (1883 for `mqtt://`, 8883 for `mqtts://` unless written).
    pub port: u16,
    /// TLS settings; `Some` exactly when the URL is `mqtts://`.
    pub tls: Option<TlsConfig>,
    /// The client id.
    pub client_id: String,
    /// User name, if any.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<Secret>,
    /// MQTT protocol version.
    pub protocol: MqttProtocol,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Start a fresh session on connect instead of resuming one.
    pub clean_session: bool,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// The embedded broker, when weir runs one.
    pub embedded: Option<EmbeddedConfig>,
}

/// MQTT protocol versions, written `"3.1.1"` or `"5"`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
pub enum MqttProtocol {
    /// MQTT 3.1.1.
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.
    #[serde(rename = "5")]
    V5,
}

/// The broker weir runs inside itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Listening address.
    pub listen: SocketAddr,
    /// Most client connections accepted at once.
    pub max_connections: usize,
}

/// TLS files of an `mqtts://` connection (absolute paths, checked to exist).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// CA certificate(s), PEM; the system roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate, PEM (mutual TLS); set together with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Client key, PEM (mutual TLS); set together with `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// A loaded plugin.
#[derive(Clone)]
pub struct PluginConfig {
    /// The plugin's name in `[plugins]`.
    pub name: String,
    /// The component file (absolute).
    pub path: PathBuf,
    /// The plugin's own config table (steps merge their keys over it).
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Limits of each instance.
    pub limits: Limits,
    /// The loaded component, checked against the contract.
    pub plugin: Plugin,
}

impl fmt::Debug for PluginConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginConfig")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("config", &self.config)
            .field("limits", &self.limits)
            .field("content_hash", &self.plugin.content_hash())
            .finish()
    }
}

/// A sink.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// The sink's name in `[sinks]`.
    pub name: String,
    /// The shared driver's options.
    pub driver: DriverConfig,
    /// What the sink writes to.
    pub kind: SinkKind,
}

/// The kinds of sink.
#[derive(Clone, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "a handful per process, built once; boxing would only add noise for the sinks"
)]
pub enum SinkKind {
    /// Lines on stdout.
    Console {
        /// Line layout.
        format: ConsoleFormat,
        /// A template for each line instead of the default layout.
        template: Option<Template>,
    },
    /// JSON Lines files with size-based rotation.
    File {
        /// The file written to (absolute).
        path: PathBuf,
        /// Rotate when the file reaches this size.
        max_file_bytes: u64,
        /// Rotated files kept.
        max_files: u32,
    },
    /// Republish over MQTT.
    Mqtt {
        /// Topic template.
        topic: Template,
        /// Payload template; the message's payload when `None`.
        payload: Option<Template>,
        /// Publish QoS, 0 or 1.
        qos: u8,
        /// Publish with the retain flag.
        retain: bool,
        /// The sink's own connection (own url, client id or credentials);
        /// `None` = the subscription's broker settings with client id
        /// `<client_id>-out-<sink>`.
        broker: Option<BrokerConfig>,
    },
    /// Accepts and discards everything.
    Null,
    /// Rows into an Alibaba Cloud Tablestore timeseries table.
    Tablestore(Box<TablestoreConfig>),
    /// TDengine over WebSocket (the official `taos` crate).
    Tdengine {
        /// `ws://user:pass@host:6041/db`, `wss://…` or
        /// `wss://host?token=…`; a secret (may hold a password or token).
        dsn: Secret,
        /// SQL statements or schemaless lines, with their templates.
        mode: crate::sink::tdengine::TdengineMode,
        /// Statements run when a database or table is missing.
        auto_create: Vec<String>,
        /// Bound of every call to TDengine.
        timeout: Duration,
        /// How often the background health check runs.
        health_check_interval: Duration,
    },
}

/// A Tablestore timeseries table to write to.
#[derive(Clone, Debug)]
pub struct TablestoreConfig {
    /// `http(s)://host[:port]`, without a trailing slash.
    pub endpoint: String,
    /// The instance name.
    pub instance: String,
    /// The AccessKey ID.
    pub access_key_id: String,
    /// The AccessKey secret.
    pub access_key_secret: Secret,
    /// An STS token, with temporary credentials.
    pub sts_token: Option<Secret>,
    /// The timeseries table.
    pub table: String,
    /// Measurement name template.
    pub measurement: Template,
    /// Data source template; empty when `None`.
    pub data_source: Option<Template>,
    /// Tag value templates, by tag name.
    pub tags: Vec<(String, Template)>,
    /// Payload fields written; every top-level field when `None`.
    pub fields: Option<Vec<String>>,
    /// Fields always stored as STRING.
    pub string_fields: BTreeSet<String>,
    /// Fields always stored as BINARY.
    pub binary_fields: BTreeSet<String>,
    /// How other strings are stored.
    pub strings: StringType,
    /// Store integers as DOUBLE.
    pub int_as_double: bool,
    /// Time template (microseconds since the epoch); arrival time when `None`.
    pub timestamp: Option<Template>,
    /// Create or leave alone the timeseries metadata.
    pub meta_update_mode: MetaUpdateMode,
    /// Create the table at start-up when it does not exist.
    pub auto_create: bool,
    /// Longest one request may take.
    pub request_timeout: Duration,
}

/// How a Tablestore sink stores a string field that `string_fields` and
/// `binary_fields` do not name.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StringType {
    /// BINARY, as EMQX 4.4 does. The default.
    Binary,
    /// STRING, as EMQX 5 does.
    String,
}

/// Whether a Tablestore write creates or updates timeseries metadata.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MetaUpdateMode {
    /// Create or update the metadata (`MUM_NORMAL`). The default.
    Normal,
    /// Leave it alone (`MUM_IGNORE`).
    Ignore,
}

/// Default of a Tablestore sink's `request_timeout`.
pub const DEFAULT_TABLESTORE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most rows in one `PutTimeseriesData`: a Tablestore sink's largest
/// `batch_size`.
pub const TABLESTORE_MAX_BATCH_SIZE: usize = 200;

/// Console line layouts.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleFormat {
    /// Human-readable.
    Line,
    /// One JSON object per line.
    Json,
}

/// When a sink counts a message as accepted.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum QueryMode {
    /// Once written to the service.
    Sync,
    /// Once buffered by the driver.
    Async,
}

/// Default of `batch_size`.
pub const DEFAULT_BATCH_SIZE: usize = 100;
/// Default of `batch_time`: write at once what is there. Batches still
/// grow under load, from what arrives while a write is out (EMQX's default
/// is also 0).
pub const DEFAULT_BATCH_TIME: Duration = Duration::ZERO;
/// Default of `max_batch_bytes`.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 1 << 20;
/// Default of `inflight_window`.
pub const DEFAULT_INFLIGHT_WINDOW: usize = 1;
/// Default of `request_ttl` (EMQX's).
pub const DEFAULT_REQUEST_TTL: Duration = Duration::from_secs(45);
/// Default of `max_buffer_bytes`.
pub const DEFAULT_MAX_BUFFER_BYTES: usize = 64 << 20;
/// Default of a file sink's `max_file_bytes`.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 10 << 20;
/// Default of a file sink's `max_files`.
pub const DEFAULT_MAX_FILES: u32 = 5;
/// Default of a TDengine sink's `timeout`.
pub const DEFAULT_TDENGINE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of a TDengine sink's `health_check_interval` (EMQX's).
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(15);
/// Default of a rule's `max_payload_bytes`.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 << 10;
/// Default of a rule's `queue_size`.
pub const DEFAULT_QUEUE_SIZE: usize = 10_000;
/// Default of a rule's `linger`: under load, batches of several messages
/// instead of one (the pipeline bench: about half the rule thread's CPU per
/// message); at most this much added latency.
pub const DEFAULT_LINGER: Duration = Duration::from_micros(200);

/// The shared sink driver's options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    /// Most messages in one write.
    pub batch_size: usize,
    /// Longest a message waits for its batch to fill.
    pub batch_time: Duration,
    /// Most payload bytes in one write.
    pub max_batch_bytes: usize,
    /// Writes in flight at once.
    pub inflight_window: usize,
    /// When a message counts as accepted.
    pub query_mode: QueryMode,
    /// Give up on a message after it waited this long; `None` = never
    /// (`request_ttl = "infinity"`).
    pub request_ttl: Option<Duration>,
    /// Most bytes buffered waiting for the service.
    pub max_buffer_bytes: usize,
    /// Retries before giving up; `None` = until `request_ttl`.
    pub max_retries: Option<u32>,
    /// The sink that receives what this one gives up on.
    pub dead_letter: Option<String>,
    /// Render undefined template variables as NULL instead of failing the
    /// message.
    pub undefined_vars_as_null: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            batch_size: DEFAULT_BATCH_SIZE,
            batch_time: DEFAULT_BATCH_TIME,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            inflight_window: DEFAULT_INFLIGHT_WINDOW,
            query_mode: QueryMode::Sync,
            request_ttl: Some(DEFAULT_REQUEST_TTL),
            max_buffer_bytes: DEFAULT_MAX_BUFFER_BYTES,
            max_retries: None,
            dead_letter: None,
            undefined_vars_as_null: false,
        }
    }
}

/// A rule.
#[derive(Clone, Debug)]
pub struct RuleConfig {
    /// Unique name.
    pub name: String,
    /// Topic filters (at least one).
    pub filters: Vec<TopicFilter>,
    /// Subscription QoS, 0 or 1.
    pub qos: u8,
    /// Shared-subscription group (`$share/<group>/<filter>`).
    pub share_group: Option<String>,
    /// How payloads are decoded.
    pub format: PayloadFormat,
    /// Larger payloads are refused.
    pub max_payload_bytes: usize,
    /// Plugins applied in order.
    pub steps: Vec<StepConfig>,
    /// Sinks the results go to (at least one, each existing).
    pub to: Vec<String>,
    /// Sink receiving what the rule could not process.
    pub errors: Option<String>,
    /// What happens when the rule's queue is full.
    pub backpressure: Backpressure,
    /// Messages the rule's queue holds.
    pub queue_size: usize,
    /// After a batch, longest the rule's thread waits for more messages.
    pub linger: Duration,
}

/// Payload decoding of a rule.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// Payloads must be JSON.
    Json,
    /// Payloads are bytes.
    Raw,
}

/// What a rule does when its queue is full.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Backpressure {
    /// Wait (QoS 1: acknowledgements stop, the broker throttles).
    Block,
    /// Drop the oldest queued message (QoS 0 only).
    DropOldest,
    /// Drop the incoming message (QoS 0 only).
    DropNewest,
}

/// One step of a rule.
#[derive(Clone, Debug, PartialEq)]
pub struct StepConfig {
    /// The plugin's name in `[plugins]`.
    pub plugin: String,
    /// The plugin's config with the step's keys merged over it; `init`
    /// accepted it during validation.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// A window step's window; the plugin is then an aggregate plugin.
    pub window: Option<crate::window::WindowSpec>,
}
