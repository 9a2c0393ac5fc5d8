//! molt-abi: the contract between the molt runtime and its handler modules.
//!
//! Three things live here, and nothing else, so that a module depends on this
//! crate alone and never on the runtime:
//!
//! * `include/molt.h`, the normative C header (C authors need only it);
//! * [`ffi`], its `repr(C)` mirror, with compile-time layout assertions and
//!   [`layout`] records that the drift test compiles against the header;
//! * [`sdk`], the safe Rust SDK: implement [`sdk::Module`], export it with
//!   [`molt_module!`], write no `unsafe`.
//!
//! Why a C ABI and not Rust traits across `dlopen`: Rust has no stable ABI,
//! so a module built by another compiler version would be undefined
//! behaviour. The C ABI is stable, versioned here by size-prefixed structs
//! that only ever grow by appending (see the header's rule 2), and lets C
//! modules and Rust modules be the same thing to the runtime.
#![deny(missing_docs)]

pub mod ffi;
pub mod layout;
pub mod sdk;
mod status;

pub use status::Status;

/// The path of the C header, for build scripts of C modules and for tests.
pub const HEADER_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include/molt.h");
/// The directory to pass to `-I` when compiling against the header.
pub const INCLUDE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
