//! The host function table: `extern "C"` entry points modules call.

use std::ffi::{CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use molt_abi::ffi::*;

use super::{CallFrame, Reply};
use crate::state::Opened;

/// The table every module receives (in `molt_host_info.api` and `molt_ctx.api`).
pub static HOST_API: molt_host_api = molt_host_api {
    size: v1_2::HOST_API_SIZE as u32,
    abi_major: MOLT_ABI_MAJOR,
    abi_minor: MOLT_ABI_MINOR,
    log: Some(host_log),
    set_error: Some(host_set_error),
    cont_create: Some(host_cont_create),
    cont_destroy: Some(host_cont_destroy),
    cont_send: Some(host_cont_send),
    timer_schedule: Some(host_timer_schedule),
    timer_cancel: Some(host_timer_cancel),
    state_open: Some(host_state_open),
    state_ptr: Some(host_state_ptr),
    user_arg_reserve: Some(host_user_arg_reserve),
    user_arg_set: Some(host_user_arg_set),
    user_arg_get: Some(host_user_arg_get),
    conn_write: Some(host_conn_write),
    conn_close: Some(host_conn_close),
    conn_connect: Some(host_conn_connect),
    http_get: Some(host_http_get),
    http_header_get: Some(host_http_header_get),
    http_header_set: Some(host_http_header_set),
    http_set_target: Some(host_http_set_target),
    http_respond: Some(host_http_respond),
    http_upstream_select: Some(host_http_upstream_select),
    poster_open: Some(host_poster_open),
    post: Some(host_post),
    poster_close: Some(host_poster_close),
    http_hooks: Some(host_http_hooks),
};

/// Why a host function refused: the status the module gets, and the reason
/// its call's error report carries (none for a status the module expects in
/// normal use, like `MOLT_ERR_NOT_FOUND` from a header lookup).
pub(super) struct Refused(molt_status, Option<String>);

impl From<(molt_status, String)> for Refused {
    fn from((status, why): (molt_status, String)) -> Refused {
        Refused(status, Some(why))
    }
}

/// A refusal with no reason beyond its status (a malformed argument).
fn bare(status: molt_status) -> Refused {
    Refused(status, None)
}

/// What a host function's body returns: `()` for `MOLT_OK`, or a status.
trait IntoStatus {
    fn into_status(self) -> molt_status;
}

impl IntoStatus for () {
    fn into_status(self) -> molt_status {
        MOLT_OK
    }
}

impl IntoStatus for molt_status {
    fn into_status(self) -> molt_status {
        self
    }
}

/// A module's out-parameter, checked non-null once: `put` is the only write.
struct Out<T>(core::ptr::NonNull<T>);

impl<T> Out<T> {
    /// # Safety
    ///
    /// `p` is null or writable for a `T` until the host function returns
    /// (the module's out-parameter, header rule 3).
    unsafe fn new(p: *mut T) -> Result<Out<T>, Refused> {
        core::ptr::NonNull::new(p).map(Out).ok_or(bare(MOLT_ERR_INVALID_ARG))
    }

    fn put(self, value: T) {
        // SAFETY: non-null (checked in `new`) and writable per `new`'s contract.
        unsafe { self.0.as_ptr().write(value) }
    }
}

/// Run `body` inside the one host-function boundary, for the call `ctx`
/// belongs to: the frame is resolved from the ctx; a call from any thread
/// but the one running that callback is refused with `MOLT_ERR_THREAD`
/// (header rule 8) before anything else is touched; a refusal's reason goes
/// to the call's error report; a panic of ours becomes `MOLT_ERR_FAILED`
/// instead of unwinding into module code.
///
/// # Safety
///
/// `ctx` is null or the ctx the host passed to a module call that is still
/// running (modules may only use a ctx during its call, header rule 3).
unsafe fn host_call<R: IntoStatus>(
    what: &'static str,
    ctx: *const molt_ctx,
    body: impl FnOnce(&CallFrame<'_>) -> Result<R, Refused>,
) -> molt_status {
    let run = || {
        // SAFETY: per this function's contract.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        if !f.on_its_thread() {
            // Another thread: only the frame's immutable parts (its thread
            // mark, the version's meta) are read here; the error cell, which
            // the callback's thread writes, is not touched.
            super::quiet::failure(&f.meta.name, || {
                tracing::warn!(module = %f.meta.name, version = %f.meta.version, function = what, "a host function was called from a thread the module started, with a callback's ctx: refused with MOLT_ERR_THREAD (use a poster)");
            });
            return MOLT_ERR_THREAD;
        }
        match body(f) {
            Ok(r) => r.into_status(),
            Err(Refused(status, None)) => status,
            Err(Refused(status, Some(why))) => fail(f, (status, why)),
        }
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(status) => status,
        Err(_) => {
            tracing::error!(function = what, "host function panicked; returning MOLT_ERR_FAILED to the module");
            MOLT_ERR_FAILED
        }
    }
}

/// The body of a host function taking a ctx, in [`host_call`]'s boundary:
/// `host_entry!("name", ctx, |f| { ... })`, where `f` is the call's frame
/// and the body returns `Result<(), Refused>` (or a status).
macro_rules! host_entry {
    ($what:literal, $ctx:ident, |$f:ident| $body:expr) => {{
        let body = |$f: &CallFrame<'_>| $body;
        // SAFETY: the module passes the ctx of its running call (header rule 3).
        unsafe { host_call($what, $ctx, body) }
    }};
}

/// The frame of the call `ctx` belongs to.
///
/// # Safety
///
/// `ctx` is null or the ctx the host passed to a module call that is still
/// running (modules may only use a ctx during its call, header rule 3), so
/// its `host` field points to that call's live [`CallFrame`].
unsafe fn frame<'a>(ctx: *const molt_ctx) -> Option<&'a CallFrame<'a>> {
    // SAFETY: per this function's contract, ctx is null or live.
    let c = unsafe { ctx.as_ref() }?;
    if !core::ptr::eq(c.api, &HOST_API) {
        return None;
    }
    // SAFETY: per this function's contract, a live ctx built by the host
    // carries its frame in `host`.
    unsafe { c.host.cast::<CallFrame<'a>>().as_ref() }
}

/// The bytes of a (pointer, length) argument.
///
/// # Safety
///
/// `ptr` is null (then `len` must be 0) or readable for `len` bytes for `'a`.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], Refused> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(bare(MOLT_ERR_INVALID_ARG));
    }
    // SAFETY: per this function's contract.
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// A UTF-8 (pointer, length) argument; `what` names it in the refusal.
///
/// # Safety
///
/// As [`bytes`].
unsafe fn text<'a>(ptr: *const c_char, len: usize, what: &str) -> Result<&'a str, Refused> {
    // SAFETY: per this function's contract.
    let b = unsafe { bytes(ptr.cast(), len) }?;
    std::str::from_utf8(b).map_err(|_| Refused(MOLT_ERR_INVALID_ARG, Some(format!("{what} is not UTF-8"))))
}

fn fail(frame: &CallFrame<'_>, (status, msg): (molt_status, String)) -> molt_status {
    tracing::debug!(module = %frame.meta.name, version = %frame.meta.version, status, "{msg}");
    frame.set_host_error(msg);
    status
}

unsafe extern "C" fn host_log(ctx: *const molt_ctx, level: u32, msg: *const c_char, len: usize) {
    let _ = host_entry!("log", ctx, |f| {
        // SAFETY: the module passes a string readable for `len` bytes.
        let text = String::from_utf8_lossy(unsafe { bytes(msg.cast(), len) }?);
        let (m, v) = (&f.meta.name, &f.meta.version);
        match level {
            MOLT_LOG_ERROR => tracing::error!(module = %m, version = %v, "{text}"),
            MOLT_LOG_WARN => tracing::warn!(module = %m, version = %v, "{text}"),
            MOLT_LOG_INFO => tracing::info!(module = %m, version = %v, "{text}"),
            MOLT_LOG_DEBUG => tracing::debug!(module = %m, version = %v, "{text}"),
            _ => tracing::trace!(module = %m, version = %v, "{text}"),
        }
        Ok(())
    });
}

unsafe extern "C" fn host_set_error(
    ctx: *const molt_ctx,
    status: molt_status,
    msg: *const c_char,
    len: usize,
) -> molt_status {
    host_entry!("set_error", ctx, |f| {
        // SAFETY: the module passes a string readable for `len` bytes.
        let text = unsafe { bytes(msg.cast(), len) }.map(String::from_utf8_lossy).unwrap_or_default();
        f.set_module_error(status, text.into_owned());
        // The status handed over comes back, so `return set_error(...)` works.
        Ok(status)
    })
}

unsafe extern "C" fn host_cont_create(
    ctx: *const molt_ctx,
    handler: Option<molt_handler_fn>,
    data: *mut c_void,
    worker: u32,
    tag: u64,
    out: *mut molt_cont_id,
) -> molt_status {
    host_entry!("cont_create", ctx, |f| {
        // SAFETY: the module's out-parameter.
        let out = unsafe { Out::new(out) }?;
        out.put(f.env.services.cont_create(f, handler, data, worker, tag)?);
        Ok(())
    })
}

unsafe extern "C" fn host_cont_destroy(ctx: *const molt_ctx, id: molt_cont_id) -> molt_status {
    host_entry!("cont_destroy", ctx, |f| Ok(f.env.services.cont_destroy(f, id)?))
}

unsafe extern "C" fn host_cont_send(
    ctx: *const molt_ctx,
    target: molt_cont_id,
    tag: u64,
    data: *const u8,
    len: usize,
) -> molt_status {
    host_entry!("cont_send", ctx, |f| {
        // SAFETY: the module passes a payload readable for `len` bytes.
        let payload = unsafe { bytes(data, len) }?;
        if target == 0 {
            // A reply to the host: whoever made the host send the event collects it.
            // SAFETY: the ctx of a running call is readable (host_call resolved it).
            let from = unsafe { (*ctx).self_ };
            if let Some(sink) = f.env.replies {
                sink.reply(Reply { from, version: f.meta.id, tag, data: payload.to_vec() });
            }
            return Ok(());
        }
        Ok(f.env.services.cont_send(f, target, tag, payload)?)
    })
}

unsafe extern "C" fn host_timer_schedule(
    ctx: *const molt_ctx,
    target: molt_cont_id,
    delay_ns: u64,
    tag: u64,
    out: *mut molt_timer_id,
) -> molt_status {
    host_entry!("timer_schedule", ctx, |f| {
        let id = f.env.services.timer_schedule(f, target, delay_ns, tag)?;
        // The timer id is optional: NULL is allowed.
        // SAFETY: the module's out-parameter, or null.
        if let Ok(out) = unsafe { Out::new(out) } {
            out.put(id);
        }
        Ok(())
    })
}

unsafe extern "C" fn host_timer_cancel(ctx: *const molt_ctx, id: molt_timer_id) -> molt_status {
    host_entry!("timer_cancel", ctx, |f| Ok(f.env.services.timer_cancel(f, id)?))
}

unsafe extern "C" fn host_state_open(
    ctx: *const molt_ctx,
    name: *const c_char,
    name_len: usize,
    schema: u32,
    min_len: u64,
    out: *mut molt_state_block,
) -> molt_status {
    host_entry!("state_open", ctx, |f| {
        // SAFETY: the module passes a name readable for `name_len` bytes.
        let name = unsafe { text(name, name_len, "state_open: the block name") }?;
        // SAFETY: the module's out-parameter, checked for null.
        let Some(out) = (unsafe { out.as_mut() }) else { return Err(bare(MOLT_ERR_INVALID_ARG)) };
        if (out.size as usize) < v1_0::STATE_BLOCK_SIZE {
            return Err((MOLT_ERR_INVALID_ARG, "state_open: out->size is smaller than molt_state_block".into()).into());
        }
        let declared = f.meta.state_schema;
        if schema != declared || declared == 0 {
            let why = format!(
                "state_open of block {name:?}: schema {schema} differs from the descriptor's state_schema {declared}; a module opens its blocks at the schema it declares (0 declares no state)"
            );
            return Err((MOLT_ERR_INVALID_ARG, why).into());
        }
        let owner = &f.meta.name;
        let store = &f.host.state;
        let (handle, len, created) = match store.open_block(owner, name, schema, min_len)? {
            Opened::Existing { handle, len } => (handle, len, false),
            Opened::Created { handle, len } => {
                if let Some(h) = f.host.hooks() {
                    h.created(owner, f.meta.id, handle);
                }
                (handle, len, true)
            }
            Opened::NeedsMigration { dst, from_schema, .. } if f.env.worker != u32::MAX => {
                // A migration quiesces the module on every worker and waits
                // for them all: from a worker (this call's own included) it
                // would wait forever. Migrations run in a reload's init.
                if let Err((_, e)) = store.abort_migration(dst) {
                    tracing::error!(module = %owner, block = name, "forgetting an unneeded migration block: {e}");
                }
                let why = format!(
                    "state_open of block {name:?} would migrate it from schema {from_schema} to {schema}, which happens only during a reload: open the block in init"
                );
                return Err((MOLT_ERR_PHASE, why).into());
            }
            Opened::NeedsMigration { src, dst, from_schema, down } => {
                match migrate_block(f, ctx, name, (src, dst), from_schema, schema, down) {
                    Ok(len) => (dst, len, false),
                    Err(status) => {
                        // The old block stays live and intact; the new one is forgotten.
                        if let Err((_, e)) = store.abort_migration(dst) {
                            tracing::error!(module = %owner, block = name, "aborting a failed migration: {e}");
                        }
                        return Err(bare(status));
                    }
                }
            }
        };
        out.handle = handle;
        out.len = len;
        out.schema = schema;
        out.created = u32::from(created);
        Ok(())
    })
}

/// Migrate block `src` into `dst` (up with the calling version's migrate,
/// down with the newer version's, through the runtime), then commit.
fn migrate_block(
    f: &CallFrame<'_>,
    ctx: *const molt_ctx,
    name: &str,
    (src, dst): (u64, u64),
    from_schema: u32,
    to_schema: u32,
    down: bool,
) -> Result<u64, molt_status> {
    let owner = &f.meta.name;
    let store = &f.host.state;
    let (Some((src_ptr, src_len)), Some((dst_ptr, dst_len))) = (store.ptr(owner, src), store.ptr(owner, dst)) else {
        return Err(MOLT_ERR_FAILED);
    };
    if let Some(h) = f.host.hooks() {
        h.quiesce(owner, f.meta.id, f.meta.callbacks.adopt.is_some()).map_err(|e| fail(f, e))?;
    }
    let cname = CString::new(name).unwrap_or_default();
    let m = molt_migration {
        size: v1_0::MIGRATION_SIZE as u32,
        abi_major: MOLT_ABI_MAJOR,
        abi_minor: MOLT_ABI_MINOR,
        direction: if down { MOLT_MIGRATE_DOWN } else { MOLT_MIGRATE_UP },
        from_schema,
        to_schema,
        reserved: 0,
        block_name: cname.as_ptr(),
        src: src_ptr.cast_const().cast(),
        src_len,
        dst: dst_ptr.cast(),
        dst_len,
    };
    if down {
        let hooks = f.host.hooks().ok_or(MOLT_ERR_SCHEMA)?;
        hooks.migrate_down(owner, &m).map_err(|e| fail(f, e))?;
    } else {
        let Some(migrate) = f.meta.callbacks.migrate else {
            return Err(fail(
                f,
                (
                    MOLT_ERR_SCHEMA,
                    format!(
                        "state block {owner}/{name} has schema {from_schema}, version {} speaks {to_schema} and has no migrate callback",
                        f.meta.version
                    ),
                ),
            ));
        };
        // SAFETY: `migrate` is the module's callback from its descriptor (the
        // library is loaded: we are inside one of its calls); `ctx` is the
        // ctx of that call, still live; `m` and the buffers it points to
        // outlive the call.
        let status = unsafe { migrate(ctx, &m) };
        if status != MOLT_OK {
            return Err(status);
        }
    }
    store.commit_migration(src, dst).map_err(|e| fail(f, e))?;
    if let Some(h) = f.host.hooks() {
        h.migrated(owner, src, dst);
    }
    tracing::info!(module = %owner, version = %f.meta.version, block = name, from_schema, to_schema, "state block migrated");
    Ok(dst_len)
}

unsafe extern "C" fn host_state_ptr(
    ctx: *const molt_ctx,
    handle: molt_state_handle,
    out: *mut *mut c_void,
) -> molt_status {
    host_entry!("state_ptr", ctx, |f| {
        // SAFETY: the module's out-parameter.
        let out = unsafe { Out::new(out) }?;
        let Some((p, _)) = f.host.state.ptr(&f.meta.name, handle) else {
            return Err((MOLT_ERR_STALE, format!("state handle {handle} is not a block of {}", f.meta.name)).into());
        };
        out.put(p.cast());
        Ok(())
    })
}

unsafe extern "C" fn host_user_arg_reserve(
    ctx: *const molt_ctx,
    name: *const c_char,
    name_len: usize,
    out: *mut u32,
) -> molt_status {
    host_entry!("user_arg_reserve", ctx, |f| {
        // SAFETY: the module passes a name readable for `name_len` bytes.
        let name = unsafe { text(name, name_len, "user_arg_reserve: the name") }?;
        // SAFETY: the module's out-parameter.
        let out = unsafe { Out::new(out) }?;
        out.put(f.host.user_args.reserve(name, f.meta.id)?);
        Ok(())
    })
}

unsafe extern "C" fn host_user_arg_set(ctx: *const molt_ctx, id: molt_cont_id, slot: u32, value: u64) -> molt_status {
    host_entry!("user_arg_set", ctx, |f| Ok(f.env.services.user_arg_set(f, id, slot, value)?))
}

unsafe extern "C" fn host_user_arg_get(
    ctx: *const molt_ctx,
    id: molt_cont_id,
    slot: u32,
    out: *mut u64,
) -> molt_status {
    host_entry!("user_arg_get", ctx, |f| {
        // SAFETY: the module's out-parameter.
        let out = unsafe { Out::new(out) }?;
        out.put(f.env.services.user_arg_get(f, id, slot)?);
        Ok(())
    })
}

// ---- ABI 1.1: connection I/O ----

unsafe extern "C" fn host_conn_write(ctx: *const molt_ctx, conn: u64, data: *const u8, len: usize) -> molt_status {
    host_entry!("conn_write", ctx, |f| {
        // SAFETY: the module passes bytes readable for `len`.
        let data = unsafe { bytes(data, len) }?;
        Ok(f.env.services.conn_write(f, conn, data)?)
    })
}

unsafe extern "C" fn host_conn_close(ctx: *const molt_ctx, conn: u64) -> molt_status {
    host_entry!("conn_close", ctx, |f| Ok(f.env.services.conn_close(f, conn)?))
}

unsafe extern "C" fn host_conn_connect(
    ctx: *const molt_ctx,
    addr: *const c_char,
    addr_len: usize,
    out: *mut u64,
) -> molt_status {
    host_entry!("conn_connect", ctx, |f| {
        // SAFETY: the module passes a string readable for `addr_len` bytes.
        let addr = unsafe { text(addr, addr_len, "conn_connect: the address") }?;
        // SAFETY: the module's out-parameter.
        let out = unsafe { Out::new(out) }?;
        out.put(f.env.services.conn_connect(f, addr)?);
        Ok(())
    })
}

// ---- ABI 1.1: HTTP hooks ----

/// The transaction `txn` of the current hook call.
fn txn<'a>(f: &'a CallFrame<'_>, txn: u64) -> Result<&'a dyn super::TxnAccess, Refused> {
    match f.env.txn {
        Some(t) if t.id() == txn => Ok(t),
        _ => Err((
            MOLT_ERR_STALE,
            format!(
                "transaction {txn:#x} is not the one this call is for: http_* functions work only during \
                 an HTTP hook event, on that event's handle"
            ),
        )
            .into()),
    }
}

/// Copy `value` into the module's (buf, cap), setting *out_len: the
/// length rules of http_get.
///
/// # Safety
///
/// `buf` is null (then cap is 0) or writable for `cap` bytes; `out_len` is
/// null or writable.
unsafe fn copy_out(value: &[u8], buf: *mut c_char, cap: usize, out_len: *mut usize) -> molt_status {
    // SAFETY: per this function's contract (null is allowed: no length wanted).
    if let Ok(out_len) = unsafe { Out::new(out_len) } {
        out_len.put(value.len());
    }
    if value.len() > cap {
        return MOLT_ERR_LIMIT;
    }
    if !value.is_empty() {
        if buf.is_null() {
            return MOLT_ERR_INVALID_ARG;
        }
        // SAFETY: `buf` is writable for `cap >= value.len()` bytes and
        // cannot overlap the host's value.
        unsafe { core::ptr::copy_nonoverlapping(value.as_ptr(), buf.cast::<u8>(), value.len()) };
    }
    MOLT_OK
}

unsafe extern "C" fn host_http_get(
    ctx: *const molt_ctx,
    txn_id: u64,
    item: u32,
    buf: *mut c_char,
    cap: usize,
    out_len: *mut usize,
) -> molt_status {
    host_entry!("http_get", ctx, |f| {
        let mut status = MOLT_OK;
        // SAFETY: the module passes its buffer and length slot (header contract).
        txn(f, txn_id)?.get(item, &mut |v| status = unsafe { copy_out(v, buf, cap, out_len) })?;
        Ok(status)
    })
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn host_http_header_get(
    ctx: *const molt_ctx,
    txn_id: u64,
    msg: u32,
    name: *const c_char,
    name_len: usize,
    index: u32,
    buf: *mut c_char,
    cap: usize,
    out_len: *mut usize,
) -> molt_status {
    host_entry!("http_header_get", ctx, |f| {
        // SAFETY: the module passes a name readable for `name_len` bytes.
        let name = unsafe { bytes(name.cast(), name_len) }?;
        let t = txn(f, txn_id)?;
        let mut status = MOLT_OK;
        // SAFETY: the module passes its buffer and length slot (header contract).
        match t.header_get(msg, name, index, &mut |v| status = unsafe { copy_out(v, buf, cap, out_len) }) {
            Ok(()) => Ok(status),
            // An absent field is an answer, not a failure of the call.
            Err((MOLT_ERR_NOT_FOUND, _)) => Err(bare(MOLT_ERR_NOT_FOUND)),
            Err(e) => Err(e.into()),
        }
    })
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn host_http_header_set(
    ctx: *const molt_ctx,
    txn_id: u64,
    msg: u32,
    mode: u32,
    name: *const c_char,
    name_len: usize,
    value: *const c_char,
    value_len: usize,
) -> molt_status {
    host_entry!("http_header_set", ctx, |f| {
        // SAFETY: the module passes a name readable for `name_len` bytes.
        let name = unsafe { bytes(name.cast(), name_len) }?;
        // SAFETY: the module passes a value readable for `value_len` bytes.
        let value = unsafe { bytes(value.cast(), value_len) }?;
        Ok(txn(f, txn_id)?.header_set(msg, mode, name, value)?)
    })
}

unsafe extern "C" fn host_http_set_target(
    ctx: *const molt_ctx,
    txn_id: u64,
    target: *const c_char,
    len: usize,
) -> molt_status {
    host_entry!("http_set_target", ctx, |f| {
        // SAFETY: the module passes a target readable for `len` bytes.
        let target = unsafe { bytes(target.cast(), len) }?;
        Ok(txn(f, txn_id)?.set_target(target)?)
    })
}

unsafe extern "C" fn host_http_respond(
    ctx: *const molt_ctx,
    txn_id: u64,
    status: u32,
    content_type: *const c_char,
    content_type_len: usize,
    body: *const u8,
    body_len: usize,
) -> molt_status {
    host_entry!("http_respond", ctx, |f| {
        // SAFETY: the module passes a string readable for `content_type_len` bytes.
        let ct = unsafe { bytes(content_type.cast(), content_type_len) }?;
        // SAFETY: the module passes a body readable for `body_len` bytes.
        let body = unsafe { bytes(body, body_len) }?;
        Ok(txn(f, txn_id)?.respond(status, ct, body)?)
    })
}

unsafe extern "C" fn host_http_upstream_select(
    ctx: *const molt_ctx,
    txn_id: u64,
    group: *const c_char,
    len: usize,
) -> molt_status {
    host_entry!("http_upstream_select", ctx, |f| {
        // SAFETY: the module passes a name readable for `len` bytes.
        let group = unsafe { bytes(group.cast(), len) }?;
        Ok(txn(f, txn_id)?.upstream_select(group)?)
    })
}

// ---- ABI 1.2: posting from module-owned threads ----

/// What a `molt_poster` points at: where posts go, and who posts.
struct Poster {
    sink: std::sync::Weak<dyn super::PostSink>,
    version: crate::cont::VersionId,
}

unsafe extern "C" fn host_poster_open(ctx: *const molt_ctx, out: *mut *mut molt_poster) -> molt_status {
    host_entry!("poster_open", ctx, |f| {
        // SAFETY: the module's out-parameter.
        let out = unsafe { Out::new(out) }?;
        let poster = Box::new(Poster { sink: f.host.post_sink(), version: f.meta.id });
        out.put(Box::into_raw(poster).cast());
        Ok(())
    })
}

/// The largest message a poster carries.
pub const POST_MAX: usize = 64 << 10;

unsafe extern "C" fn host_post(
    poster: *mut molt_poster,
    target: molt_cont_id,
    tag: u64,
    data: *const u8,
    len: usize,
) -> molt_status {
    // No ctx and no frame: this is the one entry for any thread. Its own
    // boundary catches a panic of ours.
    let run = || -> Result<(), Refused> {
        // SAFETY: a poster from poster_open, not closed yet (header contract).
        let Some(p) = (unsafe { poster.cast::<Poster>().as_ref() }) else { return Err(bare(MOLT_ERR_INVALID_ARG)) };
        if len > POST_MAX {
            return Err(bare(MOLT_ERR_LIMIT));
        }
        // SAFETY: the module passes a payload readable for `len` bytes.
        let payload = unsafe { bytes(data, len) }?;
        let sink = p.sink.upgrade().ok_or(bare(MOLT_ERR_SHUTDOWN))?;
        sink.post(p.version, target, tag, payload).map_err(|(status, why)| {
            tracing::debug!(version = %p.version, status, "post refused: {why}");
            bare(status)
        })
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(())) => MOLT_OK,
        Ok(Err(Refused(status, _))) => status,
        Err(_) => {
            tracing::error!(function = "post", "host function panicked; returning MOLT_ERR_FAILED to the module");
            MOLT_ERR_FAILED
        }
    }
}

unsafe extern "C" fn host_poster_close(poster: *mut molt_poster) {
    if poster.is_null() {
        return;
    }
    // SAFETY: a poster from poster_open (a Box it leaked), closed once
    // (header contract); dropping it cannot unwind (a Weak and an id).
    drop(unsafe { Box::from_raw(poster.cast::<Poster>()) });
}

unsafe extern "C" fn host_http_hooks(ctx: *const molt_ctx, hooks: u64) -> molt_status {
    host_entry!("http_hooks", ctx, |f| {
        let known = MOLT_HOOK_REQUEST | MOLT_HOOK_UPSTREAM | MOLT_HOOK_RESPONSE | MOLT_HOOK_TXN_END;
        if hooks & !known != 0 {
            return Err((MOLT_ERR_INVALID_ARG, format!("http_hooks: unknown bits {:#x}", hooks & !known)).into());
        }
        if !super::declare_http_hooks(hooks) {
            let why = format!("http_hooks is for init only ({} declares its hooks once, as it starts)", f.meta.name);
            return Err((MOLT_ERR_PHASE, why).into());
        }
        Ok(())
    })
}
