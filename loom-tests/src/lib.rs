//! Loom models of molt's lock-free and refcounted cores.
//!
//! The models live in `tests/` and only exist under `--cfg molt_loom`, which
//! also switches the runtime's `sync` shim to loom, so the models run the
//! runtime's own code. `scripts/test` runs them, then `scripts/loom-mutants`,
//! which builds each model against the mutant that removes its protection
//! and requires it to fail with the model's own message.
#![forbid(unsafe_code)]
