//! Shared-memory segments between molt and a module's child process (the
//! `shared_memory` crate: POSIX `shm_open`, mode 0600, a random name), and
//! the futex a side sleeps on inside one.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// A mapped segment; the creator's unlinks its name when dropped.
pub struct Segment {
    shm: shared_memory::Shmem,
}

// SAFETY: a Shmem is a mapping and its name; the mapping stays valid until
// the Segment drops, and what lives in it is reached only through atomics
// and the rings' protocol, from any thread.
unsafe impl Send for Segment {}
// SAFETY: as above: `&Segment` hands out only the base pointer and length.
unsafe impl Sync for Segment {}

impl Segment {
    /// A new zero-filled segment of `len` bytes, under a fresh name.
    pub fn create(len: usize) -> std::io::Result<Segment> {
        let shm = shared_memory::ShmemConf::new()
            .size(len)
            .create()
            .map_err(|e| std::io::Error::other(format!("cannot create a shared-memory segment: {e}")))?;
        Ok(Segment { shm })
    }

    /// Map the segment named `os_id` (made by the other process).
    pub fn open(os_id: &str) -> std::io::Result<Segment> {
        let shm = shared_memory::ShmemConf::new()
            .os_id(os_id)
            .open()
            .map_err(|e| std::io::Error::other(format!("cannot open shared-memory segment {os_id}: {e}")))?;
        Ok(Segment { shm })
    }

    /// Its name, for the other process.
    pub fn os_id(&self) -> &str {
        self.shm.get_os_id()
    }

    /// Its first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.shm.as_ptr()
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.shm.len()
    }

    /// Whether it is empty (never, for a made segment).
    pub fn is_empty(&self) -> bool {
        self.shm.len() == 0
    }
}

/// Sleep while `word` holds `expected`, at most `timeout` (a futex shared
/// between processes: the word is in a shared mapping).
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = rustix::fs::Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: i64::from(timeout.subsec_nanos()) };
    // EAGAIN (the word changed), EINTR and ETIMEDOUT all mean: look again.
    let _ = rustix::thread::futex::wait(word, rustix::thread::futex::Flags::empty(), expected, Some(&ts));
}

/// Wake whoever sleeps on `word`.
pub fn futex_wake(word: &AtomicU32) {
    let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), u32::MAX);
}

/// Have this process killed when its parent dies (a module's child must
/// not outlive molt).
pub fn die_with_parent() -> std::io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    Ok(())
}

/// Kill process `pid` (SIGKILL): a module's child that hangs.
pub fn kill(pid: u32) -> std::io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| std::io::Error::other("pid 0"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)?;
    Ok(())
}

/// A non-blocking datagram socket bound to `name` in the abstract
/// namespace (Linux): no file, so no path length limit and nothing left
/// behind.
pub fn bind_abstract_datagram(name: &str) -> std::io::Result<std::os::unix::net::UnixDatagram> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let s = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Send a one-byte poke from `sock` to `to`: a path, or `@name` in the
/// abstract namespace. A full receive buffer already holds a poke.
pub fn poke(sock: &std::os::unix::net::UnixDatagram, to: &str) -> std::io::Result<()> {
    match to.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(b"!", &addr).map(|_| ())
        }
        None => sock.send_to(b"!", to).map(|_| ()),
    }
}
