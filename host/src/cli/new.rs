//! `weir new`: scaffolds a plugin project in Rust, JavaScript or Python.
//!
//! A project is a plugin of the chosen kind, its build files, the language
//! kit where it has no registry of its own yet (the JavaScript and Python
//! kits and the WIT package are written into the project, so it builds with
//! the language's registry alone), a test (`test.sh`: `weir plugin test`
//! over `test/input.jsonl`, compared with `test/expected.jsonl`) and a
//! README with the install, build and test commands. Templates live in
//! `host/templates/` and are compiled into the binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::ValueEnum;

/// Arguments of `weir new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The plugin's name: lower-case letters, digits and `-`; also the
    /// project folder's name.
    pub name: String,
    /// The plugin's language.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// What the plugin does with messages.
    #[arg(long, value_enum, default_value_t = Kind::Filter)]
    pub kind: Kind,
    /// Where to create the project folder (default: the current folder).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Rust only: a local checkout of `weir-sdk` (the `plugin-sdk` folder of
    /// weir's repository) to depend on by path, instead of crates.io.
    #[arg(long, value_name = "DIR")]
    pub sdk_path: Option<PathBuf>,
}

/// Plugin languages `weir new` scaffolds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Rust, with `weir-sdk` (cargo, target wasm32-wasip2).
    Rust,
    /// JavaScript, with the `weir-plugin` kit (npm: jco's QuickJS engine).
    Js,
    /// Python, with the `weir_plugin` kit (PyPI: componentize-py).
    Python,
}

/// Plugin kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Keeps or drops each message.
    Filter,
    /// One message out per message in.
    Map,
    /// Zero or more messages out per message in.
    FlatMap,
    /// Folds windows of messages into results (world `aggregator`).
    Aggregate,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Filter => "filter",
            Kind::Map => "map",
            Kind::FlatMap => "flat-map",
            Kind::Aggregate => "aggregate",
        }
    }

    fn world(self) -> &'static str {
        match self {
            Kind::Aggregate => "aggregator",
            _ => "transformer",
        }
    }
}

/// The WIT package every plugin is built against.
const WIT: &str = include_str!("../../../wit/plugin.wit");
const JS_KIT: &str = include_str!("../../../plugin-sdk/js/weir.js");
const JS_KIT_BUILD: &str = include_str!("../../../plugin-sdk/js/build.mjs");
const JS_KIT_PACKAGE: &str = include_str!("../../../plugin-sdk/js/package.json");
const PYTHON_KIT: &str = include_str!("../../../plugin-sdk/python/weir_plugin.py");

const README: &str = include_str!("../../templates/common/README.md");
const TEST_SH: &str = include_str!("../../templates/common/test.sh");
const INPUT: &str = include_str!("../../templates/common/input.jsonl");

/// The window the aggregate template is tested with.
const TEST_WINDOW: &str = r#"kind = "count", count = 2, group_by = ["device"]"#;

fn source(lang: Lang, kind: Kind) -> &'static str {
    match (lang, kind) {
        (Lang::Js, Kind::Filter) => include_str!("../../templates/js/filter.js"),
        (Lang::Js, Kind::Map) => include_str!("../../templates/js/map.js"),
        (Lang::Js, Kind::FlatMap) => include_str!("../../templates/js/flat-map.js"),
        (Lang::Js, Kind::Aggregate) => include_str!("../../templates/js/aggregate.js"),
        (Lang::Python, Kind::Filter) => include_str!("../../templates/python/filter.py"),
        (Lang::Python, Kind::Map) => include_str!("../../templates/python/map.py"),
        (Lang::Python, Kind::FlatMap) => include_str!("../../templates/python/flat-map.py"),
        (Lang::Python, Kind::Aggregate) => include_str!("../../templates/python/aggregate.py"),
        (Lang::Rust, Kind::Filter) => include_str!("../../templates/rust/filter.rs"),
        (Lang::Rust, Kind::Map) => include_str!("../../templates/rust/map.rs"),
        (Lang::Rust, Kind::FlatMap) => include_str!("../../templates/rust/flat-map.rs"),
        (Lang::Rust, Kind::Aggregate) => include_str!("../../templates/rust/aggregate.rs"),
    }
}

/// What the template plugin of each kind does, for the README.
fn what(kind: Kind) -> &'static str {
    match kind {
        Kind::Filter => "It keeps a message when its JSON payload's `temp` is at least `min`.",
        Kind::Map => "It adds `hot` (`temp >= min`) to each JSON payload.",
        Kind::FlatMap => {
            "It emits one message per element of the payload's `readings` array, on `<topic>/<index>`."
        }
        Kind::Aggregate => {
            "It counts each window's readings and keeps the highest `temp`; weir owns the windows."
        }
    }
}

/// The test's config table and exact expected output (the template input is
/// shared by every kind; the numbers are the input's own, so every language
/// prints the same).
fn expected(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Filter => (
            "min = 30\n",
            concat!(
                r#"{"line":1,"topic":"sensors/d1/temp","payload":{"readings":[30,31],"temp":31},"ts":1700000000000,"fields":{"device":"d1"}}"#,
                "\n",
                r#"{"line":3,"topic":"sensors/d1/temp","payload":{"readings":[35],"temp":35},"ts":1700000002000,"fields":{"device":"d1"}}"#,
                "\n"
            ),
        ),
        Kind::Map => (
            "min = 30\n",
            concat!(
                r#"{"line":1,"topic":"sensors/d1/temp","payload":{"hot":true,"readings":[30,31],"temp":31},"ts":1700000000000,"fields":{"device":"d1"}}"#,
                "\n",
                r#"{"line":2,"topic":"sensors/d2/temp","payload":{"hot":false,"readings":[],"temp":12},"ts":1700000001000,"fields":{"device":"d2"}}"#,
                "\n",
                r#"{"line":3,"topic":"sensors/d1/temp","payload":{"hot":true,"readings":[35],"temp":35},"ts":1700000002000,"fields":{"device":"d1"}}"#,
                "\n"
            ),
        ),
        Kind::FlatMap => (
            "",
            concat!(
                r#"{"line":1,"topic":"sensors/d1/temp/0","payload":{"temp":30},"ts":1700000000000,"fields":{"device":"d1"}}"#,
                "\n",
                r#"{"line":1,"topic":"sensors/d1/temp/1","payload":{"temp":31},"ts":1700000000000,"fields":{"device":"d1"}}"#,
                "\n",
                r#"{"line":3,"topic":"sensors/d1/temp/0","payload":{"temp":35},"ts":1700000002000,"fields":{"device":"d1"}}"#,
                "\n"
            ),
        ),
        Kind::Aggregate => (
            "",
            concat!(
                r#"{"line":3,"topic":"sensors/d1/temp","payload":{"count":2,"device":"d1","max":35,"window_end":1700000002000,"window_start":1700000000000},"ts":1700000000000,"fields":{"device":"d1","window_end":"1700000002000","window_start":"1700000000000"}}"#,
                "\n",
                r#"{"line":3,"topic":"sensors/d2/temp","payload":{"count":1,"device":"d2","max":12,"window_end":1700000001000,"window_start":1700000001000},"ts":1700000001000,"fields":{"device":"d2","window_end":"1700000001000","window_start":"1700000001000"}}"#,
                "\n"
            ),
        ),
    }
}

pub(super) fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    let name = &args.name;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || !name.starts_with(|c: char| c.is_ascii_lowercase())
    {
        bail!(
            "plugin name {name:?}: use lower-case letters, digits and `-`, starting with a letter \
             (it names the folder, the package and the plugin)"
        );
    }
    if args.sdk_path.is_some() && args.lang != Lang::Rust {
        bail!("--sdk-path applies to --lang rust only");
    }
    let project = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("."))
        .join(name);
    if project.exists() {
        bail!(
            "{} already exists: choose another name or --dir",
            project.display()
        );
    }
    let files = project_files(&args)?;
    for (path, contents) in &files {
        let path = project.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let readme = files
        .iter()
        .find(|(p, _)| p == Path::new("README.md"))
        .map(|(_, text)| text.as_str())
        .unwrap_or_default();
    let build = readme
        .split("## Build\n\n```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_default();
    println!(
        "Created {} ({} {} plugin). Next:\n\n    cd {}\n{}    sh test.sh",
        project.display(),
        args.lang_name(),
        args.kind.name(),
        project.display(),
        build
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    Ok(ExitCode::SUCCESS)
}

impl NewArgs {
    fn lang_name(&self) -> &'static str {
        match self.lang {
            Lang::Rust => "Rust",
            Lang::Js => "JavaScript",
            Lang::Python => "Python",
        }
    }
}

/// Every file of the project, as (relative path, contents).
fn project_files(args: &NewArgs) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let name = args.name.as_str();
    let kind = args.kind;
    let world = kind.world();
    let module = name.replace('-', "_");
    let (wasm, build, install, files): (String, String, String, Vec<(String, String)>) = match args
        .lang
    {
        Lang::Js => (
            "plugin.wasm".into(),
            "npm run build".into(),
            "Node.js 18 or later, then `npm install` (jco 1.35 from npm: the QuickJS \
                 engine and the bundler). The kit is in `weir-plugin/`; the WIT package in `wit/`."
                .into(),
            vec![
                ("plugin.js".to_owned(), source(Lang::Js, kind).to_owned()),
                ("package.json".to_owned(), source_package(name)),
                ("weir-plugin/weir.js".to_owned(), JS_KIT.to_owned()),
                ("weir-plugin/build.mjs".to_owned(), JS_KIT_BUILD.to_owned()),
                (
                    "weir-plugin/package.json".to_owned(),
                    JS_KIT_PACKAGE.to_owned(),
                ),
                ("weir-plugin/wit/plugin.wit".to_owned(), WIT.to_owned()),
                (
                    ".gitignore".to_owned(),
                    "node_modules/\nplugin.wasm\ntest/actual.jsonl\n".into(),
                ),
            ],
        ),
        Lang::Python => (
            "plugin.wasm".into(),
            format!("componentize-py -d wit -w {world} componentize -p . {module} -o plugin.wasm"),
            "Python 3.10 or later, then `pip install componentize-py==0.25.1` (in a \
                 virtual environment if you like). The kit is `weir_plugin.py`; the WIT \
                 package is in `wit/`. For editor completion, `componentize-py -d wit -w \
                 {world} bindings .` writes the generated bindings next to the plugin."
                .replace("{world}", world),
            vec![
                (
                    format!("{module}.py"),
                    source(Lang::Python, kind).to_owned(),
                ),
                ("weir_plugin.py".to_owned(), PYTHON_KIT.to_owned()),
                ("wit/plugin.wit".to_owned(), WIT.to_owned()),
                (
                    ".gitignore".to_owned(),
                    "__pycache__/\nplugin.wasm\ntest/actual.jsonl\nwit_world/\n".into(),
                ),
            ],
        ),
        Lang::Rust => (
            format!("target/wasm32-wasip2/release/{module}.wasm"),
            "cargo build --release --target wasm32-wasip2".into(),
            "Rust 1.95 or later and the WebAssembly target: `rustup target add \
                 wasm32-wasip2`. Dependencies come from crates.io; until `weir-sdk` is \
                 published there, create the project with `weir new --sdk-path \
                 <weir checkout>/plugin-sdk`, which depends on it by path."
                .into(),
            vec![
                (
                    "Cargo.toml".to_owned(),
                    cargo_toml(name, args.sdk_path.as_deref())?,
                ),
                ("src/lib.rs".to_owned(), source(Lang::Rust, kind).to_owned()),
                (
                    ".gitignore".to_owned(),
                    "target/\ntest/actual.jsonl\n".into(),
                ),
            ],
        ),
    };
    let (config, expected) = expected(kind);
    let window_args = if kind == Kind::Aggregate {
        format!("--window '{TEST_WINDOW}' ")
    } else {
        String::new()
    };
    let name_key = module.clone();
    let (config_example, step) = match kind {
        Kind::Filter | Kind::Map => (
            "config = { min = 30 }\n".to_owned(),
            format!("\"{name_key}\""),
        ),
        Kind::FlatMap => (String::new(), format!("\"{name_key}\"")),
        Kind::Aggregate => (
            String::new(),
            format!(
                "{{ plugin = \"{name_key}\", window = {{ kind = \"tumbling\", size = \"1m\", group_by = [\"device\"] }} }}"
            ),
        ),
    };
    let language = args.lang_name();
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{name_key}}", &name_key)
            .replace("{{kind}}", kind.name())
            .replace("{{world}}", world)
            .replace("{{wasm}}", &wasm)
            .replace("{{build}}", &build)
            .replace("{{install}}", &install)
            .replace("{{language}}", language)
            .replace("{{what}}", what(kind))
            .replace("{{window_args}}", &window_args)
            .replace("{{config_example}}", &config_example)
            .replace("{{step}}", &step)
    };
    let mut out: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|(path, text)| {
            // The kit files are copied as they are.
            let text = if path.starts_with("weir-plugin/") || path == "weir_plugin.py" {
                text
            } else {
                fill(&text)
            };
            (PathBuf::from(path), text)
        })
        .collect();
    out.push(("README.md".into(), fill(README)));
    out.push(("test.sh".into(), fill(TEST_SH)));
    out.push(("test/input.jsonl".into(), INPUT.to_owned()));
    out.push(("test/config.toml".into(), config.to_owned()));
    out.push(("test/expected.jsonl".into(), expected.to_owned()));
    Ok(out)
}

fn source_package(name: &str) -> String {
    include_str!("../../templates/js/package.json").replace("{{name}}", name)
}

fn cargo_toml(name: &str, sdk_path: Option<&Path>) -> anyhow::Result<String> {
    let dependency = match sdk_path {
        Some(path) => {
            let path = std::path::absolute(path)
                .with_context(|| format!("cannot resolve {}", path.display()))?;
            if !path.join("Cargo.toml").is_file() {
                bail!(
                    "--sdk-path {}: no Cargo.toml there (give weir's plugin-sdk folder)",
                    path.display()
                );
            }
            format!(
                "weir-sdk = {{ path = {} }}",
                toml::Value::String(path.display().to_string())
            )
        }
        None => format!("weir-sdk = \"{}\"", env!("CARGO_PKG_VERSION")),
    };
    Ok(include_str!("../../templates/rust/Cargo.toml")
        .replace("{{name}}", name)
        .replace("{{weir_sdk}}", &dependency))
}
