//! Swapping HTTP modules under load: header_rewrite (C) and router (Rust)
//! get a new version every 100 ms while keep-alive clients send requests;
//! no request fails, every transaction is handled by one version of each
//! module from its request to its response, and transactions that began
//! before a swap finish on the version they began on.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::http::{Client, backend};
use common::{RunDir, module_cfg, module_lib};
use molt_runtime::config::ModuleConfig;

fn modules(generation: u64) -> Vec<ModuleConfig> {
    let mark = format!("g{generation}");
    vec![
        module_cfg(
            "header_rewrite",
            &module_lib("header_rewrite"),
            &[("request.set.X-Rw", &mark), ("response.set.X-Rw-Resp", &mark)],
        ),
        module_cfg("router", &module_lib("router"), &[("default", "b"), ("mark", &mark)]),
    ]
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Responses whose marks came from a generation older than the one
    /// active when the response arrived: transactions that crossed a swap.
    crossed: AtomicU64,
}

fn gen_of(mark: &str) -> u64 {
    mark.trim_start_matches('g').parse().unwrap_or(u64::MAX)
}

/// Check one response: same header_rewrite version at request and response,
/// same router version at request and response, and both from one reload.
fn check(r: &common::http::Resp, active: u64, t: &Tally) -> Result<(), String> {
    let rw_req = r.header("X-Seen-X-Rw").ok_or("no X-Rw seen by the backend")?;
    let rw_resp = r.header("X-Rw-Resp").ok_or("no X-Rw-Resp")?;
    let rt_req = r.header("X-Seen-X-Router-Mark").ok_or("no router mark seen by the backend")?;
    let rt_resp = r.header("X-Router-Mark").ok_or("no router mark on the response")?;
    if rw_req != rw_resp || rt_req != rt_resp || rw_req != rt_req {
        return Err(format!("mixed versions: rewrite {rw_req}/{rw_resp}, router {rt_req}/{rt_resp}"));
    }
    if gen_of(&rw_resp) < active {
        t.crossed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[test]
fn swaps_every_100ms_under_load_lose_nothing() {
    let dir = RunDir::new("http-swap");
    let (b, bs) = backend("b");
    let site = common::one_route_site(b, &["header_rewrite", "router"]);
    let rt = common::proxy_runtime(dir.path(), vec![site], vec![], &[]);
    rt.reload(&modules(1)).unwrap();
    let addr: SocketAddr = rt.http_addrs()[0];
    let active = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    // 12 keep-alive clients; every 50th request reconnects; one in four
    // clients asks for a 250 ms upstream delay, so its transactions span swaps.
    for i in 0..12 {
        let (active, stop, tally) = (active.clone(), stop.clone(), tally.clone());
        clients.push(std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                n += 1;
                if n % 50 == 0 {
                    c = Client::connect(addr);
                }
                let path = if i % 4 == 0 { "/delay/250" } else { "/echo" };
                let body = format!("client {i} request {n}");
                match c.post(path, body.as_bytes()) {
                    Some(r) if r.status == 200 && r.text() == body => {
                        match check(&r, active.load(Ordering::Acquire), &tally) {
                            Ok(()) => {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("client {i}: {e}");
                                tally.failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    other => {
                        eprintln!("client {i}: request {n} failed: {:?}", other.map(|r| (r.status, r.text())));
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        c = Client::connect(addr);
                    }
                }
            }
        }));
    }
    // Swap both modules every 100 ms, 36 times (a reload's own time, which
    // reads and copies both files, comes on top: bounded by 15 s).
    let started = Instant::now();
    let mut generation = 1;
    while generation <= 36 && started.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
        generation += 1;
        rt.reload(&modules(generation)).unwrap();
        active.store(generation, Ordering::Release);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let crossed = tally.crossed.load(Ordering::Relaxed);
    eprintln!("{} swaps, {ok} requests, {failed} failed, {crossed} finished on a replaced version", generation - 1);
    assert_eq!(failed, 0);
    assert!(ok > 1000, "only {ok} requests in {:?}", started.elapsed());
    assert!(generation > 30, "only {} swaps", generation - 1);
    assert!(crossed > 0, "no transaction spanned a swap; the test did not test that");
    assert_eq!(bs.requests.load(Ordering::Relaxed), ok);
    assert_eq!(rt.total(|s| &s.context_violations), 0);
    // Old versions unload once their transactions are done.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        rt.reap();
        let loaded = rt.shared().loaded_versions("header_rewrite").len() + rt.shared().loaded_versions("router").len();
        if loaded == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{loaded} versions still loaded after the load stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    rt.shutdown();
}

/// Schema-changing swaps of a module on a route: its versions are held while
/// its state block migrates, and transactions meeting the hold wait for it.
#[test]
fn schema_changing_swaps_under_load_lose_nothing() {
    use common::variant;
    let dir = RunDir::new("http-schema");
    let files = RunDir::new("http-schema-files");
    let (b, _) = backend("b");
    let v1 = [variant(files.path(), "counter", 0), variant(files.path(), "counter", 1)];
    let v2 = [variant(files.path(), "counter_v2", 0), variant(files.path(), "counter_v2", 1)];
    let cfg = |p: &std::path::Path| {
        let mut c = module_cfg("counter", p, &[]);
        c.mode = molt_runtime::config::SwapMode::Upgrade;
        vec![c]
    };
    let site = common::one_route_site(b, &["counter"]);
    let rt = common::proxy_runtime(dir.path(), vec![site], vec![], &[]);
    rt.reload(&cfg(&v1[0])).unwrap();
    let addr = rt.http_addrs()[0];
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, tally) = (stop.clone(), tally.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 50_000 {
                    n += 1;
                    let body = format!("{i}/{n}");
                    match c.post("/echo", body.as_bytes()) {
                        Some(r) if r.status == 200 && r.text() == body => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            eprintln!("client {i}: request {n}: {:?}", other.map(|r| (r.status, r.text())));
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                            c = Client::connect(addr);
                        }
                    }
                }
            })
        })
        .collect();
    // Up and down by reload, 16 schema changes.
    for s in 0..16 {
        std::thread::sleep(Duration::from_millis(60));
        let n = s / 2 % 2;
        let files = if s % 2 == 0 { &v2[n] } else { &v1[n] };
        rt.reload(&cfg(files)).unwrap_or_else(|e| panic!("swap {s} refused: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (tally.ok.load(Ordering::Relaxed), tally.failed.load(Ordering::Relaxed));
    let held: u64 = (0..2).map(|w| rt.shared().http_stats(w).held_hooks.load(Ordering::Relaxed)).sum();
    eprintln!("16 schema changes, {ok} requests, {failed} failed, {held} hook calls waited for a migration");
    assert_eq!(failed, 0);
    assert!(ok > 200, "only {ok} requests");
    assert_eq!(rt.total(|s| &s.context_violations), 0);
    rt.shutdown();
}
