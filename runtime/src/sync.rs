//! The one place the runtime gets its synchronisation primitives.
//!
//! Under `--cfg molt_loom` everything here is loom's, so the loom models in
//! `loom-tests/` check the very code the runtime runs; otherwise it is std's
//! (and parking_lot's for locks). Nothing else in the runtime imports
//! `std::sync::atomic` or `std::cell::UnsafeCell` directly.

#[cfg(not(molt_loom))]
mod imp {
    pub use std::sync::Arc;
    pub use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

    /// `UnsafeCell` with loom's `with`/`with_mut` interface.
    #[derive(Debug, Default)]
    pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        /// A new cell.
        pub const fn new(v: T) -> UnsafeCell<T> {
            UnsafeCell(std::cell::UnsafeCell::new(v))
        }
        /// Read through a raw pointer.
        #[inline(always)]
        pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }
        /// Write through a raw pointer.
        #[inline(always)]
        pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// A mutex for the control plane (never the dispatch path).
    pub type Mutex<T> = parking_lot::Mutex<T>;
}

#[cfg(molt_loom)]
mod imp {
    pub use loom::cell::UnsafeCell;
    pub use loom::sync::Arc;
    pub use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

    /// loom's mutex with parking_lot's infallible `lock`.
    #[derive(Debug, Default)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        /// A new mutex.
        pub fn new(v: T) -> Mutex<T> {
            Mutex(loom::sync::Mutex::new(v))
        }
        /// Lock it.
        pub fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
        /// Lock it if nobody holds it.
        pub fn try_lock(&self) -> Option<loom::sync::MutexGuard<'_, T>> {
            self.0.try_lock().ok()
        }
        /// Lock it, waiting (loom has no clock: the wait is unbounded, and
        /// loom explores who gets it first).
        pub fn try_lock_for(&self, _wait: std::time::Duration) -> Option<loom::sync::MutexGuard<'_, T>> {
            Some(self.lock())
        }
    }
}

pub use imp::*;

/// Atomics for process-wide statics (id counters), which no loom model
/// exercises and which must be `const`-constructible under loom too.
pub mod statics {
    pub use std::sync::atomic::AtomicU64;
}
