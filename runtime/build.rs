//! Passes `MOLT_MUTANT` (set by `scripts/loom-mutants`) to the runtime as
//! `cfg(molt_mutant = "...")`: only this crate rebuilds per mutant, its
//! dependencies stay built.

fn main() {
    println!("cargo:rerun-if-env-changed=MOLT_MUTANT");
    if let Ok(m) = std::env::var("MOLT_MUTANT") {
        if !m.is_empty() {
            println!("cargo:rustc-cfg=molt_mutant=\"{m}\"");
        }
    }
}
