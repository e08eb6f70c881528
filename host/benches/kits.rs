//! The same filter in each plugin language: what it costs per record, how
//! big the component is, how long its first compile takes and how fast a
//! later start is with the compiled cache.
//!
//! The filter is `threshold` (`temp >= 20` on a 100-byte JSON payload; half
//! the records pass): `plugins/threshold` (Rust, `weir-sdk`),
//! `plugins/threshold-c` (C kit), and its JavaScript and Python twins in
//! `tests/conformance/plugins` (the kits in `plugin-sdk/js` and
//! `plugin-sdk/python`). The JS and Python components are the ones the
//! conformance test built into `target/kits/conformance`; run
//! `cargo test --release -p weir --test conformance` first, or they are
//! reported as missing.
//!
//! Per language, in one run:
//! - **size**: bytes of the component;
//! - **compile**: `Runtime::load` with no cache (compile from source);
//! - **cached start**: `Runtime::load` in a fresh runtime whose disk cache
//!   holds the artifact (what a second `weir run` pays), plus instantiation;
//! - **per record**: `Instance::process` over batches of 64, median of 15
//!   timed rounds of 50 batches each, divided by the records;
//!
//! and each language's per-record cost as a ratio to Rust's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weir::Message;
use weir::engine::{Limits, Runtime, RuntimeOptions};

const BATCH: usize = 64;
const ROUNDS: usize = 15;
const BATCHES_PER_ROUND: usize = 50;

fn kits_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kits/conformance")
}

/// The newest component the conformance test built for `prefix`.
fn built(prefix: &str) -> Option<PathBuf> {
    std::fs::read_dir(kits_dir())
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(prefix) && n.ends_with(".wasm") && !n.contains("tmp")
            })
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

fn messages() -> Vec<Message> {
    (0..BATCH)
        .map(|i| {
            let payload = format!(
                r#"{{"device":"d{i:03}","temp":{},"hum":{},"site":"north-field-7","seq":{i}}}"#,
                12 + (i % 2) * 10 + i % 5,
                40 + i % 7
            );
            Message::new(
                format!("sensors/d{i}/temp"),
                payload,
                1_700_000_000_000 + i as i64,
            )
        })
        .collect()
}

fn config() -> serde_json::Map<String, serde_json::Value> {
    serde_json::json!({"field": "temp", "op": ">=", "value": 20})
        .as_object()
        .unwrap()
        .clone()
}

struct Row {
    lang: &'static str,
    size: u64,
    compile: Duration,
    cached_start: Duration,
    per_record_ns: f64,
}

fn measure(lang: &'static str, path: &Path) -> Row {
    let size = std::fs::metadata(path).unwrap().len();

    let cold = Runtime::new(RuntimeOptions { cache_dir: None }).unwrap();
    let started = Instant::now();
    let plugin = cold.load(path).unwrap();
    let compile = started.elapsed();

    let cache = tempfile::tempdir().unwrap();
    let options = RuntimeOptions {
        cache_dir: Some(cache.path().to_owned()),
    };
    Runtime::new(options.clone()).unwrap().load(path).unwrap();
    let warm = Runtime::new(options).unwrap();
    let started = Instant::now();
    let cached = warm.load(path).unwrap();
    let name = cached.metadata().unwrap().name;
    let _instance = cached
        .instantiate(&name, &config(), Limits::default())
        .unwrap();
    let cached_start = started.elapsed();

    let mut instance = plugin
        .instantiate(&name, &config(), Limits::default())
        .unwrap();
    let batch = messages();
    let kept = instance.process(&batch);
    assert!(kept.failures.is_empty(), "{lang}: {:?}", kept.failures);
    assert_eq!(
        kept.outputs.len(),
        BATCH / 2,
        "{lang}: half the records pass"
    );
    for _ in 0..20 {
        std::hint::black_box(instance.process(&batch));
    }
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..BATCHES_PER_ROUND {
                std::hint::black_box(instance.process(std::hint::black_box(&batch)));
            }
            started.elapsed().as_nanos() as f64 / (BATCHES_PER_ROUND * BATCH) as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    Row {
        lang,
        size,
        compile,
        cached_start,
        per_record_ns: rounds[ROUNDS / 2],
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else is understood.
    let candidates: [(&'static str, Option<PathBuf>); 4] = [
        ("Rust", Some(PathBuf::from(weir_test_artifacts::THRESHOLD))),
        ("C", Some(PathBuf::from(weir_test_artifacts::THRESHOLD_C))),
        ("JavaScript (QuickJS)", built("js-filter-")),
        ("Python", built("python-filter-")),
    ];
    let mut rows = Vec::new();
    for (lang, path) in candidates {
        match path {
            Some(path) => rows.push(measure(lang, &path)),
            None => println!(
                "{lang}: no component in {}; run `cargo test --release -p weir --test conformance` first",
                kits_dir().display()
            ),
        }
    }
    let rust = rows
        .iter()
        .find(|r| r.lang == "Rust")
        .map(|r| r.per_record_ns);
    println!(
        "\nthreshold filter, batch {BATCH}, median of {ROUNDS} rounds:\n\n\
         | language | component | compile (no cache) | cached start | per record | vs Rust |\n\
         | --- | --- | --- | --- | --- | --- |"
    );
    for r in &rows {
        println!(
            "| {} | {:.1} KB | {:.0} ms | {:.1} ms | {:.0} ns | {:.1}× |",
            r.lang,
            r.size as f64 / 1024.0,
            r.compile.as_secs_f64() * 1e3,
            r.cached_start.as_secs_f64() * 1e3,
            r.per_record_ns,
            rust.map(|base| r.per_record_ns / base).unwrap_or(f64::NAN),
        );
    }
}
