//! Windowed aggregation: a 10 s tumbling average per device over 10 000
//! devices, the case from the README ("average temperature per device every
//! 10 s").
//!
//! One window step, in process: the real [`WindowOperator`] (processing
//! time on a manual clock, `group_by = ["device"]` from the topic capture)
//! driving the real `stats` aggregate plugin (`avg`, `min`, `max` of
//! `temp`) in wasm, fed batches of 256 messages as a rule's worker feeds it.
//! Each simulated 10 s window sees `WEIR_BENCH_PER_DEVICE` readings (default
//! 20) from each of the 10 000 devices, interleaved; then the clock passes
//! the window's end and all 10 000 windows are finished in one call.
//!
//! Measured in the same run, single thread (so "per core"):
//!
//! - **messages/s** and **µs per message**, windows finished included;
//! - the same loop with a native accumulator that does nothing (the host's
//!   own cost: group lookup, window assignment, watermark, output
//!   composition), and the ratio between the two;
//! - the stats plugin without trap isolation (no checkpoint, no journal:
//!   a trap would fail every open window), and what isolation costs;
//! - **memory**: RSS (`VmRSS`) before the 10 000 devices' windows exist and
//!   with all of them open (host state plus the guest's accumulators, whose
//!   linear memory is part of the process), per window; the peak
//!   (`VmHWM`) includes the bench's own pre-built messages.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use weir::Fields;
use weir::Message;
use weir::engine::{BatchOutcome, Failure, Limits, Output, Runtime, RuntimeOptions, StateLost};
use weir::window::{
    Accumulators, FullPolicy, ManualClock, TimeSource, WindowKind, WindowOperator, WindowSpec,
};

const DEVICES: usize = 10_000;
const WINDOW_MS: i64 = 10_000;
const BATCH: usize = 256;

fn spec() -> WindowSpec {
    WindowSpec {
        kind: WindowKind::Tumbling { size_ms: WINDOW_MS },
        group_by: vec!["device".into()],
        time: TimeSource::Processing,
        max_out_of_orderness_ms: 0,
        allowed_lateness_ms: 0,
        idle_timeout_ms: None,
        max_open: 100_000,
        on_full: FullPolicy::EmitOldest,
        late_to: None,
    }
}

/// Every reading of one window: each device `per_device` times,
/// interleaved, as batches.
fn readings(per_device: usize) -> Vec<Vec<Message>> {
    let all: Vec<Message> = (0..per_device)
        .flat_map(|round| {
            (0..DEVICES).map(move |d| {
                let device = format!("dev-{d:05}");
                let payload = format!(
                    "{{\"temp\":{:.1},\"hum\":{}}}",
                    20.0 + ((d * 7 + round * 3) % 150) as f64 / 10.0,
                    40 + round % 20
                );
                let mut m = Message::new(format!("devices/{device}/temp_hum"), payload, 0);
                m.fields = Fields::from_pairs([("device", device.as_str())]);
                m
            })
        })
        .collect();
    all.chunks(BATCH).map(<[Message]>::to_vec).collect()
}

/// A native accumulator that does nothing: the host's share of the work.
struct Nothing;

impl Accumulators for Nothing {
    fn accumulate(&mut self, _: &[Message], _: &[(u32, u32)]) -> Result<Vec<Failure>, StateLost> {
        Ok(Vec::new())
    }
    fn merge(&mut self, _: u32, _: u32) -> Result<(), StateLost> {
        Ok(())
    }
    fn finish(&mut self, windows: Vec<(u32, Message)>) -> Result<BatchOutcome, StateLost> {
        let mut outcome = BatchOutcome::default();
        for (input, (_, mut message)) in windows.into_iter().enumerate() {
            message.payload = bytes::Bytes::from_static(b"{\"temp_avg\":1.0}");
            outcome.outputs.push(Output { input, message });
        }
        Ok(outcome)
    }
    fn discard(&mut self, _: &[u32]) -> Result<(), StateLost> {
        Ok(())
    }
}

/// Runs `windows` windows; returns (seconds, messages, outputs).
fn run(
    acc: &mut impl Accumulators,
    batches: &[Vec<Message>],
    windows: usize,
) -> (f64, usize, usize) {
    let clock = ManualClock::new(1_000);
    let mut op = WindowOperator::new("bench", spec(), Arc::new(clock.clone()));
    let mut messages = 0;
    let mut outputs = 0;
    let started = Instant::now();
    for w in 0..windows {
        let base = w as i64 * WINDOW_MS;
        let step_ms = (WINDOW_MS - 2) / batches.len() as i64;
        for (i, batch) in batches.iter().enumerate() {
            clock.set(base + 1 + i as i64 * step_ms);
            let step = op.process(acc, batch.clone());
            messages += batch.len();
            outputs += step.outputs.len();
        }
        clock.set(base + WINDOW_MS);
        outputs += op.tick(acc).outputs.len();
    }
    (started.elapsed().as_secs_f64(), messages, outputs)
}

fn status_kb(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let per_device: usize = std::env::var("WEIR_BENCH_PER_DEVICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let windows = 3;
    let batches = readings(per_device);
    let runtime = Runtime::new(RuntimeOptions { cache_dir: None }).expect("runtime");
    let plugin = runtime
        .load(Path::new(weir_test_artifacts::STATS))
        .expect("stats loads");
    let config = serde_json::json!({"fields": ["temp"], "aggregates": ["avg", "min", "max"]});
    let config = config.as_object().unwrap().clone();
    let mut agg = plugin
        .instantiate_aggregator("stats", &config, Limits::default())
        .expect("stats starts");

    // Warm up on one batch (256 devices): instance and buffers exist, the
    // 10 000 devices' state does not yet.
    run(&mut agg, &batches[..1], 1);
    run(&mut Nothing, &batches[..1], 1);
    let rss_before = status_kb("VmRSS");

    // Memory with every device's window open: one window, not finished.
    {
        let clock = ManualClock::new(1_000);
        let mut op = WindowOperator::new("mem", spec(), Arc::new(clock.clone()));
        for batch in &batches {
            op.process(&mut agg, batch.clone());
        }
        let open_rss = status_kb("VmRSS");
        println!(
            "memory: {} windows open: RSS {:.1} MB (before {:.1} MB, +{:.0} bytes per window)",
            op.open(),
            open_rss as f64 / 1024.0,
            rss_before as f64 / 1024.0,
            (open_rss.saturating_sub(rss_before) * 1024) as f64 / op.open().max(1) as f64
        );
        clock.set(WINDOW_MS);
        op.tick(&mut agg);
    }

    let (wasm_s, n, outputs) = run(&mut agg, &batches, windows);
    assert_eq!(
        outputs,
        DEVICES * windows,
        "one average per device and window"
    );
    let (native_s, _, _) = run(&mut Nothing, &batches, windows);
    // The same plugin without the journal that confines a trap to its own
    // window (what a trap cost before: every open window).
    let mut bare = plugin
        .instantiate_aggregator("stats", &config, Limits::default())
        .expect("stats starts");
    bare.set_trap_isolation(false);
    run(&mut bare, &batches[..1], 1);
    let (bare_s, _, _) = run(&mut bare, &batches, windows);
    let bare_us = bare_s * 1e6 / n as f64;
    let wasm_us = wasm_s * 1e6 / n as f64;
    let native_us = native_s * 1e6 / n as f64;
    println!(
        "10 s tumbling average per device, {DEVICES} devices, {per_device} readings per device and window, {windows} windows, batches of {BATCH}:"
    );
    println!(
        "  stats plugin (wasm):     {:>9.0} msg/s per core, {wasm_us:.2} µs/msg",
        n as f64 / wasm_s
    );
    println!(
        "  stats, no trap isolation: {:>8.0} msg/s per core, {bare_us:.2} µs/msg (isolation costs {:.2} µs/msg, x{:.2})",
        n as f64 / bare_s,
        wasm_us - bare_us,
        wasm_us / bare_us
    );
    println!(
        "  host only (no-op acc):   {:>9.0} msg/s per core, {native_us:.2} µs/msg",
        n as f64 / native_s
    );
    println!(
        "  aggregate share: {:.2} µs/msg; total / host = {:.2}",
        wasm_us - native_us,
        wasm_us / native_us
    );
    println!(
        "  RSS peak {:.1} MB; guest stats: {:?}",
        status_kb("VmHWM") as f64 / 1024.0,
        agg.stats()
    );
}
