//! Connections on the workers' pollers, and the TCP proxy.
//!
//! Every worker binds its own listener for each route with `SO_REUSEPORT`,
//! so the kernel spreads connections over workers and a connection lives
//! on one worker for its whole life, in that worker's mio poller. A proxied
//! connection is a [`Pair`]: the client socket, the upstream socket, and one
//! bounded buffer per direction. mio is edge-triggered, so on any readiness
//! the pair is *pumped*: read and write in both directions until nothing
//! moves; a full buffer stops reading from that side (backpressure) and is
//! retried after the other side drained some.
//!
//! Built on the core (the worker loop calls in); the core does not know it
//! beyond that call.

pub(crate) mod balance;
mod proxy;
pub(crate) mod slots;

pub use crate::sys::listen::{bind_reuseport, ensure_unserved};
pub use proxy::{Net, TcpLayer, TcpRoute, TcpStats};
