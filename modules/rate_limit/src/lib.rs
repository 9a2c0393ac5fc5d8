//! `rate_limit`: token buckets per client address, kept in a state block so
//! they survive swaps and restarts; a request without a token gets 429. As an
//! accept hook of a `[[tcp]]` route it rejects connections instead.
//!
//! Config: `rate` (tokens per second, default 100), `burst` (bucket size,
//! default `rate`), `buckets` (slots when the block is created, default
//! 4096). Block `buckets` (schema 1): 64 bytes of header, then one slot of
//! two `u64`s per bucket: the client key (a hash of its IP address, never 0)
//! and the bucket state, `last_refill_ms << 22 | tokens * 16`. Slots are
//! updated with compare-and-swap, so every worker shares them without a
//! lock. Two clients whose keys fall on one slot take it over from each
//! other (each takeover starts a full bucket): a bounded table, not an
//! exact one.
#![forbid(unsafe_code)]

use core::ffi::CStr;
use core::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use molt_abi::ffi::MOLT_HTTP_ITEM_CLIENT_ADDR;
use molt_abi::molt_module;
use molt_abi::sdk::{Config, Ctx, Error, Module, Msg, Result, StateBlock, Txn};

const TOKEN_BITS: u32 = 22;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;
/// Fixed point: a token is 16 units.
const UNIT: u64 = 16;
const HEADER_U64S: usize = 8;

/// The instance.
pub struct RateLimit {
    block: StateBlock,
    /// Tokens per second.
    rate: u64,
    /// Bucket size in units.
    burst_units: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// FNV-1a of the client's IP (not its port), never 0.
fn key_of(addr: &str) -> u64 {
    let ip = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ip.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h | 1
}

impl RateLimit {
    /// Take a token for `key` at `now`: Ok, or Err(ms until one is there).
    fn take(&self, key: u64, now: u64) -> core::result::Result<(), u64> {
        let words = self.block.atomic_u64s();
        let slots = (words.len() - HEADER_U64S) / 2;
        let i = HEADER_U64S + 2 * (key % slots as u64) as usize;
        let (k, s) = (&words[i], &words[i + 1]);
        if k.load(Ordering::Acquire) != key {
            // A new client (or one that lost its slot): a full bucket.
            k.store(key, Ordering::Release);
            s.store(now << TOKEN_BITS | self.burst_units, Ordering::Release);
        }
        let mut cur = s.load(Ordering::Acquire);
        loop {
            let last = cur >> TOKEN_BITS;
            let units = cur & TOKEN_MASK;
            let refill = now.saturating_sub(last).saturating_mul(self.rate * UNIT) / 1000;
            let have = (units + refill).min(self.burst_units);
            // Keep the refill time where whole units were credited.
            let stamp = if refill > 0 { now } else { last };
            if have < UNIT {
                let wait = (UNIT - have) * 1000 / (self.rate * UNIT).max(1);
                return Err(wait.max(1));
            }
            let next = stamp << TOKEN_BITS | (have - UNIT);
            match s.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(x) => cur = x,
            }
        }
    }
}

fn number(config: &Config<'_>, key: &str, default: u64) -> Result<u64> {
    match config.get(key) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| Error::invalid(format!("rate_limit: config key `{key}`: {v:?} is not a whole number"))),
    }
}

impl Module for RateLimit {
    const NAME: &'static CStr = c"rate_limit";
    const VERSION: &'static CStr = c"1.0.0";
    const VERSION_NUMBER: u32 = 1;
    const STATE_SCHEMA: u32 = 1;
    const REQUIRED_HOST_CAPS: u64 = molt_abi::ffi::MOLT_HOST_CAP_STATE;
    const HTTP_HOOKS: u64 = molt_abi::ffi::MOLT_HOOK_REQUEST;
    type Cont = ();

    fn init(ctx: &Ctx<'_, Self>, config: &Config<'_>) -> Result<Self> {
        let rate = number(config, "rate", 100)?;
        let burst = number(config, "burst", rate)?;
        let buckets = number(config, "buckets", 4096)?;
        if rate == 0 || burst == 0 || burst * UNIT > TOKEN_MASK || buckets == 0 {
            return Err(Error::invalid(format!(
                "rate_limit: rate and burst must be 1..{} and buckets at least 1 (got rate {rate}, burst {burst}, buckets {buckets})",
                TOKEN_MASK / UNIT
            )));
        }
        let block = ctx.state_block("buckets", (HEADER_U64S as u64 + 2 * buckets) * 8)?;
        ctx.info(&format!(
            "rate_limit ready: {rate}/s, burst {burst}, {} buckets",
            (block.len() / 8 - HEADER_U64S as u64) / 2
        ));
        Ok(RateLimit { block, rate, burst_units: burst * UNIT })
    }

    /// An accept hook of a `[[tcp]]` route: no token, no connection.
    fn conn_open(
        &self,
        ctx: &Ctx<'_, Self>,
        _cont: Option<&mut ()>,
        conn: u64,
        peer: &str,
        connected: bool,
    ) -> Result<()> {
        if !connected && self.take(key_of(peer), now_ms()).is_err() {
            ctx.conn_close(conn)?;
        }
        Ok(())
    }

    fn http_request(&self, _ctx: &Ctx<'_, Self>, txn: &Txn<'_, '_, Self>) -> Result<()> {
        let key = txn.with_item(MOLT_HTTP_ITEM_CLIENT_ADDR, |a| {
            key_of(core::str::from_utf8(a.unwrap_or_default()).unwrap_or(""))
        })?;
        if let Err(wait_ms) = self.take(key, now_ms()) {
            txn.respond(429, "text/plain; charset=utf-8", b"429 Too Many Requests: slow down\n")?;
            txn.set_header(Msg::Response, "Retry-After", &wait_ms.div_ceil(1000).to_string())?;
        }
        Ok(())
    }
}

molt_module!(RateLimit);
