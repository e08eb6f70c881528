//! A taosAdapter stand-in for weir's TDengine tests: the real `/ws`
//! WebSocket protocol of taosAdapter (see `shared/reference/tdengine.md`
//! §2), over a small in-memory TDengine that stores what it is sent.
//!
//! # What it speaks
//!
//! - `GET /ws` upgrade only (anything else is 404); `?token=` checked when
//!   the server has a token (a wrong one is refused with 401, which the
//!   client reports as `0xE006`).
//! - Text actions `version`, `conn` (user/password; `855 Authentication
//!   failure`; `duplicate connections`; `server not connected`), `query`,
//!   `fetch`, `fetch_block` (binary reply: timing, id, raw block),
//!   `free_result` (never answered), schemaless `insert` (line protocol).
//! - Binary action 6 (query, answered as `binary_query` JSON) and 7 (fetch a
//!   raw block, answered in the binary layout of §2.5).
//! - Which path the official client takes depends on the version reported:
//!   [`Options::version`] `3.3.0.0` gives the JSON path, `3.3.6.0` the
//!   binary one.
//!
//! # What it stores and refuses
//!
//! [`sql`] runs the statements (CREATE DATABASE/TABLE/STABLE, USE, every
//! INSERT form weir emits, SELECT over what was stored) and refuses the rest
//! with TDengine's codes and messages; statements over 1 MiB get `0x0219`.
//! [`schemaless`] stores line-protocol writes as TDengine does (super table
//! per measurement, child table `t_<md5>` per tag set).
//!
//! # Faults
//!
//! [`TdServer::inject`] queues faults for the next statements that match:
//! a chosen error code, a slow reply, or a dropped TCP connection (with or
//! without applying the statement first).
//!
//! Every statement received is logged ([`TdServer::statements`]) with its
//! size, so tests can check limits and count requests.

pub mod block;
pub mod schemaless;
pub mod sql;
mod ws;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;

pub use sql::{Outcome, Precision, ResultSet, Store, TdError, Type, Value, codes};

/// How a server behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// The version reported to `version` and `conn`: `3.3.0.0` (JSON
    /// path) or `3.3.6.0` (binary path).
    pub version: String,
    /// The user `conn` accepts.
    pub user: String,
    /// Its password.
    pub password: String,
    /// A Cloud token the upgrade must carry as `?token=`; none = any.
    pub token: Option<String>,
}

impl Options {
    /// `root` / `taosdata`, no token, the given version.
    pub fn version(version: &str) -> Self {
        Options {
            version: version.to_owned(),
            user: "root".into(),
            password: "taosdata".into(),
            token: None,
        }
    }
}

/// Which statements a fault applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// Statements starting with `INSERT`.
    Insert,
    /// Schemaless writes.
    Schemaless,
    /// Statements containing this text.
    Containing(String),
}

/// What happens to a matching statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this TDengine error instead of running it.
    Error(TdError),
    /// Run it, but answer only after this long.
    Delay(Duration),
    /// Close the TCP connection without a reply (no Close frame); `applied`
    /// says whether the statement was run first.
    Drop {
        /// Run the statement before dropping the connection.
        applied: bool,
    },
}

/// One statement the server received.
#[derive(Clone, Debug)]
pub struct Logged {
    /// The SQL (or the schemaless lines).
    pub sql: String,
    /// Its length in bytes.
    pub bytes: usize,
    /// Its result code (0 = success).
    pub code: u16,
}

/// Shared server state.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) store: Store,
    pub(crate) faults: Vec<(Match, Fault)>,
    pub(crate) log: Vec<Logged>,
    pub(crate) connections: usize,
}

impl State {
    /// Takes the first queued fault matching `sql`.
    pub(crate) fn take_fault(&mut self, sql: &str, schemaless: bool) -> Option<Fault> {
        let i = self.faults.iter().position(|(m, _)| match m {
            Match::Insert => {
                !schemaless
                    && sql
                        .trim_start()
                        .get(..6)
                        .is_some_and(|s| s.eq_ignore_ascii_case("insert"))
            }
            Match::Schemaless => schemaless,
            Match::Containing(text) => sql.contains(text.as_str()),
        })?;
        Some(self.faults.remove(i).1)
    }
}

/// A running server. Stops when dropped.
pub struct TdServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl TdServer {
    /// Starts a server on 127.0.0.1 and a free port, in the current Tokio
    /// runtime.
    pub async fn start(options: Options) -> TdServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let options = Arc::new(options);
        let task = tokio::spawn(ws::serve(listener, state.clone(), options));
        TdServer { addr, state, task }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://user:password@127.0.0.1:<port>` (DSN of the `taos` crate).
    pub fn dsn(&self, user: &str, password: &str) -> String {
        format!("ws://{user}:{password}@{}", self.addr)
    }

    /// Queues a fault for the next `times` statements matching `on`.
    pub fn inject(&self, on: Match, fault: Fault, times: usize) {
        let mut state = self.state.lock().unwrap();
        for _ in 0..times {
            state.faults.push((on.clone(), fault.clone()));
        }
    }

    /// Runs a statement directly against the store (test set-up).
    pub fn execute(&self, statement: &str) -> Result<Outcome, TdError> {
        let mut state = self.state.lock().unwrap();
        state.store.execute(&mut sql::Session::default(), statement)
    }

    /// Every statement received over the wire, in order.
    pub fn statements(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// WebSocket connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> usize {
        self.state.lock().unwrap().faults.len()
    }
}

impl Drop for TdServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
