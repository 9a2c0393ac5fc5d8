//! The OS edge: everything that touches the dynamic loader, the proc
//! filesystem or file metadata lives here, so the core above stays plain Rust.
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
//! * [`cpu`]: pinning the calling thread to a CPU.

pub mod cpu;
pub mod dl;
pub mod elf;
pub mod files;
pub mod maps;
