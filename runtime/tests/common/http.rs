//! An HTTP/1.1 backend and client for the proxy tests: real sockets on
//! 127.0.0.1, parsed with the runtime's own head parser and chunked
//! decoder (the parts under test are the proxy's state machine, routes and
//! hooks, which these do not use).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use molt_runtime::http::chunked::{Decoder, encode_chunk, encode_end};
use molt_runtime::http::head::{self, Body, Header, Limits};

/// What a backend counted.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Request body bytes read.
    pub body_bytes: AtomicU64,
}

/// A backend server named `name`. By path:
/// - `/echo...`: 200, the request body back (Content-Length), and headers
///   `X-Backend: name`, `X-Conn: <connection number>`, `X-Seen-<H>` for
///   request headers X-Rw, X-Router-Mark, X-Forwarded-For, X-Test.
/// - `/chunked`: the request body back in chunks of at most 1000 bytes.
/// - `/big/<n>`: n bytes of 'x', Content-Length, written in 64 KiB pieces.
/// - `/sink`: reads the body, answers "received <n>".
/// - `/delay/<ms>`: like `/echo`, after sleeping `ms`.
/// - `/slow`: never answers (holds the connection).
/// - `/close`: the body "until close" without framing, then closes.
pub fn backend(name: &'static str) -> (SocketAddr, Arc<BackendStats>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let stats = Arc::new(BackendStats::default());
    let st = stats.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let n = st.connections.fetch_add(1, Ordering::Relaxed) + 1;
            let st = st.clone();
            std::thread::spawn(move || serve(name, n, s, &st));
        }
    });
    (addr, stats)
}

fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_slice())
}

/// Read a body framed by `body` from `s` with `buf` holding bytes already read.
fn read_body(s: &mut TcpStream, buf: &mut Vec<u8>, body: Body, keep: bool) -> Option<(Vec<u8>, u64)> {
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    match body {
        Body::None => {}
        Body::Length(mut n) => loop {
            let k = (n as usize).min(buf.len());
            if keep {
                out.extend_from_slice(&buf[..k]);
            }
            buf.drain(..k);
            n -= k as u64;
            total += k as u64;
            if n == 0 {
                break;
            }
            let r = s.read(&mut chunk).ok()?;
            if r == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..r]);
        },
        Body::Chunked => {
            let mut d = Decoder::new();
            loop {
                let mut payload = Vec::new();
                let used = d.decode(buf, &mut payload).ok()?;
                buf.drain(..used);
                total += payload.len() as u64;
                if keep {
                    out.extend_from_slice(&payload);
                }
                if d.is_done() {
                    break;
                }
                let r = s.read(&mut chunk).ok()?;
                if r == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..r]);
            }
        }
        Body::UntilClose => {
            out.append(buf);
            loop {
                let r = s.read(&mut chunk).ok()?;
                if r == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..r]);
            }
            total = out.len() as u64;
        }
    }
    Some((out, total))
}

fn serve(name: &str, conn: u64, mut s: TcpStream, st: &BackendStats) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let limits = Limits { max_head_bytes: 64 * 1024, max_headers: 200 };
    loop {
        let (req, n) = loop {
            match head::parse_request(&buf, &limits) {
                Ok(Some(x)) => break x,
                Ok(None) => {}
                Err(_) => return,
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        buf.drain(..n);
        let path = req.target.clone();
        let keep = !path.starts_with("/sink");
        let Some((body, total)) = read_body(&mut s, &mut buf, req.body, keep) else { return };
        st.body_bytes.fetch_add(total, Ordering::Relaxed);
        st.requests.fetch_add(1, Ordering::Relaxed);
        let mut head = format!("HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nX-Conn: {conn}\r\n");
        for h in ["X-Rw", "X-Router-Mark", "X-Forwarded-For", "X-Test", "Expect"] {
            if let Some(v) = header(&req.headers, h) {
                head.push_str(&format!("X-Seen-{h}: {}\r\n", String::from_utf8_lossy(v)));
            }
        }
        let ok = if path.contains("/echo") {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            s.write_all(head.as_bytes()).and_then(|_| s.write_all(&body))
        } else if path.starts_with("/chunked") {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            let mut out = head.into_bytes();
            for c in body.chunks(1000) {
                encode_chunk(c, &mut out);
            }
            encode_end(&mut out);
            s.write_all(&out)
        } else if let Some(n) = path.strip_prefix("/big/") {
            let n: u64 = n.parse().unwrap_or(0);
            head.push_str(&format!("Content-Length: {n}\r\n\r\n"));
            let piece = vec![b'x'; 64 * 1024];
            let mut r = s.write_all(head.as_bytes());
            let mut left = n;
            while left > 0 && r.is_ok() {
                let k = left.min(piece.len() as u64) as usize;
                r = s.write_all(&piece[..k]);
                left -= k as u64;
            }
            r
        } else if path.starts_with("/sink") {
            let text = format!("received {total}");
            head.push_str(&format!("Content-Length: {}\r\n\r\n{text}", text.len()));
            s.write_all(head.as_bytes())
        } else if let Some(ms) = path.strip_prefix("/delay/") {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            s.write_all(head.as_bytes()).and_then(|_| s.write_all(&body))
        } else if path.starts_with("/slow") {
            std::thread::sleep(Duration::from_secs(30));
            return;
        } else if path.starts_with("/close") {
            head.push_str("\r\nuntil close");
            let _ = s.write_all(head.as_bytes());
            let _ = s.shutdown(Shutdown::Both);
            return;
        } else {
            s.write_all(format!("HTTP/1.1 404 Not Found\r\nX-Backend: {name}\r\nContent-Length: 0\r\n\r\n").as_bytes())
        };
        if ok.is_err() || !req.keep_alive {
            return;
        }
    }
}

/// A response as the client read it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    /// The server said it closes the connection.
    pub close: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        header(&self.headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive client connection.
pub struct Client {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Client { s, buf: Vec::new() }
    }

    /// A client on a connection made by the caller.
    pub fn from_stream(s: TcpStream) -> Client {
        Client { s, buf: Vec::new() }
    }

    /// Send raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Send raw bytes the server may refuse to read (it may have answered
    /// and closed): a failed write is not an error here.
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes);
    }

    /// Read one response to a request with `method`; None when the
    /// connection closed first.
    pub fn read(&mut self, method: &str) -> Option<Resp> {
        let mut chunk = vec![0u8; 64 * 1024];
        let limits = Limits { max_head_bytes: 64 * 1024, max_headers: 200 };
        let (h, n) = loop {
            match head::parse_response(&self.buf, &limits, method) {
                Ok(Some(x)) if (100..200).contains(&x.0.status) => {
                    self.buf.drain(..x.1);
                    continue;
                }
                Ok(Some(x)) => break x,
                Ok(None) => {}
                Err(e) => panic!("bad response from the proxy: {e}"),
            }
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        };
        self.buf.drain(..n);
        let (body, _) = read_body(&mut self.s, &mut self.buf, h.body, true)?;
        Some(Resp { status: h.status, close: !h.keep_alive, headers: h.headers, body })
    }

    /// GET `path` (Host: test) and read the response.
    pub fn get(&mut self, path: &str) -> Option<Resp> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.read("GET")
    }

    /// GET with extra header lines (each ending in \r\n).
    pub fn get_with(&mut self, path: &str, extra: &str) -> Option<Resp> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n").as_bytes());
        self.read("GET")
    }

    /// POST `body` with Content-Length.
    pub fn post(&mut self, path: &str, body: &[u8]) -> Option<Resp> {
        self.send(format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
        self.send(body);
        self.read("POST")
    }

    /// Whether the server closed the connection (reads EOF within 5 s).
    pub fn closed(&mut self) -> bool {
        self.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

/// One request on a fresh connection.
pub fn once(addr: SocketAddr, raw: &[u8], method: &str) -> Option<Resp> {
    let mut c = Client::connect(addr);
    c.send(raw);
    c.read(method)
}

/// What a scripted upstream saw: one line per request head read, in order,
/// as "conn <n> <method> <target> host=<host> id=<X-Req-Id>".
#[derive(Debug, Default)]
pub struct Seen {
    pub lines: std::sync::Mutex<Vec<String>>,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections whose peer was seen to close or reset (EOF or error on read).
    pub peer_closed: AtomicU64,
}

impl Seen {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
    /// How many requests carried `X-Req-Id: id`.
    pub fn count_id(&self, id: &str) -> usize {
        let want = format!(" id={id}");
        self.lines.lock().unwrap().iter().filter(|l| l.ends_with(&want)).count()
    }
}

/// One connection of a scripted upstream, handed to its script.
pub struct Conn {
    pub s: TcpStream,
    /// Its number on this server, from 1.
    pub n: u64,
    buf: Vec<u8>,
    seen: Arc<Seen>,
}

impl Conn {
    /// Read one request head and its body; None when the peer closed first.
    pub fn request(&mut self) -> Option<(head::RequestHead, Vec<u8>)> {
        let mut chunk = vec![0u8; 64 * 1024];
        let limits = Limits { max_head_bytes: 64 * 1024, max_headers: 200 };
        let (req, n) = loop {
            match head::parse_request(&self.buf, &limits) {
                Ok(Some(x)) => break x,
                Ok(None) => {}
                Err(_) => return None,
            }
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    self.seen.peer_closed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        };
        self.buf.drain(..n);
        let id = header(&req.headers, "x-req-id").map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
        let host = req.host.clone().unwrap_or_default();
        self.seen
            .lines
            .lock()
            .unwrap()
            .push(format!("conn {} {} {} host={host} id={id}", self.n, req.method, req.target));
        let body = match read_body(&mut self.s, &mut self.buf, req.body, true) {
            Some((b, _)) => b,
            None => {
                self.seen.peer_closed.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        Some((req, body))
    }

    /// Read the request head only (its body is left in the socket).
    pub fn head_only(&mut self) -> Option<head::RequestHead> {
        let mut chunk = vec![0u8; 64 * 1024];
        let limits = Limits { max_head_bytes: 64 * 1024, max_headers: 200 };
        loop {
            if let Ok(Some((req, n))) = head::parse_request(&self.buf, &limits) {
                self.buf.drain(..n);
                return Some(req);
            }
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
    }

    /// Read until the peer closes or resets; whether it did within `within`.
    pub fn wait_closed(&mut self, within: Duration) -> bool {
        let _ = self.s.set_read_timeout(Some(within));
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    /// Write bytes (errors ignored: the script decides what a failure means).
    pub fn write(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b);
    }

    /// A complete 200 whose every part names `tag`: reason, a header, the body.
    pub fn answer(&mut self, tag: &str) {
        let body = format!("{tag}-body-{tag}");
        let r = format!("HTTP/1.1 200 {tag}\r\nX-From: {tag}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        self.write(r.as_bytes());
    }

    /// Close with a reset (SO_LINGER 0) instead of a FIN.
    pub fn reset(self) {
        let _ = rustix::net::sockopt::set_socket_linger(&self.s, Some(Duration::ZERO));
        drop(self.s);
    }
}

/// A scripted upstream: every accepted connection runs `script` on a thread
/// of its own; what it read is logged in the returned [`Seen`].
pub fn scripted(script: impl Fn(Conn) + Send + Sync + 'static) -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let script = Arc::new(script);
    let sn = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
            let n = sn.connections.fetch_add(1, Ordering::Relaxed) + 1;
            let (script, seen) = (script.clone(), sn.clone());
            std::thread::spawn(move || script(Conn { s, n, buf: Vec::new(), seen }));
        }
    });
    (addr, seen)
}

/// An upstream that answers every request with [`Conn::answer`] tagged `tag`, keep-alive.
pub fn answering(tag: &'static str) -> (SocketAddr, Arc<Seen>) {
    scripted(move |mut c| {
        while c.request().is_some() {
            c.answer(tag);
        }
    })
}

/// Everything the peer sends until it closes (or `within` passes).
pub fn read_to_close(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let _ = s.set_read_timeout(Some(within));
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return out,
            Ok(k) => out.extend_from_slice(&chunk[..k]),
        }
    }
}
