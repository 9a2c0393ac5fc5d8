//! Loom models, small and exhaustive within the preemption bound.
//!
//! Each model names the protection it checks and the mutant that removes it
//! (`RUSTFLAGS='--cfg molt_loom --cfg molt_mutant="NAME"'`); with the mutant,
//! the model fails — `scripts/loom-mutants` shows it.
#![cfg(molt_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;
use molt_runtime::cont::SlotTable;
use molt_runtime::isolate::ring::{Consumer, Producer, RingMem};
use molt_runtime::module::retire::{Reaper, Retiring};
use molt_runtime::worker::{Inbox, Pop, Sleeper};

/// A stand-in for a module version: counts its unloads and knows whether a
/// call into it is in flight. Its teardown (the end of `unload`, or a drop)
/// must never run on a worker: `fini`, `dlclose` and the maps check are the
/// control side's.
struct Version {
    unloaded: Arc<AtomicUsize>,
    in_call: Arc<AtomicBool>,
}

loom::thread_local! {
    /// Set by the threads that stand for workers.
    static ON_WORKER: std::cell::Cell<bool> = std::cell::Cell::new(false);
}

fn on_worker() {
    ON_WORKER.with(|w| w.set(true));
}

impl Drop for Version {
    fn drop(&mut self) {
        assert!(!ON_WORKER.with(|w| w.get()), "a module version was torn down on a worker");
    }
}

fn unload(v: Version) {
    assert!(!v.in_call.load(Ordering::SeqCst), "unloaded while a call was in flight");
    v.unloaded.fetch_add(1, Ordering::SeqCst);
}

fn call(v: &Version) {
    v.in_call.store(true, Ordering::SeqCst);
    assert_eq!(v.unloaded.load(Ordering::SeqCst), 0, "called an unloaded version");
    v.in_call.store(false, Ordering::SeqCst);
}

/// (a) The module-version refcount against a concurrent dispatch and the
/// deferred unload: a worker calls through a continuation's reference, then
/// the continuation ends (releasing it: the worker only enqueues);
/// meanwhile the control plane drops the generation's reference and reaps.
/// No unload while the call is in flight, and exactly one unload once the
/// last reference is gone.
///
/// Protection: the continuation's own counted reference held across the
/// call. `dispatch_without_a_counted_reference_unloads_mid_call` removes it
/// (the worker borrows the generation's reference instead) and loom finds
/// the interleaving that unloads mid-call.
#[test]
fn version_refcount_versus_dispatch_and_deferred_unload() {
    loom::model(|| {
        let reaper = Arc::new(Reaper::default());
        let unloaded = Arc::new(AtomicUsize::new(0));
        let in_call = Arc::new(AtomicBool::new(false));
        let generation = Retiring::new(Version { unloaded: unloaded.clone(), in_call }, reaper.clone());
        let cont = generation.clone();

        let worker = thread::spawn(move || {
            on_worker();
            call(&cont);
            drop(cont); // END: the continuation releases its reference
        });
        let r2 = reaper.clone();
        let control = thread::spawn(move || {
            drop(generation); // a newer generation is active
            r2.collect().into_iter().for_each(unload);
        });
        worker.join().unwrap();
        control.join().unwrap();
        reaper.collect().into_iter().for_each(unload);
        assert_eq!(unloaded.load(Ordering::SeqCst), 1, "exactly one unload after the last reference");
    });
}

/// (a, mutated) The same, but the worker calls without a counted reference
/// of its own: loom must find the unload-during-call interleaving.
#[test]
#[should_panic]
fn dispatch_without_a_counted_reference_unloads_mid_call() {
    loom::model(|| {
        let reaper = Arc::new(Reaper::default());
        let unloaded = Arc::new(AtomicUsize::new(0));
        let in_call = Arc::new(AtomicBool::new(false));
        let generation =
            Retiring::new(Version { unloaded: unloaded.clone(), in_call: in_call.clone() }, reaper.clone());
        // The worker keeps only the flags, not a reference.
        let (u, c) = (unloaded.clone(), in_call.clone());
        let worker = thread::spawn(move || {
            c.store(true, Ordering::SeqCst);
            assert_eq!(u.load(Ordering::SeqCst), 0, "called an unloaded version");
            c.store(false, Ordering::SeqCst);
        });
        let r2 = reaper.clone();
        let control = thread::spawn(move || {
            drop(generation);
            r2.collect().into_iter().for_each(unload);
        });
        worker.join().unwrap();
        control.join().unwrap();
    });
}

/// (b) The inbox under concurrent producers: every element arrives once,
/// in order per producer.
///
/// Protection: the `Release` link store in `Inbox::push` (inbox invariant
/// 2). Mutant `inbox_link_relaxed` makes it `Relaxed`; loom reports the
/// consumer reading a value whose write it cannot see (causality violation).
#[test]
fn inbox_concurrent_producers() {
    loom::model(|| {
        let q = Arc::new(Inbox::new());
        let producers: Vec<_> = (0..2u32)
            .map(|p| {
                let q = q.clone();
                thread::spawn(move || {
                    q.push((p, 0u32));
                    if p == 0 {
                        q.push((p, 1));
                    }
                })
            })
            .collect();
        let mut next = [0u32; 2];
        let mut got = 0;
        while got < 3 {
            // SAFETY: this thread is the only consumer.
            match unsafe { q.pop() } {
                Pop::Data((p, i)) => {
                    assert_eq!(i, next[p as usize], "out of order for producer {p}");
                    next[p as usize] += 1;
                    got += 1;
                }
                Pop::Empty | Pop::Inconsistent => thread::yield_now(),
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        // SAFETY: this thread is the inbox's only consumer (invariant 1), as for pop above.
        assert!(unsafe { q.is_empty() });
    });
}

/// (c) Continuation id reuse with the generation counter: once an id is
/// destroyed and its slot reused, the old id is never live again (no ABA),
/// whatever another thread observes meanwhile.
///
/// Protection: the generation bump in `SlotTable::retire` (slab rule 2).
/// Mutant `slot_no_generation` keeps the generation; the observer then sees
/// the old id live after the slot's reuse.
#[test]
fn continuation_id_reuse_has_no_aba() {
    id_reuse_model(2, false);
}

/// One slot reused by its owner (`local`: through the worker's own cache,
/// else through the locked free list) while an observer checks the old id.
fn id_reuse_model(capacity: u32, local: bool) {
    loom::model(move || {
        let table = Arc::new(SlotTable::new(capacity));
        let mut cache = Vec::new();
        let (slot, old) = if local { table.reserve_local(&mut cache) } else { table.reserve() }.unwrap();
        let reused = Arc::new(AtomicBool::new(false));

        let (t, r) = (table.clone(), reused.clone());
        let owner = thread::spawn(move || {
            let mut cache = cache;
            let (s2, g2) = if local {
                t.retire_local(slot, &mut cache); // END ran
                assert_eq!(cache, [slot], "kept in the worker's cache");
                t.reserve_local(&mut cache).unwrap()
            } else {
                t.retire(slot); // destroy accepted
                t.retire_and_free(slot); // END ran; the worker's cache was full
                t.reserve().unwrap()
            };
            assert_eq!(s2, slot, "the freed slot is reused");
            assert_ne!(g2, old, "with a new generation");
            r.store(true, Ordering::SeqCst);
        });
        let (t, r) = (table.clone(), reused.clone());
        let observer = thread::spawn(move || {
            for _ in 0..2 {
                if r.load(Ordering::SeqCst) {
                    assert!(!t.is_live(slot, old), "a stale id looks live after its slot was reused (ABA)");
                }
                thread::yield_now();
            }
        });
        owner.join().unwrap();
        observer.join().unwrap();
        assert!(!table.is_live(slot, old));
    });
}

/// (d) The park/wake handshake: a consumer that announces sleep, re-checks
/// and parks, against a producer that pushes and wakes if it sees the
/// announcement. A lost wake-up leaves the consumer parked forever, which
/// loom reports as a deadlock. (`thread::park`/`unpark` stand for the poll
/// and the eventfd waker: both are sticky.)
///
/// Protection: the SeqCst fences of `Sleeper` (Dekker's pattern). Mutant
/// `sleep_no_fence` weakens them to Relaxed; loom finds the lost wake-up.
#[test]
fn park_wake_never_loses_a_wakeup() {
    loom::model(|| {
        let q = Arc::new(Inbox::new());
        let sleeper = Arc::new(Sleeper::new());
        let (cq, cs) = (q.clone(), sleeper.clone());
        let consumer = thread::spawn(move || {
            loop {
                // SAFETY: this thread is the only consumer.
                if let Pop::Data(v) = unsafe { cq.pop() } {
                    assert_eq!(v, 42);
                    return;
                }
                cs.prepare();
                // SAFETY: this thread is the inbox's only consumer (invariant 1), as for pop above.
                if !unsafe { cq.is_empty() } {
                    cs.awake();
                    thread::yield_now(); // a producer may be mid-push
                    continue;
                }
                thread::park();
                cs.awake();
            }
        });
        let consumer_thread = consumer.thread().clone();
        q.push(42u32);
        if sleeper.should_wake() {
            consumer_thread.unpark();
        }
        consumer.join().unwrap();
    });
}

/// (e) Dispatch and END against the unload of the version, through the
/// slot table and the counted reference: a worker dispatches to a live
/// continuation, runs its END, retires and frees the slot and drops the
/// continuation's reference; a sender on another thread checks the id's
/// liveness; the control side drops the generation's reference and reaps.
/// No call into an unloaded version, exactly one unload, never on the
/// worker, and the id is stale afterwards.
///
/// Protection: `Retiring`'s drop only enqueues (retire rule 2). Mutant
/// `retiring_drops_inline` tears the version down where the last reference
/// went: on the worker when the END released it last.
#[test]
fn dispatch_and_end_versus_unload_of_the_version() {
    loom::model(|| {
        let table = Arc::new(SlotTable::new(2));
        let (slot, gen_) = table.reserve().unwrap();
        let reaper = Arc::new(Reaper::default());
        let unloaded = Arc::new(AtomicUsize::new(0));
        let in_call = Arc::new(AtomicBool::new(false));
        let generation = Retiring::new(Version { unloaded: unloaded.clone(), in_call }, reaper.clone());
        let cont = generation.clone();

        let t = table.clone();
        let worker = thread::spawn(move || {
            on_worker();
            if t.is_live(slot, gen_) {
                call(&cont); // an event
            }
            call(&cont); // END
            t.retire(slot);
            t.retire_local(slot, &mut Vec::new()); // free_slot, into the worker's cache
            drop(cont);
        });
        let t = table.clone();
        let sender = thread::spawn(move || {
            // A remote cont_send checks liveness; a stale id is an error, and
            // a live one may turn stale right after (the worker drops it then).
            let _ = t.is_live(slot, gen_);
        });
        let r = reaper.clone();
        let control = thread::spawn(move || {
            drop(generation);
            r.collect().into_iter().for_each(unload);
        });
        worker.join().unwrap();
        sender.join().unwrap();
        control.join().unwrap();
        reaper.collect().into_iter().for_each(unload);
        assert_eq!(unloaded.load(Ordering::SeqCst), 1, "exactly one unload after the last reference");
        assert!(!table.is_live(slot, gen_), "the ended continuation's id is stale");
    });
}

/// (f) Holds with parked events, through the real inbox and `Holds`: the
/// control side holds a version on a worker and releases it (broadcasts
/// through the worker's inbox) while a producer sends two events for it.
/// No event runs while the hold stands, none is lost, and they run in the
/// order sent.
///
/// Protection: `Holds::release` puts parked events ahead of what was
/// queued after them. Mutant `hold_release_appends` queues them behind:
/// loom finds the turn where the second event overtakes the first.
#[test]
fn hold_and_release_keep_parked_events_in_order() {
    use molt_runtime::cont::VersionId;
    use molt_runtime::worker::hold::Holds;
    use std::collections::VecDeque;

    enum Msg {
        Hold,
        Release,
        Event(u32),
    }
    loom::model(|| {
        const V: VersionId = VersionId(7);
        let inbox = Arc::new(Inbox::new());
        let q = inbox.clone();
        let producer = thread::spawn(move || {
            q.push(Msg::Event(1));
            q.push(Msg::Event(2));
        });
        let q = inbox.clone();
        let control = thread::spawn(move || {
            q.push(Msg::Hold);
            q.push(Msg::Release);
        });
        // The worker: each turn accepts what its inbox holds (holds take
        // effect there, as broadcast closures do), then dispatches the
        // events queued when the turn began.
        let holds: Holds<u32> = Holds::default();
        let (mut runq, mut ran, mut taken) = (VecDeque::new(), Vec::new(), 0);
        let mut holding = false;
        while taken < 4 || !runq.is_empty() {
            loop {
                // SAFETY: this thread is the inbox's only consumer.
                match unsafe { inbox.pop() } {
                    Pop::Data(m) => {
                        taken += 1;
                        match m {
                            Msg::Hold => {
                                holds.hold(&[V]);
                                holding = true;
                            }
                            Msg::Release => {
                                holding = false;
                                holds.release(&mut runq);
                            }
                            Msg::Event(n) => runq.push_back(n),
                        }
                    }
                    Pop::Empty => break,
                    Pop::Inconsistent => thread::yield_now(),
                }
            }
            let batch: Vec<u32> = runq.drain(..).collect();
            for n in batch {
                if holds.is_held(V) {
                    holds.park(n);
                } else {
                    assert!(!holding, "event {n} ran while its version was held");
                    ran.push(n);
                }
            }
            thread::yield_now();
        }
        producer.join().unwrap();
        control.join().unwrap();
        assert_eq!(ran, [1, 2], "every event ran once, in the order sent");
    });
}

/// (g) The remote-spawn reserved slot: a thread creates a continuation on
/// another worker (reserves its slot, lets the id escape, posts the spawn);
/// a third thread that learned the id sends it an event, which may reach
/// the home worker before the spawn. The event waits for the spawn and is
/// delivered once, after START — never dropped as stale.
///
/// Protection: `SlotTable::reserve` marks the slot live before the id can
/// escape (slab rule 2). Mutant `reserve_not_live` leaves the bit unset;
/// loom finds the event arriving first and dropped.
#[test]
fn remote_spawn_keeps_events_that_arrive_before_it() {
    enum Msg {
        /// The spawn message (its slot is the one the event names).
        Spawn,
        Event(u32, u32),
    }
    loom::model(|| {
        let table = Arc::new(SlotTable::new(2));
        let inbox = Arc::new(Inbox::new());
        let (t, q) = (table.clone(), inbox.clone());
        let spawner = thread::spawn(move || {
            let (slot, g) = t.reserve().unwrap();
            // cont_create returned the id: a third thread sends to it at once.
            let q2 = q.clone();
            let sender = thread::spawn(move || q2.push(Msg::Event(slot, g)));
            q.push(Msg::Spawn);
            sender.join().unwrap();
        });
        // The home worker: a slot it does not know yet but the table says is
        // live is reserved, and its events wait for the spawn.
        let (mut live, mut pending, mut delivered, mut taken) = (false, 0, Vec::new(), 0);
        while taken < 2 {
            // SAFETY: this thread is the inbox's only consumer.
            match unsafe { inbox.pop() } {
                Pop::Data(Msg::Spawn) => {
                    taken += 1;
                    live = true;
                    delivered.push("START");
                    for _ in 0..std::mem::take(&mut pending) {
                        delivered.push("event");
                    }
                }
                Pop::Data(Msg::Event(slot, g)) => {
                    taken += 1;
                    if live {
                        delivered.push("event");
                    } else if table.is_live(slot, g) {
                        pending += 1;
                    }
                }
                _ => thread::yield_now(),
            }
        }
        spawner.join().unwrap();
        assert_eq!(delivered, ["START", "event"], "the early event was dropped as stale");
    });
}

/// (h) The same id reuse through the home worker's own slot cache
/// (`retire_local` / `reserve_local`, no table lock): the old id is never
/// live again, whatever another thread observes meanwhile.
///
/// Protection: the generation bump (slab rule 2), shared with the locked
/// path; mutant `slot_no_generation` removes it.
#[test]
fn local_slot_reuse_has_no_aba() {
    // 8 slots: up to 2 are kept in the worker's cache.
    id_reuse_model(8, true);
}

/// A ring's memory for the models: loom's atomics, and each data byte in a
/// loom cell, so a read of a byte the producer has not published (or a
/// write the consumer has not freed) is a race loom reports.
struct LoomRing {
    head: loom::sync::atomic::AtomicU64,
    tail: loom::sync::atomic::AtomicU64,
    sleeping: loom::sync::atomic::AtomicU32,
    data: Vec<loom::cell::UnsafeCell<u8>>,
}

impl LoomRing {
    fn new(cap: usize) -> LoomRing {
        LoomRing {
            head: loom::sync::atomic::AtomicU64::new(0),
            tail: loom::sync::atomic::AtomicU64::new(0),
            sleeping: loom::sync::atomic::AtomicU32::new(0),
            data: (0..cap).map(|_| loom::cell::UnsafeCell::new(0)).collect(),
        }
    }
}

/// A handle on a model ring (both ends hold one).
#[derive(Clone)]
struct Mem(Arc<LoomRing>);

impl RingMem for Mem {
    fn head(&self) -> &loom::sync::atomic::AtomicU64 {
        &self.0.head
    }
    fn tail(&self) -> &loom::sync::atomic::AtomicU64 {
        &self.0.tail
    }
    fn sleeping(&self) -> &loom::sync::atomic::AtomicU32 {
        &self.0.sleeping
    }
    fn cap(&self) -> usize {
        self.0.data.len()
    }
    fn write(&self, at: usize, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: loom checks the access against the ring's protocol.
            self.0.data[at + i].with_mut(|p| unsafe { *p = *b });
        }
    }
    fn read(&self, at: usize, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: as above.
            *b = self.0.data[at + i].with(|p| unsafe { *p });
        }
    }
}

/// (i) The isolated module's shared-memory ring: a producer pushes three
/// records (the third wraps around the end of a 64-byte ring, behind a pad)
/// while the consumer pops: every record arrives once, whole, in order, and
/// no byte is read before it is published or written before it is freed.
///
/// Protection: the release store of `head` after the record's bytes (and
/// the acquire load the consumer pairs with it). Mutant `ring_head_relaxed`
/// publishes with a relaxed store; loom finds the consumer reading bytes
/// the producer is still writing.
#[test]
fn ring_records_arrive_whole_and_in_order() {
    loom::model(|| {
        let mem = Mem(Arc::new(LoomRing::new(64)));
        let mut p = Producer::new(mem.clone());
        let mut c = Consumer::new(mem.clone());
        let producer = thread::spawn(move || {
            // 16 + 16 + 24 = 56 bytes: the third record does not fit before
            // the end once the first two are freed, so it wraps.
            for (kind, len) in [(1u32, 8usize), (2, 8), (3, 8)] {
                let payload = vec![kind as u8; len];
                while !p.push(kind, &payload).unwrap() {
                    thread::yield_now();
                }
            }
        });
        let mut out = Vec::new();
        let mut next = 1u32;
        while next <= 3 {
            match c.pop(&mut out).unwrap() {
                Some(kind) => {
                    assert_eq!(kind, next, "records out of order");
                    assert_eq!(out, vec![kind as u8; 8], "a record arrived torn");
                    next += 1;
                }
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(c.pop(&mut out).unwrap(), None);
    });
}

/// (j) The ring's sleep and wake-up: the consumer finds the ring empty,
/// says it sleeps, looks once more and sleeps; the producer pushes and
/// wakes it if it sleeps. The record is never left unseen with the
/// consumer asleep (a futex wait on the flag, modelled by park).
///
/// Protection: the SeqCst fences of `prepare_sleep` and `consumer_sleeps`.
/// Mutant `ring_sleep_no_fence` drops the consumer's; loom finds the lost
/// wake-up.
#[test]
fn ring_sleep_never_loses_a_wakeup() {
    loom::model(|| {
        let mem = Mem(Arc::new(LoomRing::new(64)));
        let mut p = Producer::new(mem.clone());
        let mut c = Consumer::new(mem.clone());
        let consumer = thread::spawn(move || {
            let mut out = Vec::new();
            loop {
                if c.pop(&mut out).unwrap() == Some(7) {
                    return;
                }
                c.prepare_sleep();
                if c.ready() {
                    c.awake();
                    continue;
                }
                thread::park();
                c.awake();
            }
        });
        let t = consumer.thread().clone();
        assert!(p.push(7, b"x").unwrap());
        if p.consumer_sleeps() {
            t.unpark();
        }
        consumer.join().unwrap();
    });
}

/// A stand-in version with holder counts, for the worker's pins.
struct HeldVersion {
    version: Version,
    holders: molt_runtime::module::Holders,
}

impl molt_runtime::worker::pin::HasHolders for HeldVersion {
    fn holders(&self) -> &molt_runtime::module::Holders {
        &self.holders
    }
}

/// (k) A worker's pins against the unload of the version: the worker pins
/// the version for a continuation (the creator's reference goes), sweeps
/// while the continuation lives (as its loop does every few hundred
/// turns), calls it, gives the pin back and sweeps twice; meanwhile status
/// folds the holder counts and the control side drops the generation's
/// reference and reaps. No call into an unloaded version, exactly one
/// unload, never on the worker; the count folded is 0 or 1, and 0 at the
/// end.
///
/// Protection: a sweep lets go only of entries at zero (pin rule 4).
/// Mutant `pin_sweep_ignores_count` lets go of a pinned entry: the pin then
/// points to freed memory (loom reports the freed shard counter, "failed to
/// get object") and the version can be unloaded under the call.
#[test]
fn pinned_version_is_unloaded_once_after_the_last_pin_and_never_under_a_call() {
    use molt_runtime::worker::pin::Pins;
    loom::model(|| {
        let reaper = Arc::new(Reaper::default());
        let unloaded = Arc::new(AtomicUsize::new(0));
        let in_call = Arc::new(AtomicBool::new(false));
        let version = Version { unloaded: unloaded.clone(), in_call };
        let generation =
            Retiring::new(HeldVersion { version, holders: molt_runtime::module::Holders::default() }, reaper.clone());
        let cont = generation.clone();
        let seen = generation.clone();

        let worker = thread::spawn(move || {
            on_worker();
            let pins: Pins<Arc<Retiring<HeldVersion>>> = Pins::default();
            let p = pins.pin(&cont);
            drop(cont); // the creator's reference: the pin holds the version now
            pins.sweep();
            pins.sweep();
            call(&p.module().version);
            pins.unpin(p);
            pins.sweep();
            pins.sweep();
        });
        let status = thread::spawn(move || {
            let n = seen.get().holders.conts();
            assert!(n <= 1, "holders folded to {n} with one continuation");
        });
        let r = reaper.clone();
        let control = thread::spawn(move || {
            drop(generation);
            r.collect().into_iter().for_each(|h| unload(h.version));
        });
        worker.join().unwrap();
        status.join().unwrap();
        control.join().unwrap();
        reaper.collect().into_iter().for_each(|h| {
            assert_eq!(h.holders.conts(), 0, "a pin's count outlived the pin");
            unload(h.version);
        });
        assert_eq!(unloaded.load(Ordering::SeqCst), 1, "exactly one unload after the last pin");
    });
}
