//! What a plugin instance's `Store` holds, and the host side of the imports.
//!
//! Each instance gets an empty WASI context: no preopened folders, no
//! environment variables, no arguments, no sockets (TCP, UDP and name
//! lookups are all refused), no inherited stdio. Its stdout and stderr are
//! read line by line into `tracing`, tagged with the plugin's name. The
//! `weir:plugin/host` imports (structured log, clock) are implemented here.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::weir::plugin::host::{Host, Level};
use super::ticker::{Awake, Ticker};

/// Longest line of guest output written to the log; the rest is cut so a
/// guest cannot make one log record arbitrarily large.
const MAX_LOG_LINE_BYTES: usize = 4096;

/// Linear memories, tables and core instances one component may create. A
/// component built by a usual toolchain needs a handful of each; the caps
/// stop a hostile one from exhausting the host with many small ones.
const MAX_MEMORIES: usize = 16;
const MAX_TABLES: usize = 64;
const MAX_INSTANCES: usize = 64;
/// Elements in one table (function references). Toolchains use a few
/// thousand at most.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The state of one plugin instance's `Store`.
pub(super) struct HostState {
    plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: MemoryLimiter,
    /// The last line the guest wrote to stderr (a Rust panic message, for
    /// instance), for the failure report of a trap.
    pub(super) last_stderr: Arc<Mutex<Option<String>>>,
    /// The runtime's epoch ticker, which must watch every entry into
    /// guest code.
    ticker: Ticker,
    /// When the guest call in progress (or the last one) is due: the
    /// store's epoch callback interrupts the guest from then on.
    due: Instant,
}

impl HostState {
    pub(super) fn new(plugin: Arc<str>, memory_cap_bytes: usize, ticker: Ticker) -> Self {
        let last_stderr = Arc::new(Mutex::new(None));
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestOutput::new(plugin.clone(), "stdout", None))
            .stderr(GuestOutput::new(
                plugin.clone(),
                "stderr",
                Some(last_stderr.clone()),
            ))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            plugin,
            wasi,
            table: ResourceTable::new(),
            limits: MemoryLimiter {
                cap_bytes: memory_cap_bytes,
            },
            last_stderr,
            ticker,
            due: Instant::now(),
        }
    }

    /// Starts the clock of a guest call with `deadline`: the ticker
    /// watches it until the guard drops. Held across every entry into
    /// guest code.
    pub(super) fn awake(&mut self, deadline: Duration) -> Awake {
        let now = Instant::now();
        // A deadline too far to represent is no deadline.
        self.due = now
            .checked_add(deadline)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        self.ticker.enter(deadline, self.due)
    }

    /// Whether the guest call in progress has run past its deadline.
    pub(super) fn overdue(&self) -> bool {
        Instant::now() >= self.due
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Host for HostState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let plugin = &*self.plugin;
        let message = truncate(&message);
        let fields = FieldsDisplay(&fields);
        match level {
            Level::Trace => tracing::trace!(plugin, fields = %fields, "{message}"),
            Level::Debug => tracing::debug!(plugin, fields = %fields, "{message}"),
            Level::Info => tracing::info!(plugin, fields = %fields, "{message}"),
            Level::Warn => tracing::warn!(plugin, fields = %fields, "{message}"),
            Level::Error => tracing::error!(plugin, fields = %fields, "{message}"),
        }
    }

    fn now_ms(&mut self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default()
    }
}

impl super::bindings::weir::plugin::types::Host for HostState {}

struct FieldsDisplay<'a>(&'a [(String, String)]);

impl std::fmt::Display for FieldsDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={:?}", truncate(k), truncate(v))?;
        }
        Ok(())
    }
}

fn truncate(s: &str) -> &str {
    if s.len() <= MAX_LOG_LINE_BYTES {
        return s;
    }
    let mut end = MAX_LOG_LINE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Caps an instance's linear memory. Growing past the cap is an error (not a
/// failed `memory.grow`), so the host can tell a memory-cap hit from any
/// other trap.
pub(super) struct MemoryLimiter {
    cap_bytes: usize,
}

/// A guest tried to grow its memory past its cap.
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {cap_bytes} bytes reached (the guest asked for {desired_bytes} bytes)")]
pub struct MemoryCapExceeded {
    /// The cap.
    pub cap_bytes: usize,
    /// What the guest asked for.
    pub desired_bytes: usize,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap_bytes {
            return Err(wasmtime::Error::new(MemoryCapExceeded {
                cap_bytes: self.cap_bytes,
                desired_bytes: desired,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// A guest's stdout or stderr, written to `tracing` one line at a time.
#[derive(Clone)]
struct GuestOutput {
    inner: Arc<Mutex<LineBuffer>>,
}

struct LineBuffer {
    plugin: Arc<str>,
    stream: &'static str,
    pending: Vec<u8>,
    last_line: Option<Arc<Mutex<Option<String>>>>,
}

impl GuestOutput {
    fn new(
        plugin: Arc<str>,
        stream: &'static str,
        last_line: Option<Arc<Mutex<Option<String>>>>,
    ) -> Self {
        GuestOutput {
            inner: Arc::new(Mutex::new(LineBuffer {
                plugin,
                stream,
                pending: Vec::new(),
                last_line,
            })),
        }
    }

    fn write(&self, bytes: &[u8]) {
        let mut buf = self.inner.lock().unwrap();
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            if buf.pending.len() < MAX_LOG_LINE_BYTES {
                let room = MAX_LOG_LINE_BYTES - buf.pending.len();
                let take = chunk.len().min(room);
                buf.pending.extend_from_slice(&chunk[..take]);
            }
            if chunk.ends_with(b"\n") {
                buf.emit();
            }
        }
    }
}

impl LineBuffer {
    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.pending);
        let line = line.trim_end_matches(['\n', '\r']);
        tracing::info!(plugin = &*self.plugin, stream = self.stream, "{line}");
        // Rust's panic hook ends with a hint about RUST_BACKTRACE; the line
        // worth reporting is the one before it.
        if let Some(last) = &self.last_line
            && !line.starts_with("note: ")
            && !line.is_empty()
        {
            *last.lock().unwrap() = Some(line.to_owned());
        }
        self.pending.clear();
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        GuestOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        GuestOutput::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
