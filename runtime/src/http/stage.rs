//! A transaction's stages. Each stage variant carries the data only it
//! has, so an upstream "in Proxy" cannot be missing and a new attempt
//! starts from a fresh [`Attempt`], never from the last one's buffers:
//!
//! ```text
//! Request (REQUEST hooks) -> Upstream (UPSTREAM hooks) -> Connect
//!   -> Proxy(attempt: request out, response head in)
//!        \-> failed, and the retry policy allows: Connect (a new attempt)
//!   -> Respond(Some(attempt): RESPONSE hooks) -> Stream(attempt: body out) -> End
//!   \-> (a module or the host answered) Respond(None) -> End
//! End: TXN_END hooks, END for every continuation; the next request may come.
//! ```

use std::time::Instant;

use molt_abi::ffi::*;

use super::body::{Framing, transfer};
use super::chunked;
use super::client::Client;
use super::head::{self, RequestHead};
use super::hooks::{Chain, Hooked, IsoState, Ran};
use super::layer::{BODY_BUF, Flow, HttpLayer, add};
use super::site::HttpSite;
use super::txn::{Answer, TxnData};
use super::upstream::{Got, may_resend};
use super::wire;
use crate::net::balance::Walk;
use crate::worker::WorkerCore;

/// The largest buffer a finished transaction keeps for the next one.
const KEEP_BUF: usize = 16 * 1024;

/// One request and its response.
pub(super) struct Txn {
    /// What hooks see and change.
    pub data: TxnData,
    pub chain: Chain,
    pub stage: Stage,
    /// The request body still to come from the client.
    req_body: Framing,
    /// Request body payload bytes taken from the client so far.
    req_seen: u64,
    /// The status sent and the body bytes sent (for TXN_END).
    status: u16,
    sent_body: u64,
    /// The walk over the upstream group, once one was chosen.
    walk: Option<Walk>,
    /// The same server was tried again on a fresh connection (the keep-alive race).
    same_again: bool,
    /// Why the last attempt failed.
    last_failure: Failure,
    /// `100 Continue` went to the client.
    continued: bool,
    /// Buffers of a finished or failed attempt, cleared for the next one.
    spare: Bufs,
}

/// Where a transaction is.
pub(super) enum Stage {
    /// The REQUEST hooks.
    Request,
    /// The UPSTREAM hooks.
    Upstream,
    /// Choose a server and a connection.
    Connect,
    /// Request out, response head in, over one attempt.
    Proxy(Attempt),
    /// The RESPONSE hooks, over the upstream's response (its attempt kept
    /// for the body) or over an answer made here (`None`).
    Respond(Option<Attempt>),
    /// The response body out.
    Stream(Attempt),
    /// TXN_END and END.
    End,
}

impl Stage {
    /// Whether the client's request body is being read in this stage.
    pub fn reads_request_body(&self) -> bool {
        matches!(self, Stage::Connect | Stage::Proxy(_))
    }
}

/// Why an attempt failed, for the retry and for the words of a 502 or 504.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    None,
    /// The connect failed.
    Refused,
    /// The connect took longer than `connect_timeout`.
    ConnectTimeout,
    /// The connection closed or broke before any response byte.
    Closed,
    /// The connection closed in the middle of the response head.
    PartialHead,
    /// No response within `upstream_timeout`.
    Timeout,
}

/// Two byte buffers, recycled between attempts and transactions but always
/// handed out cleared.
#[derive(Default)]
struct Bufs {
    out: Vec<u8>,
    inb: Vec<u8>,
}

impl Bufs {
    fn cleared(mut self) -> Bufs {
        self.out.clear();
        self.inb.clear();
        self
    }

    /// Keep only buffers small enough to sit on an idle connection.
    fn trimmed(self) -> Bufs {
        let keep = |v: Vec<u8>| if v.capacity() <= KEEP_BUF { v } else { Vec::new() };
        Bufs { out: keep(self.out), inb: keep(self.inb) }.cleared()
    }
}

/// One attempt at a server: its connection and everything read or written on it.
pub(super) struct Attempt {
    up: usize,
    /// Its server's index in the group.
    server: usize,
    /// The connection came from the pool.
    reused: bool,
    /// Request bytes not yet written.
    out: Vec<u8>,
    out_pos: usize,
    /// Response bytes read and not yet passed on.
    inb: Vec<u8>,
    /// The start of the connect, then the last progress of the exchange.
    since: Instant,
    /// Some byte of the request was written to the upstream.
    wrote: bool,
    /// The whole request was written (the upstream timeout runs from then).
    sent: bool,
    resp_body: Framing,
    chunk_out: bool,
    /// The connection may go back to the pool when the exchange completes.
    reusable: bool,
}

impl Attempt {
    fn into_bufs(self) -> Bufs {
        Bufs { out: self.out, inb: self.inb }
    }
}

impl HttpLayer {
    /// A request head arrived: make its transaction.
    pub(super) fn begin(&self, core: &WorkerCore, c: &mut Client, site: &HttpSite, req: RequestHead) {
        add(&self.stats.requests, 1);
        c.head_since = None;
        c.minor = req.minor;
        // Winding down, every answer closes its connection.
        c.keep_alive = req.keep_alive && !self.winding_down();
        let n = self.next_txn.get() + 1;
        self.next_txn.set(n);
        let id = (u64::from(self.worker) + 1) << 48 | n;
        let path = if req.target == "*" { "/" } else { req.target.split('?').next().unwrap_or("") };
        let route = site.route_for(req.host.as_deref(), path);
        // The previous transaction's box and buffers, when the connection kept them.
        let (spare_box, conts, bufs) = match c.spare.take() {
            Some(mut old) => {
                let conts = std::mem::take(&mut old.chain.conts);
                let bufs = std::mem::take(&mut old.spare);
                (Some(old), conts, bufs)
            }
            None => (None, Vec::new(), Bufs::default()),
        };
        let req_body = Framing::of(req.body);
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
            chain: Chain::recycled(conts),
            stage: Stage::Request,
            req_body,
            req_seen: 0,
            status: 0,
            sent_body: 0,
            walk: None,
            same_again: false,
            last_failure: Failure::None,
            continued: false,
            spare: bufs.cleared(),
        };
        let mut t = match spare_box {
            Some(mut b) => {
                *b = txn;
                b
            }
            None => Box::new(txn),
        };
        let Some(route) = route else {
            let why = format!("no route of listener {} serves this host and path", site.name);
            answer(&mut t, Answer::host(404, &why));
            c.txn = Some(t);
            return;
        };
        if let head::Body::Length(n) = t.data.req.body
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
        let generation = generations.get(core.fleet().registry());
        for (module, name) in site.routes[route].modules.iter().enumerate() {
            let entry = generation.and_then(|g| g.entries.iter().find(|e| &e.cfg.name == name));
            if let Some(slot) = entry.is_none().then(|| self.iso.index(name)).flatten() {
                // Its hooks go to its child process (this one's, for the
                // whole transaction, whatever a swap does meanwhile).
                self.iso.begun(slot);
                t.chain.conts.push(Hooked {
                    cont: 0,
                    iso: Some(slot),
                    iso_state: IsoState::Idle,
                    module,
                    policy: self.iso.policy(slot),
                    hooks: self.iso.hooks(slot),
                    skip: false,
                });
                continue;
            }
            let Some(entry) = entry else {
                let why = format!("module {name} of route {} is not loaded", site.routes[route].name);
                answer(&mut t, Answer::host(503, &why));
                break;
            };
            match core.spawn_host(&entry.version) {
                Ok(cont) => t.chain.conts.push(Hooked {
                    cont,
                    iso: None,
                    iso_state: IsoState::Idle,
                    module,
                    policy: entry.cfg.failure_policy,
                    hooks: entry.version.meta().http_hooks,
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

    /// Advance the client's transaction.
    pub(super) fn advance(&self, core: &WorkerCore, idx: usize, c: &mut Client, site: &HttpSite) -> Flow {
        let mut t = c.txn.take().expect("a transaction");
        let flow = self.advance_txn(core, idx, c, site, &mut t);
        if let Flow::Close = flow {
            // The client is closed with its transaction, which ends then.
            c.txn = Some(t);
            return Flow::Close;
        }
        if matches!(t.stage, Stage::End) && t.chain.ended() {
            // Finished: the next request may come.
            self.count_status(t.status);
            if !c.keep_alive || !t.req_body.done() || c.eof {
                c.close = true;
            }
            c.finished(Instant::now());
            if !c.close {
                // Keep the box and its buffers for the connection's next
                // request; not the answer or response held (they can be large).
                t.data.answer = None;
                t.data.resp = None;
                t.spare = std::mem::take(&mut t.spare).trimmed();
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
            let stage = std::mem::replace(&mut t.stage, Stage::End);
            let before = std::mem::discriminant(&stage);
            let (next, flow) = match stage {
                Stage::Request | Stage::Upstream => {
                    let upstream_hook = matches!(stage, Stage::Upstream);
                    let kind = if upstream_hook { MOLT_EV_HTTP_UPSTREAM } else { MOLT_EV_HTTP_REQUEST };
                    match t.chain.call(&self.caller(core, idx, c, site), &mut t.data, kind, (0, 0)) {
                        Ran::Done => {}
                        waiting => {
                            if waiting == Ran::Held {
                                self.held.borrow_mut().push(idx);
                            }
                            t.stage = stage;
                            return Flow::Wait;
                        }
                    }
                    if let Some(a) = &t.data.answer {
                        if a.by == 1 {
                            add(&self.stats.module_answers, 1);
                        }
                        (Stage::Respond(None), Flow::Moved)
                    } else if upstream_hook {
                        (Stage::Connect, Flow::Moved)
                    } else {
                        (Stage::Upstream, Flow::Moved)
                    }
                }
                Stage::Connect => (self.connect(idx, c, site, t), Flow::Moved),
                Stage::Proxy(a) => self.proxy(c, site, t, a),
                Stage::Respond(a) => {
                    let by = t.data.answer.as_ref().map_or(0, |a| a.by);
                    let status = t.data.answer.as_ref().map(|a| a.status).or(t.data.resp.as_ref().map(|r| r.status));
                    let args = (u64::from(status.unwrap_or(0)), by);
                    match t.chain.call(&self.caller(core, idx, c, site), &mut t.data, MOLT_EV_HTTP_RESPONSE, args) {
                        Ran::Done => {}
                        waiting => {
                            if waiting == Ran::Held {
                                self.held.borrow_mut().push(idx);
                            }
                            t.stage = Stage::Respond(a);
                            return Flow::Wait;
                        }
                    }
                    match a {
                        Some(a) if t.data.answer.is_none() => (self.respond(c, t, a), Flow::Moved),
                        a => {
                            if let Some(a) = a {
                                self.drop_attempt(t, a, false);
                            }
                            self.write_answer(c, t);
                            (Stage::End, Flow::Moved)
                        }
                    }
                }
                Stage::Stream(a) => self.stream(c, t, a),
                Stage::End => {
                    let args = (u64::from(t.status), t.sent_body);
                    match t.chain.end(&self.caller(core, idx, c, site), &mut t.data, args, false) {
                        Ran::Done => {}
                        waiting => {
                            if waiting == Ran::Held {
                                self.held.borrow_mut().push(idx);
                            }
                            return Flow::Wait;
                        }
                    }
                    return Flow::Moved;
                }
            };
            let changed = std::mem::discriminant(&next) != before;
            t.stage = next;
            match flow {
                Flow::Close => return Flow::Close,
                Flow::Wait => return if moved { Flow::Moved } else { Flow::Wait },
                Flow::Moved => moved = true,
            }
            if !changed {
                // Progress within one stage: the caller reads and writes, then comes back.
                return Flow::Moved;
            }
        }
    }
}

/// Record a host or module answer: the RESPONSE hooks see it next.
fn answer(t: &mut Txn, a: Answer) {
    t.data.answer = Some(a);
    t.stage = Stage::Respond(None);
}

impl HttpLayer {
    /// Choose a server and a connection to it (pooled or new).
    fn connect(&self, idx: usize, c: &mut Client, site: &HttpSite, t: &mut Txn) -> Stage {
        let Some(g) = t.data.group else {
            let why = format!("route {} has no upstream and no module answered", site.routes[t.data.route].name);
            t.data.answer = Some(Answer::host(502, &why));
            return Stage::Respond(None);
        };
        let (group, servers) = (&site.groups[g].0, &site.groups[g].1);
        let now = Instant::now();
        let mut walk = t.walk.take().unwrap_or_else(|| self.ups.walk(c.site, g));
        loop {
            let Some(i) = self.ups.pick(c.site, g, &mut walk, now) else {
                t.walk = Some(walk);
                let (status, why) = match t.last_failure {
                    Failure::Timeout => (504, format!("upstream group {group} did not answer in time")),
                    Failure::ConnectTimeout => (504, format!("no server of upstream group {group} accepted in time")),
                    Failure::Closed => (502, format!("the upstream of group {group} closed the connection unanswered")),
                    Failure::PartialHead => {
                        (502, format!("the upstream of group {group} closed the connection in its response head"))
                    }
                    Failure::Refused | Failure::None => {
                        (502, format!("no server of upstream group {group} could be reached"))
                    }
                };
                t.data.answer = Some(Answer::host(status, &why));
                return Stage::Respond(None);
            };
            let addr = servers[i];
            let (up, reused) = match self.ups.get(addr, idx, site.limits.pool_per_server) {
                Got::Conn(up, reused) => (up, reused),
                Got::Refused => {
                    add(&self.stats.upstream_failures, 1);
                    self.ups.mark_failed(c.site, g, i, now + site.limits.retry_after);
                    t.last_failure = Failure::Refused;
                    continue;
                }
            };
            add(if reused { &self.stats.pool_reuses } else { &self.stats.upstream_connects }, 1);
            t.walk = Some(walk);
            t.data.upstream_addr = Some(addr);
            let mut bufs = std::mem::take(&mut t.spare).cleared();
            wire::request_head(&t.data.req, &c.peer_ip, addr, &mut bufs.out);
            let r = &t.data.req;
            if r.expect_continue && r.minor == 1 && !t.req_body.done() && c.inb.is_empty() && !t.continued {
                c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                t.continued = true;
            }
            return Stage::Proxy(Attempt {
                up,
                server: i,
                reused,
                out: bufs.out,
                out_pos: 0,
                inb: bufs.inb,
                since: Instant::now(),
                wrote: false,
                sent: false,
                resp_body: Framing::None,
                chunk_out: false,
                reusable: false,
            });
        }
    }

    /// End an attempt: its connection back to the pool (when `reusable`)
    /// or closed, its buffers kept (cleared) for the next one.
    fn drop_attempt(&self, t: &mut Txn, a: Attempt, reusable: bool) {
        self.ups.release(a.up, reusable);
        t.spare = a.into_bufs().cleared();
    }

    /// Request out, response head in.
    fn proxy(&self, c: &mut Client, site: &HttpSite, t: &mut Txn, mut a: Attempt) -> (Stage, Flow) {
        let mut moved = false;
        match self.ups.connected(a.up) {
            Ok(true) => {}
            Ok(false) => return (Stage::Proxy(a), Flow::Wait),
            Err(()) => return (self.attempt_failed(c, site, t, a, Failure::Refused), Flow::Moved),
        }
        // Body from the client to the upstream, once connected (a connect
        // that fails has then consumed nothing, and any request may go to
        // the next server).
        if !t.req_body.done() && a.out.len() < BODY_BUF && !c.inb.is_empty() {
            let chunk = matches!(t.req_body, Framing::Chunked(_));
            match transfer(&mut t.req_body, &mut c.inb, &mut a.out, chunk) {
                Ok(k) => {
                    t.req_seen += k;
                    moved |= k > 0;
                }
                Err(e) => {
                    self.drop_attempt(t, a, false);
                    t.data.answer = Some(Answer::host(400, &e));
                    c.close = true;
                    return (Stage::Respond(None), Flow::Moved);
                }
            }
            if let Framing::Chunked(d) = &t.req_body {
                t.req_seen = d.total;
                if d.is_done() {
                    chunked::encode_end(&mut a.out);
                }
            }
            if t.req_seen > site.limits.max_body_bytes {
                self.drop_attempt(t, a, false);
                t.data.answer = Some(Answer::host(413, "the request body is over the limit"));
                c.close = true;
                return (Stage::Respond(None), Flow::Moved);
            }
        }
        // A client that left before its request was whole cannot finish it.
        if c.eof && c.inb.is_empty() && !t.req_body.done() {
            add(&self.stats.client_aborts, 1);
            self.drop_attempt(t, a, false);
            return (Stage::End, Flow::Close);
        }
        let wrote = self.ups.write(a.up, &mut a.out, &mut a.out_pos);
        if let Ok(n) = wrote {
            a.wrote |= n > 0;
            moved |= n > 0;
            if !a.sent && a.out.is_empty() && t.req_body.done() {
                // The whole request is out: the upstream's time to answer starts.
                a.sent = true;
                a.since = Instant::now();
            }
        }
        // Read even after a failed write: the upstream may have answered early.
        let read =
            self.ups.read(a.up, &mut a.inb, site.limits.max_head_bytes + BODY_BUF, &mut self.scratch.borrow_mut());
        let eof = match read {
            Ok((f, eof)) => {
                if f.n > 0 {
                    moved = true;
                    a.since = Instant::now();
                }
                eof
            }
            Err(_) => true,
        };
        if wrote.is_err() && a.inb.is_empty() {
            // Bytes written before the error stay counted: `out_pos` says
            // how far this buffer got (it is reset only when all went out).
            a.wrote |= a.out_pos > 0;
            return (self.attempt_failed(c, site, t, a, Failure::Closed), Flow::Moved);
        }
        // The response head.
        let limits = head::Limits { max_head_bytes: site.limits.max_head_bytes, max_headers: site.limits.max_headers };
        while !a.inb.is_empty() {
            match head::parse_response(&a.inb, &limits, &t.data.req.method) {
                Ok(None) => break,
                Ok(Some((h, n))) => {
                    a.inb.drain(..n);
                    if (100..200).contains(&h.status) {
                        continue; // interim responses are ours to send (100 Continue), not the upstream's
                    }
                    a.resp_body = Framing::of(h.body);
                    a.reusable = h.keep_alive && !matches!(h.body, head::Body::UntilClose);
                    t.data.resp = Some(h);
                    return (Stage::Respond(Some(a)), Flow::Moved);
                }
                Err(e) => {
                    tracing::debug!(worker = self.worker, "upstream response refused: {e}");
                    add(&self.stats.upstream_failures, 1);
                    self.drop_attempt(t, a, false);
                    t.data.answer = Some(Answer::host(502, "the upstream's response head was malformed"));
                    return (Stage::Respond(None), Flow::Moved);
                }
            }
        }
        if eof {
            let why = if a.inb.is_empty() { Failure::Closed } else { Failure::PartialHead };
            return (self.attempt_failed(c, site, t, a, why), Flow::Moved);
        }
        (Stage::Proxy(a), if moved { Flow::Moved } else { Flow::Wait })
    }

    /// An attempt failed before its response head was accepted (so nothing
    /// of any response reached the client). Another attempt follows when
    /// the retry policy allows (a fresh connection to the same server once,
    /// after the keep-alive race; else the next server of the walk), else
    /// the client is answered 502 or 504.
    fn attempt_failed(&self, c: &mut Client, site: &HttpSite, t: &mut Txn, a: Attempt, why: Failure) -> Stage {
        add(&self.stats.upstream_failures, 1);
        let g = t.data.group.unwrap_or(0);
        let route = &site.routes[t.data.route];
        let consumed = t.req_seen > 0;
        let may = may_resend(&t.data.req.method, route.retry_non_idempotent, a.wrote, consumed);
        // A pooled connection the server closed as we reused it: the server
        // is not at fault; once, a fresh connection to it.
        let race = a.reused && why == Failure::Closed && a.inb.is_empty() && !t.same_again;
        if !race {
            self.ups.mark_failed(c.site, g, a.server, Instant::now() + site.limits.retry_after);
        }
        tracing::debug!(worker = self.worker, ?why, may, race, "upstream attempt failed");
        self.drop_attempt(t, a, false);
        t.last_failure = why;
        if !may {
            let (status, text) = match why {
                Failure::Timeout | Failure::ConnectTimeout => (504, "the upstream did not answer in time"),
                Failure::PartialHead => (502, "the upstream closed the connection in its response head"),
                _ => (502, "the upstream connection failed before an answer; the request was not sent again"),
            };
            t.data.answer = Some(Answer::host(status, text));
            return Stage::Respond(None);
        }
        if race {
            t.same_again = true;
            if let Some(w) = t.walk.as_mut() {
                w.again();
            }
        }
        add(&self.stats.upstream_retries, 1);
        Stage::Connect
    }

    /// Write the upstream's response head (after the RESPONSE hooks).
    fn respond(&self, c: &mut Client, t: &mut Txn, mut a: Attempt) -> Stage {
        let r = t.data.resp.as_ref().expect("the response of this attempt");
        t.status = r.status;
        let head_req = t.data.req.method.eq_ignore_ascii_case("HEAD");
        let keep = c.keep_alive && t.req_body.done();
        let f = wire::response_head(r, &a.resp_body, head_req, c.minor, keep, &mut c.out);
        a.chunk_out = f.chunk_out;
        if f.close {
            c.keep_alive = false;
        }
        Stage::Stream(a)
    }

    fn write_answer(&self, c: &mut Client, t: &mut Txn) {
        let a = t.data.answer.as_ref().expect("an answer");
        t.status = a.status;
        t.sent_body = a.body.len() as u64;
        let close = !c.keep_alive || !t.req_body.done() || a.by == 2 && a.status >= 400 && a.status != 404;
        if close {
            c.keep_alive = false;
        }
        wire::answer(a, &t.data.req.method, c.minor, close, &mut c.out);
    }

    /// Response body out.
    fn stream(&self, c: &mut Client, t: &mut Txn, mut a: Attempt) -> (Stage, Flow) {
        let mut moved = false;
        if c.out.len() - c.out_pos < BODY_BUF && !a.inb.is_empty() {
            match transfer(&mut a.resp_body, &mut a.inb, &mut c.out, a.chunk_out) {
                Ok(k) => {
                    t.sent_body += k;
                    moved |= k > 0;
                }
                Err(e) => {
                    tracing::debug!(worker = self.worker, "upstream body refused: {e}");
                    self.drop_attempt(t, a, false);
                    return (Stage::End, Flow::Close);
                }
            }
        }
        if a.resp_body.done() {
            if a.chunk_out {
                chunked::encode_end(&mut c.out);
            }
            // Reusable only if the exchange is complete both ways: an
            // upstream that answered before the whole request went out is
            // in no known state.
            let reusable = a.reusable && a.inb.is_empty() && t.req_body.done() && a.out.is_empty();
            self.drop_attempt(t, a, reusable);
            return (Stage::End, Flow::Moved);
        }
        let read = self.ups.read(a.up, &mut a.inb, BODY_BUF, &mut self.scratch.borrow_mut());
        match read {
            Ok((f, eof)) => {
                if f.n > 0 {
                    moved = true;
                    a.since = Instant::now();
                }
                if eof && a.inb.is_empty() {
                    if matches!(a.resp_body, Framing::UntilClose) {
                        if a.chunk_out {
                            chunked::encode_end(&mut c.out);
                        }
                        self.drop_attempt(t, a, false);
                        return (Stage::End, Flow::Moved);
                    }
                    // Cut short: the client cannot be told but by closing.
                    self.drop_attempt(t, a, false);
                    return (Stage::End, Flow::Close);
                }
            }
            Err(_) => {
                self.drop_attempt(t, a, false);
                return (Stage::End, Flow::Close);
            }
        }
        (Stage::Stream(a), if moved { Flow::Moved } else { Flow::Wait })
    }

    /// The client went away mid-transaction: release the upstream, run the
    /// end hooks whatever holds them.
    pub(super) fn abandon(&self, core: &WorkerCore, c: &Client, t: &mut Txn) {
        match std::mem::replace(&mut t.stage, Stage::End) {
            Stage::Proxy(a) | Stage::Stream(a) | Stage::Respond(Some(a)) => self.drop_attempt(t, a, false),
            _ => {}
        }
        let args = (u64::from(t.status), t.sent_body);
        let site = self.site(c.site);
        let _ = t.chain.end(&self.caller(core, usize::MAX, c, &site), &mut t.data, args, true);
    }

    /// The timers of a transaction at `now`: Moved when it must be driven,
    /// Close when the client is to be closed.
    /// The earliest time [`HttpLayer::expire_txn`] could act on `t`: its
    /// deadlines that may apply now (taken wide: a check that finds nothing
    /// costs only the check; one missed would leave a timeout unenforced).
    pub(super) fn txn_due(c: &Client, site: &HttpSite, t: &Txn) -> Option<Instant> {
        let l = &site.limits;
        match &t.stage {
            Stage::Proxy(a) => {
                // The connect timeout while the connection may still be
                // connecting (not from the pool, nothing written yet).
                let mut due = if a.sent {
                    Some(a.since + l.upstream_timeout)
                } else if !a.reused && !a.wrote {
                    Some(a.since + l.connect_timeout)
                } else {
                    None
                };
                if !t.req_body.done() {
                    let stall = c.last_read + l.request_timeout;
                    due = Some(due.map_or(stall, |d| d.min(stall)));
                }
                due
            }
            Stage::Stream(a) => Some(a.since + l.upstream_timeout),
            _ => None,
        }
    }

    pub(super) fn expire_txn(&self, c: &mut Client, site: &HttpSite, t: &mut Txn, now: Instant) -> Flow {
        let l = &site.limits;
        match std::mem::replace(&mut t.stage, Stage::End) {
            Stage::Proxy(a) => {
                let connecting = self.ups.connected(a.up) == Ok(false);
                if connecting && now.duration_since(a.since) > l.connect_timeout {
                    t.stage = self.attempt_failed(c, site, t, a, Failure::ConnectTimeout);
                    return Flow::Moved;
                }
                if !t.req_body.done() && now.duration_since(c.last_read) > l.request_timeout {
                    self.drop_attempt(t, a, false);
                    t.data.answer = Some(Answer::host(408, "the request body stalled"));
                    t.stage = Stage::Respond(None);
                    c.close = true;
                    return Flow::Moved;
                }
                if a.sent && now.duration_since(a.since) > l.upstream_timeout {
                    t.stage = self.attempt_failed(c, site, t, a, Failure::Timeout);
                    return Flow::Moved;
                }
                t.stage = Stage::Proxy(a);
                Flow::Wait
            }
            Stage::Stream(a) => {
                let late = now.duration_since(a.since) > l.upstream_timeout;
                t.stage = Stage::Stream(a);
                if late { Flow::Close } else { Flow::Wait }
            }
            other => {
                t.stage = other;
                Flow::Wait
            }
        }
    }
}
