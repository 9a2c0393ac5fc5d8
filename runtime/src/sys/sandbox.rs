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
    /// A seccomp filter refusing what a hook module has no use for: new
    /// programs and processes, other processes' memory, network sockets,
    /// and the system's administration.
    pub restrict_syscalls: bool,
}

/// The seccomp filters of [`Confinement::restrict_syscalls`]: refused with
/// EPERM: execve, execveat, fork, vfork, clone without CLONE_THREAD (a
/// thread may still be made), ptrace, process_vm_readv/writev, socket for
/// AF_INET, AF_INET6 and AF_PACKET, mount, umount2, pivot_root, chroot,
/// setns, unshare, module loading, kexec, reboot, bpf, perf_event_open and
/// the kernel keyring; clone3 gets ENOSYS (its flags cannot be looked at,
/// and the C library then makes threads with clone).
fn restrict_syscalls() -> Result<(), String> {
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
        TargetArch,
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("no seccomp filter for {}: {e}", std::env::consts::ARCH))?;
    let bad = |e: seccompiler::BackendError| format!("seccomp filter: {e}");
    let when = |arg: u8, op: SeccompCmpOp, v: u64| -> Result<SeccompRule, String> {
        SeccompRule::new(vec![SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, v).map_err(bad)?]).map_err(bad)
    };
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> = std::collections::BTreeMap::new();
    #[cfg(target_arch = "x86_64")]
    for n in [libc::SYS_fork, libc::SYS_vfork] {
        rules.insert(n, vec![]);
    }
    for n in [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_setns,
        libc::SYS_unshare,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_reboot,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
    ] {
        rules.insert(n, vec![]);
    }
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(libc::SYS_clone, vec![when(0, SeccompCmpOp::MaskedEq(thread), 0)?]);
    rules.insert(
        libc::SYS_socket,
        vec![
            when(0, SeccompCmpOp::Eq, libc::AF_INET as u64)?,
            when(0, SeccompCmpOp::Eq, libc::AF_INET6 as u64)?,
            when(0, SeccompCmpOp::Eq, libc::AF_PACKET as u64)?,
        ],
    );
    let deny =
        SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch).map_err(bad)?;
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(bad)?;
    for f in [clone3, deny] {
        let prog: BpfProgram = f.try_into().map_err(bad)?;
        seccompiler::apply_filter(&prog).map_err(|e| format!("cannot apply the seccomp filter: {e}"))?;
    }
    Ok(())
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
    if c.restrict_syscalls {
        restrict_syscalls()?;
        said.push("syscalls restricted (seccomp)".into());
    }
    Ok(said.join("; "))
}
