//! The park/wake handshake between a worker and those who send it work.
//!
//! The consumer announces it is about to sleep, then looks at its queue once
//! more; a producer publishes its element, then looks at the announcement.
//! With a sequentially consistent fence on both sides (Dekker's pattern) at
//! least one of them sees the other: either the consumer finds the element
//! and does not sleep, or the producer finds the announcement and wakes it.
//! The wake itself (an eventfd write through mio's `Waker`) is sticky, so a
//! wake that lands before the consumer blocks still ends the block.
//! `loom-tests/` checks that no wake-up is lost.

use crate::sync::{AtomicU32, Ordering, fence};

const AWAKE: u32 = 0;
const SLEEPING: u32 = 1;

/// The announcement a worker makes before blocking.
#[derive(Debug, Default)]
pub struct Sleeper {
    state: AtomicU32,
}

impl Sleeper {
    /// A sleeper that is awake.
    pub fn new() -> Sleeper {
        Sleeper { state: AtomicU32::new(AWAKE) }
    }

    /// Consumer: announce sleep. Re-check the queue after this; if it is not
    /// empty call [`Sleeper::awake`] instead of blocking.
    #[inline]
    pub fn prepare(&self) {
        #[cfg(not(molt_mutant = "sleep_no_fence"))]
        {
            self.state.store(SLEEPING, Ordering::SeqCst);
            fence(Ordering::SeqCst);
        }
        // The loom mutant: no Dekker ordering between announce and re-check.
        #[cfg(molt_mutant = "sleep_no_fence")]
        self.state.store(SLEEPING, Ordering::Relaxed);
    }

    /// Consumer: back to work (after blocking, or instead of it).
    #[inline]
    pub fn awake(&self) {
        self.state.store(AWAKE, Ordering::Relaxed);
    }

    /// Producer, after publishing work: whether it must wake the consumer.
    /// Only one producer per sleep gets `true`, so one wake-up syscall is made.
    #[inline]
    pub fn should_wake(&self) -> bool {
        #[cfg(not(molt_mutant = "sleep_no_fence"))]
        fence(Ordering::SeqCst);
        #[cfg(not(molt_mutant = "sleep_no_fence"))]
        let order = Ordering::SeqCst;
        #[cfg(molt_mutant = "sleep_no_fence")]
        let order = Ordering::Relaxed;
        self.state.load(order) == SLEEPING
            && self.state.compare_exchange(SLEEPING, AWAKE, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }
}
