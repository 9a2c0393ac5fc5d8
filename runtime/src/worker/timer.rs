//! A hashed timing wheel: O(1) schedule and cancel, amortised O(1) expiry.
//!
//! 256 slots of one millisecond each. A timer sits in the slot of its
//! deadline tick modulo 256; each tick the loop visits that slot, fires the
//! timers that are due, and leaves those due in a later round. Cancel bumps
//! the timer's generation and frees its slot entry at once; the stale wheel
//! entry is skipped when its slot comes round. Resolution is one tick: a
//! timer fires on the first loop turn at or after its deadline, never early.

use std::time::{Duration, Instant};

const SLOTS: usize = 256;
/// The wheel's resolution.
pub const TICK: Duration = Duration::from_millis(1);

struct Entry<T> {
    generation: u32,
    deadline: u64,
    payload: Option<T>,
}

/// The wheel, generic over what a timer carries.
pub struct TimerWheel<T> {
    start: Instant,
    /// Last tick processed.
    cursor: u64,
    wheel: Vec<Vec<(u32, u32)>>,
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    live: usize,
}

impl<T> TimerWheel<T> {
    /// An empty wheel whose tick 0 is `now`.
    pub fn new(now: Instant) -> TimerWheel<T> {
        TimerWheel {
            start: now,
            cursor: 0,
            wheel: (0..SLOTS).map(|_| Vec::new()).collect(),
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    fn tick_of(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.start);
        (d.as_nanos() / TICK.as_nanos()) as u64
    }

    /// Schedule the payload `make(index, generation)` builds after `delay`;
    /// returns (index, generation), the timer's handle.
    pub fn schedule(&mut self, now: Instant, delay: Duration, make: impl FnOnce(u32, u32) -> T) -> (u32, u32) {
        // The first tick boundary at or after now + delay, so a timer never
        // fires early; and never a tick already processed.
        let due = now.saturating_duration_since(self.start) + delay;
        let deadline = (due.as_nanos().div_ceil(TICK.as_nanos()) as u64).max(self.cursor + 1);
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(Entry { generation: 0, deadline, payload: None });
                (self.entries.len() - 1) as u32
            }
        };
        let e = &mut self.entries[idx as usize];
        let generation = e.generation;
        e.deadline = deadline;
        e.payload = Some(make(idx, generation));
        self.wheel[(deadline % SLOTS as u64) as usize].push((idx, generation));
        self.live += 1;
        (idx, generation)
    }

    /// Cancel a pending timer, returning its payload; `None` if it fired or
    /// was cancelled already.
    pub fn cancel(&mut self, idx: u32, generation: u32) -> Option<T> {
        let e = self.entries.get_mut(idx as usize)?;
        if e.generation != generation || e.payload.is_none() {
            return None;
        }
        let p = e.payload.take();
        e.generation = e.generation.wrapping_add(1);
        self.free.push(idx);
        self.live -= 1;
        p
    }

    /// Fire every timer due at `now`, in deadline order within a tick.
    pub fn advance(&mut self, now: Instant, mut fire: impl FnMut(T)) {
        let target = self.tick_of(now);
        while self.cursor < target && self.live > 0 {
            self.cursor += 1;
            let slot = (self.cursor % SLOTS as u64) as usize;
            let mut list = std::mem::take(&mut self.wheel[slot]);
            list.retain(|&(idx, generation)| {
                let e = &mut self.entries[idx as usize];
                if e.generation != generation || e.payload.is_none() {
                    return false; // cancelled: drop the stale entry
                }
                if e.deadline > self.cursor {
                    return true; // a later round
                }
                let p = e.payload.take();
                e.generation = e.generation.wrapping_add(1);
                self.free.push(idx);
                self.live -= 1;
                if let Some(p) = p {
                    fire(p);
                }
                false
            });
            // Entries scheduled by `fire` went to other slots' lists; keep ours.
            let added = std::mem::replace(&mut self.wheel[slot], list);
            self.wheel[slot].extend(added);
        }
        if self.live == 0 {
            self.cursor = self.cursor.max(target);
        }
    }

    /// How long the loop may block before the next tick that has timers.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        if self.live == 0 {
            return None;
        }
        let next = self.start + TICK * (self.cursor as u32 + 1);
        Some(next.saturating_duration_since(now))
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Cancel every pending timer whose payload matches, returning the payloads.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter_mut().enumerate() {
            if e.payload.as_ref().is_some_and(&mut pred) {
                out.extend(e.payload.take());
                e.generation = e.generation.wrapping_add(1);
                self.free.push(i as u32);
                self.live -= 1;
            }
        }
        out
    }

    /// Visit every pending timer's payload mutably; returns how many `f`
    /// reported as changed.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut T) -> bool) -> usize {
        let mut n = 0;
        for p in self.entries.iter_mut().filter_map(|e| e.payload.as_mut()) {
            if f(p) {
                n += 1;
            }
        }
        n
    }

    /// Remove every pending timer, returning the payloads.
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter_mut().enumerate() {
            if let Some(p) = e.payload.take() {
                e.generation = e.generation.wrapping_add(1);
                self.free.push(i as u32);
                out.push(p);
            }
        }
        self.live = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_on_time_never_early_and_cancel_is_final() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let a = w.schedule(t0, Duration::from_millis(5), |_, _| "a");
        let b = w.schedule(t0, Duration::from_millis(300), |_, _| "b"); // a later round
        let c = w.schedule(t0, Duration::from_micros(10), |_, _| "c");
        assert_eq!(w.cancel(c.0, c.1), Some("c"));
        assert_eq!(w.cancel(c.0, c.1), None, "second cancel is stale");
        let mut fired = Vec::new();
        w.advance(t0 + Duration::from_millis(4), |p| fired.push(p));
        assert!(fired.is_empty(), "nothing is due before 5 ms");
        w.advance(t0 + Duration::from_millis(5), |p| fired.push(p));
        assert_eq!(fired, ["a"]);
        assert_eq!(w.cancel(a.0, a.1), None, "a fired: cancel is stale");
        w.advance(t0 + Duration::from_millis(299), |p| fired.push(p));
        assert_eq!(fired, ["a"]);
        w.advance(t0 + Duration::from_millis(301), |p| fired.push(p));
        assert_eq!(fired, ["a", "b"]);
        assert!(w.is_empty());
        // A reused entry gets a new generation: the old handle stays stale.
        let d = w.schedule(t0 + Duration::from_millis(301), Duration::from_millis(1), |_, _| "d");
        assert!(d.0 < 3, "a freed entry is reused, the table does not grow");
        assert_eq!(w.cancel(a.0, a.1), None);
        assert_eq!(w.cancel(c.0, c.1), None);
        assert_eq!(w.cancel(b.0, b.1), None);
        assert_eq!(w.cancel(d.0, d.1), Some("d"));
    }
}
