//! [`StateBlock`] and [`Migration`]: module state in the runtime's region.

use core::ffi::CStr;
use core::sync::atomic::{AtomicU32, AtomicU64};

use super::{Error, Result};
use crate::Status;
use crate::ffi::{MOLT_MIGRATE_DOWN, molt_migration, molt_state_block};

/// A state block: bytes in the runtime-owned region that outlive module code.
///
/// Other workers (and other versions of the module, during a swap) see the
/// same bytes at the same time, so the safe views are atomics only. Keep
/// offsets in it, never pointers.
#[derive(Debug)]
pub struct StateBlock {
    base: *mut u8,
    info: molt_state_block,
}

// SAFETY: a StateBlock is an address in a shared mapping plus plain data; all
// access through it is atomic, so sharing or moving it between threads is sound.
unsafe impl Send for StateBlock {}
// SAFETY: as above: `&StateBlock` only hands out atomic views.
unsafe impl Sync for StateBlock {}

impl StateBlock {
    /// # Safety
    ///
    /// `base` is valid for `info.len` bytes, 64-byte aligned, for as long as
    /// this value lives (the module holds it in its instance, which `fini`
    /// consumes before the host may release the block).
    pub(crate) unsafe fn from_raw(base: *mut u8, info: molt_state_block) -> Result<StateBlock> {
        if base.is_null() || (base as usize) % 64 != 0 {
            return Err(Error::new(Status::Failed, "state_ptr returned a null or misaligned address"));
        }
        Ok(StateBlock { base, info })
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.info.len
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.info.len == 0
    }

    /// Its schema version.
    pub fn schema(&self) -> u32 {
        self.info.schema
    }

    /// Whether the open that produced it created it (all bytes zero).
    pub fn created(&self) -> bool {
        self.info.created != 0
    }

    /// The block as 64-bit atomics (its length rounded down to 8 bytes).
    pub fn atomic_u64s(&self) -> &[AtomicU64] {
        let n = (self.info.len / 8) as usize;
        // SAFETY: `base` is 64-byte aligned and valid for `len` bytes for the
        // life of `self` (from_raw's contract); AtomicU64 has the size and
        // alignment of u64 and permits shared mutation.
        unsafe { core::slice::from_raw_parts(self.base.cast::<AtomicU64>(), n) }
    }

    /// The block as 32-bit atomics (its length rounded down to 4 bytes).
    pub fn atomic_u32s(&self) -> &[AtomicU32] {
        let n = (self.info.len / 4) as usize;
        // SAFETY: as in `atomic_u64s`, for AtomicU32.
        unsafe { core::slice::from_raw_parts(self.base.cast::<AtomicU32>(), n) }
    }
}

/// One block migration: read `src` (old schema), write `dst` (new schema).
#[derive(Debug)]
pub struct Migration<'a> {
    /// Schema of `src`.
    pub from_schema: u32,
    /// Schema to write into `dst`.
    pub to_schema: u32,
    /// Whether this is a down-migration (rollback).
    pub down: bool,
    /// The block's name.
    pub block_name: &'a str,
    /// The old block.
    pub src: &'a [u8],
    /// The new block, zero-filled.
    pub dst: &'a mut [u8],
}

impl<'a> Migration<'a> {
    /// # Safety
    ///
    /// `m` is the migration the host passed to `migrate`, valid for `'a`:
    /// `src` readable for `src_len` bytes, `dst` writable for `dst_len`
    /// bytes and touched by nobody else during the call, `block_name`
    /// NUL-terminated.
    pub(crate) unsafe fn from_raw(m: &'a molt_migration) -> Result<Migration<'a>> {
        if m.src.is_null() || m.dst.is_null() || m.block_name.is_null() {
            return Err(Error::new(Status::InvalidArg, "migration with a null buffer or name"));
        }
        // SAFETY: per this function's contract.
        let name = unsafe { CStr::from_ptr(m.block_name) }.to_str().unwrap_or("(non-UTF-8 name)");
        // SAFETY: per this function's contract, `src` is readable for `src_len`.
        let src = unsafe { core::slice::from_raw_parts(m.src.cast::<u8>(), m.src_len as usize) };
        // SAFETY: per this function's contract, `dst` is ours to write for `dst_len`.
        let dst = unsafe { core::slice::from_raw_parts_mut(m.dst.cast::<u8>(), m.dst_len as usize) };
        Ok(Migration {
            from_schema: m.from_schema,
            to_schema: m.to_schema,
            down: m.direction == MOLT_MIGRATE_DOWN,
            block_name: name,
            src,
            dst,
        })
    }

    /// Read the native-endian u64 (as the atomics see it) at `index` (8-byte words) of `src`, 0 past its end.
    pub fn src_u64(&self, index: usize) -> u64 {
        self.src.get(index * 8..index * 8 + 8).map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// Write `value` as the native-endian u64 (as the atomics see it) at `index` of `dst`; false past its end.
    pub fn set_dst_u64(&mut self, index: usize, value: u64) -> bool {
        match self.dst.get_mut(index * 8..index * 8 + 8) {
            Some(b) => {
                b.copy_from_slice(&value.to_ne_bytes());
                true
            }
            None => false,
        }
    }
}
