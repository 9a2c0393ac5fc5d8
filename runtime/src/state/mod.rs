//! The state region: one file (or anonymous memory) mapped shared, holding
//! named, schema-versioned blocks that outlive module code.
//!
//! Crash safety rests on three rules, cited below:
//!
//! 1. The directory is the only metadata (the allocator derives free space
//!    from it). A change is written whole to the inactive copy with a larger
//!    sequence number and a checksum, flushed, and only then used: a crash
//!    at any instant leaves the old copy valid, or the new one.
//! 2. Opening reads with `pread` and validates the superblock and both
//!    copies before mapping anything; it takes the newest valid copy, and
//!    refuses a file with none, without writing a byte.
//! 3. A block being filled by a migration is committed as `MIGRATING`
//!    first, and `LIVE` (its source `RETIRED`) only after the migration
//!    returned and its bytes were flushed: a crash in between reopens with
//!    the old block live and the half-filled one discarded. A new block's
//!    zeroed bytes are flushed before its entry is committed too.
//!
//! Block contents are the modules' (atomics, offsets): the runtime never
//! reads them. Writes to a `MAP_SHARED` file mapping are in the page cache
//! the moment they are made, so a crash of the process loses none of them;
//! surviving a machine crash needs the flush the runtime does on stop.

pub mod format;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::sys;
use crate::sys::mapfile::MmapRaw;
use format::{DATA, DIR_BYTES, DIR0, DIR1, Directory, Entry, F_LIVE, F_MIGRATING, F_RETIRED, PAGE, Superblock};
use molt_abi::ffi::{MOLT_ERR_FAILED, MOLT_ERR_INVALID_ARG, MOLT_ERR_NO_MEMORY, MOLT_ERR_PHASE, molt_status};

use crate::sync::Mutex;

/// Why a state file cannot be used. The file was left as it was.
#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {what}; it was left untouched. {fix}")]
pub struct StateError {
    /// The file (or "anonymous memory").
    pub path: String,
    /// What is wrong.
    pub what: String,
    /// What to do.
    pub fix: &'static str,
}

const FIX_CORRUPT: &str = "Restore it from a backup, or start with --reset-state to discard its contents (a file that no longer begins with molt's magic is not rewritten: remove it by hand).";

/// What [`Region::open_block`] found or made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The block exists with the asked schema.
    Existing {
        /// Handle (the block's offset).
        handle: u64,
        /// Length.
        len: u64,
    },
    /// The block was created, zero-filled.
    Created {
        /// Handle.
        handle: u64,
        /// Length.
        len: u64,
    },
    /// The block exists with another schema: migrate `src` into the new,
    /// zero-filled `dst` (committed as migrating), then
    /// [`Region::commit_migration`] or [`Region::abort_migration`].
    NeedsMigration {
        /// The old block.
        src: u64,
        /// The new block.
        dst: u64,
        /// The old schema.
        from_schema: u32,
        /// Whether the old schema is newer (a rollback: migrate down).
        down: bool,
    },
}

/// A block, for status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockInfo {
    /// The owning module.
    pub owner: String,
    /// The block name.
    pub name: String,
    /// Its schema version.
    pub schema: u32,
    /// Its length in bytes.
    pub len: u64,
    /// `live`, `retired` or `migrating`.
    pub state: &'static str,
}

/// Size, used and free bytes of block space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// The file's size.
    pub size: u64,
    /// Bytes in blocks.
    pub used: u64,
    /// Bytes of block space not in blocks.
    pub free: u64,
}

struct Active {
    dir: Directory,
    copy: usize,
}

/// The mapped region.
pub struct Region {
    map: MmapRaw,
    /// The open file (it holds the advisory lock), if file-backed.
    file: Option<File>,
    path: Option<PathBuf>,
    size: u64,
    active: Mutex<Active>,
    /// What opening had to warn about (an older directory copy was used).
    warning: Option<String>,
    /// Whether this process may commit the directory. During a binary
    /// upgrade two processes map the file; only one of them is the writer
    /// (directory commits never come from two processes), and block
    /// contents, which the modules write with atomics, are shared.
    writer: std::sync::atomic::AtomicBool,
    /// A secondary's way to have a block created (an isolated module's child
    /// asks molt, the file's writer), after which it reads the directory again.
    creator: std::sync::OnceLock<Box<Creator>>,
    /// Every range flushed, in order (the unit tests check the order).
    #[cfg(test)]
    flushed: Mutex<Vec<(u64, u64)>>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region").field("path", &self.path).field("size", &self.size).finish()
    }
}

/// How a secondary region has a missing block created: (owner, name,
/// schema, minimum length) to the writer.
pub type Creator = dyn Fn(&str, &str, u32, u64) -> Result<(), (molt_status, String)> + Send + Sync;

/// The smallest region: header and one page of blocks.
pub const MIN_SIZE: u64 = DATA + PAGE;

fn err(path: &Path, what: impl Into<String>, fix: &'static str) -> StateError {
    StateError { path: path.display().to_string(), what: what.into(), fix }
}

impl Region {
    /// Open (or create, `size` bytes) the state file at `path`; with
    /// `reset`, discard an existing file's contents first.
    pub fn open_file(path: &Path, size: u64, reset: bool) -> Result<Region, StateError> {
        let size = size.max(MIN_SIZE).div_ceil(PAGE) * PAGE;
        if matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
            Self::create_whole(path, size)?;
        }
        // Never through a symlink (molt would write wherever it points).
        let file = sys::mapfile::open_nofollow(path).map_err(|e| match e {
            sys::mapfile::OpenError::Symlink => err(
                path,
                "it is a symbolic link, which molt does not follow for its state",
                "Point state_file at the real file.",
            ),
            sys::mapfile::OpenError::Io(e) => {
                err(path, format!("cannot open it: {e}"), "Check the path and its permissions.")
            }
        })?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(err(path, "it is not a regular file", "Point state_file at a file."));
        }
        match sys::mapfile::try_lock_exclusive(&file) {
            Ok(true) => {}
            Ok(false) => {
                return Err(err(
                    path,
                    "another molt process has it open",
                    "Stop that process, or give this one another state_file.",
                ));
            }
            Err(e) => return Err(err(path, format!("cannot lock it: {e}"), "Check the file system supports flock.")),
        }
        Self::from_locked(file, path, reset.then_some(size), true)
    }

    /// The state file another molt process handed over (a binary upgrade):
    /// the very open file, whose lock it shares, at `path`. It is validated
    /// as at any open; this process is not the writer until
    /// [`Region::take_writer`].
    pub fn open_handed_over(file: File, path: &Path) -> Result<Region, StateError> {
        let same = std::fs::metadata(path).ok().zip(file.metadata().ok()).is_some_and(|(a, b)| {
            use std::os::unix::fs::MetadataExt;
            a.dev() == b.dev() && a.ino() == b.ino()
        });
        if !same {
            return Err(err(
                path,
                "the state file handed over by the running molt is not the file at this path",
                "Give the new process the same state_file as the running one.",
            ));
        }
        match sys::mapfile::try_lock_exclusive(&file) {
            Ok(true) => {}
            _ => return Err(err(path, "the handed-over state file is not locked by its descriptor", "")),
        }
        Self::from_locked(file, path, None, false)
    }

    /// The state file at `path` mapped by a process that is not its writer
    /// and does not hold its lock: an isolated module's child, beside molt,
    /// which holds both. Validated as at any open; blocks it lacks are
    /// created through [`Region::set_creator`].
    pub(crate) fn open_secondary(path: &Path) -> Result<Region, StateError> {
        let file = sys::mapfile::open_nofollow(path).map_err(|e| match e {
            sys::mapfile::OpenError::Symlink => {
                err(path, "it is a symbolic link", "Point state_file at the real file.")
            }
            sys::mapfile::OpenError::Io(e) => err(path, format!("cannot open it: {e}"), ""),
        })?;
        Self::from_locked(file, path, None, false)
    }

    /// Have missing blocks created by `f` (a secondary region).
    pub(crate) fn set_creator(&self, f: Box<Creator>) {
        let _ = self.creator.set(f);
    }

    /// Read the directory again from the file (a secondary, after the
    /// writer changed it).
    fn refresh(&self, a: &mut Active) -> Result<(), (molt_status, String)> {
        let Some(file) = &self.file else { return Ok(()) };
        let mut head = vec![0u8; DATA.min(self.size) as usize];
        file.read_exact_at(&mut head, 0).map_err(|e| (MOLT_ERR_FAILED, format!("state file: cannot read it: {e}")))?;
        let (_, dir, copy) =
            Self::validate(&head, self.size).map_err(|e| (MOLT_ERR_FAILED, format!("state file: {e}")))?;
        *a = Active { dir, copy };
        Ok(())
    }

    /// Open a file this process holds the lock of; `reset`: discard its
    /// contents for an empty region of that size.
    fn from_locked(file: File, path: &Path, reset: Option<u64>, writer: bool) -> Result<Region, StateError> {
        let len = file.metadata().map_err(|e| err(path, format!("cannot stat it: {e}"), ""))?.len();
        if reset.is_some() && len > 0 {
            // --reset-state rewrites molt state files only, never a file the
            // path names by mistake.
            let mut magic = [0u8; 8];
            let ours = file.read_exact_at(&mut magic, 0).is_ok() && magic == format::MAGIC;
            if !ours {
                return Err(err(
                    path,
                    "it is not a molt state file, and --reset-state rewrites only those",
                    "Check state_file; remove the file yourself if it is yours to discard.",
                ));
            }
        }
        if len == 0 && reset.is_none() {
            // Made whole before it is renamed into place, a molt state file
            // is never empty: this one was truncated, or is not ours.
            return Err(err(path, "it is empty, which a molt state file never is (was it truncated?)", FIX_CORRUPT));
        }
        if let Some(size) = reset {
            file.set_len(0)
                .and_then(|()| file.set_len(size))
                .map_err(|e| err(path, format!("cannot size it: {e}"), ""))?;
            Self::format_into(&file, size).map_err(|e| err(path, format!("cannot write it: {e}"), ""))?;
            tracing::info!(path = %path.display(), size, reset = true, "state file created");
        }
        let len = file.metadata().map_err(|e| err(path, format!("cannot stat it: {e}"), ""))?.len();
        // Rule 2: validate with pread before mapping.
        let mut head = vec![0u8; DATA.min(len) as usize];
        file.read_exact_at(&mut head, 0).map_err(|e| err(path, format!("cannot read it: {e}"), ""))?;
        let (sb, dir, copy) = Self::validate(&head, len).map_err(|what| err(path, what, FIX_CORRUPT))?;
        let active = Active { dir, copy };
        let map = sys::mapfile::map_shared(&file).map_err(|e| err(path, format!("cannot map it: {e}"), ""))?;
        tracing::info!(path = %path.display(), size = sb.file_size, blocks = active.dir.entries.len(), seq = active.dir.seq, "state file opened");
        let warning = Self::fallback_warning(&head, &sb, copy, active.dir.seq);
        if let Some(w) = &warning {
            tracing::warn!(path = %path.display(), "{w}");
        }
        Ok(Region {
            map,
            file: Some(file),
            path: Some(path.to_owned()),
            size: sb.file_size,
            active: Mutex::new(active),
            warning,
            writer: std::sync::atomic::AtomicBool::new(writer),
            creator: std::sync::OnceLock::new(),
            #[cfg(test)]
            flushed: Mutex::new(Vec::new()),
        })
    }

    /// Create the state file at `path` whole: formatted and synced under a
    /// temporary name in the same directory, then renamed into place (and
    /// the directory synced), so a kill at any moment leaves either no file
    /// or a whole one, never a half-made file every later start refuses.
    fn create_whole(path: &Path, size: u64) -> Result<(), StateError> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.new-{}", std::process::id()));
        let made = (|| -> std::io::Result<()> {
            let f = sys::mapfile::create_new_nofollow(&tmp, 0o600)?;
            f.set_len(size)?;
            Self::format_into(&f, size)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(path, format!("cannot create it: {e}"), "Check the directory and its permissions."));
        }
        tracing::info!(path = %path.display(), size, "state file created");
        Ok(())
    }

    /// A region in anonymous memory (tools and tests; gone with the process).
    pub fn anonymous(size: u64) -> Result<Region, StateError> {
        let size = size.max(MIN_SIZE).div_ceil(PAGE) * PAGE;
        let anon = Path::new("anonymous memory");
        let map = sys::mapfile::map_anon(size as usize).map_err(|e| err(anon, format!("cannot map: {e}"), ""))?;
        let r = Region {
            map,
            file: None,
            path: None,
            size,
            active: Mutex::new(Active { dir: Directory { seq: 1, entries: vec![] }, copy: 0 }),
            warning: None,
            writer: std::sync::atomic::AtomicBool::new(true),
            creator: std::sync::OnceLock::new(),
            #[cfg(test)]
            flushed: Mutex::new(Vec::new()),
        };
        r.write(0, &format::encode_superblock(&Superblock { file_size: size }));
        r.write(DIR0, &format::encode_directory(&Directory { seq: 1, entries: vec![] }));
        Ok(r)
    }

    fn format_into(file: &File, size: u64) -> std::io::Result<()> {
        file.write_all_at(&format::encode_superblock(&Superblock { file_size: size }), 0)?;
        file.write_all_at(&format::encode_directory(&Directory { seq: 1, entries: vec![] }), DIR0)?;
        file.write_all_at(&vec![0u8; DIR_BYTES as usize], DIR1)?;
        file.sync_all()
    }

    /// When the copy not used is damaged (written, but failing its checks),
    /// the words of a warning: it may have been the newer one, and what it
    /// committed after the used copy's `seq` is lost.
    fn fallback_warning(head: &[u8], sb: &Superblock, used: usize, seq: u64) -> Option<String> {
        let at = if used == 0 { DIR1 } else { DIR0 };
        let bytes = head.get(at as usize..(at + DIR_BYTES) as usize)?;
        match format::decode_directory(bytes, sb.file_size) {
            Err(e) => Some(format!(
                "directory copy {} is damaged ({e}); the other copy (sequence {seq}) was used: what was committed after it, if anything, is lost",
                1 - used
            )),
            _ => None,
        }
    }

    /// What opening the file had to warn about, if anything.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// Check a file's first `DATA` bytes: the superblock, then both
    /// directory copies; the newest valid copy wins.
    pub fn validate(head: &[u8], len: u64) -> Result<(Superblock, Directory, usize), String> {
        let sb = format::decode_superblock(head, len)?;
        let mut best: Option<(Directory, usize)> = None;
        let mut reasons = Vec::new();
        for (i, at) in [DIR0, DIR1].into_iter().enumerate() {
            let bytes = head.get(at as usize..(at + DIR_BYTES) as usize).ok_or("truncated directory")?;
            match format::decode_directory(bytes, sb.file_size) {
                Ok(Some(d)) => {
                    if best.as_ref().is_none_or(|(b, _)| d.seq > b.seq) {
                        best = Some((d, i));
                    }
                }
                Ok(None) => reasons.push(format!("copy {i}: never written")),
                Err(e) => reasons.push(format!("copy {i}: {e}")),
            }
        }
        let (mut dir, copy) = best.ok_or_else(|| format!("no valid directory copy ({})", reasons.join("; ")))?;
        // Rule 3: a half-filled migration target is discarded; retired
        // blocks belonged to code of the previous process.
        dir.entries.retain(|e| e.flags & F_LIVE != 0 && e.flags & (F_MIGRATING | F_RETIRED) == 0);
        Ok((sb, dir, copy))
    }

    fn write(&self, at: u64, bytes: &[u8]) {
        debug_assert!(at + bytes.len() as u64 <= self.size);
        // SAFETY: `at..at + len` lies inside the mapping (header areas are
        // fixed offsets below DATA, checked against the size at open), and
        // the header areas are written only under the `active` lock.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_mut_ptr().add(at as usize), bytes.len()) };
    }

    /// Refused unless this process is the directory's writer.
    fn writable(&self) -> Result<(), (molt_status, String)> {
        if self.writer.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        Err((
            MOLT_ERR_PHASE,
            "the state directory is not this process's to change now: a binary upgrade hands it from one molt process to the other (blocks are neither created nor migrated meanwhile; a config that needs that is refused for an upgrade: reload it before or after)".into(),
        ))
    }

    /// Whether this process commits the directory.
    pub fn is_writer(&self) -> bool {
        self.writer.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stop committing the directory: another process is about to take the
    /// writer role (a binary upgrade). Block contents stay shared.
    pub(crate) fn give_up_writer(&self) {
        let _a = self.active.lock();
        self.writer.store(false, std::sync::atomic::Ordering::Release);
    }

    /// Become the writer again after [`Region::give_up_writer`] (the upgrade
    /// failed: the other process never was the writer).
    pub(crate) fn resume_writer(&self) {
        let _a = self.active.lock();
        self.writer.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Take the writer role the other process gave up: the directory is
    /// read again from the file (rule 2's checks), then this process commits.
    pub(crate) fn take_writer(&self) -> Result<(), StateError> {
        let path = self.path.clone().unwrap_or_else(|| PathBuf::from("anonymous memory"));
        let mut a = self.active.lock();
        if let Some(file) = &self.file {
            let mut head = vec![0u8; DATA.min(self.size) as usize];
            file.read_exact_at(&mut head, 0).map_err(|e| err(&path, format!("cannot read it: {e}"), ""))?;
            let (_, dir, copy) = Self::validate(&head, self.size).map_err(|what| err(&path, what, FIX_CORRUPT))?;
            *a = Active { dir, copy };
        }
        self.writer.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Whether the directory is settled: no block being migrated and none
    /// retired by a migration whose old code may still run. Another process
    /// opening the file would see retired blocks as free space, so a binary
    /// upgrade waits for this.
    pub fn settled(&self) -> Result<(), String> {
        let a = self.active.lock();
        match a.dir.entries.iter().find(|e| e.flags & (F_MIGRATING | F_RETIRED) != 0) {
            None => Ok(()),
            Some(e) => Err(format!(
                "state block {}/{} (schema {}) is {} by a schema migration whose old version may still run: wait until that version unloads",
                e.owner,
                e.name,
                e.schema,
                if e.flags & F_MIGRATING != 0 { "being filled" } else { "retired" }
            )),
        }
    }

    /// The open state file (file-backed regions), for a binary upgrade to
    /// hand over.
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// Rule 1: write the new directory to the inactive copy, flush, switch.
    fn commit(&self, a: &mut Active, entries: Vec<Entry>) -> Result<(), (molt_status, String)> {
        self.writable()?;
        // Never wraps: a wrapped number would make the older copy the newer.
        let Some(seq) = a.dir.seq.checked_add(1) else {
            return Err((
                MOLT_ERR_FAILED,
                "the state directory's sequence number is at its end (2^64-1): the file was damaged or forged; restore it from a backup".into(),
            ));
        };
        let dir = Directory { seq, entries };
        let copy = 1 - a.copy;
        let at = if copy == 0 { DIR0 } else { DIR1 };
        self.write(at, &format::encode_directory(&dir));
        self.flush_range(at, DIR_BYTES).map_err(|e| (MOLT_ERR_FAILED, format!("state directory flush failed: {e}")))?;
        *a = Active { dir, copy };
        Ok(())
    }

    /// Flush `at..at + len` to the file (nothing to do in anonymous memory).
    fn flush_range(&self, at: u64, len: u64) -> std::io::Result<()> {
        #[cfg(test)]
        self.flushed.lock().push((at, len));
        if self.file.is_some() { self.map.flush_range(at as usize, len as usize) } else { Ok(()) }
    }

    /// Open `owner`'s block `name` with `schema`, at least `min_len` bytes.
    pub fn open_block(
        &self,
        owner: &str,
        name: &str,
        schema: u32,
        min_len: u64,
    ) -> Result<Opened, (molt_status, String)> {
        if name.is_empty() || name.len() > format::NAME_MAX || owner.is_empty() || owner.len() > format::NAME_MAX {
            return Err((MOLT_ERR_INVALID_ARG, format!("state block name {name:?} must be 1 to 64 bytes")));
        }
        let mut a = self.active.lock();
        let mut live = a.dir.entries.iter().find(|e| e.owner == owner && e.name == name && e.flags == F_LIVE).cloned();
        if live.is_none() && !self.is_writer() {
            if let Some(create) = self.creator.get() {
                // The writer makes it; then it is in the file's directory.
                create(owner, name, schema, min_len)?;
                self.refresh(&mut a)?;
                live = a.dir.entries.iter().find(|e| e.owner == owner && e.name == name && e.flags == F_LIVE).cloned();
            }
        }
        if live.as_ref().is_none_or(|b| b.schema != schema) {
            self.writable()?;
        }
        let Some(b) = live else {
            let (offset, len) = self.alloc(&a, owner, name, min_len)?;
            let mut entries = a.dir.entries.clone();
            entries.push(Entry { owner: owner.into(), name: name.into(), schema, flags: F_LIVE, offset, len });
            self.zero(offset, len);
            // Rule 3's order for new blocks too: the space may have held a
            // freed block, whose bytes must not reappear after a crash.
            self.flush_range(offset, len).map_err(|e| (MOLT_ERR_FAILED, format!("state block flush failed: {e}")))?;
            self.commit(&mut a, entries)?;
            return Ok(Opened::Created { handle: offset, len });
        };
        if b.schema == schema {
            if b.len < min_len {
                return Err((
                    MOLT_ERR_INVALID_ARG,
                    format!(
                        "state block {owner}/{name} holds {} bytes, the module asks for {min_len}: a larger block needs a new schema version and a migrate",
                        b.len
                    ),
                ));
            }
            return Ok(Opened::Existing { handle: b.offset, len: b.len });
        }
        let (offset, len) = self.alloc(&a, owner, name, min_len.max(b.len))?;
        self.zero(offset, len);
        let mut entries = a.dir.entries.clone();
        entries.push(Entry {
            owner: owner.into(),
            name: name.into(),
            schema,
            flags: F_LIVE | F_MIGRATING,
            offset,
            len,
        });
        self.commit(&mut a, entries)?;
        Ok(Opened::NeedsMigration { src: b.offset, dst: offset, from_schema: b.schema, down: b.schema > schema })
    }

    fn alloc(&self, a: &Active, owner: &str, name: &str, len: u64) -> Result<(u64, u64), (molt_status, String)> {
        let len = len.max(1).div_ceil(format::ALIGN) * format::ALIGN;
        if a.dir.entries.len() >= format::DIR_CAPACITY {
            return Err((
                MOLT_ERR_NO_MEMORY,
                format!("state directory full ({} blocks): cannot add {owner}/{name}", format::DIR_CAPACITY),
            ));
        }
        let offset = format::allocate(&a.dir.entries, len, self.size).ok_or_else(|| {
            let u = self.usage_of(a);
            (
                MOLT_ERR_NO_MEMORY,
                format!(
                    "state region full: {owner}/{name} needs {len} bytes, {} of {} are free (raise state_size)",
                    u.free, u.size
                ),
            )
        })?;
        Ok((offset, len))
    }

    fn zero(&self, offset: u64, len: u64) {
        // SAFETY: `offset..offset+len` was just allocated inside the block
        // space (format::allocate bounds it by the size), and no module has
        // its address yet.
        unsafe { std::ptr::write_bytes(self.map.as_mut_ptr().add(offset as usize), 0, len as usize) };
    }

    /// Rule 3: the migration into `dst` finished: `dst` becomes live, `src` retired.
    pub fn commit_migration(&self, src: u64, dst: u64) -> Result<(), (molt_status, String)> {
        let mut a = self.active.lock();
        // The migrated bytes reach the file before the entry making them live.
        if let Some(e) = a.dir.entries.iter().find(|e| e.offset == dst) {
            self.flush_range(e.offset, e.len)
                .map_err(|e| (MOLT_ERR_FAILED, format!("migrated state block flush failed: {e}")))?;
        }
        let mut entries = a.dir.entries.clone();
        for e in &mut entries {
            if e.offset == dst {
                e.flags = F_LIVE;
            } else if e.offset == src {
                e.flags = F_RETIRED;
            }
        }
        self.commit(&mut a, entries)
    }

    /// The migration into `dst` failed: forget `dst`; `src` stays live.
    pub fn abort_migration(&self, dst: u64) -> Result<(), (molt_status, String)> {
        let mut a = self.active.lock();
        let entries = a.dir.entries.iter().filter(|e| e.offset != dst).cloned().collect();
        self.commit(&mut a, entries)
    }

    /// Undo a committed migration (the swap that made it was refused):
    /// `src` is live again, `dst` is forgotten.
    pub fn revert_migration(&self, src: u64, dst: u64) -> Result<(), (molt_status, String)> {
        let mut a = self.active.lock();
        let entries = a
            .dir
            .entries
            .iter()
            .filter(|e| e.offset != dst)
            .cloned()
            .map(|mut e| {
                if e.offset == src {
                    e.flags = F_LIVE;
                }
                e
            })
            .collect();
        self.commit(&mut a, entries)
    }

    /// Free `owner`'s retired blocks of `schema` (no code of that schema runs any more).
    pub fn release_retired(&self, owner: &str, schema: u32) {
        let mut a = self.active.lock();
        if !a.dir.entries.iter().any(|e| e.owner == owner && e.schema == schema && e.flags == F_RETIRED) {
            return;
        }
        let entries = a
            .dir
            .entries
            .iter()
            .filter(|e| !(e.owner == owner && e.schema == schema && e.flags == F_RETIRED))
            .cloned()
            .collect();
        if let Err((_, e)) = self.commit(&mut a, entries) {
            tracing::warn!(owner, schema, "releasing retired state blocks failed: {e}");
        }
    }

    /// The address and length of block `handle`, if it is `owner`'s.
    pub fn ptr(&self, owner: &str, handle: u64) -> Option<(*mut u8, u64)> {
        let a = self.active.lock();
        let e = a.dir.entries.iter().find(|e| e.offset == handle && e.owner == owner)?;
        // SAFETY: directory entries lie inside the block space (validated
        // at open, allocated within the size since), so the address is in
        // the mapping, which lives as long as `self`.
        Some((unsafe { self.map.as_mut_ptr().add(e.offset as usize) }, e.len))
    }

    /// Every block.
    pub fn blocks(&self) -> Vec<BlockInfo> {
        let a = self.active.lock();
        a.dir
            .entries
            .iter()
            .map(|e| BlockInfo {
                owner: e.owner.clone(),
                name: e.name.clone(),
                schema: e.schema,
                len: e.len,
                state: if e.flags & F_MIGRATING != 0 {
                    "migrating"
                } else if e.flags & F_RETIRED != 0 {
                    "retired"
                } else {
                    "live"
                },
            })
            .collect()
    }

    fn usage_of(&self, a: &Active) -> Usage {
        let used: u64 = a.dir.entries.iter().map(|e| e.len).sum();
        Usage { size: self.size, used, free: self.size - DATA - used }
    }

    /// Size, used and free bytes.
    pub fn usage(&self) -> Usage {
        self.usage_of(&self.active.lock())
    }

    /// The file, if file-backed.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Flush every dirty page to the file (on stop).
    pub fn flush(&self) -> std::io::Result<()> {
        if self.file.is_some() { self.map.flush() } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_region(name: &str) -> (Region, PathBuf) {
        let dir = std::env::temp_dir().join(format!("molt-state-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.molt");
        (Region::open_file(&path, 1 << 20, false).unwrap(), dir)
    }

    /// Whether a flush covering `offset..offset + len` came before the last
    /// directory flush (the commit that makes the block live).
    fn flushed_before_commit(r: &Region, offset: u64, len: u64) -> bool {
        let log = r.flushed.lock();
        let last_dir = log.iter().rposition(|(at, _)| *at == DIR0 || *at == DIR1).expect("a directory commit");
        log[..last_dir].iter().any(|(at, l)| *at <= offset && offset + len <= at + l)
    }

    /// Rule 3 on disk: a migrated block's bytes reach the file before the
    /// directory entry that makes them live, so a machine crash cannot leave
    /// a live entry over pages that were never written.
    #[test]
    fn migrated_data_is_flushed_before_the_commit_that_makes_it_live() {
        let (r, dir) = file_region("migrate");
        let Opened::Created { handle: src, .. } = r.open_block("m", "b", 1, 64).unwrap() else { panic!("new block") };
        let Opened::NeedsMigration { dst, .. } = r.open_block("m", "b", 2, 64).unwrap() else { panic!("migration") };
        let (p, len) = r.ptr("m", dst).unwrap();
        // SAFETY: `p..p+len` is the migration target, inside the mapping.
        unsafe { std::ptr::write_bytes(p, 0xAB, len as usize) };
        r.flushed.lock().clear();
        r.commit_migration(src, dst).unwrap();
        assert!(flushed_before_commit(&r, dst, len), "flushes: {:?}", r.flushed.lock());
        drop(r);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A new block is zeroed over space a freed block may have used: the
    /// zeros reach the file before the entry does.
    #[test]
    fn a_new_block_is_flushed_zeroed_before_its_entry_is_committed() {
        let (r, dir) = file_region("create");
        r.flushed.lock().clear();
        let Opened::Created { handle, len } = r.open_block("m", "fresh", 1, 4096).unwrap() else { panic!("new block") };
        assert!(flushed_before_commit(&r, handle, len), "flushes: {:?}", r.flushed.lock());
        drop(r);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A binary upgrade's handover: the new process maps the very file the
    /// old one has (sharing its lock), sees and makes block writes at once,
    /// commits nothing until it takes the writer role, and then commits on
    /// the directory as the file holds it.
    #[test]
    fn a_handed_over_region_shares_blocks_and_commits_only_as_the_writer() {
        let (old, dir) = file_region("handover");
        let path = dir.join("state.molt");
        let Opened::Created { handle, .. } = old.open_block("counter", "count", 1, 64).unwrap() else { panic!() };
        // Another open of the path is refused: the lock holds.
        assert!(Region::open_file(&path, 1 << 20, false).is_err());
        let fd = old.file().unwrap().try_clone().unwrap();
        let new = Region::open_handed_over(fd, &path).unwrap();
        assert!(!new.is_writer());
        // The block exists for the new process, at the same offset.
        assert_eq!(new.open_block("counter", "count", 1, 64).unwrap(), Opened::Existing { handle, len: 64 });
        let (a, _) = old.ptr("counter", handle).unwrap();
        let (b, _) = new.ptr("counter", handle).unwrap();
        // SAFETY: both point at the 64-byte block just opened, aligned.
        let (a, b) =
            unsafe { (&*(a as *const std::sync::atomic::AtomicU64), &*(b as *const std::sync::atomic::AtomicU64)) };
        a.fetch_add(5, std::sync::atomic::Ordering::AcqRel);
        b.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        assert_eq!(a.load(std::sync::atomic::Ordering::Acquire), 6, "the two mappings are one");
        // Not the writer: no new block, no migration.
        let e = new.open_block("counter", "other", 1, 64).unwrap_err();
        assert_eq!(e.0, MOLT_ERR_PHASE, "{}", e.1);
        assert_eq!(new.open_block("counter", "count", 2, 64).unwrap_err().0, MOLT_ERR_PHASE);
        // The old one gives the role up; the new one takes it and commits.
        old.give_up_writer();
        assert_eq!(old.open_block("counter", "third", 1, 64).unwrap_err().0, MOLT_ERR_PHASE);
        new.take_writer().unwrap();
        assert!(matches!(new.open_block("counter", "other", 1, 64).unwrap(), Opened::Created { .. }));
        drop(old);
        // Closing the old descriptor keeps the lock: the new one holds it.
        assert!(Region::open_file(&path, 1 << 20, false).is_err());
        drop(new);
        let again = Region::open_file(&path, 1 << 20, false).unwrap();
        assert_eq!(again.blocks().len(), 2, "the new writer's commit is on disk");
        drop(again);
        // A descriptor of another file is refused for the path.
        let (other, other_dir) = file_region("handover-other");
        let e = Region::open_handed_over(other.file().unwrap().try_clone().unwrap(), &path).unwrap_err();
        assert!(e.to_string().contains("not the file at this path"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(other_dir);
    }

    /// A region in the middle of a migration is not settled.
    #[test]
    fn a_migration_unsettles_the_directory() {
        let (r, dir) = file_region("settled");
        r.open_block("m", "b", 1, 64).unwrap();
        assert!(r.settled().is_ok());
        let Opened::NeedsMigration { src, dst, .. } = r.open_block("m", "b", 2, 64).unwrap() else { panic!() };
        assert!(r.settled().unwrap_err().contains("being filled"));
        r.commit_migration(src, dst).unwrap();
        assert!(r.settled().unwrap_err().contains("retired"));
        r.release_retired("m", 1);
        assert!(r.settled().is_ok());
        drop(r);
        let _ = std::fs::remove_dir_all(dir);
    }
}
