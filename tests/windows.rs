//! Windows and aggregation: golden files for every window kind, the
//! accumulator contract against real aggregate plugins built from source,
//! and processing-time windows end to end over a real Mosquitto.
//!
//! **Golden files** (`tests/windows/<case>/`): `step.toml` holds the window
//! step as written in a manifest (its `window` and `config` keys), checked
//! by the real manifest validation; `input.jsonl` drives a manual clock
//! (`at`, ms) and feeds one message per line (`device` becomes the topic
//! capture, `payload` the JSON payload), `{"at": …}` alone only moves the
//! clock, `{"flush": true}` is shutdown; `expected.jsonl` is the exact,
//! hand-derived sequence of what comes out: window results
//! (`{"window": payload}`), late events (`{"late": line}`) and refused
//! messages (`{"rejected": line, "kind": …}`). The aggregate is the `stats`
//! plugin (count, sum, first, last of `v`). Nothing here sleeps: time is the
//! manual clock.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir::config::{self, Options};
use weir::engine::{Aggregator, FailureKind, Limits, Runtime, RuntimeOptions};
use weir::window::{ManualClock, Step, WindowOperator, WindowSpec};
use weir::{Fields, Message};
use weir_test_support::WeirProcess as Weir;
use weir_test_support::weir::json_lines;

fn runtime() -> Runtime {
    Runtime::new(RuntimeOptions { cache_dir: None }).expect("runtime starts")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/windows")
}

/// Validates a manifest with one window step (`fragment` = the step's keys)
/// on `plugin`, and returns the resolved window and config.
fn resolve_step(
    runtime: &Runtime,
    dir: &Path,
    plugin: &str,
    fragment: &str,
) -> (WindowSpec, serde_json::Map<String, Value>) {
    let manifest = format!(
        "[plugins.agg]\npath = {plugin:?}\n\n[sinks.out]\ntype = \"null\"\n\n\
         [[rules]]\nname = \"golden\"\nfrom = [\"devices/{{device}}/t\"]\n\
         steps = [{{ plugin = \"agg\", {fragment} }}]\nto = [\"out\"]\n"
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, &manifest).unwrap();
    let checked = config::check(&path, runtime, &Options::default());
    let config = checked
        .config
        .unwrap_or_else(|| panic!("{manifest}\n{}", checked.diagnostics));
    let step = config.rules[0].steps[0].clone();
    (step.window.expect("a window step"), step.config)
}

/// The `window` and `config` lines of a case's `step.toml`, joined as the
/// keys of an inline table.
fn fragment(case: &str) -> String {
    let text = std::fs::read_to_string(golden_dir().join(case).join("step.toml")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(", ")
}

fn reading(device: &str, payload: &Value, at: i64) -> Message {
    let mut m = Message::new(format!("devices/{device}/t"), payload.to_string(), at);
    m.fields = Fields::from_pairs([("device", device)]);
    m
}

/// What a step produced, as golden lines; `line` is the input's 1-based
/// line number.
fn record(step: Step, line: usize, out: &mut Vec<Value>) {
    for r in &step.rejected {
        out.push(json!({"rejected": line, "kind": r.kind}));
    }
    for _ in &step.late {
        out.push(json!({"late": line}));
    }
    for m in step.outputs {
        let payload: Value = serde_json::from_slice(&m.payload).expect("outputs are JSON");
        out.push(json!({ "window": payload }));
    }
}

fn run_golden(case: &str) {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (spec, config) = resolve_step(
        &runtime,
        dir.path(),
        weir_test_artifacts::STATS,
        &fragment(case),
    );
    let plugin = runtime.load(Path::new(weir_test_artifacts::STATS)).unwrap();
    let mut agg = plugin
        .instantiate_aggregator("stats", &config, Limits::default())
        .unwrap();
    let clock = ManualClock::new(0);
    let mut op = WindowOperator::new(case, spec, Arc::new(clock.clone()));
    let input = std::fs::read_to_string(golden_dir().join(case).join("input.jsonl")).unwrap();
    let mut got = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["flush"] == json!(true) {
            let step = op.flush(&mut agg);
            record(step, n + 1, &mut got);
            continue;
        }
        let at = v["at"].as_i64().expect("`at` on every line");
        clock.set(at);
        let step = match v.get("payload") {
            Some(payload) => {
                let device = v["device"].as_str().unwrap();
                op.process(&mut agg, vec![reading(device, payload, at)])
            }
            None => op.tick(&mut agg),
        };
        record(step, n + 1, &mut got);
    }
    let expected: Vec<Value> =
        std::fs::read_to_string(golden_dir().join(case).join("expected.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let show = |v: &[Value]| {
        v.iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        got,
        expected,
        "case {case}\n--- got:\n{}\n--- expected:\n{}",
        show(&got),
        show(&expected)
    );
    assert_eq!(op.open(), 0, "{case}: state left after the run");
}

#[test]
fn golden_tumbling_boundary_out_of_order_late_and_idle_group() {
    run_golden("tumbling");
}

#[test]
fn golden_hopping_windows_are_merged_from_panes() {
    run_golden("hopping");
}

#[test]
fn golden_sliding_windows_close_on_their_trigger() {
    run_golden("sliding");
}

#[test]
fn golden_sessions_hit_their_maximum_length_and_merge_when_bridged() {
    run_golden("session");
}

#[test]
fn golden_count_windows_hop_in_arrival_order() {
    run_golden("count");
}

#[test]
fn golden_an_idle_stream_closes_its_last_window_after_the_idle_timeout() {
    run_golden("idle_timeout");
}

#[test]
fn golden_allowed_lateness_updates_a_finished_window() {
    run_golden("lateness");
}

#[test]
fn golden_the_cap_on_open_windows_drops_what_does_not_fit() {
    run_golden("cap");
}

/// A tumbling processing-time step over `agg-chaos` (count `n`, sum `sum`).
fn chaos_step() -> (Runtime, Aggregator, WindowOperator, ManualClock) {
    chaos_window(r#"window = { kind = "tumbling", size = "10s", group_by = ["device"] }"#)
}

/// A processing-time window step over `agg-chaos` (count `n`, sum `sum`),
/// the clock at 1 s.
fn chaos_window(fragment: &str) -> (Runtime, Aggregator, WindowOperator, ManualClock) {
    let runtime = runtime();
    let plugin = runtime
        .load(Path::new(weir_test_artifacts::AGG_CHAOS))
        .unwrap();
    let agg = plugin
        .instantiate_aggregator("chaos", &Default::default(), Limits::default())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (spec, _) = resolve_step(
        &runtime,
        dir.path(),
        weir_test_artifacts::AGG_CHAOS,
        fragment,
    );
    let clock = ManualClock::new(1_000);
    let op = WindowOperator::new("chaos", spec, Arc::new(clock.clone()));
    (runtime, agg, op, clock)
}

/// `(device, n, sum)` of each output, sorted.
fn counts(step: &Step) -> Vec<(String, u64, f64)> {
    let mut got: Vec<(String, u64, f64)> = step
        .outputs
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            (
                v["device"].as_str().unwrap().to_owned(),
                v["n"].as_u64().unwrap(),
                v["sum"].as_f64().unwrap(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    got
}

fn row(device: &str, n: u64, sum: f64) -> (String, u64, f64) {
    (device.to_owned(), n, sum)
}

#[test]
fn a_trap_in_add_fails_only_that_window_and_the_others_keep_their_state() {
    let (_rt, mut agg, mut op, clock) = chaos_step();
    let step = op.process(
        &mut agg,
        vec![
            reading("a", &json!({"v": 1}), 0),
            reading("b", &json!({"v": 2}), 0),
        ],
    );
    assert!(step.rejected.is_empty());
    // The panic takes the instance; b and c are rebuilt, a is given up.
    clock.set(2_000);
    let step = op.process(
        &mut agg,
        vec![
            reading("b", &json!({"v": 10}), 0),
            reading("a", &json!({"panic": true, "v": 5}), 0),
            reading("b", &json!({"v": 20}), 0),
            reading("c", &json!({"v": 4}), 0),
        ],
    );
    let rejected: Vec<_> = step.rejected.iter().map(|r| (r.input, r.kind)).collect();
    assert_eq!(rejected, vec![(1, FailureKind::Trap.as_str())]);
    assert!(
        step.rejected[0].reason.contains("asked to panic in add"),
        "{:?}",
        step.rejected
    );
    // A later event for the failed window is dropped, counted.
    clock.set(3_000);
    let step = op.process(&mut agg, vec![reading("a", &json!({"v": 7}), 0)]);
    assert_eq!(step.rejected[0].kind, "window_failed");
    clock.set(10_000);
    let step = op.tick(&mut agg);
    assert_eq!(counts(&step), vec![row("b", 3, 32.0), row("c", 1, 4.0)]);
    assert_eq!(op.stats().failed, 1, "window a only");
    // The rule goes on: a's next window works.
    clock.set(11_000);
    let step = op.process(&mut agg, vec![reading("a", &json!({"v": 3}), 0)]);
    assert!(step.rejected.is_empty(), "{:?}", step.rejected);
    clock.set(20_000);
    let step = op.tick(&mut agg);
    assert_eq!(step.outputs.len(), 1);
    let out: Value = serde_json::from_slice(&step.outputs[0].payload).unwrap();
    assert_eq!(
        out,
        json!({"window_start": 10000, "window_end": 20000, "device": "a", "n": 1, "sum": 3.0})
    );
    // One instance for the whole batch's trap, one for a's own retry.
    assert_eq!(agg.stats().restarts, 2);
}

#[test]
fn after_a_checkpoint_a_trap_rebuilds_the_other_windows_from_their_snapshots() {
    let (_rt, mut agg, mut op, clock) = chaos_step();
    // 5000 messages over 10 devices: enough to fold the journal into a
    // checkpoint of snapshots.
    let batch: Vec<Message> = (0..5000)
        .map(|i| reading(&format!("d{}", i % 10), &json!({"v": 1}), 0))
        .collect();
    assert!(op.process(&mut agg, batch).rejected.is_empty());
    assert_eq!(agg.stats().checkpoints, 1);
    clock.set(2_000);
    let step = op.process(
        &mut agg,
        vec![
            reading("d1", &json!({"v": 2}), 0),
            reading("d3", &json!({"panic": true}), 0),
            reading("d5", &json!({"v": 2}), 0),
        ],
    );
    assert_eq!(step.rejected.len(), 1);
    clock.set(10_000);
    let step = op.tick(&mut agg);
    let want: Vec<_> = (0..10)
        .filter(|d| *d != 3)
        .map(|d| match d {
            1 | 5 => row(&format!("d{d}"), 501, 502.0),
            _ => row(&format!("d{d}"), 500, 500.0),
        })
        .collect();
    assert_eq!(counts(&step), want);
    assert_eq!(op.stats().failed, 1);
}

#[test]
fn a_trap_in_a_hopping_pane_fails_the_windows_holding_that_pane_only() {
    let (_rt, mut agg, mut op, clock) = chaos_window(
        r#"window = { kind = "hopping", size = "10s", hop = "5s", group_by = ["device"] }"#,
    );
    op.process(
        &mut agg,
        vec![
            reading("a", &json!({"v": 1}), 0),
            reading("b", &json!({"v": 1}), 0),
        ],
    );
    clock.set(6_000);
    // [-5 s, 5 s) closes: both devices, one event each.
    let step = op.process(&mut agg, vec![reading("a", &json!({"v": 2}), 0)]);
    assert_eq!(counts(&step), vec![row("a", 1, 1.0), row("b", 1, 1.0)]);
    clock.set(7_000);
    let step = op.process(
        &mut agg,
        vec![
            reading("a", &json!({"panic": true}), 0),
            reading("b", &json!({"v": 3}), 0),
        ],
    );
    assert_eq!(step.rejected.len(), 1);
    // a's pane [5 s, 10 s) is gone: both windows holding it fail.
    clock.set(10_000);
    assert_eq!(counts(&op.tick(&mut agg)), vec![row("b", 2, 4.0)]);
    clock.set(15_000);
    assert_eq!(counts(&op.tick(&mut agg)), vec![row("b", 1, 3.0)]);
    assert_eq!(op.stats().failed, 2);
}

#[test]
fn a_trap_in_a_sliding_window_fails_only_the_windows_holding_that_event() {
    let (_rt, mut agg, mut op, clock) =
        chaos_window(r#"window = { kind = "sliding", size = "10s", group_by = ["device"] }"#);
    op.process(
        &mut agg,
        vec![
            reading("a", &json!({"v": 1}), 0),
            reading("b", &json!({"v": 2}), 0),
        ],
    );
    clock.set(2_000);
    let step = op.process(
        &mut agg,
        vec![
            reading("a", &json!({"panic": true}), 0),
            reading("b", &json!({"v": 3}), 0),
        ],
    );
    assert_eq!(counts(&step), vec![row("a", 1, 1.0), row("b", 1, 2.0)]);
    // Both windows ending at 2 s are built in one call; a's holds the
    // panicking event and fails alone.
    clock.set(2_500);
    assert_eq!(counts(&op.tick(&mut agg)), vec![row("b", 2, 5.0)]);
    assert_eq!(op.stats().failed, 1);
}

#[test]
fn a_trap_in_finish_fails_that_windows_output_and_the_next_window_works() {
    let (_rt, mut agg, mut op, clock) = chaos_step();
    op.process(
        &mut agg,
        vec![
            reading("boom", &json!({"v": 1}), 0),
            reading("calm", &json!({"v": 2}), 0),
        ],
    );
    // Both windows are finished in one call; boom's panics alone.
    clock.set(10_000);
    let step = op.tick(&mut agg);
    assert_eq!(counts(&step), vec![row("calm", 1, 2.0)]);
    assert_eq!(op.stats().failed, 1);
    assert_eq!(op.stats().fired, 1);
    clock.set(12_000);
    op.process(&mut agg, vec![reading("ok", &json!({"v": 4}), 0)]);
    clock.set(20_000);
    let step = op.tick(&mut agg);
    assert_eq!(step.outputs.len(), 1);
    assert_eq!(step.outputs[0].fields.get("device"), Some("ok"));
    assert_eq!(step.outputs[0].fields.get("window_start"), Some("10000"));
    assert_eq!(op.stats().fired, 2);
}

#[test]
fn a_message_the_plugin_rejects_fails_alone() {
    let (_rt, mut agg, mut op, clock) = chaos_step();
    let step = op.process(
        &mut agg,
        vec![
            reading("a", &json!({"v": 1}), 0),
            reading("a", &json!({"v": "x"}), 0),
            reading("a", &json!({"v": 2}), 0),
        ],
    );
    assert_eq!(step.rejected.len(), 1);
    assert_eq!(
        (step.rejected[0].input, step.rejected[0].kind),
        (1, "rejected")
    );
    clock.set(10_000);
    let step = op.tick(&mut agg);
    let out: Value = serde_json::from_slice(&step.outputs[0].payload).unwrap();
    assert_eq!(
        (out["n"].clone(), out["sum"].clone()),
        (json!(2), json!(3.0))
    );
}

#[test]
fn a_message_without_its_event_time_or_group_is_refused_with_the_reason() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (spec, config) = resolve_step(
        &runtime,
        dir.path(),
        weir_test_artifacts::STATS,
        r#"window = { kind = "tumbling", size = "1s", group_by = ["site"], time_field = "ts" }, config = { fields = ["v"] }"#,
    );
    let plugin = runtime.load(Path::new(weir_test_artifacts::STATS)).unwrap();
    let mut agg = plugin
        .instantiate_aggregator("stats", &config, Limits::default())
        .unwrap();
    let mut op = WindowOperator::new("t", spec, Arc::new(ManualClock::new(0)));
    let step = op.process(
        &mut agg,
        vec![
            reading("a", &json!({"v": 1, "site": "x"}), 0),
            reading("a", &json!({"v": 1, "ts": "soon", "site": "x"}), 0),
            reading("a", &json!({"v": 1, "ts": 5}), 0),
        ],
    );
    let got: Vec<_> = step
        .rejected
        .iter()
        .map(|r| (r.input, r.kind, r.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (0, "event_time", r#"event time field "ts" is missing"#),
            (
                1,
                "event_time",
                r#"event time field "ts" is "soon", not a number of milliseconds"#
            ),
            (
                2,
                "group_by",
                r#"group_by field "site" is neither a capture nor a payload field of this message"#
            ),
        ]
    );
}

#[test]
fn a_snapshot_restored_into_a_fresh_instance_finishes_like_an_uninterrupted_run() {
    let runtime = runtime();
    let plugin = runtime.load(Path::new(weir_test_artifacts::STATS)).unwrap();
    let config: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "fields": ["v"],
        "aggregates": ["count", "sum", "min", "max", "avg", "first", "last", "stddev"],
        "percentiles": [0.5, 0.9],
    }))
    .unwrap();
    let messages: Vec<Message> = (0..50)
        .map(|i| reading("a", &json!({"v": (i * 37 % 11) as f64 / 3.0}), i))
        .collect();
    let targets = |id: u32, n: usize| (0..n as u32).map(|i| (i, id)).collect::<Vec<_>>();
    let window = |id: u32| {
        let mut m = Message::new("devices/a/t", r#"{"window_start":0,"window_end":1000}"#, 0);
        m.fields = Fields::from_pairs([("device", "a")]);
        vec![(id, m)]
    };

    let mut whole = plugin
        .instantiate_aggregator("a", &config, Limits::default())
        .unwrap();
    whole.accumulate(&messages, &targets(1, 50)).unwrap();
    let uninterrupted = whole.finish(window(1)).unwrap();

    let mut first = plugin
        .instantiate_aggregator("b", &config, Limits::default())
        .unwrap();
    first.accumulate(&messages[..20], &targets(3, 20)).unwrap();
    let state = first.snapshot(3).unwrap().unwrap();
    drop(first);
    let mut fresh = plugin
        .instantiate_aggregator("c", &config, Limits::default())
        .unwrap();
    fresh.restore(9, &state).unwrap().unwrap();
    fresh.accumulate(&messages[20..], &targets(9, 30)).unwrap();
    let resumed = fresh.finish(window(9)).unwrap();

    assert_eq!(uninterrupted.outputs.len(), 1);
    assert_eq!(uninterrupted.outputs[0].message, resumed.outputs[0].message);
    // A broken snapshot is refused with the plugin's reason.
    let err = fresh.restore(4, b"{not json").unwrap().unwrap_err();
    assert!(err.contains("cannot restore accumulator 4"), "{err}");
}

#[test]
fn an_aggregate_plugin_is_refused_as_a_plain_step_and_a_transform_as_a_window_step() {
    let runtime = runtime();
    let stats = runtime.load(Path::new(weir_test_artifacts::STATS)).unwrap();
    assert!(stats.is_aggregate());
    assert_eq!(stats.info().world, "aggregator");
    assert_eq!(stats.metadata().unwrap().kind, "aggregate");
    let err = stats
        .instantiate("stats", &Default::default(), Limits::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("use it in a window step"), "{err}");
    let threshold = runtime
        .load(Path::new(weir_test_artifacts::THRESHOLD))
        .unwrap();
    let err = threshold
        .instantiate_aggregator("t", &Default::default(), Limits::default())
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("a window step needs an aggregate plugin"),
        "{err}"
    );
}

// ----- end to end over Mosquitto -------------------------------------------

const WAIT: Duration = Duration::from_secs(30);

/// Starts `weir run` on `manifest` (written to `dir/weir.toml`) and waits
/// until it has subscribed.
fn run(dir: &Path, manifest: &str) -> Weir {
    let path = dir.join("weir.toml");
    std::fs::write(&path, manifest).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["--log", "info,weir=debug", "run"])
        .arg(&path);
    let weir = Weir::spawn(command, dir.join("weir.log"));
    weir.wait_for_log("Subscribed.", 1);
    weir
}

#[test]
fn processing_time_windows_over_mosquitto_count_every_message_exactly_once() {
    use weir_test_support::Mosquitto;
    use weir_test_support::mqtt::publish_many_blocking;

    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("windows.jsonl");
    let manifest = format!(
        r#"
[broker]
url = "{url}"
client_id = "weir-windows-{pid}"

[http]
listen = "127.0.0.1:0"

[plugins.stats]
path = {stats:?}

[sinks.out]
type = "file"
path = {out:?}
batch_time = "1ms"

[[rules]]
name = "per-device"
from = ["devices/{{device}}/t"]
qos = 1
steps = [{{ plugin = "stats", config = {{ fields = ["v"], aggregates = ["sum"] }}, window = {{ kind = "tumbling", size = "1s", group_by = ["device"] }} }}]
to = ["out"]
"#,
        url = broker.url(),
        pid = std::process::id(),
        stats = weir_test_artifacts::STATS,
        out = out.display().to_string(),
    );
    let weir = run(dir.path(), &manifest);

    // 3 devices, 400 readings each, v = 1: every window's sum is its count.
    let devices = ["d1", "d2", "d3"];
    let per_device = 400;
    let n = devices.len() * per_device;
    publish_many_blocking(
        &broker.url(),
        move |i| format!("devices/{}/t", devices[i % devices.len()]),
        |_| br#"{"v": 1}"#.to_vec(),
        n,
        1,
    );
    let published = n as u64;

    // Wait (bounded) until the windows holding them have all closed.
    let deadline = Instant::now() + WAIT;
    let (windows, total) = loop {
        let windows: Vec<Value> = json_lines(&out)
            .into_iter()
            .map(|line| line["payload"].clone())
            .collect();
        let total: u64 = windows.iter().map(|w| w["count"].as_u64().unwrap()).sum();
        if total >= published || Instant::now() > deadline {
            break (windows, total);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(total, published, "windows: {windows:?}\n{}", weir.log());
    // Each (device, window) once, aligned to whole seconds, and the sum of
    // v equals the count: no message counted twice or in two windows.
    let mut seen = std::collections::BTreeSet::new();
    for w in &windows {
        let start = w["window_start"].as_i64().unwrap();
        assert_eq!(start % 1000, 0, "{w}");
        assert_eq!(w["window_end"].as_i64().unwrap(), start + 1000, "{w}");
        assert_eq!(
            w["v_sum"].as_f64().unwrap(),
            w["count"].as_f64().unwrap(),
            "{w}"
        );
        assert!(
            seen.insert((w["device"].to_string(), start)),
            "window twice: {w}"
        );
    }
    for d in devices {
        let n: u64 = windows
            .iter()
            .filter(|w| w["device"] == d)
            .map(|w| w["count"].as_u64().unwrap())
            .sum();
        assert_eq!(n, per_device as u64, "device {d}");
    }
}

/// Event time over a real Mosquitto: a window closes when the watermark
/// passes its end, and an event for it that comes after that goes to the
/// `late_to` sink unchanged (and is counted), not into a window.
#[test]
fn late_events_go_to_the_late_to_sink_over_mosquitto() {
    use weir_test_support::Mosquitto;
    use weir_test_support::mqtt::publish_many_blocking;

    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("windows.jsonl");
    let late = dir.path().join("late.jsonl");
    let manifest = format!(
        r#"
[broker]
url = "{url}"
client_id = "weir-windows-late-{pid}"

[plugins.stats]
path = {stats:?}

[sinks.out]
type = "file"
path = {out:?}

[sinks.late]
type = "file"
path = {late:?}

[[rules]]
name = "per-device"
from = ["devices/{{device}}/t"]
qos = 1
steps = [{{ plugin = "stats", config = {{ fields = ["v"], aggregates = ["sum"] }}, window = {{ kind = "tumbling", size = "1s", group_by = ["device"], time_field = "ts", late_to = "late" }} }}]
to = ["out"]
"#,
        url = broker.url(),
        pid = std::process::id(),
        stats = weir_test_artifacts::STATS,
        out = out.display().to_string(),
        late = late.display().to_string(),
    );
    let weir = run(dir.path(), &manifest);

    let read = json_lines;
    let publish = |events: &'static [(i64, i64)]| {
        publish_many_blocking(
            &broker.url(),
            |_| "devices/d1/t".to_owned(),
            move |i| format!(r#"{{"ts": {}, "v": {}}}"#, events[i].0, events[i].1).into_bytes(),
            events.len(),
            1,
        )
    };
    let wait_until = |done: &dyn Fn(&[Value], &[Value]) -> bool| {
        let deadline = Instant::now() + WAIT;
        loop {
            let (windows, lates) = (read(&out), read(&late));
            if done(&windows, &lates) || Instant::now() > deadline {
                return (windows, lates);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // [1000, 2000) gets 1000 and 1500; 3500 moves the watermark past 2000
    // and finishes it. (The watermark moves per batch, so the late event
    // is sent once the window is out.)
    publish(&[(1000, 1), (1500, 2), (3500, 4)]);
    wait_until(&|windows, _| !windows.is_empty());
    // 1200 is now late; 5000 finishes [3000, 4000).
    publish(&[(1200, 100), (5000, 8)]);
    let (windows, lates) = wait_until(&|windows, lates| windows.len() >= 2 && !lates.is_empty());
    let log = weir.log();
    // (The window of 5000 is still open, unless an idle timeout closed it.)
    let summary: Vec<(i64, f64, u64)> = windows
        .iter()
        .filter(|w| w["payload"]["window_start"].as_i64() < Some(5000))
        .map(|w| {
            let p = &w["payload"];
            (
                p["window_start"].as_i64().unwrap(),
                p["v_sum"].as_f64().unwrap(),
                p["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![(1000, 3.0, 2), (3000, 4.0, 1)],
        "the late event is in no window\n{log}"
    );
    assert_eq!(lates.len(), 1, "{lates:?}\n{log}");
    assert_eq!(lates[0]["topic"], "devices/d1/t");
    let payload: Value = match &lates[0]["payload"] {
        Value::String(text) => serde_json::from_str(text).unwrap(),
        other => other.clone(),
    };
    assert_eq!(payload, json!({"ts": 1200, "v": 100}), "sent on unchanged");
}

#[test]
fn a_session_that_lost_its_state_fails_alone_even_when_a_late_event_bridges_it() {
    let (_rt, mut agg, mut op, _clock) = chaos_window(
        r#"window = { kind = "session", gap = "5s", group_by = ["device"], time_field = "ts", time_format = "s", max_out_of_orderness = "30s" }"#,
    );
    let step = op.process(
        &mut agg,
        vec![
            reading("a", &json!({"ts": 1, "v": 1}), 0),
            reading("b", &json!({"ts": 1, "v": 1}), 0),
            reading("a", &json!({"ts": 9, "v": 1}), 0),
            reading("a", &json!({"ts": 10, "panic": true}), 0),
            reading("b", &json!({"ts": 2, "v": 1}), 0),
        ],
    );
    // a's second session (lines 2 and 3) is given up with the event that
    // panicked in it.
    let trap = FailureKind::Trap.as_str();
    let rejected: Vec<_> = step.rejected.iter().map(|r| (r.input, r.kind)).collect();
    assert_eq!(rejected, vec![(2, trap), (3, trap)]);
    // Out of order, within the bound: bridges a's two sessions, one of
    // which is lost, so the merged session is lost too.
    let step = op.process(&mut agg, vec![reading("a", &json!({"ts": 5, "v": 1}), 0)]);
    let rejected: Vec<_> = step.rejected.iter().map(|r| (r.input, r.kind)).collect();
    assert_eq!(rejected, vec![(0, "window_failed")]);
    // b's session is intact; a's produces nothing.
    assert_eq!(counts(&op.flush(&mut agg)), vec![row("b", 2, 2.0)]);
    assert_eq!(op.stats().failed, 1);
}
