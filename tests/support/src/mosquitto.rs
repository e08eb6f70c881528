//! A real Mosquitto broker, one per test, on a free loopback port.
//!
//! Owns the broker process, its generated config, its persistence database
//! and its log, all inside one temporary directory that goes away with the
//! [`Mosquitto`]. It never listens on anything but 127.0.0.1 and never uses a
//! fixed port.
//!
//! Persistence is on, so [`Mosquitto::restart`] keeps persistent sessions
//! (clean-session false / session expiry) and the QoS 1 messages queued for
//! them. Mosquitto writes its database every `autosave_interval` seconds and
//! on a clean shutdown; [`Mosquitto::stop`] sends SIGTERM and waits, so
//! nothing accepted before the stop is lost.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pki::Pki;

/// Debian's package installs the broker here.
const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// How long the broker may take to accept connections or to exit.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The port chosen at bind-`:0` time can be taken by someone else before
/// Mosquitto binds it; that race is rare, a few attempts cover it.
const PORT_ATTEMPTS: usize = 5;
/// A restart reuses its port; if something grabbed it meanwhile, keep trying
/// for this long before giving up.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long [`Mosquitto::stop`] waits before repeating its SIGTERM.
const RESEND_SIGTERM: Duration = Duration::from_secs(1);

/// A running (or stopped) Mosquitto broker owned by one test.
///
/// Dropping it kills the broker. If the thread is panicking (a failed test),
/// the broker's log is printed to stderr first.
pub struct Mosquitto {
    dir: tempfile::TempDir,
    port: u16,
    /// The TLS listener's port and certificates, when the options ask for it.
    tls: Option<(u16, Pki)>,
    child: Option<Child>,
    options: MosquittoOptions,
}

/// Broker settings that differ from the defaults [`Mosquitto::start`] uses.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct MosquittoOptions {
    /// Mosquitto's `max_inflight_messages`: QoS 1/2 messages the broker
    /// sends to one client before it waits for their acknowledgements.
    /// `None` keeps Mosquitto's default (20); `Some(0)` means no limit.
    pub max_inflight_messages: Option<u16>,
    /// A second listener speaking MQTT over TLS with certificates from a
    /// fresh test CA ([`Mosquitto::tls_url`], [`Mosquitto::pki`]); it
    /// requires a client certificate signed by that CA.
    pub tls: bool,
}

impl MosquittoOptions {
    /// Sets [`tls`](Self::tls).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Sets [`max_inflight_messages`](Self::max_inflight_messages).
    pub fn max_inflight_messages(mut self, n: u16) -> Self {
        self.max_inflight_messages = Some(n);
        self
    }
}

impl Mosquitto {
    /// Starts a broker on 127.0.0.1 and a free port and waits until it
    /// accepts connections.
    ///
    /// # Panics
    ///
    /// When `mosquitto` is missing or does not come up; the message holds its
    /// log.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(MosquittoOptions::default())
    }

    /// [`start`](Self::start) with non-default broker settings.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_with(options: MosquittoOptions) -> Mosquitto {
        let dir = tempfile::Builder::new()
            .prefix("weir-mosquitto-")
            .tempdir()
            .expect("create a temporary directory for mosquitto");
        let tls = options
            .tls
            .then(|| (0, Pki::generate(dir.path(), "mosquitto")));
        let mut broker = Mosquitto {
            dir,
            port: 0,
            tls,
            child: None,
            options,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            broker.port = free_port();
            if let Some((port, _)) = &mut broker.tls {
                *port = free_port();
            }
            match broker.launch() {
                Ok(()) => return broker,
                Err(Launch::PortTaken) if attempt < PORT_ATTEMPTS => continue,
                Err(failure) => broker.fail(&failure),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The port the broker listens on (stays the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// `mqtts://127.0.0.1:<tls port>` of the TLS listener.
    ///
    /// # Panics
    ///
    /// When the broker was started without [`MosquittoOptions::tls`].
    pub fn tls_url(&self) -> String {
        let (port, _) = self
            .tls
            .as_ref()
            .expect("started with MosquittoOptions::tls");
        format!("mqtts://127.0.0.1:{port}")
    }

    /// The certificates of the TLS listener and of a client it accepts.
    ///
    /// # Panics
    ///
    /// When the broker was started without [`MosquittoOptions::tls`].
    pub fn pki(&self) -> &Pki {
        let (_, pki) = self
            .tls
            .as_ref()
            .expect("started with MosquittoOptions::tls");
        pki
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The directory holding the config, the database and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the broker process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// What the broker logged so far (its log file, then anything it wrote
    /// to stdout/stderr, where config errors go).
    pub fn log(&self) -> String {
        let mut log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let output = fs::read_to_string(self.output_path()).unwrap_or_default();
        if !output.trim().is_empty() {
            log.push_str("--- stdout/stderr ---\n");
            log.push_str(&output);
        }
        log
    }

    /// Stops the broker cleanly (SIGTERM, then waits for it to exit), so it
    /// saves its persistence database. Does nothing if it is not running.
    ///
    /// # Panics
    ///
    /// When the broker does not exit within 10 s (it is then killed).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: `kill` has no memory-safety preconditions; `pid` is our own
        // child, which has not been reaped yet (we hold its `Child`), so the
        // pid cannot have been reused by another process.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "send SIGTERM to mosquitto");
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        let mut resend = Instant::now() + RESEND_SIGTERM;
        loop {
            match child.try_wait().expect("wait for mosquitto") {
                Some(_) => return,
                // A SIGTERM that reaches Mosquitto while it is still starting
                // can be lost (seen under load, right after start): repeat it.
                None if Instant::now() >= resend => {
                    // SAFETY: as above; the child is still not reaped.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                    resend = Instant::now() + RESEND_SIGTERM;
                }
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "mosquitto did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM\n{}",
                        self.log()
                    );
                }
                None => std::thread::sleep(POLL_INTERVAL),
            }
        }
    }

    /// Starts a stopped broker again, on the same port, with the same
    /// persistence database. Does nothing if it is running.
    ///
    /// # Panics
    ///
    /// When it does not come up (the port stayed taken for 5 s, or
    /// Mosquitto failed); the message holds its log.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(Launch::PortTaken) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(failure) => self.fail(&failure),
            }
        }
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn output_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.out")
    }

    fn write_config(&self) {
        let dir = self.dir.path().display();
        // `user root`: run as root (CI containers), Mosquitto would otherwise
        // switch to the `mosquitto` user, which cannot write our temporary
        // directory. Ignored when not started as root.
        // `max_queued_messages`: tests queue far more for offline persistent
        // sessions than the default 1000; a dropped message would look like
        // a weir bug. `max_inflight_messages` stays at its default (20), as
        // on a real deployment, unless the options set it.
        let mut config = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             user root\n\
             persistence true\n\
             persistence_location {dir}/\n\
             autosave_interval 1\n\
             max_queued_messages 1000000\n\
             set_tcp_nodelay true\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n\
             connection_messages true\n\
             log_timestamp_format %H:%M:%S\n",
            port = self.port,
        );
        if let Some(n) = self.options.max_inflight_messages {
            config.push_str(&format!("max_inflight_messages {n}\n"));
        }
        if let Some((port, pki)) = &self.tls {
            config.push_str(&format!(
                "listener {port} 127.0.0.1\n\
                 cafile {ca}\n\
                 certfile {cert}\n\
                 keyfile {key}\n\
                 require_certificate true\n",
                ca = pki.ca_file.display(),
                cert = pki.server_cert.display(),
                key = pki.server_key.display(),
            ));
        }
        fs::write(self.config_path(), config).expect("write mosquitto.conf");
    }

    fn launch(&mut self) -> Result<(), Launch> {
        self.write_config();
        let output = File::options()
            .create(true)
            .append(true)
            .open(self.output_path())
            .expect("open mosquitto.out");
        let mut child = match Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone mosquitto.out"))
            .stderr(output)
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Launch::Failed(format!(
                    "{MOSQUITTO} not found: install the Debian package `mosquitto`"
                )));
            }
            Err(e) => return Err(Launch::Failed(format!("spawn {MOSQUITTO}: {e}"))),
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for mosquitto") {
                return Err(if self.log().contains("Address already in use") {
                    Launch::PortTaken
                } else {
                    Launch::Failed(format!("mosquitto exited at startup ({status})"))
                });
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Launch::Failed(format!(
                    "mosquitto did not accept connections on port {} within {STARTUP_TIMEOUT:?}",
                    self.port
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn fail(&self, failure: &Launch) -> ! {
        let reason = match failure {
            Launch::PortTaken => format!("port {} stayed in use", self.port),
            Launch::Failed(reason) => reason.clone(),
        };
        panic!(
            "{reason}\n--- mosquitto log ({}) ---\n{}",
            self.dir.path().display(),
            self.log()
        );
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- mosquitto log (port {}) ---\n{}", self.port, self.log());
        }
    }
}

enum Launch {
    PortTaken,
    Failed(String),
}

/// A port that was free a moment ago: bind `:0`, read the port, release it.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
