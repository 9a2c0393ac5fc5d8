//! The host function table: `extern "C"` entry points modules call.

use std::ffi::{CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use molt_abi::ffi::*;

use super::{CallFrame, Reply};
use crate::state::Opened;

/// The table every module receives (in `molt_host_info.api` and `molt_ctx.api`).
pub static HOST_API: molt_host_api = molt_host_api {
    size: v1_1::HOST_API_SIZE as u32,
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
};

/// The boundary every host function body runs in: a panic of ours becomes
/// `MOLT_ERR_FAILED` instead of unwinding into module code.
fn boundary(what: &str, f: impl FnOnce() -> molt_status) -> molt_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(status) => status,
        Err(_) => {
            tracing::error!(function = what, "host function panicked; returning MOLT_ERR_FAILED to the module");
            MOLT_ERR_FAILED
        }
    }
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
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        return Some(&[]);
    }
    if ptr.is_null() {
        return None;
    }
    // SAFETY: per this function's contract.
    Some(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// Fail with a reason the calling module's init will report (set_error on its behalf).
fn set_and_fail(frame: &CallFrame<'_>, e: (molt_status, String)) -> molt_status {
    fail(frame, e)
}

fn fail(frame: &CallFrame<'_>, (status, msg): (molt_status, String)) -> molt_status {
    tracing::debug!(module = %frame.meta.name, version = %frame.meta.version, status, "{msg}");
    frame.set_host_error(msg);
    status
}

unsafe extern "C" fn host_log(ctx: *const molt_ctx, level: u32, msg: *const c_char, len: usize) {
    boundary("log", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        // SAFETY: the module passes a string readable for `len` bytes.
        let Some(text) = (unsafe { bytes(msg.cast(), len) }) else { return MOLT_ERR_INVALID_ARG };
        let text = String::from_utf8_lossy(text);
        let (m, v) = (&f.meta.name, &f.meta.version);
        match level {
            MOLT_LOG_ERROR => tracing::error!(module = %m, version = %v, "{text}"),
            MOLT_LOG_WARN => tracing::warn!(module = %m, version = %v, "{text}"),
            MOLT_LOG_INFO => tracing::info!(module = %m, version = %v, "{text}"),
            MOLT_LOG_DEBUG => tracing::debug!(module = %m, version = %v, "{text}"),
            _ => tracing::trace!(module = %m, version = %v, "{text}"),
        }
        MOLT_OK
    });
}

unsafe extern "C" fn host_set_error(
    ctx: *const molt_ctx,
    status: molt_status,
    msg: *const c_char,
    len: usize,
) -> molt_status {
    boundary("set_error", || {
        // SAFETY: the module passes the ctx of its running call.
        if let Some(f) = unsafe { frame(ctx) } {
            // SAFETY: the module passes a string readable for `len` bytes.
            let text = unsafe { bytes(msg.cast(), len) }.map(String::from_utf8_lossy).unwrap_or_default();
            f.set_module_error(status, text.into_owned());
        }
        status
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
    boundary("cont_create", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        if out.is_null() {
            return MOLT_ERR_INVALID_ARG;
        }
        match f.env.services.cont_create(f, handler, data, worker, tag) {
            Ok(id) => {
                // SAFETY: `out` is non-null and the module's writable out-parameter.
                unsafe { out.write(id) };
                MOLT_OK
            }
            Err(e) => fail(f, e),
        }
    })
}

unsafe extern "C" fn host_cont_destroy(ctx: *const molt_ctx, id: molt_cont_id) -> molt_status {
    boundary("cont_destroy", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        f.env.services.cont_destroy(f, id).map_or_else(|e| fail(f, e), |()| MOLT_OK)
    })
}

unsafe extern "C" fn host_cont_send(
    ctx: *const molt_ctx,
    target: molt_cont_id,
    tag: u64,
    data: *const u8,
    len: usize,
) -> molt_status {
    boundary("cont_send", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        // SAFETY: the module passes a payload readable for `len` bytes.
        let Some(payload) = (unsafe { bytes(data, len) }) else { return MOLT_ERR_INVALID_ARG };
        if target == 0 {
            // A reply to the host: whoever made the host send the event collects it.
            // SAFETY: the ctx of a running call is readable.
            let from = unsafe { (*ctx).self_ };
            if let Some(sink) = f.env.replies {
                sink.reply(Reply { from, version: f.meta.id, tag, data: payload.to_vec() });
            }
            return MOLT_OK;
        }
        f.env.services.cont_send(f, target, tag, payload).map_or_else(|e| fail(f, e), |()| MOLT_OK)
    })
}

unsafe extern "C" fn host_timer_schedule(
    ctx: *const molt_ctx,
    target: molt_cont_id,
    delay_ns: u64,
    tag: u64,
    out: *mut molt_timer_id,
) -> molt_status {
    boundary("timer_schedule", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        match f.env.services.timer_schedule(f, target, delay_ns, tag) {
            Ok(id) => {
                if !out.is_null() {
                    // SAFETY: `out` is non-null and the module's writable out-parameter.
                    unsafe { out.write(id) };
                }
                MOLT_OK
            }
            Err(e) => fail(f, e),
        }
    })
}

unsafe extern "C" fn host_timer_cancel(ctx: *const molt_ctx, id: molt_timer_id) -> molt_status {
    boundary("timer_cancel", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        f.env.services.timer_cancel(f, id).map_or_else(|e| fail(f, e), |()| MOLT_OK)
    })
}

unsafe extern "C" fn host_state_open(
    ctx: *const molt_ctx,
    name: *const c_char,
    name_len: usize,
    schema: u32,
    min_len: u64,
    out: *mut molt_state_block,
) -> molt_status {
    boundary("state_open", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        // SAFETY: the module passes a name readable for `name_len` bytes.
        let Some(Ok(name)) = (unsafe { bytes(name.cast(), name_len) }).map(std::str::from_utf8) else {
            return fail(f, (MOLT_ERR_INVALID_ARG, "state_open: the block name is not UTF-8".into()));
        };
        // SAFETY: the module's out-parameter, checked for null.
        let Some(out) = (unsafe { out.as_mut() }) else { return MOLT_ERR_INVALID_ARG };
        if (out.size as usize) < v1_0::STATE_BLOCK_SIZE {
            return fail(f, (MOLT_ERR_INVALID_ARG, "state_open: out->size is smaller than molt_state_block".into()));
        }
        let declared = f.meta.state_schema;
        if schema != declared || declared == 0 {
            let why = format!(
                "state_open of block {name:?}: schema {schema} differs from the descriptor's state_schema {declared}; a module opens its blocks at the schema it declares (0 declares no state)"
            );
            return fail(f, (MOLT_ERR_INVALID_ARG, why));
        }
        let owner = &f.meta.name;
        let store = &f.host.state;
        let (handle, len, created) = match store.open_block(owner, name, schema, min_len) {
            Err(e) => return fail(f, e),
            Ok(Opened::Existing { handle, len }) => (handle, len, false),
            Ok(Opened::Created { handle, len }) => {
                if let Some(h) = f.host.hooks() {
                    h.created(owner, f.meta.id, handle);
                }
                (handle, len, true)
            }
            Ok(Opened::NeedsMigration { dst, from_schema, .. }) if f.env.worker != u32::MAX => {
                // A migration quiesces the module on every worker and waits
                // for them all: from a worker (this call's own included) it
                // would wait forever. Migrations run in a reload's init.
                if let Err((_, e)) = store.abort_migration(dst) {
                    tracing::error!(module = %owner, block = name, "forgetting an unneeded migration block: {e}");
                }
                let why = format!(
                    "state_open of block {name:?} would migrate it from schema {from_schema} to {schema}, which happens only during a reload: open the block in init"
                );
                return fail(f, (MOLT_ERR_PHASE, why));
            }
            Ok(Opened::NeedsMigration { src, dst, from_schema, down }) => {
                match migrate_block(f, ctx, name, (src, dst), from_schema, schema, down) {
                    Ok(len) => (dst, len, false),
                    Err(status) => {
                        // The old block stays live and intact; the new one is forgotten.
                        if let Err((_, e)) = store.abort_migration(dst) {
                            tracing::error!(module = %owner, block = name, "aborting a failed migration: {e}");
                        }
                        return status;
                    }
                }
            }
        };
        out.handle = handle;
        out.len = len;
        out.schema = schema;
        out.created = u32::from(created);
        MOLT_OK
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
        h.quiesce(owner, f.meta.id, f.meta.callbacks.adopt.is_some()).map_err(|e| set_and_fail(f, e))?;
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
        hooks.migrate_down(owner, &m).map_err(|e| set_and_fail(f, e))?;
    } else {
        let Some(migrate) = f.meta.callbacks.migrate else {
            return Err(set_and_fail(
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
    store.commit_migration(src, dst).map_err(|e| set_and_fail(f, e))?;
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
    boundary("state_ptr", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        if out.is_null() {
            return MOLT_ERR_INVALID_ARG;
        }
        match f.host.state.ptr(&f.meta.name, handle) {
            Some((p, _)) => {
                // SAFETY: `out` is non-null and the module's writable out-parameter.
                unsafe { out.write(p.cast()) };
                MOLT_OK
            }
            None => fail(f, (MOLT_ERR_STALE, format!("state handle {handle} is not a block of {}", f.meta.name))),
        }
    })
}

unsafe extern "C" fn host_user_arg_reserve(
    ctx: *const molt_ctx,
    name: *const c_char,
    name_len: usize,
    out: *mut u32,
) -> molt_status {
    boundary("user_arg_reserve", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        // SAFETY: the module passes a name readable for `name_len` bytes.
        let Some(Ok(name)) = (unsafe { bytes(name.cast(), name_len) }).map(std::str::from_utf8) else {
            return fail(f, (MOLT_ERR_INVALID_ARG, "user_arg_reserve: the name is not UTF-8".into()));
        };
        if out.is_null() {
            return MOLT_ERR_INVALID_ARG;
        }
        match f.host.user_args.reserve(name, f.meta.id) {
            Ok(i) => {
                // SAFETY: `out` is non-null and the module's writable out-parameter.
                unsafe { out.write(i) };
                MOLT_OK
            }
            Err(e) => fail(f, e),
        }
    })
}

unsafe extern "C" fn host_user_arg_set(ctx: *const molt_ctx, id: molt_cont_id, slot: u32, value: u64) -> molt_status {
    boundary("user_arg_set", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        f.env.services.user_arg_set(f, id, slot, value).map_or_else(|e| fail(f, e), |()| MOLT_OK)
    })
}

unsafe extern "C" fn host_user_arg_get(
    ctx: *const molt_ctx,
    id: molt_cont_id,
    slot: u32,
    out: *mut u64,
) -> molt_status {
    boundary("user_arg_get", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        if out.is_null() {
            return MOLT_ERR_INVALID_ARG;
        }
        match f.env.services.user_arg_get(f, id, slot) {
            Ok(v) => {
                // SAFETY: `out` is non-null and the module's writable out-parameter.
                unsafe { out.write(v) };
                MOLT_OK
            }
            Err(e) => fail(f, e),
        }
    })
}

// ---- ABI 1.1: connection I/O ----

unsafe extern "C" fn host_conn_write(ctx: *const molt_ctx, conn: u64, data: *const u8, len: usize) -> molt_status {
    boundary("conn_write", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        // SAFETY: the module passes bytes readable for `len`.
        let Some(data) = (unsafe { bytes(data, len) }) else { return MOLT_ERR_INVALID_ARG };
        match f.env.services.conn_write(f, conn, data) {
            Ok(()) => MOLT_OK,
            Err(e) => fail(f, e),
        }
    })
}

unsafe extern "C" fn host_conn_close(ctx: *const molt_ctx, conn: u64) -> molt_status {
    boundary("conn_close", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        match f.env.services.conn_close(f, conn) {
            Ok(()) => MOLT_OK,
            Err(e) => fail(f, e),
        }
    })
}

unsafe extern "C" fn host_conn_connect(
    ctx: *const molt_ctx,
    addr: *const c_char,
    addr_len: usize,
    out: *mut u64,
) -> molt_status {
    boundary("conn_connect", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        // SAFETY: the module passes a string readable for `addr_len` bytes.
        let Some(addr) = (unsafe { bytes(addr.cast(), addr_len) }) else { return MOLT_ERR_INVALID_ARG };
        let Ok(addr) = std::str::from_utf8(addr) else {
            return fail(f, (MOLT_ERR_INVALID_ARG, "conn_connect: the address is not UTF-8".into()));
        };
        if out.is_null() {
            return MOLT_ERR_INVALID_ARG;
        }
        match f.env.services.conn_connect(f, addr) {
            Ok(h) => {
                // SAFETY: `out` is non-null and the module's writable out-parameter.
                unsafe { out.write(h) };
                MOLT_OK
            }
            Err(e) => fail(f, e),
        }
    })
}

// ---- ABI 1.1: HTTP hooks ----

/// The transaction `txn` of the current hook call.
fn txn<'a>(f: &'a CallFrame<'_>, txn: u64) -> Result<&'a dyn super::TxnAccess, molt_status> {
    match f.env.txn {
        Some(t) if t.id() == txn => Ok(t),
        _ => Err(fail(
            f,
            (
                MOLT_ERR_STALE,
                format!(
                    "transaction {txn:#x} is not the one this call is for: http_* functions work only during \
                     an HTTP hook event, on that event's handle"
                ),
            ),
        )),
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
    if !out_len.is_null() {
        // SAFETY: per this function's contract.
        unsafe { out_len.write(value.len()) };
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
    boundary("http_get", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        let t = match txn(f, txn_id) {
            Ok(t) => t,
            Err(s) => return s,
        };
        let mut status = MOLT_OK;
        // SAFETY: the module passes its buffer and length slot (header contract).
        let r = t.get(item, &mut |v| status = unsafe { copy_out(v, buf, cap, out_len) });
        match r {
            Ok(()) => status,
            Err(e) => fail(f, e),
        }
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
    boundary("http_header_get", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        // SAFETY: the module passes a name readable for `name_len` bytes.
        let Some(name) = (unsafe { bytes(name.cast(), name_len) }) else { return MOLT_ERR_INVALID_ARG };
        let t = match txn(f, txn_id) {
            Ok(t) => t,
            Err(s) => return s,
        };
        let mut status = MOLT_OK;
        // SAFETY: the module passes its buffer and length slot (header contract).
        let r = t.header_get(msg, name, index, &mut |v| status = unsafe { copy_out(v, buf, cap, out_len) });
        match r {
            Ok(()) => status,
            Err(e) if e.0 == MOLT_ERR_NOT_FOUND => e.0,
            Err(e) => fail(f, e),
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
    boundary("http_header_set", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        // SAFETY: the module passes a name readable for `name_len` bytes.
        let Some(name) = (unsafe { bytes(name.cast(), name_len) }) else { return MOLT_ERR_INVALID_ARG };
        // SAFETY: the module passes a value readable for `value_len` bytes.
        let Some(value) = (unsafe { bytes(value.cast(), value_len) }) else { return MOLT_ERR_INVALID_ARG };
        let t = match txn(f, txn_id) {
            Ok(t) => t,
            Err(s) => return s,
        };
        match t.header_set(msg, mode, name, value) {
            Ok(()) => MOLT_OK,
            Err(e) => fail(f, e),
        }
    })
}

unsafe extern "C" fn host_http_set_target(
    ctx: *const molt_ctx,
    txn_id: u64,
    target: *const c_char,
    len: usize,
) -> molt_status {
    boundary("http_set_target", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        // SAFETY: the module passes a target readable for `len` bytes.
        let Some(target) = (unsafe { bytes(target.cast(), len) }) else { return MOLT_ERR_INVALID_ARG };
        let t = match txn(f, txn_id) {
            Ok(t) => t,
            Err(s) => return s,
        };
        match t.set_target(target) {
            Ok(()) => MOLT_OK,
            Err(e) => fail(f, e),
        }
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
    boundary("http_respond", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        // SAFETY: the module passes a string readable for `content_type_len` bytes.
        let Some(ct) = (unsafe { bytes(content_type.cast(), content_type_len) }) else { return MOLT_ERR_INVALID_ARG };
        // SAFETY: the module passes a body readable for `body_len` bytes.
        let Some(body) = (unsafe { bytes(body, body_len) }) else { return MOLT_ERR_INVALID_ARG };
        let t = match txn(f, txn_id) {
            Ok(t) => t,
            Err(s) => return s,
        };
        match t.respond(status, ct, body) {
            Ok(()) => MOLT_OK,
            Err(e) => fail(f, e),
        }
    })
}

unsafe extern "C" fn host_http_upstream_select(
    ctx: *const molt_ctx,
    txn_id: u64,
    group: *const c_char,
    len: usize,
) -> molt_status {
    boundary("http_upstream_select", || {
        // SAFETY: the module passes the ctx of its running call.
        let Some(f) = (unsafe { frame(ctx) }) else { return MOLT_ERR_INVALID_ARG };
        // SAFETY: the module passes a name readable for `len` bytes.
        let Some(group) = (unsafe { bytes(group.cast(), len) }) else { return MOLT_ERR_INVALID_ARG };
        let t = match txn(f, txn_id) {
            Ok(t) => t,
            Err(s) => return s,
        };
        match t.upstream_select(group) {
            Ok(()) => MOLT_OK,
            Err(e) => fail(f, e),
        }
    })
}
