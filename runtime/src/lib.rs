//! molt-runtime: the runtime that loads handler modules and swaps them while
//! it serves.
//!
//! The core (`module`, `cont`, `host`) is plain Rust over the [`sys`] layer,
//! which holds everything that touches the OS. See DESIGN.md for the words.
#![deny(missing_docs)]

pub mod bench;
pub mod config;
pub mod cont;
pub mod ctl;
pub mod host;
pub mod http;
pub mod isolate;
pub mod module;
pub mod net;
pub mod runtime;
pub mod state;
pub mod sync;
pub mod sys;
pub mod worker;

pub use runtime::{Runtime, RuntimeConfig};
