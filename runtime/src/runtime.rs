//! [`Runtime`]: workers started together, the loader, the registry, the
//! reaper, and the calls the control plane, tests and benches make from
//! outside the loops.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use molt_abi::ffi::*;

use crate::config::ModuleConfig;
use crate::cont::id;
use crate::host::{Host, Reply, ServiceResult};
use crate::module::registry::{Registry, RegistrySettings, ReloadError, ReloadRecord};
use crate::module::retire::{Reaper, Retiring};
use crate::module::{
    Holders, LoadError, Loader, ModuleMeta, ModuleSpec, ModuleVersion, UnloadReport, VersionId, VersionRef,
};
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
    /// Reload policy.
    pub registry: RegistrySettings,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            spin: Duration::from_micros(50),
            run_dir: std::env::temp_dir().join(format!("molt-{}", std::process::id())),
            max_continuations_per_worker: 1 << 18,
            registry: RegistrySettings::default(),
        }
    }
}

/// What the runtime knows of a version it loaded.
#[derive(Debug, Clone)]
pub struct VersionRecord {
    /// The version.
    pub meta: ModuleMeta,
    /// What holds it (shared with the version).
    pub holders: Arc<Holders>,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Set once it was unloaded (or found pinned).
    pub unloaded: Option<UnloadReport>,
}

/// What every worker and the control plane share.
pub struct RuntimeShared {
    pub(crate) workers: Vec<Arc<WorkerShared>>,
    pub(crate) reaper: Arc<Reaper<ModuleVersion>>,
    pub(crate) replies: Sender<Reply>,
    shutdown: AtomicBool,
    unloads: Mutex<Vec<UnloadReport>>,
    loader: Loader,
    registry: Registry,
    versions: Mutex<BTreeMap<VersionId, VersionRecord>>,
    run_dir: PathBuf,
}

/// Unloaded, unpinned version records kept for status.
const UNLOADED_KEPT: usize = 32;

impl RuntimeShared {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Unload every version whose last reference went. Runs from a loop's
    /// top or from the control thread, never inside a module call.
    pub fn reap(&self) {
        for v in self.reaper.collect() {
            let report = v.unload();
            tracing::info!(module = %report.module, version = %report.id, unmapped = report.unmapped, pinned = ?report.pinned, "module version unloaded");
            self.record_unload(&report);
            self.unloads.lock().push(report);
        }
    }

    fn record_unload(&self, report: &UnloadReport) {
        let mut versions = self.versions.lock();
        if let Some(r) = versions.get_mut(&report.id) {
            r.unloaded = Some(report.clone());
        }
        let gone: Vec<VersionId> = versions
            .iter()
            .filter(|(_, r)| r.unloaded.as_ref().is_some_and(|u| u.pinned.is_none()))
            .map(|(id, _)| *id)
            .collect();
        for id in gone.iter().take(gone.len().saturating_sub(UNLOADED_KEPT)) {
            versions.remove(id);
        }
    }

    /// Load a module version; the returned reference keeps it loaded.
    pub fn load(&self, spec: &ModuleSpec) -> Result<VersionRef, LoadError> {
        let v = self.loader.load(spec)?;
        let record = VersionRecord {
            meta: v.meta().clone(),
            holders: v.holders().clone(),
            loaded_at: SystemTime::now(),
            unloaded: None,
        };
        self.versions.lock().insert(v.id(), record);
        Ok(Retiring::new(v, self.reaper.clone()))
    }

    /// Whether version `id` is still loaded.
    pub fn is_loaded(&self, id: VersionId) -> bool {
        self.versions.lock().get(&id).is_some_and(|r| r.unloaded.is_none())
    }

    /// Loaded versions of module `name`, each with what holds it.
    pub fn loaded_versions(&self, name: &str) -> Vec<String> {
        let active = self.registry.active();
        self.versions
            .lock()
            .values()
            .filter(|r| r.meta.name == name && r.unloaded.is_none())
            .map(|r| {
                let in_gen = active.as_ref().is_some_and(|g| g.get(name).is_some_and(|v| v.id() == r.meta.id));
                format!(
                    "{} {} ({}) held by {} continuations, {} timers{}",
                    r.meta.name,
                    r.meta.version,
                    r.meta.id,
                    r.holders.conts.load(Ordering::Relaxed),
                    r.holders.timers.load(Ordering::Relaxed),
                    if in_gen { ", the active generation" } else { "" }
                )
            })
            .collect()
    }

    /// Every version record, by id.
    pub fn versions(&self) -> Vec<VersionRecord> {
        self.versions.lock().values().cloned().collect()
    }

    /// Run `f` on every worker's thread, between events, and collect the results.
    pub fn broadcast<R: Send + 'static>(&self, f: impl Fn(&WorkerCore) -> R + Send + Sync + 'static) -> Vec<R> {
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

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The workers' shared halves.
    pub fn workers(&self) -> &[Arc<WorkerShared>] {
        &self.workers
    }

    /// The loader.
    pub fn loader(&self) -> &Loader {
        &self.loader
    }
}

/// A running molt runtime.
pub struct Runtime {
    shared: Arc<RuntimeShared>,
    threads: Vec<JoinHandle<()>>,
    replies: Receiver<Reply>,
}

/// Remove runtime copies an earlier process left behind.
fn sweep_stale_copies(run_dir: &Path) -> std::io::Result<usize> {
    let dir = run_dir.join("versions");
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if std::fs::remove_dir_all(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    Ok(n)
}

impl Runtime {
    /// Start `config.workers` worker threads and the control-plane ticker.
    pub fn start(config: RuntimeConfig) -> std::io::Result<Runtime> {
        let n = config.workers.clamp(1, id::MAX_WORKERS as usize);
        std::fs::create_dir_all(&config.run_dir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config.run_dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let swept = sweep_stale_copies(&config.run_dir)?;
        if swept > 0 {
            tracing::info!(run_dir = %config.run_dir.display(), swept, "removed stale runtime copies of an earlier process");
        }
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
            loader: Loader::new(Arc::new(Host::default()), &config.run_dir)?,
            registry: Registry::new(&config.run_dir, config.registry.clone())?,
            versions: Mutex::new(BTreeMap::new()),
            run_dir: config.run_dir.clone(),
        });
        let mut threads = Vec::with_capacity(n + 1);
        for (i, poll) in polls.into_iter().enumerate() {
            let ws = shared.workers[i].clone();
            let rt = shared.clone();
            let spin = config.spin;
            threads.push(std::thread::Builder::new().name(format!("molt-worker-{i}")).spawn(move || {
                WorkerCore::new(ws, rt, spin).run(poll);
            })?);
        }
        let rt = shared.clone();
        threads.push(std::thread::Builder::new().name("molt-ticker".into()).spawn(move || {
            while !rt.is_shutting_down() {
                std::thread::sleep(Duration::from_millis(20));
                rt.registry.tick(&rt);
                rt.reap();
            }
        })?);
        Ok(Runtime { shared, threads, replies: rx })
    }

    /// The shared state (registry, versions, workers).
    pub fn shared(&self) -> &Arc<RuntimeShared> {
        &self.shared
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.shared.workers.len()
    }

    /// The loader (and through it the shared host services).
    pub fn loader(&self) -> &Loader {
        &self.shared.loader
    }

    /// Load a module version outside any generation; the returned
    /// reference keeps it loaded.
    pub fn load(&self, spec: &ModuleSpec) -> Result<VersionRef, LoadError> {
        self.shared.load(spec)
    }

    /// Make `modules` the active generation (first load or reload).
    pub fn reload(&self, modules: &[ModuleConfig]) -> Result<ReloadRecord, ReloadError> {
        self.shared.registry.reload(&self.shared, modules)
    }

    /// Re-activate the previous generation.
    pub fn rollback(&self) -> Result<ReloadRecord, ReloadError> {
        self.shared.registry.rollback(&self.shared)
    }

    /// The active version of module `name`.
    pub fn active(&self, name: &str) -> Option<VersionRef> {
        self.shared.registry.active().and_then(|g| g.get(name).cloned())
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
        // The active generation's references go last, then everything is reaped.
        self.shared.registry.clear();
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
