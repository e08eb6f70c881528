//! {{name}}: a weir map. Adds `hot` (temp >= min) to each JSON payload.

use serde::Deserialize;
use serde_json::Value;
use weir_sdk::{Message, Output, Result};

/// The plugin's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    min: f64,
}

#[weir_sdk::map(describe(min = "Temperature from which a reading is hot."))]
fn convert(msg: &Message, cfg: &Config) -> Result<Output> {
    let hot = msg.get_f64("temp")? >= cfg.min;
    let mut payload = msg.json()?.clone();
    let Value::Object(fields) = &mut payload else {
        return Err("the payload is not a JSON object".into());
    };
    fields.insert("hot".into(), Value::Bool(hot));
    Ok(Output::new().json(&payload))
}
