//! State blocks, in process memory for now.
//!
//! This is the stand-in the ABI's state calls use until the mmap'd state
//! region lands (see docs/abi.md, "State"): blocks are named per module,
//! schema-versioned, zero-filled on creation, 64-byte aligned, and never move
//! while the process lives, so the addresses handed to modules stay valid.
//! They do not survive a restart, which is why this host does not claim
//! `MOLT_HOST_CAP_STATE_PERSISTENT`.

use std::alloc::{Layout, alloc_zeroed, dealloc};

use molt_abi::ffi::*;

use crate::sync::Mutex;

/// A zeroed, 64-byte aligned heap buffer.
#[derive(Debug)]
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the buffer is plain memory owned by this value; modules access it
// through atomics only (the SDK's views), so moving or sharing the owner
// across threads is sound.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn zeroed(len: u64) -> Option<AlignedBuf> {
        let len = usize::try_from(len).ok()?.max(64);
        let layout = Layout::from_size_align(len, 64).ok()?;
        // SAFETY: the layout has a non-zero size (at least 64 bytes).
        let ptr = unsafe { alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(AlignedBuf { ptr, layout })
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with exactly this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

#[derive(Debug)]
struct Block {
    owner: String,
    name: String,
    schema: u32,
    len: u64,
    mem: AlignedBuf,
    /// Replaced by a migrated block; kept so old code's address stays valid.
    retired: bool,
}

/// What [`StateStore::open`] found or made.
#[derive(Debug, Clone, Copy)]
pub enum Opened {
    /// The block exists with the asked schema.
    Existing { handle: u64, len: u64 },
    /// The block was created, zero-filled.
    Created { handle: u64, len: u64 },
    /// The block exists with an older schema: migrate `src` into the new,
    /// zero-filled `dst` and then [`StateStore::commit_migration`].
    NeedsMigration {
        /// The old block.
        src: u64,
        /// The new block (not yet visible to `open`).
        dst: u64,
        /// The old schema.
        from_schema: u32,
    },
}

/// A block's description, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    /// The owning module.
    pub owner: String,
    /// The block name.
    pub name: String,
    /// Its schema version.
    pub schema: u32,
    /// Its length in bytes.
    pub len: u64,
}

/// All state blocks of the process.
#[derive(Debug, Default)]
pub struct StateStore {
    blocks: Mutex<Vec<Block>>,
}

impl StateStore {
    /// Open `owner`'s block `name` with `schema` and at least `min_len` bytes.
    pub fn open(&self, owner: &str, name: &str, schema: u32, min_len: u64) -> Result<Opened, (molt_status, String)> {
        if name.is_empty() || name.len() > 64 {
            return Err((MOLT_ERR_INVALID_ARG, format!("state block name {name:?} must be 1 to 64 bytes")));
        }
        let mut blocks = self.blocks.lock();
        let live = blocks.iter().position(|b| !b.retired && b.owner == owner && b.name == name);
        let Some(i) = live else {
            let mem = AlignedBuf::zeroed(min_len).ok_or_else(|| no_memory(owner, name, min_len))?;
            let len = mem.layout.size() as u64;
            blocks.push(Block { owner: owner.into(), name: name.into(), schema, len, mem, retired: false });
            return Ok(Opened::Created { handle: blocks.len() as u64, len });
        };
        let b = &blocks[i];
        if b.schema == schema {
            if b.len < min_len {
                return Err((
                    MOLT_ERR_INVALID_ARG,
                    format!(
                        "state block {owner}/{name} holds {} bytes, the module asks for {min_len}: a larger block needs a new schema version and a migrate",
                        b.len
                    ),
                ));
            }
            return Ok(Opened::Existing { handle: i as u64 + 1, len: b.len });
        }
        if b.schema > schema {
            return Err((
                MOLT_ERR_SCHEMA,
                format!(
                    "state block {owner}/{name} has schema {} but the module speaks {schema}: going down needs the newer version's down-migration (rollback)",
                    b.schema
                ),
            ));
        }
        let from_schema = b.schema;
        let len = min_len.max(b.len);
        let mem = AlignedBuf::zeroed(len).ok_or_else(|| no_memory(owner, name, len))?;
        let len = mem.layout.size() as u64;
        blocks.push(Block { owner: owner.into(), name: name.into(), schema, len, mem, retired: true });
        Ok(Opened::NeedsMigration { src: i as u64 + 1, dst: blocks.len() as u64, from_schema })
    }

    /// Make migrated block `dst` the live one in place of `src`.
    pub fn commit_migration(&self, src: u64, dst: u64) {
        let mut blocks = self.blocks.lock();
        if let Some(b) = blocks.get_mut(src as usize - 1) {
            b.retired = true;
        }
        if let Some(b) = blocks.get_mut(dst as usize - 1) {
            b.retired = false;
        }
    }

    /// The address and length of block `handle`, if it belongs to `owner`.
    pub fn ptr(&self, owner: &str, handle: u64) -> Option<(*mut u8, u64)> {
        let blocks = self.blocks.lock();
        let b = blocks.get(usize::try_from(handle).ok()?.checked_sub(1)?)?;
        (b.owner == owner).then_some((b.mem.ptr, b.len))
    }

    /// The schema of block `handle`.
    pub fn schema(&self, handle: u64) -> Option<u32> {
        let blocks = self.blocks.lock();
        blocks.get(usize::try_from(handle).ok()?.checked_sub(1)?).map(|b| b.schema)
    }

    /// Every live block.
    pub fn blocks(&self) -> Vec<BlockInfo> {
        self.blocks
            .lock()
            .iter()
            .filter(|b| !b.retired)
            .map(|b| BlockInfo { owner: b.owner.clone(), name: b.name.clone(), schema: b.schema, len: b.len })
            .collect()
    }
}

fn no_memory(owner: &str, name: &str, len: u64) -> (molt_status, String) {
    (MOLT_ERR_NO_MEMORY, format!("cannot allocate {len} bytes for state block {owner}/{name}"))
}
