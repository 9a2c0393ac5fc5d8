//! The admin HTTP listener (`[admin] listen`, off by default): `/metrics`
//! for Prometheus to scrape, `/healthz` and `/readyz` for supervisors and
//! load balancers, as Envoy's admin and HAProxy's stats endpoints serve.
//!
//! - `GET /metrics`: the metrics of `molt ctl metrics`, Prometheus text format.
//! - `GET /healthz`: 200 while the process serves its control plane.
//! - `GET /readyz`: 200 once a generation of modules is active (the first
//!   load done), 503 before.
//!
//! It answers GET (and HEAD) only; each connection gets one response and is
//! closed. Like the control socket it is bounded: 16 clients at once, a
//! request head of at most 8 KiB arriving within 5 s. It has no
//! authentication: bind it to loopback or a private address.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::status;
use crate::runtime::RuntimeShared;
use crate::sync::Arc;

/// Clients served at once.
const MAX_CLIENTS: usize = 16;
/// The largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// The time a client has to send its head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The admin listener: serves on its own threads until dropped.
pub struct AdminServer {
    addr: SocketAddr,
    _clients: super::clients::Clients,
    listener: Arc<TcpListener>,
    accepting: Arc<crate::sync::AtomicBool>,
}

impl AdminServer {
    /// Listen on `addr` (refused when another socket serves it) and serve.
    pub fn start(rt: Arc<RuntimeShared>, addr: SocketAddr) -> std::io::Result<AdminServer> {
        Self::start_with(rt, addr, None, None)
    }

    /// Serve on `inherited` (the listener a binary upgrade handed over;
    /// accepted on only from [`AdminServer::resume`]), else on a listener
    /// bound to `addr` here; the upgrader's counters go into `/metrics`.
    pub fn start_with(
        rt: Arc<RuntimeShared>,
        addr: SocketAddr,
        inherited: Option<TcpListener>,
        upgrader: Option<Arc<super::Upgrader>>,
    ) -> std::io::Result<AdminServer> {
        let paused = inherited.is_some();
        let listener = match inherited {
            Some(l) => l,
            None => {
                if addr.port() != 0 {
                    crate::net::ensure_unserved(addr)
                        .map_err(|e| std::io::Error::new(e.kind(), format!("admin listener {addr}: {e}")))?;
                }
                TcpListener::bind(addr)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("admin listener {addr}: {e}")))?
            }
        };
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let listener = Arc::new(listener);
        let accepting = Arc::new(crate::sync::AtomicBool::new(!paused));
        let (l, on) = (listener.clone(), accepting.clone());
        let clients = super::clients::Clients::start(
            "molt-admin",
            MAX_CLIENTS,
            move || {
                if on.load(crate::sync::Ordering::Acquire) {
                    l.accept().map(|(s, _)| s)
                } else {
                    Err(std::io::ErrorKind::WouldBlock.into())
                }
            },
            |stream: TcpStream| {
                let _ = respond(&stream, 503, "text/plain", b"busy: too many admin clients\n", false);
            },
            move |stream, _stop| serve(&rt, upgrader.as_deref(), stream),
        )?;
        Ok(AdminServer { addr, _clients: clients, listener, accepting })
    }

    /// Accept (a process that took over, on the listener it inherited).
    pub fn resume(&self) {
        self.accepting.store(true, crate::sync::Ordering::Release);
    }

    /// What a binary upgrade hands over of it: the listener, and the flag
    /// that stops this process accepting on it.
    pub fn handoff(&self) -> (Arc<TcpListener>, Arc<crate::sync::AtomicBool>) {
        (self.listener.clone(), self.accepting.clone())
    }

    /// The address it listens on (port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn respond(mut s: &TcpStream, status: u16, ctype: &str, body: &[u8], head_only: bool) -> std::io::Result<()> {
    let reason = http::StatusCode::from_u16(status).ok().and_then(|c| c.canonical_reason()).unwrap_or("Status");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    s.write_all(&out)
}

fn serve(rt: &RuntimeShared, upgrader: Option<&super::Upgrader>, mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_write_timeout(Some(HEAD_TIMEOUT));
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            let _ = respond(&s, 431, "text/plain", b"request head too large\n", false);
            return;
        }
        let left = HEAD_TIMEOUT.saturating_sub(started.elapsed());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            let _ = respond(&s, 408, "text/plain", b"request head not received in time\n", false);
            return;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let line = buf[..head_end].split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let _ = respond(&s, 405, "text/plain", b"the admin listener answers GET only\n", false);
        return;
    }
    let path = path.split('?').next().unwrap_or("");
    let _ = match path {
        "/metrics" => {
            // OpenMetrics (prometheus-client's encoding); Prometheus scrapes it.
            let text = status::metrics(rt, upgrader);
            respond(&s, 200, "application/openmetrics-text; version=1.0.0; charset=utf-8", text.as_bytes(), head_only)
        }
        "/healthz" => respond(&s, 200, "text/plain", b"ok\n", head_only),
        "/readyz" => match rt.registry().active() {
            Some(g) => {
                let body = format!("ready: generation {}\n", g.id);
                respond(&s, 200, "text/plain", body.as_bytes(), head_only)
            }
            None => respond(&s, 503, "text/plain", b"not ready: no modules loaded yet\n", head_only),
        },
        _ => respond(&s, 404, "text/plain", b"not found: /metrics, /healthz and /readyz are served\n", head_only),
    };
}
