//! The HTTP/1.1 reverse proxy on one worker: listeners, client
//! connections, upstream pools, and the module hooks.
//!
//! A client connection carries one transaction at a time (pipelined
//! requests wait in its read buffer). A transaction moves through stages:
//!
//! ```text
//! Request hooks -> Upstream hook -> Connect -> Proxy (request out, response head in)
//!   -> Response hooks -> Stream (response body out) -> End (TXN_END hook, END)
//!   \-> (a module or the host answered) Answer: Response hooks, the answer -> End
//! ```
//!
//! Everything is driven by [`HttpLayer::drive`]: it takes the client out of
//! the slab (so module calls made by hooks never meet a borrow of ours),
//! moves bytes in every direction that can move and runs stages until
//! nothing moves, then puts it back. Bodies stream through bounded buffers
//! ([`BODY_BUF`] per direction); a full buffer stops reading that side.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};
use molt_abi::ffi::*;

use super::chunked::{self, Decoder};
use super::head::{self, Body, RequestHead};
use super::site::HttpSite;
use super::txn::{Answer, TxnData, View, reason};
use crate::config::FailurePolicy;
use crate::module::registry::GenerationCache;
use crate::sync::{AtomicU64, Ordering};
use crate::worker::{CallNow, WorkerCore, io};

/// How long a lingering close waits for the client's EOF.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
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
    /// Upstream connects that failed or timed out.
    pub upstream_failures: AtomicU64,
    /// Hook calls that failed.
    pub hook_failures: AtomicU64,
    /// Hook calls that met a held module version (a state migration); the
    /// transaction waits and goes on when the worker's holds are released.
    pub held_hooks: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

fn sub(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).saturating_sub(n), Ordering::Relaxed);
}

/// How much of a body is left.
#[derive(Debug)]
enum Framing {
    None,
    Length(u64),
    Chunked(Box<Decoder>),
    UntilClose,
}

impl Framing {
    fn of(b: Body) -> Framing {
        match b {
            Body::None | Body::Length(0) => Framing::None,
            Body::Length(n) => Framing::Length(n),
            Body::Chunked => Framing::Chunked(Box::default()),
            Body::UntilClose => Framing::UntilClose,
        }
    }

    fn done(&self) -> bool {
        match self {
            Framing::None => true,
            Framing::Length(n) => *n == 0,
            Framing::Chunked(d) => d.is_done(),
            Framing::UntilClose => false,
        }
    }
}

/// Move body bytes from `input` to `out` under `framing`, re-encoding as
/// chunked when `chunk_out`; returns payload bytes moved.
fn transfer(framing: &mut Framing, input: &mut Vec<u8>, out: &mut Vec<u8>, chunk_out: bool) -> Result<u64, String> {
    if input.is_empty() {
        return Ok(0);
    }
    let moved = match framing {
        Framing::None => 0,
        Framing::Length(n) => {
            let k = (*n).min(input.len() as u64) as usize;
            if chunk_out {
                chunked::encode_chunk(&input[..k], out);
            } else {
                out.extend_from_slice(&input[..k]);
            }
            input.drain(..k);
            *n -= k as u64;
            k as u64
        }
        Framing::Chunked(d) => {
            let mut payload = Vec::new();
            let used = d.decode(input, &mut payload).map_err(|e| e.to_string())?;
            input.drain(..used);
            if chunk_out {
                chunked::encode_chunk(&payload, out);
            } else {
                out.extend_from_slice(&payload);
            }
            payload.len() as u64
        }
        Framing::UntilClose => {
            let k = input.len();
            if chunk_out {
                chunked::encode_chunk(input, out);
            } else {
                out.extend_from_slice(input);
            }
            input.clear();
            k as u64
        }
    };
    Ok(moved)
}

/// Whether reading a socket may find something: set by a readiness event,
/// cleared when a read drains the socket. A peer's close (`EPOLLRDHUP`)
/// keeps it set until EOF is read, since a short read says nothing then.
#[derive(Debug, Clone, Copy)]
struct Readable {
    rd: bool,
    hup: bool,
}

impl Readable {
    /// A new socket: try a read.
    const NEW: Readable = Readable { rd: true, hup: false };

    fn on_ready(&mut self, ready: io::Readiness) {
        if ready.readable {
            self.rd = true;
            self.hup |= ready.read_closed;
        }
    }

    fn after(&mut self, f: &Filled) {
        self.rd = !f.drained || (self.hup && !f.eof);
    }
}

/// What a read did: bytes, whether it met EOF, and whether the socket is
/// drained (it would block, or a read came back short), so that reading
/// again before the next readiness event would only cost a syscall.
struct Filled {
    n: usize,
    eof: bool,
    drained: bool,
}

/// Read from `sock` into `buf` until it holds `cap` bytes, the socket is
/// drained, or EOF; `scratch` is the read buffer (zeroed once, reused).
fn fill(sock: &mut TcpStream, buf: &mut Vec<u8>, cap: usize, scratch: &mut [u8]) -> std::io::Result<Filled> {
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
fn flush(sock: &mut TcpStream, buf: &mut Vec<u8>, pos: &mut usize) -> std::io::Result<usize> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    RequestHooks,
    UpstreamHook,
    Connect,
    Proxy,
    ResponseHooks,
    Stream,
    Answer,
    End,
}

/// One module's continuation in a transaction.
struct Hooked {
    cont: u64,
    name: Box<str>,
    policy: FailurePolicy,
    /// Skipped for the rest of the transaction (failed under fail_open).
    skip: bool,
}

struct Txn {
    data: TxnData,
    conts: Vec<Hooked>,
    stage: Stage,
    /// The next module to call in the current stage's hook.
    hook_pos: usize,
    req_body: Framing,
    req_seen: u64,
    /// The upstream connection (index into `ups`).
    up: Option<usize>,
    /// Upstream servers tried, and where round robin started.
    tried: usize,
    rr_start: usize,
    /// The request head as sent (to retry on a fresh connection).
    head_copy: Vec<u8>,
    up_out: Vec<u8>,
    up_out_pos: usize,
    up_in: Vec<u8>,
    up_since: Instant,
    resp_body: Framing,
    chunk_out: bool,
    status: u16,
    sent_body: u64,
    /// Whether the upstream connection may go back to the pool.
    up_reusable: bool,
    /// Why the last upstream attempt failed: 502 (refused, reset) or 504 (timeout).
    fail_status: u16,
    /// The current upstream connection came from the pool.
    reused: bool,
    /// A pooled connection failed and the request went out again once.
    retried: bool,
    /// The whole request was written upstream (the upstream timeout runs from then).
    sent: bool,
}

/// A transaction's buffers, carried from one transaction of a connection to
/// the next; larger than [`KEEP_BUF`] they are dropped instead.
#[derive(Default)]
struct Buffers {
    conts: Vec<Hooked>,
    head_copy: Vec<u8>,
    up_out: Vec<u8>,
    up_in: Vec<u8>,
}

/// The largest buffer an idle connection keeps.
const KEEP_BUF: usize = 16 * 1024;

impl Buffers {
    fn take_from(t: &mut Txn) -> Buffers {
        let keep = |v: &mut Vec<u8>| if v.capacity() <= KEEP_BUF { std::mem::take(v) } else { Vec::new() };
        Buffers {
            conts: std::mem::take(&mut t.conts),
            head_copy: keep(&mut t.head_copy),
            up_out: keep(&mut t.up_out),
            up_in: keep(&mut t.up_in),
        }
    }
}

struct Client {
    sock: TcpStream,
    /// The peer as text, "ip:port" (for hooks), and its IP alone (for X-Forwarded-For).
    peer_text: std::rc::Rc<str>,
    peer_ip: std::rc::Rc<str>,
    site: usize,
    inb: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    txn: Option<Box<Txn>>,
    /// The last transaction's box, kept for the next one (its buffers reused).
    spare: Option<Box<Txn>>,
    /// Start of the current wait: the idle keep-alive, or the request.
    since: Instant,
    last_read: Instant,
    eof: bool,
    /// No more requests: close once `out` is written.
    close: bool,
    /// Minor version of the current request (for the response framing).
    minor: u8,
    keep_alive: bool,
    /// Lingering close: our side is shut, input is dropped until EOF or this time.
    linger: Option<Instant>,
    /// Whether reading may find something.
    rx: Readable,
}

struct Up {
    sock: TcpStream,
    addr: SocketAddr,
    connected: bool,
    owner: Option<usize>,
    idle_since: Instant,
    /// Whether reading may find something.
    rx: Readable,
    /// EOF was read.
    eof: bool,
    /// Idle connections kept per server (its listener's `pool_per_server`).
    pool_cap: usize,
}

struct Group {
    next: usize,
    failed_until: Vec<Option<Instant>>,
}

/// The HTTP proxy as a worker layer.
pub struct HttpLayer {
    layer: usize,
    worker: u32,
    registry: Registry,
    sites: Vec<Arc<HttpSite>>,
    listeners: Vec<TcpListener>,
    clients: RefCell<Vec<Option<Client>>>,
    client_free: RefCell<Vec<usize>>,
    ups: RefCell<Vec<Option<Up>>>,
    up_free: RefCell<Vec<usize>>,
    pool: RefCell<HashMap<SocketAddr, Vec<usize>>>,
    health: RefCell<Vec<Vec<Group>>>,
    /// The active generation, for the module chains' versions.
    generations: RefCell<GenerationCache>,
    stats: Arc<HttpStats>,
    next_txn: Cell<u64>,
    /// Clients whose hooks met a held module version: driven again when the
    /// worker's holds are released.
    retry: RefCell<Vec<usize>>,
    last_sweep: Cell<Instant>,
    /// The read buffer every read goes through.
    scratch: RefCell<Box<[u8]>>,
}

enum Flow {
    /// Something moved; go round again.
    Moved,
    /// Nothing can move until a socket is ready (or a tick).
    Wait,
    /// Close the client now.
    Close,
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
    ) -> std::io::Result<HttpLayer> {
        let mut listeners = Vec::new();
        let mut health = Vec::new();
        let mut out_sites = Vec::new();
        for (i, (site, l)) in sites.into_iter().enumerate() {
            let mut l = TcpListener::from_std(l);
            registry.register(&mut l, io::token(layer, i), Interest::READABLE)?;
            listeners.push(l);
            health
                .push(site.groups.iter().map(|(_, s)| Group { next: 0, failed_until: vec![None; s.len()] }).collect());
            out_sites.push(site);
        }
        Ok(HttpLayer {
            layer,
            worker,
            registry: registry.try_clone()?,
            sites: out_sites,
            listeners,
            clients: RefCell::new(Vec::new()),
            client_free: RefCell::new(Vec::new()),
            ups: RefCell::new(Vec::new()),
            up_free: RefCell::new(Vec::new()),
            pool: RefCell::new(HashMap::new()),
            health: RefCell::new(health),
            generations: RefCell::new(GenerationCache::default()),
            stats,
            next_txn: Cell::new(0),
            retry: RefCell::new(Vec::new()),
            last_sweep: Cell::new(Instant::now()),
            scratch: RefCell::new(vec![0u8; 32 * 1024].into_boxed_slice()),
        })
    }

    /// Count a response by its status class.
    fn count_status(&self, status: u16) {
        add(&self.stats.responses[usize::from(status / 100).saturating_sub(1).min(4)], 1);
    }

    fn accept(&self, site: usize) {
        let Some(l) = self.listeners.get(site) else { return };
        loop {
            let (mut sock, peer) = match l.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(worker = self.worker, "accept failed: {e}");
                    return;
                }
            };
            add(&self.stats.accepted, 1);
            if self.stats.open.load(Ordering::Relaxed) as usize >= self.sites[site].limits.max_connections {
                add(&self.stats.overload, 1);
                self.count_status(503);
                let a = Answer::host(503, "this worker is at its connection limit; try again");
                let _ = sock.write(&answer_bytes(&a, "GET", 1, true));
                continue;
            }
            let _ = sock.set_nodelay(true);
            let now = Instant::now();
            let peer_text: std::rc::Rc<str> = peer.to_string().into();
            let peer_ip: std::rc::Rc<str> = peer.ip().to_string().into();
            let c = Client {
                sock,
                peer_text,
                peer_ip,
                site,
                inb: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                txn: None,
                spare: None,
                since: now,
                last_read: now,
                eof: false,
                close: false,
                minor: 1,
                keep_alive: true,
                linger: None,
                rx: Readable::NEW,
            };
            let idx = self.client_free.borrow_mut().pop().unwrap_or_else(|| {
                let mut cs = self.clients.borrow_mut();
                cs.push(None);
                cs.len() - 1
            });
            let mut c = c;
            let token = io::token(self.layer, CLIENT_BASE + idx);
            if self.registry.register(&mut c.sock, token, Interest::READABLE | Interest::WRITABLE).is_err() {
                self.client_free.borrow_mut().push(idx);
                continue;
            }
            self.clients.borrow_mut()[idx] = Some(c);
            add(&self.stats.open, 1);
        }
    }

    /// Drive client `idx` as far as it goes.
    fn drive(&self, core: &WorkerCore, idx: usize) {
        let Some(mut c) = self.clients.borrow_mut().get_mut(idx).and_then(Option::take) else { return };
        let keep = loop {
            match self.step(core, idx, &mut c) {
                Flow::Moved => continue,
                Flow::Wait => break true,
                Flow::Close => break false,
            }
        };
        if keep {
            self.clients.borrow_mut()[idx] = Some(c);
        } else {
            self.close_client(core, idx, c);
        }
    }

    fn close_client(&self, core: &WorkerCore, idx: usize, mut c: Client) {
        if let Some(mut t) = c.txn.take() {
            // The client left (or broke) mid-transaction.
            self.release_upstream(&mut t, false);
            t.stage = Stage::End;
            t.hook_pos = 0;
            self.end_hooks(core, &c, &mut t, true);
        }
        let _ = self.registry.deregister(&mut c.sock);
        let _ = c.sock.shutdown(Shutdown::Both);
        self.client_free.borrow_mut().push(idx);
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
        let site: &HttpSite = &self.sites[c.site];
        let mut moved = false;
        // Read the client when there is room: a head, or a body in transit.
        let cap = match c.txn.as_ref().map(|t| t.stage) {
            None => site.limits.max_head_bytes + 1,
            Some(Stage::Proxy | Stage::Connect) => BODY_BUF,
            Some(_) => 0,
        };
        if c.rx.rd && !c.eof && c.inb.len() < cap {
            match fill(&mut c.sock, &mut c.inb, cap, &mut self.scratch.borrow_mut()) {
                Ok(f) => {
                    if f.n > 0 {
                        moved = true;
                        c.last_read = Instant::now();
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
        match flush(&mut c.sock, &mut c.out, &mut c.out_pos) {
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
    fn refuse(&self, c: &mut Client, status: u16, why: &str) {
        tracing::debug!(worker = self.worker, peer = %c.peer_text, status, "refused: {why}");
        let text = why.split_once(": ").map_or(why, |(_, t)| t);
        c.out.extend_from_slice(&answer_bytes(&Answer::host(status, text), "GET", 1, true));
        self.count_status(status);
        c.close = true;
        c.inb.clear();
    }

    /// A request head arrived: make its transaction.
    fn begin(&self, core: &WorkerCore, c: &mut Client, site: &HttpSite, req: RequestHead) {
        add(&self.stats.requests, 1);
        c.since = Instant::now();
        c.minor = req.minor;
        c.keep_alive = req.keep_alive;
        let n = self.next_txn.get() + 1;
        self.next_txn.set(n);
        let id = (u64::from(self.worker) + 1) << 48 | n;
        let route = site.route_for(req.host.as_deref(), req.target.split('?').next().unwrap_or(""));
        // The previous transaction's box and buffers, when the connection kept them.
        let (spare, mut bufs) = match c.spare.take() {
            Some(mut old) => {
                let bufs = Buffers::take_from(&mut old);
                (Some(old), bufs)
            }
            None => (None, Buffers::default()),
        };
        bufs.conts.clear();
        bufs.head_copy.clear();
        bufs.up_out.clear();
        bufs.up_in.clear();
        let txn = Txn {
            data: TxnData {
                id,
                req,
                route: route.unwrap_or(0),
                group: None,
                answer: None,
                resp: None,
                upstream_addr: None,
            },
            conts: bufs.conts,
            stage: Stage::RequestHooks,
            hook_pos: 0,
            req_body: Framing::None,
            req_seen: 0,
            up: None,
            tried: 0,
            rr_start: 0,
            head_copy: bufs.head_copy,
            up_out: bufs.up_out,
            up_out_pos: 0,
            up_in: bufs.up_in,
            up_since: Instant::now(),
            resp_body: Framing::None,
            chunk_out: false,
            status: 0,
            sent_body: 0,
            up_reusable: false,
            fail_status: 502,
            reused: false,
            retried: false,
            sent: false,
        };
        let mut t = match spare {
            Some(mut b) => {
                *b = txn;
                b
            }
            None => Box::new(txn),
        };
        t.req_body = Framing::of(t.data.req.body);
        let answer = |t: &mut Txn, a: Answer| {
            t.data.answer = Some(a);
            t.stage = Stage::Answer;
        };
        let Some(route) = route else {
            answer(&mut t, Answer::host(404, &format!("no route of listener {} serves this host and path", site.name)));
            c.txn = Some(t);
            return;
        };
        if let Body::Length(n) = t.data.req.body
            && n > site.limits.max_body_bytes
        {
            let why = format!("the body of {n} bytes is over the limit of {}", site.limits.max_body_bytes);
            answer(&mut t, Answer::host(413, &why));
            c.txn = Some(t);
            return;
        }
        t.data.group = site.routes[route].upstream;
        // One continuation per module of the chain, of its active version
        // (spawn_host calls no module, so the cache stays borrowed).
        let mut generations = self.generations.borrow_mut();
        let generation = generations.get(core.runtime().registry());
        for name in &site.routes[route].modules {
            let entry = generation.and_then(|g| g.entries.iter().find(|e| &e.cfg.name == name));
            let Some(entry) = entry else {
                answer(
                    &mut t,
                    Answer::host(503, &format!("module {name} of route {} is not loaded", site.routes[route].name)),
                );
                break;
            };
            match core.spawn_host(&entry.version) {
                Ok(cont) => t.conts.push(Hooked {
                    cont,
                    name: name.as_str().into(),
                    policy: entry.cfg.failure_policy,
                    skip: false,
                }),
                Err((_, e)) => {
                    answer(&mut t, Answer::host(503, &format!("cannot start module {name} for this request: {e}")));
                    break;
                }
            }
        }
        c.txn = Some(t);
    }

    /// Call the current stage's hook on every module from `hook_pos`.
    /// false: a module version is held (state migration); call again later.
    fn hooks(&self, core: &WorkerCore, c: &Client, t: &mut Txn, kind: u32, args: (u64, u64)) -> bool {
        let site = &self.sites[c.site];
        while t.hook_pos < t.conts.len() {
            if t.data.answer.is_some() && (kind == MOLT_EV_HTTP_REQUEST || kind == MOLT_EV_HTTP_UPSTREAM) {
                break;
            }
            let pos = t.hook_pos;
            if t.conts[pos].skip {
                t.hook_pos += 1;
                continue;
            }
            let cont = t.conts[pos].cont;
            let id = t.data.id;
            let r = {
                let view = View { t: RefCell::new(&mut t.data), site, peer: &c.peer_text, kind };
                core.call_now(cont, kind, id, args, &[], Some(&view))
            };
            match r {
                CallNow::Done => {}
                CallNow::Held => {
                    add(&self.stats.held_hooks, 1);
                    return false;
                }
                CallNow::Stale => {
                    // Ended by force (its version's drain deadline passed).
                    t.conts[pos].skip = true;
                }
                CallNow::Failed(e) => {
                    add(&self.stats.hook_failures, 1);
                    let h = &mut t.conts[pos];
                    tracing::warn!(worker = self.worker, module = %h.name, hook = kind, "hook failed: {e}");
                    if e.panicked() && h.policy == FailurePolicy::Restart {
                        core.runtime().request_restart(&h.name);
                    }
                    if h.policy == FailurePolicy::FailOpen {
                        h.skip = true;
                    } else if kind == MOLT_EV_HTTP_REQUEST || kind == MOLT_EV_HTTP_UPSTREAM {
                        let why = format!("module {} failed at the request", h.name);
                        t.data.answer = Some(Answer::host(500, &why));
                    } else if kind == MOLT_EV_HTTP_RESPONSE && t.data.answer.is_none() {
                        // The upstream's response may not be sent as is.
                        t.data.resp = None;
                        t.data.answer = Some(Answer::host(500, &format!("module {} failed at the response", h.name)));
                        t.up_reusable = false;
                    }
                }
            }
            t.hook_pos += 1;
        }
        t.hook_pos = 0;
        true
    }

    /// TXN_END, then END for every continuation of the transaction.
    fn end_hooks(&self, core: &WorkerCore, c: &Client, t: &mut Txn, force: bool) -> bool {
        let args = (u64::from(t.status), t.sent_body);
        if !self.hooks(core, c, t, MOLT_EV_HTTP_TXN_END, args) && !force {
            return false;
        }
        for h in &t.conts {
            let _ = core.destroy(h.cont);
        }
        t.conts.clear();
        true
    }

    /// Advance the client's transaction.
    fn advance(&self, core: &WorkerCore, idx: usize, c: &mut Client, site: &HttpSite) -> Flow {
        let mut t = c.txn.take().expect("a transaction");
        let flow = self.advance_txn(core, idx, c, site, &mut t);
        if t.stage == Stage::End && t.conts.is_empty() {
            // Finished: the next request may come.
            self.count_status(t.status);
            let body_left = !t.req_body.done();
            if !c.keep_alive || body_left || c.eof {
                c.close = true;
            }
            c.since = Instant::now();
            if !c.close {
                // Keep the box and its buffers for the connection's next
                // request; not the answer or response held (they can be large).
                t.data.answer = None;
                t.data.resp = None;
                c.spare = Some(t);
            }
            return Flow::Moved;
        }
        c.txn = Some(t);
        flow
    }

    fn advance_txn(&self, core: &WorkerCore, idx: usize, c: &mut Client, site: &HttpSite, t: &mut Txn) -> Flow {
        let mut moved = false;
        loop {
            let before = t.stage;
            match t.stage {
                Stage::RequestHooks => {
                    if !self.hooks(core, c, t, MOLT_EV_HTTP_REQUEST, (0, 0)) {
                        self.retry.borrow_mut().push(idx);
                        return Flow::Wait;
                    }
                    t.stage = if t.data.answer.is_some() { Stage::Answer } else { Stage::UpstreamHook };
                }
                Stage::UpstreamHook => {
                    if !self.hooks(core, c, t, MOLT_EV_HTTP_UPSTREAM, (0, 0)) {
                        self.retry.borrow_mut().push(idx);
                        return Flow::Wait;
                    }
                    t.stage = if t.data.answer.is_some() { Stage::Answer } else { Stage::Connect };
                }
                Stage::Connect => self.connect(idx, c, site, t),
                Stage::Proxy => match self.proxy(c, site, t) {
                    Flow::Moved => moved = true,
                    Flow::Wait => {}
                    Flow::Close => return Flow::Close,
                },
                Stage::ResponseHooks => {
                    let by = t.data.answer.as_ref().map_or(0, |a| a.by);
                    let status = t.data.answer.as_ref().map(|a| a.status).or(t.data.resp.as_ref().map(|r| r.status));
                    if !self.hooks(core, c, t, MOLT_EV_HTTP_RESPONSE, (u64::from(status.unwrap_or(0)), by)) {
                        self.retry.borrow_mut().push(idx);
                        return Flow::Wait;
                    }
                    if t.data.answer.is_some() {
                        self.release_upstream(t, false);
                        self.write_answer(c, t);
                        t.stage = Stage::End;
                    } else {
                        self.write_response_head(c, t);
                        t.stage = Stage::Stream;
                    }
                }
                Stage::Stream => match self.stream(c, t) {
                    Flow::Moved => moved = true,
                    Flow::Wait => {}
                    Flow::Close => return Flow::Close,
                },
                Stage::Answer => {
                    if t.data.answer.as_ref().is_some_and(|a| a.by == 1) {
                        add(&self.stats.module_answers, 1);
                    }
                    t.stage = Stage::ResponseHooks;
                }
                Stage::End => {
                    // Reusable only if the exchange is complete both ways: an
                    // upstream that answered before the whole request body
                    // went out is in no known state.
                    let reusable = t.up_reusable && t.req_body.done() && t.up_out.is_empty();
                    self.release_upstream(t, reusable);
                    if !self.end_hooks(core, c, t, false) {
                        self.retry.borrow_mut().push(idx);
                        return Flow::Wait;
                    }
                    return Flow::Moved;
                }
            }
            if t.stage == before {
                return if moved { Flow::Moved } else { Flow::Wait };
            }
            moved = true;
        }
    }

    /// Choose an upstream server and a connection to it (pooled or new).
    fn connect(&self, idx: usize, c: &mut Client, site: &HttpSite, t: &mut Txn) {
        let Some(g) = t.data.group else {
            let why = format!("route {} has no upstream and no module answered", site.routes[t.data.route].name);
            t.data.answer = Some(Answer::host(502, &why));
            t.stage = Stage::Answer;
            return;
        };
        let servers = &site.groups[g].1;
        let n = servers.len();
        let now = Instant::now();
        if t.tried == 0 {
            let mut h = self.health.borrow_mut();
            let grp = &mut h[c.site][g];
            t.rr_start = grp.next;
            grp.next = (grp.next + 1) % n.max(1);
        }
        loop {
            if t.tried >= n {
                let (status, why) = if t.fail_status == 504 {
                    (504, format!("upstream group {} timed out", site.groups[g].0))
                } else {
                    (502, format!("no server of upstream group {} could be reached", site.groups[g].0))
                };
                t.data.answer = Some(Answer::host(status, &why));
                t.stage = Stage::Answer;
                return;
            }
            // Skip servers marked failed while an unmarked one is left.
            let healthy_left = {
                let h = self.health.borrow();
                (t.tried..n).any(|k| h[c.site][g].failed_until[(t.rr_start + k) % n].is_none_or(|u| u <= now))
            };
            let i = (t.rr_start + t.tried) % n;
            t.tried += 1;
            if healthy_left && self.health.borrow()[c.site][g].failed_until[i].is_some_and(|u| u > now) {
                continue;
            }
            let addr = servers[i];
            let (up, reused) = match self.pooled(addr) {
                Some(u) => (u, true),
                None => match TcpStream::connect(addr) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        add(&self.stats.upstream_connects, 1);
                        match self.new_up(s, addr, site.limits.pool_per_server) {
                            Some(u) => (u, false),
                            None => continue,
                        }
                    }
                    Err(_) => {
                        self.mark_failed(c.site, g, i, site);
                        continue;
                    }
                },
            };
            if reused {
                add(&self.stats.pool_reuses, 1);
            }
            if let Some(u) = self.ups.borrow_mut()[up].as_mut() {
                u.owner = Some(idx);
            }
            t.up = Some(up);
            t.reused = reused;
            t.data.upstream_addr = Some(addr);
            t.up_since = Instant::now();
            if t.head_copy.is_empty() {
                t.head_copy = request_bytes(&t.data.req, &c.peer_ip, addr);
            }
            t.up_out.clear();
            t.up_out_pos = 0;
            t.up_out.extend_from_slice(&t.head_copy);
            t.sent = false;
            if t.data.req.expect_continue && !t.req_body.done() && c.inb.is_empty() && t.req_seen == 0 {
                c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            t.stage = Stage::Proxy;
            return;
        }
    }

    fn mark_failed(&self, site_idx: usize, g: usize, i: usize, site: &HttpSite) {
        add(&self.stats.upstream_failures, 1);
        self.health.borrow_mut()[site_idx][g].failed_until[i] = Some(Instant::now() + site.limits.retry_after);
    }

    fn new_up(&self, mut sock: TcpStream, addr: SocketAddr, pool_cap: usize) -> Option<usize> {
        let idx = self.up_free.borrow_mut().pop().unwrap_or_else(|| {
            let mut u = self.ups.borrow_mut();
            u.push(None);
            u.len() - 1
        });
        let token = io::token(self.layer, UP_BASE + idx);
        if self.registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE).is_err() {
            self.up_free.borrow_mut().push(idx);
            return None;
        }
        self.ups.borrow_mut()[idx] = Some(Up {
            sock,
            addr,
            connected: false,
            owner: None,
            idle_since: Instant::now(),
            rx: Readable::NEW,
            eof: false,
            pool_cap,
        });
        Some(idx)
    }

    /// An idle pooled connection to `addr` that is still open.
    fn pooled(&self, addr: SocketAddr) -> Option<usize> {
        loop {
            let idx = self.pool.borrow_mut().get_mut(&addr)?.pop()?;
            let mut ups = self.ups.borrow_mut();
            // An idle connection gets a readiness event when the server
            // closes it (up_ready closes it then); one whose event is not
            // handled yet is checked here.
            let alive = match ups[idx].as_mut() {
                Some(u) if u.rx.hup || u.eof => false,
                Some(u) if u.rx.rd => {
                    let mut b = [0u8; 1];
                    u.rx.rd = false;
                    matches!(u.sock.read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
                }
                Some(_) => true,
                None => false,
            };
            drop(ups);
            if alive {
                return Some(idx);
            }
            self.close_up(idx);
        }
    }

    fn close_up(&self, idx: usize) {
        if let Some(mut u) = self.ups.borrow_mut()[idx].take() {
            let _ = self.registry.deregister(&mut u.sock);
            self.up_free.borrow_mut().push(idx);
        }
    }

    /// Read an upstream connection into `buf` (up to `cap`) when its
    /// readiness says there may be something, keeping its flags.
    fn read_up(&self, u: &mut Up, buf: &mut Vec<u8>, cap: usize) -> std::io::Result<Filled> {
        if !u.rx.rd || u.eof {
            return Ok(Filled { n: 0, eof: false, drained: true });
        }
        let r = fill(&mut u.sock, buf, cap, &mut self.scratch.borrow_mut());
        if let Ok(f) = &r {
            u.rx.after(f);
            u.eof |= f.eof;
        }
        r
    }

    /// Detach the transaction's upstream connection: back to the pool when
    /// `reusable`, else closed.
    fn release_upstream(&self, t: &mut Txn, reusable: bool) {
        let Some(idx) = t.up.take() else { return };
        let mut ups = self.ups.borrow_mut();
        let Some(u) = ups[idx].as_mut() else { return };
        let site_pool = u.pool_cap;
        u.owner = None;
        let addr = u.addr;
        let mut pool = self.pool.borrow_mut();
        let list = pool.entry(addr).or_default();
        if reusable && u.connected && list.len() < site_pool {
            u.idle_since = Instant::now();
            list.push(idx);
        } else {
            drop(pool);
            drop(ups);
            self.close_up(idx);
        }
    }

    /// The upstream failed before its response began: another server (or
    /// a fresh connection) when the request can be sent again, else an error.
    fn upstream_failed(&self, c: &mut Client, site: &HttpSite, t: &mut Txn, timeout: bool) {
        // A pooled connection the server closed as we reused it: once, the
        // same server on a fresh connection (the keep-alive race).
        let reused = t.reused && !t.retried && t.up_in.is_empty();
        let g = t.data.group.unwrap_or(0);
        if let (Some(addr), false) = (t.data.upstream_addr, reused) {
            if let Some(i) = site.groups[g].1.iter().position(|a| *a == addr) {
                self.mark_failed(c.site, g, i, site);
            }
        }
        self.release_upstream(t, false);
        t.fail_status = if timeout { 504 } else { 502 };
        // The request can be sent again only while none of its body was consumed.
        let replayable = t.req_seen == 0 && !matches!(t.req_body, Framing::Chunked(ref d) if d.total > 0);
        if replayable && !timeout {
            if reused {
                t.tried = t.tried.saturating_sub(1);
                t.retried = true;
            }
            t.stage = Stage::Connect;
        } else {
            let why = if timeout { "the upstream did not answer in time" } else { "the upstream connection failed" };
            t.data.answer = Some(Answer::host(t.fail_status, why));
            t.stage = Stage::Answer;
        }
    }

    /// Request out, response head in.
    fn proxy(&self, c: &mut Client, site: &HttpSite, t: &mut Txn) -> Flow {
        let up = t.up.expect("an upstream in Proxy");
        let mut moved = false;
        // Body from the client to the upstream buffer.
        if !t.req_body.done() && t.up_out.len() < BODY_BUF && !c.inb.is_empty() {
            let chunk = matches!(t.req_body, Framing::Chunked(_));
            match transfer(&mut t.req_body, &mut c.inb, &mut t.up_out, chunk) {
                Ok(k) => {
                    t.req_seen += k;
                    moved |= k > 0;
                }
                Err(e) => {
                    self.release_upstream(t, false);
                    t.data.answer = Some(Answer::host(400, &e));
                    t.stage = Stage::Answer;
                    c.close = true;
                    return Flow::Moved;
                }
            }
            if let Framing::Chunked(d) = &t.req_body {
                t.req_seen = d.total;
                if d.is_done() {
                    chunked::encode_end(&mut t.up_out);
                }
            }
            if t.req_seen > site.limits.max_body_bytes {
                self.release_upstream(t, false);
                t.data.answer = Some(Answer::host(413, "the request body is over the limit"));
                t.stage = Stage::Answer;
                c.close = true;
                return Flow::Moved;
            }
        }
        let mut ups = self.ups.borrow_mut();
        let Some(u) = ups[up].as_mut() else {
            drop(ups);
            self.upstream_failed(c, site, t, false);
            return Flow::Moved;
        };
        if !u.connected {
            match u.sock.take_error() {
                Ok(None) => {}
                _ => {
                    drop(ups);
                    self.upstream_failed(c, site, t, false);
                    return Flow::Moved;
                }
            }
            match u.sock.peer_addr() {
                Ok(_) => u.connected = true,
                Err(e) if e.kind() == ErrorKind::NotConnected => return Flow::Wait,
                Err(_) => {
                    drop(ups);
                    self.upstream_failed(c, site, t, false);
                    return Flow::Moved;
                }
            }
        }
        let wrote = flush(&mut u.sock, &mut t.up_out, &mut t.up_out_pos);
        if !t.sent && wrote.is_ok() && t.up_out.is_empty() && t.req_body.done() {
            // The whole request is out: the upstream's time to answer starts.
            t.sent = true;
            t.up_since = Instant::now();
        }
        // Read even after a failed write: the upstream may have answered early.
        let r = self.read_up(u, &mut t.up_in, site.limits.max_head_bytes + BODY_BUF);
        let up_eof = u.eof;
        drop(ups);
        match wrote {
            Ok(n) => moved |= n > 0,
            Err(_) if t.up_in.is_empty() => {
                self.upstream_failed(c, site, t, false);
                return Flow::Moved;
            }
            Err(_) => {}
        }
        let eof = match r {
            Ok(f) => {
                if f.n > 0 {
                    moved = true;
                    t.up_since = Instant::now();
                }
                up_eof
            }
            Err(_) => true,
        };
        // The response head.
        loop {
            if t.up_in.is_empty() {
                break;
            }
            let limits =
                head::Limits { max_head_bytes: site.limits.max_head_bytes, max_headers: site.limits.max_headers };
            match head::parse_response(&t.up_in, &limits, &t.data.req.method) {
                Ok(None) => break,
                Ok(Some((h, n))) => {
                    t.up_in.drain(..n);
                    if (100..200).contains(&h.status) {
                        continue; // interim responses are ours to send (100 Continue), not the upstream's
                    }
                    t.resp_body = Framing::of(h.body);
                    t.up_reusable = h.keep_alive && !matches!(h.body, Body::UntilClose);
                    t.data.resp = Some(h);
                    t.stage = Stage::ResponseHooks;
                    return Flow::Moved;
                }
                Err(e) => {
                    self.release_upstream(t, false);
                    tracing::debug!(worker = self.worker, "upstream response refused: {e}");
                    t.data.answer = Some(Answer::host(502, "the upstream's response was malformed"));
                    t.stage = Stage::Answer;
                    return Flow::Moved;
                }
            }
        }
        if eof {
            self.upstream_failed(c, site, t, false);
            return Flow::Moved;
        }
        if moved { Flow::Moved } else { Flow::Wait }
    }

    fn write_response_head(&self, c: &mut Client, t: &mut Txn) {
        let r = t.data.resp.as_ref().expect("a response");
        t.status = r.status;
        let head_req = t.data.req.method.eq_ignore_ascii_case("HEAD");
        let mut out = Vec::with_capacity(256);
        let reason = if r.reason.is_empty() { reason(r.status) } else { r.reason.as_str() };
        let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", r.status);
        let hop = head::HopByHop::of(&r.headers);
        for h in &r.headers {
            if hop.contains(&h.name) {
                continue;
            }
            if h.name.eq_ignore_ascii_case("content-length") && !head_req {
                continue;
            }
            put_header(&mut out, &h.name, &h.value);
        }
        match &t.resp_body {
            Framing::Length(n) => put_length(&mut out, *n),
            Framing::Chunked(_) | Framing::UntilClose if c.minor == 1 => {
                t.chunk_out = true;
                put_header(&mut out, "Transfer-Encoding", b"chunked");
            }
            Framing::Chunked(_) | Framing::UntilClose => c.keep_alive = false,
            Framing::None => {
                if !head_req && r.status != 204 && r.status != 304 {
                    put_header(&mut out, "Content-Length", b"0");
                }
            }
        }
        if !c.keep_alive || !t.req_body.done() {
            put_header(&mut out, "Connection", b"close");
        } else if c.minor == 0 {
            put_header(&mut out, "Connection", b"keep-alive");
        }
        out.extend_from_slice(b"\r\n");
        c.out.extend_from_slice(&out);
    }

    fn write_answer(&self, c: &mut Client, t: &mut Txn) {
        let a = t.data.answer.as_ref().expect("an answer");
        t.status = a.status;
        t.sent_body = a.body.len() as u64;
        let close = !c.keep_alive || !t.req_body.done() || a.by == 2 && a.status >= 400 && a.status != 404;
        if close {
            c.keep_alive = false;
        }
        c.out.extend_from_slice(&answer_bytes(a, &t.data.req.method, c.minor, close));
    }

    /// Response body out.
    fn stream(&self, c: &mut Client, t: &mut Txn) -> Flow {
        let mut moved = false;
        if c.out.len() - c.out_pos < BODY_BUF && !t.up_in.is_empty() {
            match transfer(&mut t.resp_body, &mut t.up_in, &mut c.out, t.chunk_out) {
                Ok(k) => {
                    t.sent_body += k;
                    moved |= k > 0;
                }
                Err(e) => {
                    tracing::debug!(worker = self.worker, "upstream body refused: {e}");
                    return Flow::Close;
                }
            }
        }
        if t.resp_body.done() {
            if t.chunk_out {
                chunked::encode_end(&mut c.out);
            }
            t.up_reusable &= t.up_in.is_empty();
            t.stage = Stage::End;
            return Flow::Moved;
        }
        let Some(up) = t.up else { return Flow::Close };
        let mut ups = self.ups.borrow_mut();
        let Some(u) = ups[up].as_mut() else { return Flow::Close };
        let r = self.read_up(u, &mut t.up_in, BODY_BUF);
        let eof = u.eof;
        drop(ups);
        match r {
            Ok(Filled { n, .. }) => {
                if n > 0 {
                    moved = true;
                    t.up_since = Instant::now();
                }
                if eof && t.up_in.is_empty() {
                    if matches!(t.resp_body, Framing::UntilClose) {
                        if t.chunk_out {
                            chunked::encode_end(&mut c.out);
                        }
                        t.up_reusable = false;
                        t.stage = Stage::End;
                        return Flow::Moved;
                    }
                    // Cut short: the client cannot be told but by closing.
                    return Flow::Close;
                }
            }
            Err(_) => return Flow::Close,
        }
        if moved { Flow::Moved } else { Flow::Wait }
    }

    /// Timeouts of one client (and its transaction); whether it is to close.
    fn expire(&self, core: &WorkerCore, idx: usize, now: Instant) {
        let Some(mut c) = self.clients.borrow_mut().get_mut(idx).and_then(Option::take) else { return };
        let site: &HttpSite = &self.sites[c.site];
        let l = &site.limits;
        let mut close = false;
        let mut drive = false;
        match c.txn.as_mut() {
            _ if c.linger.is_some() => close = c.linger.is_some_and(|t| now > t),
            None if c.inb.is_empty() => close = now.duration_since(c.since) > l.keepalive_timeout,
            None => {
                if now.duration_since(c.since) > l.request_timeout && !c.close {
                    self.refuse(&mut c, 408, "the request head did not arrive in time");
                    drive = true;
                }
            }
            Some(t) => match t.stage {
                Stage::Proxy => {
                    let connecting = t.up.is_some_and(|u| self.ups.borrow()[u].as_ref().is_some_and(|u| !u.connected));
                    if connecting && now.duration_since(t.up_since) > l.connect_timeout {
                        t.fail_status = 504;
                        let g = t.data.group.unwrap_or(0);
                        if let Some(i) =
                            t.data.upstream_addr.and_then(|a| site.groups[g].1.iter().position(|x| *x == a))
                        {
                            self.mark_failed(c.site, g, i, site);
                        }
                        self.release_upstream(t, false);
                        t.stage = Stage::Connect;
                        drive = true;
                    } else if !t.req_body.done() && now.duration_since(c.last_read) > l.request_timeout {
                        self.release_upstream(t, false);
                        t.data.answer = Some(Answer::host(408, "the request body stalled"));
                        t.stage = Stage::Answer;
                        c.close = true;
                        drive = true;
                    } else if t.sent && now.duration_since(t.up_since) > l.upstream_timeout {
                        let mut tt = c.txn.take().expect("txn");
                        self.upstream_failed(&mut c, site, &mut tt, true);
                        c.txn = Some(tt);
                        drive = true;
                    }
                }
                Stage::Stream => close = now.duration_since(t.up_since) > l.upstream_timeout,
                _ => {}
            },
        }
        if close {
            self.close_client(core, idx, c);
            return;
        }
        self.clients.borrow_mut()[idx] = Some(c);
        if drive {
            self.drive(core, idx);
        }
    }

    fn sweep(&self, core: &WorkerCore, now: Instant) {
        let n = self.clients.borrow().len();
        for idx in 0..n {
            if self.clients.borrow()[idx].is_some() {
                self.expire(core, idx, now);
            }
        }
        // Idle pooled connections past the keep-alive timeout.
        let keep = self.sites.iter().map(|s| s.limits.keepalive_timeout).min().unwrap_or_default();
        let stale: Vec<usize> = {
            let mut pool = self.pool.borrow_mut();
            let ups = self.ups.borrow();
            let mut out = Vec::new();
            for list in pool.values_mut() {
                list.retain(|&i| {
                    let old = ups[i].as_ref().is_none_or(|u| now.duration_since(u.idle_since) > keep);
                    if old {
                        out.push(i);
                    }
                    !old
                });
            }
            out
        };
        for i in stale {
            self.close_up(i);
        }
    }

    /// Readiness of an upstream connection.
    fn up_ready(&self, core: &WorkerCore, idx: usize) {
        let owner = match self.ups.borrow().get(idx).and_then(Option::as_ref) {
            Some(u) => u.owner,
            None => return,
        };
        match owner {
            Some(c) => self.drive(core, c),
            None => {
                // Idle in the pool: the server closed it (or sent what it should not).
                let mut ups = self.ups.borrow_mut();
                let gone = match ups[idx].as_mut() {
                    Some(u) if u.rx.rd => {
                        let mut b = [0u8; 1];
                        u.rx.rd = false;
                        !matches!(u.sock.read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
                    }
                    _ => false,
                };
                drop(ups);
                if gone {
                    for list in self.pool.borrow_mut().values_mut() {
                        list.retain(|&i| i != idx);
                    }
                    self.close_up(idx);
                }
            }
        }
    }
}

/// `Content-Length: n` without formatting through a String.
fn put_length(out: &mut Vec<u8>, n: u64) {
    let _ = write!(out, "Content-Length: {n}\r\n");
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The request head sent upstream: hop-by-hop fields dropped, framing ours,
/// the client added to X-Forwarded-For.
fn request_bytes(req: &RequestHead, peer_ip: &str, upstream: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let hop = head::HopByHop::of(&req.headers);
    let xff = |n: &str| n.eq_ignore_ascii_case("x-forwarded-for");
    for h in &req.headers {
        let n = h.name.as_str();
        if hop.contains(n) || n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("expect") || xff(n) {
            continue;
        }
        put_header(&mut out, n, &h.value);
    }
    // The client's X-Forwarded-For values, in order, then the client.
    out.extend_from_slice(b"X-Forwarded-For: ");
    for h in req.headers.iter().filter(|h| xff(&h.name)) {
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    if req.host.is_none() {
        // An HTTP/1.0 request may come without Host; HTTP/1.1 upstream needs one.
        put_header(&mut out, "Host", upstream.to_string().as_bytes());
    }
    match req.body {
        Body::Length(n) => put_length(&mut out, n),
        Body::Chunked => put_header(&mut out, "Transfer-Encoding", b"chunked"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A whole answer: head and body.
fn answer_bytes(a: &Answer, method: &str, minor: u8, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + a.body.len());
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", a.status, reason(a.status));
    for h in &a.headers {
        put_header(&mut out, &h.name, &h.value);
    }
    put_length(&mut out, a.body.len() as u64);
    if close {
        put_header(&mut out, "Connection", b"close");
    } else if minor == 0 {
        put_header(&mut out, "Connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    if !method.eq_ignore_ascii_case("HEAD") {
        out.extend_from_slice(&a.body);
    }
    out
}

impl io::Io for HttpLayer {
    fn ready(&self, core: &WorkerCore, token: usize, ready: io::Readiness) {
        if token < CLIENT_BASE {
            self.accept(token);
        } else if token < UP_BASE {
            let idx = token - CLIENT_BASE;
            if let Some(c) = self.clients.borrow_mut().get_mut(idx).and_then(Option::as_mut) {
                c.rx.on_ready(ready);
            }
            self.drive(core, idx);
        } else {
            let idx = token - UP_BASE;
            if let Some(u) = self.ups.borrow_mut().get_mut(idx).and_then(Option::as_mut) {
                u.rx.on_ready(ready);
            }
            self.up_ready(core, idx);
        }
    }

    fn tick(&self, core: &WorkerCore, now: Instant) -> bool {
        self.generations.borrow_mut().release_stale(core.runtime().registry());
        if now.duration_since(self.last_sweep.get()) >= std::time::Duration::from_millis(20) {
            self.last_sweep.set(now);
            self.sweep(core, now);
        }
        false
    }

    fn unheld(&self, core: &WorkerCore) {
        let retry = std::mem::take(&mut *self.retry.borrow_mut());
        for idx in retry {
            self.drive(core, idx);
        }
    }

    fn tick_every(&self) -> std::time::Duration {
        std::time::Duration::from_millis(20)
    }
}
