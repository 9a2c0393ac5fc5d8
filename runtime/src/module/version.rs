//! [`ModuleVersion`]: one loaded runtime copy of a module, and calls into it.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;

use molt_abi::ffi::*;

use super::{CallError, VersionId};
use crate::cont::context::ContextGuard;
use crate::host::{CallEnv, CallFrame, HOST_API, Host, ModuleMeta, Reply};
use crate::sync::{Arc, AtomicBool, AtomicUsize, Ordering};
use crate::sys;

impl CallEnv<'_> {
    /// The counted reference of the version being called, if the call has one.
    #[inline]
    pub(crate) fn owner_ref(&self) -> Option<&super::VersionRef> {
        self.owner.and_then(|o| o.downcast_ref())
    }
}

/// What holds a version, counted as holders are created and destroyed
/// (never on dispatch).
#[derive(Debug, Default)]
pub struct Holders {
    /// Live continuations owned by the version: one count per worker that
    /// pins it (`worker/pin.rs`), folded by [`Holders::conts`].
    pub(crate) shards: crate::sync::Mutex<Vec<Arc<AtomicUsize>>>,
    /// Pending timers charged to it.
    pub timers: AtomicUsize,
}

/// How an unload went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnloadReport {
    /// The version's id.
    pub id: VersionId,
    /// The module and version, for messages.
    pub module: String,
    /// Whether the copy is no longer mapped in this process.
    pub unmapped: bool,
    /// Why it is still mapped, if it is (pinned).
    pub pinned: Option<String>,
    /// Whether the private copy was removed (only once unmapped).
    pub copy_removed: bool,
    /// fini's failure, if it panicked.
    pub fini_error: Option<String>,
    /// The thread that finalised and closed it (the control side: never a
    /// worker, whose data path must not wait on `fini`, `dlclose` or disk).
    pub thread: String,
}

/// One loaded runtime copy of a module: its library, its instance, and the
/// calls into it. Calls set the plugin context around themselves.
pub struct ModuleVersion {
    meta: ModuleMeta,
    host: Arc<Host>,
    instance: *mut c_void,
    panicked: AtomicBool,
    holders: Arc<Holders>,
    lib: Option<sys::dl::Library>,
}

// SAFETY: the instance pointer is the module's, and the ABI requires a module
// to accept calls for different continuations from different workers at once
// (header rule 7); everything else here is owned data or Sync.
unsafe impl Send for ModuleVersion {}
// SAFETY: as above; `&ModuleVersion` only makes calls the ABI allows concurrently.
unsafe impl Sync for ModuleVersion {}

impl std::fmt::Debug for ModuleVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleVersion").field("meta", &self.meta).field("panicked", &self.has_panicked()).finish()
    }
}

#[inline]
/// Run `f` with a ctx for a call into `meta`'s module, with the plugin
/// context set to it; return `f`'s result and the error text the module
/// handed over.
pub(crate) fn with_call<R>(
    meta: &ModuleMeta,
    host: &Host,
    instance: *mut c_void,
    env: &CallEnv<'_>,
    self_id: u64,
    f: impl FnOnce(*const molt_ctx) -> R,
) -> (R, Option<(molt_status, String)>) {
    let frame = CallFrame { meta, host, env, errors: Cell::new(None), thread: crate::host::thread_mark() };
    let ctx = molt_ctx {
        size: v1_0::CTX_SIZE as u32,
        abi_major: MOLT_ABI_MAJOR,
        abi_minor: MOLT_ABI_MINOR,
        api: &HOST_API,
        instance,
        self_: self_id,
        worker: env.worker,
        reserved: 0,
        host: (&raw const frame).cast_mut().cast(),
    };
    let _context = ContextGuard::enter(meta.id);
    let r = f(&ctx);
    (r, frame.take_error())
}

/// Build an event for `target`.
pub fn event(kind: u32, target: u64, source: u64, tag: u64, data: &[u8]) -> molt_event {
    molt_event {
        size: v1_0::EVENT_SIZE as u32,
        abi_major: MOLT_ABI_MAJOR,
        abi_minor: MOLT_ABI_MINOR,
        kind,
        flags: 0,
        target,
        source,
        tag,
        data: if data.is_empty() { core::ptr::null() } else { data.as_ptr() },
        len: data.len(),
        handle: 0,
        arg0: 0,
        arg1: 0,
    }
}

impl ModuleVersion {
    pub(crate) fn new(
        meta: ModuleMeta,
        host: Arc<Host>,
        instance: *mut c_void,
        lib: sys::dl::Library,
    ) -> ModuleVersion {
        ModuleVersion {
            meta,
            host,
            instance,
            panicked: AtomicBool::new(false),
            holders: Arc::new(Holders::default()),
            lib: Some(lib),
        }
    }

    /// What is known about it.
    pub fn meta(&self) -> &ModuleMeta {
        &self.meta
    }

    /// Its id.
    pub fn id(&self) -> VersionId {
        self.meta.id
    }

    /// The runtime-wide services its calls use.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// What holds it.
    pub fn holders(&self) -> &Arc<Holders> {
        &self.holders
    }

    /// Whether a call into it panicked. (Whether the instance then refuses
    /// calls is the module's choice: the Rust SDK's `POISON_ON_PANIC`.)
    pub fn has_panicked(&self) -> bool {
        self.panicked.load(Ordering::Acquire)
    }

    /// The raw instance pointer and handler, for benchmarks that measure a
    /// bare call next to dispatch.
    pub fn raw_handler(&self) -> (molt_handler_fn, *mut c_void) {
        (self.meta.callbacks.handle_event, self.instance)
    }

    /// The error for an optional callback the module does not have.
    #[cold]
    fn missing(&self, callback: &'static str) -> CallError {
        CallError {
            module: self.meta.name.clone(),
            version: self.meta.version.clone(),
            callback,
            status: MOLT_ERR_UNSUPPORTED,
            text: format!("the module has no {callback} callback"),
        }
    }

    #[cold]
    fn call_error(&self, callback: &'static str, status: molt_status, err: Option<(molt_status, String)>) -> CallError {
        if status == MOLT_ERR_PANIC {
            self.panicked.store(true, Ordering::Release);
            super::quiet::failure(&self.meta.name, || {
                tracing::error!(module = %self.meta.name, version = %self.meta.version, callback, "module panicked");
            });
        }
        let text = err.map(|(_, t)| t).unwrap_or_else(|| "(the module gave no error text)".to_owned());
        CallError { module: self.meta.name.clone(), version: self.meta.version.clone(), callback, status, text }
    }

    /// Call the handler (`handler`, or the descriptor's) of continuation
    /// `self_id` whose data is `data`, with `ev`.
    ///
    /// # Safety
    ///
    /// `data` is null or the data pointer the module gave continuation
    /// `self_id` (created by this version, or adopted into it), `handler` is
    /// `None` or a handler of this version, and no other call for `self_id`
    /// runs at the same time (actor semantics, header rule 7).
    #[inline]
    pub unsafe fn handle_event(
        &self,
        env: CallEnv<'_>,
        self_id: u64,
        handler: Option<molt_handler_fn>,
        data: *mut c_void,
        ev: &molt_event,
    ) -> Result<(), Box<CallError>> {
        let h = handler.unwrap_or(self.meta.callbacks.handle_event);
        let (status, err) = with_call(&self.meta, &self.host, self.instance, &env, self_id, |ctx| {
            // SAFETY: `h` is this version's handler (its library is loaded
            // while `self` lives); ctx and ev are valid for the call; data and
            // exclusivity are this function's contract.
            unsafe { h(ctx, data, ev) }
        });
        // The error is boxed: a one-word result on the hot path (a wide one
        // was copied out through memory on every call).
        if status == MOLT_OK { Ok(()) } else { Err(Box::new(self.call_error("handle_event", status, err))) }
    }

    /// Hand live continuation `self_id` of an older version (its data
    /// `old_data`, version number `old_version`) to this version's `adopt`;
    /// returns this version's data and handler for it.
    ///
    /// # Safety
    ///
    /// The caller is the continuation's home worker between two of its
    /// events, so no call for `self_id` runs now.
    pub unsafe fn adopt(
        &self,
        env: CallEnv<'_>,
        self_id: u64,
        old_data: *mut c_void,
        old_version: u32,
    ) -> Result<(*mut c_void, Option<molt_handler_fn>), CallError> {
        let Some(adopt) = self.meta.callbacks.adopt else {
            return Err(self.missing("adopt"));
        };
        let mut new_data: *mut c_void = core::ptr::null_mut();
        let mut new_handler: Option<molt_handler_fn> = Some(self.meta.callbacks.handle_event);
        let (status, err) = with_call(&self.meta, &self.host, self.instance, &env, self_id, |ctx| {
            // SAFETY: `adopt` is this version's callback, its library loaded;
            // ctx and the out-parameters are valid for the call; exclusivity
            // for `self_id` is this function's contract.
            unsafe { adopt(ctx, old_data, old_version, &mut new_data, &mut new_handler) }
        });
        if status == MOLT_OK { Ok((new_data, new_handler)) } else { Err(self.call_error("adopt", status, err)) }
    }

    /// Send the module a message from the host (outside any worker) and
    /// collect what it sends back to the host.
    pub fn call_direct(&self, tag: u64, payload: &[u8]) -> Result<Vec<Reply>, CallError> {
        let replies = RefCell::new(Vec::new());
        let ev = event(MOLT_EV_MESSAGE, 0, 0, tag, payload);
        // SAFETY: a host-sent event to no continuation: null data, the
        // descriptor's handler, and id 0, which no other call can be for.
        unsafe { self.handle_event(CallEnv::detached(Some(&replies)), 0, None, core::ptr::null_mut(), &ev) }
            .map_err(|e| *e)?;
        Ok(replies.into_inner())
    }

    /// Deliver HTTP hook `kind` (`MOLT_EV_HTTP_*`) for transaction `txn`
    /// (handle `handle`, arguments `args`) outside any worker, with no
    /// continuation: what `molt check` uses to show what a module's hooks do.
    pub fn call_hook(
        &self,
        kind: u32,
        handle: u64,
        args: (u64, u64),
        txn: &dyn crate::host::TxnAccess,
    ) -> Result<(), CallError> {
        let mut ev = event(kind, 0, 0, 0, &[]);
        ev.handle = handle;
        ev.arg0 = args.0;
        ev.arg1 = args.1;
        let env = CallEnv { txn: Some(txn), ..CallEnv::detached(None) };
        // SAFETY: a host-sent event to no continuation: null data, the
        // descriptor's handler, and id 0, which no other call can be for.
        unsafe { self.handle_event(env, 0, None, core::ptr::null_mut(), &ev) }.map_err(|e| *e)
    }

    /// Run this version's migrate on `m` (a down-migration for a rollback),
    /// outside any worker.
    #[cfg_attr(molt_loom, allow(dead_code))]
    pub(crate) fn migrate(&self, m: &molt_migration) -> Result<(), CallError> {
        let Some(f) = self.meta.callbacks.migrate else {
            return Err(self.missing("migrate"));
        };
        let (status, err) = with_call(&self.meta, &self.host, self.instance, &CallEnv::detached(None), 0, |ctx| {
            // SAFETY: this version's migrate, its library loaded; `m` and its
            // buffers outlive the call; the module is quiesced by the caller.
            unsafe { f(ctx, m) }
        });
        if status == MOLT_OK { Ok(()) } else { Err(self.call_error("migrate", status, err)) }
    }

    /// Tell the instance it is being replaced.
    pub fn drain(&self, env: CallEnv<'_>) -> Result<(), CallError> {
        let Some(d) = self.meta.callbacks.drain else { return Ok(()) };
        let (status, err) = with_call(&self.meta, &self.host, self.instance, &env, 0, |ctx| {
            // SAFETY: `d` is this version's drain callback, its library loaded; ctx valid for the call.
            unsafe { d(ctx) }
        });
        if status == MOLT_OK { Ok(()) } else { Err(self.call_error("drain", status, err)) }
    }

    /// Finalise the instance, close the library, verify the copy left memory
    /// and remove it. Never call this on the module's own stack.
    pub fn unload(mut self) -> UnloadReport {
        let module = format!("{} {}", self.meta.name, self.meta.version);
        let id = self.meta.id;
        let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
        let fini_error = self.fini();
        // A version whose library stays mapped, and why.
        let pinned = |why: &str, fini_error| UnloadReport {
            id,
            module: module.clone(),
            unmapped: false,
            pinned: Some(why.into()),
            copy_removed: false,
            fini_error,
            thread: thread.clone(),
        };
        let Some(lib) = self.lib.take() else {
            return pinned("already closed", fini_error);
        };
        if self.meta.flags & MOLT_MODULE_NEVER_UNLOAD != 0 {
            // The module asked never to be unmapped: keep the handle open for good.
            std::mem::forget(lib);
            return pinned("the module sets MOLT_MODULE_NEVER_UNLOAD", fini_error);
        }
        if let Err(e) = lib.close() {
            tracing::warn!(module = %self.meta.name, version = %self.meta.version, "dlclose failed: {e}");
        }
        let mapped = sys::maps::is_mapped(&self.meta.copy).unwrap_or(true);
        let pinned = mapped.then(|| {
            "still mapped after dlclose: the library registered a thread-local destructor (e.g. std's default panic hook or a thread_local! with Drop) or another handle holds it".to_owned()
        });
        let copy_removed = !mapped && sys::files::remove_copy(&self.meta.copy).is_ok();
        if let Some(p) = &pinned {
            tracing::warn!(module = %self.meta.name, version = %self.meta.version, copy = %self.meta.copy.display(), "pinned: {p}");
        }
        UnloadReport { id, module, unmapped: !mapped, pinned, copy_removed, fini_error, thread }
    }

    fn fini(&mut self) -> Option<String> {
        let f = self.meta.callbacks.fini?;
        self.lib.as_ref()?;
        let instance = std::mem::replace(&mut self.instance, core::ptr::null_mut());
        let ((), err) = with_call(&self.meta, &self.host, instance, &CallEnv::detached(None), 0, |ctx| {
            // SAFETY: `f` is this version's fini, its library still loaded;
            // it is the last call into the instance, made once (instance is
            // nulled above).
            unsafe { f(ctx) }
        });
        err.map(|(_, t)| t)
    }
}

impl Drop for ModuleVersion {
    fn drop(&mut self) {
        if self.lib.is_some() {
            let _ = self.fini();
            if let Some(lib) = self.lib.take() {
                if self.meta.flags & MOLT_MODULE_NEVER_UNLOAD != 0 {
                    std::mem::forget(lib);
                } else {
                    let _ = lib.close();
                    if !sys::maps::is_mapped(&self.meta.copy).unwrap_or(true) {
                        let _ = sys::files::remove_copy(&self.meta.copy);
                    }
                }
            }
        }
    }
}
