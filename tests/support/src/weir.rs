//! [`WeirProcess`]: a `weir` process under test, its log, its HTTP
//! endpoint, and a clean or forced stop.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long every wait of a [`WeirProcess`] lasts at most.
pub const WAIT: Duration = Duration::from_secs(60);

/// A running `weir` process whose stderr (the log) goes to a file. Killed
/// when dropped; if the test is panicking then, the log is printed.
pub struct WeirProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl WeirProcess {
    /// Spawns `command` (the `weir` binary and its arguments) with stdin and
    /// stdout closed and stderr written to `log`.
    pub fn spawn(mut command: Command, log: PathBuf) -> WeirProcess {
        let stderr = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        WeirProcess {
            child: Some(child),
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log lines containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Waits (at most [`WAIT`]) until `done` accepts the log.
    pub fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if done(&log) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "weir: timed out waiting until {what}\n--- log ---\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log holds `needle` at least `count` times.
    pub fn wait_for_log(&self, needle: &str, count: usize) {
        self.wait_until(&format!("it logs {needle:?} {count} times"), |log| {
            log.matches(needle).count() >= count
        });
    }

    /// Waits until the JSON-lines file `path` (a file sink's output) holds
    /// at least `n` lines, and returns them.
    pub fn wait_for_lines(&self, path: &Path, n: usize) -> Vec<serde_json::Value> {
        self.wait_for_lines_until(path, &format!("{n} lines"), |got| got.len() >= n)
    }

    /// Waits until the JSON-lines file `path` holds lines for which `done`
    /// is true, and returns them. For QoS 1 flows that may redeliver, where
    /// a line count says nothing about which messages arrived.
    pub fn wait_for_lines_until(
        &self,
        path: &Path,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = json_lines(path);
            if done(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} never held {what}; it has {} lines\n--- weir log ---\n{}",
                path.display(),
                got.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` on weir's HTTP endpoint (its address read from the log):
    /// the status code and the body.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let log = self.log();
        let addr = log
            .lines()
            .find(|l| l.contains("Serving /metrics"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no HTTP address in the log:\n{log}"))
            .to_owned();
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of one series of `GET /metrics`, written exactly (0 when
    /// absent), e.g. `weir_rule_dropped_total{rule="r",reason="queue_full"}`.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The value of the first series of `GET /metrics` whose line contains
    /// every one of `parts` (0 when none does).
    pub fn metric_matching(&self, parts: &[&str]) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Polls `GET /health` until `check` accepts (status, body as JSON).
    pub fn wait_for_health(&self, what: &str, check: impl Fn(u16, &serde_json::Value) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.http_get("/health");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if check(status, &json) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/health never showed {what}: {status} {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit code and the whole log.
    pub fn terminate(self) -> (i32, String) {
        // SAFETY: kill(2) on the pid of our own child, which has not been
        // reaped yet (it is reaped in `wait_for_exit`).
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.wait_for_exit()
    }

    /// Waits for the process to exit by itself: its exit code (-1 when a
    /// signal ended it) and the whole log.
    pub fn wait_for_exit(mut self) -> (i32, String) {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), self.log());
            }
            assert!(
                Instant::now() < deadline,
                "weir did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The JSON values of a JSON-lines file, one per complete line (none when
/// the file does not exist yet). A last line without its `\n` is still
/// being written, so a poll that catches it waits for the rest.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {l}", path.display()))
        })
        .collect()
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- weir log ---\n{}", self.log());
            }
        }
    }
}
