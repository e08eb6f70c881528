//! `tag-v1` / `tag-v2` (one source, two packages): a map that adds
//! `"tag": "<package name>"` to each JSON object payload, so a hot-reload
//! test can tell which version processed each message.

use weir_sdk::{Message, Output, Result};

#[weir_sdk::map]
fn tag(msg: &Message) -> Result<Output> {
    let mut payload = msg.json()?.clone();
    let object = payload
        .as_object_mut()
        .ok_or("the payload is not a JSON object")?;
    object.insert("tag".into(), env!("CARGO_PKG_NAME").into());
    Ok(Output::new().json(&payload))
}
