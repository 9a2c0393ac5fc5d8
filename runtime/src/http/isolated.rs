//! HTTP hooks of an isolated module, without a round trip per host call:
//! what a hook may read travels with the request (a [`snapshot`] of the
//! transaction), the child runs the hook on a transaction rebuilt from it
//! ([`serve_hook`]), recording every change the module made, and the
//! changes come back with the reply and are replayed here ([`apply`])
//! through the same checks an in-process module's calls go through.
//!
//! The bytes from the child are input from an untrusted process: decoding
//! is bounded and refuses anything malformed, and the replay can do nothing
//! an in-process module could not.

use std::cell::RefCell;

use molt_abi::ffi::*;

use super::head::{Body, Header, RequestHead, ResponseHead};
use super::site::{HttpLimits, HttpRoute, HttpSite};
use super::txn::{Answer, TxnData, View};
use crate::host::{ServiceResult, TxnAccess};

/// A change a hook made, in the order it made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// `http_header_set(msg, mode, name, value)`.
    Header {
        /// `MOLT_HTTP_MSG_*`.
        msg: u32,
        /// `MOLT_HDR_*`.
        mode: u32,
        /// Name.
        name: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// `http_set_target`.
    Target(Vec<u8>),
    /// `http_respond`.
    Respond {
        /// Status.
        status: u32,
        /// Content-Type.
        content_type: Vec<u8>,
        /// Body.
        body: Vec<u8>,
    },
    /// `http_upstream_select`.
    Upstream(Vec<u8>),
}

/// What the child says of a hook: the edits, and the hook's failure if it
/// failed (status and text, as an in-process call's error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookReply {
    /// The changes, in order (kept even when the hook then failed, as an
    /// in-process module's changes are).
    pub edits: Vec<Edit>,
    /// The hook's error: status and text.
    pub failed: Option<(i32, String)>,
}

/// The most a snapshot or a reply may hold.
pub const MAX_BYTES: usize = 256 * 1024;

struct W(Vec<u8>);

impl W {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn opt(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                self.0.push(1);
                self.bytes(b);
            }
            None => self.0.push(0),
        }
    }
    fn headers(&mut self, hs: &[Header]) {
        self.u32(hs.len() as u32);
        for h in hs {
            self.bytes(h.name.as_bytes());
            self.bytes(&h.value);
        }
    }
}

/// A bounded reader: every read checks what is left.
struct R<'a>(&'a [u8]);

type Dec<T> = Result<T, &'static str>;

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Dec<&'a [u8]> {
        if n > self.0.len() {
            return Err("truncated");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Dec<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Dec<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "truncated")?))
    }
    fn u64(&mut self) -> Dec<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "truncated")?))
    }
    fn bytes(&mut self) -> Dec<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Dec<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| "not UTF-8")
    }
    fn opt(&mut self) -> Dec<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            _ => Err("bad option tag"),
        }
    }
    fn headers(&mut self) -> Dec<Vec<Header>> {
        let n = self.u32()? as usize;
        // Each field takes at least 8 bytes: a count beyond that is a lie.
        if n > self.0.len() / 8 {
            return Err("header count beyond the bytes");
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let name = std::str::from_utf8(self.bytes()?).map_err(|_| "header name not UTF-8")?;
            let value = self.bytes()?;
            out.push(Header::new(name, value));
        }
        Ok(out)
    }
}

/// What hook `kind` (handle `handle`, arguments `args`) of `view`'s
/// transaction may read, for the child.
pub fn snapshot(view: &View<'_>, handle: u64, args: (u64, u64)) -> Vec<u8> {
    let t = view.t.borrow();
    let mut w = W(Vec::with_capacity(512));
    w.u32(view.kind);
    w.u64(handle);
    w.u64(args.0);
    w.u64(args.1);
    w.bytes(view.peer.as_bytes());
    w.bytes(view.site.name.as_bytes());
    w.bytes(view.site.routes.get(t.route).map_or("", |r| r.name.as_str()).as_bytes());
    w.u32(view.site.groups.len() as u32);
    for (g, _) in &view.site.groups {
        w.bytes(g.as_bytes());
    }
    w.opt(t.group.map(|g| (g as u32).to_le_bytes()).as_ref().map(|b| &b[..]));
    w.opt(t.upstream_addr.map(|a| a.to_string()).as_deref().map(str::as_bytes));
    w.bytes(t.req.method.as_bytes());
    w.bytes(t.req.target.as_bytes());
    w.0.push(t.req.minor);
    w.opt(t.req.host.as_deref().map(str::as_bytes));
    w.headers(&t.req.headers);
    match &t.answer {
        Some(a) => {
            w.0.push(1);
            w.u32(u32::from(a.status));
            w.headers(&a.headers);
        }
        None => w.0.push(0),
    }
    match &t.resp {
        Some(r) => {
            w.0.push(1);
            w.u32(u32::from(r.status));
            w.bytes(r.reason.as_bytes());
            w.headers(&r.headers);
        }
        None => w.0.push(0),
    }
    w.0
}

/// The transaction a snapshot describes, rebuilt (the child's side).
struct Rebuilt {
    kind: u32,
    handle: u64,
    args: (u64, u64),
    peer: String,
    site: HttpSite,
    data: TxnData,
}

fn rebuild(bytes: &[u8]) -> Dec<Rebuilt> {
    if bytes.len() > MAX_BYTES {
        return Err("too large");
    }
    let mut r = R(bytes);
    let kind = r.u32()?;
    if !(MOLT_EV_HTTP_REQUEST..=MOLT_EV_HTTP_TXN_END).contains(&kind) {
        return Err("not an HTTP hook");
    }
    let handle = r.u64()?;
    let args = (r.u64()?, r.u64()?);
    let peer = r.text()?.to_owned();
    let site_name = r.text()?.to_owned();
    let route = r.text()?.to_owned();
    let n = r.u32()? as usize;
    if n > 1024 {
        return Err("too many upstream groups");
    }
    let mut groups = Vec::with_capacity(n);
    for _ in 0..n {
        groups.push((r.text()?.to_owned(), Vec::new()));
    }
    let group = match r.opt()? {
        Some(b) => Some(u32::from_le_bytes(b.try_into().map_err(|_| "bad group")?) as usize),
        None => None,
    };
    if group.is_some_and(|g| g >= groups.len()) {
        return Err("group out of range");
    }
    let upstream_addr = match r.opt()? {
        Some(b) => Some(std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).ok_or("bad upstream address")?),
        None => None,
    };
    let method = r.text()?.into();
    let target = r.text()?.into();
    let minor = r.u8()?;
    let host = match r.opt()? {
        Some(b) => Some(std::str::from_utf8(b).map_err(|_| "host not UTF-8")?.into()),
        None => None,
    };
    let headers = r.headers()?;
    let answer = match r.u8()? {
        0 => None,
        1 => {
            let status = u16::try_from(r.u32()?).map_err(|_| "bad status")?;
            Some(Answer { status, headers: r.headers()?, body: Vec::new(), by: 1 })
        }
        _ => return Err("bad answer tag"),
    };
    let resp = match r.u8()? {
        0 => None,
        1 => {
            let status = u16::try_from(r.u32()?).map_err(|_| "bad status")?;
            let reason = r.text()?.into();
            let headers = r.headers()?;
            Some(ResponseHead { status, reason, minor: 1, headers, body: Body::None, keep_alive: true })
        }
        _ => return Err("bad response tag"),
    };
    let req = RequestHead {
        method,
        target,
        minor,
        headers,
        body: Body::None,
        keep_alive: true,
        expect_continue: false,
        host,
    };
    let site = HttpSite {
        name: site_name,
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        routes: vec![HttpRoute {
            name: route,
            host: None,
            path: "/".into(),
            upstream: None,
            modules: Vec::new(),
            retry_non_idempotent: false,
        }],
        groups,
        limits: HttpLimits::default(),
    };
    let data = TxnData { id: handle, req, route: 0, group, answer, resp, upstream_addr };
    Ok(Rebuilt { kind, handle, args, peer, site, data })
}

/// A transaction that forwards to `inner` and records what changed it.
struct Recorder<'a> {
    inner: &'a dyn TxnAccess,
    edits: RefCell<Vec<Edit>>,
}

impl Recorder<'_> {
    fn record(&self, r: ServiceResult<()>, e: impl FnOnce() -> Edit) -> ServiceResult<()> {
        if r.is_ok() {
            self.edits.borrow_mut().push(e());
        }
        r
    }
}

impl TxnAccess for Recorder<'_> {
    fn id(&self) -> u64 {
        self.inner.id()
    }
    fn get(&self, item: u32, f: &mut dyn FnMut(&[u8])) -> ServiceResult<()> {
        self.inner.get(item, f)
    }
    fn header_get(&self, msg: u32, name: &[u8], index: u32, f: &mut dyn FnMut(&[u8])) -> ServiceResult<()> {
        self.inner.header_get(msg, name, index, f)
    }
    fn header_set(&self, msg: u32, mode: u32, name: &[u8], value: &[u8]) -> ServiceResult<()> {
        let r = self.inner.header_set(msg, mode, name, value);
        self.record(r, || Edit::Header { msg, mode, name: name.to_vec(), value: value.to_vec() })
    }
    fn set_target(&self, target: &[u8]) -> ServiceResult<()> {
        let r = self.inner.set_target(target);
        self.record(r, || Edit::Target(target.to_vec()))
    }
    fn respond(&self, status: u32, content_type: &[u8], body: &[u8]) -> ServiceResult<()> {
        let r = self.inner.respond(status, content_type, body);
        self.record(r, || Edit::Respond { status, content_type: content_type.to_vec(), body: body.to_vec() })
    }
    fn upstream_select(&self, group: &[u8]) -> ServiceResult<()> {
        let r = self.inner.upstream_select(group);
        self.record(r, || Edit::Upstream(group.to_vec()))
    }
}

fn encode_reply(reply: &HookReply) -> Vec<u8> {
    let mut w = W(Vec::new());
    match &reply.failed {
        None => w.0.push(0),
        Some((status, text)) => {
            w.0.push(1);
            w.u32(*status as u32);
            w.bytes(text.as_bytes());
        }
    }
    w.u32(reply.edits.len() as u32);
    for e in &reply.edits {
        match e {
            Edit::Header { msg, mode, name, value } => {
                w.0.push(1);
                w.u32(*msg);
                w.u32(*mode);
                w.bytes(name);
                w.bytes(value);
            }
            Edit::Target(t) => {
                w.0.push(2);
                w.bytes(t);
            }
            Edit::Respond { status, content_type, body } => {
                w.0.push(3);
                w.u32(*status);
                w.bytes(content_type);
                w.bytes(body);
            }
            Edit::Upstream(g) => {
                w.0.push(4);
                w.bytes(g);
            }
        }
    }
    w.0
}

/// Decode a child's reply (refusing anything malformed).
pub fn decode_reply(bytes: &[u8]) -> Result<HookReply, String> {
    let d = || -> Dec<HookReply> {
        if bytes.len() > MAX_BYTES {
            return Err("too large");
        }
        let mut r = R(bytes);
        let failed = match r.u8()? {
            0 => None,
            1 => Some((r.u32()? as i32, String::from_utf8_lossy(r.bytes()?).into_owned())),
            _ => return Err("bad failure tag"),
        };
        let n = r.u32()? as usize;
        if n > r.0.len() {
            return Err("edit count beyond the bytes");
        }
        let mut edits = Vec::with_capacity(n);
        for _ in 0..n {
            edits.push(match r.u8()? {
                1 => Edit::Header {
                    msg: r.u32()?,
                    mode: r.u32()?,
                    name: r.bytes()?.to_vec(),
                    value: r.bytes()?.to_vec(),
                },
                2 => Edit::Target(r.bytes()?.to_vec()),
                3 => Edit::Respond { status: r.u32()?, content_type: r.bytes()?.to_vec(), body: r.bytes()?.to_vec() },
                4 => Edit::Upstream(r.bytes()?.to_vec()),
                _ => return Err("unknown edit"),
            });
        }
        if !r.0.is_empty() {
            return Err("bytes after the last edit");
        }
        Ok(HookReply { edits, failed })
    };
    d().map_err(|e| format!("the isolated module's reply is malformed ({e})"))
}

/// The child's side: run the hook a snapshot describes on module version
/// `v`, and encode what it changed and whether it failed.
pub fn serve_hook(v: &crate::module::ModuleVersion, snapshot: &[u8]) -> Vec<u8> {
    let reply = match rebuild(snapshot) {
        Err(e) => HookReply { edits: Vec::new(), failed: Some((MOLT_ERR_INVALID_ARG, format!("bad snapshot ({e})"))) },
        Ok(mut rb) => {
            let view = View { t: RefCell::new(&mut rb.data), site: &rb.site, peer: &rb.peer, kind: rb.kind };
            let rec = Recorder { inner: &view, edits: RefCell::new(Vec::new()) };
            let failed = v.call_hook(rb.kind, rb.handle, rb.args, &rec).err().map(|e| (e.status, e.text));
            HookReply { edits: rec.edits.into_inner(), failed }
        }
    };
    encode_reply(&reply)
}

/// Replay the child's edits on `txn` (the transaction here), in order,
/// through its own checks; the first refused edit stops the replay and is
/// returned (the child ran the same checks, so only a child that lies gets
/// here).
pub fn apply(reply: &HookReply, txn: &dyn TxnAccess) -> ServiceResult<()> {
    for e in &reply.edits {
        match e {
            Edit::Header { msg, mode, name, value } => txn.header_set(*msg, *mode, name, value)?,
            Edit::Target(t) => txn.set_target(t)?,
            Edit::Respond { status, content_type, body } => txn.respond(*status, content_type, body)?,
            Edit::Upstream(g) => txn.upstream_select(g)?,
        }
    }
    Ok(())
}

/// A worker's links to the isolated modules: per module, its supervisor
/// and this worker's pair of rings to the current child, with the hooks in
/// flight (replies come back in the order the hooks went out).
pub(super) struct IsoLinks {
    worker: usize,
    layer: usize,
    registry: mio::Registry,
    /// A transaction's hooks name their slot by index; a swap retires the
    /// old version's slot and puts the new one's in a retired slot no
    /// transaction uses any more (or at the end): the slots stay as many as
    /// the modules and the swaps still draining, however many swaps ran.
    slots: RefCell<Vec<std::rc::Rc<IsoSlot>>>,
}

struct IsoSlot {
    sup: crate::sync::Arc<crate::isolate::Supervisor>,
    conn: RefCell<Option<IsoConn>>,
    /// The last incarnation this worker attached to (its wake socket is
    /// taken: a child killed for a hang is not attached to again).
    attached: std::cell::Cell<u64>,
    /// Transactions of this worker whose chain uses this slot, not ended.
    active: std::cell::Cell<usize>,
    /// A swap replaced it: new transactions use the newer slot.
    retired: std::cell::Cell<bool>,
}

impl IsoSlot {
    fn new(sup: crate::sync::Arc<crate::isolate::Supervisor>) -> std::rc::Rc<IsoSlot> {
        std::rc::Rc::new(IsoSlot {
            sup,
            conn: RefCell::new(None),
            attached: std::cell::Cell::new(0),
            active: std::cell::Cell::new(0),
            retired: std::cell::Cell::new(false),
        })
    }
}

struct IsoConn {
    generation: u64,
    /// Keeps the segment mapped while the rings are used.
    _inc: crate::sync::Arc<crate::isolate::Incarnation>,
    to: crate::isolate::ring::Producer<crate::isolate::ShmRing>,
    from: crate::isolate::ring::Consumer<crate::isolate::ShmRing>,
    wake: mio::net::UnixDatagram,
    pending: std::collections::VecDeque<Pending>,
}

struct Pending {
    client: usize,
    txn: u64,
    deadline: std::time::Instant,
}

/// A hook's outcome for client `client`'s transaction `txn`.
pub(super) struct Outcome {
    pub client: usize,
    pub txn: u64,
    pub result: Result<HookReply, String>,
}

/// The mio token of slot `i`'s wake socket, in the layer's token space.
pub(super) const ISO_BASE: usize = 1 << 46;

impl IsoLinks {
    pub(super) fn new(
        worker: usize,
        layer: usize,
        registry: mio::Registry,
        sups: Vec<crate::sync::Arc<crate::isolate::Supervisor>>,
    ) -> IsoLinks {
        let slots = sups.into_iter().map(IsoSlot::new).collect();
        IsoLinks { worker, layer, registry, slots: RefCell::new(slots) }
    }

    fn slot(&self, slot: usize) -> std::rc::Rc<IsoSlot> {
        self.slots.borrow()[slot].clone()
    }

    /// The slot new transactions of isolated module `name` use.
    pub(super) fn index(&self, name: &str) -> Option<usize> {
        self.slots.borrow().iter().rposition(|s| !s.retired.get() && s.sup.config().name == name)
    }

    /// A swap: `sup` serves module `sup.config().name` from now on; the
    /// slot it replaces serves the transactions that began on it.
    pub(super) fn add(&self, sup: crate::sync::Arc<crate::isolate::Supervisor>) {
        let mut slots = self.slots.borrow_mut();
        let free = slots.iter().position(|s| s.retired.get() && s.active.get() == 0);
        for s in slots.iter().filter(|s| s.sup.config().name == sup.config().name) {
            s.retired.set(true);
        }
        match free {
            Some(i) => {
                // No transaction names it (none active), so no hook of it is
                // in flight: its link to the old child goes, and the index
                // (and the wake socket's token) serves the new version.
                if let Some(mut c) = slots[i].conn.borrow_mut().take() {
                    let _ = self.registry.deregister(&mut c.wake);
                }
                slots[i] = IsoSlot::new(sup);
            }
            None => slots.push(IsoSlot::new(sup)),
        }
    }

    /// How many slots this worker keeps (current and retired ones).
    pub(super) fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    /// Transactions of this worker still using supervisor `sup`.
    pub(super) fn in_use(&self, sup: &crate::isolate::Supervisor) -> usize {
        self.slots.borrow().iter().filter(|s| std::ptr::eq(&*s.sup, sup)).map(|s| s.active.get()).sum()
    }

    /// A transaction's chain took slot `slot`.
    pub(super) fn begun(&self, slot: usize) {
        let s = self.slot(slot);
        s.active.set(s.active.get() + 1);
    }

    /// A transaction's chain that took slot `slot` ended.
    pub(super) fn ended(&self, slot: usize) {
        let s = self.slot(slot);
        s.active.set(s.active.get().saturating_sub(1));
    }

    /// Its failure policy.
    pub(super) fn policy(&self, slot: usize) -> crate::module::FailurePolicy {
        self.slot(slot).sup.config().failure_policy
    }

    /// The hooks its running child declared (0: every one).
    pub(super) fn hooks(&self, slot: usize) -> u64 {
        self.slot(slot).sup.current().map_or(0, |i| i.hooks)
    }

    /// Its name.
    pub(super) fn name(&self, slot: usize) -> String {
        self.slot(slot).sup.config().name.clone()
    }

    /// Attach to the current child if not attached to it yet.
    fn attach(&self, slot: usize) -> Result<(), String> {
        let s = self.slot(slot);
        let mut conn = s.conn.borrow_mut();
        let generation = s.sup.generation();
        if conn.as_ref().is_some_and(|c| c.generation == generation) {
            return Ok(());
        }
        let current = s.sup.current().filter(|i| i.generation == generation && generation != s.attached.get());
        let Some(inc) = current else {
            let st = s.sup.status();
            let state = if st.state == "running" { "restarting" } else { st.state };
            return Err(format!(
                "isolated module {} is not running ({state}{})",
                st.module,
                st.last_exit.map(|e| format!(": {e}")).unwrap_or_default()
            ));
        };
        let Some(std_wake) = inc.take_wake(self.worker) else {
            return Err("this worker's wake socket was already taken".into());
        };
        s.attached.set(generation);
        let mut wake = mio::net::UnixDatagram::from_std(std_wake);
        self.registry
            .register(&mut wake, crate::worker::io::token(self.layer, ISO_BASE + slot), mio::Interest::READABLE)
            .map_err(|e| format!("cannot register the wake socket: {e}"))?;
        *conn = Some(IsoConn {
            generation,
            to: crate::isolate::ring::Producer::new(crate::isolate::ShmRing::request(&inc.seg, self.worker)),
            from: crate::isolate::ring::Consumer::new(crate::isolate::ShmRing::reply(&inc.seg, self.worker)),
            _inc: inc,
            wake,
            pending: std::collections::VecDeque::new(),
        });
        Ok(())
    }

    /// Send client `client`'s hook (transaction `txn`, `snapshot`) to the child.
    pub(super) fn send(&self, slot: usize, client: usize, txn: u64, snapshot: &[u8]) -> Result<(), String> {
        self.attach(slot)?;
        let s = self.slot(slot);
        let mut conn = s.conn.borrow_mut();
        let c = conn.as_mut().expect("attached");
        match crate::isolate::push_hook(&mut c.to, snapshot) {
            Ok(true) => {
                let timeout = std::time::Duration::from_millis(s.sup.config().hook_timeout_ms);
                c.pending.push_back(Pending { client, txn, deadline: std::time::Instant::now() + timeout });
                Ok(())
            }
            Ok(false) => Err(format!("isolated module {} has too many hooks queued", self.name(slot))),
            Err(e) => Err(format!("isolated module {}: {e}", self.name(slot))),
        }
    }

    /// Replies that arrived on slot `slot` (its wake socket was poked).
    pub(super) fn replies(&self, slot: usize, out: &mut Vec<Outcome>) {
        let s = self.slot(slot);
        let mut conn = s.conn.borrow_mut();
        let Some(c) = conn.as_mut() else { return };
        let mut poke = [0u8; 64];
        while c.wake.recv(&mut poke).is_ok() {}
        let mut buf = Vec::new();
        loop {
            match crate::isolate::pop_hook_reply(&mut c.from, &mut buf) {
                Ok(false) => return,
                Ok(true) => {
                    let Some(p) = c.pending.pop_front() else {
                        drop(conn);
                        return self.broken(slot, "a reply to no hook", out);
                    };
                    out.push(Outcome { client: p.client, txn: p.txn, result: decode_reply(&buf) });
                }
                Err(e) => {
                    drop(conn);
                    return self.broken(slot, &e.to_string(), out);
                }
            }
        }
    }

    /// The child broke the protocol: it is killed, and every hook in flight fails.
    fn broken(&self, slot: usize, why: &str, out: &mut Vec<Outcome>) {
        let s = self.slot(slot);
        if let Some(c) = s.conn.borrow().as_ref() {
            s.sup.kill(c.generation);
        }
        self.fail_all(slot, &format!("isolated module {}: {why}; its child was killed", self.name(slot)), out);
    }

    fn fail_all(&self, slot: usize, why: &str, out: &mut Vec<Outcome>) {
        let s = self.slot(slot);
        if let Some(mut c) = s.conn.borrow_mut().take() {
            let _ = self.registry.deregister(&mut c.wake);
            for p in c.pending.drain(..) {
                s.sup.count_hook_failure();
                out.push(Outcome { client: p.client, txn: p.txn, result: Err(why.to_owned()) });
            }
        }
    }

    /// Deaths and hung hooks: every slot whose child ended, or whose oldest
    /// hook is past its deadline (the child is then killed), fails what it
    /// had in flight. Replies a missed poke left are collected too.
    pub(super) fn tick(&self, now: std::time::Instant, out: &mut Vec<Outcome>) {
        let n = self.slots.borrow().len();
        for slot in 0..n {
            self.replies(slot, out);
            let s = self.slot(slot);
            let (generation, late) = match s.conn.borrow().as_ref() {
                None => continue,
                Some(c) => (c.generation, c.pending.front().is_some_and(|p| now > p.deadline)),
            };
            if generation != s.sup.generation() {
                let st = s.sup.status();
                let why = format!(
                    "isolated module {}: its child process died ({})",
                    self.name(slot),
                    st.last_exit.unwrap_or_else(|| "gone".into())
                );
                self.fail_all(slot, &why, out);
            } else if late {
                s.sup.kill(generation);
                let why = format!(
                    "isolated module {}: a hook took longer than hook_timeout_ms ({} ms); its child was killed",
                    self.name(slot),
                    s.sup.config().hook_timeout_ms
                );
                self.fail_all(slot, &why, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_rebuilds_the_transaction_and_replies_round_trip() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: example\r\nX-One: 1\r\nX-One: 2\r\n\r\n";
        let Ok(Some((req, _))) = super::super::head::parse_request(raw, &super::super::head::Limits::default()) else {
            panic!("parse")
        };
        let site = HttpSite {
            name: "web".into(),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            routes: vec![HttpRoute {
                name: "all".into(),
                host: None,
                path: "/".into(),
                upstream: Some(0),
                modules: vec![],
                retry_non_idempotent: false,
            }],
            groups: vec![("a".into(), vec![]), ("b".into(), vec![])],
            limits: HttpLimits::default(),
        };
        let mut data = TxnData { id: 9, req, route: 0, group: Some(1), answer: None, resp: None, upstream_addr: None };
        let view = View { t: RefCell::new(&mut data), site: &site, peer: "10.0.0.1:5", kind: MOLT_EV_HTTP_REQUEST };
        let snap = snapshot(&view, 9, (0, 0));
        let rb = rebuild(&snap).unwrap();
        assert_eq!((rb.kind, rb.handle, rb.peer.as_str()), (MOLT_EV_HTTP_REQUEST, 9, "10.0.0.1:5"));
        assert_eq!(rb.data.req.headers, view.t.borrow().req.headers);
        assert_eq!(rb.data.req.host.as_deref(), Some("example"));
        assert_eq!(rb.data.group, Some(1));
        // Every truncation of a snapshot is refused, never misread.
        for n in 0..snap.len() {
            assert!(rebuild(&snap[..n]).is_err(), "a snapshot cut at {n} was accepted");
        }
        let reply = HookReply {
            edits: vec![
                Edit::Header { msg: 1, mode: MOLT_HDR_SET, name: b"X-Two".to_vec(), value: b"2".to_vec() },
                Edit::Target(b"/b".to_vec()),
                Edit::Upstream(b"a".to_vec()),
                Edit::Respond { status: 418, content_type: b"text/plain".to_vec(), body: b"tea".to_vec() },
            ],
            failed: Some((-1, "boom".into())),
        };
        let bytes = encode_reply(&reply);
        assert_eq!(decode_reply(&bytes).unwrap(), reply);
        for n in 0..bytes.len() {
            assert!(decode_reply(&bytes[..n]).is_err(), "a reply cut at {n} was accepted");
        }
        // Replayed through the transaction's own checks.
        apply(&reply, &view).unwrap();
        let t = view.t.borrow();
        assert_eq!(t.req.target, "/b");
        assert_eq!(t.group, Some(0));
        assert_eq!(t.answer.as_ref().map(|a| a.status), Some(418));
        drop(t);
        // An edit no in-process module could make is refused by the replay.
        let lie = HookReply {
            edits: vec![Edit::Header {
                msg: 1,
                mode: MOLT_HDR_SET,
                name: b"Content-Length".to_vec(),
                value: b"9".to_vec(),
            }],
            failed: None,
        };
        assert_eq!(apply(&lie, &view).unwrap_err().0, MOLT_ERR_INVALID_ARG);
    }
}
