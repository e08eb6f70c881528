//! `conf-map`, the conformance map (same semantics in every language, see
//! `tests/conformance/README.md`): `temp` must be an integer; the output's
//! topic is `<prefix>/<topic>`, its payload `{"temp_x10": temp * 10, "hot":
//! temp >= 30}`, and its fields the input's plus `unit = "dC"`.

use serde::Deserialize;
use serde_json::json;
use weir_sdk::{Message, Output, Result};

/// The config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Prepended to the topic.
    prefix: String,
}

#[weir_sdk::map(describe(prefix = "Prepended to the topic, with a /."))]
fn conf_map(msg: &Message, cfg: &Config) -> Result<Output> {
    let temp = msg.get_i64("temp")?;
    let fields = msg
        .fields()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain([("unit".to_owned(), "dC".to_owned())]);
    Ok(Output::new()
        .topic(format!("{}/{}", cfg.prefix, msg.topic()))
        .json(&json!({"temp_x10": temp * 10, "hot": temp >= 30}))
        .fields(fields))
}
