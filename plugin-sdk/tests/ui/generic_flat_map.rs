use weir_sdk::{Message, Output, Result};

#[weir_sdk::flat_map]
fn split<C: serde::de::DeserializeOwned>(msg: &Message, cfg: &C) -> Result<Vec<Output>> {
    let _ = (msg, cfg);
    Ok(Vec::new())
}

fn main() {}
