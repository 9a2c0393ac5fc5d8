//! The TCP proxy: listeners and connection pairs of one worker.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};

use super::balance::{Balancer, Walk};
use super::slots::Slots;
use crate::worker::{WorkerCore, io};
use molt_abi::ffi::*;

use crate::sync::{AtomicU64, Ordering};

/// Bytes buffered per direction of a pair.
const BUF: usize = 64 * 1024;
/// Tokens: listeners below this, pairs' sockets above (2 per pair).
const PAIR_BASE: usize = 1 << 20;
/// Rounds (a buffer's fill and drain each way) one pair may take per
/// readiness before the other connections ready now get theirs: a stream
/// that never runs dry cannot keep the worker from them.
const PUMP_ROUNDS: u32 = 8;

/// A TCP route: where to listen and where to forward.
#[derive(Debug, Clone, PartialEq)]
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

    /// Fill from `from`, drain to `to` (counting the bytes passed on in
    /// `bytes`); bytes moved, with `failed` set on an error.
    fn pump(&mut self, from: &mut TcpStream, to: &mut TcpStream, bytes: &AtomicU64, failed: &mut bool) -> usize {
        let mut moved = 0;
        match self.fill(from) {
            Ok(n) => moved += n,
            Err(_) => *failed = true,
        }
        match self.drain(to) {
            Ok(n) => {
                moved += n;
                add(bytes, n as u64);
            }
            Err(_) => *failed = true,
        }
        moved
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
    /// Its walk over the route's upstreams.
    walk: Walk,
    up: Buf,
    down: Buf,
    started: Instant,
    last: Instant,
    /// In the list of pairs pumped again next turn.
    again: bool,
}

struct Route {
    cfg: TcpRoute,
    /// `None` once this process stopped accepting (a binary upgrade).
    listener: Option<TcpListener>,
    /// Registered with the poller (not while the layer is paused).
    registered: bool,
    balancer: Balancer,
}

/// One worker's listeners and pairs.
pub struct Net {
    layer: usize,
    routes: Vec<Route>,
    pairs: Slots<Pair>,
    stats: std::sync::Arc<TcpStats>,
    last_sweep: Instant,
    /// Pairs that used up their rounds with bytes still moving: pumped
    /// again next loop turn.
    again: Vec<usize>,
}

impl Net {
    /// Register `listeners` (one per route, bound by [`super::bind_reuseport`]).
    pub fn new(
        layer: usize,
        registry: &Registry,
        routes: Vec<(TcpRoute, std::net::TcpListener)>,
        stats: std::sync::Arc<TcpStats>,
        paused: bool,
    ) -> std::io::Result<Net> {
        let mut out = Vec::with_capacity(routes.len());
        for (i, (cfg, l)) in routes.into_iter().enumerate() {
            let mut listener = TcpListener::from_std(l);
            if !paused {
                registry.register(&mut listener, io::token(layer, i), Interest::READABLE)?;
            }
            let n = cfg.upstreams.len();
            out.push(Route { cfg, listener: Some(listener), registered: !paused, balancer: Balancer::new(n) });
        }
        Ok(Net { layer, routes: out, pairs: Slots::default(), stats, last_sweep: Instant::now(), again: Vec::new() })
    }

    /// Register the listeners (`on`, once), or deregister and close them.
    fn set_accepting(&mut self, registry: &Registry, on: bool) {
        for (i, r) in self.routes.iter_mut().enumerate() {
            let Some(l) = r.listener.as_mut() else { continue };
            if on && !r.registered {
                match registry.register(l, io::token(self.layer, i), Interest::READABLE) {
                    Ok(()) => r.registered = true,
                    Err(e) => tracing::error!(route = i, "cannot register the TCP listener: {e}"),
                }
            } else if !on {
                let _ = registry.deregister(l);
                r.listener = None;
                tracing::info!(route = i, listen = %r.cfg.listen, "TCP listener handed off: this process accepts no more connections on it");
            }
        }
    }

    /// Duplicates of the listeners, keyed `tcp:<route index>`.
    fn listener_fds(&self) -> Vec<(String, std::os::fd::OwnedFd)> {
        use std::os::fd::AsFd;
        let mut out = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(l) = &r.listener {
                match l.as_fd().try_clone_to_owned() {
                    Ok(fd) => out.push((format!("tcp:{i}"), fd)),
                    Err(e) => tracing::error!(route = i, "cannot duplicate the TCP listener: {e}"),
                }
            }
        }
        out
    }

    /// Pump the pairs that used up their rounds last turn; whether any.
    pub fn resume(&mut self, registry: &Registry) -> bool {
        let again = std::mem::take(&mut self.again);
        for &idx in &again {
            if let Some(p) = self.pairs.get_mut(idx) {
                p.again = false;
            }
            self.pump(registry, idx);
        }
        !again.is_empty()
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
            let accepted = self.routes.get(route)?.listener.as_ref()?.accept();
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

    /// Proxy `client` to an upstream of `route`.
    pub(crate) fn start_pair(&mut self, registry: &Registry, route: usize, client: TcpStream) {
        let mut walk = self.routes[route].balancer.walk();
        match self.connect(route, &mut walk) {
            Some((upstream, addr)) => {
                let now = Instant::now();
                let pair = Pair {
                    route,
                    client,
                    upstream,
                    upstream_addr: addr,
                    connected: false,
                    walk,
                    up: Buf::new(),
                    down: Buf::new(),
                    started: now,
                    last: now,
                    again: false,
                };
                let idx = self.pairs.insert(pair);
                add(&self.stats.open, 1);
                if self.register(registry, idx).is_err() {
                    self.close(registry, idx);
                }
            }
            None => {
                add(&self.stats.upstream_failures, 1);
            }
        }
    }

    /// Start a connect to the next upstream of `route` on `walk` (an
    /// upstream marked failed is tried only when nothing healthy is left).
    fn connect(&mut self, route: usize, walk: &mut Walk) -> Option<(TcpStream, SocketAddr)> {
        let r = &mut self.routes[route];
        let now = Instant::now();
        while let Some(i) = r.balancer.pick(walk, now) {
            let addr = r.cfg.upstreams[i];
            match TcpStream::connect(addr) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Some((s, addr));
                }
                Err(_) => r.balancer.mark_failed(i, now + r.cfg.retry_after),
            }
        }
        None
    }

    fn register(&mut self, registry: &Registry, idx: usize) -> std::io::Result<()> {
        let p = self.pairs.get_mut(idx).ok_or(ErrorKind::NotFound)?;
        let rw = Interest::READABLE | Interest::WRITABLE;
        registry.register(&mut p.client, io::token(self.layer, PAIR_BASE + 2 * idx), rw)?;
        registry.register(&mut p.upstream, io::token(self.layer, PAIR_BASE + 2 * idx + 1), rw)
    }

    fn pump(&mut self, registry: &Registry, idx: usize) {
        let Some(p) = self.pairs.get_mut(idx) else { return };
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
        let mut rounds = PUMP_ROUNDS;
        loop {
            let mut moved = p.up.pump(&mut p.client, &mut p.upstream, &self.stats.bytes_up, &mut failed);
            moved += p.down.pump(&mut p.upstream, &mut p.client, &self.stats.bytes_down, &mut failed);
            if moved > 0 {
                p.last = Instant::now();
            }
            if moved == 0 || failed {
                break;
            }
            rounds -= 1;
            if rounds == 0 {
                // A flag, not a search of the list (thousands of pairs may
                // use up their rounds in one turn).
                if !p.again {
                    p.again = true;
                    self.again.push(idx);
                }
                break;
            }
        }
        if failed || (p.up.done() && p.down.done()) {
            self.close(registry, idx);
        }
    }

    /// The upstream connect failed: mark it and try the next one.
    fn retry(&mut self, registry: &Registry, idx: usize) {
        let Some(p) = self.pairs.get_mut(idx) else { return };
        add(&self.stats.upstream_failures, 1);
        let route = p.route;
        let bad = p.upstream_addr;
        let mut walk = p.walk;
        let r = &mut self.routes[route];
        if let Some(i) = r.cfg.upstreams.iter().position(|a| *a == bad) {
            r.balancer.mark_failed(i, Instant::now() + r.cfg.retry_after);
        }
        let _ = registry.deregister(&mut p.upstream);
        match self.connect(route, &mut walk) {
            Some((mut s, addr)) => {
                let Some(p) = self.pairs.get_mut(idx) else { return };
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
                p.walk = walk;
                p.started = Instant::now();
            }
            None => self.close(registry, idx),
        }
    }

    fn close(&mut self, registry: &Registry, idx: usize) {
        if let Some(mut p) = self.pairs.remove(idx) {
            let _ = registry.deregister(&mut p.client);
            let _ = registry.deregister(&mut p.upstream);
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
        for idx in 0..self.pairs.bound() {
            let Some(p) = self.pairs.get(idx) else { continue };
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
    /// Events its module's version could not take yet (held for a state
    /// migration), in order: (kind, arg0, data). Nothing more is read
    /// until they are delivered.
    held: std::collections::VecDeque<(u32, u64, Vec<u8>)>,
}

/// An accepted connection whose accept hooks met a held module version.
struct Waiting {
    route: usize,
    sock: TcpStream,
    peer: SocketAddr,
    /// The next hook to call.
    next: usize,
}

/// A CLOSED a held module version could not take yet.
struct Unreported {
    cont: u64,
    handle: u64,
    why: u64,
    host_cont: bool,
}

/// What the accept hooks decided.
enum Verdict {
    Accept,
    Reject,
    /// Hook `next` met a held version: ask again later.
    Wait(usize),
}

/// The TCP proxy, and module-owned connections, as a worker layer.
pub struct TcpLayer {
    layer: usize,
    net: std::cell::RefCell<Net>,
    registry: Registry,
    /// Each route's accept hooks and handler module.
    hooks: Vec<(Vec<String>, Option<String>)>,
    /// The active generation, for the hooks' module versions.
    versions: std::cell::RefCell<crate::module::registry::GenerationCache>,
    /// Module-owned connections; a slot's generation makes stale handles fail.
    conns: std::cell::RefCell<Slots<ModConn>>,
    /// The connection in its accept hooks, and whether a module rejected it.
    pending: std::cell::Cell<Option<(u64, bool)>>,
    /// Module-owned connections to close and report (outside module calls).
    closed: std::cell::RefCell<Vec<(usize, u64)>>,
    /// Work that met a held module version, tried again when the worker's
    /// holds are released.
    waiting: std::cell::RefCell<Vec<Waiting>>,
    unreported: std::cell::RefCell<Vec<Unreported>>,
    held_conns: std::cell::RefCell<Vec<usize>>,
    scratch: std::cell::RefCell<Box<[u8]>>,
}

/// The read buffer of module connections.
const SCRATCH: usize = 64 * 1024;

impl TcpLayer {
    /// The layer at position `layer` over `registry` (the worker's poller).
    pub fn new(
        layer: usize,
        registry: &Registry,
        routes: Vec<(TcpRoute, std::net::TcpListener)>,
        stats: std::sync::Arc<TcpStats>,
        paused: bool,
    ) -> std::io::Result<TcpLayer> {
        let hooks = routes.iter().map(|(r, _)| (r.modules.clone(), r.handler.clone())).collect();
        let net = Net::new(layer, registry, routes, stats, paused)?;
        Ok(TcpLayer {
            layer,
            net: std::cell::RefCell::new(net),
            registry: registry.try_clone()?,
            hooks,
            versions: std::cell::RefCell::default(),
            conns: std::cell::RefCell::new(Slots::default()),
            pending: std::cell::Cell::new(None),
            closed: std::cell::RefCell::new(Vec::new()),
            waiting: std::cell::RefCell::new(Vec::new()),
            unreported: std::cell::RefCell::new(Vec::new()),
            held_conns: std::cell::RefCell::new(Vec::new()),
            scratch: std::cell::RefCell::new(vec![0u8; SCRATCH].into_boxed_slice()),
        })
    }

    /// The layer's own handle of slot `idx` at `generation` (modules see it
    /// through [`io::handle`]).
    fn local(idx: usize, generation: u32) -> u64 {
        (u64::from(generation) << 32) | (idx as u64 + 1)
    }

    fn handle_of(&self, idx: usize, generation: u32) -> u64 {
        io::handle(self.layer, Self::local(idx, generation))
    }

    /// The slot of a layer-local handle, if it is live.
    fn slot_of(&self, h: u64) -> Option<usize> {
        let idx = (h & 0xffff_ffff).checked_sub(1)? as usize;
        let generation = (h >> 32) as u32;
        let conns = self.conns.borrow();
        conns.get(idx).filter(|c| c.generation == generation).map(|_| idx)
    }

    /// A host-made continuation of module `name`'s active version.
    fn spawn(&self, core: &WorkerCore, name: &str) -> Option<u64> {
        let mut versions = self.versions.borrow_mut();
        let version = versions.get(core.fleet().registry()).and_then(|g| g.get(name));
        match version {
            Some(v) => core.spawn_host(v).ok(),
            None => {
                tracing::warn!(module = name, "TCP route: the module is not loaded; the connection is refused");
                None
            }
        }
    }

    fn accept(&self, core: &WorkerCore, route: usize) {
        loop {
            let Some((client, peer)) = self.net.borrow_mut().accept_one(route) else { return };
            self.admit(core, route, client, peer, 0);
        }
    }

    /// Run `route`'s accept hooks from hook `from`, then hand the connection
    /// to its handler module or to the proxy.
    fn admit(&self, core: &WorkerCore, route: usize, sock: TcpStream, peer: SocketAddr, from: usize) {
        let (modules, handler) = &self.hooks[route];
        match self.accept_hooks(core, &modules[from..], peer) {
            Verdict::Reject => {} // dropped: closed
            Verdict::Wait(k) => self.waiting.borrow_mut().push(Waiting { route, sock, peer, next: from + k }),
            Verdict::Accept => match handler {
                Some(h) => self.adopt_conn(core, sock, peer, h),
                None => self.net.borrow_mut().start_pair(&self.registry, route, sock),
            },
        }
    }

    /// Call the accept hooks `modules` in order.
    fn accept_hooks(&self, core: &WorkerCore, modules: &[String], peer: SocketAddr) -> Verdict {
        // A handle for the hooks only: the pair is not a module connection.
        let handle = io::handle(self.layer, (0x00ff_ffff << 32) | 0xffff_fffe);
        let text = peer.to_string();
        for (k, m) in modules.iter().enumerate() {
            let Some(cont) = self.spawn(core, m) else { return Verdict::Reject };
            self.pending.set(Some((handle, false)));
            let r = core.call_now(cont, MOLT_EV_CONN_OPEN, handle, (0, 0), text.as_bytes(), None);
            let rejected = self.pending.take().is_some_and(|(_, r)| r);
            let _ = core.destroy(cont);
            match r {
                crate::worker::CallNow::Held => return Verdict::Wait(k),
                crate::worker::CallNow::Failed(e) => {
                    tracing::warn!(module = %m, "TCP accept hook failed; connection refused: {e}");
                    return Verdict::Reject;
                }
                _ if rejected => return Verdict::Reject,
                _ => {}
            }
        }
        Verdict::Accept
    }

    /// Register a module connection; its slot and layer-local handle.
    fn insert(
        &self,
        mut sock: TcpStream,
        cont: u64,
        host_cont: bool,
        connecting: bool,
        peer: String,
    ) -> Option<(usize, u64)> {
        let mut conns = self.conns.borrow_mut();
        let idx = conns.reserve();
        // Handles keep 24 bits of it.
        let generation = conns.generation(idx) & 0x00ff_ffff;
        let token = io::token(self.layer, MOD_BASE + idx);
        if self.registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE).is_err() {
            conns.release(idx);
            return None;
        }
        conns.fill(
            idx,
            ModConn {
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
                held: std::collections::VecDeque::new(),
            },
        );
        Some((idx, Self::local(idx, generation)))
    }

    /// A connection of a `handler` route: its own continuation of the module.
    fn adopt_conn(&self, core: &WorkerCore, client: TcpStream, peer: SocketAddr, module: &str) {
        let Some(cont) = self.spawn(core, module) else { return };
        let text = peer.to_string();
        let Some((idx, local)) = self.insert(client, cont, true, false, text.clone()) else {
            let _ = core.destroy(cont);
            return;
        };
        self.deliver(core, idx, (cont, io::handle(self.layer, local)), MOLT_EV_CONN_OPEN, 0, text.as_bytes());
        self.conn_io(core, idx);
    }

    /// Call `to` = (continuation, connection handle) with an event of
    /// `kind`; an event a held version cannot take yet waits in the
    /// connection's `held` queue.
    fn deliver(&self, core: &WorkerCore, idx: usize, to: (u64, u64), kind: u32, arg0: u64, data: &[u8]) {
        let (cont, handle) = to;
        match core.call_now(cont, kind, handle, (arg0, 0), data, None) {
            crate::worker::CallNow::Done => {}
            crate::worker::CallNow::Held => {
                if let Some(c) = self.conns.borrow_mut().get_mut(idx) {
                    c.held.push_back((kind, arg0, data.to_vec()));
                    self.held_conns.borrow_mut().push(idx);
                }
            }
            crate::worker::CallNow::Stale | crate::worker::CallNow::CoreKind => self.closed.borrow_mut().push((idx, 1)),
            crate::worker::CallNow::Failed(e) => {
                crate::module::quiet::failure(&e.module, || {
                    tracing::warn!(conn = handle, "connection handler failed; closing the connection: {e}");
                });
                self.closed.borrow_mut().push((idx, 1));
            }
        }
    }

    /// Deliver the events a held version could not take; whether none is left.
    fn deliver_held(&self, core: &WorkerCore, idx: usize) -> bool {
        loop {
            let (next, to) = {
                let mut conns = self.conns.borrow_mut();
                let Some(c) = conns.get_mut(idx) else { return true };
                let to = (c.cont, self.handle_of(idx, c.generation));
                (c.held.pop_front(), to)
            };
            let Some((kind, arg0, data)) = next else { return true };
            match core.call_now(to.0, kind, to.1, (arg0, 0), &data, None) {
                crate::worker::CallNow::Done => {}
                crate::worker::CallNow::Held => {
                    if let Some(c) = self.conns.borrow_mut().get_mut(idx) {
                        c.held.push_front((kind, arg0, data));
                    }
                    self.held_conns.borrow_mut().push(idx);
                    return false;
                }
                _ => {
                    self.closed.borrow_mut().push((idx, 1));
                    return false;
                }
            }
        }
    }

    /// Move what can move on a module connection: held events, connect
    /// completion, queued output, input (as DATA events).
    fn conn_io(&self, core: &WorkerCore, idx: usize) {
        loop {
            if !self.deliver_held(core, idx) {
                return; // nothing more is read until the held events are in
            }
            let (cont, handle, mut event): (u64, u64, Option<(u32, u64)>) = {
                let mut conns = self.conns.borrow_mut();
                let Some(c) = conns.get_mut(idx) else { return };
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
                let peer = self.conns.borrow().get(idx).map(|c| c.peer.clone()).unwrap_or_default();
                self.deliver(core, idx, (cont, handle), kind, arg0, peer.as_bytes());
                continue;
            }
            // The read buffer is taken out for the module call that reads
            // from it (a module's calls back into this layer never read).
            let mut buf = std::mem::take(&mut *self.scratch.borrow_mut());
            if buf.is_empty() {
                buf = vec![0u8; SCRATCH].into_boxed_slice();
            }
            let mut writable_event = false;
            let mut n = 0;
            let mut eof = false;
            let mut failed = false;
            {
                let mut conns = self.conns.borrow_mut();
                let Some(c) = conns.get_mut(idx) else { return };
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
                    *self.scratch.borrow_mut() = buf;
                    self.closed.borrow_mut().push((idx, 0));
                    return self.reap(core);
                }
                if !failed && !c.closing {
                    match c.sock.read(&mut buf) {
                        Ok(0) => eof = true,
                        Ok(k) => n = k,
                        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => failed = true,
                    }
                }
            }
            if failed || eof {
                *self.scratch.borrow_mut() = buf;
                self.closed.borrow_mut().push((idx, u64::from(failed)));
                return self.reap(core);
            }
            if writable_event {
                self.deliver(core, idx, (cont, handle), MOLT_EV_CONN_WRITABLE, 0, &[]);
            }
            if n > 0 {
                self.deliver(core, idx, (cont, handle), MOLT_EV_CONN_DATA, 0, &buf[..n]);
            }
            *self.scratch.borrow_mut() = buf;
            if n == 0 {
                return;
            }
        }
    }

    /// Close and report the connections queued in `closed`.
    fn reap(&self, core: &WorkerCore) {
        loop {
            let Some((idx, why)) = self.closed.borrow_mut().pop() else { break };
            let Some(mut c) = self.conns.borrow_mut().remove(idx) else { continue };
            let _ = self.registry.deregister(&mut c.sock);
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
            let handle = self.handle_of(idx, c.generation);
            // Events still held are lost with the connection; CLOSED is not.
            self.unreported.borrow_mut().push(Unreported { cont: c.cont, handle, why, host_cont: c.host_cont });
        }
        let reports = std::mem::take(&mut *self.unreported.borrow_mut());
        for r in reports {
            if let crate::worker::CallNow::Held =
                core.call_now(r.cont, MOLT_EV_CONN_CLOSED, r.handle, (r.why, 0), &[], None)
            {
                self.unreported.borrow_mut().push(r);
                continue;
            }
            if r.host_cont {
                let _ = core.destroy(r.cont);
            }
        }
    }

    /// Close the module connections whose continuation ended: nobody is
    /// left to read them (a module that opened one and ended without
    /// closing it, or destroyed a connection's host-made continuation).
    fn sweep_orphans(&self, core: &WorkerCore) {
        let conns = self.conns.borrow();
        let mut closed = self.closed.borrow_mut();
        for idx in 0..conns.bound() {
            if let Some(c) = conns.get(idx)
                && !core.is_live(c.cont)
                && !closed.iter().any(|(i, _)| *i == idx)
            {
                closed.push((idx, 0));
            }
        }
    }

    /// Retry what met a held module version.
    fn retry_held(&self, core: &WorkerCore) {
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        let conns = std::mem::take(&mut *self.held_conns.borrow_mut());
        for w in waiting {
            self.admit(core, w.route, w.sock, w.peer, w.next);
        }
        for idx in conns {
            self.conn_io(core, idx);
        }
        self.reap(core);
    }
}

impl io::Io for TcpLayer {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

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
        let resumed = self.net.borrow_mut().resume(&self.registry);
        self.net.borrow_mut().sweep(&self.registry);
        self.versions.borrow_mut().release_stale(core.fleet().registry());
        self.sweep_orphans(core);
        let worked = !self.closed.borrow().is_empty();
        self.reap(core);
        worked || resumed
    }

    fn unheld(&self, core: &WorkerCore) {
        self.retry_held(core);
    }

    fn accepting(&self, _core: &WorkerCore, on: bool) {
        self.net.borrow_mut().set_accepting(&self.registry, on);
    }

    fn listener_fds(&self) -> Vec<(String, std::os::fd::OwnedFd)> {
        self.net.borrow().listener_fds()
    }

    fn open_connections(&self) -> usize {
        self.net.borrow().pairs.in_use() + self.conns.borrow().in_use() + self.waiting.borrow().len()
    }

    fn conn_write(&self, core: &WorkerCore, conn: u64, data: &[u8]) -> crate::host::ServiceResult<()> {
        let stale = || (MOLT_ERR_STALE, format!("connection {:#x} is closed", io::handle(self.layer, conn)));
        let idx = self.slot_of(conn).ok_or_else(stale)?;
        {
            let mut conns = self.conns.borrow_mut();
            let c = conns.get_mut(idx).ok_or_else(stale)?;
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
        if let Some(c) = conns.get_mut(idx).filter(|c| !c.connecting) {
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
        let c = conns.get_mut(idx).expect("live slot");
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
        let (_, local) = self
            .insert(sock, cont, false, true, a.to_string())
            .ok_or((MOLT_ERR_FAILED, format!("conn_connect to {a}: cannot register the socket")))?;
        Ok(local)
    }
}
