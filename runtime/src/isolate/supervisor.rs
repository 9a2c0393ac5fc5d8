//! The supervisor of one isolated module: starts its child (`molt
//! module-host`) with one pair of rings per worker, waits for it to be
//! ready, notices its death (a thread waits on it), and starts another with
//! exponential backoff; a crash loop marks the module failed until molt is
//! restarted. Each start is an *incarnation* with its own segment and wake
//! sockets; workers attach to the current one and fail what they had in
//! flight on an older one.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::ring::Consumer;
use super::shm::{ShmRing, recv_control};
use crate::module::spec::IsolatedConfig;
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering};
use crate::sys::shm::Segment;

/// Restarts within [`LOOP_WINDOW`] that make a crash loop.
const LOOP_RESTARTS: usize = 5;
/// The window of a crash loop.
const LOOP_WINDOW: Duration = Duration::from_secs(30);
/// The first backoff; it doubles per restart up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest backoff.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a child has to load its module and say ready.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// One running child.
pub struct Incarnation {
    /// Its number (1 for the first start).
    pub generation: u64,
    /// Its segment.
    pub seg: Segment,
    /// Per worker, the socket the child pokes after a reply (taken once by
    /// the worker when it attaches).
    wake: Mutex<Vec<Option<UnixDatagram>>>,
    /// The child's pid.
    pub pid: u32,
    /// The HTTP hooks the module declared (`MOLT_HOOK_*`; 0: every one).
    pub hooks: u64,
    /// What confines the child, as it reported.
    pub sandbox: String,
    dir: PathBuf,
}

impl Incarnation {
    /// Worker `w`'s wake socket (once).
    pub fn take_wake(&self, w: usize) -> Option<UnixDatagram> {
        self.wake.lock().get_mut(w).and_then(Option::take)
    }
}

impl Drop for Incarnation {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What status shows of an isolated module.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SupervisorStatus {
    /// The module.
    pub module: String,
    /// `starting`, `running`, `restarting` (in backoff), `failed` (a crash
    /// loop or a module that does not load), `stopped`.
    pub state: &'static str,
    /// The current child's pid.
    pub pid: Option<u32>,
    /// Children started after the first.
    pub restarts: u64,
    /// Why the last child ended (its exit status), or why a start failed.
    pub last_exit: Option<String>,
    /// The current incarnation.
    pub generation: u64,
    /// Hooks that failed because of the child (a death, a hang, a broken ring).
    pub hook_failures: u64,
    /// What confines the running child (`none`, or its limits and rules).
    pub sandbox: Option<String>,
    /// Per worker, the bytes queued in its request ring and in its reply
    /// ring (what the child has not taken, what the worker has not read).
    pub ring_depths: Vec<[u64; 2]>,
}

/// One isolated module's child, kept running.
pub struct Supervisor {
    cfg: IsolatedConfig,
    /// molt's host: its state region creates the blocks the child asks for.
    host: Arc<crate::host::Host>,
    molt: PathBuf,
    run_dir: PathBuf,
    workers: usize,
    current: Mutex<Option<Arc<Incarnation>>>,
    generation: AtomicU64,
    status: Mutex<SupervisorStatus>,
    stop: AtomicBool,
    /// The pid to kill to end the current child (0: none).
    pid: std::sync::atomic::AtomicU32,
    hook_failures: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// When a swap replaced it (it serves the transactions begun on it).
    draining_since: Mutex<Option<Instant>>,
    /// The sha256 of the module file when it started (a reload swaps it
    /// when the file changed).
    file_sha256: Option<String>,
}

impl Supervisor {
    /// Start supervising `cfg` with `workers` pairs of rings, the child
    /// being `molt module-host`; wait (up to 10 s) for the first child to
    /// be ready, and return the supervisor either way (status says how the
    /// start went).
    pub fn start(
        cfg: IsolatedConfig,
        molt: PathBuf,
        run_dir: PathBuf,
        workers: usize,
        host: Arc<crate::host::Host>,
    ) -> Arc<Supervisor> {
        let file_sha256 = crate::module::Loader::take(&cfg.path).ok().map(|t| t.sha256);
        let sup = Arc::new(Supervisor {
            status: Mutex::new(SupervisorStatus {
                module: cfg.name.clone(),
                state: "starting",
                ..SupervisorStatus::default()
            }),
            cfg,
            host,
            molt,
            run_dir,
            workers: workers.max(1),
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            pid: std::sync::atomic::AtomicU32::new(0),
            hook_failures: AtomicU64::new(0),
            thread: Mutex::new(None),
            draining_since: Mutex::new(None),
            file_sha256,
        });
        let s = sup.clone();
        let t = std::thread::Builder::new()
            .name(format!("molt-iso-{}", sup.cfg.name))
            .spawn(move || s.run())
            .expect("a supervisor thread");
        *sup.thread.lock() = Some(t);
        let until = Instant::now() + READY_WITHIN;
        while sup.current().is_none() && sup.status().state != "failed" && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        sup
    }

    /// The module's config.
    pub fn config(&self) -> &IsolatedConfig {
        &self.cfg
    }

    /// The running child, if one is ready.
    pub fn current(&self) -> Option<Arc<Incarnation>> {
        self.current.lock().clone()
    }

    /// The current incarnation's number (it changes when a child ends).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Status.
    pub fn status(&self) -> SupervisorStatus {
        let mut s = self.status.lock().clone();
        s.hook_failures = self.hook_failures.load(Ordering::Relaxed);
        if s.state == "running" && self.draining_since.lock().is_some() {
            s.state = "draining";
        }
        if let Some(inc) = self.current() {
            use super::ring::RingMem;
            let depth = |r: ShmRing| r.head().load(Ordering::Relaxed).saturating_sub(r.tail().load(Ordering::Relaxed));
            s.ring_depths = (0..self.workers)
                .map(|w| [depth(ShmRing::request(&inc.seg, w)), depth(ShmRing::reply(&inc.seg, w))])
                .collect();
        }
        s
    }

    /// A swap replaced it: it serves only the transactions begun on it.
    pub fn set_draining(&self) {
        *self.draining_since.lock() = Some(Instant::now());
    }

    /// How long it has been draining.
    pub fn draining_for(&self) -> Option<Duration> {
        self.draining_since.lock().map(|t| t.elapsed())
    }

    /// Whether a reload of `cfg` would run something else than this
    /// supervisor runs: another config, or the module file changed.
    pub fn differs(&self, cfg: &IsolatedConfig) -> bool {
        cfg != &self.cfg || crate::module::Loader::take(&cfg.path).ok().map(|t| t.sha256) != self.file_sha256
    }

    /// Count a hook that failed because of the child.
    pub fn count_hook_failure(&self) {
        self.hook_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// End incarnation `generation`'s child now (a hung hook): the
    /// supervisor starts another.
    pub fn kill(&self, generation: u64) {
        if self.generation() == generation {
            let pid = self.pid.load(Ordering::Acquire);
            if pid != 0 {
                let _ = crate::sys::shm::kill(pid);
            }
        }
    }

    /// Stop supervising: the child is killed and not restarted.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let pid = self.pid.load(Ordering::Acquire);
        if pid != 0 {
            let _ = crate::sys::shm::kill(pid);
        }
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }

    fn set(&self, f: impl FnOnce(&mut SupervisorStatus)) {
        f(&mut self.status.lock());
    }

    fn run(&self) {
        let mut backoff = BACKOFF_MIN;
        let mut recent: Vec<Instant> = Vec::new();
        let mut started_once = false;
        while !self.stop.load(Ordering::Acquire) {
            let generation = self.generation() + 1;
            let started = Instant::now();
            let why: String = match self.start_child(generation) {
                Ok((mut child, inc)) => {
                    let pid = inc.pid;
                    let sandbox = inc.sandbox.clone();
                    self.pid.store(pid, Ordering::Release);
                    *self.current.lock() = Some(Arc::new(inc));
                    self.generation.store(generation, Ordering::Release);
                    self.set(|s| {
                        s.state = "running";
                        s.pid = Some(pid);
                        s.sandbox = Some(sandbox);
                        s.generation = generation;
                        if started_once {
                            s.restarts += 1;
                        }
                    });
                    if started_once {
                        tracing::warn!(module = %self.cfg.name, pid, generation, "isolated module restarted");
                    } else {
                        tracing::info!(module = %self.cfg.name, pid, "isolated module started");
                    }
                    started_once = true;
                    let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    self.pid.store(0, Ordering::Release);
                    *self.current.lock() = None;
                    // Workers see the change and fail what they had in flight.
                    self.generation.store(generation + 1, Ordering::Release);
                    format!("the child (pid {pid}) exited: {status}")
                }
                Err(e) => e,
            };
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            tracing::warn!(module = %self.cfg.name, "isolated module: {why}");
            if started.elapsed() > LOOP_WINDOW {
                backoff = BACKOFF_MIN;
            }
            recent.retain(|t| t.elapsed() < LOOP_WINDOW);
            recent.push(Instant::now());
            if recent.len() >= LOOP_RESTARTS {
                tracing::error!(module = %self.cfg.name, restarts = recent.len(), "isolated module in a crash loop: marked failed until molt restarts");
                self.set(|s| {
                    s.state = "failed";
                    s.pid = None;
                    s.last_exit = Some(why);
                });
                return;
            }
            self.set(|s| {
                s.state = "restarting";
                s.pid = None;
                s.last_exit = Some(why);
            });
            let until = Instant::now() + backoff;
            while Instant::now() < until && !self.stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.set(|s| {
            s.state = "stopped";
            s.pid = None;
        });
    }

    /// Start a child for incarnation `generation` and wait for it to be ready.
    fn start_child(&self, generation: u64) -> Result<(std::process::Child, Incarnation), String> {
        let seg = Segment::create(ShmRing::segment_len(self.workers)).map_err(|e| e.to_string())?;
        let tag = format!("{}-{}-{}", self.cfg.name, std::process::id(), generation);
        let user = match self.cfg.sandbox.as_ref().and_then(|s| s.user.as_deref()) {
            Some(name) => Some(crate::sys::sandbox::lookup_user(name)?),
            None => None,
        };
        // A child running as another user cannot enter the 0700 run dir:
        // its private directory is then a fresh one under the temp dir
        // (0700, given to that user by the child).
        let dir = if user.is_some() {
            std::env::temp_dir().join(format!("molt-isolated-{tag}-{}", uuid::Uuid::new_v4().simple()))
        } else {
            crate::sys::files::ensure_private_dir(&self.run_dir.join("isolated"))?;
            self.run_dir.join("isolated").join(&tag)
        };
        crate::sys::files::ensure_private_dir(&dir)?;
        let mut wake = Vec::with_capacity(self.workers);
        // Abstract names (no path: a long run dir would not fit a socket
        // address), random so nobody can take them first; a poke carries
        // nothing but "look at your ring".
        let mut wake_names = Vec::with_capacity(self.workers);
        for w in 0..self.workers {
            let name = format!("molt-wake-{}-{w}", uuid::Uuid::new_v4().simple());
            let s = crate::sys::shm::bind_abstract_datagram(&name).map_err(|e| format!("wake socket {name}: {e}"))?;
            wake.push(Some(s));
            wake_names.push(format!("@{name}"));
        }
        let mut cmd = Command::new(&self.molt);
        cmd.arg("module-host")
            .arg("--segment")
            .arg(seg.os_id())
            .arg("--module")
            .arg(&self.cfg.path)
            .arg("--run-dir")
            .arg(dir.join("copy"))
            .arg("--workers")
            .arg(self.workers.to_string());
        for n in &wake_names {
            cmd.arg("--wake").arg(n);
        }
        for (k, v) in &self.cfg.config {
            cmd.arg("--config").arg(format!("{k}={v}"));
        }
        if let Some(p) = self.host.state.path() {
            cmd.arg("--state").arg(p);
        }
        if let Some(sb) = &self.cfg.sandbox {
            let c = crate::sys::sandbox::Confinement {
                address_space: sb.address_space_mb.map(|m| m << 20),
                cpu_seconds: sb.cpu_seconds,
                open_files: sb.open_files,
                confine_files: sb.files == crate::module::spec::SandboxFiles::Confined,
                read: std::iter::once(self.cfg.path.clone()).chain(sb.allow_read.iter().cloned()).collect(),
                write: vec![dir.clone(), dir.join("copy")],
                user,
                restrict_syscalls: sb.syscalls == crate::module::spec::SandboxSyscalls::Restricted,
            };
            cmd.arg("--sandbox").arg(serde_json::to_string(&c).map_err(|e| e.to_string())?);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {} for module {}: {e}", self.molt.display(), self.cfg.name))?;
        let pid = child.id();
        self.pid.store(pid, Ordering::Release);
        let mut control = Consumer::new(ShmRing::control(&seg, self.workers));
        let mut answer = super::ring::Producer::new(ShmRing::control_in(&seg, self.workers));
        let owner = self.cfg.name.clone();
        let state = &self.host.state;
        // The child's blocks are made here, in its module's name only; a
        // schema change would need a migration across processes: refused.
        let create = |name: &str, schema: u32, min_len: u64| -> Result<(), (i32, String)> {
            match state.open_block(&owner, name, schema, min_len)? {
                crate::state::Opened::Existing { .. } | crate::state::Opened::Created { .. } => Ok(()),
                crate::state::Opened::NeedsMigration { dst, from_schema, .. } => {
                    let _ = state.abort_migration(dst);
                    Err((
                        molt_abi::ffi::MOLT_ERR_SCHEMA,
                        format!(
                            "state block {owner}/{name} is at schema {from_schema}: an isolated module cannot migrate it (run the module in process for the migration)"
                        ),
                    ))
                }
            }
        };
        match recv_control(&mut control, &mut answer, &mut child, READY_WITHIN, &create) {
            Ok(ready) => {
                let hooks = ready.split('\n').nth(2).and_then(|h| h.parse().ok()).unwrap_or(0);
                let sandbox = ready.split('\n').nth(3).unwrap_or("none").to_owned();
                let inc = Incarnation { generation, seg, wake: Mutex::new(wake), pid, hooks, sandbox, dir };
                Ok((child, inc))
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                self.pid.store(0, Ordering::Release);
                let _ = std::fs::remove_dir_all(&dir);
                Err(format!("module {} did not start: {e}", self.cfg.name))
            }
        }
    }
}
