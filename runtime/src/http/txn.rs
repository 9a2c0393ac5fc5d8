//! A transaction as the hooks see it: [`TxnAccess`] over one request and
//! its response, and the header edits modules may make.

use std::cell::RefCell;
use std::net::SocketAddr;

use molt_abi::ffi::*;

use super::head::{Header, RequestHead, ResponseHead};
use super::site::HttpSite;
use super::wire::reason;
use crate::host::{ServiceResult, TxnAccess};

/// An answer made here (by a module or by the host), not by an upstream.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Header fields (besides framing).
    pub headers: Vec<Header>,
    /// The body.
    pub body: Vec<u8>,
    /// Who made it: 1 a module, 2 the host.
    pub by: u64,
}

impl Answer {
    /// A host-made answer with a short text body.
    pub fn host(status: u16, text: &str) -> Answer {
        Answer {
            status,
            headers: vec![Header::new("Content-Type", b"text/plain; charset=utf-8")],
            body: format!("{status} {}: {text}\n", reason(status)).into_bytes(),
            by: 2,
        }
    }
}

/// What hooks may read and change of a transaction.
#[derive(Debug)]
pub struct TxnData {
    /// The handle modules see.
    pub id: u64,
    /// The request head (target and headers as they will be sent).
    pub req: RequestHead,
    /// The route's index.
    pub route: usize,
    /// The upstream group chosen.
    pub group: Option<usize>,
    /// An answer made here.
    pub answer: Option<Answer>,
    /// The upstream's response head, once it arrived.
    pub resp: Option<ResponseHead>,
    /// The upstream server used.
    pub upstream_addr: Option<SocketAddr>,
}

/// The view one hook call gets.
pub struct View<'a> {
    /// The transaction.
    pub t: RefCell<&'a mut TxnData>,
    /// Its listener.
    pub site: &'a HttpSite,
    /// The client, "ip:port".
    pub peer: &'a str,
    /// The hook (`MOLT_EV_HTTP_*`).
    pub kind: u32,
}

/// Header names modules may not touch: the host owns framing and hops.
const HOST_OWNED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

/// A field value: visible characters, spaces, tabs and obs-text; no other controls.
fn valid_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn invalid(what: String) -> (molt_status, String) {
    (MOLT_ERR_INVALID_ARG, what)
}

impl View<'_> {
    fn early(&self) -> bool {
        self.kind == MOLT_EV_HTTP_REQUEST || self.kind == MOLT_EV_HTTP_UPSTREAM
    }

    fn phase(&self, what: &str) -> (molt_status, String) {
        (MOLT_ERR_PHASE, format!("{what} is only possible in the REQUEST and UPSTREAM hooks"))
    }
}

impl TxnAccess for View<'_> {
    fn id(&self) -> u64 {
        self.t.borrow().id
    }

    fn get(&self, item: u32, f: &mut dyn FnMut(&[u8])) -> ServiceResult<()> {
        let t = self.t.borrow();
        let none = || (MOLT_ERR_NOT_FOUND, format!("http_get: item {item} has no value in this transaction yet"));
        match item {
            MOLT_HTTP_ITEM_METHOD => f(t.req.method.as_bytes()),
            MOLT_HTTP_ITEM_TARGET => f(t.req.target.as_bytes()),
            MOLT_HTTP_ITEM_PATH => f(t.req.target.split('?').next().unwrap_or("").as_bytes()),
            MOLT_HTTP_ITEM_HOST => f(t.req.host.as_deref().ok_or_else(none)?.as_bytes()),
            MOLT_HTTP_ITEM_CLIENT_ADDR => f(self.peer.as_bytes()),
            MOLT_HTTP_ITEM_ROUTE => f(self.site.routes[t.route].name.as_bytes()),
            MOLT_HTTP_ITEM_UPSTREAM_GROUP => f(self.site.groups[t.group.ok_or_else(none)?].0.as_bytes()),
            MOLT_HTTP_ITEM_UPSTREAM_ADDR => f(t.upstream_addr.ok_or_else(none)?.to_string().as_bytes()),
            _ => return Err(invalid(format!("http_get: unknown item {item} (MOLT_HTTP_ITEM_*)"))),
        }
        Ok(())
    }

    fn header_get(&self, msg: u32, name: &[u8], index: u32, f: &mut dyn FnMut(&[u8])) -> ServiceResult<()> {
        let t = self.t.borrow();
        let headers: &[Header] = match msg {
            MOLT_HTTP_MSG_REQUEST => &t.req.headers,
            MOLT_HTTP_MSG_RESPONSE => match (&t.answer, &t.resp) {
                (Some(a), _) => &a.headers,
                (None, Some(r)) => &r.headers,
                _ => return Err((MOLT_ERR_NOT_FOUND, "there is no response yet".into())),
            },
            _ => return Err(invalid(format!("unknown message {msg} (MOLT_HTTP_MSG_*)"))),
        };
        let found = headers.iter().filter(|h| h.name.as_bytes().eq_ignore_ascii_case(name)).nth(index as usize);
        match found {
            Some(h) => {
                f(&h.value);
                Ok(())
            }
            None => Err((MOLT_ERR_NOT_FOUND, "no such header".into())),
        }
    }

    fn header_set(&self, msg: u32, mode: u32, name: &[u8], value: &[u8]) -> ServiceResult<()> {
        if !valid_name(name) {
            return Err(invalid(format!("header name {:?} is not a token", String::from_utf8_lossy(name))));
        }
        let name = std::str::from_utf8(name).expect("a token is ASCII");
        if HOST_OWNED.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            return Err(invalid(format!("header {name} belongs to the host (framing or hop-by-hop)")));
        }
        if !valid_value(value) {
            return Err(invalid(format!("the value for header {name} has a control character")));
        }
        let mut t = self.t.borrow_mut();
        let t = &mut **t;
        let headers = match msg {
            MOLT_HTTP_MSG_REQUEST if self.early() => &mut t.req.headers,
            MOLT_HTTP_MSG_REQUEST => {
                return Err((MOLT_ERR_PHASE, "the request was sent: change it in the REQUEST or UPSTREAM hook".into()));
            }
            MOLT_HTTP_MSG_RESPONSE => match (&mut t.answer, &mut t.resp) {
                (Some(a), _) => &mut a.headers,
                (None, Some(r)) => &mut r.headers,
                _ => return Err((MOLT_ERR_PHASE, "there is no response yet: change it in the RESPONSE hook".into())),
            },
            _ => return Err(invalid(format!("unknown message {msg} (MOLT_HTTP_MSG_*)"))),
        };
        if name.eq_ignore_ascii_case("host") && mode != MOLT_HDR_SET {
            return Err(invalid("Host can only be set (a request has exactly one)".into()));
        }
        match mode {
            MOLT_HDR_SET => {
                let pos = headers.iter().position(|h| h.name.eq_ignore_ascii_case(name));
                headers.retain(|h| !h.name.eq_ignore_ascii_case(name));
                let h = Header::new(name, value);
                match pos {
                    Some(p) => headers.insert(p.min(headers.len()), h),
                    None => headers.push(h),
                }
                if name.eq_ignore_ascii_case("host") && msg == MOLT_HTTP_MSG_REQUEST {
                    t.req.host = Some(String::from_utf8_lossy(value).into());
                }
            }
            MOLT_HDR_ADD => headers.push(Header::new(name, value)),
            MOLT_HDR_REMOVE => headers.retain(|h| !h.name.eq_ignore_ascii_case(name)),
            _ => return Err(invalid(format!("unknown header mode {mode} (MOLT_HDR_*)"))),
        }
        Ok(())
    }

    fn set_target(&self, target: &[u8]) -> ServiceResult<()> {
        if !self.early() {
            return Err(self.phase("http_set_target"));
        }
        let ok = target.first() == Some(&b'/') && target.iter().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(invalid(format!(
                "target {:?} must start with '/' and hold only visible ASCII",
                String::from_utf8_lossy(target)
            )));
        }
        self.t.borrow_mut().req.target = String::from_utf8_lossy(target).into();
        Ok(())
    }

    fn respond(&self, status: u32, content_type: &[u8], body: &[u8]) -> ServiceResult<()> {
        if !self.early() {
            return Err(self.phase("http_respond"));
        }
        if !(200..=599).contains(&status) {
            return Err(invalid(format!("status {status} is not in 200..599")));
        }
        if !valid_value(content_type) {
            return Err(invalid("the Content-Type has a control character".into()));
        }
        let mut headers = Vec::new();
        if !content_type.is_empty() {
            headers.push(Header::new("Content-Type", content_type));
        }
        self.t.borrow_mut().answer = Some(Answer { status: status as u16, headers, body: body.to_vec(), by: 1 });
        Ok(())
    }

    fn upstream_select(&self, group: &[u8]) -> ServiceResult<()> {
        if !self.early() {
            return Err(self.phase("http_upstream_select"));
        }
        let name = String::from_utf8_lossy(group);
        match self.site.group(&name) {
            Some(g) => {
                self.t.borrow_mut().group = Some(g);
                Ok(())
            }
            None => {
                let names: Vec<&str> = self.site.groups.iter().map(|(n, _)| n.as_str()).collect();
                Err((
                    MOLT_ERR_NOT_FOUND,
                    format!("listener {} has no upstream group {name:?} (it has {names:?})", self.site.name),
                ))
            }
        }
    }
}
