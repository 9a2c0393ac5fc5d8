//! [`Loader`]: from a module file to an initialised [`ModuleVersion`].

use std::ffi::{CStr, CString, c_char};
use std::path::{Path, PathBuf};

use molt_abi::ffi::*;

use super::version::{ModuleVersion, with_call};
use super::{LoadError, VersionId};
use crate::host::{CallEnv, HOST_API, HOST_CAP_NAMES, Host};
use crate::host::{Callbacks, ModuleMeta};
use crate::sync::statics::AtomicU64;
use crate::sync::{Arc, Ordering};
use crate::sys;

/// What to load: a file and the config its init receives.
#[derive(Debug, Clone, Default)]
pub struct ModuleSpec {
    /// The module file (a shared library).
    pub path: PathBuf,
    /// Flat key/value config handed to init.
    pub config: Vec<(String, String)>,
    /// The version number of the version this one replaces (0: none).
    pub previous_version: u32,
    /// The sha256 the bytes loaded must have (checked before dlopen).
    pub pin: Option<String>,
    /// The name the descriptor must give (checked before init).
    pub name: Option<String>,
}

impl ModuleSpec {
    /// A spec for `path` with no config.
    pub fn new(path: impl Into<PathBuf>) -> ModuleSpec {
        ModuleSpec { path: path.into(), ..ModuleSpec::default() }
    }
}

/// Loads modules from private runtime copies under `<run_dir>/versions/`.
#[derive(Debug)]
pub struct Loader {
    host: Arc<Host>,
    versions_dir: PathBuf,
}

static NEXT_VERSION_ID: AtomicU64 = AtomicU64::new(1);

/// The id the next loaded version will get: every version loaded from now
/// on has an id at least this (ids only grow).
pub(crate) fn next_version_id() -> VersionId {
    VersionId(NEXT_VERSION_ID.load(Ordering::Relaxed))
}

const HOST_NAME: &CStr = c"molt";
const HOST_VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
    Ok(s) => s,
    Err(_) => panic!("package version contains a NUL"),
};

impl Loader {
    /// A loader keeping runtime copies under `run_dir/versions`.
    pub fn new(host: Arc<Host>, run_dir: &Path) -> std::io::Result<Loader> {
        let versions_dir = run_dir.join("versions");
        std::fs::create_dir_all(&versions_dir)?;
        Ok(Loader { host, versions_dir })
    }

    /// Where runtime copies go.
    pub fn versions_dir(&self) -> &Path {
        &self.versions_dir
    }

    /// The shared runtime services.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Take in (one descriptor: checks, one read, hash), then
    /// [`Loader::load_taken`].
    pub fn load(&self, spec: &ModuleSpec) -> Result<ModuleVersion, LoadError> {
        self.load_taken(spec, Loader::take(&spec.path)?)
    }

    /// Open module file `path` on one descriptor, check it (regular file,
    /// owner and mode of it and its directories) and read it once, hashed.
    pub fn take(path: &Path) -> Result<sys::files::Taken, LoadError> {
        sys::files::take(path).map_err(|e| intake_error(path, e))
    }

    /// Load bytes taken in from `spec.path`: compare the pin, check them as
    /// ELF and write the private copy, open the copy, handshake, compare
    /// the name, and init. On any failure nothing of it stays loaded and
    /// its copy is removed.
    pub(crate) fn load_taken(&self, spec: &ModuleSpec, taken: sys::files::Taken) -> Result<ModuleVersion, LoadError> {
        let path = spec.path.as_path();
        if let Some(pin) = spec.pin.as_ref().filter(|p| **p != taken.sha256) {
            return Err(LoadError::PinMismatch { path: path.to_owned(), expected: pin.clone(), actual: taken.sha256 });
        }
        let id = uuid::Uuid::new_v4().to_string();
        let name = path.file_name().unwrap_or(std::ffi::OsStr::new("module.so"));
        let copy =
            sys::files::private_copy(&taken, name, &self.versions_dir, &id).map_err(|e| intake_error(path, e))?;
        let result = self.load_copy(spec, &copy, taken.sha256);
        if result.is_err() && !sys::maps::is_mapped(&copy).unwrap_or(true) {
            let _ = sys::files::remove_copy(&copy);
        }
        result
    }

    fn load_copy(&self, spec: &ModuleSpec, copy: &Path, sha256: String) -> Result<ModuleVersion, LoadError> {
        let path = spec.path.clone();
        let lib = sys::dl::Library::open(copy).map_err(|dlerror| LoadError::Open { path: path.clone(), dlerror })?;
        let entry = match lib.symbol(MOLT_ENTRY_SYMBOL) {
            Some(p) if !p.is_null() => p,
            _ => {
                let _ = lib.close();
                return Err(LoadError::NoEntry { path });
            }
        };
        // SAFETY: the symbol named molt_module_entry_v1 has this type by the
        // ABI's definition (molt.h); a module that lies breaks the contract
        // we load it under.
        let entry: molt_module_entry_fn =
            unsafe { std::mem::transmute::<*mut std::ffi::c_void, molt_module_entry_fn>(entry) };
        let meta = handshake(&path, copy, sha256, entry, self.host.caps()).and_then(|meta| match &spec.name {
            Some(n) if *n != meta.name => {
                Err(LoadError::NameMismatch { path: path.clone(), expected: n.clone(), found: meta.name.clone() })
            }
            _ => Ok(meta),
        });
        match meta {
            Ok(meta) => self.init(spec, meta, lib),
            Err(e) => {
                let _ = lib.close();
                Err(e)
            }
        }
    }

    fn init(&self, spec: &ModuleSpec, meta: ModuleMeta, lib: sys::dl::Library) -> Result<ModuleVersion, LoadError> {
        let pairs: Vec<(CString, CString)> =
            spec.config.iter().map(|(k, v)| (cstring_lossy(k), cstring_lossy(v))).collect();
        let entries: Vec<molt_config_entry> =
            pairs.iter().map(|(k, v)| molt_config_entry { key: k.as_ptr(), value: v.as_ptr() }).collect();
        let args = molt_init_args {
            size: v1_0::INIT_ARGS_SIZE as u32,
            abi_major: MOLT_ABI_MAJOR,
            abi_minor: MOLT_ABI_MINOR,
            config: if entries.is_empty() { core::ptr::null() } else { entries.as_ptr() },
            config_len: entries.len(),
            previous_version: spec.previous_version,
            reserved: 0,
        };
        let mut instance = core::ptr::null_mut();
        let init = meta.callbacks.init;
        crate::host::begin_init();
        let (status, err) = with_call(&meta, &self.host, core::ptr::null_mut(), &CallEnv::detached(None), 0, |ctx| {
            // SAFETY: `init` is the module's init from a validated descriptor,
            // its library loaded; ctx, args (and the strings they point to)
            // and the out-parameter outlive the call.
            unsafe { init(ctx, &args, &mut instance) }
        });
        let http_hooks = crate::host::declared_http_hooks();
        if status == MOLT_OK {
            tracing::info!(module = %meta.name, version = %meta.version, copy = %meta.copy.display(), "module loaded");
            let meta = ModuleMeta { http_hooks, ..meta };
            return Ok(ModuleVersion::new(meta, self.host.clone(), instance, lib));
        }
        let text = err.map(|(_, t)| t).unwrap_or_else(|| "(the module gave no error text)".to_owned());
        let (module, version) = (meta.name.clone(), meta.version.clone());
        let _ = lib.close();
        if status == MOLT_ERR_PANIC {
            let text = text.strip_prefix("init panicked: ").map(str::to_owned).unwrap_or(text);
            Err(LoadError::InitPanicked { path: spec.path.clone(), module, version, text })
        } else {
            Err(LoadError::InitFailed { path: spec.path.clone(), module, version, status, text })
        }
    }
}

/// The words of an intake refusal.
fn intake_error(path: &Path, e: sys::files::IntakeError) -> LoadError {
    use sys::elf::ElfError;
    use sys::files::IntakeError as I;
    let path = path.to_owned();
    match e {
        I::NotFound => LoadError::NotFound { path },
        I::NotRegular(kind) => LoadError::NotRegularFile { path, kind },
        I::Unsafe(why) => LoadError::UnsafeFile { path, why },
        I::Elf(e @ (ElfError::Truncated(_) | ElfError::Malformed(_))) => {
            LoadError::Damaged { path, why: e.to_string() }
        }
        I::Elf(e) => LoadError::NotSharedLibrary { path, why: e.to_string() },
        e @ I::Changed(..) => LoadError::Damaged { path, why: e.to_string() },
        e @ I::TooLarge(_) => LoadError::NotSharedLibrary { path, why: e.to_string() },
        I::Io(what, source) => LoadError::Io { path, what, source },
    }
}

/// Call the entry with our host info and validate the descriptor it returns.
fn handshake(
    path: &Path,
    copy: &Path,
    sha256: String,
    entry: molt_module_entry_fn,
    host_caps: u64,
) -> Result<ModuleMeta, LoadError> {
    let path = path.to_owned();
    let info = molt_host_info {
        size: v1_0::HOST_INFO_SIZE as u32,
        abi_major: MOLT_ABI_MAJOR,
        abi_minor: MOLT_ABI_MINOR,
        host_caps,
        host_name: HOST_NAME.as_ptr(),
        host_version: HOST_VERSION.as_ptr(),
        api: &HOST_API,
    };
    let mut desc: *const molt_module_desc = core::ptr::null();
    let mut errbuf = [0 as c_char; 1024];
    // SAFETY: the entry has the ABI's type (see the transmute above); every
    // argument is valid for the call and errbuf's length is its real length.
    let status = unsafe { entry(&info, &mut desc, errbuf.as_mut_ptr(), errbuf.len()) };
    if status != MOLT_OK {
        // Terminate defensively: a module may fill the buffer without a NUL.
        errbuf[errbuf.len() - 1] = 0;
        // SAFETY: errbuf is NUL-terminated (just ensured).
        let text = unsafe { CStr::from_ptr(errbuf.as_ptr()) }.to_string_lossy().into_owned();
        let text = if text.is_empty() { "(no reason given)".to_owned() } else { text };
        return Err(LoadError::EntryRefused { path, status, text });
    }
    if desc.is_null() {
        return Err(LoadError::NoDescriptor { path });
    }
    // Read the fixed head first: a descriptor may be smaller than ours.
    // SAFETY: every ABI struct begins with `uint32_t size; uint16_t major;
    // uint16_t minor`, so a non-null descriptor has at least these 8 bytes.
    let (size, major) = unsafe { ((*desc).size, (*desc).abi_major) };
    if major != MOLT_ABI_MAJOR {
        return Err(LoadError::AbiMajor { path, found: major, expected: MOLT_ABI_MAJOR });
    }
    if (size as usize) < v1_0::MODULE_DESC_SIZE {
        return Err(LoadError::DescriptorTooSmall { path, size, need: v1_0::MODULE_DESC_SIZE, major });
    }
    // SAFETY: the descriptor declares at least the v1.0 size, so every field
    // we read is inside what the module wrote; it is static module data.
    let d = unsafe { *desc };
    let bad = |why: String| LoadError::BadDescriptor { path: path.clone(), why };
    let name = desc_str(d.name).ok_or_else(|| bad("name is NULL or not UTF-8".into()))?;
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(bad(format!("name {name:?} must be 1 to 64 of [a-z0-9_-]")));
    }
    let version = desc_str(d.version).ok_or_else(|| bad(format!("module {name}: version is NULL or not UTF-8")))?;
    let (Some(init), Some(handle_event)) = (d.init, d.handle_event) else {
        let which = if d.init.is_none() { "init" } else { "handle_event" };
        return Err(bad(format!("module {name}: the required callback {which} is NULL")));
    };
    let missing = d.required_host_caps & !host_caps;
    if missing != 0 {
        return Err(LoadError::MissingCapability { path, module: name, missing: cap_names(missing) });
    }
    Ok(ModuleMeta {
        id: VersionId(NEXT_VERSION_ID.fetch_add(1, Ordering::Relaxed)),
        name,
        version,
        version_number: d.version_number,
        state_schema: d.state_schema,
        flags: d.flags,
        required_host_caps: d.required_host_caps,
        module_caps: d.module_caps,
        source: path,
        copy: copy.to_owned(),
        sha256,
        callbacks: Callbacks { init, handle_event, migrate: d.migrate, adopt: d.adopt, drain: d.drain, fini: d.fini },
        http_hooks: 0,
    })
}

fn desc_str(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: descriptor strings are NUL-terminated static module data (molt.h).
    unsafe { CStr::from_ptr(p) }.to_str().ok().map(str::to_owned)
}

fn cstring_lossy(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// Name the capability bits in `bits`: `timers (bit 1), bit 47 (unknown to this host)`.
pub(crate) fn cap_names(bits: u64) -> String {
    (0..64)
        .filter(|b| bits & (1u64 << b) != 0)
        .map(|b| match HOST_CAP_NAMES.iter().find(|(_, v)| *v == 1u64 << b) {
            Some((n, _)) => format!("{n} (bit {b})"),
            None => format!("bit {b} (unknown to this host)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
