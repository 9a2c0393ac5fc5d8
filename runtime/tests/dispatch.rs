//! The runtime core with real modules on real worker threads: routing,
//! ordering, stale ids, panics, timers, the plugin context, and deferred
//! unload of a replaced version.

mod common;

use std::time::{Duration, Instant};

use common::{RunDir, module_lib};
use fixture_probe::tag;
use molt_abi::ffi::{MOLT_ERR_STALE, MOLT_OK};
use molt_runtime::host::Reply;
use molt_runtime::module::{ModuleSpec, VersionRef};
use molt_runtime::sync::Ordering;
use molt_runtime::{Runtime, RuntimeConfig};

const WAIT: Duration = Duration::from_secs(10);

fn runtime(dir: &RunDir, workers: usize) -> Runtime {
    Runtime::start(RuntimeConfig { workers, run_dir: dir.path().to_owned(), ..RuntimeConfig::default() }).unwrap()
}

fn probe(rt: &Runtime) -> VersionRef {
    rt.load(&ModuleSpec::new(module_lib("fixture_probe"))).expect("probe loads")
}

/// The next reply with `tag`, skipping others (START/END notices).
fn expect(rt: &Runtime, want: u64) -> Reply {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(r) = rt.next_reply(left) else {
            let stats: Vec<String> = (0..rt.workers())
                .map(|i| {
                    let s = rt.worker_stats(i).unwrap();
                    format!(
                        "worker {i}: dispatched {} stale {} errors {} parks {}",
                        s.dispatched.load(Ordering::Relaxed),
                        s.stale_dropped.load(Ordering::Relaxed),
                        s.errors.load(Ordering::Relaxed),
                        s.parks.load(Ordering::Relaxed)
                    )
                })
                .collect();
            panic!("no reply with tag {want:#x} within {WAIT:?}; {stats:?}");
        };
        if r.tag == want {
            return r;
        }
    }
}

fn worker_of(r: &Reply) -> u32 {
    u32::from_le_bytes(r.data[..4].try_into().unwrap())
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
}

fn i32_at(b: &[u8], i: usize) -> i32 {
    i32::from_le_bytes(b[i..i + 4].try_into().unwrap())
}

fn spawn_on(rt: &Runtime, v: &VersionRef, w: u32) -> u64 {
    let id = rt.spawn(v, w, 5).unwrap();
    let r = expect(rt, tag::STARTED);
    assert_eq!((r.from, worker_of(&r), u64_at(&r.data, 4)), (id, w, 5), "START on the right worker with its tag");
    id
}

fn no_violations(rt: &Runtime) {
    assert_eq!(rt.total(|s| &s.context_violations), 0, "plugin context was wrong somewhere");
}

#[test]
fn events_reach_the_right_continuation_on_the_right_worker_in_order() {
    let dir = RunDir::new("route");
    let rt = runtime(&dir, 2);
    let v = probe(&rt);
    let c0 = spawn_on(&rt, &v, 0);
    let c1 = spawn_on(&rt, &v, 1);

    // Host to c1: in order, on worker 1.
    for i in 0..1000u64 {
        rt.send(c1, tag::ECHO, &i.to_le_bytes()).unwrap();
    }
    for i in 0..1000u64 {
        let r = expect(&rt, tag::ECHO);
        assert_eq!((r.from, worker_of(&r), u64_at(&r.data, 4)), (c1, 1, i));
    }

    // c0 (worker 0) to c1 (worker 1) through the inbox: in order per sender.
    for i in 0..1000u64 {
        let mut m = c1.to_le_bytes().to_vec();
        m.extend_from_slice(&tag::ECHO.to_le_bytes());
        m.extend_from_slice(&i.to_le_bytes());
        rt.send(c0, tag::FORWARD, &m).unwrap();
    }
    for i in 0..1000u64 {
        let r = expect(&rt, tag::ECHO);
        assert_eq!((r.from, worker_of(&r), u64_at(&r.data, 4)), (c1, 1, i));
    }

    // A module spawning on the other worker: the new continuation starts there.
    // The SPAWN answer (from worker 0) and the START notice (from worker 1)
    // race each other: take both in either order.
    rt.send(c0, tag::SPAWN, &1u32.to_le_bytes()).unwrap();
    let (mut spawned, mut started) = (None, None);
    while spawned.is_none() || started.is_none() {
        let r = rt.next_reply(WAIT).expect("SPAWN and STARTED replies");
        match r.tag {
            tag::SPAWN => spawned = Some(u64_at(&r.data, 4)),
            tag::STARTED => started = Some(r),
            _ => {}
        }
    }
    let r = started.unwrap();
    assert_eq!((r.from, worker_of(&r), u64_at(&r.data, 4)), (spawned.unwrap(), 1, 77));
    assert_eq!(v.holders().conts(), 3, "three continuations hold the version");

    // Ping-pong across workers.
    let mut m = c1.to_le_bytes().to_vec();
    m.extend_from_slice(&1000u64.to_le_bytes());
    rt.send(c0, tag::PINGPONG, &m).unwrap();
    expect(&rt, tag::DONE);
    no_violations(&rt);
}

#[test]
fn stale_ids_are_errors_never_deliveries() {
    let dir = RunDir::new("stale");
    let rt = runtime(&dir, 2);
    let v = probe(&rt);
    let c0 = spawn_on(&rt, &v, 0);
    let c1 = spawn_on(&rt, &v, 1);
    rt.send(c1, tag::DESTROY_SELF, &[]).unwrap();
    assert_eq!(worker_of(&expect(&rt, tag::DESTROY_SELF)), 1);
    let ended = expect(&rt, tag::ENDED);
    assert_eq!(ended.from, c1);

    // From the host: refused at once.
    let (status, msg) = rt.send(c1, tag::ECHO, b"x").unwrap_err();
    assert_eq!(status, MOLT_ERR_STALE);
    assert!(msg.contains("not live"), "{msg}");
    // From a module on another worker: the module gets MOLT_ERR_STALE.
    rt.send(c0, tag::SEND_TO, &c1.to_le_bytes()).unwrap();
    assert_eq!(i32_at(&expect(&rt, tag::SEND_TO).data, 4), MOLT_ERR_STALE);
    // A new continuation reuses the slot with a new generation: the old id stays stale.
    let c1b = spawn_on(&rt, &v, 1);
    assert_ne!(c1b, c1);
    assert!(rt.send(c1, tag::ECHO, b"x").is_err());
    rt.send(c0, tag::SEND_TO, &c1b.to_le_bytes()).unwrap();
    assert_eq!(i32_at(&expect(&rt, tag::SEND_TO).data, 4), MOLT_OK);
    // Id 0 and ids of workers that do not exist.
    assert!(rt.send(0, tag::ECHO, b"").is_err());
    assert!(rt.send(c0 | (0xFF << 48), tag::ECHO, b"").is_err());
    no_violations(&rt);
}

#[test]
fn a_panicking_handler_is_reported_and_the_worker_keeps_serving() {
    let dir = RunDir::new("panic");
    let rt = runtime(&dir, 1);
    let v = probe(&rt);
    let hello = rt.load(&ModuleSpec::new(module_lib("hello"))).unwrap();
    let failing = rt.load(&ModuleSpec::new(module_lib("fixture_handler_panic"))).unwrap();
    let c = spawn_on(&rt, &v, 0);
    let h = rt.spawn(&hello, 0, 0).unwrap();
    let f = rt.spawn(&failing, 0, 0).unwrap();

    rt.send(c, tag::PANIC, &[]).unwrap();
    rt.send(f, 0xDEAD, &[]).unwrap();
    rt.send(c, tag::ECHO, b"after").unwrap();
    let r = expect(&rt, tag::ECHO);
    assert_eq!(&r.data[4..], b"after", "the probe (POISON_ON_PANIC = false) keeps serving");
    rt.send(h, 42, b"still here").unwrap();
    let r = expect(&rt, 42);
    assert_eq!(String::from_utf8_lossy(&r.data), "hello from hello 1.0.0: still here");
    assert_eq!(rt.total(|s| &s.panics), 2);
    assert!(failing.has_panicked() && v.has_panicked(), "the runtime records both panics");
    // The poisoned module refuses further events; the worker is unaffected.
    rt.send(f, 1, b"x").unwrap();
    rt.send(h, 43, b"again").unwrap();
    expect(&rt, 43);
    assert!(rt.total(|s| &s.errors) >= 3);
    no_violations(&rt);
}

#[test]
fn timers_fire_once_and_cancel_is_final() {
    let dir = RunDir::new("timers");
    let rt = runtime(&dir, 2);
    let v = probe(&rt);
    let c = spawn_on(&rt, &v, 1);
    let mut m = 3_000_000u64.to_le_bytes().to_vec();
    m.extend_from_slice(&99u64.to_le_bytes());
    let t0 = Instant::now();
    rt.send(c, tag::TIMER, &m).unwrap();
    let timer = u64_at(&expect(&rt, tag::TIMER).data, 4);
    assert_eq!(v.holders().timers.load(Ordering::Relaxed), 1, "the timer is charged to the version");
    let fired = expect(&rt, tag::FIRED);
    assert!(t0.elapsed() >= Duration::from_millis(3), "never early");
    assert_eq!((worker_of(&fired), u64_at(&fired.data, 4), u64_at(&fired.data, 12)), (1, 99, timer));
    assert_eq!(v.holders().timers.load(Ordering::Relaxed), 0);

    // Cancel before it fires: OK once, then stale; it never fires.
    let mut m = 200_000_000u64.to_le_bytes().to_vec();
    m.extend_from_slice(&7u64.to_le_bytes());
    rt.send(c, tag::TIMER, &m).unwrap();
    let timer = u64_at(&expect(&rt, tag::TIMER).data, 4);
    rt.send(c, tag::CANCEL, &timer.to_le_bytes()).unwrap();
    assert_eq!(i32_at(&expect(&rt, tag::CANCEL).data, 4), MOLT_OK);
    rt.send(c, tag::CANCEL, &timer.to_le_bytes()).unwrap();
    assert_eq!(i32_at(&expect(&rt, tag::CANCEL).data, 4), MOLT_ERR_STALE);
    assert_eq!(v.holders().timers.load(Ordering::Relaxed), 0);
    no_violations(&rt);
}

#[test]
fn c_module_continuations_answer_on_workers() {
    let dir = RunDir::new("c-worker");
    let rt = runtime(&dir, 2);
    let spec = ModuleSpec { config: vec![("prefix".into(), ">".into())], ..ModuleSpec::new(module_lib("echo_c")) };
    let echo = rt.load(&spec).unwrap();
    let a = rt.spawn(&echo, 0, 0).unwrap();
    let b = rt.spawn(&echo, 1, 0).unwrap();
    for i in 0..100u64 {
        rt.send(if i % 2 == 0 { a } else { b }, 1000 + i, &i.to_le_bytes()).unwrap();
    }
    let mut seen = [false; 100];
    for _ in 0..100 {
        let r = rt.next_reply(WAIT).expect("echo reply");
        let i = (r.tag - 1000) as usize;
        assert_eq!(r.data[0], b'>');
        assert_eq!(u64_at(&r.data, 1), i as u64);
        assert_eq!(r.from, if i % 2 == 0 { a } else { b });
        seen[i] = true;
    }
    assert!(seen.iter().all(|s| *s));
    no_violations(&rt);
}

/// A worker that never runs out of work still lets go of a version whose
/// last continuation there ended: continuations hold their version through
/// the worker's pin of it, and the pins at zero are swept every few hundred
/// loop turns, not only when the worker sleeps.
#[test]
fn a_busy_worker_lets_go_of_a_version_its_continuations_left() {
    let dir = RunDir::new("busy-unload");
    let rt = runtime(&dir, 1);
    let probe_v = probe(&rt);
    let (a, b) = (spawn_on(&rt, &probe_v, 0), spawn_on(&rt, &probe_v, 0));
    let echo = rt.load(&ModuleSpec::new(module_lib("echo_c"))).unwrap();
    let copy = echo.meta().copy.clone();
    let e = rt.spawn(&echo, 0, 0).unwrap();
    // Keep worker 0 busy: a and b bounce a message between them, locally,
    // far longer than the test waits.
    let mut m = b.to_le_bytes().to_vec();
    m.extend_from_slice(&200_000_000u64.to_le_bytes());
    rt.send(a, tag::PINGPONG, &m).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let parks = rt.worker_stats(0).unwrap().parks.load(Ordering::Relaxed);
    drop(echo);
    rt.destroy(e).unwrap();
    let deadline = Instant::now() + WAIT;
    while rt.unloads().iter().all(|u| !u.module.starts_with("echo_c")) {
        assert!(Instant::now() < deadline, "echo_c was never unloaded while the worker stayed busy");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!common::mapped(&copy));
    assert_eq!(
        rt.worker_stats(0).unwrap().parks.load(Ordering::Relaxed),
        parks,
        "the worker slept meanwhile: this test did not keep it busy"
    );
    no_violations(&rt);
}

/// The unload of a replaced version whose last continuation destroys itself
/// inside its own handler runs later, from the loop, and really unmaps.
#[test]
fn last_reference_released_inside_the_handler_unloads_after_the_call() {
    let dir = RunDir::new("deferred");
    let rt = runtime(&dir, 1);
    let v = probe(&rt);
    let copy = v.meta().copy.clone();
    let c = spawn_on(&rt, &v, 0);
    // The "registry" lets go: the continuation holds the last reference.
    drop(v);
    assert!(rt.unloads().is_empty(), "a live continuation keeps its version loaded");
    assert!(common::mapped(&copy));
    rt.send(c, tag::DESTROY_SELF, &[]).unwrap();
    expect(&rt, tag::DESTROY_SELF);
    expect(&rt, tag::ENDED);
    let deadline = Instant::now() + WAIT;
    while rt.unloads().is_empty() {
        assert!(Instant::now() < deadline, "the version was never unloaded");
        std::thread::sleep(Duration::from_millis(1));
    }
    let report = rt.unloads().remove(0);
    assert!(report.module.starts_with("fixture_probe"), "{report:?}");
    assert!(report.unmapped && report.copy_removed, "{report:?}");
    // The worker only enqueued: fini, dlclose and the maps check ran on
    // the control side.
    assert_eq!(report.thread, "molt-ticker", "{report:?}");
    assert!(!common::mapped(&copy));
    no_violations(&rt);
}

#[test]
fn shutdown_ends_every_continuation_and_unloads() {
    let dir = RunDir::new("shutdown");
    let rt = runtime(&dir, 2);
    let v = probe(&rt);
    let copy = v.meta().copy.clone();
    for w in 0..2 {
        for _ in 0..3 {
            spawn_on(&rt, &v, w);
        }
    }
    drop(v);
    let replies = rt.replies().clone();
    let reports = rt.shutdown();
    let ended = replies.try_iter().filter(|r| r.tag == tag::ENDED).count();
    assert_eq!(ended, 6, "every continuation got its END");
    assert_eq!(reports.len(), 1);
    assert!(reports[0].unmapped && !common::mapped(&copy), "{reports:?}");
}

/// `call_now` delivers a layer's event kinds only: an END through it made
/// the module free the continuation's data while its slot stayed live, and
/// the real END then freed it again ("double free or corruption").
#[test]
fn call_now_refuses_core_event_kinds() {
    let dir = RunDir::new("call-now-core");
    let rt = molt_runtime::Runtime::start(molt_runtime::RuntimeConfig {
        workers: 1,
        run_dir: dir.path().join("run"),
        ..molt_runtime::RuntimeConfig::default()
    })
    .unwrap();
    let v = rt.load(&molt_runtime::module::ModuleSpec::new(module_lib("hello"))).unwrap();
    let c = rt.spawn(&v, 0, 0).unwrap();
    for kind in [molt_abi::ffi::MOLT_EV_END, molt_abi::ffi::MOLT_EV_START, molt_abi::ffi::MOLT_EV_MESSAGE] {
        let r = rt.on_worker(0, move |core| format!("{:?}", core.call_now(c, kind, 0, (0, 0), &[], None))).unwrap();
        assert_eq!(r, "CoreKind", "kind {kind}");
    }
    // The continuation is intact: a message is answered, END frees it once.
    rt.send(c, 9, b"still here").unwrap();
    assert!(rt.next_reply(std::time::Duration::from_secs(5)).is_some());
    rt.destroy(c).unwrap();
    drop(v);
    rt.shutdown();
}

/// Replies to the host (target 0) that nobody reads are bounded: `molt run`
/// never reads them, and a module answering every request grew it without
/// limit.
#[test]
fn unread_host_replies_are_bounded() {
    // 70,000 messages as fast as they go: alone, so that the other tests'
    // timings (a 3 ms timer) do not compete with them.
    if common::in_own_process("unread_host_replies_are_bounded") {
        return;
    }
    let dir = RunDir::new("host-replies");
    let rt = runtime(&dir, 1);
    let v = rt.load(&ModuleSpec::new(module_lib("hello"))).unwrap();
    let c = rt.spawn(&v, 0, 0).unwrap();
    let max = molt_runtime::host::HOST_REPLIES_MAX;
    for i in 0..(max + 5_000) {
        // Bounded inboxes push back: retry until the worker took it.
        while rt.send(c, 1, b"x").is_err() {
            std::thread::yield_now();
        }
        if i % 10_000 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while molt_runtime::host::host_replies_dropped() < 5_000 {
        assert!(Instant::now() < deadline, "no reply was dropped");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rt.replies().len() <= max, "{} replies queued", rt.replies().len());
    rt.destroy(c).unwrap();
    drop(v);
    rt.shutdown();
}

/// Header rule 8: a host function called with a live ctx from a thread the
/// module started is refused (it would race the worker's own state), and a
/// poster is the way such a thread reaches a continuation.
#[test]
fn host_calls_from_a_module_thread_are_refused_and_posters_carry_its_messages() {
    use molt_abi::ffi::{MOLT_ERR_THREAD, MOLT_EVF_POSTED};
    let dir = RunDir::new("threads");
    let rt = runtime(&dir, 2);
    let v = rt.load(&ModuleSpec::new(module_lib("fixture_threads"))).expect("fixture_threads loads");
    let c = rt.spawn(&v, 1, 0).unwrap();
    rt.send(c, 1, &[]).unwrap();
    let r = expect(&rt, 1);
    assert_eq!(i32_at(&r.data, 0), MOLT_ERR_THREAD, "cont_send from a module thread with a live ctx");
    rt.send(c, 2, &[]).unwrap();
    assert_eq!(i32_at(&expect(&rt, 2).data, 0), MOLT_OK, "post from a module thread");
    let posted = expect(&rt, 3);
    assert_eq!(posted.from, c);
    let flags = u32::from_le_bytes(posted.data[..4].try_into().unwrap());
    assert_eq!((flags & MOLT_EVF_POSTED, u64_at(&posted.data, 4)), (MOLT_EVF_POSTED, 0), "posted, from source 0");
    // A post to a continuation that ended is refused with STALE.
    let gone = rt.spawn(&v, 0, 0).unwrap();
    rt.destroy(gone).unwrap();
    let deadline = Instant::now() + WAIT;
    while rt.send(gone, 9, &[]).is_ok() {
        assert!(Instant::now() < deadline, "the destroyed continuation stayed live");
        std::thread::sleep(Duration::from_millis(1));
    }
    rt.send(c, 4, &gone.to_le_bytes()).unwrap();
    assert_eq!(i32_at(&expect(&rt, 4).data, 0), MOLT_ERR_STALE, "post to an ended continuation");
    // A message over 64 KiB is refused, not queued.
    rt.send(c, 6, &[]).unwrap();
    assert_eq!(i32_at(&expect(&rt, 6).data, 0), molt_abi::ffi::MOLT_ERR_LIMIT, "a post over 64 KiB");
    no_violations(&rt);
}

/// The Rust SDK's `Poster` is `Send + Sync` and carries a message from a
/// thread the module started.
#[test]
fn a_rust_module_posts_from_its_own_thread() {
    let dir = RunDir::new("rust-post");
    let rt = runtime(&dir, 1);
    let v = probe(&rt);
    let c = spawn_on(&rt, &v, 0);
    rt.send(c, tag::POST_FROM_THREAD, &[]).unwrap();
    assert_eq!(i32_at(&expect(&rt, tag::POSTED).data, 4), MOLT_OK);
    let r = expect(&rt, tag::RELAY_BASE + 1);
    assert_eq!((r.from, r.data.as_slice()), (c, &b"posted"[..]));
}

/// User args are a module's own: another module cannot read (or write) the
/// values on a continuation that is not its.
#[test]
fn a_module_cannot_reach_another_modules_user_args() {
    use molt_abi::ffi::MOLT_ERR_INVALID_ARG;
    let dir = RunDir::new("user-args-owner");
    let rt = runtime(&dir, 1);
    let theirs = spawn_on(&rt, &probe(&rt), 0);
    let v = rt.load(&ModuleSpec::new(module_lib("fixture_threads"))).expect("fixture_threads loads");
    let mine = rt.spawn(&v, 0, 0).unwrap();
    rt.send(mine, 5, &mine.to_le_bytes()).unwrap();
    assert_eq!(i32_at(&expect(&rt, 5).data, 0), MOLT_OK, "its own continuation");
    rt.send(mine, 5, &theirs.to_le_bytes()).unwrap();
    assert_eq!(i32_at(&expect(&rt, 5).data, 0), MOLT_ERR_INVALID_ARG, "fixture_probe's continuation");
}

/// A worker keeps some of the slots it frees for its own next continuations
/// (no lock), but never so many that a continuation created on it from
/// another thread finds the table full while most of it is free.
#[test]
fn slots_a_worker_keeps_for_itself_leave_room_for_remote_spawns() {
    let dir = RunDir::new("slot-cache");
    let rt = Runtime::start(RuntimeConfig {
        workers: 1,
        run_dir: dir.path().to_owned(),
        max_continuations_per_worker: 8,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let v = probe(&rt);
    let v2 = v.clone();
    // The worker makes and ends all 8 continuations itself.
    rt.on_worker(0, move |w| {
        let ids: Vec<u64> = (0..8).map(|_| w.spawn_local(&v2, None, core::ptr::null_mut(), 0, 0).unwrap()).collect();
        for id in ids {
            w.destroy(id).unwrap();
        }
        w.run_until_idle();
    })
    .unwrap();
    // Another thread creates continuations there: 6 of the 8 free slots at least are its to take.
    for i in 0..6 {
        rt.spawn(&v, 0, 0).unwrap_or_else(|e| panic!("remote spawn {i} refused with 8 slots free: {e:?}"));
    }
}
