//! The manifest, `weir.toml`: from text to the resolved [`Config`] the
//! pipeline runs from.
//!
//! This module owns everything between the file and the model, in two
//! steps, and reports **every** problem at once, each at its file, line and
//! column, with a hint when one helps:
//!
//! 1. **Parse and shape** (`shape.rs`): the TOML is parsed with spans,
//!    `${env:NAME}` references are resolved (`secret.rs`), and the tree is
//!    checked against the JSON Schema of the raw types (`manifest.rs`):
//!    unknown keys (with a did-you-mean), wrong types, missing keys, values
//!    out of range or not among the allowed ones.
//! 2. **Validate** (`validate.rs`): each item is resolved into the model
//!    (`model.rs`): durations, URLs, paths, topic filters, templates,
//!    references between sections, dead-letter cycles, plugins loaded and
//!    each step's config accepted by the plugin's `init`, and template
//!    variables checked against the captures of the rules that use them.
//!
//! Decisions a user of EMQX or eKuiper should know: a `${name}` template
//! variable that is neither a builtin nor a capture reads the payload field
//! of that name (EMQX's `${temp}`), so it is only refused where it cannot
//! be one (a rule with `format = "raw"` and no steps), where it is one or
//! two edits away from a capture (`${devcie}`), or where only some of the
//! rule's filters capture it. Without `[broker]`, weir connects to
//! `mqtt://127.0.0.1:1883` (or to its embedded broker when
//! `[broker.embedded]` is set) as client `weir-<hostname>`. A password
//! written in clear is accepted with a warning.
//!
//! What this module must never do: print, log or put in a diagnostic a
//! value read from the environment (diagnostics quote the file's text), or
//! hand the pipeline a model that was not fully checked.

mod diagnostic;
mod duration;
pub mod manifest;
mod model;
mod secret;
mod shape;
mod validate;

use std::path::Path;
use std::sync::OnceLock;

pub use self::diagnostic::{Diagnostic, Diagnostics, Severity};
pub use self::model::*;
pub use self::secret::{Environment, Secret, process_env};
use crate::engine::Runtime;

/// The outcome of checking a manifest: the model when there was no error,
/// and every diagnostic (warnings too) either way.
#[derive(Debug)]
pub struct Checked {
    /// The resolved model, when the manifest has no error.
    pub config: Option<Config>,
    /// Errors and warnings, in file order.
    pub diagnostics: Diagnostics,
}

/// How [`check`] reads a manifest.
#[derive(Clone, Copy)]
pub struct Options<'a> {
    /// The manifest's name in diagnostics; the path as given when `None`.
    pub shown_as: Option<&'a str>,
    /// Where `${env:NAME}` is looked up.
    pub env: Environment<'a>,
    /// When plugins are compiled.
    pub compile: Compile,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            shown_as: None,
            env: &process_env,
            compile: Compile::Now,
        }
    }
}

/// When validation compiles the plugins it loads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compile {
    /// Every plugin, before the model is returned: every problem is known
    /// (`weir validate`).
    #[default]
    Now,
    /// All but the large components that are not compiled yet (a
    /// JavaScript or Python guest at its first start): those are listed in
    /// [`Config::compiling`], and the rules that run them in
    /// [`Config::waiting`]. Such a rule is checked in full except for its
    /// steps' config, which the plugin's `init` checks once it has compiled
    /// (`weir run`).
    Background,
}

/// Parses and validates a manifest: the model, or every problem at once.
/// Warnings of a valid manifest are logged.
pub fn load(path: &Path, runtime: &Runtime, compile: Compile) -> Result<Config, Diagnostics> {
    let options = Options {
        compile,
        ..Options::default()
    };
    let checked = check(path, runtime, &options);
    for w in checked.diagnostics.warnings() {
        tracing::warn!(
            file = %w.file,
            line = w.line,
            column = w.column,
            warning = %w.message,
            "Manifest warning."
        );
    }
    checked.config.ok_or(checked.diagnostics)
}

/// Parses and validates a manifest, returning the model (if valid) and
/// every diagnostic. Relative paths in the manifest start at its folder.
pub fn check(path: &Path, runtime: &Runtime, options: &Options<'_>) -> Checked {
    let shown = options
        .shown_as
        .map(str::to_owned)
        .unwrap_or_else(|| path.display().to_string());
    let source = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            return Checked {
                config: None,
                diagnostics: Diagnostics(vec![Diagnostic::file_error(
                    &shown,
                    format!("cannot read the manifest: {e}"),
                )]),
            };
        }
    };
    check_source(&source, path, &shown, runtime, options)
}

fn check_source(
    source: &str,
    path: &Path,
    shown: &str,
    runtime: &Runtime,
    options: &Options<'_>,
) -> Checked {
    let mut r = diagnostic::Reporter::new(shown, source);
    let config = shape::Node::parse(source, &mut r).and_then(|mut root| {
        root.resolve_env(options.env, &mut r);
        let bad_items = shape::Shape::check_manifest(schema(), &mut root, &mut r);
        validate::Validator::new(&root, &bad_items, &mut r, path, runtime, options.compile).run()
    });
    let diagnostics = r.finish();
    Checked {
        config: config.filter(|_| !diagnostics.has_errors()),
        diagnostics,
    }
}

/// The manifest's JSON Schema (draft 2020-12): what `weir schema` prints
/// for editors, and what the shape check walks.
///
/// It is generated from the raw types in [`manifest`] (their `JsonSchema`
/// derives) into `manifest.schema.json`, and compiled in from there, so
/// the binary neither carries nor runs the generator: that saved about
/// 0.65 MB of resident code at every start. A test checks that the file is
/// what the types generate and rewrites it on request.
pub fn schema() -> &'static serde_json::Value {
    static SCHEMA: OnceLock<serde_json::Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::from_str(include_str!("manifest.schema.json")).expect("a schema is JSON")
    })
}

#[cfg(test)]
mod tests {
    /// `manifest.schema.json` is what the manifest types generate. After
    /// changing them: `WEIR_UPDATE_SCHEMA=1 cargo test -p weir --lib
    /// the_compiled_in_schema`.
    #[test]
    fn the_compiled_in_schema_is_what_the_manifest_types_generate() {
        let generated = serde_json::to_value(schemars::schema_for!(super::manifest::Manifest))
            .expect("a schema is JSON");
        if std::env::var_os("WEIR_UPDATE_SCHEMA").is_some() {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/config/manifest.schema.json"
            );
            let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
            std::fs::write(path, text).expect("write manifest.schema.json");
            return;
        }
        assert!(
            *super::schema() == generated,
            "host/src/config/manifest.schema.json is out of date: the manifest types changed. \
             Regenerate it with `WEIR_UPDATE_SCHEMA=1 cargo test -p weir --lib the_compiled_in_schema` \
             and commit it."
        );
    }
}
