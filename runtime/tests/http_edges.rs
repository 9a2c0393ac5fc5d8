//! The HTTP proxy at the edges of RFC 9110 and 9112 and of its timers, each
//! test named after the defect it keeps away: what the client is answered
//! and what the upstream receives.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::RunDir;
use common::http::{Client, Conn, answering, once, read_to_close, scripted};
use molt_runtime::Runtime;
use molt_runtime::http::{HttpLimits, HttpSite};

fn site(server: SocketAddr, limits: HttpLimits) -> HttpSite {
    common::group_site(vec![server], limits)
}

fn start(dir: &RunDir, s: HttpSite) -> (Runtime, SocketAddr) {
    common::start_site(dir, s)
}

#[test]
fn a_head_in_two_segments_after_keep_alive_idleness_is_not_a_408() {
    let dir = RunDir::new("httpe-408");
    let (b, _) = answering("b");
    let limits = HttpLimits { request_timeout: Duration::from_millis(300), ..HttpLimits::default() };
    let (rt, addr) = start(&dir, site(b, limits));
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/x").unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(600));
    c.send(b"GET /x HTTP/1.1\r\nHost: te");
    std::thread::sleep(Duration::from_millis(100));
    c.send(b"st\r\nCookie: large\r\n\r\n");
    assert_eq!(c.read("GET").map(|r| r.status), Some(200));
    rt.shutdown();
}

#[test]
fn a_connection_that_never_sends_a_byte_is_closed_after_the_request_timeout() {
    let dir = RunDir::new("httpe-silent");
    let (b, _) = answering("b");
    let limits = HttpLimits {
        request_timeout: Duration::from_millis(300),
        keepalive_timeout: Duration::from_secs(60),
        ..HttpLimits::default()
    };
    let (rt, addr) = start(&dir, site(b, limits));
    let mut c = Client::connect(addr);
    let t = Instant::now();
    let raw = read_to_close(&mut c.s, Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(2), "a silent connection stayed open {:?}", t.elapsed());
    assert!(raw.is_empty(), "nothing was asked, nothing is answered: {:?}", String::from_utf8_lossy(&raw));
    rt.shutdown();
}

#[test]
fn a_host_listed_in_connection_still_reaches_the_upstream() {
    let dir = RunDir::new("httpe-conn-host");
    let (b, seen) = answering("b");
    let (rt, addr) = start(&dir, site(b, HttpLimits::default()));
    let r =
        once(addr, b"GET /x HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, Host\r\n\r\n", "GET").unwrap();
    assert_eq!(r.status, 200);
    assert!(seen.lines()[0].contains("host=example.test"), "{:?}", seen.lines());
    rt.shutdown();
}

#[test]
fn absolute_form_and_asterisk_targets_are_served() {
    let dir = RunDir::new("httpe-absolute");
    let (b, seen) = answering("b");
    let (rt, addr) = start(&dir, site(b, HttpLimits::default()));
    let r = once(addr, b"GET http://Example.Test:8080/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n", "GET").unwrap();
    assert_eq!(r.status, 200);
    let r = once(addr, b"OPTIONS * HTTP/1.1\r\nHost: example.test\r\n\r\n", "OPTIONS").unwrap();
    assert_eq!(r.status, 200);
    let lines = seen.lines();
    assert!(lines[0].contains("GET /p?q=1 host=Example.Test:8080"), "the target's authority is the Host: {lines:?}");
    assert!(lines[1].contains("OPTIONS * host=example.test"), "{lines:?}");
    // Only OPTIONS may ask for "*".
    assert_eq!(once(addr, b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", "GET").unwrap().status, 400);
    rt.shutdown();
}

#[test]
fn an_invalid_host_is_a_400() {
    let dir = RunDir::new("httpe-host");
    let (b, seen) = answering("b");
    let (rt, addr) = start(&dir, site(b, HttpLimits::default()));
    for bad in [&b"Host: a b/c"[..], b"Host: ", b"Host: a/b", b"Host: x@y", b"Host: [::1"] {
        let raw = [b"GET /x HTTP/1.1\r\n", bad, b"\r\n\r\n"].concat();
        let r = once(addr, &raw, "GET").unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
    }
    for good in ["Host: a.b", "Host: a.b:80", "Host: [::1]:8080", "Host: 127.0.0.1"] {
        let r = once(addr, format!("GET /x HTTP/1.1\r\n{good}\r\n\r\n").as_bytes(), "GET").unwrap();
        assert_eq!(r.status, 200, "{good}");
    }
    assert_eq!(seen.lines().len(), 4, "{:?}", seen.lines());
    rt.shutdown();
}

#[test]
fn an_http_1_0_client_never_gets_a_100_continue() {
    let dir = RunDir::new("httpe-continue10");
    let (b, _) = answering("b");
    let (rt, addr) = start(&dir, site(b, HttpLimits::default()));
    let mut c = Client::connect(addr);
    c.send(b"POST /x HTTP/1.0\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    c.s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 64];
    let early = c.s.read(&mut buf).unwrap_or(0);
    assert_eq!(early, 0, "an HTTP/1.0 client got {:?}", String::from_utf8_lossy(&buf[..early]));
    c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.send(b"hello");
    let raw = read_to_close(&mut c.s, Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw));
    rt.shutdown();
}

#[test]
fn chunk_sizes_are_parsed_strictly_and_without_overflow() {
    let dir = RunDir::new("httpe-chunk");
    let (b, seen) = scripted(|mut c: Conn| {
        while let Some((_, body)) = c.request() {
            let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            c.write(r.as_bytes());
            c.write(&body);
        }
    });
    let (rt, addr) = start(&dir, site(b, HttpLimits::default()));
    let head = "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    // An overflowing size: refused, nothing after it goes upstream as data.
    let raw = format!("{head}ffffffffffffffff\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(once(addr, raw.as_bytes(), "POST").unwrap().status, 400);
    // A bare CR in an extension: refused.
    let raw = format!("{head}5;a=\rb\r\nhello\r\n0\r\n\r\n");
    assert_eq!(once(addr, raw.as_bytes(), "POST").unwrap().status, 400);
    // Whitespace before an extension (BWS) is allowed.
    let raw = format!("{head}5 ;ext=1\r\nhello\r\n0\r\n\r\n");
    let r = once(addr, raw.as_bytes(), "POST").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    assert!(!seen.lines().iter().any(|l| l.contains("smuggled")), "{:?}", seen.lines());
    rt.shutdown();
}

#[test]
fn every_response_carries_a_date() {
    let dir = RunDir::new("httpe-date");
    let (b, _) = answering("b");
    let mut s = site(b, HttpLimits::default());
    s.routes[0].path = "/up".into();
    let (rt, addr) = start(&dir, s);
    let forwarded = Client::connect(addr).get("/up").unwrap();
    let own = Client::connect(addr).get("/nowhere").unwrap();
    assert_eq!((forwarded.status, own.status), (200, 404));
    for r in [forwarded, own] {
        let d = r.header("date").unwrap_or_else(|| panic!("no Date on a {}", r.status));
        assert!(d.ends_with(" GMT") && d.len() == 29, "{d}");
    }
    rt.shutdown();
}

#[test]
fn http_1_2_is_served_as_1_1_and_an_unknown_coding_is_a_501() {
    let dir = RunDir::new("httpe-versions");
    let (b, _) = answering("b");
    let (rt, addr) = start(&dir, site(b, HttpLimits::default()));
    let r = once(addr, b"GET /x HTTP/1.2\r\nHost: t\r\n\r\n", "GET").unwrap();
    assert_eq!(r.status, 200);
    let r = once(addr, b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", "POST").unwrap();
    assert_eq!(r.status, 501);
    let r = once(addr, b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "POST").unwrap();
    assert_eq!(r.status, 501);
    // chunked not last: the length cannot be known, 400.
    let r = once(addr, b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "POST").unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(once(addr, b"GET /x HTTP/2.0\r\nHost: t\r\n\r\n", "GET").map(|r| r.status), Some(505));
    rt.shutdown();
}

/// One client pipelining thousands of requests cannot keep its worker from
/// the other connections: a connection takes a bounded number of steps per
/// readiness, then the others ready now go first. One worker, `hello`
/// answering; the other client's request is answered long before the
/// pipeline's.
#[test]
fn a_pipelining_client_does_not_starve_the_others_on_its_worker() {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const N: usize = 20_000;
    let dir = RunDir::new("httpe-fair");
    let site = common::one_route_site(common::dead_addr(), &["hello"]);
    let hello = common::module_cfg("hello", &common::module_lib("hello"), &[]);
    let rt = common::proxy_runtime_on(1, dir.path(), vec![site], vec![], &[hello]);
    let addr = rt.http_addrs()[0];
    let mut victim = Client::connect(addr);
    assert_eq!(victim.get("/").unwrap().status, 200);

    // The pipeline: N requests written at once; a thread counts answers.
    let mut flood = std::net::TcpStream::connect(addr).unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (mut s, answered) = (flood.try_clone().unwrap(), answered.clone());
        std::thread::spawn(move || {
            let (mut buf, mut tail) = (vec![0u8; 1 << 16], Vec::new());
            while answered.load(Ordering::Relaxed) < N {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                tail.extend_from_slice(&buf[..n]);
                let seen = tail.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
                answered.fetch_add(seen, Ordering::Relaxed);
                let keep = tail.len().min(11);
                tail.drain(..tail.len() - keep);
            }
        })
    };
    let writer = std::thread::spawn(move || {
        flood.write_all(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".repeat(N)).unwrap();
        flood
    });
    // Once the worker is on the pipeline, the other client asks.
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the pipeline was never answered");
        std::thread::sleep(Duration::from_micros(100));
    }
    assert_eq!(victim.get("/").unwrap().status, 200);
    let before = answered.load(Ordering::Relaxed);
    let flood = writer.join().unwrap();
    reader.join().unwrap();
    assert_eq!(answered.load(Ordering::Relaxed), N, "every pipelined request is answered");
    assert!(
        before < N / 2,
        "the other client waited for {before} of the {N} pipelined requests: one connection held the worker"
    );
    drop(flood);
    rt.shutdown();
}

/// Timeouts cost in proportion to the deadlines that come due, not to the
/// connections open: 300 idle keep-alive connections, whose deadlines are
/// all seconds away, are not looked at by the 20 ms timeout sweep (a sweep
/// over every connection looked at each of them 50 times a second); and a
/// deadline that does come due is still enforced.
#[test]
fn idle_connections_cost_the_timeout_sweep_nothing_until_their_deadline() {
    let dir = RunDir::new("httpe-timers");
    let (b, _) = answering("b");
    let limits = HttpLimits {
        request_timeout: Duration::from_secs(30),
        keepalive_timeout: Duration::from_millis(3000),
        ..HttpLimits::default()
    };
    let (rt, addr) = start(&dir, site(b, limits));
    let checks = |rt: &Runtime| -> u64 {
        (0..rt.workers())
            .map(|w| rt.shared().http_stats(w).timer_checks.load(molt_runtime::sync::Ordering::Relaxed))
            .sum()
    };
    let mut idle: Vec<Client> = (0..300).map(|_| Client::connect(addr)).collect();
    for c in &mut idle {
        assert_eq!(c.get("/x").unwrap().status, 200);
    }
    let before = checks(&rt);
    std::thread::sleep(Duration::from_millis(1000));
    let looked = checks(&rt) - before;
    assert!(looked < 30, "the sweep looked at idle connections {looked} times in a second (300 open, none due)");
    // Their keep-alive deadline (3 s, far from the second looked at even
    // when opening them was slow) comes: each is closed.
    std::thread::sleep(Duration::from_millis(2000));
    for c in &mut idle {
        c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut byte = [0u8; 1];
        match c.s.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("an idle connection outlived its keep-alive timeout: {other:?}"),
        }
    }
    rt.shutdown();
}
