//! Worker-local pins of module versions.
//!
//! A continuation keeps its module version loaded through its worker's pin
//! of that version — a count only this worker touches — instead of an `Arc`
//! reference of its own, which cost an atomic increment and decrement per
//! continuation on a counter every worker shares (and a transaction makes
//! and ends one continuation per module of its route).
//!
//! Rules, cited below:
//!
//! 1. An entry owns one counted reference ([`VersionRef`]) of its version,
//!    so the version stays loaded while the entry lives.
//! 2. [`Pin`]s are made ([`Pins::pin`]) and given back ([`Pins::unpin`])
//!    only by the worker owning the table; an entry lives while its count
//!    is above zero, so a `Pin` always points to a live entry.
//! 3. Entries are boxed: they do not move when the table grows or shrinks.
//! 4. An entry found at zero by two sweeps in a row (not pinned in
//!    between) is let go — its reference dropped, outside any module call —
//!    by [`Pins::sweep`], which the worker runs every [`SWEEP_EVERY`] loop
//!    turns and before it sleeps, sleeping at most [`LINGER`] while an
//!    entry waits for its second sweep. A version nothing on this worker
//!    holds is so released within two sweeps, and the last reference going
//!    hands it to the reaper as always (`module/retire.rs`). Two, not one:
//!    a worker serving one connection sleeps between every request and the
//!    next, and letting go at once made it allocate an entry per module
//!    per request (measured: 12 mallocs a request instead of 4).
//! 5. Each entry publishes its count in its version's [`Holders`] (one
//!    shard per worker, folded when status reads them); only this worker
//!    writes its shard.
//!
//! Generic over the counted reference ([`Counted`]) so that `loom-tests/`
//! models it with a stand-in version: the version is unloaded exactly once,
//! after the last pin is given back and swept, never under a call and never
//! on the worker.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;

use crate::module::retire::Retiring;
use crate::module::{Holders, ModuleVersion, VersionRef};
use crate::sync::{Arc, AtomicUsize, Ordering};

/// A value whose holders are counted ([`Holders`]).
pub trait HasHolders {
    /// Its holder counts.
    fn holders(&self) -> &Holders;
}

impl HasHolders for ModuleVersion {
    fn holders(&self) -> &Holders {
        ModuleVersion::holders(self)
    }
}

/// A counted reference a worker pins: a version's `Arc<Retiring<_>>`.
pub trait Counted: Clone {
    /// What it refers to.
    type Target: HasHolders;
    /// The value.
    fn target(&self) -> &Self::Target;
    /// Whether `self` and `other` refer to the same value.
    fn same(&self, other: &Self) -> bool;
}

impl<T: HasHolders + Send + 'static> Counted for Arc<Retiring<T>> {
    type Target = T;
    #[inline]
    fn target(&self) -> &T {
        self.get()
    }
    #[inline]
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
}

/// Loop turns between sweeps of entries at zero (rule 4).
pub const SWEEP_EVERY: u32 = 256;

/// The longest a worker sleeps while an entry waits for its second sweep.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

struct Entry<V> {
    version: V,
    count: Cell<usize>,
    /// Sweeps that found it at zero since it was last pinned (rule 4).
    idle: Cell<u8>,
    /// This worker's shard of the version's continuation count (rule 5).
    shard: Arc<AtomicUsize>,
}

/// One continuation's hold on its version (through its worker's entry).
/// Not `Send`: it is given back on the worker that made it (rule 2).
pub struct Pin<V: Counted = VersionRef> {
    entry: NonNull<Entry<V>>,
    /// The version itself, read once at pin time: a call reaches it in one
    /// load instead of three (entry, `Arc`, `Retiring`).
    module: NonNull<V::Target>,
}

impl<V: Counted> Pin<V> {
    /// The pinned version's counted reference (what the call charges
    /// creations to).
    #[inline]
    pub fn version(&self) -> &V {
        // SAFETY: the entry is live while this pin is not given back (rule
        // 2) and never moves (rule 3); only its worker touches it.
        let e = unsafe { self.entry.as_ref() };
        &e.version
    }

    /// The pinned version.
    #[inline]
    pub fn module(&self) -> &V::Target {
        // SAFETY: the entry's reference keeps the version (inside its
        // `Arc`, which does not move) alive while this pin is not given
        // back (rules 1 and 2).
        unsafe { self.module.as_ref() }
    }
}

/// A worker's pins.
pub struct Pins<V: Counted = VersionRef> {
    // Boxed on purpose: a `Pin` points into its entry, which must not
    // move when the vector grows (rule 3).
    #[allow(clippy::vec_box)]
    entries: RefCell<Vec<Box<Entry<V>>>>,
}

impl<V: Counted> Default for Pins<V> {
    fn default() -> Self {
        Pins { entries: RefCell::new(Vec::new()) }
    }
}

impl<V: Counted> Pins<V> {
    /// Pin `v` for one more continuation of this worker.
    #[inline]
    pub fn pin(&self, v: &V) -> Pin<V> {
        let mut entries = self.entries.borrow_mut();
        let e = match entries.iter().find(|e| e.version.same(v)) {
            Some(e) => e,
            None => {
                let shard = Arc::new(AtomicUsize::new(0));
                v.target().holders().add_shard(&shard);
                entries.push(Box::new(Entry { version: v.clone(), count: Cell::new(0), idle: Cell::new(0), shard }));
                entries.last().unwrap_or_else(|| unreachable!("just pushed"))
            }
        };
        let n = e.count.get() + 1;
        e.count.set(n);
        e.idle.set(0);
        e.shard.store(n, Ordering::Relaxed);
        Pin { entry: NonNull::from(&**e), module: NonNull::from(e.version.target()) }
    }

    /// Give back a pin made by [`Pins::pin`] on this table.
    #[inline]
    pub fn unpin(&self, p: Pin<V>) {
        // SAFETY: as in `Pin::version`: `p` is not given back yet, so its
        // entry is live (rule 2).
        let e = unsafe { p.entry.as_ref() };
        let n = e.count.get() - 1;
        e.count.set(n);
        e.shard.store(n, Ordering::Relaxed);
    }

    /// Let go of the entries found at zero by this sweep and the one
    /// before (rule 4); whether entries at zero remain (the worker then
    /// sleeps at most [`LINGER`]). The caller is the worker's loop, outside
    /// any module call: a last reference may go here.
    pub fn sweep(&self) -> bool {
        let gone: Vec<Box<Entry<V>>> = {
            let mut entries = self.entries.borrow_mut();
            let mut release = false;
            for e in entries.iter().filter(|e| e.count.get() == 0 || cfg!(molt_mutant = "pin_sweep_ignores_count")) {
                e.idle.set(e.idle.get().saturating_add(1));
                release |= e.idle.get() >= 2;
            }
            if !release {
                return entries.iter().any(|e| e.count.get() == 0);
            }
            let (keep, gone) = std::mem::take(&mut *entries).into_iter().partition(|e| e.idle.get() < 2);
            *entries = keep;
            gone
        };
        for e in gone {
            e.version.target().holders().remove_shard(&e.shard);
            // `e.version` drops here, with the table not borrowed.
        }
        self.entries.borrow().iter().any(|e| e.count.get() == 0)
    }
}

impl Holders {
    /// Live continuations owned by the version: every worker's shard,
    /// folded (rule 5). A snapshot: workers change theirs meanwhile.
    pub fn conts(&self) -> usize {
        self.shards.lock().iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }

    pub(crate) fn add_shard(&self, s: &Arc<AtomicUsize>) {
        self.shards.lock().push(s.clone());
    }

    pub(crate) fn remove_shard(&self, s: &Arc<AtomicUsize>) {
        self.shards.lock().retain(|x| !Arc::ptr_eq(x, s));
    }
}
