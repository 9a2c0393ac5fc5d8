//! [`Event`]: the safe face of `molt_event`.

use crate::ffi::*;

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The continuation was created.
    Start,
    /// A message from another continuation or the host.
    Message,
    /// A timer fired.
    Timer,
    /// The version is draining.
    Drain,
    /// (1.1) A connection opened; `handle` is it, `data` the peer address.
    ConnOpen,
    /// (1.1) Bytes arrived on connection `handle`.
    ConnData,
    /// (1.1) Connection `handle` closed.
    ConnClosed,
    /// (1.1) Connection `handle` can take more writes.
    ConnWritable,
    /// (1.1) HTTP: the request head arrived (`handle`: the transaction).
    HttpRequest,
    /// (1.1) HTTP: choose the upstream.
    HttpUpstream,
    /// (1.1) HTTP: the response head is about to be sent (`arg0`: status).
    HttpResponse,
    /// (1.1) HTTP: the transaction is over (`arg0`: status, `arg1`: body bytes).
    HttpTxnEnd,
    /// A kind this SDK does not know (ignore it).
    Other(u32),
}

/// One event, borrowed for the call.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// What it is.
    pub kind: EventKind,
    /// `MOLT_EVF_*` bits.
    pub flags: u32,
    /// The receiving continuation.
    pub target: u64,
    /// The sender (0: the host).
    pub source: u64,
    /// The sender's tag.
    pub tag: u64,
    /// The payload.
    pub data: &'a [u8],
    /// Kind-specific handle.
    pub handle: u64,
    /// Kind-specific argument.
    pub arg0: u64,
    /// Kind-specific argument.
    pub arg1: u64,
}

impl<'a> Event<'a> {
    /// Read the host's event.
    ///
    /// # Safety
    ///
    /// `raw` is the event the host passed to the current callback, valid for
    /// `'a`, its payload valid for `len` bytes (header rule 3).
    pub(crate) unsafe fn from_raw(raw: &'a molt_event) -> Event<'a> {
        let data = if raw.data.is_null() || raw.len == 0 {
            &[][..]
        } else {
            // SAFETY: per this function's contract, `data` is valid for `len` bytes for `'a`.
            unsafe { core::slice::from_raw_parts(raw.data, raw.len) }
        };
        let kind = match raw.kind {
            MOLT_EV_START => EventKind::Start,
            MOLT_EV_MESSAGE => EventKind::Message,
            MOLT_EV_TIMER => EventKind::Timer,
            MOLT_EV_DRAIN => EventKind::Drain,
            MOLT_EV_CONN_OPEN => EventKind::ConnOpen,
            MOLT_EV_CONN_DATA => EventKind::ConnData,
            MOLT_EV_CONN_CLOSED => EventKind::ConnClosed,
            MOLT_EV_CONN_WRITABLE => EventKind::ConnWritable,
            MOLT_EV_HTTP_REQUEST => EventKind::HttpRequest,
            MOLT_EV_HTTP_UPSTREAM => EventKind::HttpUpstream,
            MOLT_EV_HTTP_RESPONSE => EventKind::HttpResponse,
            MOLT_EV_HTTP_TXN_END => EventKind::HttpTxnEnd,
            k => EventKind::Other(k),
        };
        Event {
            kind,
            flags: raw.flags,
            target: raw.target,
            source: raw.source,
            tag: raw.tag,
            data,
            handle: raw.handle,
            arg0: raw.arg0,
            arg1: raw.arg1,
        }
    }

    /// Whether it is a message.
    pub fn is_message(&self) -> bool {
        self.kind == EventKind::Message
    }
}
