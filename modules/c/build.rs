//! Compiles every C module into a shared library with the ABI's strict flags.
//!
//! Sources: `modules/echo_c/*.c` (`libecho_c.so`), `modules/header_rewrite/*.c`
//! (`libheader_rewrite.so`) and each
//! `modules/fixtures/c/fixture_*.c` (one library each). Flags:
//! `-std=c99 -Wall -Wextra -Werror -pedantic`, `-fvisibility=hidden` and a
//! version script, so `molt_module_entry_v1` is the only exported symbol.
//! The libraries land in `OUT_DIR` and are copied next to the Rust cdylibs
//! (`target/<profile>/`), where `molt run` finds the example modules.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let modules = manifest.parent().expect("modules/").to_path_buf();
    let include = modules.parent().expect("workspace").join("abi/include");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_owned());

    let script = out.join("exports.map");
    fs::write(&script, "{ global: molt_module_entry_v1; local: *; };\n").expect("write version script");
    println!("cargo:rerun-if-changed={}", include.join("molt.h").display());

    let mut libs: Vec<(String, Vec<PathBuf>)> = vec![
        ("echo_c".to_owned(), c_files(&modules.join("echo_c"))),
        ("header_rewrite".to_owned(), c_files(&modules.join("header_rewrite"))),
    ];
    for f in c_files(&modules.join("fixtures/c")) {
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        if stem.starts_with("fixture_") {
            libs.push((stem, vec![f]));
        }
    }
    println!("cargo:rerun-if-changed={}", modules.join("echo_c").display());
    println!("cargo:rerun-if-changed={}", modules.join("header_rewrite").display());
    println!("cargo:rerun-if-changed={}", modules.join("fixtures/c").display());

    // target/<profile>/build/<pkg>-<hash>/out -> target/<profile>
    let profile_dir = out.ancestors().nth(3).map(Path::to_path_buf);
    for (name, sources) in libs {
        for s in &sources {
            println!("cargo:rerun-if-changed={}", s.display());
        }
        let lib = out.join(format!("lib{name}.so"));
        let status = Command::new(&cc)
            .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", "-g", "-fPIC", "-shared", "-pthread"])
            .arg("-fvisibility=hidden")
            .arg(format!("-Wl,--version-script={}", script.display()))
            .arg("-I")
            .arg(&include)
            .args(&sources)
            .arg("-o")
            .arg(&lib)
            .status()
            .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` for {name}: {e} (install gcc)"));
        assert!(status.success(), "compiling C module {name} failed (see the compiler's output above)");
        if let Some(dir) = &profile_dir {
            fs::copy(&lib, dir.join(format!("lib{name}.so"))).expect("copy the C module next to the Rust modules");
        }
    }
}

fn c_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    v.sort();
    v
}
