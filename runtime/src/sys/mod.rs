//! The OS edge: everything that touches the dynamic loader, the proc
//! filesystem, file metadata, sockets' options, locks and mappings lives
//! here, so the core above stays plain Rust.
//!
//! What this layer must provide:
//! * [`dl`]: open a shared library with `RTLD_NOW | RTLD_LOCAL`, resolve a
//!   symbol, close it, reporting the loader's own words on failure;
//! * [`maps`]: whether a file is mapped into this process (`/proc/self/maps`),
//!   which is how an unload is verified rather than assumed;
//! * [`files`]: module intake on one descriptor (regular file, owner and
//!   mode of the file and its directories, one read hashed) and private
//!   runtime copies;
//! * [`elf`]: that bytes are a whole ELF shared object for this machine,
//!   before the dynamic loader maps them;
//! * [`cpu`]: pinning the calling thread to a CPU;
//! * [`listen`]: listening sockets each worker binds (`SO_REUSEPORT`), and
//!   the check that no other process serves an address;
//! * [`creds`]: the uid and pid at the other end of a Unix socket;
//! * [`fdpass`]: frames with descriptors over a Unix socket (`SCM_RIGHTS`),
//!   for the binary upgrade's handover;
//! * [`sandbox`]: confining an isolated module's child (rlimits,
//!   `no_new_privs`, Landlock);
//! * [`sd`]: systemd socket activation (`LISTEN_FDS`) and readiness
//!   (`NOTIFY_SOCKET`);
//! * [`shm`]: shared-memory segments (the `shared_memory` crate) and the
//!   futex a side of an isolated module's rings sleeps on;
//! * [`mapfile`]: opening a file without following links, its exclusive
//!   advisory lock, and shared or anonymous mappings.
//!
//! Nothing outside this layer calls the OS through `rustix` or `memmap2`
//! (`runtime/tests/layering.rs` checks).

pub mod cpu;
pub mod creds;
pub mod dl;
pub mod elf;
pub mod fdpass;
pub mod files;
pub mod listen;
pub mod mapfile;
pub mod maps;
pub mod sandbox;
pub mod sd;
pub mod shm;
