//! A transaction's module chain: one continuation per module of its route,
//! the hook calls in chain order, and each module's failure policy.

use std::cell::RefCell;

use molt_abi::ffi::*;

use super::site::HttpSite;
use super::txn::{Answer, TxnData, View};
use crate::module::FailurePolicy;
use crate::sync::{AtomicU64, Ordering};
use crate::worker::{CallNow, WorkerCore};

/// One module's continuation in a transaction.
pub(super) struct Hooked {
    pub cont: u64,
    pub name: Box<str>,
    pub policy: FailurePolicy,
    /// Skipped for the rest of the transaction (failed under fail_open).
    pub skip: bool,
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
}

/// Who is calling: the worker, its listener, the client and the counters.
pub(super) struct Caller<'a> {
    pub core: &'a WorkerCore,
    pub site: &'a HttpSite,
    pub peer: &'a str,
    pub worker: u32,
    pub hook_failures: &'a AtomicU64,
    pub held_hooks: &'a AtomicU64,
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
        while self.pos < self.conts.len() {
            if data.answer.is_some() && early {
                break;
            }
            let h = &mut self.conts[self.pos];
            if !h.skip {
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
                        crate::module::quiet::failure(&h.name, || {
                            tracing::warn!(worker = by.worker, module = %h.name, hook = kind, "hook failed: {e}");
                        });
                        if e.panicked() && h.policy == FailurePolicy::Restart {
                            by.core.fleet().request_restart(&h.name);
                        }
                        if h.policy == FailurePolicy::FailOpen {
                            h.skip = true;
                        } else if early {
                            data.answer = Some(Answer::host(500, &format!("module {} failed at the request", h.name)));
                        } else if kind == MOLT_EV_HTTP_RESPONSE && data.answer.is_none() {
                            // The upstream's response may not be sent as it is.
                            data.resp = None;
                            data.answer = Some(Answer::host(500, &format!("module {} failed at the response", h.name)));
                        }
                    }
                }
            }
            self.pos += 1;
        }
        self.pos = 0;
        Ran::Done
    }

    /// TXN_END on every module, then END for every continuation (with
    /// `force`, even when a module is held: the client is gone).
    pub fn end(&mut self, by: &Caller<'_>, data: &mut TxnData, args: (u64, u64), force: bool) -> Ran {
        if self.call(by, data, MOLT_EV_HTTP_TXN_END, args) == Ran::Held && !force {
            return Ran::Held;
        }
        for h in self.conts.drain(..) {
            let _ = by.core.destroy(h.cont);
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
