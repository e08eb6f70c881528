//! The MQTT pipeline end to end: the real `weir` binary, a real Mosquitto
//! started per test on a free port, real plugins built from source, and
//! outputs read back from the files and brokers they were written to.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use weir_test_support::WeirProcess as Weir;
use weir_test_support::mqtt::publish_many_blocking;
use weir_test_support::weir::json_lines as lines;
use weir_test_support::{Mosquitto, MosquittoOptions, Pki, Subscriber, SubscriberOptions};

const WAIT: Duration = Duration::from_secs(30);

/// Starts `weir run` on a manifest and waits until it has subscribed
/// `subscriptions` times (its log says "Subscribed.").
fn run(dir: &Path, manifest: &str, subscriptions: usize) -> Weir {
    run_with(dir, manifest, subscriptions, &[])
}

/// [`run`] with more arguments to `weir run`.
fn run_with(dir: &Path, manifest: &str, subscriptions: usize, args: &[&str]) -> Weir {
    let weir = spawn_with(dir, manifest, args);
    weir.wait_for_log("Subscribed.", subscriptions);
    weir
}

/// Starts `weir run` on a manifest.
fn spawn(dir: &Path, manifest: &str) -> Weir {
    spawn_with(dir, manifest, &[])
}

fn spawn_with(dir: &Path, manifest: &str, args: &[&str]) -> Weir {
    let path = dir.join(format!("weir-{}.toml", unique()));
    // The HTTP endpoint on a free port: tests run in parallel.
    let manifest = format!("{manifest}\n[http]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&path, manifest).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["--log", "info,weir=debug", "run"])
        .args(args)
        .arg(&path);
    Weir::spawn(command, path.with_extension("log"))
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::process::id() as u64 * 1000 + N.fetch_add(1, Ordering::Relaxed)
}

fn seqs(lines: &[serde_json::Value]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| l["payload"]["seq"].as_u64().expect("payload.seq"))
        .collect()
}

fn toml_path(p: &Path) -> String {
    p.display().to_string().replace('\\', "\\\\")
}

#[test]
fn wildcards_captures_and_shared_filters_route_every_message_to_exactly_the_rules_that_match() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(format!("{name}.jsonl"));
    let manifest = format!(
        r#"
[broker]
url = "{url}"
client_id = "weir-route-{id}"

[sinks.a]
type = "file"
path = "{a}"
[sinks.b]
type = "file"
path = "{b}"
[sinks.c]
type = "file"
path = "{c}"

[[rules]]
name = "per-device"
from = ["devices/{{device}}/temp"]
qos = 1
to = ["a"]

[[rules]]
name = "everything-from-devices"
from = ["devices/#"]
qos = 1
to = ["b"]

[[rules]]
name = "same-filter-as-per-device"
from = ["devices/{{id}}/temp", "other/+/x"]
qos = 1
to = ["c"]
"#,
        url = broker.url(),
        id = unique(),
        a = toml_path(&out("a")),
        b = toml_path(&out("b")),
        c = toml_path(&out("c")),
    );
    // devices/# covers devices/+/temp: one subscription for both, plus other/+/x.
    let weir = run(dir.path(), &manifest, 2);
    let topics = [
        "devices/d1/temp",
        "devices/d2/hum",
        "other/q/x",
        "unrelated/z",
        "devices/d3/temp",
        "devices",
    ];
    publish_many_blocking(
        &broker.url(),
        move |i| topics[i].to_owned(),
        |i| format!(r#"{{"seq": {i}}}"#).into_bytes(),
        topics.len(),
        1,
    );
    weir.wait_for_lines(&out("a"), 2);
    weir.wait_for_lines(&out("b"), 4);
    weir.wait_for_lines(&out("c"), 3);
    // Shutting down flushes anything extra before checking there is none.
    let (code, log) = weir.terminate();
    assert_eq!(code, 0, "{log}");
    let (a, b, c) = (lines(&out("a")), lines(&out("b")), lines(&out("c")));
    assert_eq!(seqs(&a), [0, 4], "per-device");
    assert_eq!(seqs(&b), [0, 1, 4, 5], "devices/# matches devices too");
    assert_eq!(seqs(&c), [0, 2, 4]);
    let devices: Vec<&str> = a
        .iter()
        .map(|l| l["fields"]["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["d1", "d3"], "captures become fields");
    assert_eq!(c[0]["fields"]["id"], "d1");
    assert!(
        c[1]["fields"].get("id").is_none(),
        "other/+/x has no capture"
    );
}

#[test]
fn bad_payloads_and_plugin_errors_are_counted_and_routed_to_the_error_output() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let errors = dir.path().join("errors.jsonl");
    let manifest = format!(
        r#"
[broker]
url = "{url}"
client_id = "weir-errors-{id}"

[plugins.hot]
path = "{threshold}"
config = {{ field = "temp", op = ">", value = 30 }}

[sinks.out]
type = "file"
path = "{out}"
[sinks.errors]
type = "file"
path = "{errors}"

[[rules]]
name = "hot"
from = ["devices/{{device}}/temp_hum"]
qos = 1
max_payload_bytes = 100
steps = ["hot"]
to = ["out"]
errors = "errors"
"#,
        url = broker.url(),
        id = unique(),
        threshold = weir_test_artifacts::THRESHOLD,
        out = toml_path(&out),
        errors = toml_path(&errors),
    );
    let weir = run(dir.path(), &manifest, 1);
    let payloads: Vec<Vec<u8>> = vec![
        br#"{"temp": 31, "seq": 0}"#.to_vec(),
        b"{not json".to_vec(),
        format!(r#"{{"temp": 35, "pad": "{}"}}"#, "x".repeat(200)).into_bytes(),
        br#"{"hum": 40, "seq": 3}"#.to_vec(),
        br#"{"temp": 10, "seq": 4}"#.to_vec(),
        br#"{"temp": 40, "seq": 5}"#.to_vec(),
    ];
    let n = payloads.len();
    publish_many_blocking(
        &broker.url(),
        |_| "devices/d1/temp_hum".to_owned(),
        move |i| payloads[i].clone(),
        n,
        1,
    );
    let kept = weir.wait_for_lines(&out, 2);
    let reports = weir.wait_for_lines(&errors, 3);
    assert_eq!(
        seqs(&kept),
        [0, 5],
        "the rule goes on after each bad message"
    );
    let kinds: BTreeSet<String> = reports
        .iter()
        .map(|r| r["payload"]["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "invalid_json".into(),
            "payload_too_large".into(),
            "rejected".into()
        ])
    );
    for r in &reports {
        assert_eq!(r["payload"]["rule"], "hot");
        assert_eq!(r["payload"]["topic"], "devices/d1/temp_hum");
    }
    let rejected = reports
        .iter()
        .find(|r| r["payload"]["kind"] == "rejected")
        .unwrap();
    assert_eq!(rejected["payload"]["step"], "hot");
    assert!(
        rejected["payload"]["reason"]
            .as_str()
            .unwrap()
            .contains("temp")
    );
    let (code, log) = weir.terminate();
    assert_eq!(code, 0);
    for needle in ["invalid_json", "payload_too_large", "rule=\"hot\""] {
        assert!(log.contains(needle), "{needle} not logged:\n{log}");
    }
}

#[test]
fn qos1_messages_wait_for_a_sink_whose_broker_is_down_and_none_is_lost() {
    let source = Mosquitto::start();
    let mut target = Mosquitto::start();
    target.stop();
    let dir = tempfile::tempdir().unwrap();
    let manifest = format!(
        r#"
[broker]
url = "{source}"
client_id = "weir-down-{id}"

[sinks.forward]
type = "mqtt"
url = "{target}"
topic = "copy/${{device}}"
qos = 1
batch_size = 20

[[rules]]
name = "forward"
from = ["devices/{{device}}/t"]
qos = 1
to = ["forward"]
"#,
        source = source.url(),
        target = target.url(),
        id = unique(),
    );
    let weir = run(dir.path(), &manifest, 1);
    const N: usize = 300;
    publish_many_blocking(
        &source.url(),
        |i| format!("devices/d{}/t", i % 3),
        |i| format!(r#"{{"seq": {i}}}"#).into_bytes(),
        N,
        1,
    );
    weir.wait_for_health("the sink down", |status, health| {
        status == 503
            && health["status"] == "degraded"
            && health["sinks"]["forward"]["healthy"] == false
            && health["sinks"]["forward"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("not connected"))
    });
    // The sink's broker comes up only now; a persistent subscriber is there
    // before weir's retries reach it.
    target.start_again();
    let sub =
        Subscriber::connect_blocking(&target.url(), &["copy/#"], 1, SubscriberOptions::default());
    let got = sub.collect_blocking(N, WAIT);
    let seen: BTreeSet<u64> = got
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seen.len(), N, "every message arrives; log:\n{}", weir.log());
    weir.wait_for_health("the sink back", |status, health| {
        status == 200 && health["sinks"]["forward"]["healthy"] == true
    });
    let (code, _) = weir.terminate();
    assert_eq!(code, 0);
}

#[test]
fn after_a_broker_restart_weir_resubscribes_and_receives_what_was_queued_for_it() {
    broker_restart_keeps_the_session("3.1.1");
}

#[test]
fn mqtt5_after_a_broker_restart_weir_resubscribes_and_receives_what_was_queued_for_it() {
    broker_restart_keeps_the_session("5");
}

/// A persistent session across a broker restart: in MQTT 5 it survives
/// only through the session expiry interval weir sets.
fn broker_restart_keeps_the_session(protocol: &str) {
    let mut broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let manifest = format!(
        r#"
[broker]
url = "{url}"
client_id = "weir-restart-{id}"
protocol = "{protocol}"
clean_session = false
reconnect_min = "2s"
reconnect_max = "2s"

[sinks.out]
type = "file"
path = "{out}"

[[rules]]
name = "all"
from = ["devices/+/t"]
qos = 1
to = ["out"]
"#,
        url = broker.url(),
        id = unique(),
        out = toml_path(&out),
    );
    let weir = run(dir.path(), &manifest, 1);
    publish_many_blocking(
        &broker.url(),
        |_| "devices/a/t".to_owned(),
        |i| format!(r#"{{"seq": {i}}}"#).into_bytes(),
        50,
        1,
    );
    weir.wait_for_lines(&out, 50);
    broker.restart();
    // weir waits 2 s before reconnecting: these are queued by the broker for
    // its persistent session meanwhile.
    publish_many_blocking(
        &broker.url(),
        |_| "devices/a/t".to_owned(),
        |i| format!(r#"{{"seq": {}}}"#, 50 + i).into_bytes(),
        50,
        1,
    );
    weir.wait_for_log("Subscribed.", 2);
    // QoS 1 is at least once: what weir wrote but had not acknowledged when
    // the broker went down comes again, so count distinct messages, not
    // lines.
    let all: BTreeSet<u64> = (0..100).collect();
    let got = weir.wait_for_lines_until(&out, "seq 0..100", |got| {
        all.is_subset(&seqs(got).into_iter().collect())
    });
    let seen: BTreeSet<u64> = seqs(&got).into_iter().collect();
    assert_eq!(seen, all);
    let (code, _) = weir.terminate();
    assert_eq!(code, 0);
}

/// A QoS 0 rule whose worker is stuck (a plugin spinning into its 2 s
/// deadline) while 59 messages arrive for a queue of 5: the policy decides
/// which 5 survive, the other 54 are dropped and counted. Returns the
/// delivered sequence numbers.
fn overflow_a_qos0_rule(policy: &str) -> Vec<u64> {
    const N: usize = 59;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let manifest = format!(
        r#"
[broker]
url = "{url}"
client_id = "weir-overflow-{id}"

[plugins.chaos]
path = "{chaos}"
deadline = "2s"

[sinks.out]
type = "file"
path = "{out}"

[[rules]]
name = "r"
from = ["devices/+/t"]
qos = 0
format = "raw"
queue_size = 5
backpressure = "{policy}"
steps = ["chaos"]
to = ["out"]
"#,
        url = broker.url(),
        id = unique(),
        chaos = weir_test_artifacts::CHAOS,
        out = toml_path(&out),
    );
    let weir = run(dir.path(), &manifest, 1);
    let publish = |n: usize, payload: fn(usize) -> Vec<u8>| {
        publish_many_blocking(&broker.url(), |_| "devices/d/t".to_owned(), payload, n, 0)
    };
    // The rule's series exist from its start, at 0.
    let taken = r#"weir_rule_messages_in_total{rule="r"}"#;
    weir.wait_for_log("Serving /metrics", 1);
    let (_, metrics) = weir.http_get("/metrics");
    assert!(
        metrics.lines().any(|l| l == format!("{taken} 0")),
        "{metrics}"
    );
    // First the worker takes the spinning message...
    publish(1, |_| b"spin".to_vec());
    let deadline = Instant::now() + WAIT;
    while weir.metric(taken) < 1.0 {
        assert!(Instant::now() < deadline, "the rule never took the message");
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...then the queue overflows while it is stuck.
    publish(N, |i| format!(r#"{{"seq": {}}}"#, i + 1).into_bytes());
    let dropped = r#"weir_rule_dropped_total{rule="r",reason="queue_full"}"#;
    let delivered = weir.wait_for_lines(&out, 5);
    assert_eq!(weir.metric(dropped), (N - 5) as f64);
    let (code, log) = weir.terminate();
    assert_eq!(code, 0);
    assert!(log.contains("kind=\"deadline\""), "the spin failed:\n{log}");
    let delivered = seqs(&delivered);
    assert_eq!(seqs(&lines(&out)), delivered, "nothing after the five");
    delivered
}

#[test]
fn drop_newest_keeps_the_first_qos0_messages_and_counts_the_rest() {
    assert_eq!(overflow_a_qos0_rule("drop_newest"), [1, 2, 3, 4, 5]);
}

#[test]
fn drop_oldest_keeps_the_last_qos0_messages_and_counts_the_rest() {
    assert_eq!(overflow_a_qos0_rule("drop_oldest"), [55, 56, 57, 58, 59]);
}

/// A manifest subscribing over `mqtts://` with the given trust and client
/// certificate, writing everything to `out`.
fn tls_manifest(url: &str, ca: &Path, client: Option<&Pki>, out: &Path) -> String {
    let client = client
        .map(|pki| {
            format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\n",
                toml_path(&pki.client_cert),
                toml_path(&pki.client_key)
            )
        })
        .unwrap_or_default();
    format!(
        r#"
[broker]
url = "{url}"
client_id = "weir-tls-{id}"
reconnect_min = "100ms"
reconnect_max = "200ms"

[broker.tls]
ca_file = "{ca}"
{client}
[sinks.out]
type = "file"
path = "{out}"

[[rules]]
name = "all"
from = ["devices/+/t"]
qos = 1
to = ["out"]
"#,
        id = unique(),
        ca = toml_path(ca),
        out = toml_path(out),
    )
}

#[test]
fn mqtts_with_a_client_certificate_subscribes_over_tls() {
    let broker = Mosquitto::start_with(MosquittoOptions::default().tls());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let pki = broker.pki();
    let weir = run(
        dir.path(),
        &tls_manifest(&broker.tls_url(), &pki.ca_file, Some(pki), &out),
        1,
    );
    // Published on the plain listener; weir receives over TLS.
    publish_many_blocking(
        &broker.url(),
        |i| format!("devices/d{}/t", i % 3),
        |i| format!(r#"{{"seq": {i}}}"#).into_bytes(),
        20,
        1,
    );
    let got = weir.wait_for_lines(&out, 20);
    assert_eq!(seqs(&got), (0..20).collect::<Vec<u64>>());
    assert_eq!(weir.terminate().0, 0);
}

#[test]
fn mqtts_names_the_tls_failure_and_keeps_retrying() {
    let broker = Mosquitto::start_with(MosquittoOptions::default().tls());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    // A CA that did not sign the broker's certificate.
    let stranger = Pki::generate(dir.path(), "stranger");
    let weir = spawn(
        dir.path(),
        &tls_manifest(&broker.tls_url(), &stranger.ca_file, None, &out),
    );
    weir.wait_for_log("UnknownIssuer", 2);
    assert!(!weir.log().contains("Subscribed."), "{}", weir.log());
    assert_eq!(weir.terminate().0, 0);
}

#[test]
fn two_instances_in_one_share_group_each_process_a_message_exactly_once() {
    share_group_splits_the_work("3.1.1");
}

#[test]
fn mqtt5_two_instances_in_one_share_group_each_process_a_message_exactly_once() {
    share_group_splits_the_work("5");
}

fn share_group_splits_the_work(protocol: &str) {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let manifest = |n: u32| {
        format!(
            r#"
[broker]
url = "{url}"
client_id = "weir-share-{n}-{id}"
protocol = "{protocol}"

[sinks.out]
type = "file"
path = "{out}"

[[rules]]
name = "shared"
from = ["devices/+/t"]
qos = 1
share_group = "weir"
to = ["out"]
"#,
            url = broker.url(),
            id = unique(),
            out = toml_path(&dir.path().join(format!("out-{n}.jsonl"))),
        )
    };
    let one = run(dir.path(), &manifest(1), 1);
    let two = run(dir.path(), &manifest(2), 1);
    const N: usize = 400;
    publish_many_blocking(
        &broker.url(),
        |i| format!("devices/d{}/t", i % 7),
        |i| format!(r#"{{"seq": {i}}}"#).into_bytes(),
        N,
        1,
    );
    let deadline = Instant::now() + WAIT;
    let (a, b) = loop {
        let a = seqs(&lines(&dir.path().join("out-1.jsonl")));
        let b = seqs(&lines(&dir.path().join("out-2.jsonl")));
        if a.len() + b.len() >= N || Instant::now() > deadline {
            break (a, b);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(one.terminate().0, 0);
    assert_eq!(two.terminate().0, 0);
    let a: BTreeSet<u64> = a.into_iter().collect();
    let b: BTreeSet<u64> = b.into_iter().collect();
    assert!(
        a.intersection(&b).next().is_none(),
        "a message went to both"
    );
    assert_eq!(a.union(&b).count(), N, "a message went to neither");
    assert!(!a.is_empty() && !b.is_empty(), "both instances took work");
}

#[test]
fn sigterm_under_load_loses_no_acknowledged_message() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let client_id = format!("weir-term-{}", unique());
    let manifest = format!(
        r#"
[broker]
url = "{url}"
client_id = "{client_id}"
clean_session = false

[plugins.hot]
path = "{threshold}"
config = {{ field = "seq", op = ">=", value = 0 }}

[sinks.out]
type = "file"
path = "{out}"

[[rules]]
name = "all"
from = ["load/+"]
qos = 1
steps = ["hot"]
to = ["out"]
"#,
        url = broker.url(),
        threshold = weir_test_artifacts::THRESHOLD,
        out = toml_path(&out),
    );
    let weir = run(dir.path(), &manifest, 1);
    const N: usize = 3000;
    let url = broker.url();
    let publisher = std::thread::spawn(move || {
        publish_many_blocking(
            &url,
            |i| format!("load/{}", i % 10),
            |i| format!(r#"{{"seq": {i}}}"#).into_bytes(),
            N,
            1,
        )
    });
    weir.wait_for_lines(&out, 200);
    let (code, log) = weir.terminate();
    assert_eq!(code, 0, "{log}");
    publisher.join().unwrap();
    let written: BTreeSet<u64> = seqs(&lines(&out)).into_iter().collect();
    // What weir did not acknowledge is still queued for its session: take it
    // with the same client id. Together they must hold every message.
    let sub = Subscriber::connect_blocking(
        &broker.url(),
        &["load/+"],
        1,
        SubscriberOptions {
            client_id,
            clean_session: false,
        },
    );
    let rest = sub.collect_blocking(N - written.len(), Duration::from_secs(10));
    let mut all = written.clone();
    for r in &rest {
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        all.insert(v["seq"].as_u64().unwrap());
    }
    let missing: Vec<u64> = (0..N as u64).filter(|s| !all.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not written: {missing:?}"
    );
}

/// `--io-threads` sizes the network side's thread pool (the default is
/// one thread; every other test here runs on it), and a QoS 1 pipeline
/// with a file and an MQTT output delivers everything on several.
/// `--io-linger` (default 50 µs, which every other test runs with) is
/// taken, and `0s` turns it off: the run on three threads has it off.
#[test]
fn io_threads_sets_the_network_thread_count_and_the_pipeline_delivers_on_it() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let manifest = format!(
        r#"
[broker]
url = "{url}"
client_id = "weir-io-{id}"

[plugins.hot]
path = "{threshold}"
config = {{ field = "seq", op = ">=", value = 0 }}

[sinks.out]
type = "file"
path = "{out}"
[sinks.again]
type = "mqtt"
url = "{url}"
topic = "again/${{device}}"
qos = 1

[[rules]]
name = "all"
from = ["io/{{device}}"]
qos = 1
steps = ["hot"]
to = ["out", "again"]
"#,
        url = broker.url(),
        id = unique(),
        threshold = weir_test_artifacts::THRESHOLD,
        out = toml_path(&out),
    );
    let weir = run_with(
        dir.path(),
        &manifest,
        1,
        &["--io-threads", "3", "--io-linger", "0s"],
    );
    // "Running." may come after "Subscribed.", which `run_with` waits for.
    weir.wait_for_log("Running.", 1);
    let running = weir.lines_with("Running.");
    assert!(
        running
            .iter()
            .any(|l| l.contains("io_threads=3") && l.contains("io_linger=0ns")),
        "{running:?}"
    );
    let sub =
        Subscriber::connect_blocking(&broker.url(), &["again/+"], 1, SubscriberOptions::default());
    const N: usize = 500;
    publish_many_blocking(
        &broker.url(),
        |i| format!("io/d{}", i % 7),
        |i| format!(r#"{{"seq": {i}}}"#).into_bytes(),
        N,
        1,
    );
    let written: BTreeSet<u64> = seqs(&weir.wait_for_lines(&out, N)).into_iter().collect();
    assert_eq!(written, (0..N as u64).collect());
    let again = sub.collect_blocking(N, WAIT);
    assert_eq!(again.len(), N);
    let (code, log) = weir.terminate();
    assert_eq!(code, 0, "{log}");

    let default = run(dir.path(), &manifest, 1);
    default.wait_for_log("Running.", 1);
    let running = default.lines_with("Running.");
    assert!(
        running
            .iter()
            .any(|l| l.contains("io_threads=1") && l.contains("io_linger=50µs")),
        "{running:?}"
    );
    drop(default);

    for (flag, value) in [("--io-threads", "0"), ("--io-linger", "soon")] {
        let refused = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", flag, value, "weir.toml"])
            .output()
            .unwrap();
        assert_eq!(refused.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains(flag), "{err}");
    }
}

/// Writes a manifest with five different mistakes; `weir validate` reports
/// all five with their line and column, and `weir run` refuses to start.
#[test]
fn run_refuses_an_invalid_manifest_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("weir.toml");
    let mut f = std::fs::File::create(&manifest).unwrap();
    writeln!(
        f,
        r#"[broker]
url = "mqtt://127.0.0.1:1"

[plugins.hot]
path = "missing.wasm"

[sinks.out]
type = "file"
path = "out.jsonl"

[[rules]]
name = "r"
from = ["devices/{{device}}/t"]
steps = ["hot"]
to = ["nowhere"]"#
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.wasm"), "{err}");
    assert!(err.contains("nowhere"), "{err}");
    assert!(!dir.path().join("out.jsonl").exists());
}

#[test]
fn demo_runs_for_its_duration_and_prints_non_zero_counts() {
    let plugins = Path::new(weir_test_artifacts::THRESHOLD).parent().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--cache-dir")
        .arg(cache.path())
        .args(["demo", "--duration", "5s", "--plugins"])
        .arg(plugins)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let last = err
        .lines()
        .rev()
        .find(|l| l.starts_with("weir demo: received"))
        .unwrap_or_else(|| panic!("no counts in:\n{err}"));
    let numbers: Vec<u64> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // received, hot in, alerts, fahrenheit in, converted
    assert_eq!(numbers.len(), 5, "{last}");
    assert!(numbers[0] > 0 && numbers[1] > 0 && numbers[3] > 0, "{last}");
    assert_eq!(numbers[3], numbers[4], "every reading is converted: {last}");
    assert!(
        numbers[2] > 0 && numbers[2] < numbers[1],
        "some readings are hot: {last}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ALERT dev-"),
        "alerts on the console:\n{stdout}"
    );
}
