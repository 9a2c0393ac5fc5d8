//! The `repr(C)` mirror of `include/molt.h`, field for field.
//!
//! Names are the C names so that the header and this file read side by side;
//! the header's comments are the normative documentation of each item, and
//! the short docs here point at them. Layouts are asserted at compile time
//! for 64-bit targets below, and checked against the header itself by the
//! drift test.
#![allow(non_camel_case_types)]

use core::ffi::{c_char, c_void};

use crate::layout::{AbiLayout, StructLayout, abi_consts, abi_struct};

/// A status: `MOLT_OK` or a negative `MOLT_ERR_*` code.
pub type molt_status = i32;
/// A continuation id (worker, slot, generation packed by the host); 0 is never valid.
pub type molt_cont_id = u64;
/// A timer id, generation-counted like continuation ids; 0 is never valid.
pub type molt_timer_id = u64;
/// A state block handle.
pub type molt_state_handle = u64;

abi_consts! {
    /// ABI major version (the entry symbol carries it).
    pub const MOLT_ABI_MAJOR: u16 = 1;
    /// ABI minor version of this mirror.
    pub const MOLT_ABI_MINOR: u16 = 2;

    /// Success.
    pub const MOLT_OK: molt_status = 0;
    /// Unspecified failure; the error text says more.
    pub const MOLT_ERR_FAILED: molt_status = -1;
    /// An argument is invalid.
    pub const MOLT_ERR_INVALID_ARG: molt_status = -2;
    /// A handle is stale or unknown.
    pub const MOLT_ERR_STALE: molt_status = -3;
    /// A named thing does not exist.
    pub const MOLT_ERR_NOT_FOUND: molt_status = -4;
    /// Out of memory or out of state-region space.
    pub const MOLT_ERR_NO_MEMORY: molt_status = -5;
    /// A bounded table is full.
    pub const MOLT_ERR_LIMIT: molt_status = -6;
    /// Not supported by this host or module.
    pub const MOLT_ERR_UNSUPPORTED: molt_status = -7;
    /// The callback panicked; the instance is marked failed.
    pub const MOLT_ERR_PANIC: molt_status = -8;
    /// The instance failed earlier and refuses further calls.
    pub const MOLT_ERR_INSTANCE_FAILED: molt_status = -9;
    /// No migration path between two schema versions.
    pub const MOLT_ERR_SCHEMA: molt_status = -10;
    /// Shutting down or draining.
    pub const MOLT_ERR_SHUTDOWN: molt_status = -11;
    /// ABI version or capability mismatch.
    pub const MOLT_ERR_VERSION: molt_status = -12;
    /// Not allowed in this phase.
    pub const MOLT_ERR_PHASE: molt_status = -13;
    /// (1.2) A ctx-taking host function was called from a thread other
    /// than the one running that ctx's callback.
    pub const MOLT_ERR_THREAD: molt_status = -14;

    /// Host capability: continuations.
    pub const MOLT_HOST_CAP_CONT: u64 = 1 << 0;
    /// Host capability: timers.
    pub const MOLT_HOST_CAP_TIMERS: u64 = 1 << 1;
    /// Host capability: state blocks.
    pub const MOLT_HOST_CAP_STATE: u64 = 1 << 2;
    /// Host capability: state survives process restarts.
    pub const MOLT_HOST_CAP_STATE_PERSISTENT: u64 = 1 << 3;
    /// Host capability: user-arg slots.
    pub const MOLT_HOST_CAP_USER_ARGS: u64 = 1 << 4;
    /// Host capability: upgrade mode (adopt).
    pub const MOLT_HOST_CAP_ADOPT: u64 = 1 << 5;

    /// Host capability (1.1): connection I/O.
    pub const MOLT_HOST_CAP_CONN: u64 = 1 << 8;
    /// Host capability (1.1): HTTP hooks.
    pub const MOLT_HOST_CAP_HTTP: u64 = 1 << 16;
    /// Host capability (1.2): posters, for module-owned threads.
    pub const MOLT_HOST_CAP_POST: u64 = 1 << 24;

    /// Module capability: migrate also migrates down.
    pub const MOLT_MOD_CAP_MIGRATE_DOWN: u64 = 1 << 0;
    /// Module capability: may run isolated in a child process.
    pub const MOLT_MOD_CAP_ISOLATABLE: u64 = 1 << 1;

    /// Module flag: never dlclose the library.
    pub const MOLT_MODULE_NEVER_UNLOAD: u32 = 1 << 0;

    /// Event: the continuation was created.
    pub const MOLT_EV_START: u32 = 1;
    /// Event: a message.
    pub const MOLT_EV_MESSAGE: u32 = 2;
    /// Event: a timer fired.
    pub const MOLT_EV_TIMER: u32 = 3;
    /// Event: the version is draining.
    pub const MOLT_EV_DRAIN: u32 = 4;
    /// Event: the last one; free the continuation's data.
    pub const MOLT_EV_END: u32 = 5;

    /// Event (1.1): a connection is open (arg0: 0 accepted, 1 connected).
    pub const MOLT_EV_CONN_OPEN: u32 = 256;
    /// Event (1.1): bytes arrived.
    pub const MOLT_EV_CONN_DATA: u32 = 257;
    /// Event (1.1): the connection closed (arg0: 0 orderly, 1 error, 2 connect failed).
    pub const MOLT_EV_CONN_CLOSED: u32 = 258;
    /// Event (1.1): queued output drained below half the limit.
    pub const MOLT_EV_CONN_WRITABLE: u32 = 259;
    /// Event (1.1): the request head arrived.
    pub const MOLT_EV_HTTP_REQUEST: u32 = 512;
    /// Event (1.1): choose the upstream.
    pub const MOLT_EV_HTTP_UPSTREAM: u32 = 513;
    /// Event (1.1): the response head is about to be sent.
    pub const MOLT_EV_HTTP_RESPONSE: u32 = 514;
    /// Event (1.1): the transaction is over.
    pub const MOLT_EV_HTTP_TXN_END: u32 = 515;

    /// http_get item (1.1): the method.
    pub const MOLT_HTTP_ITEM_METHOD: u32 = 1;
    /// http_get item (1.1): the target as it will be sent.
    pub const MOLT_HTTP_ITEM_TARGET: u32 = 2;
    /// http_get item (1.1): the target's path.
    pub const MOLT_HTTP_ITEM_PATH: u32 = 3;
    /// http_get item (1.1): the Host value.
    pub const MOLT_HTTP_ITEM_HOST: u32 = 4;
    /// http_get item (1.1): the client's address.
    pub const MOLT_HTTP_ITEM_CLIENT_ADDR: u32 = 5;
    /// http_get item (1.1): the route's name.
    pub const MOLT_HTTP_ITEM_ROUTE: u32 = 6;
    /// http_get item (1.1): the upstream group chosen so far.
    pub const MOLT_HTTP_ITEM_UPSTREAM_GROUP: u32 = 7;
    /// http_get item (1.1): the upstream server that answered.
    pub const MOLT_HTTP_ITEM_UPSTREAM_ADDR: u32 = 8;
    /// Header functions (1.1): the request.
    pub const MOLT_HTTP_MSG_REQUEST: u32 = 1;
    /// Header functions (1.1): the response.
    pub const MOLT_HTTP_MSG_RESPONSE: u32 = 2;
    /// http_header_set mode (1.1): replace all fields of the name with one.
    pub const MOLT_HDR_SET: u32 = 1;
    /// http_header_set mode (1.1): append one more field.
    pub const MOLT_HDR_ADD: u32 = 2;
    /// http_header_set mode (1.1): remove all fields of the name.
    pub const MOLT_HDR_REMOVE: u32 = 3;

    /// Event flag: ended because a newer version adopted the continuation.
    pub const MOLT_EVF_ADOPTED: u32 = 1 << 0;
    /// Event flag: ended by force (deadline or shutdown).
    pub const MOLT_EVF_FORCED: u32 = 1 << 1;
    /// Event flag (1.2): a message posted from a module-owned thread.
    pub const MOLT_EVF_POSTED: u32 = 1 << 2;

    /// http_hooks bit (1.2): the module handles MOLT_EV_HTTP_REQUEST.
    pub const MOLT_HOOK_REQUEST: u64 = 1 << 0;
    /// http_hooks bit (1.2): the module handles MOLT_EV_HTTP_UPSTREAM.
    pub const MOLT_HOOK_UPSTREAM: u64 = 1 << 1;
    /// http_hooks bit (1.2): the module handles MOLT_EV_HTTP_RESPONSE.
    pub const MOLT_HOOK_RESPONSE: u64 = 1 << 2;
    /// http_hooks bit (1.2): the module handles MOLT_EV_HTTP_TXN_END.
    pub const MOLT_HOOK_TXN_END: u64 = 1 << 3;

    /// Log level: error.
    pub const MOLT_LOG_ERROR: u32 = 1;
    /// Log level: warning.
    pub const MOLT_LOG_WARN: u32 = 2;
    /// Log level: info.
    pub const MOLT_LOG_INFO: u32 = 3;
    /// Log level: debug.
    pub const MOLT_LOG_DEBUG: u32 = 4;
    /// Log level: trace.
    pub const MOLT_LOG_TRACE: u32 = 5;

    /// Migration direction: older schema to newer.
    pub const MOLT_MIGRATE_UP: u32 = 1;
    /// Migration direction: newer schema to older (rollback).
    pub const MOLT_MIGRATE_DOWN: u32 = 2;
}

/// A handler (`molt_handler_fn`).
pub type molt_handler_fn =
    unsafe extern "C" fn(ctx: *const molt_ctx, data: *mut c_void, ev: *const molt_event) -> molt_status;

/// The entry symbol's type (`molt_module_entry_fn`).
pub type molt_module_entry_fn = unsafe extern "C" fn(
    host: *const molt_host_info,
    desc: *mut *const molt_module_desc,
    errbuf: *mut c_char,
    errbuf_len: usize,
) -> molt_status;

/// The entry symbol's name, NUL-terminated, for `dlsym`.
pub const MOLT_ENTRY_SYMBOL: &[u8] = b"molt_module_entry_v1\0";

abi_struct! {
    /// One event delivered to a continuation (`molt_event`).
    pub struct molt_event {
        /// `sizeof` as the host knew it.
        pub size: u32,
        /// Host ABI major.
        pub abi_major: u16,
        /// Host ABI minor.
        pub abi_minor: u16,
        /// `MOLT_EV_*`.
        pub kind: u32,
        /// `MOLT_EVF_*`.
        pub flags: u32,
        /// The receiving continuation.
        pub target: molt_cont_id,
        /// The sender, 0 for the host.
        pub source: molt_cont_id,
        /// The sender's tag.
        pub tag: u64,
        /// Payload, borrowed.
        pub data: *const u8,
        /// Payload length.
        pub len: usize,
        /// Connection or transaction handle (later minors).
        pub handle: u64,
        /// Kind-specific argument.
        pub arg0: u64,
        /// Kind-specific argument.
        pub arg1: u64,
    }
}

abi_struct! {
    /// The context of one call into a module (`molt_ctx`).
    pub struct molt_ctx {
        /// `sizeof` as the host knew it.
        pub size: u32,
        /// Host ABI major.
        pub abi_major: u16,
        /// Host ABI minor.
        pub abi_minor: u16,
        /// The host function table.
        pub api: *const molt_host_api,
        /// What init stored.
        pub instance: *mut c_void,
        /// The continuation being handled, else 0.
        pub self_: molt_cont_id,
        /// The worker running the call.
        pub worker: u32,
        /// Reserved, 0.
        pub reserved: u32,
        /// The host's own data. Opaque to modules.
        pub host: *mut c_void,
    }
}

abi_struct! {
    /// A state block as `state_open` reports it (`molt_state_block`).
    pub struct molt_state_block {
        /// `sizeof` as the module knew it.
        pub size: u32,
        /// Module ABI major.
        pub abi_major: u16,
        /// Module ABI minor.
        pub abi_minor: u16,
        /// The block's handle.
        pub handle: molt_state_handle,
        /// Its length in bytes.
        pub len: u64,
        /// Its schema version.
        pub schema: u32,
        /// 1 when this call created it.
        pub created: u32,
    }
}

abi_struct! {
    /// The host function table (`molt_host_api`).
    pub struct molt_host_api {
        /// `sizeof` as the host knew it.
        pub size: u32,
        /// Host ABI major.
        pub abi_major: u16,
        /// Host ABI minor.
        pub abi_minor: u16,
        /// Write a log line.
        pub log: Option<unsafe extern "C" fn(ctx: *const molt_ctx, level: u32, msg: *const c_char, len: usize)>,
        /// Hand the host the current failure's text; returns `status`.
        pub set_error: Option<
            unsafe extern "C" fn(ctx: *const molt_ctx, status: molt_status, msg: *const c_char, len: usize) -> molt_status,
        >,
        /// Create a continuation.
        pub cont_create: Option<
            unsafe extern "C" fn(
                ctx: *const molt_ctx,
                handler: Option<molt_handler_fn>,
                data: *mut c_void,
                worker: u32,
                tag: u64,
                out: *mut molt_cont_id,
            ) -> molt_status,
        >,
        /// End a continuation.
        pub cont_destroy: Option<unsafe extern "C" fn(ctx: *const molt_ctx, id: molt_cont_id) -> molt_status>,
        /// Send a message.
        pub cont_send: Option<
            unsafe extern "C" fn(
                ctx: *const molt_ctx,
                target: molt_cont_id,
                tag: u64,
                data: *const u8,
                len: usize,
            ) -> molt_status,
        >,
        /// Schedule a timer.
        pub timer_schedule: Option<
            unsafe extern "C" fn(
                ctx: *const molt_ctx,
                target: molt_cont_id,
                delay_ns: u64,
                tag: u64,
                out: *mut molt_timer_id,
            ) -> molt_status,
        >,
        /// Cancel a timer.
        pub timer_cancel: Option<unsafe extern "C" fn(ctx: *const molt_ctx, id: molt_timer_id) -> molt_status>,
        /// Open or create a state block.
        pub state_open: Option<
            unsafe extern "C" fn(
                ctx: *const molt_ctx,
                name: *const c_char,
                name_len: usize,
                schema: u32,
                min_len: u64,
                out: *mut molt_state_block,
            ) -> molt_status,
        >,
        /// The address of a state block.
        pub state_ptr: Option<
            unsafe extern "C" fn(ctx: *const molt_ctx, handle: molt_state_handle, out: *mut *mut c_void) -> molt_status,
        >,
        /// Reserve a user-arg slot by name.
        pub user_arg_reserve: Option<
            unsafe extern "C" fn(ctx: *const molt_ctx, name: *const c_char, name_len: usize, out: *mut u32) -> molt_status,
        >,
        /// Store a continuation's user-arg value.
        pub user_arg_set: Option<
            unsafe extern "C" fn(ctx: *const molt_ctx, id: molt_cont_id, slot: u32, value: u64) -> molt_status,
        >,
        /// Read a continuation's user-arg value.
        pub user_arg_get: Option<
            unsafe extern "C" fn(ctx: *const molt_ctx, id: molt_cont_id, slot: u32, out: *mut u64) -> molt_status,
        >,
        /// (1.1) Queue bytes to write to a connection.
        pub conn_write:
            Option<unsafe extern "C" fn(ctx: *const molt_ctx, conn: u64, data: *const u8, len: usize) -> molt_status>,
        /// (1.1) Close a connection (reject it in an accept hook).
        pub conn_close: Option<unsafe extern "C" fn(ctx: *const molt_ctx, conn: u64) -> molt_status>,
        /// (1.1) Connect to an address; the connection reports to the caller.
        pub conn_connect: Option<
            unsafe extern "C" fn(ctx: *const molt_ctx, addr: *const c_char, addr_len: usize, out: *mut u64) -> molt_status,
        >,
        /// (1.1) Copy an item of a transaction.
        pub http_get: Option<
            unsafe extern "C" fn(
                ctx: *const molt_ctx,
                txn: u64,
                item: u32,
                buf: *mut c_char,
                cap: usize,
                out_len: *mut usize,
            ) -> molt_status,
        >,
        /// (1.1) Copy a header field's value.
        pub http_header_get: Option<
            unsafe extern "C" fn(
                ctx: *const molt_ctx,
                txn: u64,
                msg: u32,
                name: *const c_char,
                name_len: usize,
                index: u32,
                buf: *mut c_char,
                cap: usize,
                out_len: *mut usize,
            ) -> molt_status,
        >,
        /// (1.1) Set, add or remove header fields.
        pub http_header_set: Option<
            unsafe extern "C" fn(
                ctx: *const molt_ctx,
                txn: u64,
                msg: u32,
                mode: u32,
                name: *const c_char,
                name_len: usize,
                value: *const c_char,
                value_len: usize,
            ) -> molt_status,
        >,
        /// (1.1) Rewrite the request target.
        pub http_set_target: Option<
            unsafe extern "C" fn(ctx: *const molt_ctx, txn: u64, target: *const c_char, len: usize) -> molt_status,
        >,
        /// (1.1) Answer the request here.
        pub http_respond: Option<
            unsafe extern "C" fn(
                ctx: *const molt_ctx,
                txn: u64,
                status: u32,
                content_type: *const c_char,
                content_type_len: usize,
                body: *const u8,
                body_len: usize,
            ) -> molt_status,
        >,
        /// (1.1) Choose the upstream group.
        pub http_upstream_select: Option<
            unsafe extern "C" fn(ctx: *const molt_ctx, txn: u64, group: *const c_char, len: usize) -> molt_status,
        >,
        /// (1.2) Open a poster: the one handle a module-owned thread may use.
        pub poster_open: Option<unsafe extern "C" fn(ctx: *const molt_ctx, out: *mut *mut molt_poster) -> molt_status>,
        /// (1.2) Post a message to a continuation, from any thread.
        pub post: Option<
            unsafe extern "C" fn(
                poster: *mut molt_poster,
                target: molt_cont_id,
                tag: u64,
                data: *const u8,
                len: usize,
            ) -> molt_status,
        >,
        /// (1.2) Close a poster (once, when no thread uses it any more).
        pub poster_close: Option<unsafe extern "C" fn(poster: *mut molt_poster)>,
        /// (1.2) From init: the HTTP hook events this module handles.
        pub http_hooks: Option<unsafe extern "C" fn(ctx: *const molt_ctx, hooks: u64) -> molt_status>,
    }
}

/// A poster (`molt_poster`): opaque, the host's.
#[repr(C)]
pub struct molt_poster {
    _private: [u8; 0],
}

abi_struct! {
    /// What the host tells a module at load (`molt_host_info`).
    pub struct molt_host_info {
        /// `sizeof` as the host knew it.
        pub size: u32,
        /// Host ABI major.
        pub abi_major: u16,
        /// Host ABI minor.
        pub abi_minor: u16,
        /// `MOLT_HOST_CAP_*` bits.
        pub host_caps: u64,
        /// The host's name.
        pub host_name: *const c_char,
        /// The host's version.
        pub host_version: *const c_char,
        /// The host function table.
        pub api: *const molt_host_api,
    }
}

abi_struct! {
    /// One config entry (`molt_config_entry`).
    pub struct molt_config_entry {
        /// The key.
        pub key: *const c_char,
        /// The value.
        pub value: *const c_char,
    }
}

abi_struct! {
    /// What init receives (`molt_init_args`).
    pub struct molt_init_args {
        /// `sizeof` as the host knew it.
        pub size: u32,
        /// Host ABI major.
        pub abi_major: u16,
        /// Host ABI minor.
        pub abi_minor: u16,
        /// Config entries.
        pub config: *const molt_config_entry,
        /// Number of config entries.
        pub config_len: usize,
        /// The replaced version's number, 0 when none.
        pub previous_version: u32,
        /// Reserved, 0.
        pub reserved: u32,
    }
}

abi_struct! {
    /// One block migration (`molt_migration`).
    pub struct molt_migration {
        /// `sizeof` as the host knew it.
        pub size: u32,
        /// Host ABI major.
        pub abi_major: u16,
        /// Host ABI minor.
        pub abi_minor: u16,
        /// `MOLT_MIGRATE_UP` or `MOLT_MIGRATE_DOWN`.
        pub direction: u32,
        /// Schema of src.
        pub from_schema: u32,
        /// Schema to write into dst.
        pub to_schema: u32,
        /// Reserved, 0.
        pub reserved: u32,
        /// The block's name.
        pub block_name: *const c_char,
        /// The old block.
        pub src: *const c_void,
        /// Length of src.
        pub src_len: u64,
        /// The new block.
        pub dst: *mut c_void,
        /// Length of dst.
        pub dst_len: u64,
    }
}

abi_struct! {
    /// The module descriptor (`molt_module_desc`).
    pub struct molt_module_desc {
        /// `sizeof` as the module knew it.
        pub size: u32,
        /// Module ABI major.
        pub abi_major: u16,
        /// Module ABI minor.
        pub abi_minor: u16,
        /// Stable module name.
        pub name: *const c_char,
        /// Human-readable version.
        pub version: *const c_char,
        /// Monotonic version number.
        pub version_number: u32,
        /// State schema version.
        pub state_schema: u32,
        /// `MOLT_MODULE_*` flags.
        pub flags: u32,
        /// Reserved, 0.
        pub reserved: u32,
        /// Host capabilities required.
        pub required_host_caps: u64,
        /// Module capabilities offered.
        pub module_caps: u64,
        /// Required: set up the instance.
        pub init: Option<
            unsafe extern "C" fn(ctx: *const molt_ctx, args: *const molt_init_args, instance: *mut *mut c_void) -> molt_status,
        >,
        /// Required: handle one event.
        pub handle_event: Option<molt_handler_fn>,
        /// Optional: migrate a state block.
        pub migrate: Option<unsafe extern "C" fn(ctx: *const molt_ctx, m: *const molt_migration) -> molt_status>,
        /// Optional: take over a continuation of an older version.
        pub adopt: Option<
            unsafe extern "C" fn(
                ctx: *const molt_ctx,
                old_data: *mut c_void,
                old_version: u32,
                new_data: *mut *mut c_void,
                new_handler: *mut Option<molt_handler_fn>,
            ) -> molt_status,
        >,
        /// Optional: start winding down.
        pub drain: Option<unsafe extern "C" fn(ctx: *const molt_ctx) -> molt_status>,
        /// Optional: last call into the instance.
        pub fini: Option<unsafe extern "C" fn(ctx: *const molt_ctx)>,
    }
}

/// Every mirrored struct, for the drift test.
pub const STRUCTS: &[StructLayout] = &[
    molt_event::LAYOUT,
    molt_ctx::LAYOUT,
    molt_state_block::LAYOUT,
    molt_host_api::LAYOUT,
    molt_host_info::LAYOUT,
    molt_config_entry::LAYOUT,
    molt_init_args::LAYOUT,
    molt_migration::LAYOUT,
    molt_module_desc::LAYOUT,
];

/// The `size` a v1.2 writer puts in the structs 1.2 grew.
pub mod v1_2 {
    use super::*;
    /// `sizeof(molt_host_api)` in ABI 1.2 (25 entries).
    pub const HOST_API_SIZE: usize = core::mem::size_of::<molt_host_api>();
}

/// The `size` a v1.1 writer puts in the structs 1.1 grew.
pub mod v1_1 {
    /// `sizeof(molt_host_api)` in ABI 1.1 (21 entries).
    pub const HOST_API_SIZE: usize = 8 + 21 * core::mem::size_of::<usize>();
}

/// The `size` a v1.0 writer puts in each struct: a reader accepts any size at
/// least this large (later minors append).
pub mod v1_0 {
    use super::*;
    /// `sizeof(molt_event)` in ABI 1.0.
    pub const EVENT_SIZE: usize = core::mem::size_of::<molt_event>();
    /// `sizeof(molt_ctx)` in ABI 1.0.
    pub const CTX_SIZE: usize = core::mem::size_of::<molt_ctx>();
    /// `sizeof(molt_host_api)` in ABI 1.0 (12 entries).
    pub const HOST_API_SIZE: usize = 8 + 12 * core::mem::size_of::<usize>();
    /// `sizeof(molt_host_info)` in ABI 1.0.
    pub const HOST_INFO_SIZE: usize = core::mem::size_of::<molt_host_info>();
    /// `sizeof(molt_module_desc)` in ABI 1.0.
    pub const MODULE_DESC_SIZE: usize = core::mem::size_of::<molt_module_desc>();
    /// `sizeof(molt_state_block)` in ABI 1.0.
    pub const STATE_BLOCK_SIZE: usize = core::mem::size_of::<molt_state_block>();
    /// `sizeof(molt_init_args)` in ABI 1.0.
    pub const INIT_ARGS_SIZE: usize = core::mem::size_of::<molt_init_args>();
    /// `sizeof(molt_migration)` in ABI 1.0.
    pub const MIGRATION_SIZE: usize = core::mem::size_of::<molt_migration>();
}

// Compile-time layout of ABI 1.0 on 64-bit targets (LP64: Linux x86_64 and
// aarch64). These numbers are the ABI: changing one breaks every built
// module, so a change here must be an append in a new minor.
#[cfg(target_pointer_width = "64")]
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<molt_event>() == 80);
    assert!(offset_of!(molt_event, target) == 16);
    assert!(offset_of!(molt_event, data) == 40);
    assert!(offset_of!(molt_event, arg1) == 72);
    assert!(size_of::<molt_ctx>() == 48);
    assert!(offset_of!(molt_ctx, self_) == 24);
    assert!(offset_of!(molt_ctx, host) == 40);
    assert!(size_of::<molt_state_block>() == 32);
    assert!(size_of::<molt_host_api>() == 8 + 25 * 8);
    assert!(v1_1::HOST_API_SIZE == 176);
    assert!(offset_of!(molt_host_api, poster_open) == 176);
    assert!(offset_of!(molt_host_api, log) == 8);
    assert!(offset_of!(molt_host_api, user_arg_get) == 96);
    assert!(offset_of!(molt_host_api, conn_write) == 104);
    assert!(offset_of!(molt_host_api, http_upstream_select) == 168);
    assert!(v1_0::HOST_API_SIZE == 104);
    assert!(size_of::<molt_host_info>() == 40);
    assert!(size_of::<molt_config_entry>() == 16);
    assert!(size_of::<molt_init_args>() == 32);
    assert!(size_of::<molt_migration>() == 64);
    assert!(offset_of!(molt_migration, block_name) == 24);
    assert!(size_of::<molt_module_desc>() == 104);
    assert!(offset_of!(molt_module_desc, init) == 56);
    assert!(offset_of!(molt_module_desc, fini) == 96);
};

/// Whether a struct whose writer set `size` holds the field at `offset` of
/// `len` bytes: the reader-side check of rule 2 (`MOLT_HAS_FIELD`).
#[inline]
pub const fn has_field(size: u32, offset: usize, len: usize) -> bool {
    size as usize >= offset + len
}

/// Rust's `MOLT_API_HAS`: `Some(entry)` when the host table is large enough
/// to hold the entry and the entry is set.
///
/// ```
/// # use molt_abi::{api_get, ffi::molt_host_api};
/// fn can_log(api: &molt_host_api) -> bool {
///     api_get!(api, log).is_some()
/// }
/// ```
#[macro_export]
macro_rules! api_get {
    ($api:expr, $field:ident) => {{
        let api: &$crate::ffi::molt_host_api = $api;
        if $crate::ffi::has_field(
            api.size,
            ::core::mem::offset_of!($crate::ffi::molt_host_api, $field),
            ::core::mem::size_of_val(&api.$field),
        ) {
            api.$field
        } else {
            None
        }
    }};
}
