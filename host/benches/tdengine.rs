//! The TDengine sink: what encoding costs per row, and how many rows per
//! second go through the official client to the taosAdapter stand-in.
//!
//! - **encode**: the seed scenario's template (`INSERT INTO
//!   iot_data.temp_hum(ts, temp, hum, clientid) VALUES (…)`) over batches of
//!   1000 readings from 100 clients (payload decode, rendering, escaping,
//!   grouping by table, statement budget): ns per row.
//! - **write**: `WEIR_BENCH_N` readings (default 100 000) through the sink
//!   driver at batch 1000 to a server reporting 3.3.6.0 (binary path) on
//!   loopback, from the first send to the last acknowledgement: rows/s,
//!   with the encode share of that time alongside.
//!
//! The server runs in the same process and on the same cores, so the write
//! figure is a floor for weir's own cost, not TDengine's throughput.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use weir::ack::track;
use weir::config::{BrokerConfig, DriverConfig, MqttProtocol, Secret, SinkConfig, SinkKind};
use weir::sink::tdengine::{Encoder, MAX_STATEMENT_BYTES, SqlTemplate, TdengineMode};
use weir::sink::{SinkContext, SinkInput};
use weir::{Fields, Message};
use weir_tdengine_server::{Options, TdServer};
use weir_test_support::thread_cpu;

const SEED_SQL: &str = "INSERT INTO iot_data.temp_hum(ts, temp, hum, clientid) VALUES (${ts}, ${temp}, ${hum}, '${clientid}')";

fn readings(n: usize, base: i64) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let client = format!("c{}", i % 100);
            let mut m = Message::new(
                format!("devices/{client}/temp_hum"),
                format!(r#"{{"temp": {}.5, "hum": {}}}"#, 20 + i % 10, 60 + i % 30),
                base + (i / 100) as i64,
            );
            m.fields = Fields::from_pairs([("clientid", client.as_str())]);
            m
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("WEIR_BENCH_N")
        .ok()
        .map(|v| v.parse().expect("WEIR_BENCH_N is a number"))
        .unwrap_or(100_000);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;

    // Encoding.
    let encoder = Encoder::Sql {
        template: SqlTemplate::parse(SEED_SQL).unwrap(),
        null_undefined: false,
        max_bytes: MAX_STATEMENT_BYTES,
    };
    let batch = readings(1000, now);
    let mut rejected = Vec::new();
    for _ in 0..50 {
        black_box(encoder.encode(&batch, &mut rejected));
    }
    let rounds = 500;
    let started = Instant::now();
    let cpu_started = thread_cpu();
    for _ in 0..rounds {
        black_box(encoder.encode(black_box(&batch), &mut rejected));
    }
    let rows = (rounds * batch.len()) as f64;
    let encode_ns = started.elapsed().as_nanos() as f64 / rows;
    let encode_cpu_ns = (thread_cpu() - cpu_started).as_nanos() as f64 / rows;
    assert!(rejected.is_empty());
    // CPU time of this thread is what encoding costs; wall time also
    // counts the time other processes had the core (shared machines).
    println!(
        "encode: {encode_cpu_ns:.0} ns CPU per row ({encode_ns:.0} ns wall; batch 1000, target <= 1000)"
    );

    // Writing through the official client.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = TdServer::start(Options::version("3.3.6.0")).await;
        server.execute("CREATE DATABASE iot_data").unwrap();
        server
            .execute("CREATE TABLE iot_data.temp_hum (ts TIMESTAMP, clientid NCHAR(256), temp FLOAT, hum FLOAT)")
            .unwrap();
        let config = SinkConfig {
            name: "td".into(),
            driver: DriverConfig {
                batch_size: 1000,
                batch_time: Duration::from_millis(5),
                inflight_window: 1,
                request_ttl: None,
                ..DriverConfig::default()
            },
            kind: SinkKind::Tdengine {
                dsn: Secret::new(server.dsn("root", "taosdata")),
                mode: TdengineMode::Sql(SqlTemplate::parse(SEED_SQL).unwrap()),
                auto_create: Vec::new(),
                timeout: Duration::from_secs(30),
                health_check_interval: Duration::from_secs(3600),
            },
        };
        let context = SinkContext {
            broker: BrokerConfig {
                host: "127.0.0.1".into(),
                port: 1,
                tls: None,
                client_id: "bench".into(),
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
        let sink = weir::sink::start(&config, None, &context).unwrap();
        let messages = readings(n, now - n as i64);
        let done = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        for message in messages {
            let d = done.clone();
            let ack = track(move |_| {
                d.fetch_add(1, Ordering::Relaxed);
            });
            sink.handle.send(SinkInput { message, ack }).await.unwrap();
        }
        sink.shutdown().await;
        let elapsed = started.elapsed();
        assert_eq!(done.load(Ordering::Relaxed), n);
        let statements = server.statements().len();
        println!(
            "write: {n} rows in {:.2} s = {:.0} rows/s through taos 0.12.3 to the test server ({statements} statements); encoding is {:.1}% of that",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            100.0 * encode_cpu_ns * n as f64 / elapsed.as_nanos() as f64
        );
    });
}
