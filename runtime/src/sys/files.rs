//! Module files: intake on one descriptor, and private copies.
//!
//! A module file is opened once (non-blocking, close-on-exec), and
//! everything is decided on that descriptor: `fstat` says it is a regular
//! file (a FIFO or a device is refused before a byte is read), owned by
//! us or root and not writable by group or others; the directories of
//! the path it really has (`/proc/self/fd`) are owned by us or root and
//! not writable by others (unless sticky, like `/tmp`: others cannot then
//! rename or remove what they do not own), as OpenSSH's StrictModes asks.
//! The bytes are read once from it, hashed, checked as a whole ELF shared
//! object, and written into a private copy that nobody else can change;
//! only that copy is ever given to the dynamic loader.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::elf::{self, ElfError};

/// The largest module file taken in.
pub const MAX_MODULE_BYTES: u64 = 512 << 20;

/// Why a module file was not taken in.
#[derive(Debug)]
pub enum IntakeError {
    /// It does not exist.
    NotFound,
    /// Not a regular file (a directory, FIFO, device, socket).
    NotRegular(&'static str),
    /// Its owner or mode, or a directory's, makes it unsafe to load code from.
    Unsafe(String),
    /// Not a whole ELF shared object for this machine.
    Elf(ElfError),
    /// The file changed size while it was read.
    Changed(u64, u64),
    /// Larger than [`MAX_MODULE_BYTES`].
    TooLarge(u64),
    /// The OS refused a step.
    Io(&'static str, io::Error),
}

impl std::fmt::Display for IntakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntakeError::NotFound => write!(f, "not found"),
            IntakeError::NotRegular(kind) => write!(f, "not a regular file (a {kind})"),
            IntakeError::Unsafe(w) => write!(f, "{w}"),
            IntakeError::Elf(e) => write!(f, "{e}"),
            IntakeError::Changed(was, read) => {
                write!(f, "it changed while it was read ({was} bytes at open, {read} read): it is being written")
            }
            IntakeError::TooLarge(n) => write!(f, "{n} bytes, over the limit of {MAX_MODULE_BYTES}"),
            IntakeError::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn kind_of(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Whether a file or directory owned by `uid` with `mode` is ours to trust.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == effective_uid()
}

/// A module file opened for intake.
#[derive(Debug)]
pub struct Opened {
    file: File,
    size: u64,
}

/// Open `path` for intake and check the descriptor and the directories of
/// its real path (see the module docs).
pub fn open_module(path: &Path) -> Result<Opened, IntakeError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32 | rustix::fs::OFlags::CLOEXEC.bits() as i32)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => IntakeError::NotFound,
            _ => IntakeError::Io("opening it", e),
        })?;
    let m = file.metadata().map_err(|e| IntakeError::Io("reading its metadata", e))?;
    if !m.is_file() {
        return Err(IntakeError::NotRegular(kind_of(m.file_type())));
    }
    let me = effective_uid();
    if !trusted_owner(m.uid()) {
        return Err(IntakeError::Unsafe(format!("owned by uid {}, neither the runtime's uid {me} nor root", m.uid())));
    }
    if m.mode() & 0o022 != 0 {
        return Err(IntakeError::Unsafe(format!("mode {:04o} is group- or world-writable", m.mode() & 0o7777)));
    }
    if m.len() > MAX_MODULE_BYTES {
        return Err(IntakeError::TooLarge(m.len()));
    }
    let fd_path = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)));
    let real = fs::read_link(&fd_path).map_err(|e| IntakeError::Io("resolving its real path", e))?;
    for dir in real.ancestors().skip(1) {
        let d = fs::symlink_metadata(dir).map_err(|e| IntakeError::Io("checking its directories", e))?;
        let sticky = d.mode() & 0o1000 != 0;
        if !trusted_owner(d.uid()) {
            return Err(IntakeError::Unsafe(format!(
                "its directory {} is owned by uid {}, neither the runtime's uid {me} nor root",
                dir.display(),
                d.uid()
            )));
        }
        if d.mode() & 0o022 != 0 && !sticky {
            return Err(IntakeError::Unsafe(format!(
                "its directory {} (mode {:04o}) is group- or world-writable",
                dir.display(),
                d.mode() & 0o7777
            )));
        }
    }
    Ok(Opened { size: m.len(), file })
}

/// A module file's bytes, in a buffer that goes back to a small pool when
/// dropped: a reload reads every module file, and fresh multi-megabyte
/// buffers each time would cost page faults and leave the allocator's heap
/// grown.
pub struct Bytes(Vec<u8>);

/// Buffers kept for the next read: at most this many...
const POOL: usize = 4;
/// ...of at most this capacity each.
const POOL_MAX: usize = 64 << 20;

static BUFFERS: parking_lot::Mutex<Vec<Vec<u8>>> = parking_lot::Mutex::new(Vec::new());

impl Bytes {
    /// An empty buffer, from the pool when it has one.
    fn empty() -> Bytes {
        let mut v = BUFFERS.lock().pop().unwrap_or_default();
        v.clear();
        Bytes(v)
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() <= POOL_MAX {
            let mut pool = BUFFERS.lock();
            if pool.len() < POOL {
                pool.push(v);
            }
        }
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Opened {
    /// Read the whole file once; its bytes and their sha256 (lowercase hex).
    pub fn read_all(mut self) -> Result<(Bytes, String), IntakeError> {
        let mut bytes = Bytes::empty();
        // One byte past the size it had at open: a file still growing is seen.
        (&mut self.file).take(self.size + 1).read_to_end(&mut bytes.0).map_err(|e| IntakeError::Io("reading it", e))?;
        if bytes.0.len() as u64 != self.size {
            return Err(IntakeError::Changed(self.size, bytes.0.len() as u64));
        }
        let sha = Sha256::digest(&bytes[..]).iter().map(|b| format!("{b:02x}")).collect();
        Ok((bytes, sha))
    }
}

/// A module file's bytes, read once from a checked descriptor.
#[derive(Debug)]
pub struct Taken {
    /// The bytes.
    pub(crate) bytes: Bytes,
    /// Their sha256, lowercase hex (of `bytes`: the two never part).
    pub(crate) sha256: String,
}

impl Taken {
    /// The sha256 of the bytes, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// Open `path` with [`open_module`]'s checks and read it once.
pub fn take(path: &Path) -> Result<Taken, IntakeError> {
    let (bytes, sha256) = open_module(path)?.read_all()?;
    Ok(Taken { bytes, sha256 })
}

/// Check `taken` as an ELF shared object for this machine and write its
/// bytes into a new private directory `<versions>/<id>/` (mode 0700) as
/// `name` (dlopen caches by path: every version gets a path of its own).
/// The copy's path; only it is ever given to the dynamic loader.
pub fn private_copy(taken: &Taken, name: &std::ffi::OsStr, versions: &Path, id: &str) -> Result<PathBuf, IntakeError> {
    elf::check_shared_object(&taken.bytes).map_err(IntakeError::Elf)?;
    let dir = versions.join(id);
    fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| IntakeError::Io("creating its private directory", e))?;
    let copy = dir.join(name);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o500)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&copy)
        .and_then(|mut f| f.write_all(&taken.bytes));
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&dir);
        return Err(IntakeError::Io("writing its private copy", e));
    }
    Ok(copy)
}

/// Copy a private copy (bytes nobody else can change) to `dst`, mode 0500,
/// unless `dst` exists.
pub fn keep_copy(copy: &Path, dst: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o500)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(dst)
    {
        Ok(mut f) => io::copy(&mut File::open(copy)?, &mut f).map(drop),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Remove a private copy and its directory.
pub fn remove_copy(copy: &Path) -> io::Result<()> {
    match copy.parent() {
        Some(dir) => fs::remove_dir_all(dir),
        None => fs::remove_file(copy),
    }
}

/// Make sure `path` is a run dir molt can trust: a real directory (not a
/// symlink) owned by this process's uid with no access for group or
/// others. A missing one is created, mode 0700 (its parents as needed).
/// The error says what is wrong and how to fix it.
pub fn ensure_private_dir(path: &Path) -> Result<(), String> {
    let shown = path.display();
    if let Err(e) = fs::symlink_metadata(path) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(format!("run dir {shown}: cannot read it: {e}"));
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("run dir {shown}: cannot create its parent: {e}"))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("run dir {shown}: cannot create it: {e}")),
        }
    }
    let m = fs::symlink_metadata(path).map_err(|e| format!("run dir {shown}: cannot read it: {e}"))?;
    let me = effective_uid();
    if m.file_type().is_symlink() {
        return Err(format!(
            "run dir {shown} is a symbolic link; molt follows none there: point run_dir at a real directory"
        ));
    }
    if !m.is_dir() {
        return Err(format!("run dir {shown} is not a directory; remove it or point run_dir elsewhere"));
    }
    if m.uid() != me {
        return Err(format!(
            "run dir {shown} is owned by uid {}, not molt's uid {me}: another user made it; remove it (molt makes its own) or point run_dir elsewhere",
            m.uid()
        ));
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "run dir {shown} has mode {:04o}; it holds the control socket, module copies and the lock, and must be molt's alone: chmod 700 {shown}",
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Write this process's pid into the instance lock `lock` (a binary
/// upgrade's new process, which took the lock over with its descriptor).
pub fn record_pid(lock: &File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let pid = format!("{}\n", std::process::id());
    lock.set_len(0)?;
    lock.write_all_at(pid.as_bytes(), 0)
}

/// Take the run dir's instance lock, `<run_dir>/molt.lock` (opened without
/// following links, mode 0600), and write our pid into it. Held while the
/// returned file is open; a second instance is refused with the holder's pid.
pub fn lock_run_dir(run_dir: &Path) -> Result<File, String> {
    let path = run_dir.join("molt.lock");
    let shown = path.display();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(|e| format!("{shown}: cannot open the instance lock: {e}"))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut text = String::new();
            let _ = f.read_to_string(&mut text);
            let pid = text.trim();
            let who = if pid.is_empty() { "another molt".to_owned() } else { format!("another molt (pid {pid})") };
            return Err(format!(
                "{who} is running with run dir {}; stop it, or give this one another run_dir",
                run_dir.display()
            ));
        }
        Err(e) => return Err(format!("{shown}: cannot lock it: {e}")),
    }
    f.set_len(0).and_then(|()| writeln!(f, "{}", std::process::id())).map_err(|e| format!("{shown}: {e}"))?;
    Ok(f)
}
