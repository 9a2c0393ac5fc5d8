//! State region costs.
//!
//! 1. Migrating a 64 MiB block, the way the host does it (allocate and zero
//!    the new block, commit it as migrating, the migration's copy, commit it
//!    live and the old one retired, free the old one), next to a plain
//!    memcpy of 64 MiB measured in the same run.
//! 2. The pause a schema-changing swap imposes: round trips to the migrating
//!    module (`counter`, schema 1 <-> 2) and to another module
//!    (`fixture_probe`) timed back to back while `counter` swaps schema 20
//!    times; the worst round trip of each inside the swap windows.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fixture_probe::tag;
use molt_benches::{Percentiles, module_lib, variant};
use molt_runtime::config::{FailurePolicy, ModuleConfig, SwapMode};
use molt_runtime::state::{Opened, Region};
use molt_runtime::{Runtime, RuntimeConfig};

const MIB64: usize = 64 << 20;

fn migration(dir: &std::path::Path) {
    let path = dir.join("bench.state");
    let r = Region::open_file(&path, 3 * MIB64 as u64 + (1 << 20), true).unwrap();
    let Opened::Created { handle, .. } = r.open_block("bench", "big", 1, MIB64 as u64).unwrap() else { panic!() };
    let (p, _) = r.ptr("bench", handle).unwrap();
    // SAFETY: the block is 64 MiB in the mapping and nobody else uses it.
    unsafe { std::ptr::write_bytes(p, 0x5A, MIB64) };
    let src_vec = vec![0x5Au8; MIB64];
    let mut dst_vec = vec![0u8; MIB64];
    let mut rows = Vec::new();
    for round in 0..5 {
        let t = Instant::now();
        dst_vec.copy_from_slice(&src_vec);
        std::hint::black_box(&dst_vec);
        let memcpy = t.elapsed();
        let (from, to) = if round % 2 == 0 { (1, 2) } else { (2, 1) };
        let t = Instant::now();
        let Opened::NeedsMigration { src, dst, .. } = r.open_block("bench", "big", to, MIB64 as u64).unwrap() else {
            panic!()
        };
        let (s, _) = r.ptr("bench", src).unwrap();
        let (d, _) = r.ptr("bench", dst).unwrap();
        // SAFETY: two distinct live 64 MiB blocks in the mapping.
        unsafe { std::ptr::copy_nonoverlapping(s, d, MIB64) };
        r.commit_migration(src, dst).unwrap();
        r.release_retired("bench", from);
        let migrate = t.elapsed();
        rows.push((memcpy, migrate));
    }
    println!("\n64 MiB block migration vs memcpy (state file in {})", dir.display());
    println!("| round | memcpy ms | GB/s | migration ms | GB/s | ratio |\n|---|---|---|---|---|---|");
    for (i, (m, g)) in rows.iter().enumerate() {
        let gbs = |d: &Duration| MIB64 as f64 / d.as_secs_f64() / 1e9;
        println!(
            "| {i} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            m.as_secs_f64() * 1e3,
            gbs(m),
            g.as_secs_f64() * 1e3,
            gbs(g),
            g.as_secs_f64() / m.as_secs_f64()
        );
    }
}

fn cfg(path: &std::path::Path) -> Vec<ModuleConfig> {
    vec![ModuleConfig {
        name: "counter".into(),
        path: path.into(),
        sha256: None,
        mode: SwapMode::Upgrade,
        failure_policy: FailurePolicy::Restart,
        config: vec![],
        origin: "bench".into(),
    }]
}

type Samples = Mutex<(Vec<(Instant, u64)>, Vec<(Instant, u64)>)>;

/// Round trips to `target` with `tag`, one at a time, until `stop`.
fn timed(
    rt: &Runtime,
    stop: &AtomicBool,
    samples: &Samples,
    (target, t): (u64, u64),
    rx: &crossbeam_channel::Receiver<()>,
    which: usize,
) {
    while !stop.load(Ordering::Acquire) {
        let t0 = Instant::now();
        rt.send(target, t, b"x").unwrap();
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => {}
            // The router stopped: the run is over.
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                let st: Vec<String> = (0..2)
                    .map(|i| {
                        let w = rt.worker_stats(i).unwrap();
                        format!(
                            "w{i}: dispatched {} stale {} errors {}",
                            w.dispatched.load(Ordering::Relaxed),
                            w.stale_dropped.load(Ordering::Relaxed),
                            w.errors.load(Ordering::Relaxed)
                        )
                    })
                    .collect();
                panic!("no reply from {} within 10 s; {st:?}", if which == 0 { "counter" } else { "probe" });
            }
        }
        let ns = t0.elapsed().as_nanos() as u64;
        let mut g = samples.lock().unwrap();
        if which == 0 { g.0.push((t0, ns)) } else { g.1.push((t0, ns)) }
    }
}

fn pause(dir: &std::path::Path) {
    let rt =
        Runtime::start(RuntimeConfig { workers: 2, run_dir: dir.join("run"), ..RuntimeConfig::default() }).unwrap();
    let v1 = variant(dir, "counter", 0);
    let v2 = variant(dir, "counter_v2", 0);
    rt.reload(&cfg(&v1)).unwrap();
    let counter = rt.spawn(&rt.active("counter").unwrap(), 0, 0).unwrap();
    let probe_v = rt.load(&molt_runtime::module::ModuleSpec::new(module_lib("fixture_probe"))).unwrap();
    let probe = rt.spawn(&probe_v, 1, 0).unwrap();
    let (tx_c, rx_c) = crossbeam_channel::unbounded::<()>();
    let (tx_p, rx_p) = crossbeam_channel::unbounded::<()>();
    let stop = AtomicBool::new(false);
    let windows = Mutex::new(Vec::<(Instant, Instant)>::new());
    let samples: Samples = Mutex::new((Vec::new(), Vec::new()));
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                match rt.next_reply(Duration::from_millis(10)) {
                    // Route by sender: the counter's increment and the probe's
                    // ECHO share tag 1.
                    Some(r) if r.from == counter => tx_c.send(()).unwrap(),
                    Some(r) if r.from == probe => tx_p.send(()).unwrap(),
                    _ => {}
                }
            }
        });
        let (rt, stop, samples) = (&rt, &stop, &samples);
        let (rx_c, rx_p) = (&rx_c, &rx_p);
        s.spawn(move || timed(rt, stop, samples, (counter, 1), rx_c, 0));
        s.spawn(move || timed(rt, stop, samples, (probe, tag::ECHO), rx_p, 1));
        std::thread::sleep(Duration::from_millis(100));
        for i in 0..20 {
            let t0 = Instant::now();
            rt.reload(&cfg(if i % 2 == 0 { &v2 } else { &v1 })).unwrap();
            windows.lock().unwrap().push((t0, Instant::now()));
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Release);
    });
    let windows = windows.into_inner().unwrap();
    let (c, p) = samples.into_inner().unwrap();
    let inside = |v: &[(Instant, u64)]| -> Vec<u64> {
        v.iter()
            .filter(|(t, ns)| windows.iter().any(|(a, b)| *t + Duration::from_nanos(*ns) >= *a && *t <= *b))
            .map(|x| x.1)
            .collect()
    };
    let outside = |v: &[(Instant, u64)]| -> Vec<u64> {
        v.iter()
            .filter(|(t, ns)| !windows.iter().any(|(a, b)| *t + Duration::from_nanos(*ns) >= *a && *t <= *b))
            .map(|x| x.1)
            .collect()
    };
    let swap_ms: Vec<u64> = windows.iter().map(|(a, b)| (*b - *a).as_micros() as u64).collect();
    println!(
        "\npause of a schema-changing swap (counter 1 <-> 2, 20 swaps; swap p50 {} us, max {} us)",
        {
            let mut s = swap_ms.clone();
            s.sort();
            s[s.len() / 2]
        },
        swap_ms.iter().max().unwrap()
    );
    println!("{}", Percentiles::header());
    for (name, v) in [
        ("counter (migrating), in swaps", inside(&c)),
        ("counter, outside swaps", outside(&c)),
        ("probe (other module), in swaps", inside(&p)),
        ("probe, outside swaps", outside(&p)),
    ] {
        let max = v.iter().max().copied().unwrap_or(0);
        println!("{}  max {} ns", Percentiles::of(name, &v).row(), max);
    }
    drop(probe_v);
    rt.shutdown();
}

fn main() {
    let dir = std::env::temp_dir().join(format!("molt-bench-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    migration(&dir);
    pause(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}
