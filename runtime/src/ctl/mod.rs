//! The control plane: a Unix socket speaking newline-delimited JSON, and
//! its client `molt ctl`. The protocol is documented in `docs/control.md`.
//!
//! Built on the core (registry, runtime); the core never imports it.

pub mod admin;
pub mod client;
mod clients;
pub mod server;
pub mod status;
pub mod upgrade;

pub use admin::AdminServer;
pub use server::{ConfigSource, ControlServer};
pub use upgrade::{Joiner, Upgrader};
