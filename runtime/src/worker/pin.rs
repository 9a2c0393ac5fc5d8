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

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;

use crate::module::{Holders, ModuleVersion, VersionRef};
use crate::sync::{Arc, AtomicUsize, Ordering};

/// Loop turns between sweeps of entries at zero (rule 4).
pub const SWEEP_EVERY: u32 = 256;

/// The longest a worker sleeps while an entry waits for its second sweep.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

struct Entry {
    version: VersionRef,
    count: Cell<usize>,
    /// Sweeps that found it at zero since it was last pinned (rule 4).
    idle: Cell<u8>,
    /// This worker's shard of the version's continuation count (rule 5).
    shard: Arc<AtomicUsize>,
}

/// One continuation's hold on its version (through its worker's entry).
/// Not `Send`: it is given back on the worker that made it (rule 2).
pub(crate) struct Pin {
    entry: NonNull<Entry>,
    /// The version itself, read once at pin time: a call reaches it in one
    /// load instead of three (entry, `Arc`, `Retiring`).
    module: NonNull<ModuleVersion>,
}

impl Pin {
    /// The pinned version's counted reference (what the call charges
    /// creations to).
    #[inline]
    pub(crate) fn version(&self) -> &VersionRef {
        // SAFETY: the entry is live while this pin is not given back (rule
        // 2) and never moves (rule 3); only its worker touches it.
        let e = unsafe { self.entry.as_ref() };
        &e.version
    }

    /// The pinned version.
    #[inline]
    pub(crate) fn module(&self) -> &ModuleVersion {
        // SAFETY: the entry's reference keeps the version (inside its
        // `Arc`, which does not move) alive while this pin is not given
        // back (rules 1 and 2).
        unsafe { self.module.as_ref() }
    }
}

/// A worker's pins.
#[derive(Default)]
pub(crate) struct Pins {
    // Boxed on purpose: a `Pin` points into its entry, which must not
    // move when the vector grows (rule 3).
    #[allow(clippy::vec_box)]
    entries: RefCell<Vec<Box<Entry>>>,
}

impl Pins {
    /// Pin `v` for one more continuation of this worker.
    #[inline]
    pub(crate) fn pin(&self, v: &VersionRef) -> Pin {
        let mut entries = self.entries.borrow_mut();
        let e = match entries.iter().find(|e| Arc::ptr_eq(&e.version, v)) {
            Some(e) => e,
            None => {
                let shard = Arc::new(AtomicUsize::new(0));
                v.holders().add_shard(&shard);
                entries.push(Box::new(Entry { version: v.clone(), count: Cell::new(0), idle: Cell::new(0), shard }));
                entries.last().unwrap_or_else(|| unreachable!("just pushed"))
            }
        };
        let n = e.count.get() + 1;
        e.count.set(n);
        e.idle.set(0);
        e.shard.store(n, Ordering::Relaxed);
        Pin { entry: NonNull::from(&**e), module: NonNull::from(&**e.version) }
    }

    /// Give back a pin made by [`Pins::pin`] on this table.
    #[inline]
    pub(crate) fn unpin(&self, p: Pin) {
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
    pub(crate) fn sweep(&self) -> bool {
        let gone: Vec<Box<Entry>> = {
            let mut entries = self.entries.borrow_mut();
            let mut release = false;
            for e in entries.iter().filter(|e| e.count.get() == 0) {
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
            e.version.holders().remove_shard(&e.shard);
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

    fn add_shard(&self, s: &Arc<AtomicUsize>) {
        self.shards.lock().push(s.clone());
    }

    fn remove_shard(&self, s: &Arc<AtomicUsize>) {
        self.shards.lock().retain(|x| !Arc::ptr_eq(x, s));
    }
}
