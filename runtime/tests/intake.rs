//! Module intake as a hostile local user would try it: truncated and
//! half-written libraries, FIFOs and devices, a pin bypassed by an in-place
//! edit, libraries in directories others can write, and a symlink flipped
//! between a checked file and another user's library while reloads run.
//! Every refusal leaves the old version serving and the process alive.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{RunDir, module_cfg, module_lib, variant};
use molt_runtime::Runtime;
use molt_runtime::config::ModuleConfig;

fn runtime(dir: &RunDir) -> Runtime {
    common::proxy_runtime(dir.path(), vec![], vec![], &[])
}

fn sha256(p: &Path) -> String {
    molt_runtime::module::registry::sha256_file(p).unwrap()
}

/// A directory of our own, mode 0755, for module files.
fn lib_dir(dir: &RunDir, name: &str) -> PathBuf {
    let d = dir.path().join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn hello_at(dir: &Path, file: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::copy(module_lib("hello"), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// hello answers a message with its greeting: the version serving now.
fn serves(rt: &Runtime) -> bool {
    let v = rt.active("hello").expect("hello is active");
    v.call_direct(1, b"x").is_ok_and(|r| !r.is_empty())
}

#[test]
fn a_truncated_module_is_refused_while_the_old_version_serves() {
    let dir = RunDir::new("intake-trunc");
    let libs = lib_dir(&dir, "libs");
    let good = hello_at(&libs, "libhello.so");
    let rt = runtime(&dir);
    rt.reload(&[module_cfg("hello", &good, &[])]).expect("hello loads");
    let serving = rt.active("hello").unwrap().id();
    let bytes = std::fs::read(&good).unwrap();
    for len in [1_000usize, 5_000, 20_000, 100_000, 300_000, bytes.len() - 1] {
        let len = len.min(bytes.len() - 1);
        let cut = libs.join(format!("cut-{len}.so"));
        std::fs::write(&cut, &bytes[..len]).unwrap();
        std::fs::set_permissions(&cut, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = rt.reload(&[module_cfg("hello", &cut, &[("greeting", "x")])]).expect_err("a truncated file loads");
        let text = e.to_string();
        assert!(text.contains(&cut.display().to_string()), "the error names the file: {text}");
        assert!(text.contains("truncated") || text.contains("ELF"), "{len} bytes: {text}");
        assert_eq!(rt.active("hello").unwrap().id(), serving, "the old version stays active");
        assert!(serves(&rt));
    }
    let kept = std::fs::read_dir(dir.path().join("kept")).unwrap().count();
    assert_eq!(kept, 1, "refused files are not kept for rollback");
    rt.shutdown();
}

fn reload_within(rt: &Runtime, cfg: ModuleConfig, limit: Duration) -> Result<String, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let shared = rt.shared().clone();
    std::thread::spawn(move || {
        let r = shared.registry().reload(&*shared, &[cfg]).map(|_| ()).map_err(|e| e.to_string());
        let _ = tx.send(r);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => Ok("loaded".into()),
        Ok(Err(e)) => Err(e),
        Err(_) => panic!("the reload hung for {limit:?}"),
    }
}

#[test]
fn a_fifo_or_a_device_is_refused_at_once() {
    let dir = RunDir::new("intake-fifo");
    let libs = lib_dir(&dir, "libs");
    let rt = runtime(&dir);
    let fifo = libs.join("fifo.so");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for p in [fifo.as_path(), Path::new("/dev/zero")] {
        let t = Instant::now();
        let e = reload_within(&rt, module_cfg("hello", p, &[]), Duration::from_secs(5)).expect_err("loaded");
        assert!(t.elapsed() < Duration::from_secs(1), "{} took {:?}", p.display(), t.elapsed());
        assert!(e.contains("not a regular file"), "{e}");
    }
    rt.shutdown();
}

#[test]
fn the_pin_is_checked_against_the_bytes_loaded() {
    let dir = RunDir::new("intake-pin");
    let libs = lib_dir(&dir, "libs");
    let v1 = variant(&libs, "hello", 1);
    let v2 = variant(&libs, "hello", 2);
    assert_eq!(std::fs::metadata(&v1).unwrap().len(), std::fs::metadata(&v2).unwrap().len());
    let pin = sha256(&v1);
    let pinned = |greeting: &str| ModuleConfig {
        sha256: Some(pin.clone()),
        ..module_cfg("hello", &v1, &[("greeting", greeting)])
    };
    let rt = runtime(&dir);
    rt.reload(&[pinned("a")]).expect("the pinned file loads");
    // Edit in place: same size, same inode, mtime restored.
    let mtime = std::fs::metadata(&v1).unwrap().modified().unwrap();
    std::fs::write(&v1, std::fs::read(&v2).unwrap()).unwrap();
    std::fs::File::options().write(true).open(&v1).unwrap().set_modified(mtime).unwrap();
    let e = rt.reload(&[pinned("b")]).expect_err("a file that no longer matches its pin loads");
    assert!(e.to_string().contains(&pin), "{e}");
    rt.shutdown();
}

#[test]
fn a_module_in_a_directory_others_can_write_is_refused() {
    let dir = RunDir::new("intake-dirmode");
    let open = lib_dir(&dir, "open");
    let lib = hello_at(&open, "libhello.so");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let rt = runtime(&dir);
    let e = rt.reload(&[module_cfg("hello", &lib, &[])]).expect_err("loaded from a world-writable directory");
    assert!(e.to_string().contains(&open.display().to_string()), "the error names the directory: {e}");
    assert!(e.to_string().contains("writable"), "{e}");
    rt.shutdown();
}

/// As root: a directory owned by another uid holds a symlink that its owner
/// flips between our good library and a library of its own, while we
/// reload through the link. Its library must never be loaded.
#[test]
fn a_symlink_flipped_by_another_user_never_gets_its_library_loaded() {
    if molt_runtime::sys::files::effective_uid() != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root: this test must not skip there");
        eprintln!("skipped: needs root, to run the flipping side as another uid");
        return;
    }
    const NOBODY: u32 = 65534;
    let dir = RunDir::new("intake-race");
    // The files live outside the run dir (which is ours alone, 0700).
    let files = RunDir::new("intake-race-files");
    std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ours = lib_dir(&files, "ours");
    let good = hello_at(&ours, "libhello.so");
    let theirs = lib_dir(&files, "theirs");
    let evil = variant(&theirs, "hello", 7);
    let evil_sha = sha256(&evil);
    for p in [&theirs, &evil] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let link = theirs.join("lib.so");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
    // The flipping side: a thread that gives up root for uid 65534 (set*id
    // is per thread in the kernel) and swaps the link as fast as it can.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flips = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flipper = {
        let flips = flips.clone();
        let (stop, good, evil, theirs, link) = (stop.clone(), good.clone(), evil.clone(), theirs.clone(), link.clone());
        std::thread::spawn(move || {
            use rustix::process::{Gid, Uid};
            let gid = Gid::from_raw(NOBODY);
            let uid = Uid::from_raw(NOBODY);
            rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
            rustix::thread::set_thread_res_uid(uid, uid, uid).unwrap();
            let tmp = theirs.join("tmp");
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                flips.store(n, std::sync::atomic::Ordering::Relaxed);
                let target = if n % 2 == 0 { &evil } else { &good };
                let _ = std::fs::remove_file(&tmp);
                if std::os::unix::fs::symlink(target, &tmp).is_ok() {
                    let _ = std::fs::rename(&tmp, &link);
                }
                n += 1;
            }
            n
        })
    };
    let rt = runtime(&dir);
    let (mut loaded, mut refused, mut evil_loaded) = (0, 0, 0);
    // At least 300 reloads, and until both sides of the flip were met
    // (bounded by 20 s): a load through the link to our library, and a refusal.
    let started = Instant::now();
    let mut i = 0;
    while (i < 300 || loaded == 0 || refused == 0) && started.elapsed() < Duration::from_secs(20) {
        i += 1;
        let g = format!("g{i}");
        match rt.reload(&[module_cfg("hello", &link, &[("greeting", g.as_str())])]) {
            Ok(_) => {
                loaded += 1;
                let copy = rt.active("hello").unwrap().meta().copy.clone();
                if sha256(&copy) == evil_sha {
                    evil_loaded += 1;
                }
            }
            Err(e) => {
                if refused == 0 {
                    eprintln!("first refusal: {e}");
                }
                refused += 1;
            }
        }
        // Give the flipper time to move between reloads.
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    eprintln!("{i} reloads: {loaded} loaded, {refused} refused, {flips} flips");
    assert!(flips > 100 && refused > 0, "the link was not flipped");
    assert_eq!(evil_loaded, 0, "another user's library was loaded {evil_loaded} times in {i} reloads");
    rt.shutdown();
}

#[test]
fn a_descriptor_naming_another_module_is_refused_before_its_init_runs() {
    let dir = RunDir::new("intake-name");
    let rt = runtime(&dir);
    // Its init panics: had it run, the error would say so.
    let e = rt.reload(&[module_cfg("hello", &module_lib("fixture_init_panic"), &[])]).expect_err("loaded");
    let text = e.to_string();
    assert!(text.contains("is module \"fixture_init_panic\", not \"hello\""), "{text}");
    assert!(!text.contains("panicked"), "init ran: {text}");
    rt.shutdown();
}

#[test]
fn a_block_opened_at_another_schema_than_the_descriptor_declares_is_refused() {
    let dir = RunDir::new("intake-schema");
    let rt = runtime(&dir);
    let lib = module_lib("fixture_schema_mismatch");
    let e = rt.reload(&[module_cfg("fixture_schema_mismatch", &lib, &[])]).expect_err("loaded");
    let text = e.to_string();
    assert!(text.contains("schema 1") && text.contains("state_schema 0"), "{text}");
    assert!(rt.shared().loader().host().state.blocks().is_empty(), "no block was made");
    rt.shutdown();
}

#[test]
fn a_refused_reload_leaves_no_state_block_behind() {
    let dir = RunDir::new("intake-revert");
    let rt = runtime(&dir);
    // counter's init opens (creates) its block; the next module refuses the reload.
    let e = rt
        .reload(&[
            module_cfg("counter", &module_lib("counter"), &[]),
            module_cfg("fixture_init_fails", &module_lib("fixture_init_fails"), &[]),
        ])
        .expect_err("loaded");
    assert!(e.to_string().contains("fixture_init_fails"), "{e}");
    let blocks = rt.shared().loader().host().state.blocks();
    assert!(blocks.is_empty(), "a refused candidate's block stays: {blocks:?}");
    // The same module loads fine later and gets a fresh block.
    rt.reload(&[module_cfg("counter", &module_lib("counter"), &[])]).unwrap();
    assert_eq!(rt.shared().loader().host().state.blocks().len(), 1);
    rt.shutdown();
}

#[test]
fn a_refused_candidate_leaves_no_user_arg_reserved() {
    let dir = RunDir::new("intake-userarg");
    let rt = runtime(&dir);
    let lib = module_lib("fixture_user_arg");
    let e = rt.reload(&[module_cfg("fixture_user_arg", &lib, &[])]).expect_err("loaded");
    assert!(e.to_string().contains("refused after reserving"), "{e}");
    let names = rt.shared().loader().host().user_args.names();
    assert!(names.is_empty(), "the refused candidate's reservation stays: {names:?}");
    rt.shutdown();
}
