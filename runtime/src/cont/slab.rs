//! Continuation slots: a worker-local slab plus a shared generation table.
//!
//! Rules, cited below:
//!
//! 1. A slot's local state ([`Slot`]) is touched only by its home worker.
//! 2. The shared [`SlotTable`] says, for any thread, whether `(slot,
//!    generation)` is live: `gens[slot] == generation << 1 | 1`. Reserving a
//!    slot sets the live bit under the free-list lock. Retiring it (when its
//!    destroy is accepted) bumps the generation and clears the bit, so every
//!    id of the old generation is stale from then on (no ABA within 2^24
//!    reuses); the slot returns to the free list only when its END has run
//!    ([`SlotTable::retire_and_free`] or the worker's cache, [`SlotTable::retire_local`]), so it is not reused while its data is alive.
//! 3. Slots live in fixed chunks that never move, so a reference to a
//!    continuation stays valid while the slab grows during a module call.

use super::id::{GEN_MASK, MAX_SLOTS};
use crate::sync::{AtomicU32, Mutex, Ordering};
use std::collections::VecDeque;

const CHUNK: usize = 1024;

/// Freed slots a worker keeps for its own next spawns (see
/// [`SlotTable::retire_local`]).
pub const LOCAL_CACHE: usize = 256;

/// One slot's local state: `C` is a live continuation (the worker's), `E`
/// an event waiting for a reserved slot.
pub(crate) enum Slot<C, E> {
    Free,
    /// Reserved by another thread; events that arrived before the spawn
    /// message wait here.
    Reserved {
        generation: u32,
        pending: VecDeque<E>,
    },
    Live(C),
}

/// The home worker's slots (rule 1).
pub(crate) struct Slab<C, E> {
    chunks: Vec<Box<[Slot<C, E>]>>,
}

impl<C, E> Slab<C, E> {
    pub(crate) fn new() -> Slab<C, E> {
        Slab { chunks: Vec::new() }
    }

    /// The slot at `index`, growing the slab by whole chunks (rule 3).
    #[inline]
    pub(crate) fn get_mut(&mut self, index: u32) -> &mut Slot<C, E> {
        let (c, i) = (index as usize / CHUNK, index as usize % CHUNK);
        if c >= self.chunks.len() {
            self.grow(c);
        }
        &mut self.chunks[c][i]
    }

    #[cold]
    fn grow(&mut self, chunk: usize) {
        while self.chunks.len() <= chunk {
            self.chunks.push((0..CHUNK).map(|_| Slot::Free).collect());
        }
    }

    /// Every live continuation's slot index.
    pub(crate) fn live_slots(&self) -> Vec<u32> {
        let mut v = Vec::new();
        for (c, chunk) in self.chunks.iter().enumerate() {
            for (i, s) in chunk.iter().enumerate() {
                if matches!(s, Slot::Live(_)) {
                    v.push((c * CHUNK + i) as u32);
                }
            }
        }
        v
    }
}

struct FreeList {
    free: Vec<u32>,
    next_unused: u32,
}

/// Liveness of a worker's slots, readable from any thread (rule 2).
pub struct SlotTable {
    gens: Box<[AtomicU32]>,
    free: Mutex<FreeList>,
}

impl SlotTable {
    /// A table of `capacity` slots (at most 2^24).
    pub fn new(capacity: u32) -> SlotTable {
        let capacity = capacity.clamp(1, MAX_SLOTS);
        SlotTable {
            gens: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            free: Mutex::new(FreeList { free: Vec::new(), next_unused: 0 }),
        }
    }

    /// Reserve a free slot: `(slot, generation)`, now live; `None` when full.
    pub fn reserve(&self) -> Option<(u32, u32)> {
        let mut f = self.free.lock();
        let slot = match f.free.pop() {
            Some(s) => s,
            None if (f.next_unused as usize) < self.gens.len() => {
                f.next_unused += 1;
                f.next_unused - 1
            }
            None => return None,
        };
        let g = self.gens[slot as usize].load(Ordering::Relaxed) >> 1;
        // Live from the reservation on: an event for the new id may reach
        // the home worker before its spawn message, and must wait, not be
        // dropped as stale. (The loom mutant leaves the bit for later.)
        #[cfg(not(molt_mutant = "reserve_not_live"))]
        self.gens[slot as usize].store(g << 1 | 1, Ordering::Release);
        Some((slot, g))
    }

    /// Retire a live slot: bump its generation and clear the live bit, so
    /// its ids are stale for every thread from now on. Idempotent. Only the
    /// slot's home worker calls it, and a live slot is in no free list, so
    /// no lock is taken (one was, per continuation ended).
    pub fn retire(&self, slot: u32) {
        self.bump(slot);
    }

    /// Rule 2's generation bump and live bit cleared, if live. Only the
    /// slot's home worker retires a live slot, so no lock is needed for the
    /// slot itself; the loom mutant keeps the old generation.
    fn bump(&self, slot: u32) {
        let cur = self.gens[slot as usize].load(Ordering::Relaxed);
        if cur & 1 == 1 {
            let g = cur >> 1;
            #[cfg(not(molt_mutant = "slot_no_generation"))]
            let g = (g + 1) & GEN_MASK;
            self.gens[slot as usize].store(g << 1, Ordering::Release);
        }
    }

    /// Retire a live slot and return it to the free list under one lock
    /// (the home worker, after the continuation's END ran).
    pub fn retire_and_free(&self, slot: u32) {
        let mut f = self.free.lock();
        self.bump(slot);
        f.free.push(slot);
    }

    /// Reserve a slot for the home worker, from its own cache of freed
    /// slots when it has one (no lock), else from the shared list.
    pub fn reserve_local(&self, cache: &mut Vec<u32>) -> Option<(u32, u32)> {
        let Some(slot) = cache.pop() else { return self.reserve() };
        let g = self.gens[slot as usize].load(Ordering::Relaxed) >> 1;
        self.gens[slot as usize].store(g << 1 | 1, Ordering::Release);
        Some((slot, g))
    }

    /// Retire a live slot of the home worker and keep it in the worker's
    /// cache (no lock), up to [`LOCAL_CACHE`] slots and a quarter of the
    /// table; beyond, it goes back to the shared list, so that other threads
    /// creating continuations here always find most free slots there.
    pub fn retire_local(&self, slot: u32, cache: &mut Vec<u32>) {
        if cache.len() >= LOCAL_CACHE.min(self.gens.len() / 4) {
            return self.retire_and_free(slot);
        }
        self.bump(slot);
        cache.push(slot);
    }

    /// Whether `(slot, generation)` is live now.
    #[inline]
    pub fn is_live(&self, slot: u32, generation: u32) -> bool {
        self.gens.get(slot as usize).is_some_and(|g| g.load(Ordering::Acquire) == (generation << 1 | 1))
    }

    /// The capacity.
    pub fn capacity(&self) -> u32 {
        self.gens.len() as u32
    }
}
