//! `tag-refuse`: a filter whose `init` refuses every config, so a hot
//! reload to it must keep the running version.

use weir_sdk::{Emitter, Kind, Message, NoConfig, Result, Transform};

/// Never built: `init` refuses.
struct Refuse;

impl Transform for Refuse {
    type Config = NoConfig;
    const KIND: Kind = Kind::Filter;

    fn init(_: NoConfig) -> Result<Self> {
        Err("this build refuses every config (tag-refuse test guest)".into())
    }

    fn process(&mut self, _: &Message, out: &mut Emitter) -> Result<()> {
        out.pass();
        Ok(())
    }
}

weir_sdk::export!(Refuse);
