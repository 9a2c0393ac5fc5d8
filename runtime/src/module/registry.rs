//! The registry: which module versions are active, what replaced what, and
//! reloads and rollbacks between generations.
//!
//! A reload builds a candidate generation from a config: a module whose
//! file (by sha256), config and mode are unchanged keeps its loaded version;
//! any other is loaded anew from a private copy. Any failure rejects the
//! whole candidate — the versions it loaded are released (and so finalised
//! and unloaded) and the active generation is untouched. Success publishes
//! the candidate under one lock; replaced versions are drained (or upgraded,
//! in upgrade mode) and unload when their last holder goes. One reload runs
//! at a time.
//!
//! For rollback, the previous generation's module files are kept by content
//! under `<run_dir>/kept/<sha256>.so`; a rollback is a reload of those, pinned
//! to their hashes, so it needs nothing that may have changed on disk since.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::reload::{Reload, ReloadHost};
use super::spec::{ModuleConfig, SwapMode};
use super::{LoadError, ModuleSpec, VersionId, VersionRef};
use crate::sync::{Arc, Mutex};

/// A worker's copy of the active generation for its data path: re-read
/// (under the registry's lock) only when the registry's epoch moved, so
/// finding a module's version costs an atomic load, not a lock.
#[derive(Default)]
pub struct GenerationCache {
    /// The epoch `generation` was read at (`None`: nothing read yet).
    epoch: Option<u64>,
    generation: Option<Arc<Generation>>,
}

impl GenerationCache {
    /// The active generation, fresh as of `registry`'s epoch.
    pub fn get(&mut self, registry: &Registry) -> Option<&Generation> {
        let epoch = registry.epoch();
        if self.epoch != Some(epoch) {
            self.generation = registry.active();
            self.epoch = Some(epoch);
        }
        self.generation.as_deref()
    }

    /// Let go of a replaced generation (it holds its module versions alive)
    /// without reading the new one: for idle moments, when no request came
    /// to refresh the cache.
    pub fn release_stale(&mut self, registry: &Registry) {
        if self.epoch.is_some_and(|e| e != registry.epoch()) {
            *self = GenerationCache::default();
        }
    }
}

/// One module of a generation.
#[derive(Clone)]
pub struct Entry {
    /// Its config.
    pub cfg: ModuleConfig,
    /// The sha256 of the file it was loaded from.
    pub sha256: String,
    /// The loaded version.
    pub version: VersionRef,
}

/// The module versions of one (re)load.
pub struct Generation {
    /// Generation number.
    pub id: u64,
    /// The reload that made it.
    pub reload_id: u64,
    /// Its modules.
    pub entries: Vec<Entry>,
}

impl Generation {
    /// The version of module `name`.
    pub fn get(&self, name: &str) -> Option<&VersionRef> {
        self.entries.iter().find(|e| e.cfg.name == name).map(|e| &e.version)
    }
}

/// One reload, for status and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadRecord {
    /// Reload id (every log line about it carries it).
    pub id: u64,
    /// `load`, `reload` or `rollback`.
    pub kind: &'static str,
    /// Whether it was published.
    pub ok: bool,
    /// When it started (ms since the Unix epoch).
    pub started_unix_ms: u128,
    /// How long it took, in microseconds.
    pub duration_us: u64,
    /// Why it was refused.
    pub error: Option<String>,
    /// Modules loaded anew.
    pub loaded: Vec<String>,
    /// Modules that kept their version.
    pub kept: Vec<String>,
    /// The generation it published.
    pub generation: Option<u64>,
}

/// Why a reload or rollback was refused. The active generation is untouched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// Another reload is running.
    #[error("another reload has been running for over 30 s; try again when it finishes")]
    Busy,
    /// `runtime.dynamic_reload = false`.
    #[error("reloads are disabled (runtime.dynamic_reload = false); restart to change modules")]
    Disabled,
    /// A module failed to load.
    #[error("module {module}: {source}")]
    Load {
        /// The module.
        module: String,
        /// Why.
        #[source]
        source: Box<LoadError>,
    },
    /// The file does not match its pin.
    #[error("module {module}: {path} has sha256 {actual}, but the config pins {expected}; fix the pin or the file")]
    Sha256Mismatch {
        /// The module.
        module: String,
        /// The file.
        path: PathBuf,
        /// The pin.
        expected: String,
        /// The file's hash.
        actual: String,
    },
    /// Upgrade mode needs adopt.
    #[error(
        "module {module}: mode = \"upgrade\" needs an adopt callback, and version {version} has none; use mode = \"drain\""
    )]
    UpgradeWithoutAdopt {
        /// The module.
        module: String,
        /// Its version.
        version: String,
    },
    /// Too many loaded versions.
    #[error(
        "module {module}: loading another version would exceed max_versions_per_module = {cap}; still loaded: {holders}"
    )]
    VersionCap {
        /// The module.
        module: String,
        /// The cap.
        cap: usize,
        /// Each loaded version and what holds it.
        holders: String,
    },
    /// A layer refused the config (a listener that cannot be bound, a
    /// change that needs a restart); nothing was applied.
    #[error("{0}")]
    Layer(String),
    /// Nothing to roll back to.
    #[error("nothing to roll back to: no earlier generation was replaced yet")]
    NoPrevious,
    /// The runtime could not read or keep a file.
    #[error("module {module}: {what} {path}: {source}")]
    Io {
        /// The module.
        module: String,
        /// What it was doing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Registry settings from `[runtime]`.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Loaded versions allowed per module.
    pub max_versions_per_module: usize,
    /// How long replaced versions' continuations get.
    pub drain_deadline: Duration,
    /// Whether reloads are allowed after the first load.
    pub dynamic_reload: bool,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings { max_versions_per_module: 4, drain_deadline: Duration::from_secs(30), dynamic_reload: true }
    }
}

/// Reloads by (kind, ok): how many, and their summed duration in µs.
type ReloadTotals = std::collections::BTreeMap<(&'static str, bool), (u64, u64)>;

/// The registry (see the module docs).
pub struct Registry {
    settings: Mutex<RegistrySettings>,
    kept_dir: PathBuf,
    active: Mutex<Option<Arc<Generation>>>,
    /// Bumped after every change of `active`: the data path re-reads the
    /// active generation (a lock) only when this moved.
    epoch: crate::sync::AtomicU64,
    previous: Mutex<Option<Vec<ModuleConfig>>>,
    reload_lock: Mutex<()>,
    history: Mutex<VecDeque<ReloadRecord>>,
    /// Since start, by (kind, ok): how many, and their summed duration in µs.
    totals: Mutex<ReloadTotals>,
    counters: Mutex<(u64, u64)>,
}

const HISTORY: usize = 64;
/// How long a reload waits for the one running before it answers Busy.
const RELOAD_WAIT: Duration = Duration::from_secs(30);

/// Loaded versions of module `name`, each with what holds it, for messages.
pub fn loaded_versions(rt: &dyn ReloadHost, name: &str) -> Vec<String> {
    let active = rt.registry().active();
    rt.version_records()
        .iter()
        .filter(|r| r.meta.name == name && r.is_loaded())
        .map(|r| {
            let in_gen = active.as_ref().is_some_and(|g| g.get(name).is_some_and(|v| v.id() == r.meta.id));
            format!(
                "{} {} ({}) held by {} continuations, {} timers{}",
                r.meta.name,
                r.meta.version,
                r.meta.id,
                r.continuations(),
                r.holders.timers.load(crate::sync::Ordering::Relaxed),
                if in_gen { ", the active generation" } else { "" }
            )
        })
        .collect()
}

/// The sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Registry {
    /// A registry keeping rollback copies under `run_dir/kept`.
    pub fn new(run_dir: &Path, settings: RegistrySettings) -> std::io::Result<Registry> {
        let kept_dir = run_dir.join("kept");
        std::fs::create_dir_all(&kept_dir)?;
        Ok(Registry {
            settings: Mutex::new(settings),
            kept_dir,
            active: Mutex::new(None),
            epoch: crate::sync::AtomicU64::new(0),
            previous: Mutex::new(None),
            reload_lock: Mutex::new(()),
            history: Mutex::new(VecDeque::new()),
            totals: Mutex::new(std::collections::BTreeMap::new()),
            counters: Mutex::new((0, 0)),
        })
    }

    /// The settings.
    pub fn settings(&self) -> RegistrySettings {
        self.settings.lock().clone()
    }

    /// Replace the settings (a reload of the config may change them).
    pub fn set_settings(&self, s: RegistrySettings) {
        *self.settings.lock() = s;
    }

    /// A number that changes whenever the active generation does.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(crate::sync::Ordering::Acquire)
    }

    /// The active generation.
    pub fn active(&self) -> Option<Arc<Generation>> {
        self.active.lock().clone()
    }

    /// The configs a rollback would load.
    pub fn previous(&self) -> Option<Vec<ModuleConfig>> {
        self.previous.lock().clone()
    }

    /// Reloads since start by kind and result: (kind, ok, count, summed µs).
    /// Counters: they never go down (the history keeps only the last 64).
    pub fn totals(&self) -> Vec<(&'static str, bool, u64, u64)> {
        self.totals.lock().iter().map(|((k, ok), (n, us))| (*k, *ok, *n, *us)).collect()
    }

    /// Reload history, oldest first.
    pub fn history(&self) -> Vec<ReloadRecord> {
        self.history.lock().iter().cloned().collect()
    }

    fn next_ids(&self) -> (u64, u64) {
        let mut c = self.counters.lock();
        c.0 += 1;
        (c.0, c.1 + 1)
    }

    /// Load `modules` as the new active generation (the first load, or a reload).
    pub fn reload(&self, rt: &dyn ReloadHost, modules: &[ModuleConfig]) -> Result<ReloadRecord, ReloadError> {
        let first = self.active.lock().is_none();
        self.apply(rt, modules, if first { "load" } else { "reload" }, None)
    }

    /// Re-activate the previous generation's modules from their kept copies.
    pub fn rollback(&self, rt: &dyn ReloadHost) -> Result<ReloadRecord, ReloadError> {
        let prev = self.previous.lock().clone().ok_or(ReloadError::NoPrevious)?;
        self.apply(rt, &prev, "rollback", None)
    }

    /// Load a fresh version of `module` from the active generation's own
    /// config (its file and settings unchanged), keeping every other module:
    /// `failure_policy = "restart"` after the module panicked.
    pub fn restart(&self, rt: &dyn ReloadHost, module: &str) -> Result<ReloadRecord, ReloadError> {
        let active = self.active.lock().clone().ok_or(ReloadError::NoPrevious)?;
        let configs: Vec<ModuleConfig> = active.entries.iter().map(|e| e.cfg.clone()).collect();
        self.apply(rt, &configs, "restart", Some(module))
    }

    fn apply(
        &self,
        rt: &dyn ReloadHost,
        modules: &[ModuleConfig],
        kind: &'static str,
        force: Option<&str>,
    ) -> Result<ReloadRecord, ReloadError> {
        // One at a time: a reload asked for while another runs waits its turn
        // (control clients are served concurrently), up to RELOAD_WAIT.
        let Some(_one_at_a_time) = self.reload_lock.try_lock_for(RELOAD_WAIT) else {
            return Err(ReloadError::Busy);
        };
        let settings = self.settings.lock().clone();
        let old = self.active.lock().clone();
        if old.is_some() && !settings.dynamic_reload {
            return Err(ReloadError::Disabled);
        }
        let (reload_id, generation_id) = self.next_ids();
        let span = tracing::info_span!("reload", reload_id, kind);
        let _span = span.enter();
        let started = SystemTime::now();
        let t0 = Instant::now();
        tracing::info!(modules = modules.len(), "reload started");
        let mut record = ReloadRecord {
            id: reload_id,
            kind,
            ok: false,
            started_unix_ms: started.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis()),
            duration_us: 0,
            error: None,
            loaded: Vec::new(),
            kept: Vec::new(),
            generation: None,
        };
        // The transaction: what the candidates' init does to state is its own.
        let mut txn = Reload::begin(rt);
        let built = self.build(rt, &mut txn, modules, old.as_deref(), &settings, &mut record, force);
        record.duration_us = t0.elapsed().as_micros() as u64;
        let entries = match built {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(duration_us = record.duration_us, "reload refused, active generation unchanged: {e}");
                record.error = Some(e.to_string());
                self.push_history(record);
                // Dropping the transaction undoes it: old code resumes on
                // the old blocks exactly as they were, and the candidates
                // (dropped inside build) are unloaded.
                drop(txn);
                return Err(e);
            }
        };
        let published = txn.publish();
        for e in &entries {
            rt.set_stage(e.version.id(), &mut |s| s.activate());
        }
        let generation = Arc::new(Generation { id: generation_id, reload_id, entries });
        *self.active.lock() = Some(generation.clone());
        self.epoch.fetch_add(1, crate::sync::Ordering::Release);
        self.counters.lock().1 = generation_id;
        record.ok = true;
        record.generation = Some(generation_id);
        let migrated = published.migrated.clone();
        // Continuations the host made for a migrated module's older versions
        // while they were held never ran: they start on the new version.
        for m in &migrated {
            if let Some(to) = generation.get(m) {
                self.rebase_unstarted(rt, m, to);
            }
        }
        if let Some(old) = old {
            *self.previous.lock() = Some(self.kept_configs(&old));
            self.retire_replaced(rt, &old, &generation, &settings, &migrated);
        }
        for m in &migrated {
            if let Some(to) = generation.get(m) {
                self.adopt_all(rt, m, to);
            }
        }
        published.finish();
        self.collect_kept();
        tracing::info!(duration_us = record.duration_us, generation = generation_id, loaded = ?record.loaded, "reload published");
        self.push_history(record.clone());
        rt.reap();
        Ok(record)
    }

    fn push_history(&self, r: ReloadRecord) {
        {
            let mut t = self.totals.lock();
            let e = t.entry((r.kind, r.ok)).or_default();
            e.0 += 1;
            e.1 += r.duration_us;
        }
        let mut h = self.history.lock();
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(r);
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        rt: &dyn ReloadHost,
        txn: &mut Reload<'_>,
        modules: &[ModuleConfig],
        old: Option<&Generation>,
        settings: &RegistrySettings,
        record: &mut ReloadRecord,
        force: Option<&str>,
    ) -> Result<Vec<Entry>, ReloadError> {
        let mut entries = Vec::with_capacity(modules.len());
        for mc in modules {
            let module = mc.name.clone();
            let prior = old.and_then(|g| g.entries.iter().find(|e| e.cfg.name == mc.name));
            // Hashed through intake's checks on every reload (no cache: an
            // in-place edit keeping size and mtime would pass one).
            let taken = super::Loader::take(&mc.path)
                .map_err(|e| ReloadError::Load { module: module.clone(), source: Box::new(e) })?;
            let sha256 = taken.sha256.clone();
            if let Some(pin) = &mc.sha256 {
                if *pin != sha256 {
                    return Err(ReloadError::Sha256Mismatch {
                        module,
                        path: mc.path.clone(),
                        expected: pin.clone(),
                        actual: sha256,
                    });
                }
            }
            let unchanged = |p: &&Entry| p.sha256 == sha256 && p.cfg.config == mc.config && p.cfg.mode == mc.mode;
            if let Some(p) = prior.filter(unchanged).filter(|_| force != Some(mc.name.as_str())) {
                record.kept.push(module);
                entries.push(Entry { cfg: mc.clone(), sha256, version: p.version.clone() });
                continue;
            }
            let loaded = loaded_versions(rt, &mc.name);
            if loaded.len() + 1 > settings.max_versions_per_module {
                return Err(ReloadError::VersionCap {
                    module,
                    cap: settings.max_versions_per_module,
                    holders: loaded.join("; "),
                });
            }
            let spec = ModuleSpec {
                path: mc.path.clone(),
                config: mc.config.clone(),
                previous_version: prior.map_or(0, |p| p.version.meta().version_number),
                // The bytes loaded must be those hashed above (and pinned).
                pin: Some(sha256.clone()),
                name: Some(mc.name.clone()),
            };
            let version = txn
                .load(&spec, taken)
                .map_err(|e| ReloadError::Load { module: module.clone(), source: Box::new(e) })?;
            let meta = version.meta();
            // The rollback copy comes from the private copy: bytes nobody else can change.
            let kept = self.kept_dir.join(format!("{sha256}.so"));
            crate::sys::files::keep_copy(&meta.copy, &kept).map_err(|source| ReloadError::Io {
                module: module.clone(),
                what: "keeping a rollback copy of",
                path: mc.path.clone(),
                source,
            })?;
            if mc.mode == SwapMode::Upgrade && meta.callbacks.adopt.is_none() {
                return Err(ReloadError::UpgradeWithoutAdopt { module, version: meta.version.clone() });
            }
            record.loaded.push(format!("{} {} ({})", meta.name, meta.version, meta.id));
            entries.push(Entry { cfg: mc.clone(), sha256, version });
        }
        Ok(entries)
    }

    /// The old generation's configs, pointing at kept copies and pinned.
    fn kept_configs(&self, old: &Generation) -> Vec<ModuleConfig> {
        old.entries
            .iter()
            .map(|e| ModuleConfig {
                path: self.kept_dir.join(format!("{}.so", e.sha256)),
                sha256: Some(e.sha256.clone()),
                ..e.cfg.clone()
            })
            .collect()
    }

    /// Drain (or upgrade) every version of `old` that `new` does not keep.
    fn retire_replaced(
        &self,
        rt: &dyn ReloadHost,
        old: &Generation,
        new: &Generation,
        settings: &RegistrySettings,
        migrated: &[String],
    ) {
        let deadline = Instant::now() + settings.drain_deadline;
        for e in &old.entries {
            let id = e.version.id();
            if new.entries.iter().any(|n| n.version.id() == id) {
                continue;
            }
            rt.set_stage(id, &mut |s| s.retire(deadline));
            let successor = new.entries.iter().find(|n| n.cfg.name == e.cfg.name);
            // After a schema change no old code may touch state: its
            // continuations move to the new version whatever the mode.
            let must_adopt = migrated.contains(&e.cfg.name);
            if let Some(n) = successor.filter(|n| n.cfg.mode == SwapMode::Upgrade || must_adopt) {
                let to = n.version.clone();
                let (a, r) = rt.all_workers().upgrade(id, &to);
                tracing::info!(module = %e.cfg.name, from = %id, to = %n.version.id(), adopted = a, refused = r, "upgraded live continuations");
                if r == 0 {
                    continue;
                }
            }
            if let Err(err) = e.version.drain(crate::host::CallEnv::detached(None)) {
                tracing::warn!(module = %e.cfg.name, version = %id, "drain callback failed: {err}");
            }
            let n = rt.all_workers().drain(id, settings.drain_deadline);
            tracing::info!(module = %e.cfg.name, version = %id, continuations = n, "draining");
        }
    }

    /// Move the never-run, host-made continuations of `module`'s older
    /// versions to `to` (they were created while those versions were held).
    fn rebase_unstarted(&self, rt: &dyn ReloadHost, module: &str, to: &VersionRef) {
        for r in rt.version_records() {
            if !r.is_loaded() || r.meta.name != module || r.meta.id == to.id() {
                continue;
            }
            let id = r.meta.id;
            let n = rt.all_workers().rebase_unstarted(id, to);
            if n > 0 {
                tracing::info!(module, from = %id, to = %to.id(), continuations = n, "schema change: continuations made during the hold start on the new version");
            }
        }
    }

    /// After a schema change of `module`, every older version still holding
    /// continuations (drained generations too) hands them to `to`.
    fn adopt_all(&self, rt: &dyn ReloadHost, module: &str, to: &VersionRef) {
        let older: Vec<VersionId> = rt
            .version_records()
            .into_iter()
            .filter(|r| r.is_loaded() && r.meta.name == module && r.meta.id != to.id() && r.continuations() > 0)
            .map(|r| r.meta.id)
            .collect();
        for id in older {
            let (a, r) = rt.all_workers().upgrade(id, to);
            if r > 0 {
                tracing::error!(module, version = %id, refused = r, "after a schema change, adopt refused continuations: they stay on old code over the retired block");
            }
            tracing::info!(module, from = %id, to = %to.id(), adopted = a, "schema change: live continuations moved to the new version");
        }
    }

    /// Remove kept copies no generation may roll back to.
    fn collect_kept(&self) {
        let mut wanted: Vec<String> = Vec::new();
        if let Some(a) = self.active.lock().as_ref() {
            wanted.extend(a.entries.iter().map(|e| format!("{}.so", e.sha256)));
        }
        if let Some(p) = self.previous.lock().as_ref() {
            wanted.extend(p.iter().filter_map(|c| c.sha256.as_ref().map(|s| format!("{s}.so"))));
        }
        if let Ok(dir) = std::fs::read_dir(&self.kept_dir) {
            for f in dir.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if !wanted.contains(&name) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
    }

    /// Drop the active generation (shutdown).
    pub fn clear(&self) {
        self.active.lock().take();
        self.epoch.fetch_add(1, crate::sync::Ordering::Release);
    }

    /// End the continuations of versions whose drain deadline passed.
    pub fn tick(&self, rt: &dyn ReloadHost) {
        let now = Instant::now();
        let due = rt.due(now);
        for id in due {
            rt.set_stage(id, &mut |s| s.forced());
            let n = rt.all_workers().end(id);
            tracing::warn!(version = %id, continuations = n, "drain deadline passed: continuations ended");
        }
    }
}
