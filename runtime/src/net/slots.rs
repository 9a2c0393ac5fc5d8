//! [`Slots`]: a list whose indices stay put, with a free list, for the
//! connections of one worker's layer (an index is part of a poll token).

/// Values at stable indices; a freed index is handed out again, with its
/// generation bumped (so a handle of index and generation goes stale).
///
/// A slot is *free* (in the free list), *reserved* (its index is in use but
/// its value is out, e.g. taken while being driven) or *filled*.
#[derive(Debug)]
pub struct Slots<T> {
    items: Vec<Option<T>>,
    generations: Vec<u32>,
    free: Vec<usize>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots { items: Vec::new(), generations: Vec::new(), free: Vec::new() }
    }
}

impl<T> Slots<T> {
    /// An index for a new value; the slot is reserved, empty, until [`Slots::fill`].
    pub fn reserve(&mut self) -> usize {
        let idx = self.free.pop().unwrap_or_else(|| {
            self.items.push(None);
            self.generations.push(0);
            self.items.len() - 1
        });
        self.generations[idx] = self.generations[idx].wrapping_add(1);
        idx
    }

    /// How many times index `idx` was reserved (from 1; wraps).
    pub fn generation(&self, idx: usize) -> u32 {
        self.generations[idx]
    }

    /// Put `value` at a reserved index (one returned by [`Slots::reserve`]
    /// or emptied by [`Slots::take`]).
    pub fn fill(&mut self, idx: usize, value: T) {
        self.items[idx] = Some(value);
    }

    /// Reserve an index and fill it.
    pub fn insert(&mut self, value: T) -> usize {
        let idx = self.reserve();
        self.fill(idx, value);
        idx
    }

    /// Take the value out, keeping the index reserved.
    pub fn take(&mut self, idx: usize) -> Option<T> {
        self.items.get_mut(idx).and_then(Option::take)
    }

    /// Free a reserved (empty) index.
    pub fn release(&mut self, idx: usize) {
        debug_assert!(self.items[idx].is_none(), "a filled slot is released");
        self.free.push(idx);
    }

    /// Take the value out and free its index.
    pub fn remove(&mut self, idx: usize) -> Option<T> {
        let v = self.take(idx)?;
        self.free.push(idx);
        Some(v)
    }

    /// Indices in use (filled or reserved).
    pub fn in_use(&self) -> usize {
        self.items.len() - self.free.len()
    }

    /// The value at `idx`.
    pub fn get(&self, idx: usize) -> Option<&T> {
        self.items.get(idx).and_then(Option::as_ref)
    }

    /// The value at `idx`, mutably.
    pub fn get_mut(&mut self, idx: usize) -> Option<&mut T> {
        self.items.get_mut(idx).and_then(Option::as_mut)
    }

    /// One past the highest index ever handed out.
    pub fn bound(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_stable_and_reused() {
        let mut s = Slots::default();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!(s.take(a), Some("a"));
        assert_eq!(s.reserve(), 2, "a taken slot stays reserved");
        s.fill(a, "a2");
        assert_eq!(s.remove(b), Some("b"));
        let g = s.generation(b);
        assert_eq!(s.reserve(), b, "a removed slot is reused");
        assert_eq!(s.generation(b), g + 1, "with its generation bumped");
        assert_eq!((s.get(a), s.bound()), (Some(&"a2"), 3));
    }
}
