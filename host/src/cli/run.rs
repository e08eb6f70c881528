//! `weir run`: the pipeline, until SIGINT or SIGTERM.
//!
//! Start-up refuses an invalid manifest (every problem is printed, exit 1).
//! A large plugin that is not compiled yet (a JavaScript or Python guest's
//! first start) compiles in the background: the rules that do not use it
//! run at once, and its own rules' queues hold their messages until it is
//! ready ([`Reloader::compile_waiting`]).
//! While running, the manifest and every plugin file it names are watched
//! and hot-reloaded ([`crate::reload`]); `SIGHUP` reloads the manifest too,
//! and `--no-watch` leaves only `SIGHUP`. On SIGINT/SIGTERM intake stops,
//! rules drain, sinks flush, the acknowledgements go out, and the process
//! exits 0.

use std::cell::RefCell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::oneshot;

#[cfg(feature = "embedded-broker")]
use crate::broker::EmbeddedBroker;
#[cfg(not(feature = "embedded-broker"))]
type EmbeddedBroker = std::convert::Infallible;
use crate::config::{Compile, Config};
use crate::engine::{Runtime, RuntimeOptions};
use crate::health::{Health, RuleState};
use crate::pipeline::Pipeline;
use crate::reload::Reloader;
use crate::reload::watch::{Mode, Watcher};

/// Arguments of `weir run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The manifest.
    #[arg(default_value = "weir.toml")]
    pub manifest: PathBuf,
    /// Do not watch the manifest and plugin files for changes (SIGHUP
    /// still reloads the manifest).
    #[arg(long)]
    pub no_watch: bool,
    /// Poll the files every this many milliseconds instead of using
    /// file-system events (for file systems without them).
    #[arg(long, value_name = "MS")]
    pub watch_poll_ms: Option<u64>,
    /// Threads for the network side: MQTT connections, sinks, the HTTP
    /// endpoint. Plugins run on each rule's own thread, not these.
    /// Raise it when sinks spend much CPU encoding large batches.
    #[arg(long, value_name = "N", default_value_t = IO_THREADS, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub io_threads: u16,
    /// A network thread that keeps being woken within twice this of going
    /// idle (a steady stream of messages) waits this long before it goes
    /// idle again, then takes what arrived meanwhile in one wake-up instead
    /// of one per message: fewer system calls and wake-ups per message, and
    /// at most this much longer for a message to be read. `0s` turns it
    /// off.
    #[arg(long, value_name = "DURATION", default_value = "50us", value_parser = humantime::parse_duration)]
    pub io_linger: Duration,
}

pub(super) fn run(args: RunArgs, options: RuntimeOptions) -> anyhow::Result<ExitCode> {
    runtime(args.io_threads.into(), args.io_linger)?.block_on(async move {
        // Signals are taken over first: a SIGHUP during start-up must not
        // kill the process (its default action), only queue a reload.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        let runtime = Runtime::new(options)?;
        let config = match crate::config::load(&args.manifest, &runtime, Compile::Background) {
            Ok(config) => config,
            Err(diagnostics) => {
                eprint!("{diagnostics}");
                return Ok(ExitCode::from(1));
            }
        };
        let mut running = Running::start(&config).await?;
        let (changes_tx, mut changes) = tokio::sync::mpsc::channel(64);
        let mut reloader = Reloader::new(
            config.clone(),
            runtime.clone(),
            running.health.clone(),
            changes_tx.clone(),
        );
        reloader.compile_waiting();
        let mut watcher = if args.no_watch {
            None
        } else {
            let mode = match args.watch_poll_ms {
                Some(ms) => Mode::Poll(Duration::from_millis(ms.max(1))),
                None => Mode::Events,
            };
            let w = Watcher::start(&reloader.files(), mode, changes_tx)?;
            tracing::info!(files = reloader.files().len(), by = w.kind, "Watching the manifest and plugins.");
            Some(w)
        };
        tracing::info!(
            manifest = %args.manifest.display(),
            rules = config.rules.len(),
            waiting = config.waiting.len(),
            sinks = config.sinks.len(),
            io_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            io_linger = ?args.io_linger,
            "Running."
        );
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                r = &mut ctrl_c => {
                    r.context("cannot watch SIGINT")?;
                    break;
                }
                _ = term.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the manifest.");
                    reloader.reload_manifest(&mut running.pipeline, false).await;
                }
                Some(change) = changes.recv() => {
                    reloader.on_change(&mut running.pipeline, change).await;
                }
            }
            if let Some(w) = &mut watcher
                && let Err(e) = w.set_files(&reloader.files())
            {
                tracing::error!(error = %format!("{e:#}"), "Cannot watch a plugin folder; its changes are not seen until SIGHUP.");
            }
        }
        drop(watcher);
        running.stop().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Default number of I/O threads. One: a message's path through the
/// network side (the source's connection, a sink's connection, the
/// acknowledgement) is a chain of small tasks, and a second worker mostly
/// adds wake-ups between the two. The pipeline bench measured one thread
/// at 39 µs of CPU per message against 45 with two, on average over eight
/// runs on 2 cores (README, Performance).
pub(super) const IO_THREADS: u16 = 1;

/// Default `--io-linger`. In the pipeline bench (eight runs alternating
/// with `0s`) it took the network thread from 14.2 – 20.0 to 11.0 – 13.8
/// µs of CPU per message, with p50 latency at 2 000 msg/s unchanged
/// (README, Performance).
pub(super) const IO_LINGER: Duration = Duration::from_micros(50);

/// The async runtime every long-running command uses, with `threads`
/// worker threads (blocking work goes to tokio's blocking pool) that
/// linger for `linger` before going idle while busy ([`IoLinger`]).
pub(super) fn runtime(threads: usize, linger: Duration) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(threads)
        .enable_all()
        .thread_name("weir-io");
    if !linger.is_zero() {
        thread_local! {
            static LINGER: RefCell<IoLinger> = RefCell::default();
        }
        builder
            .on_thread_park(move || {
                if let Some(wait) = LINGER.with_borrow(|l| l.wait(linger)) {
                    std::thread::sleep(wait);
                }
                LINGER.with_borrow_mut(|l| l.parked(Instant::now()));
            })
            .on_thread_unpark(move || {
                LINGER.with_borrow_mut(|l| l.unparked(Instant::now(), linger));
            });
    }
    builder.build().context("cannot start the async runtime")
}

/// When a network thread lingers before going idle: coalescing, as a
/// network card delays its interrupt. A thread woken within twice the
/// linger of going idle is busy: messages come one at a time and each
/// costs a wake-up (`epoll_wait` returning, a `recvfrom`, a context
/// switch). Before its next idle spell it waits the linger out, and the
/// messages that arrive meanwhile are read in one go. A thread idle for
/// longer (messages far apart, or none) goes idle at once, so a quiet
/// pipeline adds no latency and no wake-ups.
#[derive(Debug, Default)]
struct IoLinger {
    /// When the thread last went idle.
    parked_at: Option<Instant>,
    /// Whether it was woken within twice the linger of that.
    busy: bool,
}

impl IoLinger {
    /// How long the thread waits before going idle now.
    fn wait(&self, linger: Duration) -> Option<Duration> {
        (self.busy && !linger.is_zero()).then_some(linger)
    }

    /// The thread goes idle at `now`.
    fn parked(&mut self, now: Instant) {
        self.parked_at = Some(now);
    }

    /// The thread was woken at `now`.
    fn unparked(&mut self, now: Instant, linger: Duration) {
        self.busy = self
            .parked_at
            .is_some_and(|at| now.saturating_duration_since(at) < linger * 2);
    }
}

/// Everything `weir run` starts: the embedded broker (if any), the
/// pipeline, the HTTP endpoint.
pub(super) struct Running {
    broker: Option<EmbeddedBroker>,
    pipeline: Pipeline,
    http: Option<(
        oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    health: Health,
    /// Tasks keeping the sinks' health entries current.
    watchers: tokio::task::JoinSet<()>,
}

impl Running {
    pub(super) async fn start(config: &Config) -> anyhow::Result<Running> {
        let metrics = crate::telemetry::install_prometheus();
        let broker = match config.broker.embedded.clone() {
            #[cfg(feature = "embedded-broker")]
            Some(embedded) => Some(
                // Blocks until the broker answers, up to a few seconds.
                tokio::task::spawn_blocking(move || crate::broker::start(&embedded))
                    .await
                    .context("embedded broker start-up panicked")??,
            ),
            #[cfg(not(feature = "embedded-broker"))]
            Some(_) => anyhow::bail!("this weir was built without the embedded-broker feature"),
            None => None,
        };
        let health = Health::new();
        for (name, plugin) in &config.plugins {
            let version = plugin
                .plugin
                .metadata()
                .map(|m| m.version)
                .unwrap_or_default();
            health.set_plugin(name, version, plugin.plugin.content_hash());
        }
        let pipeline = Pipeline::start(config).await?;
        for rule in &config.rules {
            health.set_rule(&rule.name, RuleState::Running);
        }
        for rule in &config.waiting {
            health.set_rule(&rule.name, RuleState::Starting);
        }
        release_startup_memory();
        let mut watchers = tokio::task::JoinSet::new();
        for (_, handle) in pipeline.sinks() {
            watchers.spawn(crate::sink::report_health(handle.clone(), health.clone()));
        }
        let http = match config.http {
            Some(addr) => {
                let (stop, stopped) = oneshot::channel::<()>();
                let (_, task) = crate::http::serve(addr, metrics, health.clone(), async {
                    let _ = stopped.await;
                })
                .await?;
                Some((stop, task))
            }
            None => None,
        };
        Ok(Running {
            broker,
            pipeline,
            http,
            health,
            watchers,
        })
    }

    /// Stops intake, drains, flushes, acknowledges; then the HTTP endpoint
    /// and the embedded broker.
    pub(super) async fn stop(self) {
        tracing::info!("Shutting down: draining rules and flushing sinks.");
        let Running {
            broker,
            pipeline,
            http,
            health,
            mut watchers,
        } = self;
        pipeline.shutdown().await;
        watchers.shutdown().await;
        for (name, _) in health.report().rules {
            health.set_rule(&name, RuleState::Stopped);
        }
        if let Some((stop, task)) = http {
            let _ = stop.send(());
            let _ = task.await;
        }
        #[cfg(feature = "embedded-broker")]
        if let Some(broker) = broker {
            broker.stop();
        }
        #[cfg(not(feature = "embedded-broker"))]
        drop(broker);
        tracing::info!("Stopped.");
    }
}

/// Hands the heap that start-up used and freed (compiling plugins,
/// validating the manifest) back to the system. glibc keeps freed memory
/// for reuse; after a compile that is several MB the steady state never
/// needs again.
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free heap pages to the kernel; it
    // has no preconditions and is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_micros(50);

    #[test]
    fn a_thread_lingers_while_it_is_woken_within_twice_the_linger_of_going_idle() {
        let mut l = IoLinger::default();
        assert_eq!(l.wait(LINGER), None, "a new thread goes idle at once");
        let mut at = Instant::now();
        // (idle spell, then how long the thread waits before the next one)
        for (idle_us, lingers) in [
            (60, true),
            (99, true),
            (500, false), // 2 000 msg/s: messages far enough apart
            (100, false), // exactly twice the linger is not busy
            (1, true),
            (10_000, false),
        ] {
            l.parked(at);
            at += Duration::from_micros(idle_us);
            l.unparked(at, LINGER);
            let expected = lingers.then_some(LINGER);
            assert_eq!(l.wait(LINGER), expected, "after {idle_us} µs idle");
            at += Duration::from_micros(20);
        }
        l.parked(at);
        l.unparked(at + Duration::from_micros(1), LINGER);
        assert_eq!(l.wait(Duration::ZERO), None, "a zero linger never waits");
    }

    #[test]
    fn the_default_linger_is_what_the_flag_defaults_to() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let cli = Cli::parse_from(["weir"]);
        assert_eq!(cli.run.io_linger, IO_LINGER);
        let off = Cli::parse_from(["weir", "--io-linger", "0s"]);
        assert_eq!(off.run.io_linger, Duration::ZERO);
    }
}
