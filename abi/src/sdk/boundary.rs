//! The one boundary every callback crosses: panics become statuses.
//!
//! Also the module-local panic hook. Why it exists: glibc never unmaps a
//! library in which a thread-local destructor was registered, and std's
//! default hook registers one (it looks up the current thread for its name).
//! This hook writes the message and location into a fixed buffer in a
//! destructor-free thread-local (`Cell` of a `Copy` array, const-initialised:
//! std registers no destructor for it), and [`call`] hands that text to the
//! host after `catch_unwind` returns.

use std::cell::Cell;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use super::{Error, Result};
use crate::Status;
use crate::ffi::{molt_ctx, molt_status};

const PANIC_TEXT_MAX: usize = 480;

thread_local! {
    /// The last panic's text on this thread: bytes and length. No destructor.
    static PANIC_TEXT: Cell<([u8; PANIC_TEXT_MAX], usize)> = const { Cell::new(([0; PANIC_TEXT_MAX], 0)) };
}

/// A `fmt::Write` into a fixed buffer that truncates (on a char boundary).
struct FixedBuf {
    bytes: [u8; PANIC_TEXT_MAX],
    len: usize,
}

impl std::fmt::Write for FixedBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for ch in s.chars() {
            let mut tmp = [0u8; 4];
            let enc = ch.encode_utf8(&mut tmp).as_bytes();
            if self.len + enc.len() > PANIC_TEXT_MAX {
                return Ok(());
            }
            self.bytes[self.len..self.len + enc.len()].copy_from_slice(enc);
            self.len += enc.len();
        }
        Ok(())
    }
}

/// Install the module-local panic hook once per loaded library.
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let mut buf = FixedBuf { bytes: [0; PANIC_TEXT_MAX], len: 0 };
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(non-string panic payload)");
            let _ = write!(buf, "{msg}");
            if let Some(loc) = info.location() {
                let _ = write!(buf, " (at {}:{})", loc.file(), loc.line());
            }
            PANIC_TEXT.with(|t| t.set((buf.bytes, buf.len)));
        }));
    });
}

/// The text the hook recorded for the last panic on this thread.
fn take_panic_text() -> String {
    PANIC_TEXT.with(|t| {
        let (bytes, len) = t.replace(([0; PANIC_TEXT_MAX], 0));
        if len == 0 {
            "panic (no message recorded)".to_owned()
        } else {
            String::from_utf8_lossy(&bytes[..len]).into_owned()
        }
    })
}

/// What happened inside a boundary call.
pub(crate) enum Outcome<T> {
    /// The closure returned.
    Done(Result<T>),
    /// The closure panicked; the text says where and why.
    Panicked(String),
}

/// Run `f`, catching any panic.
pub(crate) fn catch<T>(f: impl FnOnce() -> Result<T>) -> Outcome<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Outcome::Done(r),
        Err(payload) => {
            // The payload may own a String; drop it here, inside the module,
            // which allocated it.
            drop(payload);
            Outcome::Panicked(take_panic_text())
        }
    }
}

/// Hand an error to the host (`set_error`) and return its raw status.
pub(crate) fn report(ctx: *const molt_ctx, err: &Error) -> molt_status {
    let raw = err.status().raw();
    // SAFETY: `ctx` is the pointer the host passed to the current callback,
    // valid for the call (header rule 3); `host_api` checks it for null.
    let Some(api) = (unsafe { host_api(ctx) }) else {
        return raw;
    };
    if let Some(set_error) = crate::api_get!(api, set_error) {
        let msg = err.message();
        // SAFETY: `set_error` is the host's, called with the current ctx and
        // a (pointer, length) string that lives across the call; the host
        // copies it (header, `set_error`).
        unsafe { set_error(ctx, raw, msg.as_ptr().cast(), msg.len()) };
    }
    raw
}

/// Turn a panic into a reported `MOLT_ERR_PANIC`.
pub(crate) fn report_panic(ctx: *const molt_ctx, what: &str, text: String) -> molt_status {
    report(ctx, &Error::new(Status::Panic, format!("{what} panicked: {text}")))
}

/// The host table behind a ctx pointer.
///
/// # Safety
///
/// `ctx` is null or points to a `molt_ctx` the host passed to the current
/// callback (valid for the call, rule 3), whose `api` is null or points to
/// the host's table, valid while the module is loaded.
pub(crate) unsafe fn host_api<'a>(ctx: *const molt_ctx) -> Option<&'a crate::ffi::molt_host_api> {
    // SAFETY: per this function's contract, `ctx` is null or valid.
    let ctx = unsafe { ctx.as_ref() }?;
    // SAFETY: per this function's contract, `api` is null or valid for as
    // long as the module is loaded, which outlives any borrow we hand out.
    unsafe { ctx.api.as_ref() }
}
