//! `include/molt.h` is a tested artifact.
//!
//! * **Drift.** Every struct of the Rust mirror is turned into C static
//!   assertions — each field's `offsetof` and `sizeof`, the struct's `sizeof`
//!   and `alignof` — and every constant into a value assertion; the file is
//!   compiled against the header with gcc. A field in the mirror that the
//!   header lacks does not compile (`offsetof` of an unknown member); a field
//!   in the header that the mirror lacks changes `sizeof` and fails its
//!   assertion; a moved or resized field fails its own. Constants the header
//!   defines but the mirror lacks are found by reading the header's
//!   `#define MOLT_*` lines.
//! * **It can fail.** `drift_check_fails_when_the_mirror_gains_a_field`
//!   runs the same check with a copy of the layout records where
//!   `molt_event` gained a field `extra` (as if someone added it to the Rust
//!   struct and not to the header), and with a constant whose value changed,
//!   and requires both checks to fail. It was also checked by hand: adding
//!   `pub extra: u64,` to `molt_event` in `src/ffi.rs` (and updating its
//!   compile-time size assertion) makes `header_matches_the_rust_mirror` fail
//!   with "'molt_event' has no member named 'extra'".
//! * **Hygiene.** A C file including the header twice compiles as C99 with
//!   `-Wall -Wextra -Werror -pedantic`, and as C++ (`-std=c++11`, same flags).

use std::path::{Path, PathBuf};
use std::process::Command;

use molt_abi::ffi::{CONSTANTS, STRUCTS};
use molt_abi::layout::{ConstLayout, FieldLayout, StructLayout};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("abi-header-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Compile `src` (written to `file`) with `compiler` and `flags`; Err holds the diagnostics.
fn compile(compiler: &str, flags: &[&str], file: &Path, src: &str) -> Result<(), String> {
    std::fs::write(file, src).unwrap();
    let out = Command::new(compiler)
        .args(flags)
        .arg("-I")
        .arg(molt_abi::INCLUDE_DIR)
        .arg("-c")
        .arg(file)
        .arg("-o")
        .arg(file.with_extension("o"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e} (install gcc and g++)"));
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

const STRICT_C: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"];
const STRICT_CXX: &[&str] = &["-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic"];

/// The C name of a mirrored field (`self_` is `self` in C).
fn c_field(f: &FieldLayout) -> &str {
    f.name.strip_suffix('_').unwrap_or(f.name)
}

/// C source asserting every layout and constant.
fn assertions(structs: &[StructLayout], consts: &[ConstLayout]) -> String {
    let mut s = String::from("#include <stddef.h>\n#include \"molt.h\"\n#include \"molt.h\"\n\n");
    let mut n = 0;
    let mut check = |cond: String, what: String| {
        n += 1;
        s.push_str(&format!("/* {what} */\ntypedef char molt_drift_{n}[({cond}) ? 1 : -1];\n"));
    };
    for st in structs {
        check(format!("sizeof({}) == {}", st.name, st.size), format!("sizeof {}", st.name));
        check(format!("_Alignof({}) == {}", st.name, st.align), format!("alignof {}", st.name));
        for f in st.fields {
            let c = c_field(f);
            check(format!("offsetof({}, {c}) == {}", st.name, f.offset), format!("{}.{c} offset", st.name));
            check(format!("sizeof(((const {} *)0)->{c}) == {}", st.name, f.size), format!("{}.{c} size", st.name));
        }
    }
    for c in consts {
        check(format!("(long long)({}) == {}LL", c.name, c.value), format!("{} value", c.name));
    }
    s
}

fn check_against_header(structs: &[StructLayout], consts: &[ConstLayout], tag: &str) -> Result<(), String> {
    // _Alignof is C11; the drift file is compiled as C11, the header stays C99-clean (tested below).
    compile(
        "gcc",
        &["-std=c11", "-Wall", "-Wextra", "-Werror"],
        &scratch(&format!("drift_{tag}.c")),
        &assertions(structs, consts),
    )?;
    let header = std::fs::read_to_string(molt_abi::HEADER_PATH).unwrap();
    let not_values = ["MOLT_H", "MOLT_EXPORT", "MOLT_HAS_FIELD", "MOLT_API_HAS", "MOLT_FIXTURE_COMMON_H"];
    let missing: Vec<&str> = header
        .lines()
        .filter_map(|l| l.trim().strip_prefix("#define "))
        .filter_map(|l| l.split(|c: char| c.is_whitespace() || c == '(').next())
        .filter(|name| name.starts_with("MOLT_") && !not_values.contains(name))
        .filter(|name| !consts.iter().any(|c| c.name == *name))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("constants in molt.h missing from the Rust mirror: {missing:?}"))
    }
}

#[test]
fn header_matches_the_rust_mirror() {
    if let Err(e) = check_against_header(STRUCTS, CONSTANTS, "real") {
        panic!("molt.h and abi/src/ffi.rs drifted apart:\n{e}");
    }
}

#[test]
fn drift_check_fails_when_the_mirror_gains_a_field() {
    // molt_event as if a field were appended to the Rust struct only.
    let mut fields: Vec<FieldLayout> = STRUCTS.iter().find(|s| s.name == "molt_event").unwrap().fields.to_vec();
    let last = *fields.last().unwrap();
    fields.push(FieldLayout { name: "extra", offset: last.offset + last.size, size: 8 });
    let fields: &'static [FieldLayout] = Box::leak(fields.into_boxed_slice());
    let structs: Vec<StructLayout> = STRUCTS
        .iter()
        .map(|s| if s.name == "molt_event" { StructLayout { size: s.size + 8, fields, ..*s } } else { *s })
        .collect();
    let err = check_against_header(&structs, CONSTANTS, "extra_field").expect_err("an extra field must fail");
    assert!(err.contains("extra"), "{err}");

    // A constant whose value changed in the mirror only.
    let mut consts = CONSTANTS.to_vec();
    consts.iter_mut().find(|c| c.name == "MOLT_ERR_STALE").unwrap().value = -33;
    assert!(check_against_header(STRUCTS, &consts, "const_value").is_err());

    // A constant the header defines but the mirror dropped.
    let fewer: Vec<ConstLayout> = CONSTANTS.iter().copied().filter(|c| c.name != "MOLT_EV_END").collect();
    let err = check_against_header(STRUCTS, &fewer, "const_missing").expect_err("a missing constant must fail");
    assert!(err.contains("MOLT_EV_END"), "{err}");
}

const DOUBLE_INCLUDE: &str = r#"
#include "molt.h"
#include "molt.h"

static molt_status handler(const molt_ctx *ctx, void *data, const molt_event *ev) {
    (void)data;
    if (MOLT_API_HAS(ctx->api, cont_send) && ev->kind == MOLT_EV_MESSAGE) {
        return ctx->api->cont_send(ctx, ev->source, ev->tag, ev->data, ev->len);
    }
    return MOLT_OK;
}

int molt_header_user(const molt_ctx *ctx, const molt_event *ev);
int molt_header_user(const molt_ctx *ctx, const molt_event *ev) {
    molt_handler_fn h = handler;
    return (int)h(ctx, 0, ev) + (int)MOLT_HAS_FIELD(molt_event, ev, arg1);
}
"#;

#[test]
fn header_double_include_compiles_as_strict_c99() {
    compile("gcc", STRICT_C, &scratch("double_include.c"), DOUBLE_INCLUDE).unwrap_or_else(|e| panic!("C99:\n{e}"));
}

#[test]
fn header_double_include_compiles_as_strict_cxx() {
    compile("g++", STRICT_CXX, &scratch("double_include.cc"), DOUBLE_INCLUDE).unwrap_or_else(|e| panic!("C++:\n{e}"));
}

/// Every C block of `docs/abi.md` is a whole module that compiles and links
/// with the command the page gives (`-std=c99 -Wall -Wextra -Werror
/// -pedantic -O2 -fPIC -shared -fvisibility=hidden`), and exports the entry
/// alone: the docs cannot drift from the header.
#[test]
fn the_c_examples_of_the_abi_doc_compile_with_the_documented_command() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/abi.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let mut blocks = Vec::new();
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```c\n") {
        let body = &rest[start + 5..];
        let end = body.find("```").expect("a closed code block");
        blocks.push(&body[..end]);
        rest = &body[end + 3..];
    }
    assert!(!blocks.is_empty(), "docs/abi.md has no C example");
    let documented =
        ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", "-fPIC", "-shared", "-fvisibility=hidden"];
    assert!(doc.contains(&documented.join(" ")), "the page's build command changed: update this test's flags with it");
    for (i, src) in blocks.iter().enumerate() {
        let file = scratch(&format!("abi_doc_example_{i}.c"));
        std::fs::write(&file, src).unwrap();
        let lib = file.with_extension("so");
        let out = Command::new("gcc")
            .args(documented)
            .arg("-I")
            .arg(molt_abi::INCLUDE_DIR)
            .arg(&file)
            .arg("-o")
            .arg(&lib)
            .output()
            .expect("run gcc");
        assert!(out.status.success(), "C block {i} of docs/abi.md:\n{}", String::from_utf8_lossy(&out.stderr));
        let nm = Command::new("nm").args(["-D", "--defined-only"]).arg(&lib).output().expect("run nm");
        let exported: Vec<String> = String::from_utf8_lossy(&nm.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
            .collect();
        assert_eq!(exported, ["molt_module_entry_v1"], "C block {i} exports more than the entry");
    }
}
