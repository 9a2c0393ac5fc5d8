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
#[cfg(not(molt_loom))]
use crate::host::StateHooks;
use crate::host::{Host, Reply, ServiceResult};
use crate::module::registry::{Registry, RegistrySettings, ReloadError, ReloadRecord};
use crate::module::retire::{Reaper, Retiring};
use crate::module::{
    Holders, LoadError, Loader, ModuleMeta, ModuleSpec, ModuleVersion, UnloadReport, VersionId, VersionRef,
};
use crate::state::Region;
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
    /// The state region.
    pub state: StateConfig,
    /// TCP proxy routes.
    pub tcp: Vec<crate::net::TcpRoute>,
    /// HTTP proxy listeners.
    pub http: Vec<crate::http::HttpSite>,
    /// Pin worker `i` to CPU `i` (modulo the CPUs allowed).
    pub pin_workers: bool,
}

/// Where module state lives.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// The state file; `None`: `<run_dir>/state.molt`.
    pub path: Option<PathBuf>,
    /// Its size when created.
    pub size: u64,
    /// Discard an existing file's contents (`molt run --reset-state`).
    pub reset: bool,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { path: None, size: 64 << 20, reset: false }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            spin: Duration::from_micros(50),
            run_dir: std::env::temp_dir().join(format!("molt-{}", std::process::id())),
            max_continuations_per_worker: 1 << 18,
            registry: RegistrySettings::default(),
            state: StateConfig::default(),
            tcp: Vec::new(),
            http: Vec::new(),
            pin_workers: false,
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
    /// Recent unload reports, oldest first, at most [`UNLOADS_KEPT`]: a
    /// runtime that swaps for months must not grow by a report per swap.
    unloads: Mutex<std::collections::VecDeque<UnloadReport>>,
    loader: Loader,
    registry: Registry,
    versions: Mutex<BTreeMap<VersionId, VersionRecord>>,
    run_dir: PathBuf,
    /// Versions whose events are held for a state migration.
    held: Mutex<Vec<VersionId>>,
    /// Migrations committed by the reload in progress (module, src, dst).
    migrations: Mutex<Vec<(String, u64, u64)>>,
    /// Blocks created since the last reload was published or refused, and
    /// the version that created each.
    created: Mutex<Vec<(String, VersionId, u64)>>,
    /// Modules whose failure policy asks for a restart after a panic.
    restarts: Mutex<Vec<String>>,
    /// Each worker's TCP proxy counters.
    tcp_stats: Vec<std::sync::Arc<crate::net::TcpStats>>,
    /// Each worker's HTTP proxy counters.
    http_stats: Vec<std::sync::Arc<crate::http::HttpStats>>,
}

/// Unloaded, unpinned version records kept for status.
const UNLOADED_KEPT: usize = 32;
/// Unload reports kept (the most recent).
pub const UNLOADS_KEPT: usize = 4096;

impl RuntimeShared {
    /// Ask the control plane to restart module `module` (its active version
    /// panicked and its `failure_policy` is `restart`): a fresh version from
    /// the same file and config, done by the ticker thread, never by a worker.
    pub fn request_restart(&self, module: &str) {
        let mut r = self.restarts.lock();
        if !r.iter().any(|m| m == module) {
            r.push(module.to_owned());
        }
    }

    /// Restart the modules asked for whose active version did panic.
    fn run_restarts(&self) {
        let asked = std::mem::take(&mut *self.restarts.lock());
        for m in asked {
            let panicked = self.registry.active().and_then(|g| g.get(&m).map(|v| v.has_panicked())).unwrap_or(false);
            if !panicked {
                continue;
            }
            match self.registry.restart(self, &m) {
                Ok(r) => {
                    tracing::warn!(module = %m, reload_id = r.id, "module restarted after a panic (failure_policy restart)")
                }
                Err(crate::module::registry::ReloadError::Busy) => self.request_restart(&m),
                Err(e) => tracing::error!(module = %m, "restart after a panic failed; the failed version stays: {e}"),
            }
        }
    }

    /// Worker `w`'s TCP proxy counters.
    pub fn tcp_stats(&self, w: usize) -> &crate::net::TcpStats {
        &self.tcp_stats[w]
    }

    /// Worker `w`'s HTTP proxy counters.
    pub fn http_stats(&self, w: usize) -> &crate::http::HttpStats {
        &self.http_stats[w]
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Unload every version whose last reference went. Runs on the control
    /// side (the ticker, a reload, shutdown), never on a worker and never
    /// inside a module call.
    pub fn reap(&self) {
        for v in self.reaper.collect() {
            let (module, schema) = (v.meta().name.clone(), v.meta().state_schema);
            let report = v.unload();
            tracing::info!(module = %report.module, version = %report.id, unmapped = report.unmapped, pinned = ?report.pinned, "module version unloaded");
            self.record_unload(&report);
            let mut u = self.unloads.lock();
            if u.len() == UNLOADS_KEPT {
                u.pop_front();
            }
            u.push_back(report);
            // Blocks retired by a migration away from `schema` are freed
            // once no loaded version of the module speaks it.
            let still = self
                .versions
                .lock()
                .values()
                .any(|r| r.unloaded.is_none() && r.meta.name == module && r.meta.state_schema == schema);
            if !still {
                self.loader.host().state.release_retired(&module, schema);
            }
        }
    }

    /// Release every hold taken for a state migration: held events run,
    /// on whatever version their continuation has now.
    pub(crate) fn release_holds(&self) {
        if std::mem::take(&mut *self.held.lock()).is_empty() {
            return;
        }
        let n: usize = self.broadcast(|w| w.unhold()).into_iter().sum();
        tracing::info!(events = n, "state migration done: held events released");
    }

    /// Undo the state changes of a refused reload whose candidates have ids
    /// from `candidates_from` on: the blocks they created are forgotten, the
    /// user-arg names they reserved last are forgotten, migrations reverted.
    pub(crate) fn revert_migrations(&self, candidates_from: VersionId) {
        let candidate = |by: VersionId| by >= candidates_from;
        let forgotten = self.loader.host().user_args.forget_newest(candidate);
        if !forgotten.is_empty() {
            tracing::info!(names = ?forgotten, "reload refused: user-arg names its candidates reserved are forgotten");
        }
        let mut created = self.created.lock();
        let (theirs, others): (Vec<_>, Vec<_>) = created.drain(..).partition(|(_, by, _)| candidate(*by));
        *created = others;
        drop(created);
        for (module, _, handle) in theirs {
            match self.loader.host().state.abort_migration(handle) {
                Ok(()) => {
                    tracing::info!(module = %module, "reload refused: the block its candidate created is forgotten")
                }
                Err((_, e)) => tracing::error!(module = %module, "forgetting a refused candidate's block failed: {e}"),
            }
        }
        for (module, src, dst) in std::mem::take(&mut *self.migrations.lock()).into_iter().rev() {
            match self.loader.host().state.revert_migration(src, dst) {
                Ok(()) => {
                    tracing::warn!(module = %module, "reload refused: state migration reverted, the old block is live again")
                }
                Err((_, e)) => tracing::error!(module = %module, "reverting a state migration failed: {e}"),
            }
        }
    }

    /// Forget the migrations of a published reload.
    pub(crate) fn keep_migrations(&self) -> Vec<String> {
        self.created.lock().clear();
        std::mem::take(&mut *self.migrations.lock()).into_iter().map(|(m, _, _)| m).collect()
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
        self.load_taken(spec, Loader::take(&spec.path)?)
    }

    /// [`RuntimeShared::load`] of bytes already taken in from `spec.path`.
    pub(crate) fn load_taken(
        &self,
        spec: &ModuleSpec,
        taken: crate::sys::files::Taken,
    ) -> Result<VersionRef, LoadError> {
        let loaded = self.loader.load_taken(spec, taken);
        if !self.registry.is_reloading() {
            // A load outside a reload owns the holds and migrations its init
            // made: nobody else will release them. (Its module's older
            // continuations are not adopted: a reload is the way to change
            // a schema under live continuations.)
            self.keep_migrations();
            self.release_holds();
        }
        let v = loaded?;
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

    /// The worker id `id` (a continuation's or a timer's) belongs to, and its parts.
    pub(crate) fn home(&self, id: u64) -> ServiceResult<(id::Parts, &Arc<WorkerShared>)> {
        let p = id::decode(id).ok_or_else(|| worker::stale(id))?;
        let w = self.workers.get(p.worker as usize).ok_or_else(|| worker::stale(id))?;
        Ok((p, w))
    }

    /// Like [`RuntimeShared::home`], for a continuation that must be live now.
    pub(crate) fn live_home(&self, id: u64) -> ServiceResult<(id::Parts, &Arc<WorkerShared>)> {
        let (p, w) = self.home(id)?;
        if w.slots().is_live(p.slot, p.generation) { Ok((p, w)) } else { Err(worker::stale(id)) }
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
    tcp_addrs: Vec<std::net::SocketAddr>,
    http_addrs: Vec<std::net::SocketAddr>,
    /// The run dir's instance lock, held for the runtime's life.
    _run_dir_lock: std::fs::File,
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

fn open_state(config: &RuntimeConfig) -> std::io::Result<Region> {
    let path = config.state.path.clone().unwrap_or_else(|| config.run_dir.join("state.molt"));
    Region::open_file(&path, config.state.size, config.state.reset).map_err(std::io::Error::other)
}

/// The runtime's side of state migrations (see [`StateHooks`]).
#[cfg(not(molt_loom))]
struct Hooks(std::sync::Weak<RuntimeShared>);

#[cfg(not(molt_loom))]
impl StateHooks for Hooks {
    fn quiesce(&self, module: &str, caller: VersionId, caller_adopts: bool) -> Result<(), (molt_status, String)> {
        let rt = self.0.upgrade().ok_or((MOLT_ERR_SHUTDOWN, "the runtime is stopping".to_owned()))?;
        let ids: Vec<VersionId> = rt
            .versions()
            .iter()
            .filter(|r| r.unloaded.is_none() && r.meta.name == module && r.meta.id != caller)
            .map(|r| r.meta.id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        // Hold first, count after: once every worker holds them, a
        // continuation of these versions created later never runs (its
        // events wait), so the count below is final for code that ran; those
        // created later are moved to the new version at publish. (Counting
        // before the hold missed continuations created in between.)
        let hold = ids.clone();
        rt.broadcast(move |w| w.hold(&hold));
        rt.held.lock().extend(ids.iter().copied());
        tracing::info!(module, versions = ?ids, "module quiesced for a state migration: its events are held");
        let live: usize = rt
            .versions()
            .iter()
            .filter(|r| ids.contains(&r.meta.id))
            .map(|r| r.holders.conts.load(Ordering::Relaxed))
            .sum();
        if live > 0 && !caller_adopts {
            return Err((
                MOLT_ERR_SCHEMA,
                format!(
                    "changing module {module}'s state schema with {live} live continuations of its older versions needs an adopt callback in the new version (they must move to it: old code may not touch migrated state); this version has none"
                ),
            ));
        }
        Ok(())
    }

    fn migrate_down(&self, module: &str, m: &molt_migration) -> Result<(), (molt_status, String)> {
        let rt = self.0.upgrade().ok_or((MOLT_ERR_SHUTDOWN, "the runtime is stopping".to_owned()))?;
        let newer = rt.registry.active().and_then(|g| g.get(module).cloned());
        let Some(v) = newer.filter(|v| v.meta().state_schema == m.from_schema) else {
            return Err((
                MOLT_ERR_SCHEMA,
                format!(
                    "no loaded version of {module} speaks schema {} to migrate it down to {}: the block was written by a newer version (a downgrade that did not finish, or a rollback across a restart). Configure a version of {module} that speaks schema {} (it can then be rolled back with its down-migration), or discard the state with --reset-state",
                    m.from_schema, m.to_schema, m.from_schema
                ),
            ));
        };
        if v.meta().module_caps & MOLT_MOD_CAP_MIGRATE_DOWN == 0 || v.meta().callbacks.migrate.is_none() {
            return Err((
                MOLT_ERR_SCHEMA,
                format!(
                    "going back from schema {} to {} needs {} {}'s down-migration, and it does not offer one (MOLT_MOD_CAP_MIGRATE_DOWN)",
                    m.from_schema,
                    m.to_schema,
                    module,
                    v.meta().version
                ),
            ));
        }
        v.migrate(m).map_err(|e| (e.status, e.to_string()))
    }

    fn migrated(&self, module: &str, src: u64, dst: u64) {
        if let Some(rt) = self.0.upgrade() {
            rt.migrations.lock().push((module.to_owned(), src, dst));
        }
    }

    fn created(&self, module: &str, by: VersionId, handle: u64) {
        if let Some(rt) = self.0.upgrade() {
            rt.created.lock().push((module.to_owned(), by, handle));
        }
    }
}

/// Where posters deliver: this runtime's workers (held weakly, so a poster
/// a module leaks does not keep the runtime alive).
#[cfg(not(molt_loom))]
struct PostTo(std::sync::Weak<RuntimeShared>);

#[cfg(not(molt_loom))]
impl crate::host::PostSink for PostTo {
    fn post(&self, _from: VersionId, target: u64, tag: u64, data: &[u8]) -> ServiceResult<()> {
        let rt = self.0.upgrade().ok_or((MOLT_ERR_SHUTDOWN, "the runtime stopped".to_owned()))?;
        if rt.is_shutting_down() {
            return Err((MOLT_ERR_SHUTDOWN, "the runtime is stopping".to_owned()));
        }
        let (_, w) = rt.live_home(target)?;
        let ev = Event {
            target,
            source: 0,
            kind: MOLT_EV_MESSAGE,
            flags: 0,
            tag,
            arg0: 0,
            payload: Payload::copy_from(data),
        };
        w.post_posted(ev)
    }
}

/// Bind `addr` once per worker (`SO_REUSEPORT`); a port 0 is resolved by
/// the first bind and reused by the others. The listeners and the address.
fn bind_workers(
    addr: std::net::SocketAddr,
    workers: usize,
    what: &str,
) -> std::io::Result<(Vec<std::net::TcpListener>, std::net::SocketAddr)> {
    let mut addr = addr;
    if addr.port() != 0 {
        crate::net::ensure_unserved(addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{what}: cannot listen on {addr}: {e}")))?;
    }
    let mut out = Vec::with_capacity(workers);
    for w in 0..workers {
        let l = crate::net::bind_reuseport(addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{what}: cannot listen on {addr} (worker {w}): {e}")))?;
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok((out, addr))
}

impl Runtime {
    /// Start `config.workers` worker threads and the control-plane ticker.
    pub fn start(config: RuntimeConfig) -> std::io::Result<Runtime> {
        let n = config.workers.clamp(1, id::MAX_WORKERS as usize);
        // Trust the run dir, then hold it, before anything in it is touched.
        crate::sys::files::ensure_private_dir(&config.run_dir).map_err(std::io::Error::other)?;
        let run_dir_lock = crate::sys::files::lock_run_dir(&config.run_dir).map_err(std::io::Error::other)?;
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
        let (tx, rx) = crossbeam_channel::bounded(crate::host::HOST_REPLIES_MAX);
        let shared = Arc::new(RuntimeShared {
            workers,
            reaper: Arc::new(Reaper::default()),
            replies: tx,
            shutdown: AtomicBool::new(false),
            unloads: Mutex::new(std::collections::VecDeque::new()),
            loader: Loader::new(Arc::new(Host::new(open_state(&config)?)), &config.run_dir)?,
            registry: Registry::new(&config.run_dir, config.registry.clone())?,
            versions: Mutex::new(BTreeMap::new()),
            run_dir: config.run_dir.clone(),
            held: Mutex::new(Vec::new()),
            migrations: Mutex::new(Vec::new()),
            created: Mutex::new(Vec::new()),
            restarts: Mutex::new(Vec::new()),
            tcp_stats: (0..n).map(|_| std::sync::Arc::default()).collect(),
            http_stats: (0..n).map(|_| std::sync::Arc::default()).collect(),
        });
        #[cfg(not(molt_loom))]
        shared.loader.host().set_hooks(Box::new(Hooks(Arc::downgrade(&shared))));
        #[cfg(not(molt_loom))]
        shared.loader.host().set_post_sink(std::sync::Arc::new(PostTo(Arc::downgrade(&shared))));
        // Each worker binds every listener itself (SO_REUSEPORT).
        let mut tcp_addrs = Vec::with_capacity(config.tcp.len());
        let mut per_worker: Vec<Vec<(crate::net::TcpRoute, std::net::TcpListener)>> =
            (0..n).map(|_| Vec::new()).collect();
        for route in &config.tcp {
            let (listeners, addr) = bind_workers(route.listen, n, "TCP route")?;
            for (list, l) in per_worker.iter_mut().zip(listeners) {
                list.push((route.clone(), l));
            }
            tcp_addrs.push(addr);
        }
        let mut http_addrs = Vec::with_capacity(config.http.len());
        let mut http_per_worker: Vec<Vec<(std::sync::Arc<crate::http::HttpSite>, std::net::TcpListener)>> =
            (0..n).map(|_| Vec::new()).collect();
        for site in &config.http {
            let (listeners, addr) = bind_workers(site.listen, n, &format!("HTTP listener {}", site.name))?;
            let site = std::sync::Arc::new(crate::http::HttpSite { listen: addr, ..site.clone() });
            for (list, l) in http_per_worker.iter_mut().zip(listeners) {
                list.push((site.clone(), l));
            }
            http_addrs.push(addr);
        }
        let mut threads = Vec::with_capacity(n + 1);
        for (i, ((poll, tcp), http)) in polls.into_iter().zip(per_worker).zip(http_per_worker).enumerate() {
            let tcp_stats = shared.tcp_stats[i].clone();
            let http_stats = shared.http_stats[i].clone();
            let setup: Option<crate::worker::io::IoSetup> = if tcp.is_empty() && http.is_empty() {
                None
            } else {
                Some(Box::new(move |registry: &mio::Registry, worker: u32| {
                    let mut layers: Vec<Box<dyn crate::worker::io::Io>> = Vec::new();
                    if !tcp.is_empty() {
                        match crate::net::TcpLayer::new(layers.len(), registry, tcp, tcp_stats) {
                            Ok(l) => layers.push(Box::new(l)),
                            Err(e) => tracing::error!(worker, "cannot register the TCP listeners: {e}"),
                        }
                    }
                    if !http.is_empty() {
                        match crate::http::HttpLayer::new(layers.len(), worker, registry, http, http_stats) {
                            Ok(l) => layers.push(Box::new(l)),
                            Err(e) => tracing::error!(worker, "cannot register the HTTP listeners: {e}"),
                        }
                    }
                    layers
                }))
            };
            let ws = shared.workers[i].clone();
            let rt = shared.clone();
            let spin = config.spin;
            let pin = config.pin_workers;
            threads.push(std::thread::Builder::new().name(format!("molt-worker-{i}")).spawn(move || {
                if pin {
                    match crate::sys::cpu::pin_current_thread(i) {
                        Ok(cpu) => tracing::debug!(worker = i, cpu, "worker pinned"),
                        Err(e) => tracing::warn!(worker = i, "cannot pin the worker: {e}"),
                    }
                }
                WorkerCore::new(ws, rt, spin).run(poll, setup);
            })?);
        }
        let rt = shared.clone();
        let ticker = std::thread::Builder::new().name("molt-ticker".into()).spawn(move || {
            // Woken by the reaper when a version's last reference went (on a
            // worker, say), else every 20 ms for deadlines and restarts.
            rt.reaper.set_collector(std::thread::current());
            while !rt.is_shutting_down() {
                std::thread::park_timeout(Duration::from_millis(20));
                rt.registry.tick(&rt);
                rt.run_restarts();
                rt.reap();
            }
        })?;
        threads.push(ticker);
        Ok(Runtime { shared, threads, replies: rx, tcp_addrs, http_addrs, _run_dir_lock: run_dir_lock })
    }

    /// The addresses the TCP routes listen on, in config order (port 0 resolved).
    pub fn tcp_addrs(&self) -> &[std::net::SocketAddr] {
        &self.tcp_addrs
    }

    /// The addresses the HTTP listeners bound, in config order.
    pub fn http_addrs(&self) -> &[std::net::SocketAddr] {
        &self.http_addrs
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
        let (_, w) = self.shared.live_home(target)?;
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
        let (_, w) = self.shared.live_home(target)?;
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

    /// The most recent unloads (at most [`UNLOADS_KEPT`]), oldest first.
    pub fn unloads(&self) -> Vec<UnloadReport> {
        self.shared.unloads.lock().iter().cloned().collect()
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
        if let Err(e) = self.shared.loader.host().state.flush() {
            tracing::error!("flushing the state file failed: {e}");
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}
