//! One conformance suite for every plugin language: the same plugins,
//! written in Rust, C, JavaScript and Python, must turn the same input into
//! exactly the same output. Any difference between languages is a bug.
//!
//! **Cases** (`tests/conformance/cases/<case>/`): `case.toml` names the
//! plugin (`filter`, `map`, `split`, `sum`), its config, the input lines
//! that must fail and, for the aggregate, the window; `input.jsonl` is
//! `weir plugin test` input; `expected.jsonl` the exact output, derived by
//! hand. Each case runs twice per language: through `weir plugin test`
//! (outputs compared exactly, failed lines compared), and through a running
//! rule over a real Mosquitto, one rule per language in one `weir run`
//! (outputs compared without the arrival-time parts: `ts`, and the window
//! bounds of an aggregate; error reports counted).
//!
//! **Plugins** (`tests/conformance/plugins/`): Rust and C guests are built
//! by `weir-test-artifacts` (the filter is `plugins/threshold` and its C
//! twin `plugins/threshold-c`); the JavaScript and Python ones are built
//! here, once, with the kits in `plugin-sdk/js` and `plugin-sdk/python`
//! and the toolchains `tests/run` installs into `target/kits` (jco from
//! npm, componentize-py from PyPI). A built component is cached under
//! `target/kits/conformance`, named by a hash of everything it is built
//! from, so a second run builds nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use sha2::{Digest, Sha256};
use weir_test_support::WeirProcess as Weir;
use weir_test_support::weir::json_lines as lines;
use weir_test_support::{Mosquitto, mqtt::publish_many_blocking};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `<target>/kits`: the toolchains (`js/node_modules`, `venv`) and built
/// components.
fn kits() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("kits")
}

/// The compiled-component cache the tests share (JS and Python guests take
/// seconds to compile; the cache is what `weir` uses in production too).
fn weir_cache() -> PathBuf {
    kits().join("weir-cache")
}

// ------------------------------------------------------------ plugins --

const LANGS: [&str; 4] = ["rust", "c", "js", "python"];
const PLUGINS: [&str; 4] = ["filter", "map", "split", "sum"];

/// Every plugin of every language, as `(lang, plugin) -> component`.
fn plugins() -> &'static BTreeMap<(&'static str, &'static str), PathBuf> {
    static BUILT: OnceLock<BTreeMap<(&'static str, &'static str), PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        use weir_test_artifacts as a;
        let mut all = BTreeMap::new();
        for (plugin, path) in [
            ("filter", a::THRESHOLD),
            ("map", a::CONF_MAP),
            ("split", a::CONF_SPLIT),
            ("sum", a::CONF_SUM),
        ] {
            all.insert(("rust", plugin), PathBuf::from(path));
        }
        all.insert(("c", "filter"), PathBuf::from(a::THRESHOLD_C));
        all.insert(("c", "map"), PathBuf::from(a::CONF_MAP_C));
        all.insert(("c", "split"), PathBuf::from(a::CONF_SPLIT_C));
        all.insert(("c", "sum"), PathBuf::from(a::CONF_SUM_C));
        // The JS and Python builds are independent processes: run them
        // side by side.
        let builds: Vec<_> = PLUGINS
            .iter()
            .flat_map(|p| [("js", *p), ("python", *p)])
            .map(|(lang, plugin)| {
                (
                    (lang, plugin),
                    std::thread::spawn(move || build(lang, plugin)),
                )
            })
            .collect();
        for (key, handle) in builds {
            all.insert(key, handle.join().expect("build thread"));
        }
        all
    })
}

/// The component `lang` provides for `plugin`, if any.
fn plugin(lang: &str, plugin: &str) -> Option<&'static Path> {
    plugins()
        .iter()
        .find(|((l, p), _)| *l == lang && *p == plugin)
        .map(|(_, path)| path.as_path())
}

/// Builds a JS or Python conformance plugin with its kit, or takes it from
/// the cache.
fn build(lang: &str, plugin: &str) -> PathBuf {
    let root = root();
    let world = if plugin == "sum" {
        "aggregator"
    } else {
        "transformer"
    };
    let (source, kit): (PathBuf, Vec<PathBuf>) = match lang {
        "js" => (
            root.join(format!("tests/conformance/plugins/js/{plugin}.js")),
            vec![
                root.join("plugin-sdk/js/weir.js"),
                root.join("plugin-sdk/js/build.mjs"),
            ],
        ),
        _ => (
            root.join(format!("tests/conformance/plugins/python/conf_{plugin}.py")),
            vec![root.join("plugin-sdk/python/weir_plugin.py")],
        ),
    };
    let mut hasher = Sha256::new();
    for file in kit.iter().chain([&source, &root.join("wit/plugin.wit")]) {
        hasher.update(std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display())));
    }
    let hash: String = hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out_dir = kits().join("conformance");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(format!("{lang}-{plugin}-{hash}.wasm"));
    if out.exists() {
        return out;
    }
    let tmp = out.with_extension("tmp.wasm");
    let mut cmd = match lang {
        "js" => {
            let modules = kits().join("js/node_modules");
            assert!(
                modules.join("@bytecodealliance/jco").is_dir(),
                "jco is not installed in {}: run ./tests/run, or `npm install --prefix {} \
                 @bytecodealliance/jco@1.35.0`",
                modules.display(),
                kits().join("js").display()
            );
            let mut cmd = Command::new("node");
            cmd.arg(root.join("plugin-sdk/js/build.mjs"))
                .arg(&source)
                .arg("-o")
                .arg(&tmp)
                .args(["--world", world])
                .env("NODE_PATH", modules);
            cmd
        }
        _ => {
            let tool = kits().join("venv/bin/componentize-py");
            assert!(
                tool.is_file(),
                "componentize-py is not installed in {}: run ./tests/run, or `python3 -m venv {} \
                 && {}/bin/pip install componentize-py==0.25.1`",
                tool.display(),
                kits().join("venv").display(),
                kits().join("venv").display()
            );
            let mut cmd = Command::new(tool);
            cmd.arg("-d")
                .arg(root.join("wit"))
                .args(["-w", world, "componentize", "-p"])
                .arg(root.join("tests/conformance/plugins/python"))
                .arg("-p")
                .arg(root.join("plugin-sdk/python"))
                .arg(format!("conf_{plugin}"))
                .arg("-o")
                .arg(&tmp);
            cmd
        }
    };
    let output = cmd.output().expect("the toolchain runs");
    assert!(
        output.status.success(),
        "building {lang} plugin {plugin} failed: {cmd:?}\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&tmp, &out).unwrap();
    out
}

// -------------------------------------------------------------- cases --

struct Case {
    dir: PathBuf,
    plugin: String,
    config: toml::Table,
    window: Option<String>,
    failed: BTreeSet<u64>,
    expected: Vec<Value>,
}

impl Case {
    fn load(name: &'static str) -> Case {
        let dir = root().join("tests/conformance/cases").join(name);
        let text = std::fs::read_to_string(dir.join("case.toml")).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let expected = std::fs::read_to_string(dir.join("expected.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        Case {
            plugin: table["plugin"].as_str().unwrap().to_owned(),
            config: table["config"].as_table().unwrap().clone(),
            window: table.get("window").map(|w| w.as_str().unwrap().to_owned()),
            failed: table["failed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_integer().unwrap() as u64)
                .collect(),
            expected,
            dir,
        }
    }

    fn inputs(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("input.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The languages that provide this case's plugin.
    fn languages(&self) -> Vec<(&'static str, &'static Path)> {
        LANGS
            .iter()
            .filter_map(|lang| Some((*lang, plugin(lang, &self.plugin)?)))
            .collect()
    }
}

/// What `weir plugin test` made of a case: output lines, failed input
/// lines, stderr.
fn plugin_test(case: &Case, component: &Path) -> (Vec<Value>, BTreeSet<u64>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, toml::to_string(&case.config).unwrap()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.arg("--cache-dir")
        .arg(weir_cache())
        .args(["plugin", "test"])
        .arg(component)
        .arg("--input")
        .arg(case.dir.join("input.jsonl"))
        .arg("--config-file")
        .arg(&config);
    if let Some(window) = &case.window {
        cmd.args(["--window", window]);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let failed: BTreeSet<u64> = stderr
        .lines()
        .filter(|l| l.contains(" failed ("))
        .filter_map(|l| l.strip_prefix("line ")?.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(
        out.status.code(),
        Some(if failed.is_empty() { 0 } else { 1 }),
        "{}: exit code\n{stderr}",
        component.display()
    );
    let outputs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (outputs, failed, stderr)
}

/// Runs a case through `weir plugin test` in every language.
fn check_plugin_test(name: &'static str) -> BTreeMap<&'static str, String> {
    let case = Case::load(name);
    let mut logs = BTreeMap::new();
    for (lang, component) in case.languages() {
        let (outputs, failed, stderr) = plugin_test(&case, component);
        assert_eq!(
            outputs, case.expected,
            "case {name}, {lang}: outputs differ\n{stderr}"
        );
        assert_eq!(
            failed, case.failed,
            "case {name}, {lang}: failed lines differ\n{stderr}"
        );
        logs.insert(lang, stderr);
    }
    logs
}

#[test]
fn filter_through_plugin_test() {
    check_plugin_test("filter");
}

#[test]
fn map_through_plugin_test() {
    check_plugin_test("map");
}

#[test]
fn flat_map_through_plugin_test() {
    check_plugin_test("flat-map");
}

#[test]
fn aggregate_through_plugin_test() {
    check_plugin_test("aggregate");
}

/// A JavaScript plugin that throws and a Python plugin that raises fail
/// only the message concerned, and the reason is the language's own text.
#[test]
fn per_message_errors_through_plugin_test_carry_the_languages_own_text() {
    let logs = check_plugin_test("error");
    // Line 7's payload is `null`: the plugins index into it, and each
    // runtime raises its own TypeError.
    assert_line_failed_with(
        &logs["js"],
        7,
        "TypeError: cannot read property 'temp' of null",
    );
    assert_line_failed_with(
        &logs["python"],
        7,
        "TypeError: 'NoneType' object is not subscriptable",
    );
    // Line 3 lacks `temp`: Python's dict raises KeyError.
    assert_line_failed_with(&logs["python"], 3, "KeyError: 'temp'");
}

fn assert_line_failed_with(log: &str, line: u64, text: &str) {
    let prefix = format!("line {line}: ");
    assert!(
        log.lines()
            .any(|l| l.starts_with(&prefix) && l.contains(text)),
        "line {line} did not fail with {text:?}:\n{log}"
    );
}

// ---------------------------------------------------------- over MQTT --

/// Starts `weir run` on `manifest` (written to `dir/weir.toml`) and waits
/// until it has subscribed.
fn run(dir: &Path, manifest: &str) -> Weir {
    let path = dir.join("weir.toml");
    std::fs::write(&path, manifest).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command
        .arg("--cache-dir")
        .arg(weir_cache())
        .arg("run")
        .arg(&path);
    let weir = Weir::spawn(command, dir.join("weir.log"));
    weir.wait_for_log("Subscribed.", 1);
    weir
}

/// An output without what depends on arrival time: `line`, `ts`, and an
/// aggregate's window bounds (in its payload and fields).
fn timeless(mut v: Value) -> Value {
    let object = v.as_object_mut().unwrap();
    object.remove("line");
    object.remove("ts");
    for part in ["payload", "fields"] {
        if let Some(Value::Object(map)) = object.get_mut(part) {
            map.remove("window_start");
            map.remove("window_end");
        }
    }
    v
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Publishes a case's input lines at QoS 1, each to its topic.
fn publish_inputs(broker: &Mosquitto, inputs: &[Value]) {
    let topics: Vec<String> = (inputs.iter())
        .map(|i| i["topic"].as_str().unwrap().to_owned())
        .collect();
    let payloads: Vec<Vec<u8>> = (inputs.iter())
        .map(|i| match i.get("payload") {
            Some(json) => serde_json::to_vec(json).unwrap(),
            None => i["payload_text"].as_str().unwrap().as_bytes().to_vec(),
        })
        .collect();
    publish_many_blocking(
        &broker.url(),
        move |i| topics[i].clone(),
        move |i| payloads[i].clone(),
        inputs.len(),
        1,
    );
}

/// Runs a case through one `weir run` with a rule per language over a real
/// Mosquitto; returns each language's error reports and the log.
fn check_mqtt(name: &'static str) -> (BTreeMap<&'static str, Vec<Value>>, String) {
    let case = Case::load(name);
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let languages = case.languages();
    let mut manifest = format!(
        "[broker]\nurl = {}\nclient_id = \"weir-conformance-{name}-{}\"\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n",
        toml_string(&broker.url()),
        std::process::id()
    );
    let step_window = case
        .window
        .as_ref()
        .map(|w| format!(", window = {{ {w} }}"))
        .unwrap_or_default();
    for (lang, component) in &languages {
        let out = dir.path().join(format!("out-{lang}.jsonl"));
        let errors = dir.path().join(format!("errors-{lang}.jsonl"));
        manifest += &format!(
            "[plugins.{lang}]\npath = {path}\n[plugins.{lang}.config]\n{config}\n\
             [sinks.out-{lang}]\ntype = \"file\"\npath = {out}\n\
             [sinks.errors-{lang}]\ntype = \"file\"\npath = {errors}\n\n\
             [[rules]]\nname = \"{lang}\"\nfrom = [\"conf/{{device}}/in\"]\nqos = 1\n\
             steps = [{{ plugin = \"{lang}\"{step_window} }}]\n\
             to = [\"out-{lang}\"]\nerrors = \"errors-{lang}\"\n\n",
            path = toml_string(&component.display().to_string()),
            config = toml::to_string(&case.config).unwrap(),
            out = toml_string(&out.display().to_string()),
            errors = toml_string(&errors.display().to_string()),
        );
    }
    let weir = run(dir.path(), &manifest);

    publish_inputs(&broker, &case.inputs());

    let out = |lang: &str| lines(&dir.path().join(format!("out-{lang}.jsonl")));
    let errors = |lang: &str| lines(&dir.path().join(format!("errors-{lang}.jsonl")));
    weir.wait_until("every rule has written everything", |_| {
        languages.iter().all(|(lang, _)| {
            out(lang).len() >= case.expected.len() && errors(lang).len() >= case.failed.len()
        })
    });
    let (_, log) = weir.terminate();

    // Windows that close in one batch come out in an order of the host's
    // (by window end, which is the batch's arrival time for them all), so
    // an aggregate's results are compared as a set.
    let order = |mut values: Vec<Value>| {
        if case.window.is_some() {
            values.sort_by_key(|v| v.to_string());
        }
        values
    };
    let expected = order(case.expected.iter().cloned().map(timeless).collect());
    let mut reports = BTreeMap::new();
    for (lang, _) in &languages {
        let got = order(out(lang).into_iter().map(timeless).collect());
        assert_eq!(
            got, expected,
            "case {name}, {lang} over MQTT: outputs differ\n{log}"
        );
        let errs = errors(lang);
        assert_eq!(
            errs.len(),
            case.failed.len(),
            "case {name}, {lang} over MQTT: error reports\n{errs:?}"
        );
        reports.insert(*lang, errs);
    }
    (reports, log)
}

#[test]
fn filter_over_mosquitto() {
    check_mqtt("filter");
}

#[test]
fn map_over_mosquitto() {
    check_mqtt("map");
}

#[test]
fn flat_map_over_mosquitto() {
    check_mqtt("flat-map");
}

#[test]
fn aggregate_over_mosquitto() {
    check_mqtt("aggregate");
}

#[test]
fn per_message_errors_over_mosquitto_carry_the_languages_own_text() {
    let (reports, log) = check_mqtt("error");
    let reasons = |lang: &str| -> Vec<String> {
        reports[lang]
            .iter()
            .map(|r| {
                r["payload"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    for (lang, text) in [
        ("js", "TypeError: cannot read property 'temp' of null"),
        (
            "python",
            "TypeError: 'NoneType' object is not subscriptable",
        ),
    ] {
        assert!(
            reasons(lang).iter().any(|r| r.contains(text)),
            "{lang}: no error report says {text:?}: {:?}",
            reasons(lang)
        );
        assert!(log.contains(text), "{text:?} is not in weir's log:\n{log}");
    }
}

// ------------------------------------------------------- big guests --

/// A Python guest (~18 MB, CPython inside) at `weir run`'s first start
/// compiles in the background, with a progress line: a rule with a Rust
/// plugin runs meanwhile, and the Python rule, whose queue held the same
/// messages, processes them once it is ready: nothing is lost. The next
/// process loads it from the cache without compiling.
#[test]
fn a_big_guest_compiles_in_the_background_once_and_the_next_start_loads_it_from_the_cache() {
    let case = Case::load("filter");
    let python = plugin("python", "filter").unwrap();
    let rust = plugin("rust", "filter").unwrap();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = |lang: &str| dir.path().join(format!("out-{lang}.jsonl"));
    let mut manifest = format!(
        "[broker]\nurl = {}\nclient_id = \"weir-conformance-big-{}\"\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n",
        toml_string(&broker.url()),
        std::process::id()
    );
    for (lang, component) in [("rust", rust), ("python", python)] {
        manifest += &format!(
            "[plugins.{lang}]\npath = {path}\n[plugins.{lang}.config]\n{config}\n\
             [sinks.out-{lang}]\ntype = \"file\"\npath = {out}\n\n\
             [[rules]]\nname = \"{lang}\"\nfrom = [\"conf/{{device}}/in\"]\nqos = 1\n\
             steps = [\"{lang}\"]\nto = [\"out-{lang}\"]\n\n",
            path = toml_string(&component.display().to_string()),
            config = toml::to_string(&case.config).unwrap(),
            out = toml_string(&out(lang).display().to_string()),
        );
    }
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, manifest).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command.arg("--cache-dir").arg(&cache).arg("run").arg(&path);
    let weir = Weir::spawn(command, dir.path().join("weir.log"));
    weir.wait_for_log("Subscribed.", 1);

    let expected: Vec<Value> = case.expected.iter().cloned().map(timeless).collect();
    let got = |lang: &str| -> Vec<Value> { lines(&out(lang)).into_iter().map(timeless).collect() };

    // The Rust rule runs while CPython compiles; the Python rule's queue
    // holds the same messages meanwhile.
    publish_inputs(&broker, &case.inputs());
    weir.wait_until("the Rust rule has written everything", |_| {
        got("rust").len() >= expected.len()
    });
    let log = weir.log();
    assert!(
        log.contains("Compiling the plugin in the background")
            && !log.contains("Plugin compiled; its rules start"),
        "the Rust rule waited for the Python compile:\n{log}"
    );
    let health: Value = serde_json::from_str(&weir.http_get("/health").1).unwrap();
    assert_eq!(health["rules"]["rust"]["state"], "running", "{health}");
    assert_eq!(health["rules"]["python"]["state"], "starting", "{health}");
    assert!(got("python").is_empty());

    // A manifest change made during the compile is applied once it is done.
    let later = dir.path().join("out-later.jsonl");
    let mut changed = std::fs::read_to_string(&path).unwrap();
    changed += &format!(
        "[sinks.out-later]\ntype = \"file\"\npath = {}\n\n\
         [[rules]]\nname = \"later\"\nfrom = [\"later/{{device}}\"]\nqos = 1\nto = [\"out-later\"]\n",
        toml_string(&later.display().to_string())
    );
    let tmp = dir.path().join("weir.toml.tmp");
    std::fs::write(&tmp, changed).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    weir.wait_for_log("The manifest changed while a plugin compiles", 1);

    // Then the Python rule starts, with the messages its queue held, and
    // the change takes effect after it.
    weir.wait_until("the Python rule has written everything", |_| {
        got("python").len() >= expected.len()
    });
    weir.wait_for_log("rules added: later", 1);
    let log = weir.log();
    let started = log.find("Plugin compiled; its rules start").unwrap();
    assert!(
        log.find("rules added: later").unwrap() > started,
        "the change waited for the compile:\n{log}"
    );
    let (_, log) = weir.terminate();
    assert_eq!(got("python"), expected, "{log}");
    assert_eq!(got("rust"), expected, "{log}");
    assert!(
        log.contains("Compiling a large plugin component")
            && log.contains("Compiled the plugin component")
            && log.contains("Plugin compiled; its rules start"),
        "no progress line:\n{log}"
    );

    let inspected = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--cache-dir")
        .arg(&cache)
        .args(["plugin", "inspect", "--json"])
        .arg(python)
        .output()
        .unwrap();
    assert!(inspected.status.success(), "{inspected:?}");
    let report: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(report["compiled_from"], "cache");
    let log = String::from_utf8_lossy(&inspected.stderr);
    assert!(!log.contains("Compiling"), "compiled again:\n{log}");
}

// ---------------------------------------------------------- weir new --

/// `weir new`, then the README's build command, gives a plugin that `weir
/// plugin inspect` accepts and whose own test (`test.sh`: `weir plugin
/// test` against its expected output) passes.
fn scaffold_build_and_test(lang: &str, kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("my-{kind}");
    let mut new = Command::new(env!("CARGO_BIN_EXE_weir"));
    new.args(["new", &name, "--lang", lang, "--kind", kind, "--dir"])
        .arg(dir.path());
    if lang == "rust" {
        new.arg("--sdk-path").arg(root().join("plugin-sdk"));
    }
    let out = new.output().unwrap();
    assert!(out.status.success(), "weir new: {out:?}");
    let project = dir.path().join(&name);

    // The build command is the one the README documents.
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    let build = readme
        .split("## Build\n\n```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the README has a build command");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", build]).current_dir(&project);
    for key in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WRAPPER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
    ] {
        cmd.env_remove(key);
    }
    match lang {
        // The installed toolchains stand in for `npm install` and `pip
        // install` in the project.
        "js" => {
            cmd.env("NODE_PATH", kits().join("js/node_modules"));
        }
        "python" => {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env(
                "PATH",
                format!("{}:{path}", kits().join("venv/bin").display()),
            );
        }
        // The Makefile componentizes with `wasm-tools` when it is on PATH,
        // else `jco new`: CI has only jco, first on PATH here.
        "c" => {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env(
                "PATH",
                format!("{}:{path}", kits().join("js/node_modules/.bin").display()),
            );
        }
        _ => {
            // One target folder for every scaffolded Rust project of every
            // run: dependencies build once.
            let shared = kits().join("new-rust-target");
            std::fs::create_dir_all(&shared).unwrap();
            std::os::unix::fs::symlink(&shared, project.join("target")).unwrap();
        }
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{lang} {kind}: `{build}` failed\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let wasm = readme
        .split("This writes `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap();
    let inspect = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--cache-dir")
        .arg(weir_cache())
        .args(["plugin", "inspect", "--json"])
        .arg(project.join(wasm))
        .output()
        .unwrap();
    assert!(inspect.status.success(), "inspect: {inspect:?}");
    let report: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(report["name"], name.as_str());
    assert_eq!(report["kind"], kind);

    let test = Command::new("sh")
        .arg("test.sh")
        .current_dir(&project)
        .env("WEIR", env!("CARGO_BIN_EXE_weir"))
        .env("WEIR_CACHE_DIR", weir_cache())
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{lang} {kind}: test.sh failed\n{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

#[test]
fn weir_new_js_projects_build_and_pass_their_test() {
    for kind in ["filter", "map", "flat-map", "aggregate"] {
        scaffold_build_and_test("js", kind);
    }
}

#[test]
fn weir_new_python_projects_build_and_pass_their_test() {
    for kind in ["filter", "map", "flat-map", "aggregate"] {
        scaffold_build_and_test("python", kind);
    }
}

#[test]
fn weir_new_c_projects_build_and_pass_their_test() {
    for kind in ["filter", "map", "flat-map", "aggregate"] {
        scaffold_build_and_test("c", kind);
    }
}

#[test]
fn weir_new_rust_projects_build_and_pass_their_test() {
    for kind in ["filter", "map", "flat-map", "aggregate"] {
        scaffold_build_and_test("rust", kind);
    }
}

#[test]
fn weir_new_refuses_a_bad_name_and_an_existing_folder() {
    let dir = tempfile::tempdir().unwrap();
    let new = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["new", name, "--lang", "js", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let bad = new("My Plugin");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lower-case letters"));
    assert!(new("ok").status.success());
    let again = new("ok");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

/// `weir plugin test` on an aggregate plugin needs a valid `--window`, and
/// says so; a transform refuses one.
#[test]
fn plugin_test_asks_for_a_window_only_where_one_applies() {
    let case = Case::load("aggregate");
    let run = |component: &Path, window: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.arg("--cache-dir")
            .arg(weir_cache())
            .args(["plugin", "test"])
            .arg(component)
            .arg("--input")
            .arg(case.dir.join("input.jsonl"))
            .args(["--config", "field=\"v\""]);
        if let Some(window) = window {
            cmd.args(["--window", window]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let sum = plugin("rust", "sum").unwrap();
    let (code, err) = run(sum, None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("aggregate plugin") && err.contains("--window"),
        "{err}"
    );
    let (code, err) = run(sum, Some(r#"kind = "count""#));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--window is not a valid window") && err.contains("count"),
        "{err}"
    );
    let (code, err) = run(
        plugin("rust", "filter").unwrap(),
        Some(r#"kind = "count", count = 2"#),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("aggregate plugins only"), "{err}");
}
