//! [`Runtime`]: workers started together, the loader, the registry, the
//! reaper, and the calls the control plane, tests and benches make from
//! outside the loops.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::Receiver;
use molt_abi::ffi::*;

use crate::cont::id;
use crate::host::{Host, Reply, ServiceResult};
use crate::module::ModuleConfig;
use crate::module::registry::{Registry, RegistrySettings, ReloadError, ReloadRecord};
#[cfg(not(molt_loom))]
use crate::module::reload::ReloadHooks;
use crate::module::reload::{Reload, ReloadHost, VersionRecord, Workers};
use crate::module::retire::{Reaper, Retiring};
use crate::module::{LoadError, Loader, ModuleSpec, ModuleVersion, UnloadReport, VersionId, VersionRef};
use crate::state::Region;
use crate::sync::{Arc, Mutex, Ordering};
use crate::worker::{self, Event, Fleet, Remote, WorkerCore, WorkerShared};

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
    /// Modules run in child processes (`isolation = "process"`).
    pub isolated: Vec<crate::module::spec::IsolatedConfig>,
    /// The `molt` binary their children run (default: this process's own).
    pub molt_bin: Option<PathBuf>,
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
            isolated: Vec::new(),
            molt_bin: None,
        }
    }
}

/// What a process starts with from the one it replaces (a binary upgrade):
/// the very descriptors, so nothing queued on them is lost.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The run dir's instance lock (`<run_dir>/molt.lock`, locked).
    pub run_dir_lock: Option<std::fs::File>,
    /// The state file, open and locked.
    pub state_file: Option<std::fs::File>,
    /// Listening sockets by listener key (`http:<site>`, `tcp:<route
    /// index>`), one per worker of the old process.
    pub listeners: BTreeMap<String, Vec<std::net::TcpListener>>,
    /// Start without accepting: [`RuntimeShared::set_accepting`] begins.
    pub paused: bool,
}

/// What every worker and the control plane share.
pub struct RuntimeShared {
    /// The workers and what they share (the registry among it).
    fleet: Arc<Fleet>,
    pub(crate) reaper: Arc<Reaper<ModuleVersion>>,
    /// Recent unload reports, oldest first, at most [`UNLOADS_KEPT`]: a
    /// runtime that swaps for months must not grow by a report per swap.
    unloads: Mutex<std::collections::VecDeque<UnloadReport>>,
    loader: Loader,
    versions: Mutex<BTreeMap<VersionId, VersionRecord>>,
    run_dir: PathBuf,
    /// The HTTP sites served now: each as configured (its listen address
    /// as the config says it, port 0 included) and as running (resolved).
    http_sites: Mutex<Vec<(std::net::SocketAddr, std::sync::Arc<crate::http::HttpSite>)>>,
    /// Whether the workers have an HTTP layer (the start config had sites).
    http_layer: bool,
    /// One config reload at a time, its site work included (the registry's
    /// own lock covers only the modules).
    config_reload: Mutex<()>,
    /// The TCP routes as configured at start (they do not reload).
    tcp_routes: Vec<crate::net::TcpRoute>,
    /// Each worker's TCP proxy counters.
    tcp_stats: Vec<std::sync::Arc<crate::net::TcpStats>>,
    /// Each worker's HTTP proxy counters.
    http_stats: Vec<std::sync::Arc<crate::http::HttpStats>>,
    /// The run dir's instance lock, held for the runtime's life (a binary
    /// upgrade hands this very descriptor over).
    run_dir_lock: std::fs::File,
    /// The isolated modules' supervisors serving new transactions.
    isolated: Mutex<Vec<Arc<crate::isolate::Supervisor>>>,
    /// Those a swap replaced, until their transactions are done.
    isolated_retiring: Mutex<Vec<Arc<crate::isolate::Supervisor>>>,
    /// The binary isolated modules' children run.
    molt_bin: PathBuf,
    /// The digest of the config last loaded whole (see
    /// [`crate::ctl::ConfigSource::digest`]), for a binary upgrade's check.
    config_digest: Mutex<Option<String>>,
}

/// The control side reaches the workers' shared parts (the registry, the
/// workers, broadcast) through the fleet the runtime owns.
impl std::ops::Deref for RuntimeShared {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

/// Unloaded, unpinned version records kept for status.
const UNLOADED_KEPT: usize = 32;
/// Unload reports kept (the most recent).
pub const UNLOADS_KEPT: usize = 4096;

impl RuntimeShared {
    /// Restart the modules asked for whose active version did panic.
    fn run_restarts(&self) {
        let asked = self.take_restarts();
        for m in asked {
            let panicked = self.registry().active().and_then(|g| g.get(&m).map(|v| v.has_panicked())).unwrap_or(false);
            if !panicked {
                continue;
            }
            match self.registry().restart(self, &m) {
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
                .any(|r| r.is_loaded() && r.meta.name == module && r.meta.state_schema == schema);
            if !still {
                self.loader.host().state.release_retired(&module, schema);
            }
        }
    }

    /// Reload the whole config: modules, and HTTP sites with their routes,
    /// upstream groups and listeners (see `docs/reload.md`). New listeners
    /// are bound first (a failure refuses the reload, nothing applied);
    /// then the modules' transaction runs; once it is published, every
    /// worker applies the sites between its events: a removed site stops
    /// accepting, a changed one serves new transactions with its new routes
    /// and upstreams, a new one accepts. TCP routes need a restart: a
    /// config that changes them is refused.
    pub fn reload_config(
        &self,
        modules: &[ModuleConfig],
        http: &[crate::http::HttpSite],
        tcp: &[crate::net::TcpRoute],
    ) -> Result<ReloadRecord, ReloadError> {
        // Like the registry: a reload asked for while another runs waits its
        // turn, up to 30 s; the sites are planned against what that one left.
        let Some(_one_at_a_time) = self.config_reload.try_lock_for(Duration::from_secs(30)) else {
            return Err(ReloadError::Busy);
        };
        if tcp != self.tcp_routes.as_slice() {
            return Err(ReloadError::Layer(
                "the config changes [[tcp]] routes, which a reload does not apply: restart molt for them (modules and HTTP sites reload)".into(),
            ));
        }
        if !http.is_empty() && !self.http_layer {
            return Err(ReloadError::Layer(
                "this molt started without HTTP listeners, so its workers have no HTTP layer: restart it to add the first".into(),
            ));
        }
        // Bind what is new before anything changes.
        let n = self.workers().len();
        let current = self.http_sites.lock().clone();
        let mut planned: Vec<(std::net::SocketAddr, std::sync::Arc<crate::http::HttpSite>)> = Vec::new();
        let mut bound: Vec<Vec<std::net::TcpListener>> = Vec::new();
        for site in http {
            let same = current.iter().find(|(configured, run)| {
                run.name == site.name && (site.listen == *configured || site.listen == run.listen)
            });
            match same {
                Some((configured, run)) => {
                    planned.push((
                        *configured,
                        std::sync::Arc::new(crate::http::HttpSite { listen: run.listen, ..site.clone() }),
                    ));
                    bound.push(Vec::new());
                }
                None => {
                    let (listeners, addr) = bind_workers(site.listen, n, &format!("HTTP listener {}", site.name))
                        .map_err(|e| ReloadError::Layer(format!("{e}; the reload is refused, nothing changed")))?;
                    planned.push((
                        site.listen,
                        std::sync::Arc::new(crate::http::HttpSite { listen: addr, ..site.clone() }),
                    ));
                    bound.push(listeners);
                }
            }
        }
        let record = self.registry().reload(self, modules)?;
        // Published: each worker takes its share of the new listeners.
        let mut per_worker: Vec<Vec<crate::http::SitePlan>> = (0..n).map(|_| Vec::new()).collect();
        for ((_, site), listeners) in planned.iter().zip(bound) {
            let mut listeners = listeners.into_iter().map(Some).collect::<Vec<_>>();
            listeners.resize_with(n, || None);
            for (w, l) in listeners.into_iter().enumerate() {
                per_worker[w].push(crate::http::SitePlan { site: site.clone(), listener: l });
            }
        }
        if self.http_layer {
            let plans: std::sync::Arc<Vec<Mutex<Option<Vec<crate::http::SitePlan>>>>> =
                std::sync::Arc::new(per_worker.into_iter().map(|p| Mutex::new(Some(p))).collect());
            self.broadcast(move |w| {
                let plan = plans[w.index() as usize].lock().take().unwrap_or_default();
                if let Some(l) = w.layer::<crate::http::HttpLayer>() {
                    l.reconfigure(plan);
                }
            });
        }
        *self.http_sites.lock() = planned;
        Ok(record)
    }

    /// The address HTTP site `name` listens on now.
    pub fn http_addr(&self, name: &str) -> Option<std::net::SocketAddr> {
        self.http_sites.lock().iter().find(|(_, s)| s.name == name).map(|(_, s)| s.listen)
    }

    fn record_unload(&self, report: &UnloadReport) {
        let mut versions = self.versions.lock();
        if let Some(r) = versions.get_mut(&report.id) {
            let s = std::mem::replace(&mut r.stage, crate::module::Stage::Loaded);
            r.stage = s.unloaded(report.clone());
        }
        let gone: Vec<VersionId> = versions
            .iter()
            .filter(|(_, r)| matches!(r.stage, crate::module::Stage::Unloaded(_)))
            .map(|(id, _)| *id)
            .collect();
        for id in gone.iter().take(gone.len().saturating_sub(UNLOADED_KEPT)) {
            versions.remove(id);
        }
    }

    /// Load a module version outside any generation; the returned
    /// reference keeps it loaded. It is a transaction of its own: what its
    /// init does to state (a first load's migration) is kept if it loads,
    /// undone if it does not.
    pub fn load(&self, spec: &ModuleSpec) -> Result<VersionRef, LoadError> {
        let taken = Loader::take(&spec.path)?;
        let mut txn = Reload::begin(self);
        let v = txn.load(spec, taken)?;
        txn.publish().finish();
        Ok(v)
    }

    /// Load a version from bytes taken in from `spec.path` (a reload's
    /// candidate: the caller's transaction owns its state work).
    fn load_taken(&self, spec: &ModuleSpec, taken: crate::sys::files::Taken) -> Result<VersionRef, LoadError> {
        let v = self.loader.load_taken(spec, taken)?;
        let record = VersionRecord {
            meta: v.meta().clone(),
            holders: v.holders().clone(),
            loaded_at: SystemTime::now(),
            stage: crate::module::Stage::Loaded,
        };
        self.versions.lock().insert(v.id(), record);
        Ok(Retiring::new(v, self.reaper.clone()))
    }

    /// Whether version `id` is still loaded.
    pub fn is_loaded(&self, id: VersionId) -> bool {
        self.versions.lock().get(&id).is_some_and(|r| r.is_loaded())
    }

    /// Loaded versions of module `name`, each with what holds it.
    pub fn loaded_versions(&self, name: &str) -> Vec<String> {
        crate::module::registry::loaded_versions(self, name)
    }

    /// Every version record, by id.
    pub fn versions(&self) -> Vec<VersionRecord> {
        self.versions.lock().values().cloned().collect()
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The workers and what they share.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    /// The loader.
    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    /// Record the digest of the config just loaded whole.
    pub fn set_config_digest(&self, digest: String) {
        *self.config_digest.lock() = Some(digest);
    }

    /// The digest of the config last loaded whole.
    pub fn config_digest(&self) -> Option<String> {
        self.config_digest.lock().clone()
    }

    /// Run `f` with config reloads held off (they wait for it, up to their
    /// 30 s): a binary upgrade runs so.
    pub fn without_reloads<R>(&self, f: impl FnOnce() -> R) -> Result<R, ReloadError> {
        let Some(_held) = self.config_reload.try_lock_for(Duration::from_secs(30)) else {
            return Err(ReloadError::Busy);
        };
        Ok(f())
    }

    /// The isolated modules' supervisors serving new transactions.
    pub fn isolated(&self) -> Vec<Arc<crate::isolate::Supervisor>> {
        self.isolated.lock().clone()
    }

    /// Those a swap replaced, still finishing their transactions.
    pub fn isolated_retiring(&self) -> Vec<Arc<crate::isolate::Supervisor>> {
        self.isolated_retiring.lock().clone()
    }

    /// Start a supervisor for `cfg` (a swap's new version), waiting up to
    /// 10 s for its child to be ready.
    pub fn start_isolated(&self, cfg: crate::module::spec::IsolatedConfig) -> Arc<crate::isolate::Supervisor> {
        crate::isolate::Supervisor::start(
            cfg,
            self.molt_bin.clone(),
            self.run_dir.clone(),
            self.workers().len(),
            self.loader.host().clone(),
        )
    }

    /// Publish a swap of isolated modules: `new` serve new transactions on
    /// every worker from now on; the supervisors they replace, and
    /// `removed`, serve the transactions that began on them, and are stopped
    /// once no worker has one left (or after the drain deadline).
    pub fn swap_isolated(
        &self,
        new: Vec<Arc<crate::isolate::Supervisor>>,
        removed: Vec<Arc<crate::isolate::Supervisor>>,
    ) {
        let news = new.clone();
        self.broadcast(move |w| {
            if let Some(l) = w.layer::<crate::http::HttpLayer>() {
                l.add_isolated(&news);
            }
        });
        let mut old: Vec<Arc<crate::isolate::Supervisor>> = removed;
        {
            let mut current = self.isolated.lock();
            for n in new {
                if let Some(i) = current.iter().position(|s| s.config().name == n.config().name) {
                    old.push(std::mem::replace(&mut current[i], n));
                } else {
                    current.push(n);
                }
            }
            current.retain(|s| !old.iter().any(|o| Arc::ptr_eq(o, s)));
        }
        if old.is_empty() {
            return;
        }
        for o in &old {
            o.set_draining();
        }
        self.isolated_retiring.lock().extend(old);
    }

    /// Stop the retiring supervisors no transaction uses any more (or
    /// whose drain deadline passed): the ticker's work, between its turns.
    fn drain_isolated(&self) {
        let retiring = self.isolated_retiring();
        if retiring.is_empty() {
            return;
        }
        let deadline = self.registry().settings().drain_deadline;
        for sup in retiring {
            let s = sup.clone();
            let in_use: usize = self
                .broadcast(move |w| w.layer::<crate::http::HttpLayer>().map_or(0, |l| l.isolated_in_use(&s)))
                .into_iter()
                .sum();
            let late = sup.draining_for().is_some_and(|d| d > deadline);
            if in_use == 0 || late {
                if late && in_use > 0 {
                    tracing::warn!(module = %sup.config().name, in_use, "isolated module: the drain deadline passed; its old child is stopped with transactions on it");
                }
                sup.stop();
                self.isolated_retiring.lock().retain(|x| !Arc::ptr_eq(x, &sup));
                tracing::info!(module = %sup.config().name, "isolated module: the old child drained and stopped");
            }
        }
    }

    /// The run dir's instance lock.
    pub fn run_dir_lock(&self) -> &std::fs::File {
        &self.run_dir_lock
    }

    /// Every worker accepts on its listeners (`on`), or stops: `false`
    /// closes this process's listening sockets (a binary upgrade's old
    /// process, after the new one took them); connections go on.
    pub(crate) fn set_accepting(&self, on: bool) {
        // The caller's span (a binary upgrade's, with its id) goes along.
        let span = tracing::Span::current();
        self.broadcast(move |w| {
            let _in = span.enter();
            for l in w.layers() {
                l.accepting(w, on);
            }
        });
    }

    /// Take over from the process that handed this one its descriptors (a
    /// binary upgrade's `go`): become the state directory's writer, accept
    /// on the listeners, and name this process in the run dir's lock.
    pub fn take_over(&self) -> Result<(), String> {
        self.loader.host().state.take_writer().map_err(|e| e.to_string())?;
        self.set_accepting(true);
        if let Err(e) = crate::sys::files::record_pid(&self.run_dir_lock) {
            tracing::warn!("cannot write this pid into the run dir's lock file: {e}");
        }
        Ok(())
    }

    /// Duplicates of every listening socket, by listener key, in worker order.
    pub(crate) fn listener_fds(&self) -> BTreeMap<String, Vec<std::os::fd::OwnedFd>> {
        let per_worker = self.broadcast(|w| w.layers().iter().flat_map(|l| l.listener_fds()).collect::<Vec<_>>());
        let mut out: BTreeMap<String, Vec<std::os::fd::OwnedFd>> = BTreeMap::new();
        for (key, fd) in per_worker.into_iter().flatten() {
            out.entry(key).or_default().push(fd);
        }
        out
    }

    /// Ask every layer's clients to go (the process is about to exit).
    pub fn wind_down(&self) {
        self.broadcast(|w| {
            for l in w.layers() {
                l.wind_down(w);
            }
        });
    }

    /// Connections served now, over every worker and layer.
    pub fn open_connections(&self) -> usize {
        self.broadcast(|w| w.layers().iter().map(|l| l.open_connections()).sum::<usize>()).into_iter().sum()
    }
}

/// A running molt runtime.
pub struct Runtime {
    shared: Arc<RuntimeShared>,
    threads: Vec<JoinHandle<()>>,
    replies: Receiver<Reply>,
    tcp_addrs: Vec<std::net::SocketAddr>,
    http_addrs: Vec<std::net::SocketAddr>,
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

fn open_state(config: &RuntimeConfig, inherited: Option<std::fs::File>) -> std::io::Result<Region> {
    let path = config.state.path.clone().unwrap_or_else(|| config.run_dir.join("state.molt"));
    match inherited {
        Some(file) => Region::open_handed_over(file, &path).map_err(std::io::Error::other),
        None => Region::open_file(&path, config.state.size, config.state.reset).map_err(std::io::Error::other),
    }
}

/// The instance lock handed over with `file`, checked to be `run_dir`'s.
fn inherited_lock(run_dir: &Path, file: std::fs::File) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let path = run_dir.join("molt.lock");
    let on_disk = std::fs::symlink_metadata(&path)?;
    let held = file.metadata()?;
    if (on_disk.dev(), on_disk.ino()) != (held.dev(), held.ino()) {
        return Err(std::io::Error::other(format!(
            "the instance lock handed over is not {}: the new process must use the run dir of the running one",
            path.display()
        )));
    }
    Ok(file)
}

/// The listeners for `key`: inherited ones (exactly one per worker), else
/// bound here.
fn listeners_for(
    inherited: &mut Inherited,
    key: &str,
    addr: std::net::SocketAddr,
    workers: usize,
    what: &str,
) -> std::io::Result<(Vec<std::net::TcpListener>, std::net::SocketAddr)> {
    let Some(ls) = inherited.listeners.remove(key) else { return bind_workers(addr, workers, what) };
    if ls.len() != workers {
        return Err(std::io::Error::other(format!(
            "{what}: {} listening sockets handed over for {workers} workers: run the new process with the old one's worker count",
            ls.len()
        )));
    }
    let got = ls[0].local_addr()?;
    if addr.port() != 0 && got != addr {
        return Err(std::io::Error::other(format!(
            "{what}: the socket handed over listens on {got}, the config says {addr}"
        )));
    }
    for l in &ls {
        l.set_nonblocking(true)?;
    }
    Ok((ls, got))
}

impl ReloadHost for RuntimeShared {
    fn all_workers(&self) -> &dyn Workers {
        &*self.fleet
    }
    fn load_version(&self, spec: &ModuleSpec, taken: crate::sys::files::Taken) -> Result<VersionRef, LoadError> {
        self.load_taken(spec, taken)
    }
    fn version_records(&self) -> Vec<VersionRecord> {
        self.versions()
    }
    fn host(&self) -> &Host {
        self.loader.host()
    }
    fn registry(&self) -> &Registry {
        self.fleet.registry()
    }
    fn reap(&self) {
        RuntimeShared::reap(self)
    }
    fn due(&self, now: std::time::Instant) -> Vec<VersionId> {
        self.versions.lock().values().filter(|r| r.stage.due(now)).map(|r| r.meta.id).collect()
    }
    fn set_stage(&self, id: VersionId, to: &mut dyn FnMut(crate::module::Stage) -> crate::module::Stage) {
        if let Some(r) = self.versions.lock().get_mut(&id) {
            let s = std::mem::replace(&mut r.stage, crate::module::Stage::Loaded);
            r.stage = to(s);
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
        let ev = Event::from_host(target, tag, data);
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
        Self::start_with(config, Inherited::default())
    }

    /// Start with what the process this one replaces handed over (a binary
    /// upgrade): its run dir lock, state file and listening sockets; with
    /// `paused`, the workers accept only from
    /// [`RuntimeShared::set_accepting`]. What `inherited` lacks is made
    /// here, as [`Runtime::start`] does.
    pub fn start_with(config: RuntimeConfig, mut inherited: Inherited) -> std::io::Result<Runtime> {
        let n = config.workers.clamp(1, id::MAX_WORKERS as usize);
        // Trust the run dir, then hold it, before anything in it is touched.
        crate::sys::files::ensure_private_dir(&config.run_dir).map_err(std::io::Error::other)?;
        let run_dir_lock = match inherited.run_dir_lock.take() {
            Some(f) => inherited_lock(&config.run_dir, f)?,
            None => {
                let lock = crate::sys::files::lock_run_dir(&config.run_dir).map_err(std::io::Error::other)?;
                // Copies of an earlier process are stale only when no process
                // runs here (an upgrade's old process still uses its own).
                let swept = sweep_stale_copies(&config.run_dir)?;
                if swept > 0 {
                    tracing::info!(run_dir = %config.run_dir.display(), swept, "removed stale runtime copies of an earlier process");
                }
                lock
            }
        };
        let mut polls = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let poll = mio::Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), mio::Token(usize::MAX))?;
            workers.push(Arc::new(WorkerShared::new(i as u32, waker, config.max_continuations_per_worker)));
            polls.push(poll);
        }
        // Isolated modules' children start first: the workers' HTTP layers
        // link to them.
        // They share the state region (their blocks are created in it here).
        let host = Arc::new(Host::new(open_state(&config, inherited.state_file.take())?));
        let molt_bin =
            config.molt_bin.clone().or_else(|| std::env::current_exe().ok()).unwrap_or_else(|| "molt".into());
        let isolated: Vec<Arc<crate::isolate::Supervisor>> = config
            .isolated
            .iter()
            .map(|c| {
                crate::isolate::Supervisor::start(c.clone(), molt_bin.clone(), config.run_dir.clone(), n, host.clone())
            })
            .collect();
        let (tx, rx) = crossbeam_channel::bounded(crate::host::HOST_REPLIES_MAX);
        let fleet = Arc::new(Fleet::new(workers, tx, Registry::new(&config.run_dir, config.registry.clone())?));
        let shared = Arc::new(RuntimeShared {
            fleet,
            reaper: Arc::new(Reaper::default()),
            unloads: Mutex::new(std::collections::VecDeque::new()),
            loader: Loader::new(host, &config.run_dir)?,
            versions: Mutex::new(BTreeMap::new()),
            run_dir: config.run_dir.clone(),
            http_sites: Mutex::new(Vec::new()),
            http_layer: !config.http.is_empty(),
            config_reload: Mutex::new(()),
            tcp_routes: config.tcp.clone(),
            tcp_stats: (0..n).map(|_| std::sync::Arc::default()).collect(),
            http_stats: (0..n).map(|_| std::sync::Arc::default()).collect(),
            run_dir_lock,
            config_digest: Mutex::new(None),
            isolated: Mutex::new(isolated.clone()),
            isolated_retiring: Mutex::new(Vec::new()),
            molt_bin,
        });
        #[cfg(not(molt_loom))]
        {
            let weak: std::sync::Weak<dyn ReloadHost> = Arc::downgrade(&shared) as std::sync::Weak<RuntimeShared>;
            shared.loader.host().set_hooks(Box::new(ReloadHooks(weak)));
        }
        #[cfg(not(molt_loom))]
        shared.loader.host().set_post_sink(std::sync::Arc::new(PostTo(Arc::downgrade(&shared))));
        // Each worker binds every listener itself (SO_REUSEPORT).
        let mut tcp_addrs = Vec::with_capacity(config.tcp.len());
        let mut per_worker: Vec<Vec<(crate::net::TcpRoute, std::net::TcpListener)>> =
            (0..n).map(|_| Vec::new()).collect();
        for (i, route) in config.tcp.iter().enumerate() {
            let (listeners, addr) = listeners_for(&mut inherited, &format!("tcp:{i}"), route.listen, n, "TCP route")?;
            for (list, l) in per_worker.iter_mut().zip(listeners) {
                list.push((route.clone(), l));
            }
            tcp_addrs.push(addr);
        }
        let mut http_addrs = Vec::with_capacity(config.http.len());
        let mut http_per_worker: Vec<Vec<(std::sync::Arc<crate::http::HttpSite>, std::net::TcpListener)>> =
            (0..n).map(|_| Vec::new()).collect();
        for site in &config.http {
            let key = format!("http:{}", site.name);
            let (listeners, addr) =
                listeners_for(&mut inherited, &key, site.listen, n, &format!("HTTP listener {}", site.name))?;
            let configured = site.listen;
            let site = std::sync::Arc::new(crate::http::HttpSite { listen: addr, ..site.clone() });
            shared.http_sites.lock().push((configured, site.clone()));
            for (list, l) in http_per_worker.iter_mut().zip(listeners) {
                list.push((site.clone(), l));
            }
            http_addrs.push(addr);
        }
        if let Some(key) = inherited.listeners.keys().next() {
            // A listener the old process had and this config lacks would
            // have its queued connections lost with it.
            return Err(std::io::Error::other(format!(
                "a listening socket was handed over for {key}, which this config does not have: the new process must run the running one's config"
            )));
        }
        let paused = inherited.paused;
        let mut threads = Vec::with_capacity(n + 1);
        for (i, ((poll, tcp), http)) in polls.into_iter().zip(per_worker).zip(http_per_worker).enumerate() {
            let tcp_stats = shared.tcp_stats[i].clone();
            let http_stats = shared.http_stats[i].clone();
            let iso = isolated.clone();
            let setup: Option<crate::worker::io::IoSetup> = if tcp.is_empty() && http.is_empty() {
                None
            } else {
                Some(Box::new(move |registry: &mio::Registry, worker: u32| {
                    let mut layers: Vec<Box<dyn crate::worker::io::Io>> = Vec::new();
                    if !tcp.is_empty() {
                        match crate::net::TcpLayer::new(layers.len(), registry, tcp, tcp_stats, paused) {
                            Ok(l) => layers.push(Box::new(l)),
                            Err(e) => tracing::error!(worker, "cannot register the TCP listeners: {e}"),
                        }
                    }
                    if !http.is_empty() {
                        match crate::http::HttpLayer::new(layers.len(), worker, registry, http, http_stats, paused, iso)
                        {
                            Ok(l) => layers.push(Box::new(l)),
                            Err(e) => tracing::error!(worker, "cannot register the HTTP listeners: {e}"),
                        }
                    }
                    layers
                }))
            };
            let ws = shared.workers()[i].clone();
            let rt = shared.fleet.clone();
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
                rt.registry().tick(&*rt);
                rt.run_restarts();
                rt.reap();
                rt.drain_isolated();
            }
        })?;
        threads.push(ticker);
        Ok(Runtime { shared, threads, replies: rx, tcp_addrs, http_addrs })
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
        self.shared.workers().len()
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
        self.shared.registry().reload(&*self.shared, modules)
    }

    /// Reload the whole config: modules and HTTP sites (routes, upstream
    /// groups, listeners) together; see [`RuntimeShared::reload_config`].
    pub fn reload_config(
        &self,
        modules: &[ModuleConfig],
        http: &[crate::http::HttpSite],
        tcp: &[crate::net::TcpRoute],
    ) -> Result<ReloadRecord, ReloadError> {
        self.shared.reload_config(modules, http, tcp)
    }

    /// The address HTTP site `name` listens on now (sites added by a reload too).
    pub fn http_addr(&self, name: &str) -> Option<std::net::SocketAddr> {
        self.shared.http_addr(name)
    }

    /// Re-activate the previous generation.
    pub fn rollback(&self) -> Result<ReloadRecord, ReloadError> {
        self.shared.registry().rollback(&*self.shared)
    }

    /// The active version of module `name`.
    pub fn active(&self, name: &str) -> Option<VersionRef> {
        self.shared.registry().active().and_then(|g| g.get(name).cloned())
    }

    /// Create a continuation of `version` on `worker` on the module's behalf
    /// (data NULL, the descriptor's handler). It first gets START with `tag`.
    pub fn spawn(&self, version: &VersionRef, worker: u32, tag: u64) -> ServiceResult<u64> {
        let w = self.worker(worker)?;
        worker::spawn_remote(w, version, None, core::ptr::null_mut(), tag, 0)
    }

    fn worker(&self, index: u32) -> ServiceResult<&Arc<WorkerShared>> {
        self.shared.worker(index)
    }

    /// Send a message from the host (source 0) to continuation `target`.
    pub fn send(&self, target: u64, tag: u64, data: &[u8]) -> ServiceResult<()> {
        let (_, w) = self.shared.live_home(target)?;
        let ev = Event::from_host(target, tag, data);
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
        self.shared.workers().get(index).map(|w| w.stats())
    }

    /// Sum of a counter over all workers.
    pub fn total(&self, f: impl Fn(&worker::WorkerStats) -> &crate::sync::AtomicU64) -> u64 {
        self.shared.workers().iter().map(|w| f(w.stats()).load(Ordering::Relaxed)).sum()
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
        self.shared.shut_down();
        for s in self.shared.isolated().iter().chain(self.shared.isolated_retiring().iter()) {
            s.stop();
        }
        for w in self.shared.workers() {
            w.post(Remote::Run(Box::new(|_| {})));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The active generation's references go last, then everything is reaped.
        self.shared.registry().clear();
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
