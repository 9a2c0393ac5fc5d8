//! Isolated modules: a module's library loaded in a child process (`molt
//! module-host`), reached over a pair of shared-memory rings, so that its
//! crash is the child's, not molt's (`docs/isolation.md`).
//!
//! This part is the transport and the child: a segment of two rings (to
//! the child, from the child), each side spinning briefly and then sleeping
//! on the ring's futex; the child loads the module the way the runtime does
//! and answers messages. [`Isolated`] is the parent's handle: it starts the
//! child, waits for it to be ready, and makes calls, noticing a child that
//! died or corrupted a ring.
//!
//! Loom builds compile it with loom's atomics but never run it: the loom
//! models check the ring with memory of their own, and a shared-memory ring
//! made in a loom build panics before it touches anything.

pub mod ring;

mod shm;
pub mod supervisor;
pub use shm::{RING_CAP, ShmRing};

pub use shm::{HookServer, HostArgs, IsolateError, Isolated, Reply, host_main};
pub(crate) use shm::{pop_hook_reply, push_hook};
pub use supervisor::{Incarnation, Supervisor, SupervisorStatus};
