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
    /// Run as this user (uid, gid) from here on; `write` is given to it
    /// first. Needs molt to run as root.
    pub user: Option<(u32, u32)>,
}

/// The uid and gid of user `name`, from `/etc/passwd`.
pub fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            let uid = f[2].parse().map_err(|_| format!("/etc/passwd: user {name}'s uid {:?} is not a number", f[2]))?;
            let gid = f[3].parse().map_err(|_| format!("/etc/passwd: user {name}'s gid {:?} is not a number", f[3]))?;
            return Ok((uid, gid));
        }
    }
    Err(format!("no user {name:?} in /etc/passwd"))
}

/// Become user (uid, gid) for good, giving it `own` first. The process
/// must have one thread (Linux changes credentials per thread; a second
/// thread would keep root's).
fn become_user(uid: u32, gid: u32, own: &[PathBuf]) -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))?;
    let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")).map(str::trim);
    if threads != Some("1") {
        return Err(format!("cannot change user with {} threads running", threads.unwrap_or("?")));
    }
    let (u, g) = (rustix::process::Uid::from_raw(uid), rustix::process::Gid::from_raw(gid));
    for p in own {
        rustix::fs::chown(p, Some(u), Some(g)).map_err(|e| format!("cannot give {} to uid {uid}: {e}", p.display()))?;
    }
    rustix::thread::set_thread_groups(&[]).map_err(|e| format!("cannot drop supplementary groups: {e}"))?;
    rustix::thread::set_thread_res_gid(g, g, g)
        .map_err(|e| format!("cannot become gid {gid}: {e} (molt must run as root to use sandbox.user)"))?;
    rustix::thread::set_thread_res_uid(u, u, u)
        .map_err(|e| format!("cannot become uid {uid}: {e} (molt must run as root to use sandbox.user)"))?;
    if rustix::process::geteuid().as_raw() != uid {
        return Err(format!("still not uid {uid} after setresuid"));
    }
    Ok(())
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
    if let Some((uid, gid)) = c.user {
        become_user(uid, gid, &c.write)?;
        said.push(format!("uid {uid} gid {gid}"));
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
