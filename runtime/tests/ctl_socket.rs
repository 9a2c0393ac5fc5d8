//! The control socket as a careless or hostile client of the same uid
//! would use it: clients that connect and say nothing, a request line of
//! hundreds of megabytes, bytes that are not UTF-8. No client can stall
//! another or grow molt's memory.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::RunDir;
use molt_runtime::ctl::{ConfigSource, ControlServer};
use molt_runtime::{Runtime, RuntimeConfig};
use serde_json::Value;

fn start(dir: &RunDir) -> (Runtime, ControlServer) {
    let rt = Runtime::start(RuntimeConfig { workers: 1, run_dir: dir.path().join("run"), ..RuntimeConfig::default() })
        .unwrap();
    let server =
        ControlServer::start(Arc::clone(rt.shared()), ConfigSource::Builtin(PathBuf::from("/nonexistent"))).unwrap();
    (rt, server)
}

fn ask(s: &mut UnixStream, request: &[u8]) -> Value {
    s.write_all(request).unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON reply ({e}): {line:?}"))
}

#[test]
fn idle_clients_do_not_stall_status() {
    let dir = RunDir::new("ctls-idle");
    let (rt, server) = start(&dir);
    let idle: Vec<UnixStream> = (0..2).map(|_| UnixStream::connect(server.path()).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let mut s = UnixStream::connect(server.path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = ask(&mut s, b"{\"cmd\":\"status\"}\n");
    assert_eq!(r["ok"], true, "{r}");
    assert!(t.elapsed() < Duration::from_secs(1), "status took {:?} behind two idle clients", t.elapsed());
    drop(idle);
    drop(server);
    rt.shutdown();
}

#[test]
fn malformed_requests_get_an_error_reply_and_the_connection_goes_on() {
    let dir = RunDir::new("ctls-bad");
    let (rt, server) = start(&dir);
    let mut s = UnixStream::connect(server.path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = ask(&mut s, b"\xff\xfe{\"cmd\":\"status\"}\n");
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("UTF-8"), "{r}");
    let r = ask(&mut s, b"{\"cmd\":\"status\"\n");
    assert!(r["error"].as_str().unwrap().contains("not JSON"), "{r}");
    let r = ask(&mut s, b"[1,2]\n");
    assert!(r["error"].as_str().unwrap().contains("cmd"), "{r}");
    let r = ask(&mut s, b"{\"cmd\":\"status\"}\n");
    assert_eq!(r["ok"], true, "the connection still serves: {r}");
    drop(server);
    rt.shutdown();
}

#[test]
fn a_huge_request_line_is_refused_with_bounded_memory() {
    if common::in_own_process("a_huge_request_line_is_refused_with_bounded_memory") {
        return;
    }
    let dir = RunDir::new("ctls-huge");
    let (rt, server) = start(&dir);
    let before = common::rss_bytes();
    let mut s = UnixStream::connect(server.path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mb = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..200 {
        if s.write_all(&mb).is_err() {
            break; // the server stopped reading: as it should
        }
        sent += mb.len();
    }
    let mut line = String::new();
    let _ = BufReader::new(s.try_clone().unwrap()).read_line(&mut line);
    let r: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("no JSON reply ({e}): {line:?}"));
    assert!(r["error"].as_str().unwrap().contains("too large"), "{r}");
    let grew = common::rss_bytes().saturating_sub(before);
    assert!(grew < 16 << 20, "RSS grew {} MiB for a {} MiB request line", grew >> 20, sent >> 20);
    drop(server);
    rt.shutdown();
}

#[test]
fn the_reload_counter_never_goes_down() {
    let dir = RunDir::new("ctls-counter");
    let rt = common::proxy_runtime(dir.path(), vec![], vec![], &[]);
    let cfg = [common::module_cfg("hello", &common::module_lib("hello"), &[])];
    let count = |rt: &Runtime| -> u64 {
        let text = molt_runtime::ctl::status::metrics(rt.shared(), None);
        text.lines()
            .find(|l| l.starts_with("molt_reloads_total{kind=\"reload\",result=\"ok\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .expect("the counter is exported")
    };
    let mut last = 0;
    // More reloads than the history keeps (64).
    for i in 0..80 {
        rt.reload(&cfg).unwrap();
        let n = count(&rt);
        assert!(n >= last, "the counter went from {last} to {n}");
        last = n;
        assert_eq!(n, i, "reload {i}: the first load is a load, not a reload");
    }
    rt.shutdown();
}
