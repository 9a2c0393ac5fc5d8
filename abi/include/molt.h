/*
 * molt.h -- the molt module ABI, version 1.2.
 *
 * This header is the normative contract between the molt runtime (the host)
 * and a handler module (a shared library). A C module needs nothing else.
 * The Rust crate molt-abi mirrors every type here; a test fails when the two
 * drift apart.
 *
 * Rules that hold for the whole ABI:
 *
 *  1. One exported symbol. A module exports molt_module_entry_v1 and nothing
 *     the host needs besides. It does no work in constructors. It links no
 *     host symbol: everything the host offers comes through molt_host_api.
 *
 *  2. Versioned structs. Every struct that crosses the boundary starts with
 *     `uint32_t size` (sizeof the struct as its writer knew it) followed by
 *     the ABI major and minor of the writer. Minor versions only append
 *     fields. Before reading a field that a later minor added, check it is
 *     inside `size` with MOLT_API_HAS / MOLT_HAS_FIELD. A different major is
 *     a different ABI: the host refuses the module, with the reason in words.
 *
 *  3. Memory. Whoever allocates frees. Pointers the host hands to a callback
 *     (the ctx, the event, its payload, config strings, migration buffers
 *     excepted as noted) are borrowed for that call only: copy what you keep.
 *     Data a module passes to the host (messages, error text, log lines,
 *     names) is copied by the host before the call returns. Continuation
 *     data (`void *data`) is the module's: it allocates it and frees it when
 *     the continuation ends (MOLT_EV_END). Persistent data lives in state
 *     blocks, as offsets, never pointers: a block outlives the module code
 *     that wrote it.
 *
 *  4. Handles are integers. Continuation and timer ids carry a generation
 *     counter: a stale id is an error status (MOLT_ERR_STALE), never a
 *     use-after-free. Id 0 is never valid.
 *
 *  5. Status codes. 0 is success; failures are the negative MOLT_ERR_*
 *     values below, an append-only list. A callback that fails may first
 *     hand its error text to the host with set_error (copied).
 *
 *  6. No unwinding across the boundary. C++ exceptions and Rust panics must
 *     be caught inside the module (the Rust SDK does this for you).
 *
 *  7. Threads. The host calls a module from its worker threads. Calls for
 *     one continuation never overlap (actor semantics); calls for different
 *     continuations of one module may run at the same time on different
 *     workers. init, migrate and fini are never concurrent with any other
 *     call into the same instance.
 *
 *  8. Host functions run on the callback's thread. A host function taking
 *     a ctx may only be called during that ctx's callback, from the thread
 *     running it. A call from any other thread (one the module started,
 *     say) is refused with MOLT_ERR_THREAD (1.2) and does nothing. A
 *     module-owned thread talks to continuations only through a poster
 *     (1.2: poster_open in a callback, then post from any thread, and
 *     poster_close once no thread uses it).
 *
 *  9. Handlers and user args. A handler given to cont_create must be the
 *     module's own code (it is called with the module's instance, and the
 *     library stays loaded only while the module's version does). User-arg
 *     values are integers to the host: the host never dereferences or frees
 *     them, and they do not follow a continuation to another module.
 */
#ifndef MOLT_H
#define MOLT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Versions                                                                  */
/* ------------------------------------------------------------------------ */

/** ABI major version. The entry symbol carries it: molt_module_entry_v1. */
#define MOLT_ABI_MAJOR 1
/** ABI minor version of this header. Minors only append fields and constants. */
#define MOLT_ABI_MINOR 2

/* ------------------------------------------------------------------------ */
/* Status codes (append-only)                                                */
/* ------------------------------------------------------------------------ */

/** A status: MOLT_OK or one of the negative MOLT_ERR_* codes. */
typedef int32_t molt_status;

/** Success. */
#define MOLT_OK 0
/** Unspecified failure; the error text says more. */
#define MOLT_ERR_FAILED (-1)
/** An argument is invalid (NULL where a value is required, bad length, ...). */
#define MOLT_ERR_INVALID_ARG (-2)
/** A handle (continuation id, timer id, state handle) is stale or unknown. */
#define MOLT_ERR_STALE (-3)
/** A named thing (state block, user-arg slot, config key) does not exist. */
#define MOLT_ERR_NOT_FOUND (-4)
/** Out of memory, or out of space in the state region. */
#define MOLT_ERR_NO_MEMORY (-5)
/** A bounded table is full (user-arg slots, timers, continuations). */
#define MOLT_ERR_LIMIT (-6)
/** The operation is not supported by this host or this module. */
#define MOLT_ERR_UNSUPPORTED (-7)
/** The callback panicked (Rust) or threw (C++); the instance is marked failed. */
#define MOLT_ERR_PANIC (-8)
/** The instance failed earlier (it panicked) and refuses further calls. */
#define MOLT_ERR_INSTANCE_FAILED (-9)
/** A state schema mismatch: no migration path between two schema versions. */
#define MOLT_ERR_SCHEMA (-10)
/** The host or the target is shutting down or draining; try elsewhere. */
#define MOLT_ERR_SHUTDOWN (-11)
/** An ABI version or capability mismatch found during the handshake. */
#define MOLT_ERR_VERSION (-12)
/** The call is not allowed in this phase (e.g. creating work during fini). */
#define MOLT_ERR_PHASE (-13)
/** (1.2) A host function taking a ctx was called from a thread other than
 *  the one running that ctx's callback (rule 8). Nothing was done. */
#define MOLT_ERR_THREAD (-14)

/* ------------------------------------------------------------------------ */
/* Capabilities                                                              */
/* ------------------------------------------------------------------------ */

/*
 * Host capability bits (molt_host_info.host_caps): what the host provides.
 * A module lists the ones it cannot work without in
 * molt_module_desc.required_host_caps; the host refuses a module that
 * requires a bit it lacks, naming the bit. Bits not defined here are
 * reserved for later minors.
 */
/** Continuations: create, destroy, send (same worker and cross-worker). */
#define MOLT_HOST_CAP_CONT ((uint64_t)1 << 0)
/** Timers: schedule and cancel. */
#define MOLT_HOST_CAP_TIMERS ((uint64_t)1 << 1)
/** State blocks in the runtime-owned region. */
#define MOLT_HOST_CAP_STATE ((uint64_t)1 << 2)
/** Persistent state: the region survives process restarts (a file, not memory). */
#define MOLT_HOST_CAP_STATE_PERSISTENT ((uint64_t)1 << 3)
/** User-arg slots reserved by name. */
#define MOLT_HOST_CAP_USER_ARGS ((uint64_t)1 << 4)
/** Upgrade mode: live continuations are handed to a new version's adopt. */
#define MOLT_HOST_CAP_ADOPT ((uint64_t)1 << 5)
/* Bits 8..15 are for connection I/O, 16..23 for HTTP hooks. */
/** (1.1) Connection I/O: MOLT_EV_CONN_* events, conn_write, conn_close,
 *  conn_connect. (The peer's address comes as the data of
 *  MOLT_EV_CONN_OPEN.) */
#define MOLT_HOST_CAP_CONN ((uint64_t)1 << 8)
/** (1.1) HTTP hooks: MOLT_EV_HTTP_* events and the http_* functions. */
#define MOLT_HOST_CAP_HTTP ((uint64_t)1 << 16)
/** (1.2) Posters: poster_open, post and poster_close, the thread-safe way
 *  for a module-owned thread to message a continuation. */
#define MOLT_HOST_CAP_POST ((uint64_t)1 << 24)

/*
 * Module capability bits (molt_module_desc.module_caps): what the module
 * offers beyond the required callbacks.
 */
/** migrate can also migrate down (newer schema to older), so rollback across
 *  a schema change is possible. */
#define MOLT_MOD_CAP_MIGRATE_DOWN ((uint64_t)1 << 0)
/** The module keeps no process-global state outside state blocks and may run
 *  isolated in a child process. */
#define MOLT_MOD_CAP_ISOLATABLE ((uint64_t)1 << 1)

/* ------------------------------------------------------------------------ */
/* Module flags                                                              */
/* ------------------------------------------------------------------------ */

/** Never dlclose this module's library (it pins itself, e.g. it registered
 *  thread-local destructors or atexit handlers). Old versions are still
 *  finalised and drained; only the unmap is skipped, and status says so. */
#define MOLT_MODULE_NEVER_UNLOAD ((uint32_t)1 << 0)

/* ------------------------------------------------------------------------ */
/* Handles                                                                   */
/* ------------------------------------------------------------------------ */

/** A continuation id: worker, slot and generation packed by the host. 0 is
 *  never a valid id. Treat it as opaque. */
typedef uint64_t molt_cont_id;
/** A timer id, with a generation counter like continuation ids. 0 is never valid. */
typedef uint64_t molt_timer_id;
/** A state block handle (not a pointer): stable across the block's life. */
typedef uint64_t molt_state_handle;

/* ------------------------------------------------------------------------ */
/* Events                                                                    */
/* ------------------------------------------------------------------------ */

/*
 * Event kinds. Ranges: 1..255 core, 256..511 connection I/O (1.1),
 * 512..767 HTTP hooks (1.1). A module must ignore (return MOLT_OK
 * for) kinds it does not know: new kinds only arrive after the module asked
 * for them, but ignoring unknown kinds keeps old modules safe.
 */
/** The continuation was just created; `tag` is what the creator passed. */
#define MOLT_EV_START 1u
/** A message from another continuation (or from the host when source is 0):
 *  `tag` and `data`/`len` are the sender's. */
#define MOLT_EV_MESSAGE 2u
/** A timer fired: `tag` is the tag given to timer_schedule, `arg0` the timer id. */
#define MOLT_EV_TIMER 3u
/** The module version is draining: finish and end this continuation soon.
 *  `arg0` is the drain deadline in nanoseconds from now (0: none). */
#define MOLT_EV_DRAIN 4u
/** The last event a continuation receives, exactly once, whoever ended it:
 *  free its data. The id is stale once the handler returns. With
 *  MOLT_EVF_ADOPTED the continuation lives on in a newer version (which did
 *  not take over this data pointer). */
#define MOLT_EV_END 5u

/*
 * (1.1) Connection events. A [[tcp]] listener with a `handler` module gives
 * each accepted connection its own continuation of that module's active
 * version (created by the host: no MOLT_EV_START, data NULL); a listener
 * with `modules` (accept hooks) calls each for MOLT_EV_CONN_OPEN only, and
 * a module that calls conn_close there rejects the connection. A
 * connection a module opened with conn_connect reports to the continuation
 * that opened it. `handle` is the connection.
 */
/** A connection is open: accepted (arg0 = 0) or connected (arg0 = 1).
 *  data/len: the peer address as text ("127.0.0.1:5555"). */
#define MOLT_EV_CONN_OPEN 256u
/** Bytes arrived: data/len, borrowed for the call (the host's read buffer). */
#define MOLT_EV_CONN_DATA 257u
/** The connection is closed and its handle stale: arg0 = 0 after an
 *  orderly close (either side), 1 after an error or a timeout; for a
 *  conn_connect that failed, 2. A handler continuation is ended after it. */
#define MOLT_EV_CONN_CLOSED 258u
/** Bytes queued by conn_write drained below half the limit (after
 *  conn_write returned MOLT_ERR_LIMIT). */
#define MOLT_EV_CONN_WRITABLE 259u

/*
 * (1.1) HTTP hook events. A route's module chain is called at each hook in
 * the order the route lists the modules. For every request the host
 * creates one continuation per module of the chain, of the module's version
 * active when the request head arrived (no MOLT_EV_START, data NULL), so a
 * transaction that began before a swap finishes on the old version. Its
 * events are MOLT_EV_HTTP_REQUEST, then MOLT_EV_HTTP_UPSTREAM (when no
 * module answered), MOLT_EV_HTTP_RESPONSE, MOLT_EV_HTTP_TXN_END, then
 * MOLT_EV_END. `handle` is the transaction. Hooks are synchronous: what a
 * module decides with the http_* functions during the call takes effect
 * when it returns. A hook that fails (returns an error, panics) fails the
 * request with 500, unless the module's failure_policy (a setting of its
 * [[modules]] entry in the config) is "fail_open": then the module is
 * skipped for the rest of the transaction.
 */
/** The request head arrived: read or change request headers and target,
 *  answer with http_respond, or choose the upstream group. */
#define MOLT_EV_HTTP_REQUEST 512u
/** Choose the upstream: http_upstream_select (after every REQUEST hook). */
#define MOLT_EV_HTTP_UPSTREAM 513u
/** The response head is about to be sent: read or change response
 *  headers. arg0 = status; arg1 = 1 when a module answered, 2 when the
 *  host made the response (an error), 0 for an upstream response. */
#define MOLT_EV_HTTP_RESPONSE 514u
/** The transaction is over. arg0 = status sent (0: none, the client left);
 *  arg1 = response body bytes sent. */
#define MOLT_EV_HTTP_TXN_END 515u

/** Event flag: the END is because a newer version adopted the continuation. */
#define MOLT_EVF_ADOPTED ((uint32_t)1 << 0)
/** Event flag: the END is forced (drain deadline passed, or shutdown). */
#define MOLT_EVF_FORCED ((uint32_t)1 << 1)
/** Event flag (1.2): a MOLT_EV_MESSAGE posted from a module-owned thread
 *  (source is 0). */
#define MOLT_EVF_POSTED ((uint32_t)1 << 2)

/** One event delivered to a continuation. Borrowed for the call. */
typedef struct molt_event {
    /** sizeof(molt_event) as the host knew it. */
    uint32_t size;
    /** ABI major of the host that wrote it. */
    uint16_t abi_major;
    /** ABI minor of the host that wrote it. */
    uint16_t abi_minor;
    /** One of MOLT_EV_*. */
    uint32_t kind;
    /** MOLT_EVF_* bits. */
    uint32_t flags;
    /** The continuation receiving the event. */
    molt_cont_id target;
    /** The sending continuation, or 0 when the host sent it. */
    molt_cont_id source;
    /** The sender's tag (message type, timer tag, start tag). */
    uint64_t tag;
    /** Payload, borrowed for the call; NULL when len is 0. */
    const uint8_t *data;
    /** Payload length in bytes. */
    size_t len;
    /** Kind-specific handle: the connection or transaction for I/O and HTTP
     *  kinds (1.1), 0 otherwise. */
    uint64_t handle;
    /** Kind-specific argument (see each kind). */
    uint64_t arg0;
    /** Kind-specific argument (see each kind). */
    uint64_t arg1;
} molt_event;

/* ------------------------------------------------------------------------ */
/* Call context                                                              */
/* ------------------------------------------------------------------------ */

struct molt_host_api;

/** (1.2) A poster: opaque, the host's (see poster_open). */
typedef struct molt_poster molt_poster;

/**
 * The context of one call into a module. The host builds it for every call
 * and passes it first; the module passes it back to every host function.
 * Borrowed for the call; read-only for the module. Everything the module
 * creates through it (continuations, timers) is charged to the module
 * version the call is for.
 */
typedef struct molt_ctx {
    /** sizeof(molt_ctx) as the host knew it. */
    uint32_t size;
    /** ABI major of the host. */
    uint16_t abi_major;
    /** ABI minor of the host. */
    uint16_t abi_minor;
    /** The host function table (the same one molt_host_info carries). */
    const struct molt_host_api *api;
    /** What init stored in *instance; NULL during init itself. */
    void *instance;
    /** The continuation being handled (handle_event, adopt), else 0. */
    molt_cont_id self;
    /** Index of the worker thread running this call. */
    uint32_t worker;
    /** Reserved, 0. */
    uint32_t reserved;
    /** The host's own data for this call. Opaque: never read or write it. */
    void *host;
} molt_ctx;

/* ------------------------------------------------------------------------ */
/* Host API                                                                  */
/* ------------------------------------------------------------------------ */

/** Log levels for molt_host_api.log. */
#define MOLT_LOG_ERROR 1u
#define MOLT_LOG_WARN 2u
#define MOLT_LOG_INFO 3u
#define MOLT_LOG_DEBUG 4u
#define MOLT_LOG_TRACE 5u

/** A handler: what handle_event is, and what a continuation may carry. */
typedef molt_status (*molt_handler_fn)(const molt_ctx *ctx, void *data, const molt_event *ev);

/** A state block as state_open reports it. */
typedef struct molt_state_block {
    /** sizeof(molt_state_block) as the module knew it; set before the call. */
    uint32_t size;
    /** ABI major of the module. */
    uint16_t abi_major;
    /** ABI minor of the module. */
    uint16_t abi_minor;
    /** The block's handle, for state_ptr. */
    molt_state_handle handle;
    /** The block's length in bytes (at least what was asked for). */
    uint64_t len;
    /** The block's schema version (the one asked for, after any migration). */
    uint32_t schema;
    /** 1 when this call created the block (its bytes are zero), else 0. */
    uint32_t created;
} molt_state_block;

/**
 * The functions the host offers. Every function takes the ctx of the
 * current call first. Strings are (pointer, length) pairs, UTF-8, not
 * necessarily NUL-terminated; the host copies them. A function that fails
 * returns a negative status and leaves its out-parameters unchanged.
 */
typedef struct molt_host_api {
    /** sizeof(molt_host_api) as the host knew it. Check with MOLT_API_HAS. */
    uint32_t size;
    /** ABI major of the host. */
    uint16_t abi_major;
    /** ABI minor of the host. */
    uint16_t abi_minor;

    /** Write a log line (MOLT_LOG_* level), tagged by the host with the module
     *  name and version. */
    void (*log)(const molt_ctx *ctx, uint32_t level, const char *msg, size_t len);

    /** Hand the host the error text for the failure the current callback is
     *  about to return. The text is copied. Returns `status` unchanged, so a
     *  module can write `return api->set_error(ctx, MOLT_ERR_FAILED, m, n);`. */
    molt_status (*set_error)(const molt_ctx *ctx, molt_status status, const char *msg, size_t len);

    /** Create a continuation on the calling worker (or on `worker` if it is not
     *  UINT32_MAX), charged to the current module version. `handler` may be
     *  NULL for the descriptor's handle_event. It first receives MOLT_EV_START
     *  with `tag`. Writes the new id to *out. */
    molt_status (*cont_create)(const molt_ctx *ctx, molt_handler_fn handler, void *data, uint32_t worker,
                               uint64_t tag, molt_cont_id *out);

    /** End a continuation: pending events are dropped and its handler gets a
     *  final MOLT_EV_END (after the current call returns when it ends itself). */
    molt_status (*cont_destroy)(const molt_ctx *ctx, molt_cont_id id);

    /** Send a message (MOLT_EV_MESSAGE) to a continuation on any worker. The
     *  payload is copied. Messages from one sender to one target arrive in order. */
    molt_status (*cont_send)(const molt_ctx *ctx, molt_cont_id target, uint64_t tag, const uint8_t *data,
                             size_t len);

    /** Deliver MOLT_EV_TIMER with `tag` to continuation `target` after `delay_ns`
     *  nanoseconds. Writes the timer id to *out (may be NULL). */
    molt_status (*timer_schedule)(const molt_ctx *ctx, molt_cont_id target, uint64_t delay_ns, uint64_t tag,
                                  molt_timer_id *out);

    /** Cancel a timer that has not fired. MOLT_ERR_STALE if it fired or was cancelled. */
    molt_status (*timer_cancel)(const molt_ctx *ctx, molt_timer_id id);

    /** Open (or create, zero-filled) the module's named state block with the
     *  module's schema version and at least `min_len` bytes. The host migrates
     *  an existing block of an older schema through the module's migrate
     *  callback first. Fills *out (set out->size first). */
    molt_status (*state_open)(const molt_ctx *ctx, const char *name, size_t name_len, uint32_t schema,
                              uint64_t min_len, molt_state_block *out);

    /** The address of a state block's first byte, 64-byte aligned. Valid until
     *  the instance's fini returns; the bytes persist beyond that. */
    molt_status (*state_ptr)(const molt_ctx *ctx, molt_state_handle handle, void **out);

    /** Reserve a user-arg slot by name: the same name gets the same index in
     *  every version and every reload. MOLT_ERR_LIMIT when the table is full. */
    molt_status (*user_arg_reserve)(const molt_ctx *ctx, const char *name, size_t name_len, uint32_t *out);

    /** Store a value in a continuation's user-arg slot. */
    molt_status (*user_arg_set)(const molt_ctx *ctx, molt_cont_id id, uint32_t slot, uint64_t value);

    /** Read a continuation's user-arg slot (0 if never set). */
    molt_status (*user_arg_get)(const molt_ctx *ctx, molt_cont_id id, uint32_t slot, uint64_t *out);

    /* ---- ABI 1.1: connection I/O (MOLT_HOST_CAP_CONN) ---- */

    /** Queue bytes to write to connection `conn` (copied). MOLT_ERR_LIMIT when
     *  more than 1 MiB is queued (nothing is taken; wait for
     *  MOLT_EV_CONN_WRITABLE). MOLT_ERR_STALE once it closed. */
    molt_status (*conn_write)(const molt_ctx *ctx, uint64_t conn, const uint8_t *data, size_t len);

    /** Close `conn` once its queued bytes are written. During the
     *  MOLT_EV_CONN_OPEN of an accept hook: reject the connection. */
    molt_status (*conn_close)(const molt_ctx *ctx, uint64_t conn);

    /** Connect to `addr` ("ip:port"); the new connection reports to the
     *  calling continuation (MOLT_EV_CONN_OPEN with arg0 = 1, or
     *  MOLT_EV_CONN_CLOSED with arg0 = 2). Writes its handle to *out. */
    molt_status (*conn_connect)(const molt_ctx *ctx, const char *addr, size_t addr_len, uint64_t *out);

    /* ---- ABI 1.1: HTTP hooks (MOLT_HOST_CAP_HTTP) ---- */

    /** Copy an item of transaction `txn` (MOLT_HTTP_ITEM_*) into buf. Sets
     *  *out_len to the item's length; MOLT_ERR_LIMIT (nothing copied) when
     *  cap is smaller; MOLT_ERR_NOT_FOUND when the item has no value yet. */
    molt_status (*http_get)(const molt_ctx *ctx, uint64_t txn, uint32_t item, char *buf, size_t cap,
                            size_t *out_len);

    /** Copy the value of the index-th (from 0) header field named `name`
     *  (case-insensitive) of message `msg` (MOLT_HTTP_MSG_*) into buf, with
     *  http_get's length rules. MOLT_ERR_NOT_FOUND when there is none. */
    molt_status (*http_header_get)(const molt_ctx *ctx, uint64_t txn, uint32_t msg, const char *name,
                                   size_t name_len, uint32_t index, char *buf, size_t cap, size_t *out_len);

    /** Change message `msg`'s header fields named `name`: MOLT_HDR_SET
     *  (replace them all with one), MOLT_HDR_ADD (append one more) or
     *  MOLT_HDR_REMOVE (value ignored). Framing and hop-by-hop fields
     *  (Content-Length, Transfer-Encoding, Connection, ...) are the host's:
     *  MOLT_ERR_INVALID_ARG. Names must be tokens; values may hold no control
     *  character but tab. */
    molt_status (*http_header_set)(const molt_ctx *ctx, uint64_t txn, uint32_t msg, uint32_t mode,
                                   const char *name, size_t name_len, const char *value, size_t value_len);

    /** Rewrite the request target (path and query) sent upstream. Only in
     *  MOLT_EV_HTTP_REQUEST and MOLT_EV_HTTP_UPSTREAM. */
    molt_status (*http_set_target)(const molt_ctx *ctx, uint64_t txn, const char *target, size_t len);

    /** Answer the request here (any status 200..599) with a body of
     *  `body_len` bytes and a Content-Type (may be empty): no upstream is
     *  used. More response headers can follow with http_header_set on
     *  MOLT_HTTP_MSG_RESPONSE. Only in MOLT_EV_HTTP_REQUEST and
     *  MOLT_EV_HTTP_UPSTREAM; refusing a request is answering it with 4xx. */
    molt_status (*http_respond)(const molt_ctx *ctx, uint64_t txn, uint32_t status, const char *content_type,
                                size_t content_type_len, const uint8_t *body, size_t body_len);

    /** Send the request to upstream group `group` (a name from the route's
     *  config); MOLT_ERR_NOT_FOUND names the groups there are. */
    molt_status (*http_upstream_select)(const molt_ctx *ctx, uint64_t txn, const char *group, size_t len);

    /* ---- ABI 1.2: posting from module-owned threads (MOLT_HOST_CAP_POST) ---- */

    /** Open a poster for the calling module version (from any callback,
     *  init included) and write it to *out. The poster is the only host
     *  object a thread the module started may use (rule 8). */
    molt_status (*poster_open)(const molt_ctx *ctx, struct molt_poster **out);

    /** Post a message (copied) to continuation `target`, from any thread:
     *  it arrives as MOLT_EV_MESSAGE with source 0 and MOLT_EVF_POSTED.
     *  MOLT_ERR_STALE when the target has ended; MOLT_ERR_SHUTDOWN once the
     *  runtime stops or the poster's module version was unloaded;
     *  MOLT_ERR_LIMIT over 64 KiB. Thread-safe; never blocks on a worker. */
    molt_status (*post)(struct molt_poster *poster, molt_cont_id target, uint64_t tag, const uint8_t *data,
                        size_t len);

    /** Close a poster, once, when no thread uses it any more (before fini
     *  returns at the latest: its threads must be joined by then). */
    void (*poster_close)(struct molt_poster *poster);

    /** (1.2) From init only: the HTTP hook events this module handles, as
     *  MOLT_HOOK_* bits. The host then calls it for those only (the others
     *  cost it nothing per request). Not calling this means every hook
     *  event. MOLT_ERR_PHASE outside init. */
    molt_status (*http_hooks)(const molt_ctx *ctx, uint64_t hooks);
} molt_host_api;

/** (1.2) http_hooks bits. */
/** The module handles MOLT_EV_HTTP_REQUEST. */
#define MOLT_HOOK_REQUEST ((uint64_t)1 << 0)
/** The module handles MOLT_EV_HTTP_UPSTREAM. */
#define MOLT_HOOK_UPSTREAM ((uint64_t)1 << 1)
/** The module handles MOLT_EV_HTTP_RESPONSE. */
#define MOLT_HOOK_RESPONSE ((uint64_t)1 << 2)
/** The module handles MOLT_EV_HTTP_TXN_END. */
#define MOLT_HOOK_TXN_END ((uint64_t)1 << 3)

/** (1.1) Items for http_get. */
/** The request method. */
#define MOLT_HTTP_ITEM_METHOD 1u
/** The request target as it will be sent (path and query). */
#define MOLT_HTTP_ITEM_TARGET 2u
/** The request target's path (before any '?'). */
#define MOLT_HTTP_ITEM_PATH 3u
/** The Host header's value. */
#define MOLT_HTTP_ITEM_HOST 4u
/** The client's address, "ip:port". */
#define MOLT_HTTP_ITEM_CLIENT_ADDR 5u
/** The route's name. */
#define MOLT_HTTP_ITEM_ROUTE 6u
/** The upstream group chosen so far. */
#define MOLT_HTTP_ITEM_UPSTREAM_GROUP 7u
/** The upstream server that answered, "ip:port" (RESPONSE, TXN_END). */
#define MOLT_HTTP_ITEM_UPSTREAM_ADDR 8u

/** (1.1) Which message a header function addresses. */
#define MOLT_HTTP_MSG_REQUEST 1u
#define MOLT_HTTP_MSG_RESPONSE 2u

/** (1.1) http_header_set modes. */
#define MOLT_HDR_SET 1u
#define MOLT_HDR_ADD 2u
#define MOLT_HDR_REMOVE 3u

/** What the host tells a module at load. Borrowed for the entry call, except
 *  `api`, which stays valid until the module is unloaded. */
typedef struct molt_host_info {
    /** sizeof(molt_host_info) as the host knew it. */
    uint32_t size;
    /** ABI major of the host. */
    uint16_t abi_major;
    /** ABI minor of the host. */
    uint16_t abi_minor;
    /** MOLT_HOST_CAP_* bits the host provides. */
    uint64_t host_caps;
    /** The host's name, NUL-terminated ("molt"). */
    const char *host_name;
    /** The host's version, NUL-terminated. */
    const char *host_version;
    /** The host function table. */
    const molt_host_api *api;
} molt_host_info;

/* ------------------------------------------------------------------------ */
/* Module descriptor                                                         */
/* ------------------------------------------------------------------------ */

/** One config entry: `key = value`, both NUL-terminated UTF-8. */
typedef struct molt_config_entry {
    /** The key, e.g. "greeting" or "header.add.X-Proxy". */
    const char *key;
    /** The value, as text. */
    const char *value;
} molt_config_entry;

/** What init receives. Borrowed for the call. */
typedef struct molt_init_args {
    /** sizeof(molt_init_args) as the host knew it. */
    uint32_t size;
    /** ABI major of the host. */
    uint16_t abi_major;
    /** ABI minor of the host. */
    uint16_t abi_minor;
    /** The module's config from the runtime config, flat key/value text. */
    const molt_config_entry *config;
    /** Number of entries in config. */
    size_t config_len;
    /** version_number of the version this one replaces, 0 when none. */
    uint32_t previous_version;
    /** Reserved, 0. */
    uint32_t reserved;
} molt_init_args;

/** Migration directions. */
#define MOLT_MIGRATE_UP 1u
#define MOLT_MIGRATE_DOWN 2u

/** One block migration. Borrowed for the call; `src` is read-only. */
typedef struct molt_migration {
    /** sizeof(molt_migration) as the host knew it. */
    uint32_t size;
    /** ABI major of the host. */
    uint16_t abi_major;
    /** ABI minor of the host. */
    uint16_t abi_minor;
    /** MOLT_MIGRATE_UP or MOLT_MIGRATE_DOWN. */
    uint32_t direction;
    /** Schema version of src. */
    uint32_t from_schema;
    /** Schema version to write into dst. */
    uint32_t to_schema;
    /** Reserved, 0. */
    uint32_t reserved;
    /** The block's name (NUL-terminated). */
    const char *block_name;
    /** The old block, read-only. */
    const void *src;
    /** Length of src in bytes. */
    uint64_t src_len;
    /** The new block, zero-filled, 64-byte aligned. */
    void *dst;
    /** Length of dst in bytes. */
    uint64_t dst_len;
} molt_migration;

/**
 * The module descriptor: a static the module returns from its entry. It must
 * stay valid and unchanged until the library is unloaded.
 */
typedef struct molt_module_desc {
    /** sizeof(molt_module_desc) as the module knew it. */
    uint32_t size;
    /** ABI major the module was built against (MOLT_ABI_MAJOR). */
    uint16_t abi_major;
    /** ABI minor the module was built against (MOLT_ABI_MINOR). */
    uint16_t abi_minor;
    /** The module's stable name, NUL-terminated: [a-z0-9_-], 1..64 chars. */
    const char *name;
    /** Human-readable version, NUL-terminated (e.g. "1.2.0"). */
    const char *version;
    /** Monotonic version number: a newer build has a larger number. */
    uint32_t version_number;
    /** Schema version of the module's state blocks (0: uses no state). */
    uint32_t state_schema;
    /** MOLT_MODULE_* flags. */
    uint32_t flags;
    /** Reserved, 0. */
    uint32_t reserved;
    /** MOLT_HOST_CAP_* bits the module cannot work without. */
    uint64_t required_host_caps;
    /** MOLT_MOD_CAP_* bits the module offers. */
    uint64_t module_caps;

    /** Required. Set up the instance; store its data in *instance. Called once
     *  per loaded version before any other callback. */
    molt_status (*init)(const molt_ctx *ctx, const molt_init_args *args, void **instance);

    /** Required. Handle one event for one continuation; `data` is the
     *  continuation's data (NULL for continuations the host created). */
    molt_handler_fn handle_event;

    /** Optional. Move a state block between schema versions (up on a swap,
     *  down on a rollback). Must not depend on ctx->instance: it may run
     *  during init (from state_open) or without a live instance. */
    molt_status (*migrate)(const molt_ctx *ctx, const molt_migration *m);

    /** Optional. Take over live continuation ctx->self of an older version
     *  (upgrade mode). Its data is `old_data` (owned by the old version) and
     *  the old version number is `old_version`. Store this version's data in
     *  *new_data and, optionally, a handler in *new_handler (preset to
     *  handle_event). If *new_data == old_data ownership passes to the new
     *  version; otherwise the old version gets MOLT_EV_END with
     *  MOLT_EVF_ADOPTED and frees its data. */
    molt_status (*adopt)(const molt_ctx *ctx, void *old_data, uint32_t old_version, void **new_data,
                         molt_handler_fn *new_handler);

    /** Optional. The version is being replaced: start winding down. Live
     *  continuations also get MOLT_EV_DRAIN. */
    molt_status (*drain)(const molt_ctx *ctx);

    /** Optional. Last call into the instance: free what init allocated. Every
     *  continuation of the version has received MOLT_EV_END before it. */
    void (*fini)(const molt_ctx *ctx);
} molt_module_desc;

/* ------------------------------------------------------------------------ */
/* Field presence                                                            */
/* ------------------------------------------------------------------------ */

/** True when struct `*ptr` of type `type` (which starts with uint32_t size)
 *  holds `field`: the writer knew a minor that has it. */
#define MOLT_HAS_FIELD(type, ptr, field) \
    ((size_t)(ptr)->size >= offsetof(type, field) + sizeof(((const type *)0)->field))

/** True when the host API table `api` has entry `field` (and it is not NULL). */
#define MOLT_API_HAS(api, field) \
    (MOLT_HAS_FIELD(molt_host_api, (api), field) && (api)->field != NULL)

/* ------------------------------------------------------------------------ */
/* The entry symbol                                                          */
/* ------------------------------------------------------------------------ */

/** Mark the one symbol a module exports (build with -fvisibility=hidden). */
#if defined(__GNUC__) || defined(__clang__)
#define MOLT_EXPORT __attribute__((visibility("default")))
#else
#define MOLT_EXPORT
#endif

/** The entry's type, for hosts resolving it with dlsym. */
typedef molt_status (*molt_module_entry_fn)(const molt_host_info *host, const molt_module_desc **desc,
                                           char *errbuf, size_t errbuf_len);

/**
 * The one symbol a module exports. The host calls it once after dlopen.
 * The module checks host->abi_major (and any host capability it needs),
 * stores host->api for later if it likes, points *desc at its static
 * descriptor and returns MOLT_OK. On failure it writes a NUL-terminated
 * reason into errbuf (at most errbuf_len bytes) and returns a negative status.
 * No other work: init comes later, through the descriptor.
 */
MOLT_EXPORT molt_status molt_module_entry_v1(const molt_host_info *host, const molt_module_desc **desc,
                                             char *errbuf, size_t errbuf_len);

#ifdef __cplusplus
}
#endif

#endif /* MOLT_H */
