//! `conf-split`, the conformance flat-map: `readings` must be an array; each
//! element becomes one message, its payload the element, its topic
//! `<topic>/<index>`.

use serde_json::Value;
use weir_sdk::{Message, Output, Result};

#[weir_sdk::flat_map]
fn conf_split(msg: &Message) -> Result<Vec<Output>> {
    let Value::Array(readings) = msg.get_value("readings")? else {
        return Err("field \"readings\" is not an array".into());
    };
    Ok(readings
        .iter()
        .enumerate()
        .map(|(i, r)| Output::new().topic(format!("{}/{i}", msg.topic())).json(r))
        .collect())
}
