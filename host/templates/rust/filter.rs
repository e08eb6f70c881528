//! {{name}}: a weir filter. Keeps a message when its payload's `temp` is at
//! least `min`; a payload without a numeric `temp` fails that message only.

use serde::Deserialize;
use weir_sdk::{Message, Result};

/// The plugin's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    min: f64,
}

#[weir_sdk::filter(describe(min = "Lowest temperature kept."))]
fn keep(msg: &Message, cfg: &Config) -> Result<bool> {
    Ok(msg.get_f64("temp")? >= cfg.min)
}
