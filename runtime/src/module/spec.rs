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
    /// Where it was declared.
    #[serde(skip)]
    pub origin: String,
}
