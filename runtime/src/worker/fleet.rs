//! [`Fleet`]: what the workers of one runtime share with each other and
//! with the control side — the workers' shared halves, the active
//! generation's registry, where the host's replies go, and the stop flag.
//!
//! A worker holds the fleet, never the runtime facade: the core does not
//! name the layer above it.

use molt_abi::ffi::*;

use super::{Remote, WorkerCore, WorkerShared, stale};
use crate::cont::id;
use crate::host::{Reply, ServiceResult};
use crate::module::registry::Registry;
use crate::module::{VersionId, VersionRef};
use crate::sync::{Arc, AtomicBool, Mutex, Ordering};

/// The workers of one runtime and what they share.
pub struct Fleet {
    workers: Vec<Arc<WorkerShared>>,
    replies: crossbeam_channel::Sender<Reply>,
    shutdown: AtomicBool,
    registry: Registry,
    /// Modules whose failure policy asks for a restart after a panic.
    restarts: Mutex<Vec<String>>,
}

impl Fleet {
    /// A fleet of `workers` whose host replies go to `replies`.
    pub(crate) fn new(
        workers: Vec<Arc<WorkerShared>>,
        replies: crossbeam_channel::Sender<Reply>,
        registry: Registry,
    ) -> Fleet {
        Fleet { workers, replies, shutdown: AtomicBool::new(false), registry, restarts: Mutex::new(Vec::new()) }
    }

    /// The workers' shared halves, by index.
    pub fn workers(&self) -> &[Arc<WorkerShared>] {
        &self.workers
    }

    /// The registry (the active generation).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Where modules' messages to the host (target 0) go.
    pub(crate) fn replies(&self) -> &crossbeam_channel::Sender<Reply> {
        &self.replies
    }

    /// Whether the runtime is stopping.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Tell every loop to stop.
    pub(crate) fn shut_down(&self) {
        self.shutdown.store(true, Ordering::Release);
    }

    /// Ask the control side to restart module `module` (its active version
    /// panicked and its `failure_policy` is `restart`): a fresh version from
    /// the same file and config, made by the ticker thread, never by a worker.
    pub fn request_restart(&self, module: &str) {
        let mut r = self.restarts.lock();
        if !r.iter().any(|m| m == module) {
            r.push(module.to_owned());
        }
    }

    /// The restarts asked for since the last call.
    pub(crate) fn take_restarts(&self) -> Vec<String> {
        std::mem::take(&mut *self.restarts.lock())
    }

    /// Run `f` on every worker's thread, between events, and collect the
    /// results in worker order. For the control side only: a worker that
    /// called this would wait for itself.
    pub(crate) fn broadcast<R: Send + 'static>(&self, f: impl Fn(&WorkerCore) -> R + Send + Sync + 'static) -> Vec<R> {
        let f = std::sync::Arc::new(f);
        let (tx, rx) = crossbeam_channel::unbounded();
        for w in &self.workers {
            let (f, tx) = (f.clone(), tx.clone());
            let i = w.index();
            w.post(Remote::Run(Box::new(move |core| {
                let _ = tx.send((i, f(core)));
            })));
        }
        drop(tx);
        let mut out: Vec<(u32, R)> = rx.iter().take(self.workers.len()).collect();
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, r)| r).collect()
    }

    /// The worker id `id` (a continuation's or a timer's) belongs to, and its parts.
    pub(crate) fn home(&self, id: u64) -> ServiceResult<(id::Parts, &Arc<WorkerShared>)> {
        let p = id::decode(id).ok_or_else(|| stale(id))?;
        let w = self.workers.get(p.worker as usize).ok_or_else(|| stale(id))?;
        Ok((p, w))
    }

    /// Like [`Fleet::home`], for a continuation that must be live now.
    pub(crate) fn live_home(&self, id: u64) -> ServiceResult<(id::Parts, &Arc<WorkerShared>)> {
        let (p, w) = self.home(id)?;
        if w.slots().is_live(p.slot, p.generation) { Ok((p, w)) } else { Err(stale(id)) }
    }

    /// Worker `index`, or why not.
    pub(crate) fn worker(&self, index: u32) -> ServiceResult<&Arc<WorkerShared>> {
        self.workers.get(index as usize).ok_or_else(|| {
            (MOLT_ERR_INVALID_ARG, format!("no worker {index} (this runtime has {})", self.workers.len()))
        })
    }
}

impl crate::module::reload::Workers for Fleet {
    fn hold(&self, versions: &[VersionId]) {
        let v = versions.to_vec();
        self.broadcast(move |w| w.hold(&v));
    }

    fn unhold(&self) -> usize {
        self.broadcast(|w| w.unhold()).into_iter().sum()
    }

    fn upgrade(&self, from: VersionId, to: &VersionRef) -> (usize, usize) {
        let to = to.clone();
        self.broadcast(move |w| w.upgrade_version(from, &to)).into_iter().fold((0, 0), |a, x| (a.0 + x.0, a.1 + x.1))
    }

    fn rebase_unstarted(&self, from: VersionId, to: &VersionRef) -> usize {
        let to = to.clone();
        self.broadcast(move |w| w.rebase_unstarted(from, &to)).into_iter().sum()
    }

    fn drain(&self, version: VersionId, deadline: std::time::Duration) -> usize {
        let ns = deadline.as_nanos() as u64;
        self.broadcast(move |w| w.drain_version(version, ns)).into_iter().sum()
    }

    fn end(&self, version: VersionId) -> usize {
        self.broadcast(move |w| w.end_version(version)).into_iter().sum()
    }
}
