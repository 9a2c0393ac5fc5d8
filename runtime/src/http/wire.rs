//! The bytes the proxy writes: request heads for upstreams, response heads
//! and answers for clients, the `Date` field and reason phrases.

use std::cell::RefCell;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::body::Framing;
use super::head::{self, Body, RequestHead, ResponseHead};
use super::txn::Answer;

/// The reason phrase of a status (the `http` crate's table), or "Status"
/// for a code it does not name.
pub(super) fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status).ok().and_then(|c| c.canonical_reason()).unwrap_or("Status")
}

thread_local! {
    /// The `Date` value of the current second, formatted once per second per worker.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Append `Date: <now>` (RFC 9110 §6.6.1; the IMF-fixdate of this second).
pub(super) fn put_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        put_header(out, "Date", text.as_bytes());
    });
}

/// `Content-Length: n`.
pub(super) fn put_length(out: &mut Vec<u8>, n: u64) {
    let _ = write!(out, "Content-Length: {n}\r\n");
}

/// One header field line.
pub(super) fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The request head sent upstream, into `out`: hop-by-hop fields dropped,
/// framing ours, the client added to X-Forwarded-For, and a Host always.
pub(super) fn request_head(req: &RequestHead, peer_ip: &str, upstream: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let hop = head::HopByHop::of(&req.headers);
    let xff = |n: &str| n.eq_ignore_ascii_case("x-forwarded-for");
    for h in &req.headers {
        let n = h.name.as_str();
        if hop.contains(n) || n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("expect") || xff(n) {
            continue;
        }
        put_header(out, n, &h.value);
    }
    // The client's X-Forwarded-For values, in order, then the client.
    out.extend_from_slice(b"X-Forwarded-For: ");
    for h in req.headers.iter().filter(|h| xff(&h.name)) {
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    if req.host.is_none() {
        // An HTTP/1.0 request may come without Host; HTTP/1.1 upstream needs one.
        put_header(out, "Host", upstream.to_string().as_bytes());
    }
    match req.body {
        Body::Length(n) => put_length(out, n),
        Body::Chunked => put_header(out, "Transfer-Encoding", b"chunked"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response head goes to the client.
pub(super) struct ResponseFraming {
    /// The body is re-framed as chunked.
    pub chunk_out: bool,
    /// The connection closes after this response.
    pub close: bool,
}

/// The response head for the client, into `out`: the upstream's fields
/// less hop-by-hop ones, our framing for `body` (chunked to an HTTP/1.1
/// client when the length is unknown, else until close), and a `Date`
/// when the upstream sent none.
pub(super) fn response_head(
    r: &ResponseHead,
    body: &Framing,
    head_req: bool,
    minor: u8,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> ResponseFraming {
    let reason = if r.reason.is_empty() { reason(r.status) } else { r.reason.as_str() };
    let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", r.status);
    let hop = head::HopByHop::of(&r.headers);
    let mut dated = false;
    for h in &r.headers {
        if hop.contains(&h.name) || (h.name.eq_ignore_ascii_case("content-length") && !head_req) {
            continue;
        }
        dated |= h.name.eq_ignore_ascii_case("date");
        put_header(out, &h.name, &h.value);
    }
    if !dated {
        put_date(out);
    }
    let mut f = ResponseFraming { chunk_out: false, close: !keep_alive };
    match body {
        Framing::Length(n) => put_length(out, *n),
        Framing::Chunked(_) | Framing::UntilClose if minor == 1 => {
            f.chunk_out = true;
            put_header(out, "Transfer-Encoding", b"chunked");
        }
        Framing::Chunked(_) | Framing::UntilClose => f.close = true,
        Framing::None => {
            if !head_req && r.status != 204 && r.status != 304 {
                put_header(out, "Content-Length", b"0");
            }
        }
    }
    if f.close {
        put_header(out, "Connection", b"close");
    } else if minor == 0 {
        put_header(out, "Connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    f
}

/// A whole answer, head and body, into `out`.
pub(super) fn answer(a: &Answer, method: &str, minor: u8, close: bool, out: &mut Vec<u8>) {
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", a.status, reason(a.status));
    put_date(out);
    for h in &a.headers {
        put_header(out, &h.name, &h.value);
    }
    put_length(out, a.body.len() as u64);
    if close {
        put_header(out, "Connection", b"close");
    } else if minor == 0 {
        put_header(out, "Connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    if !method.eq_ignore_ascii_case("HEAD") {
        out.extend_from_slice(&a.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_dates() {
        assert_eq!((reason(404), reason(501), reason(599)), ("Not Found", "Not Implemented", "Status"));
        let mut out = Vec::new();
        put_date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("Date: ") && text.ends_with(" GMT\r\n") && text.len() == 6 + 29 + 2, "{text:?}");
    }
}
