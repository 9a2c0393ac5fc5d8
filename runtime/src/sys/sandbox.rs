//! Confining an isolated module's child process (`docs/isolation.md`,
//! "Sandbox"): resource limits, no new privileges, and Landlock rules on
//! what files it may touch. Applied in the child before its module loads,
//! so the module's `init` and every callback run confined.

use std::path::{Path, PathBuf};

use landlock::{ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, path_beneath_rules};

/// What to confine.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Confinement {
    /// `RLIMIT_AS`, bytes.
    pub address_space: Option<u64>,
    /// `RLIMIT_CPU`, seconds of CPU time (then SIGXCPU, then SIGKILL).
    pub cpu_seconds: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub open_files: Option<u64>,
    /// Landlock: no file access beyond `read` (read and execute) and
    /// `write` (anything) and what loading a library needs.
    pub confine_files: bool,
    /// Readable paths (with what loading needs: the module file, system
    /// library directories, `/proc`).
    pub read: Vec<PathBuf>,
    /// Paths it may read, write and create in (its private directory).
    pub write: Vec<PathBuf>,
}

/// Directories and files a process loading a shared library reads.
const LOADER_READS: &[&str] =
    &["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/etc/ld.so.cache", "/proc", "/dev/urandom"];

/// Set `no_new_privs` alone (every module child has it).
pub fn no_new_privs() -> Result<String, String> {
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    Ok("no_new_privs".into())
}

/// Apply `c` to this process (its calling thread and whatever it starts
/// afterwards); a line saying what is enforced.
pub fn confine(c: &Confinement) -> Result<String, String> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let mut said = Vec::new();
    for (what, resource, v) in [
        ("address space", Resource::As, c.address_space),
        ("cpu seconds", Resource::Cpu, c.cpu_seconds),
        ("open files", Resource::Nofile, c.open_files),
    ] {
        if let Some(v) = v {
            setrlimit(resource, Rlimit { current: Some(v), maximum: Some(v) })
                .map_err(|e| format!("cannot limit {what} to {v}: {e}"))?;
            said.push(format!("{what} {v}"));
        }
    }
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    said.push("no_new_privs".into());
    if c.confine_files {
        let abi = ABI::V5;
        let read: Vec<&Path> = LOADER_READS
            .iter()
            .map(Path::new)
            .chain(c.read.iter().map(PathBuf::as_path))
            .filter(|p| p.exists())
            .collect();
        let status = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))
            .and_then(|r| r.create())
            .and_then(|r| r.add_rules(path_beneath_rules(&read, AccessFs::from_read(abi))))
            .and_then(|r| r.add_rules(path_beneath_rules(&c.write, AccessFs::from_all(abi))))
            .and_then(|r| r.restrict_self())
            .map_err(|e| format!("cannot confine file access (Landlock): {e}"))?;
        said.push(
            match status.ruleset {
                RulesetStatus::FullyEnforced => "files confined (Landlock)",
                RulesetStatus::PartiallyEnforced => "files partly confined (Landlock, an older kernel ABI)",
                RulesetStatus::NotEnforced => "files NOT confined (this kernel has no Landlock)",
            }
            .into(),
        );
    }
    Ok(said.join("; "))
}
