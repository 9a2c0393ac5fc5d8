//! Workers: one OS thread, one event loop.
//!
//! Each worker owns a mio poller (its waker, later its sockets), a local run
//! queue, a timer wheel and a continuation slab; other threads reach it only
//! through its [`Inbox`] and the liveness table of its slots. The loop:
//!
//! ```text
//! loop:
//!   accept the inbox (events, spawns, destroys, timer cancels)
//!   fire due timers
//!   dispatch the events queued when the turn began
//!   idle? spin up to `spin` checking the inbox, then announce sleep,
//!         re-check, and block in poll until a waker or the next timer tick
//! ```
//!
//! Dispatch takes no lock and touches no shared atomic: the continuation's
//! slot holds the counted reference of its module version, and the call
//! borrows it.
//!
//! Nothing public reaches the invariants dispatch relies on. A worker's
//! slot table is the crate's own:
//!
//! ```compile_fail,E0624
//! fn retire_a_live_slot(rt: &molt_runtime::Runtime) {
//!     rt.shared().workers()[0].slots().retire(0);
//! }
//! ```
//!
//! a continuation cannot be installed from outside with a handler and data
//! of the caller's choosing:
//!
//! ```compile_fail,E0451
//! fn install(rt: &molt_runtime::Runtime, v: molt_runtime::module::VersionRef) {
//!     let s = molt_runtime::worker::Spawn {
//!         slot: 0, generation: 0, version: v, handler: None,
//!         data: molt_runtime::worker::SendPtr(std::ptr::null_mut()), tag: 0, source: 0,
//!     };
//!     rt.shared().workers()[0].post(molt_runtime::worker::Remote::Spawn(Box::new(s)));
//! }
//! ```
//!
//! a worker cannot broadcast to every worker (it would wait for itself):
//!
//! ```compile_fail,E0624
//! fn wait_for_myself(w: &molt_runtime::worker::WorkerCore) {
//!     w.fleet().broadcast(|_| ());
//! }
//! ```
//!
//! and a module's migrate runs only inside a reload, quiesced:
//!
//! ```compile_fail,E0624
//! fn migrate(v: &molt_runtime::module::VersionRef, m: &molt_abi::ffi::molt_migration) {
//!     let _ = v.migrate(m);
//! }
//! ```

pub mod event;
pub mod fleet;
pub mod hold;
pub mod inbox;
pub mod io;
// Public to the loom models only: a `Pin` must not outlive its table or
// be given back to another, which the worker ensures and other code could
// not.
#[cfg(molt_loom)]
pub mod pin;
#[cfg(not(molt_loom))]
pub(crate) mod pin;
pub mod sleep;
pub mod timer;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::c_void;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use molt_abi::ffi::*;

pub use event::{Event, Payload, Remote, SendPtr, Spawn};
pub use fleet::Fleet;
pub use inbox::{Inbox, Pop};
pub use sleep::Sleeper;
use timer::TimerWheel;

use crate::cont::SlotTable;
use crate::cont::context;
use crate::cont::id;
use crate::cont::slab::{Slab, Slot};
use crate::host::{CallEnv, CallFrame, ServiceResult, Services, USER_ARGS_MAX};
use crate::module::VersionRef;
use crate::sync::{Arc, AtomicU64, Ordering};

/// Inbox messages accepted per loop turn (then the run queue gets its turn).
const BATCH: usize = 1024;

/// Counters of one worker. Each is written by its worker only (a plain
/// store of load + 1, no read-modify-write), read by anyone for metrics.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Events handed to a module.
    pub dispatched: AtomicU64,
    /// Events whose target was stale or ending (dropped).
    pub stale_dropped: AtomicU64,
    /// Calls that returned an error.
    pub errors: AtomicU64,
    /// Calls that panicked (caught by the module's SDK).
    pub panics: AtomicU64,
    /// Host calls whose plugin context did not match the calling version,
    /// plus loop turns that found a context set outside any call. Always 0
    /// unless the runtime has a bug; tests assert it.
    pub context_violations: AtomicU64,
    /// Times the worker blocked in poll.
    pub parks: AtomicU64,
}

#[inline]
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// The part of a worker other threads see.
pub struct WorkerShared {
    index: u32,
    inbox: Inbox<Remote>,
    sleeper: CachePadded<Sleeper>,
    waker: mio::Waker,
    slots: SlotTable,
    stats: CachePadded<WorkerStats>,
    /// Messages posted from module threads not yet taken from the inbox.
    posted: CachePadded<crate::sync::AtomicUsize>,
}

/// Posted messages a worker's inbox holds at most: a module thread posting
/// faster than the worker runs gets `MOLT_ERR_LIMIT`, not unbounded memory.
pub const POSTED_MAX: usize = 65_536;

impl WorkerShared {
    pub(crate) fn new(index: u32, waker: mio::Waker, capacity: u32) -> WorkerShared {
        WorkerShared {
            index,
            inbox: Inbox::new(),
            sleeper: CachePadded::new(Sleeper::new()),
            waker,
            slots: SlotTable::new(capacity),
            stats: CachePadded::new(WorkerStats::default()),
            posted: CachePadded::new(crate::sync::AtomicUsize::new(0)),
        }
    }

    /// The worker's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Its counters.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// Its slot table (the crate's: a release from outside would break dispatch).
    pub(crate) fn slots(&self) -> &SlotTable {
        &self.slots
    }

    /// Queue a message a module thread posted (`MOLT_EVF_POSTED` is set
    /// here), up to [`POSTED_MAX`] waiting.
    #[cfg_attr(molt_loom, allow(dead_code))]
    pub(crate) fn post_posted(&self, mut ev: Event) -> ServiceResult<()> {
        if self.posted.fetch_add(1, Ordering::Relaxed) >= POSTED_MAX {
            self.posted.fetch_sub(1, Ordering::Relaxed);
            return Err((
                MOLT_ERR_LIMIT,
                format!("worker {} holds {POSTED_MAX} posted messages not yet delivered", self.index),
            ));
        }
        ev.flags |= MOLT_EVF_POSTED;
        self.post(Remote::Event(ev));
        Ok(())
    }

    /// Queue `msg` and wake the worker if it sleeps.
    pub fn post(&self, msg: Remote) {
        self.inbox.push(msg);
        if self.sleeper.should_wake() {
            let _ = self.waker.wake();
        }
    }
}

struct TimerPayload {
    target: u64,
    tag: u64,
    timer_id: u64,
    version: VersionRef,
}

/// A live continuation.
pub(crate) struct Cont {
    pub(crate) generation: u32,
    /// Its version, pinned through the worker's table (`pin.rs`).
    pub(crate) version: pin::Pin,
    pub(crate) handler: Option<molt_handler_fn>,
    pub(crate) data: *mut c_void,
    /// Destroy was requested: its END is queued, other events are dropped.
    pub(crate) ending: bool,
    pub(crate) user_args: Option<Box<[u64]>>,
    /// A call into its module was made (an event, or a layer's call). A
    /// continuation the host made that never ran can be moved to another
    /// version of its module without adopt: no code of the old one saw it.
    pub(crate) started: bool,
}

struct Local {
    slab: Slab<Cont, Event>,
    /// Slots this worker freed, reserved again without the table's lock.
    free_slots: Vec<u32>,
    runq: VecDeque<Event>,
    /// The previous turn's batch, empty, kept for its capacity.
    spare: VecDeque<Event>,
    timers: TimerWheel<TimerPayload>,
}

/// The worker as its own thread sees it.
pub struct WorkerCore {
    shared: Arc<WorkerShared>,
    rt: Arc<Fleet>,
    local: RefCell<Local>,
    /// The continuation being dispatched (0: none).
    current: Cell<u64>,
    spin: Duration,
    /// Versions whose events are held (a state migration of their module).
    holds: hold::Holds<Event>,
    /// Holds were released since the layers last heard of it.
    released: Cell<bool>,
    /// The socket layers (set once when the loop starts).
    io: std::cell::OnceCell<Vec<Box<dyn io::Io>>>,
    /// The versions this worker's continuations hold (after `local`:
    /// the slab's continuations go first).
    pins: pin::Pins,
}

/// What [`WorkerCore::call_now`] did.
#[derive(Debug)]
pub enum CallNow {
    /// The handler ran and returned success.
    Done,
    /// The handler ran and failed (or panicked).
    Failed(Box<crate::module::CallError>),
    /// The continuation's version is held (a state migration of its
    /// module): nothing ran; call again later.
    Held,
    /// The continuation is not live here.
    Stale,
    /// Not delivered: `call_now` takes a layer's event kinds (256 and up);
    /// the core's (START, MESSAGE, TIMER, DRAIN, END) go through the inbox,
    /// whose dispatch keeps the continuation's slot consistent with them (an
    /// END delivered here made the module free data the slot still held).
    CoreKind,
}

impl WorkerCore {
    pub(crate) fn new(shared: Arc<WorkerShared>, rt: Arc<Fleet>, spin: Duration) -> WorkerCore {
        WorkerCore {
            shared,
            rt,
            local: RefCell::new(Local {
                slab: Slab::new(),
                free_slots: Vec::with_capacity(crate::cont::slab::LOCAL_CACHE),
                runq: VecDeque::new(),
                spare: VecDeque::new(),
                timers: TimerWheel::new(Instant::now()),
            }),
            current: Cell::new(0),
            spin,
            holds: hold::Holds::default(),
            released: Cell::new(false),
            io: std::cell::OnceCell::new(),
            pins: pin::Pins::default(),
        }
    }

    /// This worker's index.
    pub fn index(&self) -> u32 {
        self.shared.index
    }

    /// The fleet this worker belongs to.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.rt
    }

    /// This worker's shared half.
    pub fn shared(&self) -> &Arc<WorkerShared> {
        &self.shared
    }

    /// Number of live continuations on this worker.
    pub fn live_continuations(&self) -> usize {
        self.local.borrow().slab.live_slots().len()
    }

    /// Run the loop until the runtime shuts down, then end every continuation.
    pub(crate) fn run(&self, mut poll: mio::Poll, setup: Option<io::IoSetup>) {
        let mut events = mio::Events::with_capacity(256);
        let mut idle_since: Option<Instant> = None;
        let layers = setup.map(|f| f(poll.registry(), self.index())).unwrap_or_default();
        let active = !layers.is_empty();
        let tick_every = layers.iter().map(|l| l.tick_every()).min().unwrap_or(Duration::from_millis(50));
        let _ = self.io.set(layers);
        // Readiness comes from the blocking poll below when the loop runs
        // out of work. While work stays queued, a zero-timeout poll every
        // POLL_EVERY turns keeps sockets served; right after a blocking
        // poll, or with nothing queued (the blocking poll follows at once),
        // none is made.
        const POLL_EVERY: u32 = 8;
        let mut turns_without_poll = 0u32;
        let mut just_polled = false;
        let mut turns_since_sweep = 0u32;
        loop {
            turns_since_sweep += 1;
            if turns_since_sweep >= pin::SWEEP_EVERY {
                turns_since_sweep = 0;
                self.pins.sweep();
            }
            let mut worked = false;
            if active {
                if !just_polled && turns_without_poll >= POLL_EVERY {
                    turns_without_poll = 0;
                    if poll.poll(&mut events, Some(Duration::ZERO)).is_ok() {
                        for ev in events.iter() {
                            worked = true;
                            self.io_ready(ev);
                        }
                    }
                } else {
                    turns_without_poll += 1;
                }
                just_polled = false;
                worked |= self.io_tick();
            }
            worked |= self.turn();
            if self.rt.is_shutting_down() {
                break;
            }
            if worked {
                idle_since = None;
                continue;
            }
            let now = Instant::now();
            let since = *idle_since.get_or_insert(now);
            // A worker with sockets parks at once: its work arrives through
            // epoll, and spinning (a zero-timeout poll per round) takes the
            // CPU from the processes it serves (docs/BENCHMARKS.md).
            if !active && now.duration_since(since) < self.spin {
                std::hint::spin_loop();
                continue;
            }
            self.shared.sleeper.prepare();
            if self.has_work() || self.rt.is_shutting_down() {
                self.shared.sleeper.awake();
                continue;
            }
            let mut timeout = self.local.borrow().timers.timeout(Instant::now());
            if active {
                // Wake for the layers' timeouts.
                timeout = Some(timeout.map_or(tick_every, |t| t.min(tick_every)));
            }
            // Nothing runs until the poll returns: let go of the versions
            // no continuation here held since the last sweep, and wake to
            // sweep again soon while some wait for it (pin rule 4).
            if self.pins.sweep() {
                timeout = Some(timeout.map_or(pin::LINGER, |t| t.min(pin::LINGER)));
            }
            bump(&self.shared.stats.parks);
            match poll.poll(&mut events, timeout) {
                Ok(()) => {
                    for ev in events.iter() {
                        self.io_ready(ev);
                    }
                    just_polled = true;
                    turns_without_poll = 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => tracing::error!(worker = self.index(), "poll failed: {e}"),
            }
            self.shared.sleeper.awake();
            idle_since = None;
        }
        self.end_all();
        // Shutting down: two sweeps let go of every entry at zero.
        self.pins.sweep();
        self.pins.sweep();
    }

    /// This worker's layer of type `T`, if it has one.
    pub fn layer<T: 'static>(&self) -> Option<&T> {
        self.layers().iter().find_map(|l| l.as_any().downcast_ref::<T>())
    }

    /// Every layer of this worker, in order.
    pub fn layers(&self) -> &[Box<dyn io::Io>] {
        self.io.get().map_or(&[], |v| v.as_slice())
    }

    fn io_ready(&self, ev: &mio::event::Event) {
        let token = ev.token().0;
        if let Some(l) = self.layers().get(token >> io::TOKEN_BITS) {
            let inner = token & ((1 << io::TOKEN_BITS) - 1);
            self.guard("readiness", || l.ready(self, inner, io::Readiness::of(ev)));
        }
    }

    fn io_tick(&self) -> bool {
        let now = Instant::now();
        let mut worked = false;
        if self.released.take() {
            for l in self.layers() {
                self.guard("unheld", || l.unheld(self));
            }
            worked = true;
        }
        for l in self.layers() {
            worked |= self.guard("tick", || l.tick(self, now)).unwrap_or(false);
        }
        worked
    }

    /// Run layer code so that a bug of ours there (a panic) costs the
    /// connection it was handling, not the worker and every connection on it.
    fn guard<R>(&self, what: &str, f: impl FnOnce() -> R) -> Option<R> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(r) => Some(r),
            Err(_) => {
                bump(&self.shared.stats.errors);
                tracing::error!(worker = self.index(), "socket layer panicked during {what}; the worker goes on");
                None
            }
        }
    }

    fn layer_of(&self, conn: u64) -> ServiceResult<(&dyn io::Io, u64)> {
        io::split_handle(conn)
            .and_then(|(i, h)| self.layers().get(i).map(|l| (l.as_ref(), h)))
            .ok_or_else(|| (MOLT_ERR_STALE, format!("connection {conn:#x} is not open on worker {}", self.index())))
    }

    fn has_work(&self) -> bool {
        // SAFETY: this thread is the worker, the inbox's only consumer.
        !unsafe { self.shared.inbox.is_empty() } || !self.local.borrow().runq.is_empty()
    }

    /// One turn of the loop; whether it did anything.
    pub fn turn(&self) -> bool {
        if context::current().is_some() {
            bump(&self.shared.stats.context_violations);
        }
        // Versions whose last reference went here are only queued: the
        // control side unloads them.
        let mut worked = self.accept_inbox();
        worked |= self.fire_timers();
        // Dispatch what was queued when the turn began; what those calls
        // queue runs next turn, after the inbox had its say.
        let mut batch = {
            let mut l = self.local.borrow_mut();
            let spare = std::mem::take(&mut l.spare);
            std::mem::replace(&mut l.runq, spare)
        };
        worked |= !batch.is_empty();
        while let Some(ev) = batch.pop_front() {
            self.dispatch(ev);
        }
        self.local.borrow_mut().spare = batch;
        worked
    }

    /// Run until nothing is queued locally (benches and tests drive a core
    /// on their own thread this way).
    pub fn run_until_idle(&self) {
        while self.turn() {}
    }

    /// Queue an event on this worker's run queue (the caller is this worker).
    pub fn enqueue_local(&self, ev: Event) {
        self.local.borrow_mut().runq.push_back(ev);
    }

    fn accept_inbox(&self) -> bool {
        let mut worked = false;
        let mut retries = 0;
        for _ in 0..BATCH {
            // SAFETY: this thread is the worker, the inbox's only consumer.
            match unsafe { self.shared.inbox.pop() } {
                Pop::Data(msg) => {
                    worked = true;
                    self.accept(msg);
                }
                Pop::Empty => break,
                Pop::Inconsistent => {
                    retries += 1;
                    if retries > 64 {
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
        }
        worked
    }

    fn accept(&self, msg: Remote) {
        match msg {
            Remote::Event(ev) => {
                if ev.flags & MOLT_EVF_POSTED != 0 {
                    self.shared.posted.fetch_sub(1, Ordering::Relaxed);
                }
                self.local.borrow_mut().runq.push_back(ev)
            }
            Remote::Spawn(s) => self.install(*s),
            Remote::Destroy(id) => {
                let _ = self.destroy_local(id);
            }
            Remote::CancelTimer(id) => {
                let _ = self.cancel_local_timer(id);
            }
            Remote::Run(f) => f(self),
        }
    }

    fn install(&self, s: Spawn) {
        let id = id::encode(self.index(), s.slot, s.generation);
        let version = self.pins.pin(&s.version);
        let mut l = self.local.borrow_mut();
        let pending = match std::mem::replace(l.slab.get_mut(s.slot), Slot::Free) {
            Slot::Reserved { pending, .. } => pending,
            _ => VecDeque::new(),
        };
        *l.slab.get_mut(s.slot) = Slot::Live(Cont {
            generation: s.generation,
            version,
            handler: s.handler,
            data: s.data.0,
            ending: false,
            user_args: None,
            started: false,
        });
        l.runq.push_back(Event::bare(MOLT_EV_START, id, s.source, s.tag));
        l.runq.extend(pending);
        drop(l);
        // `s.version` (the creator's reference) drops here, outside any
        // module call: the pin holds the version now.
    }

    fn fire_timers(&self) -> bool {
        let mut fired = Vec::new();
        {
            let mut l = self.local.borrow_mut();
            if l.timers.is_empty() {
                return false;
            }
            l.timers.advance(Instant::now(), |p| fired.push(p));
        }
        let worked = !fired.is_empty();
        for p in fired {
            p.version.holders().timers.fetch_sub(1, Ordering::Relaxed);
            let mut ev = Event::bare(MOLT_EV_TIMER, p.target, 0, p.tag);
            ev.arg0 = p.timer_id;
            self.route(ev);
            // `p.version` drops here, outside any module call.
        }
        worked
    }

    /// Deliver an event to its target's worker (locally or through an inbox).
    fn route(&self, ev: Event) {
        match self.rt.home(ev.target) {
            Ok((p, _)) if p.worker == self.index() => self.local.borrow_mut().runq.push_back(ev),
            Ok((_, w)) => w.post(Remote::Event(ev)),
            Err(_) => bump(&self.shared.stats.stale_dropped),
        }
    }

    /// Hand one event to its continuation's module.
    #[inline]
    fn dispatch(&self, ev: Event) {
        let Some(p) = id::decode(ev.target).filter(|p| p.worker == self.index()) else {
            bump(&self.shared.stats.stale_dropped);
            return;
        };
        let (version, handler, data) = {
            let mut l = self.local.borrow_mut();
            match l.slab.get_mut(p.slot) {
                Slot::Live(c) if c.generation == p.generation => {
                    if c.ending && ev.kind != MOLT_EV_END {
                        drop(l);
                        bump(&self.shared.stats.stale_dropped);
                        return;
                    }
                    if self.holds.is_held_by(|| c.version.version().id()) {
                        drop(l);
                        self.holds.park(ev);
                        return;
                    }
                    c.started = true;
                    (&raw const c.version, c.handler, c.data)
                }
                Slot::Reserved { generation, pending } if *generation == p.generation => {
                    pending.push_back(ev);
                    return;
                }
                Slot::Free if self.shared.slots.is_live(p.slot, p.generation) => {
                    // Reserved by another thread; its spawn message is on the way.
                    let mut pending = VecDeque::new();
                    pending.push_back(ev);
                    *l.slab.get_mut(p.slot) = Slot::Reserved { generation: p.generation, pending };
                    return;
                }
                _ => {
                    drop(l);
                    bump(&self.shared.stats.stale_dropped);
                    return;
                }
            }
        };
        // SAFETY: slab slots never move (slab rule 3) and this slot is freed
        // only by `free_slot` below, after this call returns (an END is only
        // processed here, not from inside a module call), so the reference
        // lives across the call.
        let version: &pin::Pin = unsafe { &*version };
        let abi = ev.as_abi();
        // SAFETY: `handler` and `data` are this live continuation's, read
        // from its slot just now, on its home worker.
        if let Err(e) = unsafe { self.call(ev.target, version, handler, data, &abi, None) } {
            self.failed(ev.target, &e);
        }
        if ev.kind == MOLT_EV_END {
            self.free_slot(p.slot);
        }
    }

    /// A call of the loop's (an event, an END) into continuation `id` failed.
    #[cold]
    fn failed(&self, id: u64, e: &crate::module::CallError) {
        crate::module::quiet::failure(&e.module, || {
            tracing::warn!(worker = self.index(), cont = id, "{e}");
        });
    }

    fn free_slot(&self, slot: u32) {
        let mut l = self.local.borrow_mut();
        let old = std::mem::replace(l.slab.get_mut(slot), Slot::Free);
        if let Slot::Live(c) = old {
            self.shared.slots.retire_local(slot, &mut l.free_slots);
            drop(l);
            // The version stays pinned by the table until the next sweep
            // (pin rule 4): never unloaded on this stack.
            self.pins.unpin(c.version);
        }
    }

    /// End continuation `id` of this worker now: its END runs before this
    /// returns (no loop turn in between). For a layer ending what it made
    /// (a transaction's module continuations at TXN_END), outside any module
    /// call; a held version's END waits like any of its events.
    pub fn end_now(&self, id: u64) -> ServiceResult<()> {
        let p = id::decode(id).filter(|p| p.worker == self.index()).ok_or_else(|| stale(id))?;
        match self.local.borrow_mut().slab.get_mut(p.slot) {
            Slot::Live(c) if c.generation == p.generation && !c.ending => {
                c.ending = true;
                // The id is stale for everyone from here; the slot is
                // reused only after the END below.
                self.shared.slots.retire(p.slot);
            }
            _ => return Err(stale(id)),
        }
        if context::current().is_some() {
            // Inside a module call: END must not run on its stack.
            self.local.borrow_mut().runq.push_back(Event::bare(MOLT_EV_END, id, 0, 0));
            return Ok(());
        }
        // END here, as `dispatch` would run it, without finding the slot
        // again through a queued event.
        let (version, handler, data) = {
            let mut l = self.local.borrow_mut();
            let Slot::Live(c) = l.slab.get_mut(p.slot) else { return Ok(()) };
            if self.holds.is_held_by(|| c.version.version().id()) {
                drop(l);
                self.holds.park(Event::bare(MOLT_EV_END, id, 0, 0));
                return Ok(());
            }
            c.started = true;
            (&raw const c.version, c.handler, c.data)
        };
        // SAFETY: as in `dispatch`: slots never move, and this one is freed
        // by `free_slot` below, after the call.
        let version: &pin::Pin = unsafe { &*version };
        let abi = crate::module::event(MOLT_EV_END, id, 0, 0, &[]);
        // SAFETY: `handler` and `data` are this live continuation's, read
        // from its slot just now, on its home worker.
        if let Err(e) = unsafe { self.call(id, version, handler, data, &abi, None) } {
            self.failed(id, &e);
        }
        self.free_slot(p.slot);
        Ok(())
    }

    /// Mark a local continuation ending and queue its END.
    fn destroy_local(&self, id: u64) -> ServiceResult<()> {
        let p = id::decode(id).filter(|p| p.worker == self.index()).ok_or_else(|| stale(id))?;
        let mut l = self.local.borrow_mut();
        match l.slab.get_mut(p.slot) {
            Slot::Live(c) if c.generation == p.generation && !c.ending => {
                c.ending = true;
                // Stale for everyone from now on; the slot is reused only after END.
                self.shared.slots.retire(p.slot);
                l.runq.push_back(Event::bare(MOLT_EV_END, id, 0, 0));
                Ok(())
            }
            _ => Err(stale(id)),
        }
    }

    fn cancel_local_timer(&self, timer: u64) -> ServiceResult<()> {
        let p = id::decode(timer).filter(|p| p.worker == self.index()).ok_or_else(|| stale(timer))?;
        let payload = self.local.borrow_mut().timers.cancel(p.slot, p.generation);
        match payload {
            Some(t) => {
                t.version.holders().timers.fetch_sub(1, Ordering::Relaxed);
                Ok(())
            }
            None => Err((MOLT_ERR_STALE, format!("timer {timer:#x} already fired or was cancelled"))),
        }
    }

    /// End every continuation (shutdown): each gets a forced END.
    fn end_all(&self) {
        let drained = self.local.borrow_mut().timers.drain();
        for t in drained {
            t.version.holders().timers.fetch_sub(1, Ordering::Relaxed);
        }
        self.local.borrow_mut().runq.clear();
        let slots = self.local.borrow().slab.live_slots();
        for slot in slots {
            let generation = match self.local.borrow_mut().slab.get_mut(slot) {
                Slot::Live(c) => {
                    c.ending = true;
                    self.shared.slots.retire(slot);
                    c.generation
                }
                _ => continue,
            };
            let mut ev = Event::bare(MOLT_EV_END, id::encode(self.index(), slot, generation), 0, 0);
            ev.flags = MOLT_EVF_FORCED;
            self.dispatch(ev);
        }
    }

    /// Whether continuation `id` of this worker is live (or reserved).
    pub(crate) fn is_live(&self, id: u64) -> bool {
        id::decode(id).is_some_and(|p| p.worker == self.index() && self.shared.slots.is_live(p.slot, p.generation))
    }

    /// End a continuation of this worker (the caller is this worker): it gets END.
    pub fn destroy(&self, id: u64) -> ServiceResult<()> {
        self.destroy_local(id)
    }

    /// Create a continuation of `version` on this worker (the caller is this worker).
    pub fn spawn_local(
        &self,
        version: &VersionRef,
        handler: Option<molt_handler_fn>,
        data: *mut c_void,
        tag: u64,
        source: u64,
    ) -> ServiceResult<u64> {
        let reserved = self.shared.slots.reserve_local(&mut self.local.borrow_mut().free_slots);
        let (slot, generation) = reserved.ok_or_else(|| full(self.index(), &self.shared.slots))?;
        self.install(Spawn { slot, generation, version: version.clone(), handler, data: SendPtr(data), tag, source });
        Ok(id::encode(self.index(), slot, generation))
    }

    /// Create a host-owned continuation of `version` on this worker for a
    /// connection or a transaction: no START (its first event is the
    /// layer's), data NULL. The caller is this worker, outside module calls.
    pub fn spawn_host(&self, version: &VersionRef) -> ServiceResult<u64> {
        let reserved = self.shared.slots.reserve_local(&mut self.local.borrow_mut().free_slots);
        let (slot, generation) = reserved.ok_or_else(|| full(self.index(), &self.shared.slots))?;
        let version = self.pins.pin(version);
        let mut l = self.local.borrow_mut();
        let cont = Slot::Live(Cont {
            generation,
            version,
            handler: None,
            data: core::ptr::null_mut(),
            ending: false,
            user_args: None,
            started: false,
        });
        // A slot this worker reserved is free here, unless events for an
        // earlier reservation of it wait (they are stale: kept in order).
        let id = id::encode(self.index(), slot, generation);
        if let Slot::Reserved { pending, .. } = std::mem::replace(l.slab.get_mut(slot), cont) {
            l.runq.extend(pending);
        }
        Ok(id)
    }

    /// Call continuation `target` of this worker now, with an event of
    /// `kind` (the layer's), `handle`, arguments and a borrowed payload;
    /// `txn` is what the http_* host functions reach during the call. The
    /// caller is this worker's loop (a layer), outside any module call.
    pub fn call_now(
        &self,
        target: u64,
        kind: u32,
        handle: u64,
        args: (u64, u64),
        data: &[u8],
        txn: Option<&dyn crate::host::TxnAccess>,
    ) -> CallNow {
        if kind < molt_abi::ffi::MOLT_EV_CONN_OPEN {
            return CallNow::CoreKind;
        }
        let Some(p) = id::decode(target).filter(|p| p.worker == self.index()) else { return CallNow::Stale };
        let (version, handler, cdata) = {
            let mut l = self.local.borrow_mut();
            match l.slab.get_mut(p.slot) {
                Slot::Live(c) if c.generation == p.generation && !c.ending => {
                    if self.holds.is_held_by(|| c.version.version().id()) {
                        return CallNow::Held;
                    }
                    c.started = true;
                    (&raw const c.version, c.handler, c.data)
                }
                _ => return CallNow::Stale,
            }
        };
        // SAFETY: as in `dispatch`: slots never move, and this one is freed
        // only after an END, which is never processed inside this call.
        let version: &pin::Pin = unsafe { &*version };
        let mut abi = crate::module::event(kind, target, 0, 0, data);
        abi.handle = handle;
        abi.arg0 = args.0;
        abi.arg1 = args.1;
        // SAFETY: `handler` and `cdata` are this live continuation's, read
        // from its slot just now, on its home worker.
        match unsafe { self.call(target, version, handler, cdata, &abi, txn) } {
            Ok(()) => CallNow::Done,
            Err(e) => CallNow::Failed(e),
        }
    }

    /// The environment of a call from this worker into `owner`.
    fn env<'a>(&'a self, owner: &'a VersionRef, txn: Option<&'a dyn crate::host::TxnAccess>) -> CallEnv<'a> {
        CallEnv { services: self, worker: self.index(), replies: Some(self.rt.replies()), owner: Some(owner), txn }
    }

    /// Call continuation `target`'s handler with `abi`, as the current
    /// continuation, and count the call (dispatched, errors, panics): the
    /// one call path of `dispatch` and `call_now`.
    ///
    /// # Safety
    ///
    /// `handler` and `data` are `target`'s, a live continuation of `version`
    /// on this worker, and no other call for it is in flight (a worker runs
    /// one call at a time, and the loop calls this outside any module call).
    // Always inlined: out of line, `txn` (two words) went on the stack
    // and was read back with one wide load, a store-forwarding stall that
    // was a fifth of the hook path's time.
    #[inline(always)]
    unsafe fn call(
        &self,
        target: u64,
        version: &pin::Pin,
        handler: Option<molt_handler_fn>,
        data: *mut c_void,
        abi: &molt_event,
        txn: Option<&dyn crate::host::TxnAccess>,
    ) -> Result<(), Box<crate::module::CallError>> {
        let outer = self.current.replace(target);
        // SAFETY: per this function's contract.
        let r = unsafe { version.module().handle_event(self.env(version.version(), txn), target, handler, data, abi) };
        self.current.set(outer);
        bump(&self.shared.stats.dispatched);
        if let Err(e) = &r {
            bump(&self.shared.stats.errors);
            if e.panicked() {
                bump(&self.shared.stats.panics);
            }
        }
        r
    }

    /// Continuations of this worker owned by version `version`.
    fn conts_of(&self, version: crate::module::VersionId) -> Vec<(u32, u32)> {
        let mut l = self.local.borrow_mut();
        let slots = l.slab.live_slots();
        slots
            .into_iter()
            .filter_map(|s| match l.slab.get_mut(s) {
                Slot::Live(c) if c.version.version().id() == version && !c.ending => Some((s, c.generation)),
                _ => None,
            })
            .collect()
    }

    /// Hold the events of `versions` (between events: no call into them is
    /// in flight when this returns); they wait until [`WorkerCore::unhold`].
    pub fn hold(&self, versions: &[crate::module::VersionId]) {
        self.holds.hold(versions);
    }

    /// Release every hold: held events run next, in their order.
    pub fn unhold(&self) -> usize {
        self.released.set(true);
        self.holds.release(&mut self.local.borrow_mut().runq)
    }

    /// Queue a DRAIN event (`arg0`: the deadline in ns from now) to every
    /// continuation of `version` on this worker; returns how many.
    pub fn drain_version(&self, version: crate::module::VersionId, deadline_ns: u64) -> usize {
        let conts = self.conts_of(version);
        let mut l = self.local.borrow_mut();
        for &(slot, generation) in &conts {
            let mut ev = Event::bare(MOLT_EV_DRAIN, id::encode(self.index(), slot, generation), 0, 0);
            ev.arg0 = deadline_ns;
            l.runq.push_back(ev);
        }
        conts.len()
    }

    /// End every continuation of `version` on this worker (a forced END
    /// each) and cancel its timers: the drain deadline passed.
    pub fn end_version(&self, version: crate::module::VersionId) -> usize {
        let conts = self.conts_of(version);
        for &(slot, generation) in &conts {
            let id = id::encode(self.index(), slot, generation);
            if self.destroy_local(id).is_ok() {
                let mut l = self.local.borrow_mut();
                if let Some(ev) = l.runq.back_mut().filter(|e| e.target == id && e.kind == MOLT_EV_END) {
                    ev.flags |= MOLT_EVF_FORCED;
                }
            }
        }
        let cancelled = self.local.borrow_mut().timers.remove_where(|t| t.version.id() == version);
        for t in cancelled {
            t.version.holders().timers.fetch_sub(1, Ordering::Relaxed);
        }
        conts.len()
    }

    /// Move the continuations of `old` on this worker that the host made
    /// and that never ran (created while `old` was held for a migration) to
    /// `new`, without adopt: no code of `old` ever saw them. Returns how many.
    pub fn rebase_unstarted(&self, old: crate::module::VersionId, new: &VersionRef) -> usize {
        let mut moved = 0;
        for (slot, _) in self.conts_of(old) {
            if let Slot::Live(c) = self.local.borrow_mut().slab.get_mut(slot)
                && !c.started
                && !c.ending
                && c.handler.is_none()
                && c.data.is_null()
            {
                let old = std::mem::replace(&mut c.version, self.pins.pin(new));
                // Between calls; the old version is let go at the next
                // sweep (pin rule 4).
                self.pins.unpin(old);
                moved += 1;
            }
        }
        moved
    }

    /// Move every continuation of `old` on this worker to `new` through
    /// `new`'s adopt (upgrade mode), between their events. Timers charged to
    /// `old` are recharged to `new`. Returns (adopted, refused).
    pub fn upgrade_version(&self, old: crate::module::VersionId, new: &VersionRef) -> (usize, usize) {
        let (mut adopted, mut refused) = (0, 0);
        for (slot, generation) in self.conts_of(old) {
            let id = id::encode(self.index(), slot, generation);
            // The old code's user args stay with it: the adopting version
            // starts without them (and sets its own in adopt); they come
            // back if the adopt is refused.
            let (old_ref, old_handler, old_data, old_args) = match self.local.borrow_mut().slab.get_mut(slot) {
                Slot::Live(c) => (c.version.version().clone(), c.handler, c.data, c.user_args.take()),
                _ => continue,
            };
            let env = self.env(new, None);
            self.current.set(id);
            // SAFETY: we are the home worker between this continuation's events.
            let r = unsafe { new.adopt(env, id, old_data, old_ref.meta().version_number) };
            self.current.set(0);
            let (new_data, new_handler) = match r {
                Ok(x) => x,
                Err(e) => {
                    if let Slot::Live(c) = self.local.borrow_mut().slab.get_mut(slot) {
                        c.user_args = old_args;
                    }
                    refused += 1;
                    tracing::warn!(
                        worker = self.index(),
                        cont = id,
                        "upgrade refused, the continuation stays on its version: {e}"
                    );
                    continue;
                }
            };
            if new_data != old_data {
                // The old version frees its own data: its last event.
                let mut ev = Event::bare(MOLT_EV_END, id, 0, 0);
                ev.flags = MOLT_EVF_ADOPTED;
                let abi = ev.as_abi();
                let env = self.env(&old_ref, None);
                self.current.set(id);
                // SAFETY: the old version's handler and data for this
                // continuation, on its home worker between events.
                if let Err(e) = unsafe { old_ref.handle_event(env, id, old_handler, old_data, &abi) } {
                    tracing::warn!(worker = self.index(), cont = id, "END (adopted) to the old version failed: {e}");
                }
                self.current.set(0);
            }
            if let Slot::Live(c) = self.local.borrow_mut().slab.get_mut(slot) {
                let was = std::mem::replace(&mut c.version, self.pins.pin(new));
                self.pins.unpin(was);
                c.handler = new_handler;
                c.data = new_data;
            }
            adopted += 1;
            // `old_ref` drops here, outside any call into the old version.
        }
        let moved = self.local.borrow_mut().timers.for_each_mut(|t| {
            if t.version.id() != old {
                return false;
            }
            t.version.holders().timers.fetch_sub(1, Ordering::Relaxed);
            t.version = new.clone();
            true
        });
        new.holders().timers.fetch_add(moved, Ordering::Relaxed);
        (adopted, refused)
    }

    fn check_context(&self, frame: &CallFrame<'_>) {
        if context::current() != Some(frame.meta.id) {
            bump(&self.shared.stats.context_violations);
        }
    }
}

/// The error for an id that is not live (ended, never existed, or of no worker).
pub(crate) fn stale(id: u64) -> (molt_status, String) {
    (MOLT_ERR_STALE, format!("continuation {id:#x} is not live (ended, or never existed)"))
}

fn full(worker: u32, t: &SlotTable) -> (molt_status, String) {
    (MOLT_ERR_LIMIT, format!("worker {worker} has all {} continuation slots in use", t.capacity()))
}

/// Create a continuation on worker `target` from any thread: reserve its
/// slot in the shared table (so its id is valid at once) and send the spawn.
pub(crate) fn spawn_remote(
    target: &WorkerShared,
    version: &VersionRef,
    handler: Option<molt_handler_fn>,
    data: *mut c_void,
    tag: u64,
    source: u64,
) -> ServiceResult<u64> {
    let (slot, generation) = target.slots.reserve().ok_or_else(|| full(target.index, &target.slots))?;
    let spawn = Spawn { slot, generation, version: version.clone(), handler, data: SendPtr(data), tag, source };
    target.post(Remote::Spawn(Box::new(spawn)));
    Ok(id::encode(target.index, slot, generation))
}

impl Services for WorkerCore {
    fn cont_create(
        &self,
        frame: &CallFrame<'_>,
        handler: Option<molt_handler_fn>,
        data: *mut c_void,
        worker: u32,
        tag: u64,
    ) -> ServiceResult<u64> {
        self.check_context(frame);
        let owner =
            frame.env.owner_ref().ok_or((MOLT_ERR_PHASE, "cont_create outside a dispatched call".to_owned()))?;
        let w = if worker == u32::MAX { self.index() } else { worker };
        let source = self.current.get();
        if w == self.index() {
            return self.spawn_local(owner, handler, data, tag, source);
        }
        let target = self.rt.workers().get(w as usize).ok_or_else(|| {
            (MOLT_ERR_INVALID_ARG, format!("cont_create: no worker {w} (this runtime has {})", self.rt.workers().len()))
        })?;
        spawn_remote(target, owner, handler, data, tag, source)
    }

    fn cont_destroy(&self, frame: &CallFrame<'_>, id: u64) -> ServiceResult<()> {
        self.check_context(frame);
        let (p, w) = self.rt.home(id)?;
        if p.worker == self.index() {
            return self.destroy_local(id);
        }
        self.rt.live_home(id)?;
        w.post(Remote::Destroy(id));
        Ok(())
    }

    fn cont_send(&self, frame: &CallFrame<'_>, target: u64, tag: u64, data: &[u8]) -> ServiceResult<()> {
        self.check_context(frame);
        let (p, w) = self.rt.live_home(target)?;
        let ev = Event {
            target,
            source: self.current.get(),
            kind: MOLT_EV_MESSAGE,
            flags: 0,
            tag,
            arg0: 0,
            payload: Payload::copy_from(data),
        };
        if p.worker == self.index() {
            self.local.borrow_mut().runq.push_back(ev);
        } else {
            w.post(Remote::Event(ev));
        }
        Ok(())
    }

    fn timer_schedule(&self, frame: &CallFrame<'_>, target: u64, delay_ns: u64, tag: u64) -> ServiceResult<u64> {
        self.check_context(frame);
        let owner =
            frame.env.owner_ref().ok_or((MOLT_ERR_PHASE, "timer_schedule outside a dispatched call".to_owned()))?;
        self.rt.live_home(target)?;
        let me = self.index();
        let (idx, generation) =
            self.local.borrow_mut().timers.schedule(Instant::now(), Duration::from_nanos(delay_ns), |i, g| {
                TimerPayload { target, tag, timer_id: id::encode(me, i, g), version: owner.clone() }
            });
        owner.holders().timers.fetch_add(1, Ordering::Relaxed);
        Ok(id::encode(me, idx, generation))
    }

    fn timer_cancel(&self, frame: &CallFrame<'_>, timer: u64) -> ServiceResult<()> {
        self.check_context(frame);
        let (p, w) = self.rt.home(timer)?;
        if p.worker == self.index() {
            return self.cancel_local_timer(timer);
        }
        w.post(Remote::CancelTimer(timer));
        Ok(())
    }

    fn user_arg_set(&self, frame: &CallFrame<'_>, cont: u64, slot: u32, value: u64) -> ServiceResult<()> {
        self.check_context(frame);
        self.with_local_cont(frame, cont, slot, |args| {
            args[slot as usize] = value;
            0
        })
        .map(|_| ())
    }

    fn user_arg_get(&self, frame: &CallFrame<'_>, cont: u64, slot: u32) -> ServiceResult<u64> {
        self.check_context(frame);
        self.with_local_cont(frame, cont, slot, |args| args[slot as usize])
    }

    fn conn_write(&self, frame: &CallFrame<'_>, conn: u64, data: &[u8]) -> ServiceResult<()> {
        self.check_context(frame);
        let (l, h) = self.layer_of(conn)?;
        l.conn_write(self, h, data)
    }

    fn conn_close(&self, frame: &CallFrame<'_>, conn: u64) -> ServiceResult<()> {
        self.check_context(frame);
        let (l, h) = self.layer_of(conn)?;
        l.conn_close(self, h)
    }

    fn conn_connect(&self, frame: &CallFrame<'_>, addr: &str) -> ServiceResult<u64> {
        self.check_context(frame);
        let owner =
            frame.env.owner_ref().ok_or((MOLT_ERR_PHASE, "conn_connect outside a dispatched call".to_owned()))?;
        let cont = self.current.get();
        if cont == 0 {
            return Err((MOLT_ERR_PHASE, "conn_connect needs a continuation to report to".into()));
        }
        for (i, l) in self.layers().iter().enumerate() {
            match l.conn_connect(self, owner, cont, addr) {
                Ok(h) => return Ok(io::handle(i, h)),
                Err((MOLT_ERR_UNSUPPORTED, _)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err((
            MOLT_ERR_UNSUPPORTED,
            format!("worker {} has no connection layer (configure a [[tcp]] route)", self.index()),
        ))
    }
}

impl WorkerCore {
    /// Run `f` on the user args of `cont`, a continuation of this worker
    /// owned by the calling module (one module's values are not another's).
    fn with_local_cont(
        &self,
        frame: &CallFrame<'_>,
        cont: u64,
        slot: u32,
        f: impl FnOnce(&mut [u64]) -> u64,
    ) -> ServiceResult<u64> {
        if slot as usize >= USER_ARGS_MAX {
            return Err((MOLT_ERR_INVALID_ARG, format!("user-arg slot {slot} is out of range (0..{USER_ARGS_MAX})")));
        }
        let p = id::decode(cont).ok_or_else(|| stale(cont))?;
        if p.worker != self.index() {
            return Err((
                MOLT_ERR_UNSUPPORTED,
                format!("user args of continuation {cont:#x} live on worker {}; access them from there", p.worker),
            ));
        }
        let mut l = self.local.borrow_mut();
        match l.slab.get_mut(p.slot) {
            Slot::Live(c) if c.generation == p.generation => {
                if c.version.version().meta().name != frame.meta.name {
                    return Err((
                        MOLT_ERR_INVALID_ARG,
                        format!(
                            "continuation {cont:#x} belongs to module {}: a module reaches the user args of its own continuations only",
                            c.version.version().meta().name
                        ),
                    ));
                }
                let args = c.user_args.get_or_insert_with(|| vec![0; USER_ARGS_MAX].into_boxed_slice());
                Ok(f(args))
            }
            _ => Err(stale(cont)),
        }
    }
}
