//! Hot swap under load, with real libraries and real worker threads.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{RunDir, mapped, module_cfg, module_lib, open_fds, rss_bytes, variant};
use fixture_probe::tag;
use molt_runtime::config::SwapMode;
use molt_runtime::module::VersionId;
use molt_runtime::module::registry::{RegistrySettings, ReloadError};
use molt_runtime::{Runtime, RuntimeConfig};

const W: u32 = 2;

fn runtime(dir: &RunDir, cap: usize) -> Runtime {
    let registry = RegistrySettings {
        max_versions_per_module: cap,
        drain_deadline: Duration::from_secs(30),
        dynamic_reload: true,
    };
    Runtime::start(RuntimeConfig {
        workers: W as usize,
        run_dir: dir.path().to_owned(),
        registry,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
}

/// The continuations load is sent to: one probe and one echo per worker.
struct Targets {
    epoch: usize,
    probes: Vec<u64>,
    echoes: Vec<u64>,
}

fn spawn_targets(rt: &Runtime, epoch: usize) -> Targets {
    let probe = rt.active("fixture_probe").expect("probe active");
    let echo = rt.active("echo_c").expect("echo active");
    Targets {
        epoch,
        probes: (0..W).map(|w| rt.spawn(&probe, w, 0).unwrap()).collect(),
        echoes: (0..W).map(|w| rt.spawn(&echo, w, 0).unwrap()).collect(),
    }
}

#[derive(Default)]
struct Ledger {
    sent: Vec<u64>,
    received: Vec<u64>,
    probe_version: Vec<VersionId>,
}

/// 1,000 swaps of a C module (echo_c) and a Rust module (fixture_probe)
/// while both workers send and handle events continuously: every event is
/// handled exactly once, by the versions of the generation it was sent in;
/// every replaced version, Rust included (some after caught panics), is
/// unmapped; runtime copies are removed; fds and RSS stay bounded (bounds:
/// at most 16 more fds and 16 MiB more RSS at the end than after swap 100;
/// the test's own bookkeeping is a bit per event).
#[test]
fn swap_c_and_rust_modules_1000_times_under_load() {
    if common::in_own_process("swap_c_and_rust_modules_1000_times_under_load") {
        return;
    }
    const SWAPS: usize = 1000;
    let dir = RunDir::new("swap1000");
    let files = RunDir::new("swap1000-files");
    let echo_files = [variant(files.path(), "echo_c", 0), variant(files.path(), "echo_c", 1)];
    let probe_files = [variant(files.path(), "fixture_probe", 0), variant(files.path(), "fixture_probe", 1)];
    let rt = runtime(&dir, 6);
    let config = |s: usize| {
        let prefix = format!("g{s}:");
        vec![
            module_cfg("echo_c", &echo_files[s % 2], &[("prefix", prefix.as_str())]),
            module_cfg("fixture_probe", &probe_files[s % 2], &[]),
        ]
    };
    rt.reload(&config(0)).expect("initial load");
    let targets = Mutex::new(spawn_targets(&rt, 0));
    let ledger = Mutex::new(Ledger {
        sent: vec![0],
        received: vec![0],
        probe_version: vec![rt.active("fixture_probe").unwrap().id()],
    });
    let (sent_total, received_total) = (AtomicU64::new(0), AtomicU64::new(0));
    let (stop_send, stop_recv) = (AtomicBool::new(false), AtomicBool::new(false));
    // One bit per event (a map of every event would be the test's own
    // memory growth, which the RSS bound below is not about), and a count
    // of events seen twice.
    let seen = Mutex::new((Vec::<u64>::new(), 0u64));
    let errors = Mutex::new(Vec::<String>::new());
    let mut marks = None;
    let t0 = Instant::now();

    std::thread::scope(|scope| {
        // Sender: bounded in-flight, continuous until told to stop.
        scope.spawn(|| {
            let mut i = 0u64;
            while !stop_send.load(Ordering::Acquire) {
                if sent_total.load(Ordering::Acquire) - received_total.load(Ordering::Acquire) > 256 {
                    std::thread::yield_now();
                    continue;
                }
                let t = targets.lock().unwrap();
                let (w, w2) = ((i % W as u64) as usize, ((i / 2) % W as u64) as usize);
                let mut m = t.echoes[w2].to_le_bytes().to_vec();
                m.extend_from_slice(&(tag::RELAY_BASE + i).to_le_bytes());
                m.extend_from_slice(&i.to_le_bytes());
                m.extend_from_slice(&(t.epoch as u64).to_le_bytes());
                if let Err(e) = rt.send(t.probes[w], tag::FORWARD, &m) {
                    errors.lock().unwrap().push(format!("send {i} to a live probe failed: {e:?}"));
                    return;
                }
                ledger.lock().unwrap().sent[t.epoch] += 1;
                sent_total.fetch_add(1, Ordering::AcqRel);
                drop(t);
                i += 1;
            }
        });
        // Receiver: checks who handled each event.
        scope.spawn(|| {
            while !stop_recv.load(Ordering::Acquire) {
                let Some(r) = rt.next_reply(Duration::from_millis(10)) else { continue };
                if r.tag < tag::RELAY_BASE {
                    continue;
                }
                let n = r.data.len();
                let (i, epoch) = (u64_at(&r.data, n - 16), u64_at(&r.data, n - 8) as usize);
                let mut l = ledger.lock().unwrap();
                let mut bad = Vec::new();
                if r.tag - tag::RELAY_BASE != i {
                    bad.push(format!("event {i} came back with tag {:#x}", r.tag));
                }
                if !r.data.starts_with(format!("g{epoch}:").as_bytes()) {
                    bad.push(format!(
                        "event {i} of epoch {epoch} was echoed by another echo version: {:?}",
                        String::from_utf8_lossy(&r.data[..n - 16])
                    ));
                }
                if l.probe_version.get(epoch) != Some(&r.version) {
                    bad.push(format!("event {i} of epoch {epoch} was relayed by {} not the epoch's probe", r.version));
                }
                l.received[epoch] += 1;
                drop(l);
                {
                    let mut g = seen.lock().unwrap();
                    let (bits, twice) = &mut *g;
                    let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
                    if bits.len() <= word {
                        bits.resize(word + 1024, 0);
                    }
                    if bits[word] & bit != 0 {
                        *twice += 1;
                    }
                    bits[word] |= bit;
                }
                received_total.fetch_add(1, Ordering::AcqRel);
                if !bad.is_empty() {
                    errors.lock().unwrap().extend(bad);
                }
            }
        });

        for s in 1..=SWAPS {
            if let Err(e) = rt.reload(&config(s)) {
                panic!("swap {s} refused: {e}");
            }
            let fresh = spawn_targets(&rt, s);
            {
                let mut l = ledger.lock().unwrap();
                l.sent.push(0);
                l.received.push(0);
                l.probe_version.push(rt.active("fixture_probe").unwrap().id());
            }
            let old = std::mem::replace(&mut *targets.lock().unwrap(), fresh);
            // Old work finishes on old code: wait for every event sent to the old epoch.
            wait_until("the old epoch's events", Duration::from_secs(20), || {
                let l = ledger.lock().unwrap();
                l.received[old.epoch] == l.sent[old.epoch]
            });
            if s % 50 == 0 {
                let before = rt.total(|st| &st.panics);
                for p in &old.probes {
                    rt.send(*p, tag::PANIC, &[]).unwrap();
                }
                wait_until("the old probes' panics", Duration::from_secs(10), || {
                    rt.total(|st| &st.panics) >= before + W as u64
                });
            }
            for id in old.probes.iter().chain(&old.echoes) {
                rt.destroy(*id).unwrap();
            }
            if s == 100 {
                marks = Some((open_fds(), rss_bytes()));
            }
        }
        stop_send.store(true, Ordering::Release);
        // The sender may be mid-send: read the total only after it stopped.
        std::thread::sleep(Duration::from_millis(20));
        wait_until("every event answered", Duration::from_secs(30), || {
            received_total.load(Ordering::Acquire) == sent_total.load(Ordering::Acquire)
        });
        stop_recv.store(true, Ordering::Release);
    });
    let elapsed = t0.elapsed();

    let errors = errors.into_inner().unwrap();
    assert!(errors.is_empty(), "{} errors, first: {:?}", errors.len(), &errors[..errors.len().min(5)]);
    let total = sent_total.load(Ordering::Acquire);
    let seen = seen.into_inner().unwrap();
    assert!(total > SWAPS as u64 * 10, "the load ran continuously ({total} events)");
    let (bits, twice) = seen;
    let has = |i: u64| bits.get((i / 64) as usize).is_some_and(|w| w & (1u64 << (i % 64)) != 0);
    assert_eq!(twice, 0, "no event was handled twice");
    assert!((0..total).all(has), "no event was lost");
    assert_eq!(
        bits.iter().map(|w| u64::from(w.count_ones())).sum::<u64>(),
        total,
        "every event came back, and no other"
    );

    // Every replaced version leaves memory, and its runtime copy with it.
    let last = targets.into_inner().unwrap();
    for id in last.probes.iter().chain(&last.echoes) {
        rt.destroy(*id).unwrap();
    }
    let active: Vec<VersionId> = ["echo_c", "fixture_probe"].iter().map(|m| rt.active(m).unwrap().id()).collect();
    wait_until("every replaced version unloaded", Duration::from_secs(20), || {
        rt.shared().versions().iter().all(|r| active.contains(&r.meta.id) || !r.is_loaded())
    });
    let unloads = rt.unloads();
    assert_eq!(unloads.len(), 2 * SWAPS, "every replaced version of both modules unloaded");
    for u in &unloads {
        assert!(u.pinned.is_none() && u.unmapped && u.copy_removed, "{u:?}");
    }
    for r in rt.shared().versions() {
        if !active.contains(&r.meta.id) {
            assert!(!mapped(&r.meta.copy), "{} still mapped", r.meta.copy.display());
        }
    }
    let copies = std::fs::read_dir(dir.path().join("versions")).unwrap().count();
    assert_eq!(copies, 2, "only the active versions' runtime copies remain");
    let (fds0, rss0) = marks.unwrap();
    let (fds1, rss1) = (open_fds(), rss_bytes());
    assert!(fds1 <= fds0 + 16, "fds grew from {fds0} to {fds1}");
    assert!(rss1 <= rss0 + (16 << 20), "RSS grew from {rss0} to {rss1}");
    assert_eq!(rt.total(|s| &s.context_violations), 0);
    eprintln!(
        "{SWAPS} swaps of 2 modules under load: {total} events in {elapsed:?}, fds {fds0}->{fds1}, RSS {} MiB -> {} MiB",
        rss0 >> 20,
        rss1 >> 20
    );
}

/// A sender that keeps one module busy and counts answers, for the tests
/// that need "no event lost while X".
struct Busy<'a> {
    rt: &'a Runtime,
    sent: AtomicU64,
    answered: AtomicU64,
    stop: AtomicBool,
    /// Replies that are not the load's: the receiver is the channel's only reader.
    others: Mutex<Vec<molt_runtime::host::Reply>>,
}

impl<'a> Busy<'a> {
    fn new(rt: &'a Runtime) -> Busy<'a> {
        Busy {
            rt,
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            others: Mutex::new(Vec::new()),
        }
    }

    /// Wait for a reply with `tag` that is not the load's.
    fn other(&self, tag: u64) -> molt_runtime::host::Reply {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let mut o = self.others.lock().unwrap();
                if let Some(i) = o.iter().position(|r| r.tag == tag) {
                    return o.remove(i);
                }
            }
            assert!(Instant::now() < deadline, "no reply with tag {tag}");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Send ECHO to `target` until stopped; count ECHO replies.
    fn run<'scope, 'env: 'scope>(&'env self, scope: &'scope std::thread::Scope<'scope, 'env>, target: u64) {
        scope.spawn(move || {
            while !self.stop.load(Ordering::Acquire) {
                if self.sent.load(Ordering::Acquire) - self.answered.load(Ordering::Acquire) > 64 {
                    std::thread::yield_now();
                    continue;
                }
                self.rt.send(target, tag::ECHO, b"x").expect("the old generation's continuation keeps serving");
                self.sent.fetch_add(1, Ordering::AcqRel);
            }
        });
        scope.spawn(move || {
            loop {
                match self.rt.next_reply(Duration::from_millis(10)) {
                    Some(r) if r.tag == tag::ECHO => {
                        self.answered.fetch_add(1, Ordering::AcqRel);
                    }
                    Some(r) => self.others.lock().unwrap().push(r),
                    None if self.stop.load(Ordering::Acquire)
                        && self.answered.load(Ordering::Acquire) == self.sent.load(Ordering::Acquire) =>
                    {
                        return;
                    }
                    None => {}
                }
            }
        });
    }

    fn finish(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Each bad candidate is refused with its own words; the old generation
/// keeps handling events, none lost.
#[test]
fn bad_candidates_are_refused_and_the_old_generation_keeps_serving() {
    use std::os::unix::fs::PermissionsExt;
    let dir = RunDir::new("bad-candidates");
    let files = RunDir::new("bad-candidates-files");
    let rt = runtime(&dir, 4);
    let good = variant(files.path(), "fixture_probe", 0);
    rt.reload(&[module_cfg("fixture_probe", &good, &[])]).unwrap();
    let v = rt.active("fixture_probe").unwrap();
    let c = rt.spawn(&v, 1, 0).unwrap();

    let text = files.path().join("libtext.so");
    std::fs::write(&text, "not a library").unwrap();
    let writable = variant(files.path(), "fixture_probe", 9);
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut pinned = module_cfg("fixture_probe", &variant(files.path(), "fixture_probe", 3), &[]);
    pinned.sha256 = Some("0".repeat(64));
    let p = |f: &str| module_cfg("fixture_probe", &module_lib(f), &[]);
    // A fixture declared under its own name, next to the serving probe.
    let beside = |f: &str| vec![module_cfg("fixture_probe", &good, &[]), module_cfg(f, &module_lib(f), &[])];
    let one = |c| vec![c];
    let cases: Vec<(&str, Vec<molt_runtime::config::ModuleConfig>, &str)> = vec![
        (
            "missing file",
            one(module_cfg("fixture_probe", &files.path().join("absent.so"), &[])),
            "absent.so: not found",
        ),
        ("not a library", one(module_cfg("fixture_probe", &text, &[])), "not a shared library (no ELF header"),
        ("wrong ABI major", one(p("fixture_wrong_major")), "ABI major 2 (expected 1)"),
        (
            "init failure",
            beside("fixture_init_fails"),
            "init returned MOLT_ERR_NOT_FOUND (-4): fixture_init_fails: the config key 'upstream' is required",
        ),
        ("init panic", beside("fixture_init_panic"), "init panicked: fixture_init_panic: deliberate panic in init"),
        ("sha256 mismatch", one(pinned), "but the config pins 0000"),
        (
            "world-writable file",
            one(module_cfg("fixture_probe", &writable, &[])),
            "mode 0666 is group- or world-writable",
        ),
        // Refused from the descriptor, before its init runs.
        ("wrong module name", one(module_cfg("fixture_probe", &module_lib("hello"), &[])), "is module \"hello\""),
    ];
    let busy = Busy::new(&rt);
    std::thread::scope(|scope| {
        busy.run(scope, c);
        for (what, cfgs, words) in cases {
            let before = busy.answered.load(Ordering::Acquire);
            let e = rt.reload(&cfgs).expect_err(what);
            let msg = e.to_string();
            assert!(msg.contains(words), "{what}: {msg}");
            let named = format!("module {}: ", cfgs.last().unwrap().name);
            assert!(msg.starts_with(&named), "{what}: the error names the module: {msg}");
            assert_eq!(rt.active("fixture_probe").unwrap().id(), v.id(), "{what}: the active generation is untouched");
            wait_until("the old generation answering", Duration::from_secs(10), || {
                busy.answered.load(Ordering::Acquire) > before + 10
            });
        }
        busy.finish();
    });
    assert_eq!(busy.sent.load(Ordering::Acquire), busy.answered.load(Ordering::Acquire), "no event lost");
    let history = rt.shared().registry().history();
    assert_eq!(history.iter().filter(|r| !r.ok).count(), 8);
    // Nothing of a refused candidate stays: only the good version is loaded.
    wait_until("refused candidates unloaded", Duration::from_secs(10), || {
        rt.shared().loaded_versions("fixture_probe").len() == 1
    });
}

/// A continuation of an old version that lives through ten reloads keeps
/// that version loaded (status shows it and what holds it); the version
/// unloads as soon as the continuation is destroyed.
#[test]
fn a_long_lived_continuation_keeps_its_version_through_ten_reloads() {
    let dir = RunDir::new("long-lived");
    let files = RunDir::new("long-lived-files");
    let rt = runtime(&dir, 4);
    let f = [variant(files.path(), "fixture_probe", 0), variant(files.path(), "fixture_probe", 1)];
    rt.reload(&[module_cfg("fixture_probe", &f[0], &[])]).unwrap();
    let v1 = rt.active("fixture_probe").unwrap();
    let (v1_id, v1_copy) = (v1.id(), v1.meta().copy.clone());
    let c = rt.spawn(&v1, 0, 0).unwrap();
    drop(v1);
    for s in 1..=10 {
        rt.reload(&[module_cfg("fixture_probe", &f[s % 2], &[("s", &s.to_string())])]).unwrap();
    }
    rt.send(c, tag::ECHO, b"old").unwrap();
    let r = (0..100).find_map(|_| rt.next_reply(Duration::from_secs(1)).filter(|r| r.tag == tag::ECHO)).unwrap();
    assert_eq!(r.version, v1_id, "the old continuation still runs its own version's code");
    let status = molt_runtime::ctl::status::status(rt.shared(), Instant::now(), "test");
    let v = status["versions"].as_array().unwrap().iter().find(|x| x["id"] == v1_id.0).expect("v1 in status").clone();
    assert_eq!(v["state"], "draining", "{v}");
    assert_eq!(v["continuations"], 1, "{v}");
    assert!(mapped(&v1_copy));
    let loaded = rt.shared().loaded_versions("fixture_probe");
    assert!(loaded.iter().any(|l| l.contains(&v1_id.to_string()) && l.contains("1 continuations")), "{loaded:?}");

    let t = Instant::now();
    rt.destroy(c).unwrap();
    wait_until("v1 unloaded", Duration::from_secs(5), || !rt.shared().is_loaded(v1_id));
    eprintln!("v1 unloaded {:?} after its continuation was destroyed", t.elapsed());
    assert!(!mapped(&v1_copy) && !v1_copy.exists());
}

/// Upgrade mode: a long-lived continuation handles its next event on new
/// code, and the old version unloads right away. A module without adopt
/// cannot be in upgrade mode.
#[test]
fn upgrade_mode_moves_live_continuations_to_new_code() {
    let dir = RunDir::new("upgrade");
    let files = RunDir::new("upgrade-files");
    let rt = runtime(&dir, 4);
    let f = [variant(files.path(), "fixture_probe", 0), variant(files.path(), "fixture_probe", 1)];
    let cfg = |n: usize| {
        let mut c = module_cfg("fixture_probe", &f[n], &[]);
        c.mode = SwapMode::Upgrade;
        c
    };
    rt.reload(&[cfg(0)]).unwrap();
    let v1 = rt.active("fixture_probe").unwrap().id();
    let conts: Vec<u64> = (0..4).map(|i| rt.spawn(&rt.active("fixture_probe").unwrap(), i % W, 0).unwrap()).collect();
    for c in &conts {
        rt.send(*c, tag::ECHO, b"before").unwrap();
    }
    for _ in &conts {
        let r = (0..100).find_map(|_| rt.next_reply(Duration::from_secs(1)).filter(|r| r.tag == tag::ECHO)).unwrap();
        assert_eq!(r.version, v1);
    }
    rt.reload(&[cfg(1)]).unwrap();
    let v2 = rt.active("fixture_probe").unwrap().id();
    assert_ne!(v1, v2);
    for c in &conts {
        rt.send(*c, tag::ECHO, b"after").unwrap();
        let r = (0..100).find_map(|_| rt.next_reply(Duration::from_secs(1)).filter(|r| r.tag == tag::ECHO)).unwrap();
        assert_eq!((r.from, r.version), (*c, v2), "the same continuation, on new code");
    }
    wait_until("v1 unloaded right after the upgrade", Duration::from_secs(5), || !rt.shared().is_loaded(v1));

    let mut echo = module_cfg("echo_c", &module_lib("echo_c"), &[]);
    echo.mode = SwapMode::Upgrade;
    let e = rt.reload(&[cfg(1), echo]).unwrap_err();
    assert!(matches!(e, ReloadError::UpgradeWithoutAdopt { .. }), "{e}");
    assert!(e.to_string().contains("mode = \"upgrade\" needs an adopt callback"), "{e}");
}

/// Rollback restores the previous behaviour under load, losing no event.
#[test]
fn rollback_restores_previous_behaviour_under_load() {
    let dir = RunDir::new("rollback");
    let rt = runtime(&dir, 4);
    let hello = |g: &str| vec![module_cfg("hello", &module_lib("hello"), &[("greeting", g)])];
    let probe = rt.load(&molt_runtime::module::ModuleSpec::new(module_lib("fixture_probe"))).unwrap();
    let busy_target = rt.spawn(&probe, 1, 0).unwrap();
    let busy = Busy::new(&rt);
    let ask = |rt: &Runtime| {
        let c = rt.spawn(&rt.active("hello").unwrap(), 0, 0).unwrap();
        rt.send(c, 4242, b"?").unwrap();
        let r = busy.other(4242);
        rt.destroy(c).unwrap();
        String::from_utf8_lossy(&r.data).into_owned()
    };
    assert!(matches!(rt.rollback(), Err(ReloadError::NoPrevious)));
    std::thread::scope(|scope| {
        busy.run(scope, busy_target);
        rt.reload(&hello("one")).unwrap();
        assert_eq!(ask(&rt), "one from hello 1.0.0: ?");
        rt.reload(&hello("two")).unwrap();
        assert_eq!(ask(&rt), "two from hello 1.0.0: ?");
        let r = rt.rollback().unwrap();
        assert_eq!(r.kind, "rollback");
        assert_eq!(ask(&rt), "one from hello 1.0.0: ?", "rollback restores the previous behaviour");
        let r = rt.rollback().unwrap();
        assert!(r.ok);
        assert_eq!(ask(&rt), "two from hello 1.0.0: ?", "a second rollback goes forward again");
        busy.finish();
    });
    assert_eq!(busy.sent.load(Ordering::Acquire), busy.answered.load(Ordering::Acquire), "no event lost");
    assert!(busy.sent.load(Ordering::Acquire) > 0);
}

#[test]
fn the_version_cap_refuses_a_reload_and_names_what_holds_versions() {
    let dir = RunDir::new("cap");
    let files = RunDir::new("cap-files");
    let rt = runtime(&dir, 2);
    let f: Vec<_> = (0..3).map(|n| variant(files.path(), "fixture_probe", n)).collect();
    rt.reload(&[module_cfg("fixture_probe", &f[0], &[])]).unwrap();
    let c = rt.spawn(&rt.active("fixture_probe").unwrap(), 0, 0).unwrap();
    rt.reload(&[module_cfg("fixture_probe", &f[1], &[])]).unwrap();
    let e = rt.reload(&[module_cfg("fixture_probe", &f[2], &[])]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("max_versions_per_module = 2"), "{msg}");
    assert!(msg.contains("held by 1 continuations"), "names the holder: {msg}");
    rt.destroy(c).unwrap();
    wait_until("the old version unloaded", Duration::from_secs(5), || {
        rt.shared().loaded_versions("fixture_probe").len() == 1
    });
    rt.reload(&[module_cfg("fixture_probe", &f[2], &[])]).expect("room again once the holder is gone");
}

#[test]
fn the_drain_deadline_ends_lingering_continuations() {
    let dir = RunDir::new("deadline");
    let files = RunDir::new("deadline-files");
    let registry = RegistrySettings {
        max_versions_per_module: 4,
        drain_deadline: Duration::from_millis(200),
        dynamic_reload: true,
    };
    let rt = Runtime::start(RuntimeConfig {
        workers: 2,
        run_dir: dir.path().to_owned(),
        registry,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let f = [variant(files.path(), "fixture_probe", 0), variant(files.path(), "fixture_probe", 1)];
    rt.reload(&[module_cfg("fixture_probe", &f[0], &[])]).unwrap();
    let v1 = rt.active("fixture_probe").unwrap().id();
    let c = rt.spawn(&rt.active("fixture_probe").unwrap(), 1, 0).unwrap();
    rt.reload(&[module_cfg("fixture_probe", &f[1], &[])]).unwrap();
    let t = Instant::now();
    wait_until("the lingering continuation ended", Duration::from_secs(5), || !rt.shared().is_loaded(v1));
    assert!(t.elapsed() >= Duration::from_millis(150), "not before the deadline ({:?})", t.elapsed());
    assert!(rt.send(c, tag::ECHO, b"").is_err(), "the continuation was ended");
}

/// A continuation's user args are its version's: when a newer version
/// adopts it, the values the old code stored are not handed to the new code
/// (a refused adopt would keep them with the old version).
#[test]
fn user_args_do_not_survive_an_adopt() {
    let dir = RunDir::new("upgrade-args");
    let files = RunDir::new("upgrade-args-files");
    let rt = runtime(&dir, 4);
    let f = [variant(files.path(), "fixture_probe", 0), variant(files.path(), "fixture_probe", 1)];
    let cfg = |n: usize| {
        let mut c = module_cfg("fixture_probe", &f[n], &[]);
        c.mode = SwapMode::Upgrade;
        c
    };
    rt.reload(&[cfg(0)]).unwrap();
    let c = rt.spawn(&rt.active("fixture_probe").unwrap(), 1, 0).unwrap();
    let swap = |value: u64| {
        rt.send(c, tag::ARG_SWAP, &value.to_le_bytes()).unwrap();
        let r = (0..100).find_map(|_| rt.next_reply(Duration::from_secs(1)).filter(|r| r.tag == tag::ARG)).unwrap();
        u64::from_le_bytes(r.data[..8].try_into().unwrap())
    };
    assert_eq!(swap(42), 0);
    assert_eq!(swap(43), 42, "the same version reads what it stored");
    rt.reload(&[cfg(1)]).unwrap();
    assert_eq!(swap(44), 0, "the adopting version starts with no user args of the old code's");
}
