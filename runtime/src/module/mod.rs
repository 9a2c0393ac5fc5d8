//! Modules: loading runtime copies, the handshake, and loaded versions.
//!
//! A [`Loader`] turns a module file into a [`ModuleVersion`]: it checks the
//! file, copies it to `<run_dir>/versions/<uuid>/`, opens the copy with
//! `RTLD_NOW | RTLD_LOCAL`, runs the handshake both ways and `init`, and
//! refuses with a [`LoadError`] that says in words what is wrong.

mod error;
mod loader;
pub mod quiet;
pub mod registry;
pub mod retire;
mod version;

pub use error::{CallError, LoadError};
pub(crate) use loader::next_version_id;
pub use loader::{Loader, ModuleSpec};
pub use version::{Callbacks, Holders, ModuleMeta, ModuleVersion, UnloadReport, event};

/// A counted reference to a loaded module version: continuations, timers
/// and generations each hold one; the last release hands the version to the
/// reaper, which unloads it from the loop (see [`retire`]).
pub type VersionRef = crate::sync::Arc<retire::Retiring<ModuleVersion>>;

/// The identity of one loaded module version, unique for the process's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(pub u64);

impl std::fmt::Display for VersionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v#{}", self.0)
    }
}
