//! The static descriptor, the entry, and the trampolines from C to [`Module`].

use core::ffi::{c_char, c_void};
use core::sync::atomic::{AtomicBool, Ordering};

use super::boundary::{self, Outcome};
use super::config::Config;
use super::ctx::Ctx;
use super::event::Event;
use super::state::Migration;
use super::{Error, Module, Result};
use crate::Status;
use crate::ffi::*;

/// A module descriptor placed in a `static` by [`crate::molt_module!`].
#[repr(transparent)]
pub struct StaticDesc(molt_module_desc);

// SAFETY: the descriptor is immutable after construction and its pointers
// are to `'static` C strings and functions, so sharing it between threads is sound.
unsafe impl Sync for StaticDesc {}

impl StaticDesc {
    /// The descriptor of module `M`.
    pub const fn new<M: Module>() -> StaticDesc {
        StaticDesc(molt_module_desc {
            size: v1_0::MODULE_DESC_SIZE as u32,
            abi_major: MOLT_ABI_MAJOR,
            abi_minor: MOLT_ABI_MINOR,
            name: M::NAME.as_ptr(),
            version: M::VERSION.as_ptr(),
            version_number: M::VERSION_NUMBER,
            state_schema: M::STATE_SCHEMA,
            flags: M::FLAGS,
            reserved: 0,
            required_host_caps: M::REQUIRED_HOST_CAPS,
            module_caps: M::MODULE_CAPS,
            init: Some(init::<M>),
            handle_event: Some(handle_event::<M>),
            migrate: if M::HAS_MIGRATE { Some(migrate::<M>) } else { None },
            adopt: if M::HAS_ADOPT { Some(adopt::<M>) } else { None },
            drain: Some(drain::<M>),
            fini: Some(fini::<M>),
        })
    }

    /// The raw descriptor.
    pub fn raw(&self) -> &molt_module_desc {
        &self.0
    }
}

/// The body of `molt_module_entry_v1` for an SDK module.
///
/// # Safety
///
/// Called as the entry: `host` null or valid for the call, `desc` null or
/// writable, `errbuf` null or writable for `errbuf_len` bytes. `module_desc`
/// is the module's static descriptor.
pub unsafe fn entry(
    host: *const molt_host_info,
    desc: *mut *const molt_module_desc,
    errbuf: *mut c_char,
    errbuf_len: usize,
    module_desc: &'static StaticDesc,
) -> molt_status {
    let fail = |msg: &str, status: molt_status| -> molt_status {
        // SAFETY: per this function's contract, errbuf is null or writable for errbuf_len.
        unsafe { write_errbuf(errbuf, errbuf_len, msg) };
        status
    };
    // SAFETY: per this function's contract, `host` is null or valid for the call.
    let Some(info) = (unsafe { host.as_ref() }) else {
        return fail("molt_module_entry_v1: host info is NULL", MOLT_ERR_INVALID_ARG);
    };
    if info.abi_major != MOLT_ABI_MAJOR {
        let msg = format!(
            "module built for molt ABI major {MOLT_ABI_MAJOR}, host speaks major {}: rebuild the module against the host's molt.h",
            info.abi_major
        );
        return fail(&msg, MOLT_ERR_VERSION);
    }
    if desc.is_null() {
        return fail("molt_module_entry_v1: desc out-parameter is NULL", MOLT_ERR_INVALID_ARG);
    }
    boundary::install_panic_hook();
    // SAFETY: `desc` is non-null (checked) and writable per this function's contract.
    unsafe { desc.write(&module_desc.0) };
    MOLT_OK
}

/// Write a NUL-terminated, truncated message into the host's buffer.
///
/// # Safety
///
/// `buf` is null or writable for `len` bytes.
unsafe fn write_errbuf(buf: *mut c_char, len: usize, msg: &str) {
    if buf.is_null() || len == 0 {
        return;
    }
    let n = msg.len().min(len - 1);
    // SAFETY: per this function's contract, `buf` is writable for `len > n` bytes.
    let out = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    out[..n].copy_from_slice(&msg.as_bytes()[..n]);
    out[n] = 0;
}

/// An instance of `M`: the module value and its failed mark.
struct Instance<M> {
    module: M,
    failed: AtomicBool,
}

/// Run a callback body for `M` at the boundary: errors are reported through
/// `set_error`, panics become `MOLT_ERR_PANIC` and mark `instance` failed.
fn guarded<M: Module>(
    ctx: *const molt_ctx,
    what: &str,
    instance: Option<&Instance<M>>,
    f: impl FnOnce() -> Result<()>,
) -> molt_status {
    match boundary::catch(f) {
        Outcome::Done(Ok(())) => MOLT_OK,
        Outcome::Done(Err(e)) => boundary::report(ctx, &e),
        Outcome::Panicked(text) => {
            if let Some(inst) = instance {
                if M::POISON_ON_PANIC {
                    inst.failed.store(true, Ordering::Release);
                }
            }
            boundary::report_panic(ctx, what, text)
        }
    }
}

/// The instance behind `ctx.instance`.
///
/// # Safety
///
/// `ctx` is the ctx the host passed to the current callback, and its
/// `instance` is null or what `init::<M>` stored (a live `Instance<M>`).
unsafe fn instance<'a, M: Module>(ctx: *const molt_ctx) -> Result<&'a Instance<M>> {
    // SAFETY: per this function's contract, ctx is valid for the call.
    let raw = unsafe { ctx.as_ref() }.ok_or_else(|| Error::new(Status::InvalidArg, "ctx is NULL"))?;
    // SAFETY: per this function's contract, `instance` is null or an Instance<M>
    // that lives until fini, which is never concurrent with this call (rule 7).
    unsafe { raw.instance.cast::<Instance<M>>().as_ref() }
        .ok_or_else(|| Error::new(Status::InvalidArg, "called before init stored an instance"))
}

fn ctx_of<'a, M: Module>(ctx: *const molt_ctx) -> Result<Ctx<'a, M>> {
    // SAFETY: only called from the trampolines with the host's ctx for the
    // current call (header rule 3).
    unsafe { Ctx::from_raw(ctx) }.ok_or_else(|| Error::new(Status::InvalidArg, "ctx or its api table is NULL"))
}

fn refuse_if_failed<M: Module>(inst: &Instance<M>) -> Result<()> {
    if M::POISON_ON_PANIC && inst.failed.load(Ordering::Acquire) {
        return Err(Error::new(
            Status::InstanceFailed,
            "this instance panicked earlier and refuses further calls; reload the module",
        ));
    }
    Ok(())
}

unsafe extern "C" fn init<M: Module>(
    ctx: *const molt_ctx,
    args: *const molt_init_args,
    out: *mut *mut c_void,
) -> molt_status {
    guarded::<M>(ctx, "init", None, || {
        if out.is_null() {
            return Err(Error::new(Status::InvalidArg, "init: instance out-parameter is NULL"));
        }
        let c = ctx_of::<M>(ctx)?;
        // SAFETY: `args` is the host's init args for this call (header, init).
        let config = unsafe { Config::from_raw(args) };
        if M::HTTP_HOOKS != 0 {
            // A 1.1 host lacks the entry: it calls every hook, which is correct too.
            if let Some(declare) = crate::api_get!(c.api(), http_hooks) {
                // SAFETY: host function called with the current (init) ctx.
                super::ctx::check(unsafe { declare(c.ptr(), M::HTTP_HOOKS) }, "http_hooks")?;
            }
        }
        let module = M::init(&c, &config)?;
        let inst = Box::new(Instance { module, failed: AtomicBool::new(false) });
        // SAFETY: `out` is non-null (checked) and writable for this call.
        unsafe { out.write(Box::into_raw(inst).cast()) };
        Ok(())
    })
}

unsafe extern "C" fn handle_event<M: Module>(
    ctx: *const molt_ctx,
    data: *mut c_void,
    ev: *const molt_event,
) -> molt_status {
    // SAFETY: the host passes the instance init stored (header, molt_ctx.instance).
    let inst = match unsafe { instance::<M>(ctx) } {
        Ok(i) => i,
        Err(e) => return boundary::report(ctx, &e),
    };
    guarded::<M>(ctx, "handle_event", Some(inst), || {
        // SAFETY: `ev` is the host's event for this call (rule 3).
        let raw = unsafe { ev.as_ref() }.ok_or_else(|| Error::new(Status::InvalidArg, "event is NULL"))?;
        let c = ctx_of::<M>(ctx)?;
        if raw.kind == MOLT_EV_END {
            let owned = if data.is_null() {
                None
            } else {
                // SAFETY: a continuation's data is null or came from
                // `Box::into_raw` of an `M::Cont` in `Ctx::spawn` or `adopt`,
                // and END is its last event (header, MOLT_EV_END), so we own it now.
                Some(unsafe { Box::from_raw(data.cast::<M::Cont>()) })
            };
            inst.module.end(&c, owned, raw.flags & MOLT_EVF_ADOPTED != 0);
            return Ok(());
        }
        refuse_if_failed(inst)?;
        // SAFETY: as above, data is null or an `M::Cont` owned by this
        // continuation, and calls for one continuation never overlap (rule 7).
        let cont = unsafe { data.cast::<M::Cont>().as_mut() };
        // SAFETY: `raw` is the host's event for this call.
        let event = unsafe { Event::from_raw(raw) };
        let m = &inst.module;
        let status = |x: u64| u16::try_from(x).unwrap_or(0);
        match raw.kind {
            MOLT_EV_HTTP_REQUEST => m.http_request(&c, &c.txn(&event)),
            MOLT_EV_HTTP_UPSTREAM => m.http_upstream(&c, &c.txn(&event)),
            MOLT_EV_HTTP_RESPONSE => m.http_response(&c, &c.txn(&event), status(event.arg0), event.arg1),
            MOLT_EV_HTTP_TXN_END => m.http_txn_end(&c, &c.txn(&event), status(event.arg0), event.arg1),
            MOLT_EV_CONN_OPEN => {
                let peer = core::str::from_utf8(event.data).unwrap_or("");
                m.conn_open(&c, cont, event.handle, peer, event.arg0 == 1)
            }
            MOLT_EV_CONN_DATA => m.conn_data(&c, cont, event.handle, event.data),
            MOLT_EV_CONN_CLOSED => m.conn_closed(&c, cont, event.handle, event.arg0),
            MOLT_EV_CONN_WRITABLE => m.conn_writable(&c, cont, event.handle),
            _ => m.handle_event(&c, cont, &event),
        }
    })
}

unsafe extern "C" fn migrate<M: Module>(ctx: *const molt_ctx, m: *const molt_migration) -> molt_status {
    guarded::<M>(ctx, "migrate", None, || {
        // SAFETY: `m` is the host's migration for this call (header, migrate).
        let raw = unsafe { m.as_ref() }.ok_or_else(|| Error::new(Status::InvalidArg, "migration is NULL"))?;
        // SAFETY: as above; the host gives us dst alone for the call.
        let mut mig = unsafe { Migration::from_raw(raw) }?;
        M::migrate(&ctx_of::<M>(ctx)?, &mut mig)
    })
}

unsafe extern "C" fn adopt<M: Module>(
    ctx: *const molt_ctx,
    _old_data: *mut c_void,
    old_version: u32,
    new_data: *mut *mut c_void,
    _new_handler: *mut Option<molt_handler_fn>,
) -> molt_status {
    // SAFETY: the host passes the instance init stored.
    let inst = match unsafe { instance::<M>(ctx) } {
        Ok(i) => i,
        Err(e) => return boundary::report(ctx, &e),
    };
    guarded::<M>(ctx, "adopt", Some(inst), || {
        refuse_if_failed(inst)?;
        if new_data.is_null() {
            return Err(Error::new(Status::InvalidArg, "adopt: new_data out-parameter is NULL"));
        }
        let data = inst.module.adopt(&ctx_of::<M>(ctx)?, old_version)?;
        let raw = data.map_or(core::ptr::null_mut(), |b| Box::into_raw(b).cast::<c_void>());
        // SAFETY: `new_data` is non-null (checked) and writable for this call.
        unsafe { new_data.write(raw) };
        Ok(())
    })
}

unsafe extern "C" fn drain<M: Module>(ctx: *const molt_ctx) -> molt_status {
    // SAFETY: the host passes the instance init stored.
    let inst = match unsafe { instance::<M>(ctx) } {
        Ok(i) => i,
        Err(e) => return boundary::report(ctx, &e),
    };
    guarded::<M>(ctx, "drain", Some(inst), || inst.module.drain(&ctx_of::<M>(ctx)?))
}

unsafe extern "C" fn fini<M: Module>(ctx: *const molt_ctx) {
    // SAFETY: `ctx` is the host's ctx for this call.
    let Some(raw) = (unsafe { ctx.as_ref() }) else { return };
    if raw.instance.is_null() {
        return;
    }
    // SAFETY: `instance` came from Box::into_raw in init::<M>, and fini is the
    // last call into the instance (header, fini), so we take it back.
    let inst = unsafe { Box::from_raw(raw.instance.cast::<Instance<M>>()) };
    let _ = guarded::<M>(ctx, "fini", None, move || {
        let c = ctx_of::<M>(ctx)?;
        inst.module.fini(&c);
        Ok(())
    });
}
