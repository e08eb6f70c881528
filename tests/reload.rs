//! Hot reload end to end: the real `weir` binary over a real Mosquitto
//! (QoS 1), plugin files replaced while messages flow.
//!
//! Plugin versions are told apart by what they do: `tag-v1` and `tag-v2`
//! (test guests) add their own name to every payload. A "new build" of a
//! plugin whose behaviour must not change (`dedupe`, `stats`) is the same
//! component with a custom section appended: other bytes, other content
//! hash, same code.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_test_support::WeirProcess as Weir;
use weir_test_support::weir::json_lines as lines;
use weir_test_support::{Mosquitto, mqtt::publish_many_blocking};

/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(60);

/// Starts `weir run` on `manifest` (written to `dir/weir.toml`) and waits
/// until it has subscribed `subscriptions` times.
fn run(dir: &Path, manifest: &str, subscriptions: usize, extra: &[&str]) -> Weir {
    let path = dir.join("weir.toml");
    let manifest = format!("{manifest}\n[http]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&path, manifest).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["--log", "info,weir=debug", "run"])
        .args(extra)
        .arg(&path);
    let weir = Weir::spawn(command, dir.join("weir.log"));
    weir.wait_for_log("Subscribed.", subscriptions);
    if !extra.contains(&"--no-watch") {
        weir.wait_for_log("Watching the manifest and plugins.", 1);
    }
    weir
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::process::id() as u64 * 1000 + N.fetch_add(1, Ordering::Relaxed)
}

fn toml_path(p: &Path) -> String {
    p.display().to_string().replace('\\', "\\\\")
}

/// Replaces `path` with `bytes` the way an editor does: a temporary file
/// in the same folder, renamed over it.
fn replace_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", unique()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The component with a custom section appended: another build (another
/// content hash) of the same code.
fn rebuilt(component: &str, tag: &str) -> Vec<u8> {
    with_custom_section(std::fs::read(component).unwrap(), tag.as_bytes())
}

/// `bytes` with a custom section `weir-test-build` holding `content`.
fn with_custom_section(mut bytes: Vec<u8>, content: &[u8]) -> Vec<u8> {
    fn leb128(out: &mut Vec<u8>, mut n: usize) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"weir-test-build";
    let mut section = Vec::new();
    leb128(&mut section, name.len());
    section.extend_from_slice(name);
    section.extend_from_slice(content);
    bytes.push(0);
    leb128(&mut bytes, section.len());
    bytes.extend_from_slice(&section);
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A manifest with one rule `tagged` over `devices/{device}/seq` running
/// plugin `tag` (at `plugin`) into a file sink at `out`.
fn tag_manifest(broker: &Mosquitto, plugin: &Path, out: &Path) -> String {
    format!(
        r#"
[broker]
url = "{url}"
client_id = "weir-reload-{id}"

[plugins.tag]
path = "{plugin}"

[sinks.out]
type = "file"
path = "{out}"

[[rules]]
name = "tagged"
from = ["devices/{{device}}/seq"]
qos = 1
steps = [{{ plugin = "tag" }}]
to = ["out"]
"#,
        url = broker.url(),
        id = unique(),
        plugin = toml_path(plugin),
        out = toml_path(out),
    )
}

/// Publishes `n` messages `{"seq": i}` over 10 topics at QoS 1, in chunks
/// of `chunk` with `pause` between them (a steady stream), on a thread.
fn publish_steadily(
    url: String,
    n: u64,
    chunk: u64,
    pause: Duration,
) -> std::thread::JoinHandle<()> {
    publish_steadily_on(url, "devices", n, chunk, pause)
}

/// [`publish_steadily`] on `<prefix>/d<k>/seq`... or, for a prefix other
/// than `devices`, `<prefix>/d<k>`.
fn publish_steadily_on(
    url: String,
    prefix: &'static str,
    n: u64,
    chunk: u64,
    pause: Duration,
) -> std::thread::JoinHandle<()> {
    let suffix = if prefix == "devices" { "/seq" } else { "" };
    std::thread::spawn(move || {
        let mut start = 0;
        while start < n {
            let count = chunk.min(n - start);
            publish_many_blocking(
                &url,
                |i| format!("{prefix}/d{}{suffix}", (start + i as u64) % 10),
                |i| format!(r#"{{"seq":{}}}"#, start + i as u64).into_bytes(),
                count as usize,
                1,
            );
            start += count;
            std::thread::sleep(pause);
        }
    })
}

/// Every `seq` in `0..n` exactly once, in order per topic; returns the
/// tags in output order.
fn check_exactly_once_in_order(out: &[Value], n: u64) -> Vec<String> {
    let mut seen = vec![0u32; n as usize];
    let mut last_per_topic = std::collections::HashMap::<String, i64>::new();
    let mut tags = Vec::with_capacity(out.len());
    for line in out {
        let seq = line["payload"]["seq"].as_u64().expect("payload.seq");
        seen[seq as usize] += 1;
        let topic = line["topic"].as_str().unwrap().to_owned();
        let last = last_per_topic.entry(topic.clone()).or_insert(-1);
        assert!(
            seq as i64 > *last,
            "topic {topic}: seq {seq} after {last}: out of order"
        );
        *last = seq as i64;
        tags.push(line["payload"]["tag"].as_str().expect("a tag").to_owned());
    }
    let missing: Vec<usize> = (0..n as usize).filter(|&i| seen[i] == 0).collect();
    let doubled: Vec<usize> = (0..n as usize).filter(|&i| seen[i] > 1).collect();
    assert!(
        missing.is_empty(),
        "lost: {:?}…",
        &missing[..missing.len().min(10)]
    );
    assert!(
        doubled.is_empty(),
        "duplicated: {:?}…",
        &doubled[..doubled.len().min(10)]
    );
    assert_eq!(out.len() as u64, n);
    tags
}

#[test]
fn fifty_thousand_messages_survive_twenty_swaps_exactly_once_in_order_and_tagged_by_one_version() {
    const N: u64 = 50_000;
    const SWAPS: usize = 20;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("tag.wasm");
    let out = dir.path().join("out.jsonl");
    let v1 = std::fs::read(weir_test_artifacts::TAG_V1).unwrap();
    let v2 = std::fs::read(weir_test_artifacts::TAG_V2).unwrap();
    std::fs::write(&plugin, &v1).unwrap();
    let weir = run(dir.path(), &tag_manifest(&broker, &plugin, &out), 1, &[]);

    let publisher = publish_steadily(broker.url(), N, 200, Duration::from_millis(50));
    for swap in 0..SWAPS {
        // Let messages flow on the running version first.
        let before = lines(&out).len();
        let deadline = Instant::now() + WAIT;
        while lines(&out).len() < before + 200 {
            assert!(Instant::now() < deadline, "no traffic between swaps");
            std::thread::sleep(Duration::from_millis(10));
        }
        let next = if swap % 2 == 0 { &v2 } else { &v1 };
        // Both ways a user replaces a file: an atomic rename, and `cp`
        // over it (truncate and write in place).
        if swap % 4 < 2 {
            replace_atomically(&plugin, next);
        } else {
            std::fs::write(&plugin, next).unwrap();
        }
        weir.wait_for_log("Plugin swapped.", swap + 1);
    }
    let still_publishing = !publisher.is_finished();
    publisher.join().unwrap();
    assert!(
        still_publishing,
        "every swap happened while messages flowed"
    );

    let got = weir.wait_for_lines(&out, N as usize);
    let tags = check_exactly_once_in_order(&got, N);
    assert!(tags.iter().all(|t| t == "tag-v1" || t == "tag-v2"));
    // Each swap is one switch of version in the output, at a batch
    // boundary: 21 runs of one tag each.
    let switches = tags.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(switches, SWAPS, "one switch per swap");
    assert_eq!(tags[0], "tag-v1");
    assert_eq!(tags.last().unwrap(), "tag-v1", "20 swaps end on v1");

    assert_eq!(
        weir.metric_matching(&[
            "weir_reloads_total",
            "kind=\"plugin\"",
            "outcome=\"applied\""
        ]),
        SWAPS as f64
    );
    let health: Value = serde_json::from_str(&weir.http_get("/health").1).unwrap();
    assert_eq!(health["plugins"]["tag"]["content_hash"], sha256_hex(&v1));
    assert_eq!(health["plugins"]["tag"]["version"], "1.0.0");
    let swapped = weir.lines_with("Plugin swapped.");
    assert!(
        swapped
            .iter()
            .all(|l| l.contains("pause_ms") && l.contains("tagged")),
        "{swapped:?}"
    );
    weir.terminate();
}

#[test]
fn a_corrupt_file_a_wrong_world_and_a_refusing_init_keep_the_old_version_running() {
    const N: u64 = 4_000;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("tag.wasm");
    let out = dir.path().join("out.jsonl");
    let v1 = std::fs::read(weir_test_artifacts::TAG_V1).unwrap();
    std::fs::write(&plugin, &v1).unwrap();
    let weir = run(dir.path(), &tag_manifest(&broker, &plugin, &out), 1, &[]);
    let publisher = publish_steadily(broker.url(), N, 200, Duration::from_millis(40));

    let bad: [(Vec<u8>, &str); 3] = [
        (
            b"\0asm\x0d\0\x01\0 this is not a component".to_vec(),
            "cannot compile",
        ),
        (
            std::fs::read(weir_test_artifacts::LAYOUT_PROBE).unwrap(),
            "does not export weir:plugin/transform",
        ),
        (
            std::fs::read(weir_test_artifacts::TAG_REFUSE).unwrap(),
            "refuses every config",
        ),
    ];
    for (n, (bytes, cause)) in bad.iter().enumerate() {
        replace_atomically(&plugin, bytes);
        weir.wait_for_log("Plugin reload failed", n + 1);
        let line = weir.lines_with("Plugin reload failed").pop().unwrap();
        assert!(line.contains(&toml_path(&plugin)), "names the file: {line}");
        assert!(line.contains(cause), "names the cause ({cause}): {line}");
    }
    publisher.join().unwrap();
    let got = weir.wait_for_lines(&out, N as usize);
    let tags = check_exactly_once_in_order(&got, N);
    assert!(
        tags.iter().all(|t| t == "tag-v1"),
        "only the old version ran"
    );
    assert_eq!(
        weir.metric_matching(&[
            "weir_reloads_total",
            "kind=\"plugin\"",
            "outcome=\"failed\""
        ]),
        3.0
    );
    assert_eq!(weir.lines_with("Plugin swapped.").len(), 0);
    let health: Value = serde_json::from_str(&weir.http_get("/health").1).unwrap();
    assert_eq!(health["plugins"]["tag"]["content_hash"], sha256_hex(&v1));
    weir.terminate();
}

#[test]
fn dedupe_memory_and_an_open_tumbling_window_keep_their_state_across_a_swap() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let dedupe = dir.path().join("dedupe.wasm");
    let stats = dir.path().join("stats.wasm");
    std::fs::copy(weir_test_artifacts::DEDUPE, &dedupe).unwrap();
    std::fs::copy(weir_test_artifacts::STATS, &stats).unwrap();
    let out_d = dir.path().join("dedupe.jsonl");
    let out_w = dir.path().join("windows.jsonl");
    let manifest = format!(
        r#"
[broker]
url = "{url}"
client_id = "weir-reload-state-{id}"

[plugins.dedupe]
path = "{dedupe}"
[plugins.stats]
path = "{stats}"

[sinks.d]
type = "file"
path = "{out_d}"
[sinks.w]
type = "file"
path = "{out_w}"

[[rules]]
name = "dedupe"
from = ["ids/{{device}}"]
qos = 1
steps = [{{ plugin = "dedupe", config = {{ key = "id" }} }}]
to = ["d"]

[[rules]]
name = "window"
from = ["readings/{{device}}"]
qos = 1
steps = [{{ plugin = "stats", config = {{ fields = ["v"], aggregates = ["count", "sum"] }}, window = {{ kind = "tumbling", size = "1h", group_by = ["device"] }} }}]
to = ["w"]
"#,
        url = broker.url(),
        id = unique(),
        dedupe = toml_path(&dedupe),
        stats = toml_path(&stats),
        out_d = toml_path(&out_d),
        out_w = toml_path(&out_w),
    );
    let weir = run(dir.path(), &manifest, 2, &[]);
    let ids = |from: u64, to: u64| {
        publish_many_blocking(
            &broker.url(),
            |_| "ids/a".to_owned(),
            |i| format!(r#"{{"id":{}}}"#, from + i as u64).into_bytes(),
            (to - from) as usize,
            1,
        )
    };
    let readings = |from: u64, to: u64| {
        publish_many_blocking(
            &broker.url(),
            |_| "readings/a".to_owned(),
            |i| format!(r#"{{"v":{}}}"#, from + i as u64).into_bytes(),
            (to - from) as usize,
            1,
        )
    };
    ids(0, 100);
    readings(0, 40);
    weir.wait_for_lines(&out_d, 100);
    let deadline = Instant::now() + WAIT;
    while weir.metric_matching(&["weir_rule_messages_in_total", "rule=\"window\""]) < 40.0 {
        assert!(
            Instant::now() < deadline,
            "the window rule did not take 40 readings"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    replace_atomically(&dedupe, &rebuilt(weir_test_artifacts::DEDUPE, "2"));
    replace_atomically(&stats, &rebuilt(weir_test_artifacts::STATS, "2"));
    weir.wait_for_log("Plugin swapped.", 2);
    let swapped = weir.lines_with("Plugin swapped.");
    assert!(
        swapped.iter().all(|l| l.contains("moved")),
        "state moved in both: {swapped:?}"
    );

    // 50..100 were let through before the swap: the new version remembers.
    ids(50, 150);
    readings(40, 100);
    let got = weir.wait_for_lines(&out_d, 150);
    let passed: Vec<u64> = got
        .iter()
        .map(|l| l["payload"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(passed, (0..150).collect::<Vec<_>>());
    let deadline = Instant::now() + WAIT;
    while weir.metric_matching(&["weir_rule_messages_in_total", "rule=\"window\""]) < 100.0 {
        assert!(
            Instant::now() < deadline,
            "the window rule did not take 100 readings"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Shutdown finishes the open window: one result over all 100
    // readings, as an uninterrupted run gives.
    weir.terminate();
    let windows = lines(&out_w);
    assert_eq!(windows.len(), 1, "{windows:?}");
    assert_eq!(windows[0]["payload"]["v_count"], 100, "{windows:?}");
    assert_eq!(
        windows[0]["payload"]["v_sum"],
        (0..100).sum::<u64>() as f64,
        "{windows:?}"
    );
}

/// A manifest for the manifest-reload test: rules `steady` (to sink `s` at
/// `steady_out`), `win` (a one-hour tumbling window into sink `w`), and
/// `extra` rules `(name, filter prefix, sink, file)`.
fn rules_manifest(
    broker: &Mosquitto,
    client: &str,
    stats: &str,
    steady_out: &Path,
    w_out: &Path,
    extra: &[(&str, &str, &Path)],
) -> String {
    let mut m = format!(
        r#"
[broker]
url = "{url}"
client_id = "{client}"

[plugins.stats]
path = "{stats}"

[sinks.s]
type = "file"
path = "{steady}"
[sinks.w]
type = "file"
path = "{w}"
"#,
        url = broker.url(),
        stats = toml_path(Path::new(stats)),
        steady = toml_path(steady_out),
        w = toml_path(w_out),
    );
    for (name, _, file) in extra {
        m += &format!(
            "[sinks.{name}]\ntype = \"file\"\npath = \"{}\"\n",
            toml_path(file)
        );
    }
    m += r#"
[[rules]]
name = "steady"
from = ["steady/{device}"]
qos = 1
to = ["s"]

[[rules]]
name = "win"
from = ["win/{device}"]
qos = 1
steps = [{ plugin = "stats", config = { fields = ["v"], aggregates = ["count", "sum"] }, window = { kind = "tumbling", size = "1h", group_by = ["device"] } }]
to = ["w"]
"#;
    for (name, prefix, _) in extra {
        m += &format!(
            "\n[[rules]]\nname = \"{name}\"\nfrom = [\"{prefix}/{{device}}\"]\nqos = 1\nto = [\"{name}\"]\n"
        );
    }
    m + "\n[http]\nlisten = \"127.0.0.1:0\"\n"
}

fn publish(broker: &Mosquitto, topic: &str, from: u64, to: u64, key: &str) {
    publish_many_blocking(
        &broker.url(),
        |_| topic.to_owned(),
        |i| format!(r#"{{"{key}":{}}}"#, from + i as u64).into_bytes(),
        (to - from) as usize,
        1,
    );
}

#[test]
fn adding_removing_and_changing_while_traffic_flows_and_a_broken_manifest_changes_nothing() {
    const N: u64 = 3_000;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let client = format!("weir-reload-manifest-{}", unique());
    let stats = weir_test_artifacts::STATS;
    let manifest = rules_manifest(
        &broker,
        &client,
        stats,
        &p("s1.jsonl"),
        &p("w.jsonl"),
        &[("old", "old", &p("old.jsonl"))],
    );
    // Written by hand (not Weir::run, which appends [http] again).
    let weir = run(
        dir.path(),
        manifest.trim_end_matches("\n[http]\nlisten = \"127.0.0.1:0\"\n"),
        1,
        &[],
    );
    weir.wait_for_log("Subscribed.", 3);
    let path = p("weir.toml");
    // The watcher's first look finds the manifest weir started from: no
    // reload, no log line above debug.
    weir.wait_for_log("Manifest file unchanged.", 1);
    assert_eq!(weir.lines_with("Manifest reloaded").len(), 0);

    let publisher = publish_steadily_on(broker.url(), "steady", N, 100, Duration::from_millis(40));
    publish(&broker, "win/a", 0, 30, "v");
    publish(&broker, "old/x", 0, 10, "n");
    weir.wait_for_lines(&p("old.jsonl"), 10);

    // Remove `old`, add `new`, move sink `s` to another file; `win` and
    // `steady` stay.
    let changed = rules_manifest(
        &broker,
        &client,
        stats,
        &p("s2.jsonl"),
        &p("w.jsonl"),
        &[("new", "new", &p("new.jsonl"))],
    );
    replace_atomically(&path, changed.as_bytes());
    weir.wait_for_log("Manifest reloaded.", 1);
    let line = weir.lines_with("Manifest reloaded.").pop().unwrap();
    for part in [
        "rules added: new",
        "rules removed: old",
        "rules rewired: steady",
        "sinks changed: s",
    ] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
    assert!(
        !line.contains("win"),
        "the window rule is untouched: {line}"
    );
    // The new rule's subscription is acknowledged before anything is sent
    // to it (the broker drops what comes before).
    weir.wait_for_log("Subscribed.", 4);
    publish(&broker, "old/x", 10, 20, "n");
    publish(&broker, "new/x", 0, 10, "n");
    weir.wait_for_lines(&p("new.jsonl"), 10);
    assert_eq!(
        lines(&p("old.jsonl")).len(),
        10,
        "the removed rule's subscription ended"
    );

    // A broken manifest: every problem logged, nothing changes.
    let broken = changed.replace("qos = 1\nto = [\"new\"]", "qos = 7\nto = [\"nowhere\"]");
    replace_atomically(&path, broken.as_bytes());
    weir.wait_for_log("Manifest reload failed", 1);
    let line = weir.lines_with("Manifest reload failed").pop().unwrap();
    assert!(line.contains("nowhere"), "names the unknown sink: {line}");
    assert!(line.contains("qos"), "names the bad qos: {line}");
    publish(&broker, "new/x", 10, 20, "n");
    weir.wait_for_lines(&p("new.jsonl"), 20);

    // Put back as it runs: said so, nothing reloaded. The same bytes
    // written again (an editor saving without an edit): not reloaded.
    replace_atomically(&path, changed.as_bytes());
    weir.wait_for_log("Manifest is back to the version that runs", 1);
    replace_atomically(&path, changed.as_bytes());
    weir.wait_for_log("Manifest file unchanged.", 2);
    assert_eq!(weir.lines_with("Manifest reloaded").len(), 1);

    publisher.join().unwrap();
    publish(&broker, "win/a", 30, 50, "v");
    let deadline = Instant::now() + WAIT;
    loop {
        let total = lines(&p("s1.jsonl")).len() + lines(&p("s2.jsonl")).len();
        if total >= N as usize {
            break;
        }
        assert!(Instant::now() < deadline, "steady has {total} of {N}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + WAIT;
    while weir.metric_matching(&["weir_rule_messages_in_total", "rule=\"win\""]) < 50.0 {
        assert!(
            Instant::now() < deadline,
            "the window rule did not take 50 readings"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    weir.terminate();

    // The unchanged rule lost nothing: the old sink's file, then the new
    // one, hold every message once, in order per topic.
    let s1 = lines(&p("s1.jsonl"));
    let s2 = lines(&p("s2.jsonl"));
    assert!(
        !s1.is_empty() && !s2.is_empty(),
        "traffic on both sides of the switch"
    );
    let mut all = s1;
    all.extend(s2);
    let mut seen = vec![0u32; N as usize];
    let mut last = std::collections::HashMap::<String, i64>::new();
    for l in &all {
        let seq = l["payload"]["seq"].as_u64().unwrap();
        seen[seq as usize] += 1;
        let prev = last
            .entry(l["topic"].as_str().unwrap().to_owned())
            .or_insert(-1);
        assert!(seq as i64 > *prev, "out of order at {seq}");
        *prev = seq as i64;
    }
    assert!(
        seen.iter().all(|&n| n == 1),
        "each steady message exactly once"
    );
    // The window kept its state across both reloads.
    let windows = lines(&p("w.jsonl"));
    assert_eq!(windows.len(), 1, "{windows:?}");
    assert_eq!(windows[0]["payload"]["v_count"], 50);
    assert_eq!(windows[0]["payload"]["v_sum"], (0..50).sum::<u64>() as f64);
}

#[test]
fn with_no_watch_only_sighup_reloads_the_manifest() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let client = format!("weir-reload-hup-{}", unique());
    let stats = weir_test_artifacts::STATS;
    let manifest = rules_manifest(&broker, &client, stats, &p("s.jsonl"), &p("w.jsonl"), &[]);
    let weir = run(
        dir.path(),
        manifest.trim_end_matches("\n[http]\nlisten = \"127.0.0.1:0\"\n"),
        2,
        &["--no-watch"],
    );
    assert!(
        weir.lines_with("Watching the manifest").is_empty(),
        "no watcher"
    );
    let changed = rules_manifest(
        &broker,
        &client,
        stats,
        &p("s.jsonl"),
        &p("w.jsonl"),
        &[("added", "added", &p("added.jsonl"))],
    );
    replace_atomically(&p("weir.toml"), changed.as_bytes());
    let pid = weir.pid();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    weir.wait_for_log("Manifest reloaded.", 1);
    assert_eq!(weir.lines_with("SIGHUP: reloading the manifest.").len(), 1);
    weir.wait_for_log("Subscribed.", 3);
    publish(&broker, "added/x", 0, 5, "n");
    weir.wait_for_lines(&p("added.jsonl"), 5);
    weir.terminate();
}

#[test]
fn polling_sees_a_replaced_plugin_and_a_plugin_the_reloaded_manifest_added_in_a_new_folder() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("tag.wasm");
    let out = dir.path().join("out.jsonl");
    std::fs::write(&plugin, std::fs::read(weir_test_artifacts::TAG_V1).unwrap()).unwrap();
    let manifest = tag_manifest(&broker, &plugin, &out);
    let weir = run(dir.path(), &manifest, 1, &["--watch-poll-ms", "100"]);
    let watching = weir.lines_with("Watching the manifest and plugins.");
    assert!(watching[0].contains("polling"), "{watching:?}");

    replace_atomically(
        &plugin,
        &std::fs::read(weir_test_artifacts::TAG_V2).unwrap(),
    );
    weir.wait_for_log("Plugin swapped.", 1);

    // The manifest names a second plugin in a folder not watched so far.
    let later_dir = dir.path().join("later");
    std::fs::create_dir(&later_dir).unwrap();
    let later = later_dir.join("other.wasm");
    std::fs::write(&later, std::fs::read(weir_test_artifacts::TAG_V1).unwrap()).unwrap();
    let with_other = format!(
        "{manifest}\n[plugins.other]\npath = \"{}\"\n\n[[rules]]\nname = \"other\"\nfrom = [\"other/{{device}}\"]\nqos = 1\nsteps = [{{ plugin = \"other\" }}]\nto = [\"out\"]\n[http]\nlisten = \"127.0.0.1:0\"\n",
        toml_path(&later)
    );
    replace_atomically(&dir.path().join("weir.toml"), with_other.as_bytes());
    weir.wait_for_log("rules added: other", 1);
    weir.wait_for_log("Subscribed.", 2);
    replace_atomically(&later, &std::fs::read(weir_test_artifacts::TAG_V2).unwrap());
    weir.wait_for_log("Plugin swapped.", 2);
    let last = weir.lines_with("Plugin swapped.").pop().unwrap();
    assert!(last.contains("tag-v2") || last.contains("2.0.0"), "{last}");
    assert!(last.contains("rule=\"other\""), "{last}");

    publish_many_blocking(
        &broker.url(),
        |_| "other/x".to_owned(),
        |i| format!(r#"{{"seq":{i}}}"#).into_bytes(),
        5,
        1,
    );
    let got = weir.wait_for_lines(&out, 5);
    assert!(
        got.iter().all(|l| l["payload"]["tag"] == "tag-v2"),
        "{got:?}"
    );
    weir.terminate();
}

/// A large plugin that is not compiled yet (a JavaScript or Python guest at
/// its first start) compiles in the background: the rule that does not use
/// it runs at once. One that cannot compile holds up only its own rule,
/// which rejects its messages with the compiler's error (counted) instead
/// of holding them; a good build put in its place compiles in turn and its
/// rule starts. (The large plugins here are made large with a custom
/// section; the Python guest of `tests/conformance.rs` shows the same with
/// a compile that takes seconds, and that the waiting rule's messages wait
/// for it.)
#[test]
fn a_large_plugin_compiles_in_the_background_and_holds_up_only_its_own_rule() {
    const N: usize = 500;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.wasm");
    let big = dir.path().join("big.wasm");
    let (small_out, big_out) = (dir.path().join("small.jsonl"), dir.path().join("big.jsonl"));
    std::fs::write(&small, std::fs::read(weir_test_artifacts::TAG_V1).unwrap()).unwrap();
    // A component header, then 1.5 MB that do not compile.
    let mut broken = b"\0asm\x0d\0\x01\0".to_vec();
    broken.resize(1_500_000, 0xff);
    std::fs::write(&big, &broken).unwrap();
    let manifest = format!(
        r#"
[broker]
url = "{url}"
client_id = "weir-reload-{id}"

[plugins.small]
path = "{small}"
[plugins.big]
path = "{big}"

[sinks.small]
type = "file"
path = "{small_out}"
[sinks.big]
type = "file"
path = "{big_out}"

[[rules]]
name = "small"
from = ["small/{{device}}"]
qos = 1
steps = ["small"]
to = ["small"]

[[rules]]
name = "big"
from = ["big/{{device}}"]
qos = 1
steps = ["big"]
to = ["big"]
"#,
        url = broker.url(),
        id = unique(),
        small = toml_path(&small),
        big = toml_path(&big),
        small_out = toml_path(&small_out),
        big_out = toml_path(&big_out),
    );
    let weir = run(dir.path(), &manifest, 2, &[]);
    let compiling = weir.lines_with("Compiling the plugin in the background");
    assert!(
        compiling.len() == 1
            && compiling[0].contains("plugin=\"big\"")
            && compiling[0].contains("rules=\"big\""),
        "{compiling:?}"
    );

    // The small rule runs; the big one fails to compile, with the file,
    // the compiler's error and the rule in the log.
    publish(&broker, "small/a", 0, N as u64, "seq");
    let got = weir.wait_for_lines(&small_out, N);
    assert!(got.iter().all(|l| l["payload"]["tag"] == "tag-v1"));
    weir.wait_for_log("The plugin cannot start", 1);
    let failed = weir.lines_with("The plugin cannot start").pop().unwrap();
    assert!(
        failed.contains("cannot compile")
            && failed.contains("big.wasm")
            && failed.contains("rules=\"big\""),
        "names the file, the cause and the rule: {failed}"
    );
    let health: Value = serde_json::from_str(&weir.http_get("/health").1).unwrap();
    assert_eq!(health["rules"]["small"]["state"], "running", "{health}");
    assert_eq!(health["rules"]["big"]["state"], "failed", "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(weir.lines_with("Plugin compiled").len(), 0);

    // Meanwhile its messages are rejected (counted), not held: nothing
    // waits on them, and the small rule goes on.
    publish(&broker, "big/b", 0, 20, "seq");
    let rejected = [
        "weir_rule_errors_total",
        "rule=\"big\"",
        "kind=\"plugin_not_started\"",
    ];
    weir.wait_until("20 rejected messages", |_| {
        weir.metric_matching(&rejected) == 20.0
    });
    publish(&broker, "small/a", N as u64, 2 * N as u64, "seq");
    weir.wait_for_lines(&small_out, 2 * N);

    // The watcher's first look at each file (it may have changed before it
    // was watched) settles for both plugins at once; once the small one's
    // is done, so is the big one's, which finds the build that failed and
    // does not report it again (counted once, below).
    weir.wait_for_log("Plugin file unchanged. plugin=\"small\"", 1);

    // A good large build in its place: compiled in turn, then its rule runs.
    let good = with_custom_section(
        std::fs::read(weir_test_artifacts::TAG_V2).unwrap(),
        &vec![b'x'; 1_500_000],
    );
    replace_atomically(&big, &good);
    weir.wait_for_log("Plugin compiled; its rules start", 1);
    publish(&broker, "big/b", 0, N as u64, "seq");
    let got = weir.wait_for_lines(&big_out, N);
    assert!(
        got.iter().all(|l| l["payload"]["tag"] == "tag-v2"),
        "{:?}",
        got[0]
    );
    weir.wait_for_health("both rules running", |_, h| {
        h["rules"]["big"]["state"] == "running" && h["status"] == "ok"
    });
    assert_eq!(
        weir.metric_matching(&["weir_plugin_start_failures_total", "plugin=\"big\""]),
        1.0,
        "the broken build is reported once"
    );
    assert_eq!(weir.metric_matching(&rejected), 20.0);
    assert_eq!(
        lines(&small_out).len(),
        2 * N,
        "the small rule saw only its own messages"
    );
    weir.terminate();
}

/// A window step whose large aggregate plugin compiles in the background
/// becomes a working window once it is ready: the readings of its window
/// are all in the result (the window is flushed at shutdown).
#[test]
fn a_window_step_whose_plugin_compiles_in_the_background_aggregates_every_reading() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.wasm");
    let big_stats = with_custom_section(
        std::fs::read(weir_test_artifacts::STATS).unwrap(),
        &vec![b'x'; 1_500_000],
    );
    std::fs::write(&stats, big_stats).unwrap();
    let out = dir.path().join("windows.jsonl");
    let manifest = format!(
        r#"
[broker]
url = "{url}"
client_id = "weir-reload-window-{id}"

[plugins.stats]
path = "{stats}"

[sinks.w]
type = "file"
path = "{out}"

[[rules]]
name = "window"
from = ["readings/{{device}}"]
qos = 1
steps = [{{ plugin = "stats", config = {{ fields = ["v"], aggregates = ["count", "sum"] }}, window = {{ kind = "tumbling", size = "1h", group_by = ["device"] }} }}]
to = ["w"]
"#,
        url = broker.url(),
        id = unique(),
        stats = toml_path(&stats),
        out = toml_path(&out),
    );
    let weir = run(dir.path(), &manifest, 1, &[]);
    assert_eq!(
        weir.lines_with("Compiling the plugin in the background")
            .len(),
        1
    );
    publish(&broker, "readings/a", 0, 40, "v");
    weir.wait_for_log("Plugin compiled; its rules start", 1);
    publish(&broker, "readings/a", 40, 100, "v");
    weir.wait_until("the window rule took 100 readings", |_| {
        weir.metric_matching(&["weir_rule_messages_in_total", "rule=\"window\""]) >= 100.0
    });
    let (code, log) = weir.terminate();
    assert_eq!(code, 0, "{log}");
    let got = lines(&out);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["payload"]["v_count"], 100, "{got:?}");
    assert_eq!(
        got[0]["payload"]["v_sum"],
        (0..100).sum::<u64>() as f64,
        "{got:?}"
    );
}
