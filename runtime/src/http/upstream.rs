//! The upstream side of one worker's HTTP proxy: connections to servers
//! (new or pooled), the groups' round robin and health, and the retry
//! policy that decides whether a failed attempt may be sent again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry};

use super::sock::{self, Filled, Readable};
use crate::net::balance::{Balancer, Walk};
use crate::net::slots::Slots;
use crate::worker::io;

/// Whether a request with `method` may be sent twice with the effect of
/// once (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
pub(super) fn idempotent(method: &str) -> bool {
    ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"].iter().any(|m| m.eq_ignore_ascii_case(method))
}

/// The retry policy. A failed attempt may be sent again (to the same
/// server after the keep-alive race, or to the next one) only when nothing
/// of its response reached the client (failures after that point are never
/// retried: the caller only asks before a response head was accepted) and
/// either no byte of it reached the upstream, or the request is idempotent
/// (or its route allows retrying any method) and none of its body was
/// consumed, so that it can be sent again whole.
pub(super) fn may_resend(method: &str, any_method: bool, wrote: bool, body_consumed: bool) -> bool {
    !wrote || ((any_method || idempotent(method)) && !body_consumed)
}

/// One connection to an upstream server.
pub(super) struct Up {
    pub sock: TcpStream,
    pub addr: SocketAddr,
    pub connected: bool,
    /// The client whose transaction uses it; `None` while pooled.
    pub owner: Option<usize>,
    idle_since: Instant,
    pub rx: Readable,
    /// EOF was read.
    pub eof: bool,
    /// Idle connections kept per server (its listener's `pool_per_server`).
    pool_cap: usize,
}

/// What became of an attempt to get a connection.
pub(super) enum Got {
    /// A connection (its index) and whether it came from the pool.
    Conn(usize, bool),
    /// The connect failed at once.
    Refused,
}

/// A worker's upstream connections, pools and group health.
pub(super) struct Upstreams {
    layer: usize,
    /// Tokens of upstream connections start here.
    base: usize,
    registry: Registry,
    conns: RefCell<Slots<Up>>,
    pool: RefCell<HashMap<SocketAddr, Vec<usize>>>,
    /// Per listener, per group.
    health: RefCell<Vec<Vec<Balancer>>>,
}

impl Upstreams {
    /// For layer `layer` (tokens from `base` up), listeners with these groups' sizes.
    pub fn new(layer: usize, base: usize, registry: Registry, groups: Vec<Vec<usize>>) -> Upstreams {
        let health = groups.into_iter().map(|g| g.into_iter().map(Balancer::new).collect()).collect();
        Upstreams {
            layer,
            base,
            registry,
            conns: RefCell::new(Slots::default()),
            pool: RefCell::new(HashMap::new()),
            health: RefCell::new(health),
        }
    }

    /// Health for one more listener slot with these groups' sizes (a reload
    /// changed a site's upstreams: the new slot starts fresh, the old one
    /// keeps serving its transactions in flight).
    pub fn add_site(&self, groups: &[usize]) {
        self.health.borrow_mut().push(groups.iter().map(|n| Balancer::new(*n)).collect());
    }

    /// Start a walk over group `g` of listener `site`.
    pub fn walk(&self, site: usize, g: usize) -> Walk {
        self.health.borrow_mut()[site][g].walk()
    }

    /// The next server of the walk.
    pub fn pick(&self, site: usize, g: usize, walk: &mut Walk, now: Instant) -> Option<usize> {
        self.health.borrow()[site][g].pick(walk, now)
    }

    /// Server `i` of a group failed: skip it until `until`.
    pub fn mark_failed(&self, site: usize, g: usize, i: usize, until: Instant) {
        self.health.borrow_mut()[site][g].mark_failed(i, until);
    }

    /// A connection to `addr` for client `owner`: an idle pooled one that
    /// is still open, else a new one (connecting).
    pub fn get(&self, addr: SocketAddr, owner: usize, pool_cap: usize) -> Got {
        if let Some(idx) = self.pooled(addr) {
            self.set_owner(idx, Some(owner));
            return Got::Conn(idx, true);
        }
        let Ok(mut sock) = TcpStream::connect(addr) else { return Got::Refused };
        let _ = sock.set_nodelay(true);
        let mut conns = self.conns.borrow_mut();
        let idx = conns.reserve();
        let token = io::token(self.layer, self.base + idx);
        if self.registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE).is_err() {
            conns.release(idx);
            return Got::Refused;
        }
        let up = Up {
            sock,
            addr,
            connected: false,
            owner: Some(owner),
            idle_since: Instant::now(),
            rx: Readable::NEW,
            eof: false,
            pool_cap,
        };
        conns.fill(idx, up);
        Got::Conn(idx, false)
    }

    fn set_owner(&self, idx: usize, owner: Option<usize>) {
        if let Some(u) = self.conns.borrow_mut().get_mut(idx) {
            u.owner = owner;
        }
    }

    /// An idle pooled connection to `addr` that is still open.
    fn pooled(&self, addr: SocketAddr) -> Option<usize> {
        loop {
            let idx = self.pool.borrow_mut().get_mut(&addr)?.pop()?;
            // An idle connection gets a readiness event when the server
            // closes it (`idle_ready` closes it then); one whose event is
            // not handled yet is checked here.
            let alive = match self.conns.borrow_mut().get_mut(idx) {
                Some(u) if u.rx.hup || u.eof => false,
                Some(u) if u.rx.rd => {
                    u.rx.rd = false;
                    !sock::idle_gone(&mut u.sock)
                }
                Some(_) => true,
                None => false,
            };
            if alive {
                return Some(idx);
            }
            self.close(idx);
        }
    }

    /// Run `f` on connection `idx`, if it exists.
    pub fn with<R>(&self, idx: usize, f: impl FnOnce(&mut Up) -> R) -> Option<R> {
        self.conns.borrow_mut().get_mut(idx).map(f)
    }

    /// Whether connection `idx` finished connecting: `Ok(false)` while it
    /// is in progress, `Err` when it failed (or is gone).
    pub fn connected(&self, idx: usize) -> Result<bool, ()> {
        self.with(idx, |u| {
            if u.connected {
                return Ok(true);
            }
            match u.sock.take_error() {
                Ok(None) => {}
                _ => return Err(()),
            }
            match u.sock.peer_addr() {
                Ok(_) => {
                    u.connected = true;
                    Ok(true)
                }
                Err(e) if e.kind() == ErrorKind::NotConnected => Ok(false),
                Err(_) => Err(()),
            }
        })
        .unwrap_or(Err(()))
    }

    /// Write `buf[*pos..]` to connection `idx`.
    pub fn write(&self, idx: usize, buf: &mut Vec<u8>, pos: &mut usize) -> std::io::Result<usize> {
        self.with(idx, |u| sock::flush(&mut u.sock, buf, pos)).unwrap_or(Err(ErrorKind::NotConnected.into()))
    }

    /// Read connection `idx` into `buf` (up to `cap`) when its readiness
    /// says there may be something; with whether it has met EOF.
    pub fn read(
        &self,
        idx: usize,
        buf: &mut Vec<u8>,
        cap: usize,
        scratch: &mut [u8],
    ) -> std::io::Result<(Filled, bool)> {
        self.with(idx, |u| {
            if !u.rx.rd || u.eof {
                return Ok((Filled::NOTHING, u.eof));
            }
            let f = sock::fill(&mut u.sock, buf, cap, scratch)?;
            u.rx.after(&f);
            u.eof |= f.eof;
            Ok((f, u.eof))
        })
        .unwrap_or(Err(ErrorKind::NotConnected.into()))
    }

    /// Detach connection `idx` from its transaction: back to the pool when
    /// `reusable` (and the pool has room), else closed.
    pub fn release(&self, idx: usize, reusable: bool) {
        let pooled = self
            .with(idx, |u| {
                u.owner = None;
                let mut pool = self.pool.borrow_mut();
                let list = pool.entry(u.addr).or_default();
                let keep = reusable && u.connected && !u.eof && list.len() < u.pool_cap;
                if keep {
                    u.idle_since = Instant::now();
                    list.push(idx);
                }
                keep
            })
            .unwrap_or(true);
        if !pooled {
            self.close(idx);
        }
    }

    fn close(&self, idx: usize) {
        if let Some(mut u) = self.conns.borrow_mut().remove(idx) {
            let _ = self.registry.deregister(&mut u.sock);
        }
    }

    /// Readiness of connection `idx`: its owner (to drive), or `None` when
    /// it is idle in the pool, where a readable event means the server
    /// closed it (or sent what it should not): it is closed then.
    pub fn on_ready(&self, idx: usize, ready: io::Readiness) -> Option<usize> {
        let (owner, gone) = self.with(idx, |u| {
            u.rx.on_ready(ready);
            match u.owner {
                Some(o) => (Some(o), false),
                None if u.rx.rd => {
                    u.rx.rd = false;
                    (None, sock::idle_gone(&mut u.sock))
                }
                None => (None, false),
            }
        })?;
        if gone {
            for list in self.pool.borrow_mut().values_mut() {
                list.retain(|&i| i != idx);
            }
            self.close(idx);
        }
        owner
    }

    /// Close pooled connections idle for longer than `keep`.
    pub fn sweep(&self, now: Instant, keep: std::time::Duration) {
        let stale: Vec<usize> = {
            let mut pool = self.pool.borrow_mut();
            let conns = self.conns.borrow();
            let mut out = Vec::new();
            for list in pool.values_mut() {
                list.retain(|&i| {
                    let old = conns.get(i).is_none_or(|u| now.duration_since(u.idle_since) > keep);
                    if old {
                        out.push(i);
                    }
                    !old
                });
            }
            out
        };
        for i in stale {
            self.close(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_policy() {
        // Nothing reached the upstream: anything may go again.
        assert!(may_resend("POST", false, false, false));
        // The upstream may have acted on it: idempotent methods only, and only whole.
        assert!(!may_resend("POST", false, true, false));
        assert!(!may_resend("PATCH", false, true, false));
        assert!(may_resend("get", false, true, false));
        assert!(may_resend("PUT", false, true, false));
        assert!(!may_resend("PUT", false, true, true), "its body was consumed");
        assert!(may_resend("POST", true, true, false), "the route allows any method");
    }
}
