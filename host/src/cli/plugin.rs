//! `weir plugin test` and `weir plugin inspect`.
//!
//! `test` runs a plugin over a JSON Lines file, the way a rule would, and
//! prints what it emits as JSON Lines. Input lines look like
//! `{"topic": "t", "payload": <any JSON>, "ts": 1700000000000, "fields":
//! {"device": "d1"}, "qos": 1}`: `payload` is sent as its compact JSON text;
//! `payload_text` (a string) is sent as raw UTF-8 instead; `ts` defaults to
//! the time of the run, `qos` to 0. Output lines have the same shape plus
//! `line`, the input line they came from, so they can be fed to another
//! plugin.
//!
//! An aggregate plugin (world `aggregator`) runs inside a window given with
//! `--window`, as in a manifest's window step (`kind = "count", count = 10,
//! group_by = ["device"]`), checked by the manifest's own validation. Time
//! is each line's `ts` (a manual clock, so the run is reproducible); the
//! windows still open at the end are flushed, as at shutdown. Output lines
//! are window results, `line` being the input line that closed the window.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::engine::{Limits, Plugin, Runtime, RuntimeOptions};
use crate::message::{Fields, Message};

/// Plugin commands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a plugin over a JSON Lines file and print what it emits.
    Test(TestArgs),
    /// Print a plugin's name, version, kind, contract, config keys and
    /// imports.
    Inspect(InspectArgs),
}

/// Arguments of `weir plugin test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The plugin component (.wasm).
    pub plugin: PathBuf,
    /// Input messages, one JSON object per line.
    #[arg(long)]
    pub input: PathBuf,
    /// A config key, as KEY=VALUE; VALUE is read as a TOML value (30, 2.5,
    /// true, "text", [1, 2]) and taken as a plain string if it is not one.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// A TOML file holding the plugin's config table; --config keys override
    /// its keys.
    #[arg(long, value_name = "FILE.toml")]
    pub config_file: Option<PathBuf>,
    /// Messages per batch handed to the plugin.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Memory cap of the instance, in MiB.
    #[arg(long, default_value_t = (crate::engine::DEFAULT_MEMORY_CAP_BYTES >> 20) as u32)]
    pub memory_mib: u32,
    /// CPU deadline per batch, in milliseconds.
    #[arg(long, default_value_t = crate::engine::DEFAULT_BATCH_DEADLINE.as_millis() as u64)]
    pub deadline_ms: u64,
    /// For an aggregate plugin: the window, as the keys of a manifest's
    /// `window` table, e.g. `kind = "count", count = 10, group_by = ["device"]`.
    #[arg(long, value_name = "KEYS")]
    pub window: Option<String>,
}

/// Arguments of `weir plugin inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The plugin component (.wasm).
    pub plugin: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(cmd: PluginCommand, options: RuntimeOptions) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new(options)?;
    match cmd {
        PluginCommand::Test(args) => test(&runtime, args),
        PluginCommand::Inspect(args) => inspect(&runtime, args),
    }
}

/// One input line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    topic: String,
    #[serde(default)]
    payload: Option<serde_json::Value>,
    #[serde(default)]
    payload_text: Option<String>,
    #[serde(default)]
    ts: Option<i64>,
    #[serde(default)]
    qos: Option<u8>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
    /// Present on lines that are another run's output; ignored.
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted so that outputs can be fed back as inputs"
    )]
    line: Option<u64>,
}

/// One output line.
#[derive(Debug, Serialize)]
struct OutputLine<'a> {
    line: u64,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_text: Option<String>,
    ts: i64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    fields: BTreeMap<&'a str, &'a str>,
}

fn test(runtime: &Runtime, args: TestArgs) -> anyhow::Result<ExitCode> {
    let config = read_config(&args.config, args.config_file.as_deref())?;
    let input = std::fs::File::open(&args.input)
        .with_context(|| format!("cannot read input {}", args.input.display()))?;
    let plugin = runtime.load(&args.plugin)?;
    let name = plugin.metadata()?.name;
    let limits = Limits {
        memory_cap_bytes: (args.memory_mib as usize) << 20,
        batch_deadline: Duration::from_millis(args.deadline_ms),
    };
    if plugin.is_aggregate() {
        return test_aggregate(runtime, &plugin, &name, &config, limits, &args);
    }
    if args.window.is_some() {
        bail!("--window applies to aggregate plugins only; {name:?} is a transform");
    }
    let mut instance = plugin.instantiate(&name, &config, limits)?;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed_lines = 0u64;
    let mut lines_in = 0u64;
    let mut lines_out = 0u64;
    let mut batch: Vec<Message> = Vec::new();
    let mut batch_lines: Vec<u64> = Vec::new();

    let mut flush = |batch: &mut Vec<Message>,
                     batch_lines: &mut Vec<u64>,
                     out: &mut dyn Write|
     -> anyhow::Result<(u64, u64)> {
        let outcome = instance.process(batch);
        let mut failed = 0;
        let mut last_failed = None;
        for f in &outcome.failures {
            let line = batch_lines[f.input];
            eprintln!(
                "line {line}: plugin {name:?} failed ({}): {}",
                f.kind.as_str(),
                f.reason
            );
            if last_failed != Some(line) {
                failed += 1;
                last_failed = Some(line);
            }
        }
        for o in &outcome.outputs {
            write_output(out, batch_lines[o.input], &o.message)?;
        }
        let emitted = outcome.outputs.len() as u64;
        batch.clear();
        batch_lines.clear();
        Ok((failed, emitted))
    };

    let reader = std::io::BufReader::new(input);
    for (index, line) in reader.lines().enumerate() {
        let number = index as u64 + 1;
        let line = line.with_context(|| format!("cannot read input {}", args.input.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        lines_in += 1;
        match parse_line(&line, now) {
            Ok(message) => {
                batch.push(message);
                batch_lines.push(number);
            }
            Err(e) => {
                eprintln!("line {number}: invalid input: {e:#}");
                failed_lines += 1;
                continue;
            }
        }
        if batch.len() == args.batch_size as usize {
            let (failed, emitted) = flush(&mut batch, &mut batch_lines, &mut out)?;
            failed_lines += failed;
            lines_out += emitted;
        }
    }
    if !batch.is_empty() {
        let (failed, emitted) = flush(&mut batch, &mut batch_lines, &mut out)?;
        failed_lines += failed;
        lines_out += emitted;
    }
    out.flush()?;
    eprintln!("{name}: {lines_in} lines in, {lines_out} out, {failed_lines} failed");
    Ok(if failed_lines > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `weir plugin test` for an aggregate plugin: one message at a time
/// through a window operator on a clock set to each line's `ts`.
fn test_aggregate(
    runtime: &Runtime,
    plugin: &Plugin,
    name: &str,
    config: &serde_json::Map<String, serde_json::Value>,
    limits: Limits,
    args: &TestArgs,
) -> anyhow::Result<ExitCode> {
    use crate::window::{Clock as _, ManualClock, WindowOperator};

    let Some(window) = args.window.as_deref() else {
        bail!(
            "{name:?} is an aggregate plugin: give its window with --window, e.g. \
             --window 'kind = \"count\", count = 10, group_by = [\"device\"]'"
        );
    };
    let spec = resolve_window(runtime, &args.plugin, config, window)?;
    let mut aggregator = plugin.instantiate_aggregator(name, config, limits)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let clock = ManualClock::new(now);
    let mut operator = WindowOperator::new(name, spec, std::sync::Arc::new(clock.clone()));
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("cannot read input {}", args.input.display()))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut lines_in, mut lines_out, mut failed) = (0u64, 0u64, 0u64);
    let report = |step: crate::window::Step, line: u64, out: &mut dyn Write| {
        for r in &step.rejected {
            eprintln!(
                "line {line}: plugin {name:?} failed ({}): {}",
                r.kind, r.reason
            );
        }
        for m in &step.outputs {
            write_output(out, line, m)?;
        }
        anyhow::Ok((step.rejected.len() as u64, step.outputs.len() as u64))
    };
    let mut last = 0;
    for (index, line) in text.lines().enumerate() {
        let number = index as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        lines_in += 1;
        last = number;
        let message = match parse_line(line, clock.now_ms()) {
            Ok(message) => message,
            Err(e) => {
                eprintln!("line {number}: invalid input: {e:#}");
                failed += 1;
                continue;
            }
        };
        clock.set(message.timestamp_ms);
        let (f, o) = report(
            operator.process(&mut aggregator, vec![message]),
            number,
            &mut out,
        )?;
        failed += f;
        lines_out += o;
    }
    let (f, o) = report(operator.flush(&mut aggregator), last, &mut out)?;
    failed += f;
    lines_out += o;
    out.flush()?;
    eprintln!("{name}: {lines_in} lines in, {lines_out} windows out, {failed} failed");
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Checks `--window` the way a manifest's window step is checked: a
/// one-rule manifest in a temporary folder, validated with the plugin.
fn resolve_window(
    runtime: &Runtime,
    plugin: &Path,
    config: &serde_json::Map<String, serde_json::Value>,
    window: &str,
) -> anyhow::Result<crate::window::WindowSpec> {
    let dir = tempfile::tempdir()?;
    let plugin = std::path::absolute(plugin)?;
    let mut table = toml::Table::new();
    table.insert(
        "config".into(),
        toml::Value::try_from(serde_json::Value::Object(config.clone()))?,
    );
    let manifest = format!(
        "[plugins.p]\npath = {path}\n[plugins.p.config]\n{config}\n\
         [sinks.out]\ntype = \"null\"\n\n\
         [[rules]]\nname = \"test\"\nfrom = [\"#\"]\n\
         steps = [{{ plugin = \"p\", window = {{ {window} }} }}]\nto = [\"out\"]\n",
        path = toml::Value::String(plugin.display().to_string()),
        config = toml::to_string(&table["config"])?,
    );
    let path = dir.path().join("window.toml");
    std::fs::write(&path, &manifest)?;
    let options = crate::config::Options {
        shown_as: Some("--window"),
        ..Default::default()
    };
    let checked = crate::config::check(&path, runtime, &options);
    match checked.config {
        Some(config) => config.rules[0].steps[0]
            .window
            .clone()
            .context("--window did not make a window step"),
        None => bail!("--window is not a valid window:\n{}", checked.diagnostics),
    }
}

fn parse_line(line: &str, now: i64) -> anyhow::Result<Message> {
    let input: InputLine = serde_json::from_str(line)?;
    let payload = match (input.payload, input.payload_text) {
        (Some(json), None) => serde_json::to_vec(&json)?,
        (None, Some(text)) => text.into_bytes(),
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => bail!("a line has either `payload` or `payload_text`, not both"),
    };
    let qos = input.qos.unwrap_or(0);
    if qos > 2 {
        bail!("qos must be 0, 1 or 2, not {qos}");
    }
    let mut message = Message::new(input.topic, payload, input.ts.unwrap_or(now));
    message.qos = qos;
    message.fields = Fields::from_pairs(input.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Ok(message)
}

fn write_output(out: &mut dyn Write, line: u64, m: &Message) -> anyhow::Result<()> {
    let (payload, payload_text) = match serde_json::from_slice::<serde_json::Value>(&m.payload) {
        Ok(json) if !m.payload.is_empty() => (Some(json), None),
        _ => (None, Some(String::from_utf8_lossy(&m.payload).into_owned())),
    };
    let record = OutputLine {
        line,
        topic: &m.topic,
        payload,
        payload_text,
        ts: m.timestamp_ms,
        fields: m.fields.iter().collect(),
    };
    serde_json::to_writer(&mut *out, &record)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Builds the config table from a TOML file and KEY=VALUE overrides.
fn read_config(
    pairs: &[String],
    file: Option<&Path>,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            let table: toml::Table = toml::from_str(&text)
                .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
            table
        }
        None => toml::Table::new(),
    };
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--config {pair:?} is not KEY=VALUE");
        };
        let key = key.trim();
        if key.is_empty() {
            bail!("--config {pair:?} has an empty key");
        }
        table.insert(key.to_owned(), parse_toml_value(value));
    }
    match serde_json::to_value(table)? {
        serde_json::Value::Object(map) => Ok(map),
        _ => unreachable!("a TOML table serialises to a JSON object"),
    }
}

fn parse_toml_value(text: &str) -> toml::Value {
    #[derive(Deserialize)]
    struct Holder {
        v: toml::Value,
    }
    toml::from_str::<Holder>(&format!("v = {text}"))
        .map(|h| h.v)
        .unwrap_or_else(|_| toml::Value::String(text.to_owned()))
}

fn inspect(runtime: &Runtime, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let plugin = runtime.load(&args.plugin)?;
    let metadata = plugin.metadata()?;
    let report = InspectReport::new(&plugin, metadata, &args.plugin)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        report.write_text(&mut out)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct InspectReport {
    name: String,
    version: String,
    kind: String,
    contract: String,
    world: &'static str,
    config_keys: Vec<crate::engine::ConfigKey>,
    imports: Vec<String>,
    sha256: String,
    size_bytes: u64,
    compiled_from: &'static str,
    load_ms: f64,
}

impl InspectReport {
    fn new(plugin: &Plugin, m: crate::engine::Metadata, path: &Path) -> anyhow::Result<Self> {
        Ok(InspectReport {
            name: m.name,
            version: m.version,
            kind: m.kind,
            contract: format!("weir:plugin@{}", plugin.info().contract_version),
            world: plugin.info().world,
            config_keys: m.config_keys,
            imports: plugin.info().imports.clone(),
            sha256: plugin.content_hash(),
            size_bytes: std::fs::metadata(path)?.len(),
            compiled_from: match plugin.load_source() {
                crate::engine::LoadSource::Memory | crate::engine::LoadSource::Disk => "cache",
                crate::engine::LoadSource::Compiled => "source",
            },
            load_ms: plugin.load_time().as_secs_f64() * 1e3,
        })
    }

    fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(out, "name      {}", self.name)?;
        writeln!(out, "version   {}", self.version)?;
        writeln!(out, "kind      {}", self.kind)?;
        writeln!(out, "contract  {} (world {})", self.contract, self.world)?;
        if self.config_keys.is_empty() {
            writeln!(out, "config    (no keys)")?;
        }
        let width = self
            .config_keys
            .iter()
            .map(|k| k.name.len())
            .max()
            .unwrap_or(0);
        for (i, k) in self.config_keys.iter().enumerate() {
            let label = if i == 0 { "config" } else { "" };
            let line = format!("{label:<9} {:<width$}  {}", k.name, k.description);
            writeln!(out, "{}", line.trim_end())?;
        }
        for (i, import) in self.imports.iter().enumerate() {
            let label = if i == 0 { "imports" } else { "" };
            writeln!(out, "{label:<9} {import}")?;
        }
        writeln!(out, "sha256    {}", self.sha256)?;
        writeln!(out, "size      {} bytes", self.size_bytes)?;
        writeln!(
            out,
            "compiled  from {} in {:.1} ms",
            self.compiled_from, self.load_ms
        )?;
        Ok(())
    }
}
