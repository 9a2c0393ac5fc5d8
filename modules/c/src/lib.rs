//! Where the C modules built by this crate's build script are.
//!
//! The build script compiles `modules/echo_c` and every
//! `modules/fixtures/c/fixture_*.c` with gcc against `molt.h` alone, with
//! warnings as errors; see `build.rs`.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// The shared library of C module `name` (e.g. `"echo_c"`, `"fixture_wrong_major"`).
pub fn library(name: &str) -> PathBuf {
    PathBuf::from(env!("OUT_DIR")).join(format!("lib{name}.so"))
}
