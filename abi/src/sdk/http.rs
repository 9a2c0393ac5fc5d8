//! (ABI 1.1) HTTP hooks and connection I/O: [`Txn`], and the connection
//! functions of [`Ctx`].

use super::ctx::{check, unsupported};
use super::{Ctx, Error, Event, Module, Result};
use crate::ffi::*;

/// Which message a header call addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Msg {
    /// The request.
    Request = MOLT_HTTP_MSG_REQUEST,
    /// The response.
    Response = MOLT_HTTP_MSG_RESPONSE,
}

/// The transaction of an HTTP hook event: read and change it during the call.
pub struct Txn<'c, 'a, M> {
    ctx: &'c Ctx<'a, M>,
    id: u64,
}

/// Copy a host value through a (buf, cap, out_len) call, growing once if
/// the value is longer than the stack buffer. `Ok(None)`: not found.
fn fetch(
    mut call: impl FnMut(*mut core::ffi::c_char, usize, &mut usize) -> molt_status,
    what: &'static str,
) -> Result<Option<Vec<u8>>> {
    let mut buf = [0u8; 512];
    let mut len = 0usize;
    let rc = call(buf.as_mut_ptr().cast(), buf.len(), &mut len);
    match rc {
        MOLT_OK => Ok(Some(buf[..len.min(buf.len())].to_vec())),
        MOLT_ERR_NOT_FOUND => Ok(None),
        MOLT_ERR_LIMIT => {
            let mut v = vec![0u8; len];
            let mut len2 = 0usize;
            check(call(v.as_mut_ptr().cast(), v.len(), &mut len2), what)?;
            v.truncate(len2);
            Ok(Some(v))
        }
        rc => Err(Error::from_host(rc, what)),
    }
}

impl<'a, M: Module> Ctx<'a, M> {
    /// The transaction of HTTP hook event `ev`.
    pub fn txn<'c>(&'c self, ev: &Event<'_>) -> Txn<'c, 'a, M> {
        Txn { ctx: self, id: ev.handle }
    }

    /// Queue bytes to connection `conn` (copied). `MOLT_ERR_LIMIT` when over
    /// the host's queue limit: wait for `ConnWritable`.
    pub fn conn_write(&self, conn: u64, data: &[u8]) -> Result<()> {
        let f = crate::api_get!(self.api(), conn_write).ok_or_else(|| unsupported("conn_write"))?;
        // SAFETY: host function called with the current ctx and bytes valid across the call.
        check(unsafe { f(self.ptr(), conn, data.as_ptr(), data.len()) }, "conn_write")
    }

    /// Close connection `conn` after its queued bytes (reject it in an accept hook).
    pub fn conn_close(&self, conn: u64) -> Result<()> {
        let f = crate::api_get!(self.api(), conn_close).ok_or_else(|| unsupported("conn_close"))?;
        // SAFETY: host function called with the current ctx.
        check(unsafe { f(self.ptr(), conn) }, "conn_close")
    }

    /// Connect to `addr` ("ip:port"); the connection reports to the current continuation.
    pub fn conn_connect(&self, addr: &str) -> Result<u64> {
        let f = crate::api_get!(self.api(), conn_connect).ok_or_else(|| unsupported("conn_connect"))?;
        let mut out = 0;
        // SAFETY: host function called with the current ctx, a string valid
        // across the call, and a valid out-parameter.
        check(unsafe { f(self.ptr(), addr.as_ptr().cast(), addr.len(), &mut out) }, "conn_connect")?;
        Ok(out)
    }
}

impl<M: Module> Txn<'_, '_, M> {
    /// The handle.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// An item (`MOLT_HTTP_ITEM_*`) as text; `None` when it has no value yet.
    pub fn get(&self, item: u32) -> Result<Option<String>> {
        let f = crate::api_get!(self.ctx.api(), http_get).ok_or_else(|| unsupported("http_get"))?;
        let v = fetch(
            // SAFETY: host function called with the current ctx and a buffer
            // writable for `cap` bytes and a valid length slot.
            |buf, cap, len| unsafe { f(self.ctx.ptr(), self.id, item, buf, cap, len) },
            "http_get",
        )?;
        Ok(v.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Pass an item (`MOLT_HTTP_ITEM_*`) to `f` without allocating when it
    /// fits 512 bytes (the hot path of a hook); `f` gets `None` when the item
    /// has no value yet.
    pub fn with_item<R>(&self, item: u32, f: impl FnOnce(Option<&[u8]>) -> R) -> Result<R> {
        let get = crate::api_get!(self.ctx.api(), http_get).ok_or_else(|| unsupported("http_get"))?;
        let mut buf = [0u8; 512];
        let mut len = 0usize;
        // SAFETY: host function called with the current ctx, a buffer
        // writable for its length and a valid length slot.
        let rc = unsafe { get(self.ctx.ptr(), self.id, item, buf.as_mut_ptr().cast(), buf.len(), &mut len) };
        match rc {
            MOLT_OK => Ok(f(Some(&buf[..len.min(buf.len())]))),
            MOLT_ERR_NOT_FOUND => Ok(f(None)),
            MOLT_ERR_LIMIT => {
                let v = self.get(item)?;
                Ok(f(v.as_deref().map(str::as_bytes)))
            }
            rc => Err(Error::from_host(rc, "http_get")),
        }
    }

    /// The request method.
    pub fn method(&self) -> Result<String> {
        Ok(self.get(MOLT_HTTP_ITEM_METHOD)?.unwrap_or_default())
    }

    /// The request path (before any '?').
    pub fn path(&self) -> Result<String> {
        Ok(self.get(MOLT_HTTP_ITEM_PATH)?.unwrap_or_default())
    }

    /// The request target (path and query).
    pub fn target(&self) -> Result<String> {
        Ok(self.get(MOLT_HTTP_ITEM_TARGET)?.unwrap_or_default())
    }

    /// The client's address, "ip:port".
    pub fn client_addr(&self) -> Result<String> {
        Ok(self.get(MOLT_HTTP_ITEM_CLIENT_ADDR)?.unwrap_or_default())
    }

    /// The `index`-th value of header `name` of `msg`.
    pub fn header_nth(&self, msg: Msg, name: &str, index: u32) -> Result<Option<Vec<u8>>> {
        let f = crate::api_get!(self.ctx.api(), http_header_get).ok_or_else(|| unsupported("http_header_get"))?;
        fetch(
            // SAFETY: host function called with the current ctx, a name valid
            // across the call, a buffer writable for `cap` bytes and a valid length slot.
            |buf, cap, len| unsafe {
                f(self.ctx.ptr(), self.id, msg as u32, name.as_ptr().cast(), name.len(), index, buf, cap, len)
            },
            "http_header_get",
        )
    }

    /// The first value of request header `name`, as text.
    pub fn request_header(&self, name: &str) -> Result<Option<String>> {
        Ok(self.header_nth(Msg::Request, name, 0)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn header_op(&self, msg: Msg, mode: u32, name: &str, value: &str) -> Result<()> {
        let f = crate::api_get!(self.ctx.api(), http_header_set).ok_or_else(|| unsupported("http_header_set"))?;
        // SAFETY: host function called with the current ctx and strings valid across the call.
        let rc = unsafe {
            f(
                self.ctx.ptr(),
                self.id,
                msg as u32,
                mode,
                name.as_ptr().cast(),
                name.len(),
                value.as_ptr().cast(),
                value.len(),
            )
        };
        check(rc, "http_header_set")
    }

    /// Replace every field `name` of `msg` with one holding `value`.
    pub fn set_header(&self, msg: Msg, name: &str, value: &str) -> Result<()> {
        self.header_op(msg, MOLT_HDR_SET, name, value)
    }

    /// Append a field `name: value` to `msg`.
    pub fn add_header(&self, msg: Msg, name: &str, value: &str) -> Result<()> {
        self.header_op(msg, MOLT_HDR_ADD, name, value)
    }

    /// Remove every field `name` of `msg`.
    pub fn remove_header(&self, msg: Msg, name: &str) -> Result<()> {
        self.header_op(msg, MOLT_HDR_REMOVE, name, "")
    }

    /// Rewrite the request target sent upstream.
    pub fn set_target(&self, target: &str) -> Result<()> {
        let f = crate::api_get!(self.ctx.api(), http_set_target).ok_or_else(|| unsupported("http_set_target"))?;
        // SAFETY: host function called with the current ctx and a string valid across the call.
        check(unsafe { f(self.ctx.ptr(), self.id, target.as_ptr().cast(), target.len()) }, "http_set_target")
    }

    /// Answer the request here.
    pub fn respond(&self, status: u32, content_type: &str, body: &[u8]) -> Result<()> {
        let f = crate::api_get!(self.ctx.api(), http_respond).ok_or_else(|| unsupported("http_respond"))?;
        // SAFETY: host function called with the current ctx and buffers valid across the call.
        let rc = unsafe {
            f(
                self.ctx.ptr(),
                self.id,
                status,
                content_type.as_ptr().cast(),
                content_type.len(),
                body.as_ptr(),
                body.len(),
            )
        };
        check(rc, "http_respond")
    }

    /// Send the request to upstream group `group`.
    pub fn select_upstream(&self, group: &str) -> Result<()> {
        let f =
            crate::api_get!(self.ctx.api(), http_upstream_select).ok_or_else(|| unsupported("http_upstream_select"))?;
        // SAFETY: host function called with the current ctx and a string valid across the call.
        check(unsafe { f(self.ctx.ptr(), self.id, group.as_ptr().cast(), group.len()) }, "http_upstream_select")
    }
}
