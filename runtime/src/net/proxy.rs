//! The TCP proxy: listeners and connection pairs of one worker.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};

use crate::worker::io;

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

    /// Whether anything is registered (the loop polls only then).
    pub fn is_active(&self) -> bool {
        !self.routes.is_empty()
    }

    /// Handle one readiness event.
    pub fn on_event(&mut self, registry: &Registry, token: usize) {
        if token < PAIR_BASE {
            self.accept(registry, token);
        } else {
            let idx = (token - PAIR_BASE) / 2;
            self.pump(registry, idx);
        }
    }

    fn accept(&mut self, registry: &Registry, route: usize) {
        loop {
            let accepted = match self.routes.get(route) {
                Some(r) => r.listener.accept(),
                None => return,
            };
            let (client, _) = match accepted {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(route, "accept failed: {e}");
                    return;
                }
            };
            add(&self.stats.accepted, 1);
            let open = self.stats.open.load(Ordering::Relaxed) as usize;
            if open >= self.routes[route].cfg.max_connections {
                add(&self.stats.refused, 1);
                continue; // dropped: closed at once
            }
            let _ = client.set_nodelay(true);
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
                        continue;
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

/// The TCP proxy as a worker layer.
pub struct TcpLayer {
    net: std::cell::RefCell<Net>,
    registry: Registry,
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
        Ok(TcpLayer { net: std::cell::RefCell::new(net), registry: registry.try_clone()? })
    }
}

impl io::Io for TcpLayer {
    fn ready(&self, _core: &crate::worker::WorkerCore, token: usize, _ready: io::Readiness) {
        self.net.borrow_mut().on_event(&self.registry, token);
    }

    fn tick(&self, _core: &crate::worker::WorkerCore, _now: Instant) -> bool {
        self.net.borrow_mut().sweep(&self.registry);
        false
    }
}
