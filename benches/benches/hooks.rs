//! The hook path, two ways, with a chain of N no-op modules (N = 0, 1, 3):
//!
//! * `hook_path`: in process, on the worker's thread, what a transaction
//!   does for its modules (a continuation per module, the REQUEST, UPSTREAM
//!   and RESPONSE hooks, TXN_END, END) without sockets. The per-module cost
//!   is (time with 3 − time with 0) / 3.
//! * `request`: one HTTP request through the proxy on one worker over
//!   loopback, in front of an in-process upstream, keep-alive on both sides
//!   (dominated by the three threads' wake-ups).
//!
//! `docs/BENCHMARKS.md` has the numbers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use molt_benches::upstream;
use molt_runtime::http::{HttpLimits, HttpRoute, HttpSite};
use molt_runtime::module::{FailurePolicy, ModuleConfig, SwapMode};
use molt_runtime::{Runtime, RuntimeConfig};

const NOOPS: [&str; 3] = ["fixture_noop_a", "fixture_noop_b", "fixture_noop_c"];

fn runtime(n: usize, up: SocketAddr) -> Runtime {
    let run_dir = std::env::temp_dir().join(format!("molt-bench-hooks-{}-{n}", std::process::id()));
    let site = HttpSite {
        name: "bench".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        routes: vec![HttpRoute {
            name: "all".into(),
            host: None,
            path: "/".into(),
            upstream: Some(0),
            modules: NOOPS[..n].iter().map(|m| (*m).to_owned()).collect(),
            retry_non_idempotent: false,
        }],
        groups: vec![("up".into(), vec![up])],
        limits: HttpLimits::default(),
    };
    let rt = Runtime::start(RuntimeConfig { workers: 1, run_dir, http: vec![site], ..RuntimeConfig::default() })
        .expect("runtime");
    let modules: Vec<ModuleConfig> = NOOPS[..n]
        .iter()
        .map(|m| ModuleConfig {
            name: (*m).to_owned(),
            path: molt_benches::module_lib(m),
            sha256: None,
            mode: SwapMode::Drain,
            failure_policy: FailurePolicy::Restart,
            config: vec![],
            origin: "bench".into(),
        })
        .collect();
    rt.reload(&modules).expect("modules load");
    rt
}

/// Send a request and read its whole response (a 2-byte body).
fn round(c: &mut TcpStream, buf: &mut Vec<u8>) {
    c.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n").unwrap();
    buf.clear();
    let mut chunk = [0u8; 1024];
    loop {
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "the proxy closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        if buf.ends_with(b"\r\n\r\nok") {
            return;
        }
    }
}

fn in_process(c: &mut Criterion) {
    let run_dir = std::env::temp_dir().join(format!("molt-bench-hookpath-{}", std::process::id()));
    let rt = Runtime::start(RuntimeConfig { workers: 1, run_dir, ..RuntimeConfig::default() }).expect("runtime");
    let versions: Vec<_> = NOOPS
        .iter()
        .map(|m| rt.load(&molt_runtime::module::ModuleSpec::new(molt_benches::module_lib(m))).expect("loads"))
        .collect();
    let mut g = c.benchmark_group("hook_path");
    for n in [0usize, 1, 3] {
        let mods: Vec<_> = versions[..n].to_vec();
        g.bench_with_input(BenchmarkId::new("txn_through_noop_modules", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mods = mods.clone();
                rt.on_worker(0, move |w| molt_runtime::http::hook_path_bench(w, &mods, iters, false, &[]))
                    .unwrap_or_default()
            });
        });
    }
    g.finish();
    drop(versions);
    rt.shutdown();
}

fn hooks(c: &mut Criterion) {
    let up = upstream();
    let mut g = c.benchmark_group("request");
    for n in [0usize, 1, 3] {
        let rt = runtime(n, up);
        let mut client = TcpStream::connect(rt.http_addrs()[0]).unwrap();
        client.set_nodelay(true).unwrap();
        let mut buf = Vec::new();
        round(&mut client, &mut buf);
        g.bench_with_input(BenchmarkId::new("request_through_noop_modules", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    round(&mut client, &mut buf);
                }
                t.elapsed()
            });
        });
        drop(client);
        rt.shutdown();
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = in_process, hooks
}
criterion_main!(benches);
