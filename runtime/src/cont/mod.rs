//! Continuations: ids, slots, and the plugin context.

pub mod context;
pub mod id;
pub(crate) mod slab;

pub use slab::SlotTable;
