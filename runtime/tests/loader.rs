//! The loader against real libraries: example modules load and answer,
//! every refusal fixture is refused with its own words, libraries export only
//! the entry, and unloaded libraries really leave memory.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;

use common::{RunDir, mapped, module_lib};
use molt_abi::ffi::MOLT_ERR_PANIC;
use molt_runtime::host::Host;
use molt_runtime::module::{LoadError, Loader, ModuleSpec};

fn loader(dir: &RunDir) -> Loader {
    Loader::new(Arc::new(Host::default()), dir.path()).expect("loader")
}

fn refusal(name: &str) -> String {
    let dir = RunDir::new(name);
    let err = loader(&dir).load(&ModuleSpec::new(module_lib(name))).expect_err("fixture must be refused");
    let versions = std::fs::read_dir(dir.path().join("versions")).unwrap().count();
    assert_eq!(versions, 0, "{name}: the refused module's private copy was removed");
    err.to_string()
}

#[test]
fn hello_loads_answers_with_its_version_and_unloads() {
    let dir = RunDir::new("hello");
    let spec = ModuleSpec { config: vec![("greeting".into(), "hi".into())], ..ModuleSpec::new(module_lib("hello")) };
    let v = loader(&dir).load(&spec).expect("hello loads");
    assert_eq!(v.meta().name, "hello");
    assert_eq!(v.meta().version, "1.0.0");
    assert!(v.meta().copy.starts_with(dir.path().join("versions")), "loaded from a private copy");
    assert!(mapped(&v.meta().copy));
    let replies = v.call_direct(7, b"world").expect("handle_event");
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].tag, 7);
    assert_eq!(String::from_utf8_lossy(&replies[0].data), "hi from hello 1.0.0: world");
    let copy = v.meta().copy.clone();
    let report = v.unload();
    assert!(report.unmapped, "{report:?}");
    assert!(report.copy_removed && !copy.exists());
}

#[test]
fn echo_c_loads_answers_and_unloads() {
    let dir = RunDir::new("echo");
    let spec = ModuleSpec { config: vec![("prefix".into(), "c:".into())], ..ModuleSpec::new(module_lib("echo_c")) };
    let v = loader(&dir).load(&spec).expect("echo_c loads");
    assert_eq!((v.meta().name.as_str(), v.meta().version.as_str()), ("echo_c", "1.0.0"));
    let big = vec![b'x'; 1000];
    let replies = v.call_direct(3, &big).expect("handle_event");
    assert_eq!(replies[0].data.len(), 1002);
    assert!(replies[0].data.starts_with(b"c:xx"));
    let replies = v.call_direct(4, b"ping").expect("handle_event");
    assert_eq!(replies[0].data, b"c:ping");
    let report = v.unload();
    assert!(report.unmapped && report.copy_removed, "{report:?}");
}

#[test]
fn counter_keeps_its_count_in_a_state_block_across_versions() {
    let dir = RunDir::new("counter");
    let l = loader(&dir);
    let lib = module_lib("counter");
    let v1 = l.load(&ModuleSpec::new(&lib)).expect("counter loads");
    for i in 1..=5u64 {
        let r = v1.call_direct(1, b"").expect("increment");
        assert_eq!(u64::from_ne_bytes(r[0].data[..8].try_into().unwrap()), i);
    }
    // A second version of the same module shares the block (same schema).
    let v2 = l.load(&ModuleSpec::new(&lib)).expect("second counter version loads");
    assert_ne!(v1.meta().copy, v2.meta().copy, "each version has its own copy");
    let r = v2.call_direct(2, b"").expect("read");
    assert_eq!(u64::from_ne_bytes(r[0].data[..8].try_into().unwrap()), 5);
    assert!(v1.unload().unmapped);
    let r = v2.call_direct(1, b"").expect("increment");
    assert_eq!(u64::from_ne_bytes(r[0].data[..8].try_into().unwrap()), 6);
    let blocks = l.host().state.blocks();
    assert_eq!(blocks.len(), 1);
    assert_eq!((blocks[0].owner.as_str(), blocks[0].name.as_str(), blocks[0].schema), ("counter", "count", 1));
    // An unknown tag is the module's error, with its words.
    let err = v2.call_direct(9, b"").expect_err("unknown tag");
    assert!(err.text.contains("unknown tag 9"), "{err}");
    assert!(v2.unload().unmapped);
}

#[test]
fn refused_wrong_major() {
    let msg = refusal("fixture_wrong_major");
    assert!(msg.contains("ABI major 2 (expected 1)"), "{msg}");
}

#[test]
fn refused_missing_entry() {
    let msg = refusal("fixture_no_entry");
    assert!(msg.contains("no entry symbol molt_module_entry_v1"), "{msg}");
}

#[test]
fn refused_init_failure_with_its_message() {
    let msg = refusal("fixture_init_fails");
    assert!(msg.contains("init returned MOLT_ERR_NOT_FOUND (-4)"), "{msg}");
    assert!(msg.contains("the config key 'upstream' is required"), "{msg}");
}

#[test]
fn refused_init_panic_with_its_text() {
    let msg = refusal("fixture_init_panic");
    assert!(msg.contains("init panicked: fixture_init_panic: deliberate panic in init"), "{msg}");
    assert!(msg.contains("lib.rs:"), "the panic location is reported: {msg}");
}

#[test]
fn refused_missing_capability_named() {
    let msg = refusal("fixture_needs_cap");
    assert!(msg.contains("missing capability bit 47 (unknown to this host)"), "{msg}");
    assert!(!msg.contains("cont (bit 0)"), "only missing bits are named: {msg}");
}

#[test]
fn refused_descriptor_too_small() {
    let msg = refusal("fixture_small_desc");
    assert!(msg.contains("descriptor too small: 24 bytes"), "{msg}");
}

#[test]
fn refused_not_a_shared_library_and_missing_and_unsafe_files() {
    let dir = RunDir::new("bad-files");
    let l = loader(&dir);
    let text = dir.path().join("notes.so");
    std::fs::write(&text, "this is not a library\n").unwrap();
    let e = l.load(&ModuleSpec::new(&text)).unwrap_err();
    assert!(matches!(e, LoadError::NotSharedLibrary { .. }), "{e}");
    assert!(e.to_string().contains("not a shared library (no ELF header"), "{e}");

    let exe = std::env::current_exe().unwrap();
    let e = l.load(&ModuleSpec::new(&exe)).unwrap_err();
    // A PIE executable is ELF type ET_DYN like a library; dlopen says why it refuses it.
    assert!(e.to_string().contains("cannot dynamically load position-independent executable"), "{e}");

    let e = l.load(&ModuleSpec::new(dir.path().join("absent.so"))).unwrap_err();
    assert!(e.to_string().contains("absent.so: not found"), "{e}");

    let writable = dir.path().join("libwritable.so");
    std::fs::copy(module_lib("hello"), &writable).unwrap();
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = l.load(&ModuleSpec::new(&writable)).unwrap_err();
    assert!(e.to_string().contains("mode 0666 is group- or world-writable"), "{e}");
}

#[test]
fn the_process_keeps_loading_after_every_refusal() {
    let dir = RunDir::new("after");
    let l = loader(&dir);
    for f in
        ["fixture_wrong_major", "fixture_no_entry", "fixture_init_fails", "fixture_init_panic", "fixture_needs_cap"]
    {
        assert!(l.load(&ModuleSpec::new(module_lib(f))).is_err());
    }
    let v = l.load(&ModuleSpec::new(module_lib("hello"))).expect("hello still loads");
    assert_eq!(v.call_direct(1, b"x").unwrap().len(), 1);
}

#[test]
fn rust_module_unmaps_after_a_caught_handler_panic() {
    let dir = RunDir::new("panic");
    let v = loader(&dir).load(&ModuleSpec::new(module_lib("fixture_handler_panic"))).expect("loads");
    assert_eq!(v.call_direct(1, b"ok").unwrap()[0].data, b"ok");
    let err = v.call_direct(0xDEAD, b"").expect_err("the handler panics");
    assert_eq!(err.status, MOLT_ERR_PANIC);
    assert!(err.panicked());
    assert!(err.text.contains("deliberate panic, index 3 of empty vec"), "{err}");
    assert!(v.has_panicked(), "the runtime recorded the panic");
    let again = v.call_direct(1, b"ok").expect_err("a failed instance refuses calls");
    assert!(again.text.contains("panicked earlier"), "{again}");
    let copy = v.meta().copy.clone();
    assert!(mapped(&copy));
    let report = v.unload();
    assert!(report.unmapped, "a Rust module must unmap even after a caught panic: {report:?}");
    assert!(!mapped(&copy) && !copy.exists());
}

#[test]
fn c_module_unmaps_after_unload() {
    let dir = RunDir::new("c-unmap");
    let v = loader(&dir).load(&ModuleSpec::new(module_lib("echo_c"))).expect("loads");
    let copy = v.meta().copy.clone();
    v.call_direct(1, b"x").unwrap();
    assert!(mapped(&copy));
    let report = v.unload();
    assert!(report.unmapped && !mapped(&copy) && !copy.exists(), "{report:?}");
}

#[test]
fn every_module_exports_only_the_entry_symbol() {
    for name in ["echo_c", "hello", "counter", "fixture_handler_panic"] {
        let lib = module_lib(name);
        let out = Command::new("nm").args(["-D", "--defined-only"]).arg(&lib).output().expect("run nm (binutils)");
        assert!(out.status.success());
        let syms: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
            .collect();
        assert_eq!(syms, vec!["molt_module_entry_v1".to_owned()], "{name} exports {syms:?}");
    }
}
