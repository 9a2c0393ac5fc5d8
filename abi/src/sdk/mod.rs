//! The Rust module SDK: a safe trait, one export macro, no `unsafe` for authors.
//!
//! ```ignore
//! use molt_abi::sdk::{Ctx, Event, Module, Result, Config};
//!
//! struct Hello;
//! impl Module for Hello {
//!     const NAME: &'static core::ffi::CStr = c"hello";
//!     const VERSION: &'static core::ffi::CStr = c"1.0.0";
//!     type Cont = ();
//!     fn init(_ctx: &Ctx<'_, Self>, _cfg: &Config<'_>) -> Result<Self> { Ok(Hello) }
//!     fn handle_event(&self, ctx: &Ctx<'_, Self>, _c: Option<&mut ()>, ev: &Event<'_>) -> Result<()> {
//!         if ev.is_message() { ctx.reply(ev, b"hi")?; }
//!         Ok(())
//!     }
//! }
//! molt_abi::molt_module!(Hello);
//! ```
//!
//! Like Pingora's `ProxyHttp`, the trait has two required methods (`init`,
//! `handle_event`) and hooks with defaults. What the SDK guarantees:
//!
//! * **No unwinding into the host.** Every callback runs inside
//!   [`boundary`](self::boundary): a panic becomes `MOLT_ERR_PANIC` with the
//!   panic's message and location handed to the host through `set_error`, and
//!   the instance is marked failed (later calls get
//!   `MOLT_ERR_INSTANCE_FAILED`, unless [`Module::POISON_ON_PANIC`] is false).
//! * **The library stays unloadable.** std's default panic hook looks up the
//!   current thread, which registers a thread-local destructor, and glibc
//!   never unmaps a library in which one was registered. The entry installs a
//!   module-local hook (each cdylib has its own std, so its own hook) that
//!   records the message in a destructor-free thread-local instead.
//! * **Typed continuation data.** A continuation's `void *data` is a
//!   `Box<Self::Cont>`; it is created by [`Ctx::spawn`] and freed by the SDK
//!   when the continuation ends ([`Module::end`]).

mod boundary;
mod config;
mod ctx;
mod desc;
mod event;
mod http;
mod state;

pub use config::Config;
pub use ctx::{ContId, Ctx, Level, Poster, TimerId};
pub use desc::{StaticDesc, entry};
pub use event::{Event, EventKind};
pub use http::{Msg, Txn};
pub use state::{Migration, StateBlock};

use core::ffi::CStr;
use std::borrow::Cow;

use crate::Status;

/// An error a module returns: a status and the text the host will show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    status: Status,
    message: Cow<'static, str>,
}

impl Error {
    /// An error with a status and a message.
    pub fn new(status: Status, message: impl Into<Cow<'static, str>>) -> Error {
        let status = if status == Status::Ok { Status::Failed } else { status };
        Error { status, message: message.into() }
    }

    /// `MOLT_ERR_FAILED` with a message.
    pub fn failed(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Status::Failed, message)
    }

    /// `MOLT_ERR_INVALID_ARG` with a message (bad config, bad input).
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Status::InvalidArg, message)
    }

    /// `MOLT_ERR_UNSUPPORTED` with a message.
    pub fn unsupported(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Status::Unsupported, message)
    }

    /// An error for a raw status a host function returned.
    pub(crate) fn from_host(raw: i32, what: &'static str) -> Error {
        let status = Status::from_raw(raw).unwrap_or(Status::Failed);
        Error { status, message: Cow::Owned(format!("{what} failed: {}", Status::describe(raw))) }
    }

    /// The status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.status.name(), self.message)
    }
}

impl std::error::Error for Error {}

/// The SDK's result type.
pub type Result<T> = core::result::Result<T, Error>;

/// A handler module. Implement it and export it with [`crate::molt_module!`].
///
/// One value of `Self` is the instance of one loaded module version: `init`
/// makes it, every other callback borrows it, `fini` consumes it. Calls for
/// different continuations may run on different workers at once, hence
/// `Sync`.
pub trait Module: Sized + Send + Sync + 'static {
    /// The stable module name (`[a-z0-9_-]`, 1 to 64 characters).
    const NAME: &'static CStr;
    /// The human-readable version.
    const VERSION: &'static CStr;
    /// The monotonic version number (larger is newer).
    const VERSION_NUMBER: u32 = 1;
    /// The schema version of this module's state blocks (0: no state).
    const STATE_SCHEMA: u32 = 0;
    /// `MOLT_MODULE_*` flags.
    const FLAGS: u32 = 0;
    /// `MOLT_HOST_CAP_*` bits the module cannot work without.
    const REQUIRED_HOST_CAPS: u64 = 0;
    /// `MOLT_MOD_CAP_*` bits the module offers.
    const MODULE_CAPS: u64 = 0;
    /// The HTTP hook events the module handles (`MOLT_HOOK_*` bits, ABI
    /// 1.2): the host calls it for those only, so the others cost nothing
    /// per request. 0 (the default): every hook event.
    const HTTP_HOOKS: u64 = 0;
    /// Whether [`Module::migrate`] is implemented (puts it in the descriptor).
    const HAS_MIGRATE: bool = false;
    /// Whether [`Module::adopt`] is implemented (puts it in the descriptor;
    /// upgrade mode needs it).
    const HAS_ADOPT: bool = false;
    /// Whether a panic marks the instance failed, so that every later call
    /// but `END` events and `fini` gets `MOLT_ERR_INSTANCE_FAILED`. On by
    /// default: after a panic the instance's own invariants are unknown.
    const POISON_ON_PANIC: bool = true;

    /// Per-continuation data, owned by the continuation (`()` if none).
    type Cont: Send + 'static;

    /// Set up the instance. Called once per loaded version, first.
    fn init(ctx: &Ctx<'_, Self>, config: &Config<'_>) -> Result<Self>;

    /// Handle one event. `cont` is the continuation's data (`None` for a
    /// continuation the host created for the module). `END` events never
    /// reach here: they go to [`Module::end`]; HTTP and connection events go
    /// to the hooks below. The default ignores the event.
    fn handle_event(&self, ctx: &Ctx<'_, Self>, cont: Option<&mut Self::Cont>, event: &Event<'_>) -> Result<()> {
        let _ = (ctx, cont, event);
        Ok(())
    }

    // HTTP hooks (ABI 1.1), in the order a transaction meets them, each on
    // the transaction's own continuation of the version that was active
    // when its request arrived (docs/proxy.md):
    //
    //   http_request -> http_upstream (when nobody answered) -> http_response -> http_txn_end
    //
    // A hook decides during its call through `txn`; an error fails the
    // request (500) unless the module is `fail_open`.

    /// The request head arrived: read or change it, answer it
    /// ([`Txn::respond`]), or choose the upstream group.
    fn http_request(&self, ctx: &Ctx<'_, Self>, txn: &Txn<'_, '_, Self>) -> Result<()> {
        let _ = (ctx, txn);
        Ok(())
    }

    /// Choose the upstream group ([`Txn::select_upstream`]).
    fn http_upstream(&self, ctx: &Ctx<'_, Self>, txn: &Txn<'_, '_, Self>) -> Result<()> {
        let _ = (ctx, txn);
        Ok(())
    }

    /// The response head (`status`) is about to be sent: read or change its
    /// headers. `by` says who made it: 0 the upstream, 1 a module, 2 the host.
    fn http_response(&self, ctx: &Ctx<'_, Self>, txn: &Txn<'_, '_, Self>, status: u16, by: u64) -> Result<()> {
        let _ = (ctx, txn, status, by);
        Ok(())
    }

    /// The transaction is over: `status` sent (0: none, the client left)
    /// and `body_bytes` of response body.
    fn http_txn_end(&self, ctx: &Ctx<'_, Self>, txn: &Txn<'_, '_, Self>, status: u16, body_bytes: u64) -> Result<()> {
        let _ = (ctx, txn, status, body_bytes);
        Ok(())
    }

    // Connection hooks (ABI 1.1): a [[tcp]] route's accept hooks and
    // handler, and connections opened with [`Ctx::conn_connect`].

    /// Connection `conn` is open: accepted from `peer`, or connected to it
    /// (`connected`). In an accept hook, [`Ctx::conn_close`] rejects it.
    fn conn_open(
        &self,
        ctx: &Ctx<'_, Self>,
        cont: Option<&mut Self::Cont>,
        conn: u64,
        peer: &str,
        connected: bool,
    ) -> Result<()> {
        let _ = (ctx, cont, conn, peer, connected);
        Ok(())
    }

    /// Bytes arrived on `conn` (borrowed for the call).
    fn conn_data(&self, ctx: &Ctx<'_, Self>, cont: Option<&mut Self::Cont>, conn: u64, data: &[u8]) -> Result<()> {
        let _ = (ctx, cont, conn, data);
        Ok(())
    }

    /// `conn` closed: `why` 0 orderly, 1 error or timeout, 2 connect failed.
    fn conn_closed(&self, ctx: &Ctx<'_, Self>, cont: Option<&mut Self::Cont>, conn: u64, why: u64) -> Result<()> {
        let _ = (ctx, cont, conn, why);
        Ok(())
    }

    /// `conn` drained below half its queue after [`Ctx::conn_write`] said it was full.
    fn conn_writable(&self, ctx: &Ctx<'_, Self>, cont: Option<&mut Self::Cont>, conn: u64) -> Result<()> {
        let _ = (ctx, cont, conn);
        Ok(())
    }

    /// The continuation ended (its last event); `data` is its data, dropped
    /// on return unless moved elsewhere. `adopted` is true when a newer
    /// version took over the continuation.
    fn end(&self, ctx: &Ctx<'_, Self>, data: Option<Box<Self::Cont>>, adopted: bool) {
        let _ = (ctx, data, adopted);
    }

    /// Move a state block between schema versions. Called on the version
    /// that knows both schemas: up on a swap, down on a rollback (then set
    /// `MOLT_MOD_CAP_MIGRATE_DOWN`). Needs [`Module::HAS_MIGRATE`].
    fn migrate(ctx: &Ctx<'_, Self>, migration: &mut Migration<'_>) -> Result<()> {
        let _ = (ctx, migration);
        Err(Error::unsupported("this module has no migrate"))
    }

    /// Take over live continuation `ctx.current()` of an older version
    /// `old_version` (upgrade mode), returning this version's data for it.
    /// The old version frees its own data. State that must cross versions
    /// lives in state blocks, keyed by what the module likes (e.g. the id).
    /// Needs [`Module::HAS_ADOPT`].
    fn adopt(&self, ctx: &Ctx<'_, Self>, old_version: u32) -> Result<Option<Box<Self::Cont>>> {
        let _ = (ctx, old_version);
        Err(Error::unsupported("this module has no adopt"))
    }

    /// The version is being replaced: start winding down.
    fn drain(&self, ctx: &Ctx<'_, Self>) -> Result<()> {
        let _ = ctx;
        Ok(())
    }

    /// The last call: release what `init` acquired (dropping `self` does the rest).
    fn fini(self, ctx: &Ctx<'_, Self>) {
        let _ = ctx;
    }
}

/// Export a [`Module`] as a molt module: defines `molt_module_entry_v1` and
/// the static descriptor. Use it once per library.
#[macro_export]
macro_rules! molt_module {
    ($module:ty) => {
        /// The module's entry point (molt ABI v1).
        ///
        /// # Safety
        ///
        /// Called by the molt host only, with the arguments `molt.h` describes:
        /// `host` valid for the call, `desc` writable, `errbuf` writable for
        /// `errbuf_len` bytes.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn molt_module_entry_v1(
            host: *const $crate::ffi::molt_host_info,
            desc: *mut *const $crate::ffi::molt_module_desc,
            errbuf: *mut ::core::ffi::c_char,
            errbuf_len: usize,
        ) -> $crate::ffi::molt_status {
            static DESC: $crate::sdk::StaticDesc = $crate::sdk::StaticDesc::new::<$module>();
            // SAFETY: our caller upholds `entry`'s contract, which is this
            // function's contract (see `# Safety` above).
            unsafe { $crate::sdk::entry(host, desc, errbuf, errbuf_len, &DESC) }
        }
    };
}
