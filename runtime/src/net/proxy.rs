//! The TCP proxy: listeners and connection pairs of one worker.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};

use crate::worker::{WorkerCore, io};
use molt_abi::ffi::*;

use crate::sync::{AtomicU64, Ordering};

/// Bytes buffered per direction of a pair.
const BUF: usize = 64 * 1024;
/// Tokens: listeners below this, pairs' sockets above (2 per pair).
const PAIR_BASE: usize = 1 << 20;

/// A TCP route: where to listen and where to forward.
#[derive(Debug, Clone)]
pub struct TcpRoute {
    /// The listening address.
    pub listen: SocketAddr,
    /// Upstreams, tried round robin; one that refuses a connect is skipped
    /// for `retry_after`.
    pub upstreams: Vec<SocketAddr>,
    /// How long a connect may take.
    pub connect_timeout: Duration,
    /// How long a pair may see no bytes before it is closed.
    pub idle_timeout: Duration,
    /// How long a failed upstream is skipped.
    pub retry_after: Duration,
    /// Connections per worker; more are accepted and closed at once.
    pub max_connections: usize,
    /// Accept hooks: each module gets MOLT_EV_CONN_OPEN for every accepted
    /// connection and may reject it (conn_close).
    pub modules: Vec<String>,
    /// A module that owns the connections itself (no upstreams): it gets
    /// OPEN, DATA and CLOSED and writes with conn_write.
    pub handler: Option<String>,
}

/// Counters of one worker's proxy (single writer: the worker).
#[derive(Debug, Default)]
pub struct TcpStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections refused over `max_connections`.
    pub refused: AtomicU64,
    /// Upstream connects that failed.
    pub upstream_failures: AtomicU64,
    /// Pairs closed for idleness.
    pub idle_closed: AtomicU64,
    /// Bytes client to upstream.
    pub bytes_up: AtomicU64,
    /// Bytes upstream to client.
    pub bytes_down: AtomicU64,
    /// Pairs open now.
    pub open: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// One direction's buffer.
struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
    /// The reading side reached EOF.
    eof: bool,
    /// The EOF was passed on (write side shut down).
    shut: bool,
}

impl Buf {
    fn new() -> Buf {
        Buf { data: vec![0; BUF].into_boxed_slice(), start: 0, end: 0, eof: false, shut: false }
    }

    /// Read from `from` into the buffer until it is full or `from` would
    /// block; returns bytes read, or an error.
    fn fill(&mut self, from: &mut TcpStream) -> std::io::Result<usize> {
        let mut n = 0;
        while !self.eof {
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
            if self.end == self.data.len() {
                if self.start == 0 {
                    break; // full: backpressure
                }
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            match from.read(&mut self.data[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(k) => {
                    self.end += k;
                    n += k;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Write the buffer to `to` until empty or `to` would block; pass EOF on.
    fn drain(&mut self, to: &mut TcpStream) -> std::io::Result<usize> {
        let mut n = 0;
        while self.start < self.end {
            match to.write(&self.data[self.start..self.end]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(k) => {
                    self.start += k;
                    n += k;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.eof && !self.shut {
            self.shut = true;
            let _ = to.shutdown(Shutdown::Write);
        }
        Ok(n)
    }

    fn done(&self) -> bool {
        self.eof && self.shut
    }
}

/// A proxied connection.
struct Pair {
    route: usize,
    client: TcpStream,
    upstream: TcpStream,
    upstream_addr: SocketAddr,
    connected: bool,
    /// The round-robin index this pair started at, and how many it tried.
    rr_start: usize,
    tried: usize,
    up: Buf,
    down: Buf,
    started: Instant,
    last: Instant,
}

struct Route {
    cfg: TcpRoute,
    listener: TcpListener,
    next: usize,
    failed_until: Vec<Option<Instant>>,
}

/// One worker's listeners and pairs.
pub struct Net {
    layer: usize,
    routes: Vec<Route>,
    pairs: Vec<Option<Pair>>,
    free: Vec<usize>,
    stats: std::sync::Arc<TcpStats>,
    last_sweep: Instant,
}

impl Net {
    /// Register `listeners` (one per route, bound by [`super::bind_reuseport`]).
    pub fn new(
        layer: usize,
        registry: &Registry,
        routes: Vec<(TcpRoute, std::net::TcpListener)>,
        stats: std::sync::Arc<TcpStats>,
    ) -> std::io::Result<Net> {
        let mut out = Vec::with_capacity(routes.len());
        for (i, (cfg, l)) in routes.into_iter().enumerate() {
            let mut listener = TcpListener::from_std(l);
            registry.register(&mut listener, io::token(layer, i), Interest::READABLE)?;
            let n = cfg.upstreams.len();
            out.push(Route { cfg, listener, next: 0, failed_until: vec![None; n] });
        }
        Ok(Net { layer, routes: out, pairs: Vec::new(), free: Vec::new(), stats, last_sweep: Instant::now() })
    }

    /// Readiness of a pair's socket (listeners are the layer's: it runs
    /// the accept hooks).
    pub fn on_event(&mut self, registry: &Registry, token: usize) {
        if token >= PAIR_BASE {
            self.pump(registry, (token - PAIR_BASE) / 2);
        }
    }

    /// One connection from `route`'s listener, counted and under the limit.
    pub(crate) fn accept_one(&mut self, route: usize) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = self.routes.get(route)?.listener.accept();
            let (client, peer) = match accepted {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) => {
                    tracing::warn!(route, "accept failed: {e}");
                    return None;
                }
            };
            add(&self.stats.accepted, 1);
            let open = self.stats.open.load(Ordering::Relaxed) as usize;
            if open >= self.routes[route].cfg.max_connections {
                add(&self.stats.refused, 1);
                continue; // dropped: closed at once
            }
            let _ = client.set_nodelay(true);
            return Some((client, peer));
        }
    }

    /// The route's config.
    pub(crate) fn route(&self, route: usize) -> &TcpRoute {
        &self.routes[route].cfg
    }

    /// Proxy `client` to an upstream of `route`.
    pub(crate) fn start_pair(&mut self, registry: &Registry, route: usize, client: TcpStream) {
        {
            let r = &mut self.routes[route];
            let rr_start = r.next;
            r.next = (r.next + 1) % r.cfg.upstreams.len();
            match self.connect(route, rr_start, 0) {
                Some((upstream, addr, tried)) => {
                    let now = Instant::now();
                    let pair = Pair {
                        route,
                        client,
                        upstream,
                        upstream_addr: addr,
                        connected: false,
                        rr_start,
                        tried,
                        up: Buf::new(),
                        down: Buf::new(),
                        started: now,
                        last: now,
                    };
                    let idx = self.free.pop().unwrap_or_else(|| {
                        self.pairs.push(None);
                        self.pairs.len() - 1
                    });
                    self.pairs[idx] = Some(pair);
                    if self.register(registry, idx).is_err() {
                        self.close(registry, idx);
                        return;
                    }
                    add(&self.stats.open, 1);
                }
                None => {
                    add(&self.stats.upstream_failures, 1);
                }
            }
        }
    }

    /// Start a connect to the next healthy upstream of `route`, counting
    /// from `start` and skipping the `skip` already tried; an upstream
    /// marked failed is tried only when nothing healthy is left.
    fn connect(&mut self, route: usize, start: usize, skip: usize) -> Option<(TcpStream, SocketAddr, usize)> {
        let r = &mut self.routes[route];
        let n = r.cfg.upstreams.len();
        let now = Instant::now();
        let healthy_left = (skip..n).any(|k| r.failed_until[(start + k) % n].is_none_or(|t| t <= now));
        for k in skip..n {
            let i = (start + k) % n;
            if healthy_left && r.failed_until[i].is_some_and(|t| t > now) {
                continue;
            }
            let addr = r.cfg.upstreams[i];
            match TcpStream::connect(addr) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Some((s, addr, k + 1));
                }
                Err(_) => r.failed_until[i] = Some(now + r.cfg.retry_after),
            }
        }
        None
    }

    fn register(&mut self, registry: &Registry, idx: usize) -> std::io::Result<()> {
        let p = self.pairs[idx].as_mut().ok_or(ErrorKind::NotFound)?;
        let rw = Interest::READABLE | Interest::WRITABLE;
        registry.register(&mut p.client, io::token(self.layer, PAIR_BASE + 2 * idx), rw)?;
        registry.register(&mut p.upstream, io::token(self.layer, PAIR_BASE + 2 * idx + 1), rw)
    }

    fn pump(&mut self, registry: &Registry, idx: usize) {
        let Some(p) = self.pairs.get_mut(idx).and_then(Option::as_mut) else { return };
        if !p.connected {
            match p.upstream.take_error() {
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => return self.retry(registry, idx),
            }
            match p.upstream.peer_addr() {
                Ok(_) => p.connected = true,
                Err(e) if e.kind() == ErrorKind::NotConnected => return, // still connecting
                Err(_) => return self.retry(registry, idx),
            }
        }
        let mut failed = false;
        loop {
            let mut moved = 0;
            match p.up.fill(&mut p.client) {
                Ok(n) => moved += n,
                Err(_) => failed = true,
            }
            match p.up.drain(&mut p.upstream) {
                Ok(n) => {
                    moved += n;
                    add(&self.stats.bytes_up, n as u64);
                }
                Err(_) => failed = true,
            }
            match p.down.fill(&mut p.upstream) {
                Ok(n) => moved += n,
                Err(_) => failed = true,
            }
            match p.down.drain(&mut p.client) {
                Ok(n) => {
                    moved += n;
                    add(&self.stats.bytes_down, n as u64);
                }
                Err(_) => failed = true,
            }
            if moved > 0 {
                p.last = Instant::now();
            }
            if moved == 0 || failed {
                break;
            }
        }
        if failed || (p.up.done() && p.down.done()) {
            self.close(registry, idx);
        }
    }

    /// The upstream connect failed: mark it and try the next one.
    fn retry(&mut self, registry: &Registry, idx: usize) {
        let Some(p) = self.pairs[idx].as_mut() else { return };
        add(&self.stats.upstream_failures, 1);
        let route = p.route;
        let bad = p.upstream_addr;
        let (start, tried) = (p.rr_start, p.tried);
        let r = &mut self.routes[route];
        if let Some(i) = r.cfg.upstreams.iter().position(|a| *a == bad) {
            r.failed_until[i] = Some(Instant::now() + r.cfg.retry_after);
        }
        let _ = registry.deregister(&mut p.upstream);
        match self.connect(route, start, tried) {
            Some((mut s, addr, t)) => {
                let p = self.pairs[idx].as_mut().expect("pair");
                if registry
                    .register(
                        &mut s,
                        io::token(self.layer, PAIR_BASE + 2 * idx + 1),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_err()
                {
                    return self.close(registry, idx);
                }
                p.upstream = s;
                p.upstream_addr = addr;
                p.tried = t;
                p.started = Instant::now();
            }
            None => self.close(registry, idx),
        }
    }

    fn close(&mut self, registry: &Registry, idx: usize) {
        if let Some(mut p) = self.pairs[idx].take() {
            let _ = registry.deregister(&mut p.client);
            let _ = registry.deregister(&mut p.upstream);
            self.free.push(idx);
            self.stats.open.store(self.stats.open.load(Ordering::Relaxed).saturating_sub(1), Ordering::Relaxed);
        }
    }

    /// Close pairs idle past their route's timeout, or stuck connecting.
    pub fn sweep(&mut self, registry: &Registry) {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) < Duration::from_millis(50) {
            return;
        }
        self.last_sweep = now;
        for idx in 0..self.pairs.len() {
            let Some(p) = self.pairs[idx].as_ref() else { continue };
            let cfg = &self.routes[p.route].cfg;
            if !p.connected && now.duration_since(p.started) > cfg.connect_timeout {
                self.retry(registry, idx);
            } else if now.duration_since(p.last) > cfg.idle_timeout {
                add(&self.stats.idle_closed, 1);
                self.close(registry, idx);
            }
        }
    }
}

/// Bytes a module may queue on one connection before conn_write says
/// MOLT_ERR_LIMIT.
pub const CONN_QUEUE_LIMIT: usize = 1 << 20;
/// Tokens of module-owned connections start here (pairs are below).
const MOD_BASE: usize = 1 << 40;

/// A connection a module owns: accepted by a `handler` route, or opened
/// with conn_connect.
struct ModConn {
    sock: TcpStream,
    generation: u32,
    /// The continuation its events go to.
    cont: u64,
    /// Whether the host created `cont` for it (then ended with it).
    host_cont: bool,
    out: Vec<u8>,
    out_pos: usize,
    connecting: bool,
    /// The module closed it: close once `out` is written.
    closing: bool,
    /// conn_write said LIMIT: send WRITABLE when `out` drains below half.
    want_writable: bool,
    peer: String,
}

/// The TCP proxy, and module-owned connections, as a worker layer.
pub struct TcpLayer {
    layer: usize,
    net: std::cell::RefCell<Net>,
    registry: Registry,
    conns: std::cell::RefCell<Vec<Option<ModConn>>>,
    free: std::cell::RefCell<Vec<usize>>,
    generations: std::cell::RefCell<Vec<u32>>,
    /// The connection in its accept hooks, and whether a module rejected it.
    pending: std::cell::Cell<Option<(u64, bool)>>,
    /// Module-owned connections to close and report (outside module calls).
    closed: std::cell::RefCell<Vec<(usize, u64)>>,
    scratch: std::cell::RefCell<Box<[u8]>>,
}

impl TcpLayer {
    /// The layer at position `layer` over `registry` (the worker's poller).
    pub fn new(
        layer: usize,
        registry: &Registry,
        routes: Vec<(TcpRoute, std::net::TcpListener)>,
        stats: std::sync::Arc<TcpStats>,
    ) -> std::io::Result<TcpLayer> {
        let net = Net::new(layer, registry, routes, stats)?;
        Ok(TcpLayer {
            layer,
            net: std::cell::RefCell::new(net),
            registry: registry.try_clone()?,
            conns: std::cell::RefCell::new(Vec::new()),
            free: std::cell::RefCell::new(Vec::new()),
            generations: std::cell::RefCell::new(Vec::new()),
            pending: std::cell::Cell::new(None),
            closed: std::cell::RefCell::new(Vec::new()),
            scratch: std::cell::RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice()),
        })
    }

    fn handle_of(&self, idx: usize, generation: u32) -> u64 {
        io::handle(self.layer, (u64::from(generation) << 32) | (idx as u64 + 1))
    }

    /// The slot of a layer-local handle, if it is live.
    fn slot_of(&self, h: u64) -> Option<usize> {
        let idx = (h & 0xffff_ffff).checked_sub(1)? as usize;
        let generation = (h >> 32) as u32;
        let conns = self.conns.borrow();
        conns.get(idx)?.as_ref().filter(|c| c.generation == generation).map(|_| idx)
    }

    fn module_version(core: &WorkerCore, name: &str) -> Option<crate::module::VersionRef> {
        core.runtime().registry().active()?.get(name).cloned()
    }

    fn accept(&self, core: &WorkerCore, route: usize) {
        loop {
            let Some((client, peer)) = self.net.borrow_mut().accept_one(route) else { return };
            let (modules, handler) = {
                let n = self.net.borrow();
                let r = n.route(route);
                (r.modules.clone(), r.handler.clone())
            };
            if let Some(h) = handler {
                self.adopt_conn(core, client, peer, &h);
                continue;
            }
            if !modules.is_empty() && !self.accept_hooks(core, &modules, peer) {
                continue; // rejected: dropped, closed
            }
            self.net.borrow_mut().start_pair(&self.registry, route, client);
        }
    }

    /// Call every accept hook; false when one rejected the connection.
    fn accept_hooks(&self, core: &WorkerCore, modules: &[String], peer: SocketAddr) -> bool {
        // A handle for the hooks only: the pair is not a module connection.
        let handle = io::handle(self.layer, (0x00ff_ffff << 32) | 0xffff_fffe);
        let text = peer.to_string();
        for m in modules {
            let Some(v) = Self::module_version(core, m) else {
                tracing::warn!(module = %m, "TCP accept hook: the module is not loaded; connection refused");
                return false;
            };
            let Ok(cont) = core.spawn_host(&v) else { return false };
            self.pending.set(Some((handle, false)));
            let r = core.call_now(cont, MOLT_EV_CONN_OPEN, handle, (0, 0), text.as_bytes(), None);
            let rejected = self.pending.take().is_some_and(|(_, r)| r);
            let _ = core.destroy(cont);
            if let crate::worker::CallNow::Failed(e) = r {
                tracing::warn!(module = %m, "TCP accept hook failed; connection refused: {e}");
                return false;
            }
            if rejected {
                return false;
            }
        }
        true
    }

    fn insert(
        &self,
        mut sock: TcpStream,
        cont: u64,
        host_cont: bool,
        connecting: bool,
        peer: String,
    ) -> Option<(usize, u64)> {
        let idx = self.free.borrow_mut().pop().unwrap_or_else(|| {
            self.conns.borrow_mut().push(None);
            self.generations.borrow_mut().push(0);
            self.conns.borrow().len() - 1
        });
        let generation = {
            let mut g = self.generations.borrow_mut();
            g[idx] = (g[idx] + 1) & 0x00ff_ffff;
            g[idx]
        };
        let token = io::token(self.layer, MOD_BASE + idx);
        if self.registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE).is_err() {
            self.free.borrow_mut().push(idx);
            return None;
        }
        self.conns.borrow_mut()[idx] = Some(ModConn {
            sock,
            generation,
            cont,
            host_cont,
            out: Vec::new(),
            out_pos: 0,
            connecting,
            closing: false,
            want_writable: false,
            peer,
        });
        Some((idx, self.handle_of(idx, generation)))
    }

    /// A connection of a `handler` route: its own continuation of the module.
    fn adopt_conn(&self, core: &WorkerCore, client: TcpStream, peer: SocketAddr, module: &str) {
        let Some(v) = Self::module_version(core, module) else {
            tracing::warn!(module, "TCP handler: the module is not loaded; connection closed");
            return;
        };
        let Ok(cont) = core.spawn_host(&v) else { return };
        let text = peer.to_string();
        let Some((idx, handle)) = self.insert(client, cont, true, false, text.clone()) else {
            let _ = core.destroy(cont);
            return;
        };
        self.deliver(core, idx, (cont, handle), MOLT_EV_CONN_OPEN, 0, text.as_bytes());
        self.conn_io(core, idx);
    }

    /// Call `to` = (continuation, connection handle) with an event of `kind`.
    fn deliver(&self, core: &WorkerCore, idx: usize, to: (u64, u64), kind: u32, arg0: u64, data: &[u8]) {
        let (cont, handle) = to;
        match core.call_now(cont, kind, handle, (arg0, 0), data, None) {
            crate::worker::CallNow::Done | crate::worker::CallNow::Held => {}
            crate::worker::CallNow::Stale => self.closed.borrow_mut().push((idx, 1)),
            crate::worker::CallNow::Failed(e) => {
                tracing::warn!(conn = handle, "connection handler failed; closing the connection: {e}");
                self.closed.borrow_mut().push((idx, 1));
            }
        }
    }

    /// Move what can move on a module connection: connect completion,
    /// queued output, input (as DATA events).
    fn conn_io(&self, core: &WorkerCore, idx: usize) {
        loop {
            let (cont, handle, mut event): (u64, u64, Option<(u32, u64)>) = {
                let mut conns = self.conns.borrow_mut();
                let Some(c) = conns.get_mut(idx).and_then(Option::as_mut) else { return };
                let handle = self.handle_of(idx, c.generation);
                if c.connecting {
                    match (c.sock.take_error(), c.sock.peer_addr()) {
                        (Ok(None), Ok(_)) => {
                            c.connecting = false;
                            (c.cont, handle, Some((MOLT_EV_CONN_OPEN, 1)))
                        }
                        (Ok(None), Err(e)) if e.kind() == ErrorKind::NotConnected => return,
                        _ => {
                            drop(conns);
                            self.closed.borrow_mut().push((idx, 2));
                            return self.reap(core);
                        }
                    }
                } else {
                    (c.cont, handle, None)
                }
            };
            if let Some((kind, arg0)) = event.take() {
                let peer = self.conns.borrow()[idx].as_ref().map(|c| c.peer.clone()).unwrap_or_default();
                self.deliver(core, idx, (cont, handle), kind, arg0, peer.as_bytes());
                continue;
            }
            // Output.
            let mut writable_event = false;
            let mut input = Vec::new();
            let mut eof = false;
            let mut failed = false;
            {
                let mut conns = self.conns.borrow_mut();
                let Some(c) = conns.get_mut(idx).and_then(Option::as_mut) else { return };
                while c.out_pos < c.out.len() {
                    match c.sock.write(&c.out[c.out_pos..]) {
                        Ok(0) => {
                            failed = true;
                            break;
                        }
                        Ok(k) => c.out_pos += k,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                if c.out_pos == c.out.len() {
                    c.out.clear();
                    c.out_pos = 0;
                }
                if c.want_writable && c.out.len() - c.out_pos < CONN_QUEUE_LIMIT / 2 {
                    c.want_writable = false;
                    writable_event = true;
                }
                if c.closing && c.out.is_empty() {
                    drop(conns);
                    self.closed.borrow_mut().push((idx, 0));
                    return self.reap(core);
                }
                if !failed && !c.closing {
                    let mut scratch = self.scratch.borrow_mut();
                    match c.sock.read(&mut scratch) {
                        Ok(0) => eof = true,
                        Ok(k) => input.extend_from_slice(&scratch[..k]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => failed = true,
                    }
                }
            }
            if failed || eof {
                self.closed.borrow_mut().push((idx, u64::from(failed)));
                return self.reap(core);
            }
            if writable_event {
                self.deliver(core, idx, (cont, handle), MOLT_EV_CONN_WRITABLE, 0, &[]);
            }
            if input.is_empty() {
                return;
            }
            self.deliver(core, idx, (cont, handle), MOLT_EV_CONN_DATA, 0, &input);
        }
    }

    /// Close and report the connections queued in `closed`.
    fn reap(&self, core: &WorkerCore) {
        loop {
            let Some((idx, why)) = self.closed.borrow_mut().pop() else { return };
            let Some(mut c) = self.conns.borrow_mut().get_mut(idx).and_then(Option::take) else { continue };
            let _ = self.registry.deregister(&mut c.sock);
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
            self.free.borrow_mut().push(idx);
            let handle = self.handle_of(idx, c.generation);
            let _ = core.call_now(c.cont, MOLT_EV_CONN_CLOSED, handle, (why, 0), &[], None);
            if c.host_cont {
                let _ = core.destroy(c.cont);
            }
        }
    }
}

impl io::Io for TcpLayer {
    fn ready(&self, core: &crate::worker::WorkerCore, token: usize, _ready: io::Readiness) {
        if token >= MOD_BASE {
            self.conn_io(core, token - MOD_BASE);
            self.reap(core);
        } else if token < PAIR_BASE {
            self.accept(core, token);
        } else {
            self.net.borrow_mut().on_event(&self.registry, token);
        }
    }

    fn tick(&self, core: &crate::worker::WorkerCore, _now: Instant) -> bool {
        self.net.borrow_mut().sweep(&self.registry);
        let worked = !self.closed.borrow().is_empty();
        self.reap(core);
        worked
    }

    fn conn_write(&self, core: &WorkerCore, conn: u64, data: &[u8]) -> crate::host::ServiceResult<()> {
        let stale = || (MOLT_ERR_STALE, format!("connection {:#x} is closed", io::handle(self.layer, conn)));
        let idx = self.slot_of(conn).ok_or_else(stale)?;
        {
            let mut conns = self.conns.borrow_mut();
            let c = conns[idx].as_mut().ok_or_else(stale)?;
            if c.closing {
                return Err(stale());
            }
            if c.out.len() - c.out_pos + data.len() > CONN_QUEUE_LIMIT {
                c.want_writable = true;
                return Err((
                    MOLT_ERR_LIMIT,
                    format!(
                        "connection has {} bytes queued (limit {CONN_QUEUE_LIMIT}); wait for MOLT_EV_CONN_WRITABLE",
                        c.out.len() - c.out_pos
                    ),
                ));
            }
            c.out.extend_from_slice(data);
        }
        let _ = core;
        // Written at once when the socket takes it; the rest on writability.
        let mut conns = self.conns.borrow_mut();
        if let Some(c) = conns[idx].as_mut().filter(|c| !c.connecting) {
            while c.out_pos < c.out.len() {
                match c.sock.write(&c.out[c.out_pos..]) {
                    Ok(k) if k > 0 => c.out_pos += k,
                    _ => break,
                }
            }
        }
        Ok(())
    }

    fn conn_close(&self, _core: &WorkerCore, conn: u64) -> crate::host::ServiceResult<()> {
        if let Some((h, _)) = self.pending.get()
            && io::handle(self.layer, conn) == h
        {
            self.pending.set(Some((h, true)));
            return Ok(());
        }
        let idx = self.slot_of(conn).ok_or_else(|| (MOLT_ERR_STALE, "the connection is closed".to_owned()))?;
        let mut conns = self.conns.borrow_mut();
        let c = conns[idx].as_mut().expect("live slot");
        c.closing = true;
        if c.out_pos >= c.out.len() {
            drop(conns);
            // Reported (CLOSED) from the loop, never inside the module's call.
            self.closed.borrow_mut().push((idx, 0));
        }
        Ok(())
    }

    fn conn_connect(
        &self,
        _core: &WorkerCore,
        _owner: &crate::module::VersionRef,
        cont: u64,
        addr: &str,
    ) -> crate::host::ServiceResult<u64> {
        let a: SocketAddr = addr.parse().map_err(|_| {
            (MOLT_ERR_INVALID_ARG, format!("conn_connect: {addr:?} is not an address like 127.0.0.1:9000"))
        })?;
        let sock = TcpStream::connect(a).map_err(|e| (MOLT_ERR_FAILED, format!("conn_connect to {a}: {e}")))?;
        let _ = sock.set_nodelay(true);
        let (_, handle) = self
            .insert(sock, cont, false, true, a.to_string())
            .ok_or((MOLT_ERR_FAILED, format!("conn_connect to {a}: cannot register the socket")))?;
        Ok(io::split_handle(handle).map_or(0, |(_, h)| h))
    }
}
