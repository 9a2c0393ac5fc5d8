//! The host side of the ABI: the function table modules call, and the
//! per-call frame behind `molt_ctx.host`.
//!
//! Every host function is `extern "C"` and runs inside [`boundary`], which
//! catches a panic of ours and turns it into `MOLT_ERR_FAILED` (a Rust panic
//! must never unwind into a C module). Each function finds its [`CallFrame`]
//! through the ctx the module passes back, so it knows which module version
//! is calling without a thread-local lookup; continuation and timer work is
//! delegated to the frame's [`Services`] (a worker, or [`Detached`] when the
//! runtime calls a module outside any worker).

mod api;
mod meta;
pub mod quiet;
mod user_args;

use std::cell::{Cell, RefCell};
use std::ffi::c_void;

use molt_abi::ffi::*;

pub use api::HOST_API;
pub use meta::{Callbacks, ModuleMeta};

pub use user_args::{USER_ARGS_MAX, UserArgs};

use crate::state::Region;

/// What every host of this build provides, in `MOLT_HOST_CAP_*` bits
/// ([`Host::caps`] adds `STATE_PERSISTENT` when the region is a file).
pub const HOST_CAPS: u64 = MOLT_HOST_CAP_CONT
    | MOLT_HOST_CAP_TIMERS
    | MOLT_HOST_CAP_STATE
    | MOLT_HOST_CAP_USER_ARGS
    | MOLT_HOST_CAP_ADOPT
    | MOLT_HOST_CAP_CONN
    | MOLT_HOST_CAP_HTTP
    | MOLT_HOST_CAP_POST;

/// The name and bit of every host capability this host knows, for messages.
pub const HOST_CAP_NAMES: &[(&str, u64)] = &[
    ("cont", MOLT_HOST_CAP_CONT),
    ("timers", MOLT_HOST_CAP_TIMERS),
    ("state", MOLT_HOST_CAP_STATE),
    ("state_persistent", MOLT_HOST_CAP_STATE_PERSISTENT),
    ("user_args", MOLT_HOST_CAP_USER_ARGS),
    ("adopt", MOLT_HOST_CAP_ADOPT),
    ("conn", MOLT_HOST_CAP_CONN),
    ("http", MOLT_HOST_CAP_HTTP),
    ("post", MOLT_HOST_CAP_POST),
];

/// Runtime-wide services shared by every module version: the state
/// region and user-arg slots.
#[derive(Debug)]
pub struct Host {
    /// The state region.
    pub state: Region,
    /// User-arg slots reserved by name.
    pub user_args: UserArgs,
    /// What the runtime does around state migrations (quiesce, down-migrate).
    hooks: std::sync::OnceLock<Box<dyn StateHooks>>,
    /// Where posters deliver (the runtime's workers); unset in tools, whose
    /// posters answer `MOLT_ERR_SHUTDOWN`.
    post_sink: std::sync::OnceLock<std::sync::Arc<dyn PostSink>>,
}

/// Default size of an anonymous region (tools, tests).
pub const ANON_STATE_SIZE: u64 = 16 << 20;

impl Default for Host {
    /// A host whose state lives in anonymous memory (for tools like `molt check`).
    fn default() -> Host {
        Host::new(Region::anonymous(ANON_STATE_SIZE).expect("anonymous state region"))
    }
}

impl Host {
    /// A host over `state`.
    pub fn new(state: Region) -> Host {
        Host {
            state,
            user_args: UserArgs::default(),
            hooks: std::sync::OnceLock::new(),
            post_sink: std::sync::OnceLock::new(),
        }
    }

    /// The capabilities this host offers modules.
    pub fn caps(&self) -> u64 {
        if self.state.path().is_some() { HOST_CAPS | MOLT_HOST_CAP_STATE_PERSISTENT } else { HOST_CAPS }
    }

    /// Install the runtime's state hooks (once).
    pub fn set_hooks(&self, hooks: Box<dyn StateHooks>) {
        let _ = self.hooks.set(hooks);
    }

    pub(crate) fn hooks(&self) -> Option<&dyn StateHooks> {
        self.hooks.get().map(|b| b.as_ref())
    }

    /// Install where posters deliver (once).
    pub fn set_post_sink(&self, sink: std::sync::Arc<dyn PostSink>) {
        let _ = self.post_sink.set(sink);
    }

    /// A weak handle on where posters deliver: a poster must not keep the
    /// runtime alive.
    pub(crate) fn post_sink(&self) -> std::sync::Weak<dyn PostSink> {
        match self.post_sink.get() {
            Some(s) => std::sync::Arc::downgrade(s),
            None => std::sync::Weak::<NoSink>::new(),
        }
    }
}

/// Where a poster's messages go: the one host service a module-owned thread
/// reaches (header rule 8). Thread-safe, and it never waits on a worker.
pub trait PostSink: Send + Sync {
    /// Deliver a message from version `from`'s thread to continuation
    /// `target` as `MOLT_EV_MESSAGE` with `MOLT_EVF_POSTED`, source 0.
    fn post(&self, from: crate::cont::VersionId, target: u64, tag: u64, data: &[u8]) -> ServiceResult<()>;
}

impl std::fmt::Debug for dyn PostSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostSink")
    }
}

/// The sink of a host without a runtime (tools): never upgraded.
struct NoSink;

impl PostSink for NoSink {
    fn post(&self, _: crate::cont::VersionId, _: u64, _: u64, _: &[u8]) -> ServiceResult<()> {
        Err((MOLT_ERR_SHUTDOWN, "no runtime runs here".into()))
    }
}

thread_local! {
    /// What the module being initialised on this thread declared with
    /// `http_hooks`: `None` outside an init.
    static DECLARED_HOOKS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// An init starts on this thread: `http_hooks` may be called until
/// [`declared_http_hooks`].
pub(crate) fn begin_init() {
    DECLARED_HOOKS.with(|d| d.set(Some(0)));
}

/// The init ended: what it declared (0: every hook), and no more declaring.
pub(crate) fn declared_http_hooks() -> u64 {
    DECLARED_HOOKS.with(|d| d.take()).unwrap_or(0)
}

/// Record a declaration; false outside an init.
pub(crate) fn declare_http_hooks(hooks: u64) -> bool {
    DECLARED_HOOKS.with(|d| match d.get() {
        Some(_) => {
            d.set(Some(hooks));
            true
        }
        None => false,
    })
}

/// An address unique to the calling thread among live threads (its
/// thread-local's): how a host function tells the callback's own thread
/// from one a module started, for the price of a TLS read.
#[inline]
pub(crate) fn thread_mark() -> usize {
    thread_local! {
        static MARK: u8 = const { 0 };
    }
    MARK.with(|m| core::ptr::from_ref(m) as usize)
}

/// What a state migration needs from the runtime around it.
pub trait StateHooks: Send + Sync {
    /// Stop module `module`'s other versions from running (their events are
    /// held, their in-flight calls finish) before its block is migrated.
    /// `caller` is the version migrating (still in its init), and
    /// `caller_adopts` whether it has an adopt callback.
    fn quiesce(
        &self,
        module: &str,
        caller: crate::cont::VersionId,
        caller_adopts: bool,
    ) -> Result<(), (molt_status, String)>;
    /// Down-migrate `module`'s block with a loaded version that knows
    /// schema `m.from_schema` (a rollback).
    fn migrate_down(&self, module: &str, m: &molt_migration) -> Result<(), (molt_status, String)>;
    /// A migration of `module`'s block `src` into `dst` was committed.
    fn migrated(&self, module: &str, src: u64, dst: u64);
    /// Version `by` of `module` created block `handle` (a refused reload
    /// forgets the blocks its candidates created).
    fn created(&self, module: &str, by: crate::cont::VersionId, handle: u64);
}

impl std::fmt::Debug for dyn StateHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateHooks")
    }
}

/// A message a module sent to the host (target 0): the reply to an event the
/// host sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The continuation that sent it (0 outside handle_event).
    pub from: u64,
    /// The module version whose code sent it.
    pub version: crate::cont::VersionId,
    /// Its tag.
    pub tag: u64,
    /// Its payload.
    pub data: Vec<u8>,
}

/// Where messages a module sends to the host (target 0) go.
pub trait ReplySink {
    /// Take one reply.
    fn reply(&self, reply: Reply);
}

impl ReplySink for RefCell<Vec<Reply>> {
    fn reply(&self, reply: Reply) {
        self.borrow_mut().push(reply);
    }
}

/// Replies to the host (target 0) waiting to be read, at most: past it
/// new ones are dropped (and counted), so a host that never reads them
/// (`molt run` does not) cannot grow without bound.
pub const HOST_REPLIES_MAX: usize = 65_536;

/// Host replies dropped because nobody read the queue.
static HOST_REPLIES_DROPPED: crate::sync::statics::AtomicU64 = crate::sync::statics::AtomicU64::new(0);

/// How many replies to the host were dropped since start (the queue was full).
pub fn host_replies_dropped() -> u64 {
    HOST_REPLIES_DROPPED.load(crate::sync::Ordering::Relaxed)
}

impl ReplySink for crossbeam_channel::Sender<Reply> {
    fn reply(&self, reply: Reply) {
        if self.try_send(reply).is_err() {
            HOST_REPLIES_DROPPED.fetch_add(1, crate::sync::Ordering::Relaxed);
        }
    }
}

/// A failure of a host service: a status and the reason in words.
pub type ServiceResult<T> = Result<T, (molt_status, String)>;

/// Continuation, timer and user-arg services: what a worker provides.
pub trait Services {
    /// Create a continuation charged to the calling version.
    fn cont_create(
        &self,
        frame: &CallFrame<'_>,
        handler: Option<molt_handler_fn>,
        data: *mut c_void,
        worker: u32,
        tag: u64,
    ) -> ServiceResult<u64>;
    /// End a continuation.
    fn cont_destroy(&self, frame: &CallFrame<'_>, id: u64) -> ServiceResult<()>;
    /// Send a message to a continuation (never 0: the frame handles host replies).
    fn cont_send(&self, frame: &CallFrame<'_>, target: u64, tag: u64, data: &[u8]) -> ServiceResult<()>;
    /// Schedule a timer.
    fn timer_schedule(&self, frame: &CallFrame<'_>, target: u64, delay_ns: u64, tag: u64) -> ServiceResult<u64>;
    /// Cancel a timer.
    fn timer_cancel(&self, frame: &CallFrame<'_>, id: u64) -> ServiceResult<()>;
    /// Set a continuation's user-arg value.
    fn user_arg_set(&self, frame: &CallFrame<'_>, id: u64, slot: u32, value: u64) -> ServiceResult<()>;
    /// Read a continuation's user-arg value.
    fn user_arg_get(&self, frame: &CallFrame<'_>, id: u64, slot: u32) -> ServiceResult<u64>;
    /// Queue bytes to a connection.
    fn conn_write(&self, frame: &CallFrame<'_>, conn: u64, data: &[u8]) -> ServiceResult<()>;
    /// Close a connection.
    fn conn_close(&self, frame: &CallFrame<'_>, conn: u64) -> ServiceResult<()>;
    /// Open a connection reporting to the calling continuation.
    fn conn_connect(&self, frame: &CallFrame<'_>, addr: &str) -> ServiceResult<u64>;
}

/// The transaction an HTTP hook call is about: what the `http_*` host
/// functions read and change. The HTTP layer implements it; the values it
/// hands out are copied into the module's buffers before the call returns.
pub trait TxnAccess {
    /// The transaction's handle (`molt_event.handle` of the hook).
    fn id(&self) -> u64;
    /// Pass an item (`MOLT_HTTP_ITEM_*`) to `f`.
    fn get(&self, item: u32, f: &mut dyn FnMut(&[u8])) -> ServiceResult<()>;
    /// Pass the `index`-th value of header `name` of message `msg` to `f`.
    fn header_get(&self, msg: u32, name: &[u8], index: u32, f: &mut dyn FnMut(&[u8])) -> ServiceResult<()>;
    /// Set, add or remove header fields.
    fn header_set(&self, msg: u32, mode: u32, name: &[u8], value: &[u8]) -> ServiceResult<()>;
    /// Rewrite the request target.
    fn set_target(&self, target: &[u8]) -> ServiceResult<()>;
    /// Answer the request here.
    fn respond(&self, status: u32, content_type: &[u8], body: &[u8]) -> ServiceResult<()>;
    /// Choose the upstream group.
    fn upstream_select(&self, group: &[u8]) -> ServiceResult<()>;
}

/// The services of a call made outside any worker (the loader's init and
/// fini, direct calls from tools): no continuations or timers exist there.
#[derive(Debug, Default, Clone, Copy)]
pub struct Detached;

fn detached<T>(what: &str) -> ServiceResult<T> {
    Err((
        MOLT_ERR_PHASE,
        format!(
            "{what} is not available in this call: no worker runs it (init, fini and direct calls run outside the event loop)"
        ),
    ))
}

impl Services for Detached {
    fn cont_create(
        &self,
        _: &CallFrame<'_>,
        _: Option<molt_handler_fn>,
        _: *mut c_void,
        _: u32,
        _: u64,
    ) -> ServiceResult<u64> {
        detached("cont_create")
    }
    fn cont_destroy(&self, _: &CallFrame<'_>, _: u64) -> ServiceResult<()> {
        detached("cont_destroy")
    }
    fn cont_send(&self, _: &CallFrame<'_>, _: u64, _: u64, _: &[u8]) -> ServiceResult<()> {
        detached("cont_send to a continuation")
    }
    fn timer_schedule(&self, _: &CallFrame<'_>, _: u64, _: u64, _: u64) -> ServiceResult<u64> {
        detached("timer_schedule")
    }
    fn timer_cancel(&self, _: &CallFrame<'_>, _: u64) -> ServiceResult<()> {
        detached("timer_cancel")
    }
    fn user_arg_set(&self, _: &CallFrame<'_>, _: u64, _: u32, _: u64) -> ServiceResult<()> {
        detached("user_arg_set")
    }
    fn user_arg_get(&self, _: &CallFrame<'_>, _: u64, _: u32) -> ServiceResult<u64> {
        detached("user_arg_get")
    }
    fn conn_write(&self, _: &CallFrame<'_>, _: u64, _: &[u8]) -> ServiceResult<()> {
        detached("conn_write")
    }
    fn conn_close(&self, _: &CallFrame<'_>, _: u64) -> ServiceResult<()> {
        detached("conn_close")
    }
    fn conn_connect(&self, _: &CallFrame<'_>, _: &str) -> ServiceResult<u64> {
        detached("conn_connect")
    }
}

/// Where a call into a module runs: its worker's services and reply sink.
#[derive(Clone, Copy)]
pub struct CallEnv<'a> {
    /// Continuation and timer services.
    pub services: &'a dyn Services,
    /// The worker index the call runs on (`u32::MAX` outside workers).
    pub worker: u32,
    /// Where messages to the host (target 0) go; dropped when `None`.
    pub replies: Option<&'a dyn ReplySink>,
    /// The counted reference of the version being called (the module
    /// layer's `VersionRef`, which the host does not name): what the call
    /// creates is charged to it. `None` outside workers.
    pub owner: Option<&'a (dyn std::any::Any + Send + Sync)>,
    /// The transaction of an HTTP hook call.
    pub txn: Option<&'a dyn TxnAccess>,
}

impl<'a> CallEnv<'a> {
    /// An environment outside any worker, collecting host replies in `replies`.
    pub fn detached(replies: Option<&'a dyn ReplySink>) -> CallEnv<'a> {
        CallEnv { services: &Detached, worker: u32::MAX, replies, owner: None, txn: None }
    }
}

/// The host's data for one call, behind `molt_ctx.host`.
pub struct CallFrame<'a> {
    /// The module version being called.
    pub meta: &'a ModuleMeta,
    /// Runtime-wide services.
    pub host: &'a Host,
    /// The environment (borrowed: the caller builds it in place, and a
    /// copy here cost a store-forwarding stall on every call).
    pub env: &'a CallEnv<'a>,
    /// What went wrong in this call, if anything: one word to set up and
    /// to check on every call, allocated only on a failure.
    pub(crate) errors: Cell<Option<Box<CallErrors>>>,
    /// The [`thread_mark`] of the thread running the callback.
    pub(crate) thread: usize,
}

/// The failure texts of one call.
#[derive(Debug, Default)]
pub(crate) struct CallErrors {
    /// What the module handed over with set_error.
    module: Option<(molt_status, String)>,
    /// Why the host refused the module's last failed host call.
    host: Option<String>,
}

impl CallFrame<'_> {
    /// Whether the caller is the thread running this frame's callback.
    #[inline]
    pub(crate) fn on_its_thread(&self) -> bool {
        thread_mark() == self.thread
    }

    /// The error the module handed over, if any, with the reason of a host
    /// call it failed on appended (a module often reports only the status).
    #[inline]
    pub fn take_error(&self) -> Option<(molt_status, String)> {
        self.errors.take().and_then(|e| (*e).into_report())
    }

    /// Record what the module handed over with set_error.
    #[cold]
    pub(crate) fn set_module_error(&self, status: molt_status, text: String) {
        let mut e = self.errors.take().unwrap_or_default();
        e.module = Some((status, text));
        self.errors.set(Some(e));
    }

    /// Record why the host refused a host call.
    #[cold]
    pub(crate) fn set_host_error(&self, text: String) {
        let mut e = self.errors.take().unwrap_or_default();
        e.host = Some(text);
        self.errors.set(Some(e));
    }
}

impl CallErrors {
    #[cold]
    fn into_report(self) -> Option<(molt_status, String)> {
        match (self.module, self.host) {
            (Some((s, t)), Some(h)) if !t.contains(h.as_str()) => Some((s, format!("{t} (host: {h})"))),
            // The module passed on a refusal without words of its own: the
            // host's are the reason.
            (None, Some(h)) => Some((MOLT_ERR_FAILED, format!("(the module gave no error text; the host said: {h})"))),
            (e, _) => e,
        }
    }
}
