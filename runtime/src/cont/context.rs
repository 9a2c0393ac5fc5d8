//! The thread-local plugin context: which module version is running now.
//!
//! Set around every call into a module (init, handle_event, migrate, adopt,
//! drain, fini) and restored afterwards by a guard, so it is right after
//! nested calls, failing calls and caught panics alike. Runtime code reads it
//! to charge what module code creates (continuations, timers) to the version
//! that created it; modules never read it (they get a ctx pointer instead).

use std::cell::Cell;

/// The identity of one loaded module version, unique for the process's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(pub u64);

impl std::fmt::Display for VersionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v#{}", self.0)
    }
}

thread_local! {
    static CURRENT: Cell<Option<VersionId>> = const { Cell::new(None) };
}

/// The module version whose code is running on this thread, if any.
pub fn current() -> Option<VersionId> {
    CURRENT.with(Cell::get)
}

/// Restores the previous plugin context when dropped.
#[must_use = "the context is restored when the guard drops"]
pub struct ContextGuard {
    previous: Option<VersionId>,
}

impl ContextGuard {
    /// Make `version` the running version until the guard drops.
    pub fn enter(version: VersionId) -> ContextGuard {
        let previous = CURRENT.with(|c| c.replace(Some(version)));
        ContextGuard { previous }
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_guards_restore_in_order_even_through_unwinding() {
        assert_eq!(current(), None);
        let a = VersionId(1);
        let b = VersionId(2);
        {
            let _ga = ContextGuard::enter(a);
            assert_eq!(current(), Some(a));
            let r = std::panic::catch_unwind(|| {
                let _gb = ContextGuard::enter(b);
                assert_eq!(current(), Some(b));
                panic!("inner call fails");
            });
            assert!(r.is_err());
            assert_eq!(current(), Some(a), "restored after the inner call panicked");
        }
        assert_eq!(current(), None);
    }
}
