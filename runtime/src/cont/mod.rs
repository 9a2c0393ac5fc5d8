//! Continuations and the plugin context.

pub mod context;
