//! Module files: ELF sniffing, ownership and mode checks, private copies.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfKind {
    /// An ELF shared object (`ET_DYN`): what a module must be.
    SharedObject,
    /// An ELF file of another type (`e_type`): 1 relocatable, 2 executable, 4 core.
    OtherElf(u16),
    /// Not ELF at all.
    NotElf,
    /// Shorter than an ELF header.
    TooShort,
}

/// Read the ELF identification and type of `path`.
pub fn elf_kind(path: &Path) -> io::Result<ElfKind> {
    let mut head = [0u8; 18];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    if n >= 4 && &head[..4] != b"\x7fELF" {
        return Ok(ElfKind::NotElf);
    }
    if n < head.len() {
        return Ok(ElfKind::TooShort);
    }
    // e_ident[EI_DATA] (byte 5): 1 little-endian, 2 big-endian.
    let e_type =
        if head[5] == 2 { u16::from_be_bytes([head[16], head[17]]) } else { u16::from_le_bytes([head[16], head[17]]) };
    Ok(if e_type == 3 { ElfKind::SharedObject } else { ElfKind::OtherElf(e_type) })
}

/// The facts about a module file the loader's policy needs.
#[derive(Debug, Clone, Copy)]
pub struct FileFacts {
    /// A regular file (not a directory, device, ...), after following links.
    pub regular: bool,
    /// The owner's uid.
    pub uid: u32,
    /// The permission bits.
    pub mode: u32,
}

/// Stat `path` (following symlinks, as dlopen would).
pub fn facts(path: &Path) -> io::Result<FileFacts> {
    let m = fs::metadata(path)?;
    Ok(FileFacts { regular: m.is_file(), uid: m.uid(), mode: m.mode() & 0o7777 })
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Copy `src` into a new private directory `<versions>/<id>/` (mode 0700)
/// under its own file name, and return the copy's path. dlopen caches by
/// path, so every loaded version gets a path of its own.
pub fn private_copy(src: &Path, versions: &Path, id: &str) -> io::Result<PathBuf> {
    let dir = versions.join(id);
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    let name = src.file_name().ok_or_else(|| io::Error::other("module path has no file name"))?;
    let dst = dir.join(name);
    fs::copy(src, &dst)?;
    Ok(dst)
}

/// Remove a private copy and its directory.
pub fn remove_copy(copy: &Path) -> io::Result<()> {
    match copy.parent() {
        Some(dir) => fs::remove_dir_all(dir),
        None => fs::remove_file(copy),
    }
}
