//! The manifest's checks, end to end: every file in `tests/ui/invalid` must
//! produce exactly the diagnostics in its `.err` twin (Spin's `tests/ui`),
//! every file in `tests/ui/valid` must validate, and `weir validate` must
//! exit with the right code and never print a secret.
//!
//! Fixtures name plugins as `plugins/<guest>.wasm`: each fixture is checked
//! from a temporary folder holding a copy of it and of every guest built by
//! the test build (`tests/artifacts`), plus `plugins/not-wasm.wasm`, a text
//! file. Diagnostics name the fixture `invalid/<name>.toml`, so the `.err`
//! files do not depend on where the test runs.
//!
//! `WEIR_BLESS=1 cargo test --release -p weir --test validate` rewrites the
//! `.err` files from what the checks print now; review the diff.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use weir::config::{self, Backpressure, MqttProtocol, Options, PayloadFormat, QueryMode, SinkKind};
use weir::engine::{Runtime, RuntimeOptions};

/// A value the fixtures read from the environment; it must never appear
/// in anything printed.
const SECRET: &str = "s3cret-Value-7f3a";

fn env(name: &str) -> Option<String> {
    match name {
        "WEIR_TEST_PASSWORD" => Some(SECRET.to_owned()),
        "WEIR_TEST_USER" => Some("weir-user".to_owned()),
        _ => None,
    }
}

fn ui(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/ui")
        .join(sub)
}

fn fixtures(sub: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(ui(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in tests/ui/{sub}");
    files
}

/// A folder with `plugins/<guest>.wasm` for every test guest.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for (name, path) in weir_test_artifacts::ALL {
        std::fs::copy(path, plugins.join(format!("{name}.wasm"))).unwrap();
    }
    std::fs::write(
        plugins.join("not-wasm.wasm"),
        "this is text, not WebAssembly\n",
    )
    .unwrap();
    dir
}

fn runtime() -> Runtime {
    Runtime::new(RuntimeOptions { cache_dir: None }).expect("runtime starts")
}

/// Checks a fixture from the workspace; returns what `weir validate` would
/// print on stderr.
fn check(runtime: &Runtime, workspace: &Path, fixture: &Path, sub: &str) -> config::Checked {
    let name = fixture.file_name().unwrap().to_str().unwrap();
    let copy = workspace.join(name);
    std::fs::copy(fixture, &copy).unwrap();
    let shown = format!("{sub}/{name}");
    config::check(
        &copy,
        runtime,
        &Options {
            shown_as: Some(&shown),
            env: &env,
            ..Options::default()
        },
    )
}

#[test]
fn every_invalid_manifest_reports_exactly_the_diagnostics_of_its_snapshot() {
    let runtime = runtime();
    let workspace = workspace();
    let bless = std::env::var_os("WEIR_BLESS").is_some();
    let mut mismatches = Vec::new();
    for fixture in fixtures("invalid") {
        let name = fixture.file_name().unwrap().to_str().unwrap().to_owned();
        let checked = check(&runtime, workspace.path(), &fixture, "invalid");
        assert!(
            checked.config.is_none() && checked.diagnostics.has_errors(),
            "{name} validated, but it is in tests/ui/invalid"
        );
        let shown = format!("invalid/{name}");
        let actual = format!(
            "{}\n{}\n",
            checked.diagnostics,
            checked.diagnostics.summary(&shown)
        );
        assert!(
            !actual.contains(SECRET),
            "{name} printed a secret:\n{actual}"
        );
        let snapshot = fixture.with_extension("err");
        if bless {
            std::fs::write(&snapshot, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&snapshot).unwrap_or_default();
        if expected != actual {
            mismatches.push(format!(
                "--- {name}: expected ({})\n{expected}--- {name}: actual\n{actual}",
                snapshot.display()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "diagnostics differ from their snapshots (WEIR_BLESS=1 rewrites them):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn the_five_mistakes_manifest_reports_all_five_each_with_line_and_column() {
    let runtime = runtime();
    let workspace = workspace();
    let checked = check(
        &runtime,
        workspace.path(),
        &ui("invalid/five_mistakes.toml"),
        "invalid",
    );
    let errors: Vec<_> = checked.diagnostics.errors().collect();
    let places: Vec<(usize, usize)> = errors.iter().map(|d| (d.line, d.column)).collect();
    // url value, `retian` key, batch_time value, qos value, "archive".
    assert_eq!(
        places,
        [(4, 7), (9, 1), (10, 14), (15, 7), (16, 17)],
        "{}",
        checked.diagnostics
    );
    assert_eq!(errors[1].hint.as_deref(), Some("did you mean \"retain\"?"));
}

#[test]
fn every_valid_manifest_validates() {
    let runtime = runtime();
    let workspace = workspace();
    for fixture in fixtures("valid") {
        let checked = check(&runtime, workspace.path(), &fixture, "valid");
        assert!(
            checked.config.is_some() && !checked.diagnostics.has_errors(),
            "{} is refused:\n{}",
            fixture.display(),
            checked.diagnostics
        );
    }
    // A sink used only as a window's `late_to` is used.
    let windows = check(
        &runtime,
        workspace.path(),
        &ui("valid").join("windows.toml"),
        "valid",
    );
    let warnings: Vec<String> = windows
        .diagnostics
        .warnings()
        .map(|d| d.message.clone())
        .collect();
    assert!(
        !warnings.iter().any(|w| w.contains("\"late\" is not used")),
        "{warnings:?}"
    );
}

#[test]
fn a_valid_manifest_resolves_defaults_secrets_urls_and_merged_step_configs() {
    let runtime = runtime();
    let workspace = workspace();
    let checked = check(&runtime, workspace.path(), &ui("valid/full.toml"), "valid");
    let config = checked
        .config
        .unwrap_or_else(|| panic!("{}", checked.diagnostics));

    let broker = &config.broker;
    assert_eq!(
        (broker.host.as_str(), broker.port),
        ("broker.example.com", 8883)
    );
    assert!(broker.tls.is_some(), "mqtts:// implies TLS");
    assert_eq!(broker.username.as_deref(), Some("weir-user"));
    assert_eq!(broker.password.as_ref().map(|p| p.expose()), Some(SECRET));
    assert!(
        !format!("{config:?}").contains(SECRET),
        "Debug shows a secret"
    );
    assert_eq!(broker.protocol, MqttProtocol::V5);
    assert_eq!(broker.keep_alive, Duration::from_secs(45));
    assert_eq!(broker.reconnect_min, Duration::from_millis(250));
    assert_eq!(config.http, Some("127.0.0.1:9464".parse().unwrap()));

    let hot = &config.plugins["hot"];
    assert!(hot.path.is_absolute() && hot.path.ends_with("plugins/threshold.wasm"));
    assert_eq!(hot.limits.memory_cap_bytes, 16 << 20);
    assert_eq!(hot.limits.batch_deadline, Duration::from_millis(250));

    let rule = &config.rules[0];
    assert_eq!(rule.name, "hot");
    assert_eq!(rule.filters[0].mqtt(), "sites/+/devices/+/temp_hum");
    assert_eq!(rule.share_group.as_deref(), Some("weir"));
    assert_eq!(rule.steps[0].config["value"], 30);
    assert_eq!(
        rule.steps[1].config["value"], 35,
        "step keys merge over the plugin's"
    );
    assert_eq!(rule.steps[1].config["field"], "temp");
    assert_eq!(rule.errors.as_deref(), Some("errors"));
    assert_eq!(rule.queue_size, 500);
    assert_eq!(rule.backpressure, Backpressure::Block);
    assert_eq!(rule.max_payload_bytes, config::DEFAULT_MAX_PAYLOAD_BYTES);
    let raw = &config.rules[1];
    assert_eq!(raw.format, PayloadFormat::Raw);
    assert_eq!(raw.backpressure, Backpressure::DropOldest);

    let alerts = &config.sinks["alerts"];
    assert_eq!(alerts.driver.batch_size, 50);
    assert_eq!(alerts.driver.batch_time, Duration::from_millis(20));
    assert_eq!(alerts.driver.query_mode, QueryMode::Async);
    assert_eq!(
        alerts.driver.request_ttl, None,
        "\"infinity\" never gives up"
    );
    assert_eq!(alerts.driver.dead_letter.as_deref(), Some("dead"));
    assert!(alerts.driver.undefined_vars_as_null);
    match &alerts.kind {
        SinkKind::Mqtt {
            topic, qos, broker, ..
        } => {
            assert_eq!(topic.source(), "alerts/${site}/${device}");
            assert_eq!(*qos, 1);
            assert!(broker.is_none(), "no own connection settings");
        }
        other => panic!("alerts is {other:?}"),
    }
    match &config.sinks["bridge"].kind {
        SinkKind::Mqtt {
            broker: Some(own), ..
        } => {
            assert_eq!((own.host.as_str(), own.port), ("10.0.0.2", 1883));
            assert!(own.tls.is_none());
            assert_eq!(own.client_id, "edge-1-out-bridge");
            assert_eq!(own.username.as_deref(), Some("bridge"));
        }
        other => panic!("bridge is {other:?}"),
    }
    let console = &config.sinks["console"];
    assert_eq!(console.driver, config::DriverConfig::default());
    match &config.sinks["dead"].kind {
        SinkKind::File {
            path,
            max_file_bytes,
            max_files,
        } => {
            assert!(path.is_absolute() && path.ends_with("out/dead.jsonl"));
            assert_eq!((*max_file_bytes, *max_files), (1 << 20, 2));
        }
        other => panic!("dead is {other:?}"),
    }
    // The unused `units` plugin is allowed, with a warning.
    let warnings: Vec<String> = checked
        .diagnostics
        .warnings()
        .map(|w| w.message.clone())
        .collect();
    assert_eq!(warnings, ["plugin \"units\" is not used by any rule"]);
}

#[test]
fn the_embedded_broker_is_what_weir_subscribes_to_when_no_url_is_given() {
    let runtime = runtime();
    let workspace = workspace();
    let checked = check(
        &runtime,
        workspace.path(),
        &ui("valid/embedded.toml"),
        "valid",
    );
    let config = checked
        .config
        .unwrap_or_else(|| panic!("{}", checked.diagnostics));
    let embedded = config.broker.embedded.as_ref().unwrap();
    assert_eq!(embedded.listen, "0.0.0.0:18830".parse().unwrap());
    assert_eq!(embedded.max_connections, 10);
    assert_eq!(
        (config.broker.host.as_str(), config.broker.port),
        ("127.0.0.1", 18830)
    );
    assert_eq!(config.http, None);
}

fn weir(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(dir)
        .arg("--no-cache")
        .args(args)
        .env("WEIR_TEST_PASSWORD", SECRET)
        .env("WEIR_TEST_USER", "weir-user")
        // The bad manifest reads its broker URL from here: an error about
        // the URL must not show it.
        .env(
            "WEIR_TEST_BROKER_URL",
            format!("http://weir:{SECRET}@broker"),
        )
        .env_remove("RUST_LOG")
        .output()
        .expect("weir runs")
}

#[test]
fn weir_validate_exits_0_on_a_good_manifest_and_1_on_a_bad_one_and_never_prints_a_secret() {
    let workspace = workspace();
    let dir = workspace.path();
    std::fs::copy(ui("valid/full.toml"), dir.join("good.toml")).unwrap();
    std::fs::write(
        dir.join("bad.toml"),
        "[broker]\nurl = \"${env:WEIR_TEST_BROKER_URL}\"\nusername = \"u\"\n\
         password = \"${env:WEIR_TEST_PASSWORD}\"\n\n[sinks.out]\ntype = \"console\"\n\n\
         [[rules]]\nname = \"r\"\nfrom = [\"a\"]\nto = [\"out\", \"missing\"]\n",
    )
    .unwrap();

    let good = weir(dir, &["validate", "good.toml"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&good.stdout),
        String::from_utf8_lossy(&good.stderr),
    );
    assert_eq!(good.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "good.toml: ok — 2 rules, 5 sinks, 2 plugins\n");
    assert!(
        stderr.contains("good.toml:23:10: warning: plugin \"units\" is not used by any rule"),
        "{stderr}"
    );
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));

    let bad = weir(dir, &["validate", "bad.toml"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&bad.stdout),
        String::from_utf8_lossy(&bad.stderr),
    );
    assert_eq!(bad.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with(
            "bad.toml:2:7: error: \"url\" in [broker] is not a broker URL: the scheme is http://, not mqtt:// or mqtts://\n"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.toml:12:14: error: entry 2 of \"to\""),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("error: 2 problems in bad.toml\n"),
        "{stderr}"
    );
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{stderr}"
    );

    let missing = weir(dir, &["validate", "nope.toml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .starts_with("nope.toml: error: cannot read the manifest")
    );
}

#[test]
fn weir_schema_prints_a_json_schema_documenting_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir(dir.path(), &["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for section in ["broker", "http", "plugins", "sinks", "rules"] {
        assert!(schema["properties"][section].is_object(), "{section}");
    }
    let rule = &schema["$defs"]["RuleSpec"];
    assert_eq!(rule["additionalProperties"], false);
    assert!(
        rule["properties"]["from"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("{device}"))
    );
    // The sinks' flattened driver options are part of each sink type.
    let sinks = schema["$defs"]["SinkSpec"]["oneOf"].as_array().unwrap();
    assert!(
        sinks
            .iter()
            .all(|s| s["properties"]["batch_size"].is_object()
                && s["properties"]["undefined_vars_as_null"].is_object()
                && s["additionalProperties"] == false)
    );
}
