//! The runtime's modules are layered one way (DESIGN: the core is plain
//! Rust over `sys`; the proxies and the control plane are layers on it).
//!
//! This test reads every `crate::<module>` path in `runtime/src` (imports
//! and inline paths, comments skipped) and fails when
//! * a core module (`worker`, `cont`, `module`, `host`, `state`, `sys`,
//!   `sync`) names a layer (`http`, `net`, `ctl`, `config`, `runtime`,
//!   `bench`) or the crate-root facade (`crate::Runtime`...);
//! * the top-level modules import each other in a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CORE: &[&str] = &["worker", "cont", "module", "host", "state", "sys", "sync"];
const LAYERS: &[&str] = &["http", "net", "ctl", "config", "runtime", "bench", "isolate"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module of a file under `src`: its first component, without `.rs`.
fn top_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.strip_suffix(".rs").unwrap_or(&first).to_owned()
}

/// The modules a source text names through `crate::`, comments skipped;
/// `crate::{A, b::C}` groups count each name, and `crate::Runtime`-style
/// facade items count as `(facade)`.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end].split(',').map(|s| s.trim().split("::").next().unwrap_or("").trim()).collect()
            } else {
                vec![rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("")]
            };
            for n in names.into_iter().filter(|n| !n.is_empty()) {
                if n.chars().next().is_some_and(|c| c.is_uppercase()) {
                    out.insert("(facade)".to_owned());
                } else {
                    out.insert(n.to_owned());
                }
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    // from -> to -> files that make the edge
    let mut g: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for f in files {
        let from = top_of(&src, &f);
        if from == "lib" || from == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for to in named(&text) {
            if to != from {
                let rel = f.strip_prefix(&src).unwrap().display().to_string();
                g.entry(from.clone()).or_default().entry(to).or_default().push(rel);
            }
        }
    }
    g
}

#[test]
fn the_core_names_no_layer() {
    let g = graph();
    let mut bad = Vec::new();
    for (from, tos) in &g {
        if !CORE.contains(&from.as_str()) {
            continue;
        }
        for (to, files) in tos {
            if LAYERS.contains(&to.as_str()) || to == "(facade)" {
                bad.push(format!("{from} -> {to} ({})", files.join(", ")));
            }
        }
    }
    assert!(bad.is_empty(), "core modules name layers:\n{}", bad.join("\n"));
}

#[test]
fn top_level_modules_import_each_other_in_no_cycle() {
    let g = graph();
    // Depth-first search for a back edge; report every cycle's path.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_owned());
            cycles.push(c.join(" -> "));
            return;
        }
        if done.contains(n) {
            return;
        }
        stack.push(n.to_owned());
        for to in g.get(n).map(|t| t.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            visit(&to, g, stack, done, cycles);
        }
        stack.pop();
        done.insert(n.to_owned());
    }
    let (mut done, mut cycles) = (BTreeSet::new(), Vec::new());
    for n in g.keys() {
        visit(n, &g, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles between top-level modules:\n{}", cycles.join("\n"));
}

/// The OS is reached through `sys` only: no other module names the crates
/// that make system calls.
#[test]
fn only_sys_calls_the_os() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut bad = Vec::new();
    for f in files {
        if top_of(&src, &f) == "sys" {
            continue;
        }
        for (i, line) in std::fs::read_to_string(&f).unwrap().lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if ["rustix::", "memmap2::", "libc::", "libloading::"].iter().any(|c| code.contains(c)) {
                bad.push(format!("{}:{}: {}", f.strip_prefix(&src).unwrap().display(), i + 1, line.trim()));
            }
        }
    }
    assert!(bad.is_empty(), "OS calls outside sys:\n{}", bad.join("\n"));
}

#[test]
fn the_reader_sees_groups_inline_paths_and_the_facade() {
    let n = named("use crate::{Runtime, http::X};\nlet a = crate::net::f(); // crate::ctl::g\n");
    assert_eq!(n, ["(facade)", "http", "net"].iter().map(|s| s.to_string()).collect());
}
