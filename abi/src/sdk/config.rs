//! [`Config`]: the module's flat key/value config.

use core::ffi::CStr;

use crate::ffi::{molt_config_entry, molt_init_args};

/// The module's config entries, borrowed for `init`.
#[derive(Debug, Clone, Copy)]
pub struct Config<'a> {
    entries: &'a [molt_config_entry],
}

impl<'a> Config<'a> {
    /// Read the host's init args.
    ///
    /// # Safety
    ///
    /// `args` is the init args the host passed to `init`, valid for `'a`,
    /// with `config` valid for `config_len` entries of NUL-terminated strings.
    pub(crate) unsafe fn from_raw(args: *const molt_init_args) -> Config<'a> {
        // SAFETY: per this function's contract.
        let Some(args) = (unsafe { args.as_ref() }) else {
            return Config { entries: &[] };
        };
        if args.config.is_null() || args.config_len == 0 {
            return Config { entries: &[] };
        }
        // SAFETY: per this function's contract, `config` holds `config_len` entries.
        let entries = unsafe { core::slice::from_raw_parts(args.config, args.config_len) };
        Config { entries }
    }

    /// Every `(key, value)` that is valid UTF-8, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.entries.iter().filter_map(|e| {
            if e.key.is_null() || e.value.is_null() {
                return None;
            }
            // SAFETY: the host's entries are NUL-terminated strings valid for
            // `'a` (see `from_raw`).
            let k = unsafe { CStr::from_ptr(e.key) }.to_str().ok()?;
            // SAFETY: as above.
            let v = unsafe { CStr::from_ptr(e.value) }.to_str().ok()?;
            Some((k, v))
        })
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
