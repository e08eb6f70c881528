//! The Tablestore sink: what encoding costs per row, and how many rows per
//! second reach the test server.
//!
//! - **encode ns/row**: `RowSpec::encode` over batches of 200 typical
//!   messages (`{"temp": 23.5, "hum": 90, "ok": true, "name": "dev-17",
//!   "seq": n}`, measurement, data source and one tag from templates):
//!   JSON decode, templates, typing, FlatBuffer, protobuf and CRC-32C.
//!   Alongside, in the same run, the cost of `serde_json` decoding the same
//!   payload into a `Value` alone (what the encoder did before it read
//!   payloads itself), as a yardstick of the machine's speed. Both are
//!   printed as wall time and as the CPU time of the bench's thread, which
//!   other work sharing the cores inflates less. Best of five runs.
//!   Target: ≤ 1 µs per row.
//! - **rows/s to the test server**: N messages through the sink driver
//!   (`batch_size = 200`, `inflight_window = 4`, sync) to the test server
//!   on loopback, which verifies signatures and MD5, decodes and checks
//!   every row and stores it: N / (first send → shutdown returned).
//!
//! `WEIR_BENCH_N` sets N (default 100 000).

use std::time::{Duration, Instant};

use weir::Message;
use weir::ack::AckToken;
use weir::config::{
    BrokerConfig, DriverConfig, MetaUpdateMode, MqttProtocol, Secret, SinkConfig, SinkKind,
    StringType, TablestoreConfig,
};
use weir::message::Fields;
use weir::sink::SinkContext;
use weir::sink::tablestore::RowSpec;
use weir::template::Template;
use weir_tablestore_server::TablestoreServer;
use weir_test_support::thread_cpu;

fn main() {
    let n = std::env::var("WEIR_BENCH_N")
        .ok()
        .map(|v| v.parse::<usize>().expect("WEIR_BENCH_N is a number"))
        .unwrap_or(100_000);
    let messages: Vec<Message> = (0..n).map(message).collect();
    encode_cost(&messages);
    throughput(&messages);
}

fn message(i: usize) -> Message {
    let mut m = Message::new(
        "devices/dev-17/data",
        format!(r#"{{"temp": 23.5, "hum": 90, "ok": true, "name": "dev-17", "seq": {i}}}"#),
        1_700_000_000_000 + i as i64,
    );
    m.fields = Fields::from_pairs([("clientid", "dev-17")]);
    m
}

fn template(t: &str) -> Template {
    Template::parse(t).unwrap()
}

fn encode_cost(messages: &[Message]) {
    let spec = RowSpec {
        table: "tstable".into(),
        measurement: template("m_re2"),
        data_source: Some(template("${clientid}")),
        tags: vec![("client".into(), template("${clientid}"))],
        fields: None,
        string_fields: ["name".to_owned()].into(),
        binary_fields: Default::default(),
        strings: StringType::Binary,
        int_as_double: false,
        timestamp: None,
        meta_update_mode: MetaUpdateMode::Normal,
        undefined_vars_as_null: false,
    };
    let batches: Vec<&[Message]> = messages.chunks(200).collect();
    let mut best_encode = f64::MAX;
    let mut best_json = f64::MAX;
    let mut best_encode_cpu = f64::MAX;
    let mut best_json_cpu = f64::MAX;
    let rows = messages.len() as f64;
    for _ in 0..5 {
        let cpu = thread_cpu();
        let start = Instant::now();
        let mut bytes = 0;
        for batch in &batches {
            let mut rejected = Vec::new();
            for chunk in spec.encode(batch, &mut rejected) {
                bytes += chunk.body.len();
            }
            assert!(rejected.is_empty());
        }
        best_encode = best_encode.min(start.elapsed().as_nanos() as f64 / rows);
        best_encode_cpu = best_encode_cpu.min((thread_cpu() - cpu).as_nanos() as f64 / rows);
        std::hint::black_box(bytes);

        let cpu = thread_cpu();
        let start = Instant::now();
        for m in messages {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            std::hint::black_box(v);
        }
        best_json = best_json.min(start.elapsed().as_nanos() as f64 / rows);
        best_json_cpu = best_json_cpu.min((thread_cpu() - cpu).as_nanos() as f64 / rows);
    }
    println!(
        "tablestore encode: {best_encode:.0} ns/row (target <= 1000); serde_json decode alone: {best_json:.0} ns/row ({:.1}x of the encode)",
        best_json / best_encode
    );
    println!(
        "  CPU time of this thread: encode {best_encode_cpu:.0} ns/row; serde_json decode alone {best_json_cpu:.0} ns/row ({:.1}x of the encode)",
        best_json_cpu / best_encode_cpu
    );
}

fn throughput(messages: &[Message]) {
    let server = TablestoreServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rate = runtime.block_on(async {
        let config = SinkConfig {
            name: "ts".into(),
            driver: DriverConfig {
                batch_size: 200,
                batch_time: Duration::from_millis(5),
                inflight_window: 4,
                max_buffer_bytes: 256 << 20,
                request_ttl: None,
                ..DriverConfig::default()
            },
            kind: SinkKind::Tablestore(Box::new(TablestoreConfig {
                endpoint: server.endpoint(),
                instance: "myinst".into(),
                access_key_id: "testAccessKeyId".into(),
                access_key_secret: Secret::new("testAccessKeySecret"),
                sts_token: None,
                table: "tstable".into(),
                measurement: template("m_re2"),
                data_source: Some(template("${clientid}")),
                tags: vec![("client".into(), template("${clientid}"))],
                fields: None,
                string_fields: ["name".to_owned()].into(),
                binary_fields: Default::default(),
                strings: StringType::Binary,
                int_as_double: false,
                // Distinct times: every message is its own point.
                timestamp: Some(template("${seq}")),
                meta_update_mode: MetaUpdateMode::Normal,
                auto_create: false,
                request_timeout: Duration::from_secs(10),
            })),
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
        let running = weir::sink::start(&config, None, &context).unwrap();
        let start = Instant::now();
        for m in messages {
            let input = weir::sink::SinkInput {
                message: m.clone(),
                ack: AckToken::untracked(),
            };
            running.handle.send(input).await.unwrap();
        }
        running.shutdown().await;
        messages.len() as f64 / start.elapsed().as_secs_f64()
    });
    let stored = server.points().len();
    assert_eq!(stored, messages.len(), "every row reached the server");
    println!(
        "tablestore to the test server: {rate:.0} rows/s ({} messages, batch 200, inflight 4)",
        messages.len()
    );
}
