//! Swap latency: from the reload request to the first event handled by the
//! new version (reload: hash, private copy, dlopen, handshake, init, publish;
//! then a continuation of the new version is created and answers a
//! message), p50/p99 over 100 swaps, for a small C module (echo_c) and a
//! Rust module (fixture_probe). Also the reload call alone, and the latency
//! of events in flight during swaps versus steady state.

use std::time::{Duration, Instant};

use fixture_probe::tag;
use molt_benches::{Percentiles, module_lib, variant};
use molt_runtime::config::{FailurePolicy, ModuleConfig, SwapMode};
use molt_runtime::{Runtime, RuntimeConfig};

const SWAPS: usize = 100;

fn cfg(name: &str, path: &std::path::Path) -> ModuleConfig {
    ModuleConfig {
        name: name.into(),
        path: path.into(),
        sha256: None,
        mode: SwapMode::Drain,
        failure_policy: FailurePolicy::Restart,
        config: vec![],
        origin: "bench".into(),
    }
}

fn swap_latency(rt: &Runtime, name: &str, files: &[std::path::PathBuf; 2], msg_tag: u64) -> (Vec<u64>, Vec<u64>) {
    rt.reload(&[cfg(name, &files[0])]).unwrap();
    let (mut total, mut reload_only) = (Vec::new(), Vec::new());
    for s in 1..=SWAPS + 5 {
        let t0 = Instant::now();
        rt.reload(&[cfg(name, &files[s % 2])]).unwrap();
        let t_reload = t0.elapsed();
        let v = rt.active(name).unwrap();
        let c = rt.spawn(&v, 1, 0).unwrap();
        rt.send(c, msg_tag, b"first").unwrap();
        loop {
            let r = rt.next_reply(Duration::from_secs(10)).expect("reply");
            if r.tag == msg_tag && r.version == v.id() {
                break;
            }
        }
        let t_first = t0.elapsed();
        rt.destroy(c).unwrap();
        if s > 5 {
            total.push(t_first.as_nanos() as u64);
            reload_only.push(t_reload.as_nanos() as u64);
        }
    }
    (total, reload_only)
}

fn main() {
    let files_dir = std::env::temp_dir().join(format!("molt-bench-swap-{}", std::process::id()));
    std::fs::create_dir_all(&files_dir).unwrap();
    let run_dir = files_dir.join("run");
    let rt = Runtime::start(RuntimeConfig { workers: 2, run_dir, ..RuntimeConfig::default() }).unwrap();
    let echo = [variant(&files_dir, "echo_c", 0), variant(&files_dir, "echo_c", 1)];
    let probe = [variant(&files_dir, "fixture_probe", 0), variant(&files_dir, "fixture_probe", 1)];
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len() / 1024).unwrap_or(0);
    println!("\nswap latency, {SWAPS} swaps each (2 workers)\n{}", Percentiles::header());
    let (t, r) = swap_latency(&rt, "echo_c", &echo, 7);
    println!("{}", Percentiles::of(&format!("echo_c ({} KiB): to first event", size(&echo[0])), &t).row());
    println!("{}", Percentiles::of("echo_c: reload call alone", &r).row());
    let (t, r) = swap_latency(&rt, "fixture_probe", &probe, tag::ECHO);
    println!("{}", Percentiles::of(&format!("fixture_probe ({} KiB): to first event", size(&probe[0])), &t).row());
    println!("{}", Percentiles::of("fixture_probe: reload call alone", &r).row());

    // Events in flight during swaps: a continuation of a module that is not
    // swapped, timed round trip by round trip, while echo_c swaps.
    let (rt2, v) = molt_benches::probe_runtime(2);
    let c = rt2.spawn(&v, 1, 0).unwrap();
    molt_benches::expect(&rt2, tag::STARTED);
    let rtt = |rt: &Runtime, n: usize| -> Vec<u64> {
        (0..n)
            .map(|_| {
                let t = Instant::now();
                rt.send(c, tag::ECHO, b"x").unwrap();
                molt_benches::expect(rt, tag::ECHO);
                t.elapsed().as_nanos() as u64
            })
            .collect()
    };
    let steady = rtt(&rt2, 20_000);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let during = std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                n += 1;
                rt2.reload(&[cfg("echo_c", &echo[n % 2])]).unwrap();
            }
        });
        let d = rtt(&rt2, 20_000);
        stop.store(true, std::sync::atomic::Ordering::Release);
        d
    });
    println!("\nhost -> continuation -> host round trip of a module that is not swapped");
    println!("{}", Percentiles::header());
    println!("{}", Percentiles::of("steady state", &steady).row());
    println!("{}", Percentiles::of("while echo_c swaps back to back", &during).row());
    let _ = std::fs::remove_dir_all(&files_dir);
    let _ = module_lib;
}
