//! The TDengine sink end to end: the official `taos` client (inside weir
//! and for reading back) against the taosAdapter stand-in of
//! `tests/tdengine-server`, on both protocol paths — a server reporting
//! 3.3.0.0 (JSON `query`/`fetch`/`fetch_block`) and one reporting 3.3.6.0
//! (binary actions 6 and 7). The seed scenario runs the real `weir` binary
//! against a real Mosquitto.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use taos::{AsyncFetchable, AsyncQueryable, AsyncTBuilder, TaosBuilder, TryStreamExt};
use weir::ack::{AckOutcome, AckToken, track};
use weir::config::{DriverConfig, Secret, SinkConfig, SinkKind};
use weir::sink::tdengine::{SqlTemplate, TdengineMode};
use weir::sink::{RunningSink, SinkContext, SinkInput};
use weir::{Fields, Message};
use weir_tdengine_server::{Fault, Match, Options, TdError, TdServer, codes};
use weir_test_support::Mosquitto;
use weir_test_support::mqtt::publish_many_blocking;
use weir_test_support::weir::WeirProcess;

/// Both protocol paths.
const VERSIONS: [&str; 2] = ["3.3.0.0", "3.3.6.0"];
/// Bound of every wait.
const WAIT: Duration = Duration::from_secs(60);

const SEED_SQL: &str = "INSERT INTO iot_data.temp_hum(ts, temp, hum, clientid) VALUES (${ts}, ${temp}, ${hum}, '${clientid}')";
const SEED_TABLE: &str =
    "CREATE TABLE iot_data.temp_hum (ts TIMESTAMP, clientid NCHAR(256), temp FLOAT, hum FLOAT)";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn server(version: &str) -> TdServer {
    let server = TdServer::start(Options::version(version)).await;
    server.execute("CREATE DATABASE iot_data").unwrap();
    server.execute(SEED_TABLE).unwrap();
    server
}

/// Rows of `sql`, read through the official client, as JSON values.
async fn read(server: &TdServer, sql: &str) -> Vec<Vec<serde_json::Value>> {
    let taos = TaosBuilder::from_dsn(server.dsn("root", "taosdata"))
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut result = taos.query(sql).await.unwrap();
    let rows: Vec<Vec<serde_json::Value>> = result
        .deserialize::<Vec<serde_json::Value>>()
        .try_collect()
        .await
        .unwrap();
    rows
}

fn driver(batch_size: usize) -> DriverConfig {
    DriverConfig {
        batch_size,
        batch_time: Duration::from_millis(20),
        request_ttl: None,
        ..DriverConfig::default()
    }
}

fn start_sink(
    server: &TdServer,
    sql: &str,
    driver: DriverConfig,
    dead_letter: Option<weir::sink::SinkHandle>,
) -> anyhow::Result<RunningSink> {
    let config = SinkConfig {
        name: "td".into(),
        driver,
        kind: SinkKind::Tdengine {
            dsn: Secret::new(server.dsn("root", "taosdata")),
            mode: TdengineMode::Sql(SqlTemplate::parse(sql).unwrap()),
            auto_create: Vec::new(),
            timeout: Duration::from_secs(2),
            health_check_interval: Duration::from_secs(3600),
        },
    };
    weir::sink::start(&config, dead_letter, &context())
}

/// What a sink is started with; the broker is only for MQTT sinks.
fn context() -> SinkContext {
    SinkContext {
        broker: weir::config::BrokerConfig {
            host: "127.0.0.1".into(),
            port: 1,
            tls: None,
            client_id: "t".into(),
            username: None,
            password: None,
            protocol: weir::config::MqttProtocol::V311,
            keep_alive: Duration::from_secs(30),
            clean_session: true,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(200),
            embedded: None,
        },
    }
}

type Outcome = Arc<Mutex<Option<AckOutcome>>>;

fn tracked() -> (AckToken, Outcome) {
    let outcome: Outcome = Arc::default();
    let o = outcome.clone();
    (track(move |x| *o.lock().unwrap() = Some(x)), outcome)
}

fn reading(client: &str, payload: serde_json::Value, ts: i64) -> Message {
    let mut m = Message::new(
        format!("devices/{client}/temp_hum"),
        payload.to_string(),
        ts,
    );
    m.fields = Fields::from_pairs([("clientid", client)]);
    m
}

async fn send_all(sink: &RunningSink, messages: Vec<Message>) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for message in messages {
        let (ack, outcome) = tracked();
        sink.handle.send(SinkInput { message, ack }).await.unwrap();
        outcomes.push(outcome);
    }
    outcomes
}

fn all_accepted(outcomes: &[Outcome]) -> bool {
    outcomes
        .iter()
        .all(|o| *o.lock().unwrap() == Some(AckOutcome::Accepted))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenario_lands_in_tdengine_with_exact_values_client_ids_and_timestamps() {
    for version in VERSIONS {
        let td = server(version).await;
        let broker = Mosquitto::start();
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive.jsonl");
        let manifest = format!(
            r#"
[broker]
url = "{url}"
client_id = "weir-td-seed-{pid}-{tag}"

[http]
enabled = false

[sinks.td]
type = "tdengine"
dsn = "{dsn}"
sql = "{sql}"
batch_size = 100
batch_time = "20ms"

[sinks.archive]
type = "file"
path = "{archive}"

[[rules]]
name = "readings"
from = ["devices/{{clientid}}/temp_hum"]
qos = 1
to = ["td", "archive"]
"#,
            url = broker.url(),
            dsn = td.dsn("root", "taosdata"),
            sql = SEED_SQL.replace('"', "\\\""),
            archive = archive.display(),
            pid = std::process::id(),
            tag = version.replace('.', ""),
        );
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, manifest).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
        command
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(["--log", "info,weir=debug", "run"])
            .arg(&path);
        // Killed when dropped, so a failed assertion leaves no weir behind.
        let weir = WeirProcess::spawn(command, dir.path().join("weir.log"));
        weir.wait_for_log("Subscribed.", 1);
        let url = broker.url();
        // One reading at a time, 10 ms apart: weir stamps each on arrival
        // (milliseconds), and two rows of the one table with the same
        // timestamp replace each other, as in TDengine. The spacing is
        // wall-clock time in another process, so no paused clock can stand
        // in for it.
        tokio::task::spawn_blocking(move || {
            for i in 0..9 {
                std::thread::sleep(Duration::from_millis(10));
                publish_many_blocking(
                    &url,
                    |_| format!("devices/c{}/temp_hum", i % 3),
                    |_| format!(r#"{{"temp": {}.5, "hum": {}}}"#, 20 + i, 80 + i).into_bytes(),
                    1,
                    1,
                );
            }
        })
        .await
        .unwrap();

        // What weir saw, from the file sink of the same rule.
        let deadline = Instant::now() + WAIT;
        let seen: Vec<(i64, String, f64, f64)> = loop {
            let archived = std::fs::read_to_string(&archive).unwrap_or_default();
            if archived.lines().count() >= 9 {
                break archived
                    .lines()
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        (
                            v["ts"].as_i64().unwrap(),
                            v["fields"]["clientid"].as_str().unwrap().to_owned(),
                            v["payload"]["temp"].as_f64().unwrap(),
                            v["payload"]["hum"].as_f64().unwrap(),
                        )
                    })
                    .collect();
            }
            assert!(Instant::now() < deadline, "{version}: archived {archived}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let clients: BTreeSet<&str> = seen.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(clients.into_iter().collect::<Vec<_>>(), ["c0", "c1", "c2"]);
        // Two readings weir stamped in the same millisecond (its network
        // thread held up on a busy machine, then reading both at once) are
        // one row: the later write replaces the earlier, as in TDengine.
        let mut by_ts = BTreeMap::new();
        for row in &seen {
            by_ts.insert(row.0, row.clone());
        }
        let expected: Vec<(i64, String, f64, f64)> = by_ts.into_values().collect();

        let rows = loop {
            let rows = read(&td, "select ts, clientid, temp, hum from iot_data.temp_hum").await;
            if rows.len() >= expected.len() {
                break rows;
            }
            assert!(
                Instant::now() < deadline,
                "{version}: {} rows of {}, weir saw {seen:?}",
                rows.len(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (code, log) = weir.terminate();
        assert_eq!(code, 0, "{log}");

        let mut got: Vec<(i64, String, f64, f64)> = rows
            .iter()
            .map(|r| {
                (
                    ts_ms(&r[0]),
                    r[1].as_str().unwrap().to_owned(),
                    r[2].as_f64().unwrap(),
                    r[3].as_f64().unwrap(),
                )
            })
            .collect();
        got.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        assert_eq!(got, expected, "{version}");
    }
}

/// A timestamp read back: the client gives RFC 3339 text or a number.
fn ts_ms(v: &serde_json::Value) -> i64 {
    if let Some(n) = v.as_i64() {
        return n;
    }
    let text = v.as_str().unwrap_or_else(|| panic!("timestamp {v}"));
    let t = humantime::parse_rfc3339_weak(text.trim_end_matches('Z').split('+').next().unwrap())
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_with_quotes_backslashes_newlines_emoji_and_10kb_round_trip_exactly() {
    for version in VERSIONS {
        let td = server(version).await;
        td.execute(
            "CREATE TABLE iot_data.notes (ts TIMESTAMP, note NCHAR(200), big VARCHAR(16000))",
        )
        .unwrap();
        let sink = start_sink(
            &td,
            "INSERT INTO iot_data.notes (ts, note, big) VALUES (${ts}, ${note}, '${big}')",
            driver(100),
            None,
        )
        .unwrap();
        let big: String = (0..10_240)
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        let notes = [
            "it's",
            r"C:\temp\new",
            r#"say "hi""#,
            "line one\nline two\r\n\ttabbed",
            "emoji 🌡️💧 and ünïcödé",
            r"\'; DROP DATABASE iot_data; --",
        ];
        let base = now_ms();
        let messages = notes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                reading(
                    "c1",
                    serde_json::json!({"note": n, "big": format!("{big}{i}")}),
                    base + i as i64,
                )
            })
            .collect();
        let outcomes = send_all(&sink, messages).await;
        sink.shutdown().await;
        assert!(all_accepted(&outcomes), "{version}");
        let rows = read(&td, "select note, big from iot_data.notes order by ts").await;
        let got: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r[0].as_str().unwrap(), r[1].as_str().unwrap()))
            .collect();
        assert_eq!(got.len(), notes.len(), "{version}");
        for (i, (note, b)) in got.iter().enumerate() {
            assert_eq!(*note, notes[i], "{version}");
            assert_eq!(*b, format!("{big}{i}"), "{version}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_messages_at_batch_1000_are_all_written_in_statements_under_1_mib() {
    for version in VERSIONS {
        let td = server(version).await;
        // Batches close by count only: with `driver`'s 20 ms, a sender
        // that stalls on a loaded machine sends a short batch early.
        let by_count = DriverConfig {
            batch_time: Duration::from_secs(600),
            ..driver(1000)
        };
        let sink = start_sink(&td, SEED_SQL, by_count, None).unwrap();
        let base = now_ms() - 200_000;
        // 100 clients, one table: a distinct timestamp per reading, or rows
        // would overwrite each other.
        let messages: Vec<Message> = (0..100_000)
            .map(|i| {
                reading(
                    &format!("c{}", i % 100),
                    serde_json::json!({"temp": i % 50, "hum": 50.5}),
                    base + i as i64,
                )
            })
            .collect();
        let outcomes = send_all(&sink, messages).await;
        sink.shutdown().await;
        assert!(all_accepted(&outcomes), "{version}");
        let count = read(&td, "select count(*) from iot_data.temp_hum").await;
        assert_eq!(count[0][0], serde_json::json!(100_000), "{version}");
        let statements = td.statements();
        let inserts: Vec<_> = statements
            .iter()
            .filter(|s| s.sql.starts_with("INSERT"))
            .collect();
        assert!(inserts.iter().all(|s| s.bytes <= 1 << 20 && s.code == 0));
        // One multi-row statement per batch of 1000.
        assert_eq!(inserts.len(), 100, "{version}");
        println!(
            "{version}: 100000 rows in {} INSERT statements",
            inserts.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_sql_would_pass_1_mib_is_split_into_statements_under_it() {
    for version in VERSIONS {
        let td = server(version).await;
        td.execute("CREATE TABLE iot_data.logs (ts TIMESTAMP, line VARCHAR(2000))")
            .unwrap();
        let sink = start_sink(
            &td,
            "INSERT INTO iot_data.logs (ts, line) VALUES (${ts}, ${line})",
            driver(1000),
            None,
        )
        .unwrap();
        let base = now_ms() - 10_000;
        // 1200 bytes of text, 1800 of SQL once escaped: a batch of 1000
        // takes about 1.7 MiB of SQL.
        let line = "é'\\".repeat(300);
        let messages = (0..3000)
            .map(|i| {
                reading(
                    "c1",
                    serde_json::json!({"line": format!("{i}:{line}")}),
                    base + i as i64,
                )
            })
            .collect();
        let outcomes = send_all(&sink, messages).await;
        sink.shutdown().await;
        assert!(all_accepted(&outcomes), "{version}");
        let inserts: Vec<_> = td
            .statements()
            .into_iter()
            .filter(|s| s.sql.starts_with("INSERT"))
            .collect();
        assert!(
            inserts.iter().all(|s| s.bytes <= 1 << 20 && s.code == 0),
            "{version}: {:?}",
            inserts
                .iter()
                .map(|s| (s.bytes, s.code))
                .collect::<Vec<_>>()
        );
        assert!(
            inserts.len() >= 6,
            "{version}: {} statements",
            inserts.len()
        );
        let rows = read(&td, "select line from iot_data.logs order by ts").await;
        assert_eq!(rows.len(), 3000, "{version}");
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r[0].as_str().unwrap(), format!("{i}:{line}"), "{version}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_and_a_sync_timeout_are_retried_and_nothing_is_lost_or_doubled() {
    for version in VERSIONS {
        let td = server(version).await;
        // The first INSERT is applied, then the connection dies without a
        // reply; the second gets 0x0903.
        td.inject(Match::Insert, Fault::Drop { applied: true }, 1);
        td.inject(
            Match::Insert,
            Fault::Error(TdError::new(codes::SYNC_TIMEOUT, "Sync timeout")),
            1,
        );
        let sink = start_sink(&td, SEED_SQL, driver(50), None).unwrap();
        let base = now_ms();
        let messages = (0..200)
            .map(|i| {
                reading(
                    &format!("c{}", i % 4),
                    serde_json::json!({"temp": i, "hum": 1}),
                    base + i as i64,
                )
            })
            .collect();
        let outcomes = send_all(&sink, messages).await;
        sink.shutdown().await;
        assert!(all_accepted(&outcomes), "{version}");
        assert_eq!(td.pending_faults(), 0, "{version}: both faults were hit");
        let rows = read(
            &td,
            "select ts, temp, clientid from iot_data.temp_hum order by ts",
        )
        .await;
        assert_eq!(rows.len(), 200, "{version}");
        let temps: Vec<i64> = rows.iter().map(|r| r[1].as_f64().unwrap() as i64).collect();
        assert_eq!(temps, (0..200).collect::<Vec<_>>(), "{version}");
        assert!(
            td.connections() >= 2,
            "{version}: the connection was rebuilt"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_with_an_out_of_range_timestamp_is_dead_lettered_and_the_rest_of_its_batch_written() {
    for version in VERSIONS {
        let td = server(version).await;
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join("dead.jsonl");
        let dl = weir::sink::start(
            &SinkConfig {
                name: "dead".into(),
                driver: driver(10),
                kind: SinkKind::File {
                    path: dead.clone(),
                    max_file_bytes: 1 << 20,
                    max_files: 1,
                },
            },
            None,
            &context(),
        )
        .unwrap();
        let sink = start_sink(&td, SEED_SQL, driver(20), Some(dl.handle.clone())).unwrap();
        let base = now_ms();
        let messages = (0..20)
            .map(|i| {
                // 1970: older than the database's KEEP.
                let ts = if i == 7 { 1_000 } else { base + i as i64 };
                reading("c1", serde_json::json!({"temp": i, "hum": 2}), ts)
            })
            .collect();
        let outcomes = send_all(&sink, messages).await;
        sink.shutdown().await;
        dl.shutdown().await;
        assert!(all_accepted(&outcomes), "{version}");
        let rows = read(&td, "select temp from iot_data.temp_hum order by ts").await;
        let temps: Vec<i64> = rows.iter().map(|r| r[0].as_f64().unwrap() as i64).collect();
        let expected: Vec<i64> = (0..20).filter(|i| *i != 7).collect();
        assert_eq!(temps, expected, "{version}");
        let dead_lines = std::fs::read_to_string(&dead).unwrap();
        let dead: Vec<serde_json::Value> = dead_lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(dead.len(), 1, "{version}");
        assert_eq!(dead[0]["payload"]["temp"], 7);
        assert!(
            td.statements()
                .iter()
                .any(|s| s.code == codes::TIMESTAMP_OUT_OF_RANGE)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_token_is_a_clear_start_up_error() {
    for version in VERSIONS {
        let td = server(version).await;
        let config = |dsn: String| SinkConfig {
            name: "td".into(),
            driver: driver(10),
            kind: SinkKind::Tdengine {
                dsn: Secret::new(dsn),
                mode: TdengineMode::Sql(SqlTemplate::parse(SEED_SQL).unwrap()),
                auto_create: Vec::new(),
                timeout: Duration::from_secs(2),
                health_check_interval: Duration::from_secs(3600),
            },
        };
        let err = weir::sink::preflight(&config(td.dsn("root", "wrong-pass")))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("refused the credentials"), "{version}: {err}");
        assert!(err.contains("Authentication failure"), "{version}: {err}");
        assert!(!err.contains("wrong-pass"), "the password is never shown");

        let mut options = Options::version(version);
        options.token = Some("good-token".into());
        let cloud = TdServer::start(options).await;
        let dsn = format!("ws://{}?token=bad-token", cloud.addr());
        let err = weir::sink::preflight(&config(dsn))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("refused the credentials"), "{version}: {err}");
        assert!(!err.contains("bad-token"), "the token is never shown");
    }
}

#[test]
fn weir_run_stops_with_a_clear_error_on_a_wrong_password_instead_of_crash_looping() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let td = rt.block_on(server("3.3.6.0"));
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[broker]
url = "{}"
[http]
enabled = false
[sinks.td]
type = "tdengine"
dsn = "{}"
sql = "INSERT INTO iot_data.temp_hum VALUES (${{ts}}, '${{clientid}}', ${{temp}}, ${{hum}})"
[[rules]]
name = "r"
from = ["devices/{{clientid}}/temp_hum"]
to = ["td"]
"#,
            broker.url(),
            td.dsn("root", "nope")
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("run")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!stderr.contains("nope"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_mode_writes_schemaless_rows_that_read_back_by_tag() {
    use weir::sink::tdengine::LineTemplate;
    use weir::template::Template;
    for version in VERSIONS {
        let td = server(version).await;
        let config = SinkConfig {
            name: "td".into(),
            driver: driver(100),
            kind: SinkKind::Tdengine {
                // Schemaless writes go to the DSN's database.
                dsn: Secret::new(format!("{}/iot_data", td.dsn("root", "taosdata"))),
                mode: TdengineMode::Line(LineTemplate {
                    measurement: Template::parse("readings").unwrap(),
                    tags: vec![("client".into(), Template::parse("${clientid}").unwrap())],
                    fields: vec![("temp".into(), Template::parse("${temp}").unwrap())],
                    nanoseconds: false,
                }),
                auto_create: Vec::new(),
                timeout: Duration::from_secs(2),
                health_check_interval: Duration::from_secs(3600),
            },
        };
        let sink = weir::sink::start(&config, None, &context()).unwrap();
        let base = now_ms();
        let messages = (0..10)
            .map(|i| {
                reading(
                    &format!("c {}", i % 2),
                    serde_json::json!({"temp": 20.5 + i as f64}),
                    base + i as i64,
                )
            })
            .collect();
        let outcomes = send_all(&sink, messages).await;
        sink.shutdown().await;
        assert!(all_accepted(&outcomes), "{version}");
        let rows = read(&td, "select _ts, temp, client from iot_data.readings").await;
        let mut got: Vec<(i64, f64, String)> = rows
            .iter()
            .map(|r| {
                (
                    ts_ms(&r[0]),
                    r[1].as_f64().unwrap(),
                    r[2].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        got.sort_by_key(|r| r.0);
        let expected: Vec<(i64, f64, String)> = (0..10)
            .map(|i| (base + i, 20.5 + i as f64, format!("c {}", i % 2)))
            .collect();
        assert_eq!(got, expected, "{version}");
        let puts = td
            .statements()
            .into_iter()
            .filter(|s| s.sql.starts_with("readings,"))
            .count();
        assert!(puts >= 1, "{version}: schemaless writes were sent");
    }
}
