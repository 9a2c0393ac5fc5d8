//! Shared pieces of molt's benches: module libraries, a runtime with the
//! probe module, and percentile reporting.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use hdrhistogram::Histogram;
use molt_runtime::module::{ModuleSpec, VersionRef};
use molt_runtime::{Runtime, RuntimeConfig};

/// `target/<profile>` of the running bench.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

/// The shared library of module `name`, building the workspace's modules once.
pub fn module_lib(name: &str) -> PathBuf {
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
        assert!(cmd.status().expect("cargo build").success(), "building the modules failed");
    });
    profile_dir().join(format!("lib{name}.so"))
}

/// The `molt` binary of this profile, built once.
pub fn molt_bin() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "molt-runtime", "--bin", "molt"]);
        if let Some(target) = profile_dir().parent() {
            cmd.arg("--target-dir").arg(target);
        }
        if profile_dir().file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().expect("cargo build").success(), "building molt failed");
    });
    profile_dir().join("molt")
}

/// A keep-alive upstream on loopback answering every request with a
/// 2-byte body, a thread per connection.
pub fn upstream() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let addr = l.local_addr().expect("its address");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = Vec::with_capacity(4096);
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// Whether process `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
}

/// A copy of module `name` differing only by trailing bytes: a distinct
/// file to swap in, as a rebuilt module would be.
pub fn variant(dir: &Path, name: &str, n: u32) -> PathBuf {
    use std::io::Write;
    let dst = dir.join(format!("lib{name}-v{n}.so"));
    std::fs::copy(module_lib(name), &dst).expect("copy module");
    let mut f = std::fs::OpenOptions::new().append(true).open(&dst).expect("open variant");
    write!(f, "\0molt-bench-variant-{n}\0").expect("append");
    dst
}

/// A runtime with `workers` workers and the probe module loaded.
pub fn probe_runtime(workers: usize) -> (Runtime, VersionRef) {
    probe_runtime_spin(workers, RuntimeConfig::default().spin)
}

/// Like [`probe_runtime`], with idle workers spinning `spin` before they park.
pub fn probe_runtime_spin(workers: usize, spin: Duration) -> (Runtime, VersionRef) {
    let run_dir = std::env::temp_dir().join(format!("molt-bench-{}", std::process::id()));
    let rt = Runtime::start(RuntimeConfig { workers, run_dir, spin, ..RuntimeConfig::default() }).expect("runtime");
    let v = rt.load(&ModuleSpec::new(module_lib("fixture_probe"))).expect("probe loads");
    (rt, v)
}

/// Wait for the next reply with `tag`.
pub fn expect(rt: &Runtime, tag: u64) -> molt_runtime::host::Reply {
    loop {
        let r = rt.next_reply(Duration::from_secs(30)).expect("reply within 30 s");
        if r.tag == tag {
            return r;
        }
    }
}

/// Percentiles of nanosecond samples.
pub struct Percentiles {
    /// Mechanism.
    pub name: String,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Mean.
    pub mean: f64,
    /// Samples.
    pub count: u64,
}

impl Percentiles {
    /// From samples in nanoseconds.
    pub fn of(name: &str, samples: &[u64]) -> Percentiles {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
        for &s in samples {
            h.record(s.max(1)).expect("record");
        }
        Percentiles {
            name: name.to_owned(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            mean: h.mean(),
            count: h.len(),
        }
    }

    /// A table row.
    pub fn row(&self) -> String {
        format!(
            "| {:<28} | {:>9} | {:>9} | {:>9} | {:>10.0} | {:>8} |",
            self.name, self.p50, self.p99, self.p999, self.mean, self.count
        )
    }

    /// The table header.
    pub fn header() -> &'static str {
        "| mechanism                    | p50 ns    | p99 ns    | p99.9 ns  | mean ns    | samples  |\n|---|---|---|---|---|---|"
    }
}
