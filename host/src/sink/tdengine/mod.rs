//! The `tdengine` sink: writes to TDengine (or TDengine Cloud) through the
//! official `taos` crate over WebSocket — no C library.
//!
//! # Wire behaviour
//!
//! The crate speaks taosAdapter's `/ws` protocol: `version`, `conn`
//! (user/password from the DSN; TDengine Cloud's `?token=` goes on the
//! upgrade URL), then one `query` per statement — binary action 6 when the
//! server reports 3.3.0.8 or later, the JSON `query` action before that —
//! and `insert` for schemaless writes. See `shared/reference/tdengine.md`.
//!
//! - **SQL mode** (default): the `sql` template is an `INSERT INTO`
//!   statement (EMQX's). The table name renders as an identifier (letters,
//!   digits, `_`; anything else fails the message), everything after it as
//!   SQL values ([`crate::template::Template::render_sql`]: strings quoted
//!   and escaped, numbers and booleans as literals, missing values `NULL`
//!   with `undefined_vars_as_null`). A batch becomes multi-table, multi-row
//!   statements — rows of one table share one `VALUES` clause — and a new
//!   statement starts before one would pass 1 MiB. The super-table options
//!   (`stable`, `table`, `tags`, `values`) build the `USING … TAGS` form.
//! - **Line mode** (`mode = "line"`): InfluxDB line protocol from
//!   `measurement`, `tags` and `fields` templates, written with the crate's
//!   schemaless `put`, precision `ms` or `ns` (its `us` is broken, see the
//!   reference §1.4, and is refused by validation).
//!
//! # Around the crate
//!
//! taos 0.12.3 has no timeouts and never reconnects, so every call here is
//! bounded by `timeout`, and a timeout or a transport error (client codes
//! `0xE001`–`0xE005`) drops the connection: the next write builds a new one.
//! Errors are classified by code ([`sink::class_of`], reference §7):
//! retryable (network, sync timeout, leader changes, busy), fixable
//! (database or table missing: the `auto_create` statements run, then the
//! statement once more) or permanent (syntax, auth, out-of-range timestamp:
//! the driver bisects the batch and dead-letters only the bad rows).
//! A batch split into several statements: when one fails for a reason in
//! its rows, its messages are retried as a batch of their own (where the
//! driver bisects them) and the statements after it still run; when the
//! service is unwell, that statement and the rest are retried later.
//! Rewriting a row TDengine already has replaces it (same table and
//! timestamp), so a batch resent after a lost reply writes nothing twice.
//!
//! At start-up the sink connects and runs `select server_version()`: a wrong
//! password or token stops `weir run` with a clear error instead of a
//! retry loop; an unreachable server only logs a warning (writes retry).
//! The same check runs every `health_check_interval` for `/health`.
//!
//! What this sink must never do: log the DSN (it may hold a password or a
//! token; [`TdengineSettings::shown`] is the printable form), or block a
//! write without a timeout.

mod config;
mod encode;
mod sink;

pub use config::{TdengineMode, TdengineSettings, shown_dsn};
pub use encode::{
    Encoder, LineTemplate, MAX_STATEMENT_BYTES, Request, SqlTemplate, SqlTemplateError, Statement,
};
pub use sink::{Class, TdError, TdengineSink, class_of};
