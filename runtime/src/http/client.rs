//! A client connection of the HTTP proxy: its socket and buffers, the
//! transaction it carries, and its timers.
//!
//! Timers (each measured from its own start, never from an older event):
//! - a new connection must send its first request head within
//!   `request_timeout` of the accept; one that sends nothing is closed
//!   without an answer;
//! - a kept-alive connection may sit idle for `keepalive_timeout` after
//!   its last response; closed without an answer then;
//! - a head, once its first byte arrived, must be complete within
//!   `request_timeout` of that byte (else 408 and close);
//! - a request body may not stall for longer than `request_timeout` (408).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use mio::net::TcpStream;

use super::site::HttpLimits;
use super::sock::Readable;
use super::stage::Txn;

/// One client connection.
pub(super) struct Client {
    pub sock: TcpStream,
    /// The peer as text, "ip:port" (for hooks), and its IP alone (for X-Forwarded-For).
    pub peer_text: Rc<str>,
    pub peer_ip: Rc<str>,
    /// Its listener.
    pub site: usize,
    pub inb: Vec<u8>,
    pub out: Vec<u8>,
    pub out_pos: usize,
    pub txn: Option<Box<Txn>>,
    /// The last transaction's box, kept for the next one (its buffers reused).
    pub spare: Option<Box<Txn>>,
    /// Since when the connection waits for a request: its accept, or the
    /// end of its last transaction.
    pub idle_since: Instant,
    /// When the first byte of the head being read arrived.
    pub head_since: Option<Instant>,
    /// Transactions finished on this connection.
    pub served: u64,
    pub last_read: Instant,
    pub eof: bool,
    /// No more requests: close once `out` is written.
    pub close: bool,
    /// Minor version of the current request (for the response framing).
    pub minor: u8,
    pub keep_alive: bool,
    /// Lingering close: our side is shut, input is dropped until EOF or this time.
    pub linger: Option<Instant>,
    /// Whether reading may find something.
    pub rx: Readable,
    /// When its entry in the layer's timer heap is due (none: no entry).
    pub due: Option<Instant>,
    /// In the layer's list of clients to drive again next turn.
    pub again: bool,
}

/// What a client waiting for a request head has come to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Waiting {
    /// Still in time.
    InTime,
    /// Nothing was sent in time: close without an answer.
    Idle,
    /// A head was begun and not finished in time: 408.
    HeadLate,
}

impl Client {
    /// A client just accepted from `peer` on listener `site`.
    pub fn new(sock: TcpStream, peer: SocketAddr, site: usize, now: Instant) -> Client {
        Client {
            sock,
            peer_text: peer.to_string().into(),
            peer_ip: peer.ip().to_string().into(),
            site,
            inb: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            txn: None,
            spare: None,
            idle_since: now,
            head_since: None,
            served: 0,
            last_read: now,
            eof: false,
            close: false,
            minor: 1,
            keep_alive: true,
            linger: None,
            rx: Readable::NEW,
            due: None,
            again: false,
        }
    }

    /// Bytes of a head arrived while no transaction runs: its timer starts
    /// at the first of them.
    pub fn head_bytes_arrived(&mut self, now: Instant) {
        if self.txn.is_none() && !self.inb.is_empty() && self.head_since.is_none() {
            self.head_since = Some(now);
        }
    }

    /// Where a client without a transaction stands at `now`.
    pub fn waiting(&self, l: &HttpLimits, now: Instant) -> Waiting {
        match self.head_since {
            Some(t) if now.duration_since(t) > l.request_timeout => Waiting::HeadLate,
            Some(_) => Waiting::InTime,
            None => {
                let limit = if self.served == 0 { l.request_timeout } else { l.keepalive_timeout };
                if now.duration_since(self.idle_since) > limit { Waiting::Idle } else { Waiting::InTime }
            }
        }
    }

    /// A transaction finished at `now`: the connection waits for the next
    /// head (whose bytes may be here already, pipelined).
    pub fn finished(&mut self, now: Instant) {
        self.served += 1;
        self.idle_since = now;
        self.head_since = None;
        self.head_bytes_arrived(now);
    }
}
