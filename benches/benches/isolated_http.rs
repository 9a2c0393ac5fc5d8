//! The HTTP proxy with a module in process next to the same module isolated
//! (`isolation = "process"`), in one run (`cargo bench -p molt-benches
//! --bench isolated_http`): the real `molt` binary, 2 workers, a route to a
//! keep-alive upstream (an in-process thread per connection) through
//! `header_rewrite` (C, REQUEST and RESPONSE hooks), 4 keep-alive clients in
//! a closed loop for 4 s per configuration, alternating twice.
//! `docs/BENCHMARKS.md` has the numbers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use molt_benches::{Percentiles, module_lib, molt_bin, upstream};

const CLIENTS: usize = 4;
const ROUND: Duration = Duration::from_secs(4);

/// Latencies (ns) of one keep-alive client until `stop`.
fn client(addr: SocketAddr, stop: Arc<AtomicBool>, failed: Arc<AtomicU64>) -> Vec<u64> {
    let mut out = Vec::with_capacity(1 << 20);
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        if s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n").is_err() {
            failed.fetch_add(1, Ordering::Relaxed);
            return out;
        }
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
                && buf.len() >= end + 6
            {
                if !buf.starts_with(b"HTTP/1.1 200") {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                buf.drain(..end + 6);
                break;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return out;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        out.push(t.elapsed().as_nanos() as u64);
    }
    out
}

fn round(molt: &PathBuf, up: SocketAddr, isolated: bool, i: usize) -> (f64, Vec<u64>, u64) {
    let dir = std::env::temp_dir().join(format!("molt-bench-isohttp-{}-{i}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("molt.toml");
    let iso = if isolated { "isolation = \"process\"\n" } else { "" };
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\nworkers = 2\nrun_dir = \"{}\"\n\n[[modules]]\nname = \"header_rewrite\"\npath = \"{}\"\n{iso}[modules.config]\n\"request.set.X-Rw\" = \"on\"\n\"response.set.X-Served-By\" = \"molt\"\n\n[[http]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[http.upstreams]\nback = [\"{up}\"]\n[[http.routes]]\npath = \"/\"\nupstream = \"back\"\nmodules = [\"header_rewrite\"]\n",
            dir.join("run").display(),
            module_lib("header_rewrite").display(),
        ),
    )
    .unwrap();
    let mut child = Command::new(molt)
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--for", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let l = lines.next().expect("banner").unwrap();
        if let Some(rest) = l.strip_prefix("http: http://") {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (s, f) = (stop.clone(), failed.clone());
            std::thread::spawn(move || client(addr, s, f))
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(ROUND);
    stop.store(true, Ordering::Relaxed);
    let lat: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let rps = lat.len() as f64 / t0.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    (rps, lat, failed.load(Ordering::Relaxed))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let molt = molt_bin();
    let up = upstream();
    println!(
        "HTTP proxy, header_rewrite in process vs isolated, {CLIENTS} keep-alive clients, 2 workers, {ROUND:?} rounds"
    );
    println!("{}", Percentiles::header());
    for i in 0..4 {
        let isolated = i % 2 == 1;
        let (rps, lat, failed) = round(&molt, up, isolated, i);
        let name = if isolated { "isolated" } else { "in_process" };
        println!("{}  req/s {rps:.0}  failed {failed}", Percentiles::of(&format!("round {i} {name}"), &lat).row());
    }
}
