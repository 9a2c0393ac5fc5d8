//! The state region: survives swaps, schema changes, rollbacks, crashes
//! and restarts; refuses corrupt files without touching them.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{RunDir, module_cfg, module_lib, variant};
use molt_runtime::config::SwapMode;
use molt_runtime::module::registry::RegistrySettings;
use molt_runtime::state::format::{self, DATA, DIR_BYTES, DIR0, DIR1, Directory, Entry, F_LIVE};
use molt_runtime::state::{Opened, Region};
use molt_runtime::{Runtime, RuntimeConfig};
use proptest::prelude::*;

fn runtime(dir: &Path) -> Runtime {
    let registry =
        RegistrySettings { max_versions_per_module: 4, drain_deadline: Duration::from_secs(30), dynamic_reload: true };
    Runtime::start(RuntimeConfig { workers: 2, run_dir: dir.to_owned(), registry, ..RuntimeConfig::default() }).unwrap()
}

fn counter_value(rt: &Runtime, c: u64) -> u64 {
    rt.send(c, 2, &[]).unwrap();
    loop {
        let r = rt.next_reply(Duration::from_secs(10)).expect("read reply");
        if r.tag == 2 && r.from == c {
            return u64::from_ne_bytes(r.data[..8].try_into().unwrap());
        }
    }
}

/// Increments from both workers while `counter` is swapped 100 times: up
/// to schema 2 and down to schema 1, by reload and by rollback, and between
/// files of the same schema. The final count equals the acknowledged
/// increments.
#[test]
fn concurrent_increments_survive_100_swaps_with_schema_changes_and_rollbacks() {
    let dir = RunDir::new("state-swaps");
    let files = RunDir::new("state-swaps-files");
    let v1 = [variant(files.path(), "counter", 0), variant(files.path(), "counter", 1)];
    let v2 = [variant(files.path(), "counter_v2", 0), variant(files.path(), "counter_v2", 1)];
    let rt = runtime(dir.path());
    let cfg = |p: &Path| {
        let mut c = module_cfg("counter", p, &[]);
        c.mode = SwapMode::Upgrade;
        vec![c]
    };
    rt.reload(&cfg(&v1[0])).unwrap();
    let conts: Vec<u64> = (0..2).map(|w| rt.spawn(&rt.active("counter").unwrap(), w, 0).unwrap()).collect();
    let (sent, acked, stop) = (AtomicU64::new(0), AtomicU64::new(0), AtomicBool::new(false));
    let schemas = Mutex::new(Vec::new());
    /// Stops the load threads however the scope's body ends (a failed
    /// assertion included), so a failure is reported instead of hanging.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            let mut i = 0usize;
            while !stop.load(Ordering::Acquire) {
                if sent.load(Ordering::Acquire) - acked.load(Ordering::Acquire) > 128 {
                    std::thread::yield_now();
                    continue;
                }
                if let Err(e) = rt.send(conts[i % 2], 1, &[]) {
                    stop.store(true, Ordering::Release);
                    panic!("counter continuations live through every swap: {e:?}");
                }
                sent.fetch_add(1, Ordering::AcqRel);
                i += 1;
            }
        });
        s.spawn(|| {
            loop {
                match rt.next_reply(Duration::from_millis(10)) {
                    Some(r) if r.tag == 1 => {
                        acked.fetch_add(1, Ordering::AcqRel);
                    }
                    Some(r) => {
                        stop.store(true, Ordering::Release);
                        panic!("unexpected reply {r:?}");
                    }
                    None if stop.load(Ordering::Acquire) => {
                        // Give stragglers a moment, then end either way.
                        let deadline = Instant::now() + Duration::from_secs(5);
                        while acked.load(Ordering::Acquire) < sent.load(Ordering::Acquire) && Instant::now() < deadline
                        {
                            if rt.next_reply(Duration::from_millis(10)).is_some_and(|r| r.tag == 1) {
                                acked.fetch_add(1, Ordering::AcqRel);
                            }
                        }
                        return;
                    }
                    None => {}
                }
            }
        });
        // up, rollback (down), rollback (up), down by reload, same schema,
        // up by reload, same schema, down by reload: eight steps, 100 swaps.
        for s in 0..100 {
            let n = s / 8 % 2;
            let r = match s % 8 {
                0 => rt.reload(&cfg(&v2[n])),
                1 | 2 => rt.rollback(),
                3 => rt.reload(&cfg(&v1[n])),
                4 => rt.reload(&cfg(&v1[1 - n])),
                5 => rt.reload(&cfg(&v2[n])),
                6 => rt.reload(&cfg(&v2[1 - n])),
                _ => rt.reload(&cfg(&v1[n])),
            };
            if let Err(e) = r {
                panic!("swap {s} refused: {e}");
            }
            let before = acked.load(Ordering::Acquire);
            let deadline = Instant::now() + Duration::from_secs(10);
            while acked.load(Ordering::Acquire) < before + 20 {
                assert!(Instant::now() < deadline, "swap {s}: increments stopped flowing");
                std::thread::sleep(Duration::from_micros(100));
            }
            schemas.lock().unwrap().push(rt.active("counter").unwrap().meta().state_schema);
        }
        stop.store(true, Ordering::Release);
    });
    let acked = acked.load(Ordering::Acquire);
    assert_eq!(acked, sent.load(Ordering::Acquire));
    assert_eq!(counter_value(&rt, conts[0]), acked, "the count equals the acknowledged increments");
    let schemas = schemas.into_inner().unwrap();
    assert!(schemas.contains(&1) && schemas.contains(&2));
    let changes = schemas.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(changes >= 50, "{changes} schema changes among 100 swaps");
    assert_eq!(rt.total(|s| &s.context_violations), 0);
    // Retired blocks are freed as their schema's versions unload.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.loader().host().state.blocks().len() > 1 {
        assert!(Instant::now() < deadline, "retired blocks remain: {:?}", rt.loader().host().state.blocks());
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("{acked} acknowledged increments across 100 swaps ({changes} schema changes)");
}

/// A new process on the same state file finds the count.
#[test]
fn a_restarted_runtime_finds_its_state() {
    let dir = RunDir::new("state-restart");
    let count = |rt: &Runtime| {
        rt.reload(&[module_cfg("counter", &module_lib("counter"), &[])]).unwrap();
        let c = rt.spawn(&rt.active("counter").unwrap(), 1, 0).unwrap();
        (c, counter_value(rt, c))
    };
    let rt = runtime(dir.path());
    let (c, zero) = count(&rt);
    assert_eq!(zero, 0);
    for _ in 0..25 {
        rt.send(c, 1, &[]).unwrap();
    }
    assert_eq!(counter_value(&rt, c), 25);
    rt.shutdown();
    let rt = runtime(dir.path());
    assert_eq!(count(&rt).1, 25, "the count survived the restart");
    rt.shutdown();
    // A second process cannot open it while one has it.
    let rt = runtime(dir.path());
    let e = Region::open_file(&dir.path().join("state.molt"), 1 << 20, false).unwrap_err();
    assert!(e.to_string().contains("another molt process has it open"), "{e}");
    drop(rt);
}

/// A state file with two blocks, for the corruption tests.
fn sample_file(path: &Path) -> Vec<u8> {
    let r = Region::open_file(path, 1 << 20, false).unwrap();
    for name in ["a", "b"] {
        let Opened::Created { handle, .. } = r.open_block("m", name, 1, 100).unwrap() else { panic!() };
        let (p, _) = r.ptr("m", handle).unwrap();
        // SAFETY: a fresh block of at least 100 bytes.
        unsafe { p.write(7) };
    }
    drop(r);
    std::fs::read(path).unwrap()
}

fn refused(path: &Path, words: &str) {
    let before = std::fs::read(path).unwrap();
    let e = Region::open_file(path, 1 << 20, false).expect_err(words).to_string();
    assert!(e.contains(words), "expected {words:?} in: {e}");
    assert!(e.contains("left untouched") && e.contains("--reset-state"), "{e}");
    assert_eq!(std::fs::read(path).unwrap(), before, "the refused file is byte-for-byte as it was");
}

fn patch(path: &Path, base: &[u8], f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = base.to_vec();
    f(&mut b);
    std::fs::write(path, b).unwrap();
}

#[test]
fn corrupt_files_are_refused_with_their_reason_and_left_untouched() {
    let dir = RunDir::new("state-corrupt");
    let path = dir.path().join("state.molt");
    let good = sample_file(&path);
    let sb_crc = |b: &mut Vec<u8>| {
        let c = crc32fast::hash(&b[..56]);
        b[56..60].copy_from_slice(&c.to_le_bytes());
    };

    patch(&path, &good, |b| b.truncate(b.len() - 4096));
    refused(&path, "size mismatch");
    patch(&path, &good, |b| b.truncate(1000));
    refused(&path, "truncated");
    patch(&path, &good, |b| b[0] ^= 0xff);
    refused(&path, "wrong magic");
    patch(&path, &good, |b| b[20] ^= 0x01);
    refused(&path, "superblock checksum mismatch");
    patch(&path, &good, |b| {
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        sb_crc(b);
    });
    refused(&path, "format version 2 is newer");

    // Which copy is current: the one with the larger sequence.
    let seq = |b: &[u8], at: u64| u64::from_le_bytes(b[at as usize..at as usize + 8].try_into().unwrap());
    let (cur, old) = if seq(&good, DIR0) > seq(&good, DIR1) { (DIR0, DIR1) } else { (DIR1, DIR0) };
    // One flipped byte in the current copy's entry: the previous copy is used.
    patch(&path, &good, |b| b[(cur + 40) as usize] ^= 0x01);
    let r = Region::open_file(&path, 1 << 20, false).unwrap();
    assert_eq!(r.blocks().len(), 1, "the previous directory (one block) is taken");
    drop(r);
    // Flipped bytes in both copies: no valid directory.
    patch(&path, &good, |b| {
        b[(cur + 40) as usize] ^= 0x01;
        b[(old + 12) as usize] ^= 0x01;
    });
    refused(&path, "no valid directory copy (copy 0:");
    // A well-checksummed entry pointing outside the block space.
    patch(&path, &good, |b| {
        let d = Directory {
            seq: 99,
            entries: vec![Entry {
                owner: "m".into(),
                name: "x".into(),
                schema: 1,
                flags: F_LIVE,
                offset: DATA + (1 << 30),
                len: 64,
            }],
        };
        b[cur as usize..(cur + DIR_BYTES) as usize].copy_from_slice(&format::encode_directory(&d));
        b[old as usize..(old + DIR_BYTES) as usize].fill(0xAA);
    });
    refused(&path, "entry 0 (m/x): block");
    // And the untouched sample still opens, with both blocks.
    std::fs::write(&path, &good).unwrap();
    assert_eq!(Region::open_file(&path, 1 << 20, false).unwrap().blocks().len(), 2);
    // --reset-state is the explicit way to discard a corrupt state file...
    patch(&path, &good, |b| {
        b[DIR0 as usize + 8] ^= 0xff;
        b[DIR1 as usize + 8] ^= 0xff;
    });
    assert!(Region::open_file(&path, 1 << 20, false).is_err());
    assert!(Region::open_file(&path, 1 << 20, true).unwrap().blocks().is_empty());
    // ...but not of a file that no longer says it is one: that is removed by hand.
    patch(&path, &good, |b| b[0] ^= 0xff);
    let Err(e) = Region::open_file(&path, 1 << 20, true) else { panic!("reset a file without molt's magic") };
    assert!(e.to_string().contains("not a molt state file"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes never make the opener panic or read out of bounds.
    #[test]
    fn the_opener_survives_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..(DATA as usize + 4096)), len in 0u64..(DATA + 8192)) {
        let _ = Region::validate(&bytes, len);
    }

    /// Random mutations of a valid file: never a panic; when accepted,
    /// every block lies inside the file.
    #[test]
    fn the_opener_survives_mutations(flips in proptest::collection::vec((0usize..(DATA as usize), any::<u8>()), 1..16), cut in proptest::option::of(0u64..DATA)) {
        let good = valid_image();
        let mut b = good.clone();
        for (at, x) in flips {
            b[at] ^= x;
        }
        let len = cut.unwrap_or(b.len() as u64);
        b.truncate(len as usize);
        if let Ok((sb, dir, _)) = Region::validate(&b, len) {
            for e in &dir.entries {
                prop_assert!(e.offset >= DATA && e.offset + e.len <= sb.file_size);
            }
        }
    }
}

fn valid_image() -> Vec<u8> {
    let size = DATA + 8192;
    let mut b = vec![0u8; size as usize];
    b[..4096].copy_from_slice(&format::encode_superblock(&format::Superblock { file_size: size }));
    let d = Directory {
        seq: 3,
        entries: vec![
            Entry { owner: "m".into(), name: "a".into(), schema: 1, flags: F_LIVE, offset: DATA, len: 64 },
            Entry { owner: "m".into(), name: "b".into(), schema: 2, flags: F_LIVE, offset: DATA + 64, len: 4096 },
        ],
    };
    b[DIR0 as usize..(DIR0 + DIR_BYTES) as usize].copy_from_slice(&format::encode_directory(&d));
    b[DIR1 as usize..(DIR1 + DIR_BYTES) as usize]
        .copy_from_slice(&format::encode_directory(&Directory { seq: 2, entries: d.entries[..1].to_vec() }));
    b
}

/// The crash child: runs increments, block allocations and migrations on the
/// state file named by `MOLT_STATE_CRASH_FILE` until it is killed; prints
/// `ack <count>` after each increment is in the mapping.
#[test]
#[ignore = "the child process of the_region_survives_200_sigkills, run by it"]
fn crash_child() {
    let Some(path) = std::env::var_os("MOLT_STATE_CRASH_FILE") else { return };
    let r = Region::open_file(Path::new(&path), 1 << 20, false).unwrap();
    let word = |schema: u32| if schema == 1 { 0 } else { 1 };
    let mut schema = r.blocks().iter().find(|b| b.name == "count").map_or(1, |b| b.schema);
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let (Opened::Existing { handle, .. } | Opened::Created { handle, .. }) =
            r.open_block("crash", "count", schema, 64).unwrap()
        else {
            panic!("count block in migration")
        };
        let (p, _) = r.ptr("crash", handle).unwrap();
        // SAFETY: a 64-byte live block, 64-byte aligned, in the mapping.
        let words = unsafe { std::slice::from_raw_parts(p.cast::<AtomicU64>(), 8) };
        let n = words[word(schema)].fetch_add(1, Ordering::SeqCst) + 1;
        std::io::Write::write_fmt(&mut out, format_args!("ack {n}\n")).unwrap();
        std::io::Write::flush(&mut out).unwrap();
        if i % 5 == 4 {
            // A migration to the other schema, as the host does it.
            let to = 3 - schema;
            let Opened::NeedsMigration { src, dst, .. } = r.open_block("crash", "count", to, 64).unwrap() else {
                panic!()
            };
            let (s, _) = r.ptr("crash", src).unwrap();
            let (d, _) = r.ptr("crash", dst).unwrap();
            // SAFETY: both blocks are live in the mapping, 64 bytes each.
            let (sw, dw) = unsafe {
                (
                    std::slice::from_raw_parts(s.cast::<AtomicU64>(), 8),
                    std::slice::from_raw_parts(d.cast::<AtomicU64>(), 8),
                )
            };
            dw[word(to)].store(sw[word(schema)].load(Ordering::SeqCst), Ordering::SeqCst);
            r.commit_migration(src, dst).unwrap();
            r.release_retired("crash", schema);
            schema = to;
        }
        if i % 3 == 0 {
            // Allocation churn: a block of varying size, replaced each time.
            let name = format!("junk{}", i % 4);
            if let Opened::NeedsMigration { src, dst, from_schema, .. } =
                r.open_block("crash", &name, (i % 7) as u32 + 1, 64 + (i % 13) * 512).unwrap()
            {
                r.commit_migration(src, dst).unwrap();
                r.release_retired("crash", from_schema);
            }
        }
    }
}

/// One crash round: run crash child `test` with `env`, read its `ack N`
/// lines until `acks` of them (or until `wait` after the last one read),
/// SIGKILL it, and return the last acknowledged count (`last` if none came).
fn crash_round(test: &str, env: (&str, &Path), acks: u64, wait: Duration, mut last: u64) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(env.0, env.1)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let (mut line, mut seen) = (String::new(), 0);
    while seen < acks {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(n) = line.trim().strip_prefix("ack ") {
            last = n.parse().unwrap();
            seen += 1;
        }
    }
    assert!(seen > 0, "the crash child {test} acknowledged nothing");
    std::thread::sleep(wait);
    child.kill().unwrap();
    // Acks printed before the kill landed are still in the pipe.
    for l in reader.lines().map_while(Result::ok) {
        if let Some(n) = l.trim().strip_prefix("ack ") {
            last = n.parse().unwrap();
        }
    }
    child.wait().unwrap();
    last
}

/// A tiny xorshift for crash timing, reproducible per test.
fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

/// SIGKILL at random points of increments, allocations and migrations, 200
/// times: the file always reopens valid, with the count's block in the old
/// or the new schema, and the count at the last acknowledgement (or one
/// past it: an increment made but not yet acknowledged).
#[test]
fn the_region_survives_200_sigkills() {
    let dir = RunDir::new("state-crash");
    let path = dir.path().join("state.molt");
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut last_ack = 0u64;
    for round in 0..200 {
        let acks = 1 + next(&mut rng) % 40;
        last_ack = crash_round("crash_child", ("MOLT_STATE_CRASH_FILE", &path), acks, Duration::ZERO, last_ack);
        let r = Region::open_file(&path, 1 << 20, false).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let b = r.blocks().into_iter().find(|b| b.name == "count").expect("count block");
        assert!(b.schema == 1 || b.schema == 2);
        let (p, _) = r
            .ptr(
                "crash",
                r.open_block("crash", "count", b.schema, 64)
                    .map(|o| match o {
                        Opened::Existing { handle, .. } => handle,
                        other => panic!("round {round}: {other:?}"),
                    })
                    .unwrap(),
            )
            .unwrap();
        // SAFETY: the live 64-byte block in the mapping.
        let words = unsafe { std::slice::from_raw_parts(p.cast::<AtomicU64>(), 8) };
        let count = words[if b.schema == 1 { 0 } else { 1 }].load(Ordering::SeqCst);
        assert!(
            count == last_ack || count == last_ack + 1,
            "round {round}: count {count}, last acknowledged {last_ack}"
        );
        last_ack = count;
    }
    assert!(last_ack >= 200, "the children made progress ({last_ack} increments)");
}

/// The runtime crash child: a real runtime on `MOLT_RT_CRASH_DIR`, counter
/// continuations on both workers, increments acknowledged on stdout, and a
/// schema-changing reload (counter 1 <-> 2: block allocation, migration,
/// adoption) every few increments, until it is killed.
#[test]
#[ignore = "the child process of the_runtime_survives_200_sigkills_during_swaps, run by it"]
fn runtime_crash_child() {
    let Some(dir) = std::env::var_os("MOLT_RT_CRASH_DIR") else { return };
    let dir = Path::new(&dir);
    let files = [dir.join("libcounter-v1.so"), dir.join("libcounter-v2.so")];
    let rt = runtime(&dir.join("run"));
    let cfg = |p: &Path| {
        let mut c = module_cfg("counter", p, &[]);
        c.mode = SwapMode::Upgrade;
        vec![c]
    };
    // The first load of a process migrates when the file holds the other
    // schema: either version can start.
    let mut on = 0;
    rt.reload(&cfg(&files[on])).unwrap_or_else(|_| {
        on = 1;
        rt.reload(&cfg(&files[on])).unwrap()
    });
    let conts: Vec<u64> = (0..2).map(|w| rt.spawn(&rt.active("counter").unwrap(), w, 0).unwrap()).collect();
    let mut out = std::io::stdout().lock();
    for i in 0usize.. {
        rt.send(conts[i % 2], 1, &[]).unwrap();
        let n = loop {
            let r = rt.next_reply(Duration::from_secs(10)).expect("increment reply");
            if r.tag == 1 {
                break u64::from_ne_bytes(r.data[..8].try_into().unwrap());
            }
        };
        std::io::Write::write_fmt(&mut out, format_args!("ack {n}\n")).unwrap();
        std::io::Write::flush(&mut out).unwrap();
        if i % 3 == 2 {
            on = 1 - on;
            rt.reload(&cfg(&files[on])).unwrap();
        }
    }
}

/// SIGKILL a running runtime at random points of increments and
/// schema-changing swaps, 200 times: the state file always reopens, with
/// the count's block in schema 1 or 2 and the count at the last
/// acknowledged increment (or one past it).
#[test]
fn the_runtime_survives_200_sigkills_during_swaps() {
    let dir = RunDir::new("state-rt-crash");
    std::fs::copy(module_lib("counter"), dir.path().join("libcounter-v1.so")).unwrap();
    std::fs::copy(module_lib("counter_v2"), dir.path().join("libcounter-v2.so")).unwrap();
    let state = dir.path().join("run/state.molt");
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut last_ack = 0u64;
    for round in 0..200 {
        let acks = 1 + next(&mut rng) % 12;
        // Kill at a random instant after the last read acknowledgement.
        let wait = Duration::from_micros(next(&mut rng) % 3000);
        last_ack = crash_round("runtime_crash_child", ("MOLT_RT_CRASH_DIR", dir.path()), acks, wait, last_ack);
        let r = Region::open_file(&state, 1 << 20, false).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let b = r.blocks().into_iter().find(|b| b.owner == "counter" && b.name == "count").expect("count block");
        let Opened::Existing { handle, .. } = r.open_block("counter", "count", b.schema, 64).unwrap() else { panic!() };
        let (p, _) = r.ptr("counter", handle).unwrap();
        // SAFETY: the live 64-byte block in the mapping.
        let words = unsafe { std::slice::from_raw_parts(p.cast::<AtomicU64>(), 8) };
        let count = match b.schema {
            1 => words[0].load(Ordering::SeqCst),
            2 => {
                assert_eq!(words[0].load(Ordering::SeqCst), 0x5C4E_0002, "round {round}: schema 2 layout");
                words[1].load(Ordering::SeqCst)
            }
            s => panic!("round {round}: schema {s}"),
        };
        assert!(
            count == last_ack || count == last_ack + 1,
            "round {round}: count {count}, last acknowledged {last_ack}"
        );
        last_ack = count;
    }
    assert!(last_ack >= 200, "the children made progress ({last_ack} increments)");
}

/// Regression: a migration made by a module loaded outside any reload
/// (`Runtime::load`) used to leave its module's other versions held, their
/// events parked forever.
#[test]
fn a_migration_outside_a_reload_does_not_hold_events_forever() {
    let dir = RunDir::new("state-outside");
    let rt = runtime(dir.path());
    let v1 = rt.load(&molt_runtime::module::ModuleSpec::new(module_lib("counter"))).unwrap();
    let c1 = rt.spawn(&v1, 0, 0).unwrap();
    let _v2 = rt.load(&molt_runtime::module::ModuleSpec::new(module_lib("counter_v2"))).unwrap();
    rt.send(c1, 2, &[]).unwrap();
    let r = rt.next_reply(Duration::from_secs(5)).expect("the old version's event is not held forever");
    assert_eq!(r.from, c1);
}

/// A block opened lazily (in handle_event, on a worker) by a version whose
/// schema differs from the block's, while the older version is still
/// loaded: the migration it would need waits for every worker, its own
/// included, so the worker deadlocked. Migrations run only in a reload (or
/// a first load) now: the open is refused with MOLT_ERR_PHASE.
#[test]
fn a_lazy_state_open_needing_a_migration_on_a_worker_is_refused_not_deadlocked() {
    let dir = RunDir::new("state-lazy");
    let rt = common::proxy_runtime(dir.path(), vec![], vec![], &[]);
    let cfg = |lib: &str| module_cfg("fixture_lazy", &module_lib(lib), &[]);
    let status_of = |rt: &molt_runtime::Runtime, cont: u64| -> Option<i32> {
        rt.send(cont, 1, &[]).unwrap();
        let r = rt.next_reply(Duration::from_secs(5))?;
        Some(i32::from_le_bytes(r.data[..4].try_into().unwrap()))
    };
    rt.reload(&[cfg("fixture_lazy_v1")]).unwrap();
    let v1 = rt.active("fixture_lazy").unwrap();
    let c1 = rt.spawn(&v1, 0, 0).unwrap();
    assert_eq!(status_of(&rt, c1), Some(0), "v1 creates its block lazily");
    // v2 (schema 2) beside v1, which stays loaded: c1 lives.
    rt.reload(&[cfg("fixture_lazy_v2")]).unwrap();
    let v2 = rt.active("fixture_lazy").unwrap();
    let c2 = rt.spawn(&v2, 1, 0).unwrap();
    let got = status_of(&rt, c2);
    if got.is_none() {
        // The worker is stuck: shutting down would wait for it forever.
        std::mem::forget(rt);
        panic!("no answer in 5 s: the worker deadlocked in the migration");
    }
    assert_eq!(got, Some(molt_abi::ffi::MOLT_ERR_PHASE), "the lazy open needing a migration is refused");
    // The block is untouched, at schema 1, live.
    let blocks = rt.shared().loader().host().state.blocks();
    assert!(blocks.iter().any(|b| b.schema == 1 && b.state == "live"), "{blocks:?}");
    let _ = rt.destroy(c1);
    let _ = rt.destroy(c2);
    drop((v1, v2));
    rt.shutdown();
}

/// An empty file at the state path is refused as damaged (a count of 53
/// became 0 when it was silently formatted anew); `--reset-state` makes it
/// a fresh state file. A new state file appears whole, by rename.
#[test]
fn an_empty_state_file_is_refused_and_a_new_one_appears_whole() {
    let dir = RunDir::new("state-empty");
    let path = dir.path().join("state.molt");
    std::fs::write(&path, b"").unwrap();
    let Err(e) = Region::open_file(&path, 1 << 20, false) else { panic!("an empty state file opened") };
    assert!(e.to_string().contains("empty"), "{e}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left untouched");
    assert!(Region::open_file(&path, 1 << 20, true).is_ok(), "--reset-state makes it anew");
    let fresh = dir.path().join("fresh.molt");
    drop(Region::open_file(&fresh, 1 << 20, false).unwrap());
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains(".new-")), "a temporary file was left: {names:?}");
    assert!(Region::open_file(&fresh, 1 << 20, false).is_ok(), "the new file reopens");
}

/// A directory at sequence number 2^64-1 (a damaged or forged file): the
/// next commit is refused, where it wrapped to 0 and was lost on reopen
/// (the older copy then looked newer).
#[test]
fn the_directory_sequence_number_never_wraps() {
    let dir = RunDir::new("state-seq");
    let path = dir.path().join("state.molt");
    drop(Region::open_file(&path, 1 << 20, false).unwrap());
    let good = std::fs::read(&path).unwrap();
    patch(&path, &good, |b| {
        let d = format::encode_directory(&Directory { seq: u64::MAX, entries: vec![] });
        b[DIR0 as usize..(DIR0 + DIR_BYTES) as usize].copy_from_slice(&d);
    });
    let r = Region::open_file(&path, 1 << 20, false).unwrap();
    let e = match r.open_block("m", "x", 1, 64) {
        Err((_, e)) => e,
        Ok(_) => panic!("a commit past 2^64-1 went through"),
    };
    assert!(e.contains("sequence number"), "{e}");
}

/// A damaged newer directory copy: the older one is used, and that is said
/// (in the log and in `Region::warning`, which status shows), never silent.
#[test]
fn a_fall_back_to_the_older_directory_copy_is_reported() {
    let dir = RunDir::new("state-fallback");
    let path = dir.path().join("state.molt");
    {
        let r = Region::open_file(&path, 1 << 20, false).unwrap();
        assert!(r.warning().is_none());
        r.open_block("m", "a", 1, 64).unwrap();
        r.open_block("m", "b", 1, 64).unwrap();
    }
    let good = std::fs::read(&path).unwrap();
    // Seq 1 is in copy 0, 2 in copy 1, 3 in copy 0: damage copy 0, the newest.
    patch(&path, &good, |b| b[DIR0 as usize + 40] ^= 0xff);
    let r = Region::open_file(&path, 1 << 20, false).unwrap();
    let w = r.warning().expect("the fall-back is reported");
    assert!(w.contains("copy 0 is damaged") && w.contains("sequence 2"), "{w}");
    assert_eq!(r.blocks().len(), 1, "the older copy knows one block");
}

/// A restart whose config names an older schema than the state file's
/// block (a downgrade that did not finish): refused, with the way out.
#[test]
fn a_restart_below_the_blocks_schema_names_the_way_out() {
    let dir = RunDir::new("state-downgrade");
    let rt = common::proxy_runtime(dir.path(), vec![], vec![], &[]);
    rt.reload(&[module_cfg("counter", &module_lib("counter_v2"), &[])]).unwrap();
    rt.shutdown();
    let rt = common::proxy_runtime(dir.path(), vec![], vec![], &[]);
    let e = rt.reload(&[module_cfg("counter", &module_lib("counter"), &[])]).expect_err("loaded below the schema");
    let text = e.to_string();
    assert!(text.contains("speaks schema 2") && text.contains("--reset-state"), "{text}");
    rt.shutdown();
}
