//! Request and response heads: parsing with httparse, and the checks that
//! keep a proxy from being smuggled through.
//!
//! Refused (400): malformed syntax; obsolete line folding (httparse refuses
//! it in requests); a `Content-Length` that is not a plain decimal number, or
//! two that differ; `Transfer-Encoding` together with `Content-Length`;
//! `chunked` anywhere but last, or twice; `Transfer-Encoding` in HTTP/1.0;
//! an HTTP/1.1 request without exactly one `Host`; a `Host` (or an
//! absolute-form target's authority) that is not a valid authority; the
//! asterisk target on any method but OPTIONS. Refused (431): a head over
//! the byte limit or with too many headers. Refused (501): a transfer
//! coding other than `chunked` (RFC 9112 §6.1). Refused (505): a major
//! version other than 1; `HTTP/1.2` to `HTTP/1.9` are read as HTTP/1.1,
//! the highest minor version we speak (RFC 9112 §2.3).
//!
//! An absolute-form target (`GET http://host/p HTTP/1.1`) is taken apart:
//! its authority replaces the `Host` field (RFC 9112 §3.2.2) and the
//! origin-form rest is what goes upstream.

/// Header slots parsed on the stack; larger limits allocate.
const STACK_HEADERS: usize = 128;

/// Head size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest head, request line and headers, in bytes.
    pub max_head_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head_bytes: 16 * 1024, max_headers: 100 }
    }
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Why a head was refused, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// 400: bad syntax or a smuggling attempt.
    #[error("400 Bad Request: {0}")]
    Bad(String),
    /// 431: too large.
    #[error("431 Request Header Fields Too Large: {0}")]
    TooLarge(String),
    /// 501: a transfer coding we do not implement.
    #[error("501 Not Implemented: {0}")]
    NotImplemented(String),
    /// 505: an HTTP major version other than 1.
    #[error("505 HTTP Version Not Supported: {0}")]
    Version(String),
}

impl HeadError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Bad(_) => 400,
            HeadError::TooLarge(_) => 431,
            HeadError::NotImplemented(_) => 501,
            HeadError::Version(_) => 505,
        }
    }
}

/// One header field. Names and values up to 24 bytes (most of them) are
/// held inline: parsing a head allocates for its field list, not per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The name as sent.
    pub name: compact_str::CompactString,
    /// The value bytes.
    pub value: smallvec::SmallVec<[u8; 24]>,
}

impl Header {
    /// A field `name: value`.
    pub fn new(name: &str, value: &[u8]) -> Header {
        Header { name: name.into(), value: value.into() }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method (inline up to 24 bytes, as every method is).
    pub method: compact_str::CompactString,
    /// Request target (inline up to 24 bytes).
    pub target: compact_str::CompactString,
    /// Minor version: 0 or 1.
    pub minor: u8,
    /// Header fields in order.
    pub headers: Vec<Header>,
    /// The body.
    pub body: Body,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The `Host` value (inline up to 24 bytes).
    pub host: Option<compact_str::CompactString>,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Reason phrase (inline up to 24 bytes).
    pub reason: compact_str::CompactString,
    /// Minor version.
    pub minor: u8,
    /// Header fields in order.
    pub headers: Vec<Header>,
    /// The body.
    pub body: Body,
    /// Whether the upstream connection may be reused.
    pub keep_alive: bool,
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Headers that describe one hop, not the message: never forwarded.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Whether `name` is hop-by-hop here: in [`HOP_BY_HOP`] or listed in a `Connection` header.
pub fn is_hop_by_hop(name: &str, headers: &[Header]) -> bool {
    HopByHop::of(headers).contains(name)
}

/// The hop-by-hop names of one message: [`HOP_BY_HOP`] and those its
/// `Connection` headers list, read once for all its fields.
pub struct HopByHop<'a> {
    /// Up to four options inline (a `Connection: keep-alive` costs nothing).
    listed: smallvec::SmallVec<[&'a str; 4]>,
}

impl<'a> HopByHop<'a> {
    /// Read the `Connection` headers of `headers` (allocates only past four options).
    pub fn of(headers: &'a [Header]) -> HopByHop<'a> {
        // A Connection option can make a field hop-by-hop, but never Host:
        // a request forwarded without it would be routed by guess upstream.
        let listed = headers
            .iter()
            .filter(|h| eq(&h.name, "connection"))
            .filter_map(|h| std::str::from_utf8(&h.value).ok())
            .flat_map(|v| v.split(',').map(str::trim))
            .filter(|t| !t.is_empty() && !eq(t, "host"))
            .collect();
        HopByHop { listed }
    }

    /// Whether field `name` describes the hop, not the message.
    pub fn contains(&self, name: &str) -> bool {
        HOP_BY_HOP.iter().any(|h| eq(h, name)) || self.listed.iter().any(|t| eq(t, name))
    }
}

/// The comma-separated tokens of every `name` field, trimmed, empty ones
/// skipped: borrowed from the values, no allocation.
fn tokens<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| eq(&h.name, name))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The body framing from `Content-Length` and `Transfer-Encoding`, with
/// the smuggling checks.
fn framing(headers: &[Header], minor: u8) -> Result<Option<Body>, HeadError> {
    let mut length: Option<u64> = None;
    for h in headers.iter().filter(|h| eq(&h.name, "content-length")) {
        let v = std::str::from_utf8(&h.value).map_err(|_| HeadError::Bad("Content-Length is not ASCII".into()))?;
        for part in v.split(',') {
            let part = part.trim();
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::Bad(format!("Content-Length {v:?} is not a decimal number")));
            }
            let n: u64 = part.parse().map_err(|_| HeadError::Bad(format!("Content-Length {v:?} is too large")))?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Bad("conflicting Content-Length values".into()));
            }
            length = Some(n);
        }
    }
    let has_te = headers.iter().any(|h| eq(&h.name, "transfer-encoding"));
    if has_te {
        let codings: Vec<String> =
            tokens(headers, "transfer-encoding").map(|t| String::from_utf8_lossy(t).to_ascii_lowercase()).collect();
        if length.is_some() {
            return Err(HeadError::Bad("Transfer-Encoding together with Content-Length".into()));
        }
        if minor == 0 {
            return Err(HeadError::Bad("Transfer-Encoding in an HTTP/1.0 message".into()));
        }
        let chunked = codings.iter().filter(|c| *c == "chunked").count();
        let last_chunked = codings.last().is_some_and(|c| c == "chunked");
        if chunked > 1 || (chunked == 1 && !last_chunked) {
            return Err(HeadError::Bad(format!(
                "unsupported Transfer-Encoding {codings:?}: chunked must be the last coding, once"
            )));
        }
        if codings.len() != 1 || !last_chunked {
            return Err(HeadError::NotImplemented(format!(
                "unsupported Transfer-Encoding {codings:?}: only chunked is implemented"
            )));
        }
        return Ok(Some(Body::Chunked));
    }
    Ok(length.map(Body::Length))
}

fn keep_alive(headers: &[Header], minor: u8) -> bool {
    let mut conn = tokens(headers, "connection");
    if minor == 0 {
        conn.any(|t| t.eq_ignore_ascii_case(b"keep-alive"))
    } else {
        !conn.any(|t| t.eq_ignore_ascii_case(b"close"))
    }
}

/// Room a parsed head's field list keeps for the fields modules add
/// (`http_header_set`), so that the first added field is no reallocation.
pub(super) const ADDED_FIELDS_ROOM: usize = 4;

fn collect(raw: &[httparse::Header<'_>]) -> Result<Vec<Header>, HeadError> {
    // Sized once, with room for the fields modules add (`http_header_set`):
    // collecting a `Result` iterator started the vector small and regrew it
    // (a reallocation per head of more than four fields), and an exact fit
    // regrew at a module's first added field.
    let mut out = Vec::with_capacity(raw.len() + ADDED_FIELDS_ROOM);
    for h in raw {
        if h.value.iter().any(|b| *b == b'\r' || *b == b'\n' || *b == 0) {
            return Err(HeadError::Bad(format!("header {} has a control character in its value", h.name)));
        }
        out.push(Header::new(h.name, h.value));
    }
    Ok(out)
}

fn map_err(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge("too many header fields".into()),
        e => HeadError::Bad(format!("malformed head: {e}")),
    }
}

/// Run `f` with `n` empty header slots: on the stack up to
/// [`STACK_HEADERS`], on the heap beyond.
fn with_slots<'b, R>(n: usize, f: impl FnOnce(&mut [httparse::Header<'b>]) -> R) -> R {
    if n <= STACK_HEADERS {
        let mut stack: [httparse::Header<'b>; STACK_HEADERS] = [httparse::EMPTY_HEADER; STACK_HEADERS];
        f(&mut stack[..n])
    } else {
        f(&mut vec![httparse::EMPTY_HEADER; n])
    }
}

/// Whether `v` is a valid `Host` value or absolute-form authority (RFC
/// 3986 host, optional port): an IP literal in brackets, or unreserved,
/// percent and sub-delim characters; no userinfo, path or whitespace.
pub fn valid_authority(v: &[u8]) -> bool {
    let (host, port) = match v.iter().rposition(|b| *b == b':') {
        Some(i) if !v[i..].contains(&b']') => (&v[..i], Some(&v[i + 1..])),
        _ => (v, None),
    };
    if port.is_some_and(|p| p.len() > 5 || !p.iter().all(u8::is_ascii_digit)) {
        return false;
    }
    if let Some(inner) = host.strip_prefix(b"[") {
        let Some(inner) = inner.strip_suffix(b"]") else { return false };
        return !inner.is_empty() && inner.iter().all(|b| b.is_ascii_hexdigit() || b":.vV".contains(b));
    }
    !host.is_empty() && host.iter().all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b))
}

/// The request line's version when it is `HTTP/1.2` to `HTTP/1.9`: the
/// offset of its minor digit (the head is then read as HTTP/1.1).
fn future_minor(buf: &[u8]) -> Option<usize> {
    let end = buf.iter().position(|b| *b == b'\n')?;
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let v = line.len().checked_sub(8)?;
    let tail = &line[v..];
    (tail.starts_with(b"HTTP/1.") && (b'2'..=b'9').contains(&tail[7]) && v > 0 && line[v - 1] == b' ').then_some(v + 7)
}

/// Parse a request head at the start of `buf`: `Ok(None)` when more bytes
/// are needed, else the head and how many bytes it took.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, HeadError> {
    match parse_request_as_is(buf, limits) {
        Err(HeadError::Version(v)) => match future_minor(buf) {
            Some(at) => {
                let mut copy = buf.to_vec();
                copy[at] = b'1';
                parse_request_as_is(&copy, limits)
            }
            None => Err(HeadError::Version(v)),
        },
        r => r,
    }
}

fn parse_request_as_is(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, HeadError> {
    with_slots(limits.max_headers, |raw| {
        let mut req = httparse::Request::new(raw);
        let status = match req.parse(buf) {
            Err(httparse::Error::Version) => {
                return Err(HeadError::Version("only HTTP/1.0 and HTTP/1.1 are served".into()));
            }
            r => r.map_err(map_err)?,
        };
        let httparse::Status::Complete(n) = status else {
            if buf.len() > limits.max_head_bytes {
                return Err(HeadError::TooLarge(format!("head over {} bytes", limits.max_head_bytes)));
            }
            return Ok(None);
        };
        if n > limits.max_head_bytes {
            return Err(HeadError::TooLarge(format!("head of {n} bytes, over {}", limits.max_head_bytes)));
        }
        let minor = req.version.unwrap_or(1);
        let mut headers = collect(req.headers)?;
        let body = framing(&headers, minor)?.unwrap_or(Body::None);
        let hosts: Vec<&Header> = headers.iter().filter(|h| eq(&h.name, "host")).collect();
        if minor == 1 && hosts.len() != 1 {
            return Err(HeadError::Bad(format!(
                "an HTTP/1.1 request needs exactly one Host header, it has {}",
                hosts.len()
            )));
        }
        if hosts.len() > 1 {
            return Err(HeadError::Bad("a request may carry one Host header".into()));
        }
        if let Some(h) = hosts.first()
            && !valid_authority(&h.value)
        {
            return Err(HeadError::Bad(format!("Host {:?} is not a valid host", String::from_utf8_lossy(&h.value))));
        }
        let method = req.method.unwrap_or_default();
        let mut target: compact_str::CompactString = req.path.unwrap_or_default().into();
        if target == "*" && method != "OPTIONS" {
            return Err(HeadError::Bad(format!("the target * is for OPTIONS only, not {method}")));
        }
        if let Some((authority, rest)) = absolute_form(&target) {
            if !valid_authority(authority.as_bytes()) {
                return Err(HeadError::Bad(format!("the target's host {authority:?} is not a valid host")));
            }
            let host = Header::new("Host", authority.as_bytes());
            headers.retain(|h| !eq(&h.name, "host"));
            headers.insert(0, host);
            target = rest.into();
        } else if !target.starts_with('/') && target != "*" {
            return Err(HeadError::Bad(format!("the target {target:?} is neither a path nor an absolute URI")));
        }
        let host = headers
            .iter()
            .find(|h| eq(&h.name, "host"))
            .map(|h| compact_str::CompactString::from(String::from_utf8_lossy(&h.value)));
        let expect_continue =
            headers.iter().any(|h| eq(&h.name, "expect") && h.value.eq_ignore_ascii_case(b"100-continue"));
        Ok(Some((
            RequestHead {
                method: method.into(),
                target,
                minor,
                keep_alive: keep_alive(&headers, minor),
                expect_continue,
                host,
                body,
                headers,
            },
            n,
        )))
    })
}

/// An absolute-form target's authority and its origin-form rest (`/` when
/// it has no path).
fn absolute_form(target: &str) -> Option<(String, String)> {
    let scheme_end = target.find("://")?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let after = &target[scheme_end + 3..];
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let rest = match rest.chars().next() {
        Some('/') => rest.to_owned(),
        Some('?') => format!("/{rest}"),
        _ => "/".to_owned(),
    };
    Some((authority.to_owned(), rest))
}

/// Parse a response head to a request with method `method`.
pub fn parse_response(buf: &[u8], limits: &Limits, method: &str) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    with_slots(limits.max_headers, |raw| {
        let mut res = httparse::Response::new(raw);
        let httparse::Status::Complete(n) = res.parse(buf).map_err(map_err)? else {
            if buf.len() > limits.max_head_bytes {
                return Err(HeadError::TooLarge(format!("response head over {} bytes", limits.max_head_bytes)));
            }
            return Ok(None);
        };
        let minor = res.version.unwrap_or(1);
        let status = res.code.unwrap_or(0);
        let headers = collect(res.headers)?;
        let no_body =
            method.eq_ignore_ascii_case("HEAD") || (100..200).contains(&status) || status == 204 || status == 304;
        let framed = framing(&headers, minor)?;
        let body = if no_body { Body::None } else { framed.unwrap_or(Body::UntilClose) };
        let keep_alive = keep_alive(&headers, minor) && body != Body::UntilClose;
        Ok(Some((
            ResponseHead { status, reason: res.reason.unwrap_or_default().into(), minor, headers, body, keep_alive },
            n,
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<Option<(RequestHead, usize)>, HeadError> {
        parse_request(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn framing_keep_alive_and_expect() {
        let msg = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello";
        let (h, n) = req(msg).unwrap().unwrap();
        assert_eq!((h.body, h.keep_alive, h.expect_continue), (Body::Length(5), true, true));
        assert_eq!(&msg[n..], "hello", "the head ends where the body begins");
        let (h, _) = req("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.body, h.keep_alive), (Body::Chunked, false));
        let (h, _) = req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.body, h.keep_alive, h.host), (Body::None, false, None));
        assert_eq!(req("GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), None, "incomplete");
        let (h, _) = req("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 7, 7\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.body, Body::Length(7), "identical repeated lengths are one length");
    }

    #[test]
    fn smuggling_attempts_are_refused() {
        for (bad, words) in [
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                "conflicting Content-Length",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding together with Content-Length",
            ),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "chunked must be the last"),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                "unsupported Transfer-Encoding",
            ),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0"),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", "not a decimal number"),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", "not a decimal number"),
            ("GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", "malformed head"),
            ("GET / HTTP/1.1\r\n\r\n", "exactly one Host"),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "exactly one Host"),
            ("GET / HTTP/1.1 junk\r\nHost: a\r\n\r\n", "malformed head"),
        ] {
            let e = req(bad).expect_err(bad);
            assert_eq!(e.status(), 400, "{bad}");
            assert!(e.to_string().contains(words), "{bad}: {e}");
        }
    }

    #[test]
    fn versions_codings_hosts_and_target_forms() {
        let (h, _) = req("GET /a HTTP/1.2\r\nHost: x\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.minor, 1, "HTTP/1.2 is read as the highest minor we speak");
        assert_eq!(req("GET /a HTTP/2.0\r\nHost: x\r\n\r\n").unwrap_err().status(), 505);
        assert_eq!(req("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap_err().status(), 501);
        let (h, _) = req("GET HTTP://a.b:81?q HTTP/1.1\r\nHost: other\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.target.as_str(), h.host.as_deref()), ("/?q", Some("a.b:81")));
        assert_eq!(h.headers.iter().filter(|x| eq(&x.name, "host")).count(), 1);
        assert!(req("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
        assert_eq!(req("GET * HTTP/1.1\r\nHost: x\r\n\r\n").unwrap_err().status(), 400);
        for bad in ["a b", "", "a/b", "u@h", "[::1", "h:port", "h:123456"] {
            assert!(!valid_authority(bad.as_bytes()), "{bad:?}");
        }
        for good in ["a.b", "a.b:80", "[::1]:8080", "[fe80::1]", "127.0.0.1", "xn--d1a.example"] {
            assert!(valid_authority(good.as_bytes()), "{good:?}");
        }
    }

    #[test]
    fn oversized_heads_are_431() {
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-A: b\r\n".repeat(101));
        assert_eq!(req(&many).unwrap_err().status(), 431);
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n", "a".repeat(17 * 1024));
        assert_eq!(req(&long).unwrap_err().status(), 431, "incomplete and already over the limit");
    }

    #[test]
    fn responses_and_hop_by_hop() {
        let l = Limits::default();
        let (r, _) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", &l, "GET").unwrap().unwrap();
        assert_eq!((r.status, r.body, r.keep_alive), (200, Body::Length(3), true));
        let (r, _) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", &l, "HEAD").unwrap().unwrap();
        assert_eq!(r.body, Body::None);
        let (r, _) = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", &l, "GET").unwrap().unwrap();
        assert_eq!((r.body, r.keep_alive), (Body::UntilClose, false));
        let (r, _) = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", &l, "GET").unwrap().unwrap();
        assert_eq!(r.body, Body::None);
        let hs = vec![Header::new("Connection", b"close, X-Secret")];
        assert!(is_hop_by_hop("x-secret", &hs) && is_hop_by_hop("Keep-Alive", &hs) && !is_hop_by_hop("X-Other", &hs));
    }
}
