use weir_sdk::{Message, Result};

#[weir_sdk::filter]
async fn keep(msg: &Message) -> Result<bool> {
    Ok(!msg.payload().is_empty())
}

fn main() {}
