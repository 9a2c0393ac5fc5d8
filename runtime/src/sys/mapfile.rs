//! Files mapped shared and locked: what the state region stands on.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use memmap2::MmapRaw;

/// Why a file could not be opened for mapping.
#[derive(Debug)]
pub enum OpenError {
    /// The path is a symbolic link (never followed).
    Symlink,
    /// Any other failure.
    Io(std::io::Error),
}

/// Open `path` read-write, never through a symbolic link.
pub fn open_nofollow(path: &Path) -> Result<File, OpenError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => OpenError::Symlink,
            _ => OpenError::Io(e),
        })
}

/// Create `path` (it must not exist) with mode `mode`, never through a link.
pub fn create_new_nofollow(path: &Path, mode: u32) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Take `file`'s exclusive advisory lock without waiting: `Ok(false)` when
/// another open file description holds it.
pub fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Map all of `file` shared (writes reach the file's pages).
pub fn map_shared(file: &File) -> std::io::Result<MmapRaw> {
    MmapRaw::map_raw(file)
}

/// Map `len` bytes of anonymous memory.
pub fn map_anon(len: usize) -> std::io::Result<MmapRaw> {
    memmap2::MmapMut::map_anon(len).map(MmapRaw::from)
}
