//! The sink's resolved settings.

use std::time::Duration;

use super::encode::{Encoder, LineTemplate, MAX_STATEMENT_BYTES, SqlTemplate};
use crate::config::{DriverConfig, Secret};

/// What the sink writes: SQL statements or schemaless lines.
#[derive(Clone, Debug)]
pub enum TdengineMode {
    /// `mode = "sql"`: an INSERT template (or the super-table options).
    Sql(SqlTemplate),
    /// `mode = "line"`: InfluxDB line protocol through schemaless writes.
    Line(LineTemplate),
}

/// Everything the TDengine sink needs.
#[derive(Clone, Debug)]
pub struct TdengineSettings {
    /// The sink's name, for logs.
    pub name: String,
    /// `ws://…`, `wss://…` or `wss://host?token=…` (a secret: it may hold
    /// a password or token, and is never logged).
    pub dsn: Secret,
    /// The DSN without credentials, for logs and errors.
    pub shown: String,
    /// How messages become requests.
    pub encoder: Encoder,
    /// Statements run when a database or table is missing, before the
    /// failed statement is tried again.
    pub auto_create: Vec<String>,
    /// Bound of every call into the `taos` crate.
    pub timeout: Duration,
    /// How often the background health check runs.
    pub health_check_interval: Duration,
}

impl TdengineSettings {
    /// Settings from the resolved config.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site, each argument named by the config"
    )]
    pub fn new(
        name: &str,
        dsn: &Secret,
        mode: &TdengineMode,
        auto_create: &[String],
        timeout: Duration,
        health_check_interval: Duration,
        driver: &DriverConfig,
    ) -> TdengineSettings {
        let encoder = match mode {
            TdengineMode::Sql(template) => Encoder::Sql {
                template: template.clone(),
                null_undefined: driver.undefined_vars_as_null,
                max_bytes: MAX_STATEMENT_BYTES,
            },
            TdengineMode::Line(template) => Encoder::Line {
                template: template.clone(),
                null_undefined: driver.undefined_vars_as_null,
                max_bytes: MAX_STATEMENT_BYTES,
            },
        };
        TdengineSettings {
            name: name.to_owned(),
            shown: shown_dsn(dsn.expose()),
            dsn: dsn.clone(),
            encoder,
            auto_create: auto_create.to_vec(),
            timeout,
            health_check_interval,
        }
    }
}

/// A DSN with its password and query (token) removed.
pub fn shown_dsn(dsn: &str) -> String {
    let without_query = dsn.split('?').next().unwrap_or("");
    match without_query.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{host}")
        }
        None => "<dsn>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shown_dsn_holds_no_password_and_no_token() {
        assert_eq!(shown_dsn("ws://root:secret@h:6041/db"), "ws://h:6041/db");
        assert_eq!(
            shown_dsn("wss://gw.cloud.tdengine.com?token=abc"),
            "wss://gw.cloud.tdengine.com"
        );
    }
}
