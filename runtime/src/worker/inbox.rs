//! A worker's inbox: an unbounded lock-free multi-producer, single-consumer
//! queue (Dmitry Vyukov's intrusive-list MPSC, non-intrusive form).
//!
//! Invariants, cited by the SAFETY comments below:
//!
//! 1. `tail` is only touched by the single consumer (the worker owning the
//!    inbox), which is why it sits in an `UnsafeCell` without a lock.
//! 2. A node is published by the producer's `Release` store of the previous
//!    node's `next` after the node's value was written, and the consumer reads
//!    `next` with `Acquire` before touching that value.
//! 3. The node at `tail` is always a stub whose value was already taken (or
//!    the initial stub); the consumer owns it and frees it when it advances.
//! 4. Between a producer's `swap` of `head` and its link store, the list is
//!    briefly cut: `pop` reports [`Pop::Inconsistent`] and the consumer
//!    retries; no element is lost, and order per producer is preserved.

use std::ptr;

use crate::sync::{AtomicPtr, Ordering, UnsafeCell};

struct Node<T> {
    next: AtomicPtr<Node<T>>,
    value: UnsafeCell<Option<T>>,
}

impl<T> Node<T> {
    fn boxed(value: Option<T>) -> *mut Node<T> {
        Box::into_raw(Box::new(Node { next: AtomicPtr::new(ptr::null_mut()), value: UnsafeCell::new(value) }))
    }
}

/// What [`Inbox::pop`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop<T> {
    /// An element.
    Data(T),
    /// Nothing queued.
    Empty,
    /// A producer is mid-push: retry shortly (invariant 4).
    Inconsistent,
}

/// The queue. Producers may be any thread; `pop` must be called by one
/// consumer thread only (see [`Inbox::pop`]).
pub struct Inbox<T> {
    head: AtomicPtr<Node<T>>,
    tail: UnsafeCell<*mut Node<T>>,
}

// SAFETY: elements move between threads (T: Send); the consumer-only tail is
// guarded by `pop`'s contract (invariant 1), the rest is atomics.
unsafe impl<T: Send> Send for Inbox<T> {}
// SAFETY: as above: `push` is safe from any thread, `pop` is unsafe and
// restricted to one consumer.
unsafe impl<T: Send> Sync for Inbox<T> {}

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Inbox<T> {
    /// An empty inbox.
    pub fn new() -> Inbox<T> {
        let stub = Node::boxed(None);
        Inbox { head: AtomicPtr::new(stub), tail: UnsafeCell::new(stub) }
    }

    /// Enqueue `value`. Lock-free; callable from any thread.
    pub fn push(&self, value: T) {
        let node = Node::boxed(Some(value));
        let prev = self.head.swap(node, Ordering::AcqRel);
        // The Release here is invariant 2; the loom mutant drops it.
        #[cfg(not(molt_mutant = "inbox_link_relaxed"))]
        let link = Ordering::Release;
        #[cfg(molt_mutant = "inbox_link_relaxed")]
        let link = Ordering::Relaxed;
        // SAFETY: `prev` was the head, so it is not freed until the consumer
        // advances past it, which needs this very link (invariants 2, 3).
        unsafe { (*prev).next.store(node, link) };
    }

    /// Dequeue one element.
    ///
    /// # Safety
    ///
    /// Only one thread (the consumer) may call `pop` or `is_empty` at a
    /// time for a given inbox (invariant 1).
    pub unsafe fn pop(&self) -> Pop<T> {
        self.tail.with_mut(|tail_slot| {
            // SAFETY: the consumer alone touches `tail` (this fn's contract).
            let tail = unsafe { *tail_slot };
            // SAFETY: `tail` is the consumer-owned stub, alive (invariant 3).
            let next = unsafe { (*tail).next.load(Ordering::Acquire) };
            if !next.is_null() {
                // SAFETY: as above, consumer-only (this fn's contract).
                unsafe { *tail_slot = next };
                // SAFETY: `next` was published with Release after its value
                // was written (invariant 2); it becomes the new stub, whose
                // value only we take.
                let value = unsafe { (*next).value.with_mut(|v| (*v).take()) };
                // SAFETY: the old stub is unreachable for producers (head moved
                // on past it) and ours to free (invariant 3).
                drop(unsafe { Box::from_raw(tail) });
                return match value {
                    Some(v) => Pop::Data(v),
                    None => Pop::Inconsistent,
                };
            }
            if self.head.load(Ordering::Acquire) == tail { Pop::Empty } else { Pop::Inconsistent }
        })
    }

    /// Whether nothing is queued (a producer mid-push counts as not empty).
    ///
    /// # Safety
    ///
    /// As for [`Inbox::pop`]: consumer thread only.
    pub unsafe fn is_empty(&self) -> bool {
        // SAFETY: consumer-only read of `tail` (this fn's contract).
        let tail = self.tail.with(|t| unsafe { *t });
        // SAFETY: `tail` is the live consumer-owned stub (invariant 3).
        let next = unsafe { (*tail).next.load(Ordering::Acquire) };
        next.is_null() && self.head.load(Ordering::Acquire) == tail
    }
}

impl<T> Drop for Inbox<T> {
    fn drop(&mut self) {
        // `&mut self`: no producer or consumer remains.
        let mut cur = self.tail.with(|t| {
            // SAFETY: exclusive access in drop.
            unsafe { *t }
        });
        while !cur.is_null() {
            // SAFETY: every node from tail on is owned by the queue and
            // reachable exactly once through `next`.
            let node = unsafe { Box::from_raw(cur) };
            cur = node.next.load(Ordering::Relaxed);
        }
    }
}

#[cfg(all(test, not(molt_loom)))]
mod tests {
    use super::*;

    #[test]
    fn fifo_per_producer_under_concurrency() {
        let q = std::sync::Arc::new(Inbox::new());
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        q.push((p, i));
                    }
                })
            })
            .collect();
        let mut next = [0u64; 4];
        let mut got = 0;
        while got < 40_000 {
            // SAFETY: this thread is the only consumer.
            match unsafe { q.pop() } {
                Pop::Data((p, i)) => {
                    assert_eq!(i, next[p as usize], "producer {p} out of order");
                    next[p as usize] += 1;
                    got += 1;
                }
                Pop::Empty | Pop::Inconsistent => std::hint::spin_loop(),
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        // SAFETY: this thread is the inbox's only consumer (invariant 1), as for pop above.
        assert!(unsafe { q.is_empty() });
    }

    #[test]
    fn drop_frees_queued_elements() {
        let q = Inbox::new();
        let rc = std::rc::Rc::new(());
        for _ in 0..3 {
            q.push(rc.clone());
        }
        drop(q);
        assert_eq!(std::rc::Rc::strong_count(&rc), 1);
    }
}
