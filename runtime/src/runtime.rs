//! [`Runtime`]: workers started together, the loader, the reaper, and the
//! calls the control plane, tests and benches make from outside the loops.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use molt_abi::ffi::*;

use crate::cont::id;
use crate::host::{Host, Reply, ServiceResult};
use crate::module::retire::{Reaper, Retiring};
use crate::module::{LoadError, Loader, ModuleSpec, ModuleVersion, UnloadReport, VersionRef};
use crate::sync::{Arc, AtomicBool, Mutex, Ordering};
use crate::worker::{self, Event, Payload, Remote, WorkerCore, WorkerShared};

/// How to start a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Worker threads (default: the number of CPUs).
    pub workers: usize,
    /// How long an idle worker spins before it parks (see docs/BENCHMARKS.md).
    pub spin: Duration,
    /// The run directory (runtime copies go to `versions/` under it).
    pub run_dir: PathBuf,
    /// Continuation slots per worker.
    pub max_continuations_per_worker: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            spin: Duration::from_micros(50),
            run_dir: std::env::temp_dir().join(format!("molt-{}", std::process::id())),
            max_continuations_per_worker: 1 << 18,
        }
    }
}

/// What every worker shares.
pub struct RuntimeShared {
    pub(crate) workers: Vec<Arc<WorkerShared>>,
    pub(crate) reaper: Arc<Reaper<ModuleVersion>>,
    pub(crate) replies: Sender<Reply>,
    shutdown: AtomicBool,
    unloads: Mutex<Vec<UnloadReport>>,
}

impl RuntimeShared {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Unload every version whose last reference went. Runs from a loop's
    /// top or from the control thread, never inside a module call.
    pub(crate) fn reap(&self) {
        for v in self.reaper.collect() {
            let report = v.unload();
            tracing::info!(module = %report.module, unmapped = report.unmapped, "module version unloaded");
            self.unloads.lock().push(report);
        }
    }
}

/// A running molt runtime.
pub struct Runtime {
    shared: Arc<RuntimeShared>,
    threads: Vec<JoinHandle<()>>,
    loader: Loader,
    replies: Receiver<Reply>,
}

impl Runtime {
    /// Start `config.workers` worker threads.
    pub fn start(config: RuntimeConfig) -> std::io::Result<Runtime> {
        let n = config.workers.clamp(1, id::MAX_WORKERS as usize);
        let mut polls = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let poll = mio::Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), mio::Token(usize::MAX))?;
            workers.push(Arc::new(WorkerShared::new(i as u32, waker, config.max_continuations_per_worker)));
            polls.push(poll);
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(RuntimeShared {
            workers,
            reaper: Arc::new(Reaper::default()),
            replies: tx,
            shutdown: AtomicBool::new(false),
            unloads: Mutex::new(Vec::new()),
        });
        let loader = Loader::new(Arc::new(Host::default()), &config.run_dir)?;
        let mut threads = Vec::with_capacity(n);
        for (i, poll) in polls.into_iter().enumerate() {
            let ws = shared.workers[i].clone();
            let rt = shared.clone();
            let spin = config.spin;
            threads.push(std::thread::Builder::new().name(format!("molt-worker-{i}")).spawn(move || {
                WorkerCore::new(ws, rt, spin).run(poll);
            })?);
        }
        Ok(Runtime { shared, threads, loader, replies: rx })
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.shared.workers.len()
    }

    /// The loader (and through it the shared host services).
    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    /// Load a module version; the returned reference keeps it loaded.
    pub fn load(&self, spec: &ModuleSpec) -> Result<VersionRef, LoadError> {
        let v = self.loader.load(spec)?;
        Ok(Retiring::new(v, self.shared.reaper.clone()))
    }

    /// Create a continuation of `version` on `worker` on the module's behalf
    /// (data NULL, the descriptor's handler). It first gets START with `tag`.
    pub fn spawn(&self, version: &VersionRef, worker: u32, tag: u64) -> ServiceResult<u64> {
        let w = self.worker(worker)?;
        worker::spawn_remote(w, version, None, core::ptr::null_mut(), tag, 0)
    }

    fn worker(&self, index: u32) -> ServiceResult<&Arc<WorkerShared>> {
        self.shared
            .workers
            .get(index as usize)
            .ok_or_else(|| (MOLT_ERR_INVALID_ARG, format!("no worker {index} (this runtime has {})", self.workers())))
    }

    /// Send a message from the host (source 0) to continuation `target`.
    pub fn send(&self, target: u64, tag: u64, data: &[u8]) -> ServiceResult<()> {
        let stale = || (MOLT_ERR_STALE, format!("continuation {target:#x} is not live"));
        let p = id::decode(target).ok_or_else(stale)?;
        let w = self.worker(p.worker)?;
        if !w.slots().is_live(p.slot, p.generation) {
            return Err(stale());
        }
        let ev = Event {
            target,
            source: 0,
            kind: MOLT_EV_MESSAGE,
            flags: 0,
            tag,
            arg0: 0,
            payload: Payload::copy_from(data),
        };
        w.post(Remote::Event(ev));
        Ok(())
    }

    /// End continuation `target` (it gets END).
    pub fn destroy(&self, target: u64) -> ServiceResult<()> {
        let p = id::decode(target).ok_or((MOLT_ERR_STALE, "id 0".to_owned()))?;
        let w = self.worker(p.worker)?;
        if !w.is_live(target) {
            return Err((MOLT_ERR_STALE, format!("continuation {target:#x} is not live")));
        }
        w.post(Remote::Destroy(target));
        Ok(())
    }

    /// Messages modules sent to the host (target 0).
    pub fn replies(&self) -> &Receiver<Reply> {
        &self.replies
    }

    /// Wait up to `timeout` for the next reply to the host.
    pub fn next_reply(&self, timeout: Duration) -> Option<Reply> {
        self.replies.recv_timeout(timeout).ok()
    }

    /// Run `f` on worker `index`'s thread and return its result.
    pub fn on_worker<R: Send + 'static>(
        &self,
        index: u32,
        f: impl FnOnce(&WorkerCore) -> R + Send + 'static,
    ) -> ServiceResult<R> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.worker(index)?.post(Remote::Run(Box::new(move |w| {
            let _ = tx.send(f(w));
        })));
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| (MOLT_ERR_SHUTDOWN, format!("worker {index} did not answer within 10 s")))
    }

    /// The counters of worker `index`.
    pub fn worker_stats(&self, index: usize) -> Option<&worker::WorkerStats> {
        self.shared.workers.get(index).map(|w| w.stats())
    }

    /// Sum of a counter over all workers.
    pub fn total(&self, f: impl Fn(&worker::WorkerStats) -> &crate::sync::AtomicU64) -> u64 {
        self.shared.workers.iter().map(|w| f(w.stats()).load(Ordering::Relaxed)).sum()
    }

    /// Unload versions whose last reference went (normally the loops do it).
    pub fn reap(&self) {
        self.shared.reap();
    }

    /// What has been unloaded so far.
    pub fn unloads(&self) -> Vec<UnloadReport> {
        self.shared.unloads.lock().clone()
    }

    /// Stop: every continuation gets a forced END, workers exit, retired
    /// versions are unloaded. Versions still referenced by the caller are
    /// unloaded when those references drop.
    pub fn shutdown(mut self) -> Vec<UnloadReport> {
        self.stop();
        self.unloads()
    }

    fn stop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for w in &self.shared.workers {
            w.post(Remote::Run(Box::new(|_| {})));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.shared.reap();
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}
