//! Binary upgrade: a new molt process takes over the listening sockets, the
//! control socket, the run dir's lock and the state region of the running
//! one, with nothing refused in between (`docs/operations.md`, "Binary
//! upgrade").
//!
//! The old process ([`Upgrader`]) starts the new binary with
//! [`ENV_SOCKET`] naming a Unix socket in the run dir; the new process
//! ([`Joiner`]) connects to it. Over that connection, one frame each:
//!
//! 1. new → old `hello`: protocol, molt version, ABI major, state format,
//!    config digest, worker count. The old one refuses what differs
//!    (`refused`), else
//! 2. old → new `handover` with the descriptors (`SCM_RIGHTS`): the run
//!    dir's lock, the state file, the control socket, every listening
//!    socket of every worker. The old process gave up the state directory's
//!    writer role first. The new one starts paused (not accepting), opens
//!    the region, loads its modules and answers
//! 3. new → old `ready` (or `failed` with its step and reason);
//! 4. old → new `go`: the new one takes the writer role, accepts, and says
//! 5. new → old `took`. Only then does the old process stop accepting,
//!    ask its keep-alive clients to go and drain until its connections are
//!    done or the drain deadline passes, then exit.
//!
//! Any failure before `took` kills the new process and leaves the old one
//! as it was: accepting all along, the writer again.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::ConfigSource;
use crate::runtime::{Inherited, RuntimeShared};
use crate::sync::{Arc, AtomicBool, Mutex, Ordering};
use crate::sys::fdpass;

/// The handover protocol's version: both processes speak the same one.
pub const PROTOCOL: u32 = 1;
/// The environment variable naming the old process's upgrade socket.
pub const ENV_SOCKET: &str = "MOLT_UPGRADE_SOCKET";
/// The environment variable carrying the upgrade's id.
pub const ENV_ID: &str = "MOLT_UPGRADE_ID";
/// Upgrades kept in the history.
pub const HISTORY_KEPT: usize = 64;
/// The largest frame either side accepts.
const MAX_FRAME: usize = 1 << 20;

/// How long each wait of an upgrade may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From starting the new binary to its `hello`.
    pub connect: Duration,
    /// From the handover to `ready` (its modules loaded).
    pub ready: Duration,
    /// From `go` to `took`.
    pub took: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: Duration::from_secs(10), ready: Duration::from_secs(30), took: Duration::from_secs(10) }
    }
}

/// One frame of the protocol.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Msg {
    Hello {
        protocol: u32,
        molt_version: String,
        abi_major: u32,
        state_format: u32,
        config_digest: String,
        workers: usize,
        pid: u32,
    },
    Refused {
        reason: String,
    },
    Handover {
        upgrade_id: String,
        /// What each descriptor is, in order: `lock`, `state`, `ctl`,
        /// `http:<site>`, `tcp:<route index>`.
        fds: Vec<String>,
        history: Vec<UpgradeRecord>,
    },
    Ready,
    Failed {
        step: String,
        reason: String,
    },
    Go,
    Took,
    /// old → new after the switch: the upgrade's record, for the new
    /// process's history.
    Done {
        record: UpgradeRecord,
    },
}

fn send(conn: &UnixStream, m: &Msg, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let body = serde_json::to_vec(m).map_err(std::io::Error::other)?;
    fdpass::send(conn, &body, fds)
}

fn recv(conn: &UnixStream, within: Duration) -> std::io::Result<(Msg, Vec<OwnedFd>)> {
    conn.set_read_timeout(Some(within.max(Duration::from_millis(1))))?;
    let (body, fds) = fdpass::recv(conn, MAX_FRAME)?;
    let m = serde_json::from_slice(&body)
        .map_err(|e| std::io::Error::other(format!("a frame that is not the upgrade protocol: {e}")))?;
    Ok((m, fds))
}

/// One step of an upgrade and how long it took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepTime {
    /// `check`, `start`, `handshake`, `handover`, `ready`, `takeover`, `switch`.
    pub step: String,
    /// Milliseconds.
    pub ms: f64,
}

/// One upgrade, as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeRecord {
    /// Its id (on every log line about it).
    pub id: String,
    /// When it started (seconds since the Unix epoch).
    pub started_at: u64,
    /// The process that handed over.
    pub old_pid: u32,
    /// The process started (0 if none was).
    pub new_pid: u32,
    /// The binary started.
    pub binary: String,
    /// The old process's molt version.
    pub old_version: String,
    /// The new process's molt version (from its hello).
    pub new_version: Option<String>,
    /// The steps done, in order.
    pub steps: Vec<StepTime>,
    /// Milliseconds from the request to the switch (or the failure).
    pub duration_ms: f64,
    /// `ok` or `failed`.
    pub outcome: String,
    /// The step that failed.
    pub failed_step: Option<String>,
    /// Why.
    pub error: Option<String>,
}

impl UpgradeRecord {
    fn step(&mut self, step: &str, since: &mut Instant) {
        let now = Instant::now();
        self.steps.push(StepTime { step: step.into(), ms: now.duration_since(*since).as_secs_f64() * 1e3 });
        *since = now;
    }
}

/// What the old process hands over of its control socket: the listener,
/// and the flags that stop its accept loop and keep its socket file.
pub struct CtlHandoff {
    /// The listening control socket.
    pub listener: Arc<UnixListener>,
    /// Cleared when the new process took over: the loop accepts no more.
    pub accepting: Arc<AtomicBool>,
    /// Set then too: the socket file is the new process's, not removed.
    pub handed_off: Arc<AtomicBool>,
}

/// Kills and reaps the new process on drop, unless disarmed (it took over).
struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Its exit status, if it exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Why the connection to it broke: its exit status if it exited (a
    /// moment is allowed for it to be reaped), else `fallback`.
    fn why(&mut self, fallback: String) -> String {
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            if let Some(s) = self.exited() {
                return format!("the new process exited ({s})");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        fallback
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The old process's side: runs upgrades, one at a time.
pub struct Upgrader {
    rt: Arc<RuntimeShared>,
    source: ConfigSource,
    /// The binary this process was started from (the default new binary).
    exe: PathBuf,
    /// The arguments it was started with (given to the new binary).
    args: Vec<OsString>,
    timeouts: Timeouts,
    ctl: Mutex<Option<CtlHandoff>>,
    admin: Mutex<Option<(Arc<std::net::TcpListener>, Arc<AtomicBool>)>>,
    running: Mutex<()>,
    history: Mutex<Vec<UpgradeRecord>>,
    /// Upgrades this process ran: (took over, failed).
    totals: Mutex<(u64, u64)>,
    handed_over: AtomicBool,
}

type StepError = (&'static str, String);

impl Upgrader {
    /// An upgrader for `rt`, whose config comes from `source`; a new process
    /// is `exe` (unless the request names another binary) run with `args`.
    /// `history` is what the process that handed over to this one knew.
    pub fn new(
        rt: Arc<RuntimeShared>,
        source: ConfigSource,
        exe: PathBuf,
        args: Vec<OsString>,
        timeouts: Timeouts,
        history: Vec<UpgradeRecord>,
    ) -> Upgrader {
        Upgrader {
            rt,
            source,
            exe,
            args,
            timeouts,
            ctl: Mutex::new(None),
            admin: Mutex::new(None),
            running: Mutex::new(()),
            history: Mutex::new(history),
            totals: Mutex::new((0, 0)),
            handed_over: AtomicBool::new(false),
        }
    }

    /// The control socket to hand over.
    pub fn set_ctl(&self, ctl: CtlHandoff) {
        *self.ctl.lock() = Some(ctl);
    }

    /// The admin listener to hand over (and the flag that stops this
    /// process accepting on it).
    pub fn set_admin(&self, admin: (Arc<std::net::TcpListener>, Arc<AtomicBool>)) {
        *self.admin.lock() = Some(admin);
    }

    /// Whether this process handed over to a new one (it should drain and exit).
    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Acquire)
    }

    /// Upgrades this process ran: (the new process took over, failed).
    pub fn totals(&self) -> (u64, u64) {
        *self.totals.lock()
    }

    /// The upgrades this process and its predecessors ran, oldest first.
    pub fn history(&self) -> Vec<UpgradeRecord> {
        self.history.lock().clone()
    }

    /// Add `r` to the history (the new process adds the upgrade that made it).
    pub fn remember(&self, r: &UpgradeRecord) {
        let mut h = self.history.lock();
        if h.len() == HISTORY_KEPT {
            h.remove(0);
        }
        h.push(r.clone());
    }

    /// Upgrade to `binary` (default: the file now at the path this process
    /// was started from). `Ok` once the new process took over (this one
    /// then drains: see [`Upgrader::handed_over`]); `Err` with the step that
    /// failed, this process serving as before.
    pub fn upgrade(&self, binary: Option<PathBuf>) -> Result<UpgradeRecord, Box<UpgradeRecord>> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let binary = binary.unwrap_or_else(|| self.exe.clone());
        let mut rec = UpgradeRecord {
            id: id.clone(),
            started_at: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            old_pid: std::process::id(),
            new_pid: 0,
            binary: binary.display().to_string(),
            old_version: env!("CARGO_PKG_VERSION").into(),
            new_version: None,
            steps: Vec::new(),
            duration_ms: 0.0,
            outcome: "failed".into(),
            failed_step: None,
            error: None,
        };
        let t0 = Instant::now();
        let result = match self.running.try_lock() {
            None => Err(("start", "another upgrade is running; one at a time".to_owned())),
            Some(_one) if self.handed_over() => Err((
                "start",
                "this process already handed over to a new one; ask that one (same control socket)".into(),
            )),
            Some(_one) => {
                // Every line logged on this thread meanwhile carries the id.
                let _span = tracing::info_span!("upgrade", upgrade_id = %id).entered();
                tracing::info!(binary = %binary.display(), "binary upgrade started");
                match self.rt.without_reloads(|| self.steps(&id, &binary, &mut rec)) {
                    Ok(r) => r,
                    Err(_) => Err(("start", "a config reload is running; try again when it is done".into())),
                }
            }
        };
        rec.duration_ms = t0.elapsed().as_secs_f64() * 1e3;
        match result {
            Ok(()) => {
                rec.outcome = "ok".into();
                self.totals.lock().0 += 1;
                tracing::info!(upgrade_id = %id, new_pid = rec.new_pid, ms = rec.duration_ms, "binary upgrade: the new process took over; this one drains and exits");
                self.remember(&rec);
                Ok(rec)
            }
            Err((step, why)) => {
                tracing::warn!(upgrade_id = %id, step, "binary upgrade failed, this process serves on: {why}");
                self.totals.lock().1 += 1;
                rec.failed_step = Some(step.into());
                rec.error = Some(why);
                self.remember(&rec);
                Err(Box::new(rec))
            }
        }
    }

    fn steps(&self, id: &str, binary: &Path, rec: &mut UpgradeRecord) -> Result<(), StepError> {
        let t0 = Instant::now();
        let conn = self.steps_to_switch(id, binary, rec)?;
        // The new process keeps the record of the upgrade that made it.
        let mut done = rec.clone();
        done.outcome = "ok".into();
        done.duration_ms = t0.elapsed().as_secs_f64() * 1e3;
        if let Err(e) = send(&conn, &Msg::Done { record: done }, &[]) {
            tracing::warn!(upgrade_id = %id, "the new process did not take the upgrade's record: {e}");
        }
        Ok(())
    }

    fn steps_to_switch(&self, id: &str, binary: &Path, rec: &mut UpgradeRecord) -> Result<UnixStream, StepError> {
        let mut t = Instant::now();
        let region = &self.rt.loader().host().state;
        // check: what the new process would run is what this one runs.
        region.settled().map_err(|e| ("check", e))?;
        let digest = self.source.digest().map_err(|e| ("check", e))?;
        match self.rt.config_digest() {
            Some(d) if d == digest => {}
            Some(_) => {
                return Err((
                    "check",
                    format!(
                        "{} changed since this process last loaded it: the new process would run another config; reload it first (molt ctl reload) or restore it",
                        self.source.describe()
                    ),
                ));
            }
            None => return Err(("check", "this process has not loaded its config whole yet".into())),
        }
        let ctl_listener = self.ctl.lock().as_ref().map(|c| c.listener.clone());
        let Some(ctl_listener) = ctl_listener else {
            return Err(("check", "this process has no control socket to hand over".into()));
        };
        rec.step("check", &mut t);

        // start: the new binary, told where to connect.
        let sock_path = self.rt.run_dir().join("upgrade.sock");
        let _ = std::fs::remove_file(&sock_path);
        let listener = UnixListener::bind(&sock_path)
            .map_err(|e| ("start", format!("cannot listen on {}: {e}", sock_path.display())))?;
        let _cleanup = RemoveOnDrop(sock_path.clone());
        std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| listener.set_nonblocking(true))
            .map_err(|e| ("start", format!("{}: {e}", sock_path.display())))?;
        let child = Command::new(binary)
            .args(&self.args)
            .env(ENV_SOCKET, &sock_path)
            .env(ENV_ID, id)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| ("start", format!("cannot start {}: {e}", binary.display())))?;
        rec.new_pid = child.id();
        let mut child = ChildGuard { child: Some(child) };
        let conn = self.accept(&listener, &mut child)?;
        rec.step("start", &mut t);

        // handshake
        let hello = match recv(&conn, self.timeouts.connect) {
            Ok((m, _)) => m,
            Err(e) => return Err(("handshake", child.why(format!("no hello from the new process: {e}")))),
        };
        let Msg::Hello { protocol, molt_version, abi_major, state_format, config_digest, workers, pid } = hello else {
            return Err(("handshake", format!("the new process sent {hello:?} instead of its hello")));
        };
        rec.new_version = Some(molt_version.clone());
        let refusal = if protocol != PROTOCOL {
            Some(format!("it speaks upgrade protocol {protocol}, this process {PROTOCOL}"))
        } else if abi_major != u32::from(molt_abi::ffi::MOLT_ABI_MAJOR) {
            Some(format!(
                "its module ABI major is {abi_major}, this process's {}: the loaded modules would not load there",
                molt_abi::ffi::MOLT_ABI_MAJOR
            ))
        } else if state_format != crate::state::format::FORMAT_VERSION {
            Some(format!(
                "its state file format is {state_format}, this process's {}",
                crate::state::format::FORMAT_VERSION
            ))
        } else if config_digest != digest {
            Some("it read another config than this process runs (the config file, or the built-in default's module directory, differs)".into())
        } else if workers != self.rt.workers().len() {
            Some(format!(
                "it would run {workers} workers, this process runs {}: each worker's listening sockets are handed over",
                self.rt.workers().len()
            ))
        } else if pid != rec.new_pid {
            Some(format!("its hello says pid {pid}, the process started is {}", rec.new_pid))
        } else {
            None
        };
        if let Some(reason) = refusal {
            let _ = send(&conn, &Msg::Refused { reason: reason.clone() }, &[]);
            return Err(("handshake", format!("refused: {reason}")));
        }
        rec.step("handshake", &mut t);

        // handover: the writer role goes first; it comes back on any failure.
        region.give_up_writer();
        let mut writer = WriterBack(Some(region));
        let listeners = self.rt.listener_fds();
        let mut names = vec!["lock".to_owned()];
        let mut fds: Vec<BorrowedFd<'_>> = vec![self.rt.run_dir_lock().as_fd()];
        if let Some(f) = region.file() {
            names.push("state".into());
            fds.push(f.as_fd());
        }
        names.push("ctl".into());
        fds.push(ctl_listener.as_fd());
        let admin = self.admin.lock().as_ref().map(|(l, _)| l.clone());
        if let Some(a) = &admin {
            names.push("admin".into());
            fds.push(a.as_fd());
        }
        for (key, socks) in &listeners {
            for s in socks {
                names.push(key.clone());
                fds.push(s.as_fd());
            }
        }
        let m = Msg::Handover { upgrade_id: id.to_owned(), fds: names, history: self.history() };
        send(&conn, &m, &fds).map_err(|e| ("handover", child.why(format!("cannot hand over: {e}"))))?;
        drop(fds);
        drop(listeners);
        rec.step("handover", &mut t);

        // ready: its modules are loaded; it does not accept yet.
        match recv(&conn, self.timeouts.ready) {
            Ok((Msg::Ready, _)) => {}
            Ok((Msg::Failed { step, reason }, _)) => {
                return Err(("ready", format!("the new process failed at {step}: {reason}")));
            }
            Ok((other, _)) => return Err(("ready", format!("the new process sent {other:?} instead of ready"))),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err((
                    "ready",
                    format!("the new process was not ready within {} s; it was killed", self.timeouts.ready.as_secs()),
                ));
            }
            Err(e) => return Err(("ready", child.why(format!("the connection to the new process broke: {e}")))),
        }
        rec.step("ready", &mut t);

        // takeover: the new process takes the writer role and accepts.
        send(&conn, &Msg::Go, &[]).map_err(|e| ("takeover", child.why(format!("cannot tell it to go: {e}"))))?;
        match recv(&conn, self.timeouts.took) {
            Ok((Msg::Took, _)) => {}
            Ok((other, _)) => return Err(("takeover", format!("the new process sent {other:?} instead of took"))),
            Err(e) => return Err(("takeover", child.why(format!("no word from the new process after go: {e}")))),
        }
        writer.0 = None;
        rec.step("takeover", &mut t);

        // switch: this process stops accepting; the new one has it all.
        self.rt.set_accepting(false);
        if let Some(c) = self.ctl.lock().as_ref() {
            c.handed_off.store(true, Ordering::Release);
            c.accepting.store(false, Ordering::Release);
        }
        if let Some((_, on)) = self.admin.lock().as_ref() {
            on.store(false, Ordering::Release);
        }
        self.handed_over.store(true, Ordering::Release);
        // The new process runs on (it is not this one's to reap any more).
        child.child = None;
        rec.step("switch", &mut t);
        Ok(conn)
    }

    /// Wait for the new process to connect; it is the child started, of
    /// this user.
    fn accept(&self, listener: &UnixListener, child: &mut ChildGuard) -> Result<UnixStream, StepError> {
        let until = Instant::now() + self.timeouts.connect;
        loop {
            match listener.accept() {
                Ok((conn, _)) => {
                    conn.set_nonblocking(false).map_err(|e| ("start", e.to_string()))?;
                    let (uid, pid) = crate::sys::creds::peer(&conn).map_err(|e| ("start", e.to_string()))?;
                    let want = child.child.as_ref().map_or(0, Child::id);
                    if uid != crate::sys::files::effective_uid() || i64::from(pid) != i64::from(want) {
                        tracing::warn!(uid, pid, "upgrade socket: a connection not from the new process, closed");
                        continue;
                    }
                    return Ok(conn);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(("start", format!("accepting on the upgrade socket: {e}"))),
            }
            if let Some(s) = child.exited() {
                return Err(("start", format!("the new process exited ({s}) before it connected")));
            }
            if Instant::now() >= until {
                return Err((
                    "start",
                    format!(
                        "the new process did not connect within {} s (is {} a molt binary?); it was killed",
                        self.timeouts.connect.as_secs(),
                        child.child.as_ref().map_or(0, Child::id)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Gives the writer role back to this process unless disarmed.
struct WriterBack<'a>(Option<&'a crate::state::Region>);

impl Drop for WriterBack<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.resume_writer();
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the new process got from the old one.
pub struct Handover {
    /// The upgrade's id.
    pub id: String,
    /// Lock, state file and listening sockets, for [`crate::Runtime::start_with`]
    /// (paused).
    pub inherited: Inherited,
    /// The control socket.
    pub ctl: Option<UnixListener>,
    /// The admin listener, if the old process had one.
    pub admin: Option<std::net::TcpListener>,
    /// The upgrades before this one.
    pub history: Vec<UpgradeRecord>,
}

/// The new process's side of an upgrade.
pub struct Joiner {
    conn: UnixStream,
    id: String,
}

impl Joiner {
    /// Connect to the upgrade socket [`ENV_SOCKET`] names, if it is set
    /// (this process was started by a running molt to take over).
    pub fn from_env() -> Option<Result<Joiner, String>> {
        let path = std::env::var_os(ENV_SOCKET)?;
        let id = std::env::var(ENV_ID).unwrap_or_default();
        Some(
            UnixStream::connect(&path)
                .map(|conn| Joiner { conn, id })
                .map_err(|e| format!("cannot connect to the upgrade socket {}: {e}", Path::new(&path).display())),
        )
    }

    /// The upgrade's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Say hello; the old process's handover, or its refusal.
    pub fn hello(&self, config_digest: String, workers: usize) -> Result<Handover, String> {
        let hello = Msg::Hello {
            protocol: PROTOCOL,
            molt_version: env!("CARGO_PKG_VERSION").into(),
            abi_major: u32::from(molt_abi::ffi::MOLT_ABI_MAJOR),
            state_format: crate::state::format::FORMAT_VERSION,
            config_digest,
            workers,
            pid: std::process::id(),
        };
        send(&self.conn, &hello, &[]).map_err(|e| format!("cannot send hello: {e}"))?;
        let (m, fds) = recv(&self.conn, Duration::from_secs(30)).map_err(|e| format!("no handover: {e}"))?;
        match m {
            Msg::Refused { reason } => Err(format!("the running molt refused the upgrade: {reason}")),
            Msg::Handover { upgrade_id, fds: names, history } => {
                if names.len() != fds.len() {
                    return Err(format!("{} descriptors named, {} received", names.len(), fds.len()));
                }
                let mut inherited = Inherited { paused: true, ..Inherited::default() };
                let (mut ctl, mut admin) = (None, None);
                for (name, fd) in names.into_iter().zip(fds) {
                    match name.as_str() {
                        "lock" => inherited.run_dir_lock = Some(std::fs::File::from(fd)),
                        "state" => inherited.state_file = Some(std::fs::File::from(fd)),
                        "ctl" => ctl = Some(UnixListener::from(fd)),
                        "admin" => admin = Some(std::net::TcpListener::from(fd)),
                        key => inherited.listeners.entry(key.to_owned()).or_default().push(fd.into()),
                    }
                }
                Ok(Handover { id: upgrade_id, inherited, ctl, admin, history })
            }
            other => Err(format!("the running molt sent {other:?} instead of a handover")),
        }
    }

    /// Tell the old process this one failed at `step` (it kills this one).
    pub fn failed(&self, step: &str, reason: &str) {
        let _ = send(&self.conn, &Msg::Failed { step: step.into(), reason: reason.into() }, &[]);
    }

    /// Say ready and wait for `go` (the old process gave up the writer role
    /// and will stop accepting once this one took over).
    pub fn ready(&self, within: Duration) -> Result<(), String> {
        send(&self.conn, &Msg::Ready, &[]).map_err(|e| format!("cannot say ready: {e}"))?;
        match recv(&self.conn, within) {
            Ok((Msg::Go, _)) => Ok(()),
            Ok((other, _)) => Err(format!("the running molt sent {other:?} instead of go")),
            Err(e) => Err(format!("no go from the running molt: {e}")),
        }
    }

    /// Say this process took over (accepting, the writer).
    pub fn took(&self) -> Result<(), String> {
        send(&self.conn, &Msg::Took, &[]).map_err(|e| format!("cannot say took: {e}"))
    }

    /// The upgrade's record, which the old process sends once it switched
    /// (it stopped accepting): for this process's history.
    pub fn record(self, within: Duration) -> Result<UpgradeRecord, String> {
        match recv(&self.conn, within) {
            Ok((Msg::Done { record }, _)) => Ok(record),
            Ok((other, _)) => Err(format!("the old process sent {other:?} instead of the upgrade's record")),
            Err(e) => Err(format!("no record of the upgrade from the old process: {e}")),
        }
    }
}
