//! Socket layers on a worker's poller.
//!
//! The core knows sockets only through this trait: the TCP proxy and the
//! HTTP proxy are layers built on it (`net/`, `http/`), set up on each
//! worker's own thread when its loop starts. A layer owns a range of mio
//! tokens (its index in the top 16 bits) and a range of connection handles
//! (its index + 1 in the top 8 bits), so the worker routes readiness and
//! the modules' connection calls to the layer that owns them.

use std::time::{Duration, Instant};

use molt_abi::ffi::*;

use super::WorkerCore;
use crate::host::ServiceResult;
use crate::module::VersionRef;

/// Bits of a token that belong to the layer.
pub const TOKEN_BITS: u32 = 48;
/// Bits of a connection handle that belong to the layer.
pub const HANDLE_BITS: u32 = 56;

/// The mio token for a layer's own `token`.
pub fn token(layer: usize, token: usize) -> mio::Token {
    debug_assert!(token < 1 << TOKEN_BITS);
    mio::Token((layer << TOKEN_BITS) | token)
}

/// The connection handle modules see for a layer's own `handle`.
pub fn handle(layer: usize, handle: u64) -> u64 {
    debug_assert!(handle < 1 << HANDLE_BITS && handle != 0);
    ((layer as u64 + 1) << HANDLE_BITS) | handle
}

/// Split a module's connection handle into (layer, the layer's handle).
pub fn split_handle(h: u64) -> Option<(usize, u64)> {
    let layer = (h >> HANDLE_BITS) as usize;
    (layer > 0).then(|| (layer - 1, h & ((1 << HANDLE_BITS) - 1)))
}

/// What a readiness event says of its socket.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    /// Reading may make progress (data, EOF or an error is there).
    pub readable: bool,
    /// The peer closed its side (or an error came): reading will reach EOF,
    /// even after a short read.
    pub read_closed: bool,
}

impl Readiness {
    /// The readiness of a mio event.
    pub fn of(ev: &mio::event::Event) -> Readiness {
        Readiness {
            readable: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
            read_closed: ev.is_read_closed() || ev.is_error(),
        }
    }
}

fn no_conn<T>(conn: u64) -> ServiceResult<T> {
    Err((MOLT_ERR_STALE, format!("connection {conn:#x} is not open (closed, or never existed)")))
}

/// A layer of sockets on one worker. Methods take `&self`: a layer calls
/// modules, and modules call back into it (`conn_write`...) during those
/// calls, so a layer keeps no borrow of its own state across a module call.
pub trait Io {
    /// Readiness of one of its tokens (the layer's part of it).
    fn ready(&self, core: &WorkerCore, token: usize, ready: Readiness);
    /// Timeouts and deferred work, at least every `tick_every`; whether it did anything.
    fn tick(&self, core: &WorkerCore, now: Instant) -> bool;
    /// The worker's holds were released (a state migration ended): work
    /// that met a held version ([`super::CallNow::Held`]) can go on now.
    fn unheld(&self, _core: &WorkerCore) {}
    /// How soon the layer wants `tick` again when the worker is idle.
    fn tick_every(&self) -> Duration {
        Duration::from_millis(50)
    }
    /// Queue bytes to a connection.
    fn conn_write(&self, _core: &WorkerCore, conn: u64, _data: &[u8]) -> ServiceResult<()> {
        no_conn(conn)
    }
    /// Close a connection after its queued bytes.
    fn conn_close(&self, _core: &WorkerCore, conn: u64) -> ServiceResult<()> {
        no_conn(conn)
    }
    /// The layer itself, for the control side to find its own kind among
    /// a worker's layers (a reload reconfiguring the HTTP layer).
    fn as_any(&self) -> &dyn std::any::Any;
    /// Accept on its listeners (`on`), or stop: `false` deregisters and
    /// closes this worker's listening sockets (its connections go on). A
    /// layer built paused (a binary upgrade's new process) accepts from
    /// the first `true`.
    fn accepting(&self, _core: &WorkerCore, _on: bool) {}
    /// Its listening sockets now, duplicated, each under its listener's key
    /// (`http:<site>`, `tcp:<route index>`): what a binary upgrade hands over.
    fn listener_fds(&self) -> Vec<(String, std::os::fd::OwnedFd)> {
        Vec::new()
    }
    /// The process is about to exit: ask clients to go (a keep-alive HTTP
    /// client gets `Connection: close` on its next response; an idle one
    /// is closed); what is in flight finishes.
    fn wind_down(&self, _core: &WorkerCore) {}
    /// Connections it serves now (clients, proxied pairs, module connections).
    fn open_connections(&self) -> usize {
        0
    }
    /// Connect to `addr` for continuation `cont` of `owner`; the layer's handle.
    fn conn_connect(&self, _core: &WorkerCore, _owner: &VersionRef, _cont: u64, _addr: &str) -> ServiceResult<u64> {
        Err((MOLT_ERR_UNSUPPORTED, "this layer makes no outgoing connections".into()))
    }
}

/// Builds a worker's layers on its own thread, given its poller's registry
/// and its index; the layer at position i owns tokens and handles of index i.
pub type IoSetup = Box<dyn FnOnce(&mio::Registry, u32) -> Vec<Box<dyn Io>> + Send>;
