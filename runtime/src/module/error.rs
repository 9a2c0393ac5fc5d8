//! Errors of loading and calling modules.

use std::path::PathBuf;

use molt_abi::Status;

/// Why a module file was refused. Every message names the file or module,
/// says what is wrong, and what to do. Whose fault: the module's (or its
/// build's), except [`LoadError::Io`], which is the runtime's environment.
/// What the runtime did: nothing of the module stays loaded or initialised,
/// and its private copy is removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file does not exist.
    #[error("module file {path}: not found; check the module's path (in the config, or as given on the command line)")]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a regular file.
    #[error("module file {path}: not a regular file (a {kind}); point the config at the .so itself")]
    NotRegularFile {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The file is cut short, inconsistent, or changed while it was read.
    #[error(
        "module file {path}: {why}; install a module whole (write a new file, then rename it over the old one) and reload"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The bytes read do not have the sha256 the config pins.
    #[error(
        "module file {path}: its bytes have sha256 {actual}, but the config pins {expected}; fix the pin or the file"
    )]
    PinMismatch {
        /// The file.
        path: PathBuf,
        /// The pin.
        expected: String,
        /// The bytes' hash.
        actual: String,
    },
    /// The descriptor names another module than the config (checked before init).
    #[error(
        "module file {path}: the library is module {found:?}, not {expected:?}; point the config at the right file"
    )]
    NameMismatch {
        /// The file.
        path: PathBuf,
        /// The name the config gives.
        expected: String,
        /// The name in the descriptor.
        found: String,
    },
    /// The file's owner or mode is unsafe to load code from.
    #[error("module file {path}: {why}; fix its owner or mode (chown, chmod go-w) before loading it")]
    UnsafeFile {
        /// The file.
        path: PathBuf,
        /// Which rule it breaks.
        why: String,
    },
    /// The file is not an ELF shared object.
    #[error("module file {path}: not a shared library ({why}); build the module as a cdylib or with -shared")]
    NotSharedLibrary {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        why: String,
    },
    /// The dynamic loader refused the file.
    #[error("module file {path}: the dynamic loader refused it: {dlerror}")]
    Open {
        /// The file.
        path: PathBuf,
        /// dlerror's text.
        dlerror: String,
    },
    /// The library does not export the entry symbol.
    #[error(
        "module file {path}: no entry symbol molt_module_entry_v1; a molt module exports it (molt_module! in Rust, MOLT_EXPORT in C); `nm -D --defined-only` lists what it exports"
    )]
    NoEntry {
        /// The file.
        path: PathBuf,
    },
    /// The entry returned a failure.
    #[error("module file {path}: molt_module_entry_v1 refused this host with {}: {text}", Status::describe(*.status))]
    EntryRefused {
        /// The file.
        path: PathBuf,
        /// The returned status.
        status: i32,
        /// The text it wrote into errbuf.
        text: String,
    },
    /// The entry returned no descriptor.
    #[error("module file {path}: molt_module_entry_v1 returned MOLT_OK but no descriptor")]
    NoDescriptor {
        /// The file.
        path: PathBuf,
    },
    /// The descriptor's ABI major is not ours.
    #[error(
        "module file {path}: built for molt ABI major {found} (expected {expected}); rebuild it against this host's molt.h"
    )]
    AbiMajor {
        /// The file.
        path: PathBuf,
        /// The major the descriptor claims.
        found: u16,
        /// The host's major.
        expected: u16,
    },
    /// The descriptor is smaller than ABI 1.0's.
    #[error(
        "module file {path}: descriptor too small: {size} bytes, ABI {major}.0 needs at least {need}; it was not built against molt.h"
    )]
    DescriptorTooSmall {
        /// The file.
        path: PathBuf,
        /// The size it claims.
        size: u32,
        /// The minimum.
        need: usize,
        /// The ABI major.
        major: u16,
    },
    /// The module requires host capabilities this host lacks.
    #[error(
        "module {module} ({path}): missing capability {missing}: this host does not provide it; use a newer molt or build the module without it"
    )]
    MissingCapability {
        /// The file.
        path: PathBuf,
        /// The module name.
        module: String,
        /// The missing capabilities, named.
        missing: String,
    },
    /// A required callback is absent, or the descriptor is malformed.
    #[error("module file {path}: invalid descriptor: {why}")]
    BadDescriptor {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// init returned a failure.
    #[error("module {module} {version} ({path}): init returned {}: {text}", Status::describe(*.status))]
    InitFailed {
        /// The file.
        path: PathBuf,
        /// The module name.
        module: String,
        /// Its version.
        version: String,
        /// The status.
        status: i32,
        /// The error text it handed over.
        text: String,
    },
    /// init panicked (caught by the SDK).
    #[error("module {module} {version} ({path}): init panicked: {text}")]
    InitPanicked {
        /// The file.
        path: PathBuf,
        /// The module name.
        module: String,
        /// Its version.
        version: String,
        /// The panic's text.
        text: String,
    },
    /// The runtime could not read or copy the file.
    #[error("module file {path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the runtime was doing.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A call into a module that returned a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("module {module} {version}: {callback} returned {}: {text}", Status::describe(*.status))]
pub struct CallError {
    /// The module.
    pub module: String,
    /// Its version.
    pub version: String,
    /// Which callback.
    pub callback: &'static str,
    /// The returned status.
    pub status: i32,
    /// The error text the module handed over (or a note that it gave none).
    pub text: String,
}

impl CallError {
    /// Whether the module panicked (the SDK caught it).
    pub fn panicked(&self) -> bool {
        self.status == Status::Panic.raw()
    }
}
