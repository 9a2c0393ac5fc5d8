//! Modules: loading runtime copies, the handshake, and loaded versions.
//!
//! A [`Loader`] turns a module file into a [`ModuleVersion`]: it checks the
//! file, copies it to `<run_dir>/versions/<uuid>/`, opens the copy with
//! `RTLD_NOW | RTLD_LOCAL`, runs the handshake both ways and `init`, and
//! refuses with a [`LoadError`] that says in words what is wrong.

mod error;
pub mod lifecycle;
mod loader;
pub mod registry;
pub mod reload;
pub mod retire;
pub mod spec;
mod version;

pub use error::{CallError, LoadError};
pub use lifecycle::Stage;
pub(crate) use loader::next_version_id;
pub use loader::{Loader, ModuleSpec};
pub use reload::VersionRecord;
pub use spec::{FailurePolicy, ModuleConfig, SwapMode};

pub use crate::cont::VersionId;
pub use crate::host::quiet;
pub use version::{Holders, ModuleVersion, UnloadReport, event};

pub use crate::host::{Callbacks, ModuleMeta};

/// A counted reference to a loaded module version: continuations, timers
/// and generations each hold one; the last release hands the version to the
/// reaper, which unloads it from the loop (see [`retire`]).
pub type VersionRef = crate::sync::Arc<retire::Retiring<ModuleVersion>>;
