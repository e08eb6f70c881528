//! The Tablestore sink end to end: the real `weir` binary reading a real
//! Mosquitto (one per test, on a free port) and writing to the
//! protocol-faithful test server (`tests/tablestore-server`), which checks
//! signatures, digests, bodies and limits and stores what it accepts; the
//! sink in-process against the same server for failure paths; and the
//! official Python SDK (`tablestore` from PyPI) as the independent judge of
//! weir's request bodies and of the server's answers.
//!
//! The SDK's interpreter comes from `WEIR_TABLESTORE_PYTHON` (set by
//! `tests/run`), else `target/tablestore-sdk/venv/bin/python`. Without it
//! the SDK tests fail and say how to install it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir::Message;
use weir::ack::{AckOutcome, track};
use weir::config::{
    BrokerConfig, DriverConfig, MetaUpdateMode, MqttProtocol, Secret, SinkConfig, SinkKind,
    StringType, TablestoreConfig,
};
use weir::sink::tablestore::{RowSpec, TablestoreSink};
use weir::sink::{SinkContext, SinkInput};
use weir::template::Template;
use weir_tablestore_server::{Fault, Options, Point, TablestoreServer, Value};
use weir_test_support::Mosquitto;
use weir_test_support::WeirProcess as Weir;
use weir_test_support::mqtt::publish_many_blocking;

const KEY_ID: &str = "testAccessKeyId";
const SECRET: &str = "testAccessKeySecret";

// ----- the weir binary -------------------------------------------------

/// Starts `weir run` with the secret in the environment.
fn spawn(dir: &Path, manifest: &str, secret: &str) -> Weir {
    let path = dir.join(format!("weir-{}.toml", unique()));
    let manifest = format!("{manifest}\n[http]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&path, manifest).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["--log", "info,weir=debug", "run"])
        .arg(&path)
        .env("TS_KEY_ID", KEY_ID)
        .env("TS_SECRET", secret);
    Weir::spawn(command, path.with_extension("log"))
}

/// Starts `weir run` and waits until it has subscribed.
fn run(dir: &Path, manifest: &str) -> Weir {
    let weir = spawn(dir, manifest, SECRET);
    weir.wait_for_log("Subscribed.", 1);
    weir
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::process::id() as u64 * 1000 + N.fetch_add(1, Ordering::Relaxed)
}

/// A manifest: one rule from `devices/{clientid}/data` (QoS 1) to a
/// tablestore sink with `extra` options.
fn manifest(broker: &Mosquitto, server: &TablestoreServer, extra: &str) -> String {
    format!(
        r#"
[broker]
url = "{url}"
client_id = "weir-ts-{id}"

[sinks.ts]
type = "tablestore"
endpoint = "{endpoint}"
instance = "myinst"
access_key_id = "${{env:TS_KEY_ID}}"
access_key_secret = "${{env:TS_SECRET}}"
table = "tstable"
{extra}

[[rules]]
name = "readings"
from = ["devices/{{clientid}}/data"]
qos = 1
to = ["ts"]
"#,
        url = broker.url(),
        id = unique(),
        endpoint = server.endpoint(),
    )
}

fn wait_for_points(server: &TablestoreServer, n: usize, weir: &Weir) -> Vec<Point> {
    weir.wait_until(&format!("the server stores {n} points"), |_| {
        server.points().len() >= n
    });
    server.points()
}

// ----- must hold: the seed scenario, volume, faults, bad secret --------

#[test]
fn the_seed_scenario_lands_in_measurement_m_re2_and_is_found_by_its_tag() {
    let broker = Mosquitto::start();
    let server = TablestoreServer::start();
    let dir = tempfile::tempdir().unwrap();
    let weir = run(
        dir.path(),
        &manifest(
            &broker,
            &server,
            r#"measurement = "m_re2"
tags = { client = "${clientid}" }
string_fields = ["name"]
batch_size = 100
batch_time = "20ms"
query_mode = "sync""#,
        ),
    );
    publish_many_blocking(
        &broker.url(),
        |i| ["devices/123456/data", "devices/999/data"][i].to_owned(),
        |i| {
            format!(
                r#"{{"temp": 23.5, "hum": {}, "ok": true, "name": "dev-1", "note": "hi", "gone": null}}"#,
                90 + i
            )
            .into_bytes()
        },
        2,
        1,
    );
    wait_for_points(&server, 2, &weir);

    let found = server.query("m_re2", None, &[("client", "123456")]);
    assert_eq!(found.len(), 1, "{:?}", server.points());
    let point = &found[0];
    assert_eq!(point.data_source, "");
    assert_eq!(
        point.tags,
        BTreeMap::from([("client".into(), "123456".into())])
    );
    assert_eq!(
        point.fields,
        BTreeMap::from([
            ("hum".into(), Value::Long(90)),
            ("name".into(), Value::String("dev-1".into())),
            ("note".into(), Value::Binary(b"hi".to_vec())),
            ("ok".into(), Value::Boolean(true)),
            ("temp".into(), Value::Double(23.5)),
        ])
    );
    // Arrival time, in microseconds, within the last minute.
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    assert!(point.time_us % 1000 == 0 && (now_us - point.time_us) < 60_000_000);
    assert_eq!(point.writes, 1);
    assert_eq!(server.query("m_re2", None, &[("client", "999")]).len(), 1);
    // The health check ran first, and every request was signed V2.
    let seen = server.seen();
    assert_eq!(seen[0].action, "DescribeTimeseriesTable");
    assert!(seen.iter().all(|s| s.status == 200 && s.signature == "v2"));
}

#[test]
fn ten_thousand_messages_store_exactly_ten_thousand_rows_in_requests_within_the_limits() {
    const N: usize = 10_000;
    let broker = Mosquitto::start();
    let server = TablestoreServer::start();
    let dir = tempfile::tempdir().unwrap();
    let weir = run(
        dir.path(),
        &manifest(
            &broker,
            &server,
            r#"measurement = "m_re2"
data_source = "${clientid}"
tags = { client = "${clientid}" }
timestamp = "${t}"
batch_size = 200
batch_time = "50ms"
inflight_window = 4"#,
        ),
    );
    publish_many_blocking(
        &broker.url(),
        |i| format!("devices/{}/data", i % 7),
        |i| {
            format!(
                r#"{{"t": {}, "seq": {i}, "v": {}.5}}"#,
                1_700_000_000_000_000u64 + i as u64,
                i
            )
            .into_bytes()
        },
        N,
        1,
    );
    let points = wait_for_points(&server, N, &weir);
    // Let stragglers (a duplicate would arrive late) come in.
    std::thread::sleep(Duration::from_millis(300));
    let points_after = server.points();
    assert_eq!(points_after.len(), N);
    assert_eq!(points.len(), N);
    assert!(
        points.iter().all(|p| p.writes == 1),
        "a point was written twice"
    );
    let seqs: BTreeSet<i64> = points
        .iter()
        .map(|p| match p.fields["seq"] {
            Value::Long(s) => s,
            ref other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs.len(), N);
    let puts: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|s| s.action == "PutTimeseriesData")
        .collect();
    assert!(puts.iter().all(|s| s.status == 200));
    assert!(
        puts.iter()
            .all(|s| s.rows <= 200 && s.body_bytes <= 4_000_000)
    );
    assert_eq!(puts.iter().map(|s| s.rows).sum::<usize>(), N);
    assert!(puts.iter().any(|s| s.rows > 1), "rows were batched");
}

#[test]
fn a_server_busy_a_dropped_connection_and_two_failed_rows_lose_nothing_and_store_nothing_twice() {
    const N: usize = 30;
    let broker = Mosquitto::start();
    let server = TablestoreServer::start();
    server.inject(Fault::server_busy());
    server.inject(Fault::Reset);
    server.inject(Fault::FailedRows {
        rows: vec![1, 3],
        code: "OTSServerBusy".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let weir = run(
        dir.path(),
        &manifest(
            &broker,
            &server,
            r#"measurement = "m_re2"
tags = { client = "${clientid}" }
timestamp = "${t}"
batch_size = 10
batch_time = "200ms""#,
        ),
    );
    publish_many_blocking(
        &broker.url(),
        |_| "devices/123456/data".to_owned(),
        |i| {
            format!(
                r#"{{"t": {}, "seq": {i}}}"#,
                1_700_000_000_000_000u64 + i as u64
            )
            .into_bytes()
        },
        N,
        1,
    );
    let points = wait_for_points(&server, N, &weir);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.points().len(), N);
    assert_eq!(server.pending_faults(), 0, "every fault was hit");
    assert!(points.iter().all(|p| p.writes == 1), "{points:?}");

    let puts: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|s| s.action == "PutTimeseriesData")
        .collect();
    let statuses: Vec<u16> = puts.iter().map(|s| s.status).collect();
    assert_eq!(&statuses[..3], [503, 0, 200], "{puts:?}");
    assert_eq!(puts[0].code.as_deref(), Some("OTSServerBusy"));
    // The two failed rows were sent again, alone.
    assert!(puts[3..].iter().any(|s| s.rows == 2), "{puts:?}");
    // Every retry was signed afresh (its own x-ots-date is accepted by the
    // server's signature check, which covers the date).
    assert!(puts.iter().skip(1).all(|s| s.status != 403));
}

#[test]
fn a_bad_secret_stops_weir_at_start_up_naming_the_signature_mismatch() {
    let broker = Mosquitto::start();
    let server = TablestoreServer::start();
    let dir = tempfile::tempdir().unwrap();
    let weir = spawn(
        dir.path(),
        &manifest(&broker, &server, r#"measurement = "m_re2""#),
        "not-the-secret",
    );
    let (code, log) = weir.wait_for_exit();
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("Signature mismatch"), "{log}");
    assert!(log.contains("access_key_secret"), "{log}");
    assert!(
        !log.contains("not-the-secret"),
        "the secret was printed:\n{log}"
    );
    assert!(server.points().is_empty());
}

// ----- the sink in-process ---------------------------------------------

fn config(server: &TablestoreServer) -> TablestoreConfig {
    TablestoreConfig {
        endpoint: server.endpoint(),
        instance: "myinst".into(),
        access_key_id: KEY_ID.into(),
        access_key_secret: Secret::new(SECRET),
        sts_token: None,
        table: "tstable".into(),
        measurement: Template::parse("${m}").unwrap(),
        data_source: None,
        tags: vec![],
        fields: None,
        string_fields: BTreeSet::new(),
        binary_fields: BTreeSet::new(),
        strings: StringType::Binary,
        int_as_double: false,
        timestamp: Some(Template::parse("${t}").unwrap()),
        meta_update_mode: MetaUpdateMode::Normal,
        auto_create: false,
        request_timeout: Duration::from_secs(5),
    }
}

fn start(config: TablestoreConfig, driver: DriverConfig) -> weir::sink::RunningSink {
    let sink = SinkConfig {
        name: "ts".into(),
        driver,
        kind: SinkKind::Tablestore(Box::new(config)),
    };
    let context = SinkContext {
        broker: BrokerConfig {
            host: "127.0.0.1".into(),
            port: 1,
            tls: None,
            client_id: "weir-test".into(),
            username: None,
            password: None,
            protocol: MqttProtocol::V311,
            keep_alive: Duration::from_secs(30),
            clean_session: true,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(200),
            embedded: None,
        },
    };
    weir::sink::start(&sink, None, &context).expect("sink starts")
}

type Outcomes = Arc<Mutex<Vec<AckOutcome>>>;

async fn send(running: &weir::sink::RunningSink, payloads: &[String]) -> Outcomes {
    let outcomes: Outcomes = Arc::default();
    for p in payloads {
        let o = outcomes.clone();
        let input = SinkInput {
            message: Message::new("t", p.clone(), 1_700_000_000_000),
            ack: track(move |x| o.lock().unwrap().push(x)),
        };
        running.handle.send(input).await.unwrap();
    }
    outcomes
}

fn payloads(n: usize, filler: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"m": "cpu", "t": {}, "seq": {i}, "blob": "{}"}}"#,
                1_700_000_000_000_000u64 + i as u64,
                "x".repeat(filler)
            )
        })
        .collect()
}

#[tokio::test]
async fn a_batch_over_4_mb_is_cut_into_requests_under_the_limit() {
    let server = TablestoreServer::start();
    let driver = DriverConfig {
        batch_size: 200,
        max_batch_bytes: 64 << 20,
        batch_time: Duration::from_millis(50),
        request_ttl: None,
        ..DriverConfig::default()
    };
    let running = start(config(&server), driver);
    // 60 rows of ~300 kB: 18 MB in one batch.
    let outcomes = send(&running, &payloads(60, 300_000)).await;
    running.shutdown().await;
    assert_eq!(*outcomes.lock().unwrap(), vec![AckOutcome::Accepted; 60]);
    assert_eq!(server.points().len(), 60);
    let puts: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|s| s.action == "PutTimeseriesData")
        .collect();
    assert!(puts.len() >= 5, "{puts:?}");
    assert!(
        puts.iter()
            .all(|s| s.status == 200 && s.body_bytes <= 4_000_000),
        "{puts:?}"
    );
}

#[tokio::test]
async fn a_whole_batch_refused_as_a_bad_parameter_is_bisected_and_nothing_is_lost() {
    let server = TablestoreServer::start();
    server.inject(Fault::Error {
        status: 400,
        code: "OTSParameterInvalid".into(),
        message: "Injected bad row.".into(),
    });
    let driver = DriverConfig {
        batch_size: 8,
        batch_time: Duration::from_secs(3600),
        request_ttl: None,
        ..DriverConfig::default()
    };
    let running = start(config(&server), driver);
    let outcomes = send(&running, &payloads(8, 1)).await;
    running.shutdown().await;
    assert_eq!(*outcomes.lock().unwrap(), vec![AckOutcome::Accepted; 8]);
    let rows: Vec<(u16, usize)> = server
        .seen()
        .into_iter()
        .filter(|s| s.action == "PutTimeseriesData")
        .map(|s| (s.status, s.rows))
        .collect();
    // The 400 is answered before the body is decoded, so its rows are 0.
    assert_eq!(rows, [(400, 0), (200, 4), (200, 4)]);
    assert_eq!(server.points().len(), 8);
    assert!(server.points().iter().all(|p| p.writes == 1));
}

#[tokio::test]
async fn rows_failed_with_a_permanent_code_are_given_up_alone() {
    let server = TablestoreServer::start();
    server.inject(Fault::FailedRows {
        rows: vec![2],
        code: "OTSParameterInvalid".into(),
    });
    let driver = DriverConfig {
        batch_size: 5,
        batch_time: Duration::from_secs(3600),
        request_ttl: None,
        ..DriverConfig::default()
    };
    let running = start(config(&server), driver);
    let outcomes = send(&running, &payloads(5, 1)).await;
    running.shutdown().await;
    // Given up on (no dead-letter sink: dropped, token accepted), not retried.
    assert_eq!(*outcomes.lock().unwrap(), vec![AckOutcome::Accepted; 5]);
    let puts = server
        .seen()
        .into_iter()
        .filter(|s| s.action == "PutTimeseriesData")
        .count();
    assert_eq!(puts, 1);
    let seqs: Vec<Value> = server
        .points()
        .iter()
        .map(|p| p.fields["seq"].clone())
        .collect();
    assert_eq!(seqs, [0, 1, 3, 4].map(Value::Long));
}

#[tokio::test]
async fn a_missing_table_is_reported_at_start_up_or_created_with_auto_create() {
    let server = TablestoreServer::start_with(Options {
        tables: vec![],
        ..Options::default()
    });
    let mut cfg = config(&server);
    cfg.table = "fresh_table".into();
    let err = TablestoreSink::new(&cfg)
        .unwrap()
        .preflight()
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("OTSObjectNotExist") && text.contains("auto_create"),
        "{text}"
    );

    cfg.auto_create = true;
    TablestoreSink::new(&cfg)
        .unwrap()
        .preflight()
        .await
        .unwrap();
    assert_eq!(server.tables(), ["fresh_table"]);
    let actions: Vec<String> = server.seen().into_iter().map(|s| s.action).collect();
    assert_eq!(
        actions,
        [
            "DescribeTimeseriesTable",
            "DescribeTimeseriesTable",
            "CreateTimeseriesTable",
            "DescribeTimeseriesTable"
        ]
    );
}

#[tokio::test]
async fn a_slow_reply_times_out_and_the_retry_is_an_upsert_of_the_same_point() {
    let server = TablestoreServer::start();
    server.inject(Fault::Slow(Duration::from_secs(3)));
    let mut cfg = config(&server);
    cfg.request_timeout = Duration::from_millis(300);
    let driver = DriverConfig {
        batch_size: 3,
        batch_time: Duration::from_secs(3600),
        request_ttl: None,
        ..DriverConfig::default()
    };
    let running = start(cfg, driver);
    let outcomes = send(&running, &payloads(3, 1)).await;
    running.shutdown().await;
    assert_eq!(*outcomes.lock().unwrap(), vec![AckOutcome::Accepted; 3]);
    // The slow request was processed, its answer came too late, and the
    // retry wrote the same three points again.
    assert_eq!(server.points().len(), 3);
    assert!(server.points().iter().all(|p| p.writes == 2));
}

#[tokio::test]
async fn an_answer_with_a_forged_signature_is_not_trusted_and_the_write_is_retried() {
    let server = TablestoreServer::start();
    server.inject(Fault::ForgedSignature);
    let driver = DriverConfig {
        batch_size: 2,
        batch_time: Duration::from_secs(3600),
        request_ttl: None,
        ..DriverConfig::default()
    };
    let running = start(config(&server), driver);
    let outcomes = send(&running, &payloads(2, 1)).await;
    running.shutdown().await;
    assert_eq!(*outcomes.lock().unwrap(), vec![AckOutcome::Accepted; 2]);
    let puts = server
        .seen()
        .into_iter()
        .filter(|s| s.action == "PutTimeseriesData")
        .count();
    assert_eq!(puts, 2, "the forged answer was not taken as a success");
    // The first write did happen; the retry rewrote the same points.
    assert!(server.points().iter().all(|p| p.writes == 2));
}

// ----- the official Python SDK -------------------------------------------

/// The SDK's Python interpreter, or a failure that says how to get it.
fn python() -> PathBuf {
    let default =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tablestore-sdk/venv/bin/python");
    let python = std::env::var_os("WEIR_TABLESTORE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or(default);
    let ok = Command::new(&python)
        .args(["-c", "import tablestore, crc32c"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the official Tablestore Python SDK is not available at {}.\n\
         Install it (./tests/run does this), e.g.:\n  \
         python3 -m venv target/tablestore-sdk/venv && \
         target/tablestore-sdk/venv/bin/pip install \"tablestore>=6.1.0\"\n\
         then set WEIR_TABLESTORE_PYTHON=target/tablestore-sdk/venv/bin/python",
        python.display()
    );
    python
}

fn sdk_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/tablestore-sdk")
        .join(name)
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn text(&mut self) -> String {
        const PIECES: [&str; 8] = ["a", "Zz", "é", "温度", "🌡", " ", "x-1", "\\\""];
        (0..self.below(5))
            .map(|_| PIECES[self.below(8) as usize])
            .collect()
    }
}

#[test]
fn the_official_sdk_decodes_weirs_request_bodies_to_exactly_the_intended_rows() {
    let python = python();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let spec = RowSpec {
        table: "tstable".into(),
        measurement: Template::parse("${m}").unwrap(),
        data_source: Some(Template::parse("${src}").unwrap()),
        tags: vec![
            ("region".into(), Template::parse("${region}").unwrap()),
            ("client".into(), Template::parse("c-${id}").unwrap()),
        ],
        fields: None,
        string_fields: BTreeSet::from(["s_text".into()]),
        binary_fields: BTreeSet::new(),
        strings: StringType::Binary,
        int_as_double: false,
        timestamp: Some(Template::parse("${t}").unwrap()),
        meta_update_mode: MetaUpdateMode::Normal,
        undefined_vars_as_null: false,
    };

    // (payload, expected decoded row) for 250 random rows: two requests.
    // Rows come in runs, as a device's messages do: half the time a row
    // has the previous row's fields, measurement, data source and tags,
    // and only its values differ.
    struct Shape {
        id: usize,
        /// count, ok, Temp, s_text, blob
        has: [bool; 5],
        measurement: String,
        src: String,
        region: String,
    }
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    let mut shape: Option<Shape> = None;
    for i in 0..250 {
        if shape.is_none() || rng.below(2) == 0 {
            let mut has = [(); 5].map(|()| rng.below(2) == 0);
            has[4] |= !has.contains(&true);
            let measurement = format!(
                "m{}{}",
                rng.below(3),
                ["", "_é", "温"][rng.below(3) as usize]
            );
            let src = if rng.below(3) == 0 {
                String::new()
            } else {
                rng.text()
            };
            let region = ["hz", "sh", "北京"][rng.below(3) as usize].to_owned();
            shape = Some(Shape {
                id: i,
                has,
                measurement,
                src,
                region,
            });
        }
        let Some(Shape {
            id,
            has,
            measurement,
            src,
            region,
        }) = &shape
        else {
            unreachable!("a shape is drawn for the first row")
        };
        let mut fields: Vec<(String, serde_json::Value, u8)> = Vec::new();
        if has[0] {
            fields.push(("count".into(), serde_json::json!(rng.next() as i64), 1));
        }
        if has[1] {
            fields.push(("ok".into(), serde_json::json!(rng.below(2) == 0), 2));
        }
        if has[2] {
            fields.push((
                "Temp".into(),
                serde_json::json!(rng.below(10_000) as f64 / 7.0),
                3,
            ));
        }
        if has[3] {
            fields.push(("s_text".into(), serde_json::json!(rng.text()), 4));
        }
        if has[4] {
            fields.push(("blob".into(), serde_json::json!(rng.text()), 5));
        }
        let t = rng.below(1 << 52) as i64;
        let mut payload = serde_json::Map::new();
        payload.insert("m".into(), serde_json::json!(measurement));
        payload.insert("src".into(), serde_json::json!(src));
        payload.insert("region".into(), serde_json::json!(region));
        payload.insert("id".into(), serde_json::json!(id));
        payload.insert("t".into(), serde_json::json!(t));
        for (k, v, _) in &fields {
            payload.insert(k.clone(), v.clone());
        }
        // The payload's own keys are fields too, typed by the same rules.
        let mut all: Vec<(String, serde_json::Value, u8)> = vec![
            ("m".into(), serde_json::json!(measurement), 5),
            ("src".into(), serde_json::json!(src), 5),
            ("region".into(), serde_json::json!(region), 5),
            ("id".into(), serde_json::json!(id), 1),
            ("t".into(), serde_json::json!(t), 1),
        ];
        all.extend(fields);
        all.iter_mut().for_each(|f| f.0 = f.0.to_lowercase());
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let by_type = |ty: u8| -> serde_json::Value {
            let values: Vec<serde_json::Value> = all
                .iter()
                .filter(|f| f.2 == ty)
                .map(|f| match ty {
                    5 => serde_json::json!(hex(f.1.as_str().unwrap().as_bytes())),
                    _ => f.1.clone(),
                })
                .collect();
            if values.is_empty() {
                serde_json::Value::Null
            } else {
                values.into()
            }
        };
        let mut tags = vec![
            vec!["client".to_owned(), format!("c-{id}")],
            vec!["region".to_owned(), region.clone()],
        ];
        tags.sort();
        expected.push(serde_json::json!({
            "measurement": measurement,
            "field_names": all.iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
            "field_types": all.iter().map(|f| f.2).collect::<Vec<_>>(),
            "rows": [{
                "data_source": src,
                "legacy_tags": "",
                "time": t,
                "meta_cache_update_time": 0,
                "tag_list_present": true,
                "tags": tags,
                "long": by_type(1),
                "bool": by_type(2),
                "double": by_type(3),
                "string": by_type(4),
                "binary": by_type(5),
            }],
        }));
        batch.push(Message::new(
            "t",
            serde_json::Value::Object(payload).to_string(),
            0,
        ));
    }
    let mut rejected = Vec::new();
    let chunks = spec.encode(&batch, &mut rejected);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(
        chunks.iter().map(|c| c.indices.len()).collect::<Vec<_>>(),
        [200, 50]
    );

    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let f = dir.path().join(format!("body-{i}.bin"));
            std::fs::write(&f, &c.body).unwrap();
            f
        })
        .collect();
    let out = Command::new(&python)
        .arg(sdk_script("decode.py"))
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoded: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decoded.len(), 2);
    let mut groups = Vec::new();
    for body in &decoded {
        assert_eq!(body["init_errors"], serde_json::json!([]));
        assert_eq!(body["table"], "tstable");
        assert_eq!(body["type_set"], true);
        assert_eq!(body["type"], 0);
        assert_eq!(body["crc_ok"], true);
        assert_eq!(body["meta_update_mode"], 0);
        assert_eq!(body["supported_table_version"], 1);
        groups.extend(body["groups"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(groups.len(), expected.len());
    for (i, (got, want)) in groups.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "row {i}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sdk_put(
    server: &TablestoreServer,
    secret: &str,
    region: Option<&str>,
    rows: serde_json::Value,
) -> serde_json::Value {
    let out = Command::new(python())
        .arg(sdk_script("client.py"))
        .args([
            &server.endpoint(),
            KEY_ID,
            secret,
            "myinst",
            "tstable",
            region.unwrap_or("-"),
        ])
        .arg(rows.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_official_sdk_client_writes_to_the_test_server_and_accepts_its_signed_answers() {
    let server = TablestoreServer::start();
    let rows = serde_json::json!([
        {"measurement": "cpu", "data_source": "host-1", "tags": {"region": "hz", "b": "2"},
         "fields": {"usage": 1.5, "count": 7, "ok": true, "s": "x", "raw": {"binary": "0102"}},
         "time": 1_700_000_000_000_001i64},
        {"measurement": "温度", "data_source": "", "tags": {},
         "fields": {"v": -3}, "time": 5},
    ]);
    // V2 (no region), then V4 (with a region).
    assert_eq!(
        sdk_put(&server, SECRET, None, rows.clone()),
        serde_json::json!({"ok": true})
    );
    let v4_rows = serde_json::json!([{"measurement": "mem", "data_source": "h", "tags": {"k": "v"}, "fields": {"free": 12}, "time": 9}]);
    assert_eq!(
        sdk_put(&server, SECRET, Some("cn-hangzhou"), v4_rows),
        serde_json::json!({"ok": true})
    );
    let signatures: Vec<&str> = server.seen().iter().map(|s| s.signature).collect();
    assert_eq!(signatures, ["v2", "v4"]);

    let cpu = server.query("cpu", Some("host-1"), &[("region", "hz")]);
    assert_eq!(cpu.len(), 1);
    assert_eq!(
        cpu[0].fields,
        BTreeMap::from([
            ("count".into(), Value::Long(7)),
            ("ok".into(), Value::Boolean(true)),
            ("raw".into(), Value::Binary(vec![1, 2])),
            ("s".into(), Value::String("x".into())),
            ("usage".into(), Value::Double(1.5)),
        ])
    );
    assert_eq!(cpu[0].time_us, 1_700_000_000_000_001);
    assert_eq!(server.query("温度", Some(""), &[]).len(), 1);
    assert_eq!(server.query("mem", None, &[("k", "v")]).len(), 1);

    // A wrong secret: the SDK sees the service's unsigned 403.
    let refused = sdk_put(&server, "wrong", None, rows);
    assert_eq!(refused["status"], 403, "{refused}");
    assert_eq!(refused["code"], "OTSAuthFailed");
    assert_eq!(refused["message"], "Signature mismatch.");
    assert_eq!(server.points().len(), 3);
}

// ----- the test server refuses what the service refuses -----------------

/// Sends `body` to `action` signed V2 with `secret`, after `tweak` may
/// change the headers; returns (status, error code, error message).
async fn raw_call(
    server: &TablestoreServer,
    method: reqwest::Method,
    action: &str,
    body: Vec<u8>,
    tweak: impl FnOnce(&mut Vec<(String, String)>),
) -> (u16, String, String) {
    use prost::Message as _;
    use weir::sink::tablestore::sign;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut headers: Vec<(String, String)> = vec![
        ("x-ots-date".into(), sign::ots_date(now)),
        ("x-ots-apiversion".into(), "2015-12-31".into()),
        ("x-ots-accesskeyid".into(), KEY_ID.into()),
        ("x-ots-instancename".into(), "myinst".into()),
        ("x-ots-contentmd5".into(), sign::content_md5(&body)),
    ];
    tweak(&mut headers);
    let signature = sign::v2_signature(
        SECRET,
        action,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
    );
    headers.push(("x-ots-signature".into(), signature));
    let mut request = reqwest::Client::new()
        .request(method, format!("{}/{action}", server.endpoint()))
        .body(body);
    for (n, v) in &headers {
        request = request.header(n.as_str(), v.as_str());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    let error = weir::sink::tablestore::proto::Error::decode(bytes.as_ref()).unwrap_or_default();
    (status, error.code, error.message.unwrap_or_default())
}

fn row(fields: Vec<(&str, weir::sink::tablestore::FieldValue)>) -> weir::sink::tablestore::Row {
    weir::sink::tablestore::Row {
        measurement: "cpu".into(),
        data_source: String::new(),
        tags: vec![],
        time_us: 1,
        fields: fields.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
    }
}

fn put_body(rows: &[weir::sink::tablestore::Row]) -> Vec<u8> {
    use weir::sink::tablestore::encode;
    encode::request_body(
        "tstable",
        encode::flat_rows(rows.iter(), rows.len()),
        MetaUpdateMode::Normal,
    )
}

#[tokio::test]
async fn the_test_server_refuses_what_the_service_refuses_with_its_codes() {
    use weir::sink::tablestore::FieldValue;
    // This test's own raw client: reqwest is built without a default
    // crypto provider (weir's rustls uses ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TablestoreServer::start();
    let ok = put_body(&[row(vec![("v", FieldValue::Long(1))])]);
    let post = reqwest::Method::POST;
    let same = |_: &mut Vec<(String, String)>| {};

    assert_eq!(
        raw_call(
            &server,
            reqwest::Method::GET,
            "PutTimeseriesData",
            vec![],
            same
        )
        .await,
        (
            405,
            "OTSMethodNotAllowed".into(),
            "Only POST method for requests is supported.".into()
        )
    );
    let drop_date = |h: &mut Vec<(String, String)>| h.retain(|(n, _)| n != "x-ots-date");
    assert_eq!(
        raw_call(
            &server,
            post.clone(),
            "PutTimeseriesData",
            ok.clone(),
            drop_date
        )
        .await,
        (
            400,
            "OTSParameterInvalid".into(),
            "Missing header: x-ots-date.".into()
        )
    );
    let bad_date = |h: &mut Vec<(String, String)>| h[0].1 = "2024-01-02 03:04:05".into();
    assert_eq!(
        raw_call(
            &server,
            post.clone(),
            "PutTimeseriesData",
            ok.clone(),
            bad_date
        )
        .await
        .2,
        "Invalid date format: 2024-01-02 03:04:05."
    );
    assert_eq!(
        raw_call(&server, post.clone(), "PutRowz", vec![], same)
            .await
            .2,
        "Unsupported operation: PutRowz."
    );
    let wrong_md5 = |h: &mut Vec<(String, String)>| h[4].1 = "1B2M2Y8AsgTpgAmY7PhCfg==".into();
    assert_eq!(
        raw_call(
            &server,
            post.clone(),
            "PutTimeseriesData",
            ok.clone(),
            wrong_md5
        )
        .await,
        (
            403,
            "OTSAuthFailed".into(),
            "Mismatch between MD5 value of request body and x-ots-contentmd5 in header.".into()
        )
    );
    let other_key = |h: &mut Vec<(String, String)>| h[2].1 = "nobody".into();
    assert_eq!(
        raw_call(
            &server,
            post.clone(),
            "PutTimeseriesData",
            ok.clone(),
            other_key
        )
        .await
        .2,
        "The AccessKeyID does not exist."
    );
    let other_instance = |h: &mut Vec<(String, String)>| h[3].1 = "elsewhere".into();
    assert_eq!(
        raw_call(
            &server,
            post.clone(),
            "PutTimeseriesData",
            ok.clone(),
            other_instance
        )
        .await
        .2,
        "The instance is not found."
    );
    let old = |h: &mut Vec<(String, String)>| h[0].1 = "2020-01-02T03:04:05.000Z".into();
    assert_eq!(
        raw_call(&server, post.clone(), "PutTimeseriesData", ok.clone(), old)
            .await
            .2,
        "Mismatch between system time and x-ots-date: 2020-01-02T03:04:05.000Z."
    );
    let too_large = vec![0u8; (4 << 20) + 1];
    assert_eq!(
        raw_call(&server, post.clone(), "PutTimeseriesData", too_large, same)
            .await
            .0,
        413
    );

    // Bodies: CRC, row count, names, value sizes.
    // One byte of the FlatBuffer changed ("cpu" → "cpv"), the CRC not.
    let mut bad_crc = ok.clone();
    let at = bad_crc.windows(3).position(|w| w == b"cpu").unwrap();
    bad_crc[at + 2] = b'v';
    let refused = |r: (u16, String, String)| {
        assert_eq!((r.0, r.1.as_str()), (400, "OTSParameterInvalid"), "{r:?}");
        r.2
    };
    let crc = refused(raw_call(&server, post.clone(), "PutTimeseriesData", bad_crc, same).await);
    assert_eq!(crc, "Checksum mismatch of flatbuffer rows data.");
    let many: Vec<_> = (0..201)
        .map(|_| row(vec![("v", FieldValue::Long(1))]))
        .collect();
    assert!(
        refused(
            raw_call(
                &server,
                post.clone(),
                "PutTimeseriesData",
                put_body(&many),
                same
            )
            .await
        )
        .contains("exceeds the limit of 200")
    );
    for (name, why) in [
        ("Upper", "invalid field name"),
        ("x_tags", "invalid field name"),
        ("9a", "invalid field name"),
    ] {
        let body = put_body(&[row(vec![(name, FieldValue::Long(1))])]);
        assert!(
            refused(raw_call(&server, post.clone(), "PutTimeseriesData", body, same).await)
                .contains(why),
            "{name}"
        );
    }
    let huge = put_body(&[row(vec![(
        "s",
        FieldValue::String("x".repeat((2 << 20) + 1)),
    )])]);
    assert!(
        refused(raw_call(&server, post.clone(), "PutTimeseriesData", huge, same).await)
            .contains("larger than 2 MB")
    );
    let mut bad_measurement = row(vec![("v", FieldValue::Long(1))]);
    bad_measurement.measurement = "a#b".into();
    assert!(
        refused(
            raw_call(
                &server,
                post.clone(),
                "PutTimeseriesData",
                put_body(&[bad_measurement]),
                same
            )
            .await
        )
        .contains("invalid measurement")
    );

    // Nothing refused was stored; a good body is.
    assert!(server.points().is_empty());
    assert_eq!(
        raw_call(&server, post, "PutTimeseriesData", ok, same)
            .await
            .0,
        200
    );
    assert_eq!(server.points().len(), 1);
}

/// Sends headers promising a 100-byte body and `first` bytes of it, lets
/// `more` send the rest its way, and returns how long the answer took
/// from then, its status line and headers (lowercase), and its error.
fn answer_to_a_slow_body(
    server: &TablestoreServer,
    first: usize,
    more: impl FnOnce(std::net::TcpStream) + Send + 'static,
) -> (Duration, String, weir::sink::tablestore::proto::Error) {
    use std::io::{Read as _, Write as _};

    use prost::Message as _;

    let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
    // A server that never answers fails the test instead of hanging it.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /PutTimeseriesData HTTP/1.1\r\nHost: {}\r\nContent-Length: 100\r\n\
         x-ots-apiversion: 2015-12-31\r\n\r\n",
        server.addr()
    )
    .unwrap();
    stream.write_all(&vec![0u8; first]).unwrap();
    let sent = std::time::Instant::now();
    let writer = stream.try_clone().unwrap();
    std::thread::spawn(move || more(writer));

    // The answer, then the end of the connection: closed, or reset when
    // bytes still came after the server closed it.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !answer.is_empty() => {
                break;
            }
            Err(e) => panic!("no answer: {e}"),
        }
    }
    let waited = sent.elapsed();
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    let error = weir::sink::tablestore::proto::Error::decode(&answer[split + 4..]).unwrap();
    (waited, head, error)
}

#[test]
fn a_client_that_stalls_on_its_body_is_answered_408_request_timeout_and_disconnected() {
    const TIMEOUT: Duration = Duration::from_millis(200);
    let server = TablestoreServer::start_with(Options {
        body_timeout: TIMEOUT,
        ..Options::default()
    });

    // 10 bytes of 100, then nothing.
    let (waited, head, error) = answer_to_a_slow_body(&server, 10, drop);
    assert!(
        waited >= TIMEOUT && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(head.starts_with("http/1.1 408 "), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert!(head.contains("\r\nx-ots-requestid: "), "{head}");
    assert_eq!(error.code, "OTSRequestTimeout");
    assert_eq!(error.message.as_deref(), Some("Request timeout."));

    // A byte every 20 ms: still sending, but too slowly to finish in time.
    let trickle = |mut stream: std::net::TcpStream| {
        use std::io::Write as _;
        while stream.write_all(b"x").is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (waited, head, error) = answer_to_a_slow_body(&server, 0, trickle);
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(head.starts_with("http/1.1 408 "), "{head}");
    assert_eq!(error.code, "OTSRequestTimeout");

    let seen = server.seen();
    let seen: Vec<_> = seen.iter().map(|s| (s.status, s.code.as_deref())).collect();
    assert_eq!(seen, [(408, Some("OTSRequestTimeout")); 2]);
    assert!(server.points().is_empty());
}
