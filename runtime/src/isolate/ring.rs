//! A single-producer, single-consumer ring of messages in memory shared by
//! two processes: the transport of an isolated module (a worker and its
//! module's child process, one pair of rings each way).
//!
//! Layout (`HEADER` bytes, then `cap` bytes of data, `cap` a power of two):
//!
//! | offset | field |
//! |---|---|
//! | 0 | `head`: u64, bytes the producer has written (only it stores) |
//! | 64 | `tail`: u64, bytes the consumer has read (only it stores) |
//! | 128 | `sleeping`: u32, the consumer's futex word (1: it sleeps, or is about to) |
//!
//! A record is a `u32` length, a `u32` kind and the payload, padded to 8
//! bytes; it never wraps: a record that does not fit before the end is
//! preceded by a `PAD` record filling the rest. The producer writes the
//! record, then publishes it with a release store of `head`; the consumer
//! reads it after an acquire load of `head`, then frees it with a release
//! store of `tail`.
//!
//! The other side may be hostile (a module's child is not trusted): every
//! position and length read from the shared memory is checked before use,
//! a payload is copied out before it is looked at, and any inconsistency is
//! [`RingError::Corrupt`], after which the ring is not used again.

use crate::sync::{AtomicU32, AtomicU64, Ordering, fence};

/// Bytes before the data.
pub const HEADER: usize = 192;
/// The kind of a record that only fills the end of the buffer.
pub const PAD: u32 = u32::MAX;
/// A record's header: length and kind.
const REC: usize = 8;

/// The memory a ring lives in: its three words and its data bytes.
pub trait RingMem {
    /// The producer's position.
    fn head(&self) -> &AtomicU64;
    /// The consumer's position.
    fn tail(&self) -> &AtomicU64;
    /// The consumer's futex word.
    fn sleeping(&self) -> &AtomicU32;
    /// Data bytes (a power of two).
    fn cap(&self) -> usize;
    /// Copy `bytes` to data offset `at` (`at + len <= cap`).
    fn write(&self, at: usize, bytes: &[u8]);
    /// Copy data from offset `at` into `out` (`at + len <= cap`).
    fn read(&self, at: usize, out: &mut [u8]);
}

/// What went wrong with a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The message is larger than a quarter of the ring.
    #[error("a message of {len} bytes is larger than this ring takes ({max})")]
    TooLarge {
        /// Its payload length.
        len: usize,
        /// The most a ring of this size takes.
        max: usize,
    },
    /// The positions or a record are inconsistent: the other side wrote
    /// what no correct peer writes.
    #[error("the ring is corrupted: {0}")]
    Corrupt(&'static str),
}

fn padded(len: usize) -> usize {
    REC + len.div_ceil(8) * 8
}

/// The largest payload a ring of `cap` data bytes takes.
pub fn max_payload(cap: usize) -> usize {
    cap / 4 - REC
}

/// The producer's end.
pub struct Producer<M: RingMem> {
    mem: M,
    /// Our own copy of `head` (only we store it: never read back from a
    /// memory the other side could have scribbled on).
    head: u64,
}

/// The consumer's end.
pub struct Consumer<M: RingMem> {
    mem: M,
    /// Our own copy of `tail`.
    tail: u64,
}

impl<M: RingMem> Producer<M> {
    /// The producer of a ring whose positions are zero (a new ring).
    pub fn new(mem: M) -> Producer<M> {
        debug_assert!(mem.cap().is_power_of_two() && mem.cap() >= 64);
        Producer { mem, head: 0 }
    }

    /// Append a record; `Ok(false)` when the ring has no room for it now.
    pub fn push(&mut self, kind: u32, payload: &[u8]) -> Result<bool, RingError> {
        let cap = self.mem.cap();
        if payload.len() > max_payload(cap) || kind == PAD {
            return Err(RingError::TooLarge { len: payload.len(), max: max_payload(cap) });
        }
        let need = padded(payload.len());
        let tail = self.mem.tail().load(Ordering::Acquire);
        if tail > self.head || self.head - tail > cap as u64 {
            return Err(RingError::Corrupt("the consumer's position is outside the ring"));
        }
        let pos = (self.head % cap as u64) as usize;
        let to_end = cap - pos;
        let total = if to_end < need { to_end + need } else { need };
        if (cap as u64) - (self.head - tail) < total as u64 {
            return Ok(false);
        }
        let mut head = self.head;
        let mut at = pos;
        if to_end < need {
            let mut pad = [0u8; REC];
            pad[..4].copy_from_slice(&((to_end - REC) as u32).to_le_bytes());
            pad[4..].copy_from_slice(&PAD.to_le_bytes());
            self.mem.write(pos, &pad);
            head += to_end as u64;
            at = 0;
        }
        let mut rec = [0u8; REC];
        rec[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        rec[4..].copy_from_slice(&kind.to_le_bytes());
        self.mem.write(at, &rec);
        self.mem.write(at + REC, payload);
        head += need as u64;
        self.head = head;
        #[cfg(not(molt_mutant = "ring_head_relaxed"))]
        self.mem.head().store(head, Ordering::Release);
        // The mutant publishes without ordering the record's bytes first.
        #[cfg(molt_mutant = "ring_head_relaxed")]
        self.mem.head().store(head, Ordering::Relaxed);
        Ok(true)
    }

    /// Whether the consumer sleeps (or is about to) and needs a wake-up
    /// for what was pushed. The fence pairs with [`Consumer::prepare_sleep`]'s:
    /// either the consumer sees the new `head`, or we see it sleeping.
    pub fn consumer_sleeps(&self) -> bool {
        fence(Ordering::SeqCst);
        self.mem.sleeping().load(Ordering::Relaxed) != 0
    }

    /// The ring's memory.
    pub fn mem(&self) -> &M {
        &self.mem
    }
}

impl<M: RingMem> Consumer<M> {
    /// The consumer of a ring whose positions are zero (a new ring).
    pub fn new(mem: M) -> Consumer<M> {
        Consumer { mem, tail: 0 }
    }

    /// Take the next record: its kind, its payload copied into `out`
    /// (cleared first). `Ok(None)` when the ring is empty.
    pub fn pop(&mut self, out: &mut Vec<u8>) -> Result<Option<u32>, RingError> {
        let cap = self.mem.cap();
        loop {
            let head = self.mem.head().load(Ordering::Acquire);
            if head == self.tail {
                return Ok(None);
            }
            if head < self.tail || head - self.tail > cap as u64 {
                return Err(RingError::Corrupt("the producer's position is outside the ring"));
            }
            let pos = (self.tail % cap as u64) as usize;
            let mut rec = [0u8; REC];
            self.mem.read(pos, &mut rec);
            let len = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]) as usize;
            let kind = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
            if kind == PAD {
                if len + REC != cap - pos || self.tail + (cap - pos) as u64 > head {
                    return Err(RingError::Corrupt("a pad record that does not end the buffer"));
                }
                self.tail += (cap - pos) as u64;
                self.mem.tail().store(self.tail, Ordering::Release);
                continue;
            }
            if len > max_payload(cap) {
                return Err(RingError::Corrupt("a record longer than the ring takes"));
            }
            let need = padded(len);
            if need > cap - pos || self.tail + need as u64 > head {
                return Err(RingError::Corrupt("a record past what was published"));
            }
            out.clear();
            out.resize(len, 0);
            self.mem.read(pos + REC, out);
            self.tail += need as u64;
            self.mem.tail().store(self.tail, Ordering::Release);
            return Ok(Some(kind));
        }
    }

    /// Whether a record waits (a cheap check for spinning).
    pub fn ready(&self) -> bool {
        self.mem.head().load(Ordering::Acquire) != self.tail
    }

    /// Say we are going to sleep; then check [`Consumer::ready`] once more
    /// before sleeping (a push in between either sees the flag or is seen).
    pub fn prepare_sleep(&self) {
        self.mem.sleeping().store(1, Ordering::Relaxed);
        #[cfg(not(molt_mutant = "ring_sleep_no_fence"))]
        fence(Ordering::SeqCst);
    }

    /// Awake again (woken, or the check found work).
    pub fn awake(&self) {
        self.mem.sleeping().store(0, Ordering::Relaxed);
    }

    /// The ring's memory.
    pub fn mem(&self) -> &M {
        &self.mem
    }
}

/// A ring in memory owned by this process (the unit tests; the loom models
/// use their own).
#[cfg(all(test, not(molt_loom)))]
pub struct HeapRing {
    words: Box<[AtomicU64; 3 * 8]>,
    data: Box<[std::cell::UnsafeCell<u8>]>,
}

// SAFETY: the data bytes are written only by the producer in bytes no
// consumer reads until `head` publishes them, and read by the consumer in
// bytes the producer does not write until `tail` frees them (the ring's
// protocol, which the loom model checks).
#[cfg(all(test, not(molt_loom)))]
unsafe impl Sync for HeapRing {}

#[cfg(all(test, not(molt_loom)))]
impl HeapRing {
    /// A ring of `cap` data bytes.
    pub fn new(cap: usize) -> HeapRing {
        HeapRing {
            words: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            data: (0..cap).map(|_| std::cell::UnsafeCell::new(0)).collect(),
        }
    }
}

#[cfg(all(test, not(molt_loom)))]
impl RingMem for &HeapRing {
    fn head(&self) -> &AtomicU64 {
        &self.words[0]
    }
    fn tail(&self) -> &AtomicU64 {
        &self.words[8]
    }
    fn sleeping(&self) -> &AtomicU32 {
        // SAFETY: an AtomicU64 is 8-aligned; its first 4 bytes are a valid,
        // aligned AtomicU32 that only this word's users touch.
        unsafe { &*(&raw const self.words[16]).cast::<AtomicU32>() }
    }
    fn cap(&self) -> usize {
        self.data.len()
    }
    fn write(&self, at: usize, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: the protocol gives these bytes to the producer now.
            unsafe { *self.data[at + i].get() = *b };
        }
    }
    fn read(&self, at: usize, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: the protocol gives these bytes to the consumer now.
            *b = unsafe { *self.data[at + i].get() };
        }
    }
}

#[cfg(all(test, not(molt_loom)))]
mod tests {
    use super::*;

    #[test]
    fn records_of_every_size_wrap_and_come_back_in_order() {
        let ring = HeapRing::new(256);
        let (mut p, mut c) = (Producer::new(&ring), Consumer::new(&ring));
        let mut out = Vec::new();
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        for round in 0..2000u32 {
            let len = (round as usize * 7) % (max_payload(256) + 1);
            let payload: Vec<u8> = (0..len).map(|i| (i as u32 ^ next_in) as u8).collect();
            if p.push(next_in, &payload).unwrap() {
                next_in += 1;
            }
            if round % 3 != 0 {
                while let Some(kind) = c.pop(&mut out).unwrap() {
                    assert_eq!(kind, next_out);
                    assert!(out.iter().enumerate().all(|(i, b)| *b == (i as u32 ^ next_out) as u8));
                    next_out += 1;
                }
            }
        }
        while c.pop(&mut out).unwrap().is_some() {
            next_out += 1;
        }
        assert_eq!(next_in, next_out);
        assert!(next_in > 1000);
    }

    #[test]
    fn full_too_large_and_corrupt() {
        let ring = HeapRing::new(64);
        let (mut p, mut c) = (Producer::new(&ring), Consumer::new(&ring));
        assert_eq!(max_payload(64), 8);
        assert!(matches!(p.push(1, &[0; 9]), Err(RingError::TooLarge { len: 9, max: 8 })));
        let mut pushed = 0;
        while p.push(1, &[1; 8]).unwrap() {
            pushed += 1;
        }
        assert_eq!(pushed, 4, "64 bytes take four 16-byte records");
        let mut out = Vec::new();
        assert_eq!(c.pop(&mut out).unwrap(), Some(1));
        assert!(p.push(2, &[2; 8]).unwrap(), "room again after a pop");
        // A producer position beyond what the ring holds.
        (&ring).head().store(1 << 40, Ordering::Release);
        assert!(matches!(c.pop(&mut out), Err(RingError::Corrupt(_))));
        // A consumer position ahead of the producer's.
        let ring = HeapRing::new(64);
        let mut p = Producer::new(&ring);
        (&ring).tail().store(100, Ordering::Release);
        assert!(matches!(p.push(1, &[]), Err(RingError::Corrupt(_))));
        // A record claiming more than was published.
        let ring = HeapRing::new(64);
        let (mut p, mut c) = (Producer::new(&ring), Consumer::new(&ring));
        p.push(1, &[7; 8]).unwrap();
        (&ring).write(0, &200u32.to_le_bytes());
        assert!(matches!(c.pop(&mut out), Err(RingError::Corrupt(_))));
    }
}
