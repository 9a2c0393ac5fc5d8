//! Dynamic libraries, through libloading's Unix layer.

use std::ffi::c_void;
use std::path::Path;

use libloading::os::unix::{Library as RawLibrary, RTLD_LOCAL, RTLD_NOW};

/// An open shared library. Closing is explicit ([`Library::close`]) so that
/// the caller decides when (never on the library's own stack); dropping an
/// unclosed one closes it too.
#[derive(Debug)]
pub struct Library {
    raw: RawLibrary,
}

impl Library {
    /// `dlopen(path, RTLD_NOW | RTLD_LOCAL)`: every symbol resolved now (a
    /// missing one fails here, not mid-request), none leaked to later loads.
    pub fn open(path: &Path) -> Result<Library, String> {
        // SAFETY: opening a library runs its constructors. molt's ABI forbids
        // constructor work (header rule 1), and the file is a private copy
        // that passed the loader's checks; that is the invariant we rely on.
        let raw = unsafe { RawLibrary::open(Some(path), RTLD_NOW | RTLD_LOCAL) };
        raw.map(|raw| Library { raw }).map_err(|e| e.to_string())
    }

    /// The address of symbol `name` (NUL-terminated), if the library exports it.
    pub fn symbol(&self, name: &[u8]) -> Option<*mut c_void> {
        // SAFETY: we read the symbol as an untyped address and never call it
        // here; the caller casts it to the type the ABI defines for that name.
        let sym = unsafe { self.raw.get::<*mut c_void>(name) }.ok()?;
        Some(*sym)
    }

    /// `dlclose`. The library may stay mapped (see [`super::maps`]).
    pub fn close(self) -> Result<(), String> {
        self.raw.close().map_err(|e| e.to_string())
    }
}
