//! The HTTP/1.1 reverse proxy with real sockets on 127.0.0.1: keep-alive,
//! bodies, limits and their statuses, smuggling, upstream failures, and the
//! module hooks (hello answering, header_rewrite in C, router, rate_limit).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::http::{Client, backend, once};
use common::{RunDir, module_cfg, module_lib, rss_bytes};
use molt_runtime::Runtime;
use molt_runtime::config::ModuleConfig;
use molt_runtime::http::{HttpLimits, HttpRoute, HttpSite};
use molt_runtime::sync::Ordering;

fn route(path: &str, upstream: Option<usize>, modules: &[&str]) -> HttpRoute {
    HttpRoute {
        name: format!("r{path}"),
        host: None,
        path: path.into(),
        upstream,
        modules: modules.iter().map(|m| (*m).to_owned()).collect(),
        retry_non_idempotent: false,
    }
}

fn site(groups: Vec<(&str, Vec<SocketAddr>)>, routes: Vec<HttpRoute>, limits: HttpLimits) -> HttpSite {
    HttpSite {
        name: "test".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        routes,
        groups: groups.into_iter().map(|(n, s)| (n.to_owned(), s)).collect(),
        limits,
    }
}

fn start(dir: &RunDir, s: HttpSite, modules: &[ModuleConfig]) -> (Runtime, SocketAddr) {
    let rt = common::proxy_runtime(dir.path(), vec![s], vec![], modules);
    let addr = rt.http_addrs()[0];
    (rt, addr)
}

fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn http_total(rt: &Runtime, f: impl Fn(&molt_runtime::http::HttpStats) -> u64) -> u64 {
    (0..rt.workers()).map(|w| f(rt.shared().http_stats(w))).sum()
}

#[test]
fn keep_alive_both_sides_reuses_connections() {
    let dir = RunDir::new("http-ka");
    let (b, bs) = backend("b1");
    let (rt, addr) =
        start(&dir, site(vec![("b", vec![b])], vec![route("/", Some(0), &[])], HttpLimits::default()), &[]);
    let mut c = Client::connect(addr);
    for i in 0..200 {
        let body = format!("request {i}");
        let r = c.post("/echo", body.as_bytes()).expect("a response");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), body);
        assert!(!r.close);
        assert_eq!(r.header("X-Backend").as_deref(), Some("b1"));
        assert_eq!(r.header("X-Seen-X-Forwarded-For").as_deref(), Some("127.0.0.1"));
    }
    // One client connection; the upstream side pooled: one upstream connection served all.
    assert_eq!(bs.requests.load(Ordering::Relaxed), 200);
    assert_eq!(bs.connections.load(Ordering::Relaxed), 1, "the upstream connection was not reused");
    assert_eq!(http_total(&rt, |s| s.pool_reuses.load(Ordering::Relaxed)), 199);
    // The client's X-Forwarded-For values come first; fields named in Connection are the hop's.
    let r = c.get_with("/echo", "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n").unwrap();
    assert_eq!(r.header("X-Seen-X-Forwarded-For").as_deref(), Some("10.0.0.1, 10.0.0.2, 127.0.0.1"));
    let r = c.get_with("/echo", "Connection: X-Test\r\nX-Test: hop\r\n").unwrap();
    assert_eq!(r.header("X-Seen-X-Test"), None, "a field named in Connection was forwarded");
    // HTTP/1.0 without keep-alive: answered, then closed.
    let r = once(addr, b"GET /echo HTTP/1.0\r\n\r\n", "GET").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.close);
    rt.shutdown();
}

#[test]
fn chunked_in_both_directions() {
    let dir = RunDir::new("http-chunked");
    let (b, _) = backend("b1");
    let (rt, addr) =
        start(&dir, site(vec![("b", vec![b])], vec![route("/", Some(0), &[])], HttpLimits::default()), &[]);
    let mut c = Client::connect(addr);
    let payload: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut req = b"POST /chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in payload.chunks(7_777) {
        req.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    // Sent in small writes, so the proxy sees chunk framing split anywhere.
    for part in req.chunks(1000) {
        c.send(part);
    }
    let r = c.read("POST").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Transfer-Encoding").as_deref(), Some("chunked"));
    assert_eq!(r.body, payload);
    // The same connection goes on.
    assert_eq!(c.get("/echo").unwrap().status, 200);
    // A response without framing reaches an HTTP/1.1 client chunked.
    let r = c.get("/close").unwrap();
    assert_eq!(r.text(), "until close");
    assert_eq!(r.header("Transfer-Encoding").as_deref(), Some("chunked"));
    rt.shutdown();
}

#[test]
fn large_bodies_stream_with_bounded_memory() {
    if common::in_own_process("large_bodies_stream_with_bounded_memory") {
        return;
    }
    let dir = RunDir::new("http-large");
    let (b, bs) = backend("b1");
    let (rt, addr) = start(
        &dir,
        site(
            vec![("b", vec![b])],
            vec![route("/", Some(0), &[])],
            HttpLimits { max_body_bytes: 1 << 30, ..HttpLimits::default() },
        ),
        &[],
    );
    let before = rss_bytes();
    const N: u64 = 256 << 20;
    // Upload 256 MiB.
    let mut c = Client::connect(addr);
    c.send(format!("POST /sink HTTP/1.1\r\nHost: test\r\nContent-Length: {N}\r\n\r\n").as_bytes());
    let piece = vec![b'y'; 1 << 20];
    for _ in 0..(N >> 20) {
        c.send(&piece);
    }
    let r = c.read("POST").unwrap();
    assert_eq!(r.text(), format!("received {N}"));
    assert_eq!(bs.body_bytes.load(Ordering::Relaxed), N);
    // Download 256 MiB, counting without keeping it.
    c.send(format!("GET /big/{N} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    let mut head = Vec::new();
    let body_start = loop {
        let n = c.s.read(&mut buf).unwrap();
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    got += (head.len() - body_start) as u64;
    while got < N {
        let n = c.s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {got} bytes");
        got += n as u64;
    }
    assert_eq!(got, N);
    let grew = rss_bytes().saturating_sub(before);
    assert!(grew < 48 << 20, "RSS grew by {} MiB moving 512 MiB", grew >> 20);
    rt.shutdown();
}

#[test]
fn expect_100_continue() {
    let dir = RunDir::new("http-100");
    let (b, _) = backend("b1");
    let (rt, addr) = start(
        &dir,
        site(
            vec![("b", vec![b])],
            vec![route("/", Some(0), &[])],
            HttpLimits { max_body_bytes: 1000, ..HttpLimits::default() },
        ),
        &[],
    );
    let mut c = Client::connect(addr);
    c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let mut interim = [0u8; 25];
    c.s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send(b"hello");
    let r = c.read("POST").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    assert_eq!(r.header("X-Seen-Expect"), None, "Expect is hop-by-hop here: the proxy answered it");
    // Too large: 413 at once, without 100 Continue and without reading the body.
    let mut c = Client::connect(addr);
    c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n");
    let r = c.read("POST").unwrap();
    assert_eq!(r.status, 413);
    rt.shutdown();
}

#[test]
fn limits_answer_with_their_status() {
    let dir = RunDir::new("http-limits");
    let (b, _) = backend("b1");
    let limits = HttpLimits {
        max_head_bytes: 4096,
        max_body_bytes: 10_000,
        request_timeout: Duration::from_millis(300),
        upstream_timeout: Duration::from_millis(500),
        max_connections: 40,
        ..HttpLimits::default()
    };
    let groups = vec![("b", vec![b]), ("dead", vec![dead_addr()])];
    let routes = vec![route("/", Some(0), &[]), route("/dead", Some(1), &[]), route("/none", None, &[])];
    let (rt, addr) = start(&dir, site(groups, routes, limits), &[]);
    // 400: malformed.
    assert_eq!(once(addr, b"GET / HTTP/1.1\r\nHost: test\r\nBad Header\r\n\r\n", "GET").unwrap().status, 400);
    // 431: a head over the limit.
    let big = format!("GET / HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n", "a".repeat(8000));
    assert_eq!(once(addr, big.as_bytes(), "GET").unwrap().status, 431);
    // 413: a body over the limit, by length and by chunks.
    assert_eq!(
        once(addr, b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10001\r\n\r\n", "POST").unwrap().status,
        413
    );
    let mut c = Client::connect(addr);
    c.send(b"POST /sink HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..20 {
        c.send_lossy(format!("{:x}\r\n{}\r\n", 1000, "z".repeat(1000)).as_bytes());
    }
    assert_eq!(c.read("POST").map(|r| r.status), Some(413));
    // 408: a head that never completes, and a body that stalls.
    let mut c = Client::connect(addr);
    c.send(b"GET / HTTP/1.1\r\nHost: te");
    let t = Instant::now();
    assert_eq!(c.read("GET").map(|r| r.status), Some(408));
    assert!(t.elapsed() < Duration::from_secs(3));
    let mut c = Client::connect(addr);
    c.send(b"POST /sink HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nonly part");
    assert_eq!(c.read("POST").map(|r| r.status), Some(408));
    // An idle keep-alive connection with nothing sent is closed without a response.
    // 502: no server reachable; a route without upstream.
    let r = Client::connect(addr).get("/dead").unwrap();
    assert_eq!(r.status, 502);
    assert!(r.text().contains("dead"), "{}", r.text());
    assert_eq!(Client::connect(addr).get("/none").unwrap().status, 502);
    // 504: the upstream accepts and never answers.
    let t = Instant::now();
    assert_eq!(Client::connect(addr).get("/slow").unwrap().status, 504);
    assert!(t.elapsed() < Duration::from_secs(5));
    // 503: over the per-worker connection limit (40 per worker, 2 workers).
    let held: Vec<Client> = (0..100).map(|_| Client::connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut refused = 0;
    for _ in 0..10 {
        let mut c = Client::connect(addr);
        if c.get("/echo").is_some_and(|r| r.status == 503) {
            refused += 1;
        }
    }
    assert!(refused > 0, "no 503 with 100 connections held against a limit of 80");
    assert!(http_total(&rt, |s| s.overload.load(Ordering::Relaxed)) > 0);
    drop(held);
    rt.shutdown();
}

#[test]
fn smuggling_attempts_are_refused() {
    let dir = RunDir::new("http-smuggle");
    let (b, bs) = backend("b1");
    let (rt, addr) =
        start(&dir, site(vec![("b", vec![b])], vec![route("/", Some(0), &[])], HttpLimits::default()), &[]);
    let cases: &[&[u8]] = &[
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
        b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for raw in cases {
        let mut c = Client::connect(addr);
        c.send(raw);
        let r = c.read("POST").unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(raw));
        assert!(c.closed(), "the connection stays open after a refused head");
    }
    assert_eq!(bs.requests.load(Ordering::Relaxed), 0, "a refused request reached the upstream");
    // A malformed chunk size in the body: the request is cut, the client told 400.
    let mut c = Client::connect(addr);
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    assert_eq!(c.read("POST").map(|r| r.status), Some(400));
    rt.shutdown();
}

#[test]
fn upstream_failover_and_health() {
    let dir = RunDir::new("http-failover");
    let (b, bs) = backend("alive");
    let groups = vec![("b", vec![dead_addr(), b])];
    let (rt, addr) = start(&dir, site(groups, vec![route("/", Some(0), &[])], HttpLimits::default()), &[]);
    let mut c = Client::connect(addr);
    for _ in 0..20 {
        let r = c.get("/echo").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("X-Backend").as_deref(), Some("alive"));
    }
    assert_eq!(bs.requests.load(Ordering::Relaxed), 20);
    // The dead server is marked after its first failure on each worker, not retried per request.
    assert!(http_total(&rt, |s| s.upstream_failures.load(Ordering::Relaxed)) <= 2);
    rt.shutdown();
}

#[test]
fn modules_answer_rewrite_route_and_limit() {
    let dir = RunDir::new("http-modules");
    let (a, _) = backend("api");
    let (w, _) = backend("web");
    let modules = vec![
        module_cfg("hello", &module_lib("hello"), &[("greeting", "hi")]),
        module_cfg(
            "header_rewrite",
            &module_lib("header_rewrite"),
            &[
                ("request.set.X-Test", "from-rewrite"),
                ("request.remove.X-Secret", ""),
                ("response.set.X-Rewritten", "yes"),
                ("response.remove.X-Conn", ""),
            ],
        ),
        module_cfg(
            "router",
            &module_lib("router"),
            &[("path./api/", "api"), ("default", "web"), ("header", "X-Group")],
        ),
        module_cfg("rate_limit", &module_lib("rate_limit"), &[("rate", "1"), ("burst", "5")]),
    ];
    let routes = vec![
        route("/hello", None, &["header_rewrite", "hello"]),
        route("/", Some(1), &["header_rewrite", "router"]),
        route("/limited", Some(1), &["rate_limit"]),
    ];
    let (rt, addr) =
        start(&dir, site(vec![("api", vec![a]), ("web", vec![w])], routes, HttpLimits::default()), &modules);
    let mut c = Client::connect(addr);
    // hello answers directly; header_rewrite (C) rewrites its response.
    let r = c.get("/hello").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hi from hello 1.0.0\n");
    assert_eq!(r.header("X-Rewritten").as_deref(), Some("yes"));
    // header_rewrite on the request and the response; router by path.
    let r = c.get_with("/api/x/echo", "X-Secret: s\r\nX-Test: original\r\n").unwrap();
    assert_eq!(r.header("X-Backend").as_deref(), Some("api"));
    assert_eq!(r.header("X-Seen-X-Test").as_deref(), Some("from-rewrite"));
    assert_eq!(r.header("X-Rewritten").as_deref(), Some("yes"));
    assert_eq!(r.header("X-Conn"), None, "response.remove did not remove");
    // The backend 404s paths it does not know; router's default and header choice.
    assert_eq!(c.get("/other/echo").unwrap().header("X-Backend").as_deref(), Some("web"));
    assert_eq!(c.get_with("/other", "X-Group: api\r\n").unwrap().header("X-Backend").as_deref(), Some("api"));
    // rate_limit: a burst of 5, then 429s with Retry-After.
    let statuses: Vec<u16> = (0..8).map(|_| c.get("/limited/echo").unwrap().status).collect();
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    let r = c.get("/limited/echo").unwrap();
    assert_eq!(r.status, 429);
    assert!(r.header("Retry-After").is_some());
    assert!(http_total(&rt, |s| s.module_answers.load(Ordering::Relaxed)) >= 4);
    // No module call ran under a wrong plugin context.
    assert_eq!(rt.total(|s| &s.context_violations), 0);
    rt.shutdown();
}

#[test]
fn a_failing_hook_fails_closed_or_open() {
    let dir = RunDir::new("http-hookfail");
    let (b, _) = backend("b1");
    // header_rewrite refuses nothing at init for this rule, but the host refuses
    // Host with ADD at request time: the hook fails.
    let bad = module_cfg("header_rewrite", &module_lib("header_rewrite"), &[("request.add.Host", "x")]);
    let mut open = module_cfg("router", &module_lib("router"), &[("mark", "bad\u{7f}")]);
    open.failure_policy = molt_runtime::config::FailurePolicy::FailOpen;
    let routes = vec![route("/closed", Some(0), &["header_rewrite"]), route("/open", Some(0), &["router"])];
    let (rt, addr) = start(&dir, site(vec![("b", vec![b])], routes, HttpLimits::default()), &[bad, open]);
    let r = Client::connect(addr).get("/closed").unwrap();
    assert_eq!(r.status, 500);
    assert!(r.text().contains("header_rewrite"), "{}", r.text());
    let r = Client::connect(addr).get("/open/echo").unwrap();
    assert_eq!(r.status, 200, "fail_open should skip the failing module");
    assert!(http_total(&rt, |s| s.hook_failures.load(Ordering::Relaxed)) >= 2);
    rt.shutdown();
}

#[test]
fn no_route_is_404_and_http_1_0_keep_alive_works() {
    let dir = RunDir::new("http-404");
    let (b, _) = backend("b1");
    let (rt, addr) =
        start(&dir, site(vec![("b", vec![b])], vec![route("/app/", Some(0), &[])], HttpLimits::default()), &[]);
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/elsewhere").unwrap().status, 404);
    let mut c = Client::connect(addr);
    for _ in 0..3 {
        c.send(b"GET /app/echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.read("GET").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Connection").as_deref(), Some("keep-alive"));
    }
    // HEAD: the upstream's length, no body.
    c.send(b"HEAD /app/echo HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read("HEAD").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    c.s.write_all(b"GET /app/echo HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(c.read("GET").unwrap().status, 200, "the connection survived the HEAD");
    rt.shutdown();
}

#[test]
fn idle_keep_alive_connections_are_closed_quietly() {
    let dir = RunDir::new("http-idle");
    let (b, _) = backend("b1");
    let limits = HttpLimits { keepalive_timeout: Duration::from_millis(300), ..HttpLimits::default() };
    let (rt, addr) = start(&dir, site(vec![("b", vec![b])], vec![route("/", Some(0), &[])], limits), &[]);
    // Nothing sent: closed after the keep-alive timeout, without a response.
    let mut c = Client::connect(addr);
    let t = Instant::now();
    assert!(c.closed());
    assert!(t.elapsed() >= Duration::from_millis(250), "closed too early: {:?}", t.elapsed());
    // After a response, the same.
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/echo").unwrap().status, 200);
    assert!(c.closed());
    rt.shutdown();
}

#[test]
fn the_upstream_timeout_runs_from_the_end_of_the_request() {
    let dir = RunDir::new("http-slow-upload");
    let (b, _) = backend("b1");
    let limits = HttpLimits {
        upstream_timeout: Duration::from_millis(400),
        request_timeout: Duration::from_secs(5),
        ..HttpLimits::default()
    };
    let (rt, addr) = start(&dir, site(vec![("b", vec![b])], vec![route("/", Some(0), &[])], limits), &[]);
    // A client uploading slower than the upstream timeout is not a slow upstream.
    let mut c = Client::connect(addr);
    c.send(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 600\r\n\r\n");
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(200));
        c.send(&[b'u'; 100]);
    }
    let r = c.read("POST").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "received 600"));
    // An upstream that takes longer than it once the request is out: 504.
    assert_eq!(c.get("/delay/1500").map(|r| r.status), Some(504));
    rt.shutdown();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let dir = RunDir::new("http-pipeline");
    let (b, _) = backend("b1");
    let modules = vec![module_cfg("hello", &module_lib("hello"), &[("greeting", "hi")])];
    let routes = vec![route("/", Some(0), &[]), route("/hello", None, &["hello"])];
    let (rt, addr) = start(&dir, site(vec![("b", vec![b])], routes, HttpLimits::default()), &modules);
    let mut c = Client::connect(addr);
    // Five requests in one write, proxied and answered here, with a body among them.
    c.send(
        b"GET /echo/1 HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /echo/2 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
          GET /hello HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /echo/4 HTTP/1.1\r\nHost: t\r\nX-Test: four\r\n\r\n\
          GET /hello HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let r1 = c.read("GET").unwrap();
    let r2 = c.read("POST").unwrap();
    let r3 = c.read("GET").unwrap();
    let r4 = c.read("GET").unwrap();
    let r5 = c.read("GET").unwrap();
    assert_eq!((r1.status, r1.text().as_str()), (200, ""));
    assert_eq!(r2.text(), "abc");
    assert_eq!(r3.text(), "hi from hello 1.0.0\n");
    assert_eq!(r4.header("X-Seen-X-Test").as_deref(), Some("four"));
    assert_eq!(r5.text(), "hi from hello 1.0.0\n");
    rt.shutdown();
}

/// Mutated and random requests: every connection is answered or closed, and
/// the proxy keeps serving (no worker lost, nothing reaches the upstream
/// that was not a valid request).
#[test]
fn mutated_requests_never_break_the_proxy() {
    let dir = RunDir::new("http-fuzz");
    let (b, _) = backend("b1");
    let limits = HttpLimits { request_timeout: Duration::from_millis(300), ..HttpLimits::default() };
    let (rt, addr) = start(&dir, site(vec![("b", vec![b])], vec![route("/", Some(0), &[])], limits), &[]);
    let seeds: &[&[u8]] = &[
        b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /echo HTTP/1.1\r\nHost: t\r\n\r\n",
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..400 {
        let mut input = seeds[i % seeds.len()].to_vec();
        match rnd() % 4 {
            0 => {
                for _ in 0..1 + rnd() % 4 {
                    let p = (rnd() as usize) % input.len();
                    input[p] = rnd() as u8;
                }
            }
            1 => input.truncate((rnd() as usize) % input.len()),
            2 => {
                let p = (rnd() as usize) % input.len();
                let junk: Vec<u8> = (0..rnd() % 64).map(|_| rnd() as u8).collect();
                input.splice(p..p, junk);
            }
            _ => input = (0..rnd() % 512).map(|_| rnd() as u8).collect(),
        }
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&input);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let r = s.read_to_end(&mut out);
        assert!(r.is_ok() || out.starts_with(b"HTTP/1.1 "), "input {i} {input:?}: neither answered nor closed: {r:?}");
        if !out.is_empty() {
            assert!(out.starts_with(b"HTTP/1.1 "), "input {i}: not a response: {:?}", String::from_utf8_lossy(&out));
        }
    }
    // Still serving, on every worker.
    for _ in 0..20 {
        assert_eq!(Client::connect(addr).get("/echo").map(|r| r.status), Some(200));
    }
    assert_eq!(rt.total(|s| &s.errors), 0, "a socket layer panicked");
    rt.shutdown();
}

#[test]
fn a_module_that_panics_under_restart_policy_is_restarted() {
    let dir = RunDir::new("http-restart");
    let probe = module_cfg("fixture_probe", &module_lib("fixture_probe"), &[]);
    assert_eq!(probe.failure_policy, molt_runtime::config::FailurePolicy::Restart);
    let (rt, addr) =
        start(&dir, site(vec![], vec![route("/", None, &["fixture_probe"])], HttpLimits::default()), &[probe]);
    let before = rt.active("fixture_probe").unwrap().id();
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/").unwrap().text(), "probe\n");
    // The hook panics: this request fails, and the control plane loads a fresh version.
    let r = Client::connect(addr).get_with("/", "X-Panic: 1\r\n").unwrap();
    assert_eq!(r.status, 500);
    let deadline = Instant::now() + Duration::from_secs(5);
    while rt.active("fixture_probe").unwrap().id() == before {
        assert!(Instant::now() < deadline, "the panicked module was not restarted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let now = rt.active("fixture_probe").unwrap();
    assert!(!now.has_panicked());
    assert_eq!(Client::connect(addr).get("/").unwrap().text(), "probe\n");
    // The reload record is written just after the new version is published.
    let recorded = || {
        let history = rt.shared().registry().history();
        history.iter().any(|r| r.kind == "restart" && r.ok && r.loaded.len() == 1)
    };
    while !recorded() {
        assert!(Instant::now() < deadline, "{:?}", rt.shared().registry().history());
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(now);
    rt.shutdown();
}

/// A module that declared in init the hooks it handles (`http_hooks`, ABI
/// 1.2) is called for those only; declaring again outside init is refused.
#[test]
fn a_module_is_called_only_for_the_hooks_it_declared() {
    let dir = RunDir::new("http-hooks-declared");
    let (backend, _) = common::http::backend("b");
    let lib = common::module_lib("fixture_hooks");
    let s = site(vec![("b", vec![backend])], vec![route("/", Some(0), &["fixture_hooks"])], HttpLimits::default());
    let (rt, addr) = start(&dir, s, &[common::module_cfg("fixture_hooks", &lib, &[])]);
    let r = Client::connect(addr).get("/echo").expect("a response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Seen-X-Test").as_deref(), Some("seen"), "the REQUEST hook ran");
    assert_eq!(r.header("X-Rw"), None, "the RESPONSE hook, not declared, was not called");
    assert_eq!(r.header("X-Seen-X-Router-Mark").as_deref(), Some("-13"), "http_hooks outside init: MOLT_ERR_PHASE");
    assert_eq!(r.header("X-Seen-X-Rw").as_deref(), Some("-2"), "a bit no host knows: MOLT_ERR_INVALID_ARG");
    rt.shutdown();
}
