//! The OS edge: everything that touches the dynamic loader, the proc
//! filesystem or file metadata lives here, so the core above stays plain Rust.
//!
//! What this layer must provide:
//! * [`dl`]: open a shared library with `RTLD_NOW | RTLD_LOCAL`, resolve a
//!   symbol, close it, reporting the loader's own words on failure;
//! * [`maps`]: whether a file is mapped into this process (`/proc/self/maps`),
//!   which is how an unload is verified rather than assumed;
//! * [`files`]: ELF sniffing and private runtime copies of module files;
//! * [`cpu`]: pinning the calling thread to a CPU.

pub mod cpu;
pub mod dl;
pub mod files;
pub mod maps;
