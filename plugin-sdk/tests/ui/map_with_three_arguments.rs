use weir_sdk::{Message, NoConfig, Output, Result};

#[weir_sdk::map]
fn rename(msg: &Message, cfg: &NoConfig, extra: u32) -> Result<Output> {
    let _ = (msg, cfg, extra);
    Ok(Output::new())
}

fn main() {}
