//! What it costs to hand records to a plugin.
//!
//! - `noop/N`: a batch of N messages through the real contract and the real
//!   engine to a plugin that passes every message on, and back:
//!   `Instance::process(&[Message])` encodes the batch, calls the guest (the
//!   SDK's batch loop in wasm), decodes the outcome and builds the outputs,
//!   each a clone of its input; the timed loop also drops the outputs.
//!   Divide by N for the per-record cost.
//! - `noop-owned/N`: the same through `Instance::process_owned(Vec<Message>)`,
//!   as the pipeline hands over a batch it no longer needs: each input moves
//!   into its output. Cloning the batch beforehand and dropping the outcome
//!   afterwards (the messages' own life, not the boundary's) are not timed;
//!   each call is timed alone (`BatchSize::PerIteration`, so allocations
//!   recycle as in a running pipeline; the two clock reads per call show
//!   only at batch 1).
//! - `layout/*`: the same 256 messages handed to a guest four ways, one way
//!   only — one call per record, one call with a `list` of records holding
//!   nested strings, one call with a `list` of fixed-size records plus a
//!   shared buffer, and one call with fixed-size descriptors as `u32` words
//!   plus a shared buffer (the contract's layout). This is the measurement
//!   behind the contract's batch layout (wit/README.md).
//! - `threshold/*`, over the same 256 messages (`temp > 30` keeps half):
//!   - `wasm`: the `threshold` plugin component through
//!     `Instance::process`, as `noop/256` but with the plugin's work;
//!   - `wasm-owned`: the same through `Instance::process_owned`, timed as
//!     `noop-owned`;
//!   - `native`: the same `plugins/threshold` source compiled into this
//!     bench, initialised with the same config and run through the SDK's
//!     own `init` and `process` entry points (`weir_sdk::runtime::Native`):
//!     the same batch loop, descriptor decoding, JSON path reading and
//!     outcome encoding as in wasm, over the same messages encoded once
//!     into the contract's batch layout before timing. Nothing else: no
//!     wasm, no host encoding, no copy across the boundary, no host
//!     outputs.
//!
//!   So `wasm / native` is what running the plugin in wasm behind the
//!   boundary costs over running the plugin's own code natively.
//!
//! After criterion's own report, a summary prints per-record costs and the
//! wasm/native ratios from this run's estimates: medians, which a busy
//! machine (a build next door) skews far less than means.

use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use weir::Message;
use weir::engine::{Limits, Runtime, RuntimeOptions};

/// The threshold plugin's own source, compiled natively for `threshold/native`
/// (its crate is a `cdylib` only, so it cannot be a dependency).
#[path = "../../plugins/threshold/src/lib.rs"]
#[allow(
    dead_code,
    unused_imports,
    reason = "benches build with cfg(test), so the plugin's tests come along, unrun"
)]
mod threshold;

const BATCH_SIZES: [usize; 5] = [1, 16, 64, 256, 1024];
const LAYOUT_BATCH: usize = 256;

fn messages(n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let payload = format!(
                r#"{{"temp": {}.5, "hum": {}, "status": "ok", "seq": {i}}}"#,
                20 + i % 20,
                40 + i % 30
            );
            let mut m = Message::new(
                format!("devices/dev-{:04}/temp_hum", i % 1000),
                payload.into_bytes(),
                1_700_000_000_000 + i as i64,
            );
            m.fields =
                weir::Fields::from_pairs([("device", format!("dev-{:04}", i % 1000).as_str())]);
            m
        })
        .collect()
}

fn runtime() -> Runtime {
    Runtime::new(RuntimeOptions { cache_dir: None }).unwrap()
}

/// Writes messages in the contract's batch layout, 10 descriptor words
/// each plus one shared buffer (`wit/plugin.wit`, record `batch`), into
/// `events` and `data` (cleared first).
fn encode_words(messages: &[Message], events: &mut Vec<u32>, data: &mut Vec<u8>) {
    events.clear();
    data.clear();
    for m in messages {
        let mut push = |bytes: &[u8]| {
            let at = data.len() as u32;
            data.extend_from_slice(bytes);
            [at, bytes.len() as u32]
        };
        let [t0, t1] = push(m.topic.as_bytes());
        let [p0, p1] = push(&m.payload);
        let [f0, f1] = push(m.fields.encoded());
        let ts = m.timestamp_ms as u64;
        events.extend_from_slice(&[
            t0,
            t1,
            p0,
            p1,
            f0,
            f1,
            ts as u32,
            (ts >> 32) as u32,
            u32::from(m.qos),
            0,
        ]);
    }
}

fn bench_noop(c: &mut Criterion, rt: &Runtime) {
    let plugin = rt.load(Path::new(weir_test_artifacts::NOOP)).unwrap();
    let mut instance = plugin
        .instantiate("noop", &Default::default(), Limits::default())
        .unwrap();
    let mut group = c.benchmark_group("noop");
    for n in BATCH_SIZES {
        let batch = messages(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &batch, |b, batch| {
            b.iter(|| {
                let out = instance.process(batch);
                assert_eq!(out.outputs.len(), batch.len());
                out
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("noop-owned");
    for n in BATCH_SIZES {
        let batch = messages(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &batch, |b, batch| {
            b.iter_batched(
                || batch.clone(),
                |batch| {
                    let out = instance.process_owned(batch);
                    assert_eq!(out.outputs.len(), n);
                    out
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

mod probe {
    wasmtime::component::bindgen!({
        path: "../tests/guests/layout-probe/wit",
        world: "layout-probe",
    });
}

struct ProbeState {
    wasi: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi::WasiView for ProbeState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn bench_layouts(c: &mut Criterion, rt: &Runtime) {
    use probe::exports::weir_bench::layout::probe::{
        FlatBatch, FlatEvent, NestedEvent, Span, WordBatch,
    };
    let engine = rt.engine();
    let component = rt
        .compile_component(&std::fs::read(weir_test_artifacts::LAYOUT_PROBE).unwrap())
        .unwrap();
    // The probe is built with Rust's std, which imports WASI; link it with
    // an empty context, as the engine does for plugins.
    let mut linker = wasmtime::component::Linker::<ProbeState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    let mut store = wasmtime::Store::new(
        engine,
        ProbeState {
            wasi: wasmtime_wasi::WasiCtx::builder().build(),
            table: wasmtime::component::ResourceTable::new(),
        },
    );
    store.set_epoch_deadline(u64::MAX / 2);
    let probe = probe::LayoutProbe::instantiate(&mut store, &component, &linker).unwrap();
    let probe = probe.weir_bench_layout_probe();

    let source = messages(LAYOUT_BATCH);
    let nested: Vec<NestedEvent> = source
        .iter()
        .map(|m| NestedEvent {
            topic: m.topic.to_string(),
            payload: m.payload.to_vec(),
            fields: m
                .fields
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            timestamp_ms: m.timestamp_ms,
            qos: m.qos,
        })
        .collect();
    let expected: u32 = source.iter().map(|m| m.payload.len() as u32).sum();

    let mut group = c.benchmark_group("layout");
    group.throughput(Throughput::Elements(LAYOUT_BATCH as u64));
    group.bench_function("per-record", |b| {
        b.iter(|| {
            let mut sum = 0;
            for e in &nested {
                sum += probe.call_per_record(&mut store, e).unwrap();
            }
            assert_eq!(sum, expected);
        })
    });
    group.bench_function("nested-list", |b| {
        b.iter(|| assert_eq!(probe.call_nested(&mut store, &nested).unwrap(), expected))
    });
    // The flat layout, built from host messages each time as the engine does.
    let mut batch = FlatBatch {
        events: Vec::new(),
        data: Vec::new(),
    };
    group.bench_function("flat", |b| {
        b.iter(|| {
            batch.events.clear();
            batch.data.clear();
            for m in &source {
                let mut push = |bytes: &[u8]| {
                    let span = Span {
                        offset: batch.data.len() as u32,
                        len: bytes.len() as u32,
                    };
                    batch.data.extend_from_slice(bytes);
                    span
                };
                let topic = push(m.topic.as_bytes());
                let payload = push(&m.payload);
                let fields = push(m.fields.encoded());
                batch.events.push(FlatEvent {
                    topic,
                    payload,
                    fields,
                    timestamp_ms: m.timestamp_ms,
                    qos: m.qos,
                });
            }
            assert_eq!(probe.call_flat(&mut store, &batch).unwrap(), expected);
        })
    });
    // The contract's layout: descriptors as u32 words.
    let mut words = WordBatch {
        events: Vec::new(),
        data: Vec::new(),
    };
    group.bench_function("words", |b| {
        b.iter(|| {
            encode_words(&source, &mut words.events, &mut words.data);
            assert_eq!(probe.call_words(&mut store, &words).unwrap(), expected);
        })
    });
    group.finish();
}

fn bench_threshold(c: &mut Criterion, rt: &Runtime) {
    let config = serde_json::json!({"field": "temp", "op": ">", "value": 30});
    let serde_json::Value::Object(config) = config else {
        unreachable!()
    };
    let plugin = rt.load(Path::new(weir_test_artifacts::THRESHOLD)).unwrap();
    let mut instance = plugin
        .instantiate("threshold", &config, Limits::default())
        .unwrap();
    let batch = messages(LAYOUT_BATCH);
    let kept = instance.process(&batch).outputs.len();
    assert!(kept > 0 && kept < batch.len());

    let native = threshold::__weir_native();
    native
        .init(&serde_json::Value::Object(config).to_string())
        .unwrap();
    let mut words = weir_sdk::__bindings::weir::plugin::types::Batch {
        events: Vec::new(),
        data: Vec::new(),
    };
    encode_words(&batch, &mut words.events, &mut words.data);
    assert_eq!(native.process(&words).emitted.len(), kept * 10);

    let mut group = c.benchmark_group("threshold");
    group.throughput(Throughput::Elements(LAYOUT_BATCH as u64));
    group.bench_function("wasm", |b| {
        b.iter(|| {
            let out = instance.process(&batch);
            assert_eq!(out.outputs.len(), kept);
            out
        })
    });
    group.bench_function("wasm-owned", |b| {
        b.iter_batched(
            || batch.clone(),
            |batch| {
                let out = instance.process_owned(batch);
                assert_eq!(out.outputs.len(), kept);
                out
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("native", |b| {
        b.iter(|| {
            let out = native.process(&words);
            assert_eq!(out.emitted.len(), kept * 10);
            out
        })
    });
    group.finish();
}

fn main() {
    let rt = runtime();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_noop(&mut c, &rt);
    bench_layouts(&mut c, &rt);
    bench_threshold(&mut c, &rt);
    c.final_summary();
    summary::print();
}

/// Reads this run's estimates back from criterion's output folder and
/// prints per-record costs and ratios.
mod summary {
    use std::path::PathBuf;

    fn estimate_ns(id: &str) -> Option<f64> {
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let path = dir.join("criterion").join(id).join("new/estimates.json");
        let text = std::fs::read_to_string(path).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json["median"]["point_estimate"].as_f64()
    }

    pub(super) fn print() {
        println!("\nsummary (medians of this run)");
        for n in super::BATCH_SIZES {
            let per = |id: &str| estimate_ns(&format!("{id}/{n}")).map(|ns| ns / n as f64);
            if let Some(borrowed) = per("noop") {
                print!("  noop batch {n:>5}: {borrowed:>8.1} ns/record");
                match per("noop-owned") {
                    Some(owned) => println!(", owned {owned:>8.1} ns/record"),
                    None => println!(),
                }
            }
        }
        let per = |id: &str| estimate_ns(id).map(|ns| ns / super::LAYOUT_BATCH as f64);
        if let (Some(a), Some(b), Some(f), Some(w)) = (
            per("layout/per-record"),
            per("layout/nested-list"),
            per("layout/flat"),
            per("layout/words"),
        ) {
            println!(
                "  layout, {} records: per-record call {a:.1} ns/record, nested list {b:.1}, \
                 flat {f:.1}, words {w:.1} (words is {:.1}x cheaper than nested, {:.1}x than \
                 per-record)",
                super::LAYOUT_BATCH,
                b / w,
                a / w
            );
        }
        if let Some(n) = per("threshold/native") {
            for (label, id) in [
                ("wasm", "threshold/wasm"),
                ("wasm-owned", "threshold/wasm-owned"),
            ] {
                if let Some(w) = per(id) {
                    println!(
                        "  threshold, {} records: {label} {w:.1} ns/record, native {n:.1} \
                         ns/record, {label}/native {:.2}",
                        super::LAYOUT_BATCH,
                        w / n
                    );
                }
            }
        }
    }
}
