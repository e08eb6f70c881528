//! `weir validate` and `weir schema`.
//!
//! `weir validate FILE` runs only the manifest's checks (see
//! [`crate::config`]): plugins are loaded and each step's config goes
//! through the plugin's `init`, but nothing connects anywhere. On success it
//! prints one line on stdout, `FILE: ok — 2 rules, 3 sinks, 1 plugin`
//! (warnings, if any, on stderr) and exits 0. Otherwise it prints every
//! problem on stderr, compiler style, then `error: N problems in FILE`, and
//! exits 1:
//!
//! ```text
//! weir.toml:12:9: error: unknown field "tpoic" in [sinks.alerts]
//!   = hint: did you mean "topic"?
//! error: 1 problem in weir.toml
//! ```
//!
//! `weir schema` prints the manifest's JSON Schema, generated from the same
//! types the manifest is read with, so an editor can complete keys, show
//! their documentation and flag mistakes while typing. Save it next to the
//! manifest (`weir schema > weir.schema.json`), then either:
//!
//! - put `#:schema ./weir.schema.json` on the first line of `weir.toml`
//!   (Taplo and Even Better TOML read this directive), or
//! - map it in `.taplo.toml` for every manifest of a project:
//!
//!   ```toml
//!   [[rule]]
//!   include = ["**/weir.toml"]
//!   [rule.schema]
//!   path = "./weir.schema.json"
//!   ```
//!
//! - or, in VS Code with Even Better TOML, in `settings.json`:
//!   `"evenBetterToml.schema.associations": { ".*weir\\.toml$": "./weir.schema.json" }`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config;
use crate::engine::{Runtime, RuntimeOptions};

/// Arguments of `weir validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The manifest (weir.toml).
    pub file: PathBuf,
}

pub(super) fn validate(args: ValidateArgs, options: RuntimeOptions) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new(options)?;
    let shown = args.file.display().to_string();
    let checked = config::check(&args.file, &runtime, &config::Options::default());
    let diagnostics = &checked.diagnostics;
    match &checked.config {
        Some(config) => {
            for warning in diagnostics.warnings() {
                eprintln!("{warning}");
            }
            println!(
                "{shown}: ok — {}, {}, {}",
                count(config.rules.len(), "rule"),
                count(config.sinks.len(), "sink"),
                count(config.plugins.len(), "plugin"),
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let mut err = std::io::stderr().lock();
            writeln!(err, "{diagnostics}")?;
            writeln!(err, "{}", diagnostics.summary(&shown))?;
            Ok(ExitCode::from(1))
        }
    }
}

pub(super) fn schema() -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(config::schema())?);
    Ok(ExitCode::SUCCESS)
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
