//! HTTP/1.1 for the reverse proxy: message heads and bodies.
//!
//! This layer parses untrusted bytes and decides what a message's body is;
//! it allocates nothing per byte of body and never buffers a body whole.
//! The proxy's connection handling, routes and module hooks build on it.

mod body;
pub mod chunked;
mod client;
pub mod head;
mod hooks;
pub mod isolated;
mod layer;
pub mod site;
mod sock;
mod stage;
pub mod txn;
mod upstream;
mod wire;

pub use hooks::hook_path_bench;
pub use layer::{BODY_BUF, HttpLayer, HttpStats, SitePlan};
pub use site::{HttpLimits, HttpRoute, HttpSite};
