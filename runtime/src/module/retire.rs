//! Counted references whose last release defers the value's teardown.
//!
//! A module version must never be unloaded on its own stack, nor while a
//! call into it is in flight. Every holder — a continuation, a timer, the
//! active generation — owns one `Arc<Retiring<T>>`; dispatch borrows the
//! continuation's reference and touches no shared atomic. When the last
//! reference goes (a continuation ending inside its own handler, say), the
//! `Drop` of [`Retiring`] does not tear the value down: it hands it to a
//! [`Reaper`], whose queue the control side (the runtime's ticker thread)
//! drains: a worker only enqueues. So:
//!
//! 1. The value is alive while any reference is (Arc's rule).
//! 2. Dropping the last reference only enqueues (a lock on the control
//!    plane, never a call into module code).
//! 3. Teardown runs exactly once, from [`Reaper::collect`], which the
//!    control side calls — never inside a module call, never on a worker
//!    (`fini`, `dlclose`, the maps check and a state commit are not for the
//!    data path).
//!
//! `loom-tests/` models this with a counted value and a concurrent call.

use crate::sync::{Arc, Mutex};

/// A value whose last reference hands it to a reaper instead of dropping it.
pub struct Retiring<T: Send + 'static> {
    value: Option<T>,
    reaper: Arc<Reaper<T>>,
}

impl<T: Send + 'static> Retiring<T> {
    /// Wrap `value`; its teardown goes to `reaper`.
    pub fn new(value: T, reaper: Arc<Reaper<T>>) -> Arc<Retiring<T>> {
        Arc::new(Retiring { value: Some(value), reaper })
    }

    /// The value.
    #[inline]
    pub fn get(&self) -> &T {
        // `value` is Some until Drop takes it (rule 1: no reference outlives Drop).
        self.value.as_ref().unwrap_or_else(|| unreachable!("Retiring value taken before drop"))
    }
}

impl<T: Send + 'static> std::ops::Deref for Retiring<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        self.get()
    }
}

impl<T: Send + 'static> Drop for Retiring<T> {
    fn drop(&mut self) {
        if let Some(v) = self.value.take() {
            // Rule 2. The loom mutant tears the value down right here, on
            // whichever thread let go last (a worker, say).
            #[cfg(not(molt_mutant = "retiring_drops_inline"))]
            self.reaper.retire(v);
            #[cfg(molt_mutant = "retiring_drops_inline")]
            drop(v);
        }
    }
}

/// The queue of values whose last reference went, awaiting teardown.
pub struct Reaper<T> {
    queue: Mutex<Vec<T>>,
    /// The thread that collects, woken when something is queued.
    collector: std::sync::OnceLock<std::thread::Thread>,
}

impl<T> Default for Reaper<T> {
    fn default() -> Self {
        Reaper { queue: Mutex::new(Vec::new()), collector: std::sync::OnceLock::new() }
    }
}

impl<T> Reaper<T> {
    /// Enqueue `value` for teardown (rule 2).
    pub fn retire(&self, value: T) {
        self.queue.lock().push(value);
        if let Some(t) = self.collector.get() {
            t.unpark();
        }
    }

    /// Name the thread that collects: [`Reaper::retire`] unparks it.
    pub fn set_collector(&self, thread: std::thread::Thread) {
        let _ = self.collector.set(thread);
    }

    /// Take everything queued; the caller tears each down (rule 3).
    pub fn collect(&self) -> Vec<T> {
        std::mem::take(&mut *self.queue.lock())
    }
}
