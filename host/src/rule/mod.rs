//! Rules: topic filters with named captures, and routing messages to rules.

mod filter;
mod router;

pub use filter::*;
pub use router::{Router, subscriptions};
