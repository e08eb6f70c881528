//! {{name}}: a weir flat-map. One message per element of `readings`, on
//! topic <topic>/<index>, with payload {"temp": element}.

use serde_json::{Value, json};
use weir_sdk::{Message, Output, Result};

#[weir_sdk::flat_map]
fn split(msg: &Message) -> Result<Vec<Output>> {
    let Value::Array(readings) = msg.get_value("readings")? else {
        return Err("\"readings\" is not an array".into());
    };
    Ok(readings
        .iter()
        .enumerate()
        .map(|(i, temp)| {
            Output::new()
                .topic(format!("{}/{i}", msg.topic()))
                .json(&json!({ "temp": temp }))
        })
        .collect())
}
