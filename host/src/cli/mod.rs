//! The `weir` command line.
//!
//! Exit codes: 0 success; 1 the command ran but something it processed
//! failed (a record in `weir plugin test`); 2 the command could not run (bad
//! arguments, a file that is not a plugin, a config the plugin refuses).
//! Errors are one line on stderr, starting with `error: `.

mod demo;
mod new;
mod plugin;
mod run;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// weir — MQTT in, WebAssembly transforms, databases out.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` env-filter syntax (also read from RUST_LOG).
    /// (rumqttd, the embedded broker, logs every client disconnect as an
    /// error, hence `rumqttd=off` by default.)
    #[arg(long, global = true, default_value = "info,rumqttd=off")]
    pub log: String,
    /// Folder of the compiled-component cache (default: $WEIR_CACHE_DIR,
    /// else $XDG_CACHE_HOME/weir/components, else ~/.cache/weir/components).
    #[arg(long, global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Compile every component afresh; read and write no cache.
    #[arg(long, global = true)]
    pub no_cache: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Human,
    /// One JSON object per event.
    Json,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with plugin components.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Run the pipeline a manifest describes, until SIGINT or SIGTERM.
    Run(run::RunArgs),
    /// Run a self-contained demo: embedded broker, simulated devices,
    /// example plugins, console output.
    Demo(demo::DemoArgs),
    /// Check a manifest and report every problem in it.
    Validate(validate::ValidateArgs),
    /// Print the manifest's JSON Schema, for editors (Taplo, Even Better TOML).
    Schema,
    /// Create a plugin project (Rust, JavaScript, Python or C) that builds and
    /// passes its own test out of the box.
    New(new::NewArgs),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    let options = crate::engine::RuntimeOptions {
        cache_dir: if cli.no_cache {
            None
        } else {
            cli.cache_dir
                .clone()
                .or_else(crate::engine::RuntimeOptions::default_cache_dir)
        },
    };
    let result = match cli.command {
        Command::Plugin(cmd) => plugin::run(cmd, options),
        Command::Run(args) => run::run(args, options),
        Command::Demo(args) => demo::run(args, options),
        Command::Validate(args) => validate::validate(args, options),
        Command::Schema => validate::schema(),
        Command::New(args) => new::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match format {
        LogFormat::Human => builder.compact().init(),
        LogFormat::Json => builder.json().init(),
    }
}
