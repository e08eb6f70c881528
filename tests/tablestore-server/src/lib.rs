//! A Tablestore timeseries server for tests, faithful to the wire.
//!
//! It speaks HTTP/1.1 on `127.0.0.1:<free port>` and does what the service
//! does with a request, in the service's order, with the service's error
//! codes, messages and status codes:
//!
//! - `POST` only (405 `OTSMethodNotAllowed`); the required `x-ots-*`
//!   headers (400 `Missing header`); `x-ots-date` as
//!   `YYYY-MM-DDTHH:MM:SS(.fraction)?Z` (400 `Invalid date format`); a known
//!   action (400 `Unsupported operation`); a body of at most 4 MiB (413
//!   `OTSRequestBodyTooLarge`), received in full within
//!   [`Options::body_timeout`] of the headers (408 `OTSRequestTimeout`, and
//!   the connection closed); the body's MD5 (403); a known AccessKey ID
//!   and instance (403); the V2 signature, or V4 with
//!   `x-ots-signdate`/`x-ots-signregion` (403 `Signature mismatch.`); the
//!   clock within 15 minutes (403).
//! - `PutTimeseriesData`: the protobuf body with its required fields, the
//!   FlatBuffer verified and its CRC-32C checked, then every documented
//!   limit and naming rule (≤ 200 rows, ≤ 1024 fields, names, measurement,
//!   data source, tags, value sizes, time ≥ 0), each refused with 400
//!   `OTSParameterInvalid` naming the row; rows stored as points keyed by
//!   (measurement, data source, tags, time), an upsert, each point counting
//!   how often it was written.
//! - `CreateTimeseriesTable`, `DescribeTimeseriesTable`,
//!   `ListTimeseriesTable`, `DeleteTimeseriesTable`.
//! - Every answer carries `x-ots-contentmd5`, `x-ots-requestid`,
//!   `x-ots-date` (microseconds), `x-ots-contenttype: protocol buffer` and
//!   is signed in `authorization: OTS <id>:<sig>` with the secret (V2) or
//!   the derived key (V4); a 403 `OTSAuthFailed` is not signed.
//!
//! Faults ([`Fault`]) are queued and each consumes one `PutTimeseriesData`:
//! an error code, `failed_rows` for chosen rows (the others are stored),
//! a slow reply, a connection closed without an answer, or an answer signed
//! with the wrong key.
//!
//! The server runs on its own thread and runtime, so it serves the same
//! under a paused test clock; it stops when dropped.

mod flat;
mod proto;
mod sign;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use prost::Message as _;

/// Largest request body the service takes.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// Most rows in one `PutTimeseriesData`.
pub const MAX_ROWS: usize = 200;
/// Most fields in one row.
pub const MAX_FIELDS: usize = 1024;
/// Largest string or binary value.
pub const MAX_VALUE_BYTES: usize = 2 << 20;
/// Largest clock difference between client and server.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// How long a client has, once its headers are in, to send the whole body.
/// The service does not document its own limit; this one is generous
/// enough for a 4 MiB body over any test network.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

const ACTIONS: [&str; 12] = [
    "CreateTimeseriesTable",
    "ListTimeseriesTable",
    "DescribeTimeseriesTable",
    "UpdateTimeseriesTable",
    "DeleteTimeseriesTable",
    "PutTimeseriesData",
    "GetTimeseriesData",
    "ScanTimeseriesData",
    "SplitTimeseriesScanTask",
    "QueryTimeseriesMeta",
    "UpdateTimeseriesMeta",
    "DeleteTimeseriesMeta",
];

/// Who may call, and what exists at start.
#[derive(Clone, Debug)]
pub struct Options {
    /// The instance name.
    pub instance: String,
    /// AccessKey ID → secret.
    pub keys: BTreeMap<String, String>,
    /// Timeseries tables that exist from the start.
    pub tables: Vec<String>,
    /// Time a client has to send its whole body once its headers are in;
    /// past it, the answer is 408 `OTSRequestTimeout` ([`BODY_TIMEOUT`]
    /// unless a test wants a slow client caught sooner).
    pub body_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            instance: "myinst".into(),
            keys: BTreeMap::from([("testAccessKeyId".into(), "testAccessKeySecret".into())]),
            tables: vec!["tstable".into()],
            body_timeout: BODY_TIMEOUT,
        }
    }
}

/// A typed field value as stored.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// LONG.
    Long(i64),
    /// BOOLEAN.
    Boolean(bool),
    /// DOUBLE.
    Double(f64),
    /// STRING.
    String(String),
    /// BINARY.
    Binary(Vec<u8>),
}

/// One stored point.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Measurement name.
    pub measurement: String,
    /// Data source.
    pub data_source: String,
    /// Tags by name.
    pub tags: BTreeMap<String, String>,
    /// Microseconds since the epoch.
    pub time_us: i64,
    /// Fields by name.
    pub fields: BTreeMap<String, Value>,
    /// How many times this point was written (1 unless rewritten).
    pub writes: u32,
}

/// What the server saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The action.
    pub action: String,
    /// The HTTP status answered (0: the connection was closed instead).
    pub status: u16,
    /// The error code answered, if any.
    pub code: Option<String>,
    /// Body size.
    pub body_bytes: usize,
    /// Rows of a `PutTimeseriesData` that decoded.
    pub rows: usize,
    /// `x-ots-date` as sent.
    pub date: String,
    /// `"v2"` or `"v4"`.
    pub signature: &'static str,
}

/// A fault injected into the next `PutTimeseriesData`.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this error instead of processing the request.
    Error {
        /// HTTP status.
        status: u16,
        /// Error code, e.g. `OTSServerBusy`.
        code: String,
        /// Message.
        message: String,
    },
    /// Store every row except these (row-group indexes), and list them in
    /// `failed_rows` of a 200.
    FailedRows {
        /// Row-group indexes that fail.
        rows: Vec<usize>,
        /// Their error code.
        code: String,
    },
    /// Process the request, then wait this long before answering.
    Slow(Duration),
    /// Read the request, then close the connection without an answer (and
    /// without storing anything).
    Reset,
    /// Process the request, and sign the answer with a wrong key (what a
    /// client must not trust).
    ForgedSignature,
}

impl Fault {
    /// A 503 `OTSServerBusy`.
    pub fn server_busy() -> Fault {
        Fault::Error {
            status: 503,
            code: "OTSServerBusy".into(),
            message: "Server is busy.".into(),
        }
    }
}

/// (measurement, data source, sorted tags, time): what identifies a point.
type PointKey = (String, String, Vec<(String, String)>, i64);

/// The checks passed (who called, and the action's own outcome), or an
/// answer to give at once (signed when the caller is known).
type Checked = Result<(Caller, Result<Vec<u8>, Failure>), (Option<Caller>, Failure)>;

#[derive(Default)]
struct State {
    options: Mutex<Options>,
    tables: Mutex<Vec<String>>,
    points: Mutex<BTreeMap<PointKey, Point>>,
    seen: Mutex<Vec<Seen>>,
    faults: Mutex<VecDeque<Fault>>,
    request_ids: AtomicU64,
}

/// A running server. Stops when dropped.
pub struct TablestoreServer {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TablestoreServer {
    /// Starts a server with the default options: instance `myinst`, key
    /// `testAccessKeyId`/`testAccessKeySecret`, table `tstable`.
    pub fn start() -> TablestoreServer {
        Self::start_with(Options::default())
    }

    /// Starts a server.
    pub fn start_with(options: Options) -> TablestoreServer {
        let state = Arc::new(State::default());
        *state.tables.lock().unwrap() = options.tables.clone();
        *state.options.lock().unwrap() = options;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("tablestore-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("server runtime");
                rt.block_on(serve(listener, shared, stopped));
            })
            .unwrap();
        TablestoreServer {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues a fault for the next `PutTimeseriesData` not yet faulted.
    pub fn inject(&self, fault: Fault) {
        self.state.faults.lock().unwrap().push_back(fault);
    }

    /// Faults not consumed yet.
    pub fn pending_faults(&self) -> usize {
        self.state.faults.lock().unwrap().len()
    }

    /// Every stored point, by key order.
    pub fn points(&self) -> Vec<Point> {
        self.state
            .points
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect()
    }

    /// Points of `measurement`, optionally of one data source, carrying
    /// every tag of `tags`.
    pub fn query(
        &self,
        measurement: &str,
        data_source: Option<&str>,
        tags: &[(&str, &str)],
    ) -> Vec<Point> {
        self.points()
            .into_iter()
            .filter(|p| p.measurement == measurement)
            .filter(|p| data_source.is_none_or(|d| p.data_source == d))
            .filter(|p| {
                tags.iter()
                    .all(|(k, v)| p.tags.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// Every request seen, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The timeseries tables that exist.
    pub fn tables(&self) -> Vec<String> {
        self.state.tables.lock().unwrap().clone()
    }
}

impl Drop for TablestoreServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            // An `Err` from the service (a `Reset` fault) ends the
            // connection without an answer.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
    connections.abort_all();
}

/// A connection closed on purpose (the `Reset` fault).
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by fault injection")
    }
}

impl std::error::Error for Reset {}

/// An error answer.
struct Failure {
    status: u16,
    code: String,
    message: String,
}

fn fail(status: u16, code: &str, message: impl Into<String>) -> Failure {
    Failure {
        status,
        code: code.to_owned(),
        message: message.into(),
    }
}

fn invalid(message: impl Into<String>) -> Failure {
    fail(400, "OTSParameterInvalid", message)
}

/// The key that signs answers: the secret (V2) or the derived key (V4).
struct Caller {
    key_id: String,
    signing_key: String,
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Reset> {
    let action = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let method_ok = req.method() == hyper::Method::POST;
    let body_timeout = state.options.lock().unwrap().body_timeout;
    // `Err(_)`: the client stalled or trickled past the timeout.
    let body = tokio::time::timeout(
        body_timeout,
        Limited::new(req.into_body(), MAX_BODY_BYTES).collect(),
    )
    .await;
    let mut seen = Seen {
        action: action.clone(),
        status: 0,
        code: None,
        body_bytes: 0,
        rows: 0,
        date: header("x-ots-date").unwrap_or_default(),
        signature: if header("x-ots-signaturev4").is_some() {
            "v4"
        } else {
            "v2"
        },
    };

    let outcome: Checked = async {
        let Ok(body) = body else {
            return Err((None, fail(408, "OTSRequestTimeout", "Request timeout.")));
        };
        if !method_ok {
            return Err((
                None,
                fail(
                    405,
                    "OTSMethodNotAllowed",
                    "Only POST method for requests is supported.",
                ),
            ));
        }
        let body = match body {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return Err((
                    None,
                    fail(
                        413,
                        "OTSRequestBodyTooLarge",
                        "The size of POST data is too large.",
                    ),
                ));
            }
        };
        seen.body_bytes = body.len();
        let v4 = header("x-ots-signaturev4").is_some();
        let mut required = vec![
            "x-ots-date",
            "x-ots-apiversion",
            "x-ots-accesskeyid",
            "x-ots-instancename",
            "x-ots-contentmd5",
        ];
        if v4 {
            required.extend(["x-ots-signdate", "x-ots-signregion"]);
        } else {
            required.push("x-ots-signature");
        }
        for name in required {
            if header(name).is_none() {
                return Err((None, invalid(format!("Missing header: {name}."))));
            }
        }
        let date = header("x-ots-date").unwrap();
        let Some(sent_us) = sign::parse_date(&date) else {
            return Err((None, invalid(format!("Invalid date format: {date}."))));
        };
        if !ACTIONS.contains(&action.as_str()) {
            return Err((None, invalid(format!("Unsupported operation: {action}."))));
        }
        if header("x-ots-contentmd5").unwrap() != sign::md5_base64(&body) {
            return Err((
                None,
                fail(
                    403,
                    "OTSAuthFailed",
                    "Mismatch between MD5 value of request body and x-ots-contentmd5 in header.",
                ),
            ));
        }
        let options = state.options.lock().unwrap().clone();
        let key_id = header("x-ots-accesskeyid").unwrap();
        let Some(secret) = options.keys.get(&key_id) else {
            return Err((
                None,
                fail(403, "OTSAuthFailed", "The AccessKeyID does not exist."),
            ));
        };
        if header("x-ots-instancename").unwrap() != options.instance {
            return Err((
                None,
                fail(403, "OTSAuthFailed", "The instance is not found."),
            ));
        }
        let (expected, sent, signing_key) = if v4 {
            let key = sign::v4_key(
                secret,
                &header("x-ots-signdate").unwrap(),
                &header("x-ots-signregion").unwrap(),
            );
            (
                sign::v4(&key, &action, &headers),
                header("x-ots-signaturev4").unwrap(),
                key,
            )
        } else {
            (
                sign::v2(secret, &action, &headers),
                header("x-ots-signature").unwrap(),
                secret.clone(),
            )
        };
        if expected != sent {
            return Err((None, fail(403, "OTSAuthFailed", "Signature mismatch.")));
        }
        let now_us = now_us();
        if (now_us - sent_us).unsigned_abs() > MAX_SKEW.as_micros() as u64 {
            return Err((
                None,
                fail(
                    403,
                    "OTSAuthFailed",
                    format!("Mismatch between system time and x-ots-date: {date}."),
                ),
            ));
        }
        let caller = Caller {
            key_id,
            signing_key,
        };
        let result = match action.as_str() {
            // Processed below, once the fault queue has had its say.
            "PutTimeseriesData" => Ok(body.to_vec()),
            "DescribeTimeseriesTable" => describe(&state, &body),
            "CreateTimeseriesTable" => create(&state, &body),
            "ListTimeseriesTable" => Ok(proto::ListTimeseriesTableResponse {
                table_metas: state
                    .tables
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|t| meta(t))
                    .collect(),
            }
            .encode_to_vec()),
            "DeleteTimeseriesTable" => delete(&state, &body),
            other => Err(fail(
                400,
                "OTSParameterInvalid",
                format!("Unsupported operation: {other}."),
            )),
        };
        Ok((caller, result))
    }
    .await;

    let (caller, result) = match outcome {
        Ok((caller, result)) if action == "PutTimeseriesData" => {
            let body = result.unwrap_or_default();
            let fault = state.faults.lock().unwrap().pop_front();
            if let Some(Fault::Reset) = fault {
                state.seen.lock().unwrap().push(seen);
                return Err(Reset);
            }
            let answer = match &fault {
                Some(Fault::Error {
                    status,
                    code,
                    message,
                }) => Err(fail(*status, code, message.clone())),
                other => put(&state, &body, other.as_ref(), &mut seen),
            };
            if let Some(Fault::Slow(d)) = fault {
                tokio::time::sleep(d).await;
            }
            let caller = match fault {
                Some(Fault::ForgedSignature) => Caller {
                    signing_key: "not-the-key".into(),
                    ..caller
                },
                _ => caller,
            };
            (Some(caller), answer)
        }
        Ok((caller, result)) => (Some(caller), result),
        Err((caller, failure)) => (caller, Err(failure)),
    };

    let request_id = format!(
        "weir-test-{:08x}",
        state.request_ids.fetch_add(1, Ordering::Relaxed)
    );
    let (status, body) = match result {
        Ok(body) => (200, body),
        Err(f) => {
            seen.code = Some(f.code.clone());
            (
                f.status,
                proto::Error {
                    code: f.code,
                    message: Some(f.message),
                }
                .encode_to_vec(),
            )
        }
    };
    seen.status = status;
    let auth_failure = status == 403 && seen.code.as_deref() == Some("OTSAuthFailed");
    state.seen.lock().unwrap().push(seen);

    let mut ots = vec![
        ("x-ots-contentmd5".to_owned(), sign::md5_base64(&body)),
        ("x-ots-requestid".to_owned(), request_id),
        ("x-ots-date".to_owned(), sign::format_date(now_us())),
        ("x-ots-contenttype".to_owned(), "protocol buffer".to_owned()),
    ];
    let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
    if status == 408 {
        // The rest of the body may still come: the connection cannot carry
        // another request.
        response = response.header("connection", "close");
    }
    if let Some(caller) = caller.filter(|_| !auth_failure) {
        let signature = sign::response(&caller.signing_key, &action, &ots);
        ots.push((
            "authorization".to_owned(),
            format!("OTS {}:{signature}", caller.key_id),
        ));
    }
    for (name, value) in ots {
        response = response.header(name, value);
    }
    Ok(response.body(Full::new(Bytes::from(body))).unwrap())
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn meta(table: &str) -> proto::TimeseriesTableMeta {
    proto::TimeseriesTableMeta {
        table_name: Some(table.to_owned()),
        table_options: Some(proto::TimeseriesTableOptions {
            time_to_live: Some(-1),
        }),
        status: Some("CREATED".into()),
    }
}

fn not_exist() -> Failure {
    fail(404, "OTSObjectNotExist", "Requested table does not exist.")
}

fn table_name(body: &[u8]) -> Result<String, Failure> {
    let req = proto::TableNameRequest::decode(body)
        .map_err(|e| invalid(format!("Invalid request body: {e}.")))?;
    req.table_name.ok_or_else(|| invalid("Missing table_name."))
}

fn describe(state: &State, body: &[u8]) -> Result<Vec<u8>, Failure> {
    let name = table_name(body)?;
    if !state.tables.lock().unwrap().contains(&name) {
        return Err(not_exist());
    }
    Ok(proto::DescribeTimeseriesTableResponse {
        table_meta: meta(&name),
    }
    .encode_to_vec())
}

fn delete(state: &State, body: &[u8]) -> Result<Vec<u8>, Failure> {
    let name = table_name(body)?;
    let mut tables = state.tables.lock().unwrap();
    let before = tables.len();
    tables.retain(|t| *t != name);
    if tables.len() == before {
        return Err(not_exist());
    }
    Ok(Vec::new())
}

fn create(state: &State, body: &[u8]) -> Result<Vec<u8>, Failure> {
    let req = proto::CreateTimeseriesTableRequest::decode(body)
        .map_err(|e| invalid(format!("Invalid request body: {e}.")))?;
    let name = req
        .table_meta
        .and_then(|m| m.table_name)
        .ok_or_else(|| invalid("Missing table_meta.table_name."))?;
    check_table_name(&name)?;
    let mut tables = state.tables.lock().unwrap();
    if tables.contains(&name) {
        return Err(fail(
            409,
            "OTSObjectAlreadyExist",
            "Requested table already exists.",
        ));
    }
    tables.push(name);
    Ok(Vec::new())
}

fn check_table_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("Invalid table name: '{name}'.")))
    }
}

const RESERVED: [&str; 6] = [
    "_m_name",
    "_data_source",
    "_tags",
    "_time",
    "_meta_update_time",
    "_attributes",
];

fn check_field_name(row: usize, name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && !RESERVED.iter().any(|r| name.contains(r));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("Row {row}: invalid field name '{name}'.")))
    }
}

/// A decoded row, before it is stored.
struct Decoded {
    measurement: String,
    data_source: String,
    tags: Vec<(String, String)>,
    time_us: i64,
    fields: BTreeMap<String, Value>,
}

fn put(
    state: &State,
    body: &[u8],
    fault: Option<&Fault>,
    seen: &mut Seen,
) -> Result<Vec<u8>, Failure> {
    let req = proto::PutTimeseriesDataRequest::decode(body)
        .map_err(|e| invalid(format!("Invalid request body: {e}.")))?;
    let table = req
        .table_name
        .ok_or_else(|| invalid("Missing table_name."))?;
    let rows = req.rows_data.ok_or_else(|| invalid("Missing rows_data."))?;
    let kind = rows
        .r#type
        .ok_or_else(|| invalid("Missing rows_data.type."))?;
    if kind != 0 {
        return Err(invalid(format!("Unsupported rows serialize type: {kind}.")));
    }
    let data = rows
        .rows_data
        .ok_or_else(|| invalid("Missing rows_data.rows_data."))?;
    if let Some(crc) = rows.flatbuffer_crc32c
        && crc != crc32c::crc32c(&data) as i32
    {
        return Err(invalid("Checksum mismatch of flatbuffer rows data."));
    }
    if let Some(mode) = req.meta_update_mode
        && !(0..=1).contains(&mode)
    {
        return Err(invalid(format!("Invalid meta_update_mode: {mode}.")));
    }
    if !state.tables.lock().unwrap().contains(&table) {
        return Err(not_exist());
    }
    let decoded = decode_rows(&data)?;
    seen.rows = decoded.len();

    let failing: HashSet<usize> = match fault {
        Some(Fault::FailedRows { rows, .. }) => rows.iter().copied().collect(),
        _ => HashSet::new(),
    };
    let mut failed_rows = Vec::new();
    let mut points = state.points.lock().unwrap();
    for (i, row) in decoded.into_iter().enumerate() {
        if failing.contains(&i) {
            let Some(Fault::FailedRows { code, .. }) = fault else {
                unreachable!()
            };
            failed_rows.push(proto::FailedRowInfo {
                row_index: i as i32,
                error_code: Some(code.clone()),
                error_message: Some("Injected row failure.".into()),
            });
            continue;
        }
        let key = (
            row.measurement.clone(),
            row.data_source.clone(),
            row.tags.clone(),
            row.time_us,
        );
        let point = points.entry(key).or_insert_with(|| Point {
            measurement: row.measurement,
            data_source: row.data_source,
            tags: row.tags.into_iter().collect(),
            time_us: row.time_us,
            fields: BTreeMap::new(),
            writes: 0,
        });
        point.fields = row.fields;
        point.writes += 1;
    }
    Ok(proto::PutTimeseriesDataResponse { failed_rows }.encode_to_vec())
}

fn decode_rows(data: &[u8]) -> Result<Vec<Decoded>, Failure> {
    let root =
        flat::rows(data).map_err(|e| invalid(format!("Invalid flatbuffer rows data: {e}.")))?;
    let groups = root.row_groups().ok_or_else(|| invalid("No row groups."))?;
    let total: usize = groups.iter().map(|g| g.rows().map_or(0, |r| r.len())).sum();
    if total > MAX_ROWS {
        return Err(invalid(format!(
            "The number of rows ({total}) exceeds the limit of {MAX_ROWS}."
        )));
    }
    let mut out = Vec::with_capacity(total);
    for (gi, group) in groups.iter().enumerate() {
        let measurement = group.measurement_name().unwrap_or("");
        if measurement.is_empty()
            || measurement.len() > 128
            || measurement
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '#')
        {
            return Err(invalid(format!(
                "Row {gi}: invalid measurement name '{measurement}'."
            )));
        }
        let names: Vec<&str> = group
            .field_names()
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        let types: Vec<u8> = group
            .field_types()
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        if names.len() != types.len() {
            return Err(invalid(format!(
                "Row {gi}: {} field names but {} field types.",
                names.len(),
                types.len()
            )));
        }
        if names.len() > MAX_FIELDS {
            return Err(invalid(format!(
                "Row {gi}: {} fields exceed the limit of {MAX_FIELDS}.",
                names.len()
            )));
        }
        let mut unique = HashSet::new();
        for name in &names {
            check_field_name(gi, name)?;
            if !unique.insert(*name) {
                return Err(invalid(format!("Row {gi}: duplicated field '{name}'.")));
            }
        }
        let rows = group
            .rows()
            .ok_or_else(|| invalid(format!("Row group {gi} has no rows.")))?;
        for row in rows.iter() {
            let data_source = row.data_source().unwrap_or("").to_owned();
            if data_source.len() > 256 {
                return Err(invalid(format!(
                    "Row {gi}: data source longer than 256 bytes."
                )));
            }
            let time_us = row.time();
            if time_us < 0 {
                return Err(invalid(format!("Row {gi}: time {time_us} is negative.")));
            }
            // The legacy string form is for `supported_table_version = 0`
            // clients, which send no `tag_list`.
            let legacy = row.tags().unwrap_or("");
            if !legacy.is_empty() && row.tag_list().is_some() {
                return Err(invalid(format!(
                    "Row {gi}: both tags and tag_list are set."
                )));
            }
            let mut tags = Vec::new();
            for tag in row.tag_list().iter().flat_map(|l| l.iter()) {
                let (k, v) = (tag.name().unwrap_or(""), tag.value().unwrap_or(""));
                if k.is_empty()
                    || !k.bytes().all(|c| (b'!'..=b'~').contains(&c))
                    || k.contains(['"', '='])
                    || v.contains(['"', '='])
                {
                    return Err(invalid(format!("Row {gi}: invalid tag '{k}'='{v}'.")));
                }
                tags.push((k.to_owned(), v.to_owned()));
            }
            tags.sort();
            if tags.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(invalid(format!("Row {gi}: duplicated tag name.")));
            }
            let values = row.field_values();
            let longs: Vec<i64> = values
                .and_then(|v| v.long_values())
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            let bools: Vec<bool> = values
                .and_then(|v| v.bool_values())
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            let doubles: Vec<f64> = values
                .and_then(|v| v.double_values())
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            let strings: Vec<&str> = values
                .and_then(|v| v.string_values())
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            let binaries: Vec<Vec<u8>> = values
                .and_then(|v| v.binary_values())
                .map(|v| {
                    v.iter()
                        .map(|b| b.value().map(|x| x.iter().collect()).unwrap_or_default())
                        .collect()
                })
                .unwrap_or_default();
            let mut next = [0usize; 6];
            let mut fields = BTreeMap::new();
            for (name, ty) in names.iter().zip(&types) {
                let k = *ty as usize;
                let at = next.get(k).copied().unwrap_or(0);
                if let Some(n) = next.get_mut(k) {
                    *n += 1;
                }
                let missing = || invalid(format!("Row {gi}: no value for field '{name}'."));
                let value = match ty {
                    1 => Value::Long(*longs.get(at).ok_or_else(missing)?),
                    2 => Value::Boolean(*bools.get(at).ok_or_else(missing)?),
                    3 => Value::Double(*doubles.get(at).ok_or_else(missing)?),
                    4 => Value::String((*strings.get(at).ok_or_else(missing)?).to_owned()),
                    5 => Value::Binary(binaries.get(at).ok_or_else(missing)?.clone()),
                    other => {
                        return Err(invalid(format!(
                            "Row {gi}: invalid type {other} of field '{name}'."
                        )));
                    }
                };
                let size = match &value {
                    Value::String(s) => s.len(),
                    Value::Binary(b) => b.len(),
                    _ => 0,
                };
                if size > MAX_VALUE_BYTES {
                    return Err(invalid(format!(
                        "Row {gi}: field '{name}' is larger than 2 MB."
                    )));
                }
                fields.insert((*name).to_owned(), value);
            }
            if next[1] != longs.len()
                || next[2] != bools.len()
                || next[3] != doubles.len()
                || next[4] != strings.len()
                || next[5] != binaries.len()
            {
                return Err(invalid(format!(
                    "Row {gi}: field values do not match field types."
                )));
            }
            out.push(Decoded {
                measurement: measurement.to_owned(),
                data_source,
                tags,
                time_us,
                fields,
            });
        }
    }
    Ok(out)
}
