//! The plugin foundation, end to end: real components built from source by
//! the test build (`tests/artifacts`), run by the real engine and the real
//! `weir` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use weir::Message;
use weir::engine::{FailureKind, Limits, LoadSource, Runtime, RuntimeOptions};
use weir_test_artifacts as guests;

fn runtime() -> Runtime {
    Runtime::new(RuntimeOptions { cache_dir: None }).expect("runtime starts")
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(path)
}

fn config(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match json {
        serde_json::Value::Object(map) => map,
        other => panic!("config must be an object, not {other}"),
    }
}

fn text(topic: &str, payload: &str) -> Message {
    Message::new(topic, payload.as_bytes().to_vec(), 1_700_000_000_000)
}

fn payloads(outputs: &[weir::engine::Output]) -> Vec<String> {
    outputs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.message.payload).into_owned())
        .collect()
}

/// Runs the `weir` binary with a private cache folder.
fn weir(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .expect("weir runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

mod threshold {
    use super::*;

    /// Both twins, Rust and C, run over the same fixture through
    /// `weir plugin test` and must print exactly the expected lines.
    #[test]
    fn keeps_exactly_the_messages_that_pass_in_order_in_rust_and_c_alike() {
        let cache = tempfile::tempdir().unwrap();
        let expected = std::fs::read_to_string(fixture("threshold/expected.jsonl")).unwrap();
        for plugin in [guests::THRESHOLD, guests::THRESHOLD_C] {
            let out = weir(
                cache.path(),
                &[
                    "plugin",
                    "test",
                    plugin,
                    "--config-file",
                    fixture("threshold/config.toml").to_str().unwrap(),
                    "--input",
                    fixture("threshold/input.jsonl").to_str().unwrap(),
                    "--batch-size",
                    "5",
                ],
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                expected,
                "{plugin}: {}",
                stderr(&out)
            );
            // Lines 5, 6, 7 and 11 lack a numeric `temp`: each is reported
            // with its line number and the plugin, and the run goes on.
            let err = stderr(&out);
            for line in [5, 6, 7, 11] {
                assert!(
                    err.contains(&format!(
                        "line {line}: plugin \"threshold\" failed (rejected)"
                    )),
                    "{plugin}: line {line} not reported in:\n{err}"
                );
            }
            assert_eq!(err.matches("failed (").count(), 4, "{plugin}:\n{err}");
            assert!(err.contains("12 lines in, 5 out, 4 failed"), "{err}");
            assert_eq!(
                out.status.code(),
                Some(1),
                "{plugin}: a failed line exits 1"
            );
        }
    }

    #[test]
    fn rust_and_c_twins_fail_the_same_messages_for_the_same_reason() {
        let rt = runtime();
        let messages = [
            text("t", r#"{"temp": 5}"#),
            text("t", r#"{"temp": "5"}"#),
            text("t", r#"{"other": 5}"#),
            text("t", "not json"),
            text("t", r#"{"a": {"b": [1, {"c": 7}]}}"#),
        ];
        let mut results = Vec::new();
        for (path, field) in [(guests::THRESHOLD, "temp"), (guests::THRESHOLD_C, "temp")] {
            let plugin = rt.load(Path::new(path)).unwrap();
            let mut instance = plugin
                .instantiate(
                    "threshold",
                    &config(serde_json::json!({"field": field, "op": "<=", "value": 5})),
                    Limits::default(),
                )
                .unwrap();
            let outcome = instance.process(&messages);
            let kept: Vec<usize> = outcome.outputs.iter().map(|o| o.input).collect();
            let failed: Vec<usize> = outcome.failures.iter().map(|f| f.input).collect();
            assert_eq!(kept, [0], "{path}");
            assert_eq!(failed, [1, 2, 3, 4], "{path}");
            for f in &outcome.failures {
                assert_eq!(f.kind, FailureKind::Rejected);
            }
            assert!(
                outcome.failures[0].reason.contains("temp"),
                "{:?}",
                outcome.failures
            );
            assert!(
                outcome.failures[1].reason.contains("temp"),
                "{:?}",
                outcome.failures
            );
            results.push((kept, failed));
        }
        // Dotted paths reach into objects and arrays, in both languages.
        for path in [guests::THRESHOLD, guests::THRESHOLD_C] {
            let plugin = rt.load(Path::new(path)).unwrap();
            let mut instance = plugin
                .instantiate(
                    "threshold",
                    &config(serde_json::json!({"field": "a.b.1.c", "op": "==", "value": 7})),
                    Limits::default(),
                )
                .unwrap();
            let outcome = instance.process(&messages[4..]);
            assert_eq!(outcome.outputs.len(), 1, "{path}: {:?}", outcome.failures);
        }
    }

    #[test]
    fn passes_kept_messages_through_unchanged() {
        let rt = runtime();
        let plugin = rt.load(Path::new(guests::THRESHOLD)).unwrap();
        let mut instance = plugin
            .instantiate(
                "hot",
                &config(serde_json::json!({"field": "temp", "op": ">", "value": 30})),
                Limits::default(),
            )
            .unwrap();
        let mut m = text("devices/d1/temp_hum", r#"{"temp":  31 , "x": "ü"}"#);
        m.qos = 1;
        m.fields = weir::Fields::from_pairs([("device", "d1")]);
        let outcome = instance.process(std::slice::from_ref(&m));
        assert_eq!(outcome.outputs.len(), 1);
        assert_eq!(outcome.outputs[0].message, m, "byte-identical passthrough");
    }
}

mod isolation {
    use super::*;

    fn chaos(limits: Limits) -> weir::engine::Instance {
        runtime()
            .load(Path::new(guests::CHAOS))
            .unwrap()
            .instantiate("chaos", &Default::default(), limits)
            .unwrap()
    }

    #[test]
    fn a_panic_on_one_message_fails_that_message_only_and_the_next_batch_runs() {
        let mut chaos = chaos(Limits::default());
        let batch: Vec<Message> = ["a", "b", "panic", "c", "d", "e", "f", "g"]
            .iter()
            .map(|p| text("t", p))
            .collect();
        let outcome = chaos.process(&batch);
        assert_eq!(
            payloads(&outcome.outputs),
            ["a", "b", "c", "d", "e", "f", "g"]
        );
        let inputs: Vec<usize> = outcome.outputs.iter().map(|o| o.input).collect();
        assert_eq!(inputs, [0, 1, 3, 4, 5, 6, 7]);
        assert_eq!(outcome.failures.len(), 1);
        let failure = &outcome.failures[0];
        assert_eq!((failure.input, failure.kind), (2, FailureKind::Trap));
        assert!(
            failure.reason.contains("chaos: asked to panic"),
            "the panic message is reported: {}",
            failure.reason
        );
        assert!(chaos.stats().restarts >= 1);

        let next = chaos.process(&[text("t", "h")]);
        assert_eq!(payloads(&next.outputs), ["h"]);
        assert!(next.failures.is_empty());
    }

    #[test]
    fn every_message_of_a_batch_reaches_the_guest_whole() {
        // Parts of every size, empty included, and timestamps that need
        // both words, so that a wrong offset or a swapped word shows.
        let mut batch = Vec::new();
        for i in 0..40_i64 {
            let mut m = text(&format!("t/{}", "x".repeat(i as usize % 7)), "describe");
            m.payload = format!("describe{}", "é".repeat(i as usize % 5)).into();
            let pairs: Vec<(String, String)> = (0..i % 3)
                .map(|k| (format!("k{k}"), "v".repeat((i + k) as usize % 4)))
                .collect();
            m.fields =
                weir::Fields::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            m.timestamp_ms = (i - 20) * (1 << 40) + i;
            m.qos = (i % 3) as u8;
            batch.push(m);
        }
        let mut chaos = chaos(Limits::default());
        let outcome = chaos.process(&batch);
        assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
        let expected: Vec<String> = batch
            .iter()
            .map(|m| {
                let fields: Vec<String> =
                    m.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(
                    "{} {} [{}] {} {}",
                    m.topic,
                    String::from_utf8_lossy(&m.payload),
                    fields.join(","),
                    m.timestamp_ms,
                    m.qos
                )
            })
            .collect();
        assert_eq!(payloads(&outcome.outputs), expected);
    }

    #[test]
    fn a_rejected_message_fails_alone_without_a_restart() {
        let mut chaos = chaos(Limits::default());
        let outcome = chaos.process(&[text("t", "a"), text("t", "fail"), text("t", "b")]);
        assert_eq!(payloads(&outcome.outputs), ["a", "b"]);
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!(outcome.failures[0].kind, FailureKind::Rejected);
        assert_eq!(outcome.failures[0].reason, "chaos: asked to fail");
        assert_eq!(chaos.stats().restarts, 0);
    }

    #[test]
    fn an_infinite_loop_is_interrupted_at_its_deadline_and_the_next_batch_runs_fresh() {
        let deadline = Duration::from_millis(100);
        let mut chaos = chaos(Limits {
            batch_deadline: deadline,
            ..Limits::default()
        });
        let started = Instant::now();
        let outcome = chaos.process(&[text("t", "a"), text("t", "spin")]);
        // A hang guard, not a performance assertion.
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(outcome.outputs.is_empty());
        assert_eq!(outcome.failures.len(), 2, "the whole batch fails");
        for f in &outcome.failures {
            assert_eq!(f.kind, FailureKind::Deadline);
            assert!(f.reason.contains("100 ms deadline"), "{}", f.reason);
        }
        assert_eq!(chaos.stats().restarts, 1);

        let next = chaos.process(&[text("t", "after")]);
        assert_eq!(payloads(&next.outputs), ["after"]);
    }

    /// Plugins share the engine's epoch: what stops one call past its
    /// deadline must not stop another plugin's call before its own.
    #[test]
    fn a_loop_stopped_at_its_deadline_does_not_cut_short_another_plugins_call() {
        let rt = runtime();
        let plugin = rt.load(Path::new(guests::CHAOS)).unwrap();
        let spin = |deadline: Duration| {
            let limits = Limits {
                batch_deadline: deadline,
                ..Limits::default()
            };
            let mut chaos = plugin
                .instantiate("chaos", &Default::default(), limits)
                .unwrap();
            std::thread::spawn(move || {
                let started = Instant::now();
                let outcome = chaos.process(&[text("t", "spin")]);
                (outcome, started.elapsed())
            })
        };
        let long = spin(Duration::from_secs(2));
        let short = spin(Duration::from_millis(100));
        let (short, short_took) = short.join().unwrap();
        let (long, long_took) = long.join().unwrap();
        for outcome in [&short, &long] {
            assert_eq!(outcome.failures.len(), 1);
            assert_eq!(outcome.failures[0].kind, FailureKind::Deadline);
        }
        assert!(short_took >= Duration::from_millis(100), "{short_took:?}");
        assert!(
            long_took >= Duration::from_secs(2),
            "interrupted after {long_took:?}, before its 2 s deadline"
        );
    }

    /// An idle runtime stops its epoch ticker (no wake-ups while nothing
    /// runs); the next call must wake it, or a loop would never be
    /// interrupted.
    #[test]
    fn an_infinite_loop_after_an_idle_spell_is_still_interrupted() {
        let rt = runtime();
        let mut chaos = rt
            .load(Path::new(guests::CHAOS))
            .unwrap()
            .instantiate(
                "chaos",
                &Default::default(),
                Limits {
                    batch_deadline: Duration::from_millis(100),
                    ..Limits::default()
                },
            )
            .unwrap();
        let started = Instant::now();
        while !rt.epoch_ticker_parked() {
            assert!(
                started.elapsed() < weir::engine::PARK_AFTER * 20,
                "the ticker never parked"
            );
            std::thread::sleep(Duration::from_millis(10));
        }

        // On another thread, so that a ticker that stays asleep fails the
        // test instead of hanging it.
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let spun = chaos.process(&[text("t", "spin")]);
            let after = chaos.process(&[text("t", "after")]);
            done.send((spun, after)).unwrap();
        });
        let (spun, after) = outcome
            .recv_timeout(Duration::from_secs(30))
            .expect("the loop was not interrupted: the parked ticker did not wake");
        assert_eq!(spun.failures.len(), 1);
        assert_eq!(spun.failures[0].kind, FailureKind::Deadline);
        assert_eq!(payloads(&after.outputs), ["after"]);
        assert!(!rt.epoch_ticker_parked(), "calls woke the ticker");
    }

    #[test]
    fn unbounded_allocation_is_stopped_at_the_memory_cap() {
        let mut chaos = chaos(Limits {
            memory_cap_bytes: 24 << 20,
            ..Limits::default()
        });
        let outcome = chaos.process(&[text("t", "hog")]);
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!(outcome.failures[0].kind, FailureKind::MemoryCap);
        assert!(
            outcome.failures[0]
                .reason
                .contains("memory cap of 25165824 bytes"),
            "{}",
            outcome.failures[0].reason
        );
        let next = chaos.process(&[text("t", "after")]);
        assert_eq!(payloads(&next.outputs), ["after"]);
    }

    #[test]
    fn files_environment_and_sockets_are_denied() {
        let mut chaos = chaos(Limits::default());
        let outcome = chaos.process(&[text("t", "file"), text("t", "env"), text("t", "socket")]);
        assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
        let got = payloads(&outcome.outputs);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].starts_with("file: denied"), "{got:?}");
        assert!(got[1].starts_with("env: denied"), "{got:?}");
        assert!(got[2].starts_with("socket: denied"), "{got:?}");
        // The host is unaffected.
        let next = chaos.process(&[text("t", "after")]);
        assert_eq!(payloads(&next.outputs), ["after"]);
    }

    #[test]
    fn guest_output_and_logs_reach_the_log_tagged_with_the_plugin() {
        let cache = tempfile::tempdir().unwrap();
        let input = cache.path().join("in.jsonl");
        std::fs::write(
            &input,
            "{\"topic\":\"t\",\"payload_text\":\"print\"}\n{\"topic\":\"t\",\"payload_text\":\"log\"}\n",
        )
        .unwrap();
        let out = weir(
            cache.path(),
            &[
                "plugin",
                "test",
                guests::CHAOS,
                "--input",
                input.to_str().unwrap(),
            ],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{err}");
        for needle in ["chaos: to stdout", "chaos: to stderr", "probe=\"yes\""] {
            let line = err
                .lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle:?} not logged in:\n{err}"));
            assert!(line.contains("plugin=\"chaos\""), "untagged: {line}");
        }
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    }
}

mod cache {
    use super::*;

    #[test]
    fn a_second_load_is_served_from_the_compiled_cache() {
        let dir = tempfile::tempdir().unwrap();
        let options = RuntimeOptions {
            cache_dir: Some(dir.path().to_owned()),
        };
        let first = Runtime::new(options.clone()).unwrap();
        assert!(!first.compiler_started());
        let plugin = first.load(Path::new(guests::THRESHOLD)).unwrap();
        assert_eq!(plugin.load_source(), LoadSource::Compiled);
        assert!(first.compiler_started());
        assert_eq!(
            first
                .load(Path::new(guests::THRESHOLD))
                .unwrap()
                .load_source(),
            LoadSource::Memory,
            "compiled once per content hash in a process"
        );
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "one artifact written");

        // A new process (a new runtime) finds it on disk.
        let second = Runtime::new(options).unwrap();
        let again = second.load(Path::new(guests::THRESHOLD)).unwrap();
        assert_eq!(again.load_source(), LoadSource::Disk);
        assert_eq!(again.content_hash(), plugin.content_hash());
        assert!(
            !second.compiler_started(),
            "a cached plugin loads without building the compiler"
        );
        // And it runs on the engine that never compiled.
        let mut instance = again
            .instantiate(
                "hot",
                &config(serde_json::json!({"field": "t", "op": ">", "value": 1})),
                Limits::default(),
            )
            .unwrap();
        assert_eq!(
            instance.process(&[text("x", r#"{"t": 2}"#)]).outputs.len(),
            1
        );
    }

    #[test]
    fn a_corrupt_cache_entry_is_compiled_again() {
        let dir = tempfile::tempdir().unwrap();
        let options = RuntimeOptions {
            cache_dir: Some(dir.path().to_owned()),
        };
        Runtime::new(options.clone())
            .unwrap()
            .load(Path::new(guests::NOOP))
            .unwrap();
        let entry = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&entry, b"garbage").unwrap();
        let plugin = Runtime::new(options.clone())
            .unwrap()
            .load(Path::new(guests::NOOP))
            .unwrap();
        assert_eq!(plugin.load_source(), LoadSource::Compiled);
        let plugin = Runtime::new(options)
            .unwrap()
            .load(Path::new(guests::NOOP))
            .unwrap();
        assert_eq!(
            plugin.load_source(),
            LoadSource::Disk,
            "the entry was replaced"
        );
    }

    #[test]
    fn inspect_reports_the_cache_hit_on_a_second_run() {
        let cache = tempfile::tempdir().unwrap();
        let first = weir(cache.path(), &["plugin", "inspect", guests::THRESHOLD]);
        let second = weir(cache.path(), &["plugin", "inspect", guests::THRESHOLD]);
        let first = String::from_utf8_lossy(&first.stdout).into_owned();
        let second = String::from_utf8_lossy(&second.stdout).into_owned();
        assert!(first.contains("compiled  from source"), "{first}");
        assert!(second.contains("compiled  from cache"), "{second}");
    }
}

mod cli {
    use super::*;

    #[test]
    fn inspect_prints_name_version_kind_contract_config_keys_and_imports() {
        let cache = tempfile::tempdir().unwrap();
        let out = weir(cache.path(), &["plugin", "inspect", guests::THRESHOLD_C]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        for needle in [
            "name      threshold",
            "version   0.1.0",
            "kind      filter",
            "contract  weir:plugin@0.1.0 (world transformer)",
            "imports   weir:plugin/types@0.1.0",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
        }
        let json = weir(
            cache.path(),
            &["plugin", "inspect", "--json", guests::THRESHOLD],
        );
        let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        let keys: Vec<&str> = report["config_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["field", "op", "value"]);
        assert_eq!(report["kind"], "filter");
    }

    /// Each malformed case gives one line on stderr, starting with `error: `,
    /// and exit code 2.
    #[test]
    fn malformed_plugins_and_configs_each_give_a_one_line_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{\"topic\":\"t\",\"payload\":{\"temp\":1}}\n").unwrap();
        let text_file = dir.path().join("notes.wasm");
        std::fs::write(&text_file, "this is not wasm").unwrap();
        let core = dir.path().join("core.wasm");
        // The smallest valid core module: magic and version 1.
        std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
        // A component built against another contract version: the same
        // component with its interface names moved to 0.9.0.
        let other_version = dir.path().join("v09.wasm");
        let bytes = std::fs::read(guests::THRESHOLD).unwrap();
        std::fs::write(
            &other_version,
            replace_all(&bytes, b"transform@0.1.0", b"transform@0.9.0"),
        )
        .unwrap();
        let missing = dir.path().join("missing.wasm");

        let cases: Vec<(Vec<String>, &str)> = vec![
            (inspect(&missing), "cannot read plugin"),
            (inspect(&text_file), "is not a WebAssembly file"),
            (
                inspect(&core),
                "is a core WebAssembly module, not a component",
            ),
            (
                inspect(Path::new(guests::LAYOUT_PROBE)),
                "does not export weir:plugin/transform",
            ),
            (
                inspect(&other_version),
                "built against weir:plugin@0.9.0; this weir supports weir:plugin@0.1.x",
            ),
            (
                test_with(&input, &["feild=temp", "op=>", "value=1"]),
                "does not accept config key \"feild\" (did you mean \"field\"?); it accepts: field, op, value",
            ),
            (
                test_with(&input, &["field=temp", "op=~", "value=1"]),
                "plugin \"threshold\" refused its config:",
            ),
            (
                test_with(&input, &["field=temp", "op=>"]),
                "plugin \"threshold\" refused its config:",
            ),
        ];
        for (args, expected) in cases {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = weir(&cache, &args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{args:?}: one line, got:\n{err}");
            assert!(err.starts_with("error: "), "{err}");
            assert!(
                err.contains(expected),
                "{args:?}: {expected:?} not in {err}"
            );
        }
    }

    fn inspect(path: &Path) -> Vec<String> {
        vec![
            "plugin".into(),
            "inspect".into(),
            path.display().to_string(),
        ]
    }

    fn test_with(input: &Path, config: &[&str]) -> Vec<String> {
        let mut args = vec![
            "plugin".to_owned(),
            "test".to_owned(),
            guests::THRESHOLD.to_owned(),
            "--input".to_owned(),
            input.display().to_string(),
        ];
        for pair in config {
            args.push("--config".to_owned());
            args.push((*pair).to_owned());
        }
        args
    }

    fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let mut out = haystack.to_vec();
        let mut found = 0;
        let mut i = 0;
        while i + from.len() <= out.len() {
            if &out[i..i + from.len()] == from {
                out[i..i + from.len()].copy_from_slice(to);
                found += 1;
                i += from.len();
            } else {
                i += 1;
            }
        }
        assert!(found > 0, "pattern not found");
        out
    }
}

mod examples {
    use super::*;

    fn instance(path: &str, cfg: serde_json::Value) -> weir::engine::Instance {
        runtime()
            .load(Path::new(path))
            .unwrap()
            .instantiate("example", &config(cfg), Limits::default())
            .unwrap()
    }

    #[test]
    fn units_converts_and_renames_fields() {
        let mut units = instance(
            guests::UNITS,
            serde_json::json!({"convert": {"temp_f": "f_to_c"}, "rename": {"temp_f": "temp_c"}}),
        );
        let outcome = units.process(&[text("t", r#"{"temp_f": 212, "hum": 40}"#)]);
        assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
        let payload: serde_json::Value =
            serde_json::from_slice(&outcome.outputs[0].message.payload).unwrap();
        assert_eq!(payload, serde_json::json!({"temp_c": 100.0, "hum": 40}));
    }

    #[test]
    fn split_array_emits_one_message_per_element() {
        let mut split = instance(
            guests::SPLIT_ARRAY,
            serde_json::json!({"field": "readings"}),
        );
        let outcome = split.process(&[
            text("t", r#"{"readings": [{"v": 1}, {"v": 2}, {"v": 3}]}"#),
            text("t", r#"{"readings": 5}"#),
            text("t", r#"{"readings": []}"#),
        ]);
        assert_eq!(
            payloads(&outcome.outputs),
            [r#"{"v":1}"#, r#"{"v":2}"#, r#"{"v":3}"#]
        );
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!(outcome.failures[0].input, 1);
    }

    #[test]
    fn dedupe_drops_repeats_within_its_window_across_batches() {
        let mut dedupe = instance(
            guests::DEDUPE,
            serde_json::json!({"key": "id", "window": 2}),
        );
        let first = dedupe.process(&[
            text("t", r#"{"id": 1}"#),
            text("t", r#"{"id": 1}"#),
            text("t", r#"{"id": 2}"#),
        ]);
        assert_eq!(
            first.outputs.iter().map(|o| o.input).collect::<Vec<_>>(),
            [0, 2]
        );
        // State survives between batches: 2 is still remembered and dropped;
        // 3 is new and pushes 1 out of the two-key window, so 1 passes again.
        let second = dedupe.process(&[
            text("t", r#"{"id": 2}"#),
            text("t", r#"{"id": 3}"#),
            text("t", r#"{"id": 1}"#),
        ]);
        assert_eq!(
            second.outputs.iter().map(|o| o.input).collect::<Vec<_>>(),
            [1, 2]
        );
    }
}
