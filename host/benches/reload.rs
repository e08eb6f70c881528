//! Hot reload: how long a plugin swap pauses a rule while messages flow.
//!
//! In-process: a real Mosquitto, the real pipeline (`Pipeline::start` on a
//! validated manifest) with two rules into a null sink, and one publisher
//! at a fixed rate ([`RATE`] msg/s, QoS 1) alternating between them:
//!
//! - `tag`: the `tag-v1` test guest, swapped with `tag-v2` and back (no
//!   state: the swap is an exchange of instances);
//! - `dedupe`: the `dedupe` plugin (key `seq`, window 1000, so 1000 keys
//!   are remembered), swapped with a new build of itself: the snapshot of
//!   1000 keys is taken from the old instance and restored into the new.
//!
//! For each, [`SWAPS`] swaps (`WEIR_BENCH_SWAPS` overrides), each built
//! and initialised off the rule's thread as a reload does, then handed to
//! the rule's worker. Printed, from the same run:
//!
//! - **pause**: the time the rule's worker spent on the swap between two
//!   batches (what the rule's input waits), p50/p99/max;
//! - **to boundary**: from handing the new instance over to the worker's
//!   answer (includes finishing the batch in progress), p50/p99/max;
//! - the pause as a fraction of the rule's mean batch interval at this
//!   rate.
//!
//! Target: pause p99 ≤ 5 ms.

use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::{Client, MqttOptions, QoS};
use weir::engine::{Limits, Runtime, RuntimeOptions};
use weir::pipeline::{Pipeline, Replacement};
use weir_test_support::Mosquitto;

/// Messages per second, both rules together.
const RATE: u64 = 2000;
/// Swaps per plugin.
const SWAPS: usize = 200;

fn main() {
    let swaps = std::env::var("WEIR_BENCH_SWAPS")
        .ok()
        .map(|v| v.parse::<usize>().expect("WEIR_BENCH_SWAPS is a number"))
        .unwrap_or(SWAPS);
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("weir.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"
[broker]
url = "{url}"
client_id = "weir-bench-reload"

[plugins.tag]
path = "{tag}"
[plugins.dedupe]
path = "{dedupe}"

[sinks.null]
type = "null"

[[rules]]
name = "tag"
from = ["bench/tag/{{d}}"]
qos = 1
steps = [{{ plugin = "tag" }}]
to = ["null"]

[[rules]]
name = "dedupe"
from = ["bench/dd/{{d}}"]
qos = 1
steps = [{{ plugin = "dedupe", config = {{ key = "seq", window = 1000 }} }}]
to = ["null"]
"#,
            url = broker.url(),
            tag = weir_test_artifacts::TAG_V1,
            dedupe = weir_test_artifacts::DEDUPE,
        ),
    )
    .unwrap();
    let runtime = Runtime::new(RuntimeOptions { cache_dir: None }).unwrap();
    let config = weir::config::load(&manifest, &runtime, weir::config::Compile::Now)
        .expect("the bench manifest is valid");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let pipeline = tokio.block_on(Pipeline::start(&config)).unwrap();

    // The publisher: RATE msg/s, in ticks of 10 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let mut options = MqttOptions::new("weir-bench-reload-pub", "127.0.0.1", broker.port());
        options.set_inflight(1000);
        std::thread::spawn(move || {
            let (client, mut connection) = Client::new(options, 10_000);
            std::thread::spawn(move || for _ in connection.iter() {});
            let per_tick = RATE / 100;
            let mut seq = 0u64;
            let mut next = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..per_tick {
                    let topic = if seq.is_multiple_of(2) {
                        "bench/tag/a"
                    } else {
                        "bench/dd/a"
                    };
                    let payload = format!(r#"{{"seq":{seq}}}"#);
                    client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .unwrap();
                    seq += 1;
                }
                next += Duration::from_millis(10);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            seq
        })
    };
    // Let the stream settle and dedupe fill its window.
    std::thread::sleep(Duration::from_secs(2));

    let tag_builds = [
        runtime
            .load(Path::new(weir_test_artifacts::TAG_V2))
            .unwrap(),
        runtime
            .load(Path::new(weir_test_artifacts::TAG_V1))
            .unwrap(),
    ];
    let mut dedupe_bytes = std::fs::read(weir_test_artifacts::DEDUPE).unwrap();
    // A custom section: another build (another hash) of the same code.
    dedupe_bytes.extend_from_slice(&[0, 6, 5, b'b', b'e', b'n', b'c', b'h']);
    let dedupe_builds = [
        runtime
            .load_bytes(Path::new("dedupe-rebuilt.wasm"), &dedupe_bytes)
            .unwrap(),
        runtime
            .load(Path::new(weir_test_artifacts::DEDUPE))
            .unwrap(),
    ];
    let dedupe_config = config.rules[1].steps[0].config.clone();

    println!("hot reload: pause per swap at {RATE} msg/s (QoS 1), {swaps} swaps per plugin");
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>12} {:>12}",
        "plugin (state)", "pause p50", "pause p99", "pause max", "boundary p50", "boundary p99"
    );
    for (rule, builds, config) in [
        ("tag", &tag_builds, serde_json::Map::new()),
        ("dedupe", &dedupe_builds, dedupe_config),
    ] {
        let mut pauses = Vec::with_capacity(swaps);
        let mut boundary = Vec::with_capacity(swaps);
        let mut state = String::new();
        for i in 0..swaps {
            let next = builds[i % 2]
                .instantiate(rule, &config, Limits::default())
                .unwrap();
            let handed = Instant::now();
            let swapped = tokio
                .block_on(pipeline.swap_step(rule, 0, Replacement::Transform(Box::new(next))))
                .expect("the swap is taken");
            boundary.push(handed.elapsed());
            pauses.push(swapped.pause);
            state = format!("{:?}", swapped.state);
            // Swaps spaced as a user's would be, not back to back.
            std::thread::sleep(Duration::from_millis(5));
        }
        let label = format!("{rule} ({})", state.split_whitespace().next().unwrap_or(""));
        println!(
            "{:<34} {:>9} {:>9} {:>9} {:>12} {:>12}",
            label,
            ms(percentile(&mut pauses, 0.50)),
            ms(percentile(&mut pauses, 0.99)),
            ms(percentile(&mut pauses, 1.0)),
            ms(percentile(&mut boundary, 0.50)),
            ms(percentile(&mut boundary, 0.99)),
        );
        println!(
            "  {rule}: p99 pause is {:.2}% of the rule's mean gap between messages ({:.2} ms at {} msg/s)",
            percentile(&mut pauses, 0.99).as_secs_f64() * 1e2 / (2.0 / RATE as f64),
            2e3 / RATE as f64,
            RATE / 2
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publisher.join().unwrap();
    tokio.block_on(pipeline.shutdown());
    println!("published {published} messages while swapping");
}

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[i]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}
