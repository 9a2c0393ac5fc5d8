//! Events as the runtime queues them, and messages between workers.

use std::ffi::c_void;

use molt_abi::ffi::{MOLT_ABI_MAJOR, MOLT_ABI_MINOR, molt_event, molt_handler_fn, v1_0};

use crate::module::VersionRef;

const INLINE: usize = 22;

/// A message payload: small ones inline (no allocation), large ones boxed.
/// Sized so that an [`Event`] is one 64-byte cache line.
#[derive(Clone)]
pub enum Payload {
    /// Up to 22 bytes, inline.
    Inline {
        /// Used length.
        len: u8,
        /// The bytes.
        bytes: [u8; INLINE],
    },
    /// Larger payloads.
    Heap(Box<[u8]>),
}

impl Payload {
    /// Copy `data` into a payload.
    #[inline]
    pub fn copy_from(data: &[u8]) -> Payload {
        if data.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..data.len()].copy_from_slice(data);
            Payload::Inline { len: data.len() as u8, bytes }
        } else {
            Payload::Heap(data.into())
        }
    }

    /// The bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Inline { len, bytes } => &bytes[..*len as usize],
            Payload::Heap(b) => b,
        }
    }
}

/// One queued event.
pub struct Event {
    /// The receiving continuation.
    pub target: u64,
    /// The sender (0: host).
    pub source: u64,
    /// Tag.
    pub tag: u64,
    /// Kind-specific.
    pub arg0: u64,
    /// `MOLT_EV_*`.
    pub kind: u32,
    /// `MOLT_EVF_*`.
    pub flags: u32,
    /// Payload.
    pub payload: Payload,
}

const _: () = assert!(core::mem::size_of::<Event>() <= 64, "an Event is one cache line");

impl Event {
    /// A message from the host (source 0) to `target`, its payload copied.
    pub fn from_host(target: u64, tag: u64, data: &[u8]) -> Event {
        Event {
            target,
            source: 0,
            kind: molt_abi::ffi::MOLT_EV_MESSAGE,
            flags: 0,
            tag,
            arg0: 0,
            payload: Payload::copy_from(data),
        }
    }

    /// An event with no payload.
    pub fn bare(kind: u32, target: u64, source: u64, tag: u64) -> Event {
        Event { target, source, kind, flags: 0, tag, arg0: 0, payload: Payload::Inline { len: 0, bytes: [0; INLINE] } }
    }

    /// The ABI view, borrowing the payload.
    #[inline]
    pub fn as_abi(&self) -> molt_event {
        let data = self.payload.as_slice();
        molt_event {
            size: v1_0::EVENT_SIZE as u32,
            abi_major: MOLT_ABI_MAJOR,
            abi_minor: MOLT_ABI_MINOR,
            kind: self.kind,
            flags: self.flags,
            target: self.target,
            source: self.source,
            tag: self.tag,
            data: if data.is_empty() { core::ptr::null() } else { data.as_ptr() },
            len: data.len(),
            handle: 0,
            arg0: self.arg0,
            arg1: 0,
        }
    }
}

/// Module data handed between threads with a spawn.
pub struct SendPtr(pub(crate) *mut c_void);
// SAFETY: the pointer is the module's continuation data; the ABI lets a
// module create a continuation on another worker, so it must accept its data
// being used from that worker (one call at a time, actor semantics).
unsafe impl Send for SendPtr {}

/// A continuation created elsewhere for this worker (slot already reserved).
pub struct Spawn {
    /// Reserved slot.
    pub(crate) slot: u32,
    /// Its generation.
    pub(crate) generation: u32,
    /// The owning version (the reference the continuation will hold).
    pub(crate) version: VersionRef,
    /// Handler, or the descriptor's.
    pub(crate) handler: Option<molt_handler_fn>,
    /// Module data.
    pub(crate) data: SendPtr,
    /// START tag.
    pub(crate) tag: u64,
    /// Who created it (START's source).
    pub(crate) source: u64,
}

/// What other threads put in a worker's inbox.
pub enum Remote {
    /// An event for a continuation of this worker.
    Event(Event),
    /// Install a continuation reserved by another thread.
    Spawn(Box<Spawn>),
    /// End a continuation.
    Destroy(u64),
    /// Cancel a timer of this worker.
    CancelTimer(u64),
    /// Run a closure on this worker (control plane: status, tests).
    Run(Box<dyn FnOnce(&super::WorkerCore) + Send>),
}
