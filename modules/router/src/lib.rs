//! `router`: picks the upstream group of a request by path prefix or by a
//! header, at the UPSTREAM hook.
//!
//! Config (all optional):
//! - `path.<prefix> = "<group>"`: requests whose path starts with
//!   `<prefix>` go to `<group>`; the longest prefix wins.
//! - `header = "<Name>"`: a request carrying header `<Name>` goes to the
//!   group it names (when that group exists; else the path rules decide).
//! - `default = "<group>"`: where the rest go (without it, the route's own
//!   upstream).
//! - `mark = "<text>"`: set `X-Router-Mark: <text>` on the request sent
//!   upstream and on the response, to see which router configuration (and
//!   version) handled a transaction.
#![forbid(unsafe_code)]

use core::ffi::CStr;

use molt_abi::ffi::MOLT_HTTP_ITEM_PATH;
use molt_abi::molt_module;
use molt_abi::sdk::{Config, Ctx, Error, Module, Msg, Result, Txn};

/// The instance: the rules from config.
pub struct Router {
    /// (prefix, group), longest prefix first.
    paths: Vec<(String, String)>,
    header: Option<String>,
    default: Option<String>,
    mark: Option<String>,
}

impl Router {
    fn choose(&self, path: &str, by_header: Option<String>) -> Option<&str> {
        if let Some(g) = by_header {
            // Only a group named in the rules or the default may be chosen by a client.
            if let Some((_, group)) = self.paths.iter().find(|(_, grp)| *grp == g) {
                return Some(group);
            }
            if self.default.as_deref() == Some(g.as_str()) {
                return self.default.as_deref();
            }
        }
        self.paths
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, g)| g.as_str())
            .or(self.default.as_deref())
    }
}

impl Module for Router {
    const NAME: &'static CStr = c"router";
    const VERSION: &'static CStr = c"1.0.0";
    const VERSION_NUMBER: u32 = 1;
    const REQUIRED_HOST_CAPS: u64 = molt_abi::ffi::MOLT_HOST_CAP_HTTP;
    const HTTP_HOOKS: u64 =
        molt_abi::ffi::MOLT_HOOK_REQUEST | molt_abi::ffi::MOLT_HOOK_UPSTREAM | molt_abi::ffi::MOLT_HOOK_RESPONSE;
    type Cont = ();

    fn init(ctx: &Ctx<'_, Self>, config: &Config<'_>) -> Result<Self> {
        let mut r = Router { paths: Vec::new(), header: None, default: None, mark: None };
        for (k, v) in config.iter() {
            if let Some(prefix) = k.strip_prefix("path.") {
                if !prefix.starts_with('/') {
                    return Err(Error::invalid(format!("router: config key `{k}`: the prefix must start with '/'")));
                }
                r.paths.push((prefix.to_owned(), v.to_owned()));
            } else {
                match k {
                    "header" => r.header = Some(v.to_owned()),
                    "default" => r.default = Some(v.to_owned()),
                    "mark" => r.mark = Some(v.to_owned()),
                    _ => {
                        return Err(Error::invalid(format!(
                            "router: unknown config key `{k}` (path.<prefix>, header, default, mark)"
                        )));
                    }
                }
            }
        }
        r.paths.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        ctx.info(&format!("router ready: {} path rules", r.paths.len()));
        Ok(r)
    }

    fn http_request(&self, _ctx: &Ctx<'_, Self>, txn: &Txn<'_, '_, Self>) -> Result<()> {
        match &self.mark {
            Some(m) => txn.set_header(Msg::Request, "X-Router-Mark", m),
            None => Ok(()),
        }
    }

    fn http_upstream(&self, _ctx: &Ctx<'_, Self>, txn: &Txn<'_, '_, Self>) -> Result<()> {
        let by_header = match &self.header {
            Some(h) => txn.request_header(h)?,
            None => None,
        };
        txn.with_item(MOLT_HTTP_ITEM_PATH, |p| {
            match self.choose(core::str::from_utf8(p.unwrap_or_default()).unwrap_or(""), by_header) {
                Some(group) => txn.select_upstream(group),
                None => Ok(()),
            }
        })?
    }

    fn http_response(&self, _ctx: &Ctx<'_, Self>, txn: &Txn<'_, '_, Self>, _status: u16, _by: u64) -> Result<()> {
        match &self.mark {
            Some(m) => txn.set_header(Msg::Response, "X-Router-Mark", m),
            None => Ok(()),
        }
    }
}

molt_module!(Router);
