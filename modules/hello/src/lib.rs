//! `hello`: answers with a greeting that carries its version.
//!
//! - A message with payload `P` from continuation `S` gets, back at `S` with
//!   the same tag, `"<greeting> from hello <version>: P"`.
//! - On an HTTP route, it answers every request itself (the REQUEST hook):
//!   `200 text/plain` with `"<greeting> from hello <version>\n"`, so the
//!   built-in default serves HTTP with nothing else running.
//!
//! The greeting is the config key `greeting` (default `hello`).
#![forbid(unsafe_code)]

use core::ffi::CStr;

use molt_abi::molt_module;
use molt_abi::sdk::{Config, Ctx, Event, Module, Result, Txn};

/// The instance: the greeting from config.
pub struct Hello {
    greeting: String,
}

impl Module for Hello {
    const NAME: &'static CStr = c"hello";
    const VERSION: &'static CStr = c"1.0.0";
    const VERSION_NUMBER: u32 = 1;
    const HTTP_HOOKS: u64 = molt_abi::ffi::MOLT_HOOK_REQUEST;
    type Cont = ();

    fn init(ctx: &Ctx<'_, Self>, config: &Config<'_>) -> Result<Self> {
        let greeting = config.get("greeting").unwrap_or("hello").to_owned();
        ctx.info(&format!("hello ready, greeting {greeting:?}"));
        Ok(Hello { greeting })
    }

    fn http_request(&self, _ctx: &Ctx<'_, Self>, txn: &Txn<'_, '_, Self>) -> Result<()> {
        let version = Self::VERSION.to_str().unwrap_or("?");
        let body = format!("{} from hello {version}\n", self.greeting);
        txn.respond(200, "text/plain; charset=utf-8", body.as_bytes())
    }

    fn handle_event(&self, ctx: &Ctx<'_, Self>, _cont: Option<&mut ()>, event: &Event<'_>) -> Result<()> {
        if event.is_message() {
            let version = Self::VERSION.to_str().unwrap_or("?");
            let mut reply = format!("{} from hello {version}: ", self.greeting).into_bytes();
            reply.extend_from_slice(event.data);
            ctx.reply(event, &reply)?;
        }
        Ok(())
    }
}

molt_module!(Hello);
