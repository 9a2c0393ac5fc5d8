//! Shared helpers of the runtime's integration tests: real module libraries,
//! built by cargo (Rust modules) and by the molt-c-modules build script (C).
#![allow(dead_code)]

pub mod http;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `target/<profile>`, where cargo puts the workspace's libraries.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

/// Build every workspace module once per test process (a no-op when fresh).
fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--workspace", "--lib"]);
        // Build into the target directory these tests run from, however it was chosen.
        if let Some(target) = profile_dir().parent() {
            cmd.arg("--target-dir").arg(target);
        }
        if profile_dir().file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
        let status = cmd.status().expect("running cargo build for the modules");
        assert!(status.success(), "building the workspace modules failed");
    });
}

/// The shared library of module `name` (`hello`, `echo_c`, `fixture_init_panic`, ...).
pub fn module_lib(name: &str) -> PathBuf {
    ensure_built();
    let p = profile_dir().join(format!("lib{name}.so"));
    assert!(p.exists(), "module library {} was not built", p.display());
    p
}

/// A fresh run directory under the system temp dir, removed on drop.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn new(tag: &str) -> RunDir {
        let p = std::env::temp_dir().join(format!("molt-test-{tag}-{}-{}", std::process::id(), uuid_like()));
        std::fs::create_dir_all(&p).expect("create run dir");
        // A run dir must be private (molt refuses others).
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod run dir");
        RunDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uuid_like() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    t ^ N.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Whether `path` is mapped into this process, per /proc/self/maps.
pub fn mapped(path: &Path) -> bool {
    molt_runtime::sys::maps::is_mapped(path).expect("read /proc/self/maps")
}

/// A copy of module `name`'s library that differs from the original (and
/// from other variants) only by trailing bytes: a distinct file to swap in,
/// as a rebuilt module would be.
pub fn variant(dir: &Path, name: &str, n: u32) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dst = dir.join(format!("lib{name}-v{n}.so"));
    std::fs::copy(module_lib(name), &dst).expect("copy module");
    let mut f = std::fs::OpenOptions::new().append(true).open(&dst).expect("open variant");
    write!(f, "\0molt-test-variant-{n}\0").expect("append");
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dst
}

/// A module config entry.
pub fn module_cfg(name: &str, path: &Path, config: &[(&str, &str)]) -> molt_runtime::config::ModuleConfig {
    molt_runtime::config::ModuleConfig {
        name: name.to_owned(),
        path: path.to_owned(),
        sha256: None,
        mode: molt_runtime::config::SwapMode::Drain,
        failure_policy: molt_runtime::config::FailurePolicy::Restart,
        config: config.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        origin: "test".to_owned(),
    }
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// A two-worker runtime over `dir` (its state in `dir/state.molt`) with these
/// listeners, and `modules` loaded when there are any.
pub fn proxy_runtime(
    dir: &Path,
    http: Vec<molt_runtime::http::HttpSite>,
    tcp: Vec<molt_runtime::net::TcpRoute>,
    modules: &[molt_runtime::config::ModuleConfig],
) -> molt_runtime::Runtime {
    proxy_runtime_on(2, dir, http, tcp, modules)
}

/// [`proxy_runtime`] with `workers` workers.
pub fn proxy_runtime_on(
    workers: usize,
    dir: &Path,
    http: Vec<molt_runtime::http::HttpSite>,
    tcp: Vec<molt_runtime::net::TcpRoute>,
    modules: &[molt_runtime::config::ModuleConfig],
) -> molt_runtime::Runtime {
    let rt = molt_runtime::Runtime::start(molt_runtime::RuntimeConfig {
        workers,
        run_dir: dir.to_owned(),
        http,
        tcp,
        state: molt_runtime::runtime::StateConfig { path: Some(dir.join("state.molt")), size: 8 << 20, reset: false },
        ..molt_runtime::RuntimeConfig::default()
    })
    .expect("start the runtime");
    if !modules.is_empty() {
        rt.reload(modules).expect("load the modules");
    }
    rt
}

/// An HTTP listener on 127.0.0.1:0 with one route, `/`, to upstream group
/// `b` (`upstream`), calling `modules`.
pub fn one_route_site(upstream: std::net::SocketAddr, modules: &[&str]) -> molt_runtime::http::HttpSite {
    molt_runtime::http::HttpSite {
        name: "test".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        routes: vec![molt_runtime::http::HttpRoute {
            name: "all".into(),
            host: None,
            path: "/".into(),
            upstream: Some(0),
            modules: modules.iter().map(|m| (*m).to_owned()).collect(),
            retry_non_idempotent: false,
        }],
        groups: vec![("b".into(), vec![upstream])],
        limits: molt_runtime::http::HttpLimits::default(),
    }
}

/// An HTTP listener on 127.0.0.1:0 with one route, `/`, to the upstream
/// group `b` of `servers`, no modules, under `limits`.
pub fn group_site(
    servers: Vec<std::net::SocketAddr>,
    limits: molt_runtime::http::HttpLimits,
) -> molt_runtime::http::HttpSite {
    molt_runtime::http::HttpSite { groups: vec![("b".into(), servers)], limits, ..one_route_site(dead_addr(), &[]) }
}

/// An address nothing listens on.
pub fn dead_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A two-worker proxy runtime over `dir` serving `site` alone, and its address.
pub fn start_site(dir: &RunDir, site: molt_runtime::http::HttpSite) -> (molt_runtime::Runtime, std::net::SocketAddr) {
    let rt = proxy_runtime(dir.path(), vec![site], vec![], &[]);
    let addr = rt.http_addrs()[0];
    (rt, addr)
}

/// Process-wide figures (RSS, open fds) are measured in a process of their
/// own, never beside the other tests of a binary. Call first in such a
/// test: in the test process it runs test `name` alone in a child copy of
/// this binary, asserts that it passed and returns true (the caller
/// returns); in the child it returns false and the body runs.
pub fn in_own_process(name: &str) -> bool {
    const CHILD: &str = "MOLT_TEST_OWN_PROCESS";
    if std::env::var_os(CHILD).is_some() {
        return false;
    }
    let exe = std::env::current_exe().expect("test executable path");
    let out = Command::new(exe)
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .expect("running the test in a process of its own");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} in its own process: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Whether process `pid` runs (a zombie serves nothing: it does not).
#[allow(dead_code)]
pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// What `molt run` printed before it serves: its listeners' addresses (port
/// 0 resolved).
pub struct Banner {
    pub http: Option<std::net::SocketAddr>,
    pub tcp: Vec<std::net::SocketAddr>,
    pub admin: Option<std::net::SocketAddr>,
}

/// `molt run --config <cfg> --for <secs>` (the test binary's own molt),
/// stdout piped for its banner, which is read (see [`banner`]) before this
/// returns: the process serves then.
pub fn molt_run(cfg: &Path, secs: u32) -> (std::process::Child, Banner) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_molt"))
        .args(["run", "--config"])
        .arg(cfg)
        .args(["--for", &secs.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start molt");
    let b = banner(&mut child);
    (child, b)
}

/// Read `child`'s banner from its piped stdout up to the `control socket:`
/// line (the last one), then keep draining the pipe in a thread (later
/// processes of an upgrade write to the same pipe).
pub fn banner(child: &mut std::process::Child) -> Banner {
    use std::io::BufRead;
    let out = child.stdout.take().expect("molt's stdout is piped");
    let mut lines = std::io::BufReader::new(out).lines();
    let mut b = Banner { http: None, tcp: Vec::new(), admin: None };
    let addr = |rest: &str, sep: char| rest.split(sep).next().and_then(|a| a.parse().ok());
    loop {
        let line = lines.next().expect("molt printed its banner").expect("molt's stdout");
        if line.starts_with("control socket:") {
            break;
        }
        if let Some(rest) = line.strip_prefix("admin: http://") {
            b.admin = addr(rest, '/');
        } else if let Some(rest) = line.strip_prefix("http: http://") {
            b.http = addr(rest, '/');
        } else if let Some(rest) = line.strip_prefix("tcp proxy: ") {
            b.tcp.extend(addr(rest, ' '));
        }
    }
    std::thread::spawn(move || for _ in lines {});
    b
}
