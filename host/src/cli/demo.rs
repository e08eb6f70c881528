//! `weir demo`: the whole pipeline on one machine, in one command.
//!
//! Starts the embedded broker on a free loopback port, simulated devices
//! publishing `{"temp": …, "hum": …}` on `devices/<id>/temp_hum`, and two
//! rules with the example plugins: `hot-readings` (threshold, temp > 30)
//! prints alerts on the console, `fahrenheit` (units, °C → °F) goes to a
//! null sink. Live counts go to stderr every second. Stops on Ctrl-C or
//! after `--duration`.
//!
//! The example plugins are built from this checkout
//! (`cargo build --profile guest --target wasm32-wasip2`, installing the
//! target with rustup when missing) unless `--plugins DIR` names a folder
//! holding `threshold.wasm` and `units.wasm`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rumqttc::{AsyncClient, MqttOptions, QoS};

use super::run::{IO_LINGER, IO_THREADS, Running, runtime};
use crate::engine::{Runtime, RuntimeOptions};

/// Arguments of `weir demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Stop after this long (e.g. `5s`, `1m`); runs until Ctrl-C otherwise.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Simulated devices.
    #[arg(long, default_value_t = 5)]
    pub devices: u32,
    /// Readings per device per second.
    #[arg(long, default_value_t = 10)]
    pub rate: u32,
    /// Folder holding `threshold.wasm` and `units.wasm`; built from this
    /// checkout when absent.
    #[arg(long)]
    pub plugins: Option<PathBuf>,
}

pub(super) fn run(args: DemoArgs, options: RuntimeOptions) -> anyhow::Result<ExitCode> {
    let plugins = match &args.plugins {
        Some(dir) => dir.clone(),
        None => build_plugins()?,
    };
    for name in ["threshold.wasm", "units.wasm"] {
        if !plugins.join(name).is_file() {
            bail!("{} has no {name}", plugins.display());
        }
    }
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let port = free_port()?;
    let manifest = dir.path().join("weir.toml");
    std::fs::write(&manifest, manifest_text(&plugins, port))?;

    runtime(IO_THREADS.into(), IO_LINGER)?.block_on(async move {
        let runtime = Runtime::new(options)?;
        let config = crate::config::load(&manifest, &runtime, crate::config::Compile::Now)
            .map_err(|d| anyhow::anyhow!("the demo manifest is invalid:\n{d}"))?;
        let metrics = crate::telemetry::install_prometheus();
        let running = Running::start(&config).await?;
        eprintln!(
            "weir demo: embedded broker on 127.0.0.1:{port}, {} devices × {} readings/s; Ctrl-C stops.",
            args.devices, args.rate
        );
        let devices = tokio::spawn(simulate(port, args.devices, args.rate));
        let stop = async {
            match args.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => eprintln!("{}", counts(&metrics.render())),
            }
        }
        devices.abort();
        running.stop().await;
        let summary = counts(&metrics.render());
        eprintln!("{summary}");
        Ok(ExitCode::SUCCESS)
    })
}

/// The demo's manifest.
fn manifest_text(plugins: &Path, port: u16) -> String {
    let path = |name: &str| {
        plugins
            .join(name)
            .display()
            .to_string()
            .replace('\\', "\\\\")
    };
    format!(
        r#"
[broker]
client_id = "weir-demo"
clean_session = true
embedded = {{ listen = "127.0.0.1:{port}" }}

[http]
enabled = false

[plugins.hot]
path = "{threshold}"
config = {{ field = "temp", op = ">", value = 30 }}

[plugins.fahrenheit]
path = "{units}"
config = {{ convert = {{ temp = "c_to_f" }}, rename = {{ temp = "temp_f" }}, decimals = 1 }}

[sinks.alerts]
type = "console"
template = "ALERT ${{device}}: ${{payload.temp}} °C (humidity ${{payload.hum}} %)"

[sinks.converted]
type = "null"

[[rules]]
name = "hot-readings"
from = ["devices/{{device}}/temp_hum"]
steps = ["hot"]
to = ["alerts"]

[[rules]]
name = "fahrenheit"
from = ["devices/{{device}}/temp_hum"]
steps = ["fahrenheit"]
to = ["converted"]
"#,
        threshold = path("threshold.wasm"),
        units = path("units.wasm"),
    )
}

/// Devices publishing readings: temperatures drift around 27 °C so some
/// cross the threshold.
async fn simulate(port: u16, devices: u32, rate: u32) {
    let mut options = MqttOptions::new("weir-demo-devices", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    let mut seed: u64 = 0x5eed;
    for step in 0u64.. {
        tick.tick().await;
        for device in 0..devices {
            // A small linear congruential generator: no dependency for noise.
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = ((seed >> 33) % 600) as f64 / 100.0 - 3.0;
            let wave = ((step as f64 / 20.0) + f64::from(device)).sin() * 4.0;
            let temp = ((27.0 + wave + noise) * 10.0).round() / 10.0;
            let hum = 40 + (seed >> 40) % 30;
            let payload = format!(r#"{{"temp":{temp},"hum":{hum}}}"#);
            let topic = format!("devices/dev-{device}/temp_hum");
            let _ = client.publish(topic, QoS::AtMostOnce, false, payload).await;
        }
    }
}

/// One line of counts from the metrics registry.
fn counts(prometheus: &str) -> String {
    let value = |metric: &str, rule: &str| -> u64 {
        let prefix = format!("{metric}{{rule=\"{rule}\"}} ");
        prometheus
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let received = prometheus
        .lines()
        .find_map(|l| l.strip_prefix("weir_source_messages_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64;
    format!(
        "weir demo: received {received} · hot-readings {} in → {} alerts · fahrenheit {} in → {} converted",
        value(crate::telemetry::RULE_MESSAGES_IN, "hot-readings"),
        value(crate::telemetry::RULE_MESSAGES_OUT, "hot-readings"),
        value(crate::telemetry::RULE_MESSAGES_IN, "fahrenheit"),
        value(crate::telemetry::RULE_MESSAGES_OUT, "fahrenheit"),
    )
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Builds the example plugins from this checkout and returns their folder.
fn build_plugins() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace")?
        .to_owned();
    if !root.join("plugins/threshold").is_dir() {
        bail!(
            "this weir was not built from a checkout; pass --plugins DIR with threshold.wasm and units.wasm"
        );
    }
    let installed = std::process::Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to build the example plugins")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l == "wasm32-wasip2")
    {
        eprintln!("weir demo: installing the wasm32-wasip2 target with rustup");
        let status = std::process::Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .status()?;
        anyhow::ensure!(status.success(), "rustup target add wasm32-wasip2 failed");
    }
    let target_dir = root.join("target").join("guests");
    eprintln!("weir demo: building the example plugins (threshold, units)");
    let status =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "--profile",
                "guest",
                "--target",
                "wasm32-wasip2",
                "-p",
                "threshold",
                "-p",
                "units",
                "--target-dir",
            ])
            .arg(&target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .context("cannot run cargo to build the example plugins")?;
    anyhow::ensure!(status.success(), "building the example plugins failed");
    Ok(target_dir.join("wasm32-wasip2").join("guest"))
}
