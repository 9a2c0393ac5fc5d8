//! What the host knows of a loaded module version: its descriptor's
//! identity, capabilities and callbacks, and where its copy lives. The
//! loader fills it in; every host function reads it through the call's frame.

use std::ffi::c_void;
use std::path::PathBuf;

use molt_abi::ffi::*;

use crate::cont::VersionId;

/// A module's callbacks, copied out of its descriptor at load.
#[derive(Debug, Clone, Copy)]
pub struct Callbacks {
    /// Required.
    pub init: unsafe extern "C" fn(*const molt_ctx, *const molt_init_args, *mut *mut c_void) -> molt_status,
    /// Required.
    pub handle_event: molt_handler_fn,
    /// Optional.
    pub migrate: Option<unsafe extern "C" fn(*const molt_ctx, *const molt_migration) -> molt_status>,
    /// Optional.
    pub adopt: Option<
        unsafe extern "C" fn(
            *const molt_ctx,
            *mut c_void,
            u32,
            *mut *mut c_void,
            *mut Option<molt_handler_fn>,
        ) -> molt_status,
    >,
    /// Optional.
    pub drain: Option<unsafe extern "C" fn(*const molt_ctx) -> molt_status>,
    /// Optional.
    pub fini: Option<unsafe extern "C" fn(*const molt_ctx)>,
}

/// What is known about a loaded module version.
#[derive(Debug, Clone)]
pub struct ModuleMeta {
    /// Process-unique id.
    pub id: VersionId,
    /// The module's name.
    pub name: String,
    /// Its version string.
    pub version: String,
    /// Its version number.
    pub version_number: u32,
    /// Its state schema version.
    pub state_schema: u32,
    /// `MOLT_MODULE_*` flags.
    pub flags: u32,
    /// `MOLT_HOST_CAP_*` it requires.
    pub required_host_caps: u64,
    /// `MOLT_MOD_CAP_*` it offers.
    pub module_caps: u64,
    /// The file the config names.
    pub source: PathBuf,
    /// The private runtime copy it was loaded from.
    pub copy: PathBuf,
    /// The sha256 of the bytes loaded (those of the private copy).
    pub sha256: String,
    /// Its callbacks (valid while its library is loaded).
    pub callbacks: Callbacks,
    /// The HTTP hook events it declared in init (`MOLT_HOOK_*`); 0: every one.
    pub http_hooks: u64,
}
