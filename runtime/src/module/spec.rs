//! What the core is asked to load: one module of a generation, as the
//! config file (or a caller) states it. The config layer parses into these
//! types; the core defines them, so it needs nothing of the config layer.

use std::path::PathBuf;

use serde::Deserialize;

/// How a module's old version gives way to a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SwapMode {
    /// Old continuations finish on old code; new ones start on new code.
    #[default]
    Drain,
    /// Live continuations move to the new version through its `adopt`.
    Upgrade,
}

/// What requests see while a module is failed (used by the proxies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Re-initialise the module (a fresh instance of the same version).
    #[default]
    Restart,
    /// Refuse the work the module would have done.
    FailClosed,
    /// Skip the module and go on without it.
    FailOpen,
}

/// One `[[modules]]` entry, resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModuleConfig {
    /// The module's name (must equal its descriptor's name).
    pub name: String,
    /// Its file, resolved against the config file's directory.
    pub path: PathBuf,
    /// Optional sha256 pin, lowercase hex.
    pub sha256: Option<String>,
    /// Swap mode.
    pub mode: SwapMode,
    /// Failure policy.
    pub failure_policy: FailurePolicy,
    /// Flat key/value config handed to init.
    pub config: Vec<(String, String)>,
    /// Where it was declared (`file:line`), for messages.
    #[serde(skip)]
    pub origin: String,
}

/// A `[[modules]]` entry with `isolation = "process"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IsolatedConfig {
    /// The module's name.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// Optional sha256 pin.
    pub sha256: Option<String>,
    /// What requests see when it fails (a hook error, a crash, a hang).
    pub failure_policy: FailurePolicy,
    /// Its config, handed to init in the child.
    pub config: Vec<(String, String)>,
    /// A hook that takes longer fails (the child is killed and restarted).
    pub hook_timeout_ms: u64,
    /// How its child is confined (`[modules.sandbox]`).
    pub sandbox: Option<Sandbox>,
    /// Where it was declared.
    #[serde(skip)]
    pub origin: String,
}

/// `[modules.sandbox]` of an isolated module: what confines its child.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sandbox {
    /// `RLIMIT_AS`, MiB.
    pub address_space_mb: Option<u64>,
    /// `RLIMIT_CPU`: seconds of CPU time the child may use (then it is
    /// killed, and restarted like any crash).
    pub cpu_seconds: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub open_files: Option<u64>,
    /// `"confined"`: the child may read only what loading its module needs
    /// and `allow_read`, and write only its private directory (Landlock);
    /// `"any"` (the default): files as molt's user may.
    #[serde(default)]
    pub files: SandboxFiles,
    /// More paths it may read (and execute) with `files = "confined"`.
    #[serde(default)]
    pub allow_read: Vec<PathBuf>,
    /// Run the child as this user (molt must run as root): its private
    /// directory is its; the module file must be readable to it.
    pub user: Option<String>,
    /// `"restricted"`: a seccomp filter refuses new programs and processes,
    /// network sockets, other processes' memory and system administration
    /// (`docs/isolation.md`); `"any"` (the default): none.
    #[serde(default)]
    pub syscalls: SandboxSyscalls,
}

/// System calls a sandboxed child may make.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxSyscalls {
    /// Any.
    #[default]
    Any,
    /// A seccomp filter refuses what a hook module has no use for.
    Restricted,
}

/// File access of a sandboxed child.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxFiles {
    /// As molt's user may.
    #[default]
    Any,
    /// What loading needs, `allow_read`, and its private directory.
    Confined,
}
