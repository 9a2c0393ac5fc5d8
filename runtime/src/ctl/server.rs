//! The control socket server.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::status;
use crate::config::Config;
use crate::runtime::RuntimeShared;
use crate::sync::{Arc, AtomicBool, Ordering};

/// Where a reload reads its config.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file, read again on every reload.
    File(PathBuf),
    /// The built-in default with modules from this directory.
    Builtin(PathBuf),
}

impl ConfigSource {
    /// Read the config.
    pub fn read(&self) -> Result<Config, crate::config::ConfigError> {
        match self {
            ConfigSource::File(p) => Config::load(p),
            ConfigSource::Builtin(d) => Ok(Config::builtin(d)),
        }
    }

    /// A digest of what the config is read from: the file's bytes, or the
    /// built-in default's module directory. Two processes that read equal
    /// digests run the same config (a binary upgrade checks this).
    pub fn digest(&self) -> Result<String, String> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        match self {
            ConfigSource::File(p) => {
                let bytes = std::fs::read(p).map_err(|e| format!("{}: cannot read it: {e}", p.display()))?;
                h.update(b"file\0");
                h.update(&bytes);
            }
            ConfigSource::Builtin(d) => {
                h.update(b"builtin\0");
                h.update(d.as_os_str().as_encoded_bytes());
            }
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A description for status.
    pub fn describe(&self) -> String {
        match self {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::Builtin(d) => format!("built-in default (modules from {})", d.display()),
        }
    }
}

/// Reload from the config source: what SIGHUP and the socket's `reload` do.
pub fn reload(rt: &RuntimeShared, source: &ConfigSource) -> Result<Value, String> {
    // The digest first: a file changed after it was read is loaded by the
    // next reload, and an upgrade meanwhile sees the digests differ.
    let digest = source.digest();
    let cfg = source.read().map_err(|e| e.to_string())?;
    // Isolated modules whose config or file changed: a new child each,
    // ready before anything is published; refused if one is not.
    let running = rt.isolated();
    let mut started: Vec<Arc<crate::isolate::Supervisor>> = Vec::new();
    for c in &cfg.isolated {
        // Unchanged and alive: kept. A module its crash loop marked failed
        // gets a new child from a reload.
        if running.iter().any(|s| s.config().name == c.name && !s.differs(c) && s.status().state != "failed") {
            continue;
        }
        let s = rt.start_isolated(c.clone());
        let st = s.status();
        if st.state != "running" {
            s.stop();
            for n in started {
                n.stop();
            }
            return Err(format!(
                "isolated module {} did not start ({}); nothing was reloaded",
                c.name,
                st.last_exit.unwrap_or_else(|| st.state.into())
            ));
        }
        started.push(s);
    }
    let removed: Vec<_> =
        running.iter().filter(|s| !cfg.isolated.iter().any(|c| c.name == s.config().name)).cloned().collect();
    let r = match rt.reload_config(&cfg.modules, &cfg.http, &cfg.tcp) {
        Ok(r) => r,
        Err(e) => {
            for n in started {
                n.stop();
            }
            return Err(e.to_string());
        }
    };
    if !started.is_empty() || !removed.is_empty() {
        tracing::info!(swapped = started.len(), removed = removed.len(), "isolated modules swapped");
        rt.swap_isolated(started, removed);
    }
    if let Ok(d) = digest {
        rt.set_config_digest(d);
    }
    Ok(serde_json::to_value(r).unwrap_or(Value::Null))
}

/// Clients served at once; more are told so and closed.
pub const MAX_CLIENTS: usize = 16;
/// The longest request line (bytes before its newline).
pub const MAX_REQUEST: usize = 64 * 1024;
/// A client that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a client thread looks at the stop flag while it waits.
const POLL: Duration = Duration::from_millis(100);

/// The control socket: accepts on its own thread, serves each client on a
/// thread of its own (at most [`MAX_CLIENTS`]), each bounded in size
/// ([`MAX_REQUEST`] per line) and time ([`IDLE_TIMEOUT`]), so that no
/// client can stall another or grow molt's memory.
pub struct ControlServer {
    path: PathBuf,
    /// Dropped before the socket file is removed.
    clients: Option<super::clients::Clients>,
    listener: Arc<UnixListener>,
    accepting: Arc<AtomicBool>,
    /// The socket went to a new process (a binary upgrade): its file stays.
    handed_off: Arc<AtomicBool>,
}

impl ControlServer {
    /// Bind `<run_dir>/ctl.sock` (mode 0600) and serve it.
    pub fn start(rt: Arc<RuntimeShared>, source: ConfigSource) -> std::io::Result<ControlServer> {
        Self::start_with(rt, source, None, None)
    }

    /// Serve `<run_dir>/ctl.sock`: on `inherited` (the listener a binary
    /// upgrade handed over, already bound there), else bound here; with an
    /// upgrader, the socket also takes `upgrade`. An inherited socket is
    /// accepted on only from [`ControlServer::resume`]: until this process
    /// took over, the old one answers.
    pub fn start_with(
        rt: Arc<RuntimeShared>,
        source: ConfigSource,
        inherited: Option<UnixListener>,
        upgrader: Option<Arc<super::Upgrader>>,
    ) -> std::io::Result<ControlServer> {
        let path = rt.run_dir().join("ctl.sock");
        let paused = inherited.is_some();
        let listener = match inherited {
            Some(l) => l,
            None => {
                let _ = std::fs::remove_file(&path);
                let listener = UnixListener::bind(&path)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                listener
            }
        };
        listener.set_nonblocking(true)?;
        let listener = Arc::new(listener);
        let accepting = Arc::new(AtomicBool::new(!paused));
        let started = Instant::now();
        let (l, on) = (listener.clone(), accepting.clone());
        let clients = super::clients::Clients::start(
            "molt-ctl",
            MAX_CLIENTS,
            move || {
                if on.load(Ordering::Acquire) {
                    l.accept().map(|(s, _)| s)
                } else {
                    Err(std::io::ErrorKind::WouldBlock.into())
                }
            },
            |mut stream: UnixStream| {
                let busy = json!({"ok": false, "error": format!("the control socket serves {MAX_CLIENTS} clients at once; try again")});
                let _ = writeln!(stream, "{busy}");
            },
            move |stream, stop| {
                if let Err(e) = serve(&rt, &source, upgrader.as_deref(), started, stream, stop) {
                    tracing::debug!("control connection ended: {e}");
                }
            },
        )?;
        Ok(ControlServer {
            path,
            clients: Some(clients),
            listener,
            accepting,
            handed_off: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Accept (a process that took over, on the socket it inherited).
    pub fn resume(&self) {
        self.accepting.store(true, Ordering::Release);
    }

    /// What a binary upgrade hands over of this socket.
    pub fn handoff(&self) -> super::upgrade::CtlHandoff {
        super::upgrade::CtlHandoff {
            listener: self.listener.clone(),
            accepting: self.accepting.clone(),
            handed_off: self.handed_off.clone(),
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        drop(self.clients.take());
        if !self.handed_off.load(Ordering::Acquire) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What reading a request line found.
enum Line {
    /// A line (without its newline).
    Request(Vec<u8>),
    /// EOF, the idle timeout, or the server stopping.
    End,
    /// A line over [`MAX_REQUEST`].
    TooLarge,
}

/// Read one request line from `stream`, keeping bytes after it in `pending`.
fn read_line(stream: &mut UnixStream, pending: &mut Vec<u8>, stop: &AtomicBool) -> std::io::Result<Line> {
    use std::io::Read;
    let mut last = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line = pending[..i].to_vec();
            pending.drain(..=i);
            return Ok(Line::Request(line));
        }
        if pending.len() > MAX_REQUEST {
            return Ok(Line::TooLarge);
        }
        if stop.load(Ordering::Acquire) || last.elapsed() > IDLE_TIMEOUT {
            return Ok(Line::End);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(Line::End),
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                last = Instant::now();
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn serve(
    rt: &RuntimeShared,
    source: &ConfigSource,
    upgrader: Option<&super::Upgrader>,
    started: Instant,
    mut stream: UnixStream,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(IDLE_TIMEOUT))?;
    let mut out = stream.try_clone()?;
    let me = crate::sys::files::effective_uid();
    let (peer_uid, peer_pid) = crate::sys::creds::peer(&stream)?;
    if peer_uid != me {
        tracing::warn!(peer_uid, pid = peer_pid, "control connection refused: wrong uid");
        let msg = json!({"ok": false, "error": format!("permission denied: uid {peer_uid} may not use this control socket (only uid {me})")});
        writeln!(out, "{msg}")?;
        return Ok(());
    }
    let mut pending = Vec::new();
    loop {
        let line = match read_line(&mut stream, &mut pending, stop)? {
            Line::End => return Ok(()),
            Line::TooLarge => {
                let msg = json!({"ok": false, "error": format!("request line too large: over {MAX_REQUEST} bytes without a newline; the connection is closed")});
                writeln!(out, "{msg}")?;
                return Ok(());
            }
            Line::Request(l) => l,
        };
        let reply = match std::str::from_utf8(&line) {
            Err(e) => {
                json!({"ok": false, "error": format!("the request is not UTF-8 ({e}); send one JSON object per line")})
            }
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => match serde_json::from_str::<Value>(text) {
                Err(e) => json!({"ok": false, "error": format!("not JSON: {e}")}),
                Ok(req) => handle(rt, source, upgrader, started, &req),
            },
        };
        writeln!(out, "{reply}")?;
    }
}

fn handle(
    rt: &RuntimeShared,
    source: &ConfigSource,
    upgrader: Option<&super::Upgrader>,
    started: Instant,
    req: &Value,
) -> Value {
    let result = match req.get("cmd").and_then(Value::as_str) {
        Some("status") => {
            let mut v = status::status(rt, started, &source.describe());
            if let (Some(u), Some(o)) = (upgrader, v.as_object_mut()) {
                o.insert("upgrades".into(), serde_json::to_value(u.history()).unwrap_or(Value::Null));
            }
            Ok(v)
        }
        Some("upgrade") => match upgrader {
            None => Err("this process cannot upgrade (it was started without an upgrader)".to_owned()),
            Some(u) => {
                let binary = req.get("binary").and_then(Value::as_str).map(PathBuf::from);
                match u.upgrade(binary) {
                    Ok(r) => Ok(serde_json::to_value(r).unwrap_or(Value::Null)),
                    Err(r) => Err(format!(
                        "upgrade {} failed at step {}: {}; this process (pid {}) serves on",
                        r.id,
                        r.failed_step.as_deref().unwrap_or("?"),
                        r.error.as_deref().unwrap_or("?"),
                        r.old_pid
                    )),
                }
            }
        },
        Some("metrics") => Ok(Value::String(status::metrics(rt, upgrader))),
        Some("reload") => reload(rt, source),
        Some("rollback") => rt
            .registry()
            .rollback(rt)
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .map_err(|e| e.to_string()),
        Some(other) => Err(format!("unknown cmd {other:?}: expected status, reload, rollback, upgrade or metrics")),
        None => Err("request needs a \"cmd\" string".to_owned()),
    };
    match result {
        Ok(v) => json!({"ok": true, "result": v}),
        Err(e) => json!({"ok": false, "error": e}),
    }
}
