//! [`Ctx`]: the safe face of `molt_ctx` and the host function table.

use core::ffi::c_void;
use core::marker::PhantomData;
use std::time::Duration;

use super::state::StateBlock;
use super::{Error, Event, Module, Result};
use crate::ffi::*;

/// A continuation id (opaque; 0 is never valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContId(pub u64);

/// A timer id (opaque; 0 is never valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(pub u64);

/// Log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Level {
    /// `MOLT_LOG_ERROR`.
    Error = MOLT_LOG_ERROR,
    /// `MOLT_LOG_WARN`.
    Warn = MOLT_LOG_WARN,
    /// `MOLT_LOG_INFO`.
    Info = MOLT_LOG_INFO,
    /// `MOLT_LOG_DEBUG`.
    Debug = MOLT_LOG_DEBUG,
    /// `MOLT_LOG_TRACE`.
    Trace = MOLT_LOG_TRACE,
}

/// The context of the current call: who is running, and the host's functions.
///
/// Borrowed for the call. Everything created through it is charged to the
/// module version the call is for.
pub struct Ctx<'a, M> {
    raw: &'a molt_ctx,
    api: &'a molt_host_api,
    _module: PhantomData<fn() -> M>,
}

impl<'a, M: Module> Ctx<'a, M> {
    /// Wrap the host's ctx.
    ///
    /// # Safety
    ///
    /// `raw` is the ctx the host passed to the current callback: valid for
    /// `'a`, with a valid `api` table (header rule 3).
    pub(crate) unsafe fn from_raw(raw: *const molt_ctx) -> Option<Ctx<'a, M>> {
        // SAFETY: per this function's contract.
        let raw = unsafe { raw.as_ref() }?;
        // SAFETY: per this function's contract, `api` is valid while loaded.
        let api = unsafe { raw.api.as_ref() }?;
        Some(Ctx { raw, api, _module: PhantomData })
    }

    pub(crate) fn ptr(&self) -> *const molt_ctx {
        self.raw
    }

    pub(crate) fn api(&self) -> &'a molt_host_api {
        self.api
    }

    /// The index of the worker thread running this call.
    pub fn worker(&self) -> u32 {
        self.raw.worker
    }

    /// The continuation being handled, if any.
    pub fn current(&self) -> Option<ContId> {
        (self.raw.self_ != 0).then_some(ContId(self.raw.self_))
    }

    /// Write a log line, tagged by the host with this module and version.
    pub fn log(&self, level: Level, msg: &str) {
        if let Some(log) = crate::api_get!(self.api, log) {
            // SAFETY: host function called with the current ctx and a string
            // valid across the call; the host copies it.
            unsafe { log(self.ptr(), level as u32, msg.as_ptr().cast(), msg.len()) }
        }
    }

    /// `log(Level::Info, msg)`.
    pub fn info(&self, msg: &str) {
        self.log(Level::Info, msg)
    }

    /// `log(Level::Warn, msg)`.
    pub fn warn(&self, msg: &str) {
        self.log(Level::Warn, msg)
    }

    /// Create a continuation on this worker with `data` (freed by the SDK
    /// when it ends). It first receives a `Start` event carrying `tag`.
    pub fn spawn(&self, data: Option<Box<M::Cont>>, tag: u64) -> Result<ContId> {
        self.spawn_on(u32::MAX, data, tag)
    }

    /// Like [`Ctx::spawn`], on worker `worker` (`u32::MAX`: this one).
    pub fn spawn_on(&self, worker: u32, data: Option<Box<M::Cont>>, tag: u64) -> Result<ContId> {
        let f = crate::api_get!(self.api, cont_create).ok_or_else(|| unsupported("cont_create"))?;
        let raw_data = data.map_or(core::ptr::null_mut(), |b| Box::into_raw(b).cast::<c_void>());
        let mut id = 0;
        // SAFETY: host function called with the current ctx; `id` is a
        // valid out-parameter; `raw_data` is ours until the host accepts it.
        let rc = unsafe { f(self.ptr(), None, raw_data, worker, tag, &mut id) };
        if rc != MOLT_OK {
            if !raw_data.is_null() {
                // SAFETY: the host refused the continuation, so it never took
                // `raw_data`, which came from `Box::into_raw` above.
                drop(unsafe { Box::from_raw(raw_data.cast::<M::Cont>()) });
            }
            return Err(Error::from_host(rc, "cont_create"));
        }
        Ok(ContId(id))
    }

    /// End a continuation; it receives `END` (after this call returns, if it
    /// is the current one), where its data is freed.
    pub fn destroy(&self, id: ContId) -> Result<()> {
        let f = crate::api_get!(self.api, cont_destroy).ok_or_else(|| unsupported("cont_destroy"))?;
        // SAFETY: host function called with the current ctx.
        check(unsafe { f(self.ptr(), id.0) }, "cont_destroy")
    }

    /// Send a message to a continuation (or to the host, `ContId(0)`).
    pub fn send(&self, to: ContId, tag: u64, data: &[u8]) -> Result<()> {
        let f = crate::api_get!(self.api, cont_send).ok_or_else(|| unsupported("cont_send"))?;
        // SAFETY: host function called with the current ctx and a payload
        // valid across the call; the host copies it.
        check(unsafe { f(self.ptr(), to.0, tag, data.as_ptr(), data.len()) }, "cont_send")
    }

    /// Answer an event: a message to its source with the same tag.
    pub fn reply(&self, to: &Event<'_>, data: &[u8]) -> Result<()> {
        self.send(ContId(to.source), to.tag, data)
    }

    /// Deliver a `Timer` event with `tag` to `to` after `delay`.
    pub fn schedule(&self, to: ContId, delay: Duration, tag: u64) -> Result<TimerId> {
        let f = crate::api_get!(self.api, timer_schedule).ok_or_else(|| unsupported("timer_schedule"))?;
        let ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        let mut id = 0;
        // SAFETY: host function called with the current ctx; `id` is a valid out-parameter.
        check(unsafe { f(self.ptr(), to.0, ns, tag, &mut id) }, "timer_schedule")?;
        Ok(TimerId(id))
    }

    /// Cancel a timer that has not fired.
    pub fn cancel(&self, timer: TimerId) -> Result<()> {
        let f = crate::api_get!(self.api, timer_cancel).ok_or_else(|| unsupported("timer_cancel"))?;
        // SAFETY: host function called with the current ctx.
        check(unsafe { f(self.ptr(), timer.0) }, "timer_cancel")
    }

    /// Open (or create, zero-filled) this module's state block `name` with
    /// schema [`Module::STATE_SCHEMA`] and at least `min_len` bytes.
    pub fn state_block(&self, name: &str, min_len: u64) -> Result<StateBlock> {
        let open = crate::api_get!(self.api, state_open).ok_or_else(|| unsupported("state_open"))?;
        let ptr_of = crate::api_get!(self.api, state_ptr).ok_or_else(|| unsupported("state_ptr"))?;
        let mut out = molt_state_block {
            size: v1_0::STATE_BLOCK_SIZE as u32,
            abi_major: MOLT_ABI_MAJOR,
            abi_minor: MOLT_ABI_MINOR,
            handle: 0,
            len: 0,
            schema: 0,
            created: 0,
        };
        // SAFETY: host function called with the current ctx, a name valid
        // across the call, and a valid out-parameter with `size` set.
        let rc = unsafe { open(self.ptr(), name.as_ptr().cast(), name.len(), M::STATE_SCHEMA, min_len, &mut out) };
        check(rc, "state_open")?;
        let mut base = core::ptr::null_mut();
        // SAFETY: host function called with the current ctx and a valid out-parameter.
        check(unsafe { ptr_of(self.ptr(), out.handle, &mut base) }, "state_ptr")?;
        // SAFETY: the host returned this address for this block: valid for
        // `out.len` bytes, 64-byte aligned, until the instance's fini returns
        // (header, `state_ptr`), and the instance is what holds the block.
        unsafe { StateBlock::from_raw(base.cast(), out) }
    }

    /// Reserve a user-arg slot by name (same name, same index, across reloads).
    pub fn reserve_user_arg(&self, name: &str) -> Result<u32> {
        let f = crate::api_get!(self.api, user_arg_reserve).ok_or_else(|| unsupported("user_arg_reserve"))?;
        let mut slot = 0;
        // SAFETY: host function called with the current ctx, a name valid
        // across the call, and a valid out-parameter.
        check(unsafe { f(self.ptr(), name.as_ptr().cast(), name.len(), &mut slot) }, "user_arg_reserve")?;
        Ok(slot)
    }

    /// Store `value` in continuation `id`'s user-arg `slot`.
    pub fn user_arg_set(&self, id: ContId, slot: u32, value: u64) -> Result<()> {
        let f = crate::api_get!(self.api, user_arg_set).ok_or_else(|| unsupported("user_arg_set"))?;
        // SAFETY: host function called with the current ctx.
        check(unsafe { f(self.ptr(), id.0, slot, value) }, "user_arg_set")
    }

    /// Read continuation `id`'s user-arg `slot`.
    pub fn user_arg_get(&self, id: ContId, slot: u32) -> Result<u64> {
        let f = crate::api_get!(self.api, user_arg_get).ok_or_else(|| unsupported("user_arg_get"))?;
        let mut v = 0;
        // SAFETY: host function called with the current ctx and a valid out-parameter.
        check(unsafe { f(self.ptr(), id.0, slot, &mut v) }, "user_arg_get")?;
        Ok(v)
    }
}

impl<M: Module> Ctx<'_, M> {
    /// Open a [`Poster`]: the one handle a thread the module started may
    /// use (header rule 8). Drop it before the module's `fini` returns.
    pub fn poster(&self) -> Result<Poster> {
        let open = crate::api_get!(self.api, poster_open).ok_or_else(|| unsupported("poster_open (ABI 1.2)"))?;
        let post = crate::api_get!(self.api, post).ok_or_else(|| unsupported("post (ABI 1.2)"))?;
        let close = crate::api_get!(self.api, poster_close).ok_or_else(|| unsupported("poster_close (ABI 1.2)"))?;
        let mut raw = core::ptr::null_mut();
        // SAFETY: host function called with the current ctx and a valid out-parameter.
        check(unsafe { open(self.ptr(), &mut raw) }, "poster_open")?;
        Ok(Poster { raw, post, close })
    }
}

/// Posts messages to continuations from any thread (`MOLT_EV_MESSAGE` with
/// `MOLT_EVF_POSTED`, source 0). `Send + Sync`; closed on drop.
pub struct Poster {
    raw: *mut molt_poster,
    post: unsafe extern "C" fn(*mut molt_poster, molt_cont_id, u64, *const u8, usize) -> molt_status,
    close: unsafe extern "C" fn(*mut molt_poster),
}

// SAFETY: the host's post entry is thread-safe (header: "from any thread");
// the poster is closed once, by Drop, which needs ownership.
unsafe impl Send for Poster {}
// SAFETY: as above: `post` takes the poster from any number of threads at once.
unsafe impl Sync for Poster {}

impl Poster {
    /// Post `data` (copied, at most 64 KiB) to `to` with `tag`.
    pub fn post(&self, to: ContId, tag: u64, data: &[u8]) -> Result<()> {
        // SAFETY: a poster from poster_open, open until Drop; the payload is
        // valid across the call and the host copies it.
        check(unsafe { (self.post)(self.raw, to.0, tag, data.as_ptr(), data.len()) }, "post")
    }
}

impl Drop for Poster {
    fn drop(&mut self) {
        // SAFETY: opened by poster_open, closed exactly once (here).
        unsafe { (self.close)(self.raw) }
    }
}

pub(crate) fn unsupported(what: &'static str) -> Error {
    Error::unsupported(format!("the host does not offer {what}"))
}

pub(crate) fn check(rc: molt_status, what: &'static str) -> Result<()> {
    if rc == MOLT_OK { Ok(()) } else { Err(Error::from_host(rc, what)) }
}
