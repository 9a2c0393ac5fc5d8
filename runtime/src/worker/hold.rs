//! Holds: a worker's events for module versions whose state is being
//! migrated wait here, in arrival order, and run first once released.
//!
//! Worker-local (one thread touches it); holds arrive and leave through the
//! inbox as control-side broadcasts, which `loom-tests/` models with the
//! real inbox: no held event runs while its hold stands, none is lost, and
//! released events keep their order ahead of what arrived after them.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use crate::cont::VersionId;

/// The versions a worker holds and the events parked for them.
pub struct Holds<E> {
    held: RefCell<Vec<VersionId>>,
    /// Whether `held` is non-empty: the one check dispatch makes (holds are rare).
    holding: Cell<bool>,
    parked: RefCell<VecDeque<E>>,
}

impl<E> Default for Holds<E> {
    fn default() -> Self {
        Holds { held: RefCell::new(Vec::new()), holding: Cell::new(false), parked: RefCell::new(VecDeque::new()) }
    }
}

impl<E> Holds<E> {
    /// Hold `versions` (added to those held).
    pub fn hold(&self, versions: &[VersionId]) {
        self.held.borrow_mut().extend_from_slice(versions);
        self.holding.set(!self.held.borrow().is_empty());
    }

    /// Whether events of `version` wait now.
    #[inline]
    pub fn is_held(&self, version: VersionId) -> bool {
        self.holding.get() && self.held.borrow().contains(&version)
    }

    /// [`Holds::is_held`] for the version `version` names, asked only
    /// while some version is held (holds are rare; finding the version's
    /// id costs loads the common case does not need).
    #[inline]
    pub fn is_held_by(&self, version: impl FnOnce() -> VersionId) -> bool {
        self.holding.get() && self.held.borrow().contains(&version())
    }

    /// Park an event of a held version.
    #[cold]
    pub fn park(&self, ev: E) {
        self.parked.borrow_mut().push_back(ev);
    }

    /// Release every hold; the parked events are put at the front of
    /// `runq`, in their order (they arrived before anything queued there).
    /// Returns how many.
    pub fn release(&self, runq: &mut VecDeque<E>) -> usize {
        self.held.borrow_mut().clear();
        self.holding.set(false);
        let parked = std::mem::take(&mut *self.parked.borrow_mut());
        let n = parked.len();
        #[cfg(not(molt_mutant = "hold_release_appends"))]
        for ev in parked.into_iter().rev() {
            runq.push_front(ev);
        }
        // The mutant queues them behind later events.
        #[cfg(molt_mutant = "hold_release_appends")]
        runq.extend(parked);
        n
    }
}
