//! The manifest as written: `weir.toml`, parsed with serde.
//!
//! These types mirror the file one to one. They are checked for shape only
//! (unknown keys, types); everything that needs cross-checking (references,
//! durations, templates, captures) is done by validation, which resolves
//! this into the model the pipeline runs.
//!
//! Option names follow EMQX where users know them (`batch_size`,
//! `batch_time`, `inflight_window`, `query_mode`, `request_ttl`,
//! `max_buffer_bytes`, `undefined_vars_as_null`); durations are strings with
//! their unit in the value (`"100ms"`, `"30s"`, `"5m"`), as in EMQX.
//!
//! The types are also the manifest's JSON Schema (`weir schema`; compiled
//! in from `manifest.schema.json`, see [`super::schema`]), and the schema
//! is what the shape check walks (see `shape.rs`): the known keys,
//! types, required keys and ranges are written once, here. Serde's
//! `deny_unknown_fields` does not work through `#[serde(flatten)]`, so the
//! sinks carry `#[schemars(deny_unknown_fields)]` instead: the schema says
//! "no other keys" and the shape check enforces it for every table.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

pub use super::model::{
    Backpressure, ConsoleFormat, MetaUpdateMode, MqttProtocol, PayloadFormat, QueryMode, StringType,
};

/// A duration written with its unit: `"500ms"`, `"30s"`, `"5m"`, `"1h 30m"`
/// (parsed by `humantime`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct DurationText(pub String);

impl DurationText {
    fn new(text: &str) -> Self {
        DurationText(text.to_owned())
    }
}

impl JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // `examples` doubles as the shape check's hint for a number written
        // where a duration string is expected.
        schemars::json_schema!({
            "type": "string",
            "description": "A duration with its unit: \"500ms\", \"30s\", \"5m\", \"1h 30m\".",
            "examples": ["500ms", "30s", "5m"],
        })
    }
}

/// A whole manifest.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "weir manifest (weir.toml)")]
pub struct Manifest {
    /// The MQTT broker weir subscribes to.
    #[serde(default)]
    pub broker: Broker,
    /// The HTTP endpoint for metrics and health.
    #[serde(default)]
    pub http: Http,
    /// Plugins by name. Example: `[plugins.hot] path = "threshold.wasm"`.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginSpec>,
    /// Outputs by name. Example: `[sinks.alerts] type = "mqtt"`.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkSpec>,
    /// Rules, in order. Example: `[[rules]] name = "hot" from = ["devices/+/t"]`.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// The MQTT connection weir subscribes through.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    /// `mqtt://host:port` or `mqtts://host:port`. Defaults to the embedded
    /// broker's address when `embedded` is set. Example: `"mqtt://127.0.0.1:1883"`.
    pub url: Option<String>,
    /// The client id. Keep it fixed for a persistent session. Example: `"weir-edge-1"`.
    pub client_id: Option<String>,
    /// Example: `"${env:MQTT_USER}"`.
    pub username: Option<String>,
    /// Example: `"${env:MQTT_PASSWORD}"` (never written in clear in the file).
    pub password: Option<String>,
    /// `"3.1.1"` or `"5"`. Example: `"5"`.
    #[serde(default = "default_protocol")]
    pub protocol: MqttProtocol,
    /// Example: `"30s"`.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: DurationText,
    /// Start a new session on connect (`true`) or resume the broker-side
    /// session, so QoS 1 messages published while weir was away are
    /// delivered (`false`). Example: `false`.
    #[serde(default)]
    pub clean_session: bool,
    /// First reconnect delay; doubles up to `reconnect_max`. Example: `"500ms"`.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min: DurationText,
    /// Example: `"30s"`.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: DurationText,
    /// TLS files for `mqtts://`.
    pub tls: Option<Tls>,
    /// Run an MQTT broker inside weir. Example: `{ listen = "127.0.0.1:1883" }`.
    pub embedded: Option<Embedded>,
}

impl Default for Broker {
    fn default() -> Self {
        Broker {
            url: None,
            client_id: None,
            username: None,
            password: None,
            protocol: default_protocol(),
            keep_alive: default_keep_alive(),
            clean_session: false,
            reconnect_min: default_reconnect_min(),
            reconnect_max: default_reconnect_max(),
            tls: None,
            embedded: None,
        }
    }
}

fn default_protocol() -> MqttProtocol {
    MqttProtocol::V311
}
fn default_keep_alive() -> DurationText {
    DurationText::new("30s")
}
fn default_reconnect_min() -> DurationText {
    DurationText::new("500ms")
}
fn default_reconnect_max() -> DurationText {
    DurationText::new("30s")
}

/// TLS settings of an MQTT connection.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file of the CA that signed the broker's certificate; the system
    /// roots when absent. Example: `"certs/ca.pem"`.
    pub ca_file: Option<String>,
    /// PEM client certificate, for mutual TLS. Example: `"certs/client.pem"`.
    pub cert_file: Option<String>,
    /// PEM client key, for mutual TLS. Example: `"certs/client.key"`.
    pub key_file: Option<String>,
}

/// The embedded broker.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Embedded {
    /// Address the embedded broker listens on. Example: `"127.0.0.1:1883"`.
    pub listen: String,
    /// Most client connections it accepts. Example: `1000`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_connections() -> usize {
    1000
}

/// The HTTP endpoint (`/metrics`, `/health`).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Example: `"127.0.0.1:9464"`. Loopback by default.
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// Example: `false` to serve nothing.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: default_http_listen(),
            enabled: true,
        }
    }
}

fn default_http_listen() -> String {
    "127.0.0.1:9464".to_owned()
}
fn default_true() -> bool {
    true
}

/// A plugin.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// The component file, relative to the manifest. Example: `"plugins/threshold.wasm"`.
    pub path: String,
    /// The plugin's config table, checked against the keys it accepts.
    /// Example: `{ field = "temp", op = ">", value = 30 }`.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Linear-memory cap of each instance, MiB. Example: `64`.
    pub memory_mib: Option<u32>,
    /// CPU deadline per batch. Example: `"1s"`.
    pub deadline: Option<DurationText>,
}

/// An output.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
#[schemars(deny_unknown_fields)]
pub enum SinkSpec {
    /// Human-readable lines on stdout.
    Console(ConsoleSink),
    /// JSON Lines files with size-based rotation.
    File(FileSink),
    /// Republish over MQTT.
    Mqtt(MqttSink),
    /// Accepts and discards everything (benchmarks, tests).
    Null(NullSink),
    /// Rows into an Alibaba Cloud Tablestore timeseries table.
    Tablestore(TablestoreSink),
    /// TDengine or TDengine Cloud, over WebSocket.
    Tdengine(TdengineSink),
}

/// Options every sink has: the shared driver's batching, in-flight window,
/// retries and buffer.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct DriverOptions {
    /// Most messages in one write. Example: `100`.
    pub batch_size: Option<usize>,
    /// Longest a message waits for its batch to fill; 0 (the default)
    /// writes at once what is there. Example: `"10ms"`.
    pub batch_time: Option<DurationText>,
    /// Most bytes of payload in one write. Example: `1048576`.
    pub max_batch_bytes: Option<usize>,
    /// Writes in flight at once. Example: `4`.
    pub inflight_window: Option<usize>,
    /// `"sync"`: a message counts as accepted once written; `"async"`: once
    /// buffered. Example: `"sync"`.
    pub query_mode: Option<QueryMode>,
    /// Give up on a message (dead-letter it) after it has waited this long;
    /// `"infinity"` never gives up. Example: `"45s"`.
    pub request_ttl: Option<String>,
    /// Most bytes buffered waiting for the service. Example: `268435456`.
    pub max_buffer_bytes: Option<usize>,
    /// Retries of a retryable failure before dead-lettering; absent = until
    /// `request_ttl`. Example: `10`.
    pub max_retries: Option<u32>,
    /// Sink that receives what this one gives up on. Example: `"dead"`.
    pub dead_letter: Option<String>,
    /// Render a template variable the message does not have as NULL
    /// (`null`, or nothing in a topic) instead of failing the message.
    /// Example: `true`.
    pub undefined_vars_as_null: Option<bool>,
}

/// Console output.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConsoleSink {
    /// `"line"` (human-readable) or `"json"`. Example: `"line"`.
    pub format: Option<ConsoleFormat>,
    /// A template for each line, instead of the default. Example:
    /// `"${device}: ${payload.temp}"`.
    pub template: Option<String>,
    /// Shared driver options (batching, retries).
    #[serde(flatten)]
    pub driver: DriverOptions,
}

/// File output.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FileSink {
    /// The file written to. Example: `"out/readings.jsonl"`.
    pub path: String,
    /// Rotate when the file reaches this size. Example: `10485760`.
    pub max_file_bytes: Option<u64>,
    /// Rotated files kept (`path.1`, `path.2`, …). Example: `5`.
    pub max_files: Option<u32>,
    /// Shared driver options (batching, retries).
    #[serde(flatten)]
    pub driver: DriverOptions,
}

/// MQTT output.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MqttSink {
    /// Topic template. Example: `"alerts/${device}"`.
    pub topic: String,
    /// Payload template; the message's payload when absent. Example:
    /// `"{\"device\": \"${device}\", \"temp\": ${payload.temp}}"`.
    pub payload: Option<String>,
    /// Example: `1`.
    pub qos: Option<u8>,
    /// Example: `false`.
    pub retain: Option<bool>,
    /// Another broker to publish to; the subscription's broker when absent.
    /// Example: `"mqtt://10.0.0.2:1883"`.
    pub url: Option<String>,
    /// Client id on that broker. Example: `"weir-out-1"`.
    pub client_id: Option<String>,
    /// Example: `"${env:OUT_USER}"`.
    pub username: Option<String>,
    /// Example: `"${env:OUT_PASSWORD}"`.
    pub password: Option<String>,
    /// Shared driver options (batching, retries).
    #[serde(flatten)]
    pub driver: DriverOptions,
}

/// Discards everything.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct NullSink {
    /// Shared driver options (batching, retries).
    #[serde(flatten)]
    pub driver: DriverOptions,
}

/// Rows into an Alibaba Cloud Tablestore timeseries table
/// (`PutTimeseriesData`). Each message is one row.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TablestoreSink {
    /// The instance's endpoint. Example:
    /// `"https://myinst.cn-hangzhou.ots.aliyuncs.com"`.
    pub endpoint: String,
    /// The instance name. Example: `"myinst"`.
    pub instance: String,
    /// Example: `"${env:TABLESTORE_ACCESS_KEY_ID}"`.
    pub access_key_id: String,
    /// Example: `"${env:TABLESTORE_ACCESS_KEY_SECRET}"` (never written in
    /// clear in the file).
    pub access_key_secret: String,
    /// STS token of temporary credentials. Example: `"${env:TABLESTORE_STS_TOKEN}"`.
    pub sts_token: Option<String>,
    /// The timeseries table. Example: `"device_readings"`.
    pub table: String,
    /// Measurement name (template). Example: `"m_re2"`.
    pub measurement: String,
    /// Data source (template); empty when absent. Example: `"${device}"`.
    pub data_source: Option<String>,
    /// Tags: name → value template. Example: `{ client = "${clientid}" }`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Payload fields to write; every top-level field when absent.
    /// Example: `["temp", "hum"]`.
    pub fields: Option<Vec<String>>,
    /// Fields stored as STRING. Example: `["name"]`.
    pub string_fields: Option<Vec<String>>,
    /// Fields stored as BINARY even with `strings = "string"`. Example: `["raw"]`.
    pub binary_fields: Option<Vec<String>>,
    /// How other string fields are stored: `"binary"` (EMQX 4.4, the
    /// default) or `"string"` (EMQX 5). Example: `"binary"`.
    pub strings: Option<StringType>,
    /// Store integers as DOUBLE. Example: `false`.
    pub int_as_double: Option<bool>,
    /// Time of the row in microseconds since the epoch (template); arrival
    /// time when absent. Example: `"${payload.ts_us}"`.
    pub timestamp: Option<String>,
    /// `"normal"` (create or update timeseries metadata) or `"ignore"`.
    /// Example: `"normal"`.
    pub meta_update_mode: Option<MetaUpdateMode>,
    /// Create the table at start-up if it does not exist. Example: `false`.
    pub auto_create: Option<bool>,
    /// Longest one request may take. Example: `"10s"`.
    pub request_timeout: Option<DurationText>,
    /// Shared driver options (batching, retries). `batch_size` is at most 200.
    #[serde(flatten)]
    pub driver: DriverOptions,
}

/// TDengine output (EMQX's TDengine action).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TdengineSink {
    /// `ws://user:password@host:6041[/db]`, `wss://…`, or TDengine Cloud
    /// `wss://host?token=…`. Example: `"ws://root:${env:TDENGINE_PASSWORD}@127.0.0.1:6041"`.
    pub dsn: String,
    /// `"sql"` (INSERT statements, the default) or `"line"` (schemaless
    /// InfluxDB line protocol). Example: `"sql"`.
    pub mode: Option<String>,
    /// SQL mode: the INSERT template. Example:
    /// `"INSERT INTO iot_data.temp_hum(ts, temp, hum, clientid) VALUES (${ts}, ${temp}, ${hum}, '${clientid}')"`.
    pub sql: Option<String>,
    /// Super-table mode: the super table. Example: `"iot_data.meters"`.
    pub stable: Option<String>,
    /// Super-table mode: the child table's name. Example: `"iot_data.d_${clientid}"`.
    pub table: Option<String>,
    /// Super-table mode: tag values, in the super table's tag order
    /// (example: `["'${clientid}'"]`); line mode: tag name → value
    /// (example: `{ client = "${clientid}" }`).
    pub tags: Option<TagsSpec>,
    /// Super-table mode: the column list. Example: `"(ts, temp, hum)"`.
    pub columns: Option<String>,
    /// Super-table mode: one row. Example: `"(${ts}, ${temp}, ${hum})"`.
    pub values: Option<String>,
    /// Line mode: the measurement. Example: `"temp_hum"`.
    pub measurement: Option<String>,
    /// Line mode: field name → value. Example: `{ temp = "${temp}" }`.
    pub fields: Option<BTreeMap<String, String>>,
    /// Line mode: timestamp precision, `"ms"` or `"ns"`. Example: `"ms"`.
    pub precision: Option<String>,
    /// Statements run when a database or table does not exist, before the
    /// write is tried again. Example:
    /// `["CREATE DATABASE IF NOT EXISTS iot_data", "CREATE TABLE IF NOT EXISTS iot_data.temp_hum (ts TIMESTAMP, clientid NCHAR(256), temp FLOAT, hum FLOAT)"]`.
    pub auto_create: Option<Vec<String>>,
    /// Bound of every call to TDengine. Example: `"30s"`.
    pub timeout: Option<DurationText>,
    /// How often to check the server with `select server_version()`.
    /// Example: `"15s"`.
    pub health_check_interval: Option<DurationText>,
    /// Shared driver options (batching, retries).
    #[serde(flatten)]
    pub driver: DriverOptions,
}

/// Tag values (super-table mode) or named tags (line mode).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TagsSpec {
    /// Example: `["'${clientid}'", "${site}"]`.
    Values(Vec<String>),
    /// Example: `{ client = "${clientid}" }`.
    Named(BTreeMap<String, String>),
}

/// A rule: which topics, what to do, where to write.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name. Example: `"hot-readings"`.
    pub name: String,
    /// Topic filters, with `+`, `#` and named captures (`{device}` stands
    /// for one level and makes a field). Example: `["devices/{device}/temp_hum"]`.
    pub from: Vec<String>,
    /// Subscription QoS, 0 or 1. Example: `1`.
    #[serde(default)]
    pub qos: u8,
    /// Subscribe as `$share/<group>/<filter>` so instances split the work.
    /// Example: `"weir"`.
    pub share_group: Option<String>,
    /// `"json"` (payloads must be JSON) or `"raw"`. Example: `"json"`.
    #[serde(default = "default_format")]
    pub format: PayloadFormat,
    /// Larger payloads are refused (counted, sent to `errors`). Example: `65536`.
    pub max_payload_bytes: Option<usize>,
    /// Plugins applied in order. Example: `["hot", { plugin = "units", config = { decimals = 1 } }]`.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// Sinks the results go to. Example: `["alerts", "archive"]`.
    pub to: Vec<String>,
    /// Sink that receives messages this rule could not process (bad payload,
    /// plugin failure), with the reason. Example: `"errors"`.
    pub errors: Option<String>,
    /// What to do when the rule's queue is full: `"block"` (QoS 1: stop
    /// acknowledging, so the broker throttles the publisher), `"drop_oldest"`
    /// or `"drop_newest"` (QoS 0 only). Example: `"block"`.
    pub backpressure: Option<Backpressure>,
    /// Messages the rule's queue holds. Example: `10000`.
    pub queue_size: Option<usize>,
    /// After a batch, while messages come close together, how long the
    /// rule's thread waits for more messages to queue before it takes the
    /// next batch (it goes on at once when 64 are queued); larger batches
    /// cost less CPU per message, and a message waits at most this long.
    /// Messages that come far apart are taken as they come. `"0s"` takes
    /// each message as it comes. Default `"200us"`. Example: `"1ms"`.
    pub linger: Option<DurationText>,
}

fn default_format() -> PayloadFormat {
    PayloadFormat::Json
}

/// A step: a plugin name, or a plugin with per-step config merged over the
/// plugin's own.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(deny_unknown_fields)]
pub enum StepSpec {
    /// Example: `"hot"`.
    Plugin(String),
    /// Example: `{ plugin = "hot", config = { value = 35 } }`.
    WithConfig {
        /// The plugin's name in `[plugins]`.
        plugin: String,
        /// Keys merged over the plugin's config.
        #[serde(default)]
        config: serde_json::Map<String, serde_json::Value>,
        /// Makes this a window step: the plugin is an aggregate plugin, fed
        /// the messages of each window and group. Example: `{ kind =
        /// "tumbling", size = "10s", group_by = ["device"] }`.
        window: Option<Box<WindowStepSpec>>,
    },
}

/// The window of a window step (see `weir::window` and the README's
/// "Windows and aggregation").
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowStepSpec {
    /// `"tumbling"`, `"hopping"`, `"sliding"`, `"session"` or `"count"`.
    /// Example: `"tumbling"`.
    pub kind: WindowKindName,
    /// Window length (tumbling, hopping, sliding). Example: `"10s"`.
    pub size: Option<DurationText>,
    /// Distance between window starts: a duration for hopping windows, a
    /// number of events for count windows. Example: `"5s"` or `2`.
    pub hop: Option<HopSpec>,
    /// Quiet time that ends a session. Example: `"30s"`.
    pub gap: Option<DurationText>,
    /// Longest session. Example: `"5m"`.
    pub max_length: Option<DurationText>,
    /// Events per count window. Example: `100`.
    pub count: Option<u64>,
    /// Sliding windows only: the events that close a window (all when
    /// absent). Example: `{ field = "temp", op = ">", value = 30 }`.
    pub trigger: Option<TriggerSpec>,
    /// Group key: captures or fields by name, else dotted payload paths.
    /// Example: `["device"]`.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Event time from this payload field (dotted path); processing time
    /// when absent. Example: `"ts"`.
    pub time_field: Option<String>,
    /// How `time_field` is written: `"ms"`, `"s"` or `"rfc3339"`. Example: `"ms"`.
    pub time_format: Option<crate::window::TimeFormat>,
    /// Event time: how far out of order events may arrive. Example: `"2s"`.
    pub max_out_of_orderness: Option<DurationText>,
    /// Event time: how long a finished window still takes late events (and
    /// is finished again). Example: `"1m"`.
    pub allowed_lateness: Option<DurationText>,
    /// Event time: quiet time after which the watermark follows the clock.
    /// Example: `"30s"`.
    pub idle_timeout: Option<DurationText>,
    /// Cap on open windows × groups. Example: `100000`.
    pub max_open: Option<usize>,
    /// At the cap: `"emit_oldest"` (finish the oldest window early) or
    /// `"drop_newest"` (drop the event). Example: `"emit_oldest"`.
    pub on_full: Option<crate::window::FullPolicy>,
    /// Sink that receives events later than the allowed lateness. Example:
    /// `"late"`.
    pub late_to: Option<String>,
}

/// The window kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WindowKindName {
    /// Fixed, non-overlapping windows.
    Tumbling,
    /// Fixed windows starting every `hop`.
    Hopping,
    /// A window ending at each (triggering) event.
    Sliding,
    /// Bursts of activity per group, split by `gap`.
    Session,
    /// Every `count` events of a group.
    Count,
}

/// A hop: a duration (hopping windows) or a number of events (count
/// windows).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum HopSpec {
    /// Example: `"5s"`.
    Duration(DurationText),
    /// Example: `2`.
    Events(u64),
}

/// A sliding window's trigger.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// Dotted payload path. Example: `"temp"`.
    pub field: String,
    /// `">"`, `">="`, `"<"`, `"<="`, `"=="` or `"!="`. Example: `">"`.
    pub op: crate::window::CompareOp,
    /// A number, string or boolean. Example: `30`.
    pub value: serde_json::Value,
}
