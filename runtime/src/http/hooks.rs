//! A transaction's module chain: one continuation per module of its route,
//! the hook calls in chain order, and each module's failure policy.

use std::cell::RefCell;

use molt_abi::ffi::*;

use super::site::HttpSite;
use super::txn::{Answer, TxnData, View};
use crate::module::FailurePolicy;
use crate::sync::{AtomicU64, Ordering};
use crate::worker::{CallNow, WorkerCore};

/// Where an isolated module's hook stands in a transaction.
#[derive(Default)]
pub(super) enum IsoState {
    /// Not sent.
    #[default]
    Idle,
    /// Sent to the child; the transaction waits for the reply.
    Sent,
    /// The reply (or why there is none).
    Done(Result<super::isolated::HookReply, String>),
}

/// One module's continuation in a transaction (an isolated module has
/// none here: its hooks go to its child).
pub(super) struct Hooked {
    pub cont: u64,
    /// The isolated module's slot, for one running in a child process.
    pub iso: Option<usize>,
    pub iso_state: IsoState,
    /// The module's index in its route's module list (its name, for logs).
    pub module: usize,
    pub policy: FailurePolicy,
    /// The hook events its module handles (`MOLT_HOOK_*`; 0: every one).
    pub hooks: u64,
    /// Skipped for the rest of the transaction (failed under fail_open).
    pub skip: bool,
}

/// The `MOLT_HOOK_*` bit of a hook event.
fn hook_bit(kind: u32) -> u64 {
    match kind {
        MOLT_EV_HTTP_REQUEST => MOLT_HOOK_REQUEST,
        MOLT_EV_HTTP_UPSTREAM => MOLT_HOOK_UPSTREAM,
        MOLT_EV_HTTP_RESPONSE => MOLT_HOOK_RESPONSE,
        _ => MOLT_HOOK_TXN_END,
    }
}

/// The chain of a transaction and where the current hook has got to.
#[derive(Default)]
pub(super) struct Chain {
    pub conts: Vec<Hooked>,
    /// The next module to call in the current hook.
    pos: usize,
}

/// What a hook's pass over the chain did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ran {
    /// Every module was called (or skipped).
    Done,
    /// A module version is held (a state migration): call again when the
    /// worker's holds are released; the chain resumes where it stopped.
    Held,
    /// A hook went to an isolated module's child: call again when its
    /// reply is delivered ([`Chain::deliver`]); the chain resumes there.
    Pending,
}

/// Who is calling: the worker, its listener, the client and the counters.
pub(super) struct Caller<'a> {
    pub core: &'a WorkerCore,
    pub site: &'a HttpSite,
    pub peer: &'a str,
    pub worker: u32,
    pub hook_failures: &'a AtomicU64,
    pub held_hooks: &'a AtomicU64,
    /// The worker's links to isolated modules.
    pub iso: Option<&'a super::isolated::IsoLinks>,
    /// The client's index (`usize::MAX`: the client is gone; isolated
    /// hooks are not sent then).
    pub client: usize,
}

fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

impl Chain {
    /// Reuse `conts`' allocation for a new, empty chain.
    pub fn recycled(mut conts: Vec<Hooked>) -> Chain {
        conts.clear();
        Chain { conts, pos: 0 }
    }

    /// Call hook `kind` on every module from where the last pass stopped.
    /// A module that fails follows its policy: `fail_open` skips it from
    /// then on; otherwise a failed REQUEST or UPSTREAM hook answers 500, a
    /// failed RESPONSE hook replaces the upstream's response with a 500,
    /// and `restart` also asks for a fresh version after a panic.
    pub fn call(&mut self, by: &Caller<'_>, data: &mut TxnData, kind: u32, args: (u64, u64)) -> Ran {
        let early = kind == MOLT_EV_HTTP_REQUEST || kind == MOLT_EV_HTTP_UPSTREAM;
        let bit = hook_bit(kind);
        while self.pos < self.conts.len() {
            if data.answer.is_some() && early {
                break;
            }
            let h = &mut self.conts[self.pos];
            // A module that declared its hooks is called for those only.
            if let Some(slot) = h.iso.filter(|_| !h.skip && (h.hooks == 0 || h.hooks & bit != 0)) {
                match std::mem::take(&mut h.iso_state) {
                    IsoState::Idle => {
                        let (Some(iso), true) = (by.iso, by.client != usize::MAX) else {
                            self.pos += 1;
                            continue;
                        };
                        let snap = {
                            let view = View { t: RefCell::new(&mut *data), site: by.site, peer: by.peer, kind };
                            super::isolated::snapshot(&view, data_id(&view), args)
                        };
                        match iso.send(slot, by.client, data.id, &snap) {
                            Ok(()) => {
                                h.iso_state = IsoState::Sent;
                                return Ran::Pending;
                            }
                            Err(e) => Self::failed(by, data, h, kind, early, &e),
                        }
                    }
                    IsoState::Sent => {
                        h.iso_state = IsoState::Sent;
                        return Ran::Pending;
                    }
                    IsoState::Done(Ok(reply)) => {
                        let applied = {
                            let view = View { t: RefCell::new(&mut *data), site: by.site, peer: by.peer, kind };
                            super::isolated::apply(&reply, &view)
                        };
                        let failed = match (reply.failed, applied) {
                            (_, Err((_, e))) => {
                                Some((MOLT_ERR_FAILED, format!("its reply made a change no module may make: {e}")))
                            }
                            (f, Ok(())) => f,
                        };
                        if let Some((status, text)) = failed {
                            Self::failed(by, data, h, kind, early, &format!("status {status}: {text}"));
                        }
                    }
                    IsoState::Done(Err(e)) => Self::failed(by, data, h, kind, early, &e),
                }
                self.pos += 1;
                continue;
            }
            if h.iso.is_none() && !h.skip && (h.hooks == 0 || h.hooks & bit != 0) {
                let r = {
                    let view = View { t: RefCell::new(&mut *data), site: by.site, peer: by.peer, kind };
                    by.core.call_now(h.cont, kind, data_id(&view), args, &[], Some(&view))
                };
                match r {
                    CallNow::Done => {}
                    CallNow::Held => {
                        bump(by.held_hooks);
                        return Ran::Held;
                    }
                    // Ended by force (Stale); CoreKind cannot happen: hooks are HTTP kinds.
                    CallNow::Stale | CallNow::CoreKind => h.skip = true,
                    CallNow::Failed(e) => {
                        bump(by.hook_failures);
                        let name = by.site.routes.get(data.route).and_then(|r| r.modules.get(h.module));
                        let name = name.map_or("?", |n| n.as_str());
                        crate::module::quiet::failure(name, || {
                            tracing::warn!(worker = by.worker, module = %name, hook = kind, "hook failed: {e}");
                        });
                        if e.panicked() && h.policy == FailurePolicy::Restart {
                            by.core.fleet().request_restart(name);
                        }
                        if h.policy == FailurePolicy::FailOpen {
                            h.skip = true;
                        } else if early {
                            data.answer = Some(Answer::host(500, &format!("module {name} failed at the request")));
                        } else if kind == MOLT_EV_HTTP_RESPONSE && data.answer.is_none() {
                            // The upstream's response may not be sent as it is.
                            data.resp = None;
                            data.answer = Some(Answer::host(500, &format!("module {name} failed at the response")));
                        }
                    }
                }
            }
            self.pos += 1;
        }
        self.pos = 0;
        Ran::Done
    }

    /// An isolated module failed hook `kind` (its child died, hung, broke
    /// the protocol, or the hook returned an error): its failure policy
    /// decides, as for an in-process module.
    fn failed(by: &Caller<'_>, data: &mut TxnData, h: &mut Hooked, kind: u32, early: bool, e: &str) {
        bump(by.hook_failures);
        let name = by.site.routes.get(data.route).and_then(|r| r.modules.get(h.module));
        let name = name.map_or("?", |n| n.as_str());
        crate::module::quiet::failure(name, || {
            tracing::warn!(worker = by.worker, module = %name, hook = kind, "isolated hook failed: {e}");
        });
        // The child that knew this transaction is gone, or the hook failed:
        // the module sits the rest of the transaction out.
        h.skip = true;
        if h.policy == FailurePolicy::FailOpen {
            h.skip = true;
        } else if early {
            data.answer = Some(Answer::host(500, &format!("module {name} failed at the request")));
        } else if kind == MOLT_EV_HTTP_RESPONSE && data.answer.is_none() {
            data.resp = None;
            data.answer = Some(Answer::host(500, &format!("module {name} failed at the response")));
        }
    }

    /// The reply to the isolated hook this chain waits on (or why there is
    /// none); whether it was waiting for one.
    pub fn deliver(&mut self, result: Result<super::isolated::HookReply, String>) -> bool {
        match self.conts.get_mut(self.pos) {
            Some(h) if matches!(h.iso_state, IsoState::Sent) => {
                h.iso_state = IsoState::Done(result);
                true
            }
            _ => false,
        }
    }

    /// TXN_END on every module, then END for every continuation (with
    /// `force`, even when a module is held: the client is gone).
    pub fn end(&mut self, by: &Caller<'_>, data: &mut TxnData, args: (u64, u64), force: bool) -> Ran {
        match self.call(by, data, MOLT_EV_HTTP_TXN_END, args) {
            r @ (Ran::Held | Ran::Pending) if !force => return r,
            _ => {}
        }
        // END now, not a loop turn later: the chain's continuations are
        // the layer's own, and it is outside any module call here.
        for h in self.conts.drain(..) {
            match (h.iso, by.iso) {
                (None, _) => {
                    let _ = by.core.end_now(h.cont);
                }
                (Some(slot), Some(iso)) => iso.ended(slot),
                (Some(_), None) => {}
            }
        }
        self.pos = 0;
        Ran::Done
    }

    /// Whether every continuation was ended.
    pub fn ended(&self) -> bool {
        self.conts.is_empty()
    }
}

fn data_id(view: &View<'_>) -> u64 {
    view.t.borrow().id
}

/// The hook path alone, for the hook-path bench: `iters` transactions on
/// this worker, each making one continuation per module of `modules` (as a
/// request's `begin` does), calling the REQUEST, UPSTREAM and RESPONSE
/// hooks, then TXN_END and END, and running the loop until idle. No socket
/// is touched. With `fresh`, each transaction starts from a copy of the
/// request and gets an upstream's response head for its RESPONSE hook
/// (what `molt bench hooks` needs for a module that answers, adds headers
/// or edits the response; the copies cost every row alike); without, they
/// share one request and no response (the criterion bench's no-op modules
/// read and change nothing). The listener has the upstream groups `groups`
/// (`up` when empty). The caller is this worker's thread
/// (`Runtime::on_worker`).
pub fn hook_path_bench(
    core: &WorkerCore,
    modules: &[crate::module::VersionRef],
    iters: u64,
    fresh: bool,
    groups: &[String],
) -> std::time::Duration {
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], 2));
    let groups: Vec<(String, Vec<std::net::SocketAddr>)> = if groups.is_empty() {
        vec![("up".into(), vec![upstream])]
    } else {
        groups.iter().map(|g| (g.clone(), vec![upstream])).collect()
    };
    let site = HttpSite {
        name: "bench".into(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
        routes: vec![super::site::HttpRoute {
            name: "all".into(),
            host: None,
            path: "/".into(),
            upstream: Some(0),
            modules: modules.iter().map(|v| v.meta().name.clone()).collect(),
            retry_non_idempotent: false,
        }],
        groups,
        limits: super::site::HttpLimits::default(),
    };
    let raw = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n";
    let resp = fresh
        .then(|| {
            let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n";
            super::head::parse_response(raw, &super::head::Limits::default(), "GET").ok().flatten().map(|(h, _)| h)
        })
        .flatten();
    let Ok(Some((req, _))) = super::head::parse_request(raw, &super::head::Limits::default()) else {
        return std::time::Duration::ZERO;
    };
    let pristine = fresh.then(|| req.clone());
    let mut data = TxnData { id: 1, req, route: 0, group: Some(0), answer: None, resp: None, upstream_addr: None };
    let (failures, held) = (AtomicU64::new(0), AtomicU64::new(0));
    let by = Caller {
        core,
        site: &site,
        peer: "127.0.0.1:1",
        worker: core.index(),
        hook_failures: &failures,
        held_hooks: &held,
        iso: None,
        client: 0,
    };
    let mut spare = Vec::new();
    let t = std::time::Instant::now();
    for _ in 0..iters {
        if let Some(req) = &pristine {
            // With the room a parsed head has for added fields
            // (`head::collect`): a clone's exact fit would be regrown at a
            // module's first added field.
            let mut req = req.clone();
            req.headers.reserve(super::head::ADDED_FIELDS_ROOM);
            data = TxnData { id: 1, req, route: 0, group: Some(0), answer: None, resp: None, upstream_addr: None };
        }
        let mut chain = Chain::recycled(spare);
        for (i, v) in modules.iter().enumerate() {
            let Ok(cont) = core.spawn_host(v) else { return t.elapsed() };
            let hooks = v.meta().http_hooks;
            chain.conts.push(Hooked {
                cont,
                iso: None,
                iso_state: IsoState::Idle,
                module: i,
                policy: FailurePolicy::Restart,
                hooks,
                skip: false,
            });
        }
        chain.call(&by, &mut data, MOLT_EV_HTTP_REQUEST, (0, 0));
        chain.call(&by, &mut data, MOLT_EV_HTTP_UPSTREAM, (0, 0));
        // A module's answer is the response when there is one (arg1 1);
        // else the upstream's.
        let answered = data.answer.is_some();
        if let (false, Some(r)) = (answered, &resp) {
            let mut r = r.clone();
            r.headers.reserve(super::head::ADDED_FIELDS_ROOM);
            data.resp = Some(r);
        }
        chain.call(&by, &mut data, MOLT_EV_HTTP_RESPONSE, (200, u64::from(answered)));
        chain.end(&by, &mut data, (200, 2), false);
        core.run_until_idle();
        spare = std::mem::take(&mut chain.conts);
    }
    t.elapsed()
}
