//! `counter`: counts increments in a state block, so the count survives swaps.
//!
//! Block `count` (schema 1) holds one `u64` at offset 0. A message with tag
//! [`TAG_INCREMENT`] adds one and replies with the new count; tag
//! [`TAG_READ`] replies with the count. Replies are 8 bytes, native-endian.
//! As the handler of a `[[tcp]]` route, each byte a connection sends is an
//! increment, answered with the new count.
//! Its continuations carry no data, so it adopts them across versions (and
//! across schema changes, which move every live continuation).
#![forbid(unsafe_code)]

use core::ffi::CStr;
use core::sync::atomic::Ordering;

use molt_abi::molt_module;
use molt_abi::sdk::{Config, Ctx, Error, Event, Module, Result, StateBlock};

/// Message tag: increment, reply with the new count.
pub const TAG_INCREMENT: u64 = 1;
/// Message tag: reply with the count.
pub const TAG_READ: u64 = 2;

/// The instance: the open state block.
pub struct Counter {
    block: StateBlock,
}

impl Module for Counter {
    const NAME: &'static CStr = c"counter";
    const VERSION: &'static CStr = c"1.0.0";
    const VERSION_NUMBER: u32 = 1;
    const STATE_SCHEMA: u32 = 1;
    const REQUIRED_HOST_CAPS: u64 = molt_abi::ffi::MOLT_HOST_CAP_STATE;
    const HAS_ADOPT: bool = true;
    type Cont = ();

    fn init(ctx: &Ctx<'_, Self>, _config: &Config<'_>) -> Result<Self> {
        let block = ctx.state_block("count", 64)?;
        Ok(Counter { block })
    }

    fn handle_event(&self, ctx: &Ctx<'_, Self>, _cont: Option<&mut ()>, event: &Event<'_>) -> Result<()> {
        if !event.is_message() {
            return Ok(());
        }
        let count = &self.block.atomic_u64s()[0];
        let value = match event.tag {
            TAG_INCREMENT => count.fetch_add(1, Ordering::AcqRel) + 1,
            TAG_READ => count.load(Ordering::Acquire),
            other => return Err(Error::failed(format!("counter: unknown tag {other} (1 increments, 2 reads)"))),
        };
        ctx.reply(event, &value.to_ne_bytes())
    }

    /// As a TCP handler: every byte received increments the count, and the
    /// new count goes back as 8 bytes, native-endian.
    fn conn_data(&self, ctx: &Ctx<'_, Self>, _cont: Option<&mut ()>, conn: u64, data: &[u8]) -> Result<()> {
        let count = &self.block.atomic_u64s()[0];
        for _ in data {
            ctx.conn_write(conn, &(count.fetch_add(1, Ordering::AcqRel) + 1).to_ne_bytes())?;
        }
        Ok(())
    }

    /// Counter continuations carry no data: the count is in the block.
    fn adopt(&self, _ctx: &Ctx<'_, Self>, _old_version: u32) -> Result<Option<Box<()>>> {
        Ok(None)
    }
}

molt_module!(Counter);
