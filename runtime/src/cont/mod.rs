//! Continuations: ids, slots, and the plugin context.

pub mod context;
pub mod id;
pub(crate) mod slab;

pub use context::VersionId;
pub use slab::SlotTable;
