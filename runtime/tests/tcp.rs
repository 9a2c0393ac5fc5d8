//! The TCP proxy with real sockets on 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{RunDir, rss_bytes};
use molt_runtime::net::TcpRoute;
use molt_runtime::sync::Ordering;
use molt_runtime::{Runtime, RuntimeConfig};

/// An echo server: every connection gets back what it sends, and its write
/// half closed after the client's EOF.
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// An address nothing listens on.
fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn route(upstreams: Vec<SocketAddr>, idle: Duration) -> TcpRoute {
    TcpRoute {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams,
        connect_timeout: Duration::from_secs(2),
        idle_timeout: idle,
        retry_after: Duration::from_secs(5),
        max_connections: 1000,
        modules: vec![],
        handler: None,
    }
}

fn runtime(dir: &RunDir, routes: Vec<TcpRoute>) -> Runtime {
    Runtime::start(RuntimeConfig {
        workers: 2,
        run_dir: dir.path().to_owned(),
        tcp: routes,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

/// Send `data`, half-close, read everything back.
fn round_trip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    });
    s.write_all(data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    reader.join().unwrap()
}

#[test]
fn many_connections_echo_through_both_workers() {
    let dir = RunDir::new("tcp-many");
    let rt = runtime(&dir, vec![route(vec![echo_server()], Duration::from_secs(30))]);
    let addr = rt.tcp_addrs()[0];
    let clients: Vec<_> = (0..40u32)
        .map(|c| {
            std::thread::spawn(move || {
                let data: Vec<u8> =
                    (0..(1 << 20)).map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(c) as u8).collect();
                assert!(round_trip(addr, &data) == data, "connection {c}: bytes differ");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let accepted: u64 = (0..2).map(|w| rt.shared().tcp_stats(w).accepted.load(Ordering::Relaxed)).sum();
    let up: u64 = (0..2).map(|w| rt.shared().tcp_stats(w).bytes_up.load(Ordering::Relaxed)).sum();
    assert_eq!(accepted, 40);
    assert_eq!(up, 40 << 20, "every byte went up");
    let deadline = Instant::now() + Duration::from_secs(5);
    while (0..2).map(|w| rt.shared().tcp_stats(w).open.load(Ordering::Relaxed)).sum::<u64>() > 0 {
        assert!(Instant::now() < deadline, "pairs were not closed after both sides finished");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_failed_upstream_is_skipped_and_all_down_closes_the_client() {
    let dir = RunDir::new("tcp-failover");
    let rt = runtime(
        &dir,
        vec![
            route(vec![dead_addr(), echo_server()], Duration::from_secs(30)),
            route(vec![dead_addr()], Duration::from_secs(30)),
        ],
    );
    for i in 0..6u8 {
        assert_eq!(round_trip(rt.tcp_addrs()[0], &[i; 1000]), vec![i; 1000], "failover to the live upstream");
    }
    let failures: u64 = (0..2).map(|w| rt.shared().tcp_stats(w).upstream_failures.load(Ordering::Relaxed)).sum();
    assert!(failures >= 1, "the dead upstream was tried and marked");
    // Every upstream down: the client sees its connection closed, promptly.
    let t = Instant::now();
    let mut s = TcpStream::connect(rt.tcp_addrs()[1]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    let r = s.write_all(b"x").and_then(|()| s.read(&mut b));
    assert!(matches!(r, Ok(0) | Err(_)), "closed, not answered: {r:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn idle_connections_are_closed() {
    let dir = RunDir::new("tcp-idle");
    let rt = runtime(&dir, vec![route(vec![echo_server()], Duration::from_millis(200))]);
    let mut s = TcpStream::connect(rt.tcp_addrs()[0]).unwrap();
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(s.read(&mut b).unwrap_or(0), 0, "closed by the proxy");
    let idle = t.elapsed();
    assert!(idle >= Duration::from_millis(150) && idle < Duration::from_secs(2), "closed after {idle:?}");
    let closed: u64 = (0..2).map(|w| rt.shared().tcp_stats(w).idle_closed.load(Ordering::Relaxed)).sum();
    assert_eq!(closed, 1);
}

/// 256 MiB through one connection: memory stays bounded (two 64 KiB
/// buffers per pair; the bound checked is 32 MiB of RSS growth).
#[test]
fn large_streams_use_bounded_memory() {
    if common::in_own_process("large_streams_use_bounded_memory") {
        return;
    }
    let dir = RunDir::new("tcp-large");
    let rt = runtime(&dir, vec![route(vec![echo_server()], Duration::from_secs(30))]);
    let addr = rt.tcp_addrs()[0];
    let before = rss_bytes();
    let mut s = TcpStream::connect(addr).unwrap();
    let mut r = s.try_clone().unwrap();
    const TOTAL: usize = 256 << 20;
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let (mut got, mut sum) = (0usize, 0u64);
        while got < TOTAL {
            let n = r.read(&mut buf).unwrap();
            assert!(n > 0, "early EOF at {got}");
            sum = buf[..n].iter().fold(sum, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(*b)));
            got += n;
        }
        sum
    });
    let chunk: Vec<u8> = (0..(1 << 16)).map(|i| (i * 7) as u8).collect();
    let mut sum = 0u64;
    for _ in 0..TOTAL / chunk.len() {
        s.write_all(&chunk).unwrap();
        sum = chunk.iter().fold(sum, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(*b)));
    }
    assert_eq!(reader.join().unwrap(), sum, "every byte came back in order");
    let growth = rss_bytes().saturating_sub(before);
    assert!(growth < 32 << 20, "RSS grew {} MiB for a 256 MiB stream", growth >> 20);
}

fn modules_runtime(dir: &RunDir, routes: Vec<TcpRoute>, modules: &[molt_runtime::config::ModuleConfig]) -> Runtime {
    common::proxy_runtime(dir.path(), vec![], routes, modules)
}

#[test]
fn a_c_module_handles_tcp_connections_itself() {
    let dir = RunDir::new("tcp-handler");
    let mut r = route(vec![], Duration::from_secs(30));
    r.handler = Some("echo_c".into());
    let echo = common::module_cfg("echo_c", &common::module_lib("echo_c"), &[("prefix", ">")]);
    let rt = modules_runtime(&dir, vec![r], &[echo]);
    let addr = rt.tcp_addrs()[0];
    let mut conns: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for round in 0..50 {
        for (i, c) in conns.iter_mut().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let msg = format!("conn {i} round {round}");
            c.write_all(msg.as_bytes()).unwrap();
            let want = format!(">{msg}");
            let mut got = vec![0u8; want.len()];
            c.read_exact(&mut got).unwrap();
            assert_eq!(String::from_utf8(got).unwrap(), want);
        }
    }
    drop(conns);
    // Each connection's continuation ends after its CLOSED: the version can go.
    let deadline = Instant::now() + Duration::from_secs(5);
    while rt.shared().versions().iter().any(|v| v.holders.conts() > 0) {
        assert!(Instant::now() < deadline, "connection continuations outlived their connections");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(rt.total(|s| &s.context_violations), 0);
    rt.shutdown();
}

#[test]
fn an_accept_hook_rejects_connections() {
    let dir = RunDir::new("tcp-accept");
    let mut r = route(vec![echo_server()], Duration::from_secs(30));
    r.modules = vec!["rate_limit".into()];
    let rl = common::module_cfg("rate_limit", &common::module_lib("rate_limit"), &[("rate", "1"), ("burst", "3")]);
    let rt = modules_runtime(&dir, vec![r], &[rl]);
    let addr = rt.tcp_addrs()[0];
    let mut served = 0;
    for _ in 0..6 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"ping");
        let mut b = [0u8; 4];
        if s.read_exact(&mut b).is_ok() {
            assert_eq!(&b, b"ping");
            served += 1;
        }
    }
    assert_eq!(served, 3, "a burst of 3 connections, then rejections");
    rt.shutdown();
}

#[test]
fn a_module_opens_connections_with_conn_connect() {
    use fixture_probe::tag;
    let dir = RunDir::new("tcp-connect");
    // A worker has a TCP layer when the config has a [[tcp]] route.
    let rt = runtime(&dir, vec![route(vec![echo_server()], Duration::from_secs(30))]);
    let v = rt.load(&molt_runtime::module::ModuleSpec::new(common::module_lib("fixture_probe"))).unwrap();
    let id = rt.spawn(&v, 0, 0).unwrap();
    let started = rt.next_reply(Duration::from_secs(5)).unwrap();
    assert_eq!(started.tag, tag::STARTED);
    // To an echo server: OPEN (connected), the echo of "ping", then our own close is not asked for.
    rt.send(id, tag::CONNECT, echo_server().to_string().as_bytes()).unwrap();
    let open = rt.next_reply(Duration::from_secs(5)).unwrap();
    assert_eq!((open.tag, open.data.as_slice()), (tag::CONN_OPEN, &1u64.to_le_bytes()[..]));
    let mut got = Vec::new();
    while got.len() < 4 {
        let r = rt.next_reply(Duration::from_secs(5)).expect("the echo");
        assert_eq!(r.tag, tag::CONN_DATA);
        got.extend_from_slice(&r.data);
    }
    assert_eq!(got, b"ping");
    // To nothing: CLOSED with 2 (connect failed).
    rt.send(id, tag::CONNECT, dead_addr().to_string().as_bytes()).unwrap();
    let r = rt.next_reply(Duration::from_secs(5)).unwrap();
    assert_eq!((r.tag, r.data.as_slice()), (tag::CONN_CLOSED, &2u64.to_le_bytes()[..]));
    assert_eq!(rt.total(|s| &s.context_violations), 0);
    rt.shutdown();
}

/// A module owning connections goes through schema-changing swaps (its
/// versions are held while its state migrates): bytes that arrive during a
/// hold wait for it, none is lost, and the connections stay open.
#[test]
fn a_tcp_handler_loses_no_bytes_across_schema_changes() {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    let dir = RunDir::new("tcp-schema");
    let files = RunDir::new("tcp-schema-files");
    let v1 = [common::variant(files.path(), "counter", 0), common::variant(files.path(), "counter", 1)];
    let v2 = [common::variant(files.path(), "counter_v2", 0), common::variant(files.path(), "counter_v2", 1)];
    let cfg = |p: &std::path::Path| {
        let mut c = common::module_cfg("counter", p, &[]);
        c.mode = molt_runtime::config::SwapMode::Upgrade;
        vec![c]
    };
    let mut r = route(vec![], Duration::from_secs(30));
    r.handler = Some("counter".into());
    let rt = modules_runtime(&dir, vec![r], &cfg(&v1[0]));
    let addr = rt.tcp_addrs()[0];
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut last = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    s.write_all(b"+").unwrap();
                    let mut b = [0u8; 8];
                    s.read_exact(&mut b).expect("every byte is answered");
                    let count = u64::from_ne_bytes(b);
                    assert!(count > last, "the count went from {last} to {count}");
                    last = count;
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for s in 0..16 {
        std::thread::sleep(Duration::from_millis(50));
        let n = s / 2 % 2;
        let file = if s % 2 == 0 { &v2[n] } else { &v1[n] };
        rt.reload(&cfg(file)).unwrap_or_else(|e| panic!("swap {s} refused: {e}"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let total = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(total > 100, "only {total} increments");
    assert_eq!(rt.total(|s| &s.context_violations), 0);
    rt.shutdown();
}

/// A connection a module opened is closed when the continuation it reports
/// to ends: nobody is left to read it, and it must not stay open forever.
#[test]
fn a_module_connection_closes_when_its_continuation_ends() {
    use fixture_probe::tag;
    let dir = RunDir::new("tcp-connect-end");
    let rt = runtime(&dir, vec![route(vec![echo_server()], Duration::from_secs(30))]);
    let v = rt.load(&molt_runtime::module::ModuleSpec::new(common::module_lib("fixture_probe"))).unwrap();
    let id = rt.spawn(&v, 0, 0).unwrap();
    assert_eq!(rt.next_reply(Duration::from_secs(5)).unwrap().tag, tag::STARTED);
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    rt.send(id, tag::CONNECT, server.local_addr().unwrap().to_string().as_bytes()).unwrap();
    let (mut peer, _) = server.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 4];
    peer.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    rt.destroy(id).unwrap();
    let mut rest = [0u8; 16];
    match peer.read(&mut rest) {
        Ok(0) => {}
        other => panic!("the connection outlived its continuation: read gave {other:?} instead of EOF"),
    }
    rt.shutdown();
}

/// A schema change without adopt is accepted only when no continuation of
/// the module's older versions would stay on old code over the retired
/// block — also while connections keep creating continuations of the
/// version being replaced. (The refusal used to count them once, before the
/// hold: some reloads were accepted with old-version continuations live
/// over the retired block, their writes lost.)
#[test]
fn a_schema_change_without_adopt_never_leaves_old_continuations_over_the_retired_block() {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    let dir = RunDir::new("tcp-noadopt");
    let files = RunDir::new("tcp-noadopt-files");
    let libs = [
        [
            common::variant(files.path(), "fixture_noadopt_v1", 0),
            common::variant(files.path(), "fixture_noadopt_v1", 1),
        ],
        [
            common::variant(files.path(), "fixture_noadopt_v2", 0),
            common::variant(files.path(), "fixture_noadopt_v2", 1),
        ],
    ];
    let cfg = |p: &std::path::Path| vec![common::module_cfg("fixture_noadopt", p, &[])];
    let mut r = route(vec![], Duration::from_secs(30));
    r.handler = Some("fixture_noadopt".into());
    let rt = modules_runtime(&dir, vec![r], &cfg(&libs[0][0]));
    let addr = rt.tcp_addrs()[0];
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let served = std::sync::Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(addr) else { continue };
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut b = [0u8; 1];
                    if s.write_all(b"x").is_ok() && s.read_exact(&mut b).is_ok() {
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    drop(s);
                    // Gaps between connections leave moments with none live,
                    // when a schema change without adopt may be accepted.
                    std::thread::sleep(Duration::from_micros(300));
                }
            })
        })
        .collect();
    let (mut accepted, mut violations) = (0, Vec::new());
    for i in 0..200 {
        let lib = &libs[(i + 1) % 2][(i / 2) % 2];
        let before = rt.active("fixture_noadopt").unwrap().meta().state_schema;
        if rt.reload(&cfg(lib)).is_err() {
            continue;
        }
        let active = rt.active("fixture_noadopt").unwrap();
        if active.meta().state_schema == before {
            continue;
        }
        accepted += 1;
        // An older version speaking the live block's schema may drain on it;
        // one speaking another schema would run over a retired block.
        for v in rt.shared().versions() {
            let live = v.holders.conts();
            let other_schema = v.meta.state_schema != active.meta().state_schema;
            if v.meta.name == "fixture_noadopt" && v.is_loaded() && other_schema && live > 0 {
                violations
                    .push(format!("reload {i}: {} ({}) still holds {live} continuations", v.meta.version, v.meta.id));
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(accepted > 0, "no schema-changing reload was accepted: the test saw nothing");
    eprintln!("{accepted} schema-changing reloads accepted under load");
    assert!(served.load(std::sync::atomic::Ordering::Relaxed) > 0, "no connection was served");
    assert!(
        violations.is_empty(),
        "{} of {accepted} accepted reloads left old code over the retired block: {violations:?}",
        violations.len()
    );
    rt.shutdown();
}

/// A stream that never runs dry cannot keep its worker from the other
/// connections: a pair is pumped a bounded number of rounds per readiness,
/// then the others ready now go first. One worker; a client streaming 256
/// MiB through the echo upstream while another client's ping comes back
/// long before the stream is through.
#[test]
fn a_stream_that_never_runs_dry_does_not_starve_the_others_on_its_worker() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    const TOTAL: usize = 256 << 20;
    let dir = RunDir::new("tcp-fair");
    let rt =
        common::proxy_runtime_on(1, dir.path(), vec![], vec![route(vec![echo_server()], Duration::from_secs(30))], &[]);
    let addr = rt.tcp_addrs()[0];
    let mut victim = TcpStream::connect(addr).unwrap();
    victim.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut pong = [0u8; 4];
    victim.write_all(b"ping").unwrap();
    victim.read_exact(&mut pong).unwrap();

    let flood = TcpStream::connect(addr).unwrap();
    let echoed = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (mut s, echoed) = (flood.try_clone().unwrap(), echoed.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while echoed.load(std::sync::atomic::Ordering::Relaxed) < TOTAL {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => echoed.fetch_add(n, std::sync::atomic::Ordering::Relaxed),
                };
            }
        })
    };
    let writer = std::thread::spawn(move || {
        let mut s = flood;
        let chunk = vec![7u8; 1 << 16];
        for _ in 0..TOTAL / chunk.len() {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
        s
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while echoed.load(std::sync::atomic::Ordering::Relaxed) < (1 << 20) {
        assert!(Instant::now() < deadline, "the stream never came back");
        std::thread::sleep(Duration::from_micros(100));
    }
    victim.write_all(b"ping").unwrap();
    victim.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"ping");
    let before = echoed.load(std::sync::atomic::Ordering::Relaxed);
    let flood = writer.join().unwrap();
    reader.join().unwrap();
    assert_eq!(echoed.load(std::sync::atomic::Ordering::Relaxed), TOTAL, "the whole stream came back");
    assert!(
        before < TOTAL / 2,
        "the other client's ping waited for {} MiB of the {} MiB stream: one connection held the worker",
        before >> 20,
        TOTAL >> 20
    );
    drop(flood);
    rt.shutdown();
}
