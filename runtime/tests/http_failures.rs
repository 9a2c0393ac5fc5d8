//! The HTTP proxy when upstreams fail, against scripted upstreams on real
//! sockets: which requests are retried (never a non-idempotent one that
//! may have reached a server), that a retry starts clean (no byte of a
//! failed attempt reaches the client), and what a client sees for each
//! failure: a reset or a stall mid-head or mid-body, a client that leaves
//! mid-upload.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::RunDir;
use common::http::{Client, Conn, answering, read_to_close, scripted};
use molt_runtime::Runtime;
use molt_runtime::http::HttpLimits;

use common::group_site as site;
use common::start_site as start;

/// A server whose first connection answers its first request, then reads
/// the second and closes without answering (the keep-alive race); later
/// connections answer everything.
fn closes_after_reuse() -> (SocketAddr, Arc<common::http::Seen>) {
    scripted(|mut c: Conn| {
        if c.n == 1 {
            if c.request().is_some() {
                c.answer("first");
            }
            let _ = c.request();
            return;
        }
        while c.request().is_some() {
            c.answer("fresh");
        }
    })
}

fn req(method: &str, id: &str) -> String {
    format!("{method} /x HTTP/1.1\r\nHost: test\r\nX-Req-Id: {id}\r\nContent-Length: 0\r\n\r\n")
}

#[test]
fn a_post_is_not_replayed_after_a_reused_connection_closes() {
    let dir = RunDir::new("httpf-post");
    let (b, seen) = closes_after_reuse();
    let (rt, addr) = start(&dir, site(vec![b], HttpLimits::default()));
    // Both requests from one client on one worker: the second reuses the
    // pooled connection, which the server closes after reading it.
    let mut c = Client::connect(addr);
    c.send(req("GET", "warm").as_bytes());
    assert_eq!(c.read("GET").unwrap().status, 200);
    c.send(req("POST", "p1").as_bytes());
    let r = c.read("POST").expect("an answer");
    assert_eq!(r.status, 502, "the POST may have been executed; it must not be sent again");
    assert_eq!(seen.count_id("p1"), 1, "the backend saw the POST {} times: {:?}", seen.count_id("p1"), seen.lines());
    rt.shutdown();
}

#[test]
fn a_get_is_retried_once_after_a_reused_connection_closes() {
    let dir = RunDir::new("httpf-get");
    let (b, seen) = closes_after_reuse();
    let (rt, addr) = start(&dir, site(vec![b], HttpLimits::default()));
    let mut c = Client::connect(addr);
    c.send(req("GET", "warm").as_bytes());
    assert_eq!(c.read("GET").unwrap().status, 200);
    c.send(req("GET", "g1").as_bytes());
    let r = c.read("GET").expect("an answer");
    assert_eq!((r.status, r.header("x-from").as_deref()), (200, Some("fresh")));
    assert_eq!(seen.count_id("g1"), 2, "sent on the reused connection, then once more: {:?}", seen.lines());
    rt.shutdown();
}

#[test]
fn a_route_may_allow_retrying_any_method() {
    let dir = RunDir::new("httpf-post-allowed");
    let (b, seen) = closes_after_reuse();
    let mut s = site(vec![b], HttpLimits::default());
    s.routes[0].retry_non_idempotent = true;
    let (rt, addr) = start(&dir, s);
    let mut c = Client::connect(addr);
    c.send(req("GET", "warm").as_bytes());
    assert_eq!(c.read("GET").unwrap().status, 200);
    c.send(req("POST", "p1").as_bytes());
    assert_eq!(c.read("POST").unwrap().status, 200);
    assert_eq!(seen.count_id("p1"), 2, "the route said a POST may go again: {:?}", seen.lines());
    rt.shutdown();
}

#[test]
fn a_post_is_not_failed_over_to_the_next_server() {
    let dir = RunDir::new("httpf-post-failover");
    // Server 1 reads the request and closes; server 2 answers.
    let (s1, seen1) = scripted(|mut c: Conn| {
        let _ = c.request();
    });
    let (s2, seen2) = answering("second");
    let (rt, addr) = start(&dir, site(vec![s1, s2], HttpLimits::default()));
    for i in 0..4 {
        // Round robin starts at either server: only a POST sent to server 1 fails.
        let id = format!("p{i}");
        let mut c = Client::connect(addr);
        c.send(req("POST", &id).as_bytes());
        let r = c.read("POST").expect("an answer");
        let total = seen1.count_id(&id) + seen2.count_id(&id);
        assert_eq!(total, 1, "POST {id} arrived {total} times: {:?} {:?}", seen1.lines(), seen2.lines());
        if seen1.count_id(&id) == 1 {
            assert_eq!(r.status, 502);
        } else {
            assert_eq!(r.status, 200);
        }
    }
    assert!(seen1.lines().iter().any(|l| l.contains("POST")), "server 1 never tried: {:?}", seen1.lines());
    rt.shutdown();
}

#[test]
fn a_post_fails_over_when_the_first_server_refuses_the_connection() {
    // Nothing of the request was sent: any method may go to the next server.
    let dir = RunDir::new("httpf-post-refused");
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (s2, seen2) = answering("second");
    let (rt, addr) = start(&dir, site(vec![dead, s2], HttpLimits::default()));
    for i in 0..4 {
        let id = format!("p{i}");
        let mut c = Client::connect(addr);
        c.send(
            format!("POST /x HTTP/1.1\r\nHost: test\r\nX-Req-Id: {id}\r\nContent-Length: 5\r\n\r\nhello").as_bytes(),
        );
        assert_eq!(c.read("POST").unwrap().status, 200);
        assert_eq!(seen2.count_id(&id), 1);
    }
    rt.shutdown();
}

#[test]
fn failover_never_splices_two_servers_responses() {
    let dir = RunDir::new("httpf-splice");
    let (s1, _) = scripted(|mut c: Conn| {
        if c.request().is_some() {
            c.write(b"HTTP/1.1 299 From-First-Server\r\nSet-Cookie: injected=1\r\nX-Swallow: ");
        }
    });
    let (s2, _) = answering("second");
    let (rt, addr) = start(&dir, site(vec![s1, s2], HttpLimits::default()));
    for _ in 0..4 {
        let mut c = Client::connect(addr);
        c.send(b"GET /x HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        let raw = read_to_close(&mut c.s, Duration::from_secs(10));
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200 second\r\n"), "{text}");
        assert!(
            !text.contains("First-Server") && !text.contains("injected"),
            "bytes of server 1 reached the client: {text}"
        );
    }
    rt.shutdown();
}

#[test]
fn a_partial_head_then_death_with_no_other_server_is_a_502_that_says_so() {
    let dir = RunDir::new("httpf-partial");
    let (s1, _) = scripted(|mut c: Conn| {
        if c.request().is_some() {
            c.write(b"HTTP/1.1 200 OK\r\nX-Half: ");
        }
    });
    let (rt, addr) = start(&dir, site(vec![s1], HttpLimits::default()));
    let r = Client::connect(addr).get("/x").unwrap();
    assert_eq!(r.status, 502);
    assert!(!r.text().contains("could be reached"), "{}", r.text());
    assert!(r.text().contains("response head"), "{}", r.text());
    rt.shutdown();
}

#[test]
fn a_reset_mid_body_cuts_the_client_off_and_nothing_is_retried() {
    let dir = RunDir::new("httpf-reset-body");
    let (s1, seen) = scripted(|mut c: Conn| {
        while let Some((req, _)) = c.request() {
            if req.target != "/x" {
                c.answer("later");
                continue;
            }
            c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nfirst-part");
            std::thread::sleep(Duration::from_millis(100));
            return c.reset();
        }
    });
    let (rt, addr) = start(&dir, site(vec![s1], HttpLimits::default()));
    let mut c = Client::connect(addr);
    c.send(b"GET /x HTTP/1.1\r\nHost: test\r\nX-Req-Id: r1\r\n\r\n");
    let t = Instant::now();
    let raw = read_to_close(&mut c.s, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("first-part"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(5), "the client waited {:?}", t.elapsed());
    assert_eq!(seen.count_id("r1"), 1);
    // The proxy still serves.
    assert_eq!(Client::connect(addr).get("/y").map(|r| r.status), Some(200));
    rt.shutdown();
}

#[test]
fn a_stall_mid_head_is_a_504_and_mid_body_a_cut() {
    let dir = RunDir::new("httpf-stall");
    let (s1, _) = scripted(|mut c: Conn| {
        while let Some((req, _)) = c.request() {
            if req.target == "/head" {
                c.write(b"HTTP/1.1 200 OK\r\nX-Part");
            } else {
                c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nsome");
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    });
    let limits = HttpLimits { upstream_timeout: Duration::from_millis(400), ..HttpLimits::default() };
    let (rt, addr) = start(&dir, site(vec![s1], limits));
    let t = Instant::now();
    let r = Client::connect(addr).get("/head").unwrap();
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let mut c = Client::connect(addr);
    c.send(b"GET /body HTTP/1.1\r\nHost: test\r\n\r\n");
    let t = Instant::now();
    let raw = read_to_close(&mut c.s, Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&raw).ends_with("some"), "{}", String::from_utf8_lossy(&raw));
    assert!(t.elapsed() < Duration::from_secs(3), "the cut took {:?}", t.elapsed());
    rt.shutdown();
}

#[test]
fn a_client_that_aborts_mid_upload_releases_its_upstream_at_once() {
    let dir = RunDir::new("httpf-abort");
    let closed_after = Arc::new(AtomicU64::new(u64::MAX));
    let ca = closed_after.clone();
    let (s1, _) = scripted(move |mut c: Conn| {
        if c.head_only().is_some() {
            let t = Instant::now();
            if c.wait_closed(Duration::from_secs(20)) {
                ca.store(t.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        }
    });
    let (rt, addr) = start(&dir, site(vec![s1], HttpLimits::default()));
    let mut c = Client::connect(addr);
    c.send(b"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n\r\n");
    c.send(&[b'u'; 1000]);
    std::thread::sleep(Duration::from_millis(200));
    drop(c);
    let t = Instant::now();
    while closed_after.load(Ordering::Relaxed) == u64::MAX && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ms = closed_after.load(Ordering::Relaxed);
    assert!(ms != u64::MAX, "the upstream connection was still open 5 s after the client left");
    assert!(t.elapsed() < Duration::from_secs(1), "the upstream was released {:?} after the client left", t.elapsed());
    rt.shutdown();
}

mod property {
    //! Random failure points x methods x pooled or fresh connections.
    use super::*;
    use proptest::prelude::*;
    use std::sync::Mutex;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Fail {
        /// Close without reading the request.
        CloseBeforeRead,
        /// Read the request, close.
        CloseAfterRead,
        /// Read the request, reset.
        ResetAfterRead,
        /// A partial head, then close.
        PartialHead,
        /// A head and part of the body, then close.
        PartialBody,
        /// Answer.
        Ok,
    }

    const METHODS: &[(&str, bool)] =
        &[("GET", true), ("HEAD", true), ("PUT", true), ("DELETE", true), ("POST", false), ("PATCH", false)];

    struct World {
        _dir: RunDir,
        _rt: Runtime,
        addr: SocketAddr,
        /// Server 1's next request fails so (then it is disarmed).
        armed: Arc<Mutex<Fail>>,
        /// Bumped to make both servers close their idle connections.
        generation: Arc<AtomicU64>,
        s1: Arc<common::http::Seen>,
        s2: Arc<common::http::Seen>,
    }

    /// Wait for the next request's first byte; false when the peer closed
    /// or the generation moved on while idle.
    fn next_request(c: &mut Conn, generation: &AtomicU64, born: u64) -> bool {
        let _ = c.s.set_read_timeout(Some(Duration::from_millis(20)));
        let mut b = [0u8; 1];
        let r = loop {
            match c.s.peek(&mut b) {
                Ok(0) => break false,
                Ok(_) => break true,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if generation.load(Ordering::Relaxed) != born {
                        break false;
                    }
                }
                Err(_) => break false,
            }
        };
        let _ = c.s.set_read_timeout(Some(Duration::from_secs(20)));
        r
    }

    fn world() -> &'static World {
        static W: std::sync::OnceLock<World> = std::sync::OnceLock::new();
        W.get_or_init(|| {
            let dir = RunDir::new("httpf-prop");
            let armed = Arc::new(Mutex::new(Fail::Ok));
            let generation = Arc::new(AtomicU64::new(0));
            let (a, g1) = (armed.clone(), generation.clone());
            let (s1, seen1) = scripted(move |mut c: Conn| {
                let born = g1.load(Ordering::Relaxed);
                while next_request(&mut c, &g1, born) {
                    let fail = std::mem::replace(&mut *a.lock().unwrap(), Fail::Ok);
                    if fail == Fail::CloseBeforeRead {
                        return;
                    }
                    let Some((req, _)) = c.request() else { return };
                    match fail {
                        Fail::CloseBeforeRead | Fail::CloseAfterRead => return,
                        Fail::ResetAfterRead => return c.reset(),
                        Fail::PartialHead => {
                            c.write(b"HTTP/1.1 299 s1-s1\r\nX-From: s1-s1\r\nX-Sw");
                            return;
                        }
                        Fail::PartialBody if req.method != "HEAD" => {
                            c.write(b"HTTP/1.1 200 s1-s1\r\nContent-Length: 1000\r\n\r\ns1-s1-s1");
                            return;
                        }
                        _ => c.answer("s1-s1"),
                    }
                }
            });
            let g2 = generation.clone();
            let (s2, seen2) = scripted(move |mut c: Conn| {
                let born = g2.load(Ordering::Relaxed);
                while next_request(&mut c, &g2, born) && c.request().is_some() {
                    c.answer("s2-s2");
                }
            });
            let limits = HttpLimits {
                upstream_timeout: Duration::from_secs(3),
                retry_after: Duration::from_millis(1),
                ..HttpLimits::default()
            };
            let rt = common::proxy_runtime(dir.path(), vec![site(vec![s1, s2], limits)], vec![], &[]);
            let addr = rt.http_addrs()[0];
            World { _dir: dir, _rt: rt, addr, armed, generation, s1: seen1, s2: seen2 }
        })
    }

    static CASE: AtomicU64 = AtomicU64::new(0);

    fn run_case(fail: Fail, method: (&str, bool), pooled: bool) -> Result<(), TestCaseError> {
        let w = world();
        let n = CASE.fetch_add(1, Ordering::Relaxed);
        // No pooled connection left from earlier cases.
        w.generation.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(80));
        let (m, idempotent) = method;
        let mut c = Client::connect(w.addr);
        if pooled {
            // Round robin from this client's worker: one pooled connection to each server.
            for k in 0..2 {
                c.send(format!("GET /w HTTP/1.1\r\nHost: test\r\nX-Req-Id: warm{n}-{k}\r\n\r\n").as_bytes());
                prop_assert_eq!(c.read("GET").map(|r| r.status), Some(200));
            }
        }
        *w.armed.lock().unwrap() = fail;
        let id = format!("c{n}");
        c.send(
            format!(
                "{m} /x HTTP/1.1\r\nHost: test\r\nX-Req-Id: {id}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        let raw = read_to_close(&mut c.s, Duration::from_secs(10));
        *w.armed.lock().unwrap() = Fail::Ok;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let arrivals = w.s1.count_id(&id) + w.s2.count_id(&id);
        if !idempotent {
            prop_assert!(arrivals <= 1, "{} {} arrived {} times ({:?}, pooled {})", m, id, arrivals, fail, pooled);
        }
        prop_assert!(
            !(text.contains("s1-s1") && text.contains("s2-s2")),
            "one response holds two servers' bytes ({:?}, {}, pooled {}): {}",
            fail,
            m,
            pooled,
            text
        );
        prop_assert!(text.starts_with("HTTP/1.1 "), "no response ({:?}, {}, pooled {}): {:?}", fail, m, pooled, text);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn no_replay_and_no_splice(
            fail in prop_oneof![
                Just(Fail::CloseBeforeRead), Just(Fail::CloseAfterRead), Just(Fail::ResetAfterRead),
                Just(Fail::PartialHead), Just(Fail::PartialBody), Just(Fail::Ok)
            ],
            method in 0..METHODS.len(),
            pooled in any::<bool>(),
        ) {
            run_case(fail, METHODS[method], pooled)?;
        }
    }
}
