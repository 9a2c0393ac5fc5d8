//! Socket reads and writes of the HTTP proxy, driven by readiness: a read
//! is tried only when the last readiness event says it may find something.

use std::io::{ErrorKind, Read, Write};

use mio::net::TcpStream;

use crate::worker::io;

/// Whether reading a socket may find something: set by a readiness event,
/// cleared when a read drains the socket. A peer's close (`EPOLLRDHUP`)
/// keeps it set until EOF is read, since a short read says nothing then.
#[derive(Debug, Clone, Copy)]
pub(super) struct Readable {
    pub rd: bool,
    pub hup: bool,
}

impl Readable {
    /// A new socket: try a read.
    pub const NEW: Readable = Readable { rd: true, hup: false };

    pub fn on_ready(&mut self, ready: io::Readiness) {
        if ready.readable {
            self.rd = true;
            self.hup |= ready.read_closed;
        }
    }

    pub fn after(&mut self, f: &Filled) {
        self.rd = !f.drained || (self.hup && !f.eof);
    }
}

/// What a read did: bytes, whether it met EOF, and whether the socket is
/// drained (it would block, or a read came back short), so that reading
/// again before the next readiness event would only cost a syscall.
pub(super) struct Filled {
    pub n: usize,
    pub eof: bool,
    pub drained: bool,
}

impl Filled {
    /// Nothing read, nothing tried.
    pub const NOTHING: Filled = Filled { n: 0, eof: false, drained: true };
}

/// Read from `sock` into `buf` until it holds `cap` bytes, the socket is
/// drained, or EOF; `scratch` is the read buffer (zeroed once, reused).
pub(super) fn fill(sock: &mut TcpStream, buf: &mut Vec<u8>, cap: usize, scratch: &mut [u8]) -> std::io::Result<Filled> {
    let mut n = 0;
    while buf.len() < cap {
        let room = (cap - buf.len()).min(scratch.len());
        match sock.read(&mut scratch[..room]) {
            Ok(0) => return Ok(Filled { n, eof: true, drained: true }),
            Ok(k) => {
                buf.extend_from_slice(&scratch[..k]);
                n += k;
                if k < room {
                    return Ok(Filled { n, eof: false, drained: true });
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Filled { n, eof: false, drained: true }),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Filled { n, eof: false, drained: false })
}

/// Write `buf[*pos..]` to `sock` until done or it would block; bytes written.
pub(super) fn flush(sock: &mut TcpStream, buf: &mut Vec<u8>, pos: &mut usize) -> std::io::Result<usize> {
    let mut n = 0;
    while *pos < buf.len() {
        match sock.write(&buf[*pos..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(k) => {
                *pos += k;
                n += k;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if *pos == buf.len() {
        buf.clear();
        *pos = 0;
    }
    Ok(n)
}

/// Whether an idle socket is gone: a read finds EOF, an error or bytes
/// nobody asked for (an idle upstream must send nothing).
pub(super) fn idle_gone(sock: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    !matches!(sock.read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
}
