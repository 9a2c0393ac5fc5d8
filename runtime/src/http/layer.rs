//! [`HttpLayer`]: one worker's HTTP proxy as a socket layer of its loop:
//! listeners, client connections, the sweep of timers, and the bridge from
//! readiness events to the transaction stages (`stage.rs`).
//!
//! Everything is driven by `drive`: it takes the client out of its slot
//! (so module calls made by hooks never meet a borrow of ours), moves bytes
//! in every direction that can move and runs stages until nothing moves,
//! then puts it back. Bodies stream through bounded buffers ([`BODY_BUF`]
//! per direction); a full buffer stops reading that side.

use std::cell::{Cell, RefCell};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Interest, Registry};

use super::client::{Client, Waiting};
use super::head;
use super::hooks::Caller;
use super::site::HttpSite;
use super::sock;
use super::txn::Answer;
use super::upstream::Upstreams;
use super::wire;
use crate::module::registry::GenerationCache;
use crate::net::slots::Slots;
use crate::sync::{AtomicU64, Ordering};
use crate::worker::{WorkerCore, io};

/// How long a lingering close waits for the client's EOF.
const LINGER: Duration = Duration::from_secs(2);
/// A keep-alive client of a site that stopped accepting (a reload removed
/// it, or the process winds down for a binary upgrade) is closed once it
/// has been idle this long: a client in a run of requests sends its next
/// one well within it and gets `Connection: close` on the answer instead
/// of a close racing its request.
const IDLE_GRACE: Duration = Duration::from_millis(100);
/// Steps one connection may take per readiness before the others ready
/// now get theirs (a request takes three or four): a client pipelining
/// requests, or a stream that never runs dry, cannot keep the worker from
/// its other connections.
const STEP_BUDGET: u32 = 64;
/// Bytes of body buffered per direction of a transaction.
pub const BODY_BUF: usize = 64 * 1024;
/// Tokens: listeners below `CLIENT_BASE`, clients below `UP_BASE`, upstreams above.
const CLIENT_BASE: usize = 1 << 20;
const UP_BASE: usize = 1 << 40;

/// Counters of one worker's HTTP proxy (single writer: the worker).
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Client connections accepted.
    pub accepted: AtomicU64,
    /// Client connections refused with 503 (over `max_connections`).
    pub overload: AtomicU64,
    /// Client connections open now.
    pub open: AtomicU64,
    /// Requests whose head was read.
    pub requests: AtomicU64,
    /// Responses by class: 1xx (unused), 2xx, 3xx, 4xx, 5xx.
    pub responses: [AtomicU64; 5],
    /// Answers made by modules.
    pub module_answers: AtomicU64,
    /// New upstream connections.
    pub upstream_connects: AtomicU64,
    /// Requests sent on a pooled upstream connection.
    pub pool_reuses: AtomicU64,
    /// Upstream attempts that failed: refused, closed, reset, malformed or timed out.
    pub upstream_failures: AtomicU64,
    /// Requests sent again after a failed attempt (the retry policy allowed it).
    pub upstream_retries: AtomicU64,
    /// Transactions given up because their client left mid-request.
    pub client_aborts: AtomicU64,
    /// Hook calls that failed.
    pub hook_failures: AtomicU64,
    /// Hook calls that met a held module version (a state migration); the
    /// transaction waits and goes on when the worker's holds are released.
    pub held_hooks: AtomicU64,
    /// Client connections the timeout sweep looked at (the clients with a
    /// deadline due, not every connection every sweep).
    pub timer_checks: AtomicU64,
}

pub(super) fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

fn sub(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).saturating_sub(n), Ordering::Relaxed);
}

/// What one round of work on a client did.
pub(super) enum Flow {
    /// Something moved; go round again.
    Moved,
    /// Nothing can move until a socket is ready (or a tick).
    Wait,
    /// Close the client now.
    Close,
}

/// The HTTP proxy as a worker layer.
pub struct HttpLayer {
    layer: usize,
    pub(super) worker: u32,
    registry: Registry,
    /// Its sites by slot (a client's `site`); see [`SiteSlot`].
    sites: RefCell<Vec<SiteSlot>>,
    clients: RefCell<Slots<Client>>,
    pub(super) ups: Upstreams,
    /// The active generation, for the module chains' versions.
    pub(super) generations: RefCell<GenerationCache>,
    pub(super) stats: Arc<HttpStats>,
    pub(super) next_txn: Cell<u64>,
    /// Clients whose hooks met a held module version: driven again when the
    /// worker's holds are released.
    pub(super) held: RefCell<Vec<usize>>,
    /// Clients that used up their turn's budget with work left: driven
    /// again next loop turn, after the others ready now.
    again: RefCell<Vec<usize>>,
    /// Client timeouts: (when, client) entries, the earliest first. A
    /// client has at most one live entry, at or before its earliest
    /// deadline (`Client::due`); an entry that finds nothing due is
    /// replaced by one at the client's next deadline. The sweep looks at
    /// the clients due, not at every connection.
    timers: RefCell<std::collections::BinaryHeap<std::cmp::Reverse<(Instant, usize)>>>,
    /// Every client's deadlines changed (a reload's new limits, winding
    /// down): the next sweep looks at every connection once.
    sweep_all: Cell<bool>,
    last_sweep: Cell<Instant>,
    /// A listener left connections queued (modules not loaded yet).
    waiting_accept: Cell<bool>,
    /// Built paused (a binary upgrade's new process): listeners are
    /// registered at the first `accepting(true)`.
    paused: Cell<bool>,
    /// The process winds down: every response closes its connection.
    winding_down: Cell<bool>,
    /// The isolated modules' links of this worker.
    pub(super) iso: super::isolated::IsoLinks,
    /// The read buffer every read goes through.
    pub(super) scratch: RefCell<Box<[u8]>>,
}

/// One site of a worker: its config, its listener while it accepts, and the
/// slot that replaced it when a reload changed the site. Slots are never
/// reused, so a client's slot index (and its transactions' route and group
/// indices into the slot's config) stays valid while it lives; a client
/// moves to the newest slot between transactions.
struct SiteSlot {
    site: Arc<HttpSite>,
    listener: Option<TcpListener>,
    next: Option<usize>,
}

/// This worker's own copy of a site's config: a client's step takes a
/// reference to it, and a count shared with the other workers would bounce
/// its cache line between them on every step.
fn own_copy(site: &Arc<HttpSite>) -> Arc<HttpSite> {
    Arc::new(HttpSite::clone(site))
}

/// What a reload asks of one worker's HTTP layer: the sites it should have,
/// in order, each with the listener this worker takes for it when the site
/// is new (bound before the reload was published).
pub struct SitePlan {
    /// The site's config (its listen address resolved).
    pub site: Arc<HttpSite>,
    /// This worker's listener, for a site this worker does not serve yet.
    pub listener: Option<std::net::TcpListener>,
}

impl HttpLayer {
    /// The layer at position `layer` of worker `worker`, with its
    /// listeners (one per site, bound by [`crate::net::bind_reuseport`]).
    pub fn new(
        layer: usize,
        worker: u32,
        registry: &Registry,
        sites: Vec<(Arc<HttpSite>, std::net::TcpListener)>,
        stats: Arc<HttpStats>,
        paused: bool,
        isolated: Vec<crate::sync::Arc<crate::isolate::Supervisor>>,
    ) -> std::io::Result<HttpLayer> {
        let mut groups = Vec::new();
        let mut slots = Vec::new();
        for (i, (site, l)) in sites.into_iter().enumerate() {
            let mut l = TcpListener::from_std(l);
            if !paused {
                registry.register(&mut l, io::token(layer, i), Interest::READABLE)?;
            }
            groups.push(site.groups.iter().map(|(_, s)| s.len()).collect());
            slots.push(SiteSlot { site: own_copy(&site), listener: Some(l), next: None });
        }
        Ok(HttpLayer {
            layer,
            worker,
            registry: registry.try_clone()?,
            sites: RefCell::new(slots),
            clients: RefCell::new(Slots::default()),
            ups: Upstreams::new(layer, UP_BASE, registry.try_clone()?, groups),
            generations: RefCell::new(GenerationCache::default()),
            stats,
            next_txn: Cell::new(0),
            held: RefCell::new(Vec::new()),
            again: RefCell::new(Vec::new()),
            timers: RefCell::new(std::collections::BinaryHeap::new()),
            sweep_all: Cell::new(false),
            last_sweep: Cell::new(Instant::now()),
            waiting_accept: Cell::new(false),
            paused: Cell::new(paused),
            winding_down: Cell::new(false),
            iso: super::isolated::IsoLinks::new(worker as usize, layer, registry.try_clone()?, isolated),
            scratch: RefCell::new(vec![0u8; 32 * 1024].into_boxed_slice()),
        })
    }

    /// A swap of isolated modules: `sups` serve new transactions from now on.
    pub fn add_isolated(&self, sups: &[crate::sync::Arc<crate::isolate::Supervisor>]) {
        for s in sups {
            self.iso.add(s.clone());
        }
    }

    /// Transactions of this worker still using supervisor `sup`.
    pub fn isolated_in_use(&self, sup: &crate::isolate::Supervisor) -> usize {
        self.iso.in_use(sup)
    }

    /// This worker's links to isolated modules (current and retired).
    pub fn isolated_links(&self) -> usize {
        self.iso.len()
    }

    /// Whether the process winds down (see [`io::Io::wind_down`]).
    pub(super) fn winding_down(&self) -> bool {
        self.winding_down.get()
    }

    /// Count a response by its status class.
    pub(super) fn count_status(&self, status: u16) {
        add(&self.stats.responses[usize::from(status / 100).saturating_sub(1).min(4)], 1);
    }

    /// The config of site slot `slot`.
    pub(super) fn site(&self, slot: usize) -> Arc<HttpSite> {
        self.sites.borrow()[slot].site.clone()
    }

    /// The newest slot of the site slot `slot` was replaced by, and whether
    /// that site still listens (a reload may have removed it).
    fn newest(&self, mut slot: usize) -> (usize, bool) {
        let sites = self.sites.borrow();
        while let Some(n) = sites[slot].next {
            slot = n;
        }
        (slot, sites[slot].listener.is_some())
    }

    /// Apply a reload's sites (see [`SitePlan`]): a site no longer planned
    /// stops accepting now (its connections finish); a site whose routes,
    /// upstreams or limits changed gets a new slot that takes over its
    /// listener, and its clients move to it between transactions; a new site
    /// starts accepting on the listener the plan brings.
    pub fn reconfigure(&self, plan: Vec<SitePlan>) {
        let mut sites = self.sites.borrow_mut();
        for slot in sites.iter_mut().filter(|s| s.next.is_none() && s.listener.is_some()) {
            if !plan.iter().any(|p| p.site.name == slot.site.name) {
                if let Some(mut l) = slot.listener.take() {
                    let _ = self.registry.deregister(&mut l);
                }
                tracing::info!(worker = self.worker, site = %slot.site.name, "HTTP listener removed: it accepts no more connections");
            }
        }
        for p in plan {
            let live =
                sites.iter().position(|s| s.next.is_none() && s.listener.is_some() && s.site.name == p.site.name);
            if let Some(i) = live {
                if *sites[i].site == *p.site {
                    continue;
                }
            }
            let j = sites.len();
            if j >= CLIENT_BASE {
                tracing::error!(worker = self.worker, site = %p.site.name, "too many site changes on this worker; restart molt to apply more");
                continue;
            }
            let listener = match live {
                Some(i) => {
                    sites[i].next = Some(j);
                    sites[i].listener.take()
                }
                None => p.listener.map(TcpListener::from_std),
            };
            let Some(mut l) = listener else {
                tracing::error!(worker = self.worker, site = %p.site.name, "a new HTTP site came without its listener");
                continue;
            };
            let token = io::token(self.layer, j);
            let registered = if live.is_some() {
                self.registry.reregister(&mut l, token, Interest::READABLE)
            } else {
                self.registry.register(&mut l, token, Interest::READABLE)
            };
            if let Err(e) = registered {
                tracing::error!(worker = self.worker, site = %p.site.name, "cannot register the listener: {e}");
                continue;
            }
            self.ups.add_site(&p.site.groups.iter().map(|(_, s)| s.len()).collect::<Vec<_>>());
            sites.push(SiteSlot { site: own_copy(&p.site), listener: Some(l), next: None });
        }
        drop(sites);
        // Connections may have queued on a listener before it moved.
        self.waiting_accept.set(true);
        // Limits may have changed, or a site stopped listening.
        self.sweep_all.set(true);
    }

    /// Who calls hooks for client `c`, of site `site`.
    pub(super) fn caller<'a>(
        &'a self,
        core: &'a WorkerCore,
        idx: usize,
        c: &'a Client,
        site: &'a HttpSite,
    ) -> Caller<'a> {
        Caller {
            core,
            site,
            peer: &c.peer_text,
            worker: self.worker,
            hook_failures: &self.stats.hook_failures,
            held_hooks: &self.stats.held_hooks,
            iso: Some(&self.iso),
            client: idx,
        }
    }

    /// Hand isolated hooks' outcomes to their transactions and drive them.
    fn deliver_iso(&self, core: &WorkerCore, outcomes: Vec<super::isolated::Outcome>) {
        for o in outcomes {
            let waiting = match self.clients.borrow_mut().get_mut(o.client) {
                Some(c) => match c.txn.as_mut() {
                    Some(t) if t.data.id == o.txn => t.chain.deliver(o.result),
                    // The client left, or went on to another transaction.
                    _ => false,
                },
                None => false,
            };
            if waiting {
                self.drive(core, o.client);
            }
        }
    }

    /// Whether listener `site` may accept: a listener whose routes call
    /// modules waits (connections queue in its backlog) until the first
    /// generation of modules is active, instead of answering 503 "not
    /// loaded" in the first moments of a start.
    fn ready(&self, core: &WorkerCore, site: usize) -> bool {
        let needs_modules = self.sites.borrow()[site].site.routes.iter().any(|r| !r.modules.is_empty());
        !needs_modules || self.generations.borrow_mut().get(core.fleet().registry()).is_some()
    }

    fn accept(&self, core: &WorkerCore, site: usize) {
        if self.sites.borrow().get(site).is_none_or(|s| s.listener.is_none()) {
            return;
        }
        if !self.ready(core, site) {
            self.waiting_accept.set(true);
            return;
        }
        let max_connections = self.site(site).limits.max_connections;
        loop {
            let accepted = match self.sites.borrow().get(site).and_then(|s| s.listener.as_ref()) {
                Some(l) => l.accept(),
                None => return,
            };
            let (mut sock, peer) = match accepted {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(worker = self.worker, "accept failed: {e}");
                    return;
                }
            };
            add(&self.stats.accepted, 1);
            if self.stats.open.load(Ordering::Relaxed) as usize >= max_connections {
                add(&self.stats.overload, 1);
                self.count_status(503);
                let a = Answer::host(503, "this worker is at its connection limit; try again");
                let mut out = Vec::new();
                wire::answer(&a, "GET", 1, true, &mut out);
                let _ = sock.write(&out);
                continue;
            }
            let _ = sock.set_nodelay(true);
            let mut clients = self.clients.borrow_mut();
            let idx = clients.reserve();
            let token = io::token(self.layer, CLIENT_BASE + idx);
            if self.registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE).is_err() {
                clients.release(idx);
                continue;
            }
            let mut c = Client::new(sock, peer, site, Instant::now());
            self.schedule(idx, &mut c, None);
            clients.fill(idx, c);
            add(&self.stats.open, 1);
        }
    }

    /// Drive client `idx` as far as it goes.
    pub(super) fn drive(&self, core: &WorkerCore, idx: usize) {
        let Some(mut c) = self.clients.borrow_mut().take(idx) else { return };
        let mut budget = STEP_BUDGET;
        let keep = loop {
            match self.step(core, idx, &mut c) {
                Flow::Moved if budget > 0 => budget -= 1,
                Flow::Moved => {
                    // Work is left (a pipeline of requests, a fast stream):
                    // the other connections ready now go first.
                    // (A flag, not a search of the list: thousands of
                    // connections may use up their budget in one turn.)
                    if !c.again {
                        c.again = true;
                        self.again.borrow_mut().push(idx);
                    }
                    break true;
                }
                Flow::Wait => break true,
                Flow::Close => break false,
            }
        };
        if keep {
            self.schedule(idx, &mut c, None);
            self.clients.borrow_mut().fill(idx, c);
        } else {
            self.close_client(core, idx, c);
        }
    }

    /// The earliest time a timeout of client `c` could be due (see
    /// `timers`); deadlines before `after` are left out (the sweep just
    /// found them not to apply).
    fn due(&self, c: &Client, after: Option<Instant>) -> Option<Instant> {
        let keep = |t: Instant| after.is_none_or(|a| t >= a);
        if let Some(at) = c.linger {
            return Some(at);
        }
        let mut due: Option<Instant> = None;
        let mut take = |t: Instant| {
            if keep(t) {
                due = Some(due.map_or(t, |d| d.min(t)));
            }
        };
        let (request_timeout, keepalive_timeout) = {
            let sites = self.sites.borrow();
            let site = &sites[c.site].site;
            if let Some(t) = &c.txn {
                if let Some(d) = Self::txn_due(c, site, t) {
                    take(d);
                }
                return due;
            }
            (site.limits.request_timeout, site.limits.keepalive_timeout)
        };
        if c.inb.is_empty() && c.out_pos >= c.out.len() && (self.winding_down.get() || !self.newest(c.site).1) {
            take(c.idle_since + IDLE_GRACE);
        }
        match c.head_since {
            Some(t) => take(t + request_timeout),
            None => take(c.idle_since + if c.served == 0 { request_timeout } else { keepalive_timeout }),
        }
        due
    }

    /// Give client `idx` a timer entry at its earliest deadline, unless it
    /// has one at or before it.
    fn schedule(&self, idx: usize, c: &mut Client, after: Option<Instant>) {
        let Some(d) = self.due(c, after) else { return };
        if c.due.is_none_or(|cur| d < cur) {
            c.due = Some(d);
            self.timers.borrow_mut().push(std::cmp::Reverse((d, idx)));
        }
    }

    fn close_client(&self, core: &WorkerCore, idx: usize, mut c: Client) {
        if let Some(mut t) = c.txn.take() {
            // The client left (or broke) mid-transaction.
            self.abandon(core, &c, &mut t);
        }
        // What is queued goes out as far as the socket takes it now (a
        // response cut short by its upstream: the client sees the cut).
        let _ = sock::flush(&mut c.sock, &mut c.out, &mut c.out_pos);
        let _ = self.registry.deregister(&mut c.sock);
        let _ = c.sock.shutdown(Shutdown::Both);
        self.clients.borrow_mut().release(idx);
        sub(&self.stats.open, 1);
    }

    /// One round: read, advance the transaction, write. What moved.
    fn step(&self, core: &WorkerCore, idx: usize, c: &mut Client) -> Flow {
        if c.linger.is_some() {
            // Read and drop until EOF (or the sweep's deadline).
            let mut scratch = self.scratch.borrow_mut();
            loop {
                match c.sock.read(&mut scratch) {
                    Ok(0) => return Flow::Close,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Flow::Wait,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return Flow::Close,
                }
            }
        }
        if c.txn.is_none() {
            // Between transactions a client moves to its site's newest config.
            c.site = self.newest(c.site).0;
        }
        let site = self.site(c.site);
        let site: &HttpSite = &site;
        let mut moved = false;
        // Read the client when there is room: a head, or a body in transit.
        let cap = match c.txn.as_ref().map(|t| &t.stage) {
            None => site.limits.max_head_bytes + 1,
            Some(s) if s.reads_request_body() => BODY_BUF,
            Some(_) => 0,
        };
        if c.rx.rd && !c.eof && c.inb.len() < cap {
            match sock::fill(&mut c.sock, &mut c.inb, cap, &mut self.scratch.borrow_mut()) {
                Ok(f) => {
                    if f.n > 0 {
                        moved = true;
                        c.last_read = Instant::now();
                        c.head_bytes_arrived(c.last_read);
                    }
                    c.rx.after(&f);
                    c.eof |= f.eof;
                    moved |= f.eof;
                }
                Err(_) => return Flow::Close,
            }
        }
        if c.txn.is_none() && !c.close {
            if c.inb.is_empty() {
                if c.eof {
                    return Flow::Close;
                }
            } else {
                let limits =
                    head::Limits { max_head_bytes: site.limits.max_head_bytes, max_headers: site.limits.max_headers };
                match head::parse_request(&c.inb, &limits) {
                    Ok(None) if c.eof => return Flow::Close,
                    Ok(None) => {}
                    Ok(Some((h, n))) => {
                        c.inb.drain(..n);
                        self.begin(core, c, site, h);
                        moved = true;
                    }
                    Err(e) => {
                        self.refuse(c, e.status(), &e.to_string());
                        moved = true;
                    }
                }
            }
        }
        if c.txn.is_some() {
            match self.advance(core, idx, c, site) {
                Flow::Moved => moved = true,
                Flow::Wait => {}
                Flow::Close => return Flow::Close,
            }
        }
        match sock::flush(&mut c.sock, &mut c.out, &mut c.out_pos) {
            Ok(n) => moved |= n > 0,
            Err(_) => return Flow::Close,
        }
        if c.close && c.txn.is_none() && c.out.is_empty() {
            if c.eof {
                return Flow::Close;
            }
            // Lingering close: the client may still be sending what we will
            // not read (a refused body); closing now would reset the
            // connection and could destroy our response in its buffers.
            let _ = c.sock.shutdown(Shutdown::Write);
            c.linger = Some(Instant::now() + LINGER);
            c.inb.clear();
            return Flow::Moved;
        }
        if moved { Flow::Moved } else { Flow::Wait }
    }

    /// Queue a host error answer outside any transaction and stop reading.
    pub(super) fn refuse(&self, c: &mut Client, status: u16, why: &str) {
        tracing::debug!(worker = self.worker, peer = %c.peer_text, status, "refused: {why}");
        let text = why.split_once(": ").map_or(why, |(_, t)| t);
        wire::answer(&Answer::host(status, text), "GET", 1, true, &mut c.out);
        self.count_status(status);
        c.close = true;
        c.inb.clear();
    }

    /// Timers of one client (and its transaction).
    fn expire(&self, core: &WorkerCore, idx: usize, now: Instant) {
        let Some(mut c) = self.clients.borrow_mut().take(idx) else { return };
        let site = self.site(c.site);
        let site: &HttpSite = &site;
        let mut close = false;
        let mut drive = false;
        if let Some(at) = c.linger {
            close = now > at;
        } else if let Some(mut t) = c.txn.take() {
            match self.expire_txn(&mut c, site, &mut t, now) {
                Flow::Moved => drive = true,
                Flow::Wait => {}
                Flow::Close => close = true,
            }
            c.txn = Some(t);
        } else if c.inb.is_empty()
            && c.out_pos >= c.out.len()
            && (self.winding_down.get() || !self.newest(c.site).1)
            && now.duration_since(c.idle_since) >= IDLE_GRACE
        {
            // Idle on a site that stopped accepting (a reload removed it,
            // or the process winds down): its connections finish, and an
            // idle one is finished.
            close = true;
        } else {
            match c.waiting(&site.limits, now) {
                Waiting::InTime => {}
                Waiting::Idle => close = true,
                // Refused already, and the answer is not read: give up.
                Waiting::HeadLate if c.close => close = true,
                Waiting::HeadLate => {
                    self.refuse(&mut c, 408, "the request head did not arrive in time");
                    drive = true;
                }
            }
        }
        if close {
            self.close_client(core, idx, c);
            return;
        }
        // Its next deadline, past the ones just found not to apply.
        self.schedule(idx, &mut c, Some(now));
        self.clients.borrow_mut().fill(idx, c);
        if drive {
            self.drive(core, idx);
        }
    }

    fn sweep(&self, core: &WorkerCore, now: Instant) {
        if self.sweep_all.replace(false) {
            let n = self.clients.borrow().bound();
            for idx in 0..n {
                if let Some(c) = self.clients.borrow_mut().get_mut(idx) {
                    c.due = None;
                } else {
                    continue;
                }
                add(&self.stats.timer_checks, 1);
                self.expire(core, idx, now);
            }
        }
        // The clients due; entries found stale (the client has an earlier
        // one, or none) are dropped. Collected first: an expire may add an
        // entry at `now`, which waits for the next sweep.
        let mut due = Vec::new();
        {
            let mut timers = self.timers.borrow_mut();
            while timers.peek().is_some_and(|e| e.0.0 <= now) {
                if let Some(std::cmp::Reverse(e)) = timers.pop() {
                    due.push(e);
                }
            }
        }
        for (at, idx) in due {
            match self.clients.borrow_mut().get_mut(idx) {
                Some(c) if c.due == Some(at) => c.due = None,
                _ => continue,
            }
            add(&self.stats.timer_checks, 1);
            self.expire(core, idx, now);
        }
        // Idle pooled connections past the keep-alive timeout.
        let keep = self.sites.borrow().iter().map(|s| s.site.limits.keepalive_timeout).min().unwrap_or_default();
        self.ups.sweep(now, keep);
    }
}

impl io::Io for HttpLayer {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn ready(&self, core: &WorkerCore, token: usize, ready: io::Readiness) {
        if token >= super::isolated::ISO_BASE {
            let mut out = Vec::new();
            self.iso.replies(token - super::isolated::ISO_BASE, &mut out);
            self.deliver_iso(core, out);
        } else if token < CLIENT_BASE {
            self.accept(core, token);
        } else if token < UP_BASE {
            let idx = token - CLIENT_BASE;
            if let Some(c) = self.clients.borrow_mut().get_mut(idx) {
                c.rx.on_ready(ready);
            }
            self.drive(core, idx);
        } else if let Some(owner) = self.ups.on_ready(token - UP_BASE, ready) {
            self.drive(core, owner);
        }
    }

    fn tick(&self, core: &WorkerCore, now: Instant) -> bool {
        if self.waiting_accept.replace(false) {
            // Connections that queued before the first load: take them now
            // (accept waits again, and sets the flag, while not ready).
            let n = self.sites.borrow().len();
            for site in 0..n {
                self.accept(core, site);
            }
        }
        self.generations.borrow_mut().release_stale(core.fleet().registry());
        let again = std::mem::take(&mut *self.again.borrow_mut());
        let resumed = !again.is_empty();
        for idx in again {
            if let Some(c) = self.clients.borrow_mut().get_mut(idx) {
                c.again = false;
            }
            self.drive(core, idx);
        }
        let mut isolated = false;
        if now.duration_since(self.last_sweep.get()) >= Duration::from_millis(20) {
            self.last_sweep.set(now);
            self.sweep(core, now);
            // Isolated children's deaths and hangs, and replies a lost poke
            // left, every 20 ms with the sweep (not every loop turn: it
            // reads each wake socket).
            let mut out = Vec::new();
            self.iso.tick(now, &mut out);
            isolated = !out.is_empty();
            self.deliver_iso(core, out);
        }
        resumed || isolated
    }

    fn unheld(&self, core: &WorkerCore) {
        let held = std::mem::take(&mut *self.held.borrow_mut());
        for idx in held {
            self.drive(core, idx);
        }
    }

    fn tick_every(&self) -> Duration {
        Duration::from_millis(20)
    }

    fn accepting(&self, _core: &WorkerCore, on: bool) {
        let mut sites = self.sites.borrow_mut();
        for (i, slot) in sites.iter_mut().enumerate().filter(|(_, s)| s.next.is_none()) {
            let Some(l) = slot.listener.as_mut() else { continue };
            if on && self.paused.get() {
                if let Err(e) = self.registry.register(l, io::token(self.layer, i), Interest::READABLE) {
                    tracing::error!(worker = self.worker, site = %slot.site.name, "cannot register the listener: {e}");
                }
            } else if !on {
                let _ = self.registry.deregister(l);
                slot.listener = None;
                tracing::info!(worker = self.worker, site = %slot.site.name, "HTTP listener handed off: this process accepts no more connections on it");
            }
        }
        drop(sites);
        if on {
            self.paused.set(false);
            // Connections queued while nobody here accepted.
            self.waiting_accept.set(true);
        }
    }

    fn listener_fds(&self) -> Vec<(String, std::os::fd::OwnedFd)> {
        use std::os::fd::AsFd;
        let sites = self.sites.borrow();
        sites
            .iter()
            .filter(|s| s.next.is_none())
            .filter_map(|s| {
                let l = s.listener.as_ref()?;
                match l.as_fd().try_clone_to_owned() {
                    Ok(fd) => Some((format!("http:{}", s.site.name), fd)),
                    Err(e) => {
                        tracing::error!(worker = self.worker, site = %s.site.name, "cannot duplicate the listener: {e}");
                        None
                    }
                }
            })
            .collect()
    }

    fn wind_down(&self, _core: &WorkerCore) {
        self.winding_down.set(true);
        self.sweep_all.set(true);
    }

    fn open_connections(&self) -> usize {
        self.stats.open.load(Ordering::Relaxed) as usize
    }
}
