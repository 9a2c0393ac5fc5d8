//! HTTP/1.1 for the reverse proxy: message heads and bodies.
//!
//! This layer parses untrusted bytes and decides what a message's body is;
//! it allocates nothing per byte of body and never buffers a body whole.
//! The proxy's connection handling, routes and module hooks build on it.

pub mod chunked;
pub mod head;
mod proxy;
pub mod site;
pub mod txn;

pub use proxy::{BODY_BUF, HttpLayer, HttpStats};
pub use site::{HttpLimits, HttpRoute, HttpSite};
