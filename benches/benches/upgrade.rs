//! Binary upgrade, measured on the real binary (`cargo bench -p molt-benches
//! --bench upgrade`): how long an upgrade takes (the request, the new
//! process taking over, the old one gone), and the latency of requests
//! during upgrades against steady state, in one run.
//!
//! molt serves `/` with the `hello` module on 2 workers; 4 keep-alive
//! clients (closed loop, a new connection when asked to close) send GETs
//! throughout. First 3 s of steady state, then 10 upgrades, 300 ms apart.
//! A request counts as "during an upgrade" when it started between an
//! upgrade's request and the old process's exit. `docs/BENCHMARKS.md` has
//! the numbers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use molt_benches::{Percentiles, alive, module_lib, molt_bin};
use serde_json::json;

const CLIENTS: usize = 4;
const UPGRADES: usize = 10;

/// One keep-alive client: (start offset from `t0`, latency) per request, in ns.
fn client(addr: SocketAddr, t0: Instant, stop: Arc<AtomicBool>, failed: Arc<AtomicU64>) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(1 << 20);
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let (mut s, mut buf) = match conn.take() {
            Some(c) => c,
            None => match TcpStream::connect(addr) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    (s, Vec::new())
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        let start = Instant::now();
        if s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n").is_err() {
            failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // The hello module's answer: a head with Content-Length, then the body.
        let done = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let close = head.contains("connection: close");
                    let ok = head.starts_with("http/1.1 200");
                    buf.drain(..end + 4 + len);
                    break Some((ok, close));
                }
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        match done {
            Some((true, close)) => {
                out.push((start.duration_since(t0).as_nanos() as u64, start.elapsed().as_nanos() as u64));
                if !close {
                    conn = Some((s, buf));
                }
            }
            _ => {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let molt = molt_bin();
    let dir = std::env::temp_dir().join(format!("molt-bench-upgrade-{}", std::process::id()));
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("molt.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\nworkers = 2\nrun_dir = \"{}\"\ndrain_deadline_ms = 5000\n\n[[modules]]\nname = \"hello\"\npath = \"{}\"\n\n[[http]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[http.routes]]\npath = \"/\"\nmodules = [\"hello\"]\n",
            run_dir.display(),
            module_lib("hello").display()
        ),
    )
    .unwrap();
    let mut first = Command::new(&molt)
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--for", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let l = lines.next().expect("banner").unwrap();
        if let Some(rest) = l.strip_prefix("http: http://") {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let socket = run_dir.join("ctl.sock");

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, failed) = (stop.clone(), failed.clone());
            std::thread::spawn(move || client(addr, t0, stop, failed))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let steady_until = t0.elapsed().as_nanos() as u64;
    let mut windows = Vec::new();
    let (mut took, mut gone, mut ready) = (Vec::new(), Vec::new(), Vec::new());
    let mut pids = vec![first.id()];
    for _ in 0..UPGRADES {
        let old = *pids.last().unwrap();
        let start = Instant::now();
        let r = molt_runtime::ctl::client::request_value(&socket, &json!({"cmd": "upgrade"}))
            .unwrap_or_else(|e| panic!("upgrade failed: {e}"));
        took.push(start.elapsed().as_nanos() as u64);
        let steps = r["steps"].as_array().unwrap();
        let ms: f64 = steps.iter().filter(|s| s["step"] != "check").map(|s| s["ms"].as_f64().unwrap()).sum();
        ready.push((ms * 1e6) as u64);
        pids.push(r["new_pid"].as_u64().unwrap() as u32);
        while alive(old) {
            std::thread::sleep(Duration::from_millis(1));
        }
        gone.push(start.elapsed().as_nanos() as u64);
        windows.push((
            start.duration_since(t0).as_nanos() as u64,
            start.duration_since(t0).as_nanos() as u64 + *gone.last().unwrap(),
        ));
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let samples: Vec<(u64, u64)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let steady: Vec<u64> = samples.iter().filter(|(at, _)| *at < steady_until).map(|s| s.1).collect();
    let during: Vec<u64> =
        samples.iter().filter(|(at, _)| windows.iter().any(|(a, b)| at >= a && at <= b)).map(|s| s.1).collect();
    let max = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
    println!(
        "binary upgrade, {UPGRADES} upgrades, {CLIENTS} keep-alive clients, 2 workers, failed requests: {}",
        failed.load(Ordering::Relaxed)
    );
    println!("{}", Percentiles::header());
    for (name, v) in [
        ("upgrade: new process took over (steps after check)", &ready),
        ("upgrade: request to reply (took over)", &took),
        ("upgrade: request to old process gone", &gone),
        ("request latency, steady", &steady),
        ("request latency, during upgrades", &during),
    ] {
        println!("{}  max {}", Percentiles::of(name, v).row(), max(v));
    }
    let last = *pids.last().unwrap();
    let _ = Command::new("kill").arg(last.to_string()).status();
    let until = Instant::now() + Duration::from_secs(10);
    while alive(last) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = first.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
