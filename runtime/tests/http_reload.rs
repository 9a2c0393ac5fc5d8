//! A reload applies the whole config: modules, and HTTP sites with their
//! routes, upstream groups and listeners, under load.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::RunDir;
use common::http::{Client, backend};
use molt_runtime::http::{HttpLimits, HttpRoute, HttpSite};

fn route(name: &str, path: &str, group: usize) -> HttpRoute {
    HttpRoute {
        name: name.into(),
        host: None,
        path: path.into(),
        upstream: Some(group),
        modules: vec![],
        retry_non_idempotent: false,
    }
}

fn site(name: &str, listen: &str, routes: Vec<HttpRoute>, groups: Vec<(&str, Vec<SocketAddr>)>) -> HttpSite {
    HttpSite {
        name: name.into(),
        listen: listen.parse().unwrap(),
        routes,
        groups: groups.into_iter().map(|(n, s)| (n.to_owned(), s)).collect(),
        limits: HttpLimits::default(),
    }
}

fn backend_of(c: &mut Client, path: &str) -> Option<(u16, String)> {
    let r = c.get(path)?;
    Some((r.status, r.header("X-Backend").unwrap_or_default()))
}

#[test]
fn routes_upstreams_and_listeners_reload_together_under_load() {
    let dir = RunDir::new("http-reload");
    let (s1, _) = backend("s1");
    let (s2, _) = backend("s2");
    let hello = common::module_cfg("hello", &common::module_lib("hello"), &[]);
    let a0 = site("a", "127.0.0.1:0", vec![route("a", "/a", 0)], vec![("g1", vec![s1]), ("g2", vec![s2])]);
    let b0 = site("b", "127.0.0.1:0", vec![route("all", "/", 0)], vec![("g1", vec![s1])]);
    let rt = common::proxy_runtime(dir.path(), vec![a0.clone(), b0.clone()], vec![], std::slice::from_ref(&hello));
    let a = rt.http_addr("a").unwrap();
    let b = rt.http_addr("b").unwrap();

    // Bounded load on a route that exists throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(a);
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match c.get("/a/echo") {
                        Some(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            c = Client::connect(a);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    let reload = |sites: &[HttpSite]| rt.reload_config(std::slice::from_ref(&hello), sites, &[]).map(|_| ());

    // 1. Add a route, to group g2: new transactions on kept connections see it.
    let mut probe = Client::connect(a);
    assert_eq!(backend_of(&mut probe, "/b/echo").map(|r| r.0), Some(404), "no route /b yet");
    let mut a1 = a0.clone();
    a1.routes.push(route("b", "/b", 1));
    reload(&[a1.clone(), b0.clone()]).unwrap();
    assert_eq!(backend_of(&mut probe, "/b/echo"), Some((200, "s2".into())), "the new route, same connection");

    // 2. Change its upstream group.
    let mut a2 = a1.clone();
    a2.routes[1].upstream = Some(0);
    reload(&[a2.clone(), b0.clone()]).unwrap();
    assert_eq!(backend_of(&mut probe, "/b/echo"), Some((200, "s1".into())), "the route's new upstream");

    // 3. Add a listener.
    let c0 = site("c", "127.0.0.1:0", vec![route("all", "/", 0)], vec![("g", vec![s2])]);
    reload(&[a2.clone(), b0.clone(), c0.clone()]).unwrap();
    let c = rt.http_addr("c").expect("the new site's address");
    assert_eq!(backend_of(&mut Client::connect(c), "/echo"), Some((200, "s2".into())), "the added listener serves");

    // 4. Remove one while a request is in flight on it.
    let mut slow = Client::connect(b);
    slow.send(b"GET /delay/600 HTTP/1.1\r\nHost: x\r\n\r\n");
    std::thread::sleep(Duration::from_millis(100));
    reload(&[a2.clone(), c0.clone()]).unwrap();
    assert!(TcpStream::connect(b).is_err(), "the removed listener refuses new connections after publish");
    let r = slow.read("GET").expect("the request in flight on the removed listener completes");
    assert_eq!(r.status, 200);

    // A bind failure refuses the whole reload: nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let d0 = site("d", &taken.local_addr().unwrap().to_string(), vec![route("all", "/", 0)], vec![("g", vec![s1])]);
    let mut a3 = a2.clone();
    a3.routes.pop();
    let e = reload(&[a3, c0.clone(), d0]).expect_err("a listener that cannot be bound");
    assert!(e.to_string().contains("HTTP listener d") && e.to_string().contains("refused"), "{e}");
    assert_eq!(backend_of(&mut probe, "/b/echo"), Some((200, "s1".into())), "the refused reload changed nothing");

    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
    assert!(ok.load(Ordering::Relaxed) > 0, "the load ran");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed on a route that existed throughout");
    rt.shutdown();
}

/// TCP routes do not reload: a config that changes them is refused with
/// words, and nothing else is applied either.
#[test]
fn a_reload_changing_tcp_routes_is_refused() {
    let dir = RunDir::new("http-reload-tcp");
    let (s1, _) = backend("s1");
    let a0 = site("a", "127.0.0.1:0", vec![route("a", "/", 0)], vec![("g1", vec![s1])]);
    let rt = common::proxy_runtime(dir.path(), vec![a0.clone()], vec![], &[]);
    let tcp = molt_runtime::net::TcpRoute {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams: vec![s1],
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        retry_after: Duration::from_secs(1),
        max_connections: 10,
        modules: vec![],
        handler: None,
    };
    let e = rt.reload_config(&[], &[a0], &[tcp]).expect_err("tcp routes changed");
    assert!(e.to_string().contains("[[tcp]]") && e.to_string().contains("restart"), "{e}");
    rt.shutdown();
}

/// Reloads asked for at once (SIGHUP and `molt ctl reload` together) run
/// one after the other, the site work included: the second finds the
/// listener the first bound, instead of refusing because "another process"
/// serves its address.
#[test]
fn concurrent_reloads_adding_the_same_listener_both_succeed() {
    let dir = RunDir::new("http-reload-concurrent");
    let (s1, _) = backend("s1");
    let hello = common::module_cfg("hello", &common::module_lib("hello"), &[]);
    let a0 = site("a", "127.0.0.1:0", vec![route("a", "/", 0)], vec![("g1", vec![s1])]);
    let rt = common::proxy_runtime(dir.path(), vec![a0.clone()], vec![], std::slice::from_ref(&hello));
    for round in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let x =
            site(&format!("x{round}"), &format!("127.0.0.1:{port}"), vec![route("all", "/", 0)], vec![("g", vec![s1])]);
        let sites = [a0.clone(), x];
        let results: Vec<_> = std::thread::scope(|s| {
            let t: Vec<_> = (0..2)
                .map(|_| s.spawn(|| rt.reload_config(std::slice::from_ref(&hello), &sites, &[]).map(|_| ())))
                .collect();
            t.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in results {
            r.unwrap_or_else(|e| panic!("round {round}: a concurrent reload was refused: {e}"));
        }
    }
    rt.shutdown();
}
