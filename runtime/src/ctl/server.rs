//! The control socket server.

use std::io::{BufRead, BufReader, Write};
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
    let cfg = source.read().map_err(|e| e.to_string())?;
    let r = rt.registry().reload(rt, &cfg.modules).map_err(|e| e.to_string())?;
    Ok(serde_json::to_value(r).unwrap_or(Value::Null))
}

/// The control socket: accepts connections on its own thread.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlServer {
    /// Bind `<run_dir>/ctl.sock` (mode 0600) and serve it.
    pub fn start(rt: Arc<RuntimeShared>, source: ConfigSource) -> std::io::Result<ControlServer> {
        let path = rt.run_dir().join("ctl.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let started = Instant::now();
        let thread = std::thread::Builder::new().name("molt-ctl".into()).spawn(move || {
            while !s.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = serve(&rt, &source, started, stream) {
                            tracing::debug!("control connection ended: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        tracing::warn!("control socket accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
        Ok(ControlServer { path, stop, thread: Some(thread) })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(rt: &RuntimeShared, source: &ConfigSource, started: Instant, stream: UnixStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = stream.try_clone()?;
    let me = crate::sys::files::effective_uid();
    let peer = rustix::net::sockopt::socket_peercred(&stream).map_err(std::io::Error::from)?;
    let peer_uid = peer.uid.as_raw();
    if peer_uid != me {
        tracing::warn!(peer_uid, pid = peer.pid.as_raw_nonzero().get(), "control connection refused: wrong uid");
        let msg = json!({"ok": false, "error": format!("permission denied: uid {peer_uid} may not use this control socket (only uid {me})")});
        writeln!(out, "{msg}")?;
        return Ok(());
    }
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Value>(&line) {
            Err(e) => json!({"ok": false, "error": format!("not JSON: {e}")}),
            Ok(req) => handle(rt, source, started, &req),
        };
        writeln!(out, "{reply}")?;
    }
    Ok(())
}

fn handle(rt: &RuntimeShared, source: &ConfigSource, started: Instant, req: &Value) -> Value {
    let result = match req.get("cmd").and_then(Value::as_str) {
        Some("status") => Ok(status::status(rt, started, &source.describe())),
        Some("metrics") => Ok(Value::String(status::metrics(rt))),
        Some("reload") => reload(rt, source),
        Some("rollback") => rt
            .registry()
            .rollback(rt)
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .map_err(|e| e.to_string()),
        Some(other) => Err(format!("unknown cmd {other:?}: expected status, reload, rollback or metrics")),
        None => Err("request needs a \"cmd\" string".to_owned()),
    };
    match result {
        Ok(v) => json!({"ok": true, "result": v}),
        Err(e) => json!({"ok": false, "error": e}),
    }
}
