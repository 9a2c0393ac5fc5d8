//! Handle encoding for continuation and timer ids.
//!
//! ```text
//!  63        48 47             24 23              0
//! +------------+-----------------+-----------------+
//! | worker + 1 |   generation    |      slot       |
//! +------------+-----------------+-----------------+
//! ```
//!
//! The worker field is stored plus one, so no valid id is 0. The generation
//! counts reuses of the slot: a slot freed and reused gets a new generation,
//! so an old id no longer matches (no ABA). It wraps after 2^24 reuses of one
//! slot; an id held across sixteen million reuses of its slot could match
//! again, which we accept and document.

/// Bits of the slot index.
pub const SLOT_BITS: u32 = 24;
/// Bits of the generation.
pub const GEN_BITS: u32 = 24;
/// Largest slot index + 1.
pub const MAX_SLOTS: u32 = 1 << SLOT_BITS;
/// Generation mask.
pub const GEN_MASK: u32 = (1 << GEN_BITS) - 1;
/// Largest number of workers.
pub const MAX_WORKERS: u32 = (1 << 16) - 1;

/// The parts of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// Worker index.
    pub worker: u32,
    /// Slot index.
    pub slot: u32,
    /// Generation (masked to [`GEN_BITS`]).
    pub generation: u32,
}

/// Pack an id.
#[inline]
pub fn encode(worker: u32, slot: u32, generation: u32) -> u64 {
    debug_assert!(worker < MAX_WORKERS && slot < MAX_SLOTS);
    ((u64::from(worker) + 1) << 48) | (u64::from(generation & GEN_MASK) << SLOT_BITS) | u64::from(slot)
}

/// Unpack an id; `None` for 0 (never valid).
#[inline]
pub fn decode(id: u64) -> Option<Parts> {
    let w = (id >> 48) as u32;
    if w == 0 {
        return None;
    }
    Some(Parts {
        worker: w - 1,
        slot: (id as u32) & (MAX_SLOTS - 1),
        generation: ((id >> SLOT_BITS) as u32) & GEN_MASK,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_zero_is_invalid() {
        for (w, s, g) in [(0, 0, 0), (3, 77, 5), (MAX_WORKERS - 1, MAX_SLOTS - 1, GEN_MASK)] {
            let id = encode(w, s, g);
            assert_ne!(id, 0);
            assert_eq!(decode(id), Some(Parts { worker: w, slot: s, generation: g }));
        }
        assert_eq!(decode(0), None);
        assert_eq!(decode(encode(1, 2, GEN_MASK + 1)).unwrap().generation, 0, "generation wraps");
    }
}
